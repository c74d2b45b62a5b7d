/* common/model/model_gguf: a model from a GGUF file or image (the Llama
 * architecture's metadata and tensors), for model_load.c. */
#include "gguf.h"
#include "model_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- GGUF metadata -> hyper-parameters ---- */

/* A getter's result for key as the meta_* readers return it: 1 read, 0
 * absent but optional, else the error naming the key and the type it needs. */
static int meta_result(int rc, const char *key, int required, const char *type, char *err,
                       size_t errlen)
{
    if (rc == -ENOENT && !required)
        return 0;
    if (rc == -ENOENT)
        return pd_errf(err, errlen, -EINVAL, "model: required key %s is missing", key);
    if (rc < 0)
        return pd_errf(err, errlen, -EINVAL, "model: key %s is not %s", key, type);
    return 1;
}

static int meta_u32(const struct pd_gguf *g, const char *key, uint32_t *v, int required, char *err,
                    size_t errlen)
{
    return meta_result(pd_gguf_get_u32(g, key, v), key, required, "an unsigned 32-bit integer", err,
                       errlen);
}

static int meta_f32(const struct pd_gguf *g, const char *key, float *v, int required, char *err,
                    size_t errlen)
{
    return meta_result(pd_gguf_get_f32(g, key, v), key, required, "a float", err, errlen);
}

/* GGUF's spelling of the architectures this build computes (Mistral's GGUF
 * files say "llama"); keys are "<arch>.<name>". */
static const struct {
    const char *name;
    enum pd_arch arch;
} gguf_archs[] = {{"llama", PD_ARCH_LLAMA}, {"qwen2", PD_ARCH_QWEN2}, {"qwen3", PD_ARCH_QWEN3}};

static int hparams_from_gguf(const struct pd_gguf *g, struct pd_hparams *hp, char *err,
                             size_t errlen)
{
    const char *s;
    size_t sl;
    int rc;
    char k[96];

    memset(hp, 0, sizeof(*hp));
    if (pd_gguf_get_str(g, "general.architecture", &s, &sl) < 0)
        return pd_errf(err, errlen, -EINVAL,
                       "model: general.architecture is missing or not a string");
    size_t a = 0;
    while (a < sizeof(gguf_archs) / sizeof(gguf_archs[0]) &&
           !(sl == strlen(gguf_archs[a].name) && memcmp(s, gguf_archs[a].name, sl) == 0))
        a++;
    if (a == sizeof(gguf_archs) / sizeof(gguf_archs[0]))
        return pd_errf(err, errlen, -EINVAL,
                       "model: architecture \"%.*s\" is not supported (llama, qwen2 and qwen3 "
                       "are)",
                       (int)(sl > 32 ? 32 : sl), s);
    pd_hparams_set_arch(hp, gguf_archs[a].arch);
    /* llama.cpp's converter permutes Llama's Q and K rows for adjacent pairs,
     * not Qwen's (its NEOX rope type) */
    hp->rope_style = hp->arch_id == PD_ARCH_LLAMA ? PD_ROPE_ADJACENT : PD_ROPE_HALVES;
#define KEY(name) (snprintf(k, sizeof(k), "%s." name, hp->arch), k)

    if ((rc = meta_u32(g, KEY("block_count"), &hp->n_layer, 1, err, errlen)) < 0 ||
        (rc = meta_u32(g, KEY("embedding_length"), &hp->n_embd, 1, err, errlen)) < 0 ||
        (rc = meta_u32(g, KEY("feed_forward_length"), &hp->n_ff, 1, err, errlen)) < 0 ||
        (rc = meta_u32(g, KEY("attention.head_count"), &hp->n_head, 1, err, errlen)) < 0 ||
        (rc = meta_u32(g, KEY("context_length"), &hp->n_ctx_train, 1, err, errlen)) < 0 ||
        (rc = meta_f32(g, KEY("attention.layer_norm_rms_epsilon"), &hp->norm_eps, 1, err,
                       errlen)) < 0)
        return rc;

    hp->n_head_kv = hp->n_head;
    if ((rc = meta_u32(g, KEY("attention.head_count_kv"), &hp->n_head_kv, 0, err, errlen)) < 0)
        return rc;
    if (hp->n_head == 0 || hp->n_embd % hp->n_head != 0)
        hp->head_dim = 0; /* must then be given explicitly */
    else
        hp->head_dim = hp->n_embd / hp->n_head;
    if ((rc = meta_u32(g, KEY("attention.key_length"), &hp->head_dim, 0, err, errlen)) < 0)
        return rc;
    if (hp->head_dim == 0)
        return pd_errf(err, errlen, -EINVAL,
                       "model: n_embd %" PRIu32 " is not a multiple of n_head %" PRIu32
                       " and %s.attention.key_length is missing",
                       hp->n_embd, hp->n_head, hp->arch);
    uint32_t vlen = hp->head_dim;
    if ((rc = meta_u32(g, KEY("attention.value_length"), &vlen, 0, err, errlen)) < 0)
        return rc;
    if (vlen != hp->head_dim)
        return pd_errf(err, errlen, -EINVAL,
                       "model: value_length %" PRIu32 " differs from key_length %" PRIu32
                       " (not supported)",
                       vlen, hp->head_dim);
    hp->rope_dim = hp->head_dim;
    if ((rc = meta_u32(g, KEY("rope.dimension_count"), &hp->rope_dim, 0, err, errlen)) < 0)
        return rc;
    hp->rope_freq_base = 10000.0f;
    if ((rc = meta_f32(g, KEY("rope.freq_base"), &hp->rope_freq_base, 0, err, errlen)) < 0)
        return rc;

    hp->rope_scaling = PD_ROPE_SCALING_NONE;
    hp->rope_scale_factor = 1.0f;
    if (pd_gguf_get_str(g, KEY("rope.scaling.type"), &s, &sl) == 0) {
        if (sl == 4 && memcmp(s, "none", 4) == 0)
            hp->rope_scaling = PD_ROPE_SCALING_NONE;
        else if (sl == 6 && memcmp(s, "linear", 6) == 0)
            hp->rope_scaling = PD_ROPE_SCALING_LINEAR;
        else if (sl == 4 && memcmp(s, "yarn", 4) == 0)
            hp->rope_scaling = PD_ROPE_SCALING_YARN;
        else
            return pd_errf(err, errlen, -EINVAL,
                           "model: rope scaling \"%.*s\" is not supported (none, linear, yarn)",
                           (int)(sl > 32 ? 32 : sl), s);
        if (hp->rope_scaling != PD_ROPE_SCALING_NONE &&
            (rc = meta_f32(g, KEY("rope.scaling.factor"), &hp->rope_scale_factor, 1, err,
                           errlen)) < 0)
            return rc;
    } else if ((rc = meta_f32(g, KEY("rope.scale_linear"), &hp->rope_scale_factor, 0, err,
                              errlen)) < 0) {
        return rc;
    } else if (rc == 1) {
        hp->rope_scaling = PD_ROPE_SCALING_LINEAR;
    }
    if ((rc = meta_u32(g, KEY("rope.scaling.original_context_length"), &hp->rope_orig_ctx, 0, err,
                       errlen)) < 0)
        return rc;

    /* the vocabulary size is the embedding's row count unless stated */
    const struct pd_gguf_tensor *emb = pd_gguf_find_tensor(g, "token_embd.weight");
    hp->n_vocab = emb && emb->ne[1] <= UINT32_MAX ? (uint32_t)emb->ne[1] : 0;
    if ((rc = meta_u32(g, KEY("vocab_size"), &hp->n_vocab, 0, err, errlen)) < 0)
        return rc;
#undef KEY
    return pd_hparams_validate(hp, err, errlen);
}

/* ---- the file ---- */

int pd_model_load_gguf_image(struct pd_model *m, const void *buf, size_t len, char *err,
                              size_t errlen)
{
    int rc;

    if ((rc = pd_gguf_parse(buf, len, &m->gguf, err, errlen)) < 0)
        return rc;
    if ((rc = hparams_from_gguf(m->gguf, &m->hp, err, errlen)) < 0)
        return rc;

    m->n_tensors = pd_gguf_n_tensors(m->gguf);
    m->tensors = calloc(m->n_tensors ? m->n_tensors : 1, sizeof(*m->tensors));
    if (!m->tensors)
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct pd_gguf_tensor *gt = pd_gguf_tensor_at(m->gguf, i);
        struct pd_tensor *t = &m->tensors[i];
        t->name = gt->name;
        t->type = gt->type;
        t->n_dims = gt->n_dims;
        memcpy(t->ne, gt->ne, sizeof(t->ne));
        t->nbytes = gt->nbytes;
        t->offset = gt->offset;
        t->data = gt->data;
        m->weight_bytes += gt->nbytes;
    }
    return 0;
}

int pd_model_load_gguf(struct pd_model *m, const char *path, char *err, size_t errlen)
{
    int rc;

    if (!path || !*path)
        return pd_errf(err, errlen, -EINVAL, "model: no model file given (--model)");
    if ((rc = pd_model_map_file(AT_FDCWD, path, 24, &m->map, &m->map_len, err, errlen)) < 0)
        return rc;
    if ((rc = pd_model_load_gguf_image(m, m->map, m->map_len, err, errlen)) < 0) {
        /* name the file: the image's own messages cannot */
        char inner[512];
        snprintf(inner, sizeof(inner), "%s", err ? err : "");
        return pd_errf(err, errlen, rc, "%s: %s", path, inner);
    }
    if (!(m->name = strdup(path)))
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    return 0;
}
