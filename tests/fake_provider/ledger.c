/*
 * ledger: what the fake provider remembers per idempotency key (requests,
 * executions, replays, the first body's digest, the script, the stored
 * response) and its async runs. Keys live in a chained hash table that
 * doubles at load 1, since benchmarks push a million keys through; runs
 * are numbered, so an array indexed by number is enough. The caller holds
 * struct fake's mutex.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake.h"

/* Starting bucket count; doubles whenever entries reach it. */
#define LEDGER_INITIAL_BUCKETS 1024

static size_t
hash(const char *s)
{
    /* FNV-1a: simple and good enough for keys we generate ourselves. */
    size_t h = 14695981039346656037ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static void
ledger_grow(struct ledger *l)
{
    size_t n = l->nbuckets ? l->nbuckets * 2 : LEDGER_INITIAL_BUCKETS;
    struct ledger_entry **b = calloc(n, sizeof(*b));

    if (b == NULL)
        abort();
    for (size_t i = 0; i < l->nbuckets; i++) {
        struct ledger_entry *e = l->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            size_t k = hash(e->key) % n;
            e->next = b[k];
            b[k] = e;
        }
    }
    free(l->buckets);
    l->buckets = b;
    l->nbuckets = n;
}

struct ledger_entry *
ledger_get(struct ledger *l, const char *key)
{
    struct ledger_entry *e;
    size_t k;

    if (l->nentries >= l->nbuckets)
        ledger_grow(l);
    k = hash(key) % l->nbuckets;
    for (e = l->buckets[k]; e; e = e->next) {
        if (strcmp(e->key, key) == 0)
            return e;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL || (e->key = strdup(key)) == NULL)
        abort();
    e->next = l->buckets[k];
    l->buckets[k] = e;
    l->nentries++;
    return e;
}

long
ledger_run_new(struct ledger *l, long polls_needed, json_t *then)
{
    struct ledger_run *r;

    if (l->nruns == l->runs_cap) {
        l->runs_cap = l->runs_cap ? l->runs_cap * 2 : 64;
        l->runs = realloc(l->runs, l->runs_cap * sizeof(*l->runs));
        if (l->runs == NULL)
            abort();
    }
    r = &l->runs[l->nruns++];
    r->polls = 0;
    r->polls_needed = polls_needed;
    r->then = then ? json_deep_copy(then) : NULL;
    return (long)l->nruns;
}

struct ledger_run *
ledger_run(struct ledger *l, long n)
{
    if (n < 1 || (size_t)n > l->nruns)
        return NULL;
    return &l->runs[n - 1];
}

json_t *
ledger_keys_json(const struct ledger *l)
{
    json_t *keys = json_object();

    for (size_t i = 0; i < l->nbuckets; i++) {
        for (struct ledger_entry *e = l->buckets[i]; e; e = e->next) {
            if (e->hidden)
                continue;
            json_object_set_new(keys, e->key,
                                json_pack("{s:I, s:I, s:I}", "requests",
                                          (json_int_t)e->requests, "executions",
                                          (json_int_t)e->executions, "replays",
                                          (json_int_t)e->replays));
        }
    }
    return keys;
}

void
ledger_clear(struct ledger *l)
{
    for (size_t i = 0; i < l->nbuckets; i++) {
        struct ledger_entry *e = l->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            free(e->key);
            json_decref(e->script);
            free(e->stored_body);
            free(e);
        }
    }
    free(l->buckets);
    for (size_t i = 0; i < l->nruns; i++)
        json_decref(l->runs[i].then);
    free(l->runs);
    memset(l, 0, sizeof(*l));
}
