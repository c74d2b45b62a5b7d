/* pdserve-generate: offline generation with the engine, for people and scripts.
 *
 *   pdserve-generate --model M.gguf --prompt-ids 1,2,3 -n 16
 *   pdserve-generate --load-format dummy --model-shape tiny --prompt-ids 5,6 --prompt-ids 7 \
 *                    -n 8 --temperature 0.8 --sampling-seed 1 --logprobs 3
 *
 * Each --prompt (text, tokenized with the model's tokenizer; with --chat, sent
 * as a user message through the model's chat template) or --prompt-ids is one
 * prompt; several are generated together in one batch. Prints the prompt and
 * generated token ids and, where the model has a tokenizer, the text (and,
 * with --logprobs N, each token's log-probability and the N most probable
 * alternatives). Generation stops at the model's end-of-generation tokens.
 */
#include "cfg.h"
#include "errf.h"
#include "chat.h"
#include "engine.h"
#include "generate.h"
#include "gguf.h"
#include "log.h"
#include "model.h"
#include "tokenizer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROMPTS 64
#define MAX_PROMPT_IDS 65536

struct gen_cfg {
    char *model;
    int load_format;
    char *model_shape;
    int64_t seed;
    struct pd_cfg_list prompt_ids;
    struct pd_cfg_list prompt;
    bool chat;
    int64_t max_tokens;
    double temperature;
    int64_t top_k;
    double top_p;
    double min_p;
    double repetition_penalty;
    double presence_penalty;
    double frequency_penalty;
    int64_t sampling_seed;
    int64_t logprobs;
    bool ignore_eos;
    uint64_t kv_cache_memory;
    int kv_cache_dtype;
    int64_t block_size;
    int64_t max_num_batched_tokens;
    int64_t max_model_len;
    int log_level;
    int device;
    int gpu_weight_dtype, cpu_weight_dtype;
    int64_t threads;
    double gpu_memory_utilization;
    bool cuda_graphs;
};


static const struct pd_cfg_opt options[] = {
    PD_MODEL_CFG(struct gen_cfg),
    PD_CFG_LIST("prompt-ids", struct gen_cfg, prompt_ids, MAX_PROMPTS,
                "a prompt as comma-separated token ids (repeat for a batch)"),
    PD_CFG_LIST("prompt", struct gen_cfg, prompt, MAX_PROMPTS,
                "a text prompt (repeat for a batch)"),
    PD_CFG_BOOL("chat", struct gen_cfg, chat, "false",
                "send each --prompt as a user message through the model's chat template"),
    PD_CFG_INT("max-tokens", struct gen_cfg, max_tokens, "16", 1, 65536,
               "tokens to generate per prompt (also -n)"),
    PD_CFG_DOUBLE("temperature", struct gen_cfg, temperature, "0", 0, 100,
                  "0 = greedy"),
    PD_CFG_INT("top-k", struct gen_cfg, top_k, "0", 0, 1 << 22, "0 = off"),
    PD_CFG_DOUBLE("top-p", struct gen_cfg, top_p, "1", 0.000001, 1, "1 = off"),
    PD_CFG_DOUBLE("min-p", struct gen_cfg, min_p, "0", 0, 1, "0 = off"),
    PD_CFG_DOUBLE("repetition-penalty", struct gen_cfg, repetition_penalty, "1", 0.01, 10,
                  "1 = off"),
    PD_CFG_DOUBLE("presence-penalty", struct gen_cfg, presence_penalty, "0", -2, 2, "0 = off"),
    PD_CFG_DOUBLE("frequency-penalty", struct gen_cfg, frequency_penalty, "0", -2, 2, "0 = off"),
    PD_CFG_INT("sampling-seed", struct gen_cfg, sampling_seed, "0", 0, INT64_MAX,
               "seed of the sampling randomness (prompt i uses seed + i)"),
    PD_CFG_INT("logprobs", struct gen_cfg, logprobs, "0", 0, PD_MAX_LOGPROBS,
               "print each token's log-probability and this many alternatives"),
    PD_CFG_BOOL("ignore-eos", struct gen_cfg, ignore_eos, "false",
                "keep generating past the end-of-sequence token"),
    PD_CFG_SIZE("kv-cache-memory", struct gen_cfg, kv_cache_memory, "1GiB", 1 << 20,
                INT64_C(1) << 40, "KV pool size"),
    PD_ENGINE_KV_CFG(struct gen_cfg),
    PD_CFG_INT("max-num-batched-tokens", struct gen_cfg, max_num_batched_tokens, "2048", 1,
               1 << 20, "tokens per engine step (prefill chunk)"),
    PD_CFG_INT("max-model-len", struct gen_cfg, max_model_len, "0", 0, 1 << 24,
               "longest sequence; 0 = the model's context"),
    PD_LOG_CFG(struct gen_cfg, 0),
    PD_ENGINE_DEVICE_CFG(struct gen_cfg),
    PD_CFG_END,
};

/* "1,2,3" -> ids; -EINVAL naming the bad item. */
static int parse_ids(const char *s, int32_t **out, uint32_t *n, char *err, size_t errlen)
{
    int32_t *ids = malloc(MAX_PROMPT_IDS * sizeof(*ids));
    uint32_t k = 0;
    const char *p = s;
    if (!ids)
        return -ENOMEM;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            snprintf(err, errlen, "--prompt-ids: \"%.40s\" is not a list of token ids", s);
            free(ids);
            return -EINVAL;
        }
        if (k == MAX_PROMPT_IDS) {
            snprintf(err, errlen, "--prompt-ids: more than %d ids", MAX_PROMPT_IDS);
            free(ids);
            return -E2BIG;
        }
        ids[k++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    if (k == 0) {
        snprintf(err, errlen, "--prompt-ids: empty prompt");
        free(ids);
        return -EINVAL;
    }
    *out = ids;
    *n = k;
    return 0;
}

/* A text prompt to ids, through the chat template when asked. */
static int encode_text(const struct pd_tokenizer *tok, const struct pd_chat_template *ct,
                       const char *text, int32_t **out, uint32_t *n, char *err, size_t errlen)
{
    char *rendered = NULL;
    size_t len = strlen(text), cap, got;
    int rc;

    if (ct) {
        struct pd_chat_msg msg = {.role = PD_CHAT_USER, .content = text, .len = len};
        cap = len + 4096;
        if (!(rendered = malloc(cap)))
            return -ENOMEM;
        if ((rc = pd_chat_render(ct, &msg, 1, true, rendered, cap, &len, err, errlen)) < 0) {
            free(rendered);
            return rc;
        }
        text = rendered;
    }
    cap = pd_tok_max_ids(tok, len);
    int32_t *ids = malloc((cap ? cap : 1) * sizeof(*ids));
    /* the template's markers are control tokens, and it writes any BOS itself
     * (transformers' apply_chat_template); a plain prompt's text is text */
    const unsigned flags = ct ? PD_TOK_PARSE_SPECIAL | PD_TOK_NO_BOS : 0;
    rc = ids ? pd_tok_encode(tok, text, len, flags, ids, cap, &got) : -ENOMEM;
    free(rendered);
    if (rc < 0) {
        snprintf(err, errlen, "--prompt: cannot tokenize: %s", strerror(-rc));
        free(ids);
        return rc;
    }
    if (got == 0) {
        snprintf(err, errlen, "--prompt: empty prompt");
        free(ids);
        return -EINVAL;
    }
    *out = ids;
    *n = (uint32_t)got;
    return 0;
}

static void print_text(const struct pd_tokenizer *tok, const char *label, const int32_t *ids,
                       uint32_t n)
{
    size_t len = 0;
    pd_tok_decode(tok, ids, n, PD_TOK_SKIP_SPECIAL, NULL, 0, &len);
    char *buf = malloc(len + 1);
    if (buf && pd_tok_decode(tok, ids, n, PD_TOK_SKIP_SPECIAL, buf, len + 1, &len) == 0)
        printf("%s%s\n", label, buf);
    free(buf);
}

static void print_result(uint32_t i, const struct pd_gen_request *r, bool logprobs,
                         const struct pd_tokenizer *tok)
{
    printf("prompt %u (%u tokens):", i, r->n_prompt);
    for (uint32_t k = 0; k < r->n_prompt; k++)
        printf(" %d", r->prompt[k]);
    printf("\noutput %u (%u tokens, %s):", i, r->n_tokens,
           r->finish == PD_FINISH_STOP ? "stop" : "length");
    for (uint32_t k = 0; k < r->n_tokens; k++)
        printf(" %d", r->tokens[k]);
    printf("\n");
    if (tok) {
        print_text(tok, "prompt text: ", r->prompt, r->n_prompt);
        print_text(tok, "output text: ", r->tokens, r->n_tokens);
    }
    if (!logprobs)
        return;
    for (uint32_t k = 0; k < r->n_tokens; k++) {
        const struct pd_sample_result *s = &r->results[k];
        printf("  [%u] %d logprob %.4f  top:", k, s->token, (double)s->logprob);
        for (uint32_t j = 0; j < s->n_top; j++)
            printf(" %d %.4f%s", s->top[j].token, (double)s->top[j].logprob,
                   j + 1 < s->n_top ? " |" : "");
        printf("\n");
    }
}

/* Prompt i (the text prompts first, then the id lists) as a request. */
static int build_request(const struct gen_cfg *c, size_t i, const struct pd_tokenizer *tok,
                         const struct pd_chat_template *ct, const int32_t *stop, uint32_t n_stop,
                         struct pd_gen_request *r, char *err, size_t errlen)
{
    int32_t *ids;
    uint32_t n;
    int rc;
    if (i < c->prompt.n)
        rc = encode_text(tok, ct, c->prompt.items[i], &ids, &n, err, errlen);
    else
        rc = parse_ids(c->prompt_ids.items[i - c->prompt.n], &ids, &n, err, errlen);
    if (rc < 0)
        return rc;
    r->prompt = ids;
    r->n_prompt = n;
    r->max_tokens = (uint32_t)c->max_tokens;
    r->tokens = calloc(r->max_tokens, sizeof(*r->tokens));
    r->results = calloc(r->max_tokens, sizeof(*r->results));
    if (!r->tokens || !r->results)
        return pd_errf(err, errlen, -ENOMEM, "out of memory");
    r->sampling = (struct pd_sampling){
        .temperature = (float)c->temperature, .top_k = (int32_t)c->top_k,
        .top_p = (float)c->top_p, .min_p = (float)c->min_p,
        .repetition_penalty = (float)c->repetition_penalty,
        .presence_penalty = (float)c->presence_penalty,
        .frequency_penalty = (float)c->frequency_penalty,
        .seed = (uint64_t)c->sampling_seed + i, .n_logprobs = (uint32_t)c->logprobs};
    if (!c->ignore_eos) {
        r->stop_ids = stop;
        r->n_stop_ids = n_stop;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct gen_cfg c;
    struct pd_cfg_args a;
    char err[512];
    int rc;

    /* -n N is the conventional short form of --max-tokens */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-n") == 0)
            argv[i] = (char *)"--max-tokens";
    if (pd_cfg_main(options, &c, argc, argv, "pdserve-generate", "[OPTIONS] [MODEL.gguf]", 1, &a,
                    &rc))
        return rc;
    const size_t n_prompts = c.prompt_ids.n + c.prompt.n;
    if (n_prompts == 0 || n_prompts > MAX_PROMPTS || a.n_positional > 1) {
        fprintf(stderr, "pdserve-generate: give 1..%d prompts (--prompt, --prompt-ids) and at "
                "most one model\n", MAX_PROMPTS);
        pd_cfg_done(options, &c);
        return 2;
    }

    struct pd_model_params mp = {.path = a.n_positional ? a.positional[0] : c.model,
                                 .load_format = (enum pd_load_format)c.load_format,
                                 .shape = c.model_shape, .seed = (uint64_t)c.seed};
    struct pd_model *m = NULL;
    struct pd_engine *e = NULL;
    struct pd_tokenizer *tok = NULL;
    struct pd_chat_template *ct = NULL;
    struct pd_gen_request *reqs = calloc(n_prompts, sizeof(*reqs));
    int exit_code = 1;
    if (!reqs)
        goto out;
    enum pd_device device = PD_DEVICE_CPU;
    if ((rc = pd_engine_pick_device(c.device, &device, err, sizeof(err))) < 0)
        goto fail;
    if (err[0])
        pd_log(PD_LOG_INFO, "%s", err);
    if ((rc = pd_model_load(&mp, &m, err, sizeof(err))) < 0)
        goto fail;
    struct pd_engine_params ep = {.model = m, .kv_cache_bytes = c.kv_cache_memory, .device = device,
                                  PD_ENGINE_DEVICE_PARAMS(c),
                                  PD_ENGINE_KV_PARAMS(c),
                                  .max_batched_tokens = (uint32_t)c.max_num_batched_tokens,
                                  .max_model_len = (uint32_t)c.max_model_len};
    if ((rc = pd_engine_new(&ep, &e, err, sizeof(err))) < 0)
        goto fail;

    /* the tokenizer, when the file has one: text prompts, text output, and
     * every end-of-generation token as a stop id */
    int32_t stop[16];
    uint32_t n_stop = 0;
    if ((rc = pd_tok_load_model(m, &tok, err, sizeof(err))) == 0) {
        for (uint32_t id = 0; id < pd_tok_n_vocab(tok) && n_stop < 16; id++)
            if (pd_tok_is_eog(tok, (int32_t)id))
                stop[n_stop++] = (int32_t)id;
    } else if (rc != -ENOENT) {
        goto fail; /* a tokenizer that is there but wrong */
    } else if (c.prompt.n > 0) {
        snprintf(err, sizeof(err), "--prompt needs a model with a tokenizer (dummy weights and "
                 "checkpoints without tokenizer.json have none: use --prompt-ids)");
        goto fail;
    }
    /* and the ids a checkpoint's generation_config.json names */
    size_t n_eos;
    const int32_t *eos = pd_model_eos(m, &n_eos);
    for (size_t i = 0; i < n_eos && n_stop < 16; i++) {
        uint32_t k = 0;
        while (k < n_stop && stop[k] != eos[i])
            k++;
        if (k == n_stop)
            stop[n_stop++] = eos[i];
    }
    if (c.chat && (rc = pd_chat_template_from_tok(tok, &ct, err, sizeof(err))) < 0)
        goto fail;

    for (size_t i = 0; i < n_prompts; i++)
        if ((rc = build_request(&c, i, tok, ct, stop, n_stop, &reqs[i], err, sizeof(err))) < 0)
            goto fail;
    rc = pd_generate(e, reqs, (uint32_t)n_prompts, err, sizeof(err));
    char note[320];
    if (pd_engine_take_note(e, note, sizeof(note)))
        pd_log(PD_LOG_WARN, "%s", note);
    if (rc < 0)
        goto fail;
    for (size_t i = 0; i < n_prompts; i++)
        print_result((uint32_t)i, &reqs[i], c.logprobs > 0, tok);
    exit_code = 0;
    goto out;
fail:
    fprintf(stderr, "pdserve-generate: %s\n", err);
out:
    if (reqs)
        for (size_t i = 0; i < n_prompts; i++) {
            free((void *)reqs[i].prompt);
            free(reqs[i].tokens);
            free(reqs[i].results);
        }
    free(reqs);
    pd_chat_template_free(ct);
    pd_tok_free(tok);
    pd_engine_free(e);
    pd_model_free(m);
    pd_cfg_done(options, &c);
    return exit_code;
}
