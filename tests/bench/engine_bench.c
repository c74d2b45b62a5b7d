/* engine_bench: CPU engine throughput, single-threaded beside all cores in one
 * run, so the table shows what the threads buy (a timing never decides a test).
 *
 *   build/tests/bench/engine_bench MODEL.gguf
 *   build/tests/bench/engine_bench --load-format dummy --model-shape smollm2-135m
 *
 * Prefill: tokens/s for whole prompts of --prefill lengths (default 128, 512,
 * 2048; chunks of --max-num-batched-tokens). Decode: tokens/s of steps
 * advancing a batch of --batches sequences (default 1, 8, 32), each with a
 * 128-token context, and the memory bandwidth a decode step achieves (bytes of
 * weights and KV it must read / its time) beside a memcpy measured in the same
 * run. Peak RSS last. Medians of --repeat runs.
 */
#include "bench_util.h"
#include "cfg.h"
#include "engine.h"
#include "model.h"

#include <cblas.h>
#include <unistd.h>
#include <stdio.h>
#include <sys/resource.h>
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
    struct pd_cfg_list prefill;
    struct pd_cfg_list batches;
};

static const struct pd_cfg_opt options[] = {
    PD_CFG_STR("model", struct bench_cfg, model, NULL, 4096, "GGUF model file"),
    PD_CFG_ENUM("load-format", struct bench_cfg, load_format, "auto", pd_model_load_formats,
                "a GGUF file, or dummy weights of --model-shape"),
    PD_CFG_STR("model-shape", struct bench_cfg, model_shape, NULL, 4096, "dummy shape"),
    PD_CFG_INT("seed", struct bench_cfg, seed, "1", 0, INT64_MAX, "dummy seed"),
    PD_CFG_INT("repeat", struct bench_cfg, repeat, "3", 1, 100, "runs per figure (median)"),
    PD_CFG_INT("max-num-batched-tokens", struct bench_cfg, max_batched_tokens, "512", 1, 65536,
               "prefill chunk"),
    PD_CFG_LIST("prefill", struct bench_cfg, prefill, 8, "prompt lengths (default 128, 512, 2048)"),
    PD_CFG_LIST("batches", struct bench_cfg, batches, 8, "decode batch sizes (default 1, 8, 32)"),
    PD_CFG_END,
};

/* GEMMs (OpenBLAS) are where the engine's threads are */
static void set_threads(int n) { openblas_set_num_threads(n); }

/* seconds for one whole-prompt prefill of n tokens */
static double time_prefill(struct pd_engine *e, uint32_t n)
{
    uint32_t V = pd_engine_n_vocab(e);
    int32_t *tok = malloc(n * sizeof(*tok));
    float *logits = malloc(V * sizeof(float));
    struct pd_kvseq s;
    char err[256];
    bench_fill_tokens(tok, n, V, 1);
    pd_kvseq_init(&s);
    double t0 = bench_now();
    if (pd_engine_prefill(e, &s, tok, n, logits, err, sizeof(err)) < 0) {
        fprintf(stderr, "engine_bench: %s\n", err);
        exit(1);
    }
    double dt = bench_now() - t0;
    pd_engine_seq_release(e, &s);
    free(tok);
    free(logits);
    return dt;
}

/* seconds per decode step of a batch of b sequences with 128-token contexts */
static double time_decode(struct pd_engine *e, uint32_t b)
{
    enum { CTX = 128, STEPS = 8 };
    struct slot {
        struct pd_kvseq seq;
        int32_t next; /* the token each step appends */
    };
    uint32_t V = pd_engine_n_vocab(e);
    struct slot *s = calloc(b, sizeof(*s));
    struct pd_batch_item *it = calloc(b, sizeof(*it)); /* (b) the step's items, item i on s[i] */
    int32_t tok[CTX];
    float *logits = malloc((size_t)b * V * sizeof(float));
    char err[256];
    for (uint32_t i = 0; i < b; i++) {
        bench_fill_tokens(tok, CTX, V, i);
        pd_kvseq_init(&s[i].seq);
        if (pd_engine_prefill(e, &s[i].seq, tok, CTX, NULL, err, sizeof(err)) < 0) {
            fprintf(stderr, "engine_bench: %s\n", err);
            exit(1);
        }
        it[i] = (struct pd_batch_item){.seq = &s[i].seq, .tokens = &s[i].next, .n_tokens = 1,
                                       .n_logits = 1, .logits = logits + (size_t)i * V};
    }
    double t0 = bench_now();
    for (int k = 0; k < STEPS; k++)
        if (pd_engine_step(e, it, b, err, sizeof(err)) < 0) {
            fprintf(stderr, "engine_bench: %s\n", err);
            exit(1);
        }
    double dt = (bench_now() - t0) / STEPS;
    for (uint32_t i = 0; i < b; i++)
        pd_engine_seq_release(e, &s[i].seq);
    free(s);
    free(it);
    free(logits);
    return dt;
}

/* Bytes one decode step must read per sequence-independent part (the fp32
 * weights the engine multiplies with; the embedding only a row) and per
 * context token (its K and V in every layer). */
static double step_weight_bytes(const struct pd_hparams *hp)
{
    double e = hp->n_embd, q = (double)hp->n_head * hp->head_dim;
    double kv = (double)hp->n_head_kv * hp->head_dim, f = hp->n_ff;
    double layer = 2 * e + e * q + 2 * e * kv + q * e + 3 * e * f;
    return 4.0 * (hp->n_layer * layer + (double)hp->n_vocab * e + e);
}

static double kv_bytes_per_token(const struct pd_hparams *hp)
{
    return 4.0 * hp->n_layer * 2.0 * hp->n_head_kv * hp->head_dim;
}

/* memcpy bandwidth (bytes copied per second) over a buffer far beyond the LLC */
static double memcpy_bw(int repeat)
{
    size_t n = 512u << 20;
    char *a = malloc(n), *b = malloc(n);
    double v[100];
    memset(a, 1, n);
    memset(b, 2, n);
    for (int r = 0; r < repeat; r++) {
        double t0 = bench_now();
        memcpy(b, a, n);
        v[r] = (double)n / (bench_now() - t0);
        a[r] ^= b[n - 1 - r]; /* keep the copy observable */
    }
    free(a);
    free(b);
    qsort(v, (size_t)repeat, sizeof(double), bench_cmp_double);
    return v[repeat / 2];
}

static uint32_t list_item(const struct pd_cfg_list *l, size_t i, const uint32_t *def, size_t n_def)
{
    if (l->n == 0)
        return i < n_def ? def[i] : 0;
    return i < l->n ? (uint32_t)strtoul(l->items[i], NULL, 10) : 0;
}

static double median_of(double (*fn)(struct pd_engine *, uint32_t), struct pd_engine *e,
                        uint32_t arg, int repeat)
{
    double v[100];
    for (int r = 0; r < repeat; r++)
        v[r] = fn(e, arg);
    qsort(v, (size_t)repeat, sizeof(double), bench_cmp_double);
    return v[repeat / 2];
}

/* median_of on one thread (*t1) and on nmax threads (*tn) */
static void median_1_and_n(double (*fn)(struct pd_engine *, uint32_t), struct pd_engine *e,
                           uint32_t arg, int repeat, int nmax, double *t1, double *tn)
{
    set_threads(1);
    *t1 = median_of(fn, e, arg, repeat);
    set_threads(nmax);
    *tn = median_of(fn, e, arg, repeat);
}

int main(int argc, char **argv)
{
    struct bench_cfg c;
    struct pd_cfg_args a;
    char err[512];
    int rc = pd_cfg_parse(options, &c, argc, argv, &a, err, sizeof(err));
    if (rc < 0 || rc == PD_CFG_HELP || rc == PD_CFG_PRINT || rc == PD_CFG_VERSION) {
        if (rc < 0)
            fprintf(stderr, "engine_bench: %s\n", err);
        else if (rc == PD_CFG_VERSION)
            pd_cfg_version("engine_bench", stdout);
        else if (rc == PD_CFG_PRINT)
            pd_cfg_print(options, &c, stdout);
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
    static const uint32_t plen[] = {128, 512, 2048}, batch[] = {1, 8, 32};
    for (size_t i = 0; i < 8; i++) {
        uint32_t n = list_item(&c.prefill, i, plen, 3);
        if (n == 0 || n > pd_engine_max_model_len(e))
            continue;
        double t1, tn;
        median_1_and_n(time_prefill, e, n, repeat, nmax, &t1, &tn);
        printf("prefill %5u tok/s     %14.1f %14.1f %7.2fx\n", n, n / t1, n / tn, t1 / tn);
    }
    const struct pd_hparams *hp = pd_model_hparams(m);
    double mc = memcpy_bw(repeat);
    char bw[8][96];
    int n_bw = 0;
    for (size_t i = 0; i < 8; i++) {
        uint32_t b = list_item(&c.batches, i, batch, 3);
        if (b == 0)
            continue;
        double t1, tn;
        median_1_and_n(time_decode, e, b, repeat, nmax, &t1, &tn);
        printf("decode batch %2u tok/s  %14.1f %14.1f %7.2fx\n", b, b / t1, b / tn, t1 / tn);
        double bytes = step_weight_bytes(hp) + b * 129.0 * kv_bytes_per_token(hp);
        snprintf(bw[n_bw++], sizeof(bw[0]), "decode batch %2u        %8.2f GB/s   %5.2f of memcpy",
                 b, bytes / tn / 1e9, bytes / tn / mc);
    }
    printf("\nmemory bandwidth (bytes a decode step reads / its time, all threads)\n");
    printf("memcpy (512 MiB, 1 thread) %8.2f GB/s\n", mc / 1e9);
    for (int i = 0; i < n_bw; i++)
        printf("%s\n", bw[i]);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS %.1f MiB (weights as loaded %.1f MiB, fp32 as computed %.1f MiB)\n",
           ru.ru_maxrss / 1024.0, pd_model_weight_bytes(m) / 1048576.0,
           step_weight_bytes(hp) / 1048576.0);
    pd_engine_free(e);
    pd_model_free(m);
    pd_cfg_done(options, &c);
    return 0;
}
