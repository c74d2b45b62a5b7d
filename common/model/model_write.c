/* pd_model_write_gguf: a model's architecture metadata and tensors as a GGUF
 * v3 file. The file is written to "<path>.tmp" and renamed into place, so a
 * reader never sees half a file. */
#include "gguf.h"
#include "model_internal.h"
#include "quant.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ALIGN 32

struct wr {
    FILE *f;
    int failed;
};

static void put(struct wr *w, const void *p, size_t n)
{
    if (!w->failed && n && fwrite(p, 1, n, w->f) != n)
        w->failed = 1;
}

static void put_u32(struct wr *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}

static void put_u64(struct wr *w, uint64_t v)
{
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}

static void put_str(struct wr *w, const char *s)
{
    put_u64(w, strlen(s));
    put(w, s, strlen(s));
}

static void kv_u32(struct wr *w, const char *k, uint32_t v)
{
    put_str(w, k), put_u32(w, PD_GGUF_U32), put_u32(w, v);
}

static void kv_u64(struct wr *w, const char *k, uint64_t v)
{
    put_str(w, k), put_u32(w, PD_GGUF_U64), put_u64(w, v);
}

static void kv_f32(struct wr *w, const char *k, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    put_str(w, k), put_u32(w, PD_GGUF_F32), put_u32(w, u);
}

static void kv_str(struct wr *w, const char *k, const char *v)
{
    put_str(w, k), put_u32(w, PD_GGUF_STRING), put_str(w, v);
}

/* The header and the architecture's metadata. */
static void put_meta(struct wr *w, const struct pd_model *m, const char *arch, bool factors)
{
    const struct pd_hparams *hp = &m->hp;
    uint32_t n_kv = 14;
    if (!m->gguf && !m->dir)
        n_kv += 2;
    if (hp->rope_scaling == PD_ROPE_SCALING_LINEAR || hp->rope_scaling == PD_ROPE_SCALING_YARN)
        n_kv += 3;
    put_u32(w, 0x46554747u);
    put_u32(w, 3);
    put_u64(w, m->n_tensors + factors);
    put_u64(w, n_kv);
    char k[96];
#define KEY(name) (snprintf(k, sizeof(k), "%s." name, arch), k)
    kv_str(w, "general.architecture", arch);
    kv_str(w, "general.name", m->name);
    kv_u32(w, "general.alignment", ALIGN);
    kv_u32(w, KEY("block_count"), hp->n_layer);
    kv_u32(w, KEY("vocab_size"), hp->n_vocab);
    kv_u32(w, KEY("context_length"), hp->n_ctx_train);
    kv_u32(w, KEY("embedding_length"), hp->n_embd);
    kv_u32(w, KEY("feed_forward_length"), hp->n_ff);
    kv_u32(w, KEY("attention.head_count"), hp->n_head);
    kv_u32(w, KEY("attention.head_count_kv"), hp->n_head_kv);
    kv_u32(w, KEY("attention.key_length"), hp->head_dim);
    kv_u32(w, KEY("rope.dimension_count"), hp->rope_dim);
    kv_f32(w, KEY("rope.freq_base"), hp->rope_freq_base);
    kv_f32(w, KEY("attention.layer_norm_rms_epsilon"), hp->norm_eps);
    if (hp->rope_scaling == PD_ROPE_SCALING_LINEAR || hp->rope_scaling == PD_ROPE_SCALING_YARN) {
        kv_str(w, KEY("rope.scaling.type"),
               hp->rope_scaling == PD_ROPE_SCALING_LINEAR ? "linear" : "yarn");
        kv_f32(w, KEY("rope.scaling.factor"), hp->rope_scale_factor);
        kv_u32(w, KEY("rope.scaling.original_context_length"), hp->rope_orig_ctx);
    }
#undef KEY
    if (!m->gguf && !m->dir) {
        /* provenance: which generator and seed made these weights */
        kv_u64(w, "pdserve.dummy.seed", m->seed);
        kv_u32(w, "pdserve.dummy.generator", PD_DUMMY_GENERATOR_VERSION);
    }

}

/* Q or K of a checkpoint that rotates halves, as GGUF's Llama files store it:
 * in each head, output row 2i is the checkpoint's row i and row 2i + 1 its
 * row i + rope_dim/2 (the rows past rope_dim stay). A common permutation of
 * q's and k's dims within a head leaves q.k unchanged. */
static void put_permuted(struct wr *w, const struct pd_tensor *t, const struct pd_hparams *hp)
{
    const uint64_t rows = t->ne[1], row_bytes = t->nbytes / rows, half = hp->rope_dim / 2;
    for (uint64_t r = 0; r < rows; r++) {
        uint64_t head = r / hp->head_dim, d = r % hp->head_dim, src = r;
        if (d < hp->rope_dim)
            src = head * hp->head_dim + (d % 2 ? half + d / 2 : d / 2);
        put(w, (const uint8_t *)t->data + src * row_bytes, row_bytes);
    }
}

int pd_model_write_gguf(const struct pd_model *m, const char *path, char *err, size_t errlen)
{
    const struct pd_hparams *hp = &m->hp;
    struct wr w = {0};
    char *tmp = NULL;
    int rc = 0;
    static const uint8_t zeros[ALIGN];

    for (size_t i = 0; i < m->n_tensors; i++)
        if (!m->tensors[i].data)
            return pd_errf(err, errlen, -EINVAL,
                           "model: %s was loaded without weights; cannot write it", m->name);
    if (asprintf(&tmp, "%s.tmp", path) < 0)
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    if (!(w.f = fopen(tmp, "wb"))) {
        rc = -errno;
        pd_errf(err, errlen, rc, "model: cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }

    /* GGUF's Llama files rotate adjacent pairs (llama.cpp permutes Q and K
     * rows when it converts a checkpoint); Qwen's rotate halves */
    const char *arch = hp->arch_id == PD_ARCH_MISTRAL ? "llama" : hp->arch;
    const bool permute = strcmp(arch, "llama") == 0 && hp->rope_style == PD_ROPE_HALVES;
    const bool factors = m->rope_factors != NULL; /* written as rope_freqs.weight */
    if (hp->sliding_window) {
        fclose(w.f), unlink(tmp), free(tmp);
        return pd_errf(err, errlen, -ENOTSUP,
                       "model: GGUF's llama architecture has no sliding window (%" PRIu32 ")",
                       hp->sliding_window);
    }
    put_meta(&w, m, arch, factors);

    uint64_t off = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct pd_tensor *t = &m->tensors[i];
        put_str(&w, t->name);
        put_u32(&w, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++)
            put_u64(&w, t->ne[d]);
        put_u32(&w, t->type);
        put_u64(&w, off);
        off += (t->nbytes + ALIGN - 1) / ALIGN * ALIGN;
    }
    const uint64_t fbytes = (uint64_t)(hp->rope_dim / 2) * sizeof(float);
    if (factors) {
        put_str(&w, "rope_freqs.weight");
        put_u32(&w, 1);
        put_u64(&w, hp->rope_dim / 2);
        put_u32(&w, PD_DT_F32);
        put_u64(&w, off);
    }
    long pos = w.failed ? 0 : ftell(w.f);
    if (pos < 0)
        w.failed = 1;
    put(&w, zeros, (size_t)((ALIGN - pos % ALIGN) % ALIGN));
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct pd_tensor *t = &m->tensors[i];
        size_t nl = strlen(t->name);
        if (permute && nl > 13 &&
            (strcmp(t->name + nl - 13, "attn_q.weight") == 0 ||
             strcmp(t->name + nl - 13, "attn_k.weight") == 0))
            put_permuted(&w, t, hp);
        else
            put(&w, t->data, t->nbytes);
        put(&w, zeros, (size_t)((ALIGN - t->nbytes % ALIGN) % ALIGN));
    }
    if (factors)
        put(&w, m->rope_factors, fbytes);
    if (fflush(w.f) != 0)
        w.failed = 1;
    if (fclose(w.f) != 0)
        w.failed = 1;
    if (w.failed) {
        rc = pd_errf(err, errlen, -EIO, "model: writing %s failed", tmp);
        unlink(tmp);
    } else if (rename(tmp, path) < 0) {
        rc = -errno;
        pd_errf(err, errlen, rc, "model: cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}
