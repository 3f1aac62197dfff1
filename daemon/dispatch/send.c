/*
 * A request: built from a claimed job (the body, the idempotency key,
 * the lane's headers), refused when it cannot go as stored, sent through
 * http.c, and its answer classified by the dialect and shown to the lane
 * before record.c decides where the job goes.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/budget.h"
#include "sluice/clock.h"
#include "sluice/config.h"
#include "sluice/dialect.h"
#include "sluice/http.h"
#include "sluice/jobspec.h"
#include "sluice/lane.h"
#include "sluice/liveness.h"
#include "sluice/log.h"
#include "sluice/metrics.h"
#include "sluice/runcost.h"
#include "sluice/spend.h"
#include "sluice/url.h"
#include "sluice/xmalloc.h"

#include "internal.h"

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
        h[n++] = xasprintf("%s: %s",
                           dl->idem_name ? dl->idem_name : "Idempotency-Key",
                           j->idempotency_key);
    h[n] = NULL;
    return h;
}

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
    commit_schedule(d);
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

void
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
    int urc = url_resolve(
        dl->base_url, r->is_poll ? (j->poll_url ? j->poll_url : "") : j->path,
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
        commit_schedule(d);
        req_free(r);
        return;
    }
    log_debug("job %" PRId64 ": %s %s %s (attempt %d)", j->id, dl->name,
              hr.method, r->is_poll ? "poll" : "submit", j->attempts);
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
        if (r->is_poll && o.kind == OUTCOME_FAILURE && o.http_status >= 200 &&
            o.http_status < 300 && o.cls != ERR_PROTOCOL) {
            lane_view.kind = OUTCOME_SUCCESS;
            lane_view.cls = ERR_NONE;
        }
        bool changed = lane_on_done(r->dl->lane, &r->ticket, &lane_view, now,
                                    clock_random());
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
    commit_schedule(d);
    if (d->stopping)
        dispatch_maybe_stopped(d);
    else
        pump_schedule(d, 0);
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
    log_debug("job %" PRId64 ": %s held back by its budget", j->id, dl->name);
    record_event(d, r, &ev);
    /* due again at once, yet not a wake-up like a retry's: once it is
     * committed, the lane looks again unless it waits at a budget (then
     * an end does) */
    dl->recorded_due_ms = due;
    dl->gave_back = true;
    commit_schedule(d);
    req_free(r);
}

/* Sends a claimed job within the spend caps (docs/design.md §13): a
 * submission under a cap is expected to cost what its provider states
 * for it (runcost.h; the first job of a technique waits for the answer),
 * else the running mean, and goes only when that fits (spend_reserve);
 * otherwise it is given back. Polls always go. Returns whether it went. */
bool
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
