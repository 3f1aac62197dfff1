/*
 * outcome: what one response meant, as a dialect reads it (dialect.h) and
 * as the lane, retry policy, job_next and the store consume it: the
 * canonical class, the provider's own code and message, the request id,
 * an explicit retry verdict, hints, and the result or async run.
 */
#ifndef SLUICE_OUTCOME_H
#define SLUICE_OUTCOME_H

#include <stdbool.h>
#include <stdint.h>

#include "sluice/hints.h"
#include "sluice/job.h"

enum outcome_kind {
    OUTCOME_SUCCESS,  /* done: result holds the body */
    OUTCOME_ACCEPTED, /* async run accepted or still running: poll again */
    OUTCOME_FAILURE,  /* failed: class says what happens next */
};

enum verdict {
    VERDICT_DEFAULT, /* the class decides */
    VERDICT_RETRY,   /* the provider says retrying may succeed */
    VERDICT_NO_RETRY /* the provider says it will not */
};

#define OUTCOME_CODE_MAX 128
#define OUTCOME_MESSAGE_MAX 512
#define OUTCOME_REQUEST_ID_MAX 128

struct outcome {
    enum outcome_kind kind;
    enum err_class cls;       /* ERR_NONE unless kind == OUTCOME_FAILURE */
    int http_status;          /* 0 for transport failures */
    char code[OUTCOME_CODE_MAX];       /* provider's code, verbatim, or "" */
    char message[OUTCOME_MESSAGE_MAX]; /* provider's message, truncated */
    char request_id[OUTCOME_REQUEST_ID_MAX]; /* from the response, or "" */
    enum verdict verdict;     /* explicit provider verdict */
    struct hints hints;       /* retry and rate hints */
    char *fields;    /* owned JSON array [{"field","message"}] or NULL */
    char *result;    /* owned JSON text: success body, or partial data */
    char *remote_id; /* owned: async run id (ACCEPTED, or a finished run) */
    char *poll_url;  /* owned: where to poll (ACCEPTED) */
    int64_t tokens_used; /* usage.total_tokens of the answer; 0 unknown */
    double cost;     /* charged cost when has_cost */
    bool has_cost;
    bool unsent;     /* a transport failure before any byte of the request
                        went out: sending again cannot run it twice */
};

/* Zeroes o and sets hints to "unknown". */
void outcome_init(struct outcome *o);
/* Frees the owned strings; o is reusable after outcome_init. */
void outcome_clear(struct outcome *o);
/* Whether the job should be tried again: the explicit verdict when given,
 * otherwise the class default. */
bool outcome_retryable(const struct outcome *o);
/* Sets the class, the code and the message (truncated) at once. */
void outcome_fail(struct outcome *o, enum err_class cls, const char *code,
                  const char *message);

#endif
