/*
 * ctl/outputs.c: sluicectl outputs, the downloaded files of succeeded
 * jobs (docs/design.md §13): the outputs table joined with each job, and
 * --retry, which puts failed downloads back to pending for the daemon.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "sluice/clock.h"
#include "sluice/store.h"

static bool
ctl_output_state_ok(const char *s)
{
    return strcmp(s, "pending") == 0 || strcmp(s, "stored") == 0 ||
           strcmp(s, "failed") == 0;
}

/* --retry: failed rows (of the batch) back to pending, due now. */
static int
ctl_outputs_retry(struct ctl *c, const char *batch, bool json)
{
    long n = 0;
    int rc = store_outputs_retry(c->store, batch, clock_now_ms(), &n);

    if (rc < 0) {
        fprintf(stderr, "sluicectl outputs: --retry: database error\n");
        return 1;
    }
    if (json) {
        json_t *v = json_pack("{s:I}", "retried", (json_int_t)n);
        rc = ctl_print_json(v);
        json_decref(v);
        return rc;
    }
    printf("%ld failed output%s back to pending\n", n, n == 1 ? "" : "s");
    return 0;
}

int
ctl_outputs(struct ctl *c, int argc, char **argv)
{
    const char *batch = NULL, *state = NULL;
    bool json = false, retry = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--batch", &batch, NULL}, {"--state", &state, NULL},
        {"--retry", NULL, &retry}, {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };
    static const struct ctl_col cols[] = {
        {"job_id", "JOB"},         {"custom_id", "CUSTOM ID"},
        {"provider", "PROVIDER"},  {"state", "STATE"},
        {"attempts", "FETCHES"},   {"bytes", "BYTES"},
        {"path", "PATH"},          {"error", "ERROR"},
    };

    if ((rc = ctl_parse_args("outputs", argc, argv, opts, &npos)) != 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("outputs", "takes no operand");
    if (state && !ctl_output_state_ok(state))
        return ctl_usage_error("outputs",
                               "--state: use pending, stored or failed");
    if (retry && state)
        return ctl_usage_error("outputs", "--retry takes failed outputs; "
                                          "--state does not apply");
    if ((rc = ctl_open(c, "outputs", false, false)) != 0)
        return rc;
    if (retry)
        return ctl_outputs_retry(c, batch, json);

    json_t *rows = store_outputs_json(c->store, batch, state);
    if (!rows) {
        fprintf(stderr, "sluicectl outputs: cannot read the database\n");
        return 1;
    }
    if (json) {
        rc = ctl_print_json(rows);
        json_decref(rows);
        return rc;
    }
    if (json_array_size(rows) == 0)
        printf("no outputs\n");
    else
        ctl_print_objects(stdout, rows, cols, sizeof(cols) / sizeof(cols[0]),
                          true);
    json_decref(rows);
    return 0;
}
