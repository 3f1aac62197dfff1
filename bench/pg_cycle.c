/*
 * pg_cycle: the claim/commit path of the PostgreSQL backend, measured two
 * ways, to choose where libpq runs (docs/postgres.md).
 *
 *   loop:   the dispatcher's thread calls the store itself, blocking for
 *           each round trip (what sluiced does);
 *   thread: a database thread owns the connection; the loop thread hands
 *           it each call through a queue and is woken by uv_async when
 *           the answer is ready (the design this was measured against).
 *
 * One cycle = claim up to BATCH jobs, record an outcome for each, commit.
 * Reported per mode: cycles, jobs/s, cycle latency p50/p99 as the loop
 * sees it, and the loop thread's CPU time per cycle (what it could not
 * spend on HTTP). The async libpq variant (uv_poll on PQsocket) sends the
 * same statements over the same socket as "loop"; it differs in freeing
 * the loop during each round trip, which the "thread" mode bounds.
 *
 *   pg_cycle CONNINFO [JOBS]      (an empty database; JOBS default 20000)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "sluice/clock.h"
#include "sluice/jobspec.h"
#include "sluice/store.h"

#define BATCH 64
#define LEASE_MS 600000

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
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
    char (*keys)[32] = calloc((size_t)n, sizeof(*keys));
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

struct result {
    const char *mode;
    int cycles, jobs;
    double wall_s, loop_cpu_ms;
    uint64_t *lat; /* ns per cycle */
};

static void
report(struct result *r)
{
    qsort(r->lat, (size_t)r->cycles, sizeof(uint64_t), cmp_u64);
    printf("| %s | %d | %d | %.0f | %.3f | %.3f | %.3f |\n", r->mode,
           r->cycles, r->jobs, r->jobs / r->wall_s,
           r->lat[r->cycles / 2] / 1e6, r->lat[r->cycles * 99 / 100] / 1e6,
           r->loop_cpu_ms / r->cycles);
}

static void
run_loop(struct store *s, int n, struct result *r)
{
    uint64_t t0 = uv_hrtime();
    double c0 = thread_cpu_ms();

    r->lat = calloc((size_t)n, sizeof(uint64_t));
    for (;;) {
        uint64_t t = uv_hrtime();
        int got = cycle(s, "loop");
        if (got <= 0)
            break;
        r->lat[r->cycles++] = uv_hrtime() - t;
        r->jobs += got;
    }
    r->wall_s = (uv_hrtime() - t0) / 1e9;
    r->loop_cpu_ms = thread_cpu_ms() - c0;
}

/* --- thread mode: a database thread, the loop woken by uv_async --------- */

struct dbthread {
    struct store *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool request, quit;
    int answer;
    uv_async_t done;
    uint64_t sent_at;
    struct result *r;
    uv_loop_t *loop;
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
        return;
    }
    d->r->lat[d->r->cycles++] = uv_hrtime() - d->sent_at;
    d->r->jobs += d->answer;
    ask(d);
}

static void
run_thread(struct store *s, int n, struct result *r)
{
    struct dbthread d = {.s = s, .r = r};
    uv_loop_t loop;
    pthread_t th;
    uint64_t t0;
    double c0;

    r->lat = calloc((size_t)n, sizeof(uint64_t));
    uv_loop_init(&loop);
    pthread_mutex_init(&d.mu, NULL);
    pthread_cond_init(&d.cv, NULL);
    uv_async_init(&loop, &d.done, on_uv_done);
    d.done.data = &d;
    pthread_create(&th, NULL, db_main, &d);
    t0 = uv_hrtime();
    c0 = thread_cpu_ms();
    ask(&d);
    uv_run(&loop, UV_RUN_DEFAULT);
    r->wall_s = (uv_hrtime() - t0) / 1e9;
    r->loop_cpu_ms = thread_cpu_ms() - c0;
    pthread_mutex_lock(&d.mu);
    d.quit = true;
    pthread_cond_signal(&d.cv);
    pthread_mutex_unlock(&d.mu);
    pthread_join(th, NULL);
    uv_loop_close(&loop);
}

int
main(int argc, char **argv)
{
    int n = argc > 2 ? atoi(argv[2]) : 20000;
    struct result loop = {.mode = "loop (blocking, as sluiced)"};
    struct result thr = {.mode = "database thread + uv_async"};
    struct store *s;

    if (argc < 2 || store_open(argv[1], &s) < 0) {
        fprintf(stderr, "usage: pg_cycle CONNINFO [JOBS]\n");
        return 64;
    }
    enqueue(s, "loop", n);
    run_loop(s, n, &loop);
    enqueue(s, "thread", n);
    run_thread(s, n, &thr);
    printf("| mode | cycles | jobs | jobs/s | cycle p50 ms | cycle p99 ms "
           "| loop CPU ms/cycle |\n|---|---|---|---|---|---|---|\n");
    report(&loop);
    report(&thr);
    store_close(s);
    free(loop.lat);
    free(thr.lat);
    return 0;
}
