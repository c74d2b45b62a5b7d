/* libFuzzer target: untrusted ids into pd_tok_decode and the streaming
 * detokenizer. Input: one control byte (bit 0: SentencePiece test vocabulary;
 * bit 1: skip control tokens; bits 2..7: a small output capacity), then ids
 * as 3-byte little-endian numbers mapped to [-4, n_vocab + 4) so bad ids
 * occur. Checked: bad ids are -EINVAL and nothing is written; otherwise the
 * output is valid UTF-8 (raw output is the concatenated pieces), the -E2BIG
 * length is exact, and the streamed pieces add up to the full decode. */
#include "tok_fuzz.h"

#include <errno.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_init();
    if (size == 0)
        return 0;
    const struct pd_tokenizer *t = fz_tok[data[0] & 1];
    unsigned flags = (data[0] & 2) ? PD_TOK_SKIP_SPECIAL : 0;
    size_t n = (size - 1) / 3, len, raw_len = 0;
    int32_t *ids = malloc((n ? n : 1) * sizeof(*ids));
    bool bad = false;
    if (!ids)
        abort();
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = data + 1 + 3 * i;
        uint32_t v = p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
        ids[i] = (int32_t)(v % (pd_tok_n_vocab(t) + 8)) - 4;
        size_t pl = 0;
        if (!pd_tok_piece(t, ids[i], &pl))
            bad = true;
        else if (!(flags && pd_tok_is_special(t, ids[i])))
            raw_len += pl;
    }
    size_t cap = 3 * raw_len + 1;
    char *out = malloc(cap);
    if (!out)
        abort();
    int rc = pd_tok_decode(t, ids, n, flags, out, cap, &len);
    if (bad) {
        if (rc != -EINVAL)
            abort();
        goto done;
    }
    if (rc != 0 || pd_utf8_valid_prefix((const uint8_t *)out, len) != len)
        abort();
    size_t small = data[0] >> 2, len2;
    char tiny[64];
    rc = pd_tok_decode(t, ids, n, flags, tiny, small, &len2);
    if (len2 != len || (len + 1 > small ? rc != -E2BIG : rc != 0))
        abort();
    fz_check_stream(t, ids, n, flags, out, len);
    /* raw: every piece, possibly less one leading space (SentencePiece) */
    rc = pd_tok_decode(t, ids, n, flags | PD_TOK_DECODE_RAW, out, cap, &len);
    if (rc != 0 || (len != raw_len && len + 1 != raw_len))
        abort();
done:
    free(ids);
    free(out);
    return 0;
}
