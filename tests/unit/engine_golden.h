/* The CPU engine against transformers' float64 goldens (tests/golden/
 * engine_<name>.bin and greedy_<name>.bin; make_engine_golden.py,
 * make_greedy_golden.py and make_hf_models.py write them): shared by
 * test_engine.c (GGUF and dummy models) and test_checkpoint.c (Hugging Face
 * checkpoints). Test-only: a bad file fails the test. */
#ifndef PD_TEST_ENGINE_GOLDEN_H
#define PD_TEST_ENGINE_GOLDEN_H

#include "engine.h"
#include "golden.h"
#include "kvcache.h"
#include "model.h"
#include "pd_test.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4 /* max |ours - ref| / max |ref| at every position (the bar) */

/* 64 MiB of fp32 KV, chunks of 512, contexts up to 2048 (the goldens' are
 * shorter; Mistral's window is 4096), the CPU's weights kept as `mode` says */
static struct pd_engine *engine_mode(const struct pd_model *m, enum pd_cpu_weights mode)
{
    struct pd_engine_params p = {.model = m, .kv_cache_bytes = 64u << 20, .block_size = 16,
                                 .max_batched_tokens = 512,
                                 .max_model_len = pd_model_hparams(m)->n_ctx_train < 2048
                                                      ? pd_model_hparams(m)->n_ctx_train
                                                      : 2048,
                                 .cpu_weights = mode};
    struct pd_engine *e = NULL;
    char err[512];
    if (pd_engine_new(&p, &e, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return e;
}

static uint32_t rd32(FILE *f)
{
    uint32_t v = 0;
    if (fread(&v, 4, 1, f) != 1)
        PD_TEST_FAIL_("golden file truncated");
    return v;
}

static double rdf64(FILE *f)
{
    double v = 0;
    if (fread(&v, 8, 1, f) != 1)
        PD_TEST_FAIL_("golden file truncated");
    return v;
}

/* Run every golden prompt through the engine (whole prompt, logits at every
 * position) and compare against transformers. */
static void check_golden(const struct pd_model *m, const char *name, enum pd_cpu_weights mode)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/golden/engine_%s.bin", PD_SRCDIR, name);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    char magic[4];
    CHECK(fread(magic, 1, 4, f) == 4 && memcmp(magic, "PDGL", 4) == 0);
    CHECK_EQ_INT(rd32(f), 1);
    uint32_t n_vocab = rd32(f), n_prompts = rd32(f), topk = rd32(f);
    CHECK_EQ_INT(n_vocab, pd_model_hparams(m)->n_vocab);
    CHECK(n_prompts >= 6 && topk == 64);

    /* float activations, weights as stored or fp32: one bar (stored-q8's
     * 8-bit activations would need a looser one) */
    struct pd_engine *e = engine_mode(m, mode);
    double worst = 0;
    uint32_t worst_prompt = 0, worst_pos = 0, max_len = 0;
    for (uint32_t p = 0; p < n_prompts; p++) {
        uint32_t n = rd32(f);
        CHECK(n >= 1 && n <= 512);
        max_len = n > max_len ? n : max_len;
        int32_t *tok = malloc(n * sizeof(*tok));
        float *logits = malloc((size_t)n * n_vocab * sizeof(float));
        CHECK(fread(tok, 4, n, f) == n);
        struct pd_kvseq s;
        pd_kvseq_init(&s);
        struct pd_batch_item it = {.seq = &s, .tokens = tok, .n_tokens = n, .n_logits = n,
                                   .logits = logits};
        char err[512];
        if (pd_engine_step(e, &it, 1, err, sizeof(err)) < 0)
            PD_TEST_FAIL_("%s", err);
        for (uint32_t t = 0; t < n; t++) {
            const float *row = logits + (size_t)t * n_vocab;
            double lse_ref = rdf64(f), maxabs = rdf64(f);
            /* our logsumexp, in double */
            double mx = -INFINITY, sum = 0;
            for (uint32_t v = 0; v < n_vocab; v++)
                mx = row[v] > mx ? row[v] : mx;
            for (uint32_t v = 0; v < n_vocab; v++)
                sum += exp(row[v] - mx);
            double err_t = fabs(mx + log(sum) - lse_ref);
            for (uint32_t k = 0; k < topk; k++) {
                uint32_t id;
                float ref;
                CHECK(fread(&id, 4, 1, f) == 1 && fread(&ref, 4, 1, f) == 1);
                CHECK(id < n_vocab);
                double d = fabs(row[id] - (double)ref);
                err_t = d > err_t ? d : err_t;
            }
            if (t == n - 1) {
                float *last = malloc(n_vocab * sizeof(float));
                CHECK(fread(last, 4, n_vocab, f) == n_vocab);
                for (uint32_t v = 0; v < n_vocab; v++) {
                    double d = fabs(row[v] - (double)last[v]);
                    err_t = d > err_t ? d : err_t;
                }
                free(last);
            }
            double rel = err_t / maxabs;
            if (rel > worst) {
                worst = rel;
                worst_prompt = p;
                worst_pos = t;
            }
        }
        pd_engine_seq_release(e, &s);
        free(tok);
        free(logits);
    }
    fclose(f);
    printf("  %s, weights %s: %u prompts up to %u tokens, worst max|diff|/max|ref| = %.2e "
           "(prompt %u, position %u)\n",
           name, pd_engine_cpu_weight_dtypes[mode], n_prompts, max_len, worst, worst_prompt,
           worst_pos);
    CHECK(worst <= TOL);
    CHECK_EQ_INT(pd_kvcache_n_free(pd_engine_kvcache(e)), pd_kvcache_n_blocks(pd_engine_kvcache(e)));
    pd_engine_free(e);
}

/* Greedy continuations against transformers' (tests/golden/greedy_<name>.bin,
 * make_greedy_golden.py, make_hf_models.py): the prompts decoded together,
 * one token each a step, as a server runs them. Tokens must match up to the first position
 * where the reference's top-2 gap is a near-tie (DESIGN.md); the report
 * says where each prompt stopped being checked and why. */
static void check_greedy(const struct pd_model *m, const char *name, enum pd_cpu_weights mode)
{
    char file[128];
    snprintf(file, sizeof(file), "greedy_%s.bin", name);
    FILE *f = golden_open(file);
    CHECK(f != NULL);
    char magic[4];
    CHECK(fread(magic, 1, 4, f) == 4 && memcmp(magic, "PDGG", 4) == 0);
    CHECK_EQ_INT(rd32(f), 1);
    const uint32_t n_p = rd32(f), n_gen = rd32(f);
    CHECK(n_p >= 8 && n_p <= 64 && n_gen >= 32 && n_gen <= 256);
    const uint32_t V = pd_model_hparams(m)->n_vocab;
    struct pd_engine *e = engine_mode(m, mode);
    char err[512];
    struct pd_kvseq *seq = calloc(n_p, sizeof(*seq));
    int32_t *want = calloc((size_t)n_p * n_gen, sizeof(int32_t)), *next = calloc(n_p, 4);
    float *tie = calloc((size_t)n_p * n_gen, sizeof(float)); /* gap / max|logit| */
    float *logits = malloc((size_t)n_p * V * sizeof(float));
    uint32_t *checked = calloc(n_p, sizeof(uint32_t)); /* tokens compared per prompt */
    bool *live = calloc(n_p, sizeof(bool));
    for (uint32_t p = 0; p < n_p; p++) {
        uint32_t n = rd32(f);
        CHECK(n >= 1 && n <= 256);
        int32_t *tok = malloc(n * sizeof(int32_t));
        CHECK(fread(tok, 4, n, f) == n);
        for (uint32_t g = 0; g < n_gen; g++) {
            float gm[2];
            CHECK(fread(&want[(size_t)p * n_gen + g], 4, 1, f) == 1 && fread(gm, 4, 2, f) == 2);
            tie[(size_t)p * n_gen + g] = gm[0] / gm[1];
        }
        pd_kvseq_init(&seq[p]);
        if (pd_engine_prefill(e, &seq[p], tok, n, logits, err, sizeof(err)) < 0)
            PD_TEST_FAIL_("%s", err);
        free(tok);
        live[p] = true;
        next[p] = 0;
        for (uint32_t v = 1; v < V; v++)
            next[p] = logits[v] > logits[next[p]] ? (int32_t)v : next[p];
    }
    fclose(f);
    uint32_t n_ties = 0, total = 0;
    for (uint32_t g = 0; g < n_gen; g++) {
        struct pd_batch_item it[64];
        uint32_t n_it = 0, idx[64];
        for (uint32_t p = 0; p < n_p; p++) {
            if (!live[p])
                continue;
            const size_t w = (size_t)p * n_gen + g;
            if (next[p] != want[w]) {
                if (tie[w] < 1e-3) { /* a near-tie: either order is right; stop here */
                    live[p] = false;
                    n_ties++;
                    continue;
                }
                PD_TEST_FAIL_("prompt %u token %u: %d, transformers %d (its top-2 gap %.3g of "
                              "max|logit|)", p, g, next[p], want[w], (double)tie[w]);
            }
            checked[p]++;
            if (g + 1 == n_gen)
                continue;
            idx[n_it] = p;
            it[n_it] = (struct pd_batch_item){.seq = &seq[p], .tokens = &next[p],
                                              .n_tokens = 1, .n_logits = 1,
                                              .logits = logits + (size_t)n_it * V};
            n_it++;
        }
        if (n_it && pd_engine_step(e, it, n_it, err, sizeof(err)) < 0)
            PD_TEST_FAIL_("%s", err);
        for (uint32_t i = 0; i < n_it; i++) {
            const float *l = logits + (size_t)i * V;
            int32_t best = 0;
            for (uint32_t v = 1; v < V; v++)
                best = l[v] > l[best] ? (int32_t)v : best;
            next[idx[i]] = best;
        }
    }
    for (uint32_t p = 0; p < n_p; p++) {
        total += checked[p];
        pd_engine_seq_release(e, &seq[p]);
    }
    printf("  %s, %s: %u prompts, %u of %u tokens identical to transformers, %u stopped at a "
           "near-tie\n", name, pd_engine_cpu_weight_dtypes[mode], n_p, total, n_p * n_gen,
           n_ties);
    for (uint32_t p = 0; p < n_p; p++)
        if (checked[p] < n_gen)
            printf("    prompt %u: checked %u tokens (a near-tie next)\n", p, checked[p]);
    CHECK(total >= n_p * n_gen / 2); /* most of the run was compared, not skipped */
    free(seq), free(want), free(next), free(tie), free(logits), free(checked), free(live);
    pd_engine_free(e);
}

#endif
