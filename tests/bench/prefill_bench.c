/* prefill_bench: CUDA prefill attention (kernels/attn_prefill.cu, and on
 * sm_90 Hopper's wgmma kernel, attn_prefill_sm90.cu, beside it) in TFLOP/s
 * on FlashAttention's benchmark grid, beside a cuBLAS bf16 GEMM
 * (kernels/matmul.cu, fp32 accumulation) measured in the same run. Timings
 * never decide a test; the figures go to docs/perf.md.
 *
 *   build/tests/bench/prefill_bench                    # causal, 16 heads x 128, 16k tokens
 *   build/tests/bench/prefill_bench --seqlen 4096 --kv-dtype f16
 *   build/tests/bench/prefill_bench --probe            # the device, or why not
 *
 * The grid (FlashAttention-2's): batch = --tokens / seqlen sequences of
 * seqlen tokens each, --heads query heads = KV heads (no GQA), head_dim 128,
 * causal, 16-bit q, K, V and output. Here K and V live in a paged pool of the
 * real layout (--block-size tokens per block, blocks handed out in a random
 * order), so every key tile is gathered through a block table as in serving.
 * FLOPs counted as FlashAttention counts them: 4 * batch * seqlen^2 * heads *
 * head_dim / 2 for causal attention. The GEMM: m = n = k = --gemm-size, bf16
 * operands, 2 m n k FLOPs. Medians of --trials.
 *
 * Without a usable GPU it says why and exits 1.
 */
#include "attention.h"
#include "gpu_bench.h"
#include "matmul.h"
#include "quant.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bench_cfg {
    struct pd_cfg_list seqlen, wgmma_keys;
    int64_t tokens, heads, head_dim, block_size, trials, gemm_size, seed;
    int kv_dtype;
    bool check, probe, wgmma;
};

static const char *const kv_dtypes[] = {"bf16", "f16", NULL};

static const struct pd_cfg_opt options[] = {
    PD_CFG_LIST("seqlen", struct bench_cfg, seqlen, 8,
                "sequence lengths, e.g. 512,1024,2048,4096,8192,16384 (the default)"),
    PD_CFG_INT("tokens", struct bench_cfg, tokens, "16384", 64, 1 << 20,
               "tokens per figure: batch = tokens / seqlen"),
    PD_CFG_INT("heads", struct bench_cfg, heads, "16", 1, 256, "query heads (= KV heads)"),
    PD_CFG_INT("head-dim", struct bench_cfg, head_dim, "128", 64, 128, "64 or 128"),
    PD_CFG_INT("block-size", struct bench_cfg, block_size, "16", 1, 1024, "tokens per KV block"),
    PD_CFG_ENUM("kv-dtype", struct bench_cfg, kv_dtype, "bf16", kv_dtypes,
                "q, K, V and output element type"),
    PD_CFG_INT("trials", struct bench_cfg, trials, "5", 1, 101, "timed trials per figure (median)"),
    PD_CFG_INT("gemm-size", struct bench_cfg, gemm_size, "8192", 256, 32768,
               "m = n = k of the reference bf16 GEMM"),
    PD_CFG_INT("seed", struct bench_cfg, seed, "1", 0, INT64_MAX, "seed of the contents"),
    PD_CFG_BOOL("check", struct bench_cfg, check, "true",
                "compare the first sequence of the first figure with the CPU reference"),
    PD_CFG_BOOL("wgmma", struct bench_cfg, wgmma, "true",
                "also the wgmma kernel, where the device has one (sm_90), with its ratio to "
                "the mma.sync kernel"),
    PD_CFG_LIST("wgmma-keys", struct bench_cfg, wgmma_keys, 2,
                "the wgmma kernel's key tiles to time, 64 and / or 128 (default 128)"),
    PD_CFG_BOOL("probe", struct bench_cfg, probe, "false",
                "print the device (or why there is none) and exit"),
    PD_CFG_END,
};

static const uint32_t def_seqlen[] = {512, 1024, 2048, 4096, 8192, 16384};

#define TRY(call) GB_TRY("prefill_bench", #call, call)

static int attn_pass(void *arg, uint32_t i, pd_stream_t s)
{
    (void)i;
    return pd_attention_prefill_cuda(arg, s);
}

static float widen(uint32_t type, uint16_t h)
{
    return type == PD_DT_BF16 ? pd_bf16_to_f32(h) : pd_f16_to_f32(h);
}

/* The first sequence recomputed on the CPU from host copies of its blocks and
 * q: the figures are of a kernel that computes the right thing. */
static int spot_check(const struct pd_attn_args *g, const uint32_t *tables_host, uint32_t seqlen,
                      double *err_out)
{
    const struct pd_kv_geom *l = &g->kv;
    const uint32_t nb = (seqlen + l->block_size - 1) / l->block_size;
    const size_t block_bytes = pd_kv_block_elems(l) * 2, row = (size_t)g->n_head * l->head_dim;
    const size_t n = (size_t)seqlen * row;
    uint8_t *pool = malloc((size_t)nb * block_bytes);
    uint32_t *table = malloc(nb * sizeof(uint32_t));
    uint16_t *q16 = malloc(n * 2), *out16 = malloc(n * 2);
    float *q = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float));
    float *got = malloc(n * sizeof(float));
    int32_t *seq = calloc(seqlen, sizeof(int32_t)), *pos = malloc(seqlen * sizeof(int32_t));
    int rc = -ENOMEM;

    if (!pool || !table || !q16 || !out16 || !q || !ref || !got || !seq || !pos)
        goto out;
    for (uint32_t j = 0; j < nb; j++) {
        table[j] = j;
        rc = pd_cuda_memcpy(pool + (size_t)j * block_bytes,
                            (const uint8_t *)(const void *)g->pool +
                                (size_t)tables_host[j] * block_bytes,
                            block_bytes);
        if (rc < 0)
            goto out;
    }
    if ((rc = pd_cuda_memcpy(q16, g->q, n * 2)) < 0 || (rc = pd_cuda_memcpy(out16, g->out, n * 2)) < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        q[i] = widen(g->pool_type, q16[i]);
        got[i] = widen(g->pool_type, out16[i]);
    }
    for (uint32_t t = 0; t < seqlen; t++)
        pos[t] = (int32_t)t;
    struct pd_attn_args a = {.out = ref, .q = q, .pool = (const float *)(const void *)pool,
                             .kv = *l, .n_tokens = seqlen, .n_head = g->n_head, .tok_seq = seq,
                             .tok_pos = pos, .block_tables = table, .max_blocks = nb,
                             .scale = g->scale, .pool_type = g->pool_type};
    if ((rc = pd_attention_cpu(&a)) < 0)
        goto out;
    *err_out = gb_normalized_error(got, ref, n);
out:
    free(pool), free(table), free(q16), free(out16), free(q), free(ref), free(got);
    free(seq), free(pos);
    return rc;
}

int main(int argc, char **argv)
{
    struct bench_cfg c;
    struct pd_cfg_args a;
    struct gb_clock clk = {0};
    void *pool = NULL, *dq = NULL, *dout = NULL, *dseq = NULL, *dpos = NULL, *druns = NULL;
    void *dtables = NULL;
    uint32_t *tables = NULL;
    int32_t *seq = NULL, *pos = NULL, *runs = NULL;
    uint32_t seqlen[GB_MAX_ITEMS];
    int rc, exit_code = 1;

    if (pd_cfg_main(options, &c, argc, argv, "prefill_bench", "[OPTIONS]", 0, &a, &exit_code))
        return exit_code;
    const size_t n_seqlen = gb_list_values(&c.seqlen, def_seqlen, 6, seqlen);
    if (!n_seqlen || (c.head_dim != 64 && c.head_dim != 128)) {
        fprintf(stderr, "prefill_bench: --seqlen takes up to %d numbers in [1, 2^20], --head-dim "
                "64 or 128\n", GB_MAX_ITEMS);
        pd_cfg_done(options, &c);
        return 2;
    }
    for (size_t i = 0; i < n_seqlen; i++)
        if (seqlen[i] > (uint32_t)c.tokens) {
            fprintf(stderr, "prefill_bench: --seqlen %u is longer than --tokens %lld\n", seqlen[i],
                    (long long)c.tokens);
            pd_cfg_done(options, &c);
            return 2;
        }

    if ((rc = gb_open_device("prefill_bench", c.probe)) != 0) {
        exit_code = rc < 0; /* 0 after --probe */
        goto out;
    }

    const uint32_t type = c.kv_dtype == 0 ? PD_DT_BF16 : PD_DT_F16;
    const uint32_t T = (uint32_t)c.tokens, H = (uint32_t)c.heads, D = (uint32_t)c.head_dim;
    const struct pd_kv_geom kv = {1, H, D, (uint32_t)c.block_size};
    const size_t row = (size_t)H * D;
    /* every sequence's last block may be partial: room for one more per sequence */
    const uint32_t max_seqs = T / gb_min_of(seqlen, n_seqlen);
    const uint64_t n_blocks = (T + (uint64_t)kv.block_size - 1) / kv.block_size + max_seqs;
    const uint64_t pool_bytes = n_blocks * pd_kv_block_elems(&kv) * 2;

    TRY(gb_clock_init(&clk));

    /* the reference: a cuBLAS bf16 GEMM, fp32 accumulation */
    const uint32_t G = (uint32_t)c.gemm_size;
    float gemm_ms;
    double gemm_tf;
    TRY(gb_gemm_ref(G, (int)c.trials, &clk, &gemm_tf, &gemm_ms));
    printf("gemm: cuBLAS bf16 %u x %u x %u, fp32 accumulation: %.1f TFLOP/s (%.3f ms), median of "
           "%lld\n", G, G, G, gemm_tf, gemm_ms, (long long)c.trials);
    printf("prefill attention: causal, %u heads x %u, %s q/K/V/out, paged pool of %.0f MiB "
           "(block %u tokens, random order), %u tokens per figure\n",
           H, D, kv_dtypes[c.kv_dtype], (double)pool_bytes / (1u << 20), kv.block_size, T);

    TRY(gb_random_buffer(&pool, pool_bytes / 2, type, (uint64_t)c.seed, 1.0f));
    TRY(gb_random_buffer(&dq, (size_t)T * row, type, (uint64_t)c.seed + 1, 4.0f));
    TRY(pd_cuda_malloc(&dout, (size_t)T * row * 2));
    TRY(gb_block_tables(n_blocks, (uint64_t)c.seed, &tables, &dtables));
    seq = malloc(T * sizeof(int32_t));
    pos = malloc(T * sizeof(int32_t));
    runs = malloc((max_seqs + 1) * sizeof(int32_t));
    if (!seq || !pos || !runs) {
        fprintf(stderr, "prefill_bench: out of memory\n");
        goto out;
    }
    TRY(pd_cuda_malloc(&dseq, T * sizeof(int32_t)));
    TRY(pd_cuda_malloc(&dpos, T * sizeof(int32_t)));
    TRY(pd_cuda_malloc(&druns, (max_seqs + 1) * sizeof(int32_t)));

    /* the kernels timed on each figure: the mma.sync one (0), then the wgmma
     * one with each key tile asked for, where the device has it */
    uint32_t kernels[1 + GB_MAX_ITEMS] = {0}, wg_keys[GB_MAX_ITEMS];
    size_t n_kernels = 1;
    const uint32_t def_keys[] = {PD_ATTN_WGMMA_KEYS};
    const size_t n_keys = gb_list_values(&c.wgmma_keys, def_keys, 1, wg_keys);
    for (size_t i = 0; i < n_keys; i++)
        if (wg_keys[i] != 64 && wg_keys[i] != 128) {
            fprintf(stderr, "prefill_bench: --wgmma-keys takes 64 and / or 128\n");
            goto out;
        }
    if (!n_keys) {
        fprintf(stderr, "prefill_bench: --wgmma-keys takes 64 and / or 128\n");
        goto out;
    }
    int wg = 0;
    if (c.wgmma && (wg = pd_attention_prefill_wgmma_ready()) < 0) {
        fprintf(stderr, "prefill_bench: the device's compute capability: %s\n", strerror(-wg));
        goto out;
    }
    if (c.wgmma && !wg)
        printf("wgmma: no such kernel for this device or build (sm_90 only)\n");
    for (size_t i = 0; wg && i < n_keys; i++)
        kernels[n_kernels++] = wg_keys[i];
    printf("%-9s %8s %6s %10s %9s %8s %8s\n", "kernel", "seqlen", "batch", "time_ms", "TFLOP/s",
           "vs_gemm", "vs_mma");
    double worst[1 + GB_MAX_ITEMS], best[1 + GB_MAX_ITEMS];
    for (size_t k = 0; k < n_kernels; k++)
        worst[k] = INFINITY, best[k] = 0;
    int checked = !c.check;
    for (size_t si = 0; si < n_seqlen; si++) {
        const uint32_t S = seqlen[si], B = T / S, N = B * S;
        const uint32_t mb = (S + kv.block_size - 1) / kv.block_size;
        /* sequence b: tokens [b S, (b + 1) S), its blocks tables[b mb ...] */
        for (uint32_t t = 0; t < N; t++)
            seq[t] = (int32_t)(t / S), pos[t] = (int32_t)(t % S);
        for (uint32_t b = 0; b <= B; b++)
            runs[b] = (int32_t)(b * S);
        TRY(pd_cuda_memcpy(dseq, seq, N * sizeof(int32_t)));
        TRY(pd_cuda_memcpy(dpos, pos, N * sizeof(int32_t)));
        TRY(pd_cuda_memcpy(druns, runs, (B + 1) * sizeof(int32_t)));
        struct pd_attn_args g = {.out = dout, .q = dq, .pool = pool, .kv = kv, .n_tokens = N,
                                 .n_head = H, .tok_seq = dseq, .tok_pos = dpos,
                                 .block_tables = dtables, .max_blocks = mb,
                                 .scale = 1.0f / sqrtf((float)D), .pool_type = type,
                                 .io_type = type, .run_start = druns, .n_runs = B, .max_run = S};
        const double flops = 4.0 * B * (double)S * S * H * D / 2;
        double tf_mma = 0;
        for (size_t k = 0; k < n_kernels; k++) {
            char name[16] = "mma.sync";
            float ms;
            if (k)
                snprintf(name, sizeof name, "wgmma%u", kernels[k]);
            g.prefill_wgmma = kernels[k];
            TRY(gb_time_passes(attn_pass, &g, 1, (int)c.trials, 0, &clk, &ms));
            const double tf = flops / (ms * 1e-3) / 1e12, ratio = tf / gemm_tf;
            if (k == 0)
                tf_mma = tf;
            if (!checked) { /* the output of the passes just timed */
                double e;
                TRY(pd_cuda_sync());
                TRY(spot_check(&g, tables, S, &e));
                if (gb_check_error("prefill_bench", name, e, "1e-2") < 0)
                    goto out;
            }
            printf("%-9s %8u %6u %10.3f %9.1f %8.2f %8.2f\n", name, S, B, ms, tf, ratio,
                   tf / tf_mma);
            worst[k] = ratio < worst[k] ? ratio : worst[k];
            best[k] = ratio > best[k] ? ratio : best[k];
        }
        checked = 1;
    }
    printf("prefill_bench: %s causal %ux%u: vs_gemm %.2f to %.2f", kv_dtypes[c.kv_dtype], H, D,
           worst[0], best[0]);
    for (size_t k = 1; k < n_kernels; k++)
        printf(", wgmma%u %.2f to %.2f", kernels[k], worst[k], best[k]);
    printf("\n");
    exit_code = 0;
out:
    pd_cuda_free(pool), pd_cuda_free(dq), pd_cuda_free(dout), pd_cuda_free(dseq);
    pd_cuda_free(dpos), pd_cuda_free(druns), pd_cuda_free(dtables);
    gb_clock_done(&clk);
    free(tables), free(seq), free(pos), free(runs);
    pd_cfg_done(options, &c);
    return exit_code;
}
