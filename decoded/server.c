#include "server_internal.h"

#include "api.h"
#include "chat.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "remote.h"
#include "tokenizer.h"
#include "toolcall.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

/* ---- metrics ---- */

static int metrics_init(struct dec_server *s)
{
    /* vLLM's buckets, so dashboards built for it read ours */
    static const double ttft_b[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
    static const double itl_b[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                                   0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
    static const double e2e_b[] = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
                                   20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0};
    struct pd_metrics *m = pd_metrics_new("model_name", s->cfg.model_name);
    if (!(s->metrics = m))
        return -ENOMEM;
#define FIN "pdserve:request_success_total"
#define FIN_HELP "Requests finished, by finish reason."
#define HTTP "pdserve:http_responses_total"
#define HTTP_HELP "API responses, by status class."
#define REF "pdserve:http_connections_refused_total"
#define REF_HELP "API connections closed before a request: by reason."
    /* vLLM has no batch_size histogram; powers of two with 48 between 32
     * and 64, the batch sizes people tune --max-num-seqs to */
    static const double batch_b[] = {1, 2, 4, 8, 16, 32, 48, 64, 128, 256, 512, 1024};
    const struct pd_metric_def defs[] = {
        {&s->sm.running, PD_METRIC_GAUGE, "pdserve:num_requests_running",
         .help = "Requests admitted to the engine."},
        {&s->sm.waiting, PD_METRIC_GAUGE, "pdserve:num_requests_waiting",
         .help = "Requests waiting for admission."},
        {&s->sm.kv_used, PD_METRIC_GAUGE, "pdserve:kv_cache_blocks_used",
         .help = "KV-cache blocks in use."},
        {&s->sm.kv_free, PD_METRIC_GAUGE, "pdserve:kv_cache_blocks_free",
         .help = "KV-cache blocks free."},
        {&s->sm.staging_used, PD_METRIC_GAUGE, "pdserve:kv_staging_blocks_used",
         .help = "KV channel staging blocks held by transfers (a GPU engine's page-locked "
                 "host blocks; 0 on the CPU)."},
        {&s->sm.kv_usage, PD_METRIC_GAUGE, "pdserve:kv_cache_usage_perc",
         .help = "KV-cache usage, 0 to 1."},
        {&s->sm.prompt_tokens, PD_METRIC_COUNTER, "pdserve:prompt_tokens_total",
         .help = "Prompt tokens prefilled by this engine."},
        {&s->sm.remote_prompt_tokens, PD_METRIC_COUNTER, "pdserve:remote_prompt_tokens_total",
         .help = "Prompt tokens prefilled by prefill peers."},
        {&s->sm.remote_running, PD_METRIC_GAUGE, "pdserve:num_requests_remote_prefill",
         .help = "Requests whose prompt a prefill peer is computing."},
        {&s->sm.gen_tokens, PD_METRIC_COUNTER, "pdserve:generation_tokens_total",
         .help = "Tokens generated."},
        {&s->sm.ttft, PD_METRIC_HISTOGRAM, "pdserve:time_to_first_token_seconds",
         .help = "Time from arrival to the first generated token.", PD_METRIC_BOUNDS(ttft_b)},
        {&s->sm.itl, PD_METRIC_HISTOGRAM, "pdserve:inter_token_latency_seconds",
         .help = "Time between consecutive generated tokens.", PD_METRIC_BOUNDS(itl_b)},
        {&s->sm.e2e, PD_METRIC_HISTOGRAM, "pdserve:e2e_request_latency_seconds",
         .help = "Time from arrival to the last generated token.", PD_METRIC_BOUNDS(e2e_b)},
        {&s->sm.queue_time, PD_METRIC_HISTOGRAM, "pdserve:request_queue_time_seconds",
         .help = "Time waiting for admission.", PD_METRIC_BOUNDS(e2e_b)},
        {&s->sm.batch_size, PD_METRIC_HISTOGRAM, "pdserve:batch_size",
         .help = "Sequences in one engine step (decode tokens and prompt chunks).",
         PD_METRIC_BOUNDS(batch_b)},
        {&s->sm.preemptions, PD_METRIC_COUNTER, "pdserve:num_preemptions_total",
         .help = "Running requests preempted for KV-cache room (their blocks freed, recomputed "
                 "later)."},
        {&s->fin_stop, PD_METRIC_COUNTER, FIN, .labels = "finished_reason=\"stop\"",
         .help = FIN_HELP},
        {&s->fin_length, PD_METRIC_COUNTER, FIN, .labels = "finished_reason=\"length\"",
         .help = FIN_HELP},
        {&s->fin_abort, PD_METRIC_COUNTER, FIN, .labels = "finished_reason=\"abort\"",
         .help = FIN_HELP},
        {&s->fin_error, PD_METRIC_COUNTER, FIN, .labels = "finished_reason=\"error\"",
         .help = FIN_HELP},
        {&s->http_2xx, PD_METRIC_COUNTER, HTTP, .labels = "code=\"2xx\"", .help = HTTP_HELP},
        {&s->http_4xx, PD_METRIC_COUNTER, HTTP, .labels = "code=\"4xx\"", .help = HTTP_HELP},
        {&s->http_5xx, PD_METRIC_COUNTER, HTTP, .labels = "code=\"5xx\"", .help = HTTP_HELP},
        {&s->conns_gauge, PD_METRIC_GAUGE, "pdserve:http_connections",
         .help = "Open connections on the API address."},
        {&s->cut_total, PD_METRIC_COUNTER, "pdserve:http_slow_clients_cut_total",
         .help = "Streams cut because the client did not read."},
        {&s->refused[0], PD_METRIC_COUNTER, REF, .labels = "reason=\"deadline\"", .help = REF_HELP},
        {&s->refused[1], PD_METRIC_COUNTER, REF, .labels = "reason=\"per_source\"",
         .help = REF_HELP},
        {&s->refused[2], PD_METRIC_COUNTER, REF, .labels = "reason=\"bad_request\"",
         .help = REF_HELP},
    };
    pd_metrics_register(m, defs, sizeof(defs) / sizeof(*defs));
    pd_prefix_metrics_init(&s->pm, m);
    s->sm.prefix = &s->pm;
    return s->pm.evictions ? 0 : -ENOMEM;
}

/* ---- generation requests ---- */

/* The prompt as token ids: the given ids, or text (rendered from messages
 * for chat) through the tokenizer. 0, or an error already replied. */
static int prompt_tokens(struct dec_server *s, struct evhttp_request *req, const char *id,
                         struct dec_api_req *r, struct dec_api_prompt *pr, int32_t **ids,
                         uint32_t *n_ids)
{
    const uint32_t cap = s->cfg.max_prompt_tokens;
    char err[256];
    char which[32] = ""; /* which prompt, when there are several */
    if (pr && r->n_prompts > 1)
        snprintf(which, sizeof(which), "prompt %u: ", (unsigned)(pr - r->prompts));
    if (pr && pr->ids) {
        for (uint32_t i = 0; i < pr->n_ids; i++)
            if ((uint32_t)pr->ids[i] >= s->cfg.n_vocab) {
                snprintf(err, sizeof(err),
                         "%stoken id %d at position %u is outside the vocabulary [0, %u)",
                         which, pr->ids[i], i, s->cfg.n_vocab);
                dec_reply_reject(s, req, id, 400, "prompt", "invalid_value", err);
                return -EINVAL;
            }
        *ids = pr->ids;
        *n_ids = pr->n_ids;
        pr->ids = NULL;
        return 0;
    }
    if (!s->tok) {
        dec_reply_reject(
            s, req, id, 400, r->kind == DEC_API_CHAT ? "messages" : "prompt", "no_tokenizer",
            "this model has no tokenizer (dummy weights): send the prompt to /v1/completions "
            "as an array of token ids");
        return -EINVAL;
    }
    char *text = NULL;
    const char *src = pr ? pr->text : NULL;
    size_t len = pr ? pr->len : 0;
    if (r->kind == DEC_API_CHAT) {
        if (!s->chat) {
            dec_reply_reject(
                s, req, id, 400, "messages", "no_chat_template",
                "this model has no chat template the server understands; start it with "
                "--chat-template, or use /v1/completions");
            return -EINVAL;
        }
        size_t need = 4096;
        for (int tries = 0; tries < 2; tries++) {
            char *t = realloc(text, need + 1);
            if (!t) {
                free(text);
                dec_reply_reject(s, req, id, 503, NULL, NULL, "out of memory");
                return -ENOMEM;
            }
            text = t;
            int rc = pd_chat_render_tools(s->chat, r->msgs, r->n_msgs, r->tools, r->tools_len, true,
                                          text, need + 1, &len, err, sizeof(err));
            if (rc == 0)
                break;
            if (rc != -E2BIG || tries == 1) {
                free(text);
                dec_reply_reject(s, req, id, 400, "messages", "invalid_value", err);
                return -EINVAL;
            }
            need = len;
        }
        src = text;
    }
    size_t n = 0, room = len + 2 < (size_t)cap + 1 ? len + 2 : (size_t)cap + 1;
    int32_t *out = malloc(room * sizeof(*out));
    /* a chat prompt is encoded as transformers' apply_chat_template(tokenize=True)
     * and vLLM do, without the tokenizer's own BOS: the template writes it
     * when the model wants it (a second one is the double-BOS trap) */
    const unsigned flags = PD_TOK_PARSE_SPECIAL | (r->kind == DEC_API_CHAT ? PD_TOK_NO_BOS : 0);
    int rc = out ? pd_tok_encode(s->tok, src, len, flags, out, room, &n) : -ENOMEM;
    free(text);
    if (rc == -E2BIG || (rc == 0 && n > cap)) {
        free(out);
        snprintf(err, sizeof(err),
                 "%sthe prompt has %zu tokens; this server takes at most %u "
                 "(--max-prompt-tokens, --max-model-len)",
                 which, n, cap);
        dec_reply_reject(s, req, id, 413, r->kind == DEC_API_CHAT ? "messages" : "prompt",
                         "prompt_too_long", err);
        return -E2BIG;
    }
    if (rc < 0) {
        free(out);
        dec_reply_reject(s, req, id, rc == -ENOMEM ? 503 : 400, NULL, NULL,
                         rc == -ENOMEM ? "out of memory" : "the prompt cannot be tokenized");
        return rc;
    }
    if (n == 0) {
        free(out);
        dec_reply_reject(s, req, id, 400, "prompt", "invalid_value", "the prompt is empty");
        return -EINVAL;
    }
    *ids = out;
    *n_ids = (uint32_t)n;
    return 0;
}

/* max_tokens: checked against the context and the pool, or their room. */
static int decide_max_tokens(struct dec_server *s, struct evhttp_request *req, const char *id,
                             const struct dec_api_req *r, uint32_t n_prompt, uint32_t *out)
{
    const struct dec_server_cfg *c = &s->cfg;
    char msg[512];
    if (n_prompt >= c->kv_capacity_tokens) {
        /* it could never run, however empty the pool: refuse it now rather
         * than queue it for ever */
        snprintf(msg, sizeof(msg), "the prompt has %u tokens; the KV cache holds %" PRIu64
                 " tokens in all (--kv-cache-memory), and a request needs room for its prompt "
                 "and at least one generated token", n_prompt, c->kv_capacity_tokens);
        dec_reply_reject(s, req, id, 413, r->kind == DEC_API_CHAT ? "messages" : "prompt",
                         "prompt_too_long", msg);
        return -E2BIG;
    }
    uint64_t room = c->max_model_len - n_prompt; /* n_prompt < max_model_len */
    if (c->kv_capacity_tokens - n_prompt < room)
        room = c->kv_capacity_tokens - n_prompt;
    if (r->max_tokens == 0) { /* echo's scoring: it runs for one token, dropped (scheduler.h) */
        *out = 1;
        return 0;
    }
    if (r->max_tokens < 0) {
        *out = (uint32_t)(c->max_tokens_cap && c->max_tokens_cap < room ? c->max_tokens_cap : room);
        return 0;
    }
    if (c->max_tokens_cap && (uint64_t)r->max_tokens > c->max_tokens_cap) {
        snprintf(msg, sizeof(msg), "max_tokens is %" PRId64 "; this server allows at most %u",
                 r->max_tokens, c->max_tokens_cap);
        dec_reply_reject(s, req, id, 400, "max_tokens", "invalid_value", msg);
        return -EINVAL;
    }
    if ((uint64_t)r->max_tokens > room) {
        snprintf(msg, sizeof(msg),
                 "This model's maximum context length is %u tokens. However, you "
                 "requested %" PRIu64 " tokens (%u in the prompt, %" PRId64 " in the completion). "
                 "Please reduce the length of the prompt or completion.",
                 (uint32_t)(c->kv_capacity_tokens < c->max_model_len ? c->kv_capacity_tokens
                                                                     : c->max_model_len),
                 (uint64_t)n_prompt + (uint64_t)r->max_tokens, n_prompt, r->max_tokens);
        dec_reply_reject(s, req, id, 400, "max_tokens", "context_length_exceeded", msg);
        return -EINVAL;
    }
    *out = (uint32_t)r->max_tokens;
    return 0;
}

/* vLLM's POST /tokenize: {"prompt": text} (or token ids), or {"messages":
 * [...]} rendered as chat is, to {"count", "max_model_len", "tokens"}. */
static void tokenize(struct dec_server *s, struct evhttp_request *req, const char *id)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    /* chat when the body has "messages" (dec_api_parse then checks all of it) */
    cJSON *peek = cJSON_ParseWithLength(body, len);
    enum dec_api_kind kind = cJSON_GetObjectItemCaseSensitive(peek, "messages")
                                 ? DEC_API_CHAT : DEC_API_COMPLETIONS;
    cJSON_Delete(peek);
    struct dec_api_req r;
    struct dec_api_err e;
    if (dec_api_parse(kind, body, len, &s->limits, &r, &e) < 0) {
        dec_reply_reject(s, req, id, e.status, e.param, e.code, e.msg);
        return;
    }
    int32_t *ids = NULL;
    uint32_t n = 0;
    if (r.model && strcmp(r.model, s->cfg.model_name) != 0) {
        char msg[300];
        snprintf(msg, sizeof(msg), "The model `%.200s` does not exist.", r.model);
        dec_reply_reject(s, req, id, 404, "model", "model_not_found", msg);
    } else if (r.n_prompts > 1) {
        dec_reply_reject(s, req, id, 400, "prompt", "invalid_value",
                         "/tokenize takes one prompt");
    } else if (prompt_tokens(s, req, id, &r, r.n_prompts ? &r.prompts[0] : NULL, &ids, &n) ==
               0) {
        cJSON *o = cJSON_CreateObject();
        cJSON *t = o ? cJSON_AddArrayToObject(o, "tokens") : NULL;
        for (uint32_t i = 0; t && i < n; i++)
            cJSON_AddItemToArray(t, cJSON_CreateNumber(ids[i]));
        if (o) {
            cJSON_AddNumberToObject(o, "count", n);
            cJSON_AddNumberToObject(o, "max_model_len", s->cfg.max_model_len);
        }
        if (!t) { /* out of memory: dec_reply_json answers 503 for NULL */
            cJSON_Delete(o);
            o = NULL;
        }
        dec_reply_json(s, req, 200, o);
    }
    free(ids);
    dec_api_req_done(&r);
}

/* Ids to text, malloc'd and NUL-terminated (*len without the NUL): the
 * tokenizer's decoding (a cut character as U+FFFD, as transformers), or
 * "[id]" per token with a dummy model. NULL: -ENOMEM, or *rc the error. */
static char *decode_ids(const struct dec_server *s, const int32_t *ids, size_t n, size_t *len,
                        int *rc)
{
    /* "[id]" is at most 13 bytes ("[-2147483648]"): a dummy model's fits at once */
    size_t cap = (s->tok ? 4 : 13) * n + 64;
    char *text = NULL;
    *rc = -ENOMEM;
    for (int tries = 0; tries < 2; tries++) {
        free(text);
        if (!(text = malloc(cap)))
            return NULL;
        if (!s->tok) {
            size_t o = 0;
            for (size_t i = 0; i < n && o < cap; i++)
                o += (size_t)snprintf(text + o, cap - o, "[%d]", ids[i]);
            *rc = o < cap ? 0 : -E2BIG;
            *len = o;
        } else {
            *rc = pd_tok_decode(s->tok, ids, n, 0, text, cap, len);
        }
        if (*rc != -E2BIG)
            break;
        cap = *len + 1;
    }
    if (*rc < 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* vLLM's POST /detokenize: {"tokens": [ids]} to {"prompt": text} (valid
 * UTF-8: a cut character becomes U+FFFD, as transformers decodes). */
static void detokenize(struct dec_server *s, struct evhttp_request *req, const char *id)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    int32_t *ids = NULL;
    char *text = NULL;
    struct dec_api_err e;
    if (!s->tok) {
        dec_reply_reject(s, req, id, 400, "tokens", "no_tokenizer", "this model has no tokenizer");
        return;
    }
    size_t n_ids = 0;
    if (dec_api_token_list(body, len, &s->limits, s->cfg.n_vocab, s->cfg.max_model_len, &ids,
                           &n_ids, &e) < 0) {
        dec_reply_reject(s, req, id, e.status, e.param, e.code, e.msg);
        return;
    }
    size_t got = 0;
    int rc;
    text = decode_ids(s, ids, n_ids, &got, &rc);
    if (rc < 0) {
        dec_reply_reject(s, req, id, rc == -ENOMEM ? 503 : 400, "tokens", NULL,
                         rc == -ENOMEM ? "out of memory" : "the tokens cannot be decoded");
    } else {
        cJSON *o = cJSON_CreateObject();
        if (o)
            cJSON_AddStringToObject(o, "prompt", text);
        dec_reply_json(s, req, 200, o);
    }
    free(text);
    free(ids);
}

/* echo: choice c's prompt as the client wrote it (a string), or decoded
 * (token ids). NULL: out of memory (or undecodable ids, checked before). */
static char *echo_text(const struct dec_server *s, const struct dec_api_req *r, uint32_t c,
                       const struct dec_job *job, size_t *len)
{
    const struct dec_api_prompt *pr = &r->prompts[c / r->n];
    int rc;
    if (pr->text) {
        char *t = malloc(pr->len + 1);
        if (t) {
            memcpy(t, pr->text, pr->len);
            t[pr->len] = '\0';
            *len = pr->len;
        }
        return t;
    }
    return decode_ids(s, job->prompt, job->n_prompt, len, &rc);
}

/* A job for choice c of a request, from its parsed body: prompt c / n
 * (or the rendered chat) and the request's parameters, its seed + c % n.
 * The first choice of a prompt tokenizes it; the others (n > 1) copy its
 * tokens and follow it (scheduler.h: they share its prompt KV). NULL when
 * refused (the reply sent) or out of memory (likewise). */
static struct dec_job *choice_job(struct dec_server *s, struct evhttp_request *req,
                                  const char *id, struct dec_api_req *r, uint32_t c,
                                  struct dec_job *leader)
{
    struct dec_job *job = dec_job_new();
    if (!job)
        goto nomem;
    if (leader) {
        if (!(job->prompt = malloc((size_t)leader->n_prompt * sizeof(*job->prompt))))
            goto nomem;
        memcpy(job->prompt, leader->prompt, (size_t)leader->n_prompt * sizeof(*job->prompt));
        job->n_prompt = leader->n_prompt;
        job->max_tokens = leader->max_tokens;
        dec_job_ref(leader);
        job->leader = leader;
    } else if (prompt_tokens(s, req, id, r, r->n_prompts ? &r->prompts[c / r->n] : NULL,
                             &job->prompt, &job->n_prompt) < 0 ||
               decide_max_tokens(s, req, id, r, job->n_prompt, &job->max_tokens) < 0) {
        dec_job_unref(job); /* refused: the reply went */
        return NULL;
    }
    job->choice = c;
    job->score_only = r->max_tokens == 0;
    job->constrained = r->schema != NULL;
    job->schema = pd_schema_ref(r->schema);
    pd_gstate_init(&job->gs, job->schema ? job->schema : pd_schema_json_object());
    /* echo with logprobs: the first choice of a prompt scores it, the others
     * (n > 1) report the same numbers, their leader's */
    if (r->echo && r->logprobs && !leader &&
        !(job->plp = calloc((size_t)job->n_prompt + 1, sizeof(*job->plp))))
        goto nomem;
    job->sampling = r->sampling;
    job->sampling.seed += c % r->n; /* n > 1: each choice its own stream */
    job->sampling.bias = NULL;
    if (r->sampling.n_bias) {
        if (!(job->bias = malloc(r->sampling.n_bias * sizeof(*job->bias))))
            goto nomem;
        memcpy(job->bias, r->bias, r->sampling.n_bias * sizeof(*job->bias));
        job->sampling.bias = job->bias;
    }
    job->logprobs = r->logprobs;
    job->ignore_eos = r->ignore_eos;
    if (r->cache_salt) /* zeros otherwise: the unsalted namespace */
        pd_prefix_salt(r->cache_salt, strlen(r->cache_salt), job->salt);
    /* each job its own copy of the stop strings */
    if (r->n_stops && !(job->stops = calloc(r->n_stops, sizeof(*job->stops))))
        goto nomem;
    for (uint32_t k = 0; k < r->n_stops; k++, job->n_stops++)
        if (!(job->stops[k] = strdup(r->stops[k])))
            goto nomem;
    snprintf(job->id, sizeof(job->id), "%s", id);
    /* a reload may have emptied the peer list: prefill locally, as decoded
     * started without one does; a follower takes its leader's prompt KV */
    job->remote = !leader && s->remote && job->n_prompt > s->local_prefill_max &&
                  dec_remote_n_peers(s->remote) > 0;
    return job;
nomem:
    dec_job_unref(job);
    dec_reply_reject(s, req, id, 503, NULL, NULL, "out of memory");
    return NULL;
}

/* What the model cannot do for a request that parsed: tools its chat
 * template cannot show, a response_format without its tokenizer. -1: the
 * refusal went out. */
static int refuse_unservable(struct dec_server *s, struct evhttp_request *req, const char *id,
                             const struct dec_api_req *r)
{
    char msg[256];
    if (r->tool_choice != DEC_TOOL_NONE &&
        (!s->chat || pd_chat_template_calls(s->chat) == PD_CHAT_CALLS_NONE)) {
        snprintf(msg, sizeof(msg),
                 "this model's chat template (%s) has no tools; tool calls need Qwen2.5's, "
                 "Qwen3's or Llama-3.1's own template (or tool_choice \"none\")",
                 s->chat ? pd_chat_family_name(pd_chat_template_family(s->chat)) : "none");
        dec_reply_reject(s, req, id, 400, "tools", "invalid_value", msg);
        return -1;
    }
    if (r->schema && !s->tok) {
        dec_reply_reject(s, req, id, 400, "response_format", "invalid_value",
                         "response_format json_object and json_schema need the model's "
                         "tokenizer (this model has none)");
        return -1;
    }
    return 0;
}

/* with tools, each choice's reader of tool calls (toolcall.h); -ENOMEM */
static int attach_toolcalls(struct dec_server *s, struct dec_http *h, const struct dec_api_req *r)
{
    for (uint32_t i = 0; r->tool_choice != DEC_TOOL_NONE && i < h->n_ch; i++)
        if (!(h->ch[i].tc =
                  dec_toolcall_new(r->tool_choice, pd_chat_template_calls(s->chat), r->tool_name)))
            return -ENOMEM;
    return 0;
}

static void generate(struct dec_server *s, struct evhttp_request *req, enum dec_api_kind kind,
                     const char *id)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    struct dec_api_req r;
    struct dec_api_err e;
    struct dec_http *h = NULL;
    char msg[512];

    if (dec_api_parse(kind, body, len, &s->limits, &r, &e) < 0) {
        dec_reply_reject(s, req, id, e.status, e.param, e.code, e.msg);
        return;
    }
    if (r.model && strcmp(r.model, s->cfg.model_name) != 0) {
        snprintf(msg, sizeof(msg), "The model `%.200s` does not exist.", r.model);
        dec_reply_reject(s, req, id, 404, "model", "model_not_found", msg);
        goto out;
    }
    if (r.sampling.top_k > (int32_t)s->cfg.n_vocab)
        r.sampling.top_k = 0; /* all of them */
    if (!r.has_seed && getrandom(&r.sampling.seed, sizeof(r.sampling.seed), 0) < 0)
        r.sampling.seed = pd_now_ns();
    if (refuse_unservable(s, req, id, &r) < 0)
        goto out;
    if (pd_sampling_validate(&r.sampling, s->cfg.n_vocab, msg, sizeof(msg)) < 0) {
        /* the parse checked the rest; a bias's token is checked against the model here */
        dec_reply_reject(s, req, id, 400, strncmp(msg, "logit_bias", 10) ? NULL : "logit_bias",
                         "invalid_value", msg);
        goto out;
    }
    const uint32_t n_ch = (kind == DEC_API_COMPLETIONS ? r.n_prompts : 1) * r.n;
    if (!(h = calloc(1, sizeof(*h))) || !(h->ch = calloc(n_ch, sizeof(*h->ch)))) {
        dec_reply_reject(s, req, id, 503, NULL, NULL, "out of memory");
        goto out;
    }
    h->srv = s;
    /* every prompt is checked before any job is queued: a request is
     * refused whole or runs whole */
    for (; h->n_ch < n_ch; h->n_ch++) {
        const uint32_t k = h->n_ch % r.n; /* choice k of its prompt */
        struct dec_job *job = choice_job(s, req, id, &r, h->n_ch,
                                         k ? h->ch[h->n_ch - k].job : NULL);
        if (!job)
            goto out;
        job->owner = h;
        h->ch[h->n_ch].job = job;
        if (r.echo && !(h->ch[h->n_ch].echo = echo_text(s, &r, h->n_ch, job,
                                                          &h->ch[h->n_ch].echo_len))) {
            h->n_ch++; /* its job goes with the others' */
            dec_reply_reject(s, req, id, 503, NULL, NULL, "out of memory");
            goto out;
        }
        if (k == 0) /* usage counts a prompt once, whatever n (OpenAI's) */
            h->n_prompt += job->n_prompt;
    }
    if (attach_toolcalls(s, h, &r) < 0) {
        dec_reply_reject(s, req, id, 503, NULL, NULL, "out of memory");
        goto out;
    }
    const uint64_t now = pd_now_ns();
    for (uint32_t i = 0; i < n_ch; i++) {
        struct dec_job *job = h->ch[i].job;
        job->t_arrival_ns = now;
        int rc = dec_sched_submit(s->sched, job);
        if (rc == 0)
            continue;
        /* the ones queued already are cancelled: they end with their final
         * events, which find no owner */
        for (uint32_t k = 0; k < i; k++)
            dec_job_cancel(h->ch[k].job);
        if (rc == -EAGAIN) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
            dec_reply_reject(s, req, id, 429, NULL, "too_many_requests", "the server is at "
                             "capacity (--max-waiting requests queued); retry later");
        } else if (rc == -E2BIG) { /* decide_max_tokens keeps this from happening */
            dec_reply_reject(s, req, id, 413, NULL, "prompt_too_long", "the prompt and "
                             "max_tokens do not fit the KV cache (--kv-cache-memory)");
        } else {
            dec_reply_reject(s, req, id, 503, NULL, "shutting_down",
                             "the server is shutting down");
        }
        goto out;
    }
    h->req = req;
    h->evcon = evhttp_request_get_connection(req);
    h->out = (struct dec_api_out){
        .kind = kind, .id = h->ch[0].job->id, .model = s->cfg.model_name,
        .created = (int64_t)time(NULL)};
    h->path = kind == DEC_API_CHAT ? "/v1/chat/completions" : "/v1/completions";
    h->stream = r.stream;
    h->include_usage = r.include_usage;
    h->logprobs = r.logprobs;
    h->n_top = r.sampling.n_logprobs;
    h->t_start_ns = now;
    h->last_peek_ns = now;
    pd_dlist_push(&s->inflight, &h->link);
    pd_log(PD_LOG_DEBUG, "%s: accepted, %u prompt(s), %u prompt tokens, max_tokens %u", id,
           h->n_ch, h->n_prompt, h->ch[0].job->max_tokens);
    h = NULL;
    if (r.stream)
        pd_http_sse_begin(req);
out:
    if (h) { /* refused: its jobs, queued or not, have no owner */
        for (uint32_t i = 0; i < h->n_ch; i++) {
            h->ch[i].job->owner = NULL;
            dec_job_unref(h->ch[i].job);
            free(h->ch[i].echo);
            dec_toolcall_free(h->ch[i].tc);
        }
        free(h->ch);
        free(h);
    }
    dec_api_req_done(&r);
}

/* ---- routes ---- */

/* The served model as OpenAI's model object (NULL: out of memory). */
static cJSON *model_obj(const struct dec_server *s)
{
    cJSON *m = cJSON_CreateObject();
    if (m) {
        cJSON_AddStringToObject(m, "id", s->cfg.model_name);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", (double)time(NULL));
        cJSON_AddStringToObject(m, "owned_by", "pdserve");
        cJSON_AddNumberToObject(m, "max_model_len", s->cfg.max_model_len);
    }
    return m;
}

static void models(struct dec_server *s, struct evhttp_request *req)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *data = root ? cJSON_AddArrayToObject(root, "data") : NULL;
    cJSON *m = model_obj(s);
    if (data && m) {
        cJSON_AddStringToObject(root, "object", "list");
        cJSON_AddItemToArray(data, m);
        m = NULL;
    }
    cJSON_Delete(m);
    dec_reply_json(s, req, 200, root);
}

static void health(struct dec_server *s, struct evhttp_request *req)
{
    static const char ok[] = "{\"status\":\"ok\"}";
    static const char stopping[] = "{\"status\":\"stopping\"}";
    if (s->draining)
        pd_http_reply_json(req, 503, stopping, sizeof(stopping) - 1);
    else
        pd_http_reply_json(req, 200, ok, sizeof(ok) - 1);
}

static const char *req_path(struct evhttp_request *req, char *buf, size_t cap)
{
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *p = u ? evhttp_uri_get_path(u) : NULL;
    snprintf(buf, cap, "%s", p && *p ? p : "/");
    /* one trailing slash is the same path */
    size_t n = strlen(buf);
    if (n > 1 && buf[n - 1] == '/')
        buf[n - 1] = '\0';
    return buf;
}

static void api_cb(struct evhttp_request *req, void *arg)
{
    struct dec_server *s = arg;
    char id[PD_HTTP_ID_MAX], path[256];
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    req_path(req, path, sizeof(path));
    bool chat = strcmp(path, "/v1/chat/completions") == 0;
    pd_http_request_id(req, chat ? "chatcmpl-" : "cmpl-", id);

    /* HEAD is GET without the body (common/daemon/http sends its length, not it) */
    bool get = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD;
    if (strcmp(path, "/health") == 0 && get) {
        health(s, req);
        return;
    }
    /* the key before the route: without it, nothing says which paths exist */
    if (!pd_http_bearer_ok(req, s->cfg.api_key)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        dec_reply_reject(s, req, id, 401, NULL, "invalid_api_key",
                         "missing or incorrect API key (Authorization: Bearer ...)");
        return;
    }
    if (strncmp(path, "/v1/models/", 11) == 0) { /* one model: client.models.retrieve() */
        char *name = evhttp_uridecode(path + 11, 0, NULL); /* %3A is ':' */
        if (!get) {
            dec_reply_reject(s, req, id, 405, NULL, "method_not_allowed", "use GET");
        } else if (!name || strcmp(name, s->cfg.model_name) != 0) {
            char msg[200];
            snprintf(msg, sizeof(msg), "the model '%.128s' does not exist", name ? name : "?");
            dec_reply_reject(s, req, id, 404, "model", "model_not_found", msg);
        } else {
            dec_reply_json(s, req, 200, model_obj(s));
        }
        free(name);
        return;
    }
    bool tok = strcmp(path, "/tokenize") == 0, detok = strcmp(path, "/detokenize") == 0;
    if (tok || detok) { /* vLLM's, beside the OpenAI routes */
        if (method != EVHTTP_REQ_POST)
            dec_reply_reject(s, req, id, 405, NULL, "method_not_allowed", "use POST");
        else if (tok)
            tokenize(s, req, id);
        else
            detokenize(s, req, id);
        return;
    }
    bool known = chat || strcmp(path, "/v1/completions") == 0 || strcmp(path, "/v1/models") == 0;
    if (!known) {
        dec_reply_reject(s, req, id, 404, NULL, "not_found", "no such endpoint");
        return;
    }
    if (strcmp(path, "/v1/models") == 0) {
        if (!get)
            dec_reply_reject(s, req, id, 405, NULL, "method_not_allowed", "use GET");
        else
            models(s, req);
        return;
    }
    if (method != EVHTTP_REQ_POST) {
        dec_reply_reject(s, req, id, 405, NULL, "method_not_allowed", "use POST");
        return;
    }
    if (s->draining) {
        dec_reply_reject(s, req, id, 503, NULL, "shutting_down", "the server is shutting down");
        return;
    }
    generate(s, req, chat ? DEC_API_CHAT : DEC_API_COMPLETIONS, id);
}

void dec_server_scrape(struct dec_server *s)
{
    pd_metric_set(s->conns_gauge, pd_http_conns_count(s->api_conns));
    struct pd_http_conns_stats hs;
    pd_http_conns_get_stats(s->api_conns, &hs);
    pd_metric_add(s->refused[0], (double)(hs.deadline_cuts - s->refused_seen.deadline_cuts));
    pd_metric_add(s->refused[1],
                  (double)(hs.per_source_refusals - s->refused_seen.per_source_refusals));
    pd_metric_add(s->refused[2], (double)(hs.bad_requests - s->refused_seen.bad_requests));
    s->refused_seen = hs;
    dec_remote_scrape(s->remote);
}

/* ---- lifecycle ---- */

static struct evhttp *make_http(struct event_base *base, const struct dec_server_cfg *c,
                                void (*cb)(struct evhttp_request *, void *), void *arg)
{
    struct evhttp *h = evhttp_new(base);
    if (!h)
        return NULL;
    evhttp_set_gencb(h, cb, arg);
    evhttp_set_timeout(h, (int)c->header_timeout_s);
    evhttp_set_max_body_size(h, (ev_ssize_t)c->max_body);
    evhttp_set_max_headers_size(h, MAX_HEADERS_SIZE);
    /* read and drop the rest of a body that is too large, so the client
     * sees the 413 instead of a reset */
    evhttp_set_flags(h, EVHTTP_SERVER_LINGERING_CLOSE);
    evhttp_set_allowed_methods(h, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                      EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                      EVHTTP_REQ_PATCH);
    return h;
}

int dec_server_new(const struct dec_server_cfg *cfg, struct event_base *base,
                   const struct pd_tokenizer *tok, const struct pd_chat_template *chat,
                   struct dec_server **out, char *err, size_t errlen)
{
    struct dec_server *s = calloc(1, sizeof(*s));
    if (!s)
        goto oom;
    s->cfg = *cfg;
    s->base = base;
    s->tok = tok;
    s->chat = chat;
    s->limits = (struct dec_api_limits){.json_depth = cfg->json_depth, .max_stops = 16,
                                        .max_stop_len = 256,
                                        .max_prompt_ids = cfg->max_prompt_tokens};
    s->rl_cut = (struct pd_ratelimit)PD_RATELIMIT_INIT(5000, 5);
    s->rl_refuse = (struct pd_ratelimit)PD_RATELIMIT_INIT(5000, 5);
    if (metrics_init(s) < 0 || !(s->wake_ev = event_new(base, -1, 0, dec_reply_wake_cb, s)) ||
        !(s->api = make_http(base, cfg, api_cb, s)) ||
        !(s->api_conns =
              pd_http_conns_new(s->api, base, cfg->max_connections, dec_reply_conn_closed, s)))
        goto oom;
    pd_http_conns_set_limits(s->api_conns, cfg->header_timeout_s, cfg->max_connections_per_source,
                             dec_reply_conn_refused, s);
    *out = s;
    return 0;
oom:
    dec_server_free(s);
    snprintf(err, errlen, "out of memory setting up the HTTP server");
    return -ENOMEM;
}

struct dec_server *dec_server_free(struct dec_server *s)
{
    if (!s)
        return NULL;
    /* connections first (their close callbacks use the in-flight list) */
    if (s->api)
        evhttp_free(s->api);
    pd_http_conns_free(s->api_conns);
    while (s->inflight.head) {
        struct dec_http *h = PD_DNODE_ENTRY(s->inflight.head, struct dec_http, link);
        dec_http_unlink(s, h);
        if (h->req)
            evhttp_request_free(h->req); /* detached: ours */
        dec_http_free(h);
    }
    if (s->wake_ev)
        event_free(s->wake_ev);
    pd_metrics_free(s->metrics);
    free(s);
    return NULL;
}

const struct dec_sched_metrics *dec_server_sched_metrics(struct dec_server *s) { return &s->sm; }
struct pd_metrics *dec_server_metrics(struct dec_server *s) { return s->metrics; }
void dec_server_set_sched(struct dec_server *s, struct dec_sched *sched) { s->sched = sched; }
void dec_server_set_remote(struct dec_server *s, struct dec_remote *r, uint32_t local_max)
{
    s->remote = r;
    s->local_prefill_max = local_max;
}
uint32_t dec_server_inflight(const struct dec_server *s) { return s->inflight.n; }
unsigned dec_server_connections(const struct dec_server *s)
{
    return pd_http_conns_count(s->api_conns);
}

size_t dec_server_pending_output(const struct dec_server *s)
{
    return pd_http_conns_pending_output(s->api_conns);
}

int dec_server_listen(struct dec_server *s, char *err, size_t errlen)
{
    uint16_t bound;
    int rc = pd_http_bind(s->api, s->api_conns, s->cfg.host, s->cfg.port, "API", &bound, err,
                          errlen);
    if (rc == 0)
        pd_log(PD_LOG_NOTICE, "listening on %s:%u (API)", s->cfg.host, bound);
    return rc;
}

void dec_server_drain(struct dec_server *s)
{
    s->draining = true;
    pd_http_conns_pause(s->api_conns, true);
    if (s->inflight.n == 0)
        event_base_loopexit(s->base, NULL);
}

void dec_server_cancel_all(struct dec_server *s)
{
    for (struct pd_dnode *n = s->inflight.head; n; n = n->next)
        dec_http_cancel(PD_DNODE_ENTRY(n, struct dec_http, link));
}
