/* decoded's scheduler, REMOTE state, on the tiny dummy model without kvx:
 * the test plays the loop and the prefill peer. On DEC_EV_REMOTE_START it
 * computes the prompt's KV on a second engine (the "peer"), copies the blocks
 * into the ones the scheduler granted, samples the first token as prefilld
 * does (pd_sample with an empty output) and reports DONE; or it reports a
 * failure and the failover policy takes over. Outputs must equal a solo local
 * run (DESIGN.md's "same output" rule), REMOTE blocks must survive
 * preemption pressure, and a cancelled REMOTE job keeps its blocks until the
 * transfer is reported over. */
#include "dec_fixture.h"
#include "pd_test.h"

#include <errno.h>

enum { NJOB = 12, MAXT = 24 };

/* what the fake peer does with the n-th START it sees for a job */
enum act { ACT_DONE, ACT_FAIL, ACT_FAIL_EXHAUSTED, ACT_HOLD };

struct result {
    struct dec_out out; /* tokens and end */
    bool remote; /* submit as remote */
    enum act plan[4]; /* per START, in order */
    uint32_t starts, cancels;
    uint32_t last_epoch;
    const int32_t *prompt;
    uint32_t n_prompt;
    struct pd_sampling sp;
    struct dec_job *held; /* ACT_HOLD: the job whose transfer is "in flight" */
};

struct rig {
    struct dec_rig d;
    struct pd_engine *peer; /* the prefill peer; also runs the solo references */
    struct pd_sampler *sampler; /* the peer's, for the first token */
};

static void rig_up(struct rig *r, uint32_t n_blocks, uint32_t max_seqs, enum dec_failover f)
{
    dec_rig_up(&r->d, n_blocks, max_seqs, f);
    r->peer = fx_engine(r->d.m, 64u << 20, 64, 1);
    r->sampler = pd_sampler_new(pd_engine_n_vocab(r->d.e));
}

static void rig_down(struct rig *r)
{
    pd_sampler_free(r->sampler);
    pd_engine_free(r->peer);
    dec_rig_down(&r->d);
}

static struct dec_job *job(struct result *res, uint32_t max_tokens)
{
    struct dec_job *j =
        dec_rig_job(res->prompt, res->n_prompt, max_tokens, &res->sp, res, &res->out);
    j->remote = res->remote;
    return j;
}

/* A job for res, submitted; the scheduler holds the only reference. */
static void submit(struct rig *r, struct result *res, uint32_t max_tokens)
{
    struct dec_job *j = job(res, max_tokens);
    CHECK_EQ_INT(dec_sched_submit(r->d.s, j), 0);
    dec_job_unref(j);
}

/* The peer: the prompt's KV into the granted blocks, the first token. */
static void peer_prefill(struct rig *r, const struct dec_event *e, struct result *x)
{
    struct pd_kvcache *pkc = pd_engine_kvcache(r->peer);
    const uint32_t V = pd_engine_n_vocab(r->peer);
    float *l = malloc(V * sizeof(float));
    struct pd_kvseq q;
    char err[256];
    pd_kvseq_init(&q);
    CHECK(l);
    CHECK_EQ_INT(pd_engine_prefill(r->peer, &q, x->prompt, x->n_prompt, l, err, sizeof(err)), 0);
    CHECK_EQ_INT(q.n_blocks, e->n_blocks);
    char *dst = (char *)pd_kvcache_pool(pd_engine_kvcache(r->d.e));
    const char *src = (const char *)pd_kvcache_pool(pkc);
    for (uint32_t b = 0; b < e->n_blocks; b++)
        memcpy(dst + (size_t)e->blocks[b] * DEC_BLOCK_BYTES,
               src + (size_t)q.blocks[b] * DEC_BLOCK_BYTES, DEC_BLOCK_BYTES);
    struct pd_sample_result first;
    CHECK_EQ_INT(pd_sample(r->sampler, &x->sp, l, x->prompt, x->n_prompt, NULL, 0, &first), 0);
    pd_engine_seq_release(r->peer, &q);
    free(l);
    dec_sched_remote_done(r->d.s, e->job, &first, false);
}

static void on_event(void *arg, const struct dec_event *e)
{
    struct rig *r = arg;
    struct result *x = e->job->owner;
    if (e->kind == DEC_EV_REMOTE_START) {
        CHECK(x->remote);
        CHECK(x->starts < 4);
        CHECK_EQ_INT(e->n_blocks, (x->n_prompt + 15) / 16);
        CHECK_EQ_INT(e->epoch, x->starts); /* epoch + 1 per retry */
        x->last_epoch = e->epoch;
        enum act a = x->plan[x->starts++];
        if (a == ACT_DONE)
            peer_prefill(r, e, x);
        else if (a == ACT_FAIL)
            dec_sched_remote_failed(r->d.s, e->job, false, 502, "peer p1 failed: timeout");
        else if (a == ACT_FAIL_EXHAUSTED)
            dec_sched_remote_failed(r->d.s, e->job, true, 503, "no healthy prefill peer");
        else {
            dec_job_ref(e->job);
            x->held = e->job;
        }
        return;
    }
    if (e->kind == DEC_EV_REMOTE_CANCEL) {
        x->cancels++;
        return;
    }
    dec_out_record(&x->out, e);
}

static void pump(struct rig *r) { dec_rig_pump(&r->d, on_event, r); }

/* Pumps until n jobs in all have finished (the test fails after 60 s). */
static void collect(struct rig *r, uint32_t n) { dec_rig_collect(&r->d, n, on_event, r); }

static uint32_t compare(const struct result *x, int i, const int32_t *ref, const int *near_tie)
{
    CHECK_EQ_INT(x->out.fin, DEC_FIN_LENGTH);
    CHECK_EQ_INT(x->out.n, MAXT);
    for (uint32_t k = 0; k < MAXT; k++) {
        if (near_tie[k]) {
            printf("  job %d: near-tie at generated position %u\n", i, k);
            return k;
        }
        if (x->out.tok[k] != ref[k])
            PD_TEST_FAIL_("job %d position %u: got %d, solo %d", i, k, x->out.tok[k], ref[k]);
    }
    return MAXT;
}

static void remote_jobs_equal_local_under_preemption_and_failover(void)
{
    static int32_t prompts[NJOB][48], ref[NJOB][MAXT];
    static int near_tie[NJOB][MAXT];
    static struct result res[NJOB];
    struct rig r;
    uint32_t remote_tokens = 0, local_tokens = 0;

    /* 12 jobs of up to 38 + 24 tokens (4 blocks each) on 20 blocks: preemptions */
    rig_up(&r, 20, NJOB, DEC_FAILOVER_RETRY);
    memset(res, 0, sizeof(res));
    for (int i = 0; i < NJOB; i++) {
        struct result *x = &res[i];
        x->n_prompt = 5 + (uint32_t)i * 3;
        for (uint32_t k = 0; k < x->n_prompt; k++)
            prompts[i][k] = (int32_t)((k * 2654435761u + (uint32_t)i * 131u) % 256u);
        x->prompt = prompts[i];
        x->sp = PD_SAMPLING_DEFAULT;
        if (i % 3 == 1) {
            x->sp.temperature = 1.0f;
            x->sp.top_p = 0.9f;
            x->sp.seed = 99 + (uint64_t)i;
        }
        x->remote = i % 4 != 3; /* a few local ones beside */
        /* plans: done at once; fail then done elsewhere (epoch 1); no peer left -> local */
        enum act plans[3][4] = {{ACT_DONE}, {ACT_FAIL, ACT_DONE}, {ACT_FAIL, ACT_FAIL_EXHAUSTED}};
        memcpy(x->plan, plans[i % 3], sizeof(x->plan));
        if (x->remote && i % 3 != 2)
            remote_tokens += x->n_prompt;
        fx_solo_reference(r.peer, &x->sp, x->prompt, x->n_prompt, MAXT, ref[i], near_tie[i],
                          NULL);
    }
    for (int i = 0; i < NJOB; i++)
        submit(&r, &res[i], MAXT);
    collect(&r, NJOB);
    uint32_t compared = 0;
    for (int i = 0; i < NJOB; i++) {
        compared += compare(&res[i], i, ref[i], near_tie[i]);
        if (!res[i].remote)
            CHECK_EQ_INT(res[i].starts, 0);
        else
            CHECK_EQ_INT(res[i].starts, i % 3 == 0 ? 1 : 2);
        if (!res[i].remote || i % 3 == 2)
            local_tokens += res[i].n_prompt;
    }
    printf("  %u of %u tokens compared; %.0f preemptions\n", compared, NJOB * MAXT,
           pd_metric_value(r.d.sm.preemptions));
    CHECK(compared >= NJOB * MAXT / 2);
    CHECK(pd_metric_value(r.d.sm.remote_prompt_tokens) == remote_tokens);
    /* a preempted job recomputes locally, but its prompt counts once */
    CHECK(pd_metric_value(r.d.sm.prompt_tokens) == local_tokens);
    CHECK(pd_metric_value(r.d.sm.remote_running) == 0);
    rig_down(&r);
}

static void remote_cancel_keeps_blocks_until_released(void)
{
    static int32_t prompt[40];
    for (int k = 0; k < 40; k++)
        prompt[k] = k + 1;
    struct result res[1] = {{.remote = true, .prompt = prompt, .n_prompt = 40,
                             .sp = PD_SAMPLING_DEFAULT, .plan = {ACT_HOLD}}};
    struct rig r;
    rig_up(&r, 32, 4, DEC_FAILOVER_RETRY);
    struct dec_job *j = job(&res[0], 8);
    CHECK_EQ_INT(dec_sched_submit(r.d.s, j), 0);
    uint64_t deadline = fx_deadline(10);
    while (!res[0].held) {
        pump(&r);
        fx_poll(deadline);
    }
    CHECK(pd_metric_value(r.d.sm.kv_used) == 3);
    dec_job_cancel(j);
    while (res[0].cancels == 0) {
        pump(&r);
        fx_poll(deadline);
    }
    /* the transfer may still write them: held until it is reported over */
    fx_sleep_ms(50);
    pump(&r);
    CHECK(!res[0].out.done);
    CHECK(pd_metric_value(r.d.sm.kv_used) == 3);
    CHECK(pd_metric_value(r.d.sm.remote_running) == 1);
    dec_sched_remote_failed(r.d.s, res[0].held, true, 499, "cancelled");
    dec_job_unref(res[0].held);
    collect(&r, 1);
    CHECK_EQ_INT(res[0].out.fin, DEC_FIN_CANCELLED);
    CHECK_EQ_INT(res[0].cancels, 1);
    while (pd_metric_value(r.d.sm.kv_used) != 0)
        fx_poll(deadline);
    dec_job_unref(j);
    rig_down(&r);
}

static void remote_fail_policy_finishes_with_the_status(void)
{
    static int32_t prompt[20];
    for (int k = 0; k < 20; k++)
        prompt[k] = 3 * k + 1;
    struct result res[1] = {{.remote = true, .prompt = prompt, .n_prompt = 20,
                             .sp = PD_SAMPLING_DEFAULT, .plan = {ACT_FAIL}}};
    struct rig r;
    rig_up(&r, 32, 4, DEC_FAILOVER_FAIL);
    submit(&r, &res[0], 8);
    collect(&r, 1);
    CHECK_EQ_INT(res[0].out.fin, DEC_FIN_ERROR);
    CHECK_EQ_INT(res[0].out.status, 502);
    CHECK(strstr(res[0].out.err, "peer p1 failed: timeout") != NULL);
    CHECK_EQ_INT(res[0].starts, 1);
    CHECK(pd_metric_value(r.d.sm.prompt_tokens) == 0);
    rig_down(&r);
}

static void remote_local_policy_prefills_locally_at_once(void)
{
    static int32_t prompt[33], ref[MAXT];
    static int near_tie[MAXT];
    for (int k = 0; k < 33; k++)
        prompt[k] = (7 * k + 2) % 256;
    struct result res[1] = {{.remote = true, .prompt = prompt, .n_prompt = 33,
                             .sp = PD_SAMPLING_DEFAULT, .plan = {ACT_FAIL, ACT_DONE}}};
    struct rig r;
    rig_up(&r, 32, 4, DEC_FAILOVER_LOCAL);
    fx_solo_reference(r.peer, &res[0].sp, prompt, 33, MAXT, ref, near_tie, NULL);
    submit(&r, &res[0], MAXT);
    collect(&r, 1);
    compare(&res[0], 0, ref, near_tie);
    CHECK_EQ_INT(res[0].starts, 1); /* no retry under "local" */
    CHECK(pd_metric_value(r.d.sm.prompt_tokens) == 33);
    CHECK(pd_metric_value(r.d.sm.remote_prompt_tokens) == 0);
    rig_down(&r);
}

static const struct pd_test tests[] = {
    PD_TEST(remote_jobs_equal_local_under_preemption_and_failover),
    PD_TEST(remote_cancel_keeps_blocks_until_released),
    PD_TEST(remote_fail_policy_finishes_with_the_status),
    PD_TEST(remote_local_policy_prefills_locally_at_once),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
