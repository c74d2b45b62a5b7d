#include "engine.h"

#include "errf.h"
#include "log.h"
#include "pd_config.h"
#include "parallel.h"

#include "attention.h"
#include "embed.h"
#include "kv_write.h"
#include "matmul.h"
#include "quant.h"
#include "rmsnorm.h"
#include "rope.h"
#include "sample.h"
#include "swiglu.h"

#if PD_HAVE_CUDA
#include "pd_cuda.h"
#endif

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The kernels one device provides; the engine calls only through this
 * table, with its stream (the GPU's engine stream; NULL on the CPU). Copies
 * are asynchronous on a GPU: `sync` waits for everything issued. */
struct pd_kernels {
    int (*embed)(const struct pd_embed_args *, void *stream);
    int (*rmsnorm)(const struct pd_rmsnorm_args *, void *stream);
    int (*matmul)(const struct pd_matmul_args *, void *stream);
    int (*rope)(const struct pd_rope_args *, void *stream);
    int (*kv_write)(const struct pd_kv_write_args *, void *stream);
    int (*attention)(const struct pd_attn_args *, void *stream);
    int (*swiglu)(const struct pd_swiglu_args *, void *stream);
    int (*copy)(void *dst, const void *src, size_t bytes, void *stream); /* either side */
    int (*sync)(void *stream);
};

#define CPU_OP(op, args)                                                                       \
    static int cpu_##op(const struct args *a, void *stream)                                    \
    {                                                                                          \
        (void)stream;                                                                          \
        return pd_##op##_cpu(a);                                                               \
    }
CPU_OP(embed, pd_embed_args)
CPU_OP(rmsnorm, pd_rmsnorm_args)
CPU_OP(matmul, pd_matmul_args)
CPU_OP(rope, pd_rope_args)
CPU_OP(kv_write, pd_kv_write_args)
CPU_OP(attention, pd_attn_args)
CPU_OP(swiglu, pd_swiglu_args)

static int cpu_copy(void *dst, const void *src, size_t bytes, void *stream)
{
    (void)stream;
    memcpy(dst, src, bytes);
    return 0;
}

static int cpu_sync(void *stream)
{
    (void)stream;
    return 0;
}

static const struct pd_kernels cpu_kernels = {
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .kv_write = cpu_kv_write,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .copy = cpu_copy,
    .sync = cpu_sync,
};

#if PD_HAVE_CUDA
/* The CUDA kernels and copies, in order on the engine's stream */
static int cu_embed(const struct pd_embed_args *a, void *s) { return pd_embed_cuda(a, s); }
static int cu_rmsnorm(const struct pd_rmsnorm_args *a, void *s) { return pd_rmsnorm_cuda(a, s); }
static int cu_matmul(const struct pd_matmul_args *a, void *s) { return pd_matmul_cuda(a, s); }
static int cu_rope(const struct pd_rope_args *a, void *s) { return pd_rope_cuda(a, s); }
static int cu_kv_write(const struct pd_kv_write_args *a, void *s) { return pd_kv_write_cuda(a, s); }
static int cu_swiglu(const struct pd_swiglu_args *a, void *s) { return pd_swiglu_cuda(a, s); }
static int cu_copy(void *dst, const void *src, size_t bytes, void *s)
{
    return pd_cuda_memcpy_async(dst, src, bytes, s);
}
static int cu_sync(void *s) { return pd_cuda_stream_sync(s); }

/* a step with prefill chunks on a 16-bit pool: the tensor-core kernel, its
 * runs being the items; otherwise (or where it declines) the decode kernel */
static int cu_attention(const struct pd_attn_args *a, void *s)
{
    if (a->n_runs) {
        int rc = pd_attention_prefill_cuda(a, s);
        if (rc != -ENOTSUP)
            return rc;
    }
    return pd_attention_cuda(a, s);
}

static const struct pd_kernels cuda_kernels = {
    .embed = cu_embed,
    .rmsnorm = cu_rmsnorm,
    .matmul = cu_matmul,
    .rope = cu_rope,
    .kv_write = cu_kv_write,
    .attention = cu_attention,
    .swiglu = cu_swiglu,
    .copy = cu_copy,
    .sync = cu_sync,
};
#endif

struct layer_w {
    const float *attn_norm; /* (n_embd) */
    const float *wq; /* (n_head * head_dim, n_embd) */
    const float *wk, *wv; /* (n_head_kv * head_dim, n_embd) */
    const float *wo; /* (n_embd, n_head * head_dim) */
    const float *ffn_norm; /* (n_embd) */
    const float *w_gate, *w_up; /* (n_ff, n_embd) */
    const float *w_down; /* (n_embd, n_ff) */
};

struct pd_engine {
    const struct pd_model *model;
    struct pd_hparams hp;
    const struct pd_kernels *k;
    enum pd_device device;
    struct layer_w *layers; /* [n_layer] */
    const struct pd_tensor *tok_embd; /* gathered in its stored type */
    const void *embd_table; /* its rows: the mapping, or the device's copy */
    const float *out_norm; /* (n_embd) */
    const float *w_out; /* (n_vocab, n_embd) */
    const float *rope_factors; /* (rope_dim / 2) or NULL */
    float rope_scale;
    float **owned; /* dequantized weights this engine allocated */
    size_t n_owned;
    void **dev; /* device memory this engine allocated */
    size_t n_dev;
    void **host; /* host scratch this engine allocated */
    size_t n_host;

    struct pd_kvcache *kc;
    struct pd_kvcache *stage; /* GPU: the KV channel's pinned host blocks, or NULL */
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

    /* sampling in the step (pd_batch_item.sampling): the CPU's sampler, or
     * on a GPU each row's parameters, history offsets and prompt lengths
     * (page-locked h_, device d_; logit_cap rows), the results coming back
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
    uint32_t max_tokens, max_model_len, max_items, max_blocks;

    /* scratch for max_tokens tokens */
    float *x; /* (T, n_embd) residual stream */
    float *h; /* (T, n_embd) normed */
    float *q; /* (T, n_head * head_dim) */
    float *kk, *vv; /* (T, n_head_kv * head_dim) */
    float *att; /* (T, n_head * head_dim) */
    float *gate, *up; /* (T, n_ff) */
    int32_t *tok, *pos, *tok_seq; /* (T) */
    int64_t *slot; /* (T) */
    uint32_t *tables; /* (max_items, max_blocks) */
    int32_t *runs; /* (max_items + 1) where each item's tokens start (the prefill kernel's runs) */
    /* the same index arrays as the step builds them on the host: the arrays
     * above themselves on the CPU, their staging on a GPU */
    int32_t *h_tok, *h_pos, *h_tok_seq, *h_runs;
    float *h_logits; /* (LOGIT_ROWS, n_vocab) */
    int64_t *h_slot;
    uint32_t *h_tables;
    uint32_t w_type; /* the matrices' elements: F32, or BF16 on a GPU */
    void *xs; /* (max(T, LOGIT_ROWS), max(n_embd, n_head * head_dim, n_ff)) bf16: a GEMM's x
               * rounded for bf16 matrices (GPU) */
    void *attn_ws; /* decode attention's split partials (GPU) */
    uint64_t attn_ws_bytes;
    uint32_t *out_item, *out_row; /* (T): which item / logits row each output row is */
    float *logits; /* (LOGIT_ROWS, n_vocab) */
};

/* Rows of logits computed per GEMM: bounds the scratch at LOGIT_ROWS x vocab. */
#define LOGIT_ROWS 64

/* A weight as float32: in place when stored so (and aligned), else dequantized
 * into memory the engine owns. */
static const float *weight_f32(struct pd_engine *e, const struct pd_tensor *t)
{
    if (t->type == PD_DT_F32 && ((uintptr_t)t->data % sizeof(float)) == 0)
        return t->data;
    uint64_t row_bytes, rows = t->ne[1] * t->ne[2] * t->ne[3];
    if (pd_dtype_row_size(t->type, t->ne[0], &row_bytes) < 0)
        return NULL;
    float *w = malloc(t->ne[0] * rows * sizeof(float));
    float **o = realloc(e->owned, (e->n_owned + 1) * sizeof(*o));
    if (!w || !o) {
        free(w);
        if (o)
            e->owned = o;
        return NULL;
    }
    e->owned = o;
    e->owned[e->n_owned++] = w;
    for (uint64_t r = 0; r < rows; r++)
        if (pd_dequant_row(t->type, (const uint8_t *)t->data + r * row_bytes, w + r * t->ne[0],
                           t->ne[0]) < 0)
            return NULL;
    return w;
}

/* where each of a layer's weights goes, by enum pd_weight */
static void layer_slots(struct layer_w *w, const float **dst[PD_W_COUNT])
{
    dst[PD_W_ATTN_NORM] = &w->attn_norm, dst[PD_W_ATTN_Q] = &w->wq, dst[PD_W_ATTN_K] = &w->wk;
    dst[PD_W_ATTN_V] = &w->wv, dst[PD_W_ATTN_OUT] = &w->wo, dst[PD_W_FFN_NORM] = &w->ffn_norm;
    dst[PD_W_FFN_GATE] = &w->w_gate, dst[PD_W_FFN_UP] = &w->w_up, dst[PD_W_FFN_DOWN] = &w->w_down;
}

static bool is_norm(enum pd_weight k)
{
    return k == PD_W_ATTN_NORM || k == PD_W_FFN_NORM;
}

/* The weights as the CPU engine reads them: fp32 (dequantized copies where
 * stored otherwise). On CUDA only the norm vectors: upload_weights converts
 * the matrices from the model's tensors straight to the device's type. */
static int load_weights(struct pd_engine *e, char *err, size_t errlen)
{
    const struct pd_model *m = e->model;
    const bool matrices = e->device != PD_DEVICE_CUDA;
    e->layers = calloc(e->hp.n_layer, sizeof(*e->layers));
    if (!e->layers)
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory");
    for (uint32_t l = 0; l < e->hp.n_layer; l++) {
        const float **dst[PD_W_COUNT];
        layer_slots(&e->layers[l], dst);
        for (int k = 0; k < PD_W_COUNT; k++)
            if ((matrices || is_norm((enum pd_weight)k)) &&
                !(*dst[k] = weight_f32(e, pd_model_layer_tensor(m, l, (enum pd_weight)k))))
                return pd_errf(err, errlen, -ENOMEM, "engine: out of memory for layer %" PRIu32
                            " weights", l);
    }
    e->tok_embd = pd_model_tok_embd(m);
    e->embd_table = e->tok_embd->data;
    if (!(e->out_norm = weight_f32(e, pd_model_output_norm(m))) ||
        (matrices && !(e->w_out = weight_f32(e, pd_model_output(m)))))
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory for output weights");
    if (pd_model_rope_freqs(m))
        e->rope_factors = pd_model_rope_freqs(m)->data;
    return 0;
}

#if PD_HAVE_CUDA
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

/* A matrix of the model to the device in the engine's matrix type: as
 * stored when that is the type already (bf16 through fp32 back to bf16 is
 * exact), else converted on up to 16 threads into a host copy of the
 * matrix first: no fp32 copy of the whole model on the host. */
static int upload_matrix(struct pd_engine *e, const struct pd_tensor *t, const float **out)
{
    const uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    const size_t esize = e->w_type == PD_DT_F32 ? sizeof(float) : sizeof(uint16_t);
    uint64_t in_row;
    if (pd_dtype_row_size(t->type, t->ne[0], &in_row) < 0)
        return -EINVAL;
    if (t->type == e->w_type)
        return (*out = dev_upload(e, t->data, in_row * rows)) ? 0 : -ENOMEM;

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
    if (rc == 0 && !(*out = dev_upload(e, h, out_row * rows)))
        rc = -ENOMEM;
    free(h);
    return rc;
}

/* Every weight to the device: the matrices from the model's tensors
 * (upload_matrix), the norm vectors as load_weights left them (fp32), the
 * embedding rows in their stored type; the host's dequantized copies are
 * freed then. */
static int upload_weights(struct pd_engine *e, char *err, size_t errlen)
{
    const struct pd_model *m = e->model;
    uint64_t row_bytes;
    int rc;
    for (uint32_t l = 0; l < e->hp.n_layer; l++) {
        const float **dst[PD_W_COUNT];
        layer_slots(&e->layers[l], dst);
        for (int k = 0; k < PD_W_COUNT; k++) {
            const struct pd_tensor *t = pd_model_layer_tensor(m, l, (enum pd_weight)k);
            if (is_norm((enum pd_weight)k)) /* vectors stay fp32 */
                rc = (*dst[k] = dev_upload(e, *dst[k], f32_bytes(t))) ? 0 : -ENOMEM;
            else
                rc = upload_matrix(e, t, dst[k]);
            if (rc < 0)
                return pd_errf(err, errlen, rc, "engine: layer %" PRIu32 " weight %s to the "
                               "device: %s", l, t->name, rc == -ENOMEM ? "out of memory"
                               : strerror(-rc));
        }
    }
    if (pd_dtype_row_size(e->tok_embd->type, e->tok_embd->ne[0], &row_bytes) < 0)
        return pd_errf(err, errlen, -EINVAL, "engine: the embedding's type has no row size");
    if ((rc = upload_matrix(e, pd_model_output(m), &e->w_out)) < 0)
        return pd_errf(err, errlen, rc, "engine: the output matrix to the device: %s",
                       rc == -ENOMEM ? "out of memory" : strerror(-rc));
    if (!(e->out_norm = dev_upload(e, e->out_norm, f32_bytes(pd_model_output_norm(m)))) ||
        !(e->embd_table = dev_upload(e, e->tok_embd->data, row_bytes * e->tok_embd->ne[1])) ||
        (e->rope_factors && !(e->rope_factors = dev_upload(e, e->rope_factors,
                                                           f32_bytes(pd_model_rope_freqs(m))))))
        return pd_errf(err, errlen, -ENOMEM, "engine: no device memory for the output and "
                       "embedding weights");
    for (size_t i = 0; i < e->n_owned; i++)
        free(e->owned[i]);
    e->n_owned = 0;
    return 0;
}

#endif

#if PD_HAVE_CUDA
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
#endif

/* Memory freed with the engine: where the kernels run (the host on the
 * CPU, the device on a GPU), or host memory when `host` (the index arrays'
 * staging, the engine's own bookkeeping; page-locked on a GPU). NULL when
 * there is none left. */
static void *scratch(struct pd_engine *e, size_t bytes, bool host)
{
#if PD_HAVE_CUDA
    if (e->device == PD_DEVICE_CUDA)
        return host ? host_pinned(e, bytes) : dev_alloc(e, bytes);
#else
    (void)host;
#endif
    void **h = realloc(e->host, (e->n_host + 1) * sizeof(*h));
    if (!h)
        return NULL;
    e->host = h;
    void *p = calloc(1, bytes ? bytes : 1);
    if (p)
        e->host[e->n_host++] = p;
    return p;
}


#define SCRATCH(ptr, n, host)                                                                  \
    do {                                                                                       \
        if (!((ptr) = scratch(e, (size_t)(n) * sizeof(*(ptr)), (host))))                       \
            goto nomem;                                                                        \
    } while (0)

const char *const pd_engine_devices[] = {"auto", "cpu", "cuda", NULL};
const char *const pd_engine_gpu_weight_dtypes[] = {"bf16", "f32", NULL};

uint32_t pd_engine_gpu_weight_dtype(int choice)
{
    return choice == 1 ? PD_DT_F32 : PD_DT_BF16;
}

int pd_engine_pick_device(int choice, enum pd_device *out, char *why, size_t n)
{
    if (why && n)
        why[0] = '\0';
    if (choice == 1) {
        *out = PD_DEVICE_CPU;
        return 0;
    }
#if PD_HAVE_CUDA
    char reason[256];
    if (pd_cuda_probe(reason, sizeof reason) < 0) {
        if (choice == 2)
            return pd_errf(why, n, -ENODEV, "--device cuda: %s", reason);
        pd_errf(why, n, 0, "--device auto: the CPU (%s)", reason);
        *out = PD_DEVICE_CPU;
        return 0;
    }
    *out = PD_DEVICE_CUDA;
    return 0;
#else
    if (choice == 2)
        return pd_errf(why, n, -ENODEV, "--device cuda: this build has no CUDA");
    pd_errf(why, n, 0, "--device auto: the CPU (this build has no CUDA)");
    *out = PD_DEVICE_CPU;
    return 0;
#endif
}

const char *const pd_engine_kv_dtypes[] = {"f32", "bf16", "f16", NULL};

uint32_t pd_engine_kv_dtype(int choice)
{
    return choice == 1 ? PD_DT_BF16 : choice == 2 ? PD_DT_F16 : PD_DT_F32;
}

int pd_engine_new(const struct pd_engine_params *p, struct pd_engine **out, char *err,
                  size_t errlen)
{
    struct pd_engine *e;
    int rc;

    if (!p->model)
        return pd_errf(err, errlen, -EINVAL, "engine: no model");
    e = calloc(1, sizeof(*e));
    if (!e)
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory");
    e->model = p->model;
    e->hp = *pd_model_hparams(p->model);
    e->k = &cpu_kernels;
    const struct pd_hparams *hp = &e->hp;
    e->w_type = PD_DT_F32;
    if (p->gpu_weight_dtype != PD_DT_F32 && p->gpu_weight_dtype != PD_DT_BF16) {
        rc = pd_errf(err, errlen, -EINVAL, "engine: GPU matrices in %s: f32 or bf16",
                     pd_dtype_name(p->gpu_weight_dtype));
        goto out_free;
    }
    if (p->device == PD_DEVICE_CUDA) {
#if PD_HAVE_CUDA
        e->k = &cuda_kernels;
        e->device = PD_DEVICE_CUDA;
        e->w_type = p->gpu_weight_dtype;
        if ((rc = pd_cuda_stream_new((pd_stream_t *)&e->stream)) < 0) {
            rc = pd_errf(err, errlen, rc, "engine: a CUDA stream: %s", strerror(-rc));
            goto out_free;
        }
#else
        rc = pd_errf(err, errlen, -ENOTSUP, "engine: this build has no CUDA (meson setup "
                     "-Dcuda=enabled, on a machine with nvcc)");
        goto out_free;
#endif
    } else if (p->device != PD_DEVICE_CPU) {
        rc = pd_errf(err, errlen, -EINVAL, "engine: unknown device %d", (int)p->device);
        goto out_free;
    }

    if (hp->rope_scaling == PD_ROPE_SCALING_YARN) {
        rc = pd_errf(err, errlen, -ENOTSUP, "engine: YaRN rope scaling is not supported");
        goto out_free;
    }
    e->rope_scale = hp->rope_scaling == PD_ROPE_SCALING_LINEAR ? 1.0f / hp->rope_scale_factor : 1.0f;
    e->max_tokens = p->max_batched_tokens ? p->max_batched_tokens : 2048;
    e->max_model_len = p->max_model_len ? p->max_model_len : hp->n_ctx_train;
    e->max_items = p->max_batch_items ? p->max_batch_items : 256;
    uint32_t bs = p->block_size ? p->block_size : 16;
    if (e->max_tokens > (1u << 20) || e->max_model_len > (1u << 24) ||
        e->max_items > PD_ENGINE_MAX_BATCH_ITEMS) {
        rc = pd_errf(err, errlen, -EINVAL, "engine: max_batched_tokens (<= 1048576), max_model_len "
                  "(<= 16777216) or batch items (<= %d) out of range", PD_ENGINE_MAX_BATCH_ITEMS);
        goto out_free;
    }
    if (e->max_model_len > hp->n_ctx_train) {
        rc = pd_errf(err, errlen, -EINVAL, "engine: max_model_len %" PRIu32 " exceeds the model's "
                  "context of %" PRIu32, e->max_model_len, hp->n_ctx_train);
        goto out_free;
    }

    e->max_blocks = (e->max_model_len + bs - 1) / bs;
    if ((rc = load_weights(e, err, errlen)) < 0)
        goto out_free;

    size_t T = e->max_tokens, qd = (size_t)hp->n_head * hp->head_dim;
    size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
#if PD_HAVE_CUDA
    if (e->device == PD_DEVICE_CUDA && (rc = upload_weights(e, err, errlen)) < 0)
        goto out_free;
#endif
    const bool here = e->device == PD_DEVICE_CPU;
    SCRATCH(e->x, T * hp->n_embd, false);
    SCRATCH(e->h, T * hp->n_embd, false);
    SCRATCH(e->q, T * qd, false);
    SCRATCH(e->kk, T * kvd, false);
    SCRATCH(e->vv, T * kvd, false);
    SCRATCH(e->att, T * qd, false);
    SCRATCH(e->gate, T * hp->n_ff, false);
    SCRATCH(e->up, T * hp->n_ff, false);
    SCRATCH(e->logits, (size_t)LOGIT_ROWS * hp->n_vocab, false);
    e->logit_cap = LOGIT_ROWS;
    SCRATCH(e->tok, T, false);
    SCRATCH(e->pos, T, false);
    SCRATCH(e->tok_seq, T, false);
    SCRATCH(e->slot, T, false);
    SCRATCH(e->tables, (size_t)e->max_items * e->max_blocks, false);
    SCRATCH(e->runs, (size_t)e->max_items + 1, false);
    if (here) { /* the step builds the index arrays in place */
        e->h_tok = e->tok, e->h_pos = e->pos, e->h_tok_seq = e->tok_seq, e->h_slot = e->slot;
        e->h_tables = e->tables, e->h_runs = e->runs, e->h_logits = e->logits;
    } else { /* ... or on the host, then copies them up */
        /* a decode step's every row comes down before any is handed out
         * (so that a step is one graph, one wait) */
        e->logit_cap = e->max_items > LOGIT_ROWS ? e->max_items : LOGIT_ROWS;
        SCRATCH(e->h_logits, (size_t)e->logit_cap * hp->n_vocab, true);
        SCRATCH(e->h_tok, T, true);
        SCRATCH(e->h_pos, T, true);
        SCRATCH(e->h_tok_seq, T, true);
        SCRATCH(e->h_slot, T, true);
        SCRATCH(e->h_tables, (size_t)e->max_items * e->max_blocks, true);
        SCRATCH(e->h_runs, (size_t)e->max_items + 1, true);
        /* decode steps (at most max_items tokens) may split their contexts;
         * larger steps run unsplit (the launcher's rule) */
        e->attn_ws_bytes = pd_attn_workspace_bytes(e->max_items, hp->n_head, hp->head_dim,
                                                   PD_ATTN_MAX_SPLITS);
        if (!(e->attn_ws = scratch(e, e->attn_ws_bytes, false)))
            goto nomem;
        size_t rows = T > LOGIT_ROWS ? T : LOGIT_ROWS, cols = hp->n_embd;
        cols = qd > cols ? qd : cols;
        cols = hp->n_ff > cols ? hp->n_ff : cols;
        if (e->w_type == PD_DT_BF16 && !(e->xs = scratch(e, rows * cols * 2, false)))
            goto nomem;
    }
    SCRATCH(e->out_item, T, true);
    SCRATCH(e->out_row, T, true);
    if (!here && !p->no_cuda_graphs) {
        if (!(e->graph = calloc(2 * ((size_t)e->max_items + 1), sizeof(*e->graph))) ||
            !(e->graph_seen = calloc(2 * ((size_t)e->max_items + 1), 1)))
            goto nomem;
        e->graphs = true;
    }
    if (here && !(e->sampler = pd_sampler_new(hp->n_vocab)))
        goto nomem;
#if PD_HAVE_CUDA
    if (!here) {
        const size_t C = e->logit_cap;
        SCRATCH(e->h_sp, C, true);
        SCRATCH(e->d_sp, C, false);
        SCRATCH(e->h_hs, C + 1, true);
        SCRATCH(e->d_hs, C + 1, false);
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
        e->sws_bytes = pd_sample_cuda_workspace(LOGIT_ROWS, hp->n_vocab);
        if (!(e->d_sws = scratch(e, e->sws_bytes, false)))
            goto nomem;
    }
#endif

    struct pd_kvcache_params kp = {
        .layout = {.n_layer = hp->n_layer, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim,
                   .block_size = bs},
        .mem_bytes = p->kv_cache_bytes,
        .dtype = p->kv_dtype,
    };
#if PD_HAVE_CUDA
    if (e->device == PD_DEVICE_CUDA) {
        /* the pool in device memory, whole blocks: of --kv-cache-memory, or
         * of what the weights and scratch leave under the share of the
         * device's memory the process may use (--gpu-memory-utilization) */
        const uint64_t bb = pd_kv_block_elems(&kp.layout) * (kp.dtype == PD_DT_F32 ? 4 : 2);
        uint64_t bytes = p->kv_cache_bytes;
        if (p->gpu_memory_utilization > 0) {
            size_t free_b = 0, total_b = 0;
            if ((rc = pd_cuda_mem_info(&free_b, &total_b)) < 0) {
                rc = pd_errf(err, errlen, rc, "engine: the device's memory: %s", strerror(-rc));
                goto out_free;
            }
            const double cap = p->gpu_memory_utilization * (double)total_b;
            const double used = (double)(total_b - free_b);
            if (cap <= used) {
                rc = pd_errf(err, errlen, -ENOMEM, "engine: --gpu-memory-utilization %.2f of %.1f "
                             "GiB leaves no room for the KV pool: %.1f GiB are in use already",
                             p->gpu_memory_utilization, (double)total_b / (1u << 30),
                             used / (1u << 30));
                goto out_free;
            }
            bytes = (uint64_t)(cap - used);
        }
        uint64_t nb = bb ? bytes / bb : 0;
        nb = nb > PD_KV_MAX_BLOCKS ? PD_KV_MAX_BLOCKS : nb;
        kp.mem_bytes = bytes;
        if (nb) { /* none: pd_kvcache_new says why */
            kp.mem_bytes = nb * bb;
            if (!(kp.pool = dev_alloc(e, kp.mem_bytes))) {
                rc = pd_errf(err, errlen, -ENOMEM, "engine: no device memory for a KV pool of %"
                             PRIu64 " bytes", kp.mem_bytes);
                goto out_free;
            }
        }
    }
#endif
    if ((rc = pd_kvcache_new(&kp, &e->kc, err, errlen)) < 0)
        goto out_free;
#if PD_HAVE_CUDA
    if (e->device == PD_DEVICE_CUDA && p->kv_staging) {
        /* the KV channel's blocks in host memory (mapped, kept out of core
         * dumps, by common/kvcache), page-locked so that the copies between
         * it and the device pool are DMA; by default room for two prompts of
         * the longest length */
        char why[200];
        const uint64_t bb = pd_kvcache_block_bytes(e->kc), full = (uint64_t)e->max_blocks * bb;
        struct pd_kvcache_params sp = kp;
        sp.pool = NULL;
        sp.mem_bytes = p->kv_staging_bytes ? p->kv_staging_bytes
                                           : (2 * full > (1u << 30) ? 2 * full : 1u << 30);
        if ((rc = pd_kvcache_new(&sp, &e->stage, why, sizeof(why))) < 0) {
            rc = pd_errf(err, errlen, rc, "engine: the KV channel's staging (%" PRIu64
                         " bytes): %s", sp.mem_bytes, why);
            goto out_free;
        }
        if (pd_kvcache_n_blocks(e->stage) < e->max_blocks)
            pd_log(PD_LOG_WARN, "engine: the KV channel's staging (%" PRIu64 " MiB) holds a "
                   "prompt of at most %" PRIu64 " tokens, --max-model-len is %" PRIu32 ": longer "
                   "prompts are refused by prefilld and prefilled locally by decoded",
                   sp.mem_bytes >> 20, (uint64_t)pd_kvcache_n_blocks(e->stage) * bs,
                   e->max_model_len);
        const uint64_t sb = pd_kvcache_block_bytes(e->stage) * pd_kvcache_n_blocks(e->stage);
        if ((rc = pd_cuda_host_register(pd_kvcache_pool(e->stage), sb)) < 0) {
            rc = pd_errf(err, errlen, rc, "engine: page-locking the KV channel's staging (%"
                         PRIu64 " bytes): %s", sb, strerror(-rc));
            goto out_free;
        }
        e->stage_pinned = true;
    }
    /* the uploads ran on the legacy stream, which the engine's (non-blocking)
     * stream does not wait for: they are complete before any step */
    if (e->device == PD_DEVICE_CUDA && (rc = pd_cuda_sync()) < 0) {
        rc = pd_errf(err, errlen, rc, "engine: uploading the weights: %s", strerror(-rc));
        goto out_free;
    }
#endif
    *out = e;
    return 0;

nomem:
    rc = pd_errf(err, errlen, -ENOMEM, "engine: out of memory for scratch buffers");
out_free:
    pd_engine_free(e);
    return rc;
}

struct pd_engine *pd_engine_free(struct pd_engine *e)
{
    if (!e)
        return NULL;
    for (size_t i = 0; i < e->n_owned; i++)
        free(e->owned[i]);
    free(e->owned);
    free(e->layers);
    pd_kvcache_free(e->kc);
#if PD_HAVE_CUDA
    if (e->stage_pinned)
        pd_cuda_host_unregister(pd_kvcache_pool(e->stage));
#endif
    pd_kvcache_free(e->stage);
#if PD_HAVE_CUDA
    for (uint32_t i = 0; e->graph && i < 2 * (e->max_items + 1); i++)
        pd_cuda_graph_free(e->graph[i]);
    for (size_t i = 0; i < e->n_pinned; i++) {
        pd_cuda_host_unregister(e->pinned[i]);
        free(e->pinned[i]);
    }
    pd_cuda_stream_free(e->stream);
#endif
    free(e->graph);
    free(e->graph_seen);
    free(e->pinned);
    pd_sampler_free(e->sampler);
#if PD_HAVE_CUDA
    pd_cuda_free(e->d_hist);
    if (e->h_hist) {
        pd_cuda_host_unregister(e->h_hist);
        free(e->h_hist);
    }
#endif
    for (size_t i = 0; i < e->n_host; i++)
        free(e->host[i]);
    free(e->host);
#if PD_HAVE_CUDA
    for (size_t i = 0; i < e->n_dev; i++)
        pd_cuda_free(e->dev[i]);
#endif
    free(e->dev);
    free(e);
    return NULL;
}

const struct pd_model *pd_engine_model(const struct pd_engine *e) { return e->model; }
int pd_engine_on_device(const struct pd_engine *e) { return e->device != PD_DEVICE_CPU; }

uint32_t pd_engine_cuda_graphs(const struct pd_engine *e)
{
    uint32_t n = 0;
    for (uint32_t i = 0; e->graphs && i < 2 * (e->max_items + 1); i++)
        n += e->graph[i] != NULL;
    return n;
}
struct pd_kvcache *pd_engine_kvcache(struct pd_engine *e) { return e->kc; }
struct pd_kvcache *pd_engine_kv_staging(struct pd_engine *e) { return e->stage; }
struct pd_kvcache *pd_engine_kv_channel_pool(struct pd_engine *e)
{
    return e->stage ? e->stage : e->kc;
}

void pd_engine_kv_path(struct pd_engine *e, char *buf, size_t n)
{
    const struct pd_kvcache *c = pd_engine_kv_channel_pool(e);
    const uint64_t bb = pd_kvcache_block_bytes(c), nb = pd_kvcache_n_blocks(c);
    if (e->stage)
        snprintf(buf, n, "KV channel: the GPU pool staged through %.0f MiB of page-locked host "
                 "memory (%" PRIu64 " blocks of %" PRIu64 " bytes; copies by cudaMemcpyAsync, "
                 "tags on the host)", (double)(bb * nb) / (1u << 20), nb, bb);
    else if (e->device == PD_DEVICE_CPU)
        snprintf(buf, n, "KV channel: blocks move in place from and to the host pool (%" PRIu64
                 " blocks of %" PRIu64 " bytes)", nb, bb);
    else
        snprintf(buf, n, "KV channel: none (the GPU engine has no staging)");
}

int pd_engine_kv_stage(struct pd_engine *e, bool to_host, const uint32_t *pool_blocks,
                       const uint32_t *stage_blocks, uint32_t n, char *err, size_t errlen)
{
    if (!e->stage)
        return pd_errf(err, errlen, -EINVAL, "engine: no KV staging (a GPU engine made with "
                       "kv_staging has one)");
    const uint32_t np = pd_kvcache_n_blocks(e->kc), ns = pd_kvcache_n_blocks(e->stage);
    for (uint32_t i = 0; i < n; i++)
        if (pool_blocks[i] >= np || stage_blocks[i] >= ns)
            return pd_errf(err, errlen, -EINVAL, "engine: KV staging copy of block %" PRIu32
                           " <-> %" PRIu32 ": outside the pool (%" PRIu32 ") or staging (%"
                           PRIu32 ")", pool_blocks[i], stage_blocks[i], np, ns);
    /* one asynchronous copy per run of blocks consecutive on both sides, on
     * the stream the steps run on (after every step issued so far), then
     * one wait */
    const uint64_t bb = pd_kvcache_block_bytes(e->kc);
    char *dev = (char *)pd_kvcache_pool(e->kc), *host = (char *)pd_kvcache_pool(e->stage);
    int rc = 0;
    for (uint32_t i = 0, j; i < n && rc == 0; i = j) {
        for (j = i + 1; j < n && pool_blocks[j] == pool_blocks[j - 1] + 1 &&
                        stage_blocks[j] == stage_blocks[j - 1] + 1; j++)
            ;
        char *d = dev + pool_blocks[i] * bb, *h = host + stage_blocks[i] * bb;
        rc = e->k->copy(to_host ? h : d, to_host ? d : h, (j - i) * bb, e->stream);
    }
    int rs = e->k->sync(e->stream); /* also after a failed enqueue: nothing may still write */
    rc = rc < 0 ? rc : rs;
    if (rc < 0)
        return pd_errf(err, errlen, rc, "engine: copying %" PRIu32 " KV blocks %s the GPU: %s",
                       n, to_host ? "from" : "to", strerror(-rc));
    return 0;
}
uint32_t pd_engine_n_vocab(const struct pd_engine *e) { return e->hp.n_vocab; }
uint32_t pd_engine_max_model_len(const struct pd_engine *e) { return e->max_model_len; }
uint32_t pd_engine_max_batched_tokens(const struct pd_engine *e) { return e->max_tokens; }

void pd_engine_seq_release(struct pd_engine *e, struct pd_kvseq *seq)
{
    pd_kvseq_release(e->kc, seq);
}

/* Everything that can be wrong with a batch, checked before any state changes. */
static int validate(const struct pd_engine *e, const struct pd_batch_item *items, uint32_t n,
                    uint32_t *total, char *err, size_t errlen)
{
    uint64_t sum = 0, blocks = 0;

    bool sampled = false, plain = false;

    if (n == 0 || n > e->max_items)
        return pd_errf(err, errlen, -EINVAL, "engine: %" PRIu32 " sequences in one step (1..%" PRIu32
                    ")", n, e->max_items);
    for (uint32_t i = 0; i < n; i++) {
        const struct pd_batch_item *it = &items[i];
        if (!it->seq || !it->tokens || it->n_tokens == 0)
            return pd_errf(err, errlen, -EINVAL, "engine: item %" PRIu32 " has no tokens (an empty "
                        "prompt)", i);
        if (it->n_logits > it->n_tokens || (it->n_logits && !it->logits && !it->sampling))
            return pd_errf(err, errlen, -EINVAL, "engine: item %" PRIu32 " asks for %" PRIu32
                        " logits of %" PRIu32 " tokens", i, it->n_logits, it->n_tokens);
        if (it->sampling) {
            char why[160];
            if (it->n_logits != 1 || !it->result || it->n_prompt > it->n_history ||
                it->n_history > e->max_model_len || (it->n_history && !it->history))
                return pd_errf(err, errlen, -EINVAL, "engine: item %" PRIu32 " samples: one row "
                               "of logits, a result, a history of at most %" PRIu32 " tokens "
                               "holding its prompt", i, e->max_model_len);
            if (pd_sampling_validate(it->sampling, e->hp.n_vocab, why, sizeof(why)) < 0)
                return pd_errf(err, errlen, -EINVAL, "engine: item %" PRIu32 ": %s", i, why);
        }
        sampled |= it->n_logits && it->sampling;
        plain |= it->n_logits && !it->sampling;
        if ((uint64_t)it->seq->n_tokens + it->n_tokens > e->max_model_len)
            return pd_errf(err, errlen, -E2BIG, "engine: sequence of %" PRIu32 " + %" PRIu32
                        " tokens exceeds the maximum model length of %" PRIu32,
                        it->seq->n_tokens, it->n_tokens, e->max_model_len);
        for (uint32_t t = 0; t < it->n_tokens; t++)
            if (it->tokens[t] < 0 || (uint32_t)it->tokens[t] >= e->hp.n_vocab)
                return pd_errf(err, errlen, -EINVAL, "engine: token id %" PRId32 " at position %"
                            PRIu32 " is out of range [0, %" PRIu32 ")", it->tokens[t], t,
                            e->hp.n_vocab);
        for (uint32_t j = 0; j < i; j++)
            if (items[j].seq == it->seq)
                return pd_errf(err, errlen, -EINVAL, "engine: a sequence appears twice in one step");
        sum += it->n_tokens;
        blocks += pd_kvseq_blocks_needed(e->kc, it->seq, it->seq->n_tokens + it->n_tokens);
    }
    if (sampled && plain)
        return pd_errf(err, errlen, -EINVAL, "engine: in one step every row of logits is "
                       "sampled, or none");
    if (sum > e->max_tokens)
        return pd_errf(err, errlen, -E2BIG, "engine: %" PRIu64 " tokens in one step exceed "
                    "max_batched_tokens %" PRIu32, sum, e->max_tokens);
    if (blocks > pd_kvcache_n_free(e->kc))
        return pd_errf(err, errlen, -ENOSPC, "engine: the step needs %" PRIu64 " KV blocks, %" PRIu32
                    " of %" PRIu32 " are free", blocks, pd_kvcache_n_free(e->kc),
                    pd_kvcache_n_blocks(e->kc));
    *total = (uint32_t)sum;
    return 0;
}

/* Rows [r0, r0 + m) to the items that asked for them: the logits from src;
 * in a sampling step the token sampled from src by the CPU's sampler, or on a
 * GPU the results kernels/sample.cu brought down. */
static int hand_out(struct pd_engine *e, const struct pd_batch_item *items, uint32_t r0,
                    uint32_t m, const float *src)
{
    const uint32_t V = e->hp.n_vocab;
    for (uint32_t r = 0; r < m; r++) {
        const struct pd_batch_item *it = &items[e->out_item[r0 + r]];
        const float *row = src + (size_t)r * V;
        if (!it->sampling) {
            memcpy(it->logits + (size_t)e->out_row[r0 + r] * V, row, V * sizeof(float));
            continue;
        }
        if (e->sampler) {
            const int32_t *h = it->history, *out = h ? h + it->n_prompt : NULL;
            int rc = pd_sample(e->sampler, it->sampling, row, h, it->n_prompt, out,
                               it->n_history - it->n_prompt, it->result);
            if (rc < 0)
                return rc;
            continue;
        }
        const uint32_t q = r0 + r;
        if (e->h_stok[q] < 0) /* parameters the kernel refused (validated: a bug) */
            return -EIO;
        struct pd_sample_result *res = it->result;
        res->token = e->h_stok[q];
        res->logprob = e->h_slp[q];
        res->n_top = e->h_ntop[q] <= PD_MAX_LOGPROBS ? e->h_ntop[q] : PD_MAX_LOGPROBS;
        memcpy(res->top, e->h_top + (size_t)q * PD_MAX_LOGPROBS, res->n_top * sizeof(*res->top));
    }
    return 0;
}

/* The step's work, issued on the engine's stream. The logits rows asked for
 * end in the items, or, on a GPU when they fit h_logits (every decode step),
 * on their way to h_logits with *pending rows to hand out after the caller
 * waits: the work then holds no wait, so that it can be captured as a CUDA
 * graph. */
static int forward(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                   uint32_t T, uint32_t *pending)
{
    /* a step with a prefill chunk: its items as runs for the prefill kernel
     * (the CPU and the decode kernel ignore them) */
    uint32_t max_run = 0;
    for (uint32_t i = 0; i < n_items; i++)
        max_run = items[i].n_tokens > max_run ? items[i].n_tokens : max_run;
    const uint32_t n_runs = max_run > 1 ? n_items : 0;
    const struct pd_hparams *hp = &e->hp;
    const struct pd_kernels *k = e->k;
    const struct pd_kv_geom kv = *pd_kvcache_layout(e->kc);
    const uint32_t D = hp->n_embd, qd = hp->n_head * hp->head_dim;
    const uint32_t kvd = hp->n_head_kv * hp->head_dim;
    uint64_t row_bytes;
    int rc = 0;

    pd_dtype_row_size(e->tok_embd->type, D, &row_bytes);
    struct pd_embed_args ea = {.out = e->x, .table = e->embd_table, .type = e->tok_embd->type,
                               .row_bytes = row_bytes, .tokens = e->tok, .n_tokens = T, .dim = D};
    if ((rc = k->embed(&ea, e->stream)) < 0)
        return rc;

    for (uint32_t l = 0; l < hp->n_layer && rc == 0; l++) {
        const struct layer_w *w = &e->layers[l];
        struct pd_rmsnorm_args na = {.out = e->h, .in = e->x, .weight = w->attn_norm,
                                     .n_rows = T, .dim = D, .eps = hp->norm_eps};
        struct pd_matmul_args mq = {.y = e->q, .x = e->h, .w = w->wq, .m = T, .n = qd, .k = D,
                                    .w_type = e->w_type, .x_scratch = e->xs};
        struct pd_matmul_args mk = mq, mv = mq;
        mk.y = e->kk, mk.w = w->wk, mk.n = kvd;
        mv.y = e->vv, mv.w = w->wv, mv.n = kvd;
        struct pd_rope_args rq = {.x = e->q, .pos = e->pos, .n_tokens = T, .n_heads = hp->n_head,
                                  .head_dim = hp->head_dim, .rope_dim = hp->rope_dim,
                                  .freq_base = hp->rope_freq_base, .freq_scale = e->rope_scale,
                                  .freq_factors = e->rope_factors};
        struct pd_rope_args rk = rq;
        rk.x = e->kk;
        rk.n_heads = hp->n_head_kv;
        struct pd_kv_write_args wa = {.pool = pd_kvcache_pool(e->kc), .kv = kv, .layer = l,
                                      .k = e->kk, .v = e->vv, .slot = e->slot, .n_tokens = T,
                                      .pool_type = pd_kvcache_dtype(e->kc)};
        struct pd_attn_args aa = {.out = e->att, .q = e->q, .pool = pd_kvcache_pool(e->kc),
                                  .kv = kv, .layer = l, .n_tokens = T, .n_head = hp->n_head,
                                  .tok_seq = e->tok_seq, .tok_pos = e->pos,
                                  .block_tables = e->tables, .max_blocks = e->max_blocks,
                                  .scale = 1.0f / sqrtf((float)hp->head_dim),
                                  .pool_type = pd_kvcache_dtype(e->kc),
                                  .max_ctx = e->max_model_len, .workspace = e->attn_ws,
                                  .workspace_bytes = e->attn_ws_bytes, .run_start = e->runs,
                                  .n_runs = n_runs, .max_run = max_run};
        struct pd_matmul_args mo = {.y = e->x, .x = e->att, .w = w->wo, .m = T, .n = D, .k = qd,
                                    .accumulate = 1, .w_type = e->w_type, .x_scratch = e->xs};
        struct pd_rmsnorm_args nf = na;
        nf.weight = w->ffn_norm;
        struct pd_matmul_args mg = {.y = e->gate, .x = e->h, .w = w->w_gate, .m = T,
                                    .n = hp->n_ff, .k = D, .w_type = e->w_type,
                                    .x_scratch = e->xs};
        struct pd_matmul_args mu = mg;
        mu.y = e->up;
        mu.w = w->w_up;
        struct pd_swiglu_args sa = {.out = e->gate, .gate = e->gate, .up = e->up,
                                    .n = (uint64_t)T * hp->n_ff};
        struct pd_matmul_args md = {.y = e->x, .x = e->gate, .w = w->w_down, .m = T, .n = D,
                                    .k = hp->n_ff, .accumulate = 1, .w_type = e->w_type,
                                    .x_scratch = e->xs};

        if ((rc = k->rmsnorm(&na, e->stream)) < 0 || (rc = k->matmul(&mq, e->stream)) < 0 || (rc = k->matmul(&mk, e->stream)) < 0 ||
            (rc = k->matmul(&mv, e->stream)) < 0 || (rc = k->rope(&rq, e->stream)) < 0 || (rc = k->rope(&rk, e->stream)) < 0 ||
            (rc = k->kv_write(&wa, e->stream)) < 0 || (rc = k->attention(&aa, e->stream)) < 0 ||
            (rc = k->matmul(&mo, e->stream)) < 0 || (rc = k->rmsnorm(&nf, e->stream)) < 0 ||
            (rc = k->matmul(&mg, e->stream)) < 0 || (rc = k->matmul(&mu, e->stream)) < 0 ||
            (rc = k->swiglu(&sa, e->stream)) < 0 || (rc = k->matmul(&md, e->stream)) < 0)
            return rc;
    }

    /* logits only where asked: gather the last n_logits rows of each item and
     * run the output projection as few GEMMs (one per LOGIT_ROWS rows), since
     * the vocabulary matrix is the largest read of a decode step */
    /* the rows are gathered as runs of consecutive source rows, one copy
     * each (a decode step's rows are all one run) */
    uint32_t t0 = 0, n_rows = 0, run_src = 0, run_len = 0;
    for (uint32_t i = 0; i < n_items; i++) {
        const struct pd_batch_item *it = &items[i];
        uint32_t first = t0 + it->n_tokens - it->n_logits;
        t0 += it->n_tokens;
        for (uint32_t j = 0; j < it->n_logits; j++, n_rows++) {
            e->out_item[n_rows] = i;
            e->out_row[n_rows] = j;
            if (run_len && run_src + run_len == first + j) {
                run_len++;
                continue;
            }
            if (run_len && (rc = k->copy(e->h + (size_t)(n_rows - run_len) * D,
                                         e->x + (size_t)run_src * D,
                                         (size_t)run_len * D * sizeof(float), e->stream)) < 0)
                return rc;
            run_src = first + j, run_len = 1;
        }
    }
    if (run_len && (rc = k->copy(e->h + (size_t)(n_rows - run_len) * D, e->x + (size_t)run_src * D,
                                 (size_t)run_len * D * sizeof(float), e->stream)) < 0)
        return rc;
    const bool gpu = e->h_logits != e->logits, defer = gpu && n_rows <= e->logit_cap;
    /* a sampling step's rows are one per item (validate), so they all fit */
    const bool smp = n_rows && items[e->out_item[0]].sampling;
    struct pd_rmsnorm_args na = {.out = e->h, .in = e->h, .weight = e->out_norm,
                                 .n_rows = n_rows, .dim = D, .eps = hp->norm_eps};
    if ((rc = k->rmsnorm(&na, e->stream)) < 0)
        return rc;
#if PD_HAVE_CUDA
    /* the rows' parameters, history offsets and prompt lengths, as
     * sampling_prepare left them in their page-locked buffers */
    if (gpu && smp &&
        ((rc = k->copy(e->d_sp, e->h_sp, n_rows * sizeof(*e->d_sp), e->stream)) < 0 ||
         (rc = k->copy(e->d_hs, e->h_hs, (n_rows + 1) * sizeof(*e->d_hs), e->stream)) < 0 ||
         (rc = k->copy(e->d_np, e->h_np, n_rows * sizeof(*e->d_np), e->stream)) < 0))
        return rc;
#endif
    for (uint32_t r0 = 0; r0 < n_rows; r0 += LOGIT_ROWS) {
        uint32_t m = n_rows - r0 < LOGIT_ROWS ? n_rows - r0 : LOGIT_ROWS;
        struct pd_matmul_args mo = {.y = e->logits, .x = e->h + (size_t)r0 * D, .w = e->w_out,
                                    .m = m, .n = hp->n_vocab, .k = D, .w_type = e->w_type,
                                    .x_scratch = e->xs};
        if ((rc = k->matmul(&mo, e->stream)) < 0)
            return rc;
        const size_t bytes = (size_t)m * hp->n_vocab * sizeof(float);
        if (!gpu) { /* the CPU: computed in place */
            if ((rc = hand_out(e, items, r0, m, e->h_logits)) < 0)
                return rc;
#if PD_HAVE_CUDA
        } else if (smp) { /* sampled where they are: only the results come down */
            struct pd_sample_args sa = {.logits = e->logits, .n_rows = m, .n_vocab = hp->n_vocab,
                                        .params = e->d_sp + r0, .hist = e->d_hist,
                                        .hist_start = e->d_hs + r0, .n_prompt = e->d_np + r0,
                                        .workspace = e->d_sws, .workspace_bytes = e->sws_bytes,
                                        .token = e->d_stok + r0, .logprob = e->d_slp + r0,
                                        .top = e->d_top + (size_t)r0 * PD_MAX_LOGPROBS,
                                        .n_top = e->d_ntop + r0};
            if ((rc = pd_sample_cuda(&sa, e->stream)) < 0)
                return rc;
#endif
        } else if (defer) { /* down from the GPU in one copy, handed out after the wait */
            if ((rc = k->copy(e->h_logits + (size_t)r0 * hp->n_vocab, e->logits, bytes,
                              e->stream)) < 0)
                return rc;
        } else { /* more rows than h_logits holds: a chunk at a time */
            if ((rc = k->copy(e->h_logits, e->logits, bytes, e->stream)) < 0 ||
                (rc = k->sync(e->stream)) < 0 || (rc = hand_out(e, items, r0, m, e->h_logits)) < 0)
                return rc;
        }
    }
    if (gpu && smp &&
        ((rc = k->copy(e->h_stok, e->d_stok, n_rows * sizeof(*e->h_stok), e->stream)) < 0 ||
         (rc = k->copy(e->h_slp, e->d_slp, n_rows * sizeof(*e->h_slp), e->stream)) < 0 ||
         (rc = k->copy(e->h_ntop, e->d_ntop, n_rows * sizeof(*e->h_ntop), e->stream)) < 0 ||
         (rc = k->copy(e->h_top, e->d_top, (size_t)n_rows * PD_MAX_LOGPROBS * sizeof(*e->h_top),
                       e->stream)) < 0))
        return rc;
    *pending = defer ? n_rows : 0;
    return 0;
}

/* the step's index arrays to where the kernels read them (nothing to do on
 * the CPU: they are built in place) */
static int upload_indices(struct pd_engine *e, uint32_t n_items, uint32_t T)
{
    int rc = 0;
    if (e->device == PD_DEVICE_CPU)
        return 0;
    /* a sequence's table past its blocks is not read (positions bound it) */
    void *s = e->stream;
    if ((rc = e->k->copy(e->tok, e->h_tok, T * sizeof(*e->tok), s)) < 0 ||
        (rc = e->k->copy(e->pos, e->h_pos, T * sizeof(*e->pos), s)) < 0 ||
        (rc = e->k->copy(e->tok_seq, e->h_tok_seq, T * sizeof(*e->tok_seq), s)) < 0 ||
        (rc = e->k->copy(e->slot, e->h_slot, T * sizeof(*e->slot), s)) < 0 ||
        (rc = e->k->copy(e->runs, e->h_runs, (n_items + 1) * sizeof(*e->runs), s)) < 0 ||
        (rc = e->k->copy(e->tables, e->h_tables,
                         (size_t)n_items * e->max_blocks * sizeof(*e->tables), s)) < 0)
        return rc;
    return 0;
}

#if PD_HAVE_CUDA
static void graphs_off(struct pd_engine *e, const char *what, uint32_t n, int rc)
{
    pd_cuda_clear_error(); /* handled here: not the next kernel's failure */
    e->graphs = false;
    pd_log(PD_LOG_WARN, "engine: CUDA graphs off (%s a decode step of %" PRIu32 " failed: %s); "
           "steps run as plain launches", what, n, strerror(-rc));
}
#endif

/* A step on the GPU: its index arrays up, its work, then one wait; the
 * logits rows handed out after it. A decode step (one token and one row of
 * logits per item) replays the CUDA graph of its batch size and kind
 * (logits or sampled), captured and instantiated the second time that size
 * comes (the first runs as plain launches, so that cuBLAS and the kernels
 * have made what they make on first use outside the capture): the graph
 * holds the index arrays' copies from their fixed page-locked buffers, every
 * kernel and GEMM, and the results' copy down. A capture or a launch that
 * fails turns graphs off for the engine, with one log line, and the step
 * runs as plain launches. */
#if PD_HAVE_CUDA
static bool penalised(const struct pd_sampling *p)
{
    return p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f;
}

/* A sampling step on a GPU: each row's parameters, history offset and prompt
 * length into their page-locked buffers (forward copies them up), and the
 * histories of rows with penalties up into d_hist (grown as needed). *pen:
 * whether any went (such a step is not a graph: d_hist may move). */
static int sampling_prepare(struct pd_engine *e, const struct pd_batch_item *items,
                            uint32_t n_items, bool *pen)
{
    uint64_t off = 0;
    uint32_t r = 0;
    *pen = false;
    for (uint32_t i = 0; i < n_items; i++) {
        const struct pd_batch_item *it = &items[i];
        if (!it->n_logits)
            continue;
        e->h_sp[r] = *it->sampling;
        e->h_hs[r] = (uint32_t)off;
        e->h_np[r++] = it->n_prompt;
        off += it->n_history;
        *pen |= penalised(it->sampling);
    }
    e->h_hs[r] = (uint32_t)off;
    if (!*pen)
        return 0;
    if (off > e->hist_cap) { /* the stream is idle between steps */
        uint64_t cap = off > 2 * e->hist_cap ? off : 2 * e->hist_cap;
        cap = cap < 4096 ? 4096 : cap;
        const size_t bytes = (cap * sizeof(int32_t) + 4095) / 4096 * 4096;
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
        if (e->h_hist) {
            pd_cuda_host_unregister(e->h_hist);
            free(e->h_hist);
        }
        pd_cuda_free(e->d_hist);
        e->h_hist = h, e->d_hist = d, e->hist_cap = cap;
    }
    /* only the penalised rows' histories: the others' are never read (their
     * length, the draw's position, is in the offsets) */
    off = 0;
    int rc = 0;
    for (uint32_t i = 0; i < n_items && rc == 0; i++) {
        const struct pd_batch_item *it = &items[i];
        if (!it->n_logits)
            continue;
        if (it->n_history && penalised(it->sampling)) {
            memcpy(e->h_hist + off, it->history, it->n_history * sizeof(int32_t));
            rc = e->k->copy(e->d_hist + off, e->h_hist + off, it->n_history * sizeof(int32_t),
                            e->stream);
        }
        off += it->n_history;
    }
    return rc;
}
#endif

static int run_step(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                    uint32_t T)
{
    uint32_t pending = 0;
    int rc;
#if PD_HAVE_CUDA
    bool smp = false; /* validate: every row samples, or none does */
    for (uint32_t i = 0; i < n_items && e->device == PD_DEVICE_CUDA; i++)
        if (items[i].n_logits) {
            smp = items[i].sampling != NULL;
            break;
        }
    bool pen = false;
    if (smp && (rc = sampling_prepare(e, items, n_items, &pen)) < 0)
        return rc;
    bool decode = e->graphs && !pen;
    for (uint32_t i = 0; i < n_items && decode; i++)
        decode = items[i].n_tokens == 1 && items[i].n_logits == 1;
    const uint32_t key = 2 * n_items + smp;
    if (decode && !e->graph_seen[key]) {
        e->graph_seen[key] = 1;
        decode = false;
    }
    if (decode && !e->graph[key]) {
        struct pd_cuda_graph *g = NULL;
        int rb = pd_cuda_graph_begin(e->stream), rf = 0, re = 0;
        if (rb == 0) {
            rf = upload_indices(e, n_items, T);
            if (rf == 0)
                rf = forward(e, items, n_items, T, &pending);
            re = pd_cuda_graph_end(e->stream, &g);
        }
        if (rb < 0 || rf < 0 || re < 0 || pending != n_items) {
            pd_cuda_graph_free(g);
            decode = false;
            graphs_off(e, "capturing", n_items,
                       rb < 0 ? rb : rf < 0 ? rf : re < 0 ? re : -EPROTO);
        } else {
            e->graph[key] = g;
        }
    }
    rc = -1;
    if (decode) {
        /* the rows as the captured forward laid them out: one per item */
        for (uint32_t r = 0; r < n_items; r++)
            e->out_item[r] = r, e->out_row[r] = 0;
        pending = n_items;
        if ((rc = pd_cuda_graph_launch(e->graph[key], e->stream)) < 0) {
            e->graph[key] = pd_cuda_graph_free(e->graph[key]);
            graphs_off(e, "launching the graph of", n_items, rc);
        }
    }
    if (rc < 0)
#endif
    {
        rc = upload_indices(e, n_items, T);
        if (rc == 0)
            rc = forward(e, items, n_items, T, &pending);
    }
    /* the step ends here on every device: its errors are known, its
     * index arrays and logits buffers free for the next */
    int rs = e->k->sync(e->stream);
    if ((rc = rc < 0 ? rc : rs) < 0)
        return rc;
    return hand_out(e, items, 0, pending, e->h_logits);
}

int pd_engine_step(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                   char *err, size_t errlen)
{
    const uint32_t bs = pd_kvcache_layout(e->kc)->block_size;
    uint32_t T = 0, reserved = 0;
    int rc;

    if ((rc = validate(e, items, n_items, &T, err, errlen)) < 0)
        return rc;
    for (; reserved < n_items; reserved++) {
        const struct pd_batch_item *it = &items[reserved];
        if ((rc = pd_kvseq_reserve(e->kc, it->seq, it->seq->n_tokens + it->n_tokens)) < 0) {
            pd_errf(err, errlen, rc, "engine: cannot reserve KV blocks: %s", strerror(-rc));
            goto undo;
        }
    }

    uint32_t t = 0;
    for (uint32_t i = 0; i < n_items; i++) {
        const struct pd_batch_item *it = &items[i];
        const struct pd_kvseq *s = it->seq;
        memcpy(e->h_tables + (size_t)i * e->max_blocks, s->blocks, s->n_blocks * sizeof(uint32_t));
        e->h_runs[i] = (int32_t)t;
        for (uint32_t j = 0; j < it->n_tokens; j++, t++) {
            uint32_t p = s->n_tokens + j;
            e->h_tok[t] = it->tokens[j];
            e->h_pos[t] = (int32_t)p;
            e->h_tok_seq[t] = (int32_t)i;
            e->h_slot[t] = (int64_t)s->blocks[p / bs] * bs + p % bs;
        }
    }
    e->h_runs[n_items] = (int32_t)t;
    if ((rc = run_step(e, items, n_items, T)) < 0) {
        pd_errf(err, errlen, rc, "engine: forward pass failed: %s", strerror(-rc));
        goto undo;
    }
    for (uint32_t i = 0; i < n_items; i++)
        items[i].seq->n_tokens += items[i].n_tokens;
    return 0;

undo:
    /* back to the tables the sequences had: blocks reserved here are returned */
    for (uint32_t i = 0; i < reserved; i++)
        pd_kvseq_trim(e->kc, items[i].seq, items[i].seq->n_tokens);
    return rc;
}

int pd_engine_prefill(struct pd_engine *e, struct pd_kvseq *seq, const int32_t *tokens,
                      uint32_t n, float *last_logits, char *err, size_t errlen)
{
    const uint32_t start = seq->n_tokens;
    int rc;

    if (n == 0)
        return pd_errf(err, errlen, -EINVAL, "engine: empty prompt");
    if ((uint64_t)start + n > e->max_model_len)
        return pd_errf(err, errlen, -E2BIG, "engine: prompt of %" PRIu32 " tokens exceeds the "
                    "maximum model length of %" PRIu32, start + n, e->max_model_len);
    for (uint32_t done = 0; done < n;) {
        uint32_t c = n - done < e->max_tokens ? n - done : e->max_tokens;
        int last = done + c == n;
        struct pd_batch_item it = {.seq = seq, .tokens = tokens + done, .n_tokens = c,
                                   .n_logits = last && last_logits ? 1 : 0,
                                   .logits = last ? last_logits : NULL};
        if ((rc = pd_engine_step(e, &it, 1, err, errlen)) < 0) {
            /* the chunks already in the pool go too: the sequence is as it was */
            seq->n_tokens = start;
            pd_kvseq_trim(e->kc, seq, start);
            return rc;
        }
        done += c;
    }
    return 0;
}

void pd_engine_kv_layout(const struct pd_engine *e, struct pd_kv_layout *out)
{
    const struct pd_kv_geom *g = pd_kvcache_layout(e->kc);
    memset(out, 0, sizeof(*out));
    out->n_layer = g->n_layer;
    out->n_head_kv = g->n_head_kv;
    out->head_dim = g->head_dim;
    out->block_size = g->block_size;
    out->kv_dtype = pd_kvcache_dtype(e->kc);
    out->block_bytes = pd_kvcache_block_bytes(e->kc);
    memcpy(out->fingerprint, pd_model_fingerprint(e->model), PD_HS_FP_LEN);
}
