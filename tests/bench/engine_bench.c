/* engine_bench: CPU engine throughput, single-threaded beside all cores in one
 * run, so the table shows what the threads buy (a timing never decides a test).
 *
 *   build/tests/bench/engine_bench MODEL.gguf
 *   build/tests/bench/engine_bench --load-format dummy --model-shape smollm2-135m
 *
 * Prefill: tokens/s for whole prompts of 128, 512 and 2048 tokens (chunks of
 * --max-num-batched-tokens). Decode: tokens/s of steps advancing a batch of 1,
 * 8 and 32 sequences, each with a 128-token context. Medians of --repeat runs.
 */
#include "cfg.h"
#include "engine.h"
#include "model.h"

#include <cblas.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bench_cfg {
    char *model;
    int load_format;
    char *model_shape;
    int64_t seed;
    int64_t repeat;
    int64_t max_batched_tokens;
};

static const char *const load_formats[] = {"auto", "gguf", "dummy", NULL};

static const struct pd_cfg_opt options[] = {
    PD_CFG_STR("model", struct bench_cfg, model, NULL, 4096, "GGUF model file"),
    PD_CFG_ENUM("load-format", struct bench_cfg, load_format, "auto", load_formats,
                "a GGUF file, or dummy weights of --model-shape"),
    PD_CFG_STR("model-shape", struct bench_cfg, model_shape, NULL, 4096, "dummy shape"),
    PD_CFG_INT("seed", struct bench_cfg, seed, "1", 0, INT64_MAX, "dummy seed"),
    PD_CFG_INT("repeat", struct bench_cfg, repeat, "3", 1, 100, "runs per figure (median)"),
    PD_CFG_INT("max-num-batched-tokens", struct bench_cfg, max_batched_tokens, "512", 1, 65536,
               "prefill chunk"),
    PD_CFG_END,
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* GEMMs (OpenBLAS) are where the engine's threads are */
static void set_threads(int n) { openblas_set_num_threads(n); }

static void fill(int32_t *t, uint32_t n, uint32_t vocab, uint32_t salt)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)((i * 2654435761u + salt * 97u) % vocab);
}

/* seconds for one whole-prompt prefill of n tokens */
static double time_prefill(struct pd_engine *e, uint32_t n)
{
    uint32_t V = pd_engine_n_vocab(e);
    int32_t *tok = malloc(n * sizeof(*tok));
    float *logits = malloc(V * sizeof(float));
    struct pd_kvseq s;
    char err[256];
    fill(tok, n, V, 1);
    pd_kvseq_init(&s);
    double t0 = now();
    if (pd_engine_prefill(e, &s, tok, n, logits, err, sizeof(err)) < 0) {
        fprintf(stderr, "engine_bench: %s\n", err);
        exit(1);
    }
    double dt = now() - t0;
    pd_engine_seq_release(e, &s);
    free(tok);
    free(logits);
    return dt;
}

/* seconds per decode step of a batch of b sequences with 128-token contexts */
static double time_decode(struct pd_engine *e, uint32_t b)
{
    enum { CTX = 128, STEPS = 8 };
    uint32_t V = pd_engine_n_vocab(e);
    struct pd_kvseq *s = calloc(b, sizeof(*s));
    struct pd_batch_item *it = calloc(b, sizeof(*it));
    int32_t *next = calloc(b, sizeof(*next)), tok[CTX];
    float *logits = malloc((size_t)b * V * sizeof(float));
    char err[256];
    for (uint32_t i = 0; i < b; i++) {
        fill(tok, CTX, V, i);
        pd_kvseq_init(&s[i]);
        if (pd_engine_prefill(e, &s[i], tok, CTX, NULL, err, sizeof(err)) < 0) {
            fprintf(stderr, "engine_bench: %s\n", err);
            exit(1);
        }
        it[i] = (struct pd_batch_item){.seq = &s[i], .tokens = &next[i], .n_tokens = 1,
                                       .n_logits = 1, .logits = logits + (size_t)i * V};
    }
    double t0 = now();
    for (int k = 0; k < STEPS; k++)
        if (pd_engine_step(e, it, b, err, sizeof(err)) < 0) {
            fprintf(stderr, "engine_bench: %s\n", err);
            exit(1);
        }
    double dt = (now() - t0) / STEPS;
    for (uint32_t i = 0; i < b; i++)
        pd_engine_seq_release(e, &s[i]);
    free(s);
    free(it);
    free(next);
    free(logits);
    return dt;
}

static double median_of(double (*fn)(struct pd_engine *, uint32_t), struct pd_engine *e,
                        uint32_t arg, int repeat)
{
    double v[100];
    for (int r = 0; r < repeat; r++)
        v[r] = fn(e, arg);
    qsort(v, (size_t)repeat, sizeof(double), cmp_d);
    return v[repeat / 2];
}

int main(int argc, char **argv)
{
    struct bench_cfg c;
    struct pd_cfg_args a;
    char err[512];
    int rc = pd_cfg_parse(options, &c, argc, argv, &a, err, sizeof(err));
    if (rc < 0 || rc == PD_CFG_HELP) {
        if (rc < 0)
            fprintf(stderr, "engine_bench: %s\n", err);
        else
            pd_cfg_help(options, "engine_bench", "[OPTIONS] [MODEL.gguf]", stdout);
        pd_cfg_done(options, &c);
        return rc < 0 ? 2 : 0;
    }
    struct pd_model_params mp = {.path = a.n_positional ? a.positional[0] : c.model,
                                 .load_format = (enum pd_load_format)c.load_format,
                                 .shape = c.model_shape, .seed = (uint64_t)c.seed};
    struct pd_model *m = NULL;
    if (pd_model_load(&mp, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "engine_bench: %s\n", err);
        return 1;
    }
    struct pd_engine_params ep = {.model = m, .kv_cache_bytes = 3ull << 30,
                                  .max_batched_tokens = (uint32_t)c.max_batched_tokens,
                                  .max_model_len = 4096 < pd_model_hparams(m)->n_ctx_train
                                                       ? 4096 : pd_model_hparams(m)->n_ctx_train};
    struct pd_engine *e = NULL;
    if (pd_engine_new(&ep, &e, err, sizeof(err)) < 0) {
        fprintf(stderr, "engine_bench: %s\n", err);
        return 1;
    }
    int nmax = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int repeat = (int)c.repeat;
    printf("model %s, %d cores, medians of %d, prefill chunks of %lld tokens\n",
           pd_model_name(m), nmax, repeat, (long long)c.max_batched_tokens);
    printf("%-22s %14s %14s %8s\n", "work", "1 thread", "all threads", "ratio");
    static const uint32_t plen[] = {128, 512, 2048};
    for (size_t i = 0; i < 3; i++) {
        if (plen[i] > pd_engine_max_model_len(e))
            continue;
        set_threads(1);
        double t1 = median_of(time_prefill, e, plen[i], repeat);
        set_threads(nmax);
        double tn = median_of(time_prefill, e, plen[i], repeat);
        printf("prefill %5u tok/s     %14.1f %14.1f %7.2fx\n", plen[i], plen[i] / t1,
               plen[i] / tn, t1 / tn);
    }
    static const uint32_t batch[] = {1, 8, 32};
    for (size_t i = 0; i < 3; i++) {
        set_threads(1);
        double t1 = median_of(time_decode, e, batch[i], repeat);
        set_threads(nmax);
        double tn = median_of(time_decode, e, batch[i], repeat);
        printf("decode batch %2u tok/s  %14.1f %14.1f %7.2fx\n", batch[i], batch[i] / t1,
               batch[i] / tn, t1 / tn);
    }
    pd_engine_free(e);
    pd_model_free(m);
    pd_cfg_done(options, &c);
    return 0;
}
