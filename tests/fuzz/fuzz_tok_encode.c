/* libFuzzer target: untrusted bytes into pd_tok_encode (both tokenizer
 * kinds), then back through decode and the streaming detokenizer.
 * Input: one control byte, then the text.
 *   bit 0..2  PD_TOK_PARSE_SPECIAL, PD_TOK_ADD_BOS, PD_TOK_NO_BOS
 *   bit 3     the SentencePiece test vocabulary instead of the default model's
 *   bit 4..7  a small output capacity to test the -E2BIG contract with
 * Checked: never a crash or an overrun (sanitizers); pd_tok_max_ids is
 * enough; the -E2BIG count and prefix; decode(encode(x)) == x byte for byte (raw decode) whenever no
 * unknown token was needed, control tokens were not parsed and (SentencePiece)
 * the text has no literal U+2581; the default
 * decode is valid UTF-8 and equals the streamed pieces. */
#include "tok_fuzz.h"

#include <errno.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_init();
    if (size == 0)
        return 0;
    const struct pd_tokenizer *t = fz_tok[(data[0] >> 3) & 1];
    unsigned flags = data[0] & (PD_TOK_PARSE_SPECIAL | PD_TOK_ADD_BOS | PD_TOK_NO_BOS);
    const char *text = (const char *)data + 1;
    size_t len = size - 1, cap = pd_tok_max_ids(t, len), n, m, dl;
    int32_t *ids = malloc(cap * sizeof(*ids));
    int32_t small[16];

    if (!ids)
        abort();
    if (pd_tok_encode(t, text, len, flags, ids, cap, &n) != 0)
        abort();
    size_t ocap = 1; /* an unknown token's text may be longer than its input */
    for (size_t i = 0; i < n; i++) {
        size_t pl;
        pd_tok_piece(t, ids[i], &pl);
        ocap += 3 * pl;
    }
    char *out = malloc(ocap);
    if (!out)
        abort();
    size_t sc = data[0] >> 4;
    int rc = pd_tok_encode(t, text, len, flags, small, sc, &m);
    if (m != n || (n > sc ? rc != -E2BIG : rc != 0) ||
        memcmp(small, ids, (n < sc ? n : sc) * sizeof(*ids)) != 0)
        abort();

    bool unk = false;
    for (size_t i = 0; i < n; i++)
        unk |= ids[i] == pd_tok_unk(t);
    if (pd_tok_decode(t, ids, n, PD_TOK_DECODE_RAW | PD_TOK_SKIP_SPECIAL, out, ocap, &dl) != 0)
        abort();
    /* SentencePiece reads a literal "▁" in the text as a space, like the
     * spaces it replaces: such text comes back with spaces */
    bool meta = t == fz_tok[1] && memmem(text, len, "\xE2\x96\x81", 3);
    if (!unk && !meta && !(flags & PD_TOK_PARSE_SPECIAL) &&
        (dl != len || memcmp(out, text, len) != 0))
        abort();
    for (unsigned f = 0; f <= PD_TOK_SKIP_SPECIAL; f += PD_TOK_SKIP_SPECIAL) {
        if (pd_tok_decode(t, ids, n, f, out, ocap, &dl) != 0 ||
            pd_utf8_valid_prefix((const uint8_t *)out, dl) != dl)
            abort();
        fz_check_stream(t, ids, n, f, out, dl);
    }
    free(ids);
    free(out);
    return 0;
}
