/* kernels/attention.cu: decode attention over block tables.
 *
 * Layout of the work (docs/internals/kernels.md has the reasoning):
 *   grid   (token, KV head x group chunk, context split)
 *   block  ATT_WARPS warps; each warp walks its own positions of the split,
 *          ATT_UNROLL at a time (all their K and V loads issued before use)
 *   warp   LPT lanes cover one head_dim row (VEC elements each, 16-byte
 *          loads on the fast paths); the 32 / LPT lane groups ("head slots")
 *          take GH query heads each, so one K/V load feeds every query head
 *          of the GQA group the block handles (HPC = 32 / LPT * GH heads)
 * Each lane keeps an online softmax (running max, sum, output) per head in
 * registers, in log2 units (q is pre-scaled by scale * log2 e). At the end the
 * warps merge through shared memory; a token whose context has one piece is
 * written to `out`, otherwise the piece's normalised output and log2-sum-exp
 * go to the workspace and attn_merge_kernel combines them.
 *
 * Fast paths: head_dim 64 and 128 with a 16-byte-aligned F32, BF16 or F16 pool.
 * Any other head_dim up to 256 takes the generic path (scalar loads, one lane
 * per element): correct, not tuned.
 */
#include "attention.h"
#include "bf16.h"
#include "cuda_check.cuh"
#include "kv_tile.cuh"
#include "mma.cuh"
#include "quant.h"

#include <cuda_fp16.h>
#include <math.h>
#include <mutex>
#include <type_traits>
#include <string.h>

#define ATT_WARPS 4
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_UNROLL 4
#define ATT_MAX_HEAD_DIM 256
#define MERGE_THREADS 64

struct attn_params {
    void *out; /* (n_tokens, n_head, head_dim) of out_type */
    uint32_t out_type; /* PD_DT_F32, PD_DT_BF16 or PD_DT_F16 */
    const float *q; /* (n_tokens, n_head, head_dim), token t's at q + t * q_ld */
    uint64_t q_ld;
    const void *pool; /* kv_layout.h, elements of T */
    const int32_t *tok_seq, *tok_pos; /* (n_tokens) */
    const uint32_t *block_tables; /* (n_seqs, max_blocks) */
    float *ws; /* workspace: partials at pd_attn_part_offset, log2-sum-exp at
                * pd_attn_lse_offset; NULL without splits */
    struct pd_kv_geom kv;
    uint32_t layer, n_tokens, n_head, group, max_blocks;
    uint32_t n_hchunks; /* group chunks per KV head */
    uint32_t n_splits, chunk; /* the plan's (for max_ctx) */
    uint32_t fixed_chunk; /* split_tokens forced the piece size: every token's is chunk */
    uint32_t max_ctx; /* positions beyond are refused (NaN rows) */
    uint32_t bs_shift; /* log2(block_size) when bs_pow2 */
    uint32_t bs_pow2;
    float qscale; /* scale * log2(e) */
};

/* ---- stores ----------------------------------------------------------- */

/* element i of out: v as out_type (rounded as kernels/bf16.h rounds) */
__device__ __forceinline__ void put_out(const struct attn_params &p, uint64_t i, float v)
{
    if (p.out_type == PD_DT_BF16)
        ((uint16_t *)p.out)[i] = pd_bf16_encode(v);
    else if (p.out_type == PD_DT_F16)
        ((uint16_t *)p.out)[i] = pd_f16_encode(v);
    else
        ((float *)p.out)[i] = v;
}

/* ---- loads ------------------------------------------------------------ */

/* VEC elements of T: the raw load, and its conversion to float. */
template <typename T, int VEC> struct kv_vec;

template <> struct kv_vec<float, 4> {
    typedef float4 raw;
    static __device__ __forceinline__ raw load(const float *p) { return __ldg((const float4 *)p); }
    static __device__ __forceinline__ void cvt(const raw &r, float *f)
    {
        f[0] = r.x, f[1] = r.y, f[2] = r.z, f[3] = r.w;
    }
};

template <> struct kv_vec<float, 1> {
    typedef float raw;
    static __device__ __forceinline__ raw load(const float *p) { return __ldg(p); }
    static __device__ __forceinline__ void cvt(const raw &r, float *f) { f[0] = r; }
};

/* IEEE half elements: a type of their own so that the kernel's T tells the
 * two 16-bit formats apart (pointer arithmetic and loads as uint16_t). */
struct f16_elem {
    uint16_t bits;
};

/* 16-bit elements widened: bf16 by a shift (exact), half by the hardware's
 * conversion (exact too) */
template <bool BF> __device__ __forceinline__ float widen16(uint32_t h)
{
    if constexpr (BF)
        return __uint_as_float(h << 16);
    else
        return __half2float(__ushort_as_half((unsigned short)h));
}

/* 8 elements as one 16-byte load, or 1 */
template <typename E, bool BF, int VEC> struct kv_vec16 {
    typedef typename std::conditional<VEC == 8, uint4, unsigned short>::type raw;
    static __device__ __forceinline__ raw load(const E *p) { return __ldg((const raw *)p); }
    static __device__ __forceinline__ void cvt(const raw &r, float *f)
    {
        if constexpr (VEC == 8) {
            const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                f[2 * i] = widen16<BF>(w[i] & 0xffffu);
                f[2 * i + 1] = widen16<BF>(w[i] >> 16);
            }
        } else {
            f[0] = widen16<BF>(r);
        }
    }
};

template <> struct kv_vec<uint16_t, 8> : kv_vec16<uint16_t, true, 8> {};
template <> struct kv_vec<uint16_t, 1> : kv_vec16<uint16_t, true, 1> {};
template <> struct kv_vec<f16_elem, 8> : kv_vec16<f16_elem, false, 8> {};
template <> struct kv_vec<f16_elem, 1> : kv_vec16<f16_elem, false, 1> {};

/* Piece `split` of the context of a token at pos (>= 0): its positions
 * [*begin, *end) and the context's piece count; false when the context has
 * fewer pieces (the block has nothing to do). */
__device__ __forceinline__ bool split_range(const struct attn_params &p, int32_t pos,
                                            uint32_t split, uint32_t *begin, uint32_t *end,
                                            uint32_t *n_pieces)
{
    const uint32_t n_ctx = (uint32_t)pos + 1;
    const uint32_t chunk = pd_attn_token_chunk(n_ctx, p.n_splits, p.chunk, p.fixed_chunk);
    *n_pieces = pd_attn_n_pieces(n_ctx, chunk);
    if (split >= *n_pieces)
        return false;
    *begin = split * chunk;
    *end = n_ctx - *begin < chunk ? n_ctx : *begin + chunk;
    return true;
}

/* The warps' partial rows merged (s_acc [warp][hpc][D], s_m and s_l
 * [warp][hpc], in log2 units; a warp that saw no position has m = -inf):
 * rows j < nh, query heads h0 + j, written to out, or for a context of
 * several pieces to the workspace with their log2-sum-exp. */
__device__ __forceinline__ void merge_warps(const struct attn_params &p, const float *s_acc,
                                            const float *s_m, const float *s_l, uint32_t hpc,
                                            uint32_t D, uint32_t nh, uint32_t t, uint32_t h0,
                                            uint32_t split, uint32_t n_pieces)
{
    for (uint32_t i = threadIdx.x; i < nh * D; i += ATT_THREADS) {
        const uint32_t j = i / D, d = i % D, h = h0 + j;
        float mx = -INFINITY, sum = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++)
            mx = fmaxf(mx, s_m[w * hpc + j]);
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) {
            const float f = exp2f(s_m[w * hpc + j] - mx); /* 0 for a warp with no positions */
            sum += s_l[w * hpc + j] * f;
            o += s_acc[(w * hpc + j) * D + d] * f;
        }
        if (n_pieces == 1) {
            put_out(p, ((uint64_t)t * p.n_head + h) * D + d, o / sum);
        } else {
            p.ws[pd_attn_part_offset(t, h, split, p.n_head, p.n_splits, D) + d] = o / sum;
            if (d == 0)
                p.ws[pd_attn_lse_offset(p.n_tokens, t, h, split, p.n_head, p.n_splits, D)] =
                    mx + log2f(sum);
        }
    }
}

/* ---- the kernel -------------------------------------------------------- */

template <typename T, int VEC, int LPT, int NCH, int GH, bool GENERIC>
__global__ void __launch_bounds__(ATT_THREADS) attn_decode_kernel(const struct attn_params p)
{
    typedef kv_vec<T, VEC> V;
    constexpr int HS = 32 / LPT; /* head slots per warp */
    constexpr int HPC = HS * GH; /* query heads per block */
    extern __shared__ float smem[];

    const uint32_t D = GENERIC ? p.kv.head_dim : (uint32_t)(VEC * LPT * NCH);
    const uint32_t t = blockIdx.x, kvh = blockIdx.y / p.n_hchunks, hc = blockIdx.y % p.n_hchunks;
    const uint32_t split = blockIdx.z;
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const uint32_t ld = lane % LPT, slot = lane / LPT;
    const int32_t pos = p.tok_pos[t];

    if (pos < 0 || (uint32_t)pos >= p.max_ctx) {
        /* refused: NaN rows, so the caller's checks see it (no read out of bounds) */
        if (split == 0)
            for (uint32_t i = threadIdx.x; i < HPC * D; i += ATT_THREADS) {
                uint32_t hq = hc * HPC + i / D;
                if (hq < p.group)
                    put_out(p, ((uint64_t)t * p.n_head + kvh * p.group + hq) * D + i % D,
                            __int_as_float(0x7fc00000));
            }
        return;
    }
    uint32_t begin, end, n_pieces;
    if (!split_range(p, pos, split, &begin, &end, &n_pieces))
        return;

    /* this lane's query heads: slot * GH + g within the block's chunk */
    float q[GH][NCH][VEC];
#pragma unroll
    for (int g = 0; g < GH; g++) {
        const uint32_t hq = hc * HPC + slot * GH + g;
        const float *qr = p.q + t * p.q_ld + (uint64_t)(kvh * p.group + hq) * D;
#pragma unroll
        for (int c = 0; c < NCH; c++)
#pragma unroll
            for (int v = 0; v < VEC; v++) {
                const uint32_t d = (c * LPT + ld) * VEC + v;
                q[g][c][v] = hq < p.group && d < D ? qr[d] * p.qscale : 0.0f;
            }
    }

    float m[GH], l[GH], acc[GH][NCH][VEC];
#pragma unroll
    for (int g = 0; g < GH; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int c = 0; c < NCH; c++)
#pragma unroll
            for (int v = 0; v < VEC; v++)
                acc[g][c][v] = 0.0f;
    }

    const uint32_t *table = p.block_tables + (uint64_t)p.tok_seq[t] * p.max_blocks;
    const T *pool = (const T *)p.pool;
    const uint64_t block_elems = pd_kv_block_elems(&p.kv);
    const uint64_t k_base = pd_kv_offset(&p.kv, 0, p.layer, 0, kvh, 0);
    const uint64_t v_base = pd_kv_offset(&p.kv, 0, p.layer, 1, kvh, 0);

    for (uint32_t base = begin + warp * ATT_UNROLL; base < end; base += ATT_WARPS * ATT_UNROLL) {
        typename V::raw kr[ATT_UNROLL][NCH], vr[ATT_UNROLL][NCH];
        /* every load of the step first: ATT_UNROLL * NCH * 2 in flight per lane */
#pragma unroll
        for (int u = 0; u < ATT_UNROLL; u++) {
            const uint32_t j = base + u < end ? base + u : end - 1;
            const uint32_t bi = p.bs_pow2 ? j >> p.bs_shift : j / p.kv.block_size;
            const uint32_t bt = p.bs_pow2 ? j & (p.kv.block_size - 1) : j % p.kv.block_size;
            const uint64_t row = (uint64_t)table[bi] * block_elems + (uint64_t)bt * D;
#pragma unroll
            for (int c = 0; c < NCH; c++) {
                const uint32_t d = (c * LPT + ld) * VEC;
                if (!GENERIC || d < D) {
                    kr[u][c] = V::load(pool + row + k_base + d);
                    vr[u][c] = V::load(pool + row + v_base + d);
                } else {
                    kr[u][c] = typename V::raw();
                    vr[u][c] = typename V::raw();
                }
            }
        }

        /* scores: partial dots, then a butterfly over the LPT lanes of a row */
        float s[ATT_UNROLL][GH];
#pragma unroll
        for (int u = 0; u < ATT_UNROLL; u++) {
            float kf[NCH][VEC];
#pragma unroll
            for (int c = 0; c < NCH; c++)
                V::cvt(kr[u][c], kf[c]);
#pragma unroll
            for (int g = 0; g < GH; g++) {
                float dot = 0.0f;
#pragma unroll
                for (int c = 0; c < NCH; c++)
#pragma unroll
                    for (int v = 0; v < VEC; v++)
                        dot = fmaf(q[g][c][v], kf[c][v], dot);
                s[u][g] = dot;
            }
        }
#pragma unroll
        for (int o = LPT / 2; o > 0; o /= 2)
#pragma unroll
            for (int u = 0; u < ATT_UNROLL; u++)
#pragma unroll
                for (int g = 0; g < GH; g++)
                    s[u][g] += __shfl_xor_sync(0xffffffffu, s[u][g], o);

        /* online softmax: one rescale per step, not per position */
#pragma unroll
        for (int g = 0; g < GH; g++) {
            float mx = m[g];
#pragma unroll
            for (int u = 0; u < ATT_UNROLL; u++) {
                if (base + u >= end)
                    s[u][g] = -INFINITY;
                mx = fmaxf(mx, s[u][g]);
            }
            const float corr = exp2f(m[g] - mx);
            m[g] = mx;
            l[g] *= corr;
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int v = 0; v < VEC; v++)
                    acc[g][c][v] *= corr;
        }
#pragma unroll
        for (int u = 0; u < ATT_UNROLL; u++) {
            float vf[NCH][VEC];
#pragma unroll
            for (int c = 0; c < NCH; c++)
                V::cvt(vr[u][c], vf[c]);
#pragma unroll
            for (int g = 0; g < GH; g++) {
                const float pr = exp2f(s[u][g] - m[g]);
                l[g] += pr;
#pragma unroll
                for (int c = 0; c < NCH; c++)
#pragma unroll
                    for (int v = 0; v < VEC; v++)
                        acc[g][c][v] = fmaf(pr, vf[c][v], acc[g][c][v]);
            }
        }
    }

    /* merge the warps: smem acc[warp][head][D], then m[warp][head], l[warp][head] */
    float *s_acc = smem, *s_m = smem + ATT_WARPS * HPC * D, *s_l = s_m + ATT_WARPS * HPC;
#pragma unroll
    for (int g = 0; g < GH; g++) {
        const uint32_t j = slot * GH + g;
#pragma unroll
        for (int c = 0; c < NCH; c++)
#pragma unroll
            for (int v = 0; v < VEC; v++) {
                const uint32_t d = (c * LPT + ld) * VEC + v;
                if (d < D)
                    s_acc[(warp * HPC + j) * D + d] = acc[g][c][v];
            }
        if (ld == 0) {
            s_m[warp * HPC + j] = m[g];
            s_l[warp * HPC + j] = l[g];
        }
    }
    __syncthreads();

    const uint32_t nh = p.group - hc * HPC < HPC ? p.group - hc * HPC : HPC;
    merge_warps(p, s_acc, s_m, s_l, HPC, D, nh, t, kvh * p.group + hc * HPC, split, n_pieces);
}

/* ---- the tensor-core kernel (16-bit pools, head_dim 64 and 128) --------- */

/* The same grid, split plan and merge as attn_decode_kernel; the block's
 * query heads (up to 16 of the GQA group) are the 16 rows of an m16n8k16
 * tile, so each K and V element is read from shared memory once by ldmatrix
 * and multiplied by the tensor cores for every head of the group (the
 * CUDA-core kernel converts and multiplies it once per head).
 *   block  ATT_WARPS warps; the split's positions in tiles of TC_N keys,
 *          copied into shared memory with cp.async in two stages (the
 *          block table read a tile ahead, one thread per key), warp w
 *          taking keys 16 w .. 16 w + 15 of each tile with its own online
 *          softmax; the warps merge at the end as attn_decode_kernel's do
 *   exact  q is the sum of TC_NQ 16-bit parts (fp32's 24 bits: K is exact
 *          in the pool's type, the products are summed in fp32) and P of
 *          TC_NP (16 bits for weights in [0, 2^TC_SLACK]): the CUDA-core
 *          kernel's error bar holds */
#define TC_N 64
#define TC_STAGES 2
#define TC_PAD 8 /* as the prefill kernel's: ldmatrix rows on distinct banks */
#define TC_NQ 3
#define TC_NP 2
#define TC_SLACK 8.0f

template <int D> __host__ __device__ static constexpr size_t tc_smem_bytes()
{
    return ((size_t)TC_NQ * 16 + (size_t)TC_STAGES * 2 * TC_N) * (D + TC_PAD) * sizeof(uint16_t);
}

/* a and b rounded to the 16-bit type (hi) and what that left, rounded (lo) */
template <bool BF>
__device__ __forceinline__ void tc_split2(float a, float b, uint32_t &hi, uint32_t &lo)
{
    hi = pd_pack2<BF>(a, b);
    lo = pd_pack2<BF>(a - widen16<BF>(hi & 0xffffu), b - widen16<BF>(hi >> 16));
}

/* One warp's 16 keys of a tile (K and V rows ks, vs; positions wk ..
 * wk + 15, those from end on masked): S = Q K^T, the online softmax of rows
 * g and g + 8 (weights 2^(s qscale - mb), mb moving only past TC_SLACK, as
 * the prefill kernel's), O += P V. */
template <int D, bool BF>
__device__ __forceinline__ void tc_warp_tile(const struct attn_params &p, const uint16_t *qs,
                                             const uint16_t *ks, const uint16_t *vs, uint32_t wk,
                                             uint32_t end, float (&o)[D / 8][4], float (&mb)[2],
                                             float (&l)[2])
{
    constexpr int LD = D + TC_PAD, KS = D / 16, DT = D / 8;
    const uint32_t lane = threadIdx.x % 32, c = lane % 4, lr = lane % 8, lm = lane / 8;
    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int k = 0; k < KS; k++) {
        uint32_t b[4];
        pd_ldmatrix_x4<false>(b, &ks[((lm / 2) * 8 + lr) * LD + k * 16 + (lm % 2) * 8]);
#pragma unroll
        for (int part = 0; part < TC_NQ; part++) {
            uint32_t qa[4];
            pd_ldmatrix_x4<false>(qa, &qs[(part * 16 + (lm % 2) * 8 + lr) * LD + k * 16 + (lm / 2) * 8]);
            pd_mma_16816<BF>(s[0], qa, b);
            pd_mma_16816<BF>(s[1], qa, b + 2);
        }
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if (wk + n * 8 + 2 * c + (e & 1) >= end)
                s[n][e] = -INFINITY;
            mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
        }
#pragma unroll
    for (int r = 0; r < 2; r++) { /* a row's scores live in the 4 lanes of its quad */
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float tb = mx[r] * p.qscale;
        if (tb - mb[r] > TC_SLACK) { /* -inf - -inf is NaN: no move */
            const float alpha = pd_ex2(mb[r] - tb);
            mb[r] = tb;
            l[r] *= alpha;
#pragma unroll
            for (int i = 0; i < DT; i++)
                o[i][2 * r] *= alpha, o[i][2 * r + 1] *= alpha;
        }
    }
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float base = mb[e / 2] == -INFINITY ? 0.0f : mb[e / 2];
            s[n][e] = pd_ex2(fmaf(s[n][e], p.qscale, -base));
            l[e / 2] += s[n][e];
        }
    /* P as the A fragments (the S accumulator layout is the A layout), in
     * TC_NP parts; V's B fragments by transposing ldmatrix */
    uint32_t pa[TC_NP][4];
    tc_split2<BF>(s[0][0], s[0][1], pa[0][0], pa[1][0]);
    tc_split2<BF>(s[0][2], s[0][3], pa[0][1], pa[1][1]);
    tc_split2<BF>(s[1][0], s[1][1], pa[0][2], pa[1][2]);
    tc_split2<BF>(s[1][2], s[1][3], pa[0][3], pa[1][3]);
#pragma unroll
    for (int i = 0; i < DT; i += 2) {
        uint32_t b[4];
        pd_ldmatrix_x4<true>(b, &vs[((lm % 2) * 8 + lr) * LD + (i + lm / 2) * 8]);
#pragma unroll
        for (int part = 0; part < TC_NP; part++) {
            pd_mma_16816<BF>(o[i], pa[part], b);
            pd_mma_16816<BF>(o[i + 1], pa[part], b + 2);
        }
    }
}

/* The warps' rows merged through shared memory (sm: the stages, free once
 * every tile is done): the block's nh heads from query head hq0 on, to out
 * or, for a context of several pieces, to the workspace as
 * attn_decode_kernel writes them. */
template <int D>
__device__ __forceinline__ void tc_merge(const struct attn_params &p, float *sm,
                                         float (&o)[D / 8][4], float (&mb)[2], float (&l)[2],
                                         uint32_t t, uint32_t hq0, uint32_t nh, uint32_t split,
                                         uint32_t n_pieces)
{
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, c = lane % 4;
    float *const s_acc = sm, *const s_m = sm + ATT_WARPS * 16 * D, *const s_l = s_m + ATT_WARPS * 16;
    pd_cp_async_wait<0>();
    __syncthreads(); /* every warp is done with the stages */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const uint32_t row = warp * 16 + g + 8 * r;
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            s_acc[row * D + i * 8 + 2 * c] = o[i][2 * r];
            s_acc[row * D + i * 8 + 2 * c + 1] = o[i][2 * r + 1];
        }
        if (c == 0)
            s_m[row] = mb[r], s_l[row] = l[r];
    }
    __syncthreads();
    merge_warps(p, s_acc, s_m, s_l, 16, D, nh, t, hq0, split, n_pieces);
}

template <int D, bool BF>
__global__ void __launch_bounds__(ATT_THREADS) attn_decode_tc_kernel(const struct attn_params p)
{
    constexpr int LD = D + TC_PAD, DT = D / 8, TILE = TC_N * LD;
    static_assert(TC_N == 16 * ATT_WARPS, "a warp takes 16 keys of a tile");
    extern __shared__ uint4 tc_smem_raw[];
    uint16_t *const qs = (uint16_t *)tc_smem_raw; /* [TC_NQ][16][LD]: q's parts */
    uint16_t *const kv_smem = qs + TC_NQ * 16 * LD; /* stages of [K tile][V tile] */
    __shared__ uint64_t key_off[TC_STAGES][TC_N];

    const uint32_t t = blockIdx.x, kvh = blockIdx.y / p.n_hchunks, h0 = blockIdx.y % p.n_hchunks * 16;
    const uint32_t split = blockIdx.z, warp = threadIdx.x / 32;
    const uint32_t nh = p.group - h0 < 16 ? p.group - h0 : 16; /* the block's heads */
    const int32_t pos = p.tok_pos[t];
    const uint64_t out0 = ((uint64_t)t * p.n_head + kvh * p.group + h0) * D; /* the block's first */

    if (pos < 0 || (uint32_t)pos >= p.max_ctx) {
        if (split == 0) /* refused: NaN rows, as attn_decode_kernel's */
            for (uint32_t i = threadIdx.x; i < nh * D; i += ATT_THREADS)
                put_out(p, out0 + i, __int_as_float(0x7fc00000));
        return;
    }
    uint32_t begin, end, n_pieces;
    if (!split_range(p, pos, split, &begin, &end, &n_pieces))
        return;

    const struct pd_tile_src src =
        pd_tile_src_of((const uint16_t *)p.pool, p.kv,
                       p.block_tables + (uint64_t)p.tok_seq[t] * p.max_blocks, p.layer, kvh,
                       p.bs_shift, p.bs_pow2);
    auto key_offsets = [&](uint32_t st, uint32_t kb) {
        pd_tile_offsets<TC_N, ATT_THREADS, D>(src, key_off[st], kb, end);
    };
    auto load_tile = [&](uint32_t st) {
        uint16_t *const ks = kv_smem + 2 * st * TILE;
        pd_tile_load<TC_N, ATT_THREADS, D, LD>(src, key_off[st], ks, ks + TILE);
    };

    const uint32_t n_tiles = (end - begin + TC_N - 1) / TC_N;
    key_offsets(0, begin);
    if (n_tiles > 1)
        key_offsets(1, begin + TC_N);
    /* q's rows (zeros past the block's heads) as TC_NQ parts */
    for (uint32_t i = threadIdx.x; i < 16 * D; i += ATT_THREADS) {
        const uint32_t r = i / D, d = i % D;
        float rest = r < nh ? p.q[t * p.q_ld + (uint64_t)(kvh * p.group + h0 + r) * D + d] : 0.0f;
#pragma unroll
        for (int k = 0; k < TC_NQ; k++) {
            const uint16_t b = BF ? pd_bf16_encode(rest) : pd_f16_encode(rest);
            qs[(k * 16 + r) * LD + d] = b;
            rest -= widen16<BF>(b);
        }
    }
    __syncthreads();
    load_tile(0);

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float mb[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; /* rows g, g + 8 */
    for (uint32_t it = 0; it < n_tiles; it++) {
        const uint32_t kb = begin + it * TC_N, wk = kb + warp * 16; /* this warp's first key */
        if (it + 1 < n_tiles)
            load_tile((it + 1) % TC_STAGES);
        else
            pd_cp_async_commit(); /* an empty group: the wait counts alike */
        pd_cp_async_wait<1>();
        __syncthreads();
        if (it + 2 < n_tiles)
            key_offsets(it % TC_STAGES, kb + 2 * TC_N);
        const uint16_t *const ks = kv_smem + 2 * (it % TC_STAGES) * TILE, *const vs = ks + TILE;
        if (wk < end) { /* a warp past the split's end skips the work, not the barriers */
            tc_warp_tile<D, BF>(p, qs, ks + warp * 16 * LD, vs + warp * 16 * LD, wk, end, o, mb, l);
        }
        __syncthreads(); /* the stage is loaded again two tiles on */
    }
    tc_merge<D>(p, (float *)kv_smem, o, mb, l, t, kvh * p.group + h0, nh, split, n_pieces);
}

/* One block per (token, head): the token's pieces weighted by 2^(lse - max). */
__global__ void __launch_bounds__(MERGE_THREADS) attn_merge_kernel(const struct attn_params p)
{
    const uint32_t t = blockIdx.x, h = blockIdx.y, D = p.kv.head_dim;
    const int32_t pos = p.tok_pos[t];

    if (pos < 0 || (uint32_t)pos >= p.max_ctx)
        return; /* the decode kernel wrote NaN */
    const uint32_t n_ctx = (uint32_t)pos + 1;
    const uint32_t n =
        pd_attn_n_pieces(n_ctx, pd_attn_token_chunk(n_ctx, p.n_splits, p.chunk, p.fixed_chunk));
    if (n <= 1)
        return; /* written directly */
    const float *lse = p.ws + pd_attn_lse_offset(p.n_tokens, t, h, 0, p.n_head, p.n_splits, D);
    const float *part = p.ws + pd_attn_part_offset(t, h, 0, p.n_head, p.n_splits, D);
    float mx = -INFINITY, sum = 0.0f;
    for (uint32_t s = 0; s < n; s++)
        mx = fmaxf(mx, lse[s]);
    for (uint32_t s = 0; s < n; s++)
        sum += exp2f(lse[s] - mx);
    for (uint32_t d = threadIdx.x; d < D; d += MERGE_THREADS) {
        float o = 0.0f;
        for (uint32_t s = 0; s < n; s++)
            o += exp2f(lse[s] - mx) * part[(uint64_t)s * D + d];
        put_out(p, ((uint64_t)t * p.n_head + h) * D + d, o / sum);
    }
}

/* ---- host side --------------------------------------------------------- */

typedef void (*attn_kernel_fn)(const struct attn_params);

struct attn_launch {
    attn_kernel_fn fn;
    uint32_t hpc; /* heads per block */
    size_t smem; /* dynamic shared memory per block */
    struct attn_params p;
    struct pd_attn_plan plan;
};

template <typename T, int VEC, int LPT, int NCH, bool GENERIC>
static attn_kernel_fn pick_gh(uint32_t gh)
{
    if constexpr (GENERIC) { /* at most 2 heads per lane: its registers hold NCH = 8 chunks */
        return gh == 1 ? attn_decode_kernel<T, VEC, LPT, NCH, 1, true>
                       : attn_decode_kernel<T, VEC, LPT, NCH, 2, true>;
    } else {
        switch (gh) {
        case 1:
            return attn_decode_kernel<T, VEC, LPT, NCH, 1, false>;
        case 2:
            return attn_decode_kernel<T, VEC, LPT, NCH, 2, false>;
        case 4:
            return attn_decode_kernel<T, VEC, LPT, NCH, 4, false>;
        default:
            if constexpr (sizeof(T) == 4)
                return attn_decode_kernel<T, VEC, LPT, NCH, 8, false>;
            return NULL; /* bf16 stops at 4 (pick_kernel) */
        }
    }
}

/* Heads per lane: enough for the group over the warp's head slots, a power of
 * two, at most gh_max; groups larger than a block's heads take several chunks. */
static uint32_t pick_heads_per_lane(uint32_t group, uint32_t slots, uint32_t gh_max)
{
    uint32_t need = (group + slots - 1) / slots, gh = 1;
    while (gh < need && gh < gh_max)
        gh *= 2;
    return gh;
}

/* Heads per lane at most 8 for float; 4 for bf16, whose 8 would take all 255
 * registers (q and the outputs are 8 floats per head there). */
template <typename T>
static attn_kernel_fn pick_kernel(uint32_t head_dim, int aligned, uint32_t group, uint32_t *hpc)
{
    constexpr int VEC = 16 / sizeof(T);
    constexpr uint32_t GH_MAX = sizeof(T) == 4 ? 8 : 4;
    uint32_t gh;
    if (aligned && head_dim == 64) {
        gh = pick_heads_per_lane(group, 32 / (64 / VEC), GH_MAX);
        *hpc = 32 / (64 / VEC) * gh;
        return pick_gh<T, VEC, 64 / VEC, 1, false>(gh);
    }
    if (aligned && head_dim == 128) {
        gh = pick_heads_per_lane(group, 32 / (128 / VEC), GH_MAX);
        *hpc = 32 / (128 / VEC) * gh;
        return pick_gh<T, VEC, 128 / VEC, 1, false>(gh);
    }
    gh = pick_heads_per_lane(group, 1, 2);
    *hpc = gh;
    return pick_gh<T, 1, 32, ATT_MAX_HEAD_DIM / 32, true>(gh);
}

/* Blocks of fn resident per SM: asked once per kernel variant and device
 * (the occupancy query costs microseconds, a decode step launches per layer). */
static int blocks_per_sm(attn_kernel_fn fn, size_t smem, uint32_t *out)
{
    static std::mutex mu;
    static struct {
        attn_kernel_fn fn;
        size_t smem;
        int dev, n;
    } cache[64];
    static unsigned n_cache;
    int dev = 0, n = 0;

    PD_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
    std::lock_guard<std::mutex> hold(mu);
    for (unsigned i = 0; i < n_cache; i++)
        if (cache[i].fn == fn && cache[i].smem == smem && cache[i].dev == dev) {
            *out = (uint32_t)cache[i].n;
            return 0;
        }
    PD_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, (const void *)fn, ATT_THREADS, smem),
                "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    n = n > 0 ? n : 1;
    if (n_cache < sizeof cache / sizeof *cache)
        cache[n_cache++] = {fn, smem, dev, n};
    *out = (uint32_t)n;
    return 0;
}

/* The tensor-core kernel where it serves: a 16-bit pool, 16-byte aligned,
 * head_dim 64 or 128, GQA (2 or more query heads per KV head), a positive
 * scale (the softmax takes maxima of raw scores), sm_80 and later with the
 * shared memory it needs (asked for here) -- unless the caller wants the
 * CUDA-core kernel (decode_simt). *fn NULL otherwise. */
static int pick_tc(const struct pd_attn_args *a, uint32_t group, int aligned, attn_kernel_fn *fn,
                   size_t *smem)
{
    const uint32_t hd = a->kv.head_dim;
    const bool bf = a->pool_type == PD_DT_BF16;
    int major = 0, optin = 0, rc;
    *fn = NULL;
    if (a->decode_simt || group < 2 || !aligned || (hd != 64 && hd != 128) ||
        (!bf && a->pool_type != PD_DT_F16) || !(a->scale > 0.0f) || isinf(a->scale))
        return 0;
    if ((rc = pd_cuda_device_facts(&major, &optin)) < 0)
        return rc;
    *smem = hd == 64 ? tc_smem_bytes<64>() : tc_smem_bytes<128>();
    if (major < 8 || *smem > (size_t)optin)
        return 0;
    const attn_kernel_fn f = hd == 64 ? (bf ? attn_decode_tc_kernel<64, true> : attn_decode_tc_kernel<64, false>)
                                      : (bf ? attn_decode_tc_kernel<128, true> : attn_decode_tc_kernel<128, false>);
    if ((rc = pd_cuda_allow_smem((const void *)f, *smem)) < 0)
        return rc;
    *fn = f;
    return 0;
}

/* Everything about a launch but the launch: checks, the kernel, the plan. */
static int attn_prepare(const struct pd_attn_args *a, uint64_t ws_bytes, struct attn_launch *L)
{
    const struct pd_kv_geom *kv = &a->kv;
    uint32_t n_sm = 0;
    int rc;

    if (kv->n_head_kv == 0 || a->n_head % kv->n_head_kv || kv->block_size == 0 ||
        a->layer >= kv->n_layer || a->max_blocks == 0 || kv->head_dim == 0)
        return -EINVAL;
    if (a->pool_type != PD_DT_F32 && a->pool_type != PD_DT_BF16 && a->pool_type != PD_DT_F16)
        return -EINVAL;
    if (kv->head_dim > ATT_MAX_HEAD_DIM)
        return -ENOTSUP;
    if (a->n_tokens > INT32_MAX || (a->q_ld && a->q_ld < (uint64_t)a->n_head * kv->head_dim) ||
        (a->out_type != PD_DT_F32 && a->out_type != PD_DT_BF16 && a->out_type != PD_DT_F16))
        return -EINVAL;

    const uint32_t group = a->n_head / kv->n_head_kv;
    const int aligned = ((uintptr_t)a->pool % 16) == 0;
    if ((rc = pick_tc(a, group, aligned, &L->fn, &L->smem)) < 0)
        return rc;
    if (L->fn) {
        L->hpc = 16; /* the rows of an m16n8k16 tile */
    } else {
        L->fn = a->pool_type == PD_DT_BF16 ? pick_kernel<uint16_t>(kv->head_dim, aligned, group, &L->hpc)
                : a->pool_type == PD_DT_F16 ? pick_kernel<f16_elem>(kv->head_dim, aligned, group, &L->hpc)
                                            : pick_kernel<float>(kv->head_dim, aligned, group, &L->hpc);
        L->smem = (size_t)ATT_WARPS * L->hpc * (kv->head_dim + 2) * sizeof(float);
    }
    const uint32_t n_hchunks = (group + L->hpc - 1) / L->hpc;
    if ((uint64_t)kv->n_head_kv * n_hchunks > 65535)
        return -EINVAL;

    const uint64_t table_ctx = (uint64_t)a->max_blocks * kv->block_size;
    uint32_t max_ctx = table_ctx > UINT32_MAX ? UINT32_MAX : (uint32_t)table_ctx;
    if (a->max_ctx && a->max_ctx < max_ctx)
        max_ctx = a->max_ctx;
    /* the blocks the GPU runs at once, for the split plan's wave count */
    uint32_t per_sm = 0;
    if ((rc = pd_cuda_sm_count(&n_sm)) < 0 || (rc = blocks_per_sm(L->fn, L->smem, &per_sm)) < 0)
        return rc;
    const uint64_t n_items = (uint64_t)a->n_tokens * kv->n_head_kv * n_hchunks;
    L->plan = pd_attn_plan_splits(n_items > UINT32_MAX ? UINT32_MAX : (uint32_t)n_items, max_ctx,
                                  n_sm * per_sm, a->split_tokens, ws_bytes, a->n_tokens, a->n_head,
                                  kv->head_dim);

    struct attn_params *p = &L->p;
    memset(p, 0, sizeof *p);
    p->out = a->out;
    p->out_type = a->out_type;
    p->q = a->q;
    p->q_ld = pd_attn_q_ld(a);
    p->pool = a->pool;
    p->tok_seq = a->tok_seq;
    p->tok_pos = a->tok_pos;
    p->block_tables = a->block_tables;
    p->kv = *kv;
    p->layer = a->layer;
    p->n_tokens = a->n_tokens;
    p->n_head = a->n_head;
    p->group = group;
    p->max_blocks = a->max_blocks;
    p->n_hchunks = n_hchunks;
    p->n_splits = L->plan.n_splits;
    p->chunk = L->plan.chunk;
    p->fixed_chunk = a->split_tokens != 0;
    p->max_ctx = max_ctx;
    p->bs_pow2 = (kv->block_size & (kv->block_size - 1)) == 0;
    while (p->bs_pow2 && (1u << p->bs_shift) < kv->block_size)
        p->bs_shift++;
    p->qscale = a->scale * 1.4426950408889634f; /* log2(e) */
    if (L->plan.n_splits > 1)
        p->ws = (float *)a->workspace;
    return 0;
}

extern "C" int pd_attention_cuda_workspace(const struct pd_attn_args *a, uint64_t *bytes)
{
    struct attn_launch L;
    int rc = attn_prepare(a, UINT64_MAX, &L);
    if (rc < 0)
        return rc;
    *bytes = L.plan.n_splits > 1 ? pd_attn_workspace_bytes(a->n_tokens, a->n_head, a->kv.head_dim,
                                                           L.plan.n_splits)
                                 : 0;
    return 0;
}

extern "C" int pd_attention_cuda(const struct pd_attn_args *a, pd_stream_t stream)
{
    struct attn_launch L;
    int rc;

    if (a->n_tokens == 0)
        return 0;
    if ((rc = attn_prepare(a, a->workspace ? a->workspace_bytes : 0, &L)) < 0)
        return rc;
    dim3 grid(a->n_tokens, a->kv.n_head_kv * L.p.n_hchunks, L.plan.n_splits);
    L.fn<<<grid, ATT_THREADS, L.smem, pd_cuda_stream(stream)>>>(L.p);
    if ((rc = pd_cuda_launched("attn_decode_kernel")) < 0)
        return rc;
    if (L.plan.n_splits == 1)
        return 0;
    attn_merge_kernel<<<dim3(a->n_tokens, a->n_head), MERGE_THREADS, 0, pd_cuda_stream(stream)>>>(L.p);
    return pd_cuda_launched("attn_merge_kernel");
}
