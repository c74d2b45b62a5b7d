/* libFuzzer target: untrusted bytes into common/kvchan/auth wherever a peer's bytes
 * arrive. The first byte picks the entry point, the rest is the message:
 *
 *   0  M1 into a responder (pd_auth_hs_respond)
 *   1  M2 into an initiator waiting for it
 *   2  a confirmation into a responder waiting for D's
 *   3  a confirmation into an initiator waiting for P's
 *   4  a sealed frame into D's session (frames P sends)
 *   5  a sealed frame into P's session (frames D sends)
 *   6  block data: a tag over it must verify, and fail with any one bit changed
 *
 * Every party uses the fixed inputs of tests/unit/kv_fixture.h, the same as
 * the known-answer vectors, so the seeds (written by tests/vectors/kat_auth.py)
 * are genuine messages and the fuzzer starts from paths that succeed. Refused
 * messages change nothing (auth.h), so one waiting state serves every input;
 * a state that an input advanced is rebuilt, and sessions are restored from a
 * pristine copy before each frame, so runs do not depend on earlier inputs.
 * A frame that opens must seal back to the same bytes at the same counter. */
#include "../unit/kv_fixture.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct kv_pair kp;
static struct pd_auth_hs *d_wait_m2, *p_wait_confirm, *d_wait_confirm;
static struct pd_auth_session *sd, *sp;
static struct pd_auth_session sd_pristine, sp_pristine;

static void must(int ok)
{
    if (!ok)
        __builtin_trap();
}

/* A state waiting for `stage`: 1 = M2 (D), 2 = D's confirmation (P), 3 = P's confirmation (D). */
static struct pd_auth_hs *waiting(int stage)
{
    struct pd_auth_hs *d = NULL, *p = NULL;
    struct pd_auth_replay *rc = NULL;
    uint8_t m1[PD_AUTH_MSG_MAX], m2[PD_AUTH_MSG_MAX], c[PD_AUTH_MSG_MAX];
    size_t n1, n2, nc;
    must(pd_auth_hs_initiate(&kp.pd, &d, m1, sizeof(m1), &n1, NULL, 0) == 0);
    if (stage == 1)
        return d;
    struct pd_auth_params pp = kp.pp;
    must(pd_auth_replay_new(4, 1000, &rc) == 0);
    pp.replay = rc;
    must(pd_auth_hs_respond(&pp, m1, n1, &p, m2, sizeof(m2), &n2, NULL, 0) == 0);
    pd_auth_replay_free(rc);
    if (stage == 2) {
        pd_auth_hs_free(d);
        return p;
    }
    pd_auth_hs_free(p);
    must(pd_auth_hs_step(d, m2, n2, c, sizeof(c), &nc, NULL, 0) == 0);
    return d;
}

static void setup(void)
{
    must(kv_pair_init(&kp, 1) == 0 && kv_pair_handshake(&kp) == 0);
    sd = kp.sd;
    sp = kp.sp;
    sd_pristine = *sd;
    sp_pristine = *sp;
    d_wait_m2 = waiting(1);
    p_wait_confirm = waiting(2);
    d_wait_confirm = waiting(3);
}

static void respond(const uint8_t *m, size_t n)
{
    struct pd_auth_hs *hs = NULL;
    struct pd_auth_replay *rc = NULL;
    uint8_t out[PD_AUTH_MSG_MAX];
    size_t on;
    char err[256];
    struct pd_auth_params pp = kp.pp;
    must(pd_auth_replay_new(4, 1000, &rc) == 0);
    pp.replay = rc;
    if (pd_auth_hs_respond(&pp, m, n, &hs, out, sizeof(out), &on, err, sizeof(err)) == 0)
        must(on == PD_HS_HELLO_LEN && pd_auth_replay_live(rc, pp.now_ms) == 1);
    else
        must(hs == NULL && pd_auth_replay_live(rc, pp.now_ms) == 0);
    pd_auth_hs_free(hs);
    pd_auth_replay_free(rc);
}

static void step(struct pd_auth_hs **hs, int stage, const uint8_t *m, size_t n)
{
    uint8_t out[PD_AUTH_MSG_MAX];
    size_t on;
    char err[256];
    if (pd_auth_hs_step(*hs, m, n, out, sizeof(out), &on, err, sizeof(err)) >= 0) {
        pd_auth_hs_free(*hs); /* advanced: rebuild the waiting state */
        *hs = waiting(stage);
    }
}

static void open_frame(struct pd_auth_session *s, const struct pd_auth_session *pristine,
                       struct pd_auth_session *peer, const struct pd_auth_session *peer_pristine,
                       const uint8_t *m, size_t n)
{
    char err[256];
    struct pd_frame f;
    uint8_t *plain = malloc(n ? n : 1), *again = malloc(n + 1);
    size_t wn;
    *s = *pristine;
    if (pd_auth_open_frame(s, m, n, plain, n, &f, err, sizeof(err)) == 0) {
        struct pd_frame_hdr h;
        must(pd_frame_hdr_decode(m, n, &h, NULL, 0) == 0);
        *peer = *peer_pristine;
        peer->send_next = h.seq;
        must(pd_auth_seal_frame(peer, &f, again, n + 1, &wn, err, sizeof(err)) == 0);
        /* the encoder writes our minor version; with the peer's the same, the
         * frame must come back bit for bit (AEAD is deterministic per counter) */
        if (m[5] == PD_PROTO_MINOR)
            must(wn == n && memcmp(again, m, n) == 0);
        *peer = *peer_pristine;
    }
    free(plain);
    free(again);
}

static void tag(const uint8_t *d, size_t n)
{
    uint8_t t[PD_BLOCK_TAG_LEN];
    uint64_t req = 0;
    memcpy(&req, d, n < 8 ? n : 8);
    pd_auth_tag_block(sp, req, (uint32_t)n, (uint32_t)(req >> 7), req ^ 0x5a, d, n, t);
    must(pd_auth_tag_verify(sd, req, (uint32_t)n, (uint32_t)(req >> 7), req ^ 0x5a, d, n, t) == 0);
    if (n > 0) {
        uint8_t *c = malloc(n);
        memcpy(c, d, n);
        c[req % n] ^= (uint8_t)(1u << (req % 8));
        must(pd_auth_tag_verify(sd, req, (uint32_t)n, (uint32_t)(req >> 7), req ^ 0x5a, c, n,
                                t) != 0);
        free(c);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1)
        return 0;
    const uint8_t *m = data + 1;
    size_t n = size - 1;
    switch (data[0]) {
    case 0: respond(m, n); break;
    case 1: step(&d_wait_m2, 1, m, n); break;
    case 2: step(&p_wait_confirm, 2, m, n); break;
    case 3: step(&d_wait_confirm, 3, m, n); break;
    case 4: open_frame(sd, &sd_pristine, sp, &sp_pristine, m, n); break;
    case 5: open_frame(sp, &sp_pristine, sd, &sd_pristine, m, n); break;
    case 6: tag(m, n); break;
    default: break;
    }
    return 0;
}
