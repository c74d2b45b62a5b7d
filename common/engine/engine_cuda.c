/* common/engine/engine_cuda: the CUDA backend (built when PD_HAVE_CUDA).
 * Every buffer in device memory: bf16 (or fp32) weight matrices converted at
 * load, fp32 norm vectors, the embedding rows as stored, the KV pool; all
 * work on the engine's stream. The index arrays go up and the asked-for
 * logits (or sampled tokens) come down through page-locked buffers, one wait
 * per step; a decode step replays the CUDA graph of its batch size. */
#include "engine_internal.h"

#include "errf.h"
#include "log.h" /* pd_now_ns */
#include "parallel.h"
#include "pd_cuda.h"
#include "quant.h"
#include "sample.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- the kernels and copies, in order on the engine's stream ---- */

static int cu_embed(const struct pd_embed_args *a, void *s) { return pd_embed_cuda(a, s); }
static int cu_rmsnorm(const struct pd_rmsnorm_args *a, void *s) { return pd_rmsnorm_cuda(a, s); }
static int cu_matmul(const struct pd_matmul_args *a, void *s) { return pd_matmul_cuda(a, s); }
static int cu_rope(const struct pd_rope_args *a, void *s) { return pd_rope_cuda(a, s); }
static int cu_bias(const struct pd_bias_args *a, void *s) { return pd_bias_cuda(a, s); }
static int cu_kv_write(const struct pd_kv_write_args *a, void *s) { return pd_kv_write_cuda(a, s); }
static int cu_rope_kv_write(const struct pd_rope_args *r, const struct pd_kv_write_args *w, void *s)
{
    return pd_rope_kv_write_cuda(r, w, s);
}
static int cu_swiglu(const struct pd_swiglu_args *a, void *s) { return pd_swiglu_cuda(a, s); }
static int cu_copy(void *dst, const void *src, size_t bytes, void *s)
{
    return pd_cuda_memcpy_async(dst, src, bytes, s);
}
static int cu_sync(void *s) { return pd_cuda_stream_sync(s); }

/* A step's prompt chunks on a 16-bit pool: the tensor-core kernel over their
 * tokens (the runs, laid out first); its single decode tokens, after them,
 * the decode kernel's -- a 128-row tile for one query row was the prefill
 * kernel's cost. Otherwise (or where the prefill kernel declines) the decode
 * kernel takes every token. */
static int cu_attention(const struct pd_attn_args *a, void *s)
{
    if (!a->n_runs)
        return pd_attention_cuda(a, s);
    struct pd_attn_args p = *a;
    if (a->run_tokens && a->run_tokens < a->n_tokens)
        p.n_tokens = a->run_tokens;
    int rc = pd_attention_prefill_cuda(&p, s);
    if (rc == -ENOTSUP && p.prefill_wgmma) { /* the wgmma kernel's limits: the mma.sync one */
        p.prefill_wgmma = 0;
        rc = pd_attention_prefill_cuda(&p, s);
    }
    if (rc == -ENOTSUP)
        return pd_attention_cuda(a, s);
    if (rc < 0 || p.n_tokens == a->n_tokens)
        return rc;
    const size_t row = (size_t)a->n_head * a->kv.head_dim, t0 = p.n_tokens;
    struct pd_attn_args d = *a;
    d.out = (float *)(void *)((char *)a->out + t0 * row * pd_attn_out_esize(a));
    d.q = a->q + t0 * pd_attn_q_ld(a);
    d.tok_seq = a->tok_seq + t0;
    d.tok_pos = a->tok_pos + t0;
    d.n_tokens = a->n_tokens - p.n_tokens;
    d.run_start = NULL, d.n_runs = 0, d.run_tokens = 0;
    return pd_attention_cuda(&d, s);
}

int pd_backend_cuda_probe(char *why, size_t n) { return pd_cuda_probe(why, n); }

static void cu_forget_error(void) { pd_cuda_set_error(""); }

/* ---- memory ---- */

/* bytes of device memory the engine owns (freed with it); NULL when none is left */
static void *dev_alloc(struct pd_engine *e, size_t bytes)
{
    void *p = NULL;
    void **d = realloc(e->dev, (e->n_dev + 1) * sizeof(*d));
    if (!d)
        return NULL;
    e->dev = d;
    if (pd_cuda_malloc(&p, bytes ? bytes : 1) < 0)
        return NULL;
    e->dev[e->n_dev++] = p;
    return p;
}

static void *dev_upload(struct pd_engine *e, const void *host, size_t bytes)
{
    void *p = dev_alloc(e, bytes);
    return p && pd_cuda_memcpy(p, host, bytes) == 0 ? p : NULL;
}

/* page-locked host memory the engine owns: copies to and from it are DMA,
 * asynchronous, and can be captured in a CUDA graph */
static void *host_pinned(struct pd_engine *e, size_t bytes)
{
    const size_t pg = 4096, n = (bytes ? bytes + pg - 1 : pg) / pg * pg;
    void *p = NULL;
    void **l = realloc(e->pinned, (e->n_pinned + 1) * sizeof(*l));
    if (!l)
        return NULL;
    e->pinned = l;
    if (posix_memalign(&p, pg, n))
        return NULL;
    memset(p, 0, n);
    if (pd_cuda_host_register(p, n) < 0) {
        free(p);
        return NULL;
    }
    e->pinned[e->n_pinned++] = p;
    return p;
}

static void *cu_alloc(struct pd_engine *e, size_t bytes, bool host)
{
    return host ? host_pinned(e, bytes) : dev_alloc(e, bytes);
}

/* ---- weights ---- */

static size_t f32_bytes(const struct pd_tensor *t)
{
    return (size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]) * sizeof(float);
}

/* Rows [r0, r1) of a matrix converted to the device's type (dequantized
 * to fp32, then rounded as pd_quant_row rounds): one thread's share. */
struct convert_job {
    const struct pd_tensor *t;
    uint32_t to;
    uint64_t in_row, out_row, r0, r1;
    uint8_t *dst;
    int rc;
};

static void *convert_rows(void *arg)
{
    struct convert_job *j = arg;
    const uint64_t n = j->t->ne[0];
    float *row = malloc(n * sizeof(float));
    j->rc = row ? 0 : -ENOMEM;
    for (uint64_t r = j->r0; r < j->r1 && j->rc == 0; r++)
        if ((j->rc = pd_dequant_row(j->t->type, (const uint8_t *)j->t->data + r * j->in_row, row,
                                    n)) == 0)
            j->rc = pd_quant_row(j->to, row, j->dst + r * j->out_row, n);
    free(row);
    return NULL;
}

/* bytes from host to dst, device memory the engine owns already, or
 * (dst NULL) to a new allocation: where they went, NULL when out of memory */
static void *place(struct pd_engine *e, void *dst, const void *host, size_t bytes)
{
    if (!dst)
        return dev_upload(e, host, bytes);
    return pd_cuda_memcpy(dst, host, bytes) == 0 ? dst : NULL;
}

static size_t mat_esize(const struct pd_engine *e)
{
    return e->w_type == PD_DT_F32 ? sizeof(float) : sizeof(uint16_t);
}

/* A matrix of the model to the device in the engine's matrix type, into
 * dst (device memory of its size; NULL: its own): as stored when that is
 * the type already (bf16 through fp32 back to bf16 is exact), else converted
 * on up to 16 threads into a host copy of the matrix first: no fp32 copy of
 * the whole model on the host. */
static int upload_matrix(struct pd_engine *e, const struct pd_tensor *t, struct pd_mat *out,
                         void *dst)
{
    const uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    const size_t esize = mat_esize(e);
    uint64_t in_row;
    if (pd_dtype_row_size(t->type, t->ne[0], &in_row) < 0)
        return -EINVAL;
    out->type = e->w_type;
    if (t->type == e->w_type)
        return (out->data = place(e, dst, t->data, in_row * rows)) ? 0 : -ENOMEM;

    const uint64_t out_row = t->ne[0] * esize;
    uint8_t *h = malloc(out_row * rows);
    if (!h)
        return -ENOMEM;
    struct convert_job jobs[PD_PARALLEL_MAX];
    unsigned n = pd_parallel_count(PD_PARALLEL_MAX);
    if (rows < 64 * (uint64_t)n)
        n = 1; /* a vector or a small matrix: not worth threads */
    for (unsigned k = 0; k < n; k++)
        jobs[k] = (struct convert_job){.t = t, .to = e->w_type, .in_row = in_row,
                                       .out_row = out_row, .r0 = rows * k / n,
                                       .r1 = rows * (k + 1) / n, .dst = h};
    pd_parallel_run(convert_rows, jobs, sizeof(jobs[0]), n);
    int rc = 0;
    for (unsigned k = 0; k < n && rc == 0; k++)
        rc = jobs[k].rc;
    if (rc == 0 && !(out->data = place(e, dst, h, out_row * rows)))
        rc = -ENOMEM;
    free(h);
    return rc;
}

/* a norm vector to the device in fp32 */
static const float *upload_vector(struct pd_engine *e, const struct pd_tensor *t)
{
    const float *v = pd_engine_weight_f32(e, t);
    return v ? dev_upload(e, v, f32_bytes(t)) : NULL;
}

/* PDSERVE_FUSED_MATRICES=0: q, k, v and gate, up as separate matrices
 * (separate GEMMs), the way before they were placed as one; read at load */
static bool fuse_matrices(void)
{
    const char *v = getenv("PDSERVE_FUSED_MATRICES");
    return !(v && strcmp(v, "0") == 0);
}

/* Where matrix i of upload_layer's list (q k v o gate up down) goes when
 * fusing: q, k, v into one allocation, rows one after another, and gate,
 * up into another (set[0], set[1], made at each set's first matrix), so
 * that each set is one GEMM (layer_w's qkv_one, gu_one); NULL (*dst) for
 * o and down, which stay on their own. -EINVAL for a matrix not of the
 * shape the hyperparameters give (the sets would not line up). */
static int fused_dst(struct pd_engine *e, const struct pd_tensor *t, size_t i, uint8_t **set,
                     void **dst)
{
    const struct pd_hparams *hp = &e->hp;
    const uint64_t qd = (uint64_t)hp->n_head * hp->head_dim;
    const uint64_t kvd = (uint64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff;
    /* each matrix's set, its rows, and the rows before it in the set */
    const int set_of[] = {0, 0, 0, -1, 1, 1, -1};
    const uint64_t rows[] = {qd, kvd, kvd, 0, F, F, 0};
    const uint64_t before[] = {0, qd, qd + kvd, 0, 0, F, 0};
    const uint64_t row_bytes = (uint64_t)hp->n_embd * mat_esize(e);
    *dst = NULL;
    if (set_of[i] < 0)
        return 0;
    if (t->ne[0] != hp->n_embd || t->ne[1] != rows[i] || t->ne[2] * t->ne[3] != 1)
        return -EINVAL;
    const int k = set_of[i];
    if (!set[k] && !(set[k] = dev_alloc(e, (k == 0 ? qd + 2 * kvd : 2 * F) * row_bytes)))
        return -ENOMEM;
    *dst = set[k] + before[i] * row_bytes;
    return 0;
}

static int upload_layer(struct pd_engine *e, uint32_t l, bool fuse, char *err, size_t errlen)
{
    static const enum pd_weight mats[] = {PD_W_ATTN_Q,    PD_W_ATTN_K,   PD_W_ATTN_V,
                                          PD_W_ATTN_OUT,  PD_W_FFN_GATE, PD_W_FFN_UP,
                                          PD_W_FFN_DOWN};
    struct layer_w *w = &e->layers[l];
    struct pd_mat *dst[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
    const struct pd_model *m = e->model;
    if (!(w->attn_norm = upload_vector(e, pd_model_layer_tensor(m, l, PD_W_ATTN_NORM))) ||
        !(w->ffn_norm = upload_vector(e, pd_model_layer_tensor(m, l, PD_W_FFN_NORM))) ||
        pd_engine_layer_vectors(e, l, w, upload_vector) < 0)
        return pd_errf(err, errlen, -ENOMEM, "engine: layer %" PRIu32 " vectors to the device: "
                       "out of memory", l);
    uint8_t *set[2] = {NULL, NULL};
    for (size_t i = 0; i < sizeof(mats) / sizeof(mats[0]); i++) {
        const struct pd_tensor *t = pd_model_layer_tensor(m, l, mats[i]);
        void *to = NULL;
        int rc = fuse ? fused_dst(e, t, i, set, &to) : 0;
        if (rc == 0)
            rc = upload_matrix(e, t, dst[i], to);
        if (rc < 0)
            return pd_errf(err, errlen, rc, "engine: layer %" PRIu32 " weight %s to the device: "
                           "%s", l, t->name, rc == -ENOMEM ? "out of memory" : strerror(-rc));
    }
    w->qkv_one = w->gu_one = fuse;
    return 0;
}

/* RoPE's angles as a table on the device ({cos, sin} of every position the
 * engine serves, as the CPU computes them: kernels/rope.h), RoPE and the KV
 * write then one launch (engine_forward's rope_kv_write); PDSERVE_FUSED_ROPE=0:
 * neither, the angles computed each step (the way before). rf: the host's
 * factors */
static int rope_table(struct pd_engine *e, const float *rf)
{
    const struct pd_hparams *hp = &e->hp;
    const char *v = getenv("PDSERVE_FUSED_ROPE");
    if ((v && strcmp(v, "0") == 0) || hp->rope_dim == 0)
        return 0;
    const struct pd_rope_args a = {.head_dim = hp->head_dim,
                                   .rope_dim = hp->rope_dim,
                                   .freq_base = hp->rope_freq_base,
                                   .freq_scale = e->rope_scale,
                                   .freq_factors = rf};
    const size_t bytes = (size_t)e->max_model_len * hp->rope_dim * sizeof(float);
    float *t = malloc(bytes ? bytes : 1);
    int rc = t ? pd_rope_table(&a, e->max_model_len, t) : -ENOMEM;
    if (rc == 0 && !(e->rope_table = dev_upload(e, t, bytes)))
        rc = -ENOMEM;
    free(t);
    return rc;
}

/* The device's own stream, then every weight to the device: the matrices
 * from the model's tensors (upload_matrix), the norm vectors in fp32, the
 * embedding rows in their stored type; the host's dequantized copies are
 * freed then. */
static int cu_init(struct pd_engine *e, const struct pd_engine_params *p, char *err,
                   size_t errlen)
{
    const struct pd_model *m = e->model;
    uint64_t row_bytes;
    int rc;

    e->w_type = p->gpu_weight_dtype;
    if ((rc = pd_cuda_stream_new((pd_stream_t *)&e->stream)) < 0)
        return pd_errf(err, errlen, rc, "engine: a CUDA stream: %s", strerror(-rc));
    if (!(e->layers = calloc(e->hp.n_layer, sizeof(*e->layers))))
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory");
    const bool fuse = fuse_matrices();
    /* PDSERVE_DECODE_ATTENTION=simt: decode tokens on the CUDA-core kernel
     * where the tensor-core one would serve (kernels/attention.h) */
    const char *da = getenv("PDSERVE_DECODE_ATTENTION");
    e->decode_simt = da && strcmp(da, "simt") == 0;
    /* PDSERVE_PREFILL_ATTENTION=wgmma: prompt chunks on Hopper's wgmma
     * kernel (kernels/attn_prefill_sm90.cu), where there is one; elsewhere
     * the mma.sync kernel, said once in the log */
    const char *pa = getenv("PDSERVE_PREFILL_ATTENTION");
    if (pa && strcmp(pa, "wgmma") == 0) {
        e->prefill_wgmma = pd_attention_prefill_wgmma_ready() == 1;
        if (!e->prefill_wgmma)
            snprintf(e->note, sizeof(e->note),
                     "engine: PDSERVE_PREFILL_ATTENTION=wgmma: no wgmma kernel for this device "
                     "or build (sm_90 only); the mma.sync kernel serves prompts");
    }
    for (uint32_t l = 0; l < e->hp.n_layer; l++)
        if ((rc = upload_layer(e, l, fuse, err, errlen)) < 0)
            return rc;
    e->tok_embd = pd_model_tok_embd(m);
    if (pd_dtype_row_size(e->tok_embd->type, e->tok_embd->ne[0], &row_bytes) < 0)
        return pd_errf(err, errlen, -EINVAL, "engine: the embedding's type has no row size");
    if ((rc = upload_matrix(e, pd_model_output(m), &e->w_out, NULL)) < 0)
        return pd_errf(err, errlen, rc, "engine: the output matrix to the device: %s",
                       rc == -ENOMEM ? "out of memory" : strerror(-rc));
    const float *rf = pd_model_rope_factors(m);
    if (!(e->out_norm = upload_vector(e, pd_model_output_norm(m))) ||
        !(e->embd_table = dev_upload(e, e->tok_embd->data, row_bytes * e->tok_embd->ne[1])) ||
        (rf && !(e->rope_factors = dev_upload(e, rf, e->hp.rope_dim / 2 * sizeof(float)))))
        return pd_errf(err, errlen, -ENOMEM, "engine: no device memory for the output and "
                       "embedding weights");
    if ((rc = rope_table(e, rf)) < 0)
        return pd_errf(err, errlen, rc, "engine: RoPE's table of %" PRIu32 " positions: %s",
                       e->max_model_len, rc == -ENOMEM ? "out of memory" : strerror(-rc));
    for (size_t i = 0; i < e->n_owned; i++)
        free(e->owned[i]);
    e->n_owned = 0;
    snprintf(e->desc, sizeof(e->desc),
             "engine: CUDA, %s matrices, q/k/v and gate/up %s, RoPE %s, prefill attention by %s",
             pd_dtype_name(e->w_type), fuse ? "as one GEMM each" : "as separate GEMMs",
             e->rope_table ? "by table, with the KV write" : "computed, apart from the KV write",
             e->prefill_wgmma ? "wgmma" : "mma.sync");
    /* cu_scratch adds the GEMMs' input type */
    return 0;
}

/* ---- scratch: the index arrays' and logits' page-locked staging, the
 * attention and GEMM workspaces, graphs, sampling ---- */

#define SCRATCH(ptr, n, host)                                                                  \
    do {                                                                                       \
        if (!((ptr) = cu_alloc(e, (size_t)(n) * sizeof(*(ptr)), (host))))                      \
            return -ENOMEM;                                                                    \
    } while (0)

static int cu_scratch_sampling(struct pd_engine *e)
{
    /* a step samples a row per item, or scores one per token */
    const size_t C = e->logit_cap > e->max_tokens ? e->logit_cap : e->max_tokens;
    SCRATCH(e->h_sp, C, true);
    SCRATCH(e->d_sp, C, false);
    SCRATCH(e->h_hs, C + 1, true);
    SCRATCH(e->d_hs, C + 1, false);
    SCRATCH(e->h_mrow, C, true);
    SCRATCH(e->d_mrow, C, false);
    SCRATCH(e->h_force, C, true);
    SCRATCH(e->d_force, C, false);
    SCRATCH(e->h_bs, C + 1, true);
    SCRATCH(e->d_bs, C + 1, false);
    SCRATCH(e->h_np, C, true);
    SCRATCH(e->d_np, C, false);
    SCRATCH(e->h_stok, C, true);
    SCRATCH(e->d_stok, C, false);
    SCRATCH(e->h_slp, C, true);
    SCRATCH(e->d_slp, C, false);
    SCRATCH(e->h_ntop, C, true);
    SCRATCH(e->d_ntop, C, false);
    SCRATCH(e->h_top, C * PD_MAX_LOGPROBS, true);
    SCRATCH(e->d_top, C * PD_MAX_LOGPROBS, false);
    e->sws_bytes = pd_sample_cuda_workspace(LOGIT_ROWS, e->hp.n_vocab);
    return (e->d_sws = dev_alloc(e, e->sws_bytes)) ? 0 : -ENOMEM;
}

static int cu_scratch(struct pd_engine *e, const struct pd_engine_params *p)
{
    const struct pd_hparams *hp = &e->hp;
    const size_t T = e->max_tokens, qd = (size_t)hp->n_head * hp->head_dim;
    /* a decode step's every row comes down before any is handed out (so
     * that a step is one graph, one wait) */
    e->logit_cap = e->max_items > LOGIT_ROWS ? e->max_items : LOGIT_ROWS;
    SCRATCH(e->h_logits, (size_t)e->logit_cap * hp->n_vocab, true);
    if (pd_engine_index_alloc(e, &e->h_ix, true) < 0)
        return -ENOMEM;
    /* decode steps (at most max_items tokens) may split their contexts;
     * larger steps run unsplit (the launcher's rule) */
    e->attn_ws_bytes = pd_attn_workspace_bytes(e->max_items, hp->n_head, hp->head_dim,
                                               PD_ATTN_MAX_SPLITS);
    if (!(e->attn_ws = dev_alloc(e, e->attn_ws_bytes)))
        return -ENOMEM;
    /* bf16 matrices: the norms, SwiGLU and the attention write bf16 for
     * their GEMMs. PDSERVE_BF16_ACTIVATIONS=0: every GEMM input float,
     * rounded into xs first (the way before; the same bits, one more kernel
     * per GEMM) */
    const char *act = getenv("PDSERVE_BF16_ACTIVATIONS");
    const bool bf16_act = !(act && strcmp(act, "0") == 0);
    if (e->w_type == PD_DT_BF16 && !bf16_act) {
        size_t cols = qd;
        cols = hp->n_embd > cols ? hp->n_embd : cols;
        cols = hp->n_ff > cols ? hp->n_ff : cols;
        if (!(e->xs = dev_alloc(e, T * cols * 2)))
            return -ENOMEM;
    }
    if (e->w_type == PD_DT_BF16 && bf16_act) {
        if (!(e->hn = dev_alloc(e, T * hp->n_embd * 2)))
            return -ENOMEM;
        e->act_type = PD_DT_BF16;
    }
    const size_t dl = strlen(e->desc);
    snprintf(e->desc + dl, sizeof(e->desc) - dl, ", %s GEMM inputs",
             e->act_type == PD_DT_BF16     ? "bf16"
                 : e->w_type == PD_DT_BF16 ? "rounded"
                                           : "float");
    if (!(e->blas_ws = dev_alloc(e, PD_MATMUL_CUBLAS_WS)))
        return -ENOMEM;
    if (!p->no_cuda_graphs) {
        if (!(e->graph = calloc(2 * ((size_t)e->max_items + 1), sizeof(*e->graph))) ||
            !(e->graph_seen = calloc(2 * ((size_t)e->max_items + 1), 1)) ||
            !(e->pad_items = calloc(e->max_items, sizeof(*e->pad_items))))
            return -ENOMEM;
        e->graphs = true;
        const char *gb = getenv("PDSERVE_CUDA_GRAPH_BUCKETS");
        e->graph_buckets = !(gb && strcmp(gb, "0") == 0);
    }
    return cu_scratch_sampling(e);
}

/* ---- the KV pool and the KV channel's staging ---- */

/* the pool in device memory, whole blocks: of --kv-cache-memory, or of what
 * the weights and scratch leave under the share of the device's memory the
 * process may use (--gpu-memory-utilization) */
static int cu_kv_pool(struct pd_engine *e, const struct pd_engine_params *p,
                      struct pd_kvcache_params *kp, char *err, size_t errlen)
{
    const uint64_t bb = pd_kv_block_elems(&kp->layout) * (kp->dtype == PD_DT_F32 ? 4 : 2);
    uint64_t bytes = p->kv_cache_bytes;
    int rc;
    if (p->gpu_memory_utilization > 0) {
        size_t free_b = 0, total_b = 0;
        if ((rc = pd_cuda_mem_info(&free_b, &total_b)) < 0)
            return pd_errf(err, errlen, rc, "engine: the device's memory: %s", strerror(-rc));
        const double cap = p->gpu_memory_utilization * (double)total_b;
        const double used = (double)(total_b - free_b);
        if (cap <= used)
            return pd_errf(err, errlen, -ENOMEM, "engine: --gpu-memory-utilization %.2f of %.1f "
                           "GiB leaves no room for the KV pool: %.1f GiB are in use already",
                           p->gpu_memory_utilization, (double)total_b / (1u << 30),
                           used / (1u << 30));
        bytes = (uint64_t)(cap - used);
    }
    uint64_t nb = bb ? bytes / bb : 0;
    nb = nb > PD_KV_MAX_BLOCKS ? PD_KV_MAX_BLOCKS : nb;
    kp->mem_bytes = bytes;
    if (nb) { /* none: pd_kvcache_new says why */
        kp->mem_bytes = nb * bb;
        if (!(kp->pool = dev_alloc(e, kp->mem_bytes)))
            return pd_errf(err, errlen, -ENOMEM, "engine: no device memory for a KV pool of %"
                           PRIu64 " bytes", kp->mem_bytes);
    }
    return 0;
}

/* the KV channel's blocks in host memory (mapped, kept out of core dumps,
 * by common/engine/kvcache), page-locked so that the copies between it and the
 * device pool are DMA; by default room for two prompts of the longest
 * length */
static int stage_new(struct pd_engine *e, const struct pd_engine_params *p, char *err,
                     size_t errlen)
{
    char why[200];
    const uint64_t bb = pd_kvcache_block_bytes(e->kc), full = (uint64_t)e->max_blocks * bb;
    const uint32_t bs = pd_kvcache_layout(e->kc)->block_size;
    struct pd_kvcache_params sp = {.layout = *pd_kvcache_layout(e->kc),
                                   .dtype = pd_kvcache_dtype(e->kc)};
    int rc;
    sp.mem_bytes = p->kv_staging_bytes ? p->kv_staging_bytes
                                       : (2 * full > (1u << 30) ? 2 * full : 1u << 30);
    if ((rc = pd_kvcache_new(&sp, &e->stage, why, sizeof(why))) < 0)
        return pd_errf(err, errlen, rc, "engine: the KV channel's staging (%" PRIu64
                       " bytes): %s", sp.mem_bytes, why);
    if (pd_kvcache_n_blocks(e->stage) < e->max_blocks)
        snprintf(e->note, sizeof(e->note), "engine: the KV channel's staging (%" PRIu64 " MiB) "
                 "holds a prompt of at most %" PRIu64 " tokens, --max-model-len is %" PRIu32
                 ": longer prompts are refused by prefilld and prefilled locally by decoded",
                 sp.mem_bytes >> 20, (uint64_t)pd_kvcache_n_blocks(e->stage) * bs,
                 e->max_model_len);
    const uint64_t sb = pd_kvcache_block_bytes(e->stage) * pd_kvcache_n_blocks(e->stage);
    if ((rc = pd_cuda_host_register(pd_kvcache_pool(e->stage), sb)) < 0)
        return pd_errf(err, errlen, rc, "engine: page-locking the KV channel's staging (%"
                       PRIu64 " bytes): %s", sb, strerror(-rc));
    e->stage_pinned = true;
    return 0;
}

static int cu_ready(struct pd_engine *e, const struct pd_engine_params *p, char *err,
                    size_t errlen)
{
    int rc;
    if (p->kv_staging && (rc = stage_new(e, p, err, errlen)) < 0)
        return rc;
    /* the uploads ran on the legacy stream, which the engine's (non-blocking)
     * stream does not wait for: they are complete before any step */
    if ((rc = pd_cuda_sync()) < 0)
        return pd_errf(err, errlen, rc, "engine: uploading the weights: %s", strerror(-rc));
    return 0;
}

static void cu_done(struct pd_engine *e)
{
    if (e->stage_pinned)
        pd_cuda_host_unregister(pd_kvcache_pool(e->stage));
    e->stage = pd_kvcache_free(e->stage);
    for (uint32_t i = 0; e->graph && i < 2 * (e->max_items + 1); i++)
        pd_cuda_graph_free(e->graph[i]);
    free(e->graph);
    free(e->graph_seen);
    free(e->pad_items);
    for (size_t i = 0; i < e->n_pinned; i++) {
        pd_cuda_host_unregister(e->pinned[i]);
        free(e->pinned[i]);
    }
    free(e->pinned);
    pd_cuda_stream_free(e->stream);
    pd_cuda_free(e->d_hist);
    if (e->h_hist) {
        pd_cuda_host_unregister(e->h_hist);
        free(e->h_hist);
    }
    pd_cuda_free(e->d_mask);
    if (e->h_mask) {
        pd_cuda_host_unregister(e->h_mask);
        free(e->h_mask);
    }
    pd_cuda_free(e->d_bias);
    if (e->h_bias) {
        pd_cuda_host_unregister(e->h_bias);
        free(e->h_bias);
    }
    for (size_t i = 0; i < e->n_dev; i++)
        pd_cuda_free(e->dev[i]);
    free(e->dev);
}

/* ---- sampling on the device ---- */

static bool penalised(const struct pd_sampling *p)
{
    return p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f;
}

/* A device buffer and its page-locked twin (*h, *d, *cap elements of
 * elem bytes) for at least `need` elements; what they held is not kept. */
static int pair_grow(void **hp, void **dp, uint64_t *capp, uint64_t need, size_t elem)
{
    if (need <= *capp) /* the stream is idle between steps */
        return 0;
    uint64_t cap = need > 2 * *capp ? need : 2 * *capp;
    cap = cap < 4096 ? 4096 : cap;
    const size_t bytes = (cap * elem + 4095) / 4096 * 4096;
    void *h = NULL, *d = NULL;
    if (posix_memalign(&h, 4096, bytes) || pd_cuda_host_register(h, bytes) < 0) {
        free(h);
        return -ENOMEM;
    }
    if (pd_cuda_malloc(&d, bytes) < 0) {
        pd_cuda_host_unregister(h);
        free(h);
        return -ENOMEM;
    }
    if (*hp) {
        pd_cuda_host_unregister(*hp);
        free(*hp);
    }
    pd_cuda_free(*dp);
    *hp = h, *dp = d, *capp = cap;
    return 0;
}

/* every sampled row's logit bias entries up into d_bias (grown as needed),
 * every row's offsets into d_bs (a scored row has none); e->step_bias says
 * whether this step has any */
static int bias_prepare(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items)
{
    uint32_t off = 0, r = 0;
    int rc;
    for (uint32_t i = 0; i < n_items; i++)
        if (items[i].n_logits > items[i].n_forced)
            off += items[i].sampling->n_bias;
    e->step_bias = off > 0;
    if (!e->step_bias)
        return 0;
    if ((rc = pair_grow((void **)&e->h_bias, (void **)&e->d_bias, &e->bias_cap, off,
                        sizeof(*e->h_bias))) < 0)
        return rc;
    off = 0;
    for (uint32_t i = 0; i < n_items; i++) {
        const struct pd_batch_item *it = &items[i];
        for (uint32_t j = 0; j < it->n_logits; j++) {
            e->h_bs[r++] = off;
            if (j < it->n_forced)
                continue;
            memcpy(e->h_bias + off, it->sampling->bias,
                   it->sampling->n_bias * sizeof(*e->h_bias));
            off += it->sampling->n_bias;
        }
    }
    e->h_bs[r] = off;
    if ((rc = cu_copy(e->d_bias, e->h_bias, off * sizeof(*e->h_bias), e->stream)) < 0)
        return rc;
    return cu_copy(e->d_bs, e->h_bs, (r + 1) * sizeof(*e->d_bs), e->stream);
}

/* every drawn row's token mask up into d_mask (grown as needed), every row's
 * index into d_mrow (UINT32_MAX: none); e->step_mask says whether any */
static int mask_prepare(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items)
{
    const uint32_t words = (e->hp.n_vocab + 31) / 32;
    uint32_t n_masks = 0, r = 0;
    int rc;
    for (uint32_t i = 0; i < n_items; i++)
        n_masks += items[i].n_logits > items[i].n_forced && items[i].sampling->mask;
    e->step_mask = n_masks > 0;
    if (!e->step_mask)
        return 0;
    if ((rc = pair_grow((void **)&e->h_mask, (void **)&e->d_mask, &e->mask_cap,
                        (uint64_t)n_masks * words, sizeof(*e->h_mask))) < 0)
        return rc;
    n_masks = 0;
    for (uint32_t i = 0; i < n_items; i++) {
        const struct pd_batch_item *it = &items[i];
        for (uint32_t j = 0; j < it->n_logits; j++, r++) {
            e->h_mrow[r] = UINT32_MAX;
            if (j < it->n_forced || !it->sampling->mask)
                continue;
            memcpy(e->h_mask + (size_t)n_masks * words, it->sampling->mask,
                   words * sizeof(*e->h_mask));
            e->h_mrow[r] = n_masks++;
        }
    }
    if ((rc = cu_copy(e->d_mask, e->h_mask, (size_t)n_masks * words * sizeof(*e->h_mask),
                      e->stream)) < 0)
        return rc;
    return cu_copy(e->d_mrow, e->h_mrow, r * sizeof(*e->d_mrow), e->stream);
}

/* A sampling step: each row's parameters, history offset, prompt length and
 * forced token (scored rows; -1 for a draw) into their page-locked buffers
 * (sample_in copies them up), the histories of drawn rows with penalties up
 * into d_hist (grown as needed), the logit biases (bias_prepare) and the
 * token masks (mask_prepare). A scored row has an empty history. *pen:
 * whether any history, bias or mask went (such a step is not a graph:
 * d_hist, d_bias and d_mask may move). */
static int sampling_prepare(struct pd_engine *e, const struct pd_batch_item *items,
                            uint32_t n_items, bool *pen)
{
    uint64_t off = 0;
    uint32_t r = 0;
    int rc = 0;
    *pen = false;
    e->step_forced = false;
    for (uint32_t i = 0; i < n_items; i++) {
        const struct pd_batch_item *it = &items[i];
        for (uint32_t j = 0; j < it->n_logits; j++, r++) {
            const bool scored = j < it->n_forced;
            e->h_sp[r] = *it->sampling;
            e->h_hs[r] = (uint32_t)off;
            e->h_np[r] = scored ? 0 : it->n_prompt;
            e->h_force[r] = scored ? it->forced[j] : -1;
            e->step_forced |= scored;
            if (scored)
                continue;
            off += it->n_history;
            *pen |= penalised(it->sampling);
        }
    }
    e->h_hs[r] = (uint32_t)off;
    if ((rc = bias_prepare(e, items, n_items)) < 0 || (rc = mask_prepare(e, items, n_items)) < 0)
        return rc;
    if (!*pen) {
        *pen = e->step_bias || e->step_mask;
        return 0;
    }
    if ((rc = pair_grow((void **)&e->h_hist, (void **)&e->d_hist, &e->hist_cap, off,
                        sizeof(*e->h_hist))) < 0)
        return rc;
    /* only the penalised rows' histories: the others' are never read (their
     * length, the draw's position, is in the offsets) */
    off = 0;
    for (uint32_t i = 0; i < n_items && rc == 0; i++) {
        const struct pd_batch_item *it = &items[i];
        if (it->n_logits == it->n_forced)
            continue;
        if (it->n_history && penalised(it->sampling)) {
            memcpy(e->h_hist + off, it->history, it->n_history * sizeof(int32_t));
            rc = cu_copy(e->d_hist + off, e->h_hist + off, it->n_history * sizeof(int32_t),
                         e->stream);
        }
        off += it->n_history;
    }
    return rc;
}

/* the rows' parameters, history offsets, prompt lengths and forced tokens,
 * as sampling_prepare left them in their page-locked buffers */
static int cu_sample_in(struct pd_engine *e, uint32_t n)
{
    int rc;
    if (e->step_forced &&
        (rc = cu_copy(e->d_force, e->h_force, n * sizeof(*e->d_force), e->stream)) < 0)
        return rc;
    if ((rc = cu_copy(e->d_sp, e->h_sp, n * sizeof(*e->d_sp), e->stream)) < 0 ||
        (rc = cu_copy(e->d_hs, e->h_hs, (n + 1) * sizeof(*e->d_hs), e->stream)) < 0)
        return rc;
    return cu_copy(e->d_np, e->h_np, n * sizeof(*e->d_np), e->stream);
}

static int cu_sample_rows(struct pd_engine *e, uint32_t r0, uint32_t m)
{
    struct pd_sample_args sa = {.logits = e->logits, .n_rows = m, .n_vocab = e->hp.n_vocab,
                                .params = e->d_sp + r0, .hist = e->d_hist,
                                .hist_start = e->d_hs + r0, .n_prompt = e->d_np + r0,
                                .bias = e->step_bias ? e->d_bias : NULL,
                                .bias_start = e->step_bias ? e->d_bs + r0 : NULL,
                                .forced = e->step_forced ? e->d_force + r0 : NULL,
                                .mask = e->step_mask ? e->d_mask : NULL,
                                .mask_row = e->step_mask ? e->d_mrow + r0 : NULL,
                                .workspace = e->d_sws, .workspace_bytes = e->sws_bytes,
                                .token = e->d_stok + r0, .logprob = e->d_slp + r0,
                                .top = e->d_top + (size_t)r0 * PD_MAX_LOGPROBS,
                                .n_top = e->d_ntop + r0};
    return pd_sample_cuda(&sa, e->stream);
}

static int cu_sample_out(struct pd_engine *e, uint32_t n)
{
    int rc;
    if ((rc = cu_copy(e->h_stok, e->d_stok, n * sizeof(*e->h_stok), e->stream)) < 0 ||
        (rc = cu_copy(e->h_slp, e->d_slp, n * sizeof(*e->h_slp), e->stream)) < 0 ||
        (rc = cu_copy(e->h_ntop, e->d_ntop, n * sizeof(*e->h_ntop), e->stream)) < 0)
        return rc;
    return cu_copy(e->h_top, e->d_top, (size_t)n * PD_MAX_LOGPROBS * sizeof(*e->h_top),
                   e->stream);
}

/* ---- a step ---- */

static void graphs_off(struct pd_engine *e, const char *what, uint32_t n, int rc)
{
    pd_cuda_clear_error(); /* handled here: not the next kernel's failure */
    e->graphs = false;
    snprintf(e->note, sizeof(e->note), "engine: CUDA graphs off (%s a decode step of %" PRIu32
             " failed: %s); steps run as plain launches", what, n, strerror(-rc));
}

/* The step's work as plain launches: its index arrays up, the pass. */
static int launch(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                  uint32_t T, uint32_t *pending)
{
    int rc = pd_engine_fwd_upload(e, n_items, T);
    return rc < 0 ? rc : pd_engine_fwd(e, items, n_items, T, pending);
}

/* The graph of a decode step of n_items rows of this kind (key), captured
 * the second time that size comes (the first runs as plain launches, so that
 * cuBLAS and the kernels have made what they make on first use outside the
 * capture), launched. -EAGAIN: run the step as plain launches (the first
 * time, or graphs turned off by a failed capture or launch). */
static int graph_step(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                      uint32_t T, uint32_t key)
{
    uint32_t pending = 0;
    int rc;
    if (!e->graph_seen[key]) {
        e->graph_seen[key] = 1;
        return -EAGAIN;
    }
    if (!e->graph[key]) {
        struct pd_cuda_graph *g = NULL;
        int rb = pd_cuda_graph_begin(e->stream), rf = 0, re = 0;
        if (rb == 0) {
            rf = launch(e, items, n_items, T, &pending);
            re = pd_cuda_graph_end(e->stream, &g);
        }
        if (rb < 0 || rf < 0 || re < 0 || pending != n_items) {
            pd_cuda_graph_free(g);
            graphs_off(e, "capturing", n_items,
                       rb < 0 ? rb : rf < 0 ? rf : re < 0 ? re : -EPROTO);
            return -EAGAIN;
        }
        e->graph[key] = g;
    }
    /* the rows as the captured pass laid them out: one per item */
    for (uint32_t r = 0; r < n_items; r++)
        e->out_item[r] = r, e->out_row[r] = 0;
    if ((rc = pd_cuda_graph_launch(e->graph[key], e->stream)) < 0) {
        e->graph[key] = pd_cuda_graph_free(e->graph[key]);
        graphs_off(e, "launching the graph of", n_items, rc);
        return -EAGAIN;
    }
    return 0;
}

/* The batch size whose graph a decode step of n items replays: the
 * smallest bucket that holds it -- 1, 2, 4, then multiples of 8 (vLLM's
 * capture sizes), at most max_items or max_tokens -- so that a server
 * whose batch wanders over 1..256 captures 35 graphs a kind, not 256; or
 * n itself (PDSERVE_CUDA_GRAPH_BUCKETS=0). */
static uint32_t graph_bucket(const struct pd_engine *e, uint32_t n)
{
    if (!e->graph_buckets)
        return n;
    const uint32_t b = n <= 2 ? n : n <= 4 ? 4 : (n + 7) / 8 * 8;
    const uint32_t cap = e->max_items < e->max_tokens ? e->max_items : e->max_tokens;
    return b < cap ? b : cap < n ? n : cap;
}

/* A decode step of n items as one of b (its bucket): the items then
 * padding ones in pad_items, whose tokens read position 0 of item 0's
 * sequence (finite rows, no other work) and store no K or V (slot -1); a
 * sampling step's padding rows take row 0's parameters with no history.
 * The padding rows' results are never handed out. */
static const struct pd_batch_item *pad_step(struct pd_engine *e, const struct pd_batch_item *items,
                                            uint32_t n, uint32_t b, bool smp)
{
    memcpy(e->pad_items, items, n * sizeof(*items));
    for (uint32_t t = n; t < b; t++) {
        e->h_ix.tok[t] = 0, e->h_ix.pos[t] = 0, e->h_ix.tok_seq[t] = 0, e->h_ix.slot[t] = -1;
        e->item_t0[t] = t;
        e->pad_items[t] =
            (struct pd_batch_item){.n_tokens = 1, .n_logits = 1, .sampling = items[0].sampling};
        if (smp) {
            e->h_sp[t] = e->h_sp[0];
            e->h_np[t] = 0;
            e->h_force[t] = -1;
            e->h_hs[t + 1] = e->h_hs[n];
        }
    }
    return e->pad_items;
}

/* A step on the GPU: its index arrays up, its work, then one wait; the
 * logits rows handed out after it. A decode step (one token and one row of
 * logits per item) replays the CUDA graph of its batch size's bucket and kind
 * (logits or sampled): the graph holds the index arrays' copies from their
 * fixed page-locked buffers, every kernel and GEMM, and the results' copy
 * down. A capture or a launch that fails turns graphs off for the engine,
 * with one log line, and the step runs as plain launches. */
static int cu_step(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                   uint32_t T)
{
    uint32_t pending = 0;
    bool smp = false, pen = false; /* validate: every row samples, or none does */
    int rc;
    for (uint32_t i = 0; i < n_items; i++)
        if (items[i].n_logits) {
            smp = items[i].sampling != NULL;
            break;
        }
    if (smp && (rc = sampling_prepare(e, items, n_items, &pen)) < 0)
        return rc;
    bool decode = e->graphs && !pen && !e->kt; /* the kernel timer: plain launches */
    for (uint32_t i = 0; i < n_items && decode; i++)
        decode = items[i].n_tokens == 1 && items[i].n_logits == 1 && !items[i].n_forced;
    const uint32_t b = decode ? graph_bucket(e, n_items) : n_items;
    const struct pd_batch_item *as = b > n_items ? pad_step(e, items, n_items, b, smp) : items;
    rc = decode ? graph_step(e, as, b, b, 2 * b + smp) : -EAGAIN;
    if (rc == 0) {
        pending = n_items;
    } else if (decode) { /* the bucket's first time: its size, padded, as plain launches */
        rc = launch(e, as, b, b, &pending);
        pending = pending < n_items ? pending : n_items; /* the padding's rows stay */
    } else {
        rc = launch(e, items, n_items, T, &pending);
    }
    /* the step ends here: its errors are known, its index arrays and logits
     * buffers free for the next */
    int rs = cu_sync(e->stream);
    if ((rc = rc < 0 ? rc : rs) < 0)
        return rc;
    return pd_engine_fwd_hand_out(e, items, 0, pending, e->h_logits);
}

/* the kernel timer's marks: events on the engine's stream */
static void *cu_marks_new(uint32_t n)
{
    struct pd_cuda_marks *m = NULL;
    return pd_cuda_marks_new(n, &m) == 0 ? m : NULL;
}
static void cu_marks_free(void *m) { pd_cuda_marks_free(m); }
static int cu_mark(void *m, uint32_t i, void *s) { return pd_cuda_marks_record(m, i, s); }

static int cu_marks_span(void *m, uint32_t i, uint32_t j, double *ms)
{
    float f = 0;
    int rc = pd_cuda_marks_elapsed(m, i, j, &f);
    *ms = f;
    return rc;
}

const struct pd_backend pd_backend_cuda = {
    .name = "cuda",
    .embed = cu_embed,
    .rmsnorm = cu_rmsnorm,
    .matmul = cu_matmul,
    .rope = cu_rope,
    .bias = cu_bias,
    .kv_write = cu_kv_write,
    .rope_kv_write = cu_rope_kv_write,
    .attention = cu_attention,
    .swiglu = cu_swiglu,
    .copy = cu_copy,
    .sync = cu_sync,
    .init = cu_init,
    .alloc = cu_alloc,
    .scratch = cu_scratch,
    .kv_pool = cu_kv_pool,
    .ready = cu_ready,
    .done = cu_done,
    .step = cu_step,
    .sample_in = cu_sample_in,
    .sample_rows = cu_sample_rows,
    .sample_out = cu_sample_out,
    .last_error = pd_cuda_last_error,
    .forget_error = cu_forget_error,
    .marks_new = cu_marks_new,
    .marks_free = cu_marks_free,
    .mark = cu_mark,
    .marks_span = cu_marks_span,
};
