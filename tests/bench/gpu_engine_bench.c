/* gpu_engine_bench: the engine on the GPU end to end (pd_engine_prefill and
 * pd_engine_step as the daemons call them: host index arrays, copies, logits
 * down), beside the two references the work is bound by, measured in the same
 * run (tests/bench/gpu_bench.c):
 *
 *   prefill   tokens/s of whole prompts of --prefill lengths (default 2048;
 *             chunks of --max-num-batched-tokens), and the model TFLOP/s that
 *             makes (2 x params x tokens for the matrices, 2 x 2 x n^2 / 2 x
 *             heads x head_dim per layer for causal attention), beside a cuBLAS
 *             bf16 GEMM's TFLOP/s: "vs_gemm"
 *   decode    tokens/s of steps advancing --batches sequences (default 1, 32,
 *             128) with --context tokens each, sampling in the step (greedy) as
 *             the daemons do, and the bytes a step must read
 *             (the weights as stored on the device, once; every sequence's K/V)
 *             per second, beside a device-to-device copy's GB/s: "vs_copy"
 *   mixed     ms per step of a --mixed-chunk prompt chunk beside each batch's
 *             decode tokens (the scheduler's mixed steps), the decode tokens
 *             through the decode kernel beside the same steps with them as
 *             prefill-kernel runs (PDSERVE_MIXED_ATTENTION=prefill, the way
 *             before): "vs_prefill_runs" (> 1: faster); --mixed-chunk 0: none
 *   --kernel-times  then each decode batch and mixed step again with the
 *             engine's kernel timer (engine.h: plain launches, events after
 *             each kernel): ms per step by kernel kind and its share
 *
 *   gpu_engine_bench                               # dummy Llama-3-8B, bf16 weights and KV
 *   gpu_engine_bench --model-shape '{"preset":"llama3-8b","n_layer":8}'
 *
 * Dummy weights are generated on the host (bf16), dequantized and uploaded:
 * the full Llama-3-8B shape takes about 16 GB of device memory and half a
 * minute to load. Medians of --trials. Without a GPU: the reason, exit 1.
 */
#include "bench_util.h"
#include "cfg.h"
#include "engine.h"
#include "gpu_bench.h"
#include "model.h"
#include "quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bench_cfg {
    char *model_shape;
    int64_t seed, trials, steps, context, max_batched_tokens, gemm_size, copy_mib, block_size;
    int64_t mixed_chunk, max_model_len;
    bool kernel_times;
    uint64_t kv_cache_memory;
    int kv_cache_dtype, gpu_weight_dtype;
    struct pd_cfg_list prefill, batches;
};

static const struct pd_cfg_opt options[] = {
    PD_CFG_STR("model-shape", struct bench_cfg, model_shape, "llama3-8b", 4096,
               "dummy weights: preset name or JSON shape"),
    PD_CFG_INT("seed", struct bench_cfg, seed, "1", 0, INT64_MAX, "dummy weights: seed"),
    PD_CFG_INT("trials", struct bench_cfg, trials, "3", 1, 100, "runs per figure (median)"),
    PD_CFG_INT("steps", struct bench_cfg, steps, "16", 1, 10000, "decode steps per run"),
    PD_CFG_INT("context", struct bench_cfg, context, "512", 1, 1 << 20,
               "decode: tokens each sequence holds before the timed steps"),
    PD_CFG_INT("max-num-batched-tokens", struct bench_cfg, max_batched_tokens, "2048", 1, 1 << 20,
               "prefill chunk"),
    PD_CFG_INT("mixed-chunk", struct bench_cfg, mixed_chunk, "512", 0, 1 << 20,
               "mixed steps: the prompt chunk beside the decode tokens (0: no mixed steps)"),
    PD_CFG_INT("max-model-len", struct bench_cfg, max_model_len, "0", 0, 1 << 24,
               "the engine's --max-model-len, which decode attention plans its splits for "
               "(0: the longest the run needs; a server's is the model's, above its contexts)"),
    PD_CFG_BOOL("kernel-times", struct bench_cfg, kernel_times, "false",
                "each decode batch and mixed step split by kernel (plain launches)"),
    PD_CFG_INT("gemm-size", struct bench_cfg, gemm_size, "8192", 64, 32768,
               "m = n = k of the reference bf16 GEMM"),
    PD_CFG_INT("copy-mib", struct bench_cfg, copy_mib, "1024", 1, 65536,
               "size of the reference device-to-device copy"),
    PD_CFG_SIZE("kv-cache-memory", struct bench_cfg, kv_cache_memory, "0", 0, INT64_C(1) << 40,
                "the engine's KV pool (0: what the largest batch and prompt need)"),
    PD_ENGINE_KV_CFG(struct bench_cfg),
    PD_CFG_ENUM("gpu-weight-dtype", struct bench_cfg, gpu_weight_dtype, "bf16",
                pd_engine_gpu_weight_dtypes, "the weight matrices on the device"),
    PD_CFG_LIST("prefill", struct bench_cfg, prefill, 8, "prompt lengths (default 2048)"),
    PD_CFG_LIST("batches", struct bench_cfg, batches, 8, "decode batch sizes (default 1, 32, 128)"),
    PD_CFG_END,
};

/* seconds for one whole-prompt prefill of n tokens; < 0 on failure */
static double time_prefill(struct pd_engine *e, uint32_t n)
{
    const uint32_t V = pd_engine_n_vocab(e);
    int32_t *tok = malloc(n * sizeof(*tok));
    float *logits = malloc(V * sizeof(float));
    struct pd_kvseq s;
    char err[256];
    double dt = -1;
    pd_kvseq_init(&s);
    if (tok && logits) {
        bench_fill_tokens(tok, n, V, 1);
        double t0 = bench_now();
        if (pd_engine_prefill(e, &s, tok, n, logits, err, sizeof(err)) == 0)
            dt = bench_now() - t0;
        else
            fprintf(stderr, "gpu_engine_bench: prefill of %u: %s\n", n, err);
    }
    pd_engine_seq_release(e, &s);
    free(tok), free(logits);
    return dt;
}

#define WARM_STEPS 2

/* the kernel timer's figures since it went on, as one line; the timer off */
static void breakdown(struct pd_engine *e, const char *what)
{
    double ms[PD_K_KINDS], total = 0;
    uint32_t steps;
    pd_engine_kernel_times(e, ms, &steps);
    pd_engine_kernel_timer(e, false);
    if (!steps)
        return;
    for (int k = 0; k < PD_K_KINDS; k++)
        total += ms[k];
    printf("%-24s %8.3f ms/step:", what, total / steps);
    for (int k = 0; k < PD_K_KINDS; k++)
        if (ms[k] > 0)
            printf(" %s %.3f (%.0f%%)", pd_kernel_kind_name((enum pd_kernel_kind)k), ms[k] / steps,
                   100 * ms[k] / total);
    printf("\n");
}

/* n decode steps of the b items, each feeding back the tokens it sampled */
static int decode_steps(struct pd_engine *e, struct pd_batch_item *it,
                        const struct pd_sample_result *res, int32_t *next, uint32_t b, uint32_t n)
{
    char err[256];
    for (uint32_t k = 0; k < n; k++) {
        if (pd_engine_step(e, it, b, err, sizeof(err)) < 0) {
            fprintf(stderr, "gpu_engine_bench: a decode step of %u: %s\n", b, err);
            return -1;
        }
        for (uint32_t i = 0; i < b; i++) {
            next[i] = res[i].token;
            it[i].n_history++;
        }
    }
    return 0;
}

/* seconds per decode step of b sequences holding ctx tokens each, each
 * step's tokens sampled (greedy) in the step as the daemons do; < 0 on
 * failure */
static double time_decode(struct pd_engine *e, uint32_t b, uint32_t ctx, uint32_t steps, bool kt)
{
    const uint32_t V = pd_engine_n_vocab(e);
    const struct pd_sampling greedy = PD_SAMPLING_DEFAULT;
    struct pd_kvseq *s = calloc(b, sizeof(*s));
    struct pd_batch_item *it = calloc(b, sizeof(*it));
    struct pd_sample_result *res = calloc(b, sizeof(*res));
    int32_t *next = calloc(b, sizeof(*next));
    int32_t *tok = malloc((ctx + steps + WARM_STEPS) * sizeof(*tok));
    char err[256];
    double dt = -1;
    uint32_t made = 0;
    if (!s || !it || !res || !next || !tok)
        goto out;
    for (; made < b; made++) {
        bench_fill_tokens(tok, ctx, V, made);
        pd_kvseq_init(&s[made]);
        if (pd_engine_prefill(e, &s[made], tok, ctx, NULL, err, sizeof(err)) < 0) {
            fprintf(stderr, "gpu_engine_bench: a %u-token context: %s\n", ctx, err);
            goto out;
        }
        /* the history's contents matter to penalties only (none here) */
        it[made] = (struct pd_batch_item){.seq = &s[made], .tokens = &next[made], .n_tokens = 1,
                                          .n_logits = 1, .sampling = &greedy, .history = tok,
                                          .n_history = ctx, .n_prompt = ctx, .result = &res[made]};
    }
    /* untimed: the first step of a batch size runs plain, the second is
     * captured as a CUDA graph; the timed ones replay it */
    if (decode_steps(e, it, res, next, b, WARM_STEPS) < 0)
        goto out;
    if (kt && pd_engine_kernel_timer(e, true) < 0)
        goto out;
    double t0 = bench_now();
    if (decode_steps(e, it, res, next, b, steps) < 0)
        goto out;
    dt = (bench_now() - t0) / steps;
    if (kt) {
        char what[64];
        snprintf(what, sizeof(what), "decode %u", b);
        breakdown(e, what);
    }
out:
    for (uint32_t i = 0; i < made; i++)
        pd_engine_seq_release(e, &s[i]);
    free(s), free(it), free(res), free(next), free(tok);
    return dt;
}

/* Mixed steps: a chunk of a fresh prompt (its first `chunk` tokens, released
 * after each step) beside b decode tokens at ctx, every row sampled in the
 * step. The contexts are made once; then `trials` runs of `steps` timed steps
 * each way, alternating (the contexts grow alike): sec[0] the decode tokens
 * through the decode kernel, sec[1] as prefill-kernel runs. 0, or -1. */
static int time_mixed(struct pd_engine *e, uint32_t b, uint32_t ctx, uint32_t chunk, uint32_t steps,
                      int trials, bool kt, double *sec[2])
{
    const uint32_t V = pd_engine_n_vocab(e);
    const struct pd_sampling greedy = PD_SAMPLING_DEFAULT;
    struct pd_kvseq *s = calloc(b + 1, sizeof(*s));
    struct pd_batch_item *it = calloc(b + 1, sizeof(*it));
    struct pd_sample_result *res = calloc(b + 1, sizeof(*res));
    int32_t *next = calloc(b + 1, sizeof(*next));
    const uint32_t n_tok = (ctx > chunk ? ctx : chunk) + 2 * trials * (steps + WARM_STEPS);
    int32_t *tok = malloc(n_tok * sizeof(*tok));
    char err[256];
    int rc = -1;
    uint32_t made = 0;
    if (!s || !it || !res || !next || !tok)
        goto out;
    bench_fill_tokens(tok, n_tok, V, 7);
    for (; made < b; made++) { /* the decode items after the chunk's */
        pd_kvseq_init(&s[made + 1]);
        if (pd_engine_prefill(e, &s[made + 1], tok, ctx, NULL, err, sizeof(err)) < 0) {
            fprintf(stderr, "gpu_engine_bench: a %u-token context: %s\n", ctx, err);
            goto out;
        }
        it[made + 1] = (struct pd_batch_item){
            .seq = &s[made + 1], .tokens = &next[made + 1], .n_tokens = 1, .n_logits = 1,
            .sampling = &greedy, .history = tok, .n_history = ctx, .n_prompt = ctx,
            .result = &res[made + 1]};
    }
    pd_kvseq_init(&s[0]);
    it[0] = (struct pd_batch_item){.seq = &s[0], .tokens = tok, .n_tokens = chunk, .n_logits = 1,
                                   .sampling = &greedy, .history = tok, .n_history = chunk,
                                   .n_prompt = chunk, .result = &res[0]};
    for (int r = 0; r < 2 * trials; r++) {
        if (r % 2) /* side by side: the decode kernel's way, then the way before */
            setenv("PDSERVE_MIXED_ATTENTION", "prefill", 1);
        double t0 = 0;
        for (uint32_t k = 0; k < WARM_STEPS + steps; k++) {
            if (k == WARM_STEPS && kt && pd_engine_kernel_timer(e, true) < 0)
                goto out;
            if (k == WARM_STEPS)
                t0 = bench_now();
            int sr = pd_engine_step(e, it, b + 1, err, sizeof(err));
            pd_engine_seq_release(e, &s[0]); /* the next step's chunk starts a prompt again */
            if (sr < 0) {
                fprintf(stderr, "gpu_engine_bench: a mixed step of %u + %u: %s\n", chunk, b,
                        err);
                unsetenv("PDSERVE_MIXED_ATTENTION");
                goto out;
            }
            for (uint32_t i = 1; i <= b; i++) {
                next[i] = res[i].token;
                it[i].n_history++;
            }
        }
        sec[r % 2][r / 2] = (bench_now() - t0) / steps;
        unsetenv("PDSERVE_MIXED_ATTENTION");
        if (kt) {
            char what[64];
            snprintf(what, sizeof(what), "mixed %u+%u%s", chunk, b, r % 2 ? " (runs)" : "");
            breakdown(e, what);
        }
    }
    rc = 0;
out:
    for (uint32_t i = 0; i < made; i++)
        pd_engine_seq_release(e, &s[i + 1]);
    free(s), free(it), free(res), free(next), free(tok);
    return rc;
}

/* the matrices' parameters a token goes through (the output head counted
 * apart: prefill computes it for the last token only) */
static double layer_params(const struct pd_hparams *hp)
{
    const double e = hp->n_embd, q = (double)hp->n_head * hp->head_dim;
    const double kv = (double)hp->n_head_kv * hp->head_dim, f = hp->n_ff;
    return hp->n_layer * (e * q + 2 * e * kv + q * e + 3 * e * f);
}

int main(int argc, char **argv)
{
    struct bench_cfg c;
    struct pd_cfg_args a;
    struct pd_model *m = NULL;
    struct pd_engine *e = NULL;
    struct gb_clock clk = {0};
    char err[512];
    int rc, exit_code = 1;
    uint32_t plen[GB_MAX_ITEMS], batch[GB_MAX_ITEMS];
    static const uint32_t def_plen[] = {2048}, def_batch[] = {1, 32, 128};

    if (pd_cfg_main(options, &c, argc, argv, "gpu_engine_bench", "[OPTIONS]", 0, &a, &exit_code))
        return exit_code;
    const size_t n_plen = gb_list_values(&c.prefill, def_plen, 1, plen);
    const size_t n_batch = gb_list_values(&c.batches, def_batch, 3, batch);
    if (!n_plen || !n_batch) {
        fprintf(stderr, "gpu_engine_bench: --prefill and --batches take up to %d numbers in "
                "[1, 2^20]\n", GB_MAX_ITEMS);
        pd_cfg_done(options, &c);
        return 2;
    }
    if (gb_open_device("gpu_engine_bench", 0) < 0)
        goto out;
    if ((rc = gb_clock_init(&clk)) < 0) {
        fprintf(stderr, "gpu_engine_bench: a CUDA timer or stream: %s\n", strerror(-rc));
        goto out;
    }
    const int trials = (int)c.trials;
    double gemm_tf, copy_gbs;
    float gemm_ms;
    if ((rc = gb_gemm_ref((uint32_t)c.gemm_size, trials, &clk, &gemm_tf, &gemm_ms)) < 0 ||
        (rc = gb_copy_ref((uint64_t)c.copy_mib << 20, trials, &clk, &copy_gbs)) < 0) {
        fprintf(stderr, "gpu_engine_bench: the references: %s\n", strerror(-rc));
        goto out;
    }
    printf("gemm: cuBLAS bf16 %lld x %lld x %lld, fp32 accumulation: %.1f TFLOP/s\n",
           (long long)c.gemm_size, (long long)c.gemm_size, (long long)c.gemm_size, gemm_tf);
    printf("copy: device to device, %lld MiB: %.1f GB/s (read + written)\n",
           (long long)c.copy_mib, copy_gbs);

    struct pd_model_params mp = {.load_format = PD_LOAD_DUMMY, .shape = c.model_shape,
                                 .seed = (uint64_t)c.seed};
    double t0 = bench_now();
    if (pd_model_load(&mp, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "gpu_engine_bench: %s\n", err);
        goto out;
    }
    const struct pd_hparams *hp = pd_model_hparams(m);
    const uint32_t ctx = (uint32_t)c.context, steps = (uint32_t)c.steps;
    /* a decode run's sequences; the mixed steps' grow over their 2 x trials runs */
    const uint32_t longest = ctx + (c.mixed_chunk ? 2 * trials : 1) * (steps + WARM_STEPS);
    uint32_t max_len = gb_max_of(plen, n_plen) > longest ? gb_max_of(plen, n_plen) + 1
                                                         : longest + 1;
    if (c.max_model_len && (uint32_t)c.max_model_len < max_len) {
        fprintf(stderr,
                "gpu_engine_bench: --max-model-len %u is under the %u tokens the run needs\n",
                (unsigned)c.max_model_len, max_len);
        goto out;
    }
    max_len = c.max_model_len ? (uint32_t)c.max_model_len : max_len;
    if (max_len > hp->n_ctx_train) {
        fprintf(stderr, "gpu_engine_bench: prompts or contexts past the model's %u tokens\n",
                hp->n_ctx_train);
        goto out;
    }
    const uint32_t kv_type = pd_engine_kv_dtype(c.kv_cache_dtype);
    const uint32_t w_type = pd_engine_gpu_weight_dtype(c.gpu_weight_dtype);
    const double kv_tok = 2.0 * hp->n_layer * hp->n_head_kv * hp->head_dim *
                          (kv_type == PD_DT_F32 ? 4 : 2);
    if (c.kv_cache_memory == 0) { /* every sequence of the largest batch, whole blocks */
        const uint64_t bs = (uint64_t)c.block_size;
        const uint64_t seq_blocks = (longest + bs - 1) / bs;
        const uint64_t prompt_blocks = (gb_max_of(plen, n_plen) + bs - 1) / bs;
        const uint64_t chunk_blocks = ((uint64_t)c.mixed_chunk + bs - 1) / bs;
        uint64_t blocks = gb_max_of(batch, n_batch) * seq_blocks + chunk_blocks;
        blocks = (blocks > prompt_blocks ? blocks : prompt_blocks) + 1;
        c.kv_cache_memory = (uint64_t)(blocks * bs * kv_tok);
    }
    struct pd_engine_params ep = {.model = m, .device = PD_DEVICE_CUDA,
                                  .gpu_weight_dtype = w_type,
                                  .kv_cache_bytes = c.kv_cache_memory, .kv_dtype = kv_type,
                                  .block_size = (uint32_t)c.block_size,
                                  .max_batched_tokens = (uint32_t)c.max_batched_tokens,
                                  .max_model_len = max_len,
                                  .max_batch_items = gb_max_of(batch, n_batch) + 1};
    /* a mixed step holds the chunk and the largest batch's tokens */
    if (c.mixed_chunk + gb_max_of(batch, n_batch) > c.max_batched_tokens)
        ep.max_batched_tokens = (uint32_t)c.mixed_chunk + gb_max_of(batch, n_batch);
    if (pd_engine_new(&ep, &e, err, sizeof(err)) < 0) {
        fprintf(stderr, "gpu_engine_bench: %s\n", err);
        goto out;
    }
    const double params = layer_params(hp), head = (double)hp->n_vocab * hp->n_embd;
    const double wbytes = (params + head) * (w_type == PD_DT_BF16 ? 2 : 4) +
                          4.0 * (2.0 * hp->n_layer + 1) * hp->n_embd; /* + fp32 norms */
    printf("model %s: %u layers, %.2f B matrix parameters, %s matrices (%.2f GB), %s KV (%.0f "
           "KiB per token); loaded in %.1f s\n", pd_model_name(m), hp->n_layer,
           (params + head) / 1e9, pd_dtype_name(w_type), wbytes / 1e9, pd_dtype_name(kv_type),
           kv_tok / 1024, bench_now() - t0);
    printf("medians of %d; prefill in chunks of %lld tokens; decode contexts of %u tokens, %u "
           "steps per run\n\n", trials, (long long)c.max_batched_tokens, ctx, steps);

    char line[512];
    size_t o = (size_t)snprintf(line, sizeof(line), "gpu_engine_bench: %s;", pd_model_name(m));
    printf("%-14s %12s %10s %9s\n", "prefill", "tokens/s", "TFLOP/s", "vs_gemm");
    for (size_t i = 0; i < n_plen; i++) {
        double v[100];
        for (int r = 0; r < trials; r++)
            if ((v[r] = time_prefill(e, plen[i])) < 0)
                goto out;
        const double dt = bench_median(v, (size_t)trials), n = plen[i];
        const double flops = 2.0 * params * n + 2.0 * head +
                             hp->n_layer * 2.0 * n * n * hp->n_head * hp->head_dim;
        printf("%-14u %12.1f %10.1f %9.2f\n", plen[i], n / dt, flops / dt / 1e12,
               flops / dt / 1e12 / gemm_tf);
        if (o < sizeof(line))
            o += (size_t)snprintf(line + o, sizeof(line) - o, " prefill %u: %.0f tok/s (%.2f of "
                                  "gemm);", plen[i], n / dt, flops / dt / 1e12 / gemm_tf);
    }
    printf("\n%-14s %12s %10s %9s %9s\n", "decode batch", "tokens/s", "ms/step", "GB/s", "vs_copy");
    for (size_t i = 0; i < n_batch; i++) {
        double v[100];
        for (int r = 0; r < trials; r++)
            if ((v[r] = time_decode(e, batch[i], ctx, steps, false)) < 0)
                goto out;
        const double dt = bench_median(v, (size_t)trials);
        /* the weights once, and each sequence's K/V over its context (it
         * grows by steps / 2 on average during a run) */
        const double bytes = wbytes + batch[i] * (ctx + WARM_STEPS + steps / 2.0) * kv_tok;
        printf("%-14u %12.1f %10.3f %9.1f %9.2f\n", batch[i], batch[i] / dt, dt * 1e3,
               bytes / dt / 1e9, bytes / dt / 1e9 / copy_gbs);
        if (o < sizeof(line))
            o += (size_t)snprintf(line + o, sizeof(line) - o, " decode %u: %.0f tok/s (%.2f of "
                                  "copy);", batch[i], batch[i] / dt, bytes / dt / 1e9 / copy_gbs);
    }
    if (c.mixed_chunk > 0) {
        const uint32_t chunk = (uint32_t)c.mixed_chunk;
        printf("\n%-14s %14s %16s %16s\n", "mixed batch", "chunk tokens", "ms/step",
               "prefill runs ms");
        for (size_t i = 0; i < n_batch; i++) {
            double v[2][100], *sec[2] = {v[0], v[1]};
            if (time_mixed(e, batch[i], ctx, chunk, steps, trials, false, sec) < 0)
                goto out;
            const double split = bench_median(v[0], (size_t)trials);
            const double runs = bench_median(v[1], (size_t)trials);
            printf("%-14u %14u %16.3f %16.3f   vs_prefill_runs %.2f\n", batch[i], chunk,
                   split * 1e3, runs * 1e3, runs / split);
            if (o < sizeof(line))
                o += (size_t)snprintf(line + o, sizeof(line) - o,
                                      " mixed %u+%u: %.3f ms (%.2f vs prefill runs);", chunk,
                                      batch[i], split * 1e3, runs / split);
        }
    }
    if (c.kernel_times) { /* plain launches, every kernel followed by an event */
        printf("\nkernel times (plain launches, events after each kernel; ms per step)\n");
        for (size_t i = 0; i < n_batch; i++) {
            double v[2][1], *sec[2] = {v[0], v[1]};
            if (time_decode(e, batch[i], ctx, steps, true) < 0 ||
                (c.mixed_chunk > 0 &&
                 time_mixed(e, batch[i], ctx, (uint32_t)c.mixed_chunk, steps, 1, true, sec) < 0))
                goto out;
        }
    }
    printf("%s\n", line);
    exit_code = 0;
out:
    pd_engine_free(e);
    pd_model_free(m);
    gb_clock_done(&clk);
    pd_cfg_done(options, &c);
    return exit_code;
}
