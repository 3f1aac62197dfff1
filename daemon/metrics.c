/*
 * metrics: /metrics in the Prometheus text exposition format, version 0.0.4
 * (docs/design.md §14), written by hand: no C client library for Prometheus is
 * maintained or packaged in Debian, and the format is a few lines of text per
 * metric. Tests check the output with `promtool check metrics`.
 *
 * How it works: the loop thread keeps the counters (requests and failures
 * by class, spend, the commit latency histogram) and, once a second,
 * renders the whole page from them, from the dispatcher's lanes and from
 * the store (metrics_refresh), then swaps the new text in under the mutex.
 * libmicrohttpd's thread answers a scrape by copying that text under the
 * same mutex: it never sees a lane or the database (metrics.h states the
 * rule).
 *
 * Job counts by provider and state come from the store's kept counts
 * (store_counts: a few rows, whatever the queue's size), the oldest queued
 * job from one index seek per provider: a refresh costs the same with ten
 * million jobs queued as with ten. Output counts group the outputs table
 * by state (a scan of its state index, which grows with every stored
 * file), so they are taken every OUTPUTS_COUNT_MS only.
 *
 * Rejected: rendering in the HTTP thread (it would need locks around the
 * lanes and a second database connection), and a pull of every number at
 * scrape time (a scrape would then wait for the loop).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "sluice/budget.h"
#include "sluice/dispatch.h"
#include "sluice/lane.h"
#include "sluice/log.h"
#include "sluice/metrics.h"
#include "sluice/spend.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

/* Output counts are taken this often: downloads move on a scale of
 * seconds, and the count scans an index as long as every output kept. */
#define OUTPUTS_COUNT_MS 15000
/* Commit latency buckets, in seconds: a group commit takes a fraction of a
 * millisecond on a quiet disk and hundreds when an fsync queues. */
static const double commit_buckets[] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5};
#define NBUCKETS (sizeof(commit_buckets) / sizeof(commit_buckets[0]))
/* Claim latency buckets, in seconds: a claim is one statement, a tenth
 * of a millisecond on a local file or socket, milliseconds across a
 * network or behind another daemon's commit. */
static const double claim_buckets[] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0};
#define NCLAIM_BUCKETS (sizeof(claim_buckets) / sizeof(claim_buckets[0]))
/* Most lanes rendered; a config names a handful. */
#define METRICS_MAX_LANES 256

/* Loop-thread counters of one provider, kept for the daemon's life. */
struct mprov {
    char *name;
    int64_t requests;                  /* finished requests */
    int64_t failures[ERR_CLASS_COUNT]; /* by class (ERR_NONE unused) */
    double spend;                      /* cost recorded */
    int64_t jobs[JOB_STATE_COUNT];     /* job counts by state */
};

struct metrics {
    struct MHD_Daemon *mhd;
    /* --- shared with the HTTP thread, under lock: nothing else --- */
    pthread_mutex_t lock;
    char *page; /* the published text */
    size_t len;
    /* --- loop thread only --- */
    struct mprov *provs;
    size_t nprovs;
    int64_t commit_counts[NBUCKETS + 1]; /* per bucket; last is +Inf */
    int64_t commits;
    double commit_sum;
    int64_t claim_counts[NCLAIM_BUCKETS + 1]; /* per bucket; last +Inf */
    int64_t claims;
    double claim_sum;
    bool counted;       /* the last job count worked */
    long outputs[3];    /* pending, stored, failed */
    int64_t outputs_at; /* unix ms of the last output count, 0 never */
    struct buf out;
};

/* --- the HTTP thread --------------------------------------------------------
 */

static enum MHD_Result
on_mhd_request(void *cls, struct MHD_Connection *c, const char *url,
               const char *method, const char *version, const char *upload,
               size_t *upload_len, void **con_cls)
{
    struct metrics *m = cls;
    struct MHD_Response *resp;
    unsigned status = MHD_HTTP_OK;
    enum MHD_Result ret;

    (void)version;
    (void)upload;
    (void)upload_len;
    (void)con_cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
        resp = MHD_create_response_from_buffer(0, (void *)"",
                                               MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(resp, "Allow", "GET, HEAD");
    } else if (strcmp(url, "/metrics") != 0) {
        static const char body[] = "not found: try /metrics\n";
        status = MHD_HTTP_NOT_FOUND;
        resp = MHD_create_response_from_buffer(sizeof(body) - 1, (void *)body,
                                               MHD_RESPMEM_PERSISTENT);
    } else {
        pthread_mutex_lock(&m->lock);
        resp = MHD_create_response_from_buffer(m->len, m->page,
                                               MHD_RESPMEM_MUST_COPY);
        pthread_mutex_unlock(&m->lock);
        MHD_add_response_header(resp, "Content-Type",
                                "text/plain; version=0.0.4; charset=utf-8");
    }
    if (resp == NULL)
        return MHD_NO;
    ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* --- start and stop
 * ----------------------------------------------------------- */

/* "127.0.0.1:9464" or "[::1]:9464" into a socket address. */
static int
parse_listen(const char *listen, struct sockaddr_storage *ss, bool *v6)
{
    char host[64];
    const char *colon = strrchr(listen, ':');
    const char *h = listen;
    size_t hlen;
    char *end;

    if (colon == NULL)
        return -EINVAL;
    hlen = (size_t)(colon - listen);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= sizeof(host))
        return -EINVAL;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port < 1 || port > 65535)
        return -EINVAL;
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *v6 = false;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *v6 = true;
        return 0;
    }
    return -EINVAL;
}

bool
metrics_listen_valid(const char *listen)
{
    struct sockaddr_storage ss;
    bool v6;
    return parse_listen(listen, &ss, &v6) == 0;
}

int
metrics_start(const char *listen, struct metrics **out)
{
    struct sockaddr_storage ss;
    bool v6 = false;

    *out = NULL;
    if (parse_listen(listen, &ss, &v6) < 0) {
        log_error("metrics: bad listen address %s (use ADDR:PORT)", listen);
        return -EINVAL;
    }
    struct metrics *m = xcalloc(1, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    m->page = xstrdup("");
    /* One thread is plenty for a scrape every few seconds; the connection
     * limit and timeout keep a stuck client from holding it. */
    m->mhd = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
            (v6 ? MHD_USE_IPv6 : 0),
        0, NULL, NULL, on_mhd_request, m, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, 16u,
        MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (m->mhd == NULL) {
        int err = errno ? errno : EADDRINUSE;
        log_error("metrics: cannot listen on %s: %s", listen, strerror(err));
        pthread_mutex_destroy(&m->lock);
        free(m->page);
        free(m);
        return -err;
    }
    log_info("metrics: serving http://%s/metrics", listen);
    *out = m;
    return 0;
}

void
metrics_stop(struct metrics *m)
{
    if (m == NULL)
        return;
    MHD_stop_daemon(m->mhd);
    pthread_mutex_destroy(&m->lock);
    free(m->page);
    for (size_t i = 0; i < m->nprovs; i++)
        free(m->provs[i].name);
    free(m->provs);
    buf_free(&m->out);
    free(m);
}

/* --- loop-thread counters ----------------------------------------------------
 */

static struct mprov *
prov(struct metrics *m, const char *name)
{
    for (size_t i = 0; i < m->nprovs; i++)
        if (strcmp(m->provs[i].name, name) == 0)
            return &m->provs[i];
    m->provs = xrealloc(m->provs, (m->nprovs + 1) * sizeof(*m->provs));
    struct mprov *p = &m->provs[m->nprovs++];
    memset(p, 0, sizeof(*p));
    p->name = xstrdup(name);
    return p;
}

void
metrics_count_request(struct metrics *m, const char *provider,
                      enum err_class cls)
{
    if (m == NULL)
        return;
    struct mprov *p = prov(m, provider);
    p->requests++;
    if (cls != ERR_NONE && (int)cls < ERR_CLASS_COUNT)
        p->failures[cls]++;
}

void
metrics_count_cost(struct metrics *m, const char *provider, double cost)
{
    if (m == NULL)
        return;
    prov(m, provider)->spend += cost;
}

void
metrics_observe_commit(struct metrics *m, double seconds)
{
    if (m == NULL)
        return;
    size_t i = 0;
    while (i < NBUCKETS && seconds > commit_buckets[i])
        i++;
    m->commit_counts[i]++;
    m->commits++;
    m->commit_sum += seconds;
}

void
metrics_observe_claim(struct metrics *m, double seconds)
{
    if (m == NULL)
        return;
    size_t i = 0;
    while (i < NCLAIM_BUCKETS && seconds > claim_buckets[i])
        i++;
    m->claim_counts[i]++;
    m->claims++;
    m->claim_sum += seconds;
}

/* --- rendering
 * ------------------------------------------------------------------ */

/* A label value with \, " and newline escaped, as the format wants. */
static void
put_label(struct buf *b, const char *name, const char *v)
{
    buf_appendf(b, "%s=\"", name);
    for (const char *p = v; *p; p++) {
        if (*p == '\\' || *p == '"')
            buf_appendf(b, "\\%c", *p);
        else if (*p == '\n')
            buf_append(b, "\\n", 2);
        else
            buf_append(b, p, 1);
    }
    buf_append(b, "\"", 1);
}

static void
put_family(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{provider="…"} value */
static void
put_provider(struct buf *b, const char *name, const char *provider, double v)
{
    buf_appendf(b, "%s{", name);
    put_label(b, "provider", provider);
    buf_appendf(b, "} %.17g\n", v);
}

static int
on_job_count(const char *provider, const char *batch, enum job_state state,
             long n, void *arg)
{
    (void)batch;
    prov(arg, provider)->jobs[state] += n;
    return 0;
}

/* The job counts by provider and state, summed over batches. */
static void
count_jobs(struct metrics *m, struct store *s)
{
    for (size_t i = 0; i < m->nprovs; i++)
        memset(m->provs[i].jobs, 0, sizeof(m->provs[i].jobs));
    /* a failure is logged; the page then has no sluice_jobs */
    m->counted = store_counts(s, on_job_count, m) == 0;
}

static void
render_jobs(struct metrics *m, struct buf *b)
{
    put_family(b, "sluice_jobs", "gauge",
               "Jobs in the queue by provider and state.");
    for (size_t i = 0; m->counted && i < m->nprovs; i++) {
        struct mprov *p = &m->provs[i];
        for (int st = 0; st < JOB_STATE_COUNT; st++) {
            buf_append(b, "sluice_jobs{", 12);
            put_label(b, "provider", p->name);
            buf_append(b, ",", 1);
            put_label(b, "state", job_state_name((enum job_state)st));
            buf_appendf(b, "} %" PRId64 "\n", p->jobs[st]);
        }
    }
}

static void
render_outputs(struct metrics *m, struct buf *b, struct store *s, int64_t now)
{
    static const char *const names[] = {"pending", "stored", "failed"};

    if (m->outputs_at == 0 || now - m->outputs_at >= OUTPUTS_COUNT_MS) {
        if (store_outputs_counts(s, &m->outputs[0], &m->outputs[1],
                                 &m->outputs[2]) < 0)
            return; /* logged */
        m->outputs_at = now;
    }
    put_family(b, "sluice_outputs", "gauge",
               "Outputs of succeeded jobs by download state (counted every "
               "15 s).");
    for (int i = 0; i < 3; i++)
        buf_appendf(b, "sluice_outputs{state=\"%s\"} %ld\n", names[i],
                    m->outputs[i]);
}

static void
render_requests(struct metrics *m, struct buf *b)
{
    put_family(b, "sluice_requests_total", "counter",
               "Requests finished (answered, or failed in transport) by "
               "provider.");
    for (size_t i = 0; i < m->nprovs; i++)
        put_provider(b, "sluice_requests_total", m->provs[i].name,
                     (double)m->provs[i].requests);
    put_family(b, "sluice_request_failures_total", "counter",
               "Requests that failed, by provider and error class.");
    for (size_t i = 0; i < m->nprovs; i++) {
        for (int c = 1; c < ERR_CLASS_COUNT; c++) {
            if (m->provs[i].failures[c] == 0)
                continue;
            buf_append(b, "sluice_request_failures_total{", 30);
            put_label(b, "provider", m->provs[i].name);
            buf_append(b, ",", 1);
            put_label(b, "class", err_class_name((enum err_class)c));
            buf_appendf(b, "} %" PRId64 "\n", m->provs[i].failures[c]);
        }
    }
    put_family(b, "sluice_spend_total", "counter",
               "Cost recorded for jobs by this daemon, in the provider's "
               "currency.");
    for (size_t i = 0; i < m->nprovs; i++)
        put_provider(b, "sluice_spend_total", m->provs[i].name,
                     m->provs[i].spend);
}

static double
get_throttled(const struct lane *l)
{
    return (double)lane_throttled(l);
}

static double
get_limit(const struct lane *l)
{
    return lane_limit(l);
}

static double
get_in_flight(const struct lane *l)
{
    return lane_in_flight(l);
}

/* One number per lane, one family each. */
static const struct lane_family {
    const char *name, *type, *help;
    double (*get)(const struct lane *l);
} lane_families[] = {
    {"sluice_throttled_requests_total", "counter",
     "Requests the provider throttled (429, or 503 with a retry hint).",
     get_throttled},
    {"sluice_lane_limit", "gauge",
     "The lane's concurrency limit (learned or fixed).", get_limit},
    {"sluice_lane_in_flight", "gauge",
     "Requests in flight and async runs waiting, per lane.", get_in_flight},
    {"sluice_lane_rate_per_second", "gauge",
     "The lane's pacing rate in requests per second (configured, advertised "
     "or learned); 0 when none.",
     lane_rate},
};

static void
render_lanes(struct buf *b, const struct lane *const *lanes, size_t n,
             struct store *s, struct spend *sp, int64_t now)
{
    static const enum lane_state states[] = {LANE_ACTIVE, LANE_PAUSED,
                                             LANE_OPEN, LANE_PARKED};

    for (size_t f = 0; f < sizeof(lane_families) / sizeof(lane_families[0]);
         f++) {
        const struct lane_family *lf = &lane_families[f];
        put_family(b, lf->name, lf->type, lf->help);
        for (size_t i = 0; i < n; i++)
            put_provider(b, lf->name, lane_name(lanes[i]), lf->get(lanes[i]));
    }
    put_family(b, "sluice_lane_state", "gauge",
               "1 for the lane's current state, 0 for the others.");
    for (size_t i = 0; i < n; i++) {
        /* a provider at its budget is paused (the lane itself is not) */
        enum lane_state st = spend_paused(sp, lane_name(lanes[i]))
                                 ? LANE_PAUSED
                                 : lane_state(lanes[i]);
        for (size_t k = 0; k < sizeof(states) / sizeof(states[0]); k++) {
            buf_append(b, "sluice_lane_state{", 18);
            put_label(b, "provider", lane_name(lanes[i]));
            buf_append(b, ",", 1);
            put_label(b, "state", lane_state_name(states[k]));
            buf_appendf(b, "} %d\n", st == states[k]);
        }
    }
    put_family(b, "sluice_oldest_queued_job_age_seconds", "gauge",
               "How long the longest-waiting queued job of the provider has "
               "been due; 0 when none is queued.");
    for (size_t i = 0; i < n; i++) {
        int64_t since = 0;
        if (store_oldest_queued(s, lane_name(lanes[i]), &since) < 0)
            continue;
        double age =
            since > 0 && since < now ? (double)(now - since) / 1000.0 : 0.0;
        put_provider(b, "sluice_oldest_queued_job_age_seconds",
                     lane_name(lanes[i]), age);
    }
}

struct budget_page {
    struct buf *b;
    int pass; /* which family: 0 cap, 1 spent, 2 left, 3 paused */
};

static void
on_budget(const char *provider, const char *batch, const struct budget *bg,
          bool paused, void *data)
{
    static const char *const names[] = {"sluice_budget", "sluice_budget_spent",
                                        "sluice_budget_left",
                                        "sluice_budget_paused"};
    struct budget_page *p = data;
    double v = p->pass == 0   ? bg->cap
               : p->pass == 1 ? bg->spent
               : p->pass == 2 ? budget_left(bg)
                              : (double)paused;
    buf_appendf(p->b, "%s{", names[p->pass]);
    if (provider)
        put_label(p->b, "provider", provider);
    else
        put_label(p->b, "batch", batch);
    buf_appendf(p->b, "} %.17g\n", v);
}

/* The spend caps: one series per capped provider or batch. */
static void
render_budgets(struct buf *b, struct spend *sp)
{
    static const char *const help[][2] = {
        {"sluice_budget", "Spend cap of a provider or a batch."},
        {"sluice_budget_spent", "What the provider or batch has cost."},
        {"sluice_budget_left", "What is left under the cap."},
        {"sluice_budget_paused",
         "1 while the provider is paused or the batch held at its cap."},
    };
    struct budget_page p = {.b = b};
    for (p.pass = 0; p.pass < 4; p.pass++) {
        put_family(b, help[p.pass][0], "gauge", help[p.pass][1]);
        spend_foreach(sp, on_budget, &p);
    }
}

/* One histogram family: name's buckets (le[0..n), then +Inf, from the
 * n + 1 per-bucket counts), its sum and its count. */
static void
render_histogram(struct buf *b, const char *name, const char *help,
                 const double *le, size_t n, const int64_t *counts,
                 int64_t total, double sum)
{
    int64_t cum = 0;
    put_family(b, name, "histogram", help);
    for (size_t i = 0; i < n; i++) {
        cum += counts[i];
        buf_appendf(b, "%s_bucket{le=\"%g\"} %" PRId64 "\n", name, le[i],
                    cum);
    }
    buf_appendf(b, "%s_bucket{le=\"+Inf\"} %" PRId64 "\n", name, total);
    buf_appendf(b, "%s_sum %.9f\n", name, sum);
    buf_appendf(b, "%s_count %" PRId64 "\n", name, total);
}

void
metrics_refresh(struct metrics *m, struct dispatch *d, struct store *s,
                int64_t now_ms)
{
    const struct lane *lanes[METRICS_MAX_LANES];

    if (m == NULL)
        return;
    size_t n = dispatch_lanes(d, lanes, METRICS_MAX_LANES);
    if (n > METRICS_MAX_LANES)
        n = METRICS_MAX_LANES;
    /* every configured provider has its series, traffic or not */
    for (size_t i = 0; i < n; i++)
        prov(m, lane_name(lanes[i]));
    count_jobs(m, s);

    struct buf *b = &m->out;
    buf_reset(b);
    render_jobs(m, b);
    render_requests(m, b);
    render_lanes(b, lanes, n, s, dispatch_spend(d), now_ms);
    render_budgets(b, dispatch_spend(d));
    render_outputs(m, b, s, now_ms);
    render_histogram(b, "sluice_commit_duration_seconds",
                     "Time a group commit of outcomes took.", commit_buckets,
                     NBUCKETS, m->commit_counts, m->commits, m->commit_sum);
    render_histogram(b, "sluice_claim_duration_seconds",
                     "Time a claim of jobs took.", claim_buckets,
                     NCLAIM_BUCKETS, m->claim_counts, m->claims,
                     m->claim_sum);

    char *page = buf_steal(b);
    size_t len = strlen(page);
    pthread_mutex_lock(&m->lock);
    char *old = m->page;
    m->page = page;
    m->len = len;
    pthread_mutex_unlock(&m->lock);
    free(old);
}
