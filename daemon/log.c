/*
 * log: a tiny format-checked log API in the manner of OpenBSD's daemons.
 * Lines go to stderr; when stderr is journald's stream ($JOURNAL_STREAM)
 * each line starts with the sd-daemon "<N>" priority instead of a
 * timestamp, since journald stamps lines itself. Control bytes in a
 * message are escaped (text.h), so every call is exactly one line.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sluice/log.h"
#include "sluice/text.h"

static enum log_level threshold = LOG_LEVEL_INFO;
static int journal = 0;

void
log_init(enum log_level level)
{
    threshold = level;
    journal = getenv("JOURNAL_STREAM") != NULL;
}

void
log_set_level(enum log_level level)
{
    threshold = level;
}

enum log_level
log_get_level(void)
{
    return threshold;
}

int
log_level_parse(const char *s, enum log_level *out)
{
    static const struct {
        const char *name;
        enum log_level level;
    } names[] = {
        {"error", LOG_LEVEL_ERR}, {"warn", LOG_LEVEL_WARN},
        {"warning", LOG_LEVEL_WARN}, {"info", LOG_LEVEL_INFO},
        {"debug", LOG_LEVEL_DEBUG},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return -EINVAL;
}

static void vlog_line(enum log_level level, const char *errstr,
                      const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static void
vlog_line(enum log_level level, const char *errstr, const char *fmt,
          va_list ap)
{
    static const char *tag[8] = {"", "", "", "error: ", "warn: ", "",
                                 "", "debug: "};
    char line[2048];
    int n;

    n = vsnprintf(line, sizeof(line), fmt, ap);
    if (n < 0)
        return;
    /* Messages carry provider text: one line per event, whatever it holds
     * (a "\n<3>…" would forge a line, and a priority under journald). */
    char safe[sizeof(line)];
    if (text_needs_escape(line)) {
        text_escape(safe, sizeof(safe), line);
        memcpy(line, safe, sizeof(line));
    }
    if (journal) {
        if (errstr)
            fprintf(stderr, "<%d>%s: %s\n", (int)level, line, errstr);
        else
            fprintf(stderr, "<%d>%s\n", (int)level, line);
        return;
    }
    struct timespec ts;
    struct tm tm;
    char when[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    if (errstr)
        fprintf(stderr, "%s.%03ldZ %s%s: %s\n", when, ts.tv_nsec / 1000000,
                tag[level], line, errstr);
    else
        fprintf(stderr, "%s.%03ldZ %s%s\n", when, ts.tv_nsec / 1000000,
                tag[level], line);
}

static void vlog(enum log_level level, bool with_errno, const char *fmt,
                 va_list ap) __attribute__((format(printf, 3, 0)));

/* One line at level, with ": strerror(errno)" when with_errno. errno is
 * left as the caller had it: a log call between a failing call and the
 * check of its errno must not change the answer. */
static void
vlog(enum log_level level, bool with_errno, const char *fmt, va_list ap)
{
    int saved = errno;

    if (level <= threshold)
        vlog_line(level, with_errno ? strerror(saved) : NULL, fmt, ap);
    errno = saved;
}

void
log_warn(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_WARN, true, fmt, ap);
    va_end(ap);
}

void
log_warnx(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_WARN, false, fmt, ap);
    va_end(ap);
}

void
log_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_ERR, false, fmt, ap);
    va_end(ap);
}

void
log_info(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_INFO, false, fmt, ap);
    va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_DEBUG, false, fmt, ap);
    va_end(ap);
}

void
fatal(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_ERR, true, fmt, ap);
    va_end(ap);
    exit(1);
}

void
fatalx(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_ERR, false, fmt, ap);
    va_end(ap);
    exit(1);
}
