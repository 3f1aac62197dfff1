/*
 * dialect/internal.h: what the dialect modules share and nothing else sees.
 * Each module in daemon/dialect/ defines one `const struct dialect`, listed
 * here and registered in daemon/dialect.c; the helpers below (in dialect.c)
 * do the work every dialect repeats: reading the body as JSON, copying
 * provider strings into the fixed outcome buffers, building the fields
 * array, and the fallbacks for bodies that are not what the dialect expects.
 */
#ifndef SLUICE_DIALECT_INTERNAL_H
#define SLUICE_DIALECT_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>

#include "sluice/dialect.h"
#include "sluice/http.h"

extern const struct dialect flora_dialect;
extern const struct dialect openai_dialect;
extern const struct dialect graphql_dialect;
extern const struct dialect flymyai_dialect;
extern const struct dialect firemoon_dialect;
extern const struct dialect problem_dialect;
extern const struct dialect generic_dialect;

/* A provider string mapped to a class, for code/type refinement tables;
 * a table ends with a NULL name. */
struct dialect_code_class {
    const char *name;
    enum err_class cls;
};

/* The class of name in table (exact match), or ERR_NONE. */
enum err_class dialect_lookup_class(const struct dialect_code_class *table,
                                    const char *name);

/* Whether the status is 2xx. */
bool dialect_is_2xx(int status);

/* Parses the body as any JSON value. Returns a new reference, or NULL for
 * an empty or unreadable body (jansson caps the nesting depth). */
json_t *dialect_parse_body(const struct http_response *r);

/* Copies src into dst (cap bytes with the NUL), cut on a UTF-8 boundary. */
void dialect_copy(char *dst, size_t cap, const char *src);

/* Writes a printable-ASCII excerpt of the body into dst (other bytes become
 * '?', whitespace runs one space), for bodies nobody can read. */
void dialect_excerpt(const struct http_response *r, char *dst, size_t cap);

/* Sets o->code from a JSON string (verbatim) or number (printed). Returns
 * true when v was usable, false (o untouched) otherwise. */
bool dialect_set_code(struct outcome *o, const json_t *v);
/* Sets o->message from a JSON string. Returns true when v was a string. */
bool dialect_set_message(struct outcome *o, const json_t *v);

/* Appends {"field","message"} to the fields array *arr (created on first
 * use), up to a cap; message is truncated like o->message. */
void dialect_field_add(json_t **arr, const char *field, const char *message);
/* Appends one field per object of arr (anything else is skipped): the name
 * from the first of field_keys that holds a string, the message likewise
 * from message_keys; both lists end with NULL. */
void dialect_fields_from_array(const json_t *arr, const char *const *field_keys,
                               const char *const *message_keys, json_t **out);
/* Joins the string and integer elements of the JSON array arr, from index
 * first on, with "." into dst (truncated to cap); "" when there are none. */
void dialect_join_path(const json_t *arr, size_t first, char *dst, size_t cap);
/* The value of the first of keys (NULL-terminated) that holds a string in
 * obj, or NULL. Borrowed from obj. */
const char *dialect_first_string(const json_t *obj, const char *const *keys);
/* Moves arr (NULL allowed) into o->fields as compact JSON text and drops
 * the reference. */
void dialect_fields_take(struct outcome *o, json_t *arr);

/* A 2xx body that is valid JSON: SUCCESS with result = the body text.
 * Anything else: FAILURE ERR_PROTOCOL "bad_json" with an excerpt. When
 * want_object, valid JSON that is not an object is ERR_PROTOCOL
 * "unexpected_body". Returns true for SUCCESS. */
bool dialect_success(const struct http_response *r, bool want_object,
                     struct outcome *o);
/* FAILURE with the class of the status and an excerpt of the body as
 * message: the start of every non-2xx classification. */
void dialect_status_failure(const struct http_response *r, struct outcome *o);
/* Fills code and message from the shapes most APIs use (error.code,
 * error.type, error as a string or number, code; error.message, message,
 * detail, error_description). Returns true when it found a code or a
 * message (a code alone empties the message: the excerpt is only for
 * unreadable bodies); o is untouched otherwise. */
bool dialect_generic_error(const json_t *body, struct outcome *o);

/* FAILURE with class cls; code/message may be NULL (left as they are). */
void dialect_fail(struct outcome *o, enum err_class cls, const char *code,
                  const char *message);

/* The verdict a "true"/"false" header value gives (case-insensitive);
 * VERDICT_DEFAULT when absent or anything else. */
enum verdict dialect_verdict_header(const struct http_response *r,
                                    const char *name);

#endif
