/*
 * fake_provider's main: options, the libmicrohttpd daemon on 127.0.0.1,
 * the port file, and a clean exit on SIGTERM/SIGINT.
 *
 * Thread per connection, because a request's latency and scripted delays
 * sleep in its thread (server.c); hundreds of concurrent slow requests are
 * then just hundreds of small-stacked sleeping threads. The signals are
 * blocked before the daemon starts so every thread inherits the mask and
 * only the main thread, in sigwait, ever sees them.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "fake.h"

/* Each connection thread sleeps or formats small JSON: 256 KiB of stack
 * is plenty and keeps a thousand threads cheap. */
#define MAIN_THREAD_STACK ((size_t)256 << 10)
/* Connections at once; benchmarks open a few hundred. */
#define MAIN_CONNECTION_LIMIT 4096u
/* Idle keep-alive connections are closed after this many seconds. */
#define MAIN_CONNECTION_TIMEOUT 300u

static void
usage(void)
{
    fprintf(stderr, "usage: fake_provider [--port N] [--port-file F] "
                    "[--latency-ms N] [--jitter-ms N]\n"
                    "         [--rate R] [--burst B] [--max-concurrent N] "
                    "[--retry-after S]\n"
                    "         [--error-rate P] [--error-mix 500,503,429] "
                    "[--seed N] [--log-limit N] [--quiet]\n");
    exit(64);
}

static double
num(const char *opt, const char *s, double min, double max)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "fake_provider: %s: bad value \"%s\"\n", opt, s);
        exit(64);
    }
    return v;
}

static void
parse_mix(struct fake_config *cfg, const char *s)
{
    char *copy = strdup(s), *save = NULL, *tok;

    if (copy == NULL)
        abort();
    cfg->nmix = 0;
    for (tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (cfg->nmix == FAKE_MIX_MAX) {
            fprintf(stderr, "fake_provider: --error-mix: at most %d\n",
                    FAKE_MIX_MAX);
            exit(64);
        }
        cfg->error_mix[cfg->nmix++] = (int)num("--error-mix", tok, 100, 599);
    }
    free(copy);
    if (cfg->nmix == 0)
        usage();
}

static void
write_port_file(const char *path, unsigned port)
{
    size_t len = strlen(path) + 8;
    char *tmp = malloc(len);
    FILE *fp;

    if (tmp == NULL)
        abort();
    snprintf(tmp, len, "%s.tmp", path);
    fp = fopen(tmp, "w");
    if (fp == NULL || fprintf(fp, "%u\n", port) < 0 || fclose(fp) != 0 ||
        rename(tmp, path) != 0) {
        fprintf(stderr, "fake_provider: %s: %s\n", path, strerror(errno));
        exit(1);
    }
    free(tmp);
}

int
main(int argc, char **argv)
{
    static struct fake f;
    struct sockaddr_in sa = {0};
    struct MHD_Daemon *d;
    const union MHD_DaemonInfo *info;
    const char *port_file = NULL;
    double rate = 0;
    long port = 0;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    sigset_t sigs;
    int sig;

    server_init(&f, 0);
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--quiet") == 0) {
            f.cfg.quiet = true;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (strcmp(o, "--port") == 0)
            port = (long)num(o, v, 0, 65535);
        else if (strcmp(o, "--port-file") == 0)
            port_file = v;
        else if (strcmp(o, "--latency-ms") == 0)
            f.cfg.latency_ms = (long)num(o, v, 0, 3600000);
        else if (strcmp(o, "--jitter-ms") == 0)
            f.cfg.jitter_ms = (long)num(o, v, 0, 3600000);
        else if (strcmp(o, "--rate") == 0)
            rate = num(o, v, 0, 1e9);
        else if (strcmp(o, "--burst") == 0) {
            f.cfg.burst = num(o, v, 1, 1e9);
            f.cfg.burst_set = true;
        } else if (strcmp(o, "--max-concurrent") == 0)
            f.cfg.max_concurrent = (long)num(o, v, 0, 1e9);
        else if (strcmp(o, "--retry-after") == 0)
            f.cfg.retry_after = (long)num(o, v, 0, 86400);
        else if (strcmp(o, "--error-rate") == 0)
            f.cfg.error_rate = num(o, v, 0, 1);
        else if (strcmp(o, "--error-mix") == 0)
            parse_mix(&f.cfg, v);
        else if (strcmp(o, "--seed") == 0)
            seed = (uint64_t)num(o, v, 0, 1.8e19);
        else if (strcmp(o, "--log-limit") == 0)
            f.cfg.log_limit = (long)num(o, v, 0, 1e9);
        else if (strcmp(o, "--window-limit") == 0)
            f.cfg.window_limit = (long)num(o, v, 0, 1e9);
        else if (strcmp(o, "--window-ms") == 0)
            f.cfg.window_ms = (long)num(o, v, 1, 86400000);
        else if (strcmp(o, "--token-limit") == 0)
            f.cfg.token_limit = num(o, v, 0, 1e12);
        else if (strcmp(o, "--rate-headers") == 0) {
            if (strcmp(v, "full") == 0)
                f.cfg.rate_headers = FAKE_RATE_HEADERS_FULL;
            else if (strcmp(v, "limit") == 0)
                f.cfg.rate_headers = FAKE_RATE_HEADERS_LIMIT;
            else if (strcmp(v, "none") == 0)
                f.cfg.rate_headers = FAKE_RATE_HEADERS_NONE;
            else
                usage();
        }
        else
            usage();
    }
    f.rng = seed ? seed : 1;
    server_set_rate(&f, rate);
    if (f.cfg.window_limit > 0 && f.cfg.window_ms == 0)
        f.cfg.window_ms = 60000; /* per minute unless told */
    f.tok_bucket = f.cfg.token_limit; /* a fresh account: a full minute */

    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
            MHD_USE_POLL | (f.cfg.quiet ? 0 : MHD_USE_ERROR_LOG),
        (uint16_t)port, NULL, NULL, server_handle, &f, MHD_OPTION_SOCK_ADDR,
        &sa, MHD_OPTION_NOTIFY_COMPLETED, server_completed, &f,
        MHD_OPTION_CONNECTION_LIMIT, MAIN_CONNECTION_LIMIT,
        MHD_OPTION_CONNECTION_TIMEOUT, MAIN_CONNECTION_TIMEOUT,
        MHD_OPTION_THREAD_STACK_SIZE, MAIN_THREAD_STACK,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "fake_provider: cannot listen on 127.0.0.1:%ld\n",
                port);
        return 1;
    }
    info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    pthread_mutex_lock(&f.mu);
    f.port = info->port;
    pthread_mutex_unlock(&f.mu);
    if (port_file)
        write_port_file(port_file, f.port);
    printf("fake_provider listening on 127.0.0.1:%u\n", f.port);
    fflush(stdout);

    while (sigwait(&sigs, &sig) != 0)
        ;
    if (!f.cfg.quiet)
        fprintf(stderr, "fake_provider: signal %d, stopping\n", sig);
    server_stop(&f);
    MHD_stop_daemon(d);
    server_free(&f);
    return 0;
}
