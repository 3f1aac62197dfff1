/*
 * text: escaping for one-line display. Bytes, not a locale: a C0 control,
 * DEL or a UTF-8-encoded C1 control (terminals in UTF-8 mode act on U+009B
 * as on ESC [) is replaced by a visible escape; the rest, valid UTF-8 or
 * not, passes unchanged, so names and messages in any language read as
 * they were written. Rejected: escaping the backslash too (reversible, but
 * every Windows path in a message would double); stripping the bytes
 * (an operator should see that something was there).
 */
#include <stdio.h>
#include <string.h>

#include "sluice/text.h"

/* The escape for the character at p, into esc; *used = bytes of p it
 * stands for. NULL when the byte passes as is. */
static const char *
escape_of(const unsigned char *p, char esc[8], size_t *used)
{
    *used = 1;
    switch (*p) {
    case '\n':
        return "\\n";
    case '\r':
        return "\\r";
    case '\t':
        return "\\t";
    default:
        break;
    }
    if (*p < 0x20 || *p == 0x7f) {
        snprintf(esc, 8, "\\x%02x", *p);
        return esc;
    }
    if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
        snprintf(esc, 8, "\\u%04x", p[1]);
        *used = 2;
        return esc;
    }
    return NULL;
}

size_t
text_escape(char *out, size_t n, const char *in)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;
    char esc[8];

    if (n == 0)
        return 0;
    while (*p) {
        size_t used;
        const char *e = escape_of(p, esc, &used);
        size_t len = e ? strlen(e) : 1;
        if (o + len >= n)
            break;
        if (e)
            memcpy(out + o, e, len);
        else
            out[o] = (char)*p;
        o += len;
        p += used;
    }
    out[o] = '\0';
    return o;
}

bool
text_needs_escape(const char *in)
{
    char esc[8];
    size_t used;

    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        if (escape_of(p, esc, &used) != NULL)
            return true;
    }
    return false;
}
