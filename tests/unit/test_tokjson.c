/* common/text/tok_json: tokenizers loaded from Hugging Face tokenizer.json
 * files against the `tokenizers` library itself, id for id, on the committed
 * corpus (tests/golden/tokjson/<name>.jsonl, make_tokjson_golden.py): the
 * file transformers writes for the default model, SmolLM2's own
 * configuration, Llama-3's (a Split regex, ignore_merges, a BOS template),
 * Qwen2's (NFC, its Split regex),
 * and SentencePiece-style ones (legacy normalizer; Metaspace). Plus the
 * loader's refusals. */
#include "pd_test.h"
#include "tok_fixture.h"
#include "tokenizer.h"

#include <errno.h>

#define MAX_IDS 65536

static struct pd_tokenizer *load_dir(const char *name)
{
    char dir[1024], err[512];
    struct pd_tokenizer *t = NULL;
    snprintf(dir, sizeof(dir), "%s/tests/golden/tokjson/%s", PD_SRCDIR, name);
    if (pd_tok_load_dir(dir, &t, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return t;
}

static bool same(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof(*a)) == 0);
}

static void show(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "    %s:", what);
    for (size_t i = 0; i < n && i < 32; i++)
        fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "%s\n", n > 32 ? " ..." : "");
}

/* ids with flags equal want; false (and a report while loud) otherwise */
static bool encode_is(const struct pd_tokenizer *t, const char *text, size_t len, unsigned flags,
                      const int32_t *want, size_t nw, size_t line, bool loud)
{
    static int32_t ids[MAX_IDS];
    size_t n;
    CHECK_EQ_INT(pd_tok_encode(t, text, len, flags, ids, MAX_IDS, &n), 0);
    if (same(ids, n, want, nw))
        return true;
    if (loud) {
        fprintf(stderr, "  line %zu (%s): \"%.*s\"\n", line,
                (flags & PD_TOK_ADD_BOS) ? "add_special_tokens" : "plain", (int)(len > 80 ? 80 : len),
                text);
        show("want", want, nw);
        show("got ", ids, n);
    }
    return false;
}

/* decode(ids, flags) equals want (the text itself when the golden has none) */
static bool decode_is(const struct pd_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                      const char *want, size_t wl, size_t line, bool loud)
{
    static char out[8 * MAX_IDS];
    size_t len;
    CHECK_EQ_INT(pd_tok_decode(t, ids, n, flags, out, sizeof(out), &len), 0);
    if (len == wl && memcmp(out, want, wl) == 0)
        return true;
    if (loud)
        fprintf(stderr, "  line %zu: decode%s \"%.*s\", want \"%.*s\"\n", line,
                (flags & PD_TOK_SKIP_SPECIAL) ? " (skipping specials)" : "", (int)(len > 80 ? 80 : len),
                out, (int)(wl > 80 ? 80 : wl), want);
    return false;
}

/* Every corpus line: ids without and with add_special_tokens (control-token
 * text always split out, as tokenizers does), decode with and without
 * special tokens. */
static void check_file(const char *name)
{
    struct pd_tokenizer *t = load_dir(name);
    char gold_name[128];
    struct jl corpus, gold;
    size_t bad = 0;
    snprintf(gold_name, sizeof(gold_name), "tokjson/%s.jsonl", name);
    jl_load(&corpus, "tokenizer_corpus.jsonl");
    jl_load(&gold, gold_name);
    CHECK(corpus.n >= 2000);
    CHECK_EQ_INT(gold.n, corpus.n);
    for (size_t i = 0; i < gold.n; i++) {
        const cJSON *g = gold.row[i];
        size_t tl = 0, nw, nsp, dl = 0, dsl = 0;
        char *text = jl_bytes(corpus.row[i], "text", &tl);
        size_t nraw = 0, drl = 0;
        int32_t *want = jl_ids(g, "ids", &nw), *want_sp = jl_ids(g, "sp", &nsp);
        int32_t *want_raw = jl_ids(g, "raw", &nraw); /* special tokens' text as text */
        char *dec_raw = jl_bytes(g, "dec_raw", &drl);
        char *dec = jl_bytes(g, "dec", &dl), *dec_skip = jl_bytes(g, "dec_skip", &dsl);
        CHECK(text && want);
        bool ok = encode_is(t, text, tl, PD_TOK_PARSE_SPECIAL | PD_TOK_NO_BOS, want, nw, i + 1,
                            bad < 5);
        ok &= encode_is(t, text, tl, PD_TOK_PARSE_SPECIAL | PD_TOK_ADD_BOS,
                        want_sp ? want_sp : want, want_sp ? nsp : nw, i + 1, bad < 5);
        /* encode_special_tokens: a special token's text is text (not a plain
         * added token's) */
        ok &= encode_is(t, text, tl, PD_TOK_NO_BOS, want_raw ? want_raw : want,
                        want_raw ? nraw : nw, i + 1, bad < 5);
        if (want_raw)
            ok &= decode_is(t, want_raw, nraw, 0, dec_raw ? dec_raw : text, dec_raw ? drl : tl,
                            i + 1, bad < 5);
        /* decode: the plain ids; the ids with the specials added, skipping them */
        ok &= decode_is(t, want, nw, 0, dec ? dec : text, dec ? dl : tl, i + 1, bad < 5);
        ok &= decode_is(t, want_sp ? want_sp : want, want_sp ? nsp : nw, PD_TOK_SKIP_SPECIAL,
                        dec_skip ? dec_skip : dec ? dec : text, dec_skip ? dsl : dec ? dl : tl,
                        i + 1, bad < 5);
        bad += !ok;
        free(text), free(want), free(want_sp), free(dec), free(dec_skip), free(want_raw),
            free(dec_raw);
    }
    printf("  %s: %zu strings, %zu mismatches\n", name, gold.n, bad);
    jl_free(&corpus);
    jl_free(&gold);
    pd_tok_free(t);
    CHECK_EQ_INT(bad, 0);
}

static void tokjson_smollm2_as_transformers_writes_it(void) { check_file("smollm2"); }
static void tokjson_smollm2_own_configuration(void) { check_file("smollm2_declared"); }
static void tokjson_llama3_configuration(void) { check_file("llama3"); }
static void tokjson_sentencepiece_legacy_normalizer(void) { check_file("spm"); }
/* Qwen2's: NFC (common/text/nfc), its own Split regex, no BOS */
static void tokjson_qwen2_configuration(void) { check_file("qwen2"); }
static void tokjson_sentencepiece_metaspace(void) { check_file("spm_metaspace"); }

/* ---- refusals: each names what it refuses ---- */

static void refused(const char *json, int rc, const char *want)
{
    struct pd_tokenizer *t = NULL;
    char err[512] = "";
    int got = pd_tok_load_json(json, strlen(json), NULL, 0, &t, err, sizeof(err));
    if (got != rc || !strstr(err, want))
        PD_TEST_FAIL_("expected %d with \"%s\", got %d: %s", rc, want, got, err);
    CHECK(t == NULL);
}

#define BL_MODEL "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}"
#define BL_PRE "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false}"
#define BL_DEC "\"decoder\":{\"type\":\"ByteLevel\"}"

static void tokjson_minimal_byte_level_loads(void)
{
    static const char j[] = "{" BL_MODEL "," BL_PRE "," BL_DEC "}";
    struct pd_tokenizer *t = NULL;
    char err[256];
    CHECK_EQ_INT(pd_tok_load_json(j, strlen(j), NULL, 0, &t, err, sizeof(err)), 0);
    int32_t ids[4];
    size_t n;
    CHECK_EQ_INT(pd_tok_encode(t, "ab", 2, 0, ids, 4, &n), 0);
    CHECK(n == 1 && ids[0] == 2);
    pd_tok_free(t);
}

static void tokjson_refuses_unsupported_components_by_name(void)
{
    refused("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", -ENOTSUP, "WordPiece");
    refused("{" BL_MODEL ",\"normalizer\":{\"type\":\"NFKC\"}," BL_PRE "," BL_DEC "}", -ENOTSUP,
            "normalizer NFKC");
    refused("{" BL_MODEL ",\"pre_tokenizer\":{\"type\":\"Whitespace\"}," BL_DEC "}", -ENOTSUP,
            "pre_tokenizer Whitespace");
    refused("{" BL_MODEL "," BL_PRE ",\"decoder\":{\"type\":\"WordPiece\"}}", -ENOTSUP,
            "decoder WordPiece");
    refused("{" BL_MODEL "," BL_PRE "," BL_DEC ",\"post_processor\":{\"type\":\"RobertaProcessing\"}}",
            -ENOTSUP, "RobertaProcessing");
    refused("{" BL_MODEL ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
            "\"behavior\":\"Removed\",\"invert\":false}," BL_DEC "}",
            -ENOTSUP, "Split");
    refused("{" BL_MODEL "," BL_PRE "," BL_DEC ",\"added_tokens\":[{\"id\":3,\"content\":\"<x>\","
            "\"special\":true,\"lstrip\":true}]}",
            -ENOTSUP, "lstrip");
}

static void tokjson_refuses_malformed_files(void)
{
    refused("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"a\":1},\"merges\":[]}}", -EINVAL,
            "key \"a\" appears twice");
    refused("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":2},\"merges\":[]}," BL_PRE
            "," BL_DEC "}",
            -EINVAL, "id 1 is neither");
    refused("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a c\"]}," BL_PRE
            "," BL_DEC "}",
            -EINVAL, "merges[0]");
    refused("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1.5},\"merges\":[]}}", -EINVAL,
            "no valid id");
    refused("{" BL_MODEL "," BL_PRE "," BL_DEC ",\"added_tokens\":[{\"id\":0,\"content\":\"z\"}]}",
            -EINVAL, "added_tokens: id 0");
    refused("[1]", -EINVAL, "not a JSON object");
    refused("{\"model\":\"a\x01\"}", -EINVAL, "control character");
    refused("{" BL_MODEL "," BL_DEC "}", -ENOTSUP, "neither byte-level");
}

/* ignore_merges (Llama-3's files): a pre-token that is a vocabulary entry is
 * taken whole even where the merges cannot build it; without it, BPE. The
 * merges in both of their written forms ("a b" and ["a", "b"]). */
static void tokjson_ignore_merges_takes_whole_words(void)
{
    static const char *const forms[] = {"\"b c\"", "[\"b\",\"c\"]"};
    for (int im = 0; im < 2; im++)
        for (int f = 0; f < 2; f++) {
            char j[512], err[256];
            snprintf(j, sizeof(j),
                     "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,"
                     "\"bc\":3,\"abc\":4},\"merges\":[%s],\"ignore_merges\":%s}," BL_PRE
                     "," BL_DEC "}",
                     forms[f], im ? "true" : "false");
            struct pd_tokenizer *t = NULL;
            if (pd_tok_load_json(j, strlen(j), NULL, 0, &t, err, sizeof(err)) < 0)
                PD_TEST_FAIL_("%s", err);
            int32_t ids[4];
            size_t n;
            CHECK_EQ_INT(pd_tok_encode(t, "abc", 3, 0, ids, 4, &n), 0);
            if (im)
                CHECK(n == 1 && ids[0] == 4);
            else
                CHECK(n == 2 && ids[0] == 0 && ids[1] == 3);
            pd_tok_free(t);
        }
}

/* The fuzz target's seeds (make_tok_json_corpus.py: files the tokenizers
 * library wrote) all load, so the fuzzer starts from files that get past
 * the loader; one has a plain (not special) added token, always split out. */
static void tokjson_fuzz_seeds_load(void)
{
    static const char *const seeds[] = {"bytelevel", "digits", "llama3", "spm", "spm-metaspace"};
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        char path[1024], err[512];
        size_t len;
        snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/tok_json/seed-%s.json", PD_SRCDIR,
                 seeds[i]);
        char *j = tok_read_file(path, &len);
        CHECK(j != NULL);
        struct pd_tokenizer *t = NULL;
        if (pd_tok_load_json(j, len, NULL, 0, &t, err, sizeof(err)) < 0)
            PD_TEST_FAIL_("%s: %s", seeds[i], err);
        if (i == 0) {
            int32_t ids[16];
            size_t n;
            int32_t plain = pd_tok_find(t, "plain added", 11);
            CHECK(plain >= 0 && !pd_tok_is_special(t, plain));
            CHECK_EQ_INT(pd_tok_encode(t, "xplain addedy", 13, 0, ids, 16, &n), 0);
            bool found = false;
            for (size_t k = 0; k < n; k++)
                found |= ids[k] == plain;
            CHECK(found);
        }
        pd_tok_free(t);
        free(j);
    }
}

static const struct pd_test tests[] = {
    PD_TEST(tokjson_fuzz_seeds_load),
    PD_TEST(tokjson_smollm2_as_transformers_writes_it),
    PD_TEST(tokjson_smollm2_own_configuration),
    PD_TEST(tokjson_llama3_configuration),
    PD_TEST(tokjson_qwen2_configuration),
    PD_TEST(tokjson_sentencepiece_legacy_normalizer),
    PD_TEST(tokjson_sentencepiece_metaspace),
    PD_TEST(tokjson_minimal_byte_level_loads),
    PD_TEST(tokjson_ignore_merges_takes_whole_words),
    PD_TEST(tokjson_refuses_unsupported_components_by_name),
    PD_TEST(tokjson_refuses_malformed_files),
    {NULL, NULL},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
