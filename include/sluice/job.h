/*
 * job: the states of a job and the canonical error classes, with their
 * names as stored in the database (docs/contract.md), the in-memory copy of a
 * claimed job that travels through the daemon, and the job's state
 * machine: the allowed transitions and job_next(), which decides every
 * move the daemon makes.
 */
#ifndef SLUICE_JOB_H
#define SLUICE_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include "sluice/retry.h"

struct outcome;

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

/* The two sets of states, defined here once: as bit masks (1u << state)
 * for C, and as SQL lists for "state IN (" JOB_UNFINISHED_SQL ")". The
 * lists are the names of the masks' states in enum order (test_job checks
 * that they agree). */
#define JOB_UNFINISHED_MASK                                                    \
    ((1u << JOB_QUEUED) | (1u << JOB_RUNNING) | (1u << JOB_WAITING) |          \
     (1u << JOB_RETRYING))
#define JOB_TERMINAL_MASK                                                      \
    ((1u << JOB_SUCCEEDED) | (1u << JOB_FAILED) | (1u << JOB_CANCELLED))
#define JOB_UNFINISHED_SQL "'queued', 'running', 'waiting', 'retrying'"
#define JOB_TERMINAL_SQL "'succeeded', 'failed', 'cancelled'"

const char *job_state_name(enum job_state s);
/* Returns 0 and sets *out, or -EINVAL for an unknown name. */
int job_state_parse(const char *name, enum job_state *out);
bool job_state_terminal(enum job_state s);
bool job_state_unfinished(enum job_state s);

/* Whether a job may move from one state to the other. The one table of
 * transitions, whoever makes them:
 *   queued, retrying  -> running (a claim), cancelled (an operator)
 *   running           -> any state but running (job_next; a lost lease
 *                        returns it to queued or fails it)
 *   waiting           -> any state but running (job_next: polls)
 *   failed, cancelled -> queued (an operator's retry)
 *   succeeded         -> nothing
 * The store asserts it on every update it records (debug builds). */
bool job_transition_allowed(enum job_state from, enum job_state to);

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
    ERR_UNKNOWN_OUTCOME,      /* sent to a provider without idempotency,
                                 outcome never recorded: not resent */
};
#define ERR_CLASS_COUNT 18

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

/* A new string: the idempotency key for a resubmission after the remote
 * run definitively failed (the same key would only replay the failed run):
 * "<base_key>.N", N the attempt it is for or one past the key in use,
 * whichever is higher, so it never repeats within the job, across an
 * operator's retry too (docs/design.md §4). */
char *job_derived_key(const struct job *j);

/* --- the state machine ---------------------------------------------------- */

/* What happened to a claimed job (a job in state running, a submission,
 * or waiting, a poll of its run). */
enum job_event_kind {
    JOB_EVENT_ANSWER,  /* the provider answered: see outcome */
    JOB_EVENT_UNSENT,  /* the request could not even be started */
    JOB_EVENT_RELEASE, /* ended without an answer that counts (shutdown) */
    JOB_EVENT_CANCEL,  /* an operator cancelled the job in flight */
    JOB_EVENT_REFUSED, /* not sent, and never will be as it is stored (a
                          url off the provider's origin, a key unfit for
                          a header): fails with the event's failure */
};

struct job_event {
    enum job_event_kind kind;
    const struct outcome *outcome; /* ANSWER: the dialect's reading */
    bool lane_paused;   /* ANSWER: the provider's lane is paused, having
                           learnt from this answer (a 403 about the key is
                           then held like an auth failure) */
    int64_t now_ms;     /* unix ms */
    double u;           /* uniform draw in [0, 1) for the backoff jitter */
    bool sent;          /* RELEASE: some of the request went out */
    enum err_class cls; /* REFUSED: the failure to record */
    const char *code, *message; /* REFUSED: static text */
};

/* The provider's policy for its jobs. Borrowed, not copied. */
struct job_policy {
    struct retry_policy retry;    /* a job's own max_attempts beats it */
    int64_t poll_interval_ms;     /* first poll after a run is accepted */
    int64_t poll_interval_max_ms; /* polls grow with the run's age to this */
    const char *base_url; /* poll urls must be on its scheme://host:port:
                             credentials are never sent elsewhere */
    bool idem_none;       /* the provider takes no idempotency key: a
                             submission that may have reached it without
                             an answer is never sent again on our own */
};

/* The answer: where the job goes and what to record with it. Strings are
 * borrowed from the job, the outcome, or static text. */
struct job_decision {
    enum job_state state; /* next state (job_transition_allowed holds) */
    int64_t run_after;    /* unix ms: when queued, retrying or waiting may
                             be claimed (or polled) again */
    int deferrals;        /* new count of deferrals (and failed polls) */
    bool uncharge;        /* refund the attempt charged at the claim */
    bool derive_key;      /* the next submission sends job_derived_key() */
    bool has_attempt;     /* record an attempt row: every submission that
                             was answered, and polls that failed */
    int waiting;          /* change of the provider's count of runs being
                             polled: -1, 0 or +1 */
    enum err_class cls;   /* failure to record on the job, ERR_NONE none */
    const char *code, *message;       /* the failure's, or NULL */
    const char *remote_id, *poll_url; /* async run to keep, NULL: as is */
    const char *verb; /* failures only: what happens, for the log line
                         ("failed", "retry", "deferred", "poll again",
                         "held, provider paused"); NULL otherwise */
};

/* Decides the next state of job j (as claimed) after event ev, under the
 * provider's policy p. Pure: no clock, no randomness, no I/O (they come in
 * ev), so every transition is unit-tested (tests/unit/test_job.c). The
 * failure policy itself is retry_decide's (retry.h). */
struct job_decision job_next(const struct job *j, const struct job_event *ev,
                             const struct job_policy *p);

#endif
