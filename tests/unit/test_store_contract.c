/*
 * store contract: the behaviours of include/sluice/store.h that every
 * backend keeps, run once on SQLite (a temp file) and once on PostgreSQL
 * (a fresh database on the server of $SLUICE_TEST_PG, which
 * scripts/test.sh starts; without it the PostgreSQL runs are skipped).
 * Only the store API is used, so the same assertions hold on both; a
 * few cases first make the database misbehave through its own client
 * (raw_exec), each backend in its own SQL.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <setjmp.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "sluice/jobspec.h"
#include "sluice/permit.h"
#include "sluice/store.h"

/* 2023-11-14T22:13:20Z: any fixed "now" will do. */
#define T0 INT64_C(1700000000000)
#define LEASE_MS 60000

enum kind { SQLITE, POSTGRES };

/* One backend's fresh database for one test. */
struct fixture {
    enum kind kind;
    char database[600]; /* what store_open gets */
    char dir[64];       /* SQLite: the temp dir */
    char dbname[64];    /* PostgreSQL: the database created */
};

static int fixture_seq;

static void
pg_admin(const char *sql)
{
    PGconn *c = PQconnectdb(getenv("SLUICE_TEST_PG"));
    PGresult *r;

    assert_int_equal(PQstatus(c), CONNECTION_OK);
    r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char sql[128];

    f->kind = *(enum kind *)*state;
    if (f->kind == POSTGRES) {
        const char *base = getenv("SLUICE_TEST_PG");
        if (base == NULL || *base == '\0') {
            free(f);
            *state = NULL;
            return 0;
        }
        snprintf(f->dbname, sizeof(f->dbname), "contract_%ld_%d",
                 (long)getpid(), ++fixture_seq);
        snprintf(sql, sizeof(sql), "CREATE DATABASE %s", f->dbname);
        pg_admin(sql);
        /* a later keyword wins in a key=value string */
        snprintf(f->database, sizeof(f->database), "%s dbname=%s", base,
                 f->dbname);
    } else {
        snprintf(f->dir, sizeof(f->dir), "/tmp/test_contract.XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->database, sizeof(f->database), "%s/queue.db", f->dir);
    }
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    char sql[128];

    if (f == NULL)
        return 0;
    if (f->kind == POSTGRES) {
        snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", f->dbname);
        pg_admin(sql);
    } else {
        static const char *const suffix[] = {"", "-wal", "-shm"};
        char p[700];
        for (int i = 0; i < 3; i++) {
            snprintf(p, sizeof(p), "%s%s", f->database, suffix[i]);
            unlink(p);
        }
        rmdir(f->dir);
    }
    free(f);
    return 0;
}

/* Runs SQL on the fixture's database behind the store's back: sqlite_sql
 * on SQLite, pg_sql on PostgreSQL. */
static void
raw_exec(struct fixture *f, const char *sqlite_sql, const char *pg_sql)
{
    if (f->kind == POSTGRES) {
        PGconn *c = PQconnectdb(f->database);
        PGresult *r;

        assert_int_equal(PQstatus(c), CONNECTION_OK);
        r = PQexec(c, pg_sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK &&
            PQresultStatus(r) != PGRES_TUPLES_OK)
            fail_msg("%s: %s", pg_sql, PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
    } else {
        sqlite3 *db;
        char *err = NULL;

        assert_int_equal(sqlite3_open(f->database, &db), SQLITE_OK);
        if (sqlite3_exec(db, sqlite_sql, NULL, NULL, &err) != SQLITE_OK)
            fail_msg("%s: %s", sqlite_sql, err);
        sqlite3_close(db);
    }
}

/* The fixture, or skip when this backend has no server here. */
static struct fixture *
fx(void **state)
{
    if (*state == NULL)
        skip();
    return *state;
}

static struct store *
open_store(struct fixture *f)
{
    struct store *s = NULL;
    assert_int_equal(store_open(f->database, &s), 0);
    assert_non_null(s);
    return s;
}

static struct jobspec
spec(const char *provider, const char *custom_id, const char *key, int priority)
{
    struct jobspec j = {
        .provider = (char *)provider,
        .custom_id = (char *)custom_id,
        .method = (char *)"POST",
        .path = (char *)"/v1/images",
        .body = (char *)"{\"prompt\":\"x\"}",
        .idempotency_key = (char *)key,
        .priority = priority,
        .max_attempts = 3,
    };
    return j;
}

static void
insert(struct store *s, const char *provider, const char *key, int priority,
       int64_t now)
{
    struct jobspec j = spec(provider, key, key, priority);
    assert_int_equal(store_insert_job(s, &j, now), 0);
}

/* A value of the job key names (id or custom_id), as an integer. */
static json_int_t
job_int(struct store *s, const char *key, const char *column)
{
    json_t *j = store_job_json(s, key);
    json_int_t v;

    assert_non_null(j);
    v = json_integer_value(json_object_get(j, column));
    json_decref(j);
    return v;
}

/* A number column of the job (0 for NULL). */
static double
job_real(struct store *s, const char *key, const char *column)
{
    json_t *j = store_job_json(s, key);
    double v;

    assert_non_null(j);
    v = json_number_value(json_object_get(j, column));
    json_decref(j);
    return v;
}

/* A text column of the job ("" for NULL), copied into out. */
static const char *
job_text(struct store *s, const char *key, const char *column, char *out,
         size_t len)
{
    json_t *j = store_job_json(s, key);
    const char *v;

    assert_non_null(j);
    v = json_string_value(json_object_get(j, column));
    snprintf(out, len, "%s", v ? v : "");
    json_decref(j);
    return out;
}

static int
claim(struct store *s, const char *provider, int max, int64_t now,
      const char *owner, struct job **out)
{
    int n = 0;
    assert_int_equal(
        store_claim_new(s, provider, max, now, LEASE_MS, owner, out, &n), 0);
    return n;
}

static void
free_jobs(struct job **jobs, int n)
{
    for (int i = 0; i < n; i++)
        job_free(jobs[i]);
}

/* --- open and enqueue ---------------------------------------------------- */

static void
test_open_migrates_to_latest_and_reopen_keeps_rows(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);

    assert_true(store_schema_latest(s) >= 1);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    insert(s, "gen", "k1", 0, T0);
    store_close(s);
    s = open_store(f);
    assert_int_equal(store_schema_version(s), store_schema_latest(s));
    assert_int_equal(job_int(s, "k1", "created_at"), T0);
    store_close(s);
}

static void
test_read_only_open_reads_and_never_writes(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f), *ro = NULL;
    json_t *jobs;

    insert(s, "gen", "k1", 0, T0);
    store_close(s);
    assert_int_equal(store_open_readonly(f->database, &ro), 0);
    assert_int_equal(store_schema_version(ro), store_schema_latest(ro));
    jobs = store_jobs_json(ro, NULL);
    assert_int_equal(json_array_size(jobs), 1);
    json_decref(jobs);
    struct jobspec j = spec("gen", "k2", "k2", 0);
    assert_true(store_insert_job(ro, &j, T0) < 0);
    store_close(ro);
    s = open_store(f);
    assert_null(store_job_json(s, "k2"));
    store_close(s);
}

static void
test_insert_skips_duplicates_within_and_across_files(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct jobspec jobs[300];
    char keys[300][16];
    size_t n;

    /* more rows than one multi-row statement, with a duplicate inside */
    for (int i = 0; i < 300; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i == 299 ? 7 : i);
        jobs[i] = spec("gen", keys[i], keys[i], 0);
    }
    assert_int_equal(store_begin(s), 0);
    assert_int_equal(store_insert_jobs(s, jobs, 300, T0, &n), 0);
    assert_int_equal(store_commit(s), 0);
    assert_int_equal(n, 299);
    /* ids in file order: the first of a duplicate pair is the one kept */
    assert_true(job_int(s, "k0", "id") < job_int(s, "k1", "id"));
    assert_true(job_int(s, "k7", "id") < job_int(s, "k8", "id"));
    assert_int_equal(store_begin(s), 0);
    assert_int_equal(store_insert_jobs(s, jobs, 300, T0, &n), 0);
    assert_int_equal(store_commit(s), 0);
    assert_int_equal(n, 0);
    assert_int_equal(store_insert_job(s, &jobs[3], T0), 1);
    store_close(s);
}

static void
test_insert_keeps_text_byte_for_byte(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    const char *body = "{\"p\":\"tab\\there\\nline \\\\ back\\\\slash "
                       "caf\xc3\xa9 \\u0001\"}";
    struct jobspec j = spec("gen", "odd\\id", "odd\\id", 0);
    json_t *row;
    char *dumped;
    size_t n;

    j.body = (char *)body;
    j.path = (char *)"/a\\b\tc";
    assert_int_equal(store_begin(s), 0);
    assert_int_equal(store_insert_jobs(s, &j, 1, T0, &n), 0);
    assert_int_equal(store_commit(s), 0);
    assert_int_equal(n, 1);
    row = store_job_json(s, "odd\\id");
    assert_non_null(row);
    assert_string_equal(json_string_value(json_object_get(row, "path")),
                        "/a\\b\tc");
    dumped = json_dumps(json_object_get(row, "body"), JSON_COMPACT);
    assert_string_equal(dumped, "{\"p\":\"tab\\there\\nline \\\\ "
                                "back\\\\slash caf\xc3\xa9 \\u0001\"}");
    free(dumped);
    json_decref(row);
    store_close(s);
}

/* One file's transaction in calls of 100 rows, as sluicectl enqueue makes
 * them: a key of an earlier call, a key twice in one call, calls after
 * those. Each call counts its own rows, the first of a key wins, ids keep
 * file order, the kept counts follow, and a rollback leaves nothing. */
static void
test_insert_calls_of_one_file_count_duplicates_of_earlier_calls(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct jobspec jobs[100];
    char keys[100][16];
    size_t n;
    long pending;

    assert_int_equal(store_begin(s), 0);
    for (int call = 0; call < 5; call++) {
        for (int i = 0; i < 100; i++) {
            int k = call * 100 + i;
            if (call == 1 && i == 50)
                k = 5; /* a key of the first call */
            if (call == 3 && i == 99)
                k = 300; /* the first key of this call again */
            snprintf(keys[i], sizeof(keys[i]), "k%d", k);
            jobs[i] = spec("gen", keys[i], keys[i], call);
        }
        assert_int_equal(store_insert_jobs(s, jobs, 100, T0, &n), 0);
        assert_int_equal(n, call == 1 || call == 3 ? 99 : 100);
    }
    assert_int_equal(store_commit(s), 0);
    assert_int_equal(job_int(s, "k5", "priority"), 0);
    assert_int_equal(job_int(s, "k300", "priority"), 3);
    assert_true(job_int(s, "k99", "id") < job_int(s, "k100", "id"));
    assert_true(job_int(s, "k199", "id") < job_int(s, "k200", "id"));
    assert_true(job_int(s, "k398", "id") < job_int(s, "k400", "id"));
    assert_int_equal(store_pending_count(s, "gen", &pending), 0);
    assert_int_equal(pending, 498);

    assert_int_equal(store_begin(s), 0);
    for (int i = 0; i < 100; i++) {
        snprintf(keys[i], sizeof(keys[i]), "r%d", i);
        jobs[i] = spec("gen", keys[i], keys[i], 0);
    }
    assert_int_equal(store_insert_jobs(s, jobs, 100, T0, &n), 0);
    jobs[99] = spec("gen", "k7", "k7", 0); /* committed before */
    assert_int_equal(store_insert_jobs(s, jobs, 100, T0, &n), 0);
    assert_int_equal(n, 0);
    store_rollback(s);
    assert_null(store_job_json(s, "r1"));
    assert_int_equal(store_pending_count(s, "gen", &pending), 0);
    assert_int_equal(pending, 498);
    store_close(s);
}

/* Calls whose rows add up to 35 MiB: past what PostgreSQL keeps for a
 * replay (16 MiB) twice, with a duplicate of a key from before the
 * boundary. The counts stay exact. */
static void
test_insert_calls_of_large_rows_count_duplicates_across_megabytes(
    void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    enum { ROWS = 20, BODY = 256 * 1024 };
    struct jobspec jobs[ROWS];
    char keys[ROWS][16];
    char *body = malloc(BODY + 16);
    size_t n, total = 0;
    long pending;

    snprintf(body, 16, "{\"p\":\"");
    memset(body + 6, 'x', BODY);
    strcpy(body + 6 + BODY, "\"}");
    assert_int_equal(store_begin(s), 0);
    for (int call = 0; call < 7; call++) {
        for (int i = 0; i < ROWS; i++) {
            snprintf(keys[i], sizeof(keys[i]), "k%d",
                     call == 5 && i == 10 ? 3 : call * ROWS + i);
            jobs[i] = spec("gen", keys[i], keys[i], 0);
            jobs[i].body = body;
        }
        assert_int_equal(store_insert_jobs(s, jobs, ROWS, T0, &n), 0);
        assert_int_equal(n, call == 5 ? ROWS - 1 : ROWS);
        total += n;
    }
    assert_int_equal(store_commit(s), 0);
    assert_int_equal(total, 7 * ROWS - 1);
    assert_int_equal(store_pending_count(s, "gen", &pending), 0);
    assert_int_equal(pending, 7 * ROWS - 1);
    assert_true(job_int(s, "k99", "id") < job_int(s, "k100", "id"));
    free(body);
    store_close(s);
}

/* A custom_id names the newest job with it, whether it is also the job's
 * idempotency key (the usual line) or not (enqueue --unique). */
static void
test_a_custom_id_names_its_newest_job_whatever_its_key(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct jobspec j[5] = {
        spec("a", "x", "x", 0),
        spec("b", "x", "x", 1),        /* newer, key = custom_id */
        spec("a", "y", "y", 2),
        spec("b", "y", "random-1", 3), /* newer, key apart */
        spec("c", "z", "random-2", 4),
    };

    for (int i = 0; i < 5; i++)
        assert_int_equal(store_insert_job(s, &j[i], T0), 0);
    assert_int_equal(job_int(s, "x", "priority"), 1);
    assert_int_equal(job_int(s, "y", "priority"), 3);
    assert_int_equal(job_int(s, "z", "priority"), 4);
    j[0] = spec("c", "y", "y", 5); /* newest again by the key */
    assert_int_equal(store_insert_job(s, &j[0], T0), 0);
    assert_int_equal(job_int(s, "y", "priority"), 5);
    assert_null(store_job_json(s, "random-1")); /* a key is not a name */
    store_close(s);
}

/* --- claims -------------------------------------------------------------- */

static void
test_claim_takes_due_jobs_by_priority_and_charges_an_attempt(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct job *jobs[8];
    int n;

    insert(s, "gen", "low", 0, T0);
    insert(s, "gen", "high", 5, T0);
    insert(s, "gen", "later", 9, T0 + 1000); /* run_after = enqueue time */
    insert(s, "other", "x", 0, T0);
    n = claim(s, "gen", 8, T0, "host:1", jobs);
    assert_int_equal(n, 2);
    assert_string_equal(jobs[0]->custom_id, "high");
    assert_string_equal(jobs[1]->custom_id, "low");
    assert_int_equal(jobs[0]->attempts, 1);
    assert_int_equal(jobs[0]->state, JOB_RUNNING);
    assert_string_equal(jobs[0]->idempotency_key, "high");
    assert_string_equal(jobs[0]->base_key, "high");
    free_jobs(jobs, n);
    char t[64];
    assert_string_equal(job_text(s, "low", "state", t, sizeof(t)), "running");
    assert_string_equal(job_text(s, "low", "lease_owner", t, sizeof(t)),
                        "host:1");
    assert_int_equal(job_int(s, "low", "lease_until"), T0 + LEASE_MS);
    assert_int_equal(claim(s, "gen", 8, T0, "host:1", jobs), 0);
    n = claim(s, "gen", 8, T0 + 1000, "host:1", jobs);
    assert_int_equal(n, 1);
    assert_string_equal(jobs[0]->custom_id, "later");
    free_jobs(jobs, n);
    store_close(s);
}

static void
test_two_connections_never_claim_the_same_job(void **state)
{
    struct fixture *f = fx(state);
    struct store *a = open_store(f), *b = open_store(f);
    struct job *jobs[4];
    bool seen[41] = {false};
    int total = 0;

    for (int i = 1; i <= 40; i++) {
        char k[16];
        snprintf(k, sizeof(k), "%d", i);
        insert(a, "gen", k, 0, T0);
    }
    for (int round = 0; round < 40; round++) {
        struct store *s = round % 2 ? b : a;
        int n = claim(s, "gen", 3, T0, round % 2 ? "b:2" : "a:1", jobs);
        for (int i = 0; i < n; i++) {
            int id = atoi(jobs[i]->custom_id);
            assert_false(seen[id]);
            seen[id] = true;
        }
        total += n;
        free_jobs(jobs, n);
    }
    assert_int_equal(total, 40);
    store_close(a);
    store_close(b);
}

static void
test_polls_are_claimed_apart_and_stay_waiting(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct job *jobs[4];
    struct job_update u = {0};
    int n;

    insert(s, "gen", "run", 0, T0);
    assert_int_equal(claim(s, "gen", 4, T0, "h:1", jobs), 1);
    u.job_id = jobs[0]->id;
    free_jobs(jobs, 1);
    u.state = JOB_WAITING;
    u.run_after = T0 + 3000;
    u.remote_id = "r-1";
    u.poll_url = "https://p.example/runs/r-1";
    u.finished_at = T0 + 10;
    store_record(s, &u);
    assert_int_equal(store_pending(s), 1);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_pending(s), 0);
    assert_int_equal(claim(s, "gen", 4, T0 + 5000, "h:1", jobs), 0);
    n = 0;
    assert_int_equal(
        store_claim_polls(s, "gen", 4, T0 + 2999, LEASE_MS, "h:1", jobs, &n),
        0);
    assert_int_equal(n, 0);
    assert_int_equal(
        store_claim_polls(s, "gen", 4, T0 + 3000, LEASE_MS, "h:1", jobs, &n),
        0);
    assert_int_equal(n, 1);
    assert_int_equal(jobs[0]->state, JOB_WAITING);
    assert_string_equal(jobs[0]->remote_id, "r-1");
    assert_int_equal(jobs[0]->attempts, 1); /* a poll is not charged */
    assert_int_equal(jobs[0]->waiting_since, T0 + 10);
    free_jobs(jobs, n);
    /* leased: not claimable again until the lease runs out */
    assert_int_equal(
        store_claim(s, "gen", 4, T0 + 3000, LEASE_MS, "h:1", jobs, &n), 0);
    assert_int_equal(n, 0);
    store_close(s);
}

/* --- outcomes ------------------------------------------------------------ */

static void
test_flush_writes_success_failure_and_attempt_rows(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct job *jobs[4];
    struct job_update ok = {0}, bad = {0};
    json_t *row, *attempts;
    char t[64];

    insert(s, "gen", "ok", 0, T0);
    insert(s, "gen", "bad", 0, T0);
    assert_int_equal(claim(s, "gen", 4, T0, "h:1", jobs), 2);
    ok.job_id =
        strcmp(jobs[0]->custom_id, "ok") == 0 ? jobs[0]->id : jobs[1]->id;
    bad.job_id = ok.job_id == jobs[0]->id ? jobs[1]->id : jobs[0]->id;
    free_jobs(jobs, 2);

    ok.state = JOB_SUCCEEDED;
    ok.has_attempt = true;
    ok.attempt = 1;
    ok.key_sent = "ok";
    ok.started_at = T0;
    ok.finished_at = T0 + 40;
    ok.http_status = 200;
    ok.request_id = "req_ok";
    ok.result = "{\"url\":\"https://x/1.png\"}";
    ok.cost = 0.25;
    ok.has_cost = true;
    bad.state = JOB_RETRYING;
    bad.run_after = T0 + 2000;
    bad.has_attempt = true;
    bad.attempt = 1;
    bad.key_sent = "bad";
    bad.started_at = T0;
    bad.finished_at = T0 + 50;
    bad.http_status = 503;
    bad.cls = ERR_UNAVAILABLE;
    bad.code = "overloaded";
    bad.message = "try later";
    bad.request_id = "req_bad";
    bad.retry_after_ms = 2000;
    store_record(s, &ok);
    store_record(s, &bad);
    assert_int_equal(store_flush(s), 0);

    row = store_job_json(s, "ok");
    assert_non_null(row);
    assert_string_equal(json_string_value(json_object_get(row, "state")),
                        "succeeded");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(row, "result"), "url")),
                        "https://x/1.png");
    assert_true(json_real_value(json_object_get(row, "cost")) == 0.25);
    assert_int_equal(json_integer_value(json_object_get(row, "finished_at")),
                     T0 + 40);
    assert_true(json_is_null(json_object_get(row, "lease_owner")));
    attempts = json_object_get(row, "attempts");
    assert_int_equal(json_array_size(attempts), 1);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(attempts, 0), "http_status")),
                     200);
    assert_int_equal(json_integer_value(json_object_get(row, "attempt_count")),
                     1);
    json_decref(row);

    assert_string_equal(job_text(s, "bad", "state", t, sizeof(t)), "retrying");
    assert_string_equal(job_text(s, "bad", "error_class", t, sizeof(t)),
                        "unavailable");
    assert_string_equal(job_text(s, "bad", "error_code", t, sizeof(t)),
                        "overloaded");
    assert_string_equal(job_text(s, "bad", "request_id", t, sizeof(t)),
                        "req_bad");
    assert_int_equal(job_int(s, "bad", "run_after"), T0 + 2000);
    assert_int_equal(job_int(s, "bad", "http_status"), 503);
    store_close(s);
}

static void
test_outcome_of_a_job_cancelled_meanwhile_keeps_it_cancelled(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct job *jobs[2];
    struct job_update u = {0};
    int64_t ids[1], hit[1];
    int nhit;
    long changed;
    char t[64];

    insert(s, "gen", "c", 0, T0);
    assert_int_equal(claim(s, "gen", 2, T0, "h:1", jobs), 1);
    ids[0] = jobs[0]->id;
    free_jobs(jobs, 1);
    assert_int_equal(store_cancel(s, ids, 1, NULL, T0 + 5, &changed), 0);
    assert_int_equal(changed, 1);
    assert_int_equal(store_cancelled(s, ids, 1, hit, &nhit), 0);
    assert_int_equal(nhit, 1);
    assert_int_equal(hit[0], ids[0]);
    u.job_id = ids[0];
    u.state = JOB_SUCCEEDED;
    u.http_status = 200;
    u.result = "{\"done\":true}";
    u.finished_at = T0 + 30;
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_string_equal(job_text(s, "c", "state", t, sizeof(t)), "cancelled");
    assert_int_equal(job_int(s, "c", "finished_at"), T0 + 5);
    json_t *row = store_job_json(s, "c");
    assert_true(
        json_is_true(json_object_get(json_object_get(row, "result"), "done")));
    json_decref(row);
    store_close(s);
}

/* A row the database refuses for its content (a trigger here; a value too
 * big or not storable in practice) must not hold back the group commit:
 * the others are written, the refused outcome becomes the job's failure
 * (protocol, unstorable) with its attempt, and one refused even as a
 * failure is dropped, its job still leased for a reclaim. */
static void
test_a_row_the_database_refuses_does_not_hold_back_the_others(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    static const char *const ids[] = {"j1", "j2", "j3", "j4"};
    struct job *jobs[4];
    char t[128];
    json_t *row;

    for (int i = 0; i < 4; i++)
        insert(s, "gen", ids[i], 0, T0);
    assert_int_equal(claim(s, "gen", 4, T0, "h:1", jobs), 4);
    raw_exec(f,
             "CREATE TRIGGER no_result BEFORE UPDATE OF state ON jobs "
             "WHEN NEW.custom_id = 'j2' AND NEW.state = 'succeeded' BEGIN "
             "SELECT RAISE(ABORT, 'refused'); END; "
             "CREATE TRIGGER refuse_all BEFORE UPDATE ON jobs "
             "WHEN NEW.custom_id = 'j4' BEGIN "
             "SELECT RAISE(ABORT, 'refused'); END;",
             "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
             "BEGIN IF NEW.custom_id = 'j4' OR (NEW.custom_id = 'j2' "
             "AND NEW.state = 'succeeded') THEN RAISE EXCEPTION 'refused'; "
             "END IF; RETURN NEW; END $$; "
             "CREATE TRIGGER refuse BEFORE UPDATE ON jobs FOR EACH ROW "
             "EXECUTE FUNCTION refuse()");
    for (int i = 0; i < 4; i++) {
        struct job_update u = {
            .job_id = jobs[i]->id,
            .state = JOB_SUCCEEDED,
            .has_attempt = true,
            .attempt = 1,
            .key_sent = "k",
            .started_at = T0 + 10,
            .finished_at = T0 + 20,
            .http_status = 200,
            .request_id = "req_ok",
            .owner = "h:1",
            .result = "{\"url\":\"https://x/1\"}",
        };
        store_record(s, &u);
    }
    free_jobs(jobs, 4);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_pending(s), 0);
    assert_string_equal(job_text(s, "j1", "state", t, sizeof(t)), "succeeded");
    assert_string_equal(job_text(s, "j3", "state", t, sizeof(t)), "succeeded");
    assert_string_equal(job_text(s, "j2", "state", t, sizeof(t)), "failed");
    assert_string_equal(job_text(s, "j2", "error_class", t, sizeof(t)),
                        "protocol");
    assert_string_equal(job_text(s, "j2", "error_code", t, sizeof(t)),
                        "unstorable");
    assert_string_equal(job_text(s, "j2", "error_message", t, sizeof(t)),
                        "the outcome could not be stored: refused");
    row = store_job_json(s, "j2");
    assert_non_null(row);
    assert_true(json_is_null(json_object_get(row, "result")));
    assert_int_equal(json_array_size(json_object_get(row, "attempts")), 1);
    json_decref(row);
    /* refused even as a failure: dropped, still leased for a reclaim */
    assert_string_equal(job_text(s, "j4", "state", t, sizeof(t)), "running");
    assert_string_equal(job_text(s, "j4", "lease_owner", t, sizeof(t)), "h:1");
    store_close(s);
}

/* PostgreSQL: a row refused only at COMMIT (a deferred constraint
 * trigger, which names no statement) does not hold back the others
 * either: the outcomes go one per transaction, and the refused one fails
 * as unstorable. (SQLite has no deferred triggers.) */
static void
test_a_row_refused_at_commit_does_not_hold_back_the_others(void **state)
{
    struct fixture *f = fx(state);
    struct store *s;
    static const char *const ids[] = {"j1", "j2", "j3"};
    struct job *jobs[3];
    char t[128];

    if (f->kind != POSTGRES)
        skip();
    s = open_store(f);
    for (int i = 0; i < 3; i++)
        insert(s, "gen", ids[i], 0, T0);
    assert_int_equal(claim(s, "gen", 3, T0, "h:1", jobs), 3);
    raw_exec(f, NULL,
             "CREATE FUNCTION refuse_late() RETURNS trigger "
             "LANGUAGE plpgsql AS $$ BEGIN IF NEW.custom_id = 'j2' "
             "AND NEW.state = 'succeeded' THEN "
             "RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; "
             "END $$; "
             "CREATE CONSTRAINT TRIGGER refuse_late AFTER UPDATE ON jobs "
             "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
             "EXECUTE FUNCTION refuse_late()");
    for (int i = 0; i < 3; i++) {
        struct job_update u = {
            .job_id = jobs[i]->id,
            .state = JOB_SUCCEEDED,
            .has_attempt = true,
            .attempt = 1,
            .key_sent = "k",
            .started_at = T0 + 10,
            .finished_at = T0 + 20,
            .http_status = 200,
            .owner = "h:1",
            .result = "{\"ok\":true}",
        };
        store_record(s, &u);
    }
    free_jobs(jobs, 3);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_pending(s), 0);
    assert_string_equal(job_text(s, "j1", "state", t, sizeof(t)), "succeeded");
    assert_string_equal(job_text(s, "j3", "state", t, sizeof(t)), "succeeded");
    assert_string_equal(job_text(s, "j2", "state", t, sizeof(t)), "failed");
    assert_string_equal(job_text(s, "j2", "error_code", t, sizeof(t)),
                        "unstorable");
    assert_string_equal(job_text(s, "j2", "error_message", t, sizeof(t)),
                        "the outcome could not be stored: refused at commit");
    store_close(s);
}

/* A failure that repeats (a full disk fails every claim, every flush and
 * every heartbeat) is logged once, then counted, not logged, for a
 * minute. */
static void
test_a_failure_repeated_is_logged_once(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    char path[] = "/tmp/test_contract_log.XXXXXX";
    char line[512];
    struct job *jobs[1];
    int fd, saved, lines = 0;
    FILE *log;

    insert(s, "gen", "j", 0, T0);
    raw_exec(f,
             "CREATE TRIGGER no_claims BEFORE UPDATE OF state ON jobs "
             "WHEN NEW.state = 'running' BEGIN "
             "SELECT RAISE(ABORT, 'claims refused'); END;",
             "CREATE FUNCTION no_claims() RETURNS trigger LANGUAGE plpgsql "
             "AS $$ BEGIN IF NEW.state = 'running' THEN "
             "RAISE EXCEPTION 'claims refused'; END IF; RETURN NEW; END $$; "
             "CREATE TRIGGER no_claims BEFORE UPDATE ON jobs FOR EACH ROW "
             "EXECUTE FUNCTION no_claims()");
    assert_true((fd = mkstemp(path)) >= 0);
    fflush(stderr);
    saved = dup(2);
    dup2(fd, 2);
    for (int i = 0; i < 5; i++) {
        int n = 0;
        assert_true(store_claim_new(s, "gen", 1, T0, LEASE_MS, "h:1", jobs,
                                    &n) < 0);
        assert_int_equal(n, 0);
    }
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    assert_non_null(log = fopen(path, "r"));
    while (fgets(line, sizeof(line), log))
        lines += strstr(line, "claims refused") != NULL;
    fclose(log);
    unlink(path);
    assert_int_equal(lines, 1);
    store_close(s);
}

/* The attempt rows of job key (its "attempts" in show). */
static size_t
attempt_rows(struct store *s, const char *key)
{
    json_t *row = store_job_json(s, key);
    size_t n;

    assert_non_null(row);
    n = json_array_size(json_object_get(row, "attempts"));
    json_decref(row);
    return n;
}

/* PostgreSQL: a commit whose acknowledgement is lost with the connection
 * is sent again after the reconnect, though it was written. Sending it
 * again changes nothing: no second attempt row, no cost added twice, and
 * a job the same daemon has claimed again meanwhile keeps its new lease.
 * (SQLite knows whether its commit was written: never sent again.) */
static void
test_a_commit_sent_again_after_a_lost_acknowledgement_changes_nothing(
    void **state)
{
    struct fixture *f = fx(state);
    struct store *s;
    struct job *jobs[2];
    struct job_update u[2] = {0};
    char t[64];

    if (f->kind != POSTGRES)
        skip();
    s = open_store(f);
    insert(s, "gen", "again", 0, T0);
    insert(s, "gen", "done", 0, T0);
    assert_int_equal(claim(s, "gen", 2, T0, "h:1", jobs), 2);
    for (int i = 0; i < 2; i++) {
        bool done = strcmp(jobs[i]->custom_id, "done") == 0;
        u[i] = (struct job_update){
            .job_id = jobs[i]->id,
            .owner = "h:1",
            .state = done ? JOB_SUCCEEDED : JOB_RETRYING,
            .run_after = T0 + 100,
            .has_attempt = true,
            .attempt = 1,
            .key_sent = done ? "done" : "again",
            .started_at = T0 + 10,
            .finished_at = T0 + 20,
            .http_status = done ? 200 : 503,
            .cls = done ? ERR_NONE : ERR_UNAVAILABLE,
            .code = done ? NULL : "overloaded",
            .result = done ? "{\"ok\":true}" : NULL,
            .cost = 0.5,
            .has_cost = done,
        };
        store_record(s, &u[i]);
    }
    free_jobs(jobs, 2);
    assert_int_equal(store_flush(s), 0);
    /* claimed again by the same owner before the commit goes again */
    assert_int_equal(claim(s, "gen", 2, T0 + 200, "h:1", jobs), 1);
    assert_string_equal(jobs[0]->custom_id, "again");
    free_jobs(jobs, 1);
    for (int i = 0; i < 2; i++)
        store_record(s, &u[i]);
    assert_int_equal(store_flush(s), 0);

    assert_int_equal(attempt_rows(s, "again"), 1);
    assert_int_equal(attempt_rows(s, "done"), 1);
    assert_string_equal(job_text(s, "again", "state", t, sizeof(t)),
                        "running");
    assert_string_equal(job_text(s, "again", "lease_owner", t, sizeof(t)),
                        "h:1");
    assert_int_equal(job_int(s, "again", "attempt_count"), 2);
    assert_string_equal(job_text(s, "done", "state", t, sizeof(t)),
                        "succeeded");
    assert_true(job_real(s, "done", "cost") == 0.5);
    store_close(s);
}

/* The migrations of sql/postgres/, embedded in the build. */
struct sql_file {
    const char *name;
    const char *text;
};
extern const struct sql_file pg_sql_files[];
extern const size_t pg_sql_nfiles;

/* PostgreSQL: attempt rows written twice before the unique key existed
 * are kept once by the migration that adds it
 * (sql/postgres/005_attempts_once.sql), run here on such rows. */
static void
test_attempts_written_twice_before_the_upgrade_are_kept_once(void **state)
{
    struct fixture *f = fx(state);
    struct store *s;
    struct job *jobs[1];
    const char *migration = NULL;
    char sql[512];

    if (f->kind != POSTGRES)
        skip();
    for (size_t i = 0; i < pg_sql_nfiles; i++) {
        if (strcmp(pg_sql_files[i].name, "005_attempts_once.sql") == 0)
            migration = pg_sql_files[i].text;
    }
    assert_non_null(migration);
    s = open_store(f);
    insert(s, "gen", "twice", 0, T0);
    assert_int_equal(claim(s, "gen", 1, T0, "h:1", jobs), 1);
    /* the index as it was, one request's row written twice, and a second
     * request under the same number (a deferral) */
    snprintf(sql, sizeof(sql),
             "DROP INDEX attempts_job; "
             "CREATE INDEX attempts_job ON attempts (job_id, attempt); "
             "INSERT INTO attempts (job_id, attempt, started_at, "
             "  finished_at, http_status) VALUES "
             "  (%lld, 1, 10, 20, 503), (%lld, 1, 10, 20, 503), "
             "  (%lld, 1, 30, 40, 200)",
             (long long)jobs[0]->id, (long long)jobs[0]->id,
             (long long)jobs[0]->id);
    free_jobs(jobs, 1);
    raw_exec(f, NULL, sql);
    assert_int_equal(attempt_rows(s, "twice"), 3);
    raw_exec(f, NULL, migration);
    assert_int_equal(attempt_rows(s, "twice"), 2);
    store_close(s);
}

static void
test_reclaim_takes_back_unregistered_leases_and_fails_the_exhausted(
    void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct job *jobs[4];
    struct jobspec one = spec("gen", "one", "one", 0);
    struct daemon_row live = {.owner = (char *)"live",
                              .host = (char *)"h",
                              .pid = 7,
                              .started_at = T0};
    long n;
    char t[64];

    one.max_attempts = 1;
    assert_int_equal(store_insert_job(s, &one, T0), 0);
    insert(s, "gen", "many", 0, T0);
    insert(s, "gen", "kept", 0, T0);
    assert_int_equal(claim(s, "gen", 2, T0, "gone", jobs), 2);
    free_jobs(jobs, 2);
    assert_int_equal(store_daemon_register(s, &live), 0);
    assert_int_equal(claim(s, "gen", 2, T0, "live", jobs), 1);
    free_jobs(jobs, 1);

    assert_int_equal(store_reclaim_expired(s, T0 + LEASE_MS - 1, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(store_reclaim_expired(s, T0 + 10 * LEASE_MS, &n), 0);
    assert_int_equal(n, 2); /* a registered daemon's lease never expires */
    assert_string_equal(job_text(s, "kept", "state", t, sizeof(t)), "running");
    assert_string_equal(job_text(s, "many", "state", t, sizeof(t)), "queued");
    assert_int_equal(job_int(s, "many", "attempt_count"), 1);
    assert_string_equal(job_text(s, "one", "state", t, sizeof(t)), "failed");
    assert_string_equal(job_text(s, "one", "error_code", t, sizeof(t)),
                        "lease_expired");
    store_close(s);
}

/* Running jobs of a provider without idempotency taken back (an expired
 * lease, a dead daemon's) fail as unknown_outcome with the attempt given
 * back; the others return to the queue (docs/design.md §4). */
static void
test_taken_back_jobs_without_idempotency_fail_as_unknown_outcome(
    void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct job *jobs[2];
    static const char *const unsafe[] = {"raw"};
    struct daemon_row dead = {.owner = (char *)"dead",
                              .host = (char *)"h",
                              .pid = 8,
                              .started_at = T0};
    long n;
    char t[64];

    insert(s, "gen", "keyed", 0, T0);
    insert(s, "raw", "expired", 0, T0);
    insert(s, "raw", "reaped", 0, T0);
    store_set_unsafe_resend(s, unsafe, 1);
    assert_int_equal(claim(s, "gen", 1, T0, "gone", jobs), 1);
    free_jobs(jobs, 1);
    assert_int_equal(claim(s, "raw", 1, T0, "gone", jobs), 1);
    free_jobs(jobs, 1);
    assert_int_equal(store_daemon_register(s, &dead), 0);
    assert_int_equal(claim(s, "raw", 1, T0, "dead", jobs), 1);
    free_jobs(jobs, 1);

    assert_int_equal(store_reclaim_expired(s, T0 + 10 * LEASE_MS, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(job_text(s, "keyed", "state", t, sizeof(t)), "queued");
    assert_string_equal(job_text(s, "expired", "state", t, sizeof(t)),
                        "failed");
    assert_string_equal(job_text(s, "expired", "error_class", t, sizeof(t)),
                        "unknown_outcome");
    assert_int_equal(job_int(s, "expired", "attempt_count"), 0);
    assert_string_equal(job_text(s, "reaped", "state", t, sizeof(t)),
                        "running");
    assert_int_equal(store_daemon_reap(s, "dead", 0, T0 + 1, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(job_text(s, "reaped", "error_class", t, sizeof(t)),
                        "unknown_outcome");
    assert_string_equal(job_text(s, "reaped", "error_code", t, sizeof(t)),
                        "lease_lost");
    store_close(s);
}

static void
test_daemons_register_beat_and_reap(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct daemon_row a = {.owner = (char *)"aaaa",
                           .host = (char *)"h1",
                           .pid = 11,
                           .started_at = T0};
    struct daemon_row b = {.owner = (char *)"bbbb",
                           .host = (char *)"h2",
                           .pid = 22,
                           .started_at = T0};
    struct daemon_row *rows;
    struct job *jobs[4];
    size_t nrows;
    bool present;
    long n;
    char t[64];

    assert_int_equal(store_daemon_register(s, &a), 0);
    assert_int_equal(store_daemon_register(s, &b), 0);
    assert_int_equal(store_daemon_register(s, &a), -EEXIST);
    insert(s, "gen", "j", 0, T0);
    assert_int_equal(claim(s, "gen", 4, T0, "bbbb", jobs), 1);
    free_jobs(jobs, 1);
    /* a clock stepped back still moves the heartbeat */
    assert_int_equal(store_daemon_beat(s, "aaaa", T0 - 5000, &present), 0);
    assert_true(present);
    assert_int_equal(store_daemons(s, &rows, &nrows), 0);
    assert_int_equal(nrows, 2);
    assert_string_equal(rows[0].owner, "aaaa");
    assert_int_equal(rows[0].heartbeat_at, T0 + 1);
    assert_string_equal(rows[1].host, "h2");
    assert_int_equal(rows[1].pid, 22);
    store_daemons_free(rows, nrows);

    /* a verdict a beat has overtaken does nothing */
    assert_int_equal(store_daemon_beat(s, "bbbb", T0 + 1000, &present), 0);
    assert_int_equal(store_daemon_reap(s, "bbbb", T0, T0 + 2000, &n), -ESTALE);
    assert_string_equal(job_text(s, "j", "state", t, sizeof(t)), "running");
    assert_int_equal(store_daemon_reap(s, "bbbb", T0 + 1000, T0 + 2000, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(job_text(s, "j", "state", t, sizeof(t)), "queued");
    assert_int_equal(store_daemon_beat(s, "bbbb", T0 + 3000, &present), 0);
    assert_false(present);
    store_close(s);
}

static void
test_late_outcome_of_a_job_taken_back_is_not_written(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct daemon_row b = {
        .owner = (char *)"b", .host = (char *)"h", .pid = 2, .started_at = T0};
    struct job *jobs[2];
    struct job_update u = {0};
    json_t *row;
    long n;
    char t[64];

    assert_int_equal(store_daemon_register(s, &b), 0);
    insert(s, "gen", "j", 0, T0);
    assert_int_equal(claim(s, "gen", 2, T0, "a", jobs), 1);
    u.job_id = jobs[0]->id;
    free_jobs(jobs, 1);
    assert_int_equal(store_reclaim_expired(s, T0 + LEASE_MS, &n), 0);
    assert_int_equal(claim(s, "gen", 2, T0 + LEASE_MS, "b", jobs), 1);
    free_jobs(jobs, 1);
    u.owner = "a";
    u.state = JOB_FAILED;
    u.has_attempt = true;
    u.attempt = 1;
    u.key_sent = "j";
    u.started_at = T0;
    u.finished_at = T0 + 10;
    u.http_status = 400;
    u.cls = ERR_INVALID_REQUEST;
    u.code = "late";
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_string_equal(job_text(s, "j", "state", t, sizeof(t)), "running");
    assert_string_equal(job_text(s, "j", "lease_owner", t, sizeof(t)), "b");
    row = store_job_json(s, "j");
    /* the request went out: its attempt row is kept */
    assert_int_equal(json_array_size(json_object_get(row, "attempts")), 1);
    json_decref(row);
    store_close(s);
}

/* --- counts -------------------------------------------------------------- */

static void
count_cb(const char *provider, long n, void *data)
{
    json_object_set_new(data, provider, json_integer(n));
}

static void
test_counts_and_next_due(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    json_t *by = json_object();
    int64_t due;
    long n;
    bool any;

    assert_int_equal(store_has_unfinished(s, "gen", &any), 0);
    assert_false(any);
    assert_int_equal(store_next_due(s, "gen", T0, &due), 0);
    assert_int_equal(due, 0);
    insert(s, "gen", "a", 0, T0 + 500);
    insert(s, "gen", "b", 0, T0 + 100);
    insert(s, "other", "c", 0, T0);
    assert_int_equal(store_next_due(s, "gen", T0, &due), 0);
    assert_int_equal(due, T0 + 100);
    assert_int_equal(store_pending_count(s, "gen", &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(store_count_waiting(s, "gen", &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(store_has_unfinished(s, "gen", &any), 0);
    assert_true(any);
    assert_int_equal(store_unfinished_by_provider(s, count_cb, by), 0);
    assert_int_equal(json_integer_value(json_object_get(by, "gen")), 2);
    assert_int_equal(json_integer_value(json_object_get(by, "other")), 1);
    json_decref(by);
    store_close(s);
}

/* --- operator commands and queries ---------------------------------------- */

/* Fails job key with class/code at T0 + at. */
static void
fail_job(struct store *s, const char *key, const char *code, int64_t at)
{
    struct job_update u = {0};

    u.job_id = job_int(s, key, "id");
    u.state = JOB_FAILED;
    u.has_attempt = true;
    u.attempt = 1;
    u.key_sent = key;
    u.started_at = T0;
    u.finished_at = T0 + at;
    u.http_status = 400;
    u.cls = ERR_INVALID_REQUEST;
    u.code = code;
    u.message = "bad prompt";
    u.request_id = key;
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
}

/* A retried job never sends a key whose run failure the provider has
 * cached: after a failed run under <key>.2, retry sends <key>.3; after an
 * ambiguous failure it keeps the last key (docs/design.md §4). */
static void
test_retry_keeps_or_advances_the_derived_key(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct job *out[2];
    long changed;

    insert(s, "gen", "run", 0, T0);
    insert(s, "gen", "cut", 0, T0);
    assert_int_equal(claim(s, "gen", 2, T0, "d1", out), 2);
    free_jobs(out, 2);
    for (int i = 0; i < 2; i++) {
        struct job_update u = {0};
        u.job_id = job_int(s, i ? "cut" : "run", "id");
        u.owner = "d1";
        u.state = JOB_FAILED;
        u.new_key = i ? "cut.2" : "run.2";
        u.http_status = i ? 504 : 200;
        u.cls = i ? ERR_TIMEOUT : ERR_RUN_FAILED;
        u.code = "failed";
        u.remote_id = i ? NULL : "run_9";
        store_record(s, &u);
    }
    assert_int_equal(store_flush(s), 0);
    struct store_select sel = {.states = 1u << JOB_FAILED};
    assert_int_equal(store_retry(s, NULL, 0, &sel, T0 + 100, &changed), 0);
    assert_int_equal(changed, 2);
    assert_int_equal(claim(s, "gen", 2, T0 + 100, "d1", out), 2);
    for (int i = 0; i < 2; i++)
        assert_string_equal(out[i]->idempotency_key,
                            strcmp(out[i]->base_key, "run") == 0 ? "run.3"
                                                                 : "cut.2");
    free_jobs(out, 2);
    store_close(s);
}

static void
test_failures_retry_and_cancel_by_selection(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct store_select sel = {0};
    json_t *groups, *g;
    long changed;
    char t[64];

    insert(s, "gen", "f1", 0, T0);
    insert(s, "gen", "f2", 0, T0);
    insert(s, "gen", "f3", 0, T0);
    insert(s, "gen", "q", 0, T0);
    fail_job(s, "f1", "nsfw", 10);
    fail_job(s, "f2", "nsfw", 20);
    fail_job(s, "f3", "too_long", 30);

    groups = store_failures_json(s, &sel);
    assert_non_null(groups);
    assert_int_equal(json_array_size(groups), 2);
    g = json_array_get(groups, 0);
    assert_string_equal(json_string_value(json_object_get(g, "error_code")),
                        "nsfw");
    assert_int_equal(json_integer_value(json_object_get(g, "count")), 2);
    assert_int_equal(json_integer_value(json_object_get(g, "first_seen")),
                     T0 + 10);
    assert_int_equal(json_integer_value(json_object_get(g, "last_seen")),
                     T0 + 20);
    assert_int_equal(json_array_size(json_object_get(g, "sample_request_ids")),
                     2);
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(g, "sample_request_ids"), 0)),
                        "f2");
    json_decref(groups);

    sel.states = 1u << JOB_FAILED;
    sel.error_code = "nsfw";
    assert_int_equal(store_retry(s, NULL, 0, &sel, T0 + 100, &changed), 0);
    assert_int_equal(changed, 2);
    assert_string_equal(job_text(s, "f1", "state", t, sizeof(t)), "queued");
    assert_int_equal(job_int(s, "f1", "attempt_count"), 0);
    assert_string_equal(job_text(s, "f3", "state", t, sizeof(t)), "failed");

    memset(&sel, 0, sizeof(sel));
    sel.provider = "gen";
    assert_int_equal(store_cancel(s, NULL, 0, &sel, T0 + 200, &changed), 0);
    assert_int_equal(changed, 3); /* f1, f2, q; f3 is terminal */
    assert_string_equal(job_text(s, "q", "state", t, sizeof(t)), "cancelled");
    store_close(s);
}

/* --- the state machine's table ----------------------------------------- */

/* The state of each job keys[i] names. */
static void
states_of(struct store *s, const char *const *keys, size_t n,
          enum job_state *out)
{
    char t[64];

    for (size_t i = 0; i < n; i++)
        assert_int_equal(
            job_state_parse(job_text(s, keys[i], "state", t, sizeof(t)),
                            &out[i]),
            0);
}

/* Every job that moved between the two snapshots moved as job.h's table
 * allows; *moved counts them. */
static void
assert_moves_allowed(const char *const *keys, const enum job_state *before,
                     const enum job_state *after, size_t n, int *moved)
{
    *moved = 0;
    for (size_t i = 0; i < n; i++) {
        if (before[i] == after[i])
            continue;
        (*moved)++;
        if (!job_transition_allowed(before[i], after[i]))
            fail_msg("%s: %s -> %s is not an allowed transition", keys[i],
                     job_state_name(before[i]), job_state_name(after[i]));
    }
}

static void
record_as(struct store *s, const char *key, enum job_state state)
{
    struct job_update u = {
        .job_id = job_int(s, key, "id"),
        .state = state,
        .run_after = T0,
        .uncharge = state == JOB_QUEUED,
        .remote_id = state == JOB_WAITING ? "run" : NULL,
        .poll_url = state == JOB_WAITING ? "/runs/run" : NULL,
        .cls = state == JOB_FAILED ? ERR_INVALID_REQUEST : ERR_NONE,
        .finished_at = T0 + 1,
    };
    store_record(s, &u);
}

/* The moves the store makes by itself (claim, reclaim, cancel, retry) are
 * the ones job.h's table lists; the daemon's own are asserted in
 * store_record. */
static void
test_every_move_the_store_makes_is_in_the_table(void **state)
{
    static const char *const keys[] = {"q", "r", "w", "s", "f", "run", "one"};
    enum { N = sizeof(keys) / sizeof(keys[0]) };
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct store_select sel = {.provider = "gen"};
    enum job_state before[N], after[N];
    struct job *jobs[N];
    struct jobspec one = spec("gen", "one", "one", 0);
    int64_t later = T0 + 10 * LEASE_MS;
    long n;
    int moved;

    one.max_attempts = 1;
    for (size_t i = 0; i + 1 < N; i++)
        insert(s, "gen", keys[i], 0, T0);
    assert_int_equal(store_insert_job(s, &one, T0), 0);
    states_of(s, keys, N, before);
    assert_int_equal(claim(s, "gen", N, T0, "gone", jobs), N);
    free_jobs(jobs, N);
    states_of(s, keys, N, after);
    assert_moves_allowed(keys, before, after, N, &moved);
    assert_int_equal(moved, N); /* queued -> running, all of them */

    record_as(s, "q", JOB_QUEUED);
    record_as(s, "r", JOB_RETRYING);
    record_as(s, "w", JOB_WAITING);
    record_as(s, "s", JOB_SUCCEEDED);
    record_as(s, "f", JOB_FAILED);
    assert_int_equal(store_flush(s), 0);

    /* a lost lease: back to queued, or failed with no attempt left */
    states_of(s, keys, N, before);
    assert_int_equal(store_reclaim_expired(s, later, &n), 0);
    states_of(s, keys, N, after);
    assert_moves_allowed(keys, before, after, N, &moved);
    assert_int_equal(moved, 2);
    assert_int_equal(after[5], JOB_QUEUED);
    assert_int_equal(after[6], JOB_FAILED);

    /* a claim takes queued and retrying jobs, never a waiting one */
    states_of(s, keys, N, before);
    assert_int_equal(claim(s, "gen", N, later, "again", jobs), 3);
    free_jobs(jobs, 3);
    states_of(s, keys, N, after);
    assert_moves_allowed(keys, before, after, N, &moved);
    assert_int_equal(moved, 3);
    assert_int_equal(after[2], JOB_WAITING);

    /* cancel: every unfinished job, running and waiting ones too */
    states_of(s, keys, N, before);
    assert_int_equal(store_cancel(s, NULL, 0, &sel, later, &n), 0);
    states_of(s, keys, N, after);
    assert_moves_allowed(keys, before, after, N, &moved);
    assert_int_equal(moved, 4);

    /* retry: failed and cancelled back to queued; succeeded stays */
    sel.states = JOB_TERMINAL_MASK;
    states_of(s, keys, N, before);
    assert_int_equal(store_retry(s, NULL, 0, &sel, later, &n), 0);
    states_of(s, keys, N, after);
    assert_moves_allowed(keys, before, after, N, &moved);
    assert_int_equal(moved, 6);
    assert_int_equal(after[3], JOB_SUCCEEDED);
    store_close(s);
}

struct export_seen {
    int rows;
    int stop_at;
};

static int
export_row(const json_t *row, void *arg)
{
    struct export_seen *e = arg;
    assert_non_null(json_object_get(row, "custom_id"));
    return ++e->rows == e->stop_at ? 42 : 0;
}

static void
test_queries_status_jobs_progress_export_purge(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct store_filter filter = {.provider = "gen", .limit = 2};
    struct store_select sel = {0};
    struct export_seen seen = {0};
    struct provider_row p = {.name = "gen",
                             .state = "paused",
                             .reason = "auth",
                             .concurrency_limit = 12};
    json_t *v, *counts;
    long jobs, attempts, pages;
    int limit;
    int64_t resume;

    for (int i = 0; i < 5; i++) {
        char k[8];
        snprintf(k, sizeof(k), "j%d", i);
        insert(s, "gen", k, 0, T0);
    }
    fail_job(s, "j0", "x", 10);
    assert_int_equal(store_provider_put(s, &p, T0), 0);
    assert_int_equal(store_provider_get(s, "gen", &limit, &resume), 0);
    assert_int_equal(limit, 12);
    assert_int_equal(resume, 0);
    assert_int_equal(store_provider_request_resume(s, "nope", T0), -ENOENT);
    assert_int_equal(store_provider_request_resume(s, "gen", T0 + 7), 0);
    assert_int_equal(store_provider_get(s, "gen", &limit, &resume), 0);
    assert_int_equal(resume, T0 + 7);

    v = store_status_json(s);
    assert_non_null(v);
    counts = json_object_get(json_object_get(v, "providers"), "gen");
    assert_int_equal(json_integer_value(json_object_get(counts, "queued")), 4);
    assert_int_equal(json_integer_value(json_object_get(counts, "failed")), 1);
    assert_int_equal(json_integer_value(json_object_get(counts, "total")), 5);
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(v, "lanes"), 0), "reason")),
        "auth");
    json_decref(v);

    v = store_jobs_json(s, &filter);
    assert_int_equal(json_array_size(v), 2);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(v, 0), "custom_id")),
        "j4"); /* newest first */
    json_decref(v);
    v = store_progress_json(s, NULL);
    assert_int_equal(json_array_size(v), 1);
    assert_int_equal(
        json_integer_value(json_object_get(json_array_get(v, 0), "total")), 5);
    assert_int_equal(
        json_integer_value(json_object_get(json_array_get(v, 0), "done")), 1);
    json_decref(v);
    v = store_providers_json(s);
    assert_int_equal(json_array_size(v), 1);
    json_decref(v);

    assert_int_equal(store_export(s, &sel, export_row, &seen), 0);
    assert_int_equal(seen.rows, 5);
    seen.rows = 0;
    seen.stop_at = 2;
    assert_int_equal(store_export(s, &sel, export_row, &seen), 42);
    assert_int_equal(seen.rows, 2);

    sel.finished_before = T0 + 11;
    assert_int_equal(store_purge(s, &sel, 100, &jobs, &attempts, &pages), 0);
    assert_int_equal(jobs, 1);
    assert_int_equal(attempts, 1);
    assert_null(store_job_json(s, "j0"));
    store_close(s);
}

static int
counts_cb(const char *provider, const char *batch, enum job_state st, long n,
          void *arg)
{
    char key[128];
    snprintf(key, sizeof(key), "%s/%s/%s", provider, batch ? batch : "-",
             job_state_name(st));
    json_object_set_new(arg, key, json_integer(n));
    return 0;
}

static void
test_kept_counts_follow_every_move(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct jobspec jobs[3] = {spec("gen", "a", "a", 0),
                              spec("gen", "b", "b", 0),
                              spec("gen", "c", "c", 0)};
    struct job *claimed[4];
    json_t *c = json_object();
    long n;
    size_t in;
    int64_t ids[1];

    jobs[2].batch = (char *)"night";
    assert_int_equal(store_begin(s), 0);
    assert_int_equal(store_insert_jobs(s, jobs, 3, T0, &in), 0);
    assert_int_equal(store_commit(s), 0);
    assert_int_equal(claim(s, "gen", 1, T0, "o", claimed), 1);
    ids[0] = claimed[0]->id;
    free_jobs(claimed, 1);
    assert_int_equal(store_cancel(s, ids, 1, NULL, T0, &n), 0);
    assert_int_equal(store_counts(s, counts_cb, c), 0);
    assert_int_equal(json_integer_value(json_object_get(c, "gen/-/queued")), 1);
    assert_int_equal(json_integer_value(json_object_get(c, "gen/-/cancelled")),
                     1);
    assert_int_equal(json_integer_value(json_object_get(c, "gen/night/queued")),
                     1);
    assert_null(json_object_get(c, "gen/-/running")); /* n = 0: skipped */
    assert_int_equal(json_object_size(c), 3);
    json_decref(c);
    assert_int_equal(store_pending_count(s, "gen", &n), 0);
    assert_int_equal(n, 2);
    store_close(s);
}

static void
test_outputs_of_a_success_are_claimed_recorded_and_retried(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct job *jobs[2];
    struct job_update u = {0};
    const char *urls[] = {"https://cdn.example/a.png",
                          "https://cdn.example/b\"q.png"};
    struct output_claim oc[4];
    struct output_result res = {0};
    long pending, stored, failed, changed;
    int64_t due;
    int n;
    json_t *list;

    insert(s, "gen", "j", 0, T0);
    assert_int_equal(claim(s, "gen", 2, T0, "o", jobs), 1);
    u.job_id = jobs[0]->id;
    free_jobs(jobs, 1);
    u.owner = "o";
    u.state = JOB_SUCCEEDED;
    u.http_status = 200;
    u.finished_at = T0 + 5;
    u.output_urls = urls;
    u.noutput_urls = 2;
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_outputs_counts(s, &pending, &stored, &failed), 0);
    assert_int_equal(pending, 2);
    assert_int_equal(store_outputs_next_due(s, &due), 0);
    assert_int_equal(due, T0 + 5);
    assert_int_equal(store_outputs_claim(s, 4, T0 + 10, LEASE_MS, "o", oc, &n),
                     0);
    assert_int_equal(n, 2);
    assert_string_equal(oc[1].url, "https://cdn.example/b\"q.png");
    assert_string_equal(oc[0].provider, "gen");
    assert_int_equal(oc[0].attempts, 1);
    res.id = oc[0].id;
    res.state = "stored";
    res.path = "/out/ab/abc";
    res.sha256 = "abc";
    res.bytes = 3;
    /* only under the lease it was claimed with */
    res.owner = "other";
    assert_int_equal(store_output_record(s, &res, T0 + 20), -ESTALE);
    res.owner = "o";
    assert_int_equal(store_output_record(s, &res, T0 + 20), 0);
    memset(&res, 0, sizeof(res));
    res.id = oc[1].id;
    res.state = "failed";
    res.error = "404";
    res.owner = "o";
    assert_int_equal(store_output_record(s, &res, T0 + 20), 0);
    output_claim_clear(&oc[0]);
    output_claim_clear(&oc[1]);
    assert_int_equal(store_outputs_counts(s, &pending, &stored, &failed), 0);
    assert_int_equal(stored, 1);
    assert_int_equal(failed, 1);
    list = store_outputs_json(s, NULL, "stored");
    assert_int_equal(json_array_size(list), 1);
    assert_int_equal(
        json_integer_value(json_object_get(json_array_get(list, 0), "bytes")),
        3);
    json_decref(list);
    assert_int_equal(store_outputs_retry(s, NULL, T0 + 30, &changed), 0);
    assert_int_equal(changed, 1);
    assert_int_equal(store_outputs_counts(s, &pending, &stored, &failed), 0);
    assert_int_equal(pending, 1);
    store_close(s);
}

static void
budget_cb(const char *batch, double budget, void *data)
{
    json_object_set_new(data, batch, json_real(budget));
}

static void
test_spend_budgets_and_held_batches(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct jobspec jobs[3] = {spec("gen", "a", "a", 0),
                              spec("gen", "b", "b", 0),
                              spec("gen", "c", "c", 0)};
    const char *held = "capped";
    struct job *claimed[4];
    struct job_update u = {0};
    json_t *budgets = json_object(), *rows;
    double spent;
    long costed;
    int64_t since;
    size_t in;
    int n = 0;

    jobs[0].batch = (char *)"capped";
    jobs[1].batch = (char *)"open";
    assert_int_equal(store_begin(s), 0);
    assert_int_equal(store_insert_jobs(s, jobs, 3, T0, &in), 0);
    assert_int_equal(store_commit(s), 0);
    assert_int_equal(store_oldest_queued(s, "gen", &since), 0);
    assert_int_equal(since, T0);
    assert_int_equal(store_batch_budget_set(s, "capped", 2.5, T0), 0);
    assert_int_equal(store_batch_budgets(s, budget_cb, budgets), 0);
    assert_true(json_real_value(json_object_get(budgets, "capped")) == 2.5);
    json_decref(budgets);
    assert_int_equal(store_claim_except(s, "gen", 4, T0, LEASE_MS, "o", &held,
                                        1, claimed, &n),
                     0);
    assert_int_equal(n, 2); /* b (open) and c (no batch), not a */
    for (int i = 0; i < n; i++)
        assert_string_not_equal(claimed[i]->custom_id, "a");
    u.job_id = claimed[0]->id;
    free_jobs(claimed, n);
    u.owner = "o";
    u.state = JOB_SUCCEEDED;
    u.http_status = 200;
    u.finished_at = T0 + 1;
    u.cost = 0.75;
    u.has_cost = true;
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_spend(s, "gen", NULL, &spent, &costed), 0);
    assert_true(spent == 0.75);
    assert_int_equal(costed, 1);
    assert_int_equal(store_batch_pause(s, "capped", true, T0 + 2), 0);
    rows = store_spend_json(s, "capped");
    assert_int_equal(json_array_size(rows), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(rows, 0), "batch_state")),
                        "paused");
    json_decref(rows);
    store_close(s);
}

/* The sum of jobs.cost over the jobs still there, and how many have one. */
struct cost_sum {
    double spent;
    long costed;
};

static int
cost_row(const json_t *row, void *arg)
{
    struct cost_sum *c = arg;
    const json_t *v = json_object_get(row, "cost");

    if (json_is_number(v)) {
        c->spent += json_number_value(v);
        c->costed++;
    }
    return 0;
}

/* The kept spend of provider "gen" and of batch "b" is checked against
 * the sum over the jobs, and the spend view's rows against both. */
static void
assert_spend(struct store *s, double want, long want_costed, bool purged)
{
    struct store_select all = {0};
    struct cost_sum sum = {0, 0};
    double spent, rows_spent = 0, rows_hour = 0;
    long costed;
    json_t *rows, *r;
    size_t i;

    assert_int_equal(store_spend(s, "gen", NULL, &spent, &costed), 0);
    assert_true(spent > want - 1e-9 && spent < want + 1e-9);
    assert_int_equal(costed, want_costed);
    assert_int_equal(store_spend(s, NULL, "b", &spent, &costed), 0);
    assert_true(spent > want - 1e-9 && spent < want + 1e-9);
    assert_int_equal(costed, want_costed);
    assert_int_equal(store_export(s, &all, cost_row, &sum), 0);
    if (purged) {
        assert_int_equal(sum.costed, 0); /* the jobs are gone, not the spend */
    } else {
        assert_true(sum.spent > want - 1e-9 && sum.spent < want + 1e-9);
        assert_int_equal(sum.costed, want_costed);
    }
    rows = store_spend_json(s, NULL);
    assert_non_null(rows);
    json_array_foreach(rows, i, r)
    {
        rows_spent += json_number_value(json_object_get(r, "spent"));
        rows_hour += json_number_value(json_object_get(r, "spent_last_hour"));
    }
    json_decref(rows);
    assert_true(rows_spent > want - 1e-9 && rows_spent < want + 1e-9);
    /* every cost was recorded within the last minute */
    assert_true(rows_hour > want - 1e-9 && rows_hour < want + 1e-9);
}

/* One run's outcome for job id, recorded and committed at now. */
static void
record_run(struct store *s, int64_t id, enum job_state state, double cost,
           bool has_cost, int64_t now)
{
    struct job_update u = {.job_id = id,
                           .owner = "o",
                           .state = state,
                           .http_status = state == JOB_SUCCEEDED ? 200 : 400,
                           .finished_at = now,
                           .cost = cost,
                           .has_cost = has_cost};
    if (state == JOB_FAILED)
        u.cls = ERR_INVALID_REQUEST;
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
}

/* The spend is kept in the transactions that record costs (sql/012):
 * equal to the sum of jobs.cost after costs, runs without one, and a
 * retried job costed again (money spent twice is spent twice); a purge
 * leaves it as it was. */
static void
test_kept_spend_follows_costs_retries_and_purge(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f);
    struct jobspec jobs[3] = {spec("gen", "a", "a", 0),
                              spec("gen", "b", "b", 0),
                              spec("gen", "c", "c", 0)};
    struct store_select sel = {0};
    struct job *claimed[4];
    int64_t now = (int64_t)time(NULL) * 1000, d;
    long changed, purged, attempts, pages;
    size_t in;
    int n;

    for (int i = 0; i < 3; i++)
        jobs[i].batch = (char *)"b";
    assert_int_equal(store_begin(s), 0);
    assert_int_equal(store_insert_jobs(s, jobs, 3, now, &in), 0);
    assert_int_equal(store_commit(s), 0);
    assert_spend(s, 0, 0, false);

    n = claim(s, "gen", 4, now, "o", claimed);
    assert_int_equal(n, 3);
    record_run(s, claimed[0]->id, JOB_SUCCEEDED, 0.5, true, now);
    record_run(s, claimed[1]->id, JOB_FAILED, 0, false, now);
    d = claimed[2]->id;
    free_jobs(claimed, n);
    assert_spend(s, 0.5, 1, false);

    /* cancelled while running, answered anyway: the cost is kept */
    assert_int_equal(store_cancel(s, &d, 1, NULL, now, &changed), 0);
    assert_int_equal(changed, 1);
    record_run(s, d, JOB_SUCCEEDED, 0.25, true, now);
    assert_spend(s, 0.75, 2, false);

    /* retried and costed again: both runs were paid for */
    assert_int_equal(store_retry(s, &d, 1, NULL, now, &changed), 0);
    assert_int_equal(changed, 1);
    assert_spend(s, 0.75, 2, false);
    n = claim(s, "gen", 4, now, "o", claimed);
    assert_int_equal(n, 1);
    free_jobs(claimed, n);
    record_run(s, d, JOB_SUCCEEDED, 0.25, true, now);
    assert_spend(s, 1.0, 2, false);
    assert_true(job_real(s, "c", "cost") == 0.5);

    sel.finished_before = now + 1;
    assert_int_equal(store_purge(s, &sel, 100, &purged, &attempts, &pages),
                     0);
    assert_int_equal(purged, 3);
    assert_spend(s, 1.0, 2, true);
    store_close(s);
}

struct load_into {
    struct store *to;
    const char *table;
    int rows;
};

static int
load_row(const json_t *row, void *arg)
{
    struct load_into *l = arg;
    assert_int_equal(store_load(l->to, l->table, row), 0);
    l->rows++;
    return 0;
}

/* What sluicectl migrate does, from this backend into a SQLite file: every
 * row kept (ids, states, keys, attempts), counts rebuilt, new ids after. */
static void
test_dump_and_load_move_every_row(void **state)
{
    struct fixture *f = fx(state);
    struct store *s = open_store(f), *to;
    struct job *jobs[4];
    struct job_update u = {0};
    char dir[64], path[96];
    bool empty;
    json_t *a, *b;
    int64_t n = 0;

    insert(s, "gen", "a", 3, T0);
    insert(s, "gen", "b", 0, T0);
    assert_int_equal(claim(s, "gen", 1, T0, "o", jobs), 1);
    u.job_id = jobs[0]->id;
    free_jobs(jobs, 1);
    u.owner = "o";
    u.state = JOB_RETRYING;
    u.run_after = T0 + 500;
    u.new_key = "a.2";
    u.has_attempt = true;
    u.attempt = 1;
    u.key_sent = "a";
    u.started_at = T0;
    u.finished_at = T0 + 9;
    u.http_status = 500;
    u.cls = ERR_SERVER_ERROR;
    u.code = "boom";
    store_record(s, &u);
    assert_int_equal(store_flush(s), 0);
    assert_int_equal(store_is_empty(s, &empty), 0);
    assert_false(empty);

    snprintf(dir, sizeof(dir), "/tmp/test_contract_to.XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/to.db", dir);
    assert_int_equal(store_open(path, &to), 0);
    assert_int_equal(store_is_empty(to, &empty), 0);
    assert_true(empty);
    assert_int_equal(store_begin(to), 0);
    for (const char *const *t = store_tables; *t; t++) {
        struct load_into l = {.to = to, .table = *t};
        assert_int_equal(store_dump(s, *t, load_row, &l), 0);
        n += l.rows;
    }
    assert_int_equal(n, 3); /* two jobs, one attempt */
    assert_int_equal(store_load_done(to), 0);
    assert_int_equal(store_commit(to), 0);

    a = store_job_json(s, "a");
    b = store_job_json(to, "a");
    assert_true(json_equal(a, b));
    json_decref(a);
    json_decref(b);
    long unfinished;
    assert_int_equal(store_pending_count(to, "gen", &unfinished), 0);
    assert_int_equal(unfinished, 2);
    assert_int_equal(claim(to, "gen", 4, T0 + 500, "p", jobs), 2);
    assert_string_equal(jobs[0]->custom_id, "a");
    assert_string_equal(jobs[0]->idempotency_key, "a.2"); /* derived key */
    assert_int_equal(jobs[0]->attempts, 2);
    free_jobs(jobs, 2);
    insert(to, "gen", "c", 0, T0);
    assert_int_equal(job_int(to, "c", "id"), 3);
    store_close(to);
    unlink(path);
    snprintf(path, sizeof(path), "%s/to.db-wal", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/to.db-shm", dir);
    unlink(path);
    rmdir(dir);
    store_close(s);
}

/* --- wakeups ------------------------------------------------------------- */

static void
test_data_version_changes_when_another_process_enqueues(void **state)
{
    struct fixture *f = fx(state);
    struct store *a = open_store(f), *b = open_store(f);
    int64_t v0, v = 0;

    assert_int_equal(store_data_version(a, &v0), 0);
    insert(b, "gen", "k", 0, T0);
    /* PostgreSQL's wakeup travels asynchronously: a bounded wait */
    for (int i = 0; i < 500; i++) {
        assert_int_equal(store_data_version(a, &v), 0);
        if (v != v0)
            break;
        usleep(10000);
    }
    assert_true(v != v0);
    store_close(a);
    store_close(b);
}

/* Polls a's data version until it differs from v0 (PostgreSQL's wakeup
 * travels asynchronously: a bounded wait); returns the new version. */
static int64_t
version_after(struct store *a, int64_t v0)
{
    int64_t v = v0;

    for (int i = 0; i < 500 && v == v0; i++) {
        assert_int_equal(store_data_version(a, &v), 0);
        if (v == v0)
            usleep(10000);
    }
    assert_true(v != v0);
    return v;
}

/* A file whose second call meets a duplicate (on PostgreSQL: the rows
 * since the savepoint rolled back and replayed) still wakes the others
 * when it commits. */
static void
test_data_version_changes_when_a_file_with_a_duplicate_commits(void **state)
{
    struct fixture *f = fx(state);
    struct store *a = open_store(f), *b = open_store(f);
    struct jobspec one = spec("gen", "k1", "k1", 0);
    struct jobspec two[2] = {spec("gen", "k0", "k0", 0),
                             spec("gen", "k2", "k2", 0)};
    int64_t v;
    size_t n;

    assert_int_equal(store_data_version(a, &v), 0);
    insert(b, "gen", "k0", 0, T0);
    v = version_after(a, v);
    assert_int_equal(store_begin(b), 0);
    assert_int_equal(store_insert_jobs(b, &one, 1, T0, &n), 0);
    assert_int_equal(store_insert_jobs(b, two, 2, T0, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(store_commit(b), 0);
    version_after(a, v);
    store_close(a);
    store_close(b);
}

struct wake {
    int calls;
    uv_timer_t deadline;
};

static void
on_wake(void *arg)
{
    struct wake *w = arg;
    w->calls++;
    uv_stop(w->deadline.loop);
}

static void
on_uv_deadline(uv_timer_t *t)
{
    uv_stop(t->loop);
}

static void
test_watch_wakes_the_loop_on_enqueue_where_the_backend_pushes(void **state)
{
    struct fixture *f = fx(state);
    struct store *a = open_store(f), *b = open_store(f);
    uv_loop_t loop;
    struct wake w = {0};
    int rc;

    uv_loop_init(&loop);
    uv_timer_init(&loop, &w.deadline);
    rc = store_watch(a, &loop, on_wake, &w);
    if (f->kind == SQLITE) {
        assert_int_equal(rc, -ENOTSUP); /* it polls data_version */
    } else {
        assert_int_equal(rc, 0);
        insert(b, "gen", "k", 0, T0);
        uv_timer_start(&w.deadline, on_uv_deadline, 10000, 0);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_true(w.calls >= 1);
        assert_int_equal(store_watch(a, NULL, NULL, NULL), 0);
    }
    uv_close((uv_handle_t *)&w.deadline, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    store_close(a);
    store_close(b);
}

/* Permits for want requests of provider as owner (cap, rate: its view),
 * with in_flight of its own out. */
static int
take(struct store *s, const char *provider, const char *owner, int cap,
     double rate, int in_flight, int want, int64_t now)
{
    struct permit_view v = {.cap = cap, .rate = rate};
    int granted = -1;
    int64_t wake;
    assert_int_equal(store_permit_take(s, provider, owner, &v, in_flight, want,
                                       now, &granted, &wake),
                     0);
    return granted;
}

static void
test_permits_share_a_cap_and_a_bucket_between_connections(void **state)
{
    struct fixture *f = fx(state);
    struct store *a = open_store(f), *b = open_store(f);
    struct daemon_row da = {
        .owner = (char *)"A", .host = (char *)"h", .pid = 1, .started_at = T0};
    struct daemon_row db = {
        .owner = (char *)"B", .host = (char *)"h", .pid = 2, .started_at = T0};
    long n;

    assert_int_equal(store_daemon_register(a, &da), 0);
    assert_int_equal(store_daemon_register(b, &db), 0);
    /* one cap of 6 for both; the lowest view is the pool's */
    assert_int_equal(take(a, "gen", "A", 6, 0, 0, 6, T0), 6);
    assert_int_equal(take(b, "gen", "B", 8, 0, 0, 6, T0), 0);
    assert_int_equal(store_permit_put(a, "gen", "A", 2, 0), 0);
    /* B waits, so A keeps to its share (3) and B gets the rest */
    assert_int_equal(take(a, "gen", "A", 6, 0, 2, 4, T0), 1);
    assert_int_equal(take(b, "gen", "B", 8, 0, 0, 6, T0), 3);

    /* one bucket: 100/s is a burst of 10, drawn by both */
    assert_int_equal(take(a, "img", "A", 0, 100, 0, 8, T0), 8);
    assert_int_equal(take(b, "img", "B", 0, 100, 0, 8, T0), 2);
    assert_int_equal(take(b, "img", "B", 0, 100, 2, 8, T0 + 10), 1);
    /* granted, not used: back in the bucket */
    assert_int_equal(store_permit_put(a, "img", "A", 3, 5), 0);
    assert_int_equal(take(b, "img", "B", 0, 100, 3, 8, T0 + 10), 5);

    /* a dead daemon's slots (and its view) go with its row */
    assert_int_equal(store_daemon_reap(b, "A", 0, T0, &n), 0);
    assert_int_equal(take(b, "gen", "B", 8, 0, 3, 8, T0), 5);
    store_close(a);
    store_close(b);
}

/* Which string is which backend, and how logs name a server: never its
 * password or options, nor a string libpq cannot parse. No server
 * needed. */
static void
test_database_strings_pick_the_backend_and_hide_the_password(void **state)
{
    static const struct {
        const char *database, *display;
    } cases[] = {
        {"postgresql://u:secret@db.example:6432/q?sslmode=require",
         "postgresql://u@db.example:6432/q"},
        {"postgres://db.example/q", "postgresql://db.example/q"},
        {"host=/run/postgresql dbname=q password=secret",
         "postgresql:///run/postgresql/q"},
        {"postgresql://u:secret@%zz", "postgresql://(malformed)"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *name = store_display_name(cases[i].database);
        assert_false(store_is_file(cases[i].database));
        assert_string_equal(name, cases[i].display);
        free(name);
    }
    /* a path, even one with an = in it, is a SQLite file */
    assert_true(store_is_file("/var/lib/sluice/queue.db"));
    assert_true(store_is_file("/srv/a=b/queue.db"));
    assert_true(store_is_file("queue.db"));
}

static enum kind sqlite_kind = SQLITE, postgres_kind = POSTGRES;

#define BOTH(t)                                                                \
    cmocka_unit_test_prestate_setup_teardown(t, setup, teardown,               \
                                             &sqlite_kind),                    \
        cmocka_unit_test_prestate_setup_teardown(t, setup, teardown,           \
                                                 &postgres_kind)

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_database_strings_pick_the_backend_and_hide_the_password),
        BOTH(test_open_migrates_to_latest_and_reopen_keeps_rows),
        BOTH(test_read_only_open_reads_and_never_writes),
        BOTH(test_insert_skips_duplicates_within_and_across_files),
        BOTH(test_insert_keeps_text_byte_for_byte),
        BOTH(test_insert_calls_of_one_file_count_duplicates_of_earlier_calls),
        BOTH(test_a_custom_id_names_its_newest_job_whatever_its_key),
        BOTH(
            test_insert_calls_of_large_rows_count_duplicates_across_megabytes),
        BOTH(test_claim_takes_due_jobs_by_priority_and_charges_an_attempt),
        BOTH(test_two_connections_never_claim_the_same_job),
        BOTH(test_polls_are_claimed_apart_and_stay_waiting),
        BOTH(test_flush_writes_success_failure_and_attempt_rows),
        BOTH(test_outcome_of_a_job_cancelled_meanwhile_keeps_it_cancelled),
        BOTH(test_a_row_the_database_refuses_does_not_hold_back_the_others),
        BOTH(test_a_row_refused_at_commit_does_not_hold_back_the_others),
        BOTH(test_a_failure_repeated_is_logged_once),
        BOTH(
            test_a_commit_sent_again_after_a_lost_acknowledgement_changes_nothing),
        BOTH(test_attempts_written_twice_before_the_upgrade_are_kept_once),
        BOTH(
            test_reclaim_takes_back_unregistered_leases_and_fails_the_exhausted),
        BOTH(test_daemons_register_beat_and_reap),
        BOTH(test_taken_back_jobs_without_idempotency_fail_as_unknown_outcome),
        BOTH(test_late_outcome_of_a_job_taken_back_is_not_written),
        BOTH(test_permits_share_a_cap_and_a_bucket_between_connections),
        BOTH(test_kept_counts_follow_every_move),
        BOTH(test_outputs_of_a_success_are_claimed_recorded_and_retried),
        BOTH(test_spend_budgets_and_held_batches),
        BOTH(test_kept_spend_follows_costs_retries_and_purge),
        BOTH(test_dump_and_load_move_every_row),
        BOTH(test_counts_and_next_due),
        BOTH(test_failures_retry_and_cancel_by_selection),
        BOTH(test_retry_keeps_or_advances_the_derived_key),
        BOTH(test_every_move_the_store_makes_is_in_the_table),
        BOTH(test_queries_status_jobs_progress_export_purge),
        BOTH(test_data_version_changes_when_another_process_enqueues),
        BOTH(test_data_version_changes_when_a_file_with_a_duplicate_commits),
        BOTH(test_watch_wakes_the_loop_on_enqueue_where_the_backend_pushes),
    };
    if (getenv("SLUICE_TEST_PG") == NULL)
        fprintf(stderr, "test_store_contract: SLUICE_TEST_PG unset: the "
                        "PostgreSQL runs are skipped (scripts/test.sh "
                        "starts a server)\n");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
