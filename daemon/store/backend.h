/*
 * backend: what a store backend implements, and the SQL-free pieces the
 * backends share. Internal to daemon/store/: callers see only
 * include/sluice/store.h and never know which backend they talk to.
 *
 * store.c is the dispatcher. store_open picks the backend from the
 * database string (store_backend_for), the backend's open allocates its
 * own struct with a struct store as its first member, and every store_*
 * call forwards through s->ops. What needs no SQL lives once, in store.c
 * (the group-commit buffer of store_record, the order of a combined
 * claim) or in backend.c (helpers both backends call).
 *
 * Adding a store function:
 *   1. declare it in include/sluice/store.h, with its comment (the
 *      contract both backends keep);
 *   2. add its operation to struct store_ops below, same name without the
 *      store_ prefix, and forward it in store.c (one line);
 *   3. implement it in every backend as <backend>_<name> (SQLite:
 *      sqlite_<name> in the sqlite_*.c file of its concern, declared in
 *      sq.h; PostgreSQL: pg_<name> in the pg_*.c file of its concern,
 *      declared in pg.h) and list it in that backend's ops table at the
 *      end of sqlite.c and postgres.c (a missing entry is a NULL call);
 *   4. add a case to tests/unit/test_store_contract.c (it runs on both).
 * SQL-free logic both implementations need goes in backend.c.
 */
#ifndef SLUICE_STORE_BACKEND_H
#define SLUICE_STORE_BACKEND_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sluice/store.h"

struct uv_loop_s;

/* A backend's failure repeated within this is counted, not logged again
 * (a full disk fails every retry of a flush, every claim and every
 * heartbeat: one line a minute says it). */
#define STORE_ERROR_REPEAT_MS 60000

/* A buffered job_update with its strings owned (store_record copies). */
struct store_pending {
    struct job_update u;
    int64_t at;      /* when it was recorded: updated_at / finished_at */
    bool unstorable; /* made a failure by backend_pending_refused */
};

/* The part of every backend's store that store.c reads: a backend's
 * struct begins with it. */
struct store {
    const struct store_ops *ops;
    struct store_pending *buf; /* store_record's group-commit buffer */
    size_t nbuf, capbuf;
};

/* Which claims store_claim_* asks the backend for. */
enum store_claim_kind {
    STORE_CLAIM_NEW,   /* queued and retrying jobs due: become running */
    STORE_CLAIM_POLLS, /* waiting jobs due for a poll: leased, still waiting */
};

/*
 * One backend. Each operation has the contract of the store_* function of
 * the same name in store.h, except where noted. s is the backend's own
 * store (cast from struct store).
 */
struct store_ops {
    const char *name; /* "sqlite", "postgresql": for logs */
    /* Opens database; on success *out->ops is this table. */
    int (*open)(const char *database, struct store **out);
    /* store_open_readonly; NULL: the backend has none yet, and open
     * serves instead. */
    int (*open_readonly)(const char *database, struct store **out);
    /* Frees everything; the buffer is already flushed or given up. */
    void (*close)(struct store *s);
    int (*schema_version)(struct store *s);
    int (*schema_latest)(void);
    void (*set_busy_timeout)(struct store *s, int ms);

    int (*begin)(struct store *s);
    int (*commit)(struct store *s);
    void (*rollback)(struct store *s);
    int (*insert_job)(struct store *s, const struct jobspec *j, int64_t now_ms);
    int (*insert_jobs)(struct store *s, const struct jobspec *jobs, size_t n,
                       int64_t now_ms, size_t *inserted);

    /* store_set_unsafe_resend; NULL: not supported (a no-op) */
    void (*set_unsafe_resend)(struct store *s, const char *const *providers,
                              size_t n);
    int (*reclaim_expired)(struct store *s, int64_t now_ms, long *n);
    int (*daemon_register)(struct store *s, const struct daemon_row *d);
    int (*daemon_beat)(struct store *s, const char *owner, int64_t now_ms,
                       bool *present);
    /* The rows are freed by store_daemons_free (free() of each string). */
    int (*daemons)(struct store *s, struct daemon_row **rows, size_t *n);
    int (*daemon_reap)(struct store *s, const char *owner, int64_t seen,
                       int64_t now_ms, long *n);
    int (*permit_take)(struct store *s, const char *provider, const char *owner,
                       const struct permit_view *view, int in_flight, int want,
                       int64_t now_ms, int *granted, int64_t *wake_ms);
    int (*permit_put)(struct store *s, const char *provider, const char *owner,
                      int slots, int tokens);
    /* Claims up to max jobs of one kind, appended to out + *nout, in
     * priority, run_after, id order. */
    int (*claim)(struct store *s, enum store_claim_kind kind,
                 const char *provider, int max, int64_t now_ms,
                 int64_t lease_ms, const char *owner, struct job **out,
                 int *nout);
    int (*next_due)(struct store *s, const char *provider, int64_t now_ms,
                    int64_t *due_ms);
    int (*pending_count)(struct store *s, const char *provider,
                         long *unfinished);
    int (*unfinished_by_provider)(struct store *s,
                                  void (*cb)(const char *provider, long n,
                                             void *data),
                                  void *data);
    int (*count_waiting)(struct store *s, const char *provider, long *n);
    int (*has_unfinished)(struct store *s, const char *provider, bool *any);
    int (*counts)(struct store *s, store_count_fn cb, void *arg);
    int (*oldest_queued)(struct store *s, const char *provider,
                         int64_t *since_ms);
    /* store_claim_except, with the held batches as a JSON array text. */
    int (*claim_except)(struct store *s, const char *provider, int max,
                        int64_t now_ms, int64_t lease_ms, const char *owner,
                        const char *held_json, struct job **out, int *nout);
    int (*spend)(struct store *s, const char *provider, const char *batch,
                 double *spent, long *costed);
    int (*batch_budget_set)(struct store *s, const char *batch, double budget,
                            int64_t now_ms);
    int (*batch_budgets)(struct store *s,
                         void (*cb)(const char *batch, double budget,
                                    void *data),
                         void *data);
    json_t *(*spend_json)(struct store *s, const char *batch);
    int (*batch_pause)(struct store *s, const char *batch, bool paused,
                       int64_t now_ms);
    int (*data_version)(struct store *s, int64_t *v);
    int (*watch)(struct store *s, struct uv_loop_s *loop, void (*cb)(void *arg),
                 void *arg);
    /* Writes s->buf[0..s->nbuf) in one transaction, all or nothing; the
     * caller empties the buffer after a 0. Updates dropped for a
     * refused row (backend_pending_refused) leave the buffer, and so, on
     * PostgreSQL, do those written one per transaction after a refusal
     * at COMMIT, even when the flush then fails. */
    int (*flush)(struct store *s);
    int (*cancelled)(struct store *s, const int64_t *ids, int n, int64_t *out,
                     int *nout);
    int (*provider_put)(struct store *s, const struct provider_row *p,
                        int64_t now_ms);
    int (*provider_get)(struct store *s, const char *name, int *limit,
                        int64_t *resume_requested_at);
    int (*provider_request_resume)(struct store *s, const char *name,
                                   int64_t now_ms);

    json_t *(*status_json)(struct store *s);
    json_t *(*jobs_json)(struct store *s, const struct store_filter *f);
    json_t *(*job_json)(struct store *s, const char *id_or_custom_id);
    json_t *(*failures_json)(struct store *s, const struct store_select *sel);
    /* One reference of store_resolve: *id = 0 when it names no job. */
    int (*resolve_one)(struct store *s, const char *ref, int64_t *id);
    int (*retry)(struct store *s, const int64_t *ids, size_t n,
                 const struct store_select *sel, int64_t now_ms, long *changed);
    int (*cancel)(struct store *s, const int64_t *ids, size_t n,
                  const struct store_select *sel, int64_t now_ms,
                  long *changed);
    int (*export)(struct store *s, const struct store_select *sel,
                  store_row_fn fn, void *arg);
    int (*purge)(struct store *s, const struct store_select *sel,
                 long batch_rows, long *jobs, long *attempts,
                 long *freed_pages);
    json_t *(*progress_json)(struct store *s, const char *batch);
    json_t *(*providers_json)(struct store *s);

    int (*is_empty)(struct store *s, bool *empty);
    /* table is one of store_tables (checked by store.c). */
    int (*dump)(struct store *s, const char *table, store_row_fn fn, void *arg);
    /* table and every key of row checked by store.c: identifiers only. */
    int (*load)(struct store *s, const char *table, const json_t *row);
    int (*load_done)(struct store *s);

    int (*outputs_claim)(struct store *s, int max, int64_t now_ms,
                         int64_t lease_ms, const char *owner,
                         struct output_claim *out, int *nout);
    int (*output_record)(struct store *s, const struct output_result *r,
                         int64_t now_ms);
    int (*outputs_next_due)(struct store *s, int64_t *due_ms);
    int (*outputs_counts)(struct store *s, long *pending, long *stored,
                          long *failed);
    json_t *(*outputs_json)(struct store *s, const char *batch,
                            const char *state);
    int (*outputs_retry)(struct store *s, const char *batch, int64_t now_ms,
                         long *changed);
};

extern const struct store_ops store_sqlite_ops;
extern const struct store_ops store_postgres_ops;

/* Whether database is a PostgreSQL connection string: a postgresql:// or
 * postgres:// URI, or key=value pairs whose first key is libpq's. */
bool store_postgres_names(const char *database);
/* postgresql://user@host:port/dbname of a connection string: what logs
 * may show (no password, no options). New string. */
char *store_postgres_display_name(const char *database);

/* --- shared by the backends (backend.c) ----------------------------------- */

/* Generated from sql/ and sql/postgres/ by cmake/embed_sql.cmake: a
 * backend's migrations, in file-name order. */
struct sql_file {
    const char *name;
    const char *text;
};

/* names[0..n) as a compact JSON array text (what a statement matches a
 * provider against); new string, NULL if out of memory. */
char *backend_names_json(const char *const *names, size_t n);

/* A claimed row with what orders it (RETURNING gives no order). */
struct backend_claimed {
    struct job *job;
    int priority;
    int64_t run_after;
};
/* Sorts c[0..n) by priority descending, then run_after, then id. */
void backend_claimed_sort(struct backend_claimed *c, int n);

/* Frees the strings a buffered update owns. */
void backend_pending_clear(struct store_pending *p);
/* Frees what an update says of the outcome (the provider's code and
 * message, fields, result, remote id, poll URL, output URLs) and leaves
 * those NULL; the job's identity (owner, keys, request id) stays. */
void backend_update_free_outcome(struct job_update *u);

/* Whether a failed write (a negative errno of the backend) is about the
 * row itself (a value too big, out of range or of the wrong kind, a
 * constraint or a trigger refusing it), so that writing it again fails
 * again, rather than about the database (locked, full, gone). */
bool backend_row_error(int err);
/* A flush failed on s->buf[bad] for its own content (why): the first
 * time, the update becomes the job's terminal failure (class protocol,
 * code "unstorable", message why; without the result, fields, run or
 * output URLs that may be what could not be written; the attempt row and
 * the key stay); if even that was refused, it is dropped from the buffer:
 * the job stays leased and is taken back when its lease ends. Logged once
 * each. The caller flushes what is left again. */
void backend_pending_refused(struct store *s, size_t bad, const char *why);

/* The id a job reference names when it is all digits and fits: true and
 * *id; false for anything else (then it can only be a custom_id). */
bool backend_ref_is_id(const char *ref, int64_t *id);

/* ",failed,cancelled," for states (bits 1u << enum job_state), the form
 * a statement matches a state against; "" when states is 0. */
void backend_states_text(unsigned states, char out[128]);

/* A text column as a new JSON value: parsed when the column holds JSON
 * and the text parses, else a string ("" when not UTF-8). */
json_t *backend_text_json(const char *column, const char *text, size_t len);

/* status: a new object {"providers": {}, "batches": [], "lanes": []};
 * the three members, borrowed, for the backend to fill. */
json_t *backend_status_new(json_t **providers, json_t **batches,
                           json_t **lanes);
/* status: sets "outputs" to {"pending": n, "stored": n, "failed": n}. */
void backend_status_outputs(json_t *status, long pending, long stored,
                            long failed);
/* outputs_counts: n outputs in state into the count they belong to
 * (pending, stored; anything else is failed). */
void backend_outputs_count(const char *state, long n, long *pending,
                           long *stored, long *failed);
/* Adds every provider of lanes (providers rows) to providers with zero
 * counts, so a provider with no jobs is still listed. */
void backend_status_lanes(json_t *providers, const json_t *lanes);
/* Adds n jobs of provider name in state to providers. */
void backend_status_count(json_t *providers, const char *name,
                          const char *state, json_int_t n);

/* show: the job's attempts column moves to "attempt_count" and
 * "attempts" becomes the rows (attempts is stolen). */
void backend_job_set_attempts(json_t *job, json_t *attempts);

#endif
