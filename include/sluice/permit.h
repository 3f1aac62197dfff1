/*
 * permit: one provider's limits shared by the daemons of one database
 * (docs/design.md §6, "several daemons on one database"). Pure: the clock is a
 * parameter; the store reads and writes the shared state around
 * permit_grant in one transaction (store_permit_take).
 *
 * A lane admits what its own view allows (lane.h); the daemon then takes
 * permits for that many requests from the pool all daemons share:
 *
 *   - concurrency slots: requests in flight plus waiting runs of every
 *     daemon stay within the pool's cap, the lowest concurrency_max any
 *     live daemon configured for the provider;
 *   - rate tokens: one token bucket per provider, refilled at the pool's
 *     rate (the lowest configured or advertised rate any live daemon
 *     knows) with a burst of a tenth of a second, as a lane's own pacer.
 *
 * So four daemons together send what one would: never above the rate or
 * the cap one daemon keeps, whatever their number. While another daemon
 * waits for slots, none takes beyond its fair share of the cap (the cap
 * over the daemons that hold or want slots), so a daemon whose answers
 * come first cannot keep all the slots to itself. A daemon's slots are
 * the requests it has out (set at every take, at every housekeeping tick,
 * and given back when a claim finds fewer jobs); a dead daemon's slots go
 * with its row when it is judged dead (liveness.h). Polls of waiting runs
 * take no permit: their runs already hold slots, and a status GET is not
 * what a provider's limit counts.
 */
#ifndef SLUICE_PERMIT_H
#define SLUICE_PERMIT_H

#include <stdbool.h>
#include <stdint.h>

/* What one daemon publishes about a provider: its configured cap and the
 * rate it knows (configured or advertised; 0 none). */
struct permit_view {
    int cap;     /* concurrency_max; 0 = none */
    double rate; /* requests/s; 0 = none */
};

/* The shared state of one provider's permits, as read in the take's
 * transaction. */
struct permit_pool {
    int others;        /* slots held by the other live daemons */
    int active;        /* other daemons holding slots or waiting for some */
    int waiting;       /* other daemons whose last take fell short */
    int cap;           /* lowest cap of the live daemons' views; 0 none */
    double rate;       /* lowest known rate of their views; 0 none */
    double tokens;     /* the shared bucket */
    int64_t tokens_at; /* unix ms the bucket was last filled; 0 never */
};

/* The bucket's capacity at rate: a tenth of a second, at least one. */
double permit_burst(double rate);

/* How many of want new requests may start, with in_flight of ours out
 * now. Refills and draws the bucket in *p (tokens, tokens_at). When the
 * answer is below want, *wake_ms is when to ask again: the next token,
 * or a short retry while others hold the slots. */
int permit_grant(struct permit_pool *p, int in_flight, int want,
                 int64_t now_ms, int64_t *wake_ms);
/* Puts tokens granted but not used back in the bucket of *p, at most its
 * burst. Returns false when there is no bucket to put them in. */
bool permit_return(struct permit_pool *p, int tokens);

#endif
