/* Batched generation against solo generation under DESIGN.md's "same output"
 * rule, seeded sampling across batch compositions, stop conditions. */
#include "engine_fixture.h"
#include "generate.h"
#include "model.h"
#include "pd_test.h"

#include <errno.h>
#include <math.h>
#include <unistd.h>

#define LOGPROB_TOL 1e-3

static struct pd_model *load(const char *shape)
{
    return shape ? fx_dummy_model(shape, 21) : pd_test_load_default_model();
}

static struct pd_engine *engine(const struct pd_model *m)
{
    return fx_engine(m, 256u << 20, 256, 0);
}

enum { NREQ = 8, MAXT = 24 };

static void make_prompt(int32_t *t, uint32_t n, uint32_t vocab, uint32_t salt)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)(((i + 1) * 2654435761u + salt * 97u) % vocab);
}

/* Compare one batched result with its solo reference under the rule; returns
 * the position of the first near-tie (or MAXT) for reporting. */
static uint32_t compare(const struct pd_gen_request *r, const int32_t *ref, const int *near_tie,
                        const float *ref_lp, int req)
{
    for (uint32_t k = 0; k < r->n_tokens; k++) {
        if (near_tie[k]) {
            printf("  request %d: near-tie at generated position %u; compared up to there\n",
                   req, k);
            return k;
        }
        if (r->tokens[k] != ref[k])
            PD_TEST_FAIL_("request %d position %u: batched %d, solo %d", req, k, r->tokens[k],
                          ref[k]);
        if (fabsf(r->results[k].logprob - ref_lp[k]) > LOGPROB_TOL)
            PD_TEST_FAIL_("request %d position %u: logprob %g vs solo %g", req, k,
                          (double)r->results[k].logprob, (double)ref_lp[k]);
    }
    return r->n_tokens;
}

static void batch_equals_solo(const char *shape, float temperature)
{
    struct pd_model *m = load(shape);
    struct pd_engine *e = engine(m);
    const uint32_t V = pd_engine_n_vocab(e);
    static int32_t prompts[NREQ][80], out[NREQ][MAXT], ref[NREQ][MAXT];
    static struct pd_sample_result res[NREQ][MAXT];
    static int near_tie[NREQ][MAXT];
    static float ref_lp[NREQ][MAXT];
    struct pd_gen_request r[NREQ];
    char err[512];

    for (int i = 0; i < NREQ; i++) {
        uint32_t n = 3 + (uint32_t)i * 11; /* 3 .. 80 tokens: different lengths */
        make_prompt(prompts[i], n, V, (uint32_t)i);
        r[i] = (struct pd_gen_request){.prompt = prompts[i], .n_prompt = n, .max_tokens = MAXT,
                                       .tokens = out[i], .results = res[i]};
        r[i].sampling = PD_SAMPLING_DEFAULT;
        r[i].sampling.temperature = temperature;
        r[i].sampling.top_p = temperature > 0 ? 0.9f : 1.0f;
        r[i].sampling.seed = 1000 + (uint64_t)i;
        fx_solo_reference(e, &r[i].sampling, r[i].prompt, n, MAXT, ref[i], near_tie[i],
                          ref_lp[i]);
    }
    CHECK_EQ_INT(pd_generate(e, r, NREQ, err, sizeof(err)), 0);
    uint32_t compared = 0;
    for (int i = 0; i < NREQ; i++) {
        CHECK_EQ_INT(r[i].n_tokens, MAXT);
        CHECK_EQ_INT(r[i].finish, PD_FINISH_LENGTH);
        compared += compare(&r[i], ref[i], near_tie[i], ref_lp[i], i);
    }
    printf("  %s, temperature %g: %u of %u generated tokens compared\n", shape ? shape : "default",
           (double)temperature, compared, NREQ * MAXT);
    CHECK(compared >= NREQ * MAXT / 2); /* a rule that compares nothing proves nothing */
    CHECK(fx_all_blocks_free(e));
    pd_engine_free(e);
    pd_model_free(m);
}

static void batched_greedy_equals_solo_on_default_model(void) { batch_equals_solo(NULL, 0.0f); }
static void batched_sampling_equals_solo_on_default_model(void) { batch_equals_solo(NULL, 0.8f); }
static void batched_sampling_equals_solo_on_dummy(void) { batch_equals_solo("tiny-gqa3", 1.0f); }

/* Request 0's tokens do not depend on which other requests share its steps. */
static void seeded_sampling_unchanged_by_batch_composition(void)
{
    struct pd_model *m = load("tiny-gqa4");
    struct pd_engine *e = engine(m);
    const uint32_t V = pd_engine_n_vocab(e);
    static int32_t prompts[4][40], out[3][4][MAXT];
    char err[512];

    for (int i = 0; i < 4; i++)
        make_prompt(prompts[i], 10 + 9 * (uint32_t)i, V, 50 + (uint32_t)i);
    /* compositions: {0}, {0,1,2}, {3,0} -- request 0 in different slots */
    static const int comp[3][3] = {{0, -1, -1}, {0, 1, 2}, {3, 0, -1}};
    for (int c = 0; c < 3; c++) {
        struct pd_gen_request r[3];
        uint32_t n = 0;
        for (int j = 0; j < 3 && comp[c][j] >= 0; j++, n++) {
            int q = comp[c][j];
            r[n] = (struct pd_gen_request){.prompt = prompts[q], .n_prompt = 10 + 9 * (uint32_t)q,
                                           .max_tokens = MAXT, .tokens = out[c][n]};
            r[n].sampling = PD_SAMPLING_DEFAULT;
            r[n].sampling.temperature = 1.0f;
            r[n].sampling.seed = q == 0 ? 777 : (uint64_t)q;
        }
        CHECK_EQ_INT(pd_generate(e, r, n, err, sizeof(err)), 0);
    }
    CHECK(memcmp(out[0][0], out[1][0], sizeof(out[0][0])) == 0);
    CHECK(memcmp(out[0][0], out[2][1], sizeof(out[0][0])) == 0);
    pd_engine_free(e);
    pd_model_free(m);
}

static void generate_stops_on_stop_id_and_keeps_it(void)
{
    struct pd_model *m = load("tiny");
    struct pd_engine *e = engine(m);
    int32_t prompt[5] = {1, 2, 3, 4, 5}, out[MAXT], probe[MAXT];
    char err[512];
    struct pd_gen_request r = {.prompt = prompt, .n_prompt = 5, .max_tokens = MAXT,
                               .tokens = probe, .sampling = PD_SAMPLING_DEFAULT};
    CHECK_EQ_INT(pd_generate(e, &r, 1, err, sizeof(err)), 0);
    /* stop on the 4th token greedy decoding produces */
    int32_t stop = probe[3];
    uint32_t first = 0;
    while (probe[first] != stop)
        first++;
    r.tokens = out;
    r.stop_ids = &stop;
    r.n_stop_ids = 1;
    CHECK_EQ_INT(pd_generate(e, &r, 1, err, sizeof(err)), 0);
    CHECK_EQ_INT(r.finish, PD_FINISH_STOP);
    CHECK_EQ_INT(r.n_tokens, first + 1);
    CHECK_EQ_INT(out[first], stop);
    pd_engine_free(e);
    pd_model_free(m);
}

static void generate_refuses_bad_requests_and_frees_everything(void)
{
    struct pd_model *m = load("tiny");
    struct pd_engine *e = engine(m);
    int32_t prompt[3] = {1, 2, 300}, out[4];
    char err[512];
    struct pd_gen_request r = {.prompt = prompt, .n_prompt = 3, .max_tokens = 4, .tokens = out,
                               .sampling = PD_SAMPLING_DEFAULT};
    CHECK_EQ_INT(pd_generate(e, &r, 1, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "token id 300");
    prompt[2] = 3;
    r.sampling.top_p = 2.0f;
    CHECK_EQ_INT(pd_generate(e, &r, 1, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "top_p");
    r.sampling.top_p = 1.0f;
    r.max_tokens = 0;
    CHECK_EQ_INT(pd_generate(e, &r, 1, err, sizeof(err)), -EINVAL);
    CHECK(fx_all_blocks_free(e));
    pd_engine_free(e);
    pd_model_free(m);
}

static const struct pd_test tests[] = {
    PD_TEST(batched_sampling_equals_solo_on_dummy),
    PD_TEST(seeded_sampling_unchanged_by_batch_composition),
    PD_TEST(generate_stops_on_stop_id_and_keeps_it),
    PD_TEST(generate_refuses_bad_requests_and_frees_everything),
    PD_TEST(batched_greedy_equals_solo_on_default_model),
    PD_TEST(batched_sampling_equals_solo_on_default_model),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
