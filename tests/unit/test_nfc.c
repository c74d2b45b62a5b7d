/* common/text/nfc against Python's unicodedata (tests/golden/nfc_golden.jsonl,
 * make_nfc_golden.py): every case normalizes to the reference's NFC, the
 * quick check never passes text that NFC would change, and ill-formed
 * bytes are kept as they are. */
#include "nfc.h"
#include "pd_test.h"
#include "tok_fixture.h"

static void nfc_matches_python_unicodedata(void)
{
    struct jl g;
    jl_load(&g, "nfc_golden.jsonl");
    CHECK(g.n > 10000);
    /* the same Unicode version as the tables */
    CHECK_STR(jl_str(g.row[0], "unicode"), pd_nfc_unicode_version());
    size_t bad = 0, changed = 0;
    for (size_t i = 1; i < g.n; i++) {
        size_t il = 0, ol = 0, m = 0;
        char *in = jl_bytes(g.row[i], "in", &il), *want = jl_bytes(g.row[i], "out", &ol);
        CHECK(in && want);
        uint8_t *out = malloc(pd_nfc_max(il));
        CHECK_EQ_INT(pd_nfc((const uint8_t *)in, il, out, &m), 0);
        bool ok = m == ol && memcmp(out, want, ol) == 0;
        if (pd_nfc_quick((const uint8_t *)in, il) && (il != ol || memcmp(in, want, ol) != 0))
            ok = false; /* the quick check passed text NFC changes */
        if (!ok && bad++ < 5)
            fprintf(stderr, "  case %zu: \"%s\" -> \"%.*s\", want \"%s\"\n", i, in, (int)m,
                    (const char *)out, want);
        changed += il != ol || memcmp(in, want, ol) != 0;
        free(in), free(want), free(out);
    }
    printf("  %zu cases (%zu changed by NFC), %zu mismatches\n", g.n - 1, changed, bad);
    jl_free(&g);
    CHECK_EQ_INT(bad, 0);
}

static void nfc_keeps_ill_formed_bytes(void)
{
    /* e + U+0301 composes on both sides of a stray continuation byte and an
     * overlong; the bad bytes stay where they were */
    static const uint8_t in[] = {'e', 0xCC, 0x81, 0x80, 'e', 0xCC, 0x81, 0xC0, 0xAF};
    static const uint8_t want[] = {0xC3, 0xA9, 0x80, 0xC3, 0xA9, 0xC0, 0xAF};
    uint8_t out[64];
    size_t m;
    CHECK(!pd_nfc_quick(in, sizeof(in)));
    CHECK_EQ_INT(pd_nfc(in, sizeof(in), out, &m), 0);
    CHECK(m == sizeof(want) && memcmp(out, want, m) == 0);
}

static const struct pd_test tests[] = {
    PD_TEST(nfc_matches_python_unicodedata),
    PD_TEST(nfc_keeps_ill_formed_bytes),
    {NULL, NULL},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
