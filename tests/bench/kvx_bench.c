/* KV transfer with common/kvchan/kvx, between two processes (docs/perf.md, "KV
 * transfer"). tests/bench/kvx_bench.py runs it beside ucx_perftest on the same
 * transports and prints the table with ratios; this program is one side:
 *
 *   kvx_bench serve --ip IP --port P [--block-bytes B] [--no-integrity]      sender
 *   kvx_bench bw    --connect IP:P --ip IP [--sizes 16K,..,64M] [--reps 5]   GB/s per run size
 *                   [--inflight-mib 16]: bytes of runs kept in flight (2 to 256 runs)
 *   kvx_bench lat   --connect IP:P --ip IP [--n 200]      one-block latency (PREFILL -> DONE)
 *   kvx_bench hs    --connect IP:P --ip IP [--n 30]       connect + handshake latency
 *   kvx_bench tags  [--block-bytes B]                     tag GB/s on one thread, and
 *                                                         kvx's default crypto threads here
 *   (--no-mm-error-handling: leave UCX's shared memory off in PEER mode, to compare)
 *   --pool host|pinned|device (CUDA builds, both sides alike): where the pools
 *       are and who tags -- host memory and the CPU's crypto threads (default);
 *       page-locked host memory beside a device pool of twins (the staged
 *       path: the sender's GPU tags each run in the twins and copies it down,
 *       the receiver's copies it up and checks it there; block i's twin is
 *       device block i); device memory UCX moves itself, tagged on the GPU
 *       (the direct path: needs a UCX that takes CUDA memory)
 *
 * Both sides need the same --block-bytes and --no-integrity. Pools are larger
 * than the last-level cache (--pool-mib, default 256 MiB each side) and runs
 * rotate through them, so no run is served from the cache. Block contents are
 * not checked here (tests/integration/test_kvx.py does that). Output lines:
 *   bw SIZE GBPS transports    lat USEC    hs USEC    tags GBPS    crypto-threads N
 * --crypto-threads N sets both sides' threads (default 0: kvx's default, a
 * quarter of the CPUs the process may run on).
 * Timings never decide a test.
 */
#include "bench_util.h"
#include "kv_fixture.h"
#include "kvx.h"

#include "pd_config.h"

#include <event2/event.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#if PD_HAVE_CUDA
#include "cuda_util.h"
#endif

static const char *ip = "127.0.0.1", *connect_to, *sizes_arg = "16K,64K,256K,1M,4M,16M,64M";
static unsigned port = 14579, reps = 5, n_iter = 0, crypto_threads; /* 0: kvx's default */
static uint64_t inflight_mib = 16; /* bw: bytes of runs in flight (2 to 16 runs) */
static uint64_t block_bytes = 16384, pool_mib = 256;
static int no_integrity, no_mm_eh;
static const char *pool_kind = "host";

static struct event_base *base;
static struct pd_kvx *kvx;
/* made in main for every mode but tags: the key both processes derive, and
 * the layout both sides announce (from --block-bytes) */
static struct pd_keyring *keys;
static struct pd_kv_layout layout;
static uint8_t *pool;
static uint32_t pool_blocks;
static void *twin_pool; /* --pool pinned: the device twins, block for block */

static double median(double *v, unsigned n)
{
    qsort(v, n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, const char *err)
{
    fprintf(stderr, "kvx_bench: %s: %s\n", what, err ? err : "");
    exit(1);
}

static void layout_of(struct pd_kv_layout *l)
{
    memset(l, 0, sizeof *l);
    l->n_layer = l->n_head_kv = l->head_dim = 1;
    l->block_size = 1; /* one token per block keeps PREFILL small for long runs */
    l->block_bytes = block_bytes;
    memset(l->fingerprint, 0xbe, sizeof l->fingerprint);
}

static struct pd_keyring *bench_keys(void)
{
    struct pd_keyring *kr;
    uint8_t key[PD_PSK_LEN];
    memset(key, 0x42, sizeof key); /* both processes derive the same test key */
    char err[256];
    if (pd_keyring_new(&kr) < 0 || pd_keyring_add(kr, "bench", key, err, sizeof err) < 0)
        die("keyring", err);
    return kr;
}

static void new_kvx(enum pd_role role, pd_kvx_event_fn fn)
{
    char err[512];
    struct pd_kvx_params p = {
        .base = base, .role = role, .kv_ip = ip, .kv_port = (uint16_t)port, .keyring = keys,
        .layout = &layout, .pool = pool, .pool_blocks = pool_blocks, .crypto_threads = crypto_threads,
        .no_integrity = no_integrity, .no_mm_error_handling = no_mm_eh, .lease_ms = 10000, .request_deadline_ms = 60000,
        .max_inflight = 1024, .event = fn,
    };
    if (strcmp(pool_kind, "host")) { /* the GPU's pools: tagged there */
        p.gpu_tags = !no_integrity;
        p.pool_on_device = !strcmp(pool_kind, "device");
        p.twin_pool = no_integrity ? NULL : twin_pool;
        p.twin_pool_blocks = p.twin_pool ? pool_blocks : 0;
    }
    if (pd_kvx_new(&p, &kvx, err, sizeof err) < 0)
        die("kvx", err);
}

static void alloc_pool(void)
{
    size_t bytes = (size_t)pool_mib << 20;
    pool_blocks = (uint32_t)(bytes / block_bytes);
    if (strcmp(pool_kind, "host")) {
#if PD_HAVE_CUDA
        char why[256];
        if (pd_cuda_probe(why, sizeof why) < 0)
            die("--pool", why);
        void *d = NULL;
        bytes = (size_t)pool_blocks * block_bytes;
        int rc = !strcmp(pool_kind, "device") ? pd_cuda_malloc(&d, bytes) : 0;
        if (rc == 0 && !d) {
            d = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            rc = d == MAP_FAILED ? -ENOMEM : pd_cuda_host_register(d, bytes);
            if (rc == 0 && (rc = pd_cuda_malloc(&twin_pool, bytes)) == 0)
                rc = pd_cuda_memset(twin_pool, 0x11, bytes);
        }
        if (rc == 0)
            rc = pd_cuda_memset(d, 0x11, bytes);
        if (rc < 0)
            die("--pool", strerror(-rc));
        pool = d;
        return;
#else
        die("--pool", "this build has no CUDA");
#endif
    }
    pool = mmap(NULL, (size_t)pool_blocks * block_bytes, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pool == MAP_FAILED)
        die("pool", "mmap");
    memset(pool, 0x11, (size_t)pool_blocks * block_bytes); /* fault every page in now */
}

/* ---- serve ---- */

static uint32_t serve_next;

static void serve_event(void *arg, const struct pd_kvx_event *ev)
{
    (void)arg;
    char err[256];
    if (ev->type != PD_KVX_EV_PREFILL)
        return;
    uint32_t n = ev->prefill->n_tokens;
    if (n > pool_blocks) {
        pd_kvx_abort(ev->sreq, PD_R_TOO_LARGE, "run larger than the pool");
        return;
    }
    if (serve_next + n > pool_blocks)
        serve_next = 0;
    uint32_t *src = malloc(n * sizeof *src);
    for (uint32_t i = 0; i < n; i++)
        src[i] = serve_next + i;
    serve_next += n;
    if (pd_kvx_send_run(ev->sreq, 0, src, twin_pool && !no_integrity ? src : NULL, n, err,
                        sizeof err) == 0) {
        struct pd_done d = {.n_prompt = n, .token = 1};
        pd_kvx_send_done(ev->sreq, &d, err, sizeof err);
    }
    free(src);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    event_base_loopbreak(base);
}

static int run_serve(void)
{
    alloc_pool();
    new_kvx(PD_ROLE_P, serve_event);
    char err[512];
    if (pd_kvx_listen(kvx, err, sizeof err) < 0)
        die("listen", err);
    printf("listening %s:%u\n", ip, pd_kvx_port(kvx));
    fflush(stdout);
    struct event *s1 = evsignal_new(base, SIGTERM, on_signal, NULL);
    struct event *s2 = evsignal_new(base, SIGINT, on_signal, NULL);
    event_add(s1, NULL);
    event_add(s2, NULL);
    event_base_dispatch(base);
    event_free(s1);
    event_free(s2);
    return 0;
}

/* ---- receiver side ---- */

static struct pd_kvx_peer *peer;
static unsigned outstanding, done_count, failed;
static int session_up;
static struct pd_kvx_session *session;
static uint64_t next_id = 1;
static uint32_t *slot_busy; /* dest slots in use */
static uint32_t slot_n; /* blocks per request */
static uint32_t n_slots, next_slot;
static double t_lat;
static unsigned lat_i, lat_n;
static double *lat;

static void recv_event(void *arg, const struct pd_kvx_event *ev)
{
    (void)arg;
    switch (ev->type) {
    case PD_KVX_EV_SESSION_UP:
        session_up = 1;
        session = ev->session;
        event_base_loopbreak(base);
        break;
    case PD_KVX_EV_SESSION_DOWN:
        session_up = 0;
        session = NULL;
        break;
    case PD_KVX_EV_DONE:
        done_count++;
        if (lat) {
            lat[lat_i++] = bench_now() - t_lat;
            event_base_loopbreak(base);
        }
        break;
    case PD_KVX_EV_FAILED:
        failed++;
        fprintf(stderr, "kvx_bench: request failed: %s (%s)\n",
                pd_reason_name((unsigned)ev->reason), ev->detail);
        break;
    case PD_KVX_EV_RELEASED:
        slot_busy[(uintptr_t)ev->udata] = 0;
        outstanding--;
        event_base_loopbreak(base);
        break;
    default:
        break;
    }
}

static void wait_up(void)
{
    double t0 = bench_now();
    while (!session_up) {
        if (bench_now() - t0 > 20)
            die("connect", connect_to);
        struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
}

static int issue(uint32_t n)
{
    char err[256];
    uint32_t s = next_slot;
    for (uint32_t k = 0; k < n_slots && slot_busy[s]; k++)
        s = (s + 1) % n_slots;
    if (slot_busy[s])
        return -1;
    next_slot = (s + 1) % n_slots;
    uint32_t *dest = malloc(n * sizeof *dest);
    for (uint32_t i = 0; i < n; i++)
        dest[i] = s * n + i;
    uint32_t *tok = calloc(n, sizeof *tok);
    struct pd_prefill p = {.request_id = next_id++, .epoch = 1, .n_tokens = n, .top_p = 1,
                           .repetition_penalty = 1, .tokens = tok};
    snprintf(p.xrid, sizeof p.xrid, "bench");
    struct pd_kvx_req *r;
    int rc = pd_kvx_request(peer, &p, dest, twin_pool && !no_integrity ? dest : NULL, n,
                            (void *)(uintptr_t)s, &r, err, sizeof err);
    free(dest);
    free(tok);
    if (rc < 0)
        die("request", err);
    slot_busy[s] = 1;
    outstanding++;
    return 0;
}

static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    if (*end == 'K' || *end == 'k')
        v <<= 10;
    else if (*end == 'M' || *end == 'm')
        v <<= 20;
    else if (*end == 'G' || *end == 'g')
        v <<= 30;
    return v;
}

static void connect_peer(void)
{
    char err[512];
    new_kvx(PD_ROLE_D, recv_event);
    if (pd_kvx_peer_add(kvx, connect_to, &peer, err, sizeof err) < 0)
        die("peer", err);
    wait_up();
}

/* requests of `blocks` blocks each, into the pool's slots of that size */
static void slots_init(uint32_t blocks)
{
    slot_n = blocks;
    n_slots = pool_blocks / slot_n;
    slot_busy = calloc(n_slots, sizeof *slot_busy);
    next_slot = 0;
}

static double bw_once(uint64_t size, unsigned total, unsigned window)
{
    uint32_t n = (uint32_t)(size / block_bytes);
    done_count = 0;
    unsigned issued = 0;
    double t0 = bench_now();
    while (done_count < total || outstanding) {
        while (issued < total && outstanding < window && issue(n) == 0)
            issued++;
        event_base_loop(base, EVLOOP_ONCE);
        if (failed)
            die("bw", "a request failed");
    }
    return (double)size * total / (bench_now() - t0) / 1e9;
}

static int run_bw(void)
{
    alloc_pool();
    connect_peer();
    char tl[256];
    pd_kvx_session_transports(session, tl, sizeof tl);
    char *list = strdup(sizes_arg);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        uint64_t size = parse_size(tok);
        if (size < block_bytes || size % block_bytes)
            die("size", "must be a multiple of --block-bytes");
        slots_init((uint32_t)(size / block_bytes));
        unsigned window = (unsigned)((inflight_mib << 20) / size);
        window = window < 2 ? 2 : window > 256 ? 256 : window;
        if (window > n_slots)
            window = n_slots;
        uint64_t want = (uint64_t)(n_iter ? n_iter : 0) * size;
        if (!want)
            want = size * 8 > (256u << 20) ? size * 8 : (256u << 20);
        unsigned total = (unsigned)(want / size);
        bw_once(size, total / 4 > 2 ? total / 4 : 2, window); /* warm-up */
        double *g = calloc(reps, sizeof *g);
        for (unsigned r = 0; r < reps; r++)
            g[r] = bw_once(size, total, window);
        printf("bw %" PRIu64 " %.3f %s\n", size, median(g, reps), tl);
        fflush(stdout);
        free(g);
        free(slot_busy);
    }
    free(list);
    return 0;
}

static int run_lat(void)
{
    alloc_pool();
    connect_peer();
    slots_init(1);
    lat_n = n_iter ? n_iter : 200;
    lat = calloc(lat_n + 20, sizeof *lat);
    for (unsigned i = 0; i < lat_n + 20; i++) { /* 20 warm-up requests */
        t_lat = bench_now();
        issue(1);
        while (outstanding)
            event_base_loop(base, EVLOOP_ONCE);
        if (i == 19)
            lat_i = 0;
    }
    printf("lat %" PRIu64 " %.1f\n", block_bytes, median(lat, lat_n) * 1e6);
    free(lat);
    free(slot_busy);
    return 0;
}

static int run_hs(void)
{
    /* small pool blocks; the layout announced keeps --block-bytes */
    block_bytes = 4096;
    pool_mib = 1;
    alloc_pool();
    unsigned n = n_iter ? n_iter : 30;
    double *v = calloc(n, sizeof *v);
    for (unsigned i = 0; i < n; i++) {
        new_kvx(PD_ROLE_D, recv_event);
        session_up = 0;
        char err[512];
        double t0 = bench_now();
        if (pd_kvx_peer_add(kvx, connect_to, &peer, err, sizeof err) < 0)
            die("peer", err);
        wait_up();
        v[i] = bench_now() - t0;
        kvx = pd_kvx_free(kvx);
    }
    printf("hs %.1f\n", median(v, n) * 1e6);
    free(v);
    return 0;
}

static int run_tags(void)
{
    struct kv_pair kp;
    if (kv_pair_init(&kp, 0) < 0 || kv_pair_handshake(&kp) < 0)
        die("tags", "handshake");
    size_t bytes = (size_t)pool_mib << 20;
    size_t nb = bytes / block_bytes;
    uint8_t *buf = malloc(bytes);
    memset(buf, 0x33, bytes);
    uint8_t tag[PD_BLOCK_TAG_LEN];
    double *g = calloc(reps, sizeof *g);
    for (unsigned r = 0; r < reps; r++) {
        double t0 = bench_now();
        for (size_t i = 0; i < nb; i++)
            pd_auth_tag_block(kp.sp, 1, 1, (uint32_t)i, 7, buf + i * block_bytes, block_bytes, tag);
        g[r] = (double)nb * block_bytes / (bench_now() - t0) / 1e9;
    }
    printf("tags %" PRIu64 " %.3f\n", block_bytes, median(g, reps));
    printf("crypto-threads %u\n", pd_kvx_default_crypto_threads());
    free(g);
    free(buf);
    kv_pair_done(&kp);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: kvx_bench serve|bw|lat|hs|tags [options] (see the source)\n");
        return 2;
    }
    const char *mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-integrity")) {
            no_integrity = 1;
            continue;
        }
        if (!strcmp(a, "--no-mm-error-handling")) {
            no_mm_eh = 1;
            continue;
        }
        if (!v)
            die("option needs a value", a);
        i++;
        if (!strcmp(a, "--ip"))
            ip = v;
        else if (!strcmp(a, "--port"))
            port = (unsigned)atoi(v);
        else if (!strcmp(a, "--connect"))
            connect_to = v;
        else if (!strcmp(a, "--sizes"))
            sizes_arg = v;
        else if (!strcmp(a, "--reps"))
            reps = (unsigned)atoi(v);
        else if (!strcmp(a, "--n"))
            n_iter = (unsigned)atoi(v);
        else if (!strcmp(a, "--block-bytes"))
            block_bytes = parse_size(v);
        else if (!strcmp(a, "--pool-mib"))
            pool_mib = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--inflight-mib"))
            inflight_mib = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--crypto-threads"))
            crypto_threads = (unsigned)atoi(v);
        else if (!strcmp(a, "--pool") &&
                 (!strcmp(v, "host") || !strcmp(v, "pinned") || !strcmp(v, "device")))
            pool_kind = v;
        else
            die("unknown option", a);
    }
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(mode, "tags"))
        return run_tags();
    base = event_base_new();
    keys = bench_keys();
    layout_of(&layout);
    int rc = 0;
    if (!strcmp(mode, "serve"))
        rc = run_serve();
    else if (!connect_to)
        die("--connect IP:PORT", "needed");
    if (!strcmp(mode, "bw"))
        rc = run_bw();
    else if (!strcmp(mode, "lat"))
        rc = run_lat();
    else if (!strcmp(mode, "hs"))
        rc = run_hs();
    else if (strcmp(mode, "serve"))
        die("unknown mode", mode);
    kvx = pd_kvx_free(kvx);
    keys = pd_keyring_free(keys);
    event_base_free(base);
    return rc;
}
