/* common/text/grammar: constrained decoding -- what a model's output may be
 * (OpenAI's response_format {"type": "json_object"}: one JSON object; or
 * "json_schema": an instance of a schema, common/text/schema.h), as a
 * byte-level matcher, and the tokens of a vocabulary that keep the output
 * on it (a mask for the sampler, kernels/sample.h).
 *
 *   struct pd_grammar *g;                       // one per tokenizer: its trie, a mask cache
 *   pd_grammar_new(tok, n_vocab, &g, err, sizeof err);   // n_vocab: the model's
 *   struct pd_gstate s;
 *   pd_gstate_json_object(&s);                  // a request's state: a value
 *   (or pd_gstate_init(&s, schema))
 *   for each step:
 *       const uint32_t *m = pd_grammar_mask(g, &s);   // (pd_grammar_mask_words) bits: allowed
 *       ... sample with the mask ...
 *       pd_gstate_advance(g, &s, token);              // -EINVAL: the token is not allowed
 *       if (pd_gstate_done(&s)) only end-of-generation is allowed (the mask says so)
 *   g = pd_grammar_free(g);
 *
 * The matcher takes bytes (RFC 8259 JSON, valid UTF-8 in strings, no raw
 * control characters): a token is allowed when every one of its bytes is, so
 * a token may close a string and open the next key, carry half a UTF-8
 * character, or end a number with the comma after it. A mask walks a trie
 * of the vocabulary's byte strings from the state, cutting a branch at its
 * first refused byte; masks are cached by state (a request's states repeat:
 * inside a string at one depth the mask is the same), so a step mostly costs
 * a lookup. Caps: nesting depth PD_GRAMMAR_MAX_DEPTH, whitespace runs of
 * PD_GRAMMAR_MAX_WS bytes (a model cannot stall in blank lines), numbers of
 * PD_GRAMMAR_MAX_NUMBER bytes. End-of-generation tokens are allowed exactly
 * when the value is complete, and then nothing else is; other control tokens
 * never are. A schema narrows each step (schema.h says how); where several
 * readings are open (anyOf), a token is allowed when one of them allows it,
 * and each reading's mask is cached on its own.
 *
 * Ownership and threads: a pd_grammar is its caller's thread's (the mask
 * cache changes on every call); it copies what it needs from the tokenizer.
 * A mask points into the cache: valid until the next pd_grammar_mask call.
 */
#ifndef PD_GRAMMAR_H
#define PD_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pd_tokenizer;
struct pd_grammar;

#define PD_GRAMMAR_MAX_DEPTH 32 /* objects and arrays open at once */
#define PD_GRAMMAR_MAX_WS 16 /* whitespace bytes in a row */
#define PD_GRAMMAR_MAX_NUMBER 64 /* bytes of one number */
#define PD_GRAMMAR_MAX_FRAMES 12 /* objects and arrays a schema types, nested */
#define PD_GRAMMAR_MAX_ALTS 8 /* readings followed at once (anyOf) */

/* An object or array the schema types: its node, and for an object the
 * properties passed (the next key's index), for an array its items. */
struct pd_gframe {
    uint16_t node, count;
};

/* One reading of the output so far (grammar.c). Plain data: compared as
 * bytes for the mask cache, so always made from a zeroed one. */
struct pd_gthread {
    int64_t mant; /* a bounded number's digits so far */
    uint64_t cand; /* a literal's (an enum value's, a key's) candidates: bit i is literal lit0 + i */
    uint32_t stack; /* bit i: container i (from the outside) is an object, else an array */
    uint32_t pos; /* a literal: bytes matched; a string: characters */
    struct pd_gframe frame[PD_GRAMMAR_MAX_FRAMES]; /* containers 0..fdepth-1 */
    uint16_t node; /* the schema node of the string, number or literal being read */
    uint16_t lit0;
    uint8_t depth; /* containers open */
    uint8_t fdepth; /* of them typed by the schema: always the outermost */
    uint8_t mode; /* what may come next (grammar.c's enum) */
    uint8_t sub; /* within a string, number or literal: where */
    uint8_t ws; /* whitespace bytes in the current run */
    uint8_t need, lo, hi; /* a string's UTF-8 character: continuation bytes to come, and the
                           * range of the next one */
    uint8_t len; /* bytes of the current number */
    uint8_t ndig, scale; /* a bounded number's digits, and of them after the point */
    uint8_t flags; /* grammar.c's F_* */
};

struct pd_schema;

/* A request's place in the output: the readings still possible (more than
 * one only inside an anyOf's alternatives), and the schema it follows
 * (borrowed: it must outlive the state). */
struct pd_gstate {
    const struct pd_schema *sc;
    uint32_t n;
    struct pd_gthread t[PD_GRAMMAR_MAX_ALTS];
};

/* n_vocab: the model's vocabulary, the sampler's rows (a checkpoint's may
 * be larger than its tokenizer's, or smaller): masks cover it, a token the
 * tokenizer lacks is never allowed, the tokenizer's past it are ignored. */
int pd_grammar_new(const struct pd_tokenizer *tok, uint32_t n_vocab, struct pd_grammar **out,
                   char *err, size_t errlen);
/* Accepts NULL; returns NULL. */
struct pd_grammar *pd_grammar_free(struct pd_grammar *g);
/* 32-bit words of a mask: ceil(n_vocab / 32), the model's. Bit t % 32 of word t / 32. */
uint32_t pd_grammar_mask_words(const struct pd_grammar *g);

/* The start of one JSON object, leading whitespace allowed. */
void pd_gstate_json_object(struct pd_gstate *s);
/* The start of an instance of sc (common/text/schema.h; borrowed). */
void pd_gstate_init(struct pd_gstate *s, const struct pd_schema *sc);
/* The tokens allowed in state s; NULL when out of memory. */
const uint32_t *pd_grammar_mask(struct pd_grammar *g, const struct pd_gstate *s);
/* s after token: 0, or -EINVAL (s unchanged) when the token is not allowed. */
int pd_gstate_advance(const struct pd_grammar *g, struct pd_gstate *s, int32_t token);
/* s after bytes (no tokens): 0, or -EINVAL (s unchanged). */
int pd_gstate_feed(struct pd_gstate *s, const uint8_t *b, size_t n);
/* The value is complete: only end-of-generation may follow. */
bool pd_gstate_done(const struct pd_gstate *s);

/* Mask cache counters, for the tests and the bench. */
struct pd_grammar_stats {
    uint64_t masks, hits, nodes; /* masks asked for, found cached, trie nodes walked */
};
void pd_grammar_stats(const struct pd_grammar *g, struct pd_grammar_stats *st);

#endif
