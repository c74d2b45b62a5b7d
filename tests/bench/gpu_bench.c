#include "gpu_bench.h"

#include "matmul.h"
#include "quant.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t gb_list_values(const struct pd_cfg_list *l, const uint32_t *def, size_t n_def,
                      uint32_t *out)
{
    size_t n = 0;
    if (l->n == 0) {
        memcpy(out, def, n_def * sizeof *out);
        return n_def;
    }
    for (size_t i = 0; i < l->n; i++) {
        const char *s = l->items[i];
        char *end;
        do {
            unsigned long v = strtoul(s, &end, 10);
            if (end == s || (*end && *end != ',') || v == 0 || v > (1u << 20) || n == GB_MAX_ITEMS)
                return 0;
            out[n++] = (uint32_t)v;
            s = end + 1;
        } while (*end);
    }
    return n;
}

uint32_t gb_max_of(const uint32_t *v, size_t n)
{
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

uint32_t gb_min_of(const uint32_t *v, size_t n)
{
    uint32_t m = UINT32_MAX;
    for (size_t i = 0; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void gb_shuffled_ids(uint32_t *v, uint64_t n, uint64_t seed)
{
    for (uint64_t i = 0; i < n; i++)
        v[i] = (uint32_t)i;
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = splitmix(&seed) % i;
        uint32_t t = v[i - 1];
        v[i - 1] = v[j], v[j] = t;
    }
}

int gb_block_tables(uint64_t n_blocks, uint64_t seed, uint32_t **host, void **dev)
{
    const size_t bytes = n_blocks * sizeof(uint32_t);
    uint32_t *h = malloc(bytes);
    void *d = NULL;
    int rc = -ENOMEM;
    if (!h)
        goto fail;
    gb_shuffled_ids(h, n_blocks, seed);
    if ((rc = pd_cuda_malloc(&d, bytes)) < 0 || (rc = pd_cuda_memcpy(d, h, bytes)) < 0)
        goto fail;
    *host = h, *dev = d;
    return 0;
fail:
    free(h);
    pd_cuda_free(d);
    *host = NULL, *dev = NULL;
    return rc;
}

int gb_random_buffer(void **p, uint64_t n, uint32_t type, uint64_t seed, float amp)
{
    int rc = pd_cuda_malloc(p, n * (type == PD_DT_F32 ? 4 : 2));
    return rc < 0 ? rc : pd_cuda_fill_random(*p, n, type, seed, amp, NULL);
}

double gb_normalized_error(const float *got, const float *ref, size_t n)
{
    double max_ref = 0, max_err = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (isnan(e))
            e = INFINITY;
        max_err = e > max_err ? e : max_err;
        max_ref = fabs(ref[i]) > max_ref ? fabs(ref[i]) : max_ref;
    }
    return max_ref > 0 ? max_err / max_ref : max_err;
}

int gb_open_device(const char *prog, int probe)
{
    char why[256], dev[256];
    if (pd_cuda_probe(why, sizeof why) < 0) {
        fprintf(stderr, "%s: %s\n", prog, why);
        return -1;
    }
    if (pd_cuda_device_info(dev, sizeof dev) < 0) {
        fprintf(stderr, "%s: the device does not answer (see the log line above)\n", prog);
        return -1;
    }
    printf("device: %s\n", dev);
    if (pd_cuda_debug_build())
        printf("WARNING: kernels built with -G (device debug): these timings mean nothing\n");
    return probe ? 1 : 0;
}

int gb_check_error(const char *prog, const char *what, double e, const char *tol)
{
    printf("  (check: %s against the CPU reference, error %.2g)\n", what, e);
    if (e <= strtod(tol, NULL)) /* false for NaN */
        return 0;
    fprintf(stderr, "%s: the kernel disagrees with the CPU reference (normalized error %.3g > %s)\n",
            prog, e, tol);
    return -1;
}

int gb_clock_init(struct gb_clock *clk)
{
    int rc;
    clk->stream = NULL, clk->tm = NULL;
    if ((rc = pd_cuda_timer_new(&clk->tm)) < 0 || (rc = pd_cuda_stream_new(&clk->stream)) < 0)
        gb_clock_done(clk);
    return rc;
}

void gb_clock_done(struct gb_clock *clk)
{
    clk->stream = pd_cuda_stream_free(clk->stream);
    clk->tm = pd_cuda_timer_free(clk->tm);
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int run_trial(gb_pass_fn fn, void *arg, uint32_t n, pd_stream_t s)
{
    int rc;
    for (uint32_t i = 0; i < n; i++)
        if ((rc = fn(arg, i, s)) < 0)
            return rc;
    return 0;
}

int gb_time_passes(gb_pass_fn fn, void *arg, uint32_t n, int trials, int graphs,
                   const struct gb_clock *clk, float *per_pass_ms)
{
    pd_stream_t s = clk->stream;
    struct pd_cuda_timer *tm = clk->tm;
    struct pd_cuda_graph *g = NULL;
    float v[101];
    int rc;

    if (trials < 1 || trials > 101)
        return -EINVAL;
    /* warm-up: module load, first touch, the launcher's cached queries */
    if ((rc = run_trial(fn, arg, n < 3 ? n : 3, s)) < 0)
        return rc;
    if (graphs) {
        if ((rc = pd_cuda_graph_begin(s)) < 0)
            return rc;
        rc = run_trial(fn, arg, n, s);
        int rc_end = pd_cuda_graph_end(s, &g); /* ends the capture whatever happened */
        if ((rc = rc < 0 ? rc : rc_end) < 0 || (rc = pd_cuda_graph_launch(g, s)) < 0)
            goto out;
    }
    for (int t = 0; t < trials; t++) {
        if ((rc = pd_cuda_timer_start(tm, s)) < 0 ||
            (rc = g ? pd_cuda_graph_launch(g, s) : run_trial(fn, arg, n, s)) < 0 ||
            (rc = pd_cuda_timer_stop(tm, s, &v[t])) < 0)
            goto out;
        v[t] /= (float)n;
    }
    qsort(v, (size_t)trials, sizeof *v, cmp_f);
    *per_pass_ms = v[trials / 2];
out:
    pd_cuda_graph_free(g);
    return rc;
}

static int gemm_pass(void *arg, uint32_t i, pd_stream_t s)
{
    (void)i;
    return pd_matmul_cuda(arg, s);
}

int gb_gemm_ref(uint32_t size, int trials, const struct gb_clock *clk, double *tflops,
                float *ms)
{
    const uint64_t n = (uint64_t)size * size;
    void *a = NULL, *b = NULL, *c = NULL;
    int rc;
    if ((rc = gb_random_buffer(&a, n, PD_DT_BF16, 11, 1.0f)) < 0 ||
        (rc = gb_random_buffer(&b, n, PD_DT_BF16, 12, 1.0f)) < 0 ||
        (rc = pd_cuda_malloc(&c, n * 2)) < 0)
        goto out;
    struct pd_matmul_args mm = {.y = c, .x = a, .w = b, .m = size, .n = size, .k = size,
                                .x_type = PD_DT_BF16, .w_type = PD_DT_BF16,
                                .y_type = PD_DT_BF16};
    if ((rc = gb_time_passes(gemm_pass, &mm, 3, trials, 0, clk, ms)) < 0)
        goto out;
    *tflops = 2.0 * size * (double)size * size / (*ms * 1e-3) / 1e12;
out:
    pd_cuda_free(a), pd_cuda_free(b), pd_cuda_free(c);
    return rc;
}

struct copy_arg {
    void *dst;
    const void *src;
    size_t bytes;
};

static int copy_pass(void *arg, uint32_t i, pd_stream_t s)
{
    struct copy_arg *c = arg;
    (void)i;
    return pd_cuda_memcpy_async(c->dst, c->src, c->bytes, s);
}

int gb_copy_ref(uint64_t bytes, int trials, const struct gb_clock *clk, double *gbs)
{
    void *src = NULL, *dst = NULL;
    float ms;
    int rc;
    if ((rc = gb_random_buffer(&src, bytes / 4, PD_DT_F32, 7, 1.0f)) < 0 ||
        (rc = pd_cuda_malloc(&dst, bytes)) < 0)
        goto out;
    struct copy_arg ca = {.dst = dst, .src = src, .bytes = bytes};
    if ((rc = gb_time_passes(copy_pass, &ca, 4, trials, 0, clk, &ms)) < 0)
        goto out;
    *gbs = 2.0 * (double)bytes / (ms * 1e-3) / 1e9;
out:
    pd_cuda_free(src), pd_cuda_free(dst);
    return rc;
}

int gb_copy_line(int64_t copy_mib, int trials, const struct gb_clock *clk, int graphs,
                 const char *what, double *gbs)
{
    int rc = gb_copy_ref((uint64_t)copy_mib << 20, trials, clk, gbs);
    if (rc == 0)
        printf("copy: device to device, %lld MiB: %.1f GB/s (read + written), median of %d; "
               "%s %s\n", (long long)copy_mib, *gbs, trials, what,
               graphs ? "timed as CUDA graph replays" : "timed as plain launches");
    return rc;
}
