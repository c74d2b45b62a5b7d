/* tests/kernels: the kernel tests' seeded random stream (PD_TEST_SEED sets
 * rng_state in main): splitmix64. */
#ifndef PD_KERNEL_RNG_H
#define PD_KERNEL_RNG_H

#include <stdint.h>
#include <stdlib.h>

static uint64_t rng_state;

/* splitmix64 */
static inline uint64_t rnd64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* rng_state from PD_TEST_SEED (default 1); its text, for the report */
static inline const char *rng_seed_from_env(void)
{
    const char *s = getenv("PD_TEST_SEED");
    rng_state = s ? strtoull(s, NULL, 10) : 1;
    return s ? s : "1";
}

#endif
