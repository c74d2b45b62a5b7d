/* common/engine internals, not for use outside engine*.c: the engine's body
 * and the backend table. Calls go down only:
 *
 *   engine.c (the device-neutral core: parameters, scratch, the KV pool,
 *             a step's bookkeeping, staging)
 *     -> engine_cpu.c | engine_cuda.c (the backends: struct pd_backend)
 *       -> engine_forward.c (the forward pass and its logits head,
 *                            device-neutral: kernels through the table)
 *       -> engine_mem.c (memory the engine owns on the host)
 *
 * as ggml-backend does: a backend is a table of functions chosen once, at
 * pd_engine_new, and the core never asks which device it is on. What a new
 * device, a new weight storage or a fused step adds is a table entry.
 */
#ifndef PD_ENGINE_INTERNAL_H
#define PD_ENGINE_INTERNAL_H

#include "engine.h"
#include "pd_config.h"

#include "attention.h"
#include "bias.h"
#include "embed.h"
#include "kv_write.h"
#include "matmul.h"
#include "rmsnorm.h"
#include "rope.h"
#include "swiglu.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Rows of logits computed per GEMM: bounds the scratch at LOGIT_ROWS x vocab. */
#define LOGIT_ROWS 64

/* A weight matrix as a backend placed it: where it is (host or device) and
 * its element type there (each matrix its own: on the CPU as the model
 * stores it, or F32; BF16 or F32 on a GPU). */
struct pd_mat {
    const void *data; /* (rows, cols) row-major in `type` */
    uint32_t type;
};

struct layer_w {
    const float *attn_norm; /* (n_embd) */
    struct pd_mat wq; /* (n_head * head_dim, n_embd) */
    struct pd_mat wk, wv; /* (n_head_kv * head_dim, n_embd) */
    const float *bq; /* (n_head * head_dim) or NULL: qkv_bias */
    const float *bk, *bv; /* (n_head_kv * head_dim) or NULL */
    const float *q_norm, *k_norm; /* (head_dim) or NULL: qk_norm */
    struct pd_mat wo; /* (n_embd, n_head * head_dim) */
    const float *ffn_norm; /* (n_embd) */
    struct pd_mat w_gate, w_up; /* (n_ff, n_embd) */
    struct pd_mat w_down; /* (n_embd, n_ff) */
    /* a backend that placed wk's rows right after wq's and wv's after wk's
     * (one type) says so: q, k and v are then one GEMM, wq read as the
     * (qd + 2 kvd, n_embd) whole; gu_one alike for w_up after w_gate */
    bool qkv_one, gu_one;
};

/* A step's index arrays: where the kernels read them (struct pd_engine's ix)
 * and as the step builds them on the host (h_ix: ix itself on the CPU, its
 * page-locked staging on a GPU). */
struct pd_step_index {
    int32_t *tok, *pos, *tok_seq; /* (T) */
    int64_t *slot; /* (T) */
    uint32_t *tables; /* (max_items, max_blocks) */
    int32_t *runs; /* (max_items + 1) where each prompt chunk's tokens start (the prefill
                    * kernel's runs), then where the single tokens start */
};

struct pd_backend {
    const char *name;
    /* ---- the kernels, enqueued on the engine's stream (NULL on the CPU);
     * copies are asynchronous on a GPU: `sync` waits for everything issued */
    int (*embed)(const struct pd_embed_args *, void *stream);
    int (*rmsnorm)(const struct pd_rmsnorm_args *, void *stream);
    int (*matmul)(const struct pd_matmul_args *, void *stream);
    int (*rope)(const struct pd_rope_args *, void *stream);
    int (*bias)(const struct pd_bias_args *, void *stream);
    int (*kv_write)(const struct pd_kv_write_args *, void *stream);
    /* NULL, or rope then kv_write in one launch (kernels/rope.h) */
    int (*rope_kv_write)(const struct pd_rope_args *, const struct pd_kv_write_args *,
                         void *stream);
    int (*attention)(const struct pd_attn_args *, void *stream);
    int (*swiglu)(const struct pd_swiglu_args *, void *stream);
    int (*copy)(void *dst, const void *src, size_t bytes, void *stream); /* either side */
    int (*sync)(void *stream);
    /* ---- construction, in this order (pd_engine_new); `done` undoes all
     * of it, whatever part ran */
    /* the device's own state and the weights placed for it (e->layers,
     * out_norm, w_out, embd_table, rope_factors) */
    int (*init)(struct pd_engine *e, const struct pd_engine_params *p, char *err, size_t errlen);
    /* memory freed with the engine: where the kernels run, or host memory
     * when `host` (page-locked where the device copies from it); NULL when
     * there is none left */
    void *(*alloc)(struct pd_engine *e, size_t bytes, bool host);
    /* after the core's scratch: the host side of the index arrays and of the
     * logits (h_*), and what sampling needs. -ENOMEM */
    int (*scratch)(struct pd_engine *e, const struct pd_engine_params *p);
    /* NULL, or: the KV pool's memory in kp (a device pool) */
    int (*kv_pool)(struct pd_engine *e, const struct pd_engine_params *p,
                   struct pd_kvcache_params *kp, char *err, size_t errlen);
    /* NULL, or: the last of construction, after the pool (staging, a wait) */
    int (*ready)(struct pd_engine *e, const struct pd_engine_params *p, char *err, size_t errlen);
    void (*done)(struct pd_engine *e);
    /* ---- a step whose index arrays are built on the host (h_*): run it,
     * wait, hand its rows out (pd_engine_fwd_hand_out) */
    int (*step)(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                uint32_t T);
    /* NULL (the CPU's sampler, in hand_out), or sampling where the logits
     * are: the rows' parameters in (sample_in), rows [r0, r0 + m) of the
     * logits scratch sampled (sample_rows), the results out (sample_out) */
    int (*sample_in)(struct pd_engine *e, uint32_t n_rows);
    int (*sample_rows)(struct pd_engine *e, uint32_t r0, uint32_t m);
    int (*sample_out)(struct pd_engine *e, uint32_t n_rows);
    /* the kernel timer's marks (engine.h): n of them, one recorded where the
     * stream has got to, the milliseconds between two once the step waited */
    void *(*marks_new)(uint32_t n);
    void (*marks_free)(void *m);
    int (*mark)(void *m, uint32_t i, void *stream);
    int (*marks_span)(void *m, uint32_t i, uint32_t j, double *ms);
    /* NULL, or: the device's own words for this thread's last failure ("" none),
     * and forgetting them (at the start of a step) */
    const char *(*last_error)(void);
    void (*forget_error)(void);
};

/* The kernel timer: a step's marks (the first its start), each one's kind,
 * and the sums. */
struct pd_ktimer {
    void *marks; /* the backend's */
    uint32_t cap, n;
    uint8_t *kind; /* (cap): the kernel that ended at each mark */
    double ms[PD_K_KINDS];
    uint32_t steps;
};
/* engine_forward.c: a mark where kernel k ended, when the timer is on and
 * rc (the kernel's launch) is not an error; returns rc or the mark's error */
int pd_engine_fwd_mark(struct pd_engine *e, enum pd_kernel_kind k, void *stream, int rc);

extern const struct pd_backend pd_backend_cpu;
#if PD_HAVE_CUDA
extern const struct pd_backend pd_backend_cuda;
/* engine_cuda.c: 0, or -ENODEV with why (no driver, no device) */
int pd_backend_cuda_probe(char *why, size_t n);
#endif

struct pd_engine {
    const struct pd_model *model;
    struct pd_hparams hp;
    const struct pd_backend *b;
    enum pd_device device;
    struct layer_w *layers; /* [n_layer] */
    const struct pd_tensor *tok_embd; /* gathered in its stored type */
    const void *embd_table; /* its rows: the mapping, or the device's copy */
    const float *out_norm; /* (n_embd) */
    struct pd_mat w_out; /* (n_vocab, n_embd) */
    const float *rope_factors; /* (rope_dim / 2) or NULL */
    /* GPU: the angles' {cos, sin} for positions [0, max_model_len)
     * (pd_rope_table); with it, RoPE and the KV write are one launch
     * (PDSERVE_FUSED_ROPE=0: no table, two) */
    const float *rope_table;
    float rope_scale;
    void **owned; /* dequantized weights (float) this engine allocated (CPU: f32 mode) */
    size_t n_owned;
    void **dev; /* device memory this engine allocated */
    size_t n_dev;
    void **host; /* host scratch this engine allocated */
    size_t n_host;

    struct pd_kvcache *kc;
    struct pd_kvcache *stage; /* GPU: the KV channel's pinned host blocks, or NULL */
    bool kv_direct; /* GPU: the KV channel takes the device pool (no stage) */
    bool stage_pinned;
    void *stream; /* GPU: every kernel and copy of a step, in order; NULL on the CPU */
    void **pinned; /* GPU: page-locked host scratch (index arrays, logits) */
    size_t n_pinned;
    uint32_t logit_cap; /* rows h_logits holds: a whole decode step's on a GPU */
    bool graphs; /* GPU: decode steps replay CUDA graphs */
    /* (2 (max_items + 1)): by batch size, for steps handing out logits (even
     * index) or sampling (odd), captured on first use */
    struct pd_cuda_graph **graph;
    uint8_t *graph_seen; /* (as graph) ran once as plain launches: the next is captured */
    /* a decode step replays the graph of its size's bucket (1, 2, 4, then
     * multiples of 8), padded (pad_items: the step's items, then padding);
     * PDSERVE_CUDA_GRAPH_BUCKETS=0: a graph per exact size */
    bool graph_buckets;
    struct pd_batch_item *pad_items; /* (max_items) */

    /* sampling in the step (pd_batch_item.sampling): the CPU's sampler, or
     * on a GPU each row's parameters, history offsets and prompt lengths
     * (page-locked h_, device d_; max(logit_cap, max_tokens) rows), the
     * results coming back
     * and kernels/sample.cu's workspace for a GEMM's rows. Histories go up
     * only for steps with penalties (the kernel reads them for nothing else),
     * into d_hist of hist_cap tokens, grown as needed. */
    struct pd_sampler *sampler;
    struct pd_sampling *h_sp, *d_sp;
    uint32_t *h_hs, *d_hs, *h_np, *d_np, *h_ntop, *d_ntop;
    int32_t *h_stok, *d_stok;
    float *h_slp, *d_slp;
    struct pd_token_logprob *h_top, *d_top;
    void *d_sws;
    uint64_t sws_bytes;
    int32_t *h_hist, *d_hist;
    uint64_t hist_cap;
    /* the step's logit biases (when any row has one: step_bias), every
     * row's entries concatenated in d_bias of bias_cap entries (grown as
     * needed), row r's from d_bs[r] to d_bs[r + 1] */
    struct pd_logit_bias *h_bias, *d_bias;
    uint64_t bias_cap;
    uint32_t *h_bs, *d_bs;
    bool step_bias;
    /* the step's token masks (constrained decoding; step_mask when any row
     * has one): the masked rows' masks in d_mask (mask_cap words, grown as
     * needed), row r's at d_mask + d_mrow[r] * words (UINT32_MAX: none) */
    uint32_t *h_mask, *d_mask;
    uint64_t mask_cap;
    uint32_t *h_mrow, *d_mrow;
    bool step_mask;
    /* scoring rows (pd_batch_item.forced): each row's token, -1 for a draw;
     * step_forced when the step has any */
    int32_t *h_force, *d_force;
    bool step_forced;
    uint32_t max_tokens, max_model_len, max_items, max_blocks;

    /* scratch for max_tokens tokens */
    float *x; /* (T, n_embd) residual stream */
    float *h; /* (T, n_embd): the rows the logits head gathers from x */
    /* The GEMMs' inputs that the norms and SwiGLU write (hn: normed x; ff)
     * are act_type: F32 (hn is h), or BF16 on a GPU with bf16 matrices (hn
     * its own (T, n_embd) buffer): what cuBLAS takes beside bf16 matrices,
     * with no rounding kernel before each GEMM. */
    void *hn;
    uint32_t act_type;
    /* (T, qkv_ld): each token's q, k and v side by side, as one GEMM (or
     * three into the one row) leaves them; q, kk, vv point at the first
     * token's, rows qkv_ld apart: the kernels after the GEMM read them in
     * place (rope, kv_write and attention take row strides) */
    float *qkv;
    float *q; /* (T, n_head * head_dim) */
    float *kk, *vv; /* (T, n_head_kv * head_dim) */
    uint32_t qkv_ld; /* (n_head + 2 n_head_kv) head_dim */
    float *att; /* (T, n_head * head_dim) of act_type: the o projection's input */
    float *gu; /* (T, 2 n_ff): gate then up, side by side; gate, up into it, rows 2 n_ff apart */
    float *gate, *up;
    float *ff; /* (T, n_ff) of act_type: silu(gate) * up, the down projection's input */
    struct pd_step_index ix, h_ix;
    float *h_logits; /* (logit_cap, n_vocab) */
    uint32_t w_type; /* the GPU's matrices' elements: F32 or BF16 */
    void *xs; /* (T, widest GEMM input) bf16: float GEMM inputs rounded for bf16
               * matrices (GPU, PDSERVE_BF16_ACTIVATIONS=0 only) */
    void *attn_ws; /* decode attention's split partials (GPU) */
    struct pd_pool *pool; /* CPU: the kernels' threads (common/base/parallel) */
    void *mm_ws; /* CPU: the matmul's workspace (pd_matmul_cpu_ws_bytes) */
    void *blas_ws; /* GPU: cuBLAS's workspace (PD_MATMUL_CUBLAS_WS bytes) */
    int isa; /* CPU: the dots' enum pd_isa (kernels/qdot) */
    bool act_q8; /* CPU: 8-bit activations in the dots (PD_CPU_W_STORED_Q8) */
    uint64_t attn_ws_bytes;
    uint32_t *out_item, *out_row; /* (T): which item / logits row each output row is */
    /* The step's layout (pd_engine_step): the items with more than one token
     * (prompt chunks) first, in item order, as the prefill kernel's n_runs
     * runs over tokens [0, run_tokens); then the single-token items (decode
     * tokens), which the decode kernel takes. item_t0 (max_items): each
     * item's first token. */
    uint32_t *item_t0;
    uint32_t n_runs, run_tokens;
    bool decode_simt; /* GPU: PDSERVE_DECODE_ATTENTION=simt, the CUDA-core decode kernel */
    bool prefill_wgmma; /* GPU: PDSERVE_PREFILL_ATTENTION=wgmma where it can run (sm_90) */
    struct pd_ktimer *kt; /* the kernel timer (engine.h); NULL: off */
    char note[320]; /* a line for the caller's log (pd_engine_take_note), "" when none */
    char desc[256]; /* what the backend made of the weights and threads (pd_engine_describe) */
    float *logits; /* (LOGIT_ROWS, n_vocab) */
};

/* engine_mem.c: host memory freed with the engine (the CPU backend's alloc) */
void *pd_engine_host_alloc(struct pd_engine *e, size_t bytes);
/* engine_mem.c: a weight as float32, in place when stored so (and aligned), else
 * dequantized into memory the engine owns; NULL out of memory */
const float *pd_engine_weight_f32(struct pd_engine *e, const struct pd_tensor *t);
/* engine_mem.c: layer l's vectors beside the matrices that the architecture
 * has (biases, q/k norms) into w, each from get (fp32 where the kernels read
 * it); 0, or -ENOMEM */
int pd_engine_layer_vectors(struct pd_engine *e, uint32_t l, struct layer_w *w,
                            const float *(*get)(struct pd_engine *, const struct pd_tensor *));
/* engine_mem.c: frees what the two above allocated */
void pd_engine_mem_free(struct pd_engine *e);

/* engine_forward.c: the step's work, issued on the engine's stream. The
 * logits rows asked for end in the items, or, on a GPU when they fit
 * h_logits (every decode step), on their way to h_logits with *pending rows
 * to hand out after the caller waits: the work then holds no wait, so that
 * it can be captured as a CUDA graph. */
int pd_engine_fwd(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                  uint32_t T, uint32_t *pending);
/* index arrays for max_tokens tokens (e->ix, or e->h_ix when host) from
 * e->b->alloc; -ENOMEM */
int pd_engine_index_alloc(struct pd_engine *e, struct pd_step_index *ix, bool host);
/* the step's index arrays to where the kernels read them (nothing to do
 * when they are built in place) */
int pd_engine_fwd_upload(struct pd_engine *e, uint32_t n_items, uint32_t T);
/* rows [r0, r0 + m) to the items that asked for them (logits from src, or a
 * token: the CPU's sampler from src, or the results a device sampled) */
int pd_engine_fwd_hand_out(struct pd_engine *e, const struct pd_batch_item *items, uint32_t r0,
                           uint32_t m, const float *src);

#endif
