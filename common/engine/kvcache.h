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
 *
 * Prefix caching (params.prefix_cache; docs/internals/prefix.md): a full
 * block whose K/V is final can be published under its name (a chain hash,
 * common/engine/prefix.h). A published block whose last reference goes is
 * kept, idle, instead of freed; a sequence that starts with the same tokens
 * maps it (pd_kvseq_map_prefix) and computes only the rest. Idle blocks
 * count as free: alloc takes truly free blocks first, then evicts idle ones,
 * least recently released first; a referenced block is never evicted. A
 * published or shared block is read-only (pd_kvcache_writable): the engine
 * copies a shared block before it writes into it (copy-on-write).
 *
 *   int k = pd_kvseq_map_prefix(kc, &s, ph.h, n_full_blocks_to_try); // s.n_tokens = k * bs
 *   ... compute positions [s.n_tokens, n) ...
 *   n_pub = pd_kvseq_publish(kc, &s, ph.h, n_pub, ph.n);   // blocks that became full
 */
#ifndef PD_KVCACHE_H
#define PD_KVCACHE_H

#include "kv_layout.h"

#include <stdbool.h>
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
    bool prefix_cache; /* keep published blocks after their last reference (see above) */
};

#define PD_KV_HASH_LEN 32 /* a block's name: PD_PREFIX_HASH_LEN */

struct pd_kvcache_stats {
    uint32_t cached; /* blocks in the prefix index (referenced or idle) */
    uint32_t idle; /* of those, unreferenced: evicted when the pool needs room */
    uint64_t evictions; /* idle blocks taken for new data since start */
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
bool pd_kvcache_prefix(const struct pd_kvcache *kc); /* made with prefix_cache */

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
/* true when a sequence holding id may write into it: its only reference and
 * not published (a name promises contents) */
bool pd_kvcache_writable(const struct pd_kvcache *kc, uint32_t id);

/* The longest run of names[0, n) that the index holds, in order: their ids
 * into ids, a reference taken on each (an idle one is no longer idle).
 * Returns the run's length; 0 without prefix caching. */
uint32_t pd_kvcache_lookup(struct pd_kvcache *kc, const uint8_t (*names)[PD_KV_HASH_LEN],
                           uint32_t n, uint32_t *ids);
/* Index the allocated block id under name: its K/V must be final and be
 * what name says (every token of its chain computed or verified). 1 when
 * indexed; 0 when prefix caching is off, id is already indexed, or another
 * block holds name (the first stays; id is freed as usual); -EINVAL for a
 * free or bad id. */
int pd_kvcache_publish(struct pd_kvcache *kc, uint32_t id, const uint8_t name[PD_KV_HASH_LEN]);
void pd_kvcache_stats(const struct pd_kvcache *kc, struct pd_kvcache_stats *st);

void pd_kvseq_init(struct pd_kvseq *s);
/* Make room for n_tokens positions: allocates the missing blocks, all or
 * nothing (-ENOSPC, table unchanged). Does not change s->n_tokens. */
int pd_kvseq_reserve(struct pd_kvcache *kc, struct pd_kvseq *s, uint32_t n_tokens);
/* Blocks needed beyond what s holds to reach n_tokens positions. */
uint32_t pd_kvseq_blocks_needed(const struct pd_kvcache *kc, const struct pd_kvseq *s,
                                uint32_t n_tokens);
/* Give back blocks past those n_tokens needs (undo a reserve). */
void pd_kvseq_trim(struct pd_kvcache *kc, struct pd_kvseq *s, uint32_t n_tokens);
/* An empty sequence starts with the longest cached prefix of names[0, n):
 * its blocks mapped (one reference each), n_tokens that many full blocks.
 * Returns how many (0 when s is not empty or caching is off), -ENOMEM. */
int pd_kvseq_map_prefix(struct pd_kvcache *kc, struct pd_kvseq *s,
                        const uint8_t (*names)[PD_KV_HASH_LEN], uint32_t n);
/* dst (empty) shares src's first n_tokens positions: a reference on each of
 * their blocks (the last may be partial: whoever writes into it first gets
 * a copy, pd_kvcache_writable). -EINVAL when dst is not empty or src holds
 * fewer, -ENOMEM, -EMLINK (a block at its reference cap); dst unchanged. */
int pd_kvseq_fork(struct pd_kvcache *kc, struct pd_kvseq *dst, const struct pd_kvseq *src,
                  uint32_t n_tokens);
/* Publish s's blocks [from, n) under names[from, n), stopping at the first
 * block not full yet (s->n_tokens); returns the index to pass as `from`
 * next time. */
uint32_t pd_kvseq_publish(struct pd_kvcache *kc, struct pd_kvseq *s,
                          const uint8_t (*names)[PD_KV_HASH_LEN], uint32_t from, uint32_t n);
/* Release every block and reset the sequence to empty. */
void pd_kvseq_release(struct pd_kvcache *kc, struct pd_kvseq *s);

#endif
