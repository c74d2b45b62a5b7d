/* The C side of the KV handshake's known-answer vectors: every value of a
 * handshake run from the fixed inputs in kv_fixture.h, by name. The same
 * names and values are computed independently by tests/vectors/kat_auth.py
 * and stored in tests/vectors/kat_auth.json. */
#ifndef PD_TEST_KAT_AUTH_H
#define PD_TEST_KAT_AUTH_H

#include "kv_fixture.h"

struct kat_item {
    const char *name;
    size_t len;
    uint8_t v[PD_AUTH_MSG_MAX];
};

#define KAT_MAX_ITEMS 24
struct kat {
    struct kat_item it[KAT_MAX_ITEMS];
    size_t n;
};

static inline void kat_put(struct kat *k, const char *name, const void *v, size_t len)
{
    struct kat_item *it = &k->it[k->n++];
    it->name = name;
    it->len = len;
    memcpy(it->v, v, len);
}

#define KAT_REQ_ACK 0x0102030405060708ull
#define KAT_REQ_TAG 0x1122334455667788ull

/* 0, or -1 with kp's err explaining. */
static inline int kat_compute(struct kat *k)
{
    struct kv_pair kp;
    uint8_t psk[32], k_m1[32], k_m2[32], pk[32], dh[32], buf[256], data[KAT_TAG_LEN];
    uint8_t tag[PD_BLOCK_TAG_LEN];
    size_t n;
    uint64_t transfer;
    int rc = -1;

    memset(k, 0, sizeof(*k));
    if (kv_pair_init(&kp, 1) < 0)
        return -1;
    kat_bytes(psk, KAT_PSK_BASE);
    pd_auth_hello_keys(psk, k_m1, k_m2);
    kat_put(k, "psk", psk, 32);
    kat_put(k, "k_m1", k_m1, 32);
    kat_put(k, "k_m2", k_m2, 32);
    crypto_scalarmult_base(pk, kp.d_sk);
    kat_put(k, "d_eph_pk", pk, 32);
    crypto_scalarmult_base(pk, kp.p_sk);
    kat_put(k, "p_eph_pk", pk, 32);
    if (crypto_scalarmult(dh, kp.d_sk, pk) != 0)
        goto out;
    kat_put(k, "dh", dh, 32);
    if (kv_pair_m1(&kp) < 0 || kv_pair_m2(&kp) < 0 || kv_pair_cd(&kp) < 0 ||
        kv_pair_cp(&kp) != PD_AUTH_HS_DONE)
        goto out;
    kat_put(k, "m1", kp.m1, kp.m1_len);
    kat_put(k, "m2", kp.m2, kp.m2_len);
    const struct pd_auth_keys *ks = &kp.hd->keys;
    kat_put(k, "h", ks->h, 64);
    kat_put(k, "master", ks->master, 32);
    kat_put(k, "key_confirm_p", ks->confirm_p, 32);
    kat_put(k, "key_confirm_d", ks->confirm_d, 32);
    kat_put(k, "key_ctl_d2p", ks->ctl_d2p, 32);
    kat_put(k, "key_ctl_p2d", ks->ctl_p2d, 32);
    kat_put(k, "key_tag", ks->tag, 32);
    kat_put(k, "key_enc", ks->enc, 32);
    if (memcmp(&kp.hd->keys, &kp.hp->keys, sizeof(kp.hd->keys)) != 0) {
        snprintf(kp.err, sizeof(kp.err), "the two sides derived different keys");
        goto out;
    }
    kat_put(k, "confirm_d", kp.cd, kp.cd_len);
    kat_put(k, "confirm_p", kp.cp, kp.cp_len);
    if (kv_pair_finish(&kp) < 0)
        goto out;

    struct pd_frame ack = {.type = PD_FT_ACK,
                           .u.ack = {.request_id = KAT_REQ_ACK, .epoch = 3, .blocks = 5}};
    if (pd_auth_seal_frame(kp.sd, &ack, buf, sizeof(buf), &n, kp.err, sizeof(kp.err)) < 0)
        goto out;
    kat_put(k, "sealed_ack_d2p", buf, n);
    struct pd_frame hb = {.type = PD_FT_HEARTBEAT, .u.heartbeat = {.lease_ms = 5000, .seq = 1}};
    if (pd_auth_seal_frame(kp.sp, &hb, buf, sizeof(buf), &n, kp.err, sizeof(kp.err)) < 0)
        goto out;
    kat_put(k, "sealed_heartbeat_p2d", buf, n);

    kat_block_data(data, sizeof(data));
    if (pd_auth_transfer_next(kp.sp, &transfer) < 0 || transfer != 1)
        goto out;
    pd_auth_tag_block(kp.sp, KAT_REQ_TAG, 2, 7, transfer, data, sizeof(data), tag);
    kat_put(k, "block_tag", tag, sizeof(tag));
    rc = 0;
out:
    if (rc < 0)
        fprintf(stderr, "kat: %s\n", kp.err);
    kv_pair_done(&kp);
    return rc;
}

#endif
