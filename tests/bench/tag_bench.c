/* tag_bench: the KV channel's block tags on the GPU (kernels/tag.cu), bytes
 * tagged / time, beside a device-to-device copy measured in the same run
 * (counted as bytes read + bytes written, the memory traffic a copy makes;
 * the tag kernel reads each byte once). Timings never decide a test; the
 * figures go to docs/perf.md.
 *
 *   build/tests/bench/tag_bench                       # Llama-3-8B blocks: 2 MiB, 16 tokens
 *   build/tests/bench/tag_bench --blocks 128,512      # a 2k-token and an 8k-token prompt
 *   build/tests/bench/tag_bench --probe               # the device, or why not
 *
 * Each figure tags --blocks blocks of --block-kib KiB (device memory filled
 * from --seed) with one launch, one job per block (its own one-time key and
 * the 24-byte prefix, as the channel makes them), timed as a CUDA graph
 * replay (--no-graphs: plain launches), median of --trials. --check (on by
 * default) compares the first figure's tags with libsodium's on the host.
 * The bar: tags >= 0.5 of the copy.
 *
 * Without a usable GPU it says why and exits 1.
 */
#include "cfg.h"
#include "cuda_util.h"
#include "gpu_bench.h"
#include "quant.h"
#include "tag.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bench_cfg {
    int64_t seed;
    struct pd_cfg_list blocks;
    int64_t block_kib;
    int64_t trials;
    int64_t copy_mib;
    bool graphs;
    bool check;
    bool probe;
};

static const struct pd_cfg_opt options[] = {
    PD_CFG_INT("seed", struct bench_cfg, seed, "1", 0, INT64_MAX, "seed of the blocks and keys"),
    PD_CFG_LIST("blocks", struct bench_cfg, blocks, 8,
                "blocks tagged per launch, a list (default 8,128,512)"),
    PD_CFG_INT("block-kib", struct bench_cfg, block_kib, "2048", 1, 1 << 20,
               "bytes per block, KiB (2048: Llama-3-8B's 16-token bf16 block)"),
    PD_CFG_INT("trials", struct bench_cfg, trials, "7", 1, 101, "timed trials per figure (median)"),
    PD_CFG_INT("copy-mib", struct bench_cfg, copy_mib, "1024", 1, 65536,
               "bytes of the device-to-device copy beside it"),
    PD_CFG_BOOL("graphs", struct bench_cfg, graphs, "true",
                "time CUDA graph replays (--no-graphs: plain launches)"),
    PD_CFG_BOOL("check", struct bench_cfg, check, "true",
                "compare the first figure's tags with libsodium's"),
    PD_CFG_BOOL("probe", struct bench_cfg, probe, "false",
                "print the device (or why there is none) and exit"),
    PD_CFG_END,
};

static const uint32_t def_blocks[] = {8, 128, 512};

#define TRY(call) GB_TRY("tag_bench", #call, call)

struct tag_arg {
    const struct pd_tag_job *jobs; /* device */
    uint32_t n;
    uint8_t *tags; /* device */
};

static int tag_pass(void *arg, uint32_t i, pd_stream_t s)
{
    const struct tag_arg *t = arg;
    (void)i;
    return pd_tag_cuda(t->jobs, t->n, t->tags, s);
}

/* n jobs over the blocks at pool, block_bytes apart: random keys and
 * prefixes from seed (not secret here) */
static struct pd_tag_job *make_jobs(uint8_t *pool, uint32_t n, uint64_t block_bytes,
                                    uint64_t seed)
{
    struct pd_tag_job *j = calloc(n, sizeof(*j));
    if (!j)
        return NULL;
    uint8_t s[randombytes_SEEDBYTES] = {0};
    memcpy(s, &seed, sizeof seed);
    for (uint32_t i = 0; i < n; i++) {
        s[8] = (uint8_t)i, s[9] = (uint8_t)(i >> 8), s[10] = (uint8_t)(i >> 16);
        uint8_t r[PD_TAG_KEY_LEN + 24];
        randombytes_buf_deterministic(r, sizeof r, s);
        memcpy(j[i].key, r, PD_TAG_KEY_LEN);
        memcpy(j[i].prefix, r + PD_TAG_KEY_LEN, 24);
        j[i].prefix_len = 24;
        j[i].data = pool + (uint64_t)i * block_bytes;
        j[i].len = block_bytes;
    }
    return j;
}

/* the GPU's tags of the first and last job against libsodium's over the same
 * bytes, copied down */
static int check_tags(const struct pd_tag_job *jobs, uint32_t n, const uint8_t *dtags)
{
    const uint32_t which[2] = {0, n - 1};
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        const struct pd_tag_job *j = &jobs[which[k]];
        uint8_t *b = malloc(j->len), got[PD_TAG_LEN], want[PD_TAG_LEN];
        if (!b)
            return -ENOMEM;
        if ((rc = pd_cuda_memcpy(b, j->data, j->len)) == 0 &&
            (rc = pd_cuda_memcpy(got, dtags + (size_t)which[k] * PD_TAG_LEN, PD_TAG_LEN)) == 0) {
            crypto_onetimeauth_state st;
            crypto_onetimeauth_init(&st, j->key);
            crypto_onetimeauth_update(&st, j->prefix, j->prefix_len);
            crypto_onetimeauth_update(&st, b, j->len);
            crypto_onetimeauth_final(&st, want);
            if (memcmp(got, want, PD_TAG_LEN) != 0) {
                fprintf(stderr, "tag_bench: job %u's tag is not libsodium's\n", which[k]);
                rc = -EBADMSG;
            }
        }
        free(b);
    }
    if (rc == 0)
        printf("  (check: the first and last block's tags are libsodium's)\n");
    return rc;
}

int main(int argc, char **argv)
{
    struct bench_cfg c;
    struct pd_cfg_args a;
    struct gb_clock clk = {0};
    struct pd_tag_job *jobs = NULL;
    void *pool = NULL, *djobs = NULL, *dtags = NULL;
    uint32_t blocks[GB_MAX_ITEMS];
    int rc, exit_code = 1;

    if (pd_cfg_main(options, &c, argc, argv, "tag_bench", "[OPTIONS]", 0, &a, &exit_code))
        return exit_code;
    const size_t n_blocks = gb_list_values(&c.blocks, def_blocks, 3, blocks);
    if (!n_blocks) {
        fprintf(stderr, "tag_bench: --blocks takes up to %d numbers in [1, 2^20]\n",
                GB_MAX_ITEMS);
        pd_cfg_done(options, &c);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "tag_bench: libsodium did not start\n");
        pd_cfg_done(options, &c);
        return 1;
    }
    if ((rc = gb_open_device("tag_bench", c.probe)) != 0) {
        exit_code = rc < 0; /* 0 after --probe */
        goto out;
    }
    const uint64_t block_bytes = (uint64_t)c.block_kib << 10;
    const uint32_t max_n = gb_max_of(blocks, n_blocks);
    const uint64_t pool_bytes = max_n * block_bytes;
    printf("blocks of %lld KiB, up to %u (%.2f GiB), one launch per figure, prefix 24 bytes\n",
           (long long)c.block_kib, max_n, (double)pool_bytes / (1u << 30));
    TRY(gb_random_buffer(&pool, pool_bytes / 4, PD_DT_F32, (uint64_t)c.seed, 1.0f));
    if (!(jobs = make_jobs(pool, max_n, block_bytes, (uint64_t)c.seed))) {
        fprintf(stderr, "tag_bench: out of memory\n");
        goto out;
    }
    TRY(pd_cuda_malloc(&djobs, max_n * sizeof(*jobs)));
    TRY(pd_cuda_memcpy(djobs, jobs, max_n * sizeof(*jobs)));
    TRY(pd_cuda_malloc(&dtags, (size_t)max_n * PD_TAG_LEN));
    TRY(gb_clock_init(&clk));

    double copy_gbs;
    TRY(gb_copy_line(c.copy_mib, (int)c.trials, &clk, c.graphs, "tags", &copy_gbs));
    printf("%8s %10s %10s %9s %8s\n", "blocks", "MiB", "time_us", "GB/s", "vs_copy");
    double worst = 1e300, best = 0;
    for (size_t bi = 0; bi < n_blocks; bi++) {
        struct tag_arg t = {djobs, blocks[bi], dtags};
        float ms;
        TRY(gb_time_passes(tag_pass, &t, 1, (int)c.trials, c.graphs, &clk, &ms));
        const double bytes = (double)t.n * block_bytes, gbs = bytes / (ms * 1e-3) / 1e9;
        const double ratio = gbs / copy_gbs;
        printf("%8u %10.1f %10.1f %9.1f %8.2f\n", t.n, bytes / (1 << 20), ms * 1e3, gbs, ratio);
        worst = ratio < worst ? ratio : worst;
        best = ratio > best ? ratio : best;
        if (bi == 0 && c.check) {
            TRY(pd_tag_cuda(djobs, t.n, dtags, NULL));
            TRY(pd_cuda_sync());
            TRY(check_tags(jobs, t.n, dtags));
        }
    }
    printf("tag_bench: %lld KiB blocks: vs_copy %.2f to %.2f (target >= 0.50)\n",
           (long long)c.block_kib, worst, best);
    exit_code = 0;
out:
    pd_cuda_free(pool), pd_cuda_free(djobs), pd_cuda_free(dtags);
    gb_clock_done(&clk);
    free(jobs);
    pd_cfg_done(options, &c);
    return exit_code;
}
