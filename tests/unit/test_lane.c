/*
 * Unit tests for lane: the flow control of docs/design.md §6, driven with an
 * injected clock (T0 + offsets) and fixed uniform draws. No sleeping: time
 * passes by passing a later now_ms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/lane.h"
#include "sluice/outcome.h"

/* 2023-11-14T22:13:20Z: a realistic wall clock, so date formatting and
 * large offsets are exercised as in production. */
#define T0 INT64_C(1700000000000)
#define RTT 200

static struct lane_params
params(int start, int max, bool adaptive, double rate, int64_t probe)
{
    struct lane_params p = {
        .concurrency_start = start,
        .concurrency_max = max,
        .adaptive = adaptive,
        .rate_per_s = rate,
        .probe_interval_ms = probe,
    };
    return p;
}

static struct lane *
lane_make(int start, int max, bool adaptive, double rate)
{
    struct lane_params p = params(start, max, adaptive, rate, 60000);
    return lane_new("flora", &p, T0);
}

/* An outcome as a dialect would leave it, built by hand: rate hints
 * unknown (-1), no retry hint. */
static struct outcome
mk(enum outcome_kind kind, enum err_class cls, int status, const char *code)
{
    struct outcome o;

    memset(&o, 0, sizeof(o));
    o.kind = kind;
    o.cls = cls;
    o.http_status = status;
    o.hints.rl_limit = -1;
    o.hints.rl_remaining = -1;
    if (code != NULL)
        strncpy(o.code, code, sizeof(o.code) - 1);
    return o;
}

static struct outcome
ok(void)
{
    return mk(OUTCOME_SUCCESS, ERR_NONE, 200, NULL);
}

static struct outcome
failed_with(enum err_class cls, int status, const char *code)
{
    return mk(OUTCOME_FAILURE, cls, status, code);
}

static void
send_n(struct lane *l, int n, int64_t now)
{
    for (int i = 0; i < n; i++)
        lane_on_send(l, now);
}

/* Finishes n requests with o; returns how many reported a change. */
static int
done_n(struct lane *l, int n, const struct outcome *o, int64_t now)
{
    int changes = 0;

    for (int i = 0; i < n; i++)
        changes += lane_on_done(l, o, RTT, now, 0.5);
    return changes;
}

static int
admit(struct lane *l, int64_t now, int64_t *wake)
{
    *wake = -1;
    return lane_admit(l, now, wake);
}

/* One round trip of a saturated lane: every request in flight succeeds at
 * `now`, and like the dispatcher, each freed slot is refilled at once. */
static void
round_trip(struct lane *l, int64_t now)
{
    struct outcome s = ok();
    int64_t wake;

    for (int n = lane_in_flight(l); n > 0; n--) {
        lane_on_done(l, &s, RTT, now, 0.5);
        send_n(l, admit(l, now, &wake), now);
    }
}

/* --- adaptive concurrency --------------------------------------------- */

static void
test_slow_start_doubles_per_round_trip(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 64, true, 0);
    int64_t wake;

    assert_int_equal(admit(l, T0, &wake), 4);
    assert_int_equal(wake, 0);
    send_n(l, 4, T0);
    assert_int_equal(admit(l, T0, &wake), 0);
    assert_int_equal(wake, 0); /* wait for a request, not a time */
    round_trip(l, T0 + RTT);
    assert_int_equal(lane_limit(l), 8);
    assert_int_equal(lane_in_flight(l), 8);
    round_trip(l, T0 + 2 * RTT);
    assert_int_equal(lane_limit(l), 16);
    lane_free(l);
}

static void
test_429_cuts_limit_once_per_rtt_even_with_many_429s(void **state)
{
    (void)state;
    struct lane *l = lane_make(20, 64, true, 0);
    struct outcome r =
        failed_with(ERR_RATE_LIMITED, 429, "rate_limit_exceeded");

    send_n(l, 20, T0);
    assert_true(lane_on_done(l, &r, RTT, T0 + RTT, 0.5));
    assert_int_equal(lane_limit(l), 14); /* 20 × 0.7 */
    assert_string_equal(lane_last_change(l), "limit 20→14 after rate_limited");
    /* Nine more from the same window, within one smoothed RTT. */
    for (int i = 1; i <= 9; i++)
        assert_false(lane_on_done(l, &r, RTT, T0 + RTT + i * 20, 0.5));
    assert_int_equal(lane_limit(l), 14);
    /* One SRTT after the cut, a new loss is a new signal. */
    assert_true(lane_on_done(l, &r, RTT, T0 + 2 * RTT, 0.5));
    assert_int_equal(lane_limit(l), 9); /* 14 × 0.7 = 9.8 */
    lane_free(l);
}

static void
test_503_408_and_timeouts_are_losses(void **state)
{
    (void)state;
    struct outcome losses[] = {
        failed_with(ERR_UNAVAILABLE, 503, "service_unavailable"),
        failed_with(ERR_TIMEOUT, 504, "gateway_timeout"),
        failed_with(ERR_TIMEOUT, 0, NULL),           /* client timeout */
        failed_with(ERR_INVALID_REQUEST, 408, NULL), /* 408 by status alone */
    };

    for (size_t i = 0; i < sizeof(losses) / sizeof(*losses); i++) {
        struct lane *l = lane_make(10, 64, true, 0);
        send_n(l, 1, T0);
        assert_true(lane_on_done(l, &losses[i], RTT, T0 + RTT, 0.5));
        assert_int_equal(lane_limit(l), 7);
        lane_free(l);
    }
}

static void
test_additive_increase_after_first_loss(void **state)
{
    (void)state;
    struct lane *l = lane_make(10, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    struct outcome s = ok();

    send_n(l, 1, T0);
    lane_on_done(l, &r, RTT, T0 + RTT, 0.5);
    assert_int_equal(lane_limit(l), 7);
    /* +1/limit per success: 7 successes make one step, not seven. */
    send_n(l, 7, T0 + RTT);
    for (int i = 0; i < 6; i++) {
        lane_on_done(l, &s, RTT, T0 + 2 * RTT, 0.5);
        send_n(l, 1, T0 + 2 * RTT);
    }
    assert_int_equal(lane_limit(l), 7);
    assert_true(lane_on_done(l, &s, RTT, T0 + 2 * RTT, 0.5));
    assert_int_equal(lane_limit(l), 8);
    assert_string_equal(lane_last_change(l), "limit 7→8 after success");
    lane_free(l);
}

static void
test_no_growth_when_in_flight_below_half_limit(void **state)
{
    (void)state;
    struct lane *l = lane_make(10, 64, true, 0);
    struct outcome s = ok();

    send_n(l, 4, T0);
    done_n(l, 4, &s, T0 + RTT);
    assert_int_equal(lane_limit(l), 10);
    send_n(l, 5, T0 + RTT);
    done_n(l, 1, &s, T0 + 2 * RTT); /* 5 in flight = limit / 2: grows */
    assert_int_equal(lane_limit(l), 11);
    lane_free(l);
}

static void
test_4xx_request_errors_leave_limit_alone(void **state)
{
    (void)state;
    struct lane *l = lane_make(10, 64, true, 0);
    struct outcome errs[] = {
        failed_with(ERR_INVALID_REQUEST, 400, "input_validation_error"),
        failed_with(ERR_INVALID_REQUEST, 422, "invalid_image_format"),
        failed_with(ERR_NOT_FOUND, 404, "not_found_error"),
        failed_with(ERR_CONFLICT, 409, "conflict"),
        failed_with(ERR_IDEMPOTENCY_CONFLICT, 422, "idempotency_conflict"),
        failed_with(ERR_SAFETY_BLOCKED, 200, "safety_blocked"),
    };
    size_t n = sizeof(errs) / sizeof(*errs);

    send_n(l, (int)n, T0);
    for (size_t i = 0; i < n; i++)
        assert_false(lane_on_done(l, &errs[i], RTT, T0 + RTT, 0.5));
    assert_int_equal(lane_limit(l), 10);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    /* Still in slow start: a full round trip doubles. */
    send_n(l, 10, T0 + RTT);
    round_trip(l, T0 + 2 * RTT);
    assert_int_equal(lane_limit(l), 20);
    lane_free(l);
}

static void
test_limit_never_below_one(void **state)
{
    (void)state;
    struct lane *l = lane_make(1, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);

    for (int i = 0; i < 5; i++) {
        send_n(l, 1, T0 + i * 1000);
        lane_on_done(l, &r, RTT, T0 + i * 1000 + RTT, 0.5);
    }
    assert_int_equal(lane_limit(l), 1);
    lane_free(l);
}

static void
test_limit_never_above_max(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 6, true, 0);

    send_n(l, 4, T0);
    round_trip(l, T0 + RTT);
    round_trip(l, T0 + 2 * RTT);
    assert_int_equal(lane_limit(l), 6);
    assert_int_equal(lane_in_flight(l), 6);
    lane_free(l);

    l = lane_make(100, 8, true, 0);
    assert_int_equal(lane_limit(l), 8);
    lane_free(l);
    l = lane_make(0, 8, true, 0);
    assert_int_equal(lane_limit(l), 1);
    lane_free(l);
}

static void
test_fixed_limit_when_not_adaptive(void **state)
{
    (void)state;
    struct lane *l = lane_make(7, 64, false, 0);
    struct outcome s = ok();
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    int64_t wake;

    send_n(l, 7, T0);
    done_n(l, 7, &s, T0 + RTT);
    assert_int_equal(lane_limit(l), 7);
    send_n(l, 7, T0 + RTT);
    assert_int_equal(done_n(l, 7, &r, T0 + 2 * RTT), 0);
    assert_int_equal(lane_limit(l), 7);
    assert_int_equal(admit(l, T0 + 2 * RTT, &wake), 7);
    lane_free(l);
}

static void
test_configure_keeps_state_and_applies_new_max(void **state)
{
    (void)state;
    struct lane *l = lane_make(32, 64, true, 0);
    struct outcome a = failed_with(ERR_AUTH, 401, "invalid_api_key");
    struct lane_params p = params(4, 16, true, 0, 60000);

    send_n(l, 3, T0);
    lane_on_done(l, &a, RTT, T0 + RTT, 0.5);
    lane_configure(l, &p);
    assert_int_equal(lane_limit(l), 16);
    assert_int_equal(lane_in_flight(l), 2);
    assert_int_equal(lane_state(l), LANE_PAUSED);
    p.adaptive = false;
    lane_configure(l, &p);
    assert_int_equal(lane_limit(l), 4);
    lane_free(l);
}

/* --- pause-until and parking ------------------------------------------ */

static void
test_retry_after_pauses_whole_lane_until_hint_never_earlier(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    int64_t now = T0 + RTT, wake;

    r.hints.retry_at_ms = now + 5000;
    send_n(l, 2, T0);
    lane_on_done(l, &r, RTT, now, 0.0);
    assert_int_equal(lane_pause_until(l), now + 5000);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    /* The whole lane stops, though a slot is free. */
    assert_int_equal(admit(l, now, &wake), 0);
    assert_int_equal(wake, now + 5000);
    assert_int_equal(admit(l, now + 4999, &wake), 0);
    assert_int_equal(wake, now + 5000);
    assert_true(admit(l, now + 5000, &wake) > 0);
    assert_int_equal(wake, 0);
    lane_free(l);
}

static void
test_retry_after_jitter_at_most_10_percent_and_1_s(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r = failed_with(ERR_UNAVAILABLE, 503, "service_unavailable");
    int64_t now = T0;

    /* 5 s wait: jitter up to 500 ms. */
    r.hints.retry_at_ms = now + 5000;
    send_n(l, 1, now);
    lane_on_done(l, &r, RTT, now, 0.999);
    assert_in_range(lane_pause_until(l), now + 5490, now + 5500);
    lane_free(l);

    /* 60 s wait: 10 % would be 6 s, capped at 1 s. */
    l = lane_make(8, 64, true, 0);
    r.hints.retry_at_ms = now + 60000;
    send_n(l, 1, now);
    lane_on_done(l, &r, RTT, now, 0.999);
    assert_in_range(lane_pause_until(l), now + 60990, now + 61000);
    lane_free(l);
}

static void
test_hint_beyond_120s_parks_lane_until_reset(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r =
        failed_with(ERR_RATE_LIMITED, 429, "rate_limit_exceeded");
    int64_t wake;

    r.hints.retry_at_ms = T0 + 600000;
    send_n(l, 1, T0);
    assert_true(lane_on_done(l, &r, RTT, T0, 0.0));
    assert_int_equal(lane_state(l), LANE_PARKED);
    assert_string_equal(lane_reason(l), "parked until 2023-11-14T22:23:20Z "
                                        "after rate_limit_exceeded");
    assert_string_equal(lane_describe(l), "flora parked until "
                                          "2023-11-14T22:23:20Z after "
                                          "rate_limit_exceeded");
    assert_int_equal(admit(l, T0 + 599999, &wake), 0);
    assert_int_equal(wake, T0 + 600000);
    assert_true(admit(l, T0 + 600000, &wake) > 0);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_string_equal(lane_reason(l), "");
    lane_free(l);
}

static void
test_hint_of_120s_pauses_without_parking(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);

    r.hints.retry_at_ms = T0 + 120000;
    send_n(l, 1, T0);
    lane_on_done(l, &r, RTT, T0, 0.0);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(lane_pause_until(l), T0 + 120000);
    lane_free(l);
}

static void
test_parking_capped_at_24h(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);

    r.hints.retry_at_ms = T0 + INT64_C(3) * 86400000;
    send_n(l, 1, T0);
    lane_on_done(l, &r, RTT, T0, 0.5);
    assert_int_equal(lane_state(l), LANE_PARKED);
    assert_int_equal(lane_pause_until(l), T0 + 86400000);
    lane_free(l);
}

static void
test_429_with_exhausted_window_pauses_until_its_reset(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r =
        failed_with(ERR_RATE_LIMITED, 429, "Rate limit exceeded");

    r.hints.rl_limit = 10;
    r.hints.rl_remaining = 0;
    r.hints.rl_reset_ms = T0 + 45000;
    send_n(l, 1, T0);
    lane_on_done(l, &r, RTT, T0, 0.0);
    assert_int_equal(lane_pause_until(l), T0 + 45000);
    assert_int_equal(lane_throttled(l), 1);
    lane_free(l);
}

/* --- rate pacer ------------------------------------------------------- */

static void
test_pacer_spaces_requests_at_0_9_of_rate(void **state)
{
    (void)state;
    struct lane *l = lane_make(1000, 1000, false, 10.0);
    int64_t now = T0, wake;
    int sent = 0;

    assert_true(lane_rate(l) > 8.999 && lane_rate(l) < 9.001);
    assert_int_equal(admit(l, now, &wake), 1);
    lane_on_send(l, now);
    assert_int_equal(admit(l, now, &wake), 0);
    assert_int_equal(wake, now + 112); /* ⌈1000 / 9⌉ */
    assert_int_equal(admit(l, now + 111, &wake), 0);
    assert_int_equal(admit(l, now + 112, &wake), 1);

    /* Ten seconds driven by wake_ms alone: 9 per second. */
    now += 112;
    sent = 1;
    while (now < T0 + 10000) {
        int n = admit(l, now, &wake);
        if (n > 0) {
            send_n(l, n, now);
            sent += n;
        } else {
            assert_true(wake > now);
            now = wake;
        }
    }
    assert_in_range(sent, 89, 91);
    lane_free(l);
}

static void
test_pacer_burst_is_a_tenth_of_a_second(void **state)
{
    (void)state;
    struct lane *l = lane_make(1000, 1000, false, 100.0);
    int64_t wake;

    /* After a long idle spell the bucket holds 100 × 0.1 s, not more. */
    assert_int_equal(admit(l, T0 + 60000, &wake), 10);
    lane_free(l);
}

static void
test_learned_rate_only_lowers_configured_rate(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 10.0);
    struct outcome s = ok();

    s.hints.rl_limit = 1200; /* per minute: 20/s, above the configured */
    send_n(l, 1, T0);
    lane_on_done(l, &s, RTT, T0 + RTT, 0.5);
    assert_true(lane_rate(l) > 8.999 && lane_rate(l) < 9.001);

    s.hints.rl_limit = 300; /* 5/s: lower, so it wins */
    send_n(l, 1, T0 + RTT);
    lane_on_done(l, &s, RTT, T0 + 2 * RTT, 0.5);
    assert_true(lane_rate(l) > 4.499 && lane_rate(l) < 4.501);
    lane_free(l);

    /* Nothing configured: the advertised rate, window as stated. */
    l = lane_make(8, 64, true, 0);
    assert_true(lane_rate(l) == 0.0);
    s.hints.rl_limit = 50;
    s.hints.rl_window_ms = 10000;
    send_n(l, 1, T0);
    lane_on_done(l, &s, RTT, T0 + RTT, 0.5);
    assert_true(lane_rate(l) > 4.499 && lane_rate(l) < 4.501);
    lane_free(l);
}

static void
test_remaining_zero_waits_for_reset(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome s = ok();
    int64_t wake;

    s.hints.rl_remaining = 0;
    s.hints.rl_reset_ms = T0 + 30000;
    send_n(l, 1, T0);
    lane_on_done(l, &s, RTT, T0 + RTT, 0.5);
    assert_int_equal(admit(l, T0 + RTT, &wake), 0);
    assert_int_equal(wake, T0 + 30000);
    assert_true(admit(l, T0 + 30000, &wake) > 0);
    lane_free(l);
}

/* --- provider pause --------------------------------------------------- */

static void
test_auth_failure_pauses_lane_at_once(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome a = failed_with(ERR_AUTH, 401, "invalid_api_key");
    int64_t wake;

    strcpy(a.request_id, "req_1");
    send_n(l, 3, T0);
    assert_true(lane_on_done(l, &a, RTT, T0 + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_PAUSED);
    assert_string_equal(lane_reason(l), "auth: invalid_api_key "
                                        "(request req_1)");
    assert_string_equal(lane_last_change(l), "active→paused after auth");
    assert_int_equal(admit(l, T0 + RTT, &wake), 0);
    assert_int_equal(wake, T0 + RTT + 60000);
    /* The other two in flight fail the same way: still one pause. */
    assert_false(lane_on_done(l, &a, RTT, T0 + RTT + 5, 0.5));
    lane_free(l);
}

static void
test_balance_pause_admits_single_probe_per_interval(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome b =
        failed_with(ERR_INSUFFICIENT_BALANCE, 402, "Insufficient balance");
    int64_t t = T0 + RTT, wake;

    strcpy(b.request_id, "req_9");
    send_n(l, 1, T0);
    lane_on_done(l, &b, RTT, t, 0.5);
    assert_string_equal(lane_describe(l),
                        "flora paused: insufficient_balance: Insufficient "
                        "balance (request req_9)");
    assert_int_equal(admit(l, t + 59999, &wake), 0);
    assert_int_equal(wake, t + 60000);
    assert_int_equal(admit(l, t + 60000, &wake), 1);
    lane_on_send(l, t + 60000);
    assert_int_equal(admit(l, t + 60000, &wake), 0);
    assert_int_equal(wake, 0); /* waiting for the probe's answer */
    assert_int_equal(admit(l, t + 200000, &wake), 0);
    /* The probe fails again: the next one an interval later. */
    assert_false(lane_on_done(l, &b, RTT, t + 60200, 0.5));
    assert_int_equal(lane_state(l), LANE_PAUSED);
    assert_int_equal(admit(l, t + 60200, &wake), 0);
    assert_int_equal(wake, t + 120200);
    assert_int_equal(admit(l, t + 120200, &wake), 1);
    lane_free(l);
}

static void
test_probe_success_resumes_lane(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome b = failed_with(ERR_INSUFFICIENT_BALANCE, 402, NULL);
    struct outcome s = ok();
    int64_t wake;

    send_n(l, 1, T0);
    lane_on_done(l, &b, RTT, T0, 0.5);
    assert_int_equal(admit(l, T0 + 60000, &wake), 1);
    lane_on_send(l, T0 + 60000);
    assert_true(lane_on_done(l, &s, RTT, T0 + 60000 + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_string_equal(lane_reason(l), "");
    assert_int_equal(admit(l, T0 + 60000 + RTT, &wake), 8);
    lane_free(l);
}

static void
test_lane_resume_activates_at_once(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome a = failed_with(ERR_AUTH, 401, "invalid_api_key");
    int64_t wake;

    send_n(l, 1, T0);
    lane_on_done(l, &a, RTT, T0, 0.5);
    assert_int_equal(admit(l, T0 + 1, &wake), 0);
    lane_resume(l, T0 + 1);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(admit(l, T0 + 1, &wake), 8);
    assert_string_equal(lane_describe(l), "flora limit 8 (0 in flight)");
    lane_free(l);
}

static void
test_403_for_one_model_does_not_pause(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome p = failed_with(ERR_PERMISSION, 403, "Access denied");

    strcpy(p.message, "Your API key does not have access to provider: kling");
    send_n(l, 2, T0);
    assert_false(lane_on_done(l, &p, RTT, T0, 0.5));
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    p = failed_with(ERR_PERMISSION, 403, "permission_error");
    assert_false(lane_on_done(l, &p, RTT, T0, 0.5));
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    lane_free(l);
}

static void
test_403_for_suspended_account_pauses(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome p = failed_with(ERR_PERMISSION, 403, "Access denied");

    strcpy(p.message, "Account Suspended");
    send_n(l, 1, T0);
    assert_true(lane_on_done(l, &p, RTT, T0, 0.5));
    assert_int_equal(lane_state(l), LANE_PAUSED);
    assert_string_equal(lane_reason(l), "permission: Access denied");
    lane_free(l);
}

/* --- circuit breaker -------------------------------------------------- */

static void
test_breaker_opens_at_half_of_20_calls(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome s = ok();
    struct outcome e = failed_with(ERR_SERVER_ERROR, 500, "server_error");
    int64_t wake;

    send_n(l, 20, T0);
    done_n(l, 10, &s, T0 + RTT);
    assert_int_equal(done_n(l, 9, &e, T0 + RTT), 0);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_true(lane_on_done(l, &e, RTT, T0 + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_OPEN);
    assert_string_equal(lane_reason(l), "breaker open: 10 of 20 failed");
    assert_string_equal(lane_describe(l),
                        "flora breaker open: 10 of 20 failed");
    assert_int_equal(lane_open_until(l), T0 + RTT + 30000);
    assert_int_equal(admit(l, T0 + RTT, &wake), 0);
    assert_int_equal(wake, T0 + RTT + 30000);
    lane_free(l);
}

static void
test_breaker_stays_closed_below_20_calls(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome n = failed_with(ERR_NETWORK, 0, NULL);

    send_n(l, 19, T0);
    assert_int_equal(done_n(l, 19, &n, T0 + RTT), 0);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    lane_free(l);
}

static void
test_breaker_window_is_last_50_calls(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome s = ok();
    struct outcome e = failed_with(ERR_SERVER_ERROR, 502, NULL);

    send_n(l, 51, T0);
    done_n(l, 26, &s, T0 + RTT);
    done_n(l, 24, &e, T0 + RTT);
    assert_int_equal(lane_state(l), LANE_ACTIVE); /* 24 of 50 */
    /* The oldest success leaves the ring: 25 of 50. */
    assert_true(lane_on_done(l, &e, RTT, T0 + RTT, 0.5));
    assert_string_equal(lane_reason(l), "breaker open: 25 of 50 failed");
    lane_free(l);
}

static void
test_rate_limits_and_4xx_are_not_hard_failures(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    struct outcome v = failed_with(ERR_INVALID_REQUEST, 400, NULL);

    send_n(l, 40, T0);
    done_n(l, 20, &r, T0 + RTT);
    done_n(l, 20, &v, T0 + RTT);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    lane_free(l);
}

/* Opens a fresh lane's breaker at `now` with 20 timeouts. */
static struct lane *
lane_opened(int64_t now)
{
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome t = failed_with(ERR_TIMEOUT, 504, "gateway_timeout");

    send_n(l, 20, now - RTT);
    done_n(l, 20, &t, now);
    assert_int_equal(lane_state(l), LANE_OPEN);
    return l;
}

static void
test_breaker_half_open_admits_3_probes_then_closes(void **state)
{
    (void)state;
    struct lane *l = lane_opened(T0);
    struct outcome s = ok();
    int64_t t = T0 + 30000, wake;

    assert_int_equal(admit(l, t - 1, &wake), 0);
    assert_int_equal(wake, t);
    assert_int_equal(admit(l, t, &wake), 3);
    send_n(l, 3, t);
    assert_int_equal(admit(l, t, &wake), 0);
    assert_int_equal(wake, 0);
    assert_false(lane_on_done(l, &s, RTT, t + RTT, 0.5));
    assert_false(lane_on_done(l, &s, RTT, t + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_OPEN);
    assert_true(lane_on_done(l, &s, RTT, t + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_string_equal(lane_last_change(l), "half-open→active after success");
    assert_int_equal(lane_open_until(l), 0);
    lane_free(l);
}

static void
test_breaker_closes_into_slow_start_from_limit_floor(void **state)
{
    (void)state;
    struct lane *l = lane_make(10, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    struct outcome e = failed_with(ERR_SERVER_ERROR, 500, NULL);
    struct outcome s = ok();
    int64_t t, wake;

    send_n(l, 1, T0);
    lane_on_done(l, &r, RTT, T0, 0.5); /* slow start ends: limit 7 */
    send_n(l, 20, T0);
    done_n(l, 20, &e, T0 + RTT);
    assert_int_equal(lane_state(l), LANE_OPEN);
    t = T0 + RTT + 30000;
    assert_int_equal(admit(l, t, &wake), 3);
    send_n(l, 3, t);
    done_n(l, 3, &s, t + RTT);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(lane_limit(l), 7);
    /* Slow start again: a full round trip doubles. */
    send_n(l, 7, t + RTT);
    round_trip(l, t + 2 * RTT);
    assert_int_equal(lane_limit(l), 14);
    lane_free(l);
}

static void
test_breaker_reopen_doubles_to_5_min_cap(void **state)
{
    (void)state;
    struct lane *l = lane_opened(T0);
    struct outcome e = failed_with(ERR_SERVER_ERROR, 500, NULL);
    const int64_t periods[] = {60000, 120000, 240000, 300000, 300000};
    int64_t t = lane_open_until(l), wake;

    assert_int_equal(t, T0 + 30000);
    for (size_t i = 0; i < sizeof(periods) / sizeof(*periods); i++) {
        assert_int_equal(admit(l, t, &wake), 3);
        send_n(l, 1, t);
        assert_true(lane_on_done(l, &e, RTT, t + RTT, 0.5));
        assert_string_equal(lane_last_change(l),
                            "half-open→open after server_error");
        assert_int_equal(lane_state(l), LANE_OPEN);
        assert_int_equal(lane_open_until(l), t + RTT + periods[i]);
        t = lane_open_until(l);
    }
    lane_free(l);
}

static void
test_breaker_period_jitter_within_10_percent(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome t = failed_with(ERR_TIMEOUT, 0, NULL);

    send_n(l, 20, T0);
    done_n(l, 19, &t, T0);
    lane_on_done(l, &t, RTT, T0, 0.0);
    assert_in_range(lane_open_until(l), T0 + 26999, T0 + 27000);
    lane_free(l);

    l = lane_make(64, 64, false, 0);
    send_n(l, 20, T0);
    done_n(l, 19, &t, T0);
    lane_on_done(l, &t, RTT, T0, 0.999);
    assert_in_range(lane_open_until(l), T0 + 32900, T0 + 33000);
    lane_free(l);
}

static void
test_requests_from_before_opening_are_not_probes(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome e = failed_with(ERR_SERVER_ERROR, 500, NULL);
    struct outcome s = ok();
    int64_t t = T0 + RTT + 30000, wake;

    send_n(l, 25, T0);
    done_n(l, 20, &e, T0 + RTT); /* opens with 5 still out */
    assert_int_equal(lane_state(l), LANE_OPEN);
    assert_int_equal(admit(l, t, &wake), 3);
    send_n(l, 3, t);
    /* The five stragglers fail late: they are not the probes. */
    assert_int_equal(done_n(l, 5, &e, t + RTT), 0);
    assert_int_equal(lane_open_until(l), t);
    done_n(l, 3, &s, t + RTT);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    lane_free(l);
}

static void
test_probe_success_does_not_grow_limit(void **state)
{
    (void)state;
    struct lane *l = lane_make(2, 64, true, 0);
    struct outcome a = failed_with(ERR_AUTH, 401, "invalid_api_key");
    struct outcome s = ok();

    send_n(l, 1, T0);
    lane_on_done(l, &a, RTT, T0, 0.5);
    lane_on_send(l, T0 + 60000);
    lane_on_done(l, &s, RTT, T0 + 60000 + RTT, 0.5);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(lane_limit(l), 2); /* a probe proves the key only */
    lane_free(l);
}

/* --- in flight, wake times, reporting --------------------------------- */

static void
test_waiting_runs_count_as_in_flight(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 64, false, 0);
    int64_t wake;

    lane_on_waiting(l, +3);
    assert_int_equal(lane_in_flight(l), 3);
    assert_int_equal(admit(l, T0, &wake), 1);
    lane_on_send(l, T0);
    assert_int_equal(admit(l, T0, &wake), 0);
    assert_int_equal(wake, 0);
    lane_on_waiting(l, -1);
    assert_int_equal(admit(l, T0, &wake), 1);
    lane_on_abort(l);
    assert_int_equal(lane_in_flight(l), 2);
    lane_free(l);
}

static void
test_wake_ms_is_latest_closed_time_gate(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 1.0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    int64_t wake;

    /* Token spent: the next comes in ⌈1000 / 0.9⌉ ms. */
    lane_on_send(l, T0);
    assert_int_equal(admit(l, T0, &wake), 0);
    assert_int_equal(wake, T0 + 1112);
    /* A later Retry-After: the wake is the later of the two. */
    r.hints.retry_at_ms = T0 + 5000;
    lane_on_done(l, &r, RTT, T0 + 10, 0.0);
    assert_int_equal(admit(l, T0 + 10, &wake), 0);
    assert_int_equal(wake, T0 + 5000);
    lane_free(l);
}

static void
test_wake_ms_zero_when_concurrency_is_full(void **state)
{
    (void)state;
    struct lane *l = lane_make(2, 64, false, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    int64_t wake;

    send_n(l, 3, T0);
    r.hints.retry_at_ms = T0 + 5000;
    lane_on_done(l, &r, RTT, T0, 0.0);
    /* Full and paused: a finishing request is the next event anyway. */
    assert_int_equal(admit(l, T0, &wake), 0);
    assert_int_equal(wake, 0);
    lane_free(l);
}

static void
test_counters_count_each_outcome_once(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome s = ok();
    struct outcome acc = mk(OUTCOME_ACCEPTED, ERR_NONE, 202, NULL);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    struct outcome u = failed_with(ERR_UNAVAILABLE, 503, NULL);
    struct outcome uh = failed_with(ERR_UNAVAILABLE, 503, NULL);
    struct outcome v = failed_with(ERR_INVALID_REQUEST, 400, NULL);

    uh.hints.retry_at_ms = T0 + 1000;
    send_n(l, 6, T0);
    lane_on_done(l, &s, RTT, T0, 0.5);
    lane_on_done(l, &acc, RTT, T0, 0.5);
    lane_on_done(l, &r, RTT, T0, 0.5);
    lane_on_done(l, &u, RTT, T0, 0.5);
    lane_on_done(l, &uh, RTT, T0, 0.5);
    lane_on_done(l, &v, RTT, T0, 0.5);
    assert_int_equal(lane_sent(l), 6);
    assert_int_equal(lane_succeeded(l), 2);
    assert_int_equal(lane_throttled(l), 2);
    assert_int_equal(lane_failed(l), 2);
    assert_int_equal(lane_in_flight(l), 0);
    lane_free(l);
}

static void
test_describe_active_lane(void **state)
{
    (void)state;
    struct lane *l = lane_make(24, 64, true, 0);

    send_n(l, 12, T0);
    assert_string_equal(lane_describe(l), "flora limit 24 (12 in flight)");
    assert_string_equal(lane_name(l), "flora");
    assert_string_equal(lane_state_name(lane_state(l)), "active");
    assert_string_equal(lane_state_name(LANE_PARKED), "parked");
    lane_free(l);
    lane_free(NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slow_start_doubles_per_round_trip),
        cmocka_unit_test(test_429_cuts_limit_once_per_rtt_even_with_many_429s),
        cmocka_unit_test(test_503_408_and_timeouts_are_losses),
        cmocka_unit_test(test_additive_increase_after_first_loss),
        cmocka_unit_test(test_no_growth_when_in_flight_below_half_limit),
        cmocka_unit_test(test_4xx_request_errors_leave_limit_alone),
        cmocka_unit_test(test_limit_never_below_one),
        cmocka_unit_test(test_limit_never_above_max),
        cmocka_unit_test(test_fixed_limit_when_not_adaptive),
        cmocka_unit_test(test_configure_keeps_state_and_applies_new_max),
        cmocka_unit_test(
            test_retry_after_pauses_whole_lane_until_hint_never_earlier),
        cmocka_unit_test(test_retry_after_jitter_at_most_10_percent_and_1_s),
        cmocka_unit_test(test_hint_beyond_120s_parks_lane_until_reset),
        cmocka_unit_test(test_hint_of_120s_pauses_without_parking),
        cmocka_unit_test(test_parking_capped_at_24h),
        cmocka_unit_test(test_429_with_exhausted_window_pauses_until_its_reset),
        cmocka_unit_test(test_pacer_spaces_requests_at_0_9_of_rate),
        cmocka_unit_test(test_pacer_burst_is_a_tenth_of_a_second),
        cmocka_unit_test(test_learned_rate_only_lowers_configured_rate),
        cmocka_unit_test(test_remaining_zero_waits_for_reset),
        cmocka_unit_test(test_auth_failure_pauses_lane_at_once),
        cmocka_unit_test(test_balance_pause_admits_single_probe_per_interval),
        cmocka_unit_test(test_probe_success_resumes_lane),
        cmocka_unit_test(test_lane_resume_activates_at_once),
        cmocka_unit_test(test_403_for_one_model_does_not_pause),
        cmocka_unit_test(test_403_for_suspended_account_pauses),
        cmocka_unit_test(test_breaker_opens_at_half_of_20_calls),
        cmocka_unit_test(test_breaker_stays_closed_below_20_calls),
        cmocka_unit_test(test_breaker_window_is_last_50_calls),
        cmocka_unit_test(test_rate_limits_and_4xx_are_not_hard_failures),
        cmocka_unit_test(test_breaker_half_open_admits_3_probes_then_closes),
        cmocka_unit_test(test_breaker_closes_into_slow_start_from_limit_floor),
        cmocka_unit_test(test_breaker_reopen_doubles_to_5_min_cap),
        cmocka_unit_test(test_breaker_period_jitter_within_10_percent),
        cmocka_unit_test(test_requests_from_before_opening_are_not_probes),
        cmocka_unit_test(test_probe_success_does_not_grow_limit),
        cmocka_unit_test(test_waiting_runs_count_as_in_flight),
        cmocka_unit_test(test_wake_ms_is_latest_closed_time_gate),
        cmocka_unit_test(test_wake_ms_zero_when_concurrency_is_full),
        cmocka_unit_test(test_counters_count_each_outcome_once),
        cmocka_unit_test(test_describe_active_lane),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
