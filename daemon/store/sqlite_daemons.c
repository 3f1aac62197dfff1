/*
 * sqlite_daemons: daemons on one SQLite database (sqlite.c): their
 * registration and liveness, leases taken back from the expired and the
 * dead, permits shared between them, and the providers rows.
 */
#include <errno.h>
#include <stdlib.h>

#include "sq.h"
#include "sluice/log.h"
#include "sluice/permit.h"
#include "sluice/xmalloc.h"

/* Returning an expired (or a dead owner's) running job to the queue. The
 * attempt stays charged (docs/design.md §3); a job whose every attempt ended in
 * a lost lease has no attempt left and fails here, or it would be claimed
 * beyond max_attempts. ?1 is now. */
#define RECLAIM_RUNNING_SET                                                    \
    "UPDATE jobs SET "                                                         \
    "state = CASE WHEN attempts >= max_attempts THEN 'failed' "                \
    "  ELSE 'queued' END, "                                                    \
    "error_class = CASE WHEN attempts >= max_attempts THEN 'timeout' "         \
    "  ELSE error_class END, "                                                 \
    "error_code = CASE WHEN attempts >= max_attempts "                         \
    "  THEN 'lease_expired' ELSE error_code END, "                             \
    "error_message = CASE WHEN attempts >= max_attempts "                      \
    "  THEN 'claim lease lost with no attempt left (daemon stopped "           \
    "mid-request?)' ELSE error_message END, "                                  \
    "finished_at = CASE WHEN attempts >= max_attempts THEN ?1 "                \
    "  ELSE NULL END, "                                                        \
    "run_after = ?1, lease_until = NULL, lease_owner = NULL, "                 \
    "updated_at = ?1 "

/* A running job of a provider without idempotency whose lease is taken
 * back: its request may have reached the provider, and sending it again
 * could run it twice, so it fails for the operator (docs/design.md §4).
 * Our crash is not the job's fault: the attempt is given back. ?1 is now,
 * ?3 the JSON array of such providers (store_set_unsafe_resend). */
#define RECLAIM_UNKNOWN_SET                                                    \
    "UPDATE jobs SET state = 'failed', attempts = MAX(attempts - 1, 0), "      \
    "error_class = 'unknown_outcome', error_code = 'lease_lost', "             \
    "error_message = 'the request may have reached the provider, which "       \
    "takes no idempotency key: not sent again; check with the provider, "      \
    "then sluicectl retry', http_status = NULL, request_id = NULL, "           \
    "finished_at = ?1, lease_until = NULL, lease_owner = NULL, "               \
    "updated_at = ?1 "                                                         \
    "WHERE provider IN (SELECT value FROM json_each(?3)) "                     \
    "AND state = 'running' "

/* Statements prepared at open (sqlite_conn.c). */
const char *const sqlite_daemons_sql[ST_COUNT] = {
    [ST_UNKNOWN_EXPIRED] =
        RECLAIM_UNKNOWN_SET "AND lease_until <= ?1 " UNREGISTERED_OWNER,
    [ST_UNKNOWN_OWNER] =
        RECLAIM_UNKNOWN_SET "AND lease_until IS NOT NULL AND lease_owner = ?2",
    [ST_RECLAIM_RUNNING] = RECLAIM_RUNNING_SET
    "WHERE state = 'running' AND lease_until <= ?1 " UNREGISTERED_OWNER,
    [ST_RECLAIM_POLLS] =
        "UPDATE jobs SET lease_until = NULL, lease_owner = NULL "
        "WHERE state = 'waiting' AND lease_until <= ?1 " UNREGISTERED_OWNER,
    [ST_RECLAIM_OWNER_RUNNING] =
        RECLAIM_RUNNING_SET "WHERE state = 'running' "
                            "AND lease_until IS NOT NULL AND lease_owner = ?2",
    [ST_RECLAIM_OWNER_POLLS] =
        "UPDATE jobs SET lease_until = NULL, lease_owner = NULL "
        "WHERE state = 'waiting' AND lease_until IS NOT NULL "
        "AND lease_owner = ?2",
    [ST_DAEMON_REGISTER] =
        "INSERT INTO daemons (owner, host, pid, started_at, heartbeat_at) "
        "VALUES (?1, ?2, ?3, ?4, ?4)",
    /* + 1: a beat changes the row even when the wall clock went back. */
    [ST_DAEMON_BEAT] = "UPDATE daemons SET heartbeat_at = "
                       "MAX(?2, heartbeat_at + 1) WHERE owner = ?1",
    [ST_DAEMONS] = "SELECT owner, host, pid, started_at, heartbeat_at "
                   "FROM daemons ORDER BY owner",
    [ST_DAEMON_HEARTBEAT] = "SELECT heartbeat_at FROM daemons WHERE owner = ?1",
    /* ?2 like the lease statements that run beside it (daemon_reap) */
    [ST_DAEMON_DELETE] = "DELETE FROM daemons WHERE owner = ?2",
    [ST_PERMITS_DELETE] = "DELETE FROM permits WHERE owner = ?2",
    [ST_PERMIT_VIEW] = "INSERT INTO permits (provider, owner, cap, rate) "
                       "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (provider, owner) "
                       "DO UPDATE SET cap = excluded.cap, rate = excluded.rate",
    /* Live daemons only: a row whose owner is gone holds nothing. */
    [ST_PERMIT_POOL] =
        "SELECT COALESCE(SUM(CASE WHEN p.owner <> ?2 THEN p.slots END), 0), "
        "MIN(NULLIF(p.cap, 0)), MIN(NULLIF(p.rate, 0)), "
        "COUNT(CASE WHEN p.owner <> ?2 AND (p.slots > 0 OR p.unmet > 0) "
        "  THEN 1 END), "
        "COUNT(CASE WHEN p.owner <> ?2 AND p.unmet > 0 THEN 1 END) "
        "FROM permits p JOIN daemons d ON d.owner = p.owner "
        "WHERE p.provider = ?1",
    [ST_PERMIT_SET] = "UPDATE permits SET slots = ?3, unmet = ?4 "
                      "WHERE provider = ?1 AND owner = ?2",
    [ST_BUCKET_GET] = "SELECT rate_tokens, rate_tokens_at FROM providers "
                      "WHERE name = ?1",
    [ST_BUCKET_PUT] =
        "INSERT INTO providers (name, updated_at, rate_tokens, "
        "rate_tokens_at) VALUES (?1, ?3, ?2, ?3) ON CONFLICT (name) "
        "DO UPDATE SET rate_tokens = excluded.rate_tokens, "
        "rate_tokens_at = excluded.rate_tokens_at",
    [ST_PROVIDER_PUT] =
        "INSERT INTO providers (name, state, reason, concurrency_limit, "
        "in_flight, pause_until, sent, succeeded, failed, throttled, "
        "updated_at, rate_per_s, rate_source, token_limit, "
        "tokens_available) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, "
        "?11, ?12, ?13, ?14, ?15) "
        "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
        "reason = excluded.reason, "
        "concurrency_limit = excluded.concurrency_limit, "
        "in_flight = excluded.in_flight, pause_until = excluded.pause_until, "
        "sent = excluded.sent, succeeded = excluded.succeeded, "
        "failed = excluded.failed, throttled = excluded.throttled, "
        "updated_at = excluded.updated_at, rate_per_s = excluded.rate_per_s, "
        "rate_source = excluded.rate_source, "
        "token_limit = excluded.token_limit, "
        "tokens_available = excluded.tokens_available",
    [ST_PROVIDER_GET] =
        "SELECT concurrency_limit, resume_requested_at FROM providers "
        "WHERE name = ?1",
    [ST_PROVIDER_RESUME] =
        "UPDATE providers SET resume_requested_at = ?2 WHERE name = ?1",
};

void
sqlite_set_unsafe_resend(struct store *base, const char *const *providers,
                         size_t n)
{
    struct sqlite_store *s = sq(base);

    free(s->unsafe_json);
    s->unsafe_json = backend_names_json(providers, n);
}

/* Fails the running jobs of unsafe providers among those a reclaim takes
 * back (RECLAIM_UNKNOWN_SET); owner NULL: expired leases. Adds to *n. */
static int
reclaim_unknown(struct sqlite_store *s, const char *owner, int64_t now_ms,
                long *n)
{
    if (s->unsafe_json == NULL)
        return 0;
    sqlite3_stmt *st = stmt(s, owner ? ST_UNKNOWN_OWNER : ST_UNKNOWN_EXPIRED);
    sqlite3_bind_int64(st, 1, now_ms);
    bind_text(st, 2, owner);
    bind_text(st, 3, s->unsafe_json);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "fail unknown outcomes");
    long k = sqlite3_changes(s->db);
    if (k > 0)
        log_warnx("store: %ld running jobs of providers without idempotency "
                  "taken back: failed as unknown_outcome, not sent again",
                  k);
    *n += k;
    return 0;
}

int
sqlite_reclaim_expired(struct store *base, int64_t now_ms, long *n)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    int rc;
    long unknown = 0;

    *n = 0;
    if ((rc = reclaim_unknown(s, NULL, now_ms, &unknown)) < 0)
        return rc;
    st = stmt(s, ST_RECLAIM_RUNNING);
    sqlite3_bind_int64(st, 1, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "reclaim expired leases");
    *n = sqlite3_changes(s->db) + unknown;
    st = stmt(s, ST_RECLAIM_POLLS);
    sqlite3_bind_int64(st, 1, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "free expired poll leases");
    st = ostmt(s, OS_RELEASE_EXPIRED);
    sqlite3_bind_int64(st, 1, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "free expired download leases");
    return 0;
}

int
sqlite_daemon_register(struct store *base, const struct daemon_row *d)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_DAEMON_REGISTER);

    bind_text(st, 1, d->owner);
    bind_text(st, 2, d->host);
    sqlite3_bind_int64(st, 3, d->pid);
    sqlite3_bind_int64(st, 4, d->started_at);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "register daemon");
}

int
sqlite_daemon_beat(struct store *base, const char *owner, int64_t now_ms,
                   bool *present)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_DAEMON_BEAT);

    *present = true;
    bind_text(st, 1, owner);
    sqlite3_bind_int64(st, 2, now_ms);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "heartbeat");
    *present = sqlite3_changes(s->db) == 1;
    return 0;
}

int
sqlite_daemons(struct store *base, struct daemon_row **rows, size_t *n)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_DAEMONS);
    struct daemon_row *v = NULL;
    size_t cap = 0;
    int rc;

    *n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 4;
            v = xrealloc(v, cap * sizeof(*v));
        }
        struct daemon_row *d = &v[(*n)++];
        d->owner = column_strdup(st, 0);
        d->host = column_strdup(st, 1);
        d->pid = (long)sqlite3_column_int64(st, 2);
        d->started_at = sqlite3_column_int64(st, 3);
        d->heartbeat_at = sqlite3_column_int64(st, 4);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        store_daemons_free(v, *n);
        *n = 0;
        *rows = NULL;
        return sqlite_fail(s, rc, "daemons");
    }
    *rows = v;
    return 0;
}

/* Runs a statement about owner's row or leases: ?1 now, ?2 owner. */
static int
owner_stmt(struct sqlite_store *s, enum stmt id, const char *owner, int64_t now,
           const char *what)
{
    sqlite3_stmt *st = stmt(s, id);

    sqlite3_bind_int64(st, 1, now);
    bind_text(st, 2, owner);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, what);
}

int
sqlite_daemon_reap(struct store *base, const char *owner, int64_t seen,
                   int64_t now_ms, long *n)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    int rc;

    *n = 0;
    if ((rc = exec_stmt(s, ST_BEGIN, "reap: begin")) < 0)
        return rc;
    if (seen != 0) {
        /* The verdict was "no beat since seen": checked again under the
         * write lock, so a beat that raced it wins. */
        st = stmt(s, ST_DAEMON_HEARTBEAT);
        bind_text(st, 1, owner);
        rc = sqlite3_step(st);
        int64_t hb = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            rc = sqlite_fail(s, rc, "reap: heartbeat");
            goto fail;
        }
        if (rc == SQLITE_ROW && hb != seen) {
            rc = -ESTALE;
            goto fail;
        }
    }
    long unknown = 0;
    if ((rc = owner_stmt(s, ST_DAEMON_DELETE, owner, now_ms,
                         "reap: daemon row")) < 0 ||
        (rc = owner_stmt(s, ST_PERMITS_DELETE, owner, now_ms,
                         "reap: permits")) < 0 ||
        (rc = reclaim_unknown(s, owner, now_ms, &unknown)) < 0 ||
        (rc = owner_stmt(s, ST_RECLAIM_OWNER_RUNNING, owner, now_ms,
                         "reap: running jobs")) < 0)
        goto fail;
    *n = sqlite3_changes(s->db) + unknown;
    if ((rc = owner_stmt(s, ST_RECLAIM_OWNER_POLLS, owner, now_ms,
                         "reap: poll leases")) < 0)
        goto fail;
    st = ostmt(s, OS_RELEASE_OWNER);
    bind_text(st, 1, owner);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        rc = sqlite_fail(s, rc, "reap: download leases");
        goto fail;
    }
    if ((rc = exec_stmt(s, ST_COMMIT, "reap: commit")) < 0)
        goto fail;
    return 0;
fail:
    *n = 0;
    sqlite_rollback(&s->base);
    return rc;
}

/* Reads the pool of provider as owner sees it (p->tokens, p->tokens_at
 * from the providers row) inside the caller's transaction. */
static int
permit_pool_read(struct sqlite_store *s, const char *provider,
                 const char *owner, struct permit_pool *p)
{
    sqlite3_stmt *st = stmt(s, ST_PERMIT_POOL);
    int rc;

    *p = (struct permit_pool){0};
    bind_text(st, 1, provider);
    bind_text(st, 2, owner);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        p->others = sqlite3_column_int(st, 0);
        p->cap = sqlite3_column_int(st, 1);
        p->rate = sqlite3_column_double(st, 2);
        p->active = sqlite3_column_int(st, 3);
        p->waiting = sqlite3_column_int(st, 4);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW)
        return sqlite_fail(s, rc, "permits: pool");
    st = stmt(s, ST_BUCKET_GET);
    bind_text(st, 1, provider);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        p->tokens = sqlite3_column_double(st, 0);
        p->tokens_at = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE
               ? 0
               : sqlite_fail(s, rc, "permits: bucket");
}

static int
permit_slots_set(struct sqlite_store *s, const char *provider,
                 const char *owner, int slots, int unmet)
{
    sqlite3_stmt *st = stmt(s, ST_PERMIT_SET);
    bind_text(st, 1, provider);
    bind_text(st, 2, owner);
    sqlite3_bind_int(st, 3, slots);
    sqlite3_bind_int(st, 4, unmet);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "permits: slots");
}

static int
permit_bucket_put(struct sqlite_store *s, const char *provider,
                  const struct permit_pool *p)
{
    sqlite3_stmt *st = stmt(s, ST_BUCKET_PUT);
    bind_text(st, 1, provider);
    sqlite3_bind_double(st, 2, p->tokens);
    sqlite3_bind_int64(st, 3, p->tokens_at);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "permits: bucket");
}

int
sqlite_permit_take(struct store *base, const char *provider, const char *owner,
                   const struct permit_view *view, int in_flight, int want,
                   int64_t now_ms, int *granted, int64_t *wake_ms)
{
    struct sqlite_store *s = sq(base);
    struct permit_pool pool;
    sqlite3_stmt *st;
    int rc;

    *granted = 0;
    *wake_ms = 0;
    if ((rc = exec_stmt(s, ST_BEGIN, "permits: begin")) < 0)
        return rc;
    st = stmt(s, ST_PERMIT_VIEW);
    bind_text(st, 1, provider);
    bind_text(st, 2, owner);
    sqlite3_bind_int(st, 3, view->cap);
    sqlite3_bind_double(st, 4, view->rate);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        rc = sqlite_fail(s, rc, "permits: view");
        goto fail;
    }
    if ((rc = permit_pool_read(s, provider, owner, &pool)) < 0)
        goto fail;
    int n = permit_grant(&pool, in_flight, want, now_ms, wake_ms);
    if ((rc = permit_slots_set(s, provider, owner, in_flight + n, want - n)) <
            0 ||
        (pool.rate > 0 && (rc = permit_bucket_put(s, provider, &pool)) < 0) ||
        (rc = exec_stmt(s, ST_COMMIT, "permits: commit")) < 0)
        goto fail;
    *granted = n;
    return 0;
fail:
    *wake_ms = 0;
    sqlite_rollback(&s->base);
    return rc;
}

int
sqlite_permit_put(struct store *base, const char *provider, const char *owner,
                  int slots, int tokens)
{
    struct sqlite_store *s = sq(base);
    struct permit_pool pool;
    int rc;

    if (tokens <= 0)
        return permit_slots_set(s, provider, owner, slots, 0);
    if ((rc = exec_stmt(s, ST_BEGIN, "permits: begin")) < 0)
        return rc;
    if ((rc = permit_pool_read(s, provider, owner, &pool)) < 0 ||
        (rc = permit_slots_set(s, provider, owner, slots, 0)) < 0)
        goto fail;
    if (permit_return(&pool, tokens) &&
        (rc = permit_bucket_put(s, provider, &pool)) < 0)
        goto fail;
    if ((rc = exec_stmt(s, ST_COMMIT, "permits: commit")) < 0)
        goto fail;
    return 0;
fail:
    sqlite_rollback(&s->base);
    return rc;
}

int
sqlite_provider_put(struct store *base, const struct provider_row *p,
                    int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_PROVIDER_PUT);
    int rc;

    bind_text(st, 1, p->name);
    bind_text(st, 2, p->state ? p->state : "active");
    bind_text(st, 3, p->reason);
    sqlite3_bind_int(st, 4, p->concurrency_limit);
    sqlite3_bind_int(st, 5, p->in_flight);
    bind_int64_or_null(st, 6, p->pause_until);
    sqlite3_bind_int64(st, 7, p->sent);
    sqlite3_bind_int64(st, 8, p->succeeded);
    sqlite3_bind_int64(st, 9, p->failed);
    sqlite3_bind_int64(st, 10, p->throttled);
    sqlite3_bind_int64(st, 11, now_ms);
    if (p->rate_per_s > 0) {
        sqlite3_bind_double(st, 12, p->rate_per_s);
        bind_text(st, 13, p->rate_source);
    } else {
        sqlite3_bind_null(st, 12);
        sqlite3_bind_null(st, 13);
    }
    bind_int64_or_null(st, 14, p->token_limit);
    if (p->token_limit > 0)
        sqlite3_bind_int64(st, 15, p->tokens_available);
    else
        sqlite3_bind_null(st, 15);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "provider row");
}

int
sqlite_provider_get(struct store *base, const char *name, int *limit,
                    int64_t *resume_requested_at)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_PROVIDER_GET);
    int rc;

    *limit = 0;
    *resume_requested_at = 0;
    bind_text(st, 1, name);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *limit = sqlite3_column_int(st, 0);
        *resume_requested_at = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE
               ? 0
               : sqlite_fail(s, rc, "provider row");
}

int
sqlite_provider_request_resume(struct store *base, const char *name,
                               int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_PROVIDER_RESUME);
    int rc;

    bind_text(st, 1, name);
    sqlite3_bind_int64(st, 2, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "resume request");
    return sqlite3_changes(s->db) == 1 ? 0 : -ENOENT;
}
