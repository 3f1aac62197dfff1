/*
 * notify: each call must put exactly the documented datagram on
 * $NOTIFY_SOCKET. The test plays the service manager: it binds a datagram
 * socket (a file in a temp dir, or an abstract name), points
 * $NOTIFY_SOCKET at it and reads back what arrived. Local AF_UNIX datagrams
 * are queued by the time sendto returns, so reads never wait.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "sluice/notify.h"

struct manager {
    char dir[64];   /* temp dir holding the socket file, or "" */
    char name[108]; /* what $NOTIFY_SOCKET says */
    int fd;
};

static void
manager_bind(struct manager *m, int abstract)
{
    struct sockaddr_un sa;
    socklen_t salen;
    static unsigned serial;

    memset(m, 0, sizeof(*m));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (abstract) {
        snprintf(m->name, sizeof(m->name), "@sluice-test-notify-%ld-%u",
                 (long)getpid(), serial++);
        memcpy(sa.sun_path, m->name, strlen(m->name));
        sa.sun_path[0] = '\0';
        salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                            strlen(m->name));
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(m->dir, sizeof(m->dir), "%s/notify-XXXXXX",
                 tmp && strlen(tmp) < 40 ? tmp : "/tmp");
        assert_non_null(mkdtemp(m->dir));
        snprintf(m->name, sizeof(m->name), "%s/notify", m->dir);
        strcpy(sa.sun_path, m->name);
        salen = (socklen_t)sizeof(sa);
    }
    m->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(m->fd >= 0);
    assert_int_equal(bind(m->fd, (struct sockaddr *)&sa, salen), 0);
    assert_int_equal(setenv("NOTIFY_SOCKET", m->name, 1), 0);
}

static void
manager_close(struct manager *m)
{
    close(m->fd);
    if (m->dir[0] != '\0') {
        unlink(m->name);
        rmdir(m->dir);
    }
    unsetenv("NOTIFY_SOCKET");
}

/* The next datagram as a string, or NULL when none is queued. */
static char *
manager_recv(struct manager *m, char *buf, size_t size)
{
    ssize_t n = recv(m->fd, buf, size - 1, MSG_DONTWAIT);
    if (n < 0) {
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

static int
setup_file(void **state)
{
    struct manager *m = malloc(sizeof(*m));
    manager_bind(m, 0);
    *state = m;
    return 0;
}

static int
setup_abstract(void **state)
{
    struct manager *m = malloc(sizeof(*m));
    manager_bind(m, 1);
    *state = m;
    return 0;
}

static int
teardown(void **state)
{
    manager_close(*state);
    free(*state);
    return 0;
}

static void
test_ready_sends_ready_and_status_in_one_datagram(void **state)
{
    char buf[512];
    notify_ready("0 in flight, 12 queued");
    assert_string_equal(manager_recv(*state, buf, sizeof(buf)),
                        "READY=1\nSTATUS=0 in flight, 12 queued");
    assert_null(manager_recv(*state, buf, sizeof(buf)));
}

static void
test_ready_without_status_sends_ready_only(void **state)
{
    char buf[512];
    notify_ready(NULL);
    assert_string_equal(manager_recv(*state, buf, sizeof(buf)), "READY=1");
}

static void
test_status_is_one_line(void **state)
{
    char buf[512];
    notify_status("flora limit 24\nfiremoon paused:\r\tinsufficient_balance");
    assert_string_equal(manager_recv(*state, buf, sizeof(buf)),
                        "STATUS=flora limit 24 firemoon paused:  "
                        "insufficient_balance");
}

static void
test_status_null_sends_nothing(void **state)
{
    char buf[512];
    notify_status(NULL);
    assert_null(manager_recv(*state, buf, sizeof(buf)));
}

static void
test_long_status_arrives_whole(void **state)
{
    char status[3000], expect[3100], buf[4096];
    memset(status, 'q', sizeof(status) - 1);
    status[sizeof(status) - 1] = '\0';
    snprintf(expect, sizeof(expect), "STATUS=%s", status);
    notify_status(status);
    assert_string_equal(manager_recv(*state, buf, sizeof(buf)), expect);
}

static void
test_stopping_sends_stopping(void **state)
{
    char buf[512];
    notify_stopping();
    assert_string_equal(manager_recv(*state, buf, sizeof(buf)), "STOPPING=1");
}

static void
test_watchdog_sends_watchdog(void **state)
{
    char buf[512];
    notify_watchdog();
    assert_string_equal(manager_recv(*state, buf, sizeof(buf)), "WATCHDOG=1");
}

static uint64_t
monotonic_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void
test_reloading_carries_monotonic_usec_in_same_datagram(void **state)
{
    static const char prefix[] = "RELOADING=1\nMONOTONIC_USEC=";
    char buf[512], *end;
    uint64_t before, after, sent;

    before = monotonic_usec();
    notify_reloading();
    after = monotonic_usec();
    assert_non_null(manager_recv(*state, buf, sizeof(buf)));
    assert_memory_equal(buf, prefix, sizeof(prefix) - 1);
    errno = 0;
    sent = strtoull(buf + sizeof(prefix) - 1, &end, 10);
    assert_int_equal(errno, 0);
    assert_int_equal(*end, '\0');
    assert_true(end > buf + sizeof(prefix) - 1);
    assert_true(sent >= before);
    assert_true(sent <= after);
    assert_null(manager_recv(*state, buf, sizeof(buf)));
}

static void
test_abstract_socket_name_receives(void **state)
{
    char buf[512];
    struct manager *m = *state;
    assert_int_equal(m->name[0], '@');
    notify_ready("up");
    assert_string_equal(manager_recv(m, buf, sizeof(buf)),
                        "READY=1\nSTATUS=up");
    notify_stopping();
    assert_string_equal(manager_recv(m, buf, sizeof(buf)), "STOPPING=1");
}

static void
test_without_notify_socket_nothing_is_sent(void **state)
{
    char buf[512];
    unsetenv("NOTIFY_SOCKET");
    notify_ready("up");
    notify_status("busy");
    notify_reloading();
    notify_watchdog();
    notify_stopping();
    assert_null(manager_recv(*state, buf, sizeof(buf)));
}

static void
test_empty_notify_socket_sends_nothing(void **state)
{
    char buf[512];
    assert_int_equal(setenv("NOTIFY_SOCKET", "", 1), 0);
    notify_ready("up");
    notify_watchdog();
    assert_null(manager_recv(*state, buf, sizeof(buf)));
}

static void
test_unreachable_socket_is_ignored(void **state)
{
    struct manager *m = *state;
    char buf[512], missing[160];

    snprintf(missing, sizeof(missing), "%s/gone", m->dir);
    assert_int_equal(setenv("NOTIFY_SOCKET", missing, 1), 0);
    notify_ready("up");
    notify_watchdog();
    assert_int_equal(setenv("NOTIFY_SOCKET", "relative/path", 1), 0);
    notify_watchdog();
    /* Back on the real socket, the next message is the first to arrive. */
    assert_int_equal(setenv("NOTIFY_SOCKET", m->name, 1), 0);
    notify_stopping();
    assert_string_equal(manager_recv(m, buf, sizeof(buf)), "STOPPING=1");
    assert_null(manager_recv(m, buf, sizeof(buf)));
}

static int
setup_watchdog(void **state)
{
    (void)state;
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    return 0;
}

static void
set_pid(long pid)
{
    char s[32];
    snprintf(s, sizeof(s), "%ld", pid);
    assert_int_equal(setenv("WATCHDOG_PID", s, 1), 0);
}

static void
test_watchdog_interval_is_half_of_watchdog_usec(void **state)
{
    (void)state;
    assert_int_equal(setenv("WATCHDOG_USEC", "30000000", 1), 0);
    assert_int_equal(notify_watchdog_interval_ms(), 15000);
}

static void
test_watchdog_interval_zero_when_unset(void **state)
{
    (void)state;
    assert_int_equal(notify_watchdog_interval_ms(), 0);
}

static void
test_watchdog_interval_zero_when_invalid(void **state)
{
    (void)state;
    static const char *bad[] = {
        "", "30s", "-1", "12abc", " 1000", "0", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(setenv("WATCHDOG_USEC", bad[i], 1), 0);
        assert_int_equal(notify_watchdog_interval_ms(), 0);
    }
}

static void
test_watchdog_interval_for_our_pid(void **state)
{
    (void)state;
    assert_int_equal(setenv("WATCHDOG_USEC", "20000000", 1), 0);
    set_pid((long)getpid());
    assert_int_equal(notify_watchdog_interval_ms(), 10000);
}

static void
test_watchdog_interval_zero_for_another_pid(void **state)
{
    (void)state;
    assert_int_equal(setenv("WATCHDOG_USEC", "20000000", 1), 0);
    set_pid((long)getpid() + 1);
    assert_int_equal(notify_watchdog_interval_ms(), 0);
    assert_int_equal(setenv("WATCHDOG_PID", "not-a-pid", 1), 0);
    assert_int_equal(notify_watchdog_interval_ms(), 0);
}

static void
test_watchdog_interval_tiny_timeout_is_not_off(void **state)
{
    (void)state;
    assert_int_equal(setenv("WATCHDOG_USEC", "1000", 1), 0);
    assert_int_equal(notify_watchdog_interval_ms(), 1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_ready_sends_ready_and_status_in_one_datagram, setup_file,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_ready_without_status_sends_ready_only, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_status_is_one_line, setup_file,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_status_null_sends_nothing,
                                        setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_long_status_arrives_whole,
                                        setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_stopping_sends_stopping,
                                        setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_watchdog_sends_watchdog,
                                        setup_file, teardown),
        cmocka_unit_test_setup_teardown(
            test_reloading_carries_monotonic_usec_in_same_datagram, setup_file,
            teardown),
        cmocka_unit_test_setup_teardown(test_abstract_socket_name_receives,
                                        setup_abstract, teardown),
        cmocka_unit_test_setup_teardown(
            test_without_notify_socket_nothing_is_sent, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_empty_notify_socket_sends_nothing,
                                        setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_unreachable_socket_is_ignored,
                                        setup_file, teardown),
        cmocka_unit_test_setup(test_watchdog_interval_is_half_of_watchdog_usec,
                               setup_watchdog),
        cmocka_unit_test_setup(test_watchdog_interval_zero_when_unset,
                               setup_watchdog),
        cmocka_unit_test_setup(test_watchdog_interval_zero_when_invalid,
                               setup_watchdog),
        cmocka_unit_test_setup(test_watchdog_interval_for_our_pid,
                               setup_watchdog),
        cmocka_unit_test_setup(test_watchdog_interval_zero_for_another_pid,
                               setup_watchdog),
        cmocka_unit_test_setup(test_watchdog_interval_tiny_timeout_is_not_off,
                               setup_watchdog),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
