/*
 * clock: wall time in unix ms, monotonic time and the jitter source. The
 * PRNG is xoshiro256** seeded from getrandom(): jitter needs speed and
 * spread, not secrecy; keys and owner tokens use clock_random_bytes, which
 * reads getrandom directly.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/random.h>
#include <time.h>

#include "sluice/clock.h"
#include "sluice/log.h"

int64_t
clock_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
clock_random_bytes(void *buf, unsigned n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fatal("getrandom");
        }
        p += r;
        n -= (unsigned)r;
    }
}

static uint64_t state[4];
static int seeded;

static uint64_t
rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

double
clock_random(void)
{
    if (!seeded) {
        clock_random_bytes(state, sizeof(state));
        seeded = 1;
    }
    uint64_t result = rotl(state[1] * 5, 7) * 9;
    uint64_t t = state[1] << 17;
    state[2] ^= state[0];
    state[3] ^= state[1];
    state[1] ^= state[2];
    state[0] ^= state[3];
    state[2] ^= t;
    state[3] = rotl(state[3], 45);
    /* 53 high bits → a double in [0, 1). */
    return (double)(result >> 11) * 0x1.0p-53;
}
