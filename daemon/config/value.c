/*
 * The syntaxes of config values (docs/contract.md, sluice.conf(5)):
 * durations, rates, sizes, integers, booleans, header names and lines,
 * URLs, the auth and idempotency forms. Each reads one value whole.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sluice/http.h"
#include "sluice/url.h"
#include "sluice/xmalloc.h"

#include "internal.h"

/* The header name of the IETF idempotency-key draft, which Stripe-style
 * APIs and FLORA's docs use. */
#define CONFIG_DEFAULT_IDEM_HEADER "Idempotency-Key"

bool
value_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* "12" or "1.5" at *pp into an integer part and up to 9 fraction digits
 * (as a fraction of 1e9); advances *pp. False without digits or when the
 * integer part passes max. */
static bool
parse_fixed(const char **pp, int64_t max, int64_t *whole, int64_t *nanos)
{
    const char *p = *pp;
    int64_t w = 0, f = 0, scale = 100000000;

    if (!value_digit(*p))
        return false;
    while (value_digit(*p)) {
        int d = *p++ - '0';
        if (w > (max - d) / 10)
            return false;
        w = w * 10 + d;
    }
    if (*p == '.') {
        p++;
        if (!value_digit(*p))
            return false;
        /* Digits past the ninth are read and dropped. */
        for (; value_digit(*p); p++, scale /= 10)
            f += (*p - '0') * scale;
    }
    *pp = p;
    *whole = w;
    *nanos = f;
    return true;
}

int
config_parse_duration(const char *s, int64_t *ms)
{
    static const struct {
        const char *suffix;
        int64_t ms;
    } units[] = {
        {"ms", 1},       {"s", 1000}, {"m", 60000}, {"h", 3600000},
        {"d", 86400000}, {"", 1000}, /* a bare number is seconds */
    };
    const char *p = s;
    int64_t whole, nanos;

    if (s == NULL || !parse_fixed(&p, INT64_MAX, &whole, &nanos))
        return -EINVAL;
    for (size_t i = 0; i < NKEYS(units); i++) {
        int64_t unit = units[i].ms;
        if (strcmp(p, units[i].suffix) != 0)
            continue;
        if (whole > INT64_MAX / unit)
            return -EINVAL;
        /* nanos < 1e9 and unit <= 8.64e7: the product fits in int64. */
        int64_t frac = nanos * unit / 1000000000;
        if (whole * unit > INT64_MAX - frac)
            return -EINVAL;
        *ms = whole * unit + frac;
        return 0;
    }
    return -EINVAL;
}

int
config_parse_rate(const char *s, double *per_s)
{
    static const struct {
        const char *unit;
        double seconds;
    } units[] = {
        {"s", 1}, {"sec", 1}, {"m", 60}, {"min", 60}, {"h", 3600},
    };
    const char *p = s;
    int64_t whole, nanos;

    /* A billion per second is beyond any API; it bounds the arithmetic. */
    if (s == NULL || !parse_fixed(&p, 1000000000, &whole, &nanos) ||
        *p != '/' || (whole == 0 && nanos == 0))
        return -EINVAL;
    p++;
    for (size_t i = 0; i < NKEYS(units); i++) {
        if (strcmp(p, units[i].unit) == 0) {
            *per_s = ((double)whole + (double)nanos / 1e9) / units[i].seconds;
            return 0;
        }
    }
    return -EINVAL;
}

int
value_size(const char *s, size_t *out)
{
    const char *p = s;
    int64_t whole, nanos, mult;

    if (!parse_fixed(&p, INT64_MAX, &whole, &nanos) || nanos != 0)
        return -EINVAL;
    if (*p == '\0')
        mult = 1;
    else if ((*p == 'k' || *p == 'K') && p[1] == '\0')
        mult = 1024;
    else if (*p == 'M' && p[1] == '\0')
        mult = 1024 * 1024;
    else if (*p == 'G' && p[1] == '\0')
        mult = 1024 * 1024 * 1024;
    else
        return -EINVAL;
    if (whole > (int64_t)(SIZE_MAX > INT64_MAX ? INT64_MAX : SIZE_MAX) / mult)
        return -EINVAL;
    *out = (size_t)(whole * mult);
    return 0;
}

int
value_int(const char *s, int *out)
{
    const char *p = s;
    int64_t whole, nanos;

    if (!parse_fixed(&p, INT32_MAX, &whole, &nanos) || nanos != 0 ||
        *p != '\0' || strchr(s, '.') != NULL)
        return -EINVAL;
    *out = (int)whole;
    return 0;
}

int
value_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"yes", "true", "1"};
    static const char *const no[] = {"no", "false", "0"};

    for (size_t i = 0; i < NKEYS(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* RFC 9110 token characters: what a header name may contain. */
bool
value_token(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              value_digit((char)c) ||
              (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL)))
            return false;
    }
    return true;
}

bool
value_env_name(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return false;
    for (s++; *s; s++) {
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
              value_digit(*s) || *s == '_'))
            return false;
    }
    return true;
}

bool
value_has_control(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    }
    return false;
}

/* "bearer", "header:NAME", "none". */
int
value_auth(const char *s, enum auth_kind *kind, char **header)
{
    if (strcmp(s, "bearer") == 0) {
        *kind = AUTH_BEARER;
        *header = NULL;
    } else if (strcmp(s, "none") == 0) {
        *kind = AUTH_NONE;
        *header = NULL;
    } else if (strncmp(s, "header:", 7) == 0 &&
               value_token(s + 7, strlen(s + 7))) {
        *kind = AUTH_HEADER;
        *header = xstrdup(s + 7);
    } else {
        return -EINVAL;
    }
    return 0;
}

/* "header", "header:NAME", "body:FIELD", "none". */
int
value_idem(const char *s, enum idem_kind *kind, char **name)
{
    if (strcmp(s, "header") == 0) {
        *kind = IDEM_HEADER;
        *name = xstrdup(CONFIG_DEFAULT_IDEM_HEADER);
    } else if (strcmp(s, "none") == 0) {
        *kind = IDEM_NONE;
        *name = NULL;
    } else if (strncmp(s, "header:", 7) == 0 &&
               value_token(s + 7, strlen(s + 7))) {
        *kind = IDEM_HEADER;
        *name = xstrdup(s + 7);
    } else if (strncmp(s, "body:", 5) == 0 && s[5] != '\0' &&
               !value_has_control(s + 5) && strchr(s + 5, '"') == NULL) {
        *kind = IDEM_BODY;
        *name = xstrdup(s + 5);
    } else {
        return -EINVAL;
    }
    return 0;
}

/* "Name: value" → a normalised copy, or NULL. */
char *
value_header_line(const char *s)
{
    const char *colon = strchr(s, ':');
    const char *v;

    if (colon == NULL || !value_token(s, (size_t)(colon - s)) ||
        value_has_control(s))
        return NULL;
    for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
        ;
    char *line = xasprintf("%.*s: %s", (int)(colon - s), s, v);
    /* Only what the daemon will send: visible ASCII and spaces. */
    if (!http_header_ok(line)) {
        free(line);
        return NULL;
    }
    return line;
}

/* http(s)://host… without a trailing slash, or NULL. */
char *
value_url(const char *s)
{
    size_t n, scheme;

    if (strncasecmp(s, "https://", 8) == 0)
        scheme = 8;
    else if (strncasecmp(s, "http://", 7) == 0)
        scheme = 7;
    else
        return NULL;
    if (value_has_control(s) || strpbrk(s, " \"<>\\^`{|}") != NULL)
        return NULL;
    n = strlen(s);
    while (n > scheme && s[n - 1] == '/')
        n--;
    /* A host, as the daemon will read it: "https://?x" has none. */
    if (n == scheme || s[scheme] == '/' || url_origin_len(s) == 0)
        return NULL;
    return xstrndup(s, n);
}
