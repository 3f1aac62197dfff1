/*
 * dispatch: the scheduler of sluiced, on one libuv loop.
 *
 * How a job moves: pump() asks each lane how many requests its gates admit
 * (daemon/lane/), claims that many due jobs of its provider in one statement
 * (storeq_claim), and sends each through http.c when the claim answers.
 * When a response arrives, the provider's dialect turns it into an
 * outcome; the lane learns from it (limit, pause, breaker), job_next
 * (job.c) decides where the job goes, and the update is buffered for the
 * next group commit (storeq_commit on a short timer). Claims and commits
 * answer through callbacks (storeq.h: inline on SQLite, from a database
 * thread on PostgreSQL); a lane asks one claim at a time. Nothing is
 * decided from memory alone: every state change is a row update, and a
 * job that was claimed but not recorded is reclaimed by its lease after a
 * crash.
 *
 * Pumping: a completion schedules a pump on the next loop turn, so the
 * completions of one turn share one claim. A lane whose claim came back
 * short remembers when its next job falls due (store_next_due) and is not
 * asked again before then, unless another process committed (PRAGMA
 * data_version) or this daemon scheduled a retry earlier.
 *
 * Rejected: a thread per provider (SQLite writes would contend and the
 * flow-control state would need locks), and claiming far ahead of the
 * lane's admission (claimed jobs would sit in memory under lease, invisible
 * to other daemons and lost to a crash until the lease expires).
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sluice/budget.h"
#include "sluice/clock.h"
#include "sluice/config.h"
#include "sluice/cost.h"
#include "sluice/dialect.h"
#include "sluice/dispatch.h"
#include "sluice/http.h"
#include "sluice/jobspec.h"
#include "sluice/lane.h"
#include "sluice/liveness.h"
#include "sluice/log.h"
#include "sluice/metrics.h"
#include "sluice/outputs.h"
#include "sluice/permit.h"
#include "sluice/runcost.h"
#include "sluice/spend.h"
#include "sluice/store.h"
#include "sluice/storeq.h"
#include "sluice/url.h"
#include "sluice/xmalloc.h"

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
    char *request_id_header;     /* override or NULL */
    char **headers;              /* auth + extra headers, NULL-terminated */
    enum idem_kind idem;
    char *idem_name;
    struct job_policy policy;    /* retries, polls; base_url borrowed */
    int64_t timeout_ms, connect_timeout_ms;
    size_t max_response;
    bool outputs_download;       /* outputs = download */
    char **output_pointers;      /* output_pointer values, NULL-terminated */
    char *cost_pointer;          /* where a result says its cost, or NULL */
    double token_price;          /* cost per usage.total_tokens, 0 none */
    bool budget_wait;            /* a budget cut the last claim short */
    bool gave_back;              /* jobs given back unsent (send_claimed)
                                    among the updates not yet committed */
    bool committing_gave_back;   /* the same, of the commit out */
    struct lane *lane;
    int64_t next_check_ms;       /* no claimable job before this */
    int64_t recorded_due_ms;     /* earliest run_after among updates not
                                    yet committed: claimable once flushed */
    int64_t committing_due_ms;   /* the same, of the commit out */
    bool claiming;               /* a claim asked of storeq, unanswered */
    int putting;                 /* permit puts asked, unanswered */
    bool repump;                 /* a pump passed the lane meanwhile */
    int64_t resume_seen;         /* last resume request acted on */
    bool removed;                /* gone from the config (SIGHUP) */
    int concurrency_max;         /* configured: our view of the shared cap */
    int slots_put;               /* slots our permits row says we hold; -1
                                    before the first take (permit.h) */
    bool unmet_put;              /* it says our last take fell short */
    struct dlane *next;
};

struct req {
    struct dispatch *d;
    struct dlane *dl;
    struct job *job;
    struct http_xfer *xfer;
    bool is_poll;
    bool cancel_job;             /* operator cancelled: record cancelled */
    bool reserved;               /* holds its expected cost (spend.h) */
    char *owner;                 /* the lease owner it was claimed under */
    char *url;
    char *body;
    char **headers;              /* lane headers + per-request ones */
    int64_t started_ms;
    struct lane_ticket ticket;   /* the lane's record of the send */
    struct req *prev, *next;
};

struct dispatch {
    uv_loop_t *loop;
    struct store *store;         /* housekeeping, reads: on the loop */
    struct storeq *q;            /* claims and commits (storeq.h) */
    struct http *http;
    struct dlane *lanes;
    struct req *inflight;
    int ninflight;
    struct liveness *live;       /* our owner token; borrowed */
    int64_t lease_ms;
    int64_t data_version;
    uv_timer_t pump_timer;
    uv_timer_t flush_timer;
    uv_timer_t house_timer;
    uv_timer_t version_timer;
    uv_timer_t grace_timer;
    int64_t pump_at;             /* when pump_timer fires, NEVER if idle */
    int64_t last_reclaim;
    int64_t flush_retry_ms;      /* the next retry's delay after a failure */
    int64_t stop_flush_until;    /* stopping: when to give up flushing */
    bool flush_scheduled;
    bool commit_out;             /* a storeq_commit not yet answered */
    bool flush_again;            /* asked for while one was out */
    bool flush_busy_logged;
    bool started;
    bool stopping;
    void (*on_stopped)(void *);
    void *stopped_data;
    int closing;                 /* handles still closing */
    struct outputs *outputs;     /* downloads, NULL without outputs_dir */
    bool outputs_recorded;       /* buffered updates carry output URLs */
    bool outputs_stopped;        /* outputs_stop has called back */
    struct buf status;
    long unfinished;             /* jobs not terminal, for STATUS= */
    int64_t unfinished_at;       /* when counted, 0 never */
    struct metrics *metrics;     /* counters for /metrics, or NULL */
    struct spend *spend;         /* spend caps of providers and batches */
    struct runcost *runcost;     /* run costs the providers state */
};

static void pump(struct dispatch *d);
static void schedule_pump(struct dispatch *d, int64_t at);
static void schedule_flush(struct dispatch *d);
static void maybe_stopped(struct dispatch *d);

/* --- lanes ---------------------------------------------------------------- */

static void
free_strv(char **v)
{
    if (v == NULL)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static size_t
strv_len(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

/* Copies everything the lane needs out of the config, so the config may be
 * freed after a reload while requests are still in flight. */
static int
dlane_apply(struct dlane *dl, const struct provider_config *pc)
{
    char err[256];
    char *key = config_api_key(pc, err, sizeof(err));
    if (key == NULL) {
        log_error("provider %s: %s", pc->name, err);
        return -EINVAL;
    }
    const struct dialect *dia = dialect_find(pc->dialect);
    if (dia == NULL) {
        free(key);
        log_error("provider %s: unknown dialect %s", pc->name, pc->dialect);
        return -EINVAL;
    }

    char **h = xcalloc(pc->nheaders + 2, sizeof(char *));
    size_t n = 0;
    if (pc->auth == AUTH_BEARER)
        h[n++] = xasprintf("Authorization: Bearer %s", key);
    else if (pc->auth == AUTH_HEADER)
        h[n++] = xasprintf("%s: %s", pc->auth_header, key);
    for (size_t i = 0; i < pc->nheaders; i++)
        h[n++] = xstrdup(pc->headers[i]);
    h[n] = NULL;
    /* The key lives only in the header lines from here on. */
    explicit_bzero(key, strlen(key));
    free(key);

    free(dl->base_url);
    free(dl->request_id_header);
    free(dl->idem_name);
    free_strv(dl->headers);
    dl->base_url = xstrdup(pc->base_url);
    dl->dialect = dia;
    dl->request_id_header = xstrdup(pc->request_id_header);
    dl->headers = h;
    dl->idem = pc->idem;
    dl->idem_name = xstrdup(pc->idem_name);
    dl->policy.retry.max_attempts = pc->max_attempts;
    dl->policy.retry.max_deferrals = pc->max_deferrals;
    dl->policy.retry.base_ms = pc->backoff_base_ms;
    dl->policy.retry.cap_ms = pc->backoff_cap_ms;
    dl->policy.poll_interval_ms = pc->poll_interval_ms;
    dl->policy.poll_interval_max_ms = pc->poll_interval_max_ms;
    dl->policy.base_url = dl->base_url;
    dl->policy.idem_none = pc->idem == IDEM_NONE;
    dl->timeout_ms = pc->timeout_ms;
    dl->connect_timeout_ms = pc->connect_timeout_ms;
    dl->max_response = pc->max_response;
    dl->concurrency_max = pc->concurrency_max;
    dl->outputs_download = pc->outputs_download;
    free_strv(dl->output_pointers);
    dl->output_pointers = xcalloc(pc->noutput_pointers + 1, sizeof(char *));
    for (size_t i = 0; i < pc->noutput_pointers; i++)
        dl->output_pointers[i] = xstrdup(pc->output_pointers[i]);
    free(dl->cost_pointer);
    dl->cost_pointer = xstrdup(pc->cost_pointer);
    dl->token_price = pc->token_price;
    return 0;
}

static void
dlane_params(const struct provider_config *pc, int saved_limit,
               struct lane_params *lp)
{
    memset(lp, 0, sizeof(*lp));
    lp->concurrency_start =
        saved_limit > 0 && pc->adaptive ? saved_limit : pc->concurrency_start;
    lp->concurrency_max = pc->concurrency_max;
    lp->adaptive = pc->adaptive;
    lp->rate_per_s = pc->rate_per_s;
    lp->tokens_per_min = pc->tokens_per_s * 60.0;
    lp->probe_interval_ms = pc->probe_interval_ms;
}

static struct dlane *
dlane_new(struct dispatch *d, const struct provider_config *pc)
{
    struct dlane *dl = xcalloc(1, sizeof(*dl));
    struct lane_params lp;
    int saved = 0;
    int64_t resume = 0;

    if (dlane_apply(dl, pc) < 0) {
        free(dl);
        return NULL;
    }
    dl->name = xstrdup(pc->name);
    store_provider_get(d->store, pc->name, &saved, &resume);
    dlane_params(pc, saved, &lp);
    dl->lane = lane_new(pc->name, &lp, clock_now_ms());
    /* Runs of the last life occupy the provider from the start. */
    long waiting = 0;
    if (dl->dialect->async &&
        store_count_waiting(d->store, pc->name, &waiting) == 0 && waiting > 0)
        lane_on_waiting(dl->lane, (int)waiting);
    dl->resume_seen = resume;
    dl->next_check_ms = 0;
    dl->recorded_due_ms = NEVER;
    dl->committing_due_ms = NEVER;
    dl->slots_put = -1;
    return dl;
}

static void
dlane_free(struct dlane *dl)
{
    if (dl == NULL)
        return;
    free(dl->name);
    free(dl->base_url);
    free(dl->request_id_header);
    free(dl->idem_name);
    free_strv(dl->headers);
    free_strv(dl->output_pointers);
    free(dl->cost_pointer);
    lane_free(dl->lane);
    free(dl);
}

static struct dlane *
find_lane(struct dispatch *d, const char *name)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        if (strcmp(dl->name, name) == 0)
            return dl;
    return NULL;
}

/* The database is the truth about waiting runs: after a restart (runs of
 * the last life), or an operator's cancel of a run between polls, the
 * lane's count follows it. */
static void
reconcile_waiting(struct dispatch *d)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        long n = 0;
        if (dl->removed || !dl->dialect->async ||
            store_count_waiting(d->store, dl->name, &n) < 0)
            continue;
        if (n != lane_waiting(dl->lane))
            lane_on_waiting(dl->lane, (int)n - lane_waiting(dl->lane));
    }
}

/* --- building a request ------------------------------------------------- */

/* The body to send: the job's body, with the idempotency key as a
 * top-level field when the provider wants it there. */
static char *
request_body(const struct dlane *dl, const struct job *j)
{
    if (dl->idem != IDEM_BODY)
        return j->body ? xstrdup(j->body) : NULL;
    json_error_t jerr;
    json_t *root = j->body ? json_loads(j->body, 0, &jerr) : json_object();
    if (root == NULL || !json_is_object(root)) {
        /* enqueue stores objects only; anything else goes as it is */
        json_decref(root);
        return j->body ? xstrdup(j->body) : NULL;
    }
    json_object_set_new(root, dl->idem_name, json_string(j->idempotency_key));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (s == NULL)
        fatalx("json_dumps: out of memory");
    char *out = xstrdup(s);
    free(s);
    return out;
}

static char **
request_headers(const struct dlane *dl, const struct job *j, bool poll)
{
    size_t n = strv_len(dl->headers);
    char **h = xcalloc(n + 2, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        h[i] = xstrdup(dl->headers[i]);
    if (!poll && dl->idem == IDEM_HEADER)
        h[n++] = xasprintf("%s: %s", dl->idem_name ? dl->idem_name
                                                   : "Idempotency-Key",
                           j->idempotency_key);
    h[n] = NULL;
    return h;
}

/* --- in flight ------------------------------------------------------------ */

static void
req_link(struct dispatch *d, struct req *r)
{
    r->next = d->inflight;
    if (d->inflight)
        d->inflight->prev = r;
    d->inflight = r;
    d->ninflight++;
}

static void
req_unlink(struct dispatch *d, struct req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        d->inflight = r->next;
    if (r->next)
        r->next->prev = r->prev;
    d->ninflight--;
}

static void
req_free(struct req *r)
{
    job_free(r->job);
    free(r->owner);
    free(r->url);
    free(r->body);
    free_strv(r->headers);
    free(r);
}

static void on_http_done(const struct http_response *resp, void *data);
static void record_event(struct dispatch *d, struct req *r,
                         const struct job_event *ev);

/* A job that cannot be sent as it is stored fails at once, without a request
 * and before the lane counts one: a URL off the lane's current origin (the
 * credentials would go along), or a key that would not stay inside its header
 * (docs/design.md §4, §11). Nothing about it changes by waiting, so it is not
 * retried. Frees r. */
static void
refuse_req(struct dispatch *d, struct req *r, enum err_class cls,
           const char *code, const char *message)
{
    struct job_event ev = {
        .kind = JOB_EVENT_REFUSED,
        .now_ms = clock_now_ms(),
        .cls = cls,
        .code = code,
        .message = message,
    };
    log_warnx("job %" PRId64 ": %s %s, failed without a request: %s",
              r->job->id, r->dl->name, code, message);
    record_event(d, r, &ev);
    schedule_flush(d);
    req_free(r);
}

/* Whether every header of r is one http_submit sends as it is. */
static bool
req_headers_ok(const struct req *r)
{
    for (char **h = r->headers; *h; h++) {
        if (!http_header_ok(*h))
            return false;
    }
    return true;
}

static void
send_job(struct dispatch *d, struct dlane *dl, struct job *j)
{
    struct req *r = xcalloc(1, sizeof(*r));
    r->d = d;
    r->dl = dl;
    r->job = j;
    r->owner = xstrdup(liveness_owner(d->live));
    r->is_poll = j->state == JOB_WAITING;
    /* a submission went through spend_reserve (send_claimed): it holds
     * its expected cost until apply_decision */
    r->reserved = !r->is_poll;
    int urc = url_resolve(dl->base_url,
                          r->is_poll ? (j->poll_url ? j->poll_url : "")
                                     : j->path,
                          &r->url);
    if (urc == -EXDEV) {
        refuse_req(d, r, ERR_PROTOCOL, "foreign_url",
                   "url is not on the provider's current origin: "
                   "credentials are not sent there");
        return;
    }
    if (urc < 0) {
        refuse_req(d, r, ERR_PROTOCOL, "bad_url",
                   "url holds a byte outside visible ASCII");
        return;
    }
    r->body = r->is_poll ? NULL : request_body(dl, j);
    r->headers = request_headers(dl, j, r->is_poll);
    if (!req_headers_ok(r)) {
        refuse_req(d, r, ERR_INVALID_REQUEST, "bad_header",
                   "idempotency key holds a byte outside visible ASCII");
        return;
    }
    r->started_ms = clock_now_ms();

    struct http_request hr = {
        .method = r->is_poll ? "GET" : j->method,
        .url = r->url,
        .headers = (const char *const *)r->headers,
        .body = r->body,
        .body_len = r->body ? strlen(r->body) : 0,
        .timeout_ms = dl->timeout_ms,
        .connect_timeout_ms = dl->connect_timeout_ms,
        .max_response = dl->max_response,
    };
    lane_on_send(dl->lane, r->started_ms,
                 lane_token_limit(dl->lane) > 0 && !r->is_poll
                     ? jobspec_token_estimate(r->body)
                     : 0,
                 &r->ticket);
    req_link(d, r);
    int rc = http_submit(d->http, &hr, on_http_done, r, &r->xfer);
    if (rc < 0) {
        /* Could not even start: give the job back untouched. */
        log_warnx("job %" PRId64 ": %s: cannot start request: %s", j->id,
                  dl->name, strerror(-rc));
        req_unlink(d, r);
        lane_on_abort(dl->lane, &r->ticket);
        struct job_event ev = {.kind = JOB_EVENT_UNSENT,
                               .now_ms = r->started_ms};
        record_event(d, r, &ev);
        schedule_flush(d);
        req_free(r);
        return;
    }
    log_debug("job %" PRId64 ": %s %s %s (attempt %d)", j->id, dl->name,
              hr.method, r->is_poll ? "poll" : "submit", j->attempts);
}

/* --- outcomes -------------------------------------------------------------- */

/* One line per handled failure, in CONTRIBUTING.md's shape:
 * "job 42: flora 429 rate_limit_exceeded req_ab12, deferred in 2100 ms
 * (limit 24→16)". Terminal failures are warnings and carry the message. */
static void
log_outcome(const struct req *r, const struct outcome *o, const char *what,
            int64_t delay, const char *lane_change)
{
    char head[320], when[48] = "";
    snprintf(head, sizeof(head), "job %" PRId64 ": %s %d %s %s%s%s",
             r->job->id, r->dl->name, o->http_status,
             err_class_name(o->cls), o->code[0] ? o->code : "-",
             o->request_id[0] ? " " : "", o->request_id);
    if (delay >= 0)
        snprintf(when, sizeof(when), " in %" PRId64 " ms", delay);
    if (strcmp(what, "failed") == 0)
        log_warnx("%s, failed: %s%s%s", head, o->message,
                  lane_change ? " " : "", lane_change ? lane_change : "");
    else
        log_info("%s, %s%s%s%s", head, what, when, lane_change ? " " : "",
                 lane_change ? lane_change : "");
}

/* The job's cost (docs/design.md §13): the dialect's (FLORA's
 * charged_cost), else from the result by the provider's cost_pointer or
 * token_price. */
static bool
job_cost(const struct dlane *dl, const struct outcome *o, double *cost)
{
    if (o->kind != OUTCOME_SUCCESS)
        return false;
    if (o->has_cost) {
        *cost = o->cost;
        return true;
    }
    return cost_from_result(o->result, dl->cost_pointer, dl->token_price,
                            cost);
}

/* Hands job_next's decision to the lane (its count of waiting runs) and
 * to the store (buffered for the next group commit). o is the answer, or
 * NULL when there was none. */
static void
apply_decision(struct dispatch *d, struct req *r, const struct outcome *o,
               const struct job_decision *dec, int64_t now)
{
    struct job *j = r->job;
    struct job_update u = {
        .job_id = j->id,
        .owner = r->owner,
        .state = dec->state,
        .run_after = dec->run_after,
        .deferrals = dec->deferrals,
        .uncharge = dec->uncharge,
        .has_attempt = dec->has_attempt,
        .is_poll = r->is_poll,
        .cls = dec->cls,
        .code = dec->code,
        .message = dec->message,
        .remote_id = dec->remote_id,
        .poll_url = dec->poll_url,
    };
    char *new_key = dec->derive_key ? job_derived_key(j) : NULL;
    char **urls = NULL;

    u.new_key = new_key;
    if (o != NULL) {
        u.started_at = r->started_ms;
        u.finished_at = now;
        u.http_status = o->http_status;
        u.request_id = o->request_id[0] ? o->request_id : NULL;
        u.retry_after_ms = o->hints.retry_at_ms > now
                               ? o->hints.retry_at_ms - now : 0;
        u.attempt = j->attempts;
        u.key_sent = r->is_poll ? NULL : j->idempotency_key;
        if (o->kind != OUTCOME_ACCEPTED)
            u.result = o->result; /* a success's body, or partial data */
        if (o->kind == OUTCOME_FAILURE)
            u.fields = o->fields;
        if (dec->state == JOB_SUCCEEDED && r->dl->outputs_download &&
            d->outputs != NULL) {
            u.noutput_urls = dialect_output_urls(
                r->dl->dialect, o->result, r->dl->output_pointers,
                strv_len(r->dl->output_pointers), &urls);
            u.output_urls = (const char *const *)urls;
            if (u.noutput_urls > 0)
                d->outputs_recorded = true;
        }
        u.has_cost = job_cost(r->dl, o, &u.cost);
        if (u.has_cost)
            metrics_count_cost(d->metrics, r->dl->name, u.cost);
    }
    if (dec->state != JOB_WAITING && (r->reserved || r->is_poll)) {
        /* the job no longer waits for its cost: its reservation ends (a
         * job given back unsent held none) */
        spend_on_end(d->spend, j, u.has_cost, u.cost);
        if (r->dl->budget_wait) {
            r->dl->budget_wait = false;
            r->dl->next_check_ms = 0;
        }
    }
    if (dec->waiting != 0)
        lane_on_waiting(r->dl->lane, dec->waiting);
    /* The job becomes claimable only once this update is committed; the
     * commit hands the time on to next_check_ms (see on_commit). */
    if (!job_state_terminal(u.state) && u.run_after < r->dl->recorded_due_ms)
        r->dl->recorded_due_ms = u.run_after;
    storeq_record(d->q, &u);
    free(new_key);
    free_strv(urls);
}

/* An answer: job_next decides, the log says what it decided. */
static void
record_outcome(struct dispatch *d, struct req *r, const struct outcome *o,
               int64_t now, const char *lane_change)
{
    struct job_event ev = {
        .kind = JOB_EVENT_ANSWER,
        .outcome = o,
        .lane_paused = lane_state(r->dl->lane) == LANE_PAUSED,
        .now_ms = now,
        .u = clock_random(),
    };
    struct job_decision dec = job_next(r->job, &ev, &r->dl->policy);
    int64_t id = r->job->id;

    if (dec.verb != NULL)
        log_outcome(r, o, dec.verb,
                    dec.state == JOB_RETRYING || dec.state == JOB_WAITING
                        ? dec.run_after - now : -1,
                    lane_change);
    else if (dec.state == JOB_SUCCEEDED)
        log_debug("job %" PRId64 ": %s succeeded", id, r->dl->name);
    else if (dec.state == JOB_WAITING && !r->is_poll)
        log_debug("job %" PRId64 ": %s run %s accepted", id, r->dl->name,
                  dec.remote_id ? dec.remote_id : "?");
    apply_decision(d, r, o, &dec, now);
}

/* No answer that counts: the request was refused or could not start, the
 * daemon is shutting down, or an operator cancelled the job. */
static void
record_event(struct dispatch *d, struct req *r, const struct job_event *ev)
{
    struct job_decision dec = job_next(r->job, ev, &r->dl->policy);

    if (ev->kind == JOB_EVENT_CANCEL)
        log_info("job %" PRId64 ": %s cancelled in flight", r->job->id,
                 r->dl->name);
    else if (dec.cls == ERR_UNKNOWN_OUTCOME)
        log_warnx("job %" PRId64 ": %s request cut short by the stop, and "
                  "the provider takes no idempotency key: failed as "
                  "unknown_outcome, not sent again",
                  r->job->id, r->dl->name);
    apply_decision(d, r, NULL, &dec, ev->now_ms);
}

static void
on_http_done(const struct http_response *resp, void *data)
{
    struct req *r = data;
    struct dispatch *d = r->d;
    int64_t now = clock_now_ms();

    req_unlink(d, r);
    if (resp->cancelled) {
        lane_on_abort(r->dl->lane, &r->ticket);
        struct job_event ev = {
            .kind = r->cancel_job ? JOB_EVENT_CANCEL : JOB_EVENT_RELEASE,
            .now_ms = now,
            .sent = resp->request_bytes > 0,
        };
        record_event(d, r, &ev);
    } else {
        struct outcome o;
        outcome_init(&o);
        dialect_classify(r->dl->dialect, resp, r->is_poll, now,
                         r->dl->request_id_header, &o);
        metrics_count_request(d->metrics, r->dl->name, o.cls);
        if (o.hints.asked_ms > 0)
            log_warnx("job %" PRId64 ": %s asked to wait %" PRId64
                      " s, capped at %lld s",
                      r->job->id, r->dl->name, (o.hints.asked_ms - now) / 1000,
                      HINT_CAP_MS / 1000);
        int before = lane_limit(r->dl->lane);
        enum lane_state sbefore = lane_state(r->dl->lane);
        /* A poll that reports the run failed was itself answered well:
         * the run's failure (model_timeout, safety_blocked) says nothing
         * about the API's capacity, so the lane sees a success. */
        struct outcome lane_view = o;
        if (r->is_poll && o.kind == OUTCOME_FAILURE &&
            o.http_status >= 200 && o.http_status < 300 &&
            o.cls != ERR_PROTOCOL) {
            lane_view.kind = OUTCOME_SUCCESS;
            lane_view.cls = ERR_NONE;
        }
        bool changed = lane_on_done(r->dl->lane, &r->ticket, &lane_view,
                                    now, clock_random());
        char change[160];
        const char *lane_change = NULL;
        if (changed) {
            int after = lane_limit(r->dl->lane);
            /* A limit change goes on the job's line; a state change or a
             * pause gets a line of its own. */
            if (lane_state(r->dl->lane) != sbefore || after == before) {
                log_info("%s %s: %s", r->dl->name,
                         lane_last_change(r->dl->lane),
                         lane_describe(r->dl->lane));
            } else {
                snprintf(change, sizeof(change), "(limit %d→%d)", before,
                         after);
                lane_change = change;
                if (o.kind != OUTCOME_FAILURE)
                    log_debug("%s limit %d→%d", r->dl->name, before, after);
            }
        }
        record_outcome(d, r, &o, now, lane_change);
        outcome_clear(&o);
    }
    req_free(r);
    schedule_flush(d);
    if (d->stopping)
        maybe_stopped(d);
    else
        schedule_pump(d, 0);
}

/* --- the pump ------------------------------------------------------------- */

/* What a claim's answer needs of its asking. */
struct claim_ctx {
    struct dispatch *d;
    struct dlane *dl;
    int want, in_flight;
    int64_t now, lane_wake;
};

/* Jobs claimed after the stop began (a claim answered late) go back
 * unsent, as at shutdown. */
static void
release_claimed(struct dispatch *d, struct dlane *dl,
                struct storeq_answer *a, int64_t now)
{
    for (int i = 0; i < a->got; i++) {
        struct job *j = a->jobs[i];
        struct job_event ev = {.kind = JOB_EVENT_RELEASE, .now_ms = now};
        struct job_decision dec = job_next(j, &ev, &dl->policy);
        struct job_update u = {
            .job_id = j->id,
            .owner = liveness_owner(d->live),
            .state = dec.state,
            .run_after = dec.run_after,
            .deferrals = dec.deferrals,
            .uncharge = dec.uncharge,
            .is_poll = j->state == JOB_WAITING,
        };
        storeq_record(d->q, &u);
        job_free(j);
    }
    a->got = 0;
}

/* The end of every claim's answer: a pump that passed the lane while
 * the claim was out looks again. */
static void
claim_done(struct claim_ctx *x)
{
    struct dispatch *d = x->d;
    struct dlane *dl = x->dl;

    dl->claiming = false;
    free(x);
    if (d->stopping) {
        maybe_stopped(d);
    } else if (dl->repump) {
        dl->repump = false;
        schedule_pump(d, 0);
    }
}

static void
on_polls_claimed(struct storeq_answer *a, void *arg)
{
    struct claim_ctx *x = arg;
    struct dispatch *d = x->d;

    if (d->stopping)
        release_claimed(d, x->dl, a, clock_now_ms());
    else if (a->rc < 0)
        schedule_pump(d, x->now + (a->rc == -EBUSY ? FLUSH_RETRY_MS
                                                   : STORE_TROUBLE_MS));
    for (int i = 0; i < a->got; i++)
        send_job(d, x->dl, a->jobs[i]);
    claim_done(x);
}

/* Waiting runs hold concurrency slots (they occupy the provider), so a
 * lane full of them admits nothing; yet only a poll can end a run. Polls
 * due then go out past the concurrency gate: a GET of a run's status costs
 * the provider little, and the pacer's gate still applies before this. */
static void claim_ask(struct dispatch *d, struct dlane *dl, int n,
                      int64_t now, int64_t lane_wake, bool polls);
static bool send_claimed(struct dispatch *d, struct dlane *dl, struct job *j,
                         int64_t now);

static void
pump_polls(struct dispatch *d, struct dlane *dl, int64_t now)
{
    claim_ask(d, dl, CLAIM_MAX, now, 0, true);
}

/* --- permits shared with other daemons on the database (permit.h) ------ */

/* What this daemon publishes about the provider: its configured cap and
 * the rate its lane paces at when that rate is the provider's (configured
 * or advertised). A learned rate is not shared: it is what this daemon's
 * own share delivered, a fraction of the provider's. */
static void
permit_view_of(const struct dlane *dl, struct permit_view *v)
{
    const char *src = lane_rate_source(dl->lane);
    v->cap = dl->concurrency_max;
    v->rate = strcmp(src, "configured") == 0 || strcmp(src, "advertised") == 0
                  ? lane_rate(dl->lane)
                  : 0;
}

/* Gives back the slots of requests that finished since the last take, so
 * other daemons may use them (a loop turn after the answer). Alone on the
 * database, only the housekeeping tick does (force): a stale count is
 * only ever too high, which costs a daemon that joins a second at most. */
struct put_ctx {
    struct dispatch *d;
    struct dlane *dl;
    int slots;
};

static void
on_put(int rc, void *arg)
{
    struct put_ctx *x = arg;

    x->dl->putting--;
    if (rc == 0) {
        x->dl->slots_put = x->slots;
        x->dl->unmet_put = false;
    }
    if (x->d->stopping)
        maybe_stopped(x->d);
    free(x);
}

/* Sets our slots of dl's provider to slots and gives tokens granted but
 * not used back to its bucket (store_permit_put, on storeq). */
static void
permits_put(struct dispatch *d, struct dlane *dl, int slots, int tokens)
{
    struct put_ctx *x = xcalloc(1, sizeof(*x));
    x->d = d;
    x->dl = dl;
    x->slots = slots;
    dl->putting++;
    storeq_put(d->q, dl->name, liveness_owner(d->live), slots, tokens,
               on_put, x);
}

static void
permits_sync(struct dispatch *d, struct dlane *dl, bool force)
{
    int in_flight = lane_in_flight(dl->lane);
    if (dl->slots_put < 0 ||
        (dl->slots_put == in_flight && !dl->unmet_put) ||
        (!force && liveness_peers(d->live) == 0) || dl->claiming ||
        dl->putting > 0)
        return;
    permits_put(d, dl, in_flight, 0);
}

/* A claim's answer: the permits the pool granted (store_permit_take),
 * the jobs within them and the spend caps (spend.c), what went back. */
static void
on_claimed(struct storeq_answer *a, void *arg)
{
    struct claim_ctx *x = arg;
    struct dispatch *d = x->d;
    struct dlane *dl = x->dl;
    int n = x->want;

    if (d->stopping) {
        release_claimed(d, dl, a, clock_now_ms());
        claim_done(x);
        return;
    }
    if (!a->took) {
        schedule_pump(d, x->now + FLUSH_RETRY_MS); /* locked: look again */
        claim_done(x);
        return;
    }
    dl->slots_put = x->in_flight + a->granted;
    dl->unmet_put = a->granted < n;
    if (a->granted < n && a->wake_ms > 0)
        schedule_pump(d, a->wake_ms);
    if (a->granted == 0) {
        claim_done(x);
        return;
    }
    n = a->granted;
    if (a->rc == 0)
        metrics_observe_claim(d->metrics, a->claim_s);
    else /* locked: shortly; a full disk or an I/O error: not before it
          * may have passed */
        schedule_pump(d, x->now + (a->rc == -EBUSY ? FLUSH_RETRY_MS
                                                   : STORE_TROUBLE_MS));
    int sent = 0;
    bool capped = a->capped;
    for (int i = 0; i < a->got; i++) {
        if (send_claimed(d, dl, a->jobs[i], x->now))
            sent++;
        else
            capped = true;
    }
    if (a->put) {
        dl->slots_put = lane_in_flight(dl->lane); /* the rest went back */
        dl->unmet_put = false;
    }
    /* jobs given back unsent (send_claimed) hold neither a slot nor the
     * tokens granted for them */
    if (sent < a->got)
        permits_put(d, dl, lane_in_flight(dl->lane), a->got - sent);
    if (runcost_pending(d->runcost, dl->name)) {
        claim_done(x); /* the stated cost's answer looks again */
        return;
    }
    if (a->rc == 0 && capped) {
        /* held at a budget: a job that ends (a cost known), a resume, a
         * reload or another process's commit looks again; runs waiting
         * still need their polls (only a poll ends them), so while there
         * are some, it looks again a poll interval on */
        dl->next_check_ms = lane_waiting(dl->lane) > 0
                                ? x->now + dl->policy.poll_interval_ms
                                : NEVER;
        if (dl->next_check_ms != NEVER)
            schedule_pump(d, dl->next_check_ms);
        dl->budget_wait = true;
    } else if (a->rc == 0 && a->got < n) {
        int64_t due = a->due_ms < 0 ? x->now + FLUSH_RETRY_MS : a->due_ms;
        dl->next_check_ms = due > 0 ? due : NEVER;
        if (dl->next_check_ms != NEVER)
            schedule_pump(d, dl->next_check_ms);
    } else if (a->rc == 0 && x->lane_wake > 0) {
        schedule_pump(d, x->lane_wake);
    }
    claim_done(x);
}

/* Asks for n jobs of dl (the answer sends them): with polls, waiting
 * runs due for a poll only; else permits first (taken alone on the
 * database too: a daemon that starts beside this one must find what this
 * one holds, from its first claim on), then polls of runs already sent
 * and new jobs as far as the provider's and its batches' budgets allow. */
static void
claim_ask(struct dispatch *d, struct dlane *dl, int n, int64_t now,
          int64_t lane_wake, bool polls)
{
    struct claim_ctx *x = xcalloc(1, sizeof(*x));
    struct storeq_claim c = {
        .provider = dl->name,
        .owner = liveness_owner(d->live),
        .now_ms = now,
        .lease_ms = d->lease_ms,
        .want = n,
        .polls_only = polls,
        .with_polls = dl->dialect->async,
        .in_flight = lane_in_flight(dl->lane),
    };

    if (!polls) {
        permit_view_of(dl, &c.view);
        c.allowed = spend_admit(d->spend, dl->name, n,
                                runcost_least(d->runcost, dl->name), &c.held,
                                &c.nheld);
    }
    x->d = d;
    x->dl = dl;
    x->want = n;
    x->in_flight = c.in_flight;
    x->now = now;
    x->lane_wake = lane_wake;
    dl->claiming = true;
    storeq_claim(d->q, &c, polls ? on_polls_claimed : on_claimed, x);
}

/* A claimed job goes back to the queue untouched (its attempt refunded),
 * unsent: it must wait for a stated cost or for room under a cap. */
static void
give_back(struct dispatch *d, struct dlane *dl, struct job *j, int64_t now)
{
    struct req *r = xcalloc(1, sizeof(*r));
    struct job_event ev = {.kind = JOB_EVENT_RELEASE, .now_ms = now};
    int64_t due = dl->recorded_due_ms;

    r->d = d;
    r->dl = dl;
    r->job = j;
    r->owner = xstrdup(liveness_owner(d->live));
    log_debug("job %" PRId64 ": %s held back by its budget", j->id,
              dl->name);
    record_event(d, r, &ev);
    /* due again at once, yet not a wake-up like a retry's: once it is
     * committed, the lane looks again unless it waits at a budget (then
     * an end does) */
    dl->recorded_due_ms = due;
    dl->gave_back = true;
    schedule_flush(d);
    req_free(r);
}

/* Sends a claimed job within the spend caps (docs/design.md §13): a
 * submission under a cap is expected to cost what its provider states
 * for it (runcost.h; the first job of a technique waits for the answer),
 * else the running mean, and goes only when that fits (spend_reserve);
 * otherwise it is given back. Polls always go. Returns whether it went. */
static bool
send_claimed(struct dispatch *d, struct dlane *dl, struct job *j, int64_t now)
{
    double stated = BUDGET_UNKNOWN, c;

    if (j->state != JOB_WAITING && spend_capped(d->spend, j)) {
        struct runcost_source src = {
            .provider = dl->name,
            .dialect = dl->dialect,
            .base_url = dl->base_url,
            .headers = (const char *const *)dl->headers,
            .timeout_ms = dl->timeout_ms,
            .connect_timeout_ms = dl->connect_timeout_ms,
        };
        enum runcost_state st = runcost_lookup(d->runcost, &src, j->path, &c);
        if (st == RUNCOST_PENDING) {
            give_back(d, dl, j, now);
            return false;
        }
        if (st == RUNCOST_KNOWN)
            stated = c;
    }
    if (j->state != JOB_WAITING && !spend_reserve(d->spend, j, stated)) {
        give_back(d, dl, j, now);
        return false;
    }
    send_job(d, dl, j);
    return true;
}

static void
pump_lane(struct dispatch *d, struct dlane *dl, int64_t now, int64_t *wake)
{
    int64_t lane_wake = 0;
    if (dl->claiming) {
        dl->repump = true; /* its answer pumps again */
        return;
    }
    if (dl->removed || now < dl->next_check_ms) {
        if (!dl->removed && dl->next_check_ms < *wake)
            *wake = dl->next_check_ms;
        return;
    }
    /* a stated run cost is being asked for: its answer looks again */
    if (runcost_pending(d->runcost, dl->name))
        return;
    enum lane_state before = lane_state(dl->lane);
    int n = lane_admit(dl->lane, now, &lane_wake);
    if (lane_state(dl->lane) != before)
        log_info("%s %s", dl->name, lane_last_change(dl->lane));
    if (n <= 0) {
        permits_sync(d, dl, false);
        if (lane_wake > 0 && lane_wake < *wake)
            *wake = lane_wake;
        if (lane_state(dl->lane) == LANE_ACTIVE && lane_wake == 0)
            pump_polls(d, dl, now);
        return;
    }
    /* When only the concurrency gate limits (no time gate pending) and
     * requests are out, wait until a quarter of the limit is free: one
     * claim statement then serves many completions instead of one each. */
    int batch = lane_limit(dl->lane) >= CLAIM_BATCH_MIN_LIMIT
                    ? lane_limit(dl->lane) / CLAIM_BATCH_DIVISOR
                    : 0;
    if (n < batch && lane_wake == 0 && lane_requests(dl->lane) > 0) {
        permits_sync(d, dl, false);
        return;
    }
    if (n > CLAIM_MAX)
        n = CLAIM_MAX;
    claim_ask(d, dl, n, now, lane_wake, false);
}

static void
pump(struct dispatch *d)
{
    if (d->stopping || !d->started)
        return;
    int64_t now = clock_now_ms();
    int64_t wake = NEVER;
    spend_sync(d->spend, false); /* batch caps enqueued meanwhile */
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        pump_lane(d, dl, now, &wake);
    if (wake != NEVER)
        schedule_pump(d, wake);
}

static void
on_uv_pump(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    d->pump_at = NEVER;
    pump(d);
}

static void
schedule_pump(struct dispatch *d, int64_t at)
{
    int64_t now = clock_now_ms();
    if (at == 0 || at < now)
        at = now;
    if (d->pump_at <= at)
        return;
    d->pump_at = at;
    uv_timer_start(&d->pump_timer, on_uv_pump, (uint64_t)(at - now), 0);
}

/* --- group commit ----------------------------------------------------------- */

static void on_uv_flush(uv_timer_t *t);

/* Hands what is buffered to storeq for one commit; on_commit follows
 * (at once on SQLite, from the database thread on a server). */
static void
flush_now(struct dispatch *d)
{
    d->flush_scheduled = false;
    if (storeq_pending(d->q) == 0)
        return;
    if (d->commit_out) {
        d->flush_again = true;
        return;
    }
    /* What these updates give back becomes claimable with this commit. */
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        dl->committing_due_ms = dl->recorded_due_ms;
        dl->recorded_due_ms = NEVER;
        dl->committing_gave_back = dl->gave_back;
        dl->gave_back = false;
    }
    d->commit_out = true;
    storeq_commit(d->q);
}

/* A commit answered. One that failed (a lock held by an operator, a lost
 * connection) kept everything; it is tried again FLUSH_RETRY_MS later,
 * backing off for what will not pass that soon. */
static void
on_commit(int rc, size_t n, double seconds, void *arg)
{
    struct dispatch *d = arg;

    d->commit_out = false;
    if (rc < 0) {
        for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
            if (dl->committing_due_ms < dl->recorded_due_ms)
                dl->recorded_due_ms = dl->committing_due_ms;
            dl->committing_due_ms = NEVER;
            dl->gave_back |= dl->committing_gave_back;
            dl->committing_gave_back = false;
        }
        if (!d->flush_busy_logged)
            log_warnx("store: commit of %zu outcomes delayed (%s), kept "
                      "and retried",
                      storeq_pending(d->q),
                      rc == -EBUSY ? "database locked" : strerror(-rc));
        d->flush_busy_logged = true;
        d->flush_again = false;
        d->flush_scheduled = true;
        if (rc == -EBUSY || d->flush_retry_ms < FLUSH_RETRY_MS)
            d->flush_retry_ms = FLUSH_RETRY_MS;
        else if ((d->flush_retry_ms *= 2) > STORE_TROUBLE_MS)
            d->flush_retry_ms = STORE_TROUBLE_MS;
        uv_timer_start(&d->flush_timer, on_uv_flush,
                       (uint64_t)d->flush_retry_ms, 0);
        maybe_stopped(d);
        return;
    }
    if (n > 0)
        metrics_observe_commit(d->metrics, seconds);
    d->flush_retry_ms = 0;
    if (d->flush_busy_logged)
        log_info("store: delayed outcomes committed");
    d->flush_busy_logged = false;
    if (d->outputs_recorded) {
        d->outputs_recorded = false;
        outputs_kick(d->outputs);
    }
    int64_t wake = NEVER;
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        if (dl->committing_due_ms < dl->next_check_ms)
            dl->next_check_ms = dl->committing_due_ms;
        if (dl->committing_due_ms < wake)
            wake = dl->committing_due_ms;
        dl->committing_due_ms = NEVER;
        if (dl->committing_gave_back && !dl->budget_wait) {
            dl->next_check_ms = 0; /* a pending stated cost still holds it */
            wake = 0;
        }
        dl->committing_gave_back = false;
    }
    if (wake != NEVER && !d->stopping)
        schedule_pump(d, wake);
    if (d->flush_again) {
        d->flush_again = false;
        flush_now(d); /* what came meanwhile has waited long enough */
    }
    maybe_stopped(d);
}

static void
on_uv_flush(uv_timer_t *t)
{
    flush_now(t->data);
}

static void
schedule_flush(struct dispatch *d)
{
    if (d->flush_scheduled)
        return;
    if (storeq_pending(d->q) >= FLUSH_BATCH) {
        flush_now(d);
        return;
    }
    d->flush_scheduled = true;
    uv_timer_start(&d->flush_timer, on_uv_flush, FLUSH_DELAY_MS, 0);
}

/* --- housekeeping ------------------------------------------------------------ */

static void
write_provider_rows(struct dispatch *d, int64_t now)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        if (dl->removed)
            continue;
        struct lane *l = dl->lane;
        struct provider_row p = {
            .name = dl->name,
            .state = lane_state_row(lane_state(l)),
            .reason = lane_reason(l)[0] ? lane_reason(l) : NULL,
            .concurrency_limit = lane_limit(l),
            .in_flight = lane_in_flight(l),
            .pause_until = lane_pause_until(l) > now ? lane_pause_until(l)
                                                      : 0,
            .sent = lane_sent(l),
            .succeeded = lane_succeeded(l),
            .failed = lane_failed(l),
            .throttled = lane_throttled(l),
            .rate_per_s = lane_rate(l),
            .rate_source = lane_rate_source(l),
            .token_limit = (int64_t)lane_token_limit(l),
            .tokens_available = lane_tokens_available(l),
        };
        if (lane_state(l) == LANE_ACTIVE && spend_paused(d->spend, dl->name)) {
            p.state = lane_state_name(LANE_PAUSED);
            p.reason = "budget";
        }
        store_provider_put(d->store, &p, now);
    }
    spend_publish(d->spend, now); /* batches held at their budget */
}

static void
check_resumes(struct dispatch *d, int64_t now)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        int limit;
        int64_t resume = 0;
        if (dl->removed ||
            store_provider_get(d->store, dl->name, &limit, &resume) < 0)
            continue;
        if (resume > dl->resume_seen) {
            dl->resume_seen = resume;
            spend_resume(d->spend, dl->name);
            if (lane_state(dl->lane) != LANE_ACTIVE) {
                lane_resume(dl->lane, now);
                log_info("%s resumed by the operator", dl->name);
            }
            dl->next_check_ms = 0;
        }
    }
}

/* Transfers whose job an operator cancelled are aborted. */
static void
check_cancels(struct dispatch *d)
{
    if (d->ninflight == 0)
        return;
    int64_t *ids = xcalloc((size_t)d->ninflight, sizeof(int64_t));
    int64_t *hit = xcalloc((size_t)d->ninflight, sizeof(int64_t));
    int n = 0, nhit = 0;
    for (struct req *r = d->inflight; r; r = r->next)
        ids[n++] = r->job->id;
    if (store_cancelled(d->store, ids, n, hit, &nhit) == 0 && nhit > 0) {
        for (int i = 0; i < nhit; i++) {
            for (struct req *r = d->inflight; r; r = r->next) {
                if (r->job->id == hit[i]) {
                    r->cancel_job = true;
                    http_cancel(r->xfer);
                    break;
                }
            }
        }
    }
    free(ids);
    free(hit);
}

/* Jobs came back to the queue: every lane looks again. */
static void
recheck_lanes(struct dispatch *d)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        dl->next_check_ms = 0;
}

static void
on_uv_house(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    int64_t now = clock_now_ms();
    long n = 0;
    /* A stopping daemon still beats: its requests are still out. */
    liveness_beat(d->live, now);
    write_provider_rows(d, now);
    if (d->stopping)
        return;
    check_resumes(d, now);
    check_cancels(d);
    if (storeq_pending(d->q) == 0)
        reconcile_waiting(d);
    if (liveness_reap(d->live, now, clock_mono_ms(), &n) == 0 && n > 0)
        recheck_lanes(d);
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        permits_sync(d, dl, true);
    if (now - d->last_reclaim >= RECLAIM_MS) {
        d->last_reclaim = now;
        if (store_reclaim_expired(d->store, now, &n) == 0 && n > 0) {
            log_info("store: %ld expired leases reclaimed", n);
            recheck_lanes(d);
        }
    }
    schedule_pump(d, 0);
}

static void
on_uv_version(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    int64_t v;
    if (store_data_version(d->store, &v) < 0 || v == d->data_version)
        return;
    d->data_version = v;
    d->unfinished_at = 0; /* new jobs: STATUS= counts again */
    /* Someone else committed (enqueue, retry, another daemon): look again. */
    recheck_lanes(d);
    schedule_pump(d, 0);
    if (d->outputs != NULL)
        outputs_kick(d->outputs); /* sluicectl outputs --retry */
}

/* The store pushed a wakeup (PostgreSQL NOTIFY): look at once. */
static void
on_store_wakeup(void *arg)
{
    on_uv_version(&((struct dispatch *)arg)->version_timer);
}

/* --- life cycle ----------------------------------------------------------- */

/* Tells the store which providers' running jobs must not go back to the
 * queue when their lease is taken back (no idempotency: docs/design.md
 * §4). */
static void
guard_resends(struct store *s, const struct config *c)
{
    const char **names = xcalloc(c->nproviders + 1, sizeof(char *));
    size_t n = 0;

    for (size_t i = 0; i < c->nproviders; i++) {
        if (c->providers[i].idem == IDEM_NONE)
            names[n++] = c->providers[i].name;
    }
    store_set_unsafe_resend(s, names, n);
    free(names);
}

long
dispatch_recover(struct store *s, struct liveness *live,
                 const struct config *c)
{
    long expired = 0, reaped = 0;
    guard_resends(s, c);
    int rc = store_reclaim_expired(s, clock_now_ms(), &expired);
    if (rc == 0)
        rc = liveness_reap(live, clock_now_ms(), clock_mono_ms(), &reaped);
    return rc < 0 ? rc : expired + reaped;
}

/* Jobs whose provider the config does not name can never run: say so at
 * start, since --drain will finish without them. */
static void
warn_unknown_provider(const char *provider, long n, void *data)
{
    struct dispatch *d = data;
    if (find_lane(d, provider) == NULL)
        log_warnx("%ld unfinished jobs of provider %s, which the config "
                  "does not name: they wait until it does",
                  n, provider);
}

/* runcost_done_fn: a stated cost was learned or given up; the jobs held
 * for it may go. */
static void
on_runcost_done(const char *provider, void *arg)
{
    struct dispatch *d = arg;
    struct dlane *dl = find_lane(d, provider);

    if (dl != NULL)
        dl->next_check_ms = 0;
    if (!d->stopping)
        schedule_pump(d, 0);
}

/* outputs_auth_fn: a provider's headers go with a download only to its
 * own origin (docs/design.md §13). */
static const char *const *
output_auth(const char *provider, const char *url, void *arg)
{
    struct dispatch *d = arg;
    struct dlane *dl = provider ? find_lane(d, provider) : NULL;

    if (dl == NULL || !url_same_origin(dl->base_url, url))
        return NULL;
    return (const char *const *)dl->headers;
}

static void
outputs_params_of(const struct dispatch *d, const struct config *c,
                  struct outputs_params *p)
{
    p->dir = c->outputs_dir;
    p->concurrency = c->outputs_concurrency;
    p->max_size = c->outputs_max_size;
    p->lease_ms = c->lease_ms;
    p->owner = liveness_owner(d->live);
}

/* Starts the downloads when the config names outputs_dir. */
static int
outputs_open(struct dispatch *d, const struct config *c)
{
    struct outputs_params p;

    if (c->outputs_dir == NULL)
        return 0;
    outputs_params_of(d, c, &p);
    d->outputs = outputs_new(d->loop, d->store, d->http, &p, output_auth, d);
    if (outputs_start(d->outputs) < 0) {
        outputs_free(d->outputs);
        d->outputs = NULL;
        return -EIO;
    }
    return 0;
}

struct dispatch *
dispatch_new(uv_loop_t *loop, struct store *s, struct liveness *live,
             const struct config *c)
{
    struct dispatch *d = xcalloc(1, sizeof(*d));
    struct dlane **tail = &d->lanes;

    d->loop = loop;
    d->store = s;
    d->lease_ms = c->lease_ms;
    d->pump_at = NEVER;
    d->live = live;
    store_set_busy_timeout(s, BUSY_TIMEOUT_MS);
    store_data_version(s, &d->data_version);
    d->spend = spend_new(s);

    for (size_t i = 0; i < c->nproviders; i++) {
        spend_set_provider_budget(d->spend, c->providers[i].name,
                                  c->providers[i].budget);
        struct dlane *dl = dlane_new(d, &c->providers[i]);
        if (dl == NULL)
            goto fail;
        *tail = dl;
        tail = &dl->next;
    }
    if (storeq_open(loop, s, c->database, STOREQ_AUTO, BUSY_TIMEOUT_MS,
                    on_commit, d, &d->q) < 0)
        goto fail;
    d->http = http_new(loop);
    d->runcost = runcost_new(d->http, on_runcost_done, d);
    uv_timer_t *timers[] = {&d->pump_timer, &d->flush_timer, &d->house_timer,
                            &d->version_timer, &d->grace_timer};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = d;
    }
    write_provider_rows(d, clock_now_ms());
    store_unfinished_by_provider(s, warn_unknown_provider, d);
    if (outputs_open(d, c) < 0) {
        dispatch_free(d);
        return NULL;
    }
    return d;

fail: /* before the timers and the store queue: only lanes and spend */
    for (struct dlane *x = d->lanes, *nx; x; x = nx) {
        nx = x->next;
        dlane_free(x);
    }
    spend_free(d->spend);
    free(d);
    return NULL;
}

void
dispatch_start(struct dispatch *d)
{
    d->started = true;
    d->last_reclaim = clock_now_ms();
    uv_timer_start(&d->house_timer, on_uv_house, HOUSEKEEPING_MS,
                   HOUSEKEEPING_MS);
    uv_timer_start(&d->version_timer, on_uv_version, VERSION_POLL_MS,
                   VERSION_POLL_MS);
    /* Where the store can push (PostgreSQL), an idle daemon wakes at
     * once; the poll above stays as the floor. */
    store_watch(d->store, d->loop, on_store_wakeup, d);
    schedule_pump(d, 0);
}

int
dispatch_reload(struct dispatch *d, const struct config *c)
{
    /* Validate every provider first, so a broken config changes nothing. */
    for (size_t i = 0; i < c->nproviders; i++) {
        char err[256];
        char *key = config_api_key(&c->providers[i], err, sizeof(err));
        if (key == NULL) {
            log_error("reload: provider %s: %s", c->providers[i].name, err);
            return -EINVAL;
        }
        explicit_bzero(key, strlen(key));
        free(key);
    }
    guard_resends(d->store, c);
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        dl->removed = true;
    for (size_t i = 0; i < c->nproviders; i++) {
        const struct provider_config *pc = &c->providers[i];
        struct dlane *dl = find_lane(d, pc->name);
        spend_set_provider_budget(d->spend, pc->name, pc->budget);
        if (dl) {
            struct lane_params lp;
            /* another origin or dialect may state other costs */
            if (strcmp(dl->base_url, pc->base_url) != 0 ||
                dl->dialect != dialect_find(pc->dialect))
                runcost_forget(d->runcost, pc->name);
            dlane_apply(dl, pc);
            dlane_params(pc, 0, &lp);
            lane_configure(dl->lane, &lp);
            dl->removed = false;
            dl->next_check_ms = 0;
            log_info("reload: %s updated", pc->name);
        } else {
            dl = dlane_new(d, pc);
            if (dl == NULL)
                continue;
            dl->next = d->lanes;
            d->lanes = dl;
            log_info("reload: %s added", pc->name);
        }
    }
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        if (dl->removed)
            log_info("reload: %s removed; its %d requests in flight finish",
                     dl->name, lane_in_flight(dl->lane));
    d->lease_ms = c->lease_ms;
    if (d->outputs != NULL && c->outputs_dir != NULL) {
        struct outputs_params p;
        outputs_params_of(d, c, &p);
        outputs_configure(d->outputs, &p);
    } else if (d->outputs == NULL && outputs_open(d, c) < 0) {
        log_error("reload: outputs_dir %s unusable, downloads stay off",
                  c->outputs_dir);
    } else if (d->outputs != NULL) {
        log_warnx("reload: outputs_dir removed; downloads go on until the "
                  "next start");
    }
    schedule_pump(d, 0);
    return 0;
}

static void
on_uv_closed(uv_handle_t *h)
{
    struct dispatch *d = h->data;
    d->closing--;
}

static void
maybe_stopped(struct dispatch *d)
{
    if (!d->stopping || d->ninflight > 0 || d->on_stopped == NULL ||
        (d->outputs != NULL && !d->outputs_stopped))
        return;
    /* Claims, puts and commits out call back here when they answer. */
    if (storeq_busy(d->q) > 0)
        return;
    if (storeq_pending(d->q) > 0 && clock_now_ms() < d->stop_flush_until) {
        /* on_commit calls back here (inline: before flush_now returns),
         * and a failed commit's retry timer flushes again */
        if (!d->flush_scheduled)
            flush_now(d);
        return;
    }
    if (storeq_pending(d->q) > 0)
        log_warnx("store: %zu outcomes not committed by the stop: their "
                  "jobs stay leased and are taken back, with the same "
                  "keys, at the next start",
                  storeq_pending(d->q));
    write_provider_rows(d, clock_now_ms());
    /* Nothing of ours keeps the loop alive once stopped. */
    uv_timer_stop(&d->grace_timer);
    uv_timer_stop(&d->house_timer);
    uv_timer_stop(&d->flush_timer);
    uv_timer_stop(&d->pump_timer);
    void (*cb)(void *) = d->on_stopped;
    d->on_stopped = NULL;
    cb(d->stopped_data);
}

static void
on_uv_grace(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    if (d->ninflight > 0)
        log_info("shutdown grace over: returning %d requests in flight to "
                 "the queue", d->ninflight);
    /* http_cancel runs the callback, which unlinks the request. */
    while (d->inflight)
        http_cancel(d->inflight->xfer);
    maybe_stopped(d);
}

static void
on_outputs_stopped(void *arg)
{
    struct dispatch *d = arg;
    d->outputs_stopped = true;
    maybe_stopped(d);
}

void
dispatch_stop(struct dispatch *d, int64_t grace_ms,
              void (*on_stopped)(void *), void *data)
{
    d->stopping = true;
    d->on_stopped = on_stopped;
    d->stopped_data = data;
    d->stop_flush_until = clock_now_ms() + grace_ms + STOP_FLUSH_MS;
    uv_timer_stop(&d->pump_timer);
    uv_timer_stop(&d->version_timer);
    store_watch(d->store, NULL, NULL, NULL); /* or the loop stays up */
    runcost_forget(d->runcost, NULL); /* no job waits for a cost now */
    if (d->ninflight > 0) {
        log_info("stopping: %d requests in flight, grace %" PRId64 " ms",
                 d->ninflight, grace_ms);
        uv_timer_start(&d->grace_timer, on_uv_grace, (uint64_t)grace_ms, 0);
    }
    /* Downloads do not get the grace: a cut one is fetched again at the
     * next start, nothing is lost but the bytes. */
    if (d->outputs != NULL)
        outputs_stop(d->outputs, on_outputs_stopped, d);
    maybe_stopped(d);
}

bool
dispatch_drained(struct dispatch *d)
{
    if (d->ninflight > 0 || storeq_pending(d->q) > 0 ||
        storeq_busy(d->q) > 0)
        return false;
    if (d->outputs != NULL && !outputs_idle(d->outputs))
        return false;
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        bool any = false;
        if (dl->removed)
            continue;
        if (store_has_unfinished(d->store, dl->name, &any) < 0)
            return false;
        /* paused for auth, balance or budget, or every job in a batch
         * held at its budget: nothing of it can move */
        if (any && lane_state(dl->lane) != LANE_PAUSED &&
            !spend_paused(d->spend, dl->name) &&
            !spend_blocked(d->spend, dl->name))
            return false;
    }
    return true;
}

const char *
dispatch_status(struct dispatch *d)
{
    int64_t now = clock_now_ms();
    /* The count reads the kept counts (a few rows); it is still asked at
     * most every STATUS_COUNT_MS, since STATUS= need not be fresher. */
    if (d->unfinished_at == 0 || now - d->unfinished_at >= STATUS_COUNT_MS) {
        long total = 0;
        for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
            long n = 0;
            if (!dl->removed &&
                store_pending_count(d->store, dl->name, &n) == 0)
                total += n;
        }
        d->unfinished = total;
        d->unfinished_at = now;
    }
    buf_reset(&d->status);
    buf_appendf(&d->status, "%d in flight, %ld unfinished", d->ninflight,
                d->unfinished);
    if (outputs_active(d->outputs) > 0)
        buf_appendf(&d->status, ", %d downloads",
                    outputs_active(d->outputs));
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        if (dl->removed)
            continue;
        if (lane_state(dl->lane) == LANE_ACTIVE &&
            spend_paused(d->spend, dl->name))
            buf_appendf(&d->status, ", %s paused: budget", dl->name);
        else if (lane_state(dl->lane) == LANE_ACTIVE)
            buf_appendf(&d->status, ", %s limit %d", dl->name,
                        lane_limit(dl->lane));
        else
            buf_appendf(&d->status, ", %s %s%s%s", dl->name,
                        lane_state_name(lane_state(dl->lane)),
                        lane_reason(dl->lane)[0] ? ": " : "",
                        lane_reason(dl->lane));
    }
    return d->status.data;
}

void
dispatch_set_metrics(struct dispatch *d, struct metrics *m)
{
    d->metrics = m;
}

struct spend *
dispatch_spend(struct dispatch *d)
{
    return d->spend;
}

size_t
dispatch_lanes(struct dispatch *d, const struct lane **out, size_t cap)
{
    size_t n = 0;
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        if (dl->removed)
            continue;
        if (n < cap)
            out[n] = dl->lane;
        n++;
    }
    return n;
}

void
dispatch_free(struct dispatch *d)
{
    if (d == NULL)
        return;
    while (d->inflight)
        http_cancel(d->inflight->xfer);
    outputs_free(d->outputs);
    runcost_free(d->runcost);
    http_free(d->http);
    store_watch(d->store, NULL, NULL, NULL);
    /* Commits what the cancellations above recorded, and closes its
     * handle with the timers below. */
    storeq_close(d->q);
    uv_timer_t *timers[] = {&d->pump_timer, &d->flush_timer, &d->house_timer,
                            &d->version_timer, &d->grace_timer};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        d->closing++;
        uv_close((uv_handle_t *)timers[i], on_uv_closed);
    }
    /* The timers are embedded: let their close callbacks run first. */
    while (d->closing > 0)
        uv_run(d->loop, UV_RUN_ONCE);
    for (struct dlane *dl = d->lanes, *nx; dl; dl = nx) {
        nx = dl->next;
        dlane_free(dl);
    }
    buf_free(&d->status);
    spend_free(d->spend);
    free(d);
}
