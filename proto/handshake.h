/* proto/handshake: the KV channel's handshake messages -- codec only. The
 * MACs, key agreement and key schedule live in common/kvchan/auth; this module
 * lays bytes out and checks them.
 *
 *   D -> P  M1       hello: key id, ephemeral X25519 key, nonce, KV layout, tag
 *   P -> D  M2       hello: the same fields from P, same key id
 *   D -> P  CONFIRM  D's confirmation of the transcript
 *   P -> D  CONFIRM  P's confirmation
 *
 *   struct pd_hs_hello m1 = { .key_id = "k1", .eph_pk = ..., .nonce = ..., .layout = ... };
 *   uint8_t buf[PD_HS_HELLO_LEN];
 *   pd_hs_hello_encode(PD_FT_HS_M1, &m1, buf, sizeof(buf), err, sizeof(err));
 *   // auth computes the tag over buf[0 .. PD_HS_HELLO_TAG_OFF) and writes it at that offset
 *
 *   struct pd_hs_hello got;
 *   if (pd_hs_hello_decode(PD_FT_HS_M1, buf, len, &got, err, sizeof(err)) < 0) ...
 *
 * Messages are frames (proto/frame.h header, seq 0, flags 0) of a fixed size.
 * Decoders return 0 or a negative errno with a message: -EPROTONOSUPPORT for
 * another major version (both named), -EBADMSG for anything malformed
 * (wrong type or length, key id not [A-Za-z0-9._-]{1,64}, reserved bytes or
 * key id padding not zero, a layout field out of range). The decoder does not
 * check the tag: it cannot (that needs the key).
 */
#ifndef PD_HANDSHAKE_H
#define PD_HANDSHAKE_H

#include "frame.h"

#include <stddef.h>
#include <stdint.h>

#define PD_KEY_ID_MAX 64
#define PD_HS_PK_LEN 32
#define PD_HS_NONCE_LEN 32
#define PD_HS_TAG_LEN 32
#define PD_HS_FP_LEN 32

#define PD_HS_HELLO_BODY 228
#define PD_HS_HELLO_LEN (PD_FRAME_HDR_LEN + PD_HS_HELLO_BODY)
#define PD_HS_HELLO_TAG_OFF (PD_HS_HELLO_LEN - PD_HS_TAG_LEN) /* the tag covers everything before */
#define PD_HS_CONFIRM_BODY 32
#define PD_HS_CONFIRM_LEN (PD_FRAME_HDR_LEN + PD_HS_CONFIRM_BODY)

/* What a KV block is, as both sides must agree on it. */
struct pd_kv_layout {
    uint32_t n_layer; /* 1..1024 */
    uint32_t n_head_kv; /* 1..1024 */
    uint32_t head_dim; /* 1..1024 */
    uint32_t block_size; /* tokens per block, 1..PD_PROTO_MAX_BLOCK_SIZE */
    uint32_t kv_dtype; /* enum pd_dtype (kernels/quant.h), < 256 */
    uint64_t block_bytes; /* 1..PD_PROTO_MAX_BLOCK_BYTES */
    uint8_t fingerprint[PD_HS_FP_LEN]; /* the model's (common/model/model.h) */
};

struct pd_hs_hello {
    uint8_t major, minor; /* from the header (decode); encode writes ours */
    char key_id[PD_KEY_ID_MAX + 1];
    uint8_t eph_pk[PD_HS_PK_LEN];
    uint8_t nonce[PD_HS_NONCE_LEN];
    struct pd_kv_layout layout;
    uint8_t tag[PD_HS_TAG_LEN];
};

/* 1 when s is a valid key id: 1..64 of [A-Za-z0-9._-]. */
int pd_key_id_valid(const char *s);

/* 0 or -EINVAL with a message naming the field and its range. */
int pd_kv_layout_check(const struct pd_kv_layout *l, char *err, size_t errlen);

/* type: PD_FT_HS_M1 or PD_FT_HS_M2. Writes PD_HS_HELLO_LEN bytes, the tag
 * field from h->tag (auth passes zeros, then writes the real tag). */
int pd_hs_hello_encode(uint8_t type, const struct pd_hs_hello *h, uint8_t *buf, size_t cap,
                       char *err, size_t errlen);
int pd_hs_hello_decode(uint8_t type, const uint8_t *buf, size_t len, struct pd_hs_hello *out,
                       char *err, size_t errlen);

/* Writes PD_HS_CONFIRM_LEN bytes. */
int pd_hs_confirm_encode(const uint8_t confirm[PD_HS_TAG_LEN], uint8_t *buf, size_t cap,
                         char *err, size_t errlen);
/* minor (may be NULL): the header's minor version, the one field of a
 * confirmation's header the decoder cannot pin down; auth requires it to
 * equal the sender's hello, so no bit of the message is malleable. */
int pd_hs_confirm_decode(const uint8_t *buf, size_t len, uint8_t confirm[PD_HS_TAG_LEN],
                         uint8_t *minor, char *err, size_t errlen);

#endif
