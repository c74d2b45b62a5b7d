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
    float *out; /* (n_tokens, n_head, head_dim) */
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
    uint32_t n_splits, chunk;
    uint32_t max_ctx; /* positions beyond are refused (NaN rows) */
    uint32_t bs_shift; /* log2(block_size) when bs_pow2 */
    uint32_t bs_pow2;
    float qscale; /* scale * log2(e) */
};

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
                    p.out[((uint64_t)t * p.n_head + kvh * p.group + hq) * D + i % D] = __int_as_float(0x7fc00000);
            }
        return;
    }
    const uint32_t n_ctx = (uint32_t)pos + 1, n_pieces = pd_attn_n_pieces(n_ctx, p.chunk);
    if (split >= n_pieces)
        return;
    const uint32_t begin = split * p.chunk;
    const uint32_t end = n_ctx - begin < p.chunk ? n_ctx : begin + p.chunk;

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

    for (uint32_t i = threadIdx.x; i < HPC * D; i += ATT_THREADS) {
        const uint32_t j = i / D, d = i % D, hq = hc * HPC + j;
        if (hq >= p.group)
            continue;
        float mx = -INFINITY, sum = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++)
            mx = fmaxf(mx, s_m[w * HPC + j]);
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) {
            const float f = exp2f(s_m[w * HPC + j] - mx); /* 0 for a warp with no positions */
            sum += s_l[w * HPC + j] * f;
            o += s_acc[(w * HPC + j) * D + d] * f;
        }
        const uint32_t h = kvh * p.group + hq;
        if (n_pieces == 1) {
            p.out[((uint64_t)t * p.n_head + h) * D + d] = o / sum;
        } else {
            p.ws[pd_attn_part_offset(t, h, split, p.n_head, p.n_splits, D) + d] = o / sum;
            if (d == 0)
                p.ws[pd_attn_lse_offset(p.n_tokens, t, h, split, p.n_head, p.n_splits, D)] =
                    mx + log2f(sum);
        }
    }
}

/* One block per (token, head): the token's pieces weighted by 2^(lse - max). */
__global__ void __launch_bounds__(MERGE_THREADS) attn_merge_kernel(const struct attn_params p)
{
    const uint32_t t = blockIdx.x, h = blockIdx.y, D = p.kv.head_dim;
    const int32_t pos = p.tok_pos[t];

    if (pos < 0 || (uint32_t)pos >= p.max_ctx)
        return; /* the decode kernel wrote NaN */
    const uint32_t n = pd_attn_n_pieces((uint32_t)pos + 1, p.chunk);
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
        p.out[((uint64_t)t * p.n_head + h) * D + d] = o / sum;
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
    if (a->n_tokens > INT32_MAX || (a->q_ld && a->q_ld < (uint64_t)a->n_head * kv->head_dim))
        return -EINVAL;

    const uint32_t group = a->n_head / kv->n_head_kv;
    const int aligned = ((uintptr_t)a->pool % 16) == 0;
    L->fn = a->pool_type == PD_DT_BF16  ? pick_kernel<uint16_t>(kv->head_dim, aligned, group, &L->hpc)
            : a->pool_type == PD_DT_F16 ? pick_kernel<f16_elem>(kv->head_dim, aligned, group, &L->hpc)
                                        : pick_kernel<float>(kv->head_dim, aligned, group, &L->hpc);
    const uint32_t n_hchunks = (group + L->hpc - 1) / L->hpc;
    if ((uint64_t)kv->n_head_kv * n_hchunks > 65535)
        return -EINVAL;

    const uint64_t table_ctx = (uint64_t)a->max_blocks * kv->block_size;
    uint32_t max_ctx = table_ctx > UINT32_MAX ? UINT32_MAX : (uint32_t)table_ctx;
    if (a->max_ctx && a->max_ctx < max_ctx)
        max_ctx = a->max_ctx;
    /* the blocks the GPU runs at once, for the split plan's wave count */
    uint32_t per_sm = 0;
    L->smem = (size_t)ATT_WARPS * L->hpc * (kv->head_dim + 2) * sizeof(float);
    if ((rc = pd_cuda_sm_count(&n_sm)) < 0 || (rc = blocks_per_sm(L->fn, L->smem, &per_sm)) < 0)
        return rc;
    const uint64_t n_items = (uint64_t)a->n_tokens * kv->n_head_kv * n_hchunks;
    L->plan = pd_attn_plan_splits(n_items > UINT32_MAX ? UINT32_MAX : (uint32_t)n_items, max_ctx,
                                  n_sm * per_sm, a->split_tokens, ws_bytes, a->n_tokens, a->n_head,
                                  kv->head_dim);

    struct attn_params *p = &L->p;
    memset(p, 0, sizeof *p);
    p->out = a->out;
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
