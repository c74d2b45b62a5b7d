#include "handshake.h"

#include "wire.h"

#include <errno.h>
#include <inttypes.h>

/* Offsets in the hello body (docs/internals/proto.md has the table). */
#define H_KEYID_LEN 0
#define H_RESERVED 1 /* 3 bytes */
#define H_KEYID 4 /* 64 bytes, zero-padded */
#define H_PK 68
#define H_NONCE 100
#define H_LAYOUT 132 /* 32 bytes */
#define H_FP 164
#define H_TAG 196

static int key_id_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

int pd_key_id_valid(const char *s)
{
    size_t n = 0;
    if (!s)
        return 0;
    for (; s[n]; n++)
        if (n >= PD_KEY_ID_MAX || !key_id_char((unsigned char)s[n]))
            return 0;
    return n >= 1;
}

int pd_kv_layout_check(const struct pd_kv_layout *l, char *err, size_t errlen)
{
#define RANGE(field, lo, hi)                                                                       \
    if (l->field < (lo) || l->field > (hi))                                                        \
        return pd_errf(err, errlen, -EINVAL,                                                       \
                       "handshake: layout " #field " %" PRIu64 " is outside %llu..%llu",           \
                       (uint64_t)l->field, (unsigned long long)(lo), (unsigned long long)(hi));
    RANGE(n_layer, 1, 1024)
    RANGE(n_head_kv, 1, 1024)
    RANGE(head_dim, 1, 1024)
    RANGE(block_size, 1, PD_PROTO_MAX_BLOCK_SIZE)
    RANGE(block_bytes, 1, PD_PROTO_MAX_BLOCK_BYTES)
#undef RANGE
    if (l->kv_dtype > 255)
        return pd_errf(err, errlen, -EINVAL,
                       "handshake: layout kv_dtype %" PRIu32 " is outside 0..255", l->kv_dtype);
    return 0;
}

static int hello_type_ok(uint8_t type) { return type == PD_FT_HS_M1 || type == PD_FT_HS_M2; }

int pd_hs_hello_encode(uint8_t type, const struct pd_hs_hello *h, uint8_t *buf, size_t cap,
                       char *err, size_t errlen)
{
    int rc;
    if (!hello_type_ok(type))
        return pd_errf(err, errlen, -EINVAL, "handshake: type %u is not a hello", type);
    if (!pd_key_id_valid(h->key_id))
        return pd_errf(err, errlen, -EINVAL, "handshake: key id is not 1..%d of [A-Za-z0-9._-]",
                       PD_KEY_ID_MAX);
    if ((rc = pd_kv_layout_check(&h->layout, err, errlen)) < 0)
        return rc;
    if (cap < PD_HS_HELLO_LEN)
        return pd_errf(err, errlen, -ENOBUFS, "handshake: hello needs %d bytes, the buffer has %zu",
                       PD_HS_HELLO_LEN, cap);
    struct pd_frame_hdr hdr = {
        .major = PD_PROTO_MAJOR, .minor = PD_PROTO_MINOR, .type = type, .len = PD_HS_HELLO_BODY,
    };
    pd_frame_hdr_encode(&hdr, buf);
    uint8_t *b = buf + PD_FRAME_HDR_LEN;
    size_t kl = strlen(h->key_id);
    memset(b, 0, PD_HS_HELLO_BODY);
    b[H_KEYID_LEN] = (uint8_t)kl;
    memcpy(b + H_KEYID, h->key_id, kl);
    memcpy(b + H_PK, h->eph_pk, PD_HS_PK_LEN);
    memcpy(b + H_NONCE, h->nonce, PD_HS_NONCE_LEN);
    put_u32(b + H_LAYOUT, h->layout.n_layer);
    put_u32(b + H_LAYOUT + 4, h->layout.n_head_kv);
    put_u32(b + H_LAYOUT + 8, h->layout.head_dim);
    put_u32(b + H_LAYOUT + 12, h->layout.block_size);
    put_u32(b + H_LAYOUT + 16, h->layout.kv_dtype);
    put_u64(b + H_LAYOUT + 24, h->layout.block_bytes); /* +20: reserved, zero */
    memcpy(b + H_FP, h->layout.fingerprint, PD_HS_FP_LEN);
    memcpy(b + H_TAG, h->tag, PD_HS_TAG_LEN);
    return 0;
}

/* The header of a handshake message of `type` and exact total length. */
static int hs_header(uint8_t type, const uint8_t *buf, size_t len, size_t want,
                     struct pd_frame_hdr *h, char *err, size_t errlen)
{
    int rc = pd_frame_hdr_decode(buf, len, h, err, errlen);
    if (rc < 0)
        return rc;
    if (h->type != type)
        return pd_errf(err, errlen, -EBADMSG, "handshake: expected %s, got %s",
                       pd_frame_type_name(type), pd_frame_type_name(h->type));
    if (len != want)
        return pd_errf(err, errlen, -EBADMSG, "handshake: %s of %zu bytes; it is %zu",
                       pd_frame_type_name(type), len, want);
    return 0;
}

int pd_hs_hello_decode(uint8_t type, const uint8_t *buf, size_t len, struct pd_hs_hello *out,
                       char *err, size_t errlen)
{
    struct pd_frame_hdr hdr;
    struct pd_hs_hello h;
    int rc;

    if (!hello_type_ok(type))
        return pd_errf(err, errlen, -EINVAL, "handshake: type %u is not a hello", type);
    if ((rc = hs_header(type, buf, len, PD_HS_HELLO_LEN, &hdr, err, errlen)) < 0)
        return rc;
    const uint8_t *b = buf + PD_FRAME_HDR_LEN;
    size_t kl = b[H_KEYID_LEN];
    if (kl < 1 || kl > PD_KEY_ID_MAX)
        return pd_errf(err, errlen, -EBADMSG, "handshake: key id length %zu is outside 1..%d", kl,
                       PD_KEY_ID_MAX);
    if (!all_zero(b + H_RESERVED, 3) || !all_zero(b + H_KEYID + kl, PD_KEY_ID_MAX - kl) ||
        !all_zero(b + H_LAYOUT + 20, 4))
        return pd_errf(err, errlen, -EBADMSG, "handshake: reserved or padding bytes are not zero");
    memset(&h, 0, sizeof(h));
    h.major = hdr.major;
    h.minor = hdr.minor;
    /* every one of the kl bytes: a NUL inside would make "k1\0\0" (length 4)
     * another spelling of "k1" */
    for (size_t i = 0; i < kl; i++)
        if (!key_id_char(b[H_KEYID + i]))
            return pd_errf(err, errlen, -EBADMSG, "handshake: key id is not [A-Za-z0-9._-]");
    memcpy(h.key_id, b + H_KEYID, kl);
    memcpy(h.eph_pk, b + H_PK, PD_HS_PK_LEN);
    memcpy(h.nonce, b + H_NONCE, PD_HS_NONCE_LEN);
    h.layout.n_layer = get_u32(b + H_LAYOUT);
    h.layout.n_head_kv = get_u32(b + H_LAYOUT + 4);
    h.layout.head_dim = get_u32(b + H_LAYOUT + 8);
    h.layout.block_size = get_u32(b + H_LAYOUT + 12);
    h.layout.kv_dtype = get_u32(b + H_LAYOUT + 16);
    h.layout.block_bytes = get_u64(b + H_LAYOUT + 24);
    memcpy(h.layout.fingerprint, b + H_FP, PD_HS_FP_LEN);
    memcpy(h.tag, b + H_TAG, PD_HS_TAG_LEN);
    if ((rc = pd_kv_layout_check(&h.layout, err, errlen)) < 0)
        return -EBADMSG;
    *out = h;
    return 0;
}

int pd_hs_confirm_encode(const uint8_t confirm[PD_HS_TAG_LEN], uint8_t *buf, size_t cap,
                         char *err, size_t errlen)
{
    if (cap < PD_HS_CONFIRM_LEN)
        return pd_errf(err, errlen, -ENOBUFS,
                       "handshake: confirmation needs %d bytes, the buffer has %zu",
                       PD_HS_CONFIRM_LEN, cap);
    struct pd_frame_hdr hdr = {
        .major = PD_PROTO_MAJOR, .minor = PD_PROTO_MINOR, .type = PD_FT_HS_CONFIRM,
        .len = PD_HS_CONFIRM_BODY,
    };
    pd_frame_hdr_encode(&hdr, buf);
    memcpy(buf + PD_FRAME_HDR_LEN, confirm, PD_HS_TAG_LEN);
    return 0;
}

int pd_hs_confirm_decode(const uint8_t *buf, size_t len, uint8_t confirm[PD_HS_TAG_LEN],
                         uint8_t *minor, char *err, size_t errlen)
{
    struct pd_frame_hdr hdr;
    int rc = hs_header(PD_FT_HS_CONFIRM, buf, len, PD_HS_CONFIRM_LEN, &hdr, err, errlen);
    if (rc < 0)
        return rc;
    memcpy(confirm, buf + PD_FRAME_HDR_LEN, PD_HS_TAG_LEN);
    if (minor)
        *minor = hdr.minor;
    return 0;
}
