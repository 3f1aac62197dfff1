/*
 * fake_provider: a real HTTP server on 127.0.0.1 that behaves like the
 * generative-AI APIs of docs/providers.md, for tests, the demo and benchmarks.
 * README.md beside this file is the user's documentation.
 *
 *   main.c    options, signals, the libmicrohttpd daemon
 *   server.c  one request: capacity, idempotency, scripts, runs, the log
 *   ledger.c  per-key ledger and async runs (a hash table and an array)
 *   shapes.c  bodies in each provider dialect (errors and successes)
 *
 * All shared state lives in one struct fake behind one mutex; connection
 * threads take it only to decide, never while sleeping or writing.
 */
#ifndef FAKE_H
#define FAKE_H

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <microhttpd.h>

/* --- shapes.c ------------------------------------------------------------ */

/* What to send back for one request, decided under the lock. */
struct answer {
    int status; /* HTTP status */
    char *body; /* owned */
    size_t body_len;
    const char *ctype; /* Content-Type (static string) */
    json_t *headers;   /* owned object: name → string, or NULL */
    long delay_ms;     /* extra sleep before answering (script) */
    bool reset;        /* close the connection without any response */
    bool truncate;     /* announce more than the body, then close */
    bool executed;     /* a fresh generation (ledger) */
    bool throttled;    /* refused for capacity */
    bool replayed;     /* stored response of an earlier execution */
    size_t cut_at;     /* > 0: announce the whole body, send this many
                          bytes of it, then close (a cut download) */
    long stall_ms;     /* send half the body, sleep this long, then the
                          rest (a download cut by a restart) */
};

void answer_clear(struct answer *a);
/* Adds (or replaces) a response header. */
void answer_header(struct answer *a, const char *name, const char *value);
/* Takes the body: JSON value dumped compactly (a string is sent raw). */
void answer_json(struct answer *a, int status, json_t *body);

/* The dialect a path's first segment names: "flora", "openai", "graphql"
 * (prefix /lamatic), "flymyai", "firemoon", "problem" or "generic". */
const char *shapes_dialect(const char *path);
/* The header carrying the request id in that dialect. */
const char *shapes_request_id_header(const char *dialect);
/* An error answer in the dialect's documented shape. code and message may
 * be NULL for the dialect's default for status; reset_ms (unix ms, 0 =
 * none) feeds Firemoon's resetAt. */
void shapes_error(struct answer *a, const char *dialect, int status,
                  const char *code, const char *message, int64_t reset_ms);
/* The default success body of a fresh generation number n; FlyMyAI's
 * carries images:[{url}] served by this fake on port (see files below). */
void shapes_success(struct answer *a, const char *dialect, long n,
                    const char *key, unsigned port);

/* --- ledger.c ------------------------------------------------------------ */

/* One idempotency key ("" for requests without one). */
struct ledger_entry {
    char *key;
    bool hidden;              /* script state of keyless requests: not listed */
    long requests;            /* requests seen past the capacity gate */
    long executions;          /* fresh 2xx generations (or runs created) */
    long replays;             /* stored responses sent again */
    bool has_digest;          /* digest of the first body is set */
    unsigned char digest[32]; /* SHA-256 of the body minus the key field */
    json_t *script;           /* owned array of steps, or NULL */
    bool has_stored;          /* an execution's response is kept for replay */
    int stored_status;
    char *stored_body; /* owned */
    size_t stored_len;
    const char *stored_ctype;
    struct ledger_entry *next; /* hash chain */
};

/* An async run created by an {"async": …} step. */
struct ledger_run {
    long polls;        /* polls seen */
    long polls_needed; /* polls answered "running" before the outcome */
    json_t *then;      /* owned outcome object, or NULL = completed */
};

struct ledger {
    struct ledger_entry **buckets;
    size_t nbuckets, nentries;
    struct ledger_run *runs; /* run_<n> is runs[n - 1] */
    size_t nruns, runs_cap;
};

/* Finds or creates the entry for key. Borrowed; lives until ledger_clear. */
struct ledger_entry *ledger_get(struct ledger *l, const char *key);
/* Adds a run; returns its number n (run_<n>). then is copied. */
long ledger_run_new(struct ledger *l, long polls_needed, json_t *then);
/* The run numbered n, or NULL. */
struct ledger_run *ledger_run(struct ledger *l, long n);
/* {"key": {"requests","executions","replays"}, …}: a new reference. */
json_t *ledger_keys_json(const struct ledger *l);
/* Forgets everything. */
void ledger_clear(struct ledger *l);

/* --- server.c ------------------------------------------------------------ */

#define FAKE_MIX_MAX 16

struct fake_config {
    double rate;         /* requests/s admitted; 0 = unlimited */
    double burst;        /* bucket size */
    bool burst_set;      /* --burst given: keep it when rate changes */
    long max_concurrent; /* 0 = unlimited */
    long retry_after;    /* seconds in capacity 429s; 0 = computed */
    double error_rate;   /* share answered with a random error */
    int error_mix[FAKE_MIX_MAX];
    int nmix;
    long latency_ms;
    long jitter_ms;
    bool quiet;
    long log_limit; /* request log entries kept */
    long window_limit;  /* fixed window: requests per window; 0 = none */
    long window_ms;     /* its length; windows start at multiples of it */
    double token_limit; /* tokens per minute; 0 = none */
    int rate_headers;   /* what a --rate 429 says: FAKE_RATE_HEADERS_* */
};

enum {
    FAKE_RATE_HEADERS_FULL,  /* X-RateLimit-Limit, -Remaining, -Reset */
    FAKE_RATE_HEADERS_LIMIT, /* X-RateLimit-Limit only */
    FAKE_RATE_HEADERS_NONE,  /* a silent bucket: Retry-After only */
};

struct fake {
    pthread_mutex_t mu;
    struct fake_config cfg;
    unsigned port;
    uint64_t rng;         /* xorshift64* state */
    double tokens;        /* token bucket */
    int64_t refill_ms;    /* monotonic ms of the last refill */
    int64_t window_start; /* unix ms the current fixed window began */
    long window_used;     /* requests admitted in it */
    double tok_bucket;    /* tokens per minute: what is left */
    int64_t tok_refill_ms; /* monotonic ms of its last refill */
    long in_flight;       /* admitted, not yet answered */
    long next_request;    /* req_<n> counter */
    long next_generation; /* gen_<n> counter */
    long requests, executions, throttled, replays, conflicts;
    long log_dropped; /* entries beyond log_limit */
    struct ledger ledger;
    json_t *log;           /* array of request entries */
    json_t *techniques;    /* slug → what GET /techniques/{slug} answers
                              (POST /_techniques), else the default */
    volatile int stopping; /* shutdown: cut sleeps short */
    pthread_cond_t wake;   /* broadcast at shutdown */
};

/* Sets defaults and the state; port is filled in by main. */
void server_init(struct fake *f, uint64_t seed);
void server_free(struct fake *f);
/* Applies the bucket size rule (burst = max(1, rate / 10) unless set). */
void server_set_rate(struct fake *f, double rate);
/* Wakes every sleeping request thread so shutdown does not wait. */
void server_stop(struct fake *f);

/* libmicrohttpd's access handler (cls = struct fake). */
enum MHD_Result server_handle(void *cls, struct MHD_Connection *c,
                              const char *url, const char *method,
                              const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls);
/* libmicrohttpd's request-completed handler: frees the request state. */
void server_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe);

#endif
