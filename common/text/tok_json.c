/* common/text/tok_json: the tokenizer from a Hugging Face tokenizer.json
 * (and tokenizer_config.json), as the `tokenizers` library reads it, onto
 * the one tokenizer the GGUF loader builds (tokenizer.c) and the one encoder
 * (tok_encode.c). What is read, and what is refused by name:
 * docs/internals/text.md, "tokenizer.json". */
#include "tokenizer_internal.h"

#include "model.h"
#include "safetensors.h" /* pd_st_json_*: what cJSON lets through */

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JSON_DEPTH 32

/* tokenizers' ByteLevel(use_regex=true) pattern, in its own (Oniguruma) form */
static const char re_bytelevel[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static bool is_type(const cJSON *o, const char *type)
{
    const cJSON *t = get(o, "type");
    return cJSON_IsString(t) && strcmp(t->valuestring, type) == 0;
}

static const char *type_of(const cJSON *o)
{
    const cJSON *t = get(o, "type");
    return cJSON_IsString(t) ? t->valuestring : "(no type)";
}

static bool str_is(const cJSON *o, const char *s)
{
    return cJSON_IsString(o) && strcmp(o->valuestring, s) == 0;
}

/* a member that is absent, null, or false */
static bool off(const cJSON *o, const char *k)
{
    const cJSON *v = get(o, k);
    return !v || cJSON_IsNull(v) || cJSON_IsFalse(v);
}

/* An object's items as a list: a "Sequence" (its `list` member) or the
 * object itself alone. n: how many; NULL children when not a list. */
static const cJSON *items(const cJSON *o, const char *list, int *n)
{
    if (is_type(o, "Sequence")) {
        const cJSON *a = get(o, list);
        *n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
        return cJSON_IsArray(a) ? a->child : NULL;
    }
    *n = 1;
    return o;
}

/* ---- the model: vocabulary, added tokens, merges ---- */

static int id_of(const cJSON *v, uint32_t *id)
{
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    if (!(d >= 0 && d < PD_TOK_MAX_VOCAB && d == floor(d)))
        return -1;
    *id = (uint32_t)d;
    return 0;
}

/* Every id 0..n-1 named once by the vocabulary or the added tokens (an added
 * token may repeat its vocabulary entry); their texts into t. */
static int load_vocab(struct pd_tokenizer *t, const cJSON *vocab, const cJSON *added, char *err,
                      size_t errlen)
{
    uint32_t n = 0, id;
    for (const cJSON *v = vocab->child; v; v = v->next) {
        if (id_of(v, &id) < 0)
            return pd_errf(err, errlen, -EINVAL, "model.vocab: \"%.64s\" has no valid id", v->string);
        n = id + 1 > n ? id + 1 : n;
    }
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        if (!cJSON_IsObject(a) || id_of(get(a, "id"), &id) < 0 || !cJSON_IsString(get(a, "content")))
            return pd_errf(err, errlen, -EINVAL,
                           "added_tokens: each needs an \"id\" and a \"content\" string");
        n = id + 1 > n ? id + 1 : n;
    }
    if (n == 0)
        return pd_errf(err, errlen, -EINVAL, "model.vocab is empty");
    t->n_vocab = n;
    const char **txt = calloc(n, sizeof(*txt));
    t->tok = calloc(n, sizeof(*t->tok));
    if (!txt || !t->tok) {
        free(txt);
        return -ENOMEM;
    }
    int rc = 0;
    for (const cJSON *v = vocab->child; v && rc == 0; v = v->next) {
        id_of(v, &id);
        if (txt[id])
            rc = pd_errf(err, errlen, -EINVAL, "model.vocab: id %u appears twice", id);
        txt[id] = v->string;
        t->tok[id].type = TT_NORMAL;
    }
    for (const cJSON *a = added ? added->child : NULL; a && rc == 0; a = a->next) {
        id_of(get(a, "id"), &id);
        const char *c = get(a, "content")->valuestring;
        if (txt[id] && strcmp(txt[id], c) != 0)
            rc = pd_errf(err, errlen, -EINVAL,
                         "added_tokens: id %u is \"%.64s\" there and \"%.64s\" in the vocabulary",
                         id, c, txt[id]);
        else if (!off(a, "lstrip") || !off(a, "rstrip") || !off(a, "single_word"))
            rc = pd_errf(err, errlen, -ENOTSUP,
                         "added_tokens: \"%.64s\" has lstrip, rstrip or single_word, which are "
                         "not supported",
                         c);
        txt[id] = c;
        t->tok[id].type = cJSON_IsTrue(get(a, "special")) ? TT_CONTROL : TT_USER_DEFINED;
        t->tok[id].flags |= TF_ADDED;
        t->has_plain_added |= !cJSON_IsTrue(get(a, "special"));
    }
    size_t total = 0;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        if (!txt[i])
            rc = pd_errf(err, errlen, -EINVAL,
                         "id %u is neither in model.vocab nor in added_tokens (ids must cover 0 "
                         "to %u)",
                         i, n - 1);
        else if (strlen(txt[i]) > PD_TOK_MAX_PIECE)
            rc = pd_errf(err, errlen, -E2BIG, "token %u is %zu bytes long (cap %u)", i,
                         strlen(txt[i]), PD_TOK_MAX_PIECE);
        else
            total += strlen(txt[i]) + 1;
    }
    if (rc == 0 && (!(t->text = malloc(total)) || !(t->piece = malloc(total))))
        rc = -ENOMEM;
    for (uint32_t i = 0, off_ = 0; i < n && rc == 0; i++) {
        size_t l = strlen(txt[i]);
        memcpy(t->text + off_, txt[i], l + 1);
        t->tok[i].text_off = off_;
        t->tok[i].text_len = (uint32_t)l;
        off_ += (uint32_t)l + 1;
    }
    free(txt);
    if (rc == 0 && tok_strtab_init(&t->by_text, n) < 0)
        rc = -ENOMEM;
    for (uint32_t i = 0; i < n && rc == 0; i++)
        tok_strtab_put(t, &t->by_text, false, i);
    return rc;
}

/* merges: "a b" strings (the older form) or [a, b] pairs, ranked in order */
static int load_merges(struct pd_tokenizer *t, const cJSON *merges, char *err, size_t errlen)
{
    int n = cJSON_IsArray(merges) ? cJSON_GetArraySize(merges) : -1;
    if (n < 0)
        return pd_errf(err, errlen, -EINVAL, "model.merges is not a list");
    if ((uint32_t)n > PD_TOK_MAX_MERGES)
        return pd_errf(err, errlen, -E2BIG, "model.merges: more than %u", PD_TOK_MAX_MERGES);
    if (tok_merges_init(t, (uint32_t)n) < 0)
        return -ENOMEM;
    char buf[2 * PD_TOK_MAX_PIECE + 1];
    uint32_t i = 0;
    for (const cJSON *m = merges->child; m; m = m->next, i++) {
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            if (sp && !strchr(sp + 1, ' '))
                a = m->valuestring, la = (size_t)(sp - a), b = sp + 1, lb = strlen(b);
        } else if (cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            a = m->child->valuestring, la = strlen(a);
            b = m->child->next->valuestring, lb = strlen(b);
        }
        if (!a || la > PD_TOK_MAX_PIECE || lb > PD_TOK_MAX_PIECE)
            return pd_errf(err, errlen, -EINVAL,
                           "model.merges[%u] is neither \"A B\" nor [\"A\", \"B\"]", i);
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t ia = tok_strtab_get(t, &t->by_text, false, a, la);
        int32_t ib = tok_strtab_get(t, &t->by_text, false, b, lb);
        int32_t iab = tok_strtab_get(t, &t->by_text, false, buf, la + lb);
        if (ia < 0 || ib < 0 || iab < 0)
            return pd_errf(err, errlen, -EINVAL, "model.merges[%u]: %s is not in the vocabulary",
                           i, ia < 0 ? "the left part" : ib < 0 ? "the right part" : "the merge");
        tok_merges_put(t, ia, ib, i, iab);
    }
    return 0;
}

/* absent, null or "" (Qwen2's files say "", which tokenizers reads as none) */
static bool no_affix(const cJSON *v)
{
    return !v || cJSON_IsNull(v) || str_is(v, "");
}

static int load_model(struct pd_tokenizer *t, const cJSON *root, char *err, size_t errlen)
{
    const cJSON *m = get(root, "model");
    if (!cJSON_IsObject(m))
        return pd_errf(err, errlen, -EINVAL, "\"model\" is missing");
    if (get(m, "type") && !is_type(m, "BPE"))
        return pd_errf(err, errlen, -ENOTSUP,
                       "model type %.32s is not supported (BPE is: WordPiece, Unigram and "
                       "WordLevel are not)",
                       type_of(m));
    const cJSON *vocab = get(m, "vocab"), *added = get(root, "added_tokens");
    if (!cJSON_IsObject(vocab) || (added && !cJSON_IsArray(added)))
        return pd_errf(err, errlen, -EINVAL,
                       "model.vocab must be an object and added_tokens a list");
    if (!off(m, "dropout") || !no_affix(get(m, "continuing_subword_prefix")) ||
        !no_affix(get(m, "end_of_word_suffix")))
        return pd_errf(err, errlen, -ENOTSUP,
                       "model: dropout, continuing_subword_prefix and end_of_word_suffix are not "
                       "supported");
    int rc = load_vocab(t, vocab, added, err, errlen);
    if (rc < 0)
        return rc;
    const cJSON *unk = get(m, "unk_token");
    t->unk = t->bos = t->eos = t->pad = -1;
    if (cJSON_IsString(unk) &&
        (t->unk = tok_strtab_get(t, &t->by_text, false, unk->valuestring,
                                 strlen(unk->valuestring))) < 0)
        return pd_errf(err, errlen, -EINVAL, "model.unk_token \"%.64s\" is not in the vocabulary",
                       unk->valuestring);
    t->no_byte_fallback = off(m, "byte_fallback");
    t->unk_each = off(m, "fuse_unk");
    t->ignore_merges = !off(m, "ignore_merges");
    return load_merges(t, get(m, "merges"), err, errlen);
}

/* ---- normalizer, pre-tokenizer: which kind of tokenizer, and its regexes ---- */

/* SentencePiece's legacy normalizer: [Prepend("▁")], Replace(" ", "▁"); an
 * empty Sequence or null is no normalizer. 1: SentencePiece's, 0: none. */
static int load_normalizer(struct pd_tokenizer *t, const cJSON *nz, char *err, size_t errlen)
{
    int n;
    bool prepend = false, replace = false;
    if (!nz || cJSON_IsNull(nz))
        return 0;
    const cJSON *it = items(nz, "normalizers", &n);
    for (int i = 0; i < n; i++, it = it->next) {
        if (is_type(it, "NFC"))
            t->nfc = true;
        else if (is_type(it, "Prepend") && str_is(get(it, "prepend"), "\xE2\x96\x81") && !prepend)
            prepend = true;
        else if (is_type(it, "Replace") && str_is(get(get(it, "pattern"), "String"), " ") &&
                 str_is(get(it, "content"), "\xE2\x96\x81") && !replace)
            replace = true;
        else
            return pd_errf(err, errlen, -ENOTSUP,
                           "normalizer %.32s is not supported (NFC, and SentencePiece's "
                           "Prepend(\"\xE2\x96\x81\") and Replace(\" \", \"\xE2\x96\x81\") are; NFKC, "
                           "NFD, Lowercase, ... are not)",
                           type_of(it));
    }
    if (n < 0 || (prepend && !replace))
        return pd_errf(err, errlen, -ENOTSUP, "normalizer: an unsupported Sequence");
    t->spm_prefix = prepend ? TOK_PREFIX_EACH : TOK_PREFIX_NONE;
    return replace ? 1 : 0;
}

/* The regex chain of a byte-level pre-tokenizer, or Metaspace for a
 * SentencePiece one. *bytelevel: a ByteLevel step was seen; *meta: Metaspace. */
static int load_pretok(struct pd_tokenizer *t, const cJSON *pt, const char **chain, int *n_re,
                       bool *bytelevel, bool *meta, char *err, size_t errlen)
{
    int n;
    *n_re = 0;
    if (!pt || cJSON_IsNull(pt))
        return 0;
    const cJSON *it = items(pt, "pretokenizers", &n);
    if (n < 0)
        return pd_errf(err, errlen, -EINVAL, "pre_tokenizer: a Sequence without a list");
    for (int i = 0; i < n; i++, it = it->next) {
        const char *re = NULL;
        if (is_type(it, "ByteLevel")) {
            if (!off(it, "add_prefix_space"))
                return pd_errf(err, errlen, -ENOTSUP,
                               "pre_tokenizer ByteLevel with add_prefix_space is not supported");
            *bytelevel = true;
            if (!off(it, "use_regex") || !get(it, "use_regex"))
                re = re_bytelevel;
        } else if (is_type(it, "Split")) {
            const cJSON *p = get(it, "pattern");
            if (!str_is(get(it, "behavior"), "Isolated") || !off(it, "invert") ||
                !cJSON_IsString(get(p, "Regex")))
                return pd_errf(err, errlen, -ENOTSUP,
                               "pre_tokenizer Split: only a Regex pattern, behavior Isolated, "
                               "invert false are supported");
            re = get(p, "Regex")->valuestring;
        } else if (is_type(it, "Digits")) {
            re = off(it, "individual_digits") ? "\\p{N}+" : "\\p{N}";
        } else if (is_type(it, "Metaspace")) {
            const cJSON *ps = get(it, "prepend_scheme");
            if (!str_is(get(it, "replacement"), "\xE2\x96\x81") || !off(it, "split"))
                return pd_errf(err, errlen, -ENOTSUP,
                               "pre_tokenizer Metaspace: only replacement \"\xE2\x96\x81\" without "
                               "split is supported");
            *meta = true;
            t->spm_prefix = str_is(ps, "first")    ? TOK_PREFIX_META_FIRST
                            : str_is(ps, "never")  ? TOK_PREFIX_NONE
                                                   : TOK_PREFIX_META_ALWAYS;
        } else {
            return pd_errf(err, errlen, -ENOTSUP,
                           "pre_tokenizer %.32s is not supported (ByteLevel, Split, Digits, "
                           "Metaspace and Sequences of them are)",
                           type_of(it));
        }
        if (re && *n_re == PD_TOK_MAX_RE)
            return pd_errf(err, errlen, -ENOTSUP, "pre_tokenizer: more than %d patterns",
                           PD_TOK_MAX_RE);
        if (re)
            chain[(*n_re)++] = re;
    }
    return 0;
}

/* ---- post-processor: the ids add_special_tokens puts around a text ---- */

static int template_ids(const cJSON *specials, const char *name, int32_t *out, uint8_t *n,
                        uint32_t n_vocab, char *err, size_t errlen)
{
    const cJSON *ids = get(get(specials, name), "ids");
    if (!cJSON_IsArray(ids))
        return pd_errf(err, errlen, -EINVAL,
                       "post_processor: special token \"%.64s\" has no ids", name);
    for (const cJSON *v = ids->child; v; v = v->next) {
        uint32_t id;
        if (id_of(v, &id) < 0 || id >= n_vocab || *n == PD_TOK_MAX_AFFIX)
            return pd_errf(err, errlen, -EINVAL,
                           "post_processor: \"%.64s\": an id outside the vocabulary, or more "
                           "than %d tokens on a side",
                           name, PD_TOK_MAX_AFFIX);
        out[(*n)++] = (int32_t)id;
    }
    return 0;
}

static int load_post(struct pd_tokenizer *t, const cJSON *pp, char *err, size_t errlen)
{
    int n, rc;
    t->suffix_with_prefix = true;
    if (!pp || cJSON_IsNull(pp))
        return 0;
    const cJSON *it = items(pp, "processors", &n);
    for (int i = 0; i < n; i++, it = it->next) {
        if (is_type(it, "ByteLevel"))
            continue; /* offsets only */
        if (!is_type(it, "TemplateProcessing"))
            return pd_errf(err, errlen, -ENOTSUP,
                           "post_processor %.32s is not supported (TemplateProcessing and "
                           "ByteLevel are)",
                           type_of(it));
        const cJSON *single = get(it, "single"), *specials = get(it, "special_tokens");
        bool seq = false;
        for (const cJSON *p = cJSON_IsArray(single) ? single->child : NULL; p; p = p->next) {
            const cJSON *sp = get(p, "SpecialToken");
            if (get(p, "Sequence") && !seq) {
                seq = true;
            } else if (cJSON_IsString(get(sp, "id"))) {
                if ((rc = template_ids(specials, get(sp, "id")->valuestring,
                                       seq ? t->suffix : t->prefix,
                                       seq ? &t->n_suffix : &t->n_prefix, t->n_vocab, err,
                                       errlen)) < 0)
                    return rc;
            } else {
                return pd_errf(err, errlen, -EINVAL,
                               "post_processor: \"single\" must be special tokens around one "
                               "Sequence");
            }
        }
        if (!seq)
            return pd_errf(err, errlen, -EINVAL, "post_processor: \"single\" has no Sequence");
    }
    if (n < 0)
        return pd_errf(err, errlen, -EINVAL, "post_processor: a Sequence without a list");
    t->add_bos = t->n_prefix || t->n_suffix; /* add_special_tokens' default */
    t->bos = t->n_prefix ? t->prefix[0] : -1;
    return 0;
}

/* The decoder must be the one the kind implies: ByteLevel (with the byte
 * fallback, Fuse and "▁" replacement transformers adds) for byte-level;
 * Replace("▁", " "), ByteFallback, Fuse, Strip or Metaspace for
 * SentencePiece. Sets whether one leading space is stripped. */
static int load_decoder(struct pd_tokenizer *t, const cJSON *dec, char *err, size_t errlen)
{
    int n;
    bool bytelevel = false;
    if (!dec || cJSON_IsNull(dec))
        return pd_errf(err, errlen, -ENOTSUP, "decoder: none given");
    const cJSON *it = items(dec, "decoders", &n);
    t->bytes_literal = true; /* until a ByteFallback decoder says otherwise */
    for (int i = 0; i < n; i++, it = it->next) {
        if (is_type(it, "ByteLevel")) {
            bytelevel = true;
        } else if (is_type(it, "ByteFallback")) {
            t->bytes_literal = false;
        } else if (is_type(it, "Fuse")) {
        } else if (is_type(it, "Replace") &&
                   str_is(get(get(it, "pattern"), "String"), "\xE2\x96\x81") &&
                   str_is(get(it, "content"), " ")) {
        } else if (is_type(it, "Strip") && str_is(get(it, "content"), " ") &&
                   t->kind == TOK_SPM) {
            const cJSON *st = get(it, "start"), *sp = get(it, "stop");
            if (!cJSON_IsNumber(st) || st->valuedouble != 1 || !cJSON_IsNumber(sp) ||
                sp->valuedouble != 0)
                return pd_errf(err, errlen, -ENOTSUP, "decoder Strip: only start 1, stop 0");
            t->strip_first_space = true;
        } else if (is_type(it, "Metaspace") && t->kind == TOK_SPM) {
            t->strip_first_space = !str_is(get(it, "prepend_scheme"), "never");
        } else {
            return pd_errf(err, errlen, -ENOTSUP,
                           "decoder %.32s is not supported with this tokenizer", type_of(it));
        }
    }
    if (n < 0 || bytelevel != (t->kind == TOK_BYTE_LEVEL))
        return pd_errf(err, errlen, -ENOTSUP,
                       "decoder: %s", n < 0 ? "a Sequence without a list"
                                            : "ByteLevel must be there exactly for a ByteLevel "
                                              "pre-tokenizer");
    return 0;
}

/* ---- tokenizer_config.json: the special tokens' names, the chat template ---- */

static int32_t named_token(const struct pd_tokenizer *t, const cJSON *v)
{
    if (cJSON_IsObject(v))
        v = get(v, "content");
    if (!cJSON_IsString(v))
        return -1;
    return tok_strtab_get(t, &t->by_text, false, v->valuestring, strlen(v->valuestring));
}

static int load_config(struct pd_tokenizer *t, const cJSON *cfg, char *err, size_t errlen)
{
    if (!cfg)
        return 0;
    int32_t bos = named_token(t, get(cfg, "bos_token"));
    t->eos = named_token(t, get(cfg, "eos_token"));
    t->pad = named_token(t, get(cfg, "pad_token"));
    if (t->bos < 0)
        t->bos = bos;
    const cJSON *ct = get(cfg, "chat_template");
    if (cJSON_IsArray(ct)) /* [{"name": ..., "template": ...}]: the default one */
        for (const cJSON *c = ct->child; c; c = c->next)
            if (str_is(get(c, "name"), "default"))
                ct = get(c, "template");
    if (cJSON_IsString(ct)) {
        size_t n = strlen(ct->valuestring);
        if (n > PD_TOK_MAX_TEMPLATE)
            return pd_errf(err, errlen, -E2BIG, "chat_template is %zu bytes (cap %u)", n,
                           PD_TOK_MAX_TEMPLATE);
        if (!(t->chat_template = strdup(ct->valuestring)))
            return -ENOMEM;
        t->chat_template_len = n;
    }
    return 0;
}

/* ---- the whole ---- */

static int parse(const char *what, const char *text, size_t len, cJSON **out, char *err,
                 size_t errlen)
{
    /* the duplicate check covers every object: the vocabulary's keys are
     * what a duplicate would hide in */
    char why[160];
    int rc = pd_st_json_parse(text, len, JSON_DEPTH, out, why, sizeof(why));
    return rc < 0 ? pd_errf(err, errlen, rc, "%s: %s", what, why) : 0;
}

static int load(struct pd_tokenizer *t, const cJSON *root, const cJSON *cfg, char *err,
                size_t errlen)
{
    const char *chain[PD_TOK_MAX_RE];
    int n_re, rc, spm_norm;
    bool bytelevel = false, meta = false;
    if ((rc = load_model(t, root, err, errlen)) < 0 ||
        (spm_norm = rc = load_normalizer(t, get(root, "normalizer"), err, errlen)) < 0 ||
        (rc = load_pretok(t, get(root, "pre_tokenizer"), chain, &n_re, &bytelevel, &meta, err,
                          errlen)) < 0)
        return rc;
    if (bytelevel == (spm_norm || meta))
        return pd_errf(err, errlen, -ENOTSUP,
                       "neither byte-level BPE (a ByteLevel pre-tokenizer) nor SentencePiece-style "
                       "BPE (its normalizer or Metaspace), or both");
    if (!bytelevel && n_re)
        return pd_errf(err, errlen, -ENOTSUP,
                       "pre_tokenizer: patterns before SentencePiece-style BPE are not supported");
    t->kind = bytelevel ? TOK_BYTE_LEVEL : TOK_SPM;
    if ((rc = load_post(t, get(root, "post_processor"), err, errlen)) < 0 ||
        (rc = load_decoder(t, get(root, "decoder"), err, errlen)) < 0 ||
        (rc = load_config(t, cfg, err, errlen)) < 0)
        return rc;
    const int32_t eot[2] = {-1, -1};
    if ((rc = tok_setup_special(t, eot)) < 0 || (rc = tok_setup_pieces(t)) < 0)
        return rc;
    if (t->kind == TOK_SPM && t->no_byte_fallback)
        for (int b = 0; b < 256; b++)
            t->byte_tok[b] = -1;
    snprintf(t->pre_declared, sizeof(t->pre_declared), "tokenizer.json");
    t->pre_used = "tokenizer.json";
    if (t->kind == TOK_SPM)
        return 0;
    if ((rc = tok_pretok_compile(t, chain, n_re, err, errlen)) < 0)
        return rc;
    return tok_setup_whole(t);
}

int pd_tok_load_json(const char *json, size_t len, const char *config, size_t config_len,
                     struct pd_tokenizer **out, char *err, size_t errlen)
{
    cJSON *root = NULL, *cfg = NULL;
    struct pd_tokenizer *t = NULL;
    char inner[384];
    int rc;
    if (len > PD_TOK_MAX_JSON || config_len > PD_TOK_MAX_JSON)
        return pd_errf(err, errlen, -E2BIG, "tokenizer.json: above the cap of %u bytes",
                       PD_TOK_MAX_JSON);
    if ((rc = parse("tokenizer.json", json, len, &root, err, errlen)) < 0 ||
        (config && (rc = parse("tokenizer_config.json", config, config_len, &cfg, err, errlen)) < 0))
        goto out;
    if (!(t = calloc(1, sizeof(*t)))) {
        rc = pd_errf(err, errlen, -ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = load(t, root, cfg, inner, sizeof(inner))) < 0) {
        pd_errf(err, errlen, rc, "tokenizer.json: %s",
                rc == -ENOMEM ? "out of memory" : inner);
        t = pd_tok_free(t);
        goto out;
    }
    *out = t;
out:
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    return rc < 0 ? rc : 0;
}

/* a whole file of at most cap bytes; -ENOENT when absent */
static int slurp(int dirfd, const char *name, size_t cap, char **buf, size_t *len, char *err,
                 size_t errlen)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return errno == ENOENT ? -ENOENT
                               : pd_errf(err, errlen, -errno, "%s: %s", name, strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > cap) {
        close(fd);
        return pd_errf(err, errlen, -EINVAL, "%s: not a regular file of at most %zu bytes", name,
                       cap);
    }
    char *b = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (b && got < (size_t)st.st_size) {
        ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (!b || got != (size_t)st.st_size) {
        free(b);
        return pd_errf(err, errlen, b ? -EIO : -ENOMEM, "%s: cannot read it", name);
    }
    *buf = b, *len = got;
    return 0;
}

int pd_tok_load_dir(const char *dir, struct pd_tokenizer **out, char *err, size_t errlen)
{
    char *json = NULL, *cfg = NULL;
    size_t len = 0, cfg_len = 0;
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;
    if (dirfd < 0)
        return pd_errf(err, errlen, -errno, "%s: %s", dir, strerror(errno));
    rc = slurp(dirfd, "tokenizer.json", PD_TOK_MAX_JSON, &json, &len, err, errlen);
    if (rc == -ENOENT)
        pd_errf(err, errlen, rc, "%s has no tokenizer.json", dir);
    if (rc == 0 && (rc = slurp(dirfd, "tokenizer_config.json", 1u << 20, &cfg, &cfg_len, err,
                               errlen)) == -ENOENT)
        rc = 0, cfg = NULL;
    close(dirfd);
    if (rc == 0)
        rc = pd_tok_load_json(json, len, cfg, cfg_len, out, err, errlen);
    free(json);
    free(cfg);
    return rc;
}

int pd_tok_load_model(const struct pd_model *m, struct pd_tokenizer **out, char *err,
                      size_t errlen)
{
    if (pd_model_gguf(m))
        return pd_tok_load(pd_model_gguf(m), out, err, errlen);
    if (pd_model_dir(m))
        return pd_tok_load_dir(pd_model_dir(m), out, err, errlen);
    return pd_errf(err, errlen, -ENOENT, "dummy weights have no tokenizer");
}
