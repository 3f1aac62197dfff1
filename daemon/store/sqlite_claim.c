/*
 * sqlite_claim: the SQLite backend's side of dispatch before a request
 * (sqlite.c): claims in one UPDATE … WHERE id IN (SELECT … LIMIT n)
 * RETURNING; what the dispatcher counts; spend and batch budgets.
 */
#include <errno.h>
#include <stdlib.h>

#include "sq.h"
#include "sluice/xmalloc.h"

/* The columns a claim returns, in the order claim_row reads them. The key
 * to send is the derived one when a failed run was retried (send_key). */
#define CLAIM_COLUMNS                                                          \
    "id, provider, batch, custom_id, method, path, body, "                     \
    "COALESCE(send_key, idempotency_key), "                                    \
    "state, attempts, max_attempts, deferrals, remote_id, poll_url, "          \
    "created_at, waiting_since, priority, run_after, idempotency_key"

/* The priorities of provider ?1's queued and retrying jobs, highest
 * first, as the rows p of "level": each one an index search in jobs_claim
 * (which is ordered by priority first), so a minimum over those jobs
 * costs a search per priority in use, not a walk of the queue. The
 * queued jobs are in no other index (sql/015_state_index_unqueued.sql). */
#define CLAIM_LEVELS                                                           \
    "WITH RECURSIVE level(p) AS ("                                             \
    "  SELECT (SELECT priority FROM jobs WHERE provider = ?1 "                 \
    "    AND state IN ('queued', 'retrying') ORDER BY priority DESC LIMIT 1) " \
    "  UNION ALL SELECT (SELECT priority FROM jobs WHERE provider = ?1 "       \
    "    AND state IN ('queued', 'retrying') AND priority < level.p "          \
    "    ORDER BY priority DESC LIMIT 1) FROM level "                          \
    "  WHERE level.p IS NOT NULL) "

/* Statements prepared at open (sqlite_conn.c). */
const char *const sqlite_claim_sql[ST_COUNT] = {
    /* "state <> 'queued'": jobs_state's own WHERE, which SQLite needs
     * to see before it reads that index (sql/015). */
    [ST_CLAIM_WAITING] =
        "UPDATE jobs SET lease_until = ?1, lease_owner = ?2, updated_at = ?3 "
        "WHERE id IN (SELECT id FROM jobs "
        "  WHERE provider = ?4 AND state = 'waiting' "
        "  AND state <> 'queued' AND run_after <= ?3 "
        "  AND (lease_until IS NULL OR (lease_until <= ?3 "
        "    " UNREGISTERED_OWNER ")) "
        "  ORDER BY run_after, id LIMIT ?5) "
        "RETURNING " CLAIM_COLUMNS,
    [ST_CLAIM] = "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                 "lease_until = ?1, lease_owner = ?2, updated_at = ?3 "
                 "WHERE id IN (SELECT id FROM jobs "
                 "  WHERE provider = ?4 AND state IN ('queued', 'retrying') "
                 "  AND run_after <= ?3 "
                 "  ORDER BY priority DESC, run_after, id LIMIT ?5) "
                 "RETURNING " CLAIM_COLUMNS,
    /* The first due of the queued and retrying jobs, one priority
     * level at a time (CLAIM_LEVELS), and of the unleased waiting ones
     * (jobs_state). */
    [ST_NEXT_DUE] = CLAIM_LEVELS
    "SELECT MIN(due) FROM ("
    "  SELECT (SELECT run_after FROM jobs WHERE provider = ?1 "
    "    AND state IN ('queued', 'retrying') AND priority = level.p "
    "    ORDER BY run_after LIMIT 1) AS due FROM level "
    "  UNION ALL SELECT MIN(run_after) FROM jobs "
    "    WHERE provider = ?1 AND state = 'waiting' "
    "    AND state <> 'queued' "
    "    AND (lease_until IS NULL OR (lease_until <= ?2 "
    "      " UNREGISTERED_OWNER ")))",
    /* The kept counts (sql/006_counts.sql): a few rows, not the queue. */
    [ST_UNFINISHED] =
        "SELECT coalesce(sum(n), 0) FROM job_counts WHERE provider = ?1 "
        "AND state IN (" JOB_UNFINISHED_SQL ")",
    /* EXISTS stops at the first row: the drain check runs four times a
     * second. */
    [ST_HAS_UNFINISHED] =
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE provider = ?1 "
        "  AND state IN ('queued', 'retrying')) "
        "OR EXISTS (SELECT 1 FROM jobs WHERE provider = ?1 "
        "  AND state IN ('running', 'waiting') AND state <> 'queued')",
    [ST_COUNT_WAITING] = "SELECT coalesce(sum(n), 0) FROM job_counts "
                         "WHERE provider = ?1 AND state = 'waiting'",
    [ST_UNFINISHED_BY_PROVIDER] =
        "SELECT provider, sum(n) FROM job_counts "
        "WHERE state IN (" JOB_UNFINISHED_SQL ") "
        "GROUP BY provider HAVING sum(n) > 0 ORDER BY provider",
    [ST_COUNTS] = "SELECT provider, nullif(batch, ''), state, n "
                  "FROM job_counts WHERE n > 0 "
                  "ORDER BY provider, batch, state",
    /* Queued jobs are due from run_after (the enqueue time, or when they
     * were handed back): the first queued job of each priority level,
     * past the retrying ones due earlier at that level. */
    [ST_OLDEST_QUEUED] = CLAIM_LEVELS
    "SELECT MIN((SELECT run_after FROM jobs "
    "  WHERE provider = ?1 AND state IN ('queued', 'retrying') "
    "  AND priority = level.p AND state = 'queued' "
    "  ORDER BY run_after LIMIT 1)) FROM level",
    /* ST_CLAIM but for jobs of the batches in ?6 (a JSON array), held
     * at their budget; jobs without a batch are never held. Its own
     * statement, so the plain claim keeps its covering index. */
    [ST_CLAIM_EXCEPT] =
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
        "lease_until = ?1, lease_owner = ?2, updated_at = ?3 "
        "WHERE id IN (SELECT id FROM jobs "
        "  WHERE provider = ?4 AND state IN ('queued', 'retrying') "
        "  AND run_after <= ?3 AND (batch IS NULL OR batch NOT IN "
        "    (SELECT value FROM json_each(?6))) "
        "  ORDER BY priority DESC, run_after, id LIMIT ?5) "
        "RETURNING " CLAIM_COLUMNS,
    /* Spend of one provider, or one batch, from the kept spend (sql/012):
     * once per capped provider or batch, when the daemon starts to watch
     * it. */
    [ST_SPEND_PROVIDER] = "SELECT total(spent), coalesce(sum(jobs_costed), 0) "
                          "FROM job_spend WHERE provider = ?1",
    [ST_SPEND_BATCH] = "SELECT total(spent), coalesce(sum(jobs_costed), 0) "
                       "FROM job_spend WHERE batch = ?1",
    [ST_BATCH_BUDGET_SET] =
        "INSERT INTO batches (name, budget, updated_at) VALUES (?1, ?2, ?3) "
        "ON CONFLICT (name) DO UPDATE SET budget = excluded.budget, "
        "state = 'active', reason = NULL, updated_at = excluded.updated_at",
    [ST_BATCH_BUDGETS] = "SELECT name, budget FROM batches "
                         "WHERE budget IS NOT NULL ORDER BY name",
    [ST_BATCH_STATE] = "UPDATE batches SET state = ?2, reason = ?3, "
                       "updated_at = ?4 WHERE name = ?1",
};

static struct job *
claim_row(sqlite3_stmt *st)
{
    struct job *j = xcalloc(1, sizeof(*j));
    const char *state = (const char *)sqlite3_column_text(st, 8);

    j->id = sqlite3_column_int64(st, 0);
    j->provider = column_strdup(st, 1);
    j->batch = column_strdup(st, 2);
    j->custom_id = column_strdup(st, 3);
    j->method = column_strdup(st, 4);
    j->path = column_strdup(st, 5);
    j->body = column_strdup(st, 6);
    j->idempotency_key = column_strdup(st, 7);
    if (state == NULL || job_state_parse(state, &j->state) < 0)
        j->state = JOB_RUNNING;
    j->attempts = sqlite3_column_int(st, 9);
    j->max_attempts = sqlite3_column_int(st, 10);
    j->deferrals = sqlite3_column_int(st, 11);
    j->remote_id = column_strdup(st, 12);
    j->poll_url = column_strdup(st, 13);
    j->created_at = sqlite3_column_int64(st, 14);
    j->waiting_since = sqlite3_column_int64(st, 15);
    j->base_key = column_strdup(st, 18);
    return j;
}

/* Runs one claim statement; appends up to max jobs to out + *nout. */
static int
claim_run(struct sqlite_store *s, enum stmt id, const char *provider, int max,
          int64_t now_ms, int64_t lease_ms, const char *owner, struct job **out,
          int *nout, const char *except)
{
    sqlite3_stmt *st = stmt(s, id);
    struct backend_claimed *c = xcalloc((size_t)max, sizeof(*c));
    int n = 0, rc;

    sqlite3_bind_int64(st, 1, now_ms + lease_ms);
    bind_text(st, 2, owner);
    sqlite3_bind_int64(st, 3, now_ms);
    bind_text(st, 4, provider);
    sqlite3_bind_int(st, 5, max);
    if (except != NULL)
        bind_text(st, 6, except);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < max) {
        c[n].job = claim_row(st);
        c[n].priority = sqlite3_column_int(st, 16);
        c[n].run_after = sqlite3_column_int64(st, 17);
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        /* The UPDATE is one statement: on error nothing was claimed. */
        for (int i = 0; i < n; i++)
            job_free(c[i].job);
        free(c);
        return sqlite_fail(s, rc, "claim");
    }
    backend_claimed_sort(c, n);
    for (int i = 0; i < n; i++)
        out[(*nout)++] = c[i].job;
    free(c);
    return 0;
}

int
sqlite_claim(struct store *base, enum store_claim_kind kind,
             const char *provider, int max, int64_t now_ms, int64_t lease_ms,
             const char *owner, struct job **out, int *nout)
{
    return claim_run(sq(base),
                     kind == STORE_CLAIM_POLLS ? ST_CLAIM_WAITING : ST_CLAIM,
                     provider, max, now_ms, lease_ms, owner, out, nout, NULL);
}

int
sqlite_claim_except(struct store *base, const char *provider, int max,
                    int64_t now_ms, int64_t lease_ms, const char *owner,
                    const char *held_json, struct job **out, int *nout)
{
    return claim_run(sq(base), ST_CLAIM_EXCEPT, provider, max, now_ms, lease_ms,
                     owner, out, nout, held_json);
}

/* Runs a one-row, one-column query about provider (and now_ms when the
 * statement takes it as ?2) into *out. */
static int
provider_scalar(struct sqlite_store *s, enum stmt id, const char *provider,
                const int64_t *now_ms, int64_t *out, const char *what)
{
    sqlite3_stmt *st = stmt(s, id);
    int rc;

    *out = 0;
    bind_text(st, 1, provider);
    if (now_ms != NULL)
        sqlite3_bind_int64(st, 2, *now_ms);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, what);
}

int
sqlite_next_due(struct store *base, const char *provider, int64_t now_ms,
                int64_t *due_ms)
{
    struct sqlite_store *s = sq(base);
    return provider_scalar(s, ST_NEXT_DUE, provider, &now_ms, due_ms,
                           "next due");
}

int
sqlite_pending_count(struct store *base, const char *provider, long *unfinished)
{
    struct sqlite_store *s = sq(base);
    int64_t n;
    int rc = provider_scalar(s, ST_UNFINISHED, provider, NULL, &n,
                             "unfinished count");
    *unfinished = (long)n;
    return rc;
}

int
sqlite_unfinished_by_provider(struct store *base,
                              void (*cb)(const char *provider, long n,
                                         void *data),
                              void *data)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_UNFINISHED_BY_PROVIDER);
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        cb(name ? name : "", (long)sqlite3_column_int64(st, 1), data);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "unfinished by provider");
}

int
sqlite_count_waiting(struct store *base, const char *provider, long *n)
{
    struct sqlite_store *s = sq(base);
    int64_t v;
    int rc = provider_scalar(s, ST_COUNT_WAITING, provider, NULL, &v,
                             "waiting count");
    *n = (long)v;
    return rc;
}

int
sqlite_oldest_queued(struct store *base, const char *provider,
                     int64_t *since_ms)
{
    return provider_scalar(sq(base), ST_OLDEST_QUEUED, provider, NULL, since_ms,
                           "oldest queued");
}

int
sqlite_spend(struct store *base, const char *provider, const char *batch,
             double *spent, long *costed)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, provider ? ST_SPEND_PROVIDER : ST_SPEND_BATCH);
    int rc;

    *spent = 0;
    *costed = 0;
    bind_text(st, 1, provider ? provider : batch);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *spent = sqlite3_column_double(st, 0);
        *costed = (long)sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "spend");
}

int
sqlite_batch_budget_set(struct store *base, const char *batch, double budget,
                        int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_BATCH_BUDGET_SET);
    int rc;

    bind_text(st, 1, batch);
    if (budget > 0)
        sqlite3_bind_double(st, 2, budget);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_int64(st, 3, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "batch budget");
}

int
sqlite_batch_pause(struct store *base, const char *batch, bool paused,
                   int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_BATCH_STATE);
    int rc;

    bind_text(st, 1, batch);
    bind_text(st, 2, paused ? "paused" : "active");
    bind_text(st, 3, paused ? "budget" : NULL);
    sqlite3_bind_int64(st, 4, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "batch state");
}

int
sqlite_batch_budgets(struct store *base,
                     void (*cb)(const char *batch, double budget, void *data),
                     void *data)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_BATCH_BUDGETS);
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        cb((const char *)sqlite3_column_text(st, 0),
           sqlite3_column_double(st, 1), data);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "batch budgets");
}

int
sqlite_has_unfinished(struct store *base, const char *provider, bool *any)
{
    struct sqlite_store *s = sq(base);
    int64_t n;
    int rc = provider_scalar(s, ST_HAS_UNFINISHED, provider, NULL, &n,
                             "unfinished check");
    *any = n != 0;
    return rc;
}

int
sqlite_counts(struct store *base, store_count_fn cb, void *arg)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_COUNTS);
    int rc, stop = 0;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *provider = (const char *)sqlite3_column_text(st, 0);
        const char *batch = (const char *)sqlite3_column_text(st, 1);
        const char *state = (const char *)sqlite3_column_text(st, 2);
        enum job_state js;
        /* a state this build does not know (a newer schema) is skipped */
        if (state == NULL || job_state_parse(state, &js) < 0)
            continue;
        stop = cb(provider ? provider : "", batch, js,
                  (long)sqlite3_column_int64(st, 3), arg);
        if (stop != 0)
            break;
    }
    sqlite3_reset(st);
    if (stop != 0)
        return stop;
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "job counts");
}
