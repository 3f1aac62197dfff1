/*
 * test_http: daemon/http.c against real servers on loopback. An in-process
 * libmicrohttpd server (thread per connection) answers the routes below; a
 * raw socket server sends an interim 1xx response that libmicrohttpd
 * cannot. The libuv loop runs on the test thread; the server wakes it with
 * a uv_async when a slow request has arrived, so no test sleeps.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "sluice/http.h"
#include "sluice/xmalloc.h"

/* Any single wait in these tests ends within this bound or fails. */
#define WAIT_MS 10000

/* --- the server -------------------------------------------------------- */

static struct MHD_Daemon *server;
static unsigned short server_port;
static atomic_int conns_started; /* connections accepted */
static atomic_int hello_hits;    /* requests to /hello */
static atomic_int slow_arrived;  /* requests to /slow that arrived */
static pthread_mutex_t srv_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t srv_cond = PTHREAD_COND_INITIALIZER;
static bool srv_stopping;
static uv_async_t *srv_notify; /* woken when a slow request arrives */

struct upload {
    struct buf body;
};

static void
on_mhd_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                  enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    (void)c;
    (void)socket_ctx;
    if (code == MHD_CONNECTION_NOTIFY_STARTED)
        atomic_fetch_add(&conns_started, 1);
}

static void
on_mhd_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                 enum MHD_RequestTerminationCode toe)
{
    struct upload *u = *con_cls;
    (void)cls;
    (void)c;
    (void)toe;
    if (u) {
        buf_free(&u->body);
        free(u);
        *con_cls = NULL;
    }
}

static enum MHD_Result
reply(struct MHD_Connection *c, unsigned status, const void *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, (void *)body, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Waits ms on the server side, cut short when the server stops. */
static void
server_wait(long ms)
{
    struct timespec until;

    atomic_fetch_add(&slow_arrived, 1);
    pthread_mutex_lock(&srv_mu);
    if (srv_notify)
        uv_async_send(srv_notify);
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (!srv_stopping &&
           pthread_cond_timedwait(&srv_cond, &srv_mu, &until) == 0)
        ;
    pthread_mutex_unlock(&srv_mu);
}

static ssize_t
on_mhd_chunk(void *cls, uint64_t pos, char *buf, size_t max)
{
    size_t total = (size_t)(uintptr_t)cls;
    size_t n;

    if (pos >= total)
        return MHD_CONTENT_READER_END_OF_STREAM;
    n = total - (size_t)pos;
    if (n > max)
        n = max;
    if (n > 1000)
        n = 1000;
    memset(buf, 'c', n);
    return (ssize_t)n;
}

static long
query_long(struct MHD_Connection *c, const char *name, long dflt)
{
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    return v ? strtol(v, NULL, 10) : dflt;
}

static enum MHD_Result
on_mhd_request(void *cls, struct MHD_Connection *c, const char *url,
               const char *method, const char *version, const char *upload_data,
               size_t *upload_size, void **con_cls)
{
    struct upload *u = *con_cls;
    struct MHD_Response *r;
    enum MHD_Result ret;

    (void)cls;
    (void)version;
    if (u == NULL) {
        *con_cls = xcalloc(1, sizeof(struct upload));
        return MHD_YES;
    }
    if (*upload_size > 0) {
        buf_append(&u->body, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }

    if (strcmp(url, "/hello") == 0) {
        atomic_fetch_add(&hello_hits, 1);
        r = MHD_create_response_from_buffer(11, "hello world",
                                            MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "X-Test", "first");
        MHD_add_response_header(r, "X-Test", "  second  ");
        ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(url, "/echo") == 0) {
        const char *ct =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
        const char *ex =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Expect");
        r = MHD_create_response_from_buffer(u->body.len, u->body.data,
                                            MHD_RESPMEM_MUST_COPY);
        MHD_add_response_header(r, "X-Got-Method", method);
        MHD_add_response_header(r, "X-Got-Content-Type", ct ? ct : "none");
        MHD_add_response_header(r, "X-Got-Expect", ex ? ex : "none");
        ret = MHD_queue_response(c, 201, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(url, "/slow") == 0) {
        server_wait(query_long(c, "ms", 1000));
        return reply(c, 200, "slow", 4);
    }
    if (strncmp(url, "/id/", 4) == 0)
        return reply(c, 200, url + 4, strlen(url + 4));
    if (strcmp(url, "/big") == 0) {
        size_t n = (size_t)query_long(c, "n", 0);
        char *body = xmalloc(n);
        memset(body, 'b', n);
        r = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
        ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(url, "/chunked") == 0) {
        size_t n = (size_t)query_long(c, "n", 0);
        r = MHD_create_response_from_callback(
            MHD_SIZE_UNKNOWN, 1000, on_mhd_chunk, (void *)(uintptr_t)n, NULL);
        ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(url, "/redirect") == 0) {
        char loc[64];
        snprintf(loc, sizeof(loc), "http://127.0.0.1:%u/hello",
                 (unsigned)server_port);
        r = MHD_create_response_from_buffer(5, "moved", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Location", loc);
        ret = MHD_queue_response(c, 302, r);
        MHD_destroy_response(r);
        return ret;
    }
    return reply(c, 404, "no", 2);
}

static int
server_start(void **state)
{
    struct sockaddr_in sa = {0};
    const union MHD_DaemonInfo *info;

    (void)state;
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    server = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
            MHD_USE_POLL,
        0, NULL, NULL, on_mhd_request, NULL, MHD_OPTION_SOCK_ADDR, &sa,
        MHD_OPTION_NOTIFY_CONNECTION, on_mhd_connection, NULL,
        MHD_OPTION_NOTIFY_COMPLETED, on_mhd_completed, NULL,
        MHD_OPTION_CONNECTION_LIMIT, 1000u, MHD_OPTION_END);
    if (server == NULL)
        return -1;
    info = MHD_get_daemon_info(server, MHD_DAEMON_INFO_BIND_PORT);
    server_port = info->port;
    return 0;
}

static int
server_stop(void **state)
{
    (void)state;
    pthread_mutex_lock(&srv_mu);
    srv_stopping = true;
    pthread_cond_broadcast(&srv_cond);
    pthread_mutex_unlock(&srv_mu);
    MHD_stop_daemon(server);
    return 0;
}

static char *
url(const char *path)
{
    return xasprintf("http://127.0.0.1:%u%s", (unsigned)server_port, path);
}

/* --- the client side --------------------------------------------------- */

struct result {
    int calls; /* callback runs: must end at exactly 1 */
    int status;
    int curl_code;
    bool timed_out, too_large, cancelled;
    char *body;
    size_t body_len;
    char *header; /* value of the header named in want_header */
    const char *want_header;
    char *header2;
    const char *want_header2;
};

struct fixture {
    uv_loop_t loop;
    struct http *http;
    uv_async_t notify; /* slow request arrived at the server */
    uv_timer_t deadline;
    bool expired;
};

static void
on_done(const struct http_response *r, void *data)
{
    struct result *res = data;
    res->calls++;
    res->status = r->status;
    res->curl_code = r->curl_code;
    res->timed_out = r->timed_out;
    res->too_large = r->too_large;
    res->cancelled = r->cancelled;
    free(res->body);
    res->body = xmalloc(r->body_len + 1);
    memcpy(res->body, r->body, r->body_len + 1);
    res->body_len = r->body_len;
    if (res->want_header)
        res->header = xstrdup(http_response_header(r, res->want_header));
    if (res->want_header2)
        res->header2 = xstrdup(http_response_header(r, res->want_header2));
}

static void
result_clear(struct result *r)
{
    free(r->body);
    free(r->header);
    free(r->header2);
    memset(r, 0, sizeof(*r));
}

static void
on_uv_notify(uv_async_t *a)
{
    (void)a;
}

static void
on_uv_deadline(uv_timer_t *t)
{
    struct fixture *f = t->data;
    f->expired = true;
}

static int
fixture_setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    f->http = http_new(&f->loop);
    uv_async_init(&f->loop, &f->notify, on_uv_notify);
    uv_timer_init(&f->loop, &f->deadline);
    f->deadline.data = f;
    pthread_mutex_lock(&srv_mu);
    srv_notify = &f->notify;
    pthread_mutex_unlock(&srv_mu);
    atomic_store(&slow_arrived, 0);
    *state = f;
    return 0;
}

static int
fixture_teardown(void **state)
{
    struct fixture *f = *state;
    pthread_mutex_lock(&srv_mu);
    srv_notify = NULL;
    pthread_mutex_unlock(&srv_mu);
    http_free(f->http);
    uv_close((uv_handle_t *)&f->notify, NULL);
    uv_close((uv_handle_t *)&f->deadline, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* Runs the loop until cond(arg) holds; fails after WAIT_MS. */
static void
run_until(struct fixture *f, bool (*cond)(void *), void *arg)
{
    f->expired = false;
    uv_timer_start(&f->deadline, on_uv_deadline, WAIT_MS, 0);
    while (!cond(arg) && !f->expired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->deadline);
    assert_false(f->expired);
}

static bool
called(void *arg)
{
    return ((struct result *)arg)->calls > 0;
}

static bool
slow_seen(void *arg)
{
    return atomic_load(&slow_arrived) >= *(int *)arg;
}

static void
submit(struct fixture *f, const struct http_request *req, struct result *res,
       struct http_xfer **x)
{
    assert_int_equal(http_submit(f->http, req, on_done, res, x), 0);
}

static void
get(struct fixture *f, const char *path, struct result *res)
{
    char *u = url(path);
    struct http_request req = {
        .method = "GET", .url = u, .timeout_ms = WAIT_MS};
    submit(f, &req, res, NULL);
    free(u);
    run_until(f, called, res);
    assert_int_equal(res->calls, 1);
}

/* --- tests ------------------------------------------------------------- */

static void
test_get_returns_status_headers_and_body(void **state)
{
    struct fixture *f = *state;
    struct result res = {.want_header = "x-TEST"};

    get(f, "/hello", &res);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.curl_code, 0);
    assert_int_equal(res.body_len, 11);
    assert_string_equal(res.body, "hello world");
    /* the last of repeated headers, matched case-insensitively, trimmed */
    assert_string_equal(res.header, "second");
    assert_int_equal(http_in_flight(f->http), 0);
    result_clear(&res);
}

static void
test_post_sends_body_as_json_without_expect(void **state)
{
    struct fixture *f = *state;
    struct result res = {.want_header = "X-Got-Content-Type",
                         .want_header2 = "X-Got-Expect"};
    char *u = url("/echo");
    /* over 1 KiB: the size at which curl would add Expect: 100-continue */
    size_t n = 4096;
    char *body = xmalloc(n + 1);
    memset(body, 'p', n);
    body[n] = '\0';
    struct http_request req = {.method = "POST",
                               .url = u,
                               .body = body,
                               .body_len = n,
                               .timeout_ms = WAIT_MS};

    submit(f, &req, &res, NULL);
    /* the body was copied: the caller's buffer may change at once */
    memset(body, 'z', n);
    run_until(f, called, &res);
    assert_int_equal(res.status, 201);
    assert_int_equal(res.body_len, n);
    assert_int_equal(res.body[0], 'p');
    assert_int_equal(res.body[n - 1], 'p');
    assert_string_equal(res.header, "application/json");
    assert_string_equal(res.header2, "none");
    result_clear(&res);
    free(body);
    free(u);
}

static void
test_custom_method_keeps_caller_content_type_and_binary_body(void **state)
{
    struct fixture *f = *state;
    struct result res = {.want_header = "X-Got-Method",
                         .want_header2 = "X-Got-Content-Type"};
    char *u = url("/echo");
    const char *const headers[] = {"Content-Type: text/plain", NULL};
    struct http_request req = {.method = "PUT",
                               .url = u,
                               .headers = headers,
                               .body = "a\0b",
                               .body_len = 3,
                               .timeout_ms = WAIT_MS};

    submit(f, &req, &res, NULL);
    run_until(f, called, &res);
    assert_int_equal(res.status, 201);
    assert_string_equal(res.header, "PUT");
    assert_string_equal(res.header2, "text/plain");
    assert_int_equal(res.body_len, 3);
    assert_memory_equal(res.body, "a\0b", 3);
    result_clear(&res);
    free(u);
}

#define CONCURRENT 200

struct many {
    struct result res[CONCURRENT];
};

static bool
all_called(void *arg)
{
    struct many *m = arg;
    for (int i = 0; i < CONCURRENT; i++) {
        if (m->res[i].calls == 0)
            return false;
    }
    return true;
}

static void
test_concurrent_transfers_each_complete_exactly_once(void **state)
{
    struct fixture *f = *state;
    struct many *m = xcalloc(1, sizeof(*m));

    for (int i = 0; i < CONCURRENT; i++) {
        char path[32];
        snprintf(path, sizeof(path), "/id/%d", i);
        char *u = url(path);
        struct http_request req = {
            .method = "GET", .url = u, .timeout_ms = WAIT_MS};
        assert_int_equal(http_submit(f->http, &req, on_done, &m->res[i], NULL),
                         0);
        free(u);
    }
    assert_int_equal(http_in_flight(f->http), CONCURRENT);
    run_until(f, all_called, m);
    /* one more turn: a second callback for any transfer would show here */
    uv_run(&f->loop, UV_RUN_NOWAIT);
    for (int i = 0; i < CONCURRENT; i++) {
        char want[16];
        snprintf(want, sizeof(want), "%d", i);
        assert_int_equal(m->res[i].calls, 1);
        assert_int_equal(m->res[i].status, 200);
        assert_string_equal(m->res[i].body, want);
        result_clear(&m->res[i]);
    }
    assert_int_equal(http_in_flight(f->http), 0);
    free(m);
}

struct chain {
    struct http *http;
    char *url;
    int left; /* requests still to send */
    int ok;   /* 200s received */
};

static void
on_chain_done(const struct http_response *r, void *data)
{
    struct chain *c = data;
    if (r->status == 200)
        c->ok++;
    if (--c->left > 0) {
        struct http_request req = {
            .method = "GET", .url = c->url, .timeout_ms = WAIT_MS};
        assert_int_equal(http_submit(c->http, &req, on_chain_done, c, NULL), 0);
    }
}

static bool
chain_done(void *arg)
{
    return ((struct chain *)arg)->left == 0;
}

static void
test_sequential_requests_reuse_one_connection(void **state)
{
    struct fixture *f = *state;
    struct chain c = {.http = f->http, .url = url("/hello"), .left = 5};
    struct http_request req = {
        .method = "GET", .url = c.url, .timeout_ms = WAIT_MS};

    atomic_store(&conns_started, 0);
    /* each next request is submitted from the previous one's callback */
    assert_int_equal(http_submit(f->http, &req, on_chain_done, &c, NULL), 0);
    run_until(f, chain_done, &c);
    assert_int_equal(c.ok, 5);
    assert_int_equal(atomic_load(&conns_started), 1);
    free(c.url);
}

static void
test_total_timeout_sets_timed_out(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    char *u = url("/slow?ms=5000");
    struct http_request req = {.method = "GET", .url = u, .timeout_ms = 200};

    submit(f, &req, &res, NULL);
    run_until(f, called, &res);
    assert_int_equal(res.calls, 1);
    assert_true(res.timed_out);
    assert_int_equal(res.curl_code, CURLE_OPERATION_TIMEDOUT);
    assert_int_equal(res.status, 0);
    assert_false(res.cancelled);
    result_clear(&res);
    free(u);
}

static void
test_refused_connection_sets_curl_code_and_no_status(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    struct sockaddr_in sa = {0};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    /* a port that was just free: bound, read back, closed */
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    char *u = xasprintf("http://127.0.0.1:%u/x", ntohs(sa.sin_port));
    struct http_request req = {
        .method = "GET", .url = u, .timeout_ms = WAIT_MS};

    submit(f, &req, &res, NULL);
    run_until(f, called, &res);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.curl_code, CURLE_COULDNT_CONNECT);
    assert_false(res.timed_out);
    result_clear(&res);
    free(u);
}

static void
test_body_over_cap_with_content_length_is_too_large(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    char *u = url("/big?n=100000");
    struct http_request req = {
        .method = "GET", .url = u, .timeout_ms = WAIT_MS, .max_response = 1000};

    submit(f, &req, &res, NULL);
    run_until(f, called, &res);
    assert_true(res.too_large);
    assert_int_not_equal(res.curl_code, 0);
    assert_true(res.body_len <= 1000);
    result_clear(&res);
    free(u);
}

static void
test_chunked_body_over_cap_is_too_large(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    char *u = url("/chunked?n=50000");
    struct http_request req = {
        .method = "GET", .url = u, .timeout_ms = WAIT_MS, .max_response = 4096};

    submit(f, &req, &res, NULL);
    run_until(f, called, &res);
    assert_true(res.too_large);
    assert_int_equal(res.curl_code, CURLE_WRITE_ERROR);
    assert_true(res.body_len <= 4096);
    result_clear(&res);
    free(u);
}

static void
test_body_at_cap_is_accepted(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    char *u = url("/chunked?n=4096");
    struct http_request req = {
        .method = "GET", .url = u, .timeout_ms = WAIT_MS, .max_response = 4096};

    submit(f, &req, &res, NULL);
    run_until(f, called, &res);
    assert_false(res.too_large);
    assert_int_equal(res.curl_code, 0);
    assert_int_equal(res.body_len, 4096);
    result_clear(&res);
    free(u);
}

static void
test_redirect_is_not_followed(void **state)
{
    struct fixture *f = *state;
    struct result res = {.want_header = "Location"};
    int before = atomic_load(&hello_hits);

    get(f, "/redirect", &res);
    assert_int_equal(res.status, 302);
    assert_string_equal(res.body, "moved");
    assert_non_null(strstr(res.header, "/hello"));
    assert_int_equal(atomic_load(&hello_hits), before);
    result_clear(&res);
}

/* A download's sink (http.h): a 2xx body goes to the sink chunk by chunk
 * and not to memory, under the same cap; an error body stays in memory;
 * a sink's error aborts the transfer. */
struct sink {
    struct buf got;
    int calls;
    int fail_at; /* the call that fails with -ENOSPC, 0 never */
};

static int
on_sink(const void *data, size_t len, void *arg)
{
    struct sink *k = arg;
    if (++k->calls == k->fail_at)
        return -ENOSPC;
    buf_append(&k->got, data, len);
    return 0;
}

static void
sink_get(struct fixture *f, const char *path, size_t cap, struct sink *k,
         struct result *res)
{
    char *u = url(path);
    struct http_request req = {.method = "GET",
                               .url = u,
                               .timeout_ms = WAIT_MS,
                               .max_response = cap,
                               .sink = on_sink,
                               .sink_arg = k};
    submit(f, &req, res, NULL);
    run_until(f, called, res);
    free(u);
}

static void
test_sink_takes_a_2xx_body(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    struct sink k = {0};

    sink_get(f, "/chunked?n=50000", 0, &k, &res);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.curl_code, 0);
    assert_int_equal(k.got.len, 50000);
    assert_true(k.calls > 1);
    assert_int_equal(res.body_len, 0); /* nothing kept in memory */
    result_clear(&res);
    buf_free(&k.got);
}

/* Its own client: a second request on the connection of a large answer
 * sometimes stalls against this test server (seen with and without a
 * sink, not yet understood). */
static void
test_sink_leaves_an_error_body_in_memory(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    struct sink k = {0};

    sink_get(f, "/nowhere", 0, &k, &res);
    assert_int_equal(res.status, 404);
    assert_int_equal(k.calls, 0);
    assert_string_equal(res.body, "no");
    result_clear(&res);
}

static void
test_sink_error_aborts_the_transfer(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    struct sink k = {.fail_at = 2};

    sink_get(f, "/chunked?n=50000", 0, &k, &res);
    assert_int_equal(res.curl_code, CURLE_WRITE_ERROR);
    assert_false(res.too_large);
    assert_true(k.got.len < 50000);
    result_clear(&res);
    buf_free(&k.got);
}

static void
test_sink_is_under_the_body_cap(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    struct sink k = {0};

    sink_get(f, "/chunked?n=50000", 4096, &k, &res);
    assert_true(res.too_large);
    assert_true(k.got.len <= 4096);
    result_clear(&res);
    buf_free(&k.got);
}

/* A one-shot raw server: reads one request and writes answer whole, for
 * what libmicrohttpd will not send (interim answers, folded headers). */
struct raw_server {
    int fd;
    unsigned short port;
    pthread_t thread;
    const char *answer;
    size_t answer_len;
};

static void *
raw_server_main(void *arg)
{
    struct raw_server *s = arg;
    char buf[4096];
    size_t got = 0;
    int c = accept(s->fd, NULL, NULL);

    if (c < 0)
        return NULL;
    while (got < sizeof(buf) - 1) {
        ssize_t n = read(c, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    for (size_t off = 0; off < s->answer_len;) {
        ssize_t n = write(c, s->answer + off, s->answer_len - off);
        if (n <= 0) {
            perror("raw server write");
            break;
        }
        off += (size_t)n;
    }
    close(c);
    return NULL;
}

/* Starts a raw server on a free loopback port; returns its URL. */
static char *
raw_server_start(struct raw_server *s, const char *answer, size_t len)
{
    struct sockaddr_in sa = {0};
    socklen_t slen = sizeof(sa);

    s->answer = answer;
    s->answer_len = len;
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s->fd, 1), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sa, &slen), 0);
    s->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, raw_server_main, s), 0);
    return xasprintf("http://127.0.0.1:%u/", (unsigned)s->port);
}

static void
raw_server_stop(struct raw_server *s)
{
    pthread_join(s->thread, NULL);
    close(s->fd);
}

static void
test_interim_response_headers_are_dropped(void **state)
{
    struct fixture *f = *state;
    struct result res = {.want_header = "X-Interim",
                         .want_header2 = "X-Folded"};
    struct raw_server s;
    static const char answer[] = "HTTP/1.1 103 Early Hints\r\n"
                                 "Link: </style.css>; rel=preload\r\n"
                                 "X-Interim: yes\r\n"
                                 "\r\n"
                                 "HTTP/1.1 200 OK\r\n"
                                 "Content-Length: 2\r\n"
                                 "X-Final: yes\r\n"
                                 "X-Folded: part1\r\n"
                                 "\tpart2\r\n"
                                 "Connection: close\r\n"
                                 "\r\n"
                                 "ok";
    char *u = raw_server_start(&s, answer, sizeof(answer) - 1);
    struct http_request req = {
        .method = "GET", .url = u, .timeout_ms = WAIT_MS};

    submit(f, &req, &res, NULL);
    run_until(f, called, &res);
    raw_server_stop(&s);
    assert_int_equal(res.status, 200);
    assert_string_equal(res.body, "ok");
    assert_null(res.header);
    assert_string_equal(res.header2, "part1 part2");
    result_clear(&res);
    free(u);
}

static void
test_cancel_runs_callback_once_with_cancelled(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    struct http_xfer *x = NULL;
    int one = 1;
    char *u = url("/slow?ms=5000");
    struct http_request req = {
        .method = "GET", .url = u, .timeout_ms = WAIT_MS};

    submit(f, &req, &res, &x);
    assert_non_null(x);
    run_until(f, slow_seen, &one);
    assert_int_equal(res.calls, 0);
    http_cancel(x);
    /* the callback ran before http_cancel returned */
    assert_int_equal(res.calls, 1);
    assert_true(res.cancelled);
    assert_int_equal(http_in_flight(f->http), 0);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(res.calls, 1);
    result_clear(&res);
    free(u);
}

static void
test_free_with_transfers_in_flight_cancels_each_once(void **state)
{
    struct fixture *f = *state;
    struct result res[8] = {{0}};
    int n = 8;
    char *u = url("/slow?ms=5000");
    struct http_request req = {
        .method = "GET", .url = u, .timeout_ms = WAIT_MS};

    for (int i = 0; i < n; i++)
        submit(f, &req, &res[i], NULL);
    run_until(f, slow_seen, &n);
    http_free(f->http);
    f->http = NULL;
    for (int i = 0; i < n; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_true(res[i].cancelled);
        result_clear(&res[i]);
    }
    free(u);
}

struct freer {
    struct fixture *f;
    int calls;
};

static void
on_done_free_client(const struct http_response *r, void *data)
{
    struct freer *fr = data;
    (void)r;
    fr->calls++;
    if (fr->f->http) {
        http_free(fr->f->http);
        fr->f->http = NULL;
    }
}

static bool
freer_called(void *arg)
{
    return ((struct freer *)arg)->calls > 0;
}

static void
test_free_from_inside_a_callback_cancels_the_rest(void **state)
{
    struct fixture *f = *state;
    struct freer fr = {.f = f};
    struct result slow = {0};
    char *fast = url("/hello");
    char *u = url("/slow?ms=5000");
    struct http_request slow_req = {
        .method = "GET", .url = u, .timeout_ms = WAIT_MS};
    struct http_request fast_req = {
        .method = "GET", .url = fast, .timeout_ms = WAIT_MS};

    submit(f, &slow_req, &slow, NULL);
    assert_int_equal(
        http_submit(f->http, &fast_req, on_done_free_client, &fr, NULL), 0);
    run_until(f, freer_called, &fr);
    assert_int_equal(fr.calls, 1);
    assert_int_equal(slow.calls, 1);
    assert_true(slow.cancelled);
    assert_null(f->http);
    result_clear(&slow);
    free(fast);
    free(u);
}

static void
test_submit_without_url_fails_and_never_calls_back(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    struct http_request req = {.method = "GET", .url = NULL};
    struct http_xfer *x = (struct http_xfer *)&res;

    assert_int_equal(http_submit(f->http, &req, on_done, &res, &x), -EINVAL);
    assert_null(x);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(res.calls, 0);
    assert_int_equal(http_in_flight(f->http), 0);
}

/* A line break in a header value would end the header and let the rest be
 * read as another header, or a second request with our credentials: the
 * client refuses the request before anything is sent. */
static void
test_header_or_url_with_a_line_break_is_refused_unsent(void **state)
{
    struct fixture *f = *state;
    struct result res = {0};
    char *u = url("/hello");
    char *bad_url = url("/hello\r\nX-Evil: 1");
    const char *injected[] = {"Authorization: Bearer sk-secret",
                              "Idempotency-Key: k\r\nX-Evil: 1", NULL};
    const char *nonascii[] = {"Idempotency-Key: caf\xc3\xa9", NULL};
    const char *noname[] = {": value", NULL};
    const char *fine[] = {"Idempotency-Key: k-1", "X-Note: two words", NULL};
    int before = atomic_load(&hello_hits);
    struct http_request req = {.method = "GET", .url = u,
                               .timeout_ms = WAIT_MS};

    req.headers = injected;
    assert_int_equal(http_submit(f->http, &req, on_done, &res, NULL), -EINVAL);
    req.headers = nonascii;
    assert_int_equal(http_submit(f->http, &req, on_done, &res, NULL), -EINVAL);
    req.headers = noname;
    assert_int_equal(http_submit(f->http, &req, on_done, &res, NULL), -EINVAL);
    req.headers = fine;
    req.url = bad_url;
    assert_int_equal(http_submit(f->http, &req, on_done, &res, NULL), -EINVAL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(res.calls, 0);
    assert_int_equal(http_in_flight(f->http), 0);
    assert_int_equal(atomic_load(&hello_hits), before);

    /* inner spaces are fine */
    req.url = u;
    submit(f, &req, &res, NULL);
    run_until(f, called, &res);
    assert_int_equal(res.status, 200);
    assert_int_equal(atomic_load(&hello_hits), before + 1);
    result_clear(&res);
    free(u);
    free(bad_url);
}

/* CPU seconds this thread has used: the cost of work on the loop, whatever
 * else the machine is doing. */
static double
thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One 500 with ~70,000 folded continuation lines (under curl's cap on
 * header bytes): rebuilding the value per line cost the only loop thread
 * seconds of copying per response. Folding is now linear: the bound below
 * is on this thread's CPU time, a hundred times what linear folding needs
 * even under a sanitizer, and a fraction of what the quadratic one took. */
/* The loop's CPU time to receive one 500 whose header X-Fold is folded
 * over `lines` continuation lines, with the value checked. */
static double
fold_cpu(struct fixture *f, int lines)
{
    struct result res = {.want_header = "X-Fold", .want_header2 = "X-After"};
    struct buf a = {0};
    struct raw_server s;

    buf_appendf(&a, "HTTP/1.1 500 Internal Server Error\r\n"
                    "Content-Length: 2\r\nX-Fold: v\r\n");
    for (int i = 0; i < lines; i++)
        buf_append(&a, " a\r\n", 4);
    buf_appendf(&a, "X-After: yes\r\nConnection: close\r\n\r\nno");
    char *u = raw_server_start(&s, a.data, a.len);
    struct http_request req = {
        .method = "GET", .url = u, .timeout_ms = 120000};

    double cpu = thread_cpu_s();
    submit(f, &req, &res, NULL);
    run_until(f, called, &res);
    cpu = thread_cpu_s() - cpu;
    raw_server_stop(&s);
    assert_int_equal(res.curl_code, 0);
    assert_int_equal(res.status, 500);
    assert_string_equal(res.header2, "yes");
    assert_int_equal(strlen(res.header), 1 + 2 * (size_t)lines);
    assert_memory_equal(res.header, "v a a", 5);
    result_clear(&res);
    buf_free(&a);
    free(u);
    return cpu;
}

/* Linear, not quadratic: four times the lines cost about four times the
 * CPU (a copy of the value per line would cost sixteen times). A ratio
 * measured in the same run, so a slow machine judges the same; the small
 * absolute slack absorbs the fixed cost. Under AddressSanitizer only the
 * value is checked: its realloc always moves the block, which makes
 * libcurl's own unfolding (one realloc per continuation line, in its
 * headers API) quadratic there, whatever our code does. */
static void
test_many_folded_lines_cost_linear_time(void **state)
{
    struct fixture *f = *state;
    enum { LINES = 32000 };

#if defined(__SANITIZE_ADDRESS__)
    fold_cpu(f, LINES / 4);
#else
    double quarter = fold_cpu(f, LINES / 4);
    double full = fold_cpu(f, LINES);
    if (full > 8.0 * quarter + 0.25)
        fail_msg("folding %d lines took %.2f s of the loop's CPU, %d lines "
                 "%.2f s: not linear", LINES, full, LINES / 4, quarter);
#endif
}

#define T(fn)                                                                  \
    cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)

int
main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_get_returns_status_headers_and_body),
        T(test_post_sends_body_as_json_without_expect),
        T(test_custom_method_keeps_caller_content_type_and_binary_body),
        T(test_concurrent_transfers_each_complete_exactly_once),
        T(test_sequential_requests_reuse_one_connection),
        T(test_total_timeout_sets_timed_out),
        T(test_refused_connection_sets_curl_code_and_no_status),
        T(test_body_over_cap_with_content_length_is_too_large),
        T(test_chunked_body_over_cap_is_too_large),
        T(test_body_at_cap_is_accepted),
        T(test_redirect_is_not_followed),
        T(test_sink_takes_a_2xx_body),
        T(test_sink_leaves_an_error_body_in_memory),
        T(test_sink_error_aborts_the_transfer),
        T(test_sink_is_under_the_body_cap),
        T(test_interim_response_headers_are_dropped),
        T(test_many_folded_lines_cost_linear_time),
        T(test_cancel_runs_callback_once_with_cancelled),
        T(test_free_with_transfers_in_flight_cancels_each_once),
        T(test_free_from_inside_a_callback_cancels_the_rest),
        T(test_submit_without_url_fails_and_never_calls_back),
        T(test_header_or_url_with_a_line_break_is_refused_unsent),
    };
    return cmocka_run_group_tests(tests, server_start, server_stop);
}
