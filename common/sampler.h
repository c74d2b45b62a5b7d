/* common/sampler: next-token selection and log-probabilities.
 *
 *   struct pd_sampler *s = pd_sampler_new(n_vocab);      // scratch; one per thread
 *   struct pd_sampling p = PD_SAMPLING_DEFAULT;          // greedy unless temperature > 0
 *   p.temperature = 0.7f; p.top_p = 0.9f; p.seed = 42; p.n_logprobs = 5;
 *   struct pd_sample_result r;
 *   pd_sample(s, &p, logits, prompt, n_prompt, out, n_out, &r);   // r.token, r.logprob, r.top[]
 *   s = pd_sampler_free(s);
 *
 * Order (as vLLM): repetition penalty over prompt and output tokens (a positive
 * logit divided by it, a negative one multiplied), presence and frequency
 * penalties over output tokens (OpenAI's: logit -= frequency * count +
 * presence * [count > 0]); then greedy (temperature 0: the highest logit, ties
 * to the lower id) or: divide by the temperature, softmax, keep the top_k
 * most probable, keep the smallest prefix of those whose probability reaches
 * top_p, drop tokens below min_p * the largest probability, and draw with
 * the uniform number pd_rng_uniform(seed, n_prompt + n_out) (kernels/philox.h)
 * walking the kept tokens in descending probability (ties: lower id first).
 * The draw is a pure function of the inputs: the same tokens whatever the
 * batch, device or mode.
 *
 * Log-probabilities are the model's own: log-softmax of the raw logits,
 * before penalties and temperature (what OpenAI-style clients compare across
 * requests); the chosen token's and the n_logprobs most probable.
 */
#ifndef PD_SAMPLER_H
#define PD_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PD_MAX_LOGPROBS 20

struct pd_sampling {
    float temperature; /* 0 = greedy; (0, 100] */
    int32_t top_k; /* 0 = off; else 1..n_vocab */
    float top_p; /* (0, 1]; 1 = off */
    float min_p; /* [0, 1]; 0 = off */
    float repetition_penalty; /* (0, 10]; 1 = off */
    float presence_penalty; /* [-2, 2] */
    float frequency_penalty; /* [-2, 2] */
    uint64_t seed;
    uint32_t n_logprobs; /* top alternatives reported, 0..PD_MAX_LOGPROBS */
};

#define PD_SAMPLING_DEFAULT                                                                    \
    ((struct pd_sampling){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,       \
                          .repetition_penalty = 1.0f})

struct pd_token_logprob {
    int32_t token;
    float logprob;
};

struct pd_sample_result {
    int32_t token;
    float logprob; /* of token, from the raw distribution */
    uint32_t n_top;
    struct pd_token_logprob top[PD_MAX_LOGPROBS]; /* most probable first */
};

struct pd_sampler;

struct pd_sampler *pd_sampler_new(uint32_t n_vocab);
/* Accepts NULL; returns NULL. */
struct pd_sampler *pd_sampler_free(struct pd_sampler *s);

/* 0, or -EINVAL with the offending field and its range in err. */
int pd_sampling_validate(const struct pd_sampling *p, uint32_t n_vocab, char *err, size_t errlen);

/* logits: (n_vocab) raw. prompt/output: the sequence so far (penalties and the
 * draw's position). Returns 0 or -EINVAL (invalid params: validate first). */
int pd_sample(struct pd_sampler *s, const struct pd_sampling *p, const float *logits,
              const int32_t *prompt, uint32_t n_prompt, const int32_t *output, uint32_t n_output,
              struct pd_sample_result *r);

#endif
