/*
 * store: the dispatcher over the backends (backend.h says how to add a
 * function). store_open picks the backend by the database string; every
 * other call forwards through the backend's table of operations. What
 * needs no SQL is done here once: the group-commit buffer of store_record
 * and the order of a combined claim.
 *
 * Rejected: a backend chosen at build time (one binary must serve a SQLite
 * file on one host and a PostgreSQL server on another); dispatch calling
 * the backends directly (it would learn which one it talks to).
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "backend.h"
#include "sluice/clock.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

/* The backend that serves database. */
static const struct store_ops *
store_backend_for(const char *database)
{
    if (store_postgres_names(database))
        return &store_postgres_ops;
    return &store_sqlite_ops;
}

bool
store_is_file(const char *database)
{
    return store_backend_for(database) == &store_sqlite_ops;
}

char *
store_display_name(const char *database)
{
    if (store_is_file(database))
        return xstrdup(database);
    return store_postgres_display_name(database);
}

int
store_open(const char *database, struct store **out)
{
    const struct store_ops *ops = store_backend_for(database);
    int rc;

    *out = NULL;
    if ((rc = ops->open(database, out)) < 0)
        return rc;
    (*out)->ops = ops;
    return 0;
}

int
store_open_readonly(const char *database, struct store **out)
{
    const struct store_ops *ops = store_backend_for(database);
    int rc;

    *out = NULL;
    rc = ops->open_readonly ? ops->open_readonly(database, out)
                            : ops->open(database, out);
    if (rc < 0)
        return rc;
    (*out)->ops = ops;
    return 0;
}

void
store_close(struct store *s)
{
    if (s == NULL)
        return;
    if (s->nbuf > 0 && store_flush(s) < 0)
        log_warnx("store: %zu outcomes not written at close", s->nbuf);
    for (size_t i = 0; i < s->nbuf; i++)
        backend_pending_clear(&s->buf[i]);
    free(s->buf);
    s->buf = NULL;
    s->nbuf = s->capbuf = 0;
    s->ops->close(s);
}

int
store_schema_version(struct store *s)
{
    return s->ops->schema_version(s);
}

int
store_schema_latest(struct store *s)
{
    return s->ops->schema_latest();
}

void
store_set_busy_timeout(struct store *s, int ms)
{
    s->ops->set_busy_timeout(s, ms);
}

/* --- enqueue ------------------------------------------------------------ */

int
store_begin(struct store *s)
{
    return s->ops->begin(s);
}

int
store_commit(struct store *s)
{
    return s->ops->commit(s);
}

void
store_rollback(struct store *s)
{
    s->ops->rollback(s);
}

int
store_insert_job(struct store *s, const struct jobspec *j, int64_t now_ms)
{
    return s->ops->insert_job(s, j, now_ms);
}

int
store_insert_jobs(struct store *s, const struct jobspec *jobs, size_t n,
                  int64_t now_ms, size_t *inserted)
{
    return s->ops->insert_jobs(s, jobs, n, now_ms, inserted);
}

/* --- the daemon ----------------------------------------------------------- */

int
store_reclaim_expired(struct store *s, int64_t now_ms, long *n)
{
    return s->ops->reclaim_expired(s, now_ms, n);
}

/* --- daemons and their liveness ------------------------------------------ */

int
store_daemon_register(struct store *s, const struct daemon_row *d)
{
    return s->ops->daemon_register(s, d);
}

int
store_daemon_beat(struct store *s, const char *owner, int64_t now_ms,
                  bool *present)
{
    return s->ops->daemon_beat(s, owner, now_ms, present);
}

int
store_daemons(struct store *s, struct daemon_row **rows, size_t *n)
{
    return s->ops->daemons(s, rows, n);
}

void
store_daemons_free(struct daemon_row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].owner);
        free(rows[i].host);
    }
    free(rows);
}

int
store_daemon_reap(struct store *s, const char *owner, int64_t seen,
                  int64_t now_ms, long *n)
{
    return s->ops->daemon_reap(s, owner, seen, now_ms, n);
}

/* --- permits shared by the daemons of one database ----------------------- */

int
store_permit_take(struct store *s, const char *provider, const char *owner,
                  const struct permit_view *view, int in_flight, int want,
                  int64_t now_ms, int *granted, int64_t *wake_ms)
{
    return s->ops->permit_take(s, provider, owner, view, in_flight, want,
                               now_ms, granted, wake_ms);
}

int
store_permit_put(struct store *s, const char *provider, const char *owner,
                 int slots, int tokens)
{
    return s->ops->permit_put(s, provider, owner, slots, tokens);
}

int
store_claim(struct store *s, const char *provider, int max, int64_t now_ms,
            int64_t lease_ms, const char *owner, struct job **out, int *nout)
{
    int rc;

    *nout = 0;
    if (max <= 0)
        return 0;
    /* Polls first: their runs already occupy the provider, and a finished
     * run only becomes a result once it is polled. */
    rc = s->ops->claim(s, STORE_CLAIM_POLLS, provider, max, now_ms, lease_ms,
                       owner, out, nout);
    if (rc == 0 && *nout < max)
        rc = s->ops->claim(s, STORE_CLAIM_NEW, provider, max - *nout, now_ms,
                           lease_ms, owner, out, nout);
    if (rc < 0 && *nout > 0)
        return 0; /* the polls are leased: hand them out */
    return rc;
}

int
store_claim_new(struct store *s, const char *provider, int max, int64_t now_ms,
                int64_t lease_ms, const char *owner, struct job **out,
                int *nout)
{
    *nout = 0;
    if (max <= 0)
        return 0;
    return s->ops->claim(s, STORE_CLAIM_NEW, provider, max, now_ms, lease_ms,
                         owner, out, nout);
}

int
store_claim_polls(struct store *s, const char *provider, int max,
                  int64_t now_ms, int64_t lease_ms, const char *owner,
                  struct job **out, int *nout)
{
    *nout = 0;
    if (max <= 0)
        return 0;
    return s->ops->claim(s, STORE_CLAIM_POLLS, provider, max, now_ms, lease_ms,
                         owner, out, nout);
}

int
store_next_due(struct store *s, const char *provider, int64_t now_ms,
               int64_t *due_ms)
{
    return s->ops->next_due(s, provider, now_ms, due_ms);
}

int
store_pending_count(struct store *s, const char *provider, long *unfinished)
{
    return s->ops->pending_count(s, provider, unfinished);
}

int
store_unfinished_by_provider(struct store *s,
                             void (*cb)(const char *provider, long n,
                                        void *data),
                             void *data)
{
    return s->ops->unfinished_by_provider(s, cb, data);
}

int
store_count_waiting(struct store *s, const char *provider, long *n)
{
    return s->ops->count_waiting(s, provider, n);
}

int
store_has_unfinished(struct store *s, const char *provider, bool *any)
{
    return s->ops->has_unfinished(s, provider, any);
}

int
store_counts(struct store *s, store_count_fn cb, void *arg)
{
    return s->ops->counts(s, cb, arg);
}

int
store_oldest_queued(struct store *s, const char *provider, int64_t *since_ms)
{
    return s->ops->oldest_queued(s, provider, since_ms);
}

int
store_claim_except(struct store *s, const char *provider, int max,
                   int64_t now_ms, int64_t lease_ms, const char *owner,
                   const char *const *held, size_t nheld, struct job **out,
                   int *nout)
{
    *nout = 0;
    if (max <= 0)
        return 0;
    json_t *arr = json_array();
    for (size_t i = 0; i < nheld; i++)
        json_array_append_new(arr, json_string(held[i]));
    char *text = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    if (text == NULL)
        fatalx("json_dumps: out of memory");
    int rc = s->ops->claim_except(s, provider, max, now_ms, lease_ms, owner,
                                  text, out, nout);
    free(text);
    return rc;
}

int
store_spend(struct store *s, const char *provider, const char *batch,
            double *spent, long *costed)
{
    return s->ops->spend(s, provider, batch, spent, costed);
}

int
store_batch_budget_set(struct store *s, const char *batch, double budget,
                       int64_t now_ms)
{
    return s->ops->batch_budget_set(s, batch, budget, now_ms);
}

int
store_batch_budgets(struct store *s,
                    void (*cb)(const char *batch, double budget, void *data),
                    void *data)
{
    return s->ops->batch_budgets(s, cb, data);
}

json_t *
store_spend_json(struct store *s, const char *batch)
{
    return s->ops->spend_json(s, batch);
}

int
store_batch_pause(struct store *s, const char *batch, bool paused,
                  int64_t now_ms)
{
    return s->ops->batch_pause(s, batch, paused, now_ms);
}

int
store_data_version(struct store *s, int64_t *v)
{
    return s->ops->data_version(s, v);
}

int
store_watch(struct store *s, uv_loop_t *loop, void (*cb)(void *arg), void *arg)
{
    return s->ops->watch(s, loop, cb, arg);
}

void
store_set_unsafe_resend(struct store *s, const char *const *providers, size_t n)
{
    if (s->ops->set_unsafe_resend)
        s->ops->set_unsafe_resend(s, providers, n);
}

void
store_update_copy(struct job_update *dst, const struct job_update *u)
{
    *dst = *u;
    dst->owner = xstrdup(u->owner);
    dst->new_key = xstrdup(u->new_key);
    dst->key_sent = xstrdup(u->key_sent);
    dst->code = xstrdup(u->code);
    dst->message = xstrdup(u->message);
    dst->request_id = xstrdup(u->request_id);
    dst->fields = xstrdup(u->fields);
    dst->result = xstrdup(u->result);
    dst->remote_id = xstrdup(u->remote_id);
    dst->poll_url = xstrdup(u->poll_url);
    dst->output_urls = NULL;
    if (u->noutput_urls > 0) {
        const char **urls = xcalloc(u->noutput_urls, sizeof(char *));
        for (size_t i = 0; i < u->noutput_urls; i++)
            urls[i] = xstrdup(u->output_urls[i]);
        dst->output_urls = urls;
    }
}

void
store_update_clear(struct job_update *u)
{
    free((char *)u->owner);
    free((char *)u->new_key);
    free((char *)u->key_sent);
    free((char *)u->request_id);
    backend_update_free_outcome(u);
}

void
store_record(struct store *s, const struct job_update *u)
{
    struct store_pending *p;

    /* The daemon records moves of jobs it claimed: running (a submission)
     * or waiting (a poll). */
    assert(job_transition_allowed(u->is_poll ? JOB_WAITING : JOB_RUNNING,
                                  u->state));
    if (s->nbuf == s->capbuf) {
        /* Doubling: a flush stalled behind a lock may buffer thousands. */
        s->capbuf = s->capbuf ? 2 * s->capbuf : 64;
        s->buf = xrealloc(s->buf, s->capbuf * sizeof(*s->buf));
    }
    p = &s->buf[s->nbuf++];
    memset(p, 0, sizeof(*p));
    store_update_copy(&p->u, u);
    p->at = u->finished_at ? u->finished_at : clock_now_ms();
}

size_t
store_pending(const struct store *s)
{
    return s->nbuf;
}

int
store_flush(struct store *s)
{
    int rc;

    if (s->nbuf == 0)
        return 0;
    /* All or nothing: on failure the buffer is kept for a later flush. */
    if ((rc = s->ops->flush(s)) < 0)
        return rc;
    for (size_t i = 0; i < s->nbuf; i++)
        backend_pending_clear(&s->buf[i]);
    s->nbuf = 0;
    return 0;
}

int
store_cancelled(struct store *s, const int64_t *ids, int n, int64_t *out,
                int *nout)
{
    return s->ops->cancelled(s, ids, n, out, nout);
}

int
store_provider_put(struct store *s, const struct provider_row *p,
                   int64_t now_ms)
{
    return s->ops->provider_put(s, p, now_ms);
}

int
store_provider_get(struct store *s, const char *name, int *limit,
                   int64_t *resume_requested_at)
{
    return s->ops->provider_get(s, name, limit, resume_requested_at);
}

int
store_provider_request_resume(struct store *s, const char *name, int64_t now_ms)
{
    return s->ops->provider_request_resume(s, name, now_ms);
}

/* --- operator queries and commands ---------------------------------------- */

json_t *
store_status_json(struct store *s)
{
    return s->ops->status_json(s);
}

json_t *
store_jobs_json(struct store *s, const struct store_filter *f)
{
    return s->ops->jobs_json(s, f);
}

json_t *
store_job_json(struct store *s, const char *id_or_custom_id)
{
    return s->ops->job_json(s, id_or_custom_id);
}

json_t *
store_failures_json(struct store *s, const struct store_select *sel)
{
    return s->ops->failures_json(s, sel);
}

int
store_resolve(struct store *s, const char *const *refs, size_t n, int64_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int rc = s->ops->resolve_one(s, refs[i], &out[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int
store_retry(struct store *s, const int64_t *ids, size_t n,
            const struct store_select *sel, int64_t now_ms, long *changed)
{
    return s->ops->retry(s, ids, n, sel, now_ms, changed);
}

int
store_cancel(struct store *s, const int64_t *ids, size_t n,
             const struct store_select *sel, int64_t now_ms, long *changed)
{
    return s->ops->cancel(s, ids, n, sel, now_ms, changed);
}

int
store_export(struct store *s, const struct store_select *sel, store_row_fn fn,
             void *arg)
{
    return s->ops->export(s, sel, fn, arg);
}

int
store_purge(struct store *s, const struct store_select *sel, long batch_rows,
            long *jobs, long *attempts, long *freed_pages)
{
    *jobs = *attempts = *freed_pages = 0;
    if (batch_rows <= 0 || sel == NULL || sel->finished_before <= 0)
        return -EINVAL;
    return s->ops->purge(s, sel, batch_rows, jobs, attempts, freed_pages);
}

json_t *
store_progress_json(struct store *s, const char *batch)
{
    return s->ops->progress_json(s, batch);
}

json_t *
store_providers_json(struct store *s)
{
    return s->ops->providers_json(s);
}

/* --- moving a queue ------------------------------------------------------- */

const char *const store_tables[] = {"jobs",      "attempts", "outputs",
                                    "providers", "batches",  NULL};

static bool
store_table_known(const char *table)
{
    for (const char *const *t = store_tables; *t; t++) {
        if (strcmp(*t, table) == 0)
            return true;
    }
    return false;
}

/* A column name that may go into SQL text as it is. */
static bool
store_identifier(const char *name)
{
    if (*name == '\0' || strchr("0123456789", *name))
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") ==
           strlen(name);
}

int
store_is_empty(struct store *s, bool *empty)
{
    return s->ops->is_empty(s, empty);
}

int
store_dump(struct store *s, const char *table, store_row_fn fn, void *arg)
{
    if (!store_table_known(table))
        return -EINVAL;
    return s->ops->dump(s, table, fn, arg);
}

int
store_load(struct store *s, const char *table, const json_t *row)
{
    const char *key;
    json_t *v;

    if (!store_table_known(table) || !json_is_object(row) ||
        json_object_size(row) == 0)
        return -EINVAL;
    json_object_foreach((json_t *)row, key, v)
    {
        if (!store_identifier(key) || json_is_object(v) || json_is_array(v))
            return -EINVAL;
    }
    return s->ops->load(s, table, row);
}

int
store_load_done(struct store *s)
{
    return s->ops->load_done(s);
}

void
output_claim_clear(struct output_claim *c)
{
    if (c == NULL)
        return;
    free(c->url);
    free(c->provider);
    memset(c, 0, sizeof(*c));
}

int
store_outputs_claim(struct store *s, int max, int64_t now_ms, int64_t lease_ms,
                    const char *owner, struct output_claim *out, int *nout)
{
    return s->ops->outputs_claim(s, max, now_ms, lease_ms, owner, out, nout);
}

int
store_output_record(struct store *s, const struct output_result *r,
                    int64_t now_ms)
{
    return s->ops->output_record(s, r, now_ms);
}

int
store_outputs_next_due(struct store *s, int64_t *due_ms)
{
    return s->ops->outputs_next_due(s, due_ms);
}

int
store_outputs_counts(struct store *s, long *pending, long *stored, long *failed)
{
    return s->ops->outputs_counts(s, pending, stored, failed);
}

json_t *
store_outputs_json(struct store *s, const char *batch, const char *state)
{
    return s->ops->outputs_json(s, batch, state);
}

int
store_outputs_retry(struct store *s, const char *batch, int64_t now_ms,
                    long *changed)
{
    return s->ops->outputs_retry(s, batch, now_ms, changed);
}
