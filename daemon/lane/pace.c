/*
 * The lane's pacers (gate 3 of lane.c): requests at the configured,
 * advertised or learned rate, or at this daemon's share of a known rate
 * that other daemons on the key use too; the provider's window; tokens per
 * minute. Pure, like all of the lane.
 */
#include <math.h>
#include <string.h>

#include "sluice/outcome.h"

#include "internal.h"

/* Burst: a tenth of a second of the rate, at least one request. With the
 * bucket refilling at 1.0 × the rate, no one second carries more than
 * 1.1 × the rate, and a per-minute window sees its limit plus 1/600. */
#define PACER_BURST_S 0.1
/* X-RateLimit-Limit without a stated window: Firemoon's and most others'
 * limits are per minute. */
#define RATE_WINDOW_DEFAULT_MS 60000
/* The slowest rate a hint may impose: one request per HINT_CAP_MS. */
#define RATE_MIN_PER_S (1000.0 / (double)HINT_CAP_MS)
/* The pacer's share of a known rate (several independent daemons on one
 * key): 429s the pacer's own rate cannot explain (the bucket is shared)
 * cut the share ×0.8, once per epoch; it grows back by 0.05 of the rate
 * per second, the same for every daemon, so that daemons refused at
 * random converge to equal shares (Chiu–Jain). A share never goes below
 * a twentieth of the rate. */
#define SHARE_BETA 0.8
#define SHARE_GROW_PER_S 0.05
#define SHARE_MIN 0.05
/* One such 429 alone may be our own burst arriving bunched on a loaded
 * host: a cut needs a second one within this time of the first. */
#define SHARE_ARM_MS 2000
/* After this long without a cut the share grows faster, by one more
 * SHARE_GROW_PER_S each further second: a daemon left alone regains the
 * whole rate within seconds; the smallest of several sharing daemons,
 * refused least often, catches up soonest. */
#define SHARE_CALM_MS 2000
/* Token budget: a tenth of the per-minute limit may go at once (the
 * provider's own bucket usually holds the whole minute, but a daemon that
 * restarts must not assume it is full). */
#define TOKEN_BURST_FRACTION 0.1
/* α = 1/8 for the average token cost of a request. */
#define TOKEN_COST_ALPHA 0.125

/* The rate both the configuration and the provider allow, requests/s; 0
 * none. Hints only ever restrict: the advertised rate can lower a
 * configured one, never raise it. */
double
pace_full_rate(const struct lane *l)
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
double
pace_rate(const struct lane *l)
{
    double rate = pace_full_rate(l);

    if (rate > 0 && l->p.adaptive)
        return rate * l->share;
    if (rate > 0 || !l->p.adaptive || l->srtt_ms <= 0)
        return rate;
    return (double)l->limit * 1000.0 / l->srtt_ms;
}

double
pace_bucket_capacity(double rate)
{
    double cap = rate * PACER_BURST_S;
    return cap > 1.0 ? cap : 1.0;
}

double
pace_token_limit(const struct lane *l)
{
    double cfg = l->p.tokens_per_min > 0 ? l->p.tokens_per_min : 0;
    double adv = l->tok_adv;

    if (cfg > 0 && adv > 0)
        return cfg < adv ? cfg : adv;
    return cfg > 0 ? cfg : adv;
}

double
pace_token_capacity(const struct lane *l)
{
    return pace_token_limit(l) * TOKEN_BURST_FRACTION;
}

void
pace_refill(struct lane *l, int64_t now_ms)
{
    double rate = pace_rate(l), tpm = pace_token_limit(l);

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
        if (l->tokens > pace_bucket_capacity(rate))
            l->tokens = pace_bucket_capacity(rate);
    }
    if (tpm > 0) {
        l->tok_level += dt * tpm / 60000.0;
        if (l->tok_level > pace_token_capacity(l))
            l->tok_level = pace_token_capacity(l);
    }
    l->refill_ms = now_ms;
}

/* Learns the provider's advertised rate, request window and token budget
 * from any answer, fresh or not: these are facts about the provider now. */
void
pace_learn(struct lane *l, const struct lane_ticket *t, const struct outcome *o,
           int64_t now_ms)
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
        double cap = pace_bucket_capacity(pace_full_rate(l));
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
    if (h->tok_remaining >= 0 && pace_token_limit(l) > 0) {
        double later_sends = (double)(l->tok_seq - t->tok_seq);
        l->tok_level = (double)h->tok_remaining - later_sends;
        if (l->tok_level > pace_token_capacity(l))
            l->tok_level = pace_token_capacity(l);
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

/* A fresh 429 to a request sent under a known rate, the limit not full:
 * the pacer sent no more than the rate, so the provider's bucket is
 * shared (other daemons on the same key). The second within SHARE_ARM_MS
 * cuts: the share yields ×SHARE_BETA; answers already on their way are
 * stale. Refused at random in proportion to what each sends, daemons
 * that all cut this way and grow back alike converge to equal shares; a
 * lone daemon is hardly ever refused and keeps the whole rate. */
void
pace_share_refused(struct lane *l, int64_t now_ms)
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
    double cap = pace_bucket_capacity(pace_rate(l));
    if (l->tokens > cap)
        l->tokens = cap;
    lane_bump(l);
}

double
lane_rate(const struct lane *l)
{
    return pace_full_rate(l) > 0 || !l->slow_start ? pace_rate(l) : 0;
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
    return pace_token_limit(l);
}

int64_t
lane_tokens_available(const struct lane *l)
{
    return pace_token_limit(l) > 0 ? (int64_t)floor(l->tok_level) : 0;
}
