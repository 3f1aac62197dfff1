/*
 * graphql: GraphQL over HTTP, Lamatic's Flows among them
 * (docs/providers.md).
 *
 * The trap of the family: HTTP 200 with a non-empty `errors` array is a
 * failure. Its code is errors[0].extensions.code verbatim, its message
 * errors[0].message; the class comes from the code. Lamatic documents no
 * codes of its own and says errors in a 200 are payload mismatches, so an
 * unknown or absent code is invalid_request (never retried: the same
 * payload fails the same way). `data` alongside `errors` is a partial
 * failure: still a failure, with the data kept as the result. Each error
 * with a `path` becomes a field message. Any other status is the status
 * class, with code and message read from the body when it has any.
 *
 * Lamatic sends no request id header (the seed documents none), so the
 * common fallbacks apply.
 */
#include "internal.h"
#include "sluice/xmalloc.h"

/* Apollo's and the GraphQL ecosystem's usual extensions.code values. */
static const struct dialect_code_class graphql_codes[] = {
    {"UNAUTHENTICATED", ERR_AUTH},
    {"FORBIDDEN", ERR_PERMISSION},
    {"BAD_USER_INPUT", ERR_INVALID_REQUEST},
    {"GRAPHQL_VALIDATION_FAILED", ERR_INVALID_REQUEST},
    {"GRAPHQL_PARSE_FAILED", ERR_INVALID_REQUEST},
    {"NOT_FOUND", ERR_NOT_FOUND},
    {"RATE_LIMITED", ERR_RATE_LIMITED},
    {"TOO_MANY_REQUESTS", ERR_RATE_LIMITED},
    {"INTERNAL_SERVER_ERROR", ERR_SERVER_ERROR},
    {"TIMEOUT", ERR_TIMEOUT},
    {NULL, ERR_NONE},
};

/* Reads code and message of the first error (an object, or a bare string
 * some servers send) and the path of every error into fields. Returns
 * whether the code was a string (the only kind the table can know). */
static bool
graphql_read_errors(const json_t *errors, struct outcome *o)
{
    const json_t *first =
        json_is_array(errors) ? json_array_get(errors, 0) : errors;
    const json_t *code =
        json_object_get(json_object_get(first, "extensions"), "code");
    json_t *fields = NULL;
    char path[256];

    o->code[0] = '\0';
    o->message[0] = '\0';
    if (json_is_string(first))
        dialect_set_message(o, first);
    dialect_set_code(o, code);
    dialect_set_message(o, json_object_get(first, "message"));
    for (size_t i = 0; i < json_array_size(errors); i++) {
        const json_t *e = json_array_get(errors, i);
        const char *msg = json_string_value(json_object_get(e, "message"));
        dialect_join_path(json_object_get(e, "path"), 0, path, sizeof(path));
        if (path[0] != '\0')
            dialect_field_add(&fields, path, msg);
    }
    dialect_fields_take(o, fields);
    return json_is_string(code);
}

static bool
graphql_has_errors(const json_t *errors)
{
    if (json_is_array(errors))
        return json_array_size(errors) > 0;
    return json_is_object(errors) || json_is_string(errors);
}

static void
graphql_success(const struct http_response *r, struct outcome *o)
{
    json_t *body = dialect_parse_body(r);
    const json_t *errors = json_object_get(body, "errors");
    const json_t *data = json_object_get(body, "data");
    enum err_class cls;

    if (!json_is_object(body)) {
        json_decref(body);
        dialect_success(r, true, o);
        return;
    }
    if (graphql_has_errors(errors)) {
        o->kind = OUTCOME_FAILURE;
        cls = graphql_read_errors(errors, o)
                  ? dialect_lookup_class(graphql_codes, o->code)
                  : ERR_NONE;
        o->cls = cls != ERR_NONE ? cls : ERR_INVALID_REQUEST;
        if (data != NULL && !json_is_null(data))
            o->result = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    } else if (data != NULL && !json_is_null(data)) {
        o->kind = OUTCOME_SUCCESS;
        o->result = xstrndup(r->body, r->body_len);
    } else {
        dialect_excerpt(r, o->message, sizeof(o->message));
        dialect_fail(o, ERR_PROTOCOL, "unexpected_body", NULL);
    }
    json_decref(body);
}

static void
graphql_error(const struct http_response *r, struct outcome *o)
{
    json_t *body = dialect_parse_body(r);
    const json_t *errors = json_object_get(body, "errors");

    dialect_status_failure(r, o);
    if (graphql_has_errors(errors))
        graphql_read_errors(errors, o);
    else
        dialect_generic_error(body, o);
    json_decref(body);
}

static void
graphql_classify(const struct http_response *r, bool poll, int64_t now_ms,
                 struct outcome *o)
{
    (void)poll;
    (void)now_ms;
    if (dialect_is_2xx(r->status))
        graphql_success(r, o);
    else
        graphql_error(r, o);
}

const struct dialect graphql_dialect = {
    .name = "graphql",
    .request_id_header = "x-request-id",
    .auth = "bearer",
    .idempotency = "header",
    .async = false,
    .classify = graphql_classify,
};
