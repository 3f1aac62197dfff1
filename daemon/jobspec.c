/*
 * jobspec: one JSONL line of `sluicectl enqueue` into a row to insert.
 *
 * The line is read once by canon (canon.h), which writes the body
 * compactly with sorted keys as it reads it, checked key by key (unknown
 * keys are errors, so a typo like "max_attempt" never silently becomes a
 * default), and normalised so that the same request always yields the
 * same row: the method upper case, the url as the path under the
 * provider's base_url, the body canonical. The idempotency key is then the
 * custom_id, or a sha256 over (provider, method, path, body), or random
 * with --unique (docs/design.md §4): re-feeding a file is a no-op.
 *
 * A line canon leaves (bad JSON, duplicate keys, deep nesting, a bad or
 * unknown field) is parsed again with jansson, the reference: its loadb
 * and sorted dump are what canon reproduces byte for byte, and its errors
 * name the column. Both readers fill the same struct line and share every
 * check after it, so a field means the same whichever read it. The two
 * passes of jansson (parse, then dump) were half of enqueue's CPU.
 *
 * Every error message starts with the field it is about ("url: must be a
 * string"); sluicectl prefixes FILE:LINE.
 */
#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "sluice/canon.h"
#include "sluice/clock.h"
#include "sluice/config.h"
#include "sluice/jobspec.h"
#include "sluice/url.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

/* Caller ids are for humans and support tickets, not payloads. */
#define CUSTOM_ID_MAX 256
/* A line may ask for more attempts than the config, within reason: every
 * attempt may be a paid generation. */
#define MAX_ATTEMPTS_CAP 1000
/* config.h's default, for a hand-built config that leaves it 0. */
#define MAX_ATTEMPTS_DEFAULT 5
/* 128 random bits as hex: collisions are not a concern. */
#define UNIQUE_KEY_BYTES 16

static const char *const keys_allowed[] = {
    "custom_id", "method", "url", "body", "provider", "priority",
    "max_attempts",
};

static const char *const methods[] = {"GET", "POST", "PUT", "PATCH",
                                      "DELETE"};

static int
fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes the message and returns -EINVAL. */
static int
fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static const struct provider_config *
find_provider(const struct config *c, const char *name)
{
    for (size_t i = 0; c && i < c->nproviders; i++) {
        if (strcmp(c->providers[i].name, name) == 0)
            return &c->providers[i];
    }
    return NULL;
}

/* The path to store for url (url.h says which). */
static int
parse_url(const char *url, const struct provider_config *p, char **out,
          char *err, size_t errlen)
{
    if (*url == '\0')
        return fail(err, errlen, "url: must not be empty");
    switch (url_job_path(p->base_url, url, out)) {
    case 0:
        return 0;
    case -EILSEQ:
        return fail(err, errlen,
                    "url: contains a space, a control character or a "
                    "non-ASCII byte (percent-encode it)");
    case -EXDEV:
        return fail(err, errlen,
                    "url: %.*s is not provider %s's host (base_url %s)",
                    (int)url_origin_len(url), url, p->name, p->base_url);
    default:
        return fail(err, errlen,
                    "url: must be a path starting with \"/\" or an "
                    "http(s) URL");
    }
}

/* A field of a job line as either reader found it. */
enum field_kind {
    FIELD_ABSENT,
    FIELD_NULL,
    FIELD_STRING,
    FIELD_INTEGER,
    FIELD_OBJECT,
    FIELD_OTHER, /* a boolean, real or array */
};

struct field {
    enum field_kind kind;
    const char *s; /* FIELD_STRING: decoded, NUL-terminated; FIELD_OBJECT:
                      its canonical text, NULL if it cannot be written */
    size_t len;    /* of s */
    long long n;   /* FIELD_INTEGER */
};

/* The fields of one line, borrowed from the reader that filled them. */
struct line {
    struct field provider, custom_id, method, url, body, priority, max_attempts;
};

static int
parse_method(const struct field *v, char **out, char *err, size_t errlen)
{
    if (v->kind == FIELD_ABSENT) {
        *out = xstrdup("POST");
        return 0;
    }
    if (v->kind != FIELD_STRING)
        return fail(err, errlen, "method: must be a string");
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcasecmp(v->s, methods[i]) == 0) {
            *out = xstrdup(methods[i]);
            return 0;
        }
    }
    return fail(err, errlen,
                "method: '%.32s' is not one of GET, POST, PUT, PATCH, "
                "DELETE",
                v->s);
}

/* An integer field in [lo, hi]; absent leaves *out as is. */
static int
parse_int(const struct field *v, const char *name, long lo, long hi, int *out,
          char *err, size_t errlen)
{
    if (v->kind == FIELD_ABSENT)
        return 0;
    if (v->kind != FIELD_INTEGER)
        return fail(err, errlen, "%s: must be an integer", name);
    if (v->n < lo || v->n > hi)
        return fail(err, errlen, "%s: must be between %ld and %ld", name, lo,
                    hi);
    *out = (int)v->n;
    return 0;
}
static void
random_key(char out[2 * UNIQUE_KEY_BYTES + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[UNIQUE_KEY_BYTES];

    clock_random_bytes(b, sizeof(b));
    for (size_t i = 0; i < sizeof(b); i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[2 * UNIQUE_KEY_BYTES] = '\0';
}

void
jobspec_hash_key(const char *provider, const char *method, const char *path,
                 const char *body, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    const char *parts[4] = {provider, method, path, body ? body : ""};
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    if (ctx == NULL || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
        fatalx("jobspec: sha256 unavailable from OpenSSL");
    /* NUL-separated, so ("ab", "c") and ("a", "bc") hash apart. */
    for (int i = 0; i < 4; i++)
        EVP_DigestUpdate(ctx, parts[i], strlen(parts[i]) + (i < 3));
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

static int
parse_provider(const struct field *v, const struct jobspec_opts *o,
               const struct provider_config **p, char *err, size_t errlen)
{
    const char *name = o->provider;

    if (v->kind != FIELD_ABSENT) {
        if (v->kind != FIELD_STRING)
            return fail(err, errlen, "provider: must be a string");
        name = v->s;
    }
    if (name == NULL)
        return fail(err, errlen, "provider: missing (no --provider given)");
    *p = find_provider(o->config, name);
    if (*p == NULL)
        return fail(err, errlen, "provider: '%.64s' is not in the config",
                    name);
    return 0;
}

static int
parse_custom_id(const struct field *v, char **out, char *err, size_t errlen)
{
    if (v->kind == FIELD_ABSENT || v->kind == FIELD_NULL)
        return 0;
    if (v->kind != FIELD_STRING)
        return fail(err, errlen, "custom_id: must be a string");
    if (v->len == 0)
        return fail(err, errlen, "custom_id: must not be empty");
    if (v->len > CUSTOM_ID_MAX)
        return fail(err, errlen, "custom_id: longer than %d bytes",
                    CUSTOM_ID_MAX);
    /* The custom_id is the idempotency key, sent in a header: a line break
     * would end the header and start the attacker's own (docs/design.md §4).
     * Visible ASCII only, so every key fits every header. */
    for (size_t i = 0; i < v->len; i++) {
        unsigned char c = (unsigned char)v->s[i];
        if (c < 0x21 || c > 0x7e)
            return fail(err, errlen,
                        "custom_id: byte %zu is 0x%02x: only visible ASCII "
                        "(0x21-0x7e) may be sent as an idempotency key",
                        i + 1, c);
    }
    *out = xstrndup(v->s, v->len);
    return 0;
}

static int
parse_body(const struct field *v, char **out, char *err, size_t errlen)
{
    if (v->kind == FIELD_ABSENT || v->kind == FIELD_NULL)
        return 0;
    if (v->kind != FIELD_OBJECT)
        return fail(err, errlen, "body: must be an object");
    if (v->s == NULL)
        return fail(err, errlen, "body: cannot be serialised");
    *out = xstrndup(v->s, v->len);
    return 0;
}

/* The checks and normalisation of a line, whichever reader filled it. */
static int
parse_fields(const struct line *l, const struct jobspec_opts *o,
             struct jobspec *out, char *err, size_t errlen)
{
    const struct provider_config *p;
    int rc;

    if ((rc = parse_provider(&l->provider, o, &p, err, errlen)) < 0)
        return rc;
    out->provider = xstrdup(p->name);
    out->batch = xstrdup(o->batch);
    if ((rc = parse_custom_id(&l->custom_id, &out->custom_id, err, errlen)) <
            0 ||
        (rc = parse_method(&l->method, &out->method, err, errlen)) < 0)
        return rc;
    if (l->url.kind == FIELD_ABSENT)
        return fail(err, errlen, "url: missing");
    if (l->url.kind != FIELD_STRING)
        return fail(err, errlen, "url: must be a string");
    if ((rc = parse_url(l->url.s, p, &out->path, err, errlen)) < 0 ||
        (rc = parse_body(&l->body, &out->body, err, errlen)) < 0)
        return rc;
    out->priority = 0;
    out->max_attempts =
        p->max_attempts > 0 ? p->max_attempts : MAX_ATTEMPTS_DEFAULT;
    if ((rc = parse_int(&l->priority, "priority", INT_MIN, INT_MAX,
                        &out->priority, err, errlen)) < 0 ||
        (rc = parse_int(&l->max_attempts, "max_attempts", 1, MAX_ATTEMPTS_CAP,
                        &out->max_attempts, err, errlen)) < 0)
        return rc;
    if (o->unique) {
        char key[2 * UNIQUE_KEY_BYTES + 1];
        random_key(key);
        out->idempotency_key = xstrdup(key);
    } else if (out->custom_id) {
        out->idempotency_key = xstrdup(out->custom_id);
    } else {
        char key[65];
        jobspec_hash_key(out->provider, out->method, out->path, out->body, key);
        out->idempotency_key = xstrdup(key);
    }
    return 0;
}

/* The field a key names, or NULL for an unknown key. */
static struct field *
line_field(struct line *l, const char *key)
{
    struct field *f[] = {&l->custom_id, &l->method,   &l->url,         &l->body,
                         &l->provider,  &l->priority, &l->max_attempts};

    for (size_t i = 0; i < sizeof(keys_allowed) / sizeof(keys_allowed[0]);
         i++) {
        if (strcmp(key, keys_allowed[i]) == 0)
            return f[i];
    }
    return NULL;
}

/* --- canon, the one-pass reader ----------------------------------------- */

/* Members canon reads at the top level: more than the allowed keys means an
 * unknown or a repeated one, which jansson's error names. */
#define LINE_MEMBERS_MAX (sizeof(keys_allowed) / sizeof(keys_allowed[0]))

static enum field_kind
canon_kind(enum canon_type t)
{
    switch (t) {
    case CANON_NULL:
        return FIELD_NULL;
    case CANON_STRING:
        return FIELD_STRING;
    case CANON_INTEGER:
        return FIELD_INTEGER;
    case CANON_OBJECT:
        return FIELD_OBJECT;
    default:
        return FIELD_OTHER;
    }
}

/* The line through canon; -EINVAL (no message) for any line it leaves to
 * jansson, bad ones included. */
static int
parse_canon(struct canon *c, const char *text, size_t len,
            const struct jobspec_opts *o, struct jobspec *out)
{
    struct canon_member m[LINE_MEMBERS_MAX];
    struct line l = {0};
    size_t n;

    if (canon_object(c, text, len, m, LINE_MEMBERS_MAX, &n) < 0)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        struct field *f = line_field(&l, m[i].key);
        if (f == NULL)
            return -EINVAL;
        f->kind = canon_kind(m[i].type);
        f->n = m[i].integer;
        f->s = m[i].type == CANON_STRING ? m[i].str : m[i].text;
        f->len = m[i].type == CANON_STRING ? m[i].str_len : m[i].text_len;
    }
    return parse_fields(&l, o, out, NULL, 0);
}

/* --- jansson, the reference --------------------------------------------- */

static int
check_keys(json_t *root, char *err, size_t errlen)
{
    const char *key;
    json_t *v;

    json_object_foreach(root, key, v)
    {
        if (line_field(&(struct line){0}, key) == NULL)
            return fail(err, errlen, "%.64s: unknown field", key);
    }
    return 0;
}

/* The fewest significant digits that print every real in v so that it
 * reads back as the same double, or 0 when v holds no real. */
static int
real_digits(const json_t *v)
{
    const char *key;
    json_t *child;
    size_t i;
    int most = 0, d;

    switch (json_typeof(v)) {
    case JSON_REAL:
        return canon_real_digits(json_real_value(v));
    case JSON_OBJECT:
        json_object_foreach((json_t *)v, key, child)
        {
            if ((d = real_digits(child)) > most)
                most = d;
        }
        return most;
    case JSON_ARRAY:
        json_array_foreach(v, i, child)
        {
            if ((d = real_digits(child)) > most)
                most = d;
        }
        return most;
    default:
        return 0;
    }
}

/* Sorted and compact: the same body always hashes to the same key. jansson
 * prints reals with 17 digits (0.1 becomes 0.10000000000000001): use the
 * fewest that keep every value exact, so the provider gets the numbers as
 * the caller wrote them. */
static char *
canonical_dump(const json_t *v)
{
    size_t flags = JSON_COMPACT | JSON_SORT_KEYS;
    int digits;

    if ((digits = real_digits(v)) > 0)
        flags |= JSON_REAL_PRECISION(digits);
    return json_dumps(v, flags);
}

/* The member of root named key as a field; an object's text is dumped
 * into *dumped (free it). */
static void
json_field(json_t *root, const char *key, struct field *f, char **dumped)
{
    json_t *v = json_object_get(root, key);

    memset(f, 0, sizeof(*f));
    if (v == NULL) {
        f->kind = FIELD_ABSENT;
    } else if (json_is_null(v)) {
        f->kind = FIELD_NULL;
    } else if (json_is_string(v)) {
        f->kind = FIELD_STRING;
        f->s = json_string_value(v);
        f->len = json_string_length(v);
    } else if (json_is_integer(v)) {
        f->kind = FIELD_INTEGER;
        f->n = json_integer_value(v);
    } else if (json_is_object(v) && dumped) {
        f->kind = FIELD_OBJECT;
        f->s = *dumped = canonical_dump(v);
        f->len = f->s ? strlen(f->s) : 0;
    } else {
        f->kind = FIELD_OTHER;
    }
}

int
jobspec_parse_jansson(const char *line, size_t len,
                      const struct jobspec_opts *o, struct jobspec *out,
                      char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root;
    struct line l;
    char *body = NULL;
    const char *nul;
    int rc;

    memset(out, 0, sizeof(*out));
    /* jansson reads a raw NUL as the end of the text and then reports "end
     * of file expected near end of file": name the byte instead. */
    if ((nul = memchr(line, '\0', len)) != NULL)
        return fail(err, errlen, "json: a NUL byte (column %zu)",
                    (size_t)(nul - line) + 1);
    /* Duplicate keys are rejected: which one would win is a guess. */
    root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return fail(err, errlen, "json: %s (column %d)", jerr.text,
                    jerr.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(err, errlen, "json: a job line must be an object");
    }
    if ((rc = check_keys(root, err, errlen)) == 0) {
        json_field(root, "provider", &l.provider, NULL);
        json_field(root, "custom_id", &l.custom_id, NULL);
        json_field(root, "method", &l.method, NULL);
        json_field(root, "url", &l.url, NULL);
        json_field(root, "body", &l.body, &body);
        json_field(root, "priority", &l.priority, NULL);
        json_field(root, "max_attempts", &l.max_attempts, NULL);
        rc = parse_fields(&l, o, out, err, errlen);
    }
    free(body);
    json_decref(root);
    if (rc < 0)
        jobspec_clear(out);
    return rc;
}

int
jobspec_parse(const char *line, size_t len, const struct jobspec_opts *o,
              struct jobspec *out, char *err, size_t errlen)
{
    struct canon c = {0};
    int rc;

    memset(out, 0, sizeof(*out));
    rc = parse_canon(&c, line, len, o, out);
    canon_free(&c);
    if (rc == 0)
        return 0;
    jobspec_clear(out);
    return jobspec_parse_jansson(line, len, o, out, err, errlen);
}

void
jobspec_clear(struct jobspec *j)
{
    if (j == NULL)
        return;
    free(j->provider);
    free(j->batch);
    free(j->custom_id);
    free(j->method);
    free(j->path);
    free(j->body);
    free(j->idempotency_key);
    memset(j, 0, sizeof(*j));
}

/* Bytes of request text per token: OpenAI's rule of thumb for English. */
#define JOBSPEC_BYTES_PER_TOKEN 4

int64_t
jobspec_token_estimate(const char *body)
{
    static const char *const keys[] = {"max_tokens", "max_completion_tokens",
                                       "max_output_tokens"};
    int64_t n = 0;

    if (body == NULL)
        return 0;
    json_t *root = json_loads(body, 0, NULL);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]) && n == 0; i++) {
        json_t *v = json_object_get(root, keys[i]);
        if (json_is_integer(v) && json_integer_value(v) > 0)
            n = (int64_t)json_integer_value(v);
    }
    json_decref(root);
    return n + (int64_t)(strlen(body) / JOBSPEC_BYTES_PER_TOKEN);
}
