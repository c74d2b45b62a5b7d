#include "float_bits.h"
#include "golden.h"
#include "pd_test.h"
#include "quant.h"

#include <errno.h>
#include <math.h>

static void f16_round_trips_every_half(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = pd_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            CHECK((pd_f32_to_f16(f) & 0x7c00) == 0x7c00 && (pd_f32_to_f16(f) & 0x3ff) != 0);
            continue;
        }
        if (pd_f32_to_f16(f) != h)
            PD_TEST_FAIL_("half 0x%04x -> %g -> 0x%04x", h, (double)f, pd_f32_to_f16(f));
    }
}

static void f16_known_values(void)
{
    /* values fixed by IEEE 754 binary16, not by our code */
    CHECK(pd_f16_to_f32(0x3c00) == 1.0f);
    CHECK(pd_f16_to_f32(0xc000) == -2.0f);
    CHECK(pd_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(pd_f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
    CHECK(pd_f16_to_f32(0x0400) == ldexpf(1.0f, -14)); /* smallest normal */
    CHECK(isinf(pd_f16_to_f32(0x7c00)));
    CHECK_EQ_INT(pd_f32_to_f16(65520.0f), 0x7c00); /* rounds up to infinity */
    CHECK_EQ_INT(pd_f32_to_f16(65519.0f), 0x7bff);
    CHECK_EQ_INT(pd_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00); /* tie -> even */
    CHECK_EQ_INT(pd_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02); /* tie -> even (up) */
    CHECK_EQ_INT(pd_f32_to_f16(ldexpf(1.0f, -25)), 0x0000); /* half of smallest: tie -> 0 */
    CHECK_EQ_INT(pd_f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
    CHECK_EQ_INT(pd_f32_to_f16(-0.0f), 0x8000);
}

static void bf16_rounds_to_nearest_even(void)
{
    CHECK_EQ_INT(pd_f32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ_INT(pd_f32_to_bf16(f32_from_bits(0x3f808000)), 0x3f80); /* tie, even stays */
    CHECK_EQ_INT(pd_f32_to_bf16(f32_from_bits(0x3f818000)), 0x3f82); /* tie, odd rounds up */
    CHECK_EQ_INT(pd_f32_to_bf16(f32_from_bits(0x3f808001)), 0x3f81);
    CHECK(isnan(pd_bf16_to_f32(pd_f32_to_bf16(NAN))));
    CHECK(f32_bits(pd_bf16_to_f32(0xc0a0)) == 0xc0a00000u);
}

static void dtype_row_size_checks_block_multiple(void)
{
    uint64_t n = 0;
    CHECK_EQ_INT(pd_dtype_row_size(PD_DT_Q4_1, 576, &n), 0);
    CHECK_EQ_INT(n, 576 / 32 * 20);
    CHECK_EQ_INT(pd_dtype_row_size(PD_DT_Q8_0, 33, &n), -EINVAL);
    CHECK_EQ_INT(pd_dtype_row_size(PD_DT_Q6_K, 256, &n), 0);
    CHECK_EQ_INT(n, 210);
    CHECK_EQ_INT(pd_dtype_row_size(99, 32, &n), -EINVAL);
    CHECK_EQ_INT(pd_dtype_row_size(PD_DT_F32, UINT64_MAX / 2, &n), -EOVERFLOW);
}

static void dtype_names_and_support(void)
{
    CHECK_STR(pd_dtype_name(PD_DT_Q4_1), "Q4_1");
    CHECK_STR(pd_dtype_name(4), "unknown"); /* id 4 was removed from ggml */
    CHECK_EQ_INT(pd_dtype_parse("bf16"), PD_DT_BF16);
    CHECK_EQ_INT(pd_dtype_parse("nope"), -EINVAL);
    CHECK(pd_dtype_supported(PD_DT_Q8_0));
    CHECK(pd_dtype_supported(PD_DT_Q6_K));
    CHECK(!pd_dtype_supported(PD_DT_Q5_K));
    float out[256];
    uint8_t in[176] = {0};
    CHECK_EQ_INT(pd_dequant_row(PD_DT_Q5_K, in, out, 256), -ENOTSUP);
}

static void dequant_matches_gguf_package(void)
{
    FILE *f = golden_open("dequant_vectors.bin");
    struct golden_rec r;
    int n_rec = 0, rc;
    uint32_t types_seen = 0;

    CHECK(f != NULL);
    while ((rc = golden_next(f, &r)) == 1) {
        float *got = malloc(r.n * sizeof(float));
        CHECK_EQ_INT(pd_dequant_row(r.type, r.raw, got, r.n), 0);
        for (uint64_t i = 0; i < r.n; i++)
            if (f32_bits(got[i]) != f32_bits(r.want[i]))
                PD_TEST_FAIL_("%s[%llu]: got %.9g, gguf says %.9g", r.name, (unsigned long long)i,
                              (double)got[i], (double)r.want[i]);
        types_seen |= 1u << r.type;
        free(got);
        free(r.raw);
        free(r.want);
        n_rec++;
    }
    fclose(f);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(n_rec, 14);
    CHECK_EQ_INT(types_seen, (1u << PD_DT_F16) | (1u << PD_DT_BF16) | (1u << PD_DT_Q8_0) |
                                 (1u << PD_DT_Q4_0) | (1u << PD_DT_Q4_1) | (1u << PD_DT_Q4_K) |
                                 (1u << PD_DT_Q6_K));
}

static void quant_row_writes_f16_and_bf16(void)
{
    float in[3] = {1.0f, -2.5f, 65504.0f}, back[3];
    uint8_t buf[12];
    CHECK_EQ_INT(pd_quant_row(PD_DT_F16, in, buf, 3), 0);
    CHECK_EQ_INT(pd_dequant_row(PD_DT_F16, buf, back, 3), 0);
    CHECK(back[0] == 1.0f && back[1] == -2.5f && back[2] == 65504.0f);
    CHECK_EQ_INT(buf[0] | (buf[1] << 8), 0x3c00); /* little-endian */
    CHECK_EQ_INT(pd_quant_row(PD_DT_BF16, in, buf, 2), 0);
    CHECK_EQ_INT(pd_dequant_row(PD_DT_BF16, buf, back, 2), 0);
    CHECK(back[0] == 1.0f && back[1] == -2.5f);
    CHECK_EQ_INT(pd_quant_row(PD_DT_Q4_1, in, buf, 32), -ENOTSUP);
}

static const struct pd_test tests[] = {
    PD_TEST(f16_round_trips_every_half),
    PD_TEST(f16_known_values),
    PD_TEST(bf16_rounds_to_nearest_even),
    PD_TEST(dtype_row_size_checks_block_multiple),
    PD_TEST(dtype_names_and_support),
    PD_TEST(dequant_matches_gguf_package),
    PD_TEST(quant_row_writes_f16_and_bf16),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
