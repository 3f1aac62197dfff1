/*
 * lane: per-provider flow control (docs/design.md §6). A lane answers one
 * question, "how many requests may start now?", with four gates in order, the
 * smallest answer winning:
 *
 *   1. state   active admits; paused (dead key, no balance) admits one
 *              probe per probe interval; open (circuit breaker) admits
 *              nothing for its period, then three probes (half-open);
 *              parked admits nothing until its far reset.
 *   2. pause   a Retry-After or reset hint on a 429/503 stops the lane.
 *   3. pacer   a token bucket at 0.9 × the configured or advertised rate,
 *              and nothing before the reset of an exhausted window.
 *   4. limit   requests in flight plus waiting async runs stay below the
 *              concurrency limit, adapted by loss-based AIMD.
 *
 * Outcomes feed back through lane_on_done: successes grow the limit (slow
 * start until the first loss, then +1/limit), 429/503/408/timeouts cut it
 * ×0.7 at most once per smoothed RTT, key failures pause the lane, hard
 * failures fill the breaker's ring.
 *
 * Pure: no clock, no randomness, no I/O. "now" and the uniform draw are
 * parameters, so each rule has a unit test that does not sleep.
 *
 * Rejected: a delay-based limiter (Vegas, gradient). A generation's latency
 * depends on the prompt and the model far more than on the provider's
 * load, so RTT says little about queueing there; a 429 or 503 is the
 * provider's own, explicit congestion signal. Half-open is a sub-state of
 * LANE_OPEN rather than a fifth state, so operators see exactly the four
 * provider states of docs/contract.md.
 */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sluice/lane.h"
#include "sluice/outcome.h"
#include "sluice/xmalloc.h"

/* ×0.9: run just under the provider's rate, so that its window boundaries,
 * clock skew and our burst never reach it. */
#define PACER_HEADROOM 0.9
/* Burst: a tenth of a second of the full rate, at least one token. The
 * bucket refills at 0.9 × rate, so burst + refill in any one second stays
 * within the provider's rate even for a per-second limiter; a per-minute
 * limiter sees far less. A full second of burst would let one second
 * carry 1.9 × the rate. */
#define PACER_BURST_S 0.1
/* X-RateLimit-Limit without a stated window: Firemoon's and most others'
 * limits are per minute. */
#define RATE_WINDOW_DEFAULT_MS 60000
/* ×0.7: the multiplicative decrease of AWS SDKs' adaptive retry (CUBIC's
 * beta): gentler than TCP's halving, as one 429 often means one unlucky
 * window rather than a provider at half our rate. */
#define AIMD_BETA 0.7
/* α = 1/8: TCP's SRTT gain (RFC 6298), smooth yet quick to follow. */
#define SRTT_ALPHA 0.125
/* Retry-After jitter: up to 10 % of the wait, at most 1 s, so daemons that
 * share a key do not all come back in the same millisecond, while a short
 * hint is not stretched much. */
#define PAUSE_JITTER_FRACTION 0.1
#define PAUSE_JITTER_MAX_MS 1000
/* A wait beyond 2 min is a quota, not a burst: park visibly instead. */
#define PARK_THRESHOLD_MS 120000
/* Quotas reset at least daily; a hint beyond a day is a clock or parsing
 * error, and waking once a day to find out costs one request. */
#define PARK_MAX_MS 86400000
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

    int limit;       /* concurrency limit, 1 … concurrency_max */
    int acked;       /* successes since the last additive step */
    bool slow_start; /* true until the first loss (or after a breaker) */
    int requests;    /* requests in flight */
    int waiting;     /* async runs in waiting */
    double srtt_ms;  /* smoothed RTT; 0 before the first sample */
    int64_t cut_ms;  /* unix ms of the last ×0.7; 0 never */

    int64_t pause_until; /* gate 2 (and the end of parking), unix ms; 0 */

    double learned_rate;  /* advertised requests/s; 0 unknown */
    double tokens;        /* pacer bucket; may go below 0 when overdrawn */
    int64_t refill_ms;    /* unix ms the bucket was last refilled */
    int64_t window_reset; /* exhausted window resets at, unix ms; 0 */

    int64_t probe_ms; /* paused: unix ms of the pause or the last probe */
    bool probe_out;   /* paused: the probe is in flight */

    bool ring[BREAKER_WINDOW]; /* true = hard failure */
    int ring_len;              /* calls in the ring, ≤ BREAKER_WINDOW */
    int ring_next;             /* slot of the next call */
    int ring_hard;             /* hard failures in the ring */
    int openings;              /* consecutive breaker openings */
    int64_t open_until;        /* open: unix ms the period ends */
    bool half_open;            /* open: period over, probing */
    int probes_sent;           /* half-open: probes sent */
    int probes_out;            /* half-open: probes in flight */
    int probes_ok;             /* half-open: probes that did not hard-fail */
    int stale;                 /* open: requests from before it opened */

    int64_t sent, succeeded, failed, throttled; /* counters */
};

static const char *const state_names[] = {
    [LANE_ACTIVE] = "active",
    [LANE_PAUSED] = "paused",
    [LANE_OPEN] = "open",
    [LANE_PARKED] = "parked",
};

const char *
lane_state_name(enum lane_state s)
{
    if ((unsigned)s < sizeof(state_names) / sizeof(state_names[0]))
        return state_names[s];
    return "?";
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

/* The full rate both sources allow, requests/s; 0 none. Hints only ever
 * restrict: the advertised rate can lower a configured one, never raise
 * it. */
static double
full_rate(const struct lane *l)
{
    double cfg = l->p.rate_per_s > 0 ? l->p.rate_per_s : 0;
    double adv = l->learned_rate;

    if (cfg > 0 && adv > 0)
        return cfg < adv ? cfg : adv;
    return cfg > 0 ? cfg : adv;
}

static double
bucket_capacity(double rate)
{
    double cap = rate * PACER_BURST_S;
    return cap > 1.0 ? cap : 1.0;
}

static void
pacer_refill(struct lane *l, int64_t now_ms)
{
    double rate = full_rate(l);

    if (rate > 0 && now_ms > l->refill_ms) {
        double cap = bucket_capacity(rate);
        l->tokens +=
            (double)(now_ms - l->refill_ms) * rate * PACER_HEADROOM / 1000.0;
        if (l->tokens > cap)
            l->tokens = cap;
    }
    if (now_ms > l->refill_ms)
        l->refill_ms = now_ms;
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
     * a burst on a provider whose window our last run already used. */
    l->tokens = 1.0;
    l->refill_ms = now_ms;
    l->probe_ms = now_ms;
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
    if (!p->adaptive)
        l->limit = clamp_int(p->concurrency_start, 1, limit_max(l));
    else
        l->limit = clamp_int(l->limit, 1, limit_max(l));
    double rate = full_rate(l);
    if (rate > 0 && l->tokens > bucket_capacity(rate))
        l->tokens = bucket_capacity(rate);
}

static int64_t
probe_interval(const struct lane *l)
{
    return l->p.probe_interval_ms > 0 ? l->p.probe_interval_ms
                                      : PROBE_INTERVAL_DEFAULT_MS;
}

static void
set_state(struct lane *l, enum lane_state s)
{
    l->state = s;
    if (s == LANE_ACTIVE)
        l->reason[0] = '\0';
}

static int64_t
later(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

int
lane_admit(struct lane *l, int64_t now_ms, int64_t *wake_ms)
{
    int n = INT_MAX;
    int64_t wake = 0;   /* latest opening time of the closed time gates */
    bool event = false; /* a gate waits for a request to finish */

    /* 1. state */
    switch (l->state) {
    case LANE_ACTIVE:
        break;
    case LANE_PAUSED:
        if (l->probe_out) {
            n = 0;
            event = true;
        } else if (now_ms < l->probe_ms + probe_interval(l)) {
            n = 0;
            wake = l->probe_ms + probe_interval(l);
        } else {
            n = 1;
        }
        break;
    case LANE_OPEN:
        if (!l->half_open && now_ms >= l->open_until)
            l->half_open = true;
        if (!l->half_open) {
            n = 0;
            wake = l->open_until;
        } else if (l->probes_sent >= BREAKER_PROBES) {
            n = 0;
            event = true;
        } else {
            n = BREAKER_PROBES - l->probes_sent;
        }
        break;
    case LANE_PARKED:
        if (now_ms >= l->pause_until) {
            set_state(l, LANE_ACTIVE);
            snprintf(l->change, sizeof(l->change), "parked→active at reset");
        }
        break;
    }

    /* 2. pause-until (also the end of parking) */
    if (now_ms < l->pause_until) {
        n = 0;
        wake = later(wake, l->pause_until);
    }

    /* 3. pacer: an exhausted window, then the token bucket */
    if (now_ms < l->window_reset) {
        n = 0;
        wake = later(wake, l->window_reset);
    }
    pacer_refill(l, now_ms);
    double rate = full_rate(l) * PACER_HEADROOM;
    if (rate > 0) {
        /* The epsilon absorbs rounding: a wake computed for "one token"
         * must find one. */
        double whole = floor(l->tokens + 1e-9);
        if (whole < 1) {
            n = 0;
            double ms = ceil((1.0 - l->tokens) * 1000.0 / rate - 1e-9);
            wake = later(wake, now_ms + (int64_t)(ms > 1 ? ms : 1));
        } else if (whole < n) {
            n = (int)whole;
        }
    }

    /* 4. concurrency */
    int slots = l->limit - lane_in_flight(l);
    if (slots <= 0) {
        n = 0;
        event = true;
    } else if (slots < n) {
        n = slots;
    }

    *wake_ms = n == 0 && !event ? wake : 0;
    return n;
}

void
lane_on_send(struct lane *l, int64_t now_ms)
{
    pacer_refill(l, now_ms);
    if (full_rate(l) > 0)
        l->tokens -= 1.0;
    l->requests++;
    l->sent++;
    if (l->state == LANE_PAUSED) {
        l->probe_out = true;
        l->probe_ms = now_ms;
    } else if (l->state == LANE_OPEN && l->half_open) {
        l->probes_sent++;
        l->probes_out++;
    }
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
learn_rate(struct lane *l, const struct outcome *o, int64_t now_ms)
{
    const struct hints *h = &o->hints;

    if (h->rl_limit > 0) {
        int64_t window =
            h->rl_window_ms > 0 ? h->rl_window_ms : RATE_WINDOW_DEFAULT_MS;
        l->learned_rate = (double)h->rl_limit * 1000.0 / (double)window;
        double cap = bucket_capacity(full_rate(l));
        if (l->tokens > cap)
            l->tokens = cap;
    }
    if (h->rl_remaining == 0 && h->rl_reset_ms > now_ms)
        l->window_reset = later(l->window_reset, h->rl_reset_ms);
}

static void
aimd_grow(struct lane *l, int in_flight)
{
    /* An idle lane proves nothing about capacity: grow only while at
     * least half the limit is in use. */
    if (!l->p.adaptive || in_flight * 2 < l->limit)
        return;
    /* +1/limit per success, counted in whole successes: after `limit`
     * of them, one step (no floating-point residue). */
    if (l->slow_start || ++l->acked >= l->limit) {
        l->limit++;
        l->acked = 0;
    }
    if (l->limit > limit_max(l))
        l->limit = limit_max(l);
}

static void
aimd_cut(struct lane *l, int64_t rtt_ms, int64_t now_ms)
{
    if (!l->p.adaptive)
        return;
    l->slow_start = false;
    /* Losses within one smoothed RTT of the last cut are answers to the
     * same window of requests: they count once. Before any RTT sample
     * (only timeouts so far) the loss's own duration stands in. */
    double window = l->srtt_ms > 0 ? l->srtt_ms : (double)rtt_ms;
    if (l->cut_ms != 0 && (double)(now_ms - l->cut_ms) < window)
        return;
    l->cut_ms = now_ms;
    l->limit = (int)(l->limit * AIMD_BETA);
    if (l->limit < 1)
        l->limit = 1;
    l->acked = 0;
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

/* The hint of a throttle: Retry-After and friends, or for a 429 the reset
 * of a window it says is exhausted. 0 none. */
static int64_t
throttle_hint(const struct outcome *o, int64_t now_ms)
{
    if (o->kind != OUTCOME_FAILURE ||
        (o->cls != ERR_RATE_LIMITED && o->cls != ERR_UNAVAILABLE))
        return 0;
    if (o->hints.retry_at_ms > now_ms)
        return o->hints.retry_at_ms;
    if (o->cls == ERR_RATE_LIMITED && o->hints.rl_remaining == 0 &&
        o->hints.rl_reset_ms > now_ms)
        return o->hints.rl_reset_ms;
    return 0;
}

static void
throttle_pause(struct lane *l, const struct outcome *o, int64_t hint,
               int64_t now_ms, double u)
{
    int64_t wait = hint - now_ms;
    double spread = (double)wait * PAUSE_JITTER_FRACTION;

    if (spread > PAUSE_JITTER_MAX_MS)
        spread = PAUSE_JITTER_MAX_MS;
    if (!(u > 0.0))
        u = 0.0;
    if (u >= 1.0)
        u = 1.0;
    int64_t until = hint + (int64_t)(u * spread);
    if (wait > PARK_THRESHOLD_MS) {
        if (until > now_ms + PARK_MAX_MS)
            until = now_ms + PARK_MAX_MS;
        if (l->state == LANE_ACTIVE || l->state == LANE_PARKED) {
            char when[40];
            format_utc(when, sizeof(when), hint);
            l->state = LANE_PARKED;
            snprintf(l->reason, sizeof(l->reason), "parked until %s after %s",
                     when, code_or_class(o));
        }
    }
    l->pause_until = later(l->pause_until, until);
}

static void
key_pause(struct lane *l, const struct outcome *o, int64_t now_ms)
{
    l->state = LANE_PAUSED;
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
    l->state = LANE_OPEN;
    l->half_open = false;
    l->probes_sent = 0;
    l->probes_out = 0;
    l->probes_ok = 0;
    l->stale = l->requests;
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
        l->openings++;
        breaker_open(l, now_ms, u);
        snprintf(l->reason, sizeof(l->reason), "breaker open: %d of %d failed",
                 hard_calls, calls);
    }
}

/* An outcome while the breaker is open: a request from before it opened
 * (ignored), or a half-open probe. */
static void
breaker_probe(struct lane *l, const struct outcome *o, int64_t now_ms, double u)
{
    if (l->stale > 0) {
        l->stale--;
        return;
    }
    if (!l->half_open || l->probes_out == 0)
        return;
    l->probes_out--;
    if (is_hard_failure(o)) {
        l->openings++;
        breaker_open(l, now_ms, u);
        snprintf(l->reason, sizeof(l->reason),
                 "breaker open: probe failed with %s", code_or_class(o));
        return;
    }
    if (++l->probes_ok >= BREAKER_PROBES) {
        set_state(l, LANE_ACTIVE);
        l->half_open = false;
        l->openings = 0;
        l->slow_start = true;
        l->acked = 0;
    }
}

static void
count(struct lane *l, const struct outcome *o, int64_t now_ms)
{
    if (is_success(o))
        l->succeeded++;
    else if (is_failure(o, ERR_RATE_LIMITED) ||
             (is_failure(o, ERR_UNAVAILABLE) && o->hints.retry_at_ms > now_ms))
        l->throttled++;
    else
        l->failed++;
}

/* The state as the log names it: half-open is worth telling apart. */
static const char *
phase_name(const struct lane *l)
{
    if (l->state == LANE_OPEN && l->half_open)
        return "half-open";
    return lane_state_name(l->state);
}

bool
lane_on_done(struct lane *l, const struct outcome *o, int64_t rtt_ms,
             int64_t now_ms, double u)
{
    const char *phase0 = phase_name(l); /* static strings: stays valid */
    int limit0 = l->limit;
    int in_flight = lane_in_flight(l); /* this request included */

    if (l->requests > 0)
        l->requests--;
    count(l, o, now_ms);
    sample_rtt(l, o, rtt_ms);
    pacer_refill(l, now_ms);
    learn_rate(l, o, now_ms);

    if (l->state == LANE_ACTIVE && is_success(o))
        aimd_grow(l, in_flight);
    if (is_loss(o))
        aimd_cut(l, rtt_ms, now_ms);

    if (l->state == LANE_ACTIVE)
        breaker_record(l, o, now_ms, u);
    else if (l->state == LANE_OPEN)
        breaker_probe(l, o, now_ms, u);

    if (is_key_failure(o)) {
        key_pause(l, o, now_ms);
    } else if (l->state == LANE_PAUSED) {
        if (is_success(o)) {
            set_state(l, LANE_ACTIVE);
            l->probe_out = false;
        } else if (l->probe_out) {
            /* The probe's answer says nothing about the key: wait one
             * more interval rather than probing again at once. */
            l->probe_out = false;
            l->probe_ms = now_ms;
        }
    }

    int64_t hint = throttle_hint(o, now_ms);
    if (hint != 0)
        throttle_pause(l, o, hint, now_ms, u);

    /* Phases, not states: a reopened breaker (half-open → open) is a
     * change too. */
    const char *phase = phase_name(l);
    bool moved = strcmp(phase0, phase) != 0;
    if (!moved && l->limit == limit0)
        return false;
    const char *why = is_success(o) ? "success" : err_class_name(o->cls);
    if (!moved)
        snprintf(l->change, sizeof(l->change), "limit %d→%d after %s", limit0,
                 l->limit, why);
    else if (l->limit == limit0)
        snprintf(l->change, sizeof(l->change), "%s→%s after %s", phase0, phase,
                 why);
    else
        snprintf(l->change, sizeof(l->change), "%s→%s, limit %d→%d after %s",
                 phase0, phase, limit0, l->limit, why);
    return true;
}

void
lane_on_abort(struct lane *l)
{
    if (l->requests > 0)
        l->requests--;
    if (l->state == LANE_PAUSED && l->probe_out) {
        l->probe_out = false;
    } else if (l->state == LANE_OPEN) {
        if (l->stale > 0) {
            l->stale--;
        } else if (l->probes_out > 0) {
            /* An aborted probe proved nothing: its slot is free again. */
            l->probes_out--;
            l->probes_sent--;
        }
    }
}

void
lane_on_waiting(struct lane *l, int delta)
{
    l->waiting += delta;
    if (l->waiting < 0)
        l->waiting = 0;
}

void
lane_resume(struct lane *l, int64_t now_ms)
{
    (void)now_ms; /* an operator's resume takes effect at once */
    if (l->state == LANE_PARKED)
        l->pause_until = 0;
    if (l->state != LANE_ACTIVE)
        snprintf(l->change, sizeof(l->change), "%s→active by the operator",
                 lane_state_name(l->state));
    set_state(l, LANE_ACTIVE);
    l->probe_out = false;
    l->half_open = false;
    l->openings = 0;
    l->stale = 0;
    ring_clear(l);
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
    return full_rate(l) * PACER_HEADROOM;
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
