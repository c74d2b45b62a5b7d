/* An established KV session: sealed control frames with a replay window, and
 * per-block integrity tags. The handshake that makes one is in auth.c. */
#include "auth.h"

#include "auth_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

int pd_auth_session_new(const struct pd_auth_hs *hs, struct pd_auth_session **out)
{
    struct pd_auth_session *s = sodium_malloc(sizeof(*s));
    if (!s)
        return -ENOMEM;
    sodium_memzero(s, sizeof(*s));
    s->role = hs->role;
    s->minor = hs->minor;
    memcpy(s->key_id, hs->key_id, sizeof(s->key_id));
    memcpy(s->id, hs->keys.h, sizeof(s->id));
    /* one key per direction, so D->P and P->D never share a (key, nonce) pair */
    int d = hs->role == PD_ROLE_D;
    memcpy(s->k_send, d ? hs->keys.ctl_d2p : hs->keys.ctl_p2d, 32);
    memcpy(s->k_recv, d ? hs->keys.ctl_p2d : hs->keys.ctl_d2p, 32);
    memcpy(s->k_tag, hs->keys.tag, 32);
    memcpy(s->k_enc, hs->keys.enc, 32);
    /* counter 0 is never sent: a zeroed window then means "nothing seen" */
    s->send_next = 1;
    s->send_limit = PD_AUTH_COUNTER_LIMIT;
    atomic_init(&s->transfer_next, 1);
    s->transfer_limit = PD_AUTH_COUNTER_LIMIT;
    *out = s;
    return 0;
}

struct pd_auth_session *pd_auth_session_free(struct pd_auth_session *s)
{
    sodium_free(s);
    return NULL;
}

enum pd_role pd_auth_session_role(const struct pd_auth_session *s) { return s->role; }
const char *pd_auth_session_key_id(const struct pd_auth_session *s) { return s->key_id; }
uint8_t pd_auth_session_minor(const struct pd_auth_session *s) { return s->minor; }

void pd_auth_session_id(const struct pd_auth_session *s, char hex[17])
{
    sodium_bin2hex(hex, 17, s->id, sizeof(s->id));
}

void pd_auth_session_set_limits(struct pd_auth_session *s, uint64_t max_seq,
                                uint64_t max_transfer)
{
    if (max_seq < s->send_limit)
        s->send_limit = max_seq;
    if (max_transfer < s->transfer_limit)
        s->transfer_limit = max_transfer;
}

/* ---- sealed control frames ---- */

/* ChaCha20-Poly1305-IETF nonce: 4 zero bytes || LE64(counter). */
static void frame_nonce(uint64_t seq, uint8_t n[crypto_aead_chacha20poly1305_IETF_NPUBBYTES])
{
    memset(n, 0, 4);
    for (int i = 0; i < 8; i++)
        n[4 + i] = (uint8_t)(seq >> (8 * i));
}

static void put_seq(uint8_t *hdr, uint64_t seq)
{
    for (int i = 0; i < 8; i++)
        hdr[16 + i] = (uint8_t)(seq >> (8 * i));
}

int pd_auth_seal(struct pd_auth_session *s, uint8_t *buf, size_t len, size_t cap,
                 size_t *wire_len, char *err, size_t errlen)
{
    struct pd_frame_hdr h;
    uint8_t nonce[crypto_aead_chacha20poly1305_IETF_NPUBBYTES];
    int rc = pd_frame_hdr_decode(buf, len, &h, err, errlen);
    if (rc < 0)
        return -EINVAL;
    if (!pd_frame_type_sealed(h.type) || !pd_frame_sender_ok(h.type, s->role))
        return pd_errf(err, errlen, -EINVAL, "seal: %s is not a frame %s sends",
                       pd_frame_type_name(h.type), s->role == PD_ROLE_D ? "decoded" : "prefilld");
    if (len != PD_FRAME_HDR_LEN + (size_t)h.len)
        return pd_errf(err, errlen, -EINVAL, "seal: %zu bytes, the header says %zu", len,
                       PD_FRAME_HDR_LEN + (size_t)h.len);
    if (cap < len + PD_FRAME_MAC_LEN)
        return pd_errf(err, errlen, -ENOBUFS, "seal: needs %zu bytes of room, the buffer has %zu",
                       len + PD_FRAME_MAC_LEN, cap);
    if (s->send_next > s->send_limit)
        return pd_errf(err, errlen, -EOVERFLOW,
                       "seal: send counter exhausted after %" PRIu64
                       " frames; the session must be re-established",
                       s->send_limit);
    uint64_t seq = s->send_next++;
    put_seq(buf, seq);
    frame_nonce(seq, nonce);
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        buf + PD_FRAME_HDR_LEN, buf + len, NULL, buf + PD_FRAME_HDR_LEN, h.len, buf,
        PD_FRAME_HDR_LEN, NULL, nonce, s->k_send);
    *wire_len = len + PD_FRAME_MAC_LEN;
    return 0;
}

int pd_auth_seal_frame(struct pd_auth_session *s, const struct pd_frame *f, uint8_t *buf,
                       size_t cap, size_t *wire_len, char *err, size_t errlen)
{
    size_t len;
    if (!pd_frame_sender_ok(f->type, s->role))
        return pd_errf(err, errlen, -EINVAL, "seal: %s is not a frame %s sends",
                       pd_frame_type_name(f->type), s->role == PD_ROLE_D ? "decoded" : "prefilld");
    /* the MAC's room is part of the check, so a frame is never half-built */
    if (cap < PD_FRAME_MAC_LEN)
        return pd_errf(err, errlen, -ENOBUFS, "seal: buffer of %zu bytes", cap);
    int rc = pd_frame_encode(f, 0, buf, cap - PD_FRAME_MAC_LEN, &len, err, errlen);
    if (rc < 0)
        return rc;
    return pd_auth_seal(s, buf, len, cap, wire_len, err, errlen);
}

/* Replay window over the receive counters: a ring of PD_AUTH_WINDOW bits,
 * bit (c % WINDOW) standing for counter c while c is within the window. */
static int window_check(const struct pd_auth_session *s, uint64_t c, char *err, size_t errlen)
{
    if (c == 0)
        return pd_errf(err, errlen, -EBADMSG, "open: counter 0 is never sent");
    if (c > s->recv_top)
        return 0;
    if (s->recv_top - c >= PD_AUTH_WINDOW)
        return pd_errf(err, errlen, -ESTALE,
                       "open: counter %" PRIu64 " is older than the window (newest %" PRIu64
                       ", width %d)",
                       c, s->recv_top, PD_AUTH_WINDOW);
    if (s->recv_bits[(c % PD_AUTH_WINDOW) / 64] >> (c % 64) & 1)
        return pd_errf(err, errlen, -EALREADY,
                       "open: counter %" PRIu64 " was already received (replay)", c);
    return 0;
}

static void window_mark(struct pd_auth_session *s, uint64_t c)
{
    if (c > s->recv_top) {
        /* forget the counters that slide out of the window */
        if (c - s->recv_top >= PD_AUTH_WINDOW) {
            memset(s->recv_bits, 0, sizeof(s->recv_bits));
        } else {
            for (uint64_t x = s->recv_top + 1; x <= c; x++)
                s->recv_bits[(x % PD_AUTH_WINDOW) / 64] &= ~(1ull << (x % 64));
        }
        s->recv_top = c;
    }
    s->recv_bits[(c % PD_AUTH_WINDOW) / 64] |= 1ull << (c % 64);
}

int pd_auth_open(struct pd_auth_session *s, const uint8_t *wire, size_t wire_len, uint8_t *plain,
                 size_t cap, size_t *plain_len, char *err, size_t errlen)
{
    struct pd_frame_hdr h;
    uint8_t nonce[crypto_aead_chacha20poly1305_IETF_NPUBBYTES];
    int rc = pd_frame_hdr_decode(wire, wire_len, &h, err, errlen);
    if (rc < 0)
        return rc;
    if (!pd_frame_type_sealed(h.type))
        return pd_errf(err, errlen, -EBADMSG, "open: %s is not a sealed frame",
                       pd_frame_type_name(h.type));
    if (wire_len != pd_frame_wire_len(&h))
        return pd_errf(err, errlen, -EBADMSG, "open: %s of %zu bytes, the header says %zu",
                       pd_frame_type_name(h.type), wire_len, pd_frame_wire_len(&h));
    if (cap < PD_FRAME_HDR_LEN + (size_t)h.len)
        return pd_errf(err, errlen, -ENOBUFS, "open: needs %zu bytes of room, the buffer has %zu",
                       PD_FRAME_HDR_LEN + (size_t)h.len, cap);
    /* cheap refusals first; the window itself moves only for an authentic frame */
    if ((rc = window_check(s, h.seq, err, errlen)) < 0)
        return rc;
    frame_nonce(h.seq, nonce);
    if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(
            plain + PD_FRAME_HDR_LEN, NULL, wire + PD_FRAME_HDR_LEN, h.len,
            wire + PD_FRAME_HDR_LEN + h.len, wire, PD_FRAME_HDR_LEN, nonce, s->k_recv) != 0)
        return pd_errf(err, errlen, -EKEYREJECTED,
                       "open: %s frame %" PRIu64 " does not authenticate",
                       pd_frame_type_name(h.type), h.seq);
    /* authentic, so its sender holds the session key: direction is a protocol
     * error of the peer, but the counter is still spent */
    window_mark(s, h.seq);
    memcpy(plain, wire, PD_FRAME_HDR_LEN);
    *plain_len = PD_FRAME_HDR_LEN + h.len;
    if (!pd_frame_sender_ok(h.type, s->role == PD_ROLE_D ? PD_ROLE_P : PD_ROLE_D))
        return pd_errf(err, errlen, -EBADMSG, "open: %s is not a frame %s sends",
                       pd_frame_type_name(h.type), s->role == PD_ROLE_D ? "prefilld" : "decoded");
    return 0;
}

int pd_auth_open_frame(struct pd_auth_session *s, const uint8_t *wire, size_t wire_len,
                       uint8_t *plain, size_t cap, struct pd_frame *out, char *err,
                       size_t errlen)
{
    size_t n;
    int rc = pd_auth_open(s, wire, wire_len, plain, cap, &n, err, errlen);
    if (rc < 0)
        return rc;
    return pd_frame_decode(plain, n, out, err, errlen);
}

/* ---- block tags ---- */

int pd_auth_transfer_next(struct pd_auth_session *s, uint64_t *transfer)
{
    uint64_t cur = atomic_load(&s->transfer_next);
    do {
        if (cur > s->transfer_limit)
            return -EOVERFLOW;
    } while (!atomic_compare_exchange_weak(&s->transfer_next, &cur, cur + 1));
    *transfer = cur;
    return 0;
}

void pd_auth_tag_key(const struct pd_auth_session *s, uint64_t request_id, uint32_t epoch,
                     uint32_t block, uint64_t transfer, size_t len,
                     uint8_t otk[PD_AUTH_TAG_KEY_LEN], uint8_t prefix[PD_AUTH_TAG_PREFIX_LEN])
{
    uint8_t nonce[crypto_stream_chacha20_ietf_NONCEBYTES];

    /* one-time key: (block, transfer) is unique in the session, so no two
     * tags ever share a Poly1305 key */
    for (int i = 0; i < 4; i++)
        nonce[i] = (uint8_t)(block >> (8 * i));
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(transfer >> (8 * i));
    crypto_stream_chacha20_ietf(otk, PD_AUTH_TAG_KEY_LEN, nonce, s->k_tag);

    /* request id and epoch repeat on retries, so they are authenticated but
     * are not part of the nonce */
    for (int i = 0; i < 8; i++)
        prefix[i] = (uint8_t)(request_id >> (8 * i));
    for (int i = 0; i < 4; i++) {
        prefix[8 + i] = (uint8_t)(epoch >> (8 * i));
        prefix[12 + i] = (uint8_t)(block >> (8 * i));
    }
    for (int i = 0; i < 8; i++)
        prefix[16 + i] = (uint8_t)((uint64_t)len >> (8 * i));
}

void pd_auth_tag_block(const struct pd_auth_session *s, uint64_t request_id, uint32_t epoch,
                       uint32_t block, uint64_t transfer, const void *data, size_t len,
                       uint8_t tag[PD_BLOCK_TAG_LEN])
{
    uint8_t otk[PD_AUTH_TAG_KEY_LEN], prefix[PD_AUTH_TAG_PREFIX_LEN];
    crypto_onetimeauth_state st;
    _Static_assert(PD_AUTH_TAG_KEY_LEN == crypto_onetimeauth_KEYBYTES, "Poly1305 key");

    pd_auth_tag_key(s, request_id, epoch, block, transfer, len, otk, prefix);
    crypto_onetimeauth_init(&st, otk);
    crypto_onetimeauth_update(&st, prefix, sizeof(prefix));
    crypto_onetimeauth_update(&st, data, len);
    crypto_onetimeauth_final(&st, tag);
    sodium_memzero(otk, sizeof(otk));
    sodium_memzero(&st, sizeof(st));
}

int pd_auth_tag_verify(const struct pd_auth_session *s, uint64_t request_id, uint32_t epoch,
                       uint32_t block, uint64_t transfer, const void *data, size_t len,
                       const uint8_t tag[PD_BLOCK_TAG_LEN])
{
    uint8_t want[PD_BLOCK_TAG_LEN];
    pd_auth_tag_block(s, request_id, epoch, block, transfer, data, len, want);
    return crypto_verify_16(want, tag) == 0 ? 0 : -EKEYREJECTED;
}
