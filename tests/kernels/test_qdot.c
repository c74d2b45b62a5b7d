/* tests/kernels/test_qdot: the CPU's quantized dots (kernels/qdot) on every
 * ISA this CPU runs against a double-precision reference over the
 * dequantized weights, the CPU matmul's two paths (dots, dequantized tiles
 * and sgemm) on a pool of threads, and the pool itself. CPU only: runs in
 * every build, sanitizers included. PD_TEST_SEED picks the random stream. */
#include "kernel_rng.h"
#include "matmul.h"
#include "parallel.h"
#include "pd_test.h"
#include "qdot.h"
#include "quant.h"

#include <errno.h>
#include <stdbool.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const uint32_t types[] = {PD_DT_Q4_0, PD_DT_Q4_1, PD_DT_Q8_0, PD_DT_Q4_K,
                                 PD_DT_Q6_K, PD_DT_F16,  PD_DT_BF16, PD_DT_F32};

/* uniform in [-1, 1) */
static float rnd_unit(void)
{
    return (float)((double)(rnd64() >> 11) / 9007199254740992.0 * 2 - 1);
}

static void put16(uint8_t *p, float v)
{
    uint16_t h = pd_f32_to_f16(v);
    p[0] = (uint8_t)h, p[1] = (uint8_t)(h >> 8);
}

/* n rows of k elements of type: random payloads with moderate scales, as
 * real files hold (make_golden.py's random_blocks); caller frees */
static void *rand_rows(uint32_t type, uint32_t n, uint32_t k)
{
    const struct pd_dtype_info *ti = pd_dtype_info(type);
    uint64_t row;
    CHECK(pd_dtype_row_size(type, k, &row) == 0);
    uint8_t *w = malloc(row * n);
    CHECK(w != NULL);
    if (type == PD_DT_F32 || type == PD_DT_F16 || type == PD_DT_BF16) {
        float *f = malloc(sizeof(float) * k);
        for (uint32_t r = 0; r < n; r++) {
            for (uint32_t i = 0; i < k; i++)
                f[i] = rnd_unit();
            CHECK_EQ_INT(pd_quant_row(type, f, w + r * row, k), 0);
        }
        free(f);
        return w;
    }
    for (uint64_t i = 0; i < row * n; i++)
        w[i] = (uint8_t)rnd64();
    for (uint64_t b = 0; b < row * n / ti->bytes; b++) {
        uint8_t *p = w + b * ti->bytes + (type == PD_DT_Q6_K ? 208 : 0);
        put16(p, 0.1f * rnd_unit());
        if (type == PD_DT_Q4_1 || type == PD_DT_Q4_K)
            put16(p + 2, rnd_unit());
    }
    return w;
}

static float *rand_floats(size_t n)
{
    float *x = malloc(n * sizeof(float));
    CHECK(x != NULL);
    for (size_t i = 0; i < n; i++)
        x[i] = rnd_unit() * 3;
    x[0] = 0; /* an all-zero block below */
    return x;
}

/* What the dot of row w with x computes, in double: the dequantized weights
 * times the activations as the dot sees them (quantized for Q types when
 * q8), and the sum of |terms| the float error is relative to */
static double ref_dot(uint32_t type, bool q8, const void *w, const float *x, uint32_t k,
                      double *mag)
{
    float *wf = malloc(k * sizeof(float)), *xf = malloc(k * sizeof(float));
    struct pd_q8 *xq = malloc(k / 32 * sizeof(*xq) + 1);
    CHECK_EQ_INT(pd_dequant_row(type, w, wf, k), 0);
    memcpy(xf, x, k * sizeof(float));
    if (q8 && pd_qdot_takes_q8(type)) {
        pd_q8_quantize(x, xq, k);
        for (uint32_t i = 0; i < k; i++)
            xf[i] = xq[i / 32].d * xq[i / 32].q[i % 32];
    }
    double s = 0;
    *mag = 0;
    for (uint32_t i = 0; i < k; i++) {
        s += (double)wf[i] * xf[i];
        *mag += fabs((double)wf[i] * xf[i]);
    }
    free(wf);
    free(xf);
    free(xq);
    return s;
}

static void q8_quantize_rounds_within_half_a_step(void)
{
    enum { K = 96 };
    float x[K];
    for (int i = 0; i < K; i++)
        x[i] = rnd_unit() * (float)(i + 1);
    for (int i = 64; i < K; i++)
        x[i] = 0; /* the third block is all zeros */
    struct pd_q8 q[K / 32];
    pd_q8_quantize(x, q, K);
    for (int b = 0; b < K / 32; b++) {
        float amax = 0;
        int32_t sum = 0;
        for (int j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(x[32 * b + j]));
            sum += q[b].q[j];
            CHECK(q[b].q[j] >= -127 && q[b].q[j] <= 127);
            CHECK(fabsf(x[32 * b + j] - q[b].d * q[b].q[j]) <= q[b].d * 0.5f * (1 + 1e-6f));
        }
        CHECK(q[b].d == amax / 127.0f);
        CHECK_EQ_INT(q[b].sum, sum);
    }
    CHECK(q[2].d == 0 && q[2].sum == 0);
}

/* Both kinds of dot (8-bit and float activations) on every ISA this CPU
 * runs, every type, lengths of whole blocks with tails of chunks */
static void qdot_every_isa_matches_reference_on_every_type(void)
{
    int tested = 0;
    for (int isa = 0; isa < PD_ISA_COUNT; isa++) {
        if (!pd_isa_runs((enum pd_isa)isa))
            continue;
        for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
            for (int q8 = 0; q8 < 2; q8++) {
                const uint32_t type = types[t];
                pd_qdot_fn *dot = q8 ? pd_qdot_get(type, (enum pd_isa)isa)
                                     : pd_qdotf_get(type, (enum pd_isa)isa);
                if (type == PD_DT_F32) {
                    CHECK(dot == NULL); /* sgemm's */
                    continue;
                }
                CHECK(dot != NULL);
                const uint32_t block =
                    pd_dtype_info(type)->block < 32 ? 32 : pd_dtype_info(type)->block;
                for (uint32_t k = block; k <= 6 * 256;
                     k += block * (1 + (uint32_t)(rnd64() % 3))) {
                    void *w = rand_rows(type, 1, k);
                    float *x = rand_floats(k);
                    struct pd_q8 *xq = malloc(k / 32 * sizeof(*xq));
                    pd_q8_quantize(x, xq, k);
                    double mag, want = ref_dot(type, q8, w, x, k, &mag);
                    double got = dot(w, q8 && pd_qdot_takes_q8(type) ? (const void *)xq : x, k);
                    if (!(fabs(got - want) <= 1e-5 * mag + 1e-30))
                        PD_TEST_FAIL_("%s on %s (%s activations), k %u: got %.9g, reference "
                                      "%.9g (terms %.3g)", pd_dtype_name(type),
                                      pd_isa_name((enum pd_isa)isa), q8 ? "8-bit" : "float", k,
                                      got, want, mag);
                    free(w);
                    free(x);
                    free(xq);
                    tested++;
                }
            }
        printf("  %s: every type checked\n", pd_isa_name((enum pd_isa)isa));
    }
    CHECK(tested > 0);
    CHECK(pd_isa_runs(pd_isa_best()));
}

/* The unpackers the tiles and float dots use write what pd_dequant_row
 * writes (checked against the gguf package by test_quant), bit for bit */
static void unpack_every_isa_equals_dequant_bit_for_bit(void)
{
    for (int isa = 0; isa < PD_ISA_COUNT; isa++) {
        if (!pd_isa_runs((enum pd_isa)isa))
            continue;
        for (size_t t = 0; t + 1 < sizeof(types) / sizeof(types[0]); t++) {
            const uint32_t type = types[t], k = 3 * 256 + (pd_dtype_info(type)->block == 1 ? 5 : 0);
            pd_unpack_fn *unpack = pd_unpack_get(type, (enum pd_isa)isa);
            CHECK(unpack != NULL);
            void *w = rand_rows(type, 1, k);
            float *want = malloc(k * sizeof(float)), *got = malloc(k * sizeof(float));
            CHECK_EQ_INT(pd_dequant_row(type, w, want, k), 0);
            unpack(w, got, k);
            for (uint32_t i = 0; i < k; i++)
                if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
                    PD_TEST_FAIL_("%s on %s [%u]: %.9g, dequant %.9g", pd_dtype_name(type),
                                  pd_isa_name((enum pd_isa)isa), i, (double)got[i],
                                  (double)want[i]);
            free(w);
            free(want);
            free(got);
        }
    }
    CHECK(pd_unpack_get(PD_DT_F32, PD_ISA_SCALAR) == NULL);
}

/* The error the 8-bit activations add, bounded: each x is off by at most
 * half its block's step (d / 2), so |dot - float dot| <= sum |w| d / 2 */
static void qdot_q8_error_within_half_step_bound(void)
{
    const uint32_t k = 512;
    for (size_t t = 0; t < 5; t++) {
        const uint32_t type = types[t];
        void *w = rand_rows(type, 1, k);
        float *x = rand_floats(k), *wf = malloc(k * sizeof(float));
        struct pd_q8 xq[512 / 32];
        pd_q8_quantize(x, xq, k);
        CHECK_EQ_INT(pd_dequant_row(type, w, wf, k), 0);
        double exact = 0, bound = 0;
        for (uint32_t i = 0; i < k; i++) {
            exact += (double)wf[i] * x[i];
            bound += fabs(wf[i]) * xq[i / 32].d / 2;
        }
        double got = pd_qdot_get(type, pd_isa_best())(w, xq, k);
        CHECK(fabs(got - exact) <= bound * (1 + 1e-4));
        free(w);
        free(x);
        free(wf);
    }
}

/* y = x W^T through pd_matmul_cpu against the double reference: m at and
 * around the crossover (dots up to 32 rows of x, tiles and sgemm above),
 * with and without a pool, accumulating or not, on every ISA */
static void matmul_cpu_matches_reference_on_both_paths(void)
{
    struct pd_pool *pool = pd_pool_new(3);
    CHECK(pool != NULL);
    static const uint32_t ms[] = {1, 5, 32, 33, 70};
    const uint32_t n = 45, k = 512; /* n: shares of uneven length */
    void *ws = malloc(pd_matmul_cpu_ws_bytes(70, k, 3));
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
        for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++) {
            const uint32_t type = types[t], m = ms[mi];
            const int isa = (int)(rnd64() % PD_ISA_COUNT);
            if (!pd_isa_runs((enum pd_isa)isa))
                continue;
            uint64_t row;
            CHECK_EQ_INT(pd_dtype_row_size(type, k, &row), 0);
            void *w = rand_rows(type, n, k);
            float *x = rand_floats((size_t)m * k), *y = rand_floats((size_t)m * n);
            float *y0 = malloc((size_t)m * n * sizeof(float));
            memcpy(y0, y, (size_t)m * n * sizeof(float));
            const int acc = (int)(rnd64() & 1), q8 = (int)(rnd64() & 1);
            struct pd_matmul_args a = {.y = y, .x = x, .w = w, .m = m, .n = n, .k = k,
                                       .accumulate = acc, .pool = mi & 1 ? NULL : pool,
                                       .w_type = type, .ws = ws, .isa = isa, .act_q8 = q8};
            CHECK_EQ_INT(pd_matmul_cpu(&a), 0);
            /* only the 8-bit dots see a quantized x */
            const bool xq = q8 && m <= pd_matmul_dots_max_m(type, true);
            for (uint32_t i = 0; i < m; i++)
                for (uint32_t r = 0; r < n; r++) {
                    double mag;
                    double want = ref_dot(type, xq, (const char *)w + r * row, x + (size_t)i * k,
                                          k, &mag);
                    const double base = acc ? y0[(size_t)i * n + r] : 0;
                    const double got = y[(size_t)i * n + r];
                    if (!(fabs(got - base - want) <= 1e-5 * (mag + fabs(base)) + 1e-30))
                        PD_TEST_FAIL_("%s m %u (%s, %s) y[%u][%u]: got %.9g, want %.9g",
                                      pd_dtype_name(type), m, q8 ? "8-bit x" : "float x",
                                      pd_isa_name((enum pd_isa)isa), i, r, got - base, want);
                }
            free(w);
            free(x);
            free(y);
            free(y0);
        }
    free(ws);
    pd_pool_free(pool);
}

static void matmul_cpu_refuses_bad_args(void)
{
    float x[512], y[2];
    uint8_t w[210] = {0};
    struct pd_matmul_args a = {.y = y, .x = x, .w = w, .m = 1, .n = 1, .k = 128,
                               .w_type = PD_DT_Q6_K, .ws = NULL};
    CHECK_EQ_INT(pd_matmul_cpu(&a), -EINVAL); /* k not a whole super-block */
    a.k = 256, a.act_q8 = 1;
    CHECK_EQ_INT(pd_matmul_cpu(&a), -EINVAL); /* x's 8-bit blocks go in the workspace */
    a.act_q8 = 0, a.m = PD_QDOT_MAX_ROWS + 1; /* refused before x or y is read */
    CHECK_EQ_INT(pd_matmul_cpu(&a), -EINVAL); /* and tiles of W */
    a.m = 1;
    a.w_type = PD_DT_Q5_K;
    CHECK_EQ_INT(pd_matmul_cpu(&a), -EINVAL); /* known, not computed with */
    a.w_type = 4;
    CHECK_EQ_INT(pd_matmul_cpu(&a), -EINVAL); /* no such type */
    a.w_type = PD_DT_F32, a.isa = PD_ISA_COUNT;
    CHECK_EQ_INT(pd_matmul_cpu(&a), -EINVAL);
}

struct count_job {
    atomic_uint runs[PD_PARALLEL_MAX * PD_POOL_SHARES_PER_THREAD];
    atomic_uint bad; /* a share or thread out of range */
    unsigned n_seen;
};

static void count_share(void *arg, unsigned s, unsigned n, unsigned thread)
{
    struct count_job *j = arg;
    j->n_seen = n;
    if (s >= n || thread >= PD_PARALLEL_MAX)
        atomic_fetch_add(&j->bad, 1);
    else
        atomic_fetch_add(&j->runs[s], 1);
}

static void pool_runs_every_share_once_spinning_or_asleep(void)
{
    struct pd_pool *p = pd_pool_new(4);
    CHECK(p != NULL);
    const unsigned n = pd_pool_shares(p);
    CHECK(pd_pool_size(p) >= 1 && pd_pool_size(p) <= 4);
    CHECK(n == (pd_pool_size(p) > 1 ? pd_pool_size(p) * PD_POOL_SHARES_PER_THREAD : 1));
    struct count_job j = {0};
    for (int r = 0; r < 2000; r++) {
        pd_pool_run(p, count_share, &j);
        if (r % 500 == 499) { /* past the spin: the workers sleep, and must wake */
            struct timespec ts = {0, 3 * PD_POOL_SPIN_US * 1000};
            nanosleep(&ts, NULL);
        }
    }
    CHECK_EQ_INT(j.n_seen, n);
    CHECK_EQ_INT(atomic_load(&j.bad), 0);
    for (unsigned s = 0; s < n; s++)
        CHECK_EQ_INT(atomic_load(&j.runs[s]), 2000);
    p = pd_pool_free(p);
    CHECK(p == NULL);
    CHECK(pd_pool_free(NULL) == NULL);
    CHECK_EQ_INT(pd_pool_size(NULL), 1);
    struct count_job k = {0};
    pd_pool_run(NULL, count_share, &k); /* no pool: the caller, as share 0 of 1 */
    CHECK_EQ_INT(atomic_load(&k.runs[0]), 1);
    CHECK_EQ_INT(k.n_seen, 1);
}

static const struct pd_test tests[] = {
    PD_TEST(q8_quantize_rounds_within_half_a_step),
    PD_TEST(qdot_every_isa_matches_reference_on_every_type),
    PD_TEST(unpack_every_isa_equals_dequant_bit_for_bit),
    PD_TEST(qdot_q8_error_within_half_step_bound),
    PD_TEST(matmul_cpu_matches_reference_on_both_paths),
    PD_TEST(matmul_cpu_refuses_bad_args),
    PD_TEST(pool_runs_every_share_once_spinning_or_asleep),
    {0},
};

int main(int argc, char **argv)
{
    const char *seed = rng_seed_from_env();
    if (argc < 2 || strcmp(argv[1], "--list") != 0)
        printf("random weights from PD_TEST_SEED=%s; best ISA here: %s\n", seed,
               pd_isa_name(pd_isa_best()));
    return pd_test_main(tests, argc, argv);
}
