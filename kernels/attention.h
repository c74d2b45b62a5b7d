/* kernels/attention: causal attention of query tokens over their sequences'
 * paged KV (prefill chunks and decode steps alike).
 *
 * Token t belongs to sequence tok_seq[t] at position tok_pos[t] and attends to
 * positions [0, tok_pos[t]] of that sequence, whose K/V (already written, the
 * token's own included) live in the blocks block_tables[seq][pos / block_size].
 * GQA: query head h reads KV head h / (n_head / n_head_kv).
 *
 * CPU path: a run of consecutive tokens of one sequence (a prefill chunk)
 * gathers each KV head's tiles once and does Q K^T and P V as GEMMs (the
 * block layout makes a head's tile one memcpy); a lone token (a decode step)
 * is a direct loop. `scratch` bounds the memory a call may use.
 *
 * CUDA, decode (attention.cu, docs/internals/kernels.md): every token is
 * treated as a decode step over its own context (prefill runs are correct,
 * not fast: use the prefill kernel for them). One thread block per (token, KV head, group chunk, context split);
 * the GQA group's query heads share each K/V load (on a 16-bit pool at
 * head_dim 64 or 128 with GQA, sm_80 on: as the rows of a tensor-core tile,
 * unless decode_simt); long contexts are split
 * and merged by a second kernel when `workspace` has room
 * (pd_attention_cuda_workspace). The launcher cannot read tok_pos (device
 * memory): max_ctx must bound every tok_pos + 1 (the engine knows it); a
 * token beyond it, or outside the block table, gets NaN rows rather than a
 * read out of bounds.
 *
 * CUDA, prefill (attn_prefill.cu): tensor cores, for 16-bit pools (BF16,
 * F16) at head_dim 64 and 128 on sm_80 and later. The tokens form n_runs
 * runs (run_start, in device memory, like FlashAttention's cu_seqlens): run r
 * is tokens [run_start[r], run_start[r + 1]) of one sequence at consecutive
 * positions, the caller's promise. Each run attends causally over its
 * sequence's pool, earlier chunks included, with an online softmax (no score
 * matrix in memory). q and out are float (io_type F32) or the pool's 16-bit
 * type. A run past max_ctx, or at a negative position, gets NaN rows. */
#ifndef PD_ATTENTION_H
#define PD_ATTENTION_H

#include "kv_layout.h"

struct pd_pool;

struct pd_attn_args {
    float *out; /* (n_tokens, n_head, head_dim); uint16_t elements when 16-bit (out_type) */
    const float *q; /* (n_tokens, n_head, head_dim), RoPE applied; token t's at q + t * q_ld */
    const float *pool; /* kv_layout.h; uint16_t elements when pool_type is BF16 or F16 */
    struct pd_kv_geom kv;
    uint32_t layer;
    uint32_t n_tokens, n_head;
    const int32_t *tok_seq; /* (n_tokens) index into block_tables */
    const int32_t *tok_pos; /* (n_tokens) */
    const uint32_t *block_tables; /* (n_seqs, max_blocks) block ids */
    uint32_t max_blocks;
    float scale; /* 1 / sqrt(head_dim) */
    /* elements from one token's q to the next (>= n_head * head_dim; a
     * multiple of 8 for the CUDA prefill kernel); 0: packed. q in rows of q,
     * k and v (one GEMM's product) is read where it is */
    uint32_t q_ld;
    /* Zero = the CPU engine's behaviour. */
    uint32_t pool_type; /* PD_DT_F32 (0), PD_DT_BF16 or PD_DT_F16 (kernels/quant.h) */
    /* CPU only: threads for the decode tokens' (token, head) pairs
     * (common/base/parallel; NULL: the caller's) */
    struct pd_pool *threads;
    /* CUDA only (the CPU reference ignores them): */
    uint32_t max_ctx; /* >= every tok_pos + 1; 0 = max_blocks * block_size */
    uint32_t split_tokens; /* context positions per split; 0 = the launcher's choice */
    void *workspace; /* device scratch for split partials; NULL = no split */
    uint64_t workspace_bytes;
    /* 1: the CUDA-core decode kernel even where the tensor-core one serves
     * (a 16-bit pool, head_dim 64 or 128, GQA, sm_80 on): for comparing
     * the two (benchmarks, tests; the engine's PDSERVE_DECODE_ATTENTION=simt) */
    uint32_t decode_simt;
    /* elements of out: PD_DT_F32 (0), or PD_DT_BF16 / PD_DT_F16, each row
     * rounded as it is written (kernels/bf16.h): the o projection's GEMM
     * input without a rounding pass. The prefill kernel with a 16-bit
     * io_type writes io_type (out_type 0 or the same). The CPU reference
     * refuses anything but F32 */
    uint32_t out_type;
    /* CUDA prefill kernel only (pd_attention_prefill_cuda): */
    uint32_t io_type; /* elements of q and out: PD_DT_F32 (0), or the pool's 16-bit type */
    const int32_t *run_start; /* (n_runs + 1): first token of each run, then n_tokens */
    uint32_t n_runs;
    uint32_t max_run; /* >= every run's length (a longer run gets NaN rows); 0 = n_tokens */
    /* Hopper's wgmma kernel (attn_prefill_sm90.cu) in place of the mma.sync
     * one: 1 with its own key tile (PD_ATTN_WGMMA_KEYS), 64 or 128 with that
     * many keys a tile (benchmarks, tests); 0: the mma.sync kernel. A 9.0
     * device and a build for sm_90 only: -ENOTSUP elsewhere (nothing
     * written; the engine's PDSERVE_PREFILL_ATTENTION=wgmma then takes the
     * mma.sync kernel). Any other value: -EINVAL. */
    uint32_t prefill_wgmma;
    /* The engine's launcher (engine_cuda.c): tokens [0, run_tokens) are the
     * runs', for the prefill kernel; those after them single decode tokens,
     * for the decode kernel (0 = all n_tokens are the runs'). The kernels
     * themselves read n_tokens. */
    uint32_t run_tokens;
};

#define PD_ATTN_WGMMA_KEYS 128u /* the wgmma prefill kernel's key tile (prefill_wgmma 1) */

/* Context splits. Positions [0, n_ctx) of a token are cut into pieces of
 * `chunk` positions (pd_attn_token_chunk: the token's own share of the
 * plan's splits): split s covers [s * chunk, min((s + 1) * chunk, n_ctx)).
 * A token with one piece is written straight to `out`; with more, each piece
 * leaves a partial (normalised output, log2-sum-exp) in the workspace and a
 * second kernel merges them. */
#define PD_ATTN_MAX_SPLITS 64u
#define PD_ATTN_CHUNK_ALIGN 64u /* chunk is a multiple of this */
#define PD_ATTN_MIN_CHUNK 128u /* a split reads at least this many positions */

struct pd_attn_plan {
    uint32_t n_splits; /* 1 = no workspace used */
    uint32_t chunk; /* positions per split */
};

PD_HD uint32_t pd_attn_n_pieces(uint32_t n_ctx, uint32_t chunk)
{
    return (n_ctx + chunk - 1) / chunk;
}

/* Workspace layout, offsets in floats from its start: partial outputs
 * [n_tokens][n_head][n_splits][head_dim], then log2-sum-exp
 * [n_tokens][n_head][n_splits]. */
PD_HD uint64_t pd_attn_workspace_bytes(uint32_t n_tokens, uint32_t n_head, uint32_t head_dim,
                                       uint32_t n_splits)
{
    return (uint64_t)n_tokens * n_head * n_splits * (head_dim + 1) * sizeof(float);
}

PD_HD uint64_t pd_attn_part_offset(uint32_t t, uint32_t h, uint32_t s, uint32_t n_head,
                                   uint32_t n_splits, uint32_t head_dim)
{
    return (((uint64_t)t * n_head + h) * n_splits + s) * head_dim;
}

PD_HD uint64_t pd_attn_lse_offset(uint32_t n_tokens, uint32_t t, uint32_t h, uint32_t s,
                                  uint32_t n_head, uint32_t n_splits, uint32_t head_dim)
{
    return (uint64_t)n_tokens * n_head * n_splits * head_dim +
           ((uint64_t)t * n_head + h) * n_splits + s;
}

/* Piece size for s pieces of max_ctx, aligned. */
PD_HD uint32_t pd_attn_chunk_for(uint32_t max_ctx, uint32_t s)
{
    return pd_attn_n_pieces(pd_attn_n_pieces(max_ctx, s), PD_ATTN_CHUNK_ALIGN) * PD_ATTN_CHUNK_ALIGN;
}

/* A token's piece size when the plan cut max_ctx into n_splits pieces of
 * plan_chunk: its own n_ctx positions cut as evenly into n_splits (a
 * multiple of PD_ATTN_CHUNK_ALIGN, at least PD_ATTN_MIN_CHUNK, at most
 * plan_chunk), so that a step whose contexts are shorter than max_ctx
 * still spreads over every split's thread blocks (the grid is the plan's:
 * fixed, for CUDA graphs); a piece size forced by split_tokens (fixed)
 * stays as it is. Never more than n_splits pieces. */
PD_HD uint32_t pd_attn_token_chunk(uint32_t n_ctx, uint32_t n_splits, uint32_t plan_chunk,
                                   uint32_t fixed)
{
    if (fixed || n_splits <= 1)
        return plan_chunk;
    uint32_t c = pd_attn_n_pieces(pd_attn_n_pieces(n_ctx, n_splits), PD_ATTN_CHUNK_ALIGN) *
        PD_ATTN_CHUNK_ALIGN;
    c = c < PD_ATTN_MIN_CHUNK ? PD_ATTN_MIN_CHUNK : c;
    return c < plan_chunk ? c : plan_chunk;
}

/* Share of `slots` (thread blocks the GPU runs at once) kept busy over the
 * waves of a grid of n_items x (pieces of max_ctx cut s ways) blocks, in
 * 1/1000: the last wave of a grid runs part empty. */
PD_HD uint32_t pd_attn_wave_fill(uint32_t n_items, uint32_t max_ctx, uint32_t s, uint32_t slots)
{
    uint64_t blocks = (uint64_t)n_items * pd_attn_n_pieces(max_ctx, pd_attn_chunk_for(max_ctx, s));
    uint64_t waves = (blocks + slots - 1) / slots;
    return waves ? (uint32_t)(blocks * 1000 / (waves * slots)) : 0;
}

/* How to split. n_items thread blocks exist without splitting (tokens x KV
 * heads x group chunks) and the GPU runs `slots` at once (SMs x resident
 * blocks per SM). Of the piece counts that keep pieces at least
 * PD_ATTN_MIN_CHUNK long (at most PD_ATTN_MAX_SPLITS), take the smallest
 * whose waves are 90% full, or within 5% of the best there is: a grid of 1.4
 * waves leaves the GPU 30% idle, and more pieces than needed only add
 * partials to merge.
 * split_tokens forces the piece size (tests, tuning). One piece when ws_bytes
 * cannot hold the partials. */
PD_HD struct pd_attn_plan pd_attn_plan_splits(uint32_t n_items, uint32_t max_ctx, uint32_t slots,
                                              uint32_t split_tokens, uint64_t ws_bytes,
                                              uint32_t n_tokens, uint32_t n_head,
                                              uint32_t head_dim)
{
    const uint32_t al = PD_ATTN_CHUNK_ALIGN;
    struct pd_attn_plan p;
    uint32_t chunk;

    if (max_ctx == 0)
        max_ctx = 1;
    if (split_tokens) {
        chunk = split_tokens;
    } else {
        uint32_t cap = max_ctx / PD_ATTN_MIN_CHUNK, best = 0, s;
        cap = cap < 1 ? 1 : cap > PD_ATTN_MAX_SPLITS ? PD_ATTN_MAX_SPLITS : cap;
        slots = slots ? slots : 1;
        for (s = 1; s <= cap; s++) {
            uint32_t f = pd_attn_wave_fill(n_items, max_ctx, s, slots);
            best = f > best ? f : best;
        }
        for (s = 1; s < cap; s++) {
            uint32_t f = pd_attn_wave_fill(n_items, max_ctx, s, slots);
            if (f >= 900 || f * 100 >= best * 95)
                break;
        }
        chunk = pd_attn_chunk_for(max_ctx, s);
    }
    chunk = pd_attn_n_pieces(chunk, al) * al;
    if (pd_attn_n_pieces(max_ctx, chunk) > PD_ATTN_MAX_SPLITS)
        chunk = pd_attn_chunk_for(max_ctx, PD_ATTN_MAX_SPLITS);
    p.chunk = chunk;
    p.n_splits = pd_attn_n_pieces(max_ctx, chunk);
    if (p.n_splits > 1 &&
        ws_bytes < pd_attn_workspace_bytes(n_tokens, n_head, head_dim, p.n_splits)) {
        p.n_splits = 1;
        p.chunk = pd_attn_n_pieces(max_ctx, al) * al;
    }
    return p;
}

/* Bytes of one element of out. */
PD_HD uint32_t pd_attn_out_esize(const struct pd_attn_args *a)
{
    return a->io_type || a->out_type ? 2 : 4; /* PD_DT_F32 is 0 */
}

/* Elements from token t's q to token t + 1's. */
PD_HD uint64_t pd_attn_q_ld(const struct pd_attn_args *a)
{
    return a->q_ld ? a->q_ld : (uint64_t)a->n_head * a->kv.head_dim;
}

PD_BEGIN_DECLS

int pd_attention_cpu(const struct pd_attn_args *a);

/* CUDA builds only (PD_HAVE_CUDA). Bytes of workspace that let the launcher
 * split as it likes for these args (0 when it would not split); asks the
 * device (SMs, resident blocks). */
int pd_attention_cuda_workspace(const struct pd_attn_args *a, uint64_t *bytes);
int pd_attention_cuda(const struct pd_attn_args *a, pd_stream_t stream);
/* -ENOTSUP for an F32 pool, another head_dim or a device below sm_80 (the
 * caller takes pd_attention_cuda); -EINVAL for bad arguments. Asks each
 * device for its compute capability and shared-memory limit once, and sets
 * each kernel's shared-memory allowance once per size (not per launch). */
int pd_attention_prefill_cuda(const struct pd_attn_args *a, pd_stream_t stream);
/* Forgets those answers: for tests whose emulated device changes its limits
 * (a real device's never change). */
void pd_attention_prefill_cuda_forget(void);
/* 1 when prefill_wgmma can be served here (a build for sm_90, a 9.0
 * device), 0 when not, a negative errno when the device cannot be asked. */
int pd_attention_prefill_wgmma_ready(void);

PD_END_DECLS

#endif
