/*
 * outputs' internals, shared by the files of daemon/outputs/ and by no one
 * else: callers see only include/sluice/outputs.h. outputs.c holds the
 * scheduler (claiming due rows, the timer, start, stop, free); fetch.c one
 * download (the GET and its redirects, Range and the sidecar, the file
 * work on the thread pool, the row's record) and the pure policy.
 */
#ifndef SLUICE_OUTPUTS_INTERNAL_H
#define SLUICE_OUTPUTS_INTERNAL_H

#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "sluice/outputs.h"
#include "sluice/store.h"


/* Backoff of a failed download: 1 s doubling to 5 min, so six fetches
 * span a few minutes, well inside the hour the shortest-lived URLs live. */
#define OUTPUTS_BACKOFF_BASE_MS 1000
#define OUTPUTS_BACKOFF_CAP_MS 300000
/* A retry sooner than this only hammers a struggling server. */
#define OUTPUTS_BACKOFF_MIN_MS 250
/* Most claims per statement (the concurrency bounds it anyway). */
#define OUTPUTS_CLAIM_MAX 64
/* A claim or a record that met a lock is tried again this often. */
#define OUTPUTS_BUSY_RETRY_MS 50
/* Redirect hops followed per fetch: CDNs use one or two. */
#define OUTPUTS_MAX_REDIRECTS 5
/* Connecting to a file server; the whole transfer has the lease (below). */
#define OUTPUTS_CONNECT_TIMEOUT_MS 10000
/* Temporary files live here, inside outputs_dir so rename stays on one
 * file system. */
#define OUTPUTS_PARTIAL ".partial"
/* A sidecar holds a URL and a validator: a few KiB at most. */
#define OUTPUTS_META_MAX 8192
#define NEVER INT64_MAX

enum dl_phase {
    DL_FETCH,  /* transfer in flight */
    DL_FILE,   /* fsync and rename on the thread pool */
    DL_RECORD, /* waiting to write the row (database locked) */
};

struct dl {
    struct outputs *o;
    struct output_claim c;
    enum dl_phase phase;
    struct http_xfer *xfer;
    char *url;                /* this hop's URL */
    int hops;                 /* redirects followed */
    char **headers;           /* owned copy, NULL-terminated, or NULL */
    char *tmp;                /* temporary file */
    int fd;                   /* open on tmp, -1 when closed */
    char *meta;               /* tmp's sidecar (URL, validator), or NULL
                                 when tmp is private to this fetch */
    int64_t offset;           /* bytes of an earlier fetch kept in tmp */
    char *if_range;           /* the validator they came under, or NULL */
    int64_t total;            /* the file's size per Content-Range, -1 */
    bool body_started;        /* this answer's first bytes came */
    bool resumed;             /* tmp starts with an earlier fetch's bytes */
    bool resumable;           /* the server can send the rest: keep tmp */
    bool discard;             /* tmp's bytes are not to be trusted */
    EVP_MD_CTX *sha;
    int64_t bytes;
    char *content_type;
    /* the file work */
    uv_work_t work;
    char hex[65];
    char *path;               /* final file */
    int work_err;             /* negative errno of the file work */
    const char *work_what;    /* which step failed */
    /* the row to write */
    struct output_result res;
    char error[320];
    struct dl *prev, *next;
};

struct outputs {
    uv_loop_t *loop;
    struct store *store;
    struct http *http;
    char *dir;
    char *partial;            /* dir/.partial */
    int concurrency;
    size_t max_size;
    int64_t lease_ms;
    char *owner;
    outputs_auth_fn auth;
    void *auth_arg;
    uv_timer_t *timer;        /* next claim or record retry; owns o */
    int64_t timer_at;         /* when it fires, NEVER if idle */
    struct dl *dls;           /* in flight, doubly linked */
    int active;
    bool started;
    bool stopping;
    void (*on_stopped)(void *);
    void *stopped_arg;
    bool freed;
};

/* outputs.c */
void outputs_pump(struct outputs *o);
void outputs_schedule(struct outputs *o, int64_t at);

/* fetch.c */
void fetch_start(struct outputs *o, struct output_claim *c);
void fetch_record(struct dl *d);

#endif
