/*
 * fuzz_hints: one header value through every hint parser: the three
 * parsers of hints.h directly, then hints_from_response with the value in
 * each hint header alone, and in all of them at once (with the value as
 * the Date too, so date-relative conversions see garbage on both sides).
 * Besides the sanitizers, it aborts on a hint that breaks the contract:
 * a retry time before now or beyond HINT_CAP_MS, a negative delay, a
 * window or reset below 0.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/hints.h"
#include "sluice/http.h"

/* A fixed "now" keeps runs reproducible. */
#define FUZZ_NOW 1761215355000LL

static const char *const fuzz_names[] = {
    "retry-after-ms",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Date",
};
#define FUZZ_NNAMES (sizeof(fuzz_names) / sizeof(fuzz_names[0]))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_check(const struct hints *h)
{
    if (h->retry_at_ms != 0 && h->retry_at_ms < FUZZ_NOW)
        abort();
    /* no hint pushes anything more than a day ahead */
    if (h->retry_at_ms > FUZZ_NOW + HINT_CAP_MS ||
        h->rl_reset_ms > FUZZ_NOW + HINT_CAP_MS)
        abort();
    if (h->rl_window_ms < 0 || h->rl_reset_ms < 0)
        abort();
}

static void
fuzz_response(struct http_header *headers, size_t n)
{
    struct http_response r;
    struct hints h;

    memset(&r, 0, sizeof(r));
    r.status = 429;
    r.headers = headers;
    r.nheaders = n;
    hints_from_response(&r, FUZZ_NOW, &h);
    fuzz_check(&h);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct http_header all[FUZZ_NNAMES];
    char *value = malloc(size + 1);
    int64_t ms;

    memcpy(value, data, size);
    value[size] = '\0';

    hints_parse_http_date(value, &ms);
    hints_parse_iso8601(value, &ms);
    if (hints_parse_retry_after(value, FUZZ_NOW, &ms) == 0 && ms < 0)
        abort();

    for (size_t i = 0; i < FUZZ_NNAMES; i++) {
        all[i].name = (char *)fuzz_names[i];
        all[i].value = value;
        fuzz_response(&all[i], 1);
    }
    fuzz_response(all, FUZZ_NNAMES);
    free(value);
    return 0;
}
