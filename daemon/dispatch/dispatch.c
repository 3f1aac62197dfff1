/*
 * dispatch: the scheduler of sluiced, on one libuv loop.
 *
 * How a job moves: pump() asks each lane how many requests its gates admit
 * (daemon/lane/), claims that many due jobs of its provider in one statement
 * (storeq_claim), and sends each through http.c when the claim answers.
 * When a response arrives, the provider's dialect turns it into an
 * outcome; the lane learns from it (limit, pause, breaker), job_next
 * (job.c) decides where the job goes, and the update is buffered for the
 * next group commit (storeq_commit on a short timer). Claims and commits
 * answer through callbacks (storeq.h: inline on SQLite, from a database
 * thread on PostgreSQL); a lane asks one claim at a time. Nothing is
 * decided from memory alone: every state change is a row update, and a
 * job that was claimed but not recorded is reclaimed by its lease after a
 * crash.
 *
 * Pumping: a completion schedules a pump on the next loop turn, so the
 * completions of one turn share one claim. A lane whose claim came back
 * short remembers when its next job falls due (store_next_due) and is not
 * asked again before then, unless another process committed (PRAGMA
 * data_version) or this daemon scheduled a retry earlier.
 *
 * Rejected: a thread per provider (SQLite writes would contend and the
 * flow-control state would need locks), and claiming far ahead of the
 * lane's admission (claimed jobs would sit in memory under lease, invisible
 * to other daemons and lost to a crash until the lease expires).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/clock.h"
#include "sluice/config.h"
#include "sluice/dialect.h"
#include "sluice/dispatch.h"
#include "sluice/http.h"
#include "sluice/lane.h"
#include "sluice/liveness.h"
#include "sluice/log.h"
#include "sluice/metrics.h"
#include "sluice/outputs.h"
#include "sluice/runcost.h"
#include "sluice/spend.h"
#include "sluice/store.h"
#include "sluice/storeq.h"
#include "sluice/url.h"
#include "sluice/xmalloc.h"

#include "internal.h"

/* Tells the store which providers' running jobs must not go back to the
 * queue when their lease is taken back (no idempotency: docs/design.md
 * §4). */
static void
guard_resends(struct store *s, const struct config *c)
{
    const char **names = xcalloc(c->nproviders + 1, sizeof(char *));
    size_t n = 0;

    for (size_t i = 0; i < c->nproviders; i++) {
        if (c->providers[i].idem == IDEM_NONE)
            names[n++] = c->providers[i].name;
    }
    store_set_unsafe_resend(s, names, n);
    free(names);
}

long
dispatch_recover(struct store *s, struct liveness *live, const struct config *c)
{
    long expired = 0, reaped = 0;
    guard_resends(s, c);
    int rc = store_reclaim_expired(s, clock_now_ms(), &expired);
    if (rc == 0)
        rc = liveness_reap(live, clock_now_ms(), clock_mono_ms(), &reaped);
    return rc < 0 ? rc : expired + reaped;
}

/* Jobs whose provider the config does not name can never run: say so at
 * start, since --drain will finish without them. */
static void
warn_unknown_provider(const char *provider, long n, void *data)
{
    struct dispatch *d = data;
    if (dlane_find(d, provider) == NULL)
        log_warnx("%ld unfinished jobs of provider %s, which the config "
                  "does not name: they wait until it does",
                  n, provider);
}

/* runcost_done_fn: a stated cost was learned or given up; the jobs held
 * for it may go. */
static void
on_runcost_done(const char *provider, void *arg)
{
    struct dispatch *d = arg;
    struct dlane *dl = dlane_find(d, provider);

    if (dl != NULL)
        dl->next_check_ms = 0;
    if (!d->stopping)
        pump_schedule(d, 0);
}

/* outputs_auth_fn: a provider's headers go with a download only to its
 * own origin (docs/design.md §13). */
static const char *const *
output_auth(const char *provider, const char *url, void *arg)
{
    struct dispatch *d = arg;
    struct dlane *dl = provider ? dlane_find(d, provider) : NULL;

    if (dl == NULL || !url_same_origin(dl->base_url, url))
        return NULL;
    return (const char *const *)dl->headers;
}

static void
outputs_params_of(const struct dispatch *d, const struct config *c,
                  struct outputs_params *p)
{
    p->dir = c->outputs_dir;
    p->concurrency = c->outputs_concurrency;
    p->max_size = c->outputs_max_size;
    p->lease_ms = c->lease_ms;
    p->owner = liveness_owner(d->live);
}

/* Starts the downloads when the config names outputs_dir. */
static int
outputs_open(struct dispatch *d, const struct config *c)
{
    struct outputs_params p;

    if (c->outputs_dir == NULL)
        return 0;
    outputs_params_of(d, c, &p);
    d->outputs = outputs_new(d->loop, d->store, d->http, &p, output_auth, d);
    if (outputs_start(d->outputs) < 0) {
        outputs_free(d->outputs);
        d->outputs = NULL;
        return -EIO;
    }
    return 0;
}

struct dispatch *
dispatch_new(uv_loop_t *loop, struct store *s, struct liveness *live,
             const struct config *c)
{
    struct dispatch *d = xcalloc(1, sizeof(*d));
    struct dlane **tail = &d->lanes;

    d->loop = loop;
    d->store = s;
    d->lease_ms = c->lease_ms;
    d->pump_at = NEVER;
    d->live = live;
    store_set_busy_timeout(s, BUSY_TIMEOUT_MS);
    store_data_version(s, &d->data_version);
    d->spend = spend_new(s);

    for (size_t i = 0; i < c->nproviders; i++) {
        spend_set_provider_budget(d->spend, c->providers[i].name,
                                  c->providers[i].budget);
        struct dlane *dl = dlane_new(d, &c->providers[i]);
        if (dl == NULL)
            goto fail;
        *tail = dl;
        tail = &dl->next;
    }
    if (storeq_open(loop, s, c->database, STOREQ_AUTO, BUSY_TIMEOUT_MS,
                    on_storeq_commit, d, &d->q) < 0)
        goto fail;
    d->http = http_new(loop);
    d->runcost = runcost_new(d->http, on_runcost_done, d);
    uv_timer_t *timers[] = {&d->pump_timer, &d->flush_timer, &d->house_timer,
                            &d->version_timer, &d->grace_timer};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = d;
    }
    house_write_provider_rows(d, clock_now_ms());
    store_unfinished_by_provider(s, warn_unknown_provider, d);
    if (outputs_open(d, c) < 0) {
        dispatch_free(d);
        return NULL;
    }
    return d;

fail: /* before the timers and the store queue: only lanes and spend */
    for (struct dlane *x = d->lanes, *nx; x; x = nx) {
        nx = x->next;
        dlane_free(x);
    }
    spend_free(d->spend);
    free(d);
    return NULL;
}

void
dispatch_start(struct dispatch *d)
{
    d->started = true;
    d->last_reclaim = clock_now_ms();
    uv_timer_start(&d->house_timer, on_uv_house, HOUSEKEEPING_MS,
                   HOUSEKEEPING_MS);
    uv_timer_start(&d->version_timer, on_uv_version, VERSION_POLL_MS,
                   VERSION_POLL_MS);
    /* Where the store can push (PostgreSQL), an idle daemon wakes at
     * once; the poll above stays as the floor. */
    store_watch(d->store, d->loop, on_store_wakeup, d);
    pump_schedule(d, 0);
}

int
dispatch_reload(struct dispatch *d, const struct config *c)
{
    /* Validate every provider first, so a broken config changes nothing. */
    for (size_t i = 0; i < c->nproviders; i++) {
        char err[256];
        char *key = config_api_key(&c->providers[i], err, sizeof(err));
        if (key == NULL) {
            log_error("reload: provider %s: %s", c->providers[i].name, err);
            return -EINVAL;
        }
        explicit_bzero(key, strlen(key));
        free(key);
    }
    guard_resends(d->store, c);
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        dl->removed = true;
    for (size_t i = 0; i < c->nproviders; i++) {
        const struct provider_config *pc = &c->providers[i];
        struct dlane *dl = dlane_find(d, pc->name);
        spend_set_provider_budget(d->spend, pc->name, pc->budget);
        if (dl) {
            struct lane_params lp;
            /* another origin or dialect may state other costs */
            if (strcmp(dl->base_url, pc->base_url) != 0 ||
                dl->dialect != dialect_find(pc->dialect))
                runcost_forget(d->runcost, pc->name);
            dlane_apply(dl, pc);
            dlane_params(pc, 0, &lp);
            lane_configure(dl->lane, &lp);
            dl->removed = false;
            dl->next_check_ms = 0;
            log_info("reload: %s updated", pc->name);
        } else {
            dl = dlane_new(d, pc);
            if (dl == NULL)
                continue;
            dl->next = d->lanes;
            d->lanes = dl;
            log_info("reload: %s added", pc->name);
        }
    }
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        if (dl->removed)
            log_info("reload: %s removed; its %d requests in flight finish",
                     dl->name, lane_in_flight(dl->lane));
    d->lease_ms = c->lease_ms;
    if (d->outputs != NULL && c->outputs_dir != NULL) {
        struct outputs_params p;
        outputs_params_of(d, c, &p);
        outputs_configure(d->outputs, &p);
    } else if (d->outputs == NULL && outputs_open(d, c) < 0) {
        log_error("reload: outputs_dir %s unusable, downloads stay off",
                  c->outputs_dir);
    } else if (d->outputs != NULL) {
        log_warnx("reload: outputs_dir removed; downloads go on until the "
                  "next start");
    }
    pump_schedule(d, 0);
    return 0;
}

static void
on_uv_closed(uv_handle_t *h)
{
    struct dispatch *d = h->data;
    d->closing--;
}

void
dispatch_maybe_stopped(struct dispatch *d)
{
    if (!d->stopping || d->ninflight > 0 || d->on_stopped == NULL ||
        (d->outputs != NULL && !d->outputs_stopped))
        return;
    /* Claims, puts and commits out call back here when they answer. */
    if (storeq_busy(d->q) > 0)
        return;
    if (storeq_pending(d->q) > 0 && clock_now_ms() < d->stop_flush_until) {
        /* on_storeq_commit calls back here (inline: before commit_now returns),
         * and a failed commit's retry timer flushes again */
        if (!d->flush_scheduled)
            commit_now(d);
        return;
    }
    if (storeq_pending(d->q) > 0)
        log_warnx("store: %zu outcomes not committed by the stop: their "
                  "jobs stay leased and are taken back, with the same "
                  "keys, at the next start",
                  storeq_pending(d->q));
    house_write_provider_rows(d, clock_now_ms());
    /* Nothing of ours keeps the loop alive once stopped. */
    uv_timer_stop(&d->grace_timer);
    uv_timer_stop(&d->house_timer);
    uv_timer_stop(&d->flush_timer);
    uv_timer_stop(&d->pump_timer);
    void (*cb)(void *) = d->on_stopped;
    d->on_stopped = NULL;
    cb(d->stopped_data);
}

static void
on_uv_grace(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    if (d->ninflight > 0)
        log_info("shutdown grace over: returning %d requests in flight to "
                 "the queue",
                 d->ninflight);
    /* http_cancel runs the callback, which unlinks the request. */
    while (d->inflight)
        http_cancel(d->inflight->xfer);
    dispatch_maybe_stopped(d);
}

static void
on_outputs_stopped(void *arg)
{
    struct dispatch *d = arg;
    d->outputs_stopped = true;
    dispatch_maybe_stopped(d);
}

void
dispatch_stop(struct dispatch *d, int64_t grace_ms, void (*on_stopped)(void *),
              void *data)
{
    d->stopping = true;
    d->on_stopped = on_stopped;
    d->stopped_data = data;
    d->stop_flush_until = clock_now_ms() + grace_ms + STOP_FLUSH_MS;
    uv_timer_stop(&d->pump_timer);
    uv_timer_stop(&d->version_timer);
    store_watch(d->store, NULL, NULL, NULL); /* or the loop stays up */
    runcost_forget(d->runcost, NULL);        /* no job waits for a cost now */
    if (d->ninflight > 0) {
        log_info("stopping: %d requests in flight, grace %" PRId64 " ms",
                 d->ninflight, grace_ms);
        uv_timer_start(&d->grace_timer, on_uv_grace, (uint64_t)grace_ms, 0);
    }
    /* Downloads do not get the grace: a cut one is fetched again at the
     * next start, nothing is lost but the bytes. */
    if (d->outputs != NULL)
        outputs_stop(d->outputs, on_outputs_stopped, d);
    dispatch_maybe_stopped(d);
}

bool
dispatch_drained(struct dispatch *d)
{
    if (d->ninflight > 0 || storeq_pending(d->q) > 0 || storeq_busy(d->q) > 0)
        return false;
    if (d->outputs != NULL && !outputs_idle(d->outputs))
        return false;
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        bool any = false;
        if (dl->removed)
            continue;
        if (store_has_unfinished(d->store, dl->name, &any) < 0)
            return false;
        /* paused for auth, balance or budget, or every job in a batch
         * held at its budget: nothing of it can move */
        if (any && lane_state(dl->lane) != LANE_PAUSED &&
            !spend_paused(d->spend, dl->name) &&
            !spend_blocked(d->spend, dl->name))
            return false;
    }
    return true;
}

const char *
dispatch_status(struct dispatch *d)
{
    int64_t now = clock_now_ms();
    /* The count reads the kept counts (a few rows); it is still asked at
     * most every STATUS_COUNT_MS, since STATUS= need not be fresher. */
    if (d->unfinished_at == 0 || now - d->unfinished_at >= STATUS_COUNT_MS) {
        long total = 0;
        for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
            long n = 0;
            if (!dl->removed &&
                store_pending_count(d->store, dl->name, &n) == 0)
                total += n;
        }
        d->unfinished = total;
        d->unfinished_at = now;
    }
    buf_reset(&d->status);
    buf_appendf(&d->status, "%d in flight, %ld unfinished", d->ninflight,
                d->unfinished);
    if (outputs_active(d->outputs) > 0)
        buf_appendf(&d->status, ", %d downloads", outputs_active(d->outputs));
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        if (dl->removed)
            continue;
        if (lane_state(dl->lane) == LANE_ACTIVE &&
            spend_paused(d->spend, dl->name))
            buf_appendf(&d->status, ", %s paused: budget", dl->name);
        else if (lane_state(dl->lane) == LANE_ACTIVE)
            buf_appendf(&d->status, ", %s limit %d", dl->name,
                        lane_limit(dl->lane));
        else
            buf_appendf(&d->status, ", %s %s%s%s", dl->name,
                        lane_state_name(lane_state(dl->lane)),
                        lane_reason(dl->lane)[0] ? ": " : "",
                        lane_reason(dl->lane));
    }
    return d->status.data;
}

void
dispatch_set_metrics(struct dispatch *d, struct metrics *m)
{
    d->metrics = m;
}

struct spend *
dispatch_spend(struct dispatch *d)
{
    return d->spend;
}

size_t
dispatch_lanes(struct dispatch *d, const struct lane **out, size_t cap)
{
    size_t n = 0;
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        if (dl->removed)
            continue;
        if (n < cap)
            out[n] = dl->lane;
        n++;
    }
    return n;
}

void
dispatch_free(struct dispatch *d)
{
    if (d == NULL)
        return;
    while (d->inflight)
        http_cancel(d->inflight->xfer);
    outputs_free(d->outputs);
    runcost_free(d->runcost);
    http_free(d->http);
    store_watch(d->store, NULL, NULL, NULL);
    /* Commits what the cancellations above recorded, and closes its
     * handle with the timers below. */
    storeq_close(d->q);
    uv_timer_t *timers[] = {&d->pump_timer, &d->flush_timer, &d->house_timer,
                            &d->version_timer, &d->grace_timer};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        d->closing++;
        uv_close((uv_handle_t *)timers[i], on_uv_closed);
    }
    /* The timers are embedded: let their close callbacks run first. */
    while (d->closing > 0)
        uv_run(d->loop, UV_RUN_ONCE);
    for (struct dlane *dl = d->lanes, *nx; dl; dl = nx) {
        nx = dl->next;
        dlane_free(dl);
    }
    buf_free(&d->status);
    spend_free(d->spend);
    free(d);
}
