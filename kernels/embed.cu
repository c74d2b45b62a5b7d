/* kernels/embed.cu: one thread block per token, each thread dequantizes
 * elements of the row exactly as kernels/quant.c does. Rows of quantized
 * types are 18/20/34-byte blocks with no alignment, so every element is
 * assembled from bytes; the embedding is a gather of a few rows per step, not
 * worth wider loads. */
#include "cuda_check.cuh"
#include "embed.h"
#include "quant.h"

#include <cuda_fp16.h>

#define EMBED_THREADS 256

__device__ __forceinline__ uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

__device__ __forceinline__ float f16(const uint8_t *p)
{
    return __half2float(__ushort_as_half(rd16(p)));
}

__device__ __forceinline__ float dequant_one(const uint8_t *row, uint32_t type, uint32_t i)
{
    const uint32_t b = i / 32, j = i % 32;
    switch (type) {
    case PD_DT_F32: {
        const uint8_t *p = row + 4 * (uint64_t)i;
        return __uint_as_float((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                               (uint32_t)p[3] << 24);
    }
    case PD_DT_F16:
        return f16(row + 2 * (uint64_t)i);
    case PD_DT_BF16:
        return __uint_as_float((uint32_t)rd16(row + 2 * (uint64_t)i) << 16);
    case PD_DT_Q4_0: {
        const uint8_t *blk = row + 18 * (uint64_t)b;
        const int q = j < 16 ? (blk[2 + j] & 0x0f) : (blk[2 + j - 16] >> 4);
        return (float)(q - 8) * f16(blk);
    }
    case PD_DT_Q4_1: {
        const uint8_t *blk = row + 20 * (uint64_t)b;
        const int q = j < 16 ? (blk[4 + j] & 0x0f) : (blk[4 + j - 16] >> 4);
        return (float)q * f16(blk) + f16(blk + 2);
    }
    default: /* PD_DT_Q8_0; the launcher admits nothing else */
        return (float)(int8_t)row[34 * (uint64_t)b + 2 + j] * f16(row + 34 * (uint64_t)b);
    }
}

__global__ void __launch_bounds__(EMBED_THREADS) embed_kernel(struct pd_embed_args p)
{
    const uint8_t *row = (const uint8_t *)p.table + (uint64_t)p.tokens[blockIdx.x] * p.row_bytes;
    float *y = p.out + (uint64_t)blockIdx.x * p.dim;
    for (uint32_t i = threadIdx.x; i < p.dim; i += EMBED_THREADS)
        y[i] = dequant_one(row, p.type, i);
}

extern "C" int pd_embed_cuda(const struct pd_embed_args *a, pd_stream_t stream)
{
    switch (a->type) {
    case PD_DT_F32:
    case PD_DT_F16:
    case PD_DT_BF16:
        break;
    case PD_DT_Q4_0:
    case PD_DT_Q4_1:
    case PD_DT_Q8_0:
        if (a->dim % 32)
            return -EINVAL;
        break;
    default:
        return -ENOTSUP;
    }
    if (a->n_tokens == 0)
        return 0;
    if (a->n_tokens > INT32_MAX)
        return -EINVAL;
    embed_kernel<<<a->n_tokens, EMBED_THREADS, 0, pd_cuda_stream(stream)>>>(*a);
    return pd_cuda_launched("embed_kernel");
}
