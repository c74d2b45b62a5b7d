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
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
