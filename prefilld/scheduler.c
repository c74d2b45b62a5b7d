#include "scheduler.h"

#include "errf.h"
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A batch of block ids whose transfer ended, waiting for the compute thread
 * (the pool is its alone). */
struct unref_list {
    struct unref_list *next;
    uint32_t n;
    bool twins; /* blocks[n .. 2n) are the pool's twins of blocks[0 .. n) */
    uint32_t blocks[];
};

/* When each decode peer was last served: the fairness order. */
struct peer_mark {
    uint64_t peer, last;
};

struct pf_sched {
    struct pf_sched_params p;
    struct pd_kvcache *kc;
    struct pd_kvcache *xc; /* a GPU pool's staging (the blocks the KV channel sends), or NULL */
    struct pd_kvcache *tc; /* the blocks runs carry: xc, else kc */
    uint32_t block_size, max_model_len, max_batched;
    bool prefix; /* the pool caches prefixes */
    struct pd_kv_layout layout; /* the prefix names' namespace (with each job's salt) */
    struct pd_sample_result *results; /* (max_running): the first tokens, sampled in the step */
    struct pd_batch_item *items; /* (max_running) */
    struct pf_job **item_job; /* (max_running) */
    struct pf_job **active; /* (max_running) admitted jobs */
    uint32_t n_active;
    struct peer_mark *marks; /* (max_waiting + max_running) */
    uint32_t n_marks;
    uint64_t tick; /* steps taken */

    uint64_t steps;

    struct pd_worker w; /* the compute thread, the queue, the outbox */
    struct unref_list *unrefs; /* under w's lock */
    atomic_uint n_running;
};

#define JOB(n) PD_WNODE_ENTRY(n, struct pf_job, qnode)

static double secs(uint64_t a, uint64_t b) { return b > a ? (double)(b - a) * 1e-9 : 0.0; }

struct pf_job *pf_job_new(void)
{
    struct pf_job *j = calloc(1, sizeof(*j));
    /* its last event (DONE or END) comes with it: ending never waits for memory */
    if (j && !(j->final = calloc(1, sizeof(*j->final)))) {
        free(j);
        j = NULL;
    } else if (j) {
        pd_wjob_init(&j->base);
        pd_kvseq_init(&j->seq); /* the pool's blocks */
        pd_kvseq_init(&j->xseq); /* a GPU pool's staging */
    }
    return j;
}

void pf_job_ref(struct pf_job *j) { pd_wjob_ref(&j->base); }

void pf_job_unref(struct pf_job *j)
{
    if (!j || !pd_wjob_unref(&j->base))
        return;
    free(j->final); /* never posted */
    free(j->tokens);
    free(j->bias);
    free(j->plp);
    free(j->mask);
    pd_prefix_seq_done(&j->names);
    free(j);
}

void pf_job_cancel(struct pf_job *j) { pd_wjob_cancel(&j->base); }

void pf_event_free(struct pf_event *e)
{
    if (!e)
        return;
    pf_job_unref(e->job);
    free(e->blocks);
    free(e->twins);
    free(e);
}

/* ---- events ---- */

/* A RUN: NULL when there is no memory for it (the caller fails the job). */
static struct pf_event *run_event(struct pf_job *j, uint32_t n_blocks, bool twins)
{
    struct pf_event *e = calloc(1, sizeof(*e));
    if (!e || !(e->blocks = malloc((size_t)n_blocks * sizeof(*e->blocks))) ||
        (twins && !(e->twins = malloc((size_t)n_blocks * sizeof(*e->twins))))) {
        if (e)
            free(e->blocks);
        free(e);
        return NULL;
    }
    pf_job_ref(j);
    e->job = j;
    e->type = PF_EV_RUN;
    return e;
}

/* The job's last event (DONE or END), allocated with the job: it cannot be
 * lost (a lost END would leave a transfer handle for ever). Once a job. */
static struct pf_event *final_event(struct pf_job *j, enum pf_event_type type)
{
    struct pf_event *e = j->final;
    j->final = NULL;
    pf_job_ref(j);
    e->job = j;
    e->type = type;
    return e;
}

static void post(struct pf_sched *s, struct pf_event *e) { pd_worker_post(&s->w, &e->node); }

struct pf_event *pf_sched_take(struct pf_sched *s)
{
    struct pd_wnode *n = pd_worker_take(&s->w);
    struct pf_event *head = n ? PD_WNODE_ENTRY(n, struct pf_event, node) : NULL;
    for (struct pf_event *e = head; e; e = e->next) /* the loop reads the list by next */
        e->next = e->node.next ? PD_WNODE_ENTRY(e->node.next, struct pf_event, node) : NULL;
    return head;
}

static void update_gauges(struct pf_sched *s);

/* The job's prefill is over: its sequence goes (blocks in flight keep their
 * transfer references), the compute thread's reference too; the gauges
 * before the event, which the loop may answer at once. */
static void end_job(struct pf_sched *s, struct pf_job *j, struct pf_event *e)
{
    pd_engine_seq_release(s->p.engine, &j->seq);
    if (s->xc)
        pd_kvseq_release(s->xc, &j->xseq);
    update_gauges(s);
    post(s, e);
    pf_job_unref(j);
}

static void fail_job(struct pf_sched *s, struct pf_job *j, int reason, const char *err)
{
    struct pf_event *e = final_event(j, PF_EV_END);
    e->reason = reason;
    snprintf(e->err, sizeof(e->err), "%s", err ? err : "");
    end_job(s, j, e);
}

/* ---- fairness ---- */

static struct peer_mark *mark_of(struct pf_sched *s, uint64_t peer)
{
    for (uint32_t i = 0; i < s->n_marks; i++)
        if (s->marks[i].peer == peer)
            return &s->marks[i];
    return NULL;
}

/* Forget peers with no job left, so the table stays bounded by the jobs. */
static void marks_gc(struct pf_sched *s)
{
    for (uint32_t i = 0; i < s->n_marks;) {
        bool used = false;
        for (uint32_t k = 0; k < s->n_active && !used; k++)
            used = s->active[k]->peer == s->marks[i].peer;
        pd_worker_lock(&s->w);
        for (struct pd_wnode *n = pd_worker_queue(&s->w)->head; n && !used; n = n->next)
            used = JOB(n)->peer == s->marks[i].peer;
        pd_worker_unlock(&s->w);
        if (used)
            i++;
        else
            s->marks[i] = s->marks[--s->n_marks];
    }
}

static uint64_t last_served(struct pf_sched *s, uint64_t peer)
{
    struct peer_mark *m = mark_of(s, peer);
    return m ? m->last : 0;
}

static void served(struct pf_sched *s, uint64_t peer)
{
    struct peer_mark *m = mark_of(s, peer);
    if (!m && s->n_marks < s->p.max_waiting + s->p.max_running) {
        m = &s->marks[s->n_marks++];
        m->peer = peer;
    }
    if (m)
        m->last = s->tick;
}

/* ---- admission: a job takes every block of its prompt at once, so an
 * admitted job always finishes (two half-done prompts can never deadlock
 * over the rest of the pool). Blocks come back as transfers end. ---- */

static void update_gauges(struct pf_sched *s)
{
    uint32_t total = pd_kvcache_n_blocks(s->kc), free_ = pd_kvcache_n_free(s->kc);
    pd_metric_set(s->p.metrics.running, s->n_active);
    pd_metric_set(s->p.metrics.kv_used, total - free_);
    pd_metric_set(s->p.metrics.kv_free, free_);
    pd_metric_set(s->p.metrics.staging_used,
                  s->xc ? pd_kvcache_n_blocks(s->xc) - pd_kvcache_n_free(s->xc) : 0);
    pd_prefix_metrics_pool(s->p.metrics.prefix, s->kc);
    atomic_store(&s->n_running, s->n_active);
}

/* The queued job to admit next: cancelled ones first (to drop them), then
 * the one whose peer was served least recently, oldest first among equals. */
static struct pf_job *pick_queued(struct pf_sched *s)
{
    struct pf_job *best = NULL;
    uint64_t best_last = UINT64_MAX;
    pd_worker_lock(&s->w);
    for (struct pd_wnode *n = pd_worker_queue(&s->w)->head; n; n = n->next) {
        struct pf_job *j = JOB(n);
        if (pd_wjob_cancelled(&j->base)) {
            best = j;
            break;
        }
        uint64_t last = last_served(s, j->peer);
        if (last < best_last) {
            best = j;
            best_last = last;
        }
    }
    pd_worker_unlock(&s->w);
    return best;
}

static void dequeue(struct pf_sched *s, struct pf_job *j)
{
    pd_worker_lock(&s->w);
    struct pd_wlist *q = pd_worker_queue(&s->w);
    struct pd_wnode *prev = NULL;
    for (struct pd_wnode *n = q->head; n; prev = n, n = n->next)
        if (n == &j->qnode) {
            pd_wlist_remove(q, prev, n);
            break;
        }
    pd_worker_unlock(&s->w);
}

/* The names of the prompt's full blocks but the last token's, and decoded's
 * word on the prefix it holds checked against them: -EBADMSG (with err)
 * when decoded names another prefix (another salt, model or tokens: it would
 * splice our blocks after KV that is not theirs), -ENOMEM. */
static int prepare(struct pf_sched *s, struct pf_job *j, char *err, size_t errlen)
{
    uint8_t root[PD_PREFIX_HASH_LEN];
    uint32_t full = (j->n_tokens - 1) / s->block_size; /* the most a lookup may map */
    pd_prefix_root(&s->layout, j->salt, root);
    pd_prefix_seq_init(&j->names, root);
    if ((s->prefix || j->n_cached) &&
        pd_prefix_seq_extend(&j->names, j->tokens, j->n_tokens, s->block_size) < 0)
        return pd_errf(err, errlen, -ENOMEM, "out of memory naming the prompt's blocks");
    if (j->n_cached > full) /* the frame's check keeps this from happening */
        return pd_errf(err, errlen, -EBADMSG, "%" PRIu32 " cached blocks of a %" PRIu32
                       "-token prompt", j->n_cached, j->n_tokens);
    if (j->n_cached && sodium_memcmp(j->names.h[j->n_cached - 1], j->cached_name,
                                     PD_PREFIX_HASH_LEN) != 0)
        return pd_errf(err, errlen, -EBADMSG, "decoded's %" PRIu32 " cached blocks are not this "
                       "prompt's prefix here (another cache_salt, model or KV layout)",
                       j->n_cached);
    j->prepared = true;
    return 0;
}

static void admit(struct pf_sched *s)
{
    struct pf_job *j;
    char err[200];
    while ((j = pick_queued(s))) {
        if (pd_wjob_cancelled(&j->base)) {
            dequeue(s, j);
            fail_job(s, j, PD_R_CANCELLED, "cancelled while queued");
            continue;
        }
        if (s->n_active == s->p.max_running)
            return;
        int rc = j->prepared ? 0 : prepare(s, j, err, sizeof(err));
        if (rc < 0) {
            dequeue(s, j);
            fail_job(s, j, rc == -ENOMEM ? PD_R_OVERLOADED : PD_R_INVALID_REQUEST, err);
            continue;
        }
        /* the longest prefix this pool holds, then blocks for the rest: a
         * job that does not fit waits for transfers to end (the loop's
         * unrefs), and jobs behind it wait too (FIFO per fairness order: a
         * small job does not starve a large one) */
        uint32_t full = (j->n_tokens - 1) / s->block_size; /* the last token is computed */
        /* a prompt to score computes every position */
        int hit = s->prefix && !j->plp ? pd_kvseq_map_prefix(s->kc, &j->seq, j->names.h, full)
                                       : 0;
        if (pd_kvseq_reserve(s->kc, &j->seq, j->n_tokens) < 0) {
            pd_kvseq_release(s->kc, &j->seq); /* the mapped prefix back to the idle list */
            return;
        }
        /* a GPU pool: the staging the runs will be copied into, as well
         * (for the blocks decoded lacks) */
        if (s->xc && pd_kvseq_reserve(s->xc, &j->xseq,
                                      j->n_tokens - j->n_cached * s->block_size) < 0) {
            pd_kvseq_release(s->kc, &j->seq);
            return;
        }
        if (hit < 0)
            hit = 0;
        j->n_pub = (uint32_t)hit;
        j->n_sent_blocks = j->n_cached;
        if (s->prefix)
            pd_prefix_metrics_lookup(s->p.metrics.prefix, j->n_tokens, (uint32_t)hit *
                                     s->block_size, full, (uint32_t)hit);
        if ((uint32_t)hit < j->n_cached)
            pd_metric_add(s->p.metrics.recomputed,
                          (double)(j->n_cached - (uint32_t)hit) * s->block_size);
        pd_metric_add(s->p.metrics.blocks_not_sent, j->n_cached);
        pd_metric_add(s->p.metrics.bytes_not_sent,
                      (double)j->n_cached * (double)pd_kvcache_block_bytes(s->kc));
        atomic_store(&j->tokens_done, j->seq.n_tokens);
        atomic_store(&j->computing, true);
        dequeue(s, j);
        pd_metric_observe(s->p.metrics.queue_time, secs(j->t_arrival_ns, pd_now_ns()));
        served(s, j->peer);
        s->active[s->n_active++] = j;
    }
}

/* ---- unrefs from the loop ---- */

static void apply_unrefs(struct pf_sched *s)
{
    pd_worker_lock(&s->w);
    struct unref_list *u = s->unrefs;
    s->unrefs = NULL;
    pd_worker_unlock(&s->w);
    while (u) {
        struct unref_list *next = u->next;
        for (uint32_t i = 0; i < u->n; i++) {
            pd_kvcache_unref(s->tc, u->blocks[i]); /* -EINVAL (a bug) changes nothing */
            if (u->twins)
                pd_kvcache_unref(s->kc, u->blocks[u->n + i]);
        }
        free(u);
        u = next;
    }
}

int pf_sched_unref(struct pf_sched *s, const uint32_t *blocks, const uint32_t *twins, uint32_t n)
{
    if (n == 0)
        return 0;
    struct unref_list *u = malloc(sizeof(*u) + (twins ? 2 : 1) * (size_t)n * sizeof(*blocks));
    if (!u)
        return -ENOMEM;
    u->n = n;
    u->twins = twins != NULL;
    memcpy(u->blocks, blocks, (size_t)n * sizeof(*blocks));
    if (twins)
        memcpy(u->blocks + n, twins, (size_t)n * sizeof(*twins));
    pd_worker_lock(&s->w);
    u->next = s->unrefs;
    s->unrefs = u;
    pd_worker_signal(&s->w);
    pd_worker_unlock(&s->w);
    return 0;
}

/* ---- one step ---- */

static void drop_active(struct pf_sched *s, uint32_t i)
{
    memmove(&s->active[i], &s->active[i + 1], (s->n_active - i - 1) * sizeof(*s->active));
    s->n_active--;
}

/* Blocks [n_sent_blocks, final) as a RUN, each with a transfer reference.
 * From a GPU pool they are copied into the job's staging blocks first, and
 * the run carries those: the copy of this run overlaps the network transfer
 * of the runs before it (the loop sends while this thread computes). With
 * kv_twins the KV channel copies them (after tagging them in the pool): the
 * run carries both, each referenced. */
static int post_run(struct pf_sched *s, struct pf_job *j, bool last, char *err, size_t errlen)
{
    uint32_t final = last ? j->seq.n_blocks : j->seq.n_tokens / s->block_size;
    if (final <= j->n_sent_blocks)
        return 0;
    /* the request's numbering, and the staging's, start at block n_cached */
    uint32_t first = j->n_sent_blocks, n = final - first, rel = first - j->n_cached;
    const uint32_t *src = j->seq.blocks + first, *pool = src;
    const bool twins = s->xc && s->p.kv_twins;
    if (twins) {
        src = j->xseq.blocks + rel;
    } else if (s->xc) {
        int rc = pd_engine_kv_stage(s->p.engine, true, src, j->xseq.blocks + rel, n, err,
                                    errlen);
        if (rc < 0)
            return rc;
        src = j->xseq.blocks + rel;
    }
    struct pf_event *e = run_event(j, n, twins);
    if (!e)
        return pd_errf(err, errlen, -ENOMEM, "out of memory for a run of %" PRIu32 " blocks", n);
    e->first = rel;
    e->n = n;
    for (uint32_t i = 0; i < n; i++) {
        e->blocks[i] = src[i];
        pd_kvcache_ref(s->tc, e->blocks[i]);
        if (twins) {
            e->twins[i] = pool[i];
            pd_kvcache_ref(s->kc, pool[i]);
        }
    }
    j->n_sent_blocks = final;
    post(s, e);
    return 0;
}

/* Active jobs in fairness order (least recently served peer first, then
 * admission order): a stable insertion sort of a short array. */
static void order_active(struct pf_sched *s)
{
    for (uint32_t i = 1; i < s->n_active; i++) {
        struct pf_job *j = s->active[i];
        uint64_t lj = last_served(s, j->peer);
        uint32_t k = i;
        while (k > 0 && last_served(s, s->active[k - 1]->peer) > lj) {
            s->active[k] = s->active[k - 1];
            k--;
        }
        s->active[k] = j;
    }
}

static void step(struct pf_sched *s)
{
    char err[256];
    uint32_t n = 0, budget = s->max_batched, tokens = 0;

    apply_unrefs(s);
    for (uint32_t i = 0; i < s->n_active;) {
        struct pf_job *j = s->active[i];
        if (pd_wjob_cancelled(&j->base)) {
            drop_active(s, i);
            fail_job(s, j, PD_R_CANCELLED, "cancelled");
        } else {
            i++;
        }
    }
    admit(s);
    order_active(s);
    s->tick++;
    for (uint32_t i = 0; i < s->n_active && budget > 0; i++) {
        struct pf_job *j = s->active[i];
        uint32_t done = j->seq.n_tokens, chunk = j->n_tokens - done;
        if (chunk > budget)
            chunk = budget;
        s->items[n] = (struct pd_batch_item){.seq = &j->seq, .tokens = j->tokens + done,
                                             .n_tokens = chunk,
                                             .n_logits = done + chunk == j->n_tokens};
        if (s->items[n].n_logits) { /* the first token, sampled in the step (on a GPU, there) */
            s->items[n].sampling = &j->sampling;
            s->items[n].history = j->tokens;
            s->items[n].n_history = s->items[n].n_prompt = j->n_tokens;
            s->items[n].result = &s->results[n];
        }
        if (j->plp) { /* every position scores the token after it; the last draws */
            const bool last = s->items[n].n_logits;
            s->items[n].n_forced = chunk - last;
            s->items[n].n_logits = chunk;
            s->items[n].forced = j->tokens + done + 1;
            s->items[n].sampling = &j->sampling;
            s->items[n].history = j->tokens;
            s->items[n].n_history = s->items[n].n_prompt = j->n_tokens;
            s->items[n].result = j->plp + done + 1;
        }
        s->item_job[n++] = j;
        budget -= chunk;
        tokens += chunk;
        served(s, j->peer);
    }
    update_gauges(s);
    if (n == 0)
        return;
    int rc = pd_engine_step(s->p.engine, s->items, n, err, sizeof(err));
    pd_worker_beat(&s->w);
    char note[320];
    if (pd_engine_take_note(s->p.engine, note, sizeof(note)))
        pd_log(PD_LOG_WARN, "%s", note); /* CUDA graphs turned off, say */
    pd_metric_observe(s->p.metrics.batch_tokens, rc < 0 ? 0 : tokens);
    for (uint32_t i = 0; i < n; i++) {
        struct pf_job *j = s->item_job[i];
        const struct pd_batch_item *it = &s->items[i];
        uint32_t k = 0;
        while (s->active[k] != j)
            k++;
        if (rc < 0) {
            drop_active(s, k);
            fail_job(s, j, PD_R_COMPUTE, err);
            continue;
        }
        bool last = it->n_logits > it->n_forced;
        if (s->prefix) /* its full blocks are final: named for the next prompt like it */
            j->n_pub = pd_kvseq_publish(s->kc, &j->seq, j->names.h, j->n_pub, j->names.n);
        atomic_store(&j->tokens_done, j->seq.n_tokens);
        int pr = post_run(s, j, last, err, sizeof(err));
        if (pr < 0) {
            drop_active(s, k);
            fail_job(s, j, pr == -ENOMEM ? PD_R_OVERLOADED : PD_R_COMPUTE, err);
            continue;
        }
        if (!last)
            continue;
        struct pf_event *e = final_event(j, PF_EV_DONE);
        drop_active(s, k);
        pd_metric_add(s->p.metrics.prompt_tokens, j->n_tokens);
        pd_metric_observe(s->p.metrics.prefill_time, secs(j->t_arrival_ns, pd_now_ns()));
        e->token = it->result[it->n_logits - 1];
        end_job(s, j, e);
    }
    update_gauges(s);
}

/* ---- the worker's hooks (common/daemon/worker.h) ---- */

/* free blocks, the pool's and the staging's: a change means an unref came */
static uint32_t n_free(const struct pf_sched *s)
{
    return pd_kvcache_n_free(s->kc) + (s->xc ? pd_kvcache_n_free(s->xc) : 0);
}

/* A step; false when it did nothing (a queue that cannot be admitted, the
 * pool full of blocks in flight). */
static bool w_step(void *arg)
{
    struct pf_sched *s = arg;
    uint32_t before = n_free(s);
    step(s);
    if (++s->steps % 64 == 0)
        marks_gc(s);
    return s->n_active > 0 || n_free(s) != before;
}

/* The lock held. Queued jobs are work only when one could be admitted;
 * after a step that did nothing, an unref (which signals) or 50 ms, not a
 * spin. */
static uint32_t w_wait_ms(void *arg, bool idle)
{
    struct pf_sched *s = arg;
    const struct pd_wnode *q = pd_worker_queue(&s->w)->head;
    bool work = s->unrefs || s->n_active ||
                (q && (s->n_active < s->p.max_running || pd_wjob_cancelled(&JOB(q)->base)));
    if (!work)
        return s->p.idle_tick_ms ? s->p.idle_tick_ms : 1000;
    return idle && !s->unrefs ? 50 : 0;
}

static void cut_all(void *arg);

static const struct pd_worker_ops worker_ops = {.step = w_step, .wait_ms = w_wait_ms,
                                                .cut = cut_all};

/* Stopping: what runs or waits ends with SHUTDOWN (its events queued). */
static void cut_all(void *arg)
{
    struct pf_sched *s = arg;
    while (s->n_active > 0) {
        struct pf_job *j = s->active[--s->n_active];
        fail_job(s, j, PD_R_SHUTDOWN, "prefilld is stopping");
    }
    for (;;) {
        pd_worker_lock(&s->w);
        struct pd_wnode *n = pd_wlist_pop(pd_worker_queue(&s->w));
        pd_worker_unlock(&s->w);
        if (!n)
            break;
        fail_job(s, JOB(n), PD_R_SHUTDOWN, "prefilld is stopping");
    }
    apply_unrefs(s);
    update_gauges(s);
}

int pf_sched_new(const struct pf_sched_params *p, struct pf_sched **out, char *err,
                 size_t errlen)
{
    struct pf_sched *s = calloc(1, sizeof(*s));
    struct pd_worker_params wp = {.ops = &worker_ops, .arg = s, .max_queued = p->max_waiting,
                                  .notify = p->notify, .notify_arg = p->notify_arg,
                                  .queued = p->metrics.waiting};
    int rc = s ? pd_worker_init(&s->w, &wp) : -ENOMEM; /* first: pf_sched_free undoes it */
    if (rc < 0) {
        free(s);
        return pd_errf(err, errlen, rc, "cannot set up the compute thread: %s", strerror(-rc));
    }
    s->p = *p;
    s->kc = pd_engine_kvcache(p->engine);
    s->xc = pd_engine_kv_staging(p->engine);
    s->tc = pd_engine_kv_channel_pool(p->engine);
    s->block_size = pd_kvcache_layout(s->kc)->block_size;
    s->max_model_len = pd_engine_max_model_len(p->engine);
    s->max_batched = pd_engine_max_batched_tokens(p->engine);
    s->prefix = pd_kvcache_prefix(s->kc);
    pd_engine_kv_layout(p->engine, &s->layout);
    uint32_t m = p->max_running;
    s->results = calloc(m, sizeof(*s->results));
    s->items = calloc(m, sizeof(*s->items));
    s->item_job = calloc(m, sizeof(*s->item_job));
    s->active = calloc(m, sizeof(*s->active));
    s->marks = calloc((size_t)p->max_waiting + m, sizeof(*s->marks));
    if (!s->results || !s->items || !s->item_job || !s->active || !s->marks) {
        pf_sched_free(s);
        snprintf(err, errlen, "out of memory for %u prefills", m);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

struct pf_sched *pf_sched_free(struct pf_sched *s)
{
    if (!s)
        return NULL;
    pd_worker_stop(&s->w); /* what ran or waited ends with SHUTDOWN */
    struct pf_event *e = pf_sched_take(s);
    while (e) {
        struct pf_event *next = e->next;
        if (e->type == PF_EV_RUN) /* never handed to the transport */
            for (uint32_t i = 0; i < e->n; i++) {
                pd_kvcache_unref(s->tc, e->blocks[i]);
                if (e->twins)
                    pd_kvcache_unref(s->kc, e->twins[i]);
            }
        pf_event_free(e);
        e = next;
    }
    apply_unrefs(s);
    pd_worker_done(&s->w);
    free(s->results);
    free(s->items);
    free(s->item_job);
    free(s->active);
    free(s->marks);
    free(s);
    return NULL;
}

int pf_sched_submit(struct pf_sched *s, struct pf_job *j)
{
    uint32_t blocks = (j->n_tokens + s->block_size - 1) / s->block_size;
    if (j->n_tokens == 0 || j->n_tokens >= s->max_model_len ||
        blocks > pd_kvcache_n_blocks(s->kc) || blocks > pd_kvcache_n_blocks(s->tc))
        return -E2BIG;
    pf_job_ref(j);
    int rc = pd_worker_submit(&s->w, &j->qnode);
    if (rc < 0) {
        pf_job_unref(j);
        return rc;
    }
    return 0;
}

struct pd_worker *pf_sched_worker(struct pf_sched *s) { return &s->w; }

void pf_sched_counts(struct pf_sched *s, uint32_t *waiting, uint32_t *running)
{
    *waiting = pd_worker_queued(&s->w);
    *running = atomic_load(&s->n_running);
}
