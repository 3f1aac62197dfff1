/*
 * pg_claim: the PostgreSQL backend's side of dispatch before a request
 * (postgres.c): claims in one UPDATE … WHERE id IN (SELECT … FOR UPDATE
 * SKIP LOCKED LIMIT n) RETURNING, sorted here (RETURNING gives no
 * order); what the dispatcher counts, read from the kept counts
 * (job_counts), not the queue; spend and batch budgets.
 */
#include <stdlib.h>
#include <string.h>

#include "pg.h"
#include "sluice/xmalloc.h"

#define CLAIM_COLUMNS                                                          \
    "id, provider, batch, custom_id, method, path, body, "                     \
    "COALESCE(send_key, idempotency_key), "                                    \
    "state, attempts, max_attempts, deferrals, remote_id, poll_url, "          \
    "created_at, waiting_since, priority, run_after, idempotency_key"

/* Statements prepared on every connection (pg_conn.c). */
const char *const pg_claim_sql[P_COUNT] = {
    [P_CLAIM] =
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
        "lease_until = $1::bigint, lease_owner = $2::text, "
        "updated_at = $3::bigint "
        "WHERE id IN (SELECT id FROM jobs "
        "  WHERE provider = $4::text AND state IN ('queued', 'retrying') "
        "  AND run_after <= $3::bigint "
        "  ORDER BY priority DESC, run_after, id LIMIT $5::int "
        "  FOR UPDATE SKIP LOCKED) "
        "RETURNING " CLAIM_COLUMNS,
    /* P_CLAIM but not for jobs of the batches in $6 (a JSON array), held
     * at their budget; jobs without a batch are never held. */
    [P_CLAIM_EXCEPT] =
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
        "lease_until = $1::bigint, lease_owner = $2::text, "
        "updated_at = $3::bigint "
        "WHERE id IN (SELECT id FROM jobs "
        "  WHERE provider = $4::text AND state IN ('queued', 'retrying') "
        "  AND run_after <= $3::bigint AND (batch IS NULL OR batch NOT IN "
        "    (SELECT json_array_elements_text($6::json))) "
        "  ORDER BY priority DESC, run_after, id LIMIT $5::int "
        "  FOR UPDATE SKIP LOCKED) "
        "RETURNING " CLAIM_COLUMNS,
    [P_CLAIM_WAITING] =
        "UPDATE jobs SET lease_until = $1::bigint, lease_owner = $2::text, "
        "updated_at = $3::bigint "
        "WHERE id IN (SELECT id FROM jobs "
        "  WHERE provider = $4::text AND state = 'waiting' "
        "  AND run_after <= $3::bigint "
        "  AND (lease_until IS NULL OR (lease_until <= $3::bigint "
        "    " UNREGISTERED_OWNER ")) "
        "  ORDER BY run_after, id LIMIT $5::int FOR UPDATE SKIP LOCKED) "
        "RETURNING " CLAIM_COLUMNS,
    [P_NEXT_DUE] = "SELECT LEAST("
                   "  (SELECT MIN(run_after) FROM jobs "
                   "    WHERE provider = $1::text AND state = 'queued'), "
                   "  (SELECT MIN(run_after) FROM jobs "
                   "    WHERE provider = $1::text AND state = 'retrying'), "
                   "  (SELECT MIN(run_after) FROM jobs "
                   "    WHERE provider = $1::text AND state = 'waiting' "
                   "    AND (lease_until IS NULL "
                   "      OR (lease_until <= $2::bigint "
                   "        " UNREGISTERED_OWNER "))))",
    [P_OLDEST_QUEUED] = "SELECT MIN(run_after) FROM jobs "
                        "WHERE provider = $1::text AND state = 'queued'",
    /* The kept counts: a few rows, not the queue. */
    [P_UNFINISHED] =
        "SELECT coalesce(sum(n), 0) FROM job_counts "
        "WHERE provider = $1::text AND state IN (" JOB_UNFINISHED_SQL ")",
    [P_HAS_UNFINISHED] =
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE provider = $1::text "
        "AND state IN (" JOB_UNFINISHED_SQL "))::int",
    [P_COUNT_WAITING] = "SELECT coalesce(sum(n), 0) FROM job_counts "
                        "WHERE provider = $1::text AND state = 'waiting'",
    [P_UNFINISHED_BY_PROVIDER] =
        "SELECT provider, sum(n) FROM job_counts "
        "WHERE state IN (" JOB_UNFINISHED_SQL ") "
        "GROUP BY provider HAVING sum(n) > 0 ORDER BY provider",
    [P_COUNTS] = "SELECT provider, nullif(batch, ''), state, n "
                 "FROM job_counts WHERE n > 0 "
                 "ORDER BY provider, batch, state",
    [P_SPEND_PROVIDER] = "SELECT coalesce(sum(spent), 0), "
                         "coalesce(sum(jobs_costed), 0) "
                         "FROM job_spend WHERE provider = $1::text",
    [P_SPEND_BATCH] = "SELECT coalesce(sum(spent), 0), "
                      "coalesce(sum(jobs_costed), 0) "
                      "FROM job_spend WHERE batch = $1::text",
    [P_BATCH_BUDGET_SET] =
        "INSERT INTO batches (name, budget, updated_at) "
        "VALUES ($1::text, $2::double precision, $3::bigint) "
        "ON CONFLICT (name) DO UPDATE SET budget = excluded.budget, "
        "state = 'active', reason = NULL, updated_at = excluded.updated_at",
    [P_BATCH_BUDGETS] = "SELECT name, budget FROM batches "
                        "WHERE budget IS NOT NULL ORDER BY name",
    [P_BATCH_STATE] = "UPDATE batches SET state = $2::text, "
                      "reason = $3::text, updated_at = $4::bigint "
                      "WHERE name = $1::text",
};

static struct job *
claim_row(const PGresult *r, int i)
{
    struct job *j = xcalloc(1, sizeof(*j));
    const char *state = PQgetvalue(r, i, 8);

    j->id = value_int(r, i, 0);
    j->provider = value_strdup(r, i, 1);
    j->batch = value_strdup(r, i, 2);
    j->custom_id = value_strdup(r, i, 3);
    j->method = value_strdup(r, i, 4);
    j->path = value_strdup(r, i, 5);
    j->body = value_strdup(r, i, 6);
    j->idempotency_key = value_strdup(r, i, 7);
    if (job_state_parse(state, &j->state) < 0)
        j->state = JOB_RUNNING;
    j->attempts = (int)value_int(r, i, 9);
    j->max_attempts = (int)value_int(r, i, 10);
    j->deferrals = (int)value_int(r, i, 11);
    j->remote_id = value_strdup(r, i, 12);
    j->poll_url = value_strdup(r, i, 13);
    j->created_at = value_int(r, i, 14);
    j->waiting_since = value_int(r, i, 15);
    j->base_key = value_strdup(r, i, 18);
    return j;
}

/* Runs one claim statement (held_json: $6 of P_CLAIM_EXCEPT). */
static int
claim_run(struct pg_store *s, enum pst id, const char *provider, int max,
          int64_t now_ms, int64_t lease_ms, const char *owner,
          const char *held_json, struct job **out, int *nout)
{
    struct params p = {0};
    struct backend_claimed *c;
    PGresult *r;
    int err, n;

    p_int(&p, now_ms + lease_ms);
    p_text(&p, owner);
    p_int(&p, now_ms);
    p_text(&p, provider);
    p_int(&p, max);
    if (held_json != NULL)
        p_text(&p, held_json);
    r = pg_run(s, id, &p, "claim", &err);
    if (r == NULL)
        return err; /* one statement: nothing was claimed */
    n = PQntuples(r);
    if (n > max)
        n = max;
    c = xcalloc((size_t)(n > 0 ? n : 1), sizeof(*c));
    for (int i = 0; i < n; i++) {
        c[i].job = claim_row(r, i);
        c[i].priority = (int)value_int(r, i, 16);
        c[i].run_after = value_int(r, i, 17);
    }
    PQclear(r);
    backend_claimed_sort(c, n);
    for (int i = 0; i < n; i++)
        out[(*nout)++] = c[i].job;
    free(c);
    return 0;
}

int
pg_claim(struct store *base, enum store_claim_kind kind, const char *provider,
         int max, int64_t now_ms, int64_t lease_ms, const char *owner,
         struct job **out, int *nout)
{
    return claim_run(pq(base),
                     kind == STORE_CLAIM_POLLS ? P_CLAIM_WAITING : P_CLAIM,
                     provider, max, now_ms, lease_ms, owner, NULL, out, nout);
}

int
pg_claim_except(struct store *base, const char *provider, int max,
                int64_t now_ms, int64_t lease_ms, const char *owner,
                const char *held_json, struct job **out, int *nout)
{
    return claim_run(pq(base), P_CLAIM_EXCEPT, provider, max, now_ms, lease_ms,
                     owner, held_json, out, nout);
}

int
pg_next_due(struct store *base, const char *provider, int64_t now_ms,
            int64_t *due_ms)
{
    struct params p = {0};

    p_text(&p, provider);
    p_int(&p, now_ms);
    return pg_run_int(pq(base), P_NEXT_DUE, &p, "next due", due_ms);
}

int
pg_oldest_queued(struct store *base, const char *provider, int64_t *since_ms)
{
    struct params p = {0};

    p_text(&p, provider);
    return pg_run_int(pq(base), P_OLDEST_QUEUED, &p, "oldest queued", since_ms);
}

static int
pg_provider_long(struct store *base, enum pst id, const char *provider, long *n,
                 const char *what)
{
    struct params p = {0};
    int64_t v;
    int rc;

    p_text(&p, provider);
    rc = pg_run_int(pq(base), id, &p, what, &v);
    *n = (long)v;
    return rc;
}

int
pg_pending_count(struct store *base, const char *provider, long *unfinished)
{
    return pg_provider_long(base, P_UNFINISHED, provider, unfinished,
                            "unfinished count");
}

int
pg_count_waiting(struct store *base, const char *provider, long *n)
{
    return pg_provider_long(base, P_COUNT_WAITING, provider, n,
                            "waiting count");
}

int
pg_has_unfinished(struct store *base, const char *provider, bool *any)
{
    long n;
    int rc = pg_provider_long(base, P_HAS_UNFINISHED, provider, &n,
                              "unfinished check");
    *any = n != 0;
    return rc;
}

int
pg_unfinished_by_provider(struct store *base,
                          void (*cb)(const char *provider, long n, void *data),
                          void *data)
{
    int err;
    PGresult *r = pg_run(pq(base), P_UNFINISHED_BY_PROVIDER, NULL,
                         "unfinished by provider", &err);

    if (r == NULL)
        return err;
    for (int i = 0; i < PQntuples(r); i++)
        cb(PQgetvalue(r, i, 0), (long)value_int(r, i, 1), data);
    PQclear(r);
    return 0;
}

int
pg_counts(struct store *base, store_count_fn cb, void *arg)
{
    int err, stop = 0;
    PGresult *r = pg_run(pq(base), P_COUNTS, NULL, "job counts", &err);

    if (r == NULL)
        return err;
    for (int i = 0; i < PQntuples(r) && stop == 0; i++) {
        enum job_state js;
        /* a state this build does not know (a newer schema) is skipped */
        if (job_state_parse(PQgetvalue(r, i, 2), &js) < 0)
            continue;
        stop = cb(PQgetvalue(r, i, 0),
                  PQgetisnull(r, i, 1) ? NULL : PQgetvalue(r, i, 1), js,
                  (long)value_int(r, i, 3), arg);
    }
    PQclear(r);
    return stop;
}

int
pg_spend(struct store *base, const char *provider, const char *batch,
         double *spent, long *costed)
{
    struct params p = {0};
    PGresult *r;
    int err;

    *spent = 0;
    *costed = 0;
    p_text(&p, provider ? provider : batch);
    if ((r = pg_run(pq(base), provider ? P_SPEND_PROVIDER : P_SPEND_BATCH, &p,
                    "spend", &err)) == NULL)
        return err;
    if (PQntuples(r) > 0) {
        *spent = strtod(PQgetvalue(r, 0, 0), NULL);
        *costed = (long)value_int(r, 0, 1);
    }
    PQclear(r);
    return 0;
}

int
pg_batch_budget_set(struct store *base, const char *batch, double budget,
                    int64_t now_ms)
{
    struct params p = {0};

    p_text(&p, batch);
    if (budget > 0)
        p_double(&p, budget);
    else
        p_text(&p, NULL);
    p_int(&p, now_ms);
    return pg_run_changes(pq(base), P_BATCH_BUDGET_SET, &p, "batch budget",
                          NULL);
}

int
pg_batch_pause(struct store *base, const char *batch, bool paused,
               int64_t now_ms)
{
    struct params p = {0};

    p_text(&p, batch);
    p_text(&p, paused ? "paused" : "active");
    p_text(&p, paused ? "budget" : NULL);
    p_int(&p, now_ms);
    return pg_run_changes(pq(base), P_BATCH_STATE, &p, "batch state", NULL);
}

int
pg_batch_budgets(struct store *base,
                 void (*cb)(const char *batch, double budget, void *data),
                 void *data)
{
    int err;
    PGresult *r =
        pg_run(pq(base), P_BATCH_BUDGETS, NULL, "batch budgets", &err);

    if (r == NULL)
        return err;
    for (int i = 0; i < PQntuples(r); i++)
        cb(PQgetvalue(r, i, 0), strtod(PQgetvalue(r, i, 1), NULL), data);
    PQclear(r);
    return 0;
}
