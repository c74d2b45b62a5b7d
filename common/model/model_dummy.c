/* Dummy weights (vLLM's --load-format dummy): a Llama shape plus a seed give
 * bit-identical weights on every machine.
 *
 * Generator (version PD_DUMMY_GENERATOR_VERSION; tests/golden/dummy_ref.py is
 * an independent implementation the tests compare against):
 *   mix(z)   = SplitMix64's finaliser
 *   key(t)   = mix(seed ^ mix(FNV-1a-64(tensor name)))
 *   u(t, i)  = mix(key(t) + (i + 1) * 0x9E3779B97F4A7C15) >> 40      (24 bits)
 *   x(t, i)  = (2 u + 1 - 2^24) / 2^24                 exact in float32, in (-1, 1)
 *   norm weights ("*norm.weight"): 1 + x / 4
 *   other weights: x * (float)(1 / sqrt(ne[0]))       (unit-variance-ish outputs)
 * then stored in the shape's dtype (F32, or F16/BF16 rounded to nearest even).
 */
#include "model_internal.h"
#include "quant.h"
#include "parallel.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct preset {
    const char *name;
    struct pd_hparams hp;
    uint32_t dtype;
    const char *about;
};

#define HP_ARCH(ARCH, ID, L, E, F, H, KV, HD, V, C, BASE, TIED)                             \
    { .arch = ARCH, .arch_id = (ID), .qkv_bias = (ID) == PD_ARCH_QWEN2,                       \
      .qk_norm = (ID) == PD_ARCH_QWEN3,                                                        \
      .rope_style = (ID) == PD_ARCH_LLAMA ? PD_ROPE_ADJACENT : PD_ROPE_HALVES, .n_layer = (L),  \
      .n_embd = (E), .n_ff = (F), .n_head = (H),          \
      .n_head_kv = (KV), .head_dim = (HD), .rope_dim = (HD), .n_vocab = (V), .n_ctx_train = (C), \
      .rope_freq_base = (BASE), .rope_scale_factor = 1.0f, .norm_eps = 1e-5f,              \
      .tied_output = (TIED) }
#define HP(...) HP_ARCH("llama", PD_ARCH_LLAMA, __VA_ARGS__)

static const struct preset presets[] = {
    {"smollm2-135m", HP(30, 576, 1536, 9, 3, 64, 49152, 8192, 100000.0f, true), PD_DT_F32,
     "the default model's shape (SmolLM2-135M-Instruct)"},
    {"llama3-8b", HP(32, 4096, 14336, 32, 8, 128, 128256, 8192, 500000.0f, false), PD_DT_BF16,
     "Llama-3-8B's shape, bf16 (16 GB; use {\"preset\":\"llama3-8b\",\"n_layer\":N} for fewer layers)"},
    {"qwen2-7b",
     HP_ARCH("qwen2", PD_ARCH_QWEN2, 28, 3584, 18944, 28, 4, 128, 152064, 32768, 1e6f, false),
     PD_DT_BF16, "Qwen2.5-7B's shape (q/k/v bias), bf16 (15 GB)"},
    {"qwen3-8b",
     HP_ARCH("qwen3", PD_ARCH_QWEN3, 36, 4096, 12288, 32, 8, 128, 151936, 40960, 1e6f, false),
     PD_DT_BF16, "Qwen3-8B's shape (q/k norms), bf16 (16 GB)"},
    {"tiny", HP(2, 64, 128, 4, 2, 16, 256, 256, 10000.0f, true), PD_DT_F32,
     "tests: GQA 2, head dim 16, tied"},
    {"tiny-mha", HP(2, 96, 192, 3, 3, 32, 300, 512, 10000.0f, true), PD_DT_F32,
     "tests: GQA 1 (multi-head), head dim 32, tied"},
    {"tiny-gqa3", HP(3, 144, 384, 6, 2, 24, 509, 512, 10000.0f, false), PD_DT_F32,
     "tests: GQA 3, head dim 24, untied, odd vocab"},
    {"tiny-gqa4", HP(2, 128, 320, 8, 2, 16, 1001, 512, 500000.0f, false), PD_DT_F32,
     "tests: GQA 4, head dim 16, untied, odd vocab"},
    {"tiny-qwen2", HP_ARCH("qwen2", PD_ARCH_QWEN2, 2, 96, 192, 6, 2, 16, 300, 512, 1e6f, true),
     PD_DT_F32, "tests: Qwen2 steps (q/k/v bias, rotated halves), GQA 3"},
    {"tiny-qwen3", HP_ARCH("qwen3", PD_ARCH_QWEN3, 2, 64, 160, 4, 2, 32, 300, 512, 1e6f, false),
     PD_DT_F32, "tests: Qwen3 steps (q/k norms, head dim 32 x 4 heads > width 64), GQA 2"},
};

size_t pd_model_dummy_n_presets(void) { return sizeof(presets) / sizeof(presets[0]); }

const char *pd_model_dummy_preset(size_t i, const char **about)
{
    if (i >= pd_model_dummy_n_presets())
        return NULL;
    if (about)
        *about = presets[i].about;
    return presets[i].name;
}

static const struct preset *find_preset(const char *name)
{
    if (strcmp(name, "default") == 0)
        name = "smollm2-135m";
    for (size_t i = 0; i < pd_model_dummy_n_presets(); i++)
        if (strcmp(presets[i].name, name) == 0)
            return &presets[i];
    return NULL;
}

static void list_presets(char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < pd_model_dummy_n_presets() && len < n; i++) {
        int w = snprintf(buf + len, n - len, "%s%s", i ? ", " : "", presets[i].name);
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

/* "arch": its flags, and GGUF's rope style for it */
static int shape_arch(const cJSON *it, struct pd_hparams *hp, char *err, size_t errlen)
{
    int a = 0;
    while (a < PD_ARCH_COUNT &&
           !(cJSON_IsString(it) && strcmp(it->valuestring, pd_arch_name((enum pd_arch)a)) == 0))
        a++;
    if (a == PD_ARCH_COUNT)
        return pd_errf(err, errlen, -EINVAL,
                       "model shape: \"arch\" must be one of llama, qwen2, qwen3, mistral");
    pd_hparams_set_arch(hp, (enum pd_arch)a);
    hp->rope_style = a == PD_ARCH_LLAMA ? PD_ROPE_ADJACENT : PD_ROPE_HALVES;
    return 0;
}

/* JSON shape: {"preset": NAME, "n_layer": 2, ...}; see docs/internals/model.md. */
static int shape_from_json(const char *text, struct pd_hparams *hp, uint32_t *dtype,
                           char *name, size_t name_len, char *err, size_t errlen)
{
    static const char *const u32_keys[] = {"n_layer", "n_embd", "n_ff", "n_head", "n_head_kv",
                                           "head_dim", "rope_dim", "n_vocab", "n_ctx"};
    uint32_t *const u32_fields[] = {&hp->n_layer, &hp->n_embd, &hp->n_ff, &hp->n_head,
                                    &hp->n_head_kv, &hp->head_dim, &hp->rope_dim, &hp->n_vocab,
                                    &hp->n_ctx_train};
    cJSON *root = cJSON_ParseWithLength(text, strlen(text));
    const cJSON *it;
    int rc = 0, has_preset = 0, has_head_dim = 0, has_rope_dim = 0, has_kv = 0;

    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return pd_errf(err, errlen, -EINVAL, "model shape: not a preset name or a JSON object");
    }
    const cJSON *pj = cJSON_GetObjectItemCaseSensitive(root, "preset");
    if (pj) {
        const struct preset *pr = cJSON_IsString(pj) ? find_preset(pj->valuestring) : NULL;
        if (!pr) {
            char names[256];
            list_presets(names, sizeof(names));
            rc = pd_errf(err, errlen, -EINVAL, "model shape: \"preset\" must be one of %s", names);
            goto out;
        }
        *hp = pr->hp;
        *dtype = pr->dtype;
        snprintf(name, name_len, "%s", pr->name);
        has_preset = has_head_dim = has_rope_dim = has_kv = 1;
    } else {
        memset(hp, 0, sizeof(*hp));
        pd_hparams_set_arch(hp, PD_ARCH_LLAMA);
        hp->rope_freq_base = 10000.0f;
        hp->rope_scale_factor = 1.0f;
        hp->norm_eps = 1e-5f;
        hp->tied_output = true;
        hp->n_ctx_train = 2048;
        *dtype = PD_DT_F32;
        snprintf(name, name_len, "custom");
    }
    cJSON_ArrayForEach(it, root) {
        const char *k = it->string;
        size_t i;
        if (strcmp(k, "preset") == 0)
            continue;
        for (i = 0; i < sizeof(u32_keys) / sizeof(u32_keys[0]); i++)
            if (strcmp(k, u32_keys[i]) == 0)
                break;
        if (i < sizeof(u32_keys) / sizeof(u32_keys[0])) {
            double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
            if (!(v >= 1 && v <= 4294967295.0 && v == floor(v))) {
                rc = pd_errf(err, errlen, -EINVAL, "model shape: \"%s\" must be a positive integer",
                             k);
                goto out;
            }
            *u32_fields[i] = (uint32_t)v;
            has_head_dim |= strcmp(k, "head_dim") == 0;
            has_rope_dim |= strcmp(k, "rope_dim") == 0;
            has_kv |= strcmp(k, "n_head_kv") == 0;
        } else if (strcmp(k, "rope_freq_base") == 0 || strcmp(k, "norm_eps") == 0) {
            if (!cJSON_IsNumber(it)) {
                rc = pd_errf(err, errlen, -EINVAL, "model shape: \"%s\" must be a number", k);
                goto out;
            }
            *(k[0] == 'r' ? &hp->rope_freq_base : &hp->norm_eps) = (float)it->valuedouble;
        } else if (strcmp(k, "arch") == 0) {
            if ((rc = shape_arch(it, hp, err, errlen)) < 0)
                goto out;
        } else if (strcmp(k, "tied_output") == 0) {
            if (!cJSON_IsBool(it)) {
                rc = pd_errf(err, errlen, -EINVAL,
                             "model shape: \"tied_output\" must be true or false");
                goto out;
            }
            hp->tied_output = cJSON_IsTrue(it);
        } else if (strcmp(k, "dtype") == 0) {
            int t = cJSON_IsString(it) ? pd_dtype_parse(it->valuestring) : -EINVAL;
            if (t != PD_DT_F32 && t != PD_DT_F16 && t != PD_DT_BF16) {
                rc = pd_errf(err, errlen, -EINVAL,
                             "model shape: \"dtype\" must be one of f32, f16, bf16");
                goto out;
            }
            *dtype = (uint32_t)t;
        } else {
            rc = pd_errf(err, errlen, -EINVAL,
                         "model shape: unknown key \"%s\" (known: preset, arch, n_layer, n_embd, "
                         "n_ff, n_head, n_head_kv, head_dim, rope_dim, n_vocab, n_ctx, "
                         "rope_freq_base, norm_eps, tied_output, dtype)",
                         k);
            goto out;
        }
    }
    if (!has_preset) {
        if (!hp->n_layer || !hp->n_embd || !hp->n_ff || !hp->n_head || !hp->n_vocab) {
            rc = pd_errf(err, errlen, -EINVAL,
                         "model shape: without \"preset\", n_layer, n_embd, n_ff, n_head "
                         "and n_vocab are required");
            goto out;
        }
    }
    if (!has_kv)
        hp->n_head_kv = hp->n_head;
    if (!has_head_dim)
        hp->head_dim = hp->n_head ? hp->n_embd / hp->n_head : 0;
    if (!has_rope_dim || (has_head_dim && !has_rope_dim))
        hp->rope_dim = hp->head_dim;
    if (has_preset && (cJSON_GetArraySize(root) > 1))
        snprintf(name + strlen(name), name_len - strlen(name), "+custom");
out:
    cJSON_Delete(root);
    return rc;
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static int is_norm(const char *name)
{
    size_t n = strlen(name);
    return n >= 11 && strcmp(name + n - 11, "norm.weight") == 0;
}

/* Generate elements [begin, end) of tensor t (begin, end multiples of CHUNK
 * except the tensor's end). */
static void gen_range(const struct pd_tensor *t, uint64_t seed, uint64_t begin, uint64_t end)
{
    enum { CHUNK = 4096 };
    const uint64_t key = mix64(seed ^ mix64(fnv1a64(t->name)));
    const int norm = is_norm(t->name);
    const float scale = (float)(1.0 / sqrt((double)t->ne[0]));
    const size_t esize = t->type == PD_DT_F32 ? 4 : 2;
    float buf[CHUNK];

    for (uint64_t i0 = begin; i0 < end; i0 += CHUNK) {
        uint64_t n = end - i0 < CHUNK ? end - i0 : CHUNK;
        for (uint64_t j = 0; j < n; j++) {
            uint64_t u = mix64(key + (i0 + j + 1) * 0x9E3779B97F4A7C15ull) >> 40;
            float x = (float)((int64_t)(2 * u + 1) - (1 << 24)) / 16777216.0f;
            buf[j] = norm ? 1.0f + x * 0.25f : x * scale;
        }
        pd_quant_row(t->type, buf, (uint8_t *)t->data + i0 * esize, n);
    }
}

struct gen_job {
    const struct pd_model *m;
    unsigned k, n_threads;
};

static void *gen_thread(void *arg)
{
    const struct gen_job *job = arg;
    for (size_t i = 0; i < job->m->n_tensors; i++) {
        const struct pd_tensor *t = &job->m->tensors[i];
        uint64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        uint64_t per = (nel / job->n_threads + 4095) / 4096 * 4096;
        uint64_t b = per * job->k, e = b + per;
        if (job->k == job->n_threads - 1 || e > nel)
            e = nel;
        if (b < e)
            gen_range(t, job->m->seed, b, e);
    }
    return NULL;
}

static void fill_weights(struct pd_model *m)
{
    struct gen_job jobs[PD_PARALLEL_MAX];
    /* small models are not worth the threads */
    const unsigned n = m->weight_bytes < (64u << 20) ? 1 : pd_parallel_count(PD_PARALLEL_MAX);
    for (unsigned k = 0; k < n; k++)
        jobs[k] = (struct gen_job){.m = m, .k = k, .n_threads = n};
    pd_parallel_run(gen_thread, jobs, sizeof(jobs[0]), n);
}

int pd_model_load_dummy(struct pd_model *m, const struct pd_model_params *p, char *err,
                        size_t errlen)
{
    struct pd_hparams *hp = &m->hp;
    char name[64];
    int rc;

    if (!p->shape || !*p->shape)
        return pd_errf(err, errlen, -EINVAL, "model: --load-format dummy needs --model-shape");
    if (p->shape[0] == '{') {
        if ((rc = shape_from_json(p->shape, hp, &m->dtype, name, sizeof(name), err, errlen)) < 0)
            return rc;
    } else {
        const struct preset *pr = find_preset(p->shape);
        if (!pr) {
            char names[256];
            list_presets(names, sizeof(names));
            return pd_errf(err, errlen, -EINVAL,
                           "model: unknown model shape \"%.64s\" (presets: %s; or a JSON "
                           "object)",
                           p->shape, names);
        }
        *hp = pr->hp;
        m->dtype = pr->dtype;
        snprintf(name, sizeof(name), "%s", pr->name);
    }
    if ((rc = pd_hparams_validate(hp, err, errlen)) < 0)
        return rc;
    m->seed = p->seed;
    if (asprintf(&m->name, "dummy:%s", name) < 0) {
        m->name = NULL;
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    }

    /* canonical tensor order: embedding, layers (the architecture's weights
     * in enum order), final norm, output */
    size_t per_layer = 0;
    for (int w = 0; w < PD_W_COUNT; w++)
        per_layer += pd_model_weight_used(hp, (enum pd_weight)w);
    size_t n = 2 + (size_t)hp->n_layer * per_layer + (hp->tied_output ? 0 : 1);
    /* each tensor's name (32 bytes) after the tensors, in the same block */
    m->tensors = calloc(n, sizeof(*m->tensors) + 32);
    if (!m->tensors)
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    char *names = (char *)(m->tensors + n);
    m->n_tensors = n;
    size_t esize = m->dtype == PD_DT_F32 ? 4 : 2;
    uint64_t off = 0;
    int w = -1;
    for (size_t i = 0; i < n; i++) {
        struct pd_tensor *t = &m->tensors[i];
        char *nm = names + i * 32;
        uint64_t ne[2] = {hp->n_embd, hp->n_vocab};
        uint32_t nd = 2;
        if (i == 0) {
            snprintf(nm, 32, "token_embd.weight");
        } else if (i <= (size_t)hp->n_layer * per_layer) {
            do /* the next weight this architecture has */
                w = (w + 1) % PD_W_COUNT;
            while (!pd_model_weight_used(hp, (enum pd_weight)w));
            snprintf(nm, 32, "blk.%zu.%s", (i - 1) / per_layer, pd_model_weight_name((enum pd_weight)w));
            pd_model_weight_shape(hp, (enum pd_weight)w, &nd, ne);
        } else if (i == (size_t)hp->n_layer * per_layer + 1) {
            snprintf(nm, 32, "output_norm.weight");
            nd = 1, ne[1] = 1;
        } else {
            snprintf(nm, 32, "output.weight");
        }
        t->name = nm;
        t->type = m->dtype;
        t->n_dims = nd;
        t->ne[0] = ne[0], t->ne[1] = ne[1], t->ne[2] = 1, t->ne[3] = 1;
        t->nbytes = ne[0] * ne[1] * esize;
        t->offset = off;
        off += (t->nbytes + 63) / 64 * 64;
        m->weight_bytes += t->nbytes;
    }
    if (p->flags & PD_MODEL_META_ONLY)
        return 0;

    m->arena_len = off ? off : 64;
    m->arena = mmap(NULL, m->arena_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m->arena == MAP_FAILED) {
        m->arena = NULL;
        return pd_errf(err, errlen, -ENOMEM,
                       "model: cannot allocate %" PRIu64 " bytes of dummy weights",
                       (uint64_t)m->arena_len);
    }
    /* huge pages where the kernel gives them: 16 GB of 4 KiB first-touch
     * faults cost more than generating the values (a failure costs only that) */
    (void)madvise(m->arena, m->arena_len, MADV_HUGEPAGE);
    for (size_t i = 0; i < n; i++)
        m->tensors[i].data = (uint8_t *)m->arena + m->tensors[i].offset;
    fill_weights(m);
    mprotect(m->arena, m->arena_len, PROT_READ);
    return 0;
}
