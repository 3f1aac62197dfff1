/*
 * dispatch: the scheduler. Due jobs are claimed per lane as its gates allow,
 * sent through http, classified by the provider's dialect, decided by retry
 * and lane policy, and recorded in the store in group commits.
 */
#ifndef SLUICE_DISPATCH_H
#define SLUICE_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

struct config;
struct liveness;
struct store;
struct dispatch;
struct lane;
struct metrics;
struct spend;

/* Start-up recovery (docs/design.md §8): returns to the queue the jobs of
 * daemons that are provably dead (liveness.h: at once when their lock file is
 * free) and those whose lease expired with no registered owner; those of
 * c's providers with idempotency = none fail as unknown_outcome instead
 * (store_set_unsafe_resend). Returns the number of jobs reclaimed, or a
 * negative errno. */
long dispatch_recover(struct store *s, struct liveness *live,
                      const struct config *c);

/* Builds lanes for the config's providers on loop. The store, liveness
 * (this daemon's owner token and heartbeat, beaten and used to judge the
 * others on the housekeeping timer) and config are borrowed and must
 * outlive the dispatcher (see dispatch_reload). Returns NULL with a logged
 * reason (a provider's key is missing). */
struct dispatch *dispatch_new(uv_loop_t *loop, struct store *s,
                              struct liveness *live, const struct config *c);
/* Starts claiming. */
void dispatch_start(struct dispatch *d);
/* Applies a new config: lanes added, changed or removed; in-flight work
 * continues. Returns 0, or a negative errno and the old config stays. */
int dispatch_reload(struct dispatch *d, const struct config *c);
/* Stops claiming; in-flight requests may finish within grace_ms, the rest
 * are aborted and returned to queued (attempt refunded). on_stopped runs
 * once everything is recorded. */
void dispatch_stop(struct dispatch *d, int64_t grace_ms,
                   void (*on_stopped)(void *data), void *data);
/* True when nothing can make progress any more: nothing in flight, nothing
 * buffered, no job due now or later except behind paused lanes. */
bool dispatch_drained(struct dispatch *d);
/* One line: "412 in flight, 18230 queued, flora limit 24, …". Borrowed. */
const char *dispatch_status(struct dispatch *d);
/* Feeds m's counters (requests, failures, spend, commit latency) from now
 * on; NULL stops. m is borrowed and must outlive the dispatcher. */
void dispatch_set_metrics(struct dispatch *d, struct metrics *m);
/* The live lanes (not removed by a reload): the first cap of them into
 * out; returns how many there are. Borrowed until the next reload. */
size_t dispatch_lanes(struct dispatch *d, const struct lane **out,
                      size_t cap);
/* The spend accounts (spend.h), for /metrics. Borrowed. */
struct spend *dispatch_spend(struct dispatch *d);
/* Frees after stop; handles closed, run the loop once more. */
void dispatch_free(struct dispatch *d);

#endif
