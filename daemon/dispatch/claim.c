/*
 * A claim: asked of storeq for one lane at a time, answered inline on
 * SQLite or from the database thread on PostgreSQL. The answer sends the
 * jobs within the permits granted and the spend caps, and says when the
 * lane looks again.
 */
#include <errno.h>
#include <stdlib.h>

#include "sluice/clock.h"
#include "sluice/dialect.h"
#include "sluice/lane.h"
#include "sluice/liveness.h"
#include "sluice/metrics.h"
#include "sluice/runcost.h"
#include "sluice/spend.h"
#include "sluice/store.h"
#include "sluice/storeq.h"
#include "sluice/xmalloc.h"

#include "internal.h"

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
release_claimed(struct dispatch *d, struct dlane *dl, struct storeq_answer *a,
                int64_t now)
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
        dispatch_maybe_stopped(d);
    } else if (dl->repump) {
        dl->repump = false;
        pump_schedule(d, 0);
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
        pump_schedule(
            d, x->now + (a->rc == -EBUSY ? FLUSH_RETRY_MS : STORE_TROUBLE_MS));
    for (int i = 0; i < a->got; i++)
        send_job(d, x->dl, a->jobs[i]);
    claim_done(x);
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
        pump_schedule(d, x->now + FLUSH_RETRY_MS); /* locked: look again */
        claim_done(x);
        return;
    }
    dl->slots_put = x->in_flight + a->granted;
    dl->unmet_put = a->granted < n;
    if (a->granted < n && a->wake_ms > 0)
        pump_schedule(d, a->wake_ms);
    if (a->granted == 0) {
        claim_done(x);
        return;
    }
    n = a->granted;
    if (a->rc == 0)
        metrics_observe_claim(d->metrics, a->claim_s);
    else /* locked: shortly; a full disk or an I/O error: not before it
          * may have passed */
        pump_schedule(
            d, x->now + (a->rc == -EBUSY ? FLUSH_RETRY_MS : STORE_TROUBLE_MS));
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
            pump_schedule(d, dl->next_check_ms);
        dl->budget_wait = true;
    } else if (a->rc == 0 && a->got < n) {
        int64_t due = a->due_ms < 0 ? x->now + FLUSH_RETRY_MS : a->due_ms;
        dl->next_check_ms = due > 0 ? due : NEVER;
        if (dl->next_check_ms != NEVER)
            pump_schedule(d, dl->next_check_ms);
    } else if (a->rc == 0 && x->lane_wake > 0) {
        pump_schedule(d, x->lane_wake);
    }
    claim_done(x);
}

/* Asks for n jobs of dl (the answer sends them): with polls, waiting
 * runs due for a poll only; else permits first (taken alone on the
 * database too: a daemon that starts beside this one must find what this
 * one holds, from its first claim on), then polls of runs already sent
 * and new jobs as far as the provider's and its batches' budgets allow. */
void
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
        permits_view_of(dl, &c.view);
        c.allowed =
            spend_admit(d->spend, dl->name, n,
                        runcost_least(d->runcost, dl->name), &c.held, &c.nheld);
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
