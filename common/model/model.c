#include "model.h"

#include "gguf.h"
#include "model_internal.h"
#include "quant.h"
#include "safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int pd_hparams_validate(const struct pd_hparams *hp, char *err, size_t errlen)
{
#define RANGE(field, lo, hi)                                                                       \
    if (hp->field < (lo) || hp->field > (hi))                                                      \
        return pd_errf(err, errlen, -EINVAL,                                                       \
                       "model: " #field " = %" PRIu32 " is out of range [%u, %u]", hp->field,      \
                       (unsigned)(lo), (unsigned)(hi));
    RANGE(n_layer, 1, 1024)
    RANGE(n_embd, 1, 65536)
    RANGE(n_ff, 1, 1u << 20)
    RANGE(n_head, 1, 1024)
    RANGE(n_head_kv, 1, hp->n_head)
    RANGE(head_dim, 2, 1024)
    RANGE(rope_dim, 2, hp->head_dim)
    RANGE(n_vocab, 1, 1u << 22)
    RANGE(n_ctx_train, 1, 1u << 24)
#undef RANGE
    if (hp->sliding_window > (1u << 24))
        return pd_errf(err, errlen, -EINVAL, "model: sliding_window %" PRIu32 " is above 2^24",
                       hp->sliding_window);
    if (hp->n_head % hp->n_head_kv != 0)
        return pd_errf(err, errlen, -EINVAL,
                       "model: n_head %" PRIu32 " is not a multiple of n_head_kv %" PRIu32,
                       hp->n_head, hp->n_head_kv);
    if (hp->head_dim % 2 != 0 || hp->rope_dim % 2 != 0)
        return pd_errf(err, errlen, -EINVAL,
                       "model: head_dim %" PRIu32 " and rope_dim %" PRIu32 " must be even",
                       hp->head_dim, hp->rope_dim);
    if (!(hp->norm_eps > 0.0f && hp->norm_eps < 1.0f))
        return pd_errf(err, errlen, -EINVAL, "model: norm_eps %g is out of range (0, 1)",
                       (double)hp->norm_eps);
    if (!(hp->rope_freq_base > 0.0f && isfinite(hp->rope_freq_base)))
        return pd_errf(err, errlen, -EINVAL, "model: rope_freq_base %g must be positive and finite",
                       (double)hp->rope_freq_base);
    if (!(hp->rope_scale_factor > 0.0f && isfinite(hp->rope_scale_factor)))
        return pd_errf(err, errlen, -EINVAL,
                       "model: rope scaling factor %g must be positive and finite",
                       (double)hp->rope_scale_factor);
    return 0;
}

/* ---- binding tensors to their roles, with shape checks ---- */

static const char *const arch_names[PD_ARCH_COUNT] = {
    [PD_ARCH_LLAMA] = "llama", [PD_ARCH_QWEN2] = "qwen2", [PD_ARCH_QWEN3] = "qwen3",
    [PD_ARCH_MISTRAL] = "mistral"};

const char *pd_arch_name(enum pd_arch a)
{
    return (unsigned)a < PD_ARCH_COUNT ? arch_names[a] : "?";
}

void pd_hparams_set_arch(struct pd_hparams *hp, enum pd_arch a)
{
    hp->arch_id = a;
    snprintf(hp->arch, sizeof(hp->arch), "%s", pd_arch_name(a));
    hp->qkv_bias = a == PD_ARCH_QWEN2;
    hp->qk_norm = a == PD_ARCH_QWEN3;
}

/* each layer's weights as GGUF names them after "blk.N." */
static const char *const weight_names[PD_W_COUNT] = {
    [PD_W_ATTN_NORM] = "attn_norm.weight",     [PD_W_ATTN_Q] = "attn_q.weight",
    [PD_W_ATTN_K] = "attn_k.weight",           [PD_W_ATTN_V] = "attn_v.weight",
    [PD_W_ATTN_OUT] = "attn_output.weight",    [PD_W_FFN_NORM] = "ffn_norm.weight",
    [PD_W_FFN_GATE] = "ffn_gate.weight",       [PD_W_FFN_UP] = "ffn_up.weight",
    [PD_W_FFN_DOWN] = "ffn_down.weight",       [PD_W_ATTN_Q_BIAS] = "attn_q.bias",
    [PD_W_ATTN_K_BIAS] = "attn_k.bias",        [PD_W_ATTN_V_BIAS] = "attn_v.bias",
    [PD_W_ATTN_Q_NORM] = "attn_q_norm.weight", [PD_W_ATTN_K_NORM] = "attn_k_norm.weight",
};

const char *pd_model_weight_name(enum pd_weight w) { return weight_names[w]; }

bool pd_model_weight_used(const struct pd_hparams *hp, enum pd_weight w)
{
    switch (w) {
    case PD_W_ATTN_Q_BIAS: case PD_W_ATTN_K_BIAS: case PD_W_ATTN_V_BIAS: return hp->qkv_bias;
    case PD_W_ATTN_Q_NORM: case PD_W_ATTN_K_NORM: return hp->qk_norm;
    default: return (unsigned)w < PD_W_COUNT;
    }
}

void pd_model_weight_shape(const struct pd_hparams *hp, enum pd_weight w, uint32_t *n_dims,
                           uint64_t ne[2])
{
    uint64_t q = (uint64_t)hp->n_head * hp->head_dim, kv = (uint64_t)hp->n_head_kv * hp->head_dim;
    *n_dims = 2;
    switch (w) {
    case PD_W_ATTN_NORM: case PD_W_FFN_NORM:
        *n_dims = 1, ne[0] = hp->n_embd, ne[1] = 1;
        break;
    case PD_W_ATTN_Q: ne[0] = hp->n_embd, ne[1] = q; break;
    case PD_W_ATTN_K: case PD_W_ATTN_V: ne[0] = hp->n_embd, ne[1] = kv; break;
    case PD_W_ATTN_OUT: ne[0] = q, ne[1] = hp->n_embd; break;
    case PD_W_FFN_GATE: case PD_W_FFN_UP: ne[0] = hp->n_embd, ne[1] = hp->n_ff; break;
    case PD_W_FFN_DOWN: ne[0] = hp->n_ff, ne[1] = hp->n_embd; break;
    case PD_W_ATTN_Q_BIAS: *n_dims = 1, ne[0] = q, ne[1] = 1; break;
    case PD_W_ATTN_K_BIAS: case PD_W_ATTN_V_BIAS: *n_dims = 1, ne[0] = kv, ne[1] = 1; break;
    case PD_W_ATTN_Q_NORM: case PD_W_ATTN_K_NORM: *n_dims = 1, ne[0] = hp->head_dim, ne[1] = 1; break;
    default: break;
    }
}

static int check_shape(const struct pd_tensor *t, uint64_t ne0, uint64_t ne1, char *err,
                       size_t errlen)
{
    uint64_t n_dims_want = ne1 == 1 ? 1 : 2;
    /* a 2-D tensor with ne[1] == 1 is the same shape as a 1-D one */
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1 ||
        (t->n_dims != n_dims_want && !(t->n_dims == 2 && n_dims_want == 1)))
        return pd_errf(err, errlen, -EINVAL,
                       "model: tensor %s has shape [%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64
                       "], expected [%" PRIu64 ", %" PRIu64 "]",
                       t->name, t->ne[0], t->ne[1], t->ne[2], t->ne[3], ne0, ne1);
    if (!pd_dtype_supported(t->type))
        return pd_errf(err, errlen, -ENOTSUP,
                       "model: tensor %s has type %s, which this build cannot compute "
                       "with (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K are supported)",
                       t->name, pd_dtype_name(t->type));
    return 0;
}

/* "blk.N.<weight>" of hp's architecture: the slot, or -1 */
static int layer_weight(const struct pd_hparams *hp, const char *n, unsigned *layer)
{
    int pos = 0;
    if (!(sscanf(n, "blk.%u.%n", layer, &pos) == 1 && pos > 0 && n[4] >= '0' && n[4] <= '9' &&
          *layer < hp->n_layer))
        return -1;
    for (int k = 0; k < PD_W_COUNT; k++)
        if (strcmp(n + pos, weight_names[k]) == 0)
            return pd_model_weight_used(hp, (enum pd_weight)k) ? k : -1;
    return -1;
}

int pd_model_bind(struct pd_model *m, char *err, size_t errlen)
{
    struct pd_hparams *hp = &m->hp;
    int rc;

    m->layer = calloc((size_t)hp->n_layer * PD_W_COUNT, sizeof(*m->layer));
    if (!m->layer)
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct pd_tensor *t = &m->tensors[i];
        const char *n = t->name;
        unsigned layer;
        int found;

        if (strcmp(n, "token_embd.weight") == 0) {
            m->tok_embd = t;
        } else if (strcmp(n, "output_norm.weight") == 0) {
            m->output_norm = t;
        } else if (strcmp(n, "output.weight") == 0) {
            m->output = t;
        } else if (strcmp(n, "rope_freqs.weight") == 0) {
            m->rope_freqs = t;
        } else if ((found = layer_weight(hp, n, &layer)) >= 0) {
            const struct pd_tensor **slot = &m->layer[(size_t)layer * PD_W_COUNT + (size_t)found];
            if (*slot)
                return pd_errf(err, errlen, -EINVAL,
                               "model: tensors %s and %s name the same weight", (*slot)->name, n);
            *slot = t;
        } else {
            /* a bias or norm we would not apply would serve wrong text silently */
            return pd_errf(err, errlen, -EINVAL,
                           "model: unknown tensor %s (not part of the %s architecture this "
                           "build computes, or a layer index >= %" PRIu32 ")",
                           n, hp->arch, hp->n_layer);
        }
    }
    if (!m->tok_embd)
        return pd_errf(err, errlen, -EINVAL, "model: tensor token_embd.weight is missing");
    if (!m->output_norm)
        return pd_errf(err, errlen, -EINVAL, "model: tensor output_norm.weight is missing");
    if ((rc = check_shape(m->tok_embd, hp->n_embd, hp->n_vocab, err, errlen)) < 0 ||
        (rc = check_shape(m->output_norm, hp->n_embd, 1, err, errlen)) < 0)
        return rc;
    hp->tied_output = m->output == NULL;
    if (m->output && (rc = check_shape(m->output, hp->n_embd, hp->n_vocab, err, errlen)) < 0)
        return rc;
    if (m->rope_freqs && hp->rope_scaling == PD_ROPE_SCALING_LLAMA3)
        return pd_errf(err, errlen, -EINVAL,
                       "model: rope_freqs.weight and Llama-3.1 rope scaling both given");
    hp->has_rope_freqs = m->rope_freqs != NULL || m->rope_factors != NULL;
    if (m->rope_freqs) {
        if ((rc = check_shape(m->rope_freqs, hp->rope_dim / 2, 1, err, errlen)) < 0)
            return rc;
        if (m->rope_freqs->type != PD_DT_F32)
            return pd_errf(err, errlen, -EINVAL, "model: rope_freqs.weight must be F32");
    }
    for (uint32_t l = 0; l < hp->n_layer; l++)
        for (int k = 0; k < PD_W_COUNT; k++) {
            const struct pd_tensor *t = m->layer[(size_t)l * PD_W_COUNT + (size_t)k];
            uint32_t nd;
            uint64_t ne[2];
            if (!pd_model_weight_used(hp, (enum pd_weight)k))
                continue;
            if (!t)
                return pd_errf(err, errlen, -EINVAL, "model: tensor blk.%" PRIu32 ".%s is missing",
                               l, weight_names[k]);
            pd_model_weight_shape(hp, (enum pd_weight)k, &nd, ne);
            if ((rc = check_shape(t, ne[0], ne[1], err, errlen)) < 0)
                return rc;
        }
    return 0;
}

int pd_model_map_file(int dirfd, const char *name, size_t min, void **map, size_t *len,
                      char *err, size_t errlen)
{
    struct stat st;
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY), rc;

    if (fd < 0)
        return pd_errf(err, errlen, -errno, "model: cannot open %s: %s", name, strerror(errno));
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        close(fd);
        return pd_errf(err, errlen, rc, "model: cannot stat %s: %s", name, strerror(-rc));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pd_errf(err, errlen, -EINVAL, "model: %s is not a regular file", name);
    }
    if ((uint64_t)st.st_size < min || st.st_size == 0) {
        close(fd);
        return pd_errf(err, errlen, -EINVAL, "model: %s is too small (%lld bytes)", name,
                       (long long)st.st_size);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    rc = -errno;
    close(fd);
    if (p == MAP_FAILED)
        return pd_errf(err, errlen, rc, "model: cannot map %s: %s", name, strerror(-rc));
    /* weights are read once at load time by the engine, then mostly from caches */
    madvise(p, (size_t)st.st_size, MADV_WILLNEED);
    *map = p;
    *len = (size_t)st.st_size;
    return 0;
}

/* ---- fingerprint ---- */

static void fp_u64(crypto_generichash_state *st, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    crypto_generichash_update(st, b, 8);
}

static void fp_f32(crypto_generichash_state *st, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    fp_u64(st, u);
}

static void fp_str(crypto_generichash_state *st, const char *s)
{
    size_t n = strlen(s);
    fp_u64(st, n);
    crypto_generichash_update(st, (const uint8_t *)s, n);
}

#define FP_SAMPLE 4096 /* bytes hashed at each end of every GGUF tensor */

void pd_model_compute_fingerprint(struct pd_model *m)
{
    const struct pd_hparams *hp = &m->hp;
    crypto_generichash_state st;

    crypto_generichash_init(&st, NULL, 0, PD_MODEL_FP_LEN);
    fp_str(&st, "pdserve.model-fingerprint.v2");
    fp_str(&st, hp->arch);
    fp_u64(&st, hp->n_layer), fp_u64(&st, hp->n_embd), fp_u64(&st, hp->n_ff);
    fp_u64(&st, hp->n_head), fp_u64(&st, hp->n_head_kv), fp_u64(&st, hp->head_dim);
    fp_u64(&st, hp->rope_dim), fp_u64(&st, hp->n_vocab), fp_u64(&st, hp->n_ctx_train);
    fp_f32(&st, hp->rope_freq_base), fp_u64(&st, hp->rope_scaling);
    fp_f32(&st, hp->rope_scale_factor), fp_u64(&st, hp->rope_orig_ctx);
    fp_f32(&st, hp->norm_eps), fp_u64(&st, hp->tied_output);
    fp_f32(&st, hp->rope_low_freq_factor), fp_f32(&st, hp->rope_high_freq_factor);
    fp_u64(&st, hp->rope_style), fp_u64(&st, hp->qkv_bias), fp_u64(&st, hp->qk_norm);
    fp_u64(&st, hp->sliding_window);
    fp_u64(&st, m->n_tensors);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct pd_tensor *t = &m->tensors[i];
        fp_str(&st, t->name);
        fp_u64(&st, t->type), fp_u64(&st, t->n_dims);
        for (int d = 0; d < 4; d++)
            fp_u64(&st, t->ne[d]);
        fp_u64(&st, t->offset), fp_u64(&st, t->nbytes);
    }
    if (m->gguf || m->dir) {
        /* content, cheaply: both ends of every tensor (a full hash of a large
         * file at every start is what DESIGN.md rules out) */
        fp_str(&st, m->gguf ? "gguf-sampled" : "safetensors-sampled");
        for (size_t i = 0; i < m->n_tensors; i++) {
            const struct pd_tensor *t = &m->tensors[i];
            uint64_t head = t->nbytes < FP_SAMPLE ? t->nbytes : FP_SAMPLE;
            crypto_generichash_update(&st, t->data, head);
            if (t->nbytes > FP_SAMPLE)
                crypto_generichash_update(&st, (const uint8_t *)t->data + t->nbytes - head, head);
        }
    } else {
        /* dummy content is a pure function of these */
        fp_str(&st, "dummy");
        fp_u64(&st, PD_DUMMY_GENERATOR_VERSION);
        fp_u64(&st, m->seed);
    }
    crypto_generichash_final(&st, m->fp, PD_MODEL_FP_LEN);
}

struct pd_model *pd_model_free(struct pd_model *m)
{
    if (!m)
        return NULL;
    pd_gguf_free(m->gguf);
    if (m->map)
        munmap(m->map, m->map_len);
    for (size_t i = 0; i < m->n_shards; i++) {
        pd_st_free(m->shards[i].st);
        free(m->shards[i].file);
        if (m->shards[i].map)
            munmap(m->shards[i].map, m->shards[i].len);
    }
    free(m->shards);
    free(m->tensor_names);
    free(m->rope_factors);
    free(m->dir);
    if (m->arena)
        munmap(m->arena, m->arena_len);
    free(m->layer);
    free(m->tensors);
    free(m->name);
    free(m);
    return NULL;
}

const struct pd_hparams *pd_model_hparams(const struct pd_model *m) { return &m->hp; }
size_t pd_model_n_tensors(const struct pd_model *m) { return m->n_tensors; }
const struct pd_gguf *pd_model_gguf(const struct pd_model *m) { return m->gguf; }
const char *pd_model_dir(const struct pd_model *m) { return m->dir; }

const int32_t *pd_model_eos(const struct pd_model *m, size_t *n)
{
    *n = m->n_eos;
    return m->eos;
}

const float *pd_model_rope_factors(const struct pd_model *m)
{
    return m->rope_factors ? m->rope_factors : m->rope_freqs ? m->rope_freqs->data : NULL;
}

/* Llama-3.1's rule (its reference code and transformers' "llama3" rope):
 * wavelengths shorter than orig/high_freq_factor keep their frequency,
 * longer than orig/low_freq_factor are slowed by factor, and the band
 * between is interpolated. As a divisor of each pair's angle. */
int pd_model_llama3_factors(struct pd_model *m, char *err, size_t errlen)
{
    const struct pd_hparams *hp = &m->hp;
    const uint32_t half = hp->rope_dim / 2;
    const double lo = hp->rope_low_freq_factor, hi = hp->rope_high_freq_factor;
    const double factor = hp->rope_scale_factor, orig = hp->rope_orig_ctx;

    if (!(lo > 0 && hi > lo && factor > 0 && orig > 0 && isfinite(hi) && isfinite(factor)))
        return pd_errf(err, errlen, -EINVAL,
                       "model: llama3 rope scaling needs factor > 0, 0 < low_freq_factor < "
                       "high_freq_factor and original_max_position_embeddings > 0");
    if (!(m->rope_factors = malloc(half * sizeof(float))))
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    for (uint32_t i = 0; i < half; i++) {
        const double inv = pow((double)hp->rope_freq_base, -2.0 * i / hp->rope_dim);
        const double wavelen = 2 * M_PI / inv;
        double scaled;
        if (wavelen < orig / hi)
            scaled = inv;
        else if (wavelen > orig / lo)
            scaled = inv / factor;
        else {
            const double smooth = (orig / wavelen - lo) / (hi - lo);
            scaled = (1 - smooth) * inv / factor + smooth * inv;
        }
        m->rope_factors[i] = (float)(inv / scaled);
    }
    return 0;
}
const char *pd_model_name(const struct pd_model *m) { return m->name; }
uint64_t pd_model_weight_bytes(const struct pd_model *m) { return m->weight_bytes; }
const uint8_t *pd_model_fingerprint(const struct pd_model *m) { return m->fp; }
const struct pd_tensor *pd_model_tok_embd(const struct pd_model *m) { return m->tok_embd; }
const struct pd_tensor *pd_model_output_norm(const struct pd_model *m) { return m->output_norm; }
const struct pd_tensor *pd_model_rope_freqs(const struct pd_model *m) { return m->rope_freqs; }

const struct pd_tensor *pd_model_output(const struct pd_model *m)
{
    return m->output ? m->output : m->tok_embd;
}

const struct pd_tensor *pd_model_tensor_at(const struct pd_model *m, size_t i)
{
    return i < m->n_tensors ? &m->tensors[i] : NULL;
}

const struct pd_tensor *pd_model_find(const struct pd_model *m, const char *name)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0)
            return &m->tensors[i];
    return NULL;
}

const struct pd_tensor *pd_model_layer_tensor(const struct pd_model *m, uint32_t layer,
                                              enum pd_weight w)
{
    if (layer >= m->hp.n_layer || (unsigned)w >= PD_W_COUNT)
        return NULL;
    return m->layer[(size_t)layer * PD_W_COUNT + (size_t)w];
}

void pd_model_fingerprint_hex(const struct pd_model *m, char hex[2 * PD_MODEL_FP_LEN + 1])
{
    sodium_bin2hex(hex, 2 * PD_MODEL_FP_LEN + 1, m->fp, PD_MODEL_FP_LEN);
}
