/*
 * http: all HTTP of the daemon. libcurl's multi socket API driven by the
 * libuv loop (a uv_poll per socket, one uv_timer for curl's timeout).
 * Requests in, responses out; nothing here knows about jobs or providers.
 */
#ifndef SLUICE_HTTP_H
#define SLUICE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct http;
struct http_xfer;

/* Receives the body of a 2xx final response in chunks, instead of the
 * memory buffer (downloads stream to a file). Returns 0, or a negative
 * errno to abort the transfer (it then fails with curl_code set and the
 * errno's text in error). Runs on the loop thread, inside curl: it must
 * not submit or cancel transfers. */
typedef int (*http_sink_fn)(const void *data, size_t len, void *arg);

struct http_request {
    const char *method;       /* "GET", "POST", … */
    const char *url;          /* absolute URL */
    const char *const *headers; /* NULL-terminated "Name: value" lines */
    const char *body;         /* request body or NULL */
    size_t body_len;
    int64_t timeout_ms;       /* whole transfer; 0 = none */
    int64_t connect_timeout_ms; /* 0 = curl's default */
    size_t max_response;      /* body cap in bytes; beyond it the transfer
                                 fails with a protocol error; 0 = 8 MiB */
    http_sink_fn sink;        /* NULL: the body is kept in memory; else a
                                 2xx body goes to sink (other statuses are
                                 still kept, for their error text) */
    void *sink_arg;
};

struct http_header {
    char *name;  /* as received */
    char *value; /* trimmed */
};

struct http_response {
    int status;           /* HTTP status, 0 when no response was received */
    int curl_code;        /* CURLcode, 0 on a completed exchange */
    char error[256];      /* curl's error text when curl_code != 0 */
    bool timed_out;       /* curl_code was CURLE_OPERATION_TIMEDOUT */
    bool too_large;       /* body exceeded max_response */
    bool cancelled;       /* aborted by http_cancel() */
    long request_bytes;   /* bytes of the request sent (curl's
                             CURLINFO_REQUEST_SIZE): 0 means none left */
    struct http_header *headers; /* of the final response */
    size_t nheaders;
    char *body;           /* NUL-terminated, may contain NULs ("" when a
                             sink took it) */
    size_t body_len;
    size_t sunk;          /* body bytes the request's sink took */
    int64_t started_ms;   /* unix ms */
    int64_t finished_ms;  /* unix ms */
};

/* Last header with this name (case-insensitive), or NULL. Borrowed. */
const char *http_response_header(const struct http_response *r,
                                 const char *name);

/* Whether line is a request header http_submit accepts: "Name: value", the
 * name an RFC 9110 token, the value visible ASCII (0x21-0x7e) and spaces
 * only, so nothing in it can end the header or start another. */
bool http_header_ok(const char *line);

/* Called exactly once per submitted transfer, on the loop thread. The
 * response is borrowed for the duration of the call. */
typedef void (*http_done_cb)(const struct http_response *resp, void *data);

/* Returns a new client on loop. Keep-alive connections are shared. */
struct http *http_new(uv_loop_t *loop);
/* Starts a transfer. On success returns 0, sets *out (may be NULL) to a
 * handle valid until the callback returns, and cb runs exactly once.
 * On failure returns a negative errno and cb never runs: -EINVAL for a
 * header that fails http_header_ok or a URL with a byte outside visible
 * ASCII. */
int http_submit(struct http *h, const struct http_request *req,
                http_done_cb cb, void *data, struct http_xfer **out);
/* From a sink, while the body arrives: the status of the final response
 * and its header of that name (last one, case-insensitive; NULL when
 * absent), borrowed until the sink returns. */
int http_xfer_status(const struct http_xfer *x);
const char *http_xfer_header(const struct http_xfer *x, const char *name);
/* Aborts a transfer: its callback runs (with cancelled set) before this
 * returns. */
void http_cancel(struct http_xfer *x);
/* Transfers in flight. */
size_t http_in_flight(const struct http *h);
/* Cancels what is in flight and closes the handles; memory is released in
 * the close callbacks, so run the loop once more before uv_loop_close. NULL
 * is accepted. */
void http_free(struct http *h);

#endif
