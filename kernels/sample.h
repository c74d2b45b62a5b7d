/* kernels/sample: next-token selection and log-probabilities. sample.c is
 * the CPU reference (below, first); sample.cu the same function on the GPU.
 *
 *   struct pd_sampler *s = pd_sampler_new(n_vocab);      // scratch; one per thread
 *   struct pd_sampling p = PD_SAMPLING_DEFAULT;          // greedy unless temperature > 0
 *   p.temperature = 0.7f; p.top_p = 0.9f; p.seed = 42; p.n_logprobs = 5;
 *   struct pd_sample_result r;
 *   pd_sample(s, &p, logits, prompt, n_prompt, out, n_out, &r);   // r.token, r.logprob, r.top[]
 *   s = pd_sampler_free(s);
 *
 * Order (as vLLM): the mask (constrained decoding, common/text/grammar: a
 * token whose bit is clear is never drawn), the logit bias (OpenAI's
 * logit_bias: bias[i].bias added to the logit of bias[i].token, in order),
 * repetition penalty over prompt and
 * output tokens (a positive
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
 * before bias, penalties and temperature (what OpenAI-style clients compare
 * across requests); the chosen token's and the n_logprobs most probable.
 *
 * Scoring (echo's prompt log-probabilities): pd_sample_score reports, for a
 * token given rather than drawn, the same numbers -- its raw log-probability
 * and the n_logprobs most probable -- with one pass for the log-sum-exp and
 * n_logprobs selection passes over one row: never more than a row at once.
 *
 * The GPU (sample.cu): the same function as pd_sample, for a batch of rows:
 * penalties, greedy or temperature / top_k / top_p / min_p and the draw with
 * pd_rng_uniform(seed, history length) from kernels/philox.h, and the raw
 * log-probabilities (the chosen token's and the n_logprobs most probable);
 * rows with a forced token are scored instead.
 *
 * The CPU sorts the vocabulary; the GPU never does. Every cut the CPU makes
 * is a prefix of the order (probability descending, lower id first on a
 * tie), so each is found by a radix descent over 64-bit keys (the float's
 * order bits, then the inverted id) weighing counts (top_k) or probability
 * mass (top_p, the draw). Masses are summed in 2^-46 fixed point, so the
 * sums, and the token, do not depend on the order threads add in: a pure
 * function of the inputs, like the CPU's. Against the CPU the token is the
 * same except where the draw falls within ~1e-9 of a boundary between two
 * tokens (double sums in another order, the device's expf).
 *
 *   uint64_t ws = pd_sample_cuda_workspace(n_rows, n_vocab);
 *   struct pd_sample_args a = {.logits = dlogits, .n_rows = n, .n_vocab = V, .params = dparams,
 *                              .hist = dhist, .hist_start = dstart, .n_prompt = dnp,
 *                              .workspace = dws, .workspace_bytes = ws,
 *                              .token = dtok, .logprob = dlp, .top = dtop, .n_top = dntop};
 *   pd_sample_cuda(&a, stream);
 *
 * Parameters must be valid (pd_sampling_validate on the host first); a row
 * with invalid ones gets token -1. All pointers are device memory.
 */
#ifndef PD_SAMPLE_H
#define PD_SAMPLE_H

#include "pd_kernel.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PD_MAX_LOGPROBS 20
#define PD_MAX_LOGIT_BIAS 300 /* entries of a logit bias (OpenAI's cap) */
#define PD_MAX_BIAS 100.0f /* |bias| */

struct pd_logit_bias {
    int32_t token; /* [0, n_vocab) */
    float bias; /* [-PD_MAX_BIAS, PD_MAX_BIAS] */
};

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
    uint32_t n_bias; /* entries of bias, 0..PD_MAX_LOGIT_BIAS */
    /* (n_bias) the caller's, host memory, alive while the parameters are
     * used (copies of the struct share it). The GPU never reads this
     * pointer: its rows' entries come in pd_sample_args.bias. */
    const struct pd_logit_bias *bias;
    /* (ceil(n_vocab / 32)) the tokens that may be drawn, bit t % 32 of word
     * t / 32; NULL: all. The caller's, host memory, as bias (the GPU's come
     * in pd_sample_args.mask). At least one bit must be set. */
    const uint32_t *mask;
};

#define PD_SAMPLING_DEFAULT                                                                        \
    ((struct pd_sampling){.temperature = 0.0f,                                                     \
                          .top_k = 0,                                                              \
                          .top_p = 1.0f,                                                           \
                          .min_p = 0.0f,                                                           \
                          .repetition_penalty = 1.0f})

/* Whether a token mask (pd_sampling.mask; NULL: none) lets token t be drawn:
 * bit t % 32 of word t / 32. The CPU's and the GPU's one test. */
PD_HD bool pd_mask_allows(const uint32_t *mask, uint32_t t)
{
    return !mask || (mask[t / 32] >> (t % 32) & 1u);
}

/* Whether a token mask lets any of tokens [0, n_vocab) be drawn (a mask
 * allowing none is refused: the sampler, and decoded before it asks). */
static inline bool pd_mask_any(const uint32_t *mask, uint32_t n_vocab)
{
    uint32_t any = 0;
    for (uint32_t w = 0; w < n_vocab / 32 && !any; w++)
        any |= mask[w];
    if (!any && n_vocab % 32)
        any = mask[n_vocab / 32] & ((1u << (n_vocab % 32)) - 1);
    return any != 0;
}

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

/* logits: (n_vocab) raw; token in [0, n_vocab). r->token = token, its raw
 * log-probability and the n_top (<= PD_MAX_LOGPROBS) most probable. */
int pd_sample_score(uint32_t n_vocab, const float *logits, int32_t token, uint32_t n_top,
                    struct pd_sample_result *r);

/* ---- the GPU ---- */

struct pd_sample_args {
    const float *logits; /* (n_rows, n_vocab) raw */
    uint32_t n_rows, n_vocab;
    const struct pd_sampling *params; /* (n_rows) */
    const int32_t *hist; /* every row's sequence so far, prompt then output, concatenated */
    const uint32_t *hist_start; /* (n_rows + 1) row r's history: [hist_start[r], hist_start[r+1]) */
    const uint32_t *n_prompt; /* (n_rows) how many of a row's history are prompt tokens */
    const struct pd_logit_bias *bias; /* every row's bias entries, concatenated (NULL: none) */
    const uint32_t *bias_start; /* (n_rows + 1) row r's: [bias_start[r], bias_start[r+1]);
                                 * NULL when bias is */
    const uint32_t *mask; /* masks of ceil(n_vocab / 32) words, concatenated (NULL: none) */
    const uint32_t *mask_row; /* (n_rows) row r's mask: mask + mask_row[r] * words, or
                               * UINT32_MAX for none; NULL when mask is */
    const int32_t *forced; /* (n_rows) or NULL: a row with forced[r] >= 0 is scored, as
                            * pd_sample_score: that token, not a draw (its parameters'
                            * n_logprobs alone matter) */
    void *workspace; /* pd_sample_cuda_workspace bytes */
    uint64_t workspace_bytes;
    int32_t *token; /* (n_rows) out */
    float *logprob; /* (n_rows) out: the token's, raw distribution */
    struct pd_token_logprob *top; /* (n_rows, PD_MAX_LOGPROBS) out, most probable first */
    uint32_t *n_top; /* (n_rows) out */
};

PD_BEGIN_DECLS

/* Bytes of workspace for n_rows rows of n_vocab. */
uint64_t pd_sample_cuda_workspace(uint32_t n_rows, uint32_t n_vocab);
/* -EINVAL for bad arguments (a workspace too small among them). */
int pd_sample_cuda(const struct pd_sample_args *a, pd_stream_t stream);

PD_END_DECLS

#endif
