/*
 * sqlite_outputs: the outputs table on SQLite (docs/design.md §13;
 * sqlite.c): downloads claimed with a lease as jobs are, recorded under
 * the lease owner, listed and retried by the operator.
 */
#include <errno.h>

#include "sq.h"

/* The statements of the outputs table, prepared with the others
 * (sqlite_conn.c). */
const char *const sqlite_outputs_sql[OS_COUNT] = {
    /* Only for a job that did succeed: an operator's cancel that raced
     * the answer keeps the job cancelled, and its outputs unfetched. */
    [OS_INSERT] = "INSERT INTO outputs (job_id, url, run_after, created_at) "
                  "SELECT ?1, ?2, ?3, ?3 WHERE EXISTS (SELECT 1 FROM jobs "
                  "  WHERE id = ?1 AND state = 'succeeded') "
                  "ON CONFLICT (job_id, url) DO NOTHING",
    [OS_CLAIM] =
        "UPDATE outputs SET attempts = attempts + 1, lease_until = ?1, "
        "lease_owner = ?2 "
        "WHERE id IN (SELECT id FROM outputs WHERE state = 'pending' "
        "  AND run_after <= ?3 AND (lease_until IS NULL OR lease_until <= ?3) "
        "  ORDER BY run_after, id LIMIT ?4) "
        "RETURNING id, job_id, url, attempts, "
        "(SELECT provider FROM jobs WHERE jobs.id = outputs.job_id)",
    [OS_RECORD] =
        "UPDATE outputs SET state = ?2, path = ?3, sha256 = ?4, bytes = ?5, "
        "content_type = ?6, error = ?7, "
        "fetched_at = CASE WHEN ?2 = 'pending' THEN fetched_at ELSE ?8 END, "
        "run_after = ?9, attempts = MAX(attempts - ?10, 0), "
        "lease_until = NULL, lease_owner = NULL "
        "WHERE id = ?1 AND lease_owner = ?11",
    [OS_NEXT_DUE] =
        "SELECT MIN(CASE WHEN lease_until > run_after THEN lease_until "
        "  ELSE run_after END) FROM outputs WHERE state = 'pending'",
    [OS_COUNTS] = "SELECT state, COUNT(*) FROM outputs GROUP BY state",
    [OS_LIST] =
        "SELECT o.id, o.job_id, j.custom_id, j.provider, j.batch, o.url, "
        "o.state, o.path, o.sha256, o.bytes, o.content_type, o.error, "
        "o.attempts, o.fetched_at FROM outputs o JOIN jobs j "
        "ON j.id = o.job_id "
        "WHERE (?1 IS NULL OR j.batch = ?1) AND (?2 IS NULL OR o.state = ?2) "
        "ORDER BY o.job_id, o.id",
    [OS_RETRY] =
        "UPDATE outputs SET state = 'pending', attempts = 0, run_after = ?1, "
        "fetched_at = NULL "
        "WHERE state = 'failed' AND (?2 IS NULL OR job_id IN "
        "  (SELECT id FROM jobs WHERE batch = ?2))",
    [OS_RELEASE_EXPIRED] =
        "UPDATE outputs SET lease_until = NULL, lease_owner = NULL "
        "WHERE lease_until <= ?1",
    [OS_RELEASE_OWNER] =
        "UPDATE outputs SET lease_until = NULL, lease_owner = NULL "
        "WHERE lease_until IS NOT NULL AND lease_owner = ?1",
};

int
sqlite_outputs_claim(struct store *base, int max, int64_t now_ms,
                     int64_t lease_ms, const char *owner,
                     struct output_claim *out, int *nout)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_CLAIM);
    int rc, n = 0;

    *nout = 0;
    sqlite3_bind_int64(st, 1, now_ms + lease_ms);
    bind_text(st, 2, owner);
    sqlite3_bind_int64(st, 3, now_ms);
    sqlite3_bind_int(st, 4, max);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < max) {
        struct output_claim *c = &out[n++];
        c->id = sqlite3_column_int64(st, 0);
        c->job_id = sqlite3_column_int64(st, 1);
        c->url = column_strdup(st, 2);
        c->attempts = sqlite3_column_int(st, 3);
        c->provider = column_strdup(st, 4);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        /* The UPDATE rolled back: nothing was claimed. */
        for (int i = 0; i < n; i++)
            output_claim_clear(&out[i]);
        return sqlite_fail(s, rc, "claim outputs");
    }
    *nout = n;
    return 0;
}

int
sqlite_output_record(struct store *base, const struct output_result *r,
                     int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_RECORD);
    int rc;

    sqlite3_bind_int64(st, 1, r->id);
    bind_text(st, 2, r->state);
    bind_text(st, 3, r->path);
    bind_text(st, 4, r->sha256);
    if (r->path != NULL)
        sqlite3_bind_int64(st, 5, r->bytes);
    bind_text(st, 6, r->content_type);
    bind_text(st, 7, r->error);
    sqlite3_bind_int64(st, 8, now_ms);
    sqlite3_bind_int64(st, 9, r->run_after);
    sqlite3_bind_int(st, 10, r->uncharge);
    bind_text(st, 11, r->owner);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "record output");
    return sqlite3_changes(s->db) == 1 ? 0 : -ESTALE;
}

int
sqlite_outputs_next_due(struct store *base, int64_t *due_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_NEXT_DUE);
    int rc = sqlite3_step(st);

    *due_ms = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "next output due");
}

int
sqlite_outputs_counts(struct store *base, long *pending, long *stored,
                      long *failed)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_COUNTS);
    int rc;

    *pending = *stored = *failed = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        backend_outputs_count((const char *)sqlite3_column_text(st, 0),
                              (long)sqlite3_column_int64(st, 1), pending,
                              stored, failed);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "output counts");
}

json_t *
sqlite_outputs_json(struct store *base, const char *batch, const char *state)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_LIST);
    json_t *arr = json_array();

    bind_text(st, 1, batch);
    bind_text(st, 2, state);
    if (sqlite_rows_json(s, st, arr, "outputs") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

int
sqlite_outputs_retry(struct store *base, const char *batch, int64_t now_ms,
                     long *changed)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_RETRY);
    int rc;

    *changed = 0;
    sqlite3_bind_int64(st, 1, now_ms);
    bind_text(st, 2, batch);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "retry outputs");
    *changed = sqlite3_changes(s->db);
    return 0;
}
