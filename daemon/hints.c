/*
 * hints: every way a provider says "come back later" or "this is your
 * budget", parsed in one place so dialects and the lane never see raw
 * headers. Pure functions of the header text and a "now" parameter.
 *
 * Read, in this order, each only when present and well-formed:
 *   retry-after-ms            delay in ms (fractional allowed)
 *   Retry-After               delta seconds or an HTTP-date
 *   RateLimit-Policy          draft-7 "100;w=60", draft-8+ "p";q=100;w=60
 *   RateLimit                 draft-7 "limit=.., remaining=.., reset=..",
 *                             draft-8+ "p";r=0;t=30
 *   RateLimit-Limit/-Remaining/-Reset   drafts before 7
 *   X-RateLimit-Limit/-Remaining/-Reset reset as epoch or delta seconds
 * Budgets merge to the tightest: the fewest requests remaining (with its
 * reset), the policy with the lowest rate. Every retry hint counts and the
 * latest wins, since retrying before any of them is what a provider
 * punishes; "remaining 0" with a reset is such a hint too. Absolute times
 * from the provider (HTTP-dates, epoch resets) are taken relative to the
 * response's own Date header, so a skew between our clock and the
 * provider's does not move the hint. Nothing is taken further ahead than
 * HINT_CAP_MS (a day): a Retry-After of 31 years or a reset in year 5138
 * would otherwise park a job or a lane for good.
 *
 * Garbage is ignored, never fatal: a wrong hint is worse than none, and
 * without one the retry policy falls back to backoff. sscanf and strptime
 * were rejected: both accept too much (leading spaces, signs, locales).
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "sluice/hints.h"
#include "sluice/http.h"

/* A delay beyond this is nonsense (about 31.7 years), and it keeps every
 * sum with a unix-ms time far from int64 overflow. Also the boundary
 * between delta and epoch seconds in X-RateLimit-Reset: epoch values are
 * above 1e9 since 2001. */
#define HINTS_MAX_DELTA_S 1000000000.0
/* Epoch seconds beyond this (year 5138) are garbage. */
#define HINTS_MAX_EPOCH_S 100000000000.0

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static const char *
skip_ows(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* Parses a non-negative decimal "123" or "1.5" at *pp, advancing it.
 * Returns false when no digits are there or the value exceeds max. */
static bool
parse_decimal(const char **pp, double max, double *out)
{
    const char *p = *pp;
    double v = 0, scale = 1;
    bool any = false;

    while (is_digit(*p)) {
        v = v * 10 + (*p++ - '0');
        any = true;
        if (v > max)
            return false;
    }
    if (*p == '.' && any) {
        p++;
        if (!is_digit(*p))
            return false;
        while (is_digit(*p)) {
            scale /= 10;
            v += (*p++ - '0') * scale;
        }
    }
    if (!any)
        return false;
    *pp = p;
    *out = v;
    return true;
}

/* The whole of s (surrounding blanks allowed) as a decimal <= max. */
static bool
whole_decimal(const char *s, double max, double *out)
{
    const char *p = skip_ows(s);

    if (!parse_decimal(&p, max, out))
        return false;
    return *skip_ows(p) == '\0';
}

/* Rounded up: coming back a fraction early is coming back too early. */
static int64_t
ceil_ms(double ms)
{
    int64_t whole = (int64_t)ms;
    return (double)whole < ms ? whole + 1 : whole;
}

static int64_t
seconds_to_ms(double s)
{
    return ceil_ms(s * 1000.0);
}

/* ---- dates ---- */

static const char *const month_names[12] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};

static bool
leap_year(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
days_in_month(int y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30,
                                 31, 31, 30, 31, 30, 31};
    return m == 1 && leap_year(y) ? 29 : days[m];
}

/* Exactly n digits at *pp, advancing it. */
static bool
fixed_digits(const char **pp, int n, int *out)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        if (!is_digit((*pp)[i]))
            return false;
        v = v * 10 + ((*pp)[i] - '0');
    }
    *pp += n;
    *out = v;
    return true;
}

static bool
expect(const char **pp, char c)
{
    if (**pp != c)
        return false;
    (*pp)++;
    return true;
}

static bool
parse_month(const char **pp, int *mon)
{
    for (int i = 0; i < 12; i++) {
        if (strncmp(*pp, month_names[i], 3) == 0) {
            *pp += 3;
            *mon = i;
            return true;
        }
    }
    return false;
}

/* "HH:MM:SS" */
static bool
parse_hms(const char **pp, struct tm *tm)
{
    return fixed_digits(pp, 2, &tm->tm_hour) && expect(pp, ':') &&
           fixed_digits(pp, 2, &tm->tm_min) && expect(pp, ':') &&
           fixed_digits(pp, 2, &tm->tm_sec);
}

/* Checks the fields of tm (UTC) and converts it to unix ms. */
static int
tm_to_ms(struct tm *tm, int64_t *ms)
{
    int year = tm->tm_year + 1900;

    if (year < 1970 || year > 9999 || tm->tm_mon < 0 || tm->tm_mon > 11 ||
        tm->tm_mday < 1 || tm->tm_mday > days_in_month(year, tm->tm_mon) ||
        tm->tm_hour > 23 || tm->tm_min > 59 || tm->tm_sec > 60)
        return -EINVAL;
    tm->tm_isdst = 0;
    *ms = (int64_t)timegm(tm) * 1000;
    return 0;
}

/* A day name: letters then the given separator. The name itself is not
 * checked against the date; RFC 9110 lets recipients ignore it. */
static bool
skip_day_name(const char **pp, size_t min_len)
{
    const char *p = *pp;

    while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))
        p++;
    if ((size_t)(p - *pp) < min_len)
        return false;
    *pp = p;
    return true;
}

int
hints_parse_http_date(const char *s, int64_t *ms)
{
    const char *p = skip_ows(s);
    struct tm tm = {0};
    int year;

    if (!skip_day_name(&p, 3))
        return -EINVAL;
    if (*p == ',') {
        p++;
        if (!expect(&p, ' ') || !fixed_digits(&p, 2, &tm.tm_mday))
            return -EINVAL;
        if (*p == ' ') {
            /* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" */
            p++;
            if (!parse_month(&p, &tm.tm_mon) || !expect(&p, ' ') ||
                !fixed_digits(&p, 4, &year))
                return -EINVAL;
        } else {
            /* RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT" */
            if (!expect(&p, '-') || !parse_month(&p, &tm.tm_mon) ||
                !expect(&p, '-') || !fixed_digits(&p, 2, &year))
                return -EINVAL;
            /* Two-digit years: RFC 9110 reads a year more than 50 years
             * ahead as past; with no clock here, 70..99 is 19xx (nothing
             * before the unix epoch is a useful hint anyway). */
            year += year < 70 ? 2000 : 1900;
        }
        if (!expect(&p, ' ') || !parse_hms(&p, &tm) ||
            strncmp(p, " GMT", 4) != 0)
            return -EINVAL;
        p += 4;
    } else {
        /* asctime: "Sun Nov  6 08:49:37 1994" (day space-padded) */
        if (!expect(&p, ' ') || !parse_month(&p, &tm.tm_mon) ||
            !expect(&p, ' '))
            return -EINVAL;
        if (*p == ' ')
            p++;
        if (is_digit(p[0]) && is_digit(p[1])) {
            if (!fixed_digits(&p, 2, &tm.tm_mday))
                return -EINVAL;
        } else if (!fixed_digits(&p, 1, &tm.tm_mday)) {
            return -EINVAL;
        }
        if (!expect(&p, ' ') || !parse_hms(&p, &tm) || !expect(&p, ' ') ||
            !fixed_digits(&p, 4, &year))
            return -EINVAL;
    }
    if (*skip_ows(p) != '\0')
        return -EINVAL;
    tm.tm_year = year - 1900;
    return tm_to_ms(&tm, ms);
}

int
hints_parse_iso8601(const char *s, int64_t *ms)
{
    const char *p = skip_ows(s);
    struct tm tm = {0};
    int year, frac_ms = 0, off_h = 0, off_m = 0, sign = 0;
    int64_t t;

    if (!fixed_digits(&p, 4, &year) || !expect(&p, '-') ||
        !fixed_digits(&p, 2, &tm.tm_mon) || !expect(&p, '-') ||
        !fixed_digits(&p, 2, &tm.tm_mday))
        return -EINVAL;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return -EINVAL;
    p++;
    if (!parse_hms(&p, &tm))
        return -EINVAL;
    if (*p == '.' || *p == ',') {
        p++;
        if (!is_digit(*p))
            return -EINVAL;
        /* Any length; milliseconds are all we keep (truncated). */
        for (int scale = 100; is_digit(*p); p++, scale /= 10)
            frac_ms += (*p - '0') * scale;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p++ == '-' ? -1 : 1;
        if (!fixed_digits(&p, 2, &off_h))
            return -EINVAL;
        if (*p == ':')
            p++;
        if (is_digit(*p) && !fixed_digits(&p, 2, &off_m))
            return -EINVAL;
        if (off_h > 23 || off_m > 59)
            return -EINVAL;
    } else {
        /* No offset: local time of an unknown zone; no guess is better
         * than a wrong one. */
        return -EINVAL;
    }
    if (*skip_ows(p) != '\0')
        return -EINVAL;
    tm.tm_year = year - 1900;
    tm.tm_mon -= 1;
    if (tm_to_ms(&tm, &t) < 0)
        return -EINVAL;
    /* 10:30+02:00 is 08:30 UTC. */
    *ms = t + frac_ms - (int64_t)sign * (off_h * 60 + off_m) * 60000;
    return 0;
}

int
hints_parse_retry_after(const char *s, int64_t date_ms, int64_t *delay_ms)
{
    double secs;
    int64_t at;

    if (whole_decimal(s, HINTS_MAX_DELTA_S, &secs)) {
        *delay_ms = seconds_to_ms(secs);
        return 0;
    }
    if (hints_parse_http_date(s, &at) < 0)
        return -EINVAL;
    *delay_ms = at > date_ms ? at - date_ms : 0;
    return 0;
}

/* ---- structured header lists (RFC 8941, the parts the drafts use) ---- */

/* What one list member says: a draft-8+ item ("name";q=100;w=60 or
 * "name";r=0;t=30), a draft-7 policy item (100;w=60), or the whole draft-7
 * dictionary (limit=100, remaining=0, reset=30), whose keys map onto the
 * same slots. Non-numeric values are skipped. */
struct member {
    double item;      /* bare numeric item (draft-7 policy), -1 if none */
    double params[4]; /* indexed by P_Q.. */
    bool has[4];
};

enum {
    P_Q, /* quota: requests per window (draft-7 "limit") */
    P_W, /* window, seconds */
    P_R, /* remaining (draft-7 "remaining") */
    P_T, /* seconds until reset (draft-7 "reset") */
};

static int
param_index(const char *key, size_t len)
{
    static const struct {
        const char *name;
        int idx;
    } keys[] = {
        {"q", P_Q},     {"w", P_W},         {"r", P_R},     {"t", P_T},
        {"limit", P_Q}, {"remaining", P_R}, {"reset", P_T},
    };

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (strlen(keys[i].name) == len &&
            strncasecmp(key, keys[i].name, len) == 0)
            return keys[i].idx;
    }
    return -1;
}

/* Skips a bare item we do not read (token or quoted string) at *pp. */
static void
skip_bare_item(const char **pp)
{
    const char *p = *pp;

    if (*p == '"') {
        for (p++; *p && *p != '"'; p++) {
            if (*p == '\\' && p[1])
                p++;
        }
        if (*p == '"')
            p++;
    } else {
        while (*p && *p != ';' && *p != ',' && *p != '=' && *p != ' ' &&
               *p != '\t')
            p++;
    }
    *pp = p;
}

/* "key=value" at *pp: stores numeric values of known keys in m. */
static void
parse_param(const char **pp, struct member *m)
{
    const char *p = skip_ows(*pp), *key = p;
    double v;
    int idx;

    while (*p && *p != '=' && *p != ';' && *p != ',')
        p++;
    idx = param_index(key, (size_t)(p - key));
    if (*p == '=') {
        p++;
        if (parse_decimal(&p, HINTS_MAX_EPOCH_S, &v) && idx >= 0) {
            m->params[idx] = v;
            m->has[idx] = true;
        } else {
            skip_bare_item(&p);
        }
    }
    *pp = p;
}

/* Calls fn for each comma-separated member of a list or dictionary. In
 * the draft-7 RateLimit dictionary every member is one key=value, so
 * dictionary members are folded into a single member. */
static void
parse_members(const char *s, bool dictionary,
              void (*fn)(const struct member *, void *), void *data)
{
    const char *p = s;
    struct member m;

    memset(&m, 0, sizeof(m));
    m.item = -1;
    while (*p) {
        p = skip_ows(p);
        if (dictionary) {
            parse_param(&p, &m);
        } else {
            const char *q = p;
            double v;
            if (parse_decimal(&q, HINTS_MAX_EPOCH_S, &v) &&
                (*q == ';' || *q == ',' || *skip_ows(q) == '\0')) {
                m.item = v;
                p = q;
            } else {
                skip_bare_item(&p);
            }
            while (*p == ';') {
                p++;
                parse_param(&p, &m);
            }
        }
        while (*p && *p != ',')
            p++;
        if (*p == ',')
            p++;
        if (!dictionary) {
            fn(&m, data);
            memset(&m, 0, sizeof(m));
            m.item = -1;
        }
    }
    if (dictionary)
        fn(&m, data);
}

/* ---- putting it together ---- */

/* A count as a long: two billion is beyond any real budget and fits a
 * 32-bit long too. */
static long
clamp_count(double v)
{
    return v > 2e9 ? 2000000000L : (long)v;
}

struct reading {
    int64_t now_ms;
    int64_t skew_ms; /* our clock minus the provider's (from Date) */
    struct hints *out;
    bool have_policy; /* a policy was read: the tightest one wins */
    double policy_rate;
};

static void
consider_retry(struct reading *rd, int64_t at_ms)
{
    if (at_ms > rd->out->retry_at_ms)
        rd->out->retry_at_ms = at_ms;
}

/* Records remaining and reset; the member with the fewest requests left
 * decides (ties: the later reset). remaining 0 is also a retry hint. */
static void
consider_budget(struct reading *rd, double remaining, bool has_remaining,
                int64_t reset_ms)
{
    struct hints *h = rd->out;

    if (has_remaining) {
        long r = clamp_count(remaining);
        if (h->rl_remaining < 0 || r < h->rl_remaining ||
            (r == h->rl_remaining && reset_ms > h->rl_reset_ms)) {
            h->rl_remaining = r;
            if (reset_ms > 0)
                h->rl_reset_ms = reset_ms;
        }
        if (r == 0 && reset_ms > 0)
            consider_retry(rd, reset_ms);
    } else if (reset_ms > 0 && h->rl_reset_ms == 0) {
        h->rl_reset_ms = reset_ms;
    }
}

static void
on_policy(const struct member *m, void *data)
{
    struct reading *rd = data;
    double limit = m->has[P_Q] ? m->params[P_Q] : m->item;
    double window = m->has[P_W] ? m->params[P_W] : 0;
    double rate;

    if (limit < 0)
        return;
    /* Without a window the rate is unknown; rank such a policy last. */
    rate = window > 0 ? limit / window : 1e300;
    if (rd->have_policy && rate >= rd->policy_rate)
        return;
    rd->have_policy = true;
    rd->policy_rate = rate;
    rd->out->rl_limit = clamp_count(limit);
    rd->out->rl_window_ms = seconds_to_ms(window);
}

static void
on_ratelimit(const struct member *m, void *data)
{
    struct reading *rd = data;
    int64_t reset_ms = 0;

    if (m->has[P_T] && m->params[P_T] <= HINTS_MAX_DELTA_S)
        reset_ms = rd->now_ms + seconds_to_ms(m->params[P_T]);
    if (m->has[P_Q] && !rd->have_policy)
        rd->out->rl_limit = clamp_count(m->params[P_Q]);
    consider_budget(rd, m->params[P_R], m->has[P_R], reset_ms);
}

/* X-RateLimit-Reset and RateLimit-Reset: epoch seconds (absolute, on the
 * provider's clock) or delta seconds. */
static int64_t
reset_header_ms(const struct reading *rd, const char *v)
{
    double secs;
    int64_t at;

    if (v == NULL || !whole_decimal(v, HINTS_MAX_EPOCH_S, &secs))
        return 0;
    if (secs <= HINTS_MAX_DELTA_S)
        return rd->now_ms + seconds_to_ms(secs);
    /* A window that already reset (on the provider's clock) is now. */
    at = seconds_to_ms(secs) + rd->skew_ms;
    return at > rd->now_ms ? at : rd->now_ms;
}

/* A plain integer count header ("100", or "100, 100;w=60" from drafts
 * that repeat the policy): the leading number. */
static bool
count_header(const char *v, long *out)
{
    const char *p;
    double d;

    if (v == NULL)
        return false;
    p = skip_ows(v);
    if (!parse_decimal(&p, 2e9, &d))
        return false;
    p = skip_ows(p);
    if (*p != '\0' && *p != ',' && *p != ';')
        return false;
    *out = (long)d;
    return true;
}

static void
read_legacy(struct reading *rd, const struct http_response *r,
            const char *prefix)
{
    char name[32];
    long limit, remaining;
    bool has_remaining;
    int64_t reset_ms;

    snprintf(name, sizeof(name), "%sLimit", prefix);
    if (rd->out->rl_limit < 0 &&
        count_header(http_response_header(r, name), &limit))
        rd->out->rl_limit = limit;
    snprintf(name, sizeof(name), "%sRemaining", prefix);
    has_remaining = count_header(http_response_header(r, name), &remaining);
    snprintf(name, sizeof(name), "%sReset", prefix);
    reset_ms = reset_header_ms(rd, http_response_header(r, name));
    consider_budget(rd, (double)(has_remaining ? remaining : 0), has_remaining,
                    reset_ms);
}

int
hints_parse_duration(const char *s, int64_t *ms)
{
    /* Units in the order they may appear; "ms" before "m" when reading. */
    static const struct {
        const char *unit;
        double ms;
    } units[] = {{"h", 3600000.0}, {"ms", 1.0}, {"m", 60000.0}, {"s", 1000.0}};
    const char *p = skip_ows(s);
    double total = 0;
    int last = -1; /* rank of the last unit: h 0, m 1, s 2, ms 3 */
    static const int rank[] = {0, 3, 1, 2};

    if (*p == '\0')
        return -EINVAL;
    while (*p != '\0' && *p != ' ' && *p != '\t') {
        double v;
        size_t i;
        if (!parse_decimal(&p, HINTS_MAX_DELTA_S, &v))
            return -EINVAL;
        for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            size_t n = strlen(units[i].unit);
            if (strncmp(p, units[i].unit, n) == 0 &&
                !(n == 1 && p[0] == 'm' && p[1] == 's'))
                break;
        }
        if (i == sizeof(units) / sizeof(units[0]) || rank[i] <= last)
            return -EINVAL;
        last = rank[i];
        p += strlen(units[i].unit);
        total += v * units[i].ms;
        if (total > HINTS_MAX_DELTA_S * 1000.0)
            return -EINVAL;
    }
    if (*skip_ows(p) != '\0')
        return -EINVAL;
    *ms = ceil_ms(total);
    return 0;
}

/* OpenAI's token budget: x-ratelimit-{limit,remaining,reset}-tokens, the
 * reset as a duration ("6m0s") or plain seconds. */
static void
read_tokens(struct reading *rd, const struct http_response *r)
{
    long n;
    int64_t d;
    double secs;
    const char *v;

    if (count_header(http_response_header(r, "x-ratelimit-limit-tokens"), &n))
        rd->out->tok_limit = n;
    if (count_header(http_response_header(r, "x-ratelimit-remaining-tokens"),
                     &n))
        rd->out->tok_remaining = n;
    v = http_response_header(r, "x-ratelimit-reset-tokens");
    if (v != NULL && whole_decimal(v, HINTS_MAX_DELTA_S, &secs))
        rd->out->tok_reset_ms = rd->now_ms + seconds_to_ms(secs);
    else if (v != NULL && hints_parse_duration(v, &d) == 0)
        rd->out->tok_reset_ms = rd->now_ms + d;
}

void
hints_cap(struct hints *h, int64_t now_ms)
{
    int64_t cap = now_ms + HINT_CAP_MS;

    if (h->retry_at_ms > cap || h->rl_reset_ms > cap) {
        if (h->retry_at_ms > h->asked_ms)
            h->asked_ms = h->retry_at_ms;
        if (h->rl_reset_ms > h->asked_ms)
            h->asked_ms = h->rl_reset_ms;
    }
    if (h->retry_at_ms > cap)
        h->retry_at_ms = cap;
    if (h->rl_reset_ms > cap)
        h->rl_reset_ms = cap;
    if (h->shut_until_ms > cap)
        h->shut_until_ms = cap;
    if (h->tok_reset_ms > cap)
        h->tok_reset_ms = cap;
}

void
hints_from_response(const struct http_response *r, int64_t now_ms,
                    struct hints *out)
{
    struct reading rd = {.now_ms = now_ms, .out = out};
    const char *v;
    int64_t date_ms = now_ms, delay, at;
    double d;

    memset(out, 0, sizeof(*out));
    out->rl_limit = -1;
    out->rl_remaining = -1;
    out->tok_limit = -1;
    out->tok_remaining = -1;

    v = http_response_header(r, "Date");
    if (v != NULL && hints_parse_http_date(v, &at) == 0)
        date_ms = at;
    rd.skew_ms = now_ms - date_ms;

    v = http_response_header(r, "retry-after-ms");
    if (v != NULL && whole_decimal(v, HINTS_MAX_DELTA_S * 1000.0, &d))
        consider_retry(&rd, now_ms + ceil_ms(d));
    v = http_response_header(r, "Retry-After");
    if (v != NULL && hints_parse_retry_after(v, date_ms, &delay) == 0)
        consider_retry(&rd, now_ms + delay);

    v = http_response_header(r, "RateLimit-Policy");
    if (v != NULL)
        parse_members(v, false, on_policy, &rd);
    v = http_response_header(r, "RateLimit");
    if (v != NULL) {
        /* draft-7 is a dictionary of limit/remaining/reset; draft-8+ a
         * list of policy items with parameters. */
        const char *first = skip_ows(v);
        bool dict = strncasecmp(first, "limit=", 6) == 0 ||
                    strncasecmp(first, "remaining=", 10) == 0 ||
                    strncasecmp(first, "reset=", 6) == 0;
        parse_members(v, dict, on_ratelimit, &rd);
    }
    read_legacy(&rd, r, "RateLimit-");
    read_legacy(&rd, r, "X-RateLimit-");
    read_tokens(&rd, r);
    hints_cap(out, now_ms);
}
