/*
 * budget: the spend-cap rule on numbers alone: reservations, the running
 * mean, one job at a time until a first cost, and the stop within one job
 * of the cap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sluice/budget.h"

static void
test_no_cap_admits_everything_and_is_never_exhausted(void **state)
{
    (void)state;
    struct budget b = {.spent = 1e6};
    assert_int_equal(budget_admit(&b, 64), 64);
    assert_false(budget_exhausted(&b));
    assert_true(budget_left(&b) == 0);
}

static void
test_one_job_at_a_time_until_a_first_cost_is_known(void **state)
{
    (void)state;
    struct budget b = {.cap = 10};
    assert_int_equal(budget_admit(&b, 64), 1);
    budget_on_send(&b, 1);
    assert_int_equal(budget_admit(&b, 64), 0); /* still unknown */
    assert_false(budget_exhausted(&b));
    budget_on_end(&b, false, 0); /* ended without a cost: still unknown */
    assert_int_equal(budget_admit(&b, 64), 1);
    budget_on_send(&b, 1);
    budget_on_end(&b, true, 1.0);
    /* mean 1.0: 9 left, nothing open */
    assert_int_equal(budget_admit(&b, 64), 9);
    assert_int_equal(budget_admit(&b, 4), 4);
}

static void
test_reservations_of_open_jobs_count_against_the_cap(void **state)
{
    (void)state;
    struct budget b = {.cap = 1.0, .spent = 0.2, .cost_sum = 0.2, .costs = 1};
    /* 0.8 left at 0.2 each: 4 */
    assert_int_equal(budget_admit(&b, 10), 4);
    budget_on_send(&b, 3);
    assert_int_equal(budget_admit(&b, 10), 1);
    budget_on_send(&b, 1);
    assert_int_equal(budget_admit(&b, 10), 0);
    assert_false(budget_exhausted(&b)); /* waiting for the open ones */
    for (int i = 0; i < 4; i++)
        budget_on_end(&b, true, 0.2);
    assert_true(b.spent > 0.999 && b.spent < 1.001);
    assert_int_equal(b.open, 0);
    assert_true(budget_exhausted(&b));
    assert_int_equal(budget_admit(&b, 10), 0);
}

static void
test_stops_within_one_job_of_the_cap(void **state)
{
    (void)state;
    /* FLORA's 0.04 a run under a 0.10 cap: two runs, then stop */
    struct budget b = {.cap = 0.10};
    int sent = 0;
    for (int round = 0; round < 10; round++) {
        long n = budget_admit(&b, 16);
        budget_on_send(&b, n);
        sent += (int)n;
        for (long i = 0; i < n; i++)
            budget_on_end(&b, true, 0.04);
    }
    assert_int_equal(sent, 2);
    assert_true(b.spent <= b.cap);
    assert_true(b.spent + 0.04 > b.cap);
    assert_true(budget_exhausted(&b));
    assert_true(budget_left(&b) > 0.0199 && budget_left(&b) < 0.0201);
}

static void
test_float_sums_of_cents_do_not_stop_a_job_early(void **state)
{
    (void)state;
    /* 0.1 + 0.2 is 0.30000000000000004 in binary */
    struct budget b = {.cap = 0.3};
    budget_on_send(&b, 1);
    budget_on_end(&b, true, 0.1);
    assert_int_equal(budget_admit(&b, 5), 2);
    budget_on_send(&b, 1);
    budget_on_end(&b, true, 0.1);
    budget_on_send(&b, 1);
    budget_on_end(&b, true, 0.1);
    assert_int_equal(budget_admit(&b, 5), 0);
    assert_true(budget_exhausted(&b));
}

static void
test_raised_cap_admits_again(void **state)
{
    (void)state;
    struct budget b = {.cap = 1, .spent = 1, .cost_sum = 1, .costs = 2};
    assert_true(budget_exhausted(&b));
    b.cap = 3; /* a reload raised it: 2 left at 0.5 */
    assert_false(budget_exhausted(&b));
    assert_int_equal(budget_admit(&b, 10), 4);
}

static void
test_free_jobs_run_until_the_cap(void **state)
{
    (void)state;
    struct budget b = {.cap = 1, .costs = 3};
    assert_int_equal(budget_admit(&b, 8), 8);
    assert_false(budget_exhausted(&b));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_cap_admits_everything_and_is_never_exhausted),
        cmocka_unit_test(test_one_job_at_a_time_until_a_first_cost_is_known),
        cmocka_unit_test(test_reservations_of_open_jobs_count_against_the_cap),
        cmocka_unit_test(test_stops_within_one_job_of_the_cap),
        cmocka_unit_test(test_float_sums_of_cents_do_not_stop_a_job_early),
        cmocka_unit_test(test_raised_cap_admits_again),
        cmocka_unit_test(test_free_jobs_run_until_the_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
