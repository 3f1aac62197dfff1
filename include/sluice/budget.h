/*
 * budget: the spend-cap policy of a provider or a batch (docs/design.md §13),
 * pure arithmetic on numbers: no clock, no I/O, no names. The daemon keeps one
 * account per capped provider and per capped batch (spend.c) and asks it,
 * before a claim, how many more jobs may go out, and before each send
 * whether that job fits.
 *
 * The rule: every job sent holds a reservation of its own expected cost
 * until its own cost is recorded (or it ends without one), and a job goes
 * out only while the spend plus every reservation plus its own expected
 * cost stays within the cap. A job's expected cost is the run cost its
 * provider states for it, else the running mean of the costs recorded so
 * far; when neither is known, it goes out alone (one job at a time until a
 * first cost is known). So a cap is passed by no more than what the jobs
 * in flight cost beyond their expectation.
 */
#ifndef SLUICE_BUDGET_H
#define SLUICE_BUDGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An expected cost that nobody knows: no stated cost and no mean. */
#define BUDGET_UNKNOWN (-1.0)

/* One job's reservation. */
struct budget_hold {
    int64_t job;   /* the job's id */
    double amount; /* its expected cost; 0 when unknown */
    bool blind;    /* sent with no expected cost (alone) */
};

struct budget {
    double cap;      /* the spend cap; <= 0: none */
    double spent;    /* costs recorded so far */
    double cost_sum; /* sum of the costs known (for the mean) */
    long costs;      /* how many jobs reported a cost */
    long open;       /* jobs sent whose cost is not recorded yet (in
                        flight, or async runs waiting) */
    double reserved; /* the sum of their reservations */
    long blind;      /* of them, sent with no expected cost */
    double next;     /* expected cost of the job last offered (sent or
                        turned away), BUDGET_UNKNOWN before any */
    long anon;       /* open jobs from before this account (a restart):
                        their ids are unknown, each holds anon_each */
    double anon_each;
    struct budget_hold *holds; /* the reservations of jobs by id */
    size_t nholds, capholds;
};

/* A budget with cap (<= 0: none) and nothing spent or open. */
void budget_init(struct budget *b, double cap);
/* Frees the reservations (the numbers stay). */
void budget_clear(struct budget *b);

/* The running mean of the known costs, or BUDGET_UNKNOWN. */
double budget_mean(const struct budget *b);
/* What one job is expected to cost: stated (>= 0) when its provider
 * states a run cost for it, else the mean, else BUDGET_UNKNOWN. */
double budget_expected(const struct budget *b, double stated);
/* At most how many of want jobs may be claimed now, when the cheapest
 * of them is expected to cost least (the lowest stated cost known, or
 * BUDGET_UNKNOWN) or the mean: all of them without a cap; none while a
 * job sent with no expected cost is open; one when no expectation is
 * known and nothing is open. Each job claimed is then asked of
 * budget_fits. */
long budget_admit(const struct budget *b, long want, double least);
/* Whether a job expected to cost expected (BUDGET_UNKNOWN: not known)
 * may go out now: always without a cap; an unknown one only alone; a
 * known one while the spend, the reservations and it stay within the
 * cap, and no job of unknown cost is open. */
bool budget_fits(const struct budget *b, double expected);
/* Whether the cap is reached: the job last offered (or, before any, one
 * at the mean) would not fit even if every open job cost nothing. A
 * capless budget never is. */
bool budget_exhausted(const struct budget *b);
/* What is left under the cap (never negative); 0 without a cap. */
double budget_left(const struct budget *b);

/* job goes out expected to cost expected (budget_expected): it holds
 * that much until budget_release. */
void budget_reserve(struct budget *b, int64_t job, double expected);
/* A job expected to cost expected did not fit (budget_fits) and was
 * not sent: budget_exhausted judges by it. */
void budget_refuse(struct budget *b, double expected);
/* n jobs out before the account existed (a restart, a cap set while
 * they ran): each holds the mean, or counts as of unknown cost. */
void budget_reserve_anon(struct budget *b, long n);
/* job ended: its reservation goes (one of the anonymous ones when job
 * holds none); has_cost: it cost cost (into the spend and the mean). */
void budget_release(struct budget *b, int64_t job, bool has_cost, double cost);

#endif
