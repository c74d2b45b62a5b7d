/* kernels/kv_tile.cuh: tiles of N keys' K and V from the paged pool
 * (kv_layout.h) into shared memory, for the tensor-core attention kernels
 * (attn_prefill.cu, attention.cu's decode kernel), private to kernels/.
 *
 * A tile is two steps, so that the block table is read a tile ahead:
 *   pd_tile_offsets: the pool offsets of positions kb .. kb + N - 1 (through
 *     the block table; UINT64_MAX from end on), one thread per key, so that
 *     each copy is an add;
 *   pd_tile_load: K and V of those offsets into [key][dim] tiles whose rows
 *     are LD elements apart, by cp.async (in flight until a
 *     pd_cp_async_wait), zeros for UINT64_MAX (a masked weight is 0, and
 *     0 x garbage could be NaN); closes the group.
 * Both are called by every thread of the block (THREADS of them). */
#ifndef PD_KV_TILE_CUH
#define PD_KV_TILE_CUH

#include "kv_layout.h"
#include "mma.cuh"
#include "pd_kernel.h"

#include <stdint.h>

/* what the two need of a sequence's pool: its block table, the layout, and
 * where this layer's K and V of one KV head start within a block */
struct pd_tile_src {
    const uint16_t *pool;
    const uint32_t *table;
    uint64_t block_elems, k_base, v_base;
    uint32_t block_size, bs_shift, bs_pow2;
};

template <int N, int THREADS, int D>
__device__ __forceinline__ void pd_tile_offsets(const struct pd_tile_src &s, uint64_t *off,
                                                uint32_t kb, uint32_t end)
{
    for (uint32_t j = threadIdx.x; j < N; j += THREADS) {
        const uint32_t pos = kb + j;
        uint64_t o = UINT64_MAX;
        if (pos < end) {
            const uint32_t bi = s.bs_pow2 ? pos >> s.bs_shift : pos / s.block_size;
            const uint32_t bt = s.bs_pow2 ? pos & (s.block_size - 1) : pos % s.block_size;
            o = (uint64_t)s.table[bi] * s.block_elems + (uint64_t)bt * D;
        }
        off[j] = o;
    }
}

template <int N, int THREADS, int D, int LD>
__device__ __forceinline__ void pd_tile_load(const struct pd_tile_src &s, const uint64_t *off,
                                             uint16_t *ks, uint16_t *vs)
{
    constexpr uint32_t CPR = D / 8; /* 16-byte chunks per row */
    for (uint32_t i = threadIdx.x; i < N * CPR; i += THREADS) {
        const uint32_t j = i / CPR, d = (i % CPR) * 8;
        const uint64_t o = off[j];
        const bool valid = o != UINT64_MAX;
        const uint64_t at = valid ? o + d : 0;
        pd_cp_async16(&ks[j * LD + d], s.pool + s.k_base + at, valid);
        pd_cp_async16(&vs[j * LD + d], s.pool + s.v_base + at, valid);
    }
    pd_cp_async_commit();
}

/* Tiles in core matrices (wgmma.cuh, no swizzle): row j's 16-byte chunk
 * d / 8 at element ((j / 8) (D / 8) + d / 8) 64 + (j % 8) 8, so that 8 rows
 * of 8 elements are 128 contiguous bytes. Chunk i of the tile, in that
 * order, is at element 8 i: consecutive threads fill a core matrix. */
template <int D> PD_HD uint32_t pd_core_row(uint32_t i)
{
    return (i / (8 * (D / 8))) * 8 + i % 8;
}
template <int D> PD_HD uint32_t pd_core_col(uint32_t i)
{
    return ((i / 8) % (D / 8)) * 8;
}

/* pd_tile_load into core-matrix tiles (N x D each) */
template <int N, int THREADS, int D>
__device__ __forceinline__ void pd_tile_load_core(const struct pd_tile_src &s, const uint64_t *off,
                                                  uint16_t *ks, uint16_t *vs)
{
    for (uint32_t i = threadIdx.x; i < N * (D / 8); i += THREADS) {
        const uint64_t o = off[pd_core_row<D>(i)];
        const bool valid = o != UINT64_MAX;
        const uint64_t at = valid ? o + pd_core_col<D>(i) : 0;
        pd_cp_async16(&ks[8 * i], s.pool + s.k_base + at, valid);
        pd_cp_async16(&vs[8 * i], s.pool + s.v_base + at, valid);
    }
    pd_cp_async_commit();
}

/* The source for KV head kvh of `layer` of the sequence whose block table
 * row is table. */
__device__ __forceinline__ struct pd_tile_src pd_tile_src_of(const uint16_t *pool,
                                                             const struct pd_kv_geom &kv,
                                                             const uint32_t *table, uint32_t layer,
                                                             uint32_t kvh, uint32_t bs_shift,
                                                             uint32_t bs_pow2)
{
    struct pd_tile_src s;
    s.pool = pool;
    s.table = table;
    s.block_elems = pd_kv_block_elems(&kv);
    s.k_base = pd_kv_offset(&kv, 0, layer, 0, kvh, 0);
    s.v_base = pd_kv_offset(&kv, 0, layer, 1, kvh, 0);
    s.block_size = kv.block_size;
    s.bs_shift = bs_shift;
    s.bs_pow2 = bs_pow2;
    return s;
}

#endif
