/* The KV handshake and its key schedule (DESIGN.md, "The KV channel").
 * Sealed frames and block tags are in auth_session.c. */
#include "auth.h"

#include "auth_internal.h"
#include "quant.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- replay cache: a ring of nonces in insertion (= expiry) order ---- */

struct replay_entry {
    uint8_t nonce[PD_HS_NONCE_LEN];
    uint64_t expires_ms;
};

struct pd_auth_replay {
    size_t cap, head, n;
    uint64_t ttl_ms;
    struct replay_entry e[]; /* [cap] */
};

int pd_auth_replay_new(size_t capacity, uint64_t ttl_ms, struct pd_auth_replay **out)
{
    if (capacity == 0 || capacity > (1u << 20) || ttl_ms == 0)
        return -EINVAL;
    struct pd_auth_replay *rc = calloc(1, sizeof(*rc) + capacity * sizeof(rc->e[0]));
    if (!rc)
        return -ENOMEM;
    rc->cap = capacity;
    rc->ttl_ms = ttl_ms;
    *out = rc;
    return 0;
}

struct pd_auth_replay *pd_auth_replay_free(struct pd_auth_replay *rc)
{
    free(rc);
    return NULL;
}

static void replay_expire(struct pd_auth_replay *rc, uint64_t now_ms)
{
    while (rc->n > 0 && rc->e[rc->head].expires_ms <= now_ms) {
        rc->head = (rc->head + 1) % rc->cap;
        rc->n--;
    }
}

size_t pd_auth_replay_live(struct pd_auth_replay *rc, uint64_t now_ms)
{
    replay_expire(rc, now_ms);
    return rc->n;
}

/* -EALREADY when the nonce is live, -EBUSY when there is no room for it. */
static int replay_check(struct pd_auth_replay *rc, const uint8_t *nonce, uint64_t now_ms)
{
    replay_expire(rc, now_ms);
    for (size_t i = 0; i < rc->n; i++)
        if (memcmp(rc->e[(rc->head + i) % rc->cap].nonce, nonce, PD_HS_NONCE_LEN) == 0)
            return -EALREADY;
    return rc->n == rc->cap ? -EBUSY : 0;
}

static void replay_add(struct pd_auth_replay *rc, const uint8_t *nonce, uint64_t now_ms)
{
    struct replay_entry *e = &rc->e[(rc->head + rc->n) % rc->cap];
    memcpy(e->nonce, nonce, PD_HS_NONCE_LEN);
    e->expires_ms = now_ms + rc->ttl_ms;
    rc->n++;
}

/* ---- key schedule ---- */

void pd_auth_hello_keys(const uint8_t psk[32], uint8_t k_m1[32], uint8_t k_m2[32])
{
    crypto_kdf_derive_from_key(k_m1, 32, 1, PD_AUTH_CTX_HELLO, psk);
    crypto_kdf_derive_from_key(k_m2, 32, 2, PD_AUTH_CTX_HELLO, psk);
}

void pd_auth_key_schedule(const uint8_t psk[32], const uint8_t dh[32], const uint8_t *m1,
                          const uint8_t *m2, struct pd_auth_keys *k)
{
    crypto_generichash_state st;

    crypto_generichash_init(&st, NULL, 0, sizeof(k->h));
    crypto_generichash_update(&st, (const uint8_t *)PD_AUTH_TRANSCRIPT_LABEL,
                              strlen(PD_AUTH_TRANSCRIPT_LABEL));
    crypto_generichash_update(&st, m1, PD_HS_HELLO_LEN);
    crypto_generichash_update(&st, m2, PD_HS_HELLO_LEN);
    crypto_generichash_final(&st, k->h, sizeof(k->h));

    /* the PSK keys the master as well as the hello MACs: an attacker who
     * somehow completed X25519 with us still learns nothing without it */
    crypto_generichash_init(&st, psk, 32, sizeof(k->master));
    crypto_generichash_update(&st, dh, 32);
    crypto_generichash_update(&st, k->h, sizeof(k->h));
    crypto_generichash_final(&st, k->master, sizeof(k->master));
    sodium_memzero(&st, sizeof(st));

    static const struct {
        uint64_t id;
        size_t off;
    } sub[] = {
        {PD_AUTH_SK_CONFIRM_P, offsetof(struct pd_auth_keys, confirm_p)},
        {PD_AUTH_SK_CONFIRM_D, offsetof(struct pd_auth_keys, confirm_d)},
        {PD_AUTH_SK_CTL_D2P, offsetof(struct pd_auth_keys, ctl_d2p)},
        {PD_AUTH_SK_CTL_P2D, offsetof(struct pd_auth_keys, ctl_p2d)},
        {PD_AUTH_SK_TAG, offsetof(struct pd_auth_keys, tag)},
        {PD_AUTH_SK_ENC, offsetof(struct pd_auth_keys, enc)},
    };
    for (size_t i = 0; i < sizeof(sub) / sizeof(sub[0]); i++)
        crypto_kdf_derive_from_key((uint8_t *)k + sub[i].off, 32, sub[i].id, PD_AUTH_CTX_SESSION,
                                   k->master);
}

void pd_auth_confirmation(const struct pd_auth_keys *k, enum pd_role role, uint8_t out[32])
{
    crypto_generichash(out, 32, k->h, sizeof(k->h), role == PD_ROLE_P ? k->confirm_p : k->confirm_d,
                       32);
}

/* The tag a hello of `type` must carry: BLAKE2b-256 over everything before
 * the tag field, keyed with that type's key from the PSK. */
static void hello_tag(const uint8_t psk[32], uint8_t type, const uint8_t *msg,
                      uint8_t out[PD_HS_TAG_LEN])
{
    uint8_t k[2][32];
    pd_auth_hello_keys(psk, k[0], k[1]);
    crypto_generichash(out, PD_HS_TAG_LEN, msg, PD_HS_HELLO_TAG_OFF, k[type == PD_FT_HS_M2], 32);
    sodium_memzero(k, sizeof(k));
}

/* ---- checks a peer's hello must pass ---- */

static void hex_prefix(const uint8_t *fp, char out[17])
{
    sodium_bin2hex(out, 17, fp, 8);
}

/* Every differing field, both values named. */
static int layout_compare(const struct pd_kv_layout *ours, const struct pd_kv_layout *peer,
                          char *err, size_t errlen)
{
    char msg[512];
    size_t off = 0;
    int layout = 0;

#define ADD(...)                                                                               \
    do {                                                                                       \
        if (off < sizeof(msg))                                                                 \
            off += (size_t)snprintf(msg + off, sizeof(msg) - off, "%s", off ? "; " : "");      \
        if (off < sizeof(msg))                                                                 \
            off += (size_t)snprintf(msg + off, sizeof(msg) - off, __VA_ARGS__);                \
    } while (0)
#define CMP(field)                                                                             \
    if (ours->field != peer->field) {                                                          \
        ADD(#field ": ours %" PRIu64 ", peer %" PRIu64, (uint64_t)ours->field,                 \
            (uint64_t)peer->field);                                                            \
        layout = 1;                                                                            \
    }
    CMP(n_layer)
    CMP(n_head_kv)
    CMP(head_dim)
    CMP(block_size)
    if (ours->kv_dtype != peer->kv_dtype) {
        ADD("kv_dtype: ours %s, peer %s (%" PRIu32 ")", pd_dtype_name(ours->kv_dtype),
            pd_dtype_name(peer->kv_dtype), peer->kv_dtype);
        layout = 1;
    }
    CMP(block_bytes)
#undef CMP
    if (sodium_memcmp(ours->fingerprint, peer->fingerprint, PD_HS_FP_LEN) != 0) {
        char a[17], b[17];
        hex_prefix(ours->fingerprint, a);
        hex_prefix(peer->fingerprint, b);
        ADD("model fingerprint: ours %s..., peer %s...", a, b);
    }
#undef ADD
    if (off == 0)
        return 0;
    return pd_errf(err, errlen, -EPROTO, "handshake: the peer's %s differs: %s",
                   layout ? "KV layout" : "model", msg);
}

/* ---- handshake ---- */

struct pd_auth_hs *pd_auth_hs_free(struct pd_auth_hs *hs)
{
    sodium_free(hs); /* wipes; accepts NULL */
    return NULL;
}


static void fill_random(uint8_t *dst, const uint8_t *given, size_t n)
{
    if (given)
        memcpy(dst, given, n);
    else
        randombytes_buf(dst, n);
}

/* Our hello of `type` into buf, tagged. */
static int make_hello(uint8_t type, const char *key_id, const uint8_t eph_sk[32],
                      const uint8_t *nonce, const struct pd_kv_layout *layout,
                      const uint8_t psk[32], uint8_t buf[PD_HS_HELLO_LEN], char *err,
                      size_t errlen)
{
    struct pd_hs_hello h;
    memset(&h, 0, sizeof(h));
    snprintf(h.key_id, sizeof(h.key_id), "%s", key_id);
    if (crypto_scalarmult_base(h.eph_pk, eph_sk) != 0)
        return pd_errf(err, errlen, -EINVAL, "handshake: cannot derive an ephemeral public key");
    fill_random(h.nonce, nonce, PD_HS_NONCE_LEN);
    h.layout = *layout;
    int rc = pd_hs_hello_encode(type, &h, buf, PD_HS_HELLO_LEN, err, errlen);
    if (rc < 0)
        return rc;
    hello_tag(psk, type, buf, buf + PD_HS_HELLO_TAG_OFF);
    return 0;
}

static int check_params(const struct pd_auth_params *p, enum pd_role role, size_t cap,
                        char *err, size_t errlen)
{
    if (!p || !p->keyring || !p->layout || (role == PD_ROLE_P && !p->replay))
        return pd_errf(err, errlen, -EINVAL, "handshake: missing keyring, layout or replay cache");
    if (cap < PD_AUTH_MSG_MAX)
        return pd_errf(err, errlen, -ENOBUFS, "handshake: the message buffer needs %d bytes",
                       PD_AUTH_MSG_MAX);
    if (pd_keyring_init() < 0)
        return pd_errf(err, errlen, -EIO, "handshake: libsodium failed to initialise");
    return pd_kv_layout_check(p->layout, err, errlen);
}

/* Either side's start: the parameters checked, then a zeroed handshake
 * (sodium_malloc: guarded, and wiped by pd_auth_hs_free). */
static int hs_new(const struct pd_auth_params *p, enum pd_role role, size_t cap,
                  struct pd_auth_hs **out, char *err, size_t errlen)
{
    int rc = check_params(p, role, cap, err, errlen);
    if (rc < 0)
        return rc;
    struct pd_auth_hs *hs = sodium_malloc(sizeof(*hs));
    if (!hs)
        return pd_errf(err, errlen, -ENOMEM, "handshake: out of memory");
    sodium_memzero(hs, sizeof(*hs));
    hs->role = role;
    *out = hs;
    return 0;
}

int pd_auth_hs_initiate(const struct pd_auth_params *p, struct pd_auth_hs **out, uint8_t *msg,
                        size_t cap, size_t *msg_len, char *err, size_t errlen)
{
    struct pd_auth_hs *hs;
    int rc = hs_new(p, PD_ROLE_D, cap, &hs, err, errlen);
    if (rc < 0)
        return rc;
    rc = pd_keyring_get(p->keyring, p->key_id, hs->psk, hs->key_id);
    if (rc == -ENOENT)
        rc = pd_errf(err, errlen, -ENOKEY, "handshake: no key \"%s\" in the keyring",
                     p->key_id ? p->key_id : "");
    else if (rc < 0)
        rc = pd_errf(err, errlen, rc, "handshake: the keyring holds %zu keys; name the one to use",
                     pd_keyring_count(p->keyring));
    if (rc == 0) {
        fill_random(hs->eph_sk, p->eph_sk, 32);
        rc = make_hello(PD_FT_HS_M1, hs->key_id, hs->eph_sk, p->nonce, p->layout, hs->psk,
                        hs->m1, err, errlen);
    }
    if (rc < 0) {
        pd_auth_hs_free(hs);
        return rc;
    }
    hs->state = HS_AWAIT_M2;
    memcpy(msg, hs->m1, PD_HS_HELLO_LEN);
    *msg_len = PD_HS_HELLO_LEN;
    *out = hs;
    return 0;
}

static uint8_t min_u8(uint8_t a, uint8_t b) { return a < b ? a : b; }

/* Checks M1 up to and including its tag; fills psk/key id/layout of hs. */
static int respond_check_m1(const struct pd_auth_params *p, const uint8_t *m1, size_t m1_len,
                            struct pd_hs_hello *h1, struct pd_auth_hs *hs, char *err,
                            size_t errlen)
{
    uint8_t want[PD_HS_TAG_LEN];
    int rc = pd_hs_hello_decode(PD_FT_HS_M1, m1, m1_len, h1, err, errlen);
    if (rc < 0)
        return rc;
    if (pd_keyring_get(p->keyring, h1->key_id, hs->psk, hs->key_id) < 0)
        return pd_errf(err, errlen, -ENOKEY,
                       "handshake: M1 names key id \"%s\", which we do not hold", h1->key_id);
    /* the MAC first: nothing costly happens for a peer without the key */
    hello_tag(hs->psk, PD_FT_HS_M1, m1, want);
    if (crypto_verify_32(want, h1->tag) != 0)
        return pd_errf(err, errlen, -EKEYREJECTED,
                       "handshake: M1 tag does not verify (wrong key for id \"%s\", or altered)",
                       h1->key_id);
    rc = replay_check(p->replay, h1->nonce, p->now_ms);
    if (rc == -EALREADY)
        return pd_errf(err, errlen, rc,
                       "handshake: M1 nonce was seen in the last %" PRIu64 " ms (replay)",
                       p->replay->ttl_ms);
    if (rc == -EBUSY)
        return pd_errf(err, errlen, rc,
                       "handshake: replay cache full (%zu handshakes in %" PRIu64 " ms), refusing",
                       p->replay->cap, p->replay->ttl_ms);
    return layout_compare(p->layout, &h1->layout, err, errlen);
}

int pd_auth_hs_respond(const struct pd_auth_params *p, const uint8_t *m1, size_t m1_len,
                       struct pd_auth_hs **out, uint8_t *msg, size_t cap, size_t *msg_len,
                       char *err, size_t errlen)
{
    struct pd_hs_hello h1;
    uint8_t eph_sk[32], dh[32], m2[PD_HS_HELLO_LEN];
    struct pd_auth_hs *hs;
    int rc = hs_new(p, PD_ROLE_P, cap, &hs, err, errlen);
    if (rc < 0)
        return rc;
    if ((rc = respond_check_m1(p, m1, m1_len, &h1, hs, err, errlen)) < 0)
        goto fail;

    fill_random(eph_sk, p->eph_sk, 32);
    if (crypto_scalarmult(dh, eph_sk, h1.eph_pk) != 0) {
        rc = pd_errf(err, errlen, -EKEYREJECTED,
                     "handshake: M1's ephemeral key is a low-order point");
        goto wipe;
    }
    rc = make_hello(PD_FT_HS_M2, hs->key_id, eph_sk, p->nonce, p->layout, hs->psk, m2, err,
                    errlen);
    if (rc == 0) {
        pd_auth_key_schedule(hs->psk, dh, m1, m2, &hs->keys);
        memcpy(hs->m1, m1, PD_HS_HELLO_LEN);
        hs->minor = min_u8(PD_PROTO_MINOR, h1.minor);
        hs->peer_minor = h1.minor;
        hs->state = HS_AWAIT_CONFIRM;
        /* only now: a refused M1 must not take a slot in the cache */
        replay_add(p->replay, h1.nonce, p->now_ms);
        memcpy(msg, m2, PD_HS_HELLO_LEN);
        *msg_len = PD_HS_HELLO_LEN;
        sodium_memzero(hs->psk, sizeof(hs->psk)); /* the schedule no longer needs it */
        *out = hs;
    }
wipe:
    sodium_memzero(eph_sk, sizeof(eph_sk));
    sodium_memzero(dh, sizeof(dh));
    if (rc == 0)
        return 0;
fail:
    pd_auth_hs_free(hs);
    return rc;
}

/* D: M2 -> our confirmation. */
static int on_m2(struct pd_auth_hs *hs, const uint8_t *in, size_t in_len, uint8_t *msg,
                 size_t *msg_len, char *err, size_t errlen)
{
    struct pd_hs_hello h2, h1;
    uint8_t want[PD_HS_TAG_LEN], dh[32], confirm[32];
    int rc = pd_hs_hello_decode(PD_FT_HS_M2, in, in_len, &h2, err, errlen);
    if (rc < 0)
        return rc;
    if (strcmp(h2.key_id, hs->key_id) != 0)
        return pd_errf(err, errlen, -EKEYREJECTED,
                       "handshake: M2 names key id \"%s\"; we sent \"%s\"", h2.key_id, hs->key_id);
    hello_tag(hs->psk, PD_FT_HS_M2, in, want);
    if (crypto_verify_32(want, h2.tag) != 0)
        return pd_errf(err, errlen, -EKEYREJECTED,
                       "handshake: M2 tag does not verify (wrong key for id \"%s\", or altered)",
                       hs->key_id);
    /* our own M1 is well-formed: we wrote it */
    if ((rc = pd_hs_hello_decode(PD_FT_HS_M1, hs->m1, PD_HS_HELLO_LEN, &h1, err, errlen)) < 0 ||
        (rc = layout_compare(&h1.layout, &h2.layout, err, errlen)) < 0)
        return rc;
    if (crypto_scalarmult(dh, hs->eph_sk, h2.eph_pk) != 0)
        return pd_errf(err, errlen, -EKEYREJECTED,
                       "handshake: M2's ephemeral key is a low-order point");
    pd_auth_key_schedule(hs->psk, dh, hs->m1, in, &hs->keys);
    sodium_memzero(dh, sizeof(dh));
    pd_auth_confirmation(&hs->keys, PD_ROLE_D, confirm);
    pd_hs_confirm_encode(confirm, msg, PD_HS_CONFIRM_LEN, NULL, 0);
    *msg_len = PD_HS_CONFIRM_LEN;
    hs->minor = min_u8(PD_PROTO_MINOR, h2.minor);
    hs->peer_minor = h2.minor;
    hs->state = HS_AWAIT_CONFIRM;
    /* forward secrecy: nothing that could recompute dh outlives this step */
    sodium_memzero(hs->eph_sk, sizeof(hs->eph_sk));
    sodium_memzero(hs->psk, sizeof(hs->psk));
    return 0;
}

/* Both: the peer's confirmation; P answers with its own. */
static int on_confirm(struct pd_auth_hs *hs, const uint8_t *in, size_t in_len, uint8_t *msg,
                      size_t *msg_len, char *err, size_t errlen)
{
    uint8_t got[32], want[32], minor;
    int rc = pd_hs_confirm_decode(in, in_len, got, &minor, err, errlen);
    if (rc < 0)
        return rc;
    /* the confirmation MACs the transcript, not its own header: pin the one
     * header field the decoder leaves open to the authenticated hello's */
    if (minor != hs->peer_minor)
        return pd_errf(err, errlen, -EBADMSG,
                       "handshake: confirmation says version %d.%u, the hello said %d.%u",
                       PD_PROTO_MAJOR, minor, PD_PROTO_MAJOR, hs->peer_minor);
    enum pd_role peer = hs->role == PD_ROLE_D ? PD_ROLE_P : PD_ROLE_D;
    pd_auth_confirmation(&hs->keys, peer, want);
    if (crypto_verify_32(want, got) != 0)
        return pd_errf(err, errlen, -EKEYREJECTED,
                       "handshake: the peer's confirmation does not verify (wrong key, or a "
                       "reflected or altered message)");
    *msg_len = 0;
    if (hs->role == PD_ROLE_P) {
        pd_auth_confirmation(&hs->keys, PD_ROLE_P, want);
        pd_hs_confirm_encode(want, msg, PD_HS_CONFIRM_LEN, NULL, 0);
        *msg_len = PD_HS_CONFIRM_LEN;
    }
    hs->state = HS_DONE;
    return PD_AUTH_HS_DONE;
}

int pd_auth_hs_step(struct pd_auth_hs *hs, const uint8_t *in, size_t in_len, uint8_t *msg,
                    size_t cap, size_t *msg_len, char *err, size_t errlen)
{
    if (cap < PD_HS_CONFIRM_LEN)
        return pd_errf(err, errlen, -ENOBUFS, "handshake: the message buffer needs %d bytes",
                       PD_HS_CONFIRM_LEN);
    switch (hs->state) {
    case HS_AWAIT_M2:
        return on_m2(hs, in, in_len, msg, msg_len, err, errlen);
    case HS_AWAIT_CONFIRM:
        return on_confirm(hs, in, in_len, msg, msg_len, err, errlen);
    default:
        return pd_errf(err, errlen, -EINVAL, "handshake: already finished");
    }
}

int pd_auth_hs_take_session(struct pd_auth_hs *hs, struct pd_auth_session **out)
{
    if (hs->state != HS_DONE)
        return -EINVAL;
    int rc = pd_auth_session_new(hs, out);
    if (rc == 0) {
        hs->state = HS_TAKEN;
        sodium_memzero(&hs->keys, sizeof(hs->keys));
    }
    return rc;
}
