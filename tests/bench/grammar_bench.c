/* tests/bench/grammar_bench: what constrained decoding (response_format
 * json_object and json_schema, common/text/grammar) costs a decode step,
 * measured side by side in one run on the same engine: b sequences decoding
 * greedily, every row sampled in the step, without masks and then with one
 * per row -- each row's own state, its mask computed before the step (as
 * decoded's scheduler does) and advanced by the token drawn; a row whose
 * value completes starts the next one. Constrained four ways: json_object;
 * one schema (SCHEMA below: bounded strings and numbers, an enum array, an
 * optional anyOf) for every row; and each row its own compiled copy of it
 * (distinct schemas share no cached masks: the cache's worst case). Three
 * runs of each, alternating; printed per batch size and mode: the median ms
 * per step, the ratio to plain, the masks' own time per step, the mask
 * cache's hit rate and the trie nodes walked per computed mask; first, what
 * one mask costs when not cached.
 *
 *   build/tests/bench/grammar_bench [MODEL.gguf] [--steps N] [--ctx N]
 *
 * MODEL defaults to $PDSERVE_MODEL, else ~/.cache/pdserve's default model.
 * Timings never decide a test; this is a measuring tool only.
 */
#include "bench_util.h"
#include "engine.h"
#include "grammar.h"
#include "model.h"
#include "sample.h"
#include "schema.h"
#include "tokenizer.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct row {
    struct pd_kvseq seq;
    int32_t next; /* the token the step appends */
    int32_t hist[1]; /* unused: greedy, no penalties */
    struct pd_gstate gs;
    uint32_t *mask;
    struct pd_sampling sp;
    struct pd_sample_result res;
};

static const char SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"name\":{\"type\":\"string\",\"maxLength\":24},"
    "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150},"
    "\"score\":{\"type\":\"number\",\"minimum\":-1,\"maximum\":1},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"red\",\"green\",\"blue\"]},"
    "\"maxItems\":4},"
    "\"email\":{\"anyOf\":[{\"type\":\"string\",\"maxLength\":40},{\"type\":\"null\"}]},"
    "\"ok\":{\"type\":\"boolean\"}},"
    "\"required\":[\"name\",\"age\",\"score\",\"tags\",\"email\",\"ok\"]}";

enum mode { PLAIN, JSON_OBJECT, SCHEMA_ONE, SCHEMA_EACH, N_MODES };
static const char *const mode_name[N_MODES] = {"plain", "json_object", "schema", "schema/row"};

static void die(const char *what, const char *err)
{
    fprintf(stderr, "grammar_bench: %s: %s\n", what, err);
    exit(1);
}

/* seconds per step of b rows; constrained (g) unless PLAIN, row i by sc[i] */
static double run(struct pd_engine *e, struct pd_grammar *g, uint32_t b, uint32_t ctx,
                  uint32_t steps, enum mode mode, struct pd_schema *const *sc, double *mask_s)
{
    const bool masks = mode != PLAIN;
    const uint32_t V = pd_engine_n_vocab(e), words = pd_grammar_mask_words(g);
    struct row *r = calloc(b, sizeof(*r));
    struct pd_batch_item *it = calloc(b, sizeof(*it));
    int32_t *tok = malloc(ctx * sizeof(*tok));
    char err[256];
    if (!r || !it || !tok)
        die("memory", "out of memory");
    for (uint32_t i = 0; i < b; i++) {
        bench_fill_tokens(tok, ctx, V, i + 1);
        pd_kvseq_init(&r[i].seq);
        if (pd_engine_prefill(e, &r[i].seq, tok, ctx, NULL, err, sizeof(err)) < 0)
            die("prefill", err);
        r[i].next = tok[ctx - 1];
        r[i].sp = PD_SAMPLING_DEFAULT;
        pd_gstate_init(&r[i].gs, sc[i]);
        if (!(r[i].mask = malloc(words * sizeof(*r[i].mask))))
            die("memory", "out of memory");
        if (masks)
            r[i].sp.mask = r[i].mask;
        it[i] = (struct pd_batch_item){.seq = &r[i].seq, .tokens = &r[i].next, .n_tokens = 1,
                                       .n_logits = 1, .sampling = &r[i].sp, .result = &r[i].res};
    }
    double total = 0, in_masks = 0;
    for (uint32_t k = 0; k < steps; k++) {
        double t0 = bench_now();
        for (uint32_t i = 0; masks && i < b; i++) {
            const uint32_t *m = pd_grammar_mask(g, &r[i].gs);
            if (!m)
                die("mask", "out of memory");
            memcpy(r[i].mask, m, words * sizeof(*m));
        }
        double t1 = bench_now();
        if (pd_engine_step(e, it, b, err, sizeof(err)) < 0)
            die("step", err);
        total += bench_now() - t0;
        in_masks += t1 - t0;
        for (uint32_t i = 0; i < b; i++) {
            r[i].next = r[i].res.token;
            if (!masks)
                continue;
            if (pd_gstate_advance(g, &r[i].gs, r[i].res.token) < 0)
                die("advance", "a drawn token broke the grammar");
            if (pd_gstate_done(&r[i].gs))
                pd_gstate_init(&r[i].gs, sc[i]); /* the next value */
        }
    }
    for (uint32_t i = 0; i < b; i++) {
        pd_engine_seq_release(e, &r[i].seq);
        free(r[i].mask);
    }
    free(r);
    free(it);
    free(tok);
    *mask_s = in_masks / steps;
    return total / steps;
}

int main(int argc, char **argv)
{
    const char *path = getenv("PDSERVE_MODEL");
    char def[512], err[512];
    uint32_t steps = 24, ctx = 64;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc)
            ctx = (uint32_t)atoi(argv[++i]);
        else
            path = argv[i];
    }
    if (!path) {
        snprintf(def, sizeof(def), "%s/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
        path = def;
    }
    struct pd_model *m = NULL;
    struct pd_tokenizer *tok = NULL;
    struct pd_engine *e = NULL;
    struct pd_grammar *g = NULL;
    struct pd_model_params mp = {.path = path};
    if (pd_model_load(&mp, &m, err, sizeof(err)) < 0)
        die(path, err);
    if (pd_tok_load(pd_model_gguf(m), &tok, err, sizeof(err)) < 0)
        die("tokenizer", err);
    struct pd_engine_params ep = {.model = m, .kv_cache_bytes = 512ull << 20};
    if (pd_engine_new(&ep, &e, err, sizeof(err)) < 0)
        die("engine", err);
    double t0 = bench_now();
    if (pd_grammar_new(tok, pd_engine_n_vocab(e), &g, err, sizeof(err)) < 0)
        die("grammar", err);
    printf("grammar_bench: %s, vocabulary %u, trie built in %.1f ms; %u steps from %u-token "
           "contexts, greedy, sampled in the step (CPU engine)\n",
           path, pd_tok_n_vocab(tok), (bench_now() - t0) * 1e3, steps, ctx);
    /* a mask the cache does not hold: inside a string (nearly every token
     * allowed: the largest walk) at ten depths, each state new */
    double cold = 0;
    for (int k = 0; k < 10; k++) {
        char doc[32];
        int n = snprintf(doc, sizeof(doc), "{\"k\":%.*s\"x", k, "[[[[[[[[[[");
        struct pd_gstate st;
        pd_gstate_json_object(&st);
        if (pd_gstate_feed(&st, (const uint8_t *)doc, (size_t)n) < 0)
            die("feed", doc);
        double c0 = bench_now();
        if (!pd_grammar_mask(g, &st))
            die("mask", "out of memory");
        cold += bench_now() - c0;
    }
    printf("a mask not cached (inside a string, the largest): %.3f ms\n", cold / 10 * 1e3);
    enum { MAXB = 32, REPS = 3 }; /* alternating, medians: a machine's drift falls on all */
    static const uint32_t batch[] = {1, MAXB};
    struct pd_schema *sc[N_MODES][MAXB];
    for (uint32_t i = 0; i < MAXB; i++) {
        sc[PLAIN][i] = sc[JSON_OBJECT][i] = pd_schema_json_object();
        if (pd_schema_compile_text(SCHEMA, sizeof(SCHEMA) - 1, &sc[SCHEMA_EACH][i], err,
                                   sizeof(err)) < 0)
            die("schema", err);
        sc[SCHEMA_ONE][i] = sc[SCHEMA_EACH][0];
    }
    printf("%6s %12s %10s %7s %13s %9s %12s\n", "batch", "mode", "ms/step", "ratio",
           "masks ms/step", "hit rate", "nodes/mask");
    for (size_t k = 0; k < sizeof(batch) / sizeof(*batch); k++) {
        struct pd_grammar_stats a[N_MODES] = {0}, z;
        double t[N_MODES][REPS], mk[N_MODES][REPS];
        for (int rep = 0; rep < REPS; rep++)
            for (int md = 0; md < N_MODES; md++) {
                struct pd_grammar_stats before;
                pd_grammar_stats(g, &before);
                t[md][rep] = run(e, g, batch[k], ctx, steps, md, sc[md], &mk[md][rep]);
                pd_grammar_stats(g, &z);
                a[md].masks += z.masks - before.masks;
                a[md].hits += z.hits - before.hits;
                a[md].nodes += z.nodes - before.nodes;
            }
        const double plain = bench_median(t[PLAIN], REPS);
        for (int md = 0; md < N_MODES; md++) {
            const double ms = bench_median(t[md], REPS), mks = bench_median(mk[md], REPS);
            const double asked = (double)a[md].masks, hits = (double)a[md].hits;
            printf("%6u %12s %10.2f %6.2fx %13.3f %8.1f%% %12.0f\n", batch[k], mode_name[md],
                   ms * 1e3, ms / plain, mks * 1e3, asked ? 100.0 * hits / asked : 0.0,
                   asked > hits ? (double)a[md].nodes / (asked - hits) : 0.0);
        }
    }
    for (uint32_t i = 0; i < MAXB; i++)
        pd_schema_unref(sc[SCHEMA_EACH][i]);
    pd_grammar_free(g);
    pd_engine_free(e);
    pd_tok_free(tok);
    pd_model_free(m);
    return 0;
}
