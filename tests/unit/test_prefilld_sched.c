/* prefilld's scheduler on the tiny dummy model, without the network: the
 * blocks it hands out hold the same K/V a solo prefill writes, the first
 * token is the one local sampling picks, runs cover every block once and in
 * order, blocks stay allocated until the transfer drops them, decode peers
 * take turns, and what can never fit is refused. Prefix caching: a prompt
 * maps what its pool cached before (never its last token's block), blocks
 * decoded holds are checked by name and never sent (runs count from
 * n_cached), a cold cache is counted, salts keep tenants apart, and the
 * progress atomics reach the prompt's end. Echo's prompt log-probabilities:
 * every position scored as a solo prefill's logits say, mapping nothing
 * from the cache. */
#include "engine_fixture.h"
#include "metrics.h"
#include "pd_test.h"
#include "scheduler.h"

#include <errno.h>
#include <math.h>

#define BLOCK_BYTES 8192 /* tiny: 2 layers x 2 KV heads x 16 dims x K,V x fp32 x 16 tokens */

enum { MAXB = 64, MAXJ = 8 };

/* What the events said about one job. */
struct got {
    uint32_t blocks[MAXB]; /* pool ids by logical block index */
    uint32_t n_blocks; /* runs received so far cover [0, n_blocks) */
    bool done, ended;
    int reason;
    struct pd_sample_result first;
    int order; /* when DONE came, 0-based */
    const struct pf_event *final; /* allocated with the job: DONE or END must be it */
};

struct rig {
    struct pd_model *m;
    struct pd_engine *e;
    struct pf_sched *s;
    struct pd_metrics *reg;
    struct pf_sched_metrics sm; /* in reg */
    struct pd_prefix_metrics pm; /* in reg; sm.prefix points here */
    struct got g[MAXJ]; /* g[id - 1]: job id's */
    int done_seq; /* DONE events taken so far: the next one's order */
    int n_finished; /* DONE and END events taken so far */
};

static void notify(void *arg) { (void)arg; }

static struct pd_engine *engine(const struct pd_model *m, uint32_t n_blocks, uint32_t max_items)
{
    return fx_engine(m, (uint64_t)n_blocks * BLOCK_BYTES, 48, max_items);
}

/* engine() with the prefix cache on or off */
static struct pd_engine *engine_ex(const struct pd_model *m, uint32_t n_blocks, uint32_t max_items,
                                   bool prefix_cache)
{
    struct pd_engine_params p = {.model = m, .kv_cache_bytes = (uint64_t)n_blocks * BLOCK_BYTES,
                                 .max_batched_tokens = 48, .max_batch_items = max_items,
                                 .prefix_cache = prefix_cache};
    struct pd_engine *e = NULL;
    char err[512];
    if (pd_engine_new(&p, &e, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    CHECK(pd_kvcache_prefix(pd_engine_kvcache(e)) == prefix_cache);
    return e;
}

static void rig_up_ex(struct rig *r, uint32_t n_blocks, uint32_t max_running, uint32_t max_waiting,
                      bool start, bool prefix_cache)
{
    static const double b[] = {0.01, 0.1, 1};
    char err[512];
    memset(r, 0, sizeof(*r));
    r->m = fx_dummy_model("tiny", 11);
    r->e = engine_ex(r->m, n_blocks, max_running, prefix_cache);
    CHECK_EQ_INT(pd_kvcache_n_blocks(pd_engine_kvcache(r->e)), n_blocks);
    CHECK_EQ_INT(pd_kvcache_block_bytes(pd_engine_kvcache(r->e)), BLOCK_BYTES);
    r->reg = pd_metrics_new(NULL, NULL);
    pd_prefix_metrics_init(&r->pm, r->reg);
    r->sm = (struct pf_sched_metrics){
        .running = pd_metrics_gauge(r->reg, "t:running", NULL, "h"),
        .waiting = pd_metrics_gauge(r->reg, "t:waiting", NULL, "h"),
        .kv_used = pd_metrics_gauge(r->reg, "t:kv_used", NULL, "h"),
        .kv_free = pd_metrics_gauge(r->reg, "t:kv_free", NULL, "h"),
        .prompt_tokens = pd_metrics_counter(r->reg, "t:prompt", NULL, "h"),
        .queue_time = pd_metrics_histogram(r->reg, "t:queue", "h", b, 3),
        .prefill_time = pd_metrics_histogram(r->reg, "t:prefill", "h", b, 3),
        .batch_tokens = pd_metrics_histogram(r->reg, "t:batch", "h", b, 3),
        .prefix = &r->pm,
        .blocks_not_sent = pd_metrics_counter(r->reg, "t:blocks_not_sent", NULL, "h"),
        .bytes_not_sent = pd_metrics_counter(r->reg, "t:bytes_not_sent", NULL, "h"),
        .recomputed = pd_metrics_counter(r->reg, "t:recomputed", NULL, "h")};
    CHECK(r->pm.hit_tokens && r->sm.blocks_not_sent && r->sm.bytes_not_sent && r->sm.recomputed);
    struct pf_sched_params p = {.engine = r->e, .max_waiting = max_waiting,
                                .max_running = max_running, .idle_tick_ms = 10, .metrics = r->sm,
                                .notify = notify};
    if (pf_sched_new(&p, &r->s, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    if (start && pd_worker_start(pf_sched_worker(r->s), err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
}

static void rig_up(struct rig *r, uint32_t n_blocks, uint32_t max_running, uint32_t max_waiting,
                   bool start)
{
    rig_up_ex(r, n_blocks, max_running, max_waiting, start, false);
}

/* For a rig made with start unset, once its queue is as the test wants it. */
static void start(struct rig *r)
{
    char err[256];
    CHECK_EQ_INT(pd_worker_start(pf_sched_worker(r->s), err, sizeof(err)), 0);
}

/* Stops the thread, then every block must be free again. */
static void rig_down(struct rig *r)
{
    pd_worker_stop(pf_sched_worker(r->s));
    struct pd_kvcache *kc = pd_engine_kvcache(r->e);
    r->s = pf_sched_free(r->s);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), pd_kvcache_n_blocks(kc));
    pd_metrics_free(r->reg);
    pd_engine_free(r->e);
    pd_model_free(r->m);
}

static void prompt(int32_t *t, uint32_t n, uint32_t salt)
{
    for (uint32_t k = 0; k < n; k++)
        t[k] = (int32_t)((k * 2654435761u + salt * 97u) % 256u);
}

/* Job id (1 to MAXJ) from peer, of n prompt tokens (prompt(salt)); its
 * events go to r->g[id - 1]. */
static struct pf_job *job(struct rig *r, uint64_t peer, uint64_t id, uint32_t n, uint32_t salt)
{
    CHECK(id >= 1 && id <= MAXJ);
    struct got *g = &r->g[id - 1];
    struct pf_job *j = pf_job_new();
    CHECK(j && (j->tokens = malloc(n * sizeof(int32_t))));
    prompt(j->tokens, n, salt);
    j->n_tokens = n;
    j->peer = peer;
    j->request_id = id;
    j->sampling = PD_SAMPLING_DEFAULT;
    j->t_arrival_ns = pd_now_ns();
    j->owner = g;
    g->final = j->final;
    CHECK(g->final != NULL);
    snprintf(j->xrid, sizeof(j->xrid), "t-%" PRIu64, id);
    return j;
}

/* Submits j, which must be accepted; the scheduler holds the only reference. */
static void submit(struct rig *r, struct pf_job *j)
{
    CHECK_EQ_INT(pf_sched_submit(r->s, j), 0);
    pf_job_unref(j);
}

/* Take events until n jobs in all are done or ended; RUN blocks are
 * unreffed right away unless hold is set (then the caller does). */
static void collect(struct rig *r, int n, bool hold)
{
    uint64_t deadline = fx_deadline(60);
    for (;;) {
        for (struct pf_event *e = pf_sched_take(r->s), *next; e; e = next) {
            next = e->next;
            struct got *x = e->job->owner;
            if (e->type == PF_EV_RUN) {
                CHECK(!x->done && !x->ended);
                CHECK_EQ_INT(e->first, x->n_blocks); /* in order, no gap, no repeat */
                CHECK(e->first + e->n <= MAXB);
                memcpy(&x->blocks[e->first], e->blocks, e->n * sizeof(uint32_t));
                x->n_blocks += e->n;
                if (!hold)
                    CHECK_EQ_INT(pf_sched_unref(r->s, e->blocks, e->twins, e->n), 0);
            } else if (e->type == PF_EV_DONE) {
                CHECK(!x->done && !x->ended);
                CHECK(e == x->final); /* no allocation at the end: it cannot fail */
                x->done = true;
                x->first = e->token;
                x->order = r->done_seq++;
                r->n_finished++;
            } else {
                CHECK(!x->done && !x->ended);
                CHECK(e == x->final);
                x->ended = true;
                x->reason = e->reason;
                r->n_finished++;
            }
            pf_event_free(e);
        }
        if (r->n_finished >= n)
            return;
        fx_poll(deadline);
    }
}

/* K/V of the handed-out blocks equal a solo prefill's (normalized error: the
 * step batches several prompts, the solo run one), and the first token is
 * the one local sampling picks unless the top two are a near-tie. */
static void prefilld_blocks_and_first_token_match_solo_prefill(void)
{
    static const uint32_t lens[] = {1, 15, 16, 17, 47, 90};
    enum { N = sizeof(lens) / sizeof(*lens) };
    struct rig r;
    rig_up(&r, 40, 4, 16, true);
    for (int i = 0; i < N; i++)
        submit(&r, job(&r, (uint64_t)i % 2 + 1, (uint64_t)i + 1, lens[i], (uint32_t)i));
    collect(&r, N, true);
    const struct got *g = r.g;

    struct pd_engine *solo = engine(r.m, 16, 1);
    struct pd_kvcache *kc = pd_engine_kvcache(r.e), *skc = pd_engine_kvcache(solo);
    const size_t per_block = pd_kvcache_block_bytes(kc) / sizeof(float);
    const uint32_t bs = pd_kvcache_layout(kc)->block_size, V = pd_engine_n_vocab(solo);
    float *logits = malloc(V * sizeof(float));
    struct pd_sampler *sampler = pd_sampler_new(V);
    char err[256];
    for (int i = 0; i < N; i++) {
        int32_t toks[96];
        prompt(toks, lens[i], (uint32_t)i);
        CHECK(g[i].done);
        CHECK_EQ_INT(g[i].n_blocks, (lens[i] + bs - 1) / bs);
        struct pd_kvseq q;
        pd_kvseq_init(&q);
        CHECK_EQ_INT(pd_engine_prefill(solo, &q, toks, lens[i], logits, err, sizeof(err)), 0);
        double num = 0, den = 0;
        for (uint32_t b = 0; b < g[i].n_blocks; b++) {
            const float *x = pd_kvcache_pool(kc) + (size_t)g[i].blocks[b] * per_block;
            const float *y = pd_kvcache_pool(skc) + (size_t)q.blocks[b] * per_block;
            /* the last block holds only the prompt's tokens: compare those */
            uint32_t used = b + 1 < g[i].n_blocks ? bs : lens[i] - b * bs;
            const struct pd_kv_geom *geo = pd_kvcache_layout(kc);
            for (uint32_t l = 0; l < geo->n_layer; l++)
                for (uint32_t kv = 0; kv < 2; kv++)
                    for (uint32_t h = 0; h < geo->n_head_kv; h++)
                        for (uint32_t t = 0; t < used; t++) {
                            uint64_t o = pd_kv_offset(geo, 0, l, kv, h, t);
                            for (uint32_t d = 0; d < geo->head_dim; d++) {
                                num = fmax(num, fabs((double)x[o + d] - y[o + d]));
                                den = fmax(den, fabs((double)y[o + d]));
                            }
                        }
        }
        CHECK(den > 0);
        if (num / den > 1e-5)
            PD_TEST_FAIL_("job %d: K/V differ from a solo prefill: %g normalized", i, num / den);
        struct pd_sample_result want;
        const struct pd_sampling greedy = PD_SAMPLING_DEFAULT;
        CHECK_EQ_INT(pd_sample(sampler, &greedy, logits, toks, lens[i], NULL, 0, &want), 0);
        if (!fx_near_tie(logits, V))
            CHECK_EQ_INT(g[i].first.token, want.token);
        else
            fprintf(stderr, "  job %d: near-tie at the first token, not compared\n", i);
        pd_engine_seq_release(solo, &q);
        /* the transfer ends: drop its references */
        CHECK_EQ_INT(pf_sched_unref(r.s, g[i].blocks, NULL, g[i].n_blocks), 0);
    }
    pd_sampler_free(sampler);
    free(logits);
    pd_engine_free(solo);
    rig_down(&r);
}

/* After DONE the job's own sequence is gone but its blocks stay allocated
 * until the transfer drops them; then every block is free. */
static void prefilld_blocks_live_until_unref(void)
{
    struct rig r;
    rig_up(&r, 8, 2, 4, true);
    submit(&r, job(&r, 1, 1, 40, 3));
    collect(&r, 1, true);
    const struct got *g = &r.g[0];
    CHECK(g->done);
    CHECK_EQ_INT(g->n_blocks, 3);
    pd_worker_stop(pf_sched_worker(r.s)); /* the pool is ours to look at */
    struct pd_kvcache *kc = pd_engine_kvcache(r.e);
    CHECK_EQ_INT(pd_kvcache_n_free(kc), 8 - 3);
    for (uint32_t b = 0; b < 3; b++)
        CHECK_EQ_INT(pd_kvcache_refcount(kc, g->blocks[b]), 1);
    CHECK_EQ_INT(pf_sched_unref(r.s, g->blocks, NULL, 3), 0);
    rig_down(&r); /* applies the unref, then checks every block is free */
}

/* A pool that holds one prompt at a time: the second waits until the first
 * one's transfer ends, then runs (nothing deadlocks, nothing fails). */
static void prefilld_full_pool_waits_for_transfers(void)
{
    struct rig r;
    rig_up(&r, 4, 2, 4, true);
    for (int i = 0; i < 2; i++) /* 4 blocks each: the whole pool */
        submit(&r, job(&r, 1, (uint64_t)i + 1, 60, (uint32_t)i + 7));
    /* hold the first job's blocks: the second cannot start */
    collect(&r, 1, true);
    CHECK(r.g[0].done);
    fx_sleep_ms(200);
    for (struct pf_event *e = pf_sched_take(r.s), *next; e; e = next) {
        next = e->next;
        CHECK(e->job->owner != &r.g[1]); /* nothing of the second job yet */
        pf_event_free(e);
    }
    CHECK_EQ_INT(pf_sched_unref(r.s, r.g[0].blocks, NULL, r.g[0].n_blocks), 0);
    collect(&r, 2, false);
    CHECK(r.g[1].done);
    CHECK_EQ_INT(r.g[1].n_blocks, 4);
    rig_down(&r);
}

/* One running prefill at a time; peer 1 queues five jobs, then peer 2 one:
 * peer 2's goes second, not last. */
static void prefilld_peers_take_turns(void)
{
    struct rig r;
    rig_up(&r, 32, 1, 16, false); /* queue everything before the thread starts */
    for (int i = 0; i < 6; i++)
        submit(&r, job(&r, i < 5 ? 1 : 2, (uint64_t)i + 1, 30, (uint32_t)i));
    start(&r);
    collect(&r, 6, false);
    for (int i = 0; i < 6; i++)
        CHECK(r.g[i].done);
    CHECK_EQ_INT(r.g[0].order, 0);
    CHECK_EQ_INT(r.g[5].order, 1);
    rig_down(&r);
}

static void prefilld_refuses_what_never_fits_and_a_full_queue(void)
{
    struct rig r;
    rig_up(&r, 4, 1, 2, false);
    struct pf_job *big = job(&r, 1, 1, 65, 1); /* 5 blocks > a pool of 4 */
    CHECK_EQ_INT(pf_sched_submit(r.s, big), -E2BIG);
    pf_job_unref(big);
    struct pf_job *empty = job(&r, 1, 2, 1, 1);
    empty->n_tokens = 0;
    CHECK_EQ_INT(pf_sched_submit(r.s, empty), -E2BIG);
    pf_job_unref(empty);
    for (int i = 0; i < 3; i++) {
        struct pf_job *j = job(&r, 1, (uint64_t)i + 3, 8, 1);
        CHECK_EQ_INT(pf_sched_submit(r.s, j), i < 2 ? 0 : -EAGAIN);
        pf_job_unref(j);
    }
    pd_worker_stop(pf_sched_worker(r.s)); /* never started: the queued jobs end as cancelled */
    int ended = 0;
    for (struct pf_event *e = pf_sched_take(r.s), *next; e; e = next) {
        next = e->next;
        ended += e->type == PF_EV_END && e->reason == PD_R_SHUTDOWN;
        pf_event_free(e);
    }
    CHECK_EQ_INT(ended, 2);
    rig_down(&r);
}

/* A cancelled job ends with CANCELLED; runs it already handed out still
 * come back through unref; nothing leaks. */
static void prefilld_cancel_ends_the_job(void)
{
    struct rig r;
    rig_up(&r, 32, 1, 4, false);
    submit(&r, job(&r, 1, 1, 200, 0));
    struct pf_job *j = job(&r, 1, 2, 200, 1);
    CHECK_EQ_INT(pf_sched_submit(r.s, j), 0);
    pf_job_cancel(j); /* cancelled while queued */
    pf_job_unref(j);
    start(&r);
    collect(&r, 2, false);
    CHECK(r.g[0].done);
    CHECK(r.g[1].ended);
    CHECK_EQ_INT(r.g[1].reason, PD_R_CANCELLED);
    CHECK_EQ_INT(r.g[1].n_blocks, 0);
    rig_down(&r);
}

/* ---- prefix caching ---- */

enum { BS = 16 }; /* the engine's default block size */

/* Decoded's name of block k of toks[0, n) under salt: the chain from
 * pd_prefix_root over this engine's KV layout. */
static void block_name(struct rig *r, const uint8_t salt[PD_PREFIX_HASH_LEN], const int32_t *toks,
                       uint32_t n, uint32_t k, uint8_t out[PD_PREFIX_HASH_LEN])
{
    struct pd_kv_layout l;
    uint8_t root[PD_PREFIX_HASH_LEN];
    struct pd_prefix_seq ps;
    CHECK_EQ_INT(pd_kvcache_layout(pd_engine_kvcache(r->e))->block_size, BS);
    pd_engine_kv_layout(r->e, &l);
    pd_prefix_root(&l, salt, root);
    pd_prefix_seq_init(&ps, root);
    CHECK_EQ_INT(pd_prefix_seq_extend(&ps, toks, n, BS), 0);
    CHECK(k < ps.n);
    memcpy(out, ps.h[k], PD_PREFIX_HASH_LEN);
    pd_prefix_seq_done(&ps);
}

/* Job id (peer 1) of toks[0, n) (copied), with salt (NULL: none) and
 * n_cached blocks decoded holds, cached_name as decoded names them. */
static struct pf_job *pjob(struct rig *r, uint64_t id, const int32_t *toks, uint32_t n,
                           const uint8_t *salt, uint32_t n_cached)
{
    struct pf_job *j = job(r, 1, id, n, 0);
    memcpy(j->tokens, toks, n * sizeof(*toks));
    if (salt)
        memcpy(j->salt, salt, PD_PREFIX_HASH_LEN);
    j->n_cached = n_cached;
    if (n_cached)
        block_name(r, j->salt, toks, n, n_cached - 1, j->cached_name);
    return j;
}

/* The transfer of g's runs ends (they were collected with hold). */
static void release(struct rig *r, const struct got *g)
{
    CHECK_EQ_INT(pf_sched_unref(r->s, g->blocks, NULL, g->n_blocks), 0);
}

/* g's runs (numbered from the prompt's block first) hold the K/V a solo
 * prefill of toks[0, n) on a fresh engine with the cache off writes in its
 * blocks [first, ...) (normalized error, as above: the solo run batches
 * differently), and the first token is the one local sampling picks unless
 * the top two are a near-tie. The runs' blocks must still be held. */
static void check_matches_solo(struct rig *r, const struct got *g, const int32_t *toks, uint32_t n,
                               uint32_t first)
{
    struct pd_engine *solo = engine(r->m, 16, 1);
    struct pd_kvcache *tc = pd_engine_kv_channel_pool(r->e), *skc = pd_engine_kvcache(solo);
    const struct pd_kv_geom *geo = pd_kvcache_layout(skc);
    const size_t per_block = pd_kvcache_block_bytes(skc) / sizeof(float);
    const uint32_t V = pd_engine_n_vocab(solo);
    float *logits = malloc(V * sizeof(float));
    struct pd_sampler *sampler = pd_sampler_new(V);
    struct pd_kvseq q;
    char err[256];
    CHECK(logits && sampler);
    CHECK(!pd_kvcache_prefix(skc));
    CHECK_EQ_INT(pd_kvcache_block_bytes(tc), pd_kvcache_block_bytes(skc));
    CHECK(g->done);
    CHECK_EQ_INT(first + g->n_blocks, (n + BS - 1) / BS);
    pd_kvseq_init(&q);
    CHECK_EQ_INT(pd_engine_prefill(solo, &q, toks, n, logits, err, sizeof(err)), 0);
    double num = 0, den = 0;
    for (uint32_t b = 0; b < g->n_blocks; b++) {
        const uint32_t k = first + b; /* the prompt's block */
        const float *x = pd_kvcache_pool(tc) + (size_t)g->blocks[b] * per_block;
        const float *y = pd_kvcache_pool(skc) + (size_t)q.blocks[k] * per_block;
        /* the last block holds only the prompt's tokens: compare those */
        const uint32_t used = (k + 1) * BS <= n ? BS : n - k * BS;
        for (uint32_t l = 0; l < geo->n_layer; l++)
            for (uint32_t kv = 0; kv < 2; kv++)
                for (uint32_t h = 0; h < geo->n_head_kv; h++)
                    for (uint32_t t = 0; t < used; t++) {
                        uint64_t o = pd_kv_offset(geo, 0, l, kv, h, t);
                        for (uint32_t d = 0; d < geo->head_dim; d++) {
                            num = fmax(num, fabs((double)x[o + d] - y[o + d]));
                            den = fmax(den, fabs((double)y[o + d]));
                        }
                    }
    }
    CHECK(den > 0);
    if (num / den > 1e-5)
        PD_TEST_FAIL_("K/V differ from a solo prefill's blocks [%u, %u): %g normalized", first,
                      first + g->n_blocks, num / den);
    struct pd_sample_result want;
    const struct pd_sampling greedy = PD_SAMPLING_DEFAULT;
    CHECK_EQ_INT(pd_sample(sampler, &greedy, logits, toks, n, NULL, 0, &want), 0);
    if (!fx_near_tie(logits, V))
        CHECK_EQ_INT(g->first.token, want.token);
    else
        fprintf(stderr, "  near-tie at the first token, not compared\n");
    pd_engine_seq_release(solo, &q);
    pd_sampler_free(sampler);
    free(logits);
    pd_engine_free(solo);
}

/* B shares A's first 80 tokens (5 full blocks, all below B's last token's
 * block): B maps A's 5 blocks and its K/V is a solo prefill's. */
static void second_prompt_with_shared_prefix_maps_cached_blocks(void)
{
    int32_t a[100], b[120];
    prompt(a, 100, 1);
    prompt(b, 120, 2);
    memcpy(b, a, 80 * sizeof(*a)); /* b differs from token 80 on: block 5 */
    struct rig r;
    rig_up_ex(&r, 40, 2, 4, true, true);
    submit(&r, pjob(&r, 1, a, 100, NULL, 0));
    collect(&r, 1, false);
    CHECK(r.g[0].done);
    CHECK(pd_metric_value(r.pm.hit_tokens) == 0); /* a cold pool */
    submit(&r, pjob(&r, 2, b, 120, NULL, 0));
    collect(&r, 2, true);
    CHECK(pd_metric_value(r.pm.q_tokens) == 100 + 120);
    CHECK(pd_metric_value(r.pm.q_blocks) == 99 / BS + 119 / BS);
    CHECK(pd_metric_value(r.pm.hit_tokens) == 5 * BS);
    CHECK(pd_metric_value(r.pm.hit_blocks) == 5);
    for (uint32_t k = 0; k < 5; k++) /* A's own blocks, not copies */
        CHECK_EQ_INT(r.g[1].blocks[k], r.g[0].blocks[k]);
    check_matches_solo(&r, &r.g[1], b, 120, 0);
    release(&r, &r.g[1]);
    rig_down(&r);
}

/* B is exactly A's first 80 tokens: its last token lies in block 4, so it
 * maps blocks 0-3 only (64 tokens) and computes block 4 in a block of its
 * own; its K/V is a solo prefill's. */
static void cached_prompt_still_computes_its_last_tokens_block(void)
{
    int32_t a[100];
    prompt(a, 100, 4);
    struct rig r;
    rig_up_ex(&r, 40, 2, 4, true, true);
    submit(&r, pjob(&r, 1, a, 100, NULL, 0));
    collect(&r, 1, false);
    submit(&r, pjob(&r, 2, a, 80, NULL, 0));
    collect(&r, 2, true);
    CHECK(r.g[1].done);
    CHECK(pd_metric_value(r.pm.hit_tokens) == 4 * BS);
    CHECK(pd_metric_value(r.pm.hit_blocks) == 4);
    for (uint32_t k = 0; k < 4; k++)
        CHECK_EQ_INT(r.g[1].blocks[k], r.g[0].blocks[k]);
    CHECK(r.g[1].blocks[4] != r.g[0].blocks[4]);
    check_matches_solo(&r, &r.g[1], a, 80, 0);
    release(&r, &r.g[1]);
    rig_down(&r);
}

/* Decoded holds blocks 0-2 of a 90-token prompt (6 blocks): the runs cover
 * relative blocks [0, 3) once each, in order (collect checks it), holding
 * the prompt's blocks [3, 6); the 3 blocks are counted as not sent. */
static void n_cached_blocks_are_not_sent_and_runs_are_relative(void)
{
    int32_t t[90];
    prompt(t, 90, 3);
    struct rig r;
    rig_up_ex(&r, 40, 2, 4, true, true);
    submit(&r, pjob(&r, 1, t, 90, NULL, 3));
    collect(&r, 1, true);
    CHECK(r.g[0].done);
    CHECK_EQ_INT(r.g[0].n_blocks, 6 - 3);
    check_matches_solo(&r, &r.g[0], t, 90, 3);
    CHECK(pd_metric_value(r.sm.blocks_not_sent) == 3);
    CHECK(pd_metric_value(r.sm.bytes_not_sent) == 3.0 * BLOCK_BYTES);
    release(&r, &r.g[0]);
    rig_down(&r);
}

/* A cached_name one byte off, and one made under another salt than the
 * job's: both end INVALID_REQUEST before any run; every block comes back
 * (rig_down). */
static void wrong_cached_name_is_refused(void)
{
    int32_t t[90];
    prompt(t, 90, 5);
    uint8_t other[PD_PREFIX_HASH_LEN];
    pd_prefix_salt("tenant-b", 8, other);
    struct rig r;
    rig_up_ex(&r, 40, 2, 4, false, true);
    struct pf_job *j = pjob(&r, 1, t, 90, NULL, 3);
    j->cached_name[PD_PREFIX_HASH_LEN - 1] ^= 1;
    submit(&r, j);
    j = pjob(&r, 2, t, 90, NULL, 3);
    block_name(&r, other, t, 90, 2, j->cached_name); /* decoded's under its salt, j has none */
    submit(&r, j);
    start(&r);
    collect(&r, 2, false);
    for (int i = 0; i < 2; i++) {
        CHECK(r.g[i].ended);
        CHECK_EQ_INT(r.g[i].reason, PD_R_INVALID_REQUEST);
        CHECK_EQ_INT(r.g[i].n_blocks, 0);
    }
    rig_down(&r);
}

/* Decoded holds 3 blocks the fresh pool does not: 48 tokens recomputed.
 * The same prompt again finds them in its own cache: no more. */
static void cold_cache_counts_recomputed_tokens(void)
{
    int32_t t[60];
    prompt(t, 60, 6);
    struct rig r;
    rig_up_ex(&r, 40, 2, 4, true, true);
    submit(&r, pjob(&r, 1, t, 60, NULL, 3));
    collect(&r, 1, false);
    CHECK(r.g[0].done);
    CHECK(pd_metric_value(r.sm.recomputed) == 3 * BS);
    submit(&r, pjob(&r, 2, t, 60, NULL, 3));
    collect(&r, 2, false);
    CHECK(r.g[1].done);
    CHECK(pd_metric_value(r.pm.hit_tokens) == 3 * BS);
    CHECK(pd_metric_value(r.sm.recomputed) == 3 * BS);
    rig_down(&r);
}

/* The same tokens under another salt find nothing; under the same salt
 * again they do (the cache works). */
static void salt_separates_prefilld_cache(void)
{
    int32_t t[60];
    prompt(t, 60, 7);
    uint8_t salt[PD_PREFIX_HASH_LEN];
    pd_prefix_salt("tenant-b", 8, salt);
    struct rig r;
    rig_up_ex(&r, 40, 2, 4, true, true);
    submit(&r, pjob(&r, 1, t, 60, NULL, 0));
    collect(&r, 1, false);
    submit(&r, pjob(&r, 2, t, 60, salt, 0));
    collect(&r, 2, false);
    CHECK(r.g[1].done);
    CHECK(pd_metric_value(r.pm.hit_tokens) == 0);
    submit(&r, pjob(&r, 3, t, 60, salt, 0));
    collect(&r, 3, false);
    CHECK(r.g[2].done);
    CHECK(pd_metric_value(r.pm.hit_tokens) == 3 * BS);
    rig_down(&r);
}

/* With the cache off, decoded's name is checked all the same: the right one
 * gets runs from block n_cached (relative) holding a solo prefill's blocks,
 * a wrong one is refused; the pool is never looked up. */
static void cache_off_still_checks_cached_name_and_sends_only_missing_blocks(void)
{
    int32_t t[70];
    prompt(t, 70, 8);
    struct rig r;
    rig_up_ex(&r, 40, 2, 4, false, false);
    submit(&r, pjob(&r, 1, t, 70, NULL, 2));
    struct pf_job *j = pjob(&r, 2, t, 70, NULL, 2);
    j->cached_name[0] ^= 0x80;
    submit(&r, j);
    start(&r);
    collect(&r, 2, true);
    CHECK(r.g[0].done);
    CHECK_EQ_INT(r.g[0].n_blocks, 5 - 2);
    check_matches_solo(&r, &r.g[0], t, 70, 2);
    CHECK(r.g[1].ended);
    CHECK_EQ_INT(r.g[1].reason, PD_R_INVALID_REQUEST);
    CHECK_EQ_INT(r.g[1].n_blocks, 0);
    CHECK(pd_metric_value(r.sm.blocks_not_sent) == 2);
    CHECK(pd_metric_value(r.pm.q_tokens) == 0);
    release(&r, &r.g[0]);
    rig_down(&r);
}

/* What PROGRESS reads: nothing before admission; after DONE the job was
 * admitted (computing) and every prompt token is in the cache. */
static void progress_atomics(void)
{
    int32_t t[100];
    prompt(t, 100, 9);
    struct rig r;
    rig_up_ex(&r, 40, 2, 4, false, true);
    struct pf_job *j = pjob(&r, 1, t, 100, NULL, 0);
    pf_job_ref(j); /* ours, to read it after DONE */
    submit(&r, j);
    CHECK(!atomic_load(&j->computing));
    CHECK_EQ_INT(atomic_load(&j->tokens_done), 0);
    start(&r);
    collect(&r, 1, false);
    CHECK(r.g[0].done);
    CHECK(atomic_load(&j->computing));
    CHECK_EQ_INT(atomic_load(&j->tokens_done), 100);
    pf_job_unref(j);
    rig_down(&r);
}

/* ---- echo's prompt log-probabilities (PD_PREFILL_F_PROMPT_LP): j->plp ---- */

/* j asks for its prompt scored, with n_top alternatives */
static void ask_plp(struct pf_job *j, uint32_t n_top)
{
    CHECK((j->plp = calloc((size_t)j->n_tokens + 1, sizeof(*j->plp))) != NULL);
    j->sampling.n_logprobs = n_top;
}

/* Every prompt position's raw logits of toks[0, n), one step on a fresh
 * engine of the rig's model: (n, V) */
static float *solo_logits(struct rig *r, const int32_t *toks, uint32_t n)
{
    struct pd_engine *solo = fx_engine(r->m, 16ull * BLOCK_BYTES, 256, 1);
    float *l = fx_prompt_logits(solo, toks, n);
    pd_engine_free(solo);
    return l;
}

/* log-softmax of row[0, V) at token, in double */
static double log_softmax_at(const float *row, uint32_t V, int32_t token)
{
    double mx = -INFINITY, sum = 0;
    for (uint32_t i = 0; i < V; i++)
        mx = row[i] > mx ? row[i] : mx;
    for (uint32_t i = 0; i < V; i++)
        sum += exp((double)row[i] - mx);
    return (double)row[token] - mx - log(sum);
}

#define PLP_TOL 1e-4 /* the scheduler's steps batch other than the solo step */

/* plp[i], i in [1, n), is prompt token i's log-probability given those
 * before it, as the solo logits' row i - 1 says (within PLP_TOL), with the
 * n_top most probable of that row (each alternative's number is its token's
 * there, in descending order); plp[0] is untouched; plp[n] is the DONE
 * event's token */
static void check_plp(struct rig *r, const struct pf_job *j, const struct got *g, uint32_t n_top)
{
    const uint32_t n = j->n_tokens;
    float *l = solo_logits(r, j->tokens, n);
    const uint32_t V = pd_model_hparams(r->m)->n_vocab;
    const struct pd_sample_result *p = j->plp;
    CHECK(g->done);
    CHECK(p[0].token == 0 && p[0].logprob == 0.0f && p[0].n_top == 0);
    for (uint32_t i = 1; i < n; i++) {
        const float *row = l + (size_t)(i - 1) * V;
        const double want = log_softmax_at(row, V, j->tokens[i]);
        if (p[i].token != j->tokens[i] || !(fabs(p[i].logprob - want) <= PLP_TOL))
            PD_TEST_FAIL_("position %u: token %d logprob %.7g; want %d %.7g", i, p[i].token,
                          (double)p[i].logprob, j->tokens[i], want);
        CHECK_EQ_INT(p[i].n_top, n_top);
        struct pd_sample_result ref;
        CHECK_EQ_INT(pd_sample_score(V, row, j->tokens[i], n_top, &ref), 0);
        for (uint32_t k = 0; k < n_top; k++) {
            CHECK(fabs(p[i].top[k].logprob - ref.top[k].logprob) <= PLP_TOL);
            CHECK(fabs(p[i].top[k].logprob - log_softmax_at(row, V, p[i].top[k].token)) <=
                  PLP_TOL);
            CHECK(k == 0 || p[i].top[k].logprob <= p[i].top[k - 1].logprob);
        }
    }
    /* the drawn first token: the DONE event's, the last row's draw */
    CHECK(p[n].token == g->first.token && p[n].logprob == g->first.logprob);
    CHECK_EQ_INT(g->first.n_top, n_top);
    CHECK(fabs(p[n].logprob - log_softmax_at(l + (size_t)(n - 1) * V, V, p[n].token)) <=
          PLP_TOL);
    free(l);
}

/* Prompts of 100 tokens (three steps of the rig's 48), 1 token (nothing to
 * score, only the draw), 17 tokens drawn at temperature 0.9, beside a plain
 * job in the same steps: every position scored as a solo prefill's logits
 * say, the first tokens as ever (greedy: local sampling's), the plain job's
 * unchanged */
static void prefilld_scores_every_prompt_position(void)
{
    struct rig r;
    rig_up(&r, 40, 4, 16, false);
    struct pf_job *a = job(&r, 1, 1, 100, 21), *b = job(&r, 2, 2, 1, 22),
                  *c = job(&r, 1, 3, 17, 23), *plain = job(&r, 2, 4, 60, 24);
    ask_plp(a, 2);
    ask_plp(b, 5);
    ask_plp(c, 0);
    c->sampling.temperature = 0.9f;
    c->sampling.seed = 31;
    struct pf_job *all[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        pf_job_ref(all[i]); /* ours, to read plp after DONE */
    submit(&r, a);
    submit(&r, b);
    submit(&r, c);
    submit(&r, plain);
    start(&r);
    collect(&r, 4, false);
    for (int i = 0; i < 4; i++)
        CHECK(r.g[i].done);
    CHECK_EQ_INT(r.g[0].n_blocks, 7); /* every block of the prompt sent, as ever */
    CHECK_EQ_INT(r.g[1].n_blocks, 1);
    check_plp(&r, a, &r.g[0], 2);
    check_plp(&r, b, &r.g[1], 5);
    check_plp(&r, c, &r.g[2], 0);
    /* greedy first tokens are local sampling's, scored or not */
    struct pd_sampler *smp = pd_sampler_new(pd_model_hparams(r.m)->n_vocab);
    const uint32_t V = pd_model_hparams(r.m)->n_vocab;
    int32_t toks[100];
    static const uint32_t lens[4] = {100, 1, 17, 60}, salts[4] = {21, 22, 23, 24};
    for (int i = 0; i < 4; i++) {
        if (i == 2)
            continue; /* drawn at temperature: compared above with its own row */
        prompt(toks, lens[i], salts[i]);
        float *l = solo_logits(&r, toks, lens[i]);
        const float *last = l + (size_t)(lens[i] - 1) * V;
        struct pd_sample_result want;
        const struct pd_sampling greedy = PD_SAMPLING_DEFAULT;
        CHECK_EQ_INT(pd_sample(smp, &greedy, last, toks, lens[i], NULL, 0, &want), 0);
        if (!fx_near_tie(last, V))
            CHECK_EQ_INT(r.g[i].first.token, want.token);
        free(l);
    }
    pd_sampler_free(smp);
    for (int i = 0; i < 3; i++)
        pf_job_unref(all[i]);
    rig_down(&r);
}

/* With the prefix cache on, a prompt to score maps nothing from it (every
 * position is computed, so scored), even with the whole prompt cached; a
 * plain job of the same tokens after it still does */
static void prefilld_scoring_job_maps_nothing_from_the_prefix_cache(void)
{
    int32_t t[100];
    prompt(t, 100, 25);
    struct rig r;
    rig_up_ex(&r, 40, 2, 4, true, true);
    submit(&r, pjob(&r, 1, t, 100, NULL, 0));
    collect(&r, 1, true);
    CHECK(r.g[0].done);
    release(&r, &r.g[0]);
    CHECK(pd_metric_value(r.pm.hit_tokens) == 0);
    struct pf_job *j = pjob(&r, 2, t, 100, NULL, 0);
    ask_plp(j, 3);
    pf_job_ref(j);
    submit(&r, j);
    collect(&r, 2, true);
    CHECK(r.g[1].done);
    CHECK(pd_metric_value(r.pm.hit_tokens) == 0); /* 6 full blocks were there to map */
    CHECK_EQ_INT(r.g[1].n_blocks, 7);
    check_plp(&r, j, &r.g[1], 3);
    check_matches_solo(&r, &r.g[1], t, 100, 0);
    release(&r, &r.g[1]);
    pf_job_unref(j);
    submit(&r, pjob(&r, 3, t, 100, NULL, 0));
    collect(&r, 3, false);
    CHECK(r.g[2].done);
    CHECK(pd_metric_value(r.pm.hit_tokens) == 6 * BS);
    rig_down(&r);
}

static const struct pd_test tests[] = {
    PD_TEST(prefilld_blocks_and_first_token_match_solo_prefill),
    PD_TEST(prefilld_blocks_live_until_unref),
    PD_TEST(prefilld_full_pool_waits_for_transfers),
    PD_TEST(prefilld_peers_take_turns),
    PD_TEST(prefilld_refuses_what_never_fits_and_a_full_queue),
    PD_TEST(prefilld_cancel_ends_the_job),
    PD_TEST(second_prompt_with_shared_prefix_maps_cached_blocks),
    PD_TEST(cached_prompt_still_computes_its_last_tokens_block),
    PD_TEST(n_cached_blocks_are_not_sent_and_runs_are_relative),
    PD_TEST(wrong_cached_name_is_refused),
    PD_TEST(cold_cache_counts_recomputed_tokens),
    PD_TEST(salt_separates_prefilld_cache),
    PD_TEST(cache_off_still_checks_cached_name_and_sends_only_missing_blocks),
    PD_TEST(progress_atomics),
    PD_TEST(prefilld_scores_every_prompt_position),
    PD_TEST(prefilld_scoring_job_maps_nothing_from_the_prefix_cache),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
