/*
 * outputs: downloads of the output files of succeeded jobs, on the
 * daemon's loop, through http.c, under their own concurrency
 * (docs/design.md §13). Rows come from the store (table outputs); files go
 * to outputs_dir/ab/abcdef… named by the SHA-256 of their bytes.
 */
#ifndef SLUICE_OUTPUTS_H
#define SLUICE_OUTPUTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct outputs;
struct store;
struct http;

/* Fetches of one output before it is given up (failed): transient
 * failures only; a 404 or an oversized file fails at once. */
#define OUTPUTS_MAX_ATTEMPTS 6

struct outputs_params {
    const char *dir;      /* outputs_dir; created when missing */
    int concurrency;      /* downloads at once */
    size_t max_size;      /* one file's cap in bytes */
    int64_t lease_ms;     /* claim lease; a download times out before it */
    const char *owner;    /* lease owner: the daemon's token (liveness.h) */
};

/* The headers to send with url, a download of provider's output: the
 * provider's credentials when url is on its origin, else NULL (none).
 * Borrowed until the next call; the caller copies them. */
typedef const char *const *(*outputs_auth_fn)(const char *provider,
                                              const char *url, void *arg);

/* Returns a new scheduler (idle until outputs_start). Strings of p are
 * copied. s and h are borrowed and must outlive it. */
struct outputs *outputs_new(uv_loop_t *loop, struct store *s, struct http *h,
                            const struct outputs_params *p,
                            outputs_auth_fn auth, void *auth_arg);
/* Creates the directories and starts claiming pending rows (those of an
 * earlier life included). Returns 0 or a negative errno (the directory
 * cannot be made), logged. */
int outputs_start(struct outputs *o);
/* New pending rows may exist (a flush recorded some, another process
 * committed): claim on the next loop turn. */
void outputs_kick(struct outputs *o);
/* A reload: concurrency, size cap and lease apply to new downloads; the
 * directory stays (a new one needs a restart, which is logged). */
void outputs_configure(struct outputs *o, const struct outputs_params *p);
/* Downloads in flight (transfers and file work). */
int outputs_active(const struct outputs *o);
/* Whether nothing is in flight and no row is pending. */
bool outputs_idle(struct outputs *o);
/* Stops claiming and cancels the transfers (each row goes back to pending,
 * the fetch not counted); on_stopped(arg) runs once the file work in
 * flight has finished, possibly before this returns. */
void outputs_stop(struct outputs *o, void (*on_stopped)(void *), void *arg);
/* Frees it once stopped (memory goes in the timer's close callback: run
 * the loop once more). NULL accepted. */
void outputs_free(struct outputs *o);

/* --- pure policy (unit-tested) ----------------------------------------- */

/* "dir/ab/abcdef…" for the hex digest sha (64 characters): a new string. */
char *outputs_path(const char *dir, const char *sha);
/* When a download that failed for the attempts-th time may be tried
 * again: full-jitter backoff from 1 s doubling to 5 min (u in [0, 1)),
 * never sooner than 250 ms. Returns the delay in ms. */
int64_t outputs_retry_delay_ms(int attempts, double u);
/* Whether a failed fetch may succeed later: no answer (network, timeout,
 * a 2xx body cut short), 408, 425, 429 and 5xx. Anything else (404, 403 of an expired URL, a body
 * over the cap) will not. */
bool outputs_retryable(int status, bool transport_failure, bool too_large);
/* The absolute URL a redirect's Location names, relative to url: a new
 * string, or NULL when it is neither absolute http(s) nor a path. */
char *outputs_redirect_url(const char *url, const char *location);
/* Reads a 206's Content-Range "bytes START-END/TOTAL": *start, and *total
 * (-1 for "*"). False when it is not that shape or not consistent. */
bool outputs_content_range(const char *v, int64_t *start, int64_t *total);
/* The validator an If-Range may carry, from an answer's ETag and
 * Last-Modified: a strong ETag, else Last-Modified, else NULL (a weak
 * ETag cannot vouch for bytes). Borrowed from the arguments. */
const char *outputs_if_range(const char *etag, const char *last_modified);

#endif
