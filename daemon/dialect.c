/*
 * dialect: the registry of provider dialects and the one entry point the
 * dispatcher calls, dialect_classify().
 *
 * How it works: transport failures (no response, client timeout, body over
 * the cap, curl errors) are classified here, the same for every provider;
 * everything with an HTTP status goes to the dialect's classify(). Header
 * hints are read before classify() so a dialect can only tighten them
 * (Firemoon's body resetAt). The request id comes last, from the dialect's
 * header or the common fallbacks, unless the dialect found one itself.
 *
 * The helpers at the bottom are shared by the dialect modules. Provider text
 * lands in fixed buffers, cut on a UTF-8 boundary, so a hostile body can
 * neither grow an outcome nor leave half a character in the database.
 * Bodies are parsed by jansson, which caps nesting depth, so a deeply
 * nested body is just unreadable, never a stack overflow.
 *
 * Rejected: a dialect per provider name chosen by URL sniffing (the operator
 * names the dialect in the config; guessing would silently misclassify).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dialect/internal.h"
#include "sluice/dialect.h"
#include "sluice/hints.h"
#include "sluice/http.h"
#include "sluice/jsonptr.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

/* At most this many per-field messages are kept: a validation error lists a
 * handful, a hostile body could list millions. */
#define DIALECT_FIELDS_MAX 64
/* Field names are paths like "body.inputs.0.url"; longer is noise. */
#define DIALECT_FIELD_NAME_MAX 256

static const struct dialect *const dialects[] = {
    &flora_dialect,    &openai_dialect,  &graphql_dialect, &flymyai_dialect,
    &firemoon_dialect, &problem_dialect, &generic_dialect,
};

static const struct {
    const char *alias;
    const struct dialect *d;
} aliases[] = {
    {"flowapi", &openai_dialect},
    {"lamatic", &graphql_dialect},
};

#define NDIALECTS (sizeof(dialects) / sizeof(dialects[0]))
#define NALIASES (sizeof(aliases) / sizeof(aliases[0]))

const struct dialect *
dialect_find(const char *name)
{
    if (name == NULL)
        return NULL;
    for (size_t i = 0; i < NDIALECTS; i++) {
        if (strcmp(name, dialects[i]->name) == 0)
            return dialects[i];
    }
    for (size_t i = 0; i < NALIASES; i++) {
        if (strcmp(name, aliases[i].alias) == 0)
            return aliases[i].d;
    }
    return NULL;
}

/* "flora, openai (flowapi), …": built once from the tables above, so a new
 * dialect or alias is listed without another edit. */
const char *
dialect_names(void)
{
    static char names[256];
    size_t n = 0;

    if (names[0] != '\0')
        return names;
    for (size_t i = 0; i < NDIALECTS; i++) {
        n += (size_t)snprintf(names + n, sizeof(names) - n, "%s%s",
                              i ? ", " : "", dialects[i]->name);
        for (size_t k = 0; k < NALIASES; k++)
            if (aliases[k].d == dialects[i])
                n += (size_t)snprintf(names + n, sizeof(names) - n, " (%s)",
                                      aliases[k].alias);
        if (n >= sizeof(names))
            fatalx("dialect_names: more names than %zu bytes",
                   sizeof(names));
    }
    return names;
}

/* Collects the output URLs of one result (dialect_output_urls). */
struct url_list {
    char **v;
    size_t n;
};

static void
collect_url(const json_t *v, void *arg)
{
    struct url_list *l = arg;
    const char *s = json_string_value(v);
    size_t len = json_is_string(v) ? json_string_length(v) : 0;

    if (s == NULL || l->n >= DIALECT_OUTPUTS_MAX ||
        len >= DIALECT_OUTPUT_URL_MAX || strlen(s) != len ||
        (strncasecmp(s, "http://", 7) != 0 &&
         strncasecmp(s, "https://", 8) != 0))
        return;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return;
    l->v[l->n++] = xstrdup(s);
}

char *
dialect_cost_source(const struct dialect *d, const char *job_path)
{
    if (d == NULL || d->cost_source == NULL || job_path == NULL)
        return NULL;
    return d->cost_source(job_path);
}

bool
dialect_stated_cost(const struct dialect *d, const char *body, double *cost)
{
    if (d == NULL || d->stated_cost == NULL || body == NULL)
        return false;
    return d->stated_cost(body, cost);
}

size_t
dialect_output_urls(const struct dialect *d, const char *result,
                    char *const *extra, size_t nextra, char ***urls)
{
    struct url_list l = {xcalloc(DIALECT_OUTPUTS_MAX + 1, sizeof(char *)), 0};
    json_t *root = result ? json_loads(result, JSON_DECODE_ANY, NULL) : NULL;

    if (root != NULL) {
        for (const char *const *p = d ? d->output_pointers : NULL; p && *p;
             p++)
            jsonptr_walk(root, *p, collect_url, &l);
        for (size_t i = 0; i < nextra; i++)
            jsonptr_walk(root, extra[i], collect_url, &l);
        json_decref(root);
    }
    *urls = l.v;
    return l.n;
}

enum err_class
dialect_class_for_status(int status)
{
    switch (status) {
    case 0:
        return ERR_NETWORK;
    case 400:
    case 422:
        return ERR_INVALID_REQUEST;
    case 401:
        return ERR_AUTH;
    case 402:
        return ERR_INSUFFICIENT_BALANCE;
    case 403:
        return ERR_PERMISSION;
    case 404:
        return ERR_NOT_FOUND;
    case 408:
        return ERR_TIMEOUT;
    case 409:
        return ERR_CONFLICT;
    case 429:
        return ERR_RATE_LIMITED;
    case 500:
    case 502:
        return ERR_SERVER_ERROR;
    case 503:
        return ERR_UNAVAILABLE;
    case 504:
        return ERR_TIMEOUT;
    }
    if (status >= 200 && status < 300)
        return ERR_NONE;
    if (status >= 400 && status < 500)
        return ERR_INVALID_REQUEST;
    if (status >= 500 && status < 600)
        return ERR_SERVER_ERROR;
    /* 1xx as final, 3xx not followed, or nonsense: not a usable answer. */
    return ERR_PROTOCOL;
}

static void
classify_transport(const struct http_response *r, struct outcome *o)
{
    char code[32];

    o->unsent = r->request_bytes == 0;
    if (r->cancelled) {
        dialect_fail(o, ERR_NETWORK, "cancelled", "cancelled");
    } else if (r->timed_out) {
        dialect_fail(o, ERR_TIMEOUT, "client_timeout",
                     r->error[0] ? r->error : "client timeout");
    } else if (r->too_large) {
        dialect_fail(o, ERR_PROTOCOL, "response_too_large",
                     "response body exceeded the configured cap");
    } else if (r->curl_code != 0) {
        snprintf(code, sizeof(code), "curl_%d", r->curl_code);
        dialect_fail(o, ERR_NETWORK, code,
                     r->error[0] ? r->error : "transfer failed");
    } else {
        dialect_fail(o, ERR_NETWORK, "no_response", "no response received");
    }
}

/* Copies a header value as a request id: printable ASCII only, since it
 * goes into logs and support tickets verbatim. */
static bool
copy_request_id(struct outcome *o, const char *v)
{
    size_t n = 0;

    if (v == NULL || *v == '\0')
        return false;
    for (; *v != '\0' && n + 1 < sizeof(o->request_id); v++) {
        unsigned char c = (unsigned char)*v;
        o->request_id[n++] = (c > 0x20 && c < 0x7f) ? (char)c : '?';
    }
    o->request_id[n] = '\0';
    return true;
}

void
dialect_classify(const struct dialect *d, const struct http_response *r,
                 bool poll, int64_t now_ms, const char *request_id_header,
                 struct outcome *out)
{
    /* Common names, in the order providers use them most. */
    static const char *const fallbacks[] = {"x-request-id", "request-id"};
    const char *hdr;

    outcome_init(out);
    out->http_status = r->status;
    hints_from_response(r, now_ms, &out->hints);

    if (r->status == 0 || r->curl_code != 0 || r->too_large || r->cancelled)
        classify_transport(r, out);
    else
        d->classify(r, poll, now_ms, out);
    /* A dialect's body hint (Firemoon's resetAt) obeys the same cap. */
    hints_cap(&out->hints, now_ms);

    if (out->request_id[0] != '\0')
        return;
    hdr = request_id_header ? request_id_header : d->request_id_header;
    if (hdr != NULL && copy_request_id(out, http_response_header(r, hdr)))
        return;
    for (size_t i = 0; i < sizeof(fallbacks) / sizeof(fallbacks[0]); i++) {
        if (copy_request_id(out, http_response_header(r, fallbacks[i])))
            return;
    }
}

/* ---- helpers for the dialect modules ---- */

enum err_class
dialect_lookup_class(const struct dialect_code_class *table, const char *name)
{
    if (name == NULL)
        return ERR_NONE;
    for (; table->name != NULL; table++) {
        if (strcmp(table->name, name) == 0)
            return table->cls;
    }
    return ERR_NONE;
}

bool
dialect_is_2xx(int status)
{
    return status >= 200 && status < 300;
}

json_t *
dialect_parse_body(const struct http_response *r)
{
    if (r->body == NULL || r->body_len == 0)
        return NULL;
    /* A raw NUL is never valid JSON text (RFC 8259 escapes it even inside
     * strings), and jansson reads past one: the body would pass here and
     * then be stored cut at the NUL, no longer JSON. */
    if (memchr(r->body, '\0', r->body_len) != NULL)
        return NULL;
    return json_loadb(r->body, r->body_len, JSON_DECODE_ANY, NULL);
}

void
dialect_copy(char *dst, size_t cap, const char *src)
{
    size_t n;

    if (cap == 0)
        return;
    n = strlen(src);
    if (n >= cap) {
        n = cap - 1;
        /* Back off continuation bytes (10xxxxxx) so no character is cut. */
        while (n > 0 && ((unsigned char)src[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void
dialect_excerpt(const struct http_response *r, char *dst, size_t cap)
{
    size_t n = 0;
    bool space = false;

    if (cap == 0)
        return;
    for (size_t i = 0; r->body != NULL && i < r->body_len && n + 1 < cap; i++) {
        unsigned char c = (unsigned char)r->body[i];
        if (isspace(c)) {
            space = n > 0;
            continue;
        }
        if (space && n + 2 < cap)
            dst[n++] = ' ';
        space = false;
        dst[n++] = (c > 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[n] = '\0';
}

bool
dialect_set_code(struct outcome *o, const json_t *v)
{
    if (json_is_string(v) && json_string_length(v) > 0) {
        dialect_copy(o->code, sizeof(o->code), json_string_value(v));
        return true;
    }
    if (json_is_integer(v)) {
        snprintf(o->code, sizeof(o->code), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(v));
        return true;
    }
    if (json_is_real(v)) {
        snprintf(o->code, sizeof(o->code), "%.17g", json_real_value(v));
        return true;
    }
    return false;
}

bool
dialect_set_message(struct outcome *o, const json_t *v)
{
    if (!json_is_string(v))
        return false;
    dialect_copy(o->message, sizeof(o->message), json_string_value(v));
    return true;
}

void
dialect_field_add(json_t **arr, const char *field, const char *message)
{
    char f[DIALECT_FIELD_NAME_MAX];
    char m[OUTCOME_MESSAGE_MAX];
    json_t *item;

    if (*arr == NULL)
        *arr = json_array();
    if (json_array_size(*arr) >= DIALECT_FIELDS_MAX)
        return;
    dialect_copy(f, sizeof(f), field ? field : "");
    dialect_copy(m, sizeof(m), message ? message : "");
    /* json_string refuses invalid UTF-8; such an entry is dropped. */
    item = json_pack("{s:s, s:s}", "field", f, "message", m);
    if (item != NULL)
        json_array_append_new(*arr, item);
}

const char *
dialect_first_string(const json_t *obj, const char *const *keys)
{
    for (; *keys != NULL; keys++) {
        const json_t *v = json_object_get(obj, *keys);
        if (json_is_string(v))
            return json_string_value(v);
    }
    return NULL;
}

void
dialect_join_path(const json_t *arr, size_t first, char *dst, size_t cap)
{
    struct buf b = {0};
    char num[32];

    for (size_t i = first; i < json_array_size(arr); i++) {
        const json_t *v = json_array_get(arr, i);
        const char *s = json_string_value(v);
        if (json_is_integer(v)) {
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(v));
            s = num;
        }
        if (s == NULL)
            continue;
        if (b.len > 0)
            buf_append(&b, ".", 1);
        buf_append(&b, s, strlen(s));
        /* Past cap the rest would be cut anyway. */
        if (b.len >= cap)
            break;
    }
    dialect_copy(dst, cap, b.data ? b.data : "");
    buf_free(&b);
}

void
dialect_fields_from_array(const json_t *arr, const char *const *field_keys,
                          const char *const *message_keys, json_t **out)
{
    for (size_t i = 0; i < json_array_size(arr) && i < DIALECT_FIELDS_MAX;
         i++) {
        const json_t *item = json_array_get(arr, i);
        const char *f, *m;

        f = dialect_first_string(item, field_keys);
        m = dialect_first_string(item, message_keys);
        if (f != NULL || m != NULL)
            dialect_field_add(out, f, m);
    }
}

void
dialect_fields_take(struct outcome *o, json_t *arr)
{
    if (arr == NULL)
        return;
    if (json_array_size(arr) > 0) {
        free(o->fields);
        o->fields = json_dumps(arr, JSON_COMPACT);
    }
    json_decref(arr);
}

void
dialect_fail(struct outcome *o, enum err_class cls, const char *code,
             const char *message)
{
    o->kind = OUTCOME_FAILURE;
    o->cls = cls;
    if (code != NULL)
        dialect_copy(o->code, sizeof(o->code), code);
    if (message != NULL)
        dialect_copy(o->message, sizeof(o->message), message);
}

bool
dialect_success(const struct http_response *r, bool want_object,
                struct outcome *o)
{
    char excerpt[OUTCOME_MESSAGE_MAX];
    json_t *body = dialect_parse_body(r);

    if (body == NULL) {
        dialect_excerpt(r, excerpt, sizeof(excerpt));
        dialect_fail(o, ERR_PROTOCOL, "bad_json", excerpt);
        return false;
    }
    if (want_object && !json_is_object(body)) {
        json_decref(body);
        dialect_excerpt(r, excerpt, sizeof(excerpt));
        dialect_fail(o, ERR_PROTOCOL, "unexpected_body", excerpt);
        return false;
    }
    json_decref(body);
    o->kind = OUTCOME_SUCCESS;
    o->cls = ERR_NONE;
    o->result = xstrndup(r->body, r->body_len);
    return true;
}

void
dialect_status_failure(const struct http_response *r, struct outcome *o)
{
    o->kind = OUTCOME_FAILURE;
    o->cls = dialect_class_for_status(r->status);
    /* A 2xx that a dialect calls a failure still needs a failure class. */
    if (o->cls == ERR_NONE)
        o->cls = ERR_PROTOCOL;
    o->code[0] = '\0';
    dialect_excerpt(r, o->message, sizeof(o->message));
}

bool
dialect_generic_error(const json_t *body, struct outcome *o)
{
    const json_t *err = json_object_get(body, "error");
    bool code = false;
    bool msg = false;

    if (!json_is_object(body))
        return false;
    if (json_is_object(err)) {
        code = dialect_set_code(o, json_object_get(err, "code")) ||
               dialect_set_code(o, json_object_get(err, "type"));
        msg = dialect_set_message(o, json_object_get(err, "message"));
    } else {
        code = dialect_set_code(o, err);
    }
    if (!code)
        code = dialect_set_code(o, json_object_get(body, "code"));
    if (!msg) {
        msg =
            dialect_set_message(o, json_object_get(body, "message")) ||
            dialect_set_message(o, json_object_get(body, "detail")) ||
            dialect_set_message(o, json_object_get(body, "error_description"));
    }
    /* The excerpt is for bodies nobody can read; a readable one with a
     * code and no message has no message. */
    if (code && !msg)
        o->message[0] = '\0';
    return code || msg;
}

enum verdict
dialect_verdict_header(const struct http_response *r, const char *name)
{
    const char *v = http_response_header(r, name);

    if (v == NULL)
        return VERDICT_DEFAULT;
    if (strcasecmp(v, "true") == 0)
        return VERDICT_RETRY;
    if (strcasecmp(v, "false") == 0)
        return VERDICT_NO_RETRY;
    return VERDICT_DEFAULT;
}
