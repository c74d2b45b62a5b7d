/* common/text/tokenizer: the model's tokenizer, built from its GGUF metadata
 * (tokenizer.ggml.*): byte-level BPE ("gpt2", the default model's) and
 * SentencePiece-style BPE ("llama", Llama-2 family).
 *
 *   struct pd_tokenizer *tok;
 *   char err[256];
 *   if (pd_tok_load(pd_model_gguf(model), &tok, err, sizeof(err)) < 0) { report err; }
 *   int32_t ids[4096];
 *   size_t n;
 *   int rc = pd_tok_encode(tok, text, len, PD_TOK_PARSE_SPECIAL, ids, 4096, &n);
 *   if (rc == -E2BIG) { n ids are needed: grow and call again }
 *   char out[8192];
 *   size_t olen;
 *   pd_tok_decode(tok, ids, n, PD_TOK_SKIP_SPECIAL, out, sizeof(out), &olen);
 *   tok = pd_tok_free(tok);
 *
 * Encoding reproduces, id for id, what Hugging Face transformers 4.47.1
 * builds from the same GGUF (AutoTokenizer.from_pretrained(dir,
 * gguf_file=...)), checked on a committed corpus: see
 * docs/internals/text.md for what that means per model type, for the
 * optional pre-tokenizer the GGUF declares, and for invalid UTF-8.
 *
 * Ownership and threads: loading copies everything it needs, so the GGUF (and
 * the model) may be freed afterwards. The tokenizer is immutable once loaded:
 * encode, decode and the accessors may run from many threads at once (each
 * call uses its own scratch memory). A pd_detok belongs to one stream (one
 * thread at a time).
 */
#ifndef PD_TOKENIZER_H
#define PD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pd_gguf;
struct pd_tokenizer;

/* Caps on what a file or a caller may ask of us. */
#define PD_TOK_MAX_VOCAB (1u << 21) /* tokens (Gemma has 256k) */
#define PD_TOK_MAX_MERGES (1u << 22)
#define PD_TOK_MAX_PIECE 1024 /* bytes of one token's text */
#define PD_TOK_MAX_TEXT (16u << 20) /* bytes one encode call takes: -EMSGSIZE past it */
#define PD_TOK_MAX_TEMPLATE (256u << 10) /* bytes of tokenizer.chat_template */

/* Which pre-tokenizer splits byte-level text before BPE. */
enum pd_tok_pre {
    /* What transformers builds from a GGUF: the GPT-2 byte-level regex for
     * every byte-level vocabulary, whatever tokenizer.ggml.pre says. The
     * default: it is the reference the corpus checks, and what a server built
     * on transformers (vLLM) uses with the same file. */
    PD_TOK_PRE_HF_GGUF = 0,
    /* The pre-tokenizer tokenizer.ggml.pre names, as the model was trained
     * with (and as llama.cpp uses it): "smollm" splits digits one by one
     * before the GPT-2 regex; "llama-bpe" is Llama-3's regex. An unknown name
     * is an error at load. */
    PD_TOK_PRE_DECLARED = 1,
};

struct pd_tok_opts {
    enum pd_tok_pre pre;
};

/* Encode flags. Without PD_TOK_ADD_BOS / PD_TOK_NO_BOS the BOS token is added
 * as tokenizer.ggml.add_bos_token says (absent: yes for "llama", no for
 * "gpt2"); EOS likewise follows tokenizer.ggml.add_eos_token. */
#define PD_TOK_PARSE_SPECIAL (1u << 0) /* text of control tokens ("<|im_start|>") becomes that token */
#define PD_TOK_ADD_BOS (1u << 1)
#define PD_TOK_NO_BOS (1u << 2)
/* Decode flags (pd_tok_decode, pd_detok_new). */
#define PD_TOK_SKIP_SPECIAL (1u << 3) /* leave control tokens out */
#define PD_TOK_DECODE_RAW (1u << 4) /* bytes as they are, not made valid UTF-8 (pd_tok_decode only) */

/* Load from GGUF metadata. -ENOENT: no tokenizer in the file; -ENOTSUP: a
 * tokenizer type or pre-tokenizer we do not implement (named in err);
 * -EINVAL: inconsistent metadata (named); -E2BIG past a cap; -ENOMEM. */
int pd_tok_load(const struct pd_gguf *g, struct pd_tokenizer **out, char *err, size_t errlen);
int pd_tok_load_opts(const struct pd_gguf *g, const struct pd_tok_opts *opts,
                     struct pd_tokenizer **out, char *err, size_t errlen);
/* From a Hugging Face tokenizer.json (json[0..len), not NUL-terminated) and
 * optionally tokenizer_config.json's text (config may be NULL): byte-level
 * and SentencePiece-style BPE as the `tokenizers` library reads them
 * (docs/internals/text.md, "tokenizer.json"). Add-special-tokens follows the
 * post-processor (PD_TOK_ADD_BOS / PD_TOK_NO_BOS override it: both ends).
 * -ENOTSUP names a component not implemented; -EINVAL a malformed file;
 * -E2BIG past PD_TOK_MAX_JSON or another cap. The fuzz target's entry. */
#define PD_TOK_MAX_JSON (64u << 20)
int pd_tok_load_json(const char *json, size_t len, const char *config, size_t config_len,
                     struct pd_tokenizer **out, char *err, size_t errlen);
/* The same from a checkpoint directory's tokenizer.json and (when there)
 * tokenizer_config.json; -ENOENT when there is no tokenizer.json. */
int pd_tok_load_dir(const char *dir, struct pd_tokenizer **out, char *err, size_t errlen);
/* The model's own: its GGUF's metadata, or its checkpoint directory's
 * tokenizer.json; -ENOENT when it has none (dummy weights, a directory
 * without tokenizer.json). */
struct pd_model;
int pd_tok_load_model(const struct pd_model *m, struct pd_tokenizer **out, char *err,
                      size_t errlen);
/* Accepts NULL; returns NULL. */
struct pd_tokenizer *pd_tok_free(struct pd_tokenizer *t);

/* Text (any bytes, not NUL-terminated, len <= PD_TOK_MAX_TEXT) to ids.
 * 0 with *n ids in ids[0..*n). -E2BIG when cap < the count: *n is the count
 * needed and ids[0..cap) hold the first cap ids. -EMSGSIZE past
 * PD_TOK_MAX_TEXT, -ENOMEM.
 * Cost: ~20-50 ns per byte of ordinary text; BPE of one pre-token of k bytes
 * is O(k log k), so a single run of millions of spaces or letters takes
 * seconds (docs/internals/text.md): callers cap what they accept. */
int pd_tok_encode(const struct pd_tokenizer *t, const char *text, size_t len, unsigned flags,
                  int32_t *ids, size_t cap, size_t *n);
/* A count of ids that encoding len bytes never exceeds (BOS and EOS
 * included): len + 2 for the default model. */
size_t pd_tok_max_ids(const struct pd_tokenizer *t, size_t len);

/* Ids to text: out[0..*len) followed by a NUL. Made valid UTF-8 (each
 * maximal invalid subpart becomes U+FFFD, as transformers does) unless
 * PD_TOK_DECODE_RAW. -E2BIG when cap < *len + 1: *len is the length needed
 * (without the NUL) and out holds nothing useful. -EINVAL for an id outside
 * [0, n_vocab). */
int pd_tok_decode(const struct pd_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                  char *out, size_t cap, size_t *len);

/* Accessors. Ids that do not exist are -1. */
uint32_t pd_tok_n_vocab(const struct pd_tokenizer *t);
int32_t pd_tok_bos(const struct pd_tokenizer *t);
int32_t pd_tok_eos(const struct pd_tokenizer *t);
int32_t pd_tok_unk(const struct pd_tokenizer *t);
int32_t pd_tok_pad(const struct pd_tokenizer *t);
bool pd_tok_adds_bos(const struct pd_tokenizer *t); /* the metadata default */
/* End of generation: EOS, tokenizer.ggml.eot/eom ids, and control tokens
 * that end a turn (<|im_end|>, <|eot_id|>, <|endoftext|>, ...). */
bool pd_tok_is_eog(const struct pd_tokenizer *t, int32_t id);
/* A control token (token type 3): parsed from text only with
 * PD_TOK_PARSE_SPECIAL, left out by PD_TOK_SKIP_SPECIAL. */
bool pd_tok_is_special(const struct pd_tokenizer *t, int32_t id);
/* The token's text as stored in the GGUF (byte-level tokens in their
 * alphabet: "Ġthe"), NUL-terminated; NULL for a bad id. */
const char *pd_tok_text(const struct pd_tokenizer *t, int32_t id, size_t *len);
/* The bytes the token decodes to (" the"); not NUL-terminated, may be cut
 * UTF-8. NULL for a bad id. */
const uint8_t *pd_tok_piece(const struct pd_tokenizer *t, int32_t id, size_t *len);
/* Id of the token whose stored text is exactly text[0..len), or -1. */
int32_t pd_tok_find(const struct pd_tokenizer *t, const char *text, size_t len);
/* tokenizer.chat_template (NUL-terminated copy), or NULL. */
const char *pd_tok_chat_template(const struct pd_tokenizer *t, size_t *len);
/* "gpt2" or "llama"; tokenizer.ggml.pre ("" if absent) and the one in use. */
const char *pd_tok_model(const struct pd_tokenizer *t);
const char *pd_tok_pre_declared(const struct pd_tokenizer *t);
const char *pd_tok_pre_used(const struct pd_tokenizer *t);

/* Streaming detokenization: push ids as they are generated, get the text
 * that is final. Never returns a cut multi-byte character; the concatenation
 * of everything returned by push and flush equals pd_tok_decode of all the
 * ids with the same flags (flags: PD_TOK_SKIP_SPECIAL or 0).
 *
 *   struct pd_detok *d;
 *   pd_detok_new(tok, PD_TOK_SKIP_SPECIAL, &d);
 *   for each id: pd_detok_push(d, id, &s, &n); send s[0..n)
 *   pd_detok_flush(d, &s, &n); send s[0..n)
 *   d = pd_detok_free(d);
 *
 * The returned text lives in the pd_detok until its next call. */
struct pd_detok;
int pd_detok_new(const struct pd_tokenizer *t, unsigned flags, struct pd_detok **out);
struct pd_detok *pd_detok_free(struct pd_detok *d); /* accepts NULL; returns NULL */
/* 0, or -EINVAL for a bad id (nothing changes). */
int pd_detok_push(struct pd_detok *d, int32_t id, const char **text, size_t *len);
/* End of stream: what was held back (a cut character becomes U+FFFD). The
 * detokenizer is then ready for a new stream. */
void pd_detok_flush(struct pd_detok *d, const char **text, size_t *len);

#endif
