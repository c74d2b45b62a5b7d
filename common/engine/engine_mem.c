/* common/engine/engine_mem: memory the engine owns on the host, whatever
 * the device: scratch (the CPU backend's) and dequantized weights. */
#include "engine_internal.h"

#include "quant.h"

#include <errno.h>
#include <stdlib.h>

void *pd_engine_host_alloc(struct pd_engine *e, size_t bytes)
{
    void **h = realloc(e->host, (e->n_host + 1) * sizeof(*h));
    if (!h)
        return NULL;
    e->host = h;
    void *p = calloc(1, bytes ? bytes : 1);
    if (p)
        e->host[e->n_host++] = p;
    return p;
}

const float *pd_engine_weight_f32(struct pd_engine *e, const struct pd_tensor *t)
{
    if (t->type == PD_DT_F32 && ((uintptr_t)t->data % sizeof(float)) == 0)
        return t->data;
    uint64_t row_bytes, rows = t->ne[1] * t->ne[2] * t->ne[3];
    if (pd_dtype_row_size(t->type, t->ne[0], &row_bytes) < 0)
        return NULL;
    float *w = malloc(t->ne[0] * rows * sizeof(float));
    void **o = realloc(e->owned, (e->n_owned + 1) * sizeof(*o));
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

/* the n blocks of a list, then the list */
static void free_all(void **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

void pd_engine_mem_free(struct pd_engine *e)
{
    free_all(e->owned, e->n_owned);
    free_all(e->host, e->n_host);
    e->owned = e->host = NULL;
    e->n_owned = e->n_host = 0;
}

/* The architecture's vectors beside the matrices (biases, q/k norms) in
 * fp32: 0, or -ENOMEM; those it has not stay NULL. */
int pd_engine_layer_vectors(struct pd_engine *e, uint32_t l, struct layer_w *w,
                            const float *(*get)(struct pd_engine *, const struct pd_tensor *))
{
    const struct { enum pd_weight w; const float **dst; } v[] = {
        {PD_W_ATTN_Q_BIAS, &w->bq},     {PD_W_ATTN_K_BIAS, &w->bk}, {PD_W_ATTN_V_BIAS, &w->bv},
        {PD_W_ATTN_Q_NORM, &w->q_norm}, {PD_W_ATTN_K_NORM, &w->k_norm}};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        if (pd_model_weight_used(&e->hp, v[i].w) &&
            !(*v[i].dst = get(e, pd_model_layer_tensor(e->model, l, v[i].w))))
            return -ENOMEM;
    return 0;
}
