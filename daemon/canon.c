/*
 * canon: a JSON object read once, each value written in canonical form as
 * it is read (canon.h).
 *
 * sluicectl enqueue used to parse every line with jansson and write the
 * body back with sorted keys: two passes and a tree of small allocations,
 * about half of enqueue's CPU. Here a string is decoded into one scratch
 * buffer and escaped from it as jansson escapes (", \ and bytes below 0x20;
 * \b \f \n \r \t by name, the others as \u00XX in upper case; '/' and
 * everything else raw UTF-8), a number is checked and copied (an integer
 * as "%lld" prints it, so -0 is 0), and an object's members are written
 * one after the other and, only when their keys are out of order, sorted
 * in place, keys compared as jansson compares them (memcmp, then length).
 *
 * The reals: jobspec prints every real of a body with as many digits as
 * the real that needs the most (canon_real_digits). One pass cannot know
 * that number before the value ends, so each real is written with its own
 * digits first; when the reals of one member needed different numbers,
 * that member is read again with the largest. Most bodies have no real,
 * or reals that agree.
 *
 * Rejected: a tree of the line (what jansson builds), since the canonical
 * text is all that is kept; reading the top-level fields with a second
 * parser of their own, since jobspec needs them decoded anyway.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/canon.h"
#include "sluice/xmalloc.h"

/* Longest number literal the reader converts; a longer one (an integer
 * that long is out of range anyway) is left to jansson. */
#define CANON_NUMBER_MAX 64

/* A member of an object being read, as offsets: out and dec may move
 * while its value is read. */
struct canon_entry {
    size_t key_off, key_len;   /* decoded key in dec */
    size_t text_off, text_len; /* in out: "key":value, or (top level) the
                                  value alone */
    const char *key;           /* dec + key_off, set for sorting */
    enum canon_type type;      /* top level: the value's type */
    size_t str_off, str_len;   /* top-level string: decoded, in dec */
    long long integer;         /* top-level integer */
};

/* What read_value saw, for the top level. */
struct canon_value {
    enum canon_type type;
    long long integer;
    size_t str_off, str_len;
};

static void
reserve(char **p, size_t *cap, size_t len, size_t n)
{
    size_t c;

    if (len + n < *cap)
        return;
    c = *cap ? *cap : 256;
    while (c <= len + n)
        c *= 2;
    *p = xrealloc(*p, c);
    *cap = c;
}

static void
put(struct canon *c, const char *s, size_t n)
{
    reserve(&c->out, &c->out_cap, c->out_len, n);
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
}

static void
put_byte(struct canon *c, char ch)
{
    reserve(&c->out, &c->out_cap, c->out_len, 1);
    c->out[c->out_len++] = ch;
}

static size_t
push_entry(struct canon *c)
{
    if (c->nents == c->ents_cap) {
        c->ents_cap = c->ents_cap ? 2 * c->ents_cap : 16;
        c->ents = xrealloc(c->ents, c->ents_cap * sizeof(*c->ents));
    }
    memset(&c->ents[c->nents], 0, sizeof(c->ents[0]));
    return c->nents++;
}

/* JSON's whitespace, as jansson skips it. */
static const char *
skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static bool
is_digit(const char *p, const char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

/* Bytes of the UTF-8 sequence starting at p (2 to 4), or 0 when it is not
 * valid: overlong forms, surrogates and code points past U+10FFFF are not,
 * as for jansson. */
static size_t
utf8_len(const unsigned char *p, const unsigned char *end)
{
    uint32_t cp;
    size_t n;

    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        n = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        n = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        n = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

static size_t
utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The four hex digits of a \u escape at p (end - p >= 4 checked). */
static int
hex4(const unsigned char *p, uint32_t *out)
{
    uint32_t v = 0;

    for (int i = 0; i < 4; i++) {
        unsigned char h = p[i];
        if (h >= '0' && h <= '9')
            v = v * 16 + (uint32_t)(h - '0');
        else if (h >= 'a' && h <= 'f')
            v = v * 16 + (uint32_t)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F')
            v = v * 16 + (uint32_t)(h - 'A' + 10);
        else
            return -EINVAL;
    }
    *out = v;
    return 0;
}

/* The code point of the \u escape at *pp (a surrogate pair is one), moving
 * *pp past it; -EINVAL for a lone surrogate and for \u0000, which jansson
 * refuses without JSON_ALLOW_NUL. */
static int
read_escape_u(const unsigned char **pp, const unsigned char *end, uint32_t *out)
{
    const unsigned char *p = *pp;
    uint32_t cp, lo;

    if (end - p < 6 || hex4(p + 2, &cp) < 0)
        return -EINVAL;
    p += 6;
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return -EINVAL;
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (end - p < 6 || p[0] != '\\' || p[1] != 'u' ||
            hex4(p + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
            return -EINVAL;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        p += 6;
    }
    if (cp == 0)
        return -EINVAL;
    *pp = p;
    *out = cp;
    return 0;
}

/* Decodes the string whose opening quote is at *pp onto dec (NUL-
 * terminated there), moving *pp past its closing quote. */
static int
read_string(struct canon *c, const char **pp, const char *end, size_t *off,
            size_t *len)
{
    const unsigned char *p = (const unsigned char *)*pp + 1;
    const unsigned char *e = (const unsigned char *)end;
    char *o;
    uint32_t cp;

    /* Decoding never lengthens: every escape is at least as long as the
     * UTF-8 it stands for. */
    reserve(&c->dec, &c->dec_cap, c->dec_len, (size_t)(e - p) + 1);
    *off = c->dec_len;
    o = c->dec + c->dec_len;
    for (;;) {
        const unsigned char *run = p;
        while (p < e && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        memcpy(o, run, (size_t)(p - run));
        o += p - run;
        if (p == e || *p < 0x20)
            return -EINVAL;
        if (*p == '"')
            break;
        if (*p >= 0x80) {
            size_t n = utf8_len(p, e);
            if (n == 0)
                return -EINVAL;
            memcpy(o, p, n);
            o += n;
            p += n;
            continue;
        }
        if (e - p < 2)
            return -EINVAL;
        switch (p[1]) {
        case '"':
        case '\\':
        case '/':
            *o++ = (char)p[1];
            break;
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u':
            if (read_escape_u(&p, e, &cp) < 0)
                return -EINVAL;
            o += utf8_put(o, cp);
            continue;
        default:
            return -EINVAL;
        }
        p += 2;
    }
    *len = (size_t)(o - (c->dec + *off));
    *o = '\0';
    c->dec_len = *off + *len + 1;
    *pp = (const char *)p + 1;
    return 0;
}

/* s (n bytes of valid UTF-8) as a JSON string, escaped as jansson's
 * dump_string escapes without JSON_ENSURE_ASCII or JSON_ESCAPE_SLASH. */
static void
put_string(struct canon *c, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    char *o;

    reserve(&c->out, &c->out_cap, c->out_len, 6 * n + 2);
    o = c->out + c->out_len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\') {
            *o++ = (char)ch;
            continue;
        }
        *o++ = '\\';
        switch (ch) {
        case '"':
        case '\\':
            *o++ = (char)ch;
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            memcpy(o, "u00", 3);
            o[3] = hex[ch >> 4];
            o[4] = hex[ch & 15];
            o += 5;
        }
    }
    *o++ = '"';
    c->out_len = (size_t)(o - c->out);
}

int
canon_real_digits(double x)
{
    char text[32];
    int d;

    /* 17 significant digits always read back exactly (IEEE 754). */
    for (d = 1; d < 17; d++) {
        snprintf(text, sizeof(text), "%.*g", d, x);
        if (strtod(text, NULL) == x)
            break;
    }
    return d;
}

/* x with digits significant digits as jansson's jsonp_dtostr prints it: a
 * ".0" when "%g" wrote an integer, no "+" and no leading zeros in the
 * exponent. */
static void
put_real(struct canon *c, double x, int digits)
{
    char b[48];
    int n = snprintf(b, sizeof(b) - 2, "%.*g", digits, x);
    char *e;

    if (memchr(b, '.', (size_t)n) == NULL &&
        memchr(b, 'e', (size_t)n) == NULL) {
        memcpy(b + n, ".0", 3);
        n += 2;
    }
    if ((e = memchr(b, 'e', (size_t)n)) != NULL) {
        char *start = e + 1, *digit = e + 2;
        if (*start == '-')
            start++;
        while (*digit == '0')
            digit++;
        memmove(start, digit, (size_t)(b + n - digit));
        n -= (int)(digit - start);
    }
    put(c, b, (size_t)n);
}

static int
read_number(struct canon *c, const char **pp, const char *end,
            struct canon_value *v)
{
    const char *p = *pp, *start = p;
    char lit[CANON_NUMBER_MAX + 1];
    bool real = false;
    size_t n;

    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0') {
        p++;
    } else {
        if (!is_digit(p, end))
            return -EINVAL;
        while (is_digit(p, end))
            p++;
    }
    if (p < end && *p == '.') {
        if (!is_digit(++p, end))
            return -EINVAL;
        while (is_digit(p, end))
            p++;
        real = true;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(p, end))
            return -EINVAL;
        while (is_digit(p, end))
            p++;
        real = true;
    }
    if ((n = (size_t)(p - start)) > CANON_NUMBER_MAX)
        return -EINVAL;
    memcpy(lit, start, n);
    lit[n] = '\0';
    errno = 0;
    if (!real) {
        long long i = strtoll(lit, NULL, 10);
        if (errno == ERANGE)
            return -EINVAL;
        /* The literal is what "%lld" prints, but for -0. */
        if (i == 0)
            put_byte(c, '0');
        else
            put(c, lit, n);
        v->type = CANON_INTEGER;
        v->integer = i;
    } else {
        double x = strtod(lit, NULL);
        int d;
        /* jansson refuses an overflow, keeps an underflow. */
        if (errno == ERANGE && isinf(x))
            return -EINVAL;
        d = canon_real_digits(x);
        if (c->digits_min == 0 || d < c->digits_min)
            c->digits_min = d;
        if (d > c->digits_max)
            c->digits_max = d;
        put_real(c, x, c->precision ? c->precision : d);
        v->type = CANON_REAL;
    }
    *pp = p;
    return 0;
}

static int read_value(struct canon *c, const char **pp, const char *end,
                      int depth, struct canon_value *v);

static int
entry_cmp(const void *a, const void *b)
{
    const struct canon_entry *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int r = memcmp(x->key, y->key, n);

    if (r != 0)
        return r;
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

/* Puts the members ents[base..nents), written from out + from with commas
 * between them, in key order; -EINVAL on a duplicate key. */
static int
sort_members(struct canon *c, size_t base, size_t from)
{
    struct canon_entry *e = c->ents + base;
    size_t n = c->nents - base, len = c->out_len - from;
    bool sorted = true;
    char *tmp, *o;

    for (size_t i = 0; i < n; i++)
        e[i].key = c->dec + e[i].key_off;
    for (size_t i = 1; i < n && sorted; i++)
        sorted = entry_cmp(&e[i - 1], &e[i]) < 0;
    if (sorted)
        return 0;
    qsort(e, n, sizeof(*e), entry_cmp);
    for (size_t i = 1; i < n; i++) {
        if (entry_cmp(&e[i - 1], &e[i]) == 0)
            return -EINVAL;
    }
    /* The members are copied past the end of out, then back in order. */
    reserve(&c->out, &c->out_cap, c->out_len, len);
    tmp = c->out + c->out_len;
    memcpy(tmp, c->out + from, len);
    o = c->out + from;
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            *o++ = ',';
        memcpy(o, tmp + (e[i].text_off - from), e[i].text_len);
        o += e[i].text_len;
    }
    return 0;
}

static int
read_object(struct canon *c, const char **pp, const char *end, int depth)
{
    const char *p = skip_ws(*pp + 1, end);
    size_t base = c->nents, dec_mark = c->dec_len, from;
    struct canon_value v;
    int rc = -EINVAL;

    put_byte(c, '{');
    from = c->out_len;
    if (p < end && *p == '}') {
        p++;
        goto close;
    }
    for (;;) {
        size_t i = push_entry(c), key_off, key_len, value_mark;
        if (p == end || *p != '"' ||
            read_string(c, &p, end, &key_off, &key_len) < 0)
            goto out;
        c->ents[i].key_off = key_off;
        c->ents[i].key_len = key_len;
        p = skip_ws(p, end);
        if (p == end || *p != ':')
            goto out;
        p = skip_ws(p + 1, end);
        c->ents[i].text_off = c->out_len;
        put_string(c, c->dec + key_off, key_len);
        put_byte(c, ':');
        value_mark = c->dec_len;
        if (read_value(c, &p, end, depth, &v) < 0)
            goto out;
        c->dec_len = value_mark;
        c->ents[i].text_len = c->out_len - c->ents[i].text_off;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            put_byte(c, ',');
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') {
            p++;
            break;
        }
        goto out;
    }
    if (sort_members(c, base, from) < 0)
        goto out;
close:
    put_byte(c, '}');
    *pp = p;
    rc = 0;
out:
    c->nents = base;
    c->dec_len = dec_mark;
    return rc;
}

static int
read_array(struct canon *c, const char **pp, const char *end, int depth)
{
    const char *p = skip_ws(*pp + 1, end);
    size_t dec_mark = c->dec_len;
    struct canon_value v;

    put_byte(c, '[');
    if (p < end && *p == ']') {
        p++;
    } else {
        for (;;) {
            if (read_value(c, &p, end, depth, &v) < 0)
                return -EINVAL;
            c->dec_len = dec_mark;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                put_byte(c, ',');
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == ']') {
                p++;
                break;
            }
            return -EINVAL;
        }
    }
    put_byte(c, ']');
    *pp = p;
    return 0;
}

static bool
literal(const char *p, const char *end, const char *word, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0;
}

/* The value at *pp onto out; a string's decoded bytes stay on dec. */
static int
read_value(struct canon *c, const char **pp, const char *end, int depth,
           struct canon_value *v)
{
    const char *p = *pp;

    memset(v, 0, sizeof(*v));
    if (p == end)
        return -EINVAL;
    switch (*p) {
    case '{':
    case '[':
        if (depth >= CANON_MAX_DEPTH)
            return -EINVAL;
        v->type = *p == '{' ? CANON_OBJECT : CANON_ARRAY;
        return *p == '{' ? read_object(c, pp, end, depth + 1)
                         : read_array(c, pp, end, depth + 1);
    case '"':
        if (read_string(c, pp, end, &v->str_off, &v->str_len) < 0)
            return -EINVAL;
        put_string(c, c->dec + v->str_off, v->str_len);
        v->type = CANON_STRING;
        return 0;
    case 't':
        if (!literal(p, end, "true", 4))
            return -EINVAL;
        v->type = CANON_TRUE;
        put(c, "true", 4);
        *pp = p + 4;
        return 0;
    case 'f':
        if (!literal(p, end, "false", 5))
            return -EINVAL;
        v->type = CANON_FALSE;
        put(c, "false", 5);
        *pp = p + 5;
        return 0;
    case 'n':
        if (!literal(p, end, "null", 4))
            return -EINVAL;
        v->type = CANON_NULL;
        put(c, "null", 4);
        *pp = p + 4;
        return 0;
    default:
        return read_number(c, pp, end, v);
    }
}

/* One member's value at *pp onto out (the top level's entry i). */
static int
read_member_value(struct canon *c, const char **pp, const char *end, size_t i)
{
    const char *start = *pp;
    struct canon_entry *e;
    struct canon_value v;

    c->precision = c->digits_min = c->digits_max = 0;
    c->ents[i].text_off = c->out_len;
    if (read_value(c, pp, end, 1, &v) < 0)
        return -EINVAL;
    if (c->digits_min != c->digits_max) {
        /* Reals that needed different digits: all get the most. */
        c->out_len = c->ents[i].text_off;
        c->precision = c->digits_max;
        *pp = start;
        if (read_value(c, pp, end, 1, &v) < 0)
            return -EINVAL;
        c->precision = 0;
    }
    e = &c->ents[i];
    e->text_len = c->out_len - e->text_off;
    put_byte(c, '\0');
    e->type = v.type;
    e->integer = v.integer;
    e->str_off = v.str_off;
    e->str_len = v.str_len;
    return 0;
}

int
canon_object(struct canon *c, const char *text, size_t len,
             struct canon_member *m, size_t max, size_t *n)
{
    const char *p = text, *end = text + len;

    c->out_len = c->dec_len = c->nents = 0;
    p = skip_ws(p, end);
    if (p == end || *p != '{')
        return -EINVAL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            size_t i, key_off, key_len;
            if (c->nents == max || p == end || *p != '"' ||
                read_string(c, &p, end, &key_off, &key_len) < 0)
                return -EINVAL;
            for (size_t j = 0; j < c->nents; j++) {
                if (c->ents[j].key_len == key_len &&
                    memcmp(c->dec + c->ents[j].key_off, c->dec + key_off,
                           key_len) == 0)
                    return -EINVAL;
            }
            i = push_entry(c);
            c->ents[i].key_off = key_off;
            c->ents[i].key_len = key_len;
            p = skip_ws(p, end);
            if (p == end || *p != ':')
                return -EINVAL;
            p = skip_ws(p + 1, end);
            if (read_member_value(c, &p, end, i) < 0)
                return -EINVAL;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            return -EINVAL;
        }
    }
    if (skip_ws(p, end) != end)
        return -EINVAL;
    for (size_t i = 0; i < c->nents; i++) {
        const struct canon_entry *e = &c->ents[i];
        m[i] = (struct canon_member){
            .key = c->dec + e->key_off,
            .key_len = e->key_len,
            .type = e->type,
            .str = e->type == CANON_STRING ? c->dec + e->str_off : NULL,
            .str_len = e->str_len,
            .integer = e->integer,
            .text = c->out + e->text_off,
            .text_len = e->text_len,
        };
    }
    *n = c->nents;
    return 0;
}

void
canon_free(struct canon *c)
{
    free(c->out);
    free(c->dec);
    free(c->ents);
    memset(c, 0, sizeof(*c));
}
