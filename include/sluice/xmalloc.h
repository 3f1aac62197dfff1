/*
 * xmalloc: allocation that never returns NULL. Out of memory is fatal for a
 * daemon that must not half-record an outcome, so callers never check.
 */
#ifndef SLUICE_XMALLOC_H
#define SLUICE_XMALLOC_H

#include <stdarg.h>
#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
/* Returns a new copy of s; NULL in, NULL out. */
char *xstrdup(const char *s);
/* Returns a new NUL-terminated copy of the first n bytes of s. */
char *xstrndup(const char *s, size_t n);
/* Returns a new string formatted like printf. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * A growable byte buffer, always NUL-terminated after its len bytes (so a
 * text body can be used as a C string). Zero-initialised is empty and valid.
 */
struct buf {
    char *data; /* owned; NULL while empty */
    size_t len; /* bytes used, not counting the terminating NUL */
    size_t cap; /* bytes allocated */
};

void buf_append(struct buf *b, const void *p, size_t n);
void buf_appendf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void buf_reset(struct buf *b);
/* Frees the storage; b is empty and reusable afterwards. */
void buf_free(struct buf *b);
/* Hands the storage to the caller (free() it); b becomes empty. */
char *buf_steal(struct buf *b);

#endif
