/* decoded's scheduler on the tiny dummy model, without HTTP: preemption on a
 * small pool keeps every output equal to its solo run (DESIGN.md's "same
 * output" rule, near-ties from the real logits) and emits each token once;
 * what can never fit is refused; cancellation frees blocks. Constrained
 * jobs (response_format json_object) on a scheduler given the default
 * model's tokenizer (they skip without it): each token within its mask, the
 * output equal to a reference of engine, sampler and grammar alone, the job
 * stopped as its object completes, beside unconstrained jobs that keep
 * their solo outputs. */
#include "dec_fixture.h"
#include "pd_test.h"
#include "tok_fixture.h"

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

/* ---- constrained decoding (decoded/sched_share.c: dec_sched_mask,
 * dec_sched_grammar_take) ---- */

/* The rig's scheduler made again with a tokenizer, the default model's:
 * the tiny model's 256 ids are that vocabulary's first 256 (17 control
 * tokens, then single bytes, '{' 107, '}' 109, '"' 18, ':' 42). The
 * grammar is built from it at the first constrained job. */
static void rig_with_tokenizer(struct dec_rig *r, const struct pd_tokenizer *tok,
                               uint32_t n_blocks, uint32_t max_seqs)
{
    char err[512];
    dec_rig_up(r, n_blocks, max_seqs, DEC_FAILOVER_RETRY);
    pd_worker_stop(dec_sched_worker(r->s));
    dec_sched_free(r->s);
    struct dec_sched_params p = {.engine = r->e, .tok = tok, .max_num_seqs = max_seqs,
                                 .max_waiting = 64, .idle_tick_ms = 10, .metrics = r->sm,
                                 .notify = dec_rig_notify, .failover = DEC_FAILOVER_RETRY};
    if (dec_sched_new(&p, &r->s, err, sizeof(err)) < 0 ||
        pd_worker_start(dec_sched_worker(r->s), err, sizeof(err)))
        PD_TEST_FAIL_("%s", err);
}

/* What a job's events said, and its text */
struct cout {
    struct dec_out o;
    char text[4096];
    size_t len;
};

static void record_text(void *arg, const struct dec_event *e)
{
    (void)arg;
    struct cout *c = e->job->owner;
    dec_out_record(&c->o, e);
    CHECK(c->len + e->len < sizeof(c->text));
    memcpy(c->text + c->len, e->text, e->len);
    c->len += e->len;
}

/* Token t is allowed by mask m */
static bool allowed(const uint32_t *m, int32_t t) { return m[t / 32] >> (t % 32) & 1u; }

/* The two best tokens the mask allows (logit plus bias) are a near-tie, as
 * fx_near_tie judges it */
static bool allowed_near_tie(const float *l, uint32_t V, const uint32_t *m,
                             const struct pd_sampling *sp)
{
    float a = -INFINITY, b = -INFINITY, mx = 0;
    for (uint32_t v = 0; v < V; v++) {
        if (!allowed(m, (int32_t)v))
            continue;
        float x = l[v];
        for (uint32_t i = 0; i < sp->n_bias; i++)
            if (sp->bias[i].token == (int32_t)v)
                x += sp->bias[i].bias;
        mx = fabsf(x) > mx ? fabsf(x) : mx;
        if (x > a)
            b = a, a = x;
        else if (x > b)
            b = x;
    }
    return a - b < FX_NEAR_TIE * mx;
}

/* A constrained job's reference, against the engine, the sampler and a
 * grammar of its own: prefill, then before each token the grammar's mask,
 * the token drawn with it and taken by the grammar, until the object is
 * done or max_tokens. Returns the tokens made; *done: the object completed. */
static uint32_t constrained_reference(struct pd_engine *e, struct pd_grammar *g,
                                      const struct pd_sampling *sp, const int32_t *prompt,
                                      uint32_t n, uint32_t max_tokens, int32_t *tok,
                                      int *near_tie, bool *done)
{
    const uint32_t V = pd_engine_n_vocab(e);
    float *l = malloc(V * sizeof(float));
    struct pd_sampler *s = pd_sampler_new(V);
    struct pd_kvseq q;
    struct pd_gstate gs;
    char err[256];
    uint32_t k = 0;
    CHECK(l && s);
    pd_kvseq_init(&q);
    pd_gstate_json_object(&gs);
    CHECK_EQ_INT(pd_engine_prefill(e, &q, prompt, n, l, err, sizeof(err)), 0);
    for (; k < max_tokens && !pd_gstate_done(&gs); k++) {
        const uint32_t *m = pd_grammar_mask(g, &gs);
        struct pd_sampling msp = *sp;
        struct pd_sample_result res;
        CHECK(m != NULL);
        near_tie[k] = allowed_near_tie(l, V, m, sp);
        msp.mask = m;
        CHECK_EQ_INT(pd_sample(s, &msp, l, prompt, n, tok, k, &res), 0);
        tok[k] = res.token;
        CHECK_EQ_INT(pd_gstate_advance(g, &gs, tok[k]), 0);
        struct pd_batch_item it = {.seq = &q, .tokens = &tok[k], .n_tokens = 1, .n_logits = 1,
                                   .logits = l};
        if (k + 1 < max_tokens && !pd_gstate_done(&gs))
            CHECK_EQ_INT(pd_engine_step(e, &it, 1, err, sizeof(err)), 0);
    }
    *done = pd_gstate_done(&gs);
    pd_engine_seq_release(e, &q);
    pd_sampler_free(s);
    free(l);
    return k;
}

/* A job's output against the grammar: every token allowed where it came
 * (the mask's verdict, and the bytes the matcher takes), the job stopped
 * exactly when the object completed, else at max_tokens; its text is its
 * tokens' bytes. */
static void check_constrained_output(struct pd_grammar *g, const struct pd_tokenizer *tok,
                                     const struct cout *c, uint32_t max_tokens, int job)
{
    struct pd_gstate gs;
    char bytes[4096];
    size_t nb = 0;
    pd_gstate_json_object(&gs);
    CHECK(c->o.done);
    for (uint32_t k = 0; k < c->o.n; k++) {
        const int32_t t = c->o.tok[k];
        size_t n = 0;
        const uint8_t *p = pd_tok_piece(tok, t, &n);
        if (pd_gstate_done(&gs))
            PD_TEST_FAIL_("job %d: token %u (%d) after the object completed", job, k, t);
        if (!allowed(pd_grammar_mask(g, &gs), t))
            PD_TEST_FAIL_("job %d: token %u (%d, \"%.*s\") outside its mask", job, k, t, (int)n,
                          (const char *)p);
        CHECK_EQ_INT(pd_gstate_advance(g, &gs, t), 0);
        CHECK(nb + n < sizeof(bytes));
        memcpy(bytes + nb, p, n);
        nb += n;
    }
    if (pd_gstate_done(&gs)) {
        if (c->o.fin != DEC_FIN_STOP)
            PD_TEST_FAIL_("job %d: object done after %u tokens, finish %d", job, c->o.n, c->o.fin);
    } else {
        if (c->o.fin != DEC_FIN_LENGTH || c->o.n != max_tokens)
            PD_TEST_FAIL_("job %d: object open after %u tokens, finish %d", job, c->o.n,
                          c->o.fin);
    }
    /* the text is the tokens' bytes (the object's bytes are valid UTF-8 by
     * construction once done; a cut one may end in a partial character the
     * detokenizer holds back or replaces) */
    if (pd_gstate_done(&gs) && (c->len != nb || memcmp(c->text, bytes, nb) != 0))
        PD_TEST_FAIL_("job %d: text \"%.*s\", tokens' bytes \"%.*s\"", job, (int)c->len, c->text,
                      (int)nb, bytes);
}

enum { CJOB = 10, CMAXT = 48 };

/* Constrained jobs, greedy and sampled, with and without biases that steer
 * them to a short object, beside unconstrained ones, on a pool small enough
 * to preempt: each constrained output equals its reference up to a near-tie
 * (and then still follows the grammar), stops as its object completes;
 * each unconstrained one equals its solo run */
static void sched_constrained_jobs_follow_the_grammar_and_stop_when_done(void)
{
    struct tok_fix tf;
    struct dec_rig r;
    struct pd_grammar *g = NULL;
    char err[256];
    static int32_t prompts[CJOB][32], ref[CJOB][CMAXT];
    static int near_tie[CJOB][CMAXT];
    static struct cout res[CJOB];
    uint32_t np[CJOB], n_ref[CJOB];
    bool done_ref[CJOB], constrained[CJOB];
    struct pd_sampling sp[CJOB];
    /* '{' +100, '}' +90: "{}" at once. The steer: '"' first wherever the
     * mask allows it, else '{', ':', '}': greedy, {"":""} */
    static const struct pd_logit_bias braces[2] = {{107, 100.0f}, {109, 90.0f}};
    static const struct pd_logit_bias steer[5] = {{18, 60.0f}, {107, 50.0f}, {42, 30.0f},
                                                  {109, 12.0f}, {28, -10.0f}};
    tok_fix_default(&tf, PD_TOK_PRE_HF_GGUF);
    /* 10 jobs of up to 31 + 48 tokens (5 blocks each) on 24 blocks */
    rig_with_tokenizer(&r, tf.tok, 24, CJOB);
    struct pd_engine *solo = fx_engine(r.m, 64u << 20, 64, 1);
    if (pd_grammar_new(tf.tok, pd_engine_n_vocab(solo), &g, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    memset(res, 0, sizeof(res));
    for (int i = 0; i < CJOB; i++) {
        np[i] = 4 + (uint32_t)i * 3;
        for (uint32_t k = 0; k < np[i]; k++)
            prompts[i][k] = (int32_t)(17 + (k * 2654435761u + (uint32_t)i * 131u) % 239u);
        sp[i] = PD_SAMPLING_DEFAULT;
        constrained[i] = i < 8;
        switch (i) {
        case 0: sp[i].bias = braces, sp[i].n_bias = 2; break;
        case 1: sp[i].bias = steer, sp[i].n_bias = 5; break;
        case 2: /* greedy, nothing steering it */ break;
        case 3:
        case 4:
            sp[i].temperature = 1.0f;
            sp[i].seed = 1000 + (uint64_t)i;
            sp[i].bias = steer, sp[i].n_bias = 5;
            break;
        default: /* sampled, free, and the unconstrained jobs */
            sp[i].temperature = i % 2 ? 0.8f : 1.2f;
            sp[i].top_p = 0.95f;
            sp[i].seed = 77 + (uint64_t)i;
        }
        if (constrained[i]) {
            n_ref[i] = constrained_reference(solo, g, &sp[i], prompts[i], np[i], CMAXT, ref[i],
                                             near_tie[i], &done_ref[i]);
        } else {
            fx_solo_reference(solo, &sp[i], prompts[i], np[i], CMAXT, ref[i], near_tie[i], NULL);
            n_ref[i] = CMAXT, done_ref[i] = false;
        }
    }
    /* job 0's reference is the object "{}", job 1's {"":""} */
    CHECK(done_ref[0] && n_ref[0] == 2 && ref[0][0] == 107 && ref[0][1] == 109);
    static const int32_t empty_pair[7] = {107, 18, 18, 42, 18, 18, 109};
    CHECK(done_ref[1] && n_ref[1] == 7 && memcmp(ref[1], empty_pair, sizeof(empty_pair)) == 0);
    for (int i = 0; i < CJOB; i++) {
        struct dec_job *j = dec_rig_job(prompts[i], np[i], CMAXT, &sp[i], &res[i], &res[i].o);
        j->constrained = constrained[i];
        pd_gstate_json_object(&j->gs);
        CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
        dec_job_unref(j);
    }
    dec_rig_collect(&r, CJOB, record_text, NULL);
    uint32_t compared = 0, stopped = 0;
    for (int i = 0; i < CJOB; i++) {
        const struct dec_out *o = &res[i].o;
        if (constrained[i])
            check_constrained_output(g, tf.tok, &res[i], CMAXT, i);
        else
            CHECK(o->fin == DEC_FIN_LENGTH && o->n == CMAXT);
        stopped += o->fin == DEC_FIN_STOP;
        uint32_t k = 0;
        for (; k < n_ref[i] && !near_tie[i][k]; k++, compared++)
            if (k >= o->n || o->tok[k] != ref[i][k])
                PD_TEST_FAIL_("job %d position %u: scheduled %d, reference %d", i, k,
                              k < o->n ? o->tok[k] : -1, ref[i][k]);
        if (k == n_ref[i]) { /* no near-tie: the same length and end */
            CHECK_EQ_INT(o->n, n_ref[i]);
            CHECK_EQ_INT(o->fin, done_ref[i] ? DEC_FIN_STOP : DEC_FIN_LENGTH);
        } else {
            printf("  job %d: near-tie at generated position %u; compared up to there\n", i, k);
        }
        if (i < 3) {
            printf("  job %d: %u tokens, finish %d: ", i, o->n, o->fin);
            for (size_t b = 0; b < res[i].len && b < 80; b++)
                printf(res[i].text[b] == '\n' ? "\\n" : "%c", res[i].text[b]);
            printf("\n");
        }
    }
    /* "{}" in two tokens though max_tokens is 48 and end-of-text is ignored */
    CHECK_EQ_INT(res[0].o.n, 2);
    CHECK_EQ_INT(res[0].o.fin, DEC_FIN_STOP);
    CHECK(res[0].len == 2 && memcmp(res[0].text, "{}", 2) == 0);
    CHECK_EQ_INT(res[1].o.fin, DEC_FIN_STOP);
    CHECK(res[1].len == 7 && memcmp(res[1].text, "{\"\":\"\"}", 7) == 0);
    printf("  %u tokens compared, %u jobs stopped at their object's end, %.0f preemptions\n",
           compared, stopped, pd_metric_value(r.sm.preemptions));
    CHECK(stopped >= 4);
    pd_engine_free(solo);
    pd_grammar_free(g);
    dec_rig_down(&r);
    tok_fix_done(&tf);
}

/* A scheduler without a tokenizer has no grammar: a constrained job there
 * (the loop refuses such requests first) ends in an error naming the
 * response format, its blocks freed, and an unconstrained job beside it
 * runs to its end */
static void sched_constrained_job_without_a_tokenizer_fails(void)
{
    struct dec_rig r;
    static struct dec_out res[2];
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    int32_t prompt[6] = {20, 21, 22, 23, 24, 25};
    memset(res, 0, sizeof(res));
    dec_rig_up(&r, 16, 2, DEC_FAILOVER_RETRY);
    for (int i = 0; i < 2; i++) {
        struct dec_job *j = job(prompt, 6, 10, &sp, &res[i]);
        j->constrained = i == 0;
        pd_gstate_json_object(&j->gs);
        CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
        dec_job_unref(j);
    }
    collect(&r, 2);
    CHECK_EQ_INT(res[0].fin, DEC_FIN_ERROR);
    CHECK_EQ_INT(res[0].n, 0);
    CHECK_CONTAINS(res[0].err, "response format");
    CHECK_EQ_INT(res[1].fin, DEC_FIN_LENGTH);
    CHECK_EQ_INT(res[1].n, 10);
    dec_rig_down(&r);
}

static const struct pd_test tests[] = {
    PD_TEST(sched_small_pool_preempts_and_outputs_equal_solo),
    PD_TEST(sched_refuses_what_can_never_fit),
    PD_TEST(sched_cancel_frees_blocks_of_running_and_queued),
    PD_TEST(sched_constrained_jobs_follow_the_grammar_and_stop_when_done),
    PD_TEST(sched_constrained_job_without_a_tokenizer_fails),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
