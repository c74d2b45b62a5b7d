/* decoded/api: OpenAI request bodies in, response bodies out. No I/O, no
 * engine: parsing and validation with cJSON into a struct dec_api_req, and
 * the JSON of responses, stream chunks and log-probabilities.
 *
 *   struct dec_api_req r;
 *   struct dec_api_err e;
 *   if (dec_api_parse(DEC_API_CHAT, body, len, &limits, &r, &e) < 0)
 *       reply e.status with an OpenAI error naming e.param;
 *   ... tokenize r.prompt / render r.msgs, run ...
 *   char *json = dec_api_response(&out, text, len, logprobs, "stop", n_prompt, n_gen);
 *   dec_api_req_done(&r);
 *
 * What is refused (400, naming the field): invalid JSON or UTF-8, nesting
 * deeper than limits->json_depth, a root that is not an object, wrong JSON
 * types, values out of range, more than DEC_API_MAX_PROMPTS choices, echo in chat,
 * best_of != n, a logit_bias of more than PD_MAX_LOGIT_BIAS entries or
 * biases outside [-100, 100], malformed tools or tool calls (and tools on
 * /v1/completions; "functions"), response_format other than text,
 * json_object or json_schema, a schema with what common/text/schema.h refuses,
 * logprobs beyond PD_MAX_LOGPROBS. Unknown fields are ignored; null is the
 * same as absent.
 */
#ifndef DEC_API_H
#define DEC_API_H

#include "chat.h"
#include "sample.h"
#include "schema.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cJSON;
struct pd_tokenizer;

enum dec_api_kind {
    DEC_API_COMPLETIONS,
    DEC_API_CHAT,
};

struct dec_api_limits {
    int json_depth; /* deepest nesting of objects and arrays */
    uint32_t max_stops; /* stop strings per request */
    size_t max_stop_len; /* bytes of one */
    uint32_t max_prompt_ids; /* token ids in a token-id prompt (413 past it) */
};

/* /v1/completions without max_tokens generates this many (OpenAI's and
 * vLLM's default); chat without it, to the end of the context. */
#define DEC_API_COMPLETIONS_MAX_TOKENS 16

/* Prompts in one /v1/completions request (a list of strings or of token-id
 * lists: one choice each, as OpenAI's API). */
#define DEC_API_MAX_PROMPTS 64 /* also: choices (prompts x n) in one request */
#define DEC_API_MAX_N 16 /* "n": choices per prompt */

/* One completions prompt: text (into the request's JSON, NUL-terminated) or
 * token ids (owned by the request until taken: ids set NULL). */
struct dec_api_prompt {
    const char *text;
    size_t len;
    int32_t *ids;
    uint32_t n_ids;
};

/* What the model may do with the request's tools (OpenAI's tool_choice). */
enum dec_tool_choice {
    DEC_TOOL_NONE, /* no tools, or "none": the tools are not shown to the model */
    DEC_TOOL_AUTO, /* the model may call them: its calls are read out of its text */
    DEC_TOOL_REQUIRED, /* it must call one or more: the output is constrained to a JSON
                        * array of {"name", "parameters"} (vLLM's way) */
    DEC_TOOL_NAMED, /* it must call tool_name: the output is its arguments */
};

#define DEC_API_MAX_TOOL_NAME 64 /* OpenAI's: 1..64 of [A-Za-z0-9_-] */

struct dec_api_req {
    enum dec_api_kind kind;
    struct cJSON *root; /* owned; model and prompt point into it */
    const char *model; /* NULL: absent */
    /* completions: the prompts, 1..DEC_API_MAX_PROMPTS (a list of them makes
     * one choice each); chat: none */
    struct dec_api_prompt *prompts; /* (n_prompts) owned */
    uint32_t n_prompts;
    uint32_t n; /* choices per prompt, 1..DEC_API_MAX_N; choice i * n + k is prompt i's k-th,
                 * sampled with seed + k */
    struct pd_chat_msg *msgs; /* chat (owned, contents owned) */
    size_t n_msgs;
    struct pd_chat_call *calls; /* every message's tool calls (owned; names and arguments
                                 * point into root) */
    char *tools; /* the "tools" array's JSON text as sent (owned); NULL: none shown */
    size_t tools_len;
    enum dec_tool_choice tool_choice;
    char tool_name[DEC_API_MAX_TOOL_NAME + 1]; /* DEC_TOOL_NAMED */
    int64_t max_tokens; /* -1: absent (chat); completions default to 16; 0 only with echo */
    struct pd_sampling sampling; /* n_logprobs = alternatives asked for; bias = this bias */
    struct pd_logit_bias *bias; /* (sampling.n_bias) owned: logit_bias, in the body's order */
    bool has_seed;
    const char *seed_text; /* the body's "seed" number as written (parse only) */
    size_t seed_len;
    char **stops; /* owned; taken by whoever sets it NULL */
    uint32_t n_stops;
    bool stream, include_usage;
    bool logprobs; /* report log-probabilities */
    bool echo; /* completions: the prompt before its completion (with logprobs, the prompt's
                * tokens' too); max_tokens may then be 0 */
    bool ignore_eos;
    /* response_format json_object (pd_schema_json_object()) or json_schema: what the
     * output must be; a reference, dropped by dec_api_req_done; NULL: text */
    struct pd_schema *schema;
    const char *cache_salt; /* NULL: absent; else 1..PD_PREFIX_MAX_SALT bytes (into root) */
};

struct dec_api_err {
    int status; /* 400 or 413 */
    const char *param; /* static string or NULL */
    const char *code; /* static string or NULL */
    char msg[512];
};

/* 0, or -EINVAL/-E2BIG with *e filled; *r is then released already. */
int dec_api_parse(enum dec_api_kind kind, const char *body, size_t len,
                  const struct dec_api_limits *lim, struct dec_api_req *r, struct dec_api_err *e);
void dec_api_req_done(struct dec_api_req *r);
/* /detokenize's body: {"tokens": [ids], "model"?: name}, each id in
 * [0, n_vocab), at most max of them, checked as strictly as dec_api_parse's
 * (UTF-8, depth, duplicate keys, NUL). 0 with *ids (caller frees) and *n,
 * or -EINVAL / -ENOMEM with *e filled. */
int dec_api_token_list(const char *body, size_t len, const struct dec_api_limits *lim,
                       uint32_t n_vocab, uint32_t max, int32_t **ids, size_t *n,
                       struct dec_api_err *e);

/* Deepest nesting of objects/arrays in a JSON text, scanning outside
 * strings; stops counting past limit (returns limit + 1). */
int dec_api_json_depth(const char *s, size_t n, int limit);

/* Response envelopes. */
struct dec_api_out {
    enum dec_api_kind kind;
    const char *id, *model;
    int64_t created;
};

/* Log-probabilities: an accumulator of the kind's shape, one token at a
 * time. tok may be NULL (dummy model: tokens are "[id]"). text_offset: where
 * the token's text starts in the completion (completions only). */
struct cJSON *dec_api_lp_new(enum dec_api_kind kind);
int dec_api_lp_add(struct cJSON *lp, enum dec_api_kind kind, const struct pd_tokenizer *tok,
                   const struct pd_sample_result *r, uint32_t n_top, size_t text_offset);
/* Echo's first prompt token (completions): its text and offset, null for its
 * log-probability and alternatives (nothing comes before it). */
int dec_api_lp_add_first(struct cJSON *lp, const struct pd_tokenizer *tok, int32_t token,
                         size_t text_offset);
/* text_offset counts characters, as OpenAI's and vLLM's (Python string
 * indices): the UTF-8 lead bytes of s[0, n) -- a character cut between two
 * tokens counts where it starts. */
size_t dec_api_chars(const char *s, size_t n);
/* The characters a token's text adds to text_offset (its lead bytes). */
size_t dec_api_token_chars(const struct pd_tokenizer *tok, int32_t token);

/* One choice of a response: its text, log-probabilities (may be NULL;
 * consumed), finish reason and tool calls (chat; may be NULL; consumed: a
 * message's tool_calls, toolcall.h; the content is null when there is none
 * beside them). */
struct dec_api_choice {
    const char *text;
    size_t len;
    struct cJSON *lp;
    const char *finish;
    struct cJSON *calls;
};

/* The whole non-streamed response: choices[i] has index i; usage sums the
 * prompts and the generated tokens. Every lp is consumed. Returns malloc'd
 * JSON or NULL (out of memory). */
char *dec_api_response(const struct dec_api_out *o, struct dec_api_choice *choices, uint32_t n,
                       uint32_t n_prompt, uint32_t n_gen);
/* One stream chunk of choice `index`: text delta (chat: role on the first),
 * lp and calls (tool-call deltas, or NULL) consumed, finish NULL until its
 * last; usage_null adds "usage": null (when the client asked for usage,
 * every chunk carries the key). */
char *dec_api_chunk(const struct dec_api_out *o, uint32_t index, const char *text, size_t len,
                    bool first, struct cJSON *lp, struct cJSON *calls, const char *finish,
                    bool usage_null);
/* The last chunk when usage was asked for: no choices, the usage. */
char *dec_api_usage_chunk(const struct dec_api_out *o, uint32_t n_prompt, uint32_t n_gen);

#endif
