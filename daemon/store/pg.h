/*
 * pg: what the files of the PostgreSQL backend share (postgres.c says how
 * the backend works and which file holds what). Internal to
 * daemon/store/: the rest of sluice sees only store.h.
 *
 * Every statement is prepared once per connection under the name "p<id>"
 * (enum pst below); each file holds the SQL text of its own statements in
 * a table indexed by that enum, and pg_connect prepares them all. A new
 * statement: an id in the enum under its file, its text in that file's
 * table.
 */
#ifndef SLUICE_STORE_PG_H
#define SLUICE_STORE_PG_H

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "backend.h"
#include "sluice/xmalloc.h"

/* Generated from sql/postgres/ (struct sql_file: backend.h). */
extern const struct sql_file pg_sql_files[];
extern const size_t pg_sql_nfiles;

/* The NOTIFY channel of enqueue, retry, cancel and resume. */
#define PG_CHANNEL "sluice"
/* The columns enqueue's COPY writes, into jobs or into jobs_in. */
#define PG_COPY_COLUMNS                                                        \
    "provider, batch, custom_id, method, path, body, idempotency_key, "        \
    "priority, max_attempts, run_after, created_at, updated_at"
/* The COPY text store_insert_jobs keeps for a replay: the savepoint over
 * a file's rows moves on every this many bytes (a million lines of a few
 * hundred bytes: about ten, within the 64 subtransactions a backend
 * tracks in shared memory). */
#define PG_COPY_SEGMENT (16u << 20)
/* COPY data per message: large enough to amortize, small enough that the
 * server starts on the rows while the rest is sent. */
#define PG_COPY_MESSAGE (1u << 20)
/* Most parameters any statement takes. */
#define PG_MAX_PARAMS 24

/* Lease expiry is for owners not registered in daemons, as on SQLite: a
 * registered daemon's leases go only when it is judged dead
 * (store_daemon_reap). */
#define UNREGISTERED_OWNER                                                     \
    "AND (lease_owner IS NULL "                                                \
    "  OR lease_owner NOT IN (SELECT owner FROM daemons))"

/* Every prepared statement, by the file that holds its SQL text (in that
 * file's pg_<file>_sql table, indexed by this enum). */
enum pst {
    /* pg_conn.c */
    P_NOTIFY,
    /* pg_enqueue.c */
    P_INSERT_JOB,
    P_MOVE_IN,
    /* pg_daemons.c */
    P_UNKNOWN_EXPIRED,
    P_UNKNOWN_OWNER,
    P_RECLAIM_RUNNING,
    P_RECLAIM_POLLS,
    P_RECLAIM_OWNER_RUNNING,
    P_RECLAIM_OWNER_POLLS,
    P_OUT_RELEASE_EXPIRED,
    P_OUT_RELEASE_OWNER,
    P_DAEMON_REGISTER,
    P_DAEMON_BEAT,
    P_DAEMONS,
    P_DAEMON_HEARTBEAT,
    P_DAEMON_DELETE,
    P_PERMITS_DELETE,
    P_PERMIT_VIEW,
    P_PERMIT_POOL,
    P_PERMIT_SET,
    P_BUCKET_ROW,
    P_BUCKET_LOCK,
    P_BUCKET_PUT,
    P_PROVIDER_PUT,
    P_PROVIDER_GET,
    P_PROVIDER_RESUME,
    /* pg_claim.c */
    P_CLAIM,
    P_CLAIM_EXCEPT,
    P_CLAIM_WAITING,
    P_NEXT_DUE,
    P_OLDEST_QUEUED,
    P_UNFINISHED,
    P_HAS_UNFINISHED,
    P_COUNT_WAITING,
    P_UNFINISHED_BY_PROVIDER,
    P_COUNTS,
    P_SPEND_PROVIDER,
    P_SPEND_BATCH,
    P_BATCH_BUDGET_SET,
    P_BATCH_BUDGETS,
    P_BATCH_STATE,
    /* pg_commit.c */
    P_UPDATE_JOB,
    P_INSERT_ATTEMPT,
    P_CANCELLED,
    /* pg_query.c */
    P_STATE_COUNTS,
    P_BATCHES,
    P_LANES,
    P_JOBS,
    P_JOB_BY_ID,
    P_ATTEMPTS,
    P_FAILURES,
    P_RESOLVE_ID,
    P_RESOLVE_CUSTOM_ID,
    P_RETRY_ID,
    P_RETRY_WHERE,
    P_CANCEL_ID,
    P_CANCEL_WHERE,
    P_EXPORT,
    P_PURGE_ATTEMPTS,
    P_PURGE_JOBS,
    P_PROGRESS_BATCH,
    P_SPEND_ROWS,
    /* pg_outputs.c */
    P_OUT_CLAIM,
    P_OUT_RECORD,
    P_OUT_NEXT_DUE,
    P_OUT_COUNTS,
    P_OUT_LIST,
    P_OUT_RETRY,
    P_COUNT
};

extern const char *const pg_conn_sql[P_COUNT];
extern const char *const pg_enqueue_sql[P_COUNT];
extern const char *const pg_daemons_sql[P_COUNT];
extern const char *const pg_claim_sql[P_COUNT];
extern const char *const pg_commit_sql[P_COUNT];
extern const char *const pg_query_sql[P_COUNT];
extern const char *const pg_outputs_sql[P_COUNT];

struct pg_store {
    struct store base; /* first: the dispatcher's view */
    PGconn *conn;      /* NULL or bad while disconnected */
    char *conninfo;    /* as configured: may hold a password, never logged */
    char *name;        /* user@host:port/dbname, for logs */
    int lock_timeout_ms;
    bool readonly;    /* store_open_readonly: never writes, never migrates */
    int version;      /* schema version found at connect */
    bool in_tx;       /* between begin and commit/rollback */
    bool lost;        /* the connection is down (logged once) */
    int64_t retry_at; /* next reconnect attempt, unix ms */
    int backoff_ms;
    int64_t notified; /* notifications received: data_version */
    /* store_watch: the socket on the caller's loop */
    uv_loop_t *loop;
    uv_poll_t *poll;
    void (*wake_cb)(void *arg);
    void *wake_arg;
    char *unsafe_json; /* store_set_unsafe_resend, JSON array, or NULL */
    /* store_insert_jobs in a transaction (pg_enqueue.c): the COPY text of
     * the rows copied since the savepoint sluice_copy, kept for a replay,
     * and how many of them the earlier calls reported inserted */
    struct buf copy_seg;
    size_t copy_seg_rows;
    bool copy_seg_open; /* the savepoint is set */
    bool copy_staged;   /* the last call met a duplicate: stage the next */
    bool copy_notified; /* this transaction's NOTIFY is sent */
    /* pg_fail: the last failure logged, when, and how many like it
     * since (counted, not logged, for STORE_ERROR_REPEAT_MS) */
    int last_err;
    int64_t last_logged_ms;
    long repeats;
};

static inline struct pg_store *
pq(struct store *base)
{
    return (struct pg_store *)base;
}

/* --- parameters ---------------------------------------------------------- */

/* Text parameters of one statement; numbers are formatted into num. */
struct params {
    const char *v[PG_MAX_PARAMS];
    char num[PG_MAX_PARAMS][24];
    int n;
};

static inline void
p_text(struct params *p, const char *v)
{
    p->v[p->n++] = v;
}

/* "" as NULL: an outcome's empty code or request id means none. */
static inline void
p_text_or_null(struct params *p, const char *v)
{
    p->v[p->n++] = v && *v ? v : NULL;
}

static inline void
p_int(struct params *p, int64_t v)
{
    snprintf(p->num[p->n], sizeof(p->num[0]), "%lld", (long long)v);
    p->v[p->n] = p->num[p->n];
    p->n++;
}

/* 0 as NULL: "none" for times and statuses. */
static inline void
p_int_or_null(struct params *p, int64_t v)
{
    if (v)
        p_int(p, v);
    else
        p->v[p->n++] = NULL;
}

static inline void
p_double(struct params *p, double v)
{
    snprintf(p->num[p->n], sizeof(p->num[0]), "%.17g", v);
    p->v[p->n] = p->num[p->n];
    p->n++;
}

/* --- result values ------------------------------------------------------- */

static inline char *
value_strdup(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : xstrdup(PQgetvalue(r, row, col));
}

static inline int64_t
value_int(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col)
               ? 0
               : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static inline double
value_double(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtod(PQgetvalue(r, row, col), NULL);
}

/* pg_conn.c */
void pg_lost(struct pg_store *s);
/* A store closing while its connection is down no longer counts as down
 * (the once-per-outage log of pg_lost). */
void pg_forget(struct pg_store *s);
/* SQLSTATE of a failed result (NULL: the connection) as a negative
 * errno; -ENOTCONN when the connection is gone. */
int pg_errno(struct pg_store *s, const PGresult *r);
int pg_fail(struct pg_store *s, const PGresult *r, const char *what);
int pg_exec(struct pg_store *s, const char *sql, const char *what);
int pg_exec_int(struct pg_store *s, const char *sql, int64_t *v,
                const char *what);
int pg_connect(struct pg_store *s, bool quiet);
int pg_ready(struct pg_store *s);
PGresult *pg_run(struct pg_store *s, enum pst id, const struct params *p,
                 const char *what, int *err);
int pg_run_changes(struct pg_store *s, enum pst id, const struct params *p,
                   const char *what, long *changed);
int pg_run_int(struct pg_store *s, enum pst id, const struct params *p,
               const char *what, int64_t *v);
int pg_notify(struct pg_store *s, const char *what);
char *pg_display_name(const char *conninfo);
json_t *pg_row_to_json(const PGresult *r, int i, bool raw);
json_t *pg_row_json(const PGresult *r, int i);
int pg_rows_json(struct pg_store *s, enum pst id, const struct params *p,
                 json_t *arr, const char *what);
json_t *pg_array_json(struct pg_store *s, enum pst id, const struct params *p,
                      const char *what);
void pg_watch_stop(struct pg_store *s);
int pg_watch(struct store *base, uv_loop_t *loop, void (*cb)(void *arg),
             void *arg);
int pg_data_version(struct store *base, int64_t *v);

/* pg_schema.c */
int pg_migrate(struct pg_store *s);
int pg_read_version(struct pg_store *s, int *version);
int pg_schema_version(struct store *base);
int pg_schema_latest(void);
int pg_is_empty(struct store *base, bool *empty);
int pg_dump(struct store *base, const char *table, store_row_fn fn, void *arg);
int pg_load(struct store *base, const char *table, const json_t *row);
int pg_load_done(struct store *base);

/* pg_enqueue.c */
int pg_insert_job(struct store *base, const struct jobspec *j, int64_t now_ms);
int pg_insert_jobs(struct store *base, const struct jobspec *jobs, size_t n,
                   int64_t now_ms, size_t *inserted);
/* Forgets the savepoint, the kept rows and the NOTIFY sent: at begin,
 * commit, rollback. */
void pg_enqueue_reset(struct pg_store *s);

/* pg_claim.c */
int pg_claim(struct store *base, enum store_claim_kind kind,
             const char *provider, int max, int64_t now_ms, int64_t lease_ms,
             const char *owner, struct job **out, int *nout);
int pg_claim_except(struct store *base, const char *provider, int max,
                    int64_t now_ms, int64_t lease_ms, const char *owner,
                    const char *held_json, struct job **out, int *nout);
int pg_next_due(struct store *base, const char *provider, int64_t now_ms,
                int64_t *due_ms);
int pg_oldest_queued(struct store *base, const char *provider,
                     int64_t *since_ms);
int pg_pending_count(struct store *base, const char *provider,
                     long *unfinished);
int pg_count_waiting(struct store *base, const char *provider, long *n);
int pg_has_unfinished(struct store *base, const char *provider, bool *any);
int pg_unfinished_by_provider(struct store *base,
                              void (*cb)(const char *provider, long n,
                                         void *data),
                              void *data);
int pg_counts(struct store *base, store_count_fn cb, void *arg);
int pg_spend(struct store *base, const char *provider, const char *batch,
             double *spent, long *costed);
int pg_batch_budget_set(struct store *base, const char *batch, double budget,
                        int64_t now_ms);
int pg_batch_pause(struct store *base, const char *batch, bool paused,
                   int64_t now_ms);
int pg_batch_budgets(struct store *base,
                     void (*cb)(const char *batch, double budget, void *data),
                     void *data);

/* pg_commit.c */
int pg_flush(struct store *base);
int pg_cancelled(struct store *base, const int64_t *ids, int n, int64_t *out,
                 int *nout);

/* pg_daemons.c */
void pg_set_unsafe_resend(struct store *base, const char *const *providers,
                          size_t n);
int pg_reclaim_expired(struct store *base, int64_t now_ms, long *n);
int pg_daemon_register(struct store *base, const struct daemon_row *d);
int pg_daemon_beat(struct store *base, const char *owner, int64_t now_ms,
                   bool *present);
int pg_daemons(struct store *base, struct daemon_row **rows, size_t *n);
int pg_daemon_reap(struct store *base, const char *owner, int64_t seen,
                   int64_t now_ms, long *n);
int pg_permit_take(struct store *base, const char *provider, const char *owner,
                   const struct permit_view *view, int in_flight, int want,
                   int64_t now_ms, int *granted, int64_t *wake_ms);
int pg_permit_put(struct store *base, const char *provider, const char *owner,
                  int slots, int tokens);
int pg_provider_put(struct store *base, const struct provider_row *pr,
                    int64_t now_ms);
int pg_provider_get(struct store *base, const char *name, int *limit,
                    int64_t *resume_requested_at);
int pg_provider_request_resume(struct store *base, const char *name,
                               int64_t now_ms);

/* pg_query.c */
json_t *pg_status_json(struct store *base);
json_t *pg_jobs_json(struct store *base, const struct store_filter *f);
int pg_resolve_one(struct store *base, const char *key, int64_t *id);
json_t *pg_job_json(struct store *base, const char *id_or_custom_id);
json_t *pg_failures_json(struct store *base, const struct store_select *sel);
int pg_retry(struct store *base, const int64_t *ids, size_t n,
             const struct store_select *sel, int64_t now_ms, long *changed);
int pg_cancel(struct store *base, const int64_t *ids, size_t n,
              const struct store_select *sel, int64_t now_ms, long *changed);
int pg_export(struct store *base, const struct store_select *sel,
              store_row_fn fn, void *arg);
int pg_purge(struct store *base, const struct store_select *sel,
             long batch_rows, long *jobs, long *attempts, long *freed_pages);
json_t *pg_progress_json(struct store *base, const char *batch);
json_t *pg_spend_json(struct store *base, const char *batch);
json_t *pg_providers_json(struct store *base);

/* pg_outputs.c */
int pg_outputs_claim(struct store *base, int max, int64_t now_ms,
                     int64_t lease_ms, const char *owner,
                     struct output_claim *out, int *nout);
int pg_output_record(struct store *base, const struct output_result *o,
                     int64_t now_ms);
int pg_outputs_next_due(struct store *base, int64_t *due_ms);
int pg_outputs_counts(struct store *base, long *pending, long *stored,
                      long *failed);
json_t *pg_outputs_json(struct store *base, const char *batch,
                        const char *state);
int pg_outputs_retry(struct store *base, const char *batch, int64_t now_ms,
                     long *changed);

/* postgres.c */
int pg_begin(struct store *base);
int pg_commit(struct store *base);
void pg_rollback(struct store *base);

#endif
