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

int pd_model_write_gguf(const struct pd_model *m, const char *path, char *err, size_t errlen)
{
    const struct pd_hparams *hp = &m->hp;
    struct wr w = {0};
    char *tmp = NULL;
    int rc = 0;
    uint32_t n_kv = 14;
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

    if (!m->gguf)
        n_kv += 2;
    if (hp->rope_scaling != PD_ROPE_SCALING_NONE)
        n_kv += 3;
    put_u32(&w, 0x46554747u);
    put_u32(&w, 3);
    put_u64(&w, m->n_tensors);
    put_u64(&w, n_kv);
    kv_str(&w, "general.architecture", "llama");
    kv_str(&w, "general.name", m->name);
    kv_u32(&w, "general.alignment", ALIGN);
    kv_u32(&w, "llama.block_count", hp->n_layer);
    kv_u32(&w, "llama.vocab_size", hp->n_vocab);
    kv_u32(&w, "llama.context_length", hp->n_ctx_train);
    kv_u32(&w, "llama.embedding_length", hp->n_embd);
    kv_u32(&w, "llama.feed_forward_length", hp->n_ff);
    kv_u32(&w, "llama.attention.head_count", hp->n_head);
    kv_u32(&w, "llama.attention.head_count_kv", hp->n_head_kv);
    kv_u32(&w, "llama.attention.key_length", hp->head_dim);
    kv_u32(&w, "llama.rope.dimension_count", hp->rope_dim);
    kv_f32(&w, "llama.rope.freq_base", hp->rope_freq_base);
    kv_f32(&w, "llama.attention.layer_norm_rms_epsilon", hp->norm_eps);
    if (hp->rope_scaling != PD_ROPE_SCALING_NONE) {
        kv_str(&w, "llama.rope.scaling.type",
               hp->rope_scaling == PD_ROPE_SCALING_LINEAR ? "linear" : "yarn");
        kv_f32(&w, "llama.rope.scaling.factor", hp->rope_scale_factor);
        kv_u32(&w, "llama.rope.scaling.original_context_length", hp->rope_orig_ctx);
    }
    if (!m->gguf) {
        /* provenance: which generator and seed made these weights */
        kv_u64(&w, "pdserve.dummy.seed", m->seed);
        kv_u32(&w, "pdserve.dummy.generator", PD_DUMMY_GENERATOR_VERSION);
    }

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
    long pos = w.failed ? 0 : ftell(w.f);
    if (pos < 0)
        w.failed = 1;
    put(&w, zeros, (size_t)((ALIGN - pos % ALIGN) % ALIGN));
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct pd_tensor *t = &m->tensors[i];
        put(&w, t->data, t->nbytes);
        put(&w, zeros, (size_t)((ALIGN - t->nbytes % ALIGN) % ALIGN));
    }
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
