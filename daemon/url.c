/*
 * url: a job's path and a run's poll URL against the provider's base_url.
 *
 * What is stored is data, not trust: a path in the jobs table may have been
 * written by another config, an older base_url or plain sqlite3. So the
 * origin is checked twice, at enqueue against the enqueuing config (a clear
 * error for the operator) and at every send against the lane's base_url of
 * the moment (the rule that keeps the API key home). Both use the same
 * functions here, so "HTTP://host" means the same thing at both ends.
 *
 * Stored paths are relative to base_url whenever they can be: a full URL
 * under base_url and a path that repeats base_url's path (an OpenAI Batch
 * input line's "/v1/chat/completions" for a base_url ending in /v1) both
 * become the part under it, once, at enqueue. The send side only joins.
 * Rejected: stripping a repeated base path at send time as well (a path
 * "/v1/v1/x" would then mean two things) and resolving relative references
 * RFC 3986 style (a path of "../other" escaping base_url is not a use case).
 */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "sluice/url.h"
#include "sluice/xmalloc.h"

size_t
url_origin_len(const char *url)
{
    size_t n, host;

    if (strncasecmp(url, "http://", 7) == 0)
        n = 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        n = 8;
    else
        return 0;
    /* The authority ends at the first of these; a backslash is in it, so
     * "https://host\@evil" never compares equal to "https://host". */
    host = strcspn(url + n, "/?#");
    return host ? n + host : 0;
}

bool
url_same_origin(const char *a, const char *b)
{
    size_t al = url_origin_len(a), bl = url_origin_len(b);

    return al > 0 && al == bl && strncasecmp(a, b, al) == 0;
}

/* True when s holds anything but visible ASCII: a space or a control byte
 * is never valid in a URL (a line break would end the request line), and
 * other bytes are sent percent-encoded or not at all. */
static bool
has_bad_byte(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return true;
    }
    return false;
}

int
url_job_path(const char *base_url, const char *url, char **out)
{
    size_t ul = url_origin_len(url), bl = url_origin_len(base_url), bp;
    const char *rest, *base_path = base_url + bl;

    if (has_bad_byte(url))
        return -EILSEQ;
    if (url[0] == '/')
        rest = url;
    else if (ul == 0)
        return -EINVAL;
    else if (!url_same_origin(url, base_url))
        return -EXDEV;
    else
        rest = url + ul;
    bp = strlen(base_path);
    while (bp > 0 && base_path[bp - 1] == '/')
        bp--;
    if (strncmp(rest, base_path, bp) == 0 && rest[bp] == '/') {
        *out = xstrdup(rest + bp);
    } else if (rest == url) {
        *out = xstrdup(url);
    } else {
        /* On the origin outside base_url's path: kept whole, the scheme
         * spelt one way. */
        char *s = xstrdup(url);
        for (size_t i = 0; s[i] != ':'; i++)
            s[i] = (char)(s[i] | 0x20);
        *out = s;
    }
    return 0;
}

int
url_resolve(const char *base_url, const char *path, char **out)
{
    if (has_bad_byte(path))
        return -EILSEQ;
    if (url_origin_len(path) > 0) {
        if (!url_same_origin(path, base_url))
            return -EXDEV;
        *out = xstrdup(path);
        return 0;
    }
    *out = xasprintf("%s%s%s", base_url, path[0] == '/' ? "" : "/", path);
    return 0;
}
