/* common/engine/engine_cpu: the CPU backend. The kernels' CPU references
 * (kernels/<op>.c, GEMMs through OpenBLAS), weights dequantized to fp32 at
 * load (fp32 tensors used in place), host scratch, the index arrays built in
 * place, sampling by the CPU's sampler as rows are handed out. */
#include "engine_internal.h"

#include "errf.h"
#include "quant.h"
#include "sample.h"

#include <errno.h>
#include <inttypes.h>
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

static int layer_mat(struct pd_engine *e, uint32_t l, enum pd_weight w, struct pd_mat *out)
{
    out->type = PD_DT_F32;
    return (out->data = layer_f32(e, l, w)) ? 0 : -ENOMEM;
}

/* The weights as the CPU reads them: fp32 (dequantized copies where stored
 * otherwise). */
static int cpu_init(struct pd_engine *e, const struct pd_engine_params *p, char *err,
                    size_t errlen)
{
    (void)p;
    const struct pd_model *m = e->model;
    e->layers = calloc(e->hp.n_layer, sizeof(*e->layers));
    if (!e->layers)
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory");
    for (uint32_t l = 0; l < e->hp.n_layer; l++) {
        struct layer_w *w = &e->layers[l];
        if (!(w->attn_norm = layer_f32(e, l, PD_W_ATTN_NORM)) ||
            !(w->ffn_norm = layer_f32(e, l, PD_W_FFN_NORM)) ||
            layer_mat(e, l, PD_W_ATTN_Q, &w->wq) < 0 || layer_mat(e, l, PD_W_ATTN_K, &w->wk) < 0 ||
            layer_mat(e, l, PD_W_ATTN_V, &w->wv) < 0 ||
            layer_mat(e, l, PD_W_ATTN_OUT, &w->wo) < 0 ||
            layer_mat(e, l, PD_W_FFN_GATE, &w->w_gate) < 0 ||
            layer_mat(e, l, PD_W_FFN_UP, &w->w_up) < 0 ||
            layer_mat(e, l, PD_W_FFN_DOWN, &w->w_down) < 0)
            return pd_errf(err, errlen, -ENOMEM,
                           "engine: out of memory for layer %" PRIu32 " weights", l);
    }
    e->tok_embd = pd_model_tok_embd(m);
    e->embd_table = e->tok_embd->data;
    e->w_out.type = PD_DT_F32;
    if (!(e->out_norm = pd_engine_weight_f32(e, pd_model_output_norm(m))) ||
        !(e->w_out.data = pd_engine_weight_f32(e, pd_model_output(m))))
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory for output weights");
    if (pd_model_rope_freqs(m))
        e->rope_factors = pd_model_rope_freqs(m)->data;
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
    e->h_ix = e->ix, e->h_logits = e->logits;
    return (e->sampler = pd_sampler_new(e->hp.n_vocab)) ? 0 : -ENOMEM;
}

static void cpu_done(struct pd_engine *e) { pd_sampler_free(e->sampler); }

static int cpu_step(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                    uint32_t T)
{
    uint32_t pending = 0;
    int rc = pd_engine_fwd(e, items, n_items, T, &pending);
    if (rc < 0)
        return rc;
    return pd_engine_fwd_hand_out(e, items, 0, pending, e->h_logits);
}

const struct pd_backend pd_backend_cpu = {
    .name = "cpu",
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
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
};
