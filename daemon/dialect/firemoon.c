/*
 * firemoon: Firemoon Studio (docs/providers.md).
 *
 * Errors are {"error":"<ErrorType>","message","details"} or, for input
 * validation, {"error","message","errors":[strings]}. The `error` string is
 * the code, verbatim ("Rate limit exceeded", "Invalid input"), and refines
 * the class where the seed documents it. errors[] and details become field
 * messages: strings with no field name, an object's members by name.
 *
 * A 429 carries `resetAt` (ISO-8601) in the body; it raises the retry hint
 * the headers gave (X-RateLimit-Reset, read by hints) and never lowers it,
 * since hints only ever restrict (and, like every hint, never past
 * HINT_CAP_MS: dialect_classify caps it).
 */
#include <stdlib.h>

#include "internal.h"

static const struct dialect_code_class firemoon_codes[] = {
    {"Invalid input", ERR_INVALID_REQUEST},
    {"Invalid API key", ERR_AUTH},
    {"Access denied", ERR_PERMISSION},
    {"Model not found", ERR_NOT_FOUND},
    {"Rate limit exceeded", ERR_RATE_LIMITED},
    {"Generation failed", ERR_SERVER_ERROR},
    {NULL, ERR_NONE},
};

/* One field message per string of arr, or per member of an object. */
static void
firemoon_fields(const json_t *v, json_t **fields)
{
    json_t *obj = (json_t *)v; /* jansson's iterators take non-const */

    if (json_is_string(v)) {
        dialect_field_add(fields, "", json_string_value(v));
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *e = json_array_get(v, i);
            if (json_is_string(e))
                dialect_field_add(fields, "", json_string_value(e));
        }
    } else if (json_is_object(v)) {
        for (void *it = json_object_iter(obj); it != NULL;
             it = json_object_iter_next(obj, it)) {
            const json_t *e = json_object_iter_value(it);
            char *text = json_is_string(e)
                             ? NULL
                             : json_dumps(e, JSON_COMPACT | JSON_ENCODE_ANY);
            dialect_field_add(fields, json_object_iter_key(it),
                              text ? text : json_string_value(e));
            free(text);
        }
    }
}

static void
firemoon_reset_at(const json_t *body, struct outcome *o)
{
    const char *s = json_string_value(json_object_get(body, "resetAt"));
    int64_t ms;

    if (s != NULL && hints_parse_iso8601(s, &ms) == 0) {
        if (ms > o->hints.retry_at_ms)
            o->hints.retry_at_ms = ms;
        o->hints.shut_until_ms = ms; /* the window is shut until then */
    }
}

static void
firemoon_error(const struct http_response *r, struct outcome *o)
{
    json_t *body = dialect_parse_body(r);
    json_t *fields = NULL;
    enum err_class cls;

    dialect_status_failure(r, o);
    dialect_generic_error(body, o);
    firemoon_fields(json_object_get(body, "errors"), &fields);
    firemoon_fields(json_object_get(body, "details"), &fields);
    dialect_fields_take(o, fields);
    firemoon_reset_at(body, o);
    cls = dialect_lookup_class(
        firemoon_codes, json_string_value(json_object_get(body, "error")));
    if (cls != ERR_NONE)
        o->cls = cls;
    json_decref(body);
}

static void
firemoon_classify(const struct http_response *r, bool poll, int64_t now_ms,
                  struct outcome *o)
{
    (void)poll;
    (void)now_ms;
    if (dialect_is_2xx(r->status))
        dialect_success(r, true, o);
    else
        firemoon_error(r, o);
}

/* Generations answer {"images":[{url,width,height,content_type}]} or
 * "videos" (docs/providers.md). */
static const char *const firemoon_outputs[] = {"/images/*/url", "/videos/*/url", NULL};

const struct dialect firemoon_dialect = {
    .name = "firemoon",
    .request_id_header = "x-request-id",
    .auth = "bearer",
    .idempotency = "header",
    .async = false,
    .classify = firemoon_classify,
    .output_pointers = firemoon_outputs,
};
