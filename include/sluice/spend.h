/*
 * spend: the daemon's spend accounts, one per capped provider and per capped
 * batch, each a budget (budget.h) the dispatcher consults before a claim
 * (docs/design.md §13). A provider at its cap is paused with reason budget; a
 * batch at its cap is held (its jobs are not claimed; the provider's other
 * batches go on), and its row in batches says paused, budget.
 *
 * The spend of an account is read from the database when the daemon
 * starts to watch it (store_spend), then grows with every cost this
 * daemon records. Loop thread only.
 */
#ifndef SLUICE_SPEND_H
#define SLUICE_SPEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct budget;
struct job;
struct store;
struct spend;

struct spend *spend_new(struct store *s);
void spend_free(struct spend *sp); /* NULL accepted */

/* The provider's cap from the config (0: none). A changed cap (a reload)
 * ends an operator's resume of a budget pause. */
void spend_set_provider_budget(struct spend *sp, const char *provider,
                               double budget);
/* An operator's resume of provider: its cap is not enforced until the cap
 * changes or the daemon restarts. */
void spend_resume(struct spend *sp, const char *provider);

/* Reads the batch caps and which capped batches have unfinished jobs of
 * which provider, when another process committed since the last read
 * (force: in any case). Cheap otherwise: one PRAGMA. */
void spend_sync(struct spend *sp, bool force);
/* At most how many of want jobs of provider may be claimed now
 * (0..want), when the cheapest is expected to cost least (the lowest run
 * cost the provider states, or BUDGET_UNKNOWN) or the mean; each job
 * claimed then goes through spend_reserve. *held and *nheld: the capped
 * batches whose jobs must not be claimed (borrowed until the next call);
 * *nheld 0 when none. */
int spend_admit(struct spend *sp, const char *provider, int want, double least,
                const char *const **held, size_t *nheld);
/* Whether a cap applies to j (its provider's or its batch's): only then
 * does its expected cost matter before it is sent. */
bool spend_capped(struct spend *sp, const struct job *j);
/* A claimed job is about to be submitted, its provider stating that it
 * costs stated (BUDGET_UNKNOWN: no stated cost). Returns true when it
 * fits under every cap that applies, and then it holds its expected cost
 * in each of its accounts until spend_on_end; false when it must not go
 * out now (nothing is reserved). */
bool spend_reserve(struct spend *sp, const struct job *j, double stated);
/* A job sent (or polled) no longer waits for its cost: it ended, or went
 * back to the queue; its reservation goes. has_cost: it cost cost. */
void spend_on_end(struct spend *sp, const struct job *j, bool has_cost,
                  double cost);

/* Whether provider's cap is reached (and not resumed): paused, budget. */
bool spend_paused(struct spend *sp, const char *provider);
/* Whether every unfinished job of provider is in a batch held at its cap,
 * so that nothing of it can move (for --drain). */
bool spend_blocked(struct spend *sp, const char *provider);
/* Writes the paused/active state of capped batches that changed. */
void spend_publish(struct spend *sp, int64_t now_ms);

/* Calls cb for every account with a cap: batch NULL for a provider's. */
void spend_foreach(struct spend *sp,
                   void (*cb)(const char *provider, const char *batch,
                              const struct budget *b, bool paused, void *data),
                   void *data);

#endif
