/* Sampling: the Philox generator against its published answers, each sampler
 * against its exact target distribution (chi-square, fixed seed), penalties,
 * greedy ties, log-probabilities, validation. */
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
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
