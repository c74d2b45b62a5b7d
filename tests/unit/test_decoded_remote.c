/* decoded's scheduler, REMOTE state, on the tiny dummy model without kvx:
 * the test plays the loop and the prefill peer. On DEC_EV_REMOTE_START it
 * computes the prompt's KV on a second engine (the "peer"), copies the blocks
 * into the ones the scheduler granted, samples the first token as prefilld
 * does (pd_sample with an empty output) and reports DONE; or it reports a
 * failure and the failover policy takes over. Outputs must equal a solo local
 * run (DESIGN.md's "same output" rule), REMOTE blocks must survive
 * preemption pressure, and a cancelled REMOTE job keeps its blocks until the
 * transfer is reported over. */
#include "default_model.h"
#include "metrics.h"
#include "pd_test.h"
#include "scheduler.h"

#include <errno.h>
#include <math.h>
#include <time.h>

#define NEAR_TIE 1e-3
#define BLOCK_BYTES 8192 /* tiny: 2 layers x 2 KV heads x 16 dims x K,V x fp32 x 16 tokens */

enum { NJOB = 12, MAXT = 24 };

/* what the fake peer does with the n-th START it sees for a job */
enum act { ACT_DONE, ACT_FAIL, ACT_FAIL_EXHAUSTED, ACT_HOLD };

struct result {
    int32_t tok[256];
    uint32_t n;
    enum dec_finish fin;
    int status;
    char err[256];
    bool done;
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
    struct pd_model *m;
    struct pd_engine *e, *peer;
    struct dec_sched *s;
    struct pd_metrics *reg;
    struct dec_sched_metrics sm;
    struct pd_sampler *sampler;
};

static void notify(void *arg) { (void)arg; }

static struct pd_engine *engine(const struct pd_model *m, uint64_t kv_bytes, uint32_t max_seqs)
{
    struct pd_engine_params p = {.model = m, .kv_cache_bytes = kv_bytes,
                                 .max_batched_tokens = 64, .max_batch_items = max_seqs};
    struct pd_engine *e = NULL;
    char err[512];
    if (pd_engine_new(&p, &e, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return e;
}

static void rig_up(struct rig *r, uint32_t n_blocks, uint32_t max_seqs, enum dec_failover f)
{
    char err[512];
    memset(r, 0, sizeof(*r));
    struct pd_model_params mp = {.load_format = PD_LOAD_DUMMY, .shape = "tiny", .seed = 5};
    r->m = pd_test_load_model(&mp);
    r->e = engine(r->m, (uint64_t)n_blocks * BLOCK_BYTES, max_seqs);
    r->peer = engine(r->m, 64u << 20, 1);
    CHECK_EQ_INT(pd_kvcache_block_bytes(pd_engine_kvcache(r->e)), BLOCK_BYTES);
    r->reg = pd_metrics_new(NULL, NULL);
    r->sm.preemptions = pd_metrics_counter(r->reg, "t:preemptions", NULL, "h");
    r->sm.kv_used = pd_metrics_gauge(r->reg, "t:kv_used", NULL, "h");
    r->sm.running = pd_metrics_gauge(r->reg, "t:running", NULL, "h");
    r->sm.prompt_tokens = pd_metrics_counter(r->reg, "t:prompt", NULL, "h");
    r->sm.remote_prompt_tokens = pd_metrics_counter(r->reg, "t:remote_prompt", NULL, "h");
    r->sm.remote_running = pd_metrics_gauge(r->reg, "t:remote_running", NULL, "h");
    r->sampler = pd_sampler_new(pd_engine_n_vocab(r->e));
    struct dec_sched_params p = {.engine = r->e, .max_num_seqs = max_seqs, .max_waiting = 64,
                                 .idle_tick_ms = 10, .metrics = r->sm, .notify = notify,
                                 .failover = f};
    if (dec_sched_new(&p, &r->s, err, sizeof(err)) < 0 || pd_worker_start(dec_sched_worker(r->s), err, sizeof(err)))
        PD_TEST_FAIL_("%s", err);
}

static void rig_down(struct rig *r)
{
    pd_worker_stop(dec_sched_worker(r->s));
    struct pd_kvcache *kc = pd_engine_kvcache(r->e);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), pd_kvcache_n_blocks(kc));
    dec_sched_free(r->s);
    pd_metrics_free(r->reg);
    pd_sampler_free(r->sampler);
    pd_engine_free(r->peer);
    pd_engine_free(r->e);
    pd_model_free(r->m);
}

static struct dec_job *job(struct result *res, uint32_t max_tokens)
{
    struct dec_job *j = dec_job_new();
    CHECK(j && (j->prompt = malloc(res->n_prompt * sizeof(int32_t))));
    memcpy(j->prompt, res->prompt, res->n_prompt * sizeof(int32_t));
    j->n_prompt = res->n_prompt;
    j->max_tokens = max_tokens;
    j->sampling = res->sp;
    j->ignore_eos = true;
    j->remote = res->remote;
    j->t_arrival_ns = pd_now_ns();
    j->owner = res;
    snprintf(j->id, sizeof(j->id), "job-%p", (void *)res);
    return j;
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
    char *dst = (char *)pd_kvcache_pool(pd_engine_kvcache(r->e));
    const char *src = (const char *)pd_kvcache_pool(pkc);
    for (uint32_t b = 0; b < e->n_blocks; b++)
        memcpy(dst + (size_t)e->blocks[b] * BLOCK_BYTES, src + (size_t)q.blocks[b] * BLOCK_BYTES,
               BLOCK_BYTES);
    struct pd_sample_result first;
    CHECK_EQ_INT(pd_sample(r->sampler, &x->sp, l, x->prompt, x->n_prompt, NULL, 0, &first), 0);
    pd_engine_seq_release(r->peer, &q);
    free(l);
    dec_sched_remote_done(r->s, e->job, &first);
}

static void on_event(struct rig *r, struct dec_event *e)
{
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
            dec_sched_remote_failed(r->s, e->job, false, 502, "peer p1 failed: timeout");
        else if (a == ACT_FAIL_EXHAUSTED)
            dec_sched_remote_failed(r->s, e->job, true, 503, "no healthy prefill peer");
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
    if (e->has_token) {
        CHECK(x->n < 256);
        x->tok[x->n++] = e->token.token;
    }
    if (e->finish != DEC_FIN_NONE) {
        CHECK(!x->done);
        x->done = true;
        x->fin = e->finish;
        x->status = e->status;
        snprintf(x->err, sizeof(x->err), "%s", e->err);
    }
}

static void pump(struct rig *r)
{
    for (struct dec_event *e = dec_sched_take(r->s), *next; e; e = next) {
        next = e->next;
        on_event(r, e);
        dec_event_free(e);
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void collect(struct rig *r, struct result *res, int n)
{
    uint64_t deadline = pd_now_ns() + 60000000000u;
    for (;;) {
        pump(r);
        int left = 0;
        for (int i = 0; i < n; i++)
            left += !res[i].done;
        if (!left)
            return;
        CHECK(pd_now_ns() < deadline);
        sleep_ms(1);
    }
}

static void reference(struct pd_engine *e, const struct result *x, uint32_t max_tokens,
                      int32_t *tok, int *near_tie)
{
    const uint32_t V = pd_engine_n_vocab(e);
    float *l = malloc(V * sizeof(float));
    struct pd_sampler *s = pd_sampler_new(V);
    struct pd_kvseq q;
    char err[256];
    pd_kvseq_init(&q);
    CHECK_EQ_INT(pd_engine_prefill(e, &q, x->prompt, x->n_prompt, l, err, sizeof(err)), 0);
    for (uint32_t k = 0; k < max_tokens; k++) {
        float a = -INFINITY, b = -INFINITY, mx = 0;
        for (uint32_t v = 0; v < V; v++) {
            mx = fabsf(l[v]) > mx ? fabsf(l[v]) : mx;
            if (l[v] > a)
                b = a, a = l[v];
            else if (l[v] > b)
                b = l[v];
        }
        near_tie[k] = a - b < NEAR_TIE * mx;
        struct pd_sample_result res;
        CHECK_EQ_INT(pd_sample(s, &x->sp, l, x->prompt, x->n_prompt, tok, k, &res), 0);
        tok[k] = res.token;
        struct pd_batch_item it = {.seq = &q, .tokens = &tok[k], .n_tokens = 1, .n_logits = 1,
                                   .logits = l};
        if (k + 1 < max_tokens)
            CHECK_EQ_INT(pd_engine_step(e, &it, 1, err, sizeof(err)), 0);
    }
    pd_engine_seq_release(e, &q);
    pd_sampler_free(s);
    free(l);
}

static uint32_t compare(const struct result *x, int i, const int32_t *ref, const int *near_tie)
{
    CHECK_EQ_INT(x->fin, DEC_FIN_LENGTH);
    CHECK_EQ_INT(x->n, MAXT);
    for (uint32_t k = 0; k < MAXT; k++) {
        if (near_tie[k]) {
            printf("  job %d: near-tie at generated position %u\n", i, k);
            return k;
        }
        if (x->tok[k] != ref[k])
            PD_TEST_FAIL_("job %d position %u: got %d, solo %d", i, k, x->tok[k], ref[k]);
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
        reference(r.peer, x, MAXT, ref[i], near_tie[i]);
    }
    for (int i = 0; i < NJOB; i++) {
        struct dec_job *j = job(&res[i], MAXT);
        CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
        dec_job_unref(j);
    }
    collect(&r, res, NJOB);
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
           pd_metric_value(r.sm.preemptions));
    CHECK(compared >= NJOB * MAXT / 2);
    CHECK(pd_metric_value(r.sm.remote_prompt_tokens) == remote_tokens);
    /* a preempted job recomputes locally, but its prompt counts once */
    CHECK(pd_metric_value(r.sm.prompt_tokens) == local_tokens);
    CHECK(pd_metric_value(r.sm.remote_running) == 0);
    rig_down(&r);
}

static void remote_cancel_keeps_blocks_until_released(void)
{
    static int32_t prompt[40];
    struct result res[1];
    struct rig r;
    rig_up(&r, 32, 4, DEC_FAILOVER_RETRY);
    memset(res, 0, sizeof(res));
    for (int k = 0; k < 40; k++)
        prompt[k] = k + 1;
    res[0] = (struct result){.remote = true, .prompt = prompt, .n_prompt = 40,
                             .sp = PD_SAMPLING_DEFAULT, .plan = {ACT_HOLD}};
    struct dec_job *j = job(&res[0], 8);
    CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
    uint64_t deadline = pd_now_ns() + 10000000000u;
    while (!res[0].held) {
        pump(&r);
        CHECK(pd_now_ns() < deadline);
        sleep_ms(1);
    }
    CHECK(pd_metric_value(r.sm.kv_used) == 3);
    dec_job_cancel(j);
    while (res[0].cancels == 0) {
        pump(&r);
        CHECK(pd_now_ns() < deadline);
        sleep_ms(1);
    }
    /* the transfer may still write them: held until it is reported over */
    sleep_ms(50);
    pump(&r);
    CHECK(!res[0].done);
    CHECK(pd_metric_value(r.sm.kv_used) == 3);
    CHECK(pd_metric_value(r.sm.remote_running) == 1);
    dec_sched_remote_failed(r.s, res[0].held, true, 499, "cancelled");
    dec_job_unref(res[0].held);
    collect(&r, res, 1);
    CHECK_EQ_INT(res[0].fin, DEC_FIN_CANCELLED);
    CHECK_EQ_INT(res[0].cancels, 1);
    while (pd_metric_value(r.sm.kv_used) != 0) {
        CHECK(pd_now_ns() < deadline);
        sleep_ms(1);
    }
    dec_job_unref(j);
    rig_down(&r);
}

static void remote_fail_policy_finishes_with_the_status(void)
{
    static int32_t prompt[20];
    struct result res[1];
    struct rig r;
    rig_up(&r, 32, 4, DEC_FAILOVER_FAIL);
    memset(res, 0, sizeof(res));
    for (int k = 0; k < 20; k++)
        prompt[k] = 3 * k + 1;
    res[0] = (struct result){.remote = true, .prompt = prompt, .n_prompt = 20,
                             .sp = PD_SAMPLING_DEFAULT, .plan = {ACT_FAIL}};
    struct dec_job *j = job(&res[0], 8);
    CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
    dec_job_unref(j);
    collect(&r, res, 1);
    CHECK_EQ_INT(res[0].fin, DEC_FIN_ERROR);
    CHECK_EQ_INT(res[0].status, 502);
    CHECK(strstr(res[0].err, "peer p1 failed: timeout") != NULL);
    CHECK_EQ_INT(res[0].starts, 1);
    CHECK(pd_metric_value(r.sm.prompt_tokens) == 0);
    rig_down(&r);
}

static void remote_local_policy_prefills_locally_at_once(void)
{
    static int32_t prompt[33], ref[MAXT];
    static int near_tie[MAXT];
    struct result res[1];
    struct rig r;
    rig_up(&r, 32, 4, DEC_FAILOVER_LOCAL);
    memset(res, 0, sizeof(res));
    for (int k = 0; k < 33; k++)
        prompt[k] = (7 * k + 2) % 256;
    res[0] = (struct result){.remote = true, .prompt = prompt, .n_prompt = 33,
                             .sp = PD_SAMPLING_DEFAULT, .plan = {ACT_FAIL, ACT_DONE}};
    reference(r.peer, &res[0], MAXT, ref, near_tie);
    struct dec_job *j = job(&res[0], MAXT);
    CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
    dec_job_unref(j);
    collect(&r, res, 1);
    compare(&res[0], 0, ref, near_tie);
    CHECK_EQ_INT(res[0].starts, 1); /* no retry under "local" */
    CHECK(pd_metric_value(r.sm.prompt_tokens) == 33);
    CHECK(pd_metric_value(r.sm.remote_prompt_tokens) == 0);
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
