/*
 * config: the INI file of docs/contract.md, parsed completely (inih) and
 * validated before anything starts. An error names file, line and key.
 */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_DEFAULT_PATH "/etc/sluice/sluice.conf"

enum auth_kind {
    AUTH_BEARER, /* Authorization: Bearer KEY */
    AUTH_HEADER, /* NAME: KEY */
    AUTH_NONE,
};

enum idem_kind {
    IDEM_HEADER, /* a header, name in idem_name (default Idempotency-Key) */
    IDEM_BODY,   /* a top-level field of the JSON body, name in idem_name */
    IDEM_NONE,
};

struct provider_config {
    char *name;              /* [provider "NAME"] */
    char *dialect;           /* canonical dialect name (aliases resolved) */
    char *base_url;          /* no trailing slash */
    char *api_key_env;       /* env var holding the key, or NULL */
    char *api_key_file;      /* file holding the key, or NULL; relative to
                                $CREDENTIALS_DIRECTORY when that is set */
    enum auth_kind auth;
    char *auth_header;       /* header name for AUTH_HEADER */
    char **headers;          /* extra "Name: value" lines */
    size_t nheaders;
    enum idem_kind idem;
    char *idem_name;         /* header or body field name */
    char *request_id_header; /* override, or NULL for the dialect default */
    int concurrency_start;   /* initial limit (default 4) */
    int concurrency_max;     /* ceiling (default 64) */
    bool adaptive;           /* AIMD on (default); off = fixed at start */
    double rate_per_s;       /* configured rate limit; 0 = none */
    double tokens_per_s;     /* configured token limit; 0 = none */
    int64_t timeout_ms;      /* whole request (default 120 s) */
    int64_t connect_timeout_ms; /* default 10 s */
    int max_attempts;        /* default 5 */
    int max_deferrals;       /* default 50 */
    int64_t backoff_base_ms; /* default 1 s */
    int64_t backoff_cap_ms;  /* default 60 s */
    int64_t poll_interval_ms;     /* default 3 s */
    int64_t poll_interval_max_ms; /* default 15 s */
    int64_t probe_interval_ms;    /* paused-provider probe, default 5 min */
    size_t max_response;     /* response body cap, default 8 MiB */
    bool outputs_download;   /* outputs = download (default keep-urls) */
    char **output_pointers;  /* output_pointer values: JSON pointers to
                                output URLs beyond the dialect's own */
    size_t noutput_pointers;
    double budget;           /* spend cap in the provider's currency;
                                0 = none */
    char *cost_pointer;      /* JSON pointer to a job's cost in its
                                result, or NULL */
    double token_price;      /* cost per usage.total_tokens; 0 = none */
};

struct config {
    char *path;              /* file it came from, or NULL for defaults */
    char *database;          /* SQLite file or PostgreSQL conninfo */
    int64_t shutdown_grace_ms; /* default 30 s */
    int64_t lease_ms;        /* claim lease, default 10 min (> timeout) */
    int64_t heartbeat_timeout_ms; /* another daemon whose heartbeat does not
                                     change for this long is dead, default
                                     30 s (liveness.h) */
    int log_level;           /* enum log_level */
    char *outputs_dir;       /* downloaded outputs, or NULL (none) */
    int outputs_concurrency; /* downloads at once, default 4 */
    size_t outputs_max_size; /* one output's size cap, default 1 GiB */
    char *metrics;           /* ADDR:PORT serving /metrics, or NULL */
    struct provider_config *providers;
    size_t nproviders;
};

/* Parses and validates path. On success returns 0 and *out (free with
 * config_free). On failure returns -EINVAL (bad content) or a negative errno
 * (unreadable) and writes "FILE:LINE: key: problem" into err. */
int config_load(const char *path, struct config **out, char *err,
                size_t errlen);
/* Parses from a string (tests); name is used in messages. */
int config_load_string(const char *text, const char *name,
                       struct config **out, char *err, size_t errlen);
void config_free(struct config *c);

const struct provider_config *config_provider(const struct config *c,
                                              const char *name);

/* Reads the provider's key (env or file), trimmed. Returns a new string or
 * NULL with a message in err (which never contains the key). auth = none
 * returns an empty string. */
char *config_api_key(const struct provider_config *p, char *err,
                     size_t errlen);

/* "250ms", "30s", "5m", "2h", "1d" → ms. A bare number is seconds.
 * Returns 0 or -EINVAL. */
int config_parse_duration(const char *s, int64_t *ms);
/* "60/min", "5/s", "1000/h" → per second. Returns 0 or -EINVAL. */
int config_parse_rate(const char *s, double *per_s);

/* The path to use: -c value, else $SLUICE_CONFIG, else the default. */
const char *config_default_path(const char *flag);

#endif
