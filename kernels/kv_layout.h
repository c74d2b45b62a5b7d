/* kernels/kv_layout.h: where K and V of a token live in the paged KV pool.
 *
 * The pool is an array of blocks. A block is self-contained (DESIGN.md): K and
 * V of `block_size` tokens for every layer, laid out as
 *
 *     block[layer][kv (0 = K, 1 = V)][kv_head][token in block][head_dim]
 *
 * so one layer's K (or V) for one head is a contiguous (block_size, head_dim)
 * tile: attention reads it with unit stride over head_dim and over tokens, and
 * a whole block is one contiguous run of bytes for the KV transfer. Offsets are
 * in elements of the pool's dtype (F32, or BF16 where an args struct's
 * pool_type says so). A token's slot is block * block_size + position-in-block;
 * sequences map positions to blocks through block tables.
 *
 * Every offset the CPU reference and the CUDA kernels compute comes from the
 * PD_HD helpers below (tests/unit/test_kernel_index.c covers them on the CPU).
 */
#ifndef PD_KV_LAYOUT_H
#define PD_KV_LAYOUT_H

#include "pd_kernel.h"

struct pd_kv_geom {
    uint32_t n_layer;
    uint32_t n_head_kv;
    uint32_t head_dim;
    uint32_t block_size; /* tokens per block */
};

/* elements in one block */
PD_HD uint64_t pd_kv_block_elems(const struct pd_kv_geom *l)
{
    return (uint64_t)l->n_layer * 2 * l->n_head_kv * l->block_size * l->head_dim;
}

/* element offset of (block, layer, kv, head, token-in-block, 0) from the pool base */
PD_HD uint64_t pd_kv_offset(const struct pd_kv_geom *l, uint32_t block, uint32_t layer,
                            uint32_t kv, uint32_t head, uint32_t tok)
{
    uint64_t tile = (uint64_t)l->block_size * l->head_dim;
    return (uint64_t)block * pd_kv_block_elems(l) +
           (((uint64_t)layer * 2 + kv) * l->n_head_kv + head) * tile + (uint64_t)tok * l->head_dim;
}

/* offset of (slot, layer, kv, head, 0): slot = block * block_size + token-in-block */
PD_HD uint64_t pd_kv_slot_offset(const struct pd_kv_geom *l, int64_t slot, uint32_t layer,
                                 uint32_t kv, uint32_t head)
{
    return pd_kv_offset(l, (uint32_t)(slot / l->block_size), layer, kv, head,
                        (uint32_t)(slot % l->block_size));
}

/* offset of position pos of a sequence, through its block table (max_blocks ids) */
PD_HD uint64_t pd_kv_pos_offset(const struct pd_kv_geom *l, const uint32_t *table, uint32_t pos,
                                uint32_t layer, uint32_t kv, uint32_t head)
{
    return pd_kv_offset(l, table[pos / l->block_size], layer, kv, head, pos % l->block_size);
}

#endif
