/*
 * store: the SQLite queue against real SQLite, on ":memory:" and on temp
 * files (for what needs a second connection). Rows are checked through the
 * store's own JSON queries or, for views and raw columns, through a plain
 * sqlite3 connection to the same file.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "sluice/clock.h"
#include "sluice/jobspec.h"
#include "sluice/store.h"

/* 2023-11-14T22:13:20Z: any fixed "now" will do. */
#define T0 INT64_C(1700000000000)
#define LEASE_MS 60000

struct tmpdb {
    char dir[64];
    char path[96];
};

static void
tmpdb_make(struct tmpdb *t)
{
    snprintf(t->dir, sizeof(t->dir), "/tmp/test_store.XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->path, sizeof(t->path), "%s/queue.db", t->dir);
}

static void
tmpdb_remove(struct tmpdb *t)
{
    static const char *const suffix[] = {"", "-wal", "-shm"};
    char p[128];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", t->path, suffix[i]);
        unlink(p);
    }
    rmdir(t->dir);
}

static struct store *
open_store(const char *path)
{
    struct store *s = NULL;
    assert_int_equal(store_open(path, &s), 0);
    assert_non_null(s);
    return s;
}

/* Inserts a job whose custom_id and key are key; returns store_insert_job. */
static int
insert(struct store *s, const char *provider, const char *key, int priority,
       int64_t now)
{
    struct jobspec j = {
        .provider = (char *)provider,
        .custom_id = (char *)key,
        .method = "POST",
        .path = "/v1/run",
        .body = "{\"prompt\":\"a cat\"}",
        .idempotency_key = (char *)key,
        .priority = priority,
        .max_attempts = 3,
    };
    return store_insert_job(s, &j, now);
}

static void
insert_n(struct store *s, const char *provider, int n, int64_t now)
{
    char key[32];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "%s-%d", provider, i);
        assert_int_equal(insert(s, provider, key, 0, now), 0);
    }
}

/* The first column of the first row of sql on a fresh connection. */
static long long
sql_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    long long v = -1;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static json_t *
job(struct store *s, const char *key)
{
    json_t *j = store_job_json(s, key);
    assert_non_null(j);
    return j;
}

static json_int_t
job_int(struct store *s, const char *key, const char *field)
{
    json_t *j = job(s, key);
    json_int_t v = json_integer_value(json_object_get(j, field));
    json_decref(j);
    return v;
}

/* A copy of the job's string field, "" for null; caller frees. */
static char *
job_str(struct store *s, const char *key, const char *field)
{
    json_t *j = job(s, key);
    const char *v = json_string_value(json_object_get(j, field));
    char *copy = strdup(v ? v : "");
    json_decref(j);
    return copy;
}

static void
assert_job_str(struct store *s, const char *key, const char *field,
               const char *want)
{
    char *got = job_str(s, key, field);
    assert_string_equal(got, want);
    free(got);
}

static void
assert_job_null(struct store *s, const char *key, const char *field)
{
    json_t *j = job(s, key);
    assert_true(json_is_null(json_object_get(j, field)));
    json_decref(j);
}

static int
claim(struct store *s, const char *provider, int max, int64_t now,
      const char *owner, struct job **out)
{
    int n = -1;
    assert_int_equal(
        store_claim(s, provider, max, now, LEASE_MS, owner, out, &n), 0);
    return n;
}

static void
free_jobs(struct job **jobs, int n)
{
    for (int i = 0; i < n; i++)
        job_free(jobs[i]);
}

/* A failed, retryable attempt of a claimed job. */
static struct job_update
failure(int64_t id, int attempt, int64_t at)
{
    return (struct job_update){
        .job_id = id,
        .state = JOB_RETRYING,
        .run_after = at + 2000,
        .has_attempt = true,
        .attempt = attempt,
        .key_sent = "k",
        .started_at = at - 100,
        .finished_at = at,
        .http_status = 503,
        .cls = ERR_UNAVAILABLE,
        .code = "overloaded",
        .message = "try later",
        .request_id = "req_1",
        .retry_after_ms = 2000,
    };
}

/* --- open and migrate ------------------------------------------------- */

static void
test_open_applies_migrations_and_sets_user_version(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    assert_true(store_schema_latest(s) >= 2);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    store_close(s);
}

static void
test_reopen_is_idempotent_and_keeps_rows(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    int latest;

    tmpdb_make(&t);
    s = open_store(t.path);
    assert_int_equal(insert(s, "a", "k1", 0, T0), 0);
    store_close(s);
    s = open_store(t.path);
    latest = store_schema_latest(s);
    assert_int_equal(store_schema_version(s), latest);
    assert_int_equal(job_int(s, "k1", "id"), 1);
    store_close(s);
    assert_int_equal(sql_int(t.path, "PRAGMA user_version"), latest);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM jobs"), 1);
    assert_int_equal(
        sql_int(t.path, "SELECT journal_mode = 'wal' FROM "
                        "pragma_journal_mode"),
        1);
    tmpdb_remove(&t);
}

static void
test_open_refuses_a_newer_schema(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s = NULL;
    char sql[64];

    tmpdb_make(&t);
    s = open_store(t.path);
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d",
             store_schema_latest(s) + 1);
    store_close(s);
    sql_int(t.path, sql);
    s = NULL;
    assert_int_equal(store_open(t.path, &s), -EPROTO);
    assert_null(s);
    tmpdb_remove(&t);
}

/* sluiced --check and sluicectl's reading commands: a database one
 * migration behind this build is opened as it is, its version told, and
 * nothing in the file changes; a missing file is not created. */
static void
test_readonly_open_never_migrates_or_writes(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    char sql[64];
    int latest;

    tmpdb_make(&t);
    s = open_store(t.path);
    assert_int_equal(insert(s, "a", "k1", 0, T0), 0);
    latest = store_schema_latest(s);
    store_close(s);
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", latest - 1);
    sql_int(t.path, sql);

    s = NULL;
    assert_int_equal(store_open_readonly(t.path, &s), 0);
    assert_int_equal(store_schema_version(s), latest - 1);
    assert_int_equal(store_schema_latest(s), latest);
    store_close(s);
    assert_int_equal(sql_int(t.path, "PRAGMA user_version"), latest - 1);

    /* current: every reading works, and writing is refused */
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", latest);
    sql_int(t.path, sql);
    assert_int_equal(store_open_readonly(t.path, &s), 0);
    assert_int_equal(job_int(s, "k1", "id"), 1);
    assert_true(insert(s, "a", "k2", 0, T0) < 0);
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM jobs"), 1);

    char missing[600];
    snprintf(missing, sizeof(missing), "%s.missing", t.path);
    assert_true(store_open_readonly(missing, &s) < 0);
    assert_null(s);
    assert_int_equal(access(missing, F_OK), -1);
    tmpdb_remove(&t);
}

/* A row the database refuses (here an operator's trigger; in the field a
 * value over SQLite's length limit) must not hold back the other outcomes
 * of its commit, and must not be retried for ever: it becomes the job's
 * failure, protocol / unstorable; if even that is refused, it is dropped
 * and the job stays leased, to be taken back. */
static void
test_a_row_the_database_refuses_does_not_hold_back_the_others(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[4];
    sqlite3 *db;

    tmpdb_make(&t);
    s = open_store(t.path);
    insert_n(s, "a", 4, T0);
    assert_int_equal(claim(s, "a", 4, T0, "d1", out), 4);
    free_jobs(out, 4);
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "CREATE TRIGGER no_result BEFORE UPDATE OF state ON jobs "
                     "WHEN NEW.id = 2 AND NEW.state = 'succeeded' BEGIN "
                     "SELECT RAISE(ABORT, 'refused'); END; "
                     "CREATE TRIGGER refuse_all BEFORE UPDATE ON jobs "
                     "WHEN NEW.id = 4 BEGIN "
                     "SELECT RAISE(ABORT, 'refused'); END;",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    for (int64_t id = 1; id <= 4; id++) {
        struct job_update u = {
            .job_id = id, .state = JOB_SUCCEEDED, .has_attempt = true,
            .attempt = 1, .key_sent = "k", .started_at = T0 + 10,
            .finished_at = T0 + 20, .http_status = 200,
            .request_id = "req_ok", .result = "{\"url\":\"https://x/1\"}",
        };
        store_record(s, &u);
    }
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_pending(s), 0);
    assert_job_str(s, "1", "state", "succeeded");
    assert_job_str(s, "3", "state", "succeeded");
    assert_job_str(s, "2", "state", "failed");
    assert_job_str(s, "2", "error_class", "protocol");
    assert_job_str(s, "2", "error_code", "unstorable");
    assert_job_null(s, "2", "result");
    assert_int_equal(
        sql_int(t.path, "SELECT count(*) FROM attempts WHERE job_id = 2"), 1);
    /* refused even as a failure: dropped, still leased for a reclaim */
    assert_job_str(s, "4", "state", "running");
    assert_int_equal(
        sql_int(t.path, "SELECT lease_until IS NOT NULL FROM jobs "
                        "WHERE id = 4"),
        1);
    store_close(s);
    tmpdb_remove(&t);
}

/* A dead daemon's running jobs go back to the queue, except those of a
 * provider without idempotency: their requests may have reached it, so
 * they fail as unknown_outcome, the attempt cut short by the crash given
 * back (docs/design.md §4). */
static void
test_reclaim_fails_unsafe_providers_jobs_as_unknown_outcome(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[2];
    static const char *const unsafe[] = {"b"};
    long n = -1;

    insert_n(s, "a", 1, T0);
    insert_n(s, "b", 1, T0);
    assert_int_equal(claim(s, "a", 1, T0, "dead-owner", out), 1);
    free_jobs(out, 1);
    assert_int_equal(claim(s, "b", 1, T0, "dead-owner", out), 1);
    free_jobs(out, 1);
    store_set_unsafe_resend(s, unsafe, 1);
    assert_int_equal(store_reclaim_expired(s, T0 + LEASE_MS + 1, &n), 0);
    assert_int_equal(n, 2);
    assert_job_str(s, "1", "state", "queued");
    assert_int_equal(job_int(s, "1", "attempt_count"), 1);
    assert_job_str(s, "2", "state", "failed");
    assert_job_str(s, "2", "error_class", "unknown_outcome");
    assert_job_str(s, "2", "error_code", "lease_lost");
    assert_int_equal(job_int(s, "2", "attempt_count"), 0);
    assert_job_null(s, "2", "lease_until");
    store_close(s);
}

/* --- enqueue ------------------------------------------------------------ */

static void
test_duplicate_key_returns_1_and_inserts_nothing(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    json_t *jobs;

    assert_int_equal(insert(s, "a", "same", 0, T0), 0);
    assert_int_equal(insert(s, "a", "same", 5, T0 + 1), 1);
    /* the key is unique per provider only */
    assert_int_equal(insert(s, "b", "same", 0, T0), 0);
    jobs = store_jobs_json(s, &(struct store_filter){0});
    assert_int_equal(json_array_size(jobs), 2);
    json_decref(jobs);
    assert_int_equal(job_int(s, "1", "priority"), 0);
    store_close(s);
}

static void
test_rolled_back_transaction_leaves_nothing(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    json_t *jobs;

    assert_int_equal(store_begin(s), 0);
    insert_n(s, "a", 10, T0);
    store_rollback(s);
    jobs = store_jobs_json(s, NULL);
    assert_int_equal(json_array_size(jobs), 0);
    json_decref(jobs);

    assert_int_equal(store_begin(s), 0);
    insert_n(s, "a", 10, T0);
    assert_int_equal(store_commit(s), 0);
    jobs = store_jobs_json(s, NULL);
    assert_int_equal(json_array_size(jobs), 10);
    json_decref(jobs);
    store_close(s);
}

/* --- claims ------------------------------------------------------------- */

static void
test_claim_orders_by_priority_then_run_after_and_skips_future_jobs(
    void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[8];
    int n;

    assert_int_equal(insert(s, "a", "late", 0, T0 + 10), 0);  /* id 1 */
    assert_int_equal(insert(s, "a", "early", 0, T0), 0);      /* id 2 */
    assert_int_equal(insert(s, "a", "urgent", 9, T0 + 20), 0); /* id 3 */
    assert_int_equal(insert(s, "a", "future", 99, T0 + 5000), 0);
    assert_int_equal(insert(s, "b", "other", 99, T0), 0);

    n = claim(s, "a", 8, T0 + 100, "d1", out);
    assert_int_equal(n, 3);
    assert_string_equal(out[0]->custom_id, "urgent");
    assert_string_equal(out[1]->custom_id, "early");
    assert_string_equal(out[2]->custom_id, "late");
    for (int i = 0; i < n; i++) {
        assert_string_equal(out[i]->provider, "a");
        assert_int_equal(out[i]->state, JOB_RUNNING);
        assert_int_equal(out[i]->attempts, 1);
        assert_int_equal(out[i]->max_attempts, 3);
        assert_string_equal(out[i]->method, "POST");
        assert_string_equal(out[i]->body, "{\"prompt\":\"a cat\"}");
    }
    free_jobs(out, n);
    /* nothing twice, and the future job waits for its run_after */
    assert_int_equal(claim(s, "a", 8, T0 + 200, "d1", out), 0);
    n = claim(s, "a", 8, T0 + 5000, "d1", out);
    assert_int_equal(n, 1);
    assert_string_equal(out[0]->custom_id, "future");
    free_jobs(out, n);
    store_close(s);
}

static void
test_claim_respects_max_and_sets_lease_owner_and_attempts(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[4];
    int n;

    insert_n(s, "a", 5, T0);
    n = claim(s, "a", 2, T0, "host:42", out);
    assert_int_equal(n, 2);
    assert_int_equal(out[0]->id, 1);
    assert_int_equal(out[1]->id, 2);
    free_jobs(out, n);
    assert_job_str(s, "1", "state", "running");
    assert_job_str(s, "1", "lease_owner", "host:42");
    assert_int_equal(job_int(s, "1", "lease_until"), T0 + LEASE_MS);
    assert_int_equal(job_int(s, "1", "attempt_count"), 1);
    assert_job_str(s, "3", "state", "queued");
    assert_int_equal(job_int(s, "3", "attempt_count"), 0);
    assert_int_equal(claim(s, "a", 0, T0, "host:42", out), 0);
    store_close(s);
}

static void
test_two_handles_claiming_alternately_get_disjoint_ids(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s1, *s2;
    struct job *out[7];
    int seen[101] = {0}, total = 0, n;

    tmpdb_make(&t);
    s1 = open_store(t.path);
    s2 = open_store(t.path);
    assert_int_equal(store_begin(s1), 0);
    insert_n(s1, "a", 100, T0);
    assert_int_equal(store_commit(s1), 0);
    for (int round = 0;; round++) {
        struct store *s = round % 2 ? s2 : s1;
        n = claim(s, "a", 7, T0, round % 2 ? "d2" : "d1", out);
        if (n == 0)
            break;
        for (int i = 0; i < n; i++) {
            assert_in_range(out[i]->id, 1, 100);
            assert_int_equal(seen[out[i]->id], 0);
            seen[out[i]->id] = 1;
        }
        total += n;
        free_jobs(out, n);
    }
    assert_int_equal(total, 100);
    store_close(s1);
    store_close(s2);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM jobs WHERE "
                                     "attempts = 1 AND state = 'running'"),
                     100);
    tmpdb_remove(&t);
}

static void
test_reclaim_returns_expired_leases_to_queued_with_attempt_charged(
    void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[4];
    long n = -1;
    int got;

    insert_n(s, "a", 2, T0);
    got = claim(s, "a", 1, T0, "d1", out);            /* id 1, lease T0+60s */
    free_jobs(out, got);
    got = claim(s, "a", 1, T0 + 30000, "d1", out);    /* id 2, T0+90s */
    free_jobs(out, got);

    assert_int_equal(store_reclaim_expired(s, T0 + LEASE_MS - 1, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(store_reclaim_expired(s, T0 + LEASE_MS, &n), 0);
    assert_int_equal(n, 1);
    assert_job_str(s, "1", "state", "queued");
    assert_int_equal(job_int(s, "1", "attempt_count"), 1);
    assert_job_null(s, "1", "lease_until");
    assert_job_null(s, "1", "lease_owner");
    assert_job_str(s, "2", "state", "running");

    /* claimed again, it is on its second attempt */
    got = claim(s, "a", 1, T0 + LEASE_MS, "d2", out);
    assert_int_equal(got, 1);
    assert_int_equal(out[0]->id, 1);
    assert_int_equal(out[0]->attempts, 2);
    free_jobs(out, got);
    store_close(s);
}

static void
test_reclaim_fails_a_job_with_no_attempt_left(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[1];
    int64_t now = T0;
    long n;

    insert_n(s, "a", 1, T0); /* max_attempts 3 */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(claim(s, "a", 1, now, "d1", out), 1);
        free_jobs(out, 1);
        now += LEASE_MS;
        assert_int_equal(store_reclaim_expired(s, now, &n), 0);
        assert_int_equal(n, 1);
    }
    assert_job_str(s, "1", "state", "failed");
    assert_job_str(s, "1", "error_code", "lease_expired");
    assert_int_equal(job_int(s, "1", "attempt_count"), 3);
    assert_int_equal(job_int(s, "1", "finished_at"), now);
    assert_int_equal(claim(s, "a", 1, now, "d1", out), 0);
    store_close(s);
}

/* --- outcomes ----------------------------------------------------------- */

/* An outcome whose job was deleted while its request was out (an
 * operator's DELETE): nothing is written for it, not even its attempt
 * row, and the rest of the group commit goes through. */
static void
test_flush_skips_the_attempt_of_a_deleted_job(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[2];
    struct job_update u;

    tmpdb_make(&t);
    s = open_store(t.path);
    insert_n(s, "a", 2, T0);
    assert_int_equal(claim(s, "a", 2, T0, "d1", out), 2);
    free_jobs(out, 2);
    assert_int_equal(sql_int(t.path, "DELETE FROM jobs WHERE id = 1 "
                                     "RETURNING 0"),
                     0);
    for (int64_t id = 1; id <= 2; id++) {
        u = (struct job_update){
            .job_id = id, .state = JOB_SUCCEEDED, .has_attempt = true,
            .attempt = 1, .key_sent = "k", .started_at = T0 + 100,
            .finished_at = T0 + 200, .http_status = 200, .cls = ERR_NONE,
            .result = "{}",
        };
        store_record(s, &u);
    }
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_pending(s), 0);
    assert_job_str(s, "2", "state", "succeeded");
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM attempts "
                                     "WHERE job_id = 2"),
                     1);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM attempts"), 1);
    store_close(s);
    tmpdb_remove(&t);
}

static void
test_flush_writes_job_and_attempt_rows(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[1];
    struct job_update u;
    json_t *j, *attempts;

    tmpdb_make(&t);
    s = open_store(t.path);
    insert_n(s, "a", 1, T0);
    assert_int_equal(claim(s, "a", 1, T0, "d1", out), 1);
    free_jobs(out, 1);

    u = failure(1, 1, T0 + 500);
    u.fields = "[{\"field\":\"prompt\",\"message\":\"too long\"}]";
    store_record(s, &u);
    assert_int_equal(store_pending(s), 1);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM attempts"), 0);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_pending(s), 0);

    assert_job_str(s, "1", "state", "retrying");
    assert_int_equal(job_int(s, "1", "run_after"), T0 + 2500);
    assert_int_equal(job_int(s, "1", "http_status"), 503);
    assert_job_str(s, "1", "error_class", "unavailable");
    assert_job_str(s, "1", "error_code", "overloaded");
    assert_job_str(s, "1", "error_message", "try later");
    assert_job_str(s, "1", "request_id", "req_1");
    assert_job_null(s, "1", "lease_until");
    assert_job_null(s, "1", "finished_at");
    assert_int_equal(job_int(s, "1", "attempt_count"), 1);

    /* second attempt succeeds: failure cleared, result and cost kept */
    assert_int_equal(claim(s, "a", 1, T0 + 2500, "d1", out), 1);
    free_jobs(out, 1);
    u = (struct job_update){
        .job_id = 1, .state = JOB_SUCCEEDED, .has_attempt = true,
        .attempt = 2, .key_sent = "k", .started_at = T0 + 2600,
        .finished_at = T0 + 3000, .http_status = 200, .cls = ERR_NONE,
        .request_id = "req_2", .result = "{\"url\":\"https://x/1.png\"}",
        .cost = 0.25, .has_cost = true,
    };
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);

    j = job(s, "1");
    assert_string_equal(json_string_value(json_object_get(j, "state")),
                        "succeeded");
    assert_true(json_is_null(json_object_get(j, "error_class")));
    assert_true(json_is_null(json_object_get(j, "error_code")));
    assert_true(json_is_null(json_object_get(j, "fields")));
    assert_int_equal(json_integer_value(json_object_get(j, "http_status")),
                     200);
    assert_int_equal(json_integer_value(json_object_get(j, "finished_at")),
                     T0 + 3000);
    assert_true(json_real_value(json_object_get(j, "cost")) == 0.25);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "result"),
                                          "url")),
        "https://x/1.png");
    attempts = json_object_get(j, "attempts");
    assert_int_equal(json_array_size(attempts), 2);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(attempts, 0), "http_status")),
                     503);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(attempts, 0), "error_class")),
                        "unavailable");
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(attempts, 0), "retry_after_ms")),
                     2000);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(attempts, 1), "attempt")),
                     2);
    assert_true(json_is_null(json_object_get(json_array_get(attempts, 1),
                                             "error_class")));
    json_decref(j);
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM attempts "
                                     "WHERE job_id = 1"),
                     2);
    tmpdb_remove(&t);
}

static void
test_flush_while_another_connection_writes_returns_ebusy_and_keeps_all(
    void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[3];
    struct job_update u;
    sqlite3 *other;

    tmpdb_make(&t);
    s = open_store(t.path);
    store_set_busy_timeout(s, 0);
    insert_n(s, "a", 3, T0);
    assert_int_equal(claim(s, "a", 3, T0, "d1", out), 3);
    free_jobs(out, 3);

    assert_int_equal(sqlite3_open(t.path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL,
                                  NULL),
                     SQLITE_OK);
    u = failure(1, 1, T0 + 100);
    store_record(s, &u);
    assert_int_equal(store_flush(s), -EBUSY);
    u = failure(2, 1, T0 + 200);
    store_record(s, &u);
    assert_int_equal(store_flush(s), -EBUSY);
    assert_int_equal(store_pending(s), 2);
    assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(other);

    u = failure(3, 1, T0 + 300);
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_pending(s), 0);
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM jobs WHERE "
                                     "state = 'retrying'"),
                     3);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM attempts"), 3);
    tmpdb_remove(&t);
}

static void
test_close_flushes_what_is_buffered(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[1];
    struct job_update u;

    tmpdb_make(&t);
    s = open_store(t.path);
    insert_n(s, "a", 1, T0);
    assert_int_equal(claim(s, "a", 1, T0, "d1", out), 1);
    free_jobs(out, 1);
    u = failure(1, 1, T0 + 100);
    store_record(s, &u);
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM attempts"), 1);
    tmpdb_remove(&t);
}

static void
test_record_copies_every_string(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[1];
    char code[16], msg[16], key[16];
    struct job_update u;

    insert_n(s, "a", 1, T0);
    assert_int_equal(claim(s, "a", 1, T0, "d1", out), 1);
    free_jobs(out, 1);
    strcpy(code, "bad_gateway");
    strcpy(msg, "upstream");
    strcpy(key, "a-0.2");
    u = failure(1, 1, T0 + 100);
    u.code = code;
    u.message = msg;
    u.new_key = key;
    store_record(s, &u);
    memset(code, 'x', sizeof(code) - 1);
    memset(msg, 'x', sizeof(msg) - 1);
    memset(key, 'x', sizeof(key) - 1);
    assert_int_equal(store_flush(s), 0);
    assert_job_str(s, "1", "error_code", "bad_gateway");
    assert_job_str(s, "1", "error_message", "upstream");
    assert_job_str(s, "1", "send_key", "a-0.2");
    store_close(s);
}

static void
test_derived_key_is_sent_but_identity_key_still_dedups(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[1];
    struct job_update u;

    insert_n(s, "a", 1, T0);
    assert_int_equal(claim(s, "a", 1, T0, "d1", out), 1);
    assert_string_equal(out[0]->idempotency_key, "a-0");
    free_jobs(out, 1);
    u = failure(1, 1, T0 + 100);
    u.cls = ERR_RUN_FAILED;
    u.new_key = "a-0.2";
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_job_str(s, "1", "idempotency_key", "a-0");
    assert_int_equal(claim(s, "a", 1, T0 + 2100, "d1", out), 1);
    assert_string_equal(out[0]->idempotency_key, "a-0.2");
    free_jobs(out, 1);
    /* re-feeding the same line is still a duplicate */
    assert_int_equal(insert(s, "a", "a-0", 0, T0 + 3000), 1);
    store_close(s);
}

/* --- daemons and lease guards ------------------------------------------- */

static void
register_daemon(struct store *s, const char *owner, int64_t now)
{
    struct daemon_row d = {.owner = (char *)owner, .host = "h", .pid = 7,
                           .started_at = now};
    assert_int_equal(store_daemon_register(s, &d), 0);
}

static int64_t
heartbeat_of(struct store *s, const char *owner)
{
    struct daemon_row *rows;
    size_t n;
    int64_t hb = -1;
    assert_int_equal(store_daemons(s, &rows, &n), 0);
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].owner, owner) == 0)
            hb = rows[i].heartbeat_at;
    store_daemons_free(rows, n);
    return hb;
}

static void
test_daemon_rows_register_beat_and_list(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct daemon_row *rows;
    size_t n;
    bool present;

    register_daemon(s, "tok-b", T0);
    register_daemon(s, "tok-a", T0 + 5);
    struct daemon_row dup = {.owner = "tok-a", .host = "h", .started_at = 1};
    assert_int_equal(store_daemon_register(s, &dup), -EEXIST);
    assert_int_equal(store_daemons(s, &rows, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(rows[0].owner, "tok-a");
    assert_string_equal(rows[0].host, "h");
    assert_int_equal(rows[0].pid, 7);
    assert_int_equal(rows[0].started_at, T0 + 5);
    assert_int_equal(rows[0].heartbeat_at, T0 + 5);
    store_daemons_free(rows, n);

    assert_int_equal(store_daemon_beat(s, "tok-a", T0 + 1000, &present), 0);
    assert_true(present);
    assert_int_equal(heartbeat_of(s, "tok-a"), T0 + 1000);
    assert_int_equal(store_daemon_beat(s, "nobody", T0, &present), 0);
    assert_false(present);
    store_close(s);
}

/* A wall clock stepped back still moves the heartbeat: it is watched for
 * change, never compared with anyone's clock. */
static void
test_heartbeat_changes_on_every_beat_even_when_the_clock_goes_back(
    void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    bool present;

    register_daemon(s, "tok", T0);
    assert_int_equal(store_daemon_beat(s, "tok", T0 + 2000, &present), 0);
    assert_int_equal(heartbeat_of(s, "tok"), T0 + 2000);
    assert_int_equal(store_daemon_beat(s, "tok", T0 - 3600000, &present), 0);
    assert_int_equal(heartbeat_of(s, "tok"), T0 + 2001);
    assert_int_equal(store_daemon_beat(s, "tok", T0 - 3599000, &present), 0);
    assert_int_equal(heartbeat_of(s, "tok"), T0 + 2002);
    store_close(s);
}

static void
test_reap_takes_back_a_dead_daemons_leases_and_row(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[3];
    struct job_update u;
    long got = -1;

    insert_n(s, "a", 3, T0);
    register_daemon(s, "dead", T0);
    register_daemon(s, "live", T0);
    assert_int_equal(claim(s, "a", 2, T0, "dead", out), 2);
    free_jobs(out, 2);
    /* job 2 becomes a waiting run, then its poll is leased by "dead" */
    u = (struct job_update){.job_id = 2, .owner = "dead",
                            .state = JOB_WAITING, .run_after = T0,
                            .remote_id = "r", .finished_at = T0 + 10};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(claim(s, "a", 1, T0 + 10, "dead", out), 1);
    assert_int_equal(out[0]->id, 2);
    free_jobs(out, 1);
    assert_int_equal(claim(s, "a", 1, T0 + 10, "live", out), 1);
    assert_int_equal(out[0]->id, 3);
    free_jobs(out, 1);

    /* leases far from expiry, but their owner is dead */
    assert_int_equal(store_daemon_reap(s, "dead", 0, T0 + 20, &got), 0);
    assert_int_equal(got, 1);
    assert_job_str(s, "1", "state", "queued");
    assert_int_equal(job_int(s, "1", "attempt_count"), 1);
    assert_job_null(s, "1", "lease_owner");
    assert_job_str(s, "2", "state", "waiting");
    assert_job_null(s, "2", "lease_until");
    assert_job_str(s, "3", "state", "running");
    assert_job_str(s, "3", "lease_owner", "live");
    assert_int_equal(heartbeat_of(s, "dead"), -1);
    assert_int_equal(heartbeat_of(s, "live"), T0);
    store_close(s);
}

/* The verdict "no beat since seen" is checked again under the write lock:
 * a beat that raced it proves the daemon alive and nothing is taken. */
static void
test_reap_of_a_daemon_that_beat_since_the_verdict_does_nothing(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[1];
    bool present;
    long got = -1;

    insert_n(s, "a", 1, T0);
    register_daemon(s, "slow", T0);
    assert_int_equal(claim(s, "a", 1, T0, "slow", out), 1);
    free_jobs(out, 1);
    assert_int_equal(store_daemon_beat(s, "slow", T0 + 1000, &present), 0);
    assert_int_equal(store_daemon_reap(s, "slow", T0, T0 + 40000, &got),
                     -ESTALE);
    assert_int_equal(got, 0);
    assert_job_str(s, "1", "state", "running");
    assert_job_str(s, "1", "lease_owner", "slow");
    assert_int_equal(heartbeat_of(s, "slow"), T0 + 1000);
    /* the heartbeat it saw is still the last one: taken */
    assert_int_equal(
        store_daemon_reap(s, "slow", T0 + 1000, T0 + 80000, &got), 0);
    assert_int_equal(got, 1);
    assert_job_str(s, "1", "state", "queued");
    store_close(s);
}

/* Lease expiry is only for owners with no daemons row: a live daemon's
 * leases survive any wall clock, however far it jumps. */
static void
test_a_registered_owners_leases_never_expire_by_the_wall_clock(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[1];
    long n = -1;
    int64_t year = INT64_C(365) * 24 * 3600 * 1000;

    insert_n(s, "a", 2, T0);
    register_daemon(s, "live", T0);
    assert_int_equal(claim(s, "a", 1, T0, "live", out), 1);
    free_jobs(out, 1);
    assert_int_equal(claim(s, "a", 1, T0, "old-host:42", out), 1);
    free_jobs(out, 1);
    assert_int_equal(store_reclaim_expired(s, T0 + year, &n), 0);
    assert_int_equal(n, 1);
    assert_job_str(s, "1", "state", "running");
    assert_job_str(s, "1", "lease_owner", "live");
    assert_job_str(s, "2", "state", "queued");
    store_close(s);
}

/* An outcome is written only while its job is still leased to the owner
 * it was claimed under: after a reclaim and a new claim by another daemon,
 * the first daemon's late answer changes nothing of the job (its attempt
 * row is kept: the request went out). */
static void
test_late_outcome_after_reclaim_is_not_written(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[2];
    struct job_update u;
    json_t *j;
    long got;

    insert_n(s, "a", 2, T0);
    register_daemon(s, "old", T0);
    register_daemon(s, "new", T0);
    assert_int_equal(claim(s, "a", 2, T0, "old", out), 2);
    free_jobs(out, 2);
    assert_int_equal(store_daemon_reap(s, "old", 0, T0 + 10, &got), 0);
    assert_int_equal(got, 2);
    /* job 1 is claimed again by "new"; job 2 stays queued */
    assert_int_equal(claim(s, "a", 1, T0 + 20, "new", out), 1);
    assert_int_equal(out[0]->id, 1);
    free_jobs(out, 1);

    u = (struct job_update){.job_id = 1, .owner = "old",
                            .state = JOB_SUCCEEDED, .has_attempt = true,
                            .attempt = 1, .key_sent = "a-0",
                            .started_at = T0, .finished_at = T0 + 30,
                            .http_status = 200, .result = "{\"late\":1}"};
    store_record(s, &u);
    u.job_id = 2;
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_job_str(s, "1", "state", "running");
    assert_job_str(s, "1", "lease_owner", "new");
    assert_job_null(s, "1", "result");
    assert_job_str(s, "2", "state", "queued");
    assert_job_null(s, "2", "result");
    j = job(s, "1");
    assert_int_equal(json_array_size(json_object_get(j, "attempts")), 1);
    json_decref(j);

    /* the new owner's outcome is written */
    u = (struct job_update){.job_id = 1, .owner = "new",
                            .state = JOB_SUCCEEDED, .has_attempt = true,
                            .attempt = 2, .key_sent = "a-0",
                            .started_at = T0 + 20, .finished_at = T0 + 40,
                            .http_status = 200, .result = "{\"new\":1}"};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_job_str(s, "1", "state", "succeeded");
    assert_job_null(s, "1", "lease_owner");
    j = job(s, "1");
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(j, "result"), "new")),
                     1);
    assert_int_equal(json_array_size(json_object_get(j, "attempts")), 2);
    json_decref(j);
    store_close(s);
}

/* An operator's cancel clears the lease, yet the holder's answer is still
 * kept on the cancelled job (the job stays cancelled). */
static void
test_outcome_of_a_job_cancelled_in_flight_is_kept(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[1];
    struct job_update u;
    int64_t id = 1;
    long changed;

    insert_n(s, "a", 1, T0);
    register_daemon(s, "d", T0);
    assert_int_equal(claim(s, "a", 1, T0, "d", out), 1);
    free_jobs(out, 1);
    assert_int_equal(store_cancel(s, &id, 1, NULL, T0 + 5, &changed), 0);
    assert_int_equal(changed, 1);
    assert_job_null(s, "1", "lease_owner");
    u = (struct job_update){.job_id = 1, .owner = "d",
                            .state = JOB_SUCCEEDED, .has_attempt = true,
                            .attempt = 1, .started_at = T0,
                            .finished_at = T0 + 9, .http_status = 200,
                            .result = "{\"ok\":1}"};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_job_str(s, "1", "state", "cancelled");
    assert_int_equal(job_int(s, "1", "http_status"), 200);
    store_close(s);
}

static void
test_uncharge_refunds_the_attempt_and_deferrals_are_stored(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[1];
    struct job_update u;

    insert_n(s, "a", 1, T0);
    assert_int_equal(claim(s, "a", 1, T0, "d1", out), 1);
    free_jobs(out, 1);
    /* a 429: deferral, attempt refunded */
    u = failure(1, 1, T0 + 100);
    u.http_status = 429;
    u.cls = ERR_RATE_LIMITED;
    u.uncharge = true;
    u.deferrals = 1;
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(job_int(s, "1", "attempt_count"), 0);
    assert_int_equal(job_int(s, "1", "deferrals"), 1);
    assert_job_str(s, "1", "error_class", "rate_limited");

    /* a graceful release at shutdown: back to queued, no attempt row */
    assert_int_equal(claim(s, "a", 1, T0 + 2100, "d1", out), 1);
    assert_int_equal(out[0]->attempts, 1);
    assert_int_equal(out[0]->deferrals, 1);
    free_jobs(out, 1);
    u = (struct job_update){.job_id = 1, .state = JOB_QUEUED,
                            .run_after = T0 + 3000, .deferrals = 1,
                            .uncharge = true, .finished_at = T0 + 3000};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_job_str(s, "1", "state", "queued");
    assert_int_equal(job_int(s, "1", "attempt_count"), 0);
    assert_job_null(s, "1", "lease_until");
    /* the last failure stays for triage */
    assert_job_str(s, "1", "error_class", "rate_limited");
    json_t *j = job(s, "1");
    assert_int_equal(json_array_size(json_object_get(j, "attempts")), 1);
    json_decref(j);
    store_close(s);
}

static void
test_waiting_job_poll_claim_keeps_state_and_attempts(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[2];
    struct job_update u;
    int n;

    insert_n(s, "a", 1, T0);
    assert_int_equal(claim(s, "a", 1, T0, "d1", out), 1);
    free_jobs(out, 1);
    u = (struct job_update){
        .job_id = 1, .state = JOB_WAITING, .run_after = T0 + 3000,
        .has_attempt = true, .attempt = 1, .key_sent = "a-0",
        .started_at = T0, .finished_at = T0 + 100, .http_status = 202,
        .remote_id = "run_7", .poll_url = "/runs/run_7",
    };
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_job_str(s, "1", "state", "waiting");
    assert_int_equal(job_int(s, "1", "waiting_since"), T0 + 100);

    assert_int_equal(claim(s, "a", 2, T0 + 2999, "d1", out), 0);
    n = claim(s, "a", 2, T0 + 3000, "d1", out);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->state, JOB_WAITING);
    assert_int_equal(out[0]->attempts, 1);
    assert_string_equal(out[0]->remote_id, "run_7");
    assert_string_equal(out[0]->poll_url, "/runs/run_7");
    assert_int_equal(out[0]->waiting_since, T0 + 100);
    free_jobs(out, n);
    assert_job_str(s, "1", "state", "waiting");
    assert_int_equal(job_int(s, "1", "attempt_count"), 1);
    assert_int_equal(job_int(s, "1", "lease_until"), T0 + 3000 + LEASE_MS);

    /* leased: not handed out again until the lease expires */
    assert_int_equal(claim(s, "a", 2, T0 + 4000, "d2", out), 0);
    n = claim(s, "a", 2, T0 + 3000 + LEASE_MS, "d2", out);
    assert_int_equal(n, 1);
    free_jobs(out, n);

    /* a poll says "still running": next poll later, uncharge ignored */
    u = (struct job_update){.job_id = 1, .state = JOB_WAITING,
                            .run_after = T0 + 70000, .uncharge = true,
                            .is_poll = true, .finished_at = T0 + 63500};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(job_int(s, "1", "attempt_count"), 1);
    assert_job_null(s, "1", "lease_until");
    assert_int_equal(job_int(s, "1", "waiting_since"), T0 + 100);
    store_close(s);
}

static void
test_cancelled_job_stays_cancelled_when_its_outcome_arrives(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[2];
    struct job_update u;
    int64_t ids[3] = {1, 2, 99}, cancelled[3];
    int n = -1;

    tmpdb_make(&t);
    s = open_store(t.path);
    insert_n(s, "a", 2, T0);
    assert_int_equal(claim(s, "a", 2, T0, "d1", out), 2);
    free_jobs(out, 2);
    sql_int(t.path, "UPDATE jobs SET state = 'cancelled', finished_at = 5 "
                    "WHERE id = 2");
    assert_int_equal(store_cancelled(s, ids, 3, cancelled, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(cancelled[0], 2);

    u = failure(2, 1, T0 + 100);
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_job_str(s, "2", "state", "cancelled");
    assert_int_equal(job_int(s, "2", "finished_at"), 5);
    assert_job_str(s, "2", "error_code", "overloaded");
    assert_job_null(s, "2", "lease_until");
    store_close(s);
    tmpdb_remove(&t);
}

static void
test_next_due_sees_queued_retrying_and_unleased_waiting_jobs(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[2];
    struct job_update u;
    int64_t due = -1;
    long unfinished = -1;

    assert_int_equal(store_next_due(s, "a", T0, &due), 0);
    assert_int_equal(due, 0);
    assert_int_equal(insert(s, "a", "q", 0, T0 + 500), 0);
    assert_int_equal(insert(s, "b", "other", 0, T0 + 1), 0);
    assert_int_equal(store_next_due(s, "a", T0, &due), 0);
    assert_int_equal(due, T0 + 500);

    /* job 1 becomes waiting with a poll due at T0 + 100 */
    assert_int_equal(claim(s, "a", 1, T0 + 500, "d1", out), 1);
    free_jobs(out, 1);
    assert_int_equal(store_next_due(s, "a", T0 + 500, &due), 0);
    assert_int_equal(due, 0); /* running: nothing claimable */
    u = (struct job_update){.job_id = 1, .state = JOB_WAITING,
                            .run_after = T0 + 100, .remote_id = "r",
                            .finished_at = T0 + 600};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_next_due(s, "a", T0 + 600, &due), 0);
    assert_int_equal(due, T0 + 100);
    /* under a live poll lease it is not claimable */
    assert_int_equal(claim(s, "a", 1, T0 + 600, "d1", out), 1);
    free_jobs(out, 1);
    assert_int_equal(store_next_due(s, "a", T0 + 700, &due), 0);
    assert_int_equal(due, 0);
    assert_int_equal(insert(s, "a", "r", 0, T0 + 9000), 0);
    assert_int_equal(store_next_due(s, "a", T0 + 700, &due), 0);
    assert_int_equal(due, T0 + 9000);

    assert_int_equal(store_pending_count(s, "a", &unfinished), 0);
    assert_int_equal(unfinished, 2);
    store_close(s);
}

static void
test_oldest_queued_is_the_earliest_due_queued_job(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[2];
    int64_t since = -1;

    assert_int_equal(store_oldest_queued(s, "a", &since), 0);
    assert_int_equal(since, 0);
    assert_int_equal(insert(s, "a", "a1", 0, T0 + 10), 0);
    assert_int_equal(insert(s, "a", "a2", 0, T0 + 20), 0);
    assert_int_equal(insert(s, "a", "a3", 0, T0 + 30), 0);
    assert_int_equal(insert(s, "b", "b1", 0, T0 + 5), 0);
    /* the oldest of a is claimed: the next one has waited longest */
    assert_int_equal(claim(s, "a", 1, T0 + 40, "d1", out), 1);
    free_jobs(out, 1);
    assert_int_equal(store_oldest_queued(s, "a", &since), 0);
    assert_int_equal(since, T0 + 20);
    assert_int_equal(store_oldest_queued(s, "b", &since), 0);
    assert_int_equal(since, T0 + 5);
    store_close(s);
}

/* Queued jobs are only in jobs_claim, ordered by priority first: the
 * next due and the oldest queued job are found at every priority level,
 * and retrying jobs count for the first but not for the second. */
static void
test_due_and_oldest_queued_look_at_every_priority(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[3];
    struct job_update u;
    int64_t due = -1, since = -1;
    bool any = false;

    assert_int_equal(store_has_unfinished(s, "a", &any), 0);
    assert_false(any);
    assert_int_equal(insert(s, "a", "hi", 5, T0 + 300), 0);  /* id 1 */
    assert_int_equal(insert(s, "a", "lo", 0, T0 + 100), 0);  /* id 2 */
    assert_int_equal(insert(s, "a", "mid", 2, T0 + 200), 0); /* id 3 */
    assert_int_equal(store_next_due(s, "a", T0, &due), 0);
    assert_int_equal(due, T0 + 100);
    assert_int_equal(store_oldest_queued(s, "a", &since), 0);
    assert_int_equal(since, T0 + 100);
    assert_int_equal(store_has_unfinished(s, "a", &any), 0);
    assert_true(any);
    /* lo and mid back as retrying, hi done, one more queued at level 2 */
    assert_int_equal(claim(s, "a", 3, T0 + 400, "d1", out), 3);
    free_jobs(out, 3);
    u = (struct job_update){.job_id = 2, .state = JOB_RETRYING,
                            .run_after = T0 + 50, .finished_at = T0 + 400};
    store_record(s, &u);
    u.job_id = 3;
    u.run_after = T0 + 550;
    store_record(s, &u);
    u = (struct job_update){.job_id = 1, .state = JOB_SUCCEEDED,
                            .finished_at = T0 + 400};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(insert(s, "a", "q2", 2, T0 + 600), 0);
    assert_int_equal(store_next_due(s, "a", T0 + 400, &due), 0);
    assert_int_equal(due, T0 + 50);
    /* at level 2 the retrying mid (550) comes first and is passed over */
    assert_int_equal(store_oldest_queued(s, "a", &since), 0);
    assert_int_equal(since, T0 + 600);
    store_close(s);
}

static int
insert_in(struct store *s, const char *batch, const char *key, int priority)
{
    struct jobspec j = {
        .provider = "a",
        .batch = (char *)batch,
        .custom_id = (char *)key,
        .method = "POST",
        .path = "/v1/run",
        .idempotency_key = (char *)key,
        .priority = priority,
        .max_attempts = 3,
    };
    return store_insert_job(s, &j, T0);
}

static void
on_budget(const char *batch, double budget, void *data)
{
    char *out = data;
    snprintf(out + strlen(out), 64, "%s=%.2f;", batch, budget);
}

static void
test_claim_except_holds_batches_and_spend_sums_costs(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    const char *held[] = {"capped"};
    struct job *out[8];
    char budgets[256] = "";
    double spent = -1;
    long costed = -1;
    int n = -1;

    /* the held batch has the highest priority: still never claimed */
    assert_int_equal(insert_in(s, "capped", "c1", 9), 0);
    assert_int_equal(insert_in(s, "capped", "c2", 9), 0);
    assert_int_equal(insert_in(s, "free", "f1", 0), 0);
    assert_int_equal(insert_in(s, NULL, "n1", 0), 0);
    assert_int_equal(store_claim_except(s, "a", 8, T0, LEASE_MS, "d1", held,
                                        1, out, &n),
                     0);
    assert_int_equal(n, 2);
    for (int i = 0; i < n; i++) {
        assert_true(out[i]->batch == NULL ||
                    strcmp(out[i]->batch, "free") == 0);
        struct job_update u = {.job_id = out[i]->id,
                               .state = JOB_SUCCEEDED,
                               .finished_at = T0 + 1,
                               .cost = 0.25,
                               .has_cost = true};
        store_record(s, &u);
    }
    free_jobs(out, n);
    assert_int_equal(store_flush(s), 0);

    assert_int_equal(store_spend(s, "a", NULL, &spent, &costed), 0);
    assert_true(spent > 0.4999 && spent < 0.5001);
    assert_int_equal(costed, 2);
    assert_int_equal(store_spend(s, NULL, "free", &spent, &costed), 0);
    assert_true(spent > 0.2499 && spent < 0.2501);
    assert_int_equal(costed, 1);
    assert_int_equal(store_spend(s, NULL, "capped", &spent, &costed), 0);
    assert_true(spent == 0 && costed == 0);

    assert_int_equal(store_batch_budget_set(s, "capped", 1.5, T0), 0);
    assert_int_equal(store_batch_budget_set(s, "free", 2, T0), 0);
    assert_int_equal(store_batch_budget_set(s, "free", 0, T0), 0); /* lifted */
    assert_int_equal(store_batch_budgets(s, on_budget, budgets), 0);
    assert_string_equal(budgets, "capped=1.50;");
    assert_int_equal(store_batch_pause(s, "capped", true, T0 + 5), 0);
    json_t *rows = store_spend_json(s, "capped");
    assert_non_null(rows);
    assert_int_equal(json_array_size(rows), 1);
    json_t *r = json_array_get(rows, 0);
    assert_string_equal(json_string_value(json_object_get(r, "batch_state")),
                        "paused");
    assert_string_equal(json_string_value(json_object_get(r, "batch_reason")),
                        "budget");
    json_decref(rows);
    store_close(s);
}

/* --- providers ---------------------------------------------------------- */

static void
test_provider_rows_upsert_and_resume_requests(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct provider_row p = {.name = "flora", .state = "active",
                             .concurrency_limit = 8, .in_flight = 3,
                             .sent = 10, .succeeded = 9, .throttled = 1};
    int limit = -1;
    int64_t resume = -1;

    assert_int_equal(store_provider_get(s, "flora", &limit, &resume), 0);
    assert_int_equal(limit, 0);
    assert_int_equal(resume, 0);
    assert_int_equal(store_provider_request_resume(s, "flora", T0),
                     -ENOENT);
    assert_int_equal(store_provider_put(s, &p, T0), 0);
    p.state = "paused";
    p.reason = "auth: invalid_api_key";
    p.concurrency_limit = 24;
    assert_int_equal(store_provider_put(s, &p, T0 + 1000), 0);
    assert_int_equal(store_provider_request_resume(s, "flora", T0 + 2000),
                     0);
    assert_int_equal(store_provider_get(s, "flora", &limit, &resume), 0);
    assert_int_equal(limit, 24);
    assert_int_equal(resume, T0 + 2000);
    /* a later put keeps the resume request for the daemon to see */
    assert_int_equal(store_provider_put(s, &p, T0 + 3000), 0);
    assert_int_equal(store_provider_get(s, "flora", &limit, &resume), 0);
    assert_int_equal(resume, T0 + 2000);
    /* the pacer's rate and the token budget, NULL when there are none */
    json_t *rows = store_providers_json(s);
    json_t *r = json_array_get(rows, 0);
    assert_true(json_is_null(json_object_get(r, "rate_per_s")));
    assert_true(json_is_null(json_object_get(r, "token_limit")));
    json_decref(rows);
    p.rate_per_s = 9.5;
    p.rate_source = "advertised";
    p.token_limit = 90000;
    p.tokens_available = -120;
    assert_int_equal(store_provider_put(s, &p, T0 + 4000), 0);
    rows = store_providers_json(s);
    r = json_array_get(rows, 0);
    assert_true(json_real_value(json_object_get(r, "rate_per_s")) == 9.5);
    assert_string_equal(json_string_value(json_object_get(r, "rate_source")),
                        "advertised");
    assert_int_equal(json_integer_value(json_object_get(r, "token_limit")),
                     90000);
    assert_int_equal(
        json_integer_value(json_object_get(r, "tokens_available")), -120);
    json_decref(rows);
    store_close(s);
}

static void
test_data_version_changes_when_another_connection_commits(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s1, *s2;
    int64_t v1 = 0, v2 = 0;

    tmpdb_make(&t);
    s1 = open_store(t.path);
    s2 = open_store(t.path);
    assert_int_equal(store_data_version(s1, &v1), 0);
    assert_int_equal(insert(s2, "a", "k", 0, T0), 0);
    assert_int_equal(store_data_version(s1, &v2), 0);
    assert_true(v2 != v1);
    store_close(s1);
    store_close(s2);
    tmpdb_remove(&t);
}

/* --- operator queries ----------------------------------------------------- */

static void
test_status_json_counts_every_state_per_provider_and_batch(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct jobspec j = {.provider = "a", .batch = "nightly",
                        .method = "POST", .path = "/x",
                        .idempotency_key = "b1", .max_attempts = 1};
    struct provider_row p = {.name = "c", .state = "paused",
                             .reason = "insufficient_balance",
                             .concurrency_limit = 4};
    struct job *out[1];
    json_t *st, *a, *batch, *lanes;

    insert_n(s, "a", 3, T0);
    assert_int_equal(store_insert_job(s, &j, T0), 0);
    insert_n(s, "b", 1, T0);
    assert_int_equal(claim(s, "a", 1, T0, "d1", out), 1);
    free_jobs(out, 1);
    assert_int_equal(store_provider_put(s, &p, T0), 0);

    st = store_status_json(s);
    assert_non_null(st);
    a = json_object_get(json_object_get(st, "providers"), "a");
    assert_int_equal(json_integer_value(json_object_get(a, "queued")), 3);
    assert_int_equal(json_integer_value(json_object_get(a, "running")), 1);
    assert_int_equal(json_integer_value(json_object_get(a, "cancelled")),
                     0);
    assert_int_equal(json_integer_value(json_object_get(a, "total")), 4);
    assert_int_equal(json_object_size(a), 8); /* 7 states + total */
    /* a provider with a lane row but no jobs is listed with zeros */
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(st, "providers"), "c"),
            "total")),
        0);

    /* batches: (null, a), (null, b), (nightly, a) */
    assert_int_equal(json_array_size(json_object_get(st, "batches")), 3);
    batch = json_array_get(json_object_get(st, "batches"), 2);
    assert_string_equal(json_string_value(json_object_get(batch, "batch")),
                        "nightly");
    assert_int_equal(json_integer_value(json_object_get(batch, "total")),
                     1);
    assert_int_equal(json_integer_value(json_object_get(batch, "queued")),
                     1);

    lanes = json_object_get(st, "lanes");
    assert_int_equal(json_array_size(lanes), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(lanes, 0), "reason")),
                        "insufficient_balance");
    json_decref(st);
    store_close(s);
}

static void
test_jobs_json_filters_newest_first_without_body(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[1];
    json_t *arr;

    insert_n(s, "a", 4, T0);
    insert_n(s, "b", 2, T0);
    assert_int_equal(claim(s, "a", 1, T0, "d1", out), 1);
    free_jobs(out, 1);

    arr = store_jobs_json(s, &(struct store_filter){.provider = "a",
                                                    .state = "queued"});
    assert_int_equal(json_array_size(arr), 3);
    assert_int_equal(json_integer_value(
                         json_object_get(json_array_get(arr, 0), "id")),
                     4);
    assert_null(json_object_get(json_array_get(arr, 0), "body"));
    assert_null(json_object_get(json_array_get(arr, 0), "result"));
    assert_non_null(json_object_get(json_array_get(arr, 0), "error_code"));
    json_decref(arr);

    arr = store_jobs_json(s, &(struct store_filter){.limit = 2});
    assert_int_equal(json_array_size(arr), 2);
    assert_int_equal(json_integer_value(
                         json_object_get(json_array_get(arr, 0), "id")),
                     6);
    json_decref(arr);
    arr = store_jobs_json(s, &(struct store_filter){.batch = "none"});
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    store_close(s);
}

static void
test_job_json_by_id_or_custom_id_with_parsed_body(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    json_t *j;

    insert_n(s, "a", 2, T0);
    assert_int_equal(insert(s, "a", "1234", 0, T0), 0); /* id 3 */
    j = job(s, "a-1");
    assert_int_equal(json_integer_value(json_object_get(j, "id")), 2);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(j, "body"), "prompt")),
                        "a cat");
    assert_true(json_is_array(json_object_get(j, "attempts")));
    assert_true(json_is_null(json_object_get(j, "result")));
    assert_non_null(json_object_get(j, "idempotency_key"));
    json_decref(j);
    assert_int_equal(job_int(s, "2", "id"), 2);
    /* digits that are no id are tried as a custom_id */
    assert_int_equal(job_int(s, "1234", "id"), 3);
    assert_null(store_job_json(s, "nope"));
    assert_null(store_job_json(s, "77"));
    store_close(s);
}

/* A custom_id is found whether it is the job's key (through the unique
 * index) or not (--unique: through jobs_custom_id, which holds only those
 * jobs), on any provider; the newest job wins. */
static void
test_custom_id_is_found_whether_or_not_it_is_the_key(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct jobspec j = {.provider = "b", .custom_id = "u", .method = "POST",
                        .path = "/v1/run", .idempotency_key = "3f9a",
                        .max_attempts = 3};

    tmpdb_make(&t);
    s = open_store(t.path);
    assert_int_equal(insert(s, "a", "k", 0, T0), 0); /* id 1 */
    assert_int_equal(store_insert_job(s, &j, T0), 0); /* id 2 */
    assert_int_equal(insert(s, "b", "k", 0, T0), 0); /* id 3 */
    j.provider = "c";
    j.idempotency_key = "77e0";
    assert_int_equal(store_insert_job(s, &j, T0), 0); /* id 4 */
    j.custom_id = "v";
    j.idempotency_key = "0c1d";
    assert_int_equal(store_insert_job(s, &j, T0), 0); /* id 5 */
    assert_int_equal(job_int(s, "k", "id"), 3);
    assert_int_equal(job_int(s, "u", "id"), 4);
    assert_int_equal(job_int(s, "v", "id"), 5);
    assert_null(store_job_json(s, "3f9a"));
    store_close(s);
    /* only the jobs whose custom_id is not their key are indexed */
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM jobs INDEXED BY "
                                     "jobs_custom_id WHERE custom_id IS NOT "
                                     "NULL AND custom_id <> idempotency_key"),
                     3);
    tmpdb_remove(&t);
}

static void
test_views_return_latest_failures_summary_and_progress(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[4];
    struct job_update u;

    tmpdb_make(&t);
    s = open_store(t.path);
    insert_n(s, "a", 4, T0);
    assert_int_equal(claim(s, "a", 4, T0, "d1", out), 4);
    free_jobs(out, 4);
    /* jobs 1-3 fail 400 input_validation_error, job 3 latest; 4 succeeds */
    for (int id = 1; id <= 3; id++) {
        char rid[16];
        snprintf(rid, sizeof(rid), "req_%d", id);
        u = failure(id, 1, T0 + 100 * id);
        u.state = JOB_FAILED;
        u.http_status = 400;
        u.cls = ERR_INVALID_REQUEST;
        u.code = "input_validation_error";
        u.request_id = id == 3 ? NULL : rid;
        store_record(s, &u);
    }
    u = (struct job_update){.job_id = 4, .state = JOB_SUCCEEDED,
                            .http_status = 200, .result = "{}",
                            .finished_at = T0 + 900};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    store_close(s);

    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM failures"), 3);
    assert_int_equal(
        sql_int(t.path, "SELECT finished_at FROM failures WHERE id = 2"),
        T0 + 200);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM error_summary"),
                     1);
    assert_int_equal(sql_int(t.path, "SELECT count FROM error_summary "
                                     "WHERE error_code = "
                                     "'input_validation_error' AND "
                                     "error_class = 'invalid_request'"),
                     3);
    assert_int_equal(
        sql_int(t.path, "SELECT first_seen FROM error_summary"), T0 + 100);
    assert_int_equal(
        sql_int(t.path, "SELECT last_seen FROM error_summary"), T0 + 300);
    /* the newest failure with a request id is the sample */
    assert_int_equal(sql_int(t.path, "SELECT sample_request_id = 'req_2' "
                                     "FROM error_summary"),
                     1);
    assert_int_equal(sql_int(t.path, "SELECT total * 100 + failed * 10 + "
                                     "succeeded FROM batch_progress"),
                     431);
    assert_int_equal(
        sql_int(t.path, "SELECT last_finished_at FROM batch_progress"),
        T0 + 900);
    tmpdb_remove(&t);
}

/* EXPLAIN QUERY PLAN's detail lines of sql, joined by "; ". */
static void
query_plan(const char *path, const char *sql, char *out, size_t len)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    char eqp[1024];

    out[0] = '\0';
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    snprintf(eqp, sizeof(eqp), "EXPLAIN QUERY PLAN %s", sql);
    assert_int_equal(sqlite3_prepare_v2(db, eqp, -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        strncat(out, (const char *)sqlite3_column_text(st, 3),
                len - strlen(out) - 1);
        strncat(out, "; ", len - strlen(out) - 1);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* The schema's indexes serve the hot queries (their shape, as in store.c):
 * no table scan and no sort of the queue per claim. */
static void
test_schema_indexes_serve_claim_and_due_queries(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    char plan[1024];

    tmpdb_make(&t);
    s = open_store(t.path);
    store_close(s);
    query_plan(t.path,
               "SELECT id FROM jobs WHERE provider = 'a' AND state IN "
               "('queued', 'retrying') AND run_after <= 5 "
               "ORDER BY priority DESC, run_after, id LIMIT 8",
               plan, sizeof(plan));
    assert_non_null(strstr(plan, "USING INDEX jobs_claim"));
    assert_null(strstr(plan, "TEMP B-TREE"));
    /* ST_OLDEST_QUEUED: one search of jobs_claim per priority level */
    query_plan(t.path,
               "WITH RECURSIVE level(p) AS ("
               "  SELECT (SELECT priority FROM jobs WHERE provider = 'a' "
               "    AND state IN ('queued', 'retrying') "
               "    ORDER BY priority DESC LIMIT 1) "
               "  UNION ALL SELECT (SELECT priority FROM jobs "
               "    WHERE provider = 'a' AND state IN ('queued', "
               "    'retrying') AND priority < level.p "
               "    ORDER BY priority DESC LIMIT 1) FROM level "
               "  WHERE level.p IS NOT NULL) "
               "SELECT MIN((SELECT run_after FROM jobs "
               "  WHERE provider = 'a' AND state IN ('queued', 'retrying') "
               "  AND priority = level.p AND state = 'queued' "
               "  ORDER BY run_after LIMIT 1)) FROM level",
               plan, sizeof(plan));
    assert_non_null(strstr(plan, "INDEX jobs_claim (provider=?)"));
    assert_non_null(strstr(plan, "INDEX jobs_claim (provider=? AND "
                                 "priority<?)"));
    assert_non_null(strstr(plan, "INDEX jobs_claim (provider=? AND "
                                 "priority=?)"));
    assert_null(strstr(plan, "SCAN jobs"));
    assert_null(strstr(plan, "TEMP B-TREE"));
    /* jobs_state holds no queued job: a query that reads it repeats
     * its WHERE term (sql/015_state_index_unqueued.sql) */
    query_plan(t.path,
               "SELECT id FROM jobs WHERE provider = 'a' AND state = "
               "'waiting' AND state <> 'queued' AND run_after <= 5 AND "
               "(lease_until IS NULL OR lease_until <= 5) "
               "ORDER BY run_after, id LIMIT 8",
               plan, sizeof(plan));
    assert_non_null(strstr(plan, "INDEX jobs_state"));
    assert_null(strstr(plan, "TEMP B-TREE"));
    query_plan(t.path,
               "SELECT EXISTS (SELECT 1 FROM jobs WHERE provider = 'a' "
               "  AND state IN ('queued', 'retrying')) "
               "OR EXISTS (SELECT 1 FROM jobs WHERE provider = 'a' "
               "  AND state IN ('running', 'waiting') "
               "  AND state <> 'queued')",
               plan, sizeof(plan));
    assert_non_null(strstr(plan, "INDEX jobs_claim (provider=?)"));
    assert_non_null(strstr(plan, "COVERING INDEX jobs_state (provider=? "
                                 "AND state=?)"));
    assert_null(strstr(plan, "SCAN jobs"));
    query_plan(t.path,
               "SELECT id FROM jobs WHERE state = 'running' AND "
               "lease_until <= 5",
               plan, sizeof(plan));
    assert_non_null(strstr(plan, "INDEX jobs_lease"));
    /* ST_RESOLVE_CUSTOM_ID */
    query_plan(t.path,
               "SELECT id FROM ("
               "  SELECT id FROM jobs WHERE provider IN "
               "    (SELECT DISTINCT provider FROM job_counts) "
               "    AND idempotency_key = 'x' AND custom_id = 'x' "
               "  UNION ALL SELECT id FROM jobs WHERE custom_id = 'x' "
               "    AND custom_id IS NOT NULL AND custom_id <> "
               "    idempotency_key) "
               "ORDER BY id DESC LIMIT 1",
               plan, sizeof(plan));
    assert_non_null(strstr(plan, "SEARCH jobs USING INDEX "
                                 "sqlite_autoindex_jobs_1 (provider=? AND "
                                 "idempotency_key=?)"));
    assert_non_null(strstr(plan, "SEARCH jobs USING INDEX jobs_custom_id "
                               "(custom_id=?)"));
    assert_null(strstr(plan, "SCAN jobs"));
    tmpdb_remove(&t);
}

/* --- operator commands ------------------------------------------------- */

/* Bulk insert: 300 specs, keys k0..k249 with k0..k49 repeated at the end;
 * two whole statements of 128 rows and a row-by-row tail. */
static void
test_insert_jobs_counts_duplicates_within_and_across_statements(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct jobspec *specs = calloc(300, sizeof(*specs));
    char(*keys)[16] = calloc(300, 16);
    size_t inserted = 99;

    for (int i = 0; i < 300; i++) {
        snprintf(keys[i], 16, "k%d", i < 250 ? i : i - 250);
        specs[i] = (struct jobspec){
            .provider = "a",
            .batch = "b",
            .custom_id = keys[i],
            .method = "POST",
            .path = "/v1/run",
            .body = "{}",
            .idempotency_key = keys[i],
            .priority = i % 3,
            .max_attempts = 4,
        };
    }
    assert_int_equal(store_begin(s), 0);
    assert_int_equal(store_insert_jobs(s, specs, 300, T0, &inserted), 0);
    assert_int_equal(inserted, 250);
    assert_int_equal(store_commit(s), 0);
    /* every column of a bulk row is the one store_insert_job writes */
    assert_job_str(s, "k200", "batch", "b");
    assert_job_str(s, "k200", "state", "queued");
    assert_int_equal(job_int(s, "k200", "priority"), 200 % 3);
    assert_int_equal(job_int(s, "k200", "max_attempts"), 4);
    assert_int_equal(job_int(s, "k200", "run_after"), T0);
    assert_int_equal(job_int(s, "k200", "created_at"), T0);
    /* the first of a duplicated key wins: priority 0 of k3, not 253 % 3 */
    assert_int_equal(job_int(s, "k3", "priority"), 0);
    assert_int_equal(store_insert_jobs(s, specs, 300, T0, &inserted), 0);
    assert_int_equal(inserted, 0);
    assert_int_equal(store_insert_jobs(s, specs, 0, T0, &inserted), 0);
    assert_int_equal(inserted, 0);
    free(specs);
    free(keys);
    store_close(s);
}

/* Jobs 1-3 of provider a, all claimed; 1 and 2 fail (timeout / 400),
 * 3 succeeds; job 4 stays queued. */
static void
operator_night(struct store *s)
{
    struct job *out[4];
    struct job_update u;

    insert_n(s, "a", 4, T0);
    assert_int_equal(claim(s, "a", 3, T0, "d1", out), 3);
    free_jobs(out, 3);
    u = failure(1, 1, T0 + 100);
    u.state = JOB_FAILED;
    u.http_status = 504;
    u.cls = ERR_TIMEOUT;
    u.code = "gateway_timeout";
    u.request_id = "req_t";
    u.new_key = "a-0.2";
    u.deferrals = 3;
    store_record(s, &u);
    u = failure(2, 1, T0 + 200);
    u.state = JOB_FAILED;
    u.http_status = 400;
    u.cls = ERR_INVALID_REQUEST;
    u.code = "input_validation_error";
    u.request_id = "req_b";
    store_record(s, &u);
    u = (struct job_update){.job_id = 3,
                            .state = JOB_SUCCEEDED,
                            .http_status = 200,
                            .result = "{\"ok\":1}",
                            .request_id = "req_s",
                            .finished_at = T0 + 300};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
}

static void
test_retry_by_filter_resets_attempts_and_keeps_the_last_key(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[2];
    long changed = -1;

    operator_night(s);
    struct store_select sel = {.states = 1u << JOB_FAILED,
                               .error_class = "timeout"};
    assert_int_equal(store_retry(s, NULL, 0, &sel, T0 + 1000, &changed), 0);
    assert_int_equal(changed, 1);
    assert_job_str(s, "1", "state", "queued");
    assert_int_equal(job_int(s, "1", "attempt_count"), 0);
    assert_int_equal(job_int(s, "1", "deferrals"), 0);
    assert_int_equal(job_int(s, "1", "run_after"), T0 + 1000);
    assert_job_null(s, "1", "finished_at");
    /* the last failure stays until the next outcome */
    assert_job_str(s, "1", "error_code", "gateway_timeout");
    assert_job_str(s, "2", "state", "failed");
    /* claimed again (after job 4, due since T0), it sends the last key it
     * sent: a-0's run failed for good (hence a-0.2), and a-0.2's outcome
     * is unknown (a gateway timeout), so a provider that ran it answers
     * with that run; a-0 would replay the cached failure
     * (docs/design.md §4) */
    assert_int_equal(claim(s, "a", 2, T0 + 1000, "d1", out), 2);
    assert_int_equal(out[1]->id, 1);
    assert_string_equal(out[1]->idempotency_key, "a-0.2");
    assert_string_equal(out[1]->base_key, "a-0");
    assert_int_equal(out[1]->attempts, 1);
    free_jobs(out, 2);
    /* a filter never touches unfinished or succeeded jobs */
    sel = (struct store_select){.states = 1u << JOB_SUCCEEDED};
    assert_int_equal(store_retry(s, NULL, 0, &sel, T0, &changed), 0);
    assert_int_equal(changed, 0);
    store_close(s);
}

/* A job whose last run definitively failed at the provider (the poll was
 * answered with the failure) has that failure cached under the key it
 * sent: an operator's retry sends the next derived key, never a used one,
 * and derivations after it go on from there. */
static void
test_retry_after_a_failed_run_sends_a_key_never_used(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[1];
    struct job_update u;
    long changed = -1;
    int64_t id = 1;

    insert_n(s, "a", 1, T0);
    assert_int_equal(claim(s, "a", 1, T0, "d1", out), 1);
    free_jobs(out, 1);
    /* first life: a-0's run failed, a-0.2 sent, its run failed too */
    u = failure(id, 1, T0 + 100);
    u.http_status = 200;
    u.cls = ERR_RUN_FAILED;
    u.remote_id = "run_1";
    u.new_key = "a-0.2";
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(claim(s, "a", 1, T0 + 5000, "d1", out), 1);
    assert_string_equal(out[0]->idempotency_key, "a-0.2");
    free_jobs(out, 1);
    u = failure(id, 2, T0 + 5100);
    u.state = JOB_FAILED;
    u.http_status = 200;
    u.cls = ERR_RUN_FAILED;
    u.code = "internal_error";
    u.remote_id = "run_2";
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);

    assert_int_equal(store_retry(s, &id, 1, NULL, T0 + 9000, &changed), 0);
    assert_int_equal(changed, 1);
    assert_int_equal(claim(s, "a", 1, T0 + 9000, "d1", out), 1);
    assert_string_equal(out[0]->idempotency_key, "a-0.3");
    assert_int_equal(out[0]->attempts, 1);
    char *next = job_derived_key(out[0]);
    assert_string_equal(next, "a-0.4");
    free(next);
    free_jobs(out, 1);
    store_close(s);
}

static void
test_retry_and_cancel_by_id_skip_jobs_in_other_states(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    const char *refs[] = {"2", "a-2", "a-3", "nope", "99"};
    int64_t ids[5];
    long changed = -1;

    operator_night(s);
    assert_int_equal(store_resolve(s, refs, 5, ids), 0);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 4);
    assert_int_equal(ids[3], 0);
    assert_int_equal(ids[4], 0);
    /* 2 failed: retried; 3 succeeded and 4 queued: left */
    assert_int_equal(store_retry(s, ids, 3, NULL, T0, &changed), 0);
    assert_int_equal(changed, 1);
    assert_job_str(s, "3", "state", "succeeded");
    /* cancel: 2 (queued again) and 4 (queued) yes, 3 (succeeded) no */
    assert_int_equal(store_cancel(s, ids, 3, NULL, T0 + 50, &changed), 0);
    assert_int_equal(changed, 2);
    assert_job_str(s, "2", "state", "cancelled");
    assert_int_equal(job_int(s, "4", "finished_at"), T0 + 50);
    assert_job_str(s, "3", "state", "succeeded");
    store_close(s);
}

static void
test_cancel_of_a_running_job_clears_lease_and_survives_flush(
    void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[2];
    struct job_update u;
    int64_t ids[2] = {1, 2}, hit[2];
    long changed = -1;
    int n = -1;

    insert_n(s, "a", 2, T0);
    assert_int_equal(claim(s, "a", 2, T0, "d1", out), 2);
    free_jobs(out, 2);
    struct store_select sel = {.provider = "a", .states = 1u << JOB_RUNNING};
    assert_int_equal(store_cancel(s, NULL, 0, &sel, T0 + 10, &changed), 0);
    assert_int_equal(changed, 2);
    assert_job_null(s, "1", "lease_until");
    assert_int_equal(store_cancelled(s, ids, 2, hit, &n), 0);
    assert_int_equal(n, 2);
    /* the daemon's release of the aborted request keeps it cancelled */
    u = (struct job_update){.job_id = 1,
                            .state = JOB_CANCELLED,
                            .run_after = T0 + 20,
                            .finished_at = T0 + 20};
    store_record(s, &u);
    u = (struct job_update){.job_id = 2,
                            .state = JOB_SUCCEEDED,
                            .result = "{}",
                            .finished_at = T0 + 30};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_job_str(s, "1", "state", "cancelled");
    assert_job_str(s, "2", "state", "cancelled");
    assert_int_equal(job_int(s, "2", "finished_at"), T0 + 10);
    store_close(s);
}

static void
test_failures_json_groups_with_samples_and_filters(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    json_t *g, *first;

    operator_night(s);
    g = store_failures_json(s, &(struct store_select){0});
    assert_non_null(g);
    assert_int_equal(json_array_size(g), 2);
    first = json_array_get(g, 0);
    /* equal counts: provider, class, code order */
    assert_string_equal(
        json_string_value(json_object_get(first, "error_class")),
        "invalid_request");
    assert_int_equal(json_integer_value(json_object_get(first, "count")), 1);
    assert_int_equal(json_integer_value(json_object_get(first, "http_status")),
                     400);
    assert_int_equal(json_integer_value(json_object_get(first, "first_seen")),
                     T0 + 200);
    assert_string_equal(json_string_value(json_object_get(first, "message")),
                        "try later");
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(first, "sample_request_ids"), 0)),
                        "req_b");
    assert_int_equal(
        json_integer_value(json_object_get(first, "sample_job_id")), 2);
    json_decref(g);

    g = store_failures_json(s,
                            &(struct store_select){.finished_since = T0 + 150});
    assert_int_equal(json_array_size(g), 1);
    json_decref(g);
    g = store_failures_json(s, &(struct store_select){.batch = "x"});
    assert_int_equal(json_array_size(g), 0);
    json_decref(g);
    store_close(s);
}

struct collected {
    int64_t ids[8];
    int n;
    int stop_after; /* 0 = never */
};

static int
collect_row(const json_t *row, void *arg)
{
    struct collected *c = arg;
    c->ids[c->n++] = json_integer_value(json_object_get(row, "id"));
    if (c->n == 3) {
        /* a success's result comes back as JSON, not text */
        assert_true(json_is_object(json_object_get(row, "result")));
    }
    return c->stop_after && c->n == c->stop_after ? 7 : 0;
}

static void
test_export_streams_selected_states_in_id_order(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct collected c = {0};
    struct store_select sel = {.states =
                                   (1u << JOB_SUCCEEDED) | (1u << JOB_FAILED)};

    operator_night(s);
    assert_int_equal(store_export(s, &sel, collect_row, &c), 0);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.ids[0], 1);
    assert_int_equal(c.ids[2], 3);
    /* a callback's non-zero answer stops the walk and is returned */
    c = (struct collected){.stop_after = 1};
    assert_int_equal(store_export(s, &sel, collect_row, &c), 7);
    assert_int_equal(c.n, 1);
    c = (struct collected){0};
    sel = (struct store_select){.states = 1u << JOB_QUEUED};
    assert_int_equal(store_export(s, &sel, collect_row, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.ids[0], 4);
    store_close(s);
}

static void
test_purge_deletes_in_bounded_batches_and_gives_space_back(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[64];
    long jobs = -1, attempts = -1, pages = -1;

    tmpdb_make(&t);
    s = open_store(t.path);
    insert_n(s, "a", 50, T0);
    insert_n(s, "b", 1, T0);
    assert_int_equal(claim(s, "a", 50, T0, "d1", out), 50);
    free_jobs(out, 50);
    for (int id = 1; id <= 50; id++) {
        struct job_update u = failure(id, 1, T0 + id);
        u.state = id <= 30 ? JOB_FAILED : JOB_SUCCEEDED;
        if (id > 30)
            u.cls = ERR_NONE;
        store_record(s, &u);
    }
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(sql_int(t.path, "PRAGMA auto_vacuum"), 2);

    /* only failed, finished before T0 + 21: jobs 1-20, 7 per commit */
    struct store_select sel = {.states = 1u << JOB_FAILED,
                               .finished_before = T0 + 21};
    assert_int_equal(store_purge(s, &sel, 7, &jobs, &attempts, &pages), 0);
    assert_int_equal(jobs, 20);
    assert_int_equal(attempts, 20);
    assert_int_equal(sql_int(t.path, "SELECT min(id) FROM jobs"), 21);
    /* every terminal state, the queued job of b stays */
    sel = (struct store_select){.finished_before = T0 + 1000};
    assert_int_equal(store_purge(s, &sel, 7, &jobs, &attempts, &pages), 0);
    assert_int_equal(jobs, 30);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM jobs"), 1);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM attempts"), 0);
    assert_int_equal(sql_int(t.path, "PRAGMA freelist_count"), 0);
    /* no cut-off is refused, not "everything" */
    sel = (struct store_select){0};
    assert_int_equal(store_purge(s, &sel, 7, &jobs, &attempts, &pages),
                     -EINVAL);
    store_close(s);
    tmpdb_remove(&t);
}

static void
test_progress_has_rate_and_eta_from_the_last_minute(void **state)
{
    (void)state;
    struct store *s = open_store(":memory:");
    struct job *out[10];
    int64_t now = clock_now_ms();
    json_t *rows, *r;

    insert_n(s, "a", 10, now - 60000);
    assert_int_equal(claim(s, "a", 4, now, "d1", out), 4);
    free_jobs(out, 4);
    /* 4 done over the last 2 s: 2/s, 6 left: ETA 3 s */
    for (int id = 1; id <= 4; id++) {
        struct job_update u = {.job_id = id,
                               .state = JOB_SUCCEEDED,
                               .result = "{}",
                               .finished_at = now - 2000 + 500 * (id - 1)};
        store_record(s, &u);
    }
    assert_int_equal(store_flush(s), 0);
    rows = store_progress_json(s, NULL);
    assert_int_equal(json_array_size(rows), 1);
    r = json_array_get(rows, 0);
    assert_int_equal(json_integer_value(json_object_get(r, "done")), 4);
    assert_int_equal(json_integer_value(json_object_get(r, "remaining")), 6);
    double rate = json_number_value(json_object_get(r, "rate_per_s"));
    assert_true(rate > 1.8 && rate < 2.1);
    json_int_t eta = json_integer_value(json_object_get(r, "eta_s"));
    assert_true(eta >= 3 && eta <= 4);
    json_decref(rows);
    rows = store_progress_json(s, "nope");
    assert_int_equal(json_array_size(rows), 0);
    json_decref(rows);
    rows = store_providers_json(s);
    assert_int_equal(json_array_size(rows), 0);
    json_decref(rows);
    store_close(s);
}

/* The embedded sql/ files (cmake/embed_sql.cmake), to build old versions. */
struct sql_file {
    const char *name;
    const char *text;
};
extern const struct sql_file sql_files[];

/* A database at version 2 (as in the field) gets migration 3: the
 * finished-at index and the new batch_progress columns, rows kept; and
 * the later ones. */
static void
test_migration_3_upgrades_a_version_2_database(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    sqlite3 *db;

    tmpdb_make(&t);
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql_files[0].text, NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql_files[1].text, NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "PRAGMA user_version = 2; INSERT INTO jobs (provider, "
                     "path, idempotency_key, created_at, updated_at) "
                     "VALUES ('a', '/', 'k', 1, 1)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM sqlite_schema "
                                     "WHERE name = 'jobs_finished'"),
                     0);
    s = open_store(t.path);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM sqlite_schema "
                                     "WHERE name = 'jobs_finished'"),
                     1);
    assert_int_equal(sql_int(t.path, "SELECT remaining FROM batch_progress"),
                     1);
    /* and migration 5: the daemons table, empty */
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM daemons"), 0);
    /* and migration 9: the providers row's rate and token columns */
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM "
                                     "pragma_table_info('providers') WHERE "
                                     "name IN ('rate_per_s', 'rate_source', "
                                     "'token_limit', 'tokens_available')"),
                     4);
    tmpdb_remove(&t);
}

/* Outputs (docs/design.md §13): a success's URLs become pending rows in the
 * same commit (a cancelled job's do not), claims lease them, a record
 * stores or reschedules them, a dead owner's lease is freed, --retry puts
 * failed rows back, and export lists each job's stored paths. */
static int
collect_outputs_row(const json_t *row, void *arg)
{
    json_t *arr = arg;
    json_array_append(arr, (json_t *)row);
    return 0;
}

static void
test_outputs_rows_from_success_to_stored_or_failed(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[2];
    struct output_claim c[4];
    const char *urls[] = {"https://x/1.png", "https://x/2.png",
                          "https://x/1.png"};
    int n = 0;
    long pending, stored, failed, changed;
    int64_t due;

    tmpdb_make(&t);
    s = open_store(t.path);
    insert_n(s, "a", 2, T0);
    assert_int_equal(claim(s, "a", 2, T0, "d1", out), 2);
    free_jobs(out, 2);
    /* job 2 is cancelled by an operator while its answer is in flight */
    assert_int_equal(store_cancel(s, (int64_t[]){2}, 1, NULL, T0, &changed),
                     0);
    for (int64_t id = 1; id <= 2; id++) {
        struct job_update u = {
            .job_id = id, .state = JOB_SUCCEEDED, .finished_at = T0 + 10,
            .http_status = 200, .result = "{}", .output_urls = urls,
            .noutput_urls = 3,
        };
        store_record(s, &u);
    }
    assert_int_equal(store_flush(s), 0);
    /* two rows (a repeated URL is one), none for the cancelled job */
    assert_int_equal(store_outputs_counts(s, &pending, &stored, &failed), 0);
    assert_int_equal(pending, 2);
    assert_int_equal(stored + failed, 0);
    assert_int_equal(store_outputs_next_due(s, &due), 0);
    assert_int_equal(due, T0 + 10);

    assert_int_equal(store_outputs_claim(s, 4, T0 + 20, LEASE_MS, "h:1", c,
                                         &n),
                     0);
    assert_int_equal(n, 2);
    assert_int_equal(c[0].job_id, 1);
    assert_string_equal(c[0].provider, "a");
    assert_int_equal(c[0].attempts, 1);
    /* leased: not claimable again, due when the lease ends */
    int again = -1;
    struct output_claim c2[1];
    assert_int_equal(store_outputs_claim(s, 1, T0 + 30, LEASE_MS, "h:2", c2,
                                         &again),
                     0);
    assert_int_equal(again, 0);
    assert_int_equal(store_outputs_next_due(s, &due), 0);
    assert_int_equal(due, T0 + 20 + LEASE_MS);

    int64_t first = c[0].id, second = c[1].id;
    struct output_result ok = {
        .id = first, .state = "stored", .path = "/o/ab/ab", .sha256 = "ab",
        .bytes = 42, .content_type = "image/png", .owner = "h:2",
    };
    /* only the lease holder writes */
    assert_int_equal(store_output_record(s, &ok, T0 + 40), -ESTALE);
    ok.owner = "h:1";
    assert_int_equal(store_output_record(s, &ok, T0 + 40), 0);
    struct output_result lost = {
        .id = second, .state = "failed", .error = "HTTP 404",
        .run_after = T0 + 40, .owner = "h:1",
    };
    assert_int_equal(store_output_record(s, &lost, T0 + 40), 0);
    for (int i = 0; i < n; i++)
        output_claim_clear(&c[i]);
    assert_int_equal(store_outputs_counts(s, &pending, &stored, &failed), 0);
    assert_int_equal(pending, 0);
    assert_int_equal(stored, 1);
    assert_int_equal(failed, 1);
    assert_int_equal(store_outputs_next_due(s, &due), 0);
    assert_int_equal(due, 0);

    json_t *rows = store_outputs_json(s, NULL, "failed");
    assert_int_equal(json_array_size(rows), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(rows, 0), "error")),
        "HTTP 404");
    json_decref(rows);

    /* export: each job's stored paths */
    json_t *exp = json_array();
    struct store_select sel = {.states = 1u << JOB_SUCCEEDED};
    assert_int_equal(store_export(s, &sel, collect_outputs_row, exp), 0);
    assert_int_equal(json_array_size(exp), 1);
    json_t *paths = json_object_get(json_array_get(exp, 0), "outputs");
    assert_int_equal(json_array_size(paths), 1);
    assert_string_equal(json_string_value(json_array_get(paths, 0)),
                        "/o/ab/ab");
    json_decref(exp);

    /* --retry: the failed row is pending again, attempts reset */
    assert_int_equal(store_outputs_retry(s, NULL, T0 + 50, &changed), 0);
    assert_int_equal(changed, 1);
    register_daemon(s, "d3", T0 + 50);
    assert_int_equal(store_outputs_claim(s, 4, T0 + 50, LEASE_MS, "d3", c,
                                         &n),
                     0);
    assert_int_equal(n, 1);
    assert_int_equal(c[0].attempts, 1);
    /* a dead daemon's download lease is freed with its jobs */
    long reclaimed;
    assert_int_equal(store_daemon_reap(s, "d3", 0, T0 + 55, &reclaimed), 0);
    output_claim_clear(&c[0]);
    assert_int_equal(store_outputs_claim(s, 4, T0 + 60, LEASE_MS, "h:4", c,
                                         &n),
                     0);
    assert_int_equal(n, 1);
    output_claim_clear(&c[0]);
    store_close(s);
    tmpdb_remove(&t);
}

/* store_counts as "provider/batch/state=n;…" */
static int
counts_line(const char *provider, const char *batch, enum job_state state,
            long n, void *arg)
{
    char *out = arg;
    size_t len = strlen(out);
    snprintf(out + len, 1024 - len, "%s/%s/%s=%ld;", provider,
             batch ? batch : "-", job_state_name(state), n);
    return 0;
}

/* The same line counted over the jobs table, as the truth to match. */
static void
counted_line(const char *path, char out[1024])
{
    sqlite3 *db;
    sqlite3_stmt *st;

    out[0] = '\0';
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db,
                           "SELECT provider, coalesce(batch, '-'), state, "
                           "count(*) FROM jobs GROUP BY provider, "
                           "coalesce(batch, ''), state ORDER BY provider, "
                           "coalesce(batch, ''), state",
                           -1, &st, NULL),
        SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        size_t len = strlen(out);
        snprintf(out + len, 1024 - len, "%s/%s/%s=%lld;",
                 sqlite3_column_text(st, 0), sqlite3_column_text(st, 1),
                 sqlite3_column_text(st, 2),
                 (long long)sqlite3_column_int64(st, 3));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void
assert_counts_kept(struct store *s, const char *path)
{
    char kept[1024] = "", counted[1024];
    assert_int_equal(store_counts(s, counts_line, kept), 0);
    counted_line(path, counted);
    assert_string_equal(kept, counted);
}

/* The kept counts follow every path that moves a job: enqueue (one row
 * and many), claim, outcomes, reclaim, retry, cancel and purge. */
static void
test_counts_are_kept_through_every_change(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    struct job *out[8];
    struct jobspec many[3];
    size_t inserted = 0;
    long n = 0, jobs, attempts, pages;

    tmpdb_make(&t);
    s = open_store(t.path);
    insert_n(s, "a", 6, T0);
    insert_n(s, "b", 1, T0);
    for (int i = 0; i < 3; i++) {
        char key[16];
        snprintf(key, sizeof(key), "n-%d", i);
        many[i] = (struct jobspec){.provider = "a", .batch = "nightly",
                                   .method = "POST", .path = "/v1/run",
                                   .idempotency_key = strdup(key),
                                   .max_attempts = 3};
    }
    assert_int_equal(store_insert_jobs(s, many, 3, T0, &inserted), 0);
    assert_int_equal(store_insert_jobs(s, many, 3, T0, &inserted), 0);
    assert_int_equal(inserted, 0); /* duplicates move nothing */
    for (int i = 0; i < 3; i++)
        free(many[i].idempotency_key);
    assert_counts_kept(s, t.path);
    /* a whole statement of one provider and batch, one that mixes them
     * (row by row), and a tail; fed twice (all duplicates) */
    struct jobspec big[260];
    for (int i = 0; i < 260; i++) {
        char key[16];
        snprintf(key, sizeof(key), "big-%d", i);
        big[i] = (struct jobspec){
            .provider = i >= 128 && i % 2 ? "b" : "a",
            .batch = i < 128 ? "big" : NULL,
            .method = "POST", .path = "/v1/run",
            .idempotency_key = strdup(key), .max_attempts = 3};
    }
    for (int k = 0; k < 2; k++) {
        assert_int_equal(store_insert_jobs(s, big, 260, T0, &inserted), 0);
        assert_int_equal(inserted, k == 0 ? 260 : 0);
        assert_counts_kept(s, t.path);
    }
    for (int i = 0; i < 260; i++)
        free(big[i].idempotency_key);

    assert_int_equal(claim(s, "a", 8, T0, "d1", out), 8);
    free_jobs(out, 8);
    assert_counts_kept(s, t.path);
    struct job_update u = failure(1, 1, T0 + 10);
    store_record(s, &u);
    u = failure(2, 1, T0 + 10);
    u.state = JOB_FAILED;
    store_record(s, &u);
    u = (struct job_update){.job_id = 3, .state = JOB_SUCCEEDED,
                            .finished_at = T0 + 20};
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_counts_kept(s, t.path);

    assert_int_equal(store_reclaim_expired(s, T0 + LEASE_MS + 1, &n), 0);
    assert_true(n > 0);
    assert_counts_kept(s, t.path);
    int64_t ids[2] = {2, 4};
    assert_int_equal(store_retry(s, ids, 1, NULL, T0 + 30, &n), 0);
    assert_int_equal(store_cancel(s, ids + 1, 1, NULL, T0 + 30, &n), 0);
    assert_counts_kept(s, t.path);
    struct store_select sel = {.finished_before = T0 + 1000};
    assert_int_equal(store_purge(s, &sel, 1, &jobs, &attempts, &pages), 0);
    assert_int_equal(jobs, 2);
    assert_counts_kept(s, t.path);
    assert_int_equal(store_pending_count(s, "a", &n), 0);
    assert_int_equal(n, 7 + 128 + 66);
    store_close(s);
    tmpdb_remove(&t);
}

/* A database at version 6 gets migration 7: the batches table, empty,
 * and the spend view over the costs already there. */
static void
test_migration_7_adds_batches_and_the_spend_view(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    sqlite3 *db;

    tmpdb_make(&t);
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(
            sqlite3_exec(db, sql_files[i].text, NULL, NULL, NULL),
            SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "PRAGMA user_version = 6; INSERT INTO jobs (provider, "
                     "batch, path, idempotency_key, state, cost, created_at, "
                     "updated_at, finished_at) VALUES "
                     "('a', 'x', '/', 'k1', 'succeeded', 0.25, 1, 1, 5), "
                     "('a', 'x', '/', 'k2', 'succeeded', 0.5, 1, 1, 5), "
                     "('a', 'x', '/', 'k3', 'queued', NULL, 1, 1, NULL)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    s = open_store(t.path);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM batches"), 0);
    assert_int_equal(sql_int(t.path, "SELECT spent * 100 + jobs_costed "
                                     "FROM spend WHERE batch = 'x'"),
                     77);
    tmpdb_remove(&t);
}

/* A database at version 11 gets migration 12: the kept spend filled from
 * the costs already there, the spend view's answers unchanged, and from
 * then on kept by its trigger, a purge leaving it. */
static void
test_migration_12_keeps_the_spend_of_the_costs_already_there(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    sqlite3 *db;

    tmpdb_make(&t);
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    for (int i = 0; i < 11; i++)
        assert_int_equal(
            sqlite3_exec(db, sql_files[i].text, NULL, NULL, NULL),
            SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "PRAGMA user_version = 11; INSERT INTO jobs (provider, "
                     "batch, path, idempotency_key, state, cost, created_at, "
                     "updated_at, finished_at) VALUES "
                     "('a', 'x', '/', 'k1', 'succeeded', 0.25, 1, 1, 5), "
                     "('a', 'x', '/', 'k2', 'succeeded', 0.5, 1, 1, 5), "
                     "('a', NULL, '/', 'k3', 'succeeded', 2, 1, 1, 5), "
                     "('a', 'x', '/', 'k4', 'queued', NULL, 1, 1, NULL)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    s = open_store(t.path);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT spent * 100 + jobs_costed "
                                     "FROM spend WHERE batch = 'x'"),
                     77);
    assert_int_equal(sql_int(t.path, "SELECT spent * 100 + jobs_costed "
                                     "FROM spend WHERE batch IS NULL"),
                     201);
    /* a cost set by hand is kept; a purge (a delete) leaves the spend */
    assert_int_equal(sql_int(t.path, "UPDATE jobs SET cost = 1 "
                                     "WHERE idempotency_key = 'k4' "
                                     "RETURNING 0"),
                     0);
    assert_int_equal(sql_int(t.path, "DELETE FROM jobs RETURNING 0"), 0);
    assert_int_equal(sql_int(t.path, "SELECT spent * 100 + jobs_costed "
                                     "FROM spend WHERE batch = 'x'"),
                     178);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM spend"), 2);
    tmpdb_remove(&t);
}

/* A database at version 13 gets migration 14: jobs_custom_id keeps only
 * the jobs whose custom_id is not their key, and every custom_id is still
 * found. */
static void
test_migration_14_indexes_only_custom_ids_that_are_not_keys(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    sqlite3 *db;

    tmpdb_make(&t);
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    for (int i = 0; i < 13; i++)
        assert_int_equal(
            sqlite3_exec(db, sql_files[i].text, NULL, NULL, NULL),
            SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "PRAGMA user_version = 13; INSERT INTO jobs (provider, "
                     "custom_id, path, idempotency_key, created_at, "
                     "updated_at) VALUES ('a', 'c', '/', 'c', 1, 1), "
                     "('a', 'u', '/', '9e2f', 1, 1), "
                     "('a', NULL, '/', '51ab', 1, 1); "
                     "INSERT INTO job_counts (provider, batch, state, n) "
                     "VALUES ('a', '', 'queued', 3)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    s = open_store(t.path);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    assert_int_equal(job_int(s, "c", "id"), 1);
    assert_int_equal(job_int(s, "u", "id"), 2);
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM jobs INDEXED BY "
                                     "jobs_custom_id WHERE custom_id IS NOT "
                                     "NULL AND custom_id <> idempotency_key"),
                     1);
    tmpdb_remove(&t);
}

/* A database at version 14 gets migration 15: jobs_state keeps every job
 * but the queued ones, which the claim index holds. */
static void
test_migration_15_leaves_queued_jobs_out_of_jobs_state(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    sqlite3 *db;
    int64_t due = -1;

    tmpdb_make(&t);
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    for (int i = 0; i < 14; i++)
        assert_int_equal(
            sqlite3_exec(db, sql_files[i].text, NULL, NULL, NULL),
            SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "PRAGMA user_version = 14; INSERT INTO jobs (provider, "
                     "path, idempotency_key, state, run_after, created_at, "
                     "updated_at) VALUES ('a', '/', 'k1', 'queued', 70, 1, "
                     "1), ('a', '/', 'k2', 'waiting', 90, 1, 1), "
                     "('a', '/', 'k3', 'failed', 0, 1, 1); "
                     "INSERT INTO job_counts (provider, batch, state, n) "
                     "VALUES ('a', '', 'queued', 1), ('a', '', 'waiting', 1), "
                     "('a', '', 'failed', 1)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    s = open_store(t.path);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    assert_int_equal(store_next_due(s, "a", 100, &due), 0);
    assert_int_equal(due, 70);
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM jobs INDEXED BY "
                                     "jobs_state WHERE state <> 'queued'"),
                     2);
    tmpdb_remove(&t);
}

/* A database at version 5 gets migration 6: counts of the jobs already
 * there, and batch_progress read from them. */
static void
test_migration_6_counts_the_jobs_already_there(void **state)
{
    (void)state;
    struct tmpdb t;
    struct store *s;
    sqlite3 *db;

    tmpdb_make(&t);
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    for (int i = 0; i < 5; i++)
        assert_int_equal(
            sqlite3_exec(db, sql_files[i].text, NULL, NULL, NULL),
            SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "PRAGMA user_version = 5; INSERT INTO jobs (provider, "
                     "batch, path, idempotency_key, state, created_at, "
                     "updated_at, finished_at) VALUES "
                     "('a', 'x', '/', 'k1', 'queued', 1, 1, NULL), "
                     "('a', 'x', '/', 'k2', 'succeeded', 1, 1, 5), "
                     "('a', NULL, '/', 'k3', 'failed', 1, 1, 7)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    s = open_store(t.path);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    assert_counts_kept(s, t.path);
    store_close(s);
    assert_int_equal(sql_int(t.path, "SELECT total * 100 + done * 10 + "
                                     "remaining FROM batch_progress "
                                     "WHERE batch = 'x'"),
                     211);
    assert_int_equal(sql_int(t.path, "SELECT last_finished_at FROM "
                                     "batch_progress WHERE batch = 'x'"),
                     5);
    assert_int_equal(sql_int(t.path, "SELECT first_created_at FROM "
                                     "batch_progress WHERE batch IS NULL"),
                     1);
    tmpdb_remove(&t);
}

/* How many OpenEphemeral opcodes sql compiles to on a fresh connection. */
static int
ephemeral_tables(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    char explain[256];
    int n = 0;

    snprintf(explain, sizeof(explain), "EXPLAIN %s", sql);

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, explain, -1, &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (strcmp((const char *)sqlite3_column_text(st, 1),
                   "OpenEphemeral") == 0)
            n++;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* A database at version 12 gets migration 13: the jobs.state CHECK as
 * comparisons, which a write of one row compiles without an ephemeral
 * table, accepting the same seven states and refusing anything else; the
 * rows already there pass the integrity check. */
static void
test_migration_13_checks_states_without_an_in_list(void **state)
{
    (void)state;
    static const char *const states[] = {"queued",    "running", "waiting",
                                         "retrying",  "succeeded", "failed",
                                         "cancelled"};
    const char *update = "UPDATE jobs SET state = ?1 WHERE id = ?2";
    struct tmpdb t;
    struct store *s;
    sqlite3 *db;
    char sql[128];

    tmpdb_make(&t);
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    for (int i = 0; i < 12; i++)
        assert_int_equal(
            sqlite3_exec(db, sql_files[i].text, NULL, NULL, NULL),
            SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "PRAGMA user_version = 12; INSERT INTO jobs (provider, "
                     "path, idempotency_key, state, created_at, updated_at) "
                     "VALUES ('a', '/', 'k1', 'queued', 1, 1), "
                     "('a', '/', 'k2', 'running', 1, 1)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(ephemeral_tables(t.path, update), 1);
    s = open_store(t.path);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    store_close(s);
    assert_int_equal(ephemeral_tables(t.path, update), 0);
    assert_int_equal(sql_int(t.path, "SELECT instr(sql, 'state IN (') "
                                     "FROM sqlite_schema WHERE name = 'jobs'"),
                     0);
    assert_int_equal(sql_int(t.path, "SELECT integrity_check = 'ok' "
                                     "FROM pragma_integrity_check"),
                     1);
    assert_int_equal(sqlite3_open(t.path, &db), SQLITE_OK);
    for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
        snprintf(sql, sizeof(sql), "UPDATE jobs SET state = '%s' WHERE id = 1",
                 states[i]);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    }
    assert_int_equal(sqlite3_exec(db, "UPDATE jobs SET state = 'done' "
                                      "WHERE id = 1",
                                  NULL, NULL, NULL),
                     SQLITE_CONSTRAINT);
    sqlite3_close(db);
    assert_int_equal(sql_int(t.path, "SELECT count(*) FROM jobs "
                                     "WHERE state = 'cancelled'"),
                     1);
    tmpdb_remove(&t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_applies_migrations_and_sets_user_version),
        cmocka_unit_test(test_readonly_open_never_migrates_or_writes),
        cmocka_unit_test(
            test_reclaim_fails_unsafe_providers_jobs_as_unknown_outcome),
        cmocka_unit_test(
            test_a_row_the_database_refuses_does_not_hold_back_the_others),
        cmocka_unit_test(test_reopen_is_idempotent_and_keeps_rows),
        cmocka_unit_test(test_open_refuses_a_newer_schema),
        cmocka_unit_test(test_duplicate_key_returns_1_and_inserts_nothing),
        cmocka_unit_test(test_rolled_back_transaction_leaves_nothing),
        cmocka_unit_test(
            test_claim_orders_by_priority_then_run_after_and_skips_future_jobs),
        cmocka_unit_test(
            test_claim_respects_max_and_sets_lease_owner_and_attempts),
        cmocka_unit_test(
            test_two_handles_claiming_alternately_get_disjoint_ids),
        cmocka_unit_test(
            test_reclaim_returns_expired_leases_to_queued_with_attempt_charged),
        cmocka_unit_test(test_reclaim_fails_a_job_with_no_attempt_left),
        cmocka_unit_test(test_flush_writes_job_and_attempt_rows),
        cmocka_unit_test(test_flush_skips_the_attempt_of_a_deleted_job),
        cmocka_unit_test(
            test_flush_while_another_connection_writes_returns_ebusy_and_keeps_all),
        cmocka_unit_test(test_close_flushes_what_is_buffered),
        cmocka_unit_test(test_record_copies_every_string),
        cmocka_unit_test(
            test_derived_key_is_sent_but_identity_key_still_dedups),
        cmocka_unit_test(test_daemon_rows_register_beat_and_list),
        cmocka_unit_test(
            test_heartbeat_changes_on_every_beat_even_when_the_clock_goes_back),
        cmocka_unit_test(test_reap_takes_back_a_dead_daemons_leases_and_row),
        cmocka_unit_test(
            test_reap_of_a_daemon_that_beat_since_the_verdict_does_nothing),
        cmocka_unit_test(
            test_a_registered_owners_leases_never_expire_by_the_wall_clock),
        cmocka_unit_test(test_late_outcome_after_reclaim_is_not_written),
        cmocka_unit_test(test_outcome_of_a_job_cancelled_in_flight_is_kept),
        cmocka_unit_test(
            test_uncharge_refunds_the_attempt_and_deferrals_are_stored),
        cmocka_unit_test(test_waiting_job_poll_claim_keeps_state_and_attempts),
        cmocka_unit_test(
            test_cancelled_job_stays_cancelled_when_its_outcome_arrives),
        cmocka_unit_test(
            test_next_due_sees_queued_retrying_and_unleased_waiting_jobs),
        cmocka_unit_test(test_provider_rows_upsert_and_resume_requests),
        cmocka_unit_test(
            test_data_version_changes_when_another_connection_commits),
        cmocka_unit_test(
            test_status_json_counts_every_state_per_provider_and_batch),
        cmocka_unit_test(test_jobs_json_filters_newest_first_without_body),
        cmocka_unit_test(test_job_json_by_id_or_custom_id_with_parsed_body),
        cmocka_unit_test(test_custom_id_is_found_whether_or_not_it_is_the_key),
        cmocka_unit_test(
            test_views_return_latest_failures_summary_and_progress),
        cmocka_unit_test(test_schema_indexes_serve_claim_and_due_queries),
        cmocka_unit_test(
            test_insert_jobs_counts_duplicates_within_and_across_statements),
        cmocka_unit_test(
            test_retry_by_filter_resets_attempts_and_keeps_the_last_key),
        cmocka_unit_test(
            test_retry_after_a_failed_run_sends_a_key_never_used),
        cmocka_unit_test(test_retry_and_cancel_by_id_skip_jobs_in_other_states),
        cmocka_unit_test(
            test_cancel_of_a_running_job_clears_lease_and_survives_flush),
        cmocka_unit_test(test_failures_json_groups_with_samples_and_filters),
        cmocka_unit_test(test_export_streams_selected_states_in_id_order),
        cmocka_unit_test(
            test_purge_deletes_in_bounded_batches_and_gives_space_back),
        cmocka_unit_test(test_progress_has_rate_and_eta_from_the_last_minute),
        cmocka_unit_test(test_oldest_queued_is_the_earliest_due_queued_job),
        cmocka_unit_test(test_due_and_oldest_queued_look_at_every_priority),
        cmocka_unit_test(
            test_claim_except_holds_batches_and_spend_sums_costs),
        cmocka_unit_test(test_migration_3_upgrades_a_version_2_database),
        cmocka_unit_test(test_counts_are_kept_through_every_change),
        cmocka_unit_test(test_migration_6_counts_the_jobs_already_there),
        cmocka_unit_test(test_migration_7_adds_batches_and_the_spend_view),
        cmocka_unit_test(
            test_migration_12_keeps_the_spend_of_the_costs_already_there),
        cmocka_unit_test(test_migration_13_checks_states_without_an_in_list),
        cmocka_unit_test(
            test_migration_14_indexes_only_custom_ids_that_are_not_keys),
        cmocka_unit_test(
            test_migration_15_leaves_queued_jobs_out_of_jobs_state),
        cmocka_unit_test(test_outputs_rows_from_success_to_stored_or_failed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
