/* decoded/stop and decoded/api without a daemon: stop strings across token
 * boundaries, request parsing and validation, response shapes. */
#include "api.h"
#include "stop.h"

#include "pd_test.h"

#include <cjson/cJSON.h>
#include <errno.h>

/* push pieces one by one; returns the released text and whether it hit */
static int run_stop(char *const *stops, uint32_t n, const char *const *pieces, char *out,
                    size_t cap)
{
    struct dec_stop s;
    const char *t;
    size_t len, k = 0;
    int hit = 0;
    dec_stop_init(&s, stops, n);
    for (const char *const *p = pieces; *p && !hit; p++) {
        hit = dec_stop_push(&s, *p, strlen(*p), &t, &len);
        CHECK(hit >= 0);
        CHECK(k + len < cap);
        memcpy(out + k, t, len);
        k += len;
    }
    if (!hit) {
        dec_stop_flush(&s, &t, &len);
        memcpy(out + k, t, len);
        k += len;
    }
    out[k] = '\0';
    dec_stop_done(&s);
    return hit;
}

static void stop_matches_across_pieces(void)
{
    char *stops[] = {"END"};
    const char *pieces[] = {"hello E", "N", "D and more", NULL};
    char out[64];
    CHECK_EQ_INT(run_stop(stops, 1, pieces, out, sizeof out), 1);
    CHECK_STR(out, "hello ");
}

static void stop_holds_back_longest_minus_one(void)
{
    char *stops[] = {"abc"};
    struct dec_stop s;
    const char *t;
    size_t len;
    dec_stop_init(&s, stops, 1);
    CHECK_EQ_INT(dec_stop_push(&s, "xyzab", 5, &t, &len), 0);
    CHECK_EQ_INT(len, 3); /* "xyz" out, "ab" held */
    CHECK(memcmp(t, "xyz", 3) == 0);
    CHECK_EQ_INT(dec_stop_push(&s, "d", 1, &t, &len), 0);
    CHECK_EQ_INT(len, 1); /* "abd": "a" out, the last 2 bytes held */
    CHECK(t[0] == 'a');
    dec_stop_flush(&s, &t, &len);
    CHECK_EQ_INT(len, 2);
    dec_stop_done(&s);
}

static void stop_earliest_of_several(void)
{
    char *stops[] = {"zz", "b"};
    const char *pieces[] = {"aaz", "zb", NULL};
    char out[64];
    CHECK_EQ_INT(run_stop(stops, 2, pieces, out, sizeof out), 1);
    CHECK_STR(out, "aa");
}

static void stop_without_match_releases_everything(void)
{
    char *stops[] = {"never"};
    const char *pieces[] = {"one ", "two ", "nev", "er?", "x", NULL};
    char out[64];
    /* "nev"+"er?" is "never?": it does match */
    CHECK_EQ_INT(run_stop(stops, 1, pieces, out, sizeof out), 1);
    CHECK_STR(out, "one two ");
    const char *p2[] = {"one ", "nev", "e", "r", NULL};
    CHECK_EQ_INT(run_stop(stops, 1, p2, out, sizeof out), 1);
    const char *p3[] = {"one ", "neve", NULL};
    CHECK_EQ_INT(run_stop(stops, 1, p3, out, sizeof out), 0);
    CHECK_STR(out, "one neve");
}

static void stop_never_cuts_utf8(void)
{
    char *stops[] = {"xyz"}; /* hold back 2 bytes */
    struct dec_stop s;
    const char *t;
    size_t len;
    dec_stop_init(&s, stops, 1);
    /* "aé" = 61 c3 a9: holding 2 bytes would cut é; release only "a" */
    CHECK_EQ_INT(dec_stop_push(&s, "a\xc3\xa9", 3, &t, &len), 0);
    CHECK_EQ_INT(len, 1);
    dec_stop_done(&s);
}

static const struct dec_api_limits LIM = {.json_depth = 8, .max_stops = 4, .max_stop_len = 16,
                                          .max_prompt_ids = 100};

static int parse(enum dec_api_kind k, const char *body, struct dec_api_req *r,
                 struct dec_api_err *e)
{
    return dec_api_parse(k, body, strlen(body), &LIM, r, e);
}

static void api_parses_a_full_completion(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS,
                       "{\"model\":\"m\",\"prompt\":\"hi\",\"max_tokens\":7,\"temperature\":0.5,"
                       "\"top_p\":0.9,\"top_k\":-1,\"min_p\":0.1,\"seed\":-3,\"stop\":[\"a\",\"\"],"
                       "\"logprobs\":2,\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                       "\"presence_penalty\":1,\"frequency_penalty\":-1,\"n\":1,\"whatever\":{}}",
                       &r, &e),
                 0);
    CHECK_STR(r.model, "m");
    CHECK_EQ_INT(r.n_prompts, 1);
    CHECK_STR(r.prompts[0].text, "hi");
    CHECK_EQ_INT(r.max_tokens, 7);
    CHECK(r.sampling.temperature == 0.5f);
    CHECK_EQ_INT(r.sampling.top_k, 0);
    CHECK(r.has_seed && r.sampling.seed == (uint64_t)-3);
    CHECK_EQ_INT(r.n_stops, 1); /* the empty one matches nothing */
    CHECK(r.logprobs && r.sampling.n_logprobs == 2);
    CHECK(r.stream && r.include_usage);
    dec_api_req_done(&r);
}

static void api_defaults(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":[1,2,3],\"stop\":null}", &r, &e), 0);
    CHECK_EQ_INT(r.n_prompts, 1);
    CHECK_EQ_INT(r.prompts[0].n_ids, 3);
    CHECK_EQ_INT(r.max_tokens, 16); /* OpenAI's and vLLM's default for completions */
    CHECK(r.sampling.temperature == 1.0f);
    CHECK(!r.has_seed && !r.logprobs && !r.stream);
    dec_api_req_done(&r);
}

static void api_n_and_best_of(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\"}", &r, &e), 0);
    CHECK_EQ_INT(r.n, 1);
    dec_api_req_done(&r);
    CHECK_EQ_INT(parse(DEC_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                     "\"n\":16,\"best_of\":16}", &r, &e), 0);
    CHECK_EQ_INT(r.n, 16);
    dec_api_req_done(&r);
    /* 4 prompts x 16 = 64 choices: the most one request makes */
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":[[1],[2],[3],[4]],\"n\":16}", &r, &e),
                 0);
    CHECK_EQ_INT(r.n * r.n_prompts, DEC_API_MAX_PROMPTS);
    dec_api_req_done(&r);
}

static void api_several_prompts_make_a_list(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":[\"ab\",\"c\"]}", &r, &e), 0);
    CHECK_EQ_INT(r.n_prompts, 2);
    CHECK_STR(r.prompts[0].text, "ab");
    CHECK_STR(r.prompts[1].text, "c");
    CHECK(!r.prompts[0].ids && r.prompts[1].len == 1);
    dec_api_req_done(&r);
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":[[1,2],[3]]}", &r, &e), 0);
    CHECK_EQ_INT(r.n_prompts, 2);
    CHECK_EQ_INT(r.prompts[0].n_ids, 2);
    CHECK_EQ_INT(r.prompts[1].ids[0], 3);
    dec_api_req_done(&r);
    /* at most DEC_API_MAX_PROMPTS */
    char body[1024] = "{\"prompt\":[";
    for (int i = 0; i <= DEC_API_MAX_PROMPTS; i++)
        strcat(body, i ? ",[1]" : "[1]");
    strcat(body, "]}");
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, body, &r, &e), -EINVAL);
    CHECK_STR(e.param, "prompt");
    CHECK_CONTAINS(e.msg, "at most 64");
    body[strlen(body) - 6] = '\0'; /* one fewer: 64 */
    strcat(body, "]}");
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, body, &r, &e), 0);
    CHECK_EQ_INT(r.n_prompts, DEC_API_MAX_PROMPTS);
    dec_api_req_done(&r);
}

static void api_response_numbers_choices(void)
{
    struct dec_api_out o = {.kind = DEC_API_COMPLETIONS, .id = "x", .model = "m", .created = 5};
    struct dec_api_choice ch[2] = {{.text = "a", .len = 1, .finish = "stop"},
                                   {.text = "bc", .len = 2, .finish = "length"}};
    char *s = dec_api_response(&o, ch, 2, 7, 3);
    cJSON *j = cJSON_Parse(s);
    CHECK(j);
    cJSON *cs = cJSON_GetObjectItem(j, "choices");
    CHECK_EQ_INT(cJSON_GetArraySize(cs), 2);
    for (int i = 0; i < 2; i++) {
        cJSON *c = cJSON_GetArrayItem(cs, i);
        CHECK_EQ_INT(cJSON_GetObjectItem(c, "index")->valueint, i);
        CHECK_STR(cJSON_GetObjectItem(c, "text")->valuestring, i ? "bc" : "a");
        CHECK_STR(cJSON_GetObjectItem(c, "finish_reason")->valuestring, i ? "length" : "stop");
    }
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    CHECK_EQ_INT(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, 7);
    CHECK_EQ_INT(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 3);
    cJSON_Delete(j);
    free(s);
    s = dec_api_chunk(&o, 5, "z", 1, false, NULL, NULL, NULL, false);
    j = cJSON_Parse(s);
    CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
                                     "index")->valueint, 5);
    cJSON_Delete(j);
    free(s);
}

static void api_refusals_name_the_field(void)
{
    static const struct {
        const char *body, *param;
        int status;
    } cases[] = {
        {"{\"prompt\":\"x\",\"n\":17}", "n", 400},
        {"{\"prompt\":\"x\",\"n\":0}", "n", 400},
        {"{\"prompt\":\"x\",\"n\":2,\"best_of\":3}", "best_of", 400},
        {"{\"prompt\":[[1],[2],[3],[4],[5]],\"n\":16}", "n", 400},
        {"{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens", 400},
        {"{\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens", 400},
        {"{\"prompt\":\"x\",\"temperature\":\"1\"}", "temperature", 400},
        {"{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop", 400},
        {"{\"prompt\":\"x\",\"stop\":\"01234567890123456\"}", "stop", 400},
        {"{\"prompt\":[1,2],\"logprobs\":21}", "logprobs", 400},
        {"{\"prompt\":[]}", "prompt", 400},
        {"{\"prompt\":\"\"}", "prompt", 400},
        {"{\"max_tokens\":3}", "prompt", 400},
        {"{\"prompt\":[[1],\"a\"]}", "prompt", 400},
        {"{\"prompt\":[\"a\",[1]]}", "prompt", 400},
        {"{\"prompt\":[\"a\",\"\"]}", "prompt", 400},
        {"{\"prompt\":[[1],[]]}", "prompt", 400},
        {"{\"prompt\":\"x\",\"tool_choice\":\"required\"}", "tool_choice", 400},
        {"{\"prompt\":\"x\",\"tool_choice\":{\"type\":\"function\"}}", "tool_choice", 400},
        {"{\"prompt\":\"x\",\"function_call\":{\"name\":\"f\"}}", "function_call", 400},
        {"{\"prompt\":\"x\",\"functions\":[{\"name\":\"f\"}]}", "functions", 400},
        {"{\"prompt\":\"x\",\"audio\":{\"voice\":\"a\"}}", "audio", 400},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        struct dec_api_req r;
        struct dec_api_err e;
        CHECK(parse(DEC_API_COMPLETIONS, cases[i].body, &r, &e) < 0);
        CHECK_EQ_INT(e.status, cases[i].status);
        CHECK_STR(e.param, cases[i].param);
    }
}

static void api_prompt_ids_over_cap_is_413(void)
{
    char body[1024] = "{\"prompt\":[";
    for (int i = 0; i < 101; i++)
        strcat(body, i ? ",1" : "1");
    strcat(body, "]}");
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, body, &r, &e), -E2BIG);
    CHECK_EQ_INT(e.status, 413);
}

static void api_refuses_bad_json_utf8_depth(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK(parse(DEC_API_COMPLETIONS, "{\"prompt\":", &r, &e) < 0);
    CHECK(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"\xff\"}", &r, &e) < 0);
    CHECK_STR(e.code, "invalid_utf8");
    CHECK(parse(DEC_API_COMPLETIONS, "{\"a\":[[[[[[[[[[1]]]]]]]]]],\"prompt\":[1]}", &r, &e) < 0);
    CHECK_CONTAINS(e.msg, "deeper");
    CHECK(parse(DEC_API_COMPLETIONS, "[]", &r, &e) < 0);
    /* brackets inside strings do not count */
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"[[[[[[[[[[[[\\\"[[[[\"}", &r, &e), 0);
    dec_api_req_done(&r);
}

/* What cJSON cannot say (decoded/jstrict.c): duplicate keys at any depth,
 * the same key written two ways, NUL and raw control characters in any
 * string, with the field named; none of it refused where it is legal. */
static void api_json_duplicates_nul_and_control_refused(void)
{
    static const struct {
        const char *body, *param, *code, *needle;
    } cases[] = {
        {"{\"prompt\":\"x\",\"prompt\":[1,2,3]}", "prompt", "invalid_json", "duplicate key 'prompt'"},
        {"{\"prompt\":\"x\",\"\\u0070rompt\":\"y\"}", "prompt", "invalid_json", "duplicate"},
        {"{\"prompt\":\"x\",\"logit_bias\":{\"5\":1,\"5\":2}}", "logit_bias", "invalid_json",
         "duplicate key '5'"},
        {"{\"prompt\":\"x\",\"z\":[{\"a\":1},{\"b\":1,\"b\":2}]}", NULL, "invalid_json",
         "duplicate key 'b'"},
        {"{\"prompt\":\"abc\\u0000def\"}", "prompt", "invalid_value", "NUL"},
        {"{\"prompt\":\"x\",\"stop\":[\"e\\u0000zzz\"]}", "stop", "invalid_value", "NUL"},
        {"{\"prompt\":\"x\",\"model\":\"smollm2\\u0000any\"}", "model", "invalid_value", "NUL"},
        {"{\"prompt\":\"a\tb\"}", "prompt", "invalid_value", "control character"},
        {"{\"prompt\":\"x\",\"k\\u0000\":1}", NULL, "invalid_value", "NUL"},
        /* whitespace cJSON skips and RFC 8259 does not allow */
        {"{\x01\"prompt\":\"x\"}", NULL, "invalid_json", "malformed"},
        {"{\"prompt\":[1,\x0b" "2]}", NULL, "invalid_json", "malformed"},

    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        struct dec_api_req r;
        struct dec_api_err e;
        if (parse(DEC_API_COMPLETIONS, cases[i].body, &r, &e) >= 0) {
            dec_api_req_done(&r);
            PD_TEST_FAIL_("case %zu accepted: %s", i, cases[i].body);
        }
        CHECK_EQ_INT(e.status, 400);
        if (cases[i].param)
            CHECK_STR(e.param, cases[i].param);
        else
            CHECK(e.param == NULL);
        CHECK_STR(e.code, cases[i].code);
        CHECK_CONTAINS(e.msg, cases[i].needle);
    }
    /* legal: the same key in different objects, escapes that are not NUL,
     * keys that differ only in case */
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_CHAT,
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0001\\n\\ud83d\\ude00\"},"
                       "{\"role\":\"assistant\",\"content\":\"b\"}],\"Messages\":1}",
                       &r, &e),
                 0);
    CHECK_EQ_INT(r.n_msgs, 2);
    CHECK_EQ_INT((int)r.msgs[0].len, 1 + 1 + 1 + 4);
    dec_api_req_done(&r);
    /* the chat role with a NUL inside is refused, not cut to "user" */
    CHECK(parse(DEC_API_CHAT, "{\"messages\":[{\"role\":\"user\\u0000admin\",\"content\":\"x\"}]}",
                &r, &e) < 0);
    CHECK_STR(e.param, "messages");
}

/* The seed read from its text: every integer in [-2^63, 2^64 - 1] exactly. */
static void api_seed_is_exact(void)
{
    static const struct {
        const char *text;
        uint64_t want;
    } ok[] = {
        {"0", 0},
        {"9007199254740993", UINT64_C(9007199254740993)}, /* 2^53 + 1: a double rounds it */
        {"18446744073709551615", UINT64_MAX},
        {"-1", UINT64_MAX},
        {"-9223372036854775808", UINT64_C(1) << 63},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(*ok); i++) {
        char body[128];
        snprintf(body, sizeof(body), "{\"prompt\":[1],\"seed\":%s}", ok[i].text);
        struct dec_api_req r;
        struct dec_api_err e;
        if (parse(DEC_API_COMPLETIONS, body, &r, &e) < 0)
            PD_TEST_FAIL_("%s: %s", ok[i].text, e.msg);
        CHECK(r.has_seed && r.sampling.seed == ok[i].want);
        dec_api_req_done(&r);
    }
    const char *bad[] = {"18446744073709551616", "-9223372036854775809", "1.5", "1e3", "1.0",
                         "\"7\"", "true"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        char body[128];
        snprintf(body, sizeof(body), "{\"prompt\":[1],\"seed\":%s}", bad[i]);
        struct dec_api_req r;
        struct dec_api_err e;
        if (parse(DEC_API_COMPLETIONS, body, &r, &e) >= 0) {
            dec_api_req_done(&r);
            PD_TEST_FAIL_("seed %s accepted", bad[i]);
        }
        CHECK_STR(e.param, "seed");
    }
}

static void api_chat_max_tokens_defaults_to_the_context_and_suffix_refused(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                       &r, &e),
                 0);
    CHECK_EQ_INT(r.max_tokens, -1);
    dec_api_req_done(&r);
    CHECK(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"suffix\":\"end\"}", &r, &e) < 0);
    CHECK_STR(e.param, "suffix");
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"suffix\":\"\"}", &r, &e), 0);
    dec_api_req_done(&r);
}

static void api_token_list_for_detokenize(void)
{
    static const struct dec_api_limits lim = {.json_depth = 8, .max_stops = 4,
                                              .max_stop_len = 16, .max_prompt_ids = 100};
    int32_t *ids = NULL;
    size_t n = 0;
    struct dec_api_err e;
    const char ok[] = "{\"tokens\":[0,5,99],\"model\":\"m\"}";
    CHECK_EQ_INT(dec_api_token_list(ok, strlen(ok), &lim, 100, 10, &ids, &n, &e), 0);
    CHECK(n == 3 && ids[0] == 0 && ids[1] == 5 && ids[2] == 99);
    free(ids);
    const char *bad[] = {"{\"tokens\":[100]}", "{\"tokens\":[-1]}", "{\"tokens\":[1.5]}",
                         "{\"tokens\":\"1\"}", "{}", "{\"tokens\":[1],\"tokens\":[2]}",
                         "{\"tokens\":[1,1,1,1,1,1,1,1,1,1,1]}", "[1]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        ids = NULL;
        if (dec_api_token_list(bad[i], strlen(bad[i]), &lim, 100, 10, &ids, &n, &e) == 0) {
            free(ids);
            PD_TEST_FAIL_("accepted %s", bad[i]);
        }
        CHECK_EQ_INT(e.status, 400);
    }
}

static void api_chat_messages(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_CHAT,
                       "{\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                       "{\"type\":\"text\",\"text\":\"b\"}]},"
                       "{\"role\":\"assistant\",\"content\":null}],"
                       "\"logprobs\":true,\"top_logprobs\":3,\"max_completion_tokens\":5}",
                       &r, &e),
                 0);
    CHECK_EQ_INT(r.n_msgs, 3);
    CHECK_EQ_INT(r.msgs[0].role, PD_CHAT_SYSTEM);
    CHECK_EQ_INT(r.msgs[1].len, 2);
    CHECK(memcmp(r.msgs[1].content, "ab", 2) == 0);
    CHECK_EQ_INT(r.msgs[2].len, 0);
    CHECK(r.logprobs && r.sampling.n_logprobs == 3);
    CHECK_EQ_INT(r.max_tokens, 5);
    dec_api_req_done(&r);
    CHECK(parse(DEC_API_CHAT, "{\"messages\":[{\"role\":\"function\",\"content\":\"x\"}]}",
                &r, &e) < 0);
    CHECK_STR(e.param, "messages");
}

static void api_response_shapes(void)
{
    struct dec_api_out o = {.kind = DEC_API_CHAT, .id = "x1", .model = "m", .created = 5};
    struct dec_api_choice one = {.text = "hi", .len = 2, .finish = "stop"};
    char *s = dec_api_response(&o, &one, 1, 3, 2);
    cJSON *j = cJSON_Parse(s);
    CHECK(j);
    CHECK_STR(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *msg = cJSON_GetObjectItem(c0, "message");
    CHECK_STR(cJSON_GetObjectItem(msg, "content")->valuestring, "hi");
    CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "total_tokens")->valueint, 5);
    cJSON_Delete(j);
    free(s);

    struct pd_sample_result r = {.token = 7, .logprob = -0.5f, .n_top = 2,
                                 .top = {{7, -0.5f}, {9, -1.5f}}};
    cJSON *lp = dec_api_lp_new(DEC_API_COMPLETIONS);
    CHECK(dec_api_lp_add(lp, DEC_API_COMPLETIONS, NULL, &r, 2, 0) == 0);
    o.kind = DEC_API_COMPLETIONS;
    s = dec_api_chunk(&o, 0, "[7]", 3, false, lp, NULL, NULL, true);
    j = cJSON_Parse(s);
    CHECK(j);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "usage")));
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *l = cJSON_GetObjectItem(c0, "logprobs");
    CHECK_STR(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "tokens"), 0)->valuestring, "[7]");
    cJSON *top0 = cJSON_GetArrayItem(cJSON_GetObjectItem(l, "top_logprobs"), 0);
    CHECK_EQ_INT(cJSON_GetArraySize(top0), 2);
    cJSON_Delete(j);
    free(s);
}

/* OpenAI's logit_bias: {"token id": bias}, kept in the body's order (the
 * sampler adds the entries in it) */
static void api_logit_bias_entries_in_body_order(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS,
                       "{\"prompt\":\"x\",\"logit_bias\":{\"42\":-100,\"7\":2.5,\"0\":100,"
                       "\"2147483647\":-0.25,\"9\":0}}",
                       &r, &e),
                 0);
    CHECK_EQ_INT(r.sampling.n_bias, 5);
    CHECK(r.bias != NULL && r.sampling.bias == r.bias);
    static const struct pd_logit_bias want[5] = {
        {42, -100.0f}, {7, 2.5f}, {0, 100.0f}, {INT32_MAX, -0.25f}, {9, 0.0f}};
    for (int i = 0; i < 5; i++) {
        CHECK_EQ_INT(r.bias[i].token, want[i].token);
        CHECK(r.bias[i].bias == want[i].bias);
    }
    CHECK_EQ_INT(pd_sampling_validate(&r.sampling, (uint32_t)INT32_MAX + 1u, NULL, 0), 0);
    dec_api_req_done(&r);
    /* chat too; an empty object and null are no bias */
    CHECK_EQ_INT(parse(DEC_API_CHAT,
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                       "\"logit_bias\":{\"5\":-1.5}}",
                       &r, &e),
                 0);
    CHECK(r.sampling.n_bias == 1 && r.sampling.bias[0].token == 5 &&
          r.sampling.bias[0].bias == -1.5f);
    dec_api_req_done(&r);
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{}}", &r, &e), 0);
    CHECK_EQ_INT(r.sampling.n_bias, 0);
    dec_api_req_done(&r);
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":null}", &r, &e), 0);
    CHECK_EQ_INT(r.sampling.n_bias, 0);
    dec_api_req_done(&r);
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\"}", &r, &e), 0);
    CHECK(r.sampling.n_bias == 0 && r.sampling.bias == NULL && r.bias == NULL);
    dec_api_req_done(&r);
}

/* {"prompt":"x","logit_bias":{"0":1,"1":1,...}} with n entries */
static char *bias_body(int n)
{
    char *b = malloc(64 + 16 * (size_t)n);
    CHECK(b);
    int k = sprintf(b, "{\"prompt\":\"x\",\"logit_bias\":{");
    for (int i = 0; i < n; i++)
        k += sprintf(b + k, "%s\"%d\":%d", i ? "," : "", i, i % 201 - 100);
    strcpy(b + k, "}}");
    return b;
}

static void api_logit_bias_at_most_300_entries(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    char *b = bias_body(PD_MAX_LOGIT_BIAS);
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, b, &r, &e), 0);
    free(b);
    CHECK_EQ_INT(r.sampling.n_bias, PD_MAX_LOGIT_BIAS);
    for (int i = 0; i < PD_MAX_LOGIT_BIAS; i++)
        CHECK(r.bias[i].token == i && r.bias[i].bias == (float)(i % 201 - 100));
    dec_api_req_done(&r);
    b = bias_body(PD_MAX_LOGIT_BIAS + 1);
    int rc = parse(DEC_API_COMPLETIONS, b, &r, &e);
    free(b);
    CHECK_EQ_INT(rc, -EINVAL);
    CHECK_EQ_INT(e.status, 400);
    CHECK_STR(e.param, "logit_bias");
    CHECK_STR(e.code, "invalid_value");
    CHECK_CONTAINS(e.msg, "at most 300");
}

static void api_logit_bias_refusals_name_the_field(void)
{
    static const struct {
        const char *bias, *code;
    } cases[] = {
        /* not an object */
        {"[1]", "invalid_type"},
        {"[]", "invalid_type"},
        {"\"5\"", "invalid_type"},
        {"5", "invalid_type"},
        {"true", "invalid_type"},
        /* keys: decimal integers in [0, INT32_MAX], no leading zeros or signs */
        {"{\"01\":1}", "invalid_value"},
        {"{\"00\":1}", "invalid_value"},
        {"{\"-1\":1}", "invalid_value"},
        {"{\"+1\":1}", "invalid_value"},
        {"{\"x\":1}", "invalid_value"},
        {"{\"1x\":1}", "invalid_value"},
        {"{\"1.5\":1}", "invalid_value"},
        {"{\"1e3\":1}", "invalid_value"},
        {"{\"\":1}", "invalid_value"},
        {"{\" 1\":1}", "invalid_value"},
        {"{\"1 \":1}", "invalid_value"},
        {"{\"0x10\":1}", "invalid_value"},
        {"{\"2147483648\":1}", "invalid_value"},
        {"{\"99999999999999999999\":1}", "invalid_value"},
        {"{\"5\":1,\"x\":1}", "invalid_value"}, /* a bad key after a good one */
        /* values: numbers in [-100, 100] */
        {"{\"5\":100.5}", "invalid_value"},
        {"{\"5\":-100.001}", "invalid_value"},
        {"{\"5\":1e300}", "invalid_value"},
        {"{\"5\":\"1\"}", "invalid_value"},
        {"{\"5\":true}", "invalid_value"},
        {"{\"5\":null}", "invalid_value"},
        {"{\"5\":[1]}", "invalid_value"},
        {"{\"5\":{}}", "invalid_value"},
        {"{\"5\":1,\"6\":101}", "invalid_value"}, /* a bad value after a good one */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        char body[256];
        snprintf(body, sizeof(body), "{\"prompt\":\"x\",\"logit_bias\":%s}", cases[i].bias);
        struct dec_api_req r;
        struct dec_api_err e;
        if (parse(DEC_API_COMPLETIONS, body, &r, &e) >= 0) {
            dec_api_req_done(&r);
            PD_TEST_FAIL_("logit_bias %s accepted", cases[i].bias);
        }
        if (e.status != 400 || !e.param || strcmp(e.param, "logit_bias") != 0 || !e.code ||
            strcmp(e.code, cases[i].code) != 0)
            PD_TEST_FAIL_("logit_bias %s: %d %s %s (%s)", cases[i].bias, e.status,
                          e.param ? e.param : "(null)", e.code ? e.code : "(null)", e.msg);
        CHECK_CONTAINS(e.msg, "logit_bias");
    }
    /* the edges are fine */
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS,
                       "{\"prompt\":\"x\",\"logit_bias\":{\"0\":-100.0,\"10\":1e2,\"7\":-0}}", &r,
                       &e),
                 0);
    CHECK_EQ_INT(r.sampling.n_bias, 3);
    CHECK(r.bias[0].bias == -100.0f && r.bias[1].bias == 100.0f && r.bias[2].bias == 0.0f);
    dec_api_req_done(&r);
}

/* OpenAI's echo (completions): parsed into r->echo; absent, null and false
 * are no echo; with it max_tokens may be 0 (the prompt scored, nothing
 * generated: lm-eval-harness's call), and logprobs goes with it */
static void api_echo_parsed_for_completions(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"echo\":true}", &r, &e), 0);
    CHECK(r.echo);
    CHECK_EQ_INT(r.max_tokens, 16); /* the default stays */
    dec_api_req_done(&r);
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS,
                       "{\"prompt\":[5,6,7],\"echo\":true,\"max_tokens\":0,\"logprobs\":3}", &r,
                       &e),
                 0);
    CHECK(r.echo && r.logprobs);
    CHECK_EQ_INT(r.max_tokens, 0);
    CHECK_EQ_INT(r.sampling.n_logprobs, 3);
    CHECK_EQ_INT(r.prompts[0].n_ids, 3);
    dec_api_req_done(&r);
    /* several prompts, each echoed */
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":[\"a\",\"b\"],\"echo\":true,"
                                            "\"max_tokens\":0,\"logprobs\":0}", &r, &e),
                 0);
    CHECK(r.echo && r.n_prompts == 2 && r.max_tokens == 0);
    dec_api_req_done(&r);
    static const char *const off[] = {"{\"prompt\":\"x\"}", "{\"prompt\":\"x\",\"echo\":false}",
                                      "{\"prompt\":\"x\",\"echo\":null}"};
    for (size_t i = 0; i < sizeof(off) / sizeof(*off); i++) {
        CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, off[i], &r, &e), 0);
        CHECK(!r.echo);
        dec_api_req_done(&r);
    }
    /* not a boolean */
    static const char *const bad[] = {"\"true\"", "1", "0", "[]", "{}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        char body[64];
        snprintf(body, sizeof(body), "{\"prompt\":\"x\",\"echo\":%s}", bad[i]);
        CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, body, &r, &e), -EINVAL);
        CHECK_EQ_INT(e.status, 400);
        CHECK_STR(e.param, "echo");
        CHECK_STR(e.code, "invalid_type");
    }
}

/* Chat completions do not echo: refused, naming the field; echo false is
 * harmless there */
static void api_echo_refused_in_chat(void)
{
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_CHAT,
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true}", &r,
                       &e),
                 -EINVAL);
    CHECK_EQ_INT(e.status, 400);
    CHECK_STR(e.param, "echo");
    CHECK_STR(e.code, "invalid_value");
    CHECK_CONTAINS(e.msg, "/v1/completions");
    /* with max_tokens 0 too: echo is what is named */
    CHECK_EQ_INT(parse(DEC_API_CHAT,
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true,"
                       "\"max_tokens\":0}",
                       &r, &e),
                 -EINVAL);
    CHECK_STR(e.param, "echo");
    CHECK_EQ_INT(parse(DEC_API_CHAT,
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":false}", &r,
                       &e),
                 0);
    CHECK(!r.echo);
    dec_api_req_done(&r);
}

/* max_tokens 0 only with echo; otherwise 400 naming max_tokens (or chat's
 * max_completion_tokens), the message saying echo is the way; below 0 never */
static void api_max_tokens_zero_only_with_echo(void)
{
    static const struct {
        enum dec_api_kind kind;
        const char *body, *param;
    } cases[] = {
        {DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens"},
        {DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":0,\"echo\":false}", "max_tokens"},
        {DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":0,\"echo\":null}", "max_tokens"},
        {DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":-1,\"echo\":true}", "max_tokens"},
        {DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":-2147483648,\"echo\":true}",
         "max_tokens"},
        {DEC_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}",
         "max_tokens"},
        {DEC_API_CHAT,
         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_completion_tokens\":0}",
         "max_completion_tokens"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        struct dec_api_req r;
        struct dec_api_err e;
        if (parse(cases[i].kind, cases[i].body, &r, &e) >= 0) {
            dec_api_req_done(&r);
            PD_TEST_FAIL_("%s accepted", cases[i].body);
        }
        if (e.status != 400 || !e.param || strcmp(e.param, cases[i].param) != 0 ||
            !strstr(e.msg, "echo"))
            PD_TEST_FAIL_("%s: %d %s (%s)", cases[i].body, e.status,
                          e.param ? e.param : "(null)", e.msg);
        CHECK_STR(e.code, "invalid_value");
    }
    /* the field order does not matter: echo after max_tokens */
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"max_tokens\":0,\"prompt\":\"x\",\"echo\":true}",
                       &r, &e),
                 0);
    CHECK(r.echo && r.max_tokens == 0);
    dec_api_req_done(&r);
    /* and 1 needs no echo */
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":1}", &r, &e), 0);
    CHECK(!r.echo && r.max_tokens == 1);
    dec_api_req_done(&r);
}

/* response_format: {"type": "json_object"} asks for constrained decoding
 * (r->json_object), {"type": "text"} is the default; null or absent is
 * text. Completions and chat alike */
static void api_response_format_json_object_and_text(void)
{
    static const struct {
        enum dec_api_kind kind;
        const char *body;
        bool json;
    } cases[] = {
        {DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_object\"}}",
         true},
        {DEC_API_CHAT,
         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
         "\"response_format\":{\"type\":\"json_object\"}}",
         true},
        {DEC_API_CHAT,
         "{\"response_format\":{\"extra\":[1,2],\"type\":\"json_object\"},"
         "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":3,\"logprobs\":true}",
         true},
        {DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"response_format\":{\"type\":\"text\"}}", false},
        {DEC_API_CHAT,
         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
         "\"response_format\":{\"type\":\"text\"}}",
         false},
        {DEC_API_COMPLETIONS, "{\"prompt\":\"x\",\"response_format\":null}", false},
        {DEC_API_COMPLETIONS, "{\"prompt\":\"x\"}", false},
        {DEC_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        struct dec_api_req r;
        struct dec_api_err e;
        if (parse(cases[i].kind, cases[i].body, &r, &e) < 0)
            PD_TEST_FAIL_("%s: %d %s (%s)", cases[i].body, e.status, e.param ? e.param : "(null)",
                          e.msg);
        if ((r.schema == pd_schema_json_object()) != cases[i].json ||
            (!cases[i].json && r.schema))
            PD_TEST_FAIL_("%s: schema %p", cases[i].body, (void *)r.schema);
        dec_api_req_done(&r);
    }
    /* the rest of the request is parsed as without it */
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_CHAT,
                       "{\"response_format\":{\"type\":\"json_object\"},\"n\":3,\"max_tokens\":9,"
                       "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":5}",
                       &r, &e),
                 0);
    CHECK(r.schema == pd_schema_json_object());
    CHECK_EQ_INT(r.n, 3);
    CHECK_EQ_INT(r.max_tokens, 9);
    CHECK(r.has_seed && r.sampling.seed == 5);
    dec_api_req_done(&r);
}

/* Another type (anything else, another case; a json_schema with a keyword
 * the matcher cannot follow) is 400 invalid_value naming response_format and
 * what is supported or refused; a response_format that is not an object
 * with a string type is 400 invalid_type */
static void api_response_format_refusals_name_the_field(void)
{
    static const struct {
        const char *format, *code, *says;
    } cases[] = {
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":{\"type\":"
         "\"object\",\"properties\":{\"d\":{\"type\":\"string\",\"format\":\"date\"}}}}}",
         "invalid_value", "$.properties.d: \"format\" is not supported"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":{}}}",
         "invalid_value", "the root must be an object"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"object\"}}}",
         "invalid_value", "'name'"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\"}}", "invalid_type",
         "'schema'"},
        {"{\"type\":\"json_schema\"}", "invalid_type", "'json_schema' object"},
        {"{\"type\":\"xml\"}", "invalid_value", "\"xml\""},
        {"{\"type\":\"JSON_OBJECT\"}", "invalid_value", "\"JSON_OBJECT\""},
        {"{\"type\":\"json_object \"}", "invalid_value", "json_object "},
        {"{\"type\":\"\"}", "invalid_value", "\"\""},
        {"{\"type\":\"text\\u0000\"}", NULL, NULL}, /* a NUL: refused, whatever names it */
        {"\"json_object\"", "invalid_type", "must be an object"},
        {"[{\"type\":\"json_object\"}]", "invalid_type", "must be an object"},
        {"{}", "invalid_type", "string 'type'"},
        {"{\"Type\":\"json_object\"}", "invalid_type", "string 'type'"},
        {"{\"type\":null}", "invalid_type", "string 'type'"},
        {"{\"type\":1}", "invalid_type", "string 'type'"},
        {"{\"type\":true}", "invalid_type", "string 'type'"},
        {"{\"type\":[\"json_object\"]}", "invalid_type", "string 'type'"},
        {"{\"type\":{\"type\":\"json_object\"}}", "invalid_type", "string 'type'"},
        {"true", "invalid_type", "must be an object"},
        {"1", "invalid_type", "must be an object"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++)
        for (int kind = 0; kind < 2; kind++) {
            char body[512];
            struct dec_api_req r;
            struct dec_api_err e;
            if (kind)
                snprintf(body, sizeof(body),
                         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                         "\"response_format\":%s}",
                         cases[i].format);
            else
                snprintf(body, sizeof(body), "{\"prompt\":\"x\",\"response_format\":%s}",
                         cases[i].format);
            if (parse(kind ? DEC_API_CHAT : DEC_API_COMPLETIONS, body, &r, &e) >= 0) {
                dec_api_req_done(&r);
                PD_TEST_FAIL_("%s accepted", body);
            }
            CHECK_EQ_INT(e.status, 400);
            if (!cases[i].code)
                continue;
            if (!e.param || strcmp(e.param, "response_format") != 0 || !e.code ||
                strcmp(e.code, cases[i].code) != 0 || !strstr(e.msg, cases[i].says))
                PD_TEST_FAIL_("%s: %d %s %s (%s)", body, e.status, e.param ? e.param : "(null)",
                              e.code ? e.code : "(null)", e.msg);
            if (!strstr(cases[i].format, "json_schema\",") &&
                !strcmp(cases[i].code, "invalid_value")) /* an unknown type: what is supported */
                CHECK_CONTAINS(e.msg, "\"text\", \"json_object\" and \"json_schema\"");
        }
    /* a long type is named, cut to 40 bytes */
    char body[512], type[101];
    memset(type, 'a', 100);
    type[100] = '\0';
    snprintf(body, sizeof(body), "{\"prompt\":\"x\",\"response_format\":{\"type\":\"%s\"}}", type);
    struct dec_api_req r;
    struct dec_api_err e;
    CHECK_EQ_INT(parse(DEC_API_COMPLETIONS, body, &r, &e), -EINVAL);
    CHECK_STR(e.param, "response_format");
    char want[128];
    snprintf(want, sizeof(want), "\"%.40s\" is not supported", type);
    CHECK_CONTAINS(e.msg, want);
}

static const struct pd_test tests[] = {
    PD_TEST(stop_matches_across_pieces),
    PD_TEST(stop_holds_back_longest_minus_one),
    PD_TEST(stop_earliest_of_several),
    PD_TEST(stop_without_match_releases_everything),
    PD_TEST(stop_never_cuts_utf8),
    PD_TEST(api_parses_a_full_completion),
    PD_TEST(api_defaults),
    PD_TEST(api_refusals_name_the_field),
    PD_TEST(api_prompt_ids_over_cap_is_413),
    PD_TEST(api_refuses_bad_json_utf8_depth),
    PD_TEST(api_json_duplicates_nul_and_control_refused),
    PD_TEST(api_seed_is_exact),
    PD_TEST(api_chat_max_tokens_defaults_to_the_context_and_suffix_refused),
    PD_TEST(api_token_list_for_detokenize),
    PD_TEST(api_chat_messages),
    PD_TEST(api_response_shapes),
    PD_TEST(api_several_prompts_make_a_list),
    PD_TEST(api_n_and_best_of),
    PD_TEST(api_response_numbers_choices),
    PD_TEST(api_logit_bias_entries_in_body_order),
    PD_TEST(api_logit_bias_at_most_300_entries),
    PD_TEST(api_logit_bias_refusals_name_the_field),
    PD_TEST(api_echo_parsed_for_completions),
    PD_TEST(api_echo_refused_in_chat),
    PD_TEST(api_max_tokens_zero_only_with_echo),
    PD_TEST(api_response_format_json_object_and_text),
    PD_TEST(api_response_format_refusals_name_the_field),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
