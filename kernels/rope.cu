/* kernels/rope.cu: one thread per (token, pair): the angle once, in double
 * through the same pd_rope_theta as the reference, then every head's pair. */
#include "cuda_check.cuh"
#include "rope.h"

#define ROPE_THREADS 64

__global__ void __launch_bounds__(ROPE_THREADS) rope_kernel(struct pd_rope_args p)
{
    const uint32_t t = blockIdx.x;
    const uint32_t i = blockIdx.y * ROPE_THREADS + threadIdx.x;

    if (i >= p.rope_dim / 2)
        return;
    double theta = pd_rope_theta(p.pos[t], i, p.rope_dim, p.freq_base, p.freq_scale,
                                 p.freq_factors);
    const float c = (float)cos(theta), s = (float)sin(theta);
    float *row = p.x + t * pd_rope_ld(&p);
    uint32_t i0, i1;
    pd_rope_pair(&p, i, &i0, &i1);
    for (uint32_t h = 0; h < p.n_heads; h++) {
        float *v = row + (uint64_t)h * p.head_dim;
        float x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * c - x1 * s;
        v[i1] = x0 * s + x1 * c;
    }
}

extern "C" int pd_rope_cuda(const struct pd_rope_args *a, pd_stream_t stream)
{
    const uint32_t half = a->rope_dim / 2;

    if (a->rope_dim % 2 || a->rope_dim > a->head_dim || half > PD_ROPE_MAX_HALF ||
        (a->ld && a->ld < (uint64_t)a->n_heads * a->head_dim))
        return -EINVAL;
    if (a->n_tokens == 0 || half == 0 || a->n_heads == 0)
        return 0;
    if (a->n_tokens > INT32_MAX)
        return -EINVAL;
    dim3 grid(a->n_tokens, (half + ROPE_THREADS - 1) / ROPE_THREADS);
    rope_kernel<<<grid, ROPE_THREADS, 0, pd_cuda_stream(stream)>>>(*a);
    return pd_cuda_launched("rope_kernel");
}
