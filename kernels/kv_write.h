/* kernels/kv_write: store new tokens' K and V for one layer into their slots of
 * the block pool (kv_layout.h), as float or rounded to bf16 or half. */
#ifndef PD_KV_WRITE_H
#define PD_KV_WRITE_H

#include "kv_layout.h"
#include "quant.h"

struct pd_kv_write_args {
    float *pool; /* (n_blocks, block elems), kv_layout.h; uint16_t elements when BF16/F16 */
    struct pd_kv_geom kv;
    uint32_t layer;
    const float *k; /* (n_tokens, n_head_kv, head_dim), token t's at k + t * ld */
    const float *v; /* (n_tokens, n_head_kv, head_dim), token t's at v + t * ld */
    const int64_t *slot; /* (n_tokens): block * block_size + position in block */
    uint32_t n_tokens;
    uint32_t pool_type; /* PD_DT_F32 (0), PD_DT_BF16 or PD_DT_F16 (kernels/quant.h); k, v float */
    uint32_t ld; /* >= n_head_kv * head_dim; 0: packed (k and v in rows of q, k, v: their width) */
};

/* What every kv_write refuses (-EINVAL, nothing written): a pool type it
 * does not store, rows shorter than the KV heads. */
PD_HD int pd_kv_write_refused(const struct pd_kv_write_args *a)
{
    return (a->pool_type != PD_DT_F32 && a->pool_type != PD_DT_BF16 && a->pool_type != PD_DT_F16) ||
        (a->ld && a->ld < (uint64_t)a->kv.n_head_kv * a->kv.head_dim);
}

PD_BEGIN_DECLS

int pd_kv_write_cpu(const struct pd_kv_write_args *a);
int pd_kv_write_cuda(const struct pd_kv_write_args *a, pd_stream_t stream); /* PD_HAVE_CUDA */

PD_END_DECLS

#endif
