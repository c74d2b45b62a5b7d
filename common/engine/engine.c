/* common/engine/engine: the device-neutral core. Parameters, scratch, the
 * KV pool, a step's bookkeeping (validation, KV blocks reserved and undone,
 * the index arrays built), the KV channel's staging copies; everything
 * device-specific through the backend's table (engine_internal.h). */
#include "engine_internal.h"

#include "errf.h"
#include "quant.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const pd_engine_devices[] = {"auto", "cpu", "cuda", NULL};
const char *const pd_engine_gpu_weight_dtypes[] = {"bf16", "f32", NULL};
const char *const pd_engine_cpu_weight_dtypes[] = {"stored", "stored-q8", "f32", NULL};

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
    if (pd_backend_cuda_probe(reason, sizeof reason) < 0) {
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

/* The backend for a device, or NULL with why. */
static const struct pd_backend *backend(enum pd_device d, char *err, size_t errlen)
{
    if (d == PD_DEVICE_CPU)
        return &pd_backend_cpu;
    if (d != PD_DEVICE_CUDA) {
        pd_errf(err, errlen, -EINVAL, "engine: unknown device %d", (int)d);
        return NULL;
    }
#if PD_HAVE_CUDA
    return &pd_backend_cuda;
#else
    pd_errf(err, errlen, -ENOTSUP, "engine: this build has no CUDA (meson setup -Dcuda=enabled, "
            "on a machine with nvcc)");
    return NULL;
#endif
}

/* What the parameters ask for, checked against the model. */
static int sizes(struct pd_engine *e, const struct pd_engine_params *p, char *err,
                 size_t errlen)
{
    const struct pd_hparams *hp = &e->hp;
    if (p->gpu_weight_dtype != PD_DT_F32 && p->gpu_weight_dtype != PD_DT_BF16)
        return pd_errf(err, errlen, -EINVAL, "engine: GPU matrices in %s: f32 or bf16",
                       pd_dtype_name(p->gpu_weight_dtype));
    if (hp->rope_scaling == PD_ROPE_SCALING_YARN)
        return pd_errf(err, errlen, -ENOTSUP, "engine: YaRN rope scaling is not supported");
    e->rope_scale =
        hp->rope_scaling == PD_ROPE_SCALING_LINEAR ? 1.0f / hp->rope_scale_factor : 1.0f;
    e->max_tokens = p->max_batched_tokens ? p->max_batched_tokens : 2048;
    e->max_model_len = p->max_model_len ? p->max_model_len : hp->n_ctx_train;
    e->max_items = p->max_batch_items ? p->max_batch_items : 256;
    if (e->max_tokens > (1u << 20) || e->max_model_len > (1u << 24) ||
        e->max_items > PD_ENGINE_MAX_BATCH_ITEMS)
        return pd_errf(err, errlen, -EINVAL, "engine: max_batched_tokens (<= 1048576), "
                       "max_model_len (<= 16777216) or batch items (<= %d) out of range",
                       PD_ENGINE_MAX_BATCH_ITEMS);
    if (e->max_model_len > hp->n_ctx_train)
        return pd_errf(err, errlen, -EINVAL, "engine: max_model_len %" PRIu32 " exceeds the "
                       "model's context of %" PRIu32, e->max_model_len, hp->n_ctx_train);
    if (hp->sliding_window && hp->sliding_window < e->max_model_len)
        return pd_errf(err, errlen, -ENOTSUP,
                       "engine: the model attends to a sliding window of %" PRIu32
                       " tokens, shorter than max_model_len %" PRIu32
                       "; sliding-window attention is not implemented: start with "
                       "--max-model-len %" PRIu32 " or less",
                       hp->sliding_window, e->max_model_len, hp->sliding_window);
    uint32_t bs = p->block_size ? p->block_size : 16;
    e->max_blocks = (e->max_model_len + bs - 1) / bs;
    return 0;
}

#define SCRATCH(ptr, n, host)                                                                  \
    do {                                                                                       \
        if (!((ptr) = e->b->alloc(e, (size_t)(n) * sizeof(*(ptr)), (host))))                  \
            return -ENOMEM;                                                                    \
    } while (0)

/* Activations and index arrays for max_tokens tokens, where the kernels run;
 * then the backend's own. */
static int scratch(struct pd_engine *e, const struct pd_engine_params *p)
{
    const struct pd_hparams *hp = &e->hp;
    const size_t T = e->max_tokens, qd = (size_t)hp->n_head * hp->head_dim;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
    SCRATCH(e->x, T * hp->n_embd, false);
    SCRATCH(e->h, T * hp->n_embd, false);
    e->hn = e->h, e->act_type = PD_DT_F32; /* a backend may take bf16 (act_type) */
    e->qkv_ld = (uint32_t)(qd + 2 * kvd);
    SCRATCH(e->qkv, T * e->qkv_ld, false);
    e->q = e->qkv, e->kk = e->qkv + qd, e->vv = e->qkv + qd + kvd;
    SCRATCH(e->att, T * qd, false);
    SCRATCH(e->gu, T * 2 * hp->n_ff, false);
    e->gate = e->gu, e->up = e->gu + hp->n_ff;
    SCRATCH(e->ff, T * hp->n_ff, false);
    SCRATCH(e->logits, (size_t)LOGIT_ROWS * hp->n_vocab, false);
    e->logit_cap = LOGIT_ROWS;
    int rc = pd_engine_index_alloc(e, &e->ix, false);
    if (rc < 0)
        return rc;
    SCRATCH(e->out_item, T, true);
    SCRATCH(e->out_row, T, true);
    SCRATCH(e->item_t0, e->max_items, true);
    return e->b->scratch(e, p);
}

static int kv_pool(struct pd_engine *e, const struct pd_engine_params *p, char *err,
                   size_t errlen)
{
    const struct pd_hparams *hp = &e->hp;
    struct pd_kvcache_params kp = {
        .layout = {.n_layer = hp->n_layer, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim,
                   .block_size = p->block_size ? p->block_size : 16},
        .mem_bytes = p->kv_cache_bytes,
        .dtype = p->kv_dtype,
        .prefix_cache = p->prefix_cache,
    };
    int rc;
    if (e->b->kv_pool && (rc = e->b->kv_pool(e, p, &kp, err, errlen)) < 0)
        return rc;
    return pd_kvcache_new(&kp, &e->kc, err, errlen);
}

/* The engine's parts, in order; what a failure leaves built, pd_engine_free
 * takes (it accepts any part). */
static int build(struct pd_engine *e, const struct pd_engine_params *p, char *err, size_t errlen)
{
    int rc;
    if (!(e->b = backend(p->device, err, errlen)))
        return p->device == PD_DEVICE_CUDA ? -ENOTSUP : -EINVAL;
    if ((rc = sizes(e, p, err, errlen)) < 0 || (rc = e->b->init(e, p, err, errlen)) < 0)
        return rc;
    if (scratch(e, p) < 0)
        return pd_errf(err, errlen, -ENOMEM, "engine: out of memory for scratch buffers");
    if ((rc = kv_pool(e, p, err, errlen)) < 0)
        return rc;
    return e->b->ready ? e->b->ready(e, p, err, errlen) : 0;
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
    e->device = p->device;
    e->kv_direct = p->device != PD_DEVICE_CPU && p->kv_direct && !p->kv_staging;
    e->w_type = PD_DT_F32;
    if ((rc = build(e, p, err, errlen)) < 0) {
        pd_engine_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

struct pd_engine *pd_engine_free(struct pd_engine *e)
{
    if (!e)
        return NULL;
    pd_kvcache_free(e->kc); /* before the backend frees the pool's memory */
    pd_engine_kernel_timer(e, false);
    if (e->b)
        e->b->done(e);
    pd_kvcache_free(e->stage);
    pd_engine_mem_free(e);
    free(e->layers);
    free(e);
    return NULL;
}

const struct pd_model *pd_engine_model(const struct pd_engine *e) { return e->model; }
int pd_engine_on_device(const struct pd_engine *e) { return e->device != PD_DEVICE_CPU; }
int pd_engine_kv_direct(const struct pd_engine *e) { return e->kv_direct; }

uint32_t pd_engine_cuda_graphs(const struct pd_engine *e)
{
    uint32_t n = 0;
    for (uint32_t i = 0; e->graphs && i < 2 * (e->max_items + 1); i++)
        n += e->graph[i] != NULL;
    return n;
}
struct pd_kvcache *pd_engine_kvcache(struct pd_engine *e) { return e->kc; }

/* ---- the kernel timer ---- */

const char *pd_kernel_kind_name(enum pd_kernel_kind k)
{
    static const char *const names[PD_K_KINDS] = {
        "embed",  "norm",    "qkv",    "bias", "rope",    "kv_write", "attention",
        "o_proj", "gate_up", "swiglu", "down", "lm_head", "copy",     "sample"};
    return (unsigned)k < PD_K_KINDS ? names[k] : "?";
}

int pd_engine_kernel_timer(struct pd_engine *e, bool on)
{
    struct pd_ktimer *kt = e->kt;
    if (kt) {
        e->b->marks_free(kt->marks);
        free(kt->kind);
        free(kt);
        e->kt = NULL;
    }
    if (!on)
        return 0;
    /* a mark per kernel: at most 19 a layer (Qwen's biases and norms
     * included), the step's start and 4 of the head's, 2 per chunk of logits */
    const uint32_t cap = 20 * e->hp.n_layer + 8 + 2 * (e->max_tokens / LOGIT_ROWS + 1);
    if (!(kt = calloc(1, sizeof(*kt))) || !(kt->kind = calloc(cap, 1)) ||
        !(kt->marks = e->b->marks_new(cap))) {
        if (kt)
            free(kt->kind);
        free(kt);
        return -ENOMEM;
    }
    kt->cap = cap;
    e->kt = kt;
    return 0;
}

void pd_engine_kernel_times(struct pd_engine *e, double ms[PD_K_KINDS], uint32_t *steps)
{
    memset(ms, 0, PD_K_KINDS * sizeof(*ms));
    *steps = 0;
    if (!e->kt)
        return;
    memcpy(ms, e->kt->ms, sizeof(e->kt->ms));
    *steps = e->kt->steps;
    memset(e->kt->ms, 0, sizeof(e->kt->ms));
    e->kt->steps = 0;
}

/* after a step's wait: its spans, each to the kind of the kernel that ended it */
static void kernel_times_add(struct pd_engine *e)
{
    struct pd_ktimer *kt = e->kt;
    double ms;
    for (uint32_t i = 1; i < kt->n; i++)
        if (e->b->marks_span(kt->marks, i - 1, i, &ms) == 0 && kt->kind[i] < PD_K_KINDS)
            kt->ms[kt->kind[i]] += ms;
    kt->n = 0;
    kt->steps++;
}
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
        snprintf(buf, n,
                 "KV channel: the GPU pool staged through %.0f MiB of page-locked host "
                 "memory (%" PRIu64 " blocks of %" PRIu64 " bytes; copies by cudaMemcpyAsync)",
                 (double)(bb * nb) / (1u << 20), nb, bb);
    else if (e->kv_direct)
        snprintf(buf, n, "KV channel: blocks move straight from and to the GPU pool (%" PRIu64
                 " blocks of %" PRIu64 " bytes; UCX sends and receives device memory)", nb, bb);
    else if (e->device == PD_DEVICE_CPU)
        snprintf(buf, n, "KV channel: blocks move in place from and to the host pool (%" PRIu64
                 " blocks of %" PRIu64 " bytes)", nb, bb);
    else
        snprintf(buf, n, "KV channel: none (the GPU engine has no staging)");
}

/* The backend's own words for this thread's last failure, and ": " before
 * them when there are any (both "" otherwise), for an error message. */
static const char *device_error(const struct pd_engine *e)
{
    return e->b->last_error ? e->b->last_error() : "";
}

static const char *device_sep(const struct pd_engine *e) { return *device_error(e) ? ": " : ""; }

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
    if (e->b->forget_error)
        e->b->forget_error();
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
        rc = e->b->copy(to_host ? h : d, to_host ? d : h, (j - i) * bb, e->stream);
    }
    int rs = e->b->sync(e->stream); /* also after a failed enqueue: nothing may still write */
    rc = rc < 0 ? rc : rs;
    if (rc < 0)
        return pd_errf(err, errlen, rc, "engine: copying %" PRIu32 " KV blocks %s the GPU: %s%s%s",
                       n, to_host ? "from" : "to", strerror(-rc), device_sep(e), device_error(e));
    return 0;
}
const char *pd_engine_describe(const struct pd_engine *e) { return e->desc; }

int pd_engine_take_note(struct pd_engine *e, char *buf, size_t len)
{
    if (!e->note[0])
        return 0;
    snprintf(buf, len, "%s", e->note);
    e->note[0] = '\0';
    return 1;
}

uint32_t pd_engine_n_vocab(const struct pd_engine *e) { return e->hp.n_vocab; }
uint32_t pd_engine_max_model_len(const struct pd_engine *e) { return e->max_model_len; }
uint32_t pd_engine_max_batched_tokens(const struct pd_engine *e) { return e->max_tokens; }

void pd_engine_seq_release(struct pd_engine *e, struct pd_kvseq *seq)
{
    pd_kvseq_release(e->kc, seq);
}

/* Blocks of seq's write range [seq->n_tokens, n_tokens) that it holds
 * already but may not write: shared with another sequence or published
 * under a name (kvcache.h). */
static uint32_t cow_needed(const struct pd_kvcache *kc, const struct pd_kvseq *s,
                           uint32_t n_tokens)
{
    const uint32_t bs = pd_kvcache_layout(kc)->block_size;
    uint64_t end = ((uint64_t)n_tokens + bs - 1) / bs;
    uint32_t n = 0;
    for (uint64_t b = s->n_tokens / bs; b < end && b < s->n_blocks; b++)
        n += !pd_kvcache_writable(kc, s->blocks[b]);
    return n;
}

/* Copy-on-write: each such block is replaced in seq's table by a copy of
 * its own (the caller checked the room). The sequence's contents do not
 * change, only which blocks hold them, so a step that fails later leaves it
 * as good as it was. */
static int cow(struct pd_engine *e, struct pd_kvseq *s, uint32_t n_tokens)
{
    const uint32_t bs = pd_kvcache_layout(e->kc)->block_size;
    const uint64_t bytes = pd_kvcache_block_bytes(e->kc);
    uint8_t *pool = (uint8_t *)pd_kvcache_pool(e->kc);
    uint64_t end = ((uint64_t)n_tokens + bs - 1) / bs;
    for (uint64_t b = s->n_tokens / bs; b < end && b < s->n_blocks; b++) {
        uint32_t old = s->blocks[b], id;
        if (pd_kvcache_writable(e->kc, old))
            continue;
        int rc = pd_kvcache_alloc(e->kc, 1, &id);
        if (rc == 0 && (rc = e->b->copy(pool + id * bytes, pool + old * bytes, bytes,
                                        e->stream)) < 0)
            pd_kvcache_unref(e->kc, id);
        if (rc < 0)
            return rc;
        s->blocks[b] = id;
        pd_kvcache_unref(e->kc, old);
    }
    return 0;
}

uint32_t pd_engine_seq_blocks_needed(const struct pd_engine *e, const struct pd_kvseq *seq,
                                     uint32_t n_tokens)
{
    return pd_kvseq_blocks_needed(e->kc, seq, n_tokens) + cow_needed(e->kc, seq, n_tokens);
}

int pd_engine_seq_prepare(struct pd_engine *e, struct pd_kvseq *seq, uint32_t n_tokens)
{
    if (pd_engine_seq_blocks_needed(e, seq, n_tokens) > pd_kvcache_n_free(e->kc))
        return -ENOSPC;
    int rc = cow(e, seq, n_tokens);
    return rc < 0 ? rc : pd_kvseq_reserve(e->kc, seq, n_tokens);
}

/* Everything that can be wrong with a batch, checked before any state changes. */
static int validate(const struct pd_engine *e, const struct pd_batch_item *items, uint32_t n,
                    uint32_t *total, char *err, size_t errlen)
{
    uint64_t sum = 0, blocks = 0;

    bool sampled = false, plain = false;

    if (n == 0 || n > e->max_items)
        return pd_errf(err, errlen, -EINVAL,
                       "engine: %" PRIu32 " sequences in one step (1..%" PRIu32 ")", n,
                       e->max_items);
    for (uint32_t i = 0; i < n; i++) {
        const struct pd_batch_item *it = &items[i];
        if (!it->seq || !it->tokens || it->n_tokens == 0)
            return pd_errf(err, errlen, -EINVAL, "engine: item %" PRIu32 " has no tokens (an empty "
                        "prompt)", i);
        if (it->n_logits > it->n_tokens || (it->n_logits && !it->logits && !it->sampling))
            return pd_errf(err, errlen, -EINVAL, "engine: item %" PRIu32 " asks for %" PRIu32
                        " logits of %" PRIu32 " tokens", i, it->n_logits, it->n_tokens);
        if (it->n_forced && (!it->sampling || !it->forced || it->n_forced > it->n_logits ||
                             it->n_logits - it->n_forced > 1))
            return pd_errf(err, errlen, -EINVAL, "engine: item %" PRIu32 " scores %" PRIu32
                           " of %" PRIu32 " rows: all of them or all but the last, with "
                           "sampling parameters and the tokens", i, it->n_forced, it->n_logits);
        for (uint32_t t = 0; t < it->n_forced; t++)
            if (it->forced[t] < 0 || (uint32_t)it->forced[t] >= e->hp.n_vocab)
                return pd_errf(err, errlen, -EINVAL, "engine: item %" PRIu32 " scores token "
                               "%" PRId32 ", outside [0, %" PRIu32 ")", i, it->forced[t],
                               e->hp.n_vocab);
        if (it->sampling) {
            char why[160];
            if (it->n_logits != it->n_forced + (it->n_forced < it->n_logits) || !it->result ||
                it->n_prompt > it->n_history || it->n_history > e->max_model_len ||
                (it->n_history && !it->history))
                return pd_errf(err, errlen, -EINVAL, "engine: item %" PRIu32 " samples: one row "
                               "of logits past those it scores, results, a history of at most "
                               "%" PRIu32 " tokens holding its prompt", i, e->max_model_len);
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
                return pd_errf(err, errlen, -EINVAL,
                               "engine: a sequence appears twice in one step");
        sum += it->n_tokens;
        blocks += pd_engine_seq_blocks_needed(e, it->seq, it->seq->n_tokens + it->n_tokens);
    }
    if (sampled && plain)
        return pd_errf(err, errlen, -EINVAL, "engine: in one step every row of logits is "
                       "sampled, or none");
    if (sum > e->max_tokens)
        return pd_errf(err, errlen, -E2BIG, "engine: %" PRIu64 " tokens in one step exceed "
                    "max_batched_tokens %" PRIu32, sum, e->max_tokens);
    if (blocks > pd_kvcache_n_free(e->kc))
        return pd_errf(err, errlen, -ENOSPC,
                       "engine: the step needs %" PRIu64 " KV blocks, %" PRIu32 " of %" PRIu32
                       " are free",
                       blocks, pd_kvcache_n_free(e->kc), pd_kvcache_n_blocks(e->kc));
    *total = (uint32_t)sum;
    return 0;
}

/* PDSERVE_MIXED_ATTENTION=prefill: a step's single tokens are prefill-kernel
 * runs too, beside its prompt chunks (the way before decode tokens went to
 * the decode kernel), for comparing the two in one benchmark run
 * (gpu_engine_bench's mixed steps); read at every step */
static bool mixed_all_runs(void)
{
    const char *v = getenv("PDSERVE_MIXED_ATTENTION");
    return v && strcmp(v, "prefill") == 0;
}

int pd_engine_step(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                   char *err, size_t errlen)
{
    const uint32_t bs = pd_kvcache_layout(e->kc)->block_size;
    uint32_t T = 0, reserved = 0;
    int rc;

    if ((rc = validate(e, items, n_items, &T, err, errlen)) < 0)
        return rc;
    if (e->b->forget_error) /* a line from an earlier failure is not this one's */
        e->b->forget_error();
    for (uint32_t i = 0; i < n_items; i++)
        if ((rc = cow(e, items[i].seq, items[i].seq->n_tokens + items[i].n_tokens)) < 0)
            return pd_errf(err, errlen, rc, "engine: cannot copy a shared KV block: %s%s%s",
                           strerror(-rc), device_sep(e), device_error(e));
    for (; reserved < n_items; reserved++) {
        const struct pd_batch_item *it = &items[reserved];
        if ((rc = pd_kvseq_reserve(e->kc, it->seq, it->seq->n_tokens + it->n_tokens)) < 0) {
            pd_errf(err, errlen, rc, "engine: cannot reserve KV blocks: %s", strerror(-rc));
            goto undo;
        }
    }

    /* the step's tokens: prompt chunks first (the prefill kernel's runs),
     * then the single tokens (the decode kernel's); a sequence's block
     * table stays its item's row */
    uint32_t t = 0, n_runs = 0;
    bool all_runs = false;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < n_items; i++) {
            const struct pd_batch_item *it = &items[i];
            const struct pd_kvseq *s = it->seq;
            if ((it->n_tokens > 1) != (pass == 0))
                continue;
            if (pass == 0 || all_runs)
                e->h_ix.runs[n_runs++] = (int32_t)t;
            memcpy(e->h_ix.tables + (size_t)i * e->max_blocks, s->blocks,
                   s->n_blocks * sizeof(uint32_t));
            e->item_t0[i] = t;
            for (uint32_t j = 0; j < it->n_tokens; j++, t++) {
                uint32_t p = s->n_tokens + j;
                e->h_ix.tok[t] = it->tokens[j];
                e->h_ix.pos[t] = (int32_t)p;
                e->h_ix.tok_seq[t] = (int32_t)i;
                e->h_ix.slot[t] = (int64_t)s->blocks[p / bs] * bs + p % bs;
            }
        }
        if (pass == 0)
            all_runs = n_runs && mixed_all_runs();
        else if (!all_runs)
            break;
        e->h_ix.runs[n_runs] = (int32_t)t;
        e->n_runs = n_runs;
        e->run_tokens = t;
    }
    if ((rc = e->b->step(e, items, n_items, T)) < 0) {
        pd_errf(err, errlen, rc, "engine: forward pass failed: %s%s%s", strerror(-rc),
                device_sep(e), device_error(e));
        goto undo;
    }
    if (e->kt) /* the step happened: a mark the device cannot read only loses its time */
        kernel_times_add(e);
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
