/* common/kvchan/kvx pieces that need no UCX peer: building the iovec of a run of pool
 * blocks, the crypto worker pool (tags made on one thread verify on another;
 * one flipped byte is caught and named; how many threads it takes by
 * default), the KV port's protocol between two
 * in-memory parties (kvx_port.c), and the new/free ladder. Then a real pair
 * (P and D on one loop, UCX on loopback) for echo's prompt log-probabilities:
 * PROMPT_LP rows up as events before DONE, DONE held for the last ones, what
 * D refuses and what P refuses to send. The transport itself is tested
 * between real processes in tests/integration/test_kvx.py. */
#include "kv_fixture.h"
#include "kvx_internal.h"
#include "pd_test.h"

#include <errno.h>
#include <event2/event.h>
#include <math.h>
#include <poll.h>
#include <sched.h>

enum { BB = 64 };
static uint8_t pool[16 * BB];

static void kvx_iov_merges_adjacent_blocks(void)
{
    const uint32_t idx[] = {3, 4, 5};
    ucp_dt_iov_t iov[3];
    uint8_t *blocks[3];
    CHECK_EQ_INT(kvx_build_iov(pool, BB, idx, 3, iov, blocks), 1);
    CHECK(iov[0].buffer == pool + 3 * BB && iov[0].length == 3 * BB);
    CHECK(blocks[0] == pool + 3 * BB && blocks[2] == pool + 5 * BB);
}

static void kvx_iov_keeps_non_adjacent_blocks_apart(void)
{
    const uint32_t idx[] = {5, 3, 4, 9, 8};
    ucp_dt_iov_t iov[5];
    uint8_t *blocks[5];
    CHECK_EQ_INT(kvx_build_iov(pool, BB, idx, 5, iov, blocks), 4);
    CHECK(iov[0].buffer == pool + 5 * BB && iov[0].length == BB);
    CHECK(iov[1].buffer == pool + 3 * BB && iov[1].length == 2 * BB);
    CHECK(iov[2].buffer == pool + 9 * BB && iov[2].length == BB);
    CHECK(iov[3].buffer == pool + 8 * BB && iov[3].length == BB); /* descending: not merged */
    for (int i = 0; i < 5; i++)
        CHECK(blocks[i] == pool + idx[i] * BB);
}

/* Wait for n jobs back from the pool (the notify fd says when). */
static int take_n(struct pd_kvx_crypto *c, int fd, int n, struct pd_kvx_job **got)
{
    int k = 0;
    while (k < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) != 1)
            return k;
        for (struct pd_kvx_job *j = pd_kvx_crypto_take(c); j; j = j->next)
            got[k++] = j;
    }
    return k;
}

static void kvx_crypto_tags_verify_and_catch_one_flipped_byte(void)
{
    struct kv_pair kp;
    CHECK(kv_pair_init(&kp, 1) == 0 && kv_pair_handshake(&kp) == 0);
    struct pd_kvx_crypto *c;
    int fd;
    CHECK_EQ_INT(pd_kvx_crypto_new(2, &c, &fd), 0);
    uint8_t *blocks[16];
    uint8_t tags[16 * PD_BLOCK_TAG_LEN];
    for (int i = 0; i < 16; i++) {
        blocks[i] = pool + i * BB;
        memset(blocks[i], i * 7 + 1, BB);
    }
    struct pd_kvx_job jobs[2], *got[2];
    for (int h = 0; h < 2; h++) /* two halves, tagged on the pool's threads */
        jobs[h] = (struct pd_kvx_job){.kind = PD_KVX_JOB_TAG, .s = kp.sp, .request_id = 9,
                                      .epoch = 2, .first = (uint32_t)h * 8, .n = 8,
                                      .transfer = 5, .block_bytes = BB, .blocks = blocks + h * 8,
                                      .tags = tags + h * 8 * PD_BLOCK_TAG_LEN};
    pd_kvx_crypto_submit(c, &jobs[0]);
    pd_kvx_crypto_submit(c, &jobs[1]);
    CHECK_EQ_INT(take_n(c, fd, 2, got), 2);
    /* the receiver's session verifies them */
    struct pd_kvx_job v = {.kind = PD_KVX_JOB_VERIFY, .s = kp.sd, .request_id = 9, .epoch = 2,
                           .n = 16, .transfer = 5, .block_bytes = BB, .blocks = blocks,
                           .tags = tags};
    pd_kvx_crypto_submit(c, &v);
    CHECK_EQ_INT(take_n(c, fd, 1, got), 1);
    CHECK_EQ_INT(v.result, 0);
    blocks[11][17] ^= 0x20;
    pd_kvx_crypto_submit(c, &v);
    CHECK_EQ_INT(take_n(c, fd, 1, got), 1);
    CHECK_EQ_INT(v.result, -EKEYREJECTED);
    CHECK_EQ_INT(v.bad, 11);
    pd_kvx_crypto_free(c);
    kv_pair_done(&kp);
}

static void kvx_new_refuses_missing_pieces_and_free_accepts_null(void)
{
    struct pd_kvx *k = NULL;
    char err[256];
    struct pd_kvx_params p = {0};
    CHECK_EQ_INT(pd_kvx_new(&p, &k, err, sizeof err), -EINVAL);
    CHECK(k == NULL && strstr(err, "needed"));
    CHECK(pd_kvx_free(NULL) == NULL);
    CHECK(!strcmp(pd_kvx_hs_fail_name(PD_KVX_HSF_TIMEOUT), "timeout"));
}

/* What a kvx object on loopback needs: a loop, a one-key ring, a layout of
 * the pool's blocks; params() fills the rest for role. */
struct rig {
    struct event_base *base;
    struct pd_keyring *kr;
    struct pd_kv_layout l;
};

static void rig_init(struct rig *r)
{
    uint8_t key[PD_PSK_LEN] = {1};
    char err[256];
    r->base = event_base_new();
    CHECK(r->base && pd_keyring_new(&r->kr) == 0 &&
          pd_keyring_add(r->kr, "k1", key, err, sizeof err) == 0);
    r->l = (struct pd_kv_layout){.n_layer = 1, .n_head_kv = 1, .head_dim = 1, .block_size = 16,
                                 .block_bytes = BB};
}

static struct pd_kvx_params rig_params(struct rig *r, enum pd_role role)
{
    return (struct pd_kvx_params){.base = r->base, .role = role, .kv_ip = "127.0.0.1",
                                  .keyring = r->kr, .layout = &r->l, .pool = pool,
                                  .pool_blocks = 16};
}

static void rig_done(struct rig *r)
{
    pd_keyring_free(r->kr);
    event_base_free(r->base);
}

static void kvx_new_and_free_on_loopback(void)
{
    struct rig g;
    rig_init(&g);
    struct pd_kvx_params p = rig_params(&g, PD_ROLE_P);
    struct pd_kvx *k;
    char err[512];
    int rc = pd_kvx_new(&p, &k, err, sizeof err);
    if (rc < 0)
        PD_TEST_FAIL_("%s", err);
    CHECK_EQ_INT(pd_kvx_listen(k, err, sizeof err), 0);
    CHECK(pd_kvx_port(k) != 0);
    event_base_loop(g.base, EVLOOP_NONBLOCK);
    pd_kvx_free(k);
    rig_done(&g);
}

/* The GPU paths' parameters that cannot work are refused before UCX
 * starts: a device pool whose tags the host would have to read, a twin pool
 * beside CPU tags, without integrity, or beside a device pool. */
static void kvx_new_refuses_gpu_pools_the_host_would_read(void)
{
    struct rig g;
    rig_init(&g);
    const struct pd_kvx_params ok = rig_params(&g, PD_ROLE_D);
    struct pd_kvx *k = NULL;
    char err[512];
    struct pd_kvx_params p = ok;
    p.pool_on_device = 1; /* CPU tags */
    CHECK_EQ_INT(pd_kvx_new(&p, &k, err, sizeof err), -EINVAL);
    CHECK(k == NULL && strstr(err, "on the GPU"));
    p = ok;
    p.twin_pool = pool, p.twin_pool_blocks = 16; /* CPU tags */
    CHECK_EQ_INT(pd_kvx_new(&p, &k, err, sizeof err), -EINVAL);
    CHECK(k == NULL && strstr(err, "twin pool"));
    p.gpu_tags = 1, p.no_integrity = 1;
    CHECK_EQ_INT(pd_kvx_new(&p, &k, err, sizeof err), -EINVAL);
    p.no_integrity = 0, p.pool_on_device = 1;
    CHECK_EQ_INT(pd_kvx_new(&p, &k, err, sizeof err), -EINVAL);
    p.pool_on_device = 0, p.twin_pool_blocks = 0;
    CHECK_EQ_INT(pd_kvx_new(&p, &k, err, sizeof err), -EINVAL);
    CHECK(k == NULL);
    rig_done(&g);
}

static void kvx_parse_ports_takes_lo_hi_and_refuses_the_rest(void)
{
    char err[256];
    uint16_t lo = 7, hi = 7;
    CHECK_EQ_INT(pd_kvx_parse_ports(NULL, &lo, &hi, err, sizeof(err)), 0);
    CHECK(lo == 0 && hi == 0);
    CHECK_EQ_INT(pd_kvx_parse_ports("14600-14699", &lo, &hi, err, sizeof(err)), 0);
    CHECK(lo == 14600 && hi == 14699);
    const char *bad[] = {"", "5", "5-", "-5", "0-5", "9-8", "1-65536", "1-2x", "a-b", "1 -2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        lo = hi = 7;
        CHECK_EQ_INT(pd_kvx_parse_ports(bad[i], &lo, &hi, err, sizeof(err)), -EINVAL);
        CHECK_CONTAINS(err, "--kv-data-ports");
        CHECK(lo == 7 && hi == 7); /* untouched on failure */
    }
    /* a non-loopback --kv-ip without ports gets a warning naming it */
    CHECK_EQ_INT(pd_kvx_ports_warning("10.0.0.5", NULL, err, sizeof(err)), 1);
    CHECK_CONTAINS(err, "10.0.0.5");
    CHECK_EQ_INT(pd_kvx_ports_warning("10.0.0.5", "14600-14699", err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_kvx_ports_warning("127.0.0.1", NULL, err, sizeof(err)), 0);
}

/* ---- the KV port's protocol: two parties wired back to back in memory ---- */

struct party {
    struct kvx_port port;
    struct party *peer;
    uint8_t wire[4 * KVX_PORT_BUF]; /* what the peer sent us, not yet read */
    size_t wire_len;
    struct pd_auth_session *s;
    int eps, ups, cap;
    uint64_t tx_token;
    uint8_t addr[64];
    size_t addr_len;
};

static int p_send(void *arg, const uint8_t *b, size_t n)
{
    struct party *me = arg, *to = me->peer;
    if (n > sizeof to->wire - to->wire_len)
        return -ENOBUFS;
    memcpy(to->wire + to->wire_len, b, n);
    to->wire_len += n;
    return 0;
}

static int p_auth(void *arg, struct pd_auth_session *s)
{
    struct party *me = arg;
    me->s = s;
    return me->cap ? -EBUSY : 0;
}

static int p_endpoint(void *arg, const uint8_t *a, size_t n, uint64_t token, char *err,
                      size_t errlen)
{
    (void)err;
    (void)errlen;
    struct party *me = arg;
    me->eps++;
    me->tx_token = token;
    me->addr_len = n < sizeof me->addr ? n : sizeof me->addr;
    memcpy(me->addr, a, me->addr_len);
    return 0;
}

static void p_up(void *arg) { ((struct party *)arg)->ups++; }

static uint64_t kat_now(void) { return KAT_NOW_MS; }

/* Deliver what `me` has been sent, in reads of at most `chunk` bytes (as the
 * port asks): 0, or the port's error. */
static int pump(struct party *me, size_t chunk, struct kvx_port_err *e)
{
    size_t off = 0;
    while (off < me->wire_len && me->port.state < KP_UP) {
        size_t n;
        uint8_t *room = kvx_port_room(&me->port, &n);
        if (!room)
            break;
        if (n > chunk)
            n = chunk;
        if (n > me->wire_len - off)
            n = me->wire_len - off;
        memcpy(room, me->wire + off, n);
        off += n;
        int rc = kvx_port_arrived(&me->port, n, e);
        if (rc < 0)
            return rc;
    }
    memmove(me->wire, me->wire + off, me->wire_len - off);
    me->wire_len -= off;
    return 0;
}

struct duo {
    struct kv_pair kp;
    struct kvx_port_env env_d, env_p;
    struct party d, p;
    uint8_t waddr_d[40], waddr_p[24];
};

static void duo_init(struct duo *u)
{
    memset(u, 0, sizeof(*u));
    CHECK_EQ_INT(kv_pair_init(&u->kp, 0), 0);
    memset(u->waddr_d, 0xd0, sizeof(u->waddr_d));
    memset(u->waddr_p, 0xb0, sizeof(u->waddr_p));
    u->env_d = (struct kvx_port_env){.keyring = u->kp.kr, .key_id = KAT_KEY_ID,
                                     .layout = &u->kp.layout_d, .waddr = u->waddr_d,
                                     .waddr_len = sizeof(u->waddr_d), .now_ms = kat_now,
                                     .send = p_send, .authenticated = p_auth,
                                     .endpoint = p_endpoint, .up = p_up};
    u->env_p = u->env_d;
    u->env_p.key_id = NULL;
    u->env_p.replay = u->kp.replay;
    u->env_p.layout = &u->kp.layout_p;
    u->env_p.waddr = u->waddr_p;
    u->env_p.waddr_len = sizeof(u->waddr_p);
    u->d.peer = &u->p;
    u->p.peer = &u->d;
}

static void duo_free(struct duo *u)
{
    kvx_port_done(&u->d.port);
    kvx_port_done(&u->p.port);
    pd_auth_session_free(u->d.s);
    pd_auth_session_free(u->p.s);
    kv_pair_done(&u->kp);
}

/* Both sides started: P waiting, D's M1 on its way. */
static void duo_start(struct duo *u)
{
    struct kvx_port_err e;
    duo_init(u);
    CHECK_EQ_INT(kvx_port_init(&u->p.port, PD_ROLE_P, &u->env_p, &u->p, &e), 0);
    CHECK_EQ_INT(kvx_port_init(&u->d.port, PD_ROLE_D, &u->env_d, &u->d, &e), 0);
}

/* Run both sides until neither has anything to read: 0 or the first error. */
static int duo_run(struct duo *u, size_t chunk, struct kvx_port_err *e, int *who)
{
    for (int round = 0; round < 16; round++) {
        int rc = pump(&u->p, chunk, e);
        if (rc < 0) {
            *who = 'P';
            return rc;
        }
        if ((rc = pump(&u->d, chunk, e)) < 0) {
            *who = 'D';
            return rc;
        }
        if (!u->p.wire_len && !u->d.wire_len)
            break;
    }
    return 0;
}

static void kv_port_brings_both_sides_up_in_any_read_size(void)
{
    const size_t chunks[] = {1, 7, 24, 100, KVX_PORT_BUF};
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        struct duo u;
        struct kvx_port_err e;
        int who = 0;
        duo_start(&u);
        if (duo_run(&u, chunks[i], &e, &who) < 0)
            PD_TEST_FAIL_("chunk %zu: %c: %s", chunks[i], who, e.msg);
        CHECK_EQ_INT(u.p.port.state, KP_UP);
        CHECK_EQ_INT(u.d.port.state, KP_UP);
        CHECK(u.p.ups == 1 && u.d.ups == 1 && u.p.eps == 1 && u.d.eps == 1);
        /* each side made its endpoint from the other's address and will
         * address it by the other's token */
        CHECK(u.d.addr_len == sizeof(u.waddr_p) && memcmp(u.d.addr, u.waddr_p, u.d.addr_len) == 0);
        CHECK(u.p.addr_len == sizeof(u.waddr_d) && memcmp(u.p.addr, u.waddr_d, u.p.addr_len) == 0);
        CHECK(u.d.tx_token == u.p.port.rx_token && u.p.tx_token == u.d.port.rx_token);
        CHECK(u.d.port.rx_token != 0 && u.p.port.rx_token != u.d.port.rx_token);
        /* bytes after the session began are refused */
        size_t n = 1;
        CHECK(kvx_port_room(&u.p.port, &n) == NULL && n == 0);
        CHECK(kvx_port_arrived(&u.p.port, 1, &e) < 0);
        duo_free(&u);
    }
}

/* Every single-byte change to D's M1 is refused, counted in a class, with a
 * message, and draws no answer (the fuzz target covers the rest of the
 * stream). */
static void kv_port_refuses_any_altered_byte_from_d(void)
{
    struct duo u;
    struct kvx_port_err e;
    int who = 0;
    duo_start(&u); /* a genuine M1 as P receives it */
    uint8_t m1[PD_AUTH_MSG_MAX];
    size_t m1_len = u.p.wire_len;
    memcpy(m1, u.p.wire, m1_len);
    CHECK_EQ_INT(duo_run(&u, KVX_PORT_BUF, &e, &who), 0);
    CHECK_EQ_INT(u.p.port.state, KP_UP);
    duo_free(&u);
    /* M1 alone, altered byte by byte, into fresh responders */
    for (size_t i = 0; i < m1_len; i++) {
        struct duo v;
        duo_init(&v);
        CHECK_EQ_INT(kvx_port_init(&v.p.port, PD_ROLE_P, &v.env_p, &v.p, &e), 0);
        memcpy(v.p.wire, m1, m1_len);
        v.p.wire[i] ^= 0x01;
        v.p.wire_len = m1_len;
        int rc = pump(&v.p, KVX_PORT_BUF, &e);
        if (rc >= 0 || v.p.port.state != KP_DEAD || !e.msg[0] || e.hsf < 0 ||
            e.hsf >= PD_KVX_HSF_N)
            PD_TEST_FAIL_("byte %zu: rc %d state %d hsf %d: \"%s\"", i, rc, v.p.port.state,
                          e.hsf, rc < 0 ? e.msg : "");
        CHECK(v.d.wire_len == 0); /* nothing said back to a forged M1 */
        duo_free(&v);
    }
}

static void kv_port_cap_and_eof_are_reported(void)
{
    struct duo u;
    struct kvx_port_err e;
    int who = 0;
    duo_start(&u);
    u.p.cap = 1; /* P is at its session cap */
    CHECK(duo_run(&u, KVX_PORT_BUF, &e, &who) < 0);
    CHECK(who == 'P' && e.hsf == PD_KVX_HSF_CAP && e.reason == PD_R_OVERLOADED);
    CHECK_EQ_INT(u.p.ups, 0);
    /* D, whose peer then closes: "refused" */
    kvx_port_eof(&u.d.port, &e);
    CHECK_EQ_INT(e.hsf, PD_KVX_HSF_REFUSED);
    duo_free(&u);
    /* P: EOF with nothing said, and in the middle of a frame */
    duo_init(&u);
    CHECK_EQ_INT(kvx_port_init(&u.p.port, PD_ROLE_P, &u.env_p, &u.p, &e), 0);
    kvx_port_eof(&u.p.port, &e);
    CHECK_EQ_INT(e.hsf, PD_KVX_HSF_OTHER);
    size_t n;
    uint8_t *room = kvx_port_room(&u.p.port, &n);
    memcpy(room, "PDK", 3);
    CHECK_EQ_INT(kvx_port_arrived(&u.p.port, 3, &e), 0);
    kvx_port_eof(&u.p.port, &e);
    CHECK_EQ_INT(e.hsf, PD_KVX_HSF_GARBAGE);
    /* a first byte that is not the magic's is refused at once */
    duo_free(&u);
    duo_init(&u);
    CHECK_EQ_INT(kvx_port_init(&u.p.port, PD_ROLE_P, &u.env_p, &u.p, &e), 0);
    room = kvx_port_room(&u.p.port, &n);
    room[0] = 0;
    CHECK(kvx_port_arrived(&u.p.port, 1, &e) < 0);
    CHECK(e.hsf == PD_KVX_HSF_GARBAGE && strstr(e.msg, "magic"));
    duo_free(&u);
}

/* The seeds kat_auth.py writes for fuzz_kvport are genuine streams: they
 * bring the fuzzed side up, so the fuzzer starts past the handshake. */
static void kv_port_fuzz_seeds_are_genuine(void)
{
    const char *names[] = {"p_stream", "d_stream"};
    for (int i = 0; i < 2; i++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/kvport/%s.bin", PD_SRCDIR, names[i]);
        FILE *f = fopen(path, "rb");
        CHECK(f != NULL);
        if (!f)
            return;
        static uint8_t buf[2 * KVX_PORT_BUF];
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        struct duo u;
        struct kvx_port_err e;
        duo_init(&u);
        kv_pair_done(&u.kp);
        CHECK_EQ_INT(kv_pair_init(&u.kp, 1), 0); /* the fixed randomness */
        int d_side = buf[0] & 1;
        struct kvx_port_env env = d_side ? u.env_d : u.env_p;
        env.keyring = u.kp.kr;
        env.replay = d_side ? NULL : u.kp.replay;
        env.layout = d_side ? &u.kp.layout_d : &u.kp.layout_p;
        env.eph_sk = d_side ? u.kp.d_sk : u.kp.p_sk;
        env.nonce = d_side ? u.kp.d_nonce : u.kp.p_nonce;
        env.token = d_side ? 0x4444444444444444ull : 0x5555555555555555ull;
        struct party *me = d_side ? &u.d : &u.p;
        CHECK_EQ_INT(kvx_port_init(&me->port, d_side ? PD_ROLE_D : PD_ROLE_P, &env, me, &e), 0);
        memcpy(me->wire, buf + 1, n - 1);
        me->wire_len = n - 1;
        if (pump(me, KVX_PORT_BUF, &e) < 0)
            PD_TEST_FAIL_("%s: %s", names[i], e.msg);
        CHECK_EQ_INT(me->port.state, KP_UP);
        duo_free(&u);
    }
}

/* 0 crypto threads: a quarter of the CPUs this process may run on, at least
 * one; pinned to one CPU, one */
static void kvx_crypto_threads_default_to_a_quarter_of_the_cpus(void)
{
    cpu_set_t all, one;
    CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
    int n = CPU_COUNT(&all);
    CHECK_EQ_INT(pd_kvx_default_crypto_threads(),
                 n / 4 < 1 ? 1 : n / 4 > PD_KVX_MAX_CRYPTO_THREADS ? PD_KVX_MAX_CRYPTO_THREADS
                                                                 : n / 4);
    CPU_ZERO(&one);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &all)) {
            CPU_SET(c, &one);
            break;
        }
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
    unsigned pinned = pd_kvx_default_crypto_threads();
    CHECK(sched_setaffinity(0, sizeof all, &all) == 0);
    CHECK_EQ_INT(pinned, 1);
}

/* ---- a real pair on loopback: prefilld's kvx (P) and decoded's (D) on one
 * loop, real UCX between them; echo's prompt log-probabilities
 * (PD_PREFILL_F_PROMPT_LP, PROMPT_LP frames) ---- */

static uint8_t pool_d[16 * BB]; /* D's pool; P sends from `pool` */

enum { PT = 40, PMAX_ROWS = 64 }; /* the prompt: 40 tokens, 3 blocks of 16 */

struct pair {
    struct rig g;
    struct pd_kvx *p, *d;
    struct pd_kvx_peer *peer;
    int p_up, d_up;
    /* P: the request it holds */
    struct pd_kvx_sreq *sreq;
    struct pd_kvx_session *p_session; /* the request's: it outlives the handle */
    uint64_t pf_id;
    uint32_t pf_epoch;
    uint16_t pf_flags;
    uint32_t pf_n_logprobs, pf_n_tokens;
    int sreq_end, sreq_end_reason;
    /* D: what the events said, numbered in arrival order (0: not yet) */
    int seq, done_at, failed_at, released_at, last_lp_at, n_lp_events;
    int failed_reason;
    char failed_detail[PD_PROTO_MAX_DETAIL + 1];
    struct pd_done done;
    uint32_t lp_count[PMAX_ROWS], lp_n_top[PMAX_ROWS];
    struct pd_lp_row lp[PMAX_ROWS];
};

static void pair_p_event(void *arg, const struct pd_kvx_event *ev)
{
    struct pair *u = arg;
    switch (ev->type) {
    case PD_KVX_EV_SESSION_UP: u->p_up = 1; break;
    case PD_KVX_EV_PREFILL:
        u->sreq = ev->sreq;
        u->p_session = ev->session;
        u->pf_id = ev->prefill->request_id;
        u->pf_epoch = ev->prefill->epoch;
        u->pf_flags = ev->prefill->flags;
        u->pf_n_logprobs = ev->prefill->n_logprobs;
        u->pf_n_tokens = ev->prefill->n_tokens;
        break;
    case PD_KVX_EV_SREQ_END:
        if (ev->sreq == u->sreq)
            u->sreq = NULL;
        u->sreq_end = 1;
        u->sreq_end_reason = ev->reason;
        break;
    default: break;
    }
}

static void pair_d_event(void *arg, const struct pd_kvx_event *ev)
{
    struct pair *u = arg;
    switch (ev->type) {
    case PD_KVX_EV_SESSION_UP: u->d_up = 1; break;
    case PD_KVX_EV_PROMPT_LP: {
        const struct pd_prompt_lp *lp = ev->prompt_lp;
        u->last_lp_at = ++u->seq;
        u->n_lp_events++;
        for (uint32_t i = 0; i < lp->n_rows; i++) {
            const uint32_t pos = lp->first + i;
            if (pos >= PMAX_ROWS) {
                u->lp_count[0]++; /* position 0 never comes: check_rows fails on it */
                continue;
            }
            u->lp_count[pos]++;
            u->lp_n_top[pos] = lp->n_top;
            pd_prompt_lp_row(lp, i, &u->lp[pos]);
        }
        break;
    }
    case PD_KVX_EV_DONE:
        u->done_at = ++u->seq;
        u->done = *ev->done;
        break;
    case PD_KVX_EV_FAILED:
        u->failed_at = ++u->seq;
        u->failed_reason = ev->reason;
        snprintf(u->failed_detail, sizeof u->failed_detail, "%s", ev->detail ? ev->detail : "");
        break;
    case PD_KVX_EV_RELEASED: u->released_at = ++u->seq; break;
    default: break;
    }
}

/* Run the loop until *flag is set (10 s at most) */
static void pair_wait(struct pair *u, const int *flag)
{
    uint64_t deadline = pd_now_ns() + 10000000000ull;
    while (!*flag) {
        if (pd_now_ns() > deadline)
            PD_TEST_FAIL_("kvx pair: still waiting at the deadline");
        event_base_loop(u->g.base, EVLOOP_NONBLOCK);
        if (!*flag)
            poll(NULL, 0, 1);
    }
}

/* Run the loop for ms milliseconds */
static void pair_run_for(struct pair *u, unsigned ms)
{
    uint64_t end = pd_now_ns() + ms * 1000000ull;
    while (pd_now_ns() < end) {
        event_base_loop(u->g.base, EVLOOP_NONBLOCK);
        poll(NULL, 0, 1);
    }
}

/* P listening, D connected to it, both sessions up */
static void pair_up(struct pair *u)
{
    char err[512], hp[64];
    memset(u, 0, sizeof(*u));
    rig_init(&u->g);
    struct pd_kvx_params pp = rig_params(&u->g, PD_ROLE_P), dp = rig_params(&u->g, PD_ROLE_D);
    pp.event = pair_p_event, pp.arg = u;
    dp.event = pair_d_event, dp.arg = u;
    dp.pool = pool_d;
    if (pd_kvx_new(&pp, &u->p, err, sizeof err) < 0 || pd_kvx_listen(u->p, err, sizeof err) < 0 ||
        pd_kvx_new(&dp, &u->d, err, sizeof err) < 0)
        PD_TEST_FAIL_("%s", err);
    snprintf(hp, sizeof hp, "127.0.0.1:%u", pd_kvx_port(u->p));
    if (pd_kvx_peer_add(u->d, hp, &u->peer, err, sizeof err) < 0)
        PD_TEST_FAIL_("%s", err);
    pair_wait(u, &u->d_up);
    pair_wait(u, &u->p_up);
    CHECK(pd_kvx_peer_up(u->peer));
    CHECK_EQ_INT(pd_auth_session_minor(u->peer->session->s), 2);
}

static void pair_down(struct pair *u)
{
    pd_kvx_free(u->d);
    pd_kvx_free(u->p);
    rig_done(&u->g);
}

/* D's record of a request cleared for the next one */
static void pair_next(struct pair *u)
{
    u->sreq = NULL;
    u->sreq_end = u->sreq_end_reason = 0;
    u->seq = u->done_at = u->failed_at = u->released_at = u->last_lp_at = u->n_lp_events = 0;
    u->failed_reason = 0;
    u->failed_detail[0] = '\0';
    memset(u->lp_count, 0, sizeof u->lp_count);
}

static const uint32_t ptoks[PT] = {
    1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 65, 69, 73, 77,
    81, 85, 89, 93, 97, 101, 105, 109, 113, 117, 121, 125, 129, 133, 137, 141, 145, 149, 153, 157};

/* D asks for request id's 40-token prompt (3 blocks, into D's blocks 3, 5,
 * 9), with flags and n_logprobs; then waits for P to have it. 0 or
 * pd_kvx_request's error (P then has nothing). */
static int pair_request(struct pair *u, uint64_t id, uint16_t flags, uint32_t n_logprobs,
                        char *err, size_t errlen)
{
    static const uint32_t dest[3] = {3, 5, 9};
    struct pd_prefill p = {.request_id = id, .epoch = 1, .n_tokens = PT, .top_p = 1.0f,
                           .repetition_penalty = 1.0f, .n_logprobs = n_logprobs, .seed = 3,
                           .flags = flags, .tokens = ptoks};
    snprintf(p.xrid, sizeof p.xrid, "plp-%" PRIu64, id);
    struct pd_kvx_req *req;
    pair_next(u);
    int rc = pd_kvx_request(u->peer, &p, dest, NULL, 3, u, &req, err, errlen);
    if (rc < 0)
        return rc;
    const uint64_t deadline = pd_now_ns() + 10000000000ull;
    while (!u->sreq) { /* as pair_wait, on a pointer */
        if (pd_now_ns() > deadline)
            PD_TEST_FAIL_("request %" PRIu64 ": no PREFILL at P by the deadline", id);
        pair_run_for(u, 1);
        if (u->failed_at)
            PD_TEST_FAIL_("request %" PRIu64 " failed before P had it: %s", id, u->failed_detail);
    }
    CHECK_EQ_INT(u->pf_flags, flags);
    CHECK_EQ_INT(u->pf_n_logprobs, n_logprobs);
    CHECK_EQ_INT(u->pf_n_tokens, PT);
    return 0;
}

/* Position pos's row as P sends it: numbers made up, exact in float */
static struct pd_lp_row lp_row(uint32_t pos, uint32_t n_top)
{
    struct pd_lp_row r;
    memset(&r, 0, sizeof r);
    r.logprob = -(float)pos / 8.0f;
    for (uint32_t k = 0; k < n_top; k++)
        r.top[k] = (struct pd_logprob){.token = pos * 100 + k, .logprob = -0.5f * (float)k -
                                                                          (float)pos / 64.0f};
    if (pos == 7 && n_top)
        r.top[n_top - 1].logprob = -INFINITY; /* a filtered-out token is a log-probability */
    return r;
}

/* P sends rows [first, first + n) through pd_kvx_send_prompt_lp */
static int send_rows(struct pair *u, uint32_t first, uint32_t n, uint32_t n_top, char *err,
                     size_t errlen)
{
    struct pd_lp_row rows[PMAX_ROWS];
    for (uint32_t i = 0; i < n && i < PMAX_ROWS; i++)
        rows[i] = lp_row(first + i, n_top);
    struct pd_prompt_lp lp = {.first = first, .n_rows = n, .n_top = n_top, .rows = rows};
    return pd_kvx_send_prompt_lp(u->sreq, &lp, err, errlen);
}

/* The same frame sealed and sent on the request's session whatever P's
 * request asked, or after it ended (a peer that does not check, or a frame
 * the network delivers late) */
static void send_rows_unchecked(struct pair *u, uint32_t first, uint32_t n, uint32_t n_top)
{
    struct pd_lp_row rows[PMAX_ROWS];
    for (uint32_t i = 0; i < n && i < PMAX_ROWS; i++)
        rows[i] = lp_row(first + i, n_top);
    struct pd_frame f = {.type = PD_FT_PROMPT_LP};
    f.u.prompt_lp = (struct pd_prompt_lp){.request_id = u->pf_id, .epoch = u->pf_epoch,
                                          .first = first, .n_rows = n, .n_top = n_top,
                                          .rows = rows};
    CHECK_EQ_INT(kvx_send_ctl(u->p_session, &f), 0);
}

/* P sends the prompt's 3 blocks (its pool's 1, 2, 4, filled with a pattern) */
static void send_blocks(struct pair *u)
{
    static const uint32_t src[3] = {1, 2, 4};
    char err[256];
    for (int b = 0; b < 3; b++)
        for (int i = 0; i < BB; i++)
            pool[src[b] * BB + i] = (uint8_t)(b * 37 + i);
    CHECK_EQ_INT(pd_kvx_send_run(u->sreq, 0, src, NULL, 3, err, sizeof err), 0);
}

static void send_done(struct pair *u)
{
    char err[256];
    struct pd_done d = {.request_id = u->sreq->id, .epoch = u->sreq->epoch, .n_prompt = PT,
                        .token = 4242, .logprob = -0.25f, .n_top = 1, .top = {{4242, -0.25f}}};
    CHECK_EQ_INT(pd_kvx_send_done(u->sreq, &d, err, sizeof err), 0);
}

/* D got every position [1, PT) exactly once, each as P sent it */
static void check_rows(const struct pair *u, uint32_t n_top)
{
    CHECK_EQ_INT(u->lp_count[0], 0);
    for (uint32_t pos = 1; pos < PT; pos++) {
        const struct pd_lp_row want = lp_row(pos, n_top), *got = &u->lp[pos];
        if (u->lp_count[pos] != 1)
            PD_TEST_FAIL_("position %u came %u times", pos, u->lp_count[pos]);
        CHECK_EQ_INT(u->lp_n_top[pos], n_top);
        CHECK(got->logprob == want.logprob);
        for (uint32_t k = 0; k < n_top; k++)
            CHECK(got->top[k].token == want.top[k].token &&
                  got->top[k].logprob == want.top[k].logprob);
    }
}

/* The blocks D was granted hold what P sent */
static void check_blocks(void)
{
    static const uint32_t src[3] = {1, 2, 4}, dest[3] = {3, 5, 9};
    for (int b = 0; b < 3; b++)
        CHECK(memcmp(pool_d + dest[b] * BB, pool + src[b] * BB, BB) == 0);
}

/* Rows in two frames (1024 rows at most each, here 20 and 19), blocks,
 * DONE: every position comes up once as a PROMPT_LP event with P's numbers,
 * all before DONE; then RELEASED */
static void kvx_prompt_lp_rows_arrive_before_done(void)
{
    struct pair u;
    char err[512];
    pair_up(&u);
    if (pair_request(&u, 11, PD_PREFILL_F_PREFIX | PD_PREFILL_F_PROMPT_LP, 2, err, sizeof err) < 0)
        PD_TEST_FAIL_("%s", err);
    send_blocks(&u);
    CHECK_EQ_INT(send_rows(&u, 1, 20, 2, err, sizeof err), 0);
    CHECK_EQ_INT(send_rows(&u, 21, PT - 21, 2, err, sizeof err), 0);
    send_done(&u);
    pair_wait(&u, &u.released_at);
    if (u.failed_at)
        PD_TEST_FAIL_("request failed: %s (%d)", u.failed_detail, u.failed_reason);
    CHECK(u.done_at > 0);
    CHECK_EQ_INT(u.n_lp_events, 2);
    CHECK(u.last_lp_at < u.done_at && u.done_at < u.released_at);
    CHECK(u.done.token == 4242 && u.done.logprob == -0.25f && u.done.n_prompt == PT);
    check_rows(&u, 2);
    check_blocks();
    pair_wait(&u, &u.sreq_end);
    CHECK_EQ_INT(u.sreq_end_reason, 0);
    /* and without alternatives: rows of 4 bytes */
    if (pair_request(&u, 12, PD_PREFILL_F_PROMPT_LP, 0, err, sizeof err) < 0)
        PD_TEST_FAIL_("%s", err);
    send_blocks(&u);
    CHECK_EQ_INT(send_rows(&u, 1, PT - 1, 0, err, sizeof err), 0);
    send_done(&u);
    pair_wait(&u, &u.released_at);
    CHECK(u.done_at > 0 && !u.failed_at);
    CHECK_EQ_INT(u.n_lp_events, 1);
    check_rows(&u, 0);
    pair_wait(&u, &u.sreq_end);
    pair_down(&u);
}

/* DONE with positions still to come is held: no DONE event until every
 * position [1, n_tokens) has come, then DONE (proto.md: "DONE waits until
 * every position has come (frames may arrive out of order)"; UCX's active
 * messages are not ordered). P sends the last rows after DONE, as the
 * network may deliver them: on the session, P's handle being gone once its
 * DONE went and its runs were acknowledged. */
static void kvx_done_waits_for_every_prompt_position(void)
{
    struct pair u;
    char err[512];
    pair_up(&u);
    if (pair_request(&u, 21, PD_PREFILL_F_PROMPT_LP, 3, err, sizeof err) < 0)
        PD_TEST_FAIL_("%s", err);
    send_blocks(&u);
    CHECK_EQ_INT(send_rows(&u, 1, 30, 3, err, sizeof err), 0);
    send_done(&u);
    pair_run_for(&u, 300); /* blocks verified, DONE in, 9 positions missing */
    CHECK_EQ_INT(u.lp_count[30], 1);
    CHECK(!u.done_at && !u.failed_at && !u.released_at);
    send_rows_unchecked(&u, 31, PT - 31, 3);
    pair_wait(&u, &u.released_at);
    if (u.failed_at)
        PD_TEST_FAIL_("the last rows after DONE failed the request: %s (%s)", u.failed_detail,
                      pd_reason_name((unsigned)u.failed_reason));
    CHECK(u.done_at > u.last_lp_at);
    check_rows(&u, 3);
    check_blocks();
    pair_down(&u);
}

/* What D's kvx refuses from a peer, each failing the request (protocol):
 * rows for a request that did not ask, another number of alternatives than
 * asked, rows past the prompt, a position twice. No DONE follows; the
 * request is released and P's ends (D aborts it). */
static void kvx_bad_prompt_lp_fails_the_request(void)
{
    static const struct {
        uint16_t flags;
        uint32_t first, n_rows, n_top; /* the bad frame */
        int repeat; /* rows [1, 20) first, then the bad frame through the public call */
        const char *detail;
    } cases[] = {
        {PD_PREFILL_F_PREFIX, 1, 5, 2, 0, "did not ask"},
        {PD_PREFILL_F_PROMPT_LP, 1, 5, 3, 0, "other alternatives than asked"},
        {PD_PREFILL_F_PROMPT_LP, 1, 5, 1, 0, "other alternatives than asked"},
        {PD_PREFILL_F_PROMPT_LP, 35, 6, 2, 0, "past the prompt"}, /* 35..40 of 40 */
        {PD_PREFILL_F_PROMPT_LP, 19, 3, 2, 1, "repeats a position"},
        {PD_PREFILL_F_PROMPT_LP, 1, 1, 2, 1, "repeats a position"},
    };
    struct pair u;
    char err[512];
    pair_up(&u);
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        if (pair_request(&u, 31 + i, cases[i].flags, 2, err, sizeof err) < 0)
            PD_TEST_FAIL_("%s", err);
        send_blocks(&u);
        if (cases[i].repeat) {
            CHECK_EQ_INT(send_rows(&u, 1, 20, 2, err, sizeof err), 0);
            /* P's own check passes a repeat: only D knows what came */
            CHECK_EQ_INT(send_rows(&u, cases[i].first, cases[i].n_rows, cases[i].n_top, err,
                                   sizeof err),
                         0);
        } else {
            send_rows_unchecked(&u, cases[i].first, cases[i].n_rows, cases[i].n_top);
        }
        /* no DONE: the bad frame alone ends the request */
        pair_wait(&u, &u.released_at);
        if (!u.failed_at || u.done_at)
            PD_TEST_FAIL_("case %zu (%s): failed %d done %d", i, cases[i].detail, u.failed_at,
                          u.done_at);
        CHECK_EQ_INT(u.failed_reason, PD_R_PROTOCOL);
        CHECK_CONTAINS(u.failed_detail, cases[i].detail);
        CHECK(u.failed_at < u.released_at);
        /* nothing of the bad frame went up */
        CHECK_EQ_INT(u.n_lp_events, cases[i].repeat ? 1 : 0);
        pair_wait(&u, &u.sreq_end);
        CHECK_EQ_INT(u.sreq_end_reason, PD_R_PROTOCOL);
    }
    /* the session lives on: a good request after them completes */
    if (pair_request(&u, 40, PD_PREFILL_F_PROMPT_LP, 2, err, sizeof err) < 0)
        PD_TEST_FAIL_("%s", err);
    send_blocks(&u);
    CHECK_EQ_INT(send_rows(&u, 1, PT - 1, 2, err, sizeof err), 0);
    send_done(&u);
    pair_wait(&u, &u.released_at);
    CHECK(u.done_at && !u.failed_at);
    check_rows(&u, 2);
    pair_down(&u);
}

/* P's pd_kvx_send_prompt_lp refuses what D would: a request that did not
 * ask, other alternatives than asked, rows past the prompt; the request
 * goes on */
static void kvx_p_refuses_prompt_lp_the_request_did_not_ask_for(void)
{
    struct pair u;
    char err[512];
    pair_up(&u);
    if (pair_request(&u, 51, PD_PREFILL_F_PREFIX, 2, err, sizeof err) < 0)
        PD_TEST_FAIL_("%s", err);
    CHECK_EQ_INT(send_rows(&u, 1, 5, 2, err, sizeof err), -EINVAL);
    CHECK_CONTAINS(err, "PROMPT_LP");
    send_blocks(&u);
    send_done(&u);
    pair_wait(&u, &u.released_at);
    CHECK(u.done_at && !u.failed_at && u.n_lp_events == 0);
    pair_wait(&u, &u.sreq_end);
    if (pair_request(&u, 52, PD_PREFILL_F_PROMPT_LP, 2, err, sizeof err) < 0)
        PD_TEST_FAIL_("%s", err);
    CHECK_EQ_INT(send_rows(&u, 1, 5, 3, err, sizeof err), -EINVAL); /* 3 alternatives, 2 asked */
    CHECK_EQ_INT(send_rows(&u, 1, 5, 0, err, sizeof err), -EINVAL);
    CHECK_EQ_INT(send_rows(&u, 35, 6, 2, err, sizeof err), -EINVAL); /* past position 39 */
    CHECK_CONTAINS(err, "do not fit the request");
    CHECK_EQ_INT(send_rows(&u, PT, 1, 2, err, sizeof err), -EINVAL);
    /* what fits goes: to the last position */
    CHECK_EQ_INT(send_rows(&u, 1, PT - 1, 2, err, sizeof err), 0);
    send_blocks(&u);
    send_done(&u);
    pair_wait(&u, &u.released_at);
    CHECK(u.done_at && !u.failed_at);
    CHECK_EQ_INT(u.n_lp_events, 1);
    check_rows(&u, 2);
    pair_down(&u);
}

/* A session of protocol 1.1 knows neither the bias part nor prompt
 * log-probabilities: pd_kvx_request refuses both (-EPROTONOSUPPORT, naming
 * 1.2) and sends nothing; the prefix part alone (1.1) goes */
static void kvx_request_refuses_prompt_lp_below_minor_2(void)
{
    struct pair u;
    char err[512];
    pair_up(&u);
    struct pd_auth_session *s = u.peer->session->s;
    s->minor = 1; /* as the handshake with a 1.1 peer leaves it */
    static const uint16_t refused[] = {PD_PREFILL_F_PROMPT_LP,
                                       PD_PREFILL_F_PREFIX | PD_PREFILL_F_PROMPT_LP,
                                       PD_PREFILL_F_PROMPT_LP | PD_PREFILL_F_BIAS};
    for (size_t i = 0; i < sizeof(refused) / sizeof(*refused); i++) {
        static const struct pd_bias b[1] = {{3, 1.0f}};
        static const uint32_t dest[3] = {3, 5, 9};
        struct pd_prefill p = {.request_id = 61 + i, .epoch = 1, .n_tokens = PT, .top_p = 1.0f,
                               .repetition_penalty = 1.0f, .n_logprobs = 2, .flags = refused[i],
                               .tokens = ptoks, .xrid = "old-peer"};
        if (refused[i] & PD_PREFILL_F_BIAS)
            p.n_bias = 1, p.bias = b;
        struct pd_kvx_req *req = NULL;
        CHECK_EQ_INT(pd_kvx_request(u.peer, &p, dest, NULL, 3, &u, &req, err, sizeof err),
                     -EPROTONOSUPPORT);
        CHECK_CONTAINS(err, "protocol 1.1");
        CHECK_CONTAINS(err, "(1.2)");
        CHECK(req == NULL);
    }
    pair_run_for(&u, 100);
    CHECK(u.sreq == NULL); /* nothing reached P */
    s->minor = 2;
    pair_down(&u);
}

static const struct pd_test tests[] = {
    PD_TEST(kvx_iov_merges_adjacent_blocks),
    PD_TEST(kvx_iov_keeps_non_adjacent_blocks_apart),
    PD_TEST(kvx_crypto_tags_verify_and_catch_one_flipped_byte),
    PD_TEST(kvx_crypto_threads_default_to_a_quarter_of_the_cpus),
    PD_TEST(kvx_new_refuses_missing_pieces_and_free_accepts_null),
    PD_TEST(kvx_new_and_free_on_loopback),
    PD_TEST(kvx_new_refuses_gpu_pools_the_host_would_read),
    PD_TEST(kvx_parse_ports_takes_lo_hi_and_refuses_the_rest),
    PD_TEST(kv_port_brings_both_sides_up_in_any_read_size),
    PD_TEST(kv_port_refuses_any_altered_byte_from_d),
    PD_TEST(kv_port_cap_and_eof_are_reported),
    PD_TEST(kv_port_fuzz_seeds_are_genuine),
    PD_TEST(kvx_prompt_lp_rows_arrive_before_done),
    PD_TEST(kvx_done_waits_for_every_prompt_position),
    PD_TEST(kvx_bad_prompt_lp_fails_the_request),
    PD_TEST(kvx_p_refuses_prompt_lp_the_request_did_not_ask_for),
    PD_TEST(kvx_request_refuses_prompt_lp_below_minor_2),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
