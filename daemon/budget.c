/*
 * budget: spend-cap arithmetic (budget.h states the rule).
 *
 * Each job sent holds its own reservation, kept by job id in an
 * open-addressing table (linear probing, deletion by backward shift): an
 * async provider may have thousands of runs waiting, and every end looks
 * its job up. The sum of the reservations is kept beside it, and set to 0
 * exactly whenever nothing is open, so float drift never accumulates.
 *
 * Rejected: checking the spend after each cost arrives (the bill is then
 * already over the cap by a whole lane of requests); one expected cost for
 * every job of a provider (a provider prices per technique or model: a
 * job of a 0.40 technique must not reserve what a 0.04 one does); and a
 * fixed guess of a job's cost where the provider states none (the mean of
 * what this provider or batch really charged is the better guess, and one
 * job at a time until there is one costs a few seconds once).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/budget.h"
#include "sluice/xmalloc.h"

/* Spend is compared with this slack, so that float sums of cents (0.1 +
 * 0.2 > 0.3) do not stop a budget one job early. */
#define BUDGET_EPSILON 1e-9
/* The table's first size; it doubles past half full (short probes). */
#define BUDGET_HOLDS_MIN 16

void
budget_init(struct budget *b, double cap)
{
    memset(b, 0, sizeof(*b));
    b->cap = cap;
    b->next = BUDGET_UNKNOWN;
}

void
budget_clear(struct budget *b)
{
    free(b->holds);
    b->holds = NULL;
    b->nholds = b->capholds = 0;
}

double
budget_mean(const struct budget *b)
{
    return b->costs > 0 ? b->cost_sum / (double)b->costs : BUDGET_UNKNOWN;
}

double
budget_expected(const struct budget *b, double stated)
{
    return stated >= 0 ? stated : budget_mean(b);
}

long
budget_admit(const struct budget *b, long want, double least)
{
    if (b->cap <= 0 || want <= 0)
        return want > 0 ? want : 0;
    if (b->blind > 0 || b->spent >= b->cap - BUDGET_EPSILON)
        return 0;
    double e = budget_mean(b);
    if (least >= 0 && (e < 0 || least < e))
        e = least;
    if (e < 0)
        return b->open == 0 ? 1 : 0;
    double room = b->cap - b->spent - b->reserved + BUDGET_EPSILON;
    if (e == 0)
        /* free jobs fit while the cap is not reached */
        return room > BUDGET_EPSILON ? want : 0;
    if (room < e)
        return 0;
    double fit = floor(room / e);
    return fit < (double)want ? (long)fit : want;
}

bool
budget_fits(const struct budget *b, double expected)
{
    if (b->cap <= 0)
        return true;
    if (b->blind > 0 || b->spent >= b->cap - BUDGET_EPSILON)
        return false;
    if (expected < 0)
        return b->open == 0;
    return b->spent + b->reserved + expected <= b->cap + BUDGET_EPSILON;
}

bool
budget_exhausted(const struct budget *b)
{
    if (b->cap <= 0)
        return false;
    if (b->spent >= b->cap - BUDGET_EPSILON)
        return true;
    double e = b->next >= 0 ? b->next : budget_mean(b);
    return e >= 0 && b->spent + e > b->cap + BUDGET_EPSILON;
}

double
budget_left(const struct budget *b)
{
    if (b->cap <= 0 || b->spent >= b->cap)
        return 0.0;
    return b->cap - b->spent;
}

/* --- the table of reservations ------------------------------------------- */

static size_t
hold_slot(int64_t job, size_t cap)
{
    /* Fibonacci hashing: ids are consecutive, the product spreads them */
    return (size_t)(((uint64_t)job * 11400714819323198485ULL) >> 32) &
           (cap - 1);
}

/* The slot holding job, or the empty slot where it would go. */
static size_t
hold_find(const struct budget *b, int64_t job)
{
    size_t i = hold_slot(job, b->capholds);
    while (b->holds[i].job != 0 && b->holds[i].job != job)
        i = (i + 1) & (b->capholds - 1);
    return i;
}

static void
hold_grow(struct budget *b)
{
    struct budget_hold *old = b->holds;
    size_t oldcap = b->capholds;

    b->capholds = oldcap ? 2 * oldcap : BUDGET_HOLDS_MIN;
    b->holds = xcalloc(b->capholds, sizeof(*b->holds));
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].job != 0)
            b->holds[hold_find(b, old[i].job)] = old[i];
    free(old);
}

/* Removes slot i, shifting later entries of its probe run back. */
static void
hold_remove(struct budget *b, size_t i)
{
    size_t mask = b->capholds - 1;
    size_t j = i;

    b->holds[i].job = 0;
    for (;;) {
        j = (j + 1) & mask;
        if (b->holds[j].job == 0)
            break;
        size_t home = hold_slot(b->holds[j].job, b->capholds);
        /* j's entry may move to i when i lies on its way from home */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            b->holds[i] = b->holds[j];
            b->holds[j].job = 0;
            i = j;
        }
    }
    b->nholds--;
}

static void
account_open(struct budget *b, double amount, bool blind)
{
    b->open++;
    b->reserved += amount;
    if (blind)
        b->blind++;
}

static void
account_close(struct budget *b, double amount, bool blind)
{
    if (b->open > 0)
        b->open--;
    if (blind && b->blind > 0)
        b->blind--;
    b->reserved = b->open > 0 ? b->reserved - amount : 0.0;
    if (b->reserved < 0)
        b->reserved = 0.0;
}

void
budget_reserve(struct budget *b, int64_t job, double expected)
{
    bool blind = expected < 0;
    double amount = blind ? 0.0 : expected;

    if (!blind)
        b->next = expected;
    if (2 * (b->nholds + 1) > b->capholds)
        hold_grow(b);
    size_t i = hold_find(b, job);
    if (b->holds[i].job == job) /* sent again while held: keep one */
        account_close(b, b->holds[i].amount, b->holds[i].blind);
    else
        b->nholds++;
    b->holds[i] = (struct budget_hold){job, amount, blind};
    account_open(b, amount, blind);
}

void
budget_refuse(struct budget *b, double expected)
{
    if (expected >= 0)
        b->next = expected;
}

void
budget_reserve_anon(struct budget *b, long n)
{
    double mean = budget_mean(b);

    if (n <= 0)
        return;
    b->anon_each = b->anon > 0 ? b->anon_each : mean;
    for (long i = 0; i < n; i++)
        account_open(b, b->anon_each < 0 ? 0.0 : b->anon_each,
                     b->anon_each < 0);
    b->anon += n;
}

void
budget_release(struct budget *b, int64_t job, bool has_cost, double cost)
{
    size_t i;

    if (b->capholds > 0 && b->holds[i = hold_find(b, job)].job == job) {
        account_close(b, b->holds[i].amount, b->holds[i].blind);
        hold_remove(b, i);
    } else if (b->anon > 0) {
        b->anon--;
        account_close(b, b->anon_each < 0 ? 0.0 : b->anon_each,
                      b->anon_each < 0);
    }
    if (!has_cost)
        return;
    b->spent += cost;
    b->cost_sum += cost;
    b->costs++;
}
