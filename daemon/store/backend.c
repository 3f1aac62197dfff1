/*
 * backend: the SQL-free helpers both store backends call (backend.h):
 * claim order, job references, state filters, JSON of text columns and
 * the shape of status and of the output counts. Each one exists so that
 * the SQLite and the PostgreSQL backend give the same answer to the same
 * question.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "sluice/job.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

static int
claimed_cmp(const void *a, const void *b)
{
    const struct backend_claimed *x = a, *y = b;
    if (x->priority != y->priority)
        return x->priority > y->priority ? -1 : 1;
    if (x->run_after != y->run_after)
        return x->run_after < y->run_after ? -1 : 1;
    return (x->job->id > y->job->id) - (x->job->id < y->job->id);
}

void
backend_claimed_sort(struct backend_claimed *c, int n)
{
    if (n > 1)
        qsort(c, (size_t)n, sizeof(*c), claimed_cmp);
}

char *
backend_names_json(const char *const *names, size_t n)
{
    json_t *arr = json_array();

    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_string(names[i]));
    char *text = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    if (text == NULL)
        return NULL;
    char *copy = xstrdup(text);
    free(text);
    return copy;
}

void
backend_pending_clear(struct store_pending *p)
{
    store_update_clear(&p->u);
}

void
backend_update_free_outcome(struct job_update *u)
{
    free((char *)u->code);
    free((char *)u->message);
    free((char *)u->fields);
    free((char *)u->result);
    free((char *)u->remote_id);
    free((char *)u->poll_url);
    for (size_t i = 0; i < u->noutput_urls; i++)
        free((char *)u->output_urls[i]);
    free((void *)u->output_urls);
    u->output_urls = NULL;
    u->noutput_urls = 0;
    u->code = u->message = NULL;
    u->fields = u->result = u->remote_id = u->poll_url = NULL;
}

/* A buffered update the database refused for its own content (a value too
 * big, a constraint) becomes the job's terminal failure, class protocol,
 * code "unstorable", message why: without the result, fields, run or
 * output URLs that may be what could not be written. The attempt row and
 * the key stay. Sets p->unstorable. */
static void
backend_pending_unstorable(struct store_pending *p, const char *why)
{
    struct job_update *u = &p->u;

    backend_update_free_outcome(u);
    u->state = JOB_FAILED;
    u->cls = ERR_PROTOCOL;
    u->code = xstrdup("unstorable");
    u->message = xasprintf("the outcome could not be stored: %s", why);
    u->has_cost = false;
    p->unstorable = true;
}

bool
backend_row_error(int err)
{
    return err == -E2BIG || err == -EEXIST || err == -EDOM || err == -ERANGE;
}

void
backend_pending_refused(struct store *s, size_t bad, const char *why)
{
    struct store_pending *p = &s->buf[bad];

    if (!p->unstorable) {
        log_error("store: job %" PRId64 ": outcome cannot be stored (%s): "
                  "the job fails as unstorable",
                  p->u.job_id, why);
        backend_pending_unstorable(p, why);
        return;
    }
    log_error("store: job %" PRId64 ": not even its failure can be stored: "
              "dropped, the job is taken back when its lease ends",
              p->u.job_id);
    backend_pending_clear(p);
    memmove(p, p + 1, (s->nbuf - bad - 1) * sizeof(*p));
    s->nbuf--;
}

bool
backend_ref_is_id(const char *ref, int64_t *id)
{
    size_t len = strspn(ref, "0123456789");

    /* < 19 digits: always fits an int64 */
    if (len == 0 || len >= 19 || ref[len] != '\0')
        return false;
    *id = strtoll(ref, NULL, 10);
    return true;
}

void
backend_states_text(unsigned states, char out[128])
{
    size_t len = 0;

    out[0] = '\0';
    for (int i = 0; i < JOB_STATE_COUNT; i++) {
        if (states & (1u << i))
            len += (size_t)snprintf(out + len, 128 - len, ",%s",
                                    job_state_name((enum job_state)i));
    }
    if (len > 0)
        strcat(out, ",");
}

/* Whether a column holds JSON text (body, result, fields, samples). */
static bool
backend_is_json_column(const char *name)
{
    return strcmp(name, "body") == 0 || strcmp(name, "result") == 0 ||
           strcmp(name, "fields") == 0 || strcmp(name, "outputs") == 0 ||
           strcmp(name, "sample_request_ids") == 0;
}

json_t *
backend_text_json(const char *column, const char *text, size_t len)
{
    json_t *v = NULL;

    if (backend_is_json_column(column))
        v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    if (v == NULL)
        v = json_stringn(text, len);
    if (v == NULL) /* not UTF-8: keep what is readable */
        v = json_string("");
    return v;
}

/* status: {"queued":0, … every state …, "total":0} */
static json_t *
backend_state_counts_new(void)
{
    json_t *o = json_object();
    for (int i = 0; i < JOB_STATE_COUNT; i++)
        json_object_set_new(o, job_state_name((enum job_state)i),
                            json_integer(0));
    json_object_set_new(o, "total", json_integer(0));
    return o;
}

void
backend_status_lanes(json_t *providers, const json_t *lanes)
{
    size_t i;
    json_t *lane;

    json_array_foreach(lanes, i, lane)
    {
        const char *name = json_string_value(json_object_get(lane, "name"));
        if (name && json_object_get(providers, name) == NULL)
            json_object_set_new(providers, name, backend_state_counts_new());
    }
}

void
backend_status_count(json_t *providers, const char *name, const char *state,
                     json_int_t n)
{
    json_t *counts = json_object_get(providers, name);
    json_t *total;

    if (counts == NULL) {
        counts = backend_state_counts_new();
        json_object_set_new(providers, name, counts);
    }
    json_object_set_new(counts, state, json_integer(n));
    total = json_object_get(counts, "total");
    json_integer_set(total, json_integer_value(total) + n);
}

void
backend_job_set_attempts(json_t *job, json_t *attempts)
{
    json_object_set(job, "attempt_count", json_object_get(job, "attempts"));
    json_object_set_new(job, "attempts", attempts);
}

json_t *
backend_status_new(json_t **providers, json_t **batches, json_t **lanes)
{
    json_t *status = json_object();

    *providers = json_object();
    *batches = json_array();
    *lanes = json_array();
    json_object_set_new(status, "providers", *providers);
    json_object_set_new(status, "batches", *batches);
    json_object_set_new(status, "lanes", *lanes);
    return status;
}

void
backend_status_outputs(json_t *status, long pending, long stored, long failed)
{
    json_object_set_new(
        status, "outputs",
        json_pack("{s:I, s:I, s:I}", "pending", (json_int_t)pending, "stored",
                  (json_int_t)stored, "failed", (json_int_t)failed));
}

void
backend_outputs_count(const char *state, long n, long *pending, long *stored,
                      long *failed)
{
    if (strcmp(state, "pending") == 0)
        *pending = n;
    else if (strcmp(state, "stored") == 0)
        *stored = n;
    else
        *failed = n;
}
