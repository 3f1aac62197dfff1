/*
 * Outcomes: job_next (job.c) decides where a job goes; the decision is
 * logged, shown to the lane (its waiting runs) and buffered as a store
 * update for the next group commit (commit.c).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/clock.h"
#include "sluice/cost.h"
#include "sluice/dialect.h"
#include "sluice/http.h"
#include "sluice/lane.h"
#include "sluice/log.h"
#include "sluice/metrics.h"
#include "sluice/outputs.h"
#include "sluice/spend.h"
#include "sluice/storeq.h"

#include "internal.h"

/* One line per handled failure, in CONTRIBUTING.md's shape:
 * "job 42: flora 429 rate_limit_exceeded req_ab12, deferred in 2100 ms
 * (limit 24→16)". Terminal failures are warnings and carry the message. */
static void
log_outcome(const struct req *r, const struct outcome *o, const char *what,
            int64_t delay, const char *lane_change)
{
    char head[320], when[48] = "";
    snprintf(head, sizeof(head), "job %" PRId64 ": %s %d %s %s%s%s", r->job->id,
             r->dl->name, o->http_status, err_class_name(o->cls),
             o->code[0] ? o->code : "-", o->request_id[0] ? " " : "",
             o->request_id);
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
    return cost_from_result(o->result, dl->cost_pointer, dl->token_price, cost);
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
        u.retry_after_ms =
            o->hints.retry_at_ms > now ? o->hints.retry_at_ms - now : 0;
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
     * commit hands the time on to next_check_ms (see on_storeq_commit). */
    if (!job_state_terminal(u.state) && u.run_after < r->dl->recorded_due_ms)
        r->dl->recorded_due_ms = u.run_after;
    storeq_record(d->q, &u);
    free(new_key);
    free_strv(urls);
}

/* An answer: job_next decides, the log says what it decided. */
void
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
                        ? dec.run_after - now
                        : -1,
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
void
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
