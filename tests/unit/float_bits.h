/* A float's IEEE-754 bit pattern and back, for tests that check rounding bit
 * for bit. Test-only; shared by test_quant and test_kernel_index. */
#ifndef PD_TEST_FLOAT_BITS_H
#define PD_TEST_FLOAT_BITS_H

#include <stdint.h>
#include <string.h>

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

#endif
