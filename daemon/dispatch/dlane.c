/*
 * A provider's lane as the dispatcher holds it: what it copied out of the
 * config (so a reload may free the config while requests are in flight),
 * its lane.h state, and the count of waiting runs the database keeps.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/clock.h"
#include "sluice/config.h"
#include "sluice/cost.h"
#include "sluice/dialect.h"
#include "sluice/lane.h"
#include "sluice/log.h"
#include "sluice/outputs.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

#include "internal.h"

/* Copies everything the lane needs out of the config, so the config may be
 * freed after a reload while requests are still in flight. */
int
dlane_apply(struct dlane *dl, const struct provider_config *pc)
{
    char err[256];
    char *key = config_api_key(pc, err, sizeof(err));
    if (key == NULL) {
        log_error("provider %s: %s", pc->name, err);
        return -EINVAL;
    }
    const struct dialect *dia = dialect_find(pc->dialect);
    if (dia == NULL) {
        free(key);
        log_error("provider %s: unknown dialect %s", pc->name, pc->dialect);
        return -EINVAL;
    }

    char **h = xcalloc(pc->nheaders + 2, sizeof(char *));
    size_t n = 0;
    if (pc->auth == AUTH_BEARER)
        h[n++] = xasprintf("Authorization: Bearer %s", key);
    else if (pc->auth == AUTH_HEADER)
        h[n++] = xasprintf("%s: %s", pc->auth_header, key);
    for (size_t i = 0; i < pc->nheaders; i++)
        h[n++] = xstrdup(pc->headers[i]);
    h[n] = NULL;
    /* The key lives only in the header lines from here on. */
    explicit_bzero(key, strlen(key));
    free(key);

    free(dl->base_url);
    free(dl->request_id_header);
    free(dl->idem_name);
    free_strv(dl->headers);
    dl->base_url = xstrdup(pc->base_url);
    dl->dialect = dia;
    dl->request_id_header = xstrdup(pc->request_id_header);
    dl->headers = h;
    dl->idem = pc->idem;
    dl->idem_name = xstrdup(pc->idem_name);
    dl->policy.retry.max_attempts = pc->max_attempts;
    dl->policy.retry.max_deferrals = pc->max_deferrals;
    dl->policy.retry.base_ms = pc->backoff_base_ms;
    dl->policy.retry.cap_ms = pc->backoff_cap_ms;
    dl->policy.poll_interval_ms = pc->poll_interval_ms;
    dl->policy.poll_interval_max_ms = pc->poll_interval_max_ms;
    dl->policy.base_url = dl->base_url;
    dl->policy.idem_none = pc->idem == IDEM_NONE;
    dl->timeout_ms = pc->timeout_ms;
    dl->connect_timeout_ms = pc->connect_timeout_ms;
    dl->max_response = pc->max_response;
    dl->concurrency_max = pc->concurrency_max;
    dl->outputs_download = pc->outputs_download;
    free_strv(dl->output_pointers);
    dl->output_pointers = xcalloc(pc->noutput_pointers + 1, sizeof(char *));
    for (size_t i = 0; i < pc->noutput_pointers; i++)
        dl->output_pointers[i] = xstrdup(pc->output_pointers[i]);
    free(dl->cost_pointer);
    dl->cost_pointer = xstrdup(pc->cost_pointer);
    dl->token_price = pc->token_price;
    return 0;
}

void
dlane_params(const struct provider_config *pc, int saved_limit,
             struct lane_params *lp)
{
    memset(lp, 0, sizeof(*lp));
    lp->concurrency_start =
        saved_limit > 0 && pc->adaptive ? saved_limit : pc->concurrency_start;
    lp->concurrency_max = pc->concurrency_max;
    lp->adaptive = pc->adaptive;
    lp->rate_per_s = pc->rate_per_s;
    lp->tokens_per_min = pc->tokens_per_s * 60.0;
    lp->probe_interval_ms = pc->probe_interval_ms;
}

struct dlane *
dlane_new(struct dispatch *d, const struct provider_config *pc)
{
    struct dlane *dl = xcalloc(1, sizeof(*dl));
    struct lane_params lp;
    int saved = 0;
    int64_t resume = 0;

    if (dlane_apply(dl, pc) < 0) {
        free(dl);
        return NULL;
    }
    dl->name = xstrdup(pc->name);
    store_provider_get(d->store, pc->name, &saved, &resume);
    dlane_params(pc, saved, &lp);
    dl->lane = lane_new(pc->name, &lp, clock_now_ms());
    /* Runs of the last life occupy the provider from the start. */
    long waiting = 0;
    if (dl->dialect->async &&
        store_count_waiting(d->store, pc->name, &waiting) == 0 && waiting > 0)
        lane_on_waiting(dl->lane, (int)waiting);
    dl->resume_seen = resume;
    dl->next_check_ms = 0;
    dl->recorded_due_ms = NEVER;
    dl->committing_due_ms = NEVER;
    dl->slots_put = -1;
    return dl;
}

void
dlane_free(struct dlane *dl)
{
    if (dl == NULL)
        return;
    free(dl->name);
    free(dl->base_url);
    free(dl->request_id_header);
    free(dl->idem_name);
    free_strv(dl->headers);
    free_strv(dl->output_pointers);
    free(dl->cost_pointer);
    lane_free(dl->lane);
    free(dl);
}

struct dlane *
dlane_find(struct dispatch *d, const char *name)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next)
        if (strcmp(dl->name, name) == 0)
            return dl;
    return NULL;
}

/* The database is the truth about waiting runs: after a restart (runs of
 * the last life), or an operator's cancel of a run between polls, the
 * lane's count follows it. */
void
dlane_reconcile_waiting(struct dispatch *d)
{
    for (struct dlane *dl = d->lanes; dl; dl = dl->next) {
        long n = 0;
        if (dl->removed || !dl->dialect->async ||
            store_count_waiting(d->store, dl->name, &n) < 0)
            continue;
        if (n != lane_waiting(dl->lane))
            lane_on_waiting(dl->lane, (int)n - lane_waiting(dl->lane));
    }
}
