/* engine_bench: the CPU engine beside llama.cpp on the same GGUF, same
 * threads, in one run (a timing never decides a test; docs/perf.md).
 *
 *   tests/bench/llama_cpp_build.sh      # llama.cpp into ~/.cache/pdserve (once)
 *   build/tests/bench/engine_bench --threads 2 \
 *       --llama-cpp ~/.cache/pdserve/llama.cpp-0.3.36/bin MODEL.gguf
 *   build/tests/bench/engine_bench --load-format dummy --model-shape smollm2-135m
 *
 * Prefill: tokens/s of whole prompts of --prefill lengths (default 512;
 * llama-bench -p N -n 0). Decode: tokens/s of --steps steps advancing a batch
 * of --batches sequences (default 1, 8, 32) from --ctx-token contexts
 * (llama-batched-bench -npp CTX -ntg STEPS -npl B, its S_TG). Each figure is
 * the median of --repeat runs, ours and theirs interleaved (ours, theirs,
 * ours, ...), with the spread (min-max); the ratio is ours over theirs.
 * Then the memory bandwidth a decode step achieves (the bytes of weights as
 * the engine holds them, and of KV, it must read / its time) beside a
 * memcpy measured in the same run, and the peak RSS before the memcpy.
 */
#include "bench_util.h"
#include "cfg.h"
#include "engine.h"
#include "model.h"
#include "parallel.h"

#include <stdbool.h>

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
    int64_t ctx, steps;
    int64_t threads;
    int cpu_weight_dtype;
    char *llama_cpp;
};

static const struct pd_cfg_opt options[] = {
    PD_CFG_STR("model", struct bench_cfg, model, NULL, 4096, "GGUF model file"),
    PD_CFG_ENUM("load-format", struct bench_cfg, load_format, "auto", pd_model_load_formats,
                "a GGUF file, or dummy weights of --model-shape"),
    PD_CFG_STR("model-shape", struct bench_cfg, model_shape, NULL, 4096, "dummy shape"),
    PD_CFG_INT("seed", struct bench_cfg, seed, "1", 0, INT64_MAX, "dummy seed"),
    PD_CFG_INT("repeat", struct bench_cfg, repeat, "5", 1, 100, "runs per figure (median)"),
    PD_CFG_INT("max-num-batched-tokens", struct bench_cfg, max_batched_tokens, "512", 1, 65536,
               "prefill chunk"),
    PD_CFG_LIST("prefill", struct bench_cfg, prefill, 8, "prompt lengths (default 512)"),
    PD_CFG_LIST("batches", struct bench_cfg, batches, 8, "decode batch sizes (default 1, 8, 32)"),
    PD_CFG_INT("ctx", struct bench_cfg, ctx, "128", 1, 4096, "decode: tokens of context"),
    PD_CFG_INT("steps", struct bench_cfg, steps, "32", 1, 1024, "decode: steps timed"),
    PD_CFG_INT("threads", struct bench_cfg, threads, "0", 0, 16,
               "the engine's threads, and llama.cpp's (0: the CPUs this process may use)"),
    PD_CFG_ENUM("cpu-weight-dtype", struct bench_cfg, cpu_weight_dtype, "stored",
                pd_engine_cpu_weight_dtypes, "the engine's weight matrices"),
    PD_CFG_STR("llama-cpp", struct bench_cfg, llama_cpp, NULL, 4096,
               "llama.cpp's bin directory (tests/bench/llama_cpp_build.sh): compare with it"),
    PD_CFG_END,
};

static uint32_t g_ctx = 128, g_steps = 32;

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

/* seconds per decode step of a batch of b sequences from g_ctx-token contexts */
static double time_decode(struct pd_engine *e, uint32_t b)
{
    const uint32_t CTX = g_ctx, STEPS = g_steps;
    struct slot {
        struct pd_kvseq seq;
        int32_t next; /* the token each step appends */
    };
    uint32_t V = pd_engine_n_vocab(e);
    struct slot *s = calloc(b, sizeof(*s));
    struct pd_batch_item *it = calloc(b, sizeof(*it)); /* (b) the step's items, item i on s[i] */
    int32_t *tok = malloc(CTX * sizeof(int32_t));
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
    for (uint32_t k = 0; k < STEPS; k++)
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
    free(tok);
    return dt;
}

/* Bytes one decode step must read whatever the batch: the weights as the
 * engine holds them (stored, or fp32), the embedding only a row unless the
 * output is tied to it */
static double step_weight_bytes(const struct pd_model *m, bool f32)
{
    const struct pd_tensor *embd = pd_model_tok_embd(m);
    double bytes = 0;
    for (size_t i = 0; i < pd_model_n_tensors(m); i++) {
        const struct pd_tensor *t = pd_model_tensor_at(m, i);
        const double n = (double)t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        const double b = f32 ? 4 * n : (double)t->nbytes;
        if (t == embd && !pd_model_hparams(m)->tied_output)
            bytes += b / t->ne[1];
        else
            bytes += b;
    }
    return bytes;
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

/* ---- llama.cpp, run as its own programs: one figure per run */

/* the number after "key": in the first line of cmd's output that has it; < 0 none */
static double run_for(const char *cmd, const char *key, bool csv_last)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    char line[8192];
    double v = -1;
    while (fgets(line, sizeof(line), f)) {
        if (csv_last) { /* llama-bench -o csv: avg_ts is the second-last field */
            char *last = strrchr(line, ','), *prev;
            if (!last || strncmp(line, "build_commit", 12) == 0)
                continue;
            *last = '\0';
            prev = strrchr(line, ',');
            if (prev && prev[1] == '"')
                v = strtod(prev + 2, NULL);
            continue;
        }
        char *k = strstr(line, key);
        if (k && v < 0)
            v = strtod(k + strlen(key), NULL);
    }
    return pclose(f) == 0 ? v : -1;
}

/* llama.cpp's tokens/s for prefill of n (batch 0) or decode of batch b */
static double llama_tps(const struct bench_cfg *c, const char *model, int threads, uint32_t n,
                        uint32_t b)
{
    char cmd[8192];
    if (!b) {
        snprintf(cmd, sizeof(cmd), "'%s/llama-bench' -m '%s' -t %d -p %u -n 0 -r 1 -o csv "
                 "2>/dev/null", c->llama_cpp, model, threads, n);
        return run_for(cmd, NULL, true);
    }
    snprintf(cmd, sizeof(cmd), "'%s/llama-batched-bench' -m '%s' -t %d -c %u -b 2048 -ub 512 "
             "-npp %u -ntg %u -npl %u --output-format jsonl 2>/dev/null", c->llama_cpp, model,
             threads, (g_ctx + g_steps) * b + 16, g_ctx, g_steps, b);
    return run_for(cmd, "\"speed_tg\": ", false);
}

struct figure {
    double ours[100], theirs[100];
};

static double med(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
    return v[n / 2];
}

static void print_row(const char *work, struct figure *f, int n, bool llama)
{
    char a[64], b[64] = "";
    const double mo = med(f->ours, n);
    snprintf(a, sizeof(a), "%8.1f (%.1f-%.1f)", mo, f->ours[0], f->ours[n - 1]);
    if (llama) {
        const double mt = med(f->theirs, n);
        snprintf(b, sizeof(b), "%8.1f (%.1f-%.1f)", mt, f->theirs[0], f->theirs[n - 1]);
        printf("%-22s %-26s %-26s %6.2fx\n", work, a, b, mo / mt);
    } else {
        printf("%-22s %-26s\n", work, a);
    }
    fflush(stdout);
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
    const char *path = a.n_positional ? a.positional[0] : c.model;
    struct pd_model_params mp = {.path = path,
                                 .load_format = (enum pd_load_format)c.load_format,
                                 .shape = c.model_shape, .seed = (uint64_t)c.seed};
    struct pd_model *m = NULL;
    if (pd_model_load(&mp, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "engine_bench: %s\n", err);
        return 1;
    }
    const bool llama = c.llama_cpp != NULL;
    if (llama && (mp.load_format == PD_LOAD_DUMMY || !path)) {
        fprintf(stderr, "engine_bench: --llama-cpp needs a GGUF file\n");
        return 2;
    }
    g_ctx = (uint32_t)c.ctx, g_steps = (uint32_t)c.steps;
    const int threads = c.threads ? (int)c.threads : (int)pd_parallel_count(PD_PARALLEL_MAX);
    struct pd_engine_params ep = {.model = m, .kv_cache_bytes = 1ull << 30,
                                  .max_batched_tokens = (uint32_t)c.max_batched_tokens,
                                  .max_model_len = 4096 < pd_model_hparams(m)->n_ctx_train
                                                       ? 4096 : pd_model_hparams(m)->n_ctx_train,
                                  .cpu_weights = (enum pd_cpu_weights)c.cpu_weight_dtype,
                                  .cpu_threads = (uint32_t)threads};
    struct pd_engine *e = NULL;
    if (pd_engine_new(&ep, &e, err, sizeof(err)) < 0) {
        fprintf(stderr, "engine_bench: %s\n", err);
        return 1;
    }
    printf("%s\n", pd_engine_describe(e));
    const int repeat = (int)c.repeat;
    printf("model %s, %d threads%s, medians of %d%s (min-max), prefill chunks of %lld, decode "
           "from %u-token contexts, %u steps\n", pd_model_name(m), threads,
           llama ? " each" : "", repeat, llama ? " interleaved" : "",
           (long long)c.max_batched_tokens, g_ctx, g_steps);
    printf("%-22s %-26s %-26s %7s\n", "work (tok/s)", "pdserve", llama ? "llama.cpp" : "",
           llama ? "ratio" : "");
    static const uint32_t plen[] = {512}, batch[] = {1, 8, 32};
    struct figure f;
    char work[64];
    for (size_t i = 0; i < 8; i++) {
        uint32_t n = list_item(&c.prefill, i, plen, 1);
        if (n == 0 || n > pd_engine_max_model_len(e))
            continue;
        for (int r = 0; r < repeat; r++) {
            f.ours[r] = n / time_prefill(e, n);
            if (llama && (f.theirs[r] = llama_tps(&c, path, threads, n, 0)) <= 0) {
                fprintf(stderr, "engine_bench: llama-bench failed\n");
                return 1;
            }
        }
        snprintf(work, sizeof(work), "prefill %u", n);
        print_row(work, &f, repeat, llama);
    }
    const struct pd_hparams *hp = pd_model_hparams(m);
    char bw[8][128];
    int n_bw = 0;
    const double wbytes = step_weight_bytes(m, c.cpu_weight_dtype == PD_CPU_W_F32);
    double step_s[8];
    uint32_t bs[8];
    for (size_t i = 0; i < 8; i++) {
        uint32_t b = list_item(&c.batches, i, batch, 3);
        if (b == 0)
            continue;
        for (int r = 0; r < repeat; r++) {
            f.ours[r] = b / time_decode(e, b);
            if (llama && (f.theirs[r] = llama_tps(&c, path, threads, 0, b)) <= 0) {
                fprintf(stderr, "engine_bench: llama-batched-bench failed\n");
                return 1;
            }
        }
        snprintf(work, sizeof(work), "decode batch %u", b);
        print_row(work, &f, repeat, llama);
        step_s[n_bw] = b / med(f.ours, repeat);
        bs[n_bw++] = b;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const double rss = ru.ru_maxrss / 1024.0;
    const double mc = memcpy_bw(repeat);
    printf("\nmemory bandwidth (bytes a decode step reads / its time)\n");
    printf("memcpy (512 MiB, 1 thread) %8.2f GB/s\n", mc / 1e9);
    for (int i = 0; i < n_bw; i++) {
        const double bytes = wbytes + bs[i] * (g_ctx + g_steps / 2.0) * kv_bytes_per_token(hp);
        snprintf(bw[i], sizeof(bw[0]), "decode batch %2u        %8.2f GB/s   %5.2f of memcpy "
                 "(%.1f MiB a step)", bs[i], bytes / step_s[i] / 1e9, bytes / step_s[i] / mc,
                 bytes / 1048576.0);
        printf("%s\n", bw[i]);
    }
    printf("peak RSS before the memcpy %.1f MiB (weights as stored %.1f MiB, as the engine holds "
           "them %.1f MiB)\n", rss, pd_model_weight_bytes(m) / 1048576.0, wbytes / 1048576.0);
    pd_engine_free(e);
    pd_model_free(m);
    pd_cfg_done(options, &c);
    return 0;
}
