/*
 * Unit tests for lane: the flow control of docs/design.md §6, driven with an
 * injected clock (T0 + offsets) and fixed uniform draws. No sleeping: time
 * passes by passing a later now_ms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/lane.h"
#include "sluice/outcome.h"

/* 2023-11-14T22:13:20Z: a realistic wall clock, so date formatting and
 * large offsets are exercised as in production. */
#define T0 INT64_C(1700000000000)
#define RTT 200

static struct lane_params
params(int start, int max, bool adaptive, double rate, int64_t probe)
{
    struct lane_params p = {
        .concurrency_start = start,
        .concurrency_max = max,
        .adaptive = adaptive,
        .rate_per_s = rate,
        .probe_interval_ms = probe,
    };
    return p;
}

/* The tickets of requests in flight, oldest first: tests finish them in
 * the order they were sent unless they say otherwise. */
#define QMAX 16384
static struct lane_ticket q[QMAX];
static int qhead, qtail;

static struct lane *
lane_make(int start, int max, bool adaptive, double rate)
{
    struct lane_params p = params(start, max, adaptive, rate, 60000);
    qhead = qtail = 0;
    return lane_new("flora", &p, T0);
}

/* An outcome as a dialect would leave it, built by hand: rate hints
 * unknown (-1), no retry hint. */
static struct outcome
mk(enum outcome_kind kind, enum err_class cls, int status, const char *code)
{
    struct outcome o;

    memset(&o, 0, sizeof(o));
    o.kind = kind;
    o.cls = cls;
    o.http_status = status;
    o.hints.rl_limit = -1;
    o.hints.rl_remaining = -1;
    o.hints.tok_limit = -1;
    o.hints.tok_remaining = -1;
    if (code != NULL)
        strncpy(o.code, code, sizeof(o.code) - 1);
    return o;
}

static struct outcome
ok(void)
{
    return mk(OUTCOME_SUCCESS, ERR_NONE, 200, NULL);
}

static struct outcome
failed_with(enum err_class cls, int status, const char *code)
{
    return mk(OUTCOME_FAILURE, cls, status, code);
}

static void
send_n(struct lane *l, int n, int64_t now)
{
    for (int i = 0; i < n; i++) {
        assert_true(qtail < QMAX);
        lane_on_send(l, now, 0, &q[qtail++]);
    }
}

/* Finishes the oldest request in flight with o. */
static bool
done1(struct lane *l, const struct outcome *o, int64_t now, double u)
{
    assert_true(qhead < qtail);
    return lane_on_done(l, &q[qhead++], o, now, u);
}

/* Finishes the newest request in flight with o. */
static bool
done_last(struct lane *l, const struct outcome *o, int64_t now)
{
    assert_true(qhead < qtail);
    struct lane_ticket t = q[--qtail];
    return lane_on_done(l, &t, o, now, 0.5);
}

static void
abort1(struct lane *l)
{
    assert_true(qhead < qtail);
    lane_on_abort(l, &q[qhead++]);
}

/* Finishes the n oldest requests with o; returns how many reported a
 * change. */
static int
done_n(struct lane *l, int n, const struct outcome *o, int64_t now)
{
    int changes = 0;

    for (int i = 0; i < n; i++)
        changes += done1(l, o, now, 0.5);
    return changes;
}

static int
admit(struct lane *l, int64_t now, int64_t *wake)
{
    *wake = -1;
    return lane_admit(l, now, wake);
}

/* Sends as many requests of `tokens` each as the lane admits, from `now`
 * until `until`, moving time only to the wake times it gives (requests
 * never finish). Returns how many went out. */
static long
drive_by_wake(struct lane *l, int64_t now, int64_t until, int64_t tokens)
{
    long sent = 0;
    int64_t wake;

    while (now < until) {
        int n = admit(l, now, &wake);
        for (int i = 0; i < n; i++) {
            assert_true(qtail < QMAX);
            lane_on_send(l, now, tokens, &q[qtail++]);
        }
        sent += n;
        if (n == 0) {
            assert_true(wake > now);
            now = wake;
        }
    }
    return sent;
}

/* One round trip of a saturated lane ending at `now`: the requests in
 * flight succeed one after the other over the RTT before it, and like the
 * dispatcher, each freed slot is refilled at once (as far as the pacer
 * allows; what it holds back goes out at the end of the round). */
static void
round_trip(struct lane *l, int64_t now)
{
    struct outcome s = ok();
    int64_t wake;
    int n = lane_in_flight(l);

    for (int i = 0; i < n; i++) {
        int64_t at = now - RTT + (int64_t)(i + 1) * RTT / n;
        done1(l, &s, at, 0.5);
        send_n(l, admit(l, at, &wake), at);
    }
}

/* --- adaptive concurrency --------------------------------------------- */

static void
test_slow_start_doubles_per_round_trip(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 64, true, 0);
    int64_t wake;

    assert_int_equal(admit(l, T0, &wake), 4);
    assert_int_equal(wake, 0);
    send_n(l, 4, T0);
    assert_int_equal(admit(l, T0, &wake), 0);
    assert_int_equal(wake, 0); /* wait for a request, not a time */
    round_trip(l, T0 + RTT);
    assert_int_equal(lane_limit(l), 8);
    assert_int_equal(lane_in_flight(l), 8);
    round_trip(l, T0 + 2 * RTT);
    assert_int_equal(lane_limit(l), 16);
    lane_free(l);
}

static void
test_429_cuts_once_and_stale_429s_do_not_cut_again(void **state)
{
    (void)state;
    struct lane *l = lane_make(20, 64, true, 0);
    struct outcome r =
        failed_with(ERR_RATE_LIMITED, 429, "rate_limit_exceeded");

    struct outcome s = ok();

    /* The last of a burst of 20 is refused. */
    send_n(l, 20, T0);
    assert_true(done_last(l, &r, T0 + RTT));
    assert_int_equal(lane_limit(l), 14); /* 20 × 0.7 */
    assert_string_equal(lane_last_change(l), "limit 20→14 after rate_limited");
    /* Three more of the same burst, sent before the cut: stale. */
    for (int i = 1; i <= 3; i++)
        assert_false(done_last(l, &r, T0 + RTT + i * 10));
    assert_int_equal(lane_limit(l), 14);
    assert_int_equal(lane_pause_until(l), 0); /* a cut, not a pause */
    /* The 16 that got through: back to just under the knee (20). */
    done_n(l, 16, &s, T0 + RTT + 50);
    assert_int_equal(lane_limit(l), 19);
    /* A request sent after the cut and refused: a new signal. */
    send_n(l, 1, T0 + 5000);
    assert_true(done_last(l, &r, T0 + 5000 + RTT));
    assert_int_equal(lane_limit(l), 13); /* 19 × 0.7 = 13.3 */
    lane_free(l);
}

static void
test_hinted_429_defers_one_job_without_pausing_lane(void **state)
{
    (void)state;
    struct lane *l = lane_make(16, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    int64_t now = T0 + RTT, wake;

    r.hints.retry_at_ms = now + 1000; /* Retry-After: 1 */
    send_n(l, 16, T0);
    done1(l, &r, now, 0.5);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(lane_pause_until(l), 0);
    /* The other slots keep working: the freed ones admit at once. */
    assert_int_equal(lane_limit(l), 11);
    done_n(l, 5, &r, now); /* stale: sent before the cut */
    assert_int_equal(admit(l, now, &wake), 1);
    assert_int_equal(lane_throttled(l), 6);
    lane_free(l);
}

static void
test_503_408_and_timeouts_are_losses(void **state)
{
    (void)state;
    struct outcome losses[] = {
        failed_with(ERR_UNAVAILABLE, 503, "service_unavailable"),
        failed_with(ERR_TIMEOUT, 504, "gateway_timeout"),
        failed_with(ERR_TIMEOUT, 0, NULL),           /* client timeout */
        failed_with(ERR_INVALID_REQUEST, 408, NULL), /* 408 by status alone */
    };

    for (size_t i = 0; i < sizeof(losses) / sizeof(*losses); i++) {
        struct lane *l = lane_make(10, 64, true, 0);
        send_n(l, 1, T0);
        assert_true(done1(l, &losses[i], T0 + RTT, 0.5));
        assert_int_equal(lane_limit(l), 7);
        lane_free(l);
    }
}

/* --- simulated providers ---------------------------------------------- */

/* A provider simulated in virtual time, driven like the dispatcher drives
 * the lane: every answer frees a slot, and the lane is asked at once how
 * many may start. Kinds: a cap of `cap` requests at once (beyond it, 429
 * at once); a token bucket of `rate`/s holding `burst` (beyond it, 429 at
 * once, silent: no rate headers); no limit but every `noise`-th answer a
 * 429 with Retry-After: 1. */
struct sim {
    int cap;     /* 0 = no concurrency cap */
    double rate; /* 0 = no bucket */
    double burst;
    int noise;   /* every noise-th answer fails; 0 none */
    int64_t rtt; /* answer time of accepted requests */
    /* state */
    double bucket;
    int64_t refill;
    int busy;
    long answers;
    long ok_in_window, refused_in_window, all_in_window;
};

#define SIM_EVENTS 4096
struct sim_event {
    int64_t at;
    struct lane_ticket t;
    bool ok;
    bool busy; /* held a provider slot */
};

static int
sim_next(struct sim_event *ev, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (ev[i].at < ev[best].at)
            best = i;
    return best;
}

/* Runs the lane against sim for `secs` virtual seconds; counts answers
 * arriving from `from_s` on. */
static void
sim_run(struct lane *l, struct sim *sm, int secs, int from_s)
{
    static struct sim_event ev[SIM_EVENTS];
    int n = 0;
    int64_t now = T0, end = T0 + secs * 1000LL, wake = 0;

    sm->bucket = sm->burst;
    sm->refill = T0;
    while (now < end) {
        int k = lane_admit(l, now, &wake);
        for (int i = 0; i < k && n < SIM_EVENTS; i++) {
            struct sim_event *e = &ev[n++];
            lane_on_send(l, now, 0, &e->t);
            if (sm->rate > 0) {
                sm->bucket += (double)(now - sm->refill) * sm->rate / 1000.0;
                if (sm->bucket > sm->burst)
                    sm->bucket = sm->burst;
                sm->refill = now;
            }
            bool refused = (sm->cap > 0 && sm->busy >= sm->cap) ||
                           (sm->rate > 0 && sm->bucket < 1.0);
            e->ok = !refused;
            e->busy = !refused;
            if (refused) {
                e->at = now + 1;
            } else {
                e->at = now + sm->rtt;
                sm->busy++;
                if (sm->rate > 0)
                    sm->bucket -= 1.0;
            }
        }
        if (n == 0) {
            now = wake > now ? wake : now + 1;
            continue;
        }
        int b = sim_next(ev, n);
        int64_t next = ev[b].at;
        if (wake > now && wake < next) {
            now = wake;
            continue;
        }
        now = next > now ? next : now;
        struct sim_event e = ev[b];
        ev[b] = ev[--n];
        if (e.busy)
            sm->busy--;
        sm->answers++;
        bool noisy = sm->noise > 0 && sm->answers % sm->noise == 0;
        struct outcome o =
            e.ok && !noisy ? ok() : failed_with(ERR_RATE_LIMITED, 429, NULL);
        if (!e.ok || noisy)
            o.hints.retry_at_ms = now + 1000;
        if (now >= T0 + from_s * 1000LL) {
            sm->all_in_window++;
            if (e.ok && !noisy)
                sm->ok_in_window++;
            else if (!e.ok)
                sm->refused_in_window++;
        }
        if (lane_on_done(l, &e.t, &o, now, 0.5) && getenv("LANE_TRACE"))
            fprintf(stderr, "%6lld in %d: %s rate %.1f\n",
                    (long long)(now - T0), e.t.in_flight, lane_last_change(l),
                    lane_rate(l));
    }
}

static void
test_16_slot_provider_sees_15_to_16_in_flight_and_few_429s(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 64, true, 0);
    struct sim sm = {.cap = 16, .rtt = 100};

    sim_run(l, &sm, 30, 5);
    /* capacity: 16 per 100 ms over 25 s = 4000 */
    double goodput = (double)sm.ok_in_window / 4000.0;
    double throttled = (double)sm.refused_in_window / (double)sm.all_in_window;
    print_message("16 slots: goodput %.3f, throttled %.4f, limit %d\n", goodput,
                  throttled, lane_limit(l));
    assert_true(goodput >= 0.95);
    assert_true(throttled <= 0.02);
    lane_free(l);
}

static void
test_random_429s_without_a_limit_do_not_collapse_the_lane(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 64, true, 0);
    struct sim sm = {.noise = 25, .rtt = 100}; /* 4 % */

    sim_run(l, &sm, 30, 5);
    /* 64 per 100 ms over 25 s = 16000 at the concurrency maximum */
    double goodput = (double)sm.ok_in_window / 16000.0;
    print_message("4 %% noise: goodput %.3f of max, limit %d\n", goodput,
                  lane_limit(l));
    assert_true(goodput >= 0.8);
    lane_free(l);
}

static void
test_silent_bucket_is_learned_from_delivery(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 64, true, 0);
    struct sim sm = {.rate = 40, .burst = 4, .rtt = 1000};

    sim_run(l, &sm, 40, 15);
    /* 40/s over 25 s = 1000 */
    double goodput = (double)sm.ok_in_window / 1000.0;
    double throttled = (double)sm.refused_in_window / (double)sm.all_in_window;
    print_message("silent 40/s bucket: goodput %.3f, throttled %.4f, rate "
                  "%.1f (%s)\n",
                  goodput, throttled, lane_rate(l), lane_rate_source(l));
    assert_string_equal(lane_rate_source(l), "learned");
    assert_true(goodput >= 0.9);
    assert_true(throttled <= 0.03);
    lane_free(l);
}

/* A lone daemon under a known rate is never refused by the provider's
 * bucket: its share stays whole and it paces at 1.0 × the rate. */
static void
test_lone_daemon_keeps_whole_known_rate(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 64, true, 200.0);
    struct sim sm = {.rate = 200, .burst = 20, .rtt = 50};

    sim_run(l, &sm, 30, 5);
    /* 200/s over 25 s = 5000 */
    double goodput = (double)sm.ok_in_window / 5000.0;
    print_message("lone daemon, 200/s bucket: goodput %.3f, refused %ld, "
                  "rate %.1f\n",
                  goodput, sm.refused_in_window, lane_rate(l));
    assert_true(goodput >= 0.98);
    assert_int_equal(sm.refused_in_window, 0);
    assert_true(lane_rate(l) > 199.99 && lane_rate(l) < 200.01);
    lane_free(l);
}

/* A 429 to a request the pacer sent under a known rate: the bucket is
 * shared. One alone may be our own burst arriving bunched, so a second
 * within 2 s cuts the pacer's rate ×0.8, once per change (stale 429s do
 * not cut again); it grows back by a twentieth of the rate per second,
 * faster after 2 s without a cut. A 429 with the concurrency limit full
 * is not the pacer's. */
static void
test_429s_under_known_rate_cut_pacer_share_once(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 64, true, 10.0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    struct outcome s = ok();
    int64_t b = T0 + 2000, wake;

    /* Within a second of knowing the rate: our own earlier sends may
     * explain it. */
    r.hints.retry_at_ms = T0 + 1000;
    send_n(l, 1, T0);
    done1(l, &r, T0 + 50, 0.5);
    assert_true(lane_rate(l) > 9.999 && lane_rate(l) < 10.001);

    r.hints.retry_at_ms = b + 1000;
    send_n(l, 1, b);
    done1(l, &r, b + 50, 0.5); /* the first: no cut yet */
    assert_true(lane_rate(l) > 9.999 && lane_rate(l) < 10.001);
    send_n(l, 1, b + 100);
    send_n(l, 1, b + 200);
    done1(l, &r, b + 250, 0.5); /* the second: a cut */
    assert_true(lane_rate(l) > 7.99 && lane_rate(l) < 8.01);
    assert_int_equal(lane_limit(l), 4); /* the pacer's, not the limit's */
    done1(l, &r, b + 260, 0.5);         /* sent before the cut: stale */
    assert_true(lane_rate(l) > 7.99 && lane_rate(l) < 8.01);
    /* +0.05 of the rate per second for 2 s ... */
    admit(l, b + 2250, &wake);
    assert_true(lane_rate(l) > 8.99 && lane_rate(l) < 9.01);
    /* ... then faster: 0.1 more in the next second, not 0.05. */
    admit(l, b + 3250, &wake);
    assert_true(lane_rate(l) > 9.74 && lane_rate(l) < 9.76);
    admit(l, b + 10000, &wake);
    assert_true(lane_rate(l) > 9.999 && lane_rate(l) < 10.001);
    /* Four in flight of a limit of four: the limit's business. */
    send_n(l, 4, b + 10000);
    r.hints.retry_at_ms = b + 11000;
    done_last(l, &r, b + 10050); /* the fourth */
    done_last(l, &r, b + 10060); /* the third, sent as the limit filled */
    assert_true(lane_rate(l) > 9.999 && lane_rate(l) < 10.001);
    done_n(l, 2, &s, b + 10070);
    lane_free(l);
}

/* Daemons that share one provider bucket, each with its own lane, the
 * n-th starting `stagger` ms after the one before. The provider's 429s
 * advertise the rate (X-RateLimit-Limit per minute), as in scenario (g)
 * of bench/flow. */
#define PAIR_MAX 4
struct pair_event {
    int64_t at;
    int who;
    struct lane_ticket t;
    bool ok;
};

static void
sim_shared(struct lane **lanes, int nl, int64_t stagger, double rate, int secs,
           int from_s, long *ok_in_window, long *refused, long *all)
{
    static struct pair_event ev[SIM_EVENTS];
    int n = 0;
    int64_t now = T0, end = T0 + secs * 1000LL, refill = T0;
    int64_t wake[PAIR_MAX];
    double bucket = rate / 10.0;

    for (int i = 0; i < nl; i++) {
        wake[i] = T0 + i * stagger; /* its start */
        ok_in_window[i] = 0;
    }
    *refused = *all = 0;
    while (now < end) {
        for (int i = 0; i < nl; i++) {
            if (now < T0 + i * stagger)
                continue;
            int k = lane_admit(lanes[i], now, &wake[i]);
            for (int j = 0; j < k && n < SIM_EVENTS; j++) {
                struct pair_event *e = &ev[n++];
                lane_on_send(lanes[i], now, 0, &e->t);
                bucket += (double)(now - refill) * rate / 1000.0;
                if (bucket > rate / 10.0)
                    bucket = rate / 10.0;
                refill = now;
                e->who = i;
                e->ok = bucket >= 1.0;
                e->at = now + (e->ok ? 50 : 1);
                if (e->ok)
                    bucket -= 1.0;
            }
        }
        /* The next moment anything happens: an answer, a lane's wake or
         * start. */
        int64_t next = end;
        int b = -1;
        for (int i = 0; i < n; i++)
            if (ev[i].at < next) {
                next = ev[i].at;
                b = i;
            }
        for (int i = 0; i < nl; i++) {
            int64_t w = now < T0 + i * stagger ? T0 + i * stagger : wake[i];
            if (w > now && w < next) {
                next = w;
                b = -1;
            }
        }
        now = next > now ? next : now + 1;
        if (b < 0)
            continue;
        struct pair_event e = ev[b];
        ev[b] = ev[--n];
        struct outcome o =
            e.ok ? ok() : failed_with(ERR_RATE_LIMITED, 429, NULL);
        if (!e.ok) {
            o.hints.retry_at_ms = now + 1000;
            o.hints.rl_limit = (long)(rate * 60.0);
        }
        if (now >= T0 + from_s * 1000LL) {
            (*all)++;
            if (e.ok)
                ok_in_window[e.who]++;
            else
                (*refused)++;
        }
        lane_on_done(lanes[e.who], &e.t, &o, now, 0.5);
    }
}

/* Independent daemons on one key: the first alone keeps the whole rate;
 * once others come, the bucket refuses whoever finds it empty, each cuts
 * its share and all grow back alike, so the shares converge to equal
 * and together use nearly the whole rate. */
static void
test_daemons_sharing_a_bucket_converge_to_equal_shares(void **state)
{
    (void)state;
    for (int nl = 2; nl <= PAIR_MAX; nl += 2) {
        struct lane *lanes[PAIR_MAX];
        long okw[PAIR_MAX], refused, all;
        double sum = 0, sq = 0;

        for (int i = 0; i < nl; i++)
            lanes[i] = lane_new("flora",
                                &(struct lane_params){4, 64, true, 0, 0, 60000},
                                T0 + i * 2000);
        sim_shared(lanes, nl, 2000, 200.0, 40, 20, okw, &refused, &all);
        for (int i = 0; i < nl; i++) {
            double g = (double)okw[i] / 20.0;
            sum += g;
            sq += g * g;
            print_message("%d daemons: daemon %d %.1f/s, rate %.1f (%s)\n", nl,
                          i, g, lane_rate(lanes[i]),
                          lane_rate_source(lanes[i]));
        }
        double jain = sum * sum / ((double)nl * sq);
        double share = sum / 200.0;
        double throttled = (double)refused / (double)all;
        print_message("%d daemons: total %.3f of the rate, Jain %.3f, "
                      "throttled %.4f\n",
                      nl, share, jain, throttled);
        assert_true(jain >= 0.95);
        assert_true(share >= 0.9);
        assert_true(throttled <= 0.05);
        for (int i = 0; i < nl; i++)
            lane_free(lanes[i]);
    }
}

static void
test_knee_grows_back_fast_then_holds_then_probes_one_above(void **state)
{
    (void)state;
    struct lane *l = lane_make(17, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    int64_t t = T0 + RTT;

    /* 17 in flight, the 17th refused: the knee is 17, the limit 11. */
    send_n(l, 17, T0);
    assert_true(done_last(l, &r, t));
    assert_int_equal(lane_limit(l), 11);
    /* The 16 others succeed and are refilled: back to 16 = knee - 1 within
     * one round trip, not above it. */
    for (int i = 0; i < 4; i++) {
        round_trip(l, t + (i + 1) * RTT);
        assert_true(lane_limit(l) <= 16);
    }
    assert_int_equal(lane_limit(l), 16);
    /* Held there for KNEE_HOLD_ROUNDS clean rounds, then one above. */
    int rounds = 0;
    while (lane_limit(l) == 16 && rounds < 50) {
        round_trip(l, t + (5 + rounds) * RTT);
        rounds++;
    }
    assert_int_equal(lane_limit(l), 17);
    assert_in_range(rounds, 4, 10);
    lane_free(l);
}

static void
test_no_growth_when_in_flight_below_half_limit(void **state)
{
    (void)state;
    struct lane *l = lane_make(10, 64, true, 0);
    struct outcome s = ok();

    send_n(l, 4, T0);
    done_n(l, 4, &s, T0 + RTT);
    assert_int_equal(lane_limit(l), 10);
    send_n(l, 5, T0 + RTT);
    done_n(l, 1, &s, T0 + 2 * RTT); /* 5 in flight = limit / 2: grows */
    assert_int_equal(lane_limit(l), 11);
    lane_free(l);
}

static void
test_4xx_request_errors_leave_limit_alone(void **state)
{
    (void)state;
    struct lane *l = lane_make(10, 64, true, 0);
    struct outcome errs[] = {
        failed_with(ERR_INVALID_REQUEST, 400, "input_validation_error"),
        failed_with(ERR_INVALID_REQUEST, 422, "invalid_image_format"),
        failed_with(ERR_NOT_FOUND, 404, "not_found_error"),
        failed_with(ERR_CONFLICT, 409, "conflict"),
        failed_with(ERR_IDEMPOTENCY_CONFLICT, 422, "idempotency_conflict"),
        failed_with(ERR_SAFETY_BLOCKED, 200, "safety_blocked"),
    };
    size_t n = sizeof(errs) / sizeof(*errs);

    send_n(l, (int)n, T0);
    for (size_t i = 0; i < n; i++)
        assert_false(done1(l, &errs[i], T0 + RTT, 0.5));
    assert_int_equal(lane_limit(l), 10);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    /* Still in slow start: a full round trip about doubles (the last
     * answer's growth comes after the round). */
    send_n(l, 10, T0 + RTT);
    round_trip(l, T0 + 2 * RTT);
    assert_in_range(lane_limit(l), 19, 20);
    lane_free(l);
}

static void
test_limit_never_below_one(void **state)
{
    (void)state;
    struct lane *l = lane_make(1, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);

    for (int i = 0; i < 5; i++) {
        send_n(l, 1, T0 + i * 1000);
        done1(l, &r, T0 + i * 1000 + RTT, 0.5);
    }
    assert_int_equal(lane_limit(l), 1);
    lane_free(l);
}

static void
test_limit_never_above_max(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 6, true, 0);

    send_n(l, 4, T0);
    round_trip(l, T0 + RTT);
    round_trip(l, T0 + 2 * RTT);
    assert_int_equal(lane_limit(l), 6);
    assert_int_equal(lane_in_flight(l), 6);
    lane_free(l);

    l = lane_make(100, 8, true, 0);
    assert_int_equal(lane_limit(l), 8);
    lane_free(l);
    l = lane_make(0, 8, true, 0);
    assert_int_equal(lane_limit(l), 1);
    lane_free(l);
}

static void
test_fixed_limit_when_not_adaptive(void **state)
{
    (void)state;
    struct lane *l = lane_make(7, 64, false, 0);
    struct outcome s = ok();
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    int64_t wake;

    send_n(l, 7, T0);
    done_n(l, 7, &s, T0 + RTT);
    assert_int_equal(lane_limit(l), 7);
    send_n(l, 7, T0 + RTT);
    done_n(l, 3, &r, T0 + 2 * RTT);
    assert_int_equal(lane_limit(l), 7);
    assert_int_equal(admit(l, T0 + 2 * RTT, &wake), 3);
    lane_free(l);
}

static void
test_configure_keeps_state_and_applies_new_max(void **state)
{
    (void)state;
    struct lane *l = lane_make(32, 64, true, 0);
    struct outcome a = failed_with(ERR_AUTH, 401, "invalid_api_key");
    struct lane_params p = params(4, 16, true, 0, 60000);

    send_n(l, 3, T0);
    done1(l, &a, T0 + RTT, 0.5);
    lane_configure(l, &p);
    assert_int_equal(lane_limit(l), 16);
    assert_int_equal(lane_in_flight(l), 2);
    assert_int_equal(lane_state(l), LANE_PAUSED);
    p.adaptive = false;
    lane_configure(l, &p);
    assert_int_equal(lane_limit(l), 4);
    lane_free(l);
}

/* --- pause-until and parking ------------------------------------------ */

/* A 429 saying its window is shut: remaining 0 and the reset at `at`. */
static struct outcome
shut_window(int64_t at)
{
    struct outcome r =
        failed_with(ERR_RATE_LIMITED, 429, "rate_limit_exceeded");

    r.hints.rl_remaining = 0;
    r.hints.rl_reset_ms = at;
    r.hints.retry_at_ms = at;
    return r;
}

static void
test_shut_window_pauses_whole_lane_until_reset_never_earlier(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    int64_t now = T0 + RTT, wake;
    struct outcome r = shut_window(now + 5000);

    send_n(l, 2, T0);
    assert_true(done1(l, &r, now, 0.0));
    assert_int_equal(lane_pause_until(l), now + 5000);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    /* The whole lane stops, though slots are free. */
    assert_int_equal(admit(l, now, &wake), 0);
    assert_int_equal(wake, now + 5000);
    assert_int_equal(admit(l, now + 4999, &wake), 0);
    assert_int_equal(wake, now + 5000);
    assert_true(admit(l, now + 5000, &wake) > 0);
    lane_free(l);
}

static void
test_run_of_429s_without_success_pauses_lane(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, false, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    struct outcome s = ok();
    int64_t now = T0 + RTT, wake;

    r.hints.retry_at_ms = now + 3000;
    send_n(l, 8, T0);
    /* Three in a row, then a success: no shut window. */
    done_n(l, 3, &r, now);
    done1(l, &s, now, 0.5);
    assert_int_equal(lane_pause_until(l), 0);
    /* max(4, limit / 2) = 4 in a row: the window is shut. */
    done_n(l, 3, &r, now);
    assert_int_equal(lane_pause_until(l), 0);
    assert_true(done1(l, &r, now, 0.0));
    assert_int_equal(lane_pause_until(l), now + 3000);
    assert_int_equal(admit(l, now, &wake), 0);
    assert_int_equal(wake, now + 3000);
    lane_free(l);
}

static void
test_firemoon_reset_at_pauses_lane(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r =
        failed_with(ERR_RATE_LIMITED, 429, "Rate limit exceeded");

    r.hints.retry_at_ms = T0 + 20000;
    r.hints.shut_until_ms = T0 + 20000;
    send_n(l, 1, T0);
    done1(l, &r, T0, 0.0);
    assert_int_equal(lane_pause_until(l), T0 + 20000);
    lane_free(l);
}

static void
test_shut_window_jitter_at_most_10_percent_and_1_s(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    int64_t now = T0;
    struct outcome r = shut_window(now + 5000);

    /* 5 s wait: jitter up to 500 ms. */
    send_n(l, 1, now);
    done1(l, &r, now, 0.999);
    assert_in_range(lane_pause_until(l), now + 5490, now + 5500);
    lane_free(l);

    /* 60 s wait: 10 % would be 6 s, capped at 1 s. */
    l = lane_make(8, 64, true, 0);
    r = shut_window(now + 60000);
    send_n(l, 1, now);
    done1(l, &r, now, 0.999);
    assert_in_range(lane_pause_until(l), now + 60990, now + 61000);
    lane_free(l);
}

static void
test_shut_window_beyond_120s_parks_lane_until_reset(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r = shut_window(T0 + 600000);
    int64_t wake;

    send_n(l, 1, T0);
    assert_true(done1(l, &r, T0, 0.0));
    assert_int_equal(lane_state(l), LANE_PARKED);
    assert_string_equal(lane_reason(l), "parked until 2023-11-14T22:23:20Z "
                                        "after rate_limit_exceeded");
    assert_string_equal(lane_describe(l), "flora parked until "
                                          "2023-11-14T22:23:20Z after "
                                          "rate_limit_exceeded");
    assert_string_equal(lane_last_change(l),
                        "active→parked, limit 8→5 after rate_limited");
    assert_int_equal(admit(l, T0 + 599999, &wake), 0);
    assert_int_equal(wake, T0 + 600000);
    assert_true(admit(l, T0 + 600000, &wake) > 0);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_string_equal(lane_reason(l), "");
    lane_free(l);
}

static void
test_shut_window_of_120s_pauses_without_parking(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r = shut_window(T0 + 120000);

    send_n(l, 1, T0);
    done1(l, &r, T0, 0.0);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(lane_pause_until(l), T0 + 120000);
    lane_free(l);
}

static void
test_absurd_reset_capped_at_24h_and_said_so(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome r = shut_window(T0 + INT64_C(3) * 86400000);
    struct outcome s = ok();

    send_n(l, 1, T0);
    done1(l, &r, T0, 0.5);
    assert_int_equal(lane_state(l), LANE_PARKED);
    assert_int_equal(lane_pause_until(l), T0 + 86400000);
    assert_string_equal(lane_reason(l), "parked until 2023-11-15T22:13:20Z "
                                        "after rate_limit_exceeded (hint "
                                        "capped at 24 h)");
    lane_free(l);

    /* A 2xx saying the quota is used up until far away parks too. */
    l = lane_make(8, 64, true, 0);
    s.hints.rl_remaining = 0;
    s.hints.rl_reset_ms = T0 + INT64_C(40) * 86400000;
    send_n(l, 1, T0);
    done1(l, &s, T0, 0.0);
    assert_int_equal(lane_state(l), LANE_PARKED);
    assert_int_equal(lane_pause_until(l), T0 + 86400000);
    /* The operator's resume forgets the cap at once. */
    lane_resume(l, T0 + 1);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(lane_pause_until(l), 0);
    lane_free(l);
}

static void
test_absurd_advertised_window_is_capped_at_a_day(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome s = ok();

    /* one request per 10^9 s: the rate is never below one a day */
    s.hints.rl_limit = 1;
    s.hints.rl_window_ms = INT64_C(1000000000000);
    send_n(l, 1, T0);
    done1(l, &s, T0 + RTT, 0.5);
    assert_true(lane_rate(l) >= 1.0 / 86400.0 * 0.999);
    lane_free(l);
}

/* --- rate pacer ------------------------------------------------------- */

static void
test_pacer_spaces_requests_at_1_0_of_rate(void **state)
{
    (void)state;
    struct lane *l = lane_make(1000, 1000, false, 10.0);
    int64_t now = T0, wake;
    long sent;

    assert_true(lane_rate(l) > 9.999 && lane_rate(l) < 10.001);
    assert_string_equal(lane_rate_source(l), "configured");
    assert_int_equal(admit(l, now, &wake), 1);
    send_n(l, 1, now);
    assert_int_equal(admit(l, now, &wake), 0);
    assert_int_equal(wake, now + 101);
    assert_int_equal(admit(l, now + 99, &wake), 0);
    assert_int_equal(admit(l, now + 101, &wake), 1);

    /* Ten seconds driven by wake_ms alone: 10 per second, never more
     * than the rate plus the burst in any one second. */
    sent = 1 + drive_by_wake(l, now + 101, T0 + 10000, 0);
    assert_in_range(sent, 98, 101);
    lane_free(l);
}

static void
test_pacer_burst_is_a_tenth_of_a_second(void **state)
{
    (void)state;
    struct lane *l = lane_make(1000, 1000, false, 100.0);
    int64_t wake;

    /* After a long idle spell the bucket holds 100 × 0.1 s, not more. */
    assert_int_equal(admit(l, T0 + 60000, &wake), 10);
    lane_free(l);
}

static void
test_advertised_rate_only_lowers_configured_rate(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 10.0);
    struct outcome s = ok();

    s.hints.rl_limit = 1200; /* per minute: 20/s, above the configured */
    send_n(l, 1, T0);
    done1(l, &s, T0 + RTT, 0.5);
    assert_true(lane_rate(l) > 9.999 && lane_rate(l) < 10.001);

    s.hints.rl_limit = 300; /* 5/s: lower, so it wins */
    send_n(l, 1, T0 + RTT);
    done1(l, &s, T0 + 2 * RTT, 0.5);
    assert_true(lane_rate(l) > 4.999 && lane_rate(l) < 5.001);
    assert_string_equal(lane_rate_source(l), "advertised");
    lane_free(l);

    /* Nothing configured: the advertised rate, window as stated. */
    l = lane_make(8, 64, true, 0);
    assert_true(lane_rate(l) == 0.0);
    assert_string_equal(lane_rate_source(l), "");
    s.hints.rl_limit = 50;
    s.hints.rl_window_ms = 10000;
    send_n(l, 1, T0);
    done1(l, &s, T0 + RTT, 0.5);
    assert_true(lane_rate(l) > 4.999 && lane_rate(l) < 5.001);
    lane_free(l);
}

static void
test_remaining_zero_waits_for_reset(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome s = ok();
    int64_t wake;

    s.hints.rl_remaining = 0;
    s.hints.rl_reset_ms = T0 + 30000;
    send_n(l, 1, T0);
    done1(l, &s, T0 + RTT, 0.5);
    assert_int_equal(admit(l, T0 + RTT, &wake), 0);
    assert_int_equal(wake, T0 + 30000);
    assert_true(admit(l, T0 + 30000, &wake) > 0);
    lane_free(l);
}

static void
test_window_never_sends_more_than_it_has_left(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome s = ok();
    int64_t wake;

    /* Answered with 5 left; two more were sent after it went out. */
    send_n(l, 3, T0);
    s.hints.rl_remaining = 5;
    s.hints.rl_reset_ms = T0 + 10000;
    done1(l, &s, T0 + RTT, 0.5);
    assert_int_equal(admit(l, T0 + RTT, &wake), 3);
    assert_int_equal(wake, T0 + 10000);
    send_n(l, 3, T0 + RTT);
    assert_int_equal(admit(l, T0 + RTT, &wake), 0);
    assert_int_equal(wake, T0 + 10000);
    /* The window resets: what is left is unknown again. */
    assert_true(admit(l, T0 + 10000, &wake) > 0);
    lane_free(l);
}

/* --- tokens per minute -------------------------------------------------- */

static struct lane *
token_lane(double per_min)
{
    struct lane_params p = params(4096, 4096, true, 0, 60000);
    p.tokens_per_min = per_min;
    qhead = qtail = 0;
    return lane_new("openai", &p, T0);
}

static void
test_token_gate_spends_the_budget_per_minute(void **state)
{
    (void)state;
    struct lane *l = token_lane(60000); /* 1000 tokens/s */

    /* Requests of 500 tokens each for 60 s, driven by wake alone. */
    long tokens = 500 * drive_by_wake(l, T0, T0 + 60000, 500);
    /* At most the minute's budget plus one request's overdraft. */
    assert_in_range(tokens, 58000, 60500);
    lane_free(l);
}

static void
test_token_estimate_is_corrected_by_usage(void **state)
{
    (void)state;
    struct lane *l = token_lane(60000);
    struct outcome s = ok();
    int64_t wake;

    assert_true(lane_token_limit(l) > 59999.0);
    admit(l, T0 + 6000, &wake); /* fills the bucket: 6000 */
    assert_int_equal(lane_tokens_available(l), 6000);
    lane_on_send(l, T0 + 6000, 4000, &q[qtail++]);
    assert_int_equal(lane_tokens_available(l), 2000);
    /* It used 1000 of the 4000 estimated: 3000 come back. */
    s.tokens_used = 1000;
    done1(l, &s, T0 + 6000, 0.5);
    assert_int_equal(lane_tokens_available(l), 5000);
    lane_free(l);
}

static void
test_token_headers_set_limit_and_what_is_left(void **state)
{
    (void)state;
    struct lane *l = token_lane(0);
    struct outcome s = ok();
    int64_t wake;

    assert_true(lane_token_limit(l) == 0.0);
    lane_on_send(l, T0, 300, &q[qtail++]);
    lane_on_send(l, T0, 200, &q[qtail++]); /* sent after the first */
    s.hints.tok_limit = 90000;
    s.hints.tok_remaining = 2000;
    done1(l, &s, T0 + RTT, 0.5);
    assert_true(lane_token_limit(l) > 89999.0);
    /* 2000 left when it answered, less the 200 sent after it */
    assert_int_equal(lane_tokens_available(l), 1800);
    s.hints.tok_remaining = 0;
    done1(l, &s, T0 + RTT, 0.5);
    assert_int_equal(admit(l, T0 + RTT, &wake), 0);
    assert_true(wake > T0 + RTT);
    lane_free(l);
}

static void
test_admit_is_a_wish_not_a_reservation(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, false, 0);
    int64_t wake;

    /* A gate beside the lane (shared permits) grants 3 of 8. */
    assert_int_equal(admit(l, T0, &wake), 8);
    send_n(l, 3, T0);
    assert_int_equal(admit(l, T0, &wake), 5);
    assert_int_equal(lane_in_flight(l), 3);
    lane_free(l);
}

/* --- provider pause --------------------------------------------------- */

static void
test_auth_failure_pauses_lane_at_once(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome a = failed_with(ERR_AUTH, 401, "invalid_api_key");
    int64_t wake;

    strcpy(a.request_id, "req_1");
    send_n(l, 3, T0);
    assert_true(done1(l, &a, T0 + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_PAUSED);
    assert_string_equal(lane_reason(l), "auth: invalid_api_key "
                                        "(request req_1)");
    assert_string_equal(lane_last_change(l), "active→paused after auth");
    assert_int_equal(admit(l, T0 + RTT, &wake), 0);
    assert_int_equal(wake, T0 + RTT + 60000);
    /* The other two in flight fail the same way: still one pause. */
    assert_false(done1(l, &a, T0 + RTT + 5, 0.5));
    lane_free(l);
}

static void
test_balance_pause_admits_single_probe_per_interval(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome b =
        failed_with(ERR_INSUFFICIENT_BALANCE, 402, "Insufficient balance");
    int64_t t = T0 + RTT, wake;

    strcpy(b.request_id, "req_9");
    send_n(l, 1, T0);
    done1(l, &b, t, 0.5);
    assert_string_equal(lane_describe(l),
                        "flora paused: insufficient_balance: Insufficient "
                        "balance (request req_9)");
    assert_int_equal(admit(l, t + 59999, &wake), 0);
    assert_int_equal(wake, t + 60000);
    assert_int_equal(admit(l, t + 60000, &wake), 1);
    send_n(l, 1, t + 60000);
    assert_int_equal(admit(l, t + 60000, &wake), 0);
    assert_int_equal(wake, 0); /* waiting for the probe's answer */
    assert_int_equal(admit(l, t + 200000, &wake), 0);
    /* The probe fails again: the next one an interval later. */
    assert_false(done1(l, &b, t + 60200, 0.5));
    assert_int_equal(lane_state(l), LANE_PAUSED);
    assert_int_equal(admit(l, t + 60200, &wake), 0);
    assert_int_equal(wake, t + 120200);
    assert_int_equal(admit(l, t + 120200, &wake), 1);
    lane_free(l);
}

static void
test_probe_success_resumes_lane(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome b = failed_with(ERR_INSUFFICIENT_BALANCE, 402, NULL);
    struct outcome s = ok();
    int64_t wake;

    send_n(l, 1, T0);
    done1(l, &b, T0, 0.5);
    assert_int_equal(admit(l, T0 + 60000, &wake), 1);
    send_n(l, 1, T0 + 60000);
    assert_true(done1(l, &s, T0 + 60000 + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_string_equal(lane_reason(l), "");
    assert_true(admit(l, T0 + 60000 + RTT, &wake) > 0);
    lane_free(l);
}

static void
test_402_stays_paused_for_a_success_sent_before_it(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome b = failed_with(ERR_INSUFFICIENT_BALANCE, 402, NULL);
    struct outcome s = ok();
    int64_t wake;

    /* Four in flight; the first says the balance is gone. */
    send_n(l, 4, T0);
    assert_true(done1(l, &b, T0 + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_PAUSED);
    /* The others were sent before the pause: their successes say
     * nothing about the balance now. */
    assert_false(done1(l, &s, T0 + RTT + 10, 0.5));
    assert_false(done1(l, &s, T0 + RTT + 20, 0.5));
    assert_int_equal(lane_state(l), LANE_PAUSED);
    assert_int_equal(admit(l, T0 + RTT + 20, &wake), 0);
    /* The probe goes out while the last straggler is still out. */
    assert_int_equal(admit(l, T0 + RTT + 60000, &wake), 1);
    send_n(l, 1, T0 + RTT + 60000);
    assert_false(done1(l, &s, T0 + RTT + 60010, 0.5)); /* the straggler */
    assert_int_equal(lane_state(l), LANE_PAUSED);
    /* The probe's own success resumes. */
    assert_true(done1(l, &s, T0 + RTT + 60000 + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_string_equal(lane_last_change(l), "paused→active after success");
    lane_free(l);
}

static void
test_stale_successes_do_not_close_the_breaker(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome e = failed_with(ERR_SERVER_ERROR, 500, NULL);
    struct outcome s = ok();
    int64_t t = T0 + RTT + 30000, wake;

    send_n(l, 25, T0);
    done_n(l, 20, &e, T0 + RTT); /* opens with 5 still out */
    assert_int_equal(admit(l, t, &wake), 3);
    assert_int_equal(lane_state(l), LANE_HALF_OPEN);
    assert_string_equal(lane_state_row(lane_state(l)), "open");
    assert_string_equal(lane_reason(l), "half-open: probing after 1 openings");
    send_n(l, 3, t);
    /* Five successes of requests sent before it opened: not probes. */
    assert_int_equal(done_n(l, 5, &s, t + RTT), 0);
    assert_int_equal(lane_state(l), LANE_HALF_OPEN);
    done_n(l, 2, &s, t + RTT);
    assert_string_equal(lane_reason(l), "half-open: 2 of 3 probes good");
    done_n(l, 1, &s, t + RTT);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    lane_free(l);
}

static void
test_lane_resume_activates_at_once(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome a = failed_with(ERR_AUTH, 401, "invalid_api_key");
    int64_t wake;

    send_n(l, 1, T0);
    done1(l, &a, T0, 0.5);
    assert_int_equal(admit(l, T0 + 1, &wake), 0);
    lane_resume(l, T0 + 1);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(admit(l, T0 + 1, &wake), 8);
    assert_string_equal(lane_describe(l), "flora limit 8 (0 in flight)");
    lane_free(l);
}

static void
test_403_for_one_model_does_not_pause(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome p = failed_with(ERR_PERMISSION, 403, "Access denied");

    strcpy(p.message, "Your API key does not have access to provider: kling");
    send_n(l, 2, T0);
    assert_false(done1(l, &p, T0, 0.5));
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    p = failed_with(ERR_PERMISSION, 403, "permission_error");
    assert_false(done1(l, &p, T0, 0.5));
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    lane_free(l);
}

static void
test_403_for_suspended_account_pauses(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome p = failed_with(ERR_PERMISSION, 403, "Access denied");

    strcpy(p.message, "Account Suspended");
    send_n(l, 1, T0);
    assert_true(done1(l, &p, T0, 0.5));
    assert_int_equal(lane_state(l), LANE_PAUSED);
    assert_string_equal(lane_reason(l), "permission: Access denied");
    lane_free(l);
}

/* --- circuit breaker -------------------------------------------------- */

static void
test_breaker_opens_at_half_of_20_calls(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome s = ok();
    struct outcome e = failed_with(ERR_SERVER_ERROR, 500, "server_error");
    int64_t wake;

    send_n(l, 20, T0);
    done_n(l, 10, &s, T0 + RTT);
    assert_int_equal(done_n(l, 9, &e, T0 + RTT), 0);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_true(done1(l, &e, T0 + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_OPEN);
    assert_string_equal(lane_reason(l), "breaker open: 10 of 20 failed");
    assert_string_equal(lane_describe(l),
                        "flora breaker open: 10 of 20 failed");
    assert_int_equal(lane_open_until(l), T0 + RTT + 30000);
    assert_int_equal(admit(l, T0 + RTT, &wake), 0);
    assert_int_equal(wake, T0 + RTT + 30000);
    lane_free(l);
}

static void
test_breaker_stays_closed_below_20_calls(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome n = failed_with(ERR_NETWORK, 0, NULL);

    send_n(l, 19, T0);
    assert_int_equal(done_n(l, 19, &n, T0 + RTT), 0);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    lane_free(l);
}

static void
test_breaker_window_is_last_50_calls(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome s = ok();
    struct outcome e = failed_with(ERR_SERVER_ERROR, 502, NULL);

    send_n(l, 51, T0);
    done_n(l, 26, &s, T0 + RTT);
    done_n(l, 24, &e, T0 + RTT);
    assert_int_equal(lane_state(l), LANE_ACTIVE); /* 24 of 50 */
    /* The oldest success leaves the ring: 25 of 50. */
    assert_true(done1(l, &e, T0 + RTT, 0.5));
    assert_string_equal(lane_reason(l), "breaker open: 25 of 50 failed");
    lane_free(l);
}

static void
test_rate_limits_and_4xx_are_not_hard_failures(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    struct outcome v = failed_with(ERR_INVALID_REQUEST, 400, NULL);

    send_n(l, 40, T0);
    done_n(l, 20, &r, T0 + RTT);
    done_n(l, 20, &v, T0 + RTT);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    lane_free(l);
}

/* Opens a fresh lane's breaker at `now` with 20 timeouts. */
static struct lane *
lane_opened(int64_t now)
{
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome t = failed_with(ERR_TIMEOUT, 504, "gateway_timeout");

    send_n(l, 20, now - RTT);
    done_n(l, 20, &t, now);
    assert_int_equal(lane_state(l), LANE_OPEN);
    return l;
}

static void
test_breaker_half_open_admits_3_probes_then_closes(void **state)
{
    (void)state;
    struct lane *l = lane_opened(T0);
    struct outcome s = ok();
    int64_t t = T0 + 30000, wake;

    assert_int_equal(admit(l, t - 1, &wake), 0);
    assert_int_equal(wake, t);
    assert_int_equal(admit(l, t, &wake), 3);
    send_n(l, 3, t);
    assert_int_equal(admit(l, t, &wake), 0);
    assert_int_equal(wake, 0);
    assert_false(done1(l, &s, t + RTT, 0.5));
    assert_false(done1(l, &s, t + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_HALF_OPEN);
    assert_true(done1(l, &s, t + RTT, 0.5));
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_string_equal(lane_last_change(l), "half-open→active after success");
    assert_int_equal(lane_open_until(l), 0);
    lane_free(l);
}

static void
test_breaker_closes_into_slow_start_from_limit_floor(void **state)
{
    (void)state;
    struct lane *l = lane_make(10, 64, true, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    struct outcome e = failed_with(ERR_SERVER_ERROR, 500, NULL);
    struct outcome s = ok();
    int64_t t, wake;

    send_n(l, 1, T0);
    done1(l, &r, T0, 0.5); /* slow start ends: limit 7 */
    send_n(l, 20, T0);
    done_n(l, 20, &e, T0 + RTT);
    assert_int_equal(lane_state(l), LANE_OPEN);
    t = T0 + RTT + 30000;
    assert_int_equal(admit(l, t, &wake), 3);
    send_n(l, 3, t);
    done_n(l, 3, &s, t + RTT);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(lane_limit(l), 7);
    /* Slow start again: a full round trip about doubles. */
    send_n(l, 7, t + RTT);
    round_trip(l, t + 2 * RTT);
    assert_in_range(lane_limit(l), 13, 14);
    lane_free(l);
}

static void
test_breaker_reopen_doubles_to_5_min_cap(void **state)
{
    (void)state;
    struct lane *l = lane_opened(T0);
    struct outcome e = failed_with(ERR_SERVER_ERROR, 500, NULL);
    const int64_t periods[] = {60000, 120000, 240000, 300000, 300000};
    int64_t t = lane_open_until(l), wake;

    assert_int_equal(t, T0 + 30000);
    for (size_t i = 0; i < sizeof(periods) / sizeof(*periods); i++) {
        assert_int_equal(admit(l, t, &wake), 3);
        send_n(l, 1, t);
        assert_true(done1(l, &e, t + RTT, 0.5));
        assert_string_equal(lane_last_change(l),
                            "half-open→open after server_error");
        assert_int_equal(lane_state(l), LANE_OPEN);
        assert_int_equal(lane_open_until(l), t + RTT + periods[i]);
        t = lane_open_until(l);
    }
    lane_free(l);
}

static void
test_breaker_period_jitter_within_10_percent(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome t = failed_with(ERR_TIMEOUT, 0, NULL);

    send_n(l, 20, T0);
    done_n(l, 19, &t, T0);
    done1(l, &t, T0, 0.0);
    assert_in_range(lane_open_until(l), T0 + 26999, T0 + 27000);
    lane_free(l);

    l = lane_make(64, 64, false, 0);
    send_n(l, 20, T0);
    done_n(l, 19, &t, T0);
    done1(l, &t, T0, 0.999);
    assert_in_range(lane_open_until(l), T0 + 32900, T0 + 33000);
    lane_free(l);
}

static void
test_requests_from_before_opening_are_not_probes(void **state)
{
    (void)state;
    struct lane *l = lane_make(64, 64, false, 0);
    struct outcome e = failed_with(ERR_SERVER_ERROR, 500, NULL);
    struct outcome s = ok();
    int64_t t = T0 + RTT + 30000, wake;

    send_n(l, 25, T0);
    done_n(l, 20, &e, T0 + RTT); /* opens with 5 still out */
    assert_int_equal(lane_state(l), LANE_OPEN);
    assert_int_equal(admit(l, t, &wake), 3);
    send_n(l, 3, t);
    /* The five stragglers fail late: they are not the probes. */
    assert_int_equal(done_n(l, 5, &e, t + RTT), 0);
    assert_int_equal(lane_state(l), LANE_HALF_OPEN);
    done_n(l, 3, &s, t + RTT);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    lane_free(l);
}

static void
test_probe_success_does_not_grow_limit(void **state)
{
    (void)state;
    struct lane *l = lane_make(2, 64, true, 0);
    struct outcome a = failed_with(ERR_AUTH, 401, "invalid_api_key");
    struct outcome s = ok();

    send_n(l, 1, T0);
    done1(l, &a, T0, 0.5);
    send_n(l, 1, T0 + 60000);
    done1(l, &s, T0 + 60000 + RTT, 0.5);
    assert_int_equal(lane_state(l), LANE_ACTIVE);
    assert_int_equal(lane_limit(l), 2); /* a probe proves the key only */
    lane_free(l);
}

/* --- in flight, wake times, reporting --------------------------------- */

static void
test_waiting_runs_count_as_in_flight(void **state)
{
    (void)state;
    struct lane *l = lane_make(4, 64, false, 0);
    int64_t wake;

    lane_on_waiting(l, +3);
    assert_int_equal(lane_in_flight(l), 3);
    assert_int_equal(admit(l, T0, &wake), 1);
    send_n(l, 1, T0);
    assert_int_equal(admit(l, T0, &wake), 0);
    assert_int_equal(wake, 0);
    lane_on_waiting(l, -1);
    assert_int_equal(admit(l, T0, &wake), 1);
    abort1(l);
    assert_int_equal(lane_in_flight(l), 2);
    lane_free(l);
}

static void
test_wake_ms_is_latest_closed_time_gate(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 1.0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    int64_t wake;

    /* Token spent: the next comes in a second (and a millisecond). */
    send_n(l, 1, T0);
    assert_int_equal(admit(l, T0, &wake), 0);
    assert_int_equal(wake, T0 + 1001);
    /* A later shut window: the wake is the later of the two. */
    r = shut_window(T0 + 5000);
    done1(l, &r, T0 + 10, 0.0);
    assert_int_equal(admit(l, T0 + 10, &wake), 0);
    assert_int_equal(wake, T0 + 5000);
    lane_free(l);
}

static void
test_wake_ms_zero_when_concurrency_is_full(void **state)
{
    (void)state;
    struct lane *l = lane_make(2, 64, false, 0);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    int64_t wake;

    send_n(l, 3, T0);
    r.hints.retry_at_ms = T0 + 5000;
    done1(l, &r, T0, 0.0);
    /* Full and paused: a finishing request is the next event anyway. */
    assert_int_equal(admit(l, T0, &wake), 0);
    assert_int_equal(wake, 0);
    lane_free(l);
}

static void
test_counters_count_each_outcome_once(void **state)
{
    (void)state;
    struct lane *l = lane_make(8, 64, true, 0);
    struct outcome s = ok();
    struct outcome acc = mk(OUTCOME_ACCEPTED, ERR_NONE, 202, NULL);
    struct outcome r = failed_with(ERR_RATE_LIMITED, 429, NULL);
    struct outcome u = failed_with(ERR_UNAVAILABLE, 503, NULL);
    struct outcome uh = failed_with(ERR_UNAVAILABLE, 503, NULL);
    struct outcome v = failed_with(ERR_INVALID_REQUEST, 400, NULL);

    uh.hints.retry_at_ms = T0 + 1000;
    send_n(l, 6, T0);
    done1(l, &s, T0, 0.5);
    done1(l, &acc, T0, 0.5);
    done1(l, &r, T0, 0.5);
    done1(l, &u, T0, 0.5);
    done1(l, &uh, T0, 0.5);
    done1(l, &v, T0, 0.5);
    assert_int_equal(lane_sent(l), 6);
    assert_int_equal(lane_succeeded(l), 2);
    assert_int_equal(lane_throttled(l), 2);
    assert_int_equal(lane_failed(l), 2);
    assert_int_equal(lane_in_flight(l), 0);
    lane_free(l);
}

static void
test_describe_active_lane(void **state)
{
    (void)state;
    struct lane *l = lane_make(24, 64, true, 0);

    send_n(l, 12, T0);
    assert_string_equal(lane_describe(l), "flora limit 24 (12 in flight)");
    assert_string_equal(lane_name(l), "flora");
    assert_string_equal(lane_state_name(lane_state(l)), "active");
    assert_string_equal(lane_state_name(LANE_PARKED), "parked");
    lane_free(l);
    lane_free(NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slow_start_doubles_per_round_trip),
        cmocka_unit_test(test_429_cuts_once_and_stale_429s_do_not_cut_again),
        cmocka_unit_test(test_hinted_429_defers_one_job_without_pausing_lane),
        cmocka_unit_test(
            test_16_slot_provider_sees_15_to_16_in_flight_and_few_429s),
        cmocka_unit_test(
            test_random_429s_without_a_limit_do_not_collapse_the_lane),
        cmocka_unit_test(test_silent_bucket_is_learned_from_delivery),
        cmocka_unit_test(
            test_knee_grows_back_fast_then_holds_then_probes_one_above),
        cmocka_unit_test(test_503_408_and_timeouts_are_losses),
        cmocka_unit_test(test_no_growth_when_in_flight_below_half_limit),
        cmocka_unit_test(test_4xx_request_errors_leave_limit_alone),
        cmocka_unit_test(test_limit_never_below_one),
        cmocka_unit_test(test_limit_never_above_max),
        cmocka_unit_test(test_fixed_limit_when_not_adaptive),
        cmocka_unit_test(test_configure_keeps_state_and_applies_new_max),
        cmocka_unit_test(
            test_shut_window_pauses_whole_lane_until_reset_never_earlier),
        cmocka_unit_test(test_run_of_429s_without_success_pauses_lane),
        cmocka_unit_test(test_firemoon_reset_at_pauses_lane),
        cmocka_unit_test(test_shut_window_jitter_at_most_10_percent_and_1_s),
        cmocka_unit_test(test_shut_window_beyond_120s_parks_lane_until_reset),
        cmocka_unit_test(test_shut_window_of_120s_pauses_without_parking),
        cmocka_unit_test(test_absurd_reset_capped_at_24h_and_said_so),
        cmocka_unit_test(test_absurd_advertised_window_is_capped_at_a_day),
        cmocka_unit_test(test_pacer_spaces_requests_at_1_0_of_rate),
        cmocka_unit_test(test_pacer_burst_is_a_tenth_of_a_second),
        cmocka_unit_test(test_lone_daemon_keeps_whole_known_rate),
        cmocka_unit_test(test_429s_under_known_rate_cut_pacer_share_once),
        cmocka_unit_test(
            test_daemons_sharing_a_bucket_converge_to_equal_shares),
        cmocka_unit_test(test_advertised_rate_only_lowers_configured_rate),
        cmocka_unit_test(test_remaining_zero_waits_for_reset),
        cmocka_unit_test(test_window_never_sends_more_than_it_has_left),
        cmocka_unit_test(test_token_gate_spends_the_budget_per_minute),
        cmocka_unit_test(test_token_estimate_is_corrected_by_usage),
        cmocka_unit_test(test_token_headers_set_limit_and_what_is_left),
        cmocka_unit_test(test_admit_is_a_wish_not_a_reservation),
        cmocka_unit_test(test_auth_failure_pauses_lane_at_once),
        cmocka_unit_test(test_balance_pause_admits_single_probe_per_interval),
        cmocka_unit_test(test_probe_success_resumes_lane),
        cmocka_unit_test(test_402_stays_paused_for_a_success_sent_before_it),
        cmocka_unit_test(test_stale_successes_do_not_close_the_breaker),
        cmocka_unit_test(test_lane_resume_activates_at_once),
        cmocka_unit_test(test_403_for_one_model_does_not_pause),
        cmocka_unit_test(test_403_for_suspended_account_pauses),
        cmocka_unit_test(test_breaker_opens_at_half_of_20_calls),
        cmocka_unit_test(test_breaker_stays_closed_below_20_calls),
        cmocka_unit_test(test_breaker_window_is_last_50_calls),
        cmocka_unit_test(test_rate_limits_and_4xx_are_not_hard_failures),
        cmocka_unit_test(test_breaker_half_open_admits_3_probes_then_closes),
        cmocka_unit_test(test_breaker_closes_into_slow_start_from_limit_floor),
        cmocka_unit_test(test_breaker_reopen_doubles_to_5_min_cap),
        cmocka_unit_test(test_breaker_period_jitter_within_10_percent),
        cmocka_unit_test(test_requests_from_before_opening_are_not_probes),
        cmocka_unit_test(test_probe_success_does_not_grow_limit),
        cmocka_unit_test(test_waiting_runs_count_as_in_flight),
        cmocka_unit_test(test_wake_ms_is_latest_closed_time_gate),
        cmocka_unit_test(test_wake_ms_zero_when_concurrency_is_full),
        cmocka_unit_test(test_counters_count_each_outcome_once),
        cmocka_unit_test(test_describe_active_lane),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
