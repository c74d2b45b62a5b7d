#include "kvcache.h"
#include "pd_test.h"
#include "quant.h"

#include <errno.h>

static struct pd_kvcache *pool(uint32_t n_blocks)
{
    struct pd_kvcache_params p = {.layout = {.n_layer = 2, .n_head_kv = 3, .head_dim = 8,
                                             .block_size = 4}};
    p.mem_bytes = pd_kv_block_elems(&p.layout) * sizeof(float) * n_blocks + 100; /* + a partial */
    struct pd_kvcache *kc = NULL;
    char err[256];
    if (pd_kvcache_new(&p, &kc, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return kc;
}

/* Every block is back on the free list (nothing leaked); then the pool goes. */
static void pool_free_drained(struct pd_kvcache *kc)
{
    CHECK_EQ_INT(pd_kvcache_n_free(kc), pd_kvcache_n_blocks(kc));
    pd_kvcache_free(kc);
}

/* one block allocated from kc */
static uint32_t alloc_one(struct pd_kvcache *kc)
{
    uint32_t id;
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 1, &id), 0);
    return id;
}

static void kvcache_sizes_pool_in_whole_blocks(void)
{
    struct pd_kvcache *kc = pool(10);
    CHECK_EQ_INT(pd_kvcache_n_blocks(kc), 10);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 10);
    CHECK_EQ_INT(pd_kvcache_block_bytes(kc), 2 * 2 * 3 * 4 * 8 * 4);
    pd_kvcache_free(kc);
}

static void kvcache_refuses_pool_smaller_than_a_block(void)
{
    struct pd_kvcache_params p = {.layout = {2, 3, 8, 4}, .mem_bytes = 100};
    struct pd_kvcache *kc = NULL;
    char err[256];
    CHECK_EQ_INT(pd_kvcache_new(&p, &kc, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "hold no block");
    p.mem_bytes = 1 << 20;
    p.layout.block_size = 0;
    CHECK_EQ_INT(pd_kvcache_new(&p, &kc, err, sizeof(err)), -EINVAL);
    CHECK(kc == NULL);
}

/* 16-bit pools: half the bytes per block, twice the blocks in the same memory */
static void kvcache_16bit_pools_hold_twice_the_blocks(void)
{
    struct pd_kvcache_params p = {.layout = {2, 3, 8, 4}, .mem_bytes = 10 * 2 * 2 * 3 * 4 * 8 * 4};
    static const uint32_t types[] = {PD_DT_BF16, PD_DT_F16};
    char err[256];
    for (int i = 0; i < 2; i++) {
        struct pd_kvcache *kc = NULL;
        p.dtype = types[i];
        CHECK_EQ_INT(pd_kvcache_new(&p, &kc, err, sizeof(err)), 0);
        CHECK_EQ_INT(pd_kvcache_block_bytes(kc), 2 * 2 * 3 * 4 * 8 * 2);
        CHECK_EQ_INT(pd_kvcache_n_blocks(kc), 20);
        CHECK_EQ_INT(pd_kvcache_dtype(kc), types[i]);
        pd_kvcache_free(kc);
    }
    struct pd_kvcache *kc = NULL;
    p.dtype = PD_DT_Q8_0;
    CHECK_EQ_INT(pd_kvcache_new(&p, &kc, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "not f32, bf16 or f16");
    CHECK(kc == NULL);
}

static void kvcache_alloc_is_all_or_nothing(void)
{
    struct pd_kvcache *kc = pool(5);
    uint32_t ids[8];
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 3, ids), 0);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 2);
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 3, ids + 3), -ENOSPC);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 2);
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 2, ids + 3), 0);
    /* five distinct ids */
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < i; j++)
            CHECK(ids[i] != ids[j]);
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(pd_kvcache_unref(kc, ids[i]), 0);
    pool_free_drained(kc);
}

static void kvcache_block_freed_at_last_reference(void)
{
    struct pd_kvcache *kc = pool(2);
    const uint32_t id = alloc_one(kc);
    CHECK_EQ_INT(pd_kvcache_ref(kc, id), 0);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, id), 2);
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), 1);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 1);
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), 0);
    pool_free_drained(kc);
}

static void kvcache_double_free_and_bad_ids_refused(void)
{
    struct pd_kvcache *kc = pool(2);
    const uint32_t id = alloc_one(kc);
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), 0);
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), -EINVAL); /* would corrupt the free list */
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 2);
    CHECK_EQ_INT(pd_kvcache_ref(kc, id), -EINVAL); /* free blocks cannot be shared */
    CHECK_EQ_INT(pd_kvcache_unref(kc, 99), -EINVAL);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, 99), -EINVAL);
    pd_kvcache_free(kc);
}

static void kvseq_reserve_grows_by_blocks_and_trim_undoes(void)
{
    struct pd_kvcache *kc = pool(6);
    struct pd_kvseq s;
    pd_kvseq_init(&s);
    CHECK_EQ_INT(pd_kvseq_reserve(kc, &s, 1), 0);
    CHECK_EQ_INT(s.n_blocks, 1);
    CHECK_EQ_INT(pd_kvseq_reserve(kc, &s, 4), 0); /* block size 4: still one */
    CHECK_EQ_INT(s.n_blocks, 1);
    CHECK_EQ_INT(pd_kvseq_reserve(kc, &s, 13), 0);
    CHECK_EQ_INT(s.n_blocks, 4);
    CHECK_EQ_INT(pd_kvseq_blocks_needed(kc, &s, 25), 3);
    CHECK_EQ_INT(pd_kvseq_reserve(kc, &s, 25), -ENOSPC); /* 3 more, 2 free */
    CHECK_EQ_INT(s.n_blocks, 4);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 2);
    pd_kvseq_trim(kc, &s, 5);
    CHECK_EQ_INT(s.n_blocks, 2);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 4);
    pd_kvseq_release(kc, &s);
    CHECK_EQ_INT(s.n_blocks, 0);
    CHECK(s.blocks == NULL);
    pool_free_drained(kc);
}

static void kv_offset_places_layers_heads_tokens(void)
{
    struct pd_kv_geom l = {.n_layer = 2, .n_head_kv = 3, .head_dim = 8, .block_size = 4};
    /* block = 2 layers x {K,V} x 3 heads x 4 tokens x 8 */
    CHECK_EQ_INT(pd_kv_block_elems(&l), 2 * 2 * 3 * 4 * 8);
    CHECK_EQ_INT(pd_kv_offset(&l, 0, 0, 0, 0, 0), 0);
    CHECK_EQ_INT(pd_kv_offset(&l, 0, 0, 0, 0, 1), 8); /* next token: next head_dim row */
    CHECK_EQ_INT(pd_kv_offset(&l, 0, 0, 0, 1, 0), 32); /* next head: next 4x8 tile */
    CHECK_EQ_INT(pd_kv_offset(&l, 0, 0, 1, 0, 0), 96); /* V after the 3 K tiles */
    CHECK_EQ_INT(pd_kv_offset(&l, 0, 1, 0, 0, 0), 192); /* layer 1 after layer 0's K and V */
    CHECK_EQ_INT(pd_kv_offset(&l, 2, 1, 1, 2, 3), 2 * 384 + 192 + 96 + 64 + 24);
}

/* The pool must be excluded from core dumps: the kernel marks it "dd". */
static void kvcache_pool_is_excluded_from_core_dumps(void)
{
    struct pd_kvcache *kc = pool(64);
    char want[64], line[512];
    int in_pool = 0, found = 0;
    snprintf(want, sizeof(want), "%lx-", (unsigned long)(uintptr_t)pd_kvcache_pool(kc));
    FILE *f = fopen("/proc/self/smaps", "r");
    CHECK(f != NULL);
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, want, strlen(want)) == 0)
            in_pool = 1;
        else if (in_pool && strncmp(line, "VmFlags:", 8) == 0) {
            found = strstr(line, " dd") != NULL;
            break;
        }
    }
    fclose(f);
    CHECK(in_pool);
    CHECK(found);
    pd_kvcache_free(kc);
}

/* ---- the prefix index (params.prefix_cache) ---- */

static struct pd_kvcache *prefix_pool(uint32_t n_blocks)
{
    struct pd_kvcache_params p = {.layout = {.n_layer = 2, .n_head_kv = 3, .head_dim = 8,
                                             .block_size = 4},
                                  .prefix_cache = true};
    p.mem_bytes = pd_kv_block_elems(&p.layout) * sizeof(float) * n_blocks;
    struct pd_kvcache *kc = NULL;
    char err[256];
    if (pd_kvcache_new(&p, &kc, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return kc;
}

/* A block name for the tests: k spread over all 32 bytes. What the index
 * does with a name does not depend on how it was made (prefix.h). */
static void name_of(uint32_t k, uint8_t out[PD_KV_HASH_LEN])
{
    for (int i = 0; i < PD_KV_HASH_LEN; i++)
        out[i] = (uint8_t)((k * 2654435761u) >> (i % 4 * 8)) ^ (uint8_t)(i * 37);
}

/* one block allocated and published under name k */
static uint32_t alloc_published(struct pd_kvcache *kc, uint32_t k)
{
    uint8_t name[PD_KV_HASH_LEN];
    name_of(k, name);
    const uint32_t id = alloc_one(kc);
    CHECK_EQ_INT(pd_kvcache_publish(kc, id, name), 1);
    return id;
}

/* The id the index holds under name k (its reference dropped again: an
 * idle block goes back to the end of the eviction order), or -1. */
static long long find_name(struct pd_kvcache *kc, uint32_t k)
{
    uint8_t name[1][PD_KV_HASH_LEN];
    uint32_t id;
    name_of(k, name[0]);
    if (pd_kvcache_lookup(kc, name, 1, &id) == 0)
        return -1;
    CHECK(pd_kvcache_unref(kc, id) >= 0);
    return id;
}

static struct pd_kvcache_stats stats(const struct pd_kvcache *kc)
{
    struct pd_kvcache_stats st;
    pd_kvcache_stats(kc, &st);
    return st;
}

static void kvcache_publish_then_release_keeps_block_idle_and_counted_free(void)
{
    struct pd_kvcache *kc = prefix_pool(4);
    const uint32_t id = alloc_published(kc, 1);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 3);
    CHECK_EQ_INT(stats(kc).cached, 1);
    CHECK_EQ_INT(stats(kc).idle, 0);
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), 0);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, id), 0);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 4); /* idle counts as free */
    CHECK_EQ_INT(stats(kc).cached, 1); /* but it stays in the index */
    CHECK_EQ_INT(stats(kc).idle, 1);
    CHECK_EQ_INT(stats(kc).evictions, 0);
    CHECK_EQ_INT(find_name(kc, 1), id);
    pool_free_drained(kc);
}

static void kvcache_lookup_maps_longest_prefix_and_takes_references(void)
{
    struct pd_kvcache *kc = prefix_pool(8);
    uint8_t names[5][PD_KV_HASH_LEN];
    uint32_t pub[3], ids[5];
    for (uint32_t k = 0; k < 5; k++)
        name_of(100 + k, names[k]);
    for (uint32_t k = 0; k < 3; k++)
        pub[k] = alloc_published(kc, 100 + k);
    CHECK_EQ_INT(pd_kvcache_unref(kc, pub[0]), 0); /* idle */
    CHECK_EQ_INT(stats(kc).idle, 1);

    CHECK_EQ_INT(pd_kvcache_lookup(kc, (const uint8_t(*)[PD_KV_HASH_LEN])names, 5, ids), 3);
    for (uint32_t k = 0; k < 3; k++)
        CHECK_EQ_INT(ids[k], pub[k]);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, pub[0]), 1); /* idle -> referenced */
    CHECK_EQ_INT(pd_kvcache_refcount(kc, pub[1]), 2);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, pub[2]), 2);
    CHECK_EQ_INT(stats(kc).idle, 0);
    CHECK_EQ_INT(stats(kc).cached, 3);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 5);

    for (uint32_t k = 0; k < 3; k++)
        CHECK_EQ_INT(pd_kvcache_unref(kc, ids[k]), k == 0 ? 0 : 1);
    for (uint32_t k = 1; k < 3; k++)
        CHECK_EQ_INT(pd_kvcache_unref(kc, pub[k]), 0);
    CHECK_EQ_INT(stats(kc).idle, 3);
    pool_free_drained(kc);
}

static void kvcache_lookup_stops_at_first_missing_name(void)
{
    struct pd_kvcache *kc = prefix_pool(8);
    uint8_t names[4][PD_KV_HASH_LEN];
    uint32_t pub[4], ids[4];
    for (uint32_t k = 0; k < 4; k++) {
        name_of(200 + k, names[k]);
        if (k != 1)
            pub[k] = alloc_published(kc, 200 + k);
    }
    const uint8_t(*nm)[PD_KV_HASH_LEN] = (const uint8_t(*)[PD_KV_HASH_LEN])names;
    CHECK_EQ_INT(pd_kvcache_lookup(kc, nm, 4, ids), 1); /* names 2 and 3 are past the gap */
    CHECK_EQ_INT(ids[0], pub[0]);
    CHECK_EQ_INT(pd_kvcache_lookup(kc, nm + 1, 3, ids + 1), 0);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, pub[2]), 1); /* no reference taken past the gap */
    CHECK_EQ_INT(pd_kvcache_refcount(kc, pub[3]), 1);
    CHECK_EQ_INT(pd_kvcache_unref(kc, ids[0]), 1);
    for (uint32_t k = 0; k < 4; k++)
        if (k != 1)
            CHECK_EQ_INT(pd_kvcache_unref(kc, pub[k]), 0);
    pool_free_drained(kc);
}

static void kvcache_alloc_prefers_free_blocks_before_evicting(void)
{
    struct pd_kvcache *kc = prefix_pool(6);
    const uint32_t a = alloc_published(kc, 1), b = alloc_published(kc, 2);
    CHECK_EQ_INT(pd_kvcache_unref(kc, a), 0);
    CHECK_EQ_INT(pd_kvcache_unref(kc, b), 0);
    uint32_t ids[5];
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 4, ids), 0); /* the four truly free ones */
    for (int i = 0; i < 4; i++)
        CHECK(ids[i] != a && ids[i] != b);
    CHECK_EQ_INT(stats(kc).evictions, 0);
    CHECK_EQ_INT(stats(kc).idle, 2);
    CHECK_EQ_INT(find_name(kc, 1), a);
    CHECK_EQ_INT(find_name(kc, 2), b);
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 1, &ids[4]), 0); /* now one must go */
    CHECK_EQ_INT(stats(kc).evictions, 1);
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(pd_kvcache_unref(kc, ids[i]), 0);
    pool_free_drained(kc);
}

static void kvcache_eviction_is_least_recently_released_first(void)
{
    struct pd_kvcache *kc = prefix_pool(3);
    uint32_t x[3];
    for (uint32_t k = 0; k < 3; k++)
        x[k] = alloc_published(kc, k);
    /* released in an order that is neither id nor allocation order:
     * A = x[2] (name 2), B = x[0] (name 0), C = x[1] (name 1) */
    CHECK_EQ_INT(pd_kvcache_unref(kc, x[2]), 0);
    CHECK_EQ_INT(pd_kvcache_unref(kc, x[0]), 0);
    CHECK_EQ_INT(pd_kvcache_unref(kc, x[1]), 0);
    CHECK_EQ_INT(stats(kc).idle, 3);
    uint32_t got[2];
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 1, &got[0]), 0);
    CHECK_EQ_INT(got[0], x[2]);
    CHECK_EQ_INT(stats(kc).evictions, 1);
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 1, &got[1]), 0);
    CHECK_EQ_INT(got[1], x[0]);
    CHECK_EQ_INT(stats(kc).evictions, 2);
    CHECK_EQ_INT(stats(kc).cached, 1);
    CHECK_EQ_INT(stats(kc).idle, 1);
    CHECK_EQ_INT(find_name(kc, 2), -1); /* evicted names are gone from the index */
    CHECK_EQ_INT(find_name(kc, 0), -1);
    CHECK_EQ_INT(find_name(kc, 1), x[1]);
    /* an evicted block comes back plain: writable, freed on release */
    CHECK(pd_kvcache_writable(kc, got[0]));
    CHECK_EQ_INT(pd_kvcache_unref(kc, got[0]), 0);
    CHECK_EQ_INT(pd_kvcache_unref(kc, got[1]), 0);
    CHECK_EQ_INT(stats(kc).idle, 1);
    pool_free_drained(kc);
}

/* A lookup and a second release move an idle block to the back of the line. */
static void kvcache_reused_block_goes_to_back_of_eviction_order(void)
{
    struct pd_kvcache *kc = prefix_pool(2);
    const uint32_t a = alloc_published(kc, 1), b = alloc_published(kc, 2);
    CHECK_EQ_INT(pd_kvcache_unref(kc, a), 0);
    CHECK_EQ_INT(pd_kvcache_unref(kc, b), 0);
    CHECK_EQ_INT(find_name(kc, 1), a); /* a released again, after b */
    uint32_t id;
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 1, &id), 0);
    CHECK_EQ_INT(id, b);
    CHECK_EQ_INT(find_name(kc, 1), a);
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), 0);
    pool_free_drained(kc);
}

static void kvcache_referenced_cached_block_is_never_evicted(void)
{
    struct pd_kvcache *kc = prefix_pool(2);
    const uint32_t held = alloc_published(kc, 1), idle = alloc_published(kc, 2);
    CHECK_EQ_INT(pd_kvcache_unref(kc, idle), 0);
    uint32_t ids[2];
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 2, ids), -ENOSPC); /* all or nothing */
    CHECK_EQ_INT(stats(kc).evictions, 0);
    CHECK_EQ_INT(stats(kc).idle, 1);
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 1, ids), 0);
    CHECK_EQ_INT(ids[0], idle);
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 1, ids + 1), -ENOSPC);
    CHECK_EQ_INT(stats(kc).evictions, 1);
    CHECK_EQ_INT(stats(kc).cached, 1);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, held), 1);
    CHECK_EQ_INT(find_name(kc, 1), held);
    CHECK_EQ_INT(pd_kvcache_unref(kc, ids[0]), 0);
    CHECK_EQ_INT(pd_kvcache_unref(kc, held), 0);
    pool_free_drained(kc);
}

static void kvcache_publish_duplicate_name_keeps_first_block(void)
{
    struct pd_kvcache *kc = prefix_pool(4);
    uint8_t name[PD_KV_HASH_LEN], other[PD_KV_HASH_LEN];
    name_of(7, name);
    name_of(8, other);
    const uint32_t first = alloc_published(kc, 7), second = alloc_one(kc);
    CHECK_EQ_INT(pd_kvcache_publish(kc, second, name), 0);
    CHECK_EQ_INT(pd_kvcache_publish(kc, first, name), 0); /* already indexed */
    CHECK_EQ_INT(pd_kvcache_publish(kc, first, other), 0); /* one name per block */
    CHECK_EQ_INT(stats(kc).cached, 1);
    CHECK(pd_kvcache_writable(kc, second)); /* never published */
    CHECK_EQ_INT(pd_kvcache_unref(kc, second), 0);
    CHECK_EQ_INT(stats(kc).idle, 0); /* freed as usual, not kept */
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 3);
    CHECK_EQ_INT(find_name(kc, 7), first);
    CHECK_EQ_INT(find_name(kc, 8), -1);
    CHECK_EQ_INT(pd_kvcache_unref(kc, first), 0);
    pool_free_drained(kc);
}

static void kvcache_publish_refuses_free_block(void)
{
    struct pd_kvcache *kc = prefix_pool(4);
    uint8_t name[PD_KV_HASH_LEN];
    name_of(3, name);
    const uint32_t id = alloc_one(kc);
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), 0);
    CHECK_EQ_INT(pd_kvcache_publish(kc, id, name), -EINVAL);
    CHECK_EQ_INT(pd_kvcache_publish(kc, 99, name), -EINVAL);
    const uint32_t idle = alloc_published(kc, 4);
    CHECK_EQ_INT(pd_kvcache_unref(kc, idle), 0);
    CHECK_EQ_INT(pd_kvcache_publish(kc, idle, name), -EINVAL); /* idle: no reference */
    CHECK_EQ_INT(stats(kc).cached, 1);
    CHECK_EQ_INT(find_name(kc, 3), -1);
    pool_free_drained(kc);
}

static void kvcache_prefix_off_lookup_and_publish_are_noops(void)
{
    struct pd_kvcache *kc = pool(4);
    uint8_t names[1][PD_KV_HASH_LEN];
    uint32_t ids[1] = {12345};
    name_of(1, names[0]);
    const uint32_t id = alloc_one(kc);
    CHECK_EQ_INT(pd_kvcache_publish(kc, id, names[0]), 0);
    CHECK(pd_kvcache_writable(kc, id)); /* not published: still the owner's to write */
    CHECK_EQ_INT(pd_kvcache_lookup(kc, (const uint8_t(*)[PD_KV_HASH_LEN])names, 1, ids), 0);
    CHECK_EQ_INT(ids[0], 12345);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, id), 1);
    struct pd_kvseq s;
    pd_kvseq_init(&s);
    CHECK_EQ_INT(pd_kvseq_map_prefix(kc, &s, (const uint8_t(*)[PD_KV_HASH_LEN])names, 1), 0);
    CHECK_EQ_INT(s.n_tokens, 0);
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), 0);
    struct pd_kvcache_stats st = stats(kc);
    CHECK_EQ_INT(st.cached, 0);
    CHECK_EQ_INT(st.idle, 0);
    CHECK_EQ_INT(st.evictions, 0);
    pd_kvseq_release(kc, &s);
    pool_free_drained(kc);
}

static void kvcache_writable_false_for_shared_or_published(void)
{
    struct pd_kvcache *kc = prefix_pool(4);
    uint8_t name[PD_KV_HASH_LEN];
    name_of(5, name);
    const uint32_t id = alloc_one(kc);
    CHECK(pd_kvcache_writable(kc, id));
    CHECK_EQ_INT(pd_kvcache_ref(kc, id), 0);
    CHECK(!pd_kvcache_writable(kc, id)); /* shared */
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), 1);
    CHECK(pd_kvcache_writable(kc, id));
    CHECK_EQ_INT(pd_kvcache_publish(kc, id, name), 1);
    CHECK(!pd_kvcache_writable(kc, id)); /* one reference, but a name promises contents */
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), 0);
    CHECK(!pd_kvcache_writable(kc, id)); /* idle */
    const uint32_t f = alloc_one(kc);
    CHECK_EQ_INT(pd_kvcache_unref(kc, f), 0);
    CHECK(!pd_kvcache_writable(kc, f)); /* free */
    CHECK(!pd_kvcache_writable(kc, 99));
    pool_free_drained(kc);
}

static void kvseq_map_prefix_sets_n_tokens_and_only_on_empty_seq(void)
{
    struct pd_kvcache *kc = prefix_pool(8);
    uint8_t names[3][PD_KV_HASH_LEN];
    const uint8_t(*nm)[PD_KV_HASH_LEN] = (const uint8_t(*)[PD_KV_HASH_LEN])names;
    uint32_t pub[2];
    for (uint32_t k = 0; k < 3; k++)
        name_of(300 + k, names[k]);
    for (uint32_t k = 0; k < 2; k++)
        pub[k] = alloc_published(kc, 300 + k);

    struct pd_kvseq s, t, u;
    pd_kvseq_init(&s);
    pd_kvseq_init(&t);
    pd_kvseq_init(&u);
    CHECK_EQ_INT(pd_kvseq_map_prefix(kc, &s, nm, 3), 2);
    CHECK_EQ_INT(s.n_blocks, 2);
    CHECK_EQ_INT(s.n_tokens, 2 * 4); /* block size 4 */
    CHECK_EQ_INT(s.blocks[0], pub[0]);
    CHECK_EQ_INT(s.blocks[1], pub[1]);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, pub[0]), 2);
    /* a sequence that holds anything already is left alone */
    CHECK_EQ_INT(pd_kvseq_map_prefix(kc, &s, nm, 3), 0);
    CHECK_EQ_INT(s.n_blocks, 2);
    CHECK_EQ_INT(pd_kvseq_reserve(kc, &t, 3), 0);
    CHECK_EQ_INT(pd_kvseq_map_prefix(kc, &t, nm, 3), 0);
    CHECK_EQ_INT(t.n_blocks, 1);
    CHECK_EQ_INT(t.n_tokens, 0);
    CHECK_EQ_INT(pd_kvcache_refcount(kc, pub[0]), 2);
    /* nothing cached under the first name: an empty sequence stays empty */
    CHECK_EQ_INT(pd_kvseq_map_prefix(kc, &u, nm + 2, 1), 0);
    CHECK_EQ_INT(u.n_blocks, 0);
    CHECK_EQ_INT(u.n_tokens, 0);
    pd_kvseq_release(kc, &s);
    pd_kvseq_release(kc, &t);
    pd_kvseq_release(kc, &u);
    for (uint32_t k = 0; k < 2; k++)
        CHECK_EQ_INT(pd_kvcache_unref(kc, pub[k]), 0);
    CHECK_EQ_INT(stats(kc).idle, 2);
    pool_free_drained(kc);
}

static void kvseq_publish_stops_at_partial_block(void)
{
    struct pd_kvcache *kc = prefix_pool(8);
    uint8_t names[4][PD_KV_HASH_LEN];
    const uint8_t(*nm)[PD_KV_HASH_LEN] = (const uint8_t(*)[PD_KV_HASH_LEN])names;
    for (uint32_t k = 0; k < 4; k++)
        name_of(400 + k, names[k]);
    struct pd_kvseq s;
    pd_kvseq_init(&s);
    CHECK_EQ_INT(pd_kvseq_reserve(kc, &s, 12), 0); /* 3 blocks of 4 */
    s.n_tokens = 6; /* block 0 full, block 1 half */
    CHECK_EQ_INT(pd_kvseq_publish(kc, &s, nm, 0, 4), 1);
    CHECK_EQ_INT(stats(kc).cached, 1);
    CHECK(!pd_kvcache_writable(kc, s.blocks[0]));
    CHECK(pd_kvcache_writable(kc, s.blocks[1]));
    CHECK_EQ_INT(pd_kvseq_publish(kc, &s, nm, 1, 4), 1); /* nothing new is full */
    s.n_tokens = 11;
    CHECK_EQ_INT(pd_kvseq_publish(kc, &s, nm, 1, 4), 2);
    CHECK_EQ_INT(stats(kc).cached, 2);
    s.n_tokens = 12;
    /* names for 4 blocks, but s holds 3 */
    CHECK_EQ_INT(pd_kvseq_publish(kc, &s, nm, 2, 4), 3);
    CHECK_EQ_INT(stats(kc).cached, 3);
    CHECK_EQ_INT(pd_kvseq_publish(kc, &s, nm, 3, 4), 3);
    CHECK_EQ_INT(find_name(kc, 403), -1);
    for (uint32_t k = 0; k < 3; k++)
        CHECK_EQ_INT(find_name(kc, 400 + k), s.blocks[k]);
    pd_kvseq_release(kc, &s);
    CHECK_EQ_INT(stats(kc).idle, 3);
    pool_free_drained(kc);
}

/* Idle blocks count as free (pd_kvcache_n_free), so a reservation may take
 * them: the engine's step checks n_free before it reserves. */
static void kvseq_reserve_evicts_idle_blocks_when_none_are_free(void)
{
    struct pd_kvcache *kc = prefix_pool(3);
    uint32_t x[3];
    for (uint32_t k = 0; k < 3; k++)
        x[k] = alloc_published(kc, k);
    for (uint32_t k = 0; k < 3; k++)
        CHECK_EQ_INT(pd_kvcache_unref(kc, x[k]), 0);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 3);
    struct pd_kvseq s;
    pd_kvseq_init(&s);
    CHECK_EQ_INT(pd_kvseq_blocks_needed(kc, &s, 8), 2);
    CHECK_EQ_INT(pd_kvseq_reserve(kc, &s, 8), 0);
    CHECK_EQ_INT(s.n_blocks, 2);
    CHECK_EQ_INT(stats(kc).evictions, 2);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 1);
    pd_kvseq_release(kc, &s);
    pool_free_drained(kc);
}

/* ---- the index against a reference model under random churn ---- */

enum { CH_BLOCKS = 64, CH_NAMES = 96, CH_HELD = 256 };

/* What the pool should hold: per block its references and its name (-1:
 * none), the idle blocks in eviction order, and the references the test
 * holds (one entry per reference). */
struct churn_model {
    int refs[CH_BLOCKS];
    int name[CH_BLOCKS];
    int by_name[CH_NAMES]; /* block id or -1 */
    uint32_t idle[CH_BLOCKS], n_idle;
    uint32_t held[CH_HELD], n_held;
};

static uint64_t churn_rng = 0x9e3779b97f4a7c15ull;

static uint32_t churn_rand(uint32_t n)
{
    churn_rng ^= churn_rng << 13;
    churn_rng ^= churn_rng >> 7;
    churn_rng ^= churn_rng << 17;
    return (uint32_t)((churn_rng >> 11) % n);
}

static void model_idle_remove(struct churn_model *m, uint32_t id)
{
    uint32_t i = 0;
    while (i < m->n_idle && m->idle[i] != id)
        i++;
    CHECK(i < m->n_idle);
    memmove(m->idle + i, m->idle + i + 1, (m->n_idle - i - 1) * sizeof(m->idle[0]));
    m->n_idle--;
}

/* the model's side of taking a reference on a cached block */
static void model_take(struct churn_model *m, uint32_t id)
{
    if (m->refs[id]++ == 0)
        model_idle_remove(m, id);
    m->held[m->n_held++] = id;
}

/* drop the test's reference number h, in the pool and the model */
static void churn_release(struct pd_kvcache *kc, struct churn_model *m, uint32_t h)
{
    const uint32_t id = m->held[h];
    m->held[h] = m->held[--m->n_held];
    CHECK_EQ_INT(pd_kvcache_unref(kc, id), --m->refs[id]);
    if (m->refs[id] == 0 && m->name[id] >= 0)
        m->idle[m->n_idle++] = id;
}

static void churn_alloc(struct pd_kvcache *kc, struct churn_model *m)
{
    uint32_t n_free = 0, id;
    for (uint32_t i = 0; i < CH_BLOCKS; i++)
        n_free += m->refs[i] == 0 && m->name[i] < 0;
    if (m->n_held == CH_HELD)
        return;
    if (n_free + m->n_idle == 0) {
        CHECK_EQ_INT(pd_kvcache_alloc(kc, 1, &id), -ENOSPC);
        return;
    }
    CHECK_EQ_INT(pd_kvcache_alloc(kc, 1, &id), 0);
    CHECK(id < CH_BLOCKS);
    if (n_free) { /* a truly free block, never a cached one */
        CHECK(m->refs[id] == 0 && m->name[id] < 0);
    } else { /* the least recently released idle block */
        CHECK_EQ_INT(id, m->idle[0]);
        model_idle_remove(m, id);
        m->by_name[m->name[id]] = -1;
        m->name[id] = -1;
    }
    m->refs[id] = 1;
    m->held[m->n_held++] = id;
}

static void churn_publish(struct pd_kvcache *kc, struct churn_model *m)
{
    if (m->n_held == 0)
        return;
    const uint32_t id = m->held[churn_rand(m->n_held)], k = churn_rand(CH_NAMES);
    uint8_t name[PD_KV_HASH_LEN];
    name_of(k, name);
    const int want = m->name[id] < 0 && m->by_name[k] < 0;
    CHECK_EQ_INT(pd_kvcache_publish(kc, id, name), want);
    if (want) {
        m->name[id] = (int)k;
        m->by_name[k] = (int)id;
    }
}

/* a lookup of up to 3 random names: the run the model predicts, its references held */
static void churn_lookup(struct pd_kvcache *kc, struct churn_model *m)
{
    uint8_t names[3][PD_KV_HASH_LEN];
    uint32_t k[3], ids[3], run = 0;
    const uint32_t n = 1 + churn_rand(3);
    for (uint32_t i = 0; i < n; i++) {
        k[i] = churn_rand(CH_NAMES);
        name_of(k[i], names[i]);
    }
    if (m->n_held + n > CH_HELD)
        return;
    while (run < n && m->by_name[k[run]] >= 0)
        run++;
    CHECK_EQ_INT(pd_kvcache_lookup(kc, (const uint8_t(*)[PD_KV_HASH_LEN])names, n, ids), run);
    for (uint32_t i = 0; i < run; i++) {
        CHECK_EQ_INT(ids[i], m->by_name[k[i]]);
        model_take(m, ids[i]);
    }
}

/* The pool's counts against the model's, and every name where the model has it. */
static void churn_check(struct pd_kvcache *kc, struct churn_model *m, int every_name)
{
    uint32_t n_free = 0, n_cached = 0, n_ref = 0;
    for (uint32_t i = 0; i < CH_BLOCKS; i++) {
        n_free += m->refs[i] == 0 && m->name[i] < 0;
        n_cached += m->name[i] >= 0;
        n_ref += m->refs[i] > 0;
        CHECK_EQ_INT(pd_kvcache_refcount(kc, i), m->refs[i]);
    }
    struct pd_kvcache_stats st = stats(kc);
    CHECK_EQ_INT(st.cached, n_cached);
    CHECK_EQ_INT(st.idle, m->n_idle);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), n_free + m->n_idle);
    CHECK_EQ_INT(n_free + m->n_idle + n_ref, CH_BLOCKS);
    if (!every_name)
        return;
    for (uint32_t k = 0; k < CH_NAMES; k++) {
        long long got = find_name(kc, k);
        CHECK_EQ_INT(got, m->by_name[k]);
        if (got >= 0 && m->refs[got] == 0) { /* find_name released it again: now the newest */
            model_idle_remove(m, (uint32_t)got);
            m->idle[m->n_idle++] = (uint32_t)got;
        }
    }
}

/* 64 blocks: a 128-slot table up to half full, 96 names over it, so names
 * and slots collide, probe chains wrap past the last slot, and evictions
 * delete from the middle of chains (backward shift). Slots depend on a key
 * drawn per pool, so 32 pools run fixed-seed ops: with fewer, a broken
 * wrap-around case in the shift went unseen in some runs (checked by
 * mutating kvcache.c's index_remove by hand). */
static void kvcache_index_survives_random_churn_against_a_reference_model(void)
{
    uint64_t evictions = 0;
    churn_rng = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 32; round++) {
        struct pd_kvcache *kc = prefix_pool(CH_BLOCKS);
        struct churn_model *m = calloc(1, sizeof(*m));
        CHECK(m && pd_kvcache_n_blocks(kc) == CH_BLOCKS);
        for (uint32_t i = 0; i < CH_BLOCKS; i++)
            m->name[i] = -1;
        for (uint32_t k = 0; k < CH_NAMES; k++)
            m->by_name[k] = -1;
        for (int op = 0; op < 4000; op++) {
            const uint32_t r = churn_rand(100);
            if (r < 30)
                churn_alloc(kc, m);
            else if (r < 55)
                churn_publish(kc, m);
            else if (r < 65)
                churn_lookup(kc, m);
            else if (m->n_held)
                churn_release(kc, m, churn_rand(m->n_held));
            churn_check(kc, m, op % 16 == 0);
        }
        while (m->n_held)
            churn_release(kc, m, m->n_held - 1);
        churn_check(kc, m, 1);
        evictions += stats(kc).evictions;
        free(m);
        pool_free_drained(kc);
    }
    CHECK(evictions > 100); /* the ops really drove the pool into eviction */
}

static const struct pd_test tests[] = {
    PD_TEST(kvcache_sizes_pool_in_whole_blocks),
    PD_TEST(kvcache_refuses_pool_smaller_than_a_block),
    PD_TEST(kvcache_16bit_pools_hold_twice_the_blocks),
    PD_TEST(kvcache_alloc_is_all_or_nothing),
    PD_TEST(kvcache_block_freed_at_last_reference),
    PD_TEST(kvcache_double_free_and_bad_ids_refused),
    PD_TEST(kvseq_reserve_grows_by_blocks_and_trim_undoes),
    PD_TEST(kv_offset_places_layers_heads_tokens),
    PD_TEST(kvcache_pool_is_excluded_from_core_dumps),
    PD_TEST(kvcache_publish_then_release_keeps_block_idle_and_counted_free),
    PD_TEST(kvcache_lookup_maps_longest_prefix_and_takes_references),
    PD_TEST(kvcache_lookup_stops_at_first_missing_name),
    PD_TEST(kvcache_alloc_prefers_free_blocks_before_evicting),
    PD_TEST(kvcache_eviction_is_least_recently_released_first),
    PD_TEST(kvcache_reused_block_goes_to_back_of_eviction_order),
    PD_TEST(kvcache_referenced_cached_block_is_never_evicted),
    PD_TEST(kvcache_publish_duplicate_name_keeps_first_block),
    PD_TEST(kvcache_publish_refuses_free_block),
    PD_TEST(kvcache_prefix_off_lookup_and_publish_are_noops),
    PD_TEST(kvcache_writable_false_for_shared_or_published),
    PD_TEST(kvseq_map_prefix_sets_n_tokens_and_only_on_empty_seq),
    PD_TEST(kvseq_publish_stops_at_partial_block),
    PD_TEST(kvseq_reserve_evicts_idle_blocks_when_none_are_free),
    PD_TEST(kvcache_index_survives_random_churn_against_a_reference_model),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
