/*
 * permit: the grant of a provider's shared slots and rate tokens, pure
 * (clock as a parameter), then through the store with two daemons on one
 * real SQLite database.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/permit.h"
#include "sluice/store.h"

/* 2023-11-14T22:13:20Z: any fixed "now" will do. */
#define T0 INT64_C(1700000000000)
#define DAY INT64_C(86400000)

/* --- the grant ------------------------------------------------------------ */

static void
test_nothing_shared_grants_all(void **state)
{
    (void)state;
    struct permit_pool p = {0};
    int64_t wake = -1;
    assert_int_equal(permit_grant(&p, 3, 40, T0, &wake), 40);
    assert_int_equal(wake, 0);
}

static void
test_slots_of_every_daemon_stay_within_the_cap(void **state)
{
    (void)state;
    struct permit_pool p = {.others = 4, .cap = 6};
    int64_t wake = 0;
    /* 4 held by others, 1 by us: one more */
    assert_int_equal(permit_grant(&p, 1, 5, T0, &wake), 1);
    assert_true(wake > T0 && wake <= T0 + 50);
    p.others = 6;
    assert_int_equal(permit_grant(&p, 0, 5, T0, &wake), 0);
    /* a cap lowered under what is out grants nothing, takes nothing back */
    p.others = 2;
    p.cap = 3;
    assert_int_equal(permit_grant(&p, 4, 2, T0, &wake), 0);
    p.cap = 10;
    assert_int_equal(permit_grant(&p, 4, 2, T0, &wake), 2);
    assert_int_equal(wake, 0);
}

/* While another daemon waits, no one takes beyond its share: the daemon
 * whose answers come first cannot keep every slot. */
static void
test_a_waiting_daemon_limits_the_others_to_their_share(void **state)
{
    (void)state;
    int64_t wake;
    /* one other daemon holds 2 and waits for more; 6 shared: 3 each */
    struct permit_pool p = {.others = 2, .cap = 6, .active = 1,
                            .waiting = 1};
    assert_int_equal(permit_grant(&p, 0, 6, T0, &wake), 3);
    assert_int_equal(permit_grant(&p, 3, 6, T0, &wake), 0);
    /* nobody waits: what is free is ours */
    p.waiting = 0;
    assert_int_equal(permit_grant(&p, 0, 6, T0, &wake), 4);
    /* three others, 10 shared: a share is 3 (rounded up) */
    p = (struct permit_pool){.others = 3, .cap = 10, .active = 3,
                             .waiting = 2};
    assert_int_equal(permit_grant(&p, 1, 9, T0, &wake), 2);
}

static void
test_the_bucket_starts_full_and_refills_at_the_rate(void **state)
{
    (void)state;
    struct permit_pool p = {.rate = 200};
    int64_t wake = 0;

    /* a tenth of a second of 200/s: 20, then the next token in 5 ms */
    assert_int_equal(permit_grant(&p, 0, 30, T0, &wake), 20);
    assert_int_equal(wake, T0 + 5);
    assert_int_equal(permit_grant(&p, 0, 30, T0 + 4, &wake), 0);
    assert_int_equal(wake, T0 + 5);
    /* 50 ms later: 10 tokens (and the 0.8 left of the last one) */
    assert_int_equal(permit_grant(&p, 0, 30, T0 + 54, &wake), 10);
    assert_int_equal(wake, T0 + 55);
    /* an idle second refills one burst, no more */
    assert_int_equal(permit_grant(&p, 0, 30, T0 + 1054, &wake), 20);
}

static void
test_a_clock_step_lets_at_most_one_burst_through(void **state)
{
    (void)state;
    struct permit_pool p = {.rate = 100};
    int64_t wake = 0;

    assert_int_equal(permit_grant(&p, 0, 10, T0, &wake), 10);
    /* back an hour: refills nothing, and the bucket's time stays */
    assert_int_equal(permit_grant(&p, 0, 10, T0 - 3600000, &wake), 0);
    assert_int_equal(p.tokens_at, T0);
    assert_int_equal(permit_grant(&p, 0, 10, T0 + 30, &wake), 3);
    /* a day ahead: one burst */
    assert_int_equal(permit_grant(&p, 0, 100, T0 + DAY, &wake), 10);
    assert_int_equal(permit_grant(&p, 0, 100, T0 + DAY, &wake), 0);
}

static void
test_unused_tokens_go_back_up_to_a_burst(void **state)
{
    (void)state;
    struct permit_pool p = {.rate = 100};
    int64_t wake;

    assert_false(permit_return(&p, 3)); /* no bucket yet */
    assert_int_equal(permit_grant(&p, 0, 8, T0, &wake), 8);
    assert_true(permit_return(&p, 5));
    assert_int_equal(permit_grant(&p, 0, 20, T0, &wake), 7);
    assert_true(permit_return(&p, 50));
    assert_int_equal(permit_grant(&p, 0, 20, T0, &wake), 10);
}

static void
test_burst_is_a_tenth_of_a_second_and_at_least_one(void **state)
{
    (void)state;
    assert_true(permit_burst(200) == 20.0);
    assert_true(permit_burst(0.5) == 1.0);
}

/* --- through the store: two daemons on one database ---------------------- */

struct fixture {
    char dir[64];
    char path[96];
    struct store *a, *b;
};

static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_permit.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/queue.db", f->dir);
    assert_int_equal(store_open(f->path, &f->a), 0);
    assert_int_equal(store_open(f->path, &f->b), 0);
    struct daemon_row da = {.owner = "A", .host = "h", .pid = 1,
                            .started_at = T0};
    struct daemon_row db = {.owner = "B", .host = "h", .pid = 1,
                            .started_at = T0};
    assert_int_equal(store_daemon_register(f->a, &da), 0);
    assert_int_equal(store_daemon_register(f->b, &db), 0);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];
    store_close(f->a);
    store_close(f->b);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static int
take(struct store *s, const char *owner, int cap, double rate, int in_flight,
     int want, int64_t now)
{
    struct permit_view v = {.cap = cap, .rate = rate};
    int granted = -1;
    int64_t wake;
    assert_int_equal(store_permit_take(s, "p", owner, &v, in_flight, want,
                                       now, &granted, &wake),
                     0);
    return granted;
}

static void
test_two_daemons_share_one_cap(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(take(f->a, "A", 6, 0, 0, 6, T0), 6);
    assert_int_equal(take(f->b, "B", 6, 0, 0, 6, T0), 0);
    /* A's requests finish: 2 still out */
    assert_int_equal(store_permit_put(f->a, "p", "A", 2, 0), 0);
    assert_int_equal(take(f->b, "B", 6, 0, 0, 6, T0), 4);
    /* A takes again with 2 out: the 4 are B's */
    assert_int_equal(take(f->a, "A", 6, 0, 2, 6, T0), 0);
}

static void
test_the_lowest_cap_of_the_daemons_is_the_pools(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(take(f->a, "A", 10, 0, 0, 1, T0), 1);
    assert_int_equal(take(f->b, "B", 4, 0, 0, 10, T0), 3);
    assert_int_equal(take(f->a, "A", 10, 0, 1, 10, T0), 0);
}

static void
test_two_daemons_draw_one_bucket(void **state)
{
    struct fixture *f = *state;

    /* 100/s: a burst of 10, shared */
    assert_int_equal(take(f->a, "A", 0, 100, 0, 8, T0), 8);
    assert_int_equal(take(f->b, "B", 0, 100, 0, 8, T0), 2);
    assert_int_equal(take(f->b, "B", 0, 100, 2, 8, T0 + 10), 1);
    /* tokens granted but not used go back */
    assert_int_equal(store_permit_put(f->a, "p", "A", 3, 5), 0);
    assert_int_equal(take(f->b, "B", 0, 100, 3, 8, T0 + 10), 5);
}

static void
test_a_short_take_makes_the_other_daemon_keep_to_its_share(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(take(f->a, "A", 6, 0, 0, 6, T0), 6);
    assert_int_equal(take(f->b, "B", 6, 0, 0, 6, T0), 0); /* B waits */
    /* A's answers come first: it may keep 3, no more */
    assert_int_equal(store_permit_put(f->a, "p", "A", 2, 0), 0);
    assert_int_equal(take(f->a, "A", 6, 0, 2, 4, T0), 1);
    assert_int_equal(take(f->b, "B", 6, 0, 0, 6, T0), 3);
}

static void
test_a_dead_daemons_permits_return_with_its_row(void **state)
{
    struct fixture *f = *state;
    long n;

    assert_int_equal(take(f->a, "A", 6, 0, 0, 6, T0), 6);
    assert_int_equal(take(f->b, "B", 6, 0, 0, 6, T0), 0);
    assert_int_equal(store_daemon_reap(f->b, "A", 0, T0, &n), 0);
    assert_int_equal(take(f->b, "B", 6, 0, 0, 6, T0), 6);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_shared_grants_all),
        cmocka_unit_test(test_slots_of_every_daemon_stay_within_the_cap),
        cmocka_unit_test(
            test_a_waiting_daemon_limits_the_others_to_their_share),
        cmocka_unit_test(test_the_bucket_starts_full_and_refills_at_the_rate),
        cmocka_unit_test(test_a_clock_step_lets_at_most_one_burst_through),
        cmocka_unit_test(test_unused_tokens_go_back_up_to_a_burst),
        cmocka_unit_test(test_burst_is_a_tenth_of_a_second_and_at_least_one),
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_two_daemons_share_one_cap),
        T(test_the_lowest_cap_of_the_daemons_is_the_pools),
        T(test_two_daemons_draw_one_bucket),
        T(test_a_short_take_makes_the_other_daemon_keep_to_its_share),
        T(test_a_dead_daemons_permits_return_with_its_row),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
