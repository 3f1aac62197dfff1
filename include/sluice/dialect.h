/*
 * dialect: how one provider family reports success and failure. Each dialect
 * turns (HTTP status, headers, body) into an outcome: the canonical class
 * that decides what happens, the provider's own code verbatim, its message,
 * the request id, per-field messages, an explicit retry verdict and a retry
 * hint. One small module per dialect in daemon/dialect/, all behind this.
 */
#ifndef SLUICE_DIALECT_H
#define SLUICE_DIALECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sluice/hints.h"
#include "sluice/job.h"

struct http_response;

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

struct dialect {
    const char *name;             /* "flora", "openai", … */
    const char *request_id_header; /* default header for the request id */
    const char *auth;             /* default auth: "bearer", "header:NAME" */
    const char *idempotency;      /* default: "header", "body:FIELD", … */
    bool async;                   /* may answer with runs to poll */
    /* Classifies a response to a submission (poll == false) or to a poll
     * of an accepted run (poll == true). Transport failures (status 0) are
     * classified by the caller with dialect_transport(). */
    void (*classify)(const struct http_response *r, bool poll,
                     int64_t now_ms, struct outcome *out);
    /* Where a success result keeps its output URLs: JSON pointers with
     * "*" for array elements (jsonptr.h), NULL-terminated; NULL when the
     * provider's shape is not known (output_pointer covers it). */
    const char *const *output_pointers;
};

/* The dialect of that name or alias ("flowapi" = "openai", "lamatic" =
 * "graphql"), or NULL. */
const struct dialect *dialect_find(const char *name);
/* Comma-separated list of the names, for error messages. */
const char *dialect_names(void);

/* Classifies any response with this dialect: a transport failure becomes
 * network / timeout / protocol (too large), otherwise d->classify runs.
 * Fills request_id from request_id_header (NULL: the dialect's default)
 * when the dialect left it empty, and hints from the headers. */
void dialect_classify(const struct dialect *d, const struct http_response *r,
                      bool poll, int64_t now_ms,
                      const char *request_id_header, struct outcome *out);

/* Most output URLs taken from one result, and the longest kept: a result
 * lists a handful of files; a hostile one could list millions. */
#define DIALECT_OUTPUTS_MAX 256
#define DIALECT_OUTPUT_URL_MAX 4096

/* The output URLs of a success result (JSON text): the strings at d's
 * output pointers, then at extra[0..nextra) (config output_pointer), in
 * document order, each URL once. Only absolute http:// and https:// URLs
 * count; anything else at a pointer is skipped. Returns the count and
 * sets *urls to a new NULL-terminated array of new strings (free each,
 * then the array); a result that is not JSON has none. d may be NULL. */
size_t dialect_output_urls(const struct dialect *d, const char *result,
                           char *const *extra, size_t nextra, char ***urls);

/* Shared helpers for dialect modules. */
/* The class a bare HTTP status implies (2xx → ERR_NONE). */
enum err_class dialect_class_for_status(int status);

#endif
