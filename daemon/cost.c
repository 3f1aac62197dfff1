/*
 * cost: a job's cost from its result, by the provider's cost_pointer or by
 * tokens × token_price (cost.h). A pointer that reaches numbers wins; one
 * that reaches none falls back to tokens, so a provider whose cost field
 * is sometimes absent is still counted when it reports usage.
 *
 * Numbers only: a cost written as a string ("0.04") is taken as well, as
 * some APIs quote decimals to keep them exact; anything else is skipped.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

#include "sluice/cost.h"
#include "sluice/jsonptr.h"

struct cost_sum {
    double sum;
    int n;
};

static void
on_cost_value(const json_t *v, void *arg)
{
    struct cost_sum *c = arg;
    double x;
    char *end;

    if (json_is_number(v)) {
        x = json_number_value(v);
    } else if (json_is_string(v)) {
        x = strtod(json_string_value(v), &end);
        if (end == json_string_value(v) || *end != '\0')
            return;
    } else {
        return;
    }
    /* a negative or non-finite "cost" is not one */
    if (!isfinite(x) || x < 0)
        return;
    c->sum += x;
    c->n++;
}

bool
cost_from_result(const char *result, const char *cost_pointer,
                 double token_price, double *cost)
{
    struct cost_sum c = {0};
    json_t *root;
    bool found = false;

    if (result == NULL || (cost_pointer == NULL && token_price <= 0))
        return false;
    root = json_loads(result, JSON_DECODE_ANY, NULL);
    if (root == NULL)
        return false;
    if (cost_pointer != NULL) {
        jsonptr_walk(root, cost_pointer, on_cost_value, &c);
        if (c.n > 0) {
            *cost = c.sum;
            found = true;
        }
    }
    if (!found && token_price > 0) {
        json_t *t =
            json_object_get(json_object_get(root, "usage"), "total_tokens");
        if (json_is_integer(t) && json_integer_value(t) >= 0) {
            *cost = (double)json_integer_value(t) * token_price;
            found = true;
        }
    }
    json_decref(root);
    return found;
}
