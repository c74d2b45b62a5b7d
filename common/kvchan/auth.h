/* common/kvchan/auth: the KV channel's session handshake, sealed control frames and
 * per-block integrity tags (DESIGN.md, "The KV channel"; docs/internals/kvchan.md).
 *
 * Handshake (D = decoded, initiator; P = prefilld, responder), lock-step:
 *
 *   D: pd_auth_hs_initiate(&p, &hs, msg, ...)         -> send msg (M1)
 *   P: pd_auth_hs_respond(&p, m1, len, &hs, msg, ...) -> send msg (M2)
 *   D: pd_auth_hs_step(hs, m2, len, msg, ...)         -> send msg (D's CONFIRM)
 *   P: pd_auth_hs_step(hs, cd, len, msg, ...)         -> PD_AUTH_HS_DONE; send msg (P's CONFIRM)
 *   D: pd_auth_hs_step(hs, cp, len, msg, ...)         -> PD_AUTH_HS_DONE; nothing to send
 *   both: pd_auth_hs_take_session(hs, &s); hs = pd_auth_hs_free(hs);
 *
 * Then every control frame goes through the session:
 *
 *   pd_auth_seal_frame(s, &frame, buf, cap, &wire_len, err, errlen);   // send buf
 *   pd_auth_open_frame(s, wire, len, plain, cap, &frame, err, errlen); // frame views point into plain
 *
 * and every KV block is tagged by the sender and verified by the receiver:
 *
 *   pd_auth_transfer_next(s, &transfer);                       // once per CHUNK
 *   pd_auth_tag_block(s, req, epoch, block, transfer, data, len, tag);
 *   if (pd_auth_tag_verify(s, req, epoch, block, transfer, data, len, tag) < 0) fail closed;
 *
 * Every refusal changes nothing: a handshake state, the replay cache, a
 * session's replay window and counters are exactly as before a message that is
 * refused, so forged traffic cannot disturb a handshake or a session (the
 * transport still closes a peer whose handshake fails; DESIGN.md counts and
 * logs those). Errors (negative errno, message in err; never key material):
 *   -EPROTONOSUPPORT another major protocol version (both versions named)
 *   -EBADMSG         malformed, or not the message expected now
 *   -ENOKEY          M1 names a key id we do not hold
 *   -EKEYREJECTED    a MAC, confirmation or block tag did not verify (wrong
 *                    key, altered or reflected message), or a low-order
 *                    X25519 point
 *   -EALREADY        replay: an M1 nonce seen recently, a frame counter seen
 *   -ESTALE          a frame counter older than the replay window
 *   -EBUSY           the responder's replay cache is full of live entries
 *   -EPROTO          KV layout or model fingerprint differ (both values named)
 *   -EOVERFLOW       a send or transfer counter is exhausted (reconnect)
 *   -ENOBUFS, -ENOMEM, -EINVAL (misuse: wrong state, bad parameters)
 *
 * Memory and threads: handshake states and sessions live in sodium_malloc
 * memory and are wiped when freed. An object is used by one thread at a time,
 * except that pd_auth_tag_block / pd_auth_tag_verify / pd_auth_transfer_next
 * may run on any number of threads at once alongside the owner's seal/open
 * (tags only read keys fixed at the handshake; the transfer counter is atomic).
 * No globals besides libsodium's own initialisation (pd_keyring_init).
 */
#ifndef PD_AUTH_H
#define PD_AUTH_H

#include "frame.h"
#include "handshake.h"
#include "keyring.h"

#include <stddef.h>
#include <stdint.h>

/* ---- replay cache of M1 nonces (responder) ---- */

/* A fixed number of nonces, each remembered for ttl_ms (at least the
 * handshake deadline: a replay after that can no longer complete a handshake
 * in time, because it needs the key to confirm). Entries expire in insertion
 * order; when every slot holds a live entry, new handshakes are refused
 * (-EBUSY) rather than forgetting a live nonce. */
#define PD_AUTH_REPLAY_DEFAULT 4096
struct pd_auth_replay;
int pd_auth_replay_new(size_t capacity, uint64_t ttl_ms, struct pd_auth_replay **out);
struct pd_auth_replay *pd_auth_replay_free(struct pd_auth_replay *rc); /* accepts NULL */
size_t pd_auth_replay_live(struct pd_auth_replay *rc, uint64_t now_ms);

/* ---- handshake ---- */

struct pd_auth_params {
    struct pd_keyring *keyring; /* both */
    const char *key_id; /* initiator: the key to use; NULL: the ring's only key */
    struct pd_auth_replay *replay; /* responder: required */
    const struct pd_kv_layout *layout; /* ours; the peer's must be equal */
    uint64_t now_ms; /* responder: monotonic milliseconds, for the replay cache */
    /* Randomness, for known-answer tests only: NULL draws from randombytes_buf. */
    const uint8_t *eph_sk; /* 32-byte X25519 secret key */
    const uint8_t *nonce; /* PD_HS_NONCE_LEN bytes */
};

#define PD_AUTH_MSG_MAX PD_HS_HELLO_LEN /* room for any handshake message */
#define PD_AUTH_HS_DONE 1

struct pd_auth_hs;

/* D: a new handshake with M1 in msg (cap >= PD_AUTH_MSG_MAX). */
int pd_auth_hs_initiate(const struct pd_auth_params *p, struct pd_auth_hs **out, uint8_t *msg,
                        size_t cap, size_t *msg_len, char *err, size_t errlen);
/* P: check M1 (key id, then its tag before any X25519, then the nonce and the
 * layout) and answer with M2 in msg. */
int pd_auth_hs_respond(const struct pd_auth_params *p, const uint8_t *m1, size_t m1_len,
                       struct pd_auth_hs **out, uint8_t *msg, size_t cap, size_t *msg_len,
                       char *err, size_t errlen);
/* Both: the peer's next message. Returns 0 (continue) or PD_AUTH_HS_DONE
 * (established); either way send msg when *msg_len > 0. */
int pd_auth_hs_step(struct pd_auth_hs *hs, const uint8_t *in, size_t in_len, uint8_t *msg,
                    size_t cap, size_t *msg_len, char *err, size_t errlen);
/* After PD_AUTH_HS_DONE, once: the session (the caller frees it). -EINVAL otherwise. */
struct pd_auth_session;
int pd_auth_hs_take_session(struct pd_auth_hs *hs, struct pd_auth_session **out);
/* Accepts NULL; returns NULL. Wipes. */
struct pd_auth_hs *pd_auth_hs_free(struct pd_auth_hs *hs);

/* ---- session: sealed control frames ---- */

#define PD_AUTH_WINDOW 1024 /* replay window, in frames */
#define PD_AUTH_COUNTER_LIMIT (1ull << 62) /* refuse to send past this: far before wrap */

struct pd_auth_session *pd_auth_session_free(struct pd_auth_session *s); /* accepts NULL */
enum pd_role pd_auth_session_role(const struct pd_auth_session *s);
const char *pd_auth_session_key_id(const struct pd_auth_session *s);
uint8_t pd_auth_session_minor(const struct pd_auth_session *s); /* negotiated: min of both */
/* 16 hex digits naming the session in logs on both sides (a prefix of the
 * public transcript hash; not secret). */
void pd_auth_session_id(const struct pd_auth_session *s, char hex[17]);
/* Lower the send-counter and transfer-counter limits (tests of exhaustion). */
void pd_auth_session_set_limits(struct pd_auth_session *s, uint64_t max_seq,
                                uint64_t max_transfer);

/* buf[0..len) is a plaintext control frame (pd_frame_encode) that our role
 * sends; cap >= len + PD_FRAME_MAC_LEN. Writes the next send counter into its
 * header, encrypts the body in place with the header as associated data, and
 * appends the MAC: *wire_len = len + PD_FRAME_MAC_LEN. */
int pd_auth_seal(struct pd_auth_session *s, uint8_t *buf, size_t len, size_t cap,
                 size_t *wire_len, char *err, size_t errlen);
/* pd_frame_encode + pd_auth_seal. */
int pd_auth_seal_frame(struct pd_auth_session *s, const struct pd_frame *f, uint8_t *buf,
                       size_t cap, size_t *wire_len, char *err, size_t errlen);
/* A sealed frame from the peer: header checks, the replay window (read
 * only), then the MAC; only an authentic frame moves the window. The
 * plaintext frame (header + body) goes to plain (cap >= wire_len -
 * PD_FRAME_MAC_LEN); wire is not modified. */
int pd_auth_open(struct pd_auth_session *s, const uint8_t *wire, size_t wire_len, uint8_t *plain,
                 size_t cap, size_t *plain_len, char *err, size_t errlen);
/* pd_auth_open + pd_frame_decode; out's views point into plain. A frame that
 * authenticates but does not decode still uses up its counter. */
int pd_auth_open_frame(struct pd_auth_session *s, const uint8_t *wire, size_t wire_len,
                       uint8_t *plain, size_t cap, struct pd_frame *out, char *err,
                       size_t errlen);

/* ---- session: KV block tags ---- */

/* A transfer counter for the next CHUNK: unique within the session, never
 * reused (it is half the one-time key's nonce). -EOVERFLOW when exhausted. */
int pd_auth_transfer_next(struct pd_auth_session *s, uint64_t *transfer);
/* Poly1305 over (request id, epoch, block, len, data) with a one-time key from
 * the tag key's ChaCha20 keystream at nonce (block, transfer). */
void pd_auth_tag_block(const struct pd_auth_session *s, uint64_t request_id, uint32_t epoch,
                       uint32_t block, uint64_t transfer, const void *data, size_t len,
                       uint8_t tag[PD_BLOCK_TAG_LEN]);
/* What pd_auth_tag_block feeds Poly1305, for a tagger elsewhere (kernels/tag
 * on a GPU): tag = crypto_onetimeauth(otk, prefix || data). The caller wipes
 * otk after use. */
#define PD_AUTH_TAG_KEY_LEN 32
#define PD_AUTH_TAG_PREFIX_LEN 24
void pd_auth_tag_key(const struct pd_auth_session *s, uint64_t request_id, uint32_t epoch,
                     uint32_t block, uint64_t transfer, size_t len,
                     uint8_t otk[PD_AUTH_TAG_KEY_LEN], uint8_t prefix[PD_AUTH_TAG_PREFIX_LEN]);
/* 0, or -EKEYREJECTED (constant-time compare). */
int pd_auth_tag_verify(const struct pd_auth_session *s, uint64_t request_id, uint32_t epoch,
                       uint32_t block, uint64_t transfer, const void *data, size_t len,
                       const uint8_t tag[PD_BLOCK_TAG_LEN]);

#endif
