/* decoded/toolcall and the tools part of decoded/api without a daemon: tool
 * calls read out of the model's text (streamed and whole alike), and the
 * request's tools, tool_choice and the tool calls in its history. */
#include "api.h"
#include "toolcall.h"

#include "pd_test.h"

#include <cjson/cJSON.h>
#include <errno.h>

/* ---- toolcall: what a choice's text gives ---- */

/* everything released over a choice: the content joined, the call deltas in order */
struct got {
    char text[8192];
    size_t len;
    cJSON *calls;
};

static void got_init(struct got *g)
{
    g->len = 0;
    g->text[0] = '\0';
    g->calls = cJSON_CreateArray();
    CHECK(g->calls);
}

static void got_feed(struct dec_toolcall *tc, struct got *g, const char *p, size_t n, bool last)
{
    struct dec_toolcall_out o;
    CHECK_EQ_INT(dec_toolcall_feed(tc, p, n, last, &o), 0);
    CHECK(o.len ? o.content != NULL : o.content == NULL);
    CHECK(g->len + o.len < sizeof(g->text));
    if (o.len)
        memcpy(g->text + g->len, o.content, o.len);
    g->len += o.len;
    g->text[g->len] = '\0';
    if (o.calls) {
        CHECK(cJSON_IsArray(o.calls) && o.calls->child); /* NULL when none, never [] */
        while (o.calls->child)
            cJSON_AddItemToArray(g->calls, cJSON_DetachItemViaPointer(o.calls, o.calls->child));
    }
    dec_toolcall_out_done(&o);
}

/* text fed in pieces ending at cuts[0..n) (the last piece ends at len) */
static bool run_cut(enum dec_tool_choice choice, enum pd_chat_calls how, const char *text,
                    const size_t *cuts, size_t n_cuts, struct got *g)
{
    struct dec_toolcall *tc = dec_toolcall_new(choice, how, "f");
    CHECK(tc);
    got_init(g);
    size_t at = 0, len = strlen(text);
    for (size_t i = 0; i < n_cuts; i++) {
        got_feed(tc, g, text + at, cuts[i] - at, false);
        at = cuts[i];
    }
    got_feed(tc, g, text + at, len - at, true);
    bool called = dec_toolcall_called(tc);
    dec_toolcall_free(tc);
    return called;
}

static bool run_whole(enum dec_tool_choice choice, enum pd_chat_calls how, const char *text,
                      struct got *g)
{
    return run_cut(choice, how, text, NULL, 0, g);
}

static const cJSON *fn_of(const cJSON *call)
{
    return cJSON_GetObjectItemCaseSensitive(call, "function");
}

static const char *call_str(const cJSON *call, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(fn_of(call), key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *call_name(const cJSON *call) { return call_str(call, "name"); }

static const char *call_args(const cJSON *call) { return call_str(call, "arguments"); }

static int call_index(const cJSON *call)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(call, "index");
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

static bool id_ok(const cJSON *call)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
    if (!cJSON_IsString(id) || strlen(id->valuestring) != 5 + 24 ||
        strncmp(id->valuestring, "call_", 5) != 0)
        return false;
    return strspn(id->valuestring + 5, "0123456789abcdef") == 24;
}

/* head, then n copies of item joined by sep, then tail (caller frees) */
static char *repeated(const char *head, const char *item, const char *sep, size_t n,
                      const char *tail)
{
    size_t hl = strlen(head), il = strlen(item), sl = strlen(sep), k = hl;
    char *s = malloc(hl + n * (il + sl) + strlen(tail) + 1);
    CHECK(s);
    memcpy(s, head, hl);
    for (size_t i = 0; i < n; i++, k += il) {
        if (i)
            memcpy(s + k, sep, sl), k += sl;
        memcpy(s + k, item, il);
    }
    strcpy(s + k, tail);
    return s;
}

static void same_result(const struct got *a, const struct got *b, const char *text, const char *how)
{
    if (a->len != b->len || memcmp(a->text, b->text, a->len) != 0)
        PD_TEST_FAIL_("%s of \"%s\": content \"%s\" != whole's \"%s\"", how, text, b->text,
                      a->text);
    CHECK_EQ_INT(cJSON_GetArraySize(b->calls), cJSON_GetArraySize(a->calls));
    for (const cJSON *x = a->calls->child, *y = b->calls->child; x; x = x->next, y = y->next) {
        CHECK_EQ_INT(call_index(y), call_index(x));
        CHECK_STR(call_name(y), call_name(x));
        CHECK_STR(call_args(y), call_args(x));
    }
}

static const char WEATHER[] = "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                              "{\"city\": \"Paris\", \"days\": 2.0}}\n</tool_call>";

static void toolcall_hermes_reads_a_block_after_content(void)
{
    struct got g;
    CHECK(run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, WEATHER, &g));
    CHECK_STR(g.text, "Sure.\n");
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 1);
    const cJSON *c = g.calls->child;
    CHECK_EQ_INT(call_index(c), 0);
    CHECK(id_ok(c));
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(c, "type")->valuestring, "function");
    CHECK_STR(call_name(c), "get_weather");
    /* Python: json.dumps({"city": "Paris", "days": 2.0}) */
    CHECK_STR(call_args(c), "{\"city\": \"Paris\", \"days\": 2.0}");
    cJSON_Delete(g.calls);
}

static void toolcall_called_only_once_a_call_went_out(void)
{
    struct dec_toolcall *tc = dec_toolcall_new(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, NULL);
    struct got g;
    got_init(&g);
    const size_t half = strlen(WEATHER) - 4; /* the closing tag not yet complete */
    got_feed(tc, &g, WEATHER, half, false);
    CHECK(!dec_toolcall_called(tc));
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 0);
    got_feed(tc, &g, WEATHER + half, strlen(WEATHER) - half, false);
    CHECK(dec_toolcall_called(tc)); /* the block closed: the call is out before the end */
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 1);
    got_feed(tc, &g, "", 0, true);
    CHECK(dec_toolcall_called(tc));
    dec_toolcall_free(tc);
    cJSON_Delete(g.calls);
    struct got n;
    CHECK(!run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, "no call here", &n));
    cJSON_Delete(n.calls);
}

#define TWO_BLOCKS                                                                                 \
    "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n"                    \
    "<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>"
static const char TWO[] = TWO_BLOCKS;

static void toolcall_hermes_two_blocks_indexed_then_whole_drops_index(void)
{
    struct got g;
    CHECK(run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, TWO, &g));
    CHECK_EQ_INT(g.len, 0);
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 2);
    const cJSON *a = g.calls->child, *b = a->next;
    CHECK_EQ_INT(call_index(a), 0);
    CHECK_EQ_INT(call_index(b), 1);
    CHECK_STR(call_name(a), "a");
    CHECK_STR(call_name(b), "b");
    CHECK(id_ok(a) && id_ok(b));
    CHECK(strcmp(cJSON_GetObjectItemCaseSensitive(a, "id")->valuestring,
                 cJSON_GetObjectItemCaseSensitive(b, "id")->valuestring) != 0);
    cJSON *w = dec_toolcall_whole(g.calls);
    CHECK_EQ_INT(cJSON_GetArraySize(w), 2);
    for (const cJSON *c = w->child; c; c = c->next) {
        CHECK(!cJSON_HasObjectItem(c, "index"));
        CHECK(id_ok(c));
    }
    CHECK_STR(call_name(w->child), "a");
    CHECK_STR(call_args(w->child), "{\"x\": 1}");
    CHECK_STR(call_args(w->child->next), "{}");
    cJSON_Delete(w);
}

#define HERMES DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES
#define LLAMA DEC_TOOL_AUTO, PD_CHAT_CALLS_LLAMA
#define REQUIRED DEC_TOOL_REQUIRED, PD_CHAT_CALLS_HERMES

static const struct {
    enum dec_tool_choice choice;
    enum pd_chat_calls how;
    const char *text;
    int n_calls;
    const char *content; /* the whole run's; NULL: all of the text */
} STREAM_CASES[] = {
    {HERMES, WEATHER, 1, "Sure.\n"},
    {HERMES, "Two:" TWO_BLOCKS, 2, "Two:"},
    {HERMES, "abc <tool_ca", 0, NULL}, /* a partial tag at the end */
    /* a block that is not JSON is dropped beside one that reads, and alone it is content */
    {HERMES,
     "x<tool_call>\n{not json}\n</tool_call>\n<tool_call>{\"name\": \"f\", \"arguments\": "
     "{\"a\": 1e2}}</tool_call>",
     1, "x"},
    {HERMES, "x<tool_call>\n{not json}\n</tool_call> tail", 0, NULL},
    {HERMES, "Hi <tool_call>\n{\"name\": \"f\", \"arguments\": {}}", 0, NULL}, /* unclosed */
    {HERMES, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call><tool_call>{\"name\"", 1,
     ""},
    {HERMES, "plain text < <t <tool_cal no tags", 0, NULL},
    {HERMES, "<<tool_call>{\"name\":\"f\",\"arguments\":[1]}</tool_call>", 1, "<"},
    {HERMES,
     "h\xc3\xa9 <tool_call>{\"name\": \"f\", \"arguments\": {\"s\": \"\xc3\xa9\"}}</tool_call>", 1,
     "h\xc3\xa9 "},
    {HERMES, "", 0, NULL},
    {LLAMA, " \n{\"name\": \"f\", \"parameters\": {\"a\": [1, 2]}}", 1, ""},
    {LLAMA, "Hello {\"name\": \"f\", \"parameters\": {}}", 0, NULL},
    {LLAMA, "  {\"answer\": 42}", 0, NULL},
    {REQUIRED,
     "[{\"name\": \"a\", \"parameters\": {\"x\": 1}}, {\"name\": \"b\", \"parameters\": {}}]", 2,
     ""},
    {REQUIRED, "[{\"name\": \"a\", \"parameters\": {\"x\": 1}}", 0, NULL},
};

static void toolcall_streamed_equals_whole(void)
{
    for (size_t i = 0; i < sizeof(STREAM_CASES) / sizeof(*STREAM_CASES); i++) {
        const char *text = STREAM_CASES[i].text;
        const size_t len = strlen(text);
        const enum dec_tool_choice ch = STREAM_CASES[i].choice;
        const enum pd_chat_calls how = STREAM_CASES[i].how;
        struct got whole, part;
        const bool called = run_whole(ch, how, text, &whole);
        if (cJSON_GetArraySize(whole.calls) != STREAM_CASES[i].n_calls ||
            strcmp(whole.text, STREAM_CASES[i].content ? STREAM_CASES[i].content : text) != 0)
            PD_TEST_FAIL_("case %zu: %d calls, content \"%s\"", i, cJSON_GetArraySize(whole.calls),
                          whole.text);
        CHECK(called == (STREAM_CASES[i].n_calls > 0));
        /* two pieces, cut at every byte (an empty first or last piece too) */
        for (size_t k = 0; k <= len; k++) {
            CHECK(run_cut(ch, how, text, &k, 1, &part) == called);
            same_result(&whole, &part, text, "two pieces");
            cJSON_Delete(part.calls);
        }
        /* one byte at a time */
        size_t cuts[512];
        CHECK(len < sizeof(cuts) / sizeof(*cuts));
        for (size_t k = 0; k + 1 < len; k++)
            cuts[k] = k + 1;
        CHECK(run_cut(ch, how, text, cuts, len ? len - 1 : 0, &part) == called);
        same_result(&whole, &part, text, "bytes");
        cJSON_Delete(part.calls);
        cJSON_Delete(whole.calls);
    }
}

/* a block is a call only with a non-empty string name and its arguments */
static void toolcall_hermes_drops_block_without_name_or_arguments(void)
{
    static const char *const bad[] = {
        "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": 7, \"arguments\": {}}</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"f\"}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"parameters\": {}}</tool_call>",
        "<tool_call>[{\"name\": \"f\", \"arguments\": {}}]</tool_call>",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        struct got g;
        if (run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, bad[i], &g))
            PD_TEST_FAIL_("a call read from %s", bad[i]);
        CHECK_STR(g.text, bad[i]);
        cJSON_Delete(g.calls);
    }
}

static void toolcall_hermes_holds_back_only_a_possible_tag(void)
{
    struct dec_toolcall *tc = dec_toolcall_new(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, NULL);
    struct dec_toolcall_out o;
    CHECK_EQ_INT(dec_toolcall_feed(tc, "abc<tool", 8, false, &o), 0);
    CHECK_EQ_INT(o.len, 3);
    CHECK_STR(o.content, "abc");
    dec_toolcall_out_done(&o);
    CHECK_EQ_INT(dec_toolcall_feed(tc, "x", 1, false, &o), 0);
    CHECK_EQ_INT(o.len, 6);
    CHECK_STR(o.content, "<toolx");
    CHECK(o.calls == NULL);
    dec_toolcall_out_done(&o);
    dec_toolcall_free(tc);
}

static void toolcall_llama_reads_parameters_or_arguments(void)
{
    struct got g;
    CHECK(run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_LLAMA,
                    "  {\"name\": \"f\", \"parameters\": {\"a\": [1, 2]}}", &g));
    CHECK_EQ_INT(g.len, 0);
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 1);
    CHECK_STR(call_name(g.calls->child), "f");
    CHECK_STR(call_args(g.calls->child), "{\"a\": [1, 2]}");
    CHECK(id_ok(g.calls->child));
    cJSON_Delete(g.calls);
    CHECK(
        run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_LLAMA, "{\"name\": \"f\", \"arguments\": {}}", &g));
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 1);
    CHECK_STR(call_args(g.calls->child), "{}");
    cJSON_Delete(g.calls);
}

static void toolcall_llama_text_answer_released_as_it_comes(void)
{
    struct dec_toolcall *tc = dec_toolcall_new(DEC_TOOL_AUTO, PD_CHAT_CALLS_LLAMA, NULL);
    struct got g;
    got_init(&g);
    got_feed(tc, &g, "Hello ", 6, false);
    CHECK_STR(g.text, "Hello ");
    got_feed(tc, &g, "{\"name\": \"f\", \"parameters\": {}}", 31, false);
    CHECK_STR(g.text, "Hello {\"name\": \"f\", \"parameters\": {}}");
    got_feed(tc, &g, "", 0, true);
    CHECK(!dec_toolcall_called(tc));
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 0);
    dec_toolcall_free(tc);
    cJSON_Delete(g.calls);
}

static void toolcall_llama_object_not_a_call_is_content_at_the_end(void)
{
    struct dec_toolcall *tc = dec_toolcall_new(DEC_TOOL_AUTO, PD_CHAT_CALLS_LLAMA, NULL);
    struct got g;
    got_init(&g);
    got_feed(tc, &g, " {\"answer\":", 11, false);
    got_feed(tc, &g, " 42}", 4, false);
    CHECK_EQ_INT(g.len, 0); /* held: it might have been a call */
    got_feed(tc, &g, "", 0, true);
    CHECK_STR(g.text, " {\"answer\": 42}");
    CHECK(!dec_toolcall_called(tc));
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 0);
    dec_toolcall_free(tc);
    cJSON_Delete(g.calls);
}

static const char REQ[] =
    "[{\"name\": \"a\", \"parameters\": {\"x\": 1}}, {\"name\": \"b\", \"parameters\": {}}]";

static void toolcall_required_reads_the_array_at_the_end(void)
{
    struct dec_toolcall *tc = dec_toolcall_new(DEC_TOOL_REQUIRED, PD_CHAT_CALLS_HERMES, NULL);
    struct got g;
    got_init(&g);
    got_feed(tc, &g, REQ, 20, false);
    got_feed(tc, &g, REQ + 20, strlen(REQ) - 20, false);
    CHECK_EQ_INT(g.len, 0);
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 0);
    CHECK(!dec_toolcall_called(tc));
    got_feed(tc, &g, "", 0, true);
    CHECK(dec_toolcall_called(tc));
    CHECK_EQ_INT(g.len, 0);
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 2);
    const cJSON *a = g.calls->child, *b = a->next;
    CHECK_STR(call_name(a), "a");
    CHECK_STR(call_args(a), "{\"x\": 1}");
    CHECK_STR(call_name(b), "b");
    CHECK_STR(call_args(b), "{}");
    CHECK_EQ_INT(call_index(b), 1);
    dec_toolcall_free(tc);
    cJSON_Delete(g.calls);
}

static void toolcall_required_cut_short_is_content(void)
{
    struct got g;
    const char *cut = "[{\"name\": \"a\", \"parameters\": {\"x\": 1}}";
    CHECK(!run_whole(DEC_TOOL_REQUIRED, PD_CHAT_CALLS_LLAMA, cut, &g));
    CHECK_STR(g.text, cut);
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 0);
    cJSON_Delete(g.calls);
}

static void toolcall_named_streams_argument_pieces(void)
{
    struct dec_toolcall *tc = dec_toolcall_new(DEC_TOOL_NAMED, PD_CHAT_CALLS_HERMES, "get_it");
    struct dec_toolcall_out o;
    cJSON *all = cJSON_CreateArray();
    CHECK_EQ_INT(dec_toolcall_feed(tc, "{\"a\"", 4, false, &o), 0);
    CHECK_EQ_INT(o.len, 0);
    CHECK_EQ_INT(cJSON_GetArraySize(o.calls), 1);
    const cJSON *c = o.calls->child;
    CHECK(id_ok(c));
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(c, "type")->valuestring, "function");
    CHECK_STR(call_name(c), "get_it");
    CHECK_STR(call_args(c), "{\"a\"");
    CHECK_EQ_INT(call_index(c), 0);
    CHECK(dec_toolcall_called(tc));
    cJSON_AddItemToArray(all, cJSON_DetachItemViaPointer(o.calls, o.calls->child));
    dec_toolcall_out_done(&o);
    static const char *const more[] = {": 1", ", \"b\": [", "]}"};
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ_INT(dec_toolcall_feed(tc, more[i], strlen(more[i]), false, &o), 0);
        CHECK_EQ_INT(cJSON_GetArraySize(o.calls), 1);
        c = o.calls->child;
        /* {"index": 0, "function": {"arguments": piece}} and nothing else */
        CHECK_EQ_INT(call_index(c), 0);
        CHECK_EQ_INT(cJSON_GetArraySize(c), 2);
        CHECK_EQ_INT(cJSON_GetArraySize(fn_of(c)), 1);
        CHECK_STR(call_args(c), more[i]);
        cJSON_AddItemToArray(all, cJSON_DetachItemViaPointer(o.calls, o.calls->child));
        dec_toolcall_out_done(&o);
    }
    CHECK_EQ_INT(dec_toolcall_feed(tc, "", 0, true, &o), 0);
    CHECK(o.calls == NULL && o.len == 0);
    dec_toolcall_free(tc);
    cJSON *w = dec_toolcall_whole(all);
    CHECK_EQ_INT(cJSON_GetArraySize(w), 1);
    CHECK(!cJSON_HasObjectItem(w->child, "index"));
    CHECK(id_ok(w->child));
    CHECK_STR(call_name(w->child), "get_it");
    CHECK_STR(call_args(w->child), "{\"a\": 1, \"b\": []}");
    cJSON_Delete(w);
}

static void toolcall_none_is_all_content(void)
{
    static const enum dec_tool_choice ch[] = {DEC_TOOL_NONE, DEC_TOOL_AUTO};
    static const enum pd_chat_calls how[] = {PD_CHAT_CALLS_HERMES, PD_CHAT_CALLS_NONE};
    for (size_t i = 0; i < 2; i++) {
        struct dec_toolcall *tc = dec_toolcall_new(ch[i], how[i], NULL);
        struct got g;
        got_init(&g);
        got_feed(tc, &g, "<tool_call>{\"name\": \"f\", \"arguments\": {}}", 41, false);
        CHECK_EQ_INT(g.len, 41); /* nothing held back */
        got_feed(tc, &g, "</tool_call>", 12, true);
        CHECK_STR(g.text, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>");
        CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 0);
        CHECK(!dec_toolcall_called(tc));
        dec_toolcall_free(tc);
        cJSON_Delete(g.calls);
    }
}

static void toolcall_hermes_caps_calls(void)
{
    char *text = repeated("", "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", "\n",
                          PD_CHAT_MAX_CALLS + 5, "");
    struct got g;
    CHECK(run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, text, &g));
    free(text);
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), PD_CHAT_MAX_CALLS);
    CHECK_EQ_INT(call_index(cJSON_GetArrayItem(g.calls, PD_CHAT_MAX_CALLS - 1)),
                 PD_CHAT_MAX_CALLS - 1);
    CHECK_EQ_INT(g.len, 0);
    cJSON_Delete(g.calls);
}

/* toolcall.h: "at most PD_CHAT_MAX_CALLS calls are read (later blocks are
 * dropped)"; a required call's array is not bounded by its schema */
static void toolcall_required_caps_calls(void)
{
    char *text =
        repeated("[", "{\"name\": \"f\", \"parameters\": {}}", ", ", PD_CHAT_MAX_CALLS + 1, "]");
    struct got g;
    run_whole(DEC_TOOL_REQUIRED, PD_CHAT_CALLS_HERMES, text, &g);
    free(text);
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), PD_CHAT_MAX_CALLS);
    cJSON_Delete(g.calls);
}

/* Arguments as Python writes them: each want is the output of
 *   python3 -c 'import json,sys; print(json.dumps(json.loads(S), ensure_ascii=False))'
 * for its S, pasted here (independent of the code under test). */
static const struct {
    const char *args, *python;
} GOLDEN[] = {
    {"{\"city\": \"Paris\", \"days\": 2.0}", "{\"city\": \"Paris\", \"days\": 2.0}"},
    {"{\"s\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\/ \\n\\t\\u0001\\u007f\",\"e\":1e2,"
     "\"z\":-0,\"zf\":-0.0}",
     "{\"s\": \"caf\xc3\xa9 \xf0\x9f\x98\x80 \\\"q\\\" \\\\ / \\n\\t\\u0001\x7f\", \"e\": 100.0, "
     "\"z\": 0, \"zf\": -0.0}"},
    {"{\"\xe5\x90\x8d\xe5\x89\x8d\" :\"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\",\n "
     "\"emoji\":\"\xf0\x9f\x98\x80\", \"n\":[[1,[2.50,[]]],{}], \"big\":12345678901234567890}",
     "{\"\xe5\x90\x8d\xe5\x89\x8d\": \"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\", \"emoji\": "
     "\"\xf0\x9f\x98\x80\", \"n\": [[1, [2.5, []]], {}], \"big\": 12345678901234567890}"},
    {"{\"t\":true,\"f\":false,\"n\":null,\"small\":1.5e-7,\"x\":1E16,\"d\":0.1,"
     "\"y\":123456789012345678.0,\"e\":1e-5,\"w\":0.0001}",
     "{\"t\": true, \"f\": false, \"n\": null, \"small\": 1.5e-07, \"x\": 1e+16, \"d\": 0.1, "
     "\"y\": 1.2345678901234568e+17, \"e\": 1e-05, \"w\": 0.0001}"},
};

static void toolcall_arguments_written_as_python_json_dumps(void)
{
    for (size_t i = 0; i < sizeof(GOLDEN) / sizeof(*GOLDEN); i++) {
        char text[1024];
        struct got g;
        snprintf(text, sizeof(text),
                 "<tool_call>\n{\"name\": \"g\", \"arguments\": %s}\n</tool_call>", GOLDEN[i].args);
        CHECK(run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, text, &g));
        CHECK_STR(call_args(g.calls->child), GOLDEN[i].python);
        cJSON_Delete(g.calls);
        snprintf(text, sizeof(text), "[{\"name\": \"g\", \"parameters\": %s}]", GOLDEN[i].args);
        CHECK(run_whole(DEC_TOOL_REQUIRED, PD_CHAT_CALLS_HERMES, text, &g));
        CHECK_STR(call_args(g.calls->child), GOLDEN[i].python);
        cJSON_Delete(g.calls);
    }
}

/* json.loads keeps a repeated key's last value (at its first place); vLLM's
 * parser reads the block with it. Python's output for this block: name "b",
 * arguments {"x": 2, "y": 0}. */
/* A repeated key reads two ways (json.loads keeps the last value at the
 * first's place): such a block is not read as a call, here the only one,
 * so the text is content; a repeated key deeper in the arguments too. */
static void toolcall_repeated_key_is_not_a_call(void)
{
    static const char *const texts[] = {
        "<tool_call>{\"name\": \"a\", \"name\": \"b\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"a\", \"arguments\": {\"x\": 1, \"y\": 0, \"x\": 2}}</tool_call>",
        "<tool_call>{\"name\": \"a\", \"arguments\": {\"o\": [{\"k\": 1, \"\\u006b\": 2}]}}"
        "</tool_call>",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(*texts); i++) {
        struct got g;
        CHECK(!run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, texts[i], &g));
        CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 0);
        CHECK_STR(g.text, texts[i]);
        cJSON_Delete(g.calls);
    }
    /* beside a block that reads, it is dropped */
    struct got g;
    char two[512];
    snprintf(two, sizeof(two), "%s<tool_call>{\"name\": \"c\", \"arguments\": {}}</tool_call>",
             texts[1]);
    CHECK(run_whole(DEC_TOOL_AUTO, PD_CHAT_CALLS_HERMES, two, &g));
    CHECK_EQ_INT(cJSON_GetArraySize(g.calls), 1);
    CHECK_STR(call_name(g.calls->child), "c");
    CHECK_STR(g.text, "");
    cJSON_Delete(g.calls);
}

/* ---- request parsing: tools, tool_choice, tool calls in messages ---- */

static const struct dec_api_limits LIM = {
    .json_depth = 16, .max_stops = 4, .max_stop_len = 16, .max_prompt_ids = 100};

static int parse(enum dec_api_kind k, const char *body, struct dec_api_req *r,
                 struct dec_api_err *e)
{
    return dec_api_parse(k, body, strlen(body), &LIM, r, e);
}

#define USER_HI "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"
#define TOOL_F                                                                                     \
    "{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\","     \
    "\"properties\":{\"x\":{\"type\":\"integer\"}}}}}"
#define TOOL_G "{\"type\":\"function\",\"function\":{\"name\":\"g\"}}"

/* a chat body: one user message and extra members */
static int parse_chat(const char *extra, struct dec_api_req *r, struct dec_api_err *e)
{
    char body[4096];
    snprintf(body, sizeof(body), "{" USER_HI "%s%s}", extra[0] ? "," : "", extra);
    return parse(DEC_API_CHAT, body, r, e);
}

static void parse_ok(const char *extra, struct dec_api_req *r)
{
    struct dec_api_err e;
    if (parse_chat(extra, r, &e) < 0)
        PD_TEST_FAIL_("%s refused: %s (%s)", extra, e.msg, e.param ? e.param : "no param");
}

static void api_tools_default_to_auto_kept_as_written(void)
{
    static const char tools[] = "[ " TOOL_F " ,\n\t" TOOL_G "\n ]";
    struct dec_api_req r;
    parse_ok("\"tools\" :  [ " TOOL_F " ,\n\t" TOOL_G "\n ]  ", &r);
    CHECK_EQ_INT(r.tool_choice, DEC_TOOL_AUTO);
    CHECK_EQ_INT(r.tools_len, strlen(tools));
    CHECK(r.tools && memcmp(r.tools, tools, r.tools_len) == 0);
    CHECK(r.schema == NULL);
    dec_api_req_done(&r);
}

static void api_tool_choice_none_shows_no_tools(void)
{
    struct dec_api_req r;
    parse_ok("\"tools\":[" TOOL_F "],\"tool_choice\":\"none\"", &r);
    CHECK_EQ_INT(r.tool_choice, DEC_TOOL_NONE);
    CHECK(r.tools == NULL);
    dec_api_req_done(&r);
}

static void api_tool_choice_required_constrains_output(void)
{
    struct dec_api_req r;
    parse_ok("\"tools\":[" TOOL_F "," TOOL_G "],\"tool_choice\":\"required\"", &r);
    CHECK_EQ_INT(r.tool_choice, DEC_TOOL_REQUIRED);
    CHECK(r.schema != NULL);
    CHECK(r.tools != NULL);
    dec_api_req_done(&r);
}

static void api_tool_choice_named_constrains_output(void)
{
    struct dec_api_req r;
    parse_ok("\"tools\":[" TOOL_G "," TOOL_F
             "],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}",
             &r);
    CHECK_EQ_INT(r.tool_choice, DEC_TOOL_NAMED);
    CHECK_STR(r.tool_name, "f");
    CHECK(r.schema != NULL);
    dec_api_req_done(&r);
}

static void expect_refused(const char *extra, const char *param, const char *needle)
{
    struct dec_api_req r;
    struct dec_api_err e;
    if (parse_chat(extra, &r, &e) >= 0) {
        dec_api_req_done(&r);
        PD_TEST_FAIL_("accepted: %s", extra);
    }
    if (e.status != 400 || !e.param || strcmp(e.param, param) != 0)
        PD_TEST_FAIL_("%s: %d %s (%s), wanted 400 %s", extra, e.status,
                      e.param ? e.param : "(null)", e.msg, param);
    if (needle && !strstr(e.msg, needle))
        PD_TEST_FAIL_("%s: \"%s\" does not contain \"%s\"", extra, e.msg, needle);
}

#define B16 "bbbbbbbbbbbbbbbb"

static void api_malformed_tools_refused(void)
{
    static const char *const cases[] = {
        "\"tools\":{}",
        "\"tools\":[" TOOL_F ",{\"type\":\"retrieval\",\"function\":{\"name\":\"r\"}}]",
        "\"tools\":[{\"function\":{\"name\":\"r\"}}]",
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"\"}}]",
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
        "\"a" B16 B16 B16 B16 "\"}}]", /* 65 characters */
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get weather\"}}]",
        "\"tools\":[" TOOL_F "," TOOL_G "," TOOL_F "]",
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"p\",\"parameters\":[]}}]",
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"p\",\"parameters\":\"x\"}}]",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++)
        expect_refused(cases[i], "tools", NULL);
    /* 64 characters is the most a name may have */
    struct dec_api_req r;
    parse_ok("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"" B16 B16 B16 B16 "\"}}]",
             &r);
    dec_api_req_done(&r);
}

static void api_bad_tool_choice_refused(void)
{
    expect_refused("\"tools\":[" TOOL_F
                   "],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"h\"}}",
                   "tool_choice", "'h'");
    expect_refused("\"tool_choice\":\"required\"", "tool_choice", NULL);
    expect_refused("\"tools\":[],\"tool_choice\":\"required\"", "tool_choice", NULL);
    expect_refused("\"tools\":[" TOOL_F "],\"tool_choice\":1", "tool_choice", NULL);
    expect_refused("\"tools\":[" TOOL_F "],\"tool_choice\":\"always\"", "tool_choice", NULL);
    expect_refused("\"tools\":[" TOOL_F "],\"parallel_tool_calls\":1", "parallel_tool_calls", NULL);
}

static void api_named_tool_schema_refusal_names_keyword(void)
{
    expect_refused("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
                   "{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\",\"pattern\":"
                   "\"^a\"}}}}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":"
                   "\"f\"}}",
                   "tools", "pattern");
}

static void api_response_format_beside_required_call_refused(void)
{
    expect_refused("\"tools\":[" TOOL_F "],\"tool_choice\":\"required\","
                   "\"response_format\":{\"type\":\"json_object\"}",
                   "response_format", NULL);
}

/* a chat body with n tools t0, t1, ... (caller frees) */
static char *n_tools(size_t n)
{
    char *body = malloc(n * 64 + 128);
    CHECK(body);
    size_t k = (size_t)sprintf(body, "{" USER_HI ",\"tools\":[");
    for (size_t i = 0; i < n; i++)
        k += (size_t)sprintf(body + k, "%s{\"type\":\"function\",\"function\":{\"name\":\"t%zu\"}}",
                             i ? "," : "", i);
    strcpy(body + k, "]}");
    return body;
}

static void api_more_than_max_tools_refused(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    char *body = n_tools(PD_CHAT_MAX_TOOLS);
    int rc = parse(DEC_API_CHAT, body, &r, &e);
    free(body);
    CHECK_EQ_INT(rc, 0);
    dec_api_req_done(&r);
    body = n_tools(PD_CHAT_MAX_TOOLS + 1);
    rc = parse(DEC_API_CHAT, body, &r, &e);
    free(body);
    CHECK(rc < 0);
    CHECK_EQ_INT(e.status, 400);
    CHECK_STR(e.param, "tools");
}

/* clang-format off */
#define DEFS_TOOL(name, type)                                                                      \
    "{\"type\":\"function\",\"function\":{\"name\":\"" name "\",\"parameters\":{"                  \
    "\"type\":\"object\",\"$defs\":{\"D\":{\"type\":\"" type "\"}},"                               \
    "\"properties\":{\"v\":{\"$ref\":\"#/$defs/D\"}}}}}"
/* two tools defining $defs/D, the second as b_type, under tool_choice required */
#define DEFS_REQUIRED(b_type)                                                                      \
    "\"tools\":[" DEFS_TOOL("a", "integer") "," DEFS_TOOL("b", b_type) "],"                        \
    "\"tool_choice\":\"required\""
/* clang-format on */

static void api_required_refuses_conflicting_defs(void)
{
    expect_refused(DEFS_REQUIRED("string"), "tool_choice", "$defs/D");
    struct dec_api_req r;
    parse_ok(DEFS_REQUIRED("integer"), &r); /* the same definition twice is one */
    CHECK_EQ_INT(r.tool_choice, DEC_TOOL_REQUIRED);
    CHECK(r.schema != NULL);
    dec_api_req_done(&r);
}

#define CALL_F(args)                                                                               \
    "{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"" args "\"" \
    "}}"

/* clang-format off */
static const char HISTORY[] =
    "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[" CALL_F("{\\\"x\\\": 1}") "]},"
    "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"42\"}],"
    "\"tools\":[" TOOL_F "]}";
/* clang-format on */

static void api_assistant_tool_calls_parsed(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_CHAT, HISTORY, &r, &e), 0);
    CHECK_EQ_INT(r.n_msgs, 3);
    CHECK_EQ_INT(r.msgs[1].role, PD_CHAT_ASSISTANT);
    CHECK_EQ_INT(r.msgs[1].len, 0);
    CHECK_EQ_INT(r.msgs[1].n_calls, 1);
    const struct pd_chat_call *c = &r.msgs[1].calls[0];
    CHECK(c->name_len == 1 && memcmp(c->name, "f", 1) == 0);
    CHECK(c->args_len == 8 && memcmp(c->args, "{\"x\": 1}", 8) == 0);
    CHECK_EQ_INT(r.msgs[0].n_calls, 0);
    CHECK(r.msgs[0].calls == NULL);
    CHECK_EQ_INT(r.msgs[2].role, PD_CHAT_TOOL);
    CHECK(r.msgs[2].len == 2 && memcmp(r.msgs[2].content, "42", 2) == 0);
    dec_api_req_done(&r);
}

static void expect_messages_refused(const char *body, const char *needle)
{
    struct dec_api_req r;
    struct dec_api_err e;
    if (parse(DEC_API_CHAT, body, &r, &e) >= 0) {
        dec_api_req_done(&r);
        PD_TEST_FAIL_("accepted: %s", body);
    }
    CHECK_EQ_INT(e.status, 400);
    CHECK_STR(e.param, "messages");
    if (needle)
        CHECK_CONTAINS(e.msg, needle);
}

static void api_bad_tool_calls_in_messages_refused(void)
{
    /* arguments that are not JSON: the message named */
    expect_messages_refused("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":"
                            "\"assistant\",\"content\":null,\"tool_calls\":[" CALL_F("{x") "]}]}",
                            "message 1");
    expect_messages_refused(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\",\"tool_calls\":[" CALL_F("{}") "]}]}",
        "assistant");
    expect_messages_refused("{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"type\":"
                            "\"function\",\"function\":{\"name\":\"f\",\"arguments\":{}}}]}]}",
                            NULL);
}

static void api_more_than_max_calls_in_a_message_refused(void)
{
    static const char head[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
                               "{\"role\":\"assistant\",\"tool_calls\":[";
    struct dec_api_req r;
    struct dec_api_err e;
    char *body = repeated(head, CALL_F("{}"), ",", PD_CHAT_MAX_CALLS, "]}]}");
    int rc = parse(DEC_API_CHAT, body, &r, &e);
    free(body);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(r.msgs[1].n_calls, PD_CHAT_MAX_CALLS);
    dec_api_req_done(&r);
    body = repeated(head, CALL_F("{}"), ",", PD_CHAT_MAX_CALLS + 1, "]}]}");
    rc = parse(DEC_API_CHAT, body, &r, &e);
    free(body);
    CHECK(rc < 0);
    CHECK_EQ_INT(e.status, 400);
    CHECK_STR(e.param, "messages");
}

static void api_completions_refuse_tools(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"tools\":[" TOOL_F "]}", &r, &e) < 0);
    CHECK_EQ_INT(e.status, 400);
    CHECK_STR(e.param, "tools");
    CHECK(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"tool_choice\":\"required\"}", &r, &e) <
          0);
    CHECK_EQ_INT(e.status, 400);
    CHECK_STR(e.param, "tool_choice");
    /* nothing to refuse: no tools, no call asked for */
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS,
                       "{\"prompt\":\"x\",\"tools\":[],\"tool_choice\":\"none\"}", &r, &e),
                 0);
    dec_api_req_done(&r);
}

static const struct pd_test tests[] = {
    PD_TEST(toolcall_hermes_reads_a_block_after_content),
    PD_TEST(toolcall_called_only_once_a_call_went_out),
    PD_TEST(toolcall_hermes_two_blocks_indexed_then_whole_drops_index),
    PD_TEST(toolcall_streamed_equals_whole),
    PD_TEST(toolcall_hermes_drops_block_without_name_or_arguments),
    PD_TEST(toolcall_hermes_holds_back_only_a_possible_tag),
    PD_TEST(toolcall_llama_reads_parameters_or_arguments),
    PD_TEST(toolcall_llama_text_answer_released_as_it_comes),
    PD_TEST(toolcall_llama_object_not_a_call_is_content_at_the_end),
    PD_TEST(toolcall_required_reads_the_array_at_the_end),
    PD_TEST(toolcall_required_cut_short_is_content),
    PD_TEST(toolcall_named_streams_argument_pieces),
    PD_TEST(toolcall_none_is_all_content),
    PD_TEST(toolcall_hermes_caps_calls),
    PD_TEST(toolcall_required_caps_calls),
    PD_TEST(toolcall_arguments_written_as_python_json_dumps),
    PD_TEST(toolcall_repeated_key_is_not_a_call),
    PD_TEST(api_tools_default_to_auto_kept_as_written),
    PD_TEST(api_tool_choice_none_shows_no_tools),
    PD_TEST(api_tool_choice_required_constrains_output),
    PD_TEST(api_tool_choice_named_constrains_output),
    PD_TEST(api_malformed_tools_refused),
    PD_TEST(api_bad_tool_choice_refused),
    PD_TEST(api_named_tool_schema_refusal_names_keyword),
    PD_TEST(api_response_format_beside_required_call_refused),
    PD_TEST(api_more_than_max_tools_refused),
    PD_TEST(api_required_refuses_conflicting_defs),
    PD_TEST(api_assistant_tool_calls_parsed),
    PD_TEST(api_bad_tool_calls_in_messages_refused),
    PD_TEST(api_more_than_max_calls_in_a_message_refused),
    PD_TEST(api_completions_refuse_tools),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
