/* decoded's scheduler on the tiny dummy model, for the tests that play its
 * loop (test_decoded_sched, test_decoded_remote): the model, the engine, the
 * scheduler with its thread running and the metrics it reports; jobs, and
 * the loop's side: taking events and recording each job's tokens and end.
 * dec_rig_down stops the thread, checks that every block came back and frees
 * it all. dec_rig_up_prefix makes a rig whose registry also has the prefix
 * cache's series (kv_metrics.h), with the cache on or off (the reference).
 * n > 1: dec_rig_follower makes choice k of a leader's prompt, and
 * dec_rig_up_watch a rig whose notify watches the KV pool (dec_pool_watch).
 * Builds with decoded's include directory (for its scheduler.h). */
#ifndef PD_TEST_DEC_FIXTURE_H
#define PD_TEST_DEC_FIXTURE_H

#include "engine_fixture.h"
#include "metrics.h"
#include "scheduler.h"

#define DEC_BLOCK_BYTES 8192 /* tiny: 2 layers x 2 KV heads x 16 dims x K,V x fp32 x 16 tokens */

struct dec_rig {
    struct pd_model *m;
    struct pd_engine *e; /* n_blocks of DEC_BLOCK_BYTES */
    struct dec_sched *s;
    struct pd_metrics *reg;
    struct dec_sched_metrics sm; /* in reg: those either test reads, the others NULL */
    struct pd_prefix_metrics pm; /* in reg (dec_rig_up_prefix only; sm.prefix points here) */
    bool prefix_cache; /* the engine caches prefixes */
    uint32_t n_finished; /* events taken that finished their job */
};

/* What the events said about one job. */
struct dec_out {
    int32_t tok[256];
    float logprob[256]; /* of each token in tok */
    uint32_t n;
    bool done;
    enum dec_finish fin;
    int status;
    char err[256];
    const struct dec_event *final; /* allocated with the job: a cancel's event must be it */
};

/* A histogram's _count from the rendered text. */
static inline double dec_hist_count(struct pd_metrics *reg, const char *name)
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

static inline void dec_rig_notify(void *arg) { (void)arg; }

/* prefix_metrics: the prefix cache's series in the registry; prefix_cache:
 * the engine made with the cache on. */
/* How a rig is made: the failover policy, the prefix cache (and its
 * series), the scheduler's cache_remote, and a notify hook (NULL: none). */
struct dec_rig_opts {
    enum dec_failover failover;
    bool prefix_metrics, prefix_cache, cache_remote;
    void (*notify)(void *arg);
    void *notify_arg;
};

static inline void dec_rig_up_ex(struct dec_rig *r, uint32_t n_blocks, uint32_t max_seqs,
                                 const struct dec_rig_opts *o)
{
    const bool prefix_cache = o->prefix_cache;
    static const double qb[] = {0.001, 0.01, 0.1, 1, 10};
    static const double bb[] = {1, 2, 4, 8, 16};
    char err[512];
    memset(r, 0, sizeof(*r));
    r->m = fx_dummy_model("tiny", 5);
    struct pd_engine_params ep = {.model = r->m,
                                  .kv_cache_bytes = (uint64_t)n_blocks * DEC_BLOCK_BYTES,
                                  .max_batched_tokens = 64, .max_batch_items = max_seqs,
                                  .prefix_cache = prefix_cache};
    if (pd_engine_new(&ep, &r->e, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    r->prefix_cache = prefix_cache;
    CHECK(pd_kvcache_prefix(pd_engine_kvcache(r->e)) == prefix_cache);
    CHECK_EQ_INT(pd_kvcache_block_bytes(pd_engine_kvcache(r->e)), DEC_BLOCK_BYTES);
    CHECK_EQ_INT(pd_kvcache_n_blocks(pd_engine_kvcache(r->e)), n_blocks);
    r->reg = pd_metrics_new(NULL, NULL);
    r->sm.preemptions = pd_metrics_counter(r->reg, "t:preemptions", NULL, "h");
    r->sm.kv_used = pd_metrics_gauge(r->reg, "t:kv_used", NULL, "h");
    r->sm.running = pd_metrics_gauge(r->reg, "t:running", NULL, "h");
    r->sm.waiting = pd_metrics_gauge(r->reg, "t:waiting", NULL, "h");
    r->sm.queue_time = pd_metrics_histogram(r->reg, "t:queue_time", "h", qb, 5);
    r->sm.batch_size = pd_metrics_histogram(r->reg, "t:batch_size", "h", bb, 5);
    r->sm.prompt_tokens = pd_metrics_counter(r->reg, "t:prompt", NULL, "h");
    r->sm.remote_prompt_tokens = pd_metrics_counter(r->reg, "t:remote_prompt", NULL, "h");
    r->sm.remote_running = pd_metrics_gauge(r->reg, "t:remote_running", NULL, "h");
    if (o->prefix_metrics) {
        pd_prefix_metrics_init(&r->pm, r->reg);
        r->sm.prefix = &r->pm;
    }
    struct dec_sched_params p = {.engine = r->e, .max_num_seqs = max_seqs, .max_waiting = 64,
                                 .idle_tick_ms = 10, .metrics = r->sm,
                                 .notify = o->notify ? o->notify : dec_rig_notify,
                                 .notify_arg = o->notify_arg, .failover = o->failover,
                                 .cache_remote = o->cache_remote};
    if (dec_sched_new(&p, &r->s, err, sizeof(err)) < 0 ||
        pd_worker_start(dec_sched_worker(r->s), err, sizeof(err)))
        PD_TEST_FAIL_("%s", err);
}

static inline void dec_rig_up(struct dec_rig *r, uint32_t n_blocks, uint32_t max_seqs,
                              enum dec_failover f)
{
    dec_rig_up_ex(r, n_blocks, max_seqs, &(struct dec_rig_opts){.failover = f});
}

/* A rig with the prefix cache's series, the cache on or off. */
static inline void dec_rig_up_prefix(struct dec_rig *r, uint32_t n_blocks, uint32_t max_seqs,
                                     bool prefix_cache)
{
    dec_rig_up_ex(r, n_blocks, max_seqs,
                  &(struct dec_rig_opts){.failover = DEC_FAILOVER_RETRY, .prefix_metrics = true,
                                         .prefix_cache = prefix_cache});
}

/* A rig with the prefix cache's series, the failover policy f and the
 * scheduler's cache_remote (publish the prompt blocks a peer sent once
 * verified), which the rigs above leave false. */
static inline void dec_rig_up_remote(struct dec_rig *r, uint32_t n_blocks, uint32_t max_seqs,
                                     enum dec_failover f, bool prefix_cache, bool cache_remote)
{
    dec_rig_up_ex(r, n_blocks, max_seqs,
                  &(struct dec_rig_opts){.failover = f, .prefix_metrics = true,
                                         .prefix_cache = prefix_cache,
                                         .cache_remote = cache_remote});
}

static inline void dec_rig_down(struct dec_rig *r)
{
    pd_worker_stop(dec_sched_worker(r->s));
    /* the compute thread is gone: the pool is ours to look at. Idle cached
     * blocks count as free; none may still be referenced */
    CHECK(fx_all_blocks_free(r->e));
    struct pd_kvcache_stats st;
    pd_kvcache_stats(pd_engine_kvcache(r->e), &st);
    CHECK_EQ_INT(st.idle, st.cached);
    if (!r->prefix_cache)
        CHECK_EQ_INT(st.cached, 0);
    dec_sched_free(r->s);
    pd_metrics_free(r->reg);
    pd_engine_free(r->e);
    pd_model_free(r->m);
}

/* A job of these prompt tokens, ignoring EOS, for owner, whose events out
 * records; caller unrefs. */
static inline struct dec_job *dec_rig_job(const int32_t *prompt, uint32_t n, uint32_t max_tokens,
                                          const struct pd_sampling *sp, void *owner,
                                          struct dec_out *out)
{
    struct dec_job *j = dec_job_new();
    CHECK(j && (j->prompt = malloc(n * sizeof(int32_t))));
    memcpy(j->prompt, prompt, n * sizeof(int32_t));
    j->n_prompt = n;
    j->max_tokens = max_tokens;
    j->sampling = *sp;
    j->ignore_eos = true;
    j->t_arrival_ns = pd_now_ns();
    j->owner = owner;
    out->final = j->final;
    CHECK(out->final != NULL && j->report != NULL);
    snprintf(j->id, sizeof(j->id), "job-%p", owner);
    return j;
}

/* n > 1: choice k of leader's prompt as decoded's loop makes it (server.c
 * choice_job): the leader's tokens and sampling with seed + k, one reference
 * on the leader (dec_job_unref drops it), prefilled here (remote false).
 * max_tokens is the caller's: the loop copies the leader's, a test may give
 * the leader fewer to end it early, as a stop would. Caller unrefs. */
static inline struct dec_job *dec_rig_follower(struct dec_job *leader, uint32_t k,
                                               uint32_t max_tokens, void *owner,
                                               struct dec_out *out)
{
    struct pd_sampling sp = leader->sampling;
    sp.seed += k;
    struct dec_job *j = dec_rig_job(leader->prompt, leader->n_prompt, max_tokens, &sp, owner, out);
    memcpy(j->salt, leader->salt, sizeof(j->salt));
    j->choice = k;
    j->remote = false;
    dec_job_ref(leader);
    j->leader = leader;
    return j;
}

/* What the KV pool held, seen from the compute thread at each event it
 * posts (notify runs there, after the step: the pool is the thread's own):
 * the most blocks in use, and the blocks in use at the first event posted
 * while `target` jobs were running (the step that admitted the last of
 * them), UINT32_MAX until then. Idle cached blocks count as free.
 * The gate (dec_pool_watch_hold) holds the compute thread in notify. */
struct dec_pool_watch {
    struct dec_rig *r;
    uint32_t target;
    atomic_uint peak, at_target;
    atomic_bool gate, held;
};

static inline void dec_pool_watch_notify(void *arg)
{
    struct dec_pool_watch *w = arg;
    struct pd_kvcache *kc = pd_engine_kvcache(w->r->e);
    uint32_t used = pd_kvcache_n_blocks(kc) - pd_kvcache_n_free(kc), waiting, running;
    if (used > atomic_load(&w->peak))
        atomic_store(&w->peak, used);
    dec_sched_counts(w->r->s, &waiting, &running);
    if (running >= w->target && atomic_load(&w->at_target) == UINT32_MAX)
        atomic_store(&w->at_target, used);
    if (atomic_load(&w->gate)) {
        /* bounded: a test that failed while holding must still stop the rig */
        uint64_t deadline = fx_deadline(60);
        atomic_store(&w->held, true);
        while (atomic_load(&w->gate) && pd_now_ns() < deadline)
            fx_sleep_ms(1);
        atomic_store(&w->gate, false);
    }
}

/* Holds the compute thread of a watched rig between two steps: submits a
 * job of one prompt token and one output token (out records it; it counts
 * as one finished job), whose end event keeps the thread in notify, its
 * block already released, until dec_pool_watch_release. What the test
 * submits meanwhile is all queued when the next step runs: a leader and its
 * followers meet the scheduler together on a machine of 2 CPUs too, where
 * the leader could otherwise run to its end before the test thread submits
 * the next job. Returns once the thread is held. */
static inline void dec_pool_watch_hold(struct dec_rig *r, struct dec_pool_watch *w,
                                       struct dec_out *out)
{
    static const int32_t one = 1;
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    CHECK(w->r == r);
    atomic_store(&w->held, false);
    atomic_store(&w->gate, true);
    struct dec_job *j = dec_rig_job(&one, 1, 1, &sp, out, out);
    CHECK_EQ_INT(dec_sched_submit(r->s, j), 0);
    dec_job_unref(j);
    uint64_t deadline = fx_deadline(60);
    while (!atomic_load(&w->held))
        fx_poll(deadline);
}

static inline void dec_pool_watch_release(struct dec_pool_watch *w)
{
    atomic_store(&w->gate, false);
}

/* A rig (the prefix cache's series, the cache on or off) whose scheduler
 * reports to w (watching for target running jobs). w must outlive the rig. */
static inline void dec_rig_up_watch(struct dec_rig *r, uint32_t n_blocks, uint32_t max_seqs,
                                    bool prefix_cache, struct dec_pool_watch *w, uint32_t target)
{
    w->r = r;
    w->target = target;
    atomic_init(&w->peak, 0);
    atomic_init(&w->at_target, UINT32_MAX);
    atomic_init(&w->gate, false);
    atomic_init(&w->held, false);
    dec_rig_up_ex(r, n_blocks, max_seqs,
                  &(struct dec_rig_opts){.failover = DEC_FAILOVER_RETRY, .prefix_metrics = true,
                                         .prefix_cache = prefix_cache,
                                         .notify = dec_pool_watch_notify, .notify_arg = w});
}

/* A token appends to out; an end is recorded, once. */
static inline void dec_out_record(struct dec_out *x, const struct dec_event *e)
{
    if (e->has_token) {
        CHECK(x->n < 256);
        x->logprob[x->n] = e->token.logprob;
        x->tok[x->n++] = e->token.token;
    }
    if (e->finish != DEC_FIN_NONE) {
        CHECK(!x->done);
        /* an end with no token of its own comes in the event made with the
         * job: ending cannot fail for want of memory */
        if (e->finish == DEC_FIN_CANCELLED)
            CHECK(e == x->final);
        x->done = true;
        x->fin = e->finish;
        x->status = e->status;
        snprintf(x->err, sizeof(x->err), "%s", e->err);
    }
}

/* Takes the events that are ready: each to on_event(arg, e), then freed. */
static inline void dec_rig_pump(struct dec_rig *r,
                                void (*on_event)(void *arg, const struct dec_event *e), void *arg)
{
    for (struct dec_event *e = dec_sched_take(r->s), *next; e; e = next) {
        next = e->next;
        on_event(arg, e);
        r->n_finished += e->finish != DEC_FIN_NONE;
        dec_event_free(e);
    }
}

/* Pumps until n jobs in all have finished (the test fails after 60 s). */
static inline void dec_rig_collect(struct dec_rig *r, uint32_t n,
                                   void (*on_event)(void *arg, const struct dec_event *e),
                                   void *arg)
{
    uint64_t deadline = fx_deadline(60);
    for (;;) {
        dec_rig_pump(r, on_event, arg);
        if (r->n_finished >= n)
            return;
        fx_poll(deadline);
    }
}

#endif
