/*
 * hints: every way a provider tells us when to come back or how fast to go,
 * parsed in one place. Pure functions; "now" is a parameter.
 */
#ifndef SLUICE_HINTS_H
#define SLUICE_HINTS_H

#include <stdbool.h>
#include <stdint.h>

struct http_response;

/* The furthest ahead any hint may push anything (a job's run_after, a
 * lane's pause, a window's reset, a learned rate's recovery): a day. A
 * provider that asks for more is capped here and the cap is shown. */
#define HINT_CAP_MS (24LL * 3600 * 1000)

struct hints {
    int64_t retry_at_ms;   /* earliest retry, unix ms; 0 = no hint */
    long rl_limit;         /* advertised requests per window; -1 unknown */
    long rl_remaining;     /* requests left in the window; -1 unknown */
    int64_t rl_reset_ms;   /* unix ms the window resets; 0 unknown */
    int64_t rl_window_ms;  /* window length (RateLimit-Policy w=); 0 unknown */
    int64_t shut_until_ms; /* the provider says its window is shut until
                              then (Firemoon resetAt), unix ms; 0 = no */
    long tok_limit;        /* x-ratelimit-limit-tokens (per minute); -1 */
    long tok_remaining;    /* x-ratelimit-remaining-tokens; -1 unknown */
    int64_t tok_reset_ms;  /* x-ratelimit-reset-tokens, unix ms; 0 */
    int64_t asked_ms;      /* when a hint lay beyond HINT_CAP_MS: the
                              furthest unix ms asked for (retry_at_ms and
                              rl_reset_ms are then cut to the cap); 0 none */
};

/* Cuts retry_at_ms and rl_reset_ms (and shut_until_ms, tok_reset_ms) to
 * now_ms + HINT_CAP_MS, recording in asked_ms what was asked when either
 * of the first two lay further. Every hint passes here
 * before anything acts on it (hints_from_response, dialect_classify). */
void hints_cap(struct hints *h, int64_t now_ms);

/* Reads retry-after-ms, Retry-After (delta seconds or HTTP-date, converted
 * against the response's Date header when present), RateLimit /
 * RateLimit-Policy (IETF draft, t= r= q= w=), X-RateLimit-Limit / -Remaining
 * / -Reset (epoch or delta seconds). now_ms is our clock. The result is
 * capped (hints_cap). */
void hints_from_response(const struct http_response *r, int64_t now_ms,
                         struct hints *out);

/* Parses a duration in OpenAI's reset format: "6m0s", "1.5s", "20ms",
 * "1h2m3.5s" (units h, m, s, ms, each at most once, in that order) to ms,
 * rounded up. Returns 0 or -EINVAL. */
int hints_parse_duration(const char *s, int64_t *ms);
/* Parses an HTTP-date (IMF-fixdate, RFC 850, asctime) to unix ms.
 * Returns 0 or -EINVAL. */
int hints_parse_http_date(const char *s, int64_t *ms);
/* Parses ISO-8601 / RFC 3339 ("2025-10-23T10:30:00.000Z", offsets too) to
 * unix ms. Returns 0 or -EINVAL. */
int hints_parse_iso8601(const char *s, int64_t *ms);
/* Parses a Retry-After value to a delay in ms from the response's point of
 * view: delta seconds, or date - date_ms (date_ms = response Date header or
 * our now). Negative delays clamp to 0. Returns 0 or -EINVAL. */
int hints_parse_retry_after(const char *s, int64_t date_ms, int64_t *delay_ms);

#endif
