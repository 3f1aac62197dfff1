/*
 * runcost: the run costs providers state before a run (docs/design.md §13),
 * FLORA's run_cost on GET /techniques/{slug}: the first expected cost of a
 * job under a budget. Each stated cost is learned once per provider and
 * technique, on the loop, through http.c, with the provider's own headers
 * and only to its own origin, and kept until the provider's config is
 * reloaded. A cost that cannot be learned is said once in the log; its
 * jobs are then expected to cost the running mean (budget.h).
 */
#ifndef SLUICE_RUNCOST_H
#define SLUICE_RUNCOST_H

#include <stdbool.h>
#include <stdint.h>

struct dialect;
struct http;
struct runcost;

/* Called on the loop when a cost of provider was learned or given up
 * (a fetch ended), so that jobs held for it may go. */
typedef void (*runcost_done_fn)(const char *provider, void *arg);

/* Where and how to ask one provider; all borrowed for the call. */
struct runcost_source {
    const char *provider;
    const struct dialect *dialect;
    const char *base_url;
    const char *const *headers; /* its auth and extra headers */
    int64_t timeout_ms;
    int64_t connect_timeout_ms;
};

enum runcost_state {
    RUNCOST_KNOWN,   /* the provider states it: *cost */
    RUNCOST_PENDING, /* being fetched: ask again after done_fn */
    RUNCOST_NONE,    /* none stated, or it could not be learned */
};

/* A new cache fetching through h; done(provider, arg) after each fetch. */
struct runcost *runcost_new(struct http *h, runcost_done_fn done, void *arg);
/* Cancels the fetches (done is not called) and frees; NULL accepted. */
void runcost_free(struct runcost *rc);

/* The stated cost of a job sent to job_path at src: known, pending (the
 * first ask starts the fetch), or none. */
enum runcost_state runcost_lookup(struct runcost *rc,
                                  const struct runcost_source *src,
                                  const char *job_path, double *cost);
/* Whether a fetch of provider's is under way. */
bool runcost_pending(const struct runcost *rc, const char *provider);
/* The lowest cost provider is known to state, or -1 when none is. */
double runcost_least(const struct runcost *rc, const char *provider);
/* Forgets what provider states (NULL: every provider), cancelling its
 * fetches without calling done: a reloaded config may name another
 * origin or key. */
void runcost_forget(struct runcost *rc, const char *provider);

#endif
