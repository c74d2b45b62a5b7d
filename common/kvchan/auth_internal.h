/* Private to common/kvchan/auth*.c, plus the known-answer dump and the fuzz target,
 * which read the key schedule's intermediate values. */
#ifndef PD_AUTH_INTERNAL_H
#define PD_AUTH_INTERNAL_H

#include "errf.h"
#include "auth.h"

#include <stdatomic.h>

/* crypto_kdf contexts (8 bytes each) and subkey ids: fixed by the protocol. */
#define PD_AUTH_CTX_HELLO "pdkv-hs1" /* id 1: M1 MAC key, id 2: M2 MAC key */
#define PD_AUTH_CTX_SESSION "pdkv-ks1" /* ids below */
enum {
    PD_AUTH_SK_CONFIRM_P = 1,
    PD_AUTH_SK_CONFIRM_D = 2,
    PD_AUTH_SK_CTL_D2P = 3,
    PD_AUTH_SK_CTL_P2D = 4,
    PD_AUTH_SK_TAG = 5,
    PD_AUTH_SK_ENC = 6,
};
#define PD_AUTH_TRANSCRIPT_LABEL "pdserve KV handshake v1"

/* Everything the key schedule produces. */
struct pd_auth_keys {
    uint8_t h[64]; /* BLAKE2b-512(label || M1 || M2) */
    uint8_t master[32]; /* BLAKE2b-256(dh || h, key = PSK) */
    uint8_t confirm_p[32], confirm_d[32];
    uint8_t ctl_d2p[32], ctl_p2d[32];
    uint8_t tag[32];
    uint8_t enc[32]; /* for --kv-encrypt (later); derived now so the schedule is fixed */
};

/* M1 / M2 MAC keys from the PSK. */
void pd_auth_hello_keys(const uint8_t psk[32], uint8_t k_m1[32], uint8_t k_m2[32]);
/* The whole schedule from the PSK, the X25519 output and the two messages. */
void pd_auth_key_schedule(const uint8_t psk[32], const uint8_t dh[32], const uint8_t *m1,
                          const uint8_t *m2, struct pd_auth_keys *k);
/* The confirmation a role sends: BLAKE2b-256(h, key = confirm_role). */
void pd_auth_confirmation(const struct pd_auth_keys *k, enum pd_role role, uint8_t out[32]);

enum hs_state { HS_AWAIT_M2, HS_AWAIT_CONFIRM, HS_DONE, HS_TAKEN };

struct pd_auth_hs { /* sodium_malloc */
    enum pd_role role;
    enum hs_state state;
    uint8_t minor; /* negotiated */
    uint8_t peer_minor; /* in the peer's hello; its confirmation must carry the same */
    char key_id[PD_KEY_ID_MAX + 1];
    uint8_t psk[32];
    uint8_t eph_sk[32];
    uint8_t m1[PD_HS_HELLO_LEN]; /* as sent (D) or received (P) */
    struct pd_auth_keys keys; /* valid from HS_AWAIT_CONFIRM on */
};

struct pd_auth_session { /* sodium_malloc */
    enum pd_role role;
    uint8_t minor;
    char key_id[PD_KEY_ID_MAX + 1];
    uint8_t id[8]; /* h[0..8): public */
    uint8_t k_send[32], k_recv[32], k_tag[32], k_enc[32];
    uint64_t send_next; /* next counter to seal with; starts at 1 */
    uint64_t send_limit;
    uint64_t recv_top; /* highest counter accepted; 0: none yet */
    uint64_t recv_bits[PD_AUTH_WINDOW / 64]; /* bit (c % WINDOW): counter c seen */
    _Atomic uint64_t transfer_next; /* starts at 1 */
    uint64_t transfer_limit;
};

/* Internal to auth: a session from a finished handshake. */
int pd_auth_session_new(const struct pd_auth_hs *hs, struct pd_auth_session **out);

#endif
