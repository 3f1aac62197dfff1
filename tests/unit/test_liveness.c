/*
 * liveness: owner tokens, lock files and heartbeats against real SQLite on
 * a temp file, with two store handles standing for two daemons. flock
 * conflicts between open file descriptions, so one process holds the
 * locks of both. Both clocks are parameters: the wall clock is stepped
 * freely, the monotonic one is what verdicts are measured on.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "sluice/jobspec.h"
#include "sluice/liveness.h"
#include "sluice/store.h"

/* 2023-11-14T22:13:20Z: any fixed "now" will do. */
#define T0 INT64_C(1700000000000)
#define DAY INT64_C(86400000)
#define LEASE_MS 600000
#define TIMEOUT_MS 10000
#define DEAD_OWNER "0123456789abcdef0123456789abcdef"

struct fixture {
    char dir[64];
    char path[96];
    char lock_dir[128];
    struct store *a, *b; /* two daemons' connections */
};

static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_liveness.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    /* an = in the name: still a file, with its lock files (a
     * connection string is told apart by store_is_file, not by =) */
    snprintf(f->path, sizeof(f->path), "%s/queue=1.db", f->dir);
    snprintf(f->lock_dir, sizeof(f->lock_dir), "%s.daemons", f->path);
    assert_int_equal(store_open(f->path, &f->a), 0);
    assert_int_equal(store_open(f->path, &f->b), 0);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[160];
    store_close(f->a);
    store_close(f->b);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void
insert_jobs(struct store *s, int n)
{
    char key[32];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "job-%d", i);
        struct jobspec j = {
            .provider = "p",
            .custom_id = key,
            .method = "POST",
            .path = "/v1/run",
            .body = "{}",
            .idempotency_key = key,
            .max_attempts = 3,
        };
        assert_int_equal(store_insert_job(s, &j, T0), 0);
    }
}

/* Claims up to max jobs due by T0 + 1 h as owner. */
static int
claim_as(struct store *s, const char *owner, int max)
{
    struct job *out[16];
    int n = -1;
    assert_int_equal(store_claim(s, "p", max, T0 + 3600000, LEASE_MS, owner,
                                 out, &n),
                     0);
    for (int i = 0; i < n; i++)
        job_free(out[i]);
    return n;
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

static long long
running_of(const struct fixture *f, const char *owner)
{
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM jobs WHERE state = 'running' "
             "AND lease_owner = '%s'",
             owner);
    return sql_int(f->path, sql);
}

static long long
rows_of(const struct fixture *f, const char *owner)
{
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM daemons WHERE owner = '%s'", owner);
    return sql_int(f->path, sql);
}

static char *
lock_file(const struct fixture *f, const char *owner)
{
    char *p = malloc(256);
    snprintf(p, 256, "%s/%s.lock", f->lock_dir, owner);
    return p;
}

/* -1 no file, 1 locked by someone, 0 free. */
static int
lock_state(const struct fixture *f, const char *owner)
{
    char *p = lock_file(f, owner);
    int fd = open(p, O_RDONLY);
    free(p);
    if (fd < 0)
        return -1;
    int held = flock(fd, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK;
    close(fd);
    return held;
}

/* A daemon row the test controls: host and pid as given, no process. */
static void
fake_daemon(struct store *s, const char *owner, const char *host, long pid,
            int64_t now)
{
    struct daemon_row d = {.owner = (char *)owner, .host = (char *)host,
                           .pid = pid, .started_at = now};
    assert_int_equal(store_daemon_register(s, &d), 0);
}

static void
test_owner_is_a_random_token_with_row_and_held_lock(void **state)
{
    struct fixture *f = *state;
    struct liveness *a, *b;
    char host[256] = "";

    assert_int_equal(liveness_join(f->a, f->path, TIMEOUT_MS, T0, &a), 0);
    assert_int_equal(liveness_join(f->b, f->path, TIMEOUT_MS, T0, &b), 0);
    const char *o = liveness_owner(a);
    assert_int_equal(strlen(o), 32);
    assert_int_equal(strspn(o, "0123456789abcdef"), 32);
    assert_string_not_equal(o, liveness_owner(b));
    assert_null(strchr(o, ':'));

    struct daemon_row *rows;
    size_t n;
    assert_int_equal(store_daemons(f->a, &rows, &n), 0);
    assert_int_equal(n, 2);
    gethostname(host, sizeof(host) - 1);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(rows[i].host, host);
        assert_int_equal(rows[i].pid, (long)getpid());
        assert_int_equal(rows[i].started_at, T0);
    }
    store_daemons_free(rows, n);
    assert_int_equal(lock_state(f, o), 1);
    liveness_leave(a, T0);
    liveness_leave(b, T0);
}

/* Same host, same pid as a live process (this one), another token: while
 * its lock is held it is alive, however long its heartbeat stands still. */
static void
test_a_daemon_whose_lock_is_held_is_never_taken_back(void **state)
{
    struct fixture *f = *state;
    struct liveness *a, *b;
    long n = -1;

    insert_jobs(f->a, 3);
    assert_int_equal(liveness_join(f->a, f->path, TIMEOUT_MS, T0, &a), 0);
    assert_int_equal(liveness_join(f->b, f->path, TIMEOUT_MS, T0, &b), 0);
    char *owner = strdup(liveness_owner(a));
    assert_int_equal(claim_as(f->a, owner, 3), 3);
    /* a never beats; b beats and judges for ten timeouts */
    for (int64_t t = 0; t <= 10 * TIMEOUT_MS; t += 1000) {
        assert_int_equal(liveness_beat(b, T0 + t), 0);
        assert_int_equal(liveness_reap(b, T0 + t, t, &n), 0);
        assert_int_equal(n, 0);
    }
    assert_int_equal(running_of(f, owner), 3);
    assert_int_equal(rows_of(f, owner), 1);
    liveness_leave(b, T0);
    liveness_leave(a, T0);
    free(owner);
}

/* A row whose lock file is free is a dead process: taken back at the first
 * look, even with the pid of a live process and a fresh heartbeat. */
static void
test_a_daemon_whose_lock_file_is_free_is_taken_back_at_once(void **state)
{
    struct fixture *f = *state;
    struct liveness *b;
    char host[256] = "";
    long n = -1;

    insert_jobs(f->a, 3);
    assert_int_equal(liveness_join(f->b, f->path, TIMEOUT_MS, T0, &b), 0);
    gethostname(host, sizeof(host) - 1);
    fake_daemon(f->a, DEAD_OWNER, host, (long)getpid(), T0);
    char *p = lock_file(f, DEAD_OWNER);
    int fd = open(p, O_RDWR | O_CREAT, 0644);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(claim_as(f->a, DEAD_OWNER, 2), 2);

    assert_int_equal(liveness_reap(b, T0, 0, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(running_of(f, DEAD_OWNER), 0);
    assert_int_equal(rows_of(f, DEAD_OWNER), 0);
    assert_int_equal(access(p, F_OK), -1);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM jobs WHERE "
                                      "state = 'queued' AND attempts = 1"),
                     2);
    free(p);
    liveness_leave(b, T0);
}

/* Another host (no lock file to look at) that keeps beating is alive,
 * whatever either wall clock does. */
static void
test_a_beating_daemon_without_lock_file_is_never_taken_back(void **state)
{
    struct fixture *f = *state;
    struct liveness *b;
    long n = -1;
    bool present;

    insert_jobs(f->a, 2);
    assert_int_equal(liveness_join(f->b, f->path, TIMEOUT_MS, T0, &b), 0);
    fake_daemon(f->a, DEAD_OWNER, "elsewhere.invalid", 1, T0);
    assert_int_equal(claim_as(f->a, DEAD_OWNER, 2), 2);
    for (int64_t t = 0; t <= 5 * TIMEOUT_MS; t += 1000) {
        /* its clock swings by a day either way; the judge's too */
        int64_t its = T0 + ((t / 1000) % 2 ? DAY : -DAY);
        int64_t mine = T0 + ((t / 3000) % 2 ? -DAY : DAY);
        assert_int_equal(store_daemon_beat(f->a, DEAD_OWNER, its, &present),
                         0);
        assert_true(present);
        assert_int_equal(liveness_beat(b, mine), 0);
        assert_int_equal(liveness_reap(b, mine, t, &n), 0);
        assert_int_equal(n, 0);
        assert_int_equal(store_reclaim_expired(f->b, mine, &n), 0);
        assert_int_equal(n, 0);
    }
    assert_int_equal(running_of(f, DEAD_OWNER), 2);
    liveness_leave(b, T0);
}

/* Another host that stopped beating is dead once its heartbeat stood still
 * for the timeout of the judge's own monotonic clock: not before, however
 * far the judge's wall clock runs ahead. */
static void
test_a_silent_daemon_is_taken_back_after_the_timeout_of_the_judges_clock(
    void **state)
{
    struct fixture *f = *state;
    struct liveness *b;
    long n = -1;

    insert_jobs(f->a, 2);
    assert_int_equal(liveness_join(f->b, f->path, TIMEOUT_MS, T0, &b), 0);
    fake_daemon(f->a, DEAD_OWNER, "elsewhere.invalid", 1, T0);
    assert_int_equal(claim_as(f->a, DEAD_OWNER, 2), 2);
    int64_t t;
    for (t = 0; t < TIMEOUT_MS; t += 1000) {
        /* the wall clock a year ahead says nothing */
        int64_t now = T0 + 365 * DAY + t;
        assert_int_equal(liveness_beat(b, now), 0);
        assert_int_equal(liveness_reap(b, now, t, &n), 0);
        assert_int_equal(n, 0);
    }
    assert_int_equal(running_of(f, DEAD_OWNER), 2);
    assert_int_equal(liveness_beat(b, T0 + t), 0);
    assert_int_equal(liveness_reap(b, T0 + t, t, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(running_of(f, DEAD_OWNER), 0);
    assert_int_equal(rows_of(f, DEAD_OWNER), 0);
    liveness_leave(b, T0);
}

/* A judge whose own heartbeats do not commit (the database locked for
 * everyone) condemns no one, however long it waits. */
static void
test_a_judge_that_cannot_beat_condemns_no_one(void **state)
{
    struct fixture *f = *state;
    struct liveness *b;
    long n = -1;

    insert_jobs(f->a, 1);
    assert_int_equal(liveness_join(f->b, f->path, TIMEOUT_MS, T0, &b), 0);
    fake_daemon(f->a, DEAD_OWNER, "elsewhere.invalid", 1, T0);
    assert_int_equal(claim_as(f->a, DEAD_OWNER, 1), 1);
    for (int64_t t = 0; t <= 5 * TIMEOUT_MS; t += 1000) {
        assert_int_equal(liveness_reap(b, T0 + t, t, &n), 0);
        assert_int_equal(n, 0);
    }
    /* beats go through again: half the timeout's worth of them first */
    int64_t t = 6 * TIMEOUT_MS;
    for (int i = 0; i < TIMEOUT_MS / 1000 / 2 - 1; i++, t += 1000) {
        assert_int_equal(liveness_beat(b, T0 + t), 0);
        assert_int_equal(liveness_reap(b, T0 + t, t, &n), 0);
        assert_int_equal(n, 0);
    }
    assert_int_equal(liveness_beat(b, T0 + t), 0);
    assert_int_equal(liveness_reap(b, T0 + t, t, &n), 0);
    assert_int_equal(n, 1);
    liveness_leave(b, T0);
}

/* A daemon judged dead while alive (stopped for a while, another host)
 * finds its row gone at its next beat and rejoins under a new token; the
 * jobs it held were taken back, and claims go on under the new one. */
static void
test_a_daemon_taken_back_rejoins_under_a_new_token(void **state)
{
    struct fixture *f = *state;
    struct liveness *a, *b;
    long n = -1;

    insert_jobs(f->a, 3);
    /* no lock file for a: judged by heartbeat */
    assert_int_equal(liveness_join(f->a, NULL, TIMEOUT_MS, T0, &a), 0);
    assert_int_equal(liveness_join(f->b, f->path, TIMEOUT_MS, T0, &b), 0);
    char *old = strdup(liveness_owner(a));
    assert_int_equal(claim_as(f->a, old, 2), 2);
    for (int64_t t = 0; t <= TIMEOUT_MS; t += 1000) {
        assert_int_equal(liveness_beat(b, T0 + t), 0);
        assert_int_equal(liveness_reap(b, T0 + t, t, &n), 0);
    }
    assert_int_equal(n, 2);
    assert_int_equal(rows_of(f, old), 0);

    assert_int_equal(liveness_beat(a, T0 + TIMEOUT_MS + 500), 0);
    assert_string_not_equal(liveness_owner(a), old);
    assert_int_equal(rows_of(f, liveness_owner(a)), 1);
    assert_int_equal(claim_as(f->a, liveness_owner(a), 3), 3);
    assert_int_equal(running_of(f, old), 0);
    liveness_leave(a, T0);
    liveness_leave(b, T0);
    free(old);
}

/* A clean stop: row and lock file gone, anything still leased returned. */
static void
test_leave_removes_row_and_lock_file(void **state)
{
    struct fixture *f = *state;
    struct liveness *a;

    insert_jobs(f->a, 1);
    assert_int_equal(liveness_join(f->a, f->path, TIMEOUT_MS, T0, &a), 0);
    char *owner = strdup(liveness_owner(a));
    assert_int_equal(claim_as(f->a, owner, 1), 1);
    liveness_leave(a, T0 + 5);
    assert_int_equal(rows_of(f, owner), 0);
    assert_int_equal(lock_state(f, owner), -1);
    assert_int_equal(running_of(f, owner), 0);
    free(owner);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_owner_is_a_random_token_with_row_and_held_lock),
        T(test_a_daemon_whose_lock_is_held_is_never_taken_back),
        T(test_a_daemon_whose_lock_file_is_free_is_taken_back_at_once),
        T(test_a_beating_daemon_without_lock_file_is_never_taken_back),
        T(test_a_silent_daemon_is_taken_back_after_the_timeout_of_the_judges_clock),
        T(test_a_judge_that_cannot_beat_condemns_no_one),
        T(test_a_daemon_taken_back_rejoins_under_a_new_token),
        T(test_leave_removes_row_and_lock_file),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
