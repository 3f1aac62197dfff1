/*
 * storeq: the daemon's claim/commit path (claims with the permits they
 * take, permits given back, group commits of outcomes), asked from the
 * loop thread and answered on it, wherever the database runs them.
 *
 * The threading rule, stated once for sluiced: on a database server
 * (PostgreSQL) these calls run on one database thread with a store
 * connection of its own, so the loop never waits for a round trip; on a
 * SQLite file they run on the loop's own store, inline, before the call
 * returns (a local file answers in microseconds; a writer thread bought
 * nothing there, bench/README.md). Either way every storeq_* call is made
 * on the loop thread and every callback runs on it; the caller never
 * sees a thread or a lock, and need not know which it got. Everything
 * else of the store (housekeeping, reads, the wakeups of store_watch)
 * stays on the loop's store.
 */
#ifndef SLUICE_STOREQ_H
#define SLUICE_STOREQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "sluice/job.h"
#include "sluice/permit.h"
#include "sluice/store.h"

struct storeq;

/* Where the calls run: AUTO picks by the database (a thread for a
 * server, inline for a file); the others are for tests. */
enum storeq_mode { STOREQ_AUTO, STOREQ_INLINE, STOREQ_THREAD };

/* One claim as the pump asks it; strings and held are copied. Unless
 * polls_only, it first takes want permits (store_permit_take with view
 * and in_flight), claims at most what was granted, gives back what it
 * did not claim (store_permit_put with in_flight + jobs claimed), and,
 * when fewer jobs came than granted and the budgets did not cut it short,
 * looks up when the next one falls due (store_next_due). */
struct storeq_claim {
    const char *provider;
    const char *owner;
    int64_t now_ms, lease_ms;
    int want;               /* jobs the lane admits, > 0 */
    bool polls_only;        /* waiting runs due for a poll only
                               (store_claim_polls): no permits */
    bool with_polls;        /* queued and waiting jobs (store_claim), not
                               only queued ones (store_claim_new) */
    struct permit_view view;
    int in_flight;          /* requests of ours out at the ask */
    /* the spend caps (spend_admit): at most allowed jobs that are not
     * polls, none of the batches held[0..nheld) */
    int allowed;
    const char *const *held;
    size_t nheld;
};

/* The answer. jobs[0..got) are the callee's (job_free each); the rest is
 * borrowed for the callback. */
struct storeq_answer {
    int rc;              /* 0, or the failing step's negative errno
                            (-EBUSY: locked, ask again shortly) */
    bool took;           /* the permits were taken (granted is valid) */
    int granted;         /* permits granted (want for polls_only) */
    int64_t wake_ms;     /* when more may be granted (store_permit_take) */
    struct job **jobs;
    int got;
    bool capped;         /* the budgets kept the claim short */
    bool put;            /* unused permits given back: our slots are
                            in_flight + got */
    int64_t due_ms;      /* fewer than granted came, not capped: the next
                            due job (0 none), -1 when the look-up failed */
    double claim_s;      /* time in the claim statements */
};

typedef void (*storeq_claim_cb)(struct storeq_answer *a, void *arg);
/* After each commit storeq_commit asked for: rc 0 (n updates written,
 * taking seconds) or a negative errno (nothing written; the updates are
 * kept for the next storeq_commit). */
typedef void (*storeq_commit_cb)(int rc, size_t n, double seconds,
                                 void *arg);
/* After a storeq_put: rc 0 or a negative errno. */
typedef void (*storeq_put_cb)(int rc, void *arg);

/* Starts the claim/commit path of the daemon whose loop store is s
 * (borrowed; opened on database). The thread opens database again for
 * itself (store_open) with busy_timeout_ms (store_set_busy_timeout).
 * on_commit(rc, n, seconds, arg) runs after every commit. Returns 0 or a
 * negative errno (nothing started). */
int storeq_open(uv_loop_t *loop, struct store *s, const char *database,
                enum storeq_mode mode, int busy_timeout_ms,
                storeq_commit_cb on_commit, void *arg, struct storeq **out);
/* Whether the calls run on a thread of their own. */
bool storeq_threaded(const struct storeq *q);
/* Buffers an update for the next commit (store_record's semantics,
 * copied). Never fails. */
void storeq_record(struct storeq *q, const struct job_update *u);
/* Updates recorded and not yet written. */
size_t storeq_pending(const struct storeq *q);
/* Commits what is recorded, and what a failed commit kept, in one
 * transaction (store_flush); on_commit follows (before this returns when
 * inline). One at a time: call again only once on_commit has run. */
void storeq_commit(struct storeq *q);
/* Asks for a claim; cb(answer, arg) runs once, on the loop thread: after
 * the claim ran on the database thread, or before storeq_claim returns
 * when inline. */
void storeq_claim(struct storeq *q, const struct storeq_claim *c,
                  storeq_claim_cb cb, void *arg);
/* Sets owner's permits of provider (store_permit_put; strings copied);
 * cb, which may be NULL, runs as storeq_claim's does. */
void storeq_put(struct storeq *q, const char *provider, const char *owner,
                int slots, int tokens, storeq_put_cb cb, void *arg);
/* Claims, puts and commits asked whose answer has not run yet. */
int storeq_busy(const struct storeq *q);
/* Stops: the thread commits what is recorded (store_close's last try),
 * answers still due are dropped (claimed jobs go back by their lease, as
 * after a crash), its store is closed. The loop's store is left as it
 * is. NULL is a no-op. Call on the loop thread, not from a callback. */
void storeq_close(struct storeq *q);

#endif
