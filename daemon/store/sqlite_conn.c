/*
 * sqlite_conn: the SQLite backend's statements (sqlite.c): result codes as
 * negative errno values, a failure logged once where it is seen
 * (sqlite_fail), every statement of every file prepared once at open,
 * rows as JSON, and the data version the dispatcher polls.
 */
#include <errno.h>
#include <string.h>

#include "sq.h"
#include "sluice/clock.h"
#include "sluice/fstype.h"
#include "sluice/log.h"

/* Statements prepared at open (sqlite_conn.c). */
const char *const sqlite_conn_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_DATA_VERSION] = "PRAGMA data_version",
};

/* SQLite result codes as negative errno values. */
int
sqlite_errno(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return -EACCES;
    case SQLITE_CANTOPEN:
        return -ENOENT;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_CONSTRAINT:
        return -EEXIST;
    case SQLITE_TOOBIG:
        return -E2BIG;
    case SQLITE_MISMATCH:
        return -EDOM;
    case SQLITE_RANGE:
        return -ERANGE;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
        return -EPROTO;
    default:
        return -EIO;
    }
}

/* Logs a failed call (busy at debug level: callers retry it) and returns
 * the errno. The same failure again within STORE_ERROR_REPEAT_MS, of any
 * call, is counted, not logged: a full disk fails every retry of a flush,
 * every claim and every heartbeat, and one line a minute says it. */
int
sqlite_fail(struct sqlite_store *s, int rc, const char *what)
{
    int err = sqlite_errno(rc);
    int64_t now = clock_now_ms();

    if (err == -EBUSY) {
        log_debug("store: %s: %s", what, sqlite3_errmsg(s->db));
        return err;
    }
    if (err == s->last_err && now - s->last_logged_ms < STORE_ERROR_REPEAT_MS) {
        s->repeats++;
        log_debug("store: %s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
        return err;
    }
    if (s->repeats > 0)
        log_error("store: %s: %s: %s (and %ld failures like it since the "
                  "last such line)",
                  s->path, what, sqlite3_errmsg(s->db), s->repeats);
    else
        log_error("store: %s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
    s->last_err = err;
    s->last_logged_ms = now;
    s->repeats = 0;
    return err;
}

/* Whether path names a file (not ":memory:", "" or a "file:" URI). */
static bool
is_plain_file(const char *path)
{
    return path[0] != '\0' && strcmp(path, ":memory:") != 0 &&
           strncmp(path, "file:", 5) != 0;
}

/* Refuses a database on a network filesystem: WAL keeps its index in
 * shared memory that must be one host's (docs/design.md §12). */
int
sqlite_check_local(const char *path)
{
    char type[64];

    if (!is_plain_file(path) || fstype_of(path, NULL, type, sizeof(type)) < 0 ||
        !fstype_is_network(type))
        return 0;
    log_error("store: %s: on a network filesystem (%s): SQLite's "
              "write-ahead log needs one host's shared memory and would "
              "corrupt or lose jobs; keep the database on a local disk, or "
              "share a queue between hosts with PostgreSQL (database = "
              "postgresql://…)",
              path, type);
    return -EREMOTE;
}

/* The files' statement tables, each indexed by enum stmt and holding the
 * text of its own statements only. */
static const char *const *const sqlite_sql_tables[] = {
    sqlite_conn_sql,  sqlite_enqueue_sql, sqlite_daemons_sql,
    sqlite_claim_sql, sqlite_commit_sql,  sqlite_query_sql,
};

/* The SQL text of statement id, from the file that holds it. */
static const char *
sqlite_sql_of(enum stmt id)
{
    for (size_t i = 0;
         i < sizeof(sqlite_sql_tables) / sizeof(sqlite_sql_tables[0]); i++) {
        if (sqlite_sql_tables[i][id] != NULL)
            return sqlite_sql_tables[i][id];
    }
    fatalx("store: sqlite: statement %d has no SQL text", (int)id);
}

int
sqlite_prepare_all(struct sqlite_store *s)
{
    int rc;

    for (int i = 0; i < ST_COUNT; i++) {
        const char *sql = sqlite_sql_of((enum stmt)i);
        rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
                                &s->st[i], NULL);
        if (rc != SQLITE_OK)
            return sqlite_fail(s, rc, sql);
    }
    for (int i = 0; i < OS_COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, sqlite_outputs_sql[i], -1,
                                SQLITE_PREPARE_PERSISTENT, &s->ost[i], NULL);
        if (rc != SQLITE_OK)
            return sqlite_fail(s, rc, sqlite_outputs_sql[i]);
    }
    return sqlite_prepare_insert_many(s);
}

/* No push from SQLite: the dispatcher polls sqlite_data_version. */
int
sqlite_watch(struct store *base, struct uv_loop_s *loop, void (*cb)(void *arg),
             void *arg)
{
    (void)base, (void)loop, (void)cb, (void)arg;
    return -ENOTSUP;
}

int
sqlite_data_version(struct store *base, int64_t *v)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_DATA_VERSION);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *v = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "data_version");
}

/* The current row as an object keyed by column name. */
json_t *
sqlite_row_json(sqlite3_stmt *st)
{
    json_t *o = json_object();
    int n = sqlite3_column_count(st);

    for (int i = 0; i < n; i++) {
        const char *name = sqlite3_column_name(st, i);
        json_t *v;

        switch (sqlite3_column_type(st, i)) {
        case SQLITE_INTEGER:
            v = json_integer(sqlite3_column_int64(st, i));
            break;
        case SQLITE_FLOAT:
            v = json_real(sqlite3_column_double(st, i));
            break;
        case SQLITE_NULL:
            v = json_null();
            break;
        default: {
            const char *t = (const char *)sqlite3_column_text(st, i);
            size_t len = (size_t)sqlite3_column_bytes(st, i);
            v = backend_text_json(name, t, len);
            break;
        }
        }
        json_object_set_new(o, name, v);
    }
    return o;
}

/* Steps st to the end, appending each row to arr. */
int
sqlite_rows_json(struct sqlite_store *s, sqlite3_stmt *st, json_t *arr,
                 const char *what)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(arr, sqlite_row_json(st));
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, what);
}

/* The current row with text verbatim (no JSON parsing): what a load
 * writes back. */
json_t *
sqlite_row_raw_json(sqlite3_stmt *st)
{
    json_t *o = json_object();

    for (int i = 0; i < sqlite3_column_count(st); i++) {
        json_t *v;
        switch (sqlite3_column_type(st, i)) {
        case SQLITE_INTEGER:
            v = json_integer(sqlite3_column_int64(st, i));
            break;
        case SQLITE_FLOAT:
            v = json_real(sqlite3_column_double(st, i));
            break;
        case SQLITE_NULL:
            v = json_null();
            break;
        default:
            v = json_stringn((const char *)sqlite3_column_text(st, i),
                             (size_t)sqlite3_column_bytes(st, i));
            if (v == NULL) /* not UTF-8: JSON cannot carry it */
                v = json_string("");
            break;
        }
        json_object_set_new(o, sqlite3_column_name(st, i), v);
    }
    return o;
}
