/*
 * flora: FLORA's API (docs/providers.md).
 *
 * Errors: every non-2xx carries {"error":{code,message,fields:[{field,
 * message}]}} and a `request-id` header; the HTTP status gives the class,
 * the code refines it where it says more (idempotency_conflict is a 422
 * that must never be retried with the same key). Idempotency keys go in the
 * body field `idempotency_key`.
 *
 * Runs are asynchronous: the create call answers 2xx with
 * {"run_id"|"runId", "status":"pending", "poll_url"|"pollUrl"}, and polls
 * answer the same shape until status is `completed` (outputs, charged_cost)
 * or `failed` (error_code, error_message). A 2xx is a run answer when it
 * carries a run id, or when it answers a poll; any other 2xx JSON object
 * (assets, projects, a synchronous run) is a plain success. An accepted
 * submission always carries remote_id and poll_url (default "/runs/<id>",
 * resolved against base_url by the caller); a poll answer that omits them
 * leaves them NULL, and the job keeps the ones it has.
 *
 * Rejected: treating an unknown run status as still running (a typo or a
 * new terminal state would poll forever); it is a protocol failure instead.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sluice/xmalloc.h"

/* Run ids are short ("run_…"); anything longer is not an id we can use. */
#define FLORA_ID_MAX 256
/* Poll URLs are paths or URLs on FLORA's host; 2 KiB is what every HTTP
 * stack accepts. */
#define FLORA_URL_MAX 2048

static const struct dialect_code_class flora_codes[] = {
    {"idempotency_conflict", ERR_IDEMPOTENCY_CONFLICT},
    {"insufficient_balance", ERR_INSUFFICIENT_BALANCE},
    {NULL, ERR_NONE},
};

/* Run failures (error_code of a failed run); anything else is run_failed,
 * which retries with a derived key. */
static const struct dialect_code_class flora_run_codes[] = {
    {"model_timeout", ERR_TIMEOUT},
    {"internal_error", ERR_RUN_FAILED},
    {"safety_blocked", ERR_SAFETY_BLOCKED},
    {"input_unreachable", ERR_INPUT_UNREACHABLE},
    {NULL, ERR_NONE},
};

/* The run id as text (a string, or a number printed), or false. */
static bool
flora_run_id(const json_t *body, char *buf, size_t cap)
{
    const json_t *v = json_object_get(body, "run_id");

    if (v == NULL)
        v = json_object_get(body, "runId");
    if (json_is_string(v) && json_string_length(v) > 0 &&
        json_string_length(v) < cap &&
        strlen(json_string_value(v)) == json_string_length(v)) {
        memcpy(buf, json_string_value(v), json_string_length(v) + 1);
        return true;
    }
    if (json_is_integer(v)) {
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return true;
    }
    return false;
}

static void
flora_cost(const json_t *body, struct outcome *o)
{
    const json_t *v = json_object_get(body, "charged_cost");
    char *end;
    double d;

    if (json_is_number(v)) {
        o->cost = json_number_value(v);
        o->has_cost = true;
    } else if (json_is_string(v)) {
        d = strtod(json_string_value(v), &end);
        if (end != json_string_value(v) && *end == '\0') {
            o->cost = d;
            o->has_cost = true;
        }
    }
}

static void
flora_run_failed(const json_t *body, struct outcome *o)
{
    const json_t *code = json_object_get(body, "error_code");
    enum err_class cls;

    o->kind = OUTCOME_FAILURE;
    o->code[0] = '\0';
    o->message[0] = '\0';
    dialect_set_code(o, code);
    dialect_set_message(o, json_object_get(body, "error_message"));
    cls = dialect_lookup_class(flora_run_codes,
                               json_is_string(code) ? o->code : NULL);
    o->cls = cls != ERR_NONE ? cls : ERR_RUN_FAILED;
}

static void
flora_accepted(const json_t *body, const char *id, struct outcome *o)
{
    static const char *const url_keys[] = {"poll_url", "pollUrl", NULL};
    const char *url = dialect_first_string(body, url_keys);

    o->kind = OUTCOME_ACCEPTED;
    o->cls = ERR_NONE;
    if (id != NULL)
        o->remote_id = xstrdup(id);
    if (url != NULL && *url != '\0' && strlen(url) < FLORA_URL_MAX)
        o->poll_url = xstrdup(url);
    else if (id != NULL)
        o->poll_url = xasprintf("/runs/%s", id);
}

static void
flora_unexpected(const struct http_response *r, struct outcome *o)
{
    char excerpt[OUTCOME_MESSAGE_MAX];

    dialect_excerpt(r, excerpt, sizeof(excerpt));
    dialect_fail(o, ERR_PROTOCOL, "unexpected_body", excerpt);
}

static void
flora_success(const struct http_response *r, bool poll, struct outcome *o)
{
    json_t *body = dialect_parse_body(r);
    char idbuf[FLORA_ID_MAX];
    const char *id = NULL;
    const char *status;

    if (!json_is_object(body)) {
        json_decref(body);
        dialect_success(r, true, o);
        return;
    }
    if (flora_run_id(body, idbuf, sizeof(idbuf)))
        id = idbuf;
    if (id == NULL && !poll) {
        json_decref(body);
        dialect_success(r, true, o);
        return;
    }
    status = json_string_value(json_object_get(body, "status"));
    if (status == NULL) {
        flora_unexpected(r, o);
    } else if (strcmp(status, "pending") == 0 ||
               strcmp(status, "running") == 0 ||
               strcmp(status, "queued") == 0) {
        /* A submission we cannot poll is useless: it needs the id. */
        if (id == NULL && !poll)
            flora_unexpected(r, o);
        else
            flora_accepted(body, id, o);
    } else if (strcmp(status, "completed") == 0) {
        o->kind = OUTCOME_SUCCESS;
        o->cls = ERR_NONE;
        o->result = xstrndup(r->body, r->body_len);
        flora_cost(body, o);
    } else if (strcmp(status, "failed") == 0) {
        flora_run_failed(body, o);
    } else {
        flora_unexpected(r, o);
    }
    if (id != NULL && o->kind != OUTCOME_ACCEPTED)
        o->remote_id = xstrdup(id);
    json_decref(body);
}

static void
flora_error(const struct http_response *r, struct outcome *o)
{
    static const char *const field_keys[] = {"field", NULL};
    static const char *const message_keys[] = {"message", NULL};
    json_t *body = dialect_parse_body(r);
    const json_t *err = json_object_get(body, "error");
    json_t *fields = NULL;
    enum err_class cls;

    dialect_status_failure(r, o);
    if (json_is_object(err)) {
        bool code = dialect_set_code(o, json_object_get(err, "code"));
        bool msg = dialect_set_message(o, json_object_get(err, "message"));
        if (code && !msg)
            o->message[0] = '\0';
        dialect_fields_from_array(json_object_get(err, "fields"), field_keys,
                                  message_keys, &fields);
        dialect_fields_take(o, fields);
    } else {
        dialect_generic_error(body, o);
    }
    cls = dialect_lookup_class(flora_codes, o->code);
    if (cls != ERR_NONE)
        o->cls = cls;
    json_decref(body);
}

static void
flora_classify(const struct http_response *r, bool poll, int64_t now_ms,
               struct outcome *o)
{
    (void)now_ms;
    if (dialect_is_2xx(r->status))
        flora_success(r, poll, o);
    else
        flora_error(r, o);
}

/* A technique run is sent to /techniques/{slug}/runs (docs/providers.md);
 * GET /techniques/{slug} states its run_cost. The slug is read as FLORA
 * spells ids and slugs (letters, digits, "-", "_", "."); anything else
 * (POST /generate, an asset) states no cost. */
static char *
flora_cost_source(const char *job_path)
{
    static const char seg[] = "/techniques/";
    size_t end = strcspn(job_path, "?#");
    const char *at = NULL;

    for (const char *p = job_path;
         (p = strstr(p, seg)) != NULL && (size_t)(p - job_path) < end; p++)
        at = p;
    if (at == NULL)
        return NULL;
    const char *slug = at + strlen(seg);
    size_t n = strspn(slug, "abcdefghijklmnopqrstuvwxyz"
                            "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.");
    const char *rest = slug + n;
    if (n == 0 || strncmp(rest, "/runs", 5) != 0 ||
        (rest[5] != '\0' && rest[5] != '/' && rest[5] != '?' && rest[5] != '#'))
        return NULL;
    return xstrndup(job_path, (size_t)(rest - job_path));
}

/* {"id":"tech_…","slug",…,"run_cost":0.04}: a number, or a decimal
 * string (prices are often quoted to stay exact). */
static bool
flora_stated_cost(const char *body, double *cost)
{
    json_t *root = json_loads(body, 0, NULL);
    json_t *v = json_object_get(root, "run_cost");
    bool ok = false;
    double x = 0;

    if (json_is_number(v)) {
        x = json_number_value(v);
        ok = true;
    } else if (json_is_string(v) && json_string_length(v) > 0) {
        char *end;
        x = strtod(json_string_value(v), &end);
        ok = *end == '\0';
    }
    json_decref(root);
    /* a negative or non-finite price is not one */
    if (!ok || !isfinite(x) || x < 0)
        return false;
    *cost = x;
    return true;
}

/* A completed run lists outputs:[{output_id,type,url}] (docs/providers.md). */
static const char *const flora_outputs[] = {"/outputs/*/url", NULL};

const struct dialect flora_dialect = {
    .name = "flora",
    .request_id_header = "request-id",
    .auth = "bearer",
    .idempotency = "body:idempotency_key",
    .async = true,
    .classify = flora_classify,
    .output_pointers = flora_outputs,
    .cost_source = flora_cost_source,
    .stated_cost = flora_stated_cost,
};
