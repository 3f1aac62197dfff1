/*
 * jobspec: one JSONL line of `sluicectl enqueue` turned into the row to
 * insert: validated fields, canonical body and the idempotency key
 * (docs/design.md §4). No SQL and no I/O here.
 */
#ifndef SLUICE_JOBSPEC_H
#define SLUICE_JOBSPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;

struct jobspec {
    char *provider;        /* a provider of the config */
    char *batch;           /* --batch, or NULL */
    char *custom_id;       /* caller's id, or NULL */
    char *method;          /* upper case, default POST */
    char *path;            /* path under base_url ("/…"), or a full URL */
    char *body;            /* canonical JSON text (sorted keys), or NULL */
    char *idempotency_key; /* custom_id, else sha256 of the request, or a
                              random key with --unique */
    int priority;          /* higher first, default 0 */
    int max_attempts;      /* from the line, else the provider's config */
};

struct jobspec_opts {
    const struct config *config; /* providers known; required */
    const char *provider;        /* --provider default, or NULL */
    const char *batch;           /* --batch, or NULL */
    bool unique;                 /* --unique: random keys */
};

/* Parses one line (len bytes, not NUL-terminated necessarily). Returns 0
 * and fills out (free with jobspec_clear), or -EINVAL with the reason in
 * err ("custom_id: must be a string"), naming the field. */
int jobspec_parse(const char *line, size_t len, const struct jobspec_opts *o,
                  struct jobspec *out, char *err, size_t errlen);
void jobspec_clear(struct jobspec *j);

/* jobspec_parse with jansson alone (json_loadb, then a sorted compact
 * dump of the body): the reference that jobspec_parse's one-pass reader
 * matches byte for byte and falls back to for every line it leaves (bad
 * lines among them, so errors are jansson's). Same contract. */
int jobspec_parse_jansson(const char *line, size_t len,
                          const struct jobspec_opts *o, struct jobspec *out,
                          char *err, size_t errlen);

/* Lowercase hex sha256 of the NUL-separated (provider, method, path, body);
 * out must hold 65 bytes. */
void jobspec_hash_key(const char *provider, const char *method,
                      const char *path, const char *body, char out[65]);

/* The tokens a request body will cost a provider that counts tokens per
 * minute, estimated before it is sent: max_tokens (or
 * max_completion_tokens, max_output_tokens) plus the body's length / 4
 * (about four bytes of text per token). body may be NULL (0). */
int64_t jobspec_token_estimate(const char *body);

#endif
