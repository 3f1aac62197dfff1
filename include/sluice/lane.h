/*
 * lane: per-provider flow control (docs/design.md §6). Four gates in order: the
 * provider state (active / paused / open / parked), pause-until, the rate
 * pacer and the concurrency limit. Pure: the clock and random draws are
 * parameters, no I/O, so every rule is unit-tested without sleeping.
 */
#ifndef SLUICE_LANE_H
#define SLUICE_LANE_H

#include <stdbool.h>
#include <stdint.h>

struct outcome;

enum lane_state {
    LANE_ACTIVE, /* requests flow */
    LANE_PAUSED, /* auth / balance: operator or a successful probe */
    LANE_OPEN,   /* circuit breaker open */
    LANE_PARKED, /* waiting for a far reset */
};

const char *lane_state_name(enum lane_state s);

struct lane_params {
    int concurrency_start;     /* initial limit (or the saved one) */
    int concurrency_max;       /* ceiling */
    bool adaptive;             /* AIMD; false keeps the limit fixed */
    double rate_per_s;         /* configured rate limit; 0 = none */
    int64_t probe_interval_ms; /* paused: how often to probe */
};

struct lane;

struct lane *lane_new(const char *name, const struct lane_params *p,
                      int64_t now_ms);
void lane_free(struct lane *l);
/* New parameters (SIGHUP); the state and in-flight count stay. */
void lane_configure(struct lane *l, const struct lane_params *p);

/* How many requests may start now. When the answer is 0 because of a time
 * gate, *wake_ms is set to the unix ms at which to ask again (0 = ask again
 * when a request finishes). */
int lane_admit(struct lane *l, int64_t now_ms, int64_t *wake_ms);
/* A request went out: takes a slot and a token. */
void lane_on_send(struct lane *l, int64_t now_ms);
/* A request finished: frees the slot, and the outcome adjusts the lane
 * (limit, pause, breaker). rtt_ms is the request's duration, u a uniform
 * draw in [0, 1) for jitter. Returns true when the state or the limit
 * changed (the caller logs lane_describe). */
bool lane_on_done(struct lane *l, const struct outcome *o, int64_t rtt_ms,
                  int64_t now_ms, double u);
/* A request ended without an answer that says anything (cancelled,
 * released at shutdown): frees the slot only. */
void lane_on_abort(struct lane *l);
/* Async runs in waiting occupy capacity: delta +1 when a run is accepted,
 * -1 when it ends. */
void lane_on_waiting(struct lane *l, int delta);
/* Operator resume (sluicectl resume). */
void lane_resume(struct lane *l, int64_t now_ms);

enum lane_state lane_state(const struct lane *l);
const char *lane_reason(const struct lane *l); /* "" when active */
int lane_limit(const struct lane *l);
int lane_in_flight(const struct lane *l);    /* requests + waiting runs */
int64_t lane_pause_until(const struct lane *l); /* unix ms, 0 none */
/* One line for logs and STATUS=: "flora limit 24", "firemoon paused:
 * insufficient_balance". Borrowed until the next call on l. */
const char *lane_describe(const struct lane *l);

/* Additions for the providers row and the log. */

/* The lane's name as given to lane_new. Borrowed. */
const char *lane_name(const struct lane *l);
/* The last change of state or limit, for the log line that follows a true
 * lane_on_done: "limit 24→16 after rate_limited", "active→paused after
 * auth". "" before the first change. Borrowed until the next call on l.
 * lane_admit may change the state too when a time gate ends (parked →
 * active); callers that log it compare lane_state before and after. */
const char *lane_last_change(const struct lane *l);
/* The pacer's rate in requests/s: 0.9 × the lower of the configured and
 * the advertised rate; 0 when neither is known. */
double lane_rate(const struct lane *l);
/* Unix ms the breaker's open period ends while the lane is open; 0 else. */
int64_t lane_open_until(const struct lane *l);
/* Counters since lane_new: requests sent, answered with success (or an
 * accepted / still-running async run), failed, and throttled (429, or a
 * 503 with a retry hint). A finished request counts in exactly one of the
 * last three. */
int64_t lane_sent(const struct lane *l);
int64_t lane_succeeded(const struct lane *l);
int64_t lane_failed(const struct lane *l);
int64_t lane_throttled(const struct lane *l);

#endif
