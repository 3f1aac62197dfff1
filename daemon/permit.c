/*
 * permit: the grant of shared permits (the rules are in permit.h).
 *
 * Slots are a count, not a queue: a daemon sets its own holding at every
 * take (its requests out plus what it is granted), so slots it no longer
 * uses go back without a separate message, and a daemon cannot hold
 * slots it forgot. The bucket is refilled from the taker's clock; a clock
 * that went back refills nothing, one that jumped ahead refills at most a
 * burst, so no clock step lets more than a tenth of a second of the rate
 * through.
 *
 * Rejected: a leader daemon that hands out the budget (a second protocol,
 * and a dead leader stops everyone until a new one is chosen); splitting
 * the rate into fixed shares per daemon (an idle or draining daemon would
 * keep its share unused: four daemons would get less than one).
 */
#include <math.h>

#include "sluice/permit.h"

/* A tenth of a second of the rate: the burst of a lane's own pacer. */
#define PERMIT_BURST_S 0.1
/* Slots all held by others: they give theirs back when their requests
 * finish (a loop turn later), so look again soon. */
#define PERMIT_SLOT_RETRY_MS 10

double
permit_burst(double rate)
{
    double b = rate * PERMIT_BURST_S;
    return b > 1.0 ? b : 1.0;
}

bool
permit_return(struct permit_pool *p, int tokens)
{
    if (p->rate <= 0 || p->tokens_at == 0 || tokens <= 0)
        return false;
    p->tokens += tokens;
    if (p->tokens > permit_burst(p->rate))
        p->tokens = permit_burst(p->rate);
    return true;
}

int
permit_grant(struct permit_pool *p, int in_flight, int want, int64_t now_ms,
             int64_t *wake_ms)
{
    int n = want > 0 ? want : 0;

    *wake_ms = 0;
    if (p->cap > 0) {
        int open = p->cap - p->others - in_flight;
        if (p->waiting > 0) {
            /* others wait: no more than our share, rounded up */
            int share = (p->cap + p->active) / (p->active + 1);
            if (share - in_flight < open)
                open = share - in_flight;
        }
        if (open < n)
            n = open > 0 ? open : 0;
        if (n < want)
            *wake_ms = now_ms + PERMIT_SLOT_RETRY_MS;
    }
    if (p->rate > 0) {
        double burst = permit_burst(p->rate);
        if (p->tokens_at == 0) {
            p->tokens = burst; /* the provider's bucket starts full too */
        } else if (now_ms > p->tokens_at) {
            p->tokens += (double)(now_ms - p->tokens_at) * p->rate / 1000.0;
            if (p->tokens > burst)
                p->tokens = burst;
        }
        if (now_ms > p->tokens_at)
            p->tokens_at = now_ms;
        int whole = (int)floor(p->tokens);
        if (whole < n) {
            n = whole > 0 ? whole : 0;
            /* the next token, unless slots are what holds us back */
            int64_t next = now_ms + (int64_t)ceil((1.0 - (p->tokens - whole)) *
                                                  1000.0 / p->rate);
            if (*wake_ms == 0 || next > *wake_ms)
                *wake_ms = next;
        }
        p->tokens -= n;
    }
    return n;
}
