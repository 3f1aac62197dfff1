/*
 * budget: the spend-cap policy of a provider or a batch (docs/design.md §13),
 * pure arithmetic on numbers: no clock, no I/O, no names. The daemon keeps one
 * account per capped provider and per capped batch (spend.c) and asks it,
 * before a claim, how many more jobs may go out.
 *
 * The rule: every job sent reserves its expected cost until its own cost
 * is recorded (or it ends without one), and a job goes out only while the
 * spend plus every reservation plus its own expected cost stays within the
 * cap. The expected cost is the running mean of the costs recorded so far;
 * until a first cost is known, one job at a time. So a cap is passed by no
 * more than what the jobs in flight cost beyond their expectation.
 */
#ifndef SLUICE_BUDGET_H
#define SLUICE_BUDGET_H

#include <stdbool.h>

struct budget {
    double cap;      /* the spend cap; <= 0: none */
    double spent;    /* costs recorded so far */
    double cost_sum; /* sum of the costs known (for the mean) */
    long costs;      /* how many jobs reported a cost */
    long open;       /* jobs sent whose cost is not recorded yet (in
                        flight, or async runs waiting) */
};

/* The cost one more job is expected to have: the mean of the known costs,
 * or 0 while none is known. */
double budget_expected(const struct budget *b);
/* How many of want jobs may be sent now: all of them without a cap;
 * with one, those whose expected cost fits beside the spend and the
 * reservations of the open jobs; while no cost is known, 1 when nothing
 * is open, else 0. */
long budget_admit(const struct budget *b, long want);
/* Whether the cap is reached: not even one more job fits, whatever the
 * open jobs turn out to cost. A capless budget never is. */
bool budget_exhausted(const struct budget *b);
/* What is left under the cap (never negative); 0 without a cap. */
double budget_left(const struct budget *b);

/* n jobs went out: each reserves until budget_on_end. */
void budget_on_send(struct budget *b, long n);
/* An open job ended: its reservation goes; has_cost: it cost cost (into
 * the spend and the mean). */
void budget_on_end(struct budget *b, bool has_cost, double cost);

#endif
