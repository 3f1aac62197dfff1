/*
 * outcome: init's "unknown" hints, the verdict beating the class default,
 * and outcome_fail's safe truncation (never half a UTF-8 character).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/outcome.h"
#include "sluice/xmalloc.h"

static void
test_init_zeroes_and_marks_hints_unknown(void **state)
{
    (void)state;
    struct outcome o;

    memset(&o, 0xA5, sizeof(o));
    outcome_init(&o);
    assert_int_equal(o.kind, OUTCOME_SUCCESS);
    assert_int_equal(o.cls, ERR_NONE);
    assert_int_equal(o.http_status, 0);
    assert_string_equal(o.code, "");
    assert_string_equal(o.message, "");
    assert_string_equal(o.request_id, "");
    assert_int_equal(o.verdict, VERDICT_DEFAULT);
    assert_int_equal(o.hints.retry_at_ms, 0);
    assert_int_equal(o.hints.rl_limit, -1);
    assert_int_equal(o.hints.rl_remaining, -1);
    assert_int_equal(o.hints.rl_reset_ms, 0);
    assert_int_equal(o.hints.rl_window_ms, 0);
    assert_null(o.fields);
    assert_null(o.result);
    assert_null(o.remote_id);
    assert_null(o.poll_url);
    assert_false(o.has_cost);
}

static void
test_clear_frees_owned_strings_and_allows_reuse(void **state)
{
    (void)state;
    struct outcome o;

    outcome_init(&o);
    o.fields = xstrdup("[]");
    o.result = xstrdup("{}");
    o.remote_id = xstrdup("run_1");
    o.poll_url = xstrdup("/runs/run_1");
    outcome_clear(&o);
    assert_null(o.fields);
    assert_null(o.result);
    assert_null(o.remote_id);
    assert_null(o.poll_url);
    outcome_clear(&o); /* twice is harmless */
    outcome_clear(NULL);
}

static void
test_explicit_verdict_beats_class_default(void **state)
{
    (void)state;
    static const struct {
        enum err_class cls;
        enum verdict v;
        bool retryable;
    } cases[] = {
        {ERR_SERVER_ERROR, VERDICT_DEFAULT, true},
        {ERR_INVALID_REQUEST, VERDICT_DEFAULT, false},
        {ERR_INVALID_REQUEST, VERDICT_RETRY, true},
        {ERR_SERVER_ERROR, VERDICT_NO_RETRY, false},
        {ERR_RATE_LIMITED, VERDICT_DEFAULT, true},
        {ERR_SAFETY_BLOCKED, VERDICT_DEFAULT, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct outcome o;
        outcome_init(&o);
        outcome_fail(&o, cases[i].cls, "c", "m");
        o.verdict = cases[i].v;
        assert_int_equal(outcome_retryable(&o), cases[i].retryable);
    }
}

static void
test_fail_sets_class_code_and_message(void **state)
{
    (void)state;
    struct outcome o;

    outcome_init(&o);
    outcome_fail(&o, ERR_RATE_LIMITED, "rate_limit_exceeded", "slow down");
    assert_int_equal(o.kind, OUTCOME_FAILURE);
    assert_int_equal(o.cls, ERR_RATE_LIMITED);
    assert_string_equal(o.code, "rate_limit_exceeded");
    assert_string_equal(o.message, "slow down");

    outcome_fail(&o, ERR_PROTOCOL, NULL, NULL);
    assert_string_equal(o.code, "");
    assert_string_equal(o.message, "");
}

static void
test_fail_truncates_long_text(void **state)
{
    (void)state;
    char code[OUTCOME_CODE_MAX * 2];
    char message[OUTCOME_MESSAGE_MAX * 3];
    struct outcome o;

    memset(code, 'c', sizeof(code) - 1);
    code[sizeof(code) - 1] = '\0';
    memset(message, 'm', sizeof(message) - 1);
    message[sizeof(message) - 1] = '\0';
    outcome_init(&o);
    outcome_fail(&o, ERR_SERVER_ERROR, code, message);
    assert_int_equal(strlen(o.code), OUTCOME_CODE_MAX - 1);
    assert_int_equal(strlen(o.message), OUTCOME_MESSAGE_MAX - 1);
    assert_int_equal(o.message[OUTCOME_MESSAGE_MAX - 2], 'm');
}

static void
test_fail_never_cuts_a_utf8_character(void **state)
{
    (void)state;
    /* "é" is 2 bytes, "€" 3, "😀" 4: place each so it straddles the cut. */
    static const char *const chars[] = {"\xC3\xA9", "\xE2\x82\xAC",
                                        "\xF0\x9F\x98\x80"};
    for (size_t i = 0; i < 3; i++) {
        size_t clen = strlen(chars[i]);
        for (size_t shift = 1; shift < clen; shift++) {
            char code[OUTCOME_CODE_MAX + 8];
            size_t start = OUTCOME_CODE_MAX - 1 - shift;
            struct outcome o;

            memset(code, 'a', start);
            memcpy(code + start, chars[i], clen);
            strcpy(code + start + clen, "zz");
            outcome_init(&o);
            outcome_fail(&o, ERR_SERVER_ERROR, code, "m");
            /* The whole character is dropped, nothing after it kept. */
            assert_int_equal(strlen(o.code), start);
        }
        /* A character that ends exactly at the limit is kept. */
        char code[OUTCOME_CODE_MAX + 8];
        size_t start = OUTCOME_CODE_MAX - 1 - clen;
        struct outcome o;
        memset(code, 'a', start);
        memcpy(code + start, chars[i], clen);
        strcpy(code + start + clen, "zz");
        outcome_init(&o);
        outcome_fail(&o, ERR_SERVER_ERROR, code, "m");
        assert_int_equal(strlen(o.code), OUTCOME_CODE_MAX - 1);
        assert_memory_equal(o.code + start, chars[i], clen);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_zeroes_and_marks_hints_unknown),
        cmocka_unit_test(test_clear_frees_owned_strings_and_allows_reuse),
        cmocka_unit_test(test_explicit_verdict_beats_class_default),
        cmocka_unit_test(test_fail_sets_class_code_and_message),
        cmocka_unit_test(test_fail_truncates_long_text),
        cmocka_unit_test(test_fail_never_cuts_a_utf8_character),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
