/* common/engine/kvcache: the paged KV pool, its block allocator, and sequences'
 * block tables. Allocation, free and reference counts live here only
 * (DESIGN.md).
 *
 *   struct pd_kvcache_params p = {.layout = {n_layer, n_head_kv, head_dim, 16},
 *                                 .mem_bytes = 1 << 30};
 *   struct pd_kvcache *kc;
 *   if (pd_kvcache_new(&p, &kc, err, sizeof err) < 0) ...
 *   struct pd_kvseq s;
 *   pd_kvseq_init(&s);
 *   if (pd_kvseq_reserve(kc, &s, n_tokens) == -ENOSPC) ...   // all or nothing
 *   ... write K/V of positions [s.n_tokens, n_tokens), then s.n_tokens = n_tokens
 *   pd_kvseq_release(kc, &s);                                 // blocks back to the pool
 *   kc = pd_kvcache_free(kc);
 *
 * The pool is one anonymous mapping of n_blocks * block_bytes (float32,
 * bf16 or half elements, params.dtype), MADV_DONTDUMP: KV of users' prompts never lands in a
 * core dump. Blocks are reference-counted so a block can be shared (prefix
 * reuse, in-flight transfers); a block returns to the free list when its last
 * reference goes. Not thread-safe: one owner (the compute thread).
 */
#ifndef PD_KVCACHE_H
#define PD_KVCACHE_H

#include "kv_layout.h"

#include <stddef.h>
#include <stdint.h>

#define PD_KV_MAX_BLOCK_SIZE 1024
#define PD_KV_MAX_BLOCKS (1u << 24)

struct pd_kvcache_params {
    struct pd_kv_geom layout;
    uint64_t mem_bytes; /* pool size; rounded down to whole blocks */
    uint32_t dtype; /* pool elements: PD_DT_F32 (0), PD_DT_BF16 or PD_DT_F16 (kernels/quant.h) */
    /* the caller's memory for the pool (a GPU engine's device memory), of
     * mem_bytes; kept by the caller, never touched here. NULL: mapped here */
    void *pool;
};

struct pd_kvcache;

/* A sequence's block table: position p lives in blocks[p / block_size]. The
 * struct is the caller's (embed it anywhere); its array is owned here. */
struct pd_kvseq {
    uint32_t *blocks; /* [n_blocks] block ids */
    uint32_t n_blocks, cap;
    uint32_t n_tokens; /* positions whose K/V are written */
};

int pd_kvcache_new(const struct pd_kvcache_params *p, struct pd_kvcache **out, char *err,
                   size_t errlen);
/* Accepts NULL; returns NULL. Every block must have been released. */
struct pd_kvcache *pd_kvcache_free(struct pd_kvcache *kc);

const struct pd_kv_geom *pd_kvcache_layout(const struct pd_kvcache *kc);
float *pd_kvcache_pool(struct pd_kvcache *kc);
uint32_t pd_kvcache_n_blocks(const struct pd_kvcache *kc);
uint32_t pd_kvcache_n_free(const struct pd_kvcache *kc);
uint64_t pd_kvcache_block_bytes(const struct pd_kvcache *kc);
uint32_t pd_kvcache_dtype(const struct pd_kvcache *kc);

/* n blocks, all or nothing: -ENOSPC (nothing taken) when fewer are free. Each
 * returned block has one reference. */
int pd_kvcache_alloc(struct pd_kvcache *kc, uint32_t n, uint32_t *ids);
/* Another reference to an allocated block. -EINVAL for a free or bad id. */
int pd_kvcache_ref(struct pd_kvcache *kc, uint32_t id);
/* Drop a reference; the block is free again at zero. Returns the remaining
 * count, or -EINVAL for a free or bad id (a double free is a caller bug it
 * reports rather than corrupts the free list with). */
int pd_kvcache_unref(struct pd_kvcache *kc, uint32_t id);
int pd_kvcache_refcount(const struct pd_kvcache *kc, uint32_t id);

void pd_kvseq_init(struct pd_kvseq *s);
/* Make room for n_tokens positions: allocates the missing blocks, all or
 * nothing (-ENOSPC, table unchanged). Does not change s->n_tokens. */
int pd_kvseq_reserve(struct pd_kvcache *kc, struct pd_kvseq *s, uint32_t n_tokens);
/* Blocks needed beyond what s holds to reach n_tokens positions. */
uint32_t pd_kvseq_blocks_needed(const struct pd_kvcache *kc, const struct pd_kvseq *s,
                                uint32_t n_tokens);
/* Give back blocks past those n_tokens needs (undo a reserve). */
void pd_kvseq_trim(struct pd_kvcache *kc, struct pd_kvseq *s, uint32_t n_tokens);
/* Release every block and reset the sequence to empty. */
void pd_kvseq_release(struct pd_kvcache *kc, struct pd_kvseq *s);

#endif
