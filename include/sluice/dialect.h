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

#include "sluice/job.h"
#include "sluice/outcome.h"

struct http_response;

struct dialect {
    const char *name;             /* "flora", "openai", … */
    const char *request_id_header; /* default header for the request id */
    const char *auth;             /* default auth: "bearer", "header:NAME" */
    const char *idempotency;      /* default: "header", "body:FIELD", … */
    bool async;                   /* may answer with runs to poll */
    /* Classifies a response to a submission (poll == false) or to a poll
     * of an accepted run (poll == true). Never sees transport failures
     * (status 0): dialect_classify handles those itself. */
    void (*classify)(const struct http_response *r, bool poll,
                     int64_t now_ms, struct outcome *out);
    /* Where a success result keeps its output URLs: JSON pointers with
     * "*" for array elements (jsonptr.h), NULL-terminated; NULL when the
     * provider's shape is not known (output_pointer covers it). */
    const char *const *output_pointers;
    /* Where the provider states what one run costs before it runs:
     * the path (or URL, as the job's own) of the resource that states
     * the run cost of a job sent to job_path, as a new string, or NULL
     * when the provider states none for it (FLORA: "/techniques/{slug}"
     * for "/techniques/{slug}/runs"). NULL: a provider stating no costs. */
    char *(*cost_source)(const char *job_path);
    /* The run cost that resource's body (JSON text) states, or false. */
    bool (*stated_cost)(const char *body, double *cost);
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

/* The stated run cost of the job at job_path: the resource to fetch
 * (a new string), or NULL when d states none (dialect_stated_cost then
 * reads its answer). */
char *dialect_cost_source(const struct dialect *d, const char *job_path);
/* The run cost stated by a body of d's cost source: a finite number >= 0
 * (a decimal string counts), or false. */
bool dialect_stated_cost(const struct dialect *d, const char *body,
                         double *cost);

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
