/*
 * outputs: the download scheduler (docs/design.md §13).
 *
 * How it works. A succeeded job of a provider with outputs = download
 * gets one pending row per output URL, committed with the success itself
 * (dispatch/record.c, store_record). This module claims due pending rows
 * in one UPDATE … RETURNING (a lease, like a job's), at most `concurrency`
 * at a time, separate from every lane: a provider's generation requests never
 * wait behind downloads, and downloads never take a lane's slots. Each
 * claimed row is fetched with a GET through http.c, the body streamed by
 * http's sink into a temporary file under outputs_dir/.partial while its
 * SHA-256 is computed. When the transfer ends well, a libuv work item (the
 * thread pool: fsync must not stall the loop) fsyncs the file, renames it
 * to outputs_dir/ab/abcdef… (the hex digest, so equal bytes are stored
 * once and a repeated download lands on the same name) and fsyncs the
 * directory; only then is the row marked stored. A crash before that
 * leaves the row pending under a lease the next start frees (dead owner)
 * or that expires, and the download runs again.
 *
 * Credentials: a provider's auth headers go with a download only when the
 * URL is on the provider's origin (dispatch/dispatch.c decides,
 * outputs_auth_fn). Redirects are followed here, not by curl, so each hop is
 * judged again.
 *
 * Failures: no answer, 408, 425, 429 and 5xx are retried with full-jitter
 * backoff up to OUTPUTS_MAX_ATTEMPTS fetches; anything else (an expired
 * URL's 403, a 404, a body over the cap) fails the row at once. The job
 * stays succeeded: the row carries the error, and `sluicectl outputs
 * --retry` puts failed rows back.
 *
 * Resuming: a row's temporary file is outputs_dir/.partial/<id>, locked
 * (flock) while a fetch writes it, with a sidecar <id>.meta naming the URL
 * and the validator the bytes came under (a strong ETag, else
 * Last-Modified; empty when the server only said Accept-Ranges: bytes),
 * written as the body starts. A fetch cut short (a dropped connection, a
 * 5xx later, SIGTERM or a crash) leaves both; the next fetch of the row
 * asks for the rest (Range: bytes=N-, If-Range: the validator) and
 * appends a 206 whose Content-Range starts at N; a 200 (the server
 * ignores Range, or the file changed) truncates and starts over, a 416
 * drops the bytes and fetches again. The SHA-256 of a resumed file is
 * computed over the whole file on the thread pool, and its size checked
 * against Content-Range's total. A file another process still holds (a
 * daemon judged dead, still writing) is left alone: this fetch uses a
 * private <id>.<pid> and does not resume.
 *
 * Rejected: downloading inside the lane (a slow CDN would hold the
 * provider's concurrency); a thread per download (the loop already
 * multiplexes sockets, and one writer keeps SQLite simple); resuming
 * without a validator or Accept-Ranges (bytes of another version of the
 * file could be spliced in).
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sluice/clock.h"
#include "sluice/http.h"
#include "sluice/log.h"
#include "sluice/outputs.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

#include "internal.h"

/* --- the scheduler ------------------------------------------------------- */

static void
on_uv_timer(uv_timer_t *t)
{
    struct outputs *o = t->data;
    o->timer_at = NEVER;
    /* Records that met a lock go first: they hold concurrency slots. */
    for (struct dl *d = o->dls, *nx; d; d = nx) {
        nx = d->next;
        if (d->phase == DL_RECORD)
            fetch_record(d);
    }
    outputs_pump(o);
}

/* Runs pump at unix ms at (0: on the next loop turn), unless it runs
 * earlier anyway. */
void
outputs_schedule(struct outputs *o, int64_t at)
{
    int64_t now = clock_now_ms();
    if (o->freed || !o->started)
        return;
    if (at < now)
        at = now;
    if (o->timer_at <= at)
        return;
    o->timer_at = at;
    uv_timer_start(o->timer, on_uv_timer, (uint64_t)(at - now), 0);
}

void
outputs_pump(struct outputs *o)
{
    struct output_claim claims[OUTPUTS_CLAIM_MAX];
    int64_t now = clock_now_ms(), due = 0;
    int want = o->concurrency - o->active, got = 0;

    if (o->stopping || !o->started || want <= 0)
        return;
    if (want > OUTPUTS_CLAIM_MAX)
        want = OUTPUTS_CLAIM_MAX;
    if (store_outputs_claim(o->store, want, now, o->lease_ms, o->owner,
                            claims, &got) < 0) {
        outputs_schedule(o, now + OUTPUTS_BUSY_RETRY_MS);
        return;
    }
    for (int i = 0; i < got; i++)
        fetch_start(o, &claims[i]);
    if (got < want && store_outputs_next_due(o->store, &due) == 0 && due > 0)
        outputs_schedule(o, due);
}

/* Removes temporary files no live download can own: older than a lease
 * (a live transfer writes to its file all the time). */
static void
clean_partial(struct outputs *o)
{
    DIR *dir = opendir(o->partial);
    struct dirent *e;
    time_t limit = time(NULL) - (time_t)(o->lease_ms / 1000);
    long n = 0;

    if (dir == NULL)
        return;
    while ((e = readdir(dir)) != NULL) {
        struct stat st;
        if (e->d_name[0] == '.')
            continue;
        char *p = xasprintf("%s/%s", o->partial, e->d_name);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode) &&
            st.st_mtime < limit && unlink(p) == 0)
            n++;
        free(p);
    }
    closedir(dir);
    if (n > 0)
        log_info("outputs: %ld stale partial files removed", n);
}

static int
make_dir(const char *path)
{
    if (mkdir(path, 0755) < 0 && errno != EEXIST) {
        int rc = -errno;
        log_error("outputs: mkdir %s: %s", path, strerror(errno));
        return rc;
    }
    return 0;
}

struct outputs *
outputs_new(uv_loop_t *loop, struct store *s, struct http *h,
            const struct outputs_params *p, outputs_auth_fn auth,
            void *auth_arg)
{
    struct outputs *o = xcalloc(1, sizeof(*o));

    o->loop = loop;
    o->store = s;
    o->http = h;
    o->dir = xstrdup(p->dir);
    o->partial = xasprintf("%s/%s", p->dir, OUTPUTS_PARTIAL);
    o->owner = xstrdup(p->owner);
    o->auth = auth;
    o->auth_arg = auth_arg;
    o->timer_at = NEVER;
    outputs_configure(o, p);
    o->timer = xmalloc(sizeof(*o->timer));
    uv_timer_init(loop, o->timer);
    o->timer->data = o;
    return o;
}

int
outputs_start(struct outputs *o)
{
    int rc;
    if ((rc = make_dir(o->dir)) < 0 || (rc = make_dir(o->partial)) < 0)
        return rc;
    clean_partial(o);
    o->started = true;
    outputs_schedule(o, 0);
    return 0;
}

void
outputs_kick(struct outputs *o)
{
    if (o != NULL && o->active < o->concurrency)
        outputs_schedule(o, 0);
}

void
outputs_configure(struct outputs *o, const struct outputs_params *p)
{
    if (strcmp(p->dir, o->dir) != 0)
        log_warnx("outputs: outputs_dir %s takes effect at the next start "
                  "(%s in use)",
                  p->dir, o->dir);
    o->concurrency = p->concurrency > 0 ? p->concurrency : 1;
    o->max_size = p->max_size;
    o->lease_ms = p->lease_ms;
    outputs_kick(o);
}

int
outputs_active(const struct outputs *o)
{
    return o ? o->active : 0;
}

bool
outputs_idle(struct outputs *o)
{
    int64_t due = 0;
    if (o->active > 0)
        return false;
    return store_outputs_next_due(o->store, &due) == 0 && due == 0;
}

void
outputs_stop(struct outputs *o, void (*on_stopped)(void *), void *arg)
{
    o->stopping = true;
    o->on_stopped = on_stopped;
    o->stopped_arg = arg;
    uv_timer_stop(o->timer);
    o->timer_at = NEVER;
    /* Cancelling runs each callback now, which records and frees. */
    for (struct dl *d = o->dls, *nx; d; d = nx) {
        nx = d->next;
        if (d->phase == DL_FETCH && d->xfer != NULL)
            http_cancel(d->xfer);
    }
    /* Records still blocked by a lock get one last try each. */
    for (struct dl *d = o->dls, *nx; d; d = nx) {
        nx = d->next;
        if (d->phase == DL_RECORD)
            fetch_record(d);
    }
    if (o->active == 0 && o->on_stopped) {
        o->on_stopped = NULL;
        on_stopped(arg);
    }
}

static void
on_uv_timer_close(uv_handle_t *h)
{
    struct outputs *o = h->data;
    free(h);
    free(o);
}

void
outputs_free(struct outputs *o)
{
    if (o == NULL)
        return;
    if (!o->stopping)
        outputs_stop(o, NULL, NULL);
    /* Only file work can be left (stop cancelled the rest); it cannot
     * be interrupted, and its callback needs d and o. */
    while (o->active > 0)
        uv_run(o->loop, UV_RUN_ONCE);
    o->freed = true;
    free(o->dir);
    free(o->partial);
    free(o->owner);
    uv_close((uv_handle_t *)o->timer, on_uv_timer_close);
}
