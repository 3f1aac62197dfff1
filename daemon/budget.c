/*
 * budget: spend-cap arithmetic (budget.h states the rule).
 *
 * Rejected: checking the spend after each cost arrives (the bill is then
 * already over the cap by a whole lane of requests), and a fixed guess of
 * a job's cost (providers price by model, size and length; the mean of
 * what this provider or batch really charged is the better guess, and one
 * job at a time until there is one costs a few seconds once).
 */
#include <math.h>

#include "sluice/budget.h"

/* Spend is compared with this slack, so that float sums of cents (0.1 +
 * 0.2 > 0.3) do not stop a budget one job early. */
#define BUDGET_EPSILON 1e-9

double
budget_expected(const struct budget *b)
{
    return b->costs > 0 ? b->cost_sum / (double)b->costs : 0.0;
}

long
budget_admit(const struct budget *b, long want)
{
    if (b->cap <= 0 || want <= 0)
        return want > 0 ? want : 0;
    double exp = budget_expected(b);
    if (b->costs == 0)
        return b->open == 0 && b->spent < b->cap - BUDGET_EPSILON ? 1 : 0;
    double room = b->cap - b->spent - (double)b->open * exp + BUDGET_EPSILON;
    if (exp <= 0)
        /* every cost so far was 0: free jobs fit while the cap is not
         * reached */
        return room > BUDGET_EPSILON ? want : 0;
    if (room < exp)
        return 0;
    double fit = floor(room / exp);
    return fit < (double)want ? (long)fit : want;
}

bool
budget_exhausted(const struct budget *b)
{
    if (b->cap <= 0)
        return false;
    if (b->spent >= b->cap - BUDGET_EPSILON)
        return true;
    double exp = budget_expected(b);
    return b->costs > 0 && b->spent + exp > b->cap + BUDGET_EPSILON;
}

double
budget_left(const struct budget *b)
{
    if (b->cap <= 0 || b->spent >= b->cap)
        return 0.0;
    return b->cap - b->spent;
}

void
budget_on_send(struct budget *b, long n)
{
    b->open += n;
}

void
budget_on_end(struct budget *b, bool has_cost, double cost)
{
    if (b->open > 0)
        b->open--;
    if (!has_cost)
        return;
    b->spent += cost;
    b->cost_sum += cost;
    b->costs++;
}
