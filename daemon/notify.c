/*
 * notify: the systemd service protocol. Each call formats one message and
 * sends it as one datagram to $NOTIFY_SOCKET: through libsystemd's
 * sd_notify when the build found it (HAVE_LIBSYSTEMD), otherwise by hand
 * over the documented protocol (an AF_UNIX SOCK_DGRAM socket; a name that
 * starts with '@' is in the abstract namespace). Without $NOTIFY_SOCKET
 * every call does nothing, so the daemon runs the same outside systemd.
 *
 * A socket is opened per message rather than kept: messages are rare (a
 * watchdog ping every few seconds at most) and a kept socket would outlive
 * a changed $NOTIFY_SOCKET. Failures are logged at debug and ignored: the
 * service manager, not the daemon, decides what a missed message means.
 *
 * The watchdog interval is read by hand in both builds, so the rule "half
 * of $WATCHDOG_USEC, none when $WATCHDOG_PID names another process" is the
 * same code whichever way messages are sent.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#else
#include <sys/socket.h>
#include <sys/un.h>
#endif

#include "sluice/log.h"
#include "sluice/notify.h"
#include "sluice/xmalloc.h"

#ifndef HAVE_LIBSYSTEMD
static int
notify_send_raw(const char *path, const char *msg)
{
    struct sockaddr_un sa;
    size_t plen = strlen(path);
    socklen_t salen;
    ssize_t n;
    int fd, rc = 0;

    /* Only absolute paths and abstract names: a relative path would depend
     * on our working directory, which systemd never means. */
    if (path[0] != '/' && path[0] != '@')
        return -EINVAL;
    if (plen < 2 || plen > sizeof(sa.sun_path))
        return -EINVAL;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, plen);
    /* An abstract name is the bytes after a leading NUL, exactly plen long:
     * the address length, not a terminator, delimits it. */
    if (path[0] == '@')
        sa.sun_path[0] = '\0';
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);

    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* MSG_NOSIGNAL: a vanished manager must not SIGPIPE the daemon. */
    n = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               salen);
    if (n < 0)
        rc = -errno;
    else if ((size_t)n != strlen(msg))
        rc = -EMSGSIZE;
    close(fd);
    return rc;
}
#endif

static void
notify_send(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    int rc;

    if (path == NULL || path[0] == '\0')
        return;
#ifdef HAVE_LIBSYSTEMD
    /* sd_notify returns > 0 when sent, 0 when there is nowhere to send. */
    rc = sd_notify(0, msg);
    if (rc > 0)
        rc = 0;
#else
    rc = notify_send_raw(path, msg);
#endif
    if (rc < 0)
        log_debug("notify: sending to %s failed: %s", path, strerror(-rc));
}

/* A copy of status fit for one STATUS= line: the protocol is one
 * assignment per line, so a newline would end the status early and start
 * a bogus assignment; other control characters become spaces as well. */
static char *
notify_one_line(const char *status)
{
    char *s = xstrdup(status);
    for (char *p = s; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    }
    return s;
}

void
notify_ready(const char *status)
{
    if (status == NULL) {
        notify_send("READY=1");
        return;
    }
    char *line = notify_one_line(status);
    char *msg = xasprintf("READY=1\nSTATUS=%s", line);
    notify_send(msg);
    free(msg);
    free(line);
}

void
notify_status(const char *status)
{
    if (status == NULL)
        return;
    char *line = notify_one_line(status);
    char *msg = xasprintf("STATUS=%s", line);
    notify_send(msg);
    free(msg);
    free(line);
}

void
notify_stopping(void)
{
    notify_send("STOPPING=1");
}

void
notify_reloading(void)
{
    struct timespec ts;
    uint64_t usec;
    char msg[64];

    /* Type=notify-reload (systemd 253) wants MONOTONIC_USEC in the same
     * message as RELOADING=1 to tell this reload from an older one. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    usec = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, usec);
    notify_send(msg);
}

void
notify_watchdog(void)
{
    notify_send("WATCHDOG=1");
}

/* A whole unsigned decimal, nothing else; returns 0 or -EINVAL. */
static int
notify_parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    if (s == NULL || *s == '\0')
        return -EINVAL;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
            return -EINVAL;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

int64_t
notify_watchdog_interval_ms(void)
{
    const char *pid_s = getenv("WATCHDOG_PID");
    uint64_t usec, pid;

    if (notify_parse_u64(getenv("WATCHDOG_USEC"), &usec) < 0 || usec == 0)
        return 0;
    /* A forked child inherits the variables; only the named process may
     * ping, or the manager would be fed by the wrong one. */
    if (pid_s != NULL) {
        if (notify_parse_u64(pid_s, &pid) < 0 || pid != (uint64_t)getpid())
            return 0;
    }
    /* Half the timeout, as sd_watchdog_enabled(3) advises, so one late
     * ping never trips it; at least 1 ms since 0 means off. Any uint64_t
     * divided by 2000 fits int64_t. */
    if (usec / 2000 == 0)
        return 1;
    return (int64_t)(usec / 2000);
}
