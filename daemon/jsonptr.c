/*
 * jsonptr: RFC 6901 pointers, walked token by token over a jansson tree,
 * with "*" branching over an array's elements (dialect.c uses it to find
 * output URLs: tokens "outputs", "*", "url"; cost.c for cost_pointer).
 *
 * A token is unescaped into a small stack buffer ("~1" is "/", "~0" is
 * "~"); an array index is decimal digits without a leading zero, as the
 * RFC says. The walk recurses once per "*", so its depth is bounded by the
 * pointer's length, never by the document's.
 *
 * Rejected: "*" over object members too (the brief of output_pointer is
 * array elements; a member named "*" stays reachable); the "-" token
 * (it names the element after the last, which never exists when reading).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/jsonptr.h"

/* Longest token once unescaped: a member name longer than this is never
 * an output's. */
#define JSONPTR_TOKEN_MAX 256

bool
jsonptr_valid(const char *ptr)
{
    if (ptr == NULL)
        return false;
    if (*ptr == '\0')
        return true;
    if (*ptr != '/')
        return false;
    for (const char *p = ptr; *p; p++) {
        if (*p == '~' && p[1] != '0' && p[1] != '1')
            return false;
    }
    return true;
}

/* Unescapes the token at p (up to '/' or the end) into out; returns the
 * length, or -1 when it does not fit. *next is where the token ends. */
static int
token(const char *p, char *out, const char **next)
{
    int n = 0;
    while (*p && *p != '/') {
        char c = *p++;
        if (c == '~')
            c = *p++ == '0' ? '~' : '/';
        if (n + 1 >= JSONPTR_TOKEN_MAX)
            return -1;
        out[n++] = c;
    }
    out[n] = '\0';
    *next = p;
    return n;
}

/* An array index: digits, no leading zero unless it is "0". */
static bool
index_of(const char *t, size_t *out)
{
    char *end;
    if (*t < '0' || *t > '9' || (t[0] == '0' && t[1] != '\0'))
        return false;
    unsigned long long v = strtoull(t, &end, 10);
    if (*end != '\0')
        return false;
    *out = (size_t)v;
    return true;
}

static int
walk(const json_t *v, const char *p, jsonptr_fn fn, void *arg)
{
    char t[JSONPTR_TOKEN_MAX];
    const char *next;
    size_t i;
    int n = 0;

    while (v != NULL && *p == '/') {
        if (token(p + 1, t, &next) < 0)
            return 0;
        p = next;
        if (json_is_array(v) && strcmp(t, "*") == 0) {
            for (i = 0; i < json_array_size(v); i++)
                n += walk(json_array_get(v, i), p, fn, arg);
            return n;
        }
        if (json_is_object(v))
            v = json_object_get(v, t);
        else if (json_is_array(v) && index_of(t, &i))
            v = json_array_get(v, i);
        else
            v = NULL;
    }
    if (v == NULL)
        return 0;
    fn(v, arg);
    return 1;
}

int
jsonptr_walk(const json_t *root, const char *ptr, jsonptr_fn fn, void *arg)
{
    if (!jsonptr_valid(ptr))
        return -EINVAL;
    return walk(root, ptr, fn, arg);
}
