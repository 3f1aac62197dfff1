/*
 * retry: what happens to a job after a failed request. Pure policy: no I/O,
 * the clock and the random draw are parameters (docs/design.md §6).
 */
#ifndef SLUICE_RETRY_H
#define SLUICE_RETRY_H

#include <stdint.h>

struct outcome;

struct retry_policy {
    int max_attempts;   /* charged attempts allowed (default 5) */
    int max_deferrals;  /* throttle deferrals allowed (default 50) */
    int64_t base_ms;    /* backoff base (default 1 s) */
    int64_t cap_ms;     /* backoff cap (default 60 s) */
};

enum retry_action {
    RETRY_GIVE_UP, /* terminal: the job fails */
    RETRY_AGAIN,   /* try again at run_after, the attempt stays charged */
    RETRY_DEFER,   /* throttled: try again at run_after, attempt refunded */
    RETRY_HOLD,    /* provider paused (auth/balance): back to queued,
                      attempt refunded, run when the lane resumes */
};

struct retry_decision {
    enum retry_action action;
    int64_t run_after_ms; /* unix ms; for AGAIN and DEFER */
    const char *why;      /* short reason for the log ("attempts exhausted") */
};

/* Full-jitter backoff for the n-th retry (n >= 1):
 * u × min(cap, base × 2^(n-1)), u in [0, 1). */
int64_t retry_backoff_ms(const struct retry_policy *p, int n, double u);

/* Decides for a failure outcome of a job that has been charged `attempts`
 * and deferred `deferrals` times. A retry is never earlier than the
 * outcome's hint. u is a uniform draw in [0, 1). */
struct retry_decision retry_decide(const struct retry_policy *p,
                                   const struct outcome *o, int attempts,
                                   int deferrals, int64_t now_ms, double u);

#endif
