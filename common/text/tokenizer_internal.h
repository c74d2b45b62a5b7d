/* common/text/tokenizer internals, shared by tokenizer.c (load, decode,
 * detok) and tok_encode.c (pre-tokenization, BPE). Not a public header. */
#ifndef PD_TOKENIZER_INTERNAL_H
#define PD_TOKENIZER_INTERNAL_H

#include "errf.h"
#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* llama.cpp's token types (tokenizer.ggml.token_type) */
enum {
    TT_UNDEFINED = 0,
    TT_NORMAL = 1,
    TT_UNKNOWN = 2,
    TT_CONTROL = 3,
    TT_USER_DEFINED = 4,
    TT_UNUSED = 5,
    TT_BYTE = 6,
};

enum tok_kind {
    TOK_BYTE_LEVEL, /* "gpt2" */
    TOK_SPM, /* "llama" */
};

/* per-token flags */
enum {
    TF_SPECIAL = 1u << 0, /* control: matched in text only on request, skipped on request */
    TF_EOG = 1u << 1,
    TF_WHOLE = 1u << 2, /* byte-level: BPE of the token's own bytes gives exactly this token */
    TF_ADDED = 1u << 3, /* tokenizer.json's added token: split out of text before the rest
                         * (always when not TF_SPECIAL; a special one on request) */
};

struct tok_entry {
    uint32_t text_off, text_len; /* in text arena, NUL-terminated there */
    uint32_t piece_off, piece_len; /* in piece arena: the bytes it decodes to */
    float score;
    uint8_t type; /* TT_* */
    uint8_t flags; /* TF_* */
};

/* Open addressing string -> id (the last id wins for duplicate strings, as in
 * Hugging Face's vocabulary dict). slot = id + 1, 0 = empty. */
struct strtab {
    uint32_t *slot;
    uint32_t mask;
};

/* (left id, right id) -> (rank, merged id) */
struct merge_slot {
    uint64_t key; /* left << 32 | right; UINT64_MAX empty */
    uint32_t rank;
    int32_t id;
};

#define PD_TOK_MAX_RE 4
#define PD_TOK_MAX_AFFIX 4 /* tokens a post-processor puts before or after a text */

/* How SentencePiece-style text gets its leading "▁". */
enum tok_prefix {
    TOK_PREFIX_EACH = 0, /* transformers' legacy normalizer: Prepend("▁") on every segment */
    TOK_PREFIX_NONE, /* none */
    TOK_PREFIX_META_ALWAYS, /* Metaspace "always": each segment not already starting with it */
    TOK_PREFIX_META_FIRST, /* Metaspace "first": only the text's first segment, likewise */
};

struct pd_tokenizer {
    enum tok_kind kind;
    enum pd_tok_pre pre;
    uint32_t n_vocab;
    struct tok_entry *tok; /* [n_vocab] */
    char *text; /* arena of token texts */
    uint8_t *piece; /* arena of decoded pieces */
    uint32_t max_piece; /* longest piece, bytes */

    struct strtab by_text; /* stored text -> id */
    struct strtab by_piece; /* byte-level: piece bytes -> id, TF_WHOLE tokens only */
    struct merge_slot *merges;
    uint32_t merge_mask;
    uint32_t n_merges;

    /* Byte-level: the symbols each input byte starts as: its alphabet
     * character's token, else the byte-fallback tokens of that character's
     * UTF-8 (byte_fb set), else none (unknown). */
    int32_t byte_sym[256][2];
    uint8_t byte_nsym[256];
    uint8_t byte_fb[256];
    /* <0xNN> token of each byte, or -1 (SentencePiece byte fallback) */
    int32_t byte_tok[256];
    /* each byte's character in GPT-2's byte alphabet (byte-level) */
    uint32_t byte_cp[256];

    /* Control tokens matched in text, ordered by first byte then longest
     * first; spec_first[b]..spec_first[b+1] index those starting with b. */
    int32_t *spec; /* [n_spec] */
    uint32_t n_spec;
    uint32_t spec_first[257];

    pcre2_code *re[PD_TOK_MAX_RE]; /* applied in order, each splitting the pieces of the last */
    int n_re;

    int32_t bos, eos, unk, pad;
    bool add_bos, add_eos;
    /* the ids the encoder adds: prefix when BOS is on, suffix when add_eos
     * (GGUF: BOS and EOS; tokenizer.json: its post-processor's template,
     * both governed by the BOS flag, as add_special_tokens) */
    int32_t prefix[PD_TOK_MAX_AFFIX], suffix[PD_TOK_MAX_AFFIX];
    uint8_t n_prefix, n_suffix;
    bool suffix_with_prefix; /* the suffix follows the BOS flag, not add_eos */
    enum tok_prefix spm_prefix; /* SPM: where a "▁" goes before the text */
    bool strip_first_space; /* decode: one leading space removed (SPM's decoders) */
    bool no_byte_fallback; /* byte-level: a byte not in the alphabet is unknown, never <0xNN> */
    bool unk_each; /* each unknown character its own unknown token (fuse_unk false) */
    bool ignore_merges; /* a pre-token that is a vocabulary token is taken whole (Llama-3) */
    bool has_plain_added; /* an added token that is not special: split out always */
    bool bytes_literal; /* decode: <0xNN> tokens as their text (no ByteFallback decoder) */
    bool nfc; /* tokenizer.json's NFC normalizer: each segment to NFC first (common/text/nfc) */

    char *chat_template; /* NUL-terminated copy or NULL */
    size_t chat_template_len;
    char pre_declared[64];
    const char *pre_used;
};

/* FNV-1a; only for table placement (inputs are not adversarial-sensitive:
 * the tables are built from the model file). */
static inline uint32_t tok_hash(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 16777619u;
    return h;
}

static inline const char *tok_text(const struct pd_tokenizer *t, uint32_t id)
{
    return t->text + t->tok[id].text_off;
}

static inline const uint8_t *tok_piece(const struct pd_tokenizer *t, uint32_t id)
{
    return t->piece + t->tok[id].piece_off;
}

static inline void tok_key_of(const struct pd_tokenizer *t, bool by_piece, uint32_t id,
                              const void **k, size_t *n)
{
    const struct tok_entry *e = &t->tok[id];
    if (by_piece)
        *k = tok_piece(t, id), *n = e->piece_len;
    else
        *k = tok_text(t, id), *n = e->text_len;
}

/* The id under a key (a piece or a text), or -1 when absent. */
static inline int32_t tok_strtab_get(const struct pd_tokenizer *t, const struct strtab *st,
                                     bool by_piece, const void *s, size_t n)
{
    if (!st->slot)
        return -1;
    for (uint32_t i = tok_hash(s, n) & st->mask;; i = (i + 1) & st->mask) {
        if (st->slot[i] == 0)
            return -1;
        const void *k;
        size_t kn;
        tok_key_of(t, by_piece, st->slot[i] - 1, &k, &kn);
        if (kn == n && memcmp(k, s, n) == 0)
            return (int32_t)(st->slot[i] - 1);
    }
}

static inline const struct merge_slot *tok_merge_get(const struct pd_tokenizer *t, int32_t a,
                                                     int32_t b)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = (uint32_t)(h >> 32) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct merge_slot *m = &t->merges[i];
        if (m->key == key)
            return m;
        if (m->key == UINT64_MAX)
            return NULL;
    }
}

/* tok_encode.c: compile the pre-tokenizer regexes (byte-level) for t->pre. */
int tok_pretok_init(struct pd_tokenizer *t, char *err, size_t errlen);
/* tok_encode.c: compile chain[0..n) (tokenizers' patterns: \s and \S read as
 * Oniguruma's Unicode whitespace) into t->re */
int tok_pretok_compile(struct pd_tokenizer *t, const char *const *chain, int n, char *err,
                       size_t errlen);
/* tokenizer.c: the builders both loaders use (GGUF's, tok_json.c's) */
int tok_strtab_init(struct strtab *st, uint32_t n);
void tok_strtab_put(struct pd_tokenizer *t, struct strtab *st, bool by_piece, uint32_t id);
int tok_merges_init(struct pd_tokenizer *t, uint32_t n);
void tok_merges_put(struct pd_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t id);
/* special-token table and end-of-generation flags (eot: two more EOG ids or -1) */
int tok_setup_special(struct pd_tokenizer *t, const int32_t *eot);
/* pieces (the bytes each token decodes to), byte tokens, byte-level symbols */
int tok_setup_pieces(struct pd_tokenizer *t);
/* byte-level: tokens BPE rebuilds whole, looked up directly */
int tok_setup_whole(struct pd_tokenizer *t);
/* tok_encode.c: byte-level BPE of one pre-token (used at load to find the
 * TF_WHOLE tokens). Returns the number of ids (the first cap written to ids)
 * or -ENOMEM. */
int tok_bpe_bytes(const struct pd_tokenizer *t, const uint8_t *s, size_t n, int32_t *ids,
                  size_t cap);

#endif
