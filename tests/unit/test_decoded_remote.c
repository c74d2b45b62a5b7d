/* decoded's scheduler, REMOTE state, on the tiny dummy model without kvx:
 * the test plays the loop and the prefill peer. On DEC_EV_REMOTE_START it
 * computes the prompt's KV on a second engine (the "peer"), copies the blocks
 * into the ones the scheduler granted, samples the first token as prefilld
 * does (pd_sample with an empty output) and reports DONE; or it reports a
 * failure and the failover policy takes over. Outputs must equal a solo local
 * run (DESIGN.md's "same output" rule), REMOTE blocks must survive
 * preemption pressure, and a cancelled REMOTE job keeps its blocks until the
 * transfer is reported over. With prefix caching (docs/internals/prefix.md)
 * a REMOTE job asks the peer only for the blocks past its cached prefix,
 * under its salt's names; the blocks a peer sent enter the cache only with
 * cache_remote; a failover to local prefill computes from the cached prefix. */
#include "dec_fixture.h"
#include "pd_test.h"

#include <errno.h>
#include <math.h>

enum { NJOB = 12, MAXT = 24, BS = 16 /* the engine's default block size */ };

/* logprobs of a remote run within this (relative, and absolute near 0) of a
 * local one's: the peer's KV comes from other chunks than the local prefill */
#define LP_REL 1e-4
#define LP_ABS 1e-5

/* what the fake peer does with the n-th START it sees for a job */
enum act { ACT_DONE, ACT_FAIL, ACT_FAIL_EXHAUSTED, ACT_HOLD };

/* What a DEC_EV_REMOTE_START said (prompts of up to 16 blocks). */
struct start_rec {
    uint32_t n_cached, n_blocks, n_names;
    uint8_t cached_name[PD_PREFIX_HASH_LEN];
    uint8_t names[16][PD_PREFIX_HASH_LEN];
    uint32_t blocks[16]; /* the ones the peer fills */
    uint32_t mapped[16]; /* the job's blocks [0, n_cached): the cached prefix */
    bool fill_writable; /* every block the peer fills: one reference, not published */
};

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
    bool scribble; /* a failing transfer wrote junk into the blocks first */
    struct start_rec st[4]; /* per START, in order */
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

/* A rig with the prefix cache (on or off) and the scheduler's cache_remote. */
static void rig_up_prefix(struct rig *r, uint32_t n_blocks, uint32_t max_seqs,
                          enum dec_failover f, bool prefix_cache, bool cache_remote)
{
    dec_rig_up_remote(&r->d, n_blocks, max_seqs, f, prefix_cache, cache_remote);
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

/* The peer: the prompt's KV into the granted blocks (those from n_cached on:
 * the peer computes the whole prompt, sends only what decoded lacks), the
 * first token. */
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
    CHECK_EQ_INT(q.n_blocks, e->n_cached + e->n_blocks);
    char *dst = (char *)pd_kvcache_pool(pd_engine_kvcache(r->d.e));
    const char *src = (const char *)pd_kvcache_pool(pkc);
    for (uint32_t b = 0; b < e->n_blocks; b++)
        memcpy(dst + (size_t)e->blocks[b] * DEC_BLOCK_BYTES,
               src + (size_t)q.blocks[e->n_cached + b] * DEC_BLOCK_BYTES, DEC_BLOCK_BYTES);
    struct pd_sample_result first;
    CHECK_EQ_INT(pd_sample(r->sampler, &x->sp, l, x->prompt, x->n_prompt, NULL, 0, &first), 0);
    pd_engine_seq_release(r->peer, &q);
    free(l);
    dec_sched_remote_done(r->d.s, e->job, &first, false);
}

/* A START as it came. The job is parked, its sequence left alone by the
 * compute thread until the report, and the prefix tests run nothing beside
 * it: its block table and the pool's counts hold still while read. */
static void record_start(struct rig *r, const struct dec_event *e, struct start_rec *st)
{
    struct pd_kvcache *kc = pd_engine_kvcache(r->d.e);
    CHECK(e->n_cached <= 16 && e->n_blocks <= 16 && e->n_names <= 16);
    st->n_cached = e->n_cached;
    st->n_blocks = e->n_blocks;
    st->n_names = e->n_names;
    memcpy(st->cached_name, e->cached_name, PD_PREFIX_HASH_LEN);
    if (e->n_names)
        memcpy(st->names, e->names, (size_t)e->n_names * PD_PREFIX_HASH_LEN);
    memcpy(st->blocks, e->blocks, (size_t)e->n_blocks * sizeof(*e->blocks));
    CHECK(e->job->seq.n_blocks >= e->n_cached);
    memcpy(st->mapped, e->job->seq.blocks, (size_t)e->n_cached * sizeof(*st->mapped));
    st->fill_writable = true;
    for (uint32_t b = 0; b < e->n_blocks; b++)
        st->fill_writable &= pd_kvcache_writable(kc, e->blocks[b]);
}

/* A transfer that broke off: junk in every block it was to fill. */
static void scribble(struct rig *r, const struct dec_event *e)
{
    char *pool = (char *)pd_kvcache_pool(pd_engine_kvcache(r->d.e));
    for (uint32_t b = 0; b < e->n_blocks; b++)
        memset(pool + (size_t)e->blocks[b] * DEC_BLOCK_BYTES, 0x5a, DEC_BLOCK_BYTES);
}

static void on_event(void *arg, const struct dec_event *e)
{
    struct rig *r = arg;
    struct result *x = e->job->owner;
    if (e->kind == DEC_EV_REMOTE_START) {
        CHECK(x->remote);
        CHECK(x->starts < 4);
        /* the cached prefix and the blocks the peer fills: the whole prompt */
        CHECK_EQ_INT(e->n_cached + e->n_blocks, (x->n_prompt + 15) / 16);
        CHECK_EQ_INT(e->epoch, x->starts); /* epoch + 1 per retry */
        x->last_epoch = e->epoch;
        if (r->d.prefix_cache) /* its tests run a REMOTE job alone */
            record_start(r, e, &x->st[x->starts]);
        enum act a = x->plan[x->starts++];
        if (a != ACT_DONE && a != ACT_HOLD && x->scribble)
            scribble(r, e);
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

/* ---- with prefix caching ---- */

/* A prompt of n tokens from a seed: seeds differ at token 0 (and after). */
static void fill(int32_t *p, uint32_t n, uint32_t seed)
{
    for (uint32_t k = 0; k < n; k++)
        p[k] = (int32_t)(((k + 1) * 2654435761u ^ (seed * 40503u + 7u)) % 251u);
}

/* The names of toks[0, n)'s full blocks in salt's namespace on r's engine,
 * computed here as the docs say (root from the engine's KV layout, then the
 * chain), into names (16 at most); returns how many. */
static uint32_t names_of(struct rig *r, const uint8_t salt[PD_PREFIX_HASH_LEN],
                        const int32_t *toks, uint32_t n, uint8_t (*names)[PD_PREFIX_HASH_LEN])
{
    struct pd_kv_layout l;
    uint8_t root[PD_PREFIX_HASH_LEN];
    struct pd_prefix_seq ph;
    pd_engine_kv_layout(r->d.e, &l);
    pd_prefix_root(&l, salt, root);
    pd_prefix_seq_init(&ph, root);
    CHECK_EQ_INT(pd_prefix_seq_extend(&ph, toks, n, BS), 0);
    CHECK(ph.n == n / BS && ph.n <= 16);
    uint32_t k = ph.n;
    memcpy(names, ph.h, (size_t)k * PD_PREFIX_HASH_LEN);
    pd_prefix_seq_done(&ph);
    return k;
}

static void record(void *arg, const struct dec_event *e)
{
    (void)arg;
    dec_out_record(e->job->owner, e);
}

/* The prompt of n tokens, prefilled here on a rig with the cache off: the
 * output a REMOTE job must match. */
static void local_reference(const int32_t *prompt, uint32_t n, const struct pd_sampling *sp,
                            struct dec_out *out)
{
    struct dec_rig ro;
    memset(out, 0, sizeof(*out));
    dec_rig_up_prefix(&ro, 32, 4, false);
    struct dec_job *j = dec_rig_job(prompt, n, MAXT, sp, out, out);
    CHECK_EQ_INT(dec_sched_submit(ro.s, j), 0);
    dec_job_unref(j);
    dec_rig_collect(&ro, 1, record, NULL);
    dec_rig_down(&ro);
}

/* got's tokens and logprobs equal ref's, up to the first near-tie. */
static void same_output(const struct dec_out *got, const struct dec_out *ref, const int *near_tie)
{
    CHECK_EQ_INT(ref->fin, DEC_FIN_LENGTH);
    CHECK_EQ_INT(ref->n, MAXT);
    if (got->fin != DEC_FIN_LENGTH)
        PD_TEST_FAIL_("finish %d (want LENGTH %d), status %d: \"%s\"", got->fin, DEC_FIN_LENGTH,
                      got->status, got->err);
    CHECK_EQ_INT(got->n, MAXT);
    for (uint32_t k = 0; k < MAXT && !near_tie[k]; k++) {
        if (got->tok[k] != ref->tok[k])
            PD_TEST_FAIL_("position %u: remote %d, local %d", k, got->tok[k], ref->tok[k]);
        if (fabsf(got->logprob[k] - ref->logprob[k]) > LP_REL * fabsf(ref->logprob[k]) + LP_ABS)
            PD_TEST_FAIL_("position %u: logprob remote %.9g, local %.9g", k, got->logprob[k],
                          ref->logprob[k]);
    }
}

/* P (100 tokens) ran here and its 6 full blocks are cached; Q is P's first
 * 80 tokens (5 blocks) and 40 new ones. */
static void prompts_p_q(int32_t *p, int32_t *q)
{
    fill(p, 100, 1);
    memcpy(q, p, 80 * sizeof(*q));
    fill(q + 80, 40, 2);
    CHECK(q[80] != p[80]);
}

static void remote_job_asks_only_for_blocks_it_lacks(void)
{
    static int32_t p[100], q[120], ref[MAXT];
    static int near_tie[MAXT];
    static struct result res[2];
    static struct dec_out off;
    static const uint8_t nosalt[PD_PREFIX_HASH_LEN];
    uint8_t names[16][PD_PREFIX_HASH_LEN];
    prompts_p_q(p, q);
    memset(res, 0, sizeof(res));
    res[0] = (struct result){.prompt = p, .n_prompt = 100, .sp = PD_SAMPLING_DEFAULT};
    res[1] = (struct result){.remote = true, .prompt = q, .n_prompt = 120,
                             .sp = PD_SAMPLING_DEFAULT, .plan = {ACT_DONE}};
    local_reference(q, 120, &res[1].sp, &off);

    struct rig r;
    rig_up_prefix(&r, 32, 4, DEC_FAILOVER_RETRY, true, true);
    fx_solo_reference(r.peer, &res[1].sp, q, 120, MAXT, ref, near_tie, NULL);
    submit(&r, &res[0], 8);
    collect(&r, 1);
    submit(&r, &res[1], MAXT);
    collect(&r, 2);

    const struct start_rec *st = &res[1].st[0];
    CHECK_EQ_INT(res[1].starts, 1);
    /* 80 tokens: 5 full blocks cached, asked for the other 3 of 120 tokens */
    CHECK_EQ_INT(st->n_cached, 80 / BS);
    CHECK_EQ_INT(st->n_blocks, (120 + BS - 1) / BS - 80 / BS);
    CHECK_EQ_INT(st->n_names, 120 / BS);
    CHECK_EQ_INT(names_of(&r, nosalt, q, 120, names), 120 / BS);
    CHECK(memcmp(st->cached_name, names[80 / BS - 1], PD_PREFIX_HASH_LEN) == 0);
    CHECK(memcmp(st->names, names, (size_t)st->n_names * PD_PREFIX_HASH_LEN) == 0);
    /* the peer writes none of the cached blocks, nor any other shared one */
    CHECK(st->fill_writable);
    for (uint32_t b = 0; b < st->n_blocks; b++)
        for (uint32_t m = 0; m < st->n_cached; m++)
            if (st->blocks[b] == st->mapped[m])
                PD_TEST_FAIL_("the peer fills block %u, cached block %u of the prefix",
                              st->blocks[b], m);
    compare(&res[1], 1, ref, near_tie);
    same_output(&res[1].out, &off, near_tie);
    rig_down(&r);
}

/* A REMOTE job of 70 tokens (4 full blocks), then the same prompt prefilled
 * here; returns the blocks cached after the first and the block hits of the
 * second. Both outputs equal the solo run. */
static void remote_then_local(bool cache_remote, double *cached, double *hits)
{
    static int32_t p[70], ref[MAXT];
    static int near_tie[MAXT];
    static struct result res[2];
    fill(p, 70, 3);
    memset(res, 0, sizeof(res));
    res[0] = (struct result){.remote = true, .prompt = p, .n_prompt = 70,
                             .sp = PD_SAMPLING_DEFAULT, .plan = {ACT_DONE}};
    res[1] = (struct result){.prompt = p, .n_prompt = 70, .sp = PD_SAMPLING_DEFAULT};
    struct rig r;
    rig_up_prefix(&r, 32, 4, DEC_FAILOVER_RETRY, true, cache_remote);
    fx_solo_reference(r.peer, &res[0].sp, p, 70, MAXT, ref, near_tie, NULL);
    /* MAXT tokens: decode steps run after the remote prompt landed, and the
     * block of its last token (64..79) fills up */
    submit(&r, &res[0], MAXT);
    collect(&r, 1);
    CHECK_EQ_INT(res[0].st[0].n_cached, 0); /* a cold cache */
    *cached = pd_metric_value(r.d.pm.cached);
    double h0 = pd_metric_value(r.d.pm.hit_blocks);
    submit(&r, &res[1], MAXT);
    collect(&r, 2);
    *hits = pd_metric_value(r.d.pm.hit_blocks) - h0;
    printf("  cache_remote %s: %.0f blocks cached after the remote job; the next one hit %.0f\n",
           cache_remote ? "on" : "off", *cached, *hits);
    compare(&res[0], 0, ref, near_tie);
    compare(&res[1], 1, ref, near_tie);
    rig_down(&r);
}

static void remote_done_publishes_verified_blocks_only_with_cache_remote(void)
{
    double cached_on, hits_on, cached_off, hits_off;
    remote_then_local(true, &cached_on, &hits_on);
    remote_then_local(false, &cached_off, &hits_off);
    CHECK(hits_on == 70 / BS); /* every full block of the prompt, never the last token's */
    CHECK(cached_on >= 70 / BS);
    /* without cache_remote nothing the peer sent enters the cache: not at
     * DONE, nor by the decode steps after it (the blocks' K/V are the
     * peer's still) */
    if (cached_off != 0 || hits_off != 0)
        PD_TEST_FAIL_("cache_remote off: %.0f blocks cached after the remote job (want 0), "
                      "the next job with its prompt hit %.0f blocks (want 0)",
                      cached_off, hits_off);
}

static void remote_failure_then_local_fallback_keeps_cached_prefix(void)
{
    static int32_t p[100], q[120], ref[MAXT];
    static int near_tie[MAXT];
    static struct result res[2];
    prompts_p_q(p, q);
    memset(res, 0, sizeof(res));
    res[0] = (struct result){.prompt = p, .n_prompt = 100, .sp = PD_SAMPLING_DEFAULT};
    /* a peer fails (another is tried), then none is left: local prefill;
     * each broken transfer left junk in the blocks it was filling */
    res[1] = (struct result){.remote = true, .prompt = q, .n_prompt = 120,
                             .sp = PD_SAMPLING_DEFAULT, .scribble = true,
                             .plan = {ACT_FAIL, ACT_FAIL_EXHAUSTED}};
    struct rig r;
    rig_up_prefix(&r, 32, 4, DEC_FAILOVER_RETRY, true, true);
    fx_solo_reference(r.peer, &res[1].sp, q, 120, MAXT, ref, near_tie, NULL);
    submit(&r, &res[0], 8);
    collect(&r, 1);
    const double prompt0 = pd_metric_value(r.d.sm.prompt_tokens);
    const double hit0 = pd_metric_value(r.d.pm.hit_tokens);
    const double hitb0 = pd_metric_value(r.d.pm.hit_blocks);
    const double steps0 = dec_hist_count(r.d.reg, "t:batch_size");
    submit(&r, &res[1], MAXT);
    collect(&r, 2);
    CHECK_EQ_INT(res[1].starts, 2);
    for (uint32_t i = 0; i < 2; i++) /* the retry too asks only for what is missing */
        CHECK_EQ_INT(res[1].st[i].n_cached, 80 / BS);
    compare(&res[1], 1, ref, near_tie);
    CHECK(pd_metric_value(r.d.sm.remote_prompt_tokens) == 0);
    CHECK(pd_metric_value(r.d.sm.prompt_tokens) - prompt0 == 120);
    /* one lookup, at admission: 80 tokens found */
    CHECK(pd_metric_value(r.d.pm.hit_tokens) - hit0 == 80);
    CHECK(pd_metric_value(r.d.pm.hit_blocks) - hitb0 == 80 / BS);
    /* the 40 tokens past the prefix in one step with the first token, then
     * a step per token; from scratch the 120 would take two (64 a step) */
    const double steps = dec_hist_count(r.d.reg, "t:batch_size") - steps0;
    if (steps != MAXT)
        PD_TEST_FAIL_("the fallback took %.0f steps for %u tokens (want %u: only the 40 "
                      "tokens past the cached prefix computed)", steps, MAXT, MAXT);
    rig_down(&r);
}

static void remote_salted_job_misses_unsalted_cache(void)
{
    static int32_t p[100], q[120], ref[MAXT];
    static int near_tie[MAXT];
    static struct result res[2];
    static const uint8_t nosalt[PD_PREFIX_HASH_LEN];
    uint8_t salt[PD_PREFIX_HASH_LEN], names[16][PD_PREFIX_HASH_LEN], plain[16][PD_PREFIX_HASH_LEN];
    prompts_p_q(p, q);
    pd_prefix_salt("t1", 2, salt);
    memset(res, 0, sizeof(res));
    res[0] = (struct result){.prompt = p, .n_prompt = 100, .sp = PD_SAMPLING_DEFAULT};
    res[1] = (struct result){.remote = true, .prompt = q, .n_prompt = 120,
                             .sp = PD_SAMPLING_DEFAULT, .plan = {ACT_DONE}};
    struct rig r;
    rig_up_prefix(&r, 32, 4, DEC_FAILOVER_RETRY, true, true);
    fx_solo_reference(r.peer, &res[1].sp, q, 120, MAXT, ref, near_tie, NULL);
    submit(&r, &res[0], 8);
    collect(&r, 1);
    const double hitb0 = pd_metric_value(r.d.pm.hit_blocks);
    struct dec_job *j = job(&res[1], MAXT);
    memcpy(j->salt, salt, sizeof(j->salt));
    CHECK_EQ_INT(dec_sched_submit(r.d.s, j), 0);
    dec_job_unref(j);
    collect(&r, 2);
    const struct start_rec *st = &res[1].st[0];
    CHECK_EQ_INT(res[1].starts, 1);
    CHECK_EQ_INT(st->n_cached, 0);
    CHECK_EQ_INT(st->n_blocks, (120 + BS - 1) / BS);
    CHECK(pd_metric_value(r.d.pm.hit_blocks) == hitb0);
    /* the names the peer choice gets are the salted ones */
    CHECK_EQ_INT(st->n_names, 120 / BS);
    CHECK_EQ_INT(names_of(&r, salt, q, 120, names), 120 / BS);
    CHECK_EQ_INT(names_of(&r, nosalt, q, 120, plain), 120 / BS);
    CHECK(memcmp(st->names, names, (size_t)st->n_names * PD_PREFIX_HASH_LEN) == 0);
    CHECK(memcmp(names[0], plain[0], PD_PREFIX_HASH_LEN) != 0);
    compare(&res[1], 1, ref, near_tie);
    rig_down(&r);
}

static const struct pd_test tests[] = {
    PD_TEST(remote_jobs_equal_local_under_preemption_and_failover),
    PD_TEST(remote_cancel_keeps_blocks_until_released),
    PD_TEST(remote_fail_policy_finishes_with_the_status),
    PD_TEST(remote_local_policy_prefills_locally_at_once),
    PD_TEST(remote_job_asks_only_for_blocks_it_lacks),
    PD_TEST(remote_done_publishes_verified_blocks_only_with_cache_remote),
    PD_TEST(remote_failure_then_local_fallback_keeps_cached_prefix),
    PD_TEST(remote_salted_job_misses_unsalted_cache),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
