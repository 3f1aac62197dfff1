/*
 * config: the INI file of docs/contract.md, parsed completely and validated
 * before anything starts (relayd's rule), so a daemon never runs half
 * configured. Every error names FILE:LINE: key: problem.
 *
 * How it works: inih splits lines into sections and key = value pairs, but
 * it only reports the line of the first error and never announces a
 * section that has no keys. So inih is driven through ini_parse_stream()
 * with our own reader, which counts lines and sees every "[section]" line
 * as it passes: the reader opens sections (catching unknown and duplicate
 * ones), the handler applies keys with the current line number at hand.
 * Keys are described by two tables (type, bounds, offset into the struct)
 * so adding a key is one line. Checks that involve several keys (a
 * provider without base_url, a start above a max) run after the whole
 * file and name the line of the section header.
 *
 * Defaults that involve two keys yield to the one that was set: with only
 * concurrency_max = 2, the start becomes 2 rather than an error; an error
 * is reserved for two explicit values that contradict each other.
 *
 * Values are echoed in messages except where a misplaced secret could land
 * (api_key_env, header): those messages describe the problem without the
 * value. Keys are read by config_api_key() only, when the daemon needs
 * them, and never stored in struct config.
 *
 * The syntax of each value type is value.c's; reading a key is key.c's
 * (internal.h says who does what).
 */
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sluice/config.h"
#include "sluice/dialect.h"
#include "sluice/jsonptr.h"
#include "sluice/log.h"
#include "sluice/metrics.h"
#include "sluice/xmalloc.h"

#include "internal.h"

/* Longest accepted line, newline included. Debian's inih reads lines into
 * a 200-byte stack buffer by default, too short for a long URL or header;
 * its runtime knobs switch to a heap buffer of this size. */
#define CONFIG_MAX_LINE 4096
/* The database of a system install (docs/contract.md). */
#define CONFIG_DEFAULT_DATABASE "/var/lib/sluice/queue.db"
#define CONFIG_MSG_MAX 512
/* Downloads at once (docs/design.md §13): a few streams saturate a link, and
 * each holds a file open. */
#define CONFIG_DEFAULT_OUTPUTS_CONCURRENCY 4
/* One output file at most: generated videos run to hundreds of MiB; a
 * larger body is a wrong URL or an attack on the disk. */
#define CONFIG_DEFAULT_OUTPUTS_MAX_SIZE ((size_t)1 << 30)

enum key_type {
    K_STRING,   /* any non-empty text */
    K_DURATION, /* config_parse_duration; min is the least ms allowed */
    K_INT,      /* decimal int; min is the least value allowed */
    K_BOOL,
    K_RATE,
    K_SIZE, /* bytes with an optional k/K, M, G suffix */
    K_LOG_LEVEL,
    K_DIALECT,
    K_URL,
    K_ENV_NAME,
    K_TOKEN, /* an HTTP header name */
    K_AUTH,
    K_IDEM,
    K_HEADER,       /* repeatable "Name: value" */
    K_OUTPUTS,      /* download | keep-urls */
    K_POINTER,      /* repeatable JSON pointer, "*" for array elements */
    K_LISTEN,       /* ADDR:PORT, an IP literal (metrics_listen_valid) */
    K_AMOUNT,       /* a decimal >= 0 (min 1: above 0), money or a price */
    K_COST_POINTER, /* one JSON pointer (jsonptr), into a job's result */
};

struct key {
    const char *name;
    enum key_type type;
    size_t offset; /* into struct config or struct provider_config */
    int64_t min;
};

#define D(field) offsetof(struct config, field)
#define P(field) offsetof(struct provider_config, field)

static const struct key daemon_keys[] = {
    {"database", K_STRING, D(database), 0},
    {"shutdown_grace", K_DURATION, D(shutdown_grace_ms), 0},
    {"lease", K_DURATION, D(lease_ms), 1000},
    /* 3 s: a few heartbeats (one a second) must fit in it */
    {"heartbeat_timeout", K_DURATION, D(heartbeat_timeout_ms), 3000},
    {"log_level", K_LOG_LEVEL, D(log_level), 0},
    {"outputs_dir", K_STRING, D(outputs_dir), 0},
    {"outputs_concurrency", K_INT, D(outputs_concurrency), 1},
    {"outputs_max_size", K_SIZE, D(outputs_max_size), 1},
    {"metrics", K_LISTEN, D(metrics), 0},
};

/* The order of this table is the bit order of provider_state.seen. */
enum {
    PK_DIALECT,
    PK_BASE_URL,
    PK_API_KEY_ENV,
    PK_API_KEY_FILE,
    PK_AUTH,
    PK_HEADER,
    PK_IDEMPOTENCY,
    PK_REQUEST_ID_HEADER,
    PK_CONCURRENCY_START,
    PK_CONCURRENCY_MAX,
    PK_ADAPTIVE,
    PK_RATE_LIMIT,
    PK_TOKEN_LIMIT,
    PK_TIMEOUT,
    PK_CONNECT_TIMEOUT,
    PK_MAX_ATTEMPTS,
    PK_MAX_DEFERRALS,
    PK_BACKOFF_BASE,
    PK_BACKOFF_CAP,
    PK_POLL_INTERVAL,
    PK_POLL_INTERVAL_MAX,
    PK_PROBE_INTERVAL,
    PK_MAX_RESPONSE,
    PK_OUTPUTS,
    PK_OUTPUT_POINTER,
    PK_BUDGET,
    PK_COST_POINTER,
    PK_TOKEN_PRICE,
};

static const struct key provider_keys[] = {
    [PK_DIALECT] = {"dialect", K_DIALECT, P(dialect), 0},
    [PK_BASE_URL] = {"base_url", K_URL, P(base_url), 0},
    [PK_API_KEY_ENV] = {"api_key_env", K_ENV_NAME, P(api_key_env), 0},
    [PK_API_KEY_FILE] = {"api_key_file", K_STRING, P(api_key_file), 0},
    [PK_AUTH] = {"auth", K_AUTH, 0, 0},
    [PK_HEADER] = {"header", K_HEADER, 0, 0},
    [PK_IDEMPOTENCY] = {"idempotency", K_IDEM, 0, 0},
    [PK_REQUEST_ID_HEADER] = {"request_id_header", K_TOKEN,
                              P(request_id_header), 0},
    [PK_CONCURRENCY_START] = {"concurrency_start", K_INT, P(concurrency_start),
                              1},
    [PK_CONCURRENCY_MAX] = {"concurrency_max", K_INT, P(concurrency_max), 1},
    [PK_ADAPTIVE] = {"adaptive", K_BOOL, P(adaptive), 0},
    [PK_RATE_LIMIT] = {"rate_limit", K_RATE, P(rate_per_s), 0},
    [PK_TOKEN_LIMIT] = {"token_limit", K_RATE, P(tokens_per_s), 0},
    [PK_TIMEOUT] = {"timeout", K_DURATION, P(timeout_ms), 1},
    [PK_CONNECT_TIMEOUT] = {"connect_timeout", K_DURATION,
                            P(connect_timeout_ms), 1},
    [PK_MAX_ATTEMPTS] = {"max_attempts", K_INT, P(max_attempts), 1},
    [PK_MAX_DEFERRALS] = {"max_deferrals", K_INT, P(max_deferrals), 0},
    [PK_BACKOFF_BASE] = {"backoff_base", K_DURATION, P(backoff_base_ms), 1},
    [PK_BACKOFF_CAP] = {"backoff_cap", K_DURATION, P(backoff_cap_ms), 1},
    [PK_POLL_INTERVAL] = {"poll_interval", K_DURATION, P(poll_interval_ms), 1},
    [PK_POLL_INTERVAL_MAX] = {"poll_interval_max", K_DURATION,
                              P(poll_interval_max_ms), 1},
    [PK_PROBE_INTERVAL] = {"probe_interval", K_DURATION, P(probe_interval_ms),
                           1},
    [PK_MAX_RESPONSE] = {"max_response", K_SIZE, P(max_response), 1},
    [PK_OUTPUTS] = {"outputs", K_OUTPUTS, P(outputs_download), 0},
    [PK_OUTPUT_POINTER] = {"output_pointer", K_POINTER, 0, 0},
    [PK_BUDGET] = {"budget", K_AMOUNT, P(budget), 1},
    [PK_COST_POINTER] = {"cost_pointer", K_COST_POINTER, P(cost_pointer), 0},
    [PK_TOKEN_PRICE] = {"token_price", K_AMOUNT, P(token_price), 0},
};

/* What the parser remembers about a provider section beyond its values. */
struct provider_state {
    int line;      /* of the [provider "NAME"] header */
    uint32_t seen; /* bit per provider_keys index: set explicitly */
};

enum section { SEC_NONE, SEC_DAEMON, SEC_PROVIDER };

struct parser {
    const char *name; /* file name for messages */
    FILE *file;       /* source: a file, or */
    const char *text; /* a string (advanced as read) */
    char *line;       /* getline buffer */
    size_t linecap;
    int lineno;
    struct config *c;
    enum section sec;
    struct provider_state *ps; /* parallel to c->providers */
    int daemon_line;           /* of [daemon], 0 if none */
    uint32_t daemon_seen;
    char msg[CONFIG_MSG_MAX];   /* first error */
    char label[CONFIG_MSG_MAX]; /* section_label's answer */
    int failed;                 /* line of the first error, 0 if none */
};

/* A seen mask holds one bit per key of its table. */
_Static_assert(NKEYS(daemon_keys) <=
                   sizeof(((struct parser *)0)->daemon_seen) * CHAR_BIT,
               "parser.daemon_seen has a bit per daemon key");
_Static_assert(NKEYS(provider_keys) <=
                   sizeof(((struct provider_state *)0)->seen) * CHAR_BIT,
               "provider_state.seen has a bit per provider key");

static void parser_fail(struct parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
parser_fail(struct parser *p, int line, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (p->failed)
        return;
    p->failed = line;
    n = snprintf(p->msg, sizeof(p->msg), "%s:%d: ", p->name, line);
    if (n < 0 || (size_t)n >= sizeof(p->msg))
        return;
    va_start(ap, fmt);
    vsnprintf(p->msg + n, sizeof(p->msg) - (size_t)n, fmt, ap);
    va_end(ap);
}

/* ---- sections ---- */

static const char *
section_label(struct parser *p)
{
    if (p->sec == SEC_DAEMON)
        return "[daemon]";
    snprintf(p->label, sizeof(p->label), "[provider \"%s\"]",
             p->c->providers[p->c->nproviders - 1].name);
    return p->label;
}

static bool
valid_provider_name(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              value_digit(c) || c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* The defaults documented in config.h (docs/design.md §6 for the flow
 * control). */
static void
provider_defaults(struct provider_config *pc)
{
    pc->concurrency_start = 4;
    pc->concurrency_max = 64;
    pc->adaptive = true;
    pc->timeout_ms = 120000;
    pc->connect_timeout_ms = 10000;
    pc->max_attempts = 5;
    pc->max_deferrals = 50;
    pc->backoff_base_ms = 1000;
    pc->backoff_cap_ms = 60000;
    pc->poll_interval_ms = 3000;
    pc->poll_interval_max_ms = 15000;
    pc->probe_interval_ms = 300000;
    pc->max_response = 8 * 1024 * 1024;
}

/* Opens the section named by the text between the brackets. */
static void
section_open(struct parser *p, const char *s, size_t n)
{
    struct config *c = p->c;

    if (n == 6 && strncmp(s, "daemon", 6) == 0) {
        if (p->daemon_line != 0) {
            parser_fail(p, p->lineno,
                        "[daemon]: duplicate section (first on line %d)",
                        p->daemon_line);
            return;
        }
        p->daemon_line = p->lineno;
        p->sec = SEC_DAEMON;
        return;
    }
    if (n > 11 && strncmp(s, "provider \"", 10) == 0 && s[n - 1] == '"' &&
        valid_provider_name(s + 10, n - 11)) {
        char *name = xstrndup(s + 10, n - 11);
        for (size_t i = 0; i < c->nproviders; i++) {
            if (strcmp(c->providers[i].name, name) == 0) {
                parser_fail(p, p->lineno,
                            "[provider \"%s\"]: duplicate section "
                            "(first on line %d)",
                            name, p->ps[i].line);
                free(name);
                return;
            }
        }
        c->providers =
            xrealloc(c->providers, (c->nproviders + 1) * sizeof(*c->providers));
        p->ps = xrealloc(p->ps, (c->nproviders + 1) * sizeof(*p->ps));
        memset(&c->providers[c->nproviders], 0, sizeof(*c->providers));
        memset(&p->ps[c->nproviders], 0, sizeof(*p->ps));
        c->providers[c->nproviders].name = name;
        provider_defaults(&c->providers[c->nproviders]);
        p->ps[c->nproviders].line = p->lineno;
        c->nproviders++;
        p->sec = SEC_PROVIDER;
        return;
    }
    parser_fail(p, p->lineno,
                "[%.*s]: unknown section (use [daemon] or "
                "[provider \"NAME\"], NAME of letters, digits, _ - .)",
                (int)n, s);
}

/* ---- the inih callbacks ---- */

/* Reads one line for inih; returns NULL at the end or after an error,
 * which ends the parse. */
static char *
parser_read(char *str, int num, void *stream)
{
    struct parser *p = stream;
    const char *line, *s;
    size_t len;

    if (p->failed)
        return NULL;
    if (p->file != NULL) {
        ssize_t r = getline(&p->line, &p->linecap, p->file);
        if (r < 0)
            return NULL;
        line = p->line;
        len = (size_t)r;
    } else {
        if (*p->text == '\0')
            return NULL;
        line = p->text;
        s = strchr(line, '\n');
        len = s ? (size_t)(s - line) + 1 : strlen(line);
        p->text += len;
    }
    p->lineno++;
    if (len + 1 > (size_t)num) {
        parser_fail(p, p->lineno, "line too long (over %d characters)",
                    num - 2);
        return NULL;
    }
    memcpy(str, line, len);
    str[len] = '\0';

    /* The same reading of "[...]" as inih's: after leading blanks (and a
     * UTF-8 BOM on line 1), up to the first ']'. */
    s = str;
    if (p->lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3;
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '[') {
        const char *end = strchr(s + 1, ']');
        if (end != NULL)
            section_open(p, s + 1, (size_t)(end - s - 1));
        if (p->failed)
            return NULL;
    }
    return str;
}

/* Applies value to the key k of the struct at base. Returns false after
 * recording an error. */
static bool
apply(struct parser *p, const struct key *k, void *base, const char *v)
{
    char *at = (char *)base + k->offset;
    struct provider_config *pc = base;
    const struct dialect *d;
    int64_t ms;
    int n;

    switch (k->type) {
    case K_STRING:
        if (*v == '\0' || value_has_control(v))
            break;
        *(char **)(void *)at = xstrdup(v);
        return true;
    case K_DURATION:
        if (config_parse_duration(v, &ms) < 0) {
            parser_fail(p, p->lineno, "%s: bad duration '%s' (use ms, s, m, h)",
                        k->name, v);
            return false;
        }
        if (ms < k->min) {
            parser_fail(p, p->lineno, "%s: must be at least %lld ms", k->name,
                        (long long)k->min);
            return false;
        }
        *(int64_t *)(void *)at = ms;
        return true;
    case K_INT:
        if (value_int(v, &n) < 0) {
            parser_fail(p, p->lineno, "%s: bad number '%s'", k->name, v);
            return false;
        }
        if (n < k->min) {
            parser_fail(p, p->lineno, "%s: must be at least %lld", k->name,
                        (long long)k->min);
            return false;
        }
        *(int *)(void *)at = n;
        return true;
    case K_BOOL:
        if (value_bool(v, (bool *)(void *)at) == 0)
            return true;
        parser_fail(p, p->lineno,
                    "%s: bad boolean '%s' (use yes, no, true, false, 1, 0)",
                    k->name, v);
        return false;
    case K_RATE:
        if (config_parse_rate(v, (double *)(void *)at) == 0)
            return true;
        parser_fail(p, p->lineno, "%s: bad rate '%s' (use N/s, N/min, N/h)",
                    k->name, v);
        return false;
    case K_SIZE:
        if (value_size(v, (size_t *)(void *)at) == 0 &&
            *(size_t *)(void *)at >= (size_t)k->min)
            return true;
        parser_fail(p, p->lineno, "%s: bad size '%s' (use bytes, K, M, G)",
                    k->name, v);
        return false;
    case K_LOG_LEVEL: {
        enum log_level level;
        if (log_level_parse(v, &level) == 0) {
            *(int *)(void *)at = (int)level;
            return true;
        }
        parser_fail(p, p->lineno,
                    "%s: bad level '%s' (use error, warn, info, debug)",
                    k->name, v);
        return false;
    }
    case K_DIALECT:
        d = dialect_find(v);
        if (d == NULL) {
            parser_fail(p, p->lineno, "%s: unknown dialect '%s' (use %s)",
                        k->name, v, dialect_names());
            return false;
        }
        *(char **)(void *)at = xstrdup(d->name);
        return true;
    case K_URL:
        if ((*(char **)(void *)at = value_url(v)) != NULL)
            return true;
        parser_fail(p, p->lineno,
                    "%s: bad URL '%s' (use http://HOST or https://HOST)",
                    k->name, v);
        return false;
    case K_ENV_NAME:
        if (value_env_name(v)) {
            *(char **)(void *)at = xstrdup(v);
            return true;
        }
        /* Not echoed: a key pasted here by mistake must not be logged. */
        parser_fail(p, p->lineno,
                    "%s: not an environment variable name (the key itself "
                    "never goes in this file)",
                    k->name);
        return false;
    case K_TOKEN:
        if (value_token(v, strlen(v))) {
            *(char **)(void *)at = xstrdup(v);
            return true;
        }
        parser_fail(p, p->lineno, "%s: bad header name '%s'", k->name, v);
        return false;
    case K_AUTH:
        if (value_auth(v, &pc->auth, &pc->auth_header) == 0)
            return true;
        parser_fail(p, p->lineno,
                    "%s: bad auth '%s' (use bearer, header:NAME or none)",
                    k->name, v);
        return false;
    case K_IDEM:
        if (value_idem(v, &pc->idem, &pc->idem_name) == 0)
            return true;
        parser_fail(p, p->lineno,
                    "%s: bad idempotency '%s' (use header, header:NAME, "
                    "body:FIELD or none)",
                    k->name, v);
        return false;
    case K_LISTEN:
        if (metrics_listen_valid(v)) {
            *(char **)(void *)at = xstrdup(v);
            return true;
        }
        parser_fail(p, p->lineno,
                    "%s: bad address '%s' (use ADDR:PORT with an IP address, "
                    "e.g. 127.0.0.1:9464 or [::1]:9464)",
                    k->name, v);
        return false;
    case K_AMOUNT: {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (errno == 0 && end != v && *end == '\0' && x >= 0 && x < 1e15 &&
            (k->min == 0 || x > 0)) {
            *(double *)(void *)at = x;
            return true;
        }
        parser_fail(p, p->lineno,
                    "%s: bad amount '%s' (a decimal%s, e.g. 25.00)", k->name, v,
                    k->min ? " above 0" : " of 0 or more");
        return false;
    }
    case K_COST_POINTER:
        if (v[0] == '/' && jsonptr_valid(v) && !value_has_control(v)) {
            *(char **)(void *)at = xstrdup(v);
            return true;
        }
        parser_fail(p, p->lineno,
                    "%s: bad JSON pointer '%s' (use /a/b, * for every "
                    "array element, ~0 for ~ and ~1 for /)",
                    k->name, v);
        return false;
    case K_HEADER: {
        char *h = value_header_line(v);
        if (h == NULL) {
            /* Not echoed: extra headers often carry tokens. */
            parser_fail(p, p->lineno, "%s: bad header (use \"Name: value\")",
                        k->name);
            return false;
        }
        pc->headers =
            xrealloc(pc->headers, (pc->nheaders + 1) * sizeof(*pc->headers));
        pc->headers[pc->nheaders++] = h;
        return true;
    }
    case K_OUTPUTS:
        if (strcmp(v, "download") == 0 || strcmp(v, "keep-urls") == 0) {
            *(bool *)(void *)at = strcmp(v, "download") == 0;
            return true;
        }
        parser_fail(p, p->lineno,
                    "%s: bad value '%s' (use download or keep-urls)", k->name,
                    v);
        return false;
    case K_POINTER:
        if (!jsonptr_valid(v) || value_has_control(v)) {
            parser_fail(p, p->lineno,
                        "%s: bad JSON pointer '%s' (use /a/b, * for every "
                        "array element, ~0 for ~ and ~1 for /)",
                        k->name, v);
            return false;
        }
        pc->output_pointers =
            xrealloc(pc->output_pointers,
                     (pc->noutput_pointers + 1) * sizeof(*pc->output_pointers));
        pc->output_pointers[pc->noutput_pointers++] = xstrdup(v);
        return true;
    }
    parser_fail(p, p->lineno, "%s: empty or bad value", k->name);
    return false;
}

static int
parser_handle(void *user, const char *section, const char *name,
              const char *value)
{
    struct parser *p = user;
    const struct key *table;
    size_t nkeys;
    uint32_t *seen;
    void *base;

    (void)section; /* the reader tracks sections, empty ones included */
    if (p->sec == SEC_NONE) {
        parser_fail(p, p->lineno, "%s: key outside a section", name);
        return 0;
    }
    if (p->sec == SEC_DAEMON) {
        table = daemon_keys;
        nkeys = NKEYS(daemon_keys);
        seen = &p->daemon_seen;
        base = p->c;
    } else {
        table = provider_keys;
        nkeys = NKEYS(provider_keys);
        seen = &p->ps[p->c->nproviders - 1].seen;
        base = &p->c->providers[p->c->nproviders - 1];
    }
    for (size_t i = 0; i < nkeys; i++) {
        if (strcmp(name, table[i].name) != 0)
            continue;
        if ((*seen & (1u << i)) && table[i].type != K_HEADER &&
            table[i].type != K_POINTER) {
            parser_fail(p, p->lineno, "%s: set twice in %s", name,
                        section_label(p));
            return 0;
        }
        *seen |= 1u << i;
        return apply(p, &table[i], base, value) ? 1 : 0;
    }
    parser_fail(p, p->lineno, "%s: unknown key in %s", name, section_label(p));
    return 0;
}

/* ---- validation after the whole file ---- */

static bool
was_set(const struct provider_state *ps, int key)
{
    return (ps->seen & (1u << key)) != 0;
}

/* Orders a (lower) and b (upper) of two keys: the unset one yields; two
 * explicit values that contradict are an error. */
static bool
order_pair(struct parser *p, const struct provider_state *ps, int klo, int khi,
           int64_t *lo, int64_t *hi)
{
    if (*lo <= *hi)
        return true;
    if (was_set(ps, klo) && was_set(ps, khi)) {
        parser_fail(p, ps->line, "%s: above %s", provider_keys[klo].name,
                    provider_keys[khi].name);
        return false;
    }
    if (was_set(ps, klo))
        *hi = *lo;
    else
        *lo = *hi;
    return true;
}

static void
finish_provider(struct parser *p, struct provider_config *pc,
                const struct provider_state *ps)
{
    const struct dialect *d;
    int64_t start = pc->concurrency_start, max = pc->concurrency_max;

    if (pc->dialect == NULL)
        pc->dialect = xstrdup("generic");
    d = dialect_find(pc->dialect);
    if (d == NULL) {
        parser_fail(p, ps->line, "dialect: unknown dialect '%s' (use %s)",
                    pc->dialect, dialect_names());
        return;
    }
    if (pc->base_url == NULL) {
        parser_fail(p, ps->line, "base_url: missing in [provider \"%s\"]",
                    pc->name);
        return;
    }
    if (pc->api_key_env != NULL && pc->api_key_file != NULL) {
        parser_fail(p, ps->line,
                    "api_key_file: set together with api_key_env (use one)");
        return;
    }
    if (!was_set(ps, PK_AUTH) &&
        value_auth(d->auth, &pc->auth, &pc->auth_header) < 0) {
        parser_fail(p, ps->line, "auth: dialect %s has a bad default", d->name);
        return;
    }
    if (!was_set(ps, PK_IDEMPOTENCY) &&
        value_idem(d->idempotency, &pc->idem, &pc->idem_name) < 0) {
        parser_fail(p, ps->line, "idempotency: dialect %s has a bad default",
                    d->name);
        return;
    }
    if (!order_pair(p, ps, PK_CONCURRENCY_START, PK_CONCURRENCY_MAX, &start,
                    &max) ||
        !order_pair(p, ps, PK_BACKOFF_BASE, PK_BACKOFF_CAP,
                    &pc->backoff_base_ms, &pc->backoff_cap_ms) ||
        !order_pair(p, ps, PK_POLL_INTERVAL, PK_POLL_INTERVAL_MAX,
                    &pc->poll_interval_ms, &pc->poll_interval_max_ms))
        return;
    pc->concurrency_start = (int)start;
    pc->concurrency_max = (int)max;
    /* A lease that ran out mid-request would let another claim run the
     * same job twice. */
    if (pc->timeout_ms >= p->c->lease_ms) {
        parser_fail(p, ps->line,
                    "timeout: %lld ms is not below the daemon's lease "
                    "(%lld ms; raise lease in [daemon])",
                    (long long)pc->timeout_ms, (long long)p->c->lease_ms);
        return;
    }
    if (pc->outputs_download && p->c->outputs_dir == NULL)
        parser_fail(p, ps->line,
                    "outputs: download needs outputs_dir in [daemon]");
}

static void
config_defaults(struct config *c)
{
    c->database = NULL;
    c->shutdown_grace_ms = 30000;
    c->lease_ms = 600000;
    c->heartbeat_timeout_ms = 30000;
    c->log_level = LOG_LEVEL_INFO;
    c->outputs_concurrency = CONFIG_DEFAULT_OUTPUTS_CONCURRENCY;
    c->outputs_max_size = CONFIG_DEFAULT_OUTPUTS_MAX_SIZE;
}

static char inline_comment_prefixes[] = ";#";

static int
parse(struct parser *p, struct config **out, char *err, size_t errlen)
{
    int rc;

    /* Debian's inih exposes its compile-time options as globals: a heap
     * line buffer (so long lines fit), no continuation lines (an indented
     * line is a key of its own), stop at the first error, and '#' inline
     * comments as docs/contract.md promises. */
    ini_use_stack = false;
    ini_initial_alloc = CONFIG_MAX_LINE;
    ini_allow_realloc = false; /* growth re-calls the reader mid-line */
    ini_max_line = CONFIG_MAX_LINE;
    ini_allow_multiline = false;
    ini_stop_on_first_error = true;
    ini_allow_inline_comments = true;
    ini_inline_comment_prefixes = inline_comment_prefixes;

    p->c = xcalloc(1, sizeof(*p->c));
    config_defaults(p->c);
    rc = ini_parse_stream(parser_read, p, parser_handle, p);
    if (rc == -2)
        fatalx("config: out of memory in inih");
    if (rc > 0 && !p->failed)
        parser_fail(p, rc,
                    "syntax error (expected key = value or "
                    "[section])");
    if (p->file != NULL && ferror(p->file) && !p->failed)
        parser_fail(p, p->lineno + 1, "read error");
    for (size_t i = 0; i < p->c->nproviders && !p->failed; i++)
        finish_provider(p, &p->c->providers[i], &p->ps[i]);
    if (p->c->database == NULL)
        p->c->database = xstrdup(CONFIG_DEFAULT_DATABASE);
    free(p->ps);
    free(p->line);
    if (p->failed) {
        snprintf(err, errlen, "%s", p->msg);
        config_free(p->c);
        *out = NULL;
        return -EINVAL;
    }
    *out = p->c;
    return 0;
}

int
config_load(const char *path, struct config **out, char *err, size_t errlen)
{
    struct parser p = {.name = path};
    int rc;

    *out = NULL;
    p.file = fopen(path, "re");
    if (p.file == NULL) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return rc;
    }
    rc = parse(&p, out, err, errlen);
    fclose(p.file);
    if (rc == 0)
        (*out)->path = xstrdup(path);
    return rc;
}

int
config_load_string(const char *text, const char *name, struct config **out,
                   char *err, size_t errlen)
{
    struct parser p = {.name = name, .text = text};

    *out = NULL;
    return parse(&p, out, err, errlen);
}

static void
provider_free(struct provider_config *pc)
{
    free(pc->name);
    free(pc->dialect);
    free(pc->base_url);
    free(pc->api_key_env);
    free(pc->api_key_file);
    free(pc->auth_header);
    for (size_t i = 0; i < pc->nheaders; i++)
        free(pc->headers[i]);
    free(pc->headers);
    free(pc->idem_name);
    free(pc->request_id_header);
    for (size_t i = 0; i < pc->noutput_pointers; i++)
        free(pc->output_pointers[i]);
    free(pc->output_pointers);
    free(pc->cost_pointer);
}

void
config_free(struct config *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->nproviders; i++)
        provider_free(&c->providers[i]);
    free(c->providers);
    free(c->path);
    free(c->database);
    free(c->outputs_dir);
    free(c->metrics);
    free(c);
}

const struct provider_config *
config_provider(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->nproviders; i++) {
        if (strcmp(c->providers[i].name, name) == 0)
            return &c->providers[i];
    }
    return NULL;
}

const char *
config_default_path(const char *flag)
{
    const char *env;

    if (flag != NULL && *flag != '\0')
        return flag;
    env = getenv("SLUICE_CONFIG");
    if (env != NULL && *env != '\0')
        return env;
    return CONFIG_DEFAULT_PATH;
}
