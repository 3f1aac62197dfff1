/*
 * budget: the spend-cap rule on numbers alone: per-job reservations, the
 * stated run cost first, the running mean, one job at a time until a first
 * cost, and the stop within one job of the cap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sluice/budget.h"

#define NEAR(a, b) ((a) - (b) < 1e-9 && (b) - (a) < 1e-9)

static void
test_no_cap_admits_everything_and_is_never_exhausted(void **state)
{
    (void)state;
    struct budget b;
    budget_init(&b, 0);
    b.spent = 1e6;
    assert_int_equal(budget_admit(&b, 64, BUDGET_UNKNOWN), 64);
    assert_true(budget_fits(&b, BUDGET_UNKNOWN));
    assert_true(budget_fits(&b, 1e9));
    assert_false(budget_exhausted(&b));
    assert_true(budget_left(&b) == 0);
}

static void
test_one_job_at_a_time_until_a_first_cost_is_known(void **state)
{
    (void)state;
    struct budget b;
    budget_init(&b, 10);
    assert_true(budget_expected(&b, BUDGET_UNKNOWN) < 0);
    assert_int_equal(budget_admit(&b, 64, BUDGET_UNKNOWN), 1);
    assert_true(budget_fits(&b, BUDGET_UNKNOWN));
    budget_reserve(&b, 1, BUDGET_UNKNOWN);
    assert_int_equal(budget_admit(&b, 64, BUDGET_UNKNOWN), 0);
    assert_false(budget_fits(&b, BUDGET_UNKNOWN)); /* still unknown */
    assert_false(budget_exhausted(&b));
    budget_release(&b, 1, false, 0); /* ended without a cost */
    assert_int_equal(budget_admit(&b, 64, BUDGET_UNKNOWN), 1);
    budget_reserve(&b, 2, BUDGET_UNKNOWN);
    budget_release(&b, 2, true, 1.0);
    /* mean 1.0: 9 left, nothing open */
    assert_true(NEAR(budget_expected(&b, BUDGET_UNKNOWN), 1.0));
    assert_int_equal(budget_admit(&b, 64, BUDGET_UNKNOWN), 9);
    assert_int_equal(budget_admit(&b, 4, BUDGET_UNKNOWN), 4);
    budget_clear(&b);
}

static void
test_stated_cost_is_the_first_expected_cost(void **state)
{
    (void)state;
    /* 0.10 at a stated 0.04 a run: two go at once, before any cost is
     * recorded, and a third does not */
    struct budget b;
    budget_init(&b, 0.10);
    assert_true(NEAR(budget_expected(&b, 0.04), 0.04));
    assert_int_equal(budget_admit(&b, 16, 0.04), 2);
    assert_true(budget_fits(&b, 0.04));
    budget_reserve(&b, 1, 0.04);
    assert_true(budget_fits(&b, 0.04));
    budget_reserve(&b, 2, 0.04);
    assert_false(budget_fits(&b, 0.04));
    assert_int_equal(budget_admit(&b, 16, 0.04), 0);
    assert_true(NEAR(b.reserved, 0.08));
    assert_false(budget_exhausted(&b)); /* waiting for the open ones */
    budget_release(&b, 1, true, 0.04);
    budget_release(&b, 2, true, 0.04);
    assert_true(budget_exhausted(&b));
    assert_true(NEAR(budget_left(&b), 0.02));
    budget_clear(&b);
}

static void
test_stated_cost_wins_over_the_mean(void **state)
{
    (void)state;
    struct budget b;
    budget_init(&b, 1.0);
    budget_reserve(&b, 1, BUDGET_UNKNOWN);
    budget_release(&b, 1, true, 0.1); /* mean 0.1 */
    assert_true(NEAR(budget_expected(&b, 0.5), 0.5));
    assert_true(NEAR(budget_expected(&b, BUDGET_UNKNOWN), 0.1));
    /* 0.9 left: one job stated at 0.5 fits, a second does not, though
     * nine would at the mean */
    budget_reserve(&b, 2, budget_expected(&b, 0.5));
    assert_false(budget_fits(&b, budget_expected(&b, 0.5)));
    assert_true(budget_fits(&b, budget_expected(&b, BUDGET_UNKNOWN)));
    budget_clear(&b);
}

static void
test_each_job_holds_and_releases_its_own_reservation(void **state)
{
    (void)state;
    /* techniques of different prices under one cap */
    struct budget b;
    budget_init(&b, 1.0);
    budget_reserve(&b, 7, 0.6);
    budget_reserve(&b, 8, 0.3);
    assert_int_equal(b.open, 2);
    assert_true(NEAR(b.reserved, 0.9));
    assert_false(budget_fits(&b, 0.2));
    assert_true(budget_fits(&b, 0.1));
    /* the 0.3 job ends first, cheaper than stated: only its own
     * reservation goes, the 0.6 one stays held */
    budget_release(&b, 8, true, 0.25);
    assert_int_equal(b.open, 1);
    assert_true(NEAR(b.reserved, 0.6));
    assert_true(NEAR(b.spent, 0.25));
    assert_false(budget_fits(&b, 0.2)); /* 0.25 + 0.6 + 0.2 > 1 */
    assert_true(budget_fits(&b, 0.15));
    /* a job the budget never held gives nothing back */
    budget_release(&b, 99, false, 0);
    assert_true(NEAR(b.reserved, 0.6));
    budget_release(&b, 7, true, 0.6);
    assert_int_equal(b.open, 0);
    assert_true(b.reserved == 0);
    budget_clear(&b);
}

static void
test_a_cheaper_job_goes_where_a_dearer_one_does_not(void **state)
{
    (void)state;
    struct budget b;
    budget_init(&b, 1.0);
    b.spent = b.cost_sum = 0.8;
    b.costs = 2;
    /* the queue offers a 0.3 job: it would pass the cap even alone */
    assert_false(budget_fits(&b, 0.3));
    budget_refuse(&b, 0.3);
    assert_true(budget_exhausted(&b));
    /* a 0.1 job fits: the budget is not reached for it */
    assert_int_equal(budget_admit(&b, 8, 0.1), 2);
    assert_true(budget_fits(&b, 0.1));
    budget_reserve(&b, 3, 0.1);
    assert_false(budget_exhausted(&b));
    budget_clear(&b);
}

static void
test_a_job_of_unknown_cost_goes_alone_beside_stated_ones(void **state)
{
    (void)state;
    struct budget b;
    budget_init(&b, 10);
    budget_reserve(&b, 1, 0.5);
    /* no mean, nothing stated for it: not beside an open job */
    assert_false(budget_fits(&b, BUDGET_UNKNOWN));
    budget_release(&b, 1, false, 0);
    budget_reserve(&b, 2, BUDGET_UNKNOWN);
    /* while it is out, nobody can say what is left */
    assert_false(budget_fits(&b, 0.5));
    assert_int_equal(budget_admit(&b, 8, 0.5), 0);
    budget_release(&b, 2, true, 2.0);
    assert_int_equal(b.blind, 0);
    assert_int_equal(budget_admit(&b, 8, 0.5), 8);
    budget_clear(&b);
}

static void
test_jobs_out_before_a_restart_hold_the_mean(void **state)
{
    (void)state;
    struct budget b;
    budget_init(&b, 2.0);
    b.spent = b.cost_sum = 0.4;
    b.costs = 2; /* mean 0.2 */
    budget_reserve_anon(&b, 3);
    assert_int_equal(b.open, 3);
    assert_true(NEAR(b.reserved, 0.6));
    budget_reserve(&b, 50, 0.5);
    /* an end of a job this account never held is one of the three */
    budget_release(&b, 40, true, 0.2);
    assert_int_equal(b.anon, 2);
    assert_true(NEAR(b.reserved, 0.9));
    budget_release(&b, 50, true, 0.5);
    assert_true(NEAR(b.reserved, 0.4));
    budget_release(&b, 41, false, 0);
    budget_release(&b, 42, false, 0);
    assert_int_equal(b.open, 0);
    assert_true(b.reserved == 0);
    /* with no mean, jobs out are of unknown cost: one at a time */
    struct budget c;
    budget_init(&c, 2.0);
    budget_reserve_anon(&c, 1);
    assert_false(budget_fits(&c, BUDGET_UNKNOWN));
    assert_false(budget_fits(&c, 0.1));
    budget_release(&c, 5, true, 0.3);
    assert_true(budget_fits(&c, 0.1));
    budget_clear(&b);
    budget_clear(&c);
}

static void
test_thousands_of_reservations_released_in_any_order(void **state)
{
    (void)state;
    /* async runs wait by the thousand: every one is found again */
    struct budget b;
    budget_init(&b, 1e9);
    double sum = 0;
    for (int64_t id = 1; id <= 3000; id++) {
        budget_reserve(&b, id * 17, (double)(id % 7));
        sum += (double)(id % 7);
    }
    assert_int_equal(b.open, 3000);
    assert_true(NEAR(b.reserved, sum));
    /* every third first, then the rest backwards */
    for (int64_t id = 3; id <= 3000; id += 3) {
        budget_release(&b, id * 17, false, 0);
        sum -= (double)(id % 7);
    }
    assert_int_equal(b.open, 2000);
    assert_true(NEAR(b.reserved, sum));
    for (int64_t id = 3000; id >= 1; id--) {
        if (id % 3 == 0)
            continue;
        budget_release(&b, id * 17, false, 0);
        sum -= (double)(id % 7);
        assert_true(NEAR(b.reserved, sum) || b.open == 0);
    }
    assert_int_equal(b.open, 0);
    assert_int_equal((long)b.nholds, 0);
    assert_true(b.reserved == 0);
    budget_clear(&b);
}

static void
test_stops_within_one_job_of_the_cap(void **state)
{
    (void)state;
    /* FLORA's 0.04 a run under a 0.10 cap, no cost stated: the first
     * alone, then the mean: two runs, then stop */
    struct budget b;
    budget_init(&b, 0.10);
    int sent = 0;
    int64_t id = 1;
    for (int round = 0; round < 10; round++) {
        long n = budget_admit(&b, 16, BUDGET_UNKNOWN);
        int64_t first = id;
        for (long i = 0; i < n; i++) {
            double e = budget_expected(&b, BUDGET_UNKNOWN);
            if (!budget_fits(&b, e))
                break;
            budget_reserve(&b, id++, e);
            sent++;
        }
        for (int64_t j = first; j < id; j++)
            budget_release(&b, j, true, 0.04);
    }
    assert_int_equal(sent, 2);
    assert_true(b.spent <= b.cap);
    assert_true(b.spent + 0.04 > b.cap);
    assert_true(budget_exhausted(&b));
    assert_true(budget_left(&b) > 0.0199 && budget_left(&b) < 0.0201);
    budget_clear(&b);
}

static void
test_float_sums_of_cents_do_not_stop_a_job_early(void **state)
{
    (void)state;
    /* 0.1 + 0.2 is 0.30000000000000004 in binary */
    struct budget b;
    budget_init(&b, 0.3);
    budget_reserve(&b, 1, 0.1);
    budget_reserve(&b, 2, 0.1);
    assert_true(budget_fits(&b, 0.1));
    budget_reserve(&b, 3, 0.1);
    assert_false(budget_fits(&b, 0.1));
    for (int64_t id = 1; id <= 3; id++)
        budget_release(&b, id, true, 0.1);
    assert_int_equal(budget_admit(&b, 5, 0.1), 0);
    assert_true(budget_exhausted(&b));
    budget_clear(&b);
}

static void
test_raised_cap_admits_again(void **state)
{
    (void)state;
    struct budget b;
    budget_init(&b, 1);
    b.spent = b.cost_sum = 1;
    b.costs = 2;
    assert_true(budget_exhausted(&b));
    b.cap = 3; /* a reload raised it: 2 left at 0.5 */
    assert_false(budget_exhausted(&b));
    assert_int_equal(budget_admit(&b, 10, BUDGET_UNKNOWN), 4);
}

static void
test_free_jobs_run_until_the_cap(void **state)
{
    (void)state;
    struct budget b;
    budget_init(&b, 1);
    b.costs = 3;
    assert_int_equal(budget_admit(&b, 8, BUDGET_UNKNOWN), 8);
    assert_true(budget_fits(&b, 0));
    assert_false(budget_exhausted(&b));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_cap_admits_everything_and_is_never_exhausted),
        cmocka_unit_test(test_one_job_at_a_time_until_a_first_cost_is_known),
        cmocka_unit_test(test_stated_cost_is_the_first_expected_cost),
        cmocka_unit_test(test_stated_cost_wins_over_the_mean),
        cmocka_unit_test(test_each_job_holds_and_releases_its_own_reservation),
        cmocka_unit_test(test_a_cheaper_job_goes_where_a_dearer_one_does_not),
        cmocka_unit_test(
            test_a_job_of_unknown_cost_goes_alone_beside_stated_ones),
        cmocka_unit_test(test_jobs_out_before_a_restart_hold_the_mean),
        cmocka_unit_test(test_thousands_of_reservations_released_in_any_order),
        cmocka_unit_test(test_stops_within_one_job_of_the_cap),
        cmocka_unit_test(test_float_sums_of_cents_do_not_stop_a_job_early),
        cmocka_unit_test(test_raised_cap_admits_again),
        cmocka_unit_test(test_free_jobs_run_until_the_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
