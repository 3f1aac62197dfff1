/*
 * pg_cycle: the claim/commit path of the PostgreSQL backend, measured
 * three ways, to choose where libpq runs (docs/postgres.md).
 *
 *   blocking: the loop thread calls the store itself, blocking for each
 *             round trip (what sluiced did before its database thread);
 *   thread:   a database thread owns the connection; the loop thread
 *             hands it each cycle through a queue and is woken by
 *             uv_async when the answer is ready;
 *   async:    libpq's non-blocking API on the loop: the statements go out
 *             in pipeline mode (PQsendQueryPrepared, PQpipelineSync), the
 *             socket (PQsocket) sits under uv_poll, and answers are read
 *             with PQconsumeInput / PQisBusy / PQgetResult, so the loop is
 *             free during each round trip.
 *
 * One cycle = claim up to BATCH jobs, record an outcome for each, commit,
 * with the same round trips in every mode: the claim; BEGIN; the outcomes
 * (an UPDATE and an attempt INSERT per job) as one pipeline; COMMIT. The
 * async mode prepares the statements the store runs for them (P_CLAIM,
 * P_UPDATE_JOB, P_INSERT_ATTEMPT, taken from the backend's own tables in
 * daemon/store/pg.h), sends the same parameters, and builds the same job
 * structs from the claim's rows.
 *
 * A probe timer fires every PROBE_MS on the loop; how late it fires is
 * how long the loop was held (what a response waiting to be read, or a
 * timer, would have waited). Reported per mode, as medians over ROUNDS
 * runs taken in turns (the order rotates each round): jobs/s, cycle
 * latency p50/p99 as the loop sees it, the loop thread's CPU time per
 * cycle (without the probe's own), and the probe's p99 and worst
 * lateness.
 *
 *   pg_cycle CONNINFO [JOBS [ROUNDS]]   (an empty database; defaults
 *                                        20000 jobs a run, 5 rounds)
 */
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "pg.h"
#include "sluice/clock.h"
#include "sluice/job.h"
#include "sluice/jobspec.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

#define BATCH 64
#define LEASE_MS 600000
/* The probe's period: about a cycle (10-20 ms), so that its own wakeups
 * (one or two a cycle, in every mode alike) cost the loop little. */
#define PROBE_MS 10
#define NMODES 3

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double
thread_cpu_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void
enqueue(struct store *s, const char *prefix, int n)
{
    struct jobspec *js = calloc((size_t)n, sizeof(*js));
    char (*keys)[48] = calloc((size_t)n, sizeof(*keys));
    size_t in;

    for (int i = 0; i < n; i++) {
        snprintf(keys[i], sizeof(keys[i]), "%s-%d", prefix, i);
        js[i] = (struct jobspec){.provider = "bench", .method = "POST",
                                 .path = "/v1/x", .body = "{\"p\":1}",
                                 .custom_id = keys[i],
                                 .idempotency_key = keys[i],
                                 .max_attempts = 3};
    }
    store_begin(s);
    store_insert_jobs(s, js, (size_t)n, clock_now_ms(), &in);
    store_commit(s);
    free(js);
    free(keys);
}

/* One run of one mode. */
struct result {
    int cycles, jobs;
    double wall_s, loop_cpu_ms;
    uint64_t *lat;  /* ns per cycle */
    uint64_t *late; /* ns per probe */
    int nlate, caplate;
    double probe_cpu_ms;
    uint64_t probe_due;
};

/* --- the probe -------------------------------------------------------- */

static void
on_uv_probe(uv_timer_t *t)
{
    struct result *r = t->data;
    double c0 = thread_cpu_ms();
    uint64_t now = uv_hrtime();

    if (r->nlate == r->caplate) {
        r->caplate = r->caplate ? 2 * r->caplate : 4096;
        r->late = xrealloc(r->late, (size_t)r->caplate * sizeof(uint64_t));
    }
    r->late[r->nlate++] = now > r->probe_due ? now - r->probe_due : 0;
    r->probe_due = now + PROBE_MS * 1000000ULL;
    r->probe_cpu_ms += thread_cpu_ms() - c0;
}

static void
probe_start(uv_loop_t *loop, uv_timer_t *t, struct result *r)
{
    uv_timer_init(loop, t);
    t->data = r;
    r->probe_due = uv_hrtime() + PROBE_MS * 1000000ULL;
    uv_timer_start(t, on_uv_probe, PROBE_MS, PROBE_MS);
}

/* --- blocking and thread: the store's own calls ------------------------ */

/* One cycle on s: claim, record, commit. Returns jobs done. */
static int
cycle(struct store *s, const char *owner)
{
    struct job *jobs[BATCH];
    int n = 0;
    int64_t now = clock_now_ms();

    if (store_claim_new(s, "bench", BATCH, now, LEASE_MS, owner, jobs, &n) <
        0)
        return -1;
    for (int i = 0; i < n; i++) {
        struct job_update u = {.job_id = jobs[i]->id,
                               .owner = owner,
                               .state = JOB_SUCCEEDED,
                               .has_attempt = true,
                               .attempt = jobs[i]->attempts,
                               .key_sent = jobs[i]->idempotency_key,
                               .started_at = now,
                               .finished_at = now + 1,
                               .http_status = 200,
                               .result = "{\"ok\":true}"};
        store_record(s, &u);
        job_free(jobs[i]);
    }
    if (n > 0 && store_flush(s) < 0)
        return -1;
    return n;
}

/* A cycle per loop turn, as sluiced's pump ran one per completion. */
struct blocking {
    struct store *s;
    struct result *r;
    uv_idle_t step;
    uv_timer_t probe;
};

static void
on_uv_step(uv_idle_t *h)
{
    struct blocking *b = h->data;
    uint64_t t0 = uv_hrtime();
    int got = cycle(b->s, "blocking");

    if (got <= 0) {
        uv_close((uv_handle_t *)&b->step, NULL);
        uv_close((uv_handle_t *)&b->probe, NULL);
        return;
    }
    b->r->lat[b->r->cycles++] = uv_hrtime() - t0;
    b->r->jobs += got;
}

static void
run_blocking(struct store *s, struct result *r)
{
    struct blocking b = {.s = s, .r = r};
    uv_loop_t loop;

    uv_loop_init(&loop);
    uv_idle_init(&loop, &b.step);
    b.step.data = &b;
    probe_start(&loop, &b.probe, r);
    uv_idle_start(&b.step, on_uv_step);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

struct dbthread {
    struct store *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool request, quit;
    int answer;
    uv_async_t done;
    uv_timer_t probe;
    uint64_t sent_at;
    struct result *r;
};

static void *
db_main(void *arg)
{
    struct dbthread *d = arg;

    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->request && !d->quit)
            pthread_cond_wait(&d->cv, &d->mu);
        if (d->quit)
            break;
        d->request = false;
        pthread_mutex_unlock(&d->mu);
        d->answer = cycle(d->s, "thread");
        uv_async_send(&d->done);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void
ask(struct dbthread *d)
{
    d->sent_at = uv_hrtime();
    pthread_mutex_lock(&d->mu);
    d->request = true;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void
on_uv_done(uv_async_t *a)
{
    struct dbthread *d = a->data;

    if (d->answer <= 0) {
        uv_close((uv_handle_t *)a, NULL);
        uv_close((uv_handle_t *)&d->probe, NULL);
        return;
    }
    d->r->lat[d->r->cycles++] = uv_hrtime() - d->sent_at;
    d->r->jobs += d->answer;
    ask(d);
}

static void
run_thread(struct store *s, struct result *r)
{
    struct dbthread d = {.s = s, .r = r};
    uv_loop_t loop;
    pthread_t th;

    uv_loop_init(&loop);
    pthread_mutex_init(&d.mu, NULL);
    pthread_cond_init(&d.cv, NULL);
    uv_async_init(&loop, &d.done, on_uv_done);
    d.done.data = &d;
    probe_start(&loop, &d.probe, r);
    pthread_create(&th, NULL, db_main, &d);
    ask(&d);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_mutex_lock(&d.mu);
    d.quit = true;
    pthread_cond_signal(&d.cv);
    pthread_mutex_unlock(&d.mu);
    pthread_join(th, NULL);
    pthread_cond_destroy(&d.cv);
    pthread_mutex_destroy(&d.mu);
    uv_loop_close(&loop);
}

/* --- async: libpq non-blocking on the loop ----------------------------- */

/* What a cycle waits for: the answers to one pipeline sync. */
enum astep { A_CLAIM, A_BEGIN, A_OUTCOMES, A_COMMIT };

struct apq {
    PGconn *conn;
    uv_poll_t poll;
    uv_timer_t probe;
    struct result *r;
    enum astep step;
    uint64_t t0;     /* the cycle's start */
    int64_t now_ms;  /* its clock, as cycle() takes it */
    struct job *jobs[BATCH];
    int n;
    bool failed;
};

static char *
a_strdup(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL
                                    : xstrdup(PQgetvalue(r, row, col));
}

static int64_t
a_int(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0
                                    : strtoll(PQgetvalue(r, row, col), NULL,
                                              10);
}

/* The claim's rows as the backend's claim_row (pg_claim.c) builds them. */
static void
a_claimed(struct apq *a, const PGresult *r)
{
    a->n = PQntuples(r) < BATCH ? PQntuples(r) : BATCH;
    for (int i = 0; i < a->n; i++) {
        struct job *j = xcalloc(1, sizeof(*j));
        j->id = a_int(r, i, 0);
        j->provider = a_strdup(r, i, 1);
        j->batch = a_strdup(r, i, 2);
        j->custom_id = a_strdup(r, i, 3);
        j->method = a_strdup(r, i, 4);
        j->path = a_strdup(r, i, 5);
        j->body = a_strdup(r, i, 6);
        j->idempotency_key = a_strdup(r, i, 7);
        if (job_state_parse(PQgetvalue(r, i, 8), &j->state) < 0)
            j->state = JOB_RUNNING;
        j->attempts = (int)a_int(r, i, 9);
        j->max_attempts = (int)a_int(r, i, 10);
        j->deferrals = (int)a_int(r, i, 11);
        j->remote_id = a_strdup(r, i, 12);
        j->poll_url = a_strdup(r, i, 13);
        j->created_at = a_int(r, i, 14);
        j->waiting_since = a_int(r, i, 15);
        j->base_key = a_strdup(r, i, 18);
        a->jobs[i] = j;
    }
}

static void
a_send_claim(struct apq *a)
{
    char lease[24], now[24], max[24];
    const char *v[5] = {lease, "async", now, "bench", max};

    snprintf(lease, sizeof(lease), "%lld",
             (long long)(a->now_ms + LEASE_MS));
    snprintf(now, sizeof(now), "%lld", (long long)a->now_ms);
    snprintf(max, sizeof(max), "%d", BATCH);
    PQsendQueryPrepared(a->conn, "claim", 5, v, NULL, NULL, 0);
}

/* An outcome as the store's flush sends it: the job's UPDATE, then its
 * attempt row. */
static void
a_send_outcome(struct apq *a, const struct job *j)
{
    char id[24], attempt[24], started[24], finished[24];
    const char *up[24] = {id, "succeeded", "0", "0", "0", NULL, "2", "200",
                          NULL, NULL, NULL, NULL, NULL, "{\"ok\":true}",
                          NULL, NULL, NULL, finished, "async", NULL,
                          attempt, "0", started, finished};
    const char *att[12] = {id, attempt, j->idempotency_key, started,
                           finished, "200", NULL, NULL, NULL, NULL, NULL,
                           "0"};

    snprintf(id, sizeof(id), "%lld", (long long)j->id);
    snprintf(attempt, sizeof(attempt), "%d", j->attempts);
    snprintf(started, sizeof(started), "%lld", (long long)a->now_ms);
    snprintf(finished, sizeof(finished), "%lld", (long long)a->now_ms + 1);
    PQsendQueryPrepared(a->conn, "update", 24, up, NULL, NULL, 0);
    PQsendQueryPrepared(a->conn, "attempt", 12, att, NULL, NULL, 0);
}

static void on_uv_apoll(uv_poll_t *h, int status, int events);

/* Ends what is queued with a sync and sends it, watching for writable
 * while libpq still holds unsent bytes. */
static void
a_sync(struct apq *a)
{
    PQpipelineSync(a->conn);
    int more = PQflush(a->conn);
    uv_poll_start(&a->poll, UV_READABLE | (more == 1 ? UV_WRITABLE : 0),
                  on_uv_apoll);
}

static void
a_start_cycle(struct apq *a)
{
    a->t0 = uv_hrtime();
    a->now_ms = clock_now_ms();
    a->step = A_CLAIM;
    a_send_claim(a);
    a_sync(a);
}

static void
a_stop(struct apq *a)
{
    uv_poll_stop(&a->poll);
    uv_close((uv_handle_t *)&a->poll, NULL);
    uv_close((uv_handle_t *)&a->probe, NULL);
}

/* The answers to one sync are in: the cycle's next step. */
static void
a_step_done(struct apq *a)
{
    if (a->failed) {
        fprintf(stderr, "pg_cycle: async: %s", PQerrorMessage(a->conn));
        a_stop(a);
        return;
    }
    switch (a->step) {
    case A_CLAIM:
        if (a->n == 0) {
            a_stop(a);
            return;
        }
        a->step = A_BEGIN;
        PQsendQueryParams(a->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0);
        break;
    case A_BEGIN:
        a->step = A_OUTCOMES;
        for (int i = 0; i < a->n; i++)
            a_send_outcome(a, a->jobs[i]);
        break;
    case A_OUTCOMES:
        a->step = A_COMMIT;
        PQsendQueryParams(a->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
        break;
    case A_COMMIT:
        a->r->lat[a->r->cycles++] = uv_hrtime() - a->t0;
        a->r->jobs += a->n;
        for (int i = 0; i < a->n; i++)
            job_free(a->jobs[i]);
        a->n = 0;
        a_start_cycle(a);
        return;
    }
    a_sync(a);
}

static void
on_uv_apoll(uv_poll_t *h, int status, int events)
{
    struct apq *a = h->data;
    PGresult *r;
    int more = 0;

    if (status < 0 || ((events & UV_WRITABLE) &&
                       (more = PQflush(a->conn)) < 0) ||
        ((events & UV_READABLE) && !PQconsumeInput(a->conn))) {
        a->failed = true;
        a_step_done(a);
        return;
    }
    if (events & UV_WRITABLE)
        uv_poll_start(h, UV_READABLE | (more == 1 ? UV_WRITABLE : 0),
                      on_uv_apoll);
    /* A flush may have read answers too (libpq reads while it cannot
     * write), so look for complete ones whatever woke us. */
    while (!PQisBusy(a->conn)) {
        if ((r = PQgetResult(a->conn)) == NULL)
            continue; /* the end of one statement's results */
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            a_step_done(a);
            return;
        }
        if (st == PGRES_TUPLES_OK && a->step == A_CLAIM)
            a_claimed(a, r);
        else if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
            a->failed = true;
        PQclear(r);
    }
}

static int
a_prepare(PGconn *c, const char *name, const char *sql)
{
    PGresult *r = PQprepare(c, name, sql, 0, NULL);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;

    if (!ok)
        fprintf(stderr, "pg_cycle: prepare %s: %s", name,
                PQerrorMessage(c));
    PQclear(r);
    return ok ? 0 : -1;
}

static int
run_async(const char *conninfo, struct result *r)
{
    struct apq a = {.r = r};
    uv_loop_t loop;

    a.conn = PQconnectdb(conninfo);
    if (PQstatus(a.conn) != CONNECTION_OK ||
        a_prepare(a.conn, "claim", pg_claim_sql[P_CLAIM]) < 0 ||
        a_prepare(a.conn, "update", pg_commit_sql[P_UPDATE_JOB]) < 0 ||
        a_prepare(a.conn, "attempt", pg_commit_sql[P_INSERT_ATTEMPT]) < 0 ||
        PQsetnonblocking(a.conn, 1) < 0 || !PQenterPipelineMode(a.conn)) {
        fprintf(stderr, "pg_cycle: async: %s", PQerrorMessage(a.conn));
        PQfinish(a.conn);
        return -1;
    }
    uv_loop_init(&loop);
    uv_poll_init(&loop, &a.poll, PQsocket(a.conn));
    a.poll.data = &a;
    probe_start(&loop, &a.probe, r);
    a_start_cycle(&a);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    PQfinish(a.conn);
    return a.failed ? -1 : 0;
}

/* --- the runs ----------------------------------------------------------- */

static const char *const mode_name[NMODES] = {
    "blocking on the loop (libpq sync)",
    "database thread + uv_async",
    "async libpq on the loop (uv_poll, pipeline)",
};

/* One run of mode m over n freshly queued jobs, its figures into r. */
static int
run_mode(int m, struct store *s, const char *conninfo, int round, int n,
         struct result *r)
{
    char prefix[32];
    uint64_t t0;
    double c0;
    int rc = 0;

    /* keys unique to this process: a database used before still works */
    snprintf(prefix, sizeof(prefix), "p%ld-r%d-m%d", (long)getpid(), round,
             m);
    enqueue(s, prefix, n);
    memset(r, 0, sizeof(*r));
    r->lat = xcalloc((size_t)n, sizeof(uint64_t));
    t0 = uv_hrtime();
    c0 = thread_cpu_ms();
    if (m == 0)
        run_blocking(s, r);
    else if (m == 1)
        run_thread(s, r);
    else
        rc = run_async(conninfo, r);
    r->wall_s = (uv_hrtime() - t0) / 1e9;
    r->loop_cpu_ms = thread_cpu_ms() - c0 - r->probe_cpu_ms;
    if (rc == 0 && r->jobs != n) {
        fprintf(stderr, "pg_cycle: %s did %d jobs of %d\n", mode_name[m],
                r->jobs, n);
        rc = -1;
    }
    return rc;
}

static double
median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int
main(int argc, char **argv)
{
    int n = argc > 2 ? atoi(argv[2]) : 20000;
    int rounds = argc > 3 ? atoi(argv[3]) : 5;
    /* per mode, per round: jobs/s, p50, p99, loop CPU/cycle, probe p99,
     * probe max */
    double (*fig)[6][64] = xcalloc(NMODES, sizeof(*fig));
    struct store *s;

    if (argc < 2 || n <= 0 || rounds <= 0 || rounds > 64 ||
        store_open(argv[1], &s) < 0) {
        fprintf(stderr, "usage: pg_cycle CONNINFO [JOBS [ROUNDS]]\n");
        return 64;
    }
    for (int round = 0; round < rounds; round++) {
        for (int k = 0; k < NMODES; k++) {
            int m = (round + k) % NMODES;
            struct result r;
            if (run_mode(m, s, argv[1], round, n, &r) < 0)
                return 1;
            qsort(r.lat, (size_t)r.cycles, sizeof(uint64_t), cmp_u64);
            qsort(r.late, (size_t)r.nlate, sizeof(uint64_t), cmp_u64);
            fig[m][0][round] = r.jobs / r.wall_s;
            fig[m][1][round] = r.lat[r.cycles / 2] / 1e6;
            fig[m][2][round] = r.lat[r.cycles * 99 / 100] / 1e6;
            fig[m][3][round] = r.loop_cpu_ms / r.cycles;
            fig[m][4][round] =
                r.nlate ? r.late[r.nlate * 99 / 100] / 1e6 : 0;
            fig[m][5][round] = r.nlate ? r.late[r.nlate - 1] / 1e6 : 0;
            fprintf(stderr,
                    "round %d %-44s %6.0f jobs/s  p50 %6.2f ms  loop CPU "
                    "%.3f ms/cycle  probe max %6.2f ms\n",
                    round, mode_name[m], fig[m][0][round], fig[m][1][round],
                    fig[m][3][round], fig[m][5][round]);
            free(r.lat);
            free(r.late);
        }
    }
    printf("Claim/commit cycle (%d jobs a run, %d a cycle, medians of %d "
           "runs a mode taken in turns):\n\n",
           n, BATCH, rounds);
    printf("| mode | jobs/s | cycle p50 ms | cycle p99 ms | loop CPU "
           "ms/cycle | loop held p99 ms | loop held max ms |\n"
           "|---|---|---|---|---|---|---|\n");
    for (int m = 0; m < NMODES; m++) {
        printf("| %s |", mode_name[m]);
        for (int f = 0; f < 6; f++)
            printf(f == 0 ? " %.0f |" : " %.3f |",
                   median(fig[m][f], rounds));
        printf("\n");
    }
    store_close(s);
    free(fig);
    return 0;
}
