/*
 * store: the queue, behind one interface with a backend per database
 * (daemon/store/: SQLite; backend.h says how to add a function). All SQL
 * text of sluice lives in daemon/store/; the schema, migrations and views
 * live in sql/ and are embedded at build time. One connection per struct
 * store, used from one thread.
 */
#ifndef SLUICE_STORE_H
#define SLUICE_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "sluice/job.h"

struct store;
struct jobspec;

/* Opens the database and applies the migrations its backend has. A
 * PostgreSQL connection string (postgresql://… or postgres://…, or libpq
 * key=value pairs such as "host=/run/postgresql dbname=sluice") opens
 * the PostgreSQL backend (schema in sql/postgres/); anything else is the
 * path of a SQLite file (":memory:" works), created if missing, with WAL,
 * synchronous=NORMAL, busy_timeout and foreign keys (sql/, PRAGMA
 * user_version). Returns 0 and *out, or a negative errno with the reason
 * logged: -EREMOTE for a SQLite file on a network filesystem (NFS, SMB,
 * …), which WAL cannot use; -EINVAL for a connection string libpq cannot
 * parse. */
int store_open(const char *database, struct store **out);
/* Opens an existing database for reading only: nothing is created,
 * changed or migrated, so checking a new build against a live database
 * leaves it as the running daemon knows it (PostgreSQL: a session of
 * read-only transactions). When the schema is behind this build
 * (store_schema_version < store_schema_latest: migrations pending), only
 * those two and store_close may be called. Errors as store_open. */
int store_open_readonly(const char *database, struct store **out);
/* Whether database names a SQLite file (false: a PostgreSQL server). */
bool store_is_file(const char *database);
/* database as logs and terminals may show it: a path as it is, a
 * connection string without its password or options. New string. */
char *store_display_name(const char *database);
/* Flushes what is buffered (best effort) and closes. NULL accepted. */
void store_close(struct store *s);
/* Schema version the database is at, and the one this build knows for
 * the database's backend. */
int store_schema_version(struct store *s);
int store_schema_latest(struct store *s);
/* How long a statement waits for another connection's lock before it fails
 * with -EBUSY (default 5000 ms; PostgreSQL: lock_timeout). The daemon sets
 * a short one so its loop never blocks long; a -EBUSY flush is simply
 * retried later. */
void store_set_busy_timeout(struct store *s, int ms);

/* --- enqueue ----------------------------------------------------------- */

/* One transaction around many inserts (a whole JSONL file). */
int store_begin(struct store *s);
int store_commit(struct store *s);
void store_rollback(struct store *s);
/* Inserts a queued job. Returns 0 inserted, 1 duplicate (same provider and
 * idempotency key: skipped), or a negative errno. */
int store_insert_job(struct store *s, const struct jobspec *j,
                     int64_t now_ms);
/* Inserts jobs[0..n) as store_insert_job does, many rows per statement
 * (the fast path of a bulk enqueue; call inside store_begin). Sets
 * *inserted to the rows added; the others were duplicates, skipped.
 * Returns 0, or a negative errno after which the caller rolls back. */
int store_insert_jobs(struct store *s, const struct jobspec *jobs, size_t n,
                      int64_t now_ms, size_t *inserted);

/* --- the daemon ---------------------------------------------------------- */

/* Returns running jobs whose lease expired to queued (the attempt stays
 * charged: docs/design.md §3) and frees expired poll leases. *n = jobs
 * reclaimed. A job with no attempt left fails instead (timeout /
 * lease_expired), or it would be claimed beyond max_attempts. Only leases
 * whose owner has no row in daemons expire (leases from before the daemons
 * table, or rows edited by hand): a registered daemon's leases are taken
 * back only when it is judged dead (store_daemon_reap), so no wall-clock
 * jump reclaims them. */
int store_reclaim_expired(struct store *s, int64_t now_ms, long *n);

/* --- daemons and their liveness (docs/design.md §11, liveness.h) --------- */

/* A row of the daemons table. */
struct daemon_row {
    char *owner;          /* random token: jobs.lease_owner of its leases */
    char *host;           /* gethostname(), for operators */
    long pid;             /* in the daemon's own PID namespace */
    int64_t started_at;   /* unix ms */
    int64_t heartbeat_at; /* unix ms by its clock; only ever increases */
};

/* Registers a daemon (its heartbeat_at starts at started_at). Strings are
 * borrowed. -EEXIST when the owner token is taken. */
int store_daemon_register(struct store *s, const struct daemon_row *d);
/* The heartbeat: heartbeat_at = max(now_ms, heartbeat_at + 1), so every
 * beat changes it whatever the wall clock does. *present = false when
 * owner has no row any more (another daemon judged it dead and took its
 * leases back). */
int store_daemon_beat(struct store *s, const char *owner, int64_t now_ms,
                      bool *present);
/* Every row, by owner: *rows is a new array (store_daemons_free). */
int store_daemons(struct store *s, struct daemon_row **rows, size_t *n);
void store_daemons_free(struct daemon_row *rows, size_t n);
/* Takes back what a dead daemon held, in one transaction: deletes its row,
 * returns its running jobs to the queue (attempt charged, as on lease
 * expiry; a job with no attempt left fails) and frees its poll leases.
 * With seen != 0, only while its heartbeat_at still equals seen: a beat
 * since the verdict proves it alive, and -ESTALE says nothing was done.
 * seen = 0 is unconditional (its lock file proved it dead, or a daemon
 * leaving cleanly). Its permits go too (store_permit_take). *n = jobs
 * returned to the queue or failed. */
int store_daemon_reap(struct store *s, const char *owner, int64_t seen,
                      int64_t now_ms, long *n);

/* --- permits: a provider's limits shared by the daemons (permit.h) ------ */

struct permit_view;

/* In one transaction: publishes owner's view of provider, reads the pool
 * of the live daemons' permits and the provider's shared token bucket,
 * grants up to want new requests with in_flight of owner's out now
 * (permit_grant), and sets owner's slots to in_flight + *granted and its
 * unmet demand to want - *granted. *wake_ms
 * as permit_grant (0 when all of want was granted). Returns 0 or a
 * negative errno (-EBUSY: locked; nothing taken). */
int store_permit_take(struct store *s, const char *provider, const char *owner,
                      const struct permit_view *view, int in_flight, int want,
                      int64_t now_ms, int *granted, int64_t *wake_ms);
/* Sets owner's slots of provider (the requests it has out), clears its
 * unmet demand, and gives tokens granted but not used back to the bucket
 * (at most its burst).
 * A no-op for an owner that never took. */
int store_permit_put(struct store *s, const char *provider, const char *owner,
                     int slots, int tokens);

/* Claims up to max due jobs of provider in one UPDATE … RETURNING:
 * queued/retrying with run_after <= now become running (attempts + 1), and
 * waiting jobs due for a poll get a lease but stay waiting. Priority first,
 * then run_after, then id. Fills out[0..*nout) with new jobs (caller frees
 * with job_free). */
int store_claim(struct store *s, const char *provider, int max,
                int64_t now_ms, int64_t lease_ms, const char *owner,
                struct job **out, int *nout);

/* Like store_claim, but only queued and retrying jobs (a provider without
 * async runs has no polls to look for). */
int store_claim_new(struct store *s, const char *provider, int max,
                    int64_t now_ms, int64_t lease_ms, const char *owner,
                    struct job **out, int *nout);
/* Like store_claim, but only waiting jobs due for a poll: a lane whose
 * slots are all held by waiting runs must still poll them. */
int store_claim_polls(struct store *s, const char *provider, int max,
                      int64_t now_ms, int64_t lease_ms, const char *owner,
                      struct job **out, int *nout);

/* Earliest run_after (unix ms) of a claimable job of provider, or 0 when
 * there is none. Waiting jobs under a live lease are not claimable. */
int store_next_due(struct store *s, const char *provider, int64_t now_ms,
                   int64_t *due_ms);

/* Jobs of provider not yet terminal (from the kept counts: cheap at any
 * size). */
int store_pending_count(struct store *s, const char *provider,
                        long *unfinished);

/* Calls cb once per provider that has jobs not yet terminal, with their
 * count. */
int store_unfinished_by_provider(struct store *s,
                                 void (*cb)(const char *provider, long n,
                                            void *data),
                                 void *data);
/* Jobs of provider in state waiting (async runs at the provider). */
int store_count_waiting(struct store *s, const char *provider, long *n);
/* The earliest run_after (unix ms) of provider's queued jobs, 0 when none
 * is queued: since when the longest-waiting one has been due. */
int store_oldest_queued(struct store *s, const char *provider,
                        int64_t *since_ms);
/* Like store_claim_new, but no job of the batches held[0..nheld) (capped
 * batches at their budget: docs/design.md §13); jobs without a batch are never
 * held. */
int store_claim_except(struct store *s, const char *provider, int max,
                       int64_t now_ms, int64_t lease_ms, const char *owner,
                       const char *const *held, size_t nheld,
                       struct job **out, int *nout);
/* The spend and the number of jobs with a cost, of provider (batch NULL)
 * or of batch (provider NULL), from the kept spend: every cost recorded,
 * purged jobs' included (docs/design.md §13). A few rows at any queue
 * size. */
int store_spend(struct store *s, const char *provider, const char *batch,
                double *spent, long *costed);
/* Sets batch's spend cap (batches table) and makes it active again (the
 * daemon pauses it anew if the cap is still reached); budget <= 0 lifts
 * the cap. */
int store_batch_budget_set(struct store *s, const char *batch, double budget,
                           int64_t now_ms);
/* Calls cb for every batch with a spend cap. */
int store_batch_budgets(struct store *s,
                        void (*cb)(const char *batch, double budget,
                                   void *data),
                        void *data);
/* Rows of the spend view (of batch; NULL all) that have a cost or a batch
 * budget: {provider, batch, spent, spent_last_hour, batch_budget,
 * batch_state, batch_reason}. Reads the kept spend and counts, not the
 * jobs. NULL on a database error. */
json_t *store_spend_json(struct store *s, const char *batch);
/* The daemon's word on a capped batch: paused with reason budget, or
 * active again. */
int store_batch_pause(struct store *s, const char *batch, bool paused,
                      int64_t now_ms);
/* Whether provider has any job not yet terminal (cheap at any size). */
int store_has_unfinished(struct store *s, const char *provider, bool *any);

/* The kept job counts, maintained in the same transaction as every change
 * that moves a job (never a count over the queue, so the cost does not
 * grow with it): cb runs once per provider, batch (NULL for jobs without
 * one) and state with n > 0, ordered by provider, batch and state; the
 * strings are borrowed for the call. A non-zero return from cb stops the
 * walk and is returned. */
typedef int (*store_count_fn)(const char *provider, const char *batch,
                              enum job_state state, long n, void *arg);
int store_counts(struct store *s, store_count_fn cb, void *arg);

/* Changes when another process changed the queue: on SQLite PRAGMA
 * data_version (any other connection's commit), on PostgreSQL the count of
 * wakeups (NOTIFY) received from enqueue, retry, cancel and resume; never
 * a round trip to the server. */
int store_data_version(struct store *s, int64_t *v);
/* Calls cb(arg) on loop as soon as another process changed the queue
 * (then store_data_version tells whether it did), and when a lost
 * connection is back. loop NULL stops watching (before the loop closes).
 * Returns 0, or -ENOTSUP when the backend cannot push (SQLite): poll
 * store_data_version instead. */
int store_watch(struct store *s, uv_loop_t *loop, void (*cb)(void *arg),
                void *arg);

/* What one finished request (or a release) does to its job. Strings are
 * borrowed; store_record copies them. */
struct job_update {
    int64_t job_id;
    const char *owner;        /* the lease owner the job was claimed under:
                                 the update is written only while the job
                                 is still leased to it (or was cancelled
                                 meanwhile), so a late outcome never
                                 overwrites a job taken back and claimed
                                 again; NULL writes unconditionally */
    enum job_state state;     /* new state */
    int64_t run_after;        /* for retrying / waiting / queued, unix ms */
    int deferrals;            /* new deferral count */
    bool uncharge;            /* attempts - 1 (graceful release, deferral);
                                 ignored when is_poll: polls are not
                                 charged at claim */
    const char *new_key;      /* a derived key to send from now on, or NULL:
                                 kept apart from jobs.idempotency_key (the
                                 job's identity, unique per provider), and
                                 returned by claims as job->idempotency_key */
    /* the attempt row, when a request was sent */
    bool has_attempt;
    int attempt;              /* jobs.attempts when it was sent */
    const char *key_sent;     /* idempotency key sent */
    int64_t started_at, finished_at; /* unix ms */
    /* outcome (also copied onto the job row when it is a failure) */
    int http_status;
    enum err_class cls;       /* ERR_NONE on success */
    const char *code, *message, *request_id;
    const char *fields;       /* JSON [{"field","message"}] or NULL */
    int64_t retry_after_ms;   /* hint the response gave, 0 none */
    const char *result;       /* success body (or partial data) */
    double cost;              /* this run's: added to jobs.cost */
    bool has_cost;
    const char *remote_id, *poll_url; /* async run, kept on the job */
    bool is_poll;             /* the request was a poll of remote_id */
    /* a success of a provider with outputs = download: its output URLs,
     * each a pending outputs row once committed (docs/design.md §13) */
    const char *const *output_urls;
    size_t noutput_urls;
};

/* A deep copy of u: *dst owns every string and output URL (store_record's
 * buffer, and storeq's queue to its database thread);
 * store_update_clear frees them. */
void store_update_copy(struct job_update *dst, const struct job_update *u);
void store_update_clear(struct job_update *u);

/* Providers whose requests must not be sent twice on our own (idempotency =
 * none, docs/design.md §4): from now on, a running job of theirs whose lease is
 * taken back (its daemon died, or an old lease lapsed) fails with class
 * unknown_outcome, that attempt uncharged, instead of returning to the queue:
 * its request may have reached the provider. Copies the names; a backend
 * without it keeps returning such jobs to the queue. */
void store_set_unsafe_resend(struct store *s, const char *const *providers,
                             size_t n);

/* Buffers an update for the next group commit. Never fails. At flush: a
 * failure (cls != ERR_NONE) is copied onto the job row, a success clears it
 * (http_status and request_id kept), other updates leave it; a job an
 * operator cancelled meanwhile stays cancelled (the outcome is still kept);
 * the lease is cleared unless the new state is running; an update for a
 * purged job is dropped, and so is one whose owner no longer holds the
 * job's lease (its attempt row is still written: the request went out). */
void store_record(struct store *s, const struct job_update *u);
/* Updates buffered and not yet committed. */
size_t store_pending(const struct store *s);
/* Commits everything buffered in one transaction. Returns 0; -EBUSY when
 * the database is locked (updates stay buffered: call again later);
 * -ENOTCONN while a PostgreSQL connection is down (kept; the backend
 * reconnects); another negative errno on a real failure (also kept). */
int store_flush(struct store *s);

/* Ids among ids[0..n) whose state is cancelled now; fills out, *nout. */
int store_cancelled(struct store *s, const int64_t *ids, int n,
                    int64_t *out, int *nout);

/* The live view of a provider, written about once a second. */
struct provider_row {
    const char *name;
    const char *state;        /* active, paused, open, parked */
    const char *reason;       /* why not active, or NULL */
    int concurrency_limit;
    int in_flight;
    int64_t pause_until;      /* unix ms, 0 none */
    long sent, succeeded, failed, throttled; /* counters since start */
    double rate_per_s;        /* the pacer's rate, 0 none */
    const char *rate_source;  /* configured, advertised, learned */
    int64_t token_limit;      /* tokens per minute, 0 none */
    int64_t tokens_available; /* what the token gate holds now */
};
int store_provider_put(struct store *s, const struct provider_row *p,
                       int64_t now_ms);
/* The last saved limit (0 if none) and the last resume request (unix ms,
 * 0 none) of provider. */
int store_provider_get(struct store *s, const char *name, int *limit,
                       int64_t *resume_requested_at);
/* sluicectl resume: asks the daemon to resume name. -ENOENT unknown. */
int store_provider_request_resume(struct store *s, const char *name,
                                  int64_t now_ms);

/* --- operator queries: new JSON values (json_decref them) ------------- */

/* {"providers":{name:{state counts…}}, "batches":[…],
 *  "lanes":[providers rows]} */
json_t *store_status_json(struct store *s);

struct store_filter {
    const char *state;    /* NULL any */
    const char *provider; /* NULL any */
    const char *batch;    /* NULL any */
    long limit;           /* 0 = no limit */
};
/* Array of jobs (no body/result) matching the filter, newest first. */
json_t *store_jobs_json(struct store *s, const struct store_filter *f);
/* One job by id or custom_id with all columns and an "attempts" array, or
 * NULL when there is no such job. The jobs.attempts column (attempts
 * charged) is under "attempt_count"; body, result and fields are JSON
 * values when their text is valid JSON. A number is tried as an id first,
 * then as a custom_id (the newest job with it). */
json_t *store_job_json(struct store *s, const char *id_or_custom_id);

/* --- operator commands (sluicectl) ---------------------------------------- */

/* Which jobs an operator command acts on. Every field narrows; zero or
 * NULL means any. */
struct store_select {
    unsigned states; /* bits 1u << enum job_state */
    const char *provider;
    const char *batch;
    const char *error_class; /* jobs.error_class */
    const char *error_code;  /* jobs.error_code, the provider's code */
    int64_t finished_since;  /* finished_at >= this, unix ms */
    int64_t finished_before; /* finished_at < this, unix ms */
};

/* Failed jobs (the failures view) grouped by provider, class and code:
 * an array of {provider, error_class, error_code, http_status, count,
 * first_seen, last_seen, message, sample_request_ids [up to 3, newest
 * first], sample_job_id}, largest group first. sel's provider, batch and
 * finished_since apply. NULL on a database error. */
json_t *store_failures_json(struct store *s, const struct store_select *sel);

/* The ids of the jobs refs[0..n) name (an id, or a custom_id: the
 * newest job with it, as store_job_json); out[i] = 0 when refs[i] names
 * no job. Returns 0 or a negative errno. */
int store_resolve(struct store *s, const char *const *refs, size_t n,
                  int64_t *out);

/* Puts failed or cancelled jobs back to queued, due now: attempts and
 * deferrals reset, the derived send key dropped (the job's own
 * idempotency key goes out again), lease, async run and finished_at
 * cleared. The last failure stays on the row until the next outcome
 * replaces it (a success clears it). Jobs in other states are left.
 * By ids[0..n), or, with ids NULL, every job sel matches (sel->states
 * is narrowed to failed and cancelled). *changed = jobs put back. Use
 * inside store_begin/store_commit to make a command one transaction. */
int store_retry(struct store *s, const int64_t *ids, size_t n,
                const struct store_select *sel, int64_t now_ms, long *changed);

/* Cancels jobs not yet terminal (queued, running, waiting, retrying):
 * state cancelled, finished_at now, lease cleared. A running daemon sees
 * it through store_cancelled and aborts the request in flight. By ids,
 * or every job sel matches when ids is NULL. *changed = jobs cancelled. */
int store_cancel(struct store *s, const int64_t *ids, size_t n,
                 const struct store_select *sel, int64_t now_ms, long *changed);

/* Called by store_export for each row; a non-zero return stops the walk
 * and is returned by store_export. row is borrowed. */
typedef int (*store_row_fn)(const json_t *row, void *arg);

/* Streams the jobs sel matches, in id order, one row at a time (never
 * all in memory): {id, custom_id, provider, batch, state, http_status,
 * error_class, error_code, error_message, request_id, result (a JSON
 * value when the text is JSON), cost, finished_at}. Returns 0, fn's
 * non-zero value, or a negative errno. */
int store_export(struct store *s, const struct store_select *sel,
                 store_row_fn fn, void *arg);

/* Deletes terminal jobs that finished before sel->finished_before (only
 * sel->states' terminal ones when set) and their attempts, in
 * transactions of at most batch_rows jobs so the daemon is never held
 * off long; then gives the space back: PRAGMA incremental_vacuum in
 * steps when the file has auto_vacuum = incremental (new databases do),
 * and a wal_checkpoint(TRUNCATE). *jobs, *attempts: rows deleted;
 * *freed_pages: pages returned to the file system. */
int store_purge(struct store *s, const struct store_select *sel,
                long batch_rows, long *jobs, long *attempts, long *freed_pages);

/* Rows of the batch_progress view (batch NULL: all batches), with the
 * rate over the last minute and an ETA; NULL on a database error. */
json_t *store_progress_json(struct store *s, const char *batch);

/* The providers table (the daemon's live view of each lane) as an array
 * of rows, by name; NULL on a database error. */
json_t *store_providers_json(struct store *s);

/* --- outputs (docs/design.md §13) ---------------------------------------- */

/* One pending output a daemon has claimed for download. Strings owned. */
struct output_claim {
    int64_t id;      /* outputs.id */
    int64_t job_id;
    char *url;
    char *provider;  /* the job's provider: whose credentials may go along */
    int attempts;    /* fetches started, this one included */
};
void output_claim_clear(struct output_claim *c);

/* Claims up to max pending outputs due at now_ms (run_after passed, no
 * live lease) in one UPDATE … RETURNING: attempts + 1 and a lease until
 * now + lease_ms for owner. Fills out[0..*nout). */
int store_outputs_claim(struct store *s, int max, int64_t now_ms,
                        int64_t lease_ms, const char *owner,
                        struct output_claim *out, int *nout);

/* What one download did to its row. Strings borrowed. */
struct output_result {
    int64_t id;
    const char *state;        /* "pending" (try again), "stored", "failed" */
    const char *path;         /* stored: the file */
    const char *sha256;       /* stored: hex digest */
    int64_t bytes;            /* stored: size */
    const char *content_type; /* as sent, or NULL */
    const char *error;        /* pending/failed: why, NULL when stored */
    int64_t run_after;        /* pending: not before, unix ms */
    bool uncharge;            /* the fetch did not count (shutdown) */
    const char *owner;        /* the lease it was claimed under */
};
/* Writes it (autocommit) and frees the lease, only while the row is still
 * leased to r->owner: -ESTALE when it is not (taken back from a daemon
 * judged dead, or purged), nothing written. -EBUSY when the database is
 * locked: keep it and call again. */
int store_output_record(struct store *s, const struct output_result *r,
                        int64_t now_ms);
/* Earliest time (unix ms) a pending output may be claimed (its run_after,
 * or its lease's end), or 0 when none is pending. */
int store_outputs_next_due(struct store *s, int64_t *due_ms);
/* Rows per state. */
int store_outputs_counts(struct store *s, long *pending, long *stored,
                         long *failed);
/* Rows of outputs joined with their job (custom_id, provider, batch),
 * by job then row; batch and state (NULL any) narrow. NULL on a database
 * error. */
json_t *store_outputs_json(struct store *s, const char *batch,
                           const char *state);
/* Failed outputs (of batch, NULL any) back to pending, due at now_ms,
 * attempts reset. *changed = rows. */
int store_outputs_retry(struct store *s, const char *batch, int64_t now_ms,
                        long *changed);

/* --- moving a queue between databases (sluicectl migrate) ----------------- */

/* The tables store_dump and store_load move, in the order a load follows
 * (what a row refers to comes first); NULL-terminated. The daemons table
 * is not among them: a queue is moved stopped. */
extern const char *const store_tables[];
/* *empty = the database holds no job, attempt, output, provider, batch or
 * daemon row. */
int store_is_empty(struct store *s, bool *empty);
/* Calls fn for every row of table (one of store_tables), in key order,
 * as an object of all its columns: integers, reals, text verbatim (JSON
 * text columns stay strings), null. Returns 0, fn's non-zero value, or a
 * negative errno (-EINVAL for another table). */
int store_dump(struct store *s, const char *table, store_row_fn fn,
               void *arg);
/* Inserts row (as store_dump gives it: ids included) into table. Call
 * inside store_begin/store_commit, then store_load_done. -EINVAL for a
 * table not in store_tables or a column name that is not an identifier. */
int store_load(struct store *s, const char *table, const json_t *row);
/* After the loads, in the same transaction: new ids continue past the
 * highest loaded, and the kept counts are rebuilt from the jobs. */
int store_load_done(struct store *s);

#endif
