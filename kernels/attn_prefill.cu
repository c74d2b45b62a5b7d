/* kernels/attn_prefill.cu: causal prefill attention on tensor cores, reading
 * K and V from the paged pool (chunked prefill: earlier chunks are there too).
 *
 * Layout of the work (docs/internals/cuda.md has the reasoning):
 *   grid   (query tile, run, query head); tiles of a run launch longest first
 *   block  PF_WARPS warps, PF_M = 16 * PF_WARPS query rows; the block walks
 *          the keys its rows can see in tiles of PF_N, K and V copied into
 *          shared memory with cp.async, two stages: tile j + 1 is in flight
 *          while tile j is computed
 *   warp   16 query rows: S = Q K^T and O += P V with m16n8k16 mma
 *          (kernels/mma.cuh), Q held in registers as A fragments for the
 *          whole walk, the B fragments by ldmatrix (V's transposed on the
 *          way: the tiles stay [key][dim] as the pool has them), the online
 *          softmax (log2 units, fp32) on the S fragments, P rounded to the
 *          pool's 16-bit type as the A fragments of the second product (the
 *          S accumulator layout is the A layout)
 * Nothing of size rows x keys exists outside registers. Every query row of a
 * tile below the diagonal sees a whole key tile; only tiles crossing the
 * diagonal or past the run's end need masks, and a warp whose rows are all
 * before a tile skips its arithmetic.
 *
 * Not yet: several query heads of a GQA group per block (each head reloads
 * its KV tiles; L2 serves the repeats), splitting a long context when a
 * chunk is short, Hopper's wgmma and TMA.
 */
#include "attention.h"
#include "bf16.h"
#include "cuda_check.cuh"
#include "mma.cuh"
#include "quant.h"

#include <math.h>
#include <string.h>

#define PF_WARPS 8
#define PF_THREADS (PF_WARPS * 32)
#define PF_M (PF_WARPS * 16) /* query rows per block */
#define PF_N 64 /* keys per tile */
/* 16-bit elements of padding per shared row: the 8 rows an ldmatrix phase
 * reads (16 bytes each, rows (D + 8) * 2 bytes apart) fall on 32 distinct
 * banks */
#define PF_PAD 8
#define PF_STAGES 2

/* dynamic shared memory: PF_STAGES x (K tile, V tile), each [PF_N][D + PF_PAD] */
template <int D> static constexpr size_t pf_smem_bytes()
{
    return (size_t)PF_STAGES * 2 * PF_N * (D + PF_PAD) * sizeof(uint16_t);
}

struct pf_params {
    void *out; /* (n_tokens, n_head, head_dim) of the io type */
    const void *q; /* (n_tokens, n_head, head_dim) of the io type */
    const uint16_t *pool; /* kv_layout.h, BF16 or F16 */
    const int32_t *tok_seq, *tok_pos, *run_start;
    const uint32_t *block_tables; /* (n_seqs, max_blocks) */
    struct pd_kv_geom kv;
    uint32_t layer, n_tokens, n_head, group, max_blocks, n_runs;
    uint32_t max_ctx; /* runs reaching past it are refused (NaN rows) */
    uint32_t max_run; /* runs longer than the caller promised: refused alike */
    uint32_t bs_shift, bs_pow2; /* log2(block_size) when a power of two */
    float qscale; /* scale * log2(e): scores in log2 units */
};

/* ---- io ------------------------------------------------------------------ */

/* Two elements of q (row, columns d and d + 1) as one A-fragment register. */
template <bool BF, bool IO16>
__device__ __forceinline__ uint32_t q_pair(const struct pf_params &p, uint64_t row_off, uint32_t d)
{
    if constexpr (IO16) {
        return *(const uint32_t *)((const uint16_t *)p.q + row_off + d);
    } else {
        const float2 v = *(const float2 *)((const float *)p.q + row_off + d);
        return pd_pack2<BF>(v.x, v.y);
    }
}

template <bool BF, bool IO16>
__device__ __forceinline__ void out_pair(const struct pf_params &p, uint64_t row_off, uint32_t d,
                                         float x, float y)
{
    if constexpr (IO16)
        *(uint32_t *)((uint16_t *)p.out + row_off + d) = pd_pack2<BF>(x, y);
    else
        *(float2 *)((float *)p.out + row_off + d) = make_float2(x, y);
}

/* ---- the kernel ------------------------------------------------------------ */

template <int D, bool BF, bool IO16>
__global__ void __launch_bounds__(PF_THREADS, 1) attn_prefill_kernel(const struct pf_params p)
{
    constexpr int KS = D / 16; /* k-steps of Q K^T over head_dim */
    constexpr int NT = PF_N / 8; /* n-tiles of S (8 keys each) */
    constexpr int DT = D / 8; /* n-tiles of O (8 dims each) */
    constexpr int LD = D + PF_PAD; /* row stride of a K or V tile: a key's head_dim */
    constexpr int CPR = D / 8; /* 16-byte chunks per K/V row */
    constexpr int TILE = PF_N * LD; /* elements of one K or V tile */
    static_assert(NT % 2 == 0 && DT % 2 == 0, "ldmatrix .x4 feeds two n-tiles");
    extern __shared__ uint4 pf_smem_raw[];
    /* stage st: its K tile at 2 st TILE, its V tile after it; both [key][dim] */
    uint16_t *const smem = (uint16_t *)pf_smem_raw;

    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const uint32_t g = lane / 4, c = lane % 4;
    const uint32_t run = blockIdx.y, h = blockIdx.z, kvh = h / p.group;
    const int32_t t0 = p.run_start[run], t_end = p.run_start[run + 1];
    const uint32_t m0 = (gridDim.x - 1 - blockIdx.x) * PF_M;

    if (t0 < 0 || t_end <= t0 || (uint32_t)t_end > p.n_tokens || m0 >= (uint32_t)(t_end - t0))
        return; /* an empty run, a tile past its end, or a table the caller broke */
    const uint32_t n = (uint32_t)(t_end - t0);
    const int32_t p0 = p.tok_pos[t0];
    const uint32_t rows = n - m0 < PF_M ? n - m0 : PF_M;

    const uint64_t covered = (uint64_t)gridDim.x * PF_M; /* rows max_run let the grid reach */
    if (p0 < 0 || (uint64_t)p0 + n > p.max_ctx || n > p.max_run) {
        /* refused (a position out of bounds, or a run longer than max_run
         * promised): NaN rows, so the caller's checks see it; the first tile's
         * block also takes the rows no block reaches (max_run sized the grid) */
        const uint32_t r1 = m0 == 0 && n > covered ? n : m0 + rows;
        for (uint64_t i = threadIdx.x; i < (uint64_t)(r1 - m0) * D / 2; i += PF_THREADS) {
            uint32_t r = m0 + (uint32_t)(i / (D / 2));
            if (r >= m0 + rows && r < covered)
                continue; /* another block's */
            const uint64_t off = ((uint64_t)(t0 + r) * p.n_head + h) * D;
            out_pair<BF, IO16>(p, off, 2 * (uint32_t)(i % (D / 2)), NAN, NAN);
        }
        return;
    }

    /* this lane's two rows of the warp's 16 (run-relative) and their tokens */
    const uint32_t w0 = m0 + warp * 16;
    const uint32_t row_lo = w0 + g, row_hi = w0 + g + 8;
    const uint64_t q_lo = ((uint64_t)(t0 + row_lo) * p.n_head + h) * D;
    const uint64_t q_hi = ((uint64_t)(t0 + row_hi) * p.n_head + h) * D;

    uint32_t qa[KS][4];
#pragma unroll
    for (int k = 0; k < KS; k++) {
        const uint32_t d = k * 16 + 2 * c;
        qa[k][0] = row_lo < n ? q_pair<BF, IO16>(p, q_lo, d) : 0;
        qa[k][1] = row_hi < n ? q_pair<BF, IO16>(p, q_hi, d) : 0;
        qa[k][2] = row_lo < n ? q_pair<BF, IO16>(p, q_lo, d + 8) : 0;
        qa[k][3] = row_hi < n ? q_pair<BF, IO16>(p, q_hi, d + 8) : 0;
    }

    float o[DT][4];
#pragma unroll
    for (int t = 0; t < DT; t++)
        o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

    const uint32_t *table = p.block_tables + (uint64_t)p.tok_seq[t0] * p.max_blocks;
    const uint64_t block_elems = pd_kv_block_elems(&p.kv);
    const uint64_t k_base = pd_kv_offset(&p.kv, 0, p.layer, 0, kvh, 0);
    const uint64_t v_base = pd_kv_offset(&p.kv, 0, p.layer, 1, kvh, 0);
    /* the last position any row of the block sees, and this warp's */
    const uint32_t kv_end = (uint32_t)p0 + m0 + rows;
    const bool warp_live = w0 < n;
    const uint32_t warp_last = (uint32_t)p0 + (w0 + 15 < n ? w0 + 15 : n - 1);

    /* K and V of keys kb .. kb + PF_N - 1 into stage st, in flight until a
     * pd_cp_async_wait; zeros past kv_end (a masked weight is 0, and 0 x
     * garbage could be NaN) */
    auto load_tile = [&](uint32_t st, uint32_t kb) {
        uint16_t *const ks = smem + 2 * st * TILE, *const vs = ks + TILE;
        for (uint32_t i = threadIdx.x; i < PF_N * CPR; i += PF_THREADS) {
            const uint32_t j = i / CPR, d = (i % CPR) * 8, pos = kb + j;
            uint64_t row = 0;
            if (pos < kv_end) {
                const uint32_t bi = p.bs_pow2 ? pos >> p.bs_shift : pos / p.kv.block_size;
                const uint32_t bt = p.bs_pow2 ? pos & (p.kv.block_size - 1) : pos % p.kv.block_size;
                row = (uint64_t)table[bi] * block_elems + (uint64_t)bt * D + d;
            }
            pd_cp_async16(&ks[j * LD + d], p.pool + k_base + row, pos < kv_end);
            pd_cp_async16(&vs[j * LD + d], p.pool + v_base + row, pos < kv_end);
        }
        pd_cp_async_commit();
    };

    /* ldmatrix: lane l gives row l % 8 of matrix l / 8 */
    const uint32_t lr = lane % 8, lm = lane / 8;
    const uint32_t n_tiles = (kv_end + PF_N - 1) / PF_N;
    load_tile(0, 0);
    for (uint32_t it = 0; it < n_tiles; it++) {
        const uint32_t kb = it * PF_N;
        if (it + 1 < n_tiles)
            load_tile((it + 1) % PF_STAGES, kb + PF_N);
        else
            pd_cp_async_commit(); /* an empty group: the wait below counts alike */
        pd_cp_async_wait<1>(); /* this thread's copies of tile it have landed */
        __syncthreads(); /* and every other thread's */
        const uint16_t *const ks = smem + 2 * (it % PF_STAGES) * TILE, *const vs = ks + TILE;
        if (!warp_live || kb > warp_last) {
            __syncthreads(); /* every key of the tile is after every row of this warp */
            continue;
        }

        /* S = Q K^T: one ldmatrix gives the B fragments of n-tiles t and t + 1 */
        float s[NT][4];
#pragma unroll
        for (int t = 0; t < NT; t++)
            s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
#pragma unroll
        for (int t = 0; t < NT; t += 2)
#pragma unroll
            for (int k = 0; k < KS; k++) {
                uint32_t b[4];
                pd_ldmatrix_x4<false>(b, &ks[((t + lm / 2) * 8 + lr) * LD + k * 16 + (lm % 2) * 8]);
                pd_mma_16816<BF>(s[t], qa[k], b);
                pd_mma_16816<BF>(s[t + 1], qa[k], b + 2);
            }

        /* scale into log2 units; mask keys after a row's position, and rows
         * past the run (only the tiles that cross the diagonal need it) */
        const bool masked = kb + PF_N - 1 > (uint32_t)p0 + w0 || w0 + 16 > n;
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float v = s[t][e] * p.qscale;
                if (masked) {
                    const uint32_t key = kb + t * 8 + 2 * c + (e & 1);
                    const uint32_t row = e < 2 ? row_lo : row_hi;
                    if (row >= n || key > (uint32_t)p0 + row)
                        v = -INFINITY;
                }
                s[t][e] = v;
                if (e < 2)
                    mx_lo = fmaxf(mx_lo, v);
                else
                    mx_hi = fmaxf(mx_hi, v);
            }
        /* a row's values live in the 4 lanes of its quad */
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        const float new_lo = fmaxf(m_lo, mx_lo), new_hi = fmaxf(m_hi, mx_hi);
        /* a row with nothing seen yet keeps -inf; subtract 0 instead (no NaN) */
        const float base_lo = new_lo == -INFINITY ? 0.0f : new_lo;
        const float base_hi = new_hi == -INFINITY ? 0.0f : new_hi;
        const float alpha_lo = exp2f(m_lo - base_lo), alpha_hi = exp2f(m_hi - base_hi);
        m_lo = new_lo, m_hi = new_hi;

        float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            s[t][0] = exp2f(s[t][0] - base_lo);
            s[t][1] = exp2f(s[t][1] - base_lo);
            s[t][2] = exp2f(s[t][2] - base_hi);
            s[t][3] = exp2f(s[t][3] - base_hi);
            sum_lo += s[t][0] + s[t][1];
            sum_hi += s[t][2] + s[t][3];
        }
        l_lo = l_lo * alpha_lo + sum_lo; /* this lane's part; the quad sums at the end */
        l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
        for (int t = 0; t < DT; t++) {
            o[t][0] *= alpha_lo, o[t][1] *= alpha_lo;
            o[t][2] *= alpha_hi, o[t][3] *= alpha_hi;
        }

        /* O += P V, 16 keys per step: S tiles 2k and 2k+1 are the A fragment;
         * one transposing ldmatrix gives the B fragments of dims t and t + 1 */
#pragma unroll
        for (int k = 0; k < PF_N / 16; k++) {
            const uint32_t pa[4] = {pd_pack2<BF>(s[2 * k][0], s[2 * k][1]),
                                    pd_pack2<BF>(s[2 * k][2], s[2 * k][3]),
                                    pd_pack2<BF>(s[2 * k + 1][0], s[2 * k + 1][1]),
                                    pd_pack2<BF>(s[2 * k + 1][2], s[2 * k + 1][3])};
#pragma unroll
            for (int t = 0; t < DT; t += 2) {
                uint32_t b[4];
                pd_ldmatrix_x4<true>(b, &vs[(k * 16 + (lm % 2) * 8 + lr) * LD + (t + lm / 2) * 8]);
                pd_mma_16816<BF>(o[t], pa, b);
                pd_mma_16816<BF>(o[t + 1], pa, b + 2);
            }
        }
        __syncthreads(); /* the stage is loaded again two tiles on */
    }

    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
#pragma unroll
    for (int t = 0; t < DT; t++) {
        const uint32_t d = t * 8 + 2 * c;
        if (row_lo < n)
            out_pair<BF, IO16>(p, q_lo, d, o[t][0] * inv_lo, o[t][1] * inv_lo);
        if (row_hi < n)
            out_pair<BF, IO16>(p, q_hi, d, o[t][2] * inv_hi, o[t][3] * inv_hi);
    }
}

/* ---- host side --------------------------------------------------------- */

typedef void (*pf_kernel_fn)(const struct pf_params);

template <int D> static pf_kernel_fn pick(bool bf, bool io16)
{
    if (bf)
        return io16 ? attn_prefill_kernel<D, true, true> : attn_prefill_kernel<D, true, false>;
    return io16 ? attn_prefill_kernel<D, false, true> : attn_prefill_kernel<D, false, false>;
}

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

extern "C" int pd_attention_prefill_cuda(const struct pd_attn_args *a, pd_stream_t stream)
{
    const struct pd_kv_geom *kv = &a->kv;
    int dev = 0, major = 0;

    if (kv->n_head_kv == 0 || a->n_head % kv->n_head_kv || kv->block_size == 0 ||
        a->layer >= kv->n_layer || a->max_blocks == 0 || kv->head_dim == 0)
        return -EINVAL;
    if (a->pool_type != PD_DT_BF16 && a->pool_type != PD_DT_F16)
        return a->pool_type == PD_DT_F32 ? -ENOTSUP : -EINVAL;
    if (kv->head_dim != 64 && kv->head_dim != 128)
        return -ENOTSUP;
    if (a->io_type != PD_DT_F32 && a->io_type != a->pool_type)
        return -EINVAL;
    if (a->n_tokens == 0 || a->n_runs == 0)
        return 0;
    if (!a->run_start || !a->q || !a->out || !a->pool || a->n_tokens > INT32_MAX ||
        a->n_runs > 65535 || a->n_head > 65535)
        return -EINVAL;
    /* 16-byte K/V loads; q and out read and written in pairs */
    if (!aligned16(a->pool) || !aligned16(a->q) || !aligned16(a->out))
        return -EINVAL;
    PD_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
    PD_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
                "cudaDeviceGetAttribute");
    if (major < 8)
        return -ENOTSUP; /* no bf16 / f16 m16n8k16 mma */

    struct pf_params p;
    memset(&p, 0, sizeof p);
    p.out = a->out;
    p.q = a->q;
    p.pool = (const uint16_t *)(const void *)a->pool;
    p.tok_seq = a->tok_seq;
    p.tok_pos = a->tok_pos;
    p.run_start = a->run_start;
    p.block_tables = a->block_tables;
    p.kv = *kv;
    p.layer = a->layer;
    p.n_tokens = a->n_tokens;
    p.n_head = a->n_head;
    p.group = a->n_head / kv->n_head_kv;
    p.max_blocks = a->max_blocks;
    p.n_runs = a->n_runs;
    const uint64_t table_ctx = (uint64_t)a->max_blocks * kv->block_size;
    p.max_ctx = table_ctx > UINT32_MAX ? UINT32_MAX : (uint32_t)table_ctx;
    if (a->max_ctx && a->max_ctx < p.max_ctx)
        p.max_ctx = a->max_ctx;
    p.bs_pow2 = (kv->block_size & (kv->block_size - 1)) == 0;
    while (p.bs_pow2 && (1u << p.bs_shift) < kv->block_size)
        p.bs_shift++;
    p.qscale = a->scale * 1.4426950408889634f; /* log2(e) */

    const bool bf = a->pool_type == PD_DT_BF16, io16 = a->io_type != PD_DT_F32;
    const pf_kernel_fn fn = kv->head_dim == 64 ? pick<64>(bf, io16) : pick<128>(bf, io16);
    const uint32_t max_run = a->max_run ? a->max_run : a->n_tokens;
    p.max_run = max_run;
    const size_t smem = kv->head_dim == 64 ? pf_smem_bytes<64>() : pf_smem_bytes<128>();
    /* above 48 KiB a kernel must ask (per device: every launch asks, which is cheap) */
    PD_CUDA_TRY(cudaFuncSetAttribute(reinterpret_cast<const void *>(fn),
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                "cudaFuncSetAttribute");
    dim3 grid((max_run + PF_M - 1) / PF_M, a->n_runs, a->n_head);
    fn<<<grid, PF_THREADS, smem, pd_cuda_stream(stream)>>>(p);
    return pd_cuda_launched("attn_prefill_kernel");
}
