/* kernels/rmsnorm.cu: one thread block per row. Sum of squares in float per
 * thread, reduced across the block; the scale in double as the reference
 * computes it. out may equal in: each element is read before its own thread
 * writes it. */
#include "bf16.h"
#include "cuda_check.cuh"
#include "rmsnorm.h"

#include <math.h>

#define RMS_THREADS 256

template <bool BF> __global__ void __launch_bounds__(RMS_THREADS) rmsnorm_kernel(struct pd_rmsnorm_args p)
{
    __shared__ float warp_sums[RMS_THREADS / 32];
    const float *x = p.in + pd_rmsnorm_row(&p, blockIdx.x);
    const uint64_t at = pd_rmsnorm_row(&p, blockIdx.x);
    float ss = 0.0f;

    for (uint32_t i = threadIdx.x; i < p.dim; i += RMS_THREADS)
        ss += x[i] * x[i];
    for (int o = 16; o > 0; o >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x % 32 == 0)
        warp_sums[threadIdx.x / 32] = ss;
    __syncthreads();
    ss = 0.0f;
    for (int w = 0; w < RMS_THREADS / 32; w++)
        ss += warp_sums[w];
    const float scale = (float)(1.0 / sqrt((double)ss / p.dim + p.eps));
    for (uint32_t i = threadIdx.x; i < p.dim; i += RMS_THREADS) {
        const float v = x[i] * scale * p.weight[i];
        if constexpr (BF)
            ((uint16_t *)p.out)[at + i] = pd_bf16_encode(v);
        else
            p.out[at + i] = v;
    }
}

extern "C" int pd_rmsnorm_cuda(const struct pd_rmsnorm_args *a, pd_stream_t stream)
{
    if (a->n_rows == 0)
        return 0;
    if (a->dim == 0 || a->n_rows > INT32_MAX || pd_rmsnorm_check(a) < 0)
        return -EINVAL;
    if (a->out_type)
        rmsnorm_kernel<true><<<a->n_rows, RMS_THREADS, 0, pd_cuda_stream(stream)>>>(*a);
    else
        rmsnorm_kernel<false><<<a->n_rows, RMS_THREADS, 0, pd_cuda_stream(stream)>>>(*a);
    return pd_cuda_launched("rmsnorm_kernel");
}
