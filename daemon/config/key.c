/*
 * config_api_key: a provider's API key, read from its environment
 * variable or key file (systemd's CREDENTIALS_DIRECTORY for a relative
 * one) only when the daemon needs it, never kept in struct config, wiped
 * before it is freed, and never echoed in an error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/xmalloc.h"

#include "internal.h"

/* An API key is a few hundred bytes at most; a key file larger than this
 * is a wrong path, not a key. */
#define CONFIG_MAX_KEY_FILE 65536

/* Frees a buffer that held (part of) a key, wiping it first so the key
 * does not linger in freed heap memory. */
static void
free_secret(char *s, size_t n)
{
    if (s == NULL)
        return;
    explicit_bzero(s, n);
    free(s);
}

/* Reads path whole, at most CONFIG_MAX_KEY_FILE bytes. */
static char *
read_key_file(const char *path, char *err, size_t errlen)
{
    char *data = xmalloc(CONFIG_MAX_KEY_FILE + 1);
    size_t n;
    bool failed;
    FILE *f = fopen(path, "re");

    if (f == NULL) {
        snprintf(err, errlen, "cannot read key file %s: %s", path,
                 strerror(errno));
        free(data);
        return NULL;
    }
    n = fread(data, 1, CONFIG_MAX_KEY_FILE + 1, f);
    failed = ferror(f) != 0;
    fclose(f);
    if (failed || n > CONFIG_MAX_KEY_FILE) {
        snprintf(err, errlen, "key file %s: %s", path,
                 failed ? "read error" : "too large for a key");
        free_secret(data, CONFIG_MAX_KEY_FILE + 1);
        return NULL;
    }
    data[n] = '\0';
    return data;
}

/* Trims blanks and line ends on both sides of s, in place. */
static void
trim(char *s)
{
    char *start = s;
    size_t n;

    while (*start == ' ' || *start == '\t' || *start == '\r' || *start == '\n')
        start++;
    n = strlen(start);
    while (n > 0 && (start[n - 1] == ' ' || start[n - 1] == '\t' ||
                     start[n - 1] == '\r' || start[n - 1] == '\n'))
        n--;
    memmove(s, start, n);
    s[n] = '\0';
}

char *
config_api_key(const struct provider_config *p, char *err, size_t errlen)
{
    char *key, *where;

    if (p->auth == AUTH_NONE)
        return xstrdup("");
    if (p->api_key_env != NULL) {
        const char *v = getenv(p->api_key_env);
        if (v == NULL) {
            snprintf(err, errlen, "environment variable %s is not set",
                     p->api_key_env);
            return NULL;
        }
        key = xstrdup(v);
        where = xasprintf("environment variable %s", p->api_key_env);
    } else if (p->api_key_file != NULL) {
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        if (p->api_key_file[0] != '/' && dir != NULL && *dir != '\0')
            where = xasprintf("%s/%s", dir, p->api_key_file);
        else
            where = xstrdup(p->api_key_file);
        key = read_key_file(where, err, errlen);
        if (key == NULL) {
            free(where);
            return NULL;
        }
        char *label = xasprintf("key file %s", where);
        free(where);
        where = label;
    } else {
        snprintf(err, errlen,
                 "no api_key_env or api_key_file (set auth = "
                 "none for a provider without a key)");
        return NULL;
    }
    trim(key);
    if (*key == '\0') {
        snprintf(err, errlen, "%s is empty", where);
        free(where);
        free(key);
        return NULL;
    }
    /* A line break inside would split the header it is sent in; the
     * request builder sends visible ASCII only. */
    bool ok = true;
    for (const char *c = key; *c; c++)
        ok = ok && (unsigned char)*c >= 0x20 && (unsigned char)*c <= 0x7e;
    if (!ok) {
        snprintf(err, errlen,
                 "the key in %s contains control characters or non-ASCII "
                 "bytes",
                 where);
        free(where);
        free_secret(key, strlen(key));
        return NULL;
    }
    free(where);
    return key;
}
