/* The default model (SmolLM2-135M-Instruct, Q4_1 GGUF), as fetched by
 * deploy/fetch-model.sh. Skips (77) when the file is absent; tests/run.sh
 * fetches it first, so there it always runs. */
#include "default_model.h"
#include "golden.h"
#include "gguf.h"
#include "model.h"
#include "pd_test.h"
#include "quant.h"

#include <errno.h>
#include <unistd.h>

#define load_default pd_test_load_default_model

/* SmolLM2-135M's published config.json: these numbers come from the model's
 * authors, not from our parser. */
static void default_model_has_smollm2_135m_hparams(void)
{
    struct pd_model *m = load_default();
    const struct pd_hparams *hp = pd_model_hparams(m);
    CHECK_STR(hp->arch, "llama");
    CHECK_EQ_INT(hp->n_layer, 30);
    CHECK_EQ_INT(hp->n_embd, 576);
    CHECK_EQ_INT(hp->n_ff, 1536);
    CHECK_EQ_INT(hp->n_head, 9);
    CHECK_EQ_INT(hp->n_head_kv, 3);
    CHECK_EQ_INT(hp->head_dim, 64);
    CHECK_EQ_INT(hp->n_vocab, 49152);
    CHECK_EQ_INT(hp->n_ctx_train, 8192);
    CHECK(hp->rope_freq_base == 100000.0f);
    CHECK(hp->norm_eps == 1e-5f);
    CHECK(hp->tied_output);
    CHECK_EQ_INT(hp->rope_scaling, PD_ROPE_SCALING_NONE);
    pd_model_free(m);
}

static void default_model_tensor_types_are_q4_1_q8_0_f32(void)
{
    struct pd_model *m = load_default();
    int n[PD_DT_COUNT] = {0};
    for (size_t i = 0; i < pd_model_n_tensors(m); i++)
        n[pd_model_tensor_at(m, i)->type]++;
    CHECK_EQ_INT(pd_model_n_tensors(m), 272);
    CHECK_EQ_INT(n[PD_DT_Q4_1], 210);
    CHECK_EQ_INT(n[PD_DT_F32], 61);
    CHECK_EQ_INT(n[PD_DT_Q8_0], 1);
    CHECK_EQ_INT(pd_model_tok_embd(m)->type, PD_DT_Q8_0);
    pd_model_free(m);
}

static void default_model_rows_dequantize_like_gguf_package(void)
{
    struct pd_model *m = load_default();
    FILE *f = golden_open("default_model_rows.bin");
    struct golden_rec r;
    int rows = 0, rc;
    CHECK(f != NULL);
    while ((rc = golden_next(f, &r)) == 1) {
        char name[128];
        unsigned row;
        char *hash = strchr(r.name, '#');
        CHECK(hash != NULL);
        snprintf(name, sizeof(name), "%.*s", (int)(hash - r.name), r.name);
        row = (unsigned)atoi(hash + 1);
        const struct pd_tensor *t = pd_model_find(m, name);
        CHECK(t != NULL);
        CHECK_EQ_INT(t->type, r.type);
        uint64_t row_bytes;
        CHECK_EQ_INT(pd_dtype_row_size(t->type, t->ne[0], &row_bytes), 0);
        const uint8_t *src = (const uint8_t *)t->data + row * row_bytes;
        CHECK(memcmp(src, r.raw, r.raw_len) == 0); /* the bytes we map are the file's */
        float *got = malloc(r.n * sizeof(float));
        CHECK_EQ_INT(pd_dequant_row(t->type, src, got, r.n), 0);
        for (uint64_t i = 0; i < r.n; i++)
            if (got[i] != r.want[i])
                PD_TEST_FAIL_("%s[%llu]: %.9g vs gguf %.9g", r.name, (unsigned long long)i,
                              (double)got[i], (double)r.want[i]);
        free(got);
        free(r.raw);
        free(r.want);
        rows++;
    }
    fclose(f);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(rows, 9);
    pd_model_free(m);
}

static void default_model_fingerprint_is_stable(void)
{
    struct pd_model *a = load_default(), *b = load_default();
    CHECK(memcmp(pd_model_fingerprint(a), pd_model_fingerprint(b), PD_MODEL_FP_LEN) == 0);
    pd_model_free(a);
    pd_model_free(b);
}

static const struct pd_test tests[] = {
    PD_TEST(default_model_has_smollm2_135m_hparams),
    PD_TEST(default_model_tensor_types_are_q4_1_q8_0_f32),
    PD_TEST(default_model_rows_dequantize_like_gguf_package),
    PD_TEST(default_model_fingerprint_is_stable),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
