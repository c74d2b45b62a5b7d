/* kernels/swiglu.cu: elementwise, grid-stride; expf and the division as the
 * reference writes them (no fast-math intrinsics). */
#include "bf16.h"
#include "cuda_check.cuh"
#include "quant.h"
#include "swiglu.h"

#define SWIGLU_THREADS 256

template <bool BF> __global__ void __launch_bounds__(SWIGLU_THREADS) swiglu_kernel(struct pd_swiglu_args p)
{
    const uint64_t n = (uint64_t)p.n_rows * p.dim, ld = p.ld ? p.ld : p.dim;
    for (uint64_t i = blockIdx.x * (uint64_t)SWIGLU_THREADS + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * SWIGLU_THREADS) {
        const uint64_t at = i / p.dim * ld + i % p.dim;
        float g = p.gate[at];
        const float v = g / (1.0f + expf(-g)) * p.up[at];
        if constexpr (BF)
            ((uint16_t *)p.out)[i] = pd_bf16_encode(v);
        else
            p.out[i] = v;
    }
}

extern "C" int pd_swiglu_cuda(const struct pd_swiglu_args *a, pd_stream_t stream)
{
    const uint64_t n = (uint64_t)a->n_rows * a->dim;
    if (pd_swiglu_check(a) < 0)
        return -EINVAL;
    if (n == 0)
        return 0;
    if (a->out_type == PD_DT_BF16)
        swiglu_kernel<true><<<pd_cuda_blocks(n, SWIGLU_THREADS), SWIGLU_THREADS, 0,
                              pd_cuda_stream(stream)>>>(*a);
    else
        swiglu_kernel<false><<<pd_cuda_blocks(n, SWIGLU_THREADS), SWIGLU_THREADS, 0,
                               pd_cuda_stream(stream)>>>(*a);
    return pd_cuda_launched("swiglu_kernel");
}
