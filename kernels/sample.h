/* kernels/sample: next-token selection on the GPU for a batch of rows, the
 * same function as common/sampler.c's pd_sample (its reference): penalties,
 * greedy or temperature / top_k / top_p / min_p and the draw with
 * pd_rng_uniform(seed, history length) from kernels/philox.h, and the raw
 * log-probabilities (the chosen token's and the n_logprobs most probable).
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
#include "sampler.h"

struct pd_sample_args {
    const float *logits; /* (n_rows, n_vocab) raw */
    uint32_t n_rows, n_vocab;
    const struct pd_sampling *params; /* (n_rows) */
    const int32_t *hist; /* every row's sequence so far, prompt then output, concatenated */
    const uint32_t *hist_start; /* (n_rows + 1) row r's history: [hist_start[r], hist_start[r+1]) */
    const uint32_t *n_prompt; /* (n_rows) how many of a row's history are prompt tokens */
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
