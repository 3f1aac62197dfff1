/*
 * Permits shared with other daemons on the database (permit.h): what this
 * daemon publishes about a provider, and the slots it gives back.
 */
#include <stdlib.h>
#include <string.h>

#include "sluice/lane.h"
#include "sluice/liveness.h"
#include "sluice/permit.h"
#include "sluice/store.h"
#include "sluice/storeq.h"
#include "sluice/xmalloc.h"

#include "internal.h"

/* What this daemon publishes about the provider: its configured cap and
 * the rate its lane paces at when that rate is the provider's (configured
 * or advertised). A learned rate is not shared: it is what this daemon's
 * own share delivered, a fraction of the provider's. */
void
permits_view_of(const struct dlane *dl, struct permit_view *v)
{
    const char *src = lane_rate_source(dl->lane);
    v->cap = dl->concurrency_max;
    v->rate = strcmp(src, "configured") == 0 || strcmp(src, "advertised") == 0
                  ? lane_rate(dl->lane)
                  : 0;
}

/* Gives back the slots of requests that finished since the last take, so
 * other daemons may use them (a loop turn after the answer). Alone on the
 * database, only the housekeeping tick does (force): a stale count is
 * only ever too high, which costs a daemon that joins a second at most. */
struct put_ctx {
    struct dispatch *d;
    struct dlane *dl;
    int slots;
};

static void
on_put(int rc, void *arg)
{
    struct put_ctx *x = arg;

    x->dl->putting--;
    if (rc == 0) {
        x->dl->slots_put = x->slots;
        x->dl->unmet_put = false;
    }
    if (x->d->stopping)
        dispatch_maybe_stopped(x->d);
    free(x);
}

/* Sets our slots of dl's provider to slots and gives tokens granted but
 * not used back to its bucket (store_permit_put, on storeq). */
void
permits_put(struct dispatch *d, struct dlane *dl, int slots, int tokens)
{
    struct put_ctx *x = xcalloc(1, sizeof(*x));
    x->d = d;
    x->dl = dl;
    x->slots = slots;
    dl->putting++;
    storeq_put(d->q, dl->name, liveness_owner(d->live), slots, tokens, on_put,
               x);
}

void
permits_sync(struct dispatch *d, struct dlane *dl, bool force)
{
    int in_flight = lane_in_flight(dl->lane);
    if (dl->slots_put < 0 || (dl->slots_put == in_flight && !dl->unmet_put) ||
        (!force && liveness_peers(d->live) == 0) || dl->claiming ||
        dl->putting > 0)
        return;
    permits_put(d, dl, in_flight, 0);
}
