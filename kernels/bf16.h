/* kernels/bf16.h: the 16-bit float formats (bfloat16, IEEE half) <-> float
 * for code that runs on both sides.
 *
 * Round to nearest even; a NaN stays a quiet NaN; half overflows to
 * infinity and keeps subnormals. Written PD_HD so the CPU reference kernels
 * and the CUDA kernels store and read 16-bit KV identically; kernels/quant.c's
 * pd_bf16_to_f32 / pd_f32_to_f16 ... are these. tests/unit/test_kernel_index.c
 * checks them against the compiler's _Float16 and an independent rounding.
 */
#ifndef PD_BF16_H
#define PD_BF16_H

#include "pd_kernel.h"

#include <string.h>

PD_HD float pd_bf16_decode(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

PD_HD uint16_t pd_bf16_encode(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

PD_HD float pd_f16_decode(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    float f;

    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal: normalise the mantissa */
        uint32_t e = 0;
        while ((man & 0x400u) == 0) {
            man <<= 1;
            e++;
        }
        bits = sign | ((113 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

PD_HD uint16_t pd_f16_encode(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t absx = x & 0x7fffffffu;

    if (absx > 0x7f800000u)
        return sign | 0x7e00u; /* nan */
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00u;
    if (absx < 0x38800000u) {
        /* subnormal or zero: shift the whole mantissa and round */
        if (absx < 0x33000000u) /* below half the smallest subnormal */
            return sign;
        const uint32_t shift = 126 - (absx >> 23);
        const uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (absx >> 13) - (112u << 10);
    const uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1)))
        r++;
    return (uint16_t)(sign | r);
}

#endif
