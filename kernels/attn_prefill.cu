/* kernels/attn_prefill.cu: causal prefill attention on tensor cores, reading
 * K and V from the paged pool (chunked prefill: earlier chunks are there too).
 *
 * Layout of the work (docs/internals/kernels.md has the reasoning):
 *   grid   (query tile, run, query head); tiles of a run launch longest first
 *   block  PF_WARPS warps, M = 16 * MT * PF_WARPS query rows, copied
 *          into shared memory once (16-bit); the block walks the keys its
 *          rows can see in tiles of PF_N, K and V copied into shared memory
 *          with cp.async, two stages: tile j + 1 is in flight while tile j
 *          is computed
 *   warp   MT m-tiles of 16 query rows (PF_MT, or 1 where the device's
 *          shared memory cannot hold that many rows): S = Q K^T and O += P V with
 *          m16n8k16 mma (kernels/mma.cuh), every fragment of Q, K and V by
 *          ldmatrix (V's transposed on the way: the tiles stay [key][dim] as
 *          the pool has them; each K or V fragment feeds both m-tiles), the
 *          online softmax on the S fragments (fp32; weights
 *          2^(s qscale - max qscale) by one FMA and one ex2 each), P rounded
 *          to the pool's 16-bit type as the A fragments of the second
 *          product (the S accumulator layout is the A layout)
 * Nothing of size rows x keys exists outside registers. Every query row of a
 * tile below the diagonal sees a whole key tile; only tiles crossing the
 * diagonal or past the run's end need masks, and a warp whose rows are all
 * before a tile skips its arithmetic.
 *
 * Not yet: several query heads of a GQA group per block (each head reloads
 * its KV tiles; L2 serves the repeats), splitting a long context when a
 * chunk is short. Hopper's wgmma: attn_prefill_sm90.cu, on request
 * (pd_attn_args.prefill_wgmma); TMA and warp specialisation: not yet.
 * The softmax, the refusal and the stores are attn_prefill.cuh's, shared
 * with that kernel.
 */
#include "attn_prefill.cuh"
#include "bf16.h"
#include "cuda_check.cuh"
#include "kv_tile.cuh"
#include "mma.cuh"
#include "quant.h"

#include <math.h>
#include <string.h>

/* the shape of the work; a build may try others (cuda_args -DPF_N=32 ...) */
#ifndef PF_WARPS
#define PF_WARPS 4
#endif
#ifndef PF_MT
#define PF_MT 2 /* m-tiles (16 query rows each) per warp, where shared memory allows */
#endif
#ifndef PF_N
#define PF_N 64 /* keys per tile */
#endif
#ifndef PF_MIN_BLOCKS
#define PF_MIN_BLOCKS 2 /* blocks per SM the registers must allow */
#endif
#define PF_THREADS (PF_WARPS * 32)
/* 16-bit elements of padding per shared row: the 8 rows an ldmatrix phase
 * reads (16 bytes each, rows (D + 8) * 2 bytes apart) fall on 32 distinct
 * banks */
#define PF_PAD 8
#define PF_STAGES 2

/* query rows per block with MT m-tiles per warp */
template <int MT> __host__ __device__ static constexpr uint32_t pf_rows()
{
    return PF_WARPS * MT * 16;
}

/* dynamic shared memory: the Q tile [M][D + PF_PAD], then PF_STAGES x
 * (K tile, V tile), each [PF_N][D + PF_PAD]; and the static key offsets */
template <int D, int MT> static constexpr size_t pf_smem_bytes()
{
    return ((size_t)pf_rows<MT>() + (size_t)PF_STAGES * 2 * PF_N) * (D + PF_PAD) *
           sizeof(uint16_t);
}
#define PF_STATIC_SMEM (PF_STAGES * PF_N * sizeof(uint64_t))

/* ---- the kernel ------------------------------------------------------------ */

template <int D, bool BF, bool IO16, int MT>
__global__ void __launch_bounds__(PF_THREADS, PF_MIN_BLOCKS) attn_prefill_kernel(const struct pf_params p)
{
    constexpr uint32_t M = pf_rows<MT>(); /* query rows per block */
    constexpr int KS = D / 16; /* k-steps of Q K^T over head_dim */
    constexpr int NT = PF_N / 8; /* n-tiles of S (8 keys each) */
    constexpr int DT = D / 8; /* n-tiles of O (8 dims each) */
    constexpr int LD = D + PF_PAD; /* row stride of a Q, K or V tile: a row's head_dim */
    constexpr int CPR = D / 8; /* 16-byte chunks per row */
    constexpr int TILE = PF_N * LD; /* elements of one K or V tile */
    static_assert(NT % 2 == 0 && DT % 2 == 0, "ldmatrix .x4 feeds two n-tiles");
    extern __shared__ uint4 pf_smem_raw[];
    /* the Q tile, then stage st's K tile at M LD + 2 st TILE and its V
     * tile after it; all [row][dim] */
    uint16_t *const qs = (uint16_t *)pf_smem_raw;
    uint16_t *const kv_smem = qs + M * LD;

    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const uint32_t g = lane / 4, c = lane % 4;
    const uint32_t h = blockIdx.z, kvh = h / p.group;
    struct pf_block b;
    if (!pf_block_of<D, BF, IO16>(p, M, PF_THREADS, b))
        return;
    const int32_t t0 = b.t0, p0 = b.p0;
    const uint32_t n = b.n, m0 = b.m0, rows = b.rows;

    const struct pd_tile_src src =
        pd_tile_src_of(p.pool, p.kv, p.block_tables + (uint64_t)p.tok_seq[t0] * p.max_blocks,
                       p.layer, kvh, p.bs_shift, p.bs_pow2);
    /* the last position any row of the block sees */
    const uint32_t kv_end = (uint32_t)p0 + m0 + rows;

    /* The pool offsets of keys kb .. kb + PF_N - 1, UINT64_MAX past kv_end:
     * worked out a tile ahead (kernels/kv_tile.cuh) */
    __shared__ uint64_t key_off[PF_STAGES][PF_N];
    auto key_offsets = [&](uint32_t st, uint32_t kb) {
        pd_tile_offsets<PF_N, PF_THREADS, D>(src, key_off[st], kb, kv_end);
    };
    /* K and V of the keys of key_off[st] into stage st, in flight until a
     * pd_cp_async_wait; zeros past kv_end */
    auto load_tile = [&](uint32_t st) {
        uint16_t *const ks = kv_smem + 2 * st * TILE;
        pd_tile_load<PF_N, PF_THREADS, D, LD>(src, key_off[st], ks, ks + TILE);
    };

    /* the block's query rows (zeros past the run), with the first key tile */
    const uint32_t n_tiles = (kv_end + PF_N - 1) / PF_N;
    key_offsets(0, 0);
    if (n_tiles > 1)
        key_offsets(1, PF_N);
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < M * CPR; i += PF_THREADS) {
        const uint32_t r = i / CPR, d = (i % CPR) * 8;
        q_chunk<BF, IO16>(p, &qs[r * LD + d], (uint64_t)(t0 + m0 + r) * p.q_ld + h * D, d,
                          r < rows);
    }
    load_tile(0);

    /* this warp's rows: m-tile i is rows w0 + 16 i .. + 15 (run-relative);
     * lane (g, c) holds rows + g and + g + 8 of each */
    const uint32_t w0 = m0 + warp * (MT * 16);
    const bool warp_live = w0 < n;
    const uint32_t warp_last = (uint32_t)p0 + (w0 + MT * 16 - 1 < n ? w0 + MT * 16 - 1 : n - 1);

    float o[MT][DT][4];
    zero_frags(o);
    float mb[MT][2], l[MT][2]; /* running maxima times qscale; row sums */
#pragma unroll
    for (int i = 0; i < MT; i++)
        mb[i][0] = mb[i][1] = -INFINITY, l[i][0] = l[i][1] = 0.0f;

    /* ldmatrix: lane l gives row l % 8 of matrix l / 8 */
    const uint32_t lr = lane % 8, lm = lane / 8;
    for (uint32_t it = 0; it < n_tiles; it++) {
        const uint32_t kb = it * PF_N;
        if (it + 1 < n_tiles)
            load_tile((it + 1) % PF_STAGES);
        else
            pd_cp_async_commit(); /* an empty group: the wait below counts alike */
        pd_cp_async_wait<1>(); /* this thread's copies of tile it (and Q) have landed */
        __syncthreads(); /* and every other thread's; key_off[it % 2] is read by all */
        if (it + 2 < n_tiles) /* seen by load_tile past the barrier that ends this tile */
            key_offsets(it % PF_STAGES, kb + 2 * PF_N);
        const uint16_t *const ks = kv_smem + 2 * (it % PF_STAGES) * TILE, *const vs = ks + TILE;
        /* a warp whose rows all come before the tile's keys skips the work,
         * not the barrier: every thread reaches the one below */
        if (warp_live && kb <= warp_last) {
            /* S = Q K^T: per k-step, the A fragments of both m-tiles and, per
             * ldmatrix, the B fragments of n-tiles t and t + 1 */
            float s[MT][NT][4];
            zero_frags(s);
#pragma unroll
            for (int k = 0; k < KS; k++) {
                uint32_t qa[MT][4];
#pragma unroll
                for (int i = 0; i < MT; i++)
                    pd_ldmatrix_x4<false>(qa[i], &qs[(w0 - m0 + i * 16 + (lm % 2) * 8 + lr) * LD +
                                                     k * 16 + (lm / 2) * 8]);
#pragma unroll
                for (int t = 0; t < NT; t += 2) {
                    uint32_t b[4];
                    pd_ldmatrix_x4<false>(b, &ks[((t + lm / 2) * 8 + lr) * LD + k * 16 + (lm % 2) * 8]);
#pragma unroll
                    for (int i = 0; i < MT; i++) {
                        pd_mma_16816<BF>(s[i][t], qa[i], b);
                        pd_mma_16816<BF>(s[i][t + 1], qa[i], b + 2);
                    }
                }
            }

#pragma unroll
            for (int i = 0; i < MT; i++)
                pf_softmax<NT, DT>(s[i], o[i], mb[i], l[i], kb, p0, w0 + i * 16, n, g, c, p.qscale);

            /* O += P V, 16 keys per step: S tiles 2k and 2k+1 are the A
             * fragment; one transposing ldmatrix gives the B fragments of dims
             * t and t + 1 for both m-tiles */
#pragma unroll
            for (int k = 0; k < PF_N / 16; k++) {
                uint32_t pa[MT][4];
#pragma unroll
                for (int i = 0; i < MT; i++)
                    pf_p_frag<BF>(pa[i], s[i], k);
#pragma unroll
                for (int t = 0; t < DT; t += 2) {
                    uint32_t b[4];
                    pd_ldmatrix_x4<true>(b, &vs[(k * 16 + (lm % 2) * 8 + lr) * LD + (t + lm / 2) * 8]);
#pragma unroll
                    for (int i = 0; i < MT; i++) {
                        pd_mma_16816<BF>(o[i][t], pa[i], b);
                        pd_mma_16816<BF>(o[i][t + 1], pa[i], b + 2);
                    }
                }
            }
        }
        __syncthreads(); /* the stage is loaded again two tiles on */
    }

#pragma unroll
    for (int i = 0; i < MT; i++)
        pf_store<D, BF, IO16>(p, o[i], l[i], t0, h, w0 + i * 16, n, g, c);
}

/* ---- host side --------------------------------------------------------- */

typedef void (*pf_kernel_fn)(const struct pf_params);

template <int D, int MT> static pf_kernel_fn pick(bool bf, bool io16)
{
    if (bf)
        return io16 ? attn_prefill_kernel<D, true, true, MT> : attn_prefill_kernel<D, true, false, MT>;
    return io16 ? attn_prefill_kernel<D, false, true, MT> : attn_prefill_kernel<D, false, false, MT>;
}

void pd_attention_prefill_cuda_forget(void) { pd_cuda_facts_forget(); }

extern "C" int pd_attention_prefill_wgmma_ready(void)
{
#if defined(PD_PREFILL_SM90)
    int major = 0, minor = 0, rc = pd_cuda_device_cc(&major, &minor);
    return rc < 0 ? rc : major == 9 && minor == 0;
#else
    return 0;
#endif
}

/* the kernel for head_dim D with the most rows per block whose shared memory
 * the device gives a block (opt-in), its rows and its dynamic shared memory;
 * NULL when not even one m-tile per warp fits */
template <int D>
static pf_kernel_fn pick_shape(bool bf, bool io16, size_t optin, uint32_t *rows, size_t *smem)
{
    if (pf_smem_bytes<D, PF_MT>() + PF_STATIC_SMEM <= optin) {
        *rows = pf_rows<PF_MT>(), *smem = pf_smem_bytes<D, PF_MT>();
        return pick<D, PF_MT>(bf, io16);
    }
    if (pf_smem_bytes<D, 1>() + PF_STATIC_SMEM <= optin) {
        *rows = pf_rows<1>(), *smem = pf_smem_bytes<D, 1>();
        return pick<D, 1>(bf, io16);
    }
    return NULL;
}

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

extern "C" int pd_attention_prefill_cuda(const struct pd_attn_args *a, pd_stream_t stream)
{
    const struct pd_kv_geom *kv = &a->kv;
    int major = 0, optin = 0;

    if (kv->n_head_kv == 0 || a->n_head % kv->n_head_kv || kv->block_size == 0 ||
        a->layer >= kv->n_layer || a->max_blocks == 0 || kv->head_dim == 0)
        return -EINVAL;
    if (a->pool_type != PD_DT_BF16 && a->pool_type != PD_DT_F16)
        return a->pool_type == PD_DT_F32 ? -ENOTSUP : -EINVAL;
    if (kv->head_dim != 64 && kv->head_dim != 128)
        return -ENOTSUP;
    if (!(a->scale > 0.0f) || isinf(a->scale))
        return -ENOTSUP; /* the softmax takes maxima of raw scores: a positive scale */
    if (a->prefill_wgmma > 1 && a->prefill_wgmma != 64 && a->prefill_wgmma != 128)
        return -EINVAL;
    if ((a->io_type != PD_DT_F32 && a->io_type != a->pool_type) ||
        (a->out_type != PD_DT_F32 && a->out_type != PD_DT_BF16 && a->out_type != PD_DT_F16) ||
        (a->io_type != PD_DT_F32 && a->out_type != PD_DT_F32 && a->out_type != a->io_type))
        return -EINVAL;
    if (a->n_tokens == 0 || a->n_runs == 0)
        return 0;
    if (!a->run_start || !a->q || !a->out || !a->pool || a->n_tokens > INT32_MAX ||
        a->n_runs > 65535 || a->n_head > 65535)
        return -EINVAL;
    /* 16-byte K/V loads; q and out read and written in pairs */
    if (!aligned16(a->pool) || !aligned16(a->q) || !aligned16(a->out) || a->q_ld % 8 ||
        (a->q_ld && a->q_ld < a->n_head * kv->head_dim))
        return -EINVAL;
    int rc = pd_cuda_device_facts(&major, &optin);
    if (rc < 0)
        return rc;
    if (major < 8)
        return -ENOTSUP; /* no bf16 / f16 m16n8k16 mma */
    if (a->prefill_wgmma && (rc = pd_attention_prefill_wgmma_ready()) <= 0)
        return rc < 0 ? rc : -ENOTSUP; /* sm_90a code, on 9.0 alone */

    struct pf_params p;
    memset(&p, 0, sizeof p);
    p.out = a->out;
    p.out_type = a->io_type != PD_DT_F32 ? a->io_type : a->out_type;
    p.q = a->q;
    p.q_ld = pd_attn_q_ld(a);
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
    const uint32_t max_run = a->max_run ? a->max_run : a->n_tokens;
    p.max_run = max_run;
#if defined(PD_PREFILL_SM90)
    if (a->prefill_wgmma)
        return pd_attn_prefill_sm90(p, kv->head_dim,
                                    a->prefill_wgmma == 1 ? PD_ATTN_WGMMA_KEYS : a->prefill_wgmma,
                                    bf, io16, max_run, (size_t)optin, pd_cuda_stream(stream));
#endif
    uint32_t rows = 0;
    size_t smem = 0;
    const pf_kernel_fn fn = kv->head_dim == 64
                                ? pick_shape<64>(bf, io16, (size_t)optin, &rows, &smem)
                                : pick_shape<128>(bf, io16, (size_t)optin, &rows, &smem);
    if (!fn)
        return -ENOTSUP; /* the caller takes the decode kernel */
    if ((rc = pd_cuda_allow_smem((const void *)fn, smem)) < 0)
        return rc;
    dim3 grid((max_run + rows - 1) / rows, a->n_runs, a->n_head);
    fn<<<grid, PF_THREADS, smem, pd_cuda_stream(stream)>>>(p);
    return pd_cuda_launched("attn_prefill_kernel");
}
