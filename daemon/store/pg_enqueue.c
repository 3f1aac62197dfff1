/*
 * pg_enqueue: jobs into the PostgreSQL queue (postgres.c). One job is one
 * INSERT … ON CONFLICT DO NOTHING; many go by COPY into the session's
 * temporary jobs_in, then one INSERT … SELECT moves them in file order.
 * Both send NOTIFY, delivered at commit.
 *
 * Rejected: COPY straight into jobs (duplicates must be skipped, which
 * COPY cannot).
 */
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
    [P_MOVE_IN] =
        "INSERT INTO jobs (provider, batch, custom_id, method, path, body, "
        "idempotency_key, priority, max_attempts, state, run_after, "
        "created_at, updated_at) "
        "SELECT provider, batch, custom_id, method, path, body, "
        "idempotency_key, priority, max_attempts, 'queued', $1::bigint, "
        "$1::bigint, $1::bigint FROM jobs_in ORDER BY seq "
        "ON CONFLICT (provider, idempotency_key) DO NOTHING",
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

/* COPY of jobs[0..n) into the session's jobs_in, emptied first. */
static int
pg_copy_in(struct pg_store *s, const struct jobspec *jobs, size_t n)
{
    struct buf b = {0};
    PGresult *r;
    int rc = 0;

    if ((rc = pg_exec(s, "TRUNCATE jobs_in", "enqueue table")) < 0)
        return rc;
    r = PQexec(s->conn, "COPY jobs_in FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        rc = pg_fail(s, r, "copy");
        PQclear(r);
        return rc;
    }
    PQclear(r);
    for (size_t i = 0; i < n; i++) {
        const struct jobspec *j = &jobs[i];
        buf_appendf(&b, "%zu\t", i);
        copy_field(&b, j->provider);
        copy_field(&b, j->batch);
        copy_field(&b, j->custom_id);
        copy_field(&b, j->method);
        copy_field(&b, j->path);
        copy_field(&b, j->body);
        copy_field(&b, j->idempotency_key);
        buf_appendf(&b, "%d\t%d\n", j->priority, j->max_attempts);
        /* 1 MiB per message: large enough to amortize, small enough
         * not to double the memory of a big file. */
        if (b.len >= (1u << 20) || i + 1 == n) {
            if (PQputCopyData(s->conn, b.data, (int)b.len) != 1) {
                buf_free(&b);
                PQputCopyEnd(s->conn, "send failed");
                PQclear(PQgetResult(s->conn));
                return pg_fail(s, NULL, "copy");
            }
            buf_reset(&b);
        }
    }
    buf_free(&b);
    if (PQputCopyEnd(s->conn, NULL) != 1)
        return pg_fail(s, NULL, "copy end");
    while ((r = PQgetResult(s->conn)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0)
            rc = pg_fail(s, r, "copy");
        PQclear(r);
    }
    return rc;
}

int
pg_insert_jobs(struct store *base, const struct jobspec *jobs, size_t n,
               int64_t now_ms, size_t *inserted)
{
    struct pg_store *s = pq(base);
    struct params p = {0};
    long moved = 0;
    int rc;

    *inserted = 0;
    if (n == 0)
        return 0;
    if ((rc = pg_ready(s)) < 0 || (rc = pg_copy_in(s, jobs, n)) < 0)
        return rc;
    p_int(&p, now_ms);
    if ((rc = pg_run_changes(s, P_MOVE_IN, &p, "insert jobs", &moved)) < 0 ||
        (rc = pg_notify(s, "enqueue")) < 0)
        return rc;
    *inserted = (size_t)moved;
    return 0;
}
