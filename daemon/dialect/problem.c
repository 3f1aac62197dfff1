/*
 * problem: RFC 9457 problem details (application/problem+json), for any API
 * that speaks the standard.
 *
 * A problem is {type, title, status, detail, instance}. The code is `type`
 * unless it is the default "about:blank" (which says nothing beyond the
 * status), else `title`; the message is `detail`, else `title`. The body's
 * `status` member is advisory (RFC 9457 §3.1.3): the HTTP status decides
 * the class. The RFC's validation examples, `errors` [{detail, pointer}]
 * and RFC 7807's `invalid-params` [{name, reason}], become field messages.
 * A body that is no problem object falls back to the common shapes.
 */
#include <string.h>

#include "internal.h"

static void
problem_error(const struct http_response *r, struct outcome *o)
{
    static const char *const field_keys[] = {"pointer", "field", "name", NULL};
    static const char *const message_keys[] = {"detail", "message", "reason",
                                               NULL};
    json_t *body = dialect_parse_body(r);
    const json_t *type = json_object_get(body, "type");
    const json_t *title = json_object_get(body, "title");
    const json_t *detail = json_object_get(body, "detail");
    json_t *fields = NULL;

    dialect_status_failure(r, o);
    if (!json_is_object(body) ||
        (type == NULL && title == NULL && detail == NULL)) {
        dialect_generic_error(body, o);
        json_decref(body);
        return;
    }
    o->code[0] = '\0';
    o->message[0] = '\0';
    if (!(json_is_string(type) &&
          strcmp(json_string_value(type), "about:blank") != 0 &&
          dialect_set_code(o, type)))
        dialect_set_code(o, title);
    if (!dialect_set_message(o, detail))
        dialect_set_message(o, title);
    dialect_fields_from_array(json_object_get(body, "errors"), field_keys,
                              message_keys, &fields);
    dialect_fields_from_array(json_object_get(body, "invalid-params"),
                              field_keys, message_keys, &fields);
    dialect_fields_take(o, fields);
    json_decref(body);
}

static void
problem_classify(const struct http_response *r, bool poll, int64_t now_ms,
                 struct outcome *o)
{
    (void)poll;
    (void)now_ms;
    if (dialect_is_2xx(r->status))
        dialect_success(r, false, o);
    else
        problem_error(r, o);
}

const struct dialect problem_dialect = {
    .name = "problem",
    .request_id_header = "x-request-id",
    .auth = "bearer",
    .idempotency = "header",
    .async = false,
    .classify = problem_classify,
};
