/*
 * fuzz_config: a whole config file through the parser sluiced and
 * sluicectl use. Besides the sanitizers, it aborts when an accepted config
 * breaks what the daemon relies on: a provider without a name, dialect or
 * base_url, an extra header the request builder would refuse
 * (docs/design.md §4), or a rejection without a message naming the file.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/config.h"
#include "sluice/http.h"
#include "sluice/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    struct config *c = NULL;
    char err[512];

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    err[0] = '\0';
    if (config_load_string(text, "fuzz.conf", &c, err, sizeof(err)) == 0) {
        for (size_t i = 0; i < c->nproviders; i++) {
            const struct provider_config *p = &c->providers[i];
            if (p->name == NULL || p->dialect == NULL || p->base_url == NULL ||
                url_origin_len(p->base_url) == 0)
                abort();
            for (size_t h = 0; h < p->nheaders; h++) {
                if (!http_header_ok(p->headers[h]))
                    abort();
            }
        }
        config_free(c);
    } else if (strncmp(err, "fuzz.conf", 9) != 0) {
        abort();
    }
    free(text);
    return 0;
}
