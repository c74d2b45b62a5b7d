/* kernels/bias.cu: elementwise over (n_rows, dim), grid-stride. */
#include "bias.h"
#include "cuda_check.cuh"

#define BIAS_THREADS 256

__global__ void __launch_bounds__(BIAS_THREADS) bias_kernel(struct pd_bias_args p)
{
    const uint64_t n = (uint64_t)p.n_rows * p.dim, ld = p.ld ? p.ld : p.dim;
    for (uint64_t i = blockIdx.x * (uint64_t)BIAS_THREADS + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * BIAS_THREADS)
        p.x[i / p.dim * ld + i % p.dim] += p.bias[i % p.dim];
}

extern "C" int pd_bias_cuda(const struct pd_bias_args *a, pd_stream_t stream)
{
    const uint64_t n = (uint64_t)a->n_rows * a->dim;
    if (a->ld && a->ld < a->dim)
        return -EINVAL;
    if (n == 0)
        return 0;
    bias_kernel<<<pd_cuda_blocks(n, BIAS_THREADS), BIAS_THREADS, 0, pd_cuda_stream(stream)>>>(*a);
    return pd_cuda_launched("bias_kernel");
}
