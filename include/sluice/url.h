/*
 * url: where a job's request goes, decided in one place. Enqueue turns the
 * url of a job line into the path stored in the row (url_job_path); the
 * daemon turns that path, or a run's poll URL, into the URL it sends to,
 * refusing any other origin than the provider's current one
 * (url_resolve). Pure functions, no I/O.
 */
#ifndef SLUICE_URL_H
#define SLUICE_URL_H

#include <stdbool.h>
#include <stddef.h>

/* Length of "scheme://host[:port]" at the start of an http or https URL
 * (scheme in any case), or 0 when url is not one. */
size_t url_origin_len(const char *url);

/* Whether two http(s) URLs share scheme, host and port (compared without
 * case). False when either is not an http(s) URL. */
bool url_same_origin(const char *a, const char *b);

/* The path to store for a job line's url under base_url (docs/design.md §4,
 * docs/providers.md): "/…" relative to base_url, or the whole URL (scheme
 * in lower case) when it is on base_url's origin outside its path. A url
 * that begins with base_url's path ("/v1/chat/completions" under
 * "…/v1", as OpenAI Batch input files have it) is taken from the origin,
 * not appended. Returns 0 and a new string in *out, or sets nothing and
 * returns -EINVAL (neither a path nor an http(s) URL), -EILSEQ (a byte
 * outside visible ASCII: a space, a control byte, raw UTF-8) or -EXDEV
 * (another origin than base_url's). */
int url_job_path(const char *base_url, const char *url, char **out);

/* The URL to send a stored path (or a poll URL) to: base_url joined with
 * a path, or an absolute URL as it is when it is on base_url's origin.
 * Credentials go only to the lane's current origin, so this is checked at
 * every send, whatever the database holds (docs/design.md §11). Returns 0 and a
 * new string in *out, or sets nothing and returns -EXDEV for another
 * origin or -EILSEQ for a byte outside visible ASCII. */
int url_resolve(const char *base_url, const char *path, char **out);

#endif
