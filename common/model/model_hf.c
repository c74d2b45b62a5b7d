/* common/model/model_hf: a model from a Hugging Face checkpoint directory,
 * for model_load.c: config.json (the architecture and hyper-parameters),
 * generation_config.json (end-of-sequence ids), and the weights in one
 * model.safetensors or the shards model.safetensors.index.json names, each
 * memory-mapped and validated (common/model/safetensors). Tensors are
 * renamed to GGUF's names, so that binding, the engine and the GGUF writer
 * see one naming; each keeps its stored type (F32, F16, BF16).
 * docs/internals/checkpoint.md. */
#include "model_internal.h"
#include "quant.h"
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define JSON_MAX (1u << 20) /* config.json, generation_config.json */
#define INDEX_MAX (64u << 20) /* model.safetensors.index.json */
#define JSON_DEPTH 16
#define MAX_SHARDS 4096
#define NAME_ROOM 64 /* a renamed tensor's name, with its NUL */

int pd_model_path_is_dir(const char *path)
{
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---- JSON files ---- */

/* The file `name` in dirfd as a JSON object: 0, 1 when absent and optional,
 * or an error naming the file. */
static int read_json(int dirfd, const char *name, size_t cap, bool optional, cJSON **out,
                     char *err, size_t errlen)
{
    void *map = NULL;
    size_t len = 0;
    char inner[256];
    int rc;

    if (optional && faccessat(dirfd, name, F_OK, 0) < 0 && errno == ENOENT)
        return 1;
    if ((rc = pd_model_map_file(dirfd, name, 2, &map, &len, inner, sizeof(inner))) < 0)
        return pd_errf(err, errlen, rc, "%s", inner);
    if (len > cap) {
        munmap(map, len);
        return pd_errf(err, errlen, -E2BIG, "model: %s is %zu bytes, above the cap of %zu", name,
                       len, cap);
    }
    char why[160];
    cJSON *root = NULL;
    rc = pd_st_json_parse(map, len, JSON_DEPTH, &root, why, sizeof(why));
    munmap(map, len);
    if (rc < 0)
        return pd_errf(err, errlen, rc, "model: %s: %s", name, why);
    *out = root;
    return 0;
}

/* config.json's fields: 1 read, 0 absent or null (optional), else the error */
static int cfg_u32(const cJSON *cfg, const char *key, bool required, uint32_t *v, char *err,
                   size_t errlen)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!it || cJSON_IsNull(it)) {
        if (required)
            return pd_errf(err, errlen, -EINVAL, "model: config.json: \"%s\" is missing", key);
        return 0;
    }
    double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
    if (!(d >= 0 && d <= UINT32_MAX && d == floor(d)))
        return pd_errf(err, errlen, -EINVAL,
                       "model: config.json: \"%s\" must be an integer from 0 to 2^32 - 1", key);
    *v = (uint32_t)d;
    return 1;
}

static int cfg_num(const cJSON *obj, const char *where, const char *key, bool required, double *v,
                   char *err, size_t errlen)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        if (required)
            return pd_errf(err, errlen, -EINVAL, "model: %s: \"%s\" is missing", where, key);
        return 0;
    }
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble))
        return pd_errf(err, errlen, -EINVAL, "model: %s: \"%s\" must be a number", where, key);
    *v = it->valuedouble;
    return 1;
}

static int cfg_bool(const cJSON *cfg, const char *key, bool *v, char *err, size_t errlen)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!it || cJSON_IsNull(it))
        return 0;
    if (!cJSON_IsBool(it))
        return pd_errf(err, errlen, -EINVAL, "model: config.json: \"%s\" must be true or false",
                       key);
    *v = cJSON_IsTrue(it);
    return 1;
}

static const struct {
    const char *cls;
    enum pd_arch arch;
} hf_archs[] = {{"LlamaForCausalLM", PD_ARCH_LLAMA},
                {"Qwen2ForCausalLM", PD_ARCH_QWEN2},
                {"Qwen3ForCausalLM", PD_ARCH_QWEN3},
                {"MistralForCausalLM", PD_ARCH_MISTRAL}};

static int cfg_arch(const cJSON *cfg, struct pd_hparams *hp, char *err, size_t errlen)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(cfg, "architectures");
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 1 || !cJSON_IsString(a->child))
        return pd_errf(err, errlen, -EINVAL,
                       "model: config.json: \"architectures\" must be a list of one class name");
    for (size_t i = 0; i < sizeof(hf_archs) / sizeof(hf_archs[0]); i++)
        if (strcmp(a->child->valuestring, hf_archs[i].cls) == 0) {
            pd_hparams_set_arch(hp, hf_archs[i].arch);
            return 0;
        }
    return pd_errf(err, errlen, -ENOTSUP,
                   "model: architecture %.64s is not supported (LlamaForCausalLM, "
                   "Qwen2ForCausalLM, Qwen3ForCausalLM and MistralForCausalLM are)",
                   a->child->valuestring);
}

/* rope_scaling: null, {"rope_type": "default" | "linear" | "llama3", ...}
 * (older files say "type"); anything else is refused by name. */
static int cfg_rope_scaling(const cJSON *cfg, struct pd_hparams *hp, char *err, size_t errlen)
{
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(cfg, "rope_scaling");
    const char *w = "config.json rope_scaling";
    double v;
    int rc;
    if (!rs || cJSON_IsNull(rs))
        return 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!t)
        t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!cJSON_IsObject(rs) || !cJSON_IsString(t))
        return pd_errf(err, errlen, -EINVAL,
                       "model: config.json: \"rope_scaling\" must be null or an object with "
                       "\"rope_type\"");
    if (strcmp(t->valuestring, "default") == 0)
        return 0;
    if (strcmp(t->valuestring, "linear") != 0 && strcmp(t->valuestring, "llama3") != 0)
        return pd_errf(err, errlen, -ENOTSUP,
                       "model: config.json: rope scaling \"%.32s\" is not supported (default, "
                       "linear, llama3)",
                       t->valuestring);
    if ((rc = cfg_num(rs, w, "factor", true, &v, err, errlen)) < 0)
        return rc;
    hp->rope_scale_factor = (float)v;
    if (t->valuestring[1] == 'i') { /* linear */
        hp->rope_scaling = PD_ROPE_SCALING_LINEAR;
        return 0;
    }
    hp->rope_scaling = PD_ROPE_SCALING_LLAMA3;
    if ((rc = cfg_num(rs, w, "low_freq_factor", true, &v, err, errlen)) < 0)
        return rc;
    hp->rope_low_freq_factor = (float)v;
    if ((rc = cfg_num(rs, w, "high_freq_factor", true, &v, err, errlen)) < 0)
        return rc;
    hp->rope_high_freq_factor = (float)v;
    if ((rc = cfg_num(rs, w, "original_max_position_embeddings", true, &v, err, errlen)) < 0)
        return rc;
    if (!(v >= 1 && v <= (1u << 24) && v == floor(v)))
        return pd_errf(err, errlen, -EINVAL,
                       "model: %s: \"original_max_position_embeddings\" must be an integer from 1 "
                       "to 2^24",
                       w);
    hp->rope_orig_ctx = (uint32_t)v;
    return 0;
}

/* Settings that change the computation in ways this build does not do:
 * refused by name rather than served wrong. */
static int cfg_refusals(const cJSON *cfg, const struct pd_hparams *hp, char *err, size_t errlen)
{
    bool b = false;
    double v;
    int rc;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(cfg, "hidden_act");
    if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0))
        return pd_errf(err, errlen, -ENOTSUP,
                       "model: config.json: hidden_act must be \"silu\" (SwiGLU)");
    if (cJSON_GetObjectItemCaseSensitive(cfg, "quantization_config"))
        return pd_errf(err, errlen, -ENOTSUP,
                       "model: config.json: quantized checkpoints (quantization_config) are not "
                       "supported; use bf16/fp16/fp32 weights or a GGUF file");
    if ((rc = cfg_bool(cfg, "attention_bias", &b, err, errlen)) < 0)
        return rc;
    if (b)
        return pd_errf(err, errlen, -ENOTSUP,
                       "model: config.json: attention_bias (a bias on every attention "
                       "projection) is not supported");
    if ((rc = cfg_bool(cfg, "mlp_bias", &b, err, errlen)) < 0)
        return rc;
    if (b)
        return pd_errf(err, errlen, -ENOTSUP, "model: config.json: mlp_bias is not supported");
    if ((rc = cfg_num(cfg, "config.json", "partial_rotary_factor", false, &v, err, errlen)) < 0)
        return rc;
    if (rc == 1 && v != 1.0)
        return pd_errf(err, errlen, -ENOTSUP,
                       "model: config.json: partial_rotary_factor %g is not supported (1 is)", v);
    if (hp->arch_id == PD_ARCH_QWEN2 || hp->arch_id == PD_ARCH_QWEN3) {
        b = false;
        if ((rc = cfg_bool(cfg, "use_sliding_window", &b, err, errlen)) < 0)
            return rc;
        if (b)
            return pd_errf(err, errlen, -ENOTSUP,
                           "model: config.json: use_sliding_window (sliding-window attention in "
                           "the layers past max_window_layers) is not supported");
    }
    return 0;
}

static int hparams_from_config(const cJSON *cfg, struct pd_hparams *hp, char *err, size_t errlen)
{
    double v;
    int rc;

    memset(hp, 0, sizeof(*hp));
    if ((rc = cfg_arch(cfg, hp, err, errlen)) < 0 || (rc = cfg_refusals(cfg, hp, err, errlen)) < 0)
        return rc;
    hp->rope_style = PD_ROPE_HALVES; /* transformers' rotate_half */
    if ((rc = cfg_u32(cfg, "num_hidden_layers", true, &hp->n_layer, err, errlen)) < 0 ||
        (rc = cfg_u32(cfg, "hidden_size", true, &hp->n_embd, err, errlen)) < 0 ||
        (rc = cfg_u32(cfg, "intermediate_size", true, &hp->n_ff, err, errlen)) < 0 ||
        (rc = cfg_u32(cfg, "num_attention_heads", true, &hp->n_head, err, errlen)) < 0 ||
        (rc = cfg_u32(cfg, "vocab_size", true, &hp->n_vocab, err, errlen)) < 0)
        return rc;
    hp->n_head_kv = hp->n_head;
    if ((rc = cfg_u32(cfg, "num_key_value_heads", false, &hp->n_head_kv, err, errlen)) < 0)
        return rc;
    hp->head_dim = hp->n_head && hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : 0;
    if ((rc = cfg_u32(cfg, "head_dim", false, &hp->head_dim, err, errlen)) < 0)
        return rc;
    if (hp->head_dim == 0)
        return pd_errf(err, errlen, -EINVAL,
                       "model: config.json: hidden_size %" PRIu32
                       " is not a multiple of num_attention_heads %" PRIu32
                       " and head_dim is not given",
                       hp->n_embd, hp->n_head);
    hp->rope_dim = hp->head_dim;
    hp->n_ctx_train = 2048;
    if ((rc = cfg_u32(cfg, "max_position_embeddings", false, &hp->n_ctx_train, err, errlen)) < 0)
        return rc;
    hp->norm_eps = 1e-6f; /* the four classes' default */
    if ((rc = cfg_num(cfg, "config.json", "rms_norm_eps", false, &v, err, errlen)) < 0)
        return rc;
    if (rc == 1)
        hp->norm_eps = (float)v;
    hp->rope_freq_base = 10000.0f;
    if ((rc = cfg_num(cfg, "config.json", "rope_theta", false, &v, err, errlen)) < 0)
        return rc;
    if (rc == 1)
        hp->rope_freq_base = (float)v;
    hp->rope_scale_factor = 1.0f;
    if ((rc = cfg_rope_scaling(cfg, hp, err, errlen)) < 0)
        return rc;
    bool tied = false; /* the four classes' default */
    if ((rc = cfg_bool(cfg, "tie_word_embeddings", &tied, err, errlen)) < 0)
        return rc;
    hp->tied_output = tied;
    if (hp->arch_id == PD_ARCH_MISTRAL &&
        (rc = cfg_u32(cfg, "sliding_window", false, &hp->sliding_window, err, errlen)) < 0)
        return rc;
    return pd_hparams_validate(hp, err, errlen);
}

/* eos_token_id: an id or a list of ids; 1 read, 0 absent */
static int eos_ids(const cJSON *obj, const char *file, struct pd_model *m, char *err,
                   size_t errlen)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(obj, "eos_token_id");
    if (!e || cJSON_IsNull(e))
        return 0;
    const cJSON *one = cJSON_IsArray(e) ? e->child : e;
    m->n_eos = 0;
    for (; one; one = cJSON_IsArray(e) ? one->next : NULL) {
        double d = cJSON_IsNumber(one) ? one->valuedouble : -1;
        if (!(d >= 0 && d < m->hp.n_vocab && d == floor(d)))
            return pd_errf(err, errlen, -EINVAL,
                           "model: %s: eos_token_id must be ids below the vocabulary size %" PRIu32,
                           file, m->hp.n_vocab);
        if (m->n_eos == PD_MODEL_MAX_EOS)
            return pd_errf(err, errlen, -E2BIG, "model: %s: more than %d eos_token_id", file,
                           PD_MODEL_MAX_EOS);
        m->eos[m->n_eos++] = (int32_t)d;
    }
    return 1;
}

/* ---- tensor names: Hugging Face's to GGUF's ---- */

static const struct {
    const char *hf, *gguf; /* after "model.layers.N." / "blk.N." */
} layer_names[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

/* out (NAME_ROOM bytes): the GGUF name; 1 renamed, 0 a tensor to leave out
 * (older checkpoints saved rotary_emb.inv_freq, which config.json
 * determines; lm_head when the embedding is tied), -1 unknown. */
static int gguf_name(const char *hf, bool tied, char *out)
{
    if (strcmp(hf, "model.embed_tokens.weight") == 0)
        return snprintf(out, NAME_ROOM, "token_embd.weight"), 1;
    if (strcmp(hf, "model.norm.weight") == 0)
        return snprintf(out, NAME_ROOM, "output_norm.weight"), 1;
    if (strcmp(hf, "lm_head.weight") == 0)
        return tied ? 0 : (snprintf(out, NAME_ROOM, "output.weight"), 1);
    /* "model.layers.N." with N in decimal, no leading zeros, below 2^20
     * (binding checks it against the layer count) */
    static const char pre[] = "model.layers.";
    if (strncmp(hf, pre, sizeof(pre) - 1) != 0)
        return -1;
    const char *d = hf + sizeof(pre) - 1, *rest = d;
    unsigned layer = 0;
    while (*rest >= '0' && *rest <= '9' && rest - d < 7)
        layer = layer * 10 + (unsigned)(*rest++ - '0');
    if (rest == d || *rest != '.' || (*d == '0' && rest - d > 1))
        return -1;
    rest++;
    if (strcmp(rest, "self_attn.rotary_emb.inv_freq") == 0)
        return 0;
    for (size_t i = 0; i < sizeof(layer_names) / sizeof(layer_names[0]); i++)
        if (strcmp(rest, layer_names[i].hf) == 0)
            return snprintf(out, NAME_ROOM, "blk.%u.%s", layer, layer_names[i].gguf), 1;
    return -1;
}

/* ---- the shards ---- */

/* A shard's file name as the index gives it: a plain name in the directory. */
static bool shard_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 13 || n > 255 || s[0] == '.' || strcmp(s + n - 12, ".safetensors") != 0)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return false;
    return true;
}

struct entry {
    const char *tensor, *file; /* into the index's JSON */
};

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->tensor, ((const struct entry *)b)->tensor);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int map_shard(struct pd_model *m, int dirfd, const char *file, char *err, size_t errlen)
{
    struct pd_model_shard *sh = &m->shards[m->n_shards];
    char inner[512];
    int rc;
    if ((rc = pd_model_map_file(dirfd, file, 8, &sh->map, &sh->len, err, errlen)) < 0)
        return rc;
    m->n_shards++;
    if (!(sh->file = strdup(file)))
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    if ((rc = pd_st_parse(sh->map, sh->len, &sh->st, inner, sizeof(inner))) < 0)
        return pd_errf(err, errlen, rc, "model: %s: %s", file, inner);
    return 0;
}

/* The shard files: the index's weight_map (sorted, checked), or the one
 * model.safetensors. entries: the index sorted by tensor name, or NULL. */
static int load_shards(struct pd_model *m, int dirfd, cJSON **index, struct entry **entries,
                       size_t *n_entries, char *err, size_t errlen)
{
    int rc = read_json(dirfd, "model.safetensors.index.json", INDEX_MAX, true, index, err, errlen);
    if (rc < 0)
        return rc;
    if (rc == 1) { /* one file */
        *index = NULL;
        if (!(m->shards = calloc(1, sizeof(*m->shards))))
            return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
        return map_shard(m, dirfd, "model.safetensors", err, errlen);
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(*index, "weight_map");
    if (!cJSON_IsObject(wm))
        return pd_errf(err, errlen, -EINVAL,
                       "model: model.safetensors.index.json: \"weight_map\" must be an object");
    size_t n = (size_t)cJSON_GetArraySize(wm);
    if (n == 0 || n > PD_ST_MAX_TENSORS)
        return pd_errf(err, errlen, -EINVAL,
                       "model: model.safetensors.index.json: %zu tensors (1 to %d)", n,
                       PD_ST_MAX_TENSORS);
    struct entry *e = calloc(n, sizeof(*e));
    const char **files = calloc(n, sizeof(*files));
    if (!e || !files) {
        free(e), free(files);
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    }
    *entries = e, *n_entries = n;
    size_t i = 0;
    for (const cJSON *it = wm->child; it; it = it->next, i++) {
        if (!cJSON_IsString(it) || !shard_name_ok(it->valuestring)) {
            free(files);
            return pd_errf(err, errlen, -EINVAL,
                           "model: model.safetensors.index.json: tensor %.128s names a shard "
                           "that is not a plain *.safetensors file name in the directory",
                           it->string);
        }
        e[i] = (struct entry){.tensor = it->string, .file = it->valuestring};
        files[i] = it->valuestring;
    }
    qsort(e, n, sizeof(*e), entry_cmp);
    qsort(files, n, sizeof(*files), str_cmp);
    size_t n_files = 0;
    for (i = 0; i < n; i++)
        if (i == 0 || strcmp(files[i], files[i - 1]) != 0)
            files[n_files++] = files[i];
    if (n_files > MAX_SHARDS || !(m->shards = calloc(n_files, sizeof(*m->shards)))) {
        free(files);
        return n_files > MAX_SHARDS
                   ? pd_errf(err, errlen, -E2BIG, "model: more than %d shards", MAX_SHARDS)
                   : pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    }
    rc = 0;
    for (i = 0; i < n_files && rc == 0; i++)
        rc = map_shard(m, dirfd, files[i], err, errlen);
    free(files);
    return rc;
}

/* Every tensor of every shard, renamed, into m->tensors; with an index,
 * each must be listed there under its own shard, and every listed tensor
 * must be found (counts equal and names unique make it one to one). */
static int collect_tensors(struct pd_model *m, const struct entry *entries, size_t n_entries,
                           char *err, size_t errlen)
{
    size_t total = 0;
    for (size_t s = 0; s < m->n_shards; s++)
        total += pd_st_n_tensors(m->shards[s].st);
    if (total > PD_ST_MAX_TENSORS)
        return pd_errf(err, errlen, -E2BIG, "model: more than %d tensors", PD_ST_MAX_TENSORS);
    if (entries && total != n_entries)
        return pd_errf(err, errlen, -EINVAL,
                       "model: the shards hold %zu tensors, model.safetensors.index.json lists "
                       "%zu",
                       total, n_entries);
    bool untied_seen = false;
    m->tensors = calloc(total ? total : 1, sizeof(*m->tensors));
    m->tensor_names = calloc(total ? total : 1, NAME_ROOM);
    if (!m->tensors || !m->tensor_names)
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    for (size_t s = 0; s < m->n_shards; s++) {
        const struct pd_st *st = m->shards[s].st;
        for (size_t i = 0; i < pd_st_n_tensors(st); i++) {
            const struct pd_st_tensor *x = pd_st_tensor_at(st, i);
            if (entries) {
                struct entry key = {.tensor = x->name};
                const struct entry *e = bsearch(&key, entries, n_entries, sizeof(*e), entry_cmp);
                if (!e || strcmp(e->file, m->shards[s].file) != 0)
                    return pd_errf(err, errlen, -EINVAL,
                                   "model: tensor %s is in %s, but model.safetensors.index.json "
                                   "%s%s",
                                   x->name, m->shards[s].file, e ? "puts it in " : "does not list it",
                                   e ? e->file : "");
            }
            char *nm = m->tensor_names + m->n_tensors * NAME_ROOM;
            int r = gguf_name(x->name, m->hp.tied_output, nm);
            if (r < 0)
                return pd_errf(err, errlen, -EINVAL,
                               "model: checkpoint tensor %s is not one the %s architecture has",
                               x->name, m->hp.arch);
            if (r == 0)
                continue;
            struct pd_tensor *t = &m->tensors[m->n_tensors++];
            t->name = nm;
            t->type = x->type;
            t->n_dims = x->n_dims;
            for (uint32_t d = 0; d < 4; d++) /* ggml's order: ne[0] contiguous */
                t->ne[d] = d < x->n_dims ? x->shape[x->n_dims - 1 - d] : 1;
            t->nbytes = x->nbytes;
            t->offset = x->offset;
            t->data = x->data;
            m->weight_bytes += x->nbytes;
            untied_seen |= strcmp(nm, "output.weight") == 0;
        }
    }
    /* binding would take a missing output matrix for a tied one */
    if (!m->hp.tied_output && !untied_seen)
        return pd_errf(err, errlen, -EINVAL,
                       "model: lm_head.weight is missing, and config.json says "
                       "tie_word_embeddings is false");
    return 0;
}

int pd_model_load_hf(struct pd_model *m, const char *dir, char *err, size_t errlen)
{
    cJSON *cfg = NULL, *gen = NULL, *index = NULL;
    struct entry *entries = NULL;
    size_t n_entries = 0;
    char inner[512];
    int rc;

    if (!dir || !*dir)
        return pd_errf(err, errlen, -EINVAL, "model: no model given (--model)");
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return pd_errf(err, errlen, -errno, "model: cannot open directory %s: %s", dir,
                       strerror(errno));
    if ((rc = read_json(dirfd, "config.json", JSON_MAX, false, &cfg, inner, sizeof(inner))) < 0 ||
        (rc = hparams_from_config(cfg, &m->hp, inner, sizeof(inner))) < 0 ||
        (rc = eos_ids(cfg, "config.json", m, inner, sizeof(inner))) < 0 ||
        (rc = read_json(dirfd, "generation_config.json", JSON_MAX, true, &gen, inner,
                        sizeof(inner))) < 0 ||
        (rc == 0 && (rc = eos_ids(gen, "generation_config.json", m, inner, sizeof(inner))) < 0) ||
        (m->hp.rope_scaling == PD_ROPE_SCALING_LLAMA3 &&
         (rc = pd_model_llama3_factors(m, inner, sizeof(inner))) < 0) ||
        (rc = load_shards(m, dirfd, &index, &entries, &n_entries, inner, sizeof(inner))) < 0 ||
        (rc = collect_tensors(m, entries, n_entries, inner, sizeof(inner))) < 0)
        goto out;
    if (!(m->dir = strdup(dir)) || !(m->name = strdup(dir)))
        rc = pd_errf(inner, sizeof(inner), -ENOMEM, "model: out of memory");
out:
    close(dirfd);
    free(entries);
    cJSON_Delete(index);
    cJSON_Delete(gen);
    cJSON_Delete(cfg);
    if (rc < 0) /* name the directory: the files' own messages cannot */
        return pd_errf(err, errlen, rc, "%s: %s", dir, inner);
    return 0;
}
