/* common/engine/engine_cpu: the CPU backend. The kernels' CPU references
 * (kernels/<op>.c); weight matrices kept as the model stores them and
 * multiplied by kernels/matmul.c on the engine's pool of threads (float
 * activations: kernels/qdot's dots for small batches, unpacked tiles and
 * OpenBLAS above; 8-bit activations with PD_CPU_W_STORED_Q8), or
 * dequantized to fp32 at load (PD_CPU_W_F32); norms and the like as fp32;
 * host scratch, the index arrays built in place, sampling by the CPU's
 * sampler as rows are handed out. docs/internals/quant.md. */
#include "engine_internal.h"

#include "errf.h"
#include "log.h" /* pd_now_ns */
#include "parallel.h"
#include "qdot.h"
#include "quant.h"
#include "sample.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
CPU_OP(bias, pd_bias_args)
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

static const float *layer_f32(struct pd_engine *e, uint32_t l, enum pd_weight w)
{
    return pd_engine_weight_f32(e, pd_model_layer_tensor(e->model, l, w));
}

/* A matrix as the CPU multiplies it: in place when its type has dots (or is
 * F32) and the engine keeps weights as stored, else dequantized to fp32.
 * counts[type] tallies what was kept, for the engine's note. */
static int cpu_mat(struct pd_engine *e, bool f32, const struct pd_tensor *t, struct pd_mat *out,
                   uint32_t *counts)
{
    if (!f32 && (pd_qdot_get(t->type, PD_ISA_SCALAR) ||
                 (t->type == PD_DT_F32 && (uintptr_t)t->data % sizeof(float) == 0))) {
        out->type = t->type;
        out->data = t->data;
    } else {
        out->type = PD_DT_F32;
        if (!(out->data = pd_engine_weight_f32(e, t)))
            return -ENOMEM;
    }
    counts[out->type]++;
    return 0;
}

/* "Q4_1 x210, Q8_0 x1" of what counts holds */
static void type_list(const uint32_t *counts, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (uint32_t t = 0; t < PD_DT_COUNT && len < n; t++)
        if (counts[t])
            len += (size_t)snprintf(buf + len, n - len, "%s%s x%" PRIu32, len ? ", " : "",
                                    pd_dtype_name(t), counts[t]);
}

/* The weights as the CPU reads them (cpu_mat), and the pool of threads. */
static int cpu_init(struct pd_engine *e, const struct pd_engine_params *p, char *err,
                    size_t errlen)
{
    static const enum pd_weight mats[] = {PD_W_ATTN_Q,    PD_W_ATTN_K,  PD_W_ATTN_V,
                                          PD_W_ATTN_OUT,  PD_W_FFN_GATE, PD_W_FFN_UP,
                                          PD_W_FFN_DOWN};
    const struct pd_model *m = e->model;
    const bool f32 = p->cpu_weights == PD_CPU_W_F32;
    if ((unsigned)p->cpu_weights > PD_CPU_W_F32)
        return pd_errf(err, errlen, -EINVAL, "engine: unknown CPU weight mode %d",
                       (int)p->cpu_weights);
    e->act_q8 = p->cpu_weights == PD_CPU_W_STORED_Q8;
    uint32_t counts[PD_DT_COUNT] = {0};
    e->layers = calloc(e->hp.n_layer, sizeof(*e->layers));
    if (!e->layers)
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory");
    for (uint32_t l = 0; l < e->hp.n_layer; l++) {
        struct layer_w *w = &e->layers[l];
        struct pd_mat *dst[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up,
                                &w->w_down};
        if (!(w->attn_norm = layer_f32(e, l, PD_W_ATTN_NORM)) ||
            !(w->ffn_norm = layer_f32(e, l, PD_W_FFN_NORM)) ||
            pd_engine_layer_vectors(e, l, w, pd_engine_weight_f32) < 0)
            return pd_errf(err, errlen, -ENOMEM, "engine: out of memory for layer %" PRIu32, l);
        for (size_t i = 0; i < sizeof(mats) / sizeof(mats[0]); i++)
            if (cpu_mat(e, f32, pd_model_layer_tensor(m, l, mats[i]), dst[i], counts) < 0)
                return pd_errf(err, errlen, -ENOMEM,
                               "engine: out of memory for layer %" PRIu32 " weights", l);
    }
    e->tok_embd = pd_model_tok_embd(m);
    e->embd_table = e->tok_embd->data;
    if (!(e->out_norm = pd_engine_weight_f32(e, pd_model_output_norm(m))) ||
        cpu_mat(e, f32, pd_model_output(m), &e->w_out, counts) < 0)
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory for output weights");
    e->rope_factors = pd_model_rope_factors(m);
    const unsigned threads = p->cpu_threads ? p->cpu_threads : pd_parallel_count(PD_PARALLEL_MAX);
    if (!(e->pool = pd_pool_new(threads)))
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory for the thread pool");
    e->isa = pd_isa_best();
    char types[160];
    type_list(counts, types, sizeof(types));
    const char *how = f32         ? "as fp32"
                      : e->act_q8 ? "as stored, 8-bit activations"
                                  : "as stored, float activations";
    const unsigned n = pd_pool_size(e->pool);
    snprintf(e->desc, sizeof(e->desc), "engine: CPU, matrices %s (%s), %u thread%s, %s dots", how,
             types, n, n == 1 ? "" : "s", pd_isa_name((enum pd_isa)e->isa));
    return 0;
}

static void *cpu_alloc(struct pd_engine *e, size_t bytes, bool host)
{
    (void)host;
    return pd_engine_host_alloc(e, bytes);
}

/* the step builds the index arrays in place; the sampler samples as rows
 * are handed out */
static int cpu_scratch(struct pd_engine *e, const struct pd_engine_params *p)
{
    (void)p;
    const struct pd_hparams *hp = &e->hp;
    uint32_t m = e->max_tokens > LOGIT_ROWS ? e->max_tokens : LOGIT_ROWS;
    uint32_t k = hp->n_embd, qd = hp->n_head * hp->head_dim;
    k = qd > k ? qd : k;
    k = hp->n_ff > k ? hp->n_ff : k;
    if (!(e->mm_ws = pd_engine_host_alloc(e, pd_matmul_cpu_ws_bytes(m, k, pd_pool_size(e->pool)))))
        return -ENOMEM;
    e->h_ix = e->ix, e->h_logits = e->logits;
    return (e->sampler = pd_sampler_new(e->hp.n_vocab)) ? 0 : -ENOMEM;
}

static void cpu_done(struct pd_engine *e)
{
    pd_sampler_free(e->sampler);
    e->pool = pd_pool_free(e->pool);
}

static int cpu_step(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                    uint32_t T)
{
    uint32_t pending = 0;
    int rc = pd_engine_fwd(e, items, n_items, T, &pending);
    if (rc < 0)
        return rc;
    return pd_engine_fwd_hand_out(e, items, 0, pending, e->h_logits);
}

/* the kernel timer's marks: the clock (the CPU's kernels are done when they return) */
static void *cpu_marks_new(uint32_t n) { return calloc(n ? n : 1, sizeof(uint64_t)); }
static void cpu_marks_free(void *m) { free(m); }

static int cpu_mark(void *m, uint32_t i, void *stream)
{
    (void)stream;
    ((uint64_t *)m)[i] = pd_now_ns();
    return 0;
}

static int cpu_marks_span(void *m, uint32_t i, uint32_t j, double *ms)
{
    const uint64_t *t = m;
    *ms = (double)(t[j] - t[i]) / 1e6;
    return 0;
}

const struct pd_backend pd_backend_cpu = {
    .name = "cpu",
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .bias = cpu_bias,
    .kv_write = cpu_kv_write,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .init = cpu_init,
    .alloc = cpu_alloc,
    .scratch = cpu_scratch,
    .done = cpu_done,
    .step = cpu_step,
    .marks_new = cpu_marks_new,
    .marks_free = cpu_marks_free,
    .mark = cpu_mark,
    .marks_span = cpu_marks_span,
};
