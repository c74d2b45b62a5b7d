/* common/text/chat: render a conversation as the model's prompt text, in the
 * format of its chat template.
 *
 *   struct pd_chat_template *ct;
 *   char err[256];
 *   // from the model (tokenizer.chat_template) or from --chat-template FILE|NAME
 *   if (pd_chat_template_from_tok(tok, &ct, err, sizeof(err)) < 0) { report err; }
 *   struct pd_chat_msg msgs[] = {
 *       {PD_CHAT_USER, "Hello", 5},
 *   };
 *   size_t len;
 *   int rc = pd_chat_render(ct, msgs, 1, true, buf, cap, &len, err, sizeof(err));
 *   // then pd_tok_encode(tok, buf, len, PD_TOK_PARSE_SPECIAL, ...)
 *   ct = pd_chat_template_free(ct);
 *
 * No Jinja engine: templates are recognised as one of a few families and
 * rendered by code that reproduces, byte for byte, what transformers'
 * apply_chat_template renders with the family's reference template (checked
 * against committed outputs). Families:
 *   chatml  <|im_start|>role\ncontent<|im_end|>\n ... (SmolLM, Qwen, ...);
 *           a default system prompt in the template (SmolLM's "You are a
 *           helpful AI assistant named SmolLM, ...") is found and used when
 *           the conversation does not start with a system message
 *   llama2  <s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] answer </s>...
 *   llama3  <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\n...
 *   qwen3   ChatML with Qwen3's reasoning rules
 *   llama31 Llama-3 with Llama-3.1's system turn (knowledge and date lines)
 *   mistral [INST]user[/INST]answer</s> with the system message in the last user turn
 * Known templates (the models' own, byte for byte) are recognised exactly;
 * others by a few documented markers. A template that is none of these is
 * an error (-ENOTSUP) naming the families and the --chat-template option;
 * docs/internals/text.md.
 *
 * Ownership: a template object owns copies of everything it needs (the
 * tokenizer may be freed first); it is immutable and may be shared by
 * threads. Message content is bytes, copied verbatim into the prompt: encode
 * the prompt with PD_TOK_PARSE_SPECIAL as transformers does, and know that
 * content containing "<|im_end|>" then becomes that token.
 */
#ifndef PD_CHAT_H
#define PD_CHAT_H

#include <stdbool.h>
#include <stddef.h>

struct pd_tokenizer;
struct pd_chat_template;

#define PD_CHAT_MAX_MSGS 4096
#define PD_CHAT_MAX_CONTENT (4u << 20) /* bytes of one message */
#define PD_CHAT_MAX_FILE (256u << 10) /* bytes of a --chat-template file */
#define PD_CHAT_MAX_SYSTEM 4096 /* bytes of a template's default system prompt */

enum pd_chat_family {
    PD_CHAT_CHATML,
    PD_CHAT_LLAMA2,
    PD_CHAT_LLAMA3,
    PD_CHAT_QWEN3, /* ChatML; an assistant turn's <think> reasoning kept only after the last
                    * user turn (Qwen3's template) */
    PD_CHAT_LLAMA31, /* Llama-3.1/3.3: a system turn always, with its knowledge and date lines */
    PD_CHAT_MISTRAL, /* Mistral's v3 [INST]...[/INST] (Nemo): the system message joins the
                      * last user turn */
    PD_CHAT_FAMILIES,
};

enum pd_chat_role {
    PD_CHAT_SYSTEM,
    PD_CHAT_USER,
    PD_CHAT_ASSISTANT,
    PD_CHAT_TOOL, /* a tool's result, fed back (templates with tool calls only) */
};

/* One tool call an assistant message made: the function's name and its
 * arguments, a JSON text as the API carries them (rendered as the template's
 * tojson prints the parsed value: common/text/pyjson.h). */
struct pd_chat_call {
    const char *name; /* not NUL-terminated */
    size_t name_len;
    const char *args;
    size_t args_len;
};

struct pd_chat_msg {
    enum pd_chat_role role;
    const char *content; /* not NUL-terminated */
    size_t len;
    const struct pd_chat_call *calls; /* assistant: its tool calls (n_calls); NULL: none */
    size_t n_calls;
};

/* How a template's model calls tools, which is how its output is read:
 *   HERMES  <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, one
 *           block per call, after any content (Qwen2.5, Qwen3)
 *   LLAMA   the whole answer one {"name": ..., "parameters": {...}} (Llama-3.1) */
enum pd_chat_calls {
    PD_CHAT_CALLS_NONE, /* the template has no tools */
    PD_CHAT_CALLS_HERMES,
    PD_CHAT_CALLS_LLAMA,
};

#define PD_CHAT_MAX_TOOLS 128 /* tools in one conversation */
#define PD_CHAT_MAX_CALLS 64 /* tool calls in one message */

/* "system", "user", "assistant", "tool" -> role; -EINVAL otherwise. */
int pd_chat_role_parse(const char *s, size_t len, enum pd_chat_role *role);
const char *pd_chat_role_name(enum pd_chat_role role);

/* Recognise a Jinja chat template's family (and ChatML's default system
 * prompt). tok (may be NULL) supplies the BOS/EOS texts the template prints.
 * -ENOTSUP for an unknown template, -E2BIG past a cap, -ENOMEM. */
int pd_chat_template_parse(const char *text, size_t len, const struct pd_tokenizer *tok,
                           struct pd_chat_template **out, char *err, size_t errlen);
/* From tokenizer.chat_template; -ENOENT when the model has none. */
int pd_chat_template_from_tok(const struct pd_tokenizer *tok, struct pd_chat_template **out,
                              char *err, size_t errlen);
/* "chatml", "llama2", "llama3", "qwen3", "llama31", "mistral" (no default
 * system prompt). -ENOTSUP otherwise. */
int pd_chat_template_by_name(const char *name, const struct pd_tokenizer *tok,
                             struct pd_chat_template **out, char *err, size_t errlen);
/* --chat-template ARG: a readable file holds either a family name or a Jinja
 * template (as in tokenizer_config.json's chat_template); anything else is
 * taken as a name. */
int pd_chat_template_load(const char *arg, const struct pd_tokenizer *tok,
                          struct pd_chat_template **out, char *err, size_t errlen);
/* Accepts NULL; returns NULL. */
struct pd_chat_template *pd_chat_template_free(struct pd_chat_template *ct);

enum pd_chat_family pd_chat_template_family(const struct pd_chat_template *ct);
const char *pd_chat_family_name(enum pd_chat_family f);
/* The default system prompt ("" when none). */
const char *pd_chat_template_default_system(const struct pd_chat_template *ct);
/* Whether and how the template calls tools: the models' own templates that
 * have tools (Qwen2.5's, Qwen3's, Llama-3.1's, recognised byte for byte) and
 * the names qwen3 and llama31; NONE for every other. */
enum pd_chat_calls pd_chat_template_calls(const struct pd_chat_template *ct);

/* Render n messages (1 <= n <= PD_CHAT_MAX_MSGS). add_generation_prompt appends
 * the opening of the assistant's turn (Llama-2 has none). out[0..*len)
 * followed by a NUL; -E2BIG when cap < *len + 1 (*len = the length needed).
 * -EINVAL with a message for conversations the template refuses (Llama-2:
 * roles must alternate user/assistant after an optional system message) and
 * for content over PD_CHAT_MAX_CONTENT. */
int pd_chat_render(const struct pd_chat_template *ct, const struct pd_chat_msg *msgs, size_t n,
                   bool add_generation_prompt, char *out, size_t cap, size_t *len, char *err,
                   size_t errlen);
/* The same with the tools the model may call: tools[0..tools_len) the JSON
 * text of the API's "tools" array (NULL: none), each element written as the
 * template's tojson prints it. -EINVAL (with a message) where the template
 * has no tools and the conversation has tools, tool messages or tool calls,
 * for arguments or tools that are not JSON, more than PD_CHAT_MAX_TOOLS
 * tools or PD_CHAT_MAX_CALLS calls in a message, and where the template
 * raises (Llama-3.1: one call per message, a user message after the system
 * one to hold the tools). */
int pd_chat_render_tools(const struct pd_chat_template *ct, const struct pd_chat_msg *msgs,
                         size_t n, const char *tools, size_t tools_len, bool add_generation_prompt,
                         char *out, size_t cap, size_t *len, char *err, size_t errlen);

#endif
