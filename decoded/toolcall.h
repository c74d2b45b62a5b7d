/* decoded/toolcall: a choice's tool calls read out of the model's text, as
 * it comes (streamed) or whole, into OpenAI's tool_calls.
 *
 *   struct dec_toolcall *tc = dec_toolcall_new(r.tool_choice, pd_chat_template_calls(ct),
 *                                              r.tool_name);
 *   struct dec_toolcall_out o;
 *   dec_toolcall_feed(tc, text, len, last, &o);   // for each piece of text
 *   ... o.content[0..o.len): the content released now; o.calls: the tool-call
 *       deltas released now ([{"index", "id", "type", "function": {"name",
 *       "arguments"}}], or {"index", "function": {"arguments"}} for more of
 *       a named call's arguments), NULL when none ...
 *   dec_toolcall_out_done(&o);
 *   tc = dec_toolcall_free(tc);
 *
 * What is read, by the request's tool_choice (api.h) and the template's way
 * of calling (chat.h):
 *   NAMED     every byte is the named function's arguments (streamed as
 *             they come)
 *   REQUIRED  the output, a JSON array of {"name", "parameters"}, becomes
 *             one call per element at the end (the first
 *             PD_CHAT_MAX_CALLS; the schema allows no more)
 *   AUTO, HERMES  each complete <tool_call>{"name", "arguments"}</tool_call>
 *             block is a call when it closes; the content is the text before
 *             the first <tool_call> (streamed up to where the tag could
 *             start); with no call that reads, all of the text is content
 *   AUTO, LLAMA   an answer that starts (after white space) with '{' and is
 *             one {"name", "parameters"} object is a call; any other is
 *             content
 *   NONE      all content
 * Arguments read out of a block or array are written again as Python's
 * json.dumps writes them (vLLM's parsers do the same); a named call's are
 * the model's bytes. An object with a repeated key is not read as a call
 * (common/text/pyjson.h: it would read two ways). Call ids are "call_" and 24 random hex digits. Fed the
 * same text, streamed and whole give the same content and calls.
 *
 * Caps: the text is the choice's output, bounded by max_tokens; at most
 * PD_CHAT_MAX_CALLS calls are read (later blocks are dropped).
 */
#ifndef DEC_TOOLCALL_H
#define DEC_TOOLCALL_H

#include "api.h"
#include "chat.h"

#include <stdbool.h>
#include <stddef.h>

struct cJSON;
struct dec_toolcall;

struct dec_toolcall_out {
    char *content; /* owned; NULL when len is 0 */
    size_t len;
    struct cJSON *calls; /* owned array; NULL when none */
};

/* NULL when out of memory. name: the NAMED function (else ignored). */
struct dec_toolcall *dec_toolcall_new(enum dec_tool_choice choice, enum pd_chat_calls how,
                                      const char *name);
struct dec_toolcall *dec_toolcall_free(struct dec_toolcall *tc);
/* Feeds text (last: the choice's final piece). *out is filled (zeroed
 * first). -ENOMEM (out then holds nothing). */
int dec_toolcall_feed(struct dec_toolcall *tc, const char *text, size_t len, bool last,
                      struct dec_toolcall_out *out);
void dec_toolcall_out_done(struct dec_toolcall_out *out);
/* Whether a call went out (the finish reason is then "tool_calls"). */
bool dec_toolcall_called(const struct dec_toolcall *tc);
/* Stream deltas as the calls of a whole message: "index" dropped, a named
 * call's argument pieces joined into its one call. Consumes calls. */
struct cJSON *dec_toolcall_whole(struct cJSON *calls);

#endif
