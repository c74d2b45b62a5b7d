/* decoded/api_chat: a chat request's messages (with the tool calls an
 * assistant made and the tools' results), its tools and tool_choice. See
 * api_internal.h; docs/internals/daemon.md, "Tools". */
#include "api_internal.h"

#include "pyjson.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* content: a string, or an array of {"type":"text","text":...} parts (joined). */
static int message_content(const cJSON *c, struct pd_chat_msg *m, struct dec_api_err *e)
{
    if (cJSON_IsString(c)) {
        m->len = strlen(c->valuestring);
        if (!(m->content = strndup(c->valuestring, m->len)))
            return dec_api_fail(e, 503, NULL, NULL, "out of memory");
        return 0;
    }
    if (!cJSON_IsArray(c))
        return dec_api_fail(e, 400, "messages", "invalid_type",
                            "a message's 'content' must be a string or an array of text parts");
    size_t total = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c)
    {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
            !cJSON_IsString(text))
            return dec_api_fail(
                e, 400, "messages", "invalid_value",
                "only text content parts ({\"type\":\"text\",\"text\":...}) are supported");
        total += strlen(text->valuestring);
    }
    char *buf = malloc(total + 1);
    if (!buf)
        return dec_api_fail(e, 503, NULL, NULL, "out of memory");
    size_t k = 0;
    cJSON_ArrayForEach(part, c)
    {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t n = strlen(t);
        memcpy(buf + k, t, n);
        k += n;
    }
    buf[k] = '\0';
    m->content = buf;
    m->len = k;
    return 0;
}

static bool tool_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= DEC_API_MAX_TOOL_NAME &&
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

/* an assistant's tool_calls: [{"id", "type": "function", "function": {"name",
 * "arguments": a JSON text}}], into r->calls from *used on */
static int message_calls(const cJSON *tc, size_t i, struct pd_chat_msg *out, struct dec_api_req *r,
                         size_t *used, struct dec_api_err *e)
{
    if (!cJSON_IsArray(tc))
        return dec_api_fail(e, 400, "messages", "invalid_type",
                            "message %zu: 'tool_calls' must be an array", i);
    int n = cJSON_GetArraySize(tc);
    if (n > PD_CHAT_MAX_CALLS)
        return dec_api_fail(e, 400, "messages", "invalid_value",
                            "message %zu: more than %d tool calls", i, PD_CHAT_MAX_CALLS);
    out->calls = r->calls + *used;
    const cJSON *c;
    cJSON_ArrayForEach(c, tc)
    {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(c, "type");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *name = f ? cJSON_GetObjectItemCaseSensitive(f, "name") : NULL;
        const cJSON *args = f ? cJSON_GetObjectItemCaseSensitive(f, "arguments") : NULL;
        if (!cJSON_IsObject(c) ||
            (type && !(cJSON_IsString(type) && !strcmp(type->valuestring, "function"))) ||
            !cJSON_IsObject(f) || !cJSON_IsString(name) || !cJSON_IsString(args))
            return dec_api_fail(e, 400, "messages", "invalid_value",
                                "message %zu: a tool call is {\"type\": \"function\", "
                                "\"function\": {\"name\": string, \"arguments\": string}}",
                                i);
        /* the arguments are a JSON text; a template prints their value */
        char *dump, err[128];
        size_t dn;
        int rc = pd_pyjson_dump(args->valuestring, strlen(args->valuestring), 0, &dump, &dn, err,
                                sizeof(err));
        if (rc == -ENOMEM)
            return dec_api_fail(e, 503, NULL, NULL, "out of memory");
        if (rc < 0)
            return dec_api_fail(e, 400, "messages", "invalid_value",
                                "message %zu: tool call %zu's arguments are not JSON: %s", i,
                                out->n_calls, err);
        free(dump);
        r->calls[*used] = (struct pd_chat_call){name->valuestring, strlen(name->valuestring),
                                                args->valuestring, strlen(args->valuestring)};
        (*used)++;
        out->n_calls++;
    }
    if (!out->n_calls)
        out->calls = NULL;
    return 0;
}

static int count_calls(const cJSON *msgs, size_t *n)
{
    const cJSON *m;
    *n = 0;
    cJSON_ArrayForEach(m, msgs)
    {
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        *n += cJSON_IsArray(tc) ? (size_t)cJSON_GetArraySize(tc) : 0;
    }
    return 0;
}

int dec_api_parse_messages(const cJSON *root, struct dec_api_req *r, struct dec_api_err *e)
{
    const cJSON *msgs = dec_api_field(root, "messages");
    if (!msgs)
        return dec_api_fail(e, 400, "messages", "missing_required_parameter",
                            "'messages' is required");
    if (!cJSON_IsArray(msgs))
        return dec_api_fail(e, 400, "messages", "invalid_type", "'messages' must be an array");
    int n = cJSON_GetArraySize(msgs);
    if (n == 0)
        return dec_api_fail(e, 400, "messages", "invalid_value", "'messages' is empty");
    if (n > PD_CHAT_MAX_MSGS)
        return dec_api_fail(e, 400, "messages", "invalid_value", "more than %d messages",
                            PD_CHAT_MAX_MSGS);
    size_t n_calls, used = 0;
    count_calls(msgs, &n_calls);
    if (!(r->msgs = calloc((size_t)n, sizeof(*r->msgs))) ||
        (n_calls && !(r->calls = calloc(n_calls, sizeof(*r->calls)))))
        return dec_api_fail(e, 503, NULL, NULL, "out of memory");
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = dec_api_field(m, "content");
        const cJSON *tc = cJSON_IsObject(m) ? dec_api_field(m, "tool_calls") : NULL;
        struct pd_chat_msg *out = &r->msgs[r->n_msgs];
        if (!cJSON_IsObject(m) || !cJSON_IsString(role))
            return dec_api_fail(e, 400, "messages", "invalid_type",
                                "each message must be an object with a string 'role'");
        const char *rs = role->valuestring;
        if (strcmp(rs, "developer") == 0)
            rs = "system"; /* OpenAI's newer name for the system role */
        if (pd_chat_role_parse(rs, strlen(rs), &out->role) < 0)
            return dec_api_fail(e, 400, "messages", "invalid_value",
                                "unsupported role '%.32s' (system, developer, user, assistant, "
                                "tool)",
                                role->valuestring);
        if (tc && out->role != PD_CHAT_ASSISTANT)
            return dec_api_fail(e, 400, "messages", "invalid_value",
                                "message %zu: only an assistant message has 'tool_calls'",
                                r->n_msgs);
        if (tc && message_calls(tc, r->n_msgs, out, r, &used, e) < 0)
            return -EINVAL;
        if (!content) {
            if (out->role != PD_CHAT_ASSISTANT)
                return dec_api_fail(e, 400, "messages", "missing_required_parameter",
                                    "a %s message needs 'content'", rs);
            out->content = strdup("");
            if (!out->content)
                return dec_api_fail(e, 503, NULL, NULL, "out of memory");
        } else if (message_content(content, out, e) < 0) {
            return -EINVAL;
        }
        r->n_msgs++;
    }
    return 0;
}

/* ---- tools and tool_choice ---- */

/* One tool: {"type": "function", "function": {"name", "description"?,
 * "parameters"?, "strict"?}}; its function object. */
static int check_tool(const cJSON *t, int i, const cJSON **fn, struct dec_api_err *e)
{
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
    const cJSON *name = f ? cJSON_GetObjectItemCaseSensitive(f, "name") : NULL;
    const cJSON *desc = f ? dec_api_field(f, "description") : NULL;
    const cJSON *params = f ? dec_api_field(f, "parameters") : NULL;
    const cJSON *strict = f ? dec_api_field(f, "strict") : NULL;
    if (!cJSON_IsObject(t) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") ||
        !cJSON_IsObject(f))
        return dec_api_fail(e, 400, "tools", "invalid_value",
                            "tools[%d] must be {\"type\": \"function\", \"function\": {...}}", i);
    if (!cJSON_IsString(name) || !tool_name_ok(name->valuestring))
        return dec_api_fail(e, 400, "tools", "invalid_value",
                            "tools[%d].function.name must be 1 to %d letters, digits, '_' or "
                            "'-'",
                            i, DEC_API_MAX_TOOL_NAME);
    if ((desc && !cJSON_IsString(desc)) || (params && !cJSON_IsObject(params)) ||
        (strict && !cJSON_IsBool(strict)))
        return dec_api_fail(e, 400, "tools", "invalid_type",
                            "tools[%d].function: 'description' is a string, 'parameters' an "
                            "object, 'strict' a boolean",
                            i);
    *fn = f;
    return 0;
}

static int compile(const cJSON *schema, bool array_root, const char *what, struct dec_api_req *r,
                   struct dec_api_err *e)
{
    char err[300];
    int rc = schema ? pd_schema_compile_root(schema, array_root, &r->schema, err, sizeof(err)) : 0;
    if (!schema)
        r->schema = pd_schema_json_object(); /* no parameters: any object */
    if (rc == -ENOMEM)
        return dec_api_fail(e, 503, "tools", "server_error", "out of memory for the schema");
    if (rc < 0)
        return dec_api_fail(e, 400, "tools", "invalid_value", "%s: %s", what, err);
    return 0;
}

/* A parameters schema's $defs (or definitions) hoisted to the root of the
 * required-call schema, where its "#/$defs/..." references now point. The
 * same name defined twice differently is refused. */
static int hoist_defs(cJSON *root, cJSON *params, struct dec_api_err *e)
{
    static const char *const keys[2] = {"$defs", "definitions"};
    for (int k = 0; k < 2; k++) {
        cJSON *defs = cJSON_DetachItemFromObjectCaseSensitive(params, keys[k]);
        if (!defs)
            continue;
        cJSON *into = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        if (!into && !(into = cJSON_AddObjectToObject(root, keys[k]))) {
            cJSON_Delete(defs);
            return dec_api_fail(e, 503, NULL, NULL, "out of memory");
        }
        cJSON *d;
        while (cJSON_IsObject(defs) && (d = defs->child)) {
            cJSON_DetachItemViaPointer(defs, d);
            const cJSON *had = cJSON_GetObjectItemCaseSensitive(into, d->string);
            if (had && !cJSON_Compare(had, d, true)) {
                char name[64];
                snprintf(name, sizeof(name), "%s", d->string);
                cJSON_Delete(d);
                cJSON_Delete(defs);
                return dec_api_fail(e, 400, "tool_choice", "invalid_value",
                                    "tool_choice \"required\": two tools define %s/%s "
                                    "differently; name one function instead",
                                    keys[k], name);
            }
            if (had)
                cJSON_Delete(d);
            else
                cJSON_AddItemToObject(into, d->string, d);
        }
        cJSON_Delete(defs);
    }
    return 0;
}

/* tool_choice "required": a JSON array of one or more {"name": a tool's
 * name, "parameters": its arguments} (at most one with parallel_tool_calls
 * false) */
static int required_schema(const cJSON *tools, bool parallel, struct dec_api_req *r,
                           struct dec_api_err *e)
{
    cJSON *root = cJSON_CreateObject(), *alts = cJSON_CreateArray();
    int rc = root && alts ? 0 : dec_api_fail(e, 503, NULL, NULL, "out of memory");
    const cJSON *t;
    cJSON_ArrayForEach(t, tools)
    {
        if (rc < 0)
            break;
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *p = dec_api_field(f, "parameters");
        cJSON *alt = cJSON_CreateObject(), *props = cJSON_AddObjectToObject(alt, "properties");
        cJSON *name = cJSON_AddObjectToObject(props, "name");
        cJSON *params = p ? cJSON_Duplicate(p, true) : cJSON_CreateObject();
        if (!alt || !props || !name || !params ||
            !cJSON_AddStringToObject(name, "const",
                                     cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring)) {
            cJSON_Delete(alt);
            cJSON_Delete(params);
            rc = dec_api_fail(e, 503, NULL, NULL, "out of memory");
            break;
        }
        if (!p)
            cJSON_AddStringToObject(params, "type", "object");
        rc = hoist_defs(root, params, e);
        cJSON_AddItemToObject(props, "parameters", params);
        cJSON_AddStringToObject(alt, "type", "object");
        cJSON *req = cJSON_AddArrayToObject(alt, "required");
        cJSON_AddItemToArray(req, cJSON_CreateString("name"));
        cJSON_AddItemToArray(req, cJSON_CreateString("parameters"));
        cJSON_AddFalseToObject(alt, "additionalProperties");
        cJSON_AddItemToArray(alts, alt);
    }
    if (rc == 0) {
        cJSON_AddStringToObject(root, "type", "array");
        cJSON_AddNumberToObject(root, "minItems", 1);
        cJSON_AddNumberToObject(root, "maxItems", parallel ? PD_CHAT_MAX_CALLS : 1);
        cJSON *items = cJSON_AddObjectToObject(root, "items");
        if (items) {
            cJSON_AddItemToObject(items, "anyOf", alts);
            alts = NULL;
        }
        rc = compile(root, true, "tool_choice \"required\" over these tools", r, e);
    }
    cJSON_Delete(alts);
    cJSON_Delete(root);
    return rc;
}

int dec_api_parse_tools(const cJSON *root, const char *tools_text, size_t tools_len,
                        struct dec_api_req *r, struct dec_api_err *e)
{
    const cJSON *tools = dec_api_field(root, "tools");
    const cJSON *choice = dec_api_field(root, "tool_choice");
    bool parallel = true;
    const cJSON *pv = dec_api_field(root, "parallel_tool_calls");
    if (pv && !cJSON_IsBool(pv))
        return dec_api_fail(e, 400, "parallel_tool_calls", "invalid_type",
                            "'parallel_tool_calls' must be a boolean");
    parallel = !pv || cJSON_IsTrue(pv);
    if (tools && !cJSON_IsArray(tools))
        return dec_api_fail(e, 400, "tools", "invalid_type", "'tools' must be an array");
    int n = tools ? cJSON_GetArraySize(tools) : 0;
    if (n > PD_CHAT_MAX_TOOLS)
        return dec_api_fail(e, 400, "tools", "invalid_value", "more than %d tools",
                            PD_CHAT_MAX_TOOLS);
    const cJSON *t, *named = NULL;
    int i = 0;
    cJSON_ArrayForEach(t, tools)
    {
        const cJSON *f = NULL;
        if (check_tool(t, i, &f, e) < 0)
            return -EINVAL;
        const char *name = cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring;
        for (const cJSON *u = tools->child; u != t; u = u->next)
            if (!strcmp(cJSON_GetObjectItemCaseSensitive(
                            cJSON_GetObjectItemCaseSensitive(u, "function"), "name")
                            ->valuestring,
                        name))
                return dec_api_fail(e, 400, "tools", "invalid_value", "two tools are named '%s'",
                                    name);
        i++;
    }
    /* tool_choice: "none", "auto", "required" or {"type": "function",
     * "function": {"name"}}; without it, auto when there are tools */
    r->tool_choice = n ? DEC_TOOL_AUTO : DEC_TOOL_NONE;
    if (cJSON_IsString(choice)) {
        const char *c = choice->valuestring;
        if (!strcmp(c, "none"))
            r->tool_choice = DEC_TOOL_NONE;
        else if (!strcmp(c, "required") && n)
            r->tool_choice = DEC_TOOL_REQUIRED;
        else if (strcmp(c, "auto") != 0)
            return dec_api_fail(e, 400, "tool_choice", "invalid_value",
                                !strcmp(c, "required")
                                    ? "tool_choice \"required\" needs tools"
                                    : "tool_choice must be \"none\", \"auto\", \"required\" or "
                                      "{\"type\": \"function\", \"function\": {\"name\": ...}}");
    } else if (choice) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(choice, "type");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(choice, "function");
        const cJSON *name = f ? cJSON_GetObjectItemCaseSensitive(f, "name") : NULL;
        if (!cJSON_IsObject(choice) || !cJSON_IsString(type) ||
            strcmp(type->valuestring, "function") || !cJSON_IsString(name))
            return dec_api_fail(e, 400, "tool_choice", "invalid_value",
                                "tool_choice must be \"none\", \"auto\", \"required\" or "
                                "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        cJSON_ArrayForEach(t, tools)
        {
            const cJSON *tf = cJSON_GetObjectItemCaseSensitive(t, "function");
            if (!strcmp(cJSON_GetObjectItemCaseSensitive(tf, "name")->valuestring,
                        name->valuestring))
                named = tf;
        }
        if (!named)
            return dec_api_fail(e, 400, "tool_choice", "invalid_value",
                                "tool_choice names '%.64s', which is not one of the tools",
                                name->valuestring);
        r->tool_choice = DEC_TOOL_NAMED;
        snprintf(r->tool_name, sizeof(r->tool_name), "%s", name->valuestring);
    }
    if (r->tool_choice == DEC_TOOL_NONE)
        return 0; /* the tools are not shown: the model answers in text */
    if (!(r->tools = strndup(tools_text, tools_len)))
        return dec_api_fail(e, 503, NULL, NULL, "out of memory");
    r->tools_len = tools_len;
    if (r->tool_choice == DEC_TOOL_AUTO)
        return 0;
    if (r->schema)
        return dec_api_fail(e, 400, "response_format", "invalid_value",
                            "response_format cannot constrain the output beside a required or "
                            "named tool call");
    if (r->tool_choice == DEC_TOOL_NAMED) {
        char what[128];
        snprintf(what, sizeof(what), "tool '%s' parameters", r->tool_name);
        return compile(dec_api_field(named, "parameters"), false, what, r, e);
    }
    return required_schema(tools, parallel, r, e);
}
