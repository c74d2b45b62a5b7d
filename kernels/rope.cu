/* kernels/rope.cu: RoPE, and RoPE fused with the KV write.
 *
 * rope_kernel: one thread per (token, pair): the angle once (the table's, or
 * in double through the same pd_rope_theta as the reference), then every
 * head's pair.
 * rope_kv_kernel: one block per token: the token's {cos, sin} into shared
 * memory, its heads' pairs rotated, then (after a barrier: the block's own
 * stores are visible to it) its K and V rows stored as kv_write_kernel
 * stores them. */
#include "bf16.h"
#include "cuda_check.cuh"
#include "quant.h"
#include "rope.h"

#define ROPE_THREADS 64
#define ROPE_KV_THREADS 128

/* pair i's {cos, sin} at pos: the table's when it has pos, else computed */
__device__ __forceinline__ float2 rope_cs(const struct pd_rope_args &p, int32_t pos, uint32_t i)
{
    if (p.table && pos >= 0 && (uint32_t)pos < p.table_len)
        return ((const float2 *)p.table)[(uint64_t)pos * (p.rope_dim / 2) + i];
    const double theta =
        pd_rope_theta(pos, i, p.rope_dim, p.freq_base, p.freq_scale, p.freq_factors);
    return make_float2((float)cos(theta), (float)sin(theta));
}

__device__ __forceinline__ void rotate(float *v, uint32_t i0, uint32_t i1, float2 cs)
{
    const float x0 = v[i0], x1 = v[i1];
    v[i0] = x0 * cs.x - x1 * cs.y;
    v[i1] = x0 * cs.y + x1 * cs.x;
}

__global__ void __launch_bounds__(ROPE_THREADS) rope_kernel(struct pd_rope_args p)
{
    const uint32_t t = blockIdx.x;
    const uint32_t i = blockIdx.y * ROPE_THREADS + threadIdx.x;

    if (i >= p.rope_dim / 2)
        return;
    const float2 cs = rope_cs(p, p.pos[t], i);
    float *row = p.x + t * pd_rope_ld(&p);
    uint32_t i0, i1;
    pd_rope_pair(&p, i, &i0, &i1);
    for (uint32_t h = 0; h < p.n_heads; h++)
        rotate(row + (uint64_t)h * p.head_dim, i0, i1, cs);
}

template <typename T, bool BF>
__global__ void __launch_bounds__(ROPE_KV_THREADS)
    rope_kv_kernel(struct pd_rope_args p, struct pd_kv_write_args w)
{
    __shared__ float2 cs[PD_ROPE_MAX_HALF];
    const uint32_t t = blockIdx.x, half = p.rope_dim / 2, hd = w.kv.head_dim;
    const int32_t pos = p.pos[t];
    for (uint32_t i = threadIdx.x; i < half; i += ROPE_KV_THREADS)
        cs[i] = rope_cs(p, pos, i);
    __syncthreads();
    float *const row = p.x + t * pd_rope_ld(&p);
    for (uint32_t j = threadIdx.x; j < p.n_heads * half; j += ROPE_KV_THREADS) {
        const uint32_t h = j / half, i = j % half;
        uint32_t i0, i1;
        pd_rope_pair(&p, i, &i0, &i1);
        rotate(row + (uint64_t)h * p.head_dim, i0, i1, cs[i]);
    }
    const int64_t slot = w.slot[t];
    if (slot < 0)
        return; /* a padding token: nothing to store (kv_write_kernel's rule) */
    __syncthreads();
    const uint64_t ld = w.ld ? w.ld : (uint64_t)w.kv.n_head_kv * hd;
    T *const pool = (T *)w.pool;
    for (uint32_t j = threadIdx.x; j < w.kv.n_head_kv * hd; j += ROPE_KV_THREADS) {
        const uint32_t h = j / hd, d = j % hd;
        const uint64_t ko = pd_kv_slot_offset(&w.kv, slot, w.layer, 0, h) + d;
        const uint64_t vo = pd_kv_slot_offset(&w.kv, slot, w.layer, 1, h) + d;
        const float k = w.k[t * ld + j], v = w.v[t * ld + j];
        if constexpr (sizeof(T) == 2) {
            pool[ko] = BF ? pd_bf16_encode(k) : pd_f16_encode(k);
            pool[vo] = BF ? pd_bf16_encode(v) : pd_f16_encode(v);
        } else {
            pool[ko] = k;
            pool[vo] = v;
        }
    }
}

/* pd_rope_refused, and a token count the grid cannot take */
static int rope_check(const struct pd_rope_args *a)
{
    return pd_rope_refused(a) || a->n_tokens > INT32_MAX ? -EINVAL : 0;
}

extern "C" int pd_rope_cuda(const struct pd_rope_args *a, pd_stream_t stream)
{
    const uint32_t half = a->rope_dim / 2;

    if (rope_check(a) < 0)
        return -EINVAL;
    if (a->n_tokens == 0 || half == 0 || a->n_heads == 0)
        return 0;
    dim3 grid(a->n_tokens, (half + ROPE_THREADS - 1) / ROPE_THREADS);
    rope_kernel<<<grid, ROPE_THREADS, 0, pd_cuda_stream(stream)>>>(*a);
    return pd_cuda_launched("rope_kernel");
}

extern "C" int pd_rope_kv_write_cuda(const struct pd_rope_args *r, const struct pd_kv_write_args *w,
                                     pd_stream_t stream)
{
    if (rope_check(r) < 0 || r->n_tokens != w->n_tokens)
        return -EINVAL;
    if (w->n_tokens && w->kv.n_head_kv &&
        (w->kv.block_size == 0 || w->layer >= w->kv.n_layer || w->kv.n_head_kv > 65535))
        return -EINVAL; /* pd_kv_write_cuda's refusals, checked before anything is written */
    if (pd_kv_write_refused(w))
        return -EINVAL;
    if (r->n_tokens == 0)
        return 0;
    if (r->rope_dim == 0 || r->n_heads == 0) /* nothing to rotate: the write alone */
        return pd_kv_write_cuda(w, stream);
    if (w->kv.n_head_kv == 0) /* nothing to store: the rotation alone */
        return pd_rope_cuda(r, stream);
    const dim3 grid(r->n_tokens);
    cudaStream_t s = pd_cuda_stream(stream);
    if (w->pool_type == PD_DT_BF16)
        rope_kv_kernel<uint16_t, true><<<grid, ROPE_KV_THREADS, 0, s>>>(*r, *w);
    else if (w->pool_type == PD_DT_F16)
        rope_kv_kernel<uint16_t, false><<<grid, ROPE_KV_THREADS, 0, s>>>(*r, *w);
    else
        rope_kv_kernel<float, false><<<grid, ROPE_KV_THREADS, 0, s>>>(*r, *w);
    return pd_cuda_launched("rope_kv_kernel");
}
