/* common/engine/generate: offline batched generation on one engine (the generator
 * CLI and tests; the serving daemons have their own schedulers).
 *
 *   struct pd_gen_request r = {.prompt = ids, .n_prompt = n, .sampling = sp, .max_tokens = 64,
 *                              .stop_ids = eos, .n_stop_ids = 1,
 *                              .tokens = out, .results = res};   // caller's buffers, max_tokens long
 *   if (pd_generate(engine, &r, 1, err, sizeof err) < 0) ...
 *   // r.n_tokens tokens in out; r.finish is PD_FINISH_STOP or PD_FINISH_LENGTH
 *
 * All requests are prefilled (in chunks) and then advanced together, one
 * token each per engine step, until each stops on a stop id (the stop token is
 * kept as the last output token) or reaches max_tokens. The pool must hold
 * every request at once: -ENOSPC otherwise (no preemption here). Every block
 * is released before returning, on success or error.
 */
#ifndef PD_GENERATE_H
#define PD_GENERATE_H

#include "engine.h"
#include "sample.h"

enum pd_finish {
    PD_FINISH_NONE = 0,
    PD_FINISH_STOP, /* a stop id was sampled */
    PD_FINISH_LENGTH, /* max_tokens reached */
};

struct pd_gen_request {
    const int32_t *prompt;
    uint32_t n_prompt;
    struct pd_sampling sampling;
    uint32_t max_tokens; /* >= 1 */
    const int32_t *stop_ids; /* end-of-generation tokens */
    uint32_t n_stop_ids;
    /* out: caller's buffers of max_tokens entries (results may be NULL) */
    int32_t *tokens;
    struct pd_sample_result *results;
    uint32_t n_tokens;
    enum pd_finish finish;
};

int pd_generate(struct pd_engine *e, struct pd_gen_request *reqs, uint32_t n_reqs, char *err,
                size_t errlen);

#endif
