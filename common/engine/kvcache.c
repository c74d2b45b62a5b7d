#include "kvcache.h"

#include "errf.h"
#include "quant.h"

#include <errno.h>
#include <sodium.h>
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

    /* prefix caching (params.prefix_cache): the index of full blocks by
     * name. A cached block whose last reference goes joins the idle list
     * (least recently released first) instead of the free stack; alloc
     * takes free blocks first, then evicts idle ones from the front. */
    bool prefix;
    uint8_t (*hash)[PD_KV_HASH_LEN]; /* [n_blocks] a cached block's name */
    uint8_t *cached; /* [n_blocks] 1: in the index */
    uint32_t *home; /* [n_blocks] a cached block's home slot */
    uint32_t *prev, *next; /* [n_blocks] the idle list's links (NIL at its ends) */
    uint32_t idle_head, idle_tail, n_idle;
    uint32_t *slots; /* [mask + 1] block id + 1, 0 empty: open addressing, linear probes */
    uint32_t mask;
    /* slots are picked by a keyed hash (SipHash, a key drawn at start) of
     * the name: names are public functions of the tokens, a client must not
     * be able to choose ones that pile onto one probe chain */
    uint8_t slot_key[crypto_shorthash_KEYBYTES];
    uint32_t n_cached;
    uint64_t evictions;
};

#define NIL UINT32_MAX

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
    if (p->prefix_cache) {
        uint64_t slots = 16;
        while (slots < 2 * n)
            slots *= 2;
        kc->prefix = true;
        kc->hash = malloc(n * sizeof(*kc->hash));
        kc->cached = calloc(n, 1);
        kc->home = malloc(n * sizeof(*kc->home));
        kc->prev = malloc(n * sizeof(*kc->prev));
        kc->next = malloc(n * sizeof(*kc->next));
        kc->slots = calloc(slots, sizeof(*kc->slots));
        kc->mask = (uint32_t)(slots - 1);
        kc->idle_head = kc->idle_tail = NIL;
        if (!kc->hash || !kc->cached || !kc->home || !kc->prev || !kc->next || !kc->slots ||
            sodium_init() < 0) {
            pd_kvcache_free(kc);
            return pd_errf(err, errlen, -ENOMEM, "kvcache: out of memory for the prefix index");
        }
        randombytes_buf(kc->slot_key, sizeof(kc->slot_key));
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
    free(kc->hash);
    free(kc->cached);
    free(kc->home);
    free(kc->prev);
    free(kc->next);
    free(kc->slots);
    free(kc);
    return NULL;
}

const struct pd_kv_geom *pd_kvcache_layout(const struct pd_kvcache *kc) { return &kc->layout; }
float *pd_kvcache_pool(struct pd_kvcache *kc) { return kc->pool; }
uint32_t pd_kvcache_n_blocks(const struct pd_kvcache *kc) { return kc->n_blocks; }
uint32_t pd_kvcache_n_free(const struct pd_kvcache *kc) { return kc->n_free + kc->n_idle; }
uint64_t pd_kvcache_block_bytes(const struct pd_kvcache *kc) { return kc->block_bytes; }
uint32_t pd_kvcache_dtype(const struct pd_kvcache *kc) { return kc->dtype; }
bool pd_kvcache_prefix(const struct pd_kvcache *kc) { return kc->prefix; }

/* ---- the prefix index ---- */

static uint32_t slot_of(const struct pd_kvcache *kc, const uint8_t name[PD_KV_HASH_LEN])
{
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, name, PD_KV_HASH_LEN, kc->slot_key);
    uint32_t v = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
                 (uint32_t)h[3] << 24;
    return v & kc->mask;
}

/* The slot holding name, or NIL. */
static uint32_t index_find(const struct pd_kvcache *kc, const uint8_t name[PD_KV_HASH_LEN])
{
    for (uint32_t i = slot_of(kc, name);; i = (i + 1) & kc->mask) {
        uint32_t v = kc->slots[i];
        if (v == 0)
            return NIL;
        if (memcmp(kc->hash[v - 1], name, PD_KV_HASH_LEN) == 0)
            return i;
    }
}

static void index_insert(struct pd_kvcache *kc, uint32_t id, const uint8_t name[PD_KV_HASH_LEN])
{
    uint32_t i = slot_of(kc, name);
    memcpy(kc->hash[id], name, PD_KV_HASH_LEN);
    kc->home[id] = i;
    while (kc->slots[i])
        i = (i + 1) & kc->mask;
    kc->slots[i] = id + 1;
    kc->cached[id] = 1;
    kc->n_cached++;
}

/* Out of the index, by backward shift: no tombstones, so probe chains stay
 * as short as the load (at most one half) makes them. */
static void index_remove(struct pd_kvcache *kc, uint32_t id)
{
    uint32_t i = index_find(kc, kc->hash[id]);
    kc->cached[id] = 0;
    kc->n_cached--;
    if (i == NIL) /* not reached: a cached block is in the index */
        return;
    kc->slots[i] = 0;
    for (uint32_t j = (i + 1) & kc->mask; kc->slots[j]; j = (j + 1) & kc->mask) {
        uint32_t k = kc->home[kc->slots[j] - 1];
        /* the entry at j may move back to the hole at i unless its home lies
         * cyclically in (i, j] */
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            kc->slots[i] = kc->slots[j];
            kc->slots[j] = 0;
            i = j;
        }
    }
}

static void idle_push(struct pd_kvcache *kc, uint32_t id)
{
    kc->prev[id] = kc->idle_tail;
    kc->next[id] = NIL;
    if (kc->idle_tail != NIL)
        kc->next[kc->idle_tail] = id;
    else
        kc->idle_head = id;
    kc->idle_tail = id;
    kc->n_idle++;
}

static void idle_unlink(struct pd_kvcache *kc, uint32_t id)
{
    if (kc->prev[id] != NIL)
        kc->next[kc->prev[id]] = kc->next[id];
    else
        kc->idle_head = kc->next[id];
    if (kc->next[id] != NIL)
        kc->prev[kc->next[id]] = kc->prev[id];
    else
        kc->idle_tail = kc->prev[id];
    kc->n_idle--;
}

/* ---- blocks ---- */

int pd_kvcache_alloc(struct pd_kvcache *kc, uint32_t n, uint32_t *ids)
{
    if (n > kc->n_free + kc->n_idle)
        return -ENOSPC;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id;
        if (kc->n_free) {
            id = kc->free_stack[--kc->n_free];
        } else { /* evict the least recently released cached block */
            id = kc->idle_head;
            idle_unlink(kc, id);
            index_remove(kc, id);
            kc->evictions++;
        }
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
    if (--kc->refs[id] == 0) {
        if (kc->prefix && kc->cached[id])
            idle_push(kc, id); /* kept for the next request with its prefix */
        else
            kc->free_stack[kc->n_free++] = id;
    }
    return kc->refs[id];
}

int pd_kvcache_refcount(const struct pd_kvcache *kc, uint32_t id)
{
    return id < kc->n_blocks ? kc->refs[id] : -EINVAL;
}

bool pd_kvcache_writable(const struct pd_kvcache *kc, uint32_t id)
{
    return id < kc->n_blocks && kc->refs[id] == 1 && !(kc->prefix && kc->cached[id]);
}

uint32_t pd_kvcache_lookup(struct pd_kvcache *kc, const uint8_t (*names)[PD_KV_HASH_LEN],
                           uint32_t n, uint32_t *ids)
{
    if (!kc->prefix)
        return 0;
    uint32_t k = 0;
    for (; k < n; k++) {
        uint32_t slot = index_find(kc, names[k]);
        if (slot == NIL)
            break;
        uint32_t id = kc->slots[slot] - 1;
        if (kc->refs[id] == UINT16_MAX)
            break;
        if (kc->refs[id]++ == 0)
            idle_unlink(kc, id);
        ids[k] = id;
    }
    return k;
}

int pd_kvcache_publish(struct pd_kvcache *kc, uint32_t id, const uint8_t name[PD_KV_HASH_LEN])
{
    if (id >= kc->n_blocks || kc->refs[id] == 0)
        return -EINVAL;
    if (!kc->prefix || kc->cached[id] || index_find(kc, name) != NIL)
        return 0; /* off, this block already, or another with the same contents */
    index_insert(kc, id, name);
    return 1;
}

void pd_kvcache_stats(const struct pd_kvcache *kc, struct pd_kvcache_stats *st)
{
    st->cached = kc->n_cached;
    st->idle = kc->n_idle;
    st->evictions = kc->evictions;
}

/* A block table with room for n entries: 0 or -ENOMEM (unchanged). */
static int seq_room(struct pd_kvseq *s, uint32_t n)
{
    if (n <= s->cap)
        return 0;
    uint32_t cap = s->cap ? s->cap : 8;
    while (cap < n)
        cap *= 2;
    uint32_t *b = realloc(s->blocks, cap * sizeof(*b));
    if (!b)
        return -ENOMEM;
    s->blocks = b;
    s->cap = cap;
    return 0;
}

int pd_kvseq_map_prefix(struct pd_kvcache *kc, struct pd_kvseq *s,
                        const uint8_t (*names)[PD_KV_HASH_LEN], uint32_t n)
{
    if (s->n_blocks || s->n_tokens || !kc->prefix || n == 0)
        return 0;
    if (seq_room(s, n) < 0)
        return -ENOMEM;
    uint32_t k = pd_kvcache_lookup(kc, names, n, s->blocks);
    s->n_blocks = k;
    s->n_tokens = k * kc->layout.block_size;
    return (int)k;
}

int pd_kvseq_fork(struct pd_kvcache *kc, struct pd_kvseq *dst, const struct pd_kvseq *src,
                  uint32_t n_tokens)
{
    uint32_t n = (uint32_t)(((uint64_t)n_tokens + kc->layout.block_size - 1) /
                            kc->layout.block_size);
    if (dst->n_blocks || dst->n_tokens || n_tokens > src->n_tokens || n > src->n_blocks)
        return -EINVAL;
    if (seq_room(dst, n) < 0)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        if (pd_kvcache_ref(kc, src->blocks[i]) < 0) { /* at UINT16_MAX references */
            while (i-- > 0)
                pd_kvcache_unref(kc, src->blocks[i]);
            return -EMLINK;
        }
    memcpy(dst->blocks, src->blocks, n * sizeof(*dst->blocks));
    dst->n_blocks = n;
    dst->n_tokens = n_tokens;
    return 0;
}

uint32_t pd_kvseq_publish(struct pd_kvcache *kc, struct pd_kvseq *s,
                          const uint8_t (*names)[PD_KV_HASH_LEN], uint32_t from, uint32_t n)
{
    uint32_t full = s->n_tokens / kc->layout.block_size;
    if (n > full)
        n = full;
    if (n > s->n_blocks)
        n = s->n_blocks;
    for (uint32_t i = from; i < n; i++)
        pd_kvcache_publish(kc, s->blocks[i], names[i]);
    return n > from ? n : from;
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
    if (add > kc->n_free + kc->n_idle)
        return -ENOSPC;
    if (seq_room(s, s->n_blocks + add) < 0)
        return -ENOMEM;
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
    /* last block first: on the idle list a chain's tail is then evicted
     * before its head, which every longer prefix needs (vLLM's order too) */
    for (uint32_t i = s->n_blocks; i-- > 0;)
        pd_kvcache_unref(kc, s->blocks[i]);
    free(s->blocks);
    pd_kvseq_init(s);
}
