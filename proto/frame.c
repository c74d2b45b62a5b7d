#include "frame.h"

#include "wire.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>

/* Fixed parts of the bodies; the variable parts follow them. */
#define PREFILL_FIXED 68
#define PREFIX_PART 72 /* PREFILL's with PD_PREFILL_F_PREFIX: salt, n_cached, 4 zero, name */
#define PART_HEAD 8 /* PREFILL's bias and mask parts: the count, 4 zero; then the entries */
#define CHUNK_FIXED 40
#define DONE_FIXED 32
#define ABORT_FIXED 16
#define REQREF_LEN 12
#define ERROR_FIXED 4
#define UCX_ADDR_FIXED 16
#define READY_LEN 8
#define PROGRESS_LEN 24
#define PROMPT_LP_FIXED 24
#define LP_ROW(n_top) (4 + 8 * (size_t)(n_top)) /* a PROMPT_LP row's bytes */

enum { FROM_D = 1u << PD_ROLE_D, FROM_P = 1u << PD_ROLE_P, FROM_BOTH = FROM_D | FROM_P };

/* A fixed-size field of a control body: `size` bytes at `at`, little-endian,
 * and the member of the same width in the type's struct (a float travels as
 * the bits of its binary32). The encoder and the decoder both take a body's
 * fixed part from these tables; the bytes between fields are reserved, zero.
 * What follows a fixed part (tokens, tags, strings) and the length fields
 * that count it are each codec's own. */
struct field {
    uint16_t mem; /* offset of the member in struct <type> */
    uint8_t at, size; /* size 0 ends a table */
};
/* (the tables packed, a few fields a line, not one a line) */
/* clang-format off */
#define FIELD(s, m, at) {offsetof(struct s, m), (at), sizeof(((struct s *)0)->m)}

/* PREFILL; the X-Request-Id's length is the u16 at 64 */
static const struct field prefill_fields[] = {
    FIELD(pd_prefill, request_id, 0), FIELD(pd_prefill, epoch, 8), FIELD(pd_prefill, n_tokens, 12),
    FIELD(pd_prefill, n_blocks, 16), FIELD(pd_prefill, block_size, 20),
    FIELD(pd_prefill, temperature, 24), FIELD(pd_prefill, top_p, 28), FIELD(pd_prefill, min_p, 32),
    FIELD(pd_prefill, top_k, 36), FIELD(pd_prefill, presence_penalty, 40),
    FIELD(pd_prefill, frequency_penalty, 44), FIELD(pd_prefill, repetition_penalty, 48),
    FIELD(pd_prefill, n_logprobs, 52), FIELD(pd_prefill, seed, 56), FIELD(pd_prefill, flags, 66),
    {0}};
/* CHUNK; 20..23 reserved */
static const struct field chunk_fields[] = {
    FIELD(pd_chunk, request_id, 0), FIELD(pd_chunk, epoch, 8), FIELD(pd_chunk, first_block, 12),
    FIELD(pd_chunk, n_blocks, 16), FIELD(pd_chunk, transfer, 24),
    FIELD(pd_chunk, block_bytes, 32), {0}};
static const struct field ack_fields[] = {
    FIELD(pd_ack, request_id, 0), FIELD(pd_ack, epoch, 8), FIELD(pd_ack, blocks, 12), {0}};
/* DONE; 28..31 reserved */
static const struct field done_fields[] = {
    FIELD(pd_done, request_id, 0), FIELD(pd_done, epoch, 8), FIELD(pd_done, n_prompt, 12),
    FIELD(pd_done, token, 16), FIELD(pd_done, logprob, 20), FIELD(pd_done, n_top, 24), {0}};
/* ABORT; the detail's length is the u16 at 14 */
static const struct field abort_fields[] = {
    FIELD(pd_abort, request_id, 0), FIELD(pd_abort, epoch, 8), FIELD(pd_abort, reason, 12), {0}};
static const struct field reqref_fields[] = {
    FIELD(pd_reqref, request_id, 0), FIELD(pd_reqref, epoch, 8), {0}};
/* HEARTBEAT; 4..7 reserved */
static const struct field heartbeat_fields[] = {
    FIELD(pd_heartbeat, lease_ms, 0), FIELD(pd_heartbeat, seq, 8), {0}};
/* ERROR; the detail's length is the u16 at 2 */
static const struct field error_fields[] = {FIELD(pd_error, reason, 0), {0}};
/* UCX_ADDR; 12..15 reserved */
static const struct field ucx_addr_fields[] = {
    FIELD(pd_ucx_addr, token, 0), FIELD(pd_ucx_addr, len, 8), {0}};
static const struct field ready_fields[] = {FIELD(pd_ready, token, 0), {0}};
/* PROGRESS; 14..15 reserved */
static const struct field progress_fields[] = {
    FIELD(pd_progress, request_id, 0), FIELD(pd_progress, epoch, 8), FIELD(pd_progress, state, 12),
    FIELD(pd_progress, tokens_done, 16), FIELD(pd_progress, n_tokens, 20), {0}};
/* PROMPT_LP; the rows follow */
static const struct field prompt_lp_fields[] = {
    FIELD(pd_prompt_lp, request_id, 0), FIELD(pd_prompt_lp, epoch, 8),
    FIELD(pd_prompt_lp, first, 12), FIELD(pd_prompt_lp, n_rows, 16),
    FIELD(pd_prompt_lp, n_top, 20), {0}};
/* clang-format on */

/* One row per type: what the header check needs before the body is touched,
 * and the layout of a control body's fixed part. */
struct type_info {
    const char *name;
    uint8_t sealed;
    uint8_t senders;
    uint32_t min_len, max_len; /* body */
    const struct field *fields; /* in the struct of its pd_frame.u member */
};

static const struct type_info types[] = {
    [PD_FT_HS_M1] = {"HS_M1", 0, FROM_D, 228, 228},
    [PD_FT_HS_M2] = {"HS_M2", 0, FROM_P, 228, 228},
    [PD_FT_HS_CONFIRM] = {"HS_CONFIRM", 0, FROM_BOTH, 32, 32},
    [PD_FT_PREFILL] = {"PREFILL", 1, FROM_D, PREFILL_FIXED + 4 + 1,
                       PREFILL_FIXED + PREFIX_PART + PART_HEAD + 8 * PD_PROTO_MAX_BIAS +
                           PART_HEAD + 4 * PD_PROTO_MAX_MASK_WORDS + 4 * PD_PROTO_MAX_TOKENS +
                           PD_PROTO_MAX_XRID,
                       prefill_fields},
    [PD_FT_CHUNK] = {"CHUNK", 1, FROM_P, CHUNK_FIXED + PD_BLOCK_TAG_LEN,
                     CHUNK_FIXED + PD_BLOCK_TAG_LEN *PD_PROTO_MAX_CHUNK_BLOCKS, chunk_fields},
    [PD_FT_ACK] = {"ACK", 1, FROM_D, 16, 16, ack_fields},
    [PD_FT_DONE] = {"DONE", 1, FROM_P, DONE_FIXED, DONE_FIXED + 8 * PD_PROTO_MAX_LOGPROBS,
                    done_fields},
    [PD_FT_ABORT] = {"ABORT", 1, FROM_BOTH, ABORT_FIXED, ABORT_FIXED + PD_PROTO_MAX_DETAIL,
                     abort_fields},
    [PD_FT_ABORT_ACK] = {"ABORT_ACK", 1, FROM_BOTH, REQREF_LEN, REQREF_LEN, reqref_fields},
    [PD_FT_CANCEL] = {"CANCEL", 1, FROM_D, REQREF_LEN, REQREF_LEN, reqref_fields},
    [PD_FT_HEARTBEAT] = {"HEARTBEAT", 1, FROM_BOTH, 16, 16, heartbeat_fields},
    [PD_FT_ERROR] = {"ERROR", 1, FROM_BOTH, ERROR_FIXED, ERROR_FIXED + PD_PROTO_MAX_DETAIL,
                     error_fields},
    [PD_FT_UCX_ADDR] = {"UCX_ADDR", 1, FROM_BOTH, UCX_ADDR_FIXED + 1,
                        UCX_ADDR_FIXED + PD_PROTO_MAX_UCX_ADDR, ucx_addr_fields},
    [PD_FT_READY] = {"READY", 1, FROM_P, READY_LEN, READY_LEN, ready_fields},
    [PD_FT_PROGRESS] = {"PROGRESS", 1, FROM_P, PROGRESS_LEN, PROGRESS_LEN, progress_fields},
    [PD_FT_PROMPT_LP] = {"PROMPT_LP", 1, FROM_P, PROMPT_LP_FIXED + 4,
                         PROMPT_LP_FIXED + PD_PROTO_MAX_LP_ROWS * (4 + 8 * PD_PROTO_MAX_LOGPROBS),
                         prompt_lp_fields},
};
#define N_TYPES (sizeof(types) / sizeof(types[0]))

static const struct type_info *type_info(unsigned type)
{
    return type < N_TYPES && types[type].name ? &types[type] : NULL;
}

const char *pd_frame_type_name(unsigned type)
{
    const struct type_info *ti = type_info(type);
    return ti ? ti->name : "unknown";
}

int pd_frame_type_known(unsigned type) { return type_info(type) != NULL; }

int pd_frame_type_sealed(unsigned type)
{
    const struct type_info *ti = type_info(type);
    return ti && ti->sealed;
}

int pd_frame_sender_ok(unsigned type, enum pd_role role)
{
    const struct type_info *ti = type_info(type);
    return ti && (role == PD_ROLE_D || role == PD_ROLE_P) && (ti->senders & (1u << role));
}

static const char *const reason_names[PD_R_MAX + 1] = {
    [PD_R_INTERNAL] = "internal",
    [PD_R_PROTOCOL] = "protocol",
    [PD_R_VERSION] = "version",
    [PD_R_AUTH] = "auth",
    [PD_R_LAYOUT] = "layout_mismatch",
    [PD_R_MODEL] = "model_mismatch",
    [PD_R_OVERLOADED] = "overloaded",
    [PD_R_TOO_LARGE] = "too_large",
    [PD_R_INVALID_REQUEST] = "invalid_request",
    [PD_R_CANCELLED] = "cancelled",
    [PD_R_TIMEOUT] = "timeout",
    [PD_R_INTEGRITY] = "integrity",
    [PD_R_SHUTDOWN] = "shutdown",
    [PD_R_UNKNOWN_REQUEST] = "unknown_request",
    [PD_R_TRANSFER] = "transfer_failed",
    [PD_R_COMPUTE] = "compute_failed",
};

const char *pd_reason_name(unsigned reason)
{
    return reason >= 1 && reason <= PD_R_MAX ? reason_names[reason] : "unknown";
}

/* ---- header ---- */

void pd_frame_hdr_encode(const struct pd_frame_hdr *h, uint8_t out[PD_FRAME_HDR_LEN])
{
    memcpy(out, PD_FRAME_MAGIC, 4);
    out[4] = h->major;
    out[5] = h->minor;
    out[6] = h->type;
    out[7] = h->flags;
    put_u32(out + 8, h->len);
    put_u32(out + 12, 0);
    put_u64(out + 16, h->seq);
}

int pd_frame_hdr_decode(const uint8_t *buf, size_t len, struct pd_frame_hdr *h, char *err,
                        size_t errlen)
{
    if (len < PD_FRAME_HDR_LEN)
        return pd_errf(err, errlen, -EBADMSG, "frame: %zu bytes is shorter than the %d-byte header",
                       len, PD_FRAME_HDR_LEN);
    if (memcmp(buf, PD_FRAME_MAGIC, 4) != 0)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: bad magic %02x%02x%02x%02x (not a pdserve KV frame)", buf[0], buf[1],
                       buf[2], buf[3]);
    /* before anything else: a peer of another major version gets a clear answer */
    if (buf[4] != PD_PROTO_MAJOR)
        return pd_errf(err, errlen, -EPROTONOSUPPORT,
                       "frame: protocol version: ours %d.%d, peer %u.%u", PD_PROTO_MAJOR,
                       PD_PROTO_MINOR, buf[4], buf[5]);
    const struct type_info *ti = type_info(buf[6]);
    if (!ti)
        return pd_errf(err, errlen, -EBADMSG, "frame: unknown type %u", buf[6]);
    if (buf[7] != 0)
        return pd_errf(err, errlen, -EBADMSG, "frame: %s: unknown flags 0x%02x", ti->name, buf[7]);
    if (!all_zero(buf + 12, 4))
        return pd_errf(err, errlen, -EBADMSG, "frame: %s: reserved header bytes are not zero",
                       ti->name);
    uint32_t blen = get_u32(buf + 8);
    if (blen > ti->max_len)
        return pd_errf(err, errlen, -E2BIG,
                       "frame: %s body of %" PRIu32 " bytes exceeds the cap of %" PRIu32, ti->name,
                       blen, ti->max_len);
    if (blen < ti->min_len)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: %s body of %" PRIu32 " bytes is shorter than %" PRIu32, ti->name,
                       blen, ti->min_len);
    uint64_t seq = get_u64(buf + 16);
    if (!ti->sealed && seq != 0)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: %s: handshake messages carry seq 0, not %" PRIu64, ti->name, seq);
    h->major = buf[4];
    h->minor = buf[5];
    h->type = buf[6];
    h->flags = 0;
    h->len = blen;
    h->seq = seq;
    return 0;
}

size_t pd_frame_wire_len(const struct pd_frame_hdr *h)
{
    return PD_FRAME_HDR_LEN + (size_t)h->len + (pd_frame_type_sealed(h->type) ? PD_FRAME_MAC_LEN : 0);
}

/* ---- fixed fields: the tables above, read and written ---- */

/* A member of 2, 4 or 8 bytes as an integer of its width, and back (a float
 * as its binary32's bits). */
static uint64_t member_get(const unsigned char *m, unsigned size)
{
    uint16_t v2;
    uint32_t v4;
    uint64_t v8;
    switch (size) {
    case 2:
        memcpy(&v2, m, 2);
        return v2;
    case 4:
        memcpy(&v4, m, 4);
        return v4;
    default:
        memcpy(&v8, m, 8);
        return v8;
    }
}

static void member_set(unsigned char *m, unsigned size, uint64_t v)
{
    const uint16_t v2 = (uint16_t)v;
    const uint32_t v4 = (uint32_t)v;
    memcpy(m,
           size == 2       ? (const void *)&v2
               : size == 4 ? (const void *)&v4
                           : (const void *)&v,
           size);
}

/* The body's fixed fields into the struct at s (the frame's union member). */
static void get_fields(const struct type_info *ti, const uint8_t *b, void *s)
{
    for (const struct field *f = ti->fields; f && f->size; f++) {
        uint64_t v = 0;
        for (unsigned k = f->size; k-- > 0;)
            v = v << 8 | b[f->at + k];
        member_set((unsigned char *)s + f->mem, f->size, v);
    }
}

/* The struct's fixed fields into the body at b (its reserved bytes left as they are). */
static void put_fields(const struct type_info *ti, const void *s, uint8_t *b)
{
    for (const struct field *f = ti->fields; f && f->size; f++) {
        const uint64_t v = member_get((const unsigned char *)s + f->mem, f->size);
        for (unsigned k = 0; k < f->size; k++)
            b[f->at + k] = (uint8_t)(v >> 8 * k);
    }
}

/* ---- field checks shared by the encoder and the decoder ---- */

static int in_range(float v, float lo, float hi) { return isfinite(v) && v >= lo && v <= hi; }

static int check_reqref(uint64_t request_id, const char *what, char *err, size_t errlen)
{
    if (request_id == 0)
        return pd_errf(err, errlen, -EBADMSG, "frame: %s: request id 0 is reserved", what);
    return 0;
}

static int check_reason(unsigned reason, const char *what, char *err, size_t errlen)
{
    if (reason < 1 || reason > PD_R_MAX)
        return pd_errf(err, errlen, -EBADMSG, "frame: %s: unknown reason code %u", what, reason);
    return 0;
}

/* NaN and +inf are never log-probabilities; -inf is (a filtered-out token). */
static int logprob_ok(float lp) { return !isnan(lp) && lp <= 0.0f; }

/* A count in 1..max: none is malformed, more than max too large. */
static int check_num(const char *what, uint32_t n, const char *of, unsigned max, char *err,
                     size_t errlen)
{
    if (n < 1 || n > max)
        return pd_errf(err, errlen, n ? -E2BIG : -EBADMSG,
                       "frame: %s: %" PRIu32 " %s is outside 1..%u", what, n, of, max);
    return 0;
}

static int check_prefill(const struct pd_prefill *p, char *err, size_t errlen)
{
    int rc;
    if ((rc = check_reqref(p->request_id, "PREFILL", err, errlen)) < 0 ||
        (rc = check_num("PREFILL", p->n_tokens, "tokens", PD_PROTO_MAX_TOKENS, err, errlen)) < 0)
        return rc;
    if (p->block_size < 1 || p->block_size > PD_PROTO_MAX_BLOCK_SIZE)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: PREFILL: block size %" PRIu32 " is outside 1..%u", p->block_size,
                       PD_PROTO_MAX_BLOCK_SIZE);
    if (p->n_blocks > PD_PROTO_MAX_REQ_BLOCKS)
        return pd_errf(err, errlen, -E2BIG,
                       "frame: PREFILL: %" PRIu32 " blocks exceeds the cap of %u", p->n_blocks,
                       PD_PROTO_MAX_REQ_BLOCKS);
    if (!in_range(p->temperature, 0.0f, PD_PROTO_MAX_TEMPERATURE))
        return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: temperature %g is outside [0, %g]",
                       (double)p->temperature, (double)PD_PROTO_MAX_TEMPERATURE);
    if (!in_range(p->top_p, 0.0f, 1.0f) || p->top_p == 0.0f)
        return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: top_p %g is outside (0, 1]",
                       (double)p->top_p);
    if (!in_range(p->min_p, 0.0f, 1.0f))
        return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: min_p %g is outside [0, 1]",
                       (double)p->min_p);
    if (!in_range(p->presence_penalty, -PD_PROTO_MAX_PENALTY, PD_PROTO_MAX_PENALTY) ||
        !in_range(p->frequency_penalty, -PD_PROTO_MAX_PENALTY, PD_PROTO_MAX_PENALTY))
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: PREFILL: presence/frequency penalty %g/%g is outside [-%g, %g]",
                       (double)p->presence_penalty, (double)p->frequency_penalty,
                       (double)PD_PROTO_MAX_PENALTY, (double)PD_PROTO_MAX_PENALTY);
    if (!in_range(p->repetition_penalty, 0.0f, PD_PROTO_MAX_PENALTY) ||
        p->repetition_penalty == 0.0f)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: PREFILL: repetition penalty %g is outside (0, %g]",
                       (double)p->repetition_penalty, (double)PD_PROTO_MAX_PENALTY);
    if (p->n_logprobs > PD_PROTO_MAX_LOGPROBS)
        return pd_errf(err, errlen, -E2BIG,
                       "frame: PREFILL: %" PRIu32 " logprobs exceeds the cap of %u", p->n_logprobs,
                       PD_PROTO_MAX_LOGPROBS);
    if (p->flags & ~(PD_PREFILL_F_NO_EOS | PD_PREFILL_F_PREFIX | PD_PREFILL_F_BIAS |
                     PD_PREFILL_F_PROMPT_LP | PD_PREFILL_F_MASK))
        return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: unknown flags 0x%04x", p->flags);
    if ((p->flags & PD_PREFILL_F_PROMPT_LP) && p->n_cached)
        return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: the prompt's log-probabilities "
                       "with %" PRIu32 " cached blocks (every position must be computed)",
                       p->n_cached);
    if (p->flags & PD_PREFILL_F_BIAS) {
        if ((rc = check_num("PREFILL", p->n_bias, "bias entries", PD_PROTO_MAX_BIAS, err,
                            errlen)) < 0)
            return rc;
        for (uint32_t i = 0; (p->bias || p->bias_le) && i < p->n_bias; i++) {
            const struct pd_bias b = pd_prefill_bias(p, i);
            if (!in_range(b.bias, -PD_PROTO_MAX_BIAS_VALUE, PD_PROTO_MAX_BIAS_VALUE))
                return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: bias %g of token %" PRIu32
                               " is outside [-%g, %g]", (double)b.bias, b.token,
                               (double)PD_PROTO_MAX_BIAS_VALUE, (double)PD_PROTO_MAX_BIAS_VALUE);
        }
    } else if (p->n_bias) {
        return pd_errf(err, errlen, -EINVAL, "frame: PREFILL: bias entries without the bias "
                       "part");
    }
    if (p->flags & PD_PREFILL_F_MASK) {
        if ((rc = check_num("PREFILL", p->mask_words, "mask words", PD_PROTO_MAX_MASK_WORDS,
                            err, errlen)) < 0)
            return rc;
    } else if (p->mask_words) {
        return pd_errf(err, errlen, -EINVAL, "frame: PREFILL: a mask without the mask part");
    }
    uint64_t total = ((uint64_t)p->n_tokens + p->block_size - 1) / p->block_size;
    if (!(p->flags & PD_PREFILL_F_PREFIX) &&
        (p->n_cached || !all_zero(p->salt, sizeof(p->salt)) ||
         !all_zero(p->cached_name, sizeof(p->cached_name))))
        return pd_errf(err, errlen, -EINVAL, "frame: PREFILL: a salt or cached blocks without "
                       "the prefix part");
    if (!p->n_cached && !all_zero(p->cached_name, sizeof(p->cached_name)))
        return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: a cached block's name without "
                       "cached blocks");
    /* the block holding the last token is always computed: its logits are the point */
    if ((uint64_t)p->n_cached * p->block_size >= p->n_tokens)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: PREFILL: %" PRIu32 " cached blocks of %" PRIu32
                       " tokens leave none of the %" PRIu32 " to compute",
                       p->n_cached, p->block_size, p->n_tokens);
    if (p->n_blocks < total - p->n_cached)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: PREFILL: %" PRIu32 " blocks cannot hold %" PRIu32
                       " tokens of %" PRIu32 " per block past %" PRIu32 " cached blocks",
                       p->n_blocks, p->n_tokens, p->block_size, p->n_cached);
    return 0;
}

/* the counts, and the rows when there are any to read */
static int check_prompt_lp(const struct pd_prompt_lp *p, char *err, size_t errlen)
{
    int rc;
    if ((rc = check_reqref(p->request_id, "PROMPT_LP", err, errlen)) < 0 ||
        (rc = check_num("PROMPT_LP", p->n_rows, "rows", PD_PROTO_MAX_LP_ROWS, err, errlen)) < 0)
        return rc;
    if (p->n_top > PD_PROTO_MAX_LOGPROBS)
        return pd_errf(err, errlen, -E2BIG, "frame: PROMPT_LP: %" PRIu32 " alternatives exceeds "
                       "the cap of %u", p->n_top, PD_PROTO_MAX_LOGPROBS);
    if (p->first < 1 || (uint64_t)p->first + p->n_rows > PD_PROTO_MAX_TOKENS)
        return pd_errf(err, errlen, -EBADMSG, "frame: PROMPT_LP: rows %" PRIu32 "..%" PRIu64
                       " are outside 1..%u", p->first, (uint64_t)p->first + p->n_rows - 1,
                       PD_PROTO_MAX_TOKENS - 1);
    for (uint32_t i = 0; (p->rows || p->rows_le) && i < p->n_rows; i++) {
        struct pd_lp_row row;
        pd_prompt_lp_row(p, i, &row);
        int ok = logprob_ok(row.logprob);
        for (uint32_t k = 0; k < p->n_top; k++)
            ok = ok && logprob_ok(row.top[k].logprob);
        if (!ok)
            return pd_errf(err, errlen, -EBADMSG, "frame: PROMPT_LP: row %" PRIu32 " holds a "
                           "value that is not a log-probability", p->first + i);
    }
    return 0;
}

static int check_progress(const struct pd_progress *p, char *err, size_t errlen)
{
    int rc;
    if ((rc = check_reqref(p->request_id, "PROGRESS", err, errlen)) < 0 ||
        (rc = check_num("PROGRESS", p->n_tokens, "tokens", PD_PROTO_MAX_TOKENS, err, errlen)) < 0)
        return rc;
    if (p->state != PD_PROGRESS_QUEUED && p->state != PD_PROGRESS_COMPUTING)
        return pd_errf(err, errlen, -EBADMSG, "frame: PROGRESS: state %u is not 1 or 2",
                       (unsigned)p->state);
    if (p->tokens_done > p->n_tokens)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: PROGRESS: %" PRIu32 " tokens done of %" PRIu32, p->tokens_done,
                       p->n_tokens);
    return 0;
}

static int check_chunk(const struct pd_chunk *c, char *err, size_t errlen)
{
    int rc;
    if ((rc = check_reqref(c->request_id, "CHUNK", err, errlen)) < 0)
        return rc;
    rc = check_num("CHUNK", c->n_blocks, "blocks", PD_PROTO_MAX_CHUNK_BLOCKS, err, errlen);
    if (rc < 0)
        return rc;
    if ((uint64_t)c->first_block + c->n_blocks > PD_PROTO_MAX_REQ_BLOCKS)
        return pd_errf(err, errlen, -E2BIG,
                       "frame: CHUNK: blocks %" PRIu32 "..+%" PRIu32 " pass the cap of %u",
                       c->first_block, c->n_blocks, PD_PROTO_MAX_REQ_BLOCKS);
    if (c->transfer == 0)
        return pd_errf(err, errlen, -EBADMSG, "frame: CHUNK: transfer counter 0 is reserved");
    if (c->block_bytes < 1 || c->block_bytes > PD_PROTO_MAX_BLOCK_BYTES)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: CHUNK: %" PRIu64 " bytes per block is outside 1..%llu",
                       c->block_bytes, (unsigned long long)PD_PROTO_MAX_BLOCK_BYTES);
    return 0;
}

static int check_done(const struct pd_done *d, char *err, size_t errlen)
{
    int rc;
    if ((rc = check_reqref(d->request_id, "DONE", err, errlen)) < 0)
        return rc;
    if (d->n_prompt < 1 || d->n_prompt > PD_PROTO_MAX_TOKENS)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: DONE: %" PRIu32 " prompt tokens is outside 1..%u", d->n_prompt,
                       PD_PROTO_MAX_TOKENS);
    if (!logprob_ok(d->logprob))
        return pd_errf(err, errlen, -EBADMSG, "frame: DONE: logprob %g is not <= 0",
                       (double)d->logprob);
    if (d->n_top > PD_PROTO_MAX_LOGPROBS)
        return pd_errf(err, errlen, -E2BIG,
                       "frame: DONE: %" PRIu32 " alternatives exceeds the cap of %u", d->n_top,
                       PD_PROTO_MAX_LOGPROBS);
    for (uint32_t i = 0; i < d->n_top; i++)
        if (!logprob_ok(d->top[i].logprob))
            return pd_errf(err, errlen, -EBADMSG,
                           "frame: DONE: alternative %" PRIu32 " logprob %g is not <= 0", i,
                           (double)d->top[i].logprob);
    return 0;
}

static int check_heartbeat(const struct pd_heartbeat *hb, char *err, size_t errlen)
{
    if (hb->lease_ms < 1 || hb->lease_ms > PD_PROTO_MAX_LEASE_MS)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: HEARTBEAT: lease %" PRIu32 " ms is outside 1..%u", hb->lease_ms,
                       PD_PROTO_MAX_LEASE_MS);
    return 0;
}

/* A detail or X-Request-Id: length within [min, max], printable ASCII. */
static int check_bytes(const uint8_t *s, size_t n, size_t min, size_t max, const char *what,
                       char *err, size_t errlen)
{
    if (n < min || n > max)
        return pd_errf(err, errlen, n > max ? -E2BIG : -EBADMSG,
                       "frame: %s of %zu bytes is outside %zu..%zu", what, n, min, max);
    if (!printable(s, n))
        return pd_errf(err, errlen, -EBADMSG, "frame: %s is not printable ASCII", what);
    return 0;
}

/* The same for the encoder's NUL-terminated strings. */
static int check_str(const char *s, size_t min, size_t max, const char *what, char *err,
                     size_t errlen)
{
    return check_bytes((const uint8_t *)s, strnlen(s, max + 1), min, max, what, err, errlen);
}

/* ---- body decoders: parse into the struct, then the shared checks ---- */

/* The string at p[0..n) into dst (room for max + 1). */
static int take_str(char *dst, const uint8_t *p, size_t n, size_t min, size_t max,
                    const char *what, char *err, size_t errlen)
{
    int rc = check_bytes(p, n, min, max, what, err, errlen);
    if (rc < 0)
        return rc;
    memcpy(dst, p, n);
    dst[n] = '\0';
    return 0;
}

static int expect_len(const char *what, size_t got, uint64_t want, char *err, size_t errlen)
{
    if (got != want)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: %s body is %zu bytes; its counts make it %" PRIu64, what, got, want);
    return 0;
}

/* The dec_* below complete a body whose fixed fields get_fields has read. */

/* The bias or mask part at b + *at: *count as written (check_prefill judges
 * it), *view the entries only when the body holds them (check_prefill reads
 * the bias's), *at past them (none past max: the length check fails). */
static int dec_part(const uint8_t *b, size_t n, size_t *at, const char *what, size_t size,
                    uint32_t max, uint32_t *count, const uint8_t **view, char *err,
                    size_t errlen)
{
    if (n < *at + PART_HEAD)
        return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: %zu bytes end before the %s part",
                       n, what);
    if (!all_zero(b + *at + 4, 4))
        return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: reserved bytes are not zero");
    *count = get_u32(b + *at);
    const size_t entries = size * (*count <= max ? *count : 0);
    if (n >= *at + PART_HEAD + entries)
        *view = b + *at + PART_HEAD;
    *at += PART_HEAD + entries;
    return 0;
}

static int dec_prefill(const uint8_t *b, size_t n, struct pd_prefill *p, char *err, size_t errlen)
{
    uint16_t xlen = get_u16(b + 64);
    const size_t ext = p->flags & PD_PREFILL_F_PREFIX ? PREFIX_PART : 0;
    if (ext && n >= PREFILL_FIXED + ext && !all_zero(b + PREFILL_FIXED + 36, 4))
        return pd_errf(err, errlen, -EBADMSG, "frame: PREFILL: reserved bytes are not zero");
    if (ext && n >= PREFILL_FIXED + ext) { /* the length is checked below, after the counts */
        memcpy(p->salt, b + PREFILL_FIXED, PD_PREFIX_NAME_LEN);
        p->n_cached = get_u32(b + PREFILL_FIXED + 32);
        memcpy(p->cached_name, b + PREFILL_FIXED + 40, PD_PREFIX_NAME_LEN);
    }
    size_t at = PREFILL_FIXED + ext;
    int rc;
    if ((p->flags & PD_PREFILL_F_BIAS) &&
        (rc = dec_part(b, n, &at, "bias", 8, PD_PROTO_MAX_BIAS, &p->n_bias, &p->bias_le, err,
                       errlen)) < 0)
        return rc;
    if ((p->flags & PD_PREFILL_F_MASK) &&
        (rc = dec_part(b, n, &at, "mask", 4, PD_PROTO_MAX_MASK_WORDS, &p->mask_words,
                       &p->mask_le, err, errlen)) < 0)
        return rc;
    if ((rc = check_prefill(p, err, errlen)) < 0)
        return rc;
    if ((rc = expect_len("PREFILL", n, at + 4ull * p->n_tokens + xlen, err, errlen)) < 0)
        return rc;
    p->tokens_le = b + at;
    return take_str(p->xrid, b + at + 4ull * p->n_tokens, xlen, 1, PD_PROTO_MAX_XRID,
                    "PREFILL X-Request-Id", err, errlen);
}

static int dec_prompt_lp(const uint8_t *b, size_t n, struct pd_prompt_lp *p, char *err,
                         size_t errlen)
{
    int rc;
    /* the counts first (rows_le unset: none read), then the length, then the rows */
    if ((rc = check_prompt_lp(p, err, errlen)) < 0 ||
        (rc = expect_len("PROMPT_LP", n, PROMPT_LP_FIXED + (uint64_t)p->n_rows * LP_ROW(p->n_top),
                         err, errlen)) < 0)
        return rc;
    p->rows_le = b + PROMPT_LP_FIXED;
    return check_prompt_lp(p, err, errlen);
}

static int dec_chunk(const uint8_t *b, size_t n, struct pd_chunk *c, char *err, size_t errlen)
{
    int rc = check_chunk(c, err, errlen);
    if (rc < 0)
        return rc;
    if (!all_zero(b + 20, 4))
        return pd_errf(err, errlen, -EBADMSG, "frame: CHUNK: reserved bytes are not zero");
    if ((rc = expect_len("CHUNK", n, CHUNK_FIXED + (uint64_t)PD_BLOCK_TAG_LEN * c->n_blocks, err,
                         errlen)) < 0)
        return rc;
    c->tags = b + CHUNK_FIXED;
    return 0;
}

static int dec_done(const uint8_t *b, size_t n, struct pd_done *d, char *err, size_t errlen)
{
    if (d->n_top > PD_PROTO_MAX_LOGPROBS) /* before the loop below reads top[] */
        return pd_errf(err, errlen, -E2BIG,
                       "frame: DONE: %" PRIu32 " alternatives exceeds the cap of %u", d->n_top,
                       PD_PROTO_MAX_LOGPROBS);
    if (!all_zero(b + 28, 4))
        return pd_errf(err, errlen, -EBADMSG, "frame: DONE: reserved bytes are not zero");
    int rc = expect_len("DONE", n, DONE_FIXED + 8ull * d->n_top, err, errlen);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < d->n_top; i++) {
        d->top[i].token = get_u32(b + DONE_FIXED + 8 * i);
        d->top[i].logprob = get_f32(b + DONE_FIXED + 8 * i + 4);
    }
    return check_done(d, err, errlen);
}

static int dec_abort(const uint8_t *b, size_t n, struct pd_abort *a, char *err, size_t errlen)
{
    uint16_t dl = get_u16(b + 14);
    int rc;
    if ((rc = check_reqref(a->request_id, "ABORT", err, errlen)) < 0 ||
        (rc = check_reason(a->reason, "ABORT", err, errlen)) < 0 ||
        (rc = expect_len("ABORT", n, ABORT_FIXED + (uint64_t)dl, err, errlen)) < 0)
        return rc;
    return take_str(a->detail, b + ABORT_FIXED, dl, 0, PD_PROTO_MAX_DETAIL, "ABORT detail", err,
                    errlen);
}

static int dec_error(const uint8_t *b, size_t n, struct pd_error *e, char *err, size_t errlen)
{
    uint16_t dl = get_u16(b + 2);
    int rc;
    if ((rc = check_reason(e->reason, "ERROR", err, errlen)) < 0 ||
        (rc = expect_len("ERROR", n, ERROR_FIXED + (uint64_t)dl, err, errlen)) < 0)
        return rc;
    return take_str(e->detail, b + ERROR_FIXED, dl, 0, PD_PROTO_MAX_DETAIL, "ERROR detail", err,
                    errlen);
}

static int check_ucx_addr(const struct pd_ucx_addr *a, char *err, size_t errlen)
{
    if (a->token == 0)
        return pd_errf(err, errlen, -EBADMSG, "frame: UCX_ADDR: token 0");
    if (a->len < 1 || a->len > PD_PROTO_MAX_UCX_ADDR)
        return pd_errf(err, errlen, a->len ? -E2BIG : -EBADMSG,
                       "frame: UCX_ADDR: address of %" PRIu32 " bytes (1..%u)", a->len,
                       PD_PROTO_MAX_UCX_ADDR);
    return 0;
}

static int dec_ucx_addr(const uint8_t *b, size_t n, struct pd_ucx_addr *a, char *err,
                        size_t errlen)
{
    a->addr = b + UCX_ADDR_FIXED;
    if (!all_zero(b + 12, 4))
        return pd_errf(err, errlen, -EBADMSG, "frame: UCX_ADDR: reserved bytes are not zero");
    int rc = check_ucx_addr(a, err, errlen);
    if (rc < 0)
        return rc;
    return expect_len("UCX_ADDR", n, UCX_ADDR_FIXED + (uint64_t)a->len, err, errlen);
}

int pd_frame_body_decode(const struct pd_frame_hdr *h, const uint8_t *body, size_t body_len,
                         struct pd_frame *out, char *err, size_t errlen)
{
    const struct type_info *ti = type_info(h->type);
    struct pd_frame f;
    int rc;

    if (!ti || !ti->sealed)
        return pd_errf(err, errlen, -EBADMSG, "frame: type %u (%s) is not a control frame", h->type,
                       pd_frame_type_name(h->type));
    /* the fixed-length reads below rely on the header's bounds */
    if (body_len != h->len || body_len < ti->min_len || body_len > ti->max_len)
        return pd_errf(err, errlen, -EBADMSG,
                       "frame: %s body of %zu bytes does not match the header (%" PRIu32 ")",
                       ti->name, body_len, h->len);
    memset(&f, 0, sizeof(f));
    f.type = h->type;
    get_fields(ti, body, &f.u);
    switch (h->type) {
    case PD_FT_PREFILL: rc = dec_prefill(body, body_len, &f.u.prefill, err, errlen); break;
    case PD_FT_CHUNK: rc = dec_chunk(body, body_len, &f.u.chunk, err, errlen); break;
    case PD_FT_ACK:
        rc = check_reqref(f.u.ack.request_id, "ACK", err, errlen);
        if (rc == 0 && f.u.ack.blocks > PD_PROTO_MAX_REQ_BLOCKS)
            rc =
                pd_errf(err, errlen, -E2BIG, "frame: ACK: %" PRIu32 " blocks exceeds the cap of %u",
                        f.u.ack.blocks, PD_PROTO_MAX_REQ_BLOCKS);
        break;
    case PD_FT_DONE: rc = dec_done(body, body_len, &f.u.done, err, errlen); break;
    case PD_FT_ABORT: rc = dec_abort(body, body_len, &f.u.abort, err, errlen); break;
    case PD_FT_ABORT_ACK:
        rc = check_reqref(f.u.abort_ack.request_id, ti->name, err, errlen);
        break;
    case PD_FT_CANCEL:
        rc = check_reqref(f.u.cancel.request_id, ti->name, err, errlen);
        break;
    case PD_FT_HEARTBEAT:
        rc = check_heartbeat(&f.u.heartbeat, err, errlen);
        if (rc == 0 && !all_zero(body + 4, 4))
            rc = pd_errf(err, errlen, -EBADMSG, "frame: HEARTBEAT: reserved bytes are not zero");
        break;
    case PD_FT_ERROR: rc = dec_error(body, body_len, &f.u.error, err, errlen); break;
    case PD_FT_UCX_ADDR: rc = dec_ucx_addr(body, body_len, &f.u.ucx_addr, err, errlen); break;
    case PD_FT_READY:
        rc = f.u.ready.token ? 0 : pd_errf(err, errlen, -EBADMSG, "frame: READY: token 0");
        break;
    case PD_FT_PROGRESS:
        rc = check_progress(&f.u.progress, err, errlen);
        if (rc == 0 && !all_zero(body + 14, 2))
            rc = pd_errf(err, errlen, -EBADMSG, "frame: PROGRESS: reserved bytes are not zero");
        break;
    case PD_FT_PROMPT_LP:
        rc = dec_prompt_lp(body, body_len, &f.u.prompt_lp, err, errlen);
        break;
    default:
        rc = pd_errf(err, errlen, -EBADMSG, "frame: type %u is not handled", h->type);
        break;
    }
    if (rc < 0)
        return rc;
    *out = f;
    return 0;
}

int pd_frame_decode(const uint8_t *buf, size_t len, struct pd_frame *out, char *err, size_t errlen)
{
    struct pd_frame_hdr h;
    int rc = pd_frame_hdr_decode(buf, len, &h, err, errlen);
    if (rc < 0)
        return rc;
    if (len != PD_FRAME_HDR_LEN + (size_t)h.len)
        return pd_errf(err, errlen, -EBADMSG, "frame: %s: %zu bytes, the header says %zu",
                       pd_frame_type_name(h.type), len, PD_FRAME_HDR_LEN + (size_t)h.len);
    return pd_frame_body_decode(&h, buf + PD_FRAME_HDR_LEN, h.len, out, err, errlen);
}

/* ---- encoder ---- */

size_t pd_frame_body_len(const struct pd_frame *f)
{
    switch (f->type) {
    case PD_FT_PREFILL:
        return PREFILL_FIXED + (f->u.prefill.flags & PD_PREFILL_F_PREFIX ? PREFIX_PART : 0) +
               (f->u.prefill.flags & PD_PREFILL_F_BIAS ? PART_HEAD + 8 * (size_t)f->u.prefill.n_bias
                                                       : 0) +
               (f->u.prefill.flags & PD_PREFILL_F_MASK
                    ? PART_HEAD + 4 * (size_t)f->u.prefill.mask_words
                    : 0) +
               4 * (size_t)f->u.prefill.n_tokens +
               strnlen(f->u.prefill.xrid, sizeof(f->u.prefill.xrid));
    case PD_FT_CHUNK: return CHUNK_FIXED + PD_BLOCK_TAG_LEN * (size_t)f->u.chunk.n_blocks;
    case PD_FT_ACK: return 16;
    case PD_FT_DONE: return DONE_FIXED + 8 * (size_t)f->u.done.n_top;
    case PD_FT_ABORT:
        return ABORT_FIXED + strnlen(f->u.abort.detail, sizeof(f->u.abort.detail));
    case PD_FT_ABORT_ACK: case PD_FT_CANCEL: return REQREF_LEN;
    case PD_FT_HEARTBEAT: return 16;
    case PD_FT_ERROR: return ERROR_FIXED + strnlen(f->u.error.detail, sizeof(f->u.error.detail));
    case PD_FT_UCX_ADDR: return UCX_ADDR_FIXED + (size_t)f->u.ucx_addr.len;
    case PD_FT_READY: return READY_LEN;
    case PD_FT_PROGRESS: return PROGRESS_LEN;
    case PD_FT_PROMPT_LP:
        return PROMPT_LP_FIXED + (size_t)f->u.prompt_lp.n_rows * LP_ROW(f->u.prompt_lp.n_top);
    default: return 0;
    }
}

uint32_t pd_prefill_token(const struct pd_prefill *p, uint32_t i)
{
    return p->tokens ? p->tokens[i] : get_u32(p->tokens_le + 4 * (size_t)i);
}

uint32_t pd_prefill_mask_word(const struct pd_prefill *p, uint32_t i)
{
    return p->mask ? p->mask[i] : get_u32(p->mask_le + 4 * (size_t)i);
}

void pd_prompt_lp_row(const struct pd_prompt_lp *p, uint32_t i, struct pd_lp_row *out)
{
    const uint32_t n_top = p->n_top <= PD_PROTO_MAX_LOGPROBS ? p->n_top : PD_PROTO_MAX_LOGPROBS;
    if (p->rows) {
        out->logprob = p->rows[i].logprob;
        memcpy(out->top, p->rows[i].top, n_top * sizeof(out->top[0]));
        return;
    }
    const uint8_t *b = p->rows_le + (size_t)i * LP_ROW(p->n_top);
    out->logprob = get_f32(b);
    for (uint32_t k = 0; k < n_top; k++)
        out->top[k] = (struct pd_logprob){get_u32(b + 4 + 8 * k), get_f32(b + 8 + 8 * k)};
}

struct pd_bias pd_prefill_bias(const struct pd_prefill *p, uint32_t i)
{
    if (p->bias)
        return p->bias[i];
    return (struct pd_bias){get_u32(p->bias_le + 8 * (size_t)i),
                            get_f32(p->bias_le + 8 * (size_t)i + 4)};
}

static int check_frame(const struct pd_frame *f, char *err, size_t errlen)
{
    const char *name = pd_frame_type_name(f->type);
    int rc;
    switch (f->type) {
    case PD_FT_PREFILL:
        if ((rc = check_prefill(&f->u.prefill, err, errlen)) < 0)
            return rc;
        if (!f->u.prefill.tokens && !f->u.prefill.tokens_le)
            return pd_errf(err, errlen, -EINVAL, "frame: PREFILL: no tokens given");
        if ((f->u.prefill.flags & PD_PREFILL_F_BIAS) && !f->u.prefill.bias &&
            !f->u.prefill.bias_le)
            return pd_errf(err, errlen, -EINVAL, "frame: PREFILL: no bias entries given");
        if ((f->u.prefill.flags & PD_PREFILL_F_MASK) && !f->u.prefill.mask &&
            !f->u.prefill.mask_le)
            return pd_errf(err, errlen, -EINVAL, "frame: PREFILL: no mask given");
        return check_str(f->u.prefill.xrid, 1, PD_PROTO_MAX_XRID, "PREFILL X-Request-Id", err,
                         errlen);
    case PD_FT_CHUNK:
        if ((rc = check_chunk(&f->u.chunk, err, errlen)) < 0)
            return rc;
        return f->u.chunk.tags ? 0 : pd_errf(err, errlen, -EINVAL, "frame: CHUNK: no tags given");
    case PD_FT_ACK:
        if ((rc = check_reqref(f->u.ack.request_id, name, err, errlen)) < 0)
            return rc;
        return f->u.ack.blocks <= PD_PROTO_MAX_REQ_BLOCKS
            ? 0
            : pd_errf(err, errlen, -E2BIG, "frame: ACK: %" PRIu32 " blocks exceeds the cap of %u",
                      f->u.ack.blocks, PD_PROTO_MAX_REQ_BLOCKS);
    case PD_FT_DONE: return check_done(&f->u.done, err, errlen);
    case PD_FT_ABORT:
        if ((rc = check_reqref(f->u.abort.request_id, name, err, errlen)) < 0 ||
            (rc = check_reason(f->u.abort.reason, name, err, errlen)) < 0)
            return rc;
        return check_str(f->u.abort.detail, 0, PD_PROTO_MAX_DETAIL, "ABORT detail", err, errlen);
    case PD_FT_ABORT_ACK: return check_reqref(f->u.abort_ack.request_id, name, err, errlen);
    case PD_FT_CANCEL: return check_reqref(f->u.cancel.request_id, name, err, errlen);
    case PD_FT_HEARTBEAT: return check_heartbeat(&f->u.heartbeat, err, errlen);
    case PD_FT_ERROR:
        if ((rc = check_reason(f->u.error.reason, name, err, errlen)) < 0)
            return rc;
        return check_str(f->u.error.detail, 0, PD_PROTO_MAX_DETAIL, "ERROR detail", err, errlen);
    case PD_FT_UCX_ADDR:
        if ((rc = check_ucx_addr(&f->u.ucx_addr, err, errlen)) < 0)
            return rc;
        return f->u.ucx_addr.addr
            ? 0
            : pd_errf(err, errlen, -EINVAL, "frame: UCX_ADDR: no address given");
    case PD_FT_READY:
        return f->u.ready.token ? 0 : pd_errf(err, errlen, -EINVAL, "frame: READY: token 0");
    case PD_FT_PROGRESS: return check_progress(&f->u.progress, err, errlen);
    case PD_FT_PROMPT_LP:
        if ((rc = check_prompt_lp(&f->u.prompt_lp, err, errlen)) < 0)
            return rc;
        return f->u.prompt_lp.rows || f->u.prompt_lp.rows_le
            ? 0
            : pd_errf(err, errlen, -EINVAL, "frame: PROMPT_LP: no rows given");
    default:
        return pd_errf(err, errlen, -EINVAL, "frame: type %u (%s) is not a control frame", f->type,
                       name);
    }
}

/* The fixed fields from the table, then what follows them, into the n
 * bytes (pd_frame_body_len) at b. */
static void enc_body(const struct pd_frame *f, uint8_t *b, size_t n)
{
    memset(b, 0, n); /* the reserved bytes */
    put_fields(type_info(f->type), &f->u, b);
    switch (f->type) {
    case PD_FT_PREFILL: {
        const struct pd_prefill *p = &f->u.prefill;
        size_t xl = strlen(p->xrid), at = PREFILL_FIXED;
        put_u16(b + 64, (uint16_t)xl);
        if (p->flags & PD_PREFILL_F_PREFIX) {
            memcpy(b + at, p->salt, PD_PREFIX_NAME_LEN);
            put_u32(b + at + 32, p->n_cached);
            memcpy(b + at + 40, p->cached_name, PD_PREFIX_NAME_LEN);
            at += PREFIX_PART;
        }
        if (p->flags & PD_PREFILL_F_BIAS) {
            put_u32(b + at, p->n_bias);
            for (uint32_t i = 0; i < p->n_bias; i++) {
                const struct pd_bias e = pd_prefill_bias(p, i);
                put_u32(b + at + PART_HEAD + 8 * (size_t)i, e.token);
                put_f32(b + at + PART_HEAD + 8 * (size_t)i + 4, e.bias);
            }
            at += PART_HEAD + 8 * (size_t)p->n_bias;
        }
        if (p->flags & PD_PREFILL_F_MASK) {
            put_u32(b + at, p->mask_words);
            for (uint32_t i = 0; i < p->mask_words; i++)
                put_u32(b + at + PART_HEAD + 4 * (size_t)i, pd_prefill_mask_word(p, i));
            at += PART_HEAD + 4 * (size_t)p->mask_words;
        }
        for (uint32_t i = 0; i < p->n_tokens; i++)
            put_u32(b + at + 4 * (size_t)i, pd_prefill_token(p, i));
        memcpy(b + at + 4 * (size_t)p->n_tokens, p->xrid, xl);
        break;
    }
    case PD_FT_CHUNK:
        memcpy(b + CHUNK_FIXED, f->u.chunk.tags, PD_BLOCK_TAG_LEN * (size_t)f->u.chunk.n_blocks);
        break;
    case PD_FT_DONE:
        for (uint32_t i = 0; i < f->u.done.n_top; i++) {
            put_u32(b + DONE_FIXED + 8 * i, f->u.done.top[i].token);
            put_f32(b + DONE_FIXED + 8 * i + 4, f->u.done.top[i].logprob);
        }
        break;
    case PD_FT_ABORT: {
        size_t dl = strlen(f->u.abort.detail);
        put_u16(b + 14, (uint16_t)dl);
        memcpy(b + ABORT_FIXED, f->u.abort.detail, dl);
        break;
    }
    case PD_FT_ERROR: {
        size_t dl = strlen(f->u.error.detail);
        put_u16(b + 2, (uint16_t)dl);
        memcpy(b + ERROR_FIXED, f->u.error.detail, dl);
        break;
    }
    case PD_FT_UCX_ADDR:
        memcpy(b + UCX_ADDR_FIXED, f->u.ucx_addr.addr, f->u.ucx_addr.len);
        break;
    case PD_FT_PROMPT_LP: {
        const struct pd_prompt_lp *p = &f->u.prompt_lp;
        for (uint32_t i = 0; i < p->n_rows; i++) {
            struct pd_lp_row row;
            uint8_t *o = b + PROMPT_LP_FIXED + (size_t)i * LP_ROW(p->n_top);
            pd_prompt_lp_row(p, i, &row);
            put_f32(o, row.logprob);
            for (uint32_t k = 0; k < p->n_top; k++) {
                put_u32(o + 4 + 8 * k, row.top[k].token);
                put_f32(o + 8 + 8 * k, row.top[k].logprob);
            }
        }
        break;
    }
    default:
        break; /* the fixed fields are the whole body */
    }
}

int pd_frame_encode(const struct pd_frame *f, uint64_t seq, uint8_t *buf, size_t cap,
                    size_t *out_len, char *err, size_t errlen)
{
    int rc = check_frame(f, err, errlen);
    if (rc < 0)
        return rc == -EBADMSG ? -EINVAL : rc;
    size_t blen = pd_frame_body_len(f);
    if (cap < PD_FRAME_HDR_LEN + blen)
        return pd_errf(err, errlen, -ENOBUFS, "frame: %s needs %zu bytes, the buffer has %zu",
                       pd_frame_type_name(f->type), PD_FRAME_HDR_LEN + blen, cap);
    struct pd_frame_hdr h = {
        .major = PD_PROTO_MAJOR, .minor = PD_PROTO_MINOR, .type = f->type, .len = (uint32_t)blen,
        .seq = seq,
    };
    pd_frame_hdr_encode(&h, buf);
    enc_body(f, buf + PD_FRAME_HDR_LEN, blen);
    *out_len = PD_FRAME_HDR_LEN + blen;
    return 0;
}
