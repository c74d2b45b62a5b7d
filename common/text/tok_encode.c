/* common/text/tokenizer: text -> ids. Control-token split, pre-tokenization
 * (PCRE2), BPE. The BPE loop reproduces Hugging Face tokenizers' Word::merge_all
 * step by step (a heap of (rank, position), stale entries recognised by the
 * merged id), because parity means the same answer in every corner, not
 * only on well-formed merge lists. */
#include "tokenizer_internal.h"
#include "nfc.h"
#include "utf8.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whitespace as Oniguruma's \s sees it under Unicode (the White_Space
 * property), which is what transformers' regex engine uses; PCRE2's own \s
 * adds U+180E. */
#define WS "\\p{White_Space}"
#define NOT_WS "\\P{White_Space}"

/* GPT-2's pattern, as tokenizers' ByteLevel pre-tokenizer writes it. */
static const char re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|" WS "+(?!" NOT_WS ")|"
    WS "+";

/* Llama-3's (tokenizer.ggml.pre = "llama-bpe"). */
static const char re_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^" WS
    "\\p{L}\\p{N}]+[\\r\\n]*|" WS "*[\\r\\n]+|" WS "+(?!" NOT_WS ")|" WS "+";

/* Digits one at a time (tokenizers' Digits(individual_digits=True)). */
static const char re_digit[] = "\\p{N}";

/* tokenizer.ggml.pre names honoured with PD_TOK_PRE_DECLARED, and the regex
 * chain each means (llama.cpp's table for the same names). */
static const struct {
    const char *name;
    const char *re[PD_TOK_MAX_RE];
} pre_table[] = {
    {"gpt2", {re_gpt2}},
    {"gpt-2", {re_gpt2}},
    {"default", {re_gpt2}},
    {"smollm", {re_digit, re_gpt2}},
    {"starcoder", {re_digit, re_gpt2}},
    {"refact", {re_digit, re_gpt2}},
    {"codeshell", {re_digit, re_gpt2}},
    {"llama-bpe", {re_llama3}},
    {"llama3", {re_llama3}},
};

int tok_pretok_init(struct pd_tokenizer *t, char *err, size_t errlen)
{
    const char *const *chain = NULL;
    static const char *const hf_chain[PD_TOK_MAX_RE] = {re_gpt2};

    if (t->pre == PD_TOK_PRE_HF_GGUF) {
        chain = hf_chain;
        t->pre_used = "gpt2 (transformers' GGUF conversion)";
    } else {
        for (size_t i = 0; i < sizeof(pre_table) / sizeof(pre_table[0]); i++)
            if (strcmp(pre_table[i].name, t->pre_declared) == 0) {
                chain = pre_table[i].re;
                t->pre_used = pre_table[i].name;
            }
        if (!chain) {
            snprintf(err, errlen,
                     "tokenizer.ggml.pre '%s' is not supported (supported: gpt2, default, smollm, "
                     "starcoder, refact, codeshell, llama-bpe)",
                     t->pre_declared);
            return -ENOTSUP;
        }
    }
    int n = 0;
    while (n < PD_TOK_MAX_RE && chain[n])
        n++;
    return tok_pretok_compile(t, chain, n, err, errlen);
}

/* tokenizers' patterns (Oniguruma) for PCRE2: \s and \S outside and inside
 * classes become the White_Space property, as Oniguruma reads them under
 * Unicode; everything else is the same syntax. out: 4 * n + 1 bytes. */
static void onig_to_pcre2(const char *in, char *out)
{
    size_t o = 0;
    for (size_t i = 0; in[i]; i++) {
        if (in[i] == '\\' && (in[i + 1] == 's' || in[i + 1] == 'S')) {
            const char *p = in[i + 1] == 's' ? WS : NOT_WS;
            memcpy(out + o, p, strlen(p));
            o += strlen(p);
            i++;
        } else if (in[i] == '\\' && in[i + 1]) {
            out[o++] = in[i++];
            out[o++] = in[i];
        } else {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
}

int tok_pretok_compile(struct pd_tokenizer *t, const char *const *chain, int n, char *err,
                       size_t errlen)
{
    if (n > PD_TOK_MAX_RE)
        return pd_errf(err, errlen, -ENOTSUP, "more than %d pre-tokenizer patterns",
                       PD_TOK_MAX_RE);
    for (int i = 0; i < n; i++) {
        int ec;
        PCRE2_SIZE eoff;
        size_t len = strlen(chain[i]);
        char *pat = malloc(8 * len + 1);
        if (!pat)
            return -ENOMEM;
        onig_to_pcre2(chain[i], pat);
        t->re[i] = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &ec, &eoff, NULL);
        free(pat);
        if (!t->re[i]) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(ec, msg, sizeof(msg));
            return pd_errf(err, errlen, -EINVAL, "pre-tokenizer regex: %s at %zu", (char *)msg,
                           (size_t)eoff);
        }
        /* JIT is several times faster; without it (no JIT on this CPU) the
         * interpreter gives the same matches. */
        (void)pcre2_jit_compile(t->re[i], PCRE2_JIT_COMPLETE);
        t->n_re = i + 1;
    }
    return 0;
}

/* --- per-call state: nothing shared, so encode is reentrant ----------- */

struct sym {
    int32_t id; /* -1: merged into its left neighbour */
    int32_t prev, next; /* -1 at the ends */
};

struct hent {
    uint32_t rank;
    uint32_t pos;
    int32_t id;
};

struct enc {
    const struct pd_tokenizer *t;
    int32_t *ids;
    size_t cap, n;
    struct sym *sym;
    size_t sym_cap, ns;
    struct hent *heap;
    size_t heap_cap, heap_n;
    uint8_t *norm; /* SPM: the normalized segment */
    size_t norm_cap;
    pcre2_match_data *md;
    const uint8_t *text0; /* the whole text: a segment at its start is the first */
    uint8_t *nfc; /* the segment in NFC (t->nfc) */
    size_t nfc_cap;
    bool parse_special;
};

static void emit(struct enc *e, int32_t id)
{
    if (e->n < e->cap)
        e->ids[e->n] = id;
    e->n++;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

static void sym_push(struct enc *e, int32_t id)
{
    struct sym *s = &e->sym[e->ns];
    s->id = id;
    s->prev = (int32_t)e->ns - 1;
    s->next = (int32_t)e->ns + 1;
    e->ns++;
}

/* Binary min-heap on (rank, pos): tokenizers' BinaryHeap<Merge> order. */
static bool hless(const struct hent *a, const struct hent *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static int hpush(struct enc *e, uint32_t rank, uint32_t pos, int32_t id)
{
    if (grow((void **)&e->heap, &e->heap_cap, e->heap_n + 1, sizeof(*e->heap)) < 0)
        return -ENOMEM;
    size_t i = e->heap_n++;
    struct hent v = {rank, pos, id};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(&v, &e->heap[p]))
            break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = v;
    return 0;
}

static struct hent hpop(struct enc *e)
{
    struct hent top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && hless(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!hless(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n)
        e->heap[i] = last;
    return top;
}

static int try_pair(struct enc *e, uint32_t pos)
{
    const struct sym *s = e->sym;
    if (s[pos].next < 0)
        return 0;
    const struct merge_slot *m = tok_merge_get(e->t, s[pos].id, s[s[pos].next].id);
    return m ? hpush(e, m->rank, pos, m->id) : 0;
}

/* Merge e->sym[0..ns) and emit the result. */
static int bpe_merge_emit(struct enc *e)
{
    struct sym *s = e->sym;
    size_t ns = e->ns;

    if (ns == 0)
        return 0;
    s[ns - 1].next = -1;
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < ns; i++)
        if (try_pair(e, (uint32_t)i) < 0)
            return -ENOMEM;
    while (e->heap_n) {
        struct hent top = hpop(e);
        struct sym *a = &s[top.pos];
        if (a->id < 0 || a->next < 0)
            continue;
        struct sym *b = &s[a->next];
        const struct merge_slot *m = tok_merge_get(e->t, a->id, b->id);
        if (!m || m->id != top.id)
            continue; /* stale: the pair here changed since it was queued */
        a->id = top.id;
        a->next = b->next;
        b->id = -1;
        if (a->next >= 0)
            s[a->next].prev = (int32_t)top.pos;
        if ((a->prev >= 0 && try_pair(e, (uint32_t)a->prev) < 0) || try_pair(e, top.pos) < 0)
            return -ENOMEM;
    }
    for (int32_t i = 0; i >= 0; i = s[i].next)
        emit(e, s[i].id);
    return 0;
}

/* Hugging Face's unknown handling (BPE::merge_word with fuse_unk): unknown
 * characters in a row become one unknown symbol; a known character flushes it
 * first; byte-fallback tokens do not (tokenizers' order, kept for parity).
 * Without an unknown token the character is dropped, as tokenizers does. */
static void unk_flush(struct enc *e, bool *pending)
{
    if (*pending)
        sym_push(e, e->t->unk);
    *pending = false;
}

/* Byte-level BPE of one pre-token. */
static int bpe_word(struct enc *e, const uint8_t *s, size_t n)
{
    const struct pd_tokenizer *t = e->t;
    bool unk = false;

    if (t->ignore_merges && n <= PD_TOK_MAX_PIECE) {
        /* the pre-token in the byte alphabet, looked up as a vocabulary
         * entry (tokenizers' ignore_merges) */
        uint8_t w[2 * PD_TOK_MAX_PIECE];
        size_t o = 0;
        for (size_t i = 0; i < n; i++)
            o += pd_utf8_put(t->byte_cp[s[i]], w + o);
        int32_t id = tok_strtab_get(t, &t->by_text, false, w, o);
        if (id >= 0) {
            emit(e, id);
            return 0;
        }
    }
    if (n <= t->max_piece) {
        int32_t id = tok_strtab_get(t, &t->by_piece, true, s, n);
        if (id >= 0) { /* by_piece holds only tokens that BPE rebuilds whole */
            emit(e, id);
            return 0;
        }
    }
    size_t need = 0;
    for (size_t i = 0; i < n; i++)
        need += t->byte_nsym[s[i]] ? t->byte_nsym[s[i]] : 1;
    if (grow((void **)&e->sym, &e->sym_cap, need, sizeof(*e->sym)) < 0)
        return -ENOMEM;
    e->ns = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = s[i];
        if (t->byte_nsym[b] && !t->byte_fb[b]) {
            unk_flush(e, &unk);
            sym_push(e, t->byte_sym[b][0]);
        } else if (t->byte_nsym[b]) {
            for (int k = 0; k < t->byte_nsym[b]; k++)
                sym_push(e, t->byte_sym[b][k]);
        } else {
            unk = t->unk >= 0;
            if (t->unk_each)
                unk_flush(e, &unk);
        }
    }
    unk_flush(e, &unk);
    return bpe_merge_emit(e);
}

/* SentencePiece-style BPE of one normalized segment: symbols are characters
 * (an ill-formed byte counts as a character of its own), then byte fallback,
 * then unknown. */
static int bpe_chars(struct enc *e, const uint8_t *s, size_t n)
{
    const struct pd_tokenizer *t = e->t;
    bool unk = false;

    if (grow((void **)&e->sym, &e->sym_cap, n, sizeof(*e->sym)) < 0)
        return -ENOMEM;
    e->ns = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        bool cut;
        size_t k = pd_utf8_next(s + i, n - i, &cp, &cut);
        if (cp < 0)
            k = 1;
        int32_t id = tok_strtab_get(t, &t->by_text, false, s + i, k);
        if (id >= 0) {
            unk_flush(e, &unk);
            sym_push(e, id);
        } else {
            bool all = true;
            for (size_t j = 0; j < k; j++)
                all = all && t->byte_tok[s[i + j]] >= 0;
            if (all)
                for (size_t j = 0; j < k; j++)
                    sym_push(e, t->byte_tok[s[i + j]]);
            else
                unk = t->unk >= 0;
            if (!all && t->unk_each)
                unk_flush(e, &unk);
        }
        i += k;
    }
    unk_flush(e, &unk);
    return bpe_merge_emit(e);
}

/* Apply regex `level` to s[0..n): matches and the gaps between them both
 * become pieces (tokenizers' "isolated" split), each split further by the
 * next regex, the last ones go to BPE. */
static int split(struct enc *e, const uint8_t *s, size_t n, int level)
{
    const struct pd_tokenizer *t = e->t;
    if (level == t->n_re)
        return bpe_word(e, s, n);

    size_t pos = 0, gap = 0;
    int rc = 0;
    while (pos < n) {
        int m = pcre2_match(t->re[level], s, n, pos, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0)
            return -EINVAL; /* cannot happen on valid UTF-8 with these patterns */
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* never for our patterns; step past one character */
            int32_t cp;
            bool cut;
            pos = ms + pd_utf8_next(s + ms, n - ms, &cp, &cut);
            continue;
        }
        if (ms > gap && (rc = split(e, s + gap, ms - gap, level + 1)) < 0)
            return rc;
        if ((rc = split(e, s + ms, me - ms, level + 1)) < 0)
            return rc;
        pos = gap = me;
    }
    if (gap < n)
        rc = split(e, s + gap, n - gap, level + 1);
    return rc;
}

/* One stretch of text between control tokens. */
static int segment(struct enc *e, const uint8_t *s, size_t n)
{
    const struct pd_tokenizer *t = e->t;
    int rc = 0;

    if (n == 0)
        return 0;
    const bool first = s == e->text0;
    if (t->nfc && !pd_nfc_quick(s, n)) {
        if (grow((void **)&e->nfc, &e->nfc_cap, pd_nfc_max(n), 1) < 0 ||
            pd_nfc(s, n, e->nfc, &n) < 0)
            return -ENOMEM;
        s = e->nfc;
    }
    if (t->kind == TOK_SPM) {
        /* transformers' legacy Llama normalizer: Prepend("▁") on a non-empty
         * segment, Replace(" ", "▁") */
        size_t sp = 0;
        for (size_t i = 0; i < n; i++)
            sp += s[i] == ' ';
        size_t need = n + 2 * sp + 3;
        if (grow((void **)&e->norm, &e->norm_cap, need, 1) < 0)
            return -ENOMEM;
        size_t o = 0;
        /* Metaspace prepends only to text not already starting with a
         * space ("first": only at the start of the whole text) */
        const bool meta = t->spm_prefix == TOK_PREFIX_META_ALWAYS ||
                          t->spm_prefix == TOK_PREFIX_META_FIRST;
        if (t->spm_prefix == TOK_PREFIX_EACH ||
            (meta && s[0] != ' ' && !(n >= 3 && memcmp(s, "\xE2\x96\x81", 3) == 0) &&
             (t->spm_prefix == TOK_PREFIX_META_ALWAYS || first)))
            memcpy(e->norm, "\xE2\x96\x81", 3), o = 3;
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ')
                memcpy(e->norm + o, "\xE2\x96\x81", 3), o += 3;
            else
                e->norm[o++] = s[i];
        }
        return bpe_chars(e, e->norm, o);
    }
    /* Byte-level: the regexes see only well-formed UTF-8. A run of bytes
     * that is not is a pre-token of its own; its bytes go through the
     * byte-level alphabet like any others, so they round-trip. */
    for (size_t i = 0; i < n && rc == 0;) {
        size_t v = pd_utf8_valid_prefix(s + i, n - i);
        if (v) {
            rc = split(e, s + i, v, 0);
            i += v;
            continue;
        }
        size_t j = i;
        while (j < n) {
            int32_t cp;
            bool cut;
            size_t k = pd_utf8_next(s + j, n - j, &cp, &cut);
            if (cp >= 0)
                break;
            j += k;
        }
        rc = bpe_word(e, s + i, j - i);
        i = j;
    }
    return rc;
}

/* Leftmost-longest match of control tokens (tokenizers' added-vocabulary
 * split), text between them encoded as segments. */
static int split_special(struct enc *e, const uint8_t *s, size_t n)
{
    const struct pd_tokenizer *t = e->t;
    size_t start = 0;
    int rc;

    for (size_t i = 0; i < n; i++) {
        uint32_t lo = t->spec_first[s[i]], hi = t->spec_first[s[i] + 1];
        for (uint32_t k = lo; k < hi; k++) {
            int32_t id = t->spec[k];
            size_t tl = t->tok[id].text_len;
            if (!e->parse_special && (t->tok[id].flags & TF_SPECIAL))
                continue; /* a special token's text is text unless asked */
            if (tl > n - i || memcmp(s + i, tok_text(t, (uint32_t)id), tl) != 0)
                continue;
            if ((rc = segment(e, s + start, i - start)) < 0)
                return rc;
            emit(e, id);
            i += tl - 1;
            start = i + 1;
            break;
        }
    }
    return segment(e, s + start, n - start);
}

static void enc_done(struct enc *e)
{
    free(e->nfc);
    free(e->sym);
    free(e->heap);
    free(e->norm);
    pcre2_match_data_free(e->md);
}

int pd_tok_encode(const struct pd_tokenizer *t, const char *text, size_t len, unsigned flags,
                  int32_t *ids, size_t cap, size_t *n)
{
    if (!t || (!text && len) || !n || (!ids && cap))
        return -EINVAL;
    if (len > PD_TOK_MAX_TEXT)
        return -EMSGSIZE;

    const uint8_t *s = (const uint8_t *)text;
    struct enc e = {.t = t, .ids = ids, .cap = cap, .text0 = s,
                    .parse_special = (flags & PD_TOK_PARSE_SPECIAL) != 0};
    bool bos = (flags & PD_TOK_ADD_BOS) ? true : (flags & PD_TOK_NO_BOS) ? false : t->add_bos;
    int rc = 0;

    if (t->n_re && !(e.md = pcre2_match_data_create(1, NULL)))
        return -ENOMEM;
    for (uint8_t i = 0; bos && i < t->n_prefix; i++)
        emit(&e, t->prefix[i]);
    if (len)
        rc = t->n_spec && (e.parse_special || t->has_plain_added) ? split_special(&e, s, len)
                                                                  : segment(&e, s, len);
    for (uint8_t i = 0; rc == 0 && (t->suffix_with_prefix ? bos : t->add_eos) && i < t->n_suffix;
         i++)
        emit(&e, t->suffix[i]);
    enc_done(&e);
    if (rc < 0)
        return rc;
    *n = e.n;
    return e.n > cap ? -E2BIG : 0;
}

int tok_bpe_bytes(const struct pd_tokenizer *t, const uint8_t *s, size_t n, int32_t *ids,
                  size_t cap)
{
    struct enc e = {.t = t, .ids = ids, .cap = cap};
    int rc = bpe_word(&e, s, n);
    enc_done(&e);
    return rc < 0 ? rc : (int)e.n;
}
