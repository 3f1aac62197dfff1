/*
 * sqlite_commit: the SQLite backend's group commit of outcomes (sqlite.c):
 * the buffered outcomes of store_record written by store_flush in one
 * BEGIN IMMEDIATE transaction; the cancelled check of jobs in flight.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "sq.h"
#include "sluice/log.h"

/* Right-hand sides see the old row: "state" is the state before. A job
 * an operator cancelled meanwhile stays cancelled, but what the
 * provider answered is still kept. Mode ?7: 0 keeps the last failure,
 * 1 records a failure, 2 a success (clears it). ?20: whether ?2 is a
 * terminal state, bound rather than written "?2 IN (…)": an IN list of
 * three or more values costs SQLite an ephemeral table built at every
 * execution, about 2 us a job. The statement is cut in three so that
 * the cost can be left out (ST_UPDATE_JOB_NO_COST). */
#define UPDATE_JOB_SET                                                         \
    "UPDATE jobs SET "                                                         \
    "state = CASE WHEN state = 'cancelled' THEN state ELSE ?2 END, "           \
    "run_after = ?3, "                                                         \
    "attempts = MAX(attempts - ?4, 0), "                                       \
    "deferrals = ?5, "                                                         \
    "send_key = COALESCE(?6, send_key), "                                      \
    "http_status = CASE ?7 WHEN 0 THEN http_status ELSE ?8 END, "              \
    "error_class = CASE ?7 WHEN 0 THEN error_class ELSE ?9 END, "              \
    "error_code = CASE ?7 WHEN 0 THEN error_code ELSE ?10 END, "               \
    "error_message = CASE ?7 WHEN 0 THEN error_message ELSE ?11 END, "         \
    "request_id = CASE ?7 WHEN 0 THEN request_id ELSE ?12 END, "               \
    "fields = CASE ?7 WHEN 0 THEN fields ELSE ?13 END, "                       \
    "result = COALESCE(?14, result), "
#define UPDATE_JOB_COST                                                        \
    "cost = CASE WHEN ?15 IS NULL THEN cost "                                  \
    "  ELSE COALESCE(cost, 0) + ?15 END, "
#define UPDATE_JOB_REST                                                        \
    "remote_id = COALESCE(?16, remote_id), "                                   \
    "poll_url = COALESCE(?17, poll_url), "                                     \
    "waiting_since = CASE WHEN ?2 = 'waiting' "                                \
    "  THEN COALESCE(waiting_since, ?18) "                                     \
    "  WHEN ?2 IN ('queued', 'retrying') THEN NULL "                           \
    "  ELSE waiting_since END, "                                               \
    "finished_at = CASE WHEN state = 'cancelled' "                             \
    "  THEN COALESCE(finished_at, ?18) "                                       \
    "  WHEN ?20 THEN ?18 "                                                     \
    "  ELSE NULL END, "                                                        \
    "lease_until = CASE WHEN state <> 'cancelled' AND ?2 = 'running' "         \
    "  THEN lease_until ELSE NULL END, "                                       \
    "lease_owner = CASE WHEN state <> 'cancelled' AND ?2 = 'running' "         \
    "  THEN lease_owner ELSE NULL END, "                                       \
    "updated_at = ?18 "                                                        \
    "WHERE id = ?1 AND (?19 IS NULL OR lease_owner = ?19 "                     \
    "  OR (state = 'cancelled' AND lease_owner IS NULL))"

/* Statements prepared at open (sqlite_conn.c). */
const char *const sqlite_commit_sql[ST_COUNT] = {
    [ST_UPDATE_JOB] = UPDATE_JOB_SET UPDATE_JOB_COST UPDATE_JOB_REST,
    /* Without cost in the SET list the spend trigger (sql/012) is not
     * even started, for an outcome without a cost (most of them). */
    [ST_UPDATE_JOB_NO_COST] = UPDATE_JOB_SET UPDATE_JOB_REST,
    /* Unless the job was purged: nothing to attach the attempt to. */
    [ST_INSERT_ATTEMPT] =
        "INSERT INTO attempts (job_id, attempt, idempotency_key, started_at, "
        "finished_at, http_status, error_class, error_code, error_message, "
        "request_id, retry_after_ms, is_poll) "
        "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12 "
        "WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1)",
    /* The job's row was just updated: it is there, nothing to look up. */
    [ST_INSERT_ATTEMPT_WRITTEN] =
        "INSERT INTO attempts (job_id, attempt, idempotency_key, started_at, "
        "finished_at, http_status, error_class, error_code, error_message, "
        "request_id, retry_after_ms, is_poll) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [ST_JOB_STATE] = "SELECT state FROM jobs WHERE id = ?1",
};

/* Binds "" as NULL: the outcome's empty code or request id means none. */
static void
bind_text_or_null(sqlite3_stmt *st, int i, const char *v)
{
    bind_text(st, i, v && *v ? v : NULL);
}

/* Writes one buffered update inside the flush transaction. */
static int
flush_one(struct sqlite_store *s, const struct store_pending *p,
          size_t *dropped)
{
    const struct job_update *u = &p->u;
    sqlite3_stmt *st =
        stmt(s, u->has_cost ? ST_UPDATE_JOB : ST_UPDATE_JOB_NO_COST);
    bool failed = u->cls != ERR_NONE;
    int mode = failed ? 1 : u->state == JOB_SUCCEEDED ? 2 : 0;
    int rc;

    sqlite3_bind_int64(st, 1, u->job_id);
    bind_text(st, 2, job_state_name(u->state));
    sqlite3_bind_int64(st, 3, u->run_after);
    sqlite3_bind_int(st, 4, u->uncharge && !u->is_poll);
    sqlite3_bind_int(st, 5, u->deferrals);
    bind_text(st, 6, u->new_key);
    sqlite3_bind_int(st, 7, mode);
    bind_int64_or_null(st, 8, u->http_status);
    if (failed) {
        bind_text(st, 9, err_class_name(u->cls));
        bind_text_or_null(st, 10, u->code);
        bind_text_or_null(st, 11, u->message);
        bind_text(st, 13, u->fields);
    }
    bind_text_or_null(st, 12, u->request_id);
    /* A value over SQLite's length limit fails its bind, not the step:
     * caught here, or the row would be written without it. */
    if (u->result && (rc = sqlite3_bind_text(st, 14, u->result, -1,
                                             SQLITE_STATIC)) != SQLITE_OK)
        return sqlite_fail(s, rc, "update job");
    if (u->has_cost)
        sqlite3_bind_double(st, 15, u->cost);
    bind_text(st, 16, u->remote_id);
    bind_text(st, 17, u->poll_url);
    sqlite3_bind_int64(st, 18, p->at);
    bind_text(st, 19, u->owner);
    sqlite3_bind_int(st, 20, job_state_terminal(u->state));
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "update job");
    /* 0: purged, or its lease went to another owner meanwhile: the
     * outputs are the new holder's to record */
    bool written = sqlite3_changes(s->db) > 0;
    if (!written)
        (*dropped)++;
    for (size_t i = 0; written && i < u->noutput_urls; i++) {
        st = ostmt(s, OS_INSERT);
        sqlite3_bind_int64(st, 1, u->job_id);
        bind_text(st, 2, u->output_urls[i]);
        sqlite3_bind_int64(st, 3, p->at);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, "insert output");
    }
    if (!u->has_attempt)
        return 0;

    st = stmt(s, written ? ST_INSERT_ATTEMPT_WRITTEN : ST_INSERT_ATTEMPT);
    sqlite3_bind_int64(st, 1, u->job_id);
    sqlite3_bind_int(st, 2, u->attempt);
    bind_text(st, 3, u->key_sent);
    sqlite3_bind_int64(st, 4, u->started_at);
    sqlite3_bind_int64(st, 5, u->finished_at);
    bind_int64_or_null(st, 6, u->http_status);
    if (failed) {
        bind_text(st, 7, err_class_name(u->cls));
        bind_text_or_null(st, 8, u->code);
        bind_text_or_null(st, 9, u->message);
    }
    bind_text_or_null(st, 10, u->request_id);
    bind_int64_or_null(st, 11, u->retry_after_ms);
    sqlite3_bind_int(st, 12, u->is_poll);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "insert attempt");
}

/* One transaction over the whole buffer; on failure *bad is the index of
 * the update that failed (nbuf when it was the transaction itself). */
static int
flush_all(struct sqlite_store *s, size_t *bad, size_t *dropped, char *why,
          size_t whylen)
{
    struct store *base = &s->base;
    int rc;

    *bad = base->nbuf;
    *dropped = 0;
    if ((rc = exec_stmt(s, ST_BEGIN, "flush: begin")) < 0)
        return rc;
    for (size_t i = 0; i < base->nbuf; i++) {
        if ((rc = flush_one(s, &base->buf[i], dropped)) < 0) {
            *bad = i;
            goto fail;
        }
    }
    if ((rc = exec_stmt(s, ST_COMMIT, "flush: commit")) < 0)
        goto fail;
    return 0;
fail:
    /* All or nothing: the buffer is kept and written by a later flush. */
    snprintf(why, whylen, "%s", sqlite3_errmsg(s->db));
    sqlite_rollback(&s->base);
    return rc;
}

/* A row the database refuses for its content must not hold back the
 * others: its update becomes the job's failure (protocol, unstorable) and
 * the flush goes again; if even that is refused (an operator's trigger),
 * the update is dropped: the job stays leased and is taken back later. */
int
sqlite_flush(struct store *base)
{
    struct sqlite_store *s = sq(base);
    size_t dropped, bad;
    char why[256];
    int rc;

    while ((rc = flush_all(s, &bad, &dropped, why, sizeof(why))) < 0) {
        if (!backend_row_error(rc) || bad >= base->nbuf)
            return rc;
        backend_pending_refused(base, bad, why);
        if (base->nbuf == 0)
            return 0;
    }
    if (dropped > 0)
        log_info("store: %zu outcomes not written: job purged, or taken "
                 "back from this daemon meanwhile",
                 dropped);
    return 0;
}

int
sqlite_cancelled(struct store *base, const int64_t *ids, int n, int64_t *out,
                 int *nout)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = s->st[ST_JOB_STATE];
    int rc = SQLITE_DONE;

    *nout = 0;
    for (int i = 0; i < n; i++) {
        st = stmt(s, ST_JOB_STATE);
        sqlite3_bind_int64(st, 1, ids[i]);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const char *state = (const char *)sqlite3_column_text(st, 0);
            if (state && strcmp(state, "cancelled") == 0)
                out[(*nout)++] = ids[i];
        } else if (rc != SQLITE_DONE) {
            break;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE
               ? 0
               : sqlite_fail(s, rc, "cancelled jobs");
}
