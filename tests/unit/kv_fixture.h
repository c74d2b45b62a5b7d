/* Fixed inputs for the KV handshake (the known-answer vectors use the same
 * values in tests/vectors/kat_auth.py), and helpers that run a handshake
 * between two in-memory parties. Test-only; shared by test_auth, the KAT
 * dump, the auth fuzz target and the benchmark. */
#ifndef PD_TEST_KV_FIXTURE_H
#define PD_TEST_KV_FIXTURE_H

#include "auth.h"
#include "auth_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define KAT_KEY_ID "kat-key-1"
#define KAT_NOW_MS 1000000u

/* i-th byte of each fixed 32-byte input: simple, and spelled the same way in Python */
static inline void kat_bytes(uint8_t out[32], unsigned base)
{
    for (unsigned i = 0; i < 32; i++)
        out[i] = (uint8_t)(base + i);
}
#define KAT_PSK_BASE 0x00u
#define KAT_D_SK_BASE 0x40u
#define KAT_P_SK_BASE 0x80u
#define KAT_D_NONCE_BASE 0xa0u
#define KAT_P_NONCE_BASE 0xc0u
#define KAT_FP_BASE 0xe0u

static inline struct pd_kv_layout kat_layout(void)
{
    struct pd_kv_layout l = {
        .n_layer = 30, .n_head_kv = 3, .head_dim = 64, .block_size = 16, .kv_dtype = 1,
        .block_bytes = 2ull * 30 * 3 * 64 * 16 * 2,
    };
    kat_bytes(l.fingerprint, KAT_FP_BASE);
    return l;
}

/* Two parties sharing one keyring (the same PSK), a responder replay cache,
 * and the randomness each side will use (fixed when det is set). */
struct kv_pair {
    struct pd_keyring *kr;
    struct pd_auth_replay *replay;
    struct pd_kv_layout layout_d, layout_p;
    uint8_t d_sk[32], p_sk[32], d_nonce[32], p_nonce[32];
    struct pd_auth_params pd, pp;
    struct pd_auth_hs *hd, *hp;
    struct pd_auth_session *sd, *sp;
    uint8_t m1[PD_AUTH_MSG_MAX], m2[PD_AUTH_MSG_MAX], cd[PD_AUTH_MSG_MAX], cp[PD_AUTH_MSG_MAX];
    size_t m1_len, m2_len, cd_len, cp_len;
    char err[512];
};

/* 0, or -1 when the fixture cannot be built (a test bug). */
static inline int kv_pair_init(struct kv_pair *kp, int det)
{
    uint8_t psk[32];
    memset(kp, 0, sizeof(*kp));
    if (pd_keyring_new(&kp->kr) < 0 || pd_auth_replay_new(64, 10000, &kp->replay) < 0)
        return -1;
    kat_bytes(psk, KAT_PSK_BASE);
    if (pd_keyring_add(kp->kr, KAT_KEY_ID, psk, NULL, 0) < 0)
        return -1;
    kp->layout_d = kp->layout_p = kat_layout();
    kat_bytes(kp->d_sk, KAT_D_SK_BASE);
    kat_bytes(kp->p_sk, KAT_P_SK_BASE);
    kat_bytes(kp->d_nonce, KAT_D_NONCE_BASE);
    kat_bytes(kp->p_nonce, KAT_P_NONCE_BASE);
    kp->pd = (struct pd_auth_params){.keyring = kp->kr, .key_id = KAT_KEY_ID,
                                     .layout = &kp->layout_d};
    kp->pp = (struct pd_auth_params){.keyring = kp->kr, .replay = kp->replay,
                                     .layout = &kp->layout_p, .now_ms = KAT_NOW_MS};
    if (det) {
        kp->pd.eph_sk = kp->d_sk;
        kp->pd.nonce = kp->d_nonce;
        kp->pp.eph_sk = kp->p_sk;
        kp->pp.nonce = kp->p_nonce;
    }
    return 0;
}

static inline void kv_pair_done(struct kv_pair *kp)
{
    pd_auth_hs_free(kp->hd);
    pd_auth_hs_free(kp->hp);
    pd_auth_session_free(kp->sd);
    pd_auth_session_free(kp->sp);
    pd_auth_replay_free(kp->replay);
    pd_keyring_free(kp->kr);
    memset(kp, 0, sizeof(*kp));
}

/* The four messages in order; each stage's return code (0 / DONE expected). */
static inline int kv_pair_m1(struct kv_pair *kp)
{
    return pd_auth_hs_initiate(&kp->pd, &kp->hd, kp->m1, sizeof(kp->m1), &kp->m1_len, kp->err,
                               sizeof(kp->err));
}
static inline int kv_pair_m2(struct kv_pair *kp)
{
    return pd_auth_hs_respond(&kp->pp, kp->m1, kp->m1_len, &kp->hp, kp->m2, sizeof(kp->m2),
                              &kp->m2_len, kp->err, sizeof(kp->err));
}
static inline int kv_pair_cd(struct kv_pair *kp)
{
    return pd_auth_hs_step(kp->hd, kp->m2, kp->m2_len, kp->cd, sizeof(kp->cd), &kp->cd_len,
                           kp->err, sizeof(kp->err));
}
static inline int kv_pair_cp(struct kv_pair *kp)
{
    return pd_auth_hs_step(kp->hp, kp->cd, kp->cd_len, kp->cp, sizeof(kp->cp), &kp->cp_len,
                           kp->err, sizeof(kp->err));
}
static inline int kv_pair_finish(struct kv_pair *kp)
{
    size_t n = 1;
    uint8_t none[PD_AUTH_MSG_MAX];
    if (pd_auth_hs_step(kp->hd, kp->cp, kp->cp_len, none, sizeof(none), &n, kp->err,
                        sizeof(kp->err)) != PD_AUTH_HS_DONE || n != 0)
        return -1;
    return pd_auth_hs_take_session(kp->hd, &kp->sd) < 0 ||
                   pd_auth_hs_take_session(kp->hp, &kp->sp) < 0
               ? -1
               : 0;
}

/* The whole handshake; 0 with both sessions in kp, else -1 (kp->err says why). */
static inline int kv_pair_handshake(struct kv_pair *kp)
{
    if (kv_pair_m1(kp) < 0 || kv_pair_m2(kp) < 0 || kv_pair_cd(kp) < 0 ||
        kv_pair_cp(kp) != PD_AUTH_HS_DONE)
        return -1;
    return kv_pair_finish(kp);
}

/* Fixed block data for the KAT tag. */
#define KAT_TAG_LEN 1000u
static inline void kat_block_data(uint8_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = (uint8_t)(i * 31 + 7);
}

#endif
