/* common/kvchan/auth: the KV handshake between two in-memory parties, sealed control
 * frames, block tags, and the known-answer vectors. "Refused without state
 * change" is shown by the genuine message still completing afterwards. */
#include "kat_auth.h"
#include "kv_fixture.h"
#include "pd_test.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>

#define SETUP(kp, det)                                                                     \
    struct kv_pair kp;                                                                     \
    CHECK_EQ_INT(kv_pair_init(&kp, (det)), 0)

#define HANDSHAKE(kp)                                                                      \
    do {                                                                                   \
        if (kv_pair_handshake(&(kp)) < 0)                                                  \
            PD_TEST_FAIL_("handshake: %s", (kp).err);                                      \
    } while (0)

static void step_ok(struct kv_pair *kp, int rc, int want)
{
    if (rc != want)
        PD_TEST_FAIL_("rc %d, wanted %d: %s", rc, want, kp->err);
}

/* "Refused without state change": what was refused took no replay-cache
 * entry, and the genuine messages still complete the handshake. */
static void genuine_handshake_still_completes(struct kv_pair *kp)
{
    CHECK_EQ_INT(pd_auth_replay_live(kp->replay, KAT_NOW_MS), 0);
    HANDSHAKE(*kp);
}

/* ---- handshake ---- */

static void handshake_completes_between_two_parties(void)
{
    SETUP(kp, 0);
    step_ok(&kp, kv_pair_m1(&kp), 0);
    CHECK_EQ_INT(kp.m1_len, PD_HS_HELLO_LEN);
    step_ok(&kp, kv_pair_m2(&kp), 0);
    CHECK_EQ_INT(kp.m2_len, PD_HS_HELLO_LEN);
    step_ok(&kp, kv_pair_cd(&kp), 0);
    CHECK_EQ_INT(kp.cd_len, PD_HS_CONFIRM_LEN);
    step_ok(&kp, kv_pair_cp(&kp), PD_AUTH_HS_DONE);
    CHECK_EQ_INT(kp.cp_len, PD_HS_CONFIRM_LEN);
    CHECK_EQ_INT(kv_pair_finish(&kp), 0);

    char a[17], b[17];
    pd_auth_session_id(kp.sd, a);
    pd_auth_session_id(kp.sp, b);
    CHECK_STR(a, b);
    CHECK_STR(pd_auth_session_key_id(kp.sd), KAT_KEY_ID);
    CHECK_STR(pd_auth_session_key_id(kp.sp), KAT_KEY_ID);
    CHECK_EQ_INT(pd_auth_session_role(kp.sd), PD_ROLE_D);
    CHECK_EQ_INT(pd_auth_session_role(kp.sp), PD_ROLE_P);
    CHECK_EQ_INT(pd_auth_session_minor(kp.sd), PD_PROTO_MINOR);

    /* the sessions talk to each other, both ways */
    uint8_t wire[256], plain[256];
    size_t n;
    struct pd_frame f, g;
    f = (struct pd_frame){.type = PD_FT_ACK, .u.ack = {.request_id = 9, .epoch = 1, .blocks = 2}};
    CHECK_EQ_INT(pd_auth_seal_frame(kp.sd, &f, wire, sizeof(wire), &n, kp.err, sizeof(kp.err)), 0);
    CHECK_EQ_INT(pd_auth_open_frame(kp.sp, wire, n, plain, sizeof(plain), &g, kp.err,
                                    sizeof(kp.err)), 0);
    CHECK_EQ_INT(g.u.ack.blocks, 2);
    f = (struct pd_frame){.type = PD_FT_HEARTBEAT, .u.heartbeat = {.lease_ms = 100, .seq = 5}};
    CHECK_EQ_INT(pd_auth_seal_frame(kp.sp, &f, wire, sizeof(wire), &n, kp.err, sizeof(kp.err)), 0);
    CHECK_EQ_INT(pd_auth_open_frame(kp.sd, wire, n, plain, sizeof(plain), &g, kp.err,
                                    sizeof(kp.err)), 0);
    CHECK(g.u.heartbeat.seq == 5);
    kv_pair_done(&kp);
}

static void two_handshakes_give_unrelated_sessions(void)
{
    SETUP(a, 0);
    SETUP(b, 0);
    HANDSHAKE(a);
    HANDSHAKE(b);
    CHECK(memcmp(a.sd->k_send, b.sd->k_send, 32) != 0);
    CHECK(memcmp(a.sd->k_tag, b.sd->k_tag, 32) != 0);
    CHECK(memcmp(a.sd->k_send, a.sd->k_recv, 32) != 0); /* per direction */
    kv_pair_done(&a);
    kv_pair_done(&b);
}

static void handshake_refuses_wrong_key(void)
{
    SETUP(kp, 1);
    uint8_t other[32];
    struct pd_keyring *wrong;
    struct pd_auth_hs *hs = NULL;
    uint8_t m2[PD_AUTH_MSG_MAX];
    size_t n = 0;
    kat_bytes(other, 0x33);
    CHECK_EQ_INT(pd_keyring_new(&wrong), 0);
    CHECK_EQ_INT(pd_keyring_add(wrong, KAT_KEY_ID, other, NULL, 0), 0);
    step_ok(&kp, kv_pair_m1(&kp), 0);
    struct pd_auth_params pp = kp.pp;
    pp.keyring = wrong;
    CHECK_EQ_INT(pd_auth_hs_respond(&pp, kp.m1, kp.m1_len, &hs, m2, sizeof(m2), &n, kp.err,
                                    sizeof(kp.err)), -EKEYREJECTED);
    CHECK_CONTAINS(kp.err, "M1 tag does not verify");
    CHECK(hs == NULL && n == 0);
    CHECK_EQ_INT(pd_auth_replay_live(kp.replay, KAT_NOW_MS), 0);
    /* the nonce was not burnt: the right key still completes with this M1 */
    step_ok(&kp, kv_pair_m2(&kp), 0);
    step_ok(&kp, kv_pair_cd(&kp), 0);
    step_ok(&kp, kv_pair_cp(&kp), PD_AUTH_HS_DONE);
    CHECK_EQ_INT(kv_pair_finish(&kp), 0);
    pd_keyring_free(wrong);
    kv_pair_done(&kp);
}

static void handshake_refuses_unknown_key_id(void)
{
    SETUP(kp, 1);
    uint8_t k[32];
    struct pd_keyring *d_ring;
    kat_bytes(k, 0);
    CHECK_EQ_INT(pd_keyring_new(&d_ring), 0);
    CHECK_EQ_INT(pd_keyring_add(d_ring, "retired-key", k, NULL, 0), 0);
    kp.pd.keyring = d_ring;
    kp.pd.key_id = "retired-key";
    step_ok(&kp, kv_pair_m1(&kp), 0);
    CHECK_EQ_INT(kv_pair_m2(&kp), -ENOKEY);
    CHECK_CONTAINS(kp.err, "\"retired-key\"");
    CHECK(kp.hp == NULL);
    CHECK_EQ_INT(pd_auth_replay_live(kp.replay, KAT_NOW_MS), 0);
    pd_keyring_free(d_ring);
    kv_pair_done(&kp);
}

static void initiator_refuses_key_it_does_not_hold(void)
{
    SETUP(kp, 1);
    kp.pd.key_id = "absent";
    CHECK_EQ_INT(kv_pair_m1(&kp), -ENOKEY);
    CHECK(kp.hd == NULL);
    kv_pair_done(&kp);
}

static void initiator_must_name_a_key_when_the_ring_has_several(void)
{
    SETUP(kp, 1);
    uint8_t k[32];
    kat_bytes(k, 9);
    kp.pd.key_id = NULL;
    step_ok(&kp, kv_pair_m1(&kp), 0); /* one key: it is the one */
    kp.hd = pd_auth_hs_free(kp.hd);
    CHECK_EQ_INT(pd_keyring_add(kp.kr, "second", k, NULL, 0), 0);
    CHECK_EQ_INT(kv_pair_m1(&kp), -EINVAL);
    CHECK_CONTAINS(kp.err, "name the one to use");
    kv_pair_done(&kp);
}

static void responder_accepts_any_key_in_its_ring(void)
{
    const char *ids[] = {"k-old", "k-new"};
    for (int i = 0; i < 2; i++) {
        SETUP(kp, 0);
        uint8_t k[32];
        kat_bytes(k, 0x10);
        CHECK_EQ_INT(pd_keyring_add(kp.kr, "k-old", k, NULL, 0), 0);
        kat_bytes(k, 0x20);
        CHECK_EQ_INT(pd_keyring_add(kp.kr, "k-new", k, NULL, 0), 0);
        kp.pd.key_id = ids[i];
        HANDSHAKE(kp);
        CHECK_STR(pd_auth_session_key_id(kp.sp), ids[i]);
        kv_pair_done(&kp);
    }
}

static void m1_replay_refused(void)
{
    SETUP(kp, 1);
    struct pd_auth_hs *hs2 = NULL;
    uint8_t m2[PD_AUTH_MSG_MAX];
    size_t n = 0;
    step_ok(&kp, kv_pair_m1(&kp), 0);
    step_ok(&kp, kv_pair_m2(&kp), 0);
    CHECK_EQ_INT(pd_auth_replay_live(kp.replay, KAT_NOW_MS), 1);
    CHECK_EQ_INT(pd_auth_hs_respond(&kp.pp, kp.m1, kp.m1_len, &hs2, m2, sizeof(m2), &n, kp.err,
                                    sizeof(kp.err)), -EALREADY);
    CHECK_CONTAINS(kp.err, "replay");
    CHECK(hs2 == NULL);
    CHECK_EQ_INT(pd_auth_replay_live(kp.replay, KAT_NOW_MS), 1);
    /* the first handshake is undisturbed */
    step_ok(&kp, kv_pair_cd(&kp), 0);
    step_ok(&kp, kv_pair_cp(&kp), PD_AUTH_HS_DONE);
    /* once the entry expires the nonce is forgotten (a replay then cannot
     * finish: it would need the key to confirm) */
    struct pd_auth_params later = kp.pp;
    later.now_ms = KAT_NOW_MS + 10000;
    CHECK_EQ_INT(pd_auth_hs_respond(&later, kp.m1, kp.m1_len, &hs2, m2, sizeof(m2), &n, kp.err,
                                    sizeof(kp.err)), 0);
    pd_auth_hs_free(hs2);
    kv_pair_done(&kp);
}

static void full_replay_cache_refuses_rather_than_forgets(void)
{
    SETUP(kp, 0);
    pd_auth_replay_free(kp.replay);
    CHECK_EQ_INT(pd_auth_replay_new(2, 1000, &kp.replay), 0);
    kp.pp.replay = kp.replay;
    for (int i = 0; i < 3; i++) {
        struct pd_auth_hs *hd = NULL, *hp = NULL;
        uint8_t m1[PD_AUTH_MSG_MAX], m2[PD_AUTH_MSG_MAX];
        size_t n1, n2;
        CHECK_EQ_INT(pd_auth_hs_initiate(&kp.pd, &hd, m1, sizeof(m1), &n1, kp.err,
                                         sizeof(kp.err)), 0);
        int rc = pd_auth_hs_respond(&kp.pp, m1, n1, &hp, m2, sizeof(m2), &n2, kp.err,
                                    sizeof(kp.err));
        CHECK_EQ_INT(rc, i < 2 ? 0 : -EBUSY);
        if (i == 2) {
            CHECK_CONTAINS(kp.err, "replay cache full");
            kp.pp.now_ms += 1000; /* the two live entries expire */
            CHECK_EQ_INT(pd_auth_hs_respond(&kp.pp, m1, n1, &hp, m2, sizeof(m2), &n2, kp.err,
                                            sizeof(kp.err)), 0);
        }
        pd_auth_hs_free(hd);
        pd_auth_hs_free(hp);
    }
    kv_pair_done(&kp);
}

static void reflected_confirmation_refused(void)
{
    SETUP(kp, 1);
    uint8_t own[PD_HS_CONFIRM_LEN], mine[32], out[PD_AUTH_MSG_MAX];
    size_t n = 0;
    step_ok(&kp, kv_pair_m1(&kp), 0);
    step_ok(&kp, kv_pair_m2(&kp), 0);
    /* P's own confirmation, sent back to P */
    pd_auth_confirmation(&kp.hp->keys, PD_ROLE_P, mine);
    pd_hs_confirm_encode(mine, own, sizeof(own), NULL, 0);
    CHECK_EQ_INT(pd_auth_hs_step(kp.hp, own, sizeof(own), out, sizeof(out), &n, kp.err,
                                 sizeof(kp.err)), -EKEYREJECTED);
    CHECK_CONTAINS(kp.err, "reflected");
    step_ok(&kp, kv_pair_cd(&kp), 0);
    /* D's own confirmation, sent back to D */
    CHECK_EQ_INT(pd_auth_hs_step(kp.hd, kp.cd, kp.cd_len, out, sizeof(out), &n, kp.err,
                                 sizeof(kp.err)), -EKEYREJECTED);
    step_ok(&kp, kv_pair_cp(&kp), PD_AUTH_HS_DONE);
    CHECK_EQ_INT(kv_pair_finish(&kp), 0);
    kv_pair_done(&kp);
}

static void reflected_hello_refused(void)
{
    SETUP(kp, 1);
    uint8_t out[PD_AUTH_MSG_MAX], m[PD_HS_HELLO_LEN];
    size_t n = 0;
    struct pd_auth_hs *hs = NULL;
    step_ok(&kp, kv_pair_m1(&kp), 0);
    /* D's M1 back to D as if it were M2: wrong type, and retyped, wrong MAC key */
    CHECK_EQ_INT(pd_auth_hs_step(kp.hd, kp.m1, kp.m1_len, out, sizeof(out), &n, kp.err,
                                 sizeof(kp.err)), -EBADMSG);
    memcpy(m, kp.m1, sizeof(m));
    m[6] = PD_FT_HS_M2;
    CHECK_EQ_INT(pd_auth_hs_step(kp.hd, m, sizeof(m), out, sizeof(out), &n, kp.err,
                                 sizeof(kp.err)), -EKEYREJECTED);
    step_ok(&kp, kv_pair_m2(&kp), 0);
    /* P's M2 to a responder as an M1, as is and retyped */
    CHECK_EQ_INT(pd_auth_hs_respond(&kp.pp, kp.m2, kp.m2_len, &hs, out, sizeof(out), &n, kp.err,
                                    sizeof(kp.err)), -EBADMSG);
    memcpy(m, kp.m2, sizeof(m));
    m[6] = PD_FT_HS_M1;
    CHECK_EQ_INT(pd_auth_hs_respond(&kp.pp, m, sizeof(m), &hs, out, sizeof(out), &n, kp.err,
                                    sizeof(kp.err)), -EKEYREJECTED);
    CHECK(hs == NULL);
    step_ok(&kp, kv_pair_cd(&kp), 0);
    step_ok(&kp, kv_pair_cp(&kp), PD_AUTH_HS_DONE);
    kv_pair_done(&kp);
}

/* Feeds every prefix, or every single-bit flip, of msg to `feed`; each must be
 * refused. */
typedef int (*feed_fn)(struct kv_pair *kp, const uint8_t *msg, size_t len);

static void all_refused(struct kv_pair *kp, const uint8_t *msg, size_t len, feed_fn feed,
                        int flips)
{
    uint8_t *m = malloc(len);
    for (size_t i = 0; i < (flips ? 8 * len : len); i++) {
        memcpy(m, msg, len);
        if (flips)
            m[i / 8] ^= (uint8_t)(1u << (i % 8));
        /* truncations: a buffer of exactly i bytes, so ASan sees any overread */
        uint8_t *in = flips ? m : memcpy(malloc(i ? i : 1), msg, i);
        int rc = feed(kp, in, flips ? len : i);
        if (!flips)
            free(in);
        if (rc >= 0) {
            free(m);
            PD_TEST_FAIL_("%s %zu accepted", flips ? "bit flip" : "truncation to", i);
        }
    }
    free(m);
}

static int feed_m1(struct kv_pair *kp, const uint8_t *msg, size_t len)
{
    struct pd_auth_hs *hs = NULL;
    uint8_t out[PD_AUTH_MSG_MAX];
    size_t n;
    int rc = pd_auth_hs_respond(&kp->pp, msg, len, &hs, out, sizeof(out), &n, kp->err,
                                sizeof(kp->err));
    pd_auth_hs_free(hs);
    return rc;
}

static int feed_step(struct pd_auth_hs *hs, struct kv_pair *kp, const uint8_t *msg, size_t len)
{
    uint8_t out[PD_AUTH_MSG_MAX];
    size_t n;
    return pd_auth_hs_step(hs, msg, len, out, sizeof(out), &n, kp->err, sizeof(kp->err));
}
static int feed_to_d(struct kv_pair *kp, const uint8_t *m, size_t n) { return feed_step(kp->hd, kp, m, n); }
static int feed_to_p(struct kv_pair *kp, const uint8_t *m, size_t n) { return feed_step(kp->hp, kp, m, n); }

static void every_truncation_of_m1_refused(void)
{
    SETUP(kp, 1);
    step_ok(&kp, kv_pair_m1(&kp), 0);
    all_refused(&kp, kp.m1, kp.m1_len, feed_m1, 0);
    genuine_handshake_still_completes(&kp);
    kv_pair_done(&kp);
}

static void every_bit_flip_of_m1_refused(void)
{
    SETUP(kp, 1);
    step_ok(&kp, kv_pair_m1(&kp), 0);
    all_refused(&kp, kp.m1, kp.m1_len, feed_m1, 1);
    CHECK_EQ_INT(pd_auth_replay_live(kp.replay, KAT_NOW_MS), 0);
    step_ok(&kp, kv_pair_m2(&kp), 0);
    kv_pair_done(&kp);
}

static void every_truncation_and_bit_flip_of_m2_refused(void)
{
    SETUP(kp, 1);
    step_ok(&kp, kv_pair_m1(&kp), 0);
    step_ok(&kp, kv_pair_m2(&kp), 0);
    all_refused(&kp, kp.m2, kp.m2_len, feed_to_d, 0);
    all_refused(&kp, kp.m2, kp.m2_len, feed_to_d, 1);
    step_ok(&kp, kv_pair_cd(&kp), 0); /* D's state is as it was */
    step_ok(&kp, kv_pair_cp(&kp), PD_AUTH_HS_DONE);
    CHECK_EQ_INT(kv_pair_finish(&kp), 0);
    kv_pair_done(&kp);
}

static void every_truncation_and_bit_flip_of_confirmations_refused(void)
{
    SETUP(kp, 1);
    step_ok(&kp, kv_pair_m1(&kp), 0);
    step_ok(&kp, kv_pair_m2(&kp), 0);
    step_ok(&kp, kv_pair_cd(&kp), 0);
    all_refused(&kp, kp.cd, kp.cd_len, feed_to_p, 0);
    all_refused(&kp, kp.cd, kp.cd_len, feed_to_p, 1);
    step_ok(&kp, kv_pair_cp(&kp), PD_AUTH_HS_DONE);
    all_refused(&kp, kp.cp, kp.cp_len, feed_to_d, 0);
    all_refused(&kp, kp.cp, kp.cp_len, feed_to_d, 1);
    CHECK_EQ_INT(kv_pair_finish(&kp), 0);
    kv_pair_done(&kp);
}

static void layout_mismatch_names_both_values(void)
{
    SETUP(kp, 1);
    kp.layout_p.block_size = 32;
    kp.layout_p.kv_dtype = 0; /* F32 */
    step_ok(&kp, kv_pair_m1(&kp), 0);
    CHECK_EQ_INT(kv_pair_m2(&kp), -EPROTO);
    CHECK_CONTAINS(kp.err, "KV layout");
    CHECK_CONTAINS(kp.err, "block_size: ours 32, peer 16");
    CHECK_CONTAINS(kp.err, "kv_dtype: ours F32, peer F16");
    kp.layout_p = kat_layout();
    genuine_handshake_still_completes(&kp);
    kv_pair_done(&kp);
}

static void fingerprint_mismatch_names_both_prefixes(void)
{
    SETUP(kp, 1);
    kp.layout_p.fingerprint[0] = 0x12;
    step_ok(&kp, kv_pair_m1(&kp), 0);
    CHECK_EQ_INT(kv_pair_m2(&kp), -EPROTO);
    CHECK_CONTAINS(kp.err, "model fingerprint: ours 12e1e2e3e4e5e6e7..., peer e0e1e2e3e4e5e6e7...");
    kv_pair_done(&kp);
}

static void initiator_checks_the_layout_too(void)
{
    /* a responder that (wrongly) accepts any layout: D still refuses */
    SETUP(kp, 1);
    struct pd_kv_layout other = kat_layout();
    other.n_layer = 31;
    step_ok(&kp, kv_pair_m1(&kp), 0);
    /* an M2 with a valid tag (the peer holds the key) announcing `other` */
    uint8_t psk[32], k_m1[32], k_m2[32], pk[32], m2[PD_HS_HELLO_LEN], out[PD_AUTH_MSG_MAX];
    size_t n;
    struct pd_hs_hello h = {.layout = other};
    strcpy(h.key_id, KAT_KEY_ID);
    crypto_scalarmult_base(pk, kp.p_sk);
    memcpy(h.eph_pk, pk, 32);
    kat_bytes(psk, KAT_PSK_BASE);
    pd_auth_hello_keys(psk, k_m1, k_m2);
    CHECK_EQ_INT(pd_hs_hello_encode(PD_FT_HS_M2, &h, m2, sizeof(m2), NULL, 0), 0);
    crypto_generichash(m2 + PD_HS_HELLO_TAG_OFF, 32, m2, PD_HS_HELLO_TAG_OFF, k_m2, 32);
    CHECK_EQ_INT(pd_auth_hs_step(kp.hd, m2, sizeof(m2), out, sizeof(out), &n, kp.err,
                                 sizeof(kp.err)), -EPROTO);
    CHECK_CONTAINS(kp.err, "n_layer: ours 30, peer 31");
    kv_pair_done(&kp);
}

/* The seven low-order points of Curve25519 that libsodium refuses. */
static const char *const low_order_hex[] = {
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
};

/* A hello carrying pk, with a valid MAC (as only a key holder could make). */
static void forge_hello(uint8_t type, const uint8_t pk[32], uint8_t nonce_base, uint8_t *out)
{
    uint8_t psk[32], k[2][32];
    struct pd_hs_hello h = {.layout = kat_layout()};
    strcpy(h.key_id, KAT_KEY_ID);
    memcpy(h.eph_pk, pk, 32);
    kat_bytes(h.nonce, nonce_base);
    kat_bytes(psk, KAT_PSK_BASE);
    pd_auth_hello_keys(psk, k[0], k[1]);
    if (pd_hs_hello_encode(type, &h, out, PD_HS_HELLO_LEN, NULL, 0) < 0)
        PD_TEST_FAIL_("encode");
    crypto_generichash(out + PD_HS_HELLO_TAG_OFF, 32, out, PD_HS_HELLO_TAG_OFF,
                       k[type == PD_FT_HS_M2], 32);
}

static void low_order_point_refused(void)
{
    SETUP(kp, 1);
    step_ok(&kp, kv_pair_m1(&kp), 0);
    for (size_t i = 0; i < sizeof(low_order_hex) / sizeof(low_order_hex[0]); i++) {
        uint8_t pk[32], m[PD_HS_HELLO_LEN];
        CHECK_EQ_INT(sodium_hex2bin(pk, 32, low_order_hex[i], 64, NULL, NULL, NULL), 0);
        /* as M1, to P (a distinct nonce each, so the replay cache is not what refuses) */
        forge_hello(PD_FT_HS_M1, pk, (uint8_t)(0x10 + i), m);
        CHECK_EQ_INT(feed_m1(&kp, m, sizeof(m)), -EKEYREJECTED);
        CHECK_CONTAINS(kp.err, "low-order");
        /* as M2, to D */
        forge_hello(PD_FT_HS_M2, pk, 0x20, m);
        CHECK_EQ_INT(feed_to_d(&kp, m, sizeof(m)), -EKEYREJECTED);
        CHECK_CONTAINS(kp.err, "low-order");
    }
    genuine_handshake_still_completes(&kp);
    kv_pair_done(&kp);
}

static void other_major_version_refused_naming_both(void)
{
    SETUP(kp, 1);
    step_ok(&kp, kv_pair_m1(&kp), 0);
    kp.m1[4] = 2;
    CHECK_EQ_INT(kv_pair_m2(&kp), -EPROTONOSUPPORT);
    CHECK_CONTAINS(kp.err, "ours 1.2, peer 2.2");
    kv_pair_done(&kp);
}

static void finished_handshake_refuses_further_use(void)
{
    SETUP(kp, 1);
    struct pd_auth_session *s;
    uint8_t out[PD_AUTH_MSG_MAX];
    size_t n;
    step_ok(&kp, kv_pair_m1(&kp), 0);
    CHECK_EQ_INT(pd_auth_hs_take_session(kp.hd, &s), -EINVAL); /* not yet */
    HANDSHAKE(kp);
    CHECK_EQ_INT(pd_auth_hs_take_session(kp.hd, &s), -EINVAL); /* once only */
    CHECK_EQ_INT(pd_auth_hs_step(kp.hd, kp.cp, kp.cp_len, out, sizeof(out), &n, kp.err,
                                 sizeof(kp.err)), -EINVAL);
    kv_pair_done(&kp);
}

static void handshake_states_are_wiped_of_secrets(void)
{
    SETUP(kp, 1);
    uint8_t zero[32] = {0};
    step_ok(&kp, kv_pair_m1(&kp), 0);
    CHECK(memcmp(kp.hd->eph_sk, zero, 32) != 0);
    step_ok(&kp, kv_pair_m2(&kp), 0);
    CHECK(memcmp(kp.hp->psk, zero, 32) == 0);
    step_ok(&kp, kv_pair_cd(&kp), 0);
    CHECK(memcmp(kp.hd->eph_sk, zero, 32) == 0 && memcmp(kp.hd->psk, zero, 32) == 0);
    step_ok(&kp, kv_pair_cp(&kp), PD_AUTH_HS_DONE);
    CHECK_EQ_INT(kv_pair_finish(&kp), 0);
    CHECK(memcmp(kp.hd->keys.master, zero, 32) == 0 && memcmp(kp.hp->keys.tag, zero, 32) == 0);
    kv_pair_done(&kp);
}

/* ---- sealed control frames ---- */

static struct pd_frame ack_frame(uint32_t blocks)
{
    return (struct pd_frame){.type = PD_FT_ACK,
                             .u.ack = {.request_id = 77, .epoch = 1, .blocks = blocks}};
}

/* D seals n ACK frames into wires[i] (each 64 bytes), blocks = i. */
static void seal_many(struct kv_pair *kp, uint8_t (*wires)[64], size_t *lens, int n)
{
    for (int i = 0; i < n; i++) {
        struct pd_frame f = ack_frame((uint32_t)i);
        if (pd_auth_seal_frame(kp->sd, &f, wires[i], 64, &lens[i], kp->err, sizeof(kp->err)) < 0)
            PD_TEST_FAIL_("seal: %s", kp->err);
    }
}

static int open_on_p(struct kv_pair *kp, const uint8_t *w, size_t n, struct pd_frame *f)
{
    uint8_t plain[256];
    return pd_auth_open_frame(kp->sp, w, n, plain, sizeof(plain), f, kp->err, sizeof(kp->err));
}

/* A handshaken pair, and n ACK frames D sealed for P: wire[i] (len[i] bytes)
 * carries blocks = i under counter i + 1. */
struct sealed {
    struct kv_pair kp;
    uint8_t (*wire)[64]; /* (n, 64) */
    size_t *len; /* (n) */
    struct pd_frame f; /* the frame sealed_open opened last */
};

static void sealed_init(struct sealed *s, int n)
{
    CHECK_EQ_INT(kv_pair_init(&s->kp, 0), 0);
    HANDSHAKE(s->kp);
    s->wire = calloc((size_t)n, sizeof(*s->wire));
    s->len = calloc((size_t)n, sizeof(*s->len));
    CHECK(s->wire && s->len);
    seal_many(&s->kp, s->wire, s->len, n);
}

/* frame i opened at P, into s->f */
static int sealed_open(struct sealed *s, int i)
{
    return open_on_p(&s->kp, s->wire[i], s->len[i], &s->f);
}

static void sealed_done(struct sealed *s)
{
    free(s->wire);
    free(s->len);
    kv_pair_done(&s->kp);
}

static void sealed_frames_of_every_type_open_at_the_peer(void)
{
    SETUP(kp, 0);
    HANDSHAKE(kp);
    uint8_t tags[32] = {1}, wire[1024], plain[1024];
    const uint32_t toks[3] = {5, 6, 7};
    struct pd_frame fs[] = {
        {.type = PD_FT_PREFILL, .u.prefill = {.request_id = 1, .n_tokens = 3, .n_blocks = 1,
                                              .block_size = 16, .top_p = 1, .repetition_penalty = 1,
                                              .tokens = toks, .xrid = "r1"}},
        {.type = PD_FT_CHUNK, .u.chunk = {.request_id = 1, .n_blocks = 2, .transfer = 1,
                                          .block_bytes = 4096, .tags = tags}},
        {.type = PD_FT_ACK, .u.ack = {.request_id = 1, .blocks = 2}},
        {.type = PD_FT_DONE, .u.done = {.request_id = 1, .n_prompt = 3, .token = 9, .logprob = -1}},
        {.type = PD_FT_ABORT, .u.abort = {.request_id = 1, .reason = PD_R_TIMEOUT, .detail = "x"}},
        {.type = PD_FT_ABORT_ACK, .u.abort_ack = {.request_id = 1}},
        {.type = PD_FT_CANCEL, .u.cancel = {.request_id = 1}},
        {.type = PD_FT_HEARTBEAT, .u.heartbeat = {.lease_ms = 10, .seq = 1}},
        {.type = PD_FT_ERROR, .u.error = {.reason = PD_R_SHUTDOWN}},
    };
    for (size_t i = 0; i < sizeof(fs) / sizeof(fs[0]); i++) {
        int from_d = pd_frame_sender_ok(fs[i].type, PD_ROLE_D);
        struct pd_auth_session *tx = from_d ? kp.sd : kp.sp, *rx = from_d ? kp.sp : kp.sd;
        size_t n;
        struct pd_frame g;
        CHECK_EQ_INT(pd_auth_seal_frame(tx, &fs[i], wire, sizeof(wire), &n, kp.err,
                                        sizeof(kp.err)), 0);
        CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + pd_frame_body_len(&fs[i]) + PD_FRAME_MAC_LEN);
        /* the body is not in clear on the wire */
        uint8_t clear[1024];
        size_t cn;
        CHECK_EQ_INT(pd_frame_encode(&fs[i], 0, clear, sizeof(clear), &cn, NULL, 0), 0);
        CHECK(memcmp(clear + PD_FRAME_HDR_LEN, wire + PD_FRAME_HDR_LEN, cn - PD_FRAME_HDR_LEN) != 0);
        CHECK_EQ_INT(pd_auth_open_frame(rx, wire, n, plain, sizeof(plain), &g, kp.err,
                                        sizeof(kp.err)), 0);
        CHECK_EQ_INT(g.type, fs[i].type);
        CHECK_EQ_INT(pd_frame_body_len(&g), pd_frame_body_len(&fs[i]));
    }
    kv_pair_done(&kp);
}

static void seal_assigns_increasing_counters(void)
{
    struct sealed s;
    sealed_init(&s, 4);
    for (int i = 0; i < 4; i++) {
        struct pd_frame_hdr h;
        CHECK_EQ_INT(pd_frame_hdr_decode(s.wire[i], s.len[i], &h, NULL, 0), 0);
        CHECK(h.seq == (uint64_t)i + 1);
    }
    sealed_done(&s);
}

static void sealed_frame_replay_refused(void)
{
    struct sealed s;
    sealed_init(&s, 2);
    CHECK_EQ_INT(sealed_open(&s, 0), 0);
    CHECK_EQ_INT(sealed_open(&s, 0), -EALREADY);
    CHECK_CONTAINS(s.kp.err, "replay");
    CHECK_EQ_INT(sealed_open(&s, 1), 0);
    CHECK_EQ_INT(s.f.u.ack.blocks, 1);
    CHECK_EQ_INT(sealed_open(&s, 1), -EALREADY);
    sealed_done(&s);
}

static void reorder_within_window_accepted(void)
{
    enum { N = 64 };
    struct sealed s;
    sealed_init(&s, N);
    /* newest first, then the rest in a scrambled order: all accepted once */
    CHECK_EQ_INT(sealed_open(&s, N - 1), 0);
    for (int k = 0; k < N - 1; k++) {
        int i = (k * 37) % (N - 1);
        CHECK_EQ_INT(sealed_open(&s, i), 0);
        CHECK_EQ_INT(s.f.u.ack.blocks, i);
    }
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(sealed_open(&s, i), -EALREADY);
    sealed_done(&s);
}

static void too_old_frame_refused(void)
{
    enum { N = PD_AUTH_WINDOW + 2 };
    struct sealed s;
    sealed_init(&s, N); /* counters 1 .. WINDOW + 2 */
    CHECK_EQ_INT(sealed_open(&s, N - 1), 0);
    /* newest is WINDOW + 2: counter 2 is exactly WINDOW behind, 3 is inside */
    CHECK_EQ_INT(sealed_open(&s, 0), -ESTALE);
    CHECK_EQ_INT(sealed_open(&s, 1), -ESTALE);
    CHECK_CONTAINS(s.kp.err, "older than the window");
    CHECK_EQ_INT(sealed_open(&s, 2), 0);
    CHECK_EQ_INT(sealed_open(&s, N - 2), 0);
    sealed_done(&s);
}

static void window_slides_and_forgets_nothing_inside_it(void)
{
    enum { N = 3 * PD_AUTH_WINDOW };
    struct sealed s;
    sealed_init(&s, N);
    /* every other frame in order, then the skipped ones that are still inside */
    for (int i = 0; i < N; i += 2)
        CHECK_EQ_INT(sealed_open(&s, i), 0);
    for (int i = 1; i < N; i += 2) {
        uint64_t c = (uint64_t)i + 1, top = N - 1; /* counter of frame i; newest seen is N-1 */
        int want = c > top || top - c < PD_AUTH_WINDOW ? 0 : -ESTALE;
        CHECK_EQ_INT(sealed_open(&s, i), want);
    }
    sealed_done(&s);
}

static void forged_frame_does_not_move_the_window(void)
{
    enum { N = 2 * PD_AUTH_WINDOW };
    struct sealed s;
    sealed_init(&s, N);
    /* a far-future counter with a bad MAC must not slide frame 1 out */
    s.wire[N - 1][s.len[N - 1] - 1] ^= 1;
    CHECK_EQ_INT(sealed_open(&s, N - 1), -EKEYREJECTED);
    CHECK_EQ_INT(sealed_open(&s, 0), 0);
    /* nor may a forged copy of an unseen counter burn it */
    s.wire[5][PD_FRAME_HDR_LEN] ^= 0x80;
    CHECK_EQ_INT(sealed_open(&s, 5), -EKEYREJECTED);
    s.wire[5][PD_FRAME_HDR_LEN] ^= 0x80;
    CHECK_EQ_INT(sealed_open(&s, 5), 0);
    sealed_done(&s);
}

static void every_bit_flip_and_truncation_of_a_sealed_frame_refused(void)
{
    struct sealed s;
    uint8_t m[64];
    sealed_init(&s, 1);
    const size_t n = s.len[0];
    for (size_t i = 0; i < 8 * n; i++) {
        memcpy(m, s.wire[0], n);
        m[i / 8] ^= (uint8_t)(1u << (i % 8));
        if (open_on_p(&s.kp, m, n, &s.f) >= 0)
            PD_TEST_FAIL_("bit %zu flipped: accepted", i);
    }
    for (size_t k = 0; k < n; k++) {
        uint8_t *cut = malloc(k ? k : 1);
        memcpy(cut, s.wire[0], k);
        int rc = open_on_p(&s.kp, cut, k, &s.f);
        free(cut);
        CHECK(rc < 0);
    }
    CHECK_EQ_INT(sealed_open(&s, 0), 0);
    sealed_done(&s);
}

static void frame_sealed_for_one_direction_refused_in_the_other(void)
{
    struct sealed s;
    uint8_t plain[64];
    size_t pn;
    sealed_init(&s, 1);
    /* D's own frame reflected back to D: D's receive key is P's send key */
    CHECK_EQ_INT(pd_auth_open(s.kp.sd, s.wire[0], s.len[0], plain, sizeof(plain), &pn, s.kp.err,
                              sizeof(s.kp.err)), -EKEYREJECTED);
    CHECK_EQ_INT(sealed_open(&s, 0), 0);
    sealed_done(&s);
}

static void seal_refuses_frames_our_role_does_not_send(void)
{
    SETUP(kp, 0);
    HANDSHAKE(kp);
    uint8_t tags[16] = {0}, wire[256];
    size_t n;
    struct pd_frame chunk = {.type = PD_FT_CHUNK,
                             .u.chunk = {.request_id = 1, .n_blocks = 1, .transfer = 1,
                                         .block_bytes = 1, .tags = tags}};
    CHECK_EQ_INT(pd_auth_seal_frame(kp.sd, &chunk, wire, sizeof(wire), &n, kp.err,
                                    sizeof(kp.err)), -EINVAL);
    CHECK_CONTAINS(kp.err, "not a frame decoded sends");
    CHECK_EQ_INT(pd_auth_seal_frame(kp.sp, &chunk, wire, sizeof(wire), &n, kp.err,
                                    sizeof(kp.err)), 0);
    kv_pair_done(&kp);
}

static void counter_exhaustion_refused(void)
{
    SETUP(kp, 0);
    HANDSHAKE(kp);
    uint8_t w[3][64], before[64];
    size_t n[3], m;
    pd_auth_session_set_limits(kp.sd, 3, UINT64_MAX);
    seal_many(&kp, w, n, 3);
    struct pd_frame f = ack_frame(1);
    CHECK_EQ_INT(pd_frame_encode(&f, 0, w[0], sizeof(w[0]), &m, NULL, 0), 0);
    memcpy(before, w[0], sizeof(before));
    CHECK_EQ_INT(pd_auth_seal(kp.sd, w[0], m, sizeof(w[0]), &n[0], kp.err, sizeof(kp.err)),
                 -EOVERFLOW);
    CHECK_CONTAINS(kp.err, "exhausted");
    CHECK(memcmp(before, w[0], sizeof(before)) == 0); /* nothing half-sealed */
    CHECK_EQ_INT(pd_auth_seal_frame(kp.sd, &f, w[1], sizeof(w[1]), &m, kp.err, sizeof(kp.err)),
                 -EOVERFLOW); /* and it stays refused */
    /* the default limit is far below 2^64: a wrap can never happen */
    CHECK(PD_AUTH_COUNTER_LIMIT <= UINT64_MAX / 2);
    kv_pair_done(&kp);
}

static void open_needs_room_and_leaves_wire_intact(void)
{
    struct sealed s;
    uint8_t copy[64], plain[64];
    size_t pn;
    sealed_init(&s, 1);
    struct kv_pair *kp = &s.kp;
    const uint8_t *w = s.wire[0];
    const size_t n = s.len[0];
    memcpy(copy, w, sizeof(copy));
    CHECK_EQ_INT(pd_auth_open(kp->sp, w, n, plain, n - PD_FRAME_MAC_LEN - 1, &pn, kp->err,
                              sizeof(kp->err)), -ENOBUFS);
    CHECK_EQ_INT(pd_auth_open(kp->sp, w, n, plain, sizeof(plain), &pn, kp->err,
                              sizeof(kp->err)), 0);
    CHECK_EQ_INT(pn, n - PD_FRAME_MAC_LEN);
    CHECK(memcmp(copy, w, sizeof(copy)) == 0);
    sealed_done(&s);
}

/* ---- block tags ---- */

struct tag_in {
    uint64_t req;
    uint32_t epoch, block;
    uint64_t transfer;
};

static void tag_of(const struct pd_auth_session *s, const struct tag_in *t, const uint8_t *d,
                   size_t n, uint8_t tag[16])
{
    pd_auth_tag_block(s, t->req, t->epoch, t->block, t->transfer, d, n, tag);
}

static int verify_of(const struct pd_auth_session *s, const struct tag_in *t, const uint8_t *d,
                     size_t n, const uint8_t tag[16])
{
    return pd_auth_tag_verify(s, t->req, t->epoch, t->block, t->transfer, d, n, tag);
}

#define TAG_DATA 1000

/* A handshaken pair, and a block of TAG_DATA bytes P tagged under t. */
struct tagged {
    struct kv_pair kp;
    struct tag_in t;
    uint8_t d[TAG_DATA], tag[16];
};

static void tagged_init(struct tagged *b)
{
    CHECK_EQ_INT(kv_pair_init(&b->kp, 0), 0);
    HANDSHAKE(b->kp);
    b->t = (struct tag_in){0x1234, 3, 9, 1};
    kat_block_data(b->d, sizeof(b->d));
    tag_of(b->kp.sp, &b->t, b->d, sizeof(b->d), b->tag);
}

/* D's verdict on the first len bytes of the block under its tag */
static int tagged_verify(const struct tagged *b, size_t len)
{
    return verify_of(b->kp.sd, &b->t, b->d, len, b->tag);
}

static void tag_verifies_at_the_receiver(void)
{
    struct tagged b;
    tagged_init(&b);
    CHECK_EQ_INT(tagged_verify(&b, TAG_DATA), 0);
    /* an empty block is authenticated too (its length is in the tag) */
    tag_of(b.kp.sp, &b.t, b.d, 0, b.tag);
    CHECK_EQ_INT(tagged_verify(&b, 0), 0);
    CHECK_EQ_INT(tagged_verify(&b, 1), -EKEYREJECTED);
    kv_pair_done(&b.kp);
}

static void tag_detects_flip_in_data(void)
{
    struct tagged b;
    tagged_init(&b);
    for (size_t i = 0; i < 8 * TAG_DATA; i++) {
        b.d[i / 8] ^= (uint8_t)(1u << (i % 8));
        if (tagged_verify(&b, TAG_DATA) != -EKEYREJECTED)
            PD_TEST_FAIL_("data bit %zu flipped: verified", i);
        b.d[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    for (size_t i = 0; i < 8 * 16; i++) {
        b.tag[i / 8] ^= (uint8_t)(1u << (i % 8));
        CHECK_EQ_INT(tagged_verify(&b, TAG_DATA), -EKEYREJECTED);
        b.tag[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    CHECK_EQ_INT(tagged_verify(&b, TAG_DATA), 0);
    kv_pair_done(&b.kp);
}

/* Every single-bit change of one field of the tag's inputs fails. */
static void flips_in_field(int field)
{
    SETUP(kp, 0);
    HANDSHAKE(kp);
    uint8_t d[64], tag[16];
    const struct tag_in base = {0x8877665544332211ull, 0x01020304, 0x0a0b0c0d, 0x1020304050ull};
    int bits = field == 0 || field == 3 ? 64 : 32;
    memset(d, 0xab, sizeof(d));
    tag_of(kp.sp, &base, d, sizeof(d), tag);
    for (int b = 0; b < bits; b++) {
        struct tag_in t = base;
        switch (field) {
        case 0: t.req ^= 1ull << b; break;
        case 1: t.epoch ^= 1u << b; break;
        case 2: t.block ^= 1u << b; break;
        default: t.transfer ^= 1ull << b; break;
        }
        if (verify_of(kp.sd, &t, d, sizeof(d), tag) != -EKEYREJECTED)
            PD_TEST_FAIL_("field %d bit %d flipped: verified", field, b);
    }
    kv_pair_done(&kp);
}

static void tag_detects_flip_in_request_id(void) { flips_in_field(0); }
static void tag_detects_flip_in_epoch(void) { flips_in_field(1); }
static void tag_detects_flip_in_index(void) { flips_in_field(2); }
static void tag_detects_flip_in_counter(void) { flips_in_field(3); }

static void tag_keys_differ_between_sessions(void)
{
    SETUP(a, 0);
    SETUP(b, 0);
    HANDSHAKE(a);
    HANDSHAKE(b);
    uint8_t d[64] = {0}, ta[16], tb[16];
    pd_auth_tag_block(a.sp, 1, 1, 1, 1, d, sizeof(d), ta);
    pd_auth_tag_block(b.sp, 1, 1, 1, 1, d, sizeof(d), tb);
    CHECK(memcmp(ta, tb, 16) != 0);
    CHECK_EQ_INT(pd_auth_tag_verify(b.sd, 1, 1, 1, 1, d, sizeof(d), ta), -EKEYREJECTED);
    kv_pair_done(&a);
    kv_pair_done(&b);
}

struct counter_job {
    struct pd_auth_session *s;
    uint64_t *out;
    size_t n;
};

static void *take_counters(void *arg)
{
    struct counter_job *j = arg;
    for (size_t i = 0; i < j->n; i++)
        if (pd_auth_transfer_next(j->s, &j->out[i]) < 0)
            j->out[i] = 0;
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void transfer_counters_never_repeat(void)
{
    SETUP(kp, 0);
    HANDSHAKE(kp);
    enum { THREADS = 4, PER = 20000 };
    uint64_t *all = calloc(THREADS * PER, sizeof(*all));
    pthread_t th[THREADS];
    struct counter_job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (struct counter_job){kp.sp, all + i * PER, PER};
        pthread_create(&th[i], NULL, take_counters, &jobs[i]);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    qsort(all, THREADS * PER, sizeof(*all), cmp_u64);
    /* exactly 1 .. THREADS*PER, each once */
    int ok = 1;
    for (size_t i = 0; i < THREADS * PER; i++)
        ok &= all[i] == i + 1;
    free(all);
    CHECK(ok);
    kv_pair_done(&kp);
}

static void transfer_counter_exhaustion_refused(void)
{
    SETUP(kp, 0);
    HANDSHAKE(kp);
    uint64_t c = 0;
    pd_auth_session_set_limits(kp.sp, UINT64_MAX, 2);
    CHECK_EQ_INT(pd_auth_transfer_next(kp.sp, &c), 0);
    CHECK(c == 1);
    CHECK_EQ_INT(pd_auth_transfer_next(kp.sp, &c), 0);
    CHECK(c == 2);
    CHECK_EQ_INT(pd_auth_transfer_next(kp.sp, &c), -EOVERFLOW);
    CHECK(c == 2); /* untouched */
    CHECK_EQ_INT(pd_auth_transfer_next(kp.sp, &c), -EOVERFLOW);
    kv_pair_done(&kp);
}

/* ---- known answers ---- */

static void kat_matches_stored_vectors(void)
{
    static struct kat k;
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/vectors/kat_auth.json", PD_SRCDIR);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    static char text[65536];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    cJSON *j = cJSON_Parse(text);
    CHECK(j != NULL);
    CHECK_EQ_INT(kat_compute(&k), 0);
    CHECK_EQ_INT(cJSON_GetArraySize(j), k.n);
    for (size_t i = 0; i < k.n; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k.it[i].name);
        char hex[2 * PD_AUTH_MSG_MAX + 1];
        sodium_bin2hex(hex, sizeof(hex), k.it[i].v, k.it[i].len);
        if (!cJSON_IsString(v) || strcmp(v->valuestring, hex) != 0) {
            cJSON_Delete(j);
            PD_TEST_FAIL_("%s: C %s, stored %s", k.it[i].name, hex,
                          cJSON_IsString(v) ? v->valuestring : "(missing)");
        }
    }
    cJSON_Delete(j);
}

static void kat_handshake_frames_match_golden_files(void)
{
    static struct kat k;
    const char *names[] = {"m1", "m2", "confirm_d", "confirm_p"};
    CHECK_EQ_INT(kat_compute(&k), 0);
    for (size_t i = 0; i < 4; i++) {
        char path[1024];
        uint8_t buf[512];
        snprintf(path, sizeof(path), "%s/tests/vectors/frames/hs_%s.bin", PD_SRCDIR, names[i]);
        FILE *f = fopen(path, "rb");
        CHECK(f != NULL);
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        int found = 0;
        for (size_t j = 0; j < k.n; j++)
            if (strcmp(k.it[j].name, names[i]) == 0)
                found = k.it[j].len == n && memcmp(k.it[j].v, buf, n) == 0;
        if (!found)
            PD_TEST_FAIL_("%s differs from the C handshake", path);
    }
}

static const struct pd_test tests[] = {
    PD_TEST(handshake_completes_between_two_parties),
    PD_TEST(two_handshakes_give_unrelated_sessions),
    PD_TEST(handshake_refuses_wrong_key),
    PD_TEST(handshake_refuses_unknown_key_id),
    PD_TEST(initiator_refuses_key_it_does_not_hold),
    PD_TEST(initiator_must_name_a_key_when_the_ring_has_several),
    PD_TEST(responder_accepts_any_key_in_its_ring),
    PD_TEST(m1_replay_refused),
    PD_TEST(full_replay_cache_refuses_rather_than_forgets),
    PD_TEST(reflected_confirmation_refused),
    PD_TEST(reflected_hello_refused),
    PD_TEST(every_truncation_of_m1_refused),
    PD_TEST(every_bit_flip_of_m1_refused),
    PD_TEST(every_truncation_and_bit_flip_of_m2_refused),
    PD_TEST(every_truncation_and_bit_flip_of_confirmations_refused),
    PD_TEST(layout_mismatch_names_both_values),
    PD_TEST(fingerprint_mismatch_names_both_prefixes),
    PD_TEST(initiator_checks_the_layout_too),
    PD_TEST(low_order_point_refused),
    PD_TEST(other_major_version_refused_naming_both),
    PD_TEST(finished_handshake_refuses_further_use),
    PD_TEST(handshake_states_are_wiped_of_secrets),
    PD_TEST(sealed_frames_of_every_type_open_at_the_peer),
    PD_TEST(seal_assigns_increasing_counters),
    PD_TEST(sealed_frame_replay_refused),
    PD_TEST(reorder_within_window_accepted),
    PD_TEST(too_old_frame_refused),
    PD_TEST(window_slides_and_forgets_nothing_inside_it),
    PD_TEST(forged_frame_does_not_move_the_window),
    PD_TEST(every_bit_flip_and_truncation_of_a_sealed_frame_refused),
    PD_TEST(frame_sealed_for_one_direction_refused_in_the_other),
    PD_TEST(seal_refuses_frames_our_role_does_not_send),
    PD_TEST(counter_exhaustion_refused),
    PD_TEST(open_needs_room_and_leaves_wire_intact),
    PD_TEST(tag_verifies_at_the_receiver),
    PD_TEST(tag_detects_flip_in_data),
    PD_TEST(tag_detects_flip_in_request_id),
    PD_TEST(tag_detects_flip_in_epoch),
    PD_TEST(tag_detects_flip_in_index),
    PD_TEST(tag_detects_flip_in_counter),
    PD_TEST(tag_keys_differ_between_sessions),
    PD_TEST(transfer_counters_never_repeat),
    PD_TEST(transfer_counter_exhaustion_refused),
    PD_TEST(kat_matches_stored_vectors),
    PD_TEST(kat_handshake_frames_match_golden_files),
    {0},
};

int main(int argc, char **argv)
{
    if (pd_keyring_init() < 0)
        return 1;
    return pd_test_main(tests, argc, argv);
}
