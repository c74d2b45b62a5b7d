/* common/text/chat: rendering matches transformers' apply_chat_template on the
 * committed conversations (tests/golden/chat_golden.jsonl), recognition of
 * template families, names and files, caps. */
#include "chat.h"
#include "tok_fixture.h"

#include <errno.h>

static void golden_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/tests/golden/%s", PD_SRCDIR, name);
}

/* Render one golden row with ct and compare. */
static void check_row(const struct pd_chat_template *ct, const cJSON *row, size_t line)
{
    struct pd_chat_msg msgs[16] = {{0}};
    size_t n = 0, len;
    char out[4096], err[256];
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(row, "messages"))
    {
        const char *role = jl_str(m, "role"), *content = jl_str(m, "content");
        CHECK(n < 16 && role && content);
        CHECK_EQ_INT(pd_chat_role_parse(role, strlen(role), &msgs[n].role), 0);
        msgs[n].content = content;
        msgs[n].len = strlen(content);
        n++;
    }
    bool gen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(row, "gen"));
    int rc = pd_chat_render(ct, msgs, n, gen, out, sizeof(out), &len, err, sizeof(err));
    const char *want = jl_str(row, "out");
    if (want) {
        if (rc != 0 || strcmp(out, want) != 0)
            PD_TEST_FAIL_("line %zu (%s): rc %d, got \"%s\", want \"%s\"", line,
                          jl_str(row, "template"), rc, rc == 0 ? out : err, want);
        CHECK_EQ_INT(len, strlen(want));
    } else {
        if (rc != -EINVAL)
            PD_TEST_FAIL_("line %zu: rendered \"%s\" where transformers refused: %s", line, out,
                          jl_str(row, "error"));
        /* the model templates' own raise_exception texts, word for word */
        const char *why = jl_str(row, "error");
        CHECK_CONTAINS(err, n && why && strstr(why, "Only user and assistant") ? why
                            : n ? "alternate" : "no messages");
    }
}

/* The models' own templates (tests/golden/chat/hf/, as their repositories
 * hold them: recognised by their SHA-256) against transformers'
 * apply_chat_template on tests/golden/chat_hf_golden.jsonl
 * (make_chat_hf_golden.py): Qwen2.5 (ChatML with its default system
 * prompt), Qwen3 (reasoning kept or cut), Llama-3.1/3.3 (the system turn with
 * its date lines), Mistral Nemo ([INST] with the system message in the last
 * user turn, its alternation and role errors). */
/* tokjson/<name>'s tokenizer (tests/golden/tokjson/) */
static struct pd_tokenizer *tokjson(const char *name)
{
    char dir[1024], err[256];
    struct pd_tokenizer *t = NULL;
    snprintf(dir, sizeof(dir), "%s/tests/golden/tokjson/%s", PD_SRCDIR, name);
    if (pd_tok_load_dir(dir, &t, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return t;
}

/* tests/golden/chat/hf/<name>, parsed (the test fails if it does not) */
static struct pd_chat_template *hf_template(const char *name)
{
    char rel[256], path[1024], err[256];
    snprintf(rel, sizeof(rel), "chat/hf/%s", name);
    golden_path(path, sizeof(path), rel);
    size_t tl;
    char *text = tok_read_file(path, &tl);
    CHECK(text != NULL);
    struct pd_chat_template *ct = NULL;
    if (pd_chat_template_parse(text, tl, NULL, &ct, err, sizeof(err)) != 0)
        PD_TEST_FAIL_("%s: %s", name, err);
    free(text);
    return ct;
}

static void chat_model_templates_match_transformers(void)
{
    struct jl gold, ids;
    size_t checked = 0, encoded = 0;
    struct pd_tokenizer *qwen = tokjson("qwen2"), *llama = tokjson("llama3");
    jl_load(&gold, "chat_hf_golden.jsonl");
    /* the renderings' ids with apply_chat_template(tokenize=True)'s encoding
     * (make_chat_hf_ids.py): rendered text, then ids without a second BOS */
    jl_load(&ids, "chat_hf_ids.jsonl");
    CHECK_EQ_INT(ids.n, gold.n);
    for (size_t i = 0; i < gold.n; i++) {
        const char *name = jl_str(gold.row[i], "template");
        if (!name || !cJSON_GetObjectItemCaseSensitive(gold.row[i], "messages"))
            continue; /* a header line */
        struct pd_chat_template *ct = hf_template(name);
        check_row(ct, gold.row[i], i + 1);
        size_t nw;
        int32_t *want = jl_ids(ids.row[i], "ids", &nw);
        if (want) {
            const struct pd_tokenizer *t = name[0] == 'Q' ? qwen : llama;
            const char *r = jl_str(gold.row[i], "out");
            int32_t got[2048];
            size_t n;
            CHECK_EQ_INT(pd_tok_encode(t, r, strlen(r), PD_TOK_PARSE_SPECIAL | PD_TOK_NO_BOS, got,
                                       2048, &n),
                         0);
            if (n != nw || memcmp(got, want, n * sizeof(*got)) != 0)
                PD_TEST_FAIL_("line %zu (%s): the rendered prompt's ids differ", i + 1, name);
            encoded++;
            free(want);
        }
        pd_chat_template_free(ct);
        checked++;
    }
    jl_free(&gold);
    jl_free(&ids);
    pd_tok_free(qwen);
    pd_tok_free(llama);
    printf("  %zu renders checked, %zu of them as token ids\n", checked, encoded);
    CHECK(checked >= 40 && encoded >= 200);
}

static size_t check_golden(const struct pd_tokenizer *model_tok)
{
    struct jl gold;
    size_t checked = 0;
    jl_load(&gold, "chat_golden.jsonl");
    for (size_t i = 0; i < gold.n; i++) {
        const char *name = jl_str(gold.row[i], "template");
        struct pd_chat_template *ct = NULL;
        char path[1024], err[256];
        CHECK(name != NULL);
        if (strcmp(name, "model") == 0) {
            if (!model_tok)
                continue;
            CHECK_EQ_INT(pd_chat_template_from_tok(model_tok, &ct, err, sizeof(err)), 0);
        } else {
            if (model_tok)
                continue;
            char rel[128];
            snprintf(rel, sizeof(rel), "chat/%s", name);
            golden_path(path, sizeof(path), rel);
            if (pd_chat_template_load(path, NULL, &ct, err, sizeof(err)) != 0)
                PD_TEST_FAIL_("%s", err);
        }
        check_row(ct, gold.row[i], i + 1);
        pd_chat_template_free(ct);
        checked++;
    }
    jl_free(&gold);
    return checked;
}

static void chat_reference_templates_match_transformers(void)
{
    size_t n = check_golden(NULL);
    printf("  %zu renders checked\n", n);
    CHECK(n >= 60);
}

/* SmolLM2's own template: ChatML with a default system prompt. */
static void chat_default_model_template_matches_transformers(void)
{
    struct tok_fix f;
    struct pd_chat_template *ct;
    char err[256];
    tok_fix_default(&f, PD_TOK_PRE_HF_GGUF);
    CHECK_EQ_INT(pd_chat_template_from_tok(f.tok, &ct, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_chat_template_family(ct), PD_CHAT_CHATML);
    CHECK_STR(pd_chat_template_default_system(ct),
              "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    pd_chat_template_free(ct);
    size_t n = check_golden(f.tok);
    printf("  %zu renders checked\n", n);
    CHECK(n >= 20);
    tok_fix_done(&f);
}

static void chat_spm_model_template_is_llama2(void)
{
    struct tok_fix f;
    struct pd_chat_template *ct;
    char err[256], out[256];
    size_t len;
    struct pd_chat_msg m = {.role = PD_CHAT_USER, .content = "hi", .len = 2};
    tok_fix_spm(&f);
    CHECK_EQ_INT(pd_chat_template_from_tok(f.tok, &ct, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_chat_template_family(ct), PD_CHAT_LLAMA2);
    tok_fix_done(&f); /* the template keeps its own copies */
    CHECK_EQ_INT(pd_chat_render(ct, &m, 1, true, out, sizeof(out), &len, err, sizeof(err)), 0);
    CHECK_STR(out, "<s>[INST] hi [/INST]");
    pd_chat_template_free(ct);
}

static void chat_recognises_families_and_refuses_others(void)
{
    static const struct {
        const char *text;
        int rc;
        enum pd_chat_family f;
    } cases[] = {
        {"{{ '<|start_header_id|>' }}{{ '<|end_header_id|>' }}", 0, PD_CHAT_LLAMA3},
        {"{{'<|im_start|>' + m + '<|im_end|>'}}", 0, PD_CHAT_CHATML},
        {"{{ bos_token + '[INST] ' + c + ' [/INST]' }}", 0, PD_CHAT_LLAMA2},
        {"{{ '<|start_header_id|>' }}{{ '<|end_header_id|>' }}Cutting Knowledge Date", 0,
         PD_CHAT_LLAMA31},
        {"{{'<|im_start|>' + m + '<|im_end|>'}}{{ c.split('</think>') }}", 0, PD_CHAT_QWEN3},
        {"{{ '[INST]' + c + '[/INST]' }}", 0, PD_CHAT_MISTRAL},
        {"{{ '<start_of_turn>user\\n' }}", -ENOTSUP, 0},
        {"", -ENOTSUP, 0},
    };
    char err[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct pd_chat_template *ct = NULL;
        int rc = pd_chat_template_parse(cases[i].text, strlen(cases[i].text), NULL, &ct, err,
                                        sizeof(err));
        CHECK_EQ_INT(rc, cases[i].rc);
        if (rc == 0)
            CHECK_EQ_INT(pd_chat_template_family(ct), cases[i].f);
        else
            CHECK_CONTAINS(err, "--chat-template");
        pd_chat_template_free(ct);
    }
}

/* Qwen-style: the default system turn is one literal with an escaped
 * newline; the literal that concatenates the user's system message is not. */
static void chat_finds_default_system_prompt(void)
{
    static const char t[] =
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
        "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou "
        "are Qwen, \\'helpful\\'.<|im_end|>\\n' }}{%- endif %}";
    static const char plain[] = "{{'<|im_start|>' + message['role'] + '<|im_end|>'}}";
    struct pd_chat_template *ct;
    char err[256];
    CHECK_EQ_INT(pd_chat_template_parse(t, strlen(t), NULL, &ct, err, sizeof(err)), 0);
    CHECK_STR(pd_chat_template_default_system(ct), "You are Qwen, 'helpful'.");
    pd_chat_template_free(ct);
    CHECK_EQ_INT(pd_chat_template_parse(plain, strlen(plain), NULL, &ct, err, sizeof(err)), 0);
    CHECK_STR(pd_chat_template_default_system(ct), "");
    pd_chat_template_free(ct);
}

static void chat_template_by_name_or_file(void)
{
    struct pd_chat_template *ct;
    char err[256], path[1024];
    CHECK_EQ_INT(pd_chat_template_by_name("llama3", NULL, &ct, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_chat_template_family(ct), PD_CHAT_LLAMA3);
    pd_chat_template_free(ct);
    CHECK_EQ_INT(pd_chat_template_by_name("vicuna", NULL, &ct, err, sizeof(err)), -ENOTSUP);
    CHECK_CONTAINS(err, "vicuna");
    CHECK_EQ_INT(pd_chat_template_load("chatml", NULL, &ct, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_chat_template_family(ct), PD_CHAT_CHATML);
    pd_chat_template_free(ct);
    CHECK_EQ_INT(pd_chat_template_load("/nonexistent/tmpl", NULL, &ct, err, sizeof(err)),
                 -ENOTSUP);
    CHECK_CONTAINS(err, "no such file");

    /* a file holding a name, with a newline */
    snprintf(path, sizeof(path), "/tmp/pd_chat_test_%d", (int)getpid());
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs("llama2\n", f);
    fclose(f);
    CHECK_EQ_INT(pd_chat_template_load(path, NULL, &ct, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_chat_template_family(ct), PD_CHAT_LLAMA2);
    pd_chat_template_free(ct);
    f = fopen(path, "w");
    fputs("{{ unknown }}", f);
    fclose(f);
    CHECK_EQ_INT(pd_chat_template_load(path, NULL, &ct, err, sizeof(err)), -ENOTSUP);
    unlink(path);

    /* a model's own template from its file, final newline and all: known
     * exactly, so its tools come with it (a trimmed copy would only be
     * marked: ChatML without tools) */
    const char *own[] = {"Qwen-Qwen2.5-7B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja",
                         "meta-llama-Llama-3.1-8B-Instruct.jinja"};
    const enum pd_chat_calls calls[] = {PD_CHAT_CALLS_HERMES, PD_CHAT_CALLS_HERMES,
                                        PD_CHAT_CALLS_LLAMA};
    for (int i = 0; i < 3; i++) {
        char rel[128];
        snprintf(rel, sizeof(rel), "chat/hf/%s", own[i]);
        golden_path(path, sizeof(path), rel);
        CHECK_EQ_INT(pd_chat_template_load(path, NULL, &ct, err, sizeof(err)), 0);
        CHECK_EQ_INT(pd_chat_template_calls(ct), calls[i]);
        pd_chat_template_free(ct);
    }
}

static void chat_render_e2big_and_caps(void)
{
    struct pd_chat_template *ct;
    char err[256], out[64];
    size_t len = 0;
    struct pd_chat_msg m[2] = {{.role = PD_CHAT_USER, .content = "Hello there, how are you?",
                                .len = 25},
                               {.role = PD_CHAT_ASSISTANT}};
    CHECK_EQ_INT(pd_chat_template_by_name("chatml", NULL, &ct, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_chat_render(ct, m, 2, true, out, 10, &len, err, sizeof(err)), -E2BIG);
    size_t need = len;
    CHECK_EQ_INT(need, strlen("<|im_start|>user\nHello there, how are you?<|im_end|>\n"
                              "<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n"));
    CHECK_EQ_INT(pd_chat_render(ct, m, 2, true, NULL, 0, &len, err, sizeof(err)), -E2BIG);
    CHECK_EQ_INT(len, need);
    m[0].len = PD_CHAT_MAX_CONTENT + 1;
    CHECK_EQ_INT(pd_chat_render(ct, m, 1, true, out, sizeof(out), &len, err, sizeof(err)),
                 -EINVAL);
    CHECK_CONTAINS(err, "cap");
    CHECK_EQ_INT(pd_chat_render(ct, m, PD_CHAT_MAX_MSGS + 1, true, out, sizeof(out), &len, err,
                                sizeof(err)),
                 -EINVAL);
    m[0] = (struct pd_chat_msg){.role = (enum pd_chat_role)7, .content = "x", .len = 1};
    CHECK_EQ_INT(pd_chat_render(ct, m, 1, true, out, sizeof(out), &len, err, sizeof(err)),
                 -EINVAL);
    pd_chat_template_free(ct);
}

/* Conversations with tools, tool calls and tool results against
 * transformers on tests/golden/chat_tools_golden.jsonl
 * (make_chat_tools_golden.py): the tools from the request's JSON text and
 * the arguments from their JSON strings, written as the templates' tojson
 * prints them; the Llama-3.1 template's own refusals, word for word. */
static void chat_tools_match_transformers(void)
{
    struct jl gold;
    size_t rendered = 0, refused = 0;
    jl_load(&gold, "chat_tools_golden.jsonl");
    for (size_t i = 0; i < gold.n; i++) {
        const cJSON *row = gold.row[i];
        char err[256];
        struct pd_chat_template *ct = hf_template(jl_str(row, "template"));
        CHECK(pd_chat_template_calls(ct) != PD_CHAT_CALLS_NONE);
        struct pd_chat_msg msgs[16] = {{0}};
        struct pd_chat_call calls[16][4];
        size_t n = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(row, "messages"))
        {
            const char *role = jl_str(m, "role"), *content = jl_str(m, "content");
            CHECK(n < 16 && role);
            CHECK_EQ_INT(pd_chat_role_parse(role, strlen(role), &msgs[n].role), 0);
            msgs[n].content = content; /* null beside calls: NULL, 0 */
            msgs[n].len = content ? strlen(content) : 0;
            const cJSON *c;
            cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(m, "tool_calls"))
            {
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(c, "function");
                struct pd_chat_call *k = &calls[n][msgs[n].n_calls++];
                CHECK(msgs[n].n_calls <= 4);
                k->name = jl_str(f, "name");
                k->name_len = strlen(k->name);
                k->args = jl_str(f, "arguments");
                k->args_len = strlen(k->args);
            }
            msgs[n].calls = msgs[n].n_calls ? calls[n] : NULL;
            n++;
        }
        const char *tools = jl_str(row, "tools");
        bool gen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(row, "gen"));
        size_t cap = 16384, len = 0;
        char *out = malloc(cap);
        int rc = pd_chat_render_tools(ct, msgs, n, tools, tools ? strlen(tools) : 0, gen, out,
                                      cap, &len, err, sizeof(err));
        const char *want = jl_str(row, "out");
        if (want) {
            if (rc != 0 || strcmp(out, want) != 0)
                PD_TEST_FAIL_("line %zu (%s): rc %d, got \"%s\", want \"%s\"", i + 1,
                              jl_str(row, "template"), rc, rc == 0 ? out : err, want);
            CHECK_EQ_INT(len, strlen(want));
            rendered++;
        } else {
            CHECK_EQ_INT(rc, -EINVAL);
            CHECK_STR(err, jl_str(row, "error"));
            refused++;
        }
        free(out);
        pd_chat_template_free(ct);
    }
    jl_free(&gold);
    printf("  %zu renders with tools, %zu refusals\n", rendered, refused);
    CHECK(rendered >= 60 && refused >= 4);
}

/* Templates without tools refuse them, tool messages and calls alike (the
 * prompt would say nothing of them); bad arguments and tools are named. */
static void chat_tools_refused_where_the_template_has_none(void)
{
    struct pd_chat_template *ct;
    char err[256], out[4096];
    size_t len;
    const struct pd_chat_call call = {"f", 1, "{\"x\": 1}", 8};
    struct pd_chat_msg m[3] = {{.role = PD_CHAT_USER, .content = "hi", .len = 2},
                               {.role = PD_CHAT_ASSISTANT, .calls = &call, .n_calls = 1},
                               {.role = PD_CHAT_TOOL, .content = "r", .len = 1}};
    static const char tools[] = "[{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]";
    const char *none[] = {"chatml", "llama3", "llama2", "mistral"};
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        CHECK_EQ_INT(pd_chat_template_by_name(none[i], NULL, &ct, err, sizeof(err)), 0);
        CHECK_EQ_INT(pd_chat_template_calls(ct), PD_CHAT_CALLS_NONE);
        CHECK_EQ_INT(pd_chat_render_tools(ct, m, 1, tools, strlen(tools), true, out, sizeof(out),
                                          &len, err, sizeof(err)),
                     -EINVAL);
        CHECK_CONTAINS(err, "has no tools");
        CHECK_EQ_INT(pd_chat_render(ct, m, 2, true, out, sizeof(out), &len, err, sizeof(err)),
                     -EINVAL);
        CHECK_EQ_INT(pd_chat_render(ct, m + 2, 1, true, out, sizeof(out), &len, err, sizeof(err)),
                     -EINVAL);
        pd_chat_template_free(ct);
    }
    CHECK_EQ_INT(pd_chat_template_by_name("qwen3", NULL, &ct, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_chat_template_calls(ct), PD_CHAT_CALLS_HERMES);
    CHECK_EQ_INT(pd_chat_render_tools(ct, m, 3, tools, strlen(tools), true, out, sizeof(out),
                                      &len, err, sizeof(err)),
                 0);
    CHECK_CONTAINS(out, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>");
    /* arguments and tools that are not JSON, calls on a user message */
    const struct pd_chat_call bad = {"f", 1, "{\"x\": }", 7};
    m[1].calls = &bad;
    CHECK_EQ_INT(pd_chat_render_tools(ct, m, 3, NULL, 0, true, out, sizeof(out), &len, err,
                                      sizeof(err)),
                 -EINVAL);
    CHECK_CONTAINS(err, "message 1: tool call 0's arguments is not JSON");
    m[1].calls = &call;
    CHECK_EQ_INT(pd_chat_render_tools(ct, m, 3, "[1,", 3, true, out, sizeof(out), &len, err,
                                      sizeof(err)),
                 -EINVAL);
    CHECK_CONTAINS(err, "tools:");
    m[0].calls = &call, m[0].n_calls = 1;
    CHECK_EQ_INT(pd_chat_render(ct, m, 3, true, out, sizeof(out), &len, err, sizeof(err)),
                 -EINVAL);
    CHECK_CONTAINS(err, "only an assistant");
    pd_chat_template_free(ct);
    CHECK_EQ_INT(pd_chat_template_by_name("llama31", NULL, &ct, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_chat_template_calls(ct), PD_CHAT_CALLS_LLAMA);
    pd_chat_template_free(ct);
}

static void chat_role_names(void)
{
    enum pd_chat_role r;
    CHECK_EQ_INT(pd_chat_role_parse("assistant", 9, &r), 0);
    CHECK_EQ_INT(r, PD_CHAT_ASSISTANT);
    CHECK_EQ_INT(pd_chat_role_parse("tool", 4, &r), 0);
    CHECK_EQ_INT(r, PD_CHAT_TOOL);
    CHECK_EQ_INT(pd_chat_role_parse("function", 8, &r), -EINVAL);
    CHECK_EQ_INT(pd_chat_role_parse("user ", 5, &r), -EINVAL);
    CHECK_STR(pd_chat_role_name(PD_CHAT_SYSTEM), "system");
    CHECK_STR(pd_chat_family_name(PD_CHAT_LLAMA3), "llama3");
}

static const struct pd_test tests[] = {
    PD_TEST(chat_reference_templates_match_transformers),
    PD_TEST(chat_default_model_template_matches_transformers),
    PD_TEST(chat_spm_model_template_is_llama2),
    PD_TEST(chat_recognises_families_and_refuses_others),
    PD_TEST(chat_model_templates_match_transformers),
    PD_TEST(chat_finds_default_system_prompt),
    PD_TEST(chat_template_by_name_or_file),
    PD_TEST(chat_render_e2big_and_caps),
    PD_TEST(chat_tools_match_transformers),
    PD_TEST(chat_tools_refused_where_the_template_has_none),
    PD_TEST(chat_role_names),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
