/*
 * text: untrusted text (a provider's message, a job's custom_id) made safe
 * to show on one line of a log or a terminal table: no line break to
 * forge a log line (or, under journald, a priority), no escape sequence
 * for the terminal to act on (docs/design.md §11).
 */
#ifndef SLUICE_TEXT_H
#define SLUICE_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* The most bytes text_escape writes per byte of input. */
#define TEXT_ESCAPE_MAX 4

/* Copies in to out (n bytes, NUL included) with C0 control bytes and DEL
 * written as \n, \r, \t or \xNN, and C1 controls (U+0080-U+009F in UTF-8)
 * as \u0080..\u009f; everything else, UTF-8 included, as is. Stops
 * before an escape that would not fit whole. Returns the length
 * written. */
size_t text_escape(char *out, size_t n, const char *in);

/* Whether in holds anything text_escape would change. */
bool text_needs_escape(const char *in);

#endif
