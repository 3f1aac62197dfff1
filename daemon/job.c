/*
 * job: names of states and error classes as the database stores them, and
 * the class defaults of CONTRACT.md's "retried" column.
 */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/job.h"

/* Bytes of request text per token: OpenAI's rule of thumb for English. */
#define JOB_BYTES_PER_TOKEN 4

static const char *const state_names[JOB_STATE_COUNT] = {
    "queued", "running", "waiting", "retrying",
    "succeeded", "failed", "cancelled",
};

const char *
job_state_name(enum job_state s)
{
    return (unsigned)s < JOB_STATE_COUNT ? state_names[s] : "?";
}

int
job_state_parse(const char *name, enum job_state *out)
{
    for (int i = 0; i < JOB_STATE_COUNT; i++) {
        if (strcmp(name, state_names[i]) == 0) {
            *out = (enum job_state)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool
job_state_terminal(enum job_state s)
{
    return s == JOB_SUCCEEDED || s == JOB_FAILED || s == JOB_CANCELLED;
}

static const struct {
    const char *name;
    bool retryable;
} classes[ERR_CLASS_COUNT] = {
    [ERR_NONE] = {"", false},
    [ERR_INVALID_REQUEST] = {"invalid_request", false},
    [ERR_AUTH] = {"auth", false},
    [ERR_INSUFFICIENT_BALANCE] = {"insufficient_balance", false},
    [ERR_PERMISSION] = {"permission", false},
    [ERR_NOT_FOUND] = {"not_found", false},
    [ERR_CONFLICT] = {"conflict", false},
    [ERR_IDEMPOTENCY_CONFLICT] = {"idempotency_conflict", false},
    [ERR_RATE_LIMITED] = {"rate_limited", true},
    [ERR_SERVER_ERROR] = {"server_error", true},
    [ERR_UNAVAILABLE] = {"unavailable", true},
    [ERR_TIMEOUT] = {"timeout", true},
    [ERR_SAFETY_BLOCKED] = {"safety_blocked", false},
    [ERR_INPUT_UNREACHABLE] = {"input_unreachable", false},
    [ERR_NETWORK] = {"network", true},
    [ERR_PROTOCOL] = {"protocol", true},
    [ERR_RUN_FAILED] = {"run_failed", true},
};

const char *
err_class_name(enum err_class c)
{
    return (unsigned)c < ERR_CLASS_COUNT ? classes[c].name : "?";
}

int
err_class_parse(const char *name, enum err_class *out)
{
    for (int i = 1; i < ERR_CLASS_COUNT; i++) {
        if (strcmp(name, classes[i].name) == 0) {
            *out = (enum err_class)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool
err_class_retryable(enum err_class c)
{
    return (unsigned)c < ERR_CLASS_COUNT && classes[c].retryable;
}

void
job_free(struct job *j)
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
    free(j->base_key);
    free(j->remote_id);
    free(j->poll_url);
    free(j);
}

int64_t
job_token_estimate(const char *body)
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
    return n + (int64_t)(strlen(body) / JOB_BYTES_PER_TOKEN);
}
