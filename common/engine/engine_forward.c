/* common/engine/engine_forward: the forward pass, device-neutral. Every
 * kernel goes through the backend's table (e->b) on the engine's stream; the
 * pass reads in dataflow order, one checked call per step, as llama2.c's
 * `forward` does. An architecture's difference (a bias, a norm on q and k, a
 * rope scaling) is one more named step here, not a second pass. */
#include "engine_internal.h"

#include "quant.h"
#include "sample.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* What every step of one forward pass shares. */
struct fwd {
    struct pd_engine *e;
    const struct pd_backend *k;
    void *s; /* the stream */
    uint32_t T; /* tokens in the step */
    uint32_t n_runs, max_run; /* the prompt chunks as the prefill kernel's runs (0: none) */
    uint32_t run_tokens; /* the runs' tokens, [0, run_tokens); the single ones follow */
};

int pd_engine_fwd_mark(struct pd_engine *e, enum pd_kernel_kind k, void *stream, int rc)
{
    struct pd_ktimer *kt = e->kt;
    if (rc < 0 || !kt || kt->n >= kt->cap)
        return rc;
    kt->kind[kt->n] = (uint8_t)k;
    return e->b->mark(kt->marks, kt->n++, stream);
}

/* a kernel of kind k was launched with rc: the timer's mark after it */
static int timed(const struct fwd *f, enum pd_kernel_kind k, int rc)
{
    return pd_engine_fwd_mark(f->e, k, f->s, rc);
}

/* y (m, n), rows ldy apart (0: n), = x (m, k) W^T, or y += when
 * accumulate: a matrix of kind kd; x of x_type (F32, or the activations'
 * act_type) */
static int mm_ld(const struct fwd *f, enum pd_kernel_kind kd, float *y, uint32_t ldy, const void *x,
                 uint32_t x_type, const struct pd_mat *w, uint32_t m, uint32_t n, uint32_t k,
                 int accumulate)
{
    struct pd_matmul_args a = {.y = y,
                               .x = x,
                               .w = w->data,
                               .m = m,
                               .n = n,
                               .k = k,
                               .accumulate = accumulate,
                               .ldy = ldy,
                               .w_type = w->type,
                               .x_type = x_type,
                               .x_scratch = f->e->xs,
                               .pool = f->e->pool,
                               .ws = f->e->mm_ws,
                               .isa = f->e->isa,
                               .act_q8 = f->e->act_q8,
                               .gpu_ws = f->e->blas_ws,
                               .gpu_ws_bytes = f->e->blas_ws ? PD_MATMUL_CUBLAS_WS : 0};
    return timed(f, kd, f->k->matmul(&a, f->s));
}

static int mm(const struct fwd *f, enum pd_kernel_kind kd, float *y, const void *x, uint32_t x_type,
              const struct pd_mat *w, uint32_t m, uint32_t n, uint32_t k, int accumulate)
{
    return mm_ld(f, kd, y, 0, x, x_type, w, m, n, k, accumulate);
}

/* hn (n_rows, n_embd) = rmsnorm(in) * weight: a GEMM's input, in the
 * activations' type (act_type) */
static int norm(const struct fwd *f, const float *in, const float *weight, uint32_t n_rows)
{
    const struct pd_engine *e = f->e;
    struct pd_rmsnorm_args a = {.out = e->hn,
                                .in = in,
                                .weight = weight,
                                .n_rows = n_rows,
                                .dim = e->hp.n_embd,
                                .eps = e->hp.norm_eps,
                                .out_type = e->act_type};
    return timed(f, PD_K_NORM, f->k->rmsnorm(&a, f->s));
}

/* Qwen2: x (T, n_heads * head_dim) of the q, k, v rows += b, after its
 * projection; no bias, no step */
static int bias(const struct fwd *f, float *x, const float *b, uint32_t n_heads)
{
    struct pd_bias_args a = {
        .x = x, .bias = b, .n_rows = f->T, .dim = n_heads * f->e->hp.head_dim, .ld = f->e->qkv_ld};
    return b ? timed(f, PD_K_BIAS, f->k->bias(&a, f->s)) : 0;
}

/* row r of activations p (rows of dim elements of act_type) */
static const void *act_row(const struct pd_engine *e, const void *p, uint32_t r, uint32_t dim)
{
    const size_t es = e->act_type == PD_DT_BF16 ? 2 : sizeof(float);
    return (const char *)p + (size_t)r * dim * es;
}

/* Qwen3: each head of x (T, n_heads, head_dim) of the q, k, v rows RMS-normed
 * with w before rope; no weight, no step */
static int head_norm(const struct fwd *f, float *x, const float *w, uint32_t n_heads)
{
    const struct pd_engine *e = f->e;
    struct pd_rmsnorm_args a = {.out = x,
                                .in = x,
                                .weight = w,
                                .n_rows = f->T * n_heads,
                                .dim = e->hp.head_dim,
                                .eps = e->hp.norm_eps,
                                .per_token = n_heads,
                                .ld = e->qkv_ld};
    return w ? timed(f, PD_K_NORM, f->k->rmsnorm(&a, f->s)) : 0;
}

/* RoPE of q's and k's heads (T, n_head + n_head_kv, head_dim), side by side
 * in the q, k, v rows, in place at the step's positions; then k and v into
 * the pool: one launch where the backend fuses them and made the angles'
 * table, else two */
static int rope_kv_write(const struct fwd *f, uint32_t l)
{
    const struct pd_engine *e = f->e;
    const struct pd_hparams *hp = &e->hp;
    struct pd_rope_args r = {.x = e->q,
                             .pos = e->ix.pos,
                             .n_tokens = f->T,
                             .n_heads = hp->n_head + hp->n_head_kv,
                             .ld = e->qkv_ld,
                             .head_dim = hp->head_dim,
                             .rope_dim = hp->rope_dim,
                             .freq_base = hp->rope_freq_base,
                             .freq_scale = e->rope_scale,
                             .freq_factors = e->rope_factors,
                             .halves = hp->rope_style == PD_ROPE_HALVES,
                             .table = e->rope_table,
                             .table_len = e->rope_table ? e->max_model_len : 0};
    struct pd_kv_write_args w = {.pool = pd_kvcache_pool(e->kc),
                                 .kv = *pd_kvcache_layout(e->kc),
                                 .layer = l,
                                 .k = e->kk,
                                 .v = e->vv,
                                 .slot = e->ix.slot,
                                 .n_tokens = f->T,
                                 .ld = e->qkv_ld,
                                 .pool_type = pd_kvcache_dtype(e->kc)};
    int rc;
    if (e->rope_table && f->k->rope_kv_write)
        return timed(f, PD_K_ROPE, f->k->rope_kv_write(&r, &w, f->s));
    if ((rc = timed(f, PD_K_ROPE, f->k->rope(&r, f->s))) < 0)
        return rc;
    return timed(f, PD_K_KV_WRITE, f->k->kv_write(&w, f->s));
}

static int attend(const struct fwd *f, uint32_t l)
{
    const struct pd_engine *e = f->e;
    const struct pd_hparams *hp = &e->hp;
    struct pd_attn_args a = {.out = e->att,
                             .q = e->q,
                             .q_ld = e->qkv_ld,
                             .pool = pd_kvcache_pool(e->kc),
                             .kv = *pd_kvcache_layout(e->kc),
                             .layer = l,
                             .n_tokens = f->T,
                             .n_head = hp->n_head,
                             .tok_seq = e->ix.tok_seq,
                             .tok_pos = e->ix.pos,
                             .block_tables = e->ix.tables,
                             .max_blocks = e->max_blocks,
                             .scale = 1.0f / sqrtf((float)hp->head_dim),
                             .pool_type = pd_kvcache_dtype(e->kc),
                             .max_ctx = e->max_model_len,
                             .workspace = e->attn_ws,
                             .workspace_bytes = e->attn_ws_bytes,
                             .run_start = e->ix.runs,
                             .n_runs = f->n_runs,
                             .max_run = f->max_run,
                             .run_tokens = f->run_tokens,
                             .decode_simt = e->decode_simt,
                             .prefill_wgmma = e->prefill_wgmma,
                             .out_type = e->act_type,
                             .threads = e->pool};
    return timed(f, PD_K_ATTENTION, f->k->attention(&a, f->s));
}

/* ff = silu(gate) * up, from the gate, up rows: the down projection's
 * input, in act_type */
static int swiglu(const struct fwd *f)
{
    struct pd_engine *e = f->e;
    struct pd_swiglu_args a = {.out = e->ff,
                               .gate = e->gate,
                               .up = e->up,
                               .n_rows = f->T,
                               .dim = e->hp.n_ff,
                               .ld = 2 * e->hp.n_ff,
                               .out_type = e->act_type};
    return timed(f, PD_K_SWIGLU, f->k->swiglu(&a, f->s));
}

static int embed(const struct fwd *f)
{
    const struct pd_engine *e = f->e;
    const uint32_t D = e->hp.n_embd;
    uint64_t row_bytes;
    if (pd_dtype_row_size(e->tok_embd->type, D, &row_bytes) < 0)
        return -EINVAL;
    struct pd_embed_args a = {.out = e->x,
                              .table = e->embd_table,
                              .type = e->tok_embd->type,
                              .row_bytes = row_bytes,
                              .tokens = e->ix.tok,
                              .n_tokens = f->T,
                              .dim = D};
    return timed(f, PD_K_EMBED, f->k->embed(&a, f->s));
}

/* q, k and v of the normed h into their rows: one GEMM when the backend
 * placed the three matrices as one, else three into the one row */
static int qkv(const struct fwd *f, const struct layer_w *w)
{
    struct pd_engine *e = f->e;
    const struct pd_hparams *hp = &e->hp;
    const uint32_t T = f->T, D = hp->n_embd, qd = hp->n_head * hp->head_dim;
    const uint32_t kvd = hp->n_head_kv * hp->head_dim, ld = e->qkv_ld, at = e->act_type;
    int rc;
    if (w->qkv_one)
        return mm(f, PD_K_QKV, e->qkv, e->hn, at, &w->wq, T, ld, D, 0);
    if ((rc = mm_ld(f, PD_K_QKV, e->q, ld, e->hn, at, &w->wq, T, qd, D, 0)) < 0 ||
        (rc = mm_ld(f, PD_K_QKV, e->kk, ld, e->hn, at, &w->wk, T, kvd, D, 0)) < 0)
        return rc;
    return mm_ld(f, PD_K_QKV, e->vv, ld, e->hn, at, &w->wv, T, kvd, D, 0);
}

/* gate and up of the normed h into their rows: one GEMM or two, as qkv */
static int gate_up(const struct fwd *f, const struct layer_w *w)
{
    struct pd_engine *e = f->e;
    const uint32_t T = f->T, D = e->hp.n_embd, F = e->hp.n_ff, at = e->act_type;
    int rc;
    if (w->gu_one)
        return mm(f, PD_K_GATE_UP, e->gu, e->hn, at, &w->w_gate, T, 2 * F, D, 0);
    if ((rc = mm_ld(f, PD_K_GATE_UP, e->gate, 2 * F, e->hn, at, &w->w_gate, T, F, D, 0)) < 0)
        return rc;
    return mm_ld(f, PD_K_GATE_UP, e->up, 2 * F, e->hn, at, &w->w_up, T, F, D, 0);
}

/* One decoder layer: x += attention(norm(x)); x += ffn(norm(x)). */
static int layer(const struct fwd *f, uint32_t l)
{
    struct pd_engine *e = f->e;
    const struct layer_w *w = &e->layers[l];
    const struct pd_hparams *hp = &e->hp;
    const uint32_t T = f->T, D = hp->n_embd, qd = hp->n_head * hp->head_dim, F = hp->n_ff;
    int rc;

    if ((rc = norm(f, e->x, w->attn_norm, T)) < 0)
        return rc;
    if ((rc = qkv(f, w)) < 0)
        return rc;
    if ((rc = bias(f, e->q, w->bq, hp->n_head)) < 0 ||
        (rc = bias(f, e->kk, w->bk, hp->n_head_kv)) < 0 ||
        (rc = bias(f, e->vv, w->bv, hp->n_head_kv)) < 0)
        return rc;
    if ((rc = head_norm(f, e->q, w->q_norm, hp->n_head)) < 0 ||
        (rc = head_norm(f, e->kk, w->k_norm, hp->n_head_kv)) < 0)
        return rc;
    if ((rc = rope_kv_write(f, l)) < 0)
        return rc;
    if ((rc = attend(f, l)) < 0)
        return rc;
    if ((rc = mm(f, PD_K_O_PROJ, e->x, e->att, e->act_type, &w->wo, T, D, qd, 1)) < 0)
        return rc; /* the residual */

    if ((rc = norm(f, e->x, w->ffn_norm, T)) < 0)
        return rc;
    if ((rc = gate_up(f, w)) < 0)
        return rc;
    if ((rc = swiglu(f)) < 0)
        return rc;
    return mm(f, PD_K_DOWN, e->x, e->ff, e->act_type, &w->w_down, T, D, F, 1); /* the residual */
}

/* The rows asked for (the last n_logits of each item) gathered from x into
 * h, as runs of consecutive source rows, one copy each (a decode step's
 * rows are all one run); out_item / out_row say whose each row is. */
static int gather_rows(const struct fwd *f, const struct pd_batch_item *items, uint32_t n_items,
                       uint32_t *n_out)
{
    struct pd_engine *e = f->e;
    const size_t D = e->hp.n_embd;
    uint32_t n_rows = 0, run_src = 0, run_len = 0;
    int rc;
    for (uint32_t i = 0; i < n_items; i++) {
        const struct pd_batch_item *it = &items[i];
        uint32_t first = e->item_t0[i] + it->n_tokens - it->n_logits;
        for (uint32_t j = 0; j < it->n_logits; j++, n_rows++) {
            e->out_item[n_rows] = i;
            e->out_row[n_rows] = j;
            if (run_len && run_src + run_len == first + j) {
                run_len++;
                continue;
            }
            if (run_len && (rc = f->k->copy(e->h + (n_rows - run_len) * D, e->x + run_src * D,
                                            run_len * D * sizeof(float), f->s)) < 0)
                return rc;
            run_src = first + j, run_len = 1;
        }
    }
    if (run_len && (rc = f->k->copy(e->h + (n_rows - run_len) * D, e->x + run_src * D,
                                    run_len * D * sizeof(float), f->s)) < 0)
        return rc;
    *n_out = n_rows;
    return timed(f, PD_K_COPY, 0);
}

/* Logits only where asked: the output projection as few GEMMs (one per
 * LOGIT_ROWS rows), since the vocabulary matrix is the largest read of a
 * decode step; each chunk handed out (the CPU), sampled where it is (a
 * device that samples), or on its way down. */
static int head(const struct fwd *f, const struct pd_batch_item *items, uint32_t n_items,
                uint32_t *pending)
{
    struct pd_engine *e = f->e;
    const struct pd_hparams *hp = &e->hp;
    uint32_t n_rows;
    int rc;

    if ((rc = gather_rows(f, items, n_items, &n_rows)) < 0)
        return rc;
    const bool here = e->h_logits == e->logits, defer = !here && n_rows <= e->logit_cap;
    /* a sampling step's rows are one per item, or one per scored token
     * (validate); the device's sampling buffers hold max(T, logit_cap) */
    const bool dev_sample = n_rows && items[e->out_item[0]].sampling && e->b->sample_rows;
    if ((rc = norm(f, e->h, e->out_norm, n_rows)) < 0)
        return rc;
    if (dev_sample && (rc = timed(f, PD_K_SAMPLE, e->b->sample_in(e, n_rows))) < 0)
        return rc;
    for (uint32_t r0 = 0; r0 < n_rows; r0 += LOGIT_ROWS) {
        uint32_t m = n_rows - r0 < LOGIT_ROWS ? n_rows - r0 : LOGIT_ROWS;
        const size_t bytes = (size_t)m * hp->n_vocab * sizeof(float);
        if ((rc = mm(f, PD_K_LM_HEAD, e->logits, act_row(e, e->hn, r0, hp->n_embd), e->act_type,
                     &e->w_out, m, hp->n_vocab, hp->n_embd, 0)) < 0)
            return rc;
        if (here) /* computed in place; handed out (the CPU samples there) */
            rc = timed(f, PD_K_SAMPLE, pd_engine_fwd_hand_out(e, items, r0, m, e->h_logits));
        else if (dev_sample) /* only the results come down */
            rc = timed(f, PD_K_SAMPLE, e->b->sample_rows(e, r0, m));
        else if (defer) /* down in one copy, handed out after the wait */
            rc = timed(f, PD_K_COPY,
                       f->k->copy(e->h_logits + (size_t)r0 * hp->n_vocab, e->logits, bytes, f->s));
        else if ((rc = f->k->copy(e->h_logits, e->logits, bytes, f->s)) == 0 &&
                 (rc = f->k->sync(f->s)) == 0) /* more rows than h_logits holds */
            rc = timed(f, PD_K_COPY, pd_engine_fwd_hand_out(e, items, r0, m, e->h_logits));
        if (rc < 0)
            return rc;
    }
    if (dev_sample && (rc = timed(f, PD_K_SAMPLE, e->b->sample_out(e, n_rows))) < 0)
        return rc;
    /* sampled rows' results wait in the page-locked buffers whatever their number */
    *pending = defer || dev_sample ? n_rows : 0;
    return 0;
}

int pd_engine_fwd(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                  uint32_t T, uint32_t *pending)
{
    struct fwd f = {.e = e, .k = e->b, .s = e->stream, .T = T};
    int rc;

    /* a step with prompt chunks: they are the prefill kernel's runs, laid
     * out first by pd_engine_step; its single tokens the decode kernel's (the
     * CPU ignores runs) */
    for (uint32_t i = 0; i < n_items; i++)
        f.max_run = items[i].n_tokens > f.max_run ? items[i].n_tokens : f.max_run;
    f.n_runs = e->n_runs;
    f.run_tokens = e->run_tokens;

    if (e->kt) /* the timer's first mark: the step's start (its kind unused) */
        e->kt->n = 0;
    if ((rc = timed(&f, PD_K_KINDS, 0)) < 0 || (rc = embed(&f)) < 0)
        return rc;
    for (uint32_t l = 0; l < e->hp.n_layer; l++)
        if ((rc = layer(&f, l)) < 0)
            return rc;
    return head(&f, items, n_items, pending);
}

int pd_engine_index_alloc(struct pd_engine *e, struct pd_step_index *ix, bool host)
{
    const size_t T = e->max_tokens, items = e->max_items;
    void *(*alloc)(struct pd_engine *, size_t, bool) = e->b->alloc; /* freed with e */
    ix->tok = alloc(e, T * sizeof(*ix->tok), host);
    ix->pos = alloc(e, T * sizeof(*ix->pos), host);
    ix->tok_seq = alloc(e, T * sizeof(*ix->tok_seq), host);
    ix->slot = alloc(e, T * sizeof(*ix->slot), host);
    ix->tables = alloc(e, items * e->max_blocks * sizeof(*ix->tables), host);
    ix->runs = alloc(e, (items + 1) * sizeof(*ix->runs), host);
    return ix->tok && ix->pos && ix->tok_seq && ix->slot && ix->tables && ix->runs ? 0 : -ENOMEM;
}

int pd_engine_fwd_upload(struct pd_engine *e, uint32_t n_items, uint32_t T)
{
    int rc = 0;
    if (e->h_ix.tok == e->ix.tok)
        return 0;
    /* a sequence's table past its blocks is not read (positions bound it) */
    const struct pd_backend *k = e->b;
    void *s = e->stream;
    if ((rc = k->copy(e->ix.tok, e->h_ix.tok, T * sizeof(*e->ix.tok), s)) < 0 ||
        (rc = k->copy(e->ix.pos, e->h_ix.pos, T * sizeof(*e->ix.pos), s)) < 0 ||
        (rc = k->copy(e->ix.tok_seq, e->h_ix.tok_seq, T * sizeof(*e->ix.tok_seq), s)) < 0 ||
        (rc = k->copy(e->ix.slot, e->h_ix.slot, T * sizeof(*e->ix.slot), s)) < 0 ||
        (rc = k->copy(e->ix.runs, e->h_ix.runs, (n_items + 1) * sizeof(*e->ix.runs), s)) < 0 ||
        (rc = k->copy(e->ix.tables, e->h_ix.tables,
                      (size_t)n_items * e->max_blocks * sizeof(*e->ix.tables), s)) < 0)
        return rc;
    return 0;
}

int pd_engine_fwd_hand_out(struct pd_engine *e, const struct pd_batch_item *items, uint32_t r0,
                           uint32_t m, const float *src)
{
    const uint32_t V = e->hp.n_vocab;
    for (uint32_t r = 0; r < m; r++) {
        const struct pd_batch_item *it = &items[e->out_item[r0 + r]];
        const uint32_t j = e->out_row[r0 + r];
        const float *row = src + (size_t)r * V;
        if (!it->sampling) {
            memcpy(it->logits + (size_t)j * V, row, V * sizeof(float));
            continue;
        }
        if (e->sampler) {
            const int32_t *h = it->history, *out = h ? h + it->n_prompt : NULL;
            int rc = j < it->n_forced
                ? pd_sample_score(V, row, it->forced[j], it->sampling->n_logprobs, &it->result[j])
                : pd_sample(e->sampler, it->sampling, row, h, it->n_prompt, out,
                            it->n_history - it->n_prompt, &it->result[j]);
            if (rc < 0)
                return rc;
            continue;
        }
        const uint32_t q = r0 + r;
        if (e->h_stok[q] < 0) /* parameters the kernel refused (validated: a bug) */
            return -EIO;
        struct pd_sample_result *res = &it->result[j];
        res->token = e->h_stok[q];
        res->logprob = e->h_slp[q];
        res->n_top = e->h_ntop[q] <= PD_MAX_LOGPROBS ? e->h_ntop[q] : PD_MAX_LOGPROBS;
        memcpy(res->top, e->h_top + (size_t)q * PD_MAX_LOGPROBS, res->n_top * sizeof(*res->top));
    }
    return 0;
}
