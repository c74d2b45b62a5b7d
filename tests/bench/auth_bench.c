/* KV-channel crypto cost, measured side by side in one run (docs/perf.md):
 *
 *   handshake   CPU microseconds per side (CLOCK_THREAD_CPUTIME_ID, median of
 *               many runs), beside the raw X25519 operations each side does
 *   block tags  GB/s on one core for 16 KiB .. 4 MiB blocks over a working set
 *               larger than the last-level cache, beside memcpy of the same
 *               blocks, median of repeated passes
 *   frames      seal and open per control frame, small and large
 *
 *   build/tests/bench/auth_bench            # the full run (about a minute)
 *   build/tests/bench/auth_bench --quick    # a smoke run: small set, few repeats
 *
 * Prints markdown tables. Timings never decide a test.
 */
#include "kv_fixture.h"

#include <stdlib.h>
#include <time.h>

static double now_s(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, const char *err)
{
    fprintf(stderr, "auth_bench: %s: %s\n", what, err ? err : "");
    exit(1);
}

/* ---- handshake ---- */

static void bench_handshake(int runs)
{
    double *d = calloc((size_t)runs, sizeof(*d)), *p = calloc((size_t)runs, sizeof(*p));
    double *x = calloc((size_t)runs, sizeof(*x));
    struct kv_pair kp;
    if (kv_pair_init(&kp, 0) < 0)
        die("fixture", NULL);
    pd_auth_replay_free(kp.replay); /* room for every run's nonce */
    if (pd_auth_replay_new((size_t)runs + 16, 60000, &kp.replay) < 0)
        die("replay cache", NULL);
    kp.pp.replay = kp.replay;

    for (int r = -5; r < runs; r++) { /* 5 warm-up runs */
        uint8_t none[PD_AUTH_MSG_MAX];
        size_t nn;
        double t0 = now_s(CLOCK_THREAD_CPUTIME_ID);
        if (kv_pair_m1(&kp) < 0)
            die("M1", kp.err);
        double t1 = now_s(CLOCK_THREAD_CPUTIME_ID);
        if (kv_pair_m2(&kp) < 0)
            die("M2", kp.err);
        double t2 = now_s(CLOCK_THREAD_CPUTIME_ID);
        if (kv_pair_cd(&kp) < 0)
            die("confirm D", kp.err);
        double t3 = now_s(CLOCK_THREAD_CPUTIME_ID);
        if (kv_pair_cp(&kp) != PD_AUTH_HS_DONE ||
            pd_auth_hs_take_session(kp.hp, &kp.sp) < 0)
            die("confirm P", kp.err);
        double t4 = now_s(CLOCK_THREAD_CPUTIME_ID);
        if (pd_auth_hs_step(kp.hd, kp.cp, kp.cp_len, none, sizeof(none), &nn, kp.err,
                            sizeof(kp.err)) != PD_AUTH_HS_DONE ||
            pd_auth_hs_take_session(kp.hd, &kp.sd) < 0)
            die("finish D", kp.err);
        double t5 = now_s(CLOCK_THREAD_CPUTIME_ID);

        /* the X25519 work alone: each side does one base and one shared multiplication */
        uint8_t sk[32], pk[32], dh[32];
        randombytes_buf(sk, sizeof(sk));
        double u0 = now_s(CLOCK_THREAD_CPUTIME_ID);
        crypto_scalarmult_base(pk, sk);
        if (crypto_scalarmult(dh, sk, pk) != 0)
            die("x25519", NULL);
        double u1 = now_s(CLOCK_THREAD_CPUTIME_ID);
        if (r >= 0) {
            d[r] = (t1 - t0) + (t3 - t2) + (t5 - t4);
            p[r] = (t2 - t1) + (t4 - t3);
            x[r] = u1 - u0;
        }
        kp.hd = pd_auth_hs_free(kp.hd);
        kp.hp = pd_auth_hs_free(kp.hp);
        kp.sd = pd_auth_session_free(kp.sd);
        kp.sp = pd_auth_session_free(kp.sp);
    }
    double md = median(d, runs) * 1e6, mp = median(p, runs) * 1e6, mx = median(x, runs) * 1e6;
    printf("### Handshake: CPU time per side (median of %d)\n\n", runs);
    printf("| side | pdserve handshake | 2 x X25519 alone | ratio |\n|---|---|---|---|\n");
    printf("| decoded (initiator) | %.1f µs | %.1f µs | %.2f |\n", md, mx, md / mx);
    printf("| prefilld (responder) | %.1f µs | %.1f µs | %.2f |\n\n", mp, mx, mp / mx);
    kv_pair_done(&kp);
    free(d);
    free(p);
    free(x);
}

/* ---- block tags ---- */

static void bench_tags(size_t set_bytes, int reps)
{
    static const size_t sizes[] = {16u << 10, 64u << 10, 256u << 10, 1u << 20, 4u << 20};
    struct kv_pair kp;
    uint8_t *src = malloc(set_bytes), *dst = malloc(set_bytes);
    if (!src || !dst || kv_pair_init(&kp, 0) < 0 || kv_pair_handshake(&kp) < 0)
        die("setup", kp.err);
    /* touch every page first, so no pass pays for page faults */
    randombytes_buf(src, set_bytes);
    memset(dst, 1, set_bytes);

    printf("### Block tags: one core, working set %zu MiB (median of %d passes)\n\n",
           set_bytes >> 20, reps);
    printf("| block | tag (Poly1305, one-time key per block) | memcpy of the same blocks | "
           "tag / memcpy |\n|---|---|---|---|\n");
    double *tv = calloc((size_t)reps, sizeof(*tv)), *mv = calloc((size_t)reps, sizeof(*mv));
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t bs = sizes[s], nb = set_bytes / bs;
        volatile uint8_t sink = 0;
        for (int r = 0; r < reps; r++) {
            uint64_t transfer;
            uint8_t tag[PD_BLOCK_TAG_LEN];
            double t0 = now_s(CLOCK_MONOTONIC);
            for (size_t b = 0; b < nb; b++) {
                if (pd_auth_transfer_next(kp.sp, &transfer) < 0)
                    die("transfer counter", NULL);
                pd_auth_tag_block(kp.sp, 1, 1, (uint32_t)b, transfer, src + b * bs, bs, tag);
                sink ^= tag[0];
            }
            double t1 = now_s(CLOCK_MONOTONIC);
            for (size_t b = 0; b < nb; b++)
                memcpy(dst + b * bs, src + b * bs, bs);
            double t2 = now_s(CLOCK_MONOTONIC);
            sink ^= dst[(size_t)r % set_bytes];
            tv[r] = (double)(nb * bs) / (t1 - t0) / 1e9;
            mv[r] = (double)(nb * bs) / (t2 - t1) / 1e9;
        }
        (void)sink;
        double t = median(tv, reps), m = median(mv, reps);
        char label[32];
        if (bs >= (1u << 20))
            snprintf(label, sizeof(label), "%zu MiB", bs >> 20);
        else
            snprintf(label, sizeof(label), "%zu KiB", bs >> 10);
        printf("| %s | %.2f GB/s | %.2f GB/s | %.2f |\n", label, t, m, t / m);
    }
    printf("\n");
    free(tv);
    free(mv);
    free(src);
    free(dst);
    kv_pair_done(&kp);
}

/* ---- sealed control frames ---- */

static void bench_frames(int iters)
{
    struct kv_pair kp;
    static uint32_t tokens[2048];
    static uint8_t wire[16384], plain[16384];
    if (kv_pair_init(&kp, 0) < 0 || kv_pair_handshake(&kp) < 0)
        die("setup", kp.err);
    for (size_t i = 0; i < 2048; i++)
        tokens[i] = (uint32_t)i;
    struct pd_frame frames[2] = {
        {.type = PD_FT_ACK, .u.ack = {.request_id = 1, .epoch = 1, .blocks = 1}},
        {.type = PD_FT_PREFILL,
         .u.prefill = {.request_id = 1, .n_tokens = 2048, .n_blocks = 128, .block_size = 16,
                       .top_p = 1, .repetition_penalty = 1, .tokens = tokens, .xrid = "bench"}},
    };
    const char *names[2] = {"ACK", "PREFILL, 2048 tokens"};
    printf("### Sealed control frames (ChaCha20-Poly1305, %d frames each)\n\n", iters);
    printf("| frame | bytes on the wire | encode + seal | open + decode |\n|---|---|---|---|\n");
    for (int k = 0; k < 2; k++) {
        size_t n = 0;
        struct pd_frame f;
        double t_seal = 0, t_open = 0;
        for (int i = 0; i < iters; i++) {
            double t0 = now_s(CLOCK_THREAD_CPUTIME_ID);
            if (pd_auth_seal_frame(kp.sd, &frames[k], wire, sizeof(wire), &n, kp.err,
                                   sizeof(kp.err)) < 0)
                die("seal", kp.err);
            double t1 = now_s(CLOCK_THREAD_CPUTIME_ID);
            if (pd_auth_open_frame(kp.sp, wire, n, plain, sizeof(plain), &f, kp.err,
                                   sizeof(kp.err)) < 0)
                die("open", kp.err);
            double t2 = now_s(CLOCK_THREAD_CPUTIME_ID);
            t_seal += t1 - t0;
            t_open += t2 - t1;
        }
        printf("| %s | %zu | %.2f µs | %.2f µs |\n", names[k], n, t_seal / iters * 1e6,
               t_open / iters * 1e6);
    }
    printf("\n");
    kv_pair_done(&kp);
}

static void print_cpu(void)
{
    char line[256];
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "model name", 10) == 0) {
            printf("CPU: %s", strchr(line, ':') ? strchr(line, ':') + 2 : line);
            break;
        }
    if (f)
        fclose(f);
    printf("libsodium %s\n\n", sodium_version_string());
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (pd_keyring_init() < 0)
        die("libsodium", NULL);
    print_cpu();
    bench_handshake(quick ? 20 : 500);
    bench_tags(quick ? (16u << 20) : (256u << 20), quick ? 1 : 5);
    bench_frames(quick ? 1000 : 100000);
    return 0;
}
