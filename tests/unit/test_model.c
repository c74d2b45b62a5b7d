#include "gguf.h"
#include "gguf_build.h"
#include "golden.h"
#include "model.h"
#include "pd_test.h"
#include "quant.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <sodium.h>
#include <unistd.h>

static struct pd_model *dummy(const char *shape, uint64_t seed, unsigned flags)
{
    struct pd_model_params p = {.load_format = PD_LOAD_DUMMY, .shape = shape, .seed = seed,
                                .flags = flags};
    struct pd_model *m = NULL;
    char err[512];
    if (pd_model_load(&p, &m, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("dummy %s: %s", shape, err);
    return m;
}

static int dummy_err(const char *shape, char *err, size_t n)
{
    struct pd_model_params p = {.load_format = PD_LOAD_DUMMY, .shape = shape, .seed = 1};
    struct pd_model *m = NULL;
    int rc = pd_model_load(&p, &m, err, n);
    pd_model_free(m);
    return rc;
}

static int load_file(const char *path, struct pd_model **m, char *err, size_t n)
{
    struct pd_model_params p = {.path = path};
    *m = NULL;
    return pd_model_load(&p, m, err, n);
}

static char *tmp_path(const char *tag)
{
    static char path[256];
    snprintf(path, sizeof(path), "/tmp/pdserve-test-%s-%ld.gguf", tag, (long)getpid());
    return path;
}

/* d written as a GGUF file under tmp_path(tag); returns the path. */
static const char *write_tmp(const struct pd_model *d, const char *tag)
{
    char err[512];
    const char *path = tmp_path(tag);
    unlink(path);
    if (pd_model_write_gguf(d, path, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("write %s: %s", path, err);
    return path;
}

static void model_dummy_tiny_has_its_shape(void)
{
    struct pd_model *m = dummy("tiny", 1, 0);
    const struct pd_hparams *hp = pd_model_hparams(m);
    CHECK_EQ_INT(hp->n_layer, 2);
    CHECK_EQ_INT(hp->n_embd, 64);
    CHECK_EQ_INT(hp->n_head, 4);
    CHECK_EQ_INT(hp->n_head_kv, 2);
    CHECK_EQ_INT(hp->head_dim, 16);
    CHECK(hp->tied_output);
    /* Llama's nine weights per layer (no biases, no q/k norms) */
    CHECK_EQ_INT(pd_model_n_tensors(m), 2 + 2 * 9);
    CHECK(pd_model_output(m) == pd_model_tok_embd(m));
    const struct pd_tensor *k = pd_model_layer_tensor(m, 1, PD_W_ATTN_K);
    CHECK_STR(k->name, "blk.1.attn_k.weight");
    CHECK_EQ_INT(k->ne[0], 64);
    CHECK_EQ_INT(k->ne[1], 32);
    CHECK(k->data != NULL);
    CHECK(pd_model_layer_tensor(m, 2, PD_W_ATTN_K) == NULL);
    pd_model_free(m);
}

static void model_dummy_matches_independent_reference(void)
{
    FILE *f = golden_open("dummy_ref.json");
    CHECK(f != NULL);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    cJSON *root = cJSON_Parse(text);
    const cJSON *c;
    int cases = 0;
    CHECK(cJSON_IsArray(root));
    cJSON_ArrayForEach(c, root) {
        const char *shape = cJSON_GetObjectItem(c, "shape")->valuestring;
        uint64_t seed = (uint64_t)cJSON_GetObjectItem(c, "seed")->valuedouble;
        const cJSON *tensors = cJSON_GetObjectItem(c, "tensors");
        struct pd_model *m = dummy(shape, seed, 0);
        CHECK_EQ_INT(pd_model_n_tensors(m), cJSON_GetArraySize(tensors));
        for (size_t i = 0; i < pd_model_n_tensors(m); i++) {
            const struct pd_tensor *t = pd_model_tensor_at(m, i);
            const cJSON *want = cJSON_GetObjectItem(tensors, t->name);
            uint8_t h[crypto_hash_sha256_BYTES];
            char hex[2 * crypto_hash_sha256_BYTES + 1];
            CHECK(cJSON_IsString(want));
            crypto_hash_sha256(h, t->data, t->nbytes);
            sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
            if (strcmp(hex, want->valuestring) != 0)
                PD_TEST_FAIL_("%s seed %llu: tensor %s differs from the reference", shape,
                              (unsigned long long)seed, t->name);
        }
        pd_model_free(m);
        cases++;
    }
    cJSON_Delete(root);
    CHECK_EQ_INT(cases, 4);
}

static void model_dummy_seed_changes_weights_and_fingerprint(void)
{
    struct pd_model *a = dummy("tiny", 5, 0), *b = dummy("tiny", 5, 0), *c = dummy("tiny", 6, 0);
    const struct pd_tensor *ta = pd_model_layer_tensor(a, 0, PD_W_FFN_UP);
    const struct pd_tensor *tb = pd_model_layer_tensor(b, 0, PD_W_FFN_UP);
    const struct pd_tensor *tc = pd_model_layer_tensor(c, 0, PD_W_FFN_UP);
    CHECK(memcmp(ta->data, tb->data, ta->nbytes) == 0);
    CHECK(memcmp(ta->data, tc->data, ta->nbytes) != 0);
    CHECK(memcmp(pd_model_fingerprint(a), pd_model_fingerprint(b), PD_MODEL_FP_LEN) == 0);
    CHECK(memcmp(pd_model_fingerprint(a), pd_model_fingerprint(c), PD_MODEL_FP_LEN) != 0);
    pd_model_free(a);
    pd_model_free(b);
    pd_model_free(c);
}

static void model_dummy_values_are_in_range(void)
{
    struct pd_model *m = dummy("tiny-gqa3", 9, 0);
    for (size_t i = 0; i < pd_model_n_tensors(m); i++) {
        const struct pd_tensor *t = pd_model_tensor_at(m, i);
        const float *v = t->data;
        int norm = strstr(t->name, "norm") != NULL;
        float bound = norm ? 1.25f : 1.0f / sqrtf((float)t->ne[0]) * 1.0001f;
        double sum = 0;
        uint64_t n = t->ne[0] * t->ne[1];
        for (uint64_t j = 0; j < n; j++) {
            CHECK(norm ? (v[j] >= 0.75f && v[j] <= bound) : fabsf(v[j]) <= bound);
            sum += v[j];
        }
        /* uniform around 1 (norms) or 0 (the rest) */
        CHECK(fabs(sum / (double)n - (norm ? 1.0 : 0.0)) < (norm ? 0.05 : 0.05 * bound));
    }
    pd_model_free(m);
}

static void model_meta_only_llama3_8b_allocates_no_weights(void)
{
    struct pd_model *m = dummy("llama3-8b", 1, PD_MODEL_META_ONLY);
    const struct pd_hparams *hp = pd_model_hparams(m);
    CHECK_EQ_INT(hp->n_layer, 32);
    CHECK_EQ_INT(hp->n_head_kv, 8);
    CHECK(!hp->tied_output);
    CHECK_EQ_INT(pd_model_n_tensors(m), 2 + 32 * 9 + 1);
    /* Llama-3-8B has 8,030,261,248 parameters; bf16 is 2 bytes each */
    CHECK_EQ_INT(pd_model_weight_bytes(m), 8030261248ull * 2);
    for (size_t i = 0; i < pd_model_n_tensors(m); i++)
        CHECK(pd_model_tensor_at(m, i)->data == NULL);
    pd_model_free(m);
}

static void model_shape_json_overrides_preset(void)
{
    struct pd_model *m = dummy("{\"preset\":\"llama3-8b\",\"n_layer\":2,\"n_vocab\":1000,"
                               "\"dtype\":\"f16\"}", 1, PD_MODEL_META_ONLY);
    const struct pd_hparams *hp = pd_model_hparams(m);
    CHECK_EQ_INT(hp->n_layer, 2);
    CHECK_EQ_INT(hp->n_embd, 4096);
    CHECK_EQ_INT(hp->n_vocab, 1000);
    CHECK_EQ_INT(pd_model_tok_embd(m)->type, PD_DT_F16);
    CHECK_STR(pd_model_name(m), "dummy:llama3-8b+custom");
    pd_model_free(m);
}

static void model_shape_json_errors_name_the_problem(void)
{
    static const struct {
        const char *shape, *why;
    } bad[] = {
        {"{\"preset\":\"tiny\",\"n_layers\":2}", "unknown key \"n_layers\""},
        {"{\"preset\":\"tiny\",\"n_layer\":-1}", "\"n_layer\" must be a positive integer"},
        {"{\"n_layer\":2}", "are required"},
        {"{\"preset\":\"tiny\",\"dtype\":\"q4_1\"}", "f32, f16, bf16"},
        {"{\"preset\":\"tiny\",\"n_head_kv\":3}", "n_head_kv"},
        {"{\"preset\":\"tiny\"", "not a preset name or a JSON object"},
        {"llama-9000", "unknown model shape \"llama-9000\""},
    };
    char err[512];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ_INT(dummy_err(bad[i].shape, err, sizeof(err)), -EINVAL);
        CHECK_CONTAINS(err, bad[i].why);
    }
    CHECK_CONTAINS(err, "smollm2-135m"); /* an unknown name is answered with the known ones */
}

static void model_write_gguf_round_trips(void)
{
    char err[512];
    struct pd_model *d = dummy("tiny-gqa3", 11, 0), *g = NULL, *g2 = NULL;
    const char *path = write_tmp(d, "rt");

    CHECK_EQ_INT(load_file(path, &g, err, sizeof(err)), 0);
    CHECK(memcmp(pd_model_hparams(d), pd_model_hparams(g), sizeof(struct pd_hparams)) == 0);
    CHECK_EQ_INT(pd_model_n_tensors(g), pd_model_n_tensors(d));
    for (size_t i = 0; i < pd_model_n_tensors(d); i++) {
        const struct pd_tensor *td = pd_model_tensor_at(d, i);
        const struct pd_tensor *tg = pd_model_find(g, td->name);
        CHECK(tg != NULL);
        CHECK_EQ_INT(tg->type, td->type);
        CHECK_EQ_INT(tg->nbytes, td->nbytes);
        CHECK(memcmp(tg->data, td->data, td->nbytes) == 0);
    }
    uint64_t seed = 0;
    CHECK_EQ_INT(pd_gguf_get_u64(pd_model_gguf(g), "pdserve.dummy.seed", &seed), 0);
    CHECK_EQ_INT(seed, 11);
    CHECK_EQ_INT(load_file(path, &g2, err, sizeof(err)), 0);
    CHECK(memcmp(pd_model_fingerprint(g), pd_model_fingerprint(g2), PD_MODEL_FP_LEN) == 0);
    pd_model_free(g2);
    pd_model_free(g);
    pd_model_free(d);
    unlink(path);
}

/* A llama GGUF image from a tiny dummy model, with one thing changed. */
struct llama_opts {
    const char *drop; /* tensor left out */
    const char *rename_from, *rename_to;
    const char *reshape; /* tensor whose ne[1] grows by 1 */
    const char *retype; /* tensor declared Q5_K (known, not computed with) */
    const char *arch;
    int drop_eps; /* leave out a required key */
    int eps_as_string;
};

static struct gb build_llama(const struct pd_model *m, const struct llama_opts *o)
{
    const struct pd_hparams *hp = pd_model_hparams(m);
    struct gb b = {0};
    size_t nt = 0;
    const struct {
        const char *key;
        uint32_t value;
    } u32s[] = {
        {"llama.block_count", hp->n_layer},
        {"llama.context_length", hp->n_ctx_train},
        {"llama.embedding_length", hp->n_embd},
        {"llama.feed_forward_length", hp->n_ff},
        {"llama.attention.head_count", hp->n_head},
        {"llama.attention.head_count_kv", hp->n_head_kv},
    };

    for (size_t i = 0; i < pd_model_n_tensors(m); i++)
        nt += !(o->drop && strcmp(pd_model_tensor_at(m, i)->name, o->drop) == 0);
    gb_u32(&b, 0x46554747u);
    gb_u32(&b, 3);
    gb_u64(&b, nt);
    gb_u64(&b, o->drop_eps ? 7 : 8);
    gb_kv_str(&b, "general.architecture", o->arch ? o->arch : "llama");
    for (size_t i = 0; i < sizeof(u32s) / sizeof(u32s[0]); i++)
        gb_kv_u32(&b, u32s[i].key, u32s[i].value);
    if (o->eps_as_string)
        gb_kv_str(&b, "llama.attention.layer_norm_rms_epsilon", "1e-5");
    else if (!o->drop_eps)
        gb_kv_f32(&b, "llama.attention.layer_norm_rms_epsilon", hp->norm_eps);
    uint64_t off = 0;
    for (size_t i = 0; i < pd_model_n_tensors(m); i++) {
        const struct pd_tensor *t = pd_model_tensor_at(m, i);
        const char *name = t->name;
        uint64_t ne[2] = {t->ne[0], t->ne[1]};
        uint32_t type = t->type;
        if (o->drop && strcmp(name, o->drop) == 0)
            continue;
        if (o->rename_from && strcmp(name, o->rename_from) == 0)
            name = o->rename_to;
        if (o->reshape && strcmp(name, o->reshape) == 0)
            ne[1] += 1;
        if (o->retype && strcmp(name, o->retype) == 0) {
            type = PD_DT_Q5_K;
            ne[0] = 256, ne[1] = 1;
        }
        gb_tensor(&b, name, t->n_dims, ne, type, off);
        uint64_t row = 0;
        pd_dtype_row_size(type, ne[0], &row);
        off += (row * ne[1] + 31) / 32 * 32;
    }
    gb_pad(&b, 32);
    /* contents do not matter to these checks: zeros */
    uint8_t *zeros = calloc(1, off + 1);
    gb_bytes(&b, zeros, off);
    free(zeros);
    return b;
}

static int load_llama(const struct llama_opts *o, char *err, size_t n)
{
    struct pd_model *d = dummy("tiny", 1, 0), *g = NULL;
    struct gb b = build_llama(d, o);
    const char *path = tmp_path("llama");
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(b.p, 1, b.n, f) == b.n);
    fclose(f);
    free(b.p);
    pd_model_free(d);
    int rc = load_file(path, &g, err, n);
    pd_model_free(g);
    unlink(path);
    return rc;
}

/* The image o describes is refused with -EINVAL, the message naming why. */
static void llama_refused(const struct llama_opts *o, const char *why)
{
    char err[512];
    CHECK_EQ_INT(load_llama(o, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, why);
}

static void model_gguf_builder_baseline_loads(void)
{
    char err[512];
    struct llama_opts o = {0};
    int rc = load_llama(&o, err, sizeof(err));
    if (rc < 0)
        PD_TEST_FAIL_("baseline: %s", err);
}

static void model_rejects_missing_tensor(void)
{
    struct llama_opts o = {.drop = "blk.1.ffn_up.weight"};
    llama_refused(&o, "blk.1.ffn_up.weight is missing");
}

static void model_rejects_unknown_tensor(void)
{
    struct llama_opts o = {.rename_from = "blk.0.ffn_up.weight", .rename_to = "blk.0.ffn_up.bias"};
    llama_refused(&o, "unknown tensor blk.0.ffn_up.bias");
    o.rename_to = "blk.7.ffn_up.weight"; /* a layer the model does not have */
    llama_refused(&o, "unknown tensor blk.7.ffn_up.weight");
}

static void model_rejects_wrong_shape(void)
{
    struct llama_opts o = {.reshape = "blk.0.attn_k.weight"};
    llama_refused(&o, "blk.0.attn_k.weight has shape [64, 33, 1, 1], expected [64, 32]");
}

static void model_rejects_unsupported_type(void)
{
    char err[512];
    struct llama_opts o = {.retype = "output_norm.weight"};
    CHECK(load_llama(&o, err, sizeof(err)) < 0);
    CHECK_CONTAINS(err, "output_norm.weight");
}

static void model_rejects_other_architectures(void)
{
    struct llama_opts o = {.arch = "gpt2"};
    llama_refused(&o, "architecture \"gpt2\" is not supported");
}

static void model_rejects_missing_or_mistyped_keys(void)
{
    struct llama_opts o = {.drop_eps = 1};
    llama_refused(&o, "layer_norm_rms_epsilon is missing");
    o = (struct llama_opts){.eps_as_string = 1};
    llama_refused(&o, "layer_norm_rms_epsilon is not a float");
}

static void model_rejects_missing_and_non_gguf_files(void)
{
    char err[512];
    struct pd_model *m = NULL;
    CHECK_EQ_INT(load_file("/nonexistent/model.gguf", &m, err, sizeof(err)), -ENOENT);
    CHECK_CONTAINS(err, "/nonexistent/model.gguf");
    /* a directory is a checkpoint: this one has no config.json */
    CHECK_EQ_INT(load_file("/tmp", &m, err, sizeof(err)), -ENOENT);
    CHECK_CONTAINS(err, "config.json");
    const char *path = tmp_path("junk");
    FILE *f = fopen(path, "wb");
    fputs("this is not a model file at all, no", f);
    fclose(f);
    CHECK_EQ_INT(load_file(path, &m, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "not a GGUF file");
    unlink(path);
    CHECK(m == NULL);
}

static void model_fingerprint_sees_tensor_content(void)
{
    char err[512];
    struct pd_model *d = dummy("tiny", 3, 0), *a = NULL, *b = NULL;
    const char *path = write_tmp(d, "fp");
    CHECK_EQ_INT(load_file(path, &a, err, sizeof(err)), 0);
    /* flip one weight byte in place */
    const struct pd_tensor *t = pd_model_find(a, "blk.1.ffn_down.weight");
    long pos = (long)(pd_gguf_data_offset(pd_model_gguf(a)) + t->offset + 5);
    FILE *f = fopen(path, "r+b");
    CHECK(f && fseek(f, pos, SEEK_SET) == 0);
    int c = fgetc(f);
    fseek(f, pos, SEEK_SET);
    fputc(c ^ 0x40, f);
    fclose(f);
    CHECK_EQ_INT(load_file(path, &b, err, sizeof(err)), 0);
    CHECK(memcmp(pd_model_fingerprint(a), pd_model_fingerprint(b), PD_MODEL_FP_LEN) != 0);
    pd_model_free(a);
    pd_model_free(b);
    pd_model_free(d);
    unlink(path);
}

static const struct pd_test tests[] = {
    PD_TEST(model_dummy_tiny_has_its_shape),
    PD_TEST(model_dummy_matches_independent_reference),
    PD_TEST(model_dummy_seed_changes_weights_and_fingerprint),
    PD_TEST(model_dummy_values_are_in_range),
    PD_TEST(model_meta_only_llama3_8b_allocates_no_weights),
    PD_TEST(model_shape_json_overrides_preset),
    PD_TEST(model_shape_json_errors_name_the_problem),
    PD_TEST(model_write_gguf_round_trips),
    PD_TEST(model_gguf_builder_baseline_loads),
    PD_TEST(model_rejects_missing_tensor),
    PD_TEST(model_rejects_unknown_tensor),
    PD_TEST(model_rejects_wrong_shape),
    PD_TEST(model_rejects_unsupported_type),
    PD_TEST(model_rejects_other_architectures),
    PD_TEST(model_rejects_missing_or_mistyped_keys),
    PD_TEST(model_rejects_missing_and_non_gguf_files),
    PD_TEST(model_fingerprint_sees_tensor_content),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
