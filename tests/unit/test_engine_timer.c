/* common/engine's kernel timer on the CPU engine: a step's time split by
 * kernel kind adds up to no more than the steps took, every kernel a Llama
 * or Qwen2 step runs has its share (and only those), the count of steps is
 * right, reading starts again from zero, and off means nothing is timed. */
#include "default_model.h"
#include "engine.h"
#include "model.h"
#include "pd_test.h"

#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static struct pd_engine *engine_of(const char *shape, struct pd_model **m)
{
    struct pd_model_params mp = {.load_format = PD_LOAD_DUMMY, .shape = shape, .seed = 3};
    *m = pd_test_load_model(&mp);
    struct pd_engine_params p = {
        .model = *m, .kv_cache_bytes = 8u << 20, .block_size = 16, .max_batched_tokens = 64};
    struct pd_engine *e = NULL;
    char err[512];
    if (pd_engine_new(&p, &e, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return e;
}

/* a 40-token prompt, then 5 decode steps sampling greedily in the step;
 * returns the wall time in ms and the steps run */
static double run(struct pd_engine *e, uint32_t *steps)
{
    const struct pd_sampling greedy = PD_SAMPLING_DEFAULT;
    struct pd_sample_result res;
    struct pd_kvseq s;
    int32_t tok[64];
    char err[256];
    for (int i = 0; i < 64; i++)
        tok[i] = (int32_t)((i * 7919u + 3) % pd_engine_n_vocab(e));
    pd_kvseq_init(&s);
    const uint64_t t0 = now_ns();
    CHECK_EQ_INT(pd_engine_prefill(e, &s, tok, 40, NULL, err, sizeof(err)), 0);
    int32_t next = tok[40];
    for (int k = 0; k < 5; k++) {
        struct pd_batch_item it = {.seq = &s,
                                   .tokens = &next,
                                   .n_tokens = 1,
                                   .n_logits = 1,
                                   .sampling = &greedy,
                                   .history = tok,
                                   .n_history = 40,
                                   .n_prompt = 40,
                                   .result = &res};
        CHECK_EQ_INT(pd_engine_step(e, &it, 1, err, sizeof(err)), 0);
        next = res.token;
    }
    const double ms = (double)(now_ns() - t0) / 1e6;
    pd_engine_seq_release(e, &s);
    *steps = 6;
    return ms;
}

static void check_split(const char *shape, bool biased)
{
    struct pd_model *m;
    struct pd_engine *e = engine_of(shape, &m);
    double ms[PD_K_KINDS];
    uint32_t steps, ran;
    CHECK_EQ_INT(pd_engine_kernel_timer(e, true), 0);
    const double wall = run(e, &ran);
    pd_engine_kernel_times(e, ms, &steps);
    CHECK_EQ_INT(steps, ran);
    double sum = 0;
    for (int k = 0; k < PD_K_KINDS; k++) {
        const bool runs = k != PD_K_BIAS || biased;
        if (runs && !(ms[k] > 0))
            PD_TEST_FAIL_("%s: %s took no time", shape,
                          pd_kernel_kind_name((enum pd_kernel_kind)k));
        if (!runs && ms[k] != 0)
            PD_TEST_FAIL_("%s: %s ran (%.3f ms)", shape,
                          pd_kernel_kind_name((enum pd_kernel_kind)k), ms[k]);
        sum += ms[k];
    }
    printf("  %s: %.2f ms of kernels in %.2f ms of steps\n", shape, sum, wall);
    CHECK(sum <= wall);
    /* read: from zero again; off: nothing timed */
    pd_engine_kernel_times(e, ms, &steps);
    CHECK_EQ_INT(steps, 0);
    CHECK(ms[PD_K_ATTENTION] == 0);
    CHECK_EQ_INT(pd_engine_kernel_timer(e, false), 0);
    run(e, &ran);
    pd_engine_kernel_times(e, ms, &steps);
    CHECK_EQ_INT(steps, 0);
    CHECK(ms[PD_K_QKV] == 0);
    pd_engine_free(e);
    pd_model_free(m);
}

static void engine_kernel_timer_splits_steps_by_kernel(void)
{
    check_split("tiny-gqa4", false);
    check_split("tiny-qwen2", true); /* the q/k/v biases */
}

static void engine_kernel_kinds_are_named(void)
{
    CHECK_STR(pd_kernel_kind_name(PD_K_ATTENTION), "attention");
    CHECK_STR(pd_kernel_kind_name(PD_K_SAMPLE), "sample");
    CHECK_STR(pd_kernel_kind_name(PD_K_KINDS), "?");
}

static const struct pd_test tests[] = {
    PD_TEST(engine_kernel_timer_splits_steps_by_kernel),
    PD_TEST(engine_kernel_kinds_are_named),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
