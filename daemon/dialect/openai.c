/*
 * openai: OpenAI-compatible APIs, FlowAPI among them
 * (docs/providers.md).
 *
 * Errors are {"error":{"message","type","code"}} with an `X-Request-ID`
 * header. The stored code is error.code when it is a string, else
 * error.type: FlowAPI's table names its errors by type, OpenAI often sends
 * both. Either refines the status class, the code first (it is the more
 * specific of the two). OpenAI's 429 `insufficient_quota` is an empty
 * account, not a throttle: retrying it only burns deferrals, so it pauses
 * the provider like a 402. `x-should-retry: true|false` (OpenAI's SDK
 * contract) is an explicit verdict.
 */
#define _GNU_SOURCE /* memmem: a body is counted bytes, not a C string */
#include <string.h>

#include "internal.h"

static const struct dialect_code_class openai_types[] = {
    {"invalid_request_error", ERR_INVALID_REQUEST},
    {"authentication_error", ERR_AUTH},
    {"invalid_api_key", ERR_AUTH},
    {"permission_error", ERR_PERMISSION},
    {"insufficient_balance", ERR_INSUFFICIENT_BALANCE},
    {"insufficient_quota", ERR_INSUFFICIENT_BALANCE},
    {"not_found_error", ERR_NOT_FOUND},
    {"rate_limit_error", ERR_RATE_LIMITED},
    {"server_error", ERR_SERVER_ERROR},
    {"service_unavailable", ERR_UNAVAILABLE},
    {"gateway_timeout", ERR_TIMEOUT},
    {NULL, ERR_NONE},
};

static void
openai_refine(struct outcome *o, const char *code, const char *type)
{
    enum err_class cls = dialect_lookup_class(openai_types, code);

    if (cls == ERR_NONE)
        cls = dialect_lookup_class(openai_types, type);
    /* invalid_request_error is the catch-all type, sent with 401
     * invalid_api_key and 404 too: it never overrides what the status
     * says. */
    if (cls == ERR_NONE || cls == ERR_INVALID_REQUEST)
        return;
    o->cls = cls;
}

static void
openai_error(const struct http_response *r, struct outcome *o)
{
    json_t *body = dialect_parse_body(r);
    const json_t *err = json_object_get(body, "error");
    const json_t *code, *type;
    bool have_code;

    dialect_status_failure(r, o);
    o->verdict = dialect_verdict_header(r, "x-should-retry");
    if (!json_is_object(err)) {
        dialect_generic_error(body, o);
        json_decref(body);
        return;
    }
    code = json_object_get(err, "code");
    type = json_object_get(err, "type");
    have_code = (json_is_string(code) && dialect_set_code(o, code)) ||
                (json_is_string(type) && dialect_set_code(o, type)) ||
                dialect_set_code(o, code);
    if (!dialect_set_message(o, json_object_get(err, "message")) && have_code)
        o->message[0] = '\0';
    openai_refine(o, json_string_value(code), json_string_value(type));
    json_decref(body);
}

/* usage.total_tokens of a success, which corrects the lane's token
 * estimate. Only bodies that mention "usage" are parsed twice. */
static void
openai_usage(const struct http_response *r, struct outcome *o)
{
    if (r->body == NULL ||
        memmem(r->body, r->body_len, "\"usage\"", 7) == NULL)
        return;
    json_t *body = dialect_parse_body(r);
    json_t *n = json_object_get(json_object_get(body, "usage"), "total_tokens");
    if (json_is_integer(n) && json_integer_value(n) > 0)
        o->tokens_used = (int64_t)json_integer_value(n);
    json_decref(body);
}

static void
openai_classify(const struct http_response *r, bool poll, int64_t now_ms,
                struct outcome *o)
{
    (void)poll;
    (void)now_ms;
    if (dialect_is_2xx(r->status)) {
        dialect_success(r, true, o);
        openai_usage(r, o);
    } else
        openai_error(r, o);
}

/* OpenAI-style image endpoints answer data:[{url}] (chat answers carry
 * no files). */
static const char *const openai_outputs[] = {"/data/*/url", NULL};

const struct dialect openai_dialect = {
    .name = "openai",
    .request_id_header = "x-request-id",
    .auth = "bearer",
    .idempotency = "header",
    .async = false,
    .classify = openai_classify,
    .output_pointers = openai_outputs,
};
