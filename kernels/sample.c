#include "sample.h"

#include "errf.h"
#include "philox.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One allocation: the struct, then its four arrays (4-byte elements, so
 * each starts aligned), freed with one free. */
struct pd_sampler {
    uint32_t n_vocab;
    float *w; /* (n_vocab) processed logits */
    float *prob; /* (n_vocab) unnormalised probabilities, in sorted order */
    int32_t *idx; /* (n_vocab) token ids, sorted by w descending */
    uint32_t *count; /* (n_vocab) zero between calls */
};

struct pd_sampler *pd_sampler_new(uint32_t n_vocab)
{
    const size_t per_token = sizeof(float) + sizeof(float) + sizeof(int32_t) + sizeof(uint32_t);
    if (n_vocab == 0)
        return NULL;
    struct pd_sampler *s = calloc(1, sizeof(*s) + per_token * n_vocab);
    if (!s)
        return NULL;
    s->n_vocab = n_vocab;
    s->w = (float *)(s + 1);
    s->prob = s->w + n_vocab;
    s->idx = (int32_t *)(s->prob + n_vocab);
    s->count = (uint32_t *)(s->idx + n_vocab);
    return s;
}

struct pd_sampler *pd_sampler_free(struct pd_sampler *s)
{
    free(s);
    return NULL;
}

/* every refusal names the field and its range */
int pd_sampling_validate(const struct pd_sampling *p, uint32_t n_vocab, char *err, size_t errlen)
{
    if (!(p->temperature >= 0.0f && p->temperature <= 100.0f))
        return pd_errf(err, errlen, -EINVAL, "temperature %g is out of range [0, 100]",
                       (double)p->temperature);
    if (p->top_k < 0 || (uint32_t)p->top_k > n_vocab)
        return pd_errf(err, errlen, -EINVAL, "top_k %d is out of range [0, %u] (0 = off)", p->top_k,
                       n_vocab);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return pd_errf(err, errlen, -EINVAL, "top_p %g is out of range (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return pd_errf(err, errlen, -EINVAL, "min_p %g is out of range [0, 1]", (double)p->min_p);
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= 10.0f))
        return pd_errf(err, errlen, -EINVAL, "repetition_penalty %g is out of range (0, 10]",
                       (double)p->repetition_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return pd_errf(err, errlen, -EINVAL, "presence_penalty %g is out of range [-2, 2]",
                       (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return pd_errf(err, errlen, -EINVAL, "frequency_penalty %g is out of range [-2, 2]",
                       (double)p->frequency_penalty);
    if (p->n_logprobs > PD_MAX_LOGPROBS)
        return pd_errf(err, errlen, -EINVAL, "logprobs %u is out of range [0, %d]", p->n_logprobs,
                       PD_MAX_LOGPROBS);
    if (p->n_bias > PD_MAX_LOGIT_BIAS || (p->n_bias && !p->bias))
        return pd_errf(err, errlen, -EINVAL, "logit_bias has %u entries (at most %d)", p->n_bias,
                       PD_MAX_LOGIT_BIAS);
    if (p->mask && !pd_mask_any(p->mask, n_vocab))
        return pd_errf(err, errlen, -EINVAL, "the token mask allows no token");
    for (uint32_t i = 0; i < p->n_bias; i++) {
        if (p->bias[i].token < 0 || (uint32_t)p->bias[i].token >= n_vocab)
            return pd_errf(err, errlen, -EINVAL, "logit_bias token %d is not an id in [0, %u)",
                           p->bias[i].token, n_vocab);
        if (!(p->bias[i].bias >= -PD_MAX_BIAS && p->bias[i].bias <= PD_MAX_BIAS))
            return pd_errf(err, errlen, -EINVAL, "logit_bias of token %d: %g is out of range "
                           "[-100, 100]", p->bias[i].token, (double)p->bias[i].bias);
    }
    return 0;
}

/* qsort has no context argument: the key of the sort in progress is
 * thread-local, so samplers on different threads never see each other's */
static _Thread_local const float *sort_key;

/* descending value, then ascending id: a total order, so every sort agrees */
static int by_value_desc(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (sort_key[x] != sort_key[y])
        return sort_key[x] > sort_key[y] ? -1 : 1;
    return (x > y) - (x < y);
}

static void sort_ids(int32_t *idx, uint32_t n, const float *key)
{
    sort_key = key;
    qsort(idx, n, sizeof(*idx), by_value_desc);
}

static void apply_penalties(struct pd_sampler *s, const struct pd_sampling *p,
                            const int32_t *prompt, uint32_t n_prompt, const int32_t *out,
                            uint32_t n_out)
{
    const uint32_t V = s->n_vocab;
    float *w = s->w;

    if (p->repetition_penalty != 1.0f) {
        /* once per distinct token seen anywhere in the sequence */
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *t = pass ? out : prompt;
            uint32_t n = pass ? n_out : n_prompt;
            for (uint32_t i = 0; i < n; i++) {
                uint32_t id = (uint32_t)t[i];
                if (id >= V || s->count[id])
                    continue;
                s->count[id] = 1;
                w[id] = w[id] > 0 ? w[id] / p->repetition_penalty : w[id] * p->repetition_penalty;
            }
        }
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *t = pass ? out : prompt;
            uint32_t n = pass ? n_out : n_prompt;
            for (uint32_t i = 0; i < n; i++)
                if ((uint32_t)t[i] < V)
                    s->count[t[i]] = 0;
        }
    }
    if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) {
        for (uint32_t i = 0; i < n_out; i++)
            if ((uint32_t)out[i] < V)
                s->count[out[i]]++;
        for (uint32_t i = 0; i < n_out; i++) {
            uint32_t id = (uint32_t)out[i];
            if (id >= V || s->count[id] == 0)
                continue;
            w[id] -= p->frequency_penalty * (float)s->count[id] + p->presence_penalty;
            s->count[id] = 0; /* applied once per distinct token, and reset */
        }
    }
}

static void raw_logprobs(uint32_t V, uint32_t n_logprobs, const float *logits,
                         struct pd_sample_result *r)
{
    float mx = -INFINITY;
    double sum = 0.0;
    for (uint32_t i = 0; i < V; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    for (uint32_t i = 0; i < V; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    r->logprob = (float)(logits[r->token] - lse);
    r->n_top = 0;
    if (n_logprobs == 0)
        return;
    /* the n most probable, most probable first, the lower id on a tie: one
     * pass keeping them sorted (an id is compared with the n-th best and
     * almost always stops there), not n passes: echo scores every prompt
     * position this way */
    uint32_t n = 0;
    const uint32_t want = n_logprobs < V ? n_logprobs : V;
    for (uint32_t i = 0; i < V; i++) {
        const float v = isnan(logits[i]) ? -INFINITY : logits[i];
        if (n == want && !(v > r->top[n - 1].logprob))
            continue; /* ids come in increasing order: an equal value loses the tie */
        uint32_t k = n < want ? n++ : n - 1;
        while (k > 0 && v > r->top[k - 1].logprob) {
            r->top[k] = r->top[k - 1];
            k--;
        }
        r->top[k] = (struct pd_token_logprob){(int32_t)i, v};
    }
    for (uint32_t k = 0; k < n; k++)
        r->top[k].logprob = (float)(r->top[k].logprob - lse);
    r->n_top = n;
}

int pd_sample_score(uint32_t n_vocab, const float *logits, int32_t token, uint32_t n_top,
                    struct pd_sample_result *r)
{
    if (token < 0 || (uint32_t)token >= n_vocab || n_top > PD_MAX_LOGPROBS)
        return -EINVAL;
    r->token = token;
    raw_logprobs(n_vocab, n_top, logits, r);
    return 0;
}

int pd_sample(struct pd_sampler *s, const struct pd_sampling *p, const float *logits,
              const int32_t *prompt, uint32_t n_prompt, const int32_t *output, uint32_t n_output,
              struct pd_sample_result *r)
{
    const uint32_t V = s->n_vocab;
    float *w = s->w;

    if (pd_sampling_validate(p, V, NULL, 0) < 0)
        return -EINVAL;
    for (uint32_t i = 0; i < V; i++)
        w[i] = isnan(logits[i]) || !pd_mask_allows(p->mask, i) ? -INFINITY : logits[i];
    for (uint32_t i = 0; i < p->n_bias; i++)
        w[p->bias[i].token] += p->bias[i].bias;
    apply_penalties(s, p, prompt, n_prompt, output, n_output);

    /* a masked token is never drawn, even where every allowed one is -inf
     * too (a model that gives NaN): then the lowest allowed id */
    uint32_t first = 0;
    while (!pd_mask_allows(p->mask, first))
        first++; /* validate: one is set below V */
    if (p->temperature == 0.0f) {
        uint32_t best = first;
        for (uint32_t i = first + 1; i < V; i++)
            if (w[i] > w[best] && pd_mask_allows(p->mask, i))
                best = i;
        r->token = (int32_t)best;
        raw_logprobs(V, p->n_logprobs, logits, r);
        return 0;
    }

    for (uint32_t i = 0; i < V; i++) {
        w[i] /= p->temperature;
        s->idx[i] = (int32_t)i;
    }
    sort_ids(s->idx, V, w);
    const float wmax = w[s->idx[0]];
    if (wmax == -INFINITY) { /* nothing has any probability: the lowest allowed id */
        r->token = (int32_t)first;
        raw_logprobs(V, p->n_logprobs, logits, r);
        return 0;
    }
    uint32_t n = p->top_k > 0 ? (uint32_t)p->top_k : V;
    double total = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        s->prob[i] = expf(w[s->idx[i]] - wmax);
        total += s->prob[i];
    }
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        uint32_t keep = 0;
        while (keep < n) {
            cum += s->prob[keep++];
            if (cum >= p->top_p * total)
                break;
        }
        n = keep;
    }
    if (p->min_p > 0.0f) {
        float floor_p = p->min_p * s->prob[0];
        uint32_t keep = 1;
        while (keep < n && s->prob[keep] >= floor_p)
            keep++;
        n = keep;
    }
    total = 0.0;
    for (uint32_t i = 0; i < n; i++)
        total += s->prob[i];
    double target = (double)pd_rng_uniform(p->seed, n_prompt + n_output, PD_RNG_SAMPLE) * total;
    double cum = 0.0;
    uint32_t pick = n - 1; /* rounding can leave target at the very end */
    for (uint32_t i = 0; i < n; i++) {
        cum += s->prob[i];
        if (target < cum) {
            pick = i;
            break;
        }
    }
    r->token = s->idx[pick];
    raw_logprobs(V, p->n_logprobs, logits, r);
    return 0;
}
