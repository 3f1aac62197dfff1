/*
 * cost: what one job cost, read from its result when the dialect did not
 * say (docs/design.md §13): at the provider's cost_pointer, else the result's
 * usage.total_tokens times its token_price. FLORA's charged_cost is read
 * by its dialect and comes first.
 */
#ifndef SLUICE_COST_H
#define SLUICE_COST_H

#include <stdbool.h>

/* The cost of a job whose success body is result (JSON text): the sum of
 * the numbers cost_pointer reaches (a JSON pointer, "*" for every array
 * element; NULL for none), else usage.total_tokens × token_price (0 for
 * none). Returns true and *cost when either applies, false (and *cost
 * untouched) when result says nothing it can use. */
bool cost_from_result(const char *result, const char *cost_pointer,
                      double token_price, double *cost);

#endif
