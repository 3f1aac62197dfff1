/*
 * clock: the two time sources the daemon reads. Pure policy modules never
 * call these; they take "now" as a parameter so tests can inject it.
 */
#ifndef SLUICE_CLOCK_H
#define SLUICE_CLOCK_H

#include <stdint.h>

/* Wall clock, unix milliseconds (what the database stores). */
int64_t clock_now_ms(void);
/* Monotonic milliseconds since an arbitrary start (CLOCK_MONOTONIC): for
 * measuring spans that a wall-clock step must not stretch or shrink. */
int64_t clock_mono_ms(void);
/* A uniform random double in [0, 1) from a process-wide PRNG seeded from
 * getrandom(); for jitter only, never for keys. */
double clock_random(void);
/* Fills buf with n cryptographically random bytes (getrandom). */
void clock_random_bytes(void *buf, unsigned n);

#endif
