/*
 * ctl/spend.c: what the queue has cost, per provider and per batch, with
 * the caps: the spend section of status (and its --json), and the spend
 * watch shows beside each batch and provider.
 *
 * Spend is the sum of jobs.cost (the spend view), the rate the part of it
 * that finished in the last hour, the caps the providers' budget in the
 * config and the batches' in the batches table; the state is what the
 * daemon wrote (providers.reason, batches.state). Reading the view scans
 * the jobs: fine for a command, and watch reads it once per refresh.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sluice/config.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

static json_t *
spend_entry(json_t *list, const char *key, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, key)), name) == 0)
            return e;
    }
    e = json_pack("{s:s, s:f, s:f}", key, name, "spent", 0.0, "spent_last_hour",
                  0.0);
    json_array_append_new(list, e);
    return e;
}

static void
spend_add(json_t *e, const json_t *row)
{
    static const char *const keys[] = {"spent", "spent_last_hour"};
    for (size_t k = 0; k < 2; k++) {
        double v = json_number_value(json_object_get(e, keys[k])) +
                   json_number_value(json_object_get(row, keys[k]));
        json_object_set_new(e, keys[k], json_real(v));
    }
}

/* budget, left and state on an entry whose cap is cap (<= 0: none). */
static void
spend_cap(json_t *e, double cap, const char *state, const char *reason)
{
    if (cap > 0) {
        double left = cap - json_number_value(json_object_get(e, "spent"));
        json_object_set_new(e, "budget", json_real(cap));
        json_object_set_new(e, "left", json_real(left > 0 ? left : 0));
    }
    if (state)
        json_object_set_new(e, "state", json_string(state));
    if (reason)
        json_object_set_new(e, "reason", json_string(reason));
}

json_t *
ctl_spend(struct ctl *c, const char *batch)
{
    json_t *rows = store_spend_json(c->store, batch);
    json_t *lanes = store_providers_json(c->store);
    json_t *providers = json_array(), *batches = json_array();
    size_t i;
    json_t *row;

    if (rows == NULL || lanes == NULL) {
        json_decref(rows);
        json_decref(lanes);
        json_decref(providers);
        json_decref(batches);
        return NULL;
    }
    json_array_foreach(rows, i, row)
    {
        const char *b = json_string_value(json_object_get(row, "batch"));
        spend_add(
            spend_entry(providers, "provider",
                        json_string_value(json_object_get(row, "provider"))),
            row);
        if (b == NULL)
            continue;
        json_t *e = spend_entry(batches, "batch", b);
        spend_add(e, row);
        json_object_set(e, "batch_budget",
                        json_object_get(row, "batch_budget"));
        json_object_set(e, "batch_state", json_object_get(row, "batch_state"));
        json_object_set(e, "batch_reason",
                        json_object_get(row, "batch_reason"));
    }
    /* capped providers without a cost yet are shown too */
    for (size_t k = 0; !batch && c->config && k < c->config->nproviders; k++)
        if (c->config->providers[k].budget > 0)
            spend_entry(providers, "provider", c->config->providers[k].name);
    json_array_foreach(providers, i, row)
    {
        const char *name = json_string_value(json_object_get(row, "provider"));
        const struct provider_config *pc =
            c->config ? config_provider(c->config, name) : NULL;
        const char *state = NULL, *reason = NULL;
        size_t j;
        json_t *l;
        json_array_foreach(lanes, j, l)
        {
            if (strcmp(json_string_value(json_object_get(l, "name")), name) ==
                0) {
                state = json_string_value(json_object_get(l, "state"));
                reason = json_string_value(json_object_get(l, "reason"));
            }
        }
        spend_cap(row, pc ? pc->budget : 0, state, reason);
    }
    json_array_foreach(batches, i, row)
    {
        spend_cap(row, json_number_value(json_object_get(row, "batch_budget")),
                  json_string_value(json_object_get(row, "batch_state")),
                  json_string_value(json_object_get(row, "batch_reason")));
        json_object_del(row, "batch_budget");
        json_object_del(row, "batch_state");
        json_object_del(row, "batch_reason");
    }
    json_decref(rows);
    json_decref(lanes);
    return json_pack("{s:o, s:o}", "providers", providers, "batches", batches);
}

/* "0.08", "-" */
static char *
spend_cell(const json_t *v)
{
    return json_is_number(v) ? xasprintf("%.2f", json_number_value(v))
                             : xstrdup("-");
}

static void
spend_table(const json_t *list, const char *key, const char *head)
{
    struct ctl_table t;
    char *row[6];
    size_t i;
    json_t *e;

    ctl_table_init(&t, 6);
    row[0] = xstrdup(head);
    row[1] = xstrdup("SPENT");
    row[2] = xstrdup("LAST HOUR");
    row[3] = xstrdup("BUDGET");
    row[4] = xstrdup("LEFT");
    row[5] = xstrdup("STATE");
    ctl_table_add(&t, row);
    json_array_foreach(list, i, e)
    {
        const char *state = json_string_value(json_object_get(e, "state"));
        const char *reason = json_string_value(json_object_get(e, "reason"));
        row[0] = ctl_safe(xstrdup(json_string_value(json_object_get(e, key))));
        row[1] = spend_cell(json_object_get(e, "spent"));
        row[2] = spend_cell(json_object_get(e, "spent_last_hour"));
        row[3] = spend_cell(json_object_get(e, "budget"));
        row[4] = spend_cell(json_object_get(e, "left"));
        row[5] = xasprintf("%s%s%s", state ? state : "-", reason ? ": " : "",
                           reason ? reason : "");
        ctl_table_add(&t, row);
    }
    ctl_table_print(&t, stdout);
}

void
ctl_spend_print(const json_t *spend)
{
    const json_t *providers = json_object_get(spend, "providers");
    const json_t *batches = json_object_get(spend, "batches");

    if (json_array_size(providers) + json_array_size(batches) == 0)
        return;
    printf("\nspend\n");
    if (json_array_size(providers) > 0)
        spend_table(providers, "provider", "PROVIDER");
    if (json_array_size(batches) > 0) {
        if (json_array_size(providers) > 0)
            putchar('\n');
        spend_table(batches, "batch", "BATCH");
    }
}

void
ctl_spend_note(FILE *f, const json_t *spend, const char *list, const char *key,
               const char *name)
{
    size_t i;
    json_t *e;

    if (name == NULL)
        return;
    json_array_foreach(json_object_get(spend, list), i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, key)), name) != 0)
            continue;
        fprintf(f, "  spent %.2f (%.2f last hour)",
                json_number_value(json_object_get(e, "spent")),
                json_number_value(json_object_get(e, "spent_last_hour")));
        if (json_object_get(e, "budget"))
            fprintf(f, " of %.2f, %.2f left",
                    json_number_value(json_object_get(e, "budget")),
                    json_number_value(json_object_get(e, "left")));
        return;
    }
}
