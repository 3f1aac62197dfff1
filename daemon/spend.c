/*
 * spend: the daemon's spend accounts (spend.h), the glue between the
 * budget policy (budget.c, pure) and the queue.
 *
 * How it works: an account exists for every provider whose config sets a
 * budget and every batch with a row in batches that has one. When the
 * daemon starts to watch an account it reads what the provider or batch
 * has cost so far (store_spend: the spend and the mean) and how many of
 * its jobs are out (running or waiting, from the kept counts): each of
 * those holds a reservation at the mean until it ends. From then on the
 * dispatcher asks the accounts before every claim how many jobs may be
 * claimed at most (spend_admit), then, for each job claimed, whether it
 * fits at its own expected cost, which it then holds (spend_reserve: the
 * run cost its provider states for it, runcost.h, else the mean), and
 * tells them of every job that no longer waits for its cost
 * (spend_on_end), which gives back that job's own reservation.
 *
 * Batch caps come from the database, where sluicectl enqueue --budget
 * writes them: spend_sync reads them again whenever another process has
 * committed (PRAGMA data_version), before the next claim, so a batch
 * enqueued with a budget is never claimed past it. The same read notes
 * which providers each capped batch has unfinished jobs with, so a claim
 * of one provider is limited by its own batches' caps only.
 *
 * store_spend reads the kept spend (job_spend, added to by a trigger in
 * the commit of each cost), so starting to watch an account costs the
 * same at any queue size, and a purge does not give money back.
 *
 * Rejected: a claim per capped batch (the queue's priority order across
 * batches would be lost).
 */
#include <stdlib.h>
#include <string.h>

#include "sluice/budget.h"
#include "sluice/job.h"
#include "sluice/log.h"
#include "sluice/spend.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

struct account {
    char *name; /* provider or batch */
    bool is_batch;
    struct budget b;
    bool resumed;     /* provider: the operator lifted the pause */
    bool paused;      /* last state logged (provider) or written (batch) */
    bool seen;        /* batch: still in batches at the last sync */
    char **providers; /* batch: providers with unfinished jobs in it */
    size_t nproviders;
};

struct spend {
    struct store *store;
    struct account *acc;
    size_t n;
    int64_t version; /* data_version at the last sync */
    bool synced;
    const char **held; /* spend_admit's answer */
    size_t nheld, capheld;
};

struct spend *
spend_new(struct store *s)
{
    struct spend *sp = xcalloc(1, sizeof(*sp));
    sp->store = s;
    return sp;
}

static void
account_clear_providers(struct account *a)
{
    for (size_t i = 0; i < a->nproviders; i++)
        free(a->providers[i]);
    free(a->providers);
    a->providers = NULL;
    a->nproviders = 0;
}

void
spend_free(struct spend *sp)
{
    if (sp == NULL)
        return;
    for (size_t i = 0; i < sp->n; i++) {
        free(sp->acc[i].name);
        account_clear_providers(&sp->acc[i]);
        budget_clear(&sp->acc[i].b);
    }
    free(sp->acc);
    free(sp->held);
    free(sp);
}

static struct account *
find(struct spend *sp, const char *name, bool is_batch)
{
    for (size_t i = 0; i < sp->n; i++)
        if (sp->acc[i].is_batch == is_batch &&
            strcmp(sp->acc[i].name, name) == 0)
            return &sp->acc[i];
    return NULL;
}

struct open_count {
    const char *name;
    bool is_batch;
    long open;
};

static int
on_open_count(const char *provider, const char *batch, enum job_state state,
              long n, void *arg)
{
    struct open_count *c = arg;
    const char *key = c->is_batch ? batch : provider;
    if ((state == JOB_RUNNING || state == JOB_WAITING) && key != NULL &&
        strcmp(key, c->name) == 0)
        c->open += n;
    return 0;
}

/* A new account: what it has cost so far, and its jobs out. */
static struct account *
account_new(struct spend *sp, const char *name, bool is_batch)
{
    struct open_count c = {.name = name, .is_batch = is_batch};
    double spent = 0;
    long costed = 0;

    sp->acc = xrealloc(sp->acc, (sp->n + 1) * sizeof(*sp->acc));
    struct account *a = &sp->acc[sp->n++];
    memset(a, 0, sizeof(*a));
    a->name = xstrdup(name);
    a->is_batch = is_batch;
    budget_init(&a->b, 0);
    if (store_spend(sp->store, is_batch ? NULL : name, is_batch ? name : NULL,
                    &spent, &costed) == 0) {
        a->b.spent = spent;
        a->b.cost_sum = spent;
        a->b.costs = costed;
    }
    /* jobs out already: this account never saw their expectations */
    if (store_counts(sp->store, on_open_count, &c) == 0)
        budget_reserve_anon(&a->b, c.open);
    return a;
}

void
spend_set_provider_budget(struct spend *sp, const char *provider, double budget)
{
    struct account *a = find(sp, provider, false);
    if (a == NULL && budget <= 0)
        return;
    if (a == NULL)
        a = account_new(sp, provider, false);
    if (a->b.cap != budget)
        a->resumed = false;
    a->b.cap = budget;
}

void
spend_resume(struct spend *sp, const char *provider)
{
    struct account *a = find(sp, provider, false);
    if (a == NULL || a->b.cap <= 0)
        return;
    if (budget_exhausted(&a->b))
        log_info("%s: budget %.2f lifted by the operator until the next "
                 "change of budget (spent %.2f)",
                 provider, a->b.cap, a->b.spent);
    a->resumed = true;
}

static void
on_batch_budget(const char *batch, double budget, void *data)
{
    struct spend *sp = data;
    struct account *a = find(sp, batch, true);
    if (a == NULL)
        a = account_new(sp, batch, true);
    a->b.cap = budget;
    a->seen = true;
}

static int
on_batch_providers(const char *provider, const char *batch,
                   enum job_state state, long n, void *arg)
{
    struct spend *sp = arg;
    struct account *a;

    if (batch == NULL || n <= 0 || job_state_terminal(state) ||
        (a = find(sp, batch, true)) == NULL || a->b.cap <= 0)
        return 0;
    for (size_t i = 0; i < a->nproviders; i++)
        if (strcmp(a->providers[i], provider) == 0)
            return 0;
    a->providers =
        xrealloc(a->providers, (a->nproviders + 1) * sizeof(*a->providers));
    a->providers[a->nproviders++] = xstrdup(provider);
    return 0;
}

void
spend_sync(struct spend *sp, bool force)
{
    int64_t v = 0;

    if (store_data_version(sp->store, &v) < 0)
        return;
    if (!force && sp->synced && v == sp->version)
        return;
    for (size_t i = 0; i < sp->n; i++) {
        sp->acc[i].seen = false;
        account_clear_providers(&sp->acc[i]);
    }
    /* a failed read keeps the caps as they were (logged) */
    if (store_batch_budgets(sp->store, on_batch_budget, sp) < 0)
        return;
    for (size_t i = 0; i < sp->n; i++)
        if (sp->acc[i].is_batch && !sp->acc[i].seen)
            sp->acc[i].b.cap = 0; /* lifted: resume --batch */
    if (store_counts(sp->store, on_batch_providers, sp) < 0)
        return;
    sp->version = v;
    sp->synced = true;
}

static bool
has_provider(const struct account *a, const char *provider)
{
    for (size_t i = 0; i < a->nproviders; i++)
        if (strcmp(a->providers[i], provider) == 0)
            return true;
    return false;
}

int
spend_admit(struct spend *sp, const char *provider, int want, double least,
            const char *const **held, size_t *nheld)
{
    struct account *p = find(sp, provider, false);
    long n = want;

    sp->nheld = 0;
    if (p != NULL && p->b.cap > 0 && !p->resumed)
        n = budget_admit(&p->b, n, least);
    for (size_t i = 0; n > 0 && i < sp->n; i++) {
        struct account *a = &sp->acc[i];
        if (!a->is_batch || a->b.cap <= 0 || !has_provider(a, provider))
            continue;
        long k = budget_admit(&a->b, n, least);
        if (k > 0) {
            /* one claim may take jobs of any batch: none may exceed
             * what its own cap admits */
            n = k;
            continue;
        }
        if (sp->nheld == sp->capheld) {
            sp->capheld = sp->capheld ? 2 * sp->capheld : 8;
            sp->held = xrealloc(sp->held, sp->capheld * sizeof(*sp->held));
        }
        sp->held[sp->nheld++] = a->name;
    }
    *held = sp->held;
    *nheld = sp->nheld;
    return (int)n;
}

/* The accounts a job of provider in batch (NULL: none) counts in: the
 * provider's and its batch's, either NULL when there is none. */
static void
accounts_of(struct spend *sp, const struct job *j, struct account **p,
            struct account **b)
{
    *p = find(sp, j->provider, false);
    *b = j->batch != NULL ? find(sp, j->batch, true) : NULL;
}

/* Whether a's cap holds (set, and not lifted by the operator). */
static bool
enforced(const struct account *a)
{
    return a != NULL && a->b.cap > 0 && !a->resumed;
}

bool
spend_capped(struct spend *sp, const struct job *j)
{
    struct account *p, *b;
    accounts_of(sp, j, &p, &b);
    return enforced(p) || enforced(b);
}

bool
spend_reserve(struct spend *sp, const struct job *j, double stated)
{
    struct account *acc[2];
    bool fits = true;

    accounts_of(sp, j, &acc[0], &acc[1]);
    for (int i = 0; i < 2; i++) {
        double e;
        if (!enforced(acc[i]))
            continue;
        e = budget_expected(&acc[i]->b, stated);
        if (!budget_fits(&acc[i]->b, e)) {
            budget_refuse(&acc[i]->b, e);
            fits = false;
        }
    }
    if (!fits)
        return false;
    for (int i = 0; i < 2; i++)
        if (acc[i] != NULL)
            budget_reserve(&acc[i]->b, j->id,
                           budget_expected(&acc[i]->b, stated));
    return true;
}

void
spend_on_end(struct spend *sp, const struct job *j, bool has_cost, double cost)
{
    struct account *acc[2];

    accounts_of(sp, j, &acc[0], &acc[1]);
    for (int i = 0; i < 2; i++)
        if (acc[i] != NULL)
            budget_release(&acc[i]->b, j->id, has_cost, cost);
}

bool
spend_paused(struct spend *sp, const char *provider)
{
    struct account *a = find(sp, provider, false);
    return a != NULL && !a->resumed && budget_exhausted(&a->b);
}

struct blocked {
    struct spend *sp;
    const char *provider;
    long unfinished, held;
};

static int
on_blocked_count(const char *provider, const char *batch, enum job_state state,
                 long n, void *arg)
{
    struct blocked *c = arg;
    struct account *a;

    if (strcmp(provider, c->provider) != 0 || job_state_terminal(state))
        return 0;
    c->unfinished += n;
    if ((state == JOB_QUEUED || state == JOB_RETRYING) && batch != NULL &&
        (a = find(c->sp, batch, true)) != NULL && budget_exhausted(&a->b))
        c->held += n;
    return 0;
}

bool
spend_blocked(struct spend *sp, const char *provider)
{
    struct blocked c = {.sp = sp, .provider = provider};
    if (store_counts(sp->store, on_blocked_count, &c) < 0)
        return false;
    return c.unfinished > 0 && c.unfinished == c.held;
}

void
spend_publish(struct spend *sp, int64_t now_ms)
{
    for (size_t i = 0; i < sp->n; i++) {
        struct account *a = &sp->acc[i];
        bool paused = budget_exhausted(&a->b) && !a->resumed;
        if (paused == a->paused)
            continue;
        if (a->is_batch &&
            store_batch_pause(sp->store, a->name, paused, now_ms) < 0)
            continue; /* logged; tried again next time */
        a->paused = paused;
        if (paused)
            log_info("%s %s: budget %.2f reached (spent %.2f), %s",
                     a->is_batch ? "batch" : "provider", a->name, a->b.cap,
                     a->b.spent, a->is_batch ? "its jobs are held" : "paused");
        else
            log_info("%s %s: under its budget again (%.2f of %.2f)",
                     a->is_batch ? "batch" : "provider", a->name, a->b.spent,
                     a->b.cap);
    }
}

void
spend_foreach(struct spend *sp,
              void (*cb)(const char *provider, const char *batch,
                         const struct budget *b, bool paused, void *data),
              void *data)
{
    for (size_t i = 0; i < sp->n; i++) {
        struct account *a = &sp->acc[i];
        if (a->b.cap <= 0)
            continue;
        cb(a->is_batch ? NULL : a->name, a->is_batch ? a->name : NULL, &a->b,
           budget_exhausted(&a->b) && !a->resumed, data);
    }
}
