/* Helpers for the tests that run an engine on a model: the engine (a test
 * failure in place of an error), the solo reference that batched and
 * scheduled runs are held to under DESIGN.md's "same output" rule, the
 * near-tie test that rule needs, and polling against a deadline.
 * Test-only; shared by test_generate and the decoded and prefilld scheduler
 * tests. The caller frees what it gets with the module's own free. */
#ifndef PD_TEST_ENGINE_FIXTURE_H
#define PD_TEST_ENGINE_FIXTURE_H

#include "default_model.h"
#include "engine.h"
#include "log.h" /* pd_now_ns */
#include "pd_test.h"
#include "sample.h"

#include <math.h>
#include <stdbool.h>
#include <time.h>

/* top-2 gap below this x max|logit|: a near-tie, where any order is right */
#define FX_NEAR_TIE 1e-3

/* The dummy model of this shape; the test fails if it cannot be built. */
static inline struct pd_model *fx_dummy_model(const char *shape, uint64_t seed)
{
    struct pd_model_params p = {.load_format = PD_LOAD_DUMMY, .shape = shape, .seed = seed};
    return pd_test_load_model(&p);
}

/* max_items 0: the engine's default. The test fails if it cannot be built. */
static inline struct pd_engine *fx_engine(const struct pd_model *m, uint64_t kv_bytes,
                                          uint32_t max_batched_tokens, uint32_t max_items)
{
    struct pd_engine_params p = {.model = m, .kv_cache_bytes = kv_bytes,
                                 .max_batched_tokens = max_batched_tokens,
                                 .max_batch_items = max_items};
    struct pd_engine *e = NULL;
    char err[512];
    if (pd_engine_new(&p, &e, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return e;
}

/* Every block of the engine's pool is free (nothing leaked a reference). */
static inline bool fx_all_blocks_free(struct pd_engine *e)
{
    struct pd_kvcache *kc = pd_engine_kvcache(e);
    return pd_kvcache_n_free(kc) == pd_kvcache_n_blocks(kc);
}

/* Every position's raw logits of toks[0, n) in one step on a fresh
 * sequence, no sampling: (n, V), the caller frees. The test fails on an
 * engine error. */
static inline float *fx_prompt_logits(struct pd_engine *e, const int32_t *toks, uint32_t n)
{
    const uint32_t V = pd_engine_n_vocab(e);
    float *l = malloc((size_t)n * V * sizeof(float));
    struct pd_kvseq q;
    char err[512];
    CHECK(l);
    pd_kvseq_init(&q);
    struct pd_batch_item it = {.seq = &q, .tokens = toks, .n_tokens = n, .n_logits = n,
                               .logits = l};
    if (pd_engine_step(e, &it, 1, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    pd_engine_seq_release(e, &q);
    return l;
}

/* The top two of V logits are a near-tie. */
static inline bool fx_near_tie(const float *l, uint32_t V)
{
    float a = -INFINITY, b = -INFINITY, mx = 0;
    for (uint32_t v = 0; v < V; v++) {
        mx = fabsf(l[v]) > mx ? fabsf(l[v]) : mx;
        if (l[v] > a)
            b = a, a = l[v];
        else if (l[v] > b)
            b = l[v];
    }
    return a - b < FX_NEAR_TIE * mx;
}

/* Solo reference, written against the engine directly so that it shares no
 * loop with pd_generate or a scheduler: prefill, then one token at a time.
 * Fills tok[0, max_tokens), near_tie[k] for each position and, when logprob is
 * not NULL, each token's logprob. */
static inline void fx_solo_reference(struct pd_engine *e, const struct pd_sampling *sp,
                                     const int32_t *prompt, uint32_t n, uint32_t max_tokens,
                                     int32_t *tok, int *near_tie, float *logprob)
{
    const uint32_t V = pd_engine_n_vocab(e);
    float *l = malloc(V * sizeof(float));
    struct pd_sampler *s = pd_sampler_new(V);
    struct pd_kvseq q;
    char err[256];
    pd_kvseq_init(&q);
    CHECK(l && s);
    CHECK_EQ_INT(pd_engine_prefill(e, &q, prompt, n, l, err, sizeof(err)), 0);
    for (uint32_t k = 0; k < max_tokens; k++) {
        near_tie[k] = fx_near_tie(l, V);
        struct pd_sample_result res;
        CHECK_EQ_INT(pd_sample(s, sp, l, prompt, n, tok, k, &res), 0);
        tok[k] = res.token;
        if (logprob)
            logprob[k] = res.logprob;
        struct pd_batch_item it = {.seq = &q, .tokens = &tok[k], .n_tokens = 1, .n_logits = 1,
                                   .logits = l};
        if (k + 1 < max_tokens)
            CHECK_EQ_INT(pd_engine_step(e, &it, 1, err, sizeof(err)), 0);
    }
    pd_engine_seq_release(e, &q);
    pd_sampler_free(s);
    free(l);
}

static inline void fx_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* One turn of a polling loop: fails the test once the deadline
 * (pd_now_ns) has passed, else waits a millisecond. */
static inline void fx_poll(uint64_t deadline)
{
    if (pd_now_ns() >= deadline)
        PD_TEST_FAIL_("still waiting at the deadline");
    fx_sleep_ms(1);
}

/* A deadline s seconds from now, for fx_poll. */
static inline uint64_t fx_deadline(unsigned s) { return pd_now_ns() + s * 1000000000ull; }

#endif
