/*
 * lane: per-provider flow control (docs/design.md §6). Gates in order: the
 * provider state (active / paused / open / half-open / parked), pause-until,
 * the pacers (requests per second and tokens per minute, with the
 * provider's window) and the concurrency limit. Pure: the clock and random
 * draws are parameters, no I/O, so every rule is unit-tested without sleeping.
 *
 * A request's life: lane_admit says how many may start, lane_on_send
 * records one that did (filling a ticket the caller keeps with the
 * request), and lane_on_done or lane_on_abort hands the ticket back with
 * what happened. The ticket carries when the request was sent relative to
 * the lane's changes, so an answer to a request sent before a cut, a pause,
 * a resume or a probe moves nothing.
 */
#ifndef SLUICE_LANE_H
#define SLUICE_LANE_H

#include <stdbool.h>
#include <stdint.h>

struct outcome;

enum lane_state {
    LANE_ACTIVE,    /* requests flow */
    LANE_PAUSED,    /* auth / balance: operator or a successful probe */
    LANE_OPEN,      /* circuit breaker open */
    LANE_HALF_OPEN, /* breaker period over: three probes decide */
    LANE_PARKED,    /* waiting for a far reset */
};

/* The state's name for logs: "active", "paused", "open", "half-open",
 * "parked". */
const char *lane_state_name(enum lane_state s);
/* The state as the providers row names it (docs/contract.md: active,
 * paused, open, parked): half-open is "open", its reason says "half-open". */
const char *lane_state_row(enum lane_state s);

struct lane_params {
    int concurrency_start;     /* initial limit (or the saved one) */
    int concurrency_max;       /* ceiling */
    bool adaptive;             /* AIMD; false keeps the limit fixed */
    double rate_per_s;         /* configured rate limit; 0 = none */
    double tokens_per_min;     /* configured token limit; 0 = none */
    int64_t probe_interval_ms; /* paused: how often to probe */
};

/* What a request carries from lane_on_send to lane_on_done/abort. Filled
 * by the lane; the caller only stores it. */
struct lane_ticket {
    int64_t sent_ms; /* unix ms of lane_on_send */
    uint64_t epoch;  /* the lane's change count at the send */
    uint64_t seq;    /* the lane's send count at the send, this one in */
    int64_t tok_seq; /* tokens estimated for all sends up to this one */
    int64_t tokens;  /* this request's token estimate; 0 none */
    int in_flight;   /* requests + waiting runs at the send, this one in */
    bool probe;      /* sent as a probe (paused or half-open lane) */
    bool paced;      /* sent under a rate known for a while */
};

struct lane;

struct lane *lane_new(const char *name, const struct lane_params *p,
                      int64_t now_ms);
void lane_free(struct lane *l);
/* New parameters (SIGHUP); the state and in-flight count stay. */
void lane_configure(struct lane *l, const struct lane_params *p);

/* How many requests may start now. When a time gate (pause, window,
 * pacer, tokens) holds the answer down, *wake_ms is set to the unix ms at
 * which it admits more; 0 when only a request finishing can. The answer is what
 * the lane wants, not a reservation: a caller may start fewer (another gate
 * beside this one, such as permits shared with other daemons, may grant less);
 * only lane_on_send takes a slot, a request token and tokens. */
int lane_admit(struct lane *l, int64_t now_ms, int64_t *wake_ms);
/* A request went out: takes a slot, a request token and `tokens` (the
 * job's estimate, 0 when unknown) and fills *t. */
void lane_on_send(struct lane *l, int64_t now_ms, int64_t tokens,
                  struct lane_ticket *t);
/* The request of *t finished with o: frees its slot, and the outcome
 * adjusts the lane (limit, rates, pause, breaker) unless it is stale. u is
 * a uniform draw in [0, 1) for jitter. Returns true when the state or the
 * limit changed (the caller logs lane_last_change). */
bool lane_on_done(struct lane *l, const struct lane_ticket *t,
                  const struct outcome *o, int64_t now_ms, double u);
/* The request of *t ended without an answer that says anything
 * (cancelled, released at shutdown): frees its slot and gives back its
 * tokens. */
void lane_on_abort(struct lane *l, const struct lane_ticket *t);
/* Async runs in waiting occupy capacity: delta +1 when a run is accepted,
 * -1 when it ends. The count never goes below zero (asserted). */
void lane_on_waiting(struct lane *l, int delta);
/* Operator resume (sluicectl resume): active at once, pauses and caps
 * forgotten. */
void lane_resume(struct lane *l, int64_t now_ms);

enum lane_state lane_state(const struct lane *l);
const char *lane_reason(const struct lane *l); /* "" when active */
int lane_limit(const struct lane *l);
int lane_requests(const struct lane *l);        /* requests in flight */
int lane_waiting(const struct lane *l);         /* async runs in waiting */
int lane_in_flight(const struct lane *l);       /* requests + waiting runs */
int64_t lane_pause_until(const struct lane *l); /* unix ms, 0 none */
/* One line for logs and STATUS=: "flora limit 24 (3 in flight)",
 * "firemoon paused: insufficient_balance". Borrowed until the next call
 * on l. */
const char *lane_describe(const struct lane *l);

/* The lane's name as given to lane_new. Borrowed. */
const char *lane_name(const struct lane *l);
/* The last change of state or limit, for the log line that follows a true
 * lane_on_done: "limit 24→16 after rate_limited", "active→paused after
 * auth". "" before the first change. Borrowed until the next call on l.
 * lane_admit may change the state too when a time gate ends (parked →
 * active, open → half-open); callers that log it compare lane_state before
 * and after. */
const char *lane_last_change(const struct lane *l);
/* The request pacer's rate in requests/s (1.0 × the lowest known of the
 * configured, advertised and learned rates, or the share of a known rate
 * the lane keeps after 429s that say other daemons share the provider's
 * bucket); 0 when none is known. */
double lane_rate(const struct lane *l);
/* Where lane_rate comes from: "configured", "advertised", "learned", or
 * "" when there is none. Static string. */
const char *lane_rate_source(const struct lane *l);
/* The token gate's limit in tokens/min (configured or advertised, the
 * lower); 0 when none. */
double lane_token_limit(const struct lane *l);
/* Tokens the gate holds now (negative: overdrawn), as of the last call
 * that took now_ms. */
int64_t lane_tokens_available(const struct lane *l);
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
