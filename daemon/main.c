/*
 * sluiced: options, config, signals, sd_notify, uv_run, exit code —
 * nothing else. The work is in dispatch/.
 *
 * Start-up order matters to systemd: the config is parsed completely, the
 * database opened and migrated, this daemon registered (liveness.h), the
 * jobs of dead daemons reclaimed, and only then is READY=1 sent (waiting
 * runs resume by themselves: they are claimable when their poll falls
 * due). At exit the daemon leaves the daemons table after its last
 * outcome is written.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "sluice/clock.h"
#include "sluice/config.h"
#include "sluice/dispatch.h"
#include "sluice/liveness.h"
#include "sluice/log.h"
#include "sluice/metrics.h"
#include "sluice/notify.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

/* sysexits.h values, named here to avoid the BSD header's macros. */
#define EXIT_USAGE 64
#define EXIT_CONFIG 78
/* --drain checks run this often; STATUS= and the /metrics snapshot every
 * STATUS_TICKS ticks. */
#define TICK_MS 250
#define STATUS_TICKS 4

struct daemon {
    uv_loop_t *loop;
    const char *config_path;
    struct config *config;
    struct store *store;
    struct liveness *live;
    struct dispatch *dispatch;
    struct metrics *metrics; /* /metrics, or NULL when not configured */
    bool drain;
    bool stopping;
    int verbose;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t tick, watchdog;
    int64_t watchdog_ms;
    bool notify;            /* systemd listens ($NOTIFY_SOCKET) */
    unsigned ticks;
    int exit_code;
};

static void
usage(FILE *f)
{
    fprintf(f, "usage: sluiced [-c CONFIG] [--drain] [--check] [-v]\n"
               "  -c, --config PATH  config file (default $SLUICE_CONFIG, "
               "else " CONFIG_DEFAULT_PATH ")\n"
               "      --drain        exit 0 once no job can make progress\n"
               "      --check        validate config and database, exit "
               "0 or 78\n"
               "  -v, --verbose      debug logging\n"
               "  -h, --help         this text\n");
}

static void
on_uv_close_noop(uv_handle_t *h)
{
    (void)h;
}

static void
on_stopped(void *data)
{
    struct daemon *dm = data;
    uv_close((uv_handle_t *)&dm->sigterm, on_uv_close_noop);
    uv_close((uv_handle_t *)&dm->sigint, on_uv_close_noop);
    uv_close((uv_handle_t *)&dm->sighup, on_uv_close_noop);
    uv_close((uv_handle_t *)&dm->tick, on_uv_close_noop);
    uv_close((uv_handle_t *)&dm->watchdog, on_uv_close_noop);
    log_info("stopped");
}

static void
begin_stop(struct daemon *dm, const char *why)
{
    if (dm->stopping)
        return;
    dm->stopping = true;
    log_info("stopping: %s", why);
    notify_stopping();
    dispatch_stop(dm->dispatch, dm->config->shutdown_grace_ms, on_stopped,
                  dm);
}

static void
on_uv_signal(uv_signal_t *s, int signum)
{
    struct daemon *dm = s->data;
    if (signum == SIGHUP) {
        char err[512];
        struct config *nc = NULL;
        notify_reloading();
        log_info("reload: reading %s", dm->config_path);
        if (config_load(dm->config_path, &nc, err, sizeof(err)) < 0) {
            log_error("reload refused, old config kept: %s", err);
        } else if (dispatch_reload(dm->dispatch, nc) < 0) {
            log_error("reload refused, old config kept");
            config_free(nc);
        } else {
            const char *was = dm->config->metrics, *now = nc->metrics;
            if ((was || now) && (!was || !now || strcmp(was, now) != 0))
                log_warnx("reload: metrics address change needs a restart");
            if (nc->log_level && !dm->verbose)
                log_set_level((enum log_level)nc->log_level);
            config_free(dm->config);
            dm->config = nc;
            log_info("reload: done");
        }
        notify_ready(dispatch_status(dm->dispatch));
        return;
    }
    begin_stop(dm, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void
on_uv_tick(uv_timer_t *t)
{
    struct daemon *dm = t->data;
    if (dm->stopping)
        return;
    if (++dm->ticks % STATUS_TICKS == 0) {
        if (dm->notify)
            notify_status(dispatch_status(dm->dispatch));
        metrics_refresh(dm->metrics, dm->dispatch, dm->store, clock_now_ms());
    }
    if (dm->drain && dispatch_drained(dm->dispatch))
        begin_stop(dm, "drained");
}

static void
on_uv_watchdog(uv_timer_t *t)
{
    (void)t;
    /* Sent from the loop itself: a stuck loop stops the pings and
     * systemd restarts the service. */
    notify_watchdog();
}

/* --check: everything that would stop the daemon from starting, printed,
 * without starting it or creating anything. */
static int
check(const char *path)
{
    char err[512];
    struct config *c = NULL;
    int problems = 0;

    if (config_load(path, &c, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return EXIT_CONFIG;
    }
    printf("config %s: ok, %zu providers\n", path, c->nproviders);
    for (size_t i = 0; i < c->nproviders; i++) {
        char *key = config_api_key(&c->providers[i], err, sizeof(err));
        if (key == NULL) {
            fprintf(stderr, "provider %s: %s\n", c->providers[i].name, err);
            problems++;
            continue;
        }
        explicit_bzero(key, strlen(key));
        free(key);
        printf("provider %s: %s, %s\n", c->providers[i].name,
               c->providers[i].dialect, c->providers[i].base_url);
    }
    struct stat st;
    char *dbname = store_display_name(c->database);
    if (!store_is_file(c->database) || stat(c->database, &st) == 0) {
        /* Read-only: checking a new build against the live database must
         * not migrate it under the daemon that runs on it. */
        struct store *s = NULL;
        if (store_open_readonly(c->database, &s) < 0) {
            fprintf(stderr, "database %s: cannot open\n", dbname);
            problems++;
        } else {
            int v = store_schema_version(s), latest = store_schema_latest(s);
            printf("database %s: schema %d of %d", dbname, v, latest);
            if (v < latest)
                printf(", %d migration%s pending (applied when sluiced "
                       "starts)",
                       latest - v, latest - v == 1 ? "" : "s");
            printf("\n");
            store_close(s);
        }
    } else {
        char *dir = xstrdup(c->database);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        if (access(slash ? dir : ".", W_OK) != 0) {
            fprintf(stderr, "database %s: missing and its directory is not "
                            "writable\n", c->database);
            problems++;
        } else {
            printf("database %s: will be created\n", c->database);
        }
        free(dir);
    }
    free(dbname);
    config_free(c);
    return problems ? EXIT_CONFIG : 0;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"drain", no_argument, NULL, 'd'},
        {"check", no_argument, NULL, 'k'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct daemon dm = {0};
    const char *flag = NULL;
    bool do_check = false;
    int rc;
    char err[512];
    int ch;

    while ((ch = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': flag = optarg; break;
        case 'd': dm.drain = true; break;
        case 'k': do_check = true; break;
        case 'v': dm.verbose++; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sluiced: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return EXIT_USAGE;
    }
    dm.config_path = config_default_path(flag);
    if (do_check)
        return check(dm.config_path);

    log_init(LOG_LEVEL_INFO);
    if (config_load(dm.config_path, &dm.config, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return EXIT_CONFIG;
    }
    if (dm.verbose)
        log_set_level(LOG_LEVEL_DEBUG);
    else if (dm.config->log_level)
        log_set_level((enum log_level)dm.config->log_level);

    /* A provider that closes a connection must not kill us. */
    signal(SIGPIPE, SIG_IGN);

    if ((rc = store_open(dm.config->database, &dm.store)) < 0) {
        config_free(dm.config);
        return rc == -EINVAL ? EXIT_CONFIG : 1; /* a malformed string */
    }
    if (liveness_join(dm.store, dm.config->database,
                      dm.config->heartbeat_timeout_ms, clock_now_ms(),
                      &dm.live) < 0) {
        store_close(dm.store);
        config_free(dm.config);
        return 1;
    }
    long reclaimed = dispatch_recover(dm.store, dm.live, dm.config);
    if (reclaimed > 0)
        log_info("store: %ld jobs returned to the queue at start",
                 reclaimed);

    dm.loop = xmalloc(sizeof(*dm.loop));
    if ((rc = uv_loop_init(dm.loop)) < 0) {
        log_error("loop: %s", uv_strerror(rc));
        free(dm.loop);
        liveness_leave(dm.live, clock_now_ms());
        store_close(dm.store);
        config_free(dm.config);
        return 1;
    }
    dm.dispatch = dispatch_new(dm.loop, dm.store, dm.live, dm.config);
    if (dm.dispatch == NULL) {
        liveness_leave(dm.live, clock_now_ms());
        store_close(dm.store);
        config_free(dm.config);
        return EXIT_CONFIG;
    }

    if (dm.config->metrics &&
        metrics_start(dm.config->metrics, &dm.metrics) < 0) {
        /* nothing claimed yet: the start ends here, cleanly */
        dispatch_free(dm.dispatch);
        uv_run(dm.loop, UV_RUN_DEFAULT);
        uv_loop_close(dm.loop);
        free(dm.loop);
        liveness_leave(dm.live, clock_now_ms());
        store_close(dm.store);
        config_free(dm.config);
        return 1;
    }
    dispatch_set_metrics(dm.dispatch, dm.metrics);
    metrics_refresh(dm.metrics, dm.dispatch, dm.store, clock_now_ms());

    uv_signal_t *sigs[] = {&dm.sigterm, &dm.sigint, &dm.sighup};
    int signums[] = {SIGTERM, SIGINT, SIGHUP};
    /* Without its handlers sluiced could not stop gracefully; nothing has
     * been claimed yet, so ending the start here loses nothing (and the
     * lock file goes with the process). */
    for (int i = 0; i < 3; i++) {
        if ((rc = uv_signal_init(dm.loop, sigs[i])) < 0 ||
            (rc = uv_signal_start(sigs[i], on_uv_signal, signums[i])) < 0)
            fatalx("signal %s: %s", strsignal(signums[i]), uv_strerror(rc));
        sigs[i]->data = &dm;
    }
    dm.notify = getenv("NOTIFY_SOCKET") != NULL;
    uv_timer_init(dm.loop, &dm.tick);
    dm.tick.data = &dm;
    uv_timer_start(&dm.tick, on_uv_tick, TICK_MS, TICK_MS);
    uv_timer_init(dm.loop, &dm.watchdog);
    dm.watchdog_ms = notify_watchdog_interval_ms();
    if (dm.watchdog_ms > 0)
        uv_timer_start(&dm.watchdog, on_uv_watchdog, 0,
                       (uint64_t)dm.watchdog_ms);

    dispatch_start(dm.dispatch);
    char *dbname = store_display_name(dm.config->database);
    log_info("started: %zu providers, database %s%s",
             dm.config->nproviders, dbname,
             dm.drain ? ", draining" : "");
    free(dbname);
    notify_ready(dispatch_status(dm.dispatch));

    uv_run(dm.loop, UV_RUN_DEFAULT);

    metrics_stop(dm.metrics);
    dispatch_free(dm.dispatch);
    uv_run(dm.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(dm.loop) != 0)
        log_warnx("loop: handles left open at exit");
    free(dm.loop);
    /* After the last outcome is written: what is left leased goes back. */
    store_flush(dm.store);
    liveness_leave(dm.live, clock_now_ms());
    store_close(dm.store);
    config_free(dm.config);
    return dm.exit_code;
}
