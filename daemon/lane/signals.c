/*
 * What one outcome says to the lane: a success, a capacity loss, a
 * throttle, a hard failure (for the breaker), a dead key (pauses the
 * lane), a shut window. Pure functions of the outcome.
 */
#include <ctype.h>
#include <string.h>

#include "sluice/outcome.h"

#include "internal.h"

bool
signal_success(const struct outcome *o)
{
    return o->kind == OUTCOME_SUCCESS || o->kind == OUTCOME_ACCEPTED;
}

bool
signal_failure(const struct outcome *o, enum err_class c)
{
    return o->kind == OUTCOME_FAILURE && o->cls == c;
}

/* Capacity losses: the provider says it is over its limit or too slow. */
bool
signal_loss(const struct outcome *o)
{
    return o->kind == OUTCOME_FAILURE &&
           (o->cls == ERR_RATE_LIMITED || o->cls == ERR_UNAVAILABLE ||
            o->cls == ERR_TIMEOUT || o->http_status == 408);
}

/* A throttle: a 429, or a 503 with a retry hint. */
bool
signal_throttle(const struct outcome *o, int64_t now_ms)
{
    return signal_failure(o, ERR_RATE_LIMITED) ||
           (signal_failure(o, ERR_UNAVAILABLE) &&
            o->hints.retry_at_ms > now_ms);
}

/* Hard failures for the breaker: the provider is broken, not busy. */
bool
signal_hard_failure(const struct outcome *o)
{
    if (o->kind != OUTCOME_FAILURE)
        return false;
    return o->cls == ERR_SERVER_ERROR || o->cls == ERR_TIMEOUT ||
           o->cls == ERR_NETWORK || o->http_status == 500 ||
           o->http_status == 502 || o->http_status == 504;
}

/* Case-insensitive substring search; ASCII folding is enough for the
 * English words matched here. */
static bool
contains_word(const char *hay, const char *word)
{
    size_t n = strlen(word);

    for (; *hay != '\0'; hay++) {
        size_t i = 0;
        while (i < n && hay[i] != '\0' &&
               tolower((unsigned char)hay[i]) == word[i])
            i++;
        if (i == n)
            return true;
    }
    return false;
}

/* A 403 usually refuses one resource: FLORA's archived technique or
 * read-only key for one operation, Firemoon's "does not have access to
 * provider: kling", Lamatic's flow of another project. Pausing the lane
 * for those would stop every other model on a good key. Only wording that
 * names the key or the account itself pauses the lane. */
static const char *const key_wide_words[] = {
    "invalid_api_key", /* FlowAPI / OpenAI: the key is dead */
    "suspended",       /* Firemoon: "Account suspended" */
    "deactivated",     /* OpenAI-compatible "account_deactivated" */
    "revoked",         /* FLORA: a revoked key */
};

bool
signal_key_failure(const struct outcome *o)
{
    if (signal_failure(o, ERR_AUTH) ||
        signal_failure(o, ERR_INSUFFICIENT_BALANCE))
        return true;
    if (!signal_failure(o, ERR_PERMISSION))
        return false;
    for (size_t i = 0; i < sizeof(key_wide_words) / sizeof(*key_wide_words);
         i++) {
        if (contains_word(o->code, key_wide_words[i]) ||
            contains_word(o->message, key_wide_words[i]))
            return true;
    }
    return false;
}

/* The code when the provider gave one, else the class: for reasons. */
const char *
signal_code(const struct outcome *o)
{
    return o->code[0] != '\0' ? o->code : err_class_name(o->cls);
}

/* The evidence of a shut window in one answer: remaining 0 with a reset on
 * a 429, or Firemoon's resetAt. 0 none. */
int64_t
signal_shut_hint(const struct outcome *o, int64_t now_ms)
{
    if (o->hints.shut_until_ms > now_ms)
        return o->hints.shut_until_ms;
    if (signal_failure(o, ERR_RATE_LIMITED) && o->hints.rl_remaining == 0 &&
        o->hints.rl_reset_ms > now_ms)
        return o->hints.rl_reset_ms;
    return 0;
}
