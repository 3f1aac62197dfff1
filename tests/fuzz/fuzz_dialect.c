/*
 * fuzz_dialect: every dialect, as a submission and as a poll, on one
 * response built from the input. The input is text so a corpus can be
 * written by hand:
 *
 *   first line   the HTTP status in decimal ("429"), or "!N" for a
 *                transport failure with curl code N (28 = timed out)
 *   header lines "Name: value", up to an empty line
 *   the rest     the body, any bytes
 *
 * Besides the sanitizers, it aborts when an outcome breaks what the
 * dispatcher relies on: text within its caps, a success's result and any
 * fields valid JSON, a failure with a class, an accepted submission with
 * a run id and a poll URL.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/dialect.h"
#include "sluice/http.h"

/* A fixed "now" keeps runs reproducible. */
#define FUZZ_NOW 1761215355000LL
/* More headers than any provider sends; the rest go to the body. */
#define FUZZ_HEADERS_MAX 32

static const char *const fuzz_dialects[] = {
    "flora", "openai", "graphql", "flymyai", "firemoon", "problem", "generic",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_check_json(const char *text)
{
    json_t *j;

    if (text == NULL)
        return;
    j = json_loads(text, JSON_DECODE_ANY, NULL);
    if (j == NULL)
        abort();
    json_decref(j);
}

static void
fuzz_check(const struct outcome *o, bool poll)
{
    if (strlen(o->code) >= OUTCOME_CODE_MAX ||
        strlen(o->message) >= OUTCOME_MESSAGE_MAX ||
        strlen(o->request_id) >= OUTCOME_REQUEST_ID_MAX)
        abort();
    fuzz_check_json(o->fields);
    fuzz_check_json(o->result);
    if (o->kind == OUTCOME_SUCCESS && (o->result == NULL || o->cls))
        abort();
    if (o->kind == OUTCOME_FAILURE && o->cls == ERR_NONE)
        abort();
    if (o->kind == OUTCOME_ACCEPTED && !poll &&
        (o->remote_id == NULL || o->poll_url == NULL))
        abort();
}

/* Splits text (NUL-terminated, owned by the caller) into the response. */
static void
fuzz_parse(char *text, size_t size, struct http_response *r,
           struct http_header *headers)
{
    char *p = text;
    char *end = text + size;
    char *nl = memchr(p, '\n', size);

    if (nl == NULL) {
        r->body = p;
        r->body_len = size;
        r->status = 200;
        return;
    }
    *nl = '\0';
    if (*p == '!') {
        r->curl_code = atoi(p + 1) & 0x7f;
        r->timed_out = r->curl_code == 28;
        r->too_large = r->curl_code == 23;
        r->cancelled = r->curl_code == 42;
        strcpy(r->error, "fuzzed transport failure");
        r->status = 0;
    } else {
        r->status = atoi(p) % 1000;
    }
    p = nl + 1;
    while (p < end && r->nheaders < FUZZ_HEADERS_MAX) {
        char *colon;
        nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL || nl == p)
            break;
        *nl = '\0';
        colon = strchr(p, ':');
        if (colon != NULL) {
            *colon = '\0';
            headers[r->nheaders].name = p;
            headers[r->nheaders].value = colon + 1 + strspn(colon + 1, " ");
            r->nheaders++;
        }
        p = nl + 1;
    }
    if (p < end && *p == '\n')
        p++;
    r->headers = headers;
    r->body = p;
    r->body_len = (size_t)(end - p);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct http_header headers[FUZZ_HEADERS_MAX];
    struct http_response r;
    struct outcome o;
    char *text = malloc(size + 1);

    memcpy(text, data, size);
    text[size] = '\0';
    memset(&r, 0, sizeof(r));
    fuzz_parse(text, size, &r, headers);
    for (size_t i = 0; i < sizeof(fuzz_dialects) / sizeof(fuzz_dialects[0]);
         i++) {
        const struct dialect *d = dialect_find(fuzz_dialects[i]);
        for (int poll = 0; poll < 2; poll++) {
            dialect_classify(d, &r, poll, FUZZ_NOW, NULL, &o);
            fuzz_check(&o, poll);
            outcome_clear(&o);
        }
    }
    free(text);
    return 0;
}
