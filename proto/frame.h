/* proto/frame: the KV channel's frames -- header, control frames, caps.
 * Codec only: no I/O, no allocation, no crypto (common/kvchan/auth seals and opens).
 *
 *   struct pd_frame f = { .type = PD_FT_ACK,
 *                         .u.ack = { .request_id = 7, .epoch = 1, .blocks = 4 } };
 *   uint8_t buf[PD_FRAME_HDR_LEN + 64];
 *   size_t n;
 *   if (pd_frame_encode(&f, 0, buf, sizeof(buf), &n, err, sizeof(err)) < 0) ...
 *
 *   struct pd_frame g;
 *   if (pd_frame_decode(buf, n, &g, err, sizeof(err)) < 0) { refuse; err says why }
 *
 * Every frame is a 24-byte header followed by a body of exactly the length the
 * header states. Control frames (PREFILL .. ERROR) travel sealed: the header is
 * the AEAD's associated data, the body is encrypted and a 16-byte MAC follows
 * it (the header's length excludes the MAC). Handshake messages (M1, M2,
 * CONFIRM; proto/handshake.h) are not sealed: they carry their own MACs.
 * Integers are little-endian, floats IEEE-754 binary32 in little-endian order.
 *
 * Decoders check everything before filling the output: magic, major version,
 * type, flags and reserved fields zero, the exact length, every count against
 * its cap, floats finite and in range, strings printable ASCII. They return 0,
 * or a negative errno with a one-line message in err: -EPROTONOSUPPORT for
 * another major version (both versions named), -E2BIG for a length or count
 * over a cap, -EBADMSG for anything else malformed. Encoders apply the same
 * checks (-EINVAL) so a frame we send is one we would accept, and need room
 * for the whole frame (-ENOBUFS).
 *
 * Ownership: a decoded frame's views (PREFILL tokens_le, CHUNK tags) point
 * into the input buffer and are valid while it is; strings (X-Request-Id,
 * details) and DONE's alternatives are copied into the struct.
 */
#ifndef PD_FRAME_H
#define PD_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define PD_PROTO_MAJOR 1
#define PD_PROTO_MINOR 2 /* 1: PREFILL's prefix part, PROGRESS; 2: PREFILL's bias and mask
                          * parts, prompt log-probabilities (PD_PREFILL_F_PROMPT_LP, PROMPT_LP) */
#define PD_FRAME_MAGIC "PDKV"

#define PD_FRAME_HDR_LEN 24
#define PD_FRAME_MAC_LEN 16 /* after the body of a sealed frame */

/* Caps: every user-controlled size has one (STYLE.md). */
#define PD_FRAME_MAX_BODY (1u << 20) /* any frame's body */
#define PD_PROTO_MAX_TOKENS 131072u /* prompt tokens in one PREFILL */
#define PD_PROTO_MAX_REQ_BLOCKS 131072u /* KV blocks of one request */
#define PD_PROTO_MAX_CHUNK_BLOCKS 1024u /* blocks (and tags) in one CHUNK */
#define PD_PROTO_MAX_BLOCK_SIZE 1024u /* tokens per KV block */
#define PD_PROTO_MAX_BLOCK_BYTES (256ull << 20) /* bytes per KV block */
#define PD_PROTO_MAX_LOGPROBS 20u /* top log-probabilities in DONE */
#define PD_PROTO_MAX_BIAS 300u /* logit bias entries in PREFILL */
#define PD_PROTO_MAX_LP_ROWS 1024u /* prompt positions in one PROMPT_LP */
#define PD_PROTO_MAX_MASK_WORDS 65536u /* 32-bit words of PREFILL's token mask (2^21 tokens) */
#define PD_PROTO_MAX_BIAS_VALUE 100.0f /* |bias| */
#define PD_PROTO_MAX_XRID 128u /* X-Request-Id bytes */
#define PD_PROTO_MAX_DETAIL 200u /* ABORT / ERROR detail bytes */
#define PD_PROTO_MAX_LEASE_MS 600000u /* HEARTBEAT lease */
#define PD_PROTO_MAX_TEMPERATURE 100.0f
#define PD_PROTO_MAX_PENALTY 100.0f /* |presence|, |frequency|, repetition */
#define PD_BLOCK_TAG_LEN 16
#define PD_PROTO_MAX_UCX_ADDR 8192u /* a UCX worker address in UCX_ADDR */

enum pd_frame_type {
    /* handshake, unsealed (proto/handshake.h) */
    PD_FT_HS_M1 = 1, /* D -> P */
    PD_FT_HS_M2 = 2, /* P -> D */
    PD_FT_HS_CONFIRM = 3, /* both */
    /* control, sealed */
    PD_FT_PREFILL = 16, /* D -> P: prefill these tokens into blocks I granted */
    PD_FT_CHUNK = 17, /* P -> D: a run of final blocks, with their tags */
    PD_FT_ACK = 18, /* D -> P: blocks [0, n) received and verified */
    PD_FT_DONE = 19, /* P -> D: prefill finished; first sampled token */
    PD_FT_ABORT = 20, /* both: this request is dead, with a reason */
    PD_FT_ABORT_ACK = 21, /* both: the ABORT was seen, resources released */
    PD_FT_CANCEL = 22, /* D -> P: the client went away; stop */
    PD_FT_HEARTBEAT = 23, /* both: lease renewal */
    PD_FT_ERROR = 24, /* both: session-level failure, then close */
    /* sealed, on the KV port's own TCP connection right after the handshake
     * (docs/internals/kvchan.md, "The KV port") */
    PD_FT_UCX_ADDR = 25, /* both: my UCX worker address, and the token to address me by */
    PD_FT_READY = 26, /* P -> D: my endpoint to you exists; the session is up */
    /* minor 1 */
    PD_FT_PROGRESS = 27, /* P -> D: this request is queued / computing (not silent) */
    /* minor 2 */
    PD_FT_PROMPT_LP = 28, /* P -> D: log-probabilities of prompt tokens (asked for), before DONE */
};

/* Which daemon sends a frame type. */
enum pd_role {
    PD_ROLE_D = 0, /* decoded: handshake initiator */
    PD_ROLE_P = 1, /* prefilld: handshake responder */
};

/* Why a request or session failed (ABORT, ERROR). On the wire as u16; an
 * unknown code is refused, so a new one needs a minor version both peers know. */
enum pd_reason {
    PD_R_INTERNAL = 1,
    PD_R_PROTOCOL = 2, /* malformed or unexpected frame */
    PD_R_VERSION = 3,
    PD_R_AUTH = 4,
    PD_R_LAYOUT = 5, /* KV layout mismatch */
    PD_R_MODEL = 6, /* model fingerprint mismatch */
    PD_R_OVERLOADED = 7, /* no capacity now; retry elsewhere */
    PD_R_TOO_LARGE = 8, /* prompt or blocks over a limit */
    PD_R_INVALID_REQUEST = 9,
    PD_R_CANCELLED = 10,
    PD_R_TIMEOUT = 11, /* lease or deadline expired */
    PD_R_INTEGRITY = 12, /* a block tag did not verify */
    PD_R_SHUTDOWN = 13,
    PD_R_UNKNOWN_REQUEST = 14,
    PD_R_TRANSFER = 15, /* the data transfer failed */
    PD_R_COMPUTE = 16, /* the prefill computation failed */
    PD_R_MAX = 16,
};

struct pd_frame_hdr {
    uint8_t major, minor;
    uint8_t type; /* enum pd_frame_type */
    uint8_t flags; /* none defined: must be 0 */
    uint32_t len; /* body bytes, excluding a sealed frame's MAC */
    uint64_t seq; /* sealed: the per-direction counter (the AEAD nonce); handshake: 0 */
};

#define PD_PREFILL_F_NO_EOS 0x0001u /* end-of-sequence may not be the first token */
/* minor 1: the prefix part follows the fixed fields (prefix caching,
 * docs/internals/prefix.md). Sent only on a session of minor >= 1. */
#define PD_PREFILL_F_PREFIX 0x0002u
#define PD_PREFIX_NAME_LEN 32
/* minor 2: the bias part follows the prefix part (OpenAI's logit_bias, for
 * the first token prefilld samples). Sent only on a session of minor >= 2. */
#define PD_PREFILL_F_BIAS 0x0004u

/* minor 2: prefilld reports the log-probability of every prompt token after
 * the first (OpenAI's echo with logprobs) in PROMPT_LP frames, each position
 * once, before DONE; every position is then computed: no cached blocks. */
#define PD_PREFILL_F_PROMPT_LP 0x0008u
/* minor 2: the mask part follows the bias part: the tokens the first token
 * may be (constrained decoding), a bit each. Sent only on a session of
 * minor >= 2. */
#define PD_PREFILL_F_MASK 0x0010u

struct pd_bias {
    uint32_t token;
    float bias; /* [-PD_PROTO_MAX_BIAS_VALUE, PD_PROTO_MAX_BIAS_VALUE] */
};

struct pd_prefill {
    uint64_t request_id; /* != 0; chosen by decoded, unique in the session */
    uint32_t epoch; /* bumped on each retry of the request */
    uint32_t n_tokens; /* 1 .. PD_PROTO_MAX_TOKENS */
    uint32_t n_blocks; /* destination blocks granted: >= ceil(n_tokens / block_size) - n_cached */
    uint32_t block_size; /* tokens per block, 1 .. PD_PROTO_MAX_BLOCK_SIZE */
    float temperature; /* [0, PD_PROTO_MAX_TEMPERATURE]; 0 = greedy */
    float top_p; /* (0, 1] */
    float min_p; /* [0, 1] */
    uint32_t top_k; /* 0 = off */
    float presence_penalty; /* [-MAX_PENALTY, MAX_PENALTY] */
    float frequency_penalty; /* [-MAX_PENALTY, MAX_PENALTY] */
    float repetition_penalty; /* (0, MAX_PENALTY]; 1 = off */
    uint32_t n_logprobs; /* 0 .. PD_PROTO_MAX_LOGPROBS */
    uint64_t seed;
    uint16_t flags; /* PD_PREFILL_F_* */
    /* The prefix part (PD_PREFILL_F_PREFIX; zeros without it): */
    uint8_t salt[PD_PREFIX_NAME_LEN]; /* the request's cache_salt digest, zeros: none */
    uint32_t n_cached; /* blocks [0, n_cached) of the prompt decoded holds already: they are
                        * not sent, and the granted blocks (n_blocks) hold the prompt's
                        * blocks from n_cached on; n_cached * block_size < n_tokens */
    uint8_t cached_name[PD_PREFIX_NAME_LEN]; /* the chain name of block n_cached - 1, as
                                              * decoded computed it (zeros when n_cached 0):
                                              * prefilld checks it names the same prefix */
    /* The bias part (PD_PREFILL_F_BIAS): n_bias entries, 1..PD_PROTO_MAX_BIAS,
     * in the order the sampler adds them. As tokens: the encoder reads
     * `bias` when set, else `bias_le`; the decoder sets bias_le (n_bias x
     * (LE u32 token, LE f32 bias), unaligned) and bias = NULL. Read with
     * pd_prefill_bias. Whether a token is in the vocabulary is the
     * receiver's to check. */
    uint32_t n_bias;
    const struct pd_bias *bias;
    const uint8_t *bias_le;
    /* The mask part (PD_PREFILL_F_MASK): mask_words words (1..
     * PD_PROTO_MAX_MASK_WORDS), bit t % 32 of word t / 32 set when token t
     * may be the first; the receiver checks the count against its
     * vocabulary. Encoder: `mask` (host order) or `mask_le`; decoder:
     * mask_le (LE u32, unaligned), read with pd_prefill_mask_word. */
    uint32_t mask_words;
    const uint32_t *mask;
    const uint8_t *mask_le;
    /* Tokens: the encoder reads `tokens` (host order) when set, else
     * `tokens_le`; the decoder sets tokens_le (a view of n_tokens LE u32 in
     * the input, unaligned) and tokens = NULL. Read with pd_prefill_token. */
    const uint32_t *tokens;
    const uint8_t *tokens_le;
    char xrid[PD_PROTO_MAX_XRID + 1]; /* X-Request-Id: 1..128 printable ASCII, NUL-terminated */
};

struct pd_chunk {
    uint64_t request_id;
    uint32_t epoch;
    uint32_t first_block; /* logical block index within the request */
    uint32_t n_blocks; /* 1 .. PD_PROTO_MAX_CHUNK_BLOCKS; first + n <= MAX_REQ_BLOCKS */
    uint64_t transfer; /* != 0; the sender never reuses it in a session */
    uint64_t block_bytes; /* 1 .. PD_PROTO_MAX_BLOCK_BYTES */
    const uint8_t *tags; /* n_blocks x PD_BLOCK_TAG_LEN; a view (decode) or input (encode) */
};

struct pd_ack {
    uint64_t request_id;
    uint32_t epoch;
    uint32_t blocks; /* blocks [0, blocks) received and verified; <= MAX_REQ_BLOCKS */
};

struct pd_logprob {
    uint32_t token;
    float logprob; /* <= 0, not NaN (-inf allowed) */
};

struct pd_done {
    uint64_t request_id;
    uint32_t epoch;
    uint32_t n_prompt; /* prompt tokens processed, 1 .. MAX_TOKENS */
    uint32_t token; /* the first sampled token */
    float logprob;
    uint32_t n_top; /* 0 .. PD_PROTO_MAX_LOGPROBS */
    struct pd_logprob top[PD_PROTO_MAX_LOGPROBS];
};

/* One prompt position's row of PROMPT_LP: the log-probability of the prompt
 * token there (the receiver knows which) and the n_top most probable. */
struct pd_lp_row {
    float logprob; /* <= 0, not NaN */
    struct pd_logprob top[PD_PROTO_MAX_LOGPROBS];
};

struct pd_prompt_lp { /* PROMPT_LP */
    uint64_t request_id;
    uint32_t epoch;
    uint32_t first; /* the prompt position of the first row: >= 1 (position 0 has none) */
    uint32_t n_rows; /* 1 .. PD_PROTO_MAX_LP_ROWS; first + n_rows <= PD_PROTO_MAX_TOKENS */
    uint32_t n_top; /* 0 .. PD_PROTO_MAX_LOGPROBS alternatives in every row (the PREFILL's
                     * n_logprobs) */
    /* Rows: the encoder reads `rows` when set, else `rows_le`; the decoder
     * sets rows_le (n_rows x (LE f32 logprob, n_top x (LE u32 token, LE f32
     * logprob)), unaligned, every logprob checked) and rows = NULL. Read
     * with pd_prompt_lp_row. Tokens are the receiver's to check. */
    const struct pd_lp_row *rows;
    const uint8_t *rows_le;
};

struct pd_abort { /* ABORT */
    uint64_t request_id;
    uint32_t epoch;
    uint16_t reason; /* enum pd_reason */
    char detail[PD_PROTO_MAX_DETAIL + 1]; /* printable ASCII, may be empty */
};

struct pd_reqref { /* ABORT_ACK, CANCEL */
    uint64_t request_id;
    uint32_t epoch;
};

struct pd_heartbeat {
    uint32_t lease_ms; /* 1 .. PD_PROTO_MAX_LEASE_MS: the sender's lease on its peer */
    uint64_t seq; /* increases with every heartbeat (frames may arrive out of order) */
};

struct pd_error { /* ERROR */
    uint16_t reason;
    char detail[PD_PROTO_MAX_DETAIL + 1];
};

struct pd_ucx_addr { /* UCX_ADDR */
    uint64_t token; /* != 0: the sender's receive token; the peer's active messages carry it */
    uint32_t len; /* 1 .. PD_PROTO_MAX_UCX_ADDR */
    const uint8_t *addr; /* len bytes of ucp_worker_get_address; a view (decode) or input */
};

enum pd_progress_state {
    PD_PROGRESS_QUEUED = 1, /* waiting for room to compute */
    PD_PROGRESS_COMPUTING = 2,
};

struct pd_progress { /* PROGRESS */
    uint64_t request_id;
    uint32_t epoch;
    uint16_t state; /* enum pd_progress_state */
    uint32_t tokens_done; /* prompt tokens computed (cached ones included), <= n_tokens */
    uint32_t n_tokens; /* the prompt's, 1 .. MAX_TOKENS */
};

struct pd_ready { /* READY */
    uint64_t token; /* echoes the token of D's UCX_ADDR */
};

struct pd_frame {
    uint8_t type; /* enum pd_frame_type, a control type */
    union {
        struct pd_prefill prefill;
        struct pd_chunk chunk;
        struct pd_ack ack;
        struct pd_done done;
        struct pd_abort abort;
        struct pd_reqref abort_ack;
        struct pd_reqref cancel;
        struct pd_heartbeat heartbeat;
        struct pd_error error;
        struct pd_ucx_addr ucx_addr;
        struct pd_ready ready;
        struct pd_progress progress;
        struct pd_prompt_lp prompt_lp;
    } u;
};

/* "PREFILL", "HS_M1", ... or "unknown". */
const char *pd_frame_type_name(unsigned type);
/* "integrity", "timeout", ... or "unknown". */
const char *pd_reason_name(unsigned reason);
/* 1 when `type` is a known type, sealed: 1 for control frames, 0 for handshake. */
int pd_frame_type_known(unsigned type);
int pd_frame_type_sealed(unsigned type);
/* 1 when `role` may send frames of `type`. */
int pd_frame_sender_ok(unsigned type, enum pd_role role);

/* Header: encode writes PD_FRAME_HDR_LEN bytes. Decode reads the first
 * PD_FRAME_HDR_LEN bytes of buf (len >= that) and checks the header alone:
 * magic, major version, known type, flags and reserved zero, body length within
 * the type's bounds and PD_FRAME_MAX_BODY, seq 0 for handshake messages. */
void pd_frame_hdr_encode(const struct pd_frame_hdr *h, uint8_t out[PD_FRAME_HDR_LEN]);
int pd_frame_hdr_decode(const uint8_t *buf, size_t len, struct pd_frame_hdr *h, char *err,
                        size_t errlen);
/* Bytes on the wire for this header: header + body (+ MAC when sealed). */
size_t pd_frame_wire_len(const struct pd_frame_hdr *h);

/* Body of a control frame of header h (body_len == h->len), into *out. */
int pd_frame_body_decode(const struct pd_frame_hdr *h, const uint8_t *body, size_t body_len,
                         struct pd_frame *out, char *err, size_t errlen);

/* A whole plaintext control frame (header + body, nothing after): the output
 * of pd_frame_encode, or of common/kvchan/auth's open. */
int pd_frame_decode(const uint8_t *buf, size_t len, struct pd_frame *out, char *err,
                    size_t errlen);

/* Header + body of f with the given seq into buf; *out_len the bytes written.
 * A sealed frame then needs PD_FRAME_MAC_LEN more bytes of room in buf. */
int pd_frame_encode(const struct pd_frame *f, uint64_t seq, uint8_t *buf, size_t cap,
                    size_t *out_len, char *err, size_t errlen);

/* Body bytes f will take (0 for an invalid type). */
size_t pd_frame_body_len(const struct pd_frame *f);

/* Token i (< n_tokens) of a PREFILL, from whichever of tokens / tokens_le is set. */
uint32_t pd_prefill_token(const struct pd_prefill *p, uint32_t i);
/* Bias entry i (< n_bias) of a PREFILL, from whichever of bias / bias_le is set. */
struct pd_bias pd_prefill_bias(const struct pd_prefill *p, uint32_t i);
/* Word i (< mask_words) of a PREFILL's mask part. */
uint32_t pd_prefill_mask_word(const struct pd_prefill *p, uint32_t i);
/* Row i (< n_rows) of a PROMPT_LP into *out (its first n_top alternatives). */
void pd_prompt_lp_row(const struct pd_prompt_lp *p, uint32_t i, struct pd_lp_row *out);

#endif
