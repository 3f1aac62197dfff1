/*
 * sq: what the files of the SQLite backend share (sqlite.c says how the
 * backend works and which file holds what). Internal to daemon/store/:
 * the rest of sluice sees only store.h.
 *
 * Every statement is prepared once at open (sqlite_prepare_all); each
 * file holds the SQL text of its own statements in a table indexed by
 * enum stmt (the outputs table's, enum ostmt, in sqlite_outputs.c). A new
 * statement: an id in the enum under its file, its text in that file's
 * table.
 */
#ifndef SLUICE_STORE_SQ_H
#define SLUICE_STORE_SQ_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "sluice/xmalloc.h"

/* Generated from sql/ (struct sql_file: backend.h). */
extern const struct sql_file sql_files[];
extern const size_t sql_nfiles;

/* Lease expiry is for owners that are not registered in daemons (leases
 * from before that table): a registered daemon's leases go only when it is
 * judged dead, never because a wall clock says they expired. */
#define UNREGISTERED_OWNER                                                     \
    "AND (lease_owner IS NULL "                                                \
    "  OR lease_owner NOT IN (SELECT owner FROM daemons))"

/* Every prepared statement, by the file that holds its SQL text (in that
 * file's sqlite_<file>_sql table, indexed by this enum). */
enum stmt {
    /* sqlite_conn.c */
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_DATA_VERSION,
    /* sqlite_enqueue.c */
    ST_INSERT_JOB,
    ST_COUNT_INSERTED,
    /* sqlite_daemons.c */
    ST_UNKNOWN_EXPIRED,
    ST_UNKNOWN_OWNER,
    ST_RECLAIM_RUNNING,
    ST_RECLAIM_POLLS,
    ST_RECLAIM_OWNER_RUNNING,
    ST_RECLAIM_OWNER_POLLS,
    ST_DAEMON_REGISTER,
    ST_DAEMON_BEAT,
    ST_DAEMONS,
    ST_DAEMON_HEARTBEAT,
    ST_DAEMON_DELETE,
    ST_PERMITS_DELETE,
    ST_PERMIT_VIEW,
    ST_PERMIT_POOL,
    ST_PERMIT_SET,
    ST_BUCKET_GET,
    ST_BUCKET_PUT,
    ST_PROVIDER_PUT,
    ST_PROVIDER_GET,
    ST_PROVIDER_RESUME,
    /* sqlite_claim.c */
    ST_CLAIM_WAITING,
    ST_CLAIM,
    ST_NEXT_DUE,
    ST_UNFINISHED,
    ST_HAS_UNFINISHED,
    ST_COUNT_WAITING,
    ST_UNFINISHED_BY_PROVIDER,
    ST_COUNTS,
    ST_OLDEST_QUEUED,
    ST_CLAIM_EXCEPT,
    ST_SPEND_PROVIDER,
    ST_SPEND_BATCH,
    ST_BATCH_BUDGET_SET,
    ST_BATCH_BUDGETS,
    ST_BATCH_STATE,
    /* sqlite_commit.c */
    ST_UPDATE_JOB,
    ST_UPDATE_JOB_NO_COST,
    ST_INSERT_ATTEMPT,
    ST_INSERT_ATTEMPT_WRITTEN,
    ST_JOB_STATE,
    /* sqlite_query.c */
    ST_STATE_COUNTS,
    ST_BATCHES,
    ST_LANES,
    ST_JOBS,
    ST_JOB_BY_ID,
    ST_ATTEMPTS,
    ST_FAILURES,
    ST_RESOLVE_ID,
    ST_RESOLVE_CUSTOM_ID,
    ST_RETRY_ID,
    ST_RETRY_WHERE,
    ST_CANCEL_ID,
    ST_CANCEL_WHERE,
    ST_EXPORT,
    ST_PURGE_ATTEMPTS,
    ST_PURGE_JOBS,
    ST_AUTO_VACUUM,
    ST_FREELIST,
    ST_PROGRESS_BATCH,
    ST_SPEND_ROWS,
    ST_COUNT
};

/* The statements of the outputs table (docs/design.md §13), prepared with the
 * others. A download's lease is its claim: a row is fetched by one daemon
 * at a time, and a lease that outlives its daemon is freed like a job's. */
enum ostmt {
    OS_INSERT,
    OS_CLAIM,
    OS_RECORD,
    OS_NEXT_DUE,
    OS_COUNTS,
    OS_LIST,
    OS_RETRY,
    OS_RELEASE_EXPIRED,
    OS_RELEASE_OWNER,
    OS_COUNT
};

extern const char *const sqlite_conn_sql[ST_COUNT];
extern const char *const sqlite_enqueue_sql[ST_COUNT];
extern const char *const sqlite_daemons_sql[ST_COUNT];
extern const char *const sqlite_claim_sql[ST_COUNT];
extern const char *const sqlite_commit_sql[ST_COUNT];
extern const char *const sqlite_query_sql[ST_COUNT];
extern const char *const sqlite_outputs_sql[OS_COUNT];

struct sqlite_store {
    struct store base; /* first: the dispatcher's view */
    sqlite3 *db;
    char *path;
    sqlite3_stmt *st[ST_COUNT];
    sqlite3_stmt *ost[OS_COUNT];
    sqlite3_stmt *insert_many; /* STORE_INSERT_ROWS rows of INSERT_JOB */
    char *load_sql;            /* store_load: the last INSERT prepared */
    sqlite3_stmt *load_st;
    char *unsafe_json; /* store_set_unsafe_resend, JSON array */
    /* sqlite_fail's memory of the last error it logged */
    int last_err;
    int64_t last_logged_ms;
    long repeats;
};

static inline struct sqlite_store *
sq(struct store *base)
{
    return (struct sqlite_store *)base;
}

/* A prepared statement, reset and unbound, ready for new bindings. */
static inline sqlite3_stmt *
stmt(struct sqlite_store *s, enum stmt id)
{
    sqlite3_stmt *st = s->st[id];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

/* The same for a statement of the outputs table. */
static inline sqlite3_stmt *
ostmt(struct sqlite_store *s, enum ostmt id)
{
    sqlite3_stmt *st = s->ost[id];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

static inline void
bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Binds 0 as NULL: "none" for times and statuses. */
static inline void
bind_int64_or_null(sqlite3_stmt *st, int i, int64_t v)
{
    if (v)
        sqlite3_bind_int64(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

static inline char *
column_strdup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? xstrdup((const char *)t) : NULL;
}

/* sqlite_conn.c: SQLite result codes as negative errno values; a failed
 * call logged once (busy at debug level) and its errno returned. */
int sqlite_errno(int rc);
int sqlite_fail(struct sqlite_store *s, int rc, const char *what);

/* Runs a statement that returns no rows. */
static inline int
exec_stmt(struct sqlite_store *s, enum stmt id, const char *what)
{
    sqlite3_stmt *st = stmt(s, id);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, what);
}

/* sqlite.c */
int sqlite_begin(struct store *base);
int sqlite_commit(struct store *base);
void sqlite_rollback(struct store *base);

/* sqlite_conn.c */
int sqlite_check_local(const char *path);
int sqlite_prepare_all(struct sqlite_store *s);
int sqlite_watch(struct store *base, struct uv_loop_s *loop,
                 void (*cb)(void *arg), void *arg);
int sqlite_data_version(struct store *base, int64_t *v);
json_t *sqlite_row_json(sqlite3_stmt *st);
int sqlite_rows_json(struct sqlite_store *s, sqlite3_stmt *st, json_t *arr,
                     const char *what);
json_t *sqlite_row_raw_json(sqlite3_stmt *st);

/* sqlite_schema.c */
int sqlite_read_user_version(struct sqlite_store *s, int *v);
int sqlite_migrate(struct sqlite_store *s);
int sqlite_schema_version(struct store *base);
int sqlite_schema_latest(void);
int sqlite_is_empty(struct store *base, bool *empty);
int sqlite_dump(struct store *base, const char *table, store_row_fn fn,
                void *arg);
int sqlite_load(struct store *base, const char *table, const json_t *row);
int sqlite_load_done(struct store *base);

/* sqlite_enqueue.c */
int sqlite_prepare_insert_many(struct sqlite_store *s);
int sqlite_insert_job(struct store *base, const struct jobspec *j,
                      int64_t now_ms);
int sqlite_insert_jobs(struct store *base, const struct jobspec *jobs, size_t n,
                       int64_t now_ms, size_t *inserted);

/* sqlite_claim.c */
int sqlite_claim(struct store *base, enum store_claim_kind kind,
                 const char *provider, int max, int64_t now_ms,
                 int64_t lease_ms, const char *owner, struct job **out,
                 int *nout);
int sqlite_claim_except(struct store *base, const char *provider, int max,
                        int64_t now_ms, int64_t lease_ms, const char *owner,
                        const char *held_json, struct job **out, int *nout);
int sqlite_next_due(struct store *base, const char *provider, int64_t now_ms,
                    int64_t *due_ms);
int sqlite_pending_count(struct store *base, const char *provider,
                         long *unfinished);
int sqlite_unfinished_by_provider(struct store *base,
                                  void (*cb)(const char *provider, long n,
                                             void *data),
                                  void *data);
int sqlite_count_waiting(struct store *base, const char *provider, long *n);
int sqlite_oldest_queued(struct store *base, const char *provider,
                         int64_t *since_ms);
int sqlite_spend(struct store *base, const char *provider, const char *batch,
                 double *spent, long *costed);
int sqlite_batch_budget_set(struct store *base, const char *batch,
                            double budget, int64_t now_ms);
int sqlite_batch_pause(struct store *base, const char *batch, bool paused,
                       int64_t now_ms);
int sqlite_batch_budgets(struct store *base,
                         void (*cb)(const char *batch, double budget,
                                    void *data),
                         void *data);
int sqlite_has_unfinished(struct store *base, const char *provider, bool *any);
int sqlite_counts(struct store *base, store_count_fn cb, void *arg);

/* sqlite_commit.c */
int sqlite_flush(struct store *base);
int sqlite_cancelled(struct store *base, const int64_t *ids, int n,
                     int64_t *out, int *nout);

/* sqlite_daemons.c */
void sqlite_set_unsafe_resend(struct store *base, const char *const *providers,
                              size_t n);
int sqlite_reclaim_expired(struct store *base, int64_t now_ms, long *n);
int sqlite_daemon_register(struct store *base, const struct daemon_row *d);
int sqlite_daemon_beat(struct store *base, const char *owner, int64_t now_ms,
                       bool *present);
int sqlite_daemons(struct store *base, struct daemon_row **rows, size_t *n);
int sqlite_daemon_reap(struct store *base, const char *owner, int64_t seen,
                       int64_t now_ms, long *n);
int sqlite_permit_take(struct store *base, const char *provider,
                       const char *owner, const struct permit_view *view,
                       int in_flight, int want, int64_t now_ms, int *granted,
                       int64_t *wake_ms);
int sqlite_permit_put(struct store *base, const char *provider,
                      const char *owner, int slots, int tokens);
int sqlite_provider_put(struct store *base, const struct provider_row *p,
                        int64_t now_ms);
int sqlite_provider_get(struct store *base, const char *name, int *limit,
                        int64_t *resume_requested_at);
int sqlite_provider_request_resume(struct store *base, const char *name,
                                   int64_t now_ms);

/* sqlite_query.c */
json_t *sqlite_status_json(struct store *base);
json_t *sqlite_jobs_json(struct store *base, const struct store_filter *f);
int sqlite_resolve_one(struct store *base, const char *key, int64_t *id);
json_t *sqlite_job_json(struct store *base, const char *id_or_custom_id);
json_t *sqlite_failures_json(struct store *base,
                             const struct store_select *sel);
int sqlite_retry(struct store *base, const int64_t *ids, size_t n,
                 const struct store_select *sel, int64_t now_ms, long *changed);
int sqlite_cancel(struct store *base, const int64_t *ids, size_t n,
                  const struct store_select *sel, int64_t now_ms,
                  long *changed);
int sqlite_export(struct store *base, const struct store_select *sel,
                  store_row_fn fn, void *arg);
int sqlite_purge(struct store *base, const struct store_select *sel,
                 long batch_rows, long *jobs, long *attempts,
                 long *freed_pages);
json_t *sqlite_progress_json(struct store *base, const char *batch);
json_t *sqlite_providers_json(struct store *base);
json_t *sqlite_spend_json(struct store *base, const char *batch);

/* sqlite_outputs.c */
int sqlite_outputs_claim(struct store *base, int max, int64_t now_ms,
                         int64_t lease_ms, const char *owner,
                         struct output_claim *out, int *nout);
int sqlite_output_record(struct store *base, const struct output_result *r,
                         int64_t now_ms);
int sqlite_outputs_next_due(struct store *base, int64_t *due_ms);
int sqlite_outputs_counts(struct store *base, long *pending, long *stored,
                          long *failed);
json_t *sqlite_outputs_json(struct store *base, const char *batch,
                            const char *state);
int sqlite_outputs_retry(struct store *base, const char *batch, int64_t now_ms,
                         long *changed);

#endif
