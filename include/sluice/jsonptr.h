/*
 * jsonptr: JSON pointers (RFC 6901) with one extension, `*`, which stands
 * for every element of an array: the tokens "outputs", "*", "url" reach the
 * url of each output. Pure: no I/O, no allocation of its own.
 */
#ifndef SLUICE_JSONPTR_H
#define SLUICE_JSONPTR_H

#include <jansson.h>
#include <stdbool.h>

/* Whether ptr is a pointer jsonptr_walk accepts: "" (the whole document)
 * or "/"-separated tokens, where "~" is only followed by "0" or "1". */
bool jsonptr_valid(const char *ptr);

/* Calls fn once per value ptr reaches in root, in document order (a "*"
 * token branches over the array's elements; on anything but an array it
 * reaches nothing). A token that names no member or element reaches
 * nothing. v is borrowed from root. Returns how many values were reached,
 * or -EINVAL when ptr is not valid. */
typedef void (*jsonptr_fn)(const json_t *v, void *arg);
int jsonptr_walk(const json_t *root, const char *ptr, jsonptr_fn fn,
                 void *arg);

#endif
