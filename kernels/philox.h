/* kernels/philox.h: Philox4x32-10 (Salmon et al., "Parallel random numbers: as
 * easy as 1, 2, 3", SC'11), the counter-based generator behind sampling.
 *
 * Sampling randomness is a pure function of (request seed, position): the
 * key is the 64-bit seed, the counter is (position, stream, 0, 0). The same
 * token is drawn on the CPU and the GPU, solo or in any batch, locally or
 * disaggregated (DESIGN.md "Numerics and sampling"). Checked against the
 * Random123 known-answer vectors in tests/unit/test_sampler.c.
 */
#ifndef PD_PHILOX_H
#define PD_PHILOX_H

#include "pd_kernel.h"

struct pd_philox_out {
    uint32_t v[4];
};

PD_HD uint32_t pd_mulhilo32(uint32_t a, uint32_t b, uint32_t *hi)
{
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

PD_HD struct pd_philox_out pd_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = pd_mulhilo32(0xD2511F53u, c0, &hi0);
        uint32_t lo1 = pd_mulhilo32(0xCD9E8D57u, c2, &hi1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    struct pd_philox_out o = {{c0, c1, c2, c3}};
    return o;
}

/* Streams: independent uses of one (seed, position). */
enum { PD_RNG_SAMPLE = 0 };

/* A uniform float in [0, 1) with 24 random bits, for (seed, position, stream). */
PD_HD float pd_rng_uniform(uint64_t seed, uint32_t position, uint32_t stream)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t ctr[4] = {position, stream, 0, 0};
    struct pd_philox_out o = pd_philox4x32_10(ctr, key);
    return (float)(o.v[0] >> 8) * (1.0f / 16777216.0f);
}

#endif
