/*
 * lane: per-provider flow control (docs/design.md §6). A lane answers one
 * question, "how many requests may start now?", with gates in order, the
 * smallest answer winning:
 *
 *   1. state   active admits; paused (dead key, no balance) admits one
 *              probe per probe interval; open (circuit breaker) admits
 *              nothing for its period, then half-open admits three probes;
 *              parked admits nothing until its far reset.
 *   2. pause   a shut window (remaining 0 with a reset, Firemoon's
 *              resetAt, a run of 429s with no success among them) stops
 *              the lane until it opens again.
 *   3. pacers  requests at 1.0 × the configured, advertised or learned
 *              rate (burst a tenth of a second), or at a share of a known
 *              rate that other daemons on the same key use too; never
 *              more than the
 *              provider's window has left; tokens per minute (estimated
 *              per job, corrected by the answer's usage).
 *   4. limit   requests in flight plus waiting async runs stay below the
 *              concurrency limit, adapted by loss-based AIMD with a knee.
 *
 * What an outcome may change (lane_on_done):
 *
 *   - One 429 or 503 is one loss, not a pause: the dispatcher defers that
 *     job by its hint, and the other slots keep working.
 *   - Losses are congestion only when they rise above the background rate
 *     (noise): in a round (the requests sent since the round began, about
 *     one RTT), k losses are congestion when k > n·bg + 3·√(n·bg),
 *     where bg is the loss rate of the lane's earlier answers below the
 *     knee (n: the round's answers, at least the in-flight count). A provider
 *     that fails 4 % of requests at random, whatever the load, has bg ≈
 *     0.04 and is left alone; one whose slots are all taken loses a request
 *     at a load where it lost none before, and that is a cut.
 *   - Congestion cuts the limit × 0.7 (unless a known rate's pacer, not
 *     the limit, was what the provider refused) and remembers the knee,
 *     the in-flight count at which losses began: the limit grows back at
 *     slow start's pace to just under the knee, holds there
 *     KNEE_HOLD_ROUNDS clean rounds, then probes one above; a knee not met
 *     again for KNEE_FORGET_ROUNDS is forgotten (slow start).
 *   - 429s to requests the pacer sent under a known rate, the limit not
 *     full, say the provider's bucket is shared (a lone daemon pacing at
 *     1.0 × is not refused): a second one within 2 s cuts the pacer's
 *     share of the rate ×0.8, once per epoch; the share grows back by a
 *     twentieth of the rate per second, faster after 2 s without a cut
 *     (AIMD on the share: daemons refused in proportion to what they send
 *     converge to equal shares).
 *   - Without a configured or advertised rate, requests are spaced at the
 *     rate the limit delivers, limit / SRTT: after a loss, the rate the
 *     provider accepted when it refused (learned), probed upward with the
 *     limit one request per round trip at a time.
 *   - Stale answers move nothing: every change that answers a signal (a
 *     cut, a pause, a resume, a probe, a breaker transition) bumps the
 *     lane's epoch, and an answer to a request sent in an earlier epoch
 *     neither cuts again, nor lifts a pause, nor closes the breaker, nor
 *     grows the limit. One reaction per change, as TCP reacts once per
 *     window.
 *   - Key failures (401, 402, a 403 naming the key) pause the lane; hard
 *     failures (5xx, timeouts, network) fill the breaker's ring.
 *
 * Every time a hint sets (a pause, a window's reset, the rate a window
 * implies) is capped at HINT_CAP_MS from now, and the reason says so.
 *
 * Pure: no clock, no randomness, no I/O. "now" and the uniform draw are
 * parameters, so each rule has a unit test that does not sleep.
 *
 * Rejected: pausing the whole lane on every hinted 429 (the first version:
 * a concurrency-limited provider answers Retry-After: 1 for one slot while
 * its other slots work; that left 65 % of it unused); cutting on every
 * loss (a provider with random 5 % failures collapsed to 1 % of its
 * capacity, the TCP-over-a-lossy-link problem); a delay-based limiter
 * (Vegas, gradient): a generation's latency depends on the prompt and the
 * model far more than on the provider's load.
 */
#include <assert.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sluice/hints.h"
#include "sluice/lane.h"
#include "sluice/outcome.h"
#include "sluice/xmalloc.h"

/* Burst: a tenth of a second of the rate, at least one request. With the
 * bucket refilling at 1.0 × the rate, no one second carries more than
 * 1.1 × the rate, and a per-minute window sees its limit plus 1/600. */
#define PACER_BURST_S 0.1
/* X-RateLimit-Limit without a stated window: Firemoon's and most others'
 * limits are per minute. */
#define RATE_WINDOW_DEFAULT_MS 60000
/* The slowest rate a hint may impose: one request per HINT_CAP_MS. */
#define RATE_MIN_PER_S (1000.0 / (double)HINT_CAP_MS)
/* ×0.7: the multiplicative decrease of AWS SDKs' adaptive retry (CUBIC's
 * beta): gentler than TCP's halving. */
#define AIMD_BETA 0.7
/* The pacer's share of a known rate (several independent daemons on one
 * key): 429s the pacer's own rate cannot explain (the bucket is shared)
 * cut the share ×0.8, once per epoch; it grows back by 0.05 of the rate
 * per second, the same for every daemon, so that daemons refused at
 * random converge to equal shares (Chiu–Jain). A share never goes below
 * a twentieth of the rate. */
#define SHARE_BETA 0.8
#define SHARE_GROW_PER_S 0.05
#define SHARE_MIN 0.05
/* Requests sent within a second of learning the rate say nothing of
 * others: the provider's bucket may still lack what this lane sent before
 * it knew the rate. */
#define SHARE_GRACE_MS 1000
/* One such 429 alone may be our own burst arriving bunched on a loaded
 * host: a cut needs a second one within this time of the first. */
#define SHARE_ARM_MS 2000
/* After this long without a cut the share grows faster, by one more
 * SHARE_GROW_PER_S each further second: a daemon left alone regains the
 * whole rate within seconds; the smallest of several sharing daemons,
 * refused least often, catches up soonest. */
#define SHARE_CALM_MS 2000
/* α = 1/8: TCP's SRTT gain (RFC 6298), smooth yet quick to follow. */
#define SRTT_ALPHA 0.125
/* Background loss rate: an average over the last ~256 answers, long
 * enough to hold a few percent of noise steady, short enough to follow a
 * provider whose noise changes within seconds. */
#define BG_ALPHA (1.0 / 256)
/* Until then, an average of all answers as if 16 clean ones came first: a
 * lane's first loss is not yet its background. */
#define BG_PRIOR 16
/* Congestion when a round's losses exceed the background by three
 * standard deviations (Poisson): noise then cuts about once in 300 rounds. */
#define NOISE_SIGMAS 3.0
/* Rounds the limit holds just under the knee before probing one above:
 * the knee is where losses began, so probing it often costs a loss each
 * time (8 rounds: a loss in ~170 requests at a 16-slot provider). */
#define KNEE_HOLD_ROUNDS 8
/* Clean rounds at or above the knee after which it is forgotten: the
 * provider's capacity has grown (or noise set the knee before the
 * background was known), so the limit may grow fast again. */
#define KNEE_FORGET_ROUNDS 8
/* A shut window: at least this many 429s in a row with no success. */
#define SHUT_RUN_MIN 4
/* Retry-After jitter of a shut window: up to 10 % of the wait, at most
 * 1 s, so daemons that share a key do not all come back in the same
 * millisecond, while a short hint is not stretched much. */
#define PAUSE_JITTER_FRACTION 0.1
#define PAUSE_JITTER_MAX_MS 1000
/* A run of 429s without a hint pauses this long. */
#define SHUT_DEFAULT_MS 1000
/* A wait beyond 2 min is a quota, not a burst: park visibly instead. */
#define PARK_THRESHOLD_MS 120000
/* Breaker (docs/design.md §6): the last 50 calls; with at least 20 of them
 * (fewer is noise) and half or more hard failures the provider is broken. */
#define BREAKER_WINDOW 50
#define BREAKER_MIN_CALLS 20
/* Open 30 s, doubling on each consecutive opening up to 5 min: long enough
 * for a deploy or failover, short enough to notice recovery. */
#define BREAKER_OPEN_MS 30000
#define BREAKER_OPEN_MAX_MS 300000
/* ×(1 ± 0.1): spreads the reopening of daemons that opened together. */
#define BREAKER_JITTER 0.1
/* Three probes: one success can be luck, three in a row is a provider. */
#define BREAKER_PROBES 3
/* A paused lane with no configured interval probes every 5 min: a topped
 * up balance resumes soon, a dead key costs 12 requests an hour. */
#define PROBE_INTERVAL_DEFAULT_MS 300000
/* Token budget: a tenth of the per-minute limit may go at once (the
 * provider's own bucket usually holds the whole minute, but a daemon that
 * restarts must not assume it is full). Estimates start at this many
 * tokens per request until answers say more. */
#define TOKEN_BURST_FRACTION 0.1
#define TOKEN_COST_DEFAULT 1000.0
/* α = 1/8 for the average token cost of a request. */
#define TOKEN_COST_ALPHA 0.125
#define TOKEN_PEAK_DECAY 64.0
/* Room for "<class>: <code> (request <id>)" with the outcome's maxima. */
#define LANE_REASON_MAX 384
#define LANE_LINE_MAX 512

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

static const char *const state_names[] = {
    [LANE_ACTIVE] = "active", [LANE_PAUSED] = "paused",
    [LANE_OPEN] = "open",     [LANE_HALF_OPEN] = "half-open",
    [LANE_PARKED] = "parked",
};

const char *
lane_state_name(enum lane_state s)
{
    if ((unsigned)s < sizeof(state_names) / sizeof(state_names[0]))
        return state_names[s];
    return "?";
}

const char *
lane_state_row(enum lane_state s)
{
    return lane_state_name(s == LANE_HALF_OPEN ? LANE_OPEN : s);
}

static int
clamp_int(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static int
limit_max(const struct lane *l)
{
    return l->p.concurrency_max > 1 ? l->p.concurrency_max : 1;
}

static int64_t
later(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* A hint's time, capped at HINT_CAP_MS from now; *capped says whether. */
static int64_t
cap_hint(int64_t at, int64_t now_ms, bool *capped)
{
    if (at > now_ms + HINT_CAP_MS) {
        *capped = true;
        return now_ms + HINT_CAP_MS;
    }
    return at;
}

/* The rate both the configuration and the provider allow, requests/s; 0
 * none. Hints only ever restrict: the advertised rate can lower a
 * configured one, never raise it. */
static double
full_rate(const struct lane *l)
{
    double cfg = l->p.rate_per_s > 0 ? l->p.rate_per_s : 0;
    double adv = l->adv_rate;

    if (cfg > 0 && adv > 0)
        return cfg < adv ? cfg : adv;
    return cfg > 0 ? cfg : adv;
}

/* The rate requests are spaced at: the known rate, or without one (and
 * once an RTT is known) the learned rate, the one the concurrency limit
 * delivers: limit / SRTT (Little's law). After a loss that is the rate the
 * provider accepted when it refused, and it probes upward with the limit,
 * one request per round trip at a time (+2.5 % at 40). Spacing a window's
 * requests over its round trip does not lower the average rate; it keeps
 * a silent bucket's small burst from refusing a window sent at once. */
static double
pace_rate(const struct lane *l)
{
    double rate = full_rate(l);

    if (rate > 0 && l->p.adaptive)
        return rate * l->share;
    if (rate > 0 || !l->p.adaptive || l->srtt_ms <= 0)
        return rate;
    return (double)l->limit * 1000.0 / l->srtt_ms;
}

static double
bucket_capacity(double rate)
{
    double cap = rate * PACER_BURST_S;
    return cap > 1.0 ? cap : 1.0;
}

static double
token_limit(const struct lane *l)
{
    double cfg = l->p.tokens_per_min > 0 ? l->p.tokens_per_min : 0;
    double adv = l->tok_adv;

    if (cfg > 0 && adv > 0)
        return cfg < adv ? cfg : adv;
    return cfg > 0 ? cfg : adv;
}

static double
token_capacity(const struct lane *l)
{
    return token_limit(l) * TOKEN_BURST_FRACTION;
}

static void
refill(struct lane *l, int64_t now_ms)
{
    double rate = pace_rate(l), tpm = token_limit(l);

    if (now_ms <= l->refill_ms)
        return;
    double dt = (double)(now_ms - l->refill_ms);
    if (l->share < 1.0) {
        /* The calm seconds at both ends of dt: the growth rate rises
         * linearly through them, so add its integral. */
        double c1 = (double)(now_ms - l->share_cut_ms - SHARE_CALM_MS);
        double c0 = c1 - dt;
        c1 = c1 > 0 ? c1 / 1000.0 : 0;
        c0 = c0 > 0 ? c0 / 1000.0 : 0;
        l->share += SHARE_GROW_PER_S * (dt / 1000.0 + (c1 * c1 - c0 * c0) / 2);
        if (l->share > 1.0)
            l->share = 1.0;
    }
    if (rate > 0) {
        l->tokens += dt * rate / 1000.0;
        if (l->tokens > bucket_capacity(rate))
            l->tokens = bucket_capacity(rate);
    }
    if (tpm > 0) {
        l->tok_level += dt * tpm / 60000.0;
        if (l->tok_level > token_capacity(l))
            l->tok_level = token_capacity(l);
    }
    l->refill_ms = now_ms;
}

/* Every change that answers a signal: answers to requests sent before it
 * are stale from now on. */
static void
bump(struct lane *l)
{
    l->epoch++;
    l->round_seq = l->seq;
    l->round_n = 0;
    l->round_losses = 0;
}

static bool
stale(const struct lane *l, const struct lane_ticket *t)
{
    return t->epoch < l->epoch;
}

/* The one place the state changes. Leaving a state clears what belonged
 * to it; entering one is a change (bump). */
static void
set_state(struct lane *l, enum lane_state s, const char *why)
{
    if (l->state == s)
        return;
    snprintf(l->change, sizeof(l->change), "%s→%s %s",
             lane_state_name(l->state), lane_state_name(s), why);
    l->state = s;
    l->probe_out = false;
    l->probes_sent = 0;
    l->probes_ok = 0;
    if (s == LANE_ACTIVE)
        l->reason[0] = '\0';
    bump(l);
}

struct lane *
lane_new(const char *name, const struct lane_params *p, int64_t now_ms)
{
    struct lane *l = xcalloc(1, sizeof(*l));

    l->name = xstrdup(name);
    l->line = xmalloc(LANE_LINE_MAX);
    l->line[0] = '\0';
    l->p = *p;
    l->state = LANE_ACTIVE;
    l->limit = clamp_int(p->concurrency_start, 1, limit_max(l));
    l->slow_start = true;
    /* One token, not a full bucket: a restarted daemon must not open with
     * a burst on a provider whose window our last run already used. The
     * token budget starts empty for the same reason. */
    l->tokens = 1.0;
    l->share = 1.0;
    l->rate_since = p->rate_per_s > 0 ? now_ms : 0;
    l->tok_cost = TOKEN_COST_DEFAULT;
    l->refill_ms = now_ms;
    l->probe_ms = now_ms;
    l->win_left = -1;
    return l;
}

void
lane_free(struct lane *l)
{
    if (l == NULL)
        return;
    free(l->name);
    free(l->line);
    free(l);
}

void
lane_configure(struct lane *l, const struct lane_params *p)
{
    l->p = *p;
    if (p->rate_per_s > 0 && l->rate_since == 0)
        l->rate_since = l->refill_ms;
    if (!p->adaptive)
        l->limit = clamp_int(p->concurrency_start, 1, limit_max(l));
    else
        l->limit = clamp_int(l->limit, 1, limit_max(l));
    double rate = full_rate(l);
    if (rate > 0 && l->tokens > bucket_capacity(rate))
        l->tokens = bucket_capacity(rate);
    if (token_limit(l) > 0 && l->tok_level > token_capacity(l))
        l->tok_level = token_capacity(l);
}

static int64_t
probe_interval(const struct lane *l)
{
    return l->p.probe_interval_ms > 0 ? l->p.probe_interval_ms
                                      : PROBE_INTERVAL_DEFAULT_MS;
}

/* Gate 1. Returns the most the state admits; sets *wake or *event. */
static int
admit_state(struct lane *l, int64_t now_ms, int64_t *wake, bool *event)
{
    switch (l->state) {
    case LANE_ACTIVE:
        return INT_MAX;
    case LANE_PAUSED:
        if (l->probe_out) {
            *event = true;
            return 0;
        }
        if (now_ms < l->probe_ms + probe_interval(l)) {
            *wake = l->probe_ms + probe_interval(l);
            return 0;
        }
        return 1;
    case LANE_OPEN:
        if (now_ms < l->open_until) {
            *wake = l->open_until;
            return 0;
        }
        set_state(l, LANE_HALF_OPEN, "after the open period");
        snprintf(l->reason, sizeof(l->reason),
                 "half-open: probing after %d openings", l->openings);
        /* fall through */
    case LANE_HALF_OPEN:
        if (l->probes_sent >= BREAKER_PROBES) {
            *event = true;
            return 0;
        }
        return BREAKER_PROBES - l->probes_sent;
    case LANE_PARKED:
        if (now_ms >= l->pause_until)
            set_state(l, LANE_ACTIVE, "at reset");
        return INT_MAX;
    }
    return 0;
}

/* One time gate: it admits `k` now and more at `open_ms`. The smallest
 * answer binds; its opening (the latest among gates tied at it) is when
 * to ask again. */
static void
gate(int *n, int64_t *wake, int k, int64_t open_ms)
{
    if (k < *n) {
        *n = k;
        *wake = open_ms;
    } else if (k == *n) {
        *wake = later(*wake, open_ms);
    }
}

int
lane_admit(struct lane *l, int64_t now_ms, int64_t *wake_ms)
{
    int64_t wake = 0;   /* when the binding time gates admit more */
    bool event = false; /* a gate waits for a request to finish */
    int n = admit_state(l, now_ms, &wake, &event);

    /* 2. pause-until (also the end of parking) */
    if (now_ms < l->pause_until)
        gate(&n, &wake, 0, l->pause_until);

    /* 3. pacers: the provider's window, requests, tokens */
    if (l->win_reset != 0 && now_ms >= l->win_reset) {
        l->win_reset = 0; /* the window reset: what is left is unknown */
        l->win_left = -1;
    }
    if (l->win_reset != 0 && l->win_left >= 0 && l->win_left < n)
        gate(&n, &wake, (int)l->win_left, l->win_reset);
    refill(l, now_ms);
    double rate = pace_rate(l);
    if (rate > 0 && l->tokens < (double)n) {
        /* when the next whole token is there */
        double missing = floor(l->tokens) + 1.0 - l->tokens;
        gate(&n, &wake, l->tokens < 1.0 ? 0 : (int)l->tokens,
             now_ms + 1 + (int64_t)(missing * 1000.0 / rate));
    }
    double tpm = token_limit(l);
    if (tpm > 0) {
        /* A provider admits a request only with its whole cost in the
         * bucket: the next one may be as large as the largest lately. */
        double need = l->tok_peak > l->tok_cost ? l->tok_peak : l->tok_cost;
        double k = l->tok_level < need
                       ? 0
                       : 1 + floor((l->tok_level - need) / l->tok_cost);
        if (k < (double)n) {
            double missing =
                l->tok_level < need ? need - l->tok_level : l->tok_cost;
            gate(&n, &wake, (int)k,
                 now_ms + 1 + (int64_t)(missing * 60000.0 / tpm));
        }
    }

    /* 4. concurrency: only requests finishing open it, and a time gate
     * behind it needs no timer. */
    int free_slots = l->limit - lane_in_flight(l);
    if (free_slots < 0)
        free_slots = 0;
    if (free_slots < n || (free_slots == n && n == 0)) {
        n = free_slots;
        event = true;
    }
    if (wake_ms != NULL)
        *wake_ms = event ? 0 : wake;
    return n;
}

void
lane_on_send(struct lane *l, int64_t now_ms, int64_t tokens,
             struct lane_ticket *t)
{
    refill(l, now_ms);
    if (pace_rate(l) > 0)
        l->tokens -= 1.0;
    if (l->win_reset != 0 && l->win_left > 0)
        l->win_left--;
    if (token_limit(l) > 0 && tokens > 0)
        l->tok_level -= (double)tokens;
    /* The peak decays by 1/64 per request, so one huge job is forgotten
     * within a few hundred. */
    l->tok_peak -= l->tok_peak / TOKEN_PEAK_DECAY;
    if ((double)tokens > l->tok_peak)
        l->tok_peak = (double)tokens;
    l->tok_seq += tokens > 0 ? tokens : 0;
    l->requests++;
    l->sent++;
    l->seq++;
    memset(t, 0, sizeof(*t));
    if (l->state == LANE_PAUSED) {
        /* A probe is a change: only its own answer may resume. */
        bump(l);
        l->probe_out = true;
        l->probe_ms = now_ms;
        t->probe = true;
    } else if (l->state == LANE_HALF_OPEN) {
        l->probes_sent++;
        t->probe = true;
    }
    t->sent_ms = now_ms;
    t->epoch = l->epoch;
    t->seq = l->seq;
    t->tok_seq = l->tok_seq;
    t->tokens = tokens > 0 ? tokens : 0;
    t->in_flight = lane_in_flight(l);
    t->paced = l->rate_since != 0 && now_ms - l->rate_since >= SHARE_GRACE_MS;
}

static bool
is_success(const struct outcome *o)
{
    return o->kind == OUTCOME_SUCCESS || o->kind == OUTCOME_ACCEPTED;
}

static bool
is_failure(const struct outcome *o, enum err_class c)
{
    return o->kind == OUTCOME_FAILURE && o->cls == c;
}

/* Capacity losses: the provider says it is over its limit or too slow. */
static bool
is_loss(const struct outcome *o)
{
    return o->kind == OUTCOME_FAILURE &&
           (o->cls == ERR_RATE_LIMITED || o->cls == ERR_UNAVAILABLE ||
            o->cls == ERR_TIMEOUT || o->http_status == 408);
}

/* A throttle: a 429, or a 503 with a retry hint. */
static bool
is_throttle(const struct outcome *o, int64_t now_ms)
{
    return is_failure(o, ERR_RATE_LIMITED) ||
           (is_failure(o, ERR_UNAVAILABLE) && o->hints.retry_at_ms > now_ms);
}

/* Hard failures for the breaker: the provider is broken, not busy. */
static bool
is_hard_failure(const struct outcome *o)
{
    if (o->kind != OUTCOME_FAILURE)
        return false;
    return o->cls == ERR_SERVER_ERROR || o->cls == ERR_TIMEOUT ||
           o->cls == ERR_NETWORK || o->http_status == 500 ||
           o->http_status == 502 || o->http_status == 504;
}

/* Case-insensitive substring search; ASCII folding is enough for the
 * English words matched here. */
static bool
contains_word(const char *hay, const char *word)
{
    size_t n = strlen(word);

    for (; *hay != '\0'; hay++) {
        size_t i = 0;
        while (i < n && hay[i] != '\0' &&
               tolower((unsigned char)hay[i]) == word[i])
            i++;
        if (i == n)
            return true;
    }
    return false;
}

/* A 403 usually refuses one resource: FLORA's archived technique or
 * read-only key for one operation, Firemoon's "does not have access to
 * provider: kling", Lamatic's flow of another project. Pausing the lane
 * for those would stop every other model on a good key. Only wording that
 * names the key or the account itself pauses the lane. */
static const char *const key_wide_words[] = {
    "invalid_api_key", /* FlowAPI / OpenAI: the key is dead */
    "suspended",       /* Firemoon: "Account suspended" */
    "deactivated",     /* OpenAI-compatible "account_deactivated" */
    "revoked",         /* FLORA: a revoked key */
};

static bool
is_key_failure(const struct outcome *o)
{
    if (is_failure(o, ERR_AUTH) || is_failure(o, ERR_INSUFFICIENT_BALANCE))
        return true;
    if (!is_failure(o, ERR_PERMISSION))
        return false;
    for (size_t i = 0; i < sizeof(key_wide_words) / sizeof(*key_wide_words);
         i++) {
        if (contains_word(o->code, key_wide_words[i]) ||
            contains_word(o->message, key_wide_words[i]))
            return true;
    }
    return false;
}

/* The code when the provider gave one, else the class: for reasons. */
static const char *
code_or_class(const struct outcome *o)
{
    return o->code[0] != '\0' ? o->code : err_class_name(o->cls);
}

static void
sample_rtt(struct lane *l, const struct outcome *o, int64_t rtt_ms)
{
    /* A timeout's duration is our timeout, not the provider's RTT, and a
     * transport failure never made the round trip (Karn's rule in
     * spirit). */
    if (rtt_ms <= 0 || o->http_status == 0 || is_failure(o, ERR_TIMEOUT))
        return;
    if (l->srtt_ms <= 0)
        l->srtt_ms = (double)rtt_ms;
    else
        l->srtt_ms += SRTT_ALPHA * ((double)rtt_ms - l->srtt_ms);
}

static void
format_utc(char *out, size_t n, int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL ||
        strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, n, "%lld ms", (long long)ms);
}

/* Learns the provider's advertised rate, request window and token budget
 * from any answer, fresh or not: these are facts about the provider now. */
static void
learn_limits(struct lane *l, const struct lane_ticket *t,
             const struct outcome *o, int64_t now_ms)
{
    const struct hints *h = &o->hints;
    bool capped = false;

    if (h->rl_limit > 0) {
        int64_t window =
            h->rl_window_ms > 0 ? h->rl_window_ms : RATE_WINDOW_DEFAULT_MS;
        if (window > HINT_CAP_MS) {
            window = HINT_CAP_MS;
            capped = true;
        }
        l->adv_rate = (double)h->rl_limit * 1000.0 / (double)window;
        if (l->rate_since == 0)
            l->rate_since = now_ms;
        if (l->adv_rate < RATE_MIN_PER_S)
            l->adv_rate = RATE_MIN_PER_S;
        double cap = bucket_capacity(full_rate(l));
        if (l->tokens > cap)
            l->tokens = cap;
    }
    if (h->rl_remaining >= 0 && h->rl_reset_ms > now_ms) {
        /* What the provider had left when it answered, less what we sent
         * after this request. */
        long left = h->rl_remaining - (long)(l->seq - t->seq);
        l->win_left = left > 0 ? left : 0;
        l->win_reset = cap_hint(h->rl_reset_ms, now_ms, &capped);
    }
    if (h->tok_limit > 0)
        l->tok_adv = (double)h->tok_limit;
    if (h->tok_remaining >= 0 && token_limit(l) > 0) {
        double later_sends = (double)(l->tok_seq - t->tok_seq);
        l->tok_level = (double)h->tok_remaining - later_sends;
        if (l->tok_level > token_capacity(l))
            l->tok_level = token_capacity(l);
    } else if (o->tokens_used > 0 && t->tokens > 0) {
        /* No header: the answer's own count corrects our estimate. */
        l->tok_level += (double)(t->tokens - o->tokens_used);
    }
    if (o->tokens_used > 0)
        l->tok_cost +=
            TOKEN_COST_ALPHA * ((double)o->tokens_used - l->tok_cost);
    else if (t->tokens > 0)
        l->tok_cost += TOKEN_COST_ALPHA * ((double)t->tokens - l->tok_cost);
    (void)capped; /* a far reset parks the lane (lane_on_done) */
}

/* Pauses the whole lane until `at` (a shut window) plus jitter, parking it
 * when that is beyond PARK_THRESHOLD_MS. */
static void
shut(struct lane *l, const struct outcome *o, int64_t at, int64_t now_ms,
     double u)
{
    bool capped = false;
    int64_t wait = at - now_ms;
    double spread = (double)wait * PAUSE_JITTER_FRACTION;

    if (spread > PAUSE_JITTER_MAX_MS)
        spread = PAUSE_JITTER_MAX_MS;
    if (!(u > 0.0))
        u = 0.0;
    if (u >= 1.0)
        u = 1.0;
    int64_t until = cap_hint(at + (int64_t)(u * spread), now_ms, &capped);
    capped = capped || o->hints.asked_ms > 0; /* cut when it was read */
    l->run = 0;
    l->run_hint = 0;
    if (until <= l->pause_until)
        return;
    l->pause_until = until;
    bump(l);
    char when[40];
    format_utc(when, sizeof(when), until);
    if (until - now_ms > PARK_THRESHOLD_MS &&
        (l->state == LANE_ACTIVE || l->state == LANE_PARKED)) {
        set_state(l, LANE_PARKED, "after a shut window");
        snprintf(l->reason, sizeof(l->reason), "parked until %s after %s%s",
                 when, code_or_class(o),
                 capped ? " (hint capped at 24 h)" : "");
    } else {
        snprintf(l->change, sizeof(l->change),
                 "paused until %s after %s (window shut)%s", when,
                 code_or_class(o), capped ? " (hint capped at 24 h)" : "");
    }
}

/* The evidence of a shut window in one answer: remaining 0 with a reset on
 * a 429, or Firemoon's resetAt. 0 none. */
static int64_t
shut_hint(const struct outcome *o, int64_t now_ms)
{
    if (o->hints.shut_until_ms > now_ms)
        return o->hints.shut_until_ms;
    if (is_failure(o, ERR_RATE_LIMITED) && o->hints.rl_remaining == 0 &&
        o->hints.rl_reset_ms > now_ms)
        return o->hints.rl_reset_ms;
    return 0;
}

static void
key_pause(struct lane *l, const struct outcome *o, int64_t now_ms)
{
    set_state(l, LANE_PAUSED, "after a key failure");
    bump(l); /* a pause again while paused is a change too */
    l->probe_out = false;
    l->probe_ms = now_ms;
    if (o->request_id[0] != '\0')
        snprintf(l->reason, sizeof(l->reason), "%s: %.128s (request %.127s)",
                 err_class_name(o->cls), code_or_class(o), o->request_id);
    else
        snprintf(l->reason, sizeof(l->reason), "%s: %.128s",
                 err_class_name(o->cls), code_or_class(o));
}

static void
ring_clear(struct lane *l)
{
    memset(l->ring, 0, sizeof(l->ring));
    l->ring_len = 0;
    l->ring_next = 0;
    l->ring_hard = 0;
}

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
    set_state(l, LANE_OPEN, "after hard failures");
    ring_clear(l);
}

static void
breaker_record(struct lane *l, const struct outcome *o, int64_t now_ms,
               double u)
{
    bool hard = is_hard_failure(o);

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
static void
breaker_probe(struct lane *l, const struct outcome *o, int64_t now_ms, double u)
{
    if (is_hard_failure(o)) {
        breaker_open(l, now_ms, u);
        snprintf(l->reason, sizeof(l->reason),
                 "breaker open: probe failed with %s", code_or_class(o));
        return;
    }
    if (++l->probes_ok >= BREAKER_PROBES) {
        set_state(l, LANE_ACTIVE, "after 3 good probes");
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

static void
count(struct lane *l, const struct outcome *o, int64_t now_ms)
{
    if (is_success(o))
        l->succeeded++;
    else if (is_throttle(o, now_ms))
        l->throttled++;
    else
        l->failed++;
}

/* A fresh success of an active lane: the limit may grow. */
static void
grow(struct lane *l, int in_flight)
{
    /* An idle lane proves nothing about capacity: grow only while at
     * least half the limit is in use. */
    if (!l->p.adaptive || in_flight * 2 < l->limit)
        return;
    if (l->slow_start) {
        l->limit++;
    } else if (l->knee > 0 && l->limit < l->knee - 1) {
        /* Back to just under the knee at slow start's pace. */
        l->limit++;
    } else if (l->knee == 0 && ++l->acked >= l->limit) {
        /* +1/limit per success, counted in whole successes. */
        l->limit++;
        l->acked = 0;
    }
    /* At or above the knee, growth waits for clean rounds (round_end). */
    if (l->limit > limit_max(l))
        l->limit = limit_max(l);
}

/* A round ended (one of its own requests came back). At the knee the
 * limit grows only here: one step per KNEE_HOLD_ROUNDS clean rounds. */
static void
round_end(struct lane *l, int64_t now_ms)
{
    if (l->p.adaptive && l->knee > 0 && !l->round_cut &&
        l->state == LANE_ACTIVE && l->limit >= l->knee - 1) {
        l->hold++;
        if (l->limit >= l->knee)
            l->above++;
        if (l->above >= KNEE_FORGET_ROUNDS) {
            /* The provider grew: forget the knee. */
            l->knee = 0;
            l->slow_start = true;
            l->hold = 0;
            l->above = 0;
        } else if (l->hold >= KNEE_HOLD_ROUNDS && l->limit < limit_max(l)) {
            l->limit++;
            l->hold = 0;
        }
    }
    l->round_seq = l->seq;
    l->round_ms = now_ms;
    l->round_n = 0;
    l->round_losses = 0;
    l->round_cut = false;
}

/* Congestion: one reaction (a cut, and the knee), then the answers
 * already on their way are stale. With a known rate and the limit not
 * full, the pacer was what the provider refused: the limit stays. */
static void
congestion(struct lane *l, const struct lane_ticket *t)
{
    bool full = t->in_flight >= l->limit;

    l->slow_start = false;
    l->round_cut = true;
    if (!l->p.adaptive || (!full && full_rate(l) > 0))
        return; /* nothing to change: nothing goes stale */
    /* Where losses began: a later loss at a higher count (requests sent
     * into a limit just cut) does not raise it. */
    if (l->knee == 0 || t->in_flight < l->knee)
        l->knee = t->in_flight;
    l->limit = (int)(l->limit * AIMD_BETA);
    if (l->limit < 1)
        l->limit = 1;
    l->acked = 0;
    l->hold = 0;
    l->above = 0;
    bump(l);
}

/* A fresh 429 to a request sent under a known rate, the limit not full:
 * the pacer sent no more than the rate, so the provider's bucket is
 * shared (other daemons on the same key). The second within SHARE_ARM_MS
 * cuts: the share yields ×SHARE_BETA; answers already on their way are
 * stale. Refused at random in proportion to what each sends, daemons
 * that all cut this way and grow back alike converge to equal shares; a
 * lone daemon is hardly ever refused and keeps the whole rate. */
static void
share_refused(struct lane *l, int64_t now_ms)
{
    bool armed =
        l->share_429_ms != 0 && now_ms - l->share_429_ms <= SHARE_ARM_MS;

    l->share_429_ms = now_ms;
    if (!armed)
        return;
    l->share_cut_ms = now_ms;
    l->share *= SHARE_BETA;
    if (l->share < SHARE_MIN)
        l->share = SHARE_MIN;
    double cap = bucket_capacity(pace_rate(l));
    if (l->tokens > cap)
        l->tokens = cap;
    bump(l);
}

/* A fresh loss: noise, congestion, or part of a shut window. */
static void
on_loss(struct lane *l, const struct lane_ticket *t, const struct outcome *o,
        int64_t now_ms, double u)
{
    l->round_losses++;
    double n = (double)(l->round_n > t->in_flight ? l->round_n : t->in_flight);
    double expect = n * l->bg;
    bool congested =
        (double)l->round_losses > expect + NOISE_SIGMAS * sqrt(expect);

    if (is_throttle(o, now_ms) && l->p.adaptive && t->paced &&
        t->in_flight < l->limit)
        share_refused(l, now_ms);
    if (is_throttle(o, now_ms)) {
        int run_min = l->limit / 2 > SHUT_RUN_MIN ? l->limit / 2 : SHUT_RUN_MIN;
        l->run++;
        l->run_hint = later(l->run_hint, o->hints.retry_at_ms);
        if (l->run >= run_min) {
            int64_t at =
                l->run_hint > now_ms ? l->run_hint : now_ms + SHUT_DEFAULT_MS;
            shut(l, o, at, now_ms, u);
            return;
        }
    }
    if (congested)
        congestion(l, t);
}

/* The background loss rate: only answers below the knee make it (losses
 * where they began are the signal, not the noise). An average of all
 * answers until there are 1 / BG_ALPHA of them, so the first few losses of
 * a noisy provider teach its noise quickly. */
static bool
below_knee(const struct lane *l, const struct lane_ticket *t)
{
    return l->knee == 0 || t->in_flight < l->knee;
}

static void
learn_background(struct lane *l, bool loss)
{
    double a = (double)(l->bg_n + BG_PRIOR + 1) * BG_ALPHA < 1.0
                   ? 1.0 / (double)(l->bg_n + BG_PRIOR + 1)
                   : BG_ALPHA;
    l->bg += a * ((loss ? 1.0 : 0.0) - l->bg);
    l->bg_n++;
}

/* What a fresh answer (sent in the lane's current epoch) may change. */
static void
on_fresh(struct lane *l, const struct lane_ticket *t, const struct outcome *o,
         int64_t now_ms, double u)
{
    bool loss = is_loss(o);
    /* Judged before this answer can move the knee. */
    bool low = below_knee(l, t);

    /* A round is a round trip: one of its own requests answered, and at
     * least one SRTT (a refusal sent this round comes back at once). */
    if (t->seq > l->round_seq && l->round_n > 0 &&
        (double)(now_ms - l->round_ms) >= l->srtt_ms)
        round_end(l, now_ms);
    l->round_n++;
    if (is_success(o)) {
        l->run = 0;
        l->run_hint = 0;
        if (l->state == LANE_ACTIVE)
            grow(l, lane_in_flight(l) + 1); /* this one included */
    }
    if (loss && l->state == LANE_ACTIVE)
        on_loss(l, t, o, now_ms, u);
    /* After the test: a round is judged against earlier answers. */
    if (low)
        learn_background(l, loss);

    if (l->state == LANE_ACTIVE) {
        breaker_record(l, o, now_ms, u);
    } else if (l->state == LANE_HALF_OPEN && t->probe) {
        breaker_probe(l, o, now_ms, u);
    } else if (l->state == LANE_PAUSED && t->probe) {
        if (is_success(o)) {
            set_state(l, LANE_ACTIVE, "after a good probe");
        } else if (!is_key_failure(o)) {
            /* The probe's answer says nothing about the key: wait one
             * more interval rather than probing again at once. */
            l->probe_out = false;
            l->probe_ms = now_ms;
        }
    }
}

bool
lane_on_done(struct lane *l, const struct lane_ticket *t,
             const struct outcome *o, int64_t now_ms, double u)
{
    enum lane_state state0 = l->state;
    int limit0 = l->limit;
    int64_t pause0 = l->pause_until;

    assert(l->requests > 0);
    l->requests--;
    count(l, o, now_ms);
    sample_rtt(l, o, now_ms - t->sent_ms);
    refill(l, now_ms);
    learn_limits(l, t, o, now_ms);

    if (stale(l, t) && is_success(o) && below_knee(l, t))
        learn_background(l, false); /* a success is background anyway */
    if (!stale(l, t))
        on_fresh(l, t, o, now_ms, u);
    else if (l->state == LANE_PAUSED && t->probe)
        l->probe_out = false; /* a probe overtaken by a new pause */
    else if (l->state == LANE_ACTIVE && is_success(o) && l->knee > 0 &&
             l->limit < l->knee - 1)
        /* Back to just under the knee needs no fresh evidence: the knee is
         * what the last cut learned. */
        grow(l, lane_in_flight(l) + 1);

    /* Facts, fresh or not: a dead key, a shut window. */
    if (is_key_failure(o) &&
        (l->state != LANE_PAUSED || t->probe || !stale(l, t)))
        key_pause(l, o, now_ms);
    int64_t hint = shut_hint(o, now_ms);
    if (hint == 0 && o->hints.rl_remaining == 0 &&
        o->hints.rl_reset_ms > now_ms + PARK_THRESHOLD_MS)
        hint = o->hints.rl_reset_ms; /* a quota used up: park visibly */
    if (hint != 0 && l->state != LANE_PAUSED)
        shut(l, o, hint, now_ms, u);

    if (l->state == state0 && l->limit == limit0 && l->pause_until == pause0)
        return false;
    const char *why = is_success(o) ? "success" : err_class_name(o->cls);
    if (l->state != state0 && l->limit != limit0)
        snprintf(l->change, sizeof(l->change), "%s→%s, limit %d→%d after %s",
                 lane_state_name(state0), lane_state_name(l->state), limit0,
                 l->limit, why);
    else if (l->state != state0)
        snprintf(l->change, sizeof(l->change), "%s→%s after %s",
                 lane_state_name(state0), lane_state_name(l->state), why);
    else if (l->limit != limit0)
        snprintf(l->change, sizeof(l->change), "limit %d→%d after %s", limit0,
                 l->limit, why);
    return true;
}

void
lane_on_abort(struct lane *l, const struct lane_ticket *t)
{
    assert(l->requests > 0);
    l->requests--;
    if (token_limit(l) > 0)
        l->tok_level += (double)t->tokens;
    if (stale(l, t))
        return;
    if (l->state == LANE_PAUSED && t->probe)
        l->probe_out = false;
    else if (l->state == LANE_HALF_OPEN && t->probe)
        l->probes_sent--; /* proved nothing: its slot is free again */
}

void
lane_on_waiting(struct lane *l, int delta)
{
    l->waiting += delta;
    assert(l->waiting >= 0);
}

void
lane_resume(struct lane *l, int64_t now_ms)
{
    (void)now_ms; /* an operator's resume takes effect at once */
    l->pause_until = 0;
    l->win_reset = 0;
    l->win_left = -1;
    l->openings = 0;
    ring_clear(l);
    if (l->state != LANE_ACTIVE)
        set_state(l, LANE_ACTIVE, "by the operator");
    else
        bump(l);
}

enum lane_state
lane_state(const struct lane *l)
{
    return l->state;
}

const char *
lane_reason(const struct lane *l)
{
    return l->state == LANE_ACTIVE ? "" : l->reason;
}

int
lane_limit(const struct lane *l)
{
    return l->limit;
}

int
lane_requests(const struct lane *l)
{
    return l->requests;
}

int
lane_waiting(const struct lane *l)
{
    return l->waiting;
}

int
lane_in_flight(const struct lane *l)
{
    return l->requests + l->waiting;
}

int64_t
lane_pause_until(const struct lane *l)
{
    return l->pause_until;
}

const char *
lane_describe(const struct lane *l)
{
    /* l->line is a pointer member: the const lane still owns a writable
     * buffer, which is what "borrowed until the next call" refers to. */
    switch (l->state) {
    case LANE_ACTIVE:
        snprintf(l->line, LANE_LINE_MAX, "%s limit %d (%d in flight)", l->name,
                 l->limit, lane_in_flight(l));
        break;
    case LANE_PAUSED:
        snprintf(l->line, LANE_LINE_MAX, "%s paused: %s", l->name, l->reason);
        break;
    case LANE_OPEN:
    case LANE_HALF_OPEN:
    case LANE_PARKED:
        snprintf(l->line, LANE_LINE_MAX, "%s %s", l->name, l->reason);
        break;
    }
    return l->line;
}

const char *
lane_name(const struct lane *l)
{
    return l->name;
}

const char *
lane_last_change(const struct lane *l)
{
    return l->change;
}

double
lane_rate(const struct lane *l)
{
    return full_rate(l) > 0 || !l->slow_start ? pace_rate(l) : 0;
}

const char *
lane_rate_source(const struct lane *l)
{
    double cfg = l->p.rate_per_s;

    if (cfg > 0 && (l->adv_rate <= 0 || cfg <= l->adv_rate))
        return "configured";
    if (l->adv_rate > 0)
        return "advertised";
    return lane_rate(l) > 0 ? "learned" : "";
}

double
lane_token_limit(const struct lane *l)
{
    return token_limit(l);
}

int64_t
lane_tokens_available(const struct lane *l)
{
    return token_limit(l) > 0 ? (int64_t)floor(l->tok_level) : 0;
}

int64_t
lane_open_until(const struct lane *l)
{
    return l->state == LANE_OPEN ? l->open_until : 0;
}

int64_t
lane_sent(const struct lane *l)
{
    return l->sent;
}

int64_t
lane_succeeded(const struct lane *l)
{
    return l->succeeded;
}

int64_t
lane_failed(const struct lane *l)
{
    return l->failed;
}

int64_t
lane_throttled(const struct lane *l)
{
    return l->throttled;
}
