/*
 * config's internals, shared by the files of daemon/config/ and by no one
 * else: callers see only include/sluice/config.h. config.c parses the file
 * (sections, the key tables, checks across keys); value.c reads one value
 * of each syntax; key.c reads an API key when the daemon needs it.
 */
#ifndef SLUICE_CONFIG_INTERNAL_H
#define SLUICE_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "sluice/config.h"

#define NKEYS(t) (sizeof(t) / sizeof((t)[0]))

/* value.c: each returns 0 or -EINVAL (int), the value or false/NULL. */
bool value_digit(char c);
int value_size(const char *s, size_t *out); /* bytes, k/K, M, G */
int value_int(const char *s, int *out);     /* decimal, >= 0 */
int value_bool(const char *s, bool *out);   /* yes/true/1, no/false/0 */
bool value_token(const char *s, size_t n);  /* an RFC 9110 token */
bool value_env_name(const char *s);         /* an environment name */
bool value_has_control(const char *s);      /* a control byte inside */
/* "bearer", "header:NAME", "none". */
int value_auth(const char *s, enum auth_kind *kind, char **header);
/* "header", "header:NAME", "body:FIELD", "none". */
int value_idem(const char *s, enum idem_kind *kind, char **name);
char *value_header_line(const char *s); /* "Name: value", normalised */
char *value_url(const char *s);         /* http(s)://host…, no final / */

#endif
