/* tests/kernels/test_tag.c: the GPU block tags (kernels/tag.cu) against
 *   - known answers from an implementation independent of ours and of
 *     libsodium: OpenSSL's Poly1305 (Python's `cryptography`, 48.0), over
 *     the message stream gen() below with the key key_kat(), at the sizes the
 *     KV channel meets (0, 1, 15, 16, 17 bytes, 16 KiB, a 2 MiB block, with
 *     and without the 24-byte authenticated prefix), and RFC 8439's vectors
 *     (2.5.2, and A.3's 5-11 for the final reduction's corners);
 *     PyNaCl 1.5 has no crypto_onetimeauth binding, so it could not be the
 *     source;
 *   - libsodium's crypto_onetimeauth (the CPU peer's tags) on random keys,
 *     lengths, prefixes and data alignments;
 *   - its own verify launcher: a match, a flipped bit in data, tag, key or
 *     prefix, and an impossible prefix length;
 *   - the KV channel's own block tags: keys and prefixes from a real
 *     session (pd_auth_tag_key) tagged on the GPU equal pd_auth_tag_block's,
 *     and the peer's pd_auth_tag_verify accepts them (a GPU prefilld and a
 *     CPU decoded interoperate, and the reverse);
 *   - kvx's crypto workers on the GPU (pd_kvx_crypto_gpu) over a page-locked
 *     pool, against its CPU workers: the same tags, a flipped byte named.
 * Without a usable GPU the device tests exit 77 with the reason; the same
 * program built against tests/kernels/emu/ (tag_emulated) runs the kernel's
 * code on the CPU, bit for bit. PD_TEST_SEED=N draws other cases.
 */
#include "kernel_test.h"
#include "pd_test.h"

#include "cuda_util.h"
#include "kv_fixture.h"
#include "kvx_internal.h"
#include "tag.h"

#include <errno.h>
#include <poll.h>
#include <sodium.h>

static void rnd_bytes(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(rnd64() >> 24);
}

/* the known-answer message stream and key (the generator in the comment of
 * kats[] below computes the same bytes) */
static uint8_t gen(uint64_t i)
{
    return (uint8_t)((i * 167 + 13) ^ (i >> 11));
}

static void key_kat(uint8_t key[PD_TAG_KEY_LEN])
{
    for (int i = 0; i < PD_TAG_KEY_LEN; i++)
        key[i] = (uint8_t)(0xA5 ^ (i * 37));
}

/* One message as the kernel sees it: a job on the host, its data in host
 * memory at offset `align` of an allocation, to be copied to the device at
 * the same offset. */
struct tag_msg {
    struct pd_tag_job job;
    uint8_t *host; /* align + len bytes */
    size_t align;
};

static void msg_set(struct tag_msg *m, const uint8_t key[PD_TAG_KEY_LEN], const uint8_t *prefix,
                    uint32_t plen, const uint8_t *data, size_t len, size_t align)
{
    memset(m, 0, sizeof(*m));
    memcpy(m->job.key, key, PD_TAG_KEY_LEN);
    if (plen <= PD_TAG_PREFIX_MAX)
        memcpy(m->job.prefix, prefix, plen);
    m->job.prefix_len = plen;
    m->job.len = len;
    m->align = align;
    m->host = malloc(align + len + 1);
    if (!m->host)
        abort();
    memcpy(m->host + align, data, len);
}

/* Device copies of n messages' data and jobs; tags (and, with want, ok
 * flags) back to the host. Returns the launcher's errno or 0. */
static int run_gpu(struct tag_msg *m, uint32_t n, const uint8_t *want, uint8_t *tags, uint8_t *ok)
{
    struct pd_tag_job *jobs = calloc(n, sizeof(*jobs));
    void **dd = calloc(n, sizeof(*dd));
    void *djobs = NULL, *dout = NULL, *dwant = NULL;
    CHECK(jobs && dd);
    for (uint32_t i = 0; i < n; i++) {
        CHECK(pd_cuda_malloc(&dd[i], m[i].align + m[i].job.len + 1) == 0);
        CHECK(pd_cuda_memcpy(dd[i], m[i].host, m[i].align + m[i].job.len) == 0);
        jobs[i] = m[i].job;
        jobs[i].data = (uint8_t *)dd[i] + m[i].align;
    }
    CHECK(pd_cuda_malloc(&djobs, n * sizeof(*jobs)) == 0);
    CHECK(pd_cuda_memcpy(djobs, jobs, n * sizeof(*jobs)) == 0);
    CHECK(pd_cuda_malloc(&dout, (size_t)n * PD_TAG_LEN) == 0);
    CHECK(pd_cuda_memset(dout, 0xee, (size_t)n * PD_TAG_LEN) == 0);
    int rc;
    if (want) {
        CHECK(pd_cuda_malloc(&dwant, (size_t)n * PD_TAG_LEN) == 0);
        CHECK(pd_cuda_memcpy(dwant, want, (size_t)n * PD_TAG_LEN) == 0);
        rc = pd_tag_verify_cuda(djobs, n, dwant, dout, NULL);
    } else {
        rc = pd_tag_cuda(djobs, n, dout, NULL);
    }
    if (rc == 0)
        rc = pd_cuda_sync();
    if (rc == 0)
        CHECK(pd_cuda_memcpy(want ? ok : tags, dout, want ? n : (size_t)n * PD_TAG_LEN) == 0);
    for (uint32_t i = 0; i < n; i++)
        pd_cuda_free(dd[i]);
    pd_cuda_free(djobs);
    pd_cuda_free(dout);
    pd_cuda_free(dwant);
    free(dd);
    free(jobs);
    return rc;
}

static void msgs_free(struct tag_msg *m, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        free(m[i].host);
}

/* libsodium's tag of prefix || data */
static void cpu_tag(const struct tag_msg *m, uint8_t tag[PD_TAG_LEN])
{
    crypto_onetimeauth_state st;
    crypto_onetimeauth_init(&st, m->job.key);
    crypto_onetimeauth_update(&st, m->job.prefix, m->job.prefix_len);
    crypto_onetimeauth_update(&st, m->host + m->align, m->job.len);
    crypto_onetimeauth_final(&st, tag);
}

static void hex(const uint8_t *b, char out[2 * PD_TAG_LEN + 1])
{
    for (int i = 0; i < PD_TAG_LEN; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* OpenSSL's tags, from:
 *   from cryptography.hazmat.primitives.poly1305 import Poly1305
 *   gen = lambda n: bytes(((i * 167 + 13) ^ (i >> 11)) & 0xff for i in range(n))
 *   key = bytes((0xA5 ^ (i * 37)) & 0xff for i in range(32))
 *   Poly1305.generate_tag(key, gen(prefix + size)).hex()
 * the first `prefix` bytes of the stream go in the job's prefix. */
static const struct {
    uint32_t prefix;
    uint32_t size;
    const char *tag;
} kats[] = {
    {0, 0, "f5d03f1a41ac8bf6dd386742a994f3de"},
    {0, 1, "65fee997bc4ae8c50094463fe4218240"},
    {0, 15, "019bc53ca21ef61c2a0c9412a5f96f5d"},
    {0, 16, "5d93d041ef8bcdc674fc160f555cf5c7"},
    {0, 17, "1764ed04c8809e79fb68a157ff11af88"},
    {0, 16384, "1bb985efefdb97cc16e67166847c63fc"},
    {0, 2097152, "646b83bfad3dc10d69b79c8329177e3a"},
    {24, 0, "19ffa648355e069bfa4c5f98f2eef7ff"},
    {24, 8, "3d6057e9758c57404476c94ffe0eb79e"},
    {24, 2097152, "1f8d11a2afcf17daa0bc12c8453b987f"},
    {32, 100, "750b97b850800672c0ff69032d00a476"},
};
#define N_KATS (sizeof kats / sizeof kats[0])

static void tag_known_answers(void)
{
    need_gpu();
    struct tag_msg m[N_KATS];
    uint8_t key[PD_TAG_KEY_LEN], tags[N_KATS * PD_TAG_LEN];
    key_kat(key);
    for (size_t i = 0; i < N_KATS; i++) {
        size_t total = kats[i].prefix + kats[i].size;
        uint8_t *s = malloc(total + 1);
        CHECK(s);
        for (size_t k = 0; k < total; k++)
            s[k] = gen(k);
        msg_set(&m[i], key, s, kats[i].prefix, s + kats[i].prefix, kats[i].size, 0);
        free(s);
    }
    CHECK_EQ_INT(run_gpu(m, N_KATS, NULL, tags, NULL), 0);
    char got[2 * PD_TAG_LEN + 1];
    for (size_t i = 0; i < N_KATS; i++) {
        hex(tags + i * PD_TAG_LEN, got);
        if (strcmp(got, kats[i].tag) != 0)
            fprintf(stderr, "  prefix %u, size %u\n", kats[i].prefix, kats[i].size);
        CHECK_STR(got, kats[i].tag);
    }
    msgs_free(m, N_KATS);
}

/* RFC 8439: 2.5.2, and appendix A.3's vectors 5-11, which reach the final
 * reduction's corners (h at or above p, a carry out of h + s) */
static const struct {
    const char *key, *msg, *tag;
} rfc[] = {
    {"85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b",
     "43727970746f6772617068696320466f72756d2052657365617263682047726f7570",
     "a8061dc1305136c6c22b8baf0c0127a9"},
    {"0200000000000000000000000000000000000000000000000000000000000000",
     "ffffffffffffffffffffffffffffffff", "03000000000000000000000000000000"},
    {"02000000000000000000000000000000ffffffffffffffffffffffffffffffff",
     "02000000000000000000000000000000", "03000000000000000000000000000000"},
    {"0100000000000000000000000000000000000000000000000000000000000000",
     "fffffffffffffffffffffffffffffffff0ffffffffffffffffffffffffffffff"
     "11000000000000000000000000000000",
     "05000000000000000000000000000000"},
    {"0100000000000000000000000000000000000000000000000000000000000000",
     "fffffffffffffffffffffffffffffffffbfefefefefefefefefefefefefefefe"
     "01010101010101010101010101010101",
     "00000000000000000000000000000000"},
    {"0200000000000000000000000000000000000000000000000000000000000000",
     "fdffffffffffffffffffffffffffffff", "faffffffffffffffffffffffffffffff"},
    {"0100000000000000040000000000000000000000000000000000000000000000",
     "e33594d7505e43b900000000000000003394d7505e4379cd0100000000000000"
     "0000000000000000000000000000000001000000000000000000000000000000",
     "14000000000000005500000000000000"},
    {"0100000000000000040000000000000000000000000000000000000000000000",
     "e33594d7505e43b900000000000000003394d7505e4379cd0100000000000000"
     "00000000000000000000000000000000",
     "13000000000000000000000000000000"},
};
#define N_RFC (sizeof rfc / sizeof rfc[0])

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

static void tag_rfc8439_vectors(void)
{
    need_gpu();
    struct tag_msg m[N_RFC];
    uint8_t tags[N_RFC * PD_TAG_LEN], key[PD_TAG_KEY_LEN], msg[64];
    for (size_t i = 0; i < N_RFC; i++) {
        CHECK_EQ_INT(unhex(rfc[i].key, key), PD_TAG_KEY_LEN);
        size_t len = unhex(rfc[i].msg, msg);
        /* split where a block tag splits: up to 24 bytes in the prefix */
        uint32_t plen = (uint32_t)(len < 24 ? len / 2 : 24);
        msg_set(&m[i], key, msg, plen, msg + plen, len - plen, i % 8);
    }
    CHECK_EQ_INT(run_gpu(m, N_RFC, NULL, tags, NULL), 0);
    char got[2 * PD_TAG_LEN + 1];
    for (size_t i = 0; i < N_RFC; i++) {
        hex(tags + i * PD_TAG_LEN, got);
        CHECK_STR(got, rfc[i].tag);
    }
    msgs_free(m, N_RFC);
}

/* Random keys (including r and s with every bit set, where the final
 * reduction and the carry out of s are exercised), lengths around the chunk
 * and lane boundaries, every prefix length, data at every alignment. */
static void tag_matches_libsodium(void)
{
    need_gpu();
    enum { N = 96 };
    static const uint32_t sizes[] = {0, 1, 7, 8, 15, 16, 17, 31, 33, 100, 8191, 8192,
                                     8200, 16 * PD_TAG_LANES - 24, 16 * PD_TAG_LANES + 5,
                                     65536, 262144 + 3};
    struct tag_msg m[N];
    uint8_t tags[N * PD_TAG_LEN], want[PD_TAG_LEN];
    for (uint32_t i = 0; i < N; i++) {
        uint8_t key[PD_TAG_KEY_LEN], prefix[PD_TAG_PREFIX_MAX];
        rnd_bytes(key, sizeof key);
        if (i % 8 == 0)
            memset(key, 0xff, sizeof key);
        rnd_bytes(prefix, sizeof prefix);
        size_t len = i < 2 * 17 ? sizes[i % 17] : rnd64() % 3000;
        uint8_t *data = malloc(len + 1);
        CHECK(data);
        rnd_bytes(data, len);
        if (i % 16 == 1)
            memset(data, 0xff, len);
        msg_set(&m[i], key, prefix, (uint32_t)(i % 4 == 0 ? 24 : rnd64() % 33), data, len,
                (size_t)(rnd64() % 8));
        free(data);
    }
    CHECK_EQ_INT(run_gpu(m, N, NULL, tags, NULL), 0);
    for (uint32_t i = 0; i < N; i++) {
        cpu_tag(&m[i], want);
        if (memcmp(tags + i * PD_TAG_LEN, want, PD_TAG_LEN) != 0)
            fprintf(stderr, "  job %u: prefix %u, len %llu, align %zu\n", i, m[i].job.prefix_len,
                    (unsigned long long)m[i].job.len, m[i].align);
        CHECK(memcmp(tags + i * PD_TAG_LEN, want, PD_TAG_LEN) == 0);
    }
    msgs_free(m, N);
}

/* verify: 1 for the genuine tag; 0 for a flipped bit anywhere it covers,
 * for another key, and for a prefix length no job can have */
static void tag_verify_fails_closed(void)
{
    need_gpu();
    enum { N = 6 };
    struct tag_msg m[N];
    uint8_t key[PD_TAG_KEY_LEN], prefix[24], data[4096], want[N * PD_TAG_LEN], ok[N];
    rnd_bytes(key, sizeof key);
    rnd_bytes(prefix, sizeof prefix);
    rnd_bytes(data, sizeof data);
    for (int i = 0; i < N; i++) {
        msg_set(&m[i], key, prefix, 24, data, sizeof data, 0);
        cpu_tag(&m[i], want + i * PD_TAG_LEN);
    }
    m[1].host[1000] ^= 0x10;     /* the data */
    want[2 * PD_TAG_LEN + 15] ^= 1; /* the tag */
    m[3].job.key[5] ^= 0x80;     /* the key (r) */
    m[4].job.prefix[9] ^= 4;     /* the prefix: another block */
    m[5].job.prefix_len = PD_TAG_PREFIX_MAX + 1;
    memset(ok, 0xee, sizeof ok);
    CHECK_EQ_INT(run_gpu(m, N, want, NULL, ok), 0);
    static const uint8_t expect[N] = {1, 0, 0, 0, 0, 0};
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(ok[i], expect[i]);
    msgs_free(m, N);
}

/* A handshaken pair's P side keys blocks as the channel does; the GPU's tags
 * are pd_auth_tag_block's, and D's CPU accepts them. Then the reverse: CPU
 * tags from P, verified on the GPU with keys from D's session. */
static void tag_interoperates_with_session_tags(void)
{
    need_gpu();
    enum { N = 12 };
    struct kv_pair kp;
    CHECK(kv_pair_init(&kp, 0) == 0);
    if (kv_pair_handshake(&kp) < 0)
        PD_TEST_FAIL_("handshake: %s", kp.err);
    struct tag_msg m[N], v[N];
    uint8_t tags[N * PD_TAG_LEN], cpu[N * PD_TAG_LEN], ok[N];
    uint64_t transfer[N];
    for (uint32_t i = 0; i < N; i++) {
        size_t len = i == 0 ? 2097152 : 16 * (1 + rnd64() % 4096);
        uint8_t *data = malloc(len), key[PD_TAG_KEY_LEN], prefix[PD_AUTH_TAG_PREFIX_LEN];
        CHECK(data);
        rnd_bytes(data, len);
        CHECK(pd_auth_transfer_next(kp.sp, &transfer[i]) == 0);
        uint64_t req = rnd64();
        uint32_t epoch = (uint32_t)rnd64(), block = i * 7 + 3;
        pd_auth_tag_key(kp.sp, req, epoch, block, transfer[i], len, key, prefix);
        msg_set(&m[i], key, prefix, PD_AUTH_TAG_PREFIX_LEN, data, len, 0);
        pd_auth_tag_block(kp.sp, req, epoch, block, transfer[i], data, len, cpu + i * PD_TAG_LEN);
        pd_auth_tag_key(kp.sd, req, epoch, block, transfer[i], len, key, prefix);
        msg_set(&v[i], key, prefix, PD_AUTH_TAG_PREFIX_LEN, data, len, 0);
        free(data);
    }
    CHECK_EQ_INT(run_gpu(m, N, NULL, tags, NULL), 0);
    CHECK(memcmp(tags, cpu, sizeof tags) == 0);
    for (uint32_t i = 0; i < N; i++) {
        const struct tag_msg *x = &m[i];
        uint64_t req = 0, len = 0;
        uint32_t epoch = 0, block = 0;
        for (int k = 7; k >= 0; k--) {
            req = req << 8 | x->job.prefix[k];
            len = len << 8 | x->job.prefix[16 + k];
        }
        for (int k = 3; k >= 0; k--) {
            epoch = epoch << 8 | x->job.prefix[8 + k];
            block = block << 8 | x->job.prefix[12 + k];
        }
        CHECK_EQ_INT(len, x->job.len);
        CHECK_EQ_INT(pd_auth_tag_verify(kp.sd, req, epoch, block, transfer[i], x->host,
                                        x->job.len, tags + i * PD_TAG_LEN),
                     0);
    }
    cpu[5 * PD_TAG_LEN] ^= 0x40; /* one forged tag among the CPU's */
    CHECK_EQ_INT(run_gpu(v, N, cpu, NULL, ok), 0);
    for (uint32_t i = 0; i < N; i++)
        CHECK_EQ_INT(ok[i], i != 5);
    msgs_free(m, N);
    msgs_free(v, N);
    kv_pair_done(&kp);
}

/* One job back from a crypto pool (its notify fd says when), or NULL. */
static struct pd_kvx_job *take_one(struct pd_kvx_crypto *c, int fd)
{
    for (int tries = 0; tries < 100; tries++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) == 1) {
            struct pd_kvx_job *j = pd_kvx_crypto_take(c);
            if (j)
                return j;
        }
    }
    return NULL;
}

static int crypto_run(struct pd_kvx_crypto *c, int fd, struct pd_kvx_job *j)
{
    pd_kvx_crypto_submit(c, j);
    return take_one(c, fd) == j ? j->result : -ETIMEDOUT;
}

/* kvx's crypto workers, gpu_threads of them for the GPU (pd_kvx_crypto_gpu
 * is the test's to call) beside one on the CPU, and a session pair whose
 * sp tags and sd verifies. */
struct crypto_rig {
    struct kv_pair kp;
    struct pd_kvx_crypto *g, *cpu;
    int gfd, cfd;
};

static void rig_init(struct crypto_rig *r, unsigned gpu_threads)
{
    CHECK(kv_pair_init(&r->kp, 0) == 0);
    if (kv_pair_handshake(&r->kp) < 0)
        PD_TEST_FAIL_("handshake: %s", r->kp.err);
    CHECK_EQ_INT(pd_kvx_crypto_new(gpu_threads, &r->g, &r->gfd), 0);
    CHECK_EQ_INT(pd_kvx_crypto_new(1, &r->cpu, &r->cfd), 0);
}

static void rig_done(struct crypto_rig *r)
{
    pd_kvx_crypto_free(r->g);
    pd_kvx_crypto_free(r->cpu);
    kv_pair_done(&r->kp);
}

static int on_gpu(struct crypto_rig *r, struct pd_kvx_job *j)
{
    return crypto_run(r->g, r->gfd, j);
}

static int on_cpu(struct crypto_rig *r, struct pd_kvx_job *j)
{
    return crypto_run(r->cpu, r->cfd, j);
}

/* kvx's crypto workers with GPU tags over a registered pool, beside its CPU
 * workers: the GPU's TAG job makes the CPU's tags, its VERIFY accepts the
 * CPU's and names the block whose byte was flipped, and a block outside the
 * pool is refused, never read. */
static void kvx_crypto_workers_on_the_gpu_match_the_cpu(void)
{
    need_gpu();
    enum {
        NB = 6,
        BB = 4096
    };
    uint8_t *pool = aligned_alloc(4096, NB * BB), *blocks[NB];
    uint8_t tg[NB * PD_TAG_LEN], tc[NB * PD_TAG_LEN];
    CHECK(pool);
    rnd_bytes(pool, NB * BB);
    CHECK_EQ_INT(pd_cuda_host_register(pool, NB * BB), 0);
    struct crypto_rig r;
    rig_init(&r, 2);
    CHECK_EQ_INT(pd_kvx_crypto_gpu(r.g, pool, NB * BB, 0), 0);
    for (int i = 0; i < NB; i++)
        blocks[i] = pool + (size_t)((i * 5) % NB) * BB; /* out of order, as a run's may be */
    struct pd_kvx_job jg = {.kind = PD_KVX_JOB_TAG,
                            .s = r.kp.sp,
                            .request_id = 77,
                            .epoch = 3,
                            .first = 10,
                            .n = NB,
                            .transfer = 5,
                            .block_bytes = BB,
                            .blocks = blocks,
                            .tags = tg};
    struct pd_kvx_job jc = jg;
    jc.tags = tc;
    CHECK_EQ_INT(on_gpu(&r, &jg), 0);
    CHECK_EQ_INT(on_cpu(&r, &jc), 0);
    CHECK(memcmp(tg, tc, sizeof tg) == 0);

    struct pd_kvx_job v = jg;
    v.kind = PD_KVX_JOB_VERIFY, v.s = r.kp.sd, v.tags = tc;
    CHECK_EQ_INT(on_gpu(&r, &v), 0);
    blocks[2][100] ^= 0x08;
    v.result = 0, v.bad = 0;
    CHECK_EQ_INT(on_gpu(&r, &v), -EKEYREJECTED);
    CHECK_EQ_INT(v.bad, 2);
    blocks[2][100] ^= 0x08;
    uint8_t outside[BB];
    blocks[4] = outside;
    CHECK_EQ_INT(on_gpu(&r, &v), -EINVAL);

    CHECK_EQ_INT(pd_cuda_host_unregister(pool), 0);
    free(pool);
    rig_done(&r);
}

/* The direct path: the pool in device memory (kvx's pool_on_device). The
 * GPU's tags of the device blocks are the CPU's of the same bytes on the
 * host; a byte flipped in place (pd_kvx_pool_flip, as --test-tamper-every
 * does) is caught in the block it was flipped in, and an eager payload
 * written in (pd_kvx_pool_write) verifies again. */
static void kvx_crypto_workers_tag_a_device_pool(void)
{
    need_gpu();
    enum {
        NB = 5,
        BB = 8192
    };
    uint8_t *host = malloc(NB * BB), *hb[NB], *db[NB], tg[NB * PD_TAG_LEN], tc[NB * PD_TAG_LEN];
    void *dev = NULL;
    CHECK(host);
    rnd_bytes(host, NB * BB);
    CHECK_EQ_INT(pd_cuda_malloc(&dev, NB * BB), 0);
    CHECK_EQ_INT(pd_cuda_memcpy(dev, host, NB * BB), 0);
    struct crypto_rig r;
    rig_init(&r, 1);
    CHECK_EQ_INT(pd_kvx_crypto_gpu(r.g, dev, NB * BB, 1), 0);
    for (int i = 0; i < NB; i++) {
        hb[i] = host + (size_t)((i * 3) % NB) * BB;
        db[i] = (uint8_t *)dev + (size_t)((i * 3) % NB) * BB;
    }
    struct pd_kvx_job jg = {.kind = PD_KVX_JOB_TAG, .s = r.kp.sp, .request_id = 9, .epoch = 1,
                            .first = 0, .n = NB, .transfer = 2, .block_bytes = BB,
                            .blocks = db, .tags = tg};
    struct pd_kvx_job jc = jg;
    jc.blocks = hb, jc.tags = tc;
    CHECK_EQ_INT(on_gpu(&r, &jg), 0);
    CHECK_EQ_INT(on_cpu(&r, &jc), 0);
    CHECK(memcmp(tg, tc, sizeof tg) == 0);

    struct pd_kvx_job v = jg;
    v.kind = PD_KVX_JOB_VERIFY, v.s = r.kp.sd;
    CHECK_EQ_INT(on_gpu(&r, &v), 0);
    CHECK_EQ_INT(pd_kvx_pool_flip(1, db[3] + 77), 0);
    v.result = 0, v.bad = 0;
    CHECK_EQ_INT(on_gpu(&r, &v), -EKEYREJECTED);
    CHECK_EQ_INT(v.bad, 3);
    CHECK_EQ_INT(pd_kvx_pool_write(1, db[3], hb[3], BB), 0);
    v.result = 0;
    CHECK_EQ_INT(on_gpu(&r, &v), 0);

    pd_cuda_free(dev);
    free(host);
    rig_done(&r);
}

/* The staged path's twin pool. decoded's side: a VERIFY job copies each
 * staged block up into its twin in device memory and checks the twin; the
 * twins then hold the staged bytes, and a byte flipped in the staging is
 * caught in the block it was flipped in. prefilld's side: a TAG job tags the
 * twins (the CPU's tags of the same bytes) and copies them down into the
 * staged blocks. A twin outside the twin pool is refused before anything is
 * copied or read. */
static void kvx_crypto_twins_are_copied_up_and_down(void)
{
    need_gpu();
    enum {
        NB = 4,
        BB = 8192
    };
    uint8_t *stage = aligned_alloc(4096, NB * BB), *back = malloc(NB * BB), *sb[NB], *tw[NB];
    uint8_t tags[NB * PD_TAG_LEN];
    void *dev = NULL;
    CHECK(stage && back);
    rnd_bytes(stage, NB * BB);
    CHECK_EQ_INT(pd_cuda_host_register(stage, NB * BB), 0);
    CHECK_EQ_INT(pd_cuda_malloc(&dev, (NB + 1) * BB), 0);
    CHECK_EQ_INT(pd_cuda_memset(dev, 0, (NB + 1) * BB), 0);
    struct crypto_rig r;
    rig_init(&r, 1);
    CHECK_EQ_INT(pd_kvx_crypto_gpu(r.g, stage, NB * BB, 0), 0);
    pd_kvx_crypto_gpu_twins(r.g, dev, NB * BB); /* the last block of dev is outside */
    for (int i = 0; i < NB; i++) {
        sb[i] = stage + (size_t)i * BB;
        tw[i] = (uint8_t *)dev + (size_t)((i + 2) % NB) * BB; /* twins in another order */
    }
    struct pd_kvx_job t = {.kind = PD_KVX_JOB_TAG, .s = r.kp.sp, .request_id = 4, .epoch = 2,
                           .first = 3, .n = NB, .transfer = 8, .block_bytes = BB,
                           .blocks = sb, .tags = tags};
    CHECK_EQ_INT(on_cpu(&r, &t), 0);
    struct pd_kvx_job v = t;
    v.kind = PD_KVX_JOB_VERIFY, v.s = r.kp.sd, v.twins = tw;
    CHECK_EQ_INT(on_gpu(&r, &v), 0);
    for (int i = 0; i < NB; i++) {
        CHECK_EQ_INT(pd_cuda_memcpy(back, tw[i], BB), 0);
        CHECK(memcmp(back, sb[i], BB) == 0);
    }
    sb[1][5] ^= 0x40;
    v.result = 0, v.bad = 0;
    CHECK_EQ_INT(on_gpu(&r, &v), -EKEYREJECTED);
    CHECK_EQ_INT(v.bad, 1);
    sb[1][5] ^= 0x40;
    uint8_t *keep = tw[3];
    tw[3] = (uint8_t *)dev + (size_t)NB * BB;
    v.result = 0;
    CHECK_EQ_INT(on_gpu(&r, &v), -EINVAL);
    t.twins = tw;
    CHECK_EQ_INT(on_gpu(&r, &t), -EINVAL);
    tw[3] = keep;
    v.result = 0; /* the flipped byte went up with its block: up again */
    CHECK_EQ_INT(on_gpu(&r, &v), 0);

    /* down: the twins hold the bytes, the staging is cleared */
    uint8_t gtags[NB * PD_TAG_LEN];
    memcpy(back, stage, NB * BB);
    memset(stage, 0, NB * BB);
    t.tags = gtags, t.result = 0;
    CHECK_EQ_INT(on_gpu(&r, &t), 0);
    CHECK(memcmp(gtags, tags, sizeof tags) == 0);
    CHECK(memcmp(stage, back, NB * BB) == 0);

    pd_cuda_free(dev);
    CHECK_EQ_INT(pd_cuda_host_unregister(stage), 0);
    free(stage);
    free(back);
    rig_done(&r);
}

/* argument errors come back before any CUDA call, GPU or not */
static void tag_launchers_refuse_bad_args(void)
{
    uint8_t b[PD_TAG_LEN];
    struct pd_tag_job j = {0};
    CHECK_EQ_INT(pd_tag_cuda(&j, 0, b, NULL), -EINVAL);
    CHECK_EQ_INT(pd_tag_cuda(NULL, 1, b, NULL), -EINVAL);
    CHECK_EQ_INT(pd_tag_cuda(&j, 1, NULL, NULL), -EINVAL);
    CHECK_EQ_INT(pd_tag_verify_cuda(&j, 1, NULL, b, NULL), -EINVAL);
    CHECK_EQ_INT(pd_tag_verify_cuda(&j, 1, b, NULL, NULL), -EINVAL);
}

static const struct pd_test tests[] = {
    PD_TEST(tag_launchers_refuse_bad_args),
    PD_TEST(tag_known_answers),
    PD_TEST(tag_rfc8439_vectors),
    PD_TEST(tag_matches_libsodium),
    PD_TEST(tag_verify_fails_closed),
    PD_TEST(tag_interoperates_with_session_tags),
    PD_TEST(kvx_crypto_workers_on_the_gpu_match_the_cpu),
    PD_TEST(kvx_crypto_workers_tag_a_device_pool),
    PD_TEST(kvx_crypto_twins_are_copied_up_and_down),
    {0},
};

int main(int argc, char **argv)
{
    (void)rng_seed_from_env();
    if (sodium_init() < 0)
        return 1;
    return pd_test_main(tests, argc, argv);
}
