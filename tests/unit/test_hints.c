/*
 * hints: every header form a provider uses to say "come back later" or
 * "this is your budget", dates in all three HTTP forms and ISO-8601, the
 * response's Date header as the reference for absolute times, and garbage
 * that must be ignored without a crash.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/hints.h"
#include "sluice/http.h"

/* Our clock, deliberately far from the provider's Date below, so any use
 * of our clock for a provider-absolute time shows. */
#define NOW 1700000000000LL
/* Wed, 21 Oct 2015 07:28:00 GMT */
#define DATE_S 1445412480LL
#define DATE_HDR "Wed, 21 Oct 2015 07:28:00 GMT"

/* Builds a response from "Name", "value" pairs (NULL-terminated) and reads
 * its hints at NOW. */
static struct hints
hints_of(const char *first, ...)
{
    struct http_header headers[16];
    struct http_response r;
    struct hints h;
    const char *name = first;
    va_list ap;
    size_t n = 0;

    va_start(ap, first);
    while (name != NULL && n < 16) {
        headers[n].name = (char *)name;
        headers[n].value = va_arg(ap, char *);
        n++;
        name = va_arg(ap, const char *);
    }
    va_end(ap);
    memset(&r, 0, sizeof(r));
    r.status = 429;
    r.headers = headers;
    r.nheaders = n;
    hints_from_response(&r, NOW, &h);
    return h;
}

static void
assert_no_budget(const struct hints *h)
{
    assert_int_equal(h->rl_limit, -1);
    assert_int_equal(h->rl_remaining, -1);
    assert_int_equal(h->rl_reset_ms, 0);
    assert_int_equal(h->rl_window_ms, 0);
}

static void
test_no_headers_no_hints(void **state)
{
    (void)state;
    struct hints h = hints_of("Content-Type", "application/json", NULL);
    assert_int_equal(h.retry_at_ms, 0);
    assert_no_budget(&h);
}

static void
test_retry_after_ms_fractional_rounds_up(void **state)
{
    (void)state;
    struct hints h = hints_of("retry-after-ms", "1500.25", NULL);
    assert_int_equal(h.retry_at_ms, NOW + 1501);
}

static void
test_retry_after_delta_seconds(void **state)
{
    (void)state;
    struct hints h = hints_of("Retry-After", "120", NULL);
    assert_int_equal(h.retry_at_ms, NOW + 120000);
}

static void
test_retry_after_date_is_relative_to_response_date(void **state)
{
    (void)state;
    /* 30 s after the provider's own Date, whatever our clock says. */
    struct hints h = hints_of("Date", DATE_HDR, "Retry-After",
                              "Wed, 21 Oct 2015 07:28:30 GMT", NULL);
    assert_int_equal(h.retry_at_ms, NOW + 30000);
}

static void
test_retry_after_date_without_date_header_uses_our_clock(void **state)
{
    (void)state;
    /* NOW is 2023-11-14T22:13:20Z; this date is 40 s later. */
    struct hints h =
        hints_of("Retry-After", "Tue, 14 Nov 2023 22:14:00 GMT", NULL);
    assert_int_equal(h.retry_at_ms, NOW + 40000);
}

static void
test_retry_after_date_in_the_past_means_now(void **state)
{
    (void)state;
    struct hints h = hints_of("Date", DATE_HDR, "Retry-After",
                              "Wed, 21 Oct 2015 07:27:00 GMT", NULL);
    assert_int_equal(h.retry_at_ms, NOW);
}

static void
test_latest_retry_hint_wins(void **state)
{
    (void)state;
    struct hints h =
        hints_of("retry-after-ms", "500", "Retry-After", "2", NULL);
    assert_int_equal(h.retry_at_ms, NOW + 2000);

    h = hints_of("retry-after-ms", "9000", "Retry-After", "2", NULL);
    assert_int_equal(h.retry_at_ms, NOW + 9000);
}

static void
test_ratelimit_draft7_dictionary(void **state)
{
    (void)state;
    struct hints h = hints_of("RateLimit", "limit=100, remaining=0, reset=30",
                              "RateLimit-Policy", "100;w=60", NULL);
    assert_int_equal(h.rl_limit, 100);
    assert_int_equal(h.rl_remaining, 0);
    assert_int_equal(h.rl_reset_ms, NOW + 30000);
    assert_int_equal(h.rl_window_ms, 60000);
    /* remaining 0 with a reset is a retry hint */
    assert_int_equal(h.retry_at_ms, NOW + 30000);
}

static void
test_ratelimit_draft8_structured(void **state)
{
    (void)state;
    struct hints h =
        hints_of("RateLimit", "\"default\";r=0;t=30", "RateLimit-Policy",
                 "\"default\";q=100;w=60", NULL);
    assert_int_equal(h.rl_limit, 100);
    assert_int_equal(h.rl_remaining, 0);
    assert_int_equal(h.rl_reset_ms, NOW + 30000);
    assert_int_equal(h.rl_window_ms, 60000);
    assert_int_equal(h.retry_at_ms, NOW + 30000);
}

static void
test_ratelimit_with_requests_left_is_no_retry_hint(void **state)
{
    (void)state;
    struct hints h = hints_of("RateLimit", "\"default\";r=42;t=10", NULL);
    assert_int_equal(h.rl_remaining, 42);
    assert_int_equal(h.rl_reset_ms, NOW + 10000);
    assert_int_equal(h.retry_at_ms, 0);
}

static void
test_tightest_of_several_policies_and_limits(void **state)
{
    (void)state;
    /* 10/s vs 1000/day: the daily one is the tighter rate. */
    struct hints h = hints_of(
        "RateLimit-Policy", "\"burst\";q=10;w=1, \"daily\";q=1000;w=86400",
        "RateLimit", "\"burst\";r=9;t=1, \"daily\";r=0;t=3600", NULL);
    assert_int_equal(h.rl_limit, 1000);
    assert_int_equal(h.rl_window_ms, 86400000);
    assert_int_equal(h.rl_remaining, 0);
    assert_int_equal(h.rl_reset_ms, NOW + 3600000);
    assert_int_equal(h.retry_at_ms, NOW + 3600000);
}

static void
test_x_ratelimit_epoch_reset_uses_response_date(void **state)
{
    (void)state;
    struct hints h = hints_of("Date", DATE_HDR, "X-RateLimit-Limit", "60",
                              "X-RateLimit-Remaining", "0", "X-RateLimit-Reset",
                              "1445412500", NULL);
    assert_int_equal(h.rl_limit, 60);
    assert_int_equal(h.rl_remaining, 0);
    assert_int_equal(h.rl_reset_ms, NOW + 20000);
    assert_int_equal(h.retry_at_ms, NOW + 20000);
}

static void
test_x_ratelimit_epoch_reset_already_past_means_now(void **state)
{
    (void)state;
    struct hints h = hints_of("Date", DATE_HDR, "X-RateLimit-Remaining", "0",
                              "X-RateLimit-Reset", "1445412470", NULL);
    assert_int_equal(h.rl_reset_ms, NOW);
    assert_int_equal(h.retry_at_ms, NOW);
}

static void
test_x_ratelimit_delta_reset(void **state)
{
    (void)state;
    struct hints h =
        hints_of("x-ratelimit-limit", "10", "x-ratelimit-remaining", "3",
                 "x-ratelimit-reset", "15", NULL);
    assert_int_equal(h.rl_limit, 10);
    assert_int_equal(h.rl_remaining, 3);
    assert_int_equal(h.rl_reset_ms, NOW + 15000);
    assert_int_equal(h.retry_at_ms, 0);
}

static void
test_retry_hint_is_latest_across_all_sources(void **state)
{
    (void)state;
    struct hints h = hints_of("Retry-After", "5", "X-RateLimit-Remaining", "0",
                              "X-RateLimit-Reset", "50", NULL);
    assert_int_equal(h.retry_at_ms, NOW + 50000);
}

/* Every source of a hint, asked for decades ahead: cut to a day, with
 * what was asked kept for the log. */
static void
test_far_hints_are_capped_at_a_day(void **state)
{
    (void)state;
    const int64_t cap = NOW + HINT_CAP_MS;
    struct hints h = hints_of("Retry-After", "999999999", NULL);
    assert_int_equal(h.retry_at_ms, cap);
    assert_int_equal(h.asked_ms, NOW + 999999999000LL);

    h = hints_of("retry-after-ms", "99999999999", NULL);
    assert_int_equal(h.retry_at_ms, cap);
    h = hints_of("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT", NULL);
    assert_int_equal(h.retry_at_ms, cap);
    /* an epoch reset in year 5138, remaining 0: window and retry both */
    h = hints_of("Date", DATE_HDR, "X-RateLimit-Remaining", "0",
                 "X-RateLimit-Reset", "99999999999", NULL);
    assert_int_equal(h.rl_reset_ms, cap);
    assert_int_equal(h.retry_at_ms, cap);
    assert_true(h.asked_ms > cap);
    /* a far reset with requests left is capped too (it is not a retry) */
    h = hints_of("RateLimit", "\"p\";r=5;t=999999999", NULL);
    assert_int_equal(h.rl_reset_ms, cap);
    assert_int_equal(h.retry_at_ms, 0);
    /* exactly a day is not capped */
    h = hints_of("Retry-After", "86400", NULL);
    assert_int_equal(h.retry_at_ms, cap);
    assert_int_equal(h.asked_ms, 0);
}

static void
test_garbage_is_ignored(void **state)
{
    (void)state;
    static const char *const retry_after[] = {
        "soon",
        "-5",
        "1e3",
        "",
        " ",
        "0x10",
        "12abc",
        "Wed, 32 Oct 2015 07:28:00 GMT",
        "Wed, 21 Oct 2015 25:00:00 GMT",
        "Wed, 21 Oct 2015 07:28:00 UTC",
        "Wed, 21 Foo 2015 07:28:00 GMT",
        "Wed, 21 Oct 2015",
        "Wed,",
        "W",
        "99999999999999999999999",
    };
    for (size_t i = 0; i < sizeof(retry_after) / sizeof(retry_after[0]); i++) {
        struct hints h = hints_of("Retry-After", retry_after[i],
                                  "retry-after-ms", retry_after[i], NULL);
        if (h.retry_at_ms != 0)
            fail_msg("'%s' gave a hint", retry_after[i]);
    }
    struct hints h = hints_of(
        "RateLimit", "garbage;;;==,,\"unterminated", "RateLimit-Policy",
        ";q=;w=x,,,", "X-RateLimit-Limit", "lots", "X-RateLimit-Remaining",
        "-1", "X-RateLimit-Reset", "tomorrow", NULL);
    assert_int_equal(h.retry_at_ms, 0);
    assert_no_budget(&h);
}

static void
test_random_bytes_never_crash(void **state)
{
    (void)state;
    static const char *const names[] = {
        "Retry-After",      "retry-after-ms",    "RateLimit",
        "RateLimit-Policy", "X-RateLimit-Reset", "Date",
    };
    static const char alphabet[] = "0123456789;=,\"\\ t r q w.-:GMTabcZ";
    uint32_t seed = 12345;
    char value[64];

    for (int round = 0; round < 20000; round++) {
        size_t len = 0;
        seed = seed * 1103515245u + 12345u; /* fixed LCG: reproducible */
        len = (seed >> 16) % (sizeof(value) - 1);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            value[i] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
        }
        value[len] = '\0';
        struct hints h = hints_of(names[round % 6], value, NULL);
        /* Whatever it made of it, a hint is never in the past. */
        assert_true(h.retry_at_ms == 0 || h.retry_at_ms >= NOW);
    }
}

static void
test_http_date_all_three_forms(void **state)
{
    (void)state;
    static const char *const forms[] = {
        "Sun, 06 Nov 1994 08:49:37 GMT",  /* IMF-fixdate */
        "Sunday, 06-Nov-94 08:49:37 GMT", /* RFC 850 */
        "Sun Nov  6 08:49:37 1994",       /* asctime */
    };
    for (size_t i = 0; i < 3; i++) {
        int64_t ms = 0;
        assert_int_equal(hints_parse_http_date(forms[i], &ms), 0);
        assert_int_equal(ms, 784111777LL * 1000);
    }
}

static void
test_http_date_rejects_bad_dates(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 GMT x",
        "Sun, 29 Feb 2023 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov  6 08:49:37",
        "Sun, 06 Nov 1994 08:60:37 GMT",
        "06 Nov 1994 08:49:37 GMT",
    };
    int64_t ms;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (hints_parse_http_date(bad[i], &ms) != -EINVAL)
            fail_msg("accepted '%s'", bad[i]);
    }
    assert_int_equal(
        hints_parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT", &ms), 0);
}

static void
test_iso8601_forms(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t ms;
    } good[] = {
        {"2025-10-23T10:30:00.000Z", 1761215400000LL},
        {"2025-10-23T10:30:00Z", 1761215400000LL},
        {"2025-10-23t10:30:00z", 1761215400000LL},
        {"2025-10-23T10:30:00.5Z", 1761215400500LL},
        {"2025-10-23T10:30:00.123456789Z", 1761215400123LL},
        {"2025-10-23T12:30:00+02:00", 1761215400000LL},
        {"2025-10-23T05:30:00-0500", 1761215400000LL},
        {"2025-10-23T10:30:00.250+00:00", 1761215400250LL},
    };
    static const char *const bad[] = {
        "",
        "2025-10-23",
        "2025-10-23T10:30:00",
        "2025-13-01T00:00:00Z",
        "2025-02-30T00:00:00Z",
        "2025-10-23T10:30:00Zjunk",
        "2025-10-23T10:30Z",
        "2025-10-23T10:30:00.Z",
        "25-10-23T10:30:00Z",
        "2025-10-23T10:30:00+2",
        "2025-10-23T24:00:00Z",
    };
    int64_t ms;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ms = 0;
        if (hints_parse_iso8601(good[i].s, &ms) != 0)
            fail_msg("rejected '%s'", good[i].s);
        assert_int_equal(ms, good[i].ms);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (hints_parse_iso8601(bad[i], &ms) != -EINVAL)
            fail_msg("accepted '%s'", bad[i]);
    }
}

static void
test_parse_retry_after_clamps_and_rejects(void **state)
{
    (void)state;
    int64_t d = -1;

    assert_int_equal(hints_parse_retry_after("7", 0, &d), 0);
    assert_int_equal(d, 7000);
    assert_int_equal(
        hints_parse_retry_after(DATE_HDR, DATE_S * 1000 - 1500, &d), 0);
    assert_int_equal(d, 1500);
    assert_int_equal(hints_parse_retry_after(DATE_HDR, DATE_S * 1000 + 1, &d),
                     0);
    assert_int_equal(d, 0);
    assert_int_equal(hints_parse_retry_after("later", 0, &d), -EINVAL);
    assert_int_equal(hints_parse_retry_after("-1", 0, &d), -EINVAL);
}

static void
test_openai_durations(void **state)
{
    (void)state;
    int64_t ms = -1;

    assert_int_equal(hints_parse_duration("6m0s", &ms), 0);
    assert_int_equal(ms, 360000);
    assert_int_equal(hints_parse_duration("1.5s", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(hints_parse_duration("20ms", &ms), 0);
    assert_int_equal(ms, 20);
    assert_int_equal(hints_parse_duration("1h2m3.5s", &ms), 0);
    assert_int_equal(ms, 3723500);
    assert_int_equal(hints_parse_duration("2m30.25s", &ms), 0);
    assert_int_equal(ms, 150250);
    assert_int_equal(hints_parse_duration("0.4ms", &ms), 0);
    assert_int_equal(ms, 1); /* rounded up */
    const char *bad[] = {"", "s", "6", "6x", "1s2m", "1s1s", "-1s", "1.s",
                         "1 s", "1m 2s"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        assert_int_equal(hints_parse_duration(bad[i], &ms), -EINVAL);
}

static void
test_openai_token_headers(void **state)
{
    (void)state;
    struct hints h = hints_of("x-ratelimit-limit-tokens", "90000",
                              "x-ratelimit-remaining-tokens", "1500",
                              "x-ratelimit-reset-tokens", "6m0s",
                              "x-ratelimit-limit-requests", "500", NULL);

    assert_int_equal(h.tok_limit, 90000);
    assert_int_equal(h.tok_remaining, 1500);
    assert_int_equal(h.tok_reset_ms, NOW + 360000);
    /* Token headers are not request budgets. */
    assert_int_equal(h.rl_remaining, -1);

    h = hints_of("x-ratelimit-reset-tokens", "1.5", NULL);
    assert_int_equal(h.tok_reset_ms, NOW + 1500);
    assert_int_equal(h.tok_limit, -1);
    assert_int_equal(h.tok_remaining, -1);
    h = hints_of("x-ratelimit-reset-tokens", "soon", NULL);
    assert_int_equal(h.tok_reset_ms, 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_headers_no_hints),
        cmocka_unit_test(test_retry_after_ms_fractional_rounds_up),
        cmocka_unit_test(test_retry_after_delta_seconds),
        cmocka_unit_test(test_retry_after_date_is_relative_to_response_date),
        cmocka_unit_test(
            test_retry_after_date_without_date_header_uses_our_clock),
        cmocka_unit_test(test_retry_after_date_in_the_past_means_now),
        cmocka_unit_test(test_latest_retry_hint_wins),
        cmocka_unit_test(test_ratelimit_draft7_dictionary),
        cmocka_unit_test(test_ratelimit_draft8_structured),
        cmocka_unit_test(test_ratelimit_with_requests_left_is_no_retry_hint),
        cmocka_unit_test(test_tightest_of_several_policies_and_limits),
        cmocka_unit_test(test_x_ratelimit_epoch_reset_uses_response_date),
        cmocka_unit_test(test_x_ratelimit_epoch_reset_already_past_means_now),
        cmocka_unit_test(test_x_ratelimit_delta_reset),
        cmocka_unit_test(test_retry_hint_is_latest_across_all_sources),
        cmocka_unit_test(test_far_hints_are_capped_at_a_day),
        cmocka_unit_test(test_garbage_is_ignored),
        cmocka_unit_test(test_random_bytes_never_crash),
        cmocka_unit_test(test_http_date_all_three_forms),
        cmocka_unit_test(test_http_date_rejects_bad_dates),
        cmocka_unit_test(test_iso8601_forms),
        cmocka_unit_test(test_parse_retry_after_clamps_and_rejects),
        cmocka_unit_test(test_openai_durations),
        cmocka_unit_test(test_openai_token_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
