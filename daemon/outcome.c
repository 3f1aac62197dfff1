/*
 * outcome: the verdict of a dialect on one response, the common currency
 * between dialect/, retry, lane and store. Fixed-size text fields keep the
 * hot path free of allocations; they are truncated on a UTF-8 character
 * boundary, because the database and the JSON export (jansson) reject
 * broken sequences and a provider's message is often not ASCII.
 */
#include <stdlib.h>
#include <string.h>

#include "sluice/outcome.h"

void
outcome_init(struct outcome *o)
{
    memset(o, 0, sizeof(*o));
    o->kind = OUTCOME_SUCCESS;
    o->cls = ERR_NONE;
    o->verdict = VERDICT_DEFAULT;
    o->hints.rl_limit = -1;
    o->hints.rl_remaining = -1;
    o->hints.tok_limit = -1;
    o->hints.tok_remaining = -1;
}

void
outcome_clear(struct outcome *o)
{
    if (o == NULL)
        return;
    free(o->fields);
    free(o->result);
    free(o->remote_id);
    free(o->poll_url);
    o->fields = NULL;
    o->result = NULL;
    o->remote_id = NULL;
    o->poll_url = NULL;
}

bool
outcome_retryable(const struct outcome *o)
{
    switch (o->verdict) {
    case VERDICT_RETRY:
        return true;
    case VERDICT_NO_RETRY:
        return false;
    case VERDICT_DEFAULT:
        break;
    }
    return err_class_retryable(o->cls);
}

/* Copies src into dst[size], cutting before a UTF-8 sequence that would
 * not fit whole. */
static void
copy_truncated(char *dst, size_t size, const char *src)
{
    size_t n = src ? strlen(src) : 0;

    if (n >= size) {
        /* src[n] is the first byte dropped: while it continues a sequence
         * (10xxxxxx), that sequence was cut, so drop it whole. */
        n = size - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    if (n > 0)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

void
outcome_fail(struct outcome *o, enum err_class cls, const char *code,
             const char *message)
{
    o->kind = OUTCOME_FAILURE;
    o->cls = cls;
    copy_truncated(o->code, sizeof(o->code), code);
    copy_truncated(o->message, sizeof(o->message), message);
}
