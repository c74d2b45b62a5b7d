/* attn_bench: CUDA decode attention, bytes read / time, beside a device-to-
 * device copy measured in the same run (counted as bytes read + bytes
 * written). Timings never decide a test; the figures go to docs/perf.md.
 *
 *   build/tests/bench/attn_bench                                  # default model's shape
 *   build/tests/bench/attn_bench --model-shape '{"preset":"llama3-8b","n_head_kv":4}'  # GQA 8:1
 *   build/tests/bench/attn_bench --probe                          # the device, or why not
 *
 * The shape comes from a dummy model (--model-shape, common/model; metadata
 * only: attention needs no weights). The KV pool has the real layout and a
 * realistic size: every layer of every block (block strides as in serving),
 * --batch x --context positions' worth of blocks, handed to the sequences in a
 * random order, filled on the device from --seed. One decode step per sequence
 * (every sequence at the same context) for each batch and context; each timed
 * trial runs one launch per layer, so consecutive launches read different
 * memory and the L2 cache holds none of it, captured once as a CUDA graph and
 * replayed (the kernels' time, not the launch overhead; --no-graphs: plain
 * launches). Bytes counted: K and V of every position read, plus q. Medians of
 * --trials.
 *
 * Without a usable GPU it says why and exits 1.
 */
#include "attention.h"
#include "gpu_bench.h"
#include "cfg.h"
#include "cuda_util.h"
#include "model.h"
#include "quant.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bench_cfg {
    char *model_shape;
    int64_t seed;
    struct pd_cfg_list batch;
    struct pd_cfg_list context;
    int64_t block_size;
    int kv_dtype;
    int64_t trials;
    int64_t copy_mib;
    int64_t split_tokens;
    double max_memory;
    bool graphs;
    bool check;
    bool probe;
};

static const char *const kv_dtypes[] = {"bf16", "f32", NULL};

static const struct pd_cfg_opt options[] = {
    PD_CFG_STR("model-shape", struct bench_cfg, model_shape, "default", 4096,
               "dummy model shape: preset or JSON (common/model)"),
    PD_CFG_INT("seed", struct bench_cfg, seed, "1", 0, INT64_MAX, "seed of the KV and q contents"),
    PD_CFG_LIST("batch", struct bench_cfg, batch, 8,
                "sequences per step, e.g. 16,64 (the default)"),
    PD_CFG_LIST("context", struct bench_cfg, context, 8,
                "context lengths, e.g. 1024,2048,4096,8192 (the default)"),
    PD_CFG_INT("block-size", struct bench_cfg, block_size, "16", 1, 1024, "tokens per KV block"),
    PD_CFG_ENUM("kv-dtype", struct bench_cfg, kv_dtype, "bf16", kv_dtypes, "KV pool element type"),
    PD_CFG_INT("trials", struct bench_cfg, trials, "7", 1, 101, "timed trials per figure (median)"),
    PD_CFG_INT("copy-mib", struct bench_cfg, copy_mib, "1024", 64, 65536,
               "size of the device-to-device copy measured as the reference"),
    PD_CFG_INT("split-tokens", struct bench_cfg, split_tokens, "0", 0, 1 << 20,
               "context positions per split (0: the launcher's choice)"),
    PD_CFG_DOUBLE("max-memory", struct bench_cfg, max_memory, "0.85", 0.05, 0.95,
                  "fraction of free device memory the pool may take"),
    PD_CFG_BOOL("graphs", struct bench_cfg, graphs, "true",
                "time replays of a CUDA graph of each trial's launches (the kernels, not the "
                "launch overhead); --no-graphs: plain launches"),
    PD_CFG_BOOL("check", struct bench_cfg, check, "true",
                "compare two sequences of the first figure with the CPU reference"),
    PD_CFG_BOOL("probe", struct bench_cfg, probe, "false",
                "print the device (or why there is none) and exit"),
    PD_CFG_END,
};

static const uint32_t def_batch[] = {16, 64}, def_context[] = {1024, 2048, 4096, 8192};

#define TRY(call) GB_TRY("attn_bench", #call, call)

static int attn_pass(void *arg, uint32_t layer, pd_stream_t s)
{
    struct pd_attn_args a = *(struct pd_attn_args *)arg;
    a.layer = layer % a.kv.n_layer;
    return pd_attention_cuda(&a, s);
}

/* g's workspace for the split plan of its kernel, in *dws (grown as
 * needed); the plan's pieces in *splits */
static int prepare_ws(struct pd_attn_args *g, void **dws, uint64_t *splits)
{
    uint64_t ws = 0;
    int rc = pd_attention_cuda_workspace(g, &ws);
    if (rc < 0)
        return rc;
    *dws = pd_cuda_free(*dws);
    if (ws && (rc = pd_cuda_malloc(dws, ws)) < 0)
        return rc;
    g->workspace = *dws, g->workspace_bytes = ws;
    if (splits)
        *splits = ws ? ws / ((uint64_t)g->n_tokens * g->n_head * (g->kv.head_dim + 1) * 4) : 1;
    return 0;
}

/* ms per pass over the layers with the kernel that serves (simt 0) or the
 * CUDA-core one (simt 1) */
static int time_variant(struct pd_attn_args *g, uint32_t simt, void **dws,
                        const struct bench_cfg *c, struct gb_clock *clk, float *ms,
                        uint64_t *splits)
{
    g->decode_simt = simt;
    int rc = prepare_ws(g, dws, splits);
    if (rc < 0)
        return rc;
    return gb_time_passes(attn_pass, g, g->kv.n_layer, (int)c->trials, c->graphs, clk, ms);
}

/* Two sequences of the batch, recomputed on the CPU from a host copy of
 * their blocks: the figures are of a kernel that computes the right thing. */
static int spot_check(const struct pd_attn_args *g, const uint32_t *tables_host, size_t elem,
                      uint32_t ctx, double *err_out)
{
    const struct pd_kv_geom *l = &g->kv;
    const uint32_t n = g->n_tokens < 2 ? g->n_tokens : 2, mb = g->max_blocks;
    const uint32_t nb = (ctx + l->block_size - 1) / l->block_size;
    const size_t block_bytes = pd_kv_block_elems(l) * elem, row = (size_t)g->n_head * l->head_dim;
    uint8_t *pool = malloc((size_t)n * nb * block_bytes);
    uint32_t *tables = malloc((size_t)n * mb * sizeof(uint32_t));
    float *q = malloc(n * row * sizeof(float)), *ref = malloc(n * row * sizeof(float));
    float *got = malloc(n * row * sizeof(float));
    int32_t seq[2] = {0, 1}, pos[2] = {(int32_t)ctx - 1, (int32_t)ctx - 1};
    int rc = -ENOMEM;

    if (!pool || !tables || !q || !ref || !got)
        goto out;
    for (uint32_t s = 0; s < n; s++)
        for (uint32_t j = 0; j < nb; j++) {
            tables[s * mb + j] = s * nb + j;
            rc = pd_cuda_memcpy(pool + (size_t)(s * nb + j) * block_bytes,
                                (const uint8_t *)(const void *)g->pool +
                                    (size_t)tables_host[s * mb + j] * block_bytes,
                                block_bytes);
            if (rc < 0)
                goto out;
        }
    if ((rc = pd_cuda_memcpy(q, g->q, n * row * sizeof(float))) < 0 ||
        (rc = pd_cuda_memcpy(got, g->out, n * row * sizeof(float))) < 0)
        goto out;
    struct pd_attn_args a = *g;
    a.out = ref, a.q = q, a.pool = (const float *)(const void *)pool, a.n_tokens = n;
    a.tok_seq = seq, a.tok_pos = pos, a.block_tables = tables;
    if ((rc = pd_attention_cpu(&a)) < 0)
        goto out;
    *err_out = gb_normalized_error(got, ref, n * row);
out:
    free(pool), free(tables), free(q), free(ref), free(got);
    return rc;
}

int main(int argc, char **argv)
{
    struct bench_cfg c;
    struct pd_cfg_args a;
    struct pd_model *m = NULL;
    struct gb_clock clk = {0};
    void *pool = NULL, *dq = NULL, *dout = NULL, *dws = NULL, *dseq = NULL, *dpos = NULL;
    void *dtables = NULL;
    uint32_t *tables = NULL;
    int32_t *seq = NULL, *pos = NULL;
    uint32_t batch[GB_MAX_ITEMS], context[GB_MAX_ITEMS];
    char err[512];
    int rc, exit_code = 1;

    if (pd_cfg_main(options, &c, argc, argv, "attn_bench", "[OPTIONS]", 0, &a, &exit_code))
        return exit_code;
    const size_t n_batch = gb_list_values(&c.batch, def_batch, 2, batch);
    const size_t n_context = gb_list_values(&c.context, def_context, 4, context);
    if (!n_batch || !n_context) {
        fprintf(stderr, "attn_bench: --batch and --context take up to %d numbers in [1, 2^20]\n",
                GB_MAX_ITEMS);
        pd_cfg_done(options, &c);
        return 2;
    }

    if ((rc = gb_open_device("attn_bench", c.probe)) != 0) {
        exit_code = rc < 0; /* 0 after --probe */
        goto out;
    }

    struct pd_model_params mp = {.load_format = PD_LOAD_DUMMY, .shape = c.model_shape,
                                 .seed = (uint64_t)c.seed, .flags = PD_MODEL_META_ONLY};
    if (pd_model_load(&mp, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "attn_bench: %s\n", err);
        goto out;
    }
    const struct pd_hparams *hp = pd_model_hparams(m);
    const uint32_t pool_type = c.kv_dtype == 0 ? PD_DT_BF16 : PD_DT_F32;
    const size_t elem = pool_type == PD_DT_BF16 ? 2 : 4;
    const struct pd_kv_geom kv = {hp->n_layer, hp->n_head_kv, hp->head_dim,
                                    (uint32_t)c.block_size};
    const uint32_t max_b = gb_max_of(batch, n_batch), max_ctx = gb_max_of(context, n_context);
    const uint32_t mb = (max_ctx + kv.block_size - 1) / kv.block_size;
    const uint64_t n_blocks = (uint64_t)max_b * mb, block_bytes = pd_kv_block_elems(&kv) * elem;
    const uint64_t pool_bytes = n_blocks * block_bytes;
    const size_t row = (size_t)hp->n_head * hp->head_dim;
    size_t free_b = 0, total_b = 0;

    TRY(pd_cuda_mem_info(&free_b, &total_b));
    printf("shape %s: %u layers, %u heads / %u KV heads (GQA %u:1), head_dim %u; "
           "KV %s, block %u tokens (%.0f KiB); pool %.2f GiB = %llu blocks\n",
           pd_model_name(m), hp->n_layer, hp->n_head, hp->n_head_kv, hp->n_head / hp->n_head_kv,
           hp->head_dim, kv_dtypes[c.kv_dtype], kv.block_size, (double)block_bytes / 1024,
           (double)pool_bytes / (1u << 30), (unsigned long long)n_blocks);
    if ((double)pool_bytes + 2.0 * ((uint64_t)c.copy_mib << 20) > c.max_memory * (double)free_b) {
        fprintf(stderr, "attn_bench: the pool (%.2f GiB) and the copy buffers do not fit in %.0f%% "
                "of the %.2f GiB free: lower --batch or --context, or use --kv-dtype bf16\n",
                (double)pool_bytes / (1u << 30), 100 * c.max_memory, (double)free_b / (1u << 30));
        goto out;
    }

    /* the pool, q, and block tables handing out the blocks in a random order */
    TRY(gb_random_buffer(&pool, pool_bytes / elem, pool_type, (uint64_t)c.seed, 1.0f));
    TRY(gb_random_buffer(&dq, (size_t)max_b * row, PD_DT_F32, (uint64_t)c.seed + 1, 4.0f));
    TRY(pd_cuda_malloc(&dout, (size_t)max_b * row * sizeof(float)));
    TRY(gb_block_tables(n_blocks, (uint64_t)c.seed, &tables, &dtables));
    seq = malloc(max_b * sizeof(int32_t));
    pos = malloc(max_b * sizeof(int32_t));
    if (!seq || !pos) {
        fprintf(stderr, "attn_bench: out of memory\n");
        goto out;
    }
    for (uint32_t s = 0; s < max_b; s++)
        seq[s] = (int32_t)s;
    TRY(pd_cuda_malloc(&dseq, max_b * sizeof(int32_t)));
    TRY(pd_cuda_memcpy(dseq, seq, max_b * sizeof(int32_t)));
    TRY(pd_cuda_malloc(&dpos, max_b * sizeof(int32_t)));
    TRY(gb_clock_init(&clk));

    /* the reference: a device-to-device copy, bytes read + bytes written */
    double copy_gbs;
    TRY(gb_copy_line(c.copy_mib, (int)c.trials, &clk, c.graphs, "attention", &copy_gbs));

    printf("%6s %8s %7s %10s %9s %8s %10s %8s\n", "batch", "context", "splits", "time_us", "GB/s",
           "vs_copy", "simt_us", "vs_simt");
    double worst = INFINITY, best = 0;
    int checked = !c.check;
    for (size_t ci = 0; ci < n_context; ci++)
        for (size_t bi = 0; bi < n_batch; bi++) {
            const uint32_t B = batch[bi], ctx = context[ci];
            for (uint32_t s = 0; s < B; s++)
                pos[s] = (int32_t)ctx - 1;
            TRY(pd_cuda_memcpy(dpos, pos, B * sizeof(int32_t)));
            struct pd_attn_args g = {.out = dout, .q = dq, .pool = pool, .kv = kv, .layer = 0,
                                     .n_tokens = B, .n_head = hp->n_head, .tok_seq = dseq,
                                     .tok_pos = dpos, .block_tables = dtables, .max_blocks = mb,
                                     .scale = 1.0f / sqrtf((float)hp->head_dim),
                                     .pool_type = pool_type, .max_ctx = ctx,
                                     .split_tokens = (uint32_t)c.split_tokens};
            /* the kernel that serves (tensor cores where they do), then the
             * CUDA-core kernel on the same work: vs_simt > 1 is faster */
            float ms, simt_ms;
            uint64_t splits;
            TRY(time_variant(&g, 0, &dws, &c, &clk, &ms, &splits));
            TRY(time_variant(&g, 1, &dws, &c, &clk, &simt_ms, NULL));
            const double bytes = (double)B * ctx * kv.n_head_kv * kv.head_dim * 2 * elem +
                                 (double)B * row * sizeof(float);
            const double gbs = bytes / (ms * 1e-3) / 1e9, ratio = gbs / copy_gbs;
            printf("%6u %8u %7llu %10.1f %9.1f %8.2f %10.1f %8.2f\n", B, ctx,
                   (unsigned long long)splits, ms * 1e3, gbs, ratio, simt_ms * 1e3, simt_ms / ms);
            worst = ratio < worst ? ratio : worst;
            best = ratio > best ? ratio : best;
            for (uint32_t v = 0; v < 2 && !checked; v++) {
                double e;
                g.layer = kv.n_layer / 2;
                g.decode_simt = v;
                TRY(prepare_ws(&g, &dws, NULL));
                TRY(pd_attention_cuda(&g, NULL));
                TRY(pd_cuda_sync());
                TRY(spot_check(&g, tables, elem, ctx, &e));
                if (gb_check_error("attn_bench", v ? "2 sequences (CUDA cores)" : "2 sequences", e,
                                   "1e-5") < 0)
                    goto out;
                checked = v == 1;
            }
        }
    printf("attn_bench: %s GQA %u:1 %s: vs_copy %.2f to %.2f (target >= 0.85)\n", pd_model_name(m),
           hp->n_head / hp->n_head_kv, kv_dtypes[c.kv_dtype], worst, best);
    exit_code = 0;
out:
    pd_cuda_free(pool), pd_cuda_free(dq), pd_cuda_free(dout), pd_cuda_free(dws);
    pd_cuda_free(dseq), pd_cuda_free(dpos), pd_cuda_free(dtables);
    gb_clock_done(&clk);
    free(tables), free(seq), free(pos);
    pd_model_free(m);
    pd_cfg_done(options, &c);
    return exit_code;
}
