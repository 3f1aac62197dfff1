/*
 * liveness: which daemons sharing a database are alive (docs/design.md §11).
 *
 * Each sluiced joins as a random owner token (its jobs' lease_owner), with
 * a row in the daemons table, an flock held on <database>.daemons/
 * <token>.lock for as long as the process lives, and a heartbeat written
 * every LIVENESS_BEAT_MS. Another daemon judges it dead only on proof:
 *
 *   - its lock file exists and is not locked: the process is gone (the
 *     kernel drops an flock with the last descriptor; PID namespaces and
 *     hostnames do not matter, only the shared file system);
 *   - or, with no lock file to look at (another host on PostgreSQL, a
 *     directory it could not write), its heartbeat_at has not changed for
 *     heartbeat_timeout of the judge's own monotonic clock, during which the
 *     judge itself committed heartbeats (so a database locked for everyone
 *     condemns no one). heartbeat_at is never compared with a wall clock,
 *     so no clock step on either side reclaims a live daemon.
 *
 * A lock that is held proves the owner alive, however old its heartbeat.
 * A dead daemon's row and leases go in one transaction (store_daemon_reap),
 * which re-checks the heartbeat under the write lock.
 */
#ifndef SLUICE_LIVENESS_H
#define SLUICE_LIVENESS_H

#include <stdint.h>

struct store;
struct liveness;

/* How often a daemon beats (the dispatcher's housekeeping period). */
#define LIVENESS_BEAT_MS 1000

/* Joins the daemons sharing s: a new random owner token, its lock file
 * beside database (none for ":memory:" or a URI: heartbeat only) and its
 * row. timeout_ms is how long another daemon's heartbeat must stand still
 * before it is judged dead. now_ms is the wall clock (what is stored; the
 * clocks are parameters so tests can step them). Returns 0 and *out, or a
 * negative errno with the reason logged. */
int liveness_join(struct store *s, const char *database, int64_t timeout_ms,
                  int64_t now_ms, struct liveness **out);
/* The owner token claims are made under: 32 hex digits. Borrowed; it
 * changes when liveness_beat rejoins. */
const char *liveness_owner(const struct liveness *l);
/* The heartbeat. When this daemon's row is gone (another daemon judged it
 * dead and took its leases back), it rejoins under a new token, so the
 * outcomes of requests claimed under the old one are not written. Returns
 * 0, or a negative errno (-EBUSY: locked, beat again later). */
int liveness_beat(struct liveness *l, int64_t now_ms);
/* Judges the other daemons and takes back what the dead ones held; mono_ms
 * is a monotonic clock (clock_mono_ms), the only one verdicts are measured
 * on. *n = jobs returned to the queue. Returns 0 or a negative errno. */
int liveness_reap(struct liveness *l, int64_t now_ms, int64_t mono_ms,
                  long *n);
/* How many other daemons were registered at the last liveness_reap: 0
 * means this one is alone on the database (nothing to share). */
int liveness_peers(const struct liveness *l);
/* A clean stop: takes back whatever this daemon still holds (nothing once
 * its work is recorded), deletes its row and lock file. NULL accepted. */
void liveness_leave(struct liveness *l, int64_t now_ms);

#endif
