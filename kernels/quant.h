/* kernels/quant: tensor element types (ggml numbering, as stored in GGUF),
 * their block geometry, and conversion to and from float.
 *
 *   const struct pd_dtype_info *ti = pd_dtype_info(PD_DT_Q4_1);
 *   size_t nbytes;
 *   if (pd_dtype_row_size(PD_DT_Q4_1, ne0, &nbytes) < 0) ...   // ne0 not a multiple of 32
 *   pd_dequant_row(PD_DT_Q4_1, src, dst, ne0);                // dst: float[ne0]
 *
 * Every type GGUF files commonly carry is known (so a file can be validated
 * and a refusal can name the type), but only the types in PD_DT_COMPUTE_MASK
 * can be converted; pd_dtype_supported() tells. Nothing here allocates.
 */
#ifndef PD_QUANT_H
#define PD_QUANT_H

#include <stddef.h>
#include <stdint.h>

enum pd_dtype {
    PD_DT_F32 = 0,
    PD_DT_F16 = 1,
    PD_DT_Q4_0 = 2,
    PD_DT_Q4_1 = 3,
    PD_DT_Q5_0 = 6,
    PD_DT_Q5_1 = 7,
    PD_DT_Q8_0 = 8,
    PD_DT_Q8_1 = 9,
    PD_DT_Q2_K = 10,
    PD_DT_Q3_K = 11,
    PD_DT_Q4_K = 12,
    PD_DT_Q5_K = 13,
    PD_DT_Q6_K = 14,
    PD_DT_Q8_K = 15,
    PD_DT_I8 = 24,
    PD_DT_I16 = 25,
    PD_DT_I32 = 26,
    PD_DT_I64 = 27,
    PD_DT_F64 = 28,
    PD_DT_BF16 = 30,
    PD_DT_COUNT = 31, /* one past the largest id in the table */
};

struct pd_dtype_info {
    const char *name; /* "Q4_1"; NULL for ids that name no type we know */
    uint32_t block; /* elements per block */
    uint32_t bytes; /* bytes per block */
    int supported; /* pd_dequant_row/pd_quant_row handle it */
};

/* NULL for an unknown id. */
const struct pd_dtype_info *pd_dtype_info(uint32_t type);
int pd_dtype_supported(uint32_t type);
/* "Q4_1" etc., or "type#N" in a static buffer-free form ("unknown") for bad ids. */
const char *pd_dtype_name(uint32_t type);
/* Parse "f32", "F16", "bf16", "q8_0" ... -> type id; -EINVAL if unknown. */
int pd_dtype_parse(const char *s);

/* Bytes of a row of ne0 elements. -EINVAL if the type is unknown or ne0 is
 * not a multiple of its block size; -EOVERFLOW if it does not fit. */
int pd_dtype_row_size(uint32_t type, uint64_t ne0, uint64_t *nbytes);

/* src: one row of n elements of `type` (n a multiple of the block size);
 * dst: float[n]. Returns 0 or -ENOTSUP for types not supported. src need not
 * be aligned. */
int pd_dequant_row(uint32_t type, const void *src, float *dst, uint64_t n);

/* float -> F32/F16/BF16 (round to nearest even; NaN stays NaN). Quantized
 * targets are not written here (weights arrive quantized). -ENOTSUP otherwise. */
int pd_quant_row(uint32_t type, const float *src, void *dst, uint64_t n);

float pd_f16_to_f32(uint16_t h);
uint16_t pd_f32_to_f16(float f);
float pd_bf16_to_f32(uint16_t h);
uint16_t pd_f32_to_bf16(float f);

#endif
