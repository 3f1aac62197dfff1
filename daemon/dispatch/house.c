/*
 * Housekeeping, once a second: the heartbeat, the providers table,
 * operators' resumes and cancels, the verdict on other daemons and expired
 * leases; and, more often, other processes' commits (PRAGMA data_version,
 * or a PostgreSQL NOTIFY).
 */
#include <stdlib.h>

#include "sluice/clock.h"
#include "sluice/http.h"
#include "sluice/lane.h"
#include "sluice/liveness.h"
#include "sluice/log.h"
#include "sluice/outputs.h"
#include "sluice/spend.h"
#include "sluice/store.h"
#include "sluice/storeq.h"
#include "sluice/xmalloc.h"

#include "internal.h"

void
house_write_provider_rows(struct dispatch *d, int64_t now)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        if (dl->removed)
            continue;
        struct lane *l = dl->lane;
        struct provider_row p = {
            .name = dl->name,
            .state = lane_state_row(lane_state(l)),
            .reason = lane_reason(l)[0] ? lane_reason(l) : NULL,
            .concurrency_limit = lane_limit(l),
            .in_flight = lane_in_flight(l),
            .pause_until = lane_pause_until(l) > now ? lane_pause_until(l) : 0,
            .sent = lane_sent(l),
            .succeeded = lane_succeeded(l),
            .failed = lane_failed(l),
            .throttled = lane_throttled(l),
            .rate_per_s = lane_rate(l),
            .rate_source = lane_rate_source(l),
            .token_limit = (int64_t)lane_token_limit(l),
            .tokens_available = lane_tokens_available(l),
        };
        if (lane_state(l) == LANE_ACTIVE && spend_paused(d->spend, dl->name)) {
            p.state = lane_state_name(LANE_PAUSED);
            p.reason = "budget";
        }
        store_provider_put(d->store, &p, now);
    }
    spend_publish(d->spend, now); /* batches held at their budget */
}

static void
check_resumes(struct dispatch *d, int64_t now)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        int limit;
        int64_t resume = 0;
        if (dl->removed ||
            store_provider_get(d->store, dl->name, &limit, &resume) < 0)
            continue;
        if (resume > dl->resume_seen) {
            dl->resume_seen = resume;
            spend_resume(d->spend, dl->name);
            if (lane_state(dl->lane) != LANE_ACTIVE) {
                lane_resume(dl->lane, now);
                log_info("%s resumed by the operator", dl->name);
            }
            dl->next_check_ms = 0;
        }
    }
}

/* Transfers whose job an operator cancelled are aborted. */
static void
check_cancels(struct dispatch *d)
{
    if (d->ninflight == 0)
        return;
    int64_t *ids = xcalloc((size_t)d->ninflight, sizeof(int64_t));
    int64_t *hit = xcalloc((size_t)d->ninflight, sizeof(int64_t));
    int n = 0, nhit = 0;
    for (struct req *r = d->inflight; r; r = r->next)
        ids[n++] = r->job->id;
    if (store_cancelled(d->store, ids, n, hit, &nhit) == 0 && nhit > 0) {
        for (int i = 0; i < nhit; i++) {
            for (struct req *r = d->inflight; r; r = r->next) {
                if (r->job->id == hit[i]) {
                    r->cancel_job = true;
                    http_cancel(r->xfer);
                    break;
                }
            }
        }
    }
    free(ids);
    free(hit);
}

/* Jobs came back to the queue: every lane looks again. */
static void
recheck_lanes(struct dispatch *d)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        dl->next_check_ms = 0;
}

void
on_uv_house(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    int64_t now = clock_now_ms();
    long n = 0;
    /* A stopping daemon still beats: its requests are still out. */
    liveness_beat(d->live, now);
    house_write_provider_rows(d, now);
    if (d->stopping)
        return;
    check_resumes(d, now);
    check_cancels(d);
    if (storeq_pending(d->q) == 0)
        dlane_reconcile_waiting(d);
    if (liveness_reap(d->live, now, clock_mono_ms(), &n) == 0 && n > 0)
        recheck_lanes(d);
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        permits_sync(d, dl, true);
    if (now - d->last_reclaim >= RECLAIM_MS) {
        d->last_reclaim = now;
        if (store_reclaim_expired(d->store, now, &n) == 0 && n > 0) {
            log_info("store: %ld expired leases reclaimed", n);
            recheck_lanes(d);
        }
    }
    pump_schedule(d, 0);
}

void
on_uv_version(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    int64_t v;
    if (store_data_version(d->store, &v) < 0 || v == d->data_version)
        return;
    d->data_version = v;
    d->unfinished_at = 0; /* new jobs: STATUS= counts again */
    /* Someone else committed (enqueue, retry, another daemon): look again. */
    recheck_lanes(d);
    pump_schedule(d, 0);
    if (d->outputs != NULL)
        outputs_kick(d->outputs); /* sluicectl outputs --retry */
}

/* The store pushed a wakeup (PostgreSQL NOTIFY): look at once. */
void
on_store_wakeup(void *arg)
{
    on_uv_version(&((struct dispatch *)arg)->version_timer);
}
