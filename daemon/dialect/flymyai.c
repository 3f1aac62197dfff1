/*
 * flymyai: FlyMyAI (docs/providers.md), FastAPI underneath.
 *
 * Errors are {"detail":[{loc,msg,type,url,ctx,input}]}; plain FastAPI
 * answers {"detail":"text"} for its own errors (404, 405). The code is
 * detail[0].type, the message detail[0].msg; every entry whose loc names a
 * field (loc joined with ".", a leading "body" dropped) becomes a field
 * message. The documented types refine the class even when the status
 * differs. `X-FlyMyAI-Retryable: true|false` is the provider's verdict and
 * beats the class: the seed says 500 and 504 "can be true or false".
 * The seed's examples print the detail array alone, so a bare array body
 * is read the same way. FlyMyAI sends no request id header, so the common
 * fallbacks apply.
 */
#include <string.h>

#include "internal.h"

static const struct dialect_code_class flymyai_types[] = {
    {"internal_server_error", ERR_SERVER_ERROR},
    {"generation_timeout", ERR_TIMEOUT},
    {"invalid_image_format", ERR_INVALID_REQUEST},
    {"invalid_video_format", ERR_INVALID_REQUEST},
    {"video_duration_too_long", ERR_INVALID_REQUEST},
    {NULL, ERR_NONE},
};

static void
flymyai_fields(const json_t *detail, struct outcome *o)
{
    json_t *fields = NULL;
    char path[256];
    for (size_t i = 0; i < json_array_size(detail); i++) {
        const json_t *e = json_array_get(detail, i);
        const json_t *loc = json_object_get(e, "loc");
        const char *head = json_string_value(json_array_get(loc, 0));
        size_t first = head != NULL && strcmp(head, "body") == 0 ? 1 : 0;

        dialect_join_path(loc, first, path, sizeof(path));
        if (path[0] != '\0')
            dialect_field_add(&fields, path,
                              json_string_value(json_object_get(e, "msg")));
    }
    dialect_fields_take(o, fields);
}

static void
flymyai_error(const struct http_response *r, struct outcome *o)
{
    json_t *body = dialect_parse_body(r);
    /* The seed's examples show the detail array alone; accept both. */
    const json_t *detail =
        json_is_array(body) ? body : json_object_get(body, "detail");
    const json_t *first = json_array_get(detail, 0);
    enum err_class cls;

    dialect_status_failure(r, o);
    o->verdict = dialect_verdict_header(r, "x-flymyai-retryable");
    if (json_is_object(first)) {
        bool code = dialect_set_code(o, json_object_get(first, "type"));
        if (!dialect_set_message(o, json_object_get(first, "msg")) && code)
            o->message[0] = '\0';
        flymyai_fields(detail, o);
        cls = dialect_lookup_class(
            flymyai_types, json_string_value(json_object_get(first, "type")));
        if (cls != ERR_NONE)
            o->cls = cls;
    } else {
        dialect_generic_error(body, o);
    }
    json_decref(body);
}

static void
flymyai_classify(const struct http_response *r, bool poll, int64_t now_ms,
                 struct outcome *o)
{
    (void)poll;
    (void)now_ms;
    if (dialect_is_2xx(r->status))
        dialect_success(r, true, o);
    else
        flymyai_error(r, o);
}

/* Generations answer images:[{url,…}]. */
static const char *const flymyai_outputs[] = {"/images/*/url", NULL};

const struct dialect flymyai_dialect = {
    .name = "flymyai",
    .request_id_header = "x-request-id",
    .auth = "header:x-api-key",
    .idempotency = "header",
    .async = false,
    .classify = flymyai_classify,
    .output_pointers = flymyai_outputs,
};
