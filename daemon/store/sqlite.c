/*
 * sqlite: the SQLite backend of the store (backend.h), the embedded
 * default: one file on one host.
 *
 * How it works. store_open applies the embedded sql/ files above PRAGMA
 * user_version (file N is migration N, each in its own transaction with the
 * version bump, so two processes opening a fresh file cannot both apply
 * one), then prepares every statement once; calls bind, step and reset.
 *
 * A claim is one UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING: the
 * write lock makes it atomic across connections and processes, so two
 * daemons never get the same job, and the attempt is charged at claim time
 * (a job that crashes the daemon still runs out of attempts). Waiting jobs
 * due for a poll are leased by a second UPDATE that leaves state and
 * attempts alone.
 *
 * Outcomes are buffered by store_record (strings copied) and written by
 * store_flush in one BEGIN IMMEDIATE transaction: one fsync for hundreds of
 * outcomes. When another connection holds the write lock (an operator in
 * sqlite3, sluicectl enqueue), the flush rolls back, keeps the buffer and
 * returns -EBUSY; the next flush writes everything. Nothing is dropped.
 *
 * Rejected: an outcome per autocommit statement (an fsync per job caps the
 * daemon at a few hundred jobs/s); SELECT then UPDATE for claims (needs an
 * explicit transaction and races between daemons for nothing).
 *
 * The files, one concern each, sharing sq.h (struct sqlite_store, the
 * statement ids, the small helpers):
 *   sqlite.c          open, close, transactions, the ops table;
 *   sqlite_conn.c     result codes, failures, preparing the statements,
 *                     rows as JSON, the data version;
 *   sqlite_schema.c   migrations, and dump/load for sluicectl migrate;
 *   sqlite_enqueue.c  single and multi-row inserts;
 *   sqlite_claim.c    claims and what the dispatcher counts, spend,
 *                     budgets;
 *   sqlite_commit.c   the group commit of outcomes;
 *   sqlite_daemons.c  daemons, liveness, reclaims, permits, provider rows;
 *   sqlite_query.c    the operator's queries and commands;
 *   sqlite_outputs.c  the outputs table.
 */
#include <errno.h>
#include <stdlib.h>

#include "sq.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

/* 5 s: long enough to ride out an operator's short write, short enough
 * that sluicectl reports a held lock instead of hanging. */
#define STORE_BUSY_TIMEOUT_MS 5000
/* 64 MiB of page cache: an enqueue of a million jobs touches the table and
 * five indexes; with the 2 MiB default, pages spill to the WAL mid-
 * transaction and inserts slow down several times. */
#define STORE_CACHE_KIB 65536

static void sqlite_close(struct store *base);

/* Read-write (settings, migrations) or read-only (nothing written: no
 * journal mode switch, no migration, query_only on; a schema behind this
 * build is opened unprepared, for store_schema_version only). */
static int
open_mode(const char *path, bool readonly, struct store **out)
{
    struct sqlite_store *s = xcalloc(1, sizeof(*s));
    char *pragmas;
    int rc, v;

    s->path = xstrdup(path);
    if ((rc = sqlite_check_local(path)) < 0)
        goto fail;
    rc = sqlite3_open_v2(path, &s->db,
                         (readonly
                              ? SQLITE_OPEN_READONLY
                              : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                             SQLITE_OPEN_NOMUTEX,
                         NULL);
    if (rc != SQLITE_OK) {
        log_error("store: %s: open: %s", path,
                  s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        rc = sqlite_errno(rc);
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    /* The timeout first: switching to WAL takes a lock too. */
    sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
    /* auto_vacuum first: it only takes on a file with no table yet (a new
     * database), and WAL mode would write the header before it. Existing
     * files keep theirs; purge copes with both. */
    if (readonly)
        pragmas = xasprintf("PRAGMA query_only = ON; "
                            "PRAGMA foreign_keys = ON; "
                            "PRAGMA cache_size = -%d",
                            STORE_CACHE_KIB);
    else
        pragmas = xasprintf("PRAGMA auto_vacuum = INCREMENTAL; "
                            "PRAGMA journal_mode = WAL; "
                            "PRAGMA synchronous = NORMAL; "
                            "PRAGMA foreign_keys = ON; "
                            "PRAGMA cache_size = -%d",
                            STORE_CACHE_KIB);
    rc = sqlite3_exec(s->db, pragmas, NULL, NULL, NULL);
    free(pragmas);
    if (rc != SQLITE_OK) {
        rc = sqlite_fail(s, rc, "pragmas");
        goto fail;
    }
    if (!readonly) {
        if ((rc = sqlite_migrate(s)) < 0)
            goto fail;
    } else {
        if ((rc = sqlite_read_user_version(s, &v)) < 0)
            goto fail;
        if (v > (int)sql_nfiles) {
            log_error("store: %s: schema version %d is newer than this "
                      "build knows (%zu)",
                      path, v, sql_nfiles);
            rc = -EPROTO;
            goto fail;
        }
        if (v < (int)sql_nfiles) {
            *out = &s->base;
            return 0;
        }
    }
    if ((rc = sqlite_prepare_all(s)) < 0)
        goto fail;
    *out = &s->base;
    return 0;
fail:
    sqlite_close(&s->base);
    return rc;
}

static int
sqlite_open(const char *path, struct store **out)
{
    return open_mode(path, false, out);
}

static int
sqlite_open_readonly(const char *path, struct store **out)
{
    return open_mode(path, true, out);
}

static void
sqlite_set_busy_timeout(struct store *base, int ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_busy_timeout(s->db, ms);
}

static void
sqlite_close(struct store *base)
{
    struct sqlite_store *s = sq(base);

    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    for (int i = 0; i < OS_COUNT; i++)
        sqlite3_finalize(s->ost[i]);
    sqlite3_finalize(s->insert_many);
    free(s->unsafe_json);
    sqlite3_finalize(s->load_st);
    free(s->load_sql);
    sqlite3_close_v2(s->db);
    free(s->path);
    free(s);
}

int
sqlite_begin(struct store *base)
{
    struct sqlite_store *s = sq(base);
    return exec_stmt(s, ST_BEGIN, "begin");
}

int
sqlite_commit(struct store *base)
{
    struct sqlite_store *s = sq(base);
    return exec_stmt(s, ST_COMMIT, "commit");
}

void
sqlite_rollback(struct store *base)
{
    struct sqlite_store *s = sq(base);
    if (!sqlite3_get_autocommit(s->db))
        exec_stmt(s, ST_ROLLBACK, "rollback");
}

const struct store_ops store_sqlite_ops = {
    .name = "sqlite",
    .open = sqlite_open,
    .open_readonly = sqlite_open_readonly,
    .close = sqlite_close,
    .schema_version = sqlite_schema_version,
    .schema_latest = sqlite_schema_latest,
    .set_busy_timeout = sqlite_set_busy_timeout,
    .begin = sqlite_begin,
    .commit = sqlite_commit,
    .rollback = sqlite_rollback,
    .insert_job = sqlite_insert_job,
    .insert_jobs = sqlite_insert_jobs,
    .set_unsafe_resend = sqlite_set_unsafe_resend,
    .reclaim_expired = sqlite_reclaim_expired,
    .daemon_register = sqlite_daemon_register,
    .daemon_beat = sqlite_daemon_beat,
    .daemons = sqlite_daemons,
    .daemon_reap = sqlite_daemon_reap,
    .permit_take = sqlite_permit_take,
    .permit_put = sqlite_permit_put,
    .claim = sqlite_claim,
    .next_due = sqlite_next_due,
    .pending_count = sqlite_pending_count,
    .unfinished_by_provider = sqlite_unfinished_by_provider,
    .count_waiting = sqlite_count_waiting,
    .has_unfinished = sqlite_has_unfinished,
    .counts = sqlite_counts,
    .oldest_queued = sqlite_oldest_queued,
    .claim_except = sqlite_claim_except,
    .spend = sqlite_spend,
    .batch_budget_set = sqlite_batch_budget_set,
    .batch_budgets = sqlite_batch_budgets,
    .batch_pause = sqlite_batch_pause,
    .spend_json = sqlite_spend_json,
    .data_version = sqlite_data_version,
    .watch = sqlite_watch,
    .flush = sqlite_flush,
    .cancelled = sqlite_cancelled,
    .provider_put = sqlite_provider_put,
    .provider_get = sqlite_provider_get,
    .provider_request_resume = sqlite_provider_request_resume,
    .status_json = sqlite_status_json,
    .jobs_json = sqlite_jobs_json,
    .job_json = sqlite_job_json,
    .failures_json = sqlite_failures_json,
    .resolve_one = sqlite_resolve_one,
    .retry = sqlite_retry,
    .cancel = sqlite_cancel,
    .export = sqlite_export,
    .purge = sqlite_purge,
    .progress_json = sqlite_progress_json,
    .providers_json = sqlite_providers_json,
    .is_empty = sqlite_is_empty,
    .dump = sqlite_dump,
    .load = sqlite_load,
    .load_done = sqlite_load_done,
    .outputs_claim = sqlite_outputs_claim,
    .output_record = sqlite_output_record,
    .outputs_next_due = sqlite_outputs_next_due,
    .outputs_counts = sqlite_outputs_counts,
    .outputs_json = sqlite_outputs_json,
    .outputs_retry = sqlite_outputs_retry,
};
