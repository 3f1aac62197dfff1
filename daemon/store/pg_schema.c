/*
 * pg_schema: the PostgreSQL backend's schema (postgres.c): migrations
 * from sql/postgres/, applied on open under an advisory lock, one
 * transaction per file, the version in sluice_schema; and the rows of
 * every table out (dump) and in (load, load_done) for sluicectl migrate.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "pg.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

/* Serializes migrations between processes: any constant all sluice
 * binaries share ("sluice" in ASCII). */
#define PG_MIGRATE_LOCK "115292045603685"

/* Applies sql/postgres/ above the stored version, one file per
 * transaction under an advisory lock (two daemons starting at once apply
 * each file once). */
int
pg_migrate(struct pg_store *s)
{
    int64_t v;
    int rc;

    for (size_t n = 1;; n++) {
        char *bump;

        if ((rc = pg_exec(s, "BEGIN", "migration: begin")) < 0)
            return rc;
        if ((rc =
                 pg_exec(s, "SELECT pg_advisory_xact_lock(" PG_MIGRATE_LOCK ")",
                         "migration lock")) < 0 ||
            (rc = pg_exec(s,
                          "CREATE TABLE IF NOT EXISTS sluice_schema "
                          "(version INTEGER NOT NULL)",
                          "schema table")) < 0 ||
            (rc = pg_exec_int(s, "SELECT max(version) FROM sluice_schema", &v,
                              "schema version")) < 0)
            goto fail;
        if (v > (int64_t)pg_sql_nfiles) {
            log_error("store: %s: schema version %lld is newer than this "
                      "build knows (%zu)",
                      s->name, (long long)v, pg_sql_nfiles);
            rc = -EPROTO;
            goto fail;
        }
        if (v >= (int64_t)n) {
            n = (size_t)v;
            if (n >= pg_sql_nfiles)
                return pg_exec(s, "COMMIT", "migration: commit");
            pg_exec(s, "ROLLBACK", "migration: rollback");
            continue;
        }
        bump = xasprintf("DELETE FROM sluice_schema; "
                         "INSERT INTO sluice_schema VALUES (%zu)",
                         n);
        if ((rc = pg_exec(s, pg_sql_files[n - 1].text,
                          pg_sql_files[n - 1].name)) == 0)
            rc = pg_exec(s, bump, "schema version bump");
        free(bump);
        if (rc < 0 || (rc = pg_exec(s, "COMMIT", "migration: commit")) < 0)
            goto fail;
        log_info("store: %s: applied migration %s", s->name,
                 pg_sql_files[n - 1].name);
        if (n >= pg_sql_nfiles)
            return 0;
    }
fail:
    if (s->conn && PQstatus(s->conn) == CONNECTION_OK)
        PQclear(PQexec(s->conn, "ROLLBACK"));
    return rc;
}

/* The schema version of the database: 0 before the first migration. */
int
pg_read_version(struct pg_store *s, int *version)
{
    int64_t exists = 0, v = 0;
    int rc;

    if ((rc = pg_exec_int(s,
                          "SELECT (to_regclass('sluice_schema') "
                          "IS NOT NULL)::int",
                          &exists, "schema version")) < 0)
        return rc;
    if (exists && (rc = pg_exec_int(s, "SELECT max(version) FROM sluice_schema",
                                    &v, "schema version")) < 0)
        return rc;
    *version = (int)v;
    return 0;
}

int
pg_schema_version(struct store *base)
{
    struct pg_store *s = pq(base);
    int v;

    if (pg_ready(s) < 0 || pg_read_version(s, &v) < 0)
        return -1;
    return v;
}

int
pg_schema_latest(void)
{
    return (int)pg_sql_nfiles;
}

int
pg_is_empty(struct store *base, bool *empty)
{
    struct pg_store *s = pq(base);
    int64_t v = 0;
    int rc;

    *empty = false;
    if ((rc = pg_ready(s)) < 0 ||
        (rc = pg_exec_int(s,
                          "SELECT (NOT (EXISTS (SELECT 1 FROM jobs) "
                          "OR EXISTS (SELECT 1 FROM providers) "
                          "OR EXISTS (SELECT 1 FROM batches) "
                          "OR EXISTS (SELECT 1 FROM outputs) "
                          "OR EXISTS (SELECT 1 FROM daemons)))::int",
                          &v, "empty check")) < 0)
        return rc;
    *empty = v != 0;
    return 0;
}

int
pg_dump(struct store *base, const char *table, store_row_fn fn, void *arg)
{
    struct pg_store *s = pq(base);
    char *sql = xasprintf("SELECT * FROM %s ORDER BY 1", table);
    PGresult *r;
    int rc, stop = 0;

    if ((rc = pg_ready(s)) < 0) {
        free(sql);
        return rc;
    }
    rc = PQsendQuery(s->conn, sql) && PQsetSingleRowMode(s->conn) ? 0 : -1;
    free(sql);
    if (rc < 0)
        return pg_fail(s, NULL, "dump");
    while ((r = PQgetResult(s->conn)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE && stop == 0) {
            json_t *row = pg_row_to_json(r, 0, true);
            stop = fn(row, arg);
            json_decref(row);
        } else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK &&
                   rc == 0) {
            rc = pg_fail(s, r, "dump");
        }
        PQclear(r);
    }
    return stop != 0 ? stop : rc;
}

int
pg_load(struct store *base, const char *table, const json_t *row)
{
    struct pg_store *s = pq(base);
    size_t n = json_object_size(row);
    const char **vals = xcalloc(n, sizeof(*vals));
    char(*num)[32] = xcalloc(n, sizeof(*num));
    struct buf b = {0};
    const char *key;
    json_t *v;
    PGresult *r;
    size_t i = 0;
    int rc;

    buf_appendf(&b, "INSERT INTO %s (", table);
    json_object_foreach((json_t *)row, key, v)
    {
        buf_appendf(&b, "%s%s", i ? ", " : "", key);
        if (json_is_integer(v))
            snprintf(num[i], sizeof(num[i]), "%lld",
                     (long long)json_integer_value(v));
        else if (json_is_real(v))
            snprintf(num[i], sizeof(num[i]), "%.17g", json_real_value(v));
        else if (json_is_boolean(v))
            snprintf(num[i], sizeof(num[i]), "%d", json_is_true(v));
        vals[i] = json_is_string(v) ? json_string_value(v)
                  : json_is_null(v) ? NULL
                                    : num[i];
        i++;
    }
    buf_appendf(&b, ") VALUES (");
    for (size_t k = 0; k < n; k++)
        buf_appendf(&b, "%s$%zu", k ? ", " : "", k + 1);
    buf_appendf(&b, ")");
    if ((rc = pg_ready(s)) == 0) {
        /* Types come from the columns: every value goes as text. */
        r = PQexecParams(s->conn, b.data, (int)n, NULL, vals, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            rc = pg_fail(s, r, "load");
        PQclear(r);
    }
    buf_free(&b);
    free(vals);
    free(num);
    return rc;
}

/* New ids continue past the loaded ones; the kept counts from the jobs. */
int
pg_load_done(struct store *base)
{
    return pg_exec(
        pq(base),
        "SELECT setval(pg_get_serial_sequence('jobs', 'id'), "
        "  coalesce((SELECT max(id) FROM jobs), 0) + 1, false); "
        "SELECT setval(pg_get_serial_sequence('attempts', 'id'), "
        "  coalesce((SELECT max(id) FROM attempts), 0) + 1, false); "
        "SELECT setval(pg_get_serial_sequence('outputs', 'id'), "
        "  coalesce((SELECT max(id) FROM outputs), 0) + 1, false); "
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
        "SELECT provider, coalesce(batch, ''), sum(cost), count(cost) "
        "FROM jobs WHERE cost IS NOT NULL GROUP BY 1, 2; "
        "DELETE FROM job_spend_minutes; "
        "INSERT INTO job_spend_minutes (provider, batch, minute, spent) "
        "SELECT provider, coalesce(batch, ''), "
        "coalesce(finished_at, updated_at) / 60000, sum(cost) FROM jobs "
        "WHERE cost IS NOT NULL GROUP BY 1, 2, 3",
        "load: ids, kept counts and spend");
}
