/*
 * retry: every branch of retry_decide and the bounds of the full-jitter
 * backoff, with an injected clock and random draw.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sluice/outcome.h"
#include "sluice/retry.h"

#define NOW 1700000000000LL

static const struct retry_policy policy = {
    .max_attempts = 5,
    .max_deferrals = 50,
    .base_ms = 1000,
    .cap_ms = 60000,
};

static struct outcome
failure(enum err_class cls, enum verdict v, int64_t hint)
{
    struct outcome o;
    outcome_init(&o);
    outcome_fail(&o, cls, "code", "message");
    o.verdict = v;
    o.hints.retry_at_ms = hint;
    return o;
}

static void
test_auth_and_balance_hold_the_job(void **state)
{
    (void)state;
    static const enum err_class held[] = {ERR_AUTH, ERR_INSUFFICIENT_BALANCE};
    for (size_t i = 0; i < 2; i++) {
        /* Even at the attempt cap, and even if the provider says retry. */
        struct outcome o = failure(held[i], VERDICT_RETRY, 0);
        struct retry_decision d = retry_decide(&policy, &o, 5, 0, NOW, 0.5);
        assert_int_equal(d.action, RETRY_HOLD);
        assert_non_null(d.why);
    }
}

static void
test_429_defers_without_using_attempts(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_RATE_LIMITED, VERDICT_DEFAULT, 0);
    /* attempts already at the cap: a throttle still defers */
    struct retry_decision d = retry_decide(&policy, &o, 5, 3, NOW, 0.5);

    assert_int_equal(d.action, RETRY_DEFER);
    /* backoff for deferral 4: 0.5 × min(60 s, 1 s × 2^3) */
    assert_int_equal(d.run_after_ms, NOW + 4000);
}

static void
test_429_with_hint_defers_to_the_hint(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_RATE_LIMITED, VERDICT_DEFAULT, NOW + 30000);
    struct retry_decision d = retry_decide(&policy, &o, 1, 0, NOW, 0.99);

    assert_int_equal(d.action, RETRY_DEFER);
    assert_int_equal(d.run_after_ms, NOW + 30000);
}

/* A hint decades ahead (Retry-After: 999999999) would park the job for
 * good: --drain would never end. A day at most, deferred or retried. */
static void
test_far_hint_schedules_a_day_ahead_at_most(void **state)
{
    (void)state;
    int64_t far = NOW + 999999999000LL;
    struct outcome o = failure(ERR_RATE_LIMITED, VERDICT_DEFAULT, far);
    struct retry_decision d = retry_decide(&policy, &o, 1, 0, NOW, 0.5);

    assert_int_equal(d.action, RETRY_DEFER);
    assert_int_equal(d.run_after_ms, NOW + HINT_CAP_MS);
    o = failure(ERR_SERVER_ERROR, VERDICT_DEFAULT, far);
    d = retry_decide(&policy, &o, 1, 0, NOW, 0.5);
    assert_int_equal(d.action, RETRY_AGAIN);
    assert_int_equal(d.run_after_ms, NOW + HINT_CAP_MS);
}

static void
test_hint_in_the_past_defers_to_now(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_RATE_LIMITED, VERDICT_DEFAULT, NOW - 5000);
    struct retry_decision d = retry_decide(&policy, &o, 1, 0, NOW, 0.5);

    assert_int_equal(d.action, RETRY_DEFER);
    assert_int_equal(d.run_after_ms, NOW);
}

static void
test_503_with_hint_is_a_deferral(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_UNAVAILABLE, VERDICT_DEFAULT, NOW + 7000);
    struct retry_decision d = retry_decide(&policy, &o, 5, 0, NOW, 0.5);

    assert_int_equal(d.action, RETRY_DEFER);
    assert_int_equal(d.run_after_ms, NOW + 7000);
}

static void
test_503_without_hint_is_charged(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_UNAVAILABLE, VERDICT_DEFAULT, 0);
    struct retry_decision d = retry_decide(&policy, &o, 2, 0, NOW, 0.5);

    assert_int_equal(d.action, RETRY_AGAIN);
    assert_int_equal(d.run_after_ms, NOW + 1000); /* 0.5 × 1 s × 2^1 */

    d = retry_decide(&policy, &o, 5, 0, NOW, 0.5);
    assert_int_equal(d.action, RETRY_GIVE_UP);
    assert_string_equal(d.why, "attempts exhausted");
}

static void
test_deferrals_exhausted_gives_up(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_RATE_LIMITED, VERDICT_DEFAULT, NOW + 1000);
    struct retry_decision d = retry_decide(&policy, &o, 1, 49, NOW, 0.5);
    assert_int_equal(d.action, RETRY_DEFER);

    d = retry_decide(&policy, &o, 1, 50, NOW, 0.5);
    assert_int_equal(d.action, RETRY_GIVE_UP);
    assert_string_equal(d.why, "deferrals exhausted");
}

static void
test_explicit_no_retry_beats_a_throttle(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_RATE_LIMITED, VERDICT_NO_RETRY, NOW + 1000);
    struct retry_decision d = retry_decide(&policy, &o, 1, 0, NOW, 0.5);

    assert_int_equal(d.action, RETRY_GIVE_UP);
    assert_string_equal(d.why, "not retryable");
}

static void
test_retryable_failure_retries_until_max_attempts(void **state)
{
    (void)state;
    static const enum err_class retried[] = {
        ERR_SERVER_ERROR,
        ERR_TIMEOUT,
        ERR_NETWORK,
        ERR_RUN_FAILED,
    };
    for (size_t i = 0; i < sizeof(retried) / sizeof(retried[0]); i++) {
        struct outcome o = failure(retried[i], VERDICT_DEFAULT, 0);
        struct retry_decision d = retry_decide(&policy, &o, 4, 0, NOW, 0.5);
        assert_int_equal(d.action, RETRY_AGAIN);
        assert_int_equal(d.run_after_ms, NOW + 4000); /* 0.5 × 8 s */

        d = retry_decide(&policy, &o, 5, 0, NOW, 0.5);
        assert_int_equal(d.action, RETRY_GIVE_UP);
        assert_string_equal(d.why, "attempts exhausted");
    }
}

static void
test_retry_is_never_before_the_hint(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_SERVER_ERROR, VERDICT_DEFAULT, NOW + 45000);
    struct retry_decision d = retry_decide(&policy, &o, 1, 0, NOW, 0.99);

    assert_int_equal(d.action, RETRY_AGAIN);
    assert_int_equal(d.run_after_ms, NOW + 45000);

    /* A backoff later than the hint wins. */
    o.hints.retry_at_ms = NOW + 10;
    d = retry_decide(&policy, &o, 3, 0, NOW, 0.5);
    assert_int_equal(d.run_after_ms, NOW + 2000);
}

static void
test_protocol_errors_get_three_attempts(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_PROTOCOL, VERDICT_DEFAULT, 0);
    struct retry_decision d = retry_decide(&policy, &o, 2, 0, NOW, 0.5);
    assert_int_equal(d.action, RETRY_AGAIN);

    d = retry_decide(&policy, &o, 3, 0, NOW, 0.5);
    assert_int_equal(d.action, RETRY_GIVE_UP);
}

static void
test_terminal_classes_give_up(void **state)
{
    (void)state;
    static const enum err_class terminal[] = {
        ERR_INVALID_REQUEST,   ERR_PERMISSION,           ERR_NOT_FOUND,
        ERR_CONFLICT,          ERR_IDEMPOTENCY_CONFLICT, ERR_SAFETY_BLOCKED,
        ERR_INPUT_UNREACHABLE,
    };
    for (size_t i = 0; i < sizeof(terminal) / sizeof(terminal[0]); i++) {
        struct outcome o = failure(terminal[i], VERDICT_DEFAULT, NOW + 1);
        struct retry_decision d = retry_decide(&policy, &o, 1, 0, NOW, 0.5);
        assert_int_equal(d.action, RETRY_GIVE_UP);
        assert_string_equal(d.why, "not retryable");
    }
}

static void
test_explicit_verdict_overrides_class(void **state)
{
    (void)state;
    struct outcome o = failure(ERR_INVALID_REQUEST, VERDICT_RETRY, 0);
    struct retry_decision d = retry_decide(&policy, &o, 1, 0, NOW, 0.0);
    assert_int_equal(d.action, RETRY_AGAIN);
    assert_int_equal(d.run_after_ms, NOW);

    o = failure(ERR_SERVER_ERROR, VERDICT_NO_RETRY, 0);
    d = retry_decide(&policy, &o, 1, 0, NOW, 0.5);
    assert_int_equal(d.action, RETRY_GIVE_UP);
}

static void
test_backoff_bounds_with_zero_and_near_one(void **state)
{
    (void)state;
    for (int n = 1; n <= 8; n++) {
        int64_t ceiling = 1000LL << (n - 1);
        if (ceiling > 60000)
            ceiling = 60000;
        assert_int_equal(retry_backoff_ms(&policy, n, 0.0), 0);
        int64_t high = retry_backoff_ms(&policy, n, 0.999999);
        assert_true(high < ceiling);
        assert_true(high >= ceiling - 1);
        /* Contract says u < 1; a 1.0 still stays below the ceiling. */
        assert_int_equal(retry_backoff_ms(&policy, n, 1.0), ceiling - 1);
    }
    assert_int_equal(retry_backoff_ms(&policy, 1, 0.5), 500);
    assert_int_equal(retry_backoff_ms(&policy, 3, 0.25), 1000);
}

static void
test_backoff_is_capped(void **state)
{
    (void)state;
    assert_int_equal(retry_backoff_ms(&policy, 7, 0.5), 30000);
    assert_int_equal(retry_backoff_ms(&policy, 8, 0.5), 30000);
    assert_int_equal(retry_backoff_ms(&policy, 20, 0.5), 30000);
}

static void
test_backoff_large_n_does_not_overflow(void **state)
{
    (void)state;
    static const int ns[] = {31, 32, 62, 63, 64, 1000, 2147483647};
    struct retry_policy huge = policy;
    huge.cap_ms = INT64_MAX;

    for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
        assert_int_equal(retry_backoff_ms(&policy, ns[i], 0.5), 30000);
        int64_t b = retry_backoff_ms(&huge, ns[i], 0.999);
        assert_true(b > 0);
        assert_true(b < INT64_MAX);
    }
    assert_int_equal(retry_backoff_ms(&policy, 0, 0.5), 500);
    assert_int_equal(retry_backoff_ms(&policy, -3, 0.5), 500);
}

static void
test_run_after_saturates_instead_of_wrapping(void **state)
{
    (void)state;
    struct retry_policy huge = policy;
    huge.base_ms = INT64_MAX / 2;
    huge.cap_ms = INT64_MAX;
    struct outcome o = failure(ERR_SERVER_ERROR, VERDICT_DEFAULT, 0);
    struct retry_decision d = retry_decide(&huge, &o, 3, 0, NOW, 0.9999999999);

    assert_int_equal(d.action, RETRY_AGAIN);
    assert_int_equal(d.run_after_ms, INT64_MAX);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth_and_balance_hold_the_job),
        cmocka_unit_test(test_429_defers_without_using_attempts),
        cmocka_unit_test(test_429_with_hint_defers_to_the_hint),
        cmocka_unit_test(test_hint_in_the_past_defers_to_now),
        cmocka_unit_test(test_503_with_hint_is_a_deferral),
        cmocka_unit_test(test_503_without_hint_is_charged),
        cmocka_unit_test(test_deferrals_exhausted_gives_up),
        cmocka_unit_test(test_explicit_no_retry_beats_a_throttle),
        cmocka_unit_test(test_retryable_failure_retries_until_max_attempts),
        cmocka_unit_test(test_retry_is_never_before_the_hint),
        cmocka_unit_test(test_protocol_errors_get_three_attempts),
        cmocka_unit_test(test_terminal_classes_give_up),
        cmocka_unit_test(test_explicit_verdict_overrides_class),
        cmocka_unit_test(test_backoff_bounds_with_zero_and_near_one),
        cmocka_unit_test(test_backoff_is_capped),
        cmocka_unit_test(test_backoff_large_n_does_not_overflow),
        cmocka_unit_test(test_run_after_saturates_instead_of_wrapping),
        cmocka_unit_test(test_far_hint_schedules_a_day_ahead_at_most),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
