/* libFuzzer target: a client's JSON Schema (common/text/schema.c) and an
 * output read under it (common/text/grammar.c's matcher). Input: the
 * schema's text, then a NUL byte, then the output's bytes (no NUL: the
 * schema alone; json_object's built-in schema reads the output when the
 * schema is refused). A refusal must say why; a compiled schema is read
 * byte by byte: a refused byte changes nothing, readings stay within
 * PD_GRAMMAR_MAX_ALTS, nothing follows a complete value, a state that is
 * not complete always takes some byte (no dead end), and reading the bytes
 * at once gives the state reading them one by one gave. */
#include "grammar.h"
#include "schema.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_OUTPUT = 512 }; /* bytes read per input: the dead-end check is 256 steps each */

static bool takes_some_byte(const struct pd_gstate *s)
{
    for (int b = 0; b < 256; b++) {
        struct pd_gstate t = *s;
        if (pd_gstate_feed(&t, &(uint8_t){(uint8_t)b}, 1) == 0)
            return true;
    }
    return false;
}

static void read_output(const struct pd_schema *sc, const uint8_t *out, size_t n)
{
    struct pd_gstate s, before, whole;
    size_t taken = 0;
    pd_gstate_init(&s, sc);
    for (size_t i = 0; i < n && i < MAX_OUTPUT; i++) {
        before = s;
        const bool done = pd_gstate_done(&s);
        if (pd_gstate_feed(&s, out + i, 1) < 0) {
            if (memcmp(&before, &s, sizeof(s)))
                abort(); /* a refused byte changed the state */
            continue;
        }
        if (done || s.n < 1 || s.n > PD_GRAMMAR_MAX_ALTS)
            abort(); /* a byte after the end, or readings out of bounds */
        if (!pd_gstate_done(&s) && !takes_some_byte(&s))
            abort(); /* a dead end */
        taken++;
    }
    /* the bytes taken, again at once */
    uint8_t *t = malloc(taken ? taken : 1);
    if (!t)
        return;
    struct pd_gstate r;
    size_t k = 0;
    pd_gstate_init(&r, sc);
    for (size_t i = 0; i < n && i < MAX_OUTPUT; i++) {
        struct pd_gstate x = r;
        if (pd_gstate_feed(&x, out + i, 1) == 0) {
            r = x;
            t[k++] = out[i];
        }
    }
    pd_gstate_init(&whole, sc);
    if (pd_gstate_feed(&whole, t, k) != 0 || memcmp(&whole, &r, sizeof(r)) ||
        memcmp(&whole, &s, sizeof(s)))
        abort();
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    const size_t schema_len = nul ? (size_t)(nul - data) : size;
    struct pd_schema *sc = NULL;
    char err[256] = "";
    int rc = pd_schema_compile_text((const char *)data, schema_len, &sc, err, sizeof(err));
    if (rc < 0 && (rc != -EINVAL || strncmp(err, "json_schema", 11) != 0))
        abort(); /* a refusal says why; only -EINVAL (nothing here is out of memory) */
    if (nul)
        read_output(sc ? sc : pd_schema_json_object(), nul + 1, size - schema_len - 1);
    pd_schema_unref(sc);
    return 0;
}
