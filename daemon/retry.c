/*
 * retry: what happens to a job after a failed request (docs/design.md §6). Pure
 * policy: the clock and the random draw come in as parameters, so every
 * branch is unit-tested without sleeping.
 *
 * Four answers, checked in this order:
 *   HOLD     auth / insufficient_balance: the lane pauses, the job waits
 *            for the operator (or a probe) with its attempt refunded;
 *   DEFER    throttles (429, or 503 with a hint): they spend a separate,
 *            generous deferral budget, never max_attempts, because a rate
 *            limit must not discard work;
 *   AGAIN    retryable failures, charged against max_attempts;
 *   GIVE_UP  everything else.
 * A provider's hint is a floor: a retry is never scheduled before it, nor
 * more than HINT_CAP_MS ahead because of it.
 * Backoff is "full jitter" (AWS Architecture Blog, "Exponential Backoff
 * and Jitter"): random(0, min(cap, base × 2^n)). Equal or decorrelated
 * jitter were rejected: full jitter spreads a burst of failures the most
 * and finishes the work soonest in that article's simulation.
 */
#include "sluice/hints.h"
#include "sluice/outcome.h"
#include "sluice/retry.h"

/* A garbage-answering provider keeps answering garbage: protocol errors
 * get a few tries in all, not the full max_attempts. */
#define RETRY_PROTOCOL_MAX_ATTEMPTS 3

int64_t
retry_backoff_ms(const struct retry_policy *p, int n, double u)
{
    int64_t ceiling;

    if (n < 1)
        n = 1;
    if (p->base_ms <= 0 || p->cap_ms <= 0)
        return 0;
    /* base × 2^(n-1) without overflow: once the doubling would pass the
     * cap (or 2^62), the cap is the answer. */
    if (n - 1 >= 62 || p->base_ms > (p->cap_ms >> (n - 1)))
        ceiling = p->cap_ms;
    else
        ceiling = p->base_ms << (n - 1);
    if (!(u > 0.0)) /* also catches NaN */
        return 0;
    /* u < 1 by contract; a draw of 1 (or a product rounded up to the
     * ceiling in double) still stays below it. */
    double d = u * (double)ceiling;
    if (u >= 1.0 || d >= (double)ceiling)
        return ceiling - 1;
    return (int64_t)d;
}

static int64_t
later(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* now + delay, saturating: a configured cap near INT64_MAX must not wrap
 * into the past. */
static int64_t
after(int64_t now_ms, int64_t delay_ms)
{
    return delay_ms > INT64_MAX - now_ms ? INT64_MAX : now_ms + delay_ms;
}

static struct retry_decision
decide(enum retry_action action, int64_t run_after_ms, const char *why)
{
    struct retry_decision d = {action, run_after_ms, why};
    return d;
}

struct retry_decision
retry_decide(const struct retry_policy *p, const struct outcome *o,
             int attempts, int deferrals, int64_t now_ms, double u)
{
    int64_t hint = o->hints.retry_at_ms;
    bool throttled;

    /* The dialects cap hints already; an outcome built any other way
     * still never sends a job further ahead than a day. */
    if (hint > after(now_ms, HINT_CAP_MS))
        hint = after(now_ms, HINT_CAP_MS);

    if (o->cls == ERR_AUTH)
        return decide(RETRY_HOLD, now_ms, "provider paused: auth");
    if (o->cls == ERR_INSUFFICIENT_BALANCE)
        return decide(RETRY_HOLD, now_ms,
                      "provider paused: insufficient balance");

    /* A 503 without a hint is an outage, not a throttle: it is charged.
     * An explicit "do not retry" from the provider wins over both. */
    throttled = (o->cls == ERR_RATE_LIMITED ||
                 (o->cls == ERR_UNAVAILABLE && hint > 0)) &&
                o->verdict != VERDICT_NO_RETRY;
    if (throttled) {
        if (deferrals + 1 > p->max_deferrals)
            return decide(RETRY_GIVE_UP, 0, "deferrals exhausted");
        if (hint > 0)
            return decide(RETRY_DEFER, later(hint, now_ms), "throttled");
        return decide(RETRY_DEFER,
                      after(now_ms, retry_backoff_ms(p, deferrals + 1, u)),
                      "throttled");
    }

    if (!outcome_retryable(o))
        return decide(RETRY_GIVE_UP, 0, "not retryable");
    if (attempts >= p->max_attempts)
        return decide(RETRY_GIVE_UP, 0, "attempts exhausted");
    if (o->cls == ERR_PROTOCOL && attempts >= RETRY_PROTOCOL_MAX_ATTEMPTS)
        return decide(RETRY_GIVE_UP, 0, "protocol errors exhausted");
    return decide(RETRY_AGAIN,
                  later(hint, after(now_ms, retry_backoff_ms(p, attempts, u))),
                  "retryable");
}
