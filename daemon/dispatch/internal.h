/*
 * dispatch's internals, shared by the files of daemon/dispatch/ and by no
 * one else: callers see only include/sluice/dispatch.h. dispatch.c holds
 * the life cycle (new, start, reload, stop, status); dlane.c a provider's
 * lane as configured; pump.c the pump; claim.c a claim's asking and its
 * answer; permits.c the permits shared with other daemons; send.c building
 * and sending a request and taking its answer; record.c what an outcome
 * decides and its update; commit.c the group commit; house.c housekeeping
 * (provider rows, resumes, cancels, reclaims, other processes' commits).
 */
#ifndef SLUICE_DISPATCH_INTERNAL_H
#define SLUICE_DISPATCH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <uv.h>

#include "sluice/config.h"
#include "sluice/dispatch.h"
#include "sluice/job.h"
#include "sluice/lane.h"
#include "sluice/xmalloc.h"

struct outcome;
struct permit_view;

/* Most jobs one claim statement takes: bounds the time a claim holds the
 * write lock and the memory of one batch. */
#define CLAIM_MAX 128
/* Claims wait for limit / 4 free slots while requests are out (see
 * pump_lane): fewer, larger claims; a quarter keeps the pipe three
 * quarters full meanwhile. Only from a limit of 64: below it a claim per
 * completion is cheap, and a provider capped at 16 should see 15 or 16 in
 * flight, not 12 to 16. */
#define CLAIM_BATCH_DIVISOR 4
#define CLAIM_BATCH_MIN_LIMIT 64
/* Group commit: flush this often while updates are buffered, or at once
 * beyond FLUSH_BATCH of them (docs/design.md §3: a few ms or a few hundred). */
#define FLUSH_DELAY_MS 5
#define FLUSH_BATCH 256
/* A commit that met a lock is retried this often; nothing is dropped. */
#define FLUSH_RETRY_MS 50
/* Any other failure (a full disk, an I/O error) will not pass in 50 ms:
 * retries back off, doubling up to this, and claims wait as long. */
#define STORE_TROUBLE_MS 2000
/* After SIGTERM, outcomes the database will not take (a full disk) are
 * given up after this much trying: their jobs stay leased and are taken
 * back, with the same keys, at the next start. */
#define STOP_FLUSH_MS 5000
/* The providers table, cancellation checks, the heartbeat and the verdict
 * on other daemons run once a second (the beat liveness.h expects). */
#define HOUSEKEEPING_MS LIVENESS_BEAT_MS
/* How often other processes' commits (enqueue, retry, cancel) are looked
 * for: PRAGMA data_version costs no I/O. */
#define VERSION_POLL_MS 200
/* Expired leases of unregistered owners are reclaimed this often. */
#define RECLAIM_MS 30000
/* The daemon's busy timeout: short, so an operator's lock delays the loop
 * by at most this much per statement; a busy flush is simply retried. */
#define BUSY_TIMEOUT_MS 100
/* STATUS= recounts unfinished jobs at most this often. */
#define STATUS_COUNT_MS 5000
#define NEVER INT64_MAX

struct dlane {
    char *name;
    char *base_url;
    const struct dialect *dialect;
    char *request_id_header; /* override or NULL */
    char **headers;          /* auth + extra headers, NULL-terminated */
    enum idem_kind idem;
    char *idem_name;
    struct job_policy policy; /* retries, polls; base_url borrowed */
    int64_t timeout_ms, connect_timeout_ms;
    size_t max_response;
    bool outputs_download;     /* outputs = download */
    char **output_pointers;    /* output_pointer values, NULL-terminated */
    char *cost_pointer;        /* where a result says its cost, or NULL */
    double token_price;        /* cost per usage.total_tokens, 0 none */
    bool budget_wait;          /* a budget cut the last claim short */
    bool gave_back;            /* jobs given back unsent (send_claimed)
                                  among the updates not yet committed */
    bool committing_gave_back; /* the same, of the commit out */
    struct lane *lane;
    int64_t next_check_ms;     /* no claimable job before this */
    int64_t recorded_due_ms;   /* earliest run_after among updates not
                                  yet committed: claimable once flushed */
    int64_t committing_due_ms; /* the same, of the commit out */
    bool claiming;             /* a claim asked of storeq, unanswered */
    int putting;               /* permit puts asked, unanswered */
    bool repump;               /* a pump passed the lane meanwhile */
    int64_t resume_seen;       /* last resume request acted on */
    bool removed;              /* gone from the config (SIGHUP) */
    int concurrency_max;       /* configured: our view of the shared cap */
    int slots_put;             /* slots our permits row says we hold; -1
                                  before the first take (permit.h) */
    bool unmet_put;            /* it says our last take fell short */
    struct dlane *next;
};

struct req {
    struct dispatch *d;
    struct dlane *dl;
    struct job *job;
    struct http_xfer *xfer;
    bool is_poll;
    bool cancel_job; /* operator cancelled: record cancelled */
    bool reserved;   /* holds its expected cost (spend.h) */
    char *owner;     /* the lease owner it was claimed under */
    char *url;
    char *body;
    char **headers; /* lane headers + per-request ones */
    int64_t started_ms;
    struct lane_ticket ticket; /* the lane's record of the send */
    struct req *prev, *next;
};

struct dispatch {
    uv_loop_t *loop;
    struct store *store; /* housekeeping, reads: on the loop */
    struct storeq *q;    /* claims and commits (storeq.h) */
    struct http *http;
    struct dlane *lanes;
    struct req *inflight;
    int ninflight;
    struct liveness *live; /* our owner token; borrowed */
    int64_t lease_ms;
    int64_t data_version;
    uv_timer_t pump_timer;
    uv_timer_t flush_timer;
    uv_timer_t house_timer;
    uv_timer_t version_timer;
    uv_timer_t grace_timer;
    int64_t pump_at; /* when pump_timer fires, NEVER if idle */
    int64_t last_reclaim;
    int64_t flush_retry_ms;   /* the next retry's delay after a failure */
    int64_t stop_flush_until; /* stopping: when to give up flushing */
    bool flush_scheduled;
    bool commit_out;  /* a storeq_commit not yet answered */
    bool flush_again; /* asked for while one was out */
    bool flush_busy_logged;
    bool started;
    bool stopping;
    void (*on_stopped)(void *);
    void *stopped_data;
    int closing;             /* handles still closing */
    struct outputs *outputs; /* downloads, NULL without outputs_dir */
    bool outputs_recorded;   /* buffered updates carry output URLs */
    bool outputs_stopped;    /* outputs_stop has called back */
    struct buf status;
    long unfinished;         /* jobs not terminal, for STATUS= */
    int64_t unfinished_at;   /* when counted, 0 never */
    struct metrics *metrics; /* counters for /metrics, or NULL */
    struct spend *spend;     /* spend caps of providers and batches */
    struct runcost *runcost; /* run costs the providers state */
};

static inline void
free_strv(char **v)
{
    if (v == NULL)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static inline size_t
strv_len(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

/* dispatch.c: once stopping, calls on_stopped when nothing is out
 * (requests, downloads, claims, puts, commits) and what is buffered is
 * committed or given up. */
void dispatch_maybe_stopped(struct dispatch *d);

/* dlane.c */
int dlane_apply(struct dlane *dl, const struct provider_config *pc);
void dlane_params(const struct provider_config *pc, int saved_limit,
                  struct lane_params *lp);
struct dlane *dlane_new(struct dispatch *d, const struct provider_config *pc);
void dlane_free(struct dlane *dl);
struct dlane *dlane_find(struct dispatch *d, const char *name);
void dlane_reconcile_waiting(struct dispatch *d);

/* pump.c */
void pump_schedule(struct dispatch *d, int64_t at);

/* claim.c */
void claim_ask(struct dispatch *d, struct dlane *dl, int n, int64_t now,
               int64_t lane_wake, bool polls);

/* permits.c */
void permits_view_of(const struct dlane *dl, struct permit_view *v);
void permits_put(struct dispatch *d, struct dlane *dl, int slots, int tokens);
void permits_sync(struct dispatch *d, struct dlane *dl, bool force);

/* send.c */
void send_job(struct dispatch *d, struct dlane *dl, struct job *j);
bool send_claimed(struct dispatch *d, struct dlane *dl, struct job *j,
                  int64_t now);

/* record.c */
void record_outcome(struct dispatch *d, struct req *r, const struct outcome *o,
                    int64_t now, const char *lane_change);
void record_event(struct dispatch *d, struct req *r,
                  const struct job_event *ev);

/* commit.c */
void commit_now(struct dispatch *d);
void commit_schedule(struct dispatch *d);
void on_storeq_commit(int rc, size_t n, double seconds, void *arg);

/* house.c */
void house_write_provider_rows(struct dispatch *d, int64_t now);
void on_uv_house(uv_timer_t *t);
void on_uv_version(uv_timer_t *t);
void on_store_wakeup(void *arg);

#endif
