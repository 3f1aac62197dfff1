/*
 * jobspec: JSONL lines into rows, against a config built by hand (it is a
 * plain struct). Keys are checked against sha256 vectors computed outside
 * this code (Python's hashlib).
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

#include "sluice/config.h"
#include "sluice/jobspec.h"

static struct provider_config providers[] = {
    {.name = "flora", .base_url = "https://app.flora.ai/api/v1",
     .max_attempts = 5},
    {.name = "local", .base_url = "http://127.0.0.1:8080",
     .max_attempts = 3},
    {.name = "flowapi", .base_url = "https://api.flowapi.example/v1",
     .max_attempts = 5},
};
static const struct config config = {
    .providers = providers,
    .nproviders = sizeof(providers) / sizeof(providers[0]),
};

static char err[256];

/* Parses line with --provider flora and --batch nightly. */
static int
parse(const char *line, struct jobspec *j)
{
    struct jobspec_opts o = {.config = &config, .provider = "flora",
                             .batch = "nightly"};
    err[0] = '\0';
    return jobspec_parse(line, strlen(line), &o, j, err, sizeof(err));
}

/* Expects line to be rejected with a message starting with prefix. */
static void
assert_rejected(const char *line, const char *prefix)
{
    struct jobspec j;
    assert_int_equal(parse(line, &j), -EINVAL);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("'%s': got \"%s\", want \"%s…\"", line, err, prefix);
    assert_null(j.provider);
    assert_null(j.path);
}

static void
test_minimal_line_gets_defaults_and_a_hash_key(void **state)
{
    (void)state;
    struct jobspec j;

    assert_int_equal(
        parse("{\"url\": \"/runs\", \"body\": {\"b\": [2, 3], \"a\": 1}}\n",
              &j),
        0);
    assert_string_equal(j.provider, "flora");
    assert_string_equal(j.batch, "nightly");
    assert_null(j.custom_id);
    assert_string_equal(j.method, "POST");
    assert_string_equal(j.path, "/runs");
    assert_string_equal(j.body, "{\"a\":1,\"b\":[2,3]}");
    assert_int_equal(j.priority, 0);
    assert_int_equal(j.max_attempts, 5);
    assert_string_equal(
        j.idempotency_key,
        "8f4ec88c9e0d8ab0538341097c69de2c0649807221fc9b13eaca95384a1b79fd");
    jobspec_clear(&j);
    assert_null(j.provider);
}

static void
test_hash_key_covers_provider_method_path_and_body(void **state)
{
    (void)state;
    char a[65], b[65];

    jobspec_hash_key("flora", "GET", "/runs/1", NULL, a);
    assert_string_equal(
        a, "156ad660009390c509376440ff76b65466de12eaa2e19232a6fb5d3599459905");
    /* NUL separators: moving a byte between fields changes the key */
    jobspec_hash_key("flor", "aGET", "/runs/1", NULL, b);
    assert_string_not_equal(a, b);
    jobspec_hash_key("flora", "GET", "/runs/1", "{}", b);
    assert_string_not_equal(a, b);
    jobspec_hash_key("local", "GET", "/runs/1", NULL, b);
    assert_string_not_equal(a, b);
}

static void
test_same_request_in_another_spelling_gets_the_same_key(void **state)
{
    (void)state;
    struct jobspec x, y;

    assert_int_equal(parse("{\"body\":{\"a\":1,\"z\":{\"k\":true,\"c\":null}},"
                           "\"url\":\"/runs\",\"method\":\"post\"}",
                           &x),
                     0);
    assert_int_equal(parse("  {\"method\": \"POST\", \"url\": "
                           "\"https://app.flora.ai/api/v1/runs\", "
                           "\"body\": {\"z\": {\"c\": null, \"k\": true}, "
                           "\"a\": 1}}  ",
                           &y),
                     0);
    assert_string_equal(x.body, y.body);
    assert_string_equal(x.path, y.path);
    assert_string_equal(x.idempotency_key, y.idempotency_key);
    jobspec_clear(&x);
    jobspec_clear(&y);
}

static void
test_custom_id_is_the_key_and_unique_gives_random_keys(void **state)
{
    (void)state;
    struct jobspec_opts o = {.config = &config, .provider = "flora",
                             .unique = true};
    const char *line = "{\"custom_id\":\"q3-thumb-DE\",\"url\":\"/runs\"}";
    struct jobspec j, k;

    assert_int_equal(parse(line, &j), 0);
    assert_string_equal(j.custom_id, "q3-thumb-DE");
    assert_string_equal(j.idempotency_key, "q3-thumb-DE");
    jobspec_clear(&j);

    assert_int_equal(
        jobspec_parse(line, strlen(line), &o, &j, err, sizeof(err)), 0);
    assert_int_equal(
        jobspec_parse(line, strlen(line), &o, &k, err, sizeof(err)), 0);
    assert_int_equal(strlen(j.idempotency_key), 32);
    assert_int_equal(strspn(j.idempotency_key, "0123456789abcdef"), 32);
    assert_string_not_equal(j.idempotency_key, k.idempotency_key);
    assert_string_equal(j.custom_id, "q3-thumb-DE");
    assert_null(j.batch);
    jobspec_clear(&j);
    jobspec_clear(&k);
}

static void
test_line_provider_overrides_the_default_and_sets_max_attempts(void **state)
{
    (void)state;
    struct jobspec j;

    assert_int_equal(
        parse("{\"provider\":\"local\",\"url\":\"/x\",\"method\":\"get\"}",
              &j),
        0);
    assert_string_equal(j.provider, "local");
    assert_string_equal(j.method, "GET");
    assert_null(j.body);
    assert_int_equal(j.max_attempts, 3);
    jobspec_clear(&j);

    assert_int_equal(parse("{\"url\":\"/x\",\"priority\":-7,"
                           "\"max_attempts\":1000,\"body\":null}",
                           &j),
                     0);
    assert_int_equal(j.priority, -7);
    assert_int_equal(j.max_attempts, 1000);
    assert_null(j.body);
    jobspec_clear(&j);
}

static void
test_missing_provider_without_default_is_an_error(void **state)
{
    (void)state;
    struct jobspec_opts o = {.config = &config};
    const char *line = "{\"url\":\"/x\"}";
    struct jobspec j;

    assert_int_equal(
        jobspec_parse(line, strlen(line), &o, &j, err, sizeof(err)),
        -EINVAL);
    assert_string_equal(err, "provider: missing (no --provider given)");
    assert_rejected("{\"url\":\"/x\",\"provider\":\"nope\"}", "provider: ");
    assert_rejected("{\"url\":\"/x\",\"provider\":3}",
                    "provider: must be a string");
}

static void
test_full_urls_on_the_providers_host_become_paths(void **state)
{
    (void)state;
    struct jobspec j;

    assert_int_equal(parse("{\"url\":\"HTTPS://app.flora.ai/api/v1/"
                           "techniques/t/runs?x=1\"}",
                           &j),
                     0);
    assert_string_equal(j.path, "/techniques/t/runs?x=1");
    jobspec_clear(&j);
    /* same host, outside base_url's path: kept whole */
    assert_int_equal(
        parse("{\"url\":\"https://app.flora.ai/api/v10/runs\"}", &j), 0);
    assert_string_equal(j.path, "https://app.flora.ai/api/v10/runs");
    jobspec_clear(&j);
    assert_int_equal(
        parse("{\"url\":\"http://127.0.0.1:8080/gen\",\"provider\":"
              "\"local\"}",
              &j),
        0);
    assert_string_equal(j.path, "/gen");
    jobspec_clear(&j);

    assert_rejected("{\"url\":\"https://evil.example/api/v1/runs\"}",
                    "url: https://evil.example is not provider flora's");
    assert_rejected("{\"url\":\"http://app.flora.ai/api/v1/runs\"}",
                    "url: ");
    assert_rejected("{\"url\":\"http://127.0.0.1:9090/gen\",\"provider\":"
                    "\"local\"}",
                    "url: ");
    assert_rejected("{\"url\":\"runs\"}", "url: must be a path");
    assert_rejected("{\"url\":\"ftp://app.flora.ai/x\"}",
                    "url: must be a path");
    assert_rejected("{\"url\":\"/a b\"}", "url: contains a space");
    assert_rejected("{\"url\":\"\"}", "url: must not be empty");
    assert_rejected("{\"url\":5}", "url: must be a string");
    assert_rejected("{\"method\":\"GET\"}", "url: missing");
}

static void
test_each_bad_field_is_named_first(void **state)
{
    (void)state;
    char long_id[300 + 40];

    assert_rejected("{\"url\":\"/x\",\"max_attempt\":3}",
                    "max_attempt: unknown field");
    assert_rejected("{\"url\":\"/x\",\"method\":\"BREW\"}",
                    "method: 'BREW' is not one of");
    assert_rejected("{\"url\":\"/x\",\"method\":1}",
                    "method: must be a string");
    assert_rejected("{\"url\":\"/x\",\"body\":[1]}",
                    "body: must be an object");
    assert_rejected("{\"url\":\"/x\",\"body\":\"{}\"}",
                    "body: must be an object");
    assert_rejected("{\"url\":\"/x\",\"priority\":1.5}",
                    "priority: must be an integer");
    assert_rejected("{\"url\":\"/x\",\"priority\":9999999999}",
                    "priority: must be between");
    assert_rejected("{\"url\":\"/x\",\"max_attempts\":0}",
                    "max_attempts: must be between 1 and 1000");
    assert_rejected("{\"url\":\"/x\",\"max_attempts\":1001}",
                    "max_attempts: must be between 1 and 1000");
    assert_rejected("{\"url\":\"/x\",\"max_attempts\":\"3\"}",
                    "max_attempts: must be an integer");
    assert_rejected("{\"url\":\"/x\",\"custom_id\":7}",
                    "custom_id: must be a string");
    assert_rejected("{\"url\":\"/x\",\"custom_id\":\"\"}",
                    "custom_id: must not be empty");
    snprintf(long_id, sizeof(long_id), "{\"url\":\"/x\",\"custom_id\":\"%0257d\"}",
             0);
    assert_rejected(long_id, "custom_id: longer than 256 bytes");
}

/* The custom_id goes out as the Idempotency-Key header: a CR/LF in it
 * would add headers or smuggle a request. Visible ASCII only. */
static void
test_custom_id_outside_visible_ascii_is_a_bad_line(void **state)
{
    (void)state;
    struct jobspec j;

    assert_rejected("{\"url\":\"/x\",\"custom_id\":\"a\\r\\nX-Evil: 1\"}",
                    "custom_id: byte 2 is 0x0d: only visible ASCII");
    assert_rejected("{\"url\":\"/x\",\"custom_id\":\"a\\nb\"}",
                    "custom_id: byte 2 is 0x0a");
    assert_rejected("{\"url\":\"/x\",\"custom_id\":\"two words\"}",
                    "custom_id: byte 4 is 0x20");
    assert_rejected("{\"url\":\"/x\",\"custom_id\":\"tab\\there\"}",
                    "custom_id: byte 4 is 0x09");
    assert_rejected("{\"url\":\"/x\",\"custom_id\":\"caf\\u00e9\"}",
                    "custom_id: byte 4 is 0xc3");
    assert_rejected("{\"url\":\"/x\",\"custom_id\":\"del\\u007f\"}",
                    "custom_id: byte 4 is 0x7f");
    assert_int_equal(
        parse("{\"url\":\"/x\",\"custom_id\":\"!~q3-thumb_DE.2:x\"}", &j),
        0);
    assert_string_equal(j.idempotency_key, "!~q3-thumb_DE.2:x");
    jobspec_clear(&j);
}

/* A line straight from an OpenAI Batch input file names the whole path,
 * "/v1/chat/completions", while the provider's base_url ends in /v1: the
 * path is taken from the origin, not appended (docs/providers.md). */
static void
test_url_repeating_the_base_path_is_taken_from_the_origin(void **state)
{
    (void)state;
    struct jobspec j, k;
    static const char openai_line[] =
        "{\"custom_id\": \"request-1\", \"method\": \"POST\", "
        "\"url\": \"/v1/chat/completions\", \"body\": {\"model\": "
        "\"gpt-3.5-turbo-0125\", \"messages\": [{\"role\": \"system\", "
        "\"content\": \"You are a helpful assistant.\"},{\"role\": "
        "\"user\", \"content\": \"Hello world!\"}],\"max_tokens\": "
        "1000}}";
    struct jobspec_opts o = {.config = &config, .provider = "flowapi"};

    assert_int_equal(jobspec_parse(openai_line, strlen(openai_line), &o, &j,
                                   err, sizeof(err)),
                     0);
    assert_string_equal(j.path, "/chat/completions");
    jobspec_clear(&j);
    /* the three spellings of one request are one row and one key */
    static const char *const same[] = {
        "{\"url\":\"/v1/embeddings\",\"body\":{}}",
        "{\"url\":\"/embeddings\",\"body\":{}}",
        "{\"url\":\"https://api.flowapi.example/v1/embeddings\","
        "\"body\":{}}",
    };
    assert_int_equal(jobspec_parse(same[0], strlen(same[0]), &o, &k, err,
                                   sizeof(err)),
                     0);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(jobspec_parse(same[i], strlen(same[i]), &o, &j, err,
                                       sizeof(err)),
                         0);
        assert_string_equal(j.path, k.path);
        assert_string_equal(j.idempotency_key, k.idempotency_key);
        jobspec_clear(&j);
    }
    assert_string_equal(k.path, "/embeddings");
    jobspec_clear(&k);
    /* only a whole segment counts: /v10 is not under /v1 */
    const char *v10 = "{\"url\":\"/v10/models\"}";
    assert_int_equal(
        jobspec_parse(v10, strlen(v10), &o, &j, err, sizeof(err)), 0);
    assert_string_equal(j.path, "/v10/models");
    jobspec_clear(&j);
}

/* "HTTP://" is the same scheme as "http://": a full URL on the provider's
 * origin outside base_url's path is stored with the scheme in one
 * spelling, so the daemon never mistakes it for a path. */
static void
test_scheme_case_is_normalised_once(void **state)
{
    (void)state;
    struct jobspec j;

    assert_int_equal(
        parse("{\"url\":\"HTTPS://app.flora.ai/other/runs\"}", &j), 0);
    assert_string_equal(j.path, "https://app.flora.ai/other/runs");
    jobspec_clear(&j);
    assert_int_equal(
        parse("{\"url\":\"Http://127.0.0.1:8080/gen\",\"provider\":"
              "\"local\"}",
              &j),
        0);
    assert_string_equal(j.path, "/gen");
    jobspec_clear(&j);
    assert_rejected("{\"url\":\"HTTPS://evil.example/api/v1/runs\"}",
                    "url: HTTPS://evil.example is not provider flora's");
}

static void
test_json_errors_name_the_column(void **state)
{
    (void)state;
    assert_rejected("{\"url\": \"/x\",, }", "json: ");
    assert_non_null(strstr(err, "column 14"));
    assert_rejected("[1, 2]", "json: a job line must be an object");
    assert_rejected("\"url\"", "json: ");
    assert_rejected("{\"url\":\"/x\",\"url\":\"/y\"}", "json: duplicate");
    assert_rejected("", "json: ");
}

static void
test_a_nul_byte_is_named_with_its_column(void **state)
{
    (void)state;
    const char line[] = "{\"url\":\"/x\"}\0\n";
    struct jobspec_opts o = {.config = &config, .provider = "flora"};
    struct jobspec j;

    assert_int_equal(
        jobspec_parse(line, sizeof(line) - 1, &o, &j, err, sizeof(err)),
        -EINVAL);
    assert_string_equal(err, "json: a NUL byte (column 13)");
    assert_null(j.path);
}

static void
test_body_numbers_keep_their_short_spelling(void **state)
{
    (void)state;
    struct jobspec j;

    assert_int_equal(parse("{\"url\":\"/x\",\"body\":{\"cfg\":7.1,"
                           "\"n\":[0.1,3.0,1.5e-7,-2.25],\"big\":1e300,"
                           "\"i\":12345678901234}}",
                           &j),
                     0);
    assert_string_equal(j.body, "{\"big\":1e300,\"cfg\":7.1,"
                                "\"i\":12345678901234,"
                                "\"n\":[0.1,3.0,1.5e-7,-2.25]}");
    jobspec_clear(&j);
}

static void
test_line_need_not_be_nul_terminated(void **state)
{
    (void)state;
    const char buf[] = "{\"url\":\"/x\"}{\"url\":\"/y\"}";
    struct jobspec_opts o = {.config = &config, .provider = "flora"};
    struct jobspec j;

    assert_int_equal(jobspec_parse(buf + 12, 12, &o, &j, err, sizeof(err)),
                     0);
    assert_string_equal(j.path, "/y");
    jobspec_clear(&j);
    jobspec_clear(NULL);
}

static void
test_token_estimate_is_max_tokens_plus_text_over_4(void **state)
{
    (void)state;
    const char *a = "{\"max_tokens\":500,\"messages\":[]}"; /* 32 bytes */
    const char *b = "{\"max_completion_tokens\":1000}";      /* 30 bytes */
    const char *c = "{\"prompt\":\"0123456789abcdef\"}";    /* 29 bytes */

    assert_int_equal(jobspec_token_estimate(a), 500 + 33 / 4);
    assert_int_equal(jobspec_token_estimate(b), 1000 + 30 / 4);
    assert_int_equal(jobspec_token_estimate(c), 29 / 4);
    assert_int_equal(jobspec_token_estimate("not json at all"), 15 / 4);
    assert_int_equal(jobspec_token_estimate(NULL), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_line_gets_defaults_and_a_hash_key),
        cmocka_unit_test(test_hash_key_covers_provider_method_path_and_body),
        cmocka_unit_test(
            test_same_request_in_another_spelling_gets_the_same_key),
        cmocka_unit_test(
            test_custom_id_is_the_key_and_unique_gives_random_keys),
        cmocka_unit_test(
            test_line_provider_overrides_the_default_and_sets_max_attempts),
        cmocka_unit_test(test_missing_provider_without_default_is_an_error),
        cmocka_unit_test(test_full_urls_on_the_providers_host_become_paths),
        cmocka_unit_test(test_each_bad_field_is_named_first),
        cmocka_unit_test(test_custom_id_outside_visible_ascii_is_a_bad_line),
        cmocka_unit_test(
            test_url_repeating_the_base_path_is_taken_from_the_origin),
        cmocka_unit_test(test_scheme_case_is_normalised_once),
        cmocka_unit_test(test_json_errors_name_the_column),
        cmocka_unit_test(test_a_nul_byte_is_named_with_its_column),
        cmocka_unit_test(test_body_numbers_keep_their_short_spelling),
        cmocka_unit_test(test_line_need_not_be_nul_terminated),
        cmocka_unit_test(test_token_estimate_is_max_tokens_plus_text_over_4),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
