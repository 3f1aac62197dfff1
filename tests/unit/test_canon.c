/*
 * canon: the one-pass reader against the reference it replaces, jansson's
 * loadb and sorted compact dump (jobspec_parse_jansson). Every body here is
 * read by both: canon must accept it and write the very bytes jansson
 * writes, and jobspec_parse must give the job jobspec_parse_jansson gives
 * (the idempotency key is a hash of the body, so one byte off is a
 * different job). Lines canon leaves to jansson must still come out as
 * jansson has them, errors included.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/canon.h"
#include "sluice/config.h"
#include "sluice/jobspec.h"
#include "sluice/xmalloc.h"

static struct provider_config providers[] = {
    {.name = "flora",
     .base_url = "https://app.flora.ai/api/v1",
     .max_attempts = 5},
    {.name = "local", .base_url = "http://127.0.0.1:8080", .max_attempts = 3},
};
static const struct config config = {
    .providers = providers,
    .nproviders = sizeof(providers) / sizeof(providers[0]),
};
static const struct jobspec_opts opts = {.config = &config,
                                         .provider = "flora"};

static void
assert_same_string(const char *a, const char *b, const char *line)
{
    if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0))
        fail_msg("%s: \"%s\" vs jansson's \"%s\"", line, a ? a : "(null)",
                 b ? b : "(null)");
}

/* jobspec_parse and jobspec_parse_jansson agree on line: the same result,
 * the same job field by field, or the same error. */
static void
assert_parses_as_jansson(const char *line, size_t len)
{
    struct jobspec a, b;
    char ea[256] = "", eb[256] = "";
    int ra = jobspec_parse(line, len, &opts, &a, ea, sizeof(ea));
    int rb = jobspec_parse_jansson(line, len, &opts, &b, eb, sizeof(eb));

    if (ra != rb)
        fail_msg("%s: %d (%s) vs jansson's %d (%s)", line, ra, ea, rb, eb);
    if (ra < 0) {
        assert_same_string(ea, eb, line);
        return;
    }
    assert_same_string(a.provider, b.provider, line);
    assert_same_string(a.batch, b.batch, line);
    assert_same_string(a.custom_id, b.custom_id, line);
    assert_same_string(a.method, b.method, line);
    assert_same_string(a.path, b.path, line);
    assert_same_string(a.body, b.body, line);
    assert_same_string(a.idempotency_key, b.idempotency_key, line);
    assert_int_equal(a.priority, b.priority);
    assert_int_equal(a.max_attempts, b.max_attempts);
    jobspec_clear(&a);
    jobspec_clear(&b);
}

/* canon itself reads {"url":"/x","body":BODY} and writes the body as
 * jansson does (not by falling back to it). */
static void
assert_canon_matches(struct canon *c, const char *body)
{
    char *line = xasprintf("{\"url\":\"/x\",\"body\":%s}", body);
    struct canon_member m[4];
    struct jobspec ref;
    char err[256] = "";
    size_t n;

    if (canon_object(c, line, strlen(line), m, 4, &n) < 0)
        fail_msg("canon refused %s", line);
    assert_int_equal(n, 2);
    assert_string_equal(m[1].key, "body");
    if (jobspec_parse_jansson(line, strlen(line), &opts, &ref, err,
                              sizeof(err)) < 0)
        fail_msg("jansson refused %s: %s", line, err);
    if (ref.body == NULL || strcmp(m[1].text, ref.body) != 0 ||
        m[1].text_len != strlen(ref.body))
        fail_msg("%s: canon \"%s\", jansson \"%s\"", body, m[1].text,
                 ref.body ? ref.body : "(null)");
    jobspec_clear(&ref);
    assert_parses_as_jansson(line, strlen(line));
    free(line);
}

static void
test_bodies_of_every_shape_match_jansson(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "{}",
        "{\"b\":1,\"a\":2}",
        "{\"z\":{\"y\":{\"x\":[],\"w\":{}},\"a\":[{\"d\":1,\"c\":2}]},"
        "\"m\":null}",
        " { \"b\" :\t[ 1 ,\n2 ,\r3 ] , \"a\" : { } } ",
        "{\"ab\":1,\"a\":2,\"b\":3,\"\":4,\"B\":5,\"aa\":6}",
        "{\"\xc3\xa9\":1,\"e\":2,\"\\u00e8\":3,\"\xf0\x9f\x98\x80\":4,"
        "\"~\":5}",
        "{\"s\":\"caf\\u00e9 \\u20AC \\ud83d\\ude00 \\uD83D\\uDE00\"}",
        "{\"s\":\"raw caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 "
        "\xe2\x80\xa8\"}",
        "{\"s\":\"\\\" \\\\ \\/ / \\b \\f \\n \\r \\t\"}",
        "{\"s\":\"\\u0001\\u001f\\u001F\\u0008\\u000a\\u007f\x7f\"}",
        "{\"s\":\"\\u0022\\u005c\\u002f\"}",
        "{\"\\n\\\"key\\\"\":\"v\"}",
        "{\"t\":true,\"f\":false,\"n\":null}",
        "{\"i\":[0,-0,1,-1,9223372036854775807,-9223372036854775808]}",
        "{\"r\":[0.0,-0.0,1.0,1e2,1E2,1e+2,1E-2,1.5e-7,1e300,-2.25]}",
        "{\"r\":[0.1,0.123456789,3.0]}",
        "{\"r\":0.30000000000000004,\"s\":0.1}",
        "{\"r\":[5e-324,2.2250738585072014e-308,1.7976931348623157e308]}",
        "{\"r\":1e-400,\"s\":-1e-400}",
        "{\"r\":123456789012345678901234567890.5}",
        "{\"r\":[1e21,1e22,123456.7,1234567.0,0.0001,0.00001]}",
        "{\"temperature\":0.7,\"top_p\":0.95,\"max_tokens\":256}",
        "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
        "}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Say \\\"hi\\\"\\n"
        "twice\"}],\"model\":\"gpt-4o-mini\"}",
    };
    struct canon c = {0};

    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        assert_canon_matches(&c, bodies[i]);
    canon_free(&c);
}

/* A small deterministic generator (xorshift), so a failure reproduces. */
static uint64_t rng = 0x9e3779b97f4a7c15u;

static unsigned
rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

static void
gen_ws(struct buf *b)
{
    static const char *const ws[] = {"", "", "", " ", "\t", "\n", "\r\n", "  "};
    const char *w = ws[rnd(8)];
    buf_append(b, w, strlen(w));
}

/* One code point of a string, spelled raw, by name or as \u. */
static void
gen_char(struct buf *b)
{
    static const uint32_t cps[] = {'a',    'Z',    '0',     ' ',      '"',
                                   '\\',   '/',    '\n',    '\t',     0x01,
                                   0x1f,   0x7f,   0xe9,    0x20ac,   0x2028,
                                   0xfeff, 0xffff, 0x1f600, 0x10ffff, '~'};
    uint32_t cp = cps[rnd(sizeof(cps) / sizeof(cps[0]))];
    char u[16];

    if (cp < 0x20 || cp == '"' || cp == '\\' || rnd(3) == 0) {
        if (cp == '\n' && rnd(2)) {
            buf_append(b, "\\n", 2);
        } else if (cp == '/' && rnd(2)) {
            buf_append(b, "\\/", 2);
        } else if (cp == '"' && rnd(2)) {
            buf_append(b, "\\\"", 2);
        } else if (cp == '\\' && rnd(2)) {
            buf_append(b, "\\\\", 2);
        } else if (cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            snprintf(u, sizeof(u), rnd(2) ? "\\u%04x\\u%04x" : "\\u%04X\\u%04X",
                     0xd800 | (v >> 10), 0xdc00 | (v & 0x3ff));
            buf_append(b, u, strlen(u));
        } else {
            snprintf(u, sizeof(u), rnd(2) ? "\\u%04x" : "\\u%04X", cp);
            buf_append(b, u, strlen(u));
        }
        return;
    }
    if (cp < 0x80) {
        u[0] = (char)cp;
        buf_append(b, u, 1);
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        buf_append(b, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        buf_append(b, u, 3);
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        buf_append(b, u, 4);
    }
}

static void
gen_number(struct buf *b)
{
    static const char *const ints[] = {"0",
                                       "-0",
                                       "7",
                                       "-12",
                                       "1000000",
                                       "9223372036854775807",
                                       "-9223372036854775808"};
    if (rnd(3) == 0) {
        buf_appendf(b, "%s", ints[rnd(sizeof(ints) / sizeof(ints[0]))]);
        return;
    }
    if (rnd(2))
        buf_append(b, "-", 1);
    buf_appendf(b, "%u", rnd(4) ? rnd(1000) : rnd(100000000));
    if (rnd(2))
        buf_appendf(b, ".%0*u", (int)rnd(6) + 1, rnd(1000000));
    if (rnd(2))
        buf_appendf(b, "%s%s%d", rnd(2) ? "e" : "E",
                    rnd(3) == 0 ? "+" : (rnd(2) ? "-" : ""),
                    (int)rnd(rnd(4) ? 30 : 300));
}

static void gen_value(struct buf *b, int depth);

/* An object of distinct keys (the pool's keys are distinct once decoded)
 * in a random order, each spelled as it reads or with escapes. */
static void
gen_object(struct buf *b, int depth)
{
    static const char *const keys[] = {"a",
                                       "b",
                                       "ab",
                                       "B",
                                       "model",
                                       "",
                                       "\xc3\xa9",
                                       "e",
                                       "~",
                                       "a b",
                                       "\xf0\x9f\x98\x80",
                                       "k\\\"q"};
    static const char *const spelled[] = {
        "a",           "\\u0062",   "a\\u0062",       "B",
        "mod\\u0065l", "",          "\\u00E9",        "e",
        "~",           "a\\u0020b", "\\ud83d\\ude00", "k\\\"q"};
    size_t nkeys = sizeof(keys) / sizeof(keys[0]);
    bool used[sizeof(keys) / sizeof(keys[0])] = {false};
    unsigned n = rnd(5);

    buf_append(b, "{", 1);
    for (unsigned i = 0; i < n; i++) {
        size_t k = rnd((unsigned)nkeys);
        while (used[k])
            k = (k + 1) % nkeys;
        used[k] = true;
        if (i > 0)
            buf_append(b, ",", 1);
        gen_ws(b);
        buf_appendf(b, "\"%s\"", rnd(2) ? keys[k] : spelled[k]);
        gen_ws(b);
        buf_append(b, ":", 1);
        gen_ws(b);
        gen_value(b, depth + 1);
        gen_ws(b);
    }
    buf_append(b, "}", 1);
}

static void
gen_value(struct buf *b, int depth)
{
    unsigned kind = rnd(depth < 4 ? 8 : 5);

    switch (kind) {
    case 0:
        buf_appendf(b, "%s", rnd(3) == 0 ? "null" : rnd(2) ? "true" : "false");
        break;
    case 1:
    case 2:
        gen_number(b);
        break;
    case 3:
    case 4:
        buf_append(b, "\"", 1);
        for (unsigned i = rnd(8); i > 0; i--)
            gen_char(b);
        buf_append(b, "\"", 1);
        break;
    case 5:
    case 6:
        gen_object(b, depth);
        break;
    default:
        buf_append(b, "[", 1);
        for (unsigned i = 0, n = rnd(4); i < n; i++) {
            if (i > 0)
                buf_append(b, ",", 1);
            gen_ws(b);
            gen_value(b, depth + 1);
            gen_ws(b);
        }
        buf_append(b, "]", 1);
    }
}

static void
test_random_bodies_match_jansson(void **state)
{
    (void)state;
    struct canon c = {0};
    struct buf b = {0};

    for (int i = 0; i < 5000; i++) {
        buf_reset(&b);
        gen_object(&b, 0);
        assert_canon_matches(&c, b.data);
    }
    buf_free(&b);
    canon_free(&c);
}

static void
test_fields_read_by_canon_match_jansson(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "{\"url\":\"/x\"}",
        "{\"url\":\"/x\",\"body\":null,\"custom_id\":null}",
        "{\"custom_id\":\"a\\u0062c\",\"url\":\"/v1/\\u0069mages\"}",
        "{\"method\":\"get\",\"url\":\"https://app.flora.ai/api/v1/t\","
        "\"provider\":\"flora\",\"priority\":-3,\"max_attempts\":9}",
        "{\"provider\":\"local\",\"url\":\"/y\",\"body\":{\"b\":[1.5,2],"
        "\"a\":\"\\u00e9\"},\"priority\":2147483647}",
        "  {\"url\":\"/x\" , \"body\" : { \"z\" : 1 , \"a\" : 2 } }\r\n",
    };
    struct canon c = {0};
    struct canon_member m[8];
    size_t n;

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        if (canon_object(&c, lines[i], strlen(lines[i]), m, 8, &n) < 0)
            fail_msg("canon refused %s", lines[i]);
        assert_parses_as_jansson(lines[i], strlen(lines[i]));
    }
    canon_free(&c);
}

/* What canon refuses, each for jansson to take or reject: jobspec_parse
 * still ends as jansson does, the error's column included. */
static void
test_lines_canon_leaves_end_as_jansson_has_them(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "",
        "[]",
        "\"url\"",
        "{\"url\":\"/x\",}",
        "{\"url\":\"/x\" \"body\":{}}",
        "{'url':'/x'}",
        "{\"url\":\"/x\"} trailing",
        "{\"url\":\"/x\",\"url\":\"/y\"}",
        "{\"url\":\"/x\",\"body\":{\"a\":1,\"b\":2,\"a\":3}}",
        "{\"url\":\"/x\",\"body\":{\"a\":1,\"\\u0061\":2}}",
        "{\"url\":\"/x\",\"body\":{\"a\":01}}",
        "{\"url\":\"/x\",\"body\":{\"a\":1.}}",
        "{\"url\":\"/x\",\"body\":{\"a\":.5}}",
        "{\"url\":\"/x\",\"body\":{\"a\":+1}}",
        "{\"url\":\"/x\",\"body\":{\"a\":1e}}",
        "{\"url\":\"/x\",\"body\":{\"a\":NaN}}",
        "{\"url\":\"/x\",\"body\":{\"a\":tru}}",
        "{\"url\":\"/x\",\"body\":{\"a\":truex}}",
        "{\"url\":\"/x\",\"body\":{\"a\":9223372036854775808}}",
        "{\"url\":\"/x\",\"body\":{\"a\":-9223372036854775809}}",
        "{\"url\":\"/x\",\"body\":{\"a\":1e400}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\\ud83d\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\\ude00\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\\ud83d\\u0041\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\\u0000\"}}",
        "{\"url\":\"/x\",\"body\":{\"\\u0000\":1}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\\x\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\\u12G4\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"tab\there\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\xc0\xaf\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\xed\xa0\x80\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\xf4\x90\x80\x80\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"\xe2\x82\"}}",
        "{\"url\":\"/x\",\"body\":{\"a\":\"open}}",
        "{\"url\":\"/x\",\"body\":[]}",
        "{\"url\":\"/x\",\"body\":\"text\"}",
        "{\"url\":\"/x\",\"max_attempt\":3}",
        "{\"url\":\"/x\",\"priority\":1.0}",
        "{\"url\":\"/x\",\"priority\":2147483648}",
        "{\"url\":\"/x\",\"max_attempts\":0}",
        "{\"url\":\"/x\",\"method\":\"BREW\"}",
        "{\"url\":\"/x\",\"provider\":\"nope\"}",
        "{\"url\":\"/x\",\"custom_id\":\"a b\"}",
        "{\"url\":\"/x\",\"custom_id\":\"\"}",
        "{\"url\":7}",
        "{\"body\":{}}",
        "{\"url\":\"/x\",\"body\":{\"a\":1.000000000000000000000000000000"
        "00000000000000000000000000000000001}}",
    };

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        assert_parses_as_jansson(lines[i], strlen(lines[i]));
}

static void
test_nesting_past_canon_depth_is_left_to_jansson(void **state)
{
    (void)state;
    struct buf b = {0};
    struct canon c = {0};
    struct canon_member m[4];
    size_t n;

    buf_appendf(&b, "{\"url\":\"/x\",\"body\":{\"a\":");
    for (int i = 0; i < CANON_MAX_DEPTH; i++)
        buf_append(&b, "[", 1);
    for (int i = 0; i < CANON_MAX_DEPTH; i++)
        buf_append(&b, "]", 1);
    buf_append(&b, "}}", 2);
    assert_int_equal(canon_object(&c, b.data, b.len, m, 4, &n), -EINVAL);
    assert_parses_as_jansson(b.data, b.len);
    canon_free(&c);
    buf_free(&b);
}

static void
test_real_digits_are_the_fewest_that_read_back(void **state)
{
    (void)state;
    assert_int_equal(canon_real_digits(0.1), 1);
    assert_int_equal(canon_real_digits(0.0), 1);
    assert_int_equal(canon_real_digits(1.5e-7), 2);
    assert_int_equal(canon_real_digits(0.30000000000000004), 17);
    assert_int_equal(canon_real_digits(123456.7), 7);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bodies_of_every_shape_match_jansson),
        cmocka_unit_test(test_random_bodies_match_jansson),
        cmocka_unit_test(test_fields_read_by_canon_match_jansson),
        cmocka_unit_test(test_lines_canon_leaves_end_as_jansson_has_them),
        cmocka_unit_test(test_nesting_past_canon_depth_is_left_to_jansson),
        cmocka_unit_test(test_real_digits_are_the_fewest_that_read_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
