/*
 * canon: one JSON object read in a single pass, each member's value
 * written as it is read in the canonical form jobspec stores: compact,
 * keys sorted, byte for byte what jansson's json_dumps(JSON_COMPACT |
 * JSON_SORT_KEYS) writes of the same value after json_loadb (reals at the
 * fewest digits that keep every real of the value exact, as
 * jobspec_parse_jansson asks). No I/O; no jansson.
 *
 * The reader accepts a subset of what jansson accepts and says no to the
 * rest (bad JSON, duplicate keys, nesting deeper than CANON_MAX_DEPTH, a
 * number it would have to round): the caller then asks jansson, whose
 * error names the column.
 */
#ifndef SLUICE_CANON_H
#define SLUICE_CANON_H

#include <stdbool.h>
#include <stddef.h>

/* Nesting the reader follows; deeper values are left to jansson (which
 * follows 2048). */
#define CANON_MAX_DEPTH 64

enum canon_type {
    CANON_NULL,
    CANON_FALSE,
    CANON_TRUE,
    CANON_INTEGER,
    CANON_REAL,
    CANON_STRING,
    CANON_ARRAY,
    CANON_OBJECT,
};

/* One member of the object canon_object read. The strings are NUL-
 * terminated and borrowed from the canon until its next use; none holds a
 * NUL of its own (\u0000 is left to jansson, which refuses it). */
struct canon_member {
    const char *key; /* decoded UTF-8 (escapes resolved) */
    size_t key_len;
    enum canon_type type;
    const char *str; /* CANON_STRING: the decoded string, else NULL */
    size_t str_len;
    long long integer; /* CANON_INTEGER: its value */
    const char *text;  /* the value's canonical JSON text */
    size_t text_len;
};

/* The reader's scratch, reused from line to line so that a line costs no
 * allocation once the buffers are large enough. Zero-initialised is
 * ready; canon_free releases it. */
struct canon {
    char *out; /* canonical texts of the members, each NUL-terminated */
    size_t out_len, out_cap;
    char *dec; /* decoded keys and top-level strings, NUL-terminated */
    size_t dec_len, dec_cap;
    struct canon_entry *ents; /* members of the objects being read */
    size_t nents, ents_cap;
    int precision;  /* digits for every real; 0: each its own fewest */
    int digits_min; /* fewest and most digits among the reals read */
    int digits_max;
};

/* Reads text (len bytes, NUL not needed) as one JSON object with at most
 * max members, filling m[0..*n) in the order of the text. Returns 0, or
 * -EINVAL when the reader leaves the text to jansson: not JSON, not an
 * object, a duplicate key at any depth, more than max members, nesting
 * deeper than CANON_MAX_DEPTH, an integer outside long long or a real
 * literal longer than 64 bytes. */
int canon_object(struct canon *c, const char *text, size_t len,
                 struct canon_member *m, size_t max, size_t *n);

/* Frees the scratch; c is empty and reusable afterwards. */
void canon_free(struct canon *c);

/* The fewest significant digits (1-17) with which "%.*g" prints x so that
 * it reads back as the same double. */
int canon_real_digits(double x);

#endif
