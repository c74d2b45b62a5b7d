/* common/text/tokenizer: loading from GGUF metadata, decoding, streaming
 * detokenization, accessors. Encoding is in tok_encode.c. */
#include "tokenizer_internal.h"

#include "gguf.h"
#include "utf8.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- string -> id tables ----------------------------------------------- */

int tok_strtab_init(struct strtab *st, uint32_t n)
{
    uint32_t size = 16;
    while (size < 2 * n)
        size *= 2;
    st->slot = calloc(size, sizeof(*st->slot));
    if (!st->slot)
        return -ENOMEM;
    st->mask = size - 1;
    return 0;
}

/* Insert id under its key; a later id replaces an earlier one with the same
 * key (transformers builds the vocabulary as {token: id} in order). */
void tok_strtab_put(struct pd_tokenizer *t, struct strtab *st, bool by_piece, uint32_t id)
{
    const void *k;
    size_t n;
    tok_key_of(t, by_piece, id, &k, &n);
    for (uint32_t i = tok_hash(k, n) & st->mask;; i = (i + 1) & st->mask) {
        if (st->slot[i] == 0) {
            st->slot[i] = id + 1;
            return;
        }
        const void *k2;
        size_t n2;
        tok_key_of(t, by_piece, st->slot[i] - 1, &k2, &n2);
        if (n2 == n && memcmp(k, k2, n) == 0) {
            st->slot[i] = id + 1;
            return;
        }
    }
}

/* --- merges ------------------------------------------------------------- */

int tok_merges_init(struct pd_tokenizer *t, uint32_t n)
{
    uint32_t size = 16;
    while (size < 2 * n)
        size *= 2;
    t->merges = malloc((size_t)size * sizeof(*t->merges));
    if (!t->merges)
        return -ENOMEM;
    for (uint32_t i = 0; i < size; i++)
        t->merges[i].key = UINT64_MAX;
    t->merge_mask = size - 1;
    return 0;
}

/* A later merge of the same pair replaces the earlier (tokenizers collects
 * the merge list into a map). */
void tok_merges_put(struct pd_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = (uint32_t)(h >> 32) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        struct merge_slot *m = &t->merges[i];
        if (m->key == UINT64_MAX || m->key == key) {
            if (m->key == UINT64_MAX)
                t->n_merges++;
            m->key = key, m->rank = rank, m->id = id;
            return;
        }
    }
}

static int merges_from_gguf(struct pd_tokenizer *t, const struct pd_gguf *g,
                            const struct pd_gguf_kv *kv, char *err, size_t errlen)
{
    if (kv->type != PD_GGUF_ARRAY || kv->arr_type != PD_GGUF_STRING)
        return pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.merges is not an array of strings");
    if (kv->arr_n > PD_TOK_MAX_MERGES)
        return pd_errf(err, errlen, -E2BIG, "tokenizer.ggml.merges: %llu merges (cap %u)",
                       (unsigned long long)kv->arr_n, PD_TOK_MAX_MERGES);
    if (tok_merges_init(t, (uint32_t)kv->arr_n) < 0)
        return -ENOMEM;
    char buf[2 * PD_TOK_MAX_PIECE + 2];
    for (uint32_t i = 0; i < kv->arr_n; i++) {
        const char *s;
        size_t n;
        if (pd_gguf_arr_str(g, kv, i, &s, &n) < 0)
            return pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.merges[%u] unreadable", i);
        const char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp - s) - 1) || n > sizeof(buf))
            return pd_errf(err, errlen, -EINVAL,
                           "tokenizer.ggml.merges[%u] is not of the form 'A B'", i);
        size_t la = (size_t)(sp - s), lb = n - la - 1;
        int32_t a = tok_strtab_get(t, &t->by_text, false, s, la);
        int32_t b = tok_strtab_get(t, &t->by_text, false, sp + 1, lb);
        memcpy(buf, s, la);
        memcpy(buf + la, sp + 1, lb);
        int32_t ab = tok_strtab_get(t, &t->by_text, false, buf, la + lb);
        if (a < 0 || b < 0 || ab < 0)
            return pd_errf(err, errlen, -EINVAL,
                           "tokenizer.ggml.merges[%u] '%.*s': %s is not in the vocabulary", i,
                           (int)(n > 64 ? 64 : n), s,
                           a < 0       ? "the left part"
                               : b < 0 ? "the right part"
                                       : "the merged token");
        tok_merges_put(t, a, b, i, ab);
    }
    return 0;
}

/* SentencePiece vocabularies in GGUF carry scores, not merges. transformers
 * (GGUFTokenizerSkeleton) derives merges from them; parity means deriving
 * them the same way: for each distinct token (first-appearance order, score
 * of its last appearance), every split into two vocabulary tokens, ordered by
 * (left score, right score) descending; then all of them ordered by the
 * merged token's score descending. Both sorts are stable. */
struct cand {
    float s, sl, sr;
    uint32_t tok_order, split;
    int32_t l, r, id;
};

static int cand_cmp(const void *pa, const void *pb)
{
    const struct cand *a = pa, *b = pb;
    if (a->s != b->s)
        return a->s > b->s ? -1 : 1;
    if (a->tok_order != b->tok_order)
        return a->tok_order < b->tok_order ? -1 : 1;
    if (a->sl != b->sl)
        return a->sl > b->sl ? -1 : 1;
    if (a->sr != b->sr)
        return a->sr > b->sr ? -1 : 1;
    return a->split < b->split ? -1 : a->split > b->split;
}

static int merges_from_scores(struct pd_tokenizer *t, char *err, size_t errlen)
{
    struct cand *c = NULL;
    size_t nc = 0, cc = 0;
    uint8_t *seen = calloc(t->n_vocab, 1);
    int rc = -ENOMEM;

    if (!seen)
        return -ENOMEM;
    uint32_t order = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        const char *s = tok_text(t, i);
        size_t n = t->tok[i].text_len;
        int32_t last = tok_strtab_get(t, &t->by_text, false, s, n);
        if (last < 0 || seen[last])
            continue;
        seen[last] = 1;
        float score = t->tok[last].score;
        uint32_t split = 0;
        for (size_t k = 0; k < n;) { /* split points at character boundaries */
            int32_t cp;
            bool cut;
            size_t step = pd_utf8_next((const uint8_t *)s + k, n - k, &cp, &cut);
            k += cp < 0 ? 1 : step;
            if (k >= n)
                break;
            int32_t l = tok_strtab_get(t, &t->by_text, false, s, k);
            int32_t r = tok_strtab_get(t, &t->by_text, false, s + k, n - k);
            if (l < 0 || r < 0)
                continue;
            if (nc == cc) {
                size_t ncap = cc ? 2 * cc : 1024;
                if (ncap > PD_TOK_MAX_MERGES) {
                    rc = pd_errf(err, errlen, -E2BIG, "scores imply more than %u merges",
                                 PD_TOK_MAX_MERGES);
                    goto out;
                }
                struct cand *q = realloc(c, ncap * sizeof(*c));
                if (!q)
                    goto out;
                c = q, cc = ncap;
            }
            c[nc++] = (struct cand){score, t->tok[l].score, t->tok[r].score, order, split++,
                                    l, r, last};
        }
        order++;
    }
    qsort(c, nc, sizeof(*c), cand_cmp);
    if ((rc = tok_merges_init(t, (uint32_t)nc)) < 0)
        goto out;
    for (size_t i = 0; i < nc; i++)
        tok_merges_put(t, c[i].l, c[i].r, (uint32_t)i, c[i].id);
    rc = 0;
out:
    free(c);
    free(seen);
    return rc;
}

/* --- byte-level alphabet (GPT-2's bytes_to_unicode) --------------------- */

static uint32_t byte_to_cp(uint8_t b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
        return b;
    /* the other 68 bytes, in order, from U+0100 */
    uint32_t n = 0;
    for (uint32_t x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174))
            n++;
    return 256 + n;
}

/* <0xHH> (either case), as tokenizers' ByteFallback decoder reads it */
static int byte_token_value(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        int d = pd_hex_digit(s[i]);
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* The bytes a token decodes to. Byte tokens give their byte. Otherwise
 * "▁" reads as a space (both decoders replace it), and a byte-level token
 * whose characters are all in the alphabet gives those bytes; one that is
 * not (a literal added token) gives its text. */
static size_t make_piece(const struct pd_tokenizer *t, const int16_t *cp_to_byte, uint32_t id,
                         uint8_t *out)
{
    const char *s = tok_text(t, id);
    size_t n = t->tok[id].text_len, o = 0;
    int bv = t->bytes_literal ? -1 : byte_token_value(s, n);
    if (bv >= 0) {
        out[0] = (uint8_t)bv;
        return 1;
    }
    if (t->kind == TOK_BYTE_LEVEL) {
        bool all = true;
        for (size_t i = 0; i < n && all;) {
            int32_t cp;
            bool cut;
            size_t k = pd_utf8_next((const uint8_t *)s + i, n - i, &cp, &cut);
            if (cp < 0 || cp >= 324 || cp_to_byte[cp] < 0)
                all = false;
            else
                out[o++] = (uint8_t)cp_to_byte[cp];
            i += k;
        }
        if (all)
            return o;
        o = 0;
    }
    for (size_t i = 0; i < n;) {
        if (n - i >= 3 && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
            out[o++] = ' ';
            i += 3;
        } else {
            out[o++] = (uint8_t)s[i++];
        }
    }
    return o;
}

/* --- load --------------------------------------------------------------- */

static int get_id(const struct pd_gguf *g, const char *key, uint32_t n_vocab, int32_t *out,
                  char *err, size_t errlen)
{
    uint32_t v;
    int rc = pd_gguf_get_u32(g, key, &v);
    if (rc == -ENOENT) {
        *out = -1;
        return 0;
    }
    if (rc < 0)
        return pd_errf(err, errlen, -EINVAL, "%s is not an unsigned integer", key);
    if (v >= n_vocab)
        return pd_errf(err, errlen, -EINVAL, "%s = %u is outside the vocabulary (%u tokens)", key,
                       v, n_vocab);
    *out = (int32_t)v;
    return 0;
}

static int get_flag(const struct pd_gguf *g, const char *key, bool dflt, bool *out, char *err,
                    size_t errlen)
{
    int v = dflt; /* the getter leaves it when the key is absent */
    int rc = pd_gguf_get_bool(g, key, &v);
    if (rc < 0 && rc != -ENOENT)
        return pd_errf(err, errlen, -EINVAL, "%s is not a boolean", key);
    *out = v != 0;
    return 0;
}

/* Per-token arrays that must match the token count. */
static const struct pd_gguf_kv *token_array(const struct pd_gguf *g, const char *key, uint64_t n,
                                            int *rc, char *err, size_t errlen)
{
    const struct pd_gguf_kv *kv = pd_gguf_find_kv(g, key);
    *rc = 0;
    if (!kv)
        return NULL;
    if (kv->type != PD_GGUF_ARRAY || kv->arr_type == PD_GGUF_STRING ||
        kv->arr_type == PD_GGUF_ARRAY)
        *rc = pd_errf(err, errlen, -EINVAL, "%s is not a numeric array", key);
    else if (kv->arr_n != n)
        *rc = pd_errf(err, errlen, -EINVAL, "%s has %llu entries for %llu tokens", key,
                      (unsigned long long)kv->arr_n, (unsigned long long)n);
    return kv;
}

static int load_tokens(struct pd_tokenizer *t, const struct pd_gguf *g, char *err, size_t errlen)
{
    const struct pd_gguf_kv *kv = pd_gguf_find_kv(g, "tokenizer.ggml.tokens");
    int rc;

    if (!kv)
        return pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.tokens is missing");
    if (kv->type != PD_GGUF_ARRAY || kv->arr_type != PD_GGUF_STRING)
        return pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.tokens is not an array of strings");
    if (kv->arr_n == 0 || kv->arr_n > PD_TOK_MAX_VOCAB)
        return pd_errf(err, errlen, kv->arr_n ? -E2BIG : -EINVAL,
                       "tokenizer.ggml.tokens: %llu tokens (1..%u)", (unsigned long long)kv->arr_n,
                       PD_TOK_MAX_VOCAB);
    t->n_vocab = (uint32_t)kv->arr_n;
    const struct pd_gguf_kv *types = token_array(g, "tokenizer.ggml.token_type", kv->arr_n, &rc,
                                                 err, errlen);
    if (rc < 0)
        return rc;
    const struct pd_gguf_kv *scores = token_array(g, "tokenizer.ggml.scores", kv->arr_n, &rc,
                                                  err, errlen);
    if (rc < 0)
        return rc;

    t->tok = calloc(t->n_vocab, sizeof(*t->tok));
    if (!t->tok)
        return -ENOMEM;
    size_t total = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        const char *s;
        size_t n;
        if (pd_gguf_arr_str(g, kv, i, &s, &n) < 0)
            return pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.tokens[%u] unreadable", i);
        if (n > PD_TOK_MAX_PIECE)
            return pd_errf(err, errlen, -E2BIG, "token %u is %zu bytes long (cap %u)", i, n,
                           PD_TOK_MAX_PIECE);
        t->tok[i].text_off = (uint32_t)total;
        t->tok[i].text_len = (uint32_t)n;
        total += n + 1;
    }
    t->text = malloc(total);
    t->piece = malloc(total);
    if (!t->text || !t->piece)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        const char *s;
        size_t n;
        int64_t ty = TT_NORMAL;
        float sc = 0;
        pd_gguf_arr_str(g, kv, i, &s, &n);
        memcpy(t->text + t->tok[i].text_off, s, n);
        t->text[t->tok[i].text_off + n] = '\0';
        if (types && (pd_gguf_arr_i64(types, i, &ty) < 0 || ty < 0 || ty > TT_BYTE))
            return pd_errf(err, errlen, -EINVAL,
                           "tokenizer.ggml.token_type[%u] is not a token type (0..6)", i);
        if (scores && (pd_gguf_arr_f32(scores, i, &sc) < 0 || !isfinite(sc)))
            return pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.scores[%u] is not a finite number",
                           i);
        t->tok[i].type = (uint8_t)ty;
        t->tok[i].score = sc;
    }
    if (tok_strtab_init(&t->by_text, t->n_vocab) < 0)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->n_vocab; i++)
        tok_strtab_put(t, &t->by_text, false, i);
    return scores ? 1 : 0;
}

static const char *const eog_texts[] = {
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|end|>", "<end_of_turn>",
    "<|end_of_text|>", "<EOT>",
};

static int spec_cmp(const void *pa, const void *pb, void *ctx)
{
    const struct pd_tokenizer *t = ctx;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    uint8_t fa = (uint8_t)tok_text(t, (uint32_t)a)[0], fb = (uint8_t)tok_text(t, (uint32_t)b)[0];
    if (fa != fb)
        return fa < fb ? -1 : 1;
    if (t->tok[a].text_len != t->tok[b].text_len) /* longest first: leftmost-longest */
        return t->tok[a].text_len > t->tok[b].text_len ? -1 : 1;
    return a < b ? -1 : a > b;
}

/* Special tokens as transformers' GGUF conversion registers them: token
 * type 3 (control), plus the unknown and BOS tokens that the fast
 * tokenizer's constructor adds (its eos_token is tokens[bos] too). */
int tok_setup_special(struct pd_tokenizer *t, const int32_t *eot)
{
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        bool sp = t->tok[i].type == TT_CONTROL || (int32_t)i == t->unk || (int32_t)i == t->bos;
        if (t->tok[i].flags & TF_ADDED) /* tokenizer.json says which are special */
            sp = t->tok[i].type == TT_CONTROL;
        if (!sp && !(t->tok[i].flags & TF_ADDED))
            continue;
        if (sp)
            t->tok[i].flags |= TF_SPECIAL;
        for (size_t k = 0; k < sizeof(eog_texts) / sizeof(eog_texts[0]); k++)
            if (strcmp(tok_text(t, i), eog_texts[k]) == 0)
                t->tok[i].flags |= TF_EOG;
        if (t->tok[i].text_len)
            t->n_spec++;
    }
    if (t->eos >= 0)
        t->tok[t->eos].flags |= TF_EOG;
    for (int k = 0; k < 2; k++)
        if (eot[k] >= 0)
            t->tok[eot[k]].flags |= TF_EOG;
    t->spec = malloc((t->n_spec ? t->n_spec : 1) * sizeof(*t->spec));
    if (!t->spec)
        return -ENOMEM;
    uint32_t k = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++)
        if ((t->tok[i].flags & (TF_SPECIAL | TF_ADDED)) && t->tok[i].text_len)
            t->spec[k++] = (int32_t)i;
    qsort_r(t->spec, t->n_spec, sizeof(*t->spec), spec_cmp, t);
    uint32_t j = 0;
    for (int b = 0; b <= 256; b++) {
        while (j < t->n_spec && (uint8_t)tok_text(t, (uint32_t)t->spec[j])[0] < b)
            j++;
        t->spec_first[b] = j;
    }
    return 0;
}

int tok_setup_pieces(struct pd_tokenizer *t)
{
    int16_t cp_to_byte[324];
    memset(cp_to_byte, -1, sizeof(cp_to_byte));
    for (int b = 0; b < 256; b++) {
        t->byte_cp[b] = byte_to_cp((uint8_t)b);
        cp_to_byte[t->byte_cp[b]] = (int16_t)b;
    }

    size_t off = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        size_t n = make_piece(t, cp_to_byte, i, t->piece + off);
        t->tok[i].piece_off = (uint32_t)off;
        t->tok[i].piece_len = (uint32_t)n;
        if (n > t->max_piece)
            t->max_piece = (uint32_t)n;
        off += n;
    }

    for (int b = 0; b < 256; b++) {
        char hex[8];
        snprintf(hex, sizeof(hex), "<0x%02X>", b);
        t->byte_tok[b] = tok_strtab_get(t, &t->by_text, false, hex, 6);
    }
    if (t->kind != TOK_BYTE_LEVEL)
        return 0;
    /* the symbols each byte starts as, per tokenizers' BPE::merge_word */
    for (int b = 0; b < 256; b++) {
        uint8_t ch[4];
        size_t k = pd_utf8_put(byte_to_cp((uint8_t)b), ch);
        int32_t id = tok_strtab_get(t, &t->by_text, false, ch, k);
        if (id >= 0) {
            t->byte_sym[b][0] = id;
            t->byte_nsym[b] = 1;
            continue;
        }
        bool all = !t->no_byte_fallback;
        for (size_t j = 0; j < k; j++)
            all = all && t->byte_tok[ch[j]] >= 0;
        if (all) {
            for (size_t j = 0; j < k; j++)
                t->byte_sym[b][j] = t->byte_tok[ch[j]];
            t->byte_nsym[b] = (uint8_t)k;
            t->byte_fb[b] = 1;
        }
    }
    return 0;
}

/* Tokens that BPE rebuilds whole from their own bytes can be looked up
 * directly when a pre-token equals them: most words are one such token. */
int tok_setup_whole(struct pd_tokenizer *t)
{
    int32_t ids[2];
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        if (t->tok[i].piece_len == 0)
            continue;
        int n = tok_bpe_bytes(t, tok_piece(t, i), t->tok[i].piece_len, ids, 2);
        if (n < 0)
            return n;
        if (n == 1 && ids[0] == (int32_t)i)
            t->tok[i].flags |= TF_WHOLE;
    }
    if (tok_strtab_init(&t->by_piece, t->n_vocab) < 0)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->n_vocab; i++)
        if (t->tok[i].flags & TF_WHOLE)
            tok_strtab_put(t, &t->by_piece, true, i);
    return 0;
}

static int load(struct pd_tokenizer *t, const struct pd_gguf *g, char *err, size_t errlen)
{
    const char *s;
    size_t n;
    int rc;

    rc = pd_gguf_get_str(g, "tokenizer.ggml.model", &s, &n);
    if (rc == -ENOENT)
        return pd_errf(err, errlen, -ENOENT,
                       "no tokenizer in the file (tokenizer.ggml.model is missing)");
    if (rc < 0)
        return pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.model is not a string");
    if (n == 4 && memcmp(s, "gpt2", 4) == 0)
        t->kind = TOK_BYTE_LEVEL;
    else if (n == 5 && memcmp(s, "llama", 5) == 0)
        t->kind = TOK_SPM;
    else
        return pd_errf(err, errlen, -ENOTSUP,
                       "tokenizer.ggml.model '%.*s' is not supported (supported: 'gpt2' byte-level "
                       "BPE, 'llama' SentencePiece BPE)",
                       (int)(n > 32 ? 32 : n), s);

    rc = pd_gguf_get_str(g, "tokenizer.ggml.pre", &s, &n);
    if (rc == 0) {
        if (n >= sizeof(t->pre_declared) || memchr(s, '\0', n))
            return pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.pre is not a short name");
        memcpy(t->pre_declared, s, n);
    } else if (rc != -ENOENT) {
        return pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.pre is not a string");
    } else if (t->kind == TOK_BYTE_LEVEL) {
        strcpy(t->pre_declared, "default");
    }

    int have_scores = load_tokens(t, g, err, errlen);
    if (have_scores < 0)
        return have_scores;

    int32_t eot[2];
    bool space_prefix = true; /* tokenizer.ggml.add_space_prefix, when absent */
    if ((rc = get_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err, errlen)) < 0 ||
        (rc = get_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err, errlen)) < 0 ||
        (rc = get_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk, err, errlen)) <
            0 ||
        (rc = get_id(g, "tokenizer.ggml.padding_token_id", t->n_vocab, &t->pad, err, errlen)) <
            0 ||
        (rc = get_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &eot[0], err, errlen)) < 0 ||
        (rc = get_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &eot[1], err, errlen)) < 0)
        return rc;
    if ((rc = get_flag(g, "tokenizer.ggml.add_bos_token", t->kind == TOK_SPM, &t->add_bos, err,
                       errlen)) < 0 ||
        (rc = get_flag(g, "tokenizer.ggml.add_eos_token", false, &t->add_eos, err, errlen)) < 0 ||
        (rc = get_flag(g, "tokenizer.ggml.add_space_prefix", true, &space_prefix, err,
                       errlen)) < 0)
        return rc;

    rc = pd_gguf_get_str(g, "tokenizer.chat_template", &s, &n);
    if (rc == 0) {
        if (n > PD_TOK_MAX_TEMPLATE)
            return pd_errf(err, errlen, -E2BIG, "tokenizer.chat_template is %zu bytes (cap %u)", n,
                           PD_TOK_MAX_TEMPLATE);
        if (!(t->chat_template = malloc(n + 1)))
            return -ENOMEM;
        memcpy(t->chat_template, s, n);
        t->chat_template[n] = '\0';
        t->chat_template_len = n;
    } else if (rc != -ENOENT) {
        return pd_errf(err, errlen, -EINVAL, "tokenizer.chat_template is not a string");
    }

    if ((rc = tok_setup_special(t, eot)) < 0 || (rc = tok_setup_pieces(t)) < 0)
        return rc;
    if (t->bos >= 0)
        t->prefix[t->n_prefix++] = t->bos;
    if (t->eos >= 0)
        t->suffix[t->n_suffix++] = t->eos;
    /* SentencePiece: "▁" before each segment, and one space stripped at decode */
    t->strip_first_space = t->kind == TOK_SPM && space_prefix;
    t->spm_prefix = space_prefix ? TOK_PREFIX_EACH : TOK_PREFIX_NONE;

    const struct pd_gguf_kv *mkv = pd_gguf_find_kv(g, "tokenizer.ggml.merges");
    if (mkv)
        rc = merges_from_gguf(t, g, mkv, err, errlen);
    else if (t->kind == TOK_SPM && have_scores)
        rc = merges_from_scores(t, err, errlen);
    else
        rc = pd_errf(err, errlen, -EINVAL, "tokenizer.ggml.merges is missing%s",
                     t->kind == TOK_SPM ? " and there are no scores to derive them from" : "");
    if (rc < 0)
        return rc;

    if (t->kind == TOK_BYTE_LEVEL) {
        if ((rc = tok_pretok_init(t, err, errlen)) < 0 || (rc = tok_setup_whole(t)) < 0)
            return rc;
    } else {
        t->pre_used = "none (SentencePiece)";
    }
    return 0;
}

int pd_tok_load_opts(const struct pd_gguf *g, const struct pd_tok_opts *opts,
                     struct pd_tokenizer **out, char *err, size_t errlen)
{
    if (!g || !out)
        return pd_errf(err, errlen, -EINVAL, "no GGUF");
    struct pd_tokenizer *t = calloc(1, sizeof(*t));
    if (!t)
        return pd_errf(err, errlen, -ENOMEM, "out of memory");
    t->pre = opts ? opts->pre : PD_TOK_PRE_HF_GGUF;
    if (t->pre != PD_TOK_PRE_HF_GGUF && t->pre != PD_TOK_PRE_DECLARED) {
        pd_tok_free(t);
        return pd_errf(err, errlen, -EINVAL, "unknown pre-tokenizer option %d", (int)t->pre);
    }
    int rc = load(t, g, err, errlen);
    if (rc < 0) {
        if (rc == -ENOMEM)
            pd_errf(err, errlen, rc, "out of memory loading the tokenizer");
        pd_tok_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int pd_tok_load(const struct pd_gguf *g, struct pd_tokenizer **out, char *err, size_t errlen)
{
    return pd_tok_load_opts(g, NULL, out, err, errlen);
}

struct pd_tokenizer *pd_tok_free(struct pd_tokenizer *t)
{
    if (!t)
        return NULL;
    for (int i = 0; i < PD_TOK_MAX_RE; i++)
        pcre2_code_free(t->re[i]);
    free(t->chat_template);
    free(t->spec);
    free(t->merges);
    free(t->by_piece.slot);
    free(t->by_text.slot);
    free(t->piece);
    free(t->text);
    free(t->tok);
    free(t);
    return NULL;
}

/* --- decode ------------------------------------------------------------- */

static bool bad_id(const struct pd_tokenizer *t, int32_t id)
{
    return id < 0 || (uint32_t)id >= t->n_vocab;
}

/* SentencePiece's decoder strips the space its normalizer put first. */
static bool strips_first_space(const struct pd_tokenizer *t)
{
    return t->strip_first_space;
}

int pd_tok_decode(const struct pd_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                  char *out, size_t cap, size_t *len)
{
    if (!t || (!ids && n) || !len || (!out && cap))
        return -EINVAL;
    size_t raw_len = 0;
    for (size_t i = 0; i < n; i++) {
        if (bad_id(t, ids[i]))
            return -EINVAL;
        if (!((flags & PD_TOK_SKIP_SPECIAL) && (t->tok[ids[i]].flags & TF_SPECIAL)))
            raw_len += t->tok[ids[i]].piece_len;
    }
    uint8_t *raw = malloc(raw_len ? raw_len : 1);
    if (!raw)
        return -ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const struct tok_entry *e = &t->tok[ids[i]];
        if ((flags & PD_TOK_SKIP_SPECIAL) && (e->flags & TF_SPECIAL))
            continue;
        memcpy(raw + o, t->piece + e->piece_off, e->piece_len);
        o += e->piece_len;
    }
    const uint8_t *r = raw;
    if (strips_first_space(t) && raw_len && raw[0] == ' ')
        r++, raw_len--;

    bool lossy = !(flags & PD_TOK_DECODE_RAW);
    size_t need = lossy ? pd_utf8_lossy(r, raw_len, NULL) : raw_len;
    int rc = 0;
    if (need + 1 > cap) {
        rc = -E2BIG;
    } else {
        if (lossy)
            pd_utf8_lossy(r, raw_len, (uint8_t *)out);
        else if (raw_len)
            memcpy(out, r, raw_len);
        out[need] = '\0';
    }
    *len = need;
    free(raw);
    return rc;
}

/* --- streaming detokenization ------------------------------------------ */

struct pd_detok {
    const struct pd_tokenizer *t;
    unsigned flags;
    bool started; /* a byte has been seen (the SentencePiece strip is done) */
    uint8_t hold[4]; /* a well-formed prefix the last piece ended with */
    size_t nhold;
    uint8_t *in; /* hold + piece */
    char *buf; /* what the last call returns */
};

int pd_detok_new(const struct pd_tokenizer *t, unsigned flags, struct pd_detok **out)
{
    if (!t || !out || (flags & ~PD_TOK_SKIP_SPECIAL))
        return -EINVAL;
    struct pd_detok *d = calloc(1, sizeof(*d));
    size_t in_cap = t->max_piece + sizeof(d->hold);
    if (!d || !(d->in = malloc(in_cap)) || !(d->buf = malloc(3 * in_cap + 1))) {
        pd_detok_free(d);
        return -ENOMEM;
    }
    d->t = t;
    d->flags = flags;
    *out = d;
    return 0;
}

struct pd_detok *pd_detok_free(struct pd_detok *d)
{
    if (!d)
        return NULL;
    free(d->in);
    free(d->buf);
    free(d);
    return NULL;
}

int pd_detok_push(struct pd_detok *d, int32_t id, const char **text, size_t *len)
{
    const struct pd_tokenizer *t = d->t;
    if (bad_id(t, id))
        return -EINVAL;
    const struct tok_entry *e = &t->tok[id];
    *text = d->buf;
    *len = 0;
    if ((d->flags & PD_TOK_SKIP_SPECIAL) && (e->flags & TF_SPECIAL))
        return 0;

    const uint8_t *p = t->piece + e->piece_off;
    size_t pl = e->piece_len;
    if (pl && !d->started) {
        d->started = true;
        if (strips_first_space(t) && p[0] == ' ')
            p++, pl--;
    }
    memcpy(d->in, d->hold, d->nhold);
    memcpy(d->in + d->nhold, p, pl);
    size_t n = d->nhold + pl, o = 0;
    d->nhold = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        bool cut;
        size_t k = pd_utf8_next(d->in + i, n - i, &cp, &cut);
        if (cut) { /* may still complete: keep it for the next piece */
            memcpy(d->hold, d->in + i, k);
            d->nhold = k;
            break;
        }
        o += pd_utf8_lossy(d->in + i, k, (uint8_t *)d->buf + o);
        i += k;
    }
    d->buf[o] = '\0';
    *len = o;
    return 0;
}

void pd_detok_flush(struct pd_detok *d, const char **text, size_t *len)
{
    size_t o = pd_utf8_lossy(d->hold, d->nhold, (uint8_t *)d->buf);
    d->buf[o] = '\0';
    *text = d->buf;
    *len = o;
    d->nhold = 0;
    d->started = false;
}

/* --- accessors ---------------------------------------------------------- */

uint32_t pd_tok_n_vocab(const struct pd_tokenizer *t) { return t->n_vocab; }
int32_t pd_tok_bos(const struct pd_tokenizer *t) { return t->bos; }
int32_t pd_tok_eos(const struct pd_tokenizer *t) { return t->eos; }
int32_t pd_tok_unk(const struct pd_tokenizer *t) { return t->unk; }
int32_t pd_tok_pad(const struct pd_tokenizer *t) { return t->pad; }
bool pd_tok_adds_bos(const struct pd_tokenizer *t) { return t->add_bos; }

bool pd_tok_is_eog(const struct pd_tokenizer *t, int32_t id)
{
    return !bad_id(t, id) && (t->tok[id].flags & TF_EOG);
}

bool pd_tok_is_special(const struct pd_tokenizer *t, int32_t id)
{
    return !bad_id(t, id) && (t->tok[id].flags & TF_SPECIAL);
}

const char *pd_tok_text(const struct pd_tokenizer *t, int32_t id, size_t *len)
{
    if (bad_id(t, id))
        return NULL;
    if (len)
        *len = t->tok[id].text_len;
    return tok_text(t, (uint32_t)id);
}

const uint8_t *pd_tok_piece(const struct pd_tokenizer *t, int32_t id, size_t *len)
{
    if (bad_id(t, id))
        return NULL;
    if (len)
        *len = t->tok[id].piece_len;
    return tok_piece(t, (uint32_t)id);
}

int32_t pd_tok_find(const struct pd_tokenizer *t, const char *text, size_t len)
{
    return tok_strtab_get(t, &t->by_text, false, text, len);
}

size_t pd_tok_max_ids(const struct pd_tokenizer *t, size_t len)
{
    if (t->kind == TOK_SPM) /* "▁" per segment and per space, then a token per byte */
        return 6 * len + 5;
    size_t per_byte = 1; /* byte fallback of a 2-byte alphabet character: 2 */
    for (int b = 0; b < 256; b++)
        if (t->byte_nsym[b] > per_byte)
            per_byte = t->byte_nsym[b];
    return per_byte * len + 2;
}

const char *pd_tok_chat_template(const struct pd_tokenizer *t, size_t *len)
{
    if (len)
        *len = t->chat_template_len;
    return t->chat_template;
}

const char *pd_tok_model(const struct pd_tokenizer *t)
{
    return t->kind == TOK_BYTE_LEVEL ? "gpt2" : "llama";
}

const char *pd_tok_pre_declared(const struct pd_tokenizer *t) { return t->pre_declared; }
const char *pd_tok_pre_used(const struct pd_tokenizer *t) { return t->pre_used; }
