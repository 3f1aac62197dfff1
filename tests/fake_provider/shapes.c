/*
 * shapes: the bodies each provider dialect answers with, after the error
 * references summarised in docs/providers.md. The default codes per
 * status are the references' where they name one (FlowAPI's
 * types, FlyMyAI's types, Firemoon's error strings) and plausible
 * snake_case otherwise; tests that need an exact code script it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake.h"

struct status_codes {
    int status;
    const char *flora;    /* FLORA error.code */
    const char *openai;   /* FlowAPI error.type (= code) */
    const char *graphql;  /* Lamatic extensions.code */
    const char *flymyai;  /* FlyMyAI detail[].type */
    const char *firemoon; /* Firemoon "error" */
    const char *message;
};

static const struct status_codes codes[] = {
    {400, "input_validation_error", "invalid_request_error", "BAD_REQUEST",
     "invalid_request", "Invalid input", "prompt: prompt is required."},
    {401, "invalid_api_key", "invalid_api_key", "UNAUTHENTICATED",
     "unauthorized", "Invalid API key", "The API key is invalid."},
    {402, "insufficient_balance", "insufficient_balance",
     "INSUFFICIENT_BALANCE", "insufficient_balance", "Insufficient balance",
     "The balance is too low to start the run."},
    {403, "permission_denied", "permission_error", "FORBIDDEN",
     "permission_denied", "Access denied",
     "The key lacks permission for this operation."},
    {404, "not_found", "not_found_error", "NOT_FOUND", "not_found",
     "Model not found", "The resource does not exist."},
    {408, "request_timeout", "request_timeout", "REQUEST_TIMEOUT",
     "request_timeout", "Request timeout", "The request took too long."},
    {409, "conflict", "conflict_error", "CONFLICT", "conflict", "Conflict",
     "The resource state does not allow this operation."},
    {422, "input_validation_error", "invalid_request_error", "BAD_USER_INPUT",
     "validation_error", "Invalid input",
     "The request body does not match the schema."},
    {429, "rate_limit_exceeded", "rate_limit_error", "RATE_LIMITED",
     "rate_limit_exceeded", "Rate limit exceeded",
     "Too many requests; slow down."},
    {500, "internal_error", "server_error", "INTERNAL_SERVER_ERROR",
     "internal_server_error", "Generation failed",
     "Something broke on our side."},
    {502, "bad_gateway", "server_error", "BAD_GATEWAY", "bad_gateway",
     "Bad gateway", "Upstream could not be reached cleanly."},
    {503, "service_unavailable", "service_unavailable", "SERVICE_UNAVAILABLE",
     "service_unavailable", "Service unavailable",
     "The model is temporarily overloaded."},
    {504, "gateway_timeout", "gateway_timeout", "GATEWAY_TIMEOUT",
     "generation_timeout", "Gateway timeout",
     "The request took too long to process."},
};

void
answer_clear(struct answer *a)
{
    free(a->body);
    json_decref(a->headers);
    memset(a, 0, sizeof(*a));
}

void
answer_header(struct answer *a, const char *name, const char *value)
{
    if (a->headers == NULL)
        a->headers = json_object();
    json_object_set_new(a->headers, name, json_string(value));
}

void
answer_json(struct answer *a, int status, json_t *body)
{
    free(a->body);
    a->status = status;
    if (json_is_string(body)) {
        a->body = strdup(json_string_value(body));
        a->ctype = "text/plain";
    } else {
        /* 15 digits: 0.04 prints as 0.04, not 0.040000000000000001. */
        a->body = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY |
                                       JSON_REAL_PRECISION(15));
        if (a->ctype == NULL)
            a->ctype = "application/json";
    }
    a->body_len = strlen(a->body);
    json_decref(body);
}

const char *
shapes_dialect(const char *path)
{
    static const struct {
        const char *prefix, *dialect;
    } map[] = {
        {"flora", "flora"},       {"openai", "openai"},
        {"lamatic", "graphql"},   {"flymyai", "flymyai"},
        {"firemoon", "firemoon"}, {"problem", "problem"},
    };
    const char *seg = path[0] == '/' ? path + 1 : path;
    size_t len = strcspn(seg, "/?");

    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (strlen(map[i].prefix) == len &&
            strncmp(seg, map[i].prefix, len) == 0)
            return map[i].dialect;
    }
    return "generic";
}

const char *
shapes_request_id_header(const char *dialect)
{
    return strcmp(dialect, "flora") == 0 ? "request-id" : "X-Request-ID";
}

static const struct status_codes *
codes_for(int status)
{
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        if (codes[i].status == status)
            return &codes[i];
    }
    return NULL;
}

static void
iso8601(int64_t ms, char *out, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    char base[32];

    gmtime_r(&t, &tm);
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, len, "%s.%03dZ", base, (int)(ms % 1000));
}

void
shapes_error(struct answer *a, const char *dialect, int status,
             const char *code, const char *message, int64_t reset_ms)
{
    const struct status_codes *sc = codes_for(status);
    const char *reason = MHD_get_reason_phrase_for((unsigned)status);
    char fallback[32];
    json_t *body;

    snprintf(fallback, sizeof(fallback), "http_%d", status);
    if (message == NULL)
        message = sc ? sc->message : reason;

    if (strcmp(dialect, "flora") == 0) {
        const char *c = code ? code : sc ? sc->flora : fallback;
        json_t *err = json_pack("{s:s, s:s}", "code", c, "message", message);
        if (strcmp(c, "input_validation_error") == 0)
            json_object_set_new(err, "fields",
                                json_pack("[{s:s, s:s}]", "field", "prompt",
                                          "message", "prompt is required."));
        body = json_pack("{s:o}", "error", err);
    } else if (strcmp(dialect, "openai") == 0) {
        const char *t = sc ? sc->openai : "api_error";
        body = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", message,
                         "type", code ? "invalid_request_error" : t, "code",
                         code ? code : t);
    } else if (strcmp(dialect, "graphql") == 0) {
        body = json_pack("{s:[{s:s, s:{s:s}}]}", "errors", "message", message,
                         "extensions", "code",
                         code ? code
                         : sc ? sc->graphql
                              : fallback);
    } else if (strcmp(dialect, "flymyai") == 0) {
        const char *t = code ? code : sc ? sc->flymyai : fallback;
        char url[160];
        snprintf(url, sizeof(url), "https://docs.flymy.ai/errors/#%s", t);
        body = json_pack("{s:[{s:[s], s:s, s:s, s:s}]}", "detail", "loc",
                         "body", "msg", message, "type", t, "url", url);
        /* The seed's verdict header: transient failures may be retried. */
        answer_header(a, "X-FlyMyAI-Retryable",
                      status == 429 || status >= 500 ? "true" : "false");
    } else if (strcmp(dialect, "firemoon") == 0) {
        body = json_pack("{s:s, s:s}", "error",
                         code ? code
                         : sc ? sc->firemoon
                              : reason,
                         "message", message);
        if (status == 429 && reset_ms > 0) {
            char iso[40];
            iso8601(reset_ms, iso, sizeof(iso));
            json_object_set_new(body, "resetAt", json_string(iso));
        }
    } else if (strcmp(dialect, "problem") == 0) {
        const char *c = code ? code : sc ? sc->flora : fallback;
        char type[160];
        snprintf(type, sizeof(type), "https://fake.invalid/problems/%s", c);
        body =
            json_pack("{s:s, s:s, s:i, s:s, s:s}", "type", type, "title",
                      reason, "status", status, "detail", message, "code", c);
        a->ctype = "application/problem+json";
    } else {
        body = json_pack("{s:s, s:s, s:i}", "error",
                         code ? code
                         : sc ? sc->flora
                              : fallback,
                         "message", message, "status", status);
    }
    answer_json(a, status, body);
}

void
shapes_success(struct answer *a, const char *dialect, long n, const char *key,
               unsigned port)
{
    char id[32], url[128];
    json_t *gen;

    snprintf(id, sizeof(id), "gen_%ld", n);
    snprintf(url, sizeof(url), "https://fake.invalid/out/%ld.png", n);
    gen = json_pack("{s:s, s:s, s:s, s:{s:s}}", "id", id, "object",
                    "generation", "key", key, "output", "url", url);
    if (strcmp(dialect, "flymyai") == 0) {
        /* A generation's files, fetchable from this fake (/files/…). */
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/files/flymyai/%s/0.png",
                 port, id);
        json_object_set_new(gen, "images", json_pack("[{s:s}]", "url", url));
    }
    if (strcmp(dialect, "graphql") == 0)
        gen = json_pack("{s:o}", "data", gen);
    answer_json(a, 200, gen);
}
