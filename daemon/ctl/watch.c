/*
 * ctl/watch.c: sluicectl watch, the live progress view: per batch a bar
 * (on a TTY, redrawn in place) or a plain line (a pipe, a log), then each
 * provider's state and limit and the downloads pending, stored and failed,
 * every second until interrupted.
 */
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "sluice/clock.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

/* --- watch ---------------------------------------------------------------- */

/* Refresh period, and the bar's width in cells: 30 leaves room on an
 * 80-column terminal for the name and the counts. */
#define CTL_WATCH_MS 1000
#define CTL_BAR_WIDTH 30

static volatile sig_atomic_t ctl_stop;

static void
on_signal_stop(int sig)
{
    (void)sig;
    ctl_stop = 1;
}

/* "1h02m", "4m10s", "12s", "-" */
static void
ctl_eta(const json_t *v, char out[32])
{
    json_int_t s = json_integer_value(v);
    if (!json_is_integer(v) || s < 0)
        snprintf(out, 32, "-");
    else if (s >= 3600)
        snprintf(out, 32,
                 "%" JSON_INTEGER_FORMAT "h%02" JSON_INTEGER_FORMAT "m",
                 s / 3600, s / 60 % 60);
    else if (s >= 60)
        snprintf(out, 32,
                 "%" JSON_INTEGER_FORMAT "m%02" JSON_INTEGER_FORMAT "s", s / 60,
                 s % 60);
    else
        snprintf(out, 32, "%" JSON_INTEGER_FORMAT "s", s);
}

static json_int_t
ctl_int(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* One batch row: bar (on a TTY) or a plain line. */
static void
ctl_watch_batch(FILE *f, const json_t *b, bool tty, const char *stamp,
                const json_t *spend)
{
    const char *bv = json_string_value(json_object_get(b, "batch"));
    char *safe = bv ? ctl_safe(xstrdup(bv)) : NULL;
    const char *batch = safe;
    const char *prov = json_string_value(json_object_get(b, "provider"));
    json_int_t total = ctl_int(b, "total"), done = ctl_int(b, "done");
    double rate = json_number_value(json_object_get(b, "rate_per_s"));
    int pct = total > 0 ? (int)(done * 100 / total) : 0;
    char eta[32];

    ctl_eta(json_object_get(b, "eta_s"), eta);
    if (tty) {
        int fill = total > 0 ? (int)(done * CTL_BAR_WIDTH / total) : 0;
        fprintf(f, "%s/%s\n  [", batch ? batch : "(none)", prov ? prov : "?");
        for (int i = 0; i < CTL_BAR_WIDTH; i++)
            fputc(i < fill ? '#' : '.', f);
        fprintf(f, "] %3d%%  %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                pct, done, total);
    } else {
        fprintf(f,
                "%s batch %s/%s %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT
                " %d%%",
                stamp, batch ? batch : "(none)", prov ? prov : "?", done, total,
                pct);
    }
    fprintf(f,
            "  ok %" JSON_INTEGER_FORMAT " failed %" JSON_INTEGER_FORMAT
            " cancelled %" JSON_INTEGER_FORMAT " running %" JSON_INTEGER_FORMAT
            "  %.1f/s  eta %s",
            ctl_int(b, "succeeded"), ctl_int(b, "failed"),
            ctl_int(b, "cancelled"),
            ctl_int(b, "running") + ctl_int(b, "waiting"), rate, eta);
    ctl_spend_note(f, spend, "batches", "batch", bv);
    fputc('\n', f);
    free(safe);
}

static void
ctl_watch_lane(FILE *f, const json_t *l, bool tty, const char *stamp,
               const json_t *spend)
{
    const char *reason = json_string_value(json_object_get(l, "reason"));
    char until[32];

    ctl_iso_time(ctl_int(l, "pause_until"), until);
    if (tty)
        fputs("  ", f);
    else
        fprintf(f, "%s provider ", stamp);
    fprintf(f,
            "%s %s%s%s limit %" JSON_INTEGER_FORMAT
            " in flight %" JSON_INTEGER_FORMAT,
            json_string_value(json_object_get(l, "name")),
            json_string_value(json_object_get(l, "state")), reason ? ": " : "",
            reason ? reason : "", ctl_int(l, "concurrency_limit"),
            ctl_int(l, "in_flight"));
    if (strcmp(until, "-") != 0)
        fprintf(f, " paused until %s", until);
    double rate = json_number_value(json_object_get(l, "rate_per_s"));
    const char *source = json_string_value(json_object_get(l, "rate_source"));
    if (rate > 0)
        fprintf(f, " rate %.1f/s %s", rate, source ? source : "");
    if (ctl_int(l, "token_limit") > 0)
        fprintf(f, " tokens %" JSON_INTEGER_FORMAT "/min, %" JSON_INTEGER_FORMAT
                   " left",
                ctl_int(l, "token_limit"), ctl_int(l, "tokens_available"));
    ctl_spend_note(f, spend, "providers", "provider",
                   json_string_value(json_object_get(l, "name")));
    fputc('\n', f);
}

/* One refresh; returns 0 or 1 on a database error. */
static int
ctl_watch_draw(struct ctl *c, const char *batch, bool tty)
{
    json_t *rows = store_progress_json(c->store, batch);
    json_t *lanes = store_providers_json(c->store);
    json_t *spend = ctl_spend(c, batch);
    char stamp[32];
    size_t i;
    json_t *v;

    if (!rows || !lanes || !spend) {
        json_decref(rows);
        json_decref(lanes);
        json_decref(spend);
        fprintf(stderr, "sluicectl watch: cannot read the database\n");
        return 1;
    }
    ctl_iso_time(clock_now_ms(), stamp);
    if (tty)
        /* home, clear: the frame is redrawn in place */
        printf("\033[H\033[2J%s  sluicectl watch (Ctrl-C to stop)\n\n", stamp);
    if (json_array_size(rows) == 0)
        printf("%s%s\n", tty ? "" : stamp,
               batch ? " no jobs in this batch" : " no jobs");
    json_array_foreach(rows, i, v)
    {
        ctl_watch_batch(stdout, v, tty, stamp, spend);
    }
    if (tty && json_array_size(lanes) > 0)
        printf("\nproviders\n");
    json_array_foreach(lanes, i, v)
    {
        ctl_watch_lane(stdout, v, tty, stamp, spend);
    }
    long pending, stored, failed;
    if (store_outputs_counts(c->store, &pending, &stored, &failed) == 0 &&
        pending + stored + failed > 0)
        printf("%s%soutputs %ld pending, %ld stored, %ld failed\n",
               tty ? "\n" : stamp, tty ? "" : " ", pending, stored, failed);
    fflush(stdout);
    json_decref(rows);
    json_decref(lanes);
    json_decref(spend);
    return 0;
}

int
ctl_watch(struct ctl *c, int argc, char **argv)
{
    const char *batch = NULL;
    bool once = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--batch", &batch, NULL},
        {"--once", NULL, &once},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_parse_args("watch", argc, argv, opts, &npos)) != 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("watch", "takes no operand");
    if ((rc = ctl_open_readonly(c, "watch")) != 0)
        return rc;
    bool tty = !once && isatty(STDOUT_FILENO) == 1;

    struct sigaction sa = {0};
    sa.sa_handler = on_signal_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    while (!ctl_stop) {
        if ((rc = ctl_watch_draw(c, batch, tty)) != 0 || once)
            return rc;
        struct timespec ts = {CTL_WATCH_MS / 1000,
                              (CTL_WATCH_MS % 1000) * 1000000L};
        /* a signal cuts the sleep short: the loop sees ctl_stop */
        nanosleep(&ts, NULL);
    }
    return 0;
}
