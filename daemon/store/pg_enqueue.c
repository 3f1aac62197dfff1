/*
 * pg_enqueue: jobs into the PostgreSQL queue (postgres.c). One job is one
 * INSERT … ON CONFLICT DO NOTHING. Many (store_insert_jobs, a file's
 * chunks) go by COPY straight into jobs: the server's cheapest way in,
 * rows batched into the heap with no staging table and no speculative
 * insertion per row (its CPU per row down by a third against the COPY into
 * a temporary table and INSERT … SELECT that was here before;
 * bench/README.md, postgres).
 *
 * COPY cannot skip a duplicate key: it fails, and its transaction with
 * it. So a file's transaction holds a savepoint over the rows it copies,
 * keeps their COPY text, and on a duplicate rolls back to the savepoint
 * and replays them through the session's temporary jobs_in, whose INSERT
 * … SELECT … ON CONFLICT DO NOTHING skips duplicates in file order. The
 * call after that is staged too, until one finds no duplicate (a file
 * enqueued again is all duplicates: COPY would fail at every chunk). The
 * savepoint moves on every PG_COPY_SEGMENT bytes, which bounds the text
 * kept for a replay and the subtransactions of a long file.
 *
 * NOTIFY (delivered at commit) goes once per transaction, before its
 * first savepoint.
 *
 * Rejected: a pre-check of the keys before each COPY (one more index
 * probe per row, and still racing another enqueue); a savepoint per call
 * (a subtransaction per 1,024 lines: past 64 a backend's snapshot tracking
 * spills to pg_subtrans, which every other session then pays for while
 * the file's transaction is open); one COPY across calls (the count of
 * duplicates would come only at the end, and its transition table for the
 * kept counts spills to disk).
 */
#include <stdbool.h>
#include <string.h>

#include "pg.h"
#include "sluice/jobspec.h"
#include "sluice/xmalloc.h"

/* Statements prepared on every connection (pg_conn.c). */
const char *const pg_enqueue_sql[P_COUNT] = {
    [P_INSERT_JOB] =
        "INSERT INTO jobs (provider, batch, custom_id, method, path, body, "
        "idempotency_key, priority, max_attempts, state, run_after, "
        "created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::int, $9::int, 'queued', "
        "$10::bigint, $10::bigint, $10::bigint) "
        "ON CONFLICT (provider, idempotency_key) DO NOTHING",
    /* What COPY put in jobs_in, in file order, duplicates skipped. */
    [P_MOVE_IN] = "INSERT INTO jobs (" PG_COPY_COLUMNS ", state) "
                  "SELECT " PG_COPY_COLUMNS ", 'queued' FROM jobs_in "
                  "ORDER BY seq ON CONFLICT (provider, idempotency_key) "
                  "DO NOTHING",
};

static void
p_jobspec(struct params *p, const struct jobspec *j, int64_t now_ms)
{
    p_text(p, j->provider);
    p_text(p, j->batch);
    p_text(p, j->custom_id);
    p_text(p, j->method);
    p_text(p, j->path);
    p_text(p, j->body);
    p_text(p, j->idempotency_key);
    p_int(p, j->priority);
    p_int(p, j->max_attempts);
    p_int(p, now_ms);
}

int
pg_insert_job(struct store *base, const struct jobspec *j, int64_t now_ms)
{
    struct pg_store *s = pq(base);
    struct params p = {0};
    long n = 0;
    int rc;

    p_jobspec(&p, j, now_ms);
    if ((rc = pg_run_changes(s, P_INSERT_JOB, &p, "insert job", &n)) < 0 ||
        (rc = pg_notify(s, "enqueue")) < 0)
        return rc;
    return n == 1 ? 0 : 1;
}

/* A text field of COPY's text format: \N for NULL, and backslash, tab,
 * newline and carriage return escaped. */
static void
copy_field(struct buf *b, const char *v)
{
    static const char special[] = "\\\t\n\r";
    static const char *const escaped[] = {"\\\\", "\\t", "\\n", "\\r"};

    if (v == NULL) {
        buf_append(b, "\\N\t", 3);
        return;
    }
    while (*v) {
        size_t run = strcspn(v, special);
        buf_append(b, v, run);
        v += run;
        if (*v) {
            buf_append(b, escaped[strchr(special, *v) - special], 2);
            v++;
        }
    }
    buf_append(b, "\t", 1);
}

/* jobs[0..n) as COPY text rows of PG_COPY_COLUMNS, appended to b. */
static void
copy_rows(struct buf *b, const struct jobspec *jobs, size_t n, int64_t now_ms)
{
    char tail[80];

    /* run_after, created_at, updated_at */
    snprintf(tail, sizeof(tail), "\t%lld\t%lld\t%lld\n", (long long)now_ms,
             (long long)now_ms, (long long)now_ms);
    for (size_t i = 0; i < n; i++) {
        const struct jobspec *j = &jobs[i];
        copy_field(b, j->provider);
        copy_field(b, j->batch);
        copy_field(b, j->custom_id);
        copy_field(b, j->method);
        copy_field(b, j->path);
        copy_field(b, j->body);
        copy_field(b, j->idempotency_key);
        buf_appendf(b, "%d\t%d%s", j->priority, j->max_attempts, tail);
    }
}

/* True for the failure of a row whose key is in jobs already. */
static bool
copy_key_taken(const PGresult *r)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *constraint = PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME);

    return state && strcmp(state, "23505") == 0 && constraint &&
           strcmp(constraint, "jobs_provider_idempotency_key_key") == 0;
}

/* Runs sql, which ends in a COPY … FROM STDIN, with data[0..len) as its
 * rows; *rows: the rows copied. Returns 0, 1 when a row's key is in jobs
 * already (with taken; nothing logged, nothing of the COPY stays), or a
 * negative errno. */
static int
pg_copy(struct pg_store *s, const char *sql, const char *data, size_t len,
        bool taken, long *rows)
{
    PGresult *r = PQexec(s->conn, sql);
    int rc = 0;

    if (PQresultStatus(r) != PGRES_COPY_IN) {
        rc = pg_fail(s, r, "copy");
        PQclear(r);
        return rc;
    }
    PQclear(r);
    for (size_t off = 0; off < len;) {
        size_t k = len - off < PG_COPY_MESSAGE ? len - off : PG_COPY_MESSAGE;
        if (PQputCopyData(s->conn, data + off, (int)k) != 1) {
            PQputCopyEnd(s->conn, "send failed");
            PQclear(PQgetResult(s->conn));
            return pg_fail(s, NULL, "copy");
        }
        off += k;
    }
    if (PQputCopyEnd(s->conn, NULL) != 1)
        return pg_fail(s, NULL, "copy end");
    while ((r = PQgetResult(s->conn)) != NULL) {
        if (rc == 0 && PQresultStatus(r) == PGRES_COMMAND_OK)
            *rows = strtol(PQcmdTuples(r), NULL, 10);
        else if (rc == 0 && taken && copy_key_taken(r))
            rc = 1;
        else if (rc == 0)
            rc = pg_fail(s, r, "copy");
        PQclear(r);
    }
    return rc;
}

/* The slow path: data[0..len) into the emptied jobs_in, then into jobs
 * in file order, duplicates skipped; *moved: the rows inserted. */
static int
pg_copy_staged(struct pg_store *s, const char *data, size_t len, long *moved)
{
    long rows = 0;
    int rc;

    *moved = 0;
    if ((rc = pg_exec(s, "TRUNCATE jobs_in", "enqueue table")) < 0 ||
        (rc = pg_copy(s, "COPY jobs_in (" PG_COPY_COLUMNS ") FROM STDIN", data,
                      len, false, &rows)) < 0)
        return rc;
    return pg_run_changes(s, P_MOVE_IN, NULL, "insert jobs", moved);
}

/* The next store_insert_jobs sets a new savepoint. */
static void
pg_copy_new_segment(struct pg_store *s)
{
    buf_reset(&s->copy_seg);
    s->copy_seg_rows = 0;
    s->copy_seg_open = false;
}

void
pg_enqueue_reset(struct pg_store *s)
{
    pg_copy_new_segment(s);
    s->copy_staged = false;
    s->copy_notified = false;
}

/* A duplicate met by the COPY of this call: the segment's rows go in
 * again through jobs_in; *rows: those of this call inserted (the earlier
 * calls counted theirs). */
static int
pg_copy_replay(struct pg_store *s, long *rows)
{
    struct buf *seg = &s->copy_seg;
    long moved;
    int rc;

    if (s->in_tx && (rc = pg_exec(s,
                                  "ROLLBACK TO SAVEPOINT sluice_copy; "
                                  "RELEASE SAVEPOINT sluice_copy",
                                  "copy rollback")) < 0)
        return rc;
    if ((rc = pg_copy_staged(s, seg->data, seg->len, &moved)) < 0)
        return rc;
    /* fewer only if another session inserted one of the earlier keys
     * meanwhile: those are its jobs now, counted by this file already */
    *rows =
        (size_t)moved > s->copy_seg_rows ? moved - (long)s->copy_seg_rows : 0;
    pg_copy_new_segment(s);
    s->copy_staged = true;
    return 0;
}

int
pg_insert_jobs(struct store *base, const struct jobspec *jobs, size_t n,
               int64_t now_ms, size_t *inserted)
{
    struct pg_store *s = pq(base);
    struct buf *seg = &s->copy_seg;
    size_t from;
    long rows = 0;
    int rc;

    *inserted = 0;
    if (n == 0)
        return 0;
    if ((rc = pg_ready(s)) < 0)
        return rc;
    if (!s->in_tx)
        pg_enqueue_reset(s); /* each statement is its own transaction */
    /* once a transaction, before its first savepoint: a notification
     * queued inside one that is rolled back would be dropped */
    if (!s->copy_notified) {
        if ((rc = pg_notify(s, "enqueue")) < 0)
            return rc;
        s->copy_notified = true;
    }
    from = seg->len;
    copy_rows(seg, jobs, n, now_ms);
    if (s->copy_staged) {
        rc = pg_copy_staged(s, seg->data, seg->len, &rows);
        s->copy_staged = (size_t)rows < n;
        pg_copy_new_segment(s);
    } else {
        rc = pg_copy(s,
                     s->in_tx && !s->copy_seg_open
                         ? "SAVEPOINT sluice_copy; "
                           "COPY jobs (" PG_COPY_COLUMNS ") FROM STDIN"
                         : "COPY jobs (" PG_COPY_COLUMNS ") FROM STDIN",
                     seg->data + from, seg->len - from, true, &rows);
        s->copy_seg_open = s->in_tx && rc >= 0;
        if (rc == 1) {
            rc = pg_copy_replay(s, &rows);
        } else if (rc == 0 && !s->in_tx) {
            buf_reset(seg);
        } else if (rc == 0) {
            s->copy_seg_rows += (size_t)rows;
            if (seg->len >= PG_COPY_SEGMENT) {
                rc =
                    pg_exec(s, "RELEASE SAVEPOINT sluice_copy", "copy release");
                pg_copy_new_segment(s);
            }
        }
    }
    if (rc < 0)
        return rc;
    *inserted = (size_t)rows;
    return 0;
}
