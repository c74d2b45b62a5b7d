#include "gpu_bench.h"

#include "matmul.h"
#include "quant.h"

#include <errno.h>
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

int gb_open_device(const char *prog)
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
    return 0;
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

int gb_time_passes(gb_pass_fn fn, void *arg, uint32_t n, int trials, int graphs, pd_stream_t s,
                   struct pd_cuda_timer *tm, float *per_pass_ms)
{
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

int gb_gemm_ref(uint32_t size, int trials, pd_stream_t s, struct pd_cuda_timer *tm,
                double *tflops, float *ms)
{
    const size_t bytes = (size_t)size * size * 2;
    void *a = NULL, *b = NULL, *c = NULL;
    int rc;
    if ((rc = pd_cuda_malloc(&a, bytes)) < 0 || (rc = pd_cuda_malloc(&b, bytes)) < 0 ||
        (rc = pd_cuda_malloc(&c, bytes)) < 0 ||
        (rc = pd_cuda_fill_random(a, (uint64_t)size * size, PD_DT_BF16, 11, 1.0f, NULL)) < 0 ||
        (rc = pd_cuda_fill_random(b, (uint64_t)size * size, PD_DT_BF16, 12, 1.0f, NULL)) < 0)
        goto out;
    struct pd_matmul_args mm = {.y = c, .x = a, .w = b, .m = size, .n = size, .k = size,
                                .x_type = PD_DT_BF16, .w_type = PD_DT_BF16,
                                .y_type = PD_DT_BF16};
    if ((rc = gb_time_passes(gemm_pass, &mm, 3, trials, 0, s, tm, ms)) < 0)
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

int gb_copy_ref(uint64_t bytes, int trials, pd_stream_t s, struct pd_cuda_timer *tm,
                double *gbs)
{
    void *src = NULL, *dst = NULL;
    float ms;
    int rc;
    if ((rc = pd_cuda_malloc(&src, bytes)) < 0 || (rc = pd_cuda_malloc(&dst, bytes)) < 0 ||
        (rc = pd_cuda_fill_random(src, bytes / 4, PD_DT_F32, 7, 1.0f, NULL)) < 0)
        goto out;
    struct copy_arg ca = {.dst = dst, .src = src, .bytes = bytes};
    if ((rc = gb_time_passes(copy_pass, &ca, 4, trials, 0, s, tm, &ms)) < 0)
        goto out;
    *gbs = 2.0 * (double)bytes / (ms * 1e-3) / 1e9;
out:
    pd_cuda_free(src), pd_cuda_free(dst);
    return rc;
}
