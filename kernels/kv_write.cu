/* kernels/kv_write.cu: one thread block per (token, KV head) writes that
 * head's K and V rows into the token's slot (pd_kv_slot_offset, as the
 * reference), as float or rounded to bf16 or half by kernels/bf16.h. */
#include "bf16.h"
#include "cuda_check.cuh"
#include "kv_write.h"
#include "quant.h"

#define KVW_THREADS 128

template <typename T, bool BF>
__global__ void __launch_bounds__(KVW_THREADS) kv_write_kernel(struct pd_kv_write_args p)
{
    const uint32_t t = blockIdx.x, h = blockIdx.y, hd = p.kv.head_dim;
    const int64_t slot = p.slot[t];
    if (slot < 0)
        return; /* a padding token: nothing to store */
    const uint64_t ko = pd_kv_slot_offset(&p.kv, slot, p.layer, 0, h);
    const uint64_t vo = pd_kv_slot_offset(&p.kv, slot, p.layer, 1, h);
    const uint64_t ld = p.ld ? p.ld : (uint64_t)p.kv.n_head_kv * hd;
    const uint64_t src = t * ld + (uint64_t)h * hd;
    T *pool = (T *)p.pool;
    for (uint32_t d = threadIdx.x; d < hd; d += KVW_THREADS) {
        if constexpr (sizeof(T) == 2) {
            pool[ko + d] = BF ? pd_bf16_encode(p.k[src + d]) : pd_f16_encode(p.k[src + d]);
            pool[vo + d] = BF ? pd_bf16_encode(p.v[src + d]) : pd_f16_encode(p.v[src + d]);
        } else {
            pool[ko + d] = p.k[src + d];
            pool[vo + d] = p.v[src + d];
        }
    }
}

extern "C" int pd_kv_write_cuda(const struct pd_kv_write_args *a, pd_stream_t stream)
{
    if (pd_kv_write_refused(a))
        return -EINVAL;
    if (a->n_tokens == 0 || a->kv.n_head_kv == 0)
        return 0;
    if (a->n_tokens > INT32_MAX || a->kv.n_head_kv > 65535 || a->kv.block_size == 0 ||
        a->layer >= a->kv.n_layer)
        return -EINVAL;
    dim3 grid(a->n_tokens, a->kv.n_head_kv);
    if (a->pool_type == PD_DT_BF16)
        kv_write_kernel<uint16_t, true><<<grid, KVW_THREADS, 0, pd_cuda_stream(stream)>>>(*a);
    else if (a->pool_type == PD_DT_F16)
        kv_write_kernel<uint16_t, false><<<grid, KVW_THREADS, 0, pd_cuda_stream(stream)>>>(*a);
    else
        kv_write_kernel<float, false><<<grid, KVW_THREADS, 0, pd_cuda_stream(stream)>>>(*a);
    return pd_cuda_launched("kv_write_kernel");
}
