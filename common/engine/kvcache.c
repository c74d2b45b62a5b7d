#include "kvcache.h"

#include "errf.h"
#include "quant.h"

#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct pd_kvcache {
    struct pd_kv_geom layout;
    uint64_t block_bytes;
    uint32_t dtype;
    bool external; /* the caller's pool */
    uint32_t n_blocks;
    float *pool;
    size_t pool_len;
    uint16_t *refs; /* [n_blocks]; 0 = free */
    uint32_t *free_stack; /* [n_blocks]; the top n_free entries are free ids */
    uint32_t n_free;
};

int pd_kvcache_new(const struct pd_kvcache_params *p, struct pd_kvcache **out, char *err,
                   size_t errlen)
{
    const struct pd_kv_geom *l = &p->layout;
    struct pd_kvcache *kc;

    if (!l->n_layer || !l->n_head_kv || !l->head_dim || !l->block_size ||
        l->block_size > PD_KV_MAX_BLOCK_SIZE)
        return pd_errf(err, errlen, -EINVAL, "kvcache: bad layout (block size must be 1..%d)",
                    PD_KV_MAX_BLOCK_SIZE);
    if (p->dtype != PD_DT_F32 && p->dtype != PD_DT_BF16 && p->dtype != PD_DT_F16)
        return pd_errf(err, errlen, -EINVAL, "kvcache: element type %s is not f32, bf16 or f16",
                       pd_dtype_name(p->dtype));
    uint64_t block_bytes = pd_kv_block_elems(l) * (p->dtype == PD_DT_F32 ? 4 : 2);
    uint64_t n = p->mem_bytes / block_bytes;
    if (n == 0)
        return pd_errf(err, errlen, -EINVAL,
                    "kvcache: %" PRIu64 " bytes of KV cache memory hold no block of %" PRIu64
                    " bytes", p->mem_bytes, block_bytes);
    if (n > PD_KV_MAX_BLOCKS)
        n = PD_KV_MAX_BLOCKS;

    kc = calloc(1, sizeof(*kc));
    if (!kc)
        return pd_errf(err, errlen, -ENOMEM, "kvcache: out of memory");
    kc->layout = *l;
    kc->block_bytes = block_bytes;
    kc->dtype = p->dtype;
    kc->n_blocks = (uint32_t)n;
    kc->pool_len = (size_t)(n * block_bytes);
    if (p->pool) {
        kc->pool = p->pool;
        kc->external = true;
    } else {
        kc->pool = mmap(NULL, kc->pool_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
        if (kc->pool == MAP_FAILED) {
            kc->pool = NULL;
            pd_kvcache_free(kc);
            return pd_errf(err, errlen, -ENOMEM, "kvcache: cannot map %" PRIu64
                           " bytes for the pool", (uint64_t)n * block_bytes);
        }
        /* users' KV never belongs in a core dump */
        madvise(kc->pool, kc->pool_len, MADV_DONTDUMP);
    }
    kc->refs = calloc(n, sizeof(*kc->refs));
    kc->free_stack = malloc(n * sizeof(*kc->free_stack));
    if (!kc->refs || !kc->free_stack) {
        pd_kvcache_free(kc);
        return pd_errf(err, errlen, -ENOMEM, "kvcache: out of memory");
    }
    /* lowest ids on top: a fresh pool hands out contiguous runs */
    for (uint32_t i = 0; i < kc->n_blocks; i++)
        kc->free_stack[i] = kc->n_blocks - 1 - i;
    kc->n_free = kc->n_blocks;
    *out = kc;
    return 0;
}

struct pd_kvcache *pd_kvcache_free(struct pd_kvcache *kc)
{
    if (!kc)
        return NULL;
    if (kc->pool && !kc->external)
        munmap(kc->pool, kc->pool_len);
    free(kc->refs);
    free(kc->free_stack);
    free(kc);
    return NULL;
}

const struct pd_kv_geom *pd_kvcache_layout(const struct pd_kvcache *kc) { return &kc->layout; }
float *pd_kvcache_pool(struct pd_kvcache *kc) { return kc->pool; }
uint32_t pd_kvcache_n_blocks(const struct pd_kvcache *kc) { return kc->n_blocks; }
uint32_t pd_kvcache_n_free(const struct pd_kvcache *kc) { return kc->n_free; }
uint64_t pd_kvcache_block_bytes(const struct pd_kvcache *kc) { return kc->block_bytes; }
uint32_t pd_kvcache_dtype(const struct pd_kvcache *kc) { return kc->dtype; }

int pd_kvcache_alloc(struct pd_kvcache *kc, uint32_t n, uint32_t *ids)
{
    if (n > kc->n_free)
        return -ENOSPC;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = kc->free_stack[--kc->n_free];
        kc->refs[id] = 1;
        ids[i] = id;
    }
    return 0;
}

int pd_kvcache_ref(struct pd_kvcache *kc, uint32_t id)
{
    if (id >= kc->n_blocks || kc->refs[id] == 0 || kc->refs[id] == UINT16_MAX)
        return -EINVAL;
    kc->refs[id]++;
    return 0;
}

int pd_kvcache_unref(struct pd_kvcache *kc, uint32_t id)
{
    if (id >= kc->n_blocks || kc->refs[id] == 0)
        return -EINVAL;
    if (--kc->refs[id] == 0)
        kc->free_stack[kc->n_free++] = id;
    return kc->refs[id];
}

int pd_kvcache_refcount(const struct pd_kvcache *kc, uint32_t id)
{
    return id < kc->n_blocks ? kc->refs[id] : -EINVAL;
}

void pd_kvseq_init(struct pd_kvseq *s) { memset(s, 0, sizeof(*s)); }

uint32_t pd_kvseq_blocks_needed(const struct pd_kvcache *kc, const struct pd_kvseq *s,
                                uint32_t n_tokens)
{
    uint64_t want = ((uint64_t)n_tokens + kc->layout.block_size - 1) / kc->layout.block_size;
    return want > s->n_blocks ? (uint32_t)(want - s->n_blocks) : 0;
}

int pd_kvseq_reserve(struct pd_kvcache *kc, struct pd_kvseq *s, uint32_t n_tokens)
{
    uint32_t add = pd_kvseq_blocks_needed(kc, s, n_tokens);
    if (add == 0)
        return 0;
    if (add > kc->n_free)
        return -ENOSPC;
    if (s->n_blocks + add > s->cap) {
        uint32_t cap = s->cap ? s->cap : 8;
        while (cap < s->n_blocks + add)
            cap *= 2;
        uint32_t *b = realloc(s->blocks, cap * sizeof(*b));
        if (!b)
            return -ENOMEM;
        s->blocks = b;
        s->cap = cap;
    }
    pd_kvcache_alloc(kc, add, s->blocks + s->n_blocks);
    s->n_blocks += add;
    return 0;
}

void pd_kvseq_trim(struct pd_kvcache *kc, struct pd_kvseq *s, uint32_t n_tokens)
{
    uint32_t keep = (uint32_t)(((uint64_t)n_tokens + kc->layout.block_size - 1) /
                               kc->layout.block_size);
    while (s->n_blocks > keep)
        pd_kvcache_unref(kc, s->blocks[--s->n_blocks]);
}

void pd_kvseq_release(struct pd_kvcache *kc, struct pd_kvseq *s)
{
    for (uint32_t i = 0; i < s->n_blocks; i++)
        pd_kvcache_unref(kc, s->blocks[i]);
    free(s->blocks);
    pd_kvseq_init(s);
}
