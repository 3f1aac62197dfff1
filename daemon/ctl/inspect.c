/*
 * ctl/inspect.c: the read-only views of the queue: status (counts by
 * provider and batch, each provider's live state), jobs (a filtered list)
 * and show (one job with its attempts).
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sluice/job.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

/* jobs without --limit: one screenful or two for a human; --json has no
 * default limit since scripts want everything. */
#define CTL_JOBS_DEFAULT_LIMIT 50

/* --- status --------------------------------------------------------------- */

static void
ctl_status_providers(const json_t *providers)
{
    struct ctl_table t;
    char **row = xcalloc(JOB_STATE_COUNT + 2, sizeof(char *));
    const char *name;
    json_t *counts;

    ctl_table_init(&t, JOB_STATE_COUNT + 2);
    row[0] = xstrdup("PROVIDER");
    for (int s = 0; s < JOB_STATE_COUNT; s++)
        row[s + 1] = ctl_header_of(job_state_name((enum job_state)s));
    row[JOB_STATE_COUNT + 1] = xstrdup("TOTAL");
    ctl_table_add(&t, row);
    json_object_foreach((json_t *)providers, name, counts)
    {
        json_int_t total = 0;
        row[0] = xstrdup(name);
        for (int s = 0; s < JOB_STATE_COUNT; s++) {
            json_int_t k = json_integer_value(
                json_object_get(counts, job_state_name((enum job_state)s)));
            total += k;
            row[s + 1] = xasprintf("%" JSON_INTEGER_FORMAT, k);
        }
        row[JOB_STATE_COUNT + 1] = xasprintf("%" JSON_INTEGER_FORMAT, total);
        ctl_table_add(&t, row);
    }
    ctl_table_print(&t, stdout);
    free(row);
}

int
ctl_status(struct ctl *c, int argc, char **argv)
{
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };
    static const struct ctl_col batch_cols[] = {
        {"batch", "BATCH"},         {"provider", "PROVIDER"},
        {"queued", "QUEUED"},       {"running", "RUNNING"},
        {"waiting", "WAITING"},     {"retrying", "RETRYING"},
        {"succeeded", "SUCCEEDED"}, {"failed", "FAILED"},
        {"cancelled", "CANCELLED"}, {"total", "TOTAL"},
        {"rate_per_s", "RATE/S"},   {"eta_s", "ETA S"},
    };
    static const struct ctl_col lane_cols[] = {
        {"name", "PROVIDER"},       {"state", "STATE"},
        {"reason", "REASON"},       {"concurrency_limit", "LIMIT"},
        {"in_flight", "IN FLIGHT"}, {"pause_until", "PAUSED UNTIL"},
        {"rate_per_s", "RATE/S"},   {"rate_source", "RATE FROM"},
        {"token_limit", "TOKENS/MIN"}, {"tokens_available", "TOKENS LEFT"},
        {"updated_at", "UPDATED"},
    };

    if ((rc = ctl_parse_args("status", argc, argv, opts, &npos)) != 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("status", "takes no operand");
    if ((rc = ctl_open_readonly(c, "status")) != 0)
        return rc;
    json_t *st = store_status_json(c->store);
    json_t *spend = st ? ctl_spend(c, NULL) : NULL;
    if (!st || !spend) {
        json_decref(st);
        fprintf(stderr, "sluicectl status: cannot read the database\n");
        return 1;
    }
    json_object_set_new(st, "spend", spend);
    if (json) {
        rc = ctl_print_json(st);
        json_decref(st);
        return rc;
    }

    json_t *providers = json_object_get(st, "providers");
    json_t *batches = json_object_get(st, "batches");
    json_t *lanes = json_object_get(st, "lanes");
    if (json_object_size(providers) == 0)
        printf("no jobs\n");
    else
        ctl_status_providers(providers);
    if (json_array_size(batches) > 0) {
        printf("\nbatches\n");
        ctl_print_objects(stdout, batches, batch_cols,
                          sizeof(batch_cols) / sizeof(batch_cols[0]), true);
    }
    if (json_array_size(lanes) > 0) {
        printf("\nlanes\n");
        ctl_print_objects(stdout, lanes, lane_cols,
                          sizeof(lane_cols) / sizeof(lane_cols[0]), false);
    }
    json_t *out = json_object_get(st, "outputs");
    json_int_t pending = json_integer_value(json_object_get(out, "pending"));
    json_int_t stored = json_integer_value(json_object_get(out, "stored"));
    json_int_t failed = json_integer_value(json_object_get(out, "failed"));
    if (pending + stored + failed > 0)
        printf("\noutputs: %" JSON_INTEGER_FORMAT " pending, "
               "%" JSON_INTEGER_FORMAT " stored, %" JSON_INTEGER_FORMAT
               " failed\n",
               pending, stored, failed);
    ctl_spend_print(spend);
    json_decref(st);
    return 0;
}

int
ctl_jobs(struct ctl *c, int argc, char **argv)
{
    const char *state = NULL, *limit_arg = NULL;
    struct store_filter flt = {0};
    bool json = false;
    enum job_state st;
    long limit;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--state", &state, NULL},     {"--provider", &flt.provider, NULL},
        {"--batch", &flt.batch, NULL}, {"--limit", &limit_arg, NULL},
        {"--json", NULL, &json},       {NULL, NULL, NULL},
    };
    static const struct ctl_col cols[] = {
        {"id", "ID"},
        {"provider", "PROVIDER"},
        {"batch", "BATCH"},
        {"custom_id", "CUSTOM ID"},
        {"state", "STATE"},
        {"attempts", "ATTEMPTS"},
        {"http_status", "HTTP"},
        {"error_class", "CLASS"},
        {"error_code", "CODE"},
        {"updated_at", "UPDATED"},
    };

    if ((rc = ctl_parse_args("jobs", argc, argv, opts, &npos)) != 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("jobs", "takes no operand");
    if (state && job_state_parse(state, &st) < 0)
        return ctl_bad_state("jobs", state);
    limit = json ? 0 : CTL_JOBS_DEFAULT_LIMIT;
    if (limit_arg &&
        (rc = ctl_count("jobs", "--limit", limit_arg, &limit)) != 0)
        return rc;
    if ((rc = ctl_open_readonly(c, "jobs")) != 0)
        return rc;

    flt.state = state;
    /* One row more than shown tells a human that the list was cut. */
    flt.limit = json || limit == 0 ? limit : limit + 1;
    json_t *rows = store_jobs_json(c->store, &flt);
    if (!rows) {
        fprintf(stderr, "sluicectl jobs: cannot read the database\n");
        return 1;
    }
    if (json) {
        rc = ctl_print_json(rows);
        json_decref(rows);
        return rc;
    }
    bool cut = limit > 0 && json_array_size(rows) > (size_t)limit;
    if (cut)
        json_array_remove(rows, (size_t)limit);
    if (json_array_size(rows) == 0)
        printf("no jobs\n");
    else
        ctl_print_objects(stdout, rows, cols, sizeof(cols) / sizeof(cols[0]),
                          true);
    if (cut)
        fprintf(stderr, "(first %ld shown; --limit N or --limit 0 for all)\n",
                limit);
    json_decref(rows);
    return 0;
}

/* --- show ----------------------------------------------------------------- */

/* Job keys printed in their own sections rather than in the field list.
 * "attempts" is both a column (a count) and, in store_job_json, possibly
 * the array of attempt rows: only the array has its own section. */
static bool
ctl_show_sectioned(const char *key, const json_t *v)
{
    static const char *const keys[] = {
        "body",       "result",        "http_status", "error_class",
        "error_code", "error_message", "request_id",
    };
    if (strcmp(key, "attempts") == 0)
        return json_is_array(v);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(key, keys[i]) == 0)
            return true;
    return false;
}

/* body and result are JSON text in the database (or already JSON values):
 * printed indented under their heading; text that is not JSON as is. */
static void
ctl_show_json_field(const char *head, const json_t *v)
{
    json_t *parsed = NULL;
    char *text;

    if (!v || json_is_null(v))
        return;
    if (json_is_string(v))
        parsed = json_loads(json_string_value(v), JSON_DECODE_ANY, NULL);
    printf("\n%s:\n", head);
    if (json_is_string(v) && !parsed) {
        char *safe = ctl_safe(xstrdup(json_string_value(v)));
        printf("  %s\n", safe);
        free(safe);
        return;
    }
    text = json_dumps(parsed ? parsed : v, JSON_INDENT(2) | JSON_ENCODE_ANY);
    if (text) {
        for (char *p = text, *nl; p && *p; p = nl ? nl + 1 : NULL) {
            nl = strchr(p, '\n');
            /* JSON escapes C0 controls but passes U+0080-U+009F */
            char *line = ctl_safe(
                xstrndup(p, nl ? (size_t)(nl - p) : strlen(p)));
            printf("  %s\n", line);
            free(line);
        }
    }
    free(text);
    json_decref(parsed);
}

/* "key: value" lines with the values aligned. */
static void
ctl_show_fields(const json_t *job, const char *const *keys, size_t nkeys)
{
    size_t w = 0;
    for (size_t i = 0; i < nkeys; i++)
        if (json_object_get(job, keys[i]) && strlen(keys[i]) > w)
            w = strlen(keys[i]);
    for (size_t i = 0; i < nkeys; i++) {
        json_t *v = json_object_get(job, keys[i]);
        if (!v)
            continue;
        char *cell = ctl_safe(ctl_cell(keys[i], v));
        printf("%s:%*s %s\n", keys[i], (int)(w - strlen(keys[i])), "", cell);
        free(cell);
    }
}

static void
ctl_show_attempts(const json_t *attempts)
{
    struct ctl_table t;
    static const char *const heads[] = {
        "ATTEMPT", "STARTED", "MS",         "HTTP",
        "CLASS",   "CODE",    "REQUEST ID", "KEY SENT",
    };
    static const char *const keys[] = {
        "attempt",     "started_at", NULL,         "http_status",
        "error_class", "error_code", "request_id", "idempotency_key",
    };
    enum { NCOLS = sizeof(heads) / sizeof(heads[0]) };
    char *row[NCOLS];
    size_t i;
    json_t *a;

    ctl_table_init(&t, NCOLS);
    for (size_t k = 0; k < NCOLS; k++)
        row[k] = xstrdup(heads[k]);
    ctl_table_add(&t, row);
    json_array_foreach(attempts, i, a)
    {
        for (size_t k = 0; k < NCOLS; k++) {
            json_t *v = keys[k] ? json_object_get(a, keys[k]) : NULL;
            row[k] = v ? ctl_cell(keys[k], v) : xstrdup("-");
        }
        json_t *s = json_object_get(a, "started_at");
        json_t *f = json_object_get(a, "finished_at");
        if (json_is_integer(s) && json_is_integer(f)) {
            free(row[2]);
            row[2] = xasprintf("%" JSON_INTEGER_FORMAT,
                               json_integer_value(f) - json_integer_value(s));
        }
        ctl_table_add(&t, row);
    }
    ctl_table_print(&t, stdout);
}

int
ctl_show(struct ctl *c, int argc, char **argv)
{
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };
    static const char *const failure_keys[] = {
        "http_status",   "error_class", "error_code",
        "error_message", "request_id",
    };

    if ((rc = ctl_parse_args("show", argc, argv, opts, &npos)) != 0)
        return rc;
    if (npos != 1)
        return ctl_usage_error("show", "needs exactly one ID or CUSTOM_ID");
    if ((rc = ctl_open_readonly(c, "show")) != 0)
        return rc;
    json_t *job = store_job_json(c->store, argv[0]);
    if (!job) {
        fprintf(stderr, "sluicectl show: no job '%s'\n", argv[0]);
        return 1;
    }
    if (json) {
        rc = ctl_print_json(job);
        json_decref(job);
        return rc;
    }

    size_t nkeys = 0;
    const char **keys = xcalloc(json_object_size(job) + 1, sizeof(char *));
    const char *key;
    json_t *v;
    json_object_foreach(job, key, v)
    {
        if (!ctl_show_sectioned(key, v))
            keys[nkeys++] = key;
    }
    ctl_show_fields(job, keys, nkeys);
    free(keys);

    json_t *cls = json_object_get(job, "error_class");
    if (json_is_string(cls) && json_string_length(cls) > 0) {
        printf("\nlast failure:\n");
        ctl_show_fields(job, failure_keys,
                        sizeof(failure_keys) / sizeof(failure_keys[0]));
    }
    ctl_show_json_field("body", json_object_get(job, "body"));
    ctl_show_json_field("result", json_object_get(job, "result"));

    json_t *attempts = json_object_get(job, "attempts");
    if (json_array_size(attempts) > 0) {
        printf("\nattempts:\n");
        ctl_show_attempts(attempts);
    } else {
        printf("\nattempts: none\n");
    }
    json_decref(job);
    return 0;
}
