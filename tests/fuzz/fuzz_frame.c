/* libFuzzer target: KV-channel frames from untrusted bytes through every
 * proto decoder -- a whole plaintext control frame, the header alone, a body
 * alone (type from the first byte, so mutations need not get a header right),
 * and the three handshake messages. Whatever decodes must re-encode to the
 * same bytes (the encoding is canonical: reserved fields are zero, lengths
 * exact); only the header's minor version is ours on re-encoding. Built as a
 * real fuzzer with -Dfuzzing=true (clang); the seed corpus (the golden frames
 * of tests/vectors/frames/) is replayed by `meson test --suite fuzz`. */
#include "frame.h"
#include "handshake.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Equal except byte 5 (the minor version, which the encoder writes as ours). */
static void same_but_minor(const uint8_t *a, const uint8_t *b, size_t n)
{
    if (memcmp(a, b, 5) != 0 || (n > 6 && memcmp(a + 6, b + 6, n - 6) != 0))
        __builtin_trap();
}

static void control_frame(const uint8_t *data, size_t size)
{
    char err[256];
    struct pd_frame f;
    struct pd_frame_hdr h;
    if (pd_frame_decode(data, size, &f, err, sizeof(err)) != 0)
        return;
    if (pd_frame_hdr_decode(data, size, &h, err, sizeof(err)) != 0)
        __builtin_trap(); /* the whole decoded, so its header does */
    uint8_t *out = malloc(size);
    size_t n = 0;
    if (!out || pd_frame_encode(&f, h.seq, out, size, &n, err, sizeof(err)) != 0 || n != size)
        __builtin_trap();
    same_but_minor(out, data, size);
    free(out);
    if (f.type == PD_FT_PREFILL) {
        volatile uint32_t sink = 0;
        for (uint32_t i = 0; i < f.u.prefill.n_tokens; i++)
            sink ^= pd_prefill_token(&f.u.prefill, i);
        (void)sink;
    }
}

static void handshake_messages(const uint8_t *data, size_t size)
{
    char err[256];
    struct pd_hs_hello hh;
    uint8_t c[PD_HS_TAG_LEN], minor, out[PD_HS_HELLO_LEN];
    const uint8_t types[2] = {PD_FT_HS_M1, PD_FT_HS_M2};
    for (int i = 0; i < 2; i++) {
        if (pd_hs_hello_decode(types[i], data, size, &hh, err, sizeof(err)) != 0)
            continue;
        if (pd_hs_hello_encode(types[i], &hh, out, sizeof(out), err, sizeof(err)) != 0)
            __builtin_trap();
        same_but_minor(out, data, size);
    }
    if (pd_hs_confirm_decode(data, size, c, &minor, err, sizeof(err)) == 0) {
        if (pd_hs_confirm_encode(c, out, sizeof(out), err, sizeof(err)) != 0)
            __builtin_trap();
        same_but_minor(out, data, size);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    struct pd_frame_hdr h;
    struct pd_frame f;

    control_frame(data, size);
    handshake_messages(data, size);
    if (pd_frame_hdr_decode(data, size, &h, err, sizeof(err)) == 0)
        (void)pd_frame_wire_len(&h);
    if (size >= 1) {
        h = (struct pd_frame_hdr){.major = PD_PROTO_MAJOR, .type = data[0],
                                  .len = (uint32_t)(size - 1)};
        pd_frame_body_decode(&h, data + 1, size - 1, &f, err, sizeof(err));
    }
    return 0;
}
