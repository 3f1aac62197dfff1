/*
 * ctl/migrate.c: sluicectl migrate, a whole stopped queue from one
 * database into an empty one (a SQLite file into PostgreSQL, typically):
 * every row of every table of store_tables with its id, state, attempts,
 * idempotency and derived keys, lease-free, in one transaction of the
 * target; the kept counts and id counters rebuilt after. The source is
 * only read.
 *
 * Refused: a source with a daemon registered or a job running (a live
 * queue would change under the copy; stop the daemons first), a source
 * whose schema is behind this build, and a target with any row (a merge
 * of two queues is not a migration: ids and keys would collide).
 *
 * Before the commit the target's kept counts are compared with the
 * source's, state by state: a difference rolls everything back.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "internal.h"
#include "sluice/store.h"

/* What one table's copy carries. */
struct migrate_copy {
    struct store *to;
    const char *table;
    long rows;
    int rc; /* the load's negative errno, 0 */
};

static int
migrate_row(const json_t *row, void *arg)
{
    struct migrate_copy *m = arg;
    int rc = store_load(m->to, m->table, row);

    if (rc < 0) {
        m->rc = rc;
        return 1; /* stops the dump */
    }
    m->rows++;
    return 0;
}

/* Sums counts into an object "provider/batch/state" → n. */
static int
migrate_count(const char *provider, const char *batch, enum job_state st,
              long n, void *arg)
{
    char key[512];
    snprintf(key, sizeof(key), "%s/%s/%s", provider, batch ? batch : "",
             job_state_name(st));
    json_object_set_new(arg, key, json_integer(n));
    return 0;
}

/* The kept counts of s as an object, or NULL on a database error. */
static json_t *
migrate_counts(struct store *s)
{
    json_t *o = json_object();
    if (store_counts(s, migrate_count, o) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Refuses a live source: a daemon row or a running job. 0 or the exit
 * code, printed. */
static int
migrate_check_stopped(struct store *from, const char *name)
{
    struct daemon_row *rows;
    size_t n;
    json_t *counts;
    const char *key;
    json_t *v;
    long running = 0;

    if (store_daemons(from, &rows, &n) < 0)
        return 1;
    store_daemons_free(rows, n);
    if ((counts = migrate_counts(from)) == NULL)
        return 1;
    json_object_foreach(counts, key, v)
    {
        size_t len = strlen(key);
        if (len > 8 && strcmp(key + len - 8, "/running") == 0)
            running += (long)json_integer_value(v);
    }
    json_decref(counts);
    if (n > 0 || running > 0) {
        fprintf(stderr,
                "sluicectl migrate: %s is in use (%zu daemon%s registered, "
                "%ld job%s running): stop every sluiced on it first (one "
                "that was killed left its row: start a sluiced on it and "
                "stop it, which takes the row and its jobs back)\n",
                name, n, n == 1 ? "" : "s", running, running == 1 ? "" : "s");
        return 1;
    }
    return 0;
}

/* Copies every table inside the target's transaction; prints per table. */
static int
migrate_tables(struct store *from, struct store *to, json_t *report)
{
    for (const char *const *t = store_tables; *t; t++) {
        struct migrate_copy m = {.to = to, .table = *t};
        int rc = store_dump(from, *t, migrate_row, &m);
        if (rc != 0 || m.rc < 0) {
            fprintf(stderr,
                    "sluicectl migrate: table %s: %s after %ld "
                    "rows\n",
                    *t, m.rc < 0 ? "writing failed" : "reading failed", m.rows);
            return 1;
        }
        json_object_set_new(report, *t, json_integer(m.rows));
    }
    if (store_load_done(to) < 0) {
        fprintf(stderr, "sluicectl migrate: rebuilding the kept counts "
                        "failed\n");
        return 1;
    }
    return 0;
}

/* The target's kept counts must be the source's. */
static int
migrate_verify(struct store *from, struct store *to)
{
    json_t *a = migrate_counts(from), *b = migrate_counts(to);
    int same = a && b && json_equal(a, b);

    json_decref(a);
    json_decref(b);
    if (!same) {
        fprintf(stderr, "sluicectl migrate: the job counts of the target "
                        "differ from the source's: nothing written\n");
        return 1;
    }
    return 0;
}

int
ctl_migrate(struct ctl *c, int argc, char **argv)
{
    const char *from_db = NULL, *to_db = NULL;
    struct store *from = NULL, *to = NULL;
    char *from_name = NULL, *to_name = NULL;
    json_t *report = json_object();
    bool json = false, empty = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--from", &from_db, NULL},
        {"--to", &to_db, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    (void)c;
    if ((rc = ctl_parse_args("migrate", argc, argv, opts, &npos)) != 0)
        goto done;
    if (npos != 0 || from_db == NULL || to_db == NULL) {
        rc = ctl_usage_error("migrate", "needs --from DATABASE and --to "
                                        "DATABASE");
        goto done;
    }
    from_name = store_display_name(from_db);
    to_name = store_display_name(to_db);
    if ((rc = store_open_readonly(from_db, &from)) < 0) {
        fprintf(stderr, "sluicectl migrate: cannot open %s\n", from_name);
        /* a file missing or unreadable; a server: as ctl_open */
        rc = rc == -EINVAL ? EX_CONFIG
             : store_is_file(from_db) ? EX_NOINPUT
                                      : 1;
        goto done;
    }
    rc = 1;
    if (store_schema_version(from) != store_schema_latest(from)) {
        fprintf(stderr,
                "sluicectl migrate: %s is at schema %d, this build reads "
                "%d: start sluiced on it once (or any writing sluicectl "
                "command) to migrate it first\n",
                from_name, store_schema_version(from),
                store_schema_latest(from));
        goto done;
    }
    if ((rc = migrate_check_stopped(from, from_name)) != 0)
        goto done;
    rc = 1;
    if ((rc = store_open(to_db, &to)) < 0) {
        fprintf(stderr, "sluicectl migrate: cannot open %s\n", to_name);
        rc = rc == -EINVAL ? EX_CONFIG : 1;
        goto done;
    }
    if (store_is_empty(to, &empty) < 0)
        goto done;
    if (!empty) {
        fprintf(stderr,
                "sluicectl migrate: %s is not empty: a queue moves only "
                "into a database with no job, provider, batch or daemon "
                "row\n",
                to_name);
        rc = EX_DATAERR;
        goto done;
    }
    if (store_begin(to) < 0)
        goto done;
    if ((rc = migrate_tables(from, to, report)) != 0 ||
        (rc = migrate_verify(from, to)) != 0 ||
        (rc = store_commit(to) < 0 ? 1 : 0) != 0) {
        store_rollback(to);
        goto done;
    }
    if (json) {
        json_object_set_new(report, "from", json_string(from_name));
        json_object_set_new(report, "to", json_string(to_name));
        rc = ctl_print_json(report);
    } else {
        printf("migrated %s to %s:", from_name, to_name);
        for (const char *const *t = store_tables; *t; t++)
            printf(" %lld %s%s",
                   (long long)json_integer_value(json_object_get(report, *t)),
                   *t, t[1] ? "," : "\n");
    }
done:
    json_decref(report);
    store_close(from);
    store_close(to);
    free(from_name);
    free(to_name);
    return rc;
}
