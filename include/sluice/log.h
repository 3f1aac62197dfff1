/*
 * log: one line per event on stderr, subject first, lowercase, no period.
 * With $JOURNAL_STREAM set, lines carry sd-daemon "<N>" level prefixes so
 * journald keeps the priority. Never pass a key or a request body here.
 */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

enum log_level {
    LOG_LEVEL_ERR = 3,   /* sd-daemon <3> */
    LOG_LEVEL_WARN = 4,  /* <4> */
    LOG_LEVEL_INFO = 6,  /* <6> */
    LOG_LEVEL_DEBUG = 7, /* <7> */
};

/* Sets the threshold and detects journald ($JOURNAL_STREAM). */
void log_init(enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "error", "warn", "info", "debug"; returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

/* _warn appends ": strerror(errno)"; _warnx does not. */
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Logs at error level and exits 1. */
void fatal(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

#endif
