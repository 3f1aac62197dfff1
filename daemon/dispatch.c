/*
 * dispatch: the scheduler of sluiced, on one libuv loop.
 *
 * How a job moves: pump() asks each lane how many requests its gates admit
 * (lane.c), claims that many due jobs of its provider in one statement
 * (store_claim), and sends each through http.c. When a response arrives,
 * the provider's dialect turns it into an outcome; the lane learns from it
 * (limit, pause, breaker), retry.c decides what happens to a failed job, and
 * the update is buffered for the next group commit (store_flush on a short
 * timer). Nothing is decided from memory alone: every state change is a row
 * update, and a job that was claimed but not recorded is reclaimed by its
 * lease after a crash.
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
#include <strings.h>
#include <unistd.h>

#include "sluice/clock.h"
#include "sluice/config.h"
#include "sluice/dialect.h"
#include "sluice/dispatch.h"
#include "sluice/http.h"
#include "sluice/lane.h"
#include "sluice/log.h"
#include "sluice/retry.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

/* Most jobs one claim statement takes: bounds the time a claim holds the
 * write lock and the memory of one batch. */
#define CLAIM_MAX 128
/* Claims wait for limit / 4 free slots while requests are out (see
 * pump_lane): fewer, larger claims; a quarter keeps the pipe three
 * quarters full meanwhile. */
#define CLAIM_BATCH_DIVISOR 4
/* Group commit: flush this often while updates are buffered, or at once
 * beyond FLUSH_BATCH of them (DESIGN §3: a few ms or a few hundred). */
#define FLUSH_DELAY_MS 5
#define FLUSH_BATCH 256
/* A commit that met a lock is retried this often; nothing is dropped. */
#define FLUSH_RETRY_MS 50
/* The providers table and cancellation checks run once a second. */
#define HOUSEKEEPING_MS 1000
/* How often other processes' commits (enqueue, retry, cancel) are looked
 * for: PRAGMA data_version costs no I/O. */
#define VERSION_POLL_MS 200
/* Expired leases of other daemons are reclaimed this often. */
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
    struct retry_policy policy;
    int64_t timeout_ms, connect_timeout_ms;
    int64_t poll_interval_ms, poll_interval_max_ms;
    size_t max_response;
    struct lane *lane;
    int64_t next_check_ms;       /* no claimable job before this */
    int64_t recorded_due_ms;     /* earliest run_after among updates not
                                    yet committed: claimable once flushed */
    int64_t resume_seen;         /* last resume request acted on */
    bool removed;                /* gone from the config (SIGHUP) */
    int requests;                /* HTTP requests of this lane in flight */
    int waiting;                 /* async runs the lane counts as in flight */
    struct dlane *next;
};

struct req {
    struct dispatch *d;
    struct dlane *dl;
    struct job *job;
    struct http_xfer *xfer;
    bool is_poll;
    bool cancel_job;             /* operator cancelled: record cancelled */
    char *url;
    char *body;
    char **headers;              /* lane headers + per-request ones */
    int64_t started_ms;
    struct req *prev, *next;
};

struct dispatch {
    uv_loop_t *loop;
    struct store *store;
    struct http *http;
    struct dlane *lanes;
    struct req *inflight;
    int ninflight;
    char owner[128];
    int64_t lease_ms;
    int64_t data_version;
    uv_timer_t pump_timer;
    uv_timer_t flush_timer;
    uv_timer_t house_timer;
    uv_timer_t version_timer;
    uv_timer_t grace_timer;
    int64_t pump_at;             /* when pump_timer fires, NEVER if idle */
    int64_t last_reclaim;
    bool flush_scheduled;
    bool flush_busy_logged;
    bool started;
    bool stopping;
    void (*on_stopped)(void *);
    void *stopped_data;
    int closing;                 /* handles still closing */
    struct buf status;
    long unfinished;             /* jobs not terminal, for STATUS= */
    int64_t unfinished_at;       /* when counted, 0 never */
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
    dl->policy.max_attempts = pc->max_attempts;
    dl->policy.max_deferrals = pc->max_deferrals;
    dl->policy.base_ms = pc->backoff_base_ms;
    dl->policy.cap_ms = pc->backoff_cap_ms;
    dl->timeout_ms = pc->timeout_ms;
    dl->connect_timeout_ms = pc->connect_timeout_ms;
    dl->poll_interval_ms = pc->poll_interval_ms;
    dl->poll_interval_max_ms = pc->poll_interval_max_ms;
    dl->max_response = pc->max_response;
    return 0;
}

static void
lane_params_of(const struct provider_config *pc, int saved_limit,
               struct lane_params *lp)
{
    memset(lp, 0, sizeof(*lp));
    lp->concurrency_start =
        saved_limit > 0 && pc->adaptive ? saved_limit : pc->concurrency_start;
    lp->concurrency_max = pc->concurrency_max;
    lp->adaptive = pc->adaptive;
    lp->rate_per_s = pc->rate_per_s;
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
    lane_params_of(pc, saved, &lp);
    dl->lane = lane_new(pc->name, &lp, clock_now_ms());
    dl->resume_seen = resume;
    dl->next_check_ms = 0;
    dl->recorded_due_ms = NEVER;
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

/* Async runs occupy the provider: the lane counts them as in flight. */
static void
lane_waiting(struct dlane *dl, int delta)
{
    if (dl->waiting + delta < 0)
        delta = -dl->waiting;
    dl->waiting += delta;
    lane_on_waiting(dl->lane, delta);
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
        if (n != dl->waiting)
            lane_waiting(dl, (int)n - dl->waiting);
    }
}

/* Whether url (absolute, or a path) is on base's scheme://host[:port]. */
static bool
same_origin(const char *base, const char *url)
{
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return true; /* a path under base_url */
    const char *b = strstr(base, "://"), *u = strstr(url, "://");
    size_t blen = strcspn(b + 3, "/?#"), ulen = strcspn(u + 3, "/?#");
    return (size_t)(b - base) == (size_t)(u - url) &&
           strncasecmp(base, url, (size_t)(b - base)) == 0 && blen == ulen &&
           strncasecmp(b + 3, u + 3, blen) == 0;
}

/* --- building a request ------------------------------------------------- */

static char *
join_url(const char *base, const char *path)
{
    if (strncmp(path, "http://", 7) == 0 || strncmp(path, "https://", 8) == 0)
        return xstrdup(path);
    return xasprintf("%s%s%s", base, path[0] == '/' ? "" : "/", path);
}

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
    r->dl->requests++;
    r->next = d->inflight;
    if (d->inflight)
        d->inflight->prev = r;
    d->inflight = r;
    d->ninflight++;
}

static void
req_unlink(struct dispatch *d, struct req *r)
{
    r->dl->requests--;
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
    free(r->url);
    free(r->body);
    free_strv(r->headers);
    free(r);
}

static void on_http_done(const struct http_response *resp, void *data);

static void
send_job(struct dispatch *d, struct dlane *dl, struct job *j)
{
    struct req *r = xcalloc(1, sizeof(*r));
    r->d = d;
    r->dl = dl;
    r->job = j;
    r->is_poll = j->state == JOB_WAITING;
    if (r->is_poll) {
        r->url = join_url(dl->base_url, j->poll_url ? j->poll_url : "");
        r->body = NULL;
    } else {
        r->url = join_url(dl->base_url, j->path);
        r->body = request_body(dl, j);
    }
    r->headers = request_headers(dl, j, r->is_poll);
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
    lane_on_send(dl->lane, r->started_ms);
    req_link(d, r);
    int rc = http_submit(d->http, &hr, on_http_done, r, &r->xfer);
    if (rc < 0) {
        /* Could not even start: give the job back untouched. */
        log_warnx("job %" PRId64 ": %s: cannot start request: %s", j->id,
                  dl->name, strerror(-rc));
        req_unlink(d, r);
        lane_on_abort(dl->lane);
        struct job_update u = {
            .job_id = j->id,
            .state = r->is_poll ? JOB_WAITING : JOB_QUEUED,
            .run_after = r->started_ms + 1000,
            .deferrals = j->deferrals,
            .uncharge = !r->is_poll,
        };
        if (u.run_after < dl->recorded_due_ms)
            dl->recorded_due_ms = u.run_after;
        store_record(d->store, &u);
        schedule_flush(d);
        req_free(r);
        return;
    }
    log_debug("job %" PRId64 ": %s %s %s (attempt %d)", j->id, dl->name,
              hr.method, r->is_poll ? "poll" : "submit", j->attempts);
}

/* --- outcomes -------------------------------------------------------------- */

/* The next poll interval grows gently with the run's age: every minute of
 * running adds the base interval again, up to the maximum (DESIGN §7). */
static int64_t
poll_delay(const struct dlane *dl, const struct job *j, int64_t now)
{
    int64_t age = j->waiting_since ? now - j->waiting_since : 0;
    int64_t delay = dl->poll_interval_ms * (1 + age / 60000);
    return delay < dl->poll_interval_max_ms ? delay : dl->poll_interval_max_ms;
}

/* The key for a resubmission after a remote run definitively failed: the
 * same key would only replay the failed run (DESIGN §4). "<key>.N" where
 * N is the attempt it is for, so it never repeats within the job. */
static char *
derived_key(const struct job *j)
{
    const char *base = j->base_key ? j->base_key : j->idempotency_key;
    return xasprintf("%s.%d", base, j->attempts + 1);
}

static void
fill_failure(struct job_update *u, const struct outcome *o)
{
    u->cls = o->cls;
    u->code = o->code[0] ? o->code : NULL;
    u->message = o->message[0] ? o->message : NULL;
    u->fields = o->fields;
}

/* One line per handled failure, in STYLE.md's shape:
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

static void
record_outcome(struct dispatch *d, struct req *r, const struct outcome *o,
               int64_t now, const char *lane_change)
{
    struct dlane *dl = r->dl;
    struct job *j = r->job;
    struct job_update u = {
        .job_id = j->id,
        .deferrals = j->deferrals,
        .is_poll = r->is_poll,
        .started_at = r->started_ms,
        .finished_at = now,
        .http_status = o->http_status,
        .request_id = o->request_id[0] ? o->request_id : NULL,
        .retry_after_ms = o->hints.retry_at_ms > now
                              ? o->hints.retry_at_ms - now : 0,
        .attempt = j->attempts,
        .key_sent = r->is_poll ? NULL : j->idempotency_key,
        /* every submission is an attempt row; polls only when they fail */
        .has_attempt = !r->is_poll || o->kind == OUTCOME_FAILURE,
    };
    char *new_key = NULL;

    switch (o->kind) {
    case OUTCOME_SUCCESS:
        u.state = JOB_SUCCEEDED;
        u.result = o->result;
        u.cost = o->cost;
        u.has_cost = o->has_cost;
        u.remote_id = o->remote_id;
        if (r->is_poll)
            lane_waiting(dl, -1);
        log_debug("job %" PRId64 ": %s succeeded", j->id, dl->name);
        break;
    case OUTCOME_ACCEPTED:
        u.state = JOB_WAITING;
        /* A poll keeps the run and URL the submission was given: a status
         * answer need not repeat them (and a default would be a guess). */
        u.remote_id = r->is_poll && j->remote_id ? j->remote_id
                      : o->remote_id             ? o->remote_id
                                                 : j->remote_id;
        u.poll_url = r->is_poll && j->poll_url ? j->poll_url
                     : o->poll_url             ? o->poll_url
                                               : j->poll_url;
        if (!r->is_poll) {
            lane_waiting(dl, +1);
            u.run_after = now + dl->poll_interval_ms;
            log_debug("job %" PRId64 ": %s run %s accepted", j->id,
                      dl->name, u.remote_id ? u.remote_id : "?");
        } else {
            u.run_after = now + poll_delay(dl, j, now);
        }
        if (u.poll_url == NULL || !same_origin(dl->base_url, u.poll_url)) {
            /* A run we cannot poll, or could poll only by sending the key
             * to another host (DESIGN §11), is a protocol failure. */
            u.state = JOB_FAILED;
            u.cls = ERR_PROTOCOL;
            u.code = u.poll_url ? "foreign_poll_url" : "no_poll_url";
            u.message = u.poll_url
                            ? "poll url is not on the provider's host: "
                              "credentials are not sent there"
                            : "run accepted without a run id or poll url";
            if (!r->is_poll)
                lane_waiting(dl, -1);
        }
        break;
    case OUTCOME_FAILURE: {
        fill_failure(&u, o);
        u.result = o->result; /* partial data, when any */
        /* A run that definitively failed at the provider: the poll was
         * answered and named the run's failure. An unreadable poll answer
         * says nothing about the run, which may still be going. */
        bool run_failed = r->is_poll && o->http_status >= 200 &&
                          o->http_status < 300 && o->cls != ERR_PROTOCOL;
        if (r->is_poll && !run_failed) {
            /* The poll itself failed: the run goes on at the provider.
             * Poll again later unless the answer is final. */
            /* Failed polls are bounded like deferrals: a provider that
             * keeps answering polls with garbage ends the job, it does
             * not keep it waiting forever. */
            u.deferrals = j->deferrals + 1;
            if (u.deferrals > dl->policy.max_deferrals) {
                u.state = JOB_FAILED;
                lane_waiting(dl, -1);
                log_outcome(r, o, "failed", -1, lane_change);
            } else if (outcome_retryable(o) || o->cls == ERR_AUTH ||
                       o->cls == ERR_INSUFFICIENT_BALANCE ||
                       o->cls == ERR_RATE_LIMITED) {
                int64_t at = now + poll_delay(dl, j, now);
                if (o->hints.retry_at_ms > at)
                    at = o->hints.retry_at_ms;
                u.state = JOB_WAITING;
                u.run_after = at;
                log_outcome(r, o, "poll again", at - now, lane_change);
            } else {
                u.state = JOB_FAILED;
                lane_waiting(dl, -1);
                log_outcome(r, o, "failed", -1, lane_change);
            }
            break;
        }
        if (run_failed)
            lane_waiting(dl, -1);
        /* A job line's own max_attempts beats the provider's default. */
        struct retry_policy policy = dl->policy;
        if (j->max_attempts > 0)
            policy.max_attempts = j->max_attempts;
        struct retry_decision dec = retry_decide(
            &policy, o, j->attempts, j->deferrals, now, clock_random());
        /* A 403 that the lane judged to be about the key itself (it paused
         * the provider) is the key's fault, not the job's: hold the job
         * like an auth failure instead of failing it. */
        if (o->cls == ERR_PERMISSION && lane_state(dl->lane) == LANE_PAUSED)
            dec.action = RETRY_HOLD;
        switch (dec.action) {
        case RETRY_GIVE_UP:
            u.state = JOB_FAILED;
            log_outcome(r, o, "failed", -1, lane_change);
            break;
        case RETRY_AGAIN:
            u.state = JOB_RETRYING;
            u.run_after = dec.run_after_ms;
            if (run_failed) {
                /* Definitive remote failure: the same key would only
                 * replay it, so the next run gets a derived key. */
                new_key = derived_key(j);
                u.new_key = new_key;
            }
            log_outcome(r, o, "retry", dec.run_after_ms - now, lane_change);
            break;
        case RETRY_DEFER:
            u.state = JOB_RETRYING;
            u.run_after = dec.run_after_ms;
            u.uncharge = true;
            u.deferrals = j->deferrals + 1;
            log_outcome(r, o, "deferred", dec.run_after_ms - now,
                        lane_change);
            break;
        case RETRY_HOLD:
            u.state = JOB_QUEUED;
            u.run_after = now;
            u.uncharge = true;
            log_outcome(r, o, "held, provider paused", -1, lane_change);
            break;
        }
        break;
    }
    }
    /* The job becomes claimable only once this update is committed; the
     * flush hands the time on to next_check_ms (see flush_now). */
    if ((u.state == JOB_RETRYING || u.state == JOB_WAITING ||
         u.state == JOB_QUEUED) &&
        u.run_after < dl->recorded_due_ms)
        dl->recorded_due_ms = u.run_after;
    store_record(d->store, &u);
    free(new_key);
}

/* A request ended without an answer that counts: shutdown, or an operator
 * cancel. The job goes back (or to cancelled) without charging. */
static void
record_release(struct dispatch *d, struct req *r, int64_t now)
{
    struct job *j = r->job;
    struct job_update u = {
        .job_id = j->id,
        .deferrals = j->deferrals,
        .run_after = now,
    };
    if (now < r->dl->recorded_due_ms)
        r->dl->recorded_due_ms = now;
    if (r->cancel_job) {
        u.state = JOB_CANCELLED;
        if (r->is_poll)
            lane_waiting(r->dl, -1);
        log_info("job %" PRId64 ": %s cancelled in flight", j->id,
                 r->dl->name);
    } else if (r->is_poll) {
        u.state = JOB_WAITING;
    } else {
        u.state = JOB_QUEUED;
        u.uncharge = true;
    }
    store_record(d->store, &u);
}

static void
on_http_done(const struct http_response *resp, void *data)
{
    struct req *r = data;
    struct dispatch *d = r->d;
    int64_t now = clock_now_ms();

    req_unlink(d, r);
    if (resp->cancelled) {
        lane_on_abort(r->dl->lane);
        record_release(d, r, now);
    } else {
        struct outcome o;
        outcome_init(&o);
        dialect_classify(r->dl->dialect, resp, r->is_poll, now,
                         r->dl->request_id_header, &o);
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
        bool changed = lane_on_done(r->dl->lane, &lane_view,
                                    now - r->started_ms, now,
                                    clock_random());
        char change[160];
        const char *lane_change = NULL;
        if (changed) {
            int after = lane_limit(r->dl->lane);
            if (lane_state(r->dl->lane) != sbefore) {
                log_info("%s %s: %s", r->dl->name,
                         lane_last_change(r->dl->lane),
                         lane_describe(r->dl->lane));
            } else if (after != before) {
                snprintf(change, sizeof(change), "(limit %d→%d)", before,
                         after);
                lane_change = change;
                if (o.kind != OUTCOME_FAILURE)
                    log_debug("%s limit %d→%d", r->dl->name, before, after);
            }
        }
        record_outcome(d, r, &o, now, lane_change);
        if (lane_change && o.kind == OUTCOME_FAILURE)
            log_info("%s limit %d→%d after %s", r->dl->name, before,
                     lane_limit(r->dl->lane), err_class_name(o.cls));
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

/* Waiting runs hold concurrency slots (they occupy the provider), so a
 * lane full of them admits nothing; yet only a poll can end a run. Polls
 * due then go out past the concurrency gate: a GET of a run's status costs
 * the provider little, and the pacer's gate still applies before this. */
static void
pump_polls(struct dispatch *d, struct dlane *dl, int64_t now, int64_t *wake)
{
    struct job *jobs[CLAIM_MAX];
    int got = 0;
    if (store_claim_polls(d->store, dl->name, CLAIM_MAX, now, d->lease_ms,
                          d->owner, jobs, &got) < 0) {
        if (now + FLUSH_RETRY_MS < *wake)
            *wake = now + FLUSH_RETRY_MS;
        return;
    }
    for (int i = 0; i < got; i++)
        send_job(d, dl, jobs[i]);
}

static void
pump_lane(struct dispatch *d, struct dlane *dl, int64_t now, int64_t *wake)
{
    int64_t lane_wake = 0;
    if (dl->removed || now < dl->next_check_ms) {
        if (!dl->removed && dl->next_check_ms < *wake)
            *wake = dl->next_check_ms;
        return;
    }
    enum lane_state before = lane_state(dl->lane);
    int n = lane_admit(dl->lane, now, &lane_wake);
    if (lane_state(dl->lane) != before)
        log_info("%s %s", dl->name, lane_last_change(dl->lane));
    if (n <= 0) {
        if (lane_wake > 0 && lane_wake < *wake)
            *wake = lane_wake;
        if (lane_state(dl->lane) == LANE_ACTIVE && lane_wake == 0)
            pump_polls(d, dl, now, wake);
        return;
    }
    /* When only the concurrency gate limits (no time gate pending) and
     * requests are out, wait until a quarter of the limit is free: one
     * claim statement then serves many completions instead of one each. */
    int batch = lane_limit(dl->lane) / CLAIM_BATCH_DIVISOR;
    if (n < batch && lane_wake == 0 && dl->requests > 0)
        return;
    if (n > CLAIM_MAX)
        n = CLAIM_MAX;
    struct job *jobs[CLAIM_MAX];
    int got = 0;
    int rc = dl->dialect->async
                 ? store_claim(d->store, dl->name, n, now, d->lease_ms,
                               d->owner, jobs, &got)
                 : store_claim_new(d->store, dl->name, n, now, d->lease_ms,
                                   d->owner, jobs, &got);
    if (rc < 0) {
        /* Locked by an operator or another daemon: try again shortly. */
        if (now + FLUSH_RETRY_MS < *wake)
            *wake = now + FLUSH_RETRY_MS;
        return;
    }
    for (int i = 0; i < got; i++)
        send_job(d, dl, jobs[i]);
    if (got < n) {
        int64_t due = 0;
        if (store_next_due(d->store, dl->name, now, &due) < 0)
            due = now + FLUSH_RETRY_MS;
        dl->next_check_ms = due > 0 ? due : NEVER;
        if (dl->next_check_ms < *wake)
            *wake = dl->next_check_ms;
    } else if (lane_wake > 0 && lane_wake < *wake) {
        *wake = lane_wake;
    }
}

static void
pump(struct dispatch *d)
{
    if (d->stopping || !d->started)
        return;
    int64_t now = clock_now_ms();
    int64_t wake = NEVER;
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

/* Commits what is buffered. A commit that fails (a lock held by an
 * operator) keeps everything and tries again FLUSH_RETRY_MS later. */
static void
flush_now(struct dispatch *d)
{
    size_t n = store_pending(d->store);
    d->flush_scheduled = false;
    if (n == 0)
        return;
    int rc = store_flush(d->store);
    if (rc < 0) {
        if (!d->flush_busy_logged)
            log_warnx("store: commit of %zu outcomes delayed (%s), kept "
                      "and retried",
                      n, rc == -EBUSY ? "database locked" : strerror(-rc));
        d->flush_busy_logged = true;
        d->flush_scheduled = true;
        uv_timer_start(&d->flush_timer, on_uv_flush, FLUSH_RETRY_MS, 0);
        return;
    }
    if (d->flush_busy_logged)
        log_info("store: delayed outcomes committed");
    d->flush_busy_logged = false;
    int64_t wake = NEVER;
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        if (dl->recorded_due_ms < dl->next_check_ms)
            dl->next_check_ms = dl->recorded_due_ms;
        if (dl->recorded_due_ms < wake)
            wake = dl->recorded_due_ms;
        dl->recorded_due_ms = NEVER;
    }
    if (wake != NEVER && !d->stopping)
        schedule_pump(d, wake);
}

static void
on_uv_flush(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    flush_now(d);
    if (d->stopping)
        maybe_stopped(d);
}

static void
schedule_flush(struct dispatch *d)
{
    if (d->flush_scheduled)
        return;
    if (store_pending(d->store) >= FLUSH_BATCH) {
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
            .state = lane_state_name(lane_state(l)),
            .reason = lane_reason(l)[0] ? lane_reason(l) : NULL,
            .concurrency_limit = lane_limit(l),
            .in_flight = lane_in_flight(l),
            .pause_until = lane_pause_until(l) > now ? lane_pause_until(l)
                                                      : 0,
            .sent = lane_sent(l),
            .succeeded = lane_succeeded(l),
            .failed = lane_failed(l),
            .throttled = lane_throttled(l),
        };
        store_provider_put(d->store, &p, now);
    }
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

static void
on_uv_house(uv_timer_t *t)
{
    struct dispatch *d = t->data;
    int64_t now = clock_now_ms();
    write_provider_rows(d, now);
    if (d->stopping)
        return;
    check_resumes(d, now);
    check_cancels(d);
    if (store_pending(d->store) == 0)
        reconcile_waiting(d);
    if (now - d->last_reclaim >= RECLAIM_MS) {
        long n = 0;
        d->last_reclaim = now;
        if (store_reclaim_expired(d->store, now, &n) == 0 && n > 0) {
            log_info("store: %ld expired leases reclaimed", n);
            for (struct dlane *dl = d->lanes; dl; dl = dl->next)
                dl->next_check_ms = 0;
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
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        dl->next_check_ms = 0;
    schedule_pump(d, 0);
}

/* The store pushed a wakeup (PostgreSQL NOTIFY): look at once. */
static void
on_store_wakeup(void *arg)
{
    on_uv_version(&((struct dispatch *)arg)->version_timer);
}

/* --- life cycle ----------------------------------------------------------- */

static void
owner_name(char *out, size_t len)
{
    char host[64] = "localhost";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    snprintf(out, len, "%s:%ld", host, (long)getpid());
}

/* A lease owner of this host whose process is gone (or is us: a pid
 * reused after a crash). Owners of other hosts are left to expire. */
static bool
owner_dead(const char *owner)
{
    char me[128];
    owner_name(me, sizeof(me));
    const char *colon = strrchr(owner, ':');
    const char *mycolon = strrchr(me, ':');
    if (colon == NULL || (size_t)(colon - owner) != (size_t)(mycolon - me) ||
        strncmp(owner, me, (size_t)(colon - owner)) != 0)
        return false;
    char *end;
    long pid = strtol(colon + 1, &end, 10);
    if (*end != '\0' || pid <= 0)
        return false;
    if (pid == (long)getpid())
        return true;
    return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

long
dispatch_recover(struct store *s)
{
    long total = 0, n = 0;
    char **owners = NULL;
    size_t nowners = 0;

    int rc = store_reclaim_expired(s, clock_now_ms(), &n);
    if (rc < 0)
        return rc;
    total += n;
    if (store_lease_owners(s, &owners, &nowners) == 0) {
        for (size_t i = 0; i < nowners; i++) {
            if (owner_dead(owners[i]) &&
                store_reclaim_owner(s, owners[i], &n) == 0 && n > 0) {
                log_info("store: %ld jobs of dead daemon %s reclaimed", n,
                         owners[i]);
                total += n;
            }
            free(owners[i]);
        }
        free(owners);
    }
    return total;
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

struct dispatch *
dispatch_new(uv_loop_t *loop, struct store *s, const struct config *c)
{
    struct dispatch *d = xcalloc(1, sizeof(*d));
    struct dlane **tail = &d->lanes;

    d->loop = loop;
    d->store = s;
    d->lease_ms = c->lease_ms;
    d->pump_at = NEVER;
    owner_name(d->owner, sizeof(d->owner));
    store_set_busy_timeout(s, BUSY_TIMEOUT_MS);
    store_data_version(s, &d->data_version);

    for (size_t i = 0; i < c->nproviders; i++) {
        struct dlane *dl = dlane_new(d, &c->providers[i]);
        if (dl == NULL) {
            for (struct dlane *x = d->lanes, *nx; x; x = nx) {
                nx = x->next;
                dlane_free(x);
            }
            free(d);
            return NULL;
        }
        *tail = dl;
        tail = &dl->next;
    }
    d->http = http_new(loop);
    uv_timer_t *timers[] = {&d->pump_timer, &d->flush_timer, &d->house_timer,
                            &d->version_timer, &d->grace_timer};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = d;
    }
    write_provider_rows(d, clock_now_ms());
    store_unfinished_by_provider(s, warn_unknown_provider, d);
    return d;
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
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        dl->removed = true;
    for (size_t i = 0; i < c->nproviders; i++) {
        const struct provider_config *pc = &c->providers[i];
        struct dlane *dl = find_lane(d, pc->name);
        if (dl) {
            struct lane_params lp;
            dlane_apply(dl, pc);
            lane_params_of(pc, 0, &lp);
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
    if (!d->stopping || d->ninflight > 0 || d->on_stopped == NULL)
        return;
    if (store_pending(d->store) > 0) {
        flush_now(d); /* retries itself while the database is locked */
        if (store_pending(d->store) > 0)
            return;
    }
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

void
dispatch_stop(struct dispatch *d, int64_t grace_ms,
              void (*on_stopped)(void *), void *data)
{
    d->stopping = true;
    d->on_stopped = on_stopped;
    d->stopped_data = data;
    uv_timer_stop(&d->pump_timer);
    uv_timer_stop(&d->version_timer);
    store_watch(d->store, NULL, NULL, NULL); /* or the loop stays up */
    if (d->ninflight > 0) {
        log_info("stopping: %d requests in flight, grace %" PRId64 " ms",
                 d->ninflight, grace_ms);
        uv_timer_start(&d->grace_timer, on_uv_grace, (uint64_t)grace_ms, 0);
    }
    maybe_stopped(d);
}

bool
dispatch_drained(struct dispatch *d)
{
    if (d->ninflight > 0 || store_pending(d->store) > 0)
        return false;
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        bool any = false;
        if (dl->removed)
            continue;
        if (store_has_unfinished(d->store, dl->name, &any) < 0)
            return false;
        if (any && lane_state(dl->lane) != LANE_PAUSED)
            return false;
    }
    return true;
}

const char *
dispatch_status(struct dispatch *d)
{
    int64_t now = clock_now_ms();
    /* Counting a large queue costs ~100 ms per million jobs on the loop
     * thread: recount at most every STATUS_COUNT_MS. */
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
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        if (dl->removed)
            continue;
        if (lane_state(dl->lane) == LANE_ACTIVE)
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
dispatch_free(struct dispatch *d)
{
    if (d == NULL)
        return;
    while (d->inflight)
        http_cancel(d->inflight->xfer);
    http_free(d->http);
    store_watch(d->store, NULL, NULL, NULL);
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
    free(d);
}
