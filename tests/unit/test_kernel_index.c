/* kernels/: the PD_HD helpers that the CPU reference and the CUDA kernels
 * share (KV pool offsets, context splits and their workspace, bf16 and half, RoPE
 * angles), checked on the CPU against formulas written out here. They are
 * the same functions nvcc compiles for the device, so these tests cover the
 * index arithmetic of both paths on every machine. */
#include "float_bits.h"
#include "pd_test.h"

#include "attention.h"
#include "bf16.h"
#include "kv_layout.h"
#include "quant.h"
#include "rope.h"

#include <math.h>

static uint64_t rng = 0x5eed;

static uint32_t rnd(uint32_t n)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33) % n;
}

static struct pd_kv_geom random_layout(void)
{
    struct pd_kv_geom l = {1 + rnd(40), 1 + rnd(16), 2 * (1 + rnd(128)), 1 + rnd(64)};
    return l;
}

static void kv_offset_follows_the_block_major_layout(void)
{
    for (int i = 0; i < 2000; i++) {
        const struct pd_kv_geom l = random_layout();
        const uint32_t b = rnd(5000), layer = rnd(l.n_layer), kv = rnd(2), h = rnd(l.n_head_kv),
                       t = rnd(l.block_size);
        /* block[layer][kv][head][token][head_dim], written out */
        uint64_t want = ((((uint64_t)b * l.n_layer + layer) * 2 + kv) * l.n_head_kv + h) *
                            l.block_size * l.head_dim +
                        (uint64_t)t * l.head_dim;
        CHECK_EQ_INT(pd_kv_offset(&l, b, layer, kv, h, t), want);
    }
}

static void kv_block_is_one_contiguous_run(void)
{
    for (int i = 0; i < 200; i++) {
        const struct pd_kv_geom l = random_layout();
        const uint32_t b = rnd(100);
        const uint64_t last = pd_kv_offset(&l, b, l.n_layer - 1, 1, l.n_head_kv - 1, l.block_size - 1);
        CHECK_EQ_INT(pd_kv_offset(&l, b, 0, 0, 0, 0), (uint64_t)b * pd_kv_block_elems(&l));
        CHECK_EQ_INT(last + l.head_dim, (uint64_t)(b + 1) * pd_kv_block_elems(&l));
        /* a head's tile: tokens head_dim apart */
        if (l.block_size > 1)
            CHECK_EQ_INT(pd_kv_offset(&l, b, 0, 1, 0, 1) - pd_kv_offset(&l, b, 0, 1, 0, 0),
                         l.head_dim);
    }
}

static void kv_slot_offset_splits_block_and_token(void)
{
    for (int i = 0; i < 2000; i++) {
        const struct pd_kv_geom l = random_layout();
        const uint32_t b = rnd(100000), t = rnd(l.block_size), layer = rnd(l.n_layer),
                       kv = rnd(2), h = rnd(l.n_head_kv);
        const int64_t slot = (int64_t)b * l.block_size + t;
        CHECK_EQ_INT(pd_kv_slot_offset(&l, slot, layer, kv, h), pd_kv_offset(&l, b, layer, kv, h, t));
    }
}

static void kv_pos_offset_goes_through_the_block_table(void)
{
    uint32_t table[64];
    for (int i = 0; i < 500; i++) {
        const struct pd_kv_geom l = random_layout();
        for (int j = 0; j < 64; j++)
            table[j] = rnd(1u << 20);
        const uint32_t pos = rnd(64 * l.block_size), layer = rnd(l.n_layer), kv = rnd(2),
                       h = rnd(l.n_head_kv);
        CHECK_EQ_INT(pd_kv_pos_offset(&l, table, pos, layer, kv, h),
                     pd_kv_offset(&l, table[pos / l.block_size], layer, kv, h, pos % l.block_size));
    }
}

static const uint32_t special_floats[] = {
    0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u,
    0xffffffffu, 0x00000001u, 0x007fffffu, 0x3f808000u, 0x3f818000u, 0x3f80ffffu,
    0x7f7fffffu, 0x7f7f8000u, 0x477fe000u, 0x477ff000u, 0x477fefffu, 0x38800000u,
    0x387fffffu, 0x33000000u, 0x33000001u, 0x33c00000u, 0xc0490fdbu,
};
#define N_SPECIAL (sizeof special_floats / sizeof *special_floats)

static float float_at(uint64_t i)
{
    return f32_from_bits(i < N_SPECIAL ? special_floats[i]
                                       : (uint32_t)(rnd(1u << 16) << 16 | rnd(1u << 16)));
}

/* bf16 by a different route: of the two bf16 values around f (its top 16
 * bits, and one ulp further from zero), the nearer in exact double
 * arithmetic, the even one on a tie. */
static uint16_t bf16_nearest(float f)
{
    const uint32_t x = f32_bits(f);
    if (isnan(f))
        return (uint16_t)((x >> 16) | 0x40);
    const uint16_t lo = (uint16_t)(x >> 16), hi = (uint16_t)(lo + 1);
    if ((x & 0xffffu) == 0)
        return lo;
    const double dlo = fabs((double)f - (double)pd_bf16_decode(lo));
    /* past the largest finite value the next "ulp" is infinity, which
     * IEEE rounding places at 2^128 */
    const double vhi = (hi & 0x7fffu) == 0x7f80u ? copysign(ldexp(1.0, 128), (double)f)
                                                 : (double)pd_bf16_decode(hi);
    const double dhi = fabs(vhi - (double)f);
    return dlo < dhi ? lo : dhi < dlo ? hi : (lo & 1) ? hi : lo;
}

static void bf16_helpers_round_to_nearest_even(void)
{
    for (uint64_t i = 0; i < 200000 + N_SPECIAL; i++) {
        const float f = float_at(i);
        CHECK_EQ_INT(pd_bf16_encode(f), bf16_nearest(f));
        const uint32_t x = f32_bits(f);
        const float d = pd_bf16_decode((uint16_t)x); /* widening is exact: the top bits */
        const uint32_t want = (x & 0xffffu) << 16;
        CHECK(memcmp(&d, &want, 4) == 0);
    }
}

/* half against the compiler's own _Float16 (GCC and Clang on x86-64) */
static void f16_helpers_match_the_compilers_half(void)
{
#ifdef __FLT16_MAX__
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 c;
        memcpy(&c, &h, 2);
        const float want = (float)c, got = pd_f16_decode((uint16_t)h);
        CHECK(isnan(want) ? isnan(got) : memcmp(&got, &want, 4) == 0);
    }
    for (uint64_t i = 0; i < 200000 + N_SPECIAL; i++) {
        const float f = float_at(i);
        const _Float16 c = (_Float16)f;
        uint16_t want;
        memcpy(&want, &c, 2);
        if (isnan(f))
            CHECK((pd_f16_encode(f) & 0x7c00) == 0x7c00 && (pd_f16_encode(f) & 0x3ff) != 0);
        else
            CHECK_EQ_INT(pd_f16_encode(f), want);
    }
#else
    /* known values instead (test_quant.c checks every half's round trip) */
    CHECK(pd_f16_decode(0x3c00) == 1.0f && pd_f16_decode(0x0001) == ldexpf(1.0f, -24));
    CHECK_EQ_INT(pd_f16_encode(65520.0f), 0x7c00);
#endif
}

static void rope_theta_is_the_reference_formula(void)
{
    float factors[64];
    for (int i = 0; i < 64; i++)
        factors[i] = 1.0f + (float)rnd(32) / 4.0f;
    for (int i = 0; i < 5000; i++) {
        const int32_t pos = (int32_t)rnd(1u << 17);
        const uint32_t rope_dim = 2 * (1 + rnd(64)), k = rnd(rope_dim / 2);
        const float base = rnd(2) ? 10000.0f : 500000.0f, scale = rnd(2) ? 1.0f : 0.125f;
        const float *ff = rnd(2) ? factors : NULL;
        double want = (double)pos * scale * pow((double)base, -2.0 * k / rope_dim);
        if (ff)
            want /= ff[k];
        CHECK(pd_rope_theta(pos, k, rope_dim, base, scale, ff) == want);
    }
}

/* Every plan covers the context exactly once, in aligned pieces. */
static void attn_plan_splits_cover_the_context(void)
{
    for (int i = 0; i < 20000; i++) {
        const uint32_t n_items = 1 + rnd(5000), max_ctx = 1 + rnd(1u << 17), slots = 1 + rnd(2000);
        const uint32_t forced = rnd(3) ? 0 : 1 + rnd(4096);
        const uint32_t n_tok = 1 + rnd(64), n_head = 1 + rnd(64), hd = 2 * (1 + rnd(128));
        const uint64_t ws = rnd(2) ? UINT64_MAX : (uint64_t)rnd(1u << 24);
        const struct pd_attn_plan p =
            pd_attn_plan_splits(n_items, max_ctx, slots, forced, ws, n_tok, n_head, hd);
        CHECK(p.chunk > 0 && p.chunk % PD_ATTN_CHUNK_ALIGN == 0);
        CHECK(p.n_splits >= 1 && p.n_splits <= PD_ATTN_MAX_SPLITS);
        CHECK((uint64_t)p.n_splits * p.chunk >= max_ctx);
        CHECK((uint64_t)(p.n_splits - 1) * p.chunk < max_ctx);
        CHECK_EQ_INT(p.n_splits, pd_attn_n_pieces(max_ctx, p.chunk));
        if (p.n_splits > 1)
            CHECK(pd_attn_workspace_bytes(n_tok, n_head, hd, p.n_splits) <= ws);
        if (!forced && p.n_splits > 1) /* pieces are not smaller than asked */
            CHECK(p.chunk >= PD_ATTN_MIN_CHUNK);
    }
}

/* A token's own pieces under a plan: its context covered exactly once, in
 * at most the plan's n_splits aligned pieces no longer than the plan's;
 * as many pieces as its context allows at PD_ATTN_MIN_CHUNK (the grid's
 * blocks for it all busy), so a context half of max_ctx takes every split,
 * not half of them; a forced piece size kept. */
static void attn_token_chunk_spreads_short_contexts(void)
{
    for (int i = 0; i < 20000; i++) {
        const uint32_t max_ctx = 1 + rnd(1u << 17), slots = 1 + rnd(2000), n_items = 1 + rnd(64);
        const uint32_t forced = rnd(4) ? 0 : 1 + rnd(4096);
        const struct pd_attn_plan p =
            pd_attn_plan_splits(n_items, max_ctx, slots, forced, UINT64_MAX, 8, 8, 64);
        const uint32_t n_ctx = 1 + rnd(max_ctx);
        const uint32_t c = pd_attn_token_chunk(n_ctx, p.n_splits, p.chunk, forced != 0);
        const uint32_t pieces = pd_attn_n_pieces(n_ctx, c);
        CHECK(c % PD_ATTN_CHUNK_ALIGN == 0 && c <= p.chunk);
        CHECK(pieces >= 1 && pieces <= p.n_splits);
        CHECK((uint64_t)pieces * c >= n_ctx && (uint64_t)(pieces - 1) * c < n_ctx);
        if (forced || p.n_splits == 1) {
            CHECK_EQ_INT(c, p.chunk);
            continue;
        }
        CHECK(c >= PD_ATTN_MIN_CHUNK || c == p.chunk);
        /* fewer pieces than splits only where a piece is at its floor */
        if (pieces < p.n_splits)
            CHECK(c <= PD_ATTN_MIN_CHUNK + PD_ATTN_CHUNK_ALIGN || c == p.chunk ||
                  pd_attn_n_pieces(n_ctx, c - PD_ATTN_CHUNK_ALIGN) > p.n_splits);
    }
    /* batch 1 of 8 KV heads on 264 slots, max_model_len 8k: 32 pieces of 256;
     * a 4k context in 32 pieces of 128 (was 16 of 256: half the blocks idle) */
    const struct pd_attn_plan p = pd_attn_plan_splits(8, 8192, 264, 0, UINT64_MAX, 1, 32, 128);
    CHECK_EQ_INT(p.n_splits, 32);
    CHECK_EQ_INT(pd_attn_token_chunk(4096, p.n_splits, p.chunk, 0), 128);
    CHECK_EQ_INT(pd_attn_token_chunk(4096, p.n_splits, p.chunk, 1), 256);
    CHECK_EQ_INT(pd_attn_token_chunk(200, p.n_splits, p.chunk, 0), 128); /* 2 pieces */
}

/* On 132 SMs x 4 resident blocks (528 slots) at 8k context: batch 16 x 4 KV
 * heads (64 blocks) splits until the waves are nearly full; batch 64 (256
 * blocks) takes 2 pieces (512 blocks, 97% of one wave), not 3 (768: 1.45
 * waves, 73%); a short context stays whole; no workspace, one piece. */
static void attn_plan_splits_fill_the_waves(void)
{
    struct pd_attn_plan p = pd_attn_plan_splits(64, 8192, 528, 0, UINT64_MAX, 16, 32, 128);
    CHECK(p.n_splits * 64 >= 528 * 9 / 10);
    CHECK(pd_attn_wave_fill(64, 8192, p.n_splits, 528) >= 900);
    CHECK(p.n_splits <= 16);
    p = pd_attn_plan_splits(256, 8192, 528, 0, UINT64_MAX, 64, 32, 128);
    CHECK_EQ_INT(p.n_splits, 2);
    CHECK_EQ_INT(p.chunk, 4096);
    p = pd_attn_plan_splits(64, 200, 528, 0, UINT64_MAX, 16, 32, 128);
    CHECK_EQ_INT(p.n_splits, 1);
    p = pd_attn_plan_splits(4000, 8192, 528, 0, UINT64_MAX, 1000, 32, 128); /* 7.6 waves already */
    CHECK_EQ_INT(p.n_splits, 1);
    p = pd_attn_plan_splits(4, 600, 528, 0, UINT64_MAX, 2, 4, 16); /* a tiny grid: all it can */
    CHECK_EQ_INT(p.n_splits, 4);
    p = pd_attn_plan_splits(1, 100000, 528, 0, 0, 1, 32, 128);
    CHECK_EQ_INT(p.n_splits, 1);
    CHECK(p.chunk >= 100000);
    p = pd_attn_plan_splits(1, 1000, 528, 100, UINT64_MAX, 1, 8, 64); /* forced */
    CHECK_EQ_INT(p.chunk, 128);
    CHECK_EQ_INT(p.n_splits, 8);
}

static void attn_wave_fill_counts_the_last_wave(void)
{
    CHECK_EQ_INT(pd_attn_wave_fill(528, 1000, 1, 528), 1000);
    CHECK_EQ_INT(pd_attn_wave_fill(264, 1000, 1, 528), 500);
    CHECK_EQ_INT(pd_attn_wave_fill(768, 1000, 1, 528), 727); /* 768 / (2 x 528) */
    CHECK_EQ_INT(pd_attn_wave_fill(256, 8192, 2, 528), 969);
}

static void attn_workspace_offsets_are_disjoint_and_in_bounds(void)
{
    const uint32_t n_tok = 5, n_head = 6, S = 7, hd = 10;
    const uint64_t floats = pd_attn_workspace_bytes(n_tok, n_head, hd, S) / sizeof(float);
    uint8_t *seen = calloc(floats, 1);
    CHECK(seen);
    for (uint32_t t = 0; t < n_tok; t++)
        for (uint32_t h = 0; h < n_head; h++)
            for (uint32_t s = 0; s < S; s++) {
                uint64_t o = pd_attn_part_offset(t, h, s, n_head, S, hd);
                for (uint32_t d = 0; d < hd; d++) {
                    CHECK(o + d < floats && !seen[o + d]);
                    seen[o + d] = 1;
                }
                uint64_t l = pd_attn_lse_offset(n_tok, t, h, s, n_head, S, hd);
                CHECK(l < floats && !seen[l]);
                seen[l] = 1;
            }
    for (uint64_t i = 0; i < floats; i++)
        CHECK(seen[i]);
    free(seen);
}

static const struct pd_test tests[] = {
    PD_TEST(kv_offset_follows_the_block_major_layout),
    PD_TEST(kv_block_is_one_contiguous_run),
    PD_TEST(kv_slot_offset_splits_block_and_token),
    PD_TEST(kv_pos_offset_goes_through_the_block_table),
    PD_TEST(bf16_helpers_round_to_nearest_even),
    PD_TEST(f16_helpers_match_the_compilers_half),
    PD_TEST(rope_theta_is_the_reference_formula),
    PD_TEST(attn_plan_splits_cover_the_context),
    PD_TEST(attn_plan_splits_fill_the_waves),
    PD_TEST(attn_token_chunk_spreads_short_contexts),
    PD_TEST(attn_wave_fill_counts_the_last_wave),
    PD_TEST(attn_workspace_offsets_are_disjoint_and_in_bounds),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
