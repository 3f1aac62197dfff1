/*
 * sqlite_query: the operator's queries and commands on SQLite (sqlite.c):
 * status, jobs, failures, retry, cancel, export, purge, progress, spend.
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "sq.h"
#include "sluice/xmalloc.h"

/* The filter of struct store_select, by parameter name; select_bind
 * binds the ones a statement has. :states is ",failed,cancelled,". */
#define SELECT_WHERE                                                           \
    "(:states IS NULL OR instr(:states, ',' || state || ',') > 0) "            \
    "AND (:provider IS NULL OR provider = :provider) "                         \
    "AND (:batch IS NULL OR batch = :batch) "                                  \
    "AND (:class IS NULL OR error_class = :class) "                            \
    "AND (:code IS NULL OR error_code = :code) "                               \
    "AND (:since IS NULL OR finished_at >= :since) "                           \
    "AND (:before IS NULL OR finished_at < :before) "

/* Back to the queue as if new, but with its identity and last failure:
 * ?1 is now. remote_id goes too: the submission is sent again. The key to
 * send stays the last one sent (a provider that ran it answers with that
 * result, never twice) unless its run definitively failed (the poll was
 * answered, with the run's failure): the provider caches that failure, so
 * the next derived key goes out, "<key>.N" one past the last
 * (docs/design.md §4).
 * job_derived_key() derives the same way. */
#define RETRY_SET                                                              \
    "UPDATE jobs SET state = 'queued', attempts = 0, deferrals = 0, "          \
    "send_key = CASE WHEN remote_id IS NOT NULL "                              \
    "  AND http_status BETWEEN 200 AND 299 AND error_class IS NOT NULL "       \
    "  AND error_class <> 'protocol' "                                         \
    "  THEN idempotency_key || '.' || (1 + CASE WHEN send_key IS NULL "        \
    "    THEN 1 ELSE CAST(substr(send_key, length(idempotency_key) + 2) "      \
    "    AS INTEGER) END) "                                                    \
    "  ELSE send_key END, "                                                    \
    "run_after = ?1, lease_until = NULL, "                                     \
    "lease_owner = NULL, remote_id = NULL, poll_url = NULL, "                  \
    "waiting_since = NULL, finished_at = NULL, updated_at = ?1 "               \
    "WHERE state IN ('failed', 'cancelled') "

#define CANCEL_SET                                                             \
    "UPDATE jobs SET state = 'cancelled', finished_at = ?1, "                  \
    "lease_until = NULL, lease_owner = NULL, updated_at = ?1 "                 \
    "WHERE state IN (" JOB_UNFINISHED_SQL ") "

/* The oldest finished jobs purge takes in one transaction; attempts and
 * jobs are deleted by the same subquery in the same transaction, so they
 * see the same rows. Walks jobs_finished. */
#define PURGE_PICK                                                             \
    "(SELECT id FROM jobs WHERE finished_at < :before "                        \
    "  AND state IN (" JOB_TERMINAL_SQL ") "                                   \
    "  AND (:states IS NULL OR instr(:states, ',' || state || ',') > 0) "      \
    "  ORDER BY finished_at, id LIMIT :limit)"

/* incremental_vacuum step of purge: 512 pages (2 MiB at the default page
 * size) per transaction. The first steps after a large delete hold the
 * write lock longest: with 2048-page steps the first took 0.23 s at 2M
 * jobs and 1.4-3 s at 10M (bench/scale); with 512 no vacuum step of the
 * 2M purge held a writer off more than 0.1 s. */
#define STORE_VACUUM_STEP 512
/* The gap purge leaves between two of its write transactions. SQLite
 * queues nobody for the write lock: a writer waiting in the busy handler
 * (which polls every 100 ms once it has waited a while) could miss every
 * short gap while purge takes the lock again and again (bench/scale saw
 * the daemon's kind of write held off 4 s by steps of 80 ms each). A gap
 * as long as that poll lets every waiter in. */
#define STORE_PURGE_GAP_MS 100

/* Statements prepared at open (sqlite_conn.c). */
const char *const sqlite_query_sql[ST_COUNT] = {
    [ST_STATE_COUNTS] = "SELECT provider, state, sum(n) FROM job_counts "
                        "GROUP BY provider, state HAVING sum(n) > 0",
    [ST_BATCHES] = "SELECT * FROM batch_progress ORDER BY batch, provider",
    [ST_LANES] = "SELECT * FROM providers ORDER BY name",
    [ST_JOBS] =
        "SELECT id, provider, batch, custom_id, method, path, "
        "idempotency_key, send_key, priority, state, attempts, max_attempts, "
        "deferrals, run_after, lease_until, lease_owner, remote_id, "
        "poll_url, waiting_since, http_status, error_class, error_code, "
        "error_message, request_id, cost, created_at, updated_at, "
        "finished_at FROM jobs "
        "WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR provider = ?2) "
        "AND (?3 IS NULL OR batch = ?3) ORDER BY id DESC LIMIT ?4",
    [ST_JOB_BY_ID] = "SELECT * FROM jobs WHERE id = ?1",
    [ST_ATTEMPTS] = "SELECT * FROM attempts WHERE job_id = ?1 "
                    "ORDER BY attempt, started_at, id",
    /* Read from the failures view, as an operator in sqlite3 would; the
     * samples are the newest failures that carry a request id. */
    [ST_FAILURES] =
        "SELECT provider, error_class, error_code, "
        "max(CASE WHEN rn = 1 THEN http_status END) AS http_status, "
        "count(*) AS count, min(finished_at) AS first_seen, "
        "max(finished_at) AS last_seen, "
        "max(CASE WHEN rn = 1 THEN error_message END) AS message, "
        "json_group_array(request_id) FILTER "
        "  (WHERE rn <= 3 AND request_id IS NOT NULL) "
        "  AS sample_request_ids, "
        "max(CASE WHEN rn = 1 THEN id END) AS sample_job_id "
        "FROM (SELECT *, row_number() OVER ("
        "    PARTITION BY provider, error_class, error_code "
        "    ORDER BY request_id IS NULL, finished_at DESC, id DESC) AS rn "
        "  FROM failures "
        "  WHERE (:provider IS NULL OR provider = :provider) "
        "  AND (:batch IS NULL OR batch = :batch) "
        "  AND (:since IS NULL OR finished_at >= :since)) "
        "GROUP BY provider, error_class, error_code "
        "ORDER BY count DESC, provider, error_class, error_code",
    [ST_RESOLVE_ID] = "SELECT id FROM jobs WHERE id = ?1",
    /* custom_id is unique per provider only: the newest wins. A job's
     * custom_id is its key (found per provider through the unique index;
     * job_counts names every provider with jobs) unless it was enqueued
     * with --unique (in jobs_custom_id, sql/014_custom_id_by_key.sql). */
    [ST_RESOLVE_CUSTOM_ID] =
        "SELECT id FROM ("
        "  SELECT id FROM jobs WHERE provider IN "
        "    (SELECT DISTINCT provider FROM job_counts) "
        "    AND idempotency_key = ?1 AND custom_id = ?1 "
        "  UNION ALL SELECT id FROM jobs WHERE custom_id = ?1 "
        "    AND custom_id IS NOT NULL AND custom_id <> idempotency_key) "
        "ORDER BY id DESC LIMIT 1",
    [ST_RETRY_ID] = RETRY_SET "AND id = ?2",
    [ST_RETRY_WHERE] = RETRY_SET "AND " SELECT_WHERE,
    [ST_CANCEL_ID] = CANCEL_SET "AND id = ?2",
    [ST_CANCEL_WHERE] = CANCEL_SET "AND " SELECT_WHERE,
    [ST_EXPORT] =
        "SELECT id, custom_id, provider, batch, state, http_status, "
        "error_class, error_code, error_message, request_id, result, cost, "
        "finished_at, (SELECT json_group_array(path) FROM outputs "
        "  WHERE outputs.job_id = jobs.id AND outputs.state = 'stored') "
        "  AS outputs "
        "FROM jobs WHERE " SELECT_WHERE "ORDER BY id",
    [ST_PURGE_ATTEMPTS] = "DELETE FROM attempts WHERE job_id IN " PURGE_PICK,
    [ST_PURGE_JOBS] = "DELETE FROM jobs WHERE id IN " PURGE_PICK,
    [ST_AUTO_VACUUM] = "PRAGMA auto_vacuum",
    [ST_FREELIST] = "PRAGMA freelist_count",
    [ST_PROGRESS_BATCH] =
        "SELECT * FROM batch_progress WHERE batch = ?1 ORDER BY provider",
    [ST_SPEND_ROWS] = "SELECT s.provider, s.batch, s.spent, s.spent_last_hour, "
                      "  b.budget AS batch_budget, b.state AS batch_state, "
                      "  b.reason AS batch_reason FROM spend s "
                      "LEFT JOIN batches b ON b.name = s.batch "
                      "WHERE (?1 IS NULL OR s.batch = ?1) "
                      "AND (s.jobs_costed > 0 OR b.budget IS NOT NULL) "
                      "ORDER BY s.provider, s.batch",
};

static int
status_providers(struct sqlite_store *s, json_t *providers, json_t *lanes)
{
    sqlite3_stmt *st = stmt(s, ST_STATE_COUNTS);
    int rc;

    /* Every provider the daemon knows, even with no jobs yet. */
    backend_status_lanes(providers, lanes);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        backend_status_count(providers,
                             (const char *)sqlite3_column_text(st, 0),
                             (const char *)sqlite3_column_text(st, 1),
                             sqlite3_column_int64(st, 2));
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "status counts");
}

json_t *
sqlite_status_json(struct store *base)
{
    struct sqlite_store *s = sq(base);
    json_t *providers, *batches, *lanes;
    json_t *status = backend_status_new(&providers, &batches, &lanes);
    long pending, stored, failed;
    if (sqlite_rows_json(s, stmt(s, ST_LANES), lanes, "status lanes") < 0 ||
        status_providers(s, providers, lanes) < 0 ||
        sqlite_rows_json(s, stmt(s, ST_BATCHES), batches, "status batches") <
            0 ||
        sqlite_outputs_counts(base, &pending, &stored, &failed) < 0) {
        json_decref(status);
        return NULL;
    }
    backend_status_outputs(status, pending, stored, failed);
    return status;
}

json_t *
sqlite_jobs_json(struct store *base, const struct store_filter *f)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_JOBS);
    json_t *arr = json_array();

    bind_text(st, 1, f ? f->state : NULL);
    bind_text(st, 2, f ? f->provider : NULL);
    bind_text(st, 3, f ? f->batch : NULL);
    /* LIMIT -1: no limit */
    sqlite3_bind_int64(st, 4, f && f->limit > 0 ? f->limit : -1);
    if (sqlite_rows_json(s, st, arr, "jobs") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* The id of the job that key names: an id (all digits), else a custom_id
 * (a numeric custom_id is looked up as one when no id matches); 0 if
 * none. */
int
sqlite_resolve_one(struct store *base, const char *key, int64_t *id)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    int64_t asid;
    int rc;

    *id = 0;
    if (backend_ref_is_id(key, &asid)) {
        st = stmt(s, ST_RESOLVE_ID);
        sqlite3_bind_int64(st, 1, asid);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *id = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        if (rc == SQLITE_ROW)
            return 0;
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, "resolve job id");
    }
    st = stmt(s, ST_RESOLVE_CUSTOM_ID);
    bind_text(st, 1, key);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *id = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE
               ? 0
               : sqlite_fail(s, rc, "resolve custom_id");
}

/* Finds the job row by id or custom_id (as resolve_one); -ENOENT if none. */
static int
job_find(struct sqlite_store *s, const char *key, json_t **out)
{
    sqlite3_stmt *st;
    int64_t id;
    int rc;

    *out = NULL;
    if ((rc = sqlite_resolve_one(&s->base, key, &id)) < 0)
        return rc;
    if (id == 0)
        return -ENOENT;
    st = stmt(s, ST_JOB_BY_ID);
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite_row_json(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    return rc == SQLITE_DONE ? -ENOENT : sqlite_fail(s, rc, "job");
}

json_t *
sqlite_job_json(struct store *base, const char *id_or_custom_id)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    json_t *job, *attempts;

    if (job_find(s, id_or_custom_id, &job) < 0)
        return NULL;
    st = stmt(s, ST_ATTEMPTS);
    sqlite3_bind_int64(st, 1, json_integer_value(json_object_get(job, "id")));
    attempts = json_array();
    /* "attempts" becomes the rows; the column's count is kept apart. */
    backend_job_set_attempts(job, attempts);
    if (sqlite_rows_json(s, st, attempts, "attempts") < 0) {
        json_decref(job);
        return NULL;
    }
    return job;
}

static void
bind_named_text(sqlite3_stmt *st, const char *name, const char *v)
{
    int i = sqlite3_bind_parameter_index(st, name);
    if (i > 0)
        bind_text(st, i, v);
}

static void
bind_named_int64(sqlite3_stmt *st, const char *name, int64_t v)
{
    int i = sqlite3_bind_parameter_index(st, name);
    if (i > 0)
        bind_int64_or_null(st, i, v);
}

/* Binds the parameters of SELECT_WHERE (and PURGE_PICK) that st has.
 * states_text receives ",a,b," for :states; it must outlive the step. */
static void
select_bind(sqlite3_stmt *st, const struct store_select *sel,
            char states_text[128])
{
    states_text[0] = '\0';
    if (sel == NULL)
        return;
    backend_states_text(sel->states, states_text);
    bind_named_text(st, ":states", states_text[0] ? states_text : NULL);
    bind_named_text(st, ":provider", sel->provider);
    bind_named_text(st, ":batch", sel->batch);
    bind_named_text(st, ":class", sel->error_class);
    bind_named_text(st, ":code", sel->error_code);
    bind_named_int64(st, ":since", sel->finished_since);
    bind_named_int64(st, ":before", sel->finished_before);
}

json_t *
sqlite_failures_json(struct store *base, const struct store_select *sel)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_FAILURES);
    json_t *arr = json_array();
    char states[128];

    select_bind(st, sel, states);
    if (sqlite_rows_json(s, st, arr, "failures") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* Runs the by-id statement for each id, or the filtered one once; ?1 is
 * now in both, ?2 the id. */
static int
update_jobs(struct sqlite_store *s, enum stmt by_id, enum stmt where,
            const int64_t *ids, size_t n, const struct store_select *sel,
            int64_t now_ms, long *changed, const char *what)
{
    sqlite3_stmt *st;
    char states[128];
    int rc;

    *changed = 0;
    if (ids == NULL) {
        st = stmt(s, where);
        sqlite3_bind_int64(st, 1, now_ms);
        select_bind(st, sel, states);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, what);
        *changed = sqlite3_changes(s->db);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        st = stmt(s, by_id);
        sqlite3_bind_int64(st, 1, now_ms);
        sqlite3_bind_int64(st, 2, ids[i]);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, what);
        *changed += sqlite3_changes(s->db);
    }
    return 0;
}

int
sqlite_retry(struct store *base, const int64_t *ids, size_t n,
             const struct store_select *sel, int64_t now_ms, long *changed)
{
    struct sqlite_store *s = sq(base);
    return update_jobs(s, ST_RETRY_ID, ST_RETRY_WHERE, ids, n, sel, now_ms,
                       changed, "retry");
}

int
sqlite_cancel(struct store *base, const int64_t *ids, size_t n,
              const struct store_select *sel, int64_t now_ms, long *changed)
{
    struct sqlite_store *s = sq(base);
    return update_jobs(s, ST_CANCEL_ID, ST_CANCEL_WHERE, ids, n, sel, now_ms,
                       changed, "cancel");
}

int
sqlite_export(struct store *base, const struct store_select *sel,
              store_row_fn fn, void *arg)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_EXPORT);
    char states[128];
    int rc, stop = 0;

    select_bind(st, sel, states);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *row = sqlite_row_json(st);
        stop = fn(row, arg);
        json_decref(row);
        if (stop != 0)
            break;
    }
    sqlite3_reset(st);
    if (stop != 0)
        return stop;
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "export");
}

/* The single integer a PRAGMA statement returns. */
static int
pragma_int(struct sqlite_store *s, enum stmt id, int64_t *v)
{
    sqlite3_stmt *st = stmt(s, id);
    int rc = sqlite3_step(st);
    *v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "pragma");
}

/* One bounded purge step in its own transaction: *njobs deleted. */
static int
purge_step(struct sqlite_store *s, const struct store_select *sel, long limit,
           long *njobs, long *nattempts)
{
    static const enum stmt steps[2] = {ST_PURGE_ATTEMPTS, ST_PURGE_JOBS};
    char states[128];
    int rc;

    if ((rc = sqlite_begin(&s->base)) < 0)
        return rc;
    for (int k = 0; k < 2; k++) {
        sqlite3_stmt *st = stmt(s, steps[k]);
        select_bind(st, sel, states);
        sqlite3_bind_int64(st, sqlite3_bind_parameter_index(st, ":limit"),
                           limit);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            rc = sqlite_fail(s, rc, "purge");
            sqlite_rollback(&s->base);
            return rc;
        }
        if (k == 0)
            *nattempts = sqlite3_changes(s->db);
        else
            *njobs = sqlite3_changes(s->db);
    }
    if ((rc = sqlite_commit(&s->base)) < 0)
        sqlite_rollback(&s->base);
    return rc;
}

/* Sleeps STORE_PURGE_GAP_MS between two write transactions of purge. */
static void
purge_gap(void)
{
    struct timespec ts = {0, STORE_PURGE_GAP_MS * 1000000L};
    nanosleep(&ts, NULL);
}

/* Gives freed pages back: incremental_vacuum in steps when the file
 * allows it, then the WAL truncated. */
static int
purge_reclaim(struct sqlite_store *s, long *freed)
{
    int64_t mode = 0, before = 0, after = 0;
    int rc;

    *freed = 0;
    if ((rc = pragma_int(s, ST_AUTO_VACUUM, &mode)) < 0 ||
        (rc = pragma_int(s, ST_FREELIST, &before)) < 0)
        return rc;
    /* 2 = incremental; 1 (full) already shrank at each commit. */
    if (mode == 2) {
        char *sql =
            xasprintf("PRAGMA incremental_vacuum(%d)", STORE_VACUUM_STEP);
        for (int64_t left = before; left > 0;) {
            int64_t now_left;
            rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
            if (rc != SQLITE_OK) {
                rc = sqlite_fail(s, rc, "incremental_vacuum");
                break;
            }
            if ((rc = pragma_int(s, ST_FREELIST, &now_left)) < 0)
                break;
            if (now_left >= left)
                break; /* nothing more to give back */
            left = now_left;
            if (left > 0)
                purge_gap();
        }
        free(sql);
        if (rc < 0)
            return rc;
    }
    if ((rc = pragma_int(s, ST_FREELIST, &after)) < 0)
        return rc;
    *freed = (long)(before - after);
    /* PASSIVE first: it copies the WAL back without keeping writers out,
     * so the TRUNCATE after it (which does keep them out while pending)
     * has almost nothing left to copy. A reader (the daemon) may keep
     * part of the WAL alive: SQLITE_BUSY here only means the file shrinks
     * at a later checkpoint. */
    rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL,
                                   NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE,
                                       NULL, NULL);
    if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
        return sqlite_fail(s, rc, "wal_checkpoint");
    return 0;
}

int
sqlite_purge(struct store *base, const struct store_select *sel,
             long batch_rows, long *jobs, long *attempts, long *freed_pages)
{
    struct sqlite_store *s = sq(base);
    long nj, na;
    int rc;

    do {
        nj = na = 0;
        if ((rc = purge_step(s, sel, batch_rows, &nj, &na)) < 0)
            return rc;
        *jobs += nj;
        *attempts += na;
        if (nj == batch_rows)
            purge_gap();
    } while (nj == batch_rows);
    return purge_reclaim(s, freed_pages);
}

json_t *
sqlite_progress_json(struct store *base, const char *batch)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, batch ? ST_PROGRESS_BATCH : ST_BATCHES);
    json_t *arr = json_array();

    if (batch)
        bind_text(st, 1, batch);
    if (sqlite_rows_json(s, st, arr, "batch progress") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

json_t *
sqlite_providers_json(struct store *base)
{
    struct sqlite_store *s = sq(base);
    json_t *arr = json_array();

    if (sqlite_rows_json(s, stmt(s, ST_LANES), arr, "providers") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

json_t *
sqlite_spend_json(struct store *base, const char *batch)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_SPEND_ROWS);
    json_t *arr = json_array();

    bind_text(st, 1, batch);
    if (sqlite_rows_json(s, st, arr, "spend") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}
