/*
 * sqlite_enqueue: the SQLite backend's inserts (sqlite.c): one job, or
 * many in multi-row INSERTs of STORE_INSERT_ROWS rows, the kept counts
 * (job_counts) bumped once per statement rather than per row.
 */
#include <string.h>

#include "sq.h"
#include "sluice/jobspec.h"
#include "sluice/xmalloc.h"

/* Rows per statement of store_insert_jobs: 128 × 10 parameters stays far
 * under SQLite's variable limit, and past ~100 rows the per-statement
 * cost is already noise next to the B-tree work. */
#define STORE_INSERT_ROWS 128
#define INSERT_JOB_HEAD                                                        \
    "INSERT INTO jobs (provider, batch, custom_id, method, path, body, "       \
    "idempotency_key, priority, max_attempts, state, run_after, "              \
    "created_at, updated_at) VALUES "
#define INSERT_JOB_TAIL " ON CONFLICT (provider, idempotency_key) DO NOTHING"

/* Statements prepared at open (sqlite_conn.c). */
const char *const sqlite_enqueue_sql[ST_COUNT] = {
    [ST_INSERT_JOB] =
        "INSERT INTO jobs (provider, batch, custom_id, method, path, body, "
        "idempotency_key, priority, max_attempts, state, run_after, "
        "created_at, updated_at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?10, ?10, ?10) "
        "ON CONFLICT (provider, idempotency_key) DO NOTHING",
    /* Enqueued jobs are counted here, once per statement of inserts,
     * rather than by a trigger per row (sql/008_counted_enqueue.sql). */
    [ST_COUNT_INSERTED] =
        "INSERT INTO job_counts (provider, batch, state, n) "
        "VALUES (?1, coalesce(?2, ''), 'queued', ?3) "
        "ON CONFLICT (provider, batch, state) DO UPDATE SET n = n + ?3",
};

/* The multi-row INSERT of store_insert_jobs: row r binds ?(10r+1) to
 * ?(10r+10) in the order of ST_INSERT_JOB, now included. */
int
sqlite_prepare_insert_many(struct sqlite_store *s)
{
    struct buf b = {0};
    int rc;

    buf_appendf(&b, "%s", INSERT_JOB_HEAD);
    for (int r = 0; r < STORE_INSERT_ROWS; r++) {
        int p = 10 * r;
        buf_appendf(&b,
                    "%s(?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, "
                    "'queued', ?%d, ?%d, ?%d)",
                    r ? ", " : "", p + 1, p + 2, p + 3, p + 4, p + 5, p + 6,
                    p + 7, p + 8, p + 9, p + 10, p + 10, p + 10);
    }
    buf_appendf(&b, "%s", INSERT_JOB_TAIL);
    rc = sqlite3_prepare_v3(s->db, b.data, -1, SQLITE_PREPARE_PERSISTENT,
                            &s->insert_many, NULL);
    buf_free(&b);
    return rc == SQLITE_OK ? 0 : sqlite_fail(s, rc, "prepare bulk insert");
}

static void
bind_jobspec(sqlite3_stmt *st, int at, const struct jobspec *j, int64_t now_ms)
{
    bind_text(st, at + 1, j->provider);
    bind_text(st, at + 2, j->batch);
    bind_text(st, at + 3, j->custom_id);
    bind_text(st, at + 4, j->method);
    bind_text(st, at + 5, j->path);
    bind_text(st, at + 6, j->body);
    bind_text(st, at + 7, j->idempotency_key);
    sqlite3_bind_int(st, at + 8, j->priority);
    sqlite3_bind_int(st, at + 9, j->max_attempts);
    sqlite3_bind_int64(st, at + 10, now_ms);
}

/* Adds n new queued jobs of provider and batch to the kept counts. */
static int
count_inserted(struct sqlite_store *s, const char *provider, const char *batch,
               int64_t n)
{
    sqlite3_stmt *st;
    int rc;

    if (n == 0)
        return 0;
    st = stmt(s, ST_COUNT_INSERTED);
    bind_text(st, 1, provider);
    bind_text(st, 2, batch);
    sqlite3_bind_int64(st, 3, n);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "count jobs");
}

int
sqlite_insert_job(struct store *base, const struct jobspec *j, int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_INSERT_JOB);
    int rc;

    bind_jobspec(st, 0, j, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "insert job");
    if (sqlite3_changes(s->db) == 0)
        return 1;
    return (rc = count_inserted(s, j->provider, j->batch, 1)) < 0 ? rc : 0;
}

static bool
same_text(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Whether jobs[0..n) share one provider and batch: then the statement's
 * changes() is their count. */
static bool
one_count_key(const struct jobspec *jobs, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        if (!same_text(jobs[i].provider, jobs[0].provider) ||
            !same_text(jobs[i].batch, jobs[0].batch))
            return false;
    }
    return true;
}

int
sqlite_insert_jobs(struct store *base, const struct jobspec *jobs, size_t n,
                   int64_t now_ms, size_t *inserted)
{
    struct sqlite_store *s = sq(base);
    size_t i = 0;
    int rc;

    *inserted = 0;
    /* Whole statements of STORE_INSERT_ROWS rows; changes() counts the
     * rows ON CONFLICT DO NOTHING let through, duplicates within the
     * statement included, and count_inserted adds them to the kept
     * counts. The tail, and statements mixing providers or batches, go
     * row by row. */
    for (; i + STORE_INSERT_ROWS <= n; i += STORE_INSERT_ROWS) {
        sqlite3_stmt *st = s->insert_many;
        const struct jobspec *row = &jobs[i];
        if (!one_count_key(row, STORE_INSERT_ROWS))
            break; /* mixed: row by row, each counted */
        for (int r = 0; r < STORE_INSERT_ROWS; r++)
            bind_jobspec(st, 10 * r, &row[r], now_ms);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, "insert jobs");
        int64_t k = sqlite3_changes(s->db);
        if ((rc = count_inserted(s, row->provider, row->batch, k)) < 0)
            return rc;
        *inserted += (size_t)k;
    }
    for (; i < n; i++) {
        if ((rc = sqlite_insert_job(&s->base, &jobs[i], now_ms)) < 0)
            return rc;
        *inserted += rc == 0;
    }
    return 0;
}
