/* kernels/qdot: dot products of weight rows kept as stored (quantized or
 * 16-bit) with one step's activations, the CPU's matrix-vector and
 * small-batch kernels (kernels/matmul.c calls them; docs/internals/quant.md).
 *
 *   struct pd_q8 xq[K / 32];
 *   pd_q8_quantize(x, xq, K);                     // activations, 8 bits per 32
 *   pd_qdot_fn *dot = pd_qdot_get(PD_DT_Q4_1, pd_isa_best());
 *   float y = dot(w_row, xq, K);                  // w_row: K elements of Q4_1
 *
 * Quantized weights (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) meet activations
 * quantized per block of 32 to int8 with one float scale (struct pd_q8): the
 * dot of each block is an exact integer, scaled in float, as the formats are
 * meant to be used (llama.cpp's Q8_0/Q8_1/Q8_K activations). 16-bit weights
 * (F16, BF16) meet the float activations themselves (x is float *).
 *
 * Each type has a portable C reference and, on x86-64, AVX2 and AVX-512
 * VNNI versions chosen at run time (pd_isa_best; PD_CPU_ISA=scalar|avx2|
 * avx512vnni in the environment lowers the choice, for tests and benches).
 * The versions compute the same integer block dots; only the order of the
 * float sums differs (tests/kernels: within 1e-5 of the sum of |terms|).
 * Nothing here allocates or keeps state.
 */
#ifndef PD_QDOT_H
#define PD_QDOT_H

#include "quant.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PD_Q8_BLOCK 32

/* 32 activations: x[j] ~ d * q[j], |q| <= 127; sum = q[0] + ... + q[31]
 * (the offset terms of Q4_0, Q4_1 and Q4_K need it) */
struct pd_q8 {
    float d;
    int32_t sum;
    int8_t q[PD_Q8_BLOCK];
};

enum pd_isa {
    PD_ISA_SCALAR = 0, /* portable C, the reference */
    PD_ISA_AVX2, /* AVX2 + FMA + F16C */
    PD_ISA_AVX512VNNI, /* the AVX2 code with VPDPBUSD (AVX-512 VNNI + VL) on 256-bit registers */
    PD_ISA_COUNT,
};

/* weight row w (k elements of its type) . activations x: struct pd_q8[k / 32]
 * for quantized types, float[k] for F16 / BF16. k is a multiple of the
 * type's block (256 for the k-quants). */
typedef float pd_qdot_fn(const void *w, const void *x, uint32_t k);

/* x (k floats, k a multiple of 32) -> q (k / 32 blocks), round to nearest */
void pd_q8_quantize(const float *x, struct pd_q8 *q, uint32_t k);

/* The dot for a weight type on an ISA, with 8-bit activations (x: pd_q8
 * blocks) for quantized types and float ones for F16 / BF16; NULL when the
 * type has none here (F32: kernels/matmul.c uses OpenBLAS). */
pd_qdot_fn *pd_qdot_get(uint32_t type, enum pd_isa isa);
/* The dot for a weight type on an ISA with float activations (x: float[k]),
 * the weights unpacked to float a chunk at a time in L1; NULL as above */
pd_qdot_fn *pd_qdotf_get(uint32_t type, enum pd_isa isa);
/* Rows to float, k elements of type (a multiple of its block): the same
 * values as pd_dequant_row, bit for bit; NULL as above */
typedef void pd_unpack_fn(const void *w, float *out, uint32_t k);
pd_unpack_fn *pd_unpack_get(uint32_t type, enum pd_isa isa);
/* y[i * y_stride] = (row w of k elements of type) . x[i * x_stride .. + k)
 * for i < m <= PD_QDOT_MAX_ROWS, float activations: the row unpacked once
 * for the whole batch (matmul's small batches) */
#define PD_QDOT_MAX_ROWS 32
typedef void pd_qdot_rows_fn(uint32_t type, const void *w, const float *x, size_t x_stride,
                             uint32_t m, uint32_t k, float *y, size_t y_stride);
/* NULL for F32 or an ISA not built in */
pd_qdot_rows_fn *pd_qdot_rows_get(uint32_t type, enum pd_isa isa);
/* Whether type's pd_qdot_get dot takes pd_q8 activations (quantized types) */
bool pd_qdot_takes_q8(uint32_t type);
/* The best ISA this CPU runs (CPUID), lowered by PD_CPU_ISA; decided once */
enum pd_isa pd_isa_best(void);
/* Whether this CPU runs isa (the tests run every version it can) */
bool pd_isa_runs(enum pd_isa isa);
const char *pd_isa_name(enum pd_isa isa);

/* One ISA's versions, by type id (NULL: none): qdot.c's reference, and
 * qdot_x86.c's (pd_qdot_x86: NULL when not built for x86-64) */
struct pd_qdot_tables {
    pd_qdot_fn *q8[PD_DT_COUNT]; /* pd_qdot_get's */
    pd_qdot_fn *f32[PD_DT_COUNT]; /* pd_qdotf_get's */
    pd_unpack_fn *unpack[PD_DT_COUNT];
    pd_qdot_rows_fn *rows; /* for every type with an unpack */
};
const struct pd_qdot_tables *pd_qdot_x86(enum pd_isa isa);

#endif
