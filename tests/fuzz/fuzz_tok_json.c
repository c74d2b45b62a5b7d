/* libFuzzer target: untrusted bytes as a Hugging Face tokenizer.json
 * (pd_tok_load_json, common/text/tok_json.c). Input: the file. A load that
 * succeeds is exercised: a fixed text (words, digits, spaces, an emoji, a
 * control-token look-alike) encoded with and without specials, the ids
 * decoded and streamed; ids in range, output valid UTF-8, streamed pieces
 * equal to the full decode. A refusal must say why. */
#include "tokenizer.h"
#include "utf8.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char text[] = "Hello  world 12345 caf\xC3\xA9\n\t<|im_start|> \xF0\x9F\x98\x80 a\xE2\x96\x81z";

static void exercise(const struct pd_tokenizer *t, unsigned flags)
{
    int32_t ids[512];
    size_t n, len, slen = 0;
    int rc = pd_tok_encode(t, text, sizeof(text) - 1, flags, ids, 512, &n);
    if (rc == -E2BIG)
        return; /* a tokenizer whose output is longer than the text many times over */
    if (rc != 0)
        abort();
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= pd_tok_n_vocab(t))
            abort();
    static char out[1 << 16], streamed[1 << 16];
    if (pd_tok_decode(t, ids, n, 0, out, sizeof(out), &len) != 0 ||
        pd_utf8_valid_prefix((const uint8_t *)out, len) != len)
        abort();
    struct pd_detok *d;
    if (pd_detok_new(t, 0, &d) != 0)
        abort();
    for (size_t i = 0; i <= n; i++) {
        const char *p;
        size_t pl;
        if (i < n && pd_detok_push(d, ids[i], &p, &pl) != 0)
            abort();
        if (i == n)
            pd_detok_flush(d, &p, &pl);
        if (slen + pl > sizeof(streamed))
            abort();
        memcpy(streamed + slen, p, pl);
        slen += pl;
    }
    pd_detok_free(d);
    if (slen != len || memcmp(streamed, out, len) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pd_tokenizer *t = NULL;
    char err[512] = "";
    int rc = pd_tok_load_json((const char *)data, size, NULL, 0, &t, err, sizeof(err));
    if (rc < 0) {
        if (t || !err[0])
            abort();
        return 0;
    }
    exercise(t, PD_TOK_PARSE_SPECIAL);
    exercise(t, PD_TOK_NO_BOS);
    pd_tok_free(t);
    return 0;
}
