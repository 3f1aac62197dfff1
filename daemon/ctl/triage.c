/*
 * ctl/triage.c: what an operator does about failures and finished work:
 * failures (grouped by provider, class and code), retry, cancel, resume
 * (a paused provider), export (OpenAI-Batch result JSONL) and purge.
 * Every change is one transaction through the store.
 */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "internal.h"
#include "sluice/clock.h"
#include "sluice/job.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

/* --- failures ------------------------------------------------------------- */

/* A failure message in a table: one line, at most this many code points,
 * so that a provider's paragraph does not push the table off screen
 * (--json and show have it whole). */
#define CTL_MESSAGE_WIDTH 60

static char *
ctl_short_message(const char *m)
{
    size_t w = 0, i = 0;
    char *out;

    if (!m || !*m)
        return xstrdup("-");
    for (; m[i] && w < CTL_MESSAGE_WIDTH; i++)
        if (((unsigned char)m[i] & 0xC0) != 0x80)
            w++;
    while (m[i] && ((unsigned char)m[i] & 0xC0) == 0x80)
        i++;
    out = m[i] ? xasprintf("%.*s...", (int)i, m) : xstrdup(m);
    for (char *p = out; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    return out;
}

static void
ctl_failures_table(const json_t *groups)
{
    static const char *const heads[] = {
        "PROVIDER", "CLASS",      "CODE",      "HTTP",
        "COUNT",    "FIRST SEEN", "LAST SEEN", "SAMPLE REQUEST IDS",
        "MESSAGE",
    };
    /* NULL: cells made below (times, the id list, the message) */
    static const char *const keys[] = {
        "provider", "error_class", "error_code", "http_status", "count",
        NULL,       NULL,          NULL,         NULL,
    };
    enum { NCOLS = sizeof(heads) / sizeof(heads[0]) };
    struct ctl_table t;
    char *row[NCOLS];
    json_int_t total = 0;
    size_t i;
    json_t *g;

    ctl_table_init(&t, NCOLS);
    for (size_t k = 0; k < NCOLS; k++)
        row[k] = xstrdup(heads[k]);
    ctl_table_add(&t, row);
    json_array_foreach(groups, i, g)
    {
        for (size_t k = 0; k < NCOLS; k++) {
            json_t *v = keys[k] ? json_object_get(g, keys[k]) : NULL;
            row[k] = !keys[k] ? NULL : v ? ctl_cell(keys[k], v) : xstrdup("-");
        }
        /* first/last seen are failures' finished_at: times */
        row[5] = ctl_cell("first_seen_at", json_object_get(g, "first_seen"));
        row[6] = ctl_cell("last_seen_at", json_object_get(g, "last_seen"));
        struct buf ids = {0};
        json_t *id;
        size_t j;
        json_array_foreach(json_object_get(g, "sample_request_ids"), j, id)
            buf_appendf(&ids, "%s%s", j ? "," : "", json_string_value(id));
        row[7] = ids.len ? buf_steal(&ids) : xstrdup("-");
        buf_free(&ids);
        row[8] =
            ctl_short_message(json_string_value(json_object_get(g, "message")));
        total += json_integer_value(json_object_get(g, "count"));
        ctl_table_add(&t, row);
    }
    ctl_table_print(&t, stdout);
    printf("\n%" JSON_INTEGER_FORMAT " failed job%s in %zu group%s; "
           "'sluicectl show ID' for one, 'sluicectl retry --state failed "
           "--class C' to retry\n",
           total, total == 1 ? "" : "s", json_array_size(groups),
           json_array_size(groups) == 1 ? "" : "s");
}

int
ctl_failures(struct ctl *c, int argc, char **argv)
{
    const char *since = NULL;
    struct store_select sel = {0};
    bool json = false;
    int64_t ms;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--provider", &sel.provider, NULL},
        {"--batch", &sel.batch, NULL},
        {"--since", &since, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_parse_args("failures", argc, argv, opts, &npos)) != 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("failures", "takes no operand");
    if (since && (rc = ctl_duration("failures", "--since", since, &ms)) != 0)
        return rc;
    if ((rc = ctl_open_readonly(c, "failures")) != 0)
        return rc;
    if (since)
        sel.finished_since = clock_now_ms() - ms;
    json_t *groups = store_failures_json(c->store, &sel);
    if (!groups) {
        fprintf(stderr, "sluicectl failures: cannot read the database\n");
        return 1;
    }
    if (json)
        rc = ctl_print_json(groups);
    else if (json_array_size(groups) == 0)
        printf("no failures\n");
    else
        ctl_failures_table(groups);
    json_decref(groups);
    return rc;
}

/* --- retry and cancel ----------------------------------------------------- */

/*
 * The shared body of retry and cancel: resolves the ID/CUSTOM_ID operands
 * (every one must name a job, or nothing changes and the exit is 1) or
 * applies sel, in one transaction, and reports how many jobs changed.
 */
static int
ctl_change(struct ctl *c, const char *cmd, char **refs, int nrefs,
           const struct store_select *sel, bool json,
           int (*apply)(struct store *, const int64_t *, size_t,
                        const struct store_select *, int64_t, long *))
{
    int64_t *ids = NULL;
    long changed = 0;
    int missing = 0, rc;

    if ((rc = ctl_open(c, cmd, false, false)) != 0)
        return rc;
    if (store_begin(c->store) < 0) {
        fprintf(stderr, "sluicectl %s: database busy or unwritable\n", cmd);
        return 1;
    }
    if (nrefs > 0) {
        ids = xcalloc((size_t)nrefs, sizeof(*ids));
        if (store_resolve(c->store, (const char *const *)refs, (size_t)nrefs,
                          ids) < 0)
            goto db_fail;
        for (int i = 0; i < nrefs; i++) {
            if (ids[i] == 0) {
                fprintf(stderr, "sluicectl %s: no job '%s'\n", cmd, refs[i]);
                missing++;
            }
        }
        if (missing > 0) {
            store_rollback(c->store);
            fprintf(stderr, "sluicectl %s: nothing changed\n", cmd);
            free(ids);
            return 1;
        }
    }
    if (apply(c->store, ids, (size_t)nrefs, nrefs > 0 ? NULL : sel,
              clock_now_ms(), &changed) < 0 ||
        store_commit(c->store) < 0)
        goto db_fail;
    free(ids);

    long skipped = nrefs > 0 ? nrefs - changed : 0;
    if (json) {
        json_t *o = json_pack("{s:I, s:I}", "changed", (json_int_t)changed,
                              "skipped", (json_int_t)skipped);
        rc = ctl_print_json(o);
        json_decref(o);
        return rc;
    }
    bool cancel = strcmp(cmd, "cancel") == 0;
    printf("%ld job%s %s", changed, changed == 1 ? "" : "s",
           cancel ? "cancelled" : "retried");
    if (skipped > 0)
        printf(", %ld left as %s (%s)", skipped,
               skipped == 1 ? "it was" : "they were",
               cancel ? "already finished" : "not failed or cancelled");
    printf("\n");
    return 0;
db_fail:
    store_rollback(c->store);
    free(ids);
    fprintf(stderr, "sluicectl %s: database error, nothing changed\n", cmd);
    return 1;
}

int
ctl_retry(struct ctl *c, int argc, char **argv)
{
    const char *state = NULL, *cls = NULL;
    struct store_select sel = {0};
    enum err_class ec;
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--state", &state, NULL},
        {"--class", &cls, NULL},
        {"--code", &sel.error_code, NULL},
        {"--batch", &sel.batch, NULL},
        {"--provider", &sel.provider, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_parse_args("retry", argc, argv, opts, &npos)) != 0)
        return rc;
    bool filters = state || cls || sel.error_code || sel.batch || sel.provider;
    if (npos > 0 && filters)
        return ctl_usage_error("retry", "give IDs or filters, not both");
    if (npos == 0 && !state)
        return ctl_usage_error(
            "retry", "needs IDs, or --state failed (or cancelled) with "
                     "optional filters");
    if (state && (rc = ctl_state_in("retry", state,
                                    (1u << JOB_FAILED) | (1u << JOB_CANCELLED),
                                    &sel.states)) != 0)
        return rc;
    if (cls && err_class_parse(cls, &ec) < 0)
        return ctl_bad_class("retry", cls);
    sel.error_class = cls;
    return ctl_change(c, "retry", argv, npos, &sel, json, store_retry);
}

int
ctl_cancel(struct ctl *c, int argc, char **argv)
{
    const char *state = NULL;
    struct store_select sel = {0};
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--batch", &sel.batch, NULL},
        {"--provider", &sel.provider, NULL},
        {"--state", &state, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_parse_args("cancel", argc, argv, opts, &npos)) != 0)
        return rc;
    bool filters = state || sel.batch || sel.provider;
    if (npos > 0 && filters)
        return ctl_usage_error("cancel", "give IDs or filters, not both");
    /* A bare --state would cancel a whole queue: a batch or a provider
     * must say which. */
    if (npos == 0 && !sel.batch && !sel.provider)
        return ctl_usage_error("cancel", "needs IDs, --batch or --provider");
    if (state && (rc = ctl_state_in("cancel", state, JOB_UNFINISHED_MASK,
                                    &sel.states)) != 0)
        return rc;
    return ctl_change(c, "cancel", argv, npos, &sel, json, store_cancel);
}

/* --- resume --------------------------------------------------------------- */

/* A batch held at its budget goes on: its cap is lifted (batches.budget
 * NULL); enqueue --budget sets a new one. */
static int
ctl_resume_batch(struct ctl *c, const char *batch, bool json)
{
    int rc;

    if ((rc = ctl_open(c, "resume", false, false)) != 0)
        return rc;
    /* A mistyped name must not create a batch row and report success. */
    json_t *rows = store_progress_json(c->store, batch);
    size_t known = json_array_size(rows);
    json_decref(rows);
    if (known == 0) {
        fprintf(stderr, "sluicectl resume: no batch '%s' in the database\n",
                batch);
        return 1;
    }
    if (store_batch_budget_set(c->store, batch, 0, clock_now_ms()) < 0) {
        fprintf(stderr, "sluicectl resume: batch %s: database error\n", batch);
        return 1;
    }
    if (json) {
        json_t *o = json_pack("{s:s, s:b}", "batch", batch, "budget_lifted", 1);
        rc = ctl_print_json(o);
        json_decref(o);
        return rc;
    }
    printf("batch %s: budget lifted; the daemon claims its jobs again "
           "within a second\n",
           batch);
    return 0;
}

int
ctl_resume(struct ctl *c, int argc, char **argv)
{
    const char *batch = NULL;
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--batch", &batch, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_parse_args("resume", argc, argv, opts, &npos)) != 0)
        return rc;
    if (batch)
        return npos == 0 ? ctl_resume_batch(c, batch, json)
                         : ctl_usage_error("resume",
                                           "give a PROVIDER or --batch B");
    if (npos != 1)
        return ctl_usage_error("resume", "needs exactly one PROVIDER");
    if ((rc = ctl_open(c, "resume", false, false)) != 0)
        return rc;
    json_t *lanes = store_providers_json(c->store);
    if (!lanes) {
        fprintf(stderr, "sluicectl resume: cannot read the database\n");
        return 1;
    }
    json_t *lane = NULL, *l;
    size_t i;
    json_array_foreach(lanes, i, l)
    {
        if (strcmp(json_string_value(json_object_get(l, "name")), argv[0]) == 0)
            lane = l;
    }
    rc = store_provider_request_resume(c->store, argv[0], clock_now_ms());
    if (rc == -ENOENT) {
        fprintf(stderr, "sluicectl resume: no provider '%s' in the database",
                argv[0]);
        if (json_array_size(lanes) == 0)
            fprintf(stderr, " (the daemon has not run yet)");
        else
            fprintf(stderr, "; known:");
        json_array_foreach(lanes, i, l) fprintf(
            stderr, " %s", json_string_value(json_object_get(l, "name")));
        fputc('\n', stderr);
        json_decref(lanes);
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "sluicectl resume: %s: database error\n", argv[0]);
        json_decref(lanes);
        return 1;
    }
    const char *state = json_string_value(json_object_get(lane, "state"));
    const char *reason = json_string_value(json_object_get(lane, "reason"));
    if (json) {
        json_t *o = json_pack("{s:s, s:s?, s:s?, s:b}", "provider", argv[0],
                              "was", state, "reason", reason, "requested", 1);
        rc = ctl_print_json(o);
        json_decref(o);
    } else {
        printf("%s: resume requested (was %s%s%s); the daemon acts on it "
               "within a second\n",
               argv[0], state ? state : "?", reason ? ": " : "",
               reason ? reason : "");
    }
    json_decref(lanes);
    return rc;
}

/* --- export --------------------------------------------------------------- */

struct ctl_export {
    FILE *out;
    long rows;
    int err; /* errno of the first failed write */
};

/* One OpenAI-Batch output line: {id, custom_id, response{status_code,
 * request_id, body}, error{code, message, type}}. response is null when
 * no HTTP answer is known, error null on success. */
static json_t *
ctl_export_line(const json_t *row)
{
    const char *state = json_string_value(json_object_get(row, "state"));
    json_t *status = json_object_get(row, "http_status");
    json_t *result = json_object_get(row, "result");
    json_t *line = json_object();
    json_t *response = json_null(), *error = json_null();

    json_object_set_new(
        line, "id",
        json_sprintf("job_%" JSON_INTEGER_FORMAT,
                     json_integer_value(json_object_get(row, "id"))));
    json_object_set(line, "custom_id", json_object_get(row, "custom_id"));
    if (json_is_integer(status)) {
        response = json_object();
        json_object_set(response, "status_code", status);
        json_object_set(response, "request_id",
                        json_object_get(row, "request_id"));
        json_object_set(response, "body", result ? result : json_null());
    }
    if (state && strcmp(state, "succeeded") != 0) {
        const char *code =
            json_string_value(json_object_get(row, "error_code"));
        const char *cls =
            json_string_value(json_object_get(row, "error_class"));
        const char *msg =
            json_string_value(json_object_get(row, "error_message"));
        if (strcmp(state, "cancelled") == 0) {
            code = "cancelled";
            cls = "cancelled";
            msg = "cancelled by an operator";
        } else if (strcmp(state, "failed") != 0) {
            /* not finished: the last failure, if any, is not the end */
            code = state;
            cls = state;
            msg = "not finished";
        }
        error = json_pack("{s:s?, s:s?, s:s?}", "code", code ? code : cls,
                          "message", msg ? msg : cls, "type", cls);
    }
    json_object_set_new(line, "response", response);
    json_object_set_new(line, "error", error);
    /* Where the outputs were downloaded (outputs = download): local
     * paths, beyond the OpenAI Batch keys, only when there are some. */
    json_t *paths = json_object_get(row, "outputs");
    if (json_array_size(paths) > 0)
        json_object_set(line, "outputs", paths);
    return line;
}

static int
on_export_row(const json_t *row, void *arg)
{
    struct ctl_export *x = arg;
    json_t *line = ctl_export_line(row);
    int rc = json_dumpf(line, x->out, JSON_COMPACT);
    json_decref(line);
    if (rc < 0 || fputc('\n', x->out) == EOF) {
        x->err = errno ? errno : EIO;
        return -EIO;
    }
    x->rows++;
    return 0;
}

int
ctl_export(struct ctl *c, int argc, char **argv)
{
    const char *state = NULL;
    struct store_select sel = {0};
    struct ctl_export x = {0};
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--batch", &sel.batch, NULL},
        {"--provider", &sel.provider, NULL},
        {"--state", &state, NULL},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_parse_args("export", argc, argv, opts, &npos)) != 0)
        return rc;
    if (npos > 1)
        return ctl_usage_error("export", "at most one FILE");
    if (state &&
        (rc = ctl_state_in("export", state, (1u << JOB_STATE_COUNT) - 1,
                           &sel.states)) != 0)
        return rc;
    if (!state)
        sel.states = (1u << JOB_SUCCEEDED) | (1u << JOB_FAILED);
    if ((rc = ctl_open_readonly(c, "export")) != 0)
        return rc;

    const char *path = npos == 1 && strcmp(argv[0], "-") != 0 ? argv[0] : NULL;
    x.out = path ? fopen(path, "w") : stdout;
    if (!x.out) {
        fprintf(stderr, "sluicectl export: %s: %s\n", path, strerror(errno));
        return 1;
    }
    errno = 0;
    rc = store_export(c->store, &sel, on_export_row, &x);
    if (x.err == 0 && ferror(x.out))
        x.err = errno ? errno : EIO;
    if (path && fclose(x.out) != 0 && x.err == 0)
        x.err = errno ? errno : EIO;
    if (x.err != 0) {
        fprintf(stderr, "sluicectl export: %s: write failed: %s\n",
                path ? path : "stdout", strerror(x.err));
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "sluicectl export: database error after %ld rows\n",
                x.rows);
        return 1;
    }
    if (path)
        fprintf(stderr, "%ld result%s written to %s\n", x.rows,
                x.rows == 1 ? "" : "s", path);
    return 0;
}

/* --- purge ---------------------------------------------------------------- */

/* Jobs deleted per transaction: a few tens of milliseconds of write lock,
 * so the daemon's group commits wait that long at most. */
#define CTL_PURGE_BATCH 5000

int
ctl_purge(struct ctl *c, int argc, char **argv)
{
    const char *older = NULL, *state = NULL;
    struct store_select sel = {0};
    long jobs, attempts, pages;
    bool json = false;
    int64_t ms;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--older-than", &older, NULL},
        {"--state", &state, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_parse_args("purge", argc, argv, opts, &npos)) != 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("purge", "takes no operand");
    if (!older)
        return ctl_usage_error("purge", "--older-than DURATION is required");
    if ((rc = ctl_duration("purge", "--older-than", older, &ms)) != 0)
        return rc;
    if (state && (rc = ctl_state_in("purge", state, JOB_TERMINAL_MASK,
                                    &sel.states)) != 0)
        return rc;
    if ((rc = ctl_open(c, "purge", false, false)) != 0)
        return rc;
    sel.finished_before = clock_now_ms() - ms;
    rc = store_purge(c->store, &sel, CTL_PURGE_BATCH, &jobs, &attempts, &pages);
    if (rc < 0) {
        fprintf(stderr,
                "sluicectl purge: database error after %ld jobs deleted\n",
                jobs);
        return 1;
    }
    if (json) {
        json_t *o =
            json_pack("{s:I, s:I, s:I}", "jobs", (json_int_t)jobs, "attempts",
                      (json_int_t)attempts, "freed_pages", (json_int_t)pages);
        rc = ctl_print_json(o);
        json_decref(o);
        return rc;
    }
    printf("%ld job%s purged (%ld attempt%s), %ld page%s given back\n", jobs,
           jobs == 1 ? "" : "s", attempts, attempts == 1 ? "" : "s", pages,
           pages == 1 ? "" : "s");
    return 0;
}
