/*
 * http: libcurl's multi socket API on the libuv loop.
 *
 * One CURLM per struct http, shared by every transfer, so keep-alive
 * connections (and HTTP/2 streams) are reused across jobs. curl tells us
 * which sockets to watch (on_curl_socket: one uv_poll_t per socket, kept as
 * curl's socketp) and when to call back (on_curl_timer: one uv_timer_t).
 * Each poll or timer event runs curl_multi_socket_action and then drains
 * curl_multi_info_read completely: draining only on some paths (as curl's
 * multi-uv.c example does) can leave the last completion unread until some
 * unrelated event, which for the last transfer of a batch is never.
 *
 * User callbacks run only from drain_completions, http_cancel and
 * http_free, never from inside a curl callback, so a callback may submit or
 * cancel transfers freely. http_free called from inside a callback only
 * marks the client dying; the teardown happens when the event handler
 * that ran the callback unwinds (h->busy counts those frames).
 *
 * Handles follow libuv's rule: a uv handle is freed only in its close
 * callback. The struct http itself is freed in the timer's close callback.
 *
 * Rejected: one CURLM per provider (no shared DNS cache, more timers, and
 * nothing gained: lanes already limit concurrency); following redirects
 * (credentials must never reach another host); a thread running
 * curl_multi_perform (the daemon is one loop, one thread).
 */
#include <curl/curl.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "sluice/clock.h"
#include "sluice/http.h"
#include "sluice/log.h"
#include "sluice/xmalloc.h"

/* The default body cap (http.h): generation APIs answer with URLs, not
 * payloads, so a response over 8 MiB is a bug or an attack. */
#define HTTP_DEFAULT_MAX_RESPONSE ((size_t)8 << 20)
/* Idle keep-alive connections kept by the multi handle: several providers
 * times concurrency_max (default 64) with room to spare. */
#define HTTP_MAX_CONNECTS 512L

_Static_assert(CURL_ERROR_SIZE <= sizeof(((struct http_response *)0)->error),
               "curl's error buffer is written into http_response.error");

struct http_sock;

struct http {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t *timer;       /* curl's timeout; owns struct http on close */
    struct http_xfer *xfers; /* in flight, doubly linked */
    size_t nxfers;
    struct http_sock *socks; /* watched sockets, doubly linked */
    int busy;                /* event handler frames on the stack */
    bool dying;              /* http_free called; teardown when !busy */
};

/* One socket curl asked us to watch. */
struct http_sock {
    uv_poll_t poll; /* poll.data = this */
    struct http *h;
    curl_socket_t fd;
    struct http_sock *prev, *next;
};

struct http_xfer {
    struct http *h;
    CURL *easy;
    struct curl_slist *headers; /* request headers, owned */
    http_done_cb cb;
    void *data;
    size_t max_response;
    http_sink_fn sink;         /* a 2xx body goes here, see http.h */
    void *sink_arg;
    size_t sunk;               /* bytes given to sink */
    int sink_err;              /* sink's negative errno, 0 */
    struct buf body;
    struct http_header *hdrs; /* response headers of the last response */
    size_t nhdrs, hcap;
    size_t vlen, vcap;        /* length and allocation of the last value */
    bool too_large;
    bool done;                 /* callback running or ran */
    struct http_response resp; /* resp.error is curl's error buffer */
    struct http_xfer *prev, *next;
};

/* curl_global_init is process-wide; count the clients using it. */
static int curl_users;

static void http_teardown(struct http *h);

const char *
http_response_header(const struct http_response *r, const char *name)
{
    for (size_t i = r->nheaders; i > 0; i--) {
        if (strcasecmp(r->headers[i - 1].name, name) == 0)
            return r->headers[i - 1].value;
    }
    return NULL;
}

int
http_xfer_status(const struct http_xfer *x)
{
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    return (int)status;
}

const char *
http_xfer_header(const struct http_xfer *x, const char *name)
{
    for (size_t i = x->nhdrs; i > 0; i--) {
        if (strcasecmp(x->hdrs[i - 1].name, name) == 0)
            return x->hdrs[i - 1].value;
    }
    return NULL;
}

/* --- response capture -------------------------------------------------- */

static void
xfer_headers_clear(struct http_xfer *x)
{
    for (size_t i = 0; i < x->nhdrs; i++) {
        free(x->hdrs[i].name);
        free(x->hdrs[i].value);
    }
    x->nhdrs = 0;
}

static bool
is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static size_t
on_curl_header(char *line, size_t size, size_t n, void *userdata)
{
    struct http_xfer *x = userdata;
    size_t len = size * n;
    const char *end = line + len;
    const char *colon;

    /* A status line starts a new response (1xx interim answers, or the
     * server's answer after a proxy CONNECT): only the final one counts. */
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        xfer_headers_clear(x);
        return len;
    }
    while (end > line && is_space(end[-1]))
        end--;
    if (end == line)
        return len;
    /* obs-fold: a continuation line extends the previous value, in place
     * with a doubling allocation: rebuilding the value per line made a
     * response of 70,000 folded lines cost seconds of the loop. */
    if ((line[0] == ' ' || line[0] == '\t') && x->nhdrs > 0) {
        const char *p = line;
        while (p < end && is_space(*p))
            p++;
        struct http_header *last = &x->hdrs[x->nhdrs - 1];
        size_t add = (size_t)(end - p);
        if (x->vlen + 1 + add + 1 > x->vcap) {
            x->vcap = 2 * (x->vlen + 1 + add + 1);
            last->value = xrealloc(last->value, x->vcap);
        }
        last->value[x->vlen++] = ' ';
        memcpy(last->value + x->vlen, p, add);
        x->vlen += add;
        last->value[x->vlen] = '\0';
        return len;
    }
    colon = memchr(line, ':', (size_t)(end - line));
    if (colon == NULL || colon == line)
        return len;
    const char *v = colon + 1;
    while (v < end && is_space(*v))
        v++;
    if (x->nhdrs == x->hcap) {
        x->hcap = x->hcap ? x->hcap * 2 : 16;
        x->hdrs = xrealloc(x->hdrs, x->hcap * sizeof(*x->hdrs));
    }
    x->hdrs[x->nhdrs].name = xstrndup(line, (size_t)(colon - line));
    x->hdrs[x->nhdrs].value = xstrndup(v, (size_t)(end - v));
    x->vlen = strlen(x->hdrs[x->nhdrs].value); /* a NUL would end it */
    x->vcap = x->vlen + 1;
    x->nhdrs++;
    return len;
}

static size_t
on_curl_write(char *data, size_t size, size_t n, void *userdata)
{
    struct http_xfer *x = userdata;
    size_t len = size * n;
    long status = 0;

    if (len > x->max_response - x->body.len - x->sunk) {
        x->too_large = true;
        return 0; /* anything but len: curl fails with CURLE_WRITE_ERROR */
    }
    if (x->sink != NULL) {
        /* The body starts after the final response's headers: its status
         * is known here. */
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && status < 300) {
            int rc = x->sink(data, len, x->sink_arg);
            if (rc < 0) {
                x->sink_err = rc;
                return 0;
            }
            x->sunk += len;
            return len;
        }
    }
    buf_append(&x->body, data, len);
    return len;
}

/* --- transfers --------------------------------------------------------- */

static void
xfer_free(struct http_xfer *x)
{
    curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    xfer_headers_clear(x);
    free(x->hdrs);
    buf_free(&x->body);
    free(x);
}

static void
xfer_unlink(struct http_xfer *x)
{
    struct http *h = x->h;
    if (x->prev)
        x->prev->next = x->next;
    else
        h->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
    h->nxfers--;
}

/* Takes x out of the multi handle, runs its callback once and frees it.
 * code is curl's result; cancelled means http_cancel/http_free did it. */
static void
xfer_finish(struct http_xfer *x, CURLcode code, bool cancelled)
{
    struct http_response *r = &x->resp;
    long status = 0;

    x->done = true;
    curl_multi_remove_handle(x->h->multi, x->easy);
    xfer_unlink(x);

    r->finished_ms = clock_now_ms();
    r->cancelled = cancelled;
    curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &r->request_bytes);
    if (cancelled) {
        r->curl_code = CURLE_ABORTED_BY_CALLBACK;
        snprintf(r->error, sizeof(r->error), "transfer cancelled");
    } else {
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        r->status = (int)status;
        r->curl_code = (int)code;
        r->timed_out = code == CURLE_OPERATION_TIMEDOUT;
        r->too_large = x->too_large || code == CURLE_FILESIZE_EXCEEDED;
        if (r->too_large) {
            snprintf(r->error, sizeof(r->error), "response body over %zu bytes",
                     x->max_response);
        } else if (x->sink_err != 0) {
            snprintf(r->error, sizeof(r->error), "writing the body: %s",
                     strerror(-x->sink_err));
        } else if (code != CURLE_OK && r->error[0] == '\0') {
            snprintf(r->error, sizeof(r->error), "%s",
                     curl_easy_strerror(code));
        }
    }
    if (r->curl_code == 0)
        r->error[0] = '\0';
    r->headers = x->hdrs;
    r->nheaders = x->nhdrs;
    if (x->body.data == NULL)
        buf_append(&x->body, "", 0);
    r->body = x->body.data;
    r->body_len = x->body.len;
    r->sunk = x->sunk;
    if (r->curl_code != 0 && !cancelled)
        log_debug("http %s: %s", r->too_large ? "body cap" : "failure",
                  r->error);

    x->cb(r, x->data);
    xfer_free(x);
}

/* Runs the callbacks of every finished transfer. Called after each
 * curl_multi_socket_action; stops early if a callback freed the client. */
static void
drain_completions(struct http *h)
{
    CURLMsg *msg;
    int left;

    while (!h->dying && (msg = curl_multi_info_read(h->multi, &left))) {
        struct http_xfer *x = NULL;
        if (msg->msg != CURLMSG_DONE)
            continue;
        /* msg points into the easy handle: read it before finishing. */
        CURLcode code = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        xfer_finish(x, code, false);
    }
}

static void
socket_action(struct http *h, curl_socket_t fd, int events)
{
    int running;
    CURLMcode mc;

    h->busy++;
    mc = curl_multi_socket_action(h->multi, fd, events, &running);
    if (mc != CURLM_OK)
        log_warnx("http: curl_multi_socket_action: %s",
                  curl_multi_strerror(mc));
    drain_completions(h);
    h->busy--;
    if (h->dying && h->busy == 0)
        http_teardown(h);
}

/* --- libuv side -------------------------------------------------------- */

static void
on_uv_timer(uv_timer_t *t)
{
    socket_action(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static void
on_uv_poll(uv_poll_t *p, int status, int events)
{
    struct http_sock *s = p->data;
    int flags = 0;

    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    /* s may be closed inside socket_action: read what we need first. */
    socket_action(s->h, s->fd, flags);
}

static void
on_uv_sock_close(uv_handle_t *handle)
{
    free(handle->data);
}

static void
sock_close(struct http_sock *s)
{
    struct http *h = s->h;
    if (s->prev)
        s->prev->next = s->next;
    else
        h->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    /* uv_close stops the poll now, before curl closes the fd, so a new
     * socket that reuses the number can be watched at once. */
    uv_close((uv_handle_t *)&s->poll, on_uv_sock_close);
}

static void
on_uv_timer_close(uv_handle_t *handle)
{
    struct http *h = handle->data;
    free(handle);
    free(h);
}

/* --- curl side --------------------------------------------------------- */

static int
on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
               void *socketp)
{
    struct http *h = userp;
    struct http_sock *s = socketp;
    int events = 0;
    int rc;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            curl_multi_assign(h->multi, fd, NULL);
            sock_close(s);
        }
        return 0;
    }
    if (s == NULL) {
        s = xcalloc(1, sizeof(*s));
        s->h = h;
        s->fd = fd;
        rc = uv_poll_init_socket(h->loop, &s->poll, fd);
        if (rc < 0) {
            log_error("http: uv_poll_init_socket %d: %s", (int)fd,
                      uv_strerror(rc));
            free(s);
            return -1; /* curl fails the transfers on this socket */
        }
        s->poll.data = s;
        s->next = h->socks;
        if (h->socks)
            h->socks->prev = s;
        h->socks = s;
        curl_multi_assign(h->multi, fd, s);
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    rc = uv_poll_start(&s->poll, events, on_uv_poll);
    if (rc < 0) {
        log_error("http: uv_poll_start %d: %s", (int)fd, uv_strerror(rc));
        return -1;
    }
    return 0;
}

static int
on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct http *h = userp;

    (void)multi;
    /* -1 deletes the timer; 0 means "as soon as possible", which must not
     * be a direct socket_action call (this runs inside curl): a 0 ms
     * libuv timer fires on the next loop iteration. */
    if (timeout_ms < 0)
        uv_timer_stop(h->timer);
    else
        uv_timer_start(h->timer, on_uv_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* --- public API -------------------------------------------------------- */

struct http *
http_new(uv_loop_t *loop)
{
    struct http *h;
    CURLcode cc;

    if (curl_users++ == 0) {
        cc = curl_global_init(CURL_GLOBAL_DEFAULT);
        if (cc != CURLE_OK)
            fatalx("http: curl_global_init: %s", curl_easy_strerror(cc));
    }
    h = xcalloc(1, sizeof(*h));
    h->loop = loop;
    h->multi = curl_multi_init();
    if (h->multi == NULL)
        fatalx("http: curl_multi_init failed");
    h->timer = xmalloc(sizeof(*h->timer));
    uv_timer_init(loop, h->timer);
    h->timer->data = h;

    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, HTTP_MAX_CONNECTS);
    curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    return h;
}

static bool
has_header(const char *const *headers, const char *name)
{
    size_t n = strlen(name);
    for (; headers && *headers; headers++) {
        if (strncasecmp(*headers, name, n) == 0 && (*headers)[n] == ':')
            return true;
    }
    return false;
}

/* RFC 9110 tchar. */
static bool
is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

bool
http_header_ok(const char *line)
{
    const char *p = line;

    while (is_tchar((unsigned char)*p))
        p++;
    if (p == line || *p != ':')
        return false;
    /* Visible ASCII and spaces: no line break can end the header early,
     * and no byte reaches the wire that a server might read otherwise. */
    for (p++; *p; p++) {
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            return false;
    }
    return true;
}

static bool
url_ok(const char *url)
{
    for (; *url; url++) {
        if ((unsigned char)*url < 0x21 || (unsigned char)*url > 0x7e)
            return false;
    }
    return true;
}

static struct curl_slist *
slist_add(struct curl_slist *list, const char *line)
{
    struct curl_slist *l = curl_slist_append(list, line);
    if (l == NULL)
        fatalx("http: out of memory building headers");
    return l;
}

/* Sets the method and body of the request on the easy handle. */
static void
xfer_set_method(CURL *e, const struct http_request *req)
{
    bool body = req->body != NULL;

    if (strcmp(req->method, "GET") == 0 && !body) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        return;
    }
    if (strcmp(req->method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        return;
    }
    if (body || strcmp(req->method, "POST") == 0) {
        /* The size first: COPYPOSTFIELDS copies that many bytes, so a
         * body may hold NULs. */
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)(body ? req->body_len : 0));
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body ? req->body : "");
    }
    if (strcmp(req->method, "POST") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
}

int
http_submit(struct http *h, const struct http_request *req, http_done_cb cb,
            void *data, struct http_xfer **out)
{
    struct http_xfer *x;
    CURL *e;
    CURLMcode mc;

    if (out)
        *out = NULL;
    if (h == NULL || req == NULL || req->method == NULL || req->url == NULL ||
        cb == NULL)
        return -EINVAL;
    if (h->dying)
        return -ESHUTDOWN;
    /* The callers check what they build; this is the last line, so a bad
     * byte from anywhere never reaches the wire. */
    if (!url_ok(req->url))
        return -EINVAL;
    for (const char *const *p = req->headers; p && *p; p++) {
        if (!http_header_ok(*p))
            return -EINVAL;
    }
    /* curl_easy_init fails only when it cannot allocate: fatal, like
     * every allocation. */
    if ((e = curl_easy_init()) == NULL)
        fatalx("http: curl_easy_init: out of memory");
    x = xcalloc(1, sizeof(*x));
    x->h = h;
    x->easy = e;
    x->cb = cb;
    x->data = data;
    x->max_response =
        req->max_response ? req->max_response : HTTP_DEFAULT_MAX_RESPONSE;
    x->sink = req->sink;
    x->sink_arg = req->sink_arg;

    for (const char *const *p = req->headers; p && *p; p++)
        x->headers = slist_add(x->headers, *p);
    /* "Expect: 100-continue" costs a round trip on bodies over 1 KiB. */
    if (!has_header(req->headers, "Expect"))
        x->headers = slist_add(x->headers, "Expect:");
    if (req->body != NULL && !has_header(req->headers, "Content-Type"))
        x->headers = slist_add(x->headers, "Content-Type: application/json");

    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->resp.error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    /* Never follow: the Authorization header would go along. */
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS,
                     (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
    if (req->connect_timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)req->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Over TLS, ALPN tells within the handshake whether the connection
     * multiplexes, so a burst waits for it instead of opening a connection
     * per transfer. Over plain http curl would only know after the whole
     * first response, which for a generation API can take a minute. */
    if (strncasecmp(req->url, "https://", 8) == 0)
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    /* A Content-Length over the cap fails before any byte is read; the
     * write callback catches chunked bodies. */
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->max_response);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_curl_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_curl_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    xfer_set_method(e, req);

    x->resp.started_ms = clock_now_ms();
    x->next = h->xfers;
    if (h->xfers)
        h->xfers->prev = x;
    h->xfers = x;
    h->nxfers++;
    mc = curl_multi_add_handle(h->multi, e);
    if (mc != CURLM_OK) {
        log_error("http: curl_multi_add_handle: %s", curl_multi_strerror(mc));
        xfer_unlink(x);
        xfer_free(x);
        return -EIO;
    }
    if (out)
        *out = x;
    return 0;
}

void
http_cancel(struct http_xfer *x)
{
    if (x == NULL || x->done)
        return;
    xfer_finish(x, CURLE_ABORTED_BY_CALLBACK, true);
}

size_t
http_in_flight(const struct http *h)
{
    return h ? h->nxfers : 0;
}

/* Closes the multi handle, the sockets and the timer; struct http is freed
 * in the timer's close callback. */
static void
http_teardown(struct http *h)
{
    struct http_sock *s;

    /* Stop watching while the fds are still open; curl closes them in
     * curl_multi_cleanup and may or may not report each as removed. */
    for (s = h->socks; s; s = s->next)
        uv_poll_stop(&s->poll);
    curl_multi_cleanup(h->multi);
    h->multi = NULL;
    while (h->socks)
        sock_close(h->socks);
    uv_close((uv_handle_t *)h->timer, on_uv_timer_close);
    if (--curl_users == 0)
        curl_global_cleanup();
}

void
http_free(struct http *h)
{
    if (h == NULL || h->dying)
        return;
    h->dying = true;
    while (h->xfers)
        http_cancel(h->xfers);
    if (h->busy == 0)
        http_teardown(h);
}
