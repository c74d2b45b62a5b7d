/* decoded's scheduler on the tiny dummy model, without HTTP: preemption on a
 * small pool keeps every output equal to its solo run (DESIGN.md's "same
 * output" rule, near-ties from the real logits) and emits each token once;
 * what can never fit is refused; cancellation frees blocks. */
#include "dec_fixture.h"
#include "pd_test.h"

#include <errno.h>

enum { NJOB = 16, MAXT = 40 };

static struct dec_job *job(const int32_t *prompt, uint32_t n, uint32_t max_tokens,
                           const struct pd_sampling *sp, struct dec_out *res)
{
    return dec_rig_job(prompt, n, max_tokens, sp, res, res);
}

static void record(void *arg, const struct dec_event *e)
{
    (void)arg;
    dec_out_record(e->job->owner, e);
}

/* Take events until n jobs have finished (the test fails after 60 s). */
static void collect(struct dec_rig *r, uint32_t n) { dec_rig_collect(r, n, record, NULL); }

static void sched_small_pool_preempts_and_outputs_equal_solo(void)
{
    static int32_t prompts[NJOB][40], ref[NJOB][MAXT];
    static int near_tie[NJOB][MAXT];
    static struct dec_out res[NJOB];
    struct pd_sampling sp[NJOB];
    uint32_t np[NJOB];
    struct dec_rig r;

    /* 16 jobs of up to 35 + 40 tokens (5 blocks each) on 24 blocks */
    dec_rig_up(&r, 24, NJOB, DEC_FAILOVER_RETRY);
    struct pd_engine *solo = fx_engine(r.m, 64u << 20, 64, 1);
    for (int i = 0; i < NJOB; i++) {
        np[i] = 5 + (uint32_t)i * 2;
        for (uint32_t k = 0; k < np[i]; k++)
            prompts[i][k] = (int32_t)((k * 2654435761u + (uint32_t)i * 97u) % 256u);
        sp[i] = PD_SAMPLING_DEFAULT;
        if (i % 2) { /* seeded sampling: its draws depend on (seed, position) only */
            sp[i].temperature = 1.0f;
            sp[i].top_p = 0.9f;
            sp[i].seed = 77 + (uint64_t)i;
        }
        fx_solo_reference(solo, &sp[i], prompts[i], np[i], MAXT, ref[i], near_tie[i], NULL);
    }
    memset(res, 0, sizeof(res));
    for (int i = 0; i < NJOB; i++) {
        struct dec_job *j = job(prompts[i], np[i], MAXT, &sp[i], &res[i]);
        CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
        dec_job_unref(j);
    }
    collect(&r, NJOB);
    uint32_t compared = 0;
    for (int i = 0; i < NJOB; i++) {
        CHECK_EQ_INT(res[i].fin, DEC_FIN_LENGTH);
        CHECK_EQ_INT(res[i].n, MAXT); /* each token once, none re-emitted */
        for (uint32_t k = 0; k < MAXT; k++) {
            if (near_tie[i][k]) {
                printf("  job %d: near-tie at generated position %u; compared up to there\n", i,
                       k);
                break;
            }
            if (res[i].tok[k] != ref[i][k])
                PD_TEST_FAIL_("job %d position %u: scheduled %d, solo %d", i, k, res[i].tok[k],
                              ref[i][k]);
            compared++;
        }
    }
    double pre = pd_metric_value(r.sm.preemptions);
    printf("  %u of %u tokens compared; %.0f preemptions\n", compared, NJOB * MAXT, pre);
    CHECK(pre > 0);
    CHECK(compared >= NJOB * MAXT / 2);
    /* queue time once per job, not again at readmission */
    CHECK(dec_hist_count(r.reg, "t:queue_time") == NJOB);
    pd_engine_free(solo);
    dec_rig_down(&r);
}

static void sched_refuses_what_can_never_fit(void)
{
    struct dec_rig r;
    struct dec_out res[1] = {0};
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    int32_t prompt[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    dec_rig_up(&r, 8, 4, DEC_FAILOVER_RETRY); /* 128 tokens */
    struct dec_job *j = job(prompt, 10, 119, &sp, &res[0]);
    CHECK_EQ_INT(dec_sched_submit(r.s, j), -E2BIG);
    dec_job_unref(j);
    /* the largest that fits runs to the end alone */
    j = job(prompt, 10, 118, &sp, &res[0]);
    CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
    dec_job_unref(j);
    collect(&r, 1);
    CHECK_EQ_INT(res[0].fin, DEC_FIN_LENGTH);
    CHECK_EQ_INT(res[0].n, 118);
    dec_rig_down(&r);
}

static void sched_cancel_frees_blocks_of_running_and_queued(void)
{
    struct dec_rig r;
    static struct dec_out res[4];
    struct dec_job *jobs[4];
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    int32_t prompt[20] = {0};
    memset(res, 0, sizeof(res));
    dec_rig_up(&r, 64, 2, DEC_FAILOVER_RETRY);
    for (int i = 0; i < 4; i++) {
        prompt[0] = i;
        jobs[i] = job(prompt, 20, 200, &sp, &res[i]);
        CHECK_EQ_INT(dec_sched_submit(r.s, jobs[i]), 0);
    }
    uint64_t deadline = fx_deadline(30);
    while (pd_metric_value(r.sm.running) < 2 || pd_metric_value(r.sm.kv_used) == 0)
        fx_poll(deadline);
    CHECK(pd_metric_value(r.sm.waiting) == 2);
    for (int i = 0; i < 4; i++) {
        dec_job_cancel(jobs[i]);
        dec_job_unref(jobs[i]);
    }
    collect(&r, 4);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(res[i].fin, DEC_FIN_CANCELLED);
    /* the step that dropped them sets the gauges right after their events */
    deadline = fx_deadline(5);
    while (pd_metric_value(r.sm.kv_used) != 0 || pd_metric_value(r.sm.running) != 0 ||
           pd_metric_value(r.sm.waiting) != 0)
        fx_poll(deadline);
    dec_rig_down(&r);
}

static const struct pd_test tests[] = {
    PD_TEST(sched_small_pool_preempts_and_outputs_equal_solo),
    PD_TEST(sched_refuses_what_can_never_fit),
    PD_TEST(sched_cancel_frees_blocks_of_running_and_queued),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
