/*
 * runcost: stated run costs (runcost.h).
 *
 * How it works: one entry per provider and cost source (the dialect turns
 * a job's path into the resource that states its cost: FLORA's
 * "/techniques/{slug}"). The first lookup of a source resolves it against
 * the provider's base_url (url_resolve: the provider's own origin, or
 * nothing is sent) and starts a GET with the provider's headers; its jobs
 * are pending until the answer. A 2xx whose body states a cost makes the
 * entry known; anything else (an error status, a transport failure, a
 * body without run_cost) makes it none for good, said once in the log.
 * Either way done_fn tells the dispatcher, which looks at the held jobs
 * again.
 *
 * Rejected: fetching again after a failure (a technique whose price
 * cannot be read falls back to the running mean, which is what budgets
 * did before stated costs, and a failing endpoint is not asked once per
 * job); fetching every technique at start (which ones a queue holds is
 * only known as its jobs are claimed); a price in the config (it would
 * go stale while the provider's own statement is one request away).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/dialect.h"
#include "sluice/http.h"
#include "sluice/log.h"
#include "sluice/runcost.h"
#include "sluice/url.h"
#include "sluice/xmalloc.h"

/* A technique's description carries its input schema: 1 MiB is far more
 * than any states, and bounds what a hostile answer costs. */
#define RUNCOST_MAX_RESPONSE (1024 * 1024)
/* The jobs of a technique wait for its price: never longer than this,
 * whatever the provider's own timeout (0 is none). */
#define RUNCOST_TIMEOUT_MS 30000

struct entry {
    char *provider;
    char *source; /* the resource stating the cost */
    enum runcost_state state;
    double cost;            /* RUNCOST_KNOWN */
    struct http_xfer *xfer; /* RUNCOST_PENDING */
    struct runcost *rc;
    struct entry *next;
};

struct runcost {
    struct http *http;
    runcost_done_fn done;
    void *arg;
    struct entry *entries;
};

struct runcost *
runcost_new(struct http *h, runcost_done_fn done, void *arg)
{
    struct runcost *rc = xcalloc(1, sizeof(*rc));
    rc->http = h;
    rc->done = done;
    rc->arg = arg;
    return rc;
}

static void
entry_free(struct entry *e)
{
    free(e->provider);
    free(e->source);
    free(e);
}

void
runcost_forget(struct runcost *rc, const char *provider)
{
    struct entry **pp = &rc->entries;

    while (*pp != NULL) {
        struct entry *e = *pp;
        if (provider != NULL && strcmp(e->provider, provider) != 0) {
            pp = &e->next;
            continue;
        }
        if (e->xfer != NULL)
            http_cancel(e->xfer); /* its callback clears xfer */
        *pp = e->next;
        entry_free(e);
    }
}

void
runcost_free(struct runcost *rc)
{
    if (rc == NULL)
        return;
    runcost_forget(rc, NULL);
    free(rc);
}

static struct entry *
find(const struct runcost *rc, const char *provider, const char *source)
{
    for (struct entry *e = rc->entries; e; e = e->next)
        if (strcmp(e->provider, provider) == 0 &&
            strcmp(e->source, source) == 0)
            return e;
    return NULL;
}

/* Why a fetch taught nothing, for the one log line. */
static void
describe_failure(const struct http_response *r, char *buf, size_t cap)
{
    if (r->status == 0)
        snprintf(buf, cap, "%s", r->error[0] ? r->error : "no answer");
    else if (r->too_large)
        snprintf(buf, cap, "answer over %d bytes", RUNCOST_MAX_RESPONSE);
    else if (r->status < 200 || r->status > 299)
        snprintf(buf, cap, "HTTP %d", r->status);
    else
        snprintf(buf, cap, "no run_cost in the answer");
}

struct fetch {
    struct entry *e;
    const struct dialect *dialect;
};

static void
on_fetch_done(const struct http_response *r, void *data)
{
    struct fetch *f = data;
    struct entry *e = f->e;
    const struct dialect *dia = f->dialect;
    struct runcost *rc = e->rc;
    double cost = 0;

    free(f);
    e->xfer = NULL;
    e->state = RUNCOST_NONE;
    if (r->cancelled)
        return; /* forgotten: the entry goes now */
    if (r->status >= 200 && r->status <= 299 && !r->too_large &&
        dialect_stated_cost(dia, r->body, &cost)) {
        e->state = RUNCOST_KNOWN;
        e->cost = cost;
        log_info("%s: %s states a run cost of %.4f", e->provider, e->source,
                 cost);
    } else {
        char why[300];
        describe_failure(r, why, sizeof(why));
        log_warnx("%s: no run cost from %s (%s): its jobs are expected to "
                  "cost the running mean",
                  e->provider, e->source, why);
    }
    rc->done(e->provider, rc->arg);
}

/* Starts the GET of e's source at src; e is none when it cannot start. */
static void
fetch_start(struct runcost *rc, struct entry *e,
            const struct runcost_source *src)
{
    char *url = NULL;
    int urc = url_resolve(src->base_url, e->source, &url);

    e->state = RUNCOST_NONE;
    if (urc < 0) {
        log_warnx("%s: run cost of %s not asked (%s): its jobs are "
                  "expected to cost the running mean",
                  e->provider, e->source,
                  urc == -EXDEV ? "not on the provider's origin"
                                : "not a usable URL");
        return;
    }
    struct fetch *f = xcalloc(1, sizeof(*f));
    f->e = e;
    f->dialect = src->dialect;
    struct http_request hr = {
        .method = "GET",
        .url = url,
        .headers = src->headers,
        .timeout_ms =
            src->timeout_ms > 0 && src->timeout_ms < RUNCOST_TIMEOUT_MS
                ? src->timeout_ms
                : RUNCOST_TIMEOUT_MS,
        .connect_timeout_ms = src->connect_timeout_ms,
        .max_response = RUNCOST_MAX_RESPONSE,
    };
    int hrc = http_submit(rc->http, &hr, on_fetch_done, f, &e->xfer);
    free(url);
    if (hrc < 0) {
        free(f);
        e->xfer = NULL;
        log_warnx("%s: run cost of %s not asked (%s): its jobs are "
                  "expected to cost the running mean",
                  e->provider, e->source, strerror(-hrc));
        return;
    }
    e->state = RUNCOST_PENDING;
    log_debug("%s: asking %s for its run cost", e->provider, e->source);
}

enum runcost_state
runcost_lookup(struct runcost *rc, const struct runcost_source *src,
               const char *job_path, double *cost)
{
    char *source = dialect_cost_source(src->dialect, job_path);
    struct entry *e;

    if (source == NULL)
        return RUNCOST_NONE;
    e = find(rc, src->provider, source);
    if (e == NULL) {
        e = xcalloc(1, sizeof(*e));
        e->provider = xstrdup(src->provider);
        e->source = source;
        e->rc = rc;
        e->next = rc->entries;
        rc->entries = e;
        fetch_start(rc, e, src);
    } else {
        free(source);
    }
    if (e->state == RUNCOST_KNOWN)
        *cost = e->cost;
    return e->state;
}

bool
runcost_pending(const struct runcost *rc, const char *provider)
{
    for (struct entry *e = rc->entries; e; e = e->next)
        if (e->state == RUNCOST_PENDING && strcmp(e->provider, provider) == 0)
            return true;
    return false;
}

double
runcost_least(const struct runcost *rc, const char *provider)
{
    double least = -1;
    for (struct entry *e = rc->entries; e; e = e->next)
        if (e->state == RUNCOST_KNOWN && strcmp(e->provider, provider) == 0 &&
            (least < 0 || e->cost < least))
            least = e->cost;
    return least;
}
