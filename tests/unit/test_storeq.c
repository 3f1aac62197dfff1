/*
 * storeq: claims, permit puts and group commits asked from the loop and
 * answered on it, run three ways: inline on a SQLite file (what sluiced
 * does there), on a database thread over a SQLite file (the thread's
 * mechanics without a server), and on PostgreSQL, where the daemon runs
 * them on the thread (a fresh database on the server of $SLUICE_TEST_PG;
 * skipped without it). Real databases, a real libuv loop.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "sluice/clock.h"
#include "sluice/jobspec.h"
#include "sluice/store.h"
#include "sluice/storeq.h"

#define LEASE_MS 60000
#define OWNER "owner-a"
/* Bounds every wait for an answer: generous, for a loaded machine. */
#define ANSWER_WAIT_MS 20000

enum kind { SQLITE_INLINE, SQLITE_THREAD, POSTGRES };

struct fixture {
    enum kind kind;
    char database[600];
    char dir[64];
    char dbname[64];
    uv_loop_t loop;
    struct store *s;   /* the loop's store */
    struct storeq *q;
    /* what the callbacks saw */
    int commits, commit_rc;
    size_t commit_n;
    bool answered;
    struct storeq_answer a;
    struct job *jobs[16];
    pthread_t cb_thread;
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

static void
on_commit(int rc, size_t n, double seconds, void *arg)
{
    struct fixture *f = arg;

    (void)seconds;
    f->commits++;
    f->commit_rc = rc;
    f->commit_n = n;
    f->cb_thread = pthread_self();
}

static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char sql[128];
    struct daemon_row me = {.owner = (char *)OWNER, .host = (char *)"h",
                            .pid = 1, .started_at = clock_now_ms()};

    f->kind = *(enum kind *)*state;
    if (f->kind == POSTGRES) {
        const char *base = getenv("SLUICE_TEST_PG");
        if (base == NULL || *base == '\0') {
            free(f);
            *state = NULL;
            return 0;
        }
        snprintf(f->dbname, sizeof(f->dbname), "storeq_%ld_%d",
                 (long)getpid(), ++fixture_seq);
        snprintf(sql, sizeof(sql), "CREATE DATABASE %s", f->dbname);
        pg_admin(sql);
        snprintf(f->database, sizeof(f->database), "%s dbname=%s", base,
                 f->dbname);
    } else {
        snprintf(f->dir, sizeof(f->dir), "/tmp/test_storeq.XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->database, sizeof(f->database), "%s/queue.db", f->dir);
    }
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(store_open(f->database, &f->s), 0);
    store_set_busy_timeout(f->s, 100);
    assert_int_equal(store_daemon_register(f->s, &me), 0);
    assert_int_equal(storeq_open(&f->loop, f->s, f->database,
                                 f->kind == SQLITE_INLINE ? STOREQ_INLINE
                                 : f->kind == SQLITE_THREAD
                                     ? STOREQ_THREAD
                                     : STOREQ_AUTO,
                                 100, on_commit, f, &f->q),
                     0);
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
    storeq_close(f->q);
    store_close(f->s);
    uv_run(&f->loop, UV_RUN_DEFAULT); /* the close callbacks */
    assert_int_equal(uv_loop_close(&f->loop), 0);
    if (f->kind == POSTGRES) {
        snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)",
                 f->dbname);
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

static struct fixture *
fx(void **state)
{
    if (*state == NULL)
        skip();
    return *state;
}

static void
insert(struct fixture *f, int n)
{
    for (int i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof(key), "k%d", i);
        struct jobspec j = {.provider = (char *)"gen",
                            .custom_id = key,
                            .method = (char *)"POST",
                            .path = (char *)"/v1/x",
                            .body = (char *)"{}",
                            .idempotency_key = key,
                            .max_attempts = 3};
        assert_int_equal(store_insert_job(f->s, &j, clock_now_ms() - 1), 0);
    }
}

/* Runs the loop until *flag or ANSWER_WAIT_MS. */
static void
run_until(struct fixture *f, const bool *flag)
{
    int64_t end = clock_now_ms() + ANSWER_WAIT_MS;

    while (!*flag && clock_now_ms() < end) {
        if (uv_run(&f->loop, UV_RUN_ONCE) == 0 && !*flag)
            usleep(1000); /* nothing active: the answer is not out yet */
    }
    assert_true(*flag);
}

static void
on_claimed(struct storeq_answer *a, void *arg)
{
    struct fixture *f = arg;

    f->a = *a;
    for (int i = 0; i < a->got && i < 16; i++)
        f->jobs[i] = a->jobs[i];
    f->a.jobs = f->jobs;
    f->answered = true;
    f->cb_thread = pthread_self();
}

static void
claim_as(struct fixture *f, const char *owner, int want, int cap)
{
    struct storeq_claim c = {.provider = "gen",
                             .owner = owner,
                             .now_ms = clock_now_ms(),
                             .lease_ms = LEASE_MS,
                             .want = want,
                             .view = {.cap = cap},
                             .allowed = want};

    f->answered = false;
    storeq_claim(f->q, &c, on_claimed, f);
    /* the callback runs on the loop: inline before storeq_claim returns,
     * threaded only once the loop runs */
    assert_int_equal(f->answered, !storeq_threaded(f->q));
    run_until(f, &f->answered);
    assert_true(pthread_equal(f->cb_thread, pthread_self()));
}

static void
claim(struct fixture *f, int want, int cap)
{
    claim_as(f, OWNER, want, cap);
}

static void
record_success(struct fixture *f, const struct job *j)
{
    int64_t now = clock_now_ms();
    struct job_update u = {.job_id = j->id,
                           .owner = OWNER,
                           .state = JOB_SUCCEEDED,
                           .has_attempt = true,
                           .attempt = j->attempts,
                           .key_sent = j->idempotency_key,
                           .started_at = now,
                           .finished_at = now,
                           .http_status = 200,
                           .result = "{\"ok\":true}"};
    storeq_record(f->q, &u);
}

static int
count_cb(const char *provider, const char *batch, enum job_state state,
         long n, void *arg)
{
    long *by_state = arg;
    (void)provider;
    (void)batch;
    by_state[state] += n;
    return 0;
}

/* Jobs in state, as the loop's store reads them. */
static long
count(struct fixture *f, enum job_state state)
{
    long by_state[JOB_STATE_COUNT] = {0};
    assert_int_equal(store_counts(f->s, count_cb, by_state), 0);
    return by_state[state];
}

/* Waits for the answer of the commit after before. */
static void
commit_wait(struct fixture *f, int before)
{
    int64_t end = clock_now_ms() + ANSWER_WAIT_MS;

    while (f->commits == before && clock_now_ms() < end)
        uv_run(&f->loop, UV_RUN_ONCE); /* the commit out keeps it alive */
    assert_int_equal(f->commits, before + 1);
    assert_true(pthread_equal(f->cb_thread, pthread_self()));
}

static void
commit(struct fixture *f)
{
    int before = f->commits;

    storeq_commit(f->q);
    commit_wait(f, before);
}

static void
test_a_claim_takes_permits_and_jobs_and_its_outcomes_commit(void **state)
{
    struct fixture *f = fx(state);

    insert(f, 6);
    claim(f, 4, 0);
    assert_int_equal(f->a.rc, 0);
    assert_true(f->a.took);
    assert_int_equal(f->a.granted, 4);
    assert_int_equal(f->a.got, 4);
    assert_int_equal(count(f, JOB_RUNNING), 4);
    for (int i = 0; i < 4; i++) {
        assert_string_equal(f->jobs[i]->provider, "gen");
        record_success(f, f->jobs[i]);
        job_free(f->jobs[i]);
    }
    assert_int_equal(storeq_pending(f->q), 4);
    commit(f);
    assert_int_equal(f->commit_rc, 0);
    assert_int_equal(f->commit_n, 4);
    assert_int_equal(storeq_pending(f->q), 0);
    assert_int_equal(storeq_busy(f->q), 0);
    assert_int_equal(count(f, JOB_SUCCEEDED), 4);
    assert_int_equal(count(f, JOB_QUEUED), 2);
}

static void
test_a_cap_grants_fewer_and_a_short_claim_gives_the_rest_back(void **state)
{
    struct fixture *f = fx(state);

    insert(f, 3);
    /* a cap of 2: two permits, two jobs */
    claim(f, 5, 2);
    assert_int_equal(f->a.rc, 0);
    assert_int_equal(f->a.granted, 2);
    assert_int_equal(f->a.got, 2);
    assert_false(f->a.put);
    for (int i = 0; i < 2; i++)
        job_free(f->jobs[i]);
    /* no cap, one job left: four permits go back, nothing else is due */
    claim(f, 5, 0);
    assert_int_equal(f->a.rc, 0);
    assert_int_equal(f->a.granted, 5);
    assert_int_equal(f->a.got, 1);
    assert_true(f->a.put);
    assert_false(f->a.capped);
    assert_int_equal(f->a.due_ms, 0);
    job_free(f->jobs[0]);
}

static void
on_put(int rc, void *arg)
{
    struct fixture *f = arg;
    f->a.rc = rc;
    f->answered = true;
}

static void
test_a_put_sets_the_slots_another_daemons_take_counts(void **state)
{
    struct fixture *f = fx(state);
    struct daemon_row b = {.owner = (char *)"owner-b", .host = (char *)"h",
                           .pid = 2, .started_at = clock_now_ms()};

    assert_int_equal(store_daemon_register(f->s, &b), 0);
    insert(f, 5);
    /* ours: three out of a shared cap of 3 */
    claim(f, 3, 3);
    assert_int_equal(f->a.got, 3);
    for (int i = 0; i < 3; i++)
        job_free(f->jobs[i]);
    claim_as(f, "owner-b", 2, 3);
    assert_true(f->a.took);
    assert_int_equal(f->a.granted, 0);
    assert_int_equal(f->a.got, 0);
    /* two of ours finished: two slots for the other */
    f->answered = false;
    storeq_put(f->q, "gen", OWNER, 1, 0, on_put, f);
    run_until(f, &f->answered);
    claim_as(f, "owner-b", 2, 3);
    assert_int_equal(f->a.granted, 2);
    assert_int_equal(f->a.got, 2);
    for (int i = 0; i < 2; i++)
        job_free(f->jobs[i]);
}

static void
test_a_commit_that_meets_a_lock_keeps_its_updates_for_the_next(void **state)
{
    struct fixture *f = fx(state);
    struct store *other;
    long changed = 0;

    insert(f, 2);
    claim(f, 2, 0);
    assert_int_equal(f->a.got, 2);
    int64_t locked = f->jobs[0]->id;
    for (int i = 0; i < 2; i++) {
        record_success(f, f->jobs[i]);
        job_free(f->jobs[i]);
    }
    /* an operator's transaction holds the first job's row (and, on
     * SQLite, the write lock) */
    assert_int_equal(store_open(f->database, &other), 0);
    assert_int_equal(store_begin(other), 0);
    assert_int_equal(
        store_cancel(other, &locked, 1, NULL, clock_now_ms(), &changed), 0);
    commit(f);
    assert_int_equal(f->commit_rc, -EBUSY);
    assert_int_equal(storeq_pending(f->q), 2);
    store_rollback(other);
    store_close(other);
    commit(f);
    assert_int_equal(f->commit_rc, 0);
    assert_int_equal(f->commit_n, 2);
    assert_int_equal(storeq_pending(f->q), 0);
    assert_int_equal(count(f, JOB_SUCCEEDED), 2);
}

static void
on_tick(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

static void
test_the_loop_runs_while_the_thread_waits_on_the_database(void **state)
{
    struct fixture *f = fx(state);
    struct store *other;
    long changed = 0;
    bool ticked = false;
    uv_timer_t tick;

    if (!storeq_threaded(f->q))
        skip(); /* inline, the loop is the caller: nothing to show */
    insert(f, 1);
    claim(f, 1, 0);
    assert_int_equal(f->a.got, 1);
    struct job *j = f->jobs[0];
    int64_t id = j->id;
    storeq_close(f->q);
    /* a thread whose statements wait up to 10 s for a lock */
    assert_int_equal(storeq_open(&f->loop, f->s, f->database, STOREQ_THREAD,
                                 10000, on_commit, f, &f->q),
                     0);
    record_success(f, j);
    job_free(j);
    assert_int_equal(store_open(f->database, &other), 0);
    assert_int_equal(store_begin(other), 0);
    assert_int_equal(
        store_cancel(other, &id, 1, NULL, clock_now_ms(), &changed), 0);
    uv_timer_init(&f->loop, &tick);
    tick.data = &ticked;
    uv_timer_start(&tick, on_tick, 20, 0);
    int before = f->commits;
    storeq_commit(f->q);
    /* the timer fires while the commit waits for the lock */
    run_until(f, &ticked);
    assert_int_equal(f->commits, before);
    assert_int_equal(storeq_busy(f->q), 1);
    store_rollback(other);
    store_close(other);
    commit_wait(f, before);
    assert_int_equal(f->commit_rc, 0);
    assert_int_equal(count(f, JOB_SUCCEEDED), 1);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* tick is on this stack */
}

static void
test_close_commits_what_was_recorded(void **state)
{
    struct fixture *f = fx(state);

    insert(f, 3);
    claim(f, 3, 0);
    assert_int_equal(f->a.got, 3);
    for (int i = 0; i < 3; i++) {
        record_success(f, f->jobs[i]);
        job_free(f->jobs[i]);
    }
    storeq_close(f->q);
    f->q = NULL;
    if (f->kind == SQLITE_INLINE) {
        /* inline, they are the loop store's: its flush (or close) writes
         * them */
        assert_int_equal(store_pending(f->s), 3);
        assert_int_equal(store_flush(f->s), 0);
    }
    assert_int_equal(count(f, JOB_SUCCEEDED), 3);
}

static enum kind k_inline = SQLITE_INLINE, k_thread = SQLITE_THREAD,
                 k_pg = POSTGRES;

#define ALL(t)                                                                 \
    cmocka_unit_test_prestate_setup_teardown(t, setup, teardown, &k_inline),   \
        cmocka_unit_test_prestate_setup_teardown(t, setup, teardown,           \
                                                 &k_thread),                   \
        cmocka_unit_test_prestate_setup_teardown(t, setup, teardown, &k_pg)

int
main(void)
{
    const struct CMUnitTest tests[] = {
        ALL(test_a_claim_takes_permits_and_jobs_and_its_outcomes_commit),
        ALL(test_a_cap_grants_fewer_and_a_short_claim_gives_the_rest_back),
        ALL(test_a_put_sets_the_slots_another_daemons_take_counts),
        ALL(test_a_commit_that_meets_a_lock_keeps_its_updates_for_the_next),
        ALL(test_the_loop_runs_while_the_thread_waits_on_the_database),
        ALL(test_close_commits_what_was_recorded),
    };
    if (getenv("SLUICE_TEST_PG") == NULL)
        fprintf(stderr, "test_storeq: SLUICE_TEST_PG unset: the PostgreSQL "
                        "runs are skipped (scripts/test.sh starts a "
                        "server)\n");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
