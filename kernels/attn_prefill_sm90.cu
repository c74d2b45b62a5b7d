/* kernels/attn_prefill_sm90.cu: causal prefill attention on Hopper's
 * warpgroup tensor cores (wgmma, sm_90a), over the paged pool, for
 * pd_attention_prefill_cuda with prefill_wgmma set (issue 32's first step:
 * wgmma in place of mma.sync; the loads are still cp.async by every thread,
 * no TMA, no producer warps yet).
 *
 * Layout of the work (the same grid and masks as attn_prefill.cu):
 *   grid   (query tile, run, query head), tiles of a run longest first
 *   block  two warpgroups (8 warps), P9_M = 128 query rows, 64 per group;
 *          Q copied into shared memory once, K and V tiles of N keys (128,
 *          or 64 on request) in two stages by cp.async (tile j + 1 in flight
 *          while tile j is computed); every tile in core matrices
 *          (kv_tile.cuh), which is what wgmma reads without a swizzle
 *   group  S = Q K^T: head_dim / 16 wgmma m64nNk16, Q and K from shared
 *          memory (both K-major); the online softmax on S's registers, as
 *          attn_prefill.cu does it (attn_prefill.cuh); O += P V: N / 16
 *          wgmma m64n{head_dim}k16, P from registers (the S accumulator
 *          layout is the A layout), V from shared memory as an MN-major
 *          operand (the tile stays [key][dim])
 * A group whose rows all come before a tile skips its wgmmas, not the
 * barriers. Only sm_90a runs this file's code (built for that arch alone,
 * selected on compute capability 9.0); the CPU emulator runs it through
 * emu_wgmma. */
#include "attn_prefill.cuh"
#include "cuda_check.cuh"
#include "kv_tile.cuh"
#include "wgmma.cuh"

#include <math.h>

#define P9_WARPS 8
#define P9_THREADS (P9_WARPS * 32)
#define P9_M (P9_WARPS * 16) /* query rows per block: 16 per warp, 64 per warpgroup */
#define P9_STAGES 2

/* dynamic shared memory: the Q tile [P9_M][D], then P9_STAGES x (K tile,
 * V tile), each [N][D] (N keys a tile), all in core matrices; and the
 * static key offsets */
template <int D, int N> static constexpr size_t p9_smem_bytes()
{
    return ((size_t)P9_M + (size_t)P9_STAGES * 2 * N) * D * sizeof(uint16_t);
}
template <int N> static constexpr size_t p9_static_smem()
{
    return P9_STAGES * N * sizeof(uint64_t);
}

/* S (m64nN) = Q K^T's k-step, or += */
template <int N, bool BF>
__device__ __forceinline__ void p9_qk(float (&s)[N / 8][4], uint64_t a, uint64_t b, int accumulate)
{
    if constexpr (N == 64)
        pd_wgmma_ss_n64<BF>(s, a, b, accumulate);
    else
        pd_wgmma_ss_n128<BF>(s, a, b, accumulate);
}

/* O += P V for one k-step at head_dim D (the n of the wgmma) */
template <int D, bool BF>
__device__ __forceinline__ void p9_pv(float (&o)[D / 8][4], const uint32_t (&a)[4], uint64_t b)
{
    if constexpr (D == 64)
        pd_wgmma_rs_n64<BF>(o, a, b);
    else
        pd_wgmma_rs_n128<BF>(o, a, b);
}

template <int D, int N, bool BF, bool IO16>
__global__ void __launch_bounds__(P9_THREADS, 1) attn_prefill_sm90_kernel(const struct pf_params p)
{
    constexpr int KS = D / 16; /* k-steps of Q K^T over head_dim */
    constexpr int NT = N / 8; /* 8-key tiles of S */
    constexpr int DT = D / 8; /* 8-dim tiles of O */
    constexpr int TILE = N * D; /* elements of one K or V tile */
    /* core-matrix strides (bytes): the next 8 columns (dims), the next 8 rows */
    constexpr uint32_t COLS8 = 128, ROWS8 = D * 16;
    static_assert((D == 64 || D == 128) && (N == 64 || N == 128), "head_dim, keys: 64 or 128");
    extern __shared__ uint4 p9_smem_raw[];
    uint16_t *const qs = (uint16_t *)p9_smem_raw;
    uint16_t *const kv_smem = qs + P9_M * D;

    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, wg = warp / 4;
    const uint32_t g = lane / 4, c = lane % 4;
    const uint32_t h = blockIdx.z, kvh = h / p.group;
    struct pf_block b;
    if (!pf_block_of<D, BF, IO16>(p, P9_M, P9_THREADS, b))
        return;
    const int32_t t0 = b.t0, p0 = b.p0;
    const uint32_t n = b.n, m0 = b.m0, rows = b.rows;

    const struct pd_tile_src src =
        pd_tile_src_of(p.pool, p.kv, p.block_tables + (uint64_t)p.tok_seq[t0] * p.max_blocks,
                       p.layer, kvh, p.bs_shift, p.bs_pow2);
    const uint32_t kv_end = (uint32_t)p0 + m0 + rows; /* the last position any row sees, + 1 */

    __shared__ uint64_t key_off[P9_STAGES][N];
    auto key_offsets = [&](uint32_t st, uint32_t kb) {
        pd_tile_offsets<N, P9_THREADS, D>(src, key_off[st], kb, kv_end);
    };
    auto load_tile = [&](uint32_t st) {
        uint16_t *const ks = kv_smem + 2 * st * TILE;
        pd_tile_load_core<N, P9_THREADS, D>(src, key_off[st], ks, ks + TILE);
    };

    const uint32_t n_tiles = (kv_end + N - 1) / N;
    key_offsets(0, 0);
    if (n_tiles > 1)
        key_offsets(1, N);
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < P9_M * (D / 8); i += P9_THREADS) {
        const uint32_t r = pd_core_row<D>(i);
        q_chunk<BF, IO16>(p, &qs[8 * i], (uint64_t)(t0 + m0 + r) * p.q_ld + h * D,
                          pd_core_col<D>(i), r < rows);
    }
    load_tile(0);

    /* this warp's 16 rows (run-relative) and its group's 64 */
    const uint32_t w0 = m0 + warp * 16, g0 = m0 + wg * 64;
    const bool group_live = g0 < n;
    const uint32_t group_last = (uint32_t)p0 + (g0 + 63 < n ? g0 + 63 : n - 1);
    const uint16_t *const q_group = qs + wg * 64 * D;

    float o[DT][4];
    zero_frags(o);
    float mb[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (uint32_t it = 0; it < n_tiles; it++) {
        const uint32_t kb = it * N;
        if (it + 1 < n_tiles)
            load_tile((it + 1) % P9_STAGES);
        else
            pd_cp_async_commit(); /* an empty group: the wait below counts alike */
        pd_cp_async_wait<1>(); /* this thread's copies of tile it (and Q) have landed */
        pd_fence_proxy_async(); /* and are visible to the tensor cores' reads */
        __syncthreads(); /* every thread's; key_off[it % 2] is read by all */
        if (it + 2 < n_tiles)
            key_offsets(it % P9_STAGES, kb + 2 * N);
        const uint16_t *const ks = kv_smem + 2 * (it % P9_STAGES) * TILE, *const vs = ks + TILE;
        if (group_live && kb <= group_last) {
            /* S = Q K^T: k-step k reads dims 16 k .. 16 k + 15 of both */
            float s[NT][4];
            pd_wgmma_fence();
#pragma unroll
            for (int k = 0; k < KS; k++)
                p9_qk<N, BF>(s, pd_wgmma_desc(q_group + k * 128, COLS8, ROWS8),
                             pd_wgmma_desc(ks + k * 128, COLS8, ROWS8), k > 0);
            pd_wgmma_commit();
            pd_wgmma_wait<0>();
            pd_wgmma_fence_regs(s);

            pf_softmax<NT, DT>(s, o, mb, l, kb, p0, w0, n, g, c, p.qscale);

            /* O += P V: k-step k is keys 16 k .. 16 k + 15, two 8-key core
             * rows of V (ROWS8 apart: the LBO of an MN-major operand) */
            uint32_t pa[N / 16][4];
#pragma unroll
            for (int k = 0; k < N / 16; k++)
                pf_p_frag<BF>(pa[k], s, k);
            pd_wgmma_fence_regs(o); /* the rescale and P are written before the fence */
            pd_wgmma_fence_regs(pa);
            pd_wgmma_fence();
#pragma unroll
            for (int k = 0; k < N / 16; k++)
                p9_pv<D, BF>(o, pa[k], pd_wgmma_desc(vs + k * 16 * D, ROWS8, COLS8));
            pd_wgmma_commit();
            pd_wgmma_wait<0>();
            pd_wgmma_fence_regs(o);
        }
        __syncthreads(); /* the stage is loaded again two tiles on */
    }

    pf_store<D, BF, IO16>(p, o, l, t0, h, w0, n, g, c);
}

/* ---- host side --------------------------------------------------------- */

typedef void (*p9_kernel_fn)(const struct pf_params);

template <int D, int N> static p9_kernel_fn p9_pick(bool bf, bool io16)
{
    if (bf)
        return io16 ? attn_prefill_sm90_kernel<D, N, true, true>
                    : attn_prefill_sm90_kernel<D, N, true, false>;
    return io16 ? attn_prefill_sm90_kernel<D, N, false, true>
                : attn_prefill_sm90_kernel<D, N, false, false>;
}

int pd_attn_prefill_sm90(const struct pf_params &p, uint32_t head_dim, uint32_t keys, bool bf,
                         bool io16, uint32_t max_run, size_t optin, cudaStream_t stream)
{
    if (keys != 64 && keys != 128)
        return -EINVAL;
    const bool d64 = head_dim == 64, k64 = keys == 64;
    const size_t smem = d64 ? (k64 ? p9_smem_bytes<64, 64>() : p9_smem_bytes<64, 128>())
                            : (k64 ? p9_smem_bytes<128, 64>() : p9_smem_bytes<128, 128>());
    if (smem + (k64 ? p9_static_smem<64>() : p9_static_smem<128>()) > optin)
        return -ENOTSUP;
    const p9_kernel_fn fn = d64 ? (k64 ? p9_pick<64, 64>(bf, io16) : p9_pick<64, 128>(bf, io16))
                                : (k64 ? p9_pick<128, 64>(bf, io16) : p9_pick<128, 128>(bf, io16));
    int rc = pd_cuda_allow_smem((const void *)fn, smem);
    if (rc < 0)
        return rc;
    dim3 grid((max_run + P9_M - 1) / P9_M, p.n_runs, p.n_head);
    fn<<<grid, P9_THREADS, smem, stream>>>(p);
    return pd_cuda_launched("attn_prefill_sm90_kernel");
}
