/*
 * The lane's circuit breaker (gate 1 of lane.c): a ring of the last
 * BREAKER_WINDOW calls; with at least BREAKER_MIN_CALLS of them and half
 * or more hard failures it opens for a period that doubles with each
 * consecutive opening, then half-open admits BREAKER_PROBES probes.
 */
#include <stdio.h>
#include <string.h>

#include "sluice/outcome.h"

#include "internal.h"

#define BREAKER_MIN_CALLS 20
/* Open 30 s, doubling on each consecutive opening up to 5 min: long enough
 * for a deploy or failover, short enough to notice recovery. */
#define BREAKER_OPEN_MS 30000
#define BREAKER_OPEN_MAX_MS 300000
/* ×(1 ± 0.1): spreads the reopening of daemons that opened together. */
#define BREAKER_JITTER 0.1

void
breaker_clear(struct lane *l)
{
    memset(l->ring, 0, sizeof(l->ring));
    l->ring_len = 0;
    l->ring_next = 0;
    l->ring_hard = 0;
}

/* Opens the breaker: its period doubles with each consecutive opening,
 * jittered by u (0 … 1). */
static void
breaker_open(struct lane *l, int64_t now_ms, double u)
{
    int64_t period = BREAKER_OPEN_MS;

    l->openings++;
    for (int i = 1; i < l->openings && period < BREAKER_OPEN_MAX_MS; i++)
        period *= 2;
    if (period > BREAKER_OPEN_MAX_MS)
        period = BREAKER_OPEN_MAX_MS;
    if (!(u > 0.0))
        u = 0.0;
    if (u >= 1.0)
        u = 1.0;
    double factor = 1.0 + BREAKER_JITTER * (2.0 * u - 1.0);
    l->open_until = now_ms + (int64_t)((double)period * factor);
    lane_set_state(l, LANE_OPEN, "after hard failures");
    breaker_clear(l);
}

void
breaker_record(struct lane *l, const struct outcome *o, int64_t now_ms,
               double u)
{
    bool hard = signal_hard_failure(o);

    if (l->ring_len == BREAKER_WINDOW)
        l->ring_hard -= l->ring[l->ring_next];
    else
        l->ring_len++;
    l->ring[l->ring_next] = hard;
    l->ring_hard += hard;
    l->ring_next = (l->ring_next + 1) % BREAKER_WINDOW;
    if (l->ring_len >= BREAKER_MIN_CALLS && l->ring_hard * 2 >= l->ring_len) {
        int hard_calls = l->ring_hard, calls = l->ring_len;
        breaker_open(l, now_ms, u);
        snprintf(l->reason, sizeof(l->reason), "breaker open: %d of %d failed",
                 hard_calls, calls);
    }
}

/* A fresh probe's answer while half-open. */
void
breaker_probe(struct lane *l, const struct outcome *o, int64_t now_ms, double u)
{
    if (signal_hard_failure(o)) {
        breaker_open(l, now_ms, u);
        snprintf(l->reason, sizeof(l->reason),
                 "breaker open: probe failed with %s", signal_code(o));
        return;
    }
    if (++l->probes_ok >= BREAKER_PROBES) {
        lane_set_state(l, LANE_ACTIVE, "after 3 good probes");
        l->openings = 0;
        l->slow_start = true;
        l->knee = 0;
        l->acked = 0;
    } else {
        snprintf(l->reason, sizeof(l->reason),
                 "half-open: %d of %d probes good", l->probes_ok,
                 BREAKER_PROBES);
    }
}
