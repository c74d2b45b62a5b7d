#include "gguf.h"
#include "gguf_build.h"
#include "pd_test.h"
#include "quant.h"

#include <errno.h>

/* One valid image, and knobs that break exactly one thing each. */
struct img {
    uint32_t magic, version, align;
    uint64_t n_kv_extra; /* claims more kvs than written */
    int dup_key, dup_tensor, nested_array, bad_vtype, huge_string, key_nul, arr_huge;
    uint32_t b_type, b_ndims;
    uint64_t b_ne0, b_off, b_dim1;
    int truncate_data;
};

static struct img defaults(void)
{
    return (struct img){.magic = 0x46554747u, .version = 3, .align = 64, .b_type = PD_DT_Q8_0,
                        .b_ndims = 2, .b_ne0 = 32, .b_off = 64, .b_dim1 = 2};
}

static struct gb build(const struct img *o)
{
    struct gb b = {0};
    uint32_t n_kv = 5 + (o->dup_key ? 1 : 0);

    gb_u32(&b, o->magic);
    gb_u32(&b, o->version);
    gb_u64(&b, 2);
    gb_u64(&b, n_kv + o->n_kv_extra);
    gb_kv_str(&b, "general.architecture", "llama");
    if (o->key_nul) {
        gb_u64(&b, 3), gb_bytes(&b, "a\0b", 3), gb_u32(&b, 4), gb_u32(&b, o->align);
    } else {
        gb_kv_u32(&b, "general.alignment", o->align);
    }
    /* tokenizer.ggml.tokens: array of 3 strings */
    gb_str(&b, "tokenizer.ggml.tokens");
    gb_u32(&b, 9);
    gb_u32(&b, o->nested_array ? 9 : 8);
    gb_u64(&b, o->arr_huge ? (1ull << 40) : 3);
    gb_str(&b, "a");
    gb_str(&b, "bc");
    gb_str(&b, "");
    /* an i32 array */
    gb_str(&b, "tokenizer.ggml.token_type");
    gb_u32(&b, 9);
    gb_u32(&b, 5);
    gb_u64(&b, 3);
    gb_u32(&b, 1), gb_u32(&b, (uint32_t)-2), gb_u32(&b, 3);
    /* a string whose length may lie */
    gb_str(&b, "general.name");
    gb_u32(&b, o->bad_vtype ? 13 : 8);
    if (o->huge_string) {
        gb_u64(&b, 1ull << 62);
    } else {
        gb_str(&b, "tiny test");
    }
    if (o->dup_key)
        gb_kv_u32(&b, "general.alignment", o->align);

    uint64_t ne_a[1] = {4};
    uint64_t ne_b[5] = {o->b_ne0, o->b_dim1, 1, 1, 1}; /* room for the 5-dim case */
    gb_tensor(&b, "a.weight", 1, ne_a, PD_DT_F32, 0);
    gb_tensor(&b, o->dup_tensor ? "a.weight" : "b.weight", o->b_ndims, ne_b, o->b_type, o->b_off);
    gb_pad(&b, o->align ? o->align : 1);
    /* data: a (16 bytes, padded to 64), then b */
    float a[4] = {1.0f, 2.0f, -3.0f, 0.5f};
    gb_bytes(&b, a, sizeof(a));
    gb_pad(&b, 64);
    uint8_t blk[34] = {0x00, 0x3c}; /* d = 1.0 */
    for (int i = 0; i < 32; i++)
        blk[2 + i] = (uint8_t)(i - 16);
    gb_bytes(&b, blk, sizeof(blk));
    if (!o->truncate_data)
        gb_bytes(&b, blk, sizeof(blk));
    return b;
}

static int parse(const struct img *o, struct pd_gguf **g, char *err, size_t n)
{
    struct gb b = build(o);
    int rc = pd_gguf_parse(b.p, b.n, g, err, n);
    if (rc == 0)
        *g = pd_gguf_free(*g); /* the image is freed below: do not keep pointers into it */
    free(b.p);
    return rc;
}

#define EXPECT_REJECT(o, needle)                                                               \
    do {                                                                                       \
        struct pd_gguf *g_ = NULL;                                                             \
        char e_[256] = "";                                                                     \
        int rc_ = parse(&(o), &g_, e_, sizeof(e_));                                            \
        CHECK(rc_ < 0);                                                                        \
        CHECK(g_ == NULL);                                                                     \
        CHECK_CONTAINS(e_, needle);                                                            \
    } while (0)

static void gguf_parses_valid_image(void)
{
    struct img o = defaults();
    struct gb b = build(&o);
    struct pd_gguf *g = NULL;
    char err[256];
    const char *s;
    size_t sl;
    uint32_t u, et;
    uint64_t n;
    int64_t iv;

    CHECK_EQ_INT(pd_gguf_parse(b.p, b.n, &g, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_gguf_version(g), 3);
    CHECK_EQ_INT(pd_gguf_alignment(g), 64);
    CHECK_EQ_INT(pd_gguf_n_kv(g), 5);
    CHECK_EQ_INT(pd_gguf_n_tensors(g), 2);
    CHECK_EQ_INT(pd_gguf_get_str(g, "general.architecture", &s, &sl), 0);
    CHECK(sl == 5 && memcmp(s, "llama", 5) == 0);
    CHECK_EQ_INT(pd_gguf_get_u32(g, "general.alignment", &u), 0);
    CHECK_EQ_INT(u, 64);
    CHECK_EQ_INT(pd_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), 0);
    CHECK_EQ_INT(et, PD_GGUF_STRING);
    CHECK_EQ_INT(n, 3);
    const struct pd_gguf_kv *kv = pd_gguf_find_kv(g, "tokenizer.ggml.tokens");
    CHECK_EQ_INT(pd_gguf_arr_str(g, kv, 1, &s, &sl), 0);
    CHECK(sl == 2 && memcmp(s, "bc", 2) == 0);
    CHECK_EQ_INT(pd_gguf_arr_str(g, kv, 2, &s, &sl), 0);
    CHECK_EQ_INT(sl, 0);
    CHECK_EQ_INT(pd_gguf_arr_str(g, kv, 3, &s, &sl), -ERANGE);
    kv = pd_gguf_find_kv(g, "tokenizer.ggml.token_type");
    CHECK_EQ_INT(pd_gguf_arr_i64(kv, 1, &iv), 0);
    CHECK_EQ_INT(iv, -2);

    const struct pd_gguf_tensor *t = pd_gguf_find_tensor(g, "b.weight");
    CHECK(t != NULL);
    CHECK_EQ_INT(t->type, PD_DT_Q8_0);
    CHECK_EQ_INT(t->ne[0], 32);
    CHECK_EQ_INT(t->ne[1], 2);
    CHECK_EQ_INT(t->nbytes, 68);
    CHECK(t->data == b.p + pd_gguf_data_offset(g) + 64);
    float row[32];
    CHECK_EQ_INT(pd_dequant_row(t->type, t->data, row, 32), 0);
    CHECK(row[0] == -16.0f && row[31] == 15.0f);
    t = pd_gguf_find_tensor(g, "a.weight");
    CHECK(t && t->n_dims == 1 && t->ne[1] == 1 && t->nbytes == 16);
    pd_gguf_free(g);
    free(b.p);
}

static void gguf_getters_refuse_wrong_types(void)
{
    struct img o = defaults();
    struct gb b = build(&o);
    struct pd_gguf *g = NULL;
    uint32_t u = 7;
    float f = 1.0f;
    const char *s;
    size_t sl;

    CHECK_EQ_INT(pd_gguf_parse(b.p, b.n, &g, NULL, 0), 0);
    CHECK_EQ_INT(pd_gguf_get_u32(g, "general.architecture", &u), -EINVAL);
    CHECK_EQ_INT(u, 7); /* untouched on failure */
    CHECK_EQ_INT(pd_gguf_get_f32(g, "general.alignment", &f), -EINVAL);
    CHECK_EQ_INT(pd_gguf_get_str(g, "general.alignment", &s, &sl), -EINVAL);
    CHECK_EQ_INT(pd_gguf_get_u32(g, "no.such.key", &u), -ENOENT);
    const struct pd_gguf_kv *kv = pd_gguf_find_kv(g, "tokenizer.ggml.token_type");
    CHECK_EQ_INT(pd_gguf_arr_str(g, kv, 0, &s, &sl), -EINVAL);
    pd_gguf_free(g);
    free(b.p);
}

static void gguf_rejects_every_truncation(void)
{
    struct img o = defaults();
    struct gb b = build(&o);
    /* every proper prefix must fail cleanly (ASan catches any read past it) */
    for (size_t len = 0; len < b.n; len++) {
        struct pd_gguf *g = NULL;
        char err[256];
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, b.p, len);
        int rc = pd_gguf_parse(copy, len, &g, err, sizeof(err));
        free(copy);
        if (rc == 0)
            PD_TEST_FAIL_("prefix of %zu/%zu bytes parsed", len, b.n);
    }
    free(b.p);
}

static void gguf_rejects_bad_magic(void)
{
    struct img o = defaults();
    o.magic = 0x46554746u;
    EXPECT_REJECT(o, "not a GGUF file");
}

static void gguf_rejects_version_1_and_4(void)
{
    struct img o = defaults();
    o.version = 1;
    EXPECT_REJECT(o, "version 1 is not supported");
    o.version = 4;
    EXPECT_REJECT(o, "version 4 is not supported");
}

static void gguf_names_big_endian_files(void)
{
    struct img o = defaults();
    o.version = 3u << 24;
    EXPECT_REJECT(o, "big-endian");
}

static void gguf_rejects_kv_count_beyond_file(void)
{
    struct img o = defaults();
    o.n_kv_extra = 1000;
    EXPECT_REJECT(o, "truncated");
}

static void gguf_rejects_oversized_string(void)
{
    struct img o = defaults();
    o.huge_string = 1;
    EXPECT_REJECT(o, "exceeds the cap");
}

static void gguf_rejects_huge_array(void)
{
    struct img o = defaults();
    o.arr_huge = 1;
    EXPECT_REJECT(o, "exceeds the cap");
}

static void gguf_rejects_nested_arrays(void)
{
    struct img o = defaults();
    o.nested_array = 1;
    EXPECT_REJECT(o, "nested arrays");
}

static void gguf_rejects_unknown_value_type(void)
{
    struct img o = defaults();
    o.bad_vtype = 1;
    EXPECT_REJECT(o, "unknown value type 13");
}

static void gguf_rejects_key_with_nul(void)
{
    struct img o = defaults();
    o.key_nul = 1;
    EXPECT_REJECT(o, "NUL");
}

static void gguf_rejects_duplicate_key(void)
{
    struct img o = defaults();
    o.dup_key = 1;
    EXPECT_REJECT(o, "duplicate key \"general.alignment\"");
}

static void gguf_rejects_duplicate_tensor(void)
{
    struct img o = defaults();
    o.dup_tensor = 1;
    EXPECT_REJECT(o, "duplicate tensor \"a.weight\"");
}

static void gguf_rejects_bad_alignment(void)
{
    struct img o = defaults();
    o.align = 48;
    EXPECT_REJECT(o, "power of two");
    o.align = 0;
    EXPECT_REJECT(o, "power of two");
}

static void gguf_rejects_unknown_tensor_type(void)
{
    struct img o = defaults();
    o.b_type = 99;
    EXPECT_REJECT(o, "unknown type 99");
}

static void gguf_rejects_row_not_multiple_of_block(void)
{
    struct img o = defaults();
    o.b_ne0 = 48;
    EXPECT_REJECT(o, "not a multiple of Q8_0's block of 32");
}

static void gguf_rejects_bad_dims(void)
{
    struct img o = defaults();
    o.b_ndims = 5;
    EXPECT_REJECT(o, "5 dimensions");
    o = defaults();
    o.b_dim1 = 0;
    EXPECT_REJECT(o, "dimension 1 is 0");
}

static void gguf_rejects_misaligned_offset(void)
{
    struct img o = defaults();
    o.b_off = 32;
    EXPECT_REJECT(o, "not aligned to 64");
}

static void gguf_rejects_data_past_end(void)
{
    struct img o = defaults();
    o.truncate_data = 1;
    EXPECT_REJECT(o, "past the end");
    o = defaults();
    o.b_off = 1ull << 62;
    EXPECT_REJECT(o, "past the end");
}

static void gguf_rejects_size_overflow(void)
{
    struct img o = defaults();
    o.b_type = PD_DT_F32;
    o.b_ne0 = 1ull << 40;
    o.b_dim1 = 1ull << 40;
    EXPECT_REJECT(o, "overflows");
}

static const struct pd_test tests[] = {
    PD_TEST(gguf_parses_valid_image),
    PD_TEST(gguf_getters_refuse_wrong_types),
    PD_TEST(gguf_rejects_every_truncation),
    PD_TEST(gguf_rejects_bad_magic),
    PD_TEST(gguf_rejects_version_1_and_4),
    PD_TEST(gguf_names_big_endian_files),
    PD_TEST(gguf_rejects_kv_count_beyond_file),
    PD_TEST(gguf_rejects_oversized_string),
    PD_TEST(gguf_rejects_huge_array),
    PD_TEST(gguf_rejects_nested_arrays),
    PD_TEST(gguf_rejects_unknown_value_type),
    PD_TEST(gguf_rejects_key_with_nul),
    PD_TEST(gguf_rejects_duplicate_key),
    PD_TEST(gguf_rejects_duplicate_tensor),
    PD_TEST(gguf_rejects_bad_alignment),
    PD_TEST(gguf_rejects_unknown_tensor_type),
    PD_TEST(gguf_rejects_row_not_multiple_of_block),
    PD_TEST(gguf_rejects_bad_dims),
    PD_TEST(gguf_rejects_misaligned_offset),
    PD_TEST(gguf_rejects_data_past_end),
    PD_TEST(gguf_rejects_size_overflow),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
