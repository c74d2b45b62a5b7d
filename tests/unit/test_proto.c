/* proto/: frame and handshake-message codecs. The golden frames under
 * tests/vectors/frames/ were written by tests/vectors/make_frames.py (Python's
 * struct module) from the documented layouts; the expected values below are
 * the ones that script uses. */
#include "frame.h"
#include "handshake.h"
#include "pd_test.h"

#include <errno.h>
#include <math.h>

#ifndef PD_SRCDIR
#error "tests need PD_SRCDIR"
#endif

#define REQ 0x0123456789abcdefull
#define EPOCH 2u

static char err[512];

/* A golden frame into buf; returns its length (the test fails if absent). */
static size_t golden(const char *name, uint8_t *buf, size_t cap)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/vectors/frames/%s.bin", PD_SRCDIR, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        PD_TEST_FAIL_("cannot open %s", path);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    if (n == 0 || n == cap)
        PD_TEST_FAIL_("%s: %zu bytes", path, n);
    return n;
}

static const char *const golden_names[] = {
    "prefill", "chunk", "ack", "done", "abort", "abort_ack", "cancel", "heartbeat", "error",
    "prefill_prefix", "progress", /* minor 1 */
    "prefill_bias", "prompt_lp", "prefill_prompt_lp", "prefill_mask", /* minor 2 */
};
#define N_GOLDEN (sizeof(golden_names) / sizeof(golden_names[0]))

static const uint32_t prefill_tokens[] = {1, 9906, 1917, 30, 128000};

/* prefill_prefix's 40 tokens, as make_frames.py computes them */
static const uint32_t *prefix_tokens(void)
{
    static uint32_t t[40];
    for (uint32_t i = 0; i < 40; i++)
        t[i] = (i * 7919u + 3u) % 128256u;
    return t;
}

/* prefill_bias's entries, as make_frames.py writes them */
static const struct pd_bias prefill_bias_entries[] = {{42, -100.0f}, {7, 2.5f}, {128000, 100.0f}};
static const uint32_t bias_tokens[] = {5, 6, 7};

/* prefill_mask's words (tokens 0, 31, 35, 36, 38, 41, 44, 60, 69) and tokens, as
 * make_frames.py writes them */
static const uint32_t mask_words3[] = {0x80000001u, 0x10001258u, 0x00000020u};
static const uint32_t mask_tokens[] = {8, 9};

/* prefill_prompt_lp's tokens, and prompt_lp's rows, as make_frames.py writes them */
static const uint32_t plp_tokens[] = {11, 22, 33, 44};
static const struct pd_lp_row prompt_lp_rows[] = {
    {.logprob = -1.5f, .top = {{791, -0.125f}, {578, -2.5f}}},
    {.logprob = -3.25f, .top = {{128000, -0.0625f}, {7, -INFINITY}}},
};

/* The frames make_frames.py writes, as structs. */
static struct pd_frame expected(const char *name, uint8_t tags[48])
{
    struct pd_frame f;
    memset(&f, 0, sizeof(f));
    if (strcmp(name, "prefill") == 0) {
        f.type = PD_FT_PREFILL;
        f.u.prefill = (struct pd_prefill){
            .request_id = REQ, .epoch = EPOCH, .n_tokens = 5, .n_blocks = 1, .block_size = 16,
            .temperature = 0.7f, .top_p = 0.9f, .min_p = 0.05f, .top_k = 40,
            .presence_penalty = 0.5f, .frequency_penalty = -0.25f, .repetition_penalty = 1.1f,
            .n_logprobs = 5, .seed = 0xfeedface12345678ull, .flags = PD_PREFILL_F_NO_EOS,
            .tokens = prefill_tokens,
        };
        strcpy(f.u.prefill.xrid, "req-7f3a9c");
    } else if (strcmp(name, "prefill_prefix") == 0) {
        /* 2 cached blocks of 16: the one granted block holds tokens 32..39 */
        f.type = PD_FT_PREFILL;
        f.u.prefill = (struct pd_prefill){
            .request_id = REQ, .epoch = EPOCH, .n_tokens = 40, .n_blocks = 1, .block_size = 16,
            .temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .seed = 7,
            .flags = PD_PREFILL_F_PREFIX, .n_cached = 2, .tokens = prefix_tokens(),
        };
        for (int i = 0; i < PD_PREFIX_NAME_LEN; i++) {
            f.u.prefill.salt[i] = (uint8_t)(0x20 + i);
            f.u.prefill.cached_name[i] = (uint8_t)(0xa0 + i);
        }
        strcpy(f.u.prefill.xrid, "req-prefix-2");
    } else if (strcmp(name, "prefill_bias") == 0) {
        /* the prefix part with nothing cached, then the bias part */
        f.type = PD_FT_PREFILL;
        f.u.prefill = (struct pd_prefill){
            .request_id = REQ, .epoch = EPOCH, .n_tokens = 3, .n_blocks = 1, .block_size = 16,
            .temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .n_logprobs = 2,
            .seed = 9, .flags = PD_PREFILL_F_PREFIX | PD_PREFILL_F_BIAS, .n_bias = 3,
            .bias = prefill_bias_entries, .tokens = bias_tokens,
        };
        strcpy(f.u.prefill.xrid, "req-bias-3");
    } else if (strcmp(name, "prefill_prompt_lp") == 0) {
        /* the prefix part (a salt, nothing cached: the flag refuses cached blocks) */
        f.type = PD_FT_PREFILL;
        f.u.prefill = (struct pd_prefill){
            .request_id = REQ, .epoch = EPOCH, .n_tokens = 4, .n_blocks = 1, .block_size = 16,
            .temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .n_logprobs = 3,
            .seed = 5, .flags = PD_PREFILL_F_PREFIX | PD_PREFILL_F_PROMPT_LP,
            .tokens = plp_tokens,
        };
        for (int i = 0; i < PD_PREFIX_NAME_LEN; i++)
            f.u.prefill.salt[i] = (uint8_t)(0x30 + i);
        strcpy(f.u.prefill.xrid, "req-plp-4");
    } else if (strcmp(name, "prefill_mask") == 0) {
        /* the prefix part with nothing cached, then the mask part */
        f.type = PD_FT_PREFILL;
        f.u.prefill = (struct pd_prefill){
            .request_id = REQ, .epoch = EPOCH, .n_tokens = 2, .n_blocks = 1, .block_size = 16,
            .temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .n_logprobs = 1,
            .seed = 11, .flags = PD_PREFILL_F_PREFIX | PD_PREFILL_F_MASK, .mask_words = 3,
            .mask = mask_words3, .tokens = mask_tokens,
        };
        strcpy(f.u.prefill.xrid, "req-mask-3");
    } else if (strcmp(name, "prompt_lp") == 0) {
        f.type = PD_FT_PROMPT_LP;
        f.u.prompt_lp = (struct pd_prompt_lp){.request_id = REQ, .epoch = EPOCH, .first = 3,
                                              .n_rows = 2, .n_top = 2, .rows = prompt_lp_rows};
    } else if (strcmp(name, "progress") == 0) {
        f.type = PD_FT_PROGRESS;
        f.u.progress = (struct pd_progress){.request_id = REQ, .epoch = EPOCH,
                                            .state = PD_PROGRESS_COMPUTING, .tokens_done = 32,
                                            .n_tokens = 40};
    } else if (strcmp(name, "chunk") == 0) {
        for (int i = 0; i < 48; i++)
            tags[i] = (uint8_t)(i ^ 0x5a);
        f.type = PD_FT_CHUNK;
        f.u.chunk = (struct pd_chunk){.request_id = REQ, .epoch = EPOCH, .first_block = 4,
                                      .n_blocks = 3, .transfer = 9, .block_bytes = 368640,
                                      .tags = tags};
    } else if (strcmp(name, "ack") == 0) {
        f.type = PD_FT_ACK;
        f.u.ack = (struct pd_ack){.request_id = REQ, .epoch = EPOCH, .blocks = 7};
    } else if (strcmp(name, "done") == 0) {
        f.type = PD_FT_DONE;
        f.u.done = (struct pd_done){.request_id = REQ, .epoch = EPOCH, .n_prompt = 5,
                                    .token = 791, .logprob = -0.125f, .n_top = 2,
                                    .top = {{791, -0.125f}, {578, -2.5f}}};
    } else if (strcmp(name, "abort") == 0) {
        f.type = PD_FT_ABORT;
        f.u.abort = (struct pd_abort){.request_id = REQ, .epoch = EPOCH, .reason = PD_R_INTEGRITY};
        strcpy(f.u.abort.detail, "block 3 tag mismatch");
    } else if (strcmp(name, "abort_ack") == 0) {
        f.type = PD_FT_ABORT_ACK;
        f.u.abort_ack = (struct pd_reqref){.request_id = REQ, .epoch = EPOCH};
    } else if (strcmp(name, "cancel") == 0) {
        f.type = PD_FT_CANCEL;
        f.u.cancel = (struct pd_reqref){.request_id = REQ, .epoch = EPOCH + 1};
    } else if (strcmp(name, "heartbeat") == 0) {
        f.type = PD_FT_HEARTBEAT;
        f.u.heartbeat = (struct pd_heartbeat){.lease_ms = 5000, .seq = 42};
    } else if (strcmp(name, "error") == 0) {
        f.type = PD_FT_ERROR;
        f.u.error = (struct pd_error){.reason = PD_R_MODEL};
        strcpy(f.u.error.detail, "model fingerprint differs");
    }
    return f;
}

/* Field-by-field equality of two frames of the same type. */
static void check_same(const struct pd_frame *a, const struct pd_frame *b)
{
    CHECK_EQ_INT(a->type, b->type);
    switch (a->type) {
    case PD_FT_PREFILL: {
        const struct pd_prefill *x = &a->u.prefill, *y = &b->u.prefill;
        CHECK(x->request_id == y->request_id);
        CHECK_EQ_INT(x->epoch, y->epoch);
        CHECK_EQ_INT(x->n_tokens, y->n_tokens);
        CHECK_EQ_INT(x->n_blocks, y->n_blocks);
        CHECK_EQ_INT(x->block_size, y->block_size);
        CHECK(x->temperature == y->temperature && x->top_p == y->top_p && x->min_p == y->min_p);
        CHECK_EQ_INT(x->top_k, y->top_k);
        CHECK(x->presence_penalty == y->presence_penalty);
        CHECK(x->frequency_penalty == y->frequency_penalty);
        CHECK(x->repetition_penalty == y->repetition_penalty);
        CHECK_EQ_INT(x->n_logprobs, y->n_logprobs);
        CHECK(x->seed == y->seed);
        CHECK_EQ_INT(x->flags, y->flags);
        CHECK(memcmp(x->salt, y->salt, PD_PREFIX_NAME_LEN) == 0);
        CHECK_EQ_INT(x->n_cached, y->n_cached);
        CHECK(memcmp(x->cached_name, y->cached_name, PD_PREFIX_NAME_LEN) == 0);
        for (uint32_t i = 0; i < x->n_tokens; i++)
            CHECK_EQ_INT(pd_prefill_token(x, i), pd_prefill_token(y, i));
        CHECK_EQ_INT(x->n_bias, y->n_bias);
        for (uint32_t i = 0; i < x->n_bias; i++) {
            const struct pd_bias bx = pd_prefill_bias(x, i), by = pd_prefill_bias(y, i);
            CHECK_EQ_INT(bx.token, by.token);
            CHECK(bx.bias == by.bias);
        }
        CHECK_EQ_INT(x->mask_words, y->mask_words);
        for (uint32_t i = 0; i < x->mask_words; i++)
            CHECK_EQ_INT(pd_prefill_mask_word(x, i), pd_prefill_mask_word(y, i));
        CHECK_STR(x->xrid, y->xrid);
        break;
    }
    case PD_FT_CHUNK: {
        const struct pd_chunk *x = &a->u.chunk, *y = &b->u.chunk;
        CHECK(x->request_id == y->request_id);
        CHECK_EQ_INT(x->epoch, y->epoch);
        CHECK_EQ_INT(x->first_block, y->first_block);
        CHECK_EQ_INT(x->n_blocks, y->n_blocks);
        CHECK(x->transfer == y->transfer);
        CHECK(x->block_bytes == y->block_bytes);
        CHECK(memcmp(x->tags, y->tags, PD_BLOCK_TAG_LEN * (size_t)x->n_blocks) == 0);
        break;
    }
    case PD_FT_ACK:
        CHECK(a->u.ack.request_id == b->u.ack.request_id);
        CHECK_EQ_INT(a->u.ack.epoch, b->u.ack.epoch);
        CHECK_EQ_INT(a->u.ack.blocks, b->u.ack.blocks);
        break;
    case PD_FT_DONE: {
        const struct pd_done *x = &a->u.done, *y = &b->u.done;
        CHECK(x->request_id == y->request_id);
        CHECK_EQ_INT(x->epoch, y->epoch);
        CHECK_EQ_INT(x->n_prompt, y->n_prompt);
        CHECK_EQ_INT(x->token, y->token);
        CHECK(x->logprob == y->logprob);
        CHECK_EQ_INT(x->n_top, y->n_top);
        for (uint32_t i = 0; i < x->n_top; i++)
            CHECK(x->top[i].token == y->top[i].token && x->top[i].logprob == y->top[i].logprob);
        break;
    }
    case PD_FT_ABORT:
        CHECK(a->u.abort.request_id == b->u.abort.request_id);
        CHECK_EQ_INT(a->u.abort.epoch, b->u.abort.epoch);
        CHECK_EQ_INT(a->u.abort.reason, b->u.abort.reason);
        CHECK_STR(a->u.abort.detail, b->u.abort.detail);
        break;
    case PD_FT_ABORT_ACK: case PD_FT_CANCEL: {
        const struct pd_reqref *x = a->type == PD_FT_CANCEL ? &a->u.cancel : &a->u.abort_ack;
        const struct pd_reqref *y = b->type == PD_FT_CANCEL ? &b->u.cancel : &b->u.abort_ack;
        CHECK(x->request_id == y->request_id);
        CHECK_EQ_INT(x->epoch, y->epoch);
        break;
    }
    case PD_FT_HEARTBEAT:
        CHECK_EQ_INT(a->u.heartbeat.lease_ms, b->u.heartbeat.lease_ms);
        CHECK(a->u.heartbeat.seq == b->u.heartbeat.seq);
        break;
    case PD_FT_ERROR:
        CHECK_EQ_INT(a->u.error.reason, b->u.error.reason);
        CHECK_STR(a->u.error.detail, b->u.error.detail);
        break;
    case PD_FT_PROGRESS: {
        const struct pd_progress *x = &a->u.progress, *y = &b->u.progress;
        CHECK(x->request_id == y->request_id);
        CHECK_EQ_INT(x->epoch, y->epoch);
        CHECK_EQ_INT(x->state, y->state);
        CHECK_EQ_INT(x->tokens_done, y->tokens_done);
        CHECK_EQ_INT(x->n_tokens, y->n_tokens);
        break;
    }
    case PD_FT_PROMPT_LP: {
        const struct pd_prompt_lp *x = &a->u.prompt_lp, *y = &b->u.prompt_lp;
        CHECK(x->request_id == y->request_id);
        CHECK_EQ_INT(x->epoch, y->epoch);
        CHECK_EQ_INT(x->first, y->first);
        CHECK_EQ_INT(x->n_rows, y->n_rows);
        CHECK_EQ_INT(x->n_top, y->n_top);
        for (uint32_t i = 0; i < x->n_rows; i++) {
            struct pd_lp_row rx, ry;
            pd_prompt_lp_row(x, i, &rx);
            pd_prompt_lp_row(y, i, &ry);
            CHECK(rx.logprob == ry.logprob);
            for (uint32_t k = 0; k < x->n_top; k++)
                CHECK(rx.top[k].token == ry.top[k].token &&
                      rx.top[k].logprob == ry.top[k].logprob);
        }
        break;
    }
    default: CHECK(!"unexpected type");
    }
}

/* Decode `bytes`, expect failure with `rc`. */
#define REFUSED(bytes, len, want_rc)                                                      \
    do {                                                                                  \
        struct pd_frame f_;                                                               \
        CHECK_EQ_INT(pd_frame_decode((bytes), (len), &f_, err, sizeof(err)), (want_rc));  \
    } while (0)

static void golden_frames_decode_to_documented_values(void)
{
    uint8_t buf[4096], tags[48];
    for (size_t i = 0; i < N_GOLDEN; i++) {
        size_t n = golden(golden_names[i], buf, sizeof(buf));
        struct pd_frame got, want = expected(golden_names[i], tags);
        if (pd_frame_decode(buf, n, &got, err, sizeof(err)) < 0)
            PD_TEST_FAIL_("%s: %s", golden_names[i], err);
        check_same(&got, &want);
    }
}

static void golden_frames_reencode_byte_identical(void)
{
    uint8_t buf[4096], out[4096], tags[48];
    for (size_t i = 0; i < N_GOLDEN; i++) {
        size_t n = golden(golden_names[i], buf, sizeof(buf)), m = 0;
        struct pd_frame want = expected(golden_names[i], tags);
        struct pd_frame_hdr h;
        CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
        CHECK_EQ_INT(pd_frame_encode(&want, h.seq, out, sizeof(out), &m, err, sizeof(err)), 0);
        CHECK_EQ_INT(m, n);
        CHECK(memcmp(out, buf, n) == 0);
        CHECK_EQ_INT(pd_frame_body_len(&want), n - PD_FRAME_HDR_LEN);
    }
}

static void decoded_frame_reencodes_from_its_views(void)
{
    uint8_t buf[4096], out[4096];
    for (size_t i = 0; i < N_GOLDEN; i++) {
        size_t n = golden(golden_names[i], buf, sizeof(buf)), m = 0;
        struct pd_frame f;
        struct pd_frame_hdr h;
        CHECK_EQ_INT(pd_frame_decode(buf, n, &f, err, sizeof(err)), 0);
        CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
        CHECK_EQ_INT(pd_frame_encode(&f, h.seq, out, sizeof(out), &m, err, sizeof(err)), 0);
        CHECK(m == n && memcmp(out, buf, n) == 0);
    }
}

static void header_has_documented_layout(void)
{
    struct pd_frame_hdr h = {.major = 1, .minor = 7, .type = PD_FT_ACK, .len = 0x01020304,
                             .seq = 0x1122334455667788ull};
    uint8_t b[PD_FRAME_HDR_LEN];
    static const uint8_t want[PD_FRAME_HDR_LEN] = {
        'P', 'D', 'K', 'V', 1, 7, PD_FT_ACK, 0, 0x04, 0x03, 0x02, 0x01, 0, 0, 0, 0,
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
    };
    pd_frame_hdr_encode(&h, b);
    CHECK(memcmp(b, want, sizeof(want)) == 0);
    CHECK_EQ_INT(pd_frame_wire_len(&h), PD_FRAME_HDR_LEN + 0x01020304 + PD_FRAME_MAC_LEN);
}

static void other_major_version_refused_naming_both(void)
{
    uint8_t buf[256];
    size_t n = golden("ack", buf, sizeof(buf));
    buf[4] = 2;
    buf[5] = 3;
    REFUSED(buf, n, -EPROTONOSUPPORT);
    CHECK_CONTAINS(err, "ours 1.2");
    CHECK_CONTAINS(err, "peer 2.3");
}

static void newer_minor_version_accepted(void)
{
    uint8_t buf[256];
    struct pd_frame f;
    size_t n = golden("ack", buf, sizeof(buf));
    buf[5] = 9;
    CHECK_EQ_INT(pd_frame_decode(buf, n, &f, err, sizeof(err)), 0);
    CHECK_EQ_INT(f.u.ack.blocks, 7);
}

static void bad_magic_refused(void)
{
    uint8_t buf[256];
    size_t n = golden("ack", buf, sizeof(buf));
    buf[0] = 'Q';
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "magic");
}

static void unknown_type_refused(void)
{
    uint8_t buf[256];
    size_t n = golden("ack", buf, sizeof(buf));
    const uint8_t bad[] = {0, 4, 15, 29, 255}; /* 27 is PROGRESS (minor 1), 28 PROMPT_LP (2) */
    for (size_t i = 0; i < sizeof(bad); i++) {
        buf[6] = bad[i];
        REFUSED(buf, n, -EBADMSG);
        CHECK_CONTAINS(err, "unknown type");
    }
}

static void nonzero_flags_refused(void)
{
    uint8_t buf[256];
    size_t n = golden("heartbeat", buf, sizeof(buf));
    buf[7] = 0x80;
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "flags");
}

static void nonzero_reserved_bytes_refused(void)
{
    /* header bytes 12..15, CHUNK 20..23, DONE 28..31, HEARTBEAT 4..7 of the body */
    static const struct {
        const char *name;
        size_t off;
    } spots[] = {
        {"ack", 12}, {"ack", 15}, {"chunk", PD_FRAME_HDR_LEN + 20}, {"done", PD_FRAME_HDR_LEN + 31},
        {"heartbeat", PD_FRAME_HDR_LEN + 4},
    };
    for (size_t i = 0; i < sizeof(spots) / sizeof(spots[0]); i++) {
        uint8_t buf[256];
        size_t n = golden(spots[i].name, buf, sizeof(buf));
        buf[spots[i].off] = 1;
        REFUSED(buf, n, -EBADMSG);
        CHECK_CONTAINS(err, "reserved");
    }
}

static void body_length_over_type_cap_refused(void)
{
    uint8_t buf[256];
    size_t n = golden("ack", buf, sizeof(buf));
    buf[8] = 17; /* ACK is exactly 16 */
    REFUSED(buf, n, -E2BIG);
    buf[8] = 0;
    buf[10] = 0x20; /* 2 MiB: past PD_FRAME_MAX_BODY for any type */
    buf[6] = PD_FT_PREFILL;
    REFUSED(buf, n, -E2BIG);
}

static void handshake_message_with_nonzero_seq_refused(void)
{
    uint8_t buf[PD_HS_CONFIRM_LEN] = {0}, c[32] = {1};
    struct pd_frame_hdr h;
    CHECK_EQ_INT(pd_hs_confirm_encode(c, buf, sizeof(buf), err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, sizeof(buf), &h, err, sizeof(err)), 0);
    buf[16] = 1;
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, sizeof(buf), &h, err, sizeof(err)), -EBADMSG);
    CHECK_CONTAINS(err, "seq 0");
}

static void every_truncation_of_every_frame_refused(void)
{
    for (size_t i = 0; i < N_GOLDEN; i++) {
        uint8_t buf[4096];
        size_t n = golden(golden_names[i], buf, sizeof(buf));
        for (size_t k = 0; k < n; k++) {
            struct pd_frame f;
            /* a copy of exactly k bytes, so ASan sees any read past it */
            uint8_t *cut = malloc(k ? k : 1);
            memcpy(cut, buf, k);
            int rc = pd_frame_decode(cut, k, &f, err, sizeof(err));
            free(cut);
            if (rc != -EBADMSG)
                PD_TEST_FAIL_("%s cut to %zu bytes: rc %d (%s)", golden_names[i], k, rc, err);
        }
    }
}

static void trailing_byte_refused(void)
{
    uint8_t buf[4096];
    size_t n = golden("done", buf, sizeof(buf));
    buf[n] = 0;
    REFUSED(buf, n + 1, -EBADMSG);
    CHECK_CONTAINS(err, "header says");
}

/* f encoded into a scratch buffer: the encoder's return (its reason in err) */
static int encode_rc(const struct pd_frame *f)
{
    uint8_t buf[4096];
    size_t n;
    return pd_frame_encode(f, 1, buf, sizeof(buf), &n, err, sizeof(err));
}

/* Encode a PREFILL with one field changed by `edit`, decode it raw. */
static struct pd_frame prefill_base(uint8_t tags[48]) { return expected("prefill", tags); }

static void body_count_inconsistent_with_length_refused(void)
{
    uint8_t buf[4096];
    size_t n = golden("chunk", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN + 16] = 2; /* 2 blocks claimed, 3 tags present */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "counts make it");
    n = golden("prefill", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN + 12] = 4; /* 4 tokens claimed, 5 present */
    REFUSED(buf, n, -EBADMSG);
    n = golden("done", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN + 24] = 3; /* 3 alternatives claimed, 2 present */
    REFUSED(buf, n, -EBADMSG);
}

static void prefill_token_count_over_cap_refused(void)
{
    uint8_t tags[48], buf[64];
    size_t n;
    struct pd_frame f = prefill_base(tags);
    f.u.prefill.n_tokens = PD_PROTO_MAX_TOKENS + 1;
    f.u.prefill.n_blocks = PD_PROTO_MAX_REQ_BLOCKS;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), -E2BIG);
    CHECK_CONTAINS(err, "tokens");
    /* and on the wire: the count field of a real frame */
    uint8_t g[4096];
    n = golden("prefill", g, sizeof(g));
    g[PD_FRAME_HDR_LEN + 14] = 0x10; /* 2^20 + 5 tokens */
    REFUSED(g, n, -E2BIG);
}

static void prefill_with_too_few_blocks_refused(void)
{
    uint8_t tags[48];
    struct pd_frame f = prefill_base(tags);
    f.u.prefill.block_size = 2; /* 5 tokens need 3 blocks of 2 */
    f.u.prefill.n_blocks = 2;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "cannot hold");
    f.u.prefill.n_blocks = 3;
    CHECK_EQ_INT(encode_rc(&f), 0);
}

static void prefill_nonfinite_or_out_of_range_sampling_refused(void)
{
    uint8_t tags[48], buf[4096];
    size_t n;
    const float bad_temp[] = {NAN, INFINITY, -0.5f, 101.0f};
    for (size_t i = 0; i < 4; i++) {
        struct pd_frame f = prefill_base(tags);
        f.u.prefill.temperature = bad_temp[i];
        CHECK_EQ_INT(encode_rc(&f), -EINVAL);
        CHECK_CONTAINS(err, "temperature");
    }
    struct pd_frame f = prefill_base(tags);
    f.u.prefill.top_p = 0.0f;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    f = prefill_base(tags);
    f.u.prefill.repetition_penalty = 0.0f;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    f = prefill_base(tags);
    f.u.prefill.presence_penalty = -INFINITY;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    /* a NaN in a real frame's min_p */
    n = golden("prefill", buf, sizeof(buf));
    memcpy(buf + PD_FRAME_HDR_LEN + 32, "\x00\x00\xc0\x7f", 4);
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "min_p");
}

static void prefill_request_id_must_be_printable_and_bounded(void)
{
    uint8_t tags[48], buf[4096];
    size_t n = golden("prefill", buf, sizeof(buf));
    buf[n - 3] = '\n'; /* a newline would forge a log line */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "printable");
    struct pd_frame f = prefill_base(tags);
    f.u.prefill.xrid[0] = '\0';
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    memset(f.u.prefill.xrid, 'a', PD_PROTO_MAX_XRID);
    f.u.prefill.xrid[PD_PROTO_MAX_XRID] = '\0';
    CHECK_EQ_INT(encode_rc(&f), 0);
    /* one byte more on the wire */
    uint8_t g[4096];
    size_t m = golden("prefill", g, sizeof(g));
    g[PD_FRAME_HDR_LEN + 64] = PD_PROTO_MAX_XRID + 1;
    REFUSED(g, m, -EBADMSG); /* length no longer matches */
}

static void prefill_unknown_flags_refused(void)
{
    uint8_t buf[4096];
    size_t n = golden("prefill", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN + 66] = 0x41; /* NO_EOS and 0x40, which no minor defines */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "flags");
    buf[PD_FRAME_HDR_LEN + 66] = 0x01;
    buf[PD_FRAME_HDR_LEN + 67] = 0x80; /* 0x8001 */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "flags");
}

static void chunk_limits_refused(void)
{
    uint8_t tags[48];
    struct pd_frame f = expected("chunk", tags);
    f.u.chunk.transfer = 0;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "transfer counter 0");
    f = expected("chunk", tags);
    f.u.chunk.first_block = PD_PROTO_MAX_REQ_BLOCKS - 2; /* 3 blocks run past the cap */
    CHECK_EQ_INT(encode_rc(&f), -E2BIG);
    f = expected("chunk", tags);
    f.u.chunk.block_bytes = PD_PROTO_MAX_BLOCK_BYTES + 1;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    uint8_t buf[4096];
    size_t n = golden("chunk", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN + 17] = 0x10; /* 4099 blocks */
    REFUSED(buf, n, -E2BIG);
}

static void done_logprob_must_be_a_log_probability(void)
{
    uint8_t tags[48];
    const float bad[] = {NAN, 0.5f, INFINITY};
    for (size_t i = 0; i < 3; i++) {
        struct pd_frame f = expected("done", tags);
        f.u.done.top[1].logprob = bad[i];
        CHECK_EQ_INT(encode_rc(&f), -EINVAL);
        CHECK_CONTAINS(err, "alternative 1");
    }
    struct pd_frame f = expected("done", tags);
    f.u.done.logprob = -INFINITY; /* a filtered-out token: legitimate */
    CHECK_EQ_INT(encode_rc(&f), 0);
    f.u.done.n_top = PD_PROTO_MAX_LOGPROBS + 1;
    CHECK_EQ_INT(encode_rc(&f), -E2BIG);
}

static void unknown_reason_code_refused(void)
{
    uint8_t buf[4096];
    size_t n = golden("abort", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN + 12] = PD_R_MAX + 1;
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "reason code");
    n = golden("error", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN] = 0;
    REFUSED(buf, n, -EBADMSG);
}

static void detail_must_be_printable(void)
{
    uint8_t buf[4096];
    size_t n = golden("error", buf, sizeof(buf));
    buf[n - 1] = 0x1b; /* an escape sequence into a terminal */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "printable");
}

static void heartbeat_lease_out_of_range_refused(void)
{
    uint8_t buf[256];
    size_t n = golden("heartbeat", buf, sizeof(buf));
    memset(buf + PD_FRAME_HDR_LEN, 0, 4);
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "lease");
    memset(buf + PD_FRAME_HDR_LEN, 0xff, 4);
    REFUSED(buf, n, -EBADMSG);
}

static void request_id_zero_refused(void)
{
    const char *names[] = {"prefill", "chunk", "ack", "done", "abort", "abort_ack", "cancel",
                           "prefill_prefix", "progress", "prefill_bias", "prompt_lp",
                           "prefill_prompt_lp", "prefill_mask"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        uint8_t buf[4096];
        size_t n = golden(names[i], buf, sizeof(buf));
        memset(buf + PD_FRAME_HDR_LEN, 0, 8);
        REFUSED(buf, n, -EBADMSG);
        CHECK_CONTAINS(err, "request id 0");
    }
}

static void encoder_needs_room_for_the_whole_frame(void)
{
    uint8_t tags[48], buf[4096];
    size_t n;
    struct pd_frame f = expected("done", tags);
    size_t need = PD_FRAME_HDR_LEN + pd_frame_body_len(&f);
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, need - 1, &n, err, sizeof(err)), -ENOBUFS);
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, need, &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, need);
}

static void names_cover_every_type_and_reason(void)
{
    for (unsigned r = 1; r <= PD_R_MAX; r++)
        CHECK(strcmp(pd_reason_name(r), "unknown") != 0);
    CHECK_STR(pd_reason_name(0), "unknown");
    CHECK_STR(pd_reason_name(PD_R_MAX + 1), "unknown");
    CHECK_STR(pd_reason_name(PD_R_INTEGRITY), "integrity");
    for (unsigned t = PD_FT_PREFILL; t <= PD_FT_ERROR; t++)
        CHECK(pd_frame_type_known(t) && pd_frame_type_sealed(t));
    for (unsigned t = PD_FT_HS_M1; t <= PD_FT_HS_CONFIRM; t++)
        CHECK(pd_frame_type_known(t) && !pd_frame_type_sealed(t));
    CHECK_STR(pd_frame_type_name(PD_FT_ABORT_ACK), "ABORT_ACK");
    CHECK_STR(pd_frame_type_name(200), "unknown");
}

static void senders_follow_the_design(void)
{
    CHECK(pd_frame_sender_ok(PD_FT_PREFILL, PD_ROLE_D) && !pd_frame_sender_ok(PD_FT_PREFILL, PD_ROLE_P));
    CHECK(pd_frame_sender_ok(PD_FT_CHUNK, PD_ROLE_P) && !pd_frame_sender_ok(PD_FT_CHUNK, PD_ROLE_D));
    CHECK(pd_frame_sender_ok(PD_FT_ACK, PD_ROLE_D) && !pd_frame_sender_ok(PD_FT_ACK, PD_ROLE_P));
    CHECK(pd_frame_sender_ok(PD_FT_DONE, PD_ROLE_P) && !pd_frame_sender_ok(PD_FT_DONE, PD_ROLE_D));
    CHECK(pd_frame_sender_ok(PD_FT_CANCEL, PD_ROLE_D) && !pd_frame_sender_ok(PD_FT_CANCEL, PD_ROLE_P));
    CHECK(pd_frame_sender_ok(PD_FT_HS_M1, PD_ROLE_D) && !pd_frame_sender_ok(PD_FT_HS_M1, PD_ROLE_P));
    CHECK(pd_frame_sender_ok(PD_FT_HS_M2, PD_ROLE_P) && !pd_frame_sender_ok(PD_FT_HS_M2, PD_ROLE_D));
    const uint8_t both[] = {PD_FT_ABORT, PD_FT_ABORT_ACK, PD_FT_HEARTBEAT, PD_FT_ERROR, PD_FT_HS_CONFIRM};
    for (size_t i = 0; i < sizeof(both); i++)
        CHECK(pd_frame_sender_ok(both[i], PD_ROLE_D) && pd_frame_sender_ok(both[i], PD_ROLE_P));
}

/* ---- handshake messages ---- */

static struct pd_hs_hello sample_hello(void)
{
    struct pd_hs_hello h;
    memset(&h, 0, sizeof(h));
    strcpy(h.key_id, "node-a.b_c-1");
    for (int i = 0; i < 32; i++) {
        h.eph_pk[i] = (uint8_t)i;
        h.nonce[i] = (uint8_t)(0x40 + i);
        h.layout.fingerprint[i] = (uint8_t)(0x80 + i);
        h.tag[i] = (uint8_t)(0xc0 + i);
    }
    h.layout = (struct pd_kv_layout){.n_layer = 30, .n_head_kv = 3, .head_dim = 64,
                                     .block_size = 16, .kv_dtype = 1, .block_bytes = 368640};
    memcpy(h.layout.fingerprint, h.nonce, 32);
    return h;
}

static void hello_roundtrips_with_documented_offsets(void)
{
    struct pd_hs_hello h = sample_hello(), g;
    uint8_t b[PD_HS_HELLO_LEN];
    CHECK_EQ_INT(pd_hs_hello_encode(PD_FT_HS_M1, &h, b, sizeof(b), err, sizeof(err)), 0);
    const uint8_t *body = b + PD_FRAME_HDR_LEN;
    CHECK_EQ_INT(body[0], strlen(h.key_id));
    CHECK(memcmp(body + 4, h.key_id, strlen(h.key_id)) == 0);
    CHECK(memcmp(body + 68, h.eph_pk, 32) == 0);
    CHECK(memcmp(body + 100, h.nonce, 32) == 0);
    CHECK_EQ_INT(body[132], 30);
    CHECK_EQ_INT(body[144], 16);
    CHECK(memcmp(body + 164, h.layout.fingerprint, 32) == 0);
    CHECK(memcmp(b + PD_HS_HELLO_TAG_OFF, h.tag, 32) == 0);
    CHECK_EQ_INT(pd_hs_hello_decode(PD_FT_HS_M1, b, sizeof(b), &g, err, sizeof(err)), 0);
    CHECK_STR(g.key_id, h.key_id);
    CHECK(memcmp(&g.layout, &h.layout, sizeof(g.layout)) == 0);
    CHECK(memcmp(g.tag, h.tag, 32) == 0 && memcmp(g.eph_pk, h.eph_pk, 32) == 0);
    CHECK_EQ_INT(g.major, PD_PROTO_MAJOR);
}

/* sample_hello() encoded as an HS_M1 into b */
static void sample_m1(uint8_t b[PD_HS_HELLO_LEN])
{
    struct pd_hs_hello h = sample_hello();
    CHECK_EQ_INT(pd_hs_hello_encode(PD_FT_HS_M1, &h, b, PD_HS_HELLO_LEN, err, sizeof(err)), 0);
}

/* b (len bytes) decoded as an HS_M1: the decoder's return (its reason in err) */
static int m1_decode_rc(const uint8_t *b, size_t len)
{
    struct pd_hs_hello g;
    return pd_hs_hello_decode(PD_FT_HS_M1, b, len, &g, err, sizeof(err));
}

static void hello_of_the_other_type_refused(void)
{
    struct pd_hs_hello h = sample_hello();
    uint8_t b[PD_HS_HELLO_LEN];
    CHECK_EQ_INT(pd_hs_hello_encode(PD_FT_HS_M2, &h, b, sizeof(b), err, sizeof(err)), 0);
    CHECK_EQ_INT(m1_decode_rc(b, sizeof(b)), -EBADMSG);
    CHECK_CONTAINS(err, "expected HS_M1, got HS_M2");
}

static void hello_key_id_rules_enforced(void)
{
    uint8_t b[PD_HS_HELLO_LEN];
    sample_m1(b);
    uint8_t *body = b + PD_FRAME_HDR_LEN;
    body[4 + 60] = 'x'; /* padding after the id */
    CHECK_EQ_INT(m1_decode_rc(b, sizeof(b)), -EBADMSG);
    body[4 + 60] = 0;
    body[4 + 2] = '/';
    CHECK_EQ_INT(m1_decode_rc(b, sizeof(b)), -EBADMSG);
    body[4 + 2] = '\0'; /* a NUL inside the stated length: "no" + "\0" + ... */
    CHECK_EQ_INT(m1_decode_rc(b, sizeof(b)), -EBADMSG);
    body[4 + 2] = 'd';
    body[0] = 0;
    CHECK_EQ_INT(m1_decode_rc(b, sizeof(b)), -EBADMSG);
    body[0] = 65;
    CHECK_EQ_INT(m1_decode_rc(b, sizeof(b)), -EBADMSG);
    CHECK(pd_key_id_valid("a") && !pd_key_id_valid("") && !pd_key_id_valid("a b"));
    char long_id[66];
    memset(long_id, 'k', 65);
    long_id[65] = '\0';
    CHECK(!pd_key_id_valid(long_id));
    long_id[64] = '\0';
    CHECK(pd_key_id_valid(long_id));
}

static void hello_layout_out_of_range_refused(void)
{
    struct pd_hs_hello h = sample_hello();
    uint8_t b[PD_HS_HELLO_LEN];
    h.layout.block_size = 0;
    CHECK_EQ_INT(pd_hs_hello_encode(PD_FT_HS_M1, &h, b, sizeof(b), err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "block_size");
    h = sample_hello();
    CHECK_EQ_INT(pd_hs_hello_encode(PD_FT_HS_M1, &h, b, sizeof(b), err, sizeof(err)), 0);
    b[PD_FRAME_HDR_LEN + 132 + 3] = 0x80; /* n_layer 2^31 + 30 */
    CHECK_EQ_INT(m1_decode_rc(b, sizeof(b)), -EBADMSG);
    CHECK_CONTAINS(err, "n_layer");
}

static void every_truncation_of_a_hello_refused(void)
{
    uint8_t b[PD_HS_HELLO_LEN];
    sample_m1(b);
    for (size_t k = 0; k < sizeof(b); k++)
        CHECK_EQ_INT(m1_decode_rc(b, k), -EBADMSG);
}

static void confirm_roundtrips(void)
{
    uint8_t c[32], got[32], b[PD_HS_CONFIRM_LEN + 1];
    for (int i = 0; i < 32; i++)
        c[i] = (uint8_t)(7 * i);
    CHECK_EQ_INT(pd_hs_confirm_encode(c, b, PD_HS_CONFIRM_LEN - 1, err, sizeof(err)), -ENOBUFS);
    CHECK_EQ_INT(pd_hs_confirm_encode(c, b, sizeof(b), err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_hs_confirm_decode(b, PD_HS_CONFIRM_LEN, got, NULL, err, sizeof(err)), 0);
    CHECK(memcmp(c, got, 32) == 0);
    CHECK_EQ_INT(pd_hs_confirm_decode(b, PD_HS_CONFIRM_LEN + 1, got, NULL, err, sizeof(err)), -EBADMSG);
}

/* UCX_ADDR as documented: token, length, 4 reserved bytes, the address. */
static void ucx_addr_roundtrips_with_documented_layout(void)
{
    uint8_t addr[300], buf[PD_FRAME_HDR_LEN + 16 + 300];
    for (size_t i = 0; i < sizeof(addr); i++)
        addr[i] = (uint8_t)(i * 13 + 1);
    struct pd_frame f = {.type = PD_FT_UCX_ADDR}, g;
    f.u.ucx_addr = (struct pd_ucx_addr){.token = 0x1122334455667788ull, .len = 300, .addr = addr};
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 5, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT((int)n, PD_FRAME_HDR_LEN + 16 + 300);
    CHECK_EQ_INT(buf[PD_FRAME_HDR_LEN], 0x88);  /* token, little-endian */
    CHECK_EQ_INT(buf[PD_FRAME_HDR_LEN + 8], 300 & 0xff);
    CHECK_EQ_INT(buf[PD_FRAME_HDR_LEN + 9], 300 >> 8);
    CHECK(memcmp(buf + PD_FRAME_HDR_LEN + 16, addr, 300) == 0);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    CHECK_EQ_INT(g.type, PD_FT_UCX_ADDR);
    CHECK(g.u.ucx_addr.token == f.u.ucx_addr.token);
    CHECK_EQ_INT(g.u.ucx_addr.len, 300);
    CHECK(memcmp(g.u.ucx_addr.addr, addr, 300) == 0);
    CHECK(pd_frame_sender_ok(PD_FT_UCX_ADDR, PD_ROLE_D) && pd_frame_sender_ok(PD_FT_UCX_ADDR, PD_ROLE_P));
    CHECK(pd_frame_type_sealed(PD_FT_UCX_ADDR));
}

static void ucx_addr_token_length_and_reserved_checked(void)
{
    uint8_t addr[8] = {1, 2, 3, 4, 5, 6, 7, 8}, buf[PD_FRAME_HDR_LEN + 16 + 8];
    struct pd_frame f = {.type = PD_FT_UCX_ADDR};
    f.u.ucx_addr = (struct pd_ucx_addr){.token = 0, .len = 8, .addr = addr};
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), -EINVAL);
    f.u.ucx_addr.len = PD_PROTO_MAX_UCX_ADDR + 1;
    f.u.ucx_addr.token = 9;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), -E2BIG);
    f.u.ucx_addr.len = 8;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    buf[PD_FRAME_HDR_LEN + 12] = 1; /* reserved */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "reserved");
    buf[PD_FRAME_HDR_LEN + 12] = 0;
    buf[PD_FRAME_HDR_LEN + 8] = 9; /* the length says more than the body holds */
    REFUSED(buf, n, -EBADMSG);
    buf[PD_FRAME_HDR_LEN + 8] = 8;
    memset(buf + PD_FRAME_HDR_LEN, 0, 8); /* token 0 */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "token");
}

static void ready_roundtrips_and_only_prefilld_sends_it(void)
{
    uint8_t buf[PD_FRAME_HDR_LEN + 8];
    struct pd_frame f = {.type = PD_FT_READY}, g;
    f.u.ready.token = 77;
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 2, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    CHECK(g.type == PD_FT_READY && g.u.ready.token == 77);
    CHECK(pd_frame_sender_ok(PD_FT_READY, PD_ROLE_P) && !pd_frame_sender_ok(PD_FT_READY, PD_ROLE_D));
    memset(buf + PD_FRAME_HDR_LEN, 0, 8);
    REFUSED(buf, n, -EBADMSG);
}

/* ---- minor 1: PREFILL's prefix part, PROGRESS ---- */

/* Body offsets of the prefix part (docs/internals/proto.md). */
#define PREFILL_FIXED_LEN 68
#define PFX_SALT 68
#define PFX_N_CACHED 100
#define PFX_RESERVED 104
#define PFX_NAME 108
#define PFX_TOKENS 140

static void prefill_prefix_roundtrip(void)
{
    uint8_t tags[48], buf[4096];
    struct pd_frame f = expected("prefill_prefix", tags), g;
    f.u.prefill.n_cached = 1; /* differs from the golden: 16 cached, 24 sent */
    f.u.prefill.n_blocks = 2;
    f.u.prefill.cached_name[31] = 0x5c;
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 3, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + PFX_TOKENS + 4 * 40 + strlen("req-prefix-2"));
    const uint8_t *b = buf + PD_FRAME_HDR_LEN;
    CHECK(memcmp(b + PFX_SALT, f.u.prefill.salt, PD_PREFIX_NAME_LEN) == 0);
    CHECK_EQ_INT(b[PFX_N_CACHED], 1);
    CHECK(b[PFX_RESERVED] == 0 && b[PFX_RESERVED + 1] == 0 && b[PFX_RESERVED + 2] == 0 &&
          b[PFX_RESERVED + 3] == 0);
    CHECK(memcmp(b + PFX_NAME, f.u.prefill.cached_name, PD_PREFIX_NAME_LEN) == 0);
    CHECK_EQ_INT(b[PFX_TOKENS], 3); /* the first token, (0 * 7919 + 3) */
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
}

static void prefill_cached_without_flag_refused_on_encode(void)
{
    uint8_t tags[48];
    struct pd_frame f = expected("prefill_prefix", tags);
    f.u.prefill.flags = 0; /* n_cached 2 stays */
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "without the prefix part");
    f.u.prefill.n_cached = 0;
    f.u.prefill.n_blocks = 3;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL); /* the salt and name are still set */
    memset(f.u.prefill.salt, 0, sizeof(f.u.prefill.salt));
    memset(f.u.prefill.cached_name, 0, sizeof(f.u.prefill.cached_name));
    CHECK_EQ_INT(encode_rc(&f), 0);
}

static void prefill_name_without_cached_blocks_refused(void)
{
    uint8_t tags[48];
    struct pd_frame f = expected("prefill_prefix", tags);
    f.u.prefill.n_cached = 0;
    f.u.prefill.n_blocks = 3;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "name without cached blocks");
    memset(f.u.prefill.cached_name, 0, sizeof(f.u.prefill.cached_name));
    CHECK_EQ_INT(encode_rc(&f), 0); /* a salt alone is a prefix part with nothing cached */
}

/* The block holding the last token is always computed: n_cached * block_size < n_tokens. */
static void prefill_cached_covering_all_tokens_refused(void)
{
    uint8_t tags[48], buf[4096];
    struct pd_frame f = expected("prefill_prefix", tags);
    f.u.prefill.n_tokens = 32; /* exactly the 2 cached blocks */
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "leave none");
    f.u.prefill.n_tokens = 33;
    CHECK_EQ_INT(encode_rc(&f), 0);
    /* on the wire: 3 cached blocks of 16 cover all 40; 2^28 of 16 wraps a u32 to 0 */
    const uint8_t bad[][4] = {{3, 0, 0, 0}, {0, 0, 0, 0x10}};
    for (size_t i = 0; i < 2; i++) {
        size_t n = golden("prefill_prefix", buf, sizeof(buf));
        memcpy(buf + PD_FRAME_HDR_LEN + PFX_N_CACHED, bad[i], 4);
        REFUSED(buf, n, -EBADMSG);
        CHECK_CONTAINS(err, "leave none");
    }
}

static void prefill_prefix_too_few_blocks_refused(void)
{
    uint8_t tags[48], buf[4096];
    struct pd_frame f = expected("prefill_prefix", tags);
    f.u.prefill.n_cached = 1; /* 40 tokens of 16: 3 blocks, 1 cached, 2 to grant */
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "cannot hold");
    f.u.prefill.n_blocks = 2;
    CHECK_EQ_INT(encode_rc(&f), 0);
    size_t n = golden("prefill_prefix", buf, sizeof(buf));
    memset(buf + PD_FRAME_HDR_LEN + 16, 0, 4); /* n_blocks 0 */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "cannot hold");
}

/* Each of a golden's reserved body bytes [off, off + len) set alone: refused. */
static void reserved_refused(const char *name, size_t off, size_t len)
{
    for (size_t k = off; k < off + len; k++) {
        uint8_t buf[4096];
        size_t n = golden(name, buf, sizeof(buf));
        buf[PD_FRAME_HDR_LEN + k] = 0x80;
        REFUSED(buf, n, -EBADMSG);
        CHECK_CONTAINS(err, "reserved");
    }
}

static void prefill_prefix_reserved_nonzero_refused(void)
{
    reserved_refused("prefill_prefix", PFX_RESERVED, 4);
}

/* The header's length ends inside the prefix part: no field is read past it. */
static void prefill_prefix_truncated_refused(void)
{
    uint8_t buf[4096];
    size_t n = golden("prefill_prefix", buf, sizeof(buf));
    struct pd_frame_hdr h;
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
    buf[PD_FRAME_HDR_LEN + 16] = 3; /* blocks for all 40 tokens: only the length can fail */
    /* from the shortest PREFILL the header admits (one token, a 1-byte id) */
    for (size_t body = PREFILL_FIXED_LEN + 4 + 1; body < PFX_TOKENS; body++) {
        struct pd_frame f;
        h.len = (uint32_t)body;
        pd_frame_hdr_encode(&h, buf);
        uint8_t *cut = malloc(PD_FRAME_HDR_LEN + body); /* exact, for ASan */
        memcpy(cut, buf, PD_FRAME_HDR_LEN + body);
        int rc = pd_frame_decode(cut, PD_FRAME_HDR_LEN + body, &f, err, sizeof(err));
        free(cut);
        if (rc != -EBADMSG || !strstr(err, "counts make it"))
            PD_TEST_FAIL_("body cut to %zu bytes: rc %d (%s)", body, rc, err);
    }
}

static void progress_roundtrip(void)
{
    uint8_t tags[48], buf[PD_FRAME_HDR_LEN + 24];
    struct pd_frame f = expected("progress", tags), g;
    f.u.progress = (struct pd_progress){.request_id = 0x1112131415161718ull, .epoch = 0x21222324,
                                        .state = PD_PROGRESS_QUEUED, .tokens_done = 0,
                                        .n_tokens = PD_PROTO_MAX_TOKENS};
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 4, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + 24);
    static const uint8_t want[24] = {
        0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11, 0x24, 0x23, 0x22, 0x21,
        PD_PROGRESS_QUEUED, 0, 0, 0, 0, 0, 0, 0,
        PD_PROTO_MAX_TOKENS & 0xff, (PD_PROTO_MAX_TOKENS >> 8) & 0xff,
        (PD_PROTO_MAX_TOKENS >> 16) & 0xff, (PD_PROTO_MAX_TOKENS >> 24) & 0xff,
    };
    CHECK(memcmp(buf + PD_FRAME_HDR_LEN, want, 24) == 0);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    CHECK(pd_frame_type_known(PD_FT_PROGRESS) && pd_frame_type_sealed(PD_FT_PROGRESS));
    CHECK_STR(pd_frame_type_name(PD_FT_PROGRESS), "PROGRESS");
}

static void progress_bad_state_refused(void)
{
    uint8_t tags[48], buf[256];
    const uint16_t bad[] = {0, 3, 0xffff};
    for (size_t i = 0; i < 3; i++) {
        struct pd_frame f = expected("progress", tags);
        f.u.progress.state = bad[i];
        CHECK_EQ_INT(encode_rc(&f), -EINVAL);
        CHECK_CONTAINS(err, "state");
        size_t n = golden("progress", buf, sizeof(buf));
        buf[PD_FRAME_HDR_LEN + 12] = (uint8_t)bad[i];
        buf[PD_FRAME_HDR_LEN + 13] = (uint8_t)(bad[i] >> 8);
        REFUSED(buf, n, -EBADMSG);
        CHECK_CONTAINS(err, "state");
    }
}

static void progress_done_over_total_refused(void)
{
    uint8_t tags[48], buf[256];
    struct pd_frame f = expected("progress", tags);
    f.u.progress.tokens_done = 41;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "tokens done");
    f.u.progress.tokens_done = 40; /* all of them: legitimate */
    CHECK_EQ_INT(encode_rc(&f), 0);
    size_t n = golden("progress", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN + 16] = 41;
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "tokens done");
}

static void progress_reserved_nonzero_refused(void) { reserved_refused("progress", 14, 2); }

static void progress_from_d_not_allowed(void)
{
    CHECK(pd_frame_sender_ok(PD_FT_PROGRESS, PD_ROLE_P));
    CHECK(!pd_frame_sender_ok(PD_FT_PROGRESS, PD_ROLE_D));
}

/* ---- minor 2: PREFILL's bias part ---- */

/* Body offsets of the bias part after the prefix part (prefill_bias.bin),
 * and of one without it (flags PD_PREFILL_F_BIAS alone). */
#define BIAS_N 140
#define BIAS_RESERVED 144
#define BIAS_ENTRIES 148
#define BIAS_TOKENS 172 /* 3 entries of 8 */
#define BIAS_ONLY_N 68
#define BIAS_ONLY_ENTRIES 76

static void put_le32(uint8_t *b, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *b)
{
    return b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void put_lef32(uint8_t *b, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    put_le32(b, u);
}

static void prefill_bias_golden_decodes_every_field(void)
{
    uint8_t buf[4096];
    size_t n = golden("prefill_bias", buf, sizeof(buf));
    struct pd_frame f;
    struct pd_frame_hdr h;
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + BIAS_TOKENS + 4 * 3 + strlen("req-bias-3"));
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
    CHECK_EQ_INT(h.major, 1);
    CHECK_EQ_INT(h.minor, 2);
    CHECK_EQ_INT(PD_PROTO_MINOR, 2);
    CHECK_EQ_INT(h.type, PD_FT_PREFILL);
    CHECK(h.seq == 12);
    if (pd_frame_decode(buf, n, &f, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("prefill_bias: %s", err);
    const struct pd_prefill *p = &f.u.prefill;
    CHECK_EQ_INT(f.type, PD_FT_PREFILL);
    CHECK(p->request_id == REQ);
    CHECK_EQ_INT(p->epoch, EPOCH);
    CHECK_EQ_INT(p->n_tokens, 3);
    CHECK_EQ_INT(p->n_blocks, 1);
    CHECK_EQ_INT(p->block_size, 16);
    CHECK(p->temperature == 0.0f && p->top_p == 1.0f && p->min_p == 0.0f);
    CHECK_EQ_INT(p->top_k, 0);
    CHECK(p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f);
    CHECK(p->repetition_penalty == 1.0f);
    CHECK_EQ_INT(p->n_logprobs, 2);
    CHECK(p->seed == 9);
    CHECK_EQ_INT(p->flags, 0x0006);
    CHECK_EQ_INT(p->flags, PD_PREFILL_F_PREFIX | PD_PREFILL_F_BIAS);
    static const uint8_t zero[PD_PREFIX_NAME_LEN];
    CHECK(memcmp(p->salt, zero, sizeof(zero)) == 0);
    CHECK_EQ_INT(p->n_cached, 0);
    CHECK(memcmp(p->cached_name, zero, sizeof(zero)) == 0);
    /* the entries: a view of the input, read through pd_prefill_bias */
    CHECK_EQ_INT(p->n_bias, 3);
    CHECK(p->bias == NULL);
    CHECK(p->bias_le == buf + PD_FRAME_HDR_LEN + BIAS_ENTRIES);
    const struct pd_bias b0 = pd_prefill_bias(p, 0), b1 = pd_prefill_bias(p, 1),
                         b2 = pd_prefill_bias(p, 2);
    CHECK_EQ_INT(b0.token, 42);
    CHECK(b0.bias == -100.0f);
    CHECK_EQ_INT(b1.token, 7);
    CHECK(b1.bias == 2.5f);
    CHECK_EQ_INT(b2.token, 128000);
    CHECK(b2.bias == 100.0f);
    /* the tokens follow the bias part */
    CHECK(p->tokens == NULL && p->tokens_le == buf + PD_FRAME_HDR_LEN + BIAS_TOKENS);
    for (uint32_t i = 0; i < 3; i++)
        CHECK_EQ_INT(pd_prefill_token(p, i), 5 + i);
    CHECK_STR(p->xrid, "req-bias-3");
}

static void prefill_bias_golden_reencodes_byte_identical(void)
{
    uint8_t buf[4096], out[4096], tags[48];
    size_t n = golden("prefill_bias", buf, sizeof(buf)), m = 0;
    struct pd_frame want = expected("prefill_bias", tags), got;
    CHECK_EQ_INT(pd_frame_encode(&want, 12, out, sizeof(out), &m, err, sizeof(err)), 0);
    CHECK_EQ_INT(m, n);
    CHECK(memcmp(out, buf, n) == 0);
    CHECK_EQ_INT(pd_frame_body_len(&want), n - PD_FRAME_HDR_LEN);
    /* and from the decoder's view of the entries */
    CHECK_EQ_INT(pd_frame_decode(buf, n, &got, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_body_len(&got), n - PD_FRAME_HDR_LEN);
    CHECK_EQ_INT(pd_frame_encode(&got, 12, out, sizeof(out), &m, err, sizeof(err)), 0);
    CHECK(m == n && memcmp(out, buf, n) == 0);
}

/* PD_PREFILL_F_BIAS without the prefix part: the bias part right after the
 * fixed fields, the tokens after it */
static void prefill_bias_without_prefix_roundtrip(void)
{
    uint8_t tags[48], buf[4096];
    static const struct pd_bias e[2] = {{128255, -0.5f}, {0, 99.75f}};
    struct pd_frame f = prefill_base(tags), g;
    f.u.prefill.flags = PD_PREFILL_F_NO_EOS | PD_PREFILL_F_BIAS;
    f.u.prefill.n_bias = 2;
    f.u.prefill.bias = e;
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 3, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + BIAS_ONLY_ENTRIES + 8 * 2 + 4 * 5 + strlen("req-7f3a9c"));
    const uint8_t *b = buf + PD_FRAME_HDR_LEN;
    CHECK_EQ_INT(get_le32(b + 66) & 0xffff, PD_PREFILL_F_NO_EOS | PD_PREFILL_F_BIAS);
    CHECK_EQ_INT(get_le32(b + BIAS_ONLY_N), 2);
    CHECK_EQ_INT(get_le32(b + BIAS_ONLY_N + 4), 0);
    CHECK_EQ_INT(get_le32(b + BIAS_ONLY_ENTRIES), 128255);
    CHECK_EQ_INT(get_le32(b + BIAS_ONLY_ENTRIES + 4), 0xbf000000); /* -0.5f */
    CHECK_EQ_INT(get_le32(b + BIAS_ONLY_ENTRIES + 8), 0);
    float v;
    uint32_t u = get_le32(b + BIAS_ONLY_ENTRIES + 12);
    memcpy(&v, &u, 4);
    CHECK(v == 99.75f);
    CHECK_EQ_INT(get_le32(b + BIAS_ONLY_ENTRIES + 16), prefill_tokens[0]);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    CHECK(g.u.prefill.bias_le == b + BIAS_ONLY_ENTRIES);
}

/* 300 entries (the cap) travel; one more does not */
static void prefill_bias_at_the_cap_roundtrips(void)
{
    uint8_t tags[48];
    static uint8_t buf[PD_FRAME_HDR_LEN + 4096];
    static struct pd_bias e[PD_PROTO_MAX_BIAS + 1];
    for (uint32_t i = 0; i <= PD_PROTO_MAX_BIAS; i++)
        e[i] = (struct pd_bias){.token = i * 427u % 128256u, .bias = (float)i / 3.0f - 50.0f};
    struct pd_frame f = expected("prefill_bias", tags), g;
    f.u.prefill.bias = e;
    f.u.prefill.n_bias = PD_PROTO_MAX_BIAS;
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + BIAS_ENTRIES + 8 * PD_PROTO_MAX_BIAS + 4 * 3 +
                        strlen("req-bias-3"));
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    f.u.prefill.n_bias = PD_PROTO_MAX_BIAS + 1;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), -E2BIG);
    CHECK_CONTAINS(err, "bias entries");
}

static void prefill_bias_value_out_of_range_refused_on_the_wire(void)
{
    const float bad[] = {100.5f, -100.5f, 1e30f, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        for (uint32_t k = 0; k < 3; k++) { /* in each of the three entries */
            uint8_t buf[4096];
            size_t n = golden("prefill_bias", buf, sizeof(buf));
            put_lef32(buf + PD_FRAME_HDR_LEN + BIAS_ENTRIES + 8 * k + 4, bad[i]);
            REFUSED(buf, n, -EBADMSG);
            CHECK_CONTAINS(err, "bias");
            CHECK_CONTAINS(err, "outside [-100, 100]");
        }
    /* the smallest step past 100 is refused; 100 itself (the golden's) is not */
    uint8_t buf[4096];
    size_t n = golden("prefill_bias", buf, sizeof(buf));
    put_lef32(buf + PD_FRAME_HDR_LEN + BIAS_ENTRIES + 16 + 4, nextafterf(100.0f, 200.0f));
    REFUSED(buf, n, -EBADMSG);
    put_lef32(buf + PD_FRAME_HDR_LEN + BIAS_ENTRIES + 16 + 4, -100.0f);
    struct pd_frame f;
    CHECK_EQ_INT(pd_frame_decode(buf, n, &f, err, sizeof(err)), 0);
    CHECK(pd_prefill_bias(&f.u.prefill, 2).bias == -100.0f);
}

static void prefill_bias_count_zero_or_over_cap_refused_on_the_wire(void)
{
    uint8_t buf[4096];
    size_t n = golden("prefill_bias", buf, sizeof(buf));
    put_le32(buf + PD_FRAME_HDR_LEN + BIAS_N, 0); /* the flag with no entries */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "0 bias entries");
    /* over the cap: refused as too large, and no entry is read past the body */
    const uint32_t big[] = {PD_PROTO_MAX_BIAS + 1, 0x10000000u, UINT32_MAX};
    for (size_t i = 0; i < sizeof(big) / sizeof(*big); i++) {
        put_le32(buf + PD_FRAME_HDR_LEN + BIAS_N, big[i]);
        REFUSED(buf, n, -E2BIG);
        CHECK_CONTAINS(err, "bias entries");
    }
    /* a count the body does not hold, either way */
    const uint32_t wrong[] = {2, 4, PD_PROTO_MAX_BIAS};
    for (size_t i = 0; i < sizeof(wrong) / sizeof(*wrong); i++) {
        put_le32(buf + PD_FRAME_HDR_LEN + BIAS_N, wrong[i]);
        REFUSED(buf, n, -EBADMSG);
        CHECK_CONTAINS(err, "counts make it");
    }
}

static void prefill_bias_reserved_nonzero_refused(void)
{
    reserved_refused("prefill_bias", BIAS_RESERVED, 4);
}

/* A PREFILL of n bytes (header h) with its body cut at every length from
 * the shortest the header admits: each refused on its length, "end before
 * the <part> part" while the cut is before `part_at` (exact copies, for ASan). */
static void prefill_cuts_refused(uint8_t *buf, size_t n, struct pd_frame_hdr *h,
                                 const char *part, size_t part_at)
{
    char before[64];
    snprintf(before, sizeof(before), "end before the %s part", part);
    for (size_t body = PREFILL_FIXED_LEN + 4 + 1; body < n - PD_FRAME_HDR_LEN; body++) {
        struct pd_frame f;
        h->len = (uint32_t)body;
        pd_frame_hdr_encode(h, buf);
        uint8_t *cut = malloc(PD_FRAME_HDR_LEN + body);
        memcpy(cut, buf, PD_FRAME_HDR_LEN + body);
        int rc = pd_frame_decode(cut, PD_FRAME_HDR_LEN + body, &f, err, sizeof(err));
        free(cut);
        if (rc != -EBADMSG || (!strstr(err, "counts make it") && !strstr(err, before)))
            PD_TEST_FAIL_("body cut to %zu bytes: rc %d (%s)", body, rc, err);
        if (body < part_at)
            CHECK_CONTAINS(err, before);
    }
}

/* The header's length ends before or inside the bias part: refused on the
 * length, no field read past it (exact copies, for ASan). */
static void prefill_bias_truncated_refused(void)
{
    uint8_t buf[4096];
    size_t n = golden("prefill_bias", buf, sizeof(buf));
    struct pd_frame_hdr h;
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
    prefill_cuts_refused(buf, n, &h, "bias", BIAS_ENTRIES);
    /* the same without the prefix part: the bias part's head at 68 */
    uint8_t tags[48], whole[4096];
    static const struct pd_bias e[1] = {{3, 1.0f}};
    struct pd_frame f = prefill_base(tags);
    f.u.prefill.flags = PD_PREFILL_F_BIAS;
    f.u.prefill.n_bias = 1;
    f.u.prefill.bias = e;
    size_t m = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, whole, sizeof(whole), &m, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_hdr_decode(whole, m, &h, err, sizeof(err)), 0);
    for (size_t body = PREFILL_FIXED_LEN + 4 + 1; body < m - PD_FRAME_HDR_LEN; body++) {
        struct pd_frame g;
        h.len = (uint32_t)body;
        pd_frame_hdr_encode(&h, whole);
        uint8_t *cut = malloc(PD_FRAME_HDR_LEN + body);
        memcpy(cut, whole, PD_FRAME_HDR_LEN + body);
        int rc = pd_frame_decode(cut, PD_FRAME_HDR_LEN + body, &g, err, sizeof(err));
        free(cut);
        if (rc != -EBADMSG)
            PD_TEST_FAIL_("without the prefix part, body cut to %zu bytes: rc %d (%s)", body, rc,
                          err);
        if (body < BIAS_ONLY_ENTRIES)
            CHECK_CONTAINS(err, "end before the bias part");
    }
}

static void prefill_bias_encoder_refusals(void)
{
    uint8_t tags[48];
    /* a value out of range, or not a number */
    const float bad[] = {100.5f, -101.0f, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        struct pd_bias e[3] = {{42, -100.0f}, {7, bad[i]}, {128000, 100.0f}};
        struct pd_frame f = expected("prefill_bias", tags);
        f.u.prefill.bias = e;
        CHECK_EQ_INT(encode_rc(&f), -EINVAL);
        CHECK_CONTAINS(err, "bias");
    }
    /* the flag with no entries */
    struct pd_frame f = expected("prefill_bias", tags);
    f.u.prefill.n_bias = 0;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "bias entries");
    /* over the cap */
    f = expected("prefill_bias", tags);
    f.u.prefill.n_bias = PD_PROTO_MAX_BIAS + 1;
    CHECK_EQ_INT(encode_rc(&f), -E2BIG);
    /* entries without the flag */
    f = expected("prefill_bias", tags);
    f.u.prefill.flags = PD_PREFILL_F_PREFIX;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "without the bias part");
    f = prefill_base(tags);
    f.u.prefill.n_bias = 1;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    /* the flag with a count and no entries to read */
    f = expected("prefill_bias", tags);
    f.u.prefill.bias = NULL;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "no bias entries given");
    /* and what the decoder accepts, the encoder does */
    f = expected("prefill_bias", tags);
    CHECK_EQ_INT(encode_rc(&f), 0);
}

/* ---- minor 2: prompt log-probabilities (PD_PREFILL_F_PROMPT_LP, PROMPT_LP) ---- */

/* Body offsets of PROMPT_LP (prompt_lp.bin: 2 rows of 2 alternatives, 20 bytes each) */
#define PLP_FIRST 12
#define PLP_N_ROWS 16
#define PLP_N_TOP 20
#define PLP_ROWS 24
#define PLP_ROW_LEN 20

static float get_lef32(const uint8_t *b)
{
    uint32_t u = get_le32(b);
    float v;
    memcpy(&v, &u, 4);
    return v;
}

static void prompt_lp_golden_decodes_every_field(void)
{
    uint8_t buf[4096];
    size_t n = golden("prompt_lp", buf, sizeof(buf));
    struct pd_frame f;
    struct pd_frame_hdr h;
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + PLP_ROWS + 2 * PLP_ROW_LEN);
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
    CHECK_EQ_INT(h.major, 1);
    CHECK_EQ_INT(h.minor, 2);
    CHECK_EQ_INT(h.type, PD_FT_PROMPT_LP);
    CHECK_EQ_INT(PD_FT_PROMPT_LP, 28);
    CHECK_EQ_INT(h.len, PLP_ROWS + 2 * PLP_ROW_LEN);
    CHECK(h.seq == 13);
    if (pd_frame_decode(buf, n, &f, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("prompt_lp: %s", err);
    const struct pd_prompt_lp *p = &f.u.prompt_lp;
    CHECK_EQ_INT(f.type, PD_FT_PROMPT_LP);
    CHECK(p->request_id == REQ);
    CHECK_EQ_INT(p->epoch, EPOCH);
    CHECK_EQ_INT(p->first, 3);
    CHECK_EQ_INT(p->n_rows, 2);
    CHECK_EQ_INT(p->n_top, 2);
    /* the rows: a view of the input, read through pd_prompt_lp_row */
    CHECK(p->rows == NULL);
    CHECK(p->rows_le == buf + PD_FRAME_HDR_LEN + PLP_ROWS);
    struct pd_lp_row r0, r1;
    pd_prompt_lp_row(p, 0, &r0);
    pd_prompt_lp_row(p, 1, &r1);
    CHECK(r0.logprob == -1.5f);
    CHECK(r0.top[0].token == 791 && r0.top[0].logprob == -0.125f);
    CHECK(r0.top[1].token == 578 && r0.top[1].logprob == -2.5f);
    CHECK(r1.logprob == -3.25f);
    CHECK(r1.top[0].token == 128000 && r1.top[0].logprob == -0.0625f);
    CHECK(r1.top[1].token == 7 && isinf(r1.top[1].logprob) && r1.top[1].logprob < 0);
    /* the layout as documented: request id, epoch, first, n_rows, n_top, rows */
    const uint8_t *b = buf + PD_FRAME_HDR_LEN;
    CHECK_EQ_INT(get_le32(b + PLP_FIRST), 3);
    CHECK_EQ_INT(get_le32(b + PLP_N_ROWS), 2);
    CHECK_EQ_INT(get_le32(b + PLP_N_TOP), 2);
    CHECK(get_lef32(b + PLP_ROWS + PLP_ROW_LEN) == -3.25f);
    CHECK_EQ_INT(get_le32(b + PLP_ROWS + PLP_ROW_LEN + 4), 128000);
    CHECK(pd_frame_type_known(PD_FT_PROMPT_LP) && pd_frame_type_sealed(PD_FT_PROMPT_LP));
    CHECK_STR(pd_frame_type_name(PD_FT_PROMPT_LP), "PROMPT_LP");
}

static void prompt_lp_golden_reencodes_byte_identical(void)
{
    uint8_t buf[4096], out[4096], tags[48];
    size_t n = golden("prompt_lp", buf, sizeof(buf)), m = 0;
    struct pd_frame want = expected("prompt_lp", tags), got;
    CHECK_EQ_INT(pd_frame_encode(&want, 13, out, sizeof(out), &m, err, sizeof(err)), 0);
    CHECK_EQ_INT(m, n);
    CHECK(memcmp(out, buf, n) == 0);
    CHECK_EQ_INT(pd_frame_body_len(&want), n - PD_FRAME_HDR_LEN);
    /* and from the decoder's view of the rows */
    CHECK_EQ_INT(pd_frame_decode(buf, n, &got, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_body_len(&got), n - PD_FRAME_HDR_LEN);
    CHECK_EQ_INT(pd_frame_encode(&got, 13, out, sizeof(out), &m, err, sizeof(err)), 0);
    CHECK(m == n && memcmp(out, buf, n) == 0);
}

/* 1024 rows of 20 alternatives (168 KiB, the largest PROMPT_LP), ending at
 * the last prompt position the protocol has, travel; rows without
 * alternatives are 4 bytes each */
static void prompt_lp_at_the_caps_roundtrips(void)
{
    enum { ROWS = PD_PROTO_MAX_LP_ROWS, TOP = PD_PROTO_MAX_LOGPROBS };
    static struct pd_lp_row rows[ROWS];
    static uint8_t buf[PD_FRAME_HDR_LEN + 24 + ROWS * (4 + 8 * TOP)];
    for (uint32_t i = 0; i < ROWS; i++) {
        rows[i].logprob = -(float)i / 8.0f;
        for (uint32_t k = 0; k < TOP; k++)
            rows[i].top[k] = (struct pd_logprob){.token = (i * 31u + k) % 128256u,
                                                 .logprob = -(float)k - (float)i / 1024.0f};
    }
    struct pd_frame f = {.type = PD_FT_PROMPT_LP}, g;
    f.u.prompt_lp = (struct pd_prompt_lp){.request_id = REQ, .epoch = 9,
                                          .first = PD_PROTO_MAX_TOKENS - ROWS, .n_rows = ROWS,
                                          .n_top = TOP, .rows = rows};
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, sizeof(buf));
    CHECK_EQ_INT(n - PD_FRAME_HDR_LEN, 167960); /* 24 + 1024 x 164: proto.md's 168 KiB */
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    struct pd_lp_row last;
    pd_prompt_lp_row(&g.u.prompt_lp, ROWS - 1, &last);
    CHECK(last.logprob == -1023.0f / 8.0f);
    CHECK(last.top[TOP - 1].token == (1023u * 31u + 19u) % 128256u);
    /* one position further runs past the protocol's prompt */
    f.u.prompt_lp.first++;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "outside");
    /* no alternatives: the smallest frame, one row of 4 bytes */
    f.u.prompt_lp.first = 1;
    f.u.prompt_lp.n_rows = 1;
    f.u.prompt_lp.n_top = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + 28);
    CHECK(get_lef32(buf + PD_FRAME_HDR_LEN + PLP_ROWS) == 0.0f);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
}

/* The counts on the wire: no rows, more than 1024, more than 20
 * alternatives, position 0, positions past the protocol's prompt, and counts
 * the body does not hold, either way */
static void prompt_lp_counts_refused_on_the_wire(void)
{
    static const struct {
        size_t off;
        uint32_t v;
        int rc;
        const char *msg;
    } cases[] = {
        {PLP_N_ROWS, 0, -EBADMSG, "0 rows is outside 1..1024"},
        {PLP_N_ROWS, PD_PROTO_MAX_LP_ROWS + 1, -E2BIG, "1025 rows is outside 1..1024"},
        {PLP_N_ROWS, UINT32_MAX, -E2BIG, "rows"},
        {PLP_N_TOP, PD_PROTO_MAX_LOGPROBS + 1, -E2BIG, "21 alternatives"},
        {PLP_N_TOP, UINT32_MAX, -E2BIG, "alternatives"},
        {PLP_FIRST, 0, -EBADMSG, "outside 1.."},
        {PLP_FIRST, PD_PROTO_MAX_TOKENS - 1, -EBADMSG, "outside 1.."}, /* + 2 rows */
        {PLP_FIRST, UINT32_MAX, -EBADMSG, "outside 1.."},
        {PLP_N_ROWS, 1, -EBADMSG, "counts make it"},
        {PLP_N_ROWS, 3, -EBADMSG, "counts make it"},
        {PLP_N_ROWS, PD_PROTO_MAX_LP_ROWS, -EBADMSG, "counts make it"},
        {PLP_N_TOP, 0, -EBADMSG, "counts make it"},
        {PLP_N_TOP, 1, -EBADMSG, "counts make it"},
        {PLP_N_TOP, 3, -EBADMSG, "counts make it"},
        {PLP_N_TOP, PD_PROTO_MAX_LOGPROBS, -EBADMSG, "counts make it"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        uint8_t buf[4096];
        size_t n = golden("prompt_lp", buf, sizeof(buf));
        put_le32(buf + PD_FRAME_HDR_LEN + cases[i].off, cases[i].v);
        struct pd_frame f;
        int rc = pd_frame_decode(buf, n, &f, err, sizeof(err));
        if (rc != cases[i].rc || !strstr(err, cases[i].msg))
            PD_TEST_FAIL_("field at %zu = %u: rc %d (%s), want %d \"%s\"", cases[i].off,
                          cases[i].v, rc, err, cases[i].rc, cases[i].msg);
    }
    /* the last position the protocol has, and the first, are fine */
    uint8_t buf[4096];
    size_t n = golden("prompt_lp", buf, sizeof(buf));
    struct pd_frame f;
    put_le32(buf + PD_FRAME_HDR_LEN + PLP_FIRST, PD_PROTO_MAX_TOKENS - 2);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &f, err, sizeof(err)), 0);
    put_le32(buf + PD_FRAME_HDR_LEN + PLP_FIRST, 1);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &f, err, sizeof(err)), 0);
    CHECK_EQ_INT(f.u.prompt_lp.first, 1);
}

/* Every log-probability in every row -- the row's own and each
 * alternative's -- must be <= 0 and not NaN; -inf and -0 are log-probabilities */
static void prompt_lp_value_not_a_log_probability_refused_on_the_wire(void)
{
    static const size_t slots[] = {0, 8, 16, PLP_ROW_LEN, PLP_ROW_LEN + 8, PLP_ROW_LEN + 16};
    const float bad[] = {0.5f, 1e-45f /* the smallest positive */, INFINITY, NAN, -NAN};
    for (size_t s = 0; s < sizeof(slots) / sizeof(*slots); s++) {
        for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
            uint8_t buf[4096];
            size_t n = golden("prompt_lp", buf, sizeof(buf));
            put_lef32(buf + PD_FRAME_HDR_LEN + PLP_ROWS + slots[s], bad[i]);
            REFUSED(buf, n, -EBADMSG);
            CHECK_CONTAINS(err, "not a log-probability");
            CHECK_CONTAINS(err, slots[s] < PLP_ROW_LEN ? "row 3" : "row 4");
        }
        const float ok[] = {0.0f, -0.0f, -INFINITY, -1e30f};
        for (size_t i = 0; i < sizeof(ok) / sizeof(*ok); i++) {
            uint8_t buf[4096];
            size_t n = golden("prompt_lp", buf, sizeof(buf));
            put_lef32(buf + PD_FRAME_HDR_LEN + PLP_ROWS + slots[s], ok[i]);
            struct pd_frame f;
            if (pd_frame_decode(buf, n, &f, err, sizeof(err)) < 0)
                PD_TEST_FAIL_("slot %zu = %g refused: %s", slots[s], (double)ok[i], err);
        }
    }
    /* a token is any u32 on the wire: the receiver checks it against its vocabulary */
    uint8_t buf[4096];
    size_t n = golden("prompt_lp", buf, sizeof(buf));
    put_le32(buf + PD_FRAME_HDR_LEN + PLP_ROWS + 4, UINT32_MAX);
    struct pd_frame f;
    CHECK_EQ_INT(pd_frame_decode(buf, n, &f, err, sizeof(err)), 0);
    struct pd_lp_row r;
    pd_prompt_lp_row(&f.u.prompt_lp, 0, &r);
    CHECK(r.top[0].token == UINT32_MAX);
}

/* The header's length cut anywhere inside the rows, or one byte long:
 * refused on the length, no row read past it (exact copies, for ASan) */
static void prompt_lp_truncated_or_padded_refused(void)
{
    uint8_t buf[4096];
    size_t n = golden("prompt_lp", buf, sizeof(buf));
    struct pd_frame_hdr h;
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
    buf[n] = 0; /* the padding byte */
    for (size_t body = 0; body <= n - PD_FRAME_HDR_LEN + 1; body++) {
        if (body == n - PD_FRAME_HDR_LEN)
            continue;
        struct pd_frame f;
        h.len = (uint32_t)body;
        pd_frame_hdr_encode(&h, buf);
        uint8_t *cut = malloc(PD_FRAME_HDR_LEN + body);
        memcpy(cut, buf, PD_FRAME_HDR_LEN + body);
        int rc = pd_frame_decode(cut, PD_FRAME_HDR_LEN + body, &f, err, sizeof(err));
        free(cut);
        if (rc != -EBADMSG)
            PD_TEST_FAIL_("body of %zu bytes: rc %d (%s)", body, rc, err);
        if (body >= 28)
            CHECK_CONTAINS(err, "counts make it");
    }
}

static void prompt_lp_encoder_refusals(void)
{
    uint8_t tags[48];
    struct pd_frame f = expected("prompt_lp", tags);
    f.u.prompt_lp.n_rows = 0;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "rows");
    f = expected("prompt_lp", tags);
    f.u.prompt_lp.n_rows = PD_PROTO_MAX_LP_ROWS + 1;
    CHECK_EQ_INT(encode_rc(&f), -E2BIG);
    f = expected("prompt_lp", tags);
    f.u.prompt_lp.n_top = PD_PROTO_MAX_LOGPROBS + 1;
    CHECK_EQ_INT(encode_rc(&f), -E2BIG);
    CHECK_CONTAINS(err, "alternatives");
    f = expected("prompt_lp", tags);
    f.u.prompt_lp.first = 0; /* position 0 has no log-probability */
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    f = expected("prompt_lp", tags);
    f.u.prompt_lp.request_id = 0;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "request id 0");
    f = expected("prompt_lp", tags);
    f.u.prompt_lp.rows = NULL; /* counts and nothing to read */
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "no rows given");
    /* a value that is not a log-probability, in the row or an alternative */
    const float bad[] = {0.25f, NAN, INFINITY};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        for (int slot = 0; slot < 3; slot++) {
            struct pd_lp_row rows[2];
            memcpy(rows, prompt_lp_rows, sizeof(rows));
            if (slot == 0)
                rows[1].logprob = bad[i];
            else
                rows[1].top[slot - 1].logprob = bad[i];
            f = expected("prompt_lp", tags);
            f.u.prompt_lp.rows = rows;
            CHECK_EQ_INT(encode_rc(&f), -EINVAL);
            CHECK_CONTAINS(err, "row 4 holds a value that is not a log-probability");
        }
    /* an alternative past n_top is not sent, so not checked */
    struct pd_lp_row rows[2];
    memcpy(rows, prompt_lp_rows, sizeof(rows));
    rows[0].top[2].logprob = NAN;
    f = expected("prompt_lp", tags);
    f.u.prompt_lp.rows = rows;
    CHECK_EQ_INT(encode_rc(&f), 0);
    /* and what the decoder accepts, the encoder does */
    f = expected("prompt_lp", tags);
    CHECK_EQ_INT(encode_rc(&f), 0);
}

/* Only prefilld sends PROMPT_LP */
static void prompt_lp_from_d_not_allowed(void)
{
    CHECK(pd_frame_sender_ok(PD_FT_PROMPT_LP, PD_ROLE_P));
    CHECK(!pd_frame_sender_ok(PD_FT_PROMPT_LP, PD_ROLE_D));
}

/* Body offsets of prefill_prompt_lp.bin: the prefix part, then the tokens */
#define PLP_PREFILL_TOKENS 140

static void prefill_prompt_lp_golden_decodes_every_field(void)
{
    uint8_t buf[4096];
    size_t n = golden("prefill_prompt_lp", buf, sizeof(buf));
    struct pd_frame f;
    struct pd_frame_hdr h;
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + PLP_PREFILL_TOKENS + 4 * 4 + strlen("req-plp-4"));
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
    CHECK_EQ_INT(h.minor, 2);
    CHECK_EQ_INT(h.type, PD_FT_PREFILL);
    CHECK(h.seq == 14);
    if (pd_frame_decode(buf, n, &f, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("prefill_prompt_lp: %s", err);
    const struct pd_prefill *p = &f.u.prefill;
    CHECK(p->request_id == REQ);
    CHECK_EQ_INT(p->epoch, EPOCH);
    CHECK_EQ_INT(p->n_tokens, 4);
    CHECK_EQ_INT(p->n_blocks, 1);
    CHECK_EQ_INT(p->block_size, 16);
    CHECK(p->temperature == 0.0f && p->top_p == 1.0f && p->min_p == 0.0f);
    CHECK(p->repetition_penalty == 1.0f);
    CHECK_EQ_INT(p->n_logprobs, 3);
    CHECK(p->seed == 5);
    CHECK_EQ_INT(PD_PREFILL_F_PROMPT_LP, 0x0008);
    CHECK_EQ_INT(p->flags, 0x000A);
    CHECK_EQ_INT(p->flags, PD_PREFILL_F_PREFIX | PD_PREFILL_F_PROMPT_LP);
    for (int i = 0; i < PD_PREFIX_NAME_LEN; i++)
        CHECK_EQ_INT(p->salt[i], 0x30 + i);
    static const uint8_t zero[PD_PREFIX_NAME_LEN];
    CHECK_EQ_INT(p->n_cached, 0);
    CHECK(memcmp(p->cached_name, zero, sizeof(zero)) == 0);
    CHECK(p->n_bias == 0 && p->bias == NULL && p->bias_le == NULL); /* no bias part */
    CHECK(p->tokens == NULL && p->tokens_le == buf + PD_FRAME_HDR_LEN + PLP_PREFILL_TOKENS);
    for (uint32_t i = 0; i < 4; i++)
        CHECK_EQ_INT(pd_prefill_token(p, i), 11 * (i + 1));
    CHECK_STR(p->xrid, "req-plp-4");
}

static void prefill_prompt_lp_golden_reencodes_byte_identical(void)
{
    uint8_t buf[4096], out[4096], tags[48];
    size_t n = golden("prefill_prompt_lp", buf, sizeof(buf)), m = 0;
    struct pd_frame want = expected("prefill_prompt_lp", tags);
    CHECK_EQ_INT(pd_frame_encode(&want, 14, out, sizeof(out), &m, err, sizeof(err)), 0);
    CHECK_EQ_INT(m, n);
    CHECK(memcmp(out, buf, n) == 0);
    CHECK_EQ_INT(pd_frame_body_len(&want), n - PD_FRAME_HDR_LEN);
}

/* Every position computed: PD_PREFILL_F_PROMPT_LP with cached blocks is
 * refused, on the wire and by the encoder; the flag alone (no prefix part)
 * travels */
static void prefill_prompt_lp_with_cached_blocks_refused(void)
{
    uint8_t buf[4096], tags[48];
    /* prefill_prefix (2 cached blocks of a 40-token prompt) asking for them */
    size_t n = golden("prefill_prefix", buf, sizeof(buf));
    CHECK_EQ_INT(pd_frame_decode(buf, n, &(struct pd_frame){0}, err, sizeof(err)), 0);
    buf[PD_FRAME_HDR_LEN + 66] |= PD_PREFILL_F_PROMPT_LP;
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "log-probabilities with 2 cached blocks");
    /* the golden with one cached block (its name still zero) */
    n = golden("prefill_prompt_lp", buf, sizeof(buf));
    put_le32(buf + PD_FRAME_HDR_LEN + PFX_N_CACHED, 1);
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "log-probabilities with 1 cached blocks");
    struct pd_frame f = expected("prefill_prefix", tags);
    f.u.prefill.flags |= PD_PREFILL_F_PROMPT_LP;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "cached blocks");
    f.u.prefill.n_cached = 0; /* every block granted, the name zero: fine */
    memset(f.u.prefill.cached_name, 0, sizeof(f.u.prefill.cached_name));
    f.u.prefill.n_blocks = 3;
    CHECK_EQ_INT(encode_rc(&f), 0);
    /* the flag without the prefix part: the tokens right after the fixed fields */
    struct pd_frame g;
    f = prefill_base(tags);
    f.u.prefill.flags = PD_PREFILL_F_NO_EOS | PD_PREFILL_F_PROMPT_LP;
    size_t m = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 2, buf, sizeof(buf), &m, err, sizeof(err)), 0);
    CHECK_EQ_INT(m, PD_FRAME_HDR_LEN + PREFILL_FIXED_LEN + 4 * 5 + strlen("req-7f3a9c"));
    CHECK_EQ_INT(get_le32(buf + PD_FRAME_HDR_LEN + 64) >> 16, 0x0009);
    CHECK_EQ_INT(get_le32(buf + PD_FRAME_HDR_LEN + PREFILL_FIXED_LEN), prefill_tokens[0]);
    CHECK_EQ_INT(pd_frame_decode(buf, m, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    /* and beside the bias part */
    static const struct pd_bias e[1] = {{3, -2.0f}};
    f.u.prefill.flags |= PD_PREFILL_F_BIAS;
    f.u.prefill.n_bias = 1;
    f.u.prefill.bias = e;
    CHECK_EQ_INT(pd_frame_encode(&f, 2, buf, sizeof(buf), &m, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_decode(buf, m, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    CHECK_EQ_INT(g.u.prefill.flags, PD_PREFILL_F_NO_EOS | PD_PREFILL_F_BIAS | PD_PREFILL_F_PROMPT_LP);
    /* the bit after the mask part's is still unknown */
    n = golden("prefill_prompt_lp", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN + 66] |= 0x20;
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "unknown flags 0x002a");
}

/* ---- minor 2: the mask part (PD_PREFILL_F_MASK; constrained decoding) ---- */

/* Body offsets of prefill_mask.bin: the prefix part, the mask part (3 words), the tokens */
#define MASK_W 140
#define MASK_RESERVED 144
#define MASK_WORDS 148
#define MASK_TOKENS 160 /* 3 words of 4 */
#define MASK_ONLY_W 68
#define MASK_ONLY_WORDS 76

static void prefill_mask_golden_decodes_every_field(void)
{
    uint8_t buf[4096];
    size_t n = golden("prefill_mask", buf, sizeof(buf));
    struct pd_frame f;
    struct pd_frame_hdr h;
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + MASK_TOKENS + 4 * 2 + strlen("req-mask-3"));
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
    CHECK_EQ_INT(h.major, 1);
    CHECK_EQ_INT(h.minor, 2);
    CHECK_EQ_INT(h.type, PD_FT_PREFILL);
    CHECK(h.seq == 15);
    if (pd_frame_decode(buf, n, &f, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("prefill_mask: %s", err);
    const struct pd_prefill *p = &f.u.prefill;
    CHECK_EQ_INT(f.type, PD_FT_PREFILL);
    CHECK(p->request_id == REQ);
    CHECK_EQ_INT(p->epoch, EPOCH);
    CHECK_EQ_INT(p->n_tokens, 2);
    CHECK_EQ_INT(p->n_blocks, 1);
    CHECK_EQ_INT(p->block_size, 16);
    CHECK(p->temperature == 0.0f && p->top_p == 1.0f && p->min_p == 0.0f);
    CHECK_EQ_INT(p->top_k, 0);
    CHECK(p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f);
    CHECK(p->repetition_penalty == 1.0f);
    CHECK_EQ_INT(p->n_logprobs, 1);
    CHECK(p->seed == 11);
    CHECK_EQ_INT(PD_PREFILL_F_MASK, 0x0010);
    CHECK_EQ_INT(p->flags, 0x0012);
    CHECK_EQ_INT(p->flags, PD_PREFILL_F_PREFIX | PD_PREFILL_F_MASK);
    static const uint8_t zero[PD_PREFIX_NAME_LEN];
    CHECK(memcmp(p->salt, zero, sizeof(zero)) == 0);
    CHECK_EQ_INT(p->n_cached, 0);
    CHECK(memcmp(p->cached_name, zero, sizeof(zero)) == 0);
    CHECK(p->n_bias == 0 && p->bias == NULL && p->bias_le == NULL); /* no bias part */
    /* the words: a view of the input, read through pd_prefill_mask_word */
    CHECK_EQ_INT(p->mask_words, 3);
    CHECK(p->mask == NULL);
    CHECK(p->mask_le == buf + PD_FRAME_HDR_LEN + MASK_WORDS);
    CHECK_EQ_INT(pd_prefill_mask_word(p, 0), 0x80000001u);
    CHECK_EQ_INT(pd_prefill_mask_word(p, 1), 0x10001258u);
    CHECK_EQ_INT(pd_prefill_mask_word(p, 2), 0x00000020u);
    static const uint32_t want_tokens[] = {0, 31, 35, 36, 38, 41, 44, 60, 69};
    uint32_t k = 0;
    for (uint32_t t = 0; t < 96; t++)
        if (pd_prefill_mask_word(p, t / 32) >> (t % 32) & 1u) {
            CHECK(k < 9);
            CHECK_EQ_INT(t, want_tokens[k++]);
        }
    CHECK_EQ_INT(k, 9);
    /* the tokens follow the mask part */
    CHECK(p->tokens == NULL && p->tokens_le == buf + PD_FRAME_HDR_LEN + MASK_TOKENS);
    CHECK_EQ_INT(pd_prefill_token(p, 0), 8);
    CHECK_EQ_INT(pd_prefill_token(p, 1), 9);
    CHECK_STR(p->xrid, "req-mask-3");
}

static void prefill_mask_golden_reencodes_byte_identical(void)
{
    uint8_t buf[4096], out[4096], tags[48];
    size_t n = golden("prefill_mask", buf, sizeof(buf)), m = 0;
    struct pd_frame want = expected("prefill_mask", tags), got;
    CHECK_EQ_INT(pd_frame_encode(&want, 15, out, sizeof(out), &m, err, sizeof(err)), 0);
    CHECK_EQ_INT(m, n);
    CHECK(memcmp(out, buf, n) == 0);
    CHECK_EQ_INT(pd_frame_body_len(&want), n - PD_FRAME_HDR_LEN);
    /* from the decoder's view of the words */
    CHECK_EQ_INT(pd_frame_decode(buf, n, &got, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_body_len(&got), n - PD_FRAME_HDR_LEN);
    memset(out, 0, sizeof(out));
    CHECK_EQ_INT(pd_frame_encode(&got, 15, out, sizeof(out), &m, err, sizeof(err)), 0);
    CHECK(m == n && memcmp(out, buf, n) == 0);
    /* and from words given little-endian (mask_le) rather than in host order */
    uint8_t le[12];
    for (int i = 0; i < 3; i++)
        put_le32(le + 4 * i, mask_words3[i]);
    want.u.prefill.mask = NULL;
    want.u.prefill.mask_le = le;
    CHECK_EQ_INT(pd_frame_encode(&want, 15, out, sizeof(out), &m, err, sizeof(err)), 0);
    CHECK(m == n && memcmp(out, buf, n) == 0);
}

/* The parts in their order: prefix, bias, mask, then the tokens; and the
 * mask part alone right after the fixed fields */
static void prefill_mask_follows_the_bias_part(void)
{
    uint8_t tags[48], buf[4096];
    static const struct pd_bias e[2] = {{7, -1.5f}, {69, 100.0f}};
    static const uint32_t words[2] = {0xdeadbeefu, 0x00000001u};
    struct pd_frame f = expected("prefill_mask", tags), g;
    f.u.prefill.flags |= PD_PREFILL_F_BIAS;
    f.u.prefill.n_bias = 2;
    f.u.prefill.bias = e;
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 4, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    const uint8_t *b = buf + PD_FRAME_HDR_LEN;
    const size_t mask_at = BIAS_ENTRIES + 8 * 2;
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + mask_at + 8 + 4 * 3 + 4 * 2 + strlen("req-mask-3"));
    CHECK_EQ_INT(get_le32(b + 64) >> 16, 0x0016);
    CHECK_EQ_INT(get_le32(b + BIAS_N), 2);
    CHECK_EQ_INT(get_le32(b + BIAS_ENTRIES), 7);
    CHECK_EQ_INT(get_le32(b + BIAS_ENTRIES + 8), 69);
    CHECK_EQ_INT(get_le32(b + mask_at), 3);
    CHECK_EQ_INT(get_le32(b + mask_at + 4), 0);
    for (uint32_t i = 0; i < 3; i++)
        CHECK_EQ_INT(get_le32(b + mask_at + 8 + 4 * i), mask_words3[i]);
    CHECK_EQ_INT(get_le32(b + mask_at + 8 + 12), 8); /* the first token */
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    CHECK(g.u.prefill.bias_le == b + BIAS_ENTRIES);
    CHECK(g.u.prefill.mask_le == b + mask_at + 8);
    CHECK_EQ_INT(pd_prefill_bias(&g.u.prefill, 1).token, 69);
    /* with PROMPT_LP too (a flag, no part): the same layout */
    f.u.prefill.flags |= PD_PREFILL_F_PROMPT_LP;
    CHECK_EQ_INT(pd_frame_encode(&f, 4, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    /* the mask part alone: its head at 68, the tokens after its words */
    f = prefill_base(tags);
    f.u.prefill.flags = PD_PREFILL_F_NO_EOS | PD_PREFILL_F_MASK;
    f.u.prefill.mask_words = 2;
    f.u.prefill.mask = words;
    CHECK_EQ_INT(pd_frame_encode(&f, 3, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + MASK_ONLY_WORDS + 4 * 2 + 4 * 5 + strlen("req-7f3a9c"));
    CHECK_EQ_INT(get_le32(b + 64) >> 16, 0x0011);
    CHECK_EQ_INT(get_le32(b + MASK_ONLY_W), 2);
    CHECK_EQ_INT(get_le32(b + MASK_ONLY_W + 4), 0);
    CHECK(b[MASK_ONLY_WORDS] == 0xef && b[MASK_ONLY_WORDS + 1] == 0xbe &&
          b[MASK_ONLY_WORDS + 2] == 0xad && b[MASK_ONLY_WORDS + 3] == 0xde); /* little-endian */
    CHECK_EQ_INT(get_le32(b + MASK_ONLY_WORDS + 4), 1);
    CHECK_EQ_INT(get_le32(b + MASK_ONLY_WORDS + 8), prefill_tokens[0]);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    CHECK(g.u.prefill.mask_le == b + MASK_ONLY_WORDS);
    CHECK_EQ_INT(pd_prefill_mask_word(&g.u.prefill, 0), 0xdeadbeefu);
}

/* 65536 words (2^21 tokens, the cap) travel; one more does not, either way */
static void prefill_mask_at_the_cap_roundtrips(void)
{
    uint8_t tags[48];
    static uint8_t buf[PD_FRAME_HDR_LEN + 4 * PD_PROTO_MAX_MASK_WORDS + 4096];
    static uint32_t words[PD_PROTO_MAX_MASK_WORDS + 1];
    CHECK_EQ_INT(PD_PROTO_MAX_MASK_WORDS, 65536);
    for (uint32_t i = 0; i <= PD_PROTO_MAX_MASK_WORDS; i++)
        words[i] = i * 2654435761u;
    struct pd_frame f = expected("prefill_mask", tags), g;
    f.u.prefill.mask = words;
    f.u.prefill.mask_words = PD_PROTO_MAX_MASK_WORDS;
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, PD_FRAME_HDR_LEN + MASK_WORDS + 4 * PD_PROTO_MAX_MASK_WORDS + 4 * 2 +
                        strlen("req-mask-3"));
    CHECK_EQ_INT(pd_frame_decode(buf, n, &g, err, sizeof(err)), 0);
    check_same(&g, &f);
    CHECK_EQ_INT(pd_prefill_mask_word(&g.u.prefill, PD_PROTO_MAX_MASK_WORDS - 1),
                 words[PD_PROTO_MAX_MASK_WORDS - 1]);
    /* with every other part at its cap too: still under the frame's cap */
    static struct pd_bias e[PD_PROTO_MAX_BIAS];
    static uint32_t toks[PD_PROTO_MAX_TOKENS];
    static uint8_t big[PD_FRAME_HDR_LEN + PD_FRAME_MAX_BODY];
    for (uint32_t i = 0; i < PD_PROTO_MAX_BIAS; i++)
        e[i] = (struct pd_bias){.token = i, .bias = 1.0f};
    for (uint32_t i = 0; i < PD_PROTO_MAX_TOKENS; i++)
        toks[i] = i;
    struct pd_frame full = f;
    full.u.prefill.flags |= PD_PREFILL_F_BIAS;
    full.u.prefill.n_bias = PD_PROTO_MAX_BIAS;
    full.u.prefill.bias = e;
    full.u.prefill.n_tokens = PD_PROTO_MAX_TOKENS;
    full.u.prefill.tokens = toks;
    full.u.prefill.n_blocks = PD_PROTO_MAX_TOKENS / 16;
    memset(full.u.prefill.xrid, 'x', PD_PROTO_MAX_XRID);
    full.u.prefill.xrid[PD_PROTO_MAX_XRID] = '\0';
    CHECK_EQ_INT(pd_frame_encode(&full, 1, big, sizeof(big), &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_decode(big, n, &g, err, sizeof(err)), 0);
    check_same(&g, &full);
    /* one word more: the encoder refuses it as too large */
    f.u.prefill.mask_words = PD_PROTO_MAX_MASK_WORDS + 1;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, buf, sizeof(buf), &n, err, sizeof(err)), -E2BIG);
    CHECK_CONTAINS(err, "mask words");
}

static void prefill_mask_count_zero_or_over_cap_refused_on_the_wire(void)
{
    uint8_t buf[4096];
    size_t n = golden("prefill_mask", buf, sizeof(buf));
    put_le32(buf + PD_FRAME_HDR_LEN + MASK_W, 0); /* the flag with no words */
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "0 mask words");
    /* over the cap: refused as too large, no word read past the body */
    const uint32_t big[] = {PD_PROTO_MAX_MASK_WORDS + 1, 0x10000000u, UINT32_MAX};
    for (size_t i = 0; i < sizeof(big) / sizeof(*big); i++) {
        put_le32(buf + PD_FRAME_HDR_LEN + MASK_W, big[i]);
        REFUSED(buf, n, -E2BIG);
        CHECK_CONTAINS(err, "mask words");
    }
    /* a count the body does not hold, either way */
    const uint32_t wrong[] = {1, 2, 4, 5, PD_PROTO_MAX_MASK_WORDS};
    for (size_t i = 0; i < sizeof(wrong) / sizeof(*wrong); i++) {
        put_le32(buf + PD_FRAME_HDR_LEN + MASK_W, wrong[i]);
        REFUSED(buf, n, -EBADMSG);
        CHECK_CONTAINS(err, "counts make it");
    }
    /* the count right again: the golden decodes */
    put_le32(buf + PD_FRAME_HDR_LEN + MASK_W, 3);
    CHECK_EQ_INT(pd_frame_decode(buf, n, &(struct pd_frame){0}, err, sizeof(err)), 0);
}

static void prefill_mask_reserved_nonzero_refused(void)
{
    reserved_refused("prefill_mask", MASK_RESERVED, 4);
}

/* The header's length ends before or inside the mask part: refused on the
 * length, no field read past it (exact copies, for ASan) */
static void prefill_mask_truncated_refused(void)
{
    uint8_t buf[4096];
    size_t n = golden("prefill_mask", buf, sizeof(buf));
    struct pd_frame_hdr h;
    CHECK_EQ_INT(pd_frame_hdr_decode(buf, n, &h, err, sizeof(err)), 0);
    prefill_cuts_refused(buf, n, &h, "mask", MASK_WORDS);
    /* and after the bias part: the mask part's head moves with it */
    uint8_t tags[48], whole[4096];
    static const struct pd_bias e[1] = {{3, 1.0f}};
    struct pd_frame f = prefill_base(tags);
    f.u.prefill.flags = PD_PREFILL_F_BIAS | PD_PREFILL_F_MASK;
    f.u.prefill.n_bias = 1;
    f.u.prefill.bias = e;
    f.u.prefill.mask_words = 3;
    f.u.prefill.mask = mask_words3;
    size_t m = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, whole, sizeof(whole), &m, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_frame_hdr_decode(whole, m, &h, err, sizeof(err)), 0);
    const size_t mask_words_at = BIAS_ONLY_ENTRIES + 8 + 8;
    for (size_t body = PREFILL_FIXED_LEN + 4 + 1; body < m - PD_FRAME_HDR_LEN; body++) {
        struct pd_frame g;
        h.len = (uint32_t)body;
        pd_frame_hdr_encode(&h, whole);
        uint8_t *cut = malloc(PD_FRAME_HDR_LEN + body);
        memcpy(cut, whole, PD_FRAME_HDR_LEN + body);
        int rc = pd_frame_decode(cut, PD_FRAME_HDR_LEN + body, &g, err, sizeof(err));
        free(cut);
        if (rc != -EBADMSG)
            PD_TEST_FAIL_("after the bias part, body cut to %zu bytes: rc %d (%s)", body, rc,
                          err);
        if (body < BIAS_ONLY_ENTRIES)
            CHECK_CONTAINS(err, "end before the bias part");
        else if (body < mask_words_at)
            CHECK_CONTAINS(err, "end before the mask part");
    }
}

static void prefill_mask_encoder_refusals(void)
{
    uint8_t tags[48];
    /* words without the flag */
    struct pd_frame f = prefill_base(tags);
    f.u.prefill.mask_words = 3;
    f.u.prefill.mask = mask_words3;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "a mask without the mask part");
    f = expected("prefill_mask", tags);
    f.u.prefill.flags = PD_PREFILL_F_PREFIX;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "without the mask part");
    f.u.prefill.mask = NULL; /* a count alone is refused as well */
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    /* the flag with no words */
    f = expected("prefill_mask", tags);
    f.u.prefill.mask_words = 0;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "mask words");
    /* over the cap */
    f = expected("prefill_mask", tags);
    f.u.prefill.mask_words = PD_PROTO_MAX_MASK_WORDS + 1;
    CHECK_EQ_INT(encode_rc(&f), -E2BIG);
    f.u.prefill.mask_words = UINT32_MAX;
    CHECK_EQ_INT(encode_rc(&f), -E2BIG);
    /* the flag with a count and no words to read */
    f = expected("prefill_mask", tags);
    f.u.prefill.mask = NULL;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
    CHECK_CONTAINS(err, "no mask given");
    /* the buffer must hold the words too */
    f = expected("prefill_mask", tags);
    uint8_t small[PD_FRAME_HDR_LEN + MASK_TOKENS];
    size_t n = 0;
    CHECK_EQ_INT(pd_frame_encode(&f, 1, small, sizeof(small), &n, err, sizeof(err)), -ENOBUFS);
    /* and what the decoder accepts, the encoder does */
    f = expected("prefill_mask", tags);
    CHECK_EQ_INT(encode_rc(&f), 0);
    /* the next flag bit (0x20) is unknown, on the wire and to the encoder */
    uint8_t buf[4096];
    n = golden("prefill_mask", buf, sizeof(buf));
    buf[PD_FRAME_HDR_LEN + 66] |= 0x20;
    REFUSED(buf, n, -EBADMSG);
    CHECK_CONTAINS(err, "unknown flags 0x0032");
    f.u.prefill.flags |= 0x20;
    CHECK_EQ_INT(encode_rc(&f), -EINVAL);
}

static const struct pd_test tests[] = {
    PD_TEST(golden_frames_decode_to_documented_values),
    PD_TEST(golden_frames_reencode_byte_identical),
    PD_TEST(decoded_frame_reencodes_from_its_views),
    PD_TEST(header_has_documented_layout),
    PD_TEST(other_major_version_refused_naming_both),
    PD_TEST(newer_minor_version_accepted),
    PD_TEST(bad_magic_refused),
    PD_TEST(unknown_type_refused),
    PD_TEST(nonzero_flags_refused),
    PD_TEST(nonzero_reserved_bytes_refused),
    PD_TEST(body_length_over_type_cap_refused),
    PD_TEST(handshake_message_with_nonzero_seq_refused),
    PD_TEST(every_truncation_of_every_frame_refused),
    PD_TEST(trailing_byte_refused),
    PD_TEST(body_count_inconsistent_with_length_refused),
    PD_TEST(prefill_token_count_over_cap_refused),
    PD_TEST(prefill_with_too_few_blocks_refused),
    PD_TEST(prefill_nonfinite_or_out_of_range_sampling_refused),
    PD_TEST(prefill_request_id_must_be_printable_and_bounded),
    PD_TEST(prefill_unknown_flags_refused),
    PD_TEST(chunk_limits_refused),
    PD_TEST(done_logprob_must_be_a_log_probability),
    PD_TEST(unknown_reason_code_refused),
    PD_TEST(detail_must_be_printable),
    PD_TEST(heartbeat_lease_out_of_range_refused),
    PD_TEST(request_id_zero_refused),
    PD_TEST(encoder_needs_room_for_the_whole_frame),
    PD_TEST(names_cover_every_type_and_reason),
    PD_TEST(senders_follow_the_design),
    PD_TEST(hello_roundtrips_with_documented_offsets),
    PD_TEST(hello_of_the_other_type_refused),
    PD_TEST(hello_key_id_rules_enforced),
    PD_TEST(hello_layout_out_of_range_refused),
    PD_TEST(every_truncation_of_a_hello_refused),
    PD_TEST(confirm_roundtrips),
    PD_TEST(ucx_addr_roundtrips_with_documented_layout),
    PD_TEST(ucx_addr_token_length_and_reserved_checked),
    PD_TEST(ready_roundtrips_and_only_prefilld_sends_it),
    PD_TEST(prefill_prefix_roundtrip),
    PD_TEST(prefill_cached_without_flag_refused_on_encode),
    PD_TEST(prefill_name_without_cached_blocks_refused),
    PD_TEST(prefill_cached_covering_all_tokens_refused),
    PD_TEST(prefill_prefix_too_few_blocks_refused),
    PD_TEST(prefill_prefix_reserved_nonzero_refused),
    PD_TEST(prefill_prefix_truncated_refused),
    PD_TEST(progress_roundtrip),
    PD_TEST(progress_bad_state_refused),
    PD_TEST(progress_done_over_total_refused),
    PD_TEST(progress_reserved_nonzero_refused),
    PD_TEST(progress_from_d_not_allowed),
    PD_TEST(prefill_bias_golden_decodes_every_field),
    PD_TEST(prefill_bias_golden_reencodes_byte_identical),
    PD_TEST(prefill_bias_without_prefix_roundtrip),
    PD_TEST(prefill_bias_at_the_cap_roundtrips),
    PD_TEST(prefill_bias_value_out_of_range_refused_on_the_wire),
    PD_TEST(prefill_bias_count_zero_or_over_cap_refused_on_the_wire),
    PD_TEST(prefill_bias_reserved_nonzero_refused),
    PD_TEST(prefill_bias_truncated_refused),
    PD_TEST(prefill_bias_encoder_refusals),
    PD_TEST(prompt_lp_golden_decodes_every_field),
    PD_TEST(prompt_lp_golden_reencodes_byte_identical),
    PD_TEST(prompt_lp_at_the_caps_roundtrips),
    PD_TEST(prompt_lp_counts_refused_on_the_wire),
    PD_TEST(prompt_lp_value_not_a_log_probability_refused_on_the_wire),
    PD_TEST(prompt_lp_truncated_or_padded_refused),
    PD_TEST(prompt_lp_encoder_refusals),
    PD_TEST(prompt_lp_from_d_not_allowed),
    PD_TEST(prefill_prompt_lp_golden_decodes_every_field),
    PD_TEST(prefill_prompt_lp_golden_reencodes_byte_identical),
    PD_TEST(prefill_prompt_lp_with_cached_blocks_refused),
    PD_TEST(prefill_mask_golden_decodes_every_field),
    PD_TEST(prefill_mask_golden_reencodes_byte_identical),
    PD_TEST(prefill_mask_follows_the_bias_part),
    PD_TEST(prefill_mask_at_the_cap_roundtrips),
    PD_TEST(prefill_mask_count_zero_or_over_cap_refused_on_the_wire),
    PD_TEST(prefill_mask_reserved_nonzero_refused),
    PD_TEST(prefill_mask_truncated_refused),
    PD_TEST(prefill_mask_encoder_refusals),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
