/* decoded's scheduler on the tiny dummy model, without HTTP: preemption on a
 * small pool keeps every output equal to its solo run (DESIGN.md's "same
 * output" rule, near-ties from the real logits) and emits each token once;
 * what can never fit is refused; cancellation frees blocks. */
#include "default_model.h"
#include "metrics.h"
#include "pd_test.h"
#include "scheduler.h"

#include <errno.h>
#include <math.h>
#include <time.h>

#define NEAR_TIE 1e-3 /* top-2 gap below this x max|logit|: a near-tie */
#define BLOCK_BYTES 8192 /* tiny: 2 layers x 2 KV heads x 16 dims x K,V x fp32 x 16 tokens */

enum { NJOB = 16, MAXT = 40 };

struct rig {
    struct pd_model *m;
    struct pd_engine *e;
    struct dec_sched *s;
    struct pd_metrics *reg;
    struct dec_sched_metrics sm;
};

struct result {
    int32_t tok[256];
    uint32_t n;
    enum dec_finish fin;
    bool done;
    const struct dec_event *final; /* allocated with the job: a cancel's event must be it */
};

static void notify(void *arg) { (void)arg; }

static struct pd_model *tiny(void)
{
    struct pd_model_params p = {.load_format = PD_LOAD_DUMMY, .shape = "tiny", .seed = 5};
    return pd_test_load_model(&p);
}

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

static void rig_up(struct rig *r, uint32_t n_blocks, uint32_t max_seqs)
{
    static const double qb[] = {0.001, 0.01, 0.1, 1, 10};
    static const double bb[] = {1, 2, 4, 8, 16};
    char err[512];
    memset(r, 0, sizeof(*r));
    r->m = tiny();
    r->e = engine(r->m, (uint64_t)n_blocks * BLOCK_BYTES, max_seqs);
    CHECK_EQ_INT(pd_kvcache_n_blocks(pd_engine_kvcache(r->e)), n_blocks);
    r->reg = pd_metrics_new(NULL, NULL);
    r->sm.preemptions = pd_metrics_counter(r->reg, "t:preemptions", NULL, "h");
    r->sm.kv_used = pd_metrics_gauge(r->reg, "t:kv_used", NULL, "h");
    r->sm.running = pd_metrics_gauge(r->reg, "t:running", NULL, "h");
    r->sm.waiting = pd_metrics_gauge(r->reg, "t:waiting", NULL, "h");
    r->sm.queue_time = pd_metrics_histogram(r->reg, "t:queue_time", "h", qb, 5);
    r->sm.batch_size = pd_metrics_histogram(r->reg, "t:batch_size", "h", bb, 5);
    struct dec_sched_params p = {.engine = r->e, .max_num_seqs = max_seqs, .max_waiting = 64,
                                 .idle_tick_ms = 10, .metrics = r->sm, .notify = notify};
    if (dec_sched_new(&p, &r->s, err, sizeof(err)) < 0 || pd_worker_start(dec_sched_worker(r->s), err, sizeof(err)))
        PD_TEST_FAIL_("%s", err);
}

static void rig_down(struct rig *r)
{
    pd_worker_stop(dec_sched_worker(r->s));
    /* the compute thread is gone: the pool is ours to look at */
    struct pd_kvcache *kc = pd_engine_kvcache(r->e);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), pd_kvcache_n_blocks(kc));
    dec_sched_free(r->s);
    pd_metrics_free(r->reg);
    pd_engine_free(r->e);
    pd_model_free(r->m);
}

/* A histogram's _count from the rendered text. */
static double hist_count(struct pd_metrics *reg, const char *name)
{
    char *text, key[128];
    size_t len;
    double v = -1;
    CHECK_EQ_INT(pd_metrics_render(reg, &text, &len), 0);
    snprintf(key, sizeof(key), "%s_count ", name);
    const char *p = strstr(text, key);
    if (p)
        v = strtod(p + strlen(key), NULL);
    free(text);
    return v;
}

static struct dec_job *job(const int32_t *prompt, uint32_t n, uint32_t max_tokens,
                           const struct pd_sampling *sp, struct result *res)
{
    struct dec_job *j = dec_job_new();
    CHECK(j && (j->prompt = malloc(n * sizeof(int32_t))));
    memcpy(j->prompt, prompt, n * sizeof(int32_t));
    j->n_prompt = n;
    j->max_tokens = max_tokens;
    j->sampling = *sp;
    j->ignore_eos = true;
    j->t_arrival_ns = pd_now_ns();
    j->owner = res;
    res->final = j->final;
    CHECK(res->final != NULL && j->report != NULL);
    snprintf(j->id, sizeof(j->id), "job-%p", (void *)res);
    return j;
}

/* Take events until every result is done (the test fails after 60 s). */
static void collect(struct rig *r, struct result *res, int n)
{
    uint64_t deadline = pd_now_ns() + 60000000000u;
    for (;;) {
        for (struct dec_event *e = dec_sched_take(r->s), *next; e; e = next) {
            next = e->next;
            struct result *x = e->job->owner;
            if (e->has_token) {
                CHECK(x->n < 256);
                x->tok[x->n++] = e->token.token;
            }
            if (e->finish != DEC_FIN_NONE) {
                CHECK(!x->done);
                /* an end with no token of its own comes in the event made
                 * with the job: ending cannot fail for want of memory */
                if (e->finish == DEC_FIN_CANCELLED)
                    CHECK(e == x->final);
                x->done = true;
                x->fin = e->finish;
            }
            dec_event_free(e);
        }
        int left = 0;
        for (int i = 0; i < n; i++)
            left += !res[i].done;
        if (!left)
            return;
        CHECK(pd_now_ns() < deadline);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* Solo reference against the engine directly: prefill, then a token at a
 * time, with each position's near-tie status. */
static void reference(struct pd_engine *e, const int32_t *prompt, uint32_t n,
                      const struct pd_sampling *sp, uint32_t max_tokens, int32_t *tok,
                      int *near_tie)
{
    const uint32_t V = pd_engine_n_vocab(e);
    float *l = malloc(V * sizeof(float));
    struct pd_sampler *s = pd_sampler_new(V);
    struct pd_kvseq q;
    char err[256];
    pd_kvseq_init(&q);
    CHECK_EQ_INT(pd_engine_prefill(e, &q, prompt, n, l, err, sizeof(err)), 0);
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
        CHECK_EQ_INT(pd_sample(s, sp, l, prompt, n, tok, k, &res), 0);
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

static void sched_small_pool_preempts_and_outputs_equal_solo(void)
{
    static int32_t prompts[NJOB][40], ref[NJOB][MAXT];
    static int near_tie[NJOB][MAXT];
    static struct result res[NJOB];
    struct pd_sampling sp[NJOB];
    uint32_t np[NJOB];
    struct rig r;

    /* 16 jobs of up to 35 + 40 tokens (5 blocks each) on 24 blocks */
    rig_up(&r, 24, NJOB);
    struct pd_engine *solo = engine(r.m, 64u << 20, 1);
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
        reference(solo, prompts[i], np[i], &sp[i], MAXT, ref[i], near_tie[i]);
    }
    memset(res, 0, sizeof(res));
    for (int i = 0; i < NJOB; i++) {
        struct dec_job *j = job(prompts[i], np[i], MAXT, &sp[i], &res[i]);
        CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
        dec_job_unref(j);
    }
    collect(&r, res, NJOB);
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
    CHECK(hist_count(r.reg, "t:queue_time") == NJOB);
    pd_engine_free(solo);
    rig_down(&r);
}

static void sched_refuses_what_can_never_fit(void)
{
    struct rig r;
    struct result res[1] = {0};
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    int32_t prompt[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    rig_up(&r, 8, 4); /* 128 tokens */
    struct dec_job *j = job(prompt, 10, 119, &sp, &res[0]);
    CHECK_EQ_INT(dec_sched_submit(r.s, j), -E2BIG);
    dec_job_unref(j);
    /* the largest that fits runs to the end alone */
    j = job(prompt, 10, 118, &sp, &res[0]);
    CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
    dec_job_unref(j);
    collect(&r, res, 1);
    CHECK_EQ_INT(res[0].fin, DEC_FIN_LENGTH);
    CHECK_EQ_INT(res[0].n, 118);
    rig_down(&r);
}

static void sched_cancel_frees_blocks_of_running_and_queued(void)
{
    struct rig r;
    static struct result res[4];
    struct dec_job *jobs[4];
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    int32_t prompt[20] = {0};
    memset(res, 0, sizeof(res));
    rig_up(&r, 64, 2);
    for (int i = 0; i < 4; i++) {
        prompt[0] = i;
        jobs[i] = job(prompt, 20, 200, &sp, &res[i]);
        CHECK_EQ_INT(dec_sched_submit(r.s, jobs[i]), 0);
    }
    uint64_t deadline = pd_now_ns() + 30000000000u;
    while (pd_metric_value(r.sm.running) < 2 || pd_metric_value(r.sm.kv_used) == 0) {
        CHECK(pd_now_ns() < deadline);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    CHECK(pd_metric_value(r.sm.waiting) == 2);
    for (int i = 0; i < 4; i++) {
        dec_job_cancel(jobs[i]);
        dec_job_unref(jobs[i]);
    }
    collect(&r, res, 4);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(res[i].fin, DEC_FIN_CANCELLED);
    /* the step that dropped them sets the gauges right after their events */
    deadline = pd_now_ns() + 5000000000u;
    while (pd_metric_value(r.sm.kv_used) != 0 || pd_metric_value(r.sm.running) != 0 ||
           pd_metric_value(r.sm.waiting) != 0) {
        CHECK(pd_now_ns() < deadline);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    rig_down(&r);
}

static const struct pd_test tests[] = {
    PD_TEST(sched_small_pool_preempts_and_outputs_equal_solo),
    PD_TEST(sched_refuses_what_can_never_fit),
    PD_TEST(sched_cancel_frees_blocks_of_running_and_queued),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
