/* kernels/kv_write: store new tokens' K and V for one layer into their slots of
 * the block pool (kv_layout.h). */
#ifndef PD_KV_WRITE_H
#define PD_KV_WRITE_H

#include "kv_layout.h"

struct pd_kv_write_args {
    float *pool; /* (n_blocks, block elems), kv_layout.h */
    struct pd_kv_layout kv;
    uint32_t layer;
    const float *k; /* (n_tokens, n_head_kv, head_dim) */
    const float *v; /* (n_tokens, n_head_kv, head_dim) */
    const int64_t *slot; /* (n_tokens): block * block_size + position in block */
    uint32_t n_tokens;
};

int pd_kv_write_cpu(const struct pd_kv_write_args *a);

#endif
