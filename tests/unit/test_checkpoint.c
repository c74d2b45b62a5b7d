/* Hugging Face checkpoint directories (common/model/model_hf, safetensors):
 * the four architectures' test models (tests/golden/hf/, written by
 * transformers in make_hf_models.py) against transformers' float64 logits
 * and greedy continuations, on weights as stored and as fp32; the same
 * models written out as GGUF (qwen2, qwen3 and llama with its Q/K rows
 * permuted and Llama-3.1's factors as rope_freqs.weight) against the same
 * goldens; the default model as a checkpoint (make_smollm2_checkpoint.py);
 * and the loader's refusals, each naming the problem. */
#include "engine_golden.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *hf_dir(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof(path), "%s/tests/golden/hf/%s", PD_SRCDIR, name);
    return path;
}

static struct pd_model *load_path(const char *path)
{
    struct pd_model_params p = {.path = path};
    struct pd_model *m = NULL;
    char err[512];
    if (pd_model_load(&p, &m, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return m;
}

static void golden_and_greedy(const char *name, const char *golden)
{
    struct pd_model *m = load_path(hf_dir(name));
    check_golden(m, golden, PD_CPU_W_STORED);
    check_golden(m, golden, PD_CPU_W_F32);
    check_greedy(m, golden, PD_CPU_W_STORED);
    pd_model_free(m);
}

/* Llama-3.1: rope_type llama3 (factors computed at load), untied output,
 * two eos ids, fp32 */
static void checkpoint_llama31_matches_transformers(void)
{
    golden_and_greedy("llama31", "hf-llama31");
    struct pd_model *m = load_path(hf_dir("llama31"));
    const struct pd_hparams *hp = pd_model_hparams(m);
    CHECK_STR(hp->arch, "llama");
    CHECK(hp->rope_scaling == PD_ROPE_SCALING_LLAMA3 && pd_model_rope_factors(m) != NULL);
    CHECK(hp->rope_style == PD_ROPE_HALVES && !hp->tied_output);
    size_t n;
    const int32_t *eos = pd_model_eos(m, &n);
    CHECK(n == 2 && eos[0] != eos[1]);
    pd_model_free(m);
}

/* Qwen2: q/k/v bias, tied embedding, bf16 */
static void checkpoint_qwen2_matches_transformers(void)
{
    golden_and_greedy("qwen2", "hf-qwen2");
}

/* Qwen3: q/k RMSNorm per head, head_dim x heads above the width, fp16 */
static void checkpoint_qwen3_matches_transformers(void)
{
    golden_and_greedy("qwen3", "hf-qwen3");
}

/* Mistral: sharded (model.safetensors.index.json), GQA 4:1, bf16, a
 * sliding window no shorter than the context served */
static void checkpoint_mistral_matches_transformers(void)
{
    golden_and_greedy("mistral", "hf-mistral");
}

/* The window is shorter than what is asked to be served: refused with what
 * to do; as long as it is, accepted */
static void checkpoint_mistral_refuses_context_past_window(void)
{
    struct pd_model *m = load_path(hf_dir("mistral"));
    const uint32_t w = pd_model_hparams(m)->sliding_window;
    CHECK(w > 0);
    struct pd_engine_params p = {.model = m, .kv_cache_bytes = 1u << 20, .max_model_len = w * 2};
    struct pd_engine *e = NULL;
    char err[512];
    CHECK_EQ_INT(pd_engine_new(&p, &e, err, sizeof(err)), -ENOTSUP);
    CHECK_CONTAINS(err, "sliding window");
    CHECK_CONTAINS(err, "--max-model-len");
    CHECK(e == NULL);
    p.max_model_len = w;
    CHECK_EQ_INT(pd_engine_new(&p, &e, err, sizeof(err)), 0);
    pd_engine_free(e);
    pd_model_free(m);
}

/* GGUF files of the new architectures: each checkpoint written out by
 * pd_model_write_gguf (qwen2/qwen3 keys; llama's Q/K permuted for adjacent
 * pairs and its factors as rope_freqs.weight), loaded back as GGUF, matches
 * the checkpoint's goldens */
static void checkpoint_written_as_gguf_matches_transformers(void)
{
    static const char *const names[] = {"llama31", "qwen2", "qwen3"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char path[256], golden[64], err[512];
        snprintf(path, sizeof(path), "/tmp/pd-test-ckpt-%d-%s.gguf", (int)getpid(), names[i]);
        snprintf(golden, sizeof(golden), "hf-%s", names[i]);
        struct pd_model *m = load_path(hf_dir(names[i]));
        if (pd_model_write_gguf(m, path, err, sizeof(err)) < 0)
            PD_TEST_FAIL_("%s", err);
        struct pd_model *g = load_path(path);
        const struct pd_hparams *a = pd_model_hparams(m), *b = pd_model_hparams(g);
        CHECK(pd_model_gguf(g) != NULL);
        CHECK_EQ_INT(b->arch_id, a->arch_id == PD_ARCH_MISTRAL ? PD_ARCH_LLAMA : a->arch_id);
        CHECK_EQ_INT(b->qkv_bias, a->qkv_bias);
        CHECK_EQ_INT(b->qk_norm, a->qk_norm);
        CHECK_EQ_INT(b->has_rope_freqs, a->has_rope_freqs);
        check_golden(g, golden, PD_CPU_W_STORED);
        pd_model_free(g);
        pd_model_free(m);
        unlink(path);
    }
}

/* GGUF files from llama.cpp's own converter (make_hf_gguf.py: an
 * independent producer) of the same checkpoints, their weights kept exactly:
 * qwen2's and qwen3's keys and tensor names, Llama-3.1's rope_freqs.weight
 * and permuted Q/K; the checkpoints' goldens hold for them */
static void checkpoint_llama_cpp_gguf_matches_transformers(void)
{
    static const char *const names[] = {"llama31", "qwen2", "qwen3"};
    static const enum pd_arch arch[] = {PD_ARCH_LLAMA, PD_ARCH_QWEN2, PD_ARCH_QWEN3};
    for (size_t i = 0; i < 3; i++) {
        char path[1024], golden[64];
        snprintf(path, sizeof(path), "%s/tests/golden/gguf/hf-%s.gguf", PD_SRCDIR, names[i]);
        snprintf(golden, sizeof(golden), "hf-%s", names[i]);
        struct pd_model *m = load_path(path);
        const struct pd_hparams *hp = pd_model_hparams(m);
        CHECK_EQ_INT(hp->arch_id, arch[i]);
        CHECK_EQ_INT(hp->rope_style, i == 0 ? PD_ROPE_ADJACENT : PD_ROPE_HALVES);
        CHECK_EQ_INT(hp->has_rope_freqs, i == 0);
        check_golden(m, golden, PD_CPU_W_STORED);
        pd_model_free(m);
    }
}

/* The default model as a checkpoint (bf16), made by transformers and
 * reproduced bit for bit by tests/golden/make_smollm2_checkpoint.py
 * (tests/run.sh makes it and sets PDSERVE_HF_MODEL); without it here the
 * test is skipped with how to make it. */
static void checkpoint_default_model_matches_transformers(void)
{
    const char *env = getenv("PDSERVE_HF_MODEL");
    char path[1024];
    if (env && *env) {
        snprintf(path, sizeof(path), "%s", env);
    } else {
        const char *home = getenv("HOME");
        snprintf(path, sizeof(path), "%s/.cache/pdserve/hf/smollm2-135m-instruct",
                 home ? home : "");
        if (access(path, R_OK) != 0)
            PD_SKIP("the default model as a checkpoint is not made (tests/run.sh makes it with "
                    "tests/golden/make_smollm2_checkpoint.py; or set PDSERVE_HF_MODEL)");
    }
    struct pd_model *m = load_path(path);
    CHECK(pd_model_dir(m) != NULL);
    check_golden(m, "hf-smollm2", PD_CPU_W_STORED);
    check_greedy(m, "hf-smollm2", PD_CPU_W_STORED);
    pd_model_free(m);
}

/* ---- the loader's refusals, on edited copies of the qwen2 and mistral
 * test models ---- */

static char *slurp(const char *path, size_t *len)
{
    char *b = pd_test_read_file(path, len);
    CHECK(b != NULL);
    return b;
}

static void spill(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, len, f) == len);
    fclose(f);
}

/* A copy of tests/golden/hf/<name> in a new directory (removed by rm_copy). */
static char *copy_model(const char *name)
{
    static char dir[256];
    snprintf(dir, sizeof(dir), "/tmp/pd-test-ckpt-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    DIR *d = opendir(hf_dir(name));
    CHECK(d != NULL);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char src[1400], dst[600];
        size_t len;
        snprintf(src, sizeof(src), "%s/%s", hf_dir(name), de->d_name);
        snprintf(dst, sizeof(dst), "%s/%s", dir, de->d_name);
        char *b = slurp(src, &len);
        spill(dst, b, len);
        free(b);
    }
    closedir(d);
    return dir;
}

static void rm_copy(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char p[600];
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* file in dir with its first `from` replaced by `to` (which must be there) */
static void edit(const char *dir, const char *file, const char *from, const char *to)
{
    char path[600];
    size_t len;
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    char *b = slurp(path, &len);
    char *at = strstr(b, from);
    if (!at)
        PD_TEST_FAIL_("%s has no \"%s\" to edit", file, from);
    size_t fl = strlen(from), tl = strlen(to);
    char *o = malloc(len - fl + tl + 1);
    memcpy(o, b, (size_t)(at - b));
    memcpy(o + (at - b), to, tl);
    memcpy(o + (at - b) + tl, at + fl, len - (size_t)(at - b) - fl);
    spill(path, o, len - fl + tl);
    free(o), free(b);
}

/* loading dir fails with rc and a message containing want */
static void refused(const char *dir, int rc, const char *want)
{
    struct pd_model_params p = {.path = dir};
    struct pd_model *m = NULL;
    char err[512] = "";
    int got = pd_model_load(&p, &m, err, sizeof(err));
    if (got != rc || !strstr(err, want))
        PD_TEST_FAIL_("expected %d with \"%s\", got %d: %s", rc, want, got, err);
    CHECK(m == NULL);
    CHECK_CONTAINS(err, dir); /* the directory is named */
}

/* one edit of qwen2's config.json, refused */
static void config_refused(const char *from, const char *to, int rc, const char *want)
{
    char *dir = copy_model("qwen2");
    edit(dir, "config.json", from, to);
    refused(dir, rc, want);
    rm_copy(dir);
}

static void checkpoint_refuses_unknown_architecture_by_name(void)
{
    config_refused("\"Qwen2ForCausalLM\"", "\"GPT2LMHeadModel\"", -ENOTSUP, "GPT2LMHeadModel");
}

static void checkpoint_refuses_settings_it_would_compute_wrong(void)
{
    config_refused("\"rope_scaling\": null", "\"rope_scaling\": {\"rope_type\": \"yarn\", "
                   "\"factor\": 4.0}", -ENOTSUP, "\"yarn\" is not supported");
    config_refused("\"use_sliding_window\": false", "\"use_sliding_window\": true", -ENOTSUP,
                   "use_sliding_window");
    config_refused("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", -ENOTSUP, "hidden_act");
    config_refused("\"vocab_size\": 512", "\"vocab_size\": 512, \"quantization_config\": {}",
                   -ENOTSUP, "quantization_config");
    config_refused("\"vocab_size\": 512", "\"vocab_size\": 512, \"attention_bias\": true",
                   -ENOTSUP, "attention_bias");
}

static void checkpoint_refuses_malformed_config(void)
{
    config_refused("\"vocab_size\": 512", "\"vocab_size\": 512, \"vocab_size\": 513", -EINVAL,
                   "key \"vocab_size\" appears twice");
    config_refused("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 2.5", -EINVAL,
                   "num_hidden_layers");
    config_refused("\"num_attention_heads\": 4,", "", -EINVAL, "num_attention_heads");
    config_refused("\"vocab_size\": 512", "\"vocab_size\": 512,", -EINVAL, "not a JSON object");
    config_refused("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", -EINVAL,
                   "not a multiple");
    config_refused("\"eos_token_id\": 2", "\"eos_token_id\": 100000", -EINVAL, "eos_token_id");
}

/* the weights must be exactly what config.json describes */
static void checkpoint_refuses_weights_that_disagree(void)
{
    /* a hidden size the tensors do not have */
    config_refused("\"intermediate_size\": 384", "\"intermediate_size\": 385", -EINVAL,
                   "expected [128, 385]");
    /* untied, with no lm_head: not silently tied */
    config_refused("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false", -EINVAL,
                   "lm_head.weight is missing");
    /* qwen3 has q/k norms that a llama would not apply */
    char *dir = copy_model("qwen3");
    edit(dir, "config.json", "\"Qwen3ForCausalLM\"", "\"LlamaForCausalLM\"");
    refused(dir, -EINVAL, "_norm.weight (not part of the llama architecture");
    rm_copy(dir);
}

static void checkpoint_refuses_bad_index(void)
{
    const char *idx = "model.safetensors.index.json";
    char *dir = copy_model("mistral");
    edit(dir, idx, "\"model.embed_tokens.weight\": \"model-00001-of-00003.safetensors\"",
         "\"model.embed_tokens.weight\": \"model-00002-of-00003.safetensors\"");
    refused(dir, -EINVAL, "puts it in model-00002-of-00003.safetensors");
    rm_copy(dir);

    dir = copy_model("mistral");
    edit(dir, idx, "\"model.embed_tokens.weight\": \"model-00001-of-00003.safetensors\"",
         "\"model.embed_tokens.weight\": \"../model-00001-of-00003.safetensors\"");
    refused(dir, -EINVAL, "plain *.safetensors file name");
    rm_copy(dir);

    dir = copy_model("mistral");
    edit(dir, idx, "\"model.embed_tokens.weight\": \"model-00001-of-00003.safetensors\",", "");
    refused(dir, -EINVAL, "lists");
    rm_copy(dir);

    dir = copy_model("mistral");
    char shard[600];
    snprintf(shard, sizeof(shard), "%s/model-00003-of-00003.safetensors", dir);
    CHECK(unlink(shard) == 0);
    refused(dir, -ENOENT, "model-00003-of-00003.safetensors");
    rm_copy(dir);
}

/* a shard cut short: the safetensors parser's message, with the file named */
static void checkpoint_refuses_truncated_shard(void)
{
    char *dir = copy_model("qwen2"), path[600];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK(truncate(path, st.st_size - 2) == 0);
    refused(dir, -EINVAL, "model.safetensors: safetensors:");
    rm_copy(dir);
}

/* prefilld and decoded compare fingerprints: different checkpoints (even of
 * one shape) never share one */
static void checkpoint_fingerprints_differ(void)
{
    static const char *const names[] = {"llama31", "qwen2", "qwen3", "mistral"};
    uint8_t fp[4][PD_MODEL_FP_LEN];
    for (int i = 0; i < 4; i++) {
        struct pd_model *m = load_path(hf_dir(names[i]));
        memcpy(fp[i], pd_model_fingerprint(m), PD_MODEL_FP_LEN);
        pd_model_free(m);
    }
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            CHECK(memcmp(fp[i], fp[j], PD_MODEL_FP_LEN) != 0);
    /* one weight changed (a bias element) changes it */
    char *dir = copy_model("qwen2"), path[600];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    struct pd_model *a = load_path(dir);
    uint8_t before[PD_MODEL_FP_LEN];
    memcpy(before, pd_model_fingerprint(a), PD_MODEL_FP_LEN);
    const struct pd_tensor *b = pd_model_find(a, "blk.0.attn_q.bias");
    CHECK(b != NULL);
    const uint64_t at = b->offset;
    pd_model_free(a);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    fseek(f, (long)at, SEEK_SET);
    int c = fgetc(f);
    fseek(f, (long)at, SEEK_SET);
    fputc(c ^ 1, f);
    fclose(f);
    a = load_path(dir);
    CHECK(memcmp(before, pd_model_fingerprint(a), PD_MODEL_FP_LEN) != 0);
    pd_model_free(a);
    rm_copy(dir);
}

static const struct pd_test tests[] = {
    PD_TEST(checkpoint_llama31_matches_transformers),
    PD_TEST(checkpoint_qwen2_matches_transformers),
    PD_TEST(checkpoint_qwen3_matches_transformers),
    PD_TEST(checkpoint_mistral_matches_transformers),
    PD_TEST(checkpoint_mistral_refuses_context_past_window),
    PD_TEST(checkpoint_written_as_gguf_matches_transformers),
    PD_TEST(checkpoint_llama_cpp_gguf_matches_transformers),
    PD_TEST(checkpoint_default_model_matches_transformers),
    PD_TEST(checkpoint_refuses_unknown_architecture_by_name),
    PD_TEST(checkpoint_refuses_settings_it_would_compute_wrong),
    PD_TEST(checkpoint_refuses_malformed_config),
    PD_TEST(checkpoint_refuses_weights_that_disagree),
    PD_TEST(checkpoint_refuses_bad_index),
    PD_TEST(checkpoint_refuses_truncated_shard),
    PD_TEST(checkpoint_fingerprints_differ),
    {NULL, NULL},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
