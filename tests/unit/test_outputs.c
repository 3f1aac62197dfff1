/*
 * outputs: the pure policy of downloads. JSON pointers with "*", the
 * output URLs each dialect finds in its provider's results (shapes from
 * docs/providers.md), content-addressed path naming, retry timing and
 * verdicts, redirect targets and the origin check that decides who gets
 * credentials.
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
#include <jansson.h>

#include "sluice/dialect.h"
#include "sluice/jsonptr.h"
#include "sluice/outputs.h"

/* --- jsonptr ------------------------------------------------------------ */

struct seen {
    char text[8][64];
    int n;
};

static void
on_value(const json_t *v, void *arg)
{
    struct seen *s = arg;
    char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(s->text[s->n++], sizeof(s->text[0]), "%s", t);
    free(t);
}

static int
walk(const char *doc, const char *ptr, struct seen *s)
{
    json_t *root = json_loads(doc, JSON_DECODE_ANY, NULL);
    assert_non_null(root);
    memset(s, 0, sizeof(*s));
    int n = jsonptr_walk(root, ptr, on_value, s);
    json_decref(root);
    return n;
}

static void
test_pointer_reaches_members_and_indexes(void **state)
{
    struct seen s;
    (void)state;
    assert_int_equal(walk("{\"a\":{\"b\":[10,20,30]}}", "/a/b/1", &s), 1);
    assert_string_equal(s.text[0], "20");
    assert_int_equal(walk("{\"a\":1}", "", &s), 1);
    assert_string_equal(s.text[0], "{\"a\":1}");
    /* RFC 6901 escapes: ~1 is "/", ~0 is "~" */
    assert_int_equal(walk("{\"a/b\":{\"m~n\":7}}", "/a~1b/m~0n", &s), 1);
    assert_string_equal(s.text[0], "7");
}

static void
test_pointer_star_branches_over_array_elements(void **state)
{
    struct seen s;
    (void)state;
    assert_int_equal(walk("{\"o\":[{\"u\":\"x\"},{\"v\":1},{\"u\":\"y\"}]}",
                          "/o/*/u", &s),
                     2);
    assert_string_equal(s.text[0], "\"x\"");
    assert_string_equal(s.text[1], "\"y\"");
    /* nested stars, in document order */
    assert_int_equal(walk("[[1,2],[3]]", "/*/*", &s), 3);
    assert_string_equal(s.text[2], "3");
    /* on an object, "*" is just a member name */
    assert_int_equal(walk("{\"*\":5,\"a\":6}", "/*", &s), 1);
    assert_string_equal(s.text[0], "5");
}

static void
test_pointer_that_reaches_nothing_or_is_invalid(void **state)
{
    struct seen s;
    (void)state;
    assert_int_equal(walk("{\"a\":[1]}", "/a/01", &s), 0); /* leading 0 */
    assert_int_equal(walk("{\"a\":[1]}", "/a/5", &s), 0);
    assert_int_equal(walk("{\"a\":[1]}", "/b/*", &s), 0);
    assert_int_equal(walk("{\"a\":\"s\"}", "/a/*", &s), 0);
    assert_int_equal(walk("{\"a\":1}", "a", &s), -EINVAL);
    assert_false(jsonptr_valid("/a~2"));
    assert_false(jsonptr_valid("/a~"));
    assert_false(jsonptr_valid(NULL));
    assert_true(jsonptr_valid("/data/*/url"));
}

/* --- output URLs per dialect ----------------------------------------------- */

static size_t
urls_of(const char *dialect, const char *result, char *const *extra,
        size_t nextra, char ***urls)
{
    return dialect_output_urls(dialect ? dialect_find(dialect) : NULL, result,
                               extra, nextra, urls);
}

static void
free_urls(char **urls)
{
    for (char **p = urls; *p; p++)
        free(*p);
    free(urls);
}

static void
test_flora_completed_run_outputs(void **state)
{
    char **urls;
    (void)state;
    /* docs/providers.md: status completed with
     * outputs:[{output_id,type,url}] */
    assert_int_equal(
        urls_of("flora",
                "{\"run_id\":\"run_1\",\"status\":\"completed\",\"outputs\":["
                "{\"output_id\":\"o1\",\"type\":\"image\",\"url\":"
                "\"https://cdn.flora.ai/a.png\"},{\"output_id\":\"o2\","
                "\"type\":\"video\",\"url\":\"https://cdn.flora.ai/b.mp4\"}],"
                "\"charged_cost\":0.04}",
                NULL, 0, &urls),
        2);
    assert_string_equal(urls[0], "https://cdn.flora.ai/a.png");
    assert_string_equal(urls[1], "https://cdn.flora.ai/b.mp4");
    assert_null(urls[2]);
    free_urls(urls);
}

static void
test_flymyai_and_firemoon_images_and_videos(void **state)
{
    char **urls;
    (void)state;
    assert_int_equal(urls_of("flymyai",
                             "{\"images\":[{\"url\":\"https://f.ai/1.png\"}]}",
                             NULL, 0, &urls),
                     1);
    assert_string_equal(urls[0], "https://f.ai/1.png");
    free_urls(urls);
    /* Firemoon: images[] or videos[] of {url,width,height,content_type} */
    assert_int_equal(
        urls_of("firemoon",
                "{\"images\":[{\"url\":\"https://fm/1.png\",\"width\":8}],"
                "\"videos\":[{\"url\":\"https://fm/2.mp4\"}],\"seed\":1}",
                NULL, 0, &urls),
        2);
    assert_string_equal(urls[1], "https://fm/2.mp4");
    free_urls(urls);
    /* OpenAI-style image answers: data:[{url}] */
    assert_int_equal(urls_of("openai",
                             "{\"data\":[{\"url\":\"http://o/x.png\"}]}",
                             NULL, 0, &urls),
                     1);
    free_urls(urls);
}

static void
test_output_pointer_covers_other_shapes(void **state)
{
    char **urls;
    char *extra[] = {"/data/result/files/*", "/data/cover"};
    (void)state;
    /* graphql (Lamatic) has no known shape: the config says where */
    assert_int_equal(
        urls_of("graphql",
                "{\"data\":{\"result\":{\"files\":[\"https://l/1\","
                "\"https://l/2\"]},\"cover\":\"https://l/1\"}}",
                extra, 2, &urls),
        2); /* the cover repeats a file: each URL once */
    assert_string_equal(urls[0], "https://l/1");
    assert_string_equal(urls[1], "https://l/2");
    free_urls(urls);
    assert_int_equal(urls_of("graphql", "{\"data\":{}}", NULL, 0, &urls), 0);
    free_urls(urls);
}

static void
test_only_absolute_http_urls_count(void **state)
{
    char **urls;
    char *extra[] = {"/u/*"};
    (void)state;
    assert_int_equal(
        urls_of(NULL,
                "{\"u\":[\"file:///etc/passwd\",\"/relative\",7,null,"
                "\"ftp://x/y\",\"HTTPS://ok/1\",\"javascript:x\"]}",
                extra, 1, &urls),
        1);
    assert_string_equal(urls[0], "HTTPS://ok/1");
    free_urls(urls);
    /* a result that is not JSON has no outputs */
    assert_int_equal(urls_of("flora", "not json", NULL, 0, &urls), 0);
    free_urls(urls);
    assert_int_equal(urls_of("flora", NULL, NULL, 0, &urls), 0);
    free_urls(urls);
}

static void
test_output_urls_are_capped(void **state)
{
    char **urls;
    json_t *arr = json_array();
    (void)state;
    for (int i = 0; i < DIALECT_OUTPUTS_MAX + 50; i++) {
        char u[64];
        snprintf(u, sizeof(u), "https://x/%d", i);
        json_array_append_new(arr, json_pack("{s:s}", "url", u));
    }
    json_t *doc = json_pack("{s:o}", "outputs", arr);
    char *text = json_dumps(doc, JSON_COMPACT);
    assert_int_equal(urls_of("flora", text, NULL, 0, &urls),
                     DIALECT_OUTPUTS_MAX);
    free_urls(urls);
    free(text);
    json_decref(doc);
}

/* --- naming, timing, verdicts ------------------------------------------------ */

static void
test_path_is_content_addressed_under_two_hex_digits(void **state)
{
    (void)state;
    char *p = outputs_path("/var/lib/sluice/outputs",
                           "ab12cdef00000000000000000000000000000000000000000"
                           "000000000000000");
    assert_string_equal(p, "/var/lib/sluice/outputs/ab/ab12cdef000000000000000"
                           "00000000000000000000000000000000000000000");
    free(p);
}

static void
test_retry_delay_grows_with_full_jitter_and_a_floor(void **state)
{
    (void)state;
    /* u near 1: the ceiling, 1 s doubling per fetch, capped at 5 min */
    assert_in_range(outputs_retry_delay_ms(1, 0.999), 990, 1000);
    assert_in_range(outputs_retry_delay_ms(2, 0.999), 1990, 2000);
    assert_in_range(outputs_retry_delay_ms(4, 0.999), 7990, 8000);
    assert_in_range(outputs_retry_delay_ms(30, 0.999), 299000, 300000);
    /* u = 0 would be no wait at all: the floor */
    assert_int_equal(outputs_retry_delay_ms(1, 0.0), 250);
    assert_int_equal(outputs_retry_delay_ms(0, 0.5), 500);
}

static void
test_transient_failures_retry_and_the_rest_fail(void **state)
{
    (void)state;
    assert_true(outputs_retryable(0, true, false));    /* reset, timeout */
    assert_true(outputs_retryable(503, false, false));
    assert_true(outputs_retryable(500, false, false));
    assert_true(outputs_retryable(429, false, false));
    assert_true(outputs_retryable(408, false, false));
    assert_false(outputs_retryable(403, false, false)); /* expired URL */
    assert_false(outputs_retryable(404, false, false));
    assert_false(outputs_retryable(200, true, true));   /* over the cap */
    assert_true(outputs_retryable(200, true, false));  /* body cut short */
    assert_true(outputs_retryable(206, true, false));
}

static void
test_content_range_and_if_range(void **state)
{
    (void)state;
    int64_t start = -9, total = -9;
    assert_true(outputs_content_range("bytes 100-299/300", &start, &total));
    assert_true(start == 100 && total == 300);
    assert_true(outputs_content_range("bytes 0-9/*", &start, &total));
    assert_true(start == 0 && total == -1);
    assert_false(outputs_content_range("bytes */300", &start, &total));
    assert_false(outputs_content_range("bytes 5-4/300", &start, &total));
    assert_false(outputs_content_range("bytes 0-300/300", &start, &total));
    assert_false(outputs_content_range("items 0-9/10", &start, &total));
    assert_false(outputs_content_range("bytes 0-9/10x", &start, &total));
    assert_false(outputs_content_range(NULL, &start, &total));
    /* a strong ETag, else Last-Modified; a weak ETag vouches for nothing */
    assert_string_equal(outputs_if_range("\"abc\"", "Tue, 1 Dec 2026"),
                        "\"abc\"");
    assert_string_equal(outputs_if_range("W/\"abc\"", "Tue, 1 Dec 2026"),
                        "Tue, 1 Dec 2026");
    assert_null(outputs_if_range("W/\"abc\"", NULL));
    assert_null(outputs_if_range(NULL, ""));
}

static void
test_redirect_targets(void **state)
{
    char *u;
    (void)state;
    u = outputs_redirect_url("https://a.io:8443/x/y", "/z?q=1");
    assert_string_equal(u, "https://a.io:8443/z?q=1");
    free(u);
    u = outputs_redirect_url("https://a.io/x", "//cdn.io/f");
    assert_string_equal(u, "https://cdn.io/f");
    free(u);
    u = outputs_redirect_url("https://a.io/x", "http://b.io/f");
    assert_string_equal(u, "http://b.io/f");
    free(u);
    assert_null(outputs_redirect_url("https://a.io/x", "relative/f"));
    assert_null(outputs_redirect_url("https://a.io/x", NULL));
    assert_null(outputs_redirect_url("https://a.io/x", "ftp://b/f"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pointer_reaches_members_and_indexes),
        cmocka_unit_test(test_pointer_star_branches_over_array_elements),
        cmocka_unit_test(test_pointer_that_reaches_nothing_or_is_invalid),
        cmocka_unit_test(test_flora_completed_run_outputs),
        cmocka_unit_test(test_flymyai_and_firemoon_images_and_videos),
        cmocka_unit_test(test_output_pointer_covers_other_shapes),
        cmocka_unit_test(test_only_absolute_http_urls_count),
        cmocka_unit_test(test_output_urls_are_capped),
        cmocka_unit_test(test_path_is_content_addressed_under_two_hex_digits),
        cmocka_unit_test(test_retry_delay_grows_with_full_jitter_and_a_floor),
        cmocka_unit_test(test_transient_failures_retry_and_the_rest_fail),
        cmocka_unit_test(test_redirect_targets),
        cmocka_unit_test(test_content_range_and_if_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
