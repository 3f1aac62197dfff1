/*
 * job: the states of a job and the canonical error classes, with their
 * names as stored in the database (CONTRACT.md), and the in-memory copy of
 * a claimed job that travels through the daemon.
 */
#ifndef SLUICE_JOB_H
#define SLUICE_JOB_H

#include <stdbool.h>
#include <stdint.h>

enum job_state {
    JOB_QUEUED,    /* waiting for its first (or a returned) attempt */
    JOB_RUNNING,   /* claimed by a daemon, request in flight, lease held */
    JOB_WAITING,   /* async run accepted by the provider, being polled */
    JOB_RETRYING,  /* failed attempt, next try at run_after */
    JOB_SUCCEEDED, /* terminal: result stored */
    JOB_FAILED,    /* terminal: last failure stored */
    JOB_CANCELLED, /* terminal: cancelled by an operator */
};
#define JOB_STATE_COUNT 7

const char *job_state_name(enum job_state s);
/* Returns 0 and sets *out, or -EINVAL for an unknown name. */
int job_state_parse(const char *name, enum job_state *out);
bool job_state_terminal(enum job_state s);

enum err_class {
    ERR_NONE,                 /* no failure */
    ERR_INVALID_REQUEST,      /* 400, 422 validation */
    ERR_AUTH,                 /* 401: pauses the provider */
    ERR_INSUFFICIENT_BALANCE, /* 402: pauses the provider */
    ERR_PERMISSION,           /* 403 */
    ERR_NOT_FOUND,            /* 404 */
    ERR_CONFLICT,             /* 409 */
    ERR_IDEMPOTENCY_CONFLICT, /* same key, other body */
    ERR_RATE_LIMITED,         /* 429: deferral */
    ERR_SERVER_ERROR,         /* 500, 502 */
    ERR_UNAVAILABLE,          /* 503 */
    ERR_TIMEOUT,              /* 504, 408, model or client timeout */
    ERR_SAFETY_BLOCKED,       /* content refused */
    ERR_INPUT_UNREACHABLE,    /* a URL input could not be fetched */
    ERR_NETWORK,              /* DNS, connect, TLS, reset */
    ERR_PROTOCOL,             /* unreadable or unexpected response */
    ERR_RUN_FAILED,           /* async run failed, nothing more specific */
};
#define ERR_CLASS_COUNT 17

/* "invalid_request", …; ERR_NONE is "" . */
const char *err_class_name(enum err_class c);
int err_class_parse(const char *name, enum err_class *out);
/* The contract's default: is a failure of this class retried? */
bool err_class_retryable(enum err_class c);

/*
 * A claimed job, copied out of the database. All strings owned by the job.
 */
struct job {
    int64_t id;            /* jobs.id */
    char *provider;        /* provider name from the config */
    char *batch;           /* batch name or NULL */
    char *custom_id;       /* caller's id or NULL */
    char *method;          /* "POST", … */
    char *path;            /* path under base_url, or a full URL */
    char *body;            /* JSON text or NULL */
    char *idempotency_key; /* the key to send on this attempt */
    char *base_key;        /* the job's own key (jobs.idempotency_key), of
                              which derived keys are "<base_key>.N" */
    enum job_state state;  /* RUNNING (submit) or WAITING (poll) when claimed */
    int attempts;          /* attempts charged, this one included */
    int max_attempts;      /* cap on charged attempts */
    int deferrals;         /* throttle deferrals so far (not attempts) */
    char *remote_id;       /* async run id, WAITING jobs only */
    char *poll_url;        /* where to poll, WAITING jobs only */
    int64_t created_at;    /* unix ms */
    int64_t waiting_since; /* unix ms the run was accepted, 0 if not async */
};

void job_free(struct job *j);

/* The tokens a request body will cost a provider that counts tokens per
 * minute, estimated before it is sent: max_tokens (or
 * max_completion_tokens) plus the body's length / 4 (about four bytes of
 * text per token). body may be NULL (0). */
int64_t job_token_estimate(const char *body);

#endif
