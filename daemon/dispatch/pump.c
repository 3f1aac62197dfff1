/*
 * The pump: each lane's gates say how many requests they admit, and a
 * claim asks for that many (claim.c). A completion schedules a pump on
 * the next loop turn, so the completions of one turn share one claim.
 */

#include "sluice/clock.h"
#include "sluice/lane.h"
#include "sluice/log.h"
#include "sluice/runcost.h"
#include "sluice/spend.h"

#include "internal.h"

/* Waiting runs hold concurrency slots (they occupy the provider), so a
 * lane full of them admits nothing; yet only a poll can end a run. Polls
 * due then go out past the concurrency gate: a GET of a run's status costs
 * the provider little, and the pacer's gate still applies before this. */
static void
pump_polls(struct dispatch *d, struct dlane *dl, int64_t now)
{
    claim_ask(d, dl, CLAIM_MAX, now, 0, true);
}

static void
pump_lane(struct dispatch *d, struct dlane *dl, int64_t now, int64_t *wake)
{
    int64_t lane_wake = 0;
    if (dl->claiming) {
        dl->repump = true; /* its answer pumps again */
        return;
    }
    if (dl->removed || now < dl->next_check_ms) {
        if (!dl->removed && dl->next_check_ms < *wake)
            *wake = dl->next_check_ms;
        return;
    }
    /* a stated run cost is being asked for: its answer looks again */
    if (runcost_pending(d->runcost, dl->name))
        return;
    enum lane_state before = lane_state(dl->lane);
    int n = lane_admit(dl->lane, now, &lane_wake);
    if (lane_state(dl->lane) != before)
        log_info("%s %s", dl->name, lane_last_change(dl->lane));
    if (n <= 0) {
        permits_sync(d, dl, false);
        if (lane_wake > 0 && lane_wake < *wake)
            *wake = lane_wake;
        if (lane_state(dl->lane) == LANE_ACTIVE && lane_wake == 0)
            pump_polls(d, dl, now);
        return;
    }
    /* When only the concurrency gate limits (no time gate pending) and
     * requests are out, wait until a quarter of the limit is free: one
     * claim statement then serves many completions instead of one each. */
    int batch = lane_limit(dl->lane) >= CLAIM_BATCH_MIN_LIMIT
                    ? lane_limit(dl->lane) / CLAIM_BATCH_DIVISOR
                    : 0;
    if (n < batch && lane_wake == 0 && lane_requests(dl->lane) > 0) {
        permits_sync(d, dl, false);
        return;
    }
    if (n > CLAIM_MAX)
        n = CLAIM_MAX;
    claim_ask(d, dl, n, now, lane_wake, false);
}

static void
pump(struct dispatch *d)
{
    if (d->stopping || !d->started)
        return;
    int64_t now = clock_now_ms();
    int64_t wake = NEVER;
    spend_sync(d->spend, false); /* batch caps enqueued meanwhile */
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        pump_lane(d, dl, now, &wake);
    if (wake != NEVER)
        pump_schedule(d, wake);
}

static void
on_uv_pump(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    d->pump_at = NEVER;
    pump(d);
}

void
pump_schedule(struct dispatch *d, int64_t at)
{
    int64_t now = clock_now_ms();
    if (at == 0 || at < now)
        at = now;
    if (d->pump_at <= at)
        return;
    d->pump_at = at;
    uv_timer_start(&d->pump_timer, on_uv_pump, (uint64_t)(at - now), 0);
}
