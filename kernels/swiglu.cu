/* kernels/swiglu.cu: elementwise, grid-stride; expf and the division as the
 * reference writes them (no fast-math intrinsics). */
#include "cuda_check.cuh"
#include "swiglu.h"

#define SWIGLU_THREADS 256

__global__ void __launch_bounds__(SWIGLU_THREADS) swiglu_kernel(struct pd_swiglu_args p)
{
    for (uint64_t i = blockIdx.x * (uint64_t)SWIGLU_THREADS + threadIdx.x; i < p.n;
         i += (uint64_t)gridDim.x * SWIGLU_THREADS) {
        float g = p.gate[i];
        p.out[i] = g / (1.0f + expf(-g)) * p.up[i];
    }
}

extern "C" int pd_swiglu_cuda(const struct pd_swiglu_args *a, pd_stream_t stream)
{
    if (a->n == 0)
        return 0;
    swiglu_kernel<<<pd_cuda_blocks(a->n, SWIGLU_THREADS), SWIGLU_THREADS, 0,
                    pd_cuda_stream(stream)>>>(*a);
    return pd_cuda_launched("swiglu_kernel");
}
