/* libFuzzer target: decoded's OpenAI request parser (decoded/api.c) on
 * untrusted bodies. The first byte picks the endpoint (bit 1 set:
 * /detokenize's token list; else bit 0: chat or completions); the rest is
 * the body. Whatever parses must satisfy the limits
 * it promises, and the response builders must take its values. Built as a
 * real fuzzer with -Dfuzzing=true (clang); the seed corpus (corpus/api/:
 * good and bad requests) is replayed by `meson test --suite fuzz`. */
#include "../../decoded/api.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct dec_api_limits LIM = {.json_depth = 32, .max_stops = 16,
                                          .max_stop_len = 256, .max_prompt_ids = 4096};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 2) { /* /detokenize's body */
        int32_t *ids = NULL;
        size_t n = 0;
        struct dec_api_err te;
        if (dec_api_token_list((const char *)data + 1, size - 1, &LIM, 1000, 64, &ids, &n, &te) <
            0) {
            if ((te.status != 400 && te.status != 503) || !te.msg[0])
                __builtin_trap();
            return 0;
        }
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= 1000)
                __builtin_trap();
        if (n > 64)
            __builtin_trap();
        free(ids);
        return 0;
    }
    enum dec_api_kind kind = data[0] & 1 ? DEC_API_CHAT : DEC_API_COMPLETIONS;
    struct dec_api_req r;
    struct dec_api_err e;
    if (dec_api_parse(kind, (const char *)data + 1, size - 1, &LIM, &r, &e) < 0) {
        if ((e.status != 400 && e.status != 413 && e.status != 503) || !e.msg[0])
            __builtin_trap(); /* every refusal is a client error with a message */
        return 0;
    }
    if (kind == DEC_API_COMPLETIONS) {
        if (r.n_prompts == 0 || r.n_prompts > DEC_API_MAX_PROMPTS || !r.prompts)
            __builtin_trap();
        for (uint32_t i = 0; i < r.n_prompts; i++) {
            const struct dec_api_prompt *p = &r.prompts[i];
            if (!!p->text == !!p->ids ||
                (p->ids && (p->n_ids == 0 || p->n_ids > LIM.max_prompt_ids)) ||
                (p->text && p->len == 0) || (p->ids && r.prompts[0].text) ||
                (p->text && r.prompts[0].ids))
                __builtin_trap(); /* one kind of prompt, none empty */
        }
    } else if (r.n_msgs == 0 || !r.msgs || r.n_prompts) {
        __builtin_trap();
    }
    if (r.n_stops > LIM.max_stops || r.max_tokens == 0 || r.max_tokens < -1 ||
        r.sampling.n_logprobs > PD_MAX_LOGPROBS || !(r.sampling.temperature >= 0) ||
        !(r.sampling.top_p > 0 && r.sampling.top_p <= 1))
        __builtin_trap();
    /* tools: shown exactly when the model may call; a required or named
     * call always has its schema; calls only on assistant messages, capped */
    if ((r.tool_choice == DEC_TOOL_NONE) != !r.tools ||
        ((r.tool_choice == DEC_TOOL_REQUIRED || r.tool_choice == DEC_TOOL_NAMED) && !r.schema) ||
        (r.tool_choice == DEC_TOOL_NAMED && !r.tool_name[0]))
        __builtin_trap();
    for (size_t i = 0; i < r.n_msgs; i++)
        if ((r.msgs[i].n_calls && r.msgs[i].role != PD_CHAT_ASSISTANT) ||
            r.msgs[i].n_calls > PD_CHAT_MAX_CALLS)
            __builtin_trap();
    for (uint32_t i = 0; i < r.n_stops; i++) {
        size_t n = strlen(r.stops[i]);
        if (n == 0 || n > LIM.max_stop_len)
            __builtin_trap();
    }
    struct dec_api_out o = {.kind = kind, .id = "fuzz", .model = r.model ? r.model : "m",
                            .created = 1};
    /* a choice per prompt, each echoing its text */
    struct dec_api_choice ch[DEC_API_MAX_PROMPTS];
    uint32_t n_ch = r.n_prompts ? r.n_prompts : 1;
    struct pd_sample_result s = {.token = 1, .logprob = -1.0f, .n_top = 1, .top = {{1, -1.0f}}};
    for (uint32_t i = 0; i < n_ch; i++) {
        const char *text = r.n_prompts && r.prompts[i].text ? r.prompts[i].text : "";
        ch[i] = (struct dec_api_choice){.text = text, .len = strlen(text), .finish = "stop",
                                        .lp = r.logprobs ? dec_api_lp_new(kind) : NULL};
        if (ch[i].lp)
            dec_api_lp_add(ch[i].lp, kind, NULL, &s, r.sampling.n_logprobs, 0);
    }
    char *out = dec_api_response(&o, ch, n_ch, 1, 1);
    cJSON *back = out ? cJSON_Parse(out) : NULL;
    if (!back)
        __builtin_trap(); /* what we send is JSON */
    cJSON_Delete(back);
    free(out);
    dec_api_req_done(&r);
    return 0;
}
