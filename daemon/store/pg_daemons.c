/*
 * pg_daemons: what the daemons on one PostgreSQL database share
 * (postgres.c): their rows in daemons (owner token, heartbeat), the
 * leases taken back from a dead one or an expired unregistered owner,
 * the permits of each provider's limits (permit.c decides, this file
 * locks and stores), and the provider rows the lanes publish.
 */
#include <errno.h>
#include <stdlib.h>

#include "pg.h"
#include "sluice/log.h"
#include "sluice/permit.h"
#include "sluice/xmalloc.h"

/* As RECLAIM_RUNNING_SET of sqlite_daemons.c; $1 is now. */
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
    "finished_at = CASE WHEN attempts >= max_attempts THEN $1::bigint "        \
    "  ELSE NULL END, "                                                        \
    "run_after = $1::bigint, lease_until = NULL, lease_owner = NULL, "         \
    "updated_at = $1::bigint "

/* As RECLAIM_UNKNOWN_SET of sqlite_daemons.c: a running job of a provider
 * without idempotency taken back fails as unknown_outcome, its attempt given
 * back. $1 is now, $2 the owner (NULL for expired leases), $3 the JSON array of
 * such providers. */
#define RECLAIM_UNKNOWN_SET                                                    \
    "UPDATE jobs SET state = 'failed', "                                       \
    "attempts = GREATEST(attempts - 1, 0), "                                   \
    "error_class = 'unknown_outcome', error_code = 'lease_lost', "             \
    "error_message = 'the request may have reached the provider, which "       \
    "takes no idempotency key: not sent again; check with the provider, "      \
    "then sluicectl retry', http_status = NULL, request_id = NULL, "           \
    "finished_at = $1::bigint, lease_until = NULL, lease_owner = NULL, "       \
    "updated_at = $1::bigint "                                                 \
    "WHERE provider IN (SELECT json_array_elements_text($3::json)) "

/* Statements prepared on every connection (pg_conn.c). */
const char *const pg_daemons_sql[P_COUNT] = {
    [P_UNKNOWN_EXPIRED] = RECLAIM_UNKNOWN_SET
    "AND lease_until <= $1::bigint AND $2::text IS NULL " UNREGISTERED_OWNER,
    [P_UNKNOWN_OWNER] = RECLAIM_UNKNOWN_SET
    "AND lease_until IS NOT NULL AND lease_owner = $2::text",
    [P_RECLAIM_RUNNING] = RECLAIM_RUNNING_SET
    "WHERE state = 'running' AND lease_until <= $1::bigint " UNREGISTERED_OWNER,
    [P_RECLAIM_POLLS] =
        "UPDATE jobs SET lease_until = NULL, lease_owner = NULL "
        "WHERE state = 'waiting' AND lease_until <= "
        "$1::bigint " UNREGISTERED_OWNER,
    [P_RECLAIM_OWNER_RUNNING] =
        RECLAIM_RUNNING_SET "WHERE state = 'running' "
                            "AND lease_until IS NOT NULL "
                            "AND lease_owner = $2::text",
    [P_RECLAIM_OWNER_POLLS] =
        "UPDATE jobs SET lease_until = NULL, lease_owner = NULL "
        "WHERE state = 'waiting' AND lease_until IS NOT NULL "
        "AND lease_owner = $2::text AND $1::bigint IS NOT NULL",
    [P_OUT_RELEASE_EXPIRED] =
        "UPDATE outputs SET lease_until = NULL, lease_owner = NULL "
        "WHERE lease_until <= $1::bigint",
    [P_OUT_RELEASE_OWNER] =
        "UPDATE outputs SET lease_until = NULL, lease_owner = NULL "
        "WHERE lease_until IS NOT NULL AND lease_owner = $2::text "
        "AND $1::bigint IS NOT NULL",
    [P_DAEMON_REGISTER] =
        "INSERT INTO daemons (owner, host, pid, started_at, heartbeat_at) "
        "VALUES ($1::text, $2::text, $3::bigint, $4::bigint, $4::bigint)",
    /* + 1: a beat changes the row even when the wall clock went back. */
    [P_DAEMON_BEAT] = "UPDATE daemons SET heartbeat_at = "
                      "GREATEST($2::bigint, heartbeat_at + 1) "
                      "WHERE owner = $1::text",
    [P_DAEMONS] = "SELECT owner, host, pid, started_at, heartbeat_at "
                  "FROM daemons ORDER BY owner",
    /* FOR UPDATE: a beat waits for the verdict's transaction, or the
     * verdict sees the beat. */
    [P_DAEMON_HEARTBEAT] = "SELECT heartbeat_at FROM daemons "
                           "WHERE owner = $1::text FOR UPDATE",
    [P_DAEMON_DELETE] = "DELETE FROM daemons WHERE owner = $2::text "
                        "AND $1::bigint IS NOT NULL",
    [P_PERMITS_DELETE] = "DELETE FROM permits WHERE owner = $2::text "
                         "AND $1::bigint IS NOT NULL",
    [P_PERMIT_VIEW] =
        "INSERT INTO permits (provider, owner, cap, rate) "
        "VALUES ($1::text, $2::text, $3::int, $4::double precision) "
        "ON CONFLICT (provider, owner) "
        "DO UPDATE SET cap = excluded.cap, rate = excluded.rate",
    /* Live daemons only: a row whose owner is gone holds nothing. */
    [P_PERMIT_POOL] =
        "SELECT COALESCE(SUM(CASE WHEN p.owner <> $2::text THEN p.slots END), "
        "0), MIN(NULLIF(p.cap, 0)), MIN(NULLIF(p.rate, 0)), "
        "COUNT(CASE WHEN p.owner <> $2::text "
        "  AND (p.slots > 0 OR p.unmet > 0) THEN 1 END), "
        "COUNT(CASE WHEN p.owner <> $2::text AND p.unmet > 0 THEN 1 END) "
        "FROM permits p JOIN daemons d ON d.owner = p.owner "
        "WHERE p.provider = $1::text",
    [P_PERMIT_SET] = "UPDATE permits SET slots = $3::int, unmet = $4::int "
                     "WHERE provider = $1::text AND owner = $2::text",
    [P_BUCKET_ROW] = "INSERT INTO providers (name, updated_at) "
                     "VALUES ($1::text, $2::bigint) "
                     "ON CONFLICT (name) DO NOTHING",
    /* The takes of one provider queue on this lock. */
    [P_BUCKET_LOCK] = "SELECT rate_tokens, rate_tokens_at FROM providers "
                      "WHERE name = $1::text FOR UPDATE",
    [P_BUCKET_PUT] = "UPDATE providers SET rate_tokens = $2::double "
                     "precision, rate_tokens_at = $3::bigint "
                     "WHERE name = $1::text",
    [P_PROVIDER_PUT] =
        "INSERT INTO providers (name, state, reason, concurrency_limit, "
        "in_flight, pause_until, sent, succeeded, failed, throttled, "
        "updated_at, rate_per_s, rate_source, token_limit, tokens_available) "
        "VALUES ($1::text, $2::text, $3::text, $4::int, "
        "$5::int, $6::bigint, $7::bigint, $8::bigint, $9::bigint, "
        "$10::bigint, $11::bigint, $12::float8, $13::text, $14::bigint, "
        "$15::bigint) "
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
    [P_PROVIDER_GET] =
        "SELECT concurrency_limit, COALESCE(resume_requested_at, 0) "
        "FROM providers WHERE name = $1::text",
    [P_PROVIDER_RESUME] = "UPDATE providers SET resume_requested_at = "
                          "$2::bigint WHERE name = $1::text",
};

void
pg_set_unsafe_resend(struct store *base, const char *const *providers, size_t n)
{
    struct pg_store *s = pq(base);

    free(s->unsafe_json);
    s->unsafe_json = backend_names_json(providers, n);
}

/* Fails the running jobs of unsafe providers a reclaim takes back; owner
 * NULL: expired leases. Adds to *n. */
static int
pg_reclaim_unknown(struct pg_store *s, const char *owner, int64_t now_ms,
                   long *n)
{
    struct params p = {0};
    long k = 0;
    int rc;

    if (s->unsafe_json == NULL)
        return 0;
    p_int(&p, now_ms);
    p_text(&p, owner);
    p_text(&p, s->unsafe_json);
    rc = pg_run_changes(s, owner ? P_UNKNOWN_OWNER : P_UNKNOWN_EXPIRED, &p,
                        "fail unknown outcomes", &k);
    if (rc < 0)
        return rc;
    if (k > 0)
        log_warnx("store: %ld running jobs of providers without idempotency "
                  "taken back: failed as unknown_outcome, not sent again",
                  k);
    *n += k;
    return 0;
}

int
pg_reclaim_expired(struct store *base, int64_t now_ms, long *n)
{
    struct pg_store *s = pq(base);
    struct params p = {0};
    long unknown = 0;
    int rc;

    *n = 0;
    p_int(&p, now_ms);
    if ((rc = pg_reclaim_unknown(s, NULL, now_ms, &unknown)) < 0 ||
        (rc = pg_run_changes(s, P_RECLAIM_RUNNING, &p, "reclaim expired leases",
                             n)) < 0 ||
        (rc = pg_run_changes(s, P_RECLAIM_POLLS, &p, "free expired poll leases",
                             NULL)) < 0)
        return rc;
    *n += unknown;
    return pg_run_changes(s, P_OUT_RELEASE_EXPIRED, &p,
                          "free expired download leases", NULL);
}

int
pg_daemon_register(struct store *base, const struct daemon_row *d)
{
    struct params p = {0};

    p_text(&p, d->owner);
    p_text(&p, d->host);
    p_int(&p, d->pid);
    p_int(&p, d->started_at);
    return pg_run_changes(pq(base), P_DAEMON_REGISTER, &p, "register daemon",
                          NULL);
}

int
pg_daemon_beat(struct store *base, const char *owner, int64_t now_ms,
               bool *present)
{
    struct params p = {0};
    long n = 0;
    int rc;

    *present = true;
    p_text(&p, owner);
    p_int(&p, now_ms);
    if ((rc = pg_run_changes(pq(base), P_DAEMON_BEAT, &p, "heartbeat", &n)) < 0)
        return rc;
    *present = n == 1;
    return 0;
}

int
pg_daemons(struct store *base, struct daemon_row **rows, size_t *n)
{
    int err;
    PGresult *r = pg_run(pq(base), P_DAEMONS, NULL, "daemons", &err);
    struct daemon_row *v;

    *rows = NULL;
    *n = 0;
    if (r == NULL)
        return err;
    v = xcalloc((size_t)PQntuples(r) + 1, sizeof(*v));
    for (int i = 0; i < PQntuples(r); i++) {
        v[i].owner = value_strdup(r, i, 0);
        v[i].host = value_strdup(r, i, 1);
        v[i].pid = (long)value_int(r, i, 2);
        v[i].started_at = value_int(r, i, 3);
        v[i].heartbeat_at = value_int(r, i, 4);
    }
    *n = (size_t)PQntuples(r);
    *rows = v;
    PQclear(r);
    return 0;
}

int
pg_daemon_reap(struct store *base, const char *owner, int64_t seen,
               int64_t now_ms, long *n)
{
    struct pg_store *s = pq(base);
    struct params p = {0};
    long unknown = 0;
    int rc;

    *n = 0;
    p_int(&p, now_ms);
    p_text(&p, owner);
    if ((rc = pg_begin(base)) < 0)
        return rc;
    if (seen != 0) {
        /* The verdict was "no beat since seen": checked again with the
         * row locked, so a beat that raced it wins. */
        struct params q = {0};
        int err;
        PGresult *r;

        p_text(&q, owner);
        if ((r = pg_run(s, P_DAEMON_HEARTBEAT, &q, "reap: heartbeat", &err)) ==
            NULL) {
            rc = err;
            goto fail;
        }
        rc = PQntuples(r) > 0 && value_int(r, 0, 0) != seen ? -ESTALE : 0;
        PQclear(r);
        if (rc < 0)
            goto fail;
    }
    if ((rc = pg_run_changes(s, P_DAEMON_DELETE, &p, "reap: daemon row",
                             NULL)) < 0 ||
        (rc = pg_run_changes(s, P_PERMITS_DELETE, &p, "reap: permits", NULL)) <
            0 ||
        (rc = pg_reclaim_unknown(s, owner, now_ms, &unknown)) < 0 ||
        (rc = pg_run_changes(s, P_RECLAIM_OWNER_RUNNING, &p,
                             "reap: running jobs", n)) < 0 ||
        (rc = pg_run_changes(s, P_RECLAIM_OWNER_POLLS, &p, "reap: poll leases",
                             NULL)) < 0 ||
        (rc = pg_run_changes(s, P_OUT_RELEASE_OWNER, &p,
                             "reap: download leases", NULL)) < 0 ||
        (rc = pg_commit(base)) < 0)
        goto fail;
    *n += unknown;
    return 0;
fail:
    *n = 0;
    pg_rollback(base);
    return rc;
}

/* Locks provider's row (made when missing) and reads the pool of the live
 * daemons' permits as owner sees it, inside the caller's transaction. */
static int
pg_permit_pool(struct pg_store *s, const char *provider, const char *owner,
               int64_t now_ms, struct permit_pool *pool)
{
    struct params p = {0}, q = {0};
    PGresult *r;
    int rc, err;

    *pool = (struct permit_pool){0};
    p_text(&p, provider);
    p_int(&p, now_ms);
    if ((rc = pg_run_changes(s, P_BUCKET_ROW, &p, "permits: provider row",
                             NULL)) < 0)
        return rc;
    p_text(&q, provider);
    if ((r = pg_run(s, P_BUCKET_LOCK, &q, "permits: bucket", &err)) == NULL)
        return err;
    if (PQntuples(r) > 0) {
        pool->tokens = value_double(r, 0, 0);
        pool->tokens_at = value_int(r, 0, 1);
    }
    PQclear(r);
    p_text(&q, owner);
    if ((r = pg_run(s, P_PERMIT_POOL, &q, "permits: pool", &err)) == NULL)
        return err;
    if (PQntuples(r) > 0) {
        pool->others = (int)value_int(r, 0, 0);
        pool->cap = (int)value_int(r, 0, 1);
        pool->rate = value_double(r, 0, 2);
        pool->active = (int)value_int(r, 0, 3);
        pool->waiting = (int)value_int(r, 0, 4);
    }
    PQclear(r);
    return 0;
}

static int
pg_permit_slots(struct pg_store *s, const char *provider, const char *owner,
                int slots, int unmet)
{
    struct params p = {0};

    p_text(&p, provider);
    p_text(&p, owner);
    p_int(&p, slots);
    p_int(&p, unmet);
    return pg_run_changes(s, P_PERMIT_SET, &p, "permits: slots", NULL);
}

static int
pg_permit_bucket(struct pg_store *s, const char *provider,
                 const struct permit_pool *pool)
{
    struct params p = {0};

    p_text(&p, provider);
    p_double(&p, pool->tokens);
    p_int(&p, pool->tokens_at);
    return pg_run_changes(s, P_BUCKET_PUT, &p, "permits: bucket", NULL);
}

int
pg_permit_take(struct store *base, const char *provider, const char *owner,
               const struct permit_view *view, int in_flight, int want,
               int64_t now_ms, int *granted, int64_t *wake_ms)
{
    struct pg_store *s = pq(base);
    struct permit_pool pool;
    struct params p = {0};
    int rc, n;

    *granted = 0;
    *wake_ms = 0;
    p_text(&p, provider);
    p_text(&p, owner);
    p_int(&p, view->cap);
    p_double(&p, view->rate);
    if ((rc = pg_begin(base)) < 0)
        return rc;
    if ((rc = pg_run_changes(s, P_PERMIT_VIEW, &p, "permits: view", NULL)) <
            0 ||
        (rc = pg_permit_pool(s, provider, owner, now_ms, &pool)) < 0)
        goto fail;
    n = permit_grant(&pool, in_flight, want, now_ms, wake_ms);
    if ((rc = pg_permit_slots(s, provider, owner, in_flight + n, want - n)) <
            0 ||
        (pool.rate > 0 && (rc = pg_permit_bucket(s, provider, &pool)) < 0) ||
        (rc = pg_commit(base)) < 0)
        goto fail;
    *granted = n;
    return 0;
fail:
    *wake_ms = 0;
    pg_rollback(base);
    return rc;
}

int
pg_permit_put(struct store *base, const char *provider, const char *owner,
              int slots, int tokens)
{
    struct pg_store *s = pq(base);
    struct permit_pool pool;
    int rc;

    if (tokens <= 0)
        return pg_permit_slots(s, provider, owner, slots, 0);
    if ((rc = pg_begin(base)) < 0)
        return rc;
    if ((rc = pg_permit_pool(s, provider, owner, 0, &pool)) < 0 ||
        (rc = pg_permit_slots(s, provider, owner, slots, 0)) < 0)
        goto fail;
    if (permit_return(&pool, tokens) &&
        (rc = pg_permit_bucket(s, provider, &pool)) < 0)
        goto fail;
    if ((rc = pg_commit(base)) < 0)
        goto fail;
    return 0;
fail:
    pg_rollback(base);
    return rc;
}

int
pg_provider_put(struct store *base, const struct provider_row *pr,
                int64_t now_ms)
{
    struct params p = {0};

    p_text(&p, pr->name);
    p_text(&p, pr->state ? pr->state : "active");
    p_text(&p, pr->reason);
    p_int(&p, pr->concurrency_limit);
    p_int(&p, pr->in_flight);
    p_int_or_null(&p, pr->pause_until);
    p_int(&p, pr->sent);
    p_int(&p, pr->succeeded);
    p_int(&p, pr->failed);
    p_int(&p, pr->throttled);
    p_int(&p, now_ms);
    if (pr->rate_per_s > 0) {
        p_double(&p, pr->rate_per_s);
        p_text(&p, pr->rate_source);
    } else {
        p_text_or_null(&p, NULL);
        p_text_or_null(&p, NULL);
    }
    p_int_or_null(&p, pr->token_limit);
    if (pr->token_limit > 0)
        p_int(&p, pr->tokens_available);
    else
        p_text_or_null(&p, NULL);
    return pg_run_changes(pq(base), P_PROVIDER_PUT, &p, "provider row", NULL);
}

int
pg_provider_get(struct store *base, const char *name, int *limit,
                int64_t *resume_requested_at)
{
    struct params p = {0};
    PGresult *r;
    int err;

    *limit = 0;
    *resume_requested_at = 0;
    p_text(&p, name);
    if ((r = pg_run(pq(base), P_PROVIDER_GET, &p, "provider row", &err)) ==
        NULL)
        return err;
    if (PQntuples(r) > 0) {
        *limit = (int)value_int(r, 0, 0);
        *resume_requested_at = value_int(r, 0, 1);
    }
    PQclear(r);
    return 0;
}

int
pg_provider_request_resume(struct store *base, const char *name, int64_t now_ms)
{
    struct pg_store *s = pq(base);
    struct params p = {0};
    long n = 0;
    int rc;

    p_text(&p, name);
    p_int(&p, now_ms);
    if ((rc = pg_run_changes(s, P_PROVIDER_RESUME, &p, "resume request", &n)) <
        0)
        return rc;
    if (n != 1)
        return -ENOENT;
    return pg_notify(s, "resume");
}
