/* Sampling: the Philox generator against its published answers, each sampler
 * against its exact target distribution (chi-square, fixed seed), penalties,
 * greedy ties, log-probabilities, validation, logit bias, token masks, and
 * scoring a given token (pd_sample_score) against a log-softmax of its own. */
#include "pd_test.h"
#include "philox.h"
#include "sample.h"

#include <errno.h>
#include <math.h>

/* Random123's known-answer vectors for Philox4x32-10 (kat_vectors). */
static void philox_matches_random123_vectors(void)
{
    static const struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof(kat) / sizeof(kat[0]); i++) {
        struct pd_philox_out o = pd_philox4x32_10(kat[i].ctr, kat[i].key);
        for (int j = 0; j < 4; j++)
            if (o.v[j] != kat[i].out[j])
                PD_TEST_FAIL_("vector %zu word %d: %08x, want %08x", i, j, o.v[j], kat[i].out[j]);
    }
}

static void rng_uniform_in_unit_interval_and_keyed(void)
{
    double sum = 0;
    int same = 0;
    for (uint32_t p = 0; p < 100000; p++) {
        float u = pd_rng_uniform(7, p, 0);
        CHECK(u >= 0.0f && u < 1.0f);
        sum += u;
        same += u == pd_rng_uniform(8, p, 0);
    }
    CHECK(fabs(sum / 100000 - 0.5) < 0.005);
    CHECK(same < 10); /* another seed is another stream */
    CHECK(pd_rng_uniform(7, 3, 0) == pd_rng_uniform(7, 3, 0));
}

/* 7 tokens whose softmax at temperature 1 is exactly these probabilities */
static const double P[7] = {0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02};

static void logits_of(float *l)
{
    for (int i = 0; i < 7; i++)
        l[i] = (float)log(P[i]);
}

/* Draw N tokens, one per seed, and compare the histogram with `want` by
 * Pearson's chi-square over the tokens want allows; tokens it excludes must
 * never appear. critical: the chi-square quantile at p = 0.001 for the
 * degrees of freedom (cells - 1). Fixed seeds: the outcome is deterministic. */
static void check_distribution(struct pd_sampling sp, const int32_t *out, uint32_t n_out,
                               const double *want, double critical, const char *what)
{
    enum { N = 200000 };
    struct pd_sampler *s = pd_sampler_new(7);
    uint32_t hist[7] = {0};
    float l[7];
    struct pd_sample_result r;
    static const int32_t prompt[1] = {3};

    logits_of(l);
    for (uint32_t i = 0; i < N; i++) {
        sp.seed = 1000 + i;
        CHECK_EQ_INT(pd_sample(s, &sp, l, prompt, 1, out, n_out, &r), 0);
        CHECK(r.token >= 0 && r.token < 7);
        hist[r.token]++;
    }
    double chi = 0;
    for (int t = 0; t < 7; t++) {
        if (want[t] == 0) {
            if (hist[t] != 0)
                PD_TEST_FAIL_("%s: token %d drawn %u times, excluded", what, t, hist[t]);
            continue;
        }
        double e = want[t] * N;
        chi += (hist[t] - e) * (hist[t] - e) / e;
    }
    printf("  %s: chi-square %.2f (critical %.2f)\n", what, chi, critical);
    if (chi > critical)
        PD_TEST_FAIL_("%s: chi-square %.2f above %.2f", what, chi, critical);
    pd_sampler_free(s);
}

/* chi-square quantiles at p = 0.001 by degrees of freedom */
static const double CRIT[7] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46};

static void sample_temperature_one_follows_softmax(void)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    sp.temperature = 1.0f;
    check_distribution(sp, NULL, 0, P, CRIT[6], "temperature 1");
}

static void sample_temperature_two_flattens(void)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    double want[7], z = 0;
    sp.temperature = 2.0f;
    for (int i = 0; i < 7; i++)
        z += want[i] = sqrt(P[i]); /* p^(1/T) */
    for (int i = 0; i < 7; i++)
        want[i] /= z;
    check_distribution(sp, NULL, 0, want, CRIT[6], "temperature 2");
}

static void sample_top_k_keeps_k_most_probable(void)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    double want[7] = {0.4 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0, 0, 0, 0};
    sp.temperature = 1.0f;
    sp.top_k = 3;
    check_distribution(sp, NULL, 0, want, CRIT[2], "top_k 3");
}

static void sample_top_p_keeps_smallest_prefix_reaching_p(void)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    /* 0.4 + 0.25 = 0.65 >= 0.6: two tokens */
    double want[7] = {0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0, 0};
    sp.temperature = 1.0f;
    sp.top_p = 0.6f;
    check_distribution(sp, NULL, 0, want, CRIT[1], "top_p 0.6");
}

static void sample_min_p_drops_improbable(void)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    /* floor 0.2 * 0.4 = 0.08: 0.4, 0.25, 0.15, 0.1 stay */
    double want[7] = {0.4 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.1 / 0.9, 0, 0, 0};
    sp.temperature = 1.0f;
    sp.min_p = 0.2f;
    check_distribution(sp, NULL, 0, want, CRIT[3], "min_p 0.2");
}

static void sample_penalties_reweight_seen_tokens(void)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    /* output so far: token 0 twice, token 1 once. presence 0.5, frequency 0.25:
     * logit0 -= 2 * 0.25 + 0.5, logit1 -= 0.25 + 0.5 */
    static const int32_t out[3] = {0, 1, 0};
    double want[7], z = 0;
    sp.temperature = 1.0f;
    sp.presence_penalty = 0.5f;
    sp.frequency_penalty = 0.25f;
    for (int i = 0; i < 7; i++)
        want[i] = P[i] * (i == 0 ? exp(-1.0) : i == 1 ? exp(-0.75) : 1.0);
    for (int i = 0; i < 7; i++)
        z += want[i];
    for (int i = 0; i < 7; i++)
        want[i] /= z;
    check_distribution(sp, out, 3, want, CRIT[6], "presence+frequency");
}

static void sample_repetition_penalty_divides_positive_multiplies_negative(void)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    float l[3] = {2.0f, -1.0f, 0.5f};
    static const int32_t prompt[2] = {0, 1};
    struct pd_sampler *s = pd_sampler_new(3);
    struct pd_sample_result r;
    sp.repetition_penalty = 4.0f;
    /* greedy: 2/4 = 0.5 ties token 2's 0.5 -> the lower id (0) */
    CHECK_EQ_INT(pd_sample(s, &sp, l, prompt, 2, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 0);
    sp.repetition_penalty = 4.5f; /* 2/4.5 < 0.5: token 2 wins */
    CHECK_EQ_INT(pd_sample(s, &sp, l, prompt, 2, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 2);
    /* a repeated token is penalised once, not once per occurrence */
    static const int32_t many[4] = {0, 0, 0, 0};
    sp.repetition_penalty = 3.9f; /* 2/3.9 > 0.5 */
    CHECK_EQ_INT(pd_sample(s, &sp, l, many, 4, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 0);
    pd_sampler_free(s);
}

static void greedy_takes_highest_and_lowest_id_on_ties(void)
{
    float l[5] = {1.0f, 3.0f, 3.0f, NAN, -2.0f};
    struct pd_sampler *s = pd_sampler_new(5);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result r;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 1);
    pd_sampler_free(s);
}

static void same_seed_and_position_same_token(void)
{
    float l[7];
    struct pd_sampler *s = pd_sampler_new(7);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result a, b;
    static const int32_t prompt[5] = {1, 2, 3, 4, 5};
    int differ = 0;
    logits_of(l);
    sp.temperature = 1.0f;
    for (uint32_t n = 1; n <= 5; n++) {
        sp.seed = 99;
        CHECK_EQ_INT(pd_sample(s, &sp, l, prompt, n, NULL, 0, &a), 0);
        CHECK_EQ_INT(pd_sample(s, &sp, l, prompt, n, NULL, 0, &b), 0);
        CHECK_EQ_INT(a.token, b.token);
    }
    /* the position (prompt + output length) moves the draw */
    for (uint32_t n = 1; n < 64; n++) {
        int32_t big[64] = {0};
        sp.seed = 5;
        CHECK_EQ_INT(pd_sample(s, &sp, l, big, n, NULL, 0, &a), 0);
        CHECK_EQ_INT(pd_sample(s, &sp, l, big, n + 1, NULL, 0, &b), 0);
        differ += a.token != b.token;
    }
    CHECK(differ > 10);
    pd_sampler_free(s);
}

static void logprobs_are_raw_log_softmax(void)
{
    float l[7];
    struct pd_sampler *s = pd_sampler_new(7);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result r;
    logits_of(l);
    for (int i = 0; i < 7; i++)
        l[i] += 3.0f; /* a shift changes no probability */
    sp.temperature = 0.5f; /* nor does the temperature change reported logprobs */
    sp.n_logprobs = 3;
    sp.seed = 1;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK(fabs(r.logprob - log(P[r.token])) < 1e-6);
    CHECK_EQ_INT(r.n_top, 3);
    for (int k = 0; k < 3; k++) {
        CHECK_EQ_INT(r.top[k].token, k);
        CHECK(fabs(r.top[k].logprob - log(P[k])) < 1e-6);
    }
    pd_sampler_free(s);
}

static void sampling_validate_names_field_and_range(void)
{
    char err[256];
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    sp.top_p = 0.0f;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "top_p 0 is out of range (0, 1]");
    sp = PD_SAMPLING_DEFAULT;
    sp.top_k = 101;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "top_k 101");
    sp = PD_SAMPLING_DEFAULT;
    sp.temperature = NAN;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), -EINVAL);
    sp = PD_SAMPLING_DEFAULT;
    sp.n_logprobs = 21;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "logprobs 21");
    sp = PD_SAMPLING_DEFAULT;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), 0);
}

/* ---- logit_bias (OpenAI's): added to the raw logits, in order, before the
 * penalties and the temperature; the reported log-probabilities stay raw ---- */

static void sampling_validate_refuses_bad_logit_bias(void)
{
    char err[256];
    static struct pd_logit_bias many[PD_MAX_LOGIT_BIAS + 1];
    for (int i = 0; i <= PD_MAX_LOGIT_BIAS; i++)
        many[i] = (struct pd_logit_bias){.token = i % 100, .bias = 1.0f};
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    /* the cap: 300 entries pass, 301 do not */
    sp.bias = many;
    sp.n_bias = PD_MAX_LOGIT_BIAS;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), 0);
    sp.n_bias = PD_MAX_LOGIT_BIAS + 1;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), -EINVAL);
    CHECK(strncmp(err, "logit_bias", 10) == 0);
    CHECK_CONTAINS(err, "301");
    /* entries promised, none given */
    sp.n_bias = 1;
    sp.bias = NULL;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), -EINVAL);
    CHECK(strncmp(err, "logit_bias", 10) == 0);
    sp.n_bias = 0; /* none is fine without a pointer */
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), 0);
    /* a token outside [0, n_vocab) */
    const int32_t bad_tok[] = {-1, 100, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof(bad_tok) / sizeof(*bad_tok); i++) {
        struct pd_logit_bias b[2] = {{3, 1.0f}, {bad_tok[i], 1.0f}};
        sp.bias = b;
        sp.n_bias = 2;
        CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), -EINVAL);
        CHECK(strncmp(err, "logit_bias", 10) == 0);
        CHECK_CONTAINS(err, "token");
    }
    /* a bias outside [-100, 100], or not a number */
    const float bad_bias[] = {100.001f, -100.001f, 1e30f, NAN, -NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof(bad_bias) / sizeof(*bad_bias); i++) {
        struct pd_logit_bias b[2] = {{0, -100.0f}, {99, bad_bias[i]}};
        sp.bias = b;
        sp.n_bias = 2;
        CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), -EINVAL);
        CHECK(strncmp(err, "logit_bias", 10) == 0);
        CHECK_CONTAINS(err, "[-100, 100]");
    }
    /* the edges are in range; pd_sample refuses what validate refuses */
    struct pd_logit_bias edge[3] = {{0, -100.0f}, {99, 100.0f}, {50, -0.0f}};
    sp.bias = edge;
    sp.n_bias = 3;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 100, err, sizeof(err)), 0);
    struct pd_sampler *s = pd_sampler_new(4);
    float l[4] = {0, 1, 2, 3};
    struct pd_sample_result r;
    struct pd_logit_bias off[1] = {{4, 1.0f}}; /* token 4 of a vocabulary of 4 */
    sp.bias = off;
    sp.n_bias = 1;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), -EINVAL);
    pd_sampler_free(s);
}

static void greedy_bias_minus_100_on_argmax_lets_second_win(void)
{
    float l[5] = {1.0f, 5.0f, 3.0f, 2.0f, -1.0f};
    struct pd_sampler *s = pd_sampler_new(5);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result r;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 1);
    struct pd_logit_bias b[1] = {{1, -100.0f}};
    sp.bias = b;
    sp.n_bias = 1;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 2);
    pd_sampler_free(s);
}

static void greedy_bias_plus_100_makes_a_low_token_win(void)
{
    float l[5] = {1.0f, 5.0f, 3.0f, 2.0f, -50.0f};
    struct pd_sampler *s = pd_sampler_new(5);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result r;
    struct pd_logit_bias b[1] = {{4, 100.0f}}; /* -50 + 100 = 50 > 5 */
    sp.bias = b;
    sp.n_bias = 1;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 4);
    /* and a sampled draw: the others keep about e^-45 of the mass */
    sp.temperature = 1.0f;
    for (uint64_t seed = 0; seed < 200; seed++) {
        sp.seed = seed;
        CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
        CHECK_EQ_INT(r.token, 4);
    }
    pd_sampler_free(s);
}

static void bias_leaves_reported_logprobs_raw(void)
{
    float l[7];
    struct pd_sampler *s = pd_sampler_new(7);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result raw, biased;
    logits_of(l);
    sp.n_logprobs = 5;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &raw), 0);
    CHECK_EQ_INT(raw.token, 0);
    /* token 0 pushed down, token 6 (0.02) up: greedy takes 6 */
    struct pd_logit_bias b[2] = {{0, -100.0f}, {6, 50.0f}};
    sp.bias = b;
    sp.n_bias = 2;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &biased), 0);
    CHECK_EQ_INT(biased.token, 6);
    CHECK(fabs(biased.logprob - log(P[6])) < 1e-6); /* the model's 0.02, not ~1 */
    /* the alternatives are the call without bias's, to the bit */
    CHECK_EQ_INT(biased.n_top, raw.n_top);
    for (uint32_t k = 0; k < raw.n_top; k++) {
        CHECK_EQ_INT(biased.top[k].token, raw.top[k].token);
        CHECK(biased.top[k].logprob == raw.top[k].logprob);
    }
    CHECK(raw.logprob == raw.top[0].logprob);
    /* sampled too: whichever token is drawn, its raw log-probability */
    sp.temperature = 0.7f;
    sp.top_k = 3;
    for (uint64_t seed = 0; seed < 50; seed++) {
        sp.seed = seed;
        CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &biased), 0);
        CHECK(fabs(biased.logprob - log(P[biased.token])) < 1e-6);
        for (uint32_t k = 0; k < raw.n_top; k++)
            CHECK(biased.top[k].token == raw.top[k].token &&
                  biased.top[k].logprob == raw.top[k].logprob);
    }
    pd_sampler_free(s);
}

/* Token 0 (logit 1, in the prompt), repetition penalty 2, bias -3 on it:
 * bias first gives (1 - 3) * 2 = -4, penalty first 1 / 2 - 3 = -2.5.
 * Token 1 sits at -3, between the two: greedy says which order ran. */
static void bias_applies_before_repetition_penalty(void)
{
    float l[2] = {1.0f, -3.0f};
    static const int32_t prompt[1] = {0};
    struct pd_sampler *s = pd_sampler_new(2);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result r;
    struct pd_logit_bias b[1] = {{0, -3.0f}};
    sp.repetition_penalty = 2.0f;
    CHECK_EQ_INT(pd_sample(s, &sp, l, prompt, 1, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 0); /* 0.5 > -3 */
    sp.bias = b;
    sp.n_bias = 1;
    CHECK_EQ_INT(pd_sample(s, &sp, l, prompt, 1, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 1); /* -4 < -3; penalty first would keep 0 at -2.5 */
    /* the same from the output side */
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, prompt, 1, &r), 0);
    CHECK_EQ_INT(r.token, 1);
    /* and a positive turn: token 1 (-3, seen) with +4 is 1 / 2 = 0.5 bias
     * first, against -3 * 2 + 4 = -2 penalty first; token 0 (0.25, unseen)
     * lies between */
    float l2[2] = {0.25f, -3.0f};
    static const int32_t seen1[1] = {1};
    struct pd_logit_bias up[1] = {{1, 4.0f}};
    sp.bias = up;
    CHECK_EQ_INT(pd_sample(s, &sp, l2, seen1, 1, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 1);
    pd_sampler_free(s);
}

/* At temperature 2 the bias divides with the logit: p ~ (P * e^b)^(1/2),
 * not P^(1/2) * e^b */
static void sample_bias_applies_before_temperature(void)
{
    static const struct pd_logit_bias b[2] = {{0, -1.0f}, {4, 1.5f}};
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    double want[7], z = 0;
    sp.temperature = 2.0f;
    sp.bias = b;
    sp.n_bias = 2;
    for (int i = 0; i < 7; i++)
        z += want[i] = sqrt(P[i] * (i == 0 ? exp(-1.0) : i == 4 ? exp(1.5) : 1.0));
    for (int i = 0; i < 7; i++)
        want[i] /= z;
    check_distribution(sp, NULL, 0, want, CRIT[6], "bias then temperature 2");
}

static void duplicate_bias_entries_add_up(void)
{
    float l[3] = {0.0f, 1.0f, 2.0f};
    struct pd_sampler *s = pd_sampler_new(3);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result r;
    /* +1.5 alone leaves token 0 at 1.5 < 2; twice over it is 3 > 2 */
    struct pd_logit_bias once[1] = {{0, 1.5f}};
    struct pd_logit_bias twice[3] = {{0, 1.5f}, {1, -0.5f}, {0, 1.5f}};
    sp.bias = once;
    sp.n_bias = 1;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 2);
    sp.bias = twice;
    sp.n_bias = 3;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 0);
    /* +100 then -100 on the same token cancel: the raw argmax stays */
    struct pd_logit_bias cancel[2] = {{2, 100.0f}, {2, -100.0f}};
    sp.bias = cancel;
    sp.n_bias = 2;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 2);
    /* two -100s take token 2 below a -150 token: one alone would not */
    float l3[3] = {-150.0f, -160.0f, 2.0f};
    struct pd_logit_bias down[2] = {{2, -100.0f}, {2, -100.0f}};
    sp.bias = down;
    sp.n_bias = 1;
    CHECK_EQ_INT(pd_sample(s, &sp, l3, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 2); /* -98 */
    sp.n_bias = 2;
    CHECK_EQ_INT(pd_sample(s, &sp, l3, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 0); /* -198 < -150 */
    pd_sampler_free(s);
}

/* ---- scoring (echo's prompt log-probabilities): pd_sample_score reports a
 * given token's raw log-probability and the most probable, as pd_sample does
 * for the token it draws ---- */

/* log-softmax of l[0, V) in double, into out */
static void log_softmax(const float *l, uint32_t V, double *out)
{
    double mx = -INFINITY, sum = 0;
    for (uint32_t i = 0; i < V; i++)
        mx = l[i] > mx ? l[i] : mx;
    for (uint32_t i = 0; i < V; i++)
        sum += exp((double)l[i] - mx);
    for (uint32_t i = 0; i < V; i++)
        out[i] = (double)l[i] - mx - log(sum);
}

static void score_matches_log_softmax_for_every_token(void)
{
    enum { V = 97 };
    float l[V];
    double want[V];
    uint64_t x = 12345;
    for (uint32_t i = 0; i < V; i++) { /* spread over [-20, 20), some far below the rest */
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        l[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 40.0 - 20.0);
        if (i % 13 == 5)
            l[i] -= 200.0f;
    }
    log_softmax(l, V, want);
    /* the n_top most probable, by the test's own sort (no ties here) */
    uint32_t order[V];
    for (uint32_t i = 0; i < V; i++)
        order[i] = i;
    for (uint32_t i = 1; i < V; i++)
        for (uint32_t k = i; k > 0 && l[order[k]] > l[order[k - 1]]; k--) {
            uint32_t t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
    double mass = 0;
    for (int32_t tok = 0; tok < V; tok++) {
        struct pd_sample_result r;
        memset(&r, 0xa5, sizeof(r));
        const uint32_t n_top = (uint32_t)tok % (PD_MAX_LOGPROBS + 1);
        CHECK_EQ_INT(pd_sample_score(V, l, tok, n_top, &r), 0);
        CHECK_EQ_INT(r.token, tok);
        if (!(fabs(r.logprob - want[tok]) <= 1e-5 * fmax(1.0, fabs(want[tok]))))
            PD_TEST_FAIL_("token %d: logprob %.9g, log-softmax %.9g", tok, (double)r.logprob,
                          want[tok]);
        CHECK(r.logprob <= 0.0f);
        mass += exp(r.logprob);
        CHECK_EQ_INT(r.n_top, n_top);
        for (uint32_t k = 0; k < n_top; k++) {
            CHECK_EQ_INT(r.top[k].token, order[k]);
            CHECK(fabs(r.top[k].logprob - want[order[k]]) <= 1e-5);
        }
    }
    CHECK(fabs(mass - 1.0) < 1e-4); /* the scores of every token make a distribution */
}

/* Alternatives in descending probability, the lower id first on a tie; a
 * -inf logit scores -inf; a shift of every logit changes nothing */
static void score_ties_take_the_lower_id_first(void)
{
    float l[8] = {1.0f, 3.0f, -INFINITY, 3.0f, 2.0f, 3.0f, 2.0f, 0.5f};
    struct pd_sample_result r;
    CHECK_EQ_INT(pd_sample_score(8, l, 5, 8, &r), 0);
    static const int32_t want[8] = {1, 3, 5, 4, 6, 0, 7, 2};
    CHECK_EQ_INT(r.n_top, 8);
    for (int k = 0; k < 8; k++)
        CHECK_EQ_INT(r.top[k].token, want[k]);
    /* the tied tokens report the same number, which is the scored one's */
    const double lse = 3.0 + log(3.0 + 2.0 * exp(-1.0) + exp(-2.0) + exp(-2.5));
    CHECK(fabs(r.logprob - (3.0 - lse)) < 1e-6);
    CHECK(r.top[0].logprob == r.logprob && r.top[1].logprob == r.logprob &&
          r.top[2].logprob == r.logprob);
    CHECK(r.top[3].logprob == r.top[4].logprob);
    CHECK(isinf(r.top[7].logprob) && r.top[7].logprob < 0);
    CHECK_EQ_INT(pd_sample_score(8, l, 2, 0, &r), 0);
    CHECK(isinf(r.logprob) && r.logprob < 0);
    CHECK_EQ_INT(r.n_top, 0);
    /* all equal: uniform, the alternatives in id order */
    float flat[5] = {7.5f, 7.5f, 7.5f, 7.5f, 7.5f};
    CHECK_EQ_INT(pd_sample_score(5, flat, 4, 3, &r), 0);
    CHECK(fabs(r.logprob - log(0.2)) < 1e-6);
    for (int k = 0; k < 3; k++)
        CHECK(r.top[k].token == k && fabs(r.top[k].logprob - log(0.2)) < 1e-6);
    float shifted[8];
    struct pd_sample_result a, b;
    for (int i = 0; i < 8; i++)
        shifted[i] = l[i] + 100.0f; /* exact in float for these values */
    CHECK_EQ_INT(pd_sample_score(8, l, 4, 3, &a), 0);
    CHECK_EQ_INT(pd_sample_score(8, shifted, 4, 3, &b), 0);
    CHECK(fabs(a.logprob - b.logprob) < 1e-6);
    for (int k = 0; k < 3; k++)
        CHECK(a.top[k].token == b.top[k].token);
}

/* n_top over the vocabulary gives the whole vocabulary; a token outside it
 * or more than PD_MAX_LOGPROBS alternatives are refused */
static void score_refuses_tokens_outside_the_vocabulary_and_too_many_alternatives(void)
{
    float l[4] = {0.0f, 1.0f, 2.0f, 3.0f};
    struct pd_sample_result r;
    const int32_t bad[] = {-1, 4, 5, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        CHECK_EQ_INT(pd_sample_score(4, l, bad[i], 1, &r), -EINVAL);
    CHECK_EQ_INT(pd_sample_score(4, l, 0, PD_MAX_LOGPROBS + 1, &r), -EINVAL);
    CHECK_EQ_INT(pd_sample_score(4, l, 0, UINT32_MAX, &r), -EINVAL);
    CHECK_EQ_INT(pd_sample_score(0, l, 0, 0, &r), -EINVAL);
    CHECK_EQ_INT(pd_sample_score(4, l, 3, PD_MAX_LOGPROBS, &r), 0);
    CHECK_EQ_INT(r.n_top, 4); /* only 4 tokens to list */
    CHECK(r.top[0].token == 3 && r.top[3].token == 0);
    CHECK_EQ_INT(pd_sample_score(1, l, 0, PD_MAX_LOGPROBS, &r), 0);
    CHECK(r.token == 0 && r.logprob == 0.0f && r.n_top == 1 && r.top[0].logprob == 0.0f);
}

/* What pd_sample reports for the token it draws, whatever the bias,
 * penalties, temperature and cuts: the score of that token, to the bit */
static void score_reports_what_sample_reports_for_its_token(void)
{
    float l[7];
    logits_of(l);
    l[2] += 0.3f, l[5] -= 1.0f;
    struct pd_sampler *s = pd_sampler_new(7);
    static const int32_t prompt[3] = {0, 2, 2}, out[2] = {1, 0};
    struct pd_logit_bias b[2] = {{6, 4.0f}, {0, -2.0f}};
    for (int mode = 0; mode < 4; mode++)
        for (uint64_t seed = 0; seed < 40; seed++) {
            struct pd_sampling sp = PD_SAMPLING_DEFAULT;
            sp.seed = seed;
            sp.n_logprobs = (uint32_t)(seed % 8);
            if (mode >= 1)
                sp.temperature = 0.9f, sp.top_k = 5, sp.top_p = 0.95f;
            if (mode >= 2)
                sp.repetition_penalty = 1.4f, sp.presence_penalty = 0.3f,
                sp.frequency_penalty = 0.2f;
            if (mode >= 3)
                sp.bias = b, sp.n_bias = 2;
            struct pd_sample_result drawn, scored;
            CHECK_EQ_INT(pd_sample(s, &sp, l, prompt, 3, out, 2, &drawn), 0);
            CHECK_EQ_INT(pd_sample_score(7, l, drawn.token, sp.n_logprobs, &scored), 0);
            CHECK_EQ_INT(scored.token, drawn.token);
            CHECK(scored.logprob == drawn.logprob);
            CHECK_EQ_INT(scored.n_top, drawn.n_top);
            for (uint32_t k = 0; k < drawn.n_top; k++)
                CHECK(scored.top[k].token == drawn.top[k].token &&
                      scored.top[k].logprob == drawn.top[k].logprob);
        }
    pd_sampler_free(s);
}

/* ---- the token mask (constrained decoding, common/text/grammar): a token
 * whose bit is clear is never drawn, whatever its logit, bias or penalties;
 * the reported log-probabilities stay raw ---- */

static void mask_set(uint32_t *m, uint32_t words, const int *allowed, size_t n)
{
    memset(m, 0, words * sizeof(*m));
    for (size_t i = 0; i < n; i++)
        m[allowed[i] / 32] |= 1u << (allowed[i] % 32);
}

static void greedy_never_picks_a_masked_token(void)
{
    /* 70 tokens (a partial last word), the argmax at 40, masked */
    enum { V = 70, W = (V + 31) / 32 };
    float l[V];
    uint32_t m[W];
    struct pd_sampler *s = pd_sampler_new(V);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result r;
    for (int i = 0; i < V; i++)
        l[i] = (float)(i % 13) - 6.0f;
    l[40] = 50.0f;
    l[3] = 49.0f;
    l[69] = 48.0f;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 40);
    sp.mask = m;
    mask_set(m, W, (const int[]){3, 10, 69}, 3);
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 3); /* the best allowed */
    mask_set(m, W, (const int[]){0, 10, 69}, 3);
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 69); /* in the last, partial word */
    mask_set(m, W, (const int[]){0}, 1);
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 0); /* the only one, however low */
    /* ties among the allowed: the lower id */
    l[10] = l[20] = l[30] = 7.0f;
    mask_set(m, W, (const int[]){30, 20, 12}, 3);
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 20);
    /* random masks over random logits: greedy is the argmax of the allowed */
    uint64_t x = 12345;
    for (int iter = 0; iter < 500; iter++) {
        uint32_t best = UINT32_MAX;
        memset(m, 0, sizeof(m));
        for (int i = 0; i < V; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            l[i] = (float)((x >> 40) % 2001) / 100.0f - 10.0f;
            if ((x >> 20) % 5 == 0 || (i == iter % V)) {
                m[i / 32] |= 1u << (i % 32);
                if (best == UINT32_MAX || l[i] > l[best])
                    best = (uint32_t)i;
            }
        }
        CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
        CHECK_EQ_INT(r.token, best);
    }
    pd_sampler_free(s);
}

/* Sampled: only allowed tokens, in proportion to their probabilities among
 * themselves; top_k, top_p and min_p then cut the allowed ones */
static void sample_draws_only_allowed_tokens(void)
{
    uint32_t m[1];
    int allowed[] = {1, 3, 4, 6};
    mask_set(m, 1, allowed, 4);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    double want[7] = {0}, z = 0;
    sp.temperature = 1.0f;
    sp.mask = m;
    for (int i = 0; i < 4; i++)
        z += P[allowed[i]];
    for (int i = 0; i < 4; i++)
        want[allowed[i]] = P[allowed[i]] / z;
    check_distribution(sp, NULL, 0, want, CRIT[3], "mask {1, 3, 4, 6}");
    /* top_k 2: the two most probable allowed (1 and 3), not tokens 0 and 1 */
    double want_k[7] = {0, 0.25 / 0.35, 0, 0.1 / 0.35, 0, 0, 0};
    sp.top_k = 2;
    check_distribution(sp, NULL, 0, want_k, CRIT[1], "mask and top_k 2");
    /* top_p 0.6 of the allowed mass (0.42): 0.25 alone is 59.5%, with 0.1 83% */
    double want_p[7] = {0, 0.25 / 0.35, 0, 0.1 / 0.35, 0, 0, 0};
    sp.top_k = 0;
    sp.top_p = 0.6f;
    check_distribution(sp, NULL, 0, want_p, CRIT[1], "mask and top_p 0.6");
    /* min_p 0.3 of the best allowed (0.25): 0.1 stays, 0.05 and 0.02 go */
    double want_min[7] = {0, 0.25 / 0.35, 0, 0.1 / 0.35, 0, 0, 0};
    sp.top_p = 1.0f;
    sp.min_p = 0.3f;
    check_distribution(sp, NULL, 0, want_min, CRIT[1], "mask and min_p 0.3");
    /* a mask of one token: it, every time, even at temperature 100 */
    struct pd_sampler *s = pd_sampler_new(7);
    float l[7];
    struct pd_sample_result r;
    logits_of(l);
    mask_set(m, 1, (const int[]){5}, 1);
    sp = PD_SAMPLING_DEFAULT;
    sp.temperature = 100.0f;
    sp.mask = m;
    for (uint64_t seed = 0; seed < 500; seed++) {
        sp.seed = seed;
        CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
        CHECK_EQ_INT(r.token, 5);
    }
    pd_sampler_free(s);
}

/* The reported log-probabilities are the model's: the drawn token's raw
 * log-softmax (not renormalized over the allowed), the alternatives those
 * of the call without the mask, masked tokens among them */
static void mask_leaves_reported_logprobs_raw(void)
{
    float l[7];
    uint32_t m[1];
    struct pd_sampler *s = pd_sampler_new(7);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result raw, masked;
    logits_of(l);
    sp.n_logprobs = 5;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &raw), 0);
    mask_set(m, 1, (const int[]){2, 5}, 2);
    sp.mask = m;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &masked), 0);
    CHECK_EQ_INT(masked.token, 2);
    CHECK(fabs(masked.logprob - log(P[2])) < 1e-6); /* 0.15, not 0.15 / 0.18 */
    CHECK_EQ_INT(masked.n_top, raw.n_top);
    for (uint32_t k = 0; k < raw.n_top; k++)
        CHECK(masked.top[k].token == raw.top[k].token &&
              masked.top[k].logprob == raw.top[k].logprob);
    CHECK_EQ_INT(masked.top[0].token, 0); /* the most probable, though masked */
    sp.temperature = 0.8f;
    for (uint64_t seed = 0; seed < 100; seed++) {
        sp.seed = seed;
        CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &masked), 0);
        CHECK(masked.token == 2 || masked.token == 5);
        CHECK(fabs(masked.logprob - log(P[masked.token])) < 1e-6);
        CHECK(masked.top[0].token == 0 && masked.top[0].logprob == raw.top[0].logprob);
    }
    pd_sampler_free(s);
}

/* A mask must allow some token below n_vocab: bits past the vocabulary do
 * not count; pd_sample refuses what validate refuses */
static void sampling_validate_refuses_an_empty_mask(void)
{
    char err[256];
    uint32_t m[3] = {0, 0, 0};
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    sp.mask = m;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 70, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "the token mask allows no token");
    m[2] = ~0u << 6; /* tokens 70..95: none in a vocabulary of 70 */
    CHECK_EQ_INT(pd_sampling_validate(&sp, 70, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "mask");
    m[2] |= 1u << 5; /* token 69 */
    CHECK_EQ_INT(pd_sampling_validate(&sp, 70, err, sizeof(err)), 0);
    m[2] = 0;
    m[0] = 1; /* token 0 */
    CHECK_EQ_INT(pd_sampling_validate(&sp, 70, err, sizeof(err)), 0);
    m[0] = 0;
    m[1] = 0x80000000u; /* token 63 */
    CHECK_EQ_INT(pd_sampling_validate(&sp, 70, err, sizeof(err)), 0);
    /* a whole number of words: the last bit counts */
    CHECK_EQ_INT(pd_sampling_validate(&sp, 64, err, sizeof(err)), 0);
    m[1] = 0;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 64, err, sizeof(err)), -EINVAL);
    /* NULL: every token */
    sp.mask = NULL;
    CHECK_EQ_INT(pd_sampling_validate(&sp, 64, err, sizeof(err)), 0);
    /* pd_sample refuses an empty mask, and one whose bits are all past the vocabulary */
    struct pd_sampler *s = pd_sampler_new(7);
    float l[7];
    struct pd_sample_result r;
    uint32_t m7[1] = {0};
    logits_of(l);
    sp.mask = m7;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), -EINVAL);
    m7[0] = ~0u << 7;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), -EINVAL);
    sp.temperature = 1.0f;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), -EINVAL);
    m7[0] |= 1u << 6;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 6);
    pd_sampler_free(s);
}

/* The mask comes before the bias and the penalties: +100 on a masked token,
 * or negative penalties on one seen many times, never bring it back; -100 on
 * the one allowed token leaves it the one drawn */
static void mask_wins_over_bias_and_penalties(void)
{
    float l[7];
    uint32_t m[1];
    struct pd_sampler *s = pd_sampler_new(7);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_sample_result r;
    logits_of(l);
    mask_set(m, 1, (const int[]){1, 2}, 2);
    struct pd_logit_bias up[2] = {{6, 100.0f}, {0, 100.0f}};
    sp.mask = m;
    sp.bias = up;
    sp.n_bias = 2;
    CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
    CHECK_EQ_INT(r.token, 1);
    sp.temperature = 1.0f;
    uint32_t seen[7] = {0};
    for (uint64_t seed = 0; seed < 2000; seed++) {
        sp.seed = seed;
        CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
        CHECK(r.token == 1 || r.token == 2);
        seen[r.token]++;
    }
    CHECK(seen[1] > seen[2] && seen[2] > 0); /* 0.25 : 0.15 */
    /* -100 on the one allowed token */
    mask_set(m, 1, (const int[]){4}, 1);
    struct pd_logit_bias down[1] = {{4, -100.0f}};
    sp.bias = down;
    sp.n_bias = 1;
    for (int t = 0; t < 2; t++) {
        sp.temperature = t ? 0.7f : 0.0f;
        for (uint64_t seed = 0; seed < 50; seed++) {
            sp.seed = seed;
            CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, NULL, 0, &r), 0);
            CHECK_EQ_INT(r.token, 4);
        }
    }
    /* penalties that would raise a masked token (seen 20 times, negative
     * presence and frequency, repetition on a negative logit) */
    int32_t out[20];
    for (int i = 0; i < 20; i++)
        out[i] = 0;
    mask_set(m, 1, (const int[]){5, 6}, 2);
    sp = PD_SAMPLING_DEFAULT;
    sp.mask = m;
    sp.presence_penalty = -2.0f;
    sp.frequency_penalty = -2.0f;
    sp.repetition_penalty = 0.1f;
    for (int t = 0; t < 2; t++) {
        sp.temperature = t ? 1.5f : 0.0f;
        for (uint64_t seed = 0; seed < 200; seed++) {
            sp.seed = seed;
            CHECK_EQ_INT(pd_sample(s, &sp, l, NULL, 0, out, 20, &r), 0);
            CHECK(r.token == 5 || r.token == 6);
        }
    }
    pd_sampler_free(s);
}

static const struct pd_test tests[] = {
    PD_TEST(philox_matches_random123_vectors),
    PD_TEST(rng_uniform_in_unit_interval_and_keyed),
    PD_TEST(sample_temperature_one_follows_softmax),
    PD_TEST(sample_temperature_two_flattens),
    PD_TEST(sample_top_k_keeps_k_most_probable),
    PD_TEST(sample_top_p_keeps_smallest_prefix_reaching_p),
    PD_TEST(sample_min_p_drops_improbable),
    PD_TEST(sample_penalties_reweight_seen_tokens),
    PD_TEST(sample_repetition_penalty_divides_positive_multiplies_negative),
    PD_TEST(greedy_takes_highest_and_lowest_id_on_ties),
    PD_TEST(same_seed_and_position_same_token),
    PD_TEST(logprobs_are_raw_log_softmax),
    PD_TEST(sampling_validate_names_field_and_range),
    PD_TEST(sampling_validate_refuses_bad_logit_bias),
    PD_TEST(greedy_bias_minus_100_on_argmax_lets_second_win),
    PD_TEST(greedy_bias_plus_100_makes_a_low_token_win),
    PD_TEST(bias_leaves_reported_logprobs_raw),
    PD_TEST(bias_applies_before_repetition_penalty),
    PD_TEST(sample_bias_applies_before_temperature),
    PD_TEST(duplicate_bias_entries_add_up),
    PD_TEST(score_matches_log_softmax_for_every_token),
    PD_TEST(score_ties_take_the_lower_id_first),
    PD_TEST(score_refuses_tokens_outside_the_vocabulary_and_too_many_alternatives),
    PD_TEST(score_reports_what_sample_reports_for_its_token),
    PD_TEST(greedy_never_picks_a_masked_token),
    PD_TEST(sample_draws_only_allowed_tokens),
    PD_TEST(mask_leaves_reported_logprobs_raw),
    PD_TEST(sampling_validate_refuses_an_empty_mask),
    PD_TEST(mask_wins_over_bias_and_penalties),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
