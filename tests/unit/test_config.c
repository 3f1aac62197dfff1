/*
 * config: a full file with every key, each kind of mistake with its exact
 * FILE:LINE: key: problem message, dialect defaults, the value parsers and
 * where API keys come from.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "sluice/config.h"
#include "sluice/dialect.h"
#include "sluice/log.h"

static struct config *
load_ok(const char *text)
{
    struct config *c = NULL;
    char err[512] = "";
    int rc = config_load_string(text, "sluice.conf", &c, err, sizeof(err));
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
    assert_non_null(c);
    return c;
}

static void
assert_load_error(const char *text, const char *expected)
{
    struct config *c = (struct config *)1;
    char err[512] = "";
    int rc = config_load_string(text, "sluice.conf", &c, err, sizeof(err));
    assert_int_equal(rc, -EINVAL);
    assert_null(c);
    assert_string_equal(err, expected);
}

static const char full_file[] =
    "# every key, once\n"
    "[daemon]\n"
    "database = /tmp/q.db\n"
    "shutdown_grace = 45s\n"
    "lease = 20m\n"
    "log_level = debug\n"
    "metrics = 127.0.0.1:9464\n"
    "\n"
    "[provider \"flora\"]\n"
    "dialect = flora                 ; inline comment\n"
    "base_url = https://app.flora.ai/api/v1/\n"
    "api_key_env = FLORA_API_KEY\n"
    "auth = header:x-api-key\n"
    "header = x-project-id: prj_123\n"
    "header = x-team:t1\n"
    "idempotency = header:X-Idem\n"
    "request_id_header = x-req\n"
    "concurrency_start = 2\n"
    "concurrency_max = 16\n"
    "adaptive = no\n"
    "rate_limit = 60/min\n"
    "timeout = 90s\n"
    "connect_timeout = 2500ms\n"
    "max_attempts = 7\n"
    "max_deferrals = 9\n"
    "backoff_base = 500ms\n"
    "backoff_cap = 2m\n"
    "poll_interval = 2s\n"
    "poll_interval_max = 20s\n"
    "probe_interval = 1h\n"
    "max_response = 2M\n"
    "budget = 25.50\n"
    "cost_pointer = /usage/cost\n"
    "token_price = 0.000002\n"
    "\n"
    "[provider \"lamatic\"]\n"
    "dialect = lamatic\n"
    "base_url = http://127.0.0.1:8080\n"
    "api_key_file = lamatic\n"
    "idempotency = body:request_key\n";

static void
test_full_file_sets_every_key(void **state)
{
    (void)state;
    struct config *c = load_ok(full_file);
    const struct provider_config *p;

    assert_null(c->path);
    assert_string_equal(c->database, "/tmp/q.db");
    assert_int_equal(c->shutdown_grace_ms, 45000);
    assert_int_equal(c->lease_ms, 1200000);
    assert_int_equal(c->log_level, LOG_LEVEL_DEBUG);
    assert_string_equal(c->metrics, "127.0.0.1:9464");
    assert_int_equal(c->nproviders, 2);

    p = config_provider(c, "flora");
    assert_non_null(p);
    assert_string_equal(p->name, "flora");
    assert_string_equal(p->dialect, "flora");
    assert_string_equal(p->base_url, "https://app.flora.ai/api/v1");
    assert_string_equal(p->api_key_env, "FLORA_API_KEY");
    assert_null(p->api_key_file);
    assert_int_equal(p->auth, AUTH_HEADER);
    assert_string_equal(p->auth_header, "x-api-key");
    assert_int_equal(p->nheaders, 2);
    assert_string_equal(p->headers[0], "x-project-id: prj_123");
    assert_string_equal(p->headers[1], "x-team: t1");
    assert_int_equal(p->idem, IDEM_HEADER);
    assert_string_equal(p->idem_name, "X-Idem");
    assert_string_equal(p->request_id_header, "x-req");
    assert_int_equal(p->concurrency_start, 2);
    assert_int_equal(p->concurrency_max, 16);
    assert_false(p->adaptive);
    assert_true(p->rate_per_s > 0.999 && p->rate_per_s < 1.001);
    assert_int_equal(p->timeout_ms, 90000);
    assert_int_equal(p->connect_timeout_ms, 2500);
    assert_int_equal(p->max_attempts, 7);
    assert_int_equal(p->max_deferrals, 9);
    assert_int_equal(p->backoff_base_ms, 500);
    assert_int_equal(p->backoff_cap_ms, 120000);
    assert_int_equal(p->poll_interval_ms, 2000);
    assert_int_equal(p->poll_interval_max_ms, 20000);
    assert_int_equal(p->probe_interval_ms, 3600000);
    assert_int_equal(p->max_response, 2 * 1024 * 1024);
    assert_true(p->budget > 25.499 && p->budget < 25.501);
    assert_string_equal(p->cost_pointer, "/usage/cost");
    assert_true(p->token_price > 0.0000019 && p->token_price < 0.0000021);

    p = config_provider(c, "lamatic");
    assert_non_null(p);
    assert_string_equal(p->dialect, "graphql"); /* alias resolved */
    assert_string_equal(p->base_url, "http://127.0.0.1:8080");
    assert_string_equal(p->api_key_file, "lamatic");
    assert_int_equal(p->auth, AUTH_BEARER);
    assert_int_equal(p->idem, IDEM_BODY);
    assert_string_equal(p->idem_name, "request_key");

    assert_null(config_provider(c, "nobody"));
    config_free(c);
}

static void
test_minimal_provider_gets_documented_defaults(void **state)
{
    (void)state;
    struct config *c = load_ok("[provider \"x\"]\n"
                               "base_url = https://api.example.com\n");
    const struct provider_config *p = &c->providers[0];

    assert_string_equal(c->database, "/var/lib/sluice/queue.db");
    assert_int_equal(c->shutdown_grace_ms, 30000);
    assert_int_equal(c->lease_ms, 600000);
    assert_int_equal(c->log_level, LOG_LEVEL_INFO);
    assert_string_equal(p->dialect, "generic");
    assert_null(p->api_key_env);
    assert_null(p->api_key_file);
    assert_null(p->request_id_header);
    assert_int_equal(p->nheaders, 0);
    assert_int_equal(p->auth, AUTH_BEARER);
    assert_int_equal(p->idem, IDEM_HEADER);
    assert_string_equal(p->idem_name, "Idempotency-Key");
    assert_int_equal(p->concurrency_start, 4);
    assert_int_equal(p->concurrency_max, 64);
    assert_true(p->adaptive);
    assert_true(p->rate_per_s == 0.0);
    assert_int_equal(p->timeout_ms, 120000);
    assert_int_equal(p->connect_timeout_ms, 10000);
    assert_int_equal(p->max_attempts, 5);
    assert_int_equal(p->max_deferrals, 50);
    assert_int_equal(p->backoff_base_ms, 1000);
    assert_int_equal(p->backoff_cap_ms, 60000);
    assert_int_equal(p->poll_interval_ms, 3000);
    assert_int_equal(p->poll_interval_max_ms, 15000);
    assert_int_equal(p->probe_interval_ms, 300000);
    assert_int_equal(p->max_response, 8 * 1024 * 1024);
    config_free(c);
}

static void
test_no_provider_is_valid_for_a_database_alone(void **state)
{
    (void)state;
    struct config *c = load_ok("; only the database\n"
                               "[daemon]\n"
                               "database = q.db\n");
    assert_int_equal(c->nproviders, 0);
    assert_string_equal(c->database, "q.db");
    config_free(c);
}

static void
test_dialect_sets_auth_and_idempotency_defaults(void **state)
{
    (void)state;
    struct config *c = load_ok("[provider \"flora\"]\n"
                               "dialect = flora\n"
                               "base_url = https://app.flora.ai/api/v1\n"
                               "[provider \"fm\"]\n"
                               "dialect = flymyai\n"
                               "base_url = https://api.flymy.ai\n"
                               "[provider \"fa\"]\n"
                               "dialect = flowapi\n"
                               "base_url = https://api.flowapi.net/v1\n"
                               "[provider \"open\"]\n"
                               "dialect = flora\n"
                               "base_url = https://x.test\n"
                               "auth = none\n"
                               "idempotency = none\n");
    const struct provider_config *p;

    p = config_provider(c, "flora");
    assert_int_equal(p->idem, IDEM_BODY);
    assert_string_equal(p->idem_name, "idempotency_key");
    assert_int_equal(p->auth, AUTH_BEARER);

    p = config_provider(c, "fm");
    assert_int_equal(p->auth, AUTH_HEADER);
    assert_string_equal(p->auth_header, "x-api-key");
    assert_int_equal(p->idem, IDEM_HEADER);

    p = config_provider(c, "fa");
    assert_string_equal(p->dialect, "openai");

    p = config_provider(c, "open");
    assert_int_equal(p->auth, AUTH_NONE);
    assert_null(p->auth_header);
    assert_int_equal(p->idem, IDEM_NONE);
    assert_null(p->idem_name);
    config_free(c);
}

static void
test_unset_bound_yields_to_the_set_one(void **state)
{
    (void)state;
    struct config *c = load_ok("[provider \"x\"]\n"
                               "base_url = https://x.test\n"
                               "concurrency_max = 2\n"
                               "backoff_base = 90s\n"
                               "poll_interval_max = 1s\n");
    const struct provider_config *p = &c->providers[0];

    assert_int_equal(p->concurrency_start, 2);
    assert_int_equal(p->concurrency_max, 2);
    assert_int_equal(p->backoff_base_ms, 90000);
    assert_int_equal(p->backoff_cap_ms, 90000);
    assert_int_equal(p->poll_interval_ms, 1000);
    assert_int_equal(p->poll_interval_max_ms, 1000);
    config_free(c);
}

static void
test_comments_blank_and_indented_lines_are_accepted(void **state)
{
    (void)state;
    struct config *c = load_ok("\xEF\xBB\xBF# hash comment\n"
                               "; semicolon comment\n"
                               "\n"
                               "[provider \"x\"] ; trailing\n"
                               "    base_url = https://x.test  # trailing\n"
                               "\ttimeout = 5s\r\n");
    assert_string_equal(c->providers[0].base_url, "https://x.test");
    assert_int_equal(c->providers[0].timeout_ms, 5000);
    config_free(c);
}

static void
test_long_header_line_fits(void **state)
{
    (void)state;
    char text[2048];
    char value[1001];

    memset(value, 'v', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    snprintf(text, sizeof(text),
             "[provider \"x\"]\nbase_url = https://x.test\n"
             "header = x-long: %s\n",
             value);
    struct config *c = load_ok(text);
    assert_int_equal(strlen(c->providers[0].headers[0]), 8 + 1000);
    config_free(c);
}

static const struct {
    const char *text;
    const char *error;
} bad_files[] = {
    {"[provider \"x\"]\nbase_url = https://x.test\ntimeout = 12x\n",
     "sluice.conf:3: timeout: bad duration '12x' (use ms, s, m, h)"},
    {"[daemon]\nshutdown_grace = -1s\n",
     "sluice.conf:2: shutdown_grace: bad duration '-1s' (use ms, s, m, h)"},
    {"[provider \"x\"]\nbase_url = https://x.test\nbogus = 1\n",
     "sluice.conf:3: bogus: unknown key in [provider \"x\"]"},
    {"[daemon]\n\ncolour = blue\n",
     "sluice.conf:3: colour: unknown key in [daemon]"},
    {"[daemon]\n[providers]\nbase_url = https://x.test\n",
     "sluice.conf:2: [providers]: unknown section (use [daemon] or "
     "[provider \"NAME\"], NAME of letters, digits, _ - .)"},
    {"[provider \"x\"]\nbase_url = https://x.test\n\n[provider \"x\"]\n",
     "sluice.conf:4: [provider \"x\"]: duplicate section (first on line 1)"},
    {"[daemon]\n\n[provider \"x\"]\ntimeout = 5s\n",
     "sluice.conf:3: base_url: missing in [provider \"x\"]"},
    {"[provider \"empty\"]\n",
     "sluice.conf:1: base_url: missing in [provider \"empty\"]"},
    {"[provider \"x\"]\nbase_url = ftp://x.test\n",
     "sluice.conf:2: base_url: bad URL 'ftp://x.test' (use http://HOST or "
     "https://HOST)"},
    /* no host for the daemon to send to (found by fuzz_config) */
    {"[provider \"x\"]\nbase_url = https://?x.test/v1\n",
     "sluice.conf:2: base_url: bad URL 'https://?x.test/v1' (use "
     "http://HOST or https://HOST)"},
    /* a header value only the request builder would refuse
     * (docs/design.md §4) */
    {"[provider \"x\"]\nbase_url = https://x.test\nheader = x-a: caf\xc3\xa9\n",
     "sluice.conf:3: header: bad header (use \"Name: value\")"},
    {"[provider \"x\"]\nbase_url = https://x.test\nauth = basic\n",
     "sluice.conf:3: auth: bad auth 'basic' (use bearer, header:NAME or "
     "none)"},
    {"[provider \"x\"]\nbase_url = https://x.test\nauth = header:\n",
     "sluice.conf:3: auth: bad auth 'header:' (use bearer, header:NAME or "
     "none)"},
    {"[provider \"x\"]\nbase_url = https://x.test\nidempotency = query:k\n",
     "sluice.conf:3: idempotency: bad idempotency 'query:k' (use header, "
     "header:NAME, body:FIELD or none)"},
    {"[provider \"x\"]\nbase_url = https://x.test\nrate_limit = 5/day\n",
     "sluice.conf:3: rate_limit: bad rate '5/day' (use N/s, N/min, N/h)"},
    {"[provider \"x\"]\nbase_url = https://x.test\nrate_limit = 0/s\n",
     "sluice.conf:3: rate_limit: bad rate '0/s' (use N/s, N/min, N/h)"},
    {"[provider \"x\"]\nbase_url = https://x.test\nadaptive = maybe\n",
     "sluice.conf:3: adaptive: bad boolean 'maybe' (use yes, no, true, "
     "false, 1, 0)"},
    {"[provider \"x\"]\nbase_url = https://x.test\nmax_attempts = 0\n",
     "sluice.conf:3: max_attempts: must be at least 1"},
    {"[provider \"x\"]\nbase_url = https://x.test\nmax_attempts = 2.5\n",
     "sluice.conf:3: max_attempts: bad number '2.5'"},
    {"[provider \"x\"]\nbase_url = https://x.test\nmax_response = 8Q\n",
     "sluice.conf:3: max_response: bad size '8Q' (use bytes, K, M, G)"},
    {"[daemon]\nlog_level = loud\n",
     "sluice.conf:2: log_level: bad level 'loud' (use error, warn, info, "
     "debug)"},
    {"[provider \"x\"]\nbase_url = https://x.test\ntimeout = 1s\n"
     "timeout = 2s\n",
     "sluice.conf:4: timeout: set twice in [provider \"x\"]"},
    {"database = q.db\n", "sluice.conf:1: database: key outside a section"},
    {"[daemon]\njust words\n",
     "sluice.conf:2: syntax error (expected key = value or [section])"},
    {"[provider \"x\"]\nbase_url = https://x.test\nconcurrency_start = 9\n"
     "concurrency_max = 3\n",
     "sluice.conf:1: concurrency_start: above concurrency_max"},
    {"[provider \"x\"]\nbase_url = https://x.test\napi_key_env = K\n"
     "api_key_file = /k\n",
     "sluice.conf:1: api_key_file: set together with api_key_env (use one)"},
    {"[daemon]\nlease = 1m\n[provider \"x\"]\nbase_url = https://x.test\n",
     "sluice.conf:3: timeout: 120000 ms is not below the daemon's lease "
     "(60000 ms; raise lease in [daemon])"},
    {"[daemon]\nmetrics = localhost:9464\n",
     "sluice.conf:2: metrics: bad address 'localhost:9464' (use ADDR:PORT "
     "with an IP address, e.g. 127.0.0.1:9464 or [::1]:9464)"},
    {"[daemon]\nmetrics = 127.0.0.1:0\n",
     "sluice.conf:2: metrics: bad address '127.0.0.1:0' (use ADDR:PORT "
     "with an IP address, e.g. 127.0.0.1:9464 or [::1]:9464)"},
    {"[provider \"x\"]\nbase_url = https://x.test\nbudget = 0\n",
     "sluice.conf:3: budget: bad amount '0' (a decimal above 0, e.g. "
     "25.00)"},
    {"[provider \"x\"]\nbase_url = https://x.test\ntoken_price = -1\n",
     "sluice.conf:3: token_price: bad amount '-1' (a decimal of 0 or more, e.g. 25.00)"},
    {"[provider \"x\"]\nbase_url = https://x.test\ncost_pointer = cost\n",
     "sluice.conf:3: cost_pointer: bad JSON pointer 'cost' (use /a/b, * for "
     "every array element, ~0 for ~ and ~1 for /)"},
    {"[provider \"x\"]\nbase_url = https://x.test\nheader = no colon\n",
     "sluice.conf:3: header: bad header (use \"Name: value\")"},
};

static void
test_each_bad_input_names_file_line_and_key(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]); i++)
        assert_load_error(bad_files[i].text, bad_files[i].error);
}

static void
test_unknown_dialect_lists_the_known_ones(void **state)
{
    (void)state;
    char expected[512];

    snprintf(expected, sizeof(expected),
             "sluice.conf:2: dialect: unknown dialect 'soap' (use %s)",
             dialect_names());
    assert_load_error("[provider \"x\"]\ndialect = soap\n"
                      "base_url = https://x.test\n",
                      expected);
}

static void
test_secret_pasted_as_env_name_is_not_echoed(void **state)
{
    (void)state;
    struct config *c = NULL;
    char err[512] = "";

    assert_int_equal(config_load_string("[provider \"x\"]\n"
                                        "api_key_env = sk-live-SECRET\n",
                                        "s.conf", &c, err, sizeof(err)),
                     -EINVAL);
    assert_null(strstr(err, "SECRET"));
    assert_non_null(strstr(err, "s.conf:2: api_key_env:"));
}

static void
test_line_too_long_is_an_error(void **state)
{
    (void)state;
    size_t n = 5000;
    char *text = malloc(n + 64);
    struct config *c = NULL;
    char err[512] = "";

    strcpy(text, "[daemon]\ndatabase = ");
    size_t len = strlen(text);
    memset(text + len, 'a', n);
    strcpy(text + len + n, "\n");
    assert_int_equal(config_load_string(text, "s.conf", &c, err, sizeof(err)),
                     -EINVAL);
    free(text);
    assert_string_equal(err, "s.conf:2: line too long (over 4094 "
                             "characters)");
}

static char tmpdir[64];

static int
make_tmpdir(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/test_config.XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
remove_tmpdir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *
write_file(const char *name, const char *text)
{
    static char path[256];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void
test_load_file_names_the_path_in_errors(void **state)
{
    (void)state;
    struct config *c = NULL;
    char err[512] = "", expected[512];
    char *path = write_file("bad.conf", "[daemon]\nlease = 10 m\n");

    assert_int_equal(config_load(path, &c, err, sizeof(err)), -EINVAL);
    snprintf(expected, sizeof(expected),
             "%s:2: lease: bad duration '10 m' (use ms, s, m, h)", path);
    assert_string_equal(err, expected);
}

static void
test_load_file_keeps_its_path(void **state)
{
    (void)state;
    struct config *c = NULL;
    char err[512] = "";
    char *path = write_file("good.conf", "[provider \"a\"]\n"
                                         "base_url = https://a.test/v1//\n");

    assert_int_equal(config_load(path, &c, err, sizeof(err)), 0);
    assert_string_equal(c->path, path);
    assert_string_equal(c->providers[0].base_url, "https://a.test/v1");
    config_free(c);
}

static void
test_missing_file_returns_enoent(void **state)
{
    (void)state;
    struct config *c = (struct config *)1;
    char err[512] = "";

    assert_int_equal(
        config_load("/nonexistent/sluice.conf", &c, err, sizeof(err)), -ENOENT);
    assert_null(c);
    assert_string_equal(err, "/nonexistent/sluice.conf: No such file or "
                             "directory");
}

/* A provider_config built by hand for config_api_key. */
static struct provider_config
key_provider(enum auth_kind auth, const char *env, const char *file)
{
    struct provider_config p;
    memset(&p, 0, sizeof(p));
    p.name = (char *)"flora";
    p.auth = auth;
    p.api_key_env = (char *)env;
    p.api_key_file = (char *)file;
    return p;
}

static void
test_api_key_from_env_is_trimmed(void **state)
{
    (void)state;
    struct provider_config p = key_provider(AUTH_BEARER, "SLUICE_T_KEY", NULL);
    char err[256] = "";

    setenv("SLUICE_T_KEY", "  sk-abc123\n", 1);
    char *key = config_api_key(&p, err, sizeof(err));
    assert_non_null(key);
    assert_string_equal(key, "sk-abc123");
    free(key);
    unsetenv("SLUICE_T_KEY");
}

static void
test_missing_env_var_message_names_it_without_any_key(void **state)
{
    (void)state;
    struct provider_config p =
        key_provider(AUTH_BEARER, "SLUICE_T_UNSET", NULL);
    char err[256] = "";

    unsetenv("SLUICE_T_UNSET");
    setenv("SLUICE_T_OTHER", "sk-should-not-appear", 1);
    assert_null(config_api_key(&p, err, sizeof(err)));
    assert_string_equal(err, "environment variable SLUICE_T_UNSET is not "
                             "set");
    assert_null(strstr(err, "sk-"));

    setenv("SLUICE_T_UNSET", "", 1);
    assert_null(config_api_key(&p, err, sizeof(err)));
    assert_string_equal(err, "environment variable SLUICE_T_UNSET is "
                             "empty");

    setenv("SLUICE_T_UNSET", " \n", 1);
    assert_null(config_api_key(&p, err, sizeof(err)));
    assert_string_equal(err, "environment variable SLUICE_T_UNSET is "
                             "empty");
    unsetenv("SLUICE_T_UNSET");
    unsetenv("SLUICE_T_OTHER");
}

static void
test_api_key_from_absolute_file(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof(path), "%s", write_file("k1", "\n sk-file \n\n"));
    struct provider_config p = key_provider(AUTH_BEARER, NULL, path);
    char err[256] = "";

    unsetenv("CREDENTIALS_DIRECTORY");
    char *key = config_api_key(&p, err, sizeof(err));
    assert_non_null(key);
    assert_string_equal(key, "sk-file");
    free(key);
}

static void
test_relative_key_file_is_read_from_credentials_directory(void **state)
{
    (void)state;
    struct provider_config p = key_provider(AUTH_BEARER, NULL, "flora");
    char err[256] = "";

    write_file("flora", "sk-cred\n");
    setenv("CREDENTIALS_DIRECTORY", tmpdir, 1);
    char *key = config_api_key(&p, err, sizeof(err));
    unsetenv("CREDENTIALS_DIRECTORY");
    assert_non_null(key);
    assert_string_equal(key, "sk-cred");
    free(key);
}

static void
test_empty_key_file_is_an_error(void **state)
{
    (void)state;
    char path[256], expected[512];
    snprintf(path, sizeof(path), "%s", write_file("empty", " \n"));
    struct provider_config p = key_provider(AUTH_BEARER, NULL, path);
    char err[256] = "";

    assert_null(config_api_key(&p, err, sizeof(err)));
    snprintf(expected, sizeof(expected), "key file %s is empty", path);
    assert_string_equal(err, expected);
}

static void
test_key_with_line_break_inside_is_refused_without_echo(void **state)
{
    (void)state;
    struct provider_config p = key_provider(AUTH_BEARER, "SLUICE_T_KEY", NULL);
    char err[256] = "";

    setenv("SLUICE_T_KEY", "sk-a\r\nX-Evil: 1", 1);
    assert_null(config_api_key(&p, err, sizeof(err)));
    assert_null(strstr(err, "sk-a"));
    assert_non_null(strstr(err, "control characters"));
    unsetenv("SLUICE_T_KEY");
}

static void
test_auth_none_needs_no_key(void **state)
{
    (void)state;
    struct provider_config p = key_provider(AUTH_NONE, NULL, NULL);
    char err[256] = "";
    char *key = config_api_key(&p, err, sizeof(err));

    assert_non_null(key);
    assert_string_equal(key, "");
    free(key);

    p = key_provider(AUTH_BEARER, NULL, NULL);
    assert_null(config_api_key(&p, err, sizeof(err)));
    assert_non_null(strstr(err, "no api_key_env or api_key_file"));
}

static void
test_parse_duration_table(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t ms;
    } good[] = {
        {"250ms", 250},  {"30s", 30000},   {"5m", 300000},
        {"2h", 7200000}, {"1d", 86400000}, {"30", 30000},
        {"1.5s", 1500},  {"0.25", 250},    {"0", 0},
        {"1.5m", 90000}, {"0.0005s", 0},   {"9223372036854775807ms", INT64_MAX},
    };
    static const char *const bad[] = {
        "",
        "-1s",
        "+1s",
        "1x",
        "s",
        "1.s",
        ".5s",
        "1 s",
        " 1s",
        "1s ",
        "1e3",
        "0x10",
        "9223372036854775808ms",
        "106751991167301d",
        "99999999999999999999",
        "1sec",
        "1.2.3s",
    };
    int64_t ms;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ms = -1;
        assert_int_equal(config_parse_duration(good[i].s, &ms), 0);
        assert_int_equal(ms, good[i].ms);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (config_parse_duration(bad[i], &ms) != -EINVAL)
            fail_msg("accepted '%s'", bad[i]);
    }
}

static void
test_parse_rate_table(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        double per_s;
    } good[] = {
        {"5/s", 5},   {"5/sec", 5},  {"60/min", 1},
        {"120/m", 2}, {"3600/h", 1}, {"0.5/s", 0.5},
    };
    static const char *const bad[] = {
        "", "5", "0/s", "-1/s", "5/", "5/day", "/s", "5 /s", "abc/s", "1e3/s",
    };
    double r;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        r = -1;
        assert_int_equal(config_parse_rate(good[i].s, &r), 0);
        assert_true(r > good[i].per_s - 1e-9 && r < good[i].per_s + 1e-9);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (config_parse_rate(bad[i], &r) != -EINVAL)
            fail_msg("accepted '%s'", bad[i]);
    }
}

static void
test_default_path_prefers_flag_then_env(void **state)
{
    (void)state;
    unsetenv("SLUICE_CONFIG");
    assert_string_equal(config_default_path(NULL), "/etc/sluice/sluice.conf");
    setenv("SLUICE_CONFIG", "/env/s.conf", 1);
    assert_string_equal(config_default_path(NULL), "/env/s.conf");
    assert_string_equal(config_default_path("/flag.conf"), "/flag.conf");
    unsetenv("SLUICE_CONFIG");
}

static void
test_free_accepts_null(void **state)
{
    (void)state;
    config_free(NULL);
}

/* Outputs (docs/design.md §13): download needs outputs_dir; pointers may
 * repeat and are checked; the daemon keys have their defaults. */
static void
test_outputs_keys(void **state)
{
    (void)state;
    struct config *c = load_ok(
        "[provider \"l\"]\n"
        "dialect = lamatic\n"
        "base_url = https://api.lamatic.ai\n"
        "api_key_env = K\n"
        "outputs = download\n"
        "output_pointer = /data/files/*/url\n"
        "output_pointer = /data/cover\n"
        "[daemon]\n"
        "outputs_dir = /var/lib/sluice/outputs\n");
    assert_string_equal(c->outputs_dir, "/var/lib/sluice/outputs");
    assert_int_equal(c->outputs_concurrency, 4);
    assert_true(c->outputs_max_size == (size_t)1 << 30);
    assert_true(c->providers[0].outputs_download);
    assert_int_equal(c->providers[0].noutput_pointers, 2);
    assert_string_equal(c->providers[0].output_pointers[1], "/data/cover");
    config_free(c);

    c = load_ok("[daemon]\noutputs_concurrency = 2\noutputs_max_size = 5M\n"
                "[provider \"f\"]\nbase_url = http://f\nauth = none\n"
                "outputs = keep-urls\n");
    assert_int_equal(c->outputs_concurrency, 2);
    assert_true(c->outputs_max_size == (size_t)5 << 20);
    assert_false(c->providers[0].outputs_download);
    assert_null(c->outputs_dir);
    config_free(c);

    assert_load_error("[provider \"f\"]\nbase_url = http://f\nauth = none\n"
                      "outputs = download\n",
                      "sluice.conf:1: outputs: download needs outputs_dir in "
                      "[daemon]");
    assert_load_error("[provider \"f\"]\nbase_url = http://f\nauth = none\n"
                      "outputs = fetch\n",
                      "sluice.conf:4: outputs: bad value 'fetch' (use "
                      "download or keep-urls)");
    assert_load_error("[provider \"f\"]\nbase_url = http://f\nauth = none\n"
                      "output_pointer = data/url\n",
                      "sluice.conf:4: output_pointer: bad JSON pointer "
                      "'data/url' (use /a/b, * for every array element, ~0 "
                      "for ~ and ~1 for /)");
    assert_load_error("[daemon]\noutputs_concurrency = 0\n",
                      "sluice.conf:2: outputs_concurrency: must be at least 1");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outputs_keys),
        cmocka_unit_test(test_full_file_sets_every_key),
        cmocka_unit_test(test_minimal_provider_gets_documented_defaults),
        cmocka_unit_test(test_no_provider_is_valid_for_a_database_alone),
        cmocka_unit_test(test_dialect_sets_auth_and_idempotency_defaults),
        cmocka_unit_test(test_unset_bound_yields_to_the_set_one),
        cmocka_unit_test(test_comments_blank_and_indented_lines_are_accepted),
        cmocka_unit_test(test_long_header_line_fits),
        cmocka_unit_test(test_each_bad_input_names_file_line_and_key),
        cmocka_unit_test(test_unknown_dialect_lists_the_known_ones),
        cmocka_unit_test(test_secret_pasted_as_env_name_is_not_echoed),
        cmocka_unit_test(test_line_too_long_is_an_error),
        cmocka_unit_test(test_load_file_names_the_path_in_errors),
        cmocka_unit_test(test_load_file_keeps_its_path),
        cmocka_unit_test(test_missing_file_returns_enoent),
        cmocka_unit_test(test_api_key_from_env_is_trimmed),
        cmocka_unit_test(test_missing_env_var_message_names_it_without_any_key),
        cmocka_unit_test(test_api_key_from_absolute_file),
        cmocka_unit_test(
            test_relative_key_file_is_read_from_credentials_directory),
        cmocka_unit_test(test_empty_key_file_is_an_error),
        cmocka_unit_test(
            test_key_with_line_break_inside_is_refused_without_echo),
        cmocka_unit_test(test_auth_none_needs_no_key),
        cmocka_unit_test(test_parse_duration_table),
        cmocka_unit_test(test_parse_rate_table),
        cmocka_unit_test(test_default_path_prefers_flag_then_env),
        cmocka_unit_test(test_free_accepts_null),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
