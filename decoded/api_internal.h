/* decoded/api_internal: what api.c shares with api_chat.c (the chat
 * request's messages, tools and tool_choice), and both with api_field.c (a
 * refusal, a field). Not for other modules. */
#ifndef DEC_API_INTERNAL_H
#define DEC_API_INTERNAL_H

#include "api.h"

struct cJSON;

/* Fills *e (status, the field it names, a code, a message); returns -E2BIG
 * for 413, else -EINVAL. */
int dec_api_fail(struct dec_api_err *e, int status, const char *param, const char *code,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* root's member name; NULL when absent or null (null is the same as absent) */
const struct cJSON *dec_api_field(const struct cJSON *root, const char *name);

/* messages (with tool calls and tool results) into r->msgs / r->calls */
int dec_api_parse_messages(const struct cJSON *root, struct dec_api_req *r, struct dec_api_err *e);
/* tools, tool_choice, parallel_tool_calls; tools_text is the body's "tools"
 * value as written (jstrict). A named or required call constrains the
 * output with r->schema (so response_format may not too). */
int dec_api_parse_tools(const struct cJSON *root, const char *tools_text, size_t tools_len,
                        struct dec_api_req *r, struct dec_api_err *e);

#endif
