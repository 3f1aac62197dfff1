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

#include "internal.h"

/* ×0.7: the multiplicative decrease of AWS SDKs' adaptive retry (CUBIC's
 * beta): gentler than TCP's halving. */
#define AIMD_BETA 0.7
/* Requests sent within a second of learning the rate say nothing of
 * others: the provider's bucket may still lack what this lane sent before
 * it knew the rate. */
#define SHARE_GRACE_MS 1000
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
/* A paused lane with no configured interval probes every 5 min: a topped
 * up balance resumes soon, a dead key costs 12 requests an hour. */
#define PROBE_INTERVAL_DEFAULT_MS 300000
/* Token estimates start at this many per request until answers say
 * more. */
#define TOKEN_COST_DEFAULT 1000.0
#define TOKEN_PEAK_DECAY 64.0
#define LANE_LINE_MAX 512

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

/* Every change that answers a signal: answers to requests sent before it
 * are stale from now on. */
void
lane_bump(struct lane *l)
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
void
lane_set_state(struct lane *l, enum lane_state s, const char *why)
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
    lane_bump(l);
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
    double rate = pace_full_rate(l);
    if (rate > 0 && l->tokens > pace_bucket_capacity(rate))
        l->tokens = pace_bucket_capacity(rate);
    if (pace_token_limit(l) > 0 && l->tok_level > pace_token_capacity(l))
        l->tok_level = pace_token_capacity(l);
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
        lane_set_state(l, LANE_HALF_OPEN, "after the open period");
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
            lane_set_state(l, LANE_ACTIVE, "at reset");
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
    pace_refill(l, now_ms);
    double rate = pace_rate(l);
    if (rate > 0 && l->tokens < (double)n) {
        /* when the next whole token is there */
        double missing = floor(l->tokens) + 1.0 - l->tokens;
        gate(&n, &wake, l->tokens < 1.0 ? 0 : (int)l->tokens,
             now_ms + 1 + (int64_t)(missing * 1000.0 / rate));
    }
    double tpm = pace_token_limit(l);
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
    pace_refill(l, now_ms);
    if (pace_rate(l) > 0)
        l->tokens -= 1.0;
    if (l->win_reset != 0 && l->win_left > 0)
        l->win_left--;
    if (pace_token_limit(l) > 0 && tokens > 0)
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
        lane_bump(l);
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

static void
sample_rtt(struct lane *l, const struct outcome *o, int64_t rtt_ms)
{
    /* A timeout's duration is our timeout, not the provider's RTT, and a
     * transport failure never made the round trip (Karn's rule in
     * spirit). */
    if (rtt_ms <= 0 || o->http_status == 0 || signal_failure(o, ERR_TIMEOUT))
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
    lane_bump(l);
    char when[40];
    format_utc(when, sizeof(when), until);
    if (until - now_ms > PARK_THRESHOLD_MS &&
        (l->state == LANE_ACTIVE || l->state == LANE_PARKED)) {
        lane_set_state(l, LANE_PARKED, "after a shut window");
        snprintf(l->reason, sizeof(l->reason), "parked until %s after %s%s",
                 when, signal_code(o), capped ? " (hint capped at 24 h)" : "");
    } else {
        snprintf(l->change, sizeof(l->change),
                 "paused until %s after %s (window shut)%s", when,
                 signal_code(o), capped ? " (hint capped at 24 h)" : "");
    }
}

static void
key_pause(struct lane *l, const struct outcome *o, int64_t now_ms)
{
    lane_set_state(l, LANE_PAUSED, "after a key failure");
    lane_bump(l); /* a pause again while paused is a change too */
    l->probe_out = false;
    l->probe_ms = now_ms;
    if (o->request_id[0] != '\0')
        snprintf(l->reason, sizeof(l->reason), "%s: %.128s (request %.127s)",
                 err_class_name(o->cls), signal_code(o), o->request_id);
    else
        snprintf(l->reason, sizeof(l->reason), "%s: %.128s",
                 err_class_name(o->cls), signal_code(o));
}

static void
count(struct lane *l, const struct outcome *o, int64_t now_ms)
{
    if (signal_success(o))
        l->succeeded++;
    else if (signal_throttle(o, now_ms))
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
    if (!l->p.adaptive || (!full && pace_full_rate(l) > 0))
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
    lane_bump(l);
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

    if (signal_throttle(o, now_ms) && l->p.adaptive && t->paced &&
        t->in_flight < l->limit)
        pace_share_refused(l, now_ms);
    if (signal_throttle(o, now_ms)) {
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
    bool loss = signal_loss(o);
    /* Judged before this answer can move the knee. */
    bool low = below_knee(l, t);

    /* A round is a round trip: one of its own requests answered, and at
     * least one SRTT (a refusal sent this round comes back at once). */
    if (t->seq > l->round_seq && l->round_n > 0 &&
        (double)(now_ms - l->round_ms) >= l->srtt_ms)
        round_end(l, now_ms);
    l->round_n++;
    if (signal_success(o)) {
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
        if (signal_success(o)) {
            lane_set_state(l, LANE_ACTIVE, "after a good probe");
        } else if (!signal_key_failure(o)) {
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
    pace_refill(l, now_ms);
    pace_learn(l, t, o, now_ms);

    if (stale(l, t) && signal_success(o) && below_knee(l, t))
        learn_background(l, false); /* a success is background anyway */
    if (!stale(l, t))
        on_fresh(l, t, o, now_ms, u);
    else if (l->state == LANE_PAUSED && t->probe)
        l->probe_out = false; /* a probe overtaken by a new pause */
    else if (l->state == LANE_ACTIVE && signal_success(o) && l->knee > 0 &&
             l->limit < l->knee - 1)
        /* Back to just under the knee needs no fresh evidence: the knee is
         * what the last cut learned. */
        grow(l, lane_in_flight(l) + 1);

    /* Facts, fresh or not: a dead key, a shut window. */
    if (signal_key_failure(o) &&
        (l->state != LANE_PAUSED || t->probe || !stale(l, t)))
        key_pause(l, o, now_ms);
    int64_t hint = signal_shut_hint(o, now_ms);
    if (hint == 0 && o->hints.rl_remaining == 0 &&
        o->hints.rl_reset_ms > now_ms + PARK_THRESHOLD_MS)
        hint = o->hints.rl_reset_ms; /* a quota used up: park visibly */
    if (hint != 0 && l->state != LANE_PAUSED)
        shut(l, o, hint, now_ms, u);

    if (l->state == state0 && l->limit == limit0 && l->pause_until == pause0)
        return false;
    const char *why = signal_success(o) ? "success" : err_class_name(o->cls);
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
    if (pace_token_limit(l) > 0)
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
    breaker_clear(l);
    if (l->state != LANE_ACTIVE)
        lane_set_state(l, LANE_ACTIVE, "by the operator");
    else
        lane_bump(l);
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
