/*
 * fuzz_jobspec: one JSONL job line, as sluicectl enqueue reads it, against
 * providers with and without a base path, with and without --unique.
 * Besides the sanitizers, it aborts on a row that breaks the rules of the
 * request builder: an idempotency key or a path outside visible ASCII
 * (docs/design.md §4: nothing from a job reaches a header unchecked), a
 * path the daemon could not resolve on the provider's origin, a rejection
 * without a message naming the field. And on any difference from
 * jobspec_parse_jansson, the reference its one-pass reader (canon.h) must
 * match: the same result, the same error, the same row byte for byte (the
 * random keys of --unique aside).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/config.h"
#include "sluice/jobspec.h"
#include "sluice/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct provider_config fuzz_providers[] = {
    {.name = "flowapi", .base_url = "https://api.flowapi.example/v1",
     .max_attempts = 5},
    {.name = "local", .base_url = "http://127.0.0.1:8080", .max_attempts = 3},
};
static const struct config fuzz_config = {
    .providers = fuzz_providers,
    .nproviders = sizeof(fuzz_providers) / sizeof(fuzz_providers[0]),
};

static int
fuzz_visible(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
            return 0;
    }
    return 1;
}

static void
fuzz_check(const struct jobspec *j)
{
    const struct provider_config *p = config_provider(&fuzz_config,
                                                      j->provider);
    char *url = NULL;

    if (p == NULL || j->path == NULL || j->method == NULL ||
        j->idempotency_key == NULL)
        abort();
    if (!fuzz_visible(j->idempotency_key) || !fuzz_visible(j->path))
        abort();
    if (url_resolve(p->base_url, j->path, &url) != 0)
        abort();
    free(url);
}

static int
fuzz_same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* The row jobspec_parse made (rc, err) as jansson alone makes it. */
static void
fuzz_check_reference(const uint8_t *data, size_t size,
                     const struct jobspec_opts *o, int rc,
                     const struct jobspec *j, const char *err)
{
    struct jobspec r;
    char rerr[256] = "";
    int rrc = jobspec_parse_jansson((const char *)data, size, o, &r, rerr,
                                    sizeof(rerr));

    if (rrc != rc)
        abort();
    if (rc < 0) {
        if (strcmp(err, rerr) != 0)
            abort();
        return;
    }
    if (!fuzz_same(j->provider, r.provider) || !fuzz_same(j->batch, r.batch) ||
        !fuzz_same(j->custom_id, r.custom_id) ||
        !fuzz_same(j->method, r.method) || !fuzz_same(j->path, r.path) ||
        !fuzz_same(j->body, r.body) || j->priority != r.priority ||
        j->max_attempts != r.max_attempts ||
        (!o->unique && !fuzz_same(j->idempotency_key, r.idempotency_key)))
        abort();
    jobspec_clear(&r);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int unique = 0; unique < 2; unique++) {
        struct jobspec_opts o = {.config = &fuzz_config,
                                 .provider = unique ? "local" : "flowapi",
                                 .batch = "fuzz", .unique = unique};
        struct jobspec j;
        char err[256];

        int rc;

        err[0] = '\0';
        rc = jobspec_parse((const char *)data, size, &o, &j, err, sizeof(err));
        fuzz_check_reference(data, size, &o, rc, &j, err);
        if (rc == 0) {
            fuzz_check(&j);
            jobspec_clear(&j);
        } else if (err[0] == '\0' || strchr(err, ':') == NULL) {
            abort();
        }
    }
    return 0;
}
