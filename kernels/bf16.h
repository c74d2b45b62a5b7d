/* kernels/bf16.h: bfloat16 <-> float for code that runs on both sides.
 *
 * The same conversions as common/quant.c's pd_bf16_to_f32 / pd_f32_to_bf16
 * (round to nearest even; a NaN stays a quiet NaN), written PD_HD so the CPU
 * reference kernels and the CUDA kernels store and read bf16 KV identically.
 * tests/unit/test_kernel_index.c checks them against common/quant bit for bit.
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

#endif
