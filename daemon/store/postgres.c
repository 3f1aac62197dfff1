/*
 * postgres: the PostgreSQL backend of the store (backend.h), for queues
 * that outgrow one host: daemons on many machines, one database.
 *
 * How it works. One libpq connection per struct store, used blocking on
 * the caller's thread, as the SQLite backend is: every statement is
 * prepared once per connection and run with text parameters. The schema
 * is sql/postgres/ (same names as sql/), applied on open under an
 * advisory lock, one transaction per file, the version in sluice_schema.
 *
 * A claim is one UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED
 * LIMIT n) RETURNING: daemons never wait on each other's rows and never
 * get the same job. Outcomes are written by flush in one transaction sent
 * as a pipeline (libpq pipeline mode): a few hundred outcomes cost one
 * round trip per chunk, not two per job.
 *
 * Wakeups: enqueue, retry, cancel and resume send NOTIFY on the channel
 * "sluice" (delivered at commit). The connection LISTENs; store_watch
 * puts its socket on the caller's libuv loop, so an idle daemon wakes at
 * once, and store_data_version counts the notifications (drained without
 * a round trip) for the dispatcher's periodic check.
 *
 * A lost connection: the call that sees it fails with -ENOTCONN and the
 * log says so once; later calls try to reconnect, at most once per
 * backoff step (100 ms doubling to 5 s), and fail fast meanwhile, so the
 * dispatcher stops claiming and keeps its buffered outcomes until a flush
 * succeeds. Inside an explicit transaction nothing reconnects: the caller
 * must roll back (what it wrote is gone with the connection).
 *
 * Blocking on the caller's thread keeps the store API synchronous. The
 * daemon keeps its claim/commit path off the loop with a database thread
 * of its own (storeq.h), on a second connection: bench/pg_cycle measured
 * that against libpq's async API on the loop (bench/README.md,
 * postgres). A daemon's outage is said once for both connections
 * (pg_lost).
 *
 * The files, one concern each, sharing pg.h (struct pg_store, the
 * statement ids, the parameter helpers):
 *   postgres.c    open, close, transactions, the ops table;
 *   pg_conn.c     connect, reconnect, statements, results as JSON, the
 *                 socket on the loop (LISTEN);
 *   pg_schema.c   migrations, and dump/load for sluicectl migrate;
 *   pg_enqueue.c  insert and COPY (straight into jobs, a duplicate
 *                 replayed through a temporary table);
 *   pg_claim.c    claims and what the dispatcher counts, spend, budgets;
 *   pg_commit.c   the group commit of outcomes;
 *   pg_daemons.c  daemons, liveness, reclaims, permits, provider rows;
 *   pg_query.c    the operator's queries and commands;
 *   pg_outputs.c  the outputs table.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

/* As SQLite's busy timeout: how long a statement waits for a row lock
 * another transaction holds before it fails with -EBUSY. */
#define PG_LOCK_TIMEOUT_MS 5000

static void pg_close(struct store *base);

static int
pg_open_mode(const char *database, bool readonly, struct store **out)
{
    struct pg_store *s = xcalloc(1, sizeof(*s));
    PQconninfoOption *opts;
    char *err = NULL;
    int rc;

    s->readonly = readonly;
    s->conninfo = xstrdup(database);
    s->name = pg_display_name(database);
    s->lock_timeout_ms = PG_LOCK_TIMEOUT_MS;
    /* A string libpq cannot parse is the config's fault, not the
     * server's: -EINVAL, which no retry mends. */
    if ((opts = PQconninfoParse(database, &err)) == NULL) {
        log_error("store: %s: %.*s", s->name,
                  err ? (int)strcspn(err, "\n") : 13,
                  err ? err : "out of memory");
        PQfreemem(err);
        pg_close(&s->base);
        return -EINVAL;
    }
    PQconninfoFree(opts);
    if ((rc = pg_connect(s, false)) < 0) {
        pg_close(&s->base);
        return rc;
    }
    *out = &s->base;
    return 0;
}

static int
pg_open(const char *database, struct store **out)
{
    return pg_open_mode(database, false, out);
}

static int
pg_open_readonly(const char *database, struct store **out)
{
    return pg_open_mode(database, true, out);
}

static void
pg_close(struct store *base)
{
    struct pg_store *s = pq(base);

    pg_watch_stop(s);
    pg_forget(s);
    if (s->conn)
        PQfinish(s->conn);
    if (s->conninfo)
        explicit_bzero(s->conninfo, strlen(s->conninfo));
    free(s->conninfo);
    free(s->name);
    free(s->unsafe_json);
    buf_free(&s->copy_seg);
    free(s);
}

static void
pg_set_busy_timeout(struct store *base, int ms)
{
    struct pg_store *s = pq(base);
    char *set = xasprintf("SET lock_timeout = %d", ms);

    s->lock_timeout_ms = ms;
    if (pg_ready(s) == 0)
        pg_exec(s, set, "lock_timeout");
    free(set);
}

int
pg_begin(struct store *base)
{
    struct pg_store *s = pq(base);
    int rc;

    if ((rc = pg_ready(s)) < 0)
        return rc;
    pg_enqueue_reset(s);
    if ((rc = pg_exec(s, "BEGIN", "begin")) == 0)
        s->in_tx = true;
    return rc;
}

int
pg_commit(struct store *base)
{
    struct pg_store *s = pq(base);
    int rc;

    if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK) {
        pg_lost(s);
        s->in_tx = false;
        return -ENOTCONN;
    }
    rc = pg_exec(s, "COMMIT", "commit");
    s->in_tx = false;
    pg_enqueue_reset(s);
    return rc;
}

void
pg_rollback(struct store *base)
{
    struct pg_store *s = pq(base);

    if (s->conn && PQstatus(s->conn) == CONNECTION_OK &&
        PQtransactionStatus(s->conn) != PQTRANS_IDLE)
        pg_exec(s, "ROLLBACK", "rollback");
    s->in_tx = false;
    pg_enqueue_reset(s);
}

bool
store_postgres_names(const char *database)
{
    PQconninfoOption *opts;
    size_t len;
    bool known = false;

    if (strncmp(database, "postgresql://", 13) == 0 ||
        strncmp(database, "postgres://", 11) == 0)
        return true;
    /* key=value: the first word is one of libpq's keywords */
    len = strcspn(database, " \t=");
    if (len == 0 || database[len + strspn(database + len, " \t")] != '=')
        return false;
    opts = PQconndefaults();
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (strlen(o->keyword) == len &&
            strncmp(o->keyword, database, len) == 0)
            known = true;
    }
    PQconninfoFree(opts);
    return known;
}

char *
store_postgres_display_name(const char *database)
{
    return pg_display_name(database);
}

const struct store_ops store_postgres_ops = {
    .name = "postgresql",
    .open = pg_open,
    .open_readonly = pg_open_readonly,
    .close = pg_close,
    .schema_version = pg_schema_version,
    .schema_latest = pg_schema_latest,
    .set_busy_timeout = pg_set_busy_timeout,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .insert_job = pg_insert_job,
    .insert_jobs = pg_insert_jobs,
    .set_unsafe_resend = pg_set_unsafe_resend,
    .reclaim_expired = pg_reclaim_expired,
    .daemon_register = pg_daemon_register,
    .daemon_beat = pg_daemon_beat,
    .daemons = pg_daemons,
    .daemon_reap = pg_daemon_reap,
    .permit_take = pg_permit_take,
    .permit_put = pg_permit_put,
    .claim = pg_claim,
    .next_due = pg_next_due,
    .pending_count = pg_pending_count,
    .unfinished_by_provider = pg_unfinished_by_provider,
    .count_waiting = pg_count_waiting,
    .has_unfinished = pg_has_unfinished,
    .counts = pg_counts,
    .oldest_queued = pg_oldest_queued,
    .claim_except = pg_claim_except,
    .spend = pg_spend,
    .batch_budget_set = pg_batch_budget_set,
    .batch_budgets = pg_batch_budgets,
    .spend_json = pg_spend_json,
    .batch_pause = pg_batch_pause,
    .data_version = pg_data_version,
    .watch = pg_watch,
    .flush = pg_flush,
    .cancelled = pg_cancelled,
    .provider_put = pg_provider_put,
    .provider_get = pg_provider_get,
    .provider_request_resume = pg_provider_request_resume,
    .status_json = pg_status_json,
    .jobs_json = pg_jobs_json,
    .job_json = pg_job_json,
    .failures_json = pg_failures_json,
    .resolve_one = pg_resolve_one,
    .retry = pg_retry,
    .cancel = pg_cancel,
    .export = pg_export,
    .purge = pg_purge,
    .progress_json = pg_progress_json,
    .providers_json = pg_providers_json,
    .is_empty = pg_is_empty,
    .dump = pg_dump,
    .load = pg_load,
    .load_done = pg_load_done,
    .outputs_claim = pg_outputs_claim,
    .output_record = pg_output_record,
    .outputs_next_due = pg_outputs_next_due,
    .outputs_counts = pg_outputs_counts,
    .outputs_json = pg_outputs_json,
    .outputs_retry = pg_outputs_retry,
};
