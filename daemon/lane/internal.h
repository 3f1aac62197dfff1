/*
 * The lane's internals, shared by the files of daemon/lane/ and by no one
 * else: callers see only include/sluice/lane.h. lane.c holds the gates,
 * the loss detector and the limit; pace.c the pacers (request rate, the
 * provider's window, tokens, the share of a shared bucket); breaker.c the
 * circuit breaker; signals.c what one outcome says (a loss, a throttle, a
 * hard failure, a dead key). All of it pure, as lane.h says.
 */
#ifndef SLUICE_LANE_INTERNAL_H
#define SLUICE_LANE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "sluice/job.h"
#include "sluice/hints.h"
#include "sluice/lane.h"

struct outcome;

/* Breaker (docs/design.md §6): the last 50 calls; with at least 20 of them
 * (fewer is noise) and half or more hard failures the provider is broken. */
#define BREAKER_WINDOW 50
/* Three probes: one success can be luck, three in a row is a provider. */
#define BREAKER_PROBES 3
/* Room for "<class>: <code> (request <id>)" with the outcome's maxima. */
#define LANE_REASON_MAX 384

struct lane {
    char *name;                   /* provider name, owned */
    struct lane_params p;         /* current parameters */
    enum lane_state state;        /* gate 1 */
    char reason[LANE_REASON_MAX]; /* why not active, "" when active */
    char change[LANE_REASON_MAX]; /* lane_last_change */
    char *line;                   /* lane_describe's buffer, LANE_LINE_MAX */
    uint64_t epoch;               /* changes so far; tickets carry it */
    uint64_t seq;                 /* requests sent so far */

    /* gate 4: concurrency */
    int limit;       /* concurrency limit, 1 … concurrency_max */
    int acked;       /* successes since the last additive step */
    bool slow_start; /* doubling: before the first loss, or knee forgotten */
    int knee;        /* in flight when losses began; 0 unknown */
    int hold;        /* clean rounds since the last step at the knee */
    int above;       /* clean rounds at or above the knee */
    int requests;    /* requests in flight */
    int waiting;     /* async runs in waiting */
    double srtt_ms;  /* smoothed RTT; 0 before the first sample */

    /* noise vs congestion */
    double bg;          /* loss rate of earlier answers at lower load */
    int64_t bg_n;       /* answers in bg, up to 1 / BG_ALPHA */
    uint64_t round_seq; /* the round began after this send */
    int64_t round_ms;   /* ... at this unix ms */
    int round_n;        /* fresh answers in the round */
    int round_losses;   /* fresh losses in the round */
    bool round_cut;     /* the round ended in congestion */
    int run;            /* fresh 429s in a row, no success between */
    int64_t run_hint;   /* the latest hint of the run, unix ms; 0 */

    /* gate 2 */
    int64_t pause_until; /* also the end of parking, unix ms; 0 */

    /* gate 3: request pacer and the provider's window */
    double adv_rate;      /* advertised requests/s; 0 unknown */
    double share;         /* the pacer's share of the known rate, ≤ 1 */
    int64_t rate_since;   /* unix ms a rate was first known; 0 none yet */
    int64_t share_429_ms; /* unix ms of the last 429 the pacer sent; 0 */
    int64_t share_cut_ms; /* unix ms of the last cut of the share; 0 */
    double tokens;        /* request bucket; may go below 0 */
    int64_t refill_ms;    /* unix ms the buckets were last refilled */
    long win_left;        /* the provider's window: requests left; -1 */
    int64_t win_reset;    /* ... until this unix ms; 0 unknown */

    /* gate 3: tokens */
    double tok_adv;   /* advertised tokens/min; 0 unknown */
    double tok_level; /* tokens available; negative = overdrawn */
    double tok_cost;  /* average tokens per request */
    double tok_peak;  /* the largest recent estimate */
    int64_t tok_seq;  /* tokens estimated for all sends so far */

    /* gate 1: paused and breaker */
    int64_t probe_ms;          /* paused: unix ms of the pause or probe */
    bool probe_out;            /* paused: the probe is in flight */
    bool ring[BREAKER_WINDOW]; /* true = hard failure */
    int ring_len;              /* calls in the ring, ≤ BREAKER_WINDOW */
    int ring_next;             /* slot of the next call */
    int ring_hard;             /* hard failures in the ring */
    int openings;              /* consecutive breaker openings */
    int64_t open_until;        /* open: unix ms the period ends */
    int probes_sent;           /* half-open: probes sent */
    int probes_ok;             /* half-open: probes that did not fail */

    int64_t sent, succeeded, failed, throttled; /* counters */
};

/* A hint's time, capped at HINT_CAP_MS from now; *capped says whether. */
static inline int64_t
cap_hint(int64_t at, int64_t now_ms, bool *capped)
{
    if (at > now_ms + HINT_CAP_MS) {
        *capped = true;
        return now_ms + HINT_CAP_MS;
    }
    return at;
}

/* lane.c: every change that answers a signal bumps the epoch (answers to
 * requests sent before it are stale from now on); lane_set_state is the
 * one place the state changes. */
void lane_bump(struct lane *l);
void lane_set_state(struct lane *l, enum lane_state s, const char *why);

/* pace.c */
double pace_full_rate(const struct lane *l);
double pace_rate(const struct lane *l);
double pace_bucket_capacity(double rate);
double pace_token_limit(const struct lane *l);
double pace_token_capacity(const struct lane *l);
void pace_refill(struct lane *l, int64_t now_ms);
void pace_learn(struct lane *l, const struct lane_ticket *t,
                const struct outcome *o, int64_t now_ms);
void pace_share_refused(struct lane *l, int64_t now_ms);

/* breaker.c */
void breaker_clear(struct lane *l);
void breaker_record(struct lane *l, const struct outcome *o, int64_t now_ms,
                    double u);
void breaker_probe(struct lane *l, const struct outcome *o, int64_t now_ms,
                   double u);

/* signals.c */
bool signal_success(const struct outcome *o);
bool signal_failure(const struct outcome *o, enum err_class c);
bool signal_loss(const struct outcome *o);
bool signal_throttle(const struct outcome *o, int64_t now_ms);
bool signal_hard_failure(const struct outcome *o);
bool signal_key_failure(const struct outcome *o);
const char *signal_code(const struct outcome *o);
int64_t signal_shut_hint(const struct outcome *o, int64_t now_ms);

#endif
