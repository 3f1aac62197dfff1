/*
 * sqlite_schema: the SQLite backend's schema (sqlite.c): the embedded
 * sql/ files applied above PRAGMA user_version, one transaction each with
 * the version bump; and dump/load for sluicectl migrate.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sq.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

int
sqlite_read_user_version(struct sqlite_store *s, int *v)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return sqlite_fail(s, rc, "user_version");
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "user_version");
}

/* Applies migration n (1-based) unless someone else did meanwhile. */
static int
migrate_one(struct sqlite_store *s, int n)
{
    const char *name = sql_files[n - 1].name;
    char *err = NULL, *bump;
    int rc, v;

    rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sqlite_fail(s, rc, "migration: begin");
    if ((rc = sqlite_read_user_version(s, &v)) < 0)
        goto fail;
    if (v >= n) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return 0;
    }
    bump = xasprintf("PRAGMA user_version = %d", n);
    rc = sqlite3_exec(s->db, sql_files[n - 1].text, NULL, NULL, &err);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->db, bump, NULL, NULL, &err);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, &err);
    free(bump);
    if (rc != SQLITE_OK) {
        log_error("store: %s: migration %s: %s", s->path, name,
                  err ? err : sqlite3_errstr(rc));
        sqlite3_free(err);
        rc = sqlite_errno(rc);
        goto fail;
    }
    log_info("store: %s: applied migration %s", s->path, name);
    return 0;
fail:
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int
sqlite_migrate(struct sqlite_store *s)
{
    int v, rc;

    if ((rc = sqlite_read_user_version(s, &v)) < 0)
        return rc;
    if (v > (int)sql_nfiles) {
        log_error("store: %s: schema version %d is newer than this build "
                  "knows (%zu)",
                  s->path, v, sql_nfiles);
        return -EPROTO;
    }
    for (int n = v + 1; n <= (int)sql_nfiles; n++) {
        if ((rc = migrate_one(s, n)) < 0)
            return rc;
    }
    return 0;
}

int
sqlite_schema_version(struct store *base)
{
    struct sqlite_store *s = sq(base);
    int v = -1;
    sqlite_read_user_version(s, &v);
    return v;
}

int
sqlite_schema_latest(void)
{
    return (int)sql_nfiles;
}

int
sqlite_is_empty(struct store *base, bool *empty)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    int rc;

    *empty = false;
    rc = sqlite3_prepare_v2(s->db,
                            "SELECT NOT (EXISTS (SELECT 1 FROM jobs) "
                            "OR EXISTS (SELECT 1 FROM providers) "
                            "OR EXISTS (SELECT 1 FROM batches) "
                            "OR EXISTS (SELECT 1 FROM outputs) "
                            "OR EXISTS (SELECT 1 FROM daemons))",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        return sqlite_fail(s, rc, "empty check");
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *empty = sqlite3_column_int(st, 0) != 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "empty check");
}

int
sqlite_dump(struct store *base, const char *table, store_row_fn fn, void *arg)
{
    struct sqlite_store *s = sq(base);
    char *sql = xasprintf("SELECT * FROM %s ORDER BY rowid", table);
    sqlite3_stmt *st;
    int rc, stop = 0;

    rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    free(sql);
    if (rc != SQLITE_OK)
        return sqlite_fail(s, rc, "dump");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *row = sqlite_row_raw_json(st);
        stop = fn(row, arg);
        json_decref(row);
        if (stop != 0)
            break;
    }
    sqlite3_finalize(st);
    if (stop != 0)
        return stop;
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "dump");
}

int
sqlite_load(struct store *base, const char *table, const json_t *row)
{
    struct sqlite_store *s = sq(base);
    struct buf b = {0};
    const char *key;
    json_t *v;
    int i = 0, rc;

    buf_appendf(&b, "INSERT INTO %s (", table);
    json_object_foreach((json_t *)row, key, v)
        buf_appendf(&b, "%s%s", i++ ? ", " : "", key);
    buf_appendf(&b, ") VALUES (");
    for (int k = 0; k < i; k++)
        buf_appendf(&b, "%s?", k ? ", " : "");
    buf_appendf(&b, ")");
    /* Rows of one table share their columns: prepared once per table. */
    if (s->load_sql == NULL || strcmp(s->load_sql, b.data) != 0) {
        sqlite3_finalize(s->load_st);
        free(s->load_sql);
        s->load_sql = buf_steal(&b);
        rc = sqlite3_prepare_v2(s->db, s->load_sql, -1, &s->load_st, NULL);
        if (rc != SQLITE_OK) {
            s->load_st = NULL;
            free(s->load_sql);
            s->load_sql = NULL;
            return sqlite_fail(s, rc, "load");
        }
    }
    buf_free(&b);
    sqlite3_reset(s->load_st);
    sqlite3_clear_bindings(s->load_st);
    i = 0;
    json_object_foreach((json_t *)row, key, v)
    {
        i++;
        if (json_is_integer(v))
            sqlite3_bind_int64(s->load_st, i, json_integer_value(v));
        else if (json_is_real(v))
            sqlite3_bind_double(s->load_st, i, json_real_value(v));
        else if (json_is_string(v))
            sqlite3_bind_text(s->load_st, i, json_string_value(v),
                              (int)json_string_length(v), SQLITE_STATIC);
        else if (json_is_boolean(v))
            sqlite3_bind_int(s->load_st, i, json_is_true(v));
    }
    rc = sqlite3_step(s->load_st);
    sqlite3_reset(s->load_st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "load");
}

/* The kept counts and spend from the jobs, as sql/006 and sql/012 first
 * filled them (the spend of jobs purged before the move stays behind). */
int
sqlite_load_done(struct store *base)
{
    struct sqlite_store *s = sq(base);
    int rc = sqlite3_exec(
        s->db,
        "DELETE FROM job_counts; "
        "INSERT INTO job_counts (provider, batch, state, n) "
        "SELECT provider, coalesce(batch, ''), state, count(*) "
        "FROM jobs GROUP BY 1, 2, 3; "
        "DELETE FROM job_done_minutes; "
        "INSERT INTO job_done_minutes (provider, batch, minute, n, "
        "first_at, last_at) "
        "SELECT provider, coalesce(batch, ''), finished_at / 60000, "
        "count(*), min(finished_at), max(finished_at) FROM jobs "
        "WHERE finished_at IS NOT NULL AND state IN (" JOB_TERMINAL_SQL ") "
        "GROUP BY 1, 2, 3; "
        "DELETE FROM job_spend; "
        "INSERT INTO job_spend (provider, batch, spent, jobs_costed) "
        "SELECT provider, coalesce(batch, ''), total(cost), count(cost) "
        "FROM jobs WHERE cost IS NOT NULL GROUP BY 1, 2; "
        "DELETE FROM job_spend_minutes; "
        "INSERT INTO job_spend_minutes (provider, batch, minute, spent) "
        "SELECT provider, coalesce(batch, ''), "
        "coalesce(finished_at, updated_at) / 60000, total(cost) FROM jobs "
        "WHERE cost IS NOT NULL GROUP BY 1, 2, 3",
        NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : sqlite_fail(s, rc, "load: kept counts");
}
