#include "api.h"

#include "api_internal.h"
#include "jstrict.h"
#include "prefix.h"

#include "tokenizer.h"
#include "utf8.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dec_api_json_depth(const char *s, size_t n, int limit)
{
    int depth = 0, max = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max && (max = depth) > limit)
                return limit + 1;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return max;
}

/* ---- field readers: null and absent are the same; a wrong type is 400 ---- */

static int get_bool(const cJSON *root, const char *name, bool *out, struct dec_api_err *e)
{
    const cJSON *v = dec_api_field(root, name);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return dec_api_fail(e, 400, name, "invalid_type", "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return 1;
}

static int get_num(const cJSON *root, const char *name, double lo, double hi, double *out,
                   struct dec_api_err *e)
{
    const cJSON *v = dec_api_field(root, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v))
        return dec_api_fail(e, 400, name, "invalid_type", "'%s' must be a number", name);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return dec_api_fail(e, 400, name, "invalid_value", "'%s' must be in [%g, %g], got %g", name,
                            lo, hi, v->valuedouble);
    *out = v->valuedouble;
    return 1;
}

/* An integer in [lo, hi] (JSON numbers are doubles: 2.5 and 1e300 are refused). */
static int get_int(const cJSON *root, const char *name, int64_t lo, int64_t hi, int64_t *out,
                   struct dec_api_err *e)
{
    const cJSON *v = dec_api_field(root, name);
    if (!v)
        return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!cJSON_IsNumber(v) || d != floor(d))
        return dec_api_fail(e, 400, name, "invalid_type", "'%s' must be an integer", name);
    if (!(d >= (double)lo && d <= (double)hi))
        return dec_api_fail(e, 400, name, "invalid_value",
                            "'%s' must be an integer in [%lld, %lld], got %.17g", name,
                            (long long)lo, (long long)hi, d);
    *out = (int64_t)d;
    return 1;
}

static int get_str(const cJSON *root, const char *name, const char **out, struct dec_api_err *e)
{
    const cJSON *v = dec_api_field(root, name);
    if (!v)
        return 0;
    if (!cJSON_IsString(v))
        return dec_api_fail(e, 400, name, "invalid_type", "'%s' must be a string", name);
    *out = v->valuestring;
    return 1;
}

/* ---- prompt, messages, stop ---- */

static int parse_ids(const cJSON *arr, const struct dec_api_limits *lim,
                     struct dec_api_prompt *pr, struct dec_api_err *e)
{
    int n = cJSON_GetArraySize(arr);
    if (n <= 0)
        return dec_api_fail(e, 400, "prompt", "invalid_value", "'prompt' is empty");
    if ((uint32_t)n > lim->max_prompt_ids)
        return dec_api_fail(e, 413, "prompt", "prompt_too_long",
                            "the prompt has %d tokens; this server takes at most %u", n,
                            lim->max_prompt_ids);
    if (!(pr->ids = malloc((size_t)n * sizeof(*pr->ids))))
        return dec_api_fail(e, 503, NULL, NULL, "out of memory");
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
        if (d != floor(d) || d < 0 || d > INT32_MAX)
            return dec_api_fail(
                e, 400, "prompt", "invalid_type",
                "'prompt' must be a string or an array of token ids (integers >= 0)");
        pr->ids[pr->n_ids++] = (int32_t)d;
    }
    return 0;
}

static int parse_text(const cJSON *v, struct dec_api_prompt *pr, struct dec_api_err *e)
{
    pr->text = v->valuestring;
    pr->len = strlen(v->valuestring);
    if (pr->len == 0)
        return dec_api_fail(e, 400, "prompt", "invalid_value", "'prompt' is empty");
    return 0;
}

/* "prompt": a string, an array of token ids, or an array of either (several
 * prompts: one choice each, as OpenAI's API), all of one kind */
static int parse_prompt(const cJSON *root, const struct dec_api_limits *lim,
                        struct dec_api_req *r, struct dec_api_err *e)
{
    const cJSON *p = dec_api_field(root, "prompt");
    if (!p)
        return dec_api_fail(e, 400, "prompt", "missing_required_parameter", "'prompt' is required");
    const bool list = cJSON_IsArray(p) && p->child &&
                      (cJSON_IsString(p->child) || cJSON_IsArray(p->child));
    int n = list ? cJSON_GetArraySize(p) : 1;
    if (!list && !cJSON_IsString(p) && !cJSON_IsArray(p))
        return dec_api_fail(
            e, 400, "prompt", "invalid_type",
            "'prompt' must be a string, an array of token ids, or an array of either");
    if (n > DEC_API_MAX_PROMPTS)
        return dec_api_fail(e, 400, "prompt", "invalid_value",
                            "%d prompts in one request; this server takes at most %d", n,
                            DEC_API_MAX_PROMPTS);
    if (!(r->prompts = calloc((size_t)n, sizeof(*r->prompts))))
        return dec_api_fail(e, 503, NULL, NULL, "out of memory");
    r->n_prompts = (uint32_t)n;
    if (!list)
        return cJSON_IsString(p) ? parse_text(p, &r->prompts[0], e)
                                 : parse_ids(p, lim, &r->prompts[0], e);
    const bool text = cJSON_IsString(p->child);
    uint32_t i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, p)
    {
        if (text ? !cJSON_IsString(v) : !cJSON_IsArray(v))
            return dec_api_fail(
                e, 400, "prompt", "invalid_type",
                "a list of prompts must hold only strings or only arrays of token ids");
        int rc = text ? parse_text(v, &r->prompts[i], e) : parse_ids(v, lim, &r->prompts[i], e);
        if (rc < 0)
            return rc;
        i++;
    }
    return 0;
}

#define STOP_TYPE "'stop' must be a string or an array of strings"

static int parse_stop(const cJSON *root, const struct dec_api_limits *lim, struct dec_api_req *r,
                      struct dec_api_err *e)
{
    const cJSON *s = dec_api_field(root, "stop");
    if (!s)
        return 0;
    if (!cJSON_IsString(s) && !cJSON_IsArray(s))
        return dec_api_fail(e, 400, "stop", "invalid_type", STOP_TYPE);
    int n = cJSON_IsString(s) ? 1 : cJSON_GetArraySize(s);
    if ((uint32_t)n > lim->max_stops)
        return dec_api_fail(e, 400, "stop", "invalid_value", "at most %u stop strings, got %d",
                            lim->max_stops, n);
    if (n && !(r->stops = calloc((size_t)n, sizeof(*r->stops))))
        return dec_api_fail(e, 503, NULL, NULL, "out of memory");
    const cJSON *one = cJSON_IsString(s) ? s : s->child;
    for (; one; one = cJSON_IsString(s) ? NULL : one->next) {
        if (!cJSON_IsString(one))
            return dec_api_fail(e, 400, "stop", "invalid_type", STOP_TYPE);
        size_t len = strlen(one->valuestring);
        if (len > lim->max_stop_len)
            return dec_api_fail(e, 400, "stop", "invalid_value",
                                "a stop string is longer than %zu bytes", lim->max_stop_len);
        if (len == 0)
            continue; /* matches nothing */
        if (!(r->stops[r->n_stops] = strdup(one->valuestring)))
            return dec_api_fail(e, 503, NULL, NULL, "out of memory");
        r->n_stops++;
    }
    return 0;
}

/* response_format {"type": "json_schema", "json_schema": {"name", "schema",
 * "strict"?, "description"?}}: the schema compiled (common/text/schema.h);
 * what it cannot follow is refused, naming the keyword and where it is */
static int parse_json_schema(const cJSON *rf, struct dec_api_req *r, struct dec_api_err *e)
{
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
    const cJSON *name = js ? cJSON_GetObjectItemCaseSensitive(js, "name") : NULL;
    const cJSON *schema = js ? cJSON_GetObjectItemCaseSensitive(js, "schema") : NULL;
    const cJSON *strict = js ? cJSON_GetObjectItemCaseSensitive(js, "strict") : NULL;
    char err[300];
    if (!cJSON_IsObject(js))
        return dec_api_fail(e, 400, "response_format", "invalid_type",
                            "response_format json_schema needs a 'json_schema' object");
    if (!cJSON_IsString(name) || !*name->valuestring || strlen(name->valuestring) > 64 ||
        strspn(name->valuestring, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789_-") != strlen(name->valuestring))
        return dec_api_fail(e, 400, "response_format", "invalid_value",
                            "json_schema's 'name' must be 1 to 64 letters, digits, '_' or '-'");
    if (strict && !cJSON_IsBool(strict) && !cJSON_IsNull(strict))
        return dec_api_fail(e, 400, "response_format", "invalid_type",
                            "json_schema's 'strict' must be a boolean");
    if (!cJSON_IsObject(schema))
        return dec_api_fail(e, 400, "response_format", "invalid_type",
                            "json_schema's 'schema' must be an object");
    int rc = pd_schema_compile(schema, &r->schema, err, sizeof(err));
    if (rc == -ENOMEM)
        return dec_api_fail(e, 503, "response_format", "server_error",
                            "out of memory for the schema");
    if (rc < 0)
        return dec_api_fail(e, 400, "response_format", "invalid_value", "response_format %s", err);
    return 0;
}

/* Fields we know and refuse rather than silently ignore: ignoring them would
 * change what the client gets. */
static int refuse_unsupported(const cJSON *root, struct dec_api_req *r, struct dec_api_err *e)
{
    int64_t i = 1;
    const cJSON *v;
    int rc;
    int64_t n = 1;
    if ((rc = get_int(root, "n", INT32_MIN, INT32_MAX, &n, e)) < 0)
        return rc;
    if (n < 1 || n > DEC_API_MAX_N)
        return dec_api_fail(e, 400, "n", "invalid_value", "n must be 1..%d, got %lld",
                            DEC_API_MAX_N, (long long)n);
    r->n = (uint32_t)n;
    if ((rc = get_int(root, "best_of", INT32_MIN, INT32_MAX, &i, e)) < 0)
        return rc;
    if (rc && i != n) /* more candidates than choices, the best kept: not built */
        return dec_api_fail(
            e, 400, "best_of", "invalid_value",
            "best_of must equal n (%lld): choosing the best of more is not supported",
            (long long)n);
    if ((rc = get_bool(root, "echo", &r->echo, e)) < 0)
        return rc;
    if (r->echo && r->kind == DEC_API_CHAT)
        return dec_api_fail(e, 400, "echo", "invalid_value",
                            "echo is for /v1/completions; chat completions do not echo");
    if ((v = dec_api_field(root, "suffix")) && !(cJSON_IsString(v) && !v->valuestring[0]))
        return dec_api_fail(e, 400, "suffix", "invalid_value", "suffix is not supported");
    if ((v = dec_api_field(root, "functions")) && !(cJSON_IsArray(v) && !v->child))
        return dec_api_fail(e, 400, "functions", "invalid_value",
                            "functions are not supported (use tools)");
    if ((v = dec_api_field(root, "function_call")) &&
        !(cJSON_IsString(v) &&
          (!strcmp(v->valuestring, "none") || !strcmp(v->valuestring, "auto"))))
        return dec_api_fail(e, 400, "function_call", "invalid_value",
                            "'function_call' is not supported (use tool_choice)");
    if (r->kind == DEC_API_COMPLETIONS && (v = dec_api_field(root, "tools")) &&
        !(cJSON_IsArray(v) && !v->child))
        return dec_api_fail(e, 400, "tools", "invalid_value", "tools are for /v1/chat/completions");
    if (r->kind == DEC_API_COMPLETIONS && (v = dec_api_field(root, "tool_choice")) &&
        !(cJSON_IsString(v) &&
          (!strcmp(v->valuestring, "none") || !strcmp(v->valuestring, "auto"))))
        return dec_api_fail(e, 400, "tool_choice", "invalid_value",
                            "tool_choice is for /v1/chat/completions");
    if (dec_api_field(root, "audio"))
        return dec_api_fail(e, 400, "audio", "invalid_value", "audio output is not supported");
    if ((v = dec_api_field(root, "response_format"))) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
        if (!cJSON_IsObject(v) || !cJSON_IsString(t))
            return dec_api_fail(e, 400, "response_format", "invalid_type",
                                "'response_format' must be an object with a string 'type'");
        if (!strcmp(t->valuestring, "json_object"))
            r->schema = pd_schema_json_object();
        else if (!strcmp(t->valuestring, "json_schema"))
            return parse_json_schema(v, r, e);
        else if (strcmp(t->valuestring, "text") != 0)
            return dec_api_fail(e, 400, "response_format", "invalid_value",
                                "response_format type \"%.40s\" is not supported (\"text\", "
                                "\"json_object\" and \"json_schema\" are)",
                                t->valuestring);
    }
    return 0;
}

static int parse_sampling(const cJSON *root, struct dec_api_req *r, struct dec_api_err *e)
{
    struct pd_sampling *sp = &r->sampling;
    double d;
    int64_t i;
    int rc;
    *sp = PD_SAMPLING_DEFAULT;
    /* OpenAI's default temperature is 1 (sampling), as is vLLM's */
    sp->temperature = 1.0f;
    if ((rc = get_num(root, "temperature", 0, 100, &d, e)) < 0)
        return rc;
    if (rc)
        sp->temperature = (float)d;
    if ((rc = get_num(root, "top_p", 0, 1, &d, e)) < 0)
        return rc;
    if (rc) {
        if (d <= 0)
            return dec_api_fail(e, 400, "top_p", "invalid_value", "'top_p' must be in (0, 1]");
        sp->top_p = (float)d;
    }
    if ((rc = get_int(root, "top_k", -1, INT32_MAX, &i, e)) < 0)
        return rc;
    if (rc)
        sp->top_k = i < 0 ? 0 : (int32_t)i; /* vLLM: -1 (or 0) is off */
    if ((rc = get_num(root, "min_p", 0, 1, &d, e)) < 0)
        return rc;
    if (rc)
        sp->min_p = (float)d;
    if ((rc = get_num(root, "presence_penalty", -2, 2, &d, e)) < 0)
        return rc;
    if (rc)
        sp->presence_penalty = (float)d;
    if ((rc = get_num(root, "frequency_penalty", -2, 2, &d, e)) < 0)
        return rc;
    if (rc)
        sp->frequency_penalty = (float)d;
    if ((rc = get_num(root, "repetition_penalty", 0, 10, &d, e)) < 0)
        return rc;
    if (rc) {
        if (d <= 0)
            return dec_api_fail(e, 400, "repetition_penalty", "invalid_value",
                                "'repetition_penalty' must be in (0, 10]");
        sp->repetition_penalty = (float)d;
    }
    /* read from its text, exactly (a double holds integers only to 2^53): any
     * integer in [-2^63, 2^64 - 1], a negative one as its two's complement */
    const cJSON *sv = dec_api_field(root, "seed");
    if (sv) {
        uint64_t seed;
        if (!cJSON_IsNumber(sv) || !r->seed_text ||
            dec_jstrict_u64(r->seed_text, r->seed_len, &seed) < 0)
            return dec_api_fail(e, 400, "seed", "invalid_value",
                                "'seed' must be an integer in [-2^63, 2^64 - 1], written without a "
                                "fraction or an exponent");
        sp->seed = seed;
        r->has_seed = true;
    }
    return 0;
}

/* logit_bias: {"token id": bias, ...}, ids as decimal strings (OpenAI's),
 * at most PD_MAX_LOGIT_BIAS of them, each bias a number in [-100, 100].
 * Whether an id is in the vocabulary is the caller's to check (it knows
 * the model). Entries keep the body's order: the sampler adds them in it. */
static int parse_logit_bias(const cJSON *root, struct dec_api_req *r, struct dec_api_err *e)
{
    const cJSON *v = dec_api_field(root, "logit_bias"), *b;
    if (!v)
        return 0;
    if (!cJSON_IsObject(v))
        return dec_api_fail(e, 400, "logit_bias", "invalid_type",
                            "'logit_bias' must be an object of token ids to biases");
    int n = cJSON_GetArraySize(v);
    if (n > PD_MAX_LOGIT_BIAS)
        return dec_api_fail(e, 400, "logit_bias", "invalid_value",
                            "'logit_bias' has %d entries; at most %d", n, PD_MAX_LOGIT_BIAS);
    if (n == 0)
        return 0;
    if (!(r->bias = calloc((size_t)n, sizeof(*r->bias))))
        return dec_api_fail(e, 503, NULL, NULL, "out of memory");
    cJSON_ArrayForEach(b, v)
    {
        const char *k = b->string;
        char *end = NULL;
        errno = 0;
        long id = (k[0] >= '0' && k[0] <= '9') ? strtol(k, &end, 10) : -1;
        if (id < 0 || errno || *end || id > INT32_MAX || (k[0] == '0' && k[1]))
            return dec_api_fail(e, 400, "logit_bias", "invalid_value",
                                "'logit_bias' keys must be token ids written as decimal integers, "
                                "got \"%.40s\"",
                                k);
        if (!cJSON_IsNumber(b) || !(b->valuedouble >= -PD_MAX_BIAS &&
                                    b->valuedouble <= PD_MAX_BIAS))
            return dec_api_fail(e, 400, "logit_bias", "invalid_value",
                                "'logit_bias' of token %ld must be a number in [-100, 100]", id);
        r->bias[r->sampling.n_bias++] = (struct pd_logit_bias){
            .token = (int32_t)id, .bias = (float)b->valuedouble};
    }
    r->sampling.bias = r->bias;
    return 0;
}

static int parse_logprobs(const cJSON *root, struct dec_api_req *r, struct dec_api_err *e)
{
    int64_t n = 0;
    int rc;
    if (r->kind == DEC_API_COMPLETIONS) {
        /* legacy: logprobs is the number of alternatives */
        if ((rc = get_int(root, "logprobs", 0, PD_MAX_LOGPROBS, &n, e)) < 0)
            return rc;
        r->logprobs = rc > 0;
    } else {
        if ((rc = get_bool(root, "logprobs", &r->logprobs, e)) < 0)
            return rc;
        if ((rc = get_int(root, "top_logprobs", 0, PD_MAX_LOGPROBS, &n, e)) < 0)
            return rc;
        if (rc && n > 0 && !r->logprobs)
            return dec_api_fail(e, 400, "top_logprobs", "invalid_value",
                                "'top_logprobs' needs 'logprobs': true");
    }
    r->sampling.n_logprobs = (uint32_t)n;
    return 0;
}

/* A request body as a JSON object, checked for everything before its fields:
 * UTF-8, depth, syntax, nothing after the value, and what cJSON cannot say
 * (jstrict: duplicate keys, NUL, the seed's text). The root (caller deletes),
 * or NULL with *e filled and *rc the error. */
static cJSON *parse_object(const char *body, size_t len, const struct dec_api_limits *lim,
                           struct dec_jstrict *js, struct dec_api_err *e, int *rc)
{
    if (len == 0) {
        *rc = dec_api_fail(e, 400, NULL, "invalid_json",
                           "the request body is empty; send a JSON object");
        return NULL;
    }
    if (pd_utf8_valid_prefix((const uint8_t *)body, len) != len) {
        *rc = dec_api_fail(e, 400, NULL, "invalid_utf8", "the request body is not valid UTF-8");
        return NULL;
    }
    if (dec_api_json_depth(body, len, lim->json_depth) > lim->json_depth) {
        *rc = dec_api_fail(e, 400, NULL, "invalid_json", "JSON nested deeper than %d levels",
                           lim->json_depth);
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        *rc = dec_api_fail(e, 400, NULL, "invalid_json",
                           "the request body is not valid JSON (near byte %zu)", at);
        return NULL;
    }
    for (const char *p = end; p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            *rc = dec_api_fail(e, 400, NULL, "invalid_json", "trailing bytes after the JSON value");
            goto bad;
        }
    if (!cJSON_IsObject(root)) {
        *rc = dec_api_fail(e, 400, NULL, "invalid_json", "the request body must be a JSON object");
        goto bad;
    }
    const char *jfield = NULL;
    char jmsg[sizeof e->msg];
    int jrc = dec_jstrict_scan(body, len, js, jmsg, sizeof jmsg, &jfield);
    if (jrc < 0) {
        *rc = jrc == -ENOMEM
            ? dec_api_fail(e, 503, NULL, NULL, "out of memory")
            : dec_api_fail(e, 400, jfield, jrc == -EILSEQ ? "invalid_value" : "invalid_json", "%s",
                           jmsg);
        goto bad;
    }
    return root;
bad:
    cJSON_Delete(root);
    return NULL;
}

/* vLLM's cache_salt: requests share cached prefix blocks only with requests
 * of the same salt (docs/security.md, the prefix cache's side channel) */
static int parse_cache_salt(const cJSON *root, struct dec_api_req *r, struct dec_api_err *e)
{
    int rc = get_str(root, "cache_salt", &r->cache_salt, e);
    if (rc <= 0)
        return rc;
    size_t n = strlen(r->cache_salt);
    if (n == 0 || n > PD_PREFIX_MAX_SALT)
        return dec_api_fail(e, 400, "cache_salt", "invalid_value",
                            "'cache_salt' must be a string of 1 to %d bytes", PD_PREFIX_MAX_SALT);
    return 0;
}

int dec_api_parse(enum dec_api_kind kind, const char *body, size_t len,
                  const struct dec_api_limits *lim, struct dec_api_req *r, struct dec_api_err *e)
{
    int rc;
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->max_tokens = -1;
    struct dec_jstrict js;
    if (!(r->root = parse_object(body, len, lim, &js, e, &rc)))
        return rc;
    r->seed_text = js.seed_text;
    r->seed_len = js.seed_len;
    const cJSON *root = r->root;
    int64_t mt = -1;
    const cJSON *so;
    if ((rc = get_str(root, "model", &r->model, e)) < 0 ||
        (rc = refuse_unsupported(root, r, e)) < 0 ||
        (rc = parse_sampling(root, r, e)) < 0 || (rc = parse_logit_bias(root, r, e)) < 0 ||
        (rc = parse_logprobs(root, r, e)) < 0 ||
        (rc = parse_stop(root, lim, r, e)) < 0 ||
        (rc = get_bool(root, "stream", &r->stream, e)) < 0 ||
        (rc = get_bool(root, "ignore_eos", &r->ignore_eos, e)) < 0 ||
        (rc = parse_cache_salt(root, r, e)) < 0)
        goto bad;
    if ((so = dec_api_field(root, "stream_options"))) {
        if (!cJSON_IsObject(so)) {
            rc = dec_api_fail(e, 400, "stream_options", "invalid_type",
                              "'stream_options' must be an object");
            goto bad;
        }
        if ((rc = get_bool(so, "include_usage", &r->include_usage, e)) < 0)
            goto bad;
        r->include_usage = r->include_usage && r->stream;
    }
    /* chat's newer name wins over the older one */
    if (kind == DEC_API_CHAT &&
        (rc = get_int(root, "max_completion_tokens", INT32_MIN, INT32_MAX, &mt, e)) < 0)
        goto bad;
    if (mt == -1 && (rc = get_int(root, "max_tokens", INT32_MIN, INT32_MAX, &mt, e)) < 0)
        goto bad;
    if (dec_api_field(root, "max_tokens") || dec_api_field(root, "max_completion_tokens")) {
        /* 0 with echo: the prompt scored, nothing generated (lm-eval-harness's call) */
        if (mt < 1 && !(mt == 0 && r->echo)) {
            rc = dec_api_fail(e, 400,
                              kind == DEC_API_CHAT && dec_api_field(root, "max_completion_tokens")
                                  ? "max_completion_tokens"
                                  : "max_tokens",
                              "invalid_value",
                              "max_tokens must be at least 1 (0 only with echo), got %lld",
                              (long long)mt);
            goto bad;
        }
        r->max_tokens = mt;
    } else if (kind == DEC_API_COMPLETIONS) {
        r->max_tokens = DEC_API_COMPLETIONS_MAX_TOKENS; /* OpenAI's and vLLM's default there */
    }
    rc = kind == DEC_API_COMPLETIONS ? parse_prompt(root, lim, r, e)
                                     : dec_api_parse_messages(root, r, e);
    if (rc < 0 ||
        (kind == DEC_API_CHAT &&
         (rc = dec_api_parse_tools(root, js.tools_text, js.tools_len, r, e)) < 0))
        goto bad;
    if ((r->n_prompts ? r->n_prompts : 1) * r->n > DEC_API_MAX_PROMPTS) {
        rc = dec_api_fail(e, 400, "n", "invalid_value",
                          "%u prompts x n=%u choices; this server makes at most %d in one request",
                          r->n_prompts, r->n, DEC_API_MAX_PROMPTS);
        goto bad;
    }
    return 0;
bad:
    dec_api_req_done(r);
    return rc < 0 ? rc : -EINVAL;
}

int dec_api_token_list(const char *body, size_t len, const struct dec_api_limits *lim,
                       uint32_t n_vocab, uint32_t max, int32_t **ids, size_t *n,
                       struct dec_api_err *e)
{
    struct dec_jstrict js;
    int rc;
    cJSON *root = parse_object(body, len, lim, &js, e, &rc);
    if (!root)
        return rc;
    const cJSON *t = dec_api_field(root, "tokens");
    int count = cJSON_IsArray(t) ? cJSON_GetArraySize(t) : -1;
    if (count < 0 || (uint32_t)count > max) {
        cJSON_Delete(root);
        return dec_api_fail(e, 400, "tokens", "invalid_value",
                            "'tokens' must be an array of at most %u token ids", max);
    }
    int32_t *out = malloc((size_t)(count ? count : 1) * sizeof(*out));
    if (!out) {
        cJSON_Delete(root);
        return dec_api_fail(e, 503, NULL, NULL, "out of memory");
    }
    size_t k = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, t)
    {
        double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
        if (d != floor(d) || d < 0 || d >= (double)n_vocab) {
            free(out);
            cJSON_Delete(root);
            return dec_api_fail(e, 400, "tokens", "invalid_value",
                                "token %zu is not an id in [0, %u)", k, n_vocab);
        }
        out[k++] = (int32_t)d;
    }
    cJSON_Delete(root);
    *ids = out;
    *n = k;
    return 0;
}

void dec_api_req_done(struct dec_api_req *r)
{
    for (size_t i = 0; i < r->n_msgs; i++)
        free((void *)r->msgs[i].content);
    free(r->msgs);
    free(r->calls);
    free(r->tools);
    if (r->stops)
        for (uint32_t i = 0; i < r->n_stops; i++)
            free(r->stops[i]);
    free(r->stops);
    for (uint32_t i = 0; i < r->n_prompts; i++)
        free(r->prompts[i].ids);
    free(r->prompts);
    free(r->bias);
    pd_schema_unref(r->schema);
    cJSON_Delete(r->root);
    memset(r, 0, sizeof(*r));
}

/* ---- responses ---- */

/* A token's text for logprobs: its bytes when they are valid UTF-8 on their
 * own (and hold no NUL), else "bytes:\\xNN..." as OpenAI spells them */
static void token_text(const struct pd_tokenizer *tok, int32_t id, char *buf, size_t cap,
                       const uint8_t **bytes, size_t *n_bytes)
{
    size_t n = 0;
    const uint8_t *p = tok ? pd_tok_piece(tok, id, &n) : NULL;
    if (!p) {
        snprintf(buf, cap, "[%d]", id);
        *bytes = (const uint8_t *)buf;
        *n_bytes = strlen(buf);
        return;
    }
    if (pd_utf8_valid_prefix(p, n) != n || memchr(p, 0, n)) {
        /* a cut UTF-8 character: spelled by its bytes, as OpenAI does
         * ("bytes:\\xe6\\x9d"), so that alternatives made of different
         * bytes do not all read U+FFFD and collide as keys of top_logprobs */
        size_t k = (size_t)snprintf(buf, cap, "bytes:");
        for (size_t i = 0; i < n && k + 4 < cap; i++)
            k += (size_t)snprintf(buf + k, cap - k, "\\x%02x", p[i]);
    } else if (n < cap) {
        memcpy(buf, p, n);
        buf[n] = '\0';
    } else {
        snprintf(buf, cap, "[%d]", id);
    }
    *bytes = p;
    *n_bytes = n;
}

static cJSON *bytes_array(const uint8_t *b, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(b[i]));
    return a;
}

cJSON *dec_api_lp_new(enum dec_api_kind kind)
{
    cJSON *lp = cJSON_CreateObject();
    if (!lp)
        return NULL;
    if (kind == DEC_API_CHAT) {
        if (!cJSON_AddArrayToObject(lp, "content"))
            goto fail;
    } else if (!cJSON_AddArrayToObject(lp, "tokens") ||
               !cJSON_AddArrayToObject(lp, "token_logprobs") ||
               !cJSON_AddArrayToObject(lp, "top_logprobs") ||
               !cJSON_AddArrayToObject(lp, "text_offset")) {
        goto fail;
    }
    return lp;
fail:
    cJSON_Delete(lp);
    return NULL;
}

/* cJSON prints non-finite numbers as null; keep -inf finite as clients expect */
static double lpv(float v) { return isfinite(v) ? (double)v : -9999.0; }

int dec_api_lp_add(cJSON *lp, enum dec_api_kind kind, const struct pd_tokenizer *tok,
                   const struct pd_sample_result *r, uint32_t n_top, size_t text_offset)
{
    char text[4 * PD_TOK_MAX_PIECE + 16];
    const uint8_t *bytes;
    size_t n_bytes;
    if (n_top > r->n_top)
        n_top = r->n_top;
    token_text(tok, r->token, text, sizeof(text), &bytes, &n_bytes);
    if (kind == DEC_API_COMPLETIONS) {
        cJSON *top = cJSON_CreateObject();
        if (!top)
            return -ENOMEM;
        for (uint32_t k = 0; k < n_top; k++) {
            char t[4 * PD_TOK_MAX_PIECE + 16];
            const uint8_t *b;
            size_t nb;
            token_text(tok, r->top[k].token, t, sizeof(t), &b, &nb);
            if (!cJSON_GetObjectItemCaseSensitive(top, t))
                cJSON_AddNumberToObject(top, t, lpv(r->top[k].logprob));
        }
        cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "tokens"), cJSON_CreateString(text));
        cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "token_logprobs"),
                             cJSON_CreateNumber(lpv(r->logprob)));
        cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "top_logprobs"), top);
        cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "text_offset"),
                             cJSON_CreateNumber((double)text_offset));
        return 0;
    }
    cJSON *item = cJSON_CreateObject();
    cJSON *tops = cJSON_CreateArray();
    if (!item || !tops) {
        cJSON_Delete(item);
        cJSON_Delete(tops);
        return -ENOMEM;
    }
    cJSON_AddStringToObject(item, "token", text);
    cJSON_AddNumberToObject(item, "logprob", lpv(r->logprob));
    cJSON_AddItemToObject(item, "bytes", bytes_array(bytes, n_bytes));
    for (uint32_t k = 0; k < n_top; k++) {
        char t[4 * PD_TOK_MAX_PIECE + 16];
        const uint8_t *b;
        size_t nb;
        token_text(tok, r->top[k].token, t, sizeof(t), &b, &nb);
        cJSON *o = cJSON_CreateObject();
        if (!o)
            break;
        cJSON_AddStringToObject(o, "token", t);
        cJSON_AddNumberToObject(o, "logprob", lpv(r->top[k].logprob));
        cJSON_AddItemToObject(o, "bytes", bytes_array(b, nb));
        cJSON_AddItemToArray(tops, o);
    }
    cJSON_AddItemToObject(item, "top_logprobs", tops);
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "content"), item);
    return 0;
}

int dec_api_lp_add_first(cJSON *lp, const struct pd_tokenizer *tok, int32_t token,
                         size_t text_offset)
{
    char text[4 * PD_TOK_MAX_PIECE + 16];
    const uint8_t *bytes;
    size_t n_bytes;
    token_text(tok, token, text, sizeof(text), &bytes, &n_bytes);
    cJSON *a[4] = {cJSON_CreateString(text), cJSON_CreateNull(), cJSON_CreateNull(),
                   cJSON_CreateNumber((double)text_offset)};
    static const char *const keys[4] = {"tokens", "token_logprobs", "top_logprobs",
                                        "text_offset"};
    int rc = 0;
    for (int i = 0; i < 4; i++) {
        if (!a[i]) {
            rc = -ENOMEM;
            continue;
        }
        cJSON_AddItemToArray(cJSON_GetObjectItem(lp, keys[i]), a[i]);
    }
    return rc;
}

size_t dec_api_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((uint8_t)s[i] & 0xC0) != 0x80;
    return c;
}

size_t dec_api_token_chars(const struct pd_tokenizer *tok, int32_t token)
{
    char text[4 * PD_TOK_MAX_PIECE + 16];
    const uint8_t *bytes;
    size_t n_bytes;
    token_text(tok, token, text, sizeof(text), &bytes, &n_bytes);
    return dec_api_chars((const char *)bytes, n_bytes);
}

static cJSON *envelope(const struct dec_api_out *o, bool chunk)
{
    static const char *const objects[2][2] = {{"text_completion", "text_completion"},
                                              {"chat.completion", "chat.completion.chunk"}};
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    cJSON_AddStringToObject(root, "id", o->id);
    cJSON_AddStringToObject(root, "object", objects[o->kind == DEC_API_CHAT][chunk]);
    cJSON_AddNumberToObject(root, "created", (double)o->created);
    cJSON_AddStringToObject(root, "model", o->model);
    return root;
}

static cJSON *usage(uint32_t n_prompt, uint32_t n_gen)
{
    cJSON *u = cJSON_CreateObject();
    if (u) {
        cJSON_AddNumberToObject(u, "prompt_tokens", n_prompt);
        cJSON_AddNumberToObject(u, "completion_tokens", n_gen);
        cJSON_AddNumberToObject(u, "total_tokens", (double)n_prompt + n_gen);
    }
    return u;
}

/* A string of exactly len bytes (the text may hold a NUL the model made). */
static cJSON *string_n(const char *s, size_t len)
{
    char *c = strndup(s, len);
    cJSON *j = c ? cJSON_CreateString(c) : NULL;
    free(c);
    return j;
}

static char *print_free(cJSON *root)
{
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

static cJSON *choice(const struct dec_api_out *o, uint32_t index, const char *text, size_t len,
                     bool first, bool chunk, cJSON *lp, cJSON *calls, const char *finish)
{
    cJSON *c = cJSON_CreateObject();
    if (!c) {
        cJSON_Delete(lp);
        cJSON_Delete(calls);
        return NULL;
    }
    cJSON_AddNumberToObject(c, "index", index);
    if (o->kind == DEC_API_COMPLETIONS) {
        cJSON_AddItemToObject(c, "text", string_n(text, len));
    } else {
        cJSON *m = cJSON_AddObjectToObject(c, chunk ? "delta" : "message");
        if (m && (first || !chunk))
            cJSON_AddStringToObject(m, "role", "assistant");
        if (m && (len || !chunk || first))
            cJSON_AddItemToObject(m, "content",
                                  len || !calls ? string_n(text, len) : cJSON_CreateNull());
        if (m && calls) /* chat only */
            cJSON_AddItemToObject(m, "tool_calls", calls);
        else
            cJSON_Delete(calls);
        calls = NULL;
    }
    cJSON_Delete(calls);
    if (lp)
        cJSON_AddItemToObject(c, "logprobs", lp);
    else
        cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    return c;
}

char *dec_api_response(const struct dec_api_out *o, struct dec_api_choice *ch, uint32_t n,
                       uint32_t n_prompt, uint32_t n_gen)
{
    cJSON *root = envelope(o, false);
    cJSON *choices = root ? cJSON_AddArrayToObject(root, "choices") : NULL;
    for (uint32_t i = 0; i < n; i++) {
        cJSON *c = choices
            ? choice(o, i, ch[i].text, ch[i].len, true, false, ch[i].lp, ch[i].calls, ch[i].finish)
            : (cJSON_Delete(ch[i].lp), cJSON_Delete(ch[i].calls), NULL);
        ch[i].lp = NULL;
        ch[i].calls = NULL;
        if (!c || !cJSON_AddItemToArray(choices, c)) {
            cJSON_Delete(c);
            choices = NULL; /* out of memory: the rest are only freed */
        }
    }
    if (!choices) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddItemToObject(root, "usage", usage(n_prompt, n_gen));
    return print_free(root);
}

char *dec_api_chunk(const struct dec_api_out *o, uint32_t index, const char *text, size_t len,
                    bool first, cJSON *lp, cJSON *calls, const char *finish, bool usage_null)
{
    cJSON *root = envelope(o, true);
    cJSON *choices = root ? cJSON_AddArrayToObject(root, "choices") : NULL;
    if (!choices) {
        cJSON_Delete(lp);
        cJSON_Delete(calls);
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddItemToArray(choices, choice(o, index, text, len, first, true, lp, calls, finish));
    if (usage_null)
        cJSON_AddNullToObject(root, "usage");
    return print_free(root);
}

char *dec_api_usage_chunk(const struct dec_api_out *o, uint32_t n_prompt, uint32_t n_gen)
{
    cJSON *root = envelope(o, true);
    if (!root || !cJSON_AddArrayToObject(root, "choices")) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddItemToObject(root, "usage", usage(n_prompt, n_gen));
    return print_free(root);
}
