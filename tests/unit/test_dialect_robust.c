/*
 * test_dialect_robust: bodies no provider documents. Every dialect, as a
 * submission and as a poll, at 200, 429 and 500, against empty, "null",
 * "[]", wrongly typed, truncated, binary, 1 MiB and 10,000-deep bodies:
 * the outcome is a failure of the status class (non-2xx) or a protocol
 * failure or a success whose result is valid JSON (2xx), never a crash,
 * and never more text than the outcome's caps. Run it under ASan/UBSan.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "sluice/dialect.h"
#include "sluice/http.h"

#define NOW 1761215355000LL
/* 1 MiB: far past any error body, well under the 8 MiB response cap. */
#define HUGE_LEN (1024 * 1024)
/* Five times jansson's parser depth limit (2048). */
#define DEEP 10000

static const char *const dialect_list[] = {
    "flora", "openai", "graphql", "flymyai", "firemoon", "problem", "generic",
};

static void
classify_body(const char *dialect, bool poll, int status, const char *body,
              size_t len, struct outcome *o)
{
    struct http_response r;

    memset(&r, 0, sizeof(r));
    r.status = status;
    r.body = (char *)body;
    r.body_len = len;
    dialect_classify(dialect_find(dialect), &r, poll, NOW, NULL, o);
}

static void
assert_valid_json(const char *text)
{
    json_t *j;

    assert_non_null(text);
    j = json_loads(text, JSON_DECODE_ANY, NULL);
    if (j == NULL)
        fail_msg("result is not JSON: %.80s", text);
    json_decref(j);
}

/* The invariant of every dialect on any body. */
static void
assert_sane(const char *dialect, bool poll, int status, const char *body,
            size_t len)
{
    struct outcome o;

    classify_body(dialect, poll, status, body, len, &o);
    assert_true(strlen(o.code) < OUTCOME_CODE_MAX);
    assert_true(strlen(o.message) < OUTCOME_MESSAGE_MAX);
    if (o.fields != NULL)
        assert_valid_json(o.fields);
    if (status >= 300) {
        assert_int_equal(o.kind, OUTCOME_FAILURE);
        assert_int_equal(o.cls, dialect_class_for_status(status));
    } else if (o.kind == OUTCOME_FAILURE) {
        /* A 2xx may only fail as a readable failure the dialect knows
         * (GraphQL errors, a failed run) or as protocol. */
        assert_int_not_equal(o.cls, ERR_NONE);
    } else if (o.kind == OUTCOME_SUCCESS) {
        assert_int_equal(o.cls, ERR_NONE);
        assert_valid_json(o.result);
    } else if (!poll) {
        /* An accepted submission must say where to poll; a poll may leave
         * both out (the job keeps the ones it has). */
        assert_non_null(o.remote_id);
        assert_non_null(o.poll_url);
    }
    if (o.result != NULL)
        assert_valid_json(o.result);
    outcome_clear(&o);
}

static void
assert_sane_everywhere(const char *body, size_t len)
{
    static const int statuses[] = {200, 429, 500};

    for (size_t d = 0; d < sizeof(dialect_list) / sizeof(dialect_list[0]);
         d++) {
        for (size_t s = 0; s < sizeof(statuses) / sizeof(statuses[0]); s++) {
            assert_sane(dialect_list[d], false, statuses[s], body, len);
            assert_sane(dialect_list[d], true, statuses[s], body, len);
        }
    }
}

static void
test_small_garbage_bodies_never_crash(void **state)
{
    static const char *const bodies[] = {
        "",
        "null",
        "[]",
        "{}",
        "0",
        "\"str\"",
        "true",
        "{\"error\":5}",
        "{\"error\":\"\"}",
        "{\"error\":{\"code\":{},\"message\":[]}}",
        "{\"error\":{\"fields\":\"prompt\"}}",
        "{\"error\":{\"fields\":[1,null,{\"field\":3}]}}",
        "{\"error\":{\"code\":1e308,\"type\":null}}",
        "{\"detail\":[]}",
        "{\"detail\":[5]}",
        "{\"detail\":{\"loc\":1}}",
        "{\"detail\":[{\"loc\":\"body\",\"msg\":7,\"type\":[]}]}",
        "{\"detail\":[{\"loc\":[null,{},-1,\"x\"]}]}",
        "{\"errors\":null}",
        "{\"errors\":[]}",
        "{\"errors\":[null]}",
        "{\"errors\":{}}",
        "{\"errors\":\"boom\"}",
        "{\"errors\":[{\"extensions\":\"x\",\"path\":{}}],\"data\":5}",
        "{\"errors\":[1],\"data\":[1,2]}",
        "{\"run_id\":{},\"status\":\"pending\"}",
        "{\"run_id\":\"r\",\"status\":7}",
        "{\"runId\":\"r\",\"status\":\"pending\",\"pollUrl\":3}",
        "{\"run_id\":\"\",\"status\":\"pending\"}",
        "{\"run_id\":-5,\"status\":\"completed\",\"charged_cost\":\"x\"}",
        "{\"run_id\":\"r\",\"status\":\"failed\",\"error_code\":[]}",
        "{\"error\":\"x\",\"resetAt\":\"not a date\",\"details\":[[]]}",
        "{\"error\":\"x\",\"resetAt\":5,\"errors\":{\"a\":{\"b\":1}}}",
        "{\"type\":5,\"title\":[],\"detail\":{}}",
        "{\"type\":\"about:blank\"}",
        "{\"invalid-params\":[{\"name\":1}],\"title\":\"t\"}",
        "{\"error\":{\"code\":\"x\"",
        "{\"run_id\":\"r\",\"sta",
        "[[[[",
        "\"unterminated",
        "{\"a\":\"\\ud800\"}",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        assert_sane_everywhere(bodies[i], strlen(bodies[i]));
}

static void
test_binary_body_with_nuls_and_invalid_utf8(void **state)
{
    static const char body[] = "{\"error\":{\"code\":\"a\0b\",\"message\":"
                               "\"\xff\xfe\"}}\0\x01\x80";

    (void)state;
    assert_sane_everywhere(body, sizeof(body) - 1);
}

static void
test_generic_2xx_with_nul_bytes_stores_readable_json(void **state)
{
    static const char body[] = "\n{\"run_id\":\0\0\"r\"}";
    struct outcome o;
    json_t *j;

    (void)state;
    classify_body("generic", false, 200, body, sizeof(body) - 1, &o);
    assert_int_equal(o.kind, OUTCOME_SUCCESS);
    j = json_loads(o.result, JSON_DECODE_ANY, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(j), "{\"run_id\":??\"r\"}");
    json_decref(j);
    outcome_clear(&o);
}

/* Found by fuzz_dialect: jansson reads past a raw NUL, so a body that was
 * JSON but for one NUL passed the check and was stored cut at the NUL,
 * no longer JSON. Such a body is bad JSON for every dialect that wants
 * JSON, and whatever is stored is JSON. */
static void
test_2xx_json_with_a_raw_nul_is_bad_json(void **state)
{
    static const char body[] =
        "{\"run_id\":\"run_1\",\"status\":\"completed\","
        "\"charged_cost\":0.4\0}";
    static const char *const names[] = {"flora", "openai", "graphql",
                                        "flymyai", "firemoon", "problem"};
    struct outcome o;

    (void)state;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        classify_body(names[i], false, 200, body, sizeof(body) - 1, &o);
        assert_int_equal(o.cls, ERR_PROTOCOL);
        assert_string_equal(o.code, "bad_json");
        assert_null(o.result);
        outcome_clear(&o);
    }
}

static void
test_empty_2xx_is_bad_json_except_generic(void **state)
{
    struct outcome o;

    (void)state;
    classify_body("flora", false, 200, "", 0, &o);
    assert_int_equal(o.cls, ERR_PROTOCOL);
    assert_string_equal(o.code, "bad_json");
    outcome_clear(&o);
    classify_body("generic", false, 204, "", 0, &o);
    assert_int_equal(o.kind, OUTCOME_SUCCESS);
    assert_string_equal(o.result, "\"\"");
    outcome_clear(&o);
}

static void
test_truncated_2xx_json_keeps_readable_excerpt(void **state)
{
    static const char body[] = "{\"id\":\"chatcmpl-1\",\n  \"choi";
    struct outcome o;

    (void)state;
    classify_body("openai", false, 200, body, strlen(body), &o);
    assert_int_equal(o.kind, OUTCOME_FAILURE);
    assert_int_equal(o.cls, ERR_PROTOCOL);
    assert_string_equal(o.code, "bad_json");
    assert_string_equal(o.message, "{\"id\":\"chatcmpl-1\", \"choi");
    assert_null(o.result);
    outcome_clear(&o);
}

static void
test_json_that_is_not_an_object_is_unexpected_body(void **state)
{
    struct outcome o;

    (void)state;
    classify_body("firemoon", false, 200, "[]", 2, &o);
    assert_int_equal(o.cls, ERR_PROTOCOL);
    assert_string_equal(o.code, "unexpected_body");
    outcome_clear(&o);
    classify_body("graphql", false, 200, "null", 4, &o);
    assert_int_equal(o.cls, ERR_PROTOCOL);
    outcome_clear(&o);
}

static void
test_number_as_error_is_printed_as_code(void **state)
{
    struct outcome o;

    (void)state;
    classify_body("openai", false, 400, "{\"error\":5}", 11, &o);
    assert_int_equal(o.cls, ERR_INVALID_REQUEST);
    assert_string_equal(o.code, "5");
    outcome_clear(&o);
    classify_body("flora", false, 500, "{\"error\":{\"code\":42}}", 21, &o);
    assert_int_equal(o.cls, ERR_SERVER_ERROR);
    assert_string_equal(o.code, "42");
    outcome_clear(&o);
}

static void
test_one_mib_of_x_is_capped_excerpt(void **state)
{
    char *body = malloc(HUGE_LEN);
    struct outcome o;

    (void)state;
    memset(body, 'x', HUGE_LEN);
    classify_body("flora", false, 500, body, HUGE_LEN, &o);
    assert_int_equal(o.cls, ERR_SERVER_ERROR);
    assert_int_equal(strlen(o.message), OUTCOME_MESSAGE_MAX - 1);
    assert_int_equal(o.message[0], 'x');
    outcome_clear(&o);
    classify_body("generic", false, 200, body, HUGE_LEN, &o);
    assert_int_equal(o.kind, OUTCOME_SUCCESS);
    assert_int_equal(strlen(o.result), HUGE_LEN + 2);
    outcome_clear(&o);
    assert_sane_everywhere(body, HUGE_LEN);
    free(body);
}

static void
test_huge_code_message_and_fields_are_capped(void **state)
{
    /* 200 fields of 1 KiB names and messages, a 4 KiB code. */
    struct text {
        char *p;
        size_t n;
    } b = {malloc(1 << 20), 0};
    struct outcome o;
    json_t *fields;

    (void)state;
    b.n += (size_t)sprintf(b.p, "{\"error\":{\"code\":\"");
    memset(b.p + b.n, 'c', 4096);
    b.n += 4096;
    b.n += (size_t)sprintf(b.p + b.n, "\",\"fields\":[");
    for (int i = 0; i < 200; i++) {
        b.n += (size_t)sprintf(b.p + b.n, "%s{\"field\":\"", i ? "," : "");
        memset(b.p + b.n, 'f', 1024);
        b.n += 1024;
        b.n += (size_t)sprintf(b.p + b.n, "\",\"message\":\"");
        memset(b.p + b.n, 'm', 1024);
        b.n += 1024;
        b.n += (size_t)sprintf(b.p + b.n, "\"}");
    }
    b.n += (size_t)sprintf(b.p + b.n, "]}}");
    classify_body("flora", false, 422, b.p, b.n, &o);
    assert_int_equal(strlen(o.code), OUTCOME_CODE_MAX - 1);
    fields = json_loads(o.fields, 0, NULL);
    assert_non_null(fields);
    assert_true(json_array_size(fields) <= 64);
    assert_true(json_array_size(fields) > 0);
    assert_true(strlen(json_string_value(
                    json_object_get(json_array_get(fields, 0), "message"))) <
                OUTCOME_MESSAGE_MAX);
    json_decref(fields);
    outcome_clear(&o);
    free(b.p);
}

static void
test_ten_thousand_deep_nesting_is_unreadable_not_a_crash(void **state)
{
    char *body = malloc(2 * DEEP + 16);
    size_t n = 0;
    struct outcome o;

    (void)state;
    n += (size_t)sprintf(body, "{\"error\":");
    for (int i = 0; i < DEEP; i++)
        body[n++] = '[';
    for (int i = 0; i < DEEP; i++)
        body[n++] = ']';
    body[n++] = '}';
    body[n] = '\0';
    classify_body("flora", false, 200, body, n, &o);
    assert_int_equal(o.cls, ERR_PROTOCOL);
    assert_string_equal(o.code, "bad_json");
    outcome_clear(&o);
    classify_body("openai", false, 503, body, n, &o);
    assert_int_equal(o.cls, ERR_UNAVAILABLE);
    assert_string_equal(o.code, "");
    outcome_clear(&o);
    assert_sane_everywhere(body, n);
    free(body);
}

static void
test_null_body_pointer_is_an_empty_body(void **state)
{
    struct outcome o;

    (void)state;
    classify_body("graphql", false, 502, NULL, 0, &o);
    assert_int_equal(o.cls, ERR_SERVER_ERROR);
    assert_string_equal(o.message, "");
    outcome_clear(&o);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_garbage_bodies_never_crash),
        cmocka_unit_test(test_binary_body_with_nuls_and_invalid_utf8),
        cmocka_unit_test(test_generic_2xx_with_nul_bytes_stores_readable_json),
        cmocka_unit_test(test_2xx_json_with_a_raw_nul_is_bad_json),
        cmocka_unit_test(test_empty_2xx_is_bad_json_except_generic),
        cmocka_unit_test(test_truncated_2xx_json_keeps_readable_excerpt),
        cmocka_unit_test(test_json_that_is_not_an_object_is_unexpected_body),
        cmocka_unit_test(test_number_as_error_is_printed_as_code),
        cmocka_unit_test(test_one_mib_of_x_is_capped_excerpt),
        cmocka_unit_test(test_huge_code_message_and_fields_are_capped),
        cmocka_unit_test(
            test_ten_thousand_deep_nesting_is_unreadable_not_a_crash),
        cmocka_unit_test(test_null_body_pointer_is_an_empty_body),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
