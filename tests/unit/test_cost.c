/*
 * cost: a job's cost from its result by cost_pointer, by tokens × price,
 * and what is not a cost.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sluice/cost.h"

static void
assert_cost(const char *result, const char *ptr, double price, double want)
{
    double c = -1;
    assert_true(cost_from_result(result, ptr, price, &c));
    assert_true(c > want - 1e-12 && c < want + 1e-12);
}

static void
assert_no_cost(const char *result, const char *ptr, double price)
{
    double c = -1;
    assert_false(cost_from_result(result, ptr, price, &c));
    assert_true(c == -1);
}

static void
test_pointer_reads_a_number_or_a_quoted_decimal(void **state)
{
    (void)state;
    assert_cost("{\"usage\":{\"cost\":0.25}}", "/usage/cost", 0, 0.25);
    assert_cost("{\"bill\":{\"usd\":\"0.04\"}}", "/bill/usd", 0, 0.04);
}

static void
test_pointer_with_star_sums_every_element(void **state)
{
    (void)state;
    assert_cost("{\"items\":[{\"cost\":1},{\"cost\":2.5},{\"x\":1}]}",
                "/items/*/cost", 0, 3.5);
}

static void
test_tokens_times_price_when_no_pointer_applies(void **state)
{
    (void)state;
    assert_cost("{\"usage\":{\"total_tokens\":1500}}", NULL, 0.000002, 0.003);
    /* the pointer reaches nothing: tokens still count */
    assert_cost("{\"usage\":{\"total_tokens\":10}}", "/cost", 0.5, 5.0);
    /* the pointer wins over tokens */
    assert_cost("{\"cost\":7,\"usage\":{\"total_tokens\":10}}", "/cost", 0.5,
                7.0);
}

static void
test_what_is_not_a_cost(void **state)
{
    (void)state;
    assert_no_cost("{\"usage\":{\"total_tokens\":10}}", NULL, 0);
    assert_no_cost("{\"cost\":-1}", "/cost", 0);
    assert_no_cost("{\"cost\":\"free\"}", "/cost", 0);
    assert_no_cost("{\"cost\":null}", "/cost", 0);
    assert_no_cost("not json", "/cost", 1.0);
    assert_no_cost(NULL, "/cost", 1.0);
    assert_no_cost("{\"usage\":{\"total_tokens\":\"10\"}}", NULL, 1.0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pointer_reads_a_number_or_a_quoted_decimal),
        cmocka_unit_test(test_pointer_with_star_sums_every_element),
        cmocka_unit_test(test_tokens_times_price_when_no_pointer_applies),
        cmocka_unit_test(test_what_is_not_a_cost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
