/* common/text/tokenizer: parity with transformers on the committed corpus (default
 * model and a SentencePiece vocabulary), special tokens, BOS, the -E2BIG
 * contract, invalid UTF-8, streaming detokenization, load errors. The
 * default model's tests skip (77) when it is absent; tests/run.sh fetches it. */
#include "gguf_build.h"
#include "tok_fixture.h"
#include "utf8.h"

#include <errno.h>
#include <pthread.h>

#define MAX_IDS 8192

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "    %s:", what);
    for (size_t i = 0; i < n && i < 40; i++)
        fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

static bool same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof(*a)) == 0);
}

/* One corpus string in one mode: encode with flags and compare with want;
 * decode want and compare with the reference's text (field dec_key), or
 * with the input where the reference round-trips. Shows the first few
 * differences (loud). */
static bool check_one(const struct pd_tokenizer *tok, const char *text, size_t tlen,
                      unsigned flags, const int32_t *want, size_t nw, const cJSON *g,
                      const char *dec_key, size_t line, bool loud, bool *roundtrip)
{
    static int32_t ids[MAX_IDS];
    static char dec[4 * MAX_IDS];
    size_t n, dlen, wdl;
    bool ok = true;

    CHECK_EQ_INT(pd_tok_encode(tok, text, tlen, flags, ids, MAX_IDS, &n), 0);
    if (!same_ids(ids, n, want, nw)) {
        if (loud) {
            fprintf(stderr, "  line %zu, %s: ids differ for \"%.*s\"\n", line,
                    (flags & PD_TOK_PARSE_SPECIAL) ? "special on" : "special off", (int)tlen,
                    text);
            print_ids("want", want, nw);
            print_ids("got ", ids, n);
        }
        ok = false;
    }
    char *wdec = jl_bytes(g, dec_key, &wdl);
    CHECK_EQ_INT(pd_tok_decode(tok, want, nw, 0, dec, sizeof(dec), &dlen), 0);
    if (wdec ? (dlen != wdl || memcmp(dec, wdec, wdl) != 0)
             : (dlen != tlen || memcmp(dec, text, tlen) != 0)) {
        if (loud)
            fprintf(stderr, "  line %zu: decode differs: got \"%s\"\n", line, dec);
        ok = false;
    }
    *roundtrip = !wdec;
    free(wdec);
    return ok;
}

/* Every corpus string (every stride-th), with control-token text parsed and
 * not: ids, and the decoded text, round trip included where transformers
 * round-trips. Counts mismatches and fails if there was any. */
static void check_corpus(const struct pd_tokenizer *tok, const char *gold_name, size_t stride,
                         const char *ids_key, const char *sp_key)
{
    struct jl corpus, gold;
    size_t checked = 0, bad = 0, roundtrips = 0;

    jl_load(&corpus, "tokenizer_corpus.jsonl");
    jl_load(&gold, gold_name);
    CHECK(corpus.n >= 2000);
    CHECK_EQ_INT(gold.n, (corpus.n + stride - 1) / stride);
    for (size_t i = 0; i < gold.n; i++) {
        const cJSON *g = gold.row[i];
        size_t tlen = 0, nw, nsp, line = i * stride + 1;
        char *text = jl_bytes(corpus.row[i * stride], "text", &tlen);
        int32_t *want = jl_ids(g, ids_key, &nw);
        if (!want)
            want = jl_ids(g, "ids", &nw);
        int32_t *want_sp = jl_ids(g, sp_key, &nsp);
        if (!want_sp)
            want_sp = jl_ids(g, "sp", &nsp);
        if (!want_sp)
            want_sp = jl_ids(g, "ids", &nsp);
        bool rt, rt_sp;

        CHECK(text != NULL);
        bool ok = check_one(tok, text, tlen, PD_TOK_NO_BOS, want, nw, g, "dec", line, bad < 5,
                            &rt);
        /* without "sp" the ids are the same, and so is their decode */
        ok &= check_one(tok, text, tlen, PD_TOK_NO_BOS | PD_TOK_PARSE_SPECIAL, want_sp, nsp, g,
                        cJSON_GetObjectItemCaseSensitive(g, "sp") ? "dec_sp" : "dec", line,
                        bad < 5, &rt_sp);
        bad += !ok;
        roundtrips += rt;
        checked++;
        free(text);
        free(want);
        free(want_sp);
    }
    printf("  %s: %zu strings checked, %zu round-trip, %zu mismatches\n", gold_name, checked,
           roundtrips, bad);
    jl_free(&corpus);
    jl_free(&gold);
    CHECK_EQ_INT(bad, 0);
}

static void tok_default_corpus_matches_transformers(void)
{
    struct tok_fix f;
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF);
    check_corpus(f.tok, "tokenizer_smollm.jsonl", 1, "ids", "sp");
    tok_fix_done(&f);
}

/* PD_TOK_PRE_DECLARED: "smollm" as SmolLM2's own tokenizer.json splits. */
static void tok_default_declared_pre_matches_smollm_tokenizer(void)
{
    struct tok_fix f;
    tok_fix_default(&f, PD_TOK_PRE_DECLARED);
    CHECK_STR(pd_tok_pre_used(f.tok), "smollm");
    check_corpus(f.tok, "tokenizer_smollm.jsonl", 1, "decl", "decl_sp");
    tok_fix_done(&f);
}

static void tok_spm_corpus_matches_transformers(void)
{
    struct tok_fix f;
    tok_fix_spm(&f);
    CHECK_STR(pd_tok_model(f.tok), "llama");
    check_corpus(f.tok, "tokenizer_spm.jsonl", 3, "ids", "sp");
    tok_fix_done(&f);
}

static void tok_default_metadata(void)
{
    struct tok_fix f;
    size_t n;
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF);
    CHECK_EQ_INT(pd_tok_n_vocab(f.tok), 49152);
    CHECK_EQ_INT(pd_tok_bos(f.tok), 1);
    CHECK_EQ_INT(pd_tok_eos(f.tok), 2);
    CHECK_EQ_INT(pd_tok_unk(f.tok), 0);
    CHECK_EQ_INT(pd_tok_pad(f.tok), 2);
    CHECK(!pd_tok_adds_bos(f.tok));
    CHECK_STR(pd_tok_model(f.tok), "gpt2");
    CHECK_STR(pd_tok_pre_declared(f.tok), "smollm");
    CHECK_STR(pd_tok_text(f.tok, 1, &n), "<|im_start|>");
    CHECK_EQ_INT(n, 12);
    CHECK_EQ_INT(pd_tok_find(f.tok, "<|im_end|>", 10), 2);
    CHECK_EQ_INT(pd_tok_find(f.tok, "no such token", 13), -1);
    int32_t the = pd_tok_find(f.tok, "\xC4\xA0the", 5); /* "Ġthe" */
    CHECK(the > 0);
    const uint8_t *p = pd_tok_piece(f.tok, the, &n);
    CHECK(n == 4 && memcmp(p, " the", 4) == 0);
    CHECK(pd_tok_text(f.tok, 49152, &n) == NULL);
    CHECK(pd_tok_text(f.tok, -1, &n) == NULL);
    CHECK(pd_tok_chat_template(f.tok, &n) != NULL);
    CHECK_CONTAINS(pd_tok_chat_template(f.tok, &n), "<|im_start|>");
    tok_fix_done(&f);
}

static void tok_eog_tokens(void)
{
    struct tok_fix f;
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF);
    CHECK(pd_tok_is_eog(f.tok, 2)); /* <|im_end|>, EOS */
    CHECK(pd_tok_is_eog(f.tok, 0)); /* <|endoftext|> */
    CHECK(!pd_tok_is_eog(f.tok, 1)); /* <|im_start|> */
    CHECK(!pd_tok_is_eog(f.tok, 100));
    CHECK(!pd_tok_is_eog(f.tok, -1));
    CHECK(!pd_tok_is_eog(f.tok, 1 << 20));
    CHECK(pd_tok_is_special(f.tok, 1));
    CHECK(!pd_tok_is_special(f.tok, 100));
    tok_fix_done(&f);

    tok_fix_spm(&f);
    CHECK(pd_tok_is_eog(f.tok, 2)); /* </s> */
    CHECK(pd_tok_is_eog(f.tok, pd_tok_find(f.tok, "<|im_end|>", 10)));
    CHECK(!pd_tok_is_eog(f.tok, 1));
    tok_fix_done(&f);
}

/* The default model's tokenizer, and one text's ids. */
struct tok_text {
    struct tok_fix f;
    const char *s;
    int32_t ids[64];
    size_t n;
};

static void tok_text_encode(struct tok_text *t, unsigned flags)
{
    CHECK_EQ_INT(pd_tok_encode(t->f.tok, t->s, strlen(t->s), flags, t->ids, 64, &t->n), 0);
}

static void tok_text_default(struct tok_text *t, const char *s, unsigned flags)
{
    tok_fix_default(&t->f, PD_TOK_PRE_HF_GGUF);
    t->s = s;
    tok_text_encode(t, flags);
}

static void tok_parse_special_only_on_request(void)
{
    struct tok_text t;
    tok_text_default(&t, "<|im_start|>user\nHi<|im_end|>", PD_TOK_PARSE_SPECIAL);
    CHECK(t.n >= 3);
    CHECK_EQ_INT(t.ids[0], 1);
    CHECK_EQ_INT(t.ids[t.n - 1], 2);
    tok_text_encode(&t, 0);
    for (size_t i = 0; i < t.n; i++)
        CHECK(!pd_tok_is_special(t.f.tok, t.ids[i]));
    tok_fix_done(&t.f);
}

static void tok_bos_follows_metadata_unless_asked(void)
{
    struct tok_fix f;
    int32_t ids[64];
    size_t n;
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF); /* add_bos_token = false */
    CHECK_EQ_INT(pd_tok_encode(f.tok, "Hi", 2, 0, ids, 64, &n), 0);
    CHECK(n == 1 && ids[0] != 1);
    CHECK_EQ_INT(pd_tok_encode(f.tok, "Hi", 2, PD_TOK_ADD_BOS, ids, 64, &n), 0);
    CHECK(n == 2 && ids[0] == 1);
    CHECK_EQ_INT(pd_tok_encode(f.tok, "", 0, PD_TOK_ADD_BOS, ids, 64, &n), 0);
    CHECK(n == 1 && ids[0] == 1);
    tok_fix_done(&f);

    tok_fix_spm(&f); /* add_bos_token = true */
    CHECK(pd_tok_adds_bos(f.tok));
    CHECK_EQ_INT(pd_tok_encode(f.tok, "Hi", 2, 0, ids, 64, &n), 0);
    CHECK(n >= 2 && ids[0] == 1);
    CHECK_EQ_INT(pd_tok_encode(f.tok, "Hi", 2, PD_TOK_NO_BOS, ids, 64, &n), 0);
    CHECK(n >= 1 && ids[0] != 1);
    tok_fix_done(&f);
}

static void tok_encode_e2big_reports_count(void)
{
    struct tok_fix f;
    int32_t all[64], few[3];
    size_t n, m;
    static const char s[] = "The quick brown fox jumps over the lazy dog.";
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF);
    CHECK_EQ_INT(pd_tok_encode(f.tok, s, strlen(s), 0, all, 64, &n), 0);
    CHECK(n > 3);
    CHECK_EQ_INT(pd_tok_encode(f.tok, s, strlen(s), 0, few, 3, &m), -E2BIG);
    CHECK_EQ_INT(m, n);
    CHECK(memcmp(few, all, sizeof(few)) == 0); /* the first cap ids */
    CHECK_EQ_INT(pd_tok_encode(f.tok, s, strlen(s), 0, NULL, 0, &m), -E2BIG);
    CHECK_EQ_INT(m, n);
    CHECK_EQ_INT(pd_tok_encode(f.tok, s, strlen(s), 0, all, n, &m), 0); /* exactly enough */
    /* the default model: len + 2 always suffices */
    static const char worst[] = "\x01\x02\x03\x04\x05\x06\xff\xfe";
    int32_t w[sizeof(worst) + 2];
    CHECK_EQ_INT(pd_tok_max_ids(f.tok, sizeof(worst) - 1), sizeof(worst) + 1);
    CHECK_EQ_INT(pd_tok_encode(f.tok, worst, sizeof(worst) - 1, PD_TOK_ADD_BOS, w,
                               sizeof(worst) + 1, &m),
                 0);
    tok_fix_done(&f);
}

static void tok_encode_refuses_text_over_cap(void)
{
    struct tok_fix f;
    int32_t ids[4];
    size_t n = 7;
    static const char s[] = "x";
    tok_fix_spm(&f);
    /* the length is checked before a byte is read */
    CHECK_EQ_INT(pd_tok_encode(f.tok, s, (size_t)PD_TOK_MAX_TEXT + 1, 0, ids, 4, &n), -EMSGSIZE);
    CHECK_EQ_INT(n, 7);
    CHECK_EQ_INT(pd_tok_encode(f.tok, NULL, 1, 0, ids, 4, &n), -EINVAL);
    tok_fix_done(&f);
}

static void tok_decode_e2big_and_bad_ids(void)
{
    struct tok_text t;
    size_t len;
    char out[128];
    tok_text_default(&t, "Hello, world", 0);
    const struct pd_tokenizer *tok = t.f.tok;
    CHECK_EQ_INT(pd_tok_decode(tok, t.ids, t.n, 0, out, 5, &len), -E2BIG);
    CHECK_EQ_INT(len, strlen(t.s));
    CHECK_EQ_INT(pd_tok_decode(tok, t.ids, t.n, 0, out, len, &len), -E2BIG); /* room for the NUL */
    CHECK_EQ_INT(pd_tok_decode(tok, t.ids, t.n, 0, out, len + 1, &len), 0);
    CHECK_STR(out, t.s);
    int32_t bad[2] = {t.ids[0], 49152};
    CHECK_EQ_INT(pd_tok_decode(tok, bad, 2, 0, out, sizeof(out), &len), -EINVAL);
    bad[1] = -5;
    CHECK_EQ_INT(pd_tok_decode(tok, bad, 2, 0, out, sizeof(out), &len), -EINVAL);
    tok_fix_done(&t.f);
}

static void tok_skip_special_on_decode(void)
{
    struct tok_text t;
    size_t len;
    char out[256];
    tok_text_default(&t, "<|im_start|>user\nHi<|im_end|>\n", PD_TOK_PARSE_SPECIAL);
    CHECK_EQ_INT(pd_tok_decode(t.f.tok, t.ids, t.n, 0, out, sizeof(out), &len), 0);
    CHECK_STR(out, t.s);
    CHECK_EQ_INT(pd_tok_decode(t.f.tok, t.ids, t.n, PD_TOK_SKIP_SPECIAL, out, sizeof(out), &len),
                 0);
    CHECK_STR(out, "user\nHi\n");
    tok_fix_done(&t.f);
}

/* Byte-level, ill-formed UTF-8: each run of bytes that is not UTF-8 is a
 * pre-token of its own, through the byte alphabet like any bytes; bytes the
 * vocabulary has round-trip exactly (raw decode), the default decode shows
 * U+FFFD per maximal invalid subpart, and bytes the vocabulary lacks become
 * the unknown token. */
static void tok_invalid_utf8_byte_level(void)
{
    struct tok_fix f;
    int32_t ids[64], a[64], b[64], c[64];
    size_t n, na, nb, nc, len;
    char out[256];
    static const struct {
        const char *in, *lossy;
    } cases[] = {
        {"abc\x80" "def", "abc\xEF\xBF\xBD" "def"}, /* lone continuation byte */
        {"\xE3\x81", "\xEF\xBF\xBD"}, /* cut 3-byte character: one subpart */
        {"x\xF0\x9F\x98", "x\xEF\xBF\xBD"}, /* cut emoji at the end */
        {"\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* a surrogate */
        {"\xE0\x80\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* overlong */
        {"ok \x80\x80 ok", "ok \xEF\xBF\xBD\xEF\xBF\xBD ok"},
    };
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t il = strlen(cases[i].in);
        CHECK_EQ_INT(pd_tok_encode(f.tok, cases[i].in, il, 0, ids, 64, &n), 0);
        for (size_t k = 0; k < n; k++)
            CHECK(ids[k] != pd_tok_unk(f.tok));
        CHECK_EQ_INT(pd_tok_decode(f.tok, ids, n, PD_TOK_DECODE_RAW, out, sizeof(out), &len), 0);
        CHECK(len == il && memcmp(out, cases[i].in, il) == 0);
        CHECK_EQ_INT(pd_tok_decode(f.tok, ids, n, 0, out, sizeof(out), &len), 0);
        CHECK_STR(out, cases[i].lossy);
    }
    /* the ill-formed run splits the text like a boundary */
    CHECK_EQ_INT(pd_tok_encode(f.tok, "ab\x80\x80" "cd", 6, 0, ids, 64, &n), 0);
    CHECK_EQ_INT(pd_tok_encode(f.tok, "ab", 2, 0, a, 64, &na), 0);
    CHECK_EQ_INT(pd_tok_encode(f.tok, "\x80\x80", 2, 0, b, 64, &nb), 0);
    CHECK_EQ_INT(pd_tok_encode(f.tok, "cd", 2, 0, c, 64, &nc), 0);
    CHECK_EQ_INT(n, na + nb + nc);
    CHECK(memcmp(ids, a, na * 4) == 0 && memcmp(ids + na, b, nb * 4) == 0 &&
          memcmp(ids + na + nb, c, nc * 4) == 0);
    /* 0xFF and 0xC0 are not in this vocabulary's alphabet: one fused unknown */
    CHECK_EQ_INT(pd_tok_encode(f.tok, "\xFF\xC0", 2, 0, ids, 64, &n), 0);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(ids[0], pd_tok_unk(f.tok));
    tok_fix_done(&f);
}

/* SentencePiece, ill-formed UTF-8: every such byte is a character of its
 * own, so it goes to its <0xNN> byte token and round-trips. */
static void tok_invalid_utf8_spm_byte_fallback(void)
{
    struct tok_fix f;
    int32_t ids[64];
    size_t n, len;
    char out[256];
    static const char s[] = "a\xFF\xC3 \xE2\x82";
    tok_fix_spm(&f);
    CHECK_EQ_INT(pd_tok_encode(f.tok, s, strlen(s), PD_TOK_NO_BOS, ids, 64, &n), 0);
    bool saw_ff = false;
    for (size_t k = 0; k < n; k++) {
        CHECK(ids[k] != pd_tok_unk(f.tok));
        saw_ff |= ids[k] == pd_tok_find(f.tok, "<0xFF>", 6);
    }
    CHECK(saw_ff);
    CHECK_EQ_INT(pd_tok_decode(f.tok, ids, n, PD_TOK_DECODE_RAW, out, sizeof(out), &len), 0);
    CHECK(len == strlen(s) && memcmp(out, s, len) == 0);
    CHECK_EQ_INT(pd_tok_decode(f.tok, ids, n, 0, out, sizeof(out), &len), 0);
    CHECK_STR(out, "a\xEF\xBF\xBD\xEF\xBF\xBD \xEF\xBF\xBD");
    tok_fix_done(&f);
}

/* Stream ids one at a time: every piece is whole UTF-8 and the pieces add
 * up to pd_tok_decode of all of them. */
static void check_stream(const struct pd_tokenizer *tok, const int32_t *ids, size_t n,
                         unsigned flags, struct pd_detok *d)
{
    static char acc[4 * MAX_IDS], full[4 * MAX_IDS];
    size_t al = 0, fl, len;
    const char *s;
    for (size_t i = 0; i < n; i++) {
        CHECK_EQ_INT(pd_detok_push(d, ids[i], &s, &len), 0);
        CHECK_EQ_INT(pd_utf8_valid_prefix((const uint8_t *)s, len), len);
        CHECK(al + len < sizeof(acc));
        memcpy(acc + al, s, len);
        al += len;
    }
    pd_detok_flush(d, &s, &len);
    CHECK_EQ_INT(pd_utf8_valid_prefix((const uint8_t *)s, len), len);
    memcpy(acc + al, s, len);
    al += len;
    CHECK_EQ_INT(pd_tok_decode(tok, ids, n, flags, full, sizeof(full), &fl), 0);
    CHECK_EQ_INT(al, fl);
    CHECK(memcmp(acc, full, fl) == 0);
}

static void stream_corpus(const struct pd_tokenizer *tok, const char *gold_name)
{
    struct jl gold;
    struct pd_detok *d, *ds;
    jl_load(&gold, gold_name);
    CHECK_EQ_INT(pd_detok_new(tok, 0, &d), 0);
    CHECK_EQ_INT(pd_detok_new(tok, PD_TOK_SKIP_SPECIAL, &ds), 0);
    for (size_t i = 0; i < gold.n; i++) {
        size_t n;
        int32_t *ids = jl_ids(gold.row[i], "sp", &n);
        if (!ids)
            ids = jl_ids(gold.row[i], "ids", &n);
        check_stream(tok, ids, n, 0, d); /* the detokenizer is reused across streams */
        check_stream(tok, ids, n, PD_TOK_SKIP_SPECIAL, ds);
        free(ids);
    }
    pd_detok_free(d);
    pd_detok_free(ds);
    jl_free(&gold);
}

static void tok_stream_equals_full_decode(void)
{
    struct tok_fix f;
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF);
    stream_corpus(f.tok, "tokenizer_smollm.jsonl");
    tok_fix_done(&f);
    tok_fix_spm(&f);
    stream_corpus(f.tok, "tokenizer_spm.jsonl");
    tok_fix_done(&f);
}

/* A character split across tokens comes out whole, after its last byte;
 * a stream that ends inside one flushes U+FFFD. */
static void tok_stream_holds_cut_characters(void)
{
    struct tok_fix f;
    struct pd_detok *d;
    int32_t ids[16];
    size_t n, len;
    const char *s;
    static const char emoji[] = "\xF0\x9F\x99\x82"; /* 🙂: several byte-level tokens */
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF);
    CHECK_EQ_INT(pd_tok_encode(f.tok, emoji, 4, 0, ids, 16, &n), 0);
    CHECK(n >= 2);
    CHECK_EQ_INT(pd_detok_new(f.tok, 0, &d), 0);
    for (size_t i = 0; i + 1 < n; i++) {
        CHECK_EQ_INT(pd_detok_push(d, ids[i], &s, &len), 0);
        CHECK_EQ_INT(len, 0);
    }
    CHECK_EQ_INT(pd_detok_push(d, ids[n - 1], &s, &len), 0);
    CHECK(len == 4 && memcmp(s, emoji, 4) == 0);
    pd_detok_flush(d, &s, &len);
    CHECK_EQ_INT(len, 0);
    /* the stream ends after the first part: U+FFFD, once */
    CHECK_EQ_INT(pd_detok_push(d, ids[0], &s, &len), 0);
    CHECK_EQ_INT(len, 0);
    pd_detok_flush(d, &s, &len);
    CHECK_STR(s, "\xEF\xBF\xBD");
    CHECK_EQ_INT(pd_detok_push(d, 49152, &s, &len), -EINVAL);
    CHECK_EQ_INT(pd_detok_new(f.tok, PD_TOK_DECODE_RAW, &d), -EINVAL); /* d untouched */
    pd_detok_free(d);
    tok_fix_done(&f);
}

/* SentencePiece: the space its normalizer put first is stripped once, at
 * the start of the stream (and of the full decode). */
static void tok_spm_strips_one_leading_space(void)
{
    struct tok_fix f;
    int32_t ids[64];
    size_t n, len;
    char out[128];
    tok_fix_spm(&f);
    CHECK_EQ_INT(pd_tok_encode(f.tok, "Hello world", 11, PD_TOK_NO_BOS, ids, 64, &n), 0);
    CHECK_EQ_INT(pd_tok_decode(f.tok, ids, n, 0, out, sizeof(out), &len), 0);
    CHECK_STR(out, "Hello world");
    CHECK_EQ_INT(pd_tok_encode(f.tok, "  two", 5, 0, ids, 64, &n), 0); /* with BOS */
    CHECK_EQ_INT(pd_tok_decode(f.tok, ids, n, PD_TOK_SKIP_SPECIAL, out, sizeof(out), &len), 0);
    CHECK_STR(out, "  two");
    CHECK_EQ_INT(pd_tok_decode(f.tok, ids, n, 0, out, sizeof(out), &len), 0);
    CHECK_STR(out, "<s>   two"); /* transformers: nothing to strip before "<s>" */
    tok_fix_done(&f);
}

/* --- several threads encode at once ------------------------------------ */

struct thr {
    const struct pd_tokenizer *tok;
    struct jl *corpus;
    size_t start;
    int bad;
};

static void *encode_all(void *arg)
{
    struct thr *t = arg;
    int32_t *a = malloc(MAX_IDS * sizeof(*a)), *b = malloc(MAX_IDS * sizeof(*b));
    for (size_t k = 0; k < t->corpus->n; k++) {
        size_t i = (t->start + k) % t->corpus->n, len = 0, na, nb;
        char *text = jl_bytes(t->corpus->row[i], "text", &len);
        pd_tok_encode(t->tok, text, len, PD_TOK_PARSE_SPECIAL, a, MAX_IDS, &na);
        pd_tok_encode(t->tok, text, len, PD_TOK_PARSE_SPECIAL, b, MAX_IDS, &nb);
        t->bad += !same_ids(a, na, b, nb);
        free(text);
    }
    free(a);
    free(b);
    return NULL;
}

static void tok_encode_from_threads(void)
{
    struct tok_fix f;
    struct jl corpus;
    pthread_t th[4];
    struct thr arg[4];
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF);
    jl_load(&corpus, "tokenizer_corpus.jsonl");
    for (int i = 0; i < 4; i++) {
        arg[i] = (struct thr){f.tok, &corpus, (size_t)i * corpus.n / 4, 0};
        CHECK_EQ_INT(pthread_create(&th[i], NULL, encode_all, &arg[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(arg[i].bad, 0);
    }
    jl_free(&corpus);
    tok_fix_done(&f);
}

/* --- load errors, from GGUF images built in memory ---------------------- */

struct vocab_opts {
    const char *model; /* NULL: no tokenizer.ggml.model */
    const char *pre;
    int n_types; /* token_type entries (3 = right) */
    const char *merge; /* the one merge */
    uint32_t bos;
    bool no_merges;
    size_t long_token; /* > 0: a 4th token this long */
};

static void gb_arr_hdr(struct gb *b, const char *key, uint32_t type, uint64_t n)
{
    gb_str(b, key);
    gb_u32(b, PD_GGUF_ARRAY);
    gb_u32(b, type);
    gb_u64(b, n);
}

/* tokens "a", "b", "ab" (+ a long one), merge "a b". */
static struct gb build_vocab(const struct vocab_opts *o)
{
    struct gb b = {0};
    uint64_t nkv = 4 + (o->model != NULL) + (o->pre != NULL) + (o->n_types > 0) + !o->no_merges;
    uint32_t ntok = 3 + (o->long_token > 0);
    gb_u32(&b, 0x46554747); /* "GGUF" */
    gb_u32(&b, 3);
    gb_u64(&b, 0);
    gb_u64(&b, nkv);
    gb_kv_str(&b, "general.architecture", "llama");
    if (o->model)
        gb_kv_str(&b, "tokenizer.ggml.model", o->model);
    if (o->pre)
        gb_kv_str(&b, "tokenizer.ggml.pre", o->pre);
    gb_arr_hdr(&b, "tokenizer.ggml.tokens", PD_GGUF_STRING, ntok);
    gb_str(&b, "a");
    gb_str(&b, "b");
    gb_str(&b, "ab");
    if (o->long_token) {
        char *s = malloc(o->long_token + 1);
        memset(s, 'x', o->long_token);
        s[o->long_token] = '\0';
        gb_str(&b, s);
        free(s);
    }
    if (o->n_types > 0) {
        gb_arr_hdr(&b, "tokenizer.ggml.token_type", PD_GGUF_I32, (uint64_t)o->n_types);
        for (int i = 0; i < o->n_types; i++)
            gb_u32(&b, 1);
    }
    if (!o->no_merges) {
        gb_arr_hdr(&b, "tokenizer.ggml.merges", PD_GGUF_STRING, 1);
        gb_str(&b, o->merge ? o->merge : "a b");
    }
    gb_kv_u32(&b, "tokenizer.ggml.bos_token_id", o->bos);
    gb_kv_u32(&b, "tokenizer.ggml.unknown_token_id", 0);
    gb_pad(&b, 32);
    return b;
}

static int load_vocab(const struct vocab_opts *o, enum pd_tok_pre pre, char *err, size_t errlen,
                      struct pd_tokenizer **tok)
{
    struct gb b = build_vocab(o);
    struct pd_gguf *g = NULL;
    struct pd_tok_opts opts = {.pre = pre};
    *tok = NULL;
    int rc = pd_gguf_parse(b.p, b.n, &g, err, errlen);
    if (rc == 0)
        rc = pd_tok_load_opts(g, &opts, tok, err, errlen);
    pd_gguf_free(g); /* the tokenizer keeps no pointer into the image */
    free(b.p);
    return rc;
}

static void tok_load_minimal_vocab(void)
{
    struct vocab_opts o = {.model = "gpt2", .n_types = 3};
    struct pd_tokenizer *tok;
    char err[256];
    int32_t ids[8];
    size_t n, len;
    char out[16];
    CHECK_EQ_INT(load_vocab(&o, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), 0);
    CHECK_EQ_INT(pd_tok_encode(tok, "ab", 2, 0, ids, 8, &n), 0);
    CHECK(n == 1 && ids[0] == 2);
    /* "z" and "!" have no token: the unknown token (id 0, "a" here), one per
     * run of unknown characters within a pre-token, as transformers does */
    CHECK_EQ_INT(pd_tok_encode(tok, "abzz!a", 6, 0, ids, 8, &n), 0);
    CHECK_EQ_INT(n, 4); /* "abzz" -> ab <unk>, "!" -> <unk>, "a" -> a */
    CHECK(ids[0] == 2 && ids[1] == 0 && ids[2] == 0 && ids[3] == 0);
    CHECK_EQ_INT(pd_tok_decode(tok, ids, n, 0, out, sizeof(out), &len), 0);
    CHECK_STR(out, "abaaa");
    pd_tok_free(tok);
    CHECK(pd_tok_free(NULL) == NULL);
}

static void tok_load_refuses_unsupported_types(void)
{
    static const char *const models[] = {"bert", "t5", "rwkv", "no_vocab", "gpt3"};
    struct pd_tokenizer *tok;
    char err[256];
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++) {
        struct vocab_opts o = {.model = models[i], .n_types = 3};
        CHECK_EQ_INT(load_vocab(&o, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), -ENOTSUP);
        CHECK_CONTAINS(err, models[i]);
        CHECK_CONTAINS(err, "not supported");
        CHECK(tok == NULL);
    }
    struct vocab_opts none = {.n_types = 3};
    CHECK_EQ_INT(load_vocab(&none, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), -ENOENT);
    CHECK_CONTAINS(err, "no tokenizer");
    /* an unknown pre-tokenizer is an error only where it would be used */
    struct vocab_opts pre = {.model = "gpt2", .pre = "mystery-pre", .n_types = 3};
    CHECK_EQ_INT(load_vocab(&pre, PD_TOK_PRE_DECLARED, err, sizeof(err), &tok), -ENOTSUP);
    CHECK_CONTAINS(err, "mystery-pre");
    CHECK_EQ_INT(load_vocab(&pre, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), 0);
    CHECK_STR(pd_tok_pre_declared(tok), "mystery-pre");
    pd_tok_free(tok);
    CHECK_EQ_INT(pd_tok_load(NULL, &tok, err, sizeof(err)), -EINVAL);
}

static void tok_load_refuses_inconsistent_metadata(void)
{
    struct pd_tokenizer *tok;
    char err[256];
    struct vocab_opts o = {.model = "gpt2", .n_types = 2};
    CHECK_EQ_INT(load_vocab(&o, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), -EINVAL);
    CHECK_CONTAINS(err, "token_type");
    o = (struct vocab_opts){.model = "gpt2", .n_types = 3, .merge = "a c"};
    CHECK_EQ_INT(load_vocab(&o, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), -EINVAL);
    CHECK_CONTAINS(err, "not in the vocabulary");
    o = (struct vocab_opts){.model = "gpt2", .n_types = 3, .merge = "ab"};
    CHECK_EQ_INT(load_vocab(&o, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), -EINVAL);
    CHECK_CONTAINS(err, "'A B'");
    o = (struct vocab_opts){.model = "gpt2", .n_types = 3, .bos = 3};
    CHECK_EQ_INT(load_vocab(&o, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), -EINVAL);
    CHECK_CONTAINS(err, "bos_token_id");
    o = (struct vocab_opts){.model = "gpt2", .n_types = 3, .no_merges = true};
    CHECK_EQ_INT(load_vocab(&o, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), -EINVAL);
    CHECK_CONTAINS(err, "merges");
    o = (struct vocab_opts){.model = "llama", .no_merges = true};
    CHECK_EQ_INT(load_vocab(&o, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), -EINVAL);
    CHECK_CONTAINS(err, "scores");
    o = (struct vocab_opts){.model = "gpt2", .long_token = PD_TOK_MAX_PIECE + 1};
    CHECK_EQ_INT(load_vocab(&o, PD_TOK_PRE_HF_GGUF, err, sizeof(err), &tok), -E2BIG);
    CHECK_CONTAINS(err, "bytes long");
}

static const struct pd_test tests[] = {
    PD_TEST(tok_default_corpus_matches_transformers),
    PD_TEST(tok_default_declared_pre_matches_smollm_tokenizer),
    PD_TEST(tok_spm_corpus_matches_transformers),
    PD_TEST(tok_default_metadata),
    PD_TEST(tok_eog_tokens),
    PD_TEST(tok_parse_special_only_on_request),
    PD_TEST(tok_bos_follows_metadata_unless_asked),
    PD_TEST(tok_encode_e2big_reports_count),
    PD_TEST(tok_encode_refuses_text_over_cap),
    PD_TEST(tok_decode_e2big_and_bad_ids),
    PD_TEST(tok_skip_special_on_decode),
    PD_TEST(tok_invalid_utf8_byte_level),
    PD_TEST(tok_invalid_utf8_spm_byte_fallback),
    PD_TEST(tok_stream_equals_full_decode),
    PD_TEST(tok_stream_holds_cut_characters),
    PD_TEST(tok_spm_strips_one_leading_space),
    PD_TEST(tok_encode_from_threads),
    PD_TEST(tok_load_minimal_vocab),
    PD_TEST(tok_load_refuses_unsupported_types),
    PD_TEST(tok_load_refuses_inconsistent_metadata),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
