/*
 * Group commit: buffered updates go to storeq in one commit, FLUSH_DELAY_MS
 * after the first or at once beyond FLUSH_BATCH. A failed commit keeps
 * everything and is retried; a committed one makes what it gave back
 * claimable.
 */
#include <errno.h>
#include <string.h>

#include "sluice/log.h"
#include "sluice/metrics.h"
#include "sluice/outputs.h"
#include "sluice/storeq.h"

#include "internal.h"

static void on_uv_flush(uv_timer_t *t);

/* Hands what is buffered to storeq for one commit; on_storeq_commit follows
 * (at once on SQLite, from the database thread on a server). */
void
commit_now(struct dispatch *d)
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
void
on_storeq_commit(int rc, size_t n, double seconds, void *arg)
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
        dispatch_maybe_stopped(d);
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
        pump_schedule(d, wake);
    if (d->flush_again) {
        d->flush_again = false;
        commit_now(d); /* what came meanwhile has waited long enough */
    }
    dispatch_maybe_stopped(d);
}

static void
on_uv_flush(uv_timer_t *t)
{
    commit_now(t->data);
}

void
commit_schedule(struct dispatch *d)
{
    if (d->flush_scheduled)
        return;
    if (storeq_pending(d->q) >= FLUSH_BATCH) {
        commit_now(d);
        return;
    }
    d->flush_scheduled = true;
    uv_timer_start(&d->flush_timer, on_uv_flush, FLUSH_DELAY_MS, 0);
}
