/*
 * generic: any HTTP API nobody wrote a dialect for. The status decides the
 * class; code and message come from whichever common shape the body has
 * (error.code | error.type | error | code; error.message | message |
 * detail | error_description). A 2xx is a success whatever it holds: valid
 * JSON is stored as is, anything else as a JSON string, so the result
 * column always holds JSON and nothing readable the provider sent is lost.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sluice/xmalloc.h"

/* The body as a JSON string. jansson refuses bytes that are not UTF-8,
 * and a NUL would come out as \u0000, which jansson's own reader (and so
 * sluicectl export) rejects by default: for either, the printable excerpt
 * of the whole body is stored instead. */
static char *
generic_string_result(const struct http_response *r)
{
    const char *body = r->body ? r->body : "";
    size_t len = r->body ? r->body_len : 0;
    json_t *s =
        memchr(body, '\0', len) == NULL ? json_stringn(body, len) : NULL;
    char *text;

    if (s == NULL) {
        char *clean = xmalloc(len + 1);
        dialect_excerpt(r, clean, len + 1);
        s = json_string(clean);
        free(clean);
    }
    text = json_dumps(s, JSON_ENCODE_ANY);
    json_decref(s);
    return text;
}

static void
generic_success(const struct http_response *r, struct outcome *o)
{
    json_t *body = dialect_parse_body(r);

    o->kind = OUTCOME_SUCCESS;
    o->cls = ERR_NONE;
    if (body != NULL)
        o->result = xstrndup(r->body, r->body_len);
    else
        o->result = generic_string_result(r);
    json_decref(body);
}

static void
generic_error(const struct http_response *r, struct outcome *o)
{
    json_t *body = dialect_parse_body(r);

    dialect_status_failure(r, o);
    dialect_generic_error(body, o);
    json_decref(body);
}

static void
generic_classify(const struct http_response *r, bool poll, int64_t now_ms,
                 struct outcome *o)
{
    (void)poll;
    (void)now_ms;
    if (dialect_is_2xx(r->status))
        generic_success(r, o);
    else
        generic_error(r, o);
}

const struct dialect generic_dialect = {
    .name = "generic",
    .request_id_header = "request-id",
    .auth = "bearer",
    .idempotency = "header",
    .async = false,
    .classify = generic_classify,
};
