/* kernels/attn_prefill.cuh: what the two prefill-attention kernels share,
 * private to kernels/: attn_prefill.cu's (m16n8k16 mma, sm_80 on) and
 * attn_prefill_sm90.cu's (wgmma, sm_90a). Both take the same parameters,
 * built and checked by pd_attention_prefill_cuda, and hold their rows'
 * scores, weights and outputs as m16n8k16 fragments (a warp, 16 query rows:
 * lane (g, c) holds rows g and g + 8, columns 2c and 2c + 1 of each 8-column
 * tile; mma.cuh), so the softmax, the refusal and the stores below are the
 * same code for both. docs/internals/kernels.md has the reasoning. */
#ifndef PD_ATTN_PREFILL_CUH
#define PD_ATTN_PREFILL_CUH

#include "attention.h"
#include "mma.cuh"
#include "quant.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

/* how far (log2 units) a tile's maximum may pass the running one before the
 * running one moves and O is rescaled: weights stay below 2^PF_SLACK */
#define PF_SLACK 8.0f

struct pf_params {
    void *out; /* (n_tokens, n_head, head_dim) of the io type; float io: of out_type */
    const void *q; /* (n_tokens, n_head, head_dim) of the io type, token t's at q + t * q_ld */
    uint64_t q_ld;
    const uint16_t *pool; /* kv_layout.h, BF16 or F16 */
    const int32_t *tok_seq, *tok_pos, *run_start;
    const uint32_t *block_tables; /* (n_seqs, max_blocks) */
    struct pd_kv_geom kv;
    uint32_t layer, n_tokens, n_head, group, max_blocks, n_runs;
    uint32_t out_type; /* float io: PD_DT_F32, PD_DT_BF16 or PD_DT_F16 */
    uint32_t max_ctx; /* runs reaching past it are refused (NaN rows) */
    uint32_t max_run; /* runs longer than the caller promised: refused alike */
    uint32_t bs_shift, bs_pow2; /* log2(block_size) when a power of two */
    float qscale; /* scale * log2(e): scores in log2 units */
};

/* ---- io ------------------------------------------------------------------ */

/* Eight elements of q (columns d .. d + 7 of the row at row_off) into
 * shared memory as the pool's 16-bit type: copied asynchronously when q is
 * 16-bit already, rounded here when it is float; zeros when !valid. */
template <bool BF, bool IO16>
__device__ __forceinline__ void q_chunk(const struct pf_params &p, uint16_t *dst, uint64_t row_off,
                                        uint32_t d, bool valid)
{
    if constexpr (IO16) {
        pd_cp_async16(dst, (const uint16_t *)p.q + (valid ? row_off + d : 0), valid);
    } else {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (valid) {
            const float4 x = *(const float4 *)((const float *)p.q + row_off + d);
            const float4 y = *(const float4 *)((const float *)p.q + row_off + d + 4);
            v = make_uint4(pd_pack2<BF>(x.x, x.y), pd_pack2<BF>(x.z, x.w), pd_pack2<BF>(y.x, y.y),
                           pd_pack2<BF>(y.z, y.w));
        }
        *(uint4 *)dst = v;
    }
}

template <bool BF, bool IO16>
__device__ __forceinline__ void out_pair(const struct pf_params &p, uint64_t row_off, uint32_t d,
                                         float x, float y)
{
    if constexpr (IO16)
        *(uint32_t *)((uint16_t *)p.out + row_off + d) = pd_pack2<BF>(x, y);
    else if (p.out_type == PD_DT_BF16)
        *(uint32_t *)((uint16_t *)p.out + row_off + d) = pd_pack2<true>(x, y);
    else if (p.out_type == PD_DT_F16)
        *(uint32_t *)((uint16_t *)p.out + row_off + d) = pd_pack2<false>(x, y);
    else
        *(float2 *)((float *)p.out + row_off + d) = make_float2(x, y);
}

/* An accumulator of MMA fragments (B tiles of 4 floats a lane) to zero;
 * or A x B of them */
template <int B> __device__ __forceinline__ void zero_frags(float (&x)[B][4])
{
#pragma unroll
    for (int t = 0; t < B; t++)
        x[t][0] = x[t][1] = x[t][2] = x[t][3] = 0.0f;
}
template <int A, int B> __device__ __forceinline__ void zero_frags(float (&x)[A][B][4])
{
#pragma unroll
    for (int i = 0; i < A; i++)
        zero_frags(x[i]);
}

/* A refused run (a position out of bounds, or longer than max_run
 * promised): NaN rows, so the caller's checks see it. The block of rows
 * m0 .. m0 + rows - 1 writes its own; the first tile's block also takes the
 * rows no block reaches (max_run sized the grid: `covered` rows). */
template <int D, bool BF, bool IO16>
__device__ __forceinline__ void pf_refuse(const struct pf_params &p, int32_t t0, uint32_t h,
                                          uint32_t n, uint32_t m0, uint32_t rows,
                                          uint64_t covered, uint32_t threads)
{
    const uint32_t r1 = m0 == 0 && n > covered ? n : m0 + rows;
    for (uint64_t i = threadIdx.x; i < (uint64_t)(r1 - m0) * D / 2; i += threads) {
        uint32_t r = m0 + (uint32_t)(i / (D / 2));
        if (r >= m0 + rows && r < covered)
            continue; /* another block's */
        const uint64_t off = ((uint64_t)(t0 + r) * p.n_head + h) * D;
        out_pair<BF, IO16>(p, off, 2 * (uint32_t)(i % (D / 2)), NAN, NAN);
    }
}

/* A block's share of its run (blockIdx.y): rows m0 .. m0 + rows - 1 of the
 * run's n (run-relative; t0 its first token, p0 that token's position), M
 * rows a block, the run's tiles launched last-first (block x 0 takes the last
 * tile: it sees the most keys). False when the block has nothing to compute:
 * an empty run, a tile past its end, a table the caller broke; or a refused
 * run, whose NaN rows it has written. */
struct pf_block {
    int32_t t0, p0;
    uint32_t n, m0, rows;
};
template <int D, bool BF, bool IO16>
__device__ __forceinline__ bool pf_block_of(const struct pf_params &p, uint32_t M,
                                            uint32_t threads, struct pf_block &b)
{
    const int32_t t_end = p.run_start[blockIdx.y + 1];
    b.t0 = p.run_start[blockIdx.y];
    b.m0 = (gridDim.x - 1 - blockIdx.x) * M;
    if (b.t0 < 0 || t_end <= b.t0 || (uint32_t)t_end > p.n_tokens ||
        b.m0 >= (uint32_t)(t_end - b.t0))
        return false;
    b.n = (uint32_t)(t_end - b.t0);
    b.p0 = p.tok_pos[b.t0];
    b.rows = b.n - b.m0 < M ? b.n - b.m0 : M;
    if (b.p0 < 0 || (uint64_t)b.p0 + b.n > p.max_ctx || b.n > p.max_run) {
        /* covered: the rows max_run let the grid reach */
        pf_refuse<D, BF, IO16>(p, b.t0, blockIdx.z, b.n, b.m0, b.rows, (uint64_t)gridDim.x * M,
                               threads);
        return false;
    }
    return true;
}

/* One warp's 16 query rows (run-relative r0 .. r0 + 15) against the key tile
 * kb .. kb + 8 NT - 1: the scores s (raw, fragments) become the weights P,
 * the running maxima mb and this lane's row sums l move, O is rescaled when
 * they do.
 *   - Keys after a row's position, and rows past the run (n), are masked
 *     (only tiles crossing the diagonal or the run's end need it).
 *   - The running maximum (kept scaled: mb = max * qscale, the base the
 *     weights subtract) moves only when the tile's passes it by more than
 *     PF_SLACK (log2 units) or none was set: weights stay below 2^PF_SLACK,
 *     which fp32 sums and 16-bit P hold as well as weights below 1, and most
 *     tiles then leave O unscaled. The quad agrees (its maxima are equal);
 *     -inf - -inf is NaN: no move.
 *   - Weights 2^(s qscale - mb), one FMA and one ex2 each; a row with nothing
 *     seen yet keeps -inf and subtracts 0 (no NaN). */
template <int NT, int DT>
__device__ __forceinline__ void pf_softmax(float (&s)[NT][4], float (&o)[DT][4], float (&mb)[2],
                                           float (&l)[2], uint32_t kb, int32_t p0, uint32_t r0,
                                           uint32_t n, uint32_t g, uint32_t c, float qscale)
{
    const uint32_t row_lo = r0 + g, row_hi = r0 + g + 8;
    if (kb + NT * 8 - 1 > (uint32_t)p0 + r0 || r0 + 16 > n) {
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const uint32_t key = kb + t * 8 + 2 * c + (e & 1);
                const uint32_t row = e < 2 ? row_lo : row_hi;
                if (row >= n || key > (uint32_t)p0 + row)
                    s[t][e] = -INFINITY;
            }
    }
    /* the maxima of the raw scores (qscale > 0 keeps the order) */
    float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        mx_lo = fmaxf(mx_lo, fmaxf(s[t][0], s[t][1]));
        mx_hi = fmaxf(mx_hi, fmaxf(s[t][2], s[t][3]));
    }
    /* a row's values live in the 4 lanes of its quad */
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
    const float tb_lo = mx_lo * qscale, tb_hi = mx_hi * qscale;
    const bool move_lo = tb_lo - mb[0] > PF_SLACK;
    const bool move_hi = tb_hi - mb[1] > PF_SLACK;
    float alpha_lo = 1.0f, alpha_hi = 1.0f;
    if (move_lo || move_hi) {
        if (move_lo)
            alpha_lo = pd_ex2(mb[0] - tb_lo), mb[0] = tb_lo;
        if (move_hi)
            alpha_hi = pd_ex2(mb[1] - tb_hi), mb[1] = tb_hi;
        l[0] *= alpha_lo, l[1] *= alpha_hi;
#pragma unroll
        for (int t = 0; t < DT; t++) {
            o[t][0] *= alpha_lo, o[t][1] *= alpha_lo;
            o[t][2] *= alpha_hi, o[t][3] *= alpha_hi;
        }
    }
    const float base_lo = mb[0] == -INFINITY ? 0.0f : mb[0];
    const float base_hi = mb[1] == -INFINITY ? 0.0f : mb[1];
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        s[t][0] = pd_ex2(fmaf(s[t][0], qscale, -base_lo));
        s[t][1] = pd_ex2(fmaf(s[t][1], qscale, -base_lo));
        s[t][2] = pd_ex2(fmaf(s[t][2], qscale, -base_hi));
        s[t][3] = pd_ex2(fmaf(s[t][3], qscale, -base_hi));
        sum_lo += s[t][0] + s[t][1];
        sum_hi += s[t][2] + s[t][3];
    }
    /* this lane's part of the row sums; the quad sums at the end */
    l[0] += sum_lo;
    l[1] += sum_hi;
}

/* P's k-step k (keys 16 k .. 16 k + 15) as the A fragment of the second
 * product: S tiles 2k and 2k + 1, rounded to the pool's 16-bit type (the S
 * accumulator layout is the A layout) */
template <bool BF, int NT>
__device__ __forceinline__ void pf_p_frag(uint32_t (&a)[4], const float (&s)[NT][4], int k)
{
    a[0] = pd_pack2<BF>(s[2 * k][0], s[2 * k][1]);
    a[1] = pd_pack2<BF>(s[2 * k][2], s[2 * k][3]);
    a[2] = pd_pack2<BF>(s[2 * k + 1][0], s[2 * k + 1][1]);
    a[3] = pd_pack2<BF>(s[2 * k + 1][2], s[2 * k + 1][3]);
}

/* The warp's rows r0 + g and r0 + g + 8 of O, divided by their sums (the
 * quad's parts added here), stored where they are in the run (rows past n
 * are not) */
template <int D, bool BF, bool IO16>
__device__ __forceinline__ void pf_store(const struct pf_params &p, const float (&o)[D / 8][4],
                                         const float (&l)[2], int32_t t0, uint32_t h, uint32_t r0,
                                         uint32_t n, uint32_t g, uint32_t c)
{
    const uint32_t row_lo = r0 + g, row_hi = row_lo + 8;
    float l_lo = l[0], l_hi = l[1];
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
    const uint64_t o_lo = ((uint64_t)(t0 + row_lo) * p.n_head + h) * D;
    const uint64_t o_hi = ((uint64_t)(t0 + row_hi) * p.n_head + h) * D;
#pragma unroll
    for (int t = 0; t < D / 8; t++) {
        const uint32_t d = t * 8 + 2 * c;
        if (row_lo < n)
            out_pair<BF, IO16>(p, o_lo, d, o[t][0] * inv_lo, o[t][1] * inv_lo);
        if (row_hi < n)
            out_pair<BF, IO16>(p, o_hi, d, o[t][2] * inv_hi, o[t][3] * inv_hi);
    }
}

/* attn_prefill_sm90.cu's launch of p (checked, filled by
 * pd_attention_prefill_cuda) on an sm_90 device, with tiles of `keys` keys
 * (64 or 128), grid for max_run: -ENOTSUP when the device's shared memory
 * cannot hold its tiles; a launch error as pd_cuda_launched gives it */
int pd_attn_prefill_sm90(const struct pf_params &p, uint32_t head_dim, uint32_t keys, bool bf,
                         bool io16, uint32_t max_run, size_t optin, cudaStream_t stream);

#endif
