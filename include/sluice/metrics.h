/*
 * metrics: the Prometheus text exposition format at /metrics
 * (docs/design.md §14), served by libmicrohttpd from its own thread.
 *
 * The one threading rule: the HTTP thread reads only the published text,
 * under the one mutex of struct metrics, and copies it out; everything
 * else (the counters, the rendering, the database) belongs to the loop
 * thread, which renders a new text and swaps it in under that mutex
 * (metrics_refresh). A scrape therefore never touches the database or the
 * lanes, and sees a snapshot at most one refresh old.
 */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "sluice/job.h"

struct metrics;
struct dispatch;
struct store;

/* Whether listen is an address metrics_start takes: an IPv4 literal or a
 * bracketed IPv6 literal, a colon and a port. */
bool metrics_listen_valid(const char *listen);
/* Serves /metrics on listen ("ADDR:PORT", "[ADDR6]:PORT"; config.c has
 * checked the form) until metrics_stop. Returns 0 and *out, or a negative
 * errno with the reason logged (the address is taken, say). */
int metrics_start(const char *listen, struct metrics **out);
/* Stops the server (joins its thread) and frees. NULL accepted. */
void metrics_stop(struct metrics *m);

/* Loop-thread counters, fed by the dispatcher; m NULL does nothing. */

/* A request of provider finished with an answer (or a transport failure)
 * of class cls (ERR_NONE for success). */
void metrics_count_request(struct metrics *m, const char *provider,
                           enum err_class cls);
/* A cost was recorded for a job of provider. */
void metrics_count_cost(struct metrics *m, const char *provider, double cost);
/* A group commit of the outcomes took seconds. */
void metrics_observe_commit(struct metrics *m, double seconds);
/* A claim of new jobs (one statement, or two with polls) took seconds. */
void metrics_observe_claim(struct metrics *m, double seconds);

/* Renders a new snapshot from the counters, the dispatcher's lanes and the
 * store (kept counts and index seeks only: the cost does not grow with the
 * queue), and publishes it. Loop thread only. */
void metrics_refresh(struct metrics *m, struct dispatch *d, struct store *s,
                     int64_t now_ms);

#endif
