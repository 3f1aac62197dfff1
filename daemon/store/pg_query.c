/*
 * pg_query: the operator's queries and commands on PostgreSQL
 * (postgres.c): status, jobs, show, failures, retry, cancel, export,
 * purge, progress and spend. Rows come back as JSON through
 * pg_array_json; the shape both backends share is in backend.c.
 */
#include <stdio.h>
#include <string.h>

#include "pg.h"

/* struct store_select as seven parameters from $a: states (",a,b,"),
 * provider, batch, class, code, since, before. */
#define SELECT_WHERE(a, b, c, d, e, f, g)                                      \
    "($" #a "::text IS NULL OR "                                               \
    "  position(',' || state || ',' IN $" #a "::text) > 0) "                   \
    "AND ($" #b "::text IS NULL OR provider = $" #b "::text) "                 \
    "AND ($" #c "::text IS NULL OR batch = $" #c "::text) "                    \
    "AND ($" #d "::text IS NULL OR error_class = $" #d "::text) "              \
    "AND ($" #e "::text IS NULL OR error_code = $" #e "::text) "               \
    "AND ($" #f "::bigint IS NULL OR finished_at >= $" #f "::bigint) "         \
    "AND ($" #g "::bigint IS NULL OR finished_at < $" #g "::bigint) "

/* As sqlite_query.c's: the last key sent stays, or the next derived one goes
 * out when its run definitively failed (docs/design.md §4). */
#define RETRY_SET                                                              \
    "UPDATE jobs SET state = 'queued', attempts = 0, deferrals = 0, "          \
    "send_key = CASE WHEN remote_id IS NOT NULL "                              \
    "  AND http_status BETWEEN 200 AND 299 AND error_class IS NOT NULL "       \
    "  AND error_class <> 'protocol' "                                         \
    "  THEN idempotency_key || '.' || (1 + CASE WHEN send_key IS NULL "        \
    "    THEN 1 ELSE CAST(substr(send_key, length(idempotency_key) + 2) "      \
    "    AS integer) END) "                                                    \
    "  ELSE send_key END, "                                                    \
    "run_after = $1::bigint, lease_until = NULL, "                             \
    "lease_owner = NULL, remote_id = NULL, poll_url = NULL, "                  \
    "waiting_since = NULL, finished_at = NULL, updated_at = $1::bigint "       \
    "WHERE state IN ('failed', 'cancelled') "

#define CANCEL_SET                                                             \
    "UPDATE jobs SET state = 'cancelled', finished_at = $1::bigint, "          \
    "lease_until = NULL, lease_owner = NULL, updated_at = $1::bigint "         \
    "WHERE state IN (" JOB_UNFINISHED_SQL ") "

/* $1 states, $2 before, $3 limit: the oldest finished jobs one purge
 * transaction takes. */
#define PURGE_PICK                                                             \
    "(SELECT id FROM jobs WHERE finished_at < $2::bigint "                     \
    "  AND state IN (" JOB_TERMINAL_SQL ") "                                   \
    "  AND ($1::text IS NULL OR "                                              \
    "    position(',' || state || ',' IN $1::text) > 0) "                      \
    "  ORDER BY finished_at, id LIMIT $3::bigint)"

/* Statements prepared on every connection (pg_conn.c). */
const char *const pg_query_sql[P_COUNT] = {
    [P_STATE_COUNTS] = "SELECT provider, state, sum(n) FROM job_counts "
                       "GROUP BY provider, state HAVING sum(n) > 0",
    [P_BATCHES] = "SELECT * FROM batch_progress ORDER BY batch, provider",
    [P_LANES] = "SELECT * FROM providers ORDER BY name",
    [P_JOBS] =
        "SELECT id, provider, batch, custom_id, method, path, "
        "idempotency_key, send_key, priority, state, attempts, max_attempts, "
        "deferrals, run_after, lease_until, lease_owner, remote_id, "
        "poll_url, waiting_since, http_status, error_class, error_code, "
        "error_message, request_id, cost, created_at, updated_at, "
        "finished_at FROM jobs "
        "WHERE ($1::text IS NULL OR state = $1::text) "
        "AND ($2::text IS NULL OR provider = $2::text) "
        "AND ($3::text IS NULL OR batch = $3::text) "
        "ORDER BY id DESC LIMIT $4::bigint",
    [P_JOB_BY_ID] = "SELECT * FROM jobs WHERE id = $1::bigint",
    [P_ATTEMPTS] = "SELECT * FROM attempts WHERE job_id = $1::bigint "
                   "ORDER BY attempt, started_at, id",
    [P_FAILURES] =
        "SELECT provider, error_class, error_code, "
        "max(CASE WHEN rn = 1 THEN http_status END) AS http_status, "
        "count(*) AS count, min(finished_at) AS first_seen, "
        "max(finished_at) AS last_seen, "
        "max(CASE WHEN rn = 1 THEN error_message END) AS message, "
        "COALESCE(json_agg(request_id ORDER BY rn) FILTER "
        "  (WHERE rn <= 3 AND request_id IS NOT NULL), '[]')::text "
        "  AS sample_request_ids, "
        "max(CASE WHEN rn = 1 THEN id END) AS sample_job_id "
        "FROM (SELECT *, row_number() OVER ("
        "    PARTITION BY provider, error_class, error_code "
        "    ORDER BY request_id IS NULL, finished_at DESC, id DESC) AS rn "
        "  FROM failures "
        "  WHERE ($1::text IS NULL OR provider = $1::text) "
        "  AND ($2::text IS NULL OR batch = $2::text) "
        "  AND ($3::bigint IS NULL OR finished_at >= $3::bigint)) AS f "
        "GROUP BY provider, error_class, error_code "
        "ORDER BY count DESC, provider, error_class, error_code",
    [P_RESOLVE_ID] = "SELECT id FROM jobs WHERE id = $1::bigint",
    /* The newest job with this custom_id: by the unique key where it is
     * the idempotency key too, else by jobs_custom_id (sql/postgres/006). */
    [P_RESOLVE_CUSTOM_ID] =
        "SELECT id FROM (SELECT id FROM jobs WHERE idempotency_key = $1::text "
        "  AND custom_id = $1::text "
        "UNION ALL SELECT id FROM jobs WHERE custom_id = $1::text "
        "  AND custom_id <> idempotency_key) AS j ORDER BY id DESC LIMIT 1",
    [P_RETRY_ID] = RETRY_SET "AND id = $2::bigint",
    [P_RETRY_WHERE] = RETRY_SET "AND " SELECT_WHERE(2, 3, 4, 5, 6, 7, 8),
    [P_CANCEL_ID] = CANCEL_SET "AND id = $2::bigint",
    [P_CANCEL_WHERE] = CANCEL_SET "AND " SELECT_WHERE(2, 3, 4, 5, 6, 7, 8),
    [P_EXPORT] =
        "SELECT id, custom_id, provider, batch, state, http_status, "
        "error_class, error_code, error_message, request_id, result, cost, "
        "finished_at, (SELECT coalesce(json_agg(path ORDER BY id), '[]') "
        "  FROM outputs WHERE outputs.job_id = jobs.id "
        "  AND outputs.state = 'stored')::text AS outputs "
        "FROM jobs WHERE " SELECT_WHERE(1, 2, 3, 4, 5, 6, 7) "ORDER BY id",
    [P_PURGE_ATTEMPTS] = "DELETE FROM attempts WHERE job_id IN " PURGE_PICK,
    [P_PURGE_JOBS] = "DELETE FROM jobs WHERE id IN " PURGE_PICK,
    [P_PROGRESS_BATCH] = "SELECT * FROM batch_progress WHERE batch = $1::text "
                         "ORDER BY provider",
    [P_SPEND_ROWS] = "SELECT s.provider, s.batch, s.spent, s.spent_last_hour, "
                     "  b.budget AS batch_budget, b.state AS batch_state, "
                     "  b.reason AS batch_reason FROM spend s "
                     "LEFT JOIN batches b ON b.name = s.batch "
                     "WHERE ($1::text IS NULL OR s.batch = $1::text) "
                     "AND (s.jobs_costed > 0 OR b.budget IS NOT NULL) "
                     "ORDER BY s.provider, s.batch",
};

/* struct store_select as SELECT_WHERE's seven parameters; states must
 * outlive the statement. */
static void
p_select(struct params *p, const struct store_select *sel, char states[128])
{
    states[0] = '\0';
    if (sel)
        backend_states_text(sel->states, states);
    p_text(p, states[0] ? states : NULL);
    p_text(p, sel ? sel->provider : NULL);
    p_text(p, sel ? sel->batch : NULL);
    p_text(p, sel ? sel->error_class : NULL);
    p_text(p, sel ? sel->error_code : NULL);
    p_int_or_null(p, sel ? sel->finished_since : 0);
    p_int_or_null(p, sel ? sel->finished_before : 0);
}

json_t *
pg_status_json(struct store *base)
{
    struct pg_store *s = pq(base);
    json_t *providers, *batches, *lanes;
    json_t *status = backend_status_new(&providers, &batches, &lanes);
    long pending, stored, failed;
    PGresult *r;
    int err;

    if (pg_rows_json(s, P_LANES, NULL, lanes, "status lanes") < 0)
        goto fail;
    backend_status_lanes(providers, lanes);
    if ((r = pg_run(s, P_STATE_COUNTS, NULL, "status counts", &err)) == NULL)
        goto fail;
    for (int i = 0; i < PQntuples(r); i++)
        backend_status_count(providers, PQgetvalue(r, i, 0),
                             PQgetvalue(r, i, 1), value_int(r, i, 2));
    PQclear(r);
    if (pg_rows_json(s, P_BATCHES, NULL, batches, "status batches") < 0 ||
        pg_outputs_counts(base, &pending, &stored, &failed) < 0)
        goto fail;
    backend_status_outputs(status, pending, stored, failed);
    return status;
fail:
    json_decref(status);
    return NULL;
}

json_t *
pg_jobs_json(struct store *base, const struct store_filter *f)
{
    struct params p = {0};

    p_text(&p, f ? f->state : NULL);
    p_text(&p, f ? f->provider : NULL);
    p_text(&p, f ? f->batch : NULL);
    p_int_or_null(&p, f && f->limit > 0 ? f->limit : 0); /* NULL: all */
    return pg_array_json(pq(base), P_JOBS, &p, "jobs");
}

int
pg_resolve_one(struct store *base, const char *key, int64_t *id)
{
    struct pg_store *s = pq(base);
    struct params p = {0};
    int64_t asid;
    int rc;

    *id = 0;
    if (backend_ref_is_id(key, &asid)) {
        p_int(&p, asid);
        if ((rc = pg_run_int(s, P_RESOLVE_ID, &p, "resolve job id", id)) < 0 ||
            *id != 0)
            return rc;
    }
    memset(&p, 0, sizeof(p));
    p_text(&p, key);
    return pg_run_int(s, P_RESOLVE_CUSTOM_ID, &p, "resolve custom_id", id);
}

json_t *
pg_job_json(struct store *base, const char *id_or_custom_id)
{
    struct pg_store *s = pq(base);
    struct params p = {0};
    json_t *rows, *job, *attempts;
    int64_t id;

    if (pg_resolve_one(base, id_or_custom_id, &id) < 0 || id == 0)
        return NULL;
    p_int(&p, id);
    if ((rows = pg_array_json(s, P_JOB_BY_ID, &p, "job")) == NULL)
        return NULL;
    job = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    if (job == NULL)
        return NULL;
    if ((attempts = pg_array_json(s, P_ATTEMPTS, &p, "attempts")) == NULL) {
        json_decref(job);
        return NULL;
    }
    /* "attempts" becomes the rows; the column's count is kept apart. */
    backend_job_set_attempts(job, attempts);
    return job;
}

json_t *
pg_failures_json(struct store *base, const struct store_select *sel)
{
    struct params p = {0};

    p_text(&p, sel ? sel->provider : NULL);
    p_text(&p, sel ? sel->batch : NULL);
    p_int_or_null(&p, sel ? sel->finished_since : 0);
    return pg_array_json(pq(base), P_FAILURES, &p, "failures");
}

/* The by-id statement per id, or the filtered one once; $1 is now. Sends
 * the wakeup when something changed. */
static int
update_jobs(struct pg_store *s, enum pst by_id, enum pst where,
            const int64_t *ids, size_t n, const struct store_select *sel,
            int64_t now_ms, long *changed, const char *what)
{
    char states[128];
    long k = 0;
    int rc;

    *changed = 0;
    if (ids == NULL) {
        struct params p = {0};
        p_int(&p, now_ms);
        p_select(&p, sel, states);
        if ((rc = pg_run_changes(s, where, &p, what, changed)) < 0)
            return rc;
    } else {
        for (size_t i = 0; i < n; i++) {
            struct params p = {0};
            p_int(&p, now_ms);
            p_int(&p, ids[i]);
            if ((rc = pg_run_changes(s, by_id, &p, what, &k)) < 0)
                return rc;
            *changed += k;
        }
    }
    return *changed > 0 ? pg_notify(s, what) : 0;
}

int
pg_retry(struct store *base, const int64_t *ids, size_t n,
         const struct store_select *sel, int64_t now_ms, long *changed)
{
    return update_jobs(pq(base), P_RETRY_ID, P_RETRY_WHERE, ids, n, sel, now_ms,
                       changed, "retry");
}

int
pg_cancel(struct store *base, const int64_t *ids, size_t n,
          const struct store_select *sel, int64_t now_ms, long *changed)
{
    return update_jobs(pq(base), P_CANCEL_ID, P_CANCEL_WHERE, ids, n, sel,
                       now_ms, changed, "cancel");
}

/* Streams the rows (single-row mode: never all in memory). */
int
pg_export(struct store *base, const struct store_select *sel, store_row_fn fn,
          void *arg)
{
    struct pg_store *s = pq(base);
    struct params p = {0};
    char states[128], name[16];
    PGresult *r;
    int rc = 0, stop = 0;

    if ((rc = pg_ready(s)) < 0)
        return rc;
    p_select(&p, sel, states);
    snprintf(name, sizeof(name), "p%d", (int)P_EXPORT);
    if (!PQsendQueryPrepared(s->conn, name, p.n, p.v, NULL, NULL, 0) ||
        !PQsetSingleRowMode(s->conn))
        return pg_fail(s, NULL, "export");
    while ((r = PQgetResult(s->conn)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE && stop == 0) {
            json_t *row = pg_row_json(r, 0);
            stop = fn(row, arg);
            json_decref(row);
        } else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK &&
                   rc == 0) {
            rc = pg_fail(s, r, "export");
        }
        PQclear(r); /* after a stop the rest is read and dropped */
    }
    return stop != 0 ? stop : rc;
}

int
pg_purge(struct store *base, const struct store_select *sel, long batch_rows,
         long *jobs, long *attempts, long *freed_pages)
{
    struct pg_store *s = pq(base);
    char states[128];
    long nj, na;
    int rc;

    /* Space comes back through autovacuum, not page by page. */
    *freed_pages = 0;
    states[0] = '\0';
    backend_states_text(sel->states, states);
    do {
        struct params p = {0};
        p_text(&p, states[0] ? states : NULL);
        p_int(&p, sel->finished_before);
        p_int(&p, batch_rows);
        nj = na = 0;
        if ((rc = pg_begin(base)) < 0)
            return rc;
        if ((rc = pg_run_changes(s, P_PURGE_ATTEMPTS, &p, "purge", &na)) < 0 ||
            (rc = pg_run_changes(s, P_PURGE_JOBS, &p, "purge", &nj)) < 0 ||
            (rc = pg_commit(base)) < 0) {
            pg_rollback(base);
            return rc;
        }
        *jobs += nj;
        *attempts += na;
    } while (nj == batch_rows);
    return 0;
}

json_t *
pg_progress_json(struct store *base, const char *batch)
{
    struct params p = {0};

    if (batch == NULL)
        return pg_array_json(pq(base), P_BATCHES, NULL, "batch progress");
    p_text(&p, batch);
    return pg_array_json(pq(base), P_PROGRESS_BATCH, &p, "batch progress");
}

json_t *
pg_spend_json(struct store *base, const char *batch)
{
    struct params p = {0};

    p_text(&p, batch);
    return pg_array_json(pq(base), P_SPEND_ROWS, &p, "spend");
}

json_t *
pg_providers_json(struct store *base)
{
    return pg_array_json(pq(base), P_LANES, NULL, "providers");
}
