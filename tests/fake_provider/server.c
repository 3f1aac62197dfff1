/*
 * server: one request of the fake provider, from the last body byte to the
 * answer. Under the mutex it decides everything (capacity, idempotency,
 * script step, async run, the log entry); then, unlocked, the connection's
 * own thread sleeps the latency and the step's delay and sends. Sleeping
 * in that thread is why main.c runs libmicrohttpd thread-per-connection:
 * hundreds of slow requests are hundreds of sleeping threads.
 *
 * Capacity comes before everything: a request beyond --rate or
 * --max-concurrent is answered 429 at once, never reaches the ledger and
 * does not advance its key's script. Control endpoints (/_ledger, /_log,
 * /_reset, /_config) are neither counted nor logged.
 */
#include <math.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "fake.h"

/* Request bodies beyond this are refused (413): no test sends more. */
#define SERVER_MAX_BODY ((size_t)16 << 20)
/* Bytes a truncated answer announces beyond what it sends. */
#define SERVER_TRUNCATE_EXTRA 64
/* Charged cost of a completed run unless the step says otherwise: the
 * FLORA docs' example figure. */
#define SERVER_RUN_COST 0.04
/* Output files of a run: a handful in real APIs. */
#define SERVER_MAX_OUTPUTS 16
/* Size of an output file unless the run says output_bytes: 64 KiB, a
 * thumbnail, enough to span many reads. */
#define SERVER_FILE_BYTES 65536
/* Where download_redirect sends a file: /files/redirected/<the path>. */
#define SERVER_REDIRECTED "/redirected"

/* One request being received. */
struct req {
    char *data; /* body bytes */
    size_t len, cap;
    bool too_big;
    int64_t t_ms;    /* arrival, unix ms */
    int64_t mono_ms; /* arrival, monotonic ms */
};

static int64_t
now_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t
rng_next(struct fake *f)
{
    /* xorshift64*: reproducible per --seed, quality is irrelevant here. */
    f->rng ^= f->rng >> 12;
    f->rng ^= f->rng << 25;
    f->rng ^= f->rng >> 27;
    return f->rng * 2685821657736338717ULL;
}

static double
rng_unit(struct fake *f)
{
    return (double)(rng_next(f) >> 11) / 9007199254740992.0; /* 2^53 */
}

void
server_init(struct fake *f, uint64_t seed)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->wake, NULL);
    f->rng = seed ? seed : 0x9e3779b97f4a7c15ULL;
    f->cfg.error_mix[0] = 500;
    f->cfg.error_mix[1] = 503;
    f->cfg.error_mix[2] = 429;
    f->cfg.nmix = 3;
    /* A million entries of a few hundred bytes: a benchmark's worth,
     * without letting an endless run eat the machine. */
    f->cfg.log_limit = 1000000;
    f->log = json_array();
    f->techniques = json_object();
    f->refill_ms = now_ms(CLOCK_MONOTONIC);
    f->tok_refill_ms = f->refill_ms;
}

void
server_free(struct fake *f)
{
    ledger_clear(&f->ledger);
    json_decref(f->log);
    json_decref(f->techniques);
    pthread_cond_destroy(&f->wake);
    pthread_mutex_destroy(&f->mu);
}

void
server_set_rate(struct fake *f, double rate)
{
    f->cfg.rate = rate;
    if (!f->cfg.burst_set)
        f->cfg.burst = rate / 10 > 1 ? rate / 10 : 1;
    f->tokens = f->cfg.burst;
    f->refill_ms = now_ms(CLOCK_MONOTONIC);
}

void
server_stop(struct fake *f)
{
    pthread_mutex_lock(&f->mu);
    f->stopping = 1;
    pthread_cond_broadcast(&f->wake);
    pthread_mutex_unlock(&f->mu);
}

/* Sleeps ms in this connection's thread; shutdown cuts it short. */
static void
server_sleep(struct fake *f, long ms)
{
    struct timespec until;

    if (ms <= 0)
        return;
    /* Nanosecond arithmetic: a deadline rounded to the millisecond could
     * wake up to 1 ms early. */
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (ms % 1000) * 1000000L + 999999L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&f->mu);
    while (!f->stopping &&
           pthread_cond_timedwait(&f->wake, &f->mu, &until) == 0)
        ;
    pthread_mutex_unlock(&f->mu);
}

/* --- capacity ------------------------------------------------------------ */

static void
bucket_refill(struct fake *f)
{
    int64_t now = now_ms(CLOCK_MONOTONIC);
    if (f->cfg.rate > 0) {
        f->tokens += (double)(now - f->refill_ms) / 1000.0 * f->cfg.rate;
        if (f->tokens > f->cfg.burst)
            f->tokens = f->cfg.burst;
    }
    f->refill_ms = now;
}

/* X-RateLimit-* as Firemoon sends them: a per-minute limit, what is left
 * now, and the unix second the bucket is full again. */
static void
ratelimit_headers(struct fake *f, struct answer *a, long reset_s)
{
    char v[32];

    snprintf(v, sizeof(v), "%ld", lround(f->cfg.rate * 60));
    answer_header(a, "X-RateLimit-Limit", v);
    snprintf(v, sizeof(v), "%ld", f->tokens >= 1 ? (long)f->tokens : 0L);
    answer_header(a, "X-RateLimit-Remaining", v);
    snprintf(v, sizeof(v), "%lld",
             (long long)(now_ms(CLOCK_REALTIME) / 1000 + reset_s));
    answer_header(a, "X-RateLimit-Reset", v);
}

/* The fixed window's headers (GitHub's and many others' shape): the
 * limit, what is left, the unix second the window ends, and the policy
 * with its window in seconds. */
static void
window_headers(struct fake *f, struct answer *a)
{
    char v[64];

    snprintf(v, sizeof(v), "%ld", f->cfg.window_limit);
    answer_header(a, "X-RateLimit-Limit", v);
    snprintf(v, sizeof(v), "%ld", f->cfg.window_limit - f->window_used);
    answer_header(a, "X-RateLimit-Remaining", v);
    snprintf(v, sizeof(v), "%lld",
             (long long)((f->window_start + f->cfg.window_ms) / 1000));
    answer_header(a, "X-RateLimit-Reset", v);
    snprintf(v, sizeof(v), "%ld;w=%ld", f->cfg.window_limit,
             f->cfg.window_ms / 1000);
    answer_header(a, "RateLimit-Policy", v);
}

/* OpenAI's reset format: "6m0s", "1.5s", "20ms". */
static void
duration_text(char *out, size_t len, int64_t ms)
{
    if (ms < 1000)
        snprintf(out, len, "%lldms", (long long)ms);
    else if (ms < 60000)
        snprintf(out, len, "%gs", (double)ms / 1000.0);
    else
        snprintf(out, len, "%lldm%gs", (long long)(ms / 60000),
                 (double)(ms % 60000) / 1000.0);
}

/* x-ratelimit-*-tokens: the per-minute limit, what is left, and how long
 * until the bucket is full again. */
static void
token_headers(struct fake *f, struct answer *a)
{
    char v[64];
    double per_ms = f->cfg.token_limit / 60000.0;

    snprintf(v, sizeof(v), "%ld", lround(f->cfg.token_limit));
    answer_header(a, "x-ratelimit-limit-tokens", v);
    snprintf(v, sizeof(v), "%ld", f->tok_bucket > 0 ? (long)f->tok_bucket : 0L);
    answer_header(a, "x-ratelimit-remaining-tokens", v);
    duration_text(v, sizeof(v),
                  (int64_t)ceil((f->cfg.token_limit - f->tok_bucket) / per_ms));
    answer_header(a, "x-ratelimit-reset-tokens", v);
}

static void
capacity_refill(struct fake *f)
{
    int64_t now = now_ms(CLOCK_MONOTONIC), wall = now_ms(CLOCK_REALTIME);

    bucket_refill(f);
    if (f->cfg.window_limit > 0 && f->cfg.window_ms > 0) {
        int64_t start = wall - wall % f->cfg.window_ms;
        if (start != f->window_start) {
            f->window_start = start;
            f->window_used = 0;
        }
    }
    if (f->cfg.token_limit > 0) {
        f->tok_bucket +=
            (double)(now - f->tok_refill_ms) * f->cfg.token_limit / 60000.0;
        if (f->tok_bucket > f->cfg.token_limit)
            f->tok_bucket = f->cfg.token_limit;
    }
    f->tok_refill_ms = now;
}

/* Admits a request costing `tokens` (true) or fills a 429 answer (false):
 * concurrency, the request bucket, the fixed window and the token bucket,
 * in that order; a refused request takes nothing from any of them. */
static bool
capacity_admit(struct fake *f, const char *dialect, long tokens,
               struct answer *a)
{
    long retry;
    char v[32];
    bool bucket = false;

    capacity_refill(f);
    if (f->cfg.max_concurrent > 0 && f->in_flight >= f->cfg.max_concurrent) {
        retry = f->cfg.retry_after > 0 ? f->cfg.retry_after : 1;
    } else if (f->cfg.rate > 0 && f->tokens < 1) {
        retry = f->cfg.retry_after > 0
                    ? f->cfg.retry_after
                    : (long)ceil((1 - f->tokens) / f->cfg.rate);
        if (retry < 1)
            retry = 1;
        bucket = true;
    } else if (f->cfg.window_limit > 0 &&
               f->window_used >= f->cfg.window_limit) {
        retry = (long)ceil(
            (double)(f->window_start + f->cfg.window_ms -
                     now_ms(CLOCK_REALTIME)) / 1000.0);
        if (retry < 1)
            retry = 1;
    } else if (f->cfg.token_limit > 0 && f->tok_bucket < (double)tokens) {
        retry = (long)ceil(((double)tokens - f->tok_bucket) * 60.0 /
                           f->cfg.token_limit);
        if (retry < 1)
            retry = 1;
    } else {
        if (f->cfg.rate > 0)
            f->tokens -= 1;
        if (f->cfg.window_limit > 0)
            f->window_used++;
        if (f->cfg.token_limit > 0)
            f->tok_bucket -= (double)tokens;
        f->in_flight++;
        return true;
    }
    f->throttled++;
    shapes_error(a, dialect, 429, NULL, "Rate limit exceeded. Try again later.",
                 now_ms(CLOCK_REALTIME) + retry * 1000);
    snprintf(v, sizeof(v), "%ld", retry);
    answer_header(a, "Retry-After", v);
    if (bucket && f->cfg.rate_headers == FAKE_RATE_HEADERS_FULL)
        ratelimit_headers(f, a, retry);
    else if (bucket && f->cfg.rate_headers == FAKE_RATE_HEADERS_LIMIT) {
        snprintf(v, sizeof(v), "%ld", lround(f->cfg.rate * 60));
        answer_header(a, "X-RateLimit-Limit", v);
    }
    a->throttled = true;
    return false;
}

/* A request's tokens, as a text API counts them: the prompt (the body's
 * length / 4) and the completion, three quarters of max_tokens (or
 * max_completion_tokens): an estimate from max_tokens is a third too high,
 * which the answer's usage corrects. */
static long
token_cost(json_t *body, size_t len)
{
    json_t *m = json_object_get(body, "max_tokens");
    if (!json_is_integer(m))
        m = json_object_get(body, "max_completion_tokens");
    long completion = json_is_integer(m) ? (long)json_integer_value(m) : 0;
    return (long)(len / 4) + completion * 3 / 4;
}

/* Adds usage to a success body built by shapes_success. */
static void
add_usage(struct answer *a, long tokens, size_t len)
{
    json_t *b = json_loadb(a->body, a->body_len, 0, NULL);
    long prompt = (long)(len / 4);

    if (!json_is_object(b)) {
        json_decref(b);
        return;
    }
    json_object_set_new(b, "usage",
                        json_pack("{s:I, s:I, s:I}", "prompt_tokens",
                                  (json_int_t)prompt, "completion_tokens",
                                  (json_int_t)(tokens - prompt),
                                  "total_tokens", (json_int_t)tokens));
    int status = a->status;
    answer_json(a, status, b);
}

/* --- bodies and keys ----------------------------------------------------- */

/* SHA-256 of the body without its idempotency_key field (key order
 * normalised), so the same request with its key in the body or in a
 * header compares equal. */
static void
body_digest(json_t *body, const struct req *r, unsigned char out[32])
{
    if (json_is_object(body)) {
        json_t *copy = json_copy(body);
        json_object_del(copy, "idempotency_key");
        char *text = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS);
        SHA256((const unsigned char *)text, strlen(text), out);
        free(text);
        json_decref(copy);
    } else {
        SHA256((const unsigned char *)(r->data ? r->data : ""), r->len, out);
    }
}

/* The hidden ledger key holding a script's progress: the body (without
 * its idempotency_key field) and the key without a derived ".N" suffix, so
 * a client that resubmits a failed run under "<key>.2" walks on through
 * the same script, and a keyless retry of the same body does too. */
static const char *
script_key(json_t *body, const struct req *r, const char *key, char *out,
           size_t len)
{
    unsigned char d[32];
    size_t base = strlen(key);
    const char *dot = strrchr(key, '.');

    if (dot != NULL && dot[1] != '\0' &&
        strspn(dot + 1, "0123456789") == strlen(dot + 1))
        base = (size_t)(dot - key);
    body_digest(body, r, d);
    out[0] = '#';
    for (int i = 0; i < 32; i++)
        snprintf(out + 1 + 2 * i, 3, "%02x", d[i]);
    snprintf(out + 65, len - 65, "/%.*s", (int)base, key);
    return out;
}

static void
store_for_replay(struct ledger_entry *e, const struct answer *a)
{
    free(e->stored_body);
    e->has_stored = true;
    e->stored_status = a->status;
    e->stored_body = malloc(a->body_len + 1);
    if (e->stored_body == NULL)
        abort();
    memcpy(e->stored_body, a->body, a->body_len + 1);
    e->stored_len = a->body_len;
    e->stored_ctype = a->ctype;
}

/* A fresh generation: counted, and kept for replays of its key. */
static void
execute(struct fake *f, struct ledger_entry *e, const char *dialect,
        const char *key, int status, struct answer *a)
{
    shapes_success(a, dialect, ++f->next_generation, key, f->port);
    a->status = status;
    a->executed = true;
    e->executions++;
    f->executions++;
    if (key[0] != '\0')
        store_for_replay(e, a);
}

static void
start_run(struct fake *f, struct ledger_entry *e, const char *dialect,
          const char *key, json_t *async, struct answer *a)
{
    json_t *polls = json_object_get(async, "polls");
    long n = ledger_run_new(
        &f->ledger,
        json_is_integer(polls) ? (long)json_integer_value(polls) : 0,
        json_object_get(async, "then"));
    char id[32], url[128];
    const char *seg = strcmp(dialect, "graphql") == 0 ? "lamatic" : dialect;

    snprintf(id, sizeof(id), "run_%ld", n);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/%s/runs/%s", f->port, seg,
             id);
    answer_json(a, 200,
                json_pack("{s:s, s:s, s:s}", "run_id", id, "status", "pending",
                          "poll_url", url));
    a->executed = true;
    e->executions++;
    f->executions++;
    if (key[0] != '\0')
        store_for_replay(e, a);
}

/* Follows one script step. */
static void
apply_step(struct fake *f, struct ledger_entry *e, const char *dialect,
           const char *key, json_t *step, struct answer *a)
{
    json_t *v, *body;
    const char *name;
    int status;

    if (!json_is_object(step)) {
        shapes_error(a, dialect, 400, NULL, "_fake: a step is an object", 0);
        return;
    }
    v = json_object_get(step, "delay_ms");
    if (json_is_integer(v))
        a->delay_ms = (long)json_integer_value(v);
    if (json_is_true(json_object_get(step, "reset"))) {
        a->reset = true;
        return;
    }
    v = json_object_get(step, "async");
    if (json_is_object(v)) {
        start_run(f, e, dialect, key, v, a);
        return;
    }
    v = json_object_get(step, "status");
    status = json_is_integer(v) ? (int)json_integer_value(v) : 200;
    if (status < 100 || status > 599) {
        shapes_error(a, dialect, 400, NULL, "_fake: bad status", 0);
        return;
    }
    body = json_object_get(step, "body");
    if (body != NULL) {
        answer_json(a, status, json_incref(body));
        if (json_is_string(body))
            a->ctype = "application/json";
    } else if (status >= 200 && status < 300) {
        execute(f, e, dialect, key, status, a);
    } else {
        shapes_error(a, dialect, status, NULL, NULL,
                     now_ms(CLOCK_REALTIME) + 1000);
    }
    json_object_foreach(json_object_get(step, "headers"), name, v)
    {
        if (json_is_string(v)) {
            answer_header(a, name, json_string_value(v));
        } else if (json_is_number(v)) {
            char num[32];
            snprintf(num, sizeof(num), "%g", json_number_value(v));
            answer_header(a, name, num);
        }
    }
    a->truncate = json_is_true(json_object_get(step, "truncate"));
}

/* GET /<prefix>/runs/run_<n>: running until the run's polls are used up,
 * then the outcome of its "then". Returns false when path is no poll. */
static bool
poll_run(struct fake *f, const char *path, const char *dialect,
         struct answer *a)
{
    const char *p = strstr(path + 1, "/runs/run_");
    struct ledger_run *run;
    char id[32], *end;
    long n;

    if (p == NULL || strchr(path + 1, '/') != p)
        return false;
    n = strtol(p + 10, &end, 10);
    if (end == p + 10 || *end != '\0')
        return false;
    run = ledger_run(&f->ledger, n);
    if (run == NULL) {
        shapes_error(a, dialect, 404, "not_found", "No such run.", 0);
        return true;
    }
    snprintf(id, sizeof(id), "run_%ld", n);
    if (run->polls++ < run->polls_needed) {
        answer_json(a, 200,
                    json_pack("{s:s, s:s}", "run_id", id, "status", "running"));
        return true;
    }
    const char *st =
        json_string_value(json_object_get(run->then, "run_status"));
    if (st != NULL && strcmp(st, "failed") == 0) {
        const char *code =
            json_string_value(json_object_get(run->then, "error_code"));
        const char *msg =
            json_string_value(json_object_get(run->then, "error_message"));
        answer_json(a, 200,
                    json_pack("{s:s, s:s, s:s, s:s}", "run_id", id, "status",
                              "failed", "error_code",
                              code ? code : "internal_error", "error_message",
                              msg ? msg : "Generic execution failure."));
        return true;
    }
    json_t *cost = json_object_get(run->then, "charged_cost");
    json_t *nout = json_object_get(run->then, "outputs");
    json_t *outputs = json_array();
    long count = json_is_integer(nout) ? (long)json_integer_value(nout) : 1;
    for (long i = 0; i < count && i < SERVER_MAX_OUTPUTS; i++) {
        char url[128], out[48];
        const char *seg = strchr(path + 1, '/');
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/files%.*s/%s/%ld.png",
                 f->port, (int)(seg - path), path, id, i);
        snprintf(out, sizeof(out), "out_%ld_%ld", n, i);
        json_array_append_new(outputs,
                              json_pack("{s:s, s:s, s:s}", "output_id", out,
                                        "type", "image", "url", url));
    }
    answer_json(a, 200,
                json_pack("{s:s, s:s, s:o, s:f}", "run_id", id, "status",
                          "completed", "outputs", outputs, "charged_cost",
                          json_is_number(cost) ? json_number_value(cost)
                                               : SERVER_RUN_COST));
    return true;
}

/* GET /<prefix>/techniques/<slug>: the technique FLORA describes, with the
 * run_cost it states (SERVER_RUN_COST, like a completed run's charged_cost,
 * unless POST /_techniques says otherwise for the slug: another
 * "run_cost", "run_cost": null for none, or a "status" to fail with).
 * Returns false when path is no technique. */
static bool
technique_get(struct fake *f, const char *path, const char *dialect,
              struct answer *a)
{
    static const char seg[] = "/techniques/";
    const char *p = strchr(path + 1, '/');
    const char *slug;
    json_t *spec, *cost, *status, *body;
    char id[160];

    if (p == NULL || strncmp(p, seg, strlen(seg)) != 0)
        return false;
    slug = p + strlen(seg);
    if (slug[0] == '\0' || strchr(slug, '/') != NULL || strlen(slug) > 128)
        return false;
    spec = json_object_get(f->techniques, slug);
    status = json_object_get(spec, "status");
    if (json_is_integer(status)) {
        shapes_error(a, dialect, (int)json_integer_value(status), NULL, NULL,
                     0);
        return true;
    }
    snprintf(id, sizeof(id), "tech_%s", slug);
    body = json_pack("{s:s, s:s, s:s, s:[{s:s, s:s}]}", "id", id, "slug", slug,
                     "name", slug, "inputs", "id", "prompt", "type", "text");
    cost = json_object_get(spec, "run_cost");
    if (cost == NULL)
        json_object_set_new(body, "run_cost", json_real(SERVER_RUN_COST));
    else if (!json_is_null(cost))
        json_object_set(body, "run_cost", cost);
    answer_json(a, 200, body);
    return true;
}

/* --- output files ---------------------------------------------------------- */

/* 32-bit FNV-1a: the seed of a file's bytes, from its path. */
static uint32_t
fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* The run a /files/<prefix>/run_<n>/<i>.png path belongs to, or NULL. */
static struct ledger_run *
file_run(struct fake *f, const char *rel)
{
    const char *p = strstr(rel, "/run_");
    char *end;
    long n;
    if (p == NULL)
        return NULL;
    n = strtol(p + 5, &end, 10);
    if (end == p + 5 || *end != '/')
        return NULL;
    return ledger_run(&f->ledger, n);
}

/* The bytes of the file at rel ("/<prefix>/<run or gen>/<i>.png"): a
 * pseudo-random stream seeded by the path, of the run's output_bytes
 * (default SERVER_FILE_BYTES plus up to 4 KiB by path, so files differ in
 * size too). Always the same for the same path. */
static void
file_bytes(struct fake *f, const char *rel, struct answer *a)
{
    struct ledger_run *run = file_run(f, rel);
    json_t *size = run ? json_object_get(run->then, "output_bytes") : NULL;
    uint32_t h = fnv1a(rel);
    size_t n = json_is_integer(size) ? (size_t)json_integer_value(size)
                                     : SERVER_FILE_BYTES + h % 4096;
    uint64_t x = ((uint64_t)h << 32) | 0x9e3779b9u;
    unsigned char *b = malloc(n + 1);

    if (b == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        b[i] = (unsigned char)((x * 2685821657736338717ULL) >> 56);
    }
    b[n] = '\0';
    a->status = 200;
    a->body = (char *)b;
    a->body_len = n;
    a->ctype = "image/png";
}

/* Range requests on a file, as CDNs answer them: every answer names the
 * file's ETag and, unless the run says download_ranges: false (a server
 * that ignores Range), Accept-Ranges: bytes; "Range: bytes=N-" (with no
 * If-Range, or one equal to the ETag) answers 206 with the rest and its
 * Content-Range, or 416 when N is past the end. Other forms get the whole
 * file, as RFC 9110 allows. */
static void
file_range(const char *rel, json_t *then, const char *range,
           const char *if_range, struct answer *a)
{
    json_t *ranges = json_object_get(then, "download_ranges");
    size_t len = a->body_len;
    char etag[64], cr[96], *end;
    long long n;

    snprintf(etag, sizeof(etag), "\"f%08x-%zu\"", fnv1a(rel), len);
    answer_header(a, "ETag", etag);
    if (json_is_false(ranges))
        return;
    answer_header(a, "Accept-Ranges", "bytes");
    if (range == NULL || strncmp(range, "bytes=", 6) != 0 ||
        (if_range != NULL && strcmp(if_range, etag) != 0))
        return;
    n = strtoll(range + 6, &end, 10);
    if (end == range + 6 || n < 0 || strcmp(end, "-") != 0)
        return;
    if ((size_t)n >= len) {
        free(a->body);
        a->body = NULL;
        a->body_len = 0;
        snprintf(cr, sizeof(cr), "bytes */%zu", len);
        answer_json(a, 416, json_pack("{s:s}", "error", "range not "
                                                        "satisfiable"));
        answer_header(a, "Content-Range", cr);
        return;
    }
    memmove(a->body, a->body + n, len - (size_t)n);
    a->body_len = len - (size_t)n;
    a->status = 206;
    snprintf(cr, sizeof(cr), "bytes %lld-%zu/%zu", n, len - 1, len);
    answer_header(a, "Content-Range", cr);
}

/* GET /files/<rel>: an output file, as a CDN would serve it. The run's
 * "then" scripts it: the first download_fail fetches answer
 * download_status (default 503), download_stall_ms stalls the first
 * successful answer halfway, download_cut cuts it halfway (the connection
 * closes), and download_redirect = HOST answers 302 to the same file on
 * HOST (this fake's port). Range and If-Range are honoured (file_range).
 * Fetches are counted per path. */
static void
file_get(struct fake *f, const char *rel, const char *range,
         const char *if_range, struct answer *a)
{
    struct ledger_run *run = file_run(f, rel);
    json_t *then = run ? run->then : NULL;
    json_t *fail = json_object_get(then, "download_fail");
    json_t *status = json_object_get(then, "download_status");
    json_t *stall = json_object_get(then, "download_stall_ms");
    json_t *cut = json_object_get(then, "download_cut");
    const char *hop = json_string_value(json_object_get(then,
                                                        "download_redirect"));
    char key[600];
    struct ledger_entry *e;
    long k;

    if (strncmp(rel, SERVER_REDIRECTED, strlen(SERVER_REDIRECTED)) == 0) {
        /* the far end of a redirect: the same file's bytes */
        file_bytes(f, rel + strlen(SERVER_REDIRECTED), a);
        file_range(rel + strlen(SERVER_REDIRECTED), then, range, if_range, a);
        return;
    }
    if (hop != NULL) {
        char loc[600];
        snprintf(loc, sizeof(loc), "http://%s:%u/files%s%s", hop, f->port,
                 SERVER_REDIRECTED, rel);
        answer_json(a, 302, json_pack("{s:s}", "moved", loc));
        answer_header(a, "Location", loc);
        return;
    }
    snprintf(key, sizeof(key), "#file%s", rel);
    e = ledger_get(&f->ledger, key);
    e->hidden = true;
    k = e->requests++;
    if (json_is_integer(fail) && k < json_integer_value(fail)) {
        int st = json_is_integer(status) ? (int)json_integer_value(status)
                                         : 503;
        answer_json(a, st, json_pack("{s:s}", "error", "download failed"));
        return;
    }
    file_bytes(f, rel, a);
    file_range(rel, then, range, if_range, a);
    /* Only the first good fetch stalls or is cut: the one a restart
     * interrupts, or the one a retry resumes. */
    if (k == (json_is_integer(fail) ? json_integer_value(fail) : 0)) {
        if (json_is_integer(stall))
            a->stall_ms = (long)json_integer_value(stall);
        if (json_is_true(cut) && a->status == 200)
            a->cut_at = a->body_len / 2;
    }
}

/* The request past the capacity gate: ledger, replay, script, errors. */
static void
decide(struct fake *f, const char *path, const char *method,
       const char *dialect, const char *key, json_t *body, const struct req *r,
       struct answer *a)
{
    struct ledger_entry *e, *steps;
    json_t *fake, *script;
    char hexkey[1200];
    long k;

    if (strcmp(method, "GET") == 0 && (poll_run(f, path, dialect, a) ||
                                       technique_get(f, path, dialect, a)))
        return;
    e = ledger_get(&f->ledger, key);
    k = e->requests++;
    steps = e;

    fake = json_object_get(body, "_fake");
    if (fake != NULL) {
        script = json_object_get(fake, "script");
        if (!json_is_array(script) || json_array_size(script) == 0) {
            shapes_error(a, dialect, 400, NULL,
                         "_fake: script must be a non-empty array", 0);
            return;
        }
        steps = ledger_get(&f->ledger,
                           script_key(body, r, key, hexkey, sizeof(hexkey)));
        steps->hidden = true;
        k = steps->requests++;
        json_decref(steps->script);
        steps->script = json_incref(script);
    } else if (key[0] == '\0') {
        steps = NULL;
    }
    if (key[0] != '\0') {
        unsigned char digest[32];
        body_digest(body, r, digest);
        if (e->has_digest && memcmp(digest, e->digest, 32) != 0) {
            f->conflicts++;
            shapes_error(a, dialect, 422, "idempotency_conflict",
                         "This idempotency_key was used with a different "
                         "request body.",
                         0);
            return;
        }
        memcpy(e->digest, digest, 32);
        e->has_digest = true;
        if (e->has_stored) {
            a->status = e->stored_status;
            a->body = malloc(e->stored_len + 1);
            if (a->body == NULL)
                abort();
            memcpy(a->body, e->stored_body, e->stored_len + 1);
            a->body_len = e->stored_len;
            a->ctype = e->stored_ctype;
            answer_header(a, "Idempotent-Replayed", "true");
            a->replayed = true;
            e->replays++;
            f->replays++;
            return;
        }
    }
    if (steps != NULL && steps->script != NULL) {
        size_t n = json_array_size(steps->script);
        size_t i = (size_t)k < n ? (size_t)k : n - 1;
        apply_step(f, e, dialect, key, json_array_get(steps->script, i), a);
        return;
    }
    if (f->cfg.error_rate > 0 && f->cfg.nmix > 0 &&
        rng_unit(f) < f->cfg.error_rate) {
        int status = f->cfg.error_mix[rng_next(f) % (uint64_t)f->cfg.nmix];
        shapes_error(a, dialect, status, NULL, NULL,
                     now_ms(CLOCK_REALTIME) + 1000);
        if (status == 429 || status == 503)
            answer_header(a, "Retry-After", "1");
        return;
    }
    execute(f, e, dialect, key, 200, a);
}

/* --- the log ------------------------------------------------------------- */

static enum MHD_Result
collect_header(void *cls, enum MHD_ValueKind kind, const char *name,
               const char *value)
{
    char lower[256];
    size_t i;

    (void)kind;
    for (i = 0; name[i] && i < sizeof(lower) - 1; i++)
        lower[i] =
            (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
    lower[i] = '\0';
    json_object_set_new(cls, lower, json_string(value ? value : ""));
    return MHD_YES;
}

static json_t *
log_entry(struct MHD_Connection *c, const char *method, const char *path,
          const char *key, json_t *body, const struct req *r)
{
    json_t *headers = json_object();
    json_t *b;

    MHD_get_connection_values(c, MHD_HEADER_KIND, collect_header, headers);
    if (body != NULL)
        b = json_incref(body);
    else if (r->len > 0)
        b = json_stringn(r->data, r->len);
    else
        b = json_null();
    return json_pack("{s:I, s:s, s:s, s:s, s:i, s:o, s:o, s:i}", "t_ms",
                     (json_int_t)r->t_ms, "method", method, "path", path, "key",
                     key, "status", 0, "headers", headers, "body",
                     b ? b : json_null(), "duration_ms", 0);
}

/* --- control endpoints --------------------------------------------------- */

static json_t *
config_json(const struct fake *f)
{
    json_t *mix = json_array();
    for (int i = 0; i < f->cfg.nmix; i++)
        json_array_append_new(mix, json_integer(f->cfg.error_mix[i]));
    return json_pack("{s:f, s:f, s:I, s:I, s:f, s:o, s:I, s:I}", "rate",
                     f->cfg.rate, "burst", f->cfg.burst, "max_concurrent",
                     (json_int_t)f->cfg.max_concurrent, "retry_after",
                     (json_int_t)f->cfg.retry_after, "error_rate",
                     f->cfg.error_rate, "error_mix", mix, "latency_ms",
                     (json_int_t)f->cfg.latency_ms, "jitter_ms",
                     (json_int_t)f->cfg.jitter_ms);
}

/* Applies POST /_config. Returns NULL or what was wrong. */
static const char *
config_apply(struct fake *f, json_t *body)
{
    const char *name;
    json_t *v;

    if (!json_is_object(body))
        return "the body must be a JSON object";
    json_object_foreach(body, name, v)
    {
        if (!json_is_number(v))
            return "values must be numbers";
        double d = json_number_value(v);
        if (d < 0)
            return "values must not be negative";
        if (strcmp(name, "burst") == 0) {
            f->cfg.burst = d > 1 ? d : 1;
            f->cfg.burst_set = true;
            f->tokens = f->cfg.burst;
        } else if (strcmp(name, "max_concurrent") == 0) {
            f->cfg.max_concurrent = (long)d;
        } else if (strcmp(name, "retry_after") == 0) {
            f->cfg.retry_after = (long)d;
        } else if (strcmp(name, "error_rate") == 0) {
            if (d > 1)
                return "error_rate is a share in 0..1";
            f->cfg.error_rate = d;
        } else if (strcmp(name, "latency_ms") == 0) {
            f->cfg.latency_ms = (long)d;
        } else if (strcmp(name, "jitter_ms") == 0) {
            f->cfg.jitter_ms = (long)d;
        } else if (strcmp(name, "rate") != 0) {
            return "unknown setting";
        }
    }
    /* rate last: its burst rule must see a burst given alongside. */
    v = json_object_get(body, "rate");
    if (v != NULL)
        server_set_rate(f, json_number_value(v));
    return NULL;
}

static void
control(struct fake *f, const char *path, const char *method, json_t *body,
        struct answer *a)
{
    bool get = strcmp(method, "GET") == 0;
    bool post = strcmp(method, "POST") == 0;

    if (strcmp(path, "/_ledger") == 0 && get) {
        answer_json(a, 200,
                    json_pack("{s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                              "keys", ledger_keys_json(&f->ledger), "requests",
                              (json_int_t)f->requests, "executions",
                              (json_int_t)f->executions, "throttled",
                              (json_int_t)f->throttled, "replays",
                              (json_int_t)f->replays, "conflicts",
                              (json_int_t)f->conflicts, "in_flight",
                              (json_int_t)f->in_flight, "log_dropped",
                              (json_int_t)f->log_dropped));
    } else if (strncmp(path, "/_files/", 8) == 0 && get) {
        file_bytes(f, path + 7, a); /* the bytes, uncounted, unscripted */
    } else if (strcmp(path, "/_log") == 0 && get) {
        answer_json(a, 200, json_incref(f->log));
    } else if (strcmp(path, "/_reset") == 0 && post) {
        ledger_clear(&f->ledger);
        json_array_clear(f->log);
        json_object_clear(f->techniques);
        f->requests = f->executions = f->throttled = 0;
        f->replays = f->conflicts = f->log_dropped = 0;
        f->tokens = f->cfg.burst;
        answer_json(a, 200, json_pack("{s:b}", "ok", 1));
    } else if (strcmp(path, "/_techniques") == 0 && (get || post)) {
        if (post && !json_is_object(body)) {
            shapes_error(a, "generic", 400, "bad_techniques",
                         "the body must be a JSON object", 0);
        } else {
            if (post)
                json_object_update(f->techniques, body);
            answer_json(a, 200, json_incref(f->techniques));
        }
    } else if (strcmp(path, "/_config") == 0 && (get || post)) {
        const char *err = post ? config_apply(f, body) : NULL;
        if (err != NULL)
            shapes_error(a, "generic", 400, "bad_config", err, 0);
        else
            answer_json(a, 200, config_json(f));
    } else {
        shapes_error(a, "generic", 404, "not_found", "No such endpoint.", 0);
    }
}

/* --- sending ------------------------------------------------------------- */

struct truncated {
    char *body;
    size_t len;
    struct fake *f;  /* stalled answers: whose sleep */
    long stall_ms;   /* > 0: a stalled answer, not a truncated one */
};

static ssize_t
on_mhd_truncated(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct truncated *t = cls;
    size_t n;

    if (t->stall_ms > 0) {
        /* The first half, then a pause, then the rest. */
        if (pos >= t->len)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (pos == t->len / 2) {
            server_sleep(t->f, t->stall_ms);
            t->stall_ms = 1; /* once: later reads go straight on */
        }
        n = (pos < t->len / 2 ? t->len / 2 : t->len) - (size_t)pos;
        if (n > max)
            n = max;
        memcpy(buf, t->body + pos, n);
        return (ssize_t)n;
    }
    if (pos >= t->len)
        return MHD_CONTENT_READER_END_WITH_ERROR; /* close mid-body */
    n = t->len - (size_t)pos;
    if (n > max)
        n = max;
    memcpy(buf, t->body + pos, n);
    return (ssize_t)n;
}

static void
on_mhd_truncated_free(void *cls)
{
    struct truncated *t = cls;
    free(t->body);
    free(t);
}

static bool
has_header(const struct answer *a, const char *name)
{
    const char *k;
    json_t *v;
    json_object_foreach(a->headers, k, v)
    {
        if (strcasecmp(k, name) == 0)
            return true;
    }
    return false;
}

static enum MHD_Result
send_answer(struct fake *f, struct MHD_Connection *c, struct answer *a,
            const char *rid_hdr, const char *rid)
{
    struct MHD_Response *resp;
    enum MHD_Result ret;
    const char *k;
    json_t *v;

    if (a->truncate || a->stall_ms > 0 || a->cut_at > 0) {
        struct truncated *t = malloc(sizeof(*t));
        if (t == NULL)
            abort();
        t->body = a->body;
        t->len = a->cut_at > 0 ? a->cut_at : a->body_len;
        t->f = f;
        t->stall_ms = a->truncate || a->cut_at > 0 ? 0 : a->stall_ms;
        a->body = NULL;
        resp = MHD_create_response_from_callback(
            a->cut_at > 0 ? a->body_len
                          : t->len + (a->truncate ? SERVER_TRUNCATE_EXTRA : 0),
            4096, on_mhd_truncated, t, on_mhd_truncated_free);
    } else {
        resp = MHD_create_response_from_buffer(a->body_len, a->body,
                                               MHD_RESPMEM_MUST_FREE);
        a->body = NULL;
    }
    if (resp == NULL)
        return MHD_NO;
    if (a->ctype && !has_header(a, "Content-Type"))
        MHD_add_response_header(resp, "Content-Type", a->ctype);
    MHD_add_response_header(resp, rid_hdr, rid);
    json_object_foreach(a->headers, k, v)
        MHD_add_response_header(resp, k, json_string_value(v));
    ret = MHD_queue_response(c, (unsigned)a->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* --- the handler --------------------------------------------------------- */

static enum MHD_Result
handle(struct fake *f, struct MHD_Connection *c, const char *path,
       const char *method, struct req *r)
{
    const char *dialect = shapes_dialect(path);
    const char *hkey, *rid_hdr = shapes_request_id_header(dialect);
    struct answer a = {0};
    json_t *body = NULL, *entry = NULL;
    char rid[32], *key;
    bool admitted = false;
    long sleep_ms = 0;
    enum MHD_Result ret;

    if (r->len > 0)
        body = json_loadb(r->data, r->len, JSON_DECODE_ANY, NULL);
    hkey = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
    if (hkey != NULL)
        key = strdup(hkey);
    else if (json_is_string(json_object_get(body, "idempotency_key")))
        key =
            strdup(json_string_value(json_object_get(body, "idempotency_key")));
    else
        key = strdup("");
    if (key == NULL)
        abort();

    long tokens = token_cost(body, r->len);
    pthread_mutex_lock(&f->mu);
    snprintf(rid, sizeof(rid), "req_%ld", ++f->next_request);
    if (path[0] == '/' && path[1] == '_') {
        control(f, path, method, body, &a);
        pthread_mutex_unlock(&f->mu);
        ret = send_answer(f, c, &a, rid_hdr, rid);
        goto done;
    }
    f->requests++;
    entry = log_entry(c, method, path, key, body, r);
    if ((long)json_array_size(f->log) < f->cfg.log_limit)
        json_array_append(f->log, entry);
    else
        f->log_dropped++;
    if (r->too_big) {
        shapes_error(&a, dialect, 413, NULL, "The request body is too large.",
                     0);
    } else if (strncmp(path, "/files/", 7) == 0 && strcmp(method, "GET") == 0) {
        /* A CDN, not the API: no capacity gate, no ledger of keys. */
        f->requests--;
        file_get(f, path + 6,
                 MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range"),
                 MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-Range"),
                 &a);
    } else if (capacity_admit(f, dialect, tokens, &a)) {
        admitted = true;
        decide(f, path, method, dialect, key, body, r, &a);
        if (f->cfg.token_limit > 0 && a.executed && a.status < 300) {
            add_usage(&a, tokens, r->len);
            json_object_set_new(entry, "tokens", json_integer(tokens));
        }
        sleep_ms = f->cfg.latency_ms + a.delay_ms;
        if (f->cfg.jitter_ms > 0)
            sleep_ms += (long)(rng_next(f) % (uint64_t)(f->cfg.jitter_ms + 1));
        if (strcmp(dialect, "firemoon") == 0 && f->cfg.rate > 0)
            ratelimit_headers(
                f, &a, (long)ceil((f->cfg.burst - f->tokens) / f->cfg.rate));
    }
    if (f->cfg.window_limit > 0 && !r->too_big)
        window_headers(f, &a);
    if (f->cfg.token_limit > 0 && !r->too_big)
        token_headers(f, &a);
    pthread_mutex_unlock(&f->mu);

    server_sleep(f, sleep_ms);
    /* The entry is complete before the answer goes out: a client that
     * reads /_log right after its answer must find it so. */
    pthread_mutex_lock(&f->mu);
    json_object_set_new(entry, "status", json_integer(a.reset ? 0 : a.status));
    json_object_set_new(entry, "duration_ms",
                        json_integer(now_ms(CLOCK_MONOTONIC) - r->mono_ms));
    /* The slot is free once the answer is decided: a client that sends
     * its next request the moment it reads this one must find it free. */
    if (admitted)
        f->in_flight--;
    pthread_mutex_unlock(&f->mu);
    ret = a.reset ? MHD_NO : send_answer(f, c, &a, rid_hdr, rid);
    if (!f->cfg.quiet)
        fprintf(stderr, "%s %s %s key=%s -> %d%s\n", rid, method, path,
                key[0] ? key : "-", a.reset ? 0 : a.status,
                a.reset       ? " reset"
                : a.throttled ? " throttled"
                : a.replayed  ? " replayed"
                : a.executed  ? " executed"
                              : "");
done:
    json_decref(entry);
    json_decref(body);
    answer_clear(&a);
    free(key);
    return ret;
}

enum MHD_Result
server_handle(void *cls, struct MHD_Connection *c, const char *url,
              const char *method, const char *version, const char *upload_data,
              size_t *upload_size, void **con_cls)
{
    struct req *r = *con_cls;

    (void)version;
    if (r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return MHD_NO;
        r->t_ms = now_ms(CLOCK_REALTIME);
        r->mono_ms = now_ms(CLOCK_MONOTONIC);
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->too_big || r->len + n > SERVER_MAX_BODY) {
            r->too_big = true;
            return MHD_YES;
        }
        if (r->len + n + 1 > r->cap) {
            r->cap = (r->len + n + 1) * 2;
            r->data = realloc(r->data, r->cap);
            if (r->data == NULL)
                abort();
        }
        memcpy(r->data + r->len, upload_data, n);
        r->len += n;
        r->data[r->len] = '\0';
        return MHD_YES;
    }
    return handle(cls, c, url, method, r);
}

void
server_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                 enum MHD_RequestTerminationCode toe)
{
    struct req *r = *con_cls;

    (void)cls;
    (void)c;
    (void)toe;
    if (r != NULL) {
        free(r->data);
        free(r);
        *con_cls = NULL;
    }
}
