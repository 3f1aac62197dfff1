/*
 * pg_commit: the group commit of outcomes on PostgreSQL (postgres.c).
 * store_record buffers outcomes (store.c); pg_flush writes the buffer in
 * one transaction sent as a pipeline (libpq pipeline mode): an update of
 * the job guarded by its lease owner, and its attempt row, per outcome,
 * PG_FLUSH_CHUNK outcomes per sync, so a few hundred outcomes cost one
 * round trip per chunk, not two per job.
 */
#include <stdio.h>
#include <string.h>

#include "pg.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

/* Outcomes per pipeline sync in a flush: the server's answers to one
 * chunk must fit the socket buffers, as nothing reads them until the
 * sync is sent (libpq's pipeline deadlock). */
#define PG_FLUSH_CHUNK 256

/* Statements prepared on every connection (pg_conn.c). */
const char *const pg_commit_sql[P_COUNT] = {
    /* As ST_UPDATE_JOB of sqlite_commit.c (right-hand sides see the old row;
     * written only while $19 holds the lease), and the outputs of a
     * success ($20, a text[]) in the same statement: they exist only
     * when the update did. An outcome with an attempt ($21-$24: number,
     * poll, times) is written only while its attempt row is not there
     * yet: a commit sent again after its acknowledgement was lost
     * changes nothing, even when the job has been claimed again by the
     * same owner meanwhile. Returns whether it wrote. */
    [P_UPDATE_JOB] =
        "WITH u AS (UPDATE jobs SET "
        "state = CASE WHEN state = 'cancelled' THEN state "
        "  ELSE $2::text END, "
        "run_after = $3::bigint, "
        "attempts = GREATEST(attempts - $4::int, 0), "
        "deferrals = $5::int, "
        "send_key = COALESCE($6::text, send_key), "
        "http_status = CASE $7::int WHEN 0 THEN http_status "
        "  ELSE $8::int END, "
        "error_class = CASE $7::int WHEN 0 THEN error_class "
        "  ELSE $9::text END, "
        "error_code = CASE $7::int WHEN 0 THEN error_code "
        "  ELSE $10::text END, "
        "error_message = CASE $7::int WHEN 0 THEN error_message "
        "  ELSE $11::text END, "
        "request_id = CASE $7::int WHEN 0 THEN request_id "
        "  ELSE $12::text END, "
        "fields = CASE $7::int WHEN 0 THEN fields ELSE $13::text END, "
        "result = COALESCE($14::text, result), "
        "cost = CASE WHEN $15::double precision IS NULL THEN cost "
        "  ELSE COALESCE(cost, 0) + $15::double precision END, "
        "remote_id = COALESCE($16::text, remote_id), "
        "poll_url = COALESCE($17::text, poll_url), "
        "waiting_since = CASE WHEN $2::text = 'waiting' "
        "  THEN COALESCE(waiting_since, $18::bigint) "
        "  WHEN $2::text IN ('queued', 'retrying') THEN NULL "
        "  ELSE waiting_since END, "
        "finished_at = CASE WHEN state = 'cancelled' "
        "  THEN COALESCE(finished_at, $18::bigint) "
        "  WHEN $2::text IN (" JOB_TERMINAL_SQL ") "
        "  THEN $18::bigint ELSE NULL END, "
        "lease_until = CASE WHEN state <> 'cancelled' "
        "  AND $2::text = 'running' THEN lease_until ELSE NULL END, "
        "lease_owner = CASE WHEN state <> 'cancelled' "
        "  AND $2::text = 'running' THEN lease_owner ELSE NULL END, "
        "updated_at = $18::bigint "
        "WHERE id = $1::bigint AND ($19::text IS NULL "
        "  OR lease_owner = $19::text "
        "  OR (state = 'cancelled' AND lease_owner IS NULL)) "
        "AND ($21::int IS NULL OR NOT EXISTS (SELECT 1 FROM attempts "
        "  WHERE job_id = $1::bigint AND attempt = $21::int "
        "  AND is_poll = $22::int AND started_at = $23::bigint "
        "  AND finished_at = $24::bigint)) "
        "RETURNING id, state), "
        "o AS (INSERT INTO outputs (job_id, url, run_after, created_at) "
        "  SELECT u.id, url, $18::bigint, $18::bigint "
        "  FROM u, unnest($20::text[]) AS url WHERE u.state = 'succeeded' "
        "  ON CONFLICT (job_id, url) DO NOTHING) "
        "SELECT count(*) AS written FROM u",
    /* Nothing to attach the attempt to when the job was purged; once
     * only (sql/postgres/005_attempts_once.sql). */
    [P_INSERT_ATTEMPT] =
        "INSERT INTO attempts (job_id, attempt, idempotency_key, started_at, "
        "finished_at, http_status, error_class, error_code, error_message, "
        "request_id, retry_after_ms, is_poll) "
        "SELECT $1::bigint, $2::int, $3::text, $4::bigint, $5::bigint, "
        "$6::int, $7::text, $8::text, $9::text, $10::text, $11::bigint, "
        "$12::int WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $1::bigint) "
        "ON CONFLICT (job_id, attempt, is_poll, started_at, finished_at) "
        "DO NOTHING",
    [P_CANCELLED] = "SELECT id FROM jobs WHERE id = ANY($1::bigint[]) "
                    "AND state = 'cancelled' ORDER BY id",
};

/* urls[0..n) as a PostgreSQL text[] literal: {"a","b"}, with " and \
 * escaped. */
static void
text_array(struct buf *b, const char *const *urls, size_t n)
{
    buf_append(b, "{", 1);
    for (size_t i = 0; i < n; i++) {
        buf_append(b, i ? ",\"" : "\"", i ? 2 : 1);
        for (const char *c = urls[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                buf_append(b, "\\", 1);
            buf_append(b, c, 1);
        }
        buf_append(b, "\"", 1);
    }
    buf_append(b, "}", 1);
}

/* Queues the statements of buffered update idx on the pipeline; of[k]
 * is the update statement k of the chunk belongs to. */
static bool
flush_send(struct pg_store *s, size_t idx, size_t *of, int *nsent)
{
    const struct store_pending *sp = &s->base.buf[idx];
    const struct job_update *u = &sp->u;
    bool failed = u->cls != ERR_NONE;
    int mode = failed ? 1 : u->state == JOB_SUCCEEDED ? 2 : 0;
    char name[16];
    struct params p = {0};
    struct buf urls = {0};
    bool sent;

    p_int(&p, u->job_id);
    p_text(&p, job_state_name(u->state));
    p_int(&p, u->run_after);
    p_int(&p, u->uncharge && !u->is_poll);
    p_int(&p, u->deferrals);
    p_text(&p, u->new_key);
    p_int(&p, mode);
    p_int_or_null(&p, u->http_status);
    p_text(&p, failed ? err_class_name(u->cls) : NULL);
    p_text_or_null(&p, failed ? u->code : NULL);
    p_text_or_null(&p, failed ? u->message : NULL);
    p_text_or_null(&p, u->request_id);
    p_text(&p, failed ? u->fields : NULL);
    p_text(&p, u->result);
    if (u->has_cost)
        p_double(&p, u->cost);
    else
        p_text(&p, NULL);
    p_text(&p, u->remote_id);
    p_text(&p, u->poll_url);
    p_int(&p, sp->at);
    p_text(&p, u->owner);
    if (u->noutput_urls > 0)
        text_array(&urls, u->output_urls, u->noutput_urls);
    p_text(&p, urls.data);
    if (u->has_attempt) {
        p_int(&p, u->attempt);
        p_int(&p, u->is_poll);
        p_int(&p, u->started_at);
        p_int(&p, u->finished_at);
    } else {
        for (int i = 0; i < 4; i++)
            p_text(&p, NULL);
    }
    snprintf(name, sizeof(name), "p%d", (int)P_UPDATE_JOB);
    sent = PQsendQueryPrepared(s->conn, name, p.n, p.v, NULL, NULL, 0);
    buf_free(&urls);
    if (!sent)
        return false;
    of[(*nsent)++] = idx;
    if (!u->has_attempt)
        return true;

    memset(&p, 0, sizeof(p));
    p_int(&p, u->job_id);
    p_int(&p, u->attempt);
    p_text(&p, u->key_sent);
    p_int(&p, u->started_at);
    p_int(&p, u->finished_at);
    p_int_or_null(&p, u->http_status);
    p_text(&p, failed ? err_class_name(u->cls) : NULL);
    p_text_or_null(&p, failed ? u->code : NULL);
    p_text_or_null(&p, failed ? u->message : NULL);
    p_text_or_null(&p, u->request_id);
    p_int_or_null(&p, u->retry_after_ms);
    p_int(&p, u->is_poll);
    snprintf(name, sizeof(name), "p%d", (int)P_INSERT_ATTEMPT);
    if (!PQsendQueryPrepared(s->conn, name, p.n, p.v, NULL, NULL, 0))
        return false;
    of[(*nsent)++] = idx;
    return true;
}

/* What one attempt at writing the buffer found. */
struct flush_result {
    size_t dropped; /* updates that wrote nothing: the job purged, its
                       lease another owner's, or the outcome already
                       written (a commit sent again) */
    size_t bad;     /* the update the database refused for its content,
                       or nbuf */
    char why[256];  /* and why (the server's message) */
};

/* A failed statement of update idx (nbuf: the COMMIT, no one update):
 * its errno, logged unless a row itself was refused (then fr->bad and
 * fr->why say which and why). */
static int
flush_failed(struct pg_store *s, const PGresult *r, size_t idx,
             struct flush_result *fr)
{
    int err = pg_errno(s, r);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);

    if (!backend_row_error(err))
        return pg_fail(s, r, "flush");
    fr->bad = idx;
    snprintf(fr->why, sizeof(fr->why), "%s", msg ? msg : "refused");
    return err;
}

/* Reads the results of the nsent statements of a chunk (of: their
 * updates) and the sync; the first failure's errno, or 0. A refusal of
 * the row itself is not logged here: the caller sets the row aside and
 * says so once. */
static int
flush_collect(struct pg_store *s, int nsent, const size_t *of,
              struct flush_result *fr)
{
    int rc = 0;

    for (int i = 0; i <= nsent; i++) {
        PGresult *r;
        bool sync = false;
        while ((r = PQgetResult(s->conn)) != NULL) {
            ExecStatusType st = PQresultStatus(r);
            if (st == PGRES_PIPELINE_SYNC)
                sync = true;
            else if (st == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                     strcmp(PQgetvalue(r, 0, 0), "0") == 0)
                fr->dropped++;
            else if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK &&
                     st != PGRES_PIPELINE_ABORTED && rc == 0)
                rc = flush_failed(s, r, i < nsent ? of[i] : s->base.nbuf, fr);
            PQclear(r);
            if (sync)
                break;
        }
        if (sync)
            break;
        if (PQstatus(s->conn) != CONNECTION_OK) {
            if (rc == 0)
                rc = pg_fail(s, NULL, "flush");
            break;
        }
    }
    return rc;
}

/* One transaction over buffered updates [first, last), all or nothing. */
static int
flush_range(struct pg_store *s, size_t first, size_t last,
            struct flush_result *fr)
{
    struct store *base = &s->base;
    size_t of[2 * PG_FLUSH_CHUNK];
    size_t i = first;
    PGresult *r;
    int rc;

    fr->dropped = 0;
    fr->bad = base->nbuf;
    fr->why[0] = '\0';
    if ((rc = pg_ready(s)) < 0)
        return rc;
    if ((rc = pg_exec(s, "BEGIN", "flush: begin")) < 0)
        return rc;
    if (!PQenterPipelineMode(s->conn)) {
        rc = pg_fail(s, NULL, "flush: pipeline");
        goto fail;
    }
    while (i < last && rc == 0) {
        int nsent = 0;
        size_t end = i + PG_FLUSH_CHUNK < last ? i + PG_FLUSH_CHUNK : last;
        for (; i < end; i++) {
            if (!flush_send(s, i, of, &nsent))
                break;
        }
        if (!PQpipelineSync(s->conn)) {
            rc = pg_fail(s, NULL, "flush: sync");
            break;
        }
        rc = flush_collect(s, nsent, of, fr);
        if (rc == 0 && i < end)
            rc = pg_fail(s, NULL, "flush: send");
    }
    if (s->conn && PQstatus(s->conn) == CONNECTION_OK)
        PQexitPipelineMode(s->conn);
    if (rc < 0)
        goto fail;
    /* A deferred constraint of yours fails here, naming no update. */
    r = PQexec(s->conn, "COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = flush_failed(s, r, base->nbuf, fr);
    PQclear(r);
    if (rc < 0)
        goto fail;
    return 0;
fail:
    /* All or nothing: the buffer is kept and written by a later flush. */
    if (s->conn && PQstatus(s->conn) == CONNECTION_OK &&
        PQtransactionStatus(s->conn) != PQTRANS_IDLE)
        PQclear(PQexec(s->conn, "ROLLBACK"));
    return rc;
}

/* A refusal at COMMIT names no update: the buffer goes one update per
 * transaction, each written taken out of it, each refused set aside,
 * until what is left is written or fails for another reason (kept). */
static int
flush_one_by_one(struct pg_store *s, size_t *dropped)
{
    struct store *base = &s->base;
    struct flush_result fr;
    size_t k = 0;
    int rc;

    while (k < base->nbuf) {
        if ((rc = flush_range(s, k, k + 1, &fr)) == 0) {
            *dropped += fr.dropped;
            backend_pending_clear(&base->buf[k]);
            memmove(&base->buf[k], &base->buf[k + 1],
                    (base->nbuf - k - 1) * sizeof(base->buf[0]));
            base->nbuf--;
        } else if (backend_row_error(rc)) {
            backend_pending_refused(base, k, fr.why);
        } else {
            return rc;
        }
    }
    return 0;
}

/* A row the database refuses for its content must not hold back the
 * others, as on SQLite: the failing statement of the pipeline names its
 * update, which becomes the job's failure (protocol, unstorable), and the
 * flush goes again; if even that is refused (an operator's trigger), the
 * update is dropped: the job stays leased and is taken back later. A
 * refusal at COMMIT (a deferred constraint) names none: then one update
 * per transaction finds it. */
int
pg_flush(struct store *base)
{
    struct pg_store *s = pq(base);
    struct flush_result fr;
    int rc;

    while ((rc = flush_range(s, 0, base->nbuf, &fr)) < 0) {
        if (!backend_row_error(rc))
            return rc;
        if (fr.bad >= base->nbuf) {
            fr.dropped = 0;
            if ((rc = flush_one_by_one(s, &fr.dropped)) < 0)
                return rc;
            break;
        }
        backend_pending_refused(base, fr.bad, fr.why);
        if (base->nbuf == 0)
            return 0;
    }
    if (fr.dropped > 0)
        log_info("store: %zu outcomes not written: job purged, taken back "
                 "from this daemon meanwhile, or written already",
                 fr.dropped);
    return 0;
}

int
pg_cancelled(struct store *base, const int64_t *ids, int n, int64_t *out,
             int *nout)
{
    struct pg_store *s = pq(base);
    struct params p = {0};
    struct buf b = {0};
    PGresult *r;
    int err;

    *nout = 0;
    if (n <= 0)
        return 0;
    buf_appendf(&b, "{");
    for (int i = 0; i < n; i++)
        buf_appendf(&b, "%s%lld", i ? "," : "", (long long)ids[i]);
    buf_appendf(&b, "}");
    p_text(&p, b.data);
    r = pg_run(s, P_CANCELLED, &p, "cancelled jobs", &err);
    buf_free(&b);
    if (r == NULL)
        return err;
    for (int i = 0; i < PQntuples(r) && i < n; i++)
        out[(*nout)++] = value_int(r, i, 0);
    PQclear(r);
    return 0;
}
