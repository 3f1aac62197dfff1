/*
 * outputs/fetch.c: one download (docs/design.md §13) and the pure policy
 * it follows: the GET and its redirects, each hop's credentials judged
 * again; the body streamed into outputs_dir/.partial/<id> with its
 * sidecar, resumed with Range and If-Range; the fsync and rename on the
 * thread pool; the row's record, retried while the database is locked.
 * How downloads are claimed and scheduled, how failures are retried and
 * how resuming works: outputs.c's header.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sluice/clock.h"
#include "sluice/http.h"
#include "sluice/log.h"
#include "sluice/outputs.h"
#include "sluice/retry.h"
#include "sluice/store.h"
#include "sluice/url.h"
#include "sluice/xmalloc.h"

#include "internal.h"

/* --- pure policy ---------------------------------------------------------- */

char *
outputs_path(const char *dir, const char *sha)
{
    return xasprintf("%s/%.2s/%s", dir, sha, sha);
}

int64_t
outputs_retry_delay_ms(int attempts, double u)
{
    struct retry_policy p = {
        .base_ms = OUTPUTS_BACKOFF_BASE_MS,
        .cap_ms = OUTPUTS_BACKOFF_CAP_MS,
    };
    int64_t d = retry_backoff_ms(&p, attempts < 1 ? 1 : attempts, u);
    return d < OUTPUTS_BACKOFF_MIN_MS ? OUTPUTS_BACKOFF_MIN_MS : d;
}

bool
outputs_retryable(int status, bool transport_failure, bool too_large)
{
    if (too_large)
        return false;
    /* a 2xx whose body was cut (the connection dropped) is no answer */
    if (status == 0 || (status >= 200 && status < 300))
        return transport_failure;
    return status == 408 || status == 425 || status == 429 || status >= 500;
}

char *
outputs_redirect_url(const char *url, const char *location)
{
    size_t n;

    if (location == NULL || *location == '\0')
        return NULL;
    if (url_origin_len(location) > 0)
        return xstrdup(location);
    /* "//host/path" keeps the scheme; a bare path keeps the origin. */
    if (location[0] == '/' && location[1] == '/') {
        const char *colon = strchr(url, ':');
        if (colon == NULL || url_origin_len(url) == 0)
            return NULL;
        return xasprintf("%.*s:%s", (int)(colon - url), url, location);
    }
    if (location[0] != '/' || (n = url_origin_len(url)) == 0)
        return NULL;
    return xasprintf("%.*s%s", (int)n, url, location);
}

bool
outputs_content_range(const char *v, int64_t *start, int64_t *total)
{
    long long a, b, t = -1;
    char *end;

    if (v == NULL || strncasecmp(v, "bytes ", 6) != 0)
        return false;
    v += 6;
    a = strtoll(v, &end, 10);
    if (end == v || *end != '-' || a < 0)
        return false;
    v = end + 1;
    b = strtoll(v, &end, 10);
    if (end == v || *end != '/' || b < a)
        return false;
    v = end + 1;
    if (strcmp(v, "*") != 0) {
        t = strtoll(v, &end, 10);
        if (end == v || *end != '\0' || t <= b)
            return false;
    }
    *start = a;
    *total = t;
    return true;
}

const char *
outputs_if_range(const char *etag, const char *last_modified)
{
    if (etag != NULL && etag[0] == '"')
        return etag;
    if (last_modified != NULL && last_modified[0] != '\0')
        return last_modified;
    return NULL;
}

/* --- one download ---------------------------------------------------------- */

static void
free_strv(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

/* The request headers of a fetch (a new NULL-terminated array): auth
 * (NULL: none, off the provider's origin) and, when tmp holds an earlier
 * fetch's bytes, the Range of the rest and the If-Range they came under. */
static char **
dl_headers(const struct dl *d, const char *const *auth)
{
    size_t n = 0, k = 0;
    char **out;

    while (auth != NULL && auth[n])
        n++;
    out = xcalloc(n + 3, sizeof(char *));
    for (; k < n; k++)
        out[k] = xstrdup(auth[k]);
    if (d->offset > 0) {
        out[k++] = xasprintf("Range: bytes=%" PRId64 "-", d->offset);
        if (d->if_range != NULL)
            out[k++] = xasprintf("If-Range: %s", d->if_range);
    }
    return out;
}

/* Closes tmp; remove: and deletes it and its sidecar, else leaves both
 * for the next fetch of the row to resume from. */
static void
dl_close_file(struct dl *d, bool remove)
{
    if (d->fd >= 0) {
        close(d->fd);
        d->fd = -1;
    }
    if (remove && d->tmp != NULL)
        unlink(d->tmp);
    if (remove && d->meta != NULL)
        unlink(d->meta);
    if (!remove) {
        free(d->tmp);
        free(d->meta);
        d->tmp = d->meta = NULL; /* nothing for dl_free to remove */
    }
}

/* Whether tmp is worth keeping for a later fetch of the row. */
static bool
dl_keep(const struct dl *d)
{
    return d->resumable && !d->discard && d->meta != NULL &&
           d->offset + d->bytes > 0;
}

static void
dl_free(struct dl *d)
{
    struct outputs *o = d->o;

    if (d->prev)
        d->prev->next = d->next;
    else
        o->dls = d->next;
    if (d->next)
        d->next->prev = d->prev;
    o->active--;
    dl_close_file(d, true);
    EVP_MD_CTX_free(d->sha);
    output_claim_clear(&d->c);
    free(d->url);
    free_strv(d->headers);
    free(d->tmp);
    free(d->meta);
    free(d->if_range);
    free(d->content_type);
    free(d->path);
    free(d);
}

/* Writes the row; on a lock, keeps d and tries again shortly. */
void
fetch_record(struct dl *d)
{
    struct outputs *o = d->o;
    int rc;

    d->phase = DL_RECORD;
    d->res.id = d->c.id;
    d->res.owner = o->owner;
    rc = store_output_record(o->store, &d->res, clock_now_ms());
    if (rc == -EBUSY && !o->stopping) {
        outputs_schedule(o, clock_now_ms() + OUTPUTS_BUSY_RETRY_MS);
        return;
    }
    if (rc == -ESTALE)
        log_warnx("output %" PRId64 ": lease lost (taken back or purged), "
                  "this fetch not recorded",
                  d->c.id);
    else if (rc < 0)
        log_warnx("output %" PRId64 ": not recorded (%s); fetched again "
                  "once its lease ends",
                  d->c.id, strerror(-rc));
    dl_free(d);
    if (o->stopping) {
        if (o->active == 0 && o->on_stopped) {
            void (*cb)(void *) = o->on_stopped;
            o->on_stopped = NULL;
            cb(o->stopped_arg);
        }
    } else {
        outputs_schedule(o, 0);
    }
}

/* The fetch failed (or was cut short): try again later, or give up. */
static void
dl_failed(struct dl *d, bool retryable, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
dl_failed(struct dl *d, bool retryable, const char *fmt, ...)
{
    va_list ap;
    int64_t now = clock_now_ms();

    va_start(ap, fmt);
    vsnprintf(d->error, sizeof(d->error), fmt, ap);
    va_end(ap);
    retryable = retryable && d->c.attempts < OUTPUTS_MAX_ATTEMPTS;
    dl_close_file(d, !(retryable && dl_keep(d)));
    memset(&d->res, 0, sizeof(d->res));
    d->res.error = d->error;
    if (retryable) {
        int64_t delay = outputs_retry_delay_ms(d->c.attempts, clock_random());
        d->res.state = "pending";
        d->res.run_after = now + delay;
        log_info("output %" PRId64 " of job %" PRId64 ": %s, retry in %" PRId64
                 " ms (fetch %d of %d)",
                 d->c.id, d->c.job_id, d->error, delay, d->c.attempts,
                 OUTPUTS_MAX_ATTEMPTS);
    } else {
        d->res.state = "failed";
        d->res.run_after = now;
        log_warnx("output %" PRId64 " of job %" PRId64 ": %s, failed after "
                  "%d fetches",
                  d->c.id, d->c.job_id, d->error, d->c.attempts);
    }
    fetch_record(d);
}

/* tmp's sidecar: the URL, then the validator (empty: none, the server
 * only said Accept-Ranges), a line each. Written as the body starts, so
 * that a fetch cut by anything, a crash included, can be resumed. */
static int
meta_write(const struct dl *d, const char *validator)
{
    char *text = xasprintf("%s\n%s\n", d->c.url, validator ? validator : "");
    int fd = open(d->meta, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(text);
    ssize_t n = fd < 0 ? -1 : write(fd, text, len);
    int rc = 0;

    if (n != (ssize_t)len)
        rc = n < 0 ? -errno : -EIO; /* a short write sets no errno */
    if (fd >= 0)
        close(fd);
    free(text);
    return rc;
}

/* Reads tmp's sidecar: true when it names this row's URL, with
 * *validator (a new string, NULL for none). */
static bool
meta_read(const struct dl *d, char **validator)
{
    char buf[OUTPUTS_META_MAX];
    int fd = open(d->meta, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
    size_t ulen = strlen(d->c.url);
    char *v, *nl;

    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    if ((size_t)n <= ulen || memcmp(buf, d->c.url, ulen) != 0 ||
        buf[ulen] != '\n')
        return false;
    v = buf + ulen + 1;
    if ((nl = strchr(v, '\n')) == NULL)
        return false;
    *nl = '\0';
    *validator = v[0] ? xstrdup(v) : NULL;
    return true;
}

/* An answer's headers, as the sink (http_xfer_header) or the done
 * callback (http_response_header) sees them. */
struct head {
    int status;
    const char *etag, *last_modified, *accept_ranges, *content_range;
};

/* The first bytes of an answer: a 206 must continue where tmp ends; a
 * 200 is the whole file, so tmp starts over. Whether the server can send
 * the rest later is noted beside tmp. */
static int
dl_body_start(struct dl *d, const struct head *h)
{
    int status = h->status;
    const char *v = outputs_if_range(h->etag, h->last_modified);
    const char *ar = h->accept_ranges;
    int64_t start = 0;

    d->body_started = true;
    d->total = -1;
    if (status == 206) {
        if (!outputs_content_range(h->content_range, &start, &d->total) ||
            start != d->offset) {
            d->discard = true;
            return -EPROTO;
        }
        d->resumed = d->offset > 0;
    } else if (d->offset > 0) {
        log_info("output %" PRId64 " of job %" PRId64 ": the server sent "
                 "the whole file, not the rest from byte %" PRId64
                 ": fetched from the start",
                 d->c.id, d->c.job_id, d->offset);
        if (ftruncate(d->fd, 0) < 0 || lseek(d->fd, 0, SEEK_SET) < 0)
            return -errno;
        d->offset = 0;
    }
    d->resumable = d->meta != NULL &&
                   (v != NULL || (ar != NULL && strcasecmp(ar, "bytes") == 0));
    if (d->resumable && meta_write(d, v) < 0)
        d->resumable = false;
    if (!d->resumable && d->meta != NULL)
        unlink(d->meta);
    return 0;
}

/* The body of a 2xx answer, chunk by chunk (http.h sink). */
static int
on_http_sink(const void *data, size_t len, void *arg)
{
    struct dl *d = arg;
    const char *p = data;
    size_t left = len;
    int rc;

    if (!d->body_started) {
        struct head h = {
            .status = http_xfer_status(d->xfer),
            .etag = http_xfer_header(d->xfer, "ETag"),
            .last_modified = http_xfer_header(d->xfer, "Last-Modified"),
            .accept_ranges = http_xfer_header(d->xfer, "Accept-Ranges"),
            .content_range = http_xfer_header(d->xfer, "Content-Range"),
        };
        if ((rc = dl_body_start(d, &h)) < 0)
            return rc;
    }
    while (left > 0) {
        ssize_t n = write(d->fd, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        left -= (size_t)n;
    }
    EVP_DigestUpdate(d->sha, data, len);
    d->bytes += (int64_t)len;
    return 0;
}

/* fsync(2) of the directory holding path. */
static int
fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* On the thread pool: the file made durable under its final name. Plain
 * system calls on d's own fields only. */
/* The SHA-256 of the file at path as hex into out[65]. */
static int
hash_file(const char *path, char *out)
{
    unsigned char buf[65536], md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = 0;
    int rc = 0;

    if (sha == NULL || !EVP_DigestInit_ex(sha, EVP_sha256(), NULL))
        fatalx("outputs: SHA-256 context failed");
    if (fd < 0) {
        EVP_MD_CTX_free(sha);
        return -errno;
    }
    while ((n = read(fd, buf, sizeof(buf))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            break;
        }
        EVP_DigestUpdate(sha, buf, (size_t)n);
    }
    close(fd);
    EVP_DigestFinal_ex(sha, md, &mdlen);
    EVP_MD_CTX_free(sha);
    for (unsigned i = 0; i < mdlen && i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return rc;
}

static void
on_uv_work(uv_work_t *w)
{
    struct dl *d = w->data;
    char *sub = NULL;
    bool made = true;
    int fd = d->fd;

    d->fd = -1;
    d->work_err = 0;
    d->work_what = NULL;
    if (fsync(fd) < 0) {
        d->work_err = -errno;
        d->work_what = "fsync";
    }
    if (close(fd) < 0 && d->work_err == 0) {
        d->work_err = -errno;
        d->work_what = "close";
    }
    if (d->work_err < 0)
        goto done;
    /* a resumed file is named by the digest of all its bytes, read back
     * from the disk: the earlier fetch's too */
    if (d->resumed) {
        if ((d->work_err = hash_file(d->tmp, d->hex)) < 0) {
            d->work_what = "read back";
            goto done;
        }
        d->path = outputs_path(d->o->dir, d->hex);
    }
    sub = xasprintf("%s/%.2s", d->o->dir, d->hex);
    if (mkdir(sub, 0755) < 0) {
        made = false;
        if (errno != EEXIST) {
            d->work_err = -errno;
            d->work_what = "mkdir";
            goto done;
        }
    }
    if (rename(d->tmp, d->path) < 0) {
        d->work_err = -errno;
        d->work_what = "rename";
        goto done;
    }
    /* The rename is durable once its directory is; a new directory is
     * durable once its parent is. */
    d->work_err = fsync_dir(sub);
    if (d->work_err == 0 && made)
        d->work_err = fsync_dir(d->o->dir);
    if (d->work_err < 0)
        d->work_what = "fsync directory";
done:
    free(sub);
}

static void
on_uv_after_work(uv_work_t *w, int status)
{
    struct dl *d = w->data;

    (void)status; /* never cancelled: uv_cancel is not used */
    if (d->work_err < 0) {
        /* A full or failing disk may recover: retried like a transfer,
         * from the start. */
        d->discard = true;
        dl_failed(d, true, "%s %s: %s", d->work_what,
                  d->path ? d->path : d->tmp, strerror(-d->work_err));
        return;
    }
    free(d->tmp);
    d->tmp = NULL; /* renamed: nothing to remove */
    if (d->meta != NULL)
        unlink(d->meta);
    memset(&d->res, 0, sizeof(d->res));
    d->res.state = "stored";
    d->res.path = d->path;
    d->res.sha256 = d->hex;
    d->res.bytes = d->bytes;
    d->res.content_type = d->content_type;
    log_debug("output %" PRId64 " of job %" PRId64 ": %" PRId64
              " bytes stored as %s%s",
              d->c.id, d->c.job_id, d->bytes, d->path,
              d->resumed ? " (resumed)" : "");
    fetch_record(d);
}

static int dl_fetch(struct dl *d);

static void
on_http_done(const struct http_response *r, void *data)
{
    struct dl *d = data;
    struct outputs *o = d->o;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    d->xfer = NULL;
    if (r->cancelled) {
        /* Shutdown: the row goes back as it was, this fetch not counted;
         * its bytes stay for the next start to resume from. */
        dl_close_file(d, !dl_keep(d));
        memset(&d->res, 0, sizeof(d->res));
        d->res.state = "pending";
        d->res.run_after = clock_now_ms();
        d->res.uncharge = true;
        snprintf(d->error, sizeof(d->error), "download interrupted by "
                                             "shutdown");
        d->res.error = d->error;
        fetch_record(d);
        return;
    }
    if (r->status >= 300 && r->status < 400 && r->curl_code == 0 &&
        r->status != 304) {
        char *next = outputs_redirect_url(
            d->url, http_response_header(r, "Location"));
        if (next == NULL || ++d->hops > OUTPUTS_MAX_REDIRECTS) {
            bool had = next != NULL;
            free(next);
            dl_failed(d, false, "HTTP %d: %s", r->status,
                      had ? "too many redirects"
                          : "redirect without a usable Location");
            return;
        }
        free(d->url);
        d->url = next;
        int rc = dl_fetch(d);
        if (rc < 0)
            dl_failed(d, rc != -EILSEQ && rc != -EINVAL,
                      "cannot follow the redirect: %s", strerror(-rc));
        return;
    }
    if (r->status == 416 && r->curl_code == 0 && d->offset > 0) {
        /* the kept bytes are not a prefix of the file now: start over */
        log_info("output %" PRId64 " of job %" PRId64 ": HTTP 416 for the "
                 "rest from byte %" PRId64 ", fetched from the start",
                 d->c.id, d->c.job_id, d->offset);
        dl_close_file(d, true);
        d->offset = 0;
        int rc = dl_fetch(d);
        if (rc < 0)
            dl_failed(d, true, "cannot start: %s", strerror(-rc));
        return;
    }
    if (r->curl_code != 0 || r->status < 200 || r->status >= 300) {
        if (r->curl_code != 0)
            dl_failed(d, outputs_retryable(r->status, true, r->too_large),
                      "%s", r->error);
        else
            dl_failed(d, outputs_retryable(r->status, false, false),
                      "HTTP %d", r->status);
        return;
    }
    struct head h = {
        .status = r->status,
        .etag = http_response_header(r, "ETag"),
        .last_modified = http_response_header(r, "Last-Modified"),
        .accept_ranges = http_response_header(r, "Accept-Ranges"),
        .content_range = http_response_header(r, "Content-Range"),
    };
    if (!d->body_started && dl_body_start(d, &h) < 0) {
        /* an empty body: the sink never ran */
        dl_failed(d, true, "HTTP %d without a usable Content-Range",
                  r->status);
        return;
    }
    d->bytes += d->offset;
    if (d->total >= 0 && d->bytes != d->total) {
        d->discard = true;
        dl_failed(d, true, "%" PRId64 " bytes of %" PRId64, d->bytes,
                  d->total);
        return;
    }
    const char *ct = http_response_header(r, "Content-Type");
    d->content_type = ct ? xstrdup(ct) : NULL;
    if (!d->resumed) {
        EVP_DigestFinal_ex(d->sha, md, &mdlen);
        for (unsigned i = 0; i < mdlen && i < 32; i++)
            snprintf(d->hex + 2 * i, 3, "%02x", md[i]);
        d->path = outputs_path(o->dir, d->hex);
    }
    d->phase = DL_FILE;
    d->work.data = d;
    int rc = uv_queue_work(o->loop, &d->work, on_uv_work, on_uv_after_work);
    if (rc < 0)
        dl_failed(d, true, "uv_queue_work: %s", uv_strerror(rc));
}

/* Opens d's temporary file: the row's own partial/<id>, locked, where an
 * earlier fetch of the same URL may have left bytes to resume from; or,
 * while another process still holds that one, a private <id>.<pid>. */
static int
dl_open(struct dl *d)
{
    struct outputs *o = d->o;
    struct stat st;
    char *v = NULL, *line = NULL;

    free(d->tmp);
    free(d->meta);
    free(d->if_range);
    d->meta = d->if_range = NULL;
    d->resumable = false;
    d->tmp = xasprintf("%s/%" PRId64, o->partial, d->c.id);
    d->fd = open(d->tmp, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (d->fd < 0)
        return -errno;
    if (flock(d->fd, LOCK_EX | LOCK_NB) < 0) {
        close(d->fd);
        free(d->tmp);
        d->tmp = xasprintf("%s/%" PRId64 ".%ld", o->partial, d->c.id,
                           (long)getpid());
        d->fd = open(d->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        return d->fd < 0 ? -errno : 0;
    }
    d->meta = xasprintf("%s.meta", d->tmp);
    d->offset = 0;
    if (fstat(d->fd, &st) == 0 && st.st_size > 0 && meta_read(d, &v) &&
        (o->max_size == 0 || (size_t)st.st_size < o->max_size) &&
        (v == NULL || http_header_ok(line = xasprintf("If-Range: %s", v)))) {
        d->offset = st.st_size;
        d->if_range = v;
        v = NULL;
        d->resumable = true; /* kept through a failure before the body */
    }
    free(v);
    free(line);
    if ((d->offset == 0 && ftruncate(d->fd, 0) < 0) ||
        lseek(d->fd, d->offset, SEEK_SET) < 0)
        return -errno;
    return 0;
}

/* Starts the GET of d->url into d's temporary file (opened on the first
 * hop; a redirect's next hop continues it), asking for the rest when it
 * holds an earlier fetch's bytes. */
static int
dl_fetch(struct dl *d)
{
    struct outputs *o = d->o;
    int rc;

    if (d->fd < 0 && (rc = dl_open(d)) < 0)
        return rc;
    if (d->offset == 0 && (ftruncate(d->fd, 0) < 0 ||
                           lseek(d->fd, 0, SEEK_SET) < 0))
        return -errno;
    d->bytes = 0;
    d->body_started = false;
    d->resumed = false;
    EVP_MD_CTX_free(d->sha);
    d->sha = EVP_MD_CTX_new();
    if (d->sha == NULL || !EVP_DigestInit_ex(d->sha, EVP_sha256(), NULL))
        fatalx("outputs: SHA-256 context failed");
    free_strv(d->headers);
    d->headers = dl_headers(d, o->auth(d->c.provider, d->url, o->auth_arg));

    struct http_request req = {
        .method = "GET",
        .url = d->url,
        .headers = (const char *const *)d->headers,
        /* The lease must outlive the transfer, or another daemon could
         * claim the row mid-download: nine tenths of it. */
        .timeout_ms = o->lease_ms / 10 * 9,
        .connect_timeout_ms = OUTPUTS_CONNECT_TIMEOUT_MS,
        .max_response = o->max_size > 0 ? o->max_size - (size_t)d->offset
                                         : 0,
        .sink = on_http_sink,
        .sink_arg = d,
    };
    d->phase = DL_FETCH;
    rc = http_submit(o->http, &req, on_http_done, d, &d->xfer);
    if (rc < 0)
        dl_close_file(d, true);
    return rc;
}

void
fetch_start(struct outputs *o, struct output_claim *c)
{
    struct dl *d = xcalloc(1, sizeof(*d));
    int rc;

    d->o = o;
    d->c = *c;
    memset(c, 0, sizeof(*c)); /* d owns the strings now */
    d->fd = -1;
    d->url = xstrdup(d->c.url);
    d->next = o->dls;
    if (o->dls)
        o->dls->prev = d;
    o->dls = d;
    o->active++;
    log_debug("output %" PRId64 " of job %" PRId64 ": fetch %d of %s",
              d->c.id, d->c.job_id, d->c.attempts, d->url);
    rc = dl_fetch(d);
    if (rc < 0)
        dl_failed(d, rc != -EILSEQ && rc != -EINVAL, "cannot start: %s",
                  strerror(-rc));
}
