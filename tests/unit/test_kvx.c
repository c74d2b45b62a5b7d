/* common/kvx pieces that need no UCX peer: building the iovec of a run of pool
 * blocks, the crypto worker pool (tags made on one thread verify on another;
 * one flipped byte is caught and named), and the new/free ladder. The
 * transport itself is tested between real processes in
 * tests/integration/test_kvx.py. */
#include "kv_fixture.h"
#include "kvx_internal.h"
#include "pd_test.h"

#include <errno.h>
#include <event2/event.h>
#include <poll.h>

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

static void kvx_new_and_free_on_loopback(void)
{
    struct event_base *base = event_base_new();
    struct pd_keyring *kr;
    uint8_t key[PD_PSK_LEN] = {1};
    char err[512];
    CHECK(pd_keyring_new(&kr) == 0 && pd_keyring_add(kr, "k1", key, err, sizeof err) == 0);
    struct pd_kv_layout l = {.n_layer = 1, .n_head_kv = 1, .head_dim = 1, .block_size = 16,
                             .block_bytes = BB};
    struct pd_kvx_params p = {.base = base, .role = PD_ROLE_P, .kv_ip = "127.0.0.1",
                              .keyring = kr, .layout = &l, .pool = pool, .pool_blocks = 16};
    struct pd_kvx *k;
    int rc = pd_kvx_new(&p, &k, err, sizeof err);
    if (rc < 0)
        PD_TEST_FAIL_("%s", err);
    CHECK_EQ_INT(pd_kvx_listen(k, err, sizeof err), 0);
    CHECK(pd_kvx_port(k) != 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    pd_kvx_free(k);
    pd_keyring_free(kr);
    event_base_free(base);
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
}

static const struct pd_test tests[] = {
    PD_TEST(kvx_iov_merges_adjacent_blocks),
    PD_TEST(kvx_iov_keeps_non_adjacent_blocks_apart),
    PD_TEST(kvx_crypto_tags_verify_and_catch_one_flipped_byte),
    PD_TEST(kvx_new_refuses_missing_pieces_and_free_accepts_null),
    PD_TEST(kvx_new_and_free_on_loopback),
    PD_TEST(kvx_parse_ports_takes_lo_hi_and_refuses_the_rest),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
