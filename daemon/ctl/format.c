/*
 * ctl/format.c: sluicectl's output. Human tables whose column widths are
 * computed from the cells, times as ISO-8601 UTC, control bytes escaped
 * (provider text must not drive the terminal); --json prints the store's
 * JSON document as is (JSON escapes them already).
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "sluice/text.h"
#include "sluice/xmalloc.h"

/* --- formatting ---------------------------------------------------------- */

/* ISO-8601 UTC of unix ms, seconds precision: "2026-11-21T10:00:00Z". */
void
ctl_iso_time(int64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms <= 0 || !gmtime_r(&t, &tm)) {
        strcpy(out, "-");
        return;
    }
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Columns holding unix ms (docs/contract.md: every *_at, and these). */
static bool
ctl_is_time_key(const char *key)
{
    size_t n = strlen(key);
    return (n > 3 && strcmp(key + n - 3, "_at") == 0) ||
           strcmp(key, "run_after") == 0 || strcmp(key, "lease_until") == 0 ||
           strcmp(key, "pause_until") == 0 || strcmp(key, "waiting_since") == 0;
}

/* A new string for a table cell; key decides whether integers are times. */
char *
ctl_cell(const char *key, const json_t *v)
{
    char when[32];

    switch (json_typeof(v)) {
    case JSON_STRING:
        return json_string_length(v) ? xstrdup(json_string_value(v))
                                     : xstrdup("-");
    case JSON_INTEGER:
        if (key && ctl_is_time_key(key)) {
            ctl_iso_time(json_integer_value(v), when);
            return xstrdup(when);
        }
        return xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    case JSON_REAL:
        return xasprintf("%g", json_real_value(v));
    case JSON_TRUE:
        return xstrdup("true");
    case JSON_FALSE:
        return xstrdup("false");
    case JSON_OBJECT:
    case JSON_ARRAY: {
        char *s = json_dumps(v, JSON_COMPACT);
        char *copy = xstrdup(s ? s : "?");
        free(s);
        return copy;
    }
    case JSON_NULL:
    default:
        return xstrdup("-");
    }
}

/* Display width of UTF-8 text: code points (no wide-glyph tables here). */
static size_t
ctl_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

static bool
ctl_is_number(const char *s)
{
    if (*s == '-')
        s++;
    if (!*s)
        return false;
    for (; *s; s++)
        if ((*s < '0' || *s > '9') && *s != '.')
            return false;
    return true;
}

/* A table of owned strings: row 0 is the header. */
void
ctl_table_init(struct ctl_table *t, size_t ncols)
{
    memset(t, 0, sizeof(*t));
    t->ncols = ncols;
}

char *
ctl_safe(char *s)
{
    if (s == NULL || !text_needs_escape(s))
        return s;
    size_t n = TEXT_ESCAPE_MAX * strlen(s) + 1;
    char *out = xmalloc(n);
    text_escape(out, n, s);
    free(s);
    return out;
}

/* Appends a row; takes ownership of the ncols strings of row. Every cell
 * is made safe for the terminal here, whatever built it. */
void
ctl_table_add(struct ctl_table *t, char **row)
{
    for (size_t j = 0; j < t->ncols; j++)
        row[j] = ctl_safe(row[j]);
    if (t->nrows == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 16;
        t->cells = xrealloc(t->cells, t->cap * t->ncols * sizeof(char *));
    }
    memcpy(t->cells + t->nrows * t->ncols, row, t->ncols * sizeof(char *));
    t->nrows++;
}

/* Prints with two spaces between columns; a column of numbers (and "-"
 * for none, with at least one number) right-aligned; no trailing blanks.
 * Frees the table. */
void
ctl_table_print(struct ctl_table *t, FILE *f)
{
    size_t *width = xcalloc(t->ncols, sizeof(size_t));
    bool *right = xcalloc(t->ncols, sizeof(bool));

    for (size_t j = 0; j < t->ncols; j++) {
        bool numbers = true, some = false;
        for (size_t i = 0; i < t->nrows; i++) {
            const char *s = t->cells[i * t->ncols + j];
            size_t w = ctl_width(s);
            if (w > width[j])
                width[j] = w;
            if (i == 0 || strcmp(s, "-") == 0)
                continue;
            if (ctl_is_number(s))
                some = true;
            else
                numbers = false;
        }
        right[j] = numbers && some;
    }
    for (size_t i = 0; i < t->nrows; i++) {
        for (size_t j = 0; j < t->ncols; j++) {
            const char *s = t->cells[i * t->ncols + j];
            int pad = (int)(width[j] - ctl_width(s));
            bool last = j + 1 == t->ncols;
            if (j > 0)
                fputs("  ", f);
            if (right[j])
                fprintf(f, "%*s%s", pad, "", s);
            else
                fprintf(f, "%s%*s", s, last ? 0 : pad, "");
        }
        fputc('\n', f);
    }
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(width);
    free(right);
}

/* A column of an object table: the key and its header. */
char *
ctl_header_of(const char *key)
{
    char *h = xstrdup(key);
    for (char *p = h; *p; p++)
        *p = *p == '_' ? ' ' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    return h;
}

/*
 * Prints an array of objects as a table. The columns are cols that occur
 * in some row, in that order, then (unless only_cols) every other key in
 * the order first seen. Absent or null cells print "-".
 */
void
ctl_print_objects(FILE *f, const json_t *rows, const struct ctl_col *cols,
                  size_t ncols, bool only_cols)
{
    const char **keys = xcalloc(ncols + 1, sizeof(char *));
    char **heads = xcalloc(ncols + 1, sizeof(char *));
    size_t nkeys = 0, cap = ncols + 1;
    size_t i;
    json_t *row;

    for (size_t k = 0; k < ncols; k++) {
        json_array_foreach(rows, i, row)
        {
            if (json_object_get(row, cols[k].key)) {
                keys[nkeys] = cols[k].key;
                heads[nkeys++] = xstrdup(cols[k].head);
                break;
            }
        }
    }
    if (!only_cols) {
        json_array_foreach(rows, i, row)
        {
            const char *key;
            json_t *v;
            json_object_foreach(row, key, v)
            {
                size_t k = 0;
                while (k < nkeys && strcmp(keys[k], key) != 0)
                    k++;
                if (k < nkeys)
                    continue;
                if (nkeys == cap) {
                    cap *= 2;
                    keys = xrealloc(keys, cap * sizeof(char *));
                    heads = xrealloc(heads, cap * sizeof(char *));
                }
                keys[nkeys] = key;
                heads[nkeys++] = ctl_header_of(key);
            }
        }
    }
    if (nkeys == 0) {
        free(keys);
        free(heads);
        return;
    }

    struct ctl_table t;
    ctl_table_init(&t, nkeys);
    ctl_table_add(&t, heads);
    char **cells = xcalloc(nkeys, sizeof(char *));
    json_array_foreach(rows, i, row)
    {
        for (size_t k = 0; k < nkeys; k++) {
            json_t *v = json_object_get(row, keys[k]);
            cells[k] = v ? ctl_cell(keys[k], v) : xstrdup("-");
        }
        ctl_table_add(&t, cells);
    }
    ctl_table_print(&t, f);
    free(cells);
    free(keys);
    free(heads);
}

/* One JSON document on stdout, as docs/contract.md's --json promises. */
int
ctl_print_json(const json_t *v)
{
    if (json_dumpf(v, stdout, JSON_INDENT(2)) < 0 || fputc('\n', stdout) < 0)
        return 1;
    return 0;
}
