/*
 * pg_conn: the PostgreSQL backend's connection (postgres.c).
 *
 * pg_connect opens the session (settings, schema, LISTEN, the enqueue
 * table) and prepares every statement of every file; pg_run and its
 * variants run one with text parameters. A failure is logged once, where
 * it is seen (pg_fail), and turned into a negative errno from its
 * SQLSTATE. A lost connection is said once (pg_lost); pg_ready then
 * reconnects at most once per backoff step and fails fast meanwhile.
 *
 * store_watch puts the socket on the caller's libuv loop: notifications
 * are drained without a round trip, wake the caller, and are counted for
 * store_data_version.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "pg.h"
#include "sluice/clock.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

/* libpq waits forever for a dead host unless told; the user's own
 * connect_timeout in the connection string wins. */
#define PG_CONNECT_TIMEOUT_S "5"
/* Reconnect backoff: quick for a restart, capped so a long outage costs a
 * connection attempt every few seconds, not a storm. */
#define PG_RECONNECT_MIN_MS 100
#define PG_RECONNECT_MAX_MS 5000

/* Type oids of pg_type.h that come back as JSON numbers. */
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_NUMERIC 1700

/* Statements prepared on every connection (pg_conn.c). */
const char *const pg_conn_sql[P_COUNT] = {
    [P_NOTIFY] = "SELECT pg_notify('" PG_CHANNEL "', $1::text)",
};

/* Connections of this process that are down. A daemon holds two to its
 * server (its loop's and its database thread's, storeq.h), and an outage
 * is said once: lost by the first that sees it, back with the last. */
static atomic_int pg_down;

/* The connection is gone: say so once, stop watching its socket, and
 * let the next call retry after the first backoff step. */
void
pg_lost(struct pg_store *s)
{
    if (!s->lost) {
        const char *msg = s->conn ? PQerrorMessage(s->conn) : "";
        if (atomic_fetch_add(&pg_down, 1) == 0)
            log_warnx("store: %s: connection lost (%.*s); claims stop and "
                      "outcomes are kept until it is back",
                      s->name, (int)strcspn(msg, "\n"), msg);
        s->lost = true;
        s->backoff_ms = PG_RECONNECT_MIN_MS;
        s->retry_at = clock_now_ms() + s->backoff_ms;
    }
    pg_watch_stop(s);
}

/* SQLSTATE of a failed result as a negative errno. */
int
pg_errno(struct pg_store *s, const PGresult *r)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

    if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK)
        return -ENOTCONN;
    if (state == NULL)
        return -EIO;
    /* lock_not_available (lock_timeout), serialization, deadlock */
    if (strcmp(state, "55P03") == 0 || strcmp(state, "40001") == 0 ||
        strcmp(state, "40P01") == 0)
        return -EBUSY;
    /* The row itself (backend_row_error): a constraint, or a trigger's
     * RAISE EXCEPTION (as SQLite's RAISE(ABORT) is a constraint); a
     * value out of range or not text of the database's encoding; a
     * program limit (an index row over a page's third). */
    if (strncmp(state, "23", 2) == 0 || strcmp(state, "P0001") == 0)
        return -EEXIST;
    if (strcmp(state, "22003") == 0 || strcmp(state, "22008") == 0)
        return -ERANGE;
    if (strncmp(state, "22", 2) == 0)
        return -EDOM;
    if (strncmp(state, "54", 2) == 0)
        return -E2BIG;
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0)
        return -ENOTCONN;
    if (strcmp(state, "53100") == 0)
        return -ENOSPC;
    if (strcmp(state, "42501") == 0)
        return -EACCES;
    if (strcmp(state, "53200") == 0)
        return -ENOMEM;
    return -EIO;
}

/* Logs a failed statement (a lock timeout at debug level: callers retry
 * it; a lost connection through pg_lost, once) and returns the errno. The
 * same failure again within STORE_ERROR_REPEAT_MS, of any statement, is
 * counted, not logged, as on SQLite. */
int
pg_fail(struct pg_store *s, const PGresult *r, const char *what)
{
    int err = pg_errno(s, r);
    const char *msg = r ? PQresultErrorMessage(r) : "";

    const char *line;
    int64_t now;
    int len;

    if (err == -ENOTCONN) {
        pg_lost(s);
        return err;
    }
    if (err == -EBUSY) {
        log_debug("store: %s: %s: %s", s->name, what, msg);
        return err;
    }
    line = msg && *msg ? msg : PQerrorMessage(s->conn);
    len = (int)strcspn(line, "\n");
    now = clock_now_ms();
    if (err == s->last_err && now - s->last_logged_ms < STORE_ERROR_REPEAT_MS) {
        s->repeats++;
        log_debug("store: %s: %s: %.*s", s->name, what, len, line);
        return err;
    }
    if (s->repeats > 0)
        log_error("store: %s: %s: %.*s (and %ld failures like it since the "
                  "last such line)",
                  s->name, what, len, line, s->repeats);
    else
        log_error("store: %s: %s: %.*s", s->name, what, len, line);
    s->last_err = err;
    s->last_logged_ms = now;
    s->repeats = 0;
    return err;
}

/* Runs SQL without parameters (session setup, transaction control). */
int
pg_exec(struct pg_store *s, const char *sql, const char *what)
{
    PGresult *r = PQexec(s->conn, sql);
    int rc = 0;
    ExecStatusType st = PQresultStatus(r);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = pg_fail(s, r, what);
    PQclear(r);
    return rc;
}

/* The one integer a query returns, 0 when it returns no row. */
int
pg_exec_int(struct pg_store *s, const char *sql, int64_t *v, const char *what)
{
    PGresult *r = PQexec(s->conn, sql);
    int rc = 0;

    *v = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        rc = pg_fail(s, r, what);
    else if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        *v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return rc;
}

/* Notices (NOTICE, a skipped CREATE … IF NOT EXISTS) are not ours to
 * print on a terminal or in the journal. */
static void
pg_on_notice(void *arg, const char *message)
{
    (void)arg;
    log_debug("store: postgresql: %s", message);
}

static int pg_watch_start(struct pg_store *s);

/* The files' statement tables, each indexed by enum pst and holding the
 * text of its own statements only. */
static const char *const *const pg_sql_tables[] = {
    pg_conn_sql,   pg_enqueue_sql, pg_daemons_sql, pg_claim_sql,
    pg_commit_sql, pg_query_sql,   pg_outputs_sql,
};

/* The SQL text of statement id, from the file that holds it. */
static const char *
pg_sql_of(enum pst id)
{
    for (size_t i = 0; i < sizeof(pg_sql_tables) / sizeof(pg_sql_tables[0]);
         i++) {
        if (pg_sql_tables[i][id] != NULL)
            return pg_sql_tables[i][id];
    }
    fatalx("store: postgresql: statement %d has no SQL text", (int)id);
}

/* Connects (again): session settings, schema, LISTEN, prepared
 * statements; read-only: a session of read-only transactions, nothing
 * created, and the statements only when the schema is current. Returns 0
 * or a negative errno, the reason logged unless it is a reconnect that
 * fails again. */
int
pg_connect(struct pg_store *s, bool quiet)
{
    static const char *const keys[] = {
        "connect_timeout", "fallback_application_name", "dbname", NULL};
    const char *vals[] = {PG_CONNECT_TIMEOUT_S, "sluice", s->conninfo, NULL};
    char *set;
    int rc;

    if (s->conn)
        PQfinish(s->conn);
    /* expand_dbname: dbname is the user's URI or key=value string, and
     * what it sets wins over the keys before it. */
    s->conn = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(s->conn) != CONNECTION_OK) {
        if (!quiet) {
            const char *msg = PQerrorMessage(s->conn);
            log_error("store: %s: connect: %.*s", s->name,
                      (int)strcspn(msg, "\n"), msg);
        }
        return -ENOTCONN;
    }
    PQsetNoticeProcessor(s->conn, pg_on_notice, NULL);
    set = xasprintf("SET lock_timeout = %d%s", s->lock_timeout_ms,
                    s->readonly ? "; SET default_transaction_read_only = on"
                                : "");
    rc = pg_exec(s, set, "session settings");
    free(set);
    if (rc < 0)
        return rc;
    if (s->readonly) {
        if ((rc = pg_read_version(s, &s->version)) < 0)
            return rc;
        if (s->version > (int)pg_sql_nfiles) {
            log_error("store: %s: schema version %d is newer than this "
                      "build knows (%zu)",
                      s->name, s->version, pg_sql_nfiles);
            return -EPROTO;
        }
        if (s->version < (int)pg_sql_nfiles)
            return 0; /* migrations pending: only the version is read */
    } else {
        if ((rc = pg_migrate(s)) < 0 ||
            (rc = pg_exec(s, "LISTEN " PG_CHANNEL, "listen")) < 0)
            return rc;
        s->version = (int)pg_sql_nfiles;
        /* Where enqueue replays the rows of a COPY that met a duplicate
         * (pg_enqueue.c); per session, and before the statements that
         * read it are prepared. */
        rc = pg_exec(s,
                     "CREATE TEMP TABLE jobs_in (seq BIGINT GENERATED "
                     "ALWAYS AS IDENTITY, provider TEXT, batch TEXT, "
                     "custom_id TEXT, method TEXT, path TEXT, body TEXT, "
                     "idempotency_key TEXT, priority INTEGER, "
                     "max_attempts INTEGER, run_after BIGINT, "
                     "created_at BIGINT, updated_at BIGINT)",
                     "enqueue table");
        if (rc < 0)
            return rc;
    }
    for (int i = 0; i < P_COUNT; i++) {
        char name[16];
        PGresult *r;

        if (s->readonly && i == P_MOVE_IN)
            continue; /* no jobs_in: a read-only session enqueues nothing */
        snprintf(name, sizeof(name), "p%d", i);
        r = PQprepare(s->conn, name, pg_sql_of((enum pst)i), 0, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            rc = pg_fail(s, r, pg_sql_of((enum pst)i));
            PQclear(r);
            return rc;
        }
        PQclear(r);
    }
    return 0;
}

void
pg_forget(struct pg_store *s)
{
    if (s->lost) {
        s->lost = false;
        atomic_fetch_sub(&pg_down, 1);
    }
}

/* 0 when the connection is up, reconnecting first when the backoff
 * allows; -ENOTCONN otherwise. Never inside a transaction. */
int
pg_ready(struct pg_store *s)
{
    int64_t now;

    if (s->conn && PQstatus(s->conn) == CONNECTION_OK && !s->lost)
        return 0;
    if (s->conn && PQstatus(s->conn) != CONNECTION_OK)
        pg_lost(s);
    if (s->in_tx)
        return -ENOTCONN; /* the transaction died with the connection */
    now = clock_now_ms();
    if (now < s->retry_at)
        return -ENOTCONN;
    if (pg_connect(s, true) < 0) {
        s->backoff_ms = s->backoff_ms * 2 > PG_RECONNECT_MAX_MS
                            ? PG_RECONNECT_MAX_MS
                            : s->backoff_ms * 2;
        s->retry_at = clock_now_ms() + s->backoff_ms;
        return -ENOTCONN;
    }
    s->lost = false;
    if (atomic_fetch_sub(&pg_down, 1) == 1)
        log_info("store: %s: connection back", s->name);
    /* What was missed while away: the next data_version differs. */
    s->notified++;
    pg_watch_start(s);
    return 0;
}

/* Runs prepared statement id; on success returns the result (PQclear
 * it), else NULL with *err set and the failure logged. */
PGresult *
pg_run(struct pg_store *s, enum pst id, const struct params *p,
       const char *what, int *err)
{
    char name[16];
    PGresult *r;
    ExecStatusType st;

    if ((*err = pg_ready(s)) < 0)
        return NULL;
    snprintf(name, sizeof(name), "p%d", (int)id);
    r = PQexecPrepared(s->conn, name, p ? p->n : 0, p ? p->v : NULL, NULL, NULL,
                       0);
    st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return r;
    *err = pg_fail(s, r, what);
    PQclear(r);
    return NULL;
}

/* Runs a statement that returns nothing we read; *changed = rows. */
int
pg_run_changes(struct pg_store *s, enum pst id, const struct params *p,
               const char *what, long *changed)
{
    int err;
    PGresult *r = pg_run(s, id, p, what, &err);

    if (r == NULL)
        return err;
    if (changed)
        *changed = strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return 0;
}

/* The first column of the first row as an integer (0 when NULL or no
 * row). */
int
pg_run_int(struct pg_store *s, enum pst id, const struct params *p,
           const char *what, int64_t *v)
{
    int err;
    PGresult *r = pg_run(s, id, p, what, &err);

    *v = 0;
    if (r == NULL)
        return err;
    if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        *v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return 0;
}

/* A wakeup for the other daemons, sent at commit. */
int
pg_notify(struct pg_store *s, const char *what)
{
    struct params p = {0};

    p_text(&p, what);
    return pg_run_changes(s, P_NOTIFY, &p, "notify", NULL);
}

/* user@host:port/dbname of the connection string (no password, no
 * options), for logs; one libpq cannot parse is named as such, not
 * echoed (it may hold a password). */
char *
pg_display_name(const char *conninfo)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    const char *user = NULL, *host = NULL, *port = NULL, *db = NULL;
    char *name;

    if (opts == NULL)
        return xstrdup("postgresql://(malformed)");
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (o->val == NULL || *o->val == '\0')
            continue;
        if (strcmp(o->keyword, "user") == 0)
            user = o->val;
        else if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
        else if (strcmp(o->keyword, "dbname") == 0)
            db = o->val;
    }
    name = xasprintf("postgresql://%s%s%s%s%s/%s", user ? user : "",
                     user ? "@" : "", host ? host : "", port ? ":" : "",
                     port ? port : "", db ? db : "");
    PQconninfoFree(opts);
    return name;
}

/* Row i of r as an object keyed by column name: numbers as numbers, and
 * text verbatim when raw (what a load writes back), else as
 * backend_text_json gives it (JSON columns parsed). */
json_t *
pg_row_to_json(const PGresult *r, int i, bool raw)
{
    json_t *o = json_object();

    for (int c = 0; c < PQnfields(r); c++) {
        const char *name = PQfname(r, c);
        const char *t = PQgetvalue(r, i, c);
        size_t len = (size_t)PQgetlength(r, i, c);
        json_t *v;

        if (PQgetisnull(r, i, c)) {
            v = json_null();
        } else {
            switch (PQftype(r, c)) {
            case OID_INT2:
            case OID_INT4:
            case OID_INT8:
                v = json_integer(strtoll(t, NULL, 10));
                break;
            case OID_FLOAT4:
            case OID_FLOAT8:
            case OID_NUMERIC:
                v = json_real(strtod(t, NULL));
                break;
            default:
                v = raw ? json_stringn(t, len)
                        : backend_text_json(name, t, len);
                break;
            }
        }
        json_object_set_new(o, name, v);
    }
    return o;
}

json_t *
pg_row_json(const PGresult *r, int i)
{
    return pg_row_to_json(r, i, false);
}

/* Runs id and appends every row to arr. */
int
pg_rows_json(struct pg_store *s, enum pst id, const struct params *p,
             json_t *arr, const char *what)
{
    int err;
    PGresult *r = pg_run(s, id, p, what, &err);

    if (r == NULL)
        return err;
    for (int i = 0; i < PQntuples(r); i++)
        json_array_append_new(arr, pg_row_json(r, i));
    PQclear(r);
    return 0;
}

/* A new array of id's rows, or NULL on a database error. */
json_t *
pg_array_json(struct pg_store *s, enum pst id, const struct params *p,
              const char *what)
{
    json_t *arr = json_array();

    if (pg_rows_json(s, id, p, arr, what) < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

static void
on_uv_poll_closed(uv_handle_t *h)
{
    free(h);
}

/* Drains notifications libpq has read (and reads what the socket holds,
 * without blocking); returns how many arrived. */
static int64_t
pg_drain_notifies(struct pg_store *s)
{
    PGnotify *n;
    int64_t got = 0;

    if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK || s->lost)
        return 0;
    if (!PQconsumeInput(s->conn)) {
        pg_lost(s);
        return 0;
    }
    while ((n = PQnotifies(s->conn)) != NULL) {
        got++;
        PQfreemem(n);
    }
    s->notified += got;
    return got;
}

static void
on_uv_poll(uv_poll_t *h, int status, int events)
{
    struct pg_store *s = h->data;

    (void)events;
    if (status < 0 || pg_drain_notifies(s) > 0 || s->lost) {
        if (s->wake_cb)
            s->wake_cb(s->wake_arg);
    }
}

void
pg_watch_stop(struct pg_store *s)
{
    if (s->poll == NULL)
        return;
    /* Before libpq closes the socket: an fd closed under a live poll
     * confuses the loop. */
    uv_poll_stop(s->poll);
    uv_close((uv_handle_t *)s->poll, on_uv_poll_closed);
    s->poll = NULL;
}

static int
pg_watch_start(struct pg_store *s)
{
    int rc;

    if (s->loop == NULL || s->poll || s->conn == NULL ||
        PQstatus(s->conn) != CONNECTION_OK)
        return 0;
    s->poll = xcalloc(1, sizeof(*s->poll));
    if ((rc = uv_poll_init_socket(s->loop, s->poll, PQsocket(s->conn))) < 0) {
        log_error("store: %s: watch: %s", s->name, uv_strerror(rc));
        free(s->poll);
        s->poll = NULL;
        return rc;
    }
    s->poll->data = s;
    uv_poll_start(s->poll, UV_READABLE, on_uv_poll);
    return 0;
}

int
pg_watch(struct store *base, uv_loop_t *loop, void (*cb)(void *arg), void *arg)
{
    struct pg_store *s = pq(base);

    pg_watch_stop(s);
    s->loop = loop;
    s->wake_cb = loop ? cb : NULL;
    s->wake_arg = arg;
    return loop ? pg_watch_start(s) : 0;
}

int
pg_data_version(struct store *base, int64_t *v)
{
    struct pg_store *s = pq(base);

    pg_drain_notifies(s);
    *v = s->notified;
    return 0;
}
