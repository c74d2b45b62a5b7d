/* tests/kernels: every CUDA kernel against its CPU reference (kernels/<op>.c)
 * on random shapes: ragged batches, odd lengths, non-contiguous block tables,
 * block sizes 16 and others. Outputs are poisoned (all bits set: NaN) before
 * each run, so an element the kernel never writes fails the comparison.
 *
 * Error: max|gpu - cpu| / max|cpu| over the output, under a per-op bar:
 *   fp32 data (every op here; bf16 pools read the same rounded values on both
 *   sides)                                                     1e-5
 *   kv_write (a copy, or the same rounding)                    bit-exact
 *   bf16 KV end to end (GPU bf16 pool vs CPU fp32 pool)        1e-2
 *   prefill attention (16-bit operands on tensor cores; the
 *   pool, q and P rounded to bf16 or half)                      1e-2
 * A NaN where the reference has a number always fails.
 *
 * Without a usable GPU every device test exits 77 with the reason; the tests
 * of host-side behaviour (errno mapping, argument checks) run everywhere. The
 * same program built against tests/kernels/emu/ (kernels_emulated) runs the
 * kernels' code on the CPU. PD_TEST_SEED=N draws other shapes (default 1).
 */
#include "kernel_test.h"
#include "pd_test.h"

#include "attention.h"
#include "bf16.h"
#include "cuda_util.h"
#include "embed.h"
#include "kv_write.h"
#include "matmul.h"
#include "parallel.h"
#include "qdot.h"
#include "quant.h"
#include "rmsnorm.h"
#include "rope.h"
#include "bias.h"
#include "sample.h"
#include "swiglu.h"

#include <errno.h>
#include <math.h>

#define TOL_F32 1e-5
#define TOL_BF16_KV 1e-2

/* ---- randomness (rnd64 in kernel_test.h) ----------------------------------- */

/* uniform in [0, n) */
static uint32_t rnd(uint32_t n)
{
    return n ? (uint32_t)(rnd64() % n) : 0;
}

/* uniform in [-amp, amp) */
static float rndf(float amp)
{
    return amp * ((float)(rnd64() >> 40) * (2.0f / 16777216.0f) - 1.0f);
}

static uint32_t pick(const uint32_t *v, size_t n)
{
    return v[rnd((uint32_t)n)];
}
#define PICK(...) pick((const uint32_t[]){__VA_ARGS__}, sizeof((const uint32_t[]){__VA_ARGS__}) / sizeof(uint32_t))

static void seed_for(const char *test)
{
    const char *s = getenv("PD_TEST_SEED");
    rng_state = s ? strtoull(s, NULL, 0) : 1;
    for (const char *p = test; *p; p++) /* each test its own stream, reproducible alone */
        rng_state = rng_state * 131 + (unsigned char)*p;
}

/* ---- device (need_gpu in kernel_test.h) ------------------------------------ */

/* Device buffers of the running test, freed when the next test starts. */
static void *dev_bufs[64];
static size_t n_dev_bufs;

static void dev_free_all(void)
{
    while (n_dev_bufs)
        pd_cuda_free(dev_bufs[--n_dev_bufs]);
}

/* bytes of device memory, every bit set (float and bf16 NaN) */
static void *dev_poisoned(size_t bytes)
{
    void *p = NULL;
    CHECK(n_dev_bufs < sizeof dev_bufs / sizeof *dev_bufs);
    CHECK_EQ_INT(pd_cuda_malloc(&p, bytes), 0);
    dev_bufs[n_dev_bufs++] = p;
    CHECK_EQ_INT(pd_cuda_memset(p, 0xff, bytes), 0);
    return p;
}

static void *dev_copy(const void *host, size_t bytes)
{
    void *p = dev_poisoned(bytes);
    CHECK_EQ_INT(pd_cuda_memcpy(p, host, bytes), 0);
    return p;
}

static void *host_alloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    CHECK(p);
    return p;
}

/* Wait for the device and bring n bytes back. */
static void *dev_fetch(const void *dev, size_t bytes)
{
    void *h = host_alloc(bytes);
    CHECK_EQ_INT(pd_cuda_sync(), 0);
    CHECK_EQ_INT(pd_cuda_memcpy(h, dev, bytes), 0);
    return h;
}

/* max|got - ref| / max|ref|; fails on a NaN in got where ref has a number */
static void check_close(const char *what, const float *got, const float *ref, size_t n, double tol)
{
    double max_ref = 0.0, max_err = 0.0;
    size_t worst = 0;

    for (size_t i = 0; i < n; i++) {
        if (isnan(ref[i]))
            PD_TEST_FAIL_("%s: the reference left element %zu of %zu NaN", what, i, n);
        if (isnan(got[i]))
            PD_TEST_FAIL_("%s: element %zu of %zu not written or NaN (reference %g)", what, i, n,
                          ref[i]);
        double e = fabs((double)got[i] - ref[i]);
        if (e > max_err)
            max_err = e, worst = i;
        if (fabs(ref[i]) > max_ref)
            max_ref = fabs(ref[i]);
    }
    double norm = max_ref > 0 ? max_err / max_ref : max_err;
    if (!(norm <= tol))
        PD_TEST_FAIL_("%s: normalized error %.3g > %.1g (element %zu: %.9g vs %.9g; %zu elements)",
                      what, norm, tol, worst, got[worst], ref[worst], n);
}

static float *rand_floats(size_t n, float amp)
{
    float *v = host_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        v[i] = rndf(amp);
    return v;
}

static float *dup_floats(const float *v, size_t n)
{
    float *d = host_alloc(n * sizeof(float));
    memcpy(d, v, n * sizeof(float));
    return d;
}

/* n elements of elem bytes, got against want: the same bits. ld: the row
 * length to name the row and column of one that differs (0: none) */
static void check_same(const char *what, const void *got, const void *want, size_t n, size_t elem,
                       size_t ld)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp((const char *)got + i * elem, (const char *)want + i * elem, elem) != 0)
            PD_TEST_FAIL_("%s: element %zu of %zu differs (row %zu, column %zu)", what, i, n,
                          ld ? i / ld : 0, ld ? i % ld : i);
}

/* ---- strided rows -------------------------------------------------------------
 * The engine runs q, k and v (gate and up) as one GEMM whose rows hold each
 * token's q, k and v side by side; the kernels after it read and write their
 * part where it is, rows ld elements apart. The tests put packed data at
 * element `off` of rows of ld; the gaps around it are random where a kernel
 * writes (a stray write shows) and NaN where it only reads (a stray read
 * shows). */

/* A row stride for rows of w elements, and where in a row they sit:
 * sometimes exactly w, else up to 64 elements more */
static uint32_t pick_ld(uint32_t w, uint32_t *off)
{
    const uint32_t extra = rnd(4) ? 1 + rnd(64) : 0;
    *off = rnd(extra + 1);
    return w + extra;
}

/* n_rows rows of w elements, packed src into dst's rows of ld at off */
static void rows_put(float *dst, const float *src, size_t n_rows, size_t w, size_t ld, size_t off)
{
    for (size_t r = 0; r < n_rows; r++)
        memcpy(dst + r * ld + off, src + r * w, w * sizeof(float));
}

/* and back: src's rows of ld, the w elements at off, packed into dst */
static void rows_get(float *dst, const float *src, size_t n_rows, size_t w, size_t ld, size_t off)
{
    for (size_t r = 0; r < n_rows; r++)
        memcpy(dst + r * w, src + r * ld + off, w * sizeof(float));
}

/* packed src in rows of ld at off, the gaps random or (nan_gaps) NaN; caller frees */
static float *rows_widen(const float *src, size_t n_rows, size_t w, size_t ld, size_t off,
                         int nan_gaps)
{
    float *dst = rand_floats(n_rows * ld, 50.0f);
    for (size_t i = 0; nan_gaps && i < n_rows * ld; i++)
        dst[i] = NAN;
    rows_put(dst, src, n_rows, w, ld, off);
    return dst;
}

/* got against want, rows of ld with w elements of data at off: the data
 * within tol (check_close), every other element the same bits (the gaps a
 * kernel leaves alone). got's data is overwritten with want's. */
static void check_strided(const char *what, float *got, const float *want, size_t n_rows, size_t w,
                          size_t ld, size_t off, double tol)
{
    float *g = host_alloc(n_rows * w * sizeof(float)), *r = host_alloc(n_rows * w * sizeof(float));
    rows_get(g, got, n_rows, w, ld, off);
    rows_get(r, want, n_rows, w, ld, off);
    check_close(what, g, r, n_rows * w, tol);
    rows_put(got, r, n_rows, w, ld, off); /* what still differs is in a gap */
    check_same(what, got, want, n_rows * ld, sizeof(float), ld);
    free(g), free(r);
}

/* every byte of a device buffer still the poison dev_poisoned left */
static void check_poisoned(const char *what, const void *dev, size_t bytes)
{
    uint8_t *h = dev_fetch(dev, bytes);
    for (size_t i = 0; i < bytes; i++)
        if (h[i] != 0xff)
            PD_TEST_FAIL_("%s: byte %zu of %zu written", what, i, bytes);
    free(h);
}

/* ---- host-side behaviour (no GPU needed) ------------------------------------ */

static void cuda_errno_maps_statuses(void)
{
    /* cudaError_t values are ABI: 0 success, 1 invalid value, 2 allocation,
     * 35 insufficient driver, 100 no device, 209 no kernel image, 700 illegal
     * address, 999 unknown */
    CHECK_EQ_INT(pd_cuda_errno(0), 0);
    CHECK_EQ_INT(pd_cuda_errno(1), -EINVAL);
    CHECK_EQ_INT(pd_cuda_errno(2), -ENOMEM);
    CHECK_EQ_INT(pd_cuda_errno(35), -ENODEV);
    CHECK_EQ_INT(pd_cuda_errno(100), -ENODEV);
    CHECK_EQ_INT(pd_cuda_errno(209), -ENOEXEC);
    CHECK_EQ_INT(pd_cuda_errno(700), -EFAULT);
    CHECK_EQ_INT(pd_cuda_errno(999), -EIO);
}

static void cuda_probe_gives_a_reason(void)
{
    char why[256] = "unset";
    int rc = pd_cuda_probe(why, sizeof why);
    if (rc > 0) {
        CHECK_STR(why, "");
        return;
    }
    CHECK(rc < 0);
    CHECK(strncmp(why, "no CUDA driver", 14) == 0 || strncmp(why, "no CUDA device", 14) == 0 ||
          strncmp(why, "no kernel image", 15) == 0);
}

/* Argument errors come back before any CUDA call, GPU or not. */
static void cuda_launchers_refuse_bad_args(void)
{
    float x[4] __attribute__((aligned(16))) = {0};
    int32_t pos[1] = {0};

    struct pd_rope_args ra = {.x = x, .pos = pos, .n_tokens = 1, .n_heads = 1, .head_dim = 4,
                              .rope_dim = 3, .freq_base = 10000, .freq_scale = 1};
    CHECK_EQ_INT(pd_rope_cuda(&ra, NULL), -EINVAL); /* odd rope_dim */
    ra.rope_dim = 6;
    CHECK_EQ_INT(pd_rope_cuda(&ra, NULL), -EINVAL); /* rope_dim > head_dim */

    struct pd_embed_args ea = {.out = x, .table = x, .type = PD_DT_Q4_K, .row_bytes = 144,
                               .tokens = pos, .n_tokens = 1, .dim = 256};
    CHECK_EQ_INT(pd_embed_cuda(&ea, NULL), -ENOTSUP);
    ea.type = PD_DT_Q4_0;
    ea.dim = 48;
    CHECK_EQ_INT(pd_embed_cuda(&ea, NULL), -EINVAL); /* not whole blocks */

    struct pd_kv_write_args wa = {.pool = x, .kv = {1, 1, 4, 16}, .k = x, .v = x,
                                  .n_tokens = 1, .pool_type = PD_DT_F16};
    wa.n_tokens = 0;
    CHECK_EQ_INT(pd_kv_write_cuda(&wa, NULL), 0); /* F16 pools are fine */
    wa.pool_type = PD_DT_Q8_0;
    CHECK_EQ_INT(pd_kv_write_cuda(&wa, NULL), -EINVAL);

    uint32_t table[1] = {0};
    struct pd_attn_args aa = {.out = x, .q = x, .pool = x, .kv = {1, 3, 64, 16}, .n_tokens = 1,
                              .n_head = 8, .tok_seq = pos, .tok_pos = pos, .block_tables = table,
                              .max_blocks = 1, .scale = 1};
    CHECK_EQ_INT(pd_attention_cuda(&aa, NULL), -EINVAL); /* 8 heads over 3 KV heads */
    aa.n_head = 9;
    aa.kv.head_dim = 512;
    CHECK_EQ_INT(pd_attention_cuda(&aa, NULL), -ENOTSUP);
    aa.kv.head_dim = 64;
    aa.pool_type = PD_DT_Q8_0;
    CHECK_EQ_INT(pd_attention_cuda(&aa, NULL), -EINVAL);
    aa.pool_type = PD_DT_F32;
    aa.layer = 1; /* the layout has one layer */
    CHECK_EQ_INT(pd_attention_cuda(&aa, NULL), -EINVAL);

    /* the prefill kernel: 16-bit pools at head_dim 64 and 128 only; q and
     * out float or the pool's type */
    int32_t runs[2] = {0, 1};
    aa.layer = 0;
    aa.run_start = runs;
    aa.n_runs = 1;
    CHECK_EQ_INT(pd_attention_prefill_cuda(&aa, NULL), -ENOTSUP); /* F32 pool */
    aa.pool_type = PD_DT_BF16;
    aa.kv.head_dim = 80;
    CHECK_EQ_INT(pd_attention_prefill_cuda(&aa, NULL), -ENOTSUP);
    aa.kv.head_dim = 64;
    aa.io_type = PD_DT_F16; /* not the pool's type */
    CHECK_EQ_INT(pd_attention_prefill_cuda(&aa, NULL), -EINVAL);
    aa.io_type = PD_DT_BF16;
    aa.q = (const float *)(const void *)((const char *)x + 2); /* unaligned */
    CHECK_EQ_INT(pd_attention_prefill_cuda(&aa, NULL), -EINVAL);
    aa.q = x;
    aa.run_start = NULL;
    CHECK_EQ_INT(pd_attention_prefill_cuda(&aa, NULL), -EINVAL);
    aa.n_runs = 0;
    CHECK_EQ_INT(pd_attention_prefill_cuda(&aa, NULL), 0);

    /* matmul: fp32, or bf16 x and W together; the CPU takes fp32 only */
    struct pd_matmul_args ma = {.y = x, .x = x, .w = x, .m = 1, .n = 1, .k = 1,
                                .x_type = PD_DT_BF16};
    CHECK_EQ_INT(pd_matmul_cuda(&ma, NULL), -EINVAL);
    CHECK_EQ_INT(pd_matmul_cpu(&ma), -EINVAL);
    ma.w_type = PD_DT_BF16;
    ma.y_type = PD_DT_F16;
    CHECK_EQ_INT(pd_matmul_cuda(&ma, NULL), -EINVAL);
    ma.x_type = PD_DT_F32; /* a float x with a bf16 W needs x_scratch */
    ma.y_type = PD_DT_F32;
    CHECK_EQ_INT(pd_matmul_cuda(&ma, NULL), -EINVAL);

    /* sampling: a workspace too small is refused; no rows is nothing to do */
    struct pd_sample_args sa_ = {.logits = x, .n_rows = 1, .n_vocab = 4,
                                 .params = (const struct pd_sampling *)(const void *)x,
                                 .hist_start = (const uint32_t *)x, .n_prompt = (const uint32_t *)x,
                                 .workspace = x, .workspace_bytes = 8, .token = pos,
                                 .logprob = x, .top = (struct pd_token_logprob *)(void *)x,
                                 .n_top = (uint32_t *)x};
    CHECK_EQ_INT(pd_sample_cuda(&sa_, NULL), -EINVAL);
    /* masks without each row's index into them (checked before any launch) */
    sa_.workspace_bytes = pd_sample_cuda_workspace(1, 4);
    sa_.mask = (const uint32_t *)x;
    CHECK_EQ_INT(pd_sample_cuda(&sa_, NULL), -EINVAL);
    sa_.n_rows = 0;
    CHECK_EQ_INT(pd_sample_cuda(&sa_, NULL), 0);

    /* nothing to do is not an error, and needs no device */
    aa.n_tokens = 0;
    CHECK_EQ_INT(pd_attention_cuda(&aa, NULL), 0);
    struct pd_rmsnorm_args na = {.out = x, .in = x, .weight = x, .n_rows = 0, .dim = 4};
    CHECK_EQ_INT(pd_rmsnorm_cuda(&na, NULL), 0);
    struct pd_swiglu_args sa = {.out = x, .gate = x, .up = x, .n_rows = 0, .dim = 4};
    CHECK_EQ_INT(pd_swiglu_cuda(&sa, NULL), 0);
}

/* A row stride under the packed row (rows that would overlap) is refused by
 * every launcher that takes one, before any CUDA call: here without a GPU
 * too, and nothing written (on the emulator, whose device memory is this
 * memory, a launch would show). The shapes are otherwise good. */
static void cuda_launchers_refuse_short_strides(void)
{
    static float x[4096] __attribute__((aligned(16))), before[4096];
    for (size_t i = 0; i < 4096; i++)
        x[i] = (float)i;
    memcpy(before, x, sizeof x);
    int32_t pos[2] = {0, 1}, seq[2] = {0, 0}, runs[2] = {0, 2};
    int64_t slot[2] = {0, 1};
    uint32_t table[1] = {0};

    struct pd_rope_args ra = {.x = x,
                              .pos = pos,
                              .n_tokens = 2,
                              .n_heads = 2,
                              .head_dim = 4,
                              .rope_dim = 4,
                              .freq_base = 10000,
                              .freq_scale = 1,
                              .ld = 7};
    CHECK_EQ_INT(pd_rope_cuda(&ra, NULL), -EINVAL);
    struct pd_bias_args ba = {.x = x, .bias = x, .n_rows = 2, .dim = 8, .ld = 7};
    CHECK_EQ_INT(pd_bias_cuda(&ba, NULL), -EINVAL);
    struct pd_rmsnorm_args na = {.out = x,
                                 .in = x,
                                 .weight = x,
                                 .n_rows = 4,
                                 .dim = 4,
                                 .eps = 1e-5f,
                                 .per_token = 2,
                                 .ld = 7};
    CHECK_EQ_INT(pd_rmsnorm_cuda(&na, NULL), -EINVAL);
    na.ld = 0; /* rows per token need their stride */
    CHECK_EQ_INT(pd_rmsnorm_cuda(&na, NULL), -EINVAL);
    struct pd_swiglu_args sa = {.out = x, .gate = x, .up = x + 8, .n_rows = 2, .dim = 8, .ld = 7};
    CHECK_EQ_INT(pd_swiglu_cuda(&sa, NULL), -EINVAL);
    struct pd_matmul_args ma = {.y = x, .x = x, .w = x, .m = 2, .n = 4, .k = 4, .ldy = 3};
    CHECK_EQ_INT(pd_matmul_cuda(&ma, NULL), -EINVAL);
    struct pd_kv_write_args wa = {
        .pool = x, .kv = {1, 2, 4, 1}, .k = x, .v = x + 8, .slot = slot, .n_tokens = 2, .ld = 7};
    CHECK_EQ_INT(pd_kv_write_cuda(&wa, NULL), -EINVAL);
    struct pd_attn_args aa = {.out = x,
                              .q = x,
                              .pool = x,
                              .kv = {1, 1, 8, 4},
                              .n_tokens = 2,
                              .n_head = 2,
                              .tok_seq = seq,
                              .tok_pos = pos,
                              .block_tables = table,
                              .max_blocks = 1,
                              .scale = 1,
                              .q_ld = 15};
    CHECK_EQ_INT(pd_attention_cuda(&aa, NULL), -EINVAL);
    uint64_t ws;
    CHECK_EQ_INT(pd_attention_cuda_workspace(&aa, &ws), -EINVAL);
    /* the prefill kernel: at least n_head * head_dim (128), and a multiple of 8 */
    aa.kv = (struct pd_kv_geom){1, 1, 64, 16};
    aa.pool_type = PD_DT_BF16;
    aa.run_start = runs;
    aa.n_runs = 1;
    aa.q_ld = 120;
    CHECK_EQ_INT(pd_attention_prefill_cuda(&aa, NULL), -EINVAL);
    aa.q_ld = 132;
    CHECK_EQ_INT(pd_attention_prefill_cuda(&aa, NULL), -EINVAL);
    check_same("launchers given short strides", x, before, 4096, sizeof(float), 0);
}

/* ---- elementwise and row ops ------------------------------------------------ */

static void rmsnorm_case(int in_place)
{
    const uint32_t rows = 1 + rnd(40);
    const uint32_t dim = PICK(1, 3, 31, 64, 576, 1000, 4096, 5003);
    const size_t n = (size_t)rows * dim;
    float *x = rand_floats(n, 1.0f + (float)rnd(100)), *w = rand_floats(dim, 2.0f);
    float *ref = host_alloc(n * sizeof(float));
    const float eps = rnd(2) ? 1e-5f : 1e-6f;

    struct pd_rmsnorm_args c = {.out = ref, .in = x, .weight = w, .n_rows = rows, .dim = dim,
                                .eps = eps};
    CHECK_EQ_INT(pd_rmsnorm_cpu(&c), 0);
    float *dx = dev_copy(x, n * sizeof(float));
    float *dout = in_place ? dx : dev_poisoned(n * sizeof(float));
    struct pd_rmsnorm_args g = {.out = dout, .in = dx, .weight = dev_copy(w, dim * sizeof(float)),
                                .n_rows = rows, .dim = dim, .eps = eps};
    CHECK_EQ_INT(pd_rmsnorm_cuda(&g, NULL), 0);
    float *got = dev_fetch(dout, n * sizeof(float));
    check_close("rmsnorm", got, ref, n, TOL_F32);
    free(x), free(w), free(ref), free(got);
    dev_free_all();
}

static void rmsnorm_cuda_matches_cpu(void)
{
    need_gpu();
    for (int i = 0; i < 24; i++)
        rmsnorm_case(i % 3 == 0);
}

static void rope_cuda_matches_cpu(void)
{
    need_gpu();
    for (int iter = 0; iter < 24; iter++) {
        const uint32_t hd = PICK(16, 24, 64, 128), tokens = 1 + rnd(40), heads = 1 + rnd(12);
        const uint32_t rope_dim = rnd(3) ? hd : 2 * (1 + rnd(hd / 2));
        const size_t n = (size_t)tokens * heads * hd;
        float *x = rand_floats(n, 3.0f), *factors = NULL;
        int32_t *pos = host_alloc(tokens * sizeof(int32_t));
        for (uint32_t t = 0; t < tokens; t++)
            pos[t] = (int32_t)rnd(rnd(2) ? 64 : 40000);
        if (rnd(2)) {
            factors = host_alloc(rope_dim / 2 * sizeof(float));
            for (uint32_t i = 0; i < rope_dim / 2; i++)
                factors[i] = 1.0f + (float)rnd(8) + rndf(0.5f);
        }
        struct pd_rope_args a = {.x = x, .pos = pos, .n_tokens = tokens, .n_heads = heads,
                                 .head_dim = hd, .rope_dim = rope_dim,
                                 .freq_base = rnd(2) ? 10000.0f : 500000.0f,
                                 .freq_scale = rnd(2) ? 1.0f : 0.25f, .freq_factors = factors,
                                 .halves = rnd(2)};
        struct pd_rope_args g = a;
        g.x = dev_copy(x, n * sizeof(float));
        g.pos = dev_copy(pos, tokens * sizeof(int32_t));
        g.freq_factors = factors ? dev_copy(factors, rope_dim / 2 * sizeof(float)) : NULL;
        CHECK_EQ_INT(pd_rope_cpu(&a), 0);
        CHECK_EQ_INT(pd_rope_cuda(&g, NULL), 0);
        float *got = dev_fetch(g.x, n * sizeof(float));
        check_close("rope", got, x, n, TOL_F32);
        free(x), free(pos), free(factors), free(got);
        dev_free_all();
    }
}

/* Qwen2's q/k/v bias over the rows of a step */
static void bias_cuda_matches_cpu(void)
{
    need_gpu();
    for (int iter = 0; iter < 12; iter++) {
        const uint32_t rows = 1 + rnd(rnd(2) ? 8 : 300), dim = PICK(16, 96, 384, 3584);
        const size_t n = (size_t)rows * dim;
        float *x = rand_floats(n, 3.0f), *b = rand_floats(dim, 1.0f);
        struct pd_bias_args g = {.x = dev_copy(x, n * sizeof(float)),
                                 .bias = dev_copy(b, dim * sizeof(float)), .n_rows = rows,
                                 .dim = dim};
        struct pd_bias_args c = {.x = x, .bias = b, .n_rows = rows, .dim = dim};
        CHECK_EQ_INT(pd_bias_cpu(&c), 0);
        CHECK_EQ_INT(pd_bias_cuda(&g, NULL), 0);
        float *got = dev_fetch(g.x, n * sizeof(float));
        check_close("bias", got, x, n, 0); /* one addition: exact */
        free(x), free(b), free(got);
        dev_free_all();
    }
}

/* rmsnorm's and swiglu's bf16 out (a GEMM's input beside bf16 matrices):
 * the float out rounded by kernels/bf16.h, bit for bit, on the CPU and (gpu)
 * on the device; bf16 written over its own input refused */
static void bf16_out_case(int gpu)
{
    const uint32_t rows = 1 + rnd(9), dim = 1 + rnd(900), n = rows * dim;
    float *x = rand_floats(n, 4.0f), *w = rand_floats(dim, 2.0f), *up = rand_floats(n, 3.0f);
    float *f = host_alloc(n * sizeof(float));
    uint16_t *b = host_alloc(n * sizeof(uint16_t));
    struct pd_rmsnorm_args na = {
        .out = f, .in = x, .weight = w, .n_rows = rows, .dim = dim, .eps = 1e-5f};
    struct pd_swiglu_args sa = {.out = f, .gate = x, .up = up, .n_rows = rows, .dim = dim};
    for (int op = 0; op < 2; op++) {
        struct pd_rmsnorm_args nb = na;
        struct pd_swiglu_args sb = sa;
        if (gpu) {
            nb.in = sb.gate = dev_copy(x, n * sizeof(float));
            nb.weight = dev_copy(w, dim * sizeof(float));
            sb.up = dev_copy(up, n * sizeof(float));
            nb.out = sb.out = dev_poisoned(n * sizeof(float));
        }
        CHECK_EQ_INT(op ? (gpu ? pd_swiglu_cuda(&sb, NULL) : pd_swiglu_cpu(&sb))
                        : (gpu ? pd_rmsnorm_cuda(&nb, NULL) : pd_rmsnorm_cpu(&nb)),
                     0);
        float *fo = gpu ? dev_fetch(nb.out, n * sizeof(float)) : NULL;
        memcpy(f, gpu ? fo : f, n * sizeof(float));
        nb.out = sb.out = gpu ? dev_poisoned(n * sizeof(uint16_t)) : (float *)(void *)b;
        nb.out_type = sb.out_type = PD_DT_BF16;
        CHECK_EQ_INT(op ? (gpu ? pd_swiglu_cuda(&sb, NULL) : pd_swiglu_cpu(&sb))
                        : (gpu ? pd_rmsnorm_cuda(&nb, NULL) : pd_rmsnorm_cpu(&nb)),
                     0);
        uint16_t *bo = gpu ? dev_fetch(nb.out, n * sizeof(uint16_t)) : NULL;
        for (uint32_t i = 0; i < n; i++)
            if ((gpu ? bo : b)[i] != pd_bf16_encode(f[i]))
                PD_TEST_FAIL_("%s %s bf16 out [%u]: %#x, the float %.9g rounds to %#x",
                              op ? "swiglu" : "rmsnorm", gpu ? "cuda" : "cpu", i, (gpu ? bo : b)[i],
                              f[i], pd_bf16_encode(f[i]));
        /* in place refused: bf16 over the float input it reads */
        nb.out = (float *)nb.in, sb.out = (float *)sb.gate;
        CHECK_EQ_INT(op ? (gpu ? pd_swiglu_cuda(&sb, NULL) : pd_swiglu_cpu(&sb))
                        : (gpu ? pd_rmsnorm_cuda(&nb, NULL) : pd_rmsnorm_cpu(&nb)),
                     -EINVAL);
        nb.out_type = sb.out_type = 7; /* not a type either writes */
        nb.out = sb.out = f;
        CHECK_EQ_INT(op ? (gpu ? pd_swiglu_cuda(&sb, NULL) : pd_swiglu_cpu(&sb))
                        : (gpu ? pd_rmsnorm_cuda(&nb, NULL) : pd_rmsnorm_cpu(&nb)),
                     -EINVAL);
        free(fo), free(bo);
        if (gpu)
            dev_free_all();
    }
    free(x), free(w), free(up), free(f), free(b);
}

static void bf16_out_cpu_rounds_the_float_out(void)
{
    for (int iter = 0; iter < 6; iter++)
        bf16_out_case(0);
}

static void bf16_out_cuda_rounds_the_float_out(void)
{
    need_gpu();
    for (int iter = 0; iter < 6; iter++)
        bf16_out_case(1);
}

/* packed (in place or not), and as the engine runs it: gate and up side by
 * side in rows of 2 dim (one GEMM's product), out packed */
static void swiglu_cuda_matches_cpu(void)
{
    need_gpu();
    for (int iter = 0; iter < 12; iter++) {
        const uint32_t rows = rnd(3) ? 1 + rnd(8) : 1 + rnd(3);
        const uint32_t dim = rnd(3) ? 1 + rnd(700) : 20000 + rnd(60000);
        const int in_place = iter % 3 == 0, side = iter % 3 == 1;
        const uint32_t ld = side ? 2 * dim : dim;
        const uint64_t n = (uint64_t)rows * dim, n_in = (uint64_t)rows * ld;
        float *gate = rand_floats(n_in, 12.0f), *up = rand_floats(n_in, 3.0f);
        if (side) /* up is the second half of each of gate's rows */
            for (uint32_t r = 0; r < rows; r++)
                memcpy(gate + (size_t)r * ld + dim, up + (size_t)r * ld, dim * sizeof(float));
        const float *up_in = side ? gate + dim : up;
        float *ref = host_alloc(n * sizeof(float));
        struct pd_swiglu_args c = {
            .out = ref, .gate = gate, .up = up_in, .n_rows = rows, .dim = dim, .ld = side ? ld : 0};
        CHECK_EQ_INT(pd_swiglu_cpu(&c), 0);
        for (uint32_t r = 0; r < rows; r++) { /* the formula, row by row */
            const float g = gate[(size_t)r * ld], u = up_in[(size_t)r * ld];
            CHECK(fabsf(ref[(size_t)r * dim] - g / (1.0f + expf(-g)) * u) <=
                  1e-6f * (1 + fabsf(u * g)));
        }
        float *dg = dev_copy(gate, n_in * sizeof(float));
        float *du = side ? dg + dim : dev_copy(up, n_in * sizeof(float));
        struct pd_swiglu_args g = {.out = in_place ? dg : dev_poisoned(n * sizeof(float)),
                                   .gate = dg,
                                   .up = du,
                                   .n_rows = rows,
                                   .dim = dim,
                                   .ld = side ? ld : 0};
        CHECK_EQ_INT(pd_swiglu_cuda(&g, NULL), 0);
        float *got = dev_fetch(g.out, n * sizeof(float));
        check_close("swiglu", got, ref, n, TOL_F32);
        free(gate), free(up), free(ref), free(got);
        dev_free_all();
    }
}

/* ---- the row ops on strided rows ------------------------------------------------ */

/* rope's arguments over x (tokens, heads, hd): random positions, rope_dim,
 * frequencies and pairing, sometimes frequency factors; the caller frees pos
 * and freq_factors */
static struct pd_rope_args random_rope(float *x, uint32_t tokens, uint32_t heads, uint32_t hd)
{
    const uint32_t rope_dim = rnd(3) ? hd : 2 * (1 + rnd(hd / 2));
    int32_t *pos = host_alloc(tokens * sizeof(int32_t));
    float *factors = NULL;
    for (uint32_t t = 0; t < tokens; t++)
        pos[t] = (int32_t)rnd(rnd(2) ? 64 : 40000);
    if (rnd(2)) {
        factors = host_alloc(rope_dim / 2 * sizeof(float));
        for (uint32_t i = 0; i < rope_dim / 2; i++)
            factors[i] = 1.0f + (float)rnd(8) + rndf(0.5f);
    }
    return (struct pd_rope_args){.x = x,
                                 .pos = pos,
                                 .n_tokens = tokens,
                                 .n_heads = heads,
                                 .head_dim = hd,
                                 .rope_dim = rope_dim,
                                 .freq_base = rnd(2) ? 10000.0f : 500000.0f,
                                 .freq_scale = rnd(2) ? 1.0f : 0.25f,
                                 .freq_factors = factors,
                                 .halves = rnd(2)};
}

/* q's or k's heads in rows of q, k and v, ld apart: rotated where they are,
 * the same bits as packed heads, the rest of each row untouched; a stride
 * under the heads' row refused with nothing moved. on_gpu: the launcher's
 * too, against the CPU's strided result. */
static void rope_strided_case(int on_gpu)
{
    const uint32_t hd = PICK(16, 24, 64, 128), tokens = 1 + rnd(40), heads = 1 + rnd(12);
    const uint32_t w = heads * hd;
    uint32_t off;
    const uint32_t ld = pick_ld(w, &off);
    const size_t n_wide = (size_t)tokens * ld;
    float *x = rand_floats((size_t)tokens * w, 3.0f), *wide = rows_widen(x, tokens, w, ld, off, 0);
    float *before = dup_floats(wide, n_wide), *want = dup_floats(wide, n_wide);
    struct pd_rope_args a = random_rope(x, tokens, heads, hd), s = a;
    s.x = wide + off;
    s.ld = ld;
    CHECK_EQ_INT(pd_rope_cpu(&a), 0);
    CHECK_EQ_INT(pd_rope_cpu(&s), 0);
    rows_put(want, x, tokens, w, ld, off);
    check_same("rope: strided heads against packed", wide, want, n_wide, sizeof(float), ld);
    float *left = dup_floats(before, n_wide);
    struct pd_rope_args bad = s;
    bad.x = left + off;
    bad.ld = w - 1;
    CHECK_EQ_INT(pd_rope_cpu(&bad), -EINVAL);
    check_same("rope: a refused stride", left, before, n_wide, sizeof(float), ld);
    free(left);

    if (on_gpu) {
        struct pd_rope_args g = s;
        float *dw = dev_copy(before, n_wide * sizeof(float));
        g.x = dw + off;
        g.pos = dev_copy(a.pos, tokens * sizeof(int32_t));
        g.freq_factors =
            a.freq_factors ? dev_copy(a.freq_factors, a.rope_dim / 2 * sizeof(float)) : NULL;
        CHECK_EQ_INT(pd_rope_cuda(&g, NULL), 0);
        float *got = dev_fetch(dw, n_wide * sizeof(float));
        check_strided("rope cuda: strided heads", got, wide, tokens, w, ld, off, TOL_F32);
        free(got);
        dw = dev_copy(before, n_wide * sizeof(float));
        g.x = dw + off;
        g.ld = w - 1;
        CHECK_EQ_INT(pd_rope_cuda(&g, NULL), -EINVAL);
        left = dev_fetch(dw, n_wide * sizeof(float));
        check_same("rope cuda: a refused stride", left, before, n_wide, sizeof(float), ld);
        free(left);
        dev_free_all();
    }
    free(x), free(wide), free(before), free(want), free((void *)a.pos),
        free((void *)a.freq_factors);
}

static void rope_cpu_strided_matches_packed(void)
{
    for (int i = 0; i < 24; i++)
        rope_strided_case(0);
}

static void rope_cuda_strided_matches_cpu(void)
{
    need_gpu();
    for (int i = 0; i < 16; i++)
        rope_strided_case(1);
}

/* Qwen2's q, k and v bias on its part of each row, ld apart: as on packed
 * rows, the rest of each row untouched; a stride under dim refused with
 * nothing moved. on_gpu: the launcher's too, exact (one addition). */
static void bias_strided_case(int on_gpu)
{
    const uint32_t rows = 1 + rnd(rnd(2) ? 8 : 300), dim = PICK(16, 96, 384, 3584);
    uint32_t off;
    const uint32_t ld = pick_ld(dim, &off);
    const size_t n_wide = (size_t)rows * ld;
    float *x = rand_floats((size_t)rows * dim, 3.0f), *b = rand_floats(dim, 1.0f);
    float *wide = rows_widen(x, rows, dim, ld, off, 0);
    float *before = dup_floats(wide, n_wide), *want = dup_floats(wide, n_wide);
    struct pd_bias_args a = {.x = x, .bias = b, .n_rows = rows, .dim = dim}, s = a;
    s.x = wide + off;
    s.ld = ld;
    CHECK_EQ_INT(pd_bias_cpu(&a), 0);
    CHECK_EQ_INT(pd_bias_cpu(&s), 0);
    rows_put(want, x, rows, dim, ld, off);
    check_same("bias: strided rows against packed", wide, want, n_wide, sizeof(float), ld);
    float *left = dup_floats(before, n_wide);
    struct pd_bias_args bad = s;
    bad.x = left + off;
    bad.ld = dim - 1;
    CHECK_EQ_INT(pd_bias_cpu(&bad), -EINVAL);
    check_same("bias: a refused stride", left, before, n_wide, sizeof(float), ld);
    free(left);

    if (on_gpu) {
        struct pd_bias_args g = s;
        float *dw = dev_copy(before, n_wide * sizeof(float));
        g.x = dw + off;
        g.bias = dev_copy(b, dim * sizeof(float));
        CHECK_EQ_INT(pd_bias_cuda(&g, NULL), 0);
        float *got = dev_fetch(dw, n_wide * sizeof(float));
        check_strided("bias cuda: strided rows", got, wide, rows, dim, ld, off, 0);
        free(got);
        dw = dev_copy(before, n_wide * sizeof(float));
        g.x = dw + off;
        g.ld = dim - 1;
        CHECK_EQ_INT(pd_bias_cuda(&g, NULL), -EINVAL);
        left = dev_fetch(dw, n_wide * sizeof(float));
        check_same("bias cuda: a refused stride", left, before, n_wide, sizeof(float), ld);
        free(left);
        dev_free_all();
    }
    free(x), free(b), free(wide), free(before), free(want);
}

static void bias_cpu_strided_matches_packed(void)
{
    for (int i = 0; i < 12; i++)
        bias_strided_case(0);
}

static void bias_cuda_strided_matches_cpu(void)
{
    need_gpu();
    for (int i = 0; i < 12; i++)
        bias_strided_case(1);
}

/* Qwen3's q and k norms: per_token heads of dim at each token's row of ld
 * (rows of q, k and v), normed in place or into another buffer laid out
 * alike: the same bits as packed rows, the rest of each row (and the input,
 * out of place) untouched; a stride under the token's heads, or none, refused
 * with nothing written. on_gpu: the launcher's too, against the CPU's. */
static void rmsnorm_strided_case(int in_place, int on_gpu)
{
    const uint32_t tokens = 1 + rnd(20), per = PICK(1, 2, 3, 8, 14);
    const uint32_t dim = PICK(1, 3, 31, 64, 128, 576), w = per * dim;
    uint32_t off;
    const uint32_t ld = pick_ld(w, &off);
    const size_t n = (size_t)tokens * w, n_wide = (size_t)tokens * ld;
    float *x = rand_floats(n, 1.0f + (float)rnd(100)), *wt = rand_floats(dim, 2.0f);
    float *ref = host_alloc(n * sizeof(float));
    float *in = rows_widen(x, tokens, w, ld, off, 0);
    float *out = in_place ? in : rand_floats(n_wide, 50.0f);
    float *in0 = dup_floats(in, n_wide), *out0 = dup_floats(out, n_wide);
    struct pd_rmsnorm_args c = {.out = ref,
                                .in = x,
                                .weight = wt,
                                .n_rows = tokens * per,
                                .dim = dim,
                                .eps = rnd(2) ? 1e-5f : 1e-6f};
    struct pd_rmsnorm_args s = c;
    s.in = in + off, s.out = out + off;
    s.per_token = per, s.ld = ld;
    CHECK_EQ_INT(pd_rmsnorm_cpu(&c), 0);
    CHECK_EQ_INT(pd_rmsnorm_cpu(&s), 0);
    float *want = dup_floats(out0, n_wide);
    rows_put(want, ref, tokens, w, ld, off);
    check_same("rmsnorm: strided heads against packed", out, want, n_wide, sizeof(float), ld);
    if (!in_place)
        check_same("rmsnorm: its input", in, in0, n_wide, sizeof(float), ld);
    float *left = dup_floats(out0, n_wide);
    struct pd_rmsnorm_args bad = s;
    bad.out = left + off;
    bad.in = in_place ? bad.out : in0 + off;
    bad.ld = w - 1;
    CHECK_EQ_INT(pd_rmsnorm_cpu(&bad), -EINVAL);
    bad.ld = 0; /* rows per token without their stride */
    CHECK_EQ_INT(pd_rmsnorm_cpu(&bad), -EINVAL);
    check_same("rmsnorm: a refused stride", left, out0, n_wide, sizeof(float), ld);
    free(left);

    if (on_gpu) {
        struct pd_rmsnorm_args g = s;
        float *din = dev_copy(in0, n_wide * sizeof(float));
        float *dout = in_place ? din : dev_copy(out0, n_wide * sizeof(float));
        g.in = din + off, g.out = dout + off;
        g.weight = dev_copy(wt, dim * sizeof(float));
        CHECK_EQ_INT(pd_rmsnorm_cuda(&g, NULL), 0);
        float *got = dev_fetch(dout, n_wide * sizeof(float));
        check_strided("rmsnorm cuda: strided heads", got, out, tokens, w, ld, off, TOL_F32);
        free(got);
        if (!in_place) {
            got = dev_fetch(din, n_wide * sizeof(float));
            check_same("rmsnorm cuda: its input", got, in0, n_wide, sizeof(float), ld);
            free(got);
        }
        dout = dev_copy(out0, n_wide * sizeof(float));
        g.out = dout + off;
        g.in = in_place ? g.out : g.in;
        g.ld = w - 1;
        CHECK_EQ_INT(pd_rmsnorm_cuda(&g, NULL), -EINVAL);
        g.ld = 0;
        CHECK_EQ_INT(pd_rmsnorm_cuda(&g, NULL), -EINVAL);
        got = dev_fetch(dout, n_wide * sizeof(float));
        check_same("rmsnorm cuda: a refused stride", got, out0, n_wide, sizeof(float), ld);
        free(got);
        dev_free_all();
    }
    if (!in_place)
        free(out);
    free(x), free(wt), free(ref), free(in), free(in0), free(out0), free(want);
}

static void rmsnorm_cpu_strided_matches_packed(void)
{
    for (int i = 0; i < 24; i++)
        rmsnorm_strided_case(i % 2, 0);
}

static void rmsnorm_cuda_strided_matches_cpu(void)
{
    need_gpu();
    for (int i = 0; i < 16; i++)
        rmsnorm_strided_case(i % 2, 1);
}

/* A table of n_vocab rows of `type`: float types from random floats, quantized
 * types from random bytes with finite f16 scales. */
static uint8_t *random_table(uint32_t type, uint32_t n_vocab, uint32_t dim, uint64_t *row_bytes)
{
    CHECK_EQ_INT(pd_dtype_row_size(type, dim, row_bytes), 0);
    uint8_t *t = host_alloc(n_vocab * *row_bytes);
    const struct pd_dtype_info *ti = pd_dtype_info(type);
    if (ti->block == 1) {
        float *row = rand_floats(dim, 2.0f);
        for (uint32_t r = 0; r < n_vocab; r++) {
            for (uint32_t i = 0; i < dim; i++)
                row[i] = rndf(2.0f);
            CHECK_EQ_INT(pd_quant_row(type, row, t + r * *row_bytes, dim), 0);
        }
        free(row);
        return t;
    }
    for (uint64_t i = 0; i < n_vocab * *row_bytes; i++)
        t[i] = (uint8_t)rnd64();
    for (uint64_t b = 0; b < n_vocab * (uint64_t)dim / 32; b++) {
        uint8_t *blk = t + b * ti->bytes;
        uint16_t d = pd_f32_to_f16(rndf(0.1f)), m = pd_f32_to_f16(rndf(1.0f));
        blk[0] = (uint8_t)d, blk[1] = (uint8_t)(d >> 8);
        if (type == PD_DT_Q4_1)
            blk[2] = (uint8_t)m, blk[3] = (uint8_t)(m >> 8);
    }
    return t;
}

static void embed_cuda_matches_cpu_every_type(void)
{
    static const uint32_t types[] = {PD_DT_F32, PD_DT_F16, PD_DT_BF16,
                                     PD_DT_Q8_0, PD_DT_Q4_0, PD_DT_Q4_1};
    need_gpu();
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        for (int iter = 0; iter < 4; iter++) {
            const uint32_t type = types[k], n_vocab = 1 + rnd(300);
            const uint32_t dim = pd_dtype_info(type)->block == 1 ? 1 + rnd(700) : 32 * (1 + rnd(24));
            const uint32_t n_tok = 1 + rnd(50);
            uint64_t row_bytes;
            uint8_t *table = random_table(type, n_vocab, dim, &row_bytes);
            int32_t *tok = host_alloc(n_tok * sizeof(int32_t));
            for (uint32_t t = 0; t < n_tok; t++)
                tok[t] = (int32_t)rnd(n_vocab);
            float *ref = host_alloc((size_t)n_tok * dim * sizeof(float));
            struct pd_embed_args a = {.out = ref, .table = table, .type = type,
                                      .row_bytes = row_bytes, .tokens = tok, .n_tokens = n_tok,
                                      .dim = dim};
            CHECK_EQ_INT(pd_embed_cpu(&a), 0);
            struct pd_embed_args g = a;
            g.out = dev_poisoned((size_t)n_tok * dim * sizeof(float));
            g.table = dev_copy(table, n_vocab * row_bytes);
            g.tokens = dev_copy(tok, n_tok * sizeof(int32_t));
            CHECK_EQ_INT(pd_embed_cuda(&g, NULL), 0);
            float *got = dev_fetch(g.out, (size_t)n_tok * dim * sizeof(float));
            check_close(pd_dtype_name(type), got, ref, (size_t)n_tok * dim, TOL_F32);
            free(table), free(tok), free(ref), free(got);
            dev_free_all();
        }
    }
}

/* ---- the KV pool -------------------------------------------------------------- */

static size_t elem_size(uint32_t pool_type)
{
    return pool_type == PD_DT_F32 ? 4 : 2;
}

/* a float as the 16-bit type stores it, and back */
static uint16_t enc16(uint32_t type, float x)
{
    return type == PD_DT_BF16 ? pd_f32_to_bf16(x) : pd_f32_to_f16(x);
}

static float dec16(uint32_t type, uint16_t h)
{
    return type == PD_DT_BF16 ? pd_bf16_to_f32(h) : pd_f16_to_f32(h);
}

static struct pd_kv_geom random_layout(void)
{
    struct pd_kv_geom l = {.n_layer = 1 + rnd(3), .n_head_kv = PICK(1, 2, 3, 4, 8),
                             .head_dim = PICK(16, 24, 64, 64, 128, 128),
                             .block_size = PICK(16, 16, 1, 7, 32)};
    return l;
}

/* slots 0 .. n - 1 in random order (distinct slots: any n_tokens of them);
 * caller frees */
static int64_t *shuffled_slots(uint32_t n)
{
    int64_t *all = host_alloc(n * sizeof(int64_t));
    for (uint32_t i = 0; i < n; i++)
        all[i] = i;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = rnd(i + 1);
        int64_t s = all[i];
        all[i] = all[j], all[j] = s;
    }
    return all;
}

static void kv_write_case(uint32_t pool_type)
{
    const struct pd_kv_geom l = random_layout();
    const uint32_t n_blocks = 1 + rnd(40), layer = rnd(l.n_layer);
    const uint32_t n_slots = n_blocks * l.block_size;
    const uint32_t n_tok = 1 + rnd(n_slots < 64 ? n_slots : 64);
    const size_t row = (size_t)l.n_head_kv * l.head_dim;
    const size_t pool_bytes = n_blocks * pd_kv_block_elems(&l) * elem_size(pool_type);

    int64_t *all = shuffled_slots(n_slots);
    float *k = rand_floats(n_tok * row, 4.0f), *v = rand_floats(n_tok * row, 4.0f);
    float *pool = host_alloc(pool_bytes);
    memset(pool, 0xff, pool_bytes);

    struct pd_kv_write_args a = {.pool = pool, .kv = l, .layer = layer, .k = k, .v = v,
                                 .slot = all, .n_tokens = n_tok, .pool_type = pool_type};
    CHECK_EQ_INT(pd_kv_write_cpu(&a), 0);
    struct pd_kv_write_args g = a;
    g.pool = dev_poisoned(pool_bytes);
    g.k = dev_copy(k, n_tok * row * sizeof(float));
    g.v = dev_copy(v, n_tok * row * sizeof(float));
    g.slot = dev_copy(all, n_tok * sizeof(int64_t));
    CHECK_EQ_INT(pd_kv_write_cuda(&g, NULL), 0);
    uint8_t *got = dev_fetch(g.pool, pool_bytes);
    /* bit-exact, poison included: a stray or missing write shows */
    for (size_t i = 0; i < pool_bytes; i++)
        if (got[i] != ((uint8_t *)pool)[i])
            PD_TEST_FAIL_("kv_write %s: pool byte %zu of %zu differs (layout %u/%u/%u/%u, layer %u)",
                          pd_dtype_name(pool_type), i, pool_bytes, l.n_layer, l.n_head_kv,
                          l.head_dim, l.block_size, layer);
    free(all), free(k), free(v), free(pool), free(got);
    dev_free_all();
}

static void kv_write_cuda_matches_cpu(void)
{
    need_gpu();
    for (int i = 0; i < 18; i++)
        kv_write_case(i % 3 == 2 ? PD_DT_F16 : i % 3 ? PD_DT_BF16 : PD_DT_F32);
}

/* k and v side by side in rows of q, k and v, ld apart (NaN between): the
 * pool the same bits as from packed k and v; a stride under the KV heads'
 * row refused with the pool untouched. on_gpu: the launcher's pool too, the
 * same bits as the CPU's. */
static void kv_write_strided_case(uint32_t pool_type, int on_gpu)
{
    const struct pd_kv_geom l = random_layout();
    const uint32_t n_blocks = 1 + rnd(40), layer = rnd(l.n_layer);
    const uint32_t n_slots = n_blocks * l.block_size;
    const uint32_t n_tok = 1 + rnd(n_slots < 64 ? n_slots : 64);
    const uint32_t w = l.n_head_kv * l.head_dim;
    const size_t pool_bytes = n_blocks * pd_kv_block_elems(&l) * elem_size(pool_type);
    int64_t *slot = shuffled_slots(n_slots);
    float *k = rand_floats((size_t)n_tok * w, 4.0f), *v = rand_floats((size_t)n_tok * w, 4.0f);
    float *kv = host_alloc((size_t)n_tok * 2 * w * sizeof(float)); /* (n_tok, k | v) */
    rows_put(kv, k, n_tok, w, 2 * w, 0);
    rows_put(kv, v, n_tok, w, 2 * w, w);
    uint32_t off;
    const uint32_t ld = pick_ld(2 * w, &off);
    float *wide = rows_widen(kv, n_tok, 2 * w, ld, off, 1);
    uint8_t *pool = host_alloc(pool_bytes), *spool = host_alloc(pool_bytes);
    memset(pool, 0xff, pool_bytes);
    memset(spool, 0xff, pool_bytes);

    struct pd_kv_write_args a = {.pool = (float *)(void *)pool,
                                 .kv = l,
                                 .layer = layer,
                                 .k = k,
                                 .v = v,
                                 .slot = slot,
                                 .n_tokens = n_tok,
                                 .pool_type = pool_type};
    struct pd_kv_write_args s = a;
    s.pool = (float *)(void *)spool;
    s.k = wide + off, s.v = wide + off + w;
    s.ld = ld;
    CHECK_EQ_INT(pd_kv_write_cpu(&a), 0);
    CHECK_EQ_INT(pd_kv_write_cpu(&s), 0);
    check_same("kv_write: pool from strided k and v against packed", spool, pool, pool_bytes, 1, 0);
    struct pd_kv_write_args bad = s;
    memset(pool, 0xff, pool_bytes);
    bad.pool = (float *)(void *)pool;
    bad.ld = w - 1;
    CHECK_EQ_INT(pd_kv_write_cpu(&bad), -EINVAL);
    for (size_t i = 0; i < pool_bytes; i++)
        if (pool[i] != 0xff)
            PD_TEST_FAIL_("kv_write: a refused stride wrote pool byte %zu", i);

    if (on_gpu) {
        struct pd_kv_write_args g = s;
        const float *dw = dev_copy(wide, (size_t)n_tok * ld * sizeof(float));
        g.pool = dev_poisoned(pool_bytes);
        g.k = dw + off, g.v = dw + off + w;
        g.slot = dev_copy(slot, n_tok * sizeof(int64_t));
        CHECK_EQ_INT(pd_kv_write_cuda(&g, NULL), 0);
        uint8_t *got = dev_fetch(g.pool, pool_bytes);
        check_same("kv_write cuda: pool from strided k and v", got, spool, pool_bytes, 1, 0);
        free(got);
        g.pool = dev_poisoned(pool_bytes);
        g.ld = w - 1;
        CHECK_EQ_INT(pd_kv_write_cuda(&g, NULL), -EINVAL);
        check_poisoned("kv_write cuda: a refused stride", g.pool, pool_bytes);
        dev_free_all();
    }
    free(slot), free(k), free(v), free(kv), free(wide), free(pool), free(spool);
}

static void kv_write_cpu_strided_matches_packed(void)
{
    for (int i = 0; i < 18; i++)
        kv_write_strided_case(i % 3 == 2 ? PD_DT_F16 : i % 3 ? PD_DT_BF16 : PD_DT_F32, 0);
}

static void kv_write_cuda_strided_matches_cpu(void)
{
    need_gpu();
    for (int i = 0; i < 12; i++)
        kv_write_strided_case(i % 3 == 2 ? PD_DT_F16 : i % 3 ? PD_DT_BF16 : PD_DT_F32, 1);
}

/* ---- RoPE's table, RoPE fused with the KV write -------------------------------- */

/* the largest of a's positions */
static uint32_t max_position(const struct pd_rope_args *a)
{
    int32_t mx = 0;
    for (uint32_t t = 0; t < a->n_tokens; t++)
        mx = a->pos[t] > mx ? a->pos[t] : mx;
    return (uint32_t)mx;
}

/* The table holds the angles pd_rope_cpu computes: rotating by it (positions
 * inside it) or by the angles computed (positions past it) gives the same
 * bits as rotating without it; pd_rope_table refuses what pd_rope_cpu does. */
static void rope_table_matches_computed_angles(void)
{
    for (int iter = 0; iter < 16; iter++) {
        const uint32_t hd = PICK(16, 24, 64, 128), tokens = 1 + rnd(40), heads = 1 + rnd(12);
        const size_t n = (size_t)tokens * heads * hd;
        float *x = rand_floats(n, 3.0f), *y = dup_floats(x, n);
        struct pd_rope_args a = random_rope(x, tokens, heads, hd);
        const uint32_t len = iter % 4 ? max_position(&a) + 1 : rnd(max_position(&a) + 1);
        float *table = host_alloc(((size_t)len * (a.rope_dim / 2) + 1) * 2 * sizeof(float));
        CHECK_EQ_INT(pd_rope_table(&a, len, table), 0);
        struct pd_rope_args b = a;
        b.x = y, b.table = table, b.table_len = len;
        CHECK_EQ_INT(pd_rope_cpu(&a), 0);
        CHECK_EQ_INT(pd_rope_cpu(&b), 0);
        check_same("rope: by the table against computed", y, x, n, sizeof(float), 0);
        b.rope_dim = hd + 2; /* past the head */
        CHECK_EQ_INT(pd_rope_table(&b, len, table), -EINVAL);
        free(x), free(y), free(table), free((void *)a.freq_factors), free((void *)a.pos);
    }
}

/* A step's q, k, v rows as the engine lays them out (q's heads, k's, v's,
 * then a gap), rotated and stored by the fused launch: the same rows and
 * pool bits as rope then kv_write launched apart, with or without the
 * table, a padding token (slot -1) storing nothing; and the rows within
 * TOL_F32 of the CPU's, the pool the CPU's where no token pads. A launch the
 * two would refuse is refused, nothing written. */
static void rope_kv_write_case(uint32_t pool_type)
{
    const struct pd_kv_geom l = random_layout();
    const uint32_t group = PICK(1, 2, 4), n_head = l.n_head_kv * group, hd = l.head_dim;
    const uint32_t n_blocks = 1 + rnd(20), n_slots = n_blocks * l.block_size;
    const uint32_t n_tok = 1 + rnd(n_slots < 48 ? n_slots : 48), layer = rnd(l.n_layer);
    const uint32_t w_qkv = (n_head + 2 * l.n_head_kv) * hd, ld = w_qkv + (rnd(2) ? 0 : 8);
    const size_t n_x = (size_t)n_tok * ld;
    const size_t pool_bytes = n_blocks * pd_kv_block_elems(&l) * elem_size(pool_type);
    float *x = rand_floats(n_x, 3.0f);
    struct pd_rope_args r = random_rope(x, n_tok, n_head + l.n_head_kv, hd);
    const int32_t *pos = r.pos;
    const float *factors = r.freq_factors;
    int64_t *slot = shuffled_slots(n_slots);
    const int pad = n_tok > 1 && rnd(3) == 0;
    if (pad)
        slot[rnd(n_tok)] = -1;
    const uint32_t len = rnd(2) ? max_position(&r) + 1 : rnd(max_position(&r) + 1);
    float *table = NULL;
    if (rnd(3)) {
        table = host_alloc(((size_t)len * (r.rope_dim / 2) + 1) * 2 * sizeof(float));
        CHECK_EQ_INT(pd_rope_table(&r, len, table), 0);
    }
    r.ld = ld, r.table_len = table ? len : 0;
    struct pd_kv_write_args w = {
        .kv = l, .layer = layer, .n_tokens = n_tok, .pool_type = pool_type, .ld = ld};

    /* on the device: apart (0), fused (1); then the refusals */
    float *dx[2];
    void *dpool[2];
    struct pd_rope_args g = r;
    struct pd_kv_write_args gw = w;
    g.pos = dev_copy(pos, n_tok * sizeof(int32_t));
    g.freq_factors = factors ? dev_copy(factors, r.rope_dim / 2 * sizeof(float)) : NULL;
    g.table = table ? dev_copy(table, (size_t)len * r.rope_dim * sizeof(float) + 1) : NULL;
    gw.slot = dev_copy(slot, n_tok * sizeof(int64_t));
    for (int fused = 0; fused < 2; fused++) {
        dx[fused] = dev_copy(x, n_x * sizeof(float));
        dpool[fused] = dev_poisoned(pool_bytes);
        g.x = dx[fused];
        gw.pool = dpool[fused];
        gw.k = dx[fused] + (size_t)n_head * hd, gw.v = gw.k + (size_t)l.n_head_kv * hd;
        if (fused) {
            CHECK_EQ_INT(pd_rope_kv_write_cuda(&g, &gw, NULL), 0);
        } else {
            CHECK_EQ_INT(pd_rope_cuda(&g, NULL), 0);
            CHECK_EQ_INT(pd_kv_write_cuda(&gw, NULL), 0);
        }
    }
    float *x0 = dev_fetch(dx[0], n_x * sizeof(float)), *x1 = dev_fetch(dx[1], n_x * sizeof(float));
    uint8_t *p0 = dev_fetch(dpool[0], pool_bytes), *p1 = dev_fetch(dpool[1], pool_bytes);
    char what[160];
    snprintf(what, sizeof what, "rope+kv_write %s hd %u heads %u+%u rope_dim %u%s%s tokens %u",
             pd_dtype_name(pool_type), hd, n_head, l.n_head_kv, r.rope_dim, table ? ", table" : "",
             pad ? ", a padding token" : "", n_tok);
    check_same(what, x1, x0, n_x, sizeof(float), 0);
    check_same(what, p1, p0, pool_bytes, 1, 0);

    /* the CPU's rows (and, without padding, pool) */
    uint8_t *cpool = host_alloc(pool_bytes);
    memset(cpool, 0xff, pool_bytes);
    r.table = table;
    w.pool = (float *)(void *)cpool, w.slot = slot;
    w.k = x + (size_t)n_head * hd, w.v = w.k + (size_t)l.n_head_kv * hd;
    CHECK_EQ_INT(pd_rope_cpu(&r), 0);
    check_close(what, x1, x, n_x, TOL_F32);
    if (!pad) {
        CHECK_EQ_INT(pd_kv_write_cpu(&w), 0);
        for (size_t i = 0; i < pool_bytes / elem_size(pool_type); i++) {
            const float want = pool_type == PD_DT_F32 ? ((float *)(void *)cpool)[i]
                                                      : dec16(pool_type, ((uint16_t *)cpool)[i]);
            const float got = pool_type == PD_DT_F32 ? ((float *)(void *)p1)[i]
                                                     : dec16(pool_type, ((uint16_t *)p1)[i]);
            if (!(isnan(want) ? isnan(got) : fabsf(got - want) <= 1e-2f * (1.0f + fabsf(want))))
                PD_TEST_FAIL_("%s: pool element %zu: %.9g, the CPU's %.9g", what, i, got, want);
        }
    }

    /* refused, nothing written: token counts that differ, a short row, an odd rope_dim */
    g.x = dev_copy(x, n_x * sizeof(float));
    gw.pool = dev_poisoned(pool_bytes);
    gw.n_tokens = n_tok + 1;
    CHECK_EQ_INT(pd_rope_kv_write_cuda(&g, &gw, NULL), -EINVAL);
    gw.n_tokens = n_tok, gw.ld = l.n_head_kv * hd - 1;
    CHECK_EQ_INT(pd_rope_kv_write_cuda(&g, &gw, NULL), -EINVAL);
    gw.ld = ld, g.rope_dim = 3;
    CHECK_EQ_INT(pd_rope_kv_write_cuda(&g, &gw, NULL), -EINVAL);
    check_poisoned("rope+kv_write: refused", gw.pool, pool_bytes);
    free(x), free(x0), free(x1), free(p0), free(p1), free(cpool), free((void *)pos), free(slot);
    free(table), free((void *)factors);
    dev_free_all();
}

static void rope_kv_write_cuda_matches_separate(void)
{
    need_gpu();
    for (int i = 0; i < 18; i++)
        rope_kv_write_case(i % 3 == 2 ? PD_DT_F16 : i % 3 ? PD_DT_BF16 : PD_DT_F32);
}

/* ---- attention ----------------------------------------------------------------- */

enum { SPLIT_NONE, SPLIT_AUTO, SPLIT_FORCED };

struct attn_case {
    struct pd_kv_geom l;
    uint32_t group, n_seqs, max_len;
    uint32_t max_run; /* 1: decode steps only; more: prefill runs of up to max_run tokens */
    uint32_t pool_type;
    int split;
    uint32_t misalign; /* pool elements to shift by (forces the generic path) */
    /* 0: q packed. Else q in rows of q, k and v: q_gap more elements from
     * one token's q to the next's (NaN, the test's), at a random place in
     * its row; the kernels given q_ld, and one under the q row refused */
    uint32_t q_gap;
    uint32_t simt; /* the CUDA-core decode kernel where the tensor-core one would serve */
    /* PD_DT_BF16 / PD_DT_F16: the launch again with that out_type, each
     * element the float out rounded (attn_out16_matches) */
    uint32_t out16;
};

/* A model's attention shape: KV heads, query heads per KV head, head_dim. */
struct gqa_shape {
    uint32_t kv, group, hd;
};

/* A batch over a pool: sequences of random lengths whose blocks are scattered
 * over the pool (a random permutation), table entries past a sequence's end
 * set to an invalid id (reading one would fault), tokens in random order. */
struct attn_batch {
    uint32_t n_blocks, max_blocks, n_tokens;
    uint32_t *tables; /* (n_seqs, max_blocks) */
    int32_t *tok_seq, *tok_pos;
    uint32_t *len; /* (n_seqs) tokens each sequence holds */
};

static void make_batch(const struct attn_case *c, struct attn_batch *b)
{
    const uint32_t bs = c->l.block_size;
    uint32_t total = 0, k = 0;

    b->len = host_alloc(c->n_seqs * sizeof(uint32_t));
    b->max_blocks = 1;
    for (uint32_t s = 0; s < c->n_seqs; s++) {
        b->len[s] = 1 + rnd(rnd(4) ? c->max_len : 40); /* some short: the ragged case */
        uint32_t nb = (b->len[s] + bs - 1) / bs;
        total += nb;
        b->max_blocks = nb > b->max_blocks ? nb : b->max_blocks;
    }
    b->max_blocks += rnd(3);
    b->n_blocks = total + rnd(4);
    uint32_t *perm = host_alloc(b->n_blocks * sizeof(uint32_t));
    for (uint32_t i = 0; i < b->n_blocks; i++)
        perm[i] = i;
    for (uint32_t i = b->n_blocks - 1; i > 0; i--) {
        uint32_t j = rnd(i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    b->tables = host_alloc((size_t)c->n_seqs * b->max_blocks * sizeof(uint32_t));
    for (uint32_t s = 0; s < c->n_seqs; s++)
        for (uint32_t j = 0; j < b->max_blocks; j++)
            b->tables[s * b->max_blocks + j] = j * bs < b->len[s] ? perm[k++] : 0xffffffffu;

    b->tok_seq = host_alloc((size_t)c->n_seqs * c->max_run * sizeof(int32_t));
    b->tok_pos = host_alloc((size_t)c->n_seqs * c->max_run * sizeof(int32_t));
    b->n_tokens = 0;
    uint32_t *order = host_alloc(c->n_seqs * sizeof(uint32_t)); /* sequences out of order */
    for (uint32_t i = 0; i < c->n_seqs; i++)
        order[i] = i;
    for (uint32_t i = c->n_seqs - 1; i > 0; i--) {
        uint32_t j = rnd(i + 1), t = order[i];
        order[i] = order[j], order[j] = t;
    }
    for (uint32_t i = 0; i < c->n_seqs; i++) {
        const uint32_t s = order[i];
        uint32_t run = c->max_run > 1 ? 1 + rnd(c->max_run < b->len[s] ? c->max_run : b->len[s]) : 1;
        for (uint32_t r = 0; r < run; r++) {
            b->tok_seq[b->n_tokens] = (int32_t)s;
            b->tok_pos[b->n_tokens++] = (int32_t)(b->len[s] - run + r);
        }
    }
    free(order);
    free(perm);
}

static void free_batch(struct attn_batch *b)
{
    free(b->len), free(b->tables), free(b->tok_seq), free(b->tok_pos);
}

/* every position of every sequence of the batch, in slot terms (kv_write's
 * slot array, n_kv of them); caller frees */
static int64_t *batch_slots(const struct attn_case *c, const struct attn_batch *b, uint32_t *n_kv)
{
    uint32_t n = 0;
    for (uint32_t s = 0; s < c->n_seqs; s++)
        n += b->len[s];
    int64_t *slot = host_alloc(n * sizeof(int64_t));
    n = 0;
    for (uint32_t s = 0; s < c->n_seqs; s++)
        for (uint32_t p = 0; p < b->len[s]; p++)
            slot[n++] = (int64_t)b->tables[s * b->max_blocks + p / c->l.block_size] *
                            c->l.block_size + p % c->l.block_size;
    *n_kv = n;
    return slot;
}

/* random pool contents of the case's type */
static void *random_pool(const struct attn_case *c, size_t n_elems)
{
    void *pool = host_alloc(n_elems * elem_size(c->pool_type));
    for (size_t i = 0; i < n_elems; i++) {
        float x = rndf(1.0f);
        if (c->pool_type == PD_DT_F32)
            ((float *)pool)[i] = x;
        else
            ((uint16_t *)pool)[i] = enc16(c->pool_type, x);
    }
    return pool;
}

/* Elements of a's q from its first to its last token's end (q_ld apart). */
static size_t q_extent(const struct pd_attn_args *a)
{
    const size_t w = (size_t)a->n_head * a->kv.head_dim;
    return a->n_tokens ? (a->n_tokens - 1) * pd_attn_q_ld(a) + w : 0;
}

/* q (n_tokens, w) into rows of q_ld at a random place in each, NaN around
 * it; *q_in: where the first token's q starts. Caller frees. */
static float *q_in_rows(const float *q, uint32_t n_tokens, uint32_t w, uint32_t q_ld,
                        const float **q_in)
{
    const uint32_t off = rnd(q_ld - w + 1);
    float *wide = rows_widen(q, n_tokens, w, q_ld, off, 1);
    *q_in = wide + off;
    return wide;
}

/* g launched again with 16-bit out (type): each element the float output
 * dout (g's, already written) rounded, bit for bit (a NaN row stays NaN);
 * an out_type no kernel writes refused first, nothing written. prefill:
 * the prefill kernel, else the decode launcher. */
static void attn_out16_matches(const char *what, struct pd_attn_args g, const float *dout,
                               uint32_t type, int prefill)
{
    const size_t n = (size_t)g.n_tokens * g.n_head * g.kv.head_dim;
    float *want = dev_fetch(dout, n * sizeof(float));
    g.out = dev_poisoned(n * sizeof(uint16_t));
    g.out_type = PD_DT_Q8_0; /* not an output type */
    CHECK_EQ_INT(prefill ? pd_attention_prefill_cuda(&g, NULL) : pd_attention_cuda(&g, NULL),
                 -EINVAL);
    check_poisoned("attention: a refused out_type", g.out, n * sizeof(uint16_t));
    g.out_type = type;
    CHECK_EQ_INT(prefill ? pd_attention_prefill_cuda(&g, NULL) : pd_attention_cuda(&g, NULL), 0);
    uint16_t *got = dev_fetch(g.out, n * sizeof(uint16_t));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const int ok = isnan(want[i]) ? isnan(dec16(type, got[i])) : got[i] == enc16(type, want[i]);
        if (!ok && bad++ < 3)
            PD_TEST_FAIL_("%s, %s out [%zu]: %#x, the float %.9g rounds to %#x", what,
                          pd_dtype_name(type), i, got[i], want[i], enc16(type, want[i]));
    }
    free(want), free(got);
}

/* Device copies of a's inputs, a poisoned output and the workspace the case
 * asks for; returns the device output. q strided (q_ld): a launch with a
 * q_ld under the q row is refused first, nothing written. */
static float *attn_on_device(const struct attn_case *c, const struct pd_attn_args *a,
                             const struct attn_batch *b, int *split_used)
{
    const size_t out_n = (size_t)a->n_tokens * a->n_head * c->l.head_dim;
    const size_t pool_bytes = b->n_blocks * pd_kv_block_elems(&c->l) * elem_size(c->pool_type);
    const size_t shift = c->misalign * elem_size(c->pool_type);
    struct pd_attn_args g = *a;
    uint64_t ws = 0;

    uint8_t *dpool = dev_poisoned(pool_bytes + shift);
    CHECK_EQ_INT(pd_cuda_memcpy(dpool + shift, a->pool, pool_bytes), 0);
    g.pool = (const float *)(const void *)(dpool + shift);
    g.out = dev_poisoned(out_n * sizeof(float));
    g.q = dev_copy(a->q, q_extent(a) * sizeof(float));
    g.tok_seq = dev_copy(a->tok_seq, a->n_tokens * sizeof(int32_t));
    g.tok_pos = dev_copy(a->tok_pos, a->n_tokens * sizeof(int32_t));
    g.block_tables = dev_copy(a->block_tables, (size_t)c->n_seqs * a->max_blocks * sizeof(uint32_t));
    if (a->q_ld) {
        struct pd_attn_args bad = g;
        bad.q_ld = a->n_head * c->l.head_dim - 1;
        CHECK_EQ_INT(pd_attention_cuda(&bad, NULL), -EINVAL);
        check_poisoned("attention cuda: a refused q_ld", g.out, out_n * sizeof(float));
    }
    if (c->split == SPLIT_FORCED)
        g.split_tokens = PICK(64, 128, 192, 256);
    if (c->split != SPLIT_NONE) {
        CHECK_EQ_INT(pd_attention_cuda_workspace(&g, &ws), 0);
        if (ws) {
            g.workspace = dev_poisoned(ws);
            g.workspace_bytes = ws;
        }
    }
    *split_used = ws > 0;
    CHECK_EQ_INT(pd_attention_cuda(&g, NULL), 0);
    if (c->out16)
        attn_out16_matches("attention cuda", g, g.out, c->out16, 0);
    return g.out;
}

/* The CPU reference's args for a case's batch: out, q and pool given, a
 * random layer, scale 1/sqrt(head_dim). */
static struct pd_attn_args case_args(const struct attn_case *c, const struct attn_batch *b,
                                     float *out, const float *q, const void *pool)
{
    struct pd_attn_args a = {.out = out, .q = q, .pool = pool, .kv = c->l,
                             .layer = rnd(c->l.n_layer), .n_tokens = b->n_tokens,
                             .n_head = c->l.n_head_kv * c->group, .tok_seq = b->tok_seq,
                             .tok_pos = b->tok_pos, .block_tables = b->tables,
                             .max_blocks = b->max_blocks,
                             .scale = 1.0f / sqrtf((float)c->l.head_dim), .pool_type = c->pool_type};
    return a;
}

/* A case against the CPU reference; the device's output kept in *got
 * (NULL: freed) */
static void attn_case_run_out(const struct attn_case *c, int *split_used, float **got_out,
                              size_t *n_out)
{
    struct attn_batch b;
    make_batch(c, &b);
    const uint32_t n_head = c->l.n_head_kv * c->group, hd = c->l.head_dim;
    const size_t out_n = (size_t)b.n_tokens * n_head * hd;
    void *pool = random_pool(c, b.n_blocks * pd_kv_block_elems(&c->l));
    /* q large enough that the softmax is peaked, as real attention is */
    float *q = rand_floats(out_n, 6.0f), *ref = host_alloc(out_n * sizeof(float));
    memset(ref, 0xff, out_n * sizeof(float)); /* the reference must write every element too */
    const float *q_in = q;
    float *wide =
        c->q_gap ? q_in_rows(q, b.n_tokens, n_head * hd, n_head * hd + c->q_gap, &q_in) : NULL;

    struct pd_attn_args a = case_args(c, &b, ref, q_in, pool);
    a.q_ld = c->q_gap ? n_head * hd + c->q_gap : 0;
    a.decode_simt = c->simt;
    CHECK_EQ_INT(pd_attention_cpu(&a), 0);
    float *dout = attn_on_device(c, &a, &b, split_used);
    float *got = dev_fetch(dout, out_n * sizeof(float));
    char what[200];
    snprintf(
        what, sizeof what,
        "attention %s hd %u group %u kv %u bs %u seqs %u tokens %u split %d misalign %u q_ld %u "
        "simt %u",
        pd_dtype_name(c->pool_type), hd, c->group, c->l.n_head_kv, c->l.block_size, c->n_seqs,
        b.n_tokens, c->split, c->misalign, a.q_ld, c->simt);
    check_close(what, got, ref, out_n, TOL_F32);
    if (got_out)
        *got_out = got, *n_out = out_n, got = NULL;
    free(pool), free(q), free(wide), free(ref), free(got);
    free_batch(&b);
    dev_free_all();
}

static void attn_case_run(const struct attn_case *c, int *split_used)
{
    attn_case_run_out(c, split_used, NULL, NULL);
}

#define MAX_POOL_ELEMS (48u << 20) /* keeps a case's host work and memory small */

/* shrink a case until the blocks of every position of every sequence, all
 * layers, fit MAX_POOL_ELEMS */
static void fit_case(struct attn_case *c)
{
    while ((uint64_t)c->n_seqs * (c->max_len + c->l.block_size) * pd_kv_block_elems(&c->l) /
               c->l.block_size > MAX_POOL_ELEMS) {
        if (c->l.n_layer > 1)
            c->l.n_layer--;
        else if (c->n_seqs > 1)
            c->n_seqs--;
        else
            c->max_len /= 2;
    }
}

static struct attn_case random_attn_case(uint32_t max_run)
{
    struct attn_case c = {.l = random_layout(), .group = PICK(1, 2, 3, 4, 8, 16),
                          .n_seqs = 1 + rnd(8), .max_len = PICK(1, 17, 300, 1000, 3000),
                          .max_run = max_run, .pool_type = PICK(PD_DT_F32, PD_DT_BF16, PD_DT_F16),
                          .split = (int)rnd(3)};
    fit_case(&c);
    return c;
}

static void attention_cuda_decode_matches_cpu(void)
{
    int splits = 0, used;
    need_gpu();
    for (int iter = 0; iter < 40; iter++) {
        struct attn_case c = random_attn_case(1);
        c.out16 = iter % 4 ? 0 : PICK(PD_DT_BF16, PD_DT_F16);
        attn_case_run(&c, &used);
        splits += used;
    }
    CHECK(splits > 0); /* the split-and-merge path ran */
}

static void attention_cuda_prefill_runs_match_cpu(void)
{
    int used;
    need_gpu();
    for (int iter = 0; iter < 16; iter++) {
        struct attn_case c = random_attn_case(1 + rnd(24));
        c.max_len = PICK(24, 100, 600);
        attn_case_run(&c, &used);
    }
}

/* The shapes that matter most, each pool type and split mode once: the
 * default model (GQA 3:1, head_dim 64), GQA 8:1 at head_dim 128, block 16. */
static void attention_cuda_matches_cpu_on_model_shapes(void)
{
    static const struct gqa_shape shapes[] = {{3, 3, 64}, {4, 8, 128}, {8, 4, 128}};
    int used;
    need_gpu();
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int pt = 0; pt < 2; pt++)
            for (int split = SPLIT_NONE; split <= SPLIT_FORCED; split++) {
                struct attn_case c = {.l = {2, shapes[s].kv, shapes[s].hd, 16},
                                      .group = shapes[s].group, .n_seqs = 1 + rnd(4),
                                      .max_len = 2500, .max_run = 1,
                                      .pool_type = pt ? PD_DT_BF16 : PD_DT_F32, .split = split};
                attn_case_run(&c, &used);
            }
}

/* Decode tokens on 16-bit pools at head_dim 64 and 128 with GQA take the
 * tensor-core kernel (the group's heads as the rows of an mma tile, q and P
 * in 16-bit parts), or with decode_simt the CUDA-core kernel: both within
 * TOL_F32 of the CPU, split or not, q packed or in wider rows, groups from 2
 * to 24 (two blocks of heads past 16). On the same inputs the two give
 * other bits: the tensor-core kernel really ran. */
static void attention_cuda_decode_tensor_cores_match_cpu(void)
{
    static const struct gqa_shape shapes[] = {{3, 3, 64},  {4, 8, 128}, {2, 16, 128},
                                              {1, 24, 64}, {2, 2, 128}, {8, 4, 64}};
    int used, differ = 0, splits = 0;
    need_gpu();
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int k = 0; k < 4; k++) {
            struct attn_case c = {.l = {2, shapes[s].kv, shapes[s].hd, PICK(16, 32, 7)},
                                  .group = shapes[s].group,
                                  .n_seqs = 1 + rnd(4),
                                  .max_len = PICK(1, 40, 700, 2500),
                                  .max_run = 1,
                                  .pool_type = k % 2 ? PD_DT_F16 : PD_DT_BF16,
                                  .split = k / 2 ? SPLIT_FORCED : (int)rnd(2),
                                  .q_gap = rnd(2) ? 0 : 3 * shapes[s].hd};
            fit_case(&c);
            float *tc = NULL, *simt = NULL;
            size_t n = 0;
            const uint64_t seed = rng_state;
            c.out16 = k == 1 ? PD_DT_BF16 : 0;
            attn_case_run_out(&c, &used, &tc, &n);
            splits += used;
            rng_state = seed; /* the same inputs again */
            c.simt = 1;
            attn_case_run_out(&c, &used, &simt, &n);
            differ += memcmp(tc, simt, n * sizeof(float)) != 0;
            free(tc), free(simt);
        }
    CHECK(splits > 0);
    CHECK(differ > 0);
}

/* A pool that is not 16-byte aligned takes the generic path, still right. */
static void attention_cuda_generic_path_matches_cpu(void)
{
    int used;
    need_gpu();
    for (int iter = 0; iter < 8; iter++) {
        struct attn_case c = random_attn_case(1);
        c.misalign = 1 + rnd(3);
        c.l.head_dim = PICK(64, 128, 256, 80);
        attn_case_run(&c, &used);
    }
}

/* q in rows of q, k and v (q_ld apart, NaN between): each decode token's
 * and each prefill run's the same bits as from packed q (the runs' GEMM
 * takes q_ld as its lda), on a pool of threads; a q_ld under n_head *
 * head_dim refused with out untouched. */
static void attention_cpu_strided_q_matches_packed(void)
{
    struct pd_pool *threads = pd_pool_new(3);
    uint32_t with_runs = 0;
    CHECK(threads != NULL);
    for (int iter = 0; iter < 16; iter++) {
        struct attn_case c = random_attn_case(iter % 2 ? 2 + rnd(24) : 1);
        if (iter % 2)
            c.max_len = PICK(24, 100, 600);
        struct attn_batch b;
        make_batch(&c, &b);
        const uint32_t n_head = c.l.n_head_kv * c.group, w = n_head * c.l.head_dim;
        const size_t out_n = (size_t)b.n_tokens * w;
        void *pool = random_pool(&c, b.n_blocks * pd_kv_block_elems(&c.l));
        float *q = rand_floats(out_n, 6.0f), *ref = host_alloc(out_n * sizeof(float));
        float *got = host_alloc(out_n * sizeof(float));
        memset(got, 0xff, out_n * sizeof(float));
        uint32_t off;
        const uint32_t q_ld = pick_ld(w, &off);
        float *wide = rows_widen(q, b.n_tokens, w, q_ld, off, 1);

        struct pd_attn_args a = case_args(&c, &b, ref, q, pool);
        a.threads = threads;
        struct pd_attn_args s = a;
        s.out = got;
        s.q = wide + off;
        s.q_ld = q_ld;
        CHECK_EQ_INT(pd_attention_cpu(&a), 0);
        CHECK_EQ_INT(pd_attention_cpu(&s), 0);
        check_same("attention: strided q against packed", got, ref, out_n, sizeof(float), w);
        with_runs += b.n_tokens > c.n_seqs; /* a sequence with a run of more than one */
        memset(got, 0xff, out_n * sizeof(float));
        s.q_ld = w - 1;
        CHECK_EQ_INT(pd_attention_cpu(&s), -EINVAL);
        s.q_ld = q_ld;
        s.out_type = PD_DT_BF16; /* 16-bit out: the GPU's only */
        CHECK_EQ_INT(pd_attention_cpu(&s), -EINVAL);
        for (size_t i = 0; i < out_n * sizeof(float); i++)
            if (((const uint8_t *)got)[i] != 0xff)
                PD_TEST_FAIL_("attention: a refused q_ld or out_type wrote byte %zu", i);
        free(pool), free(q), free(ref), free(got), free(wide);
        free_batch(&b);
    }
    CHECK(with_runs > 0);
    pd_pool_free(threads);
}

/* The decode kernel reads q where it is in rows of q, k and v: k's and v's
 * heads after it, or an odd stride. */
static void attention_cuda_decode_strided_q_matches_cpu(void)
{
    int used;
    need_gpu();
    for (int iter = 0; iter < 10; iter++) {
        struct attn_case c = random_attn_case(1);
        c.q_gap = rnd(2) ? 2 * c.l.n_head_kv * c.l.head_dim : 1 + rnd(40);
        attn_case_run(&c, &used);
    }
}

/* A position at or past max_ctx, or negative, is refused with NaN rows, not
 * read out of bounds. */
static void attention_cuda_refuses_positions_past_max_ctx(void)
{
    need_gpu();
    struct attn_case c = {.l = {1, 2, 64, 16}, .group = 2, .n_seqs = 3, .max_len = 100,
                          .max_run = 1, .pool_type = PD_DT_F32, .split = SPLIT_AUTO};
    struct attn_batch b;
    make_batch(&c, &b);
    const size_t row = 4 * 64, out_n = (size_t)b.n_tokens * row;
    void *pool = random_pool(&c, b.n_blocks * pd_kv_block_elems(&c.l));
    float *q = rand_floats(out_n, 1.0f);
    b.tok_pos[0] = 10;
    b.tok_pos[1] = -1;
    struct pd_attn_args a = {.q = q, .pool = pool, .kv = c.l, .n_tokens = b.n_tokens, .n_head = 4,
                             .tok_seq = b.tok_seq, .tok_pos = b.tok_pos, .block_tables = b.tables,
                             .max_blocks = b.max_blocks, .scale = 0.125f, .max_ctx = 10};
    int used;
    float *got = dev_fetch(attn_on_device(&c, &a, &b, &used), out_n * sizeof(float));
    for (size_t i = 0; i < 2 * row; i++)
        CHECK(isnan(got[i]));
    free(pool), free(q), free(got);
    free_batch(&b);
}

/* On the device: the K and V of w written by kv_write into a poisoned pool
 * of pool_type (n_elems elements), and a's attention over it, with a's q,
 * tokens and tables copied and a poisoned output. */
static struct pd_attn_args written_on_device(const struct attn_case *c, const struct attn_batch *b,
                                             const struct pd_kv_write_args *w,
                                             const struct pd_attn_args *a, uint32_t pool_type,
                                             size_t n_elems)
{
    const size_t row = (size_t)c->l.n_head_kv * c->l.head_dim;
    const size_t out_n = (size_t)a->n_tokens * a->n_head * c->l.head_dim;
    struct pd_kv_write_args gw = *w;
    gw.pool_type = pool_type;
    gw.pool = dev_poisoned(n_elems * elem_size(pool_type));
    gw.k = dev_copy(w->k, w->n_tokens * row * sizeof(float));
    gw.v = dev_copy(w->v, w->n_tokens * row * sizeof(float));
    gw.slot = dev_copy(w->slot, w->n_tokens * sizeof(int64_t));
    CHECK_EQ_INT(pd_kv_write_cuda(&gw, NULL), 0);
    struct pd_attn_args g = *a;
    g.pool_type = pool_type;
    g.pool = gw.pool;
    g.out = dev_poisoned(out_n * sizeof(float));
    g.q = dev_copy(a->q, out_n * sizeof(float));
    g.tok_seq = dev_copy(b->tok_seq, b->n_tokens * sizeof(int32_t));
    g.tok_pos = dev_copy(b->tok_pos, b->n_tokens * sizeof(int32_t));
    g.block_tables = dev_copy(b->tables, (size_t)c->n_seqs * b->max_blocks * sizeof(uint32_t));
    return g;
}

/* End to end: K/V written by kv_write, then attention; bf16 on the GPU against
 * fp32 on the CPU (the rounding of the pool is the difference), and fp32 on
 * both. */
static void attention_cuda_bf16_pool_close_to_fp32(void)
{
    need_gpu();
    for (int iter = 0; iter < 8; iter++) {
        struct attn_case c = random_attn_case(1);
        c.l.head_dim = PICK(64, 128);
        struct attn_batch b;
        make_batch(&c, &b);
        const uint32_t n_head = c.l.n_head_kv * c.group, hd = c.l.head_dim;
        const size_t row = (size_t)c.l.n_head_kv * hd, out_n = (size_t)b.n_tokens * n_head * hd;
        const size_t n_elems = b.n_blocks * pd_kv_block_elems(&c.l);
        const uint32_t layer = rnd(c.l.n_layer);

        uint32_t n_kv;
        int64_t *slot = batch_slots(&c, &b, &n_kv);
        float *k = rand_floats(n_kv * row, 1.0f), *v = rand_floats(n_kv * row, 1.0f);
        float *q = rand_floats(out_n, 6.0f), *ref = host_alloc(out_n * sizeof(float));
        float *pool = host_alloc(n_elems * sizeof(float));
        memset(pool, 0, n_elems * sizeof(float));

        struct pd_kv_write_args w = {.pool = pool, .kv = c.l, .layer = layer, .k = k, .v = v,
                                     .slot = slot, .n_tokens = n_kv};
        CHECK_EQ_INT(pd_kv_write_cpu(&w), 0);
        struct pd_attn_args a = {.out = ref, .q = q, .pool = pool, .kv = c.l, .layer = layer,
                                 .n_tokens = b.n_tokens, .n_head = n_head, .tok_seq = b.tok_seq,
                                 .tok_pos = b.tok_pos, .block_tables = b.tables,
                                 .max_blocks = b.max_blocks, .scale = 1.0f / sqrtf((float)hd)};
        CHECK_EQ_INT(pd_attention_cpu(&a), 0);

        for (int bf16 = 0; bf16 < 2; bf16++) {
            struct pd_attn_args g = written_on_device(&c, &b, &w, &a, bf16 ? PD_DT_BF16 : PD_DT_F32,
                                                      n_elems);
            uint64_t ws = 0;
            CHECK_EQ_INT(pd_attention_cuda_workspace(&g, &ws), 0);
            g.workspace = ws ? dev_poisoned(ws) : NULL;
            g.workspace_bytes = ws;
            CHECK_EQ_INT(pd_attention_cuda(&g, NULL), 0);
            float *got = dev_fetch(g.out, out_n * sizeof(float));
            check_close(bf16 ? "kv_write+attention bf16 vs fp32" : "kv_write+attention fp32", got,
                        ref, out_n, bf16 ? TOL_BF16_KV : TOL_F32);
            free(got);
            dev_free_all();
        }
        free(slot), free(k), free(v), free(q), free(ref), free(pool);
        free_batch(&b);
    }
}

/* ---- matmul (cuBLAS) ------------------------------------------------------------- */

/* The emulator runs kernels on the CPU (every lane of an mma a fiber): its
 * cases are cut down. */
static int emulated(void)
{
    char info[256];
    return pd_cuda_device_info(info, sizeof info) >= 0 && strstr(info, "emulation") != NULL;
}


/* n floats rounded to bf16: the rounded values (in place) and their bits */
static uint16_t *to_bf16(float *v, size_t n)
{
    uint16_t *h = host_alloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) {
        h[i] = pd_f32_to_bf16(v[i]);
        v[i] = pd_bf16_to_f32(h[i]);
    }
    return h;
}

/* y = x W^T (+ y) against OpenBLAS on the same (rounded) operands; odd sizes.
 * x_f32: a bf16 W with a float x, which the launcher rounds into x_scratch. */
static void matmul_case(uint32_t in_type, uint32_t y_type, int accumulate, int x_f32, int emu,
                        int ws)
{
    const uint32_t m = 1 + rnd(emu ? 24 : 300), n = 1 + rnd(emu ? 40 : 400), k = 1 + rnd(emu ? 70 : 700);
    float *x = rand_floats((size_t)m * k, 1.0f), *w = rand_floats((size_t)n * k, 1.0f);
    float *y0 = rand_floats((size_t)m * n, 1.0f), *ref = host_alloc((size_t)m * n * sizeof(float));
    const int bf_in = in_type == PD_DT_BF16, bf_out = y_type == PD_DT_BF16;
    float *x_raw = host_alloc((size_t)m * k * sizeof(float));
    memcpy(x_raw, x, (size_t)m * k * sizeof(float));
    uint16_t *x16 = bf_in ? to_bf16(x, (size_t)m * k) : NULL, *w16 = bf_in ? to_bf16(w, (size_t)n * k) : NULL;
    uint16_t *y16 = bf_out ? to_bf16(y0, (size_t)m * n) : NULL;

    memcpy(ref, y0, (size_t)m * n * sizeof(float));
    struct pd_matmul_args a = {.y = ref, .x = x, .w = w, .m = m, .n = n, .k = k,
                               .accumulate = accumulate};
    CHECK_EQ_INT(pd_matmul_cpu(&a), 0);

    struct pd_matmul_args g = a;
    const size_t ysz = bf_out ? 2 : 4;
    g.x = bf_in && x_f32 ? dev_copy(x_raw, (size_t)m * k * sizeof(float))
                         : dev_copy(bf_in ? (const void *)x16 : x, (size_t)m * k * (bf_in ? 2 : 4));
    g.w = dev_copy(bf_in ? (const void *)w16 : w, (size_t)n * k * (bf_in ? 2 : 4));
    g.y = accumulate ? dev_copy(bf_out ? (const void *)y16 : y0, (size_t)m * n * ysz)
                     : dev_poisoned((size_t)m * n * ysz);
    g.x_type = g.w_type = in_type;
    g.y_type = y_type;
    if (bf_in && x_f32) {
        g.x_type = PD_DT_F32;
        g.x_scratch = dev_poisoned((size_t)m * k * sizeof(uint16_t));
    }
    if (ws) { /* the engine's: cuBLAS's workspace is ours (poisoned: it holds nothing) */
        g.gpu_ws = dev_poisoned(PD_MATMUL_CUBLAS_WS);
        g.gpu_ws_bytes = PD_MATMUL_CUBLAS_WS;
    }
    CHECK_EQ_INT(pd_matmul_cuda(&g, NULL), 0);
    void *raw = dev_fetch(g.y, (size_t)m * n * ysz);
    float *got = raw;
    if (bf_out) {
        got = host_alloc((size_t)m * n * sizeof(float));
        for (size_t i = 0; i < (size_t)m * n; i++)
            got[i] = pd_bf16_to_f32(((uint16_t *)raw)[i]);
        free(raw);
    }
    char what[128];
    snprintf(what, sizeof what, "matmul %s%s -> %s m %u n %u k %u%s", pd_dtype_name(in_type),
             bf_in && x_f32 ? " (x F32)" : "", pd_dtype_name(y_type), m, n, k,
             accumulate ? " accumulate" : "");
    /* fp32 sums in another order; a bf16 y carries its own rounding (2^-9) */
    check_close(what, got, ref, (size_t)m * n, bf_out ? TOL_BF16_KV : TOL_F32);
    free(x), free(x_raw), free(w), free(y0), free(ref), free(got), free(x16), free(w16), free(y16);
    dev_free_all();
}

static void matmul_cuda_matches_cpu(void)
{
    need_gpu();
    const int emu = emulated();
    for (int iter = 0; iter < 16; iter++) {
        const uint32_t in = iter % 3 ? PD_DT_BF16 : PD_DT_F32;
        const uint32_t out = in == PD_DT_BF16 && iter % 3 == 2 ? PD_DT_BF16 : PD_DT_F32;
        matmul_case(in, out, iter % 2, iter % 4 >= 2, emu, iter % 8 >= 4);
    }
}

/* The caller's workspace reaches cuBLAS (after the stream is set, which puts
 * cuBLAS back on its own pool): the emulator refuses one under
 * PD_EMU_CUBLAS_WS_MIN bytes, so a GEMM given a small one fails and one given
 * none does not. */
static void matmul_cuda_sets_the_callers_cublas_workspace(void)
{
    need_gpu();
    if (!emulated())
        PD_SKIP("the workspace's check is the emulator's (PD_EMU_CUBLAS_WS_MIN)");
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 0, 0, 1};
    struct pd_matmul_args g = {.m = 2, .n = 2, .k = 2};
    g.x = dev_copy(x, sizeof x);
    g.w = dev_copy(w, sizeof w);
    g.y = dev_poisoned(sizeof x);
    setenv("PD_EMU_CUBLAS_WS_MIN", "4096", 1);
    CHECK_EQ_INT(pd_matmul_cuda(&g, NULL), 0); /* cuBLAS's own pool */
    g.gpu_ws = dev_poisoned(1024);
    g.gpu_ws_bytes = 1024;
    CHECK(pd_matmul_cuda(&g, NULL) < 0);
    g.gpu_ws = dev_poisoned(4096);
    g.gpu_ws_bytes = 4096;
    CHECK_EQ_INT(pd_matmul_cuda(&g, NULL), 0);
    unsetenv("PD_EMU_CUBLAS_WS_MIN");
    float *y = dev_fetch(g.y, sizeof x);
    CHECK(y[0] == 1 && y[1] == 2 && y[2] == 3 && y[3] == 4);
    free(y);
    dev_free_all();
}

/* y's rows ldy apart, y = x W^T (+ y) at a place in each (q's, k's or v's
 * columns of the rows of q, k and v): the same bits as into packed y,
 * through the dots (m up to the crossover) and sgemm (above it, and always
 * for F32), on a pool of threads whose shares' columns cut across the rows;
 * the rest of each row untouched. ldy under n refused, y as it was. */
static void matmul_cpu_strided_matches_packed(void)
{
    static const uint32_t types[] = {PD_DT_F32,  PD_DT_F16,  PD_DT_BF16,
                                     PD_DT_Q8_0, PD_DT_Q4_0, PD_DT_Q4_1};
    const unsigned n_threads = 3;
    struct pd_pool *threads = pd_pool_new(n_threads);
    CHECK(threads != NULL);
    for (int iter = 0; iter < 36; iter++) {
        const uint32_t type = types[iter % 6];
        const int act_q8 = pd_dtype_info(type)->block == 32 && rnd(2);
        const uint32_t max_m = pd_matmul_dots_max_m(type, act_q8);
        const uint32_t m = iter / 6 % 2 && max_m ? 1 + rnd(max_m) : max_m + 1 + rnd(40);
        const uint32_t n = 2 + rnd(300), k = 32 * (1 + rnd(24));
        uint64_t row_bytes;
        uint8_t *w = random_table(type, n, k, &row_bytes);
        float *x = rand_floats((size_t)m * k, 1.0f), *y = rand_floats((size_t)m * n, 1.0f);
        uint32_t off;
        const uint32_t ldy = pick_ld(n, &off);
        const size_t n_wide = (size_t)m * ldy;
        float *wide = rows_widen(y, m, n, ldy, off, 0);
        float *before = dup_floats(wide, n_wide), *want = dup_floats(wide, n_wide);
        void *ws = host_alloc(pd_matmul_cpu_ws_bytes(m, k, n_threads));

        struct pd_matmul_args a = {.y = y,
                                   .x = x,
                                   .w = w,
                                   .m = m,
                                   .n = n,
                                   .k = k,
                                   .accumulate = rnd(2),
                                   .w_type = type,
                                   .pool = threads,
                                   .ws = ws,
                                   .isa = pd_isa_best(),
                                   .act_q8 = act_q8};
        struct pd_matmul_args s = a;
        s.y = wide + off;
        s.ldy = ldy;
        CHECK_EQ_INT(pd_matmul_cpu(&a), 0);
        CHECK_EQ_INT(pd_matmul_cpu(&s), 0);
        rows_put(want, y, m, n, ldy, off);
        char what[128];
        snprintf(what, sizeof what, "matmul %s%s m %u n %u k %u ldy %u%s: strided y against packed",
                 pd_dtype_name(type), act_q8 ? " (x q8)" : "", m, n, k, ldy,
                 a.accumulate ? " accumulate" : "");
        check_same(what, wide, want, n_wide, sizeof(float), ldy);
        memcpy(wide, before, n_wide * sizeof(float));
        s.ldy = n - 1;
        CHECK_EQ_INT(pd_matmul_cpu(&s), -EINVAL);
        check_same("matmul: a refused ldy", wide, before, n_wide, sizeof(float), ldy);
        free(w), free(x), free(y), free(wide), free(before), free(want), free(ws);
    }
    pd_pool_free(threads);
}

/* cuBLAS writes y's rows ldy apart (its ldc), fp32 or bf16 operands, y fp32
 * or bf16, against the CPU's strided y on the same (rounded) operands; the
 * rest of each row untouched; ldy under n refused, y as it was. */
static void matmul_cuda_strided_case(uint32_t in_type, uint32_t y_type, int accumulate, int emu)
{
    const uint32_t m = 1 + rnd(emu ? 24 : 300), n = 2 + rnd(emu ? 40 : 400);
    const uint32_t k = 1 + rnd(emu ? 70 : 700);
    const int bf_in = in_type == PD_DT_BF16, bf_out = y_type == PD_DT_BF16;
    const size_t ysz = bf_out ? 2 : 4, isz = bf_in ? 2 : 4;
    float *x = rand_floats((size_t)m * k, 1.0f), *w = rand_floats((size_t)n * k, 1.0f);
    uint32_t off;
    const uint32_t ldy = pick_ld(n, &off);
    const size_t n_wide = (size_t)m * ldy;
    float *y0 = rand_floats(n_wide, 1.0f); /* y and the gaps around it */
    uint16_t *x16 = bf_in ? to_bf16(x, (size_t)m * k) : NULL;
    uint16_t *w16 = bf_in ? to_bf16(w, (size_t)n * k) : NULL;
    uint16_t *y16 = bf_out ? to_bf16(y0, n_wide) : NULL;
    float *ref = dup_floats(y0, n_wide);
    struct pd_matmul_args a = {.y = ref + off,
                               .x = x,
                               .w = w,
                               .m = m,
                               .n = n,
                               .k = k,
                               .accumulate = accumulate,
                               .ldy = ldy};
    CHECK_EQ_INT(pd_matmul_cpu(&a), 0);

    struct pd_matmul_args g = a;
    const void *y_src = bf_out ? (const void *)y16 : y0;
    uint8_t *dy = dev_copy(y_src, n_wide * ysz);
    g.y = (float *)(void *)(dy + off * ysz);
    g.x = dev_copy(bf_in ? (const void *)x16 : x, (size_t)m * k * isz);
    g.w = dev_copy(bf_in ? (const void *)w16 : w, (size_t)n * k * isz);
    g.x_type = g.w_type = in_type;
    g.y_type = y_type;
    CHECK_EQ_INT(pd_matmul_cuda(&g, NULL), 0);
    void *raw = dev_fetch(dy, n_wide * ysz);
    float *got = raw;
    if (bf_out) {
        got = host_alloc(n_wide * sizeof(float));
        for (size_t i = 0; i < n_wide; i++)
            got[i] = pd_bf16_to_f32(((uint16_t *)raw)[i]);
        free(raw);
    }
    char what[128];
    snprintf(what, sizeof what, "matmul cuda %s -> %s m %u n %u k %u ldy %u%s: strided y",
             pd_dtype_name(in_type), pd_dtype_name(y_type), m, n, k, ldy,
             accumulate ? " accumulate" : "");
    check_strided(what, got, ref, m, n, ldy, off, bf_out ? TOL_BF16_KV : TOL_F32);
    free(got);

    dy = dev_copy(y_src, n_wide * ysz);
    g.y = (float *)(void *)(dy + off * ysz);
    g.ldy = n - 1;
    CHECK_EQ_INT(pd_matmul_cuda(&g, NULL), -EINVAL);
    raw = dev_fetch(dy, n_wide * ysz);
    check_same("matmul cuda: a refused ldy", raw, y_src, n_wide, ysz, ldy);
    free(raw);
    free(x), free(w), free(y0), free(x16), free(w16), free(y16), free(ref);
    dev_free_all();
}

static void matmul_cuda_strided_matches_cpu(void)
{
    need_gpu();
    const int emu = emulated();
    for (int iter = 0; iter < 12; iter++) {
        const uint32_t in = iter % 3 ? PD_DT_BF16 : PD_DT_F32;
        const uint32_t out = in == PD_DT_BF16 && iter % 3 == 2 ? PD_DT_BF16 : PD_DT_F32;
        matmul_cuda_strided_case(in, out, iter % 2, emu);
    }
}

/* ---- sampling ------------------------------------------------------------------- */

/* Every row's token, log-probability and top alternatives against
 * kernels/sample.c's pd_sample: greedy and seeded draws, top_k / top_p /
 * min_p, penalties over a history, tied and -inf logits. The tokens must be
 * identical (a draw landing within ~1e-9 of a boundary could differ; these
 * seeds do not), log-probabilities within 1e-4 or both -inf (a -inf logit's). */
static int same_logprob(float gpu, float cpu)
{
    return gpu == cpu || fabsf(gpu - cpu) <= 1e-4f; /* -inf == -inf: a -inf logit's */
}

/* the highest raw logit of a row, the lower id on a tie (greedy without bias) */
static uint32_t row_argmax(const float *l, uint32_t V)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < V; i++)
        if (l[i] > l[best])
            best = i;
    return best;
}

/* A row's logit bias (with_bias) into b, p made to fit it: row 0 greedy with
 * -100 on its argmax (the choice flips), row 1 a plain draw with +100 on a
 * low finite-logit token (it wins), row 2 the cap of 300 entries over the
 * vocabulary (duplicates add up), the others none or up to 5 entries, some
 * repeated, some +-100. Returns the row's entries; *forced: the token row 0
 * must not and row 1 must produce (-1: no such token to check). */
static uint32_t sample_row_bias(uint32_t r, uint32_t V, const float *l, struct pd_sampling *p,
                                struct pd_logit_bias *b, int32_t *forced)
{
    uint32_t n = 0;
    *forced = -1;
    if (r == 0) {
        *p = PD_SAMPLING_DEFAULT;
        const uint32_t top = row_argmax(l, V);
        b[n++] = (struct pd_logit_bias){(int32_t)top, -100.0f};
        for (uint32_t i = 0; i < V; i++) /* it loses where another logit is finite */
            if (i != top && isfinite(l[i]))
                *forced = (int32_t)top;
        b[n++] = (struct pd_logit_bias){(int32_t)rnd(V), rndf(1.0f)};
    } else if (r == 1) {
        *p = PD_SAMPLING_DEFAULT;
        p->temperature = 1.0f;
        uint32_t low = rnd(V); /* the lowest finite logit at or after a random id */
        while (!isfinite(l[low]))
            low = (low + 1) % V;
        for (uint32_t i = 0; i < V; i++)
            if (isfinite(l[i]) && l[i] < l[low])
                low = i;
        *forced = (int32_t)low;
        b[n++] = (struct pd_logit_bias){(int32_t)rnd(V), rndf(2.0f)};
        b[n++] = (struct pd_logit_bias){(int32_t)low, 100.0f};
    } else if (r == 2) {
        for (; n < PD_MAX_LOGIT_BIAS; n++)
            b[n] = (struct pd_logit_bias){(int32_t)rnd(V < 40 ? V : 40), rndf(1.0f)};
    } else if (rnd(3)) {
        const uint32_t k = rnd(6);
        for (; n < k; n++) {
            const int32_t tok = n && rnd(3) == 0 ? b[n - 1].token : (int32_t)rnd(V);
            const float v = rnd(8) == 0 ? (rnd(2) ? 100.0f : -100.0f) : rndf(3.0f);
            b[n] = (struct pd_logit_bias){tok, v};
        }
    }
    return n;
}

/* with_bias: the rows carry logit biases (sample_row_bias), the GPU's
 * concatenated in pd_sample_args.bias, the CPU's in pd_sampling.bias */
static void sample_rows_match_cpu(int with_bias)
{
    need_gpu();
    for (int iter = 0; iter < 8; iter++) { /* under a second emulated: the same cases */
        /* 10007 and 49152: the log-sum-exp in 3 uneven and 12 whole slices */
        const uint32_t V = PICK(7, 50, 300, 3000, 10007, 49152);
        const uint32_t rows = 64;
        float *logits = host_alloc((size_t)rows * V * sizeof(float));
        struct pd_sampling *par = host_alloc(rows * sizeof(*par));
        uint32_t *start = host_alloc((rows + 1) * sizeof(uint32_t));
        uint32_t *np = host_alloc(rows * sizeof(uint32_t));
        int32_t *hist = host_alloc((size_t)rows * 64 * sizeof(int32_t));
        /* a row at the cap and at most 6 entries for each other */
        struct pd_logit_bias *bias = host_alloc((PD_MAX_LOGIT_BIAS + 6 * rows) * sizeof(*bias));
        uint32_t *bstart = host_alloc((rows + 1) * sizeof(uint32_t));
        int32_t forced[2] = {-1, -1};
        start[0] = 0;
        bstart[0] = 0;
        for (uint32_t r = 0; r < rows; r++) {
            const int ties = rnd(3) == 0, neg_inf = rnd(4) == 0;
            /* the first half -inf: whole slices of the log-sum-exp add nothing */
            const uint32_t inf_below = rnd(6) == 0 ? V / 2 : 0;
            for (uint32_t i = 0; i < V; i++) {
                float x = rndf(4.0f);
                logits[(size_t)r * V + i] = i < inf_below ? -INFINITY
                    : ties                                ? roundf(x)
                    : neg_inf && rnd(3) == 0              ? -INFINITY
                                                          : x;
            }
            struct pd_sampling p = PD_SAMPLING_DEFAULT;
            if (rnd(4)) {
                p.temperature = 0.3f + 0.1f * (float)rnd(13);
                p.top_k = rnd(2) ? 0 : (int32_t)(1 + rnd(V));
                p.top_p = rnd(2) ? 1.0f : rnd(8) ? 0.5f + 0.05f * (float)rnd(10) : 1e-20f;
                p.min_p = rnd(3) ? 0.0f : 0.05f * (float)rnd(5);
            }
            if (rnd(2)) {
                p.repetition_penalty = 1.3f;
                p.presence_penalty = 0.5f * (float)((int)rnd(5) - 2);
                p.frequency_penalty = 0.25f * (float)((int)rnd(5) - 2);
            }
            p.seed = rnd64();
            p.n_logprobs = rnd(6);
            bstart[r + 1] = bstart[r];
            if (with_bias) {
                int32_t f;
                const uint64_t seed = p.seed;
                const uint32_t n_logprobs = p.n_logprobs;
                const uint32_t nb =
                    sample_row_bias(r, V, logits + (size_t)r * V, &p, bias + bstart[r], &f);
                p.seed = seed, p.n_logprobs = n_logprobs;
                p.n_bias = nb;
                p.bias = nb ? bias + bstart[r] : NULL; /* the CPU's; the GPU never reads it */
                bstart[r + 1] = bstart[r] + nb;
                if (r < 2)
                    forced[r] = f;
            }
            CHECK_EQ_INT(pd_sampling_validate(&p, V, NULL, 0), 0);
            par[r] = p;
            const uint32_t n = rnd(64);
            np[r] = rnd(n + 1);
            for (uint32_t j = 0; j < n; j++) /* repeats: counts above 1 */
                hist[start[r] + j] = (int32_t)rnd(V < 20 ? V : 20 + rnd(V - 19));
            start[r + 1] = start[r] + n;
        }

        struct pd_sample_args g = {.n_rows = rows, .n_vocab = V};
        g.logits = dev_copy(logits, (size_t)rows * V * sizeof(float));
        g.params = dev_copy(par, rows * sizeof(*par));
        g.hist = dev_copy(hist, (start[rows] ? start[rows] : 1) * sizeof(int32_t));
        g.hist_start = dev_copy(start, (rows + 1) * sizeof(uint32_t));
        g.n_prompt = dev_copy(np, rows * sizeof(uint32_t));
        if (with_bias) {
            g.bias = dev_copy(bias, (bstart[rows] ? bstart[rows] : 1) * sizeof(*bias));
            g.bias_start = dev_copy(bstart, (rows + 1) * sizeof(uint32_t));
        }
        g.workspace_bytes = pd_sample_cuda_workspace(rows, V);
        g.workspace = dev_poisoned(g.workspace_bytes);
        g.token = dev_poisoned(rows * sizeof(int32_t));
        g.logprob = dev_poisoned(rows * sizeof(float));
        g.top = dev_poisoned((size_t)rows * PD_MAX_LOGPROBS * sizeof(struct pd_token_logprob));
        g.n_top = dev_poisoned(rows * sizeof(uint32_t));
        CHECK_EQ_INT(pd_sample_cuda(&g, NULL), 0);
        int32_t *tok = dev_fetch(g.token, rows * sizeof(int32_t));
        float *lp = dev_fetch(g.logprob, rows * sizeof(float));
        struct pd_token_logprob *top =
            dev_fetch(g.top, (size_t)rows * PD_MAX_LOGPROBS * sizeof(struct pd_token_logprob));
        uint32_t *ntop = dev_fetch(g.n_top, rows * sizeof(uint32_t));

        struct pd_sampler *smp = pd_sampler_new(V);
        CHECK(smp != NULL);
        for (uint32_t r = 0; r < rows; r++) {
            struct pd_sample_result ref;
            CHECK_EQ_INT(pd_sample(smp, &par[r], logits + (size_t)r * V, hist + start[r], np[r],
                                   hist + start[r] + np[r], start[r + 1] - start[r] - np[r], &ref),
                         0);
            if (tok[r] != ref.token || !same_logprob(lp[r], ref.logprob))
                PD_TEST_FAIL_("sample V %u row %u (temperature %g top_k %d top_p %g min_p %g "
                              "penalties %g/%g/%g, %u history, %u bias): GPU token %d logprob %g, "
                              "CPU %d %g",
                              V, r, (double)par[r].temperature, par[r].top_k, (double)par[r].top_p,
                              (double)par[r].min_p, (double)par[r].repetition_penalty,
                              (double)par[r].presence_penalty, (double)par[r].frequency_penalty,
                              start[r + 1] - start[r], par[r].n_bias, tok[r], (double)lp[r],
                              ref.token, (double)ref.logprob);
            if (with_bias && r == 0 && forced[0] >= 0 && tok[r] == forced[0]) /* it lost */
                PD_TEST_FAIL_("sample V %u row 0: the -100 bias left token %d chosen", V, tok[r]);
            if (with_bias && r == 1 && tok[r] != forced[1]) /* +100 on a low token: it won */
                PD_TEST_FAIL_("sample V %u row 1: token %d drawn, not the +100 token %d", V, tok[r],
                              forced[1]);
            CHECK_EQ_INT(ntop[r], ref.n_top);
            for (uint32_t k = 0; k < ref.n_top; k++) {
                const struct pd_token_logprob *t = &top[(size_t)r * PD_MAX_LOGPROBS + k];
                CHECK_EQ_INT(t->token, ref.top[k].token);
                if (!same_logprob(t->logprob, ref.top[k].logprob))
                    PD_TEST_FAIL_("sample V %u row %u, alternative %u (token %d): GPU logprob %g, "
                                  "CPU %g", V, r, k, t->token, (double)t->logprob,
                                  (double)ref.top[k].logprob);
            }
        }
        pd_sampler_free(smp);
        free(logits), free(par), free(start), free(np), free(hist), free(bias), free(bstart);
        free(tok), free(lp), free(top), free(ntop);
        dev_free_all();
    }
}

static void sample_cuda_matches_cpu(void) { sample_rows_match_cpu(0); }

/* OpenAI's logit_bias on both: added in order before the penalties and the
 * temperature, the reported log-probabilities raw */
static void sample_cuda_logit_bias_matches_cpu(void) { sample_rows_match_cpu(1); }

/* Echo's prompt log-probabilities on the GPU: rows with a forced token are
 * scored (pd_sample_score: that token's raw log-probability, their
 * parameters' n_logprobs most probable), whatever else their parameters
 * say, in the same launch as rows drawn as pd_sample draws them; a forced
 * token outside the vocabulary is refused for its row alone (token -1) */
static void sample_cuda_forced_rows_score_as_cpu(void)
{
    need_gpu();
    for (int iter = 0; iter < 6; iter++) {
        const uint32_t V = iter < 2 ? (iter ? 7u : 50u) : PICK(50, 300, 3000, 49152);
        const uint32_t rows = 40;
        float *logits = host_alloc((size_t)rows * V * sizeof(float));
        struct pd_sampling *par = host_alloc(rows * sizeof(*par));
        uint32_t *start = host_alloc((rows + 1) * sizeof(uint32_t));
        uint32_t *np = host_alloc(rows * sizeof(uint32_t));
        int32_t *hist = host_alloc((size_t)rows * 32 * sizeof(int32_t));
        int32_t *forced = host_alloc(rows * sizeof(int32_t));
        start[0] = 0;
        for (uint32_t r = 0; r < rows; r++) {
            const int ties = rnd(3) == 0, neg_inf = rnd(4) == 0;
            float *row = logits + (size_t)r * V;
            for (uint32_t i = 0; i < V; i++) {
                float x = rndf(6.0f);
                row[i] = ties ? roundf(x) : neg_inf && rnd(3) == 0 ? -INFINITY : x;
            }
            struct pd_sampling p = PD_SAMPLING_DEFAULT;
            if (rnd(2)) { /* a forced row keeps whatever its item samples with */
                p.temperature = 0.3f + 0.1f * (float)rnd(13);
                p.top_k = rnd(2) ? 0 : (int32_t)(1 + rnd(V));
                p.top_p = rnd(2) ? 1.0f : 0.5f + 0.05f * (float)rnd(10);
                p.min_p = rnd(3) ? 0.0f : 0.05f * (float)rnd(5);
            }
            if (rnd(3) == 0)
                p.repetition_penalty = 1.3f, p.presence_penalty = 0.5f,
                p.frequency_penalty = -0.25f;
            p.seed = rnd64();
            p.n_logprobs = r % 5 == 0 ? PD_MAX_LOGPROBS : rnd(8);
            par[r] = p;
            /* rows 0 mod 3 draw; the others are scored: a random token, the
             * row's argmax, or a -inf logit's token where the row has one */
            forced[r] = -1;
            if (r % 3) {
                forced[r] = (int32_t)rnd(V);
                if (r % 7 == 1)
                    forced[r] = (int32_t)row_argmax(row, V);
                for (uint32_t i = 0; r % 7 == 2 && i < V; i++)
                    if (isinf(row[i]))
                        forced[r] = (int32_t)i;
            }
            /* a drawn row's history; a scored row has none (as the engine sends it) */
            const uint32_t n = forced[r] < 0 ? rnd(32) : 0;
            np[r] = rnd(n + 1);
            for (uint32_t j = 0; j < n; j++)
                hist[start[r] + j] = (int32_t)rnd(V);
            start[r + 1] = start[r] + n;
        }
        forced[rows - 1] = (int32_t)V; /* outside the vocabulary: refused, that row alone */

        struct pd_sample_args g = {.n_rows = rows, .n_vocab = V};
        g.logits = dev_copy(logits, (size_t)rows * V * sizeof(float));
        g.params = dev_copy(par, rows * sizeof(*par));
        g.hist = dev_copy(hist, (start[rows] ? start[rows] : 1) * sizeof(int32_t));
        g.hist_start = dev_copy(start, (rows + 1) * sizeof(uint32_t));
        g.n_prompt = dev_copy(np, rows * sizeof(uint32_t));
        g.forced = dev_copy(forced, rows * sizeof(int32_t));
        g.workspace_bytes = pd_sample_cuda_workspace(rows, V);
        g.workspace = dev_poisoned(g.workspace_bytes);
        g.token = dev_poisoned(rows * sizeof(int32_t));
        g.logprob = dev_poisoned(rows * sizeof(float));
        g.top = dev_poisoned((size_t)rows * PD_MAX_LOGPROBS * sizeof(struct pd_token_logprob));
        g.n_top = dev_poisoned(rows * sizeof(uint32_t));
        CHECK_EQ_INT(pd_sample_cuda(&g, NULL), 0);
        int32_t *tok = dev_fetch(g.token, rows * sizeof(int32_t));
        float *lp = dev_fetch(g.logprob, rows * sizeof(float));
        struct pd_token_logprob *top =
            dev_fetch(g.top, (size_t)rows * PD_MAX_LOGPROBS * sizeof(struct pd_token_logprob));
        uint32_t *ntop = dev_fetch(g.n_top, rows * sizeof(uint32_t));

        struct pd_sampler *smp = pd_sampler_new(V);
        CHECK(smp != NULL);
        uint32_t scored = 0, drawn = 0;
        for (uint32_t r = 0; r + 1 < rows; r++) {
            const float *row = logits + (size_t)r * V;
            struct pd_sample_result ref;
            if (forced[r] >= 0) {
                CHECK_EQ_INT(pd_sample_score(V, row, forced[r], par[r].n_logprobs, &ref), 0);
                scored++;
            } else {
                CHECK_EQ_INT(pd_sample(smp, &par[r], row, hist + start[r], np[r],
                                       hist + start[r] + np[r], start[r + 1] - start[r] - np[r],
                                       &ref),
                             0);
                drawn++;
            }
            if (tok[r] != ref.token || !same_logprob(lp[r], ref.logprob))
                PD_TEST_FAIL_("sample V %u row %u (%s %d, temperature %g): GPU token %d logprob "
                              "%g, CPU %d %g", V, r, forced[r] >= 0 ? "forced" : "drawn",
                              forced[r], (double)par[r].temperature, tok[r], (double)lp[r],
                              ref.token, (double)ref.logprob);
            CHECK_EQ_INT(ntop[r], ref.n_top);
            CHECK_EQ_INT(ntop[r], par[r].n_logprobs < V ? par[r].n_logprobs : V);
            for (uint32_t k = 0; k < ref.n_top; k++) {
                const struct pd_token_logprob *t = &top[(size_t)r * PD_MAX_LOGPROBS + k];
                CHECK_EQ_INT(t->token, ref.top[k].token);
                if (!same_logprob(t->logprob, ref.top[k].logprob))
                    PD_TEST_FAIL_("sample V %u row %u, alternative %u (token %d): GPU logprob %g, "
                                  "CPU %g", V, r, k, t->token, (double)t->logprob,
                                  (double)ref.top[k].logprob);
            }
        }
        CHECK(scored > 0 && drawn > 0);
        CHECK_EQ_INT(tok[rows - 1], -1);
        CHECK(isnan(lp[rows - 1]));
        CHECK_EQ_INT(ntop[rows - 1], 0);
        pd_sampler_free(smp);
        free(logits), free(par), free(start), free(np), free(hist), free(forced);
        free(tok), free(lp), free(top), free(ntop);
        dev_free_all();
    }
}

/* Token masks (constrained decoding): rows with masks -- some sharing one,
 * the masks in another order than their rows, one allowing a single token,
 * one leaving out the row's argmax, one with stray bits past the vocabulary,
 * some under a +100 bias on a masked token -- and rows without (UINT32_MAX)
 * in one launch, against pd_sample with the same mask: the same token and
 * log-probabilities (raw: the masked tokens among the alternatives), every
 * masked row's token allowed by its mask; and a launch whose rows all say
 * UINT32_MAX draws as one without masks */
static void sample_cuda_masked_rows_match_cpu(void)
{
    need_gpu();
    for (int iter = 0; iter < 6; iter++) {
        const uint32_t V = iter < 2 ? (iter ? 70u : 7u) : PICK(50, 300, 3000, 49152);
        const uint32_t W = (V + 31) / 32, rows = 48;
        float *logits = host_alloc((size_t)rows * V * sizeof(float));
        struct pd_sampling *par = host_alloc(rows * sizeof(*par));
        uint32_t *start = host_alloc((rows + 1) * sizeof(uint32_t));
        uint32_t *np = host_alloc(rows * sizeof(uint32_t));
        int32_t *hist = host_alloc((size_t)rows * 32 * sizeof(int32_t));
        uint32_t *masks = host_alloc((size_t)rows * W * sizeof(uint32_t));
        uint32_t *mrow = host_alloc(rows * sizeof(uint32_t));
        struct pd_logit_bias *bias = host_alloc(rows * sizeof(*bias));
        uint32_t *bstart = host_alloc((rows + 1) * sizeof(uint32_t));
        uint32_t n_masks = 0, n_masked = 0, flipped = 0;
        start[0] = 0;
        bstart[0] = 0;
        /* rows 0 mod 3 have no mask; the others one each, stored from the end
         * of masks backwards, every fifth sharing the previous row's */
        uint8_t *shares = host_alloc(rows);
        for (uint32_t r = 0; r < rows; r++) {
            shares[r] = r % 3 != 0 && r % 5 == 0 && r > 1 && mrow[r - 1] != UINT32_MAX;
            mrow[r] = r % 3 == 0 ? UINT32_MAX : shares[r] ? mrow[r - 1] : n_masks++;
        }
        for (uint32_t r = 0; r < rows; r++)
            if (mrow[r] != UINT32_MAX)
                mrow[r] = n_masks - 1 - mrow[r];
        for (uint32_t r = 0; r < rows; r++) {
            float *row = logits + (size_t)r * V;
            const int ties = rnd(3) == 0, neg_inf = rnd(4) == 0;
            for (uint32_t i = 0; i < V; i++) {
                const float x = rndf(4.0f);
                row[i] = ties ? roundf(x) : neg_inf && rnd(3) == 0 ? -INFINITY : x;
            }
            struct pd_sampling p = PD_SAMPLING_DEFAULT;
            if (rnd(3)) {
                p.temperature = 0.3f + 0.1f * (float)rnd(13);
                p.top_k = rnd(2) ? 0 : (int32_t)(1 + rnd(V));
                p.top_p = rnd(2) ? 1.0f : 0.5f + 0.05f * (float)rnd(10);
                p.min_p = rnd(3) ? 0.0f : 0.05f * (float)rnd(5);
            }
            if (rnd(3) == 0)
                p.repetition_penalty = 1.3f, p.presence_penalty = -1.0f,
                p.frequency_penalty = -0.5f;
            p.seed = rnd64();
            p.n_logprobs = rnd(6);
            uint32_t *m = mrow[r] != UINT32_MAX ? masks + (size_t)mrow[r] * W : NULL;
            const uint32_t top = row_argmax(row, V);
            if (m && !shares[r]) { /* this row makes its mask */
                memset(m, 0, W * sizeof(*m));
                switch (r % 4) {
                case 0: m[top / 32] |= 1u << (top % 32); break; /* the argmax alone */
                case 1: /* a single token, somewhere else */
                {
                    const uint32_t t = rnd(V);
                    m[t / 32] |= 1u << (t % 32);
                    break;
                }
                case 2: /* everything but the argmax, and stray bits past the vocabulary */
                    for (uint32_t i = 0; i < V; i++)
                        if (i != top)
                            m[i / 32] |= 1u << (i % 32);
                    if (V % 32)
                        m[W - 1] |= ~0u << (V % 32);
                    break;
                default: /* about a third of the tokens, the argmax out */
                    for (uint32_t i = 0; i < V; i++)
                        if (i != top && rnd(3) == 0)
                            m[i / 32] |= 1u << (i % 32);
                    if (!m[0] && V > 1) /* at least one token */
                        m[0] |= top == 0 ? 2u : 1u;
                }
            }
            if (m) {
                /* an allowed token with a finite logit (a row whose every
                 * allowed logit is -inf draws no allowed token) */
                bool finite = false;
                for (uint32_t i = 0; i < V; i++)
                    if (m[i / 32] >> (i % 32) & 1u) {
                        if (!isfinite(row[i]))
                            row[i] = rndf(4.0f);
                        finite = true;
                    }
                CHECK(finite);
                p.mask = m; /* the CPU's; the GPU reads masks + mrow[r] * W */
                n_masked++;
            }
            bstart[r + 1] = bstart[r];
            if (m && rnd(2)) { /* +100 on a masked token */
                for (uint32_t i = rnd(V), k = 0; k < V; k++, i = (i + 1) % V)
                    if (!(m[i / 32] >> (i % 32) & 1u)) {
                        bias[bstart[r]] = (struct pd_logit_bias){(int32_t)i, 100.0f};
                        bstart[r + 1]++;
                        break;
                    }
                p.bias = bias + bstart[r];
                p.n_bias = bstart[r + 1] - bstart[r];
            }
            CHECK_EQ_INT(pd_sampling_validate(&p, V, NULL, 0), 0);
            par[r] = p;
            const uint32_t n = rnd(32);
            np[r] = rnd(n + 1);
            for (uint32_t j = 0; j < n; j++)
                hist[start[r] + j] = (int32_t)rnd(V);
            start[r + 1] = start[r] + n;
        }

        for (int with_masks = 1; with_masks >= 0; with_masks--) {
            struct pd_sample_args g = {.n_rows = rows, .n_vocab = V};
            uint32_t *mrow_none = host_alloc(rows * sizeof(uint32_t));
            for (uint32_t r = 0; r < rows; r++)
                mrow_none[r] = UINT32_MAX;
            g.logits = dev_copy(logits, (size_t)rows * V * sizeof(float));
            g.params = dev_copy(par, rows * sizeof(*par));
            g.hist = dev_copy(hist, (start[rows] ? start[rows] : 1) * sizeof(int32_t));
            g.hist_start = dev_copy(start, (rows + 1) * sizeof(uint32_t));
            g.n_prompt = dev_copy(np, rows * sizeof(uint32_t));
            g.bias = dev_copy(bias, (bstart[rows] ? bstart[rows] : 1) * sizeof(*bias));
            g.bias_start = dev_copy(bstart, (rows + 1) * sizeof(uint32_t));
            /* the second launch: the masks there, every row's index UINT32_MAX */
            g.mask = dev_copy(masks, (size_t)n_masks * W * sizeof(uint32_t));
            g.mask_row = dev_copy(with_masks ? mrow : mrow_none, rows * sizeof(uint32_t));
            g.workspace_bytes = pd_sample_cuda_workspace(rows, V);
            g.workspace = dev_poisoned(g.workspace_bytes);
            g.token = dev_poisoned(rows * sizeof(int32_t));
            g.logprob = dev_poisoned(rows * sizeof(float));
            g.top = dev_poisoned((size_t)rows * PD_MAX_LOGPROBS * sizeof(struct pd_token_logprob));
            g.n_top = dev_poisoned(rows * sizeof(uint32_t));
            CHECK_EQ_INT(pd_sample_cuda(&g, NULL), 0);
            int32_t *tok = dev_fetch(g.token, rows * sizeof(int32_t));
            float *lp = dev_fetch(g.logprob, rows * sizeof(float));
            struct pd_token_logprob *top =
                dev_fetch(g.top, (size_t)rows * PD_MAX_LOGPROBS * sizeof(struct pd_token_logprob));
            uint32_t *ntop = dev_fetch(g.n_top, rows * sizeof(uint32_t));

            struct pd_sampler *smp = pd_sampler_new(V);
            CHECK(smp != NULL);
            for (uint32_t r = 0; r < rows; r++) {
                struct pd_sampling p = par[r];
                struct pd_sample_result ref, unmasked;
                if (!with_masks)
                    p.mask = NULL;
                CHECK_EQ_INT(pd_sample(smp, &p, logits + (size_t)r * V, hist + start[r], np[r],
                                       hist + start[r] + np[r], start[r + 1] - start[r] - np[r],
                                       &ref),
                             0);
                if (tok[r] != ref.token || !same_logprob(lp[r], ref.logprob))
                    PD_TEST_FAIL_("masked sample V %u row %u (mask %s, temperature %g top_k %d "
                                  "top_p %g, %u bias): GPU token %d logprob %g, CPU %d %g",
                                  V, r, p.mask ? "yes" : "no", (double)p.temperature, p.top_k,
                                  (double)p.top_p, p.n_bias, tok[r], (double)lp[r], ref.token,
                                  (double)ref.logprob);
                if (p.mask) {
                    const uint32_t t = (uint32_t)tok[r];
                    if (!(t < V && (p.mask[t / 32] >> (t % 32) & 1u)))
                        PD_TEST_FAIL_("masked sample V %u row %u: token %d is masked", V, r,
                                      tok[r]);
                    /* the same row without its mask: the alternatives are the same */
                    p.mask = NULL;
                    CHECK_EQ_INT(pd_sample(smp, &p, logits + (size_t)r * V, hist + start[r],
                                           np[r], hist + start[r] + np[r],
                                           start[r + 1] - start[r] - np[r], &unmasked),
                                 0);
                    flipped += unmasked.token != ref.token;
                    CHECK_EQ_INT(unmasked.n_top, ref.n_top);
                    for (uint32_t k = 0; k < ref.n_top; k++)
                        CHECK(unmasked.top[k].token == ref.top[k].token);
                }
                CHECK_EQ_INT(ntop[r], ref.n_top);
                for (uint32_t k = 0; k < ref.n_top; k++) {
                    const struct pd_token_logprob *t = &top[(size_t)r * PD_MAX_LOGPROBS + k];
                    CHECK_EQ_INT(t->token, ref.top[k].token);
                    if (!same_logprob(t->logprob, ref.top[k].logprob))
                        PD_TEST_FAIL_("masked sample V %u row %u, alternative %u: GPU %g, CPU %g",
                                      V, r, k, (double)t->logprob, (double)ref.top[k].logprob);
                }
            }
            pd_sampler_free(smp);
            free(tok), free(lp), free(top), free(ntop), free(mrow_none);
            dev_free_all();
        }
        CHECK(n_masked > rows / 2 && n_masks < n_masked);
        if (V > 7)
            CHECK(flipped > 0); /* the masks changed some draws */
        free(logits), free(par), free(start), free(np), free(hist), free(masks), free(mrow);
        free(bias), free(bstart), free(shares);
    }
}

/* ---- prefill attention (tensor cores) ----------------------------------------- */


/* make_batch gives each sequence one run of consecutive positions; the run
 * table as the prefill kernel takes it (and a check that it is one) */
static int32_t *batch_runs(const struct attn_batch *b, uint32_t *n_runs, uint32_t *max_run)
{
    int32_t *start = host_alloc((b->n_tokens + 1) * sizeof(int32_t));
    uint32_t n = 0, longest = 0;
    for (uint32_t t = 0; t < b->n_tokens; t++) {
        if (t == 0 || b->tok_seq[t] != b->tok_seq[t - 1]) {
            start[n++] = (int32_t)t;
        } else {
            CHECK(b->tok_pos[t] == b->tok_pos[t - 1] + 1);
        }
        uint32_t len = t + 1 - (uint32_t)start[n - 1];
        longest = len > longest ? len : longest;
    }
    start[n] = (int32_t)b->n_tokens;
    *n_runs = n;
    *max_run = longest;
    return start;
}

/* The kernel on the case's batch against the CPU reference over the same
 * 16-bit pool (and, for 16-bit io, the same rounded q): bf16 operands, so
 * TOL_BF16_KV. */
/* Scores that climb along the keys: K's first element at position pos is
 * pos / 2 (the pool holds it as both sides read it) and every query's first
 * element 64 (exact in 16 bits), so each 64-key tile outscores the one
 * before by ~260 log2 units at head_dim 128: a kernel's running maximum must
 * move and O be rescaled tile after tile (weights against a stale maximum
 * overflow by the second), while rounding q adds no error to that part. */
static void ramp_keys(const struct attn_case *c, const struct attn_batch *b, void *pool, float *q,
                      size_t n_q)
{
    for (uint32_t sq = 0; sq < c->n_seqs; sq++)
        for (uint32_t pos = 0; pos < b->len[sq]; pos++)
            for (uint32_t ly = 0; ly < c->l.n_layer; ly++)
                for (uint32_t h = 0; h < c->l.n_head_kv; h++) {
                    const uint64_t o = pd_kv_pos_offset(&c->l, b->tables + sq * b->max_blocks,
                                                        pos, ly, 0, h);
                    if (c->pool_type == PD_DT_F32)
                        ((float *)pool)[o] = (float)pos / 2.0f;
                    else
                        ((uint16_t *)pool)[o] = enc16(c->pool_type, (float)pos / 2.0f);
                }
    for (size_t i = 0; i < n_q; i += c->l.head_dim)
        q[i] = 64.0f;
}

/* 1: the prefill cases run Hopper's wgmma kernel (pd_attn_args.prefill_wgmma;
 * attention_prefill_sm90_matches_cpu sets it, every test starts at 0) */
static uint32_t prefill_wgmma;

static void prefill_case_run(const struct attn_case *c, uint32_t io_type, int ramp)
{
    struct attn_batch b;
    make_batch(c, &b);
    const uint32_t n_head = c->l.n_head_kv * c->group, hd = c->l.head_dim;
    const size_t out_n = (size_t)b.n_tokens * n_head * hd;
    const size_t io_size = elem_size(io_type);
    const size_t n_elems = b.n_blocks * pd_kv_block_elems(&c->l);
    void *pool = random_pool(c, n_elems);
    float *q = rand_floats(out_n, 6.0f), *ref = host_alloc(out_n * sizeof(float));
    if (ramp)
        ramp_keys(c, &b, pool, q, out_n);
    /* q in rows of q, k and v (q_gap): the gaps NaN, rounded with the rest */
    const uint32_t w = n_head * hd, q_ld = w + c->q_gap;
    const size_t q_n = (size_t)b.n_tokens * q_ld;
    const float *q_in = q;
    if (c->q_gap) {
        float *wide = q_in_rows(q, b.n_tokens, w, q_ld, &q_in);
        free(q);
        q = wide;
    }
    uint16_t *q16 = host_alloc(q_n * sizeof(uint16_t));
    for (size_t i = 0; i < q_n && io_type != PD_DT_F32; i++) {
        q16[i] = enc16(io_type, q[i]);
        q[i] = dec16(io_type, q16[i]);
    }
    memset(ref, 0xff, out_n * sizeof(float));
    uint32_t n_runs, max_run;
    int32_t *runs = batch_runs(&b, &n_runs, &max_run);

    struct pd_attn_args a = case_args(c, &b, ref, q_in, pool);
    a.q_ld = c->q_gap ? q_ld : 0;
    CHECK_EQ_INT(pd_attention_cpu(&a), 0);

    struct pd_attn_args g = a;
    g.pool = dev_copy(pool, n_elems * elem_size(c->pool_type));
    g.q = dev_copy(io_type == PD_DT_F32 ? (const void *)q_in : q16 + (q_in - q),
                   q_extent(&a) * io_size);
    g.out = dev_poisoned(out_n * io_size);
    g.tok_seq = dev_copy(b.tok_seq, b.n_tokens * sizeof(int32_t));
    g.tok_pos = dev_copy(b.tok_pos, b.n_tokens * sizeof(int32_t));
    g.block_tables = dev_copy(b.tables, (size_t)c->n_seqs * b.max_blocks * sizeof(uint32_t));
    g.run_start = dev_copy(runs, (n_runs + 1) * sizeof(int32_t));
    g.n_runs = n_runs;
    g.max_run = rnd(2) ? max_run : 0; /* 0: n_tokens bounds every run */
    g.io_type = io_type;
    g.prefill_wgmma = prefill_wgmma;
    if (c->q_gap) { /* under the q row, or not a multiple of 8: refused, nothing written */
        struct pd_attn_args bad = g;
        bad.q_ld = w - 8;
        CHECK_EQ_INT(pd_attention_prefill_cuda(&bad, NULL), -EINVAL);
        bad.q_ld = q_ld + 4;
        CHECK_EQ_INT(pd_attention_prefill_cuda(&bad, NULL), -EINVAL);
        check_poisoned("prefill: a refused q_ld", g.out, out_n * io_size);
    }
    CHECK_EQ_INT(pd_attention_prefill_cuda(&g, NULL), 0);
    if (io_type == PD_DT_F32) /* 16-bit out from float q: each element the float out rounded */
        attn_out16_matches("prefill", g, g.out, PICK(PD_DT_BF16, PD_DT_F16), 1);
    else { /* out follows a 16-bit io_type: another out_type refused */
        struct pd_attn_args bad = g;
        bad.out_type = io_type == PD_DT_BF16 ? PD_DT_F16 : PD_DT_BF16;
        CHECK_EQ_INT(pd_attention_prefill_cuda(&bad, NULL), -EINVAL);
    }

    void *raw = dev_fetch(g.out, out_n * io_size);
    float *got = raw;
    if (io_type != PD_DT_F32) { /* the poison, all bits set, widens to NaN too */
        got = host_alloc(out_n * sizeof(float));
        for (size_t i = 0; i < out_n; i++)
            got[i] = dec16(io_type, ((uint16_t *)raw)[i]);
        free(raw);
    }
    char what[200], kern[32] = "";
    if (prefill_wgmma)
        snprintf(kern, sizeof kern, " (wgmma, %u-key tiles)", prefill_wgmma);
    snprintf(what, sizeof what,
             "prefill%s %s io %s hd %u group %u kv %u bs %u seqs %u runs %u tokens %u (longest %u) "
             "q_ld %u%s",
             kern, pd_dtype_name(c->pool_type), pd_dtype_name(io_type), hd, c->group,
             c->l.n_head_kv, c->l.block_size, c->n_seqs, n_runs, b.n_tokens, max_run, a.q_ld,
             ramp ? ", scores climbing" : "");
    check_close(what, got, ref, out_n, TOL_BF16_KV);
    free(pool), free(q), free(q16), free(ref), free(got), free(runs);
    free_batch(&b);
    dev_free_all();
}

static uint32_t random_io(uint32_t pool_type)
{
    return rnd(2) ? PD_DT_F32 : pool_type;
}

/* Random runs: chunks at the end of longer sequences (earlier chunks in the
 * pool), whole prompts, single tokens, ragged lengths, every block size. */
static void attention_prefill_cuda_matches_cpu(void)
{
    need_gpu();
    const int emu = emulated();
    for (int iter = 0; iter < (emu ? 6 : 24); iter++) {
        struct attn_case c = {.l = random_layout(), .group = PICK(1, 2, 3, 4, 8),
                              .n_seqs = 1 + rnd(emu ? 2 : 6),
                              .max_len = emu ? PICK(1, 17, 90, 200) : PICK(1, 17, 300, 1000, 2500),
                              .pool_type = rnd(2) ? PD_DT_BF16 : PD_DT_F16};
        c.l.head_dim = PICK(64, 128);
        c.max_run = c.max_len > 1 ? 1 + rnd(c.max_len) : 1;
        if (emu)
            c.l.n_layer = 1, c.group = c.group > 2 ? 2 : c.group;
        fit_case(&c);
        prefill_case_run(&c, random_io(c.pool_type), iter % 2);
    }
}

/* The kernel reads q where it is in rows of q, k and v (q_ld apart, a
 * multiple of 8): k's and v's heads after it, or a few more elements. */
static void attention_prefill_cuda_strided_q_matches_cpu(void)
{
    need_gpu();
    const int emu = emulated();
    for (int iter = 0; iter < (emu ? 4 : 12); iter++) {
        struct attn_case c = {.l = random_layout(),
                              .group = PICK(1, 2, 3, 4),
                              .n_seqs = 1 + rnd(emu ? 2 : 4),
                              .max_len = emu ? PICK(17, 90, 200) : PICK(17, 300, 1000),
                              .pool_type = rnd(2) ? PD_DT_BF16 : PD_DT_F16};
        c.l.head_dim = PICK(64, 128);
        c.max_run = c.max_len > 1 ? 1 + rnd(c.max_len) : 1;
        c.q_gap = rnd(2) ? 2 * c.l.n_head_kv * c.l.head_dim : 8 * (1 + rnd(8));
        if (emu)
            c.l.n_layer = 1, c.group = c.group > 2 ? 2 : c.group;
        fit_case(&c);
        prefill_case_run(&c, random_io(c.pool_type), iter % 2);
    }
}

/* The shapes that matter: the default model (GQA 3:1, head_dim 64) and GQA
 * 8:1 at head_dim 128, block 16, a 256-token chunk after 700 tokens of
 * context and whole prompts, both pool types, both io types. */
static void attention_prefill_cuda_matches_cpu_on_model_shapes(void)
{
    static const struct gqa_shape shapes[] = {{3, 3, 64}, {2, 8, 128}};
    need_gpu();
    const int emu = emulated();
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int pt = 0; pt < 2; pt++) {
            struct attn_case c = {.l = {1 + !emu, shapes[s].kv, shapes[s].hd, 16},
                                  .group = shapes[s].group, .n_seqs = emu ? 1 : 1 + rnd(3),
                                  .max_len = emu ? 200 : 956, .max_run = emu ? 130 : 256,
                                  .pool_type = pt ? PD_DT_BF16 : PD_DT_F16};
            if (emu)
                c.l.n_head_kv = 1;
            prefill_case_run(&c, pt ? PD_DT_F32 : c.pool_type, (int)s);
        }
}

/* The kernel takes the most query rows per block whose shared memory the
 * device lets a block have: on the emulator, playing an sm_86 (99 KiB a
 * block: head_dim 128 with one m-tile per warp), the model shapes still match
 * the CPU, and with 40,000 bytes nothing fits: -ENOTSUP, the caller's cue to
 * take the decode kernel. On a GPU its own limit decides. */
static void attention_prefill_cuda_fits_the_devices_shared_memory(void)
{
    static const struct gqa_shape shapes[] = {{1, 3, 64}, {1, 8, 128}};
    need_gpu();
    const int emu = emulated();
    if (emu) { /* another emulated device: what the launcher knew of the last one goes */
        setenv("PD_EMU_SMEM_OPTIN", "101376", 1);
        pd_attention_prefill_cuda_forget();
    }
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        struct attn_case c = {.l = {1, shapes[k].kv, shapes[k].hd, 16}, .group = shapes[k].group,
                              .n_seqs = 1, .max_len = 300, .max_run = 200,
                              .pool_type = PD_DT_BF16};
        prefill_case_run(&c, PD_DT_F32, 1);
    }
    if (emu) {
        setenv("PD_EMU_SMEM_OPTIN", "40000", 1);
        pd_attention_prefill_cuda_forget();
        for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
            const struct attn_case c = {.l = {1, 1, shapes[k].hd, 16}, .group = 2,
                                        .pool_type = PD_DT_BF16};
            int32_t seq[4] = {0}, pos[4] = {0, 1, 2, 3}, runs[2] = {0, 4};
            uint32_t table[1] = {0};
            const size_t row = 2 * shapes[k].hd;
            struct pd_attn_args g = {
                .q = dev_poisoned(4 * row * 4), .out = dev_poisoned(4 * row * 4),
                .pool = dev_poisoned(pd_kv_block_elems(&c.l) * 2), .kv = c.l, .n_tokens = 4,
                .n_head = 2, .tok_seq = dev_copy(seq, sizeof seq),
                .tok_pos = dev_copy(pos, sizeof pos), .block_tables = dev_copy(table, sizeof table),
                .max_blocks = 1, .scale = 0.125f, .pool_type = PD_DT_BF16,
                .run_start = dev_copy(runs, sizeof runs), .n_runs = 1};
            CHECK_EQ_INT(pd_attention_prefill_cuda(&g, NULL), -ENOTSUP);
            dev_free_all();
        }
        unsetenv("PD_EMU_SMEM_OPTIN");
        pd_attention_prefill_cuda_forget();
    }
}

/* A run reaching past max_ctx, or starting at a negative position, gets NaN
 * rows; the other runs are untouched by it. */
static void attention_prefill_cuda_refuses_runs_past_max_ctx(void)
{
    need_gpu();
    struct attn_case c = {.l = {1, 1, 64, 16}, .group = 2, .n_seqs = 3, .max_len = 60,
                          .max_run = 40, .pool_type = PD_DT_BF16};
    struct attn_batch b;
    make_batch(&c, &b);
    const size_t row = 2 * 64, out_n = (size_t)b.n_tokens * row;
    void *pool = random_pool(&c, b.n_blocks * pd_kv_block_elems(&c.l));
    float *q = rand_floats(out_n, 1.0f);
    uint32_t n_runs, max_run;
    int32_t *runs = batch_runs(&b, &n_runs, &max_run);
    /* the first run ends past max_ctx = its last position (one short); a
     * one-token sequence at position 0 (max_ctx 0 would mean "no bound") is
     * refused by a negative position instead */
    const uint32_t first_end = (uint32_t)runs[1], max_ctx = (uint32_t)b.tok_pos[first_end - 1];
    if (max_ctx == 0)
        for (uint32_t t = 0; t < first_end; t++)
            b.tok_pos[t] = -1;
    struct pd_attn_args g = {.q = dev_copy(q, out_n * sizeof(float)),
                             .pool = dev_copy(pool, b.n_blocks * pd_kv_block_elems(&c.l) * 2),
                             .out = dev_poisoned(out_n * sizeof(float)), .kv = c.l,
                             .n_tokens = b.n_tokens, .n_head = 2,
                             .tok_seq = dev_copy(b.tok_seq, b.n_tokens * sizeof(int32_t)),
                             .tok_pos = dev_copy(b.tok_pos, b.n_tokens * sizeof(int32_t)),
                             .block_tables = dev_copy(b.tables, 3 * b.max_blocks * sizeof(uint32_t)),
                             .max_blocks = b.max_blocks, .scale = 0.125f, .pool_type = PD_DT_BF16,
                             .max_ctx = max_ctx,
                             .run_start = dev_copy(runs, (n_runs + 1) * sizeof(int32_t)),
                             .n_runs = n_runs, .prefill_wgmma = prefill_wgmma};
    CHECK_EQ_INT(pd_attention_prefill_cuda(&g, NULL), 0);
    float *got = dev_fetch(g.out, out_n * sizeof(float));
    for (size_t i = 0; i < first_end * row; i++)
        CHECK(isnan(got[i]));

    /* the others: computed when their sequence fits max_ctx, NaN when not */
    for (size_t t = first_end; t < b.n_tokens; t++) {
        const int refused = max_ctx && b.len[b.tok_seq[t]] > max_ctx;
        for (size_t i = 0; i < row; i++)
            CHECK((isnan(got[t * row + i]) != 0) == refused);
    }
    free(pool), free(q), free(got), free(runs);
    free_batch(&b);
}

/* A run longer than max_run promised: every row of it NaN, none left
 * unwritten, both where the grid (sized by max_run, a tile of rows) covers
 * the run and where it reaches only its first rows. */
static void attention_prefill_cuda_refuses_runs_longer_than_max_run(void)
{
    need_gpu();
    const struct attn_case c = {.l = {1, 1, 64, 16}, .group = 2, .pool_type = PD_DT_BF16};
    const uint32_t row = 2 * 64, nb = 40;
    static const uint32_t lens[] = {100, 600};
    uint32_t table[40];
    int32_t seq[600], pos[600];
    for (uint32_t i = 0; i < nb; i++)
        table[i] = nb - 1 - i;
    for (uint32_t t = 0; t < 600; t++)
        seq[t] = 0, pos[t] = (int32_t)t;
    void *pool = random_pool(&c, nb * pd_kv_block_elems(&c.l));
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        const uint32_t n = lens[k];
        const int32_t runs[2] = {0, (int32_t)n};
        float *q = rand_floats(n * row, 1.0f);
        struct pd_attn_args g = {.q = dev_copy(q, n * row * sizeof(float)),
                                 .pool = dev_copy(pool, nb * pd_kv_block_elems(&c.l) * 2),
                                 .out = dev_poisoned(n * row * sizeof(float)), .kv = c.l,
                                 .n_tokens = n, .n_head = 2, .tok_seq = dev_copy(seq, n * 4),
                                 .tok_pos = dev_copy(pos, n * 4),
                                 .block_tables = dev_copy(table, sizeof table), .max_blocks = nb,
                                 .scale = 0.125f, .pool_type = PD_DT_BF16,
                                 .run_start = dev_copy(runs, sizeof runs), .n_runs = 1,
                                 .max_run = 64, .prefill_wgmma = prefill_wgmma};
        CHECK_EQ_INT(pd_cuda_memset(g.out, 0, n * row * sizeof(float)), 0);
        CHECK_EQ_INT(pd_attention_prefill_cuda(&g, NULL), 0);
        float *got = dev_fetch(g.out, n * row * sizeof(float));
        for (size_t i = 0; i < (size_t)n * row; i++)
            CHECK(isnan(got[i]));
        free(q), free(got);
    }
    free(pool);
}

/* Hopper's wgmma kernel (attn_prefill_sm90.cu) on the mma.sync kernel's
 * cases, against the CPU: random runs (chunks after earlier context, ragged
 * lengths, every block size), strided q, the model shapes with scores that
 * climb tile after tile, and the refusals (NaN rows past max_ctx or
 * max_run). Elsewhere than on a 9.0 device (or in a build without sm_90)
 * the launcher refuses it with nothing written, and the test skips. */
static void attention_prefill_sm90_matches_cpu(void)
{
    need_gpu();
    int major = 0, minor = 0;
    CHECK_EQ_INT(pd_cuda_device_cc(&major, &minor), 0);
    { /* a key tile it has not: refused on every device, before anything is asked */
        const struct attn_case c = {.l = {1, 1, 64, 16}, .group = 1, .pool_type = PD_DT_BF16};
        struct pd_attn_args g = {.kv = c.l,
                                 .n_tokens = 1,
                                 .n_head = 1,
                                 .max_blocks = 1,
                                 .scale = 0.125f,
                                 .pool_type = PD_DT_BF16,
                                 .n_runs = 1,
                                 .prefill_wgmma = 32};
        CHECK_EQ_INT(pd_attention_prefill_cuda(&g, NULL), -EINVAL);
        g.prefill_wgmma = 2;
        CHECK_EQ_INT(pd_attention_prefill_cuda(&g, NULL), -EINVAL);
    }
    if (major != 9 || minor != 0) {
        const struct attn_case c = {.l = {1, 1, 64, 16}, .group = 1, .pool_type = PD_DT_BF16};
        int32_t seq[1] = {0}, pos[1] = {0}, runs[2] = {0, 1};
        uint32_t table[1] = {0};
        struct pd_attn_args g = {
            .q = dev_poisoned(64 * 4), .out = dev_poisoned(64 * 4),
            .pool = dev_poisoned(pd_kv_block_elems(&c.l) * 2), .kv = c.l, .n_tokens = 1,
            .n_head = 1, .tok_seq = dev_copy(seq, sizeof seq), .tok_pos = dev_copy(pos, sizeof pos),
            .block_tables = dev_copy(table, sizeof table), .max_blocks = 1, .scale = 0.125f,
            .pool_type = PD_DT_BF16, .run_start = dev_copy(runs, sizeof runs), .n_runs = 1,
            .prefill_wgmma = 1};
        CHECK_EQ_INT(pd_attention_prefill_cuda(&g, NULL), -ENOTSUP);
        check_poisoned("a refused wgmma prefill", g.out, 64 * 4);
        PD_SKIP("the wgmma prefill kernel runs on sm_90 (9.0) alone");
    }
    static const uint32_t keys[] = {64, 128}; /* both key tiles (1: the launcher's) */
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        prefill_wgmma = keys[k];
        attention_prefill_cuda_matches_cpu();
        attention_prefill_cuda_strided_q_matches_cpu();
        attention_prefill_cuda_matches_cpu_on_model_shapes();
        attention_prefill_cuda_refuses_runs_past_max_ctx();
        attention_prefill_cuda_refuses_runs_longer_than_max_run();
    }
}

/* End to end on the GPU: kv_write stores K and V into a 16-bit pool, the
 * prefill kernel reads them, against the CPU in fp32 throughout (the pool's
 * rounding is the difference). */
static void attention_prefill_cuda_after_kv_write_close_to_fp32(void)
{
    need_gpu();
    const int emu = emulated();
    for (int iter = 0; iter < (emu ? 2 : 6); iter++) {
        struct attn_case c = {.l = {1, PICK(1, 2, 3), PICK(64, 128), PICK(16, 32)},
                              .group = PICK(1, 3, 4), .n_seqs = 1 + rnd(emu ? 1 : 3),
                              .max_len = emu ? 150 : 1200, .max_run = emu ? 100 : 500,
                              .pool_type = rnd(2) ? PD_DT_BF16 : PD_DT_F16};
        struct attn_batch b;
        make_batch(&c, &b);
        const uint32_t n_head = c.l.n_head_kv * c.group, hd = c.l.head_dim;
        const size_t row = (size_t)c.l.n_head_kv * hd, out_n = (size_t)b.n_tokens * n_head * hd;
        const size_t n_elems = b.n_blocks * pd_kv_block_elems(&c.l);
        uint32_t n_kv, n_runs, max_run;
        int64_t *slot = batch_slots(&c, &b, &n_kv);
        float *k = rand_floats(n_kv * row, 1.0f), *v = rand_floats(n_kv * row, 1.0f);
        float *q = rand_floats(out_n, 6.0f), *ref = host_alloc(out_n * sizeof(float));
        float *pool = host_alloc(n_elems * sizeof(float));
        memset(pool, 0, n_elems * sizeof(float));
        int32_t *runs = batch_runs(&b, &n_runs, &max_run);

        struct pd_kv_write_args w = {.pool = pool, .kv = c.l, .k = k, .v = v, .slot = slot,
                                     .n_tokens = n_kv};
        CHECK_EQ_INT(pd_kv_write_cpu(&w), 0);
        struct pd_attn_args a = {.out = ref, .q = q, .pool = pool, .kv = c.l,
                                 .n_tokens = b.n_tokens, .n_head = n_head, .tok_seq = b.tok_seq,
                                 .tok_pos = b.tok_pos, .block_tables = b.tables,
                                 .max_blocks = b.max_blocks, .scale = 1.0f / sqrtf((float)hd)};
        CHECK_EQ_INT(pd_attention_cpu(&a), 0);

        struct pd_attn_args g = written_on_device(&c, &b, &w, &a, c.pool_type, n_elems);
        g.run_start = dev_copy(runs, (n_runs + 1) * sizeof(int32_t));
        g.n_runs = n_runs;
        g.max_run = max_run;
        CHECK_EQ_INT(pd_attention_prefill_cuda(&g, NULL), 0);
        float *got = dev_fetch(g.out, out_n * sizeof(float));
        check_close(c.pool_type == PD_DT_BF16 ? "kv_write+prefill bf16 vs fp32"
                                              : "kv_write+prefill f16 vs fp32",
                    got, ref, out_n, TOL_BF16_KV);
        free(got), free(slot), free(k), free(v), free(q), free(ref), free(pool), free(runs);
        free_batch(&b);
        dev_free_all();
    }
}

/* ---- main ---------------------------------------------------------------------- */

#define T(fn) {#fn, fn##_seeded}
#define SEEDED(fn)                                                             \
    static void fn##_seeded(void)                                              \
    {                                                                          \
        dev_free_all();                                                        \
        prefill_wgmma = 0;                                                     \
        seed_for(#fn);                                                         \
        fn();                                                                  \
        dev_free_all();                                                        \
    }
SEEDED(cuda_errno_maps_statuses)
SEEDED(cuda_probe_gives_a_reason)
SEEDED(cuda_launchers_refuse_bad_args)
SEEDED(cuda_launchers_refuse_short_strides)
SEEDED(rmsnorm_cuda_matches_cpu)
SEEDED(bf16_out_cpu_rounds_the_float_out)
SEEDED(bf16_out_cuda_rounds_the_float_out)
SEEDED(rope_cuda_matches_cpu)
SEEDED(bias_cuda_matches_cpu)
SEEDED(swiglu_cuda_matches_cpu)
SEEDED(rope_cpu_strided_matches_packed)
SEEDED(rope_cuda_strided_matches_cpu)
SEEDED(rope_table_matches_computed_angles)
SEEDED(rope_kv_write_cuda_matches_separate)
SEEDED(bias_cpu_strided_matches_packed)
SEEDED(bias_cuda_strided_matches_cpu)
SEEDED(rmsnorm_cpu_strided_matches_packed)
SEEDED(rmsnorm_cuda_strided_matches_cpu)
SEEDED(embed_cuda_matches_cpu_every_type)
SEEDED(kv_write_cuda_matches_cpu)
SEEDED(kv_write_cpu_strided_matches_packed)
SEEDED(kv_write_cuda_strided_matches_cpu)
SEEDED(attention_cuda_decode_matches_cpu)
SEEDED(attention_cuda_prefill_runs_match_cpu)
SEEDED(attention_cuda_matches_cpu_on_model_shapes)
SEEDED(attention_cuda_decode_tensor_cores_match_cpu)
SEEDED(attention_cuda_generic_path_matches_cpu)
SEEDED(attention_cpu_strided_q_matches_packed)
SEEDED(attention_cuda_decode_strided_q_matches_cpu)
SEEDED(attention_cuda_refuses_positions_past_max_ctx)
SEEDED(attention_cuda_bf16_pool_close_to_fp32)
SEEDED(matmul_cuda_matches_cpu)
SEEDED(matmul_cuda_sets_the_callers_cublas_workspace)
SEEDED(matmul_cpu_strided_matches_packed)
SEEDED(matmul_cuda_strided_matches_cpu)
SEEDED(sample_cuda_matches_cpu)
SEEDED(sample_cuda_logit_bias_matches_cpu)
SEEDED(sample_cuda_forced_rows_score_as_cpu)
SEEDED(sample_cuda_masked_rows_match_cpu)
SEEDED(attention_prefill_cuda_matches_cpu)
SEEDED(attention_prefill_cuda_strided_q_matches_cpu)
SEEDED(attention_prefill_cuda_matches_cpu_on_model_shapes)
SEEDED(attention_prefill_cuda_fits_the_devices_shared_memory)
SEEDED(attention_prefill_cuda_refuses_runs_past_max_ctx)
SEEDED(attention_prefill_cuda_refuses_runs_longer_than_max_run)
SEEDED(attention_prefill_sm90_matches_cpu)
SEEDED(attention_prefill_cuda_after_kv_write_close_to_fp32)

static const struct pd_test tests[] = {
    T(cuda_errno_maps_statuses),
    T(cuda_probe_gives_a_reason),
    T(cuda_launchers_refuse_bad_args),
    T(cuda_launchers_refuse_short_strides),
    T(rmsnorm_cuda_matches_cpu),
    T(bf16_out_cpu_rounds_the_float_out),
    T(bf16_out_cuda_rounds_the_float_out),
    T(rope_cuda_matches_cpu),
    T(bias_cuda_matches_cpu),
    T(swiglu_cuda_matches_cpu),
    T(rope_cpu_strided_matches_packed),
    T(rope_cuda_strided_matches_cpu),
    T(rope_table_matches_computed_angles),
    T(rope_kv_write_cuda_matches_separate),
    T(bias_cpu_strided_matches_packed),
    T(bias_cuda_strided_matches_cpu),
    T(rmsnorm_cpu_strided_matches_packed),
    T(rmsnorm_cuda_strided_matches_cpu),
    T(embed_cuda_matches_cpu_every_type),
    T(kv_write_cuda_matches_cpu),
    T(kv_write_cpu_strided_matches_packed),
    T(kv_write_cuda_strided_matches_cpu),
    T(attention_cuda_decode_matches_cpu),
    T(attention_cuda_prefill_runs_match_cpu),
    T(attention_cuda_matches_cpu_on_model_shapes),
    T(attention_cuda_decode_tensor_cores_match_cpu),
    T(attention_cuda_generic_path_matches_cpu),
    T(attention_cpu_strided_q_matches_packed),
    T(attention_cuda_decode_strided_q_matches_cpu),
    T(attention_cuda_refuses_positions_past_max_ctx),
    T(attention_cuda_bf16_pool_close_to_fp32),
    T(matmul_cuda_matches_cpu),
    T(matmul_cuda_sets_the_callers_cublas_workspace),
    T(matmul_cpu_strided_matches_packed),
    T(matmul_cuda_strided_matches_cpu),
    T(sample_cuda_matches_cpu),
    T(sample_cuda_logit_bias_matches_cpu),
    T(sample_cuda_forced_rows_score_as_cpu),
    T(sample_cuda_masked_rows_match_cpu),
    T(attention_prefill_cuda_matches_cpu),
    T(attention_prefill_cuda_strided_q_matches_cpu),
    T(attention_prefill_cuda_matches_cpu_on_model_shapes),
    T(attention_prefill_cuda_fits_the_devices_shared_memory),
    T(attention_prefill_cuda_refuses_runs_past_max_ctx),
    T(attention_prefill_cuda_refuses_runs_longer_than_max_run),
    T(attention_prefill_sm90_matches_cpu),
    T(attention_prefill_cuda_after_kv_write_close_to_fp32),
    {0},
};

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--list") != 0)
        printf("random shapes from PD_TEST_SEED=%s\n",
               getenv("PD_TEST_SEED") ? getenv("PD_TEST_SEED") : "1");
    return pd_test_main(tests, argc, argv);
}
