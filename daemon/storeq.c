/*
 * storeq: the claim/commit path, inline on the loop or on a database
 * thread (the rule is in storeq.h).
 *
 * Why a thread for a server: with libpq blocking on the loop, each claim
 * and each group commit held the loop for its round trips (a claim of 64
 * jobs and its commit: 9–20 ms), during which no response was read and no
 * timer fired. bench/pg_cycle measured three ways of running that cycle
 * (bench/README.md, postgres): blocking on the loop, this thread, and
 * libpq's asynchronous API on the loop (PQsendQueryPrepared in pipeline
 * mode, PQsocket under uv_poll). The thread and the async API both give
 * the loop back the round trips and finish the cycle as fast; the thread
 * leaves the loop the least CPU per cycle (libpq's encoding and parsing
 * run off it), and it runs the backend's synchronous code as it is: its
 * transactions, its reconnect with backoff, and a reconnect's connect,
 * which blocks for up to connect_timeout. The async API would have meant
 * rewriting every statement of the claim path (permits, claim, commit)
 * as a state machine, for more loop CPU.
 *
 * How the thread works. It owns a struct store of its own (opened here,
 * used by nothing else) and sleeps on q->wake. The loop side appends
 * requests (claims, puts) to q->reqs and, on storeq_commit, hands over
 * the updates recorded so far with q->commit set; the thread takes
 * everything queued, runs the requests first (the lanes wait for them;
 * the updates only for their commit), answers them, then records the
 * handed updates in its store and flushes them in one transaction. A
 * failed flush keeps them in its store's buffer, written by the next
 * commit. Answers go back on q->done and q->committed, and q->async wakes
 * the loop, which runs the callbacks in on_uv_async. Only what is under
 * q->lock is shared; nothing outside this file sees the thread.
 *
 * Rejected: one connection shared under a mutex (the loop would wait
 * behind every commit of the thread); a pool of connections (one daemon's
 * claims are serialised by its lanes anyway, and each connection is a
 * server process); the housekeeping of the loop's store (once a second)
 * on the thread too: it reads and writes the lanes' state, which would
 * then need locks.
 */
#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/log.h"
#include "sluice/storeq.h"
#include "sluice/xmalloc.h"

struct req {
    bool is_put;
    struct storeq_claim c;  /* a claim; strings and held owned when queued */
    int slots, tokens;      /* a put */
    storeq_claim_cb claim_cb;
    storeq_put_cb put_cb;
    void *arg;
    struct storeq_answer a; /* filled where it runs */
    struct req *next;
};

struct storeq {
    uv_loop_t *loop;
    struct store *loop_store; /* inline: where everything runs */
    storeq_commit_cb on_commit;
    void *commit_arg;
    bool threaded;

    /* the loop's side: touched on the loop thread only */
    uv_async_t *async;        /* freed in its close callback */
    struct job_update *ups;   /* recorded, not yet handed over (owned) */
    size_t nups, capups;
    size_t pending;           /* recorded, not yet written */
    int busy;                 /* requests and commits out */
    bool committing;          /* a commit is out */

    /* the thread's own */
    pthread_t thread;
    struct store *store;

    /* shared: under lock */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct req *reqs, **reqs_tail;    /* asked */
    struct job_update *cups;          /* handed for the commit asked */
    size_t ncups;
    bool commit;                      /* a commit asked */
    struct req *done, **done_tail;    /* answered */
    bool committed;                   /* the commit's answer is in: */
    int commit_rc;
    size_t commit_n;
    double commit_s;
    bool stop;
};

static double
seconds_since(uint64_t t0)
{
    return (double)(uv_hrtime() - t0) / 1e9;
}

/* --- what runs on the database (either side) --------------------------- */

/* The claim of storeq.h, on s. */
static void
run_claim(struct store *s, struct req *r)
{
    const struct storeq_claim *c = &r->c;
    struct storeq_answer *a = &r->a;
    int n = c->want, polls = 0, fresh = 0;
    uint64_t t0;

    a->jobs = xcalloc((size_t)n, sizeof(*a->jobs));
    if (c->polls_only) {
        a->granted = n;
        t0 = uv_hrtime();
        a->rc = store_claim_polls(s, c->provider, n, c->now_ms, c->lease_ms,
                                  c->owner, a->jobs, &a->got);
        a->claim_s = seconds_since(t0);
        return;
    }
    a->rc = store_permit_take(s, c->provider, c->owner, &c->view,
                              c->in_flight, n, c->now_ms, &a->granted,
                              &a->wake_ms);
    if (a->rc < 0) {
        a->granted = 0;
        return;
    }
    a->took = true;
    if (a->granted == 0)
        return;
    n = a->granted;
    int allowed = c->allowed < n ? c->allowed : n;
    t0 = uv_hrtime();
    if (allowed == n && c->nheld == 0) {
        a->rc = c->with_polls
                    ? store_claim(s, c->provider, n, c->now_ms, c->lease_ms,
                                  c->owner, a->jobs, &a->got)
                    : store_claim_new(s, c->provider, n, c->now_ms,
                                      c->lease_ms, c->owner, a->jobs,
                                      &a->got);
    } else {
        /* polls of runs already sent always; new jobs within the caps */
        if (c->with_polls)
            a->rc = store_claim_polls(s, c->provider, n, c->now_ms,
                                      c->lease_ms, c->owner, a->jobs, &polls);
        if (a->rc == 0 && allowed > polls)
            a->rc = store_claim_except(s, c->provider, allowed - polls,
                                       c->now_ms, c->lease_ms, c->owner,
                                       c->held, c->nheld, a->jobs + polls,
                                       &fresh);
        a->got = polls + fresh;
        a->capped = allowed < n || a->got < n;
    }
    a->claim_s = seconds_since(t0);
    if (a->rc < 0) {
        /* polls claimed before a failure go back by their lease */
        for (int i = 0; i < a->got; i++)
            job_free(a->jobs[i]);
        a->got = 0;
    }
    if (a->got < n)
        a->put = store_permit_put(s, c->provider, c->owner,
                                  c->in_flight + a->got, n - a->got) == 0;
    if (a->rc == 0 && !a->capped && a->got < n) {
        int64_t due = 0;
        a->due_ms = store_next_due(s, c->provider, c->now_ms, &due) < 0
                        ? -1
                        : due;
    }
}

static void
run_req(struct store *s, struct req *r)
{
    if (r->is_put)
        r->a.rc = store_permit_put(s, r->c.provider, r->c.owner, r->slots,
                                   r->tokens);
    else
        run_claim(s, r);
}

/* Frees a queued request and what it owns, the jobs of its answer
 * included unless a callback took them. */
static void
req_free(struct req *r)
{
    for (int i = 0; i < r->a.got; i++)
        job_free(r->a.jobs[i]);
    free(r->a.jobs);
    free((char *)r->c.provider);
    free((char *)r->c.owner);
    for (size_t i = 0; i < r->c.nheld; i++)
        free((char *)r->c.held[i]);
    free((void *)r->c.held);
    free(r);
}

/* Runs r's callback, which takes the jobs of the answer. */
static void
answer(struct req *r)
{
    if (r->is_put) {
        if (r->put_cb)
            r->put_cb(r->a.rc, r->arg);
    } else {
        r->claim_cb(&r->a, r->arg);
    }
    r->a.got = 0;
}

/* --- the database thread ------------------------------------------------ */

static void *
storeq_main(void *arg)
{
    struct storeq *q = arg;

    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (q->reqs == NULL && !q->commit && !q->stop)
            pthread_cond_wait(&q->wake, &q->lock);
        if (q->reqs == NULL && !q->commit)
            break; /* stopping, nothing left */
        struct req *reqs = q->reqs;
        struct job_update *ups = q->cups;
        size_t nups = q->ncups;
        bool commit = q->commit;
        q->reqs = NULL;
        q->reqs_tail = &q->reqs;
        q->cups = NULL;
        q->ncups = 0;
        q->commit = false;
        pthread_mutex_unlock(&q->lock);

        if (reqs != NULL) {
            struct req *last = reqs;
            for (struct req *r = reqs; r; r = r->next) {
                run_req(q->store, r);
                last = r;
            }
            pthread_mutex_lock(&q->lock);
            *q->done_tail = reqs;
            q->done_tail = &last->next;
            uv_async_send(q->async);
            pthread_mutex_unlock(&q->lock);
        }
        if (commit) {
            for (size_t i = 0; i < nups; i++) {
                store_record(q->store, &ups[i]);
                store_update_clear(&ups[i]);
            }
            free(ups);
            size_t n = store_pending(q->store);
            uint64_t t0 = uv_hrtime();
            int rc = n > 0 ? store_flush(q->store) : 0;
            double s = seconds_since(t0);
            pthread_mutex_lock(&q->lock);
            q->committed = true;
            q->commit_rc = rc;
            q->commit_n = rc == 0 ? n : 0;
            q->commit_s = s;
            uv_async_send(q->async);
            pthread_mutex_unlock(&q->lock);
        }
        /* The connection LISTENs as every store does; what arrived is
         * the loop store's business: drop it here (no round trip). */
        int64_t version;
        store_data_version(q->store, &version);
        pthread_mutex_lock(&q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

/* --- the loop's side ---------------------------------------------------- */

static void
busy_add(struct storeq *q, int k)
{
    q->busy += k;
    /* Only work out keeps the loop alive, not an idle thread. */
    if (q->busy > 0)
        uv_ref((uv_handle_t *)q->async);
    else
        uv_unref((uv_handle_t *)q->async);
}

static void
on_uv_async(uv_async_t *h)
{
    struct storeq *q = h->data;
    struct req *done;
    bool committed;
    int rc;
    size_t n;
    double s;

    pthread_mutex_lock(&q->lock);
    done = q->done;
    q->done = NULL;
    q->done_tail = &q->done;
    committed = q->committed;
    rc = q->commit_rc;
    n = q->commit_n;
    s = q->commit_s;
    q->committed = false;
    pthread_mutex_unlock(&q->lock);

    while (done) {
        struct req *r = done;
        done = r->next;
        busy_add(q, -1);
        answer(r);
        req_free(r);
    }
    if (committed) {
        busy_add(q, -1);
        q->committing = false;
        q->pending -= n;
        if (q->on_commit)
            q->on_commit(rc, n, s, q->commit_arg);
    }
}

static void
on_uv_async_closed(uv_handle_t *h)
{
    free(h);
}

static void
enqueue(struct storeq *q, struct req *r)
{
    busy_add(q, 1);
    pthread_mutex_lock(&q->lock);
    *q->reqs_tail = r;
    q->reqs_tail = &r->next;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
}

int
storeq_open(uv_loop_t *loop, struct store *s, const char *database,
            enum storeq_mode mode, int busy_timeout_ms,
            storeq_commit_cb on_commit, void *arg, struct storeq **out)
{
    struct storeq *q = xcalloc(1, sizeof(*q));
    int rc;

    *out = NULL;
    q->loop = loop;
    q->loop_store = s;
    q->on_commit = on_commit;
    q->commit_arg = arg;
    q->threaded = mode == STOREQ_THREAD ||
                  (mode == STOREQ_AUTO && !store_is_file(database));
    if (!q->threaded) {
        *out = q;
        return 0;
    }
    if ((rc = store_open(database, &q->store)) < 0) {
        free(q);
        return rc;
    }
    store_set_busy_timeout(q->store, busy_timeout_ms);
    q->reqs_tail = &q->reqs;
    q->done_tail = &q->done;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->wake, NULL);
    q->async = xcalloc(1, sizeof(*q->async));
    uv_async_init(loop, q->async, on_uv_async);
    q->async->data = q;
    uv_unref((uv_handle_t *)q->async);
    if ((rc = pthread_create(&q->thread, NULL, storeq_main, q)) != 0) {
        log_error("storeq: cannot start the database thread: %s",
                  strerror(rc));
        uv_close((uv_handle_t *)q->async, on_uv_async_closed);
        pthread_cond_destroy(&q->wake);
        pthread_mutex_destroy(&q->lock);
        store_close(q->store);
        free(q);
        return -rc;
    }
    *out = q;
    return 0;
}

bool
storeq_threaded(const struct storeq *q)
{
    return q->threaded;
}

void
storeq_record(struct storeq *q, const struct job_update *u)
{
    if (!q->threaded) {
        store_record(q->loop_store, u);
        return;
    }
    if (q->nups == q->capups) {
        q->capups = q->capups ? 2 * q->capups : 64;
        q->ups = xrealloc(q->ups, q->capups * sizeof(*q->ups));
    }
    store_update_copy(&q->ups[q->nups++], u);
    q->pending++;
}

size_t
storeq_pending(const struct storeq *q)
{
    return q->threaded ? q->pending : store_pending(q->loop_store);
}

void
storeq_commit(struct storeq *q)
{
    if (!q->threaded) {
        size_t n = store_pending(q->loop_store);
        uint64_t t0 = uv_hrtime();
        int rc = n > 0 ? store_flush(q->loop_store) : 0;
        if (q->on_commit)
            q->on_commit(rc, rc == 0 ? n : 0, seconds_since(t0),
                         q->commit_arg);
        return;
    }
    assert(!q->committing);
    q->committing = true;
    busy_add(q, 1);
    pthread_mutex_lock(&q->lock);
    q->cups = q->ups;
    q->ncups = q->nups;
    q->commit = true;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
    q->ups = NULL;
    q->nups = q->capups = 0;
}

void
storeq_claim(struct storeq *q, const struct storeq_claim *c,
             storeq_claim_cb cb, void *arg)
{
    if (!q->threaded) {
        struct req r = {.c = *c, .claim_cb = cb, .arg = arg};
        run_claim(q->loop_store, &r);
        answer(&r);
        free(r.a.jobs);
        return;
    }
    struct req *r = xcalloc(1, sizeof(*r));
    r->c = *c;
    r->c.provider = xstrdup(c->provider);
    r->c.owner = xstrdup(c->owner);
    if (c->nheld > 0) {
        const char **held = xcalloc(c->nheld, sizeof(*held));
        for (size_t i = 0; i < c->nheld; i++)
            held[i] = xstrdup(c->held[i]);
        r->c.held = held;
    }
    r->claim_cb = cb;
    r->arg = arg;
    enqueue(q, r);
}

void
storeq_put(struct storeq *q, const char *provider, const char *owner,
           int slots, int tokens, storeq_put_cb cb, void *arg)
{
    struct req local = {0}, *r = q->threaded ? xcalloc(1, sizeof(*r))
                                             : &local;
    r->is_put = true;
    r->slots = slots;
    r->tokens = tokens;
    r->put_cb = cb;
    r->arg = arg;
    if (!q->threaded) {
        r->c.provider = provider;
        r->c.owner = owner;
        run_req(q->loop_store, r);
        answer(r);
        return;
    }
    r->c.provider = xstrdup(provider);
    r->c.owner = xstrdup(owner);
    enqueue(q, r);
}

int
storeq_busy(const struct storeq *q)
{
    return q->busy;
}

void
storeq_close(struct storeq *q)
{
    if (q == NULL)
        return;
    if (!q->threaded) {
        free(q);
        return;
    }
    pthread_mutex_lock(&q->lock);
    /* What was recorded and never handed over goes with the last commit
     * (or, if that fails, store_close's last try). */
    if (q->nups > 0) {
        q->cups = xrealloc(q->cups,
                           (q->ncups + q->nups) * sizeof(*q->cups));
        memcpy(q->cups + q->ncups, q->ups, q->nups * sizeof(*q->ups));
        q->ncups += q->nups;
        q->commit = true;
    }
    q->stop = true;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
    pthread_join(q->thread, NULL);
    free(q->ups);

    /* Answers nobody will read. */
    for (struct req *r = q->done, *nx; r; r = nx) {
        nx = r->next;
        req_free(r);
    }
    store_close(q->store);
    uv_close((uv_handle_t *)q->async, on_uv_async_closed);
    pthread_cond_destroy(&q->wake);
    pthread_mutex_destroy(&q->lock);
    free(q);
}
