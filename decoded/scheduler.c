#include "sched_internal.h"

#include "errf.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOB(n) PD_WNODE_ENTRY(n, struct dec_job, qnode)

static double secs(uint64_t a, uint64_t b) { return b > a ? (double)(b - a) * 1e-9 : 0.0; }

struct dec_job *dec_job_new(void)
{
    struct dec_job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    /* its last event and its remote report come with it: ending a request
     * or reporting a prefill never waits for memory */
    j->final = calloc(1, sizeof(*j->final));
    j->report = calloc(1, sizeof(*j->report));
    if (!j->final || !j->report) {
        free(j->final);
        free(j->report);
        free(j);
        return NULL;
    }
    pd_wjob_init(&j->base);
    pd_kvseq_init(&j->seq);
    pd_kvseq_init(&j->xseq);
    return j;
}

void dec_job_ref(struct dec_job *j) { pd_wjob_ref(&j->base); }

void dec_job_unref(struct dec_job *j)
{
    if (!j || !pd_wjob_unref(&j->base))
        return;
    for (uint32_t i = 0; i < j->n_stops; i++)
        free(j->stops[i]);
    free(j->stops);
    free(j->bias);
    free(j->plp);
    free(j->mask);
    pd_schema_unref(j->schema);
    free(j->prompt);
    free(j->toks);
    pd_detok_free(j->detok);
    dec_stop_done(&j->stop);
    pd_prefix_seq_done(&j->names);
    dec_job_unref(j->leader);
    free(j->final); /* never posted */
    free(j->report);
    free(j);
}

void dec_job_cancel(struct dec_job *j) { pd_wjob_cancel(&j->base); }

void dec_event_free(struct dec_event *e)
{
    if (!e)
        return;
    dec_job_unref(e->job);
    free(e->blocks);
    free(e->twins);
    free(e->names);
    free(e->mask);
    free(e->text);
    free(e);
}

/* ---- events ---- */

static struct dec_event *event_new(struct dec_job *j)
{
    struct dec_event *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    dec_job_ref(j);
    e->job = j;
    e->n_gen = j->n_out;
    e->t_first_ns = j->t_first_ns;
    return e;
}

static int event_text(struct dec_event *e, const char *s, size_t n)
{
    char *t = realloc(e->text, e->len + n + 1);
    if (!t)
        return -ENOMEM;
    memcpy(t + e->len, s, n);
    e->len += n;
    t[e->len] = '\0';
    e->text = t;
    return 0;
}

/* The job's last event, allocated with the job: it cannot be lost (a lost
 * final event would leave a client waiting for ever). Once a job. */
static struct dec_event *final_event(struct dec_job *j)
{
    struct dec_event *e = j->final;
    j->final = NULL;
    dec_job_ref(j);
    e->job = j;
    e->n_gen = j->n_out;
    e->t_first_ns = j->t_first_ns;
    return e;
}

static void post(struct dec_sched *s, struct dec_event *e)
{
    if (!e->text)
        event_text(e, "", 0);
    pd_worker_post(&s->w, &e->node);
}

struct dec_event *dec_sched_take(struct dec_sched *s)
{
    struct pd_wnode *n = pd_worker_take(&s->w);
    struct dec_event *head = n ? PD_WNODE_ENTRY(n, struct dec_event, node) : NULL;
    for (struct dec_event *e = head; e; e = e->next) /* the loop reads the list by next */
        e->next = e->node.next ? PD_WNODE_ENTRY(e->node.next, struct dec_event, node) : NULL;
    return head;
}

static void update_gauges(struct dec_sched *s);

/* A finished job's last event: e, or the one allocated with the job. The
 * gauges first: a client that has its answer sees them without the job. */
static void finish(struct dec_sched *s, struct dec_job *j, struct dec_event *e,
                   enum dec_finish why, const char *err)
{
    j->ended = true;
    if (why == DEC_FIN_STOP || why == DEC_FIN_LENGTH)
        dec_sched_hand_down(s, j);
    pd_kvseq_release(s->kc, &j->seq);
    if (s->xc)
        pd_kvseq_release(s->xc, &j->xseq);
    if (!e)
        e = final_event(j);
    update_gauges(s);
    e->finish = why;
    e->n_gen = j->n_out;
    e->n_preempted = j->n_preempted;
    if (err)
        snprintf(e->err, sizeof(e->err), "%s", err);
    if (why == DEC_FIN_STOP || why == DEC_FIN_LENGTH)
        pd_metric_observe(s->p.metrics.e2e, secs(j->t_arrival_ns, pd_now_ns()));
    post(s, e);
    dec_job_unref(j); /* the compute thread's reference */
}

/* ---- text of one token ---- */

static int push_text(struct dec_job *j, struct dec_event *e, const char *piece, size_t n)
{
    const char *out;
    size_t out_len;
    int hit = dec_stop_push(&j->stop, piece, n, &out, &out_len);
    if (hit < 0 || event_text(e, out, out_len) < 0)
        return -ENOMEM;
    return hit;
}

/* Everything held back: the detokenizer's cut character, then stop text. */
static int flush_text(struct dec_job *j, struct dec_event *e)
{
    const char *out;
    size_t out_len;
    int hit = 0;
    if (j->detok) {
        pd_detok_flush(j->detok, &out, &out_len);
        if ((hit = push_text(j, e, out, out_len)) != 0)
            return hit;
    }
    dec_stop_flush(&j->stop, &out, &out_len);
    return event_text(e, out, out_len);
}

/* An end-of-generation token: the tokenizer's, or one the checkpoint's
 * generation_config.json names (a checkpoint has no tokenizer here yet;
 * Llama-3.1 names three). */
static bool is_end(const struct dec_sched *s, int32_t token)
{
    size_t n;
    const int32_t *eos = pd_model_eos(pd_engine_model(s->p.engine), &n);
    if (s->p.tok && pd_tok_is_eog(s->p.tok, token))
        return true;
    for (size_t i = 0; i < n; i++)
        if (eos[i] == token)
            return true;
    return false;
}

/* Record a sampled token; returns the finish it causes (or NONE), fills e. */
static enum dec_finish take_token(struct dec_sched *s, struct dec_job *j,
                                  const struct pd_sample_result *r, struct dec_event *e)
{
    const uint64_t now = pd_now_ns();
    if (j->score_only) /* echo with max_tokens 0: the prompt was the point */
        return DEC_FIN_LENGTH;
    int done = j->constrained ? dec_sched_grammar_take(s, j, r->token) : 0;
    if (done < 0) { /* its mask allowed it not: no memory for the mask, no token allowed,
                     * or a peer's token */
        if (!j->why)
            j->why = "the token broke the response format (out of memory for its mask, or a "
                     "prefill peer's first token outside it)";
        return DEC_FIN_ERROR;
    }
    j->out[j->n_out++] = r->token;
    e->n_gen = j->n_out;
    pd_metric_add(s->p.metrics.gen_tokens, 1);
    if (!j->t_first_ns) {
        j->t_first_ns = now;
        pd_metric_observe(s->p.metrics.ttft, secs(j->t_arrival_ns, now));
    } else {
        pd_metric_observe(s->p.metrics.itl, secs(j->t_last_ns, now));
    }
    j->t_last_ns = now;
    e->t_first_ns = j->t_first_ns;

    if (!j->ignore_eos && is_end(s, r->token))
        return flush_text(j, e) < 0 ? DEC_FIN_ERROR : DEC_FIN_STOP;
    e->has_token = true;
    e->token = *r;

    int hit;
    if (j->detok) {
        const char *piece;
        size_t n;
        if (pd_detok_push(j->detok, r->token, &piece, &n) < 0)
            return DEC_FIN_ERROR;
        hit = push_text(j, e, piece, n);
    } else {
        char piece[16];
        int n = snprintf(piece, sizeof(piece), "[%d]", r->token);
        hit = push_text(j, e, piece, (size_t)n);
    }
    if (hit < 0)
        return DEC_FIN_ERROR;
    if (hit)
        return DEC_FIN_STOP;
    if (done) /* the object is complete: only its end could follow */
        return flush_text(j, e) < 0 ? DEC_FIN_ERROR : DEC_FIN_STOP;
    if (j->n_out >= j->max_tokens || j->n_prompt + j->n_out >= s->max_model_len) {
        hit = flush_text(j, e);
        return hit < 0 ? DEC_FIN_ERROR : hit ? DEC_FIN_STOP : DEC_FIN_LENGTH;
    }
    return DEC_FIN_NONE;
}

/* ---- admission ---- */

static void update_gauges(struct dec_sched *s)
{
    uint32_t total = pd_kvcache_n_blocks(s->kc), free_ = pd_kvcache_n_free(s->kc);
    pd_metric_set(s->p.metrics.running, s->n_active);
    pd_metric_set(s->p.metrics.kv_used, total - free_);
    pd_metric_set(s->p.metrics.kv_free, free_);
    pd_metric_set(s->p.metrics.kv_usage, total ? (double)(total - free_) / total : 0);
    pd_metric_set(s->p.metrics.staging_used,
                  s->xc ? pd_kvcache_n_blocks(s->xc) - pd_kvcache_n_free(s->xc) : 0);
    pd_metric_set(s->p.metrics.remote_running, s->n_remote);
    pd_prefix_metrics_pool(s->p.metrics.prefix, s->kc);
    atomic_store(&s->n_running, s->n_active);
}

/* Per-job state the compute thread builds at its first admission. */
static int admit_prepare(struct dec_sched *s, struct dec_job *j)
{
    size_t n = (size_t)j->n_prompt + j->max_tokens;
    if (!(j->toks = malloc(n * sizeof(*j->toks))))
        return -ENOMEM;
    memcpy(j->toks, j->prompt, (size_t)j->n_prompt * sizeof(*j->toks));
    j->out = j->toks + j->n_prompt;
    uint8_t root[PD_PREFIX_HASH_LEN];
    pd_prefix_root(&s->layout, j->salt, root);
    pd_prefix_seq_init(&j->names, root);
    if (s->p.tok && pd_detok_new(s->p.tok, PD_TOK_SKIP_SPECIAL, &j->detok) < 0)
        return -ENOMEM;
    dec_stop_init(&j->stop, j->stops, j->n_stops);
    return 0;
}

/* Tokens of the job not in the KV cache yet: its prompt (or what is left of
 * it), the last sampled token (a decode step), or after a preemption the
 * prompt and every token generated so far (the recompute). */
static uint32_t pending(const struct dec_job *j)
{
    return j->n_prompt + j->n_out - j->seq.n_tokens;
}

static void drop_active(struct dec_sched *s, uint32_t i)
{
    memmove(&s->active[i], &s->active[i + 1], (s->n_active - i - 1) * sizeof(*s->active));
    s->n_active--;
}

static struct dec_job *queue_pop(struct dec_sched *s)
{
    pd_worker_lock(&s->w);
    struct pd_wnode *n = pd_wlist_pop(pd_worker_queue(&s->w));
    pd_worker_unlock(&s->w);
    return n ? JOB(n) : NULL;
}

/* Recompute-mode preemption of active[i]: its blocks go back to the pool at
 * once; its tokens, detokenizer and stop-string state stay, so when it is
 * readmitted it prefills prompt + output again and carries on from where it
 * was, emitting nothing twice. The front of the queue: it goes first. */
static void preempt(struct dec_sched *s, uint32_t i)
{
    struct dec_job *j = s->active[i];
    drop_active(s, i);
    uint32_t had = j->seq.n_blocks;
    pd_kvseq_release(s->kc, &j->seq); /* its published blocks stay cached, idle */
    j->n_pub = 0;
    j->unverified = false; /* recomputed here when readmitted */
    j->n_preempted++;
    pd_metric_add(s->p.metrics.preemptions, 1);
    pd_worker_lock(&s->w);
    pd_wlist_push_front(pd_worker_queue(&s->w), &j->qnode);
    pd_worker_unlock(&s->w);
    pd_log(PD_LOG_DEBUG, "%s: preempted (KV pool full): %u blocks released, %u tokens to "
           "recompute", j->id, had, j->n_prompt + j->n_out);
    pd_log_ratelimited(&s->rl_preempt, PD_LOG_NOTICE,
                       "KV pool full: preempting the newest requests (recomputed later); a "
                       "larger --kv-cache-memory or a smaller --max-num-seqs avoids it");
}

/* Cancelled jobs, running or queued, are finished now: their blocks are
 * free before the step that follows. */
static void sweep_cancelled(struct dec_sched *s)
{
    /* a REMOTE job's blocks are the transfer's until the loop says it is
     * released: ask for the cancel, finish it then (take_inbox) */
    for (struct dec_job *j = s->remote; j; j = j->rnext) {
        struct dec_event *e;
        if (!pd_wjob_cancelled(&j->base) || j->cancel_posted || !(e = event_new(j)))
            continue;
        j->cancel_posted = true;
        e->kind = DEC_EV_REMOTE_CANCEL;
        post(s, e);
    }
    for (uint32_t i = 0; i < s->n_active;) {
        struct dec_job *j = s->active[i];
        if (pd_wjob_cancelled(&j->base)) {
            drop_active(s, i);
            finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
        } else {
            i++;
        }
    }
    struct pd_wlist gone = {0};
    pd_worker_lock(&s->w);
    struct pd_wlist *q = pd_worker_queue(&s->w);
    for (struct pd_wnode *prev = NULL, *n = q->head, *next; n; n = next) {
        next = n->next;
        if (pd_wjob_cancelled(&JOB(n)->base)) {
            pd_wlist_remove(q, prev, n);
            pd_wlist_push(&gone, n);
        } else {
            prev = n;
        }
    }
    pd_worker_unlock(&s->w);
    for (struct pd_wnode *n; (n = pd_wlist_pop(&gone));)
        finish(s, JOB(n), NULL, DEC_FIN_CANCELLED, NULL);
}

/* ---- remote prefill ---- */

static bool wants_remote(const struct dec_job *j)
{
    return j->remote && j->seq.n_tokens == 0 && j->n_out == 0;
}

static void remote_unlink(struct dec_sched *s, struct dec_job *j)
{
    for (struct dec_job **l = &s->remote; *l; l = &(*l)->rnext)
        if (*l == j) {
            *l = j->rnext;
            j->rnext = NULL;
            j->in_remote = false;
            s->n_remote--;
            return;
        }
}

/* Park j (its blocks for the whole prompt reserved) in the REMOTE state and
 * ask the loop to run the transfer. */
static int remote_start(struct dec_sched *s, struct dec_job *j)
{
    /* the blocks the peer fills: the pool's past the cached prefix, or on a
     * GPU the staging's for them */
    const uint32_t k = j->n_mapped, n = j->seq.n_blocks - k;
    const uint32_t *dst = s->xc ? j->xseq.blocks : j->seq.blocks + k;
    struct dec_event *e = event_new(j);
    if (!e || !(e->blocks = malloc((size_t)n * sizeof(*e->blocks)))) {
        dec_event_free(e);
        return -ENOMEM;
    }
    memcpy(e->blocks, dst, (size_t)n * sizeof(*e->blocks));
    if (s->xc) { /* and the device pool's blocks they stand for */
        if (!(e->twins = malloc((size_t)n * sizeof(*e->twins)))) {
            dec_event_free(e);
            return -ENOMEM;
        }
        memcpy(e->twins, j->seq.blocks + k, (size_t)n * sizeof(*e->twins));
    }
    /* the names of the prompt's full blocks: the loop picks the peer that
     * computed the longest of them, and remembers who computed them */
    if (pd_prefix_seq_extend(&j->names, j->toks, j->n_prompt, s->block_size) == 0 &&
        j->names.n && (e->names = malloc((size_t)j->names.n * sizeof(*e->names)))) {
        memcpy(e->names, j->names.h, (size_t)j->names.n * sizeof(*e->names));
        e->n_names = j->names.n;
    }
    e->n_cached = k;
    if (k)
        memcpy(e->cached_name, j->names.h[k - 1], PD_PREFIX_HASH_LEN);
    /* constrained: the peer draws the first token, within this */
    if (j->constrained) {
        if (dec_sched_mask(s, j) < 0 ||
            !(e->mask = malloc(pd_grammar_mask_words(s->grammar) * sizeof(*e->mask)))) {
            dec_event_free(e);
            return -ENOMEM;
        }
        e->mask_words = pd_grammar_mask_words(s->grammar);
        memcpy(e->mask, j->mask, e->mask_words * sizeof(*e->mask));
    }
    e->n_blocks = n;
    e->epoch = j->remote_epoch;
    e->kind = DEC_EV_REMOTE_START;
    j->in_remote = true;
    j->cancel_posted = false;
    j->rnext = s->remote;
    s->remote = j;
    s->n_remote++;
    post(s, e);
    return 0;
}

/* The peer's KV is verified in j's blocks: j continues as if it had just
 * prefilled locally and sampled `first`. */
static void remote_first_token(struct dec_sched *s, struct dec_job *j,
                               const struct pd_sample_result *first, bool in_pool)
{
    if (s->xc && in_pool) {
        pd_kvseq_release(s->xc, &j->xseq);
    } else if (s->xc) { /* from the staging into the GPU pool */
        char err[256];
        int rc = pd_engine_kv_stage(s->p.engine, false, j->seq.blocks + j->n_mapped,
                                    j->xseq.blocks, j->seq.n_blocks - j->n_mapped, err,
                                    sizeof(err));
        pd_kvseq_release(s->xc, &j->xseq);
        if (rc < 0) {
            pd_log(PD_LOG_ERR, "%s: %s", j->id, err);
            finish(s, j, NULL, DEC_FIN_ERROR, err);
            return;
        }
    }
    j->seq.n_tokens = j->n_prompt;
    j->unverified = !s->p.cache_remote;
    dec_sched_publish(s, j); /* verified as it landed (kvx's tags), or nothing */
    j->prompt_counted = true; /* not the local engine's work */
    pd_metric_add(s->p.metrics.remote_prompt_tokens, j->n_prompt);
    struct dec_event *e = event_new(j);
    if (!e) {
        finish(s, j, NULL, DEC_FIN_ERROR, "out of memory");
        return;
    }
    enum dec_finish fin = take_token(s, j, first, e);
    if (fin == DEC_FIN_NONE) {
        post(s, e);
        s->active[s->n_active++] = j; /* a slot is there: REMOTE jobs count as admitted */
        return;
    }
    finish(s, j, e, fin, fin != DEC_FIN_ERROR ? NULL
                         : j->why                ? j->why
                                                 : "out of memory producing the text");
}

/* Nothing usable arrived: --prefill-failover decides. */
static void remote_fallback(struct dec_sched *s, struct dec_job *j, const struct dec_inbox *m)
{
    if (s->p.failover == DEC_FAILOVER_RETRY && !m->exhausted) {
        j->remote_epoch++;
        if (remote_start(s, j) == 0)
            return;
    }
    if (s->p.failover == DEC_FAILOVER_FAIL) {
        struct dec_event *e = final_event(j);
        e->status = m->status ? m->status : 502;
        finish(s, j, e, DEC_FIN_ERROR, m->msg);
        return;
    }
    /* local prefill into the blocks it already holds */
    pd_log(PD_LOG_DEBUG, "%s: prefilling locally after: %s", j->id, m->msg);
    if (s->xc)
        pd_kvseq_release(s->xc, &j->xseq);
    j->remote = false;
    j->seq.n_tokens = j->n_mapped * s->block_size; /* the cached prefix stays */
    s->active[s->n_active++] = j;
}

static void take_inbox(struct dec_sched *s)
{
    pd_worker_lock(&s->w);
    struct pd_wnode *n = pd_wlist_take(&s->inbox);
    pd_worker_unlock(&s->w);
    while (n) {
        struct pd_wnode *next = n->next;
        struct dec_inbox *r = PD_WNODE_ENTRY(n, struct dec_inbox, node);
        struct dec_inbox m = *r;
        struct dec_job *j = m.job;
        /* the report goes back to the job before anything here can start
         * its next attempt (remote_fallback), whose report it will carry */
        if (j->report)
            free(r);
        else
            j->report = r;
        if (j->in_remote) {
            remote_unlink(s, j);
            if (pd_wjob_cancelled(&j->base))
                finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
            else if (m.done)
                remote_first_token(s, j, &m.first, m.in_pool);
            else
                remote_fallback(s, j, &m);
        }
        dec_job_unref(j);
        n = next;
    }
}

/* The loop thread: the job's report (allocated with it) for the caller to
 * fill; a job has one report in flight at most (struct dec_inbox). */
static struct dec_inbox *report_of(struct dec_job *j)
{
    struct dec_inbox *m = j->report;
    j->report = NULL;
    if (!m && !(m = malloc(sizeof(*m)))) /* not reached while the rule holds */
        return NULL;
    *m = (struct dec_inbox){.job = j};
    dec_job_ref(j);
    return m;
}

static void report_send(struct dec_sched *s, struct dec_inbox *m)
{
    pd_worker_lock(&s->w);
    pd_wlist_push(&s->inbox, &m->node);
    pd_worker_signal(&s->w);
    pd_worker_unlock(&s->w);
}

void dec_sched_remote_done(struct dec_sched *s, struct dec_job *j,
                           const struct pd_sample_result *first, bool in_pool)
{
    struct dec_inbox *m = report_of(j);
    if (!m) {
        pd_log(PD_LOG_ERR, "%s: a second remote report, and no memory for it: dropped", j->id);
        return;
    }
    m->done = true;
    m->in_pool = in_pool;
    m->first = *first;
    report_send(s, m);
}

void dec_sched_remote_failed(struct dec_sched *s, struct dec_job *j, bool exhausted, int status,
                             const char *msg)
{
    struct dec_inbox *m = report_of(j);
    if (!m) {
        pd_log(PD_LOG_ERR, "%s: a second remote report, and no memory for it: dropped", j->id);
        return;
    }
    m->exhausted = exhausted;
    m->status = status;
    snprintf(m->msg, sizeof(m->msg), "%s", msg ? msg : "remote prefill failed");
    report_send(s, m);
}

static void add_item(struct dec_sched *s, uint32_t *n, struct dec_job *j, uint32_t want)
{
    const uint32_t p0 = j->seq.n_tokens;
    const bool last = p0 + want == j->n_prompt + j->n_out;
    /* the next token is sampled in the step (on a GPU, where the logits are),
     * over the prompt and the output so far */
    struct pd_batch_item *it = &s->items[*n];
    *it = (struct pd_batch_item){
        .seq = &j->seq, .tokens = j->toks + p0, .n_tokens = want,
        .n_logits = last, .sampling = last ? &j->sampling : NULL, .history = j->toks,
        .n_history = j->n_prompt + j->n_out, .n_prompt = j->n_prompt,
        .result = &s->results[*n]};
    if (j->plp && !j->n_out) {
        /* echo: each position of the chunk scores the prompt token after it
         * (the last prompt position has none: it draws the first token) */
        it->n_forced = want - last;
        it->n_logits = want;
        it->forced = j->toks + p0 + 1;
        it->sampling = &j->sampling;
        it->result = j->plp + p0 + 1;
    }
    s->item_job[(*n)++] = j;
}

/* The running jobs' share of the step, in admission order. Each decoding job
 * takes one token of the budget (kept for it even when an earlier job
 * prefills); a prefilling one takes a chunk of what is left. Blocks are
 * reserved here, as sequences grow; when the pool is short the most
 * recently admitted job is preempted, until the block is there or the job
 * that needs it is itself the most recent. The oldest job therefore always
 * advances, and it fits the pool alone (dec_sched_submit). Returns whether
 * anything was preempted. */
static bool schedule_running(struct dec_sched *s, uint32_t *n, uint32_t *budget)
{
    bool preempted = false;
    uint32_t n_dec = 0; /* decoding jobs not yet scheduled */
    for (uint32_t i = 0; i < s->n_active; i++)
        n_dec += pending(s->active[i]) == 1;
    for (uint32_t i = 0; i < s->n_active; i++) {
        struct dec_job *j = s->active[i];
        uint32_t p = pending(j), want;
        if (p == 1) {
            n_dec--;
            want = 1;
        } else {
            want = p < *budget - n_dec ? p : *budget - n_dec;
        }
        if (want == 0)
            continue;
        int rc;
        while ((rc = pd_engine_seq_prepare(s->p.engine, &j->seq, j->seq.n_tokens + want)) ==
               -ENOSPC) {
            uint32_t victim = s->n_active - 1;
            if (victim != i && pending(s->active[victim]) == 1)
                n_dec--;
            preempt(s, victim);
            preempted = true;
            if (victim == i)
                break;
        }
        if (rc == -ENOSPC)
            break; /* j was the last one */
        if (rc < 0) {
            drop_active(s, i--);
            finish(s, j, NULL, DEC_FIN_ERROR, rc == -ENOMEM ? "out of memory growing the block "
                   "table" : "cannot copy a shared KV block");
            continue;
        }
        add_item(s, n, j, want);
        *budget -= want;
    }
    return preempted;
}

/* A job popped from the queue, its admission's result rc: failed (it ends
 * with an error) or admitted (its queue time observed at the first one).
 * True when admitted. */
static bool admitted(struct dec_sched *s, struct dec_job *j, int rc)
{
    if (rc < 0) {
        finish(s, j, NULL, DEC_FIN_ERROR, "out of memory admitting the request");
        return false;
    }
    if (!j->admitted) {
        j->admitted = true;
        pd_metric_observe(s->p.metrics.queue_time, secs(j->t_arrival_ns, pd_now_ns()));
    }
    return true;
}

/* Queued jobs join, first come first served, while a sequence slot and
 * budget are left and the blocks of their first chunk are free, keeping a
 * watermark of free blocks for the running jobs' growth (none needed when
 * nothing runs: a lone job fits, dec_sched_submit checked). The first in
 * line that does not fit stops admission: no overtaking, no starvation. */
static void admit(struct dec_sched *s, uint32_t *n, uint32_t *budget)
{
    while (s->n_active + s->n_remote < s->p.max_num_seqs) {
        pd_worker_lock(&s->w);
        struct pd_wnode *head = pd_worker_queue(&s->w)->head;
        pd_worker_unlock(&s->w);
        if (!head)
            return;
        struct dec_job *j = JOB(head);
        if (pd_wjob_cancelled(&j->base)) {
            queue_pop(s);
            finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
            continue;
        }
        if (wants_remote(j) && s->xc &&
            pd_kvseq_blocks_needed(s->xc, &j->xseq, j->n_prompt) > pd_kvcache_n_blocks(s->xc)) {
            pd_log(PD_LOG_INFO, "%s: prefilling locally: the prompt's %u tokens do not fit the "
                   "KV channel's staging (--kv-staging-memory)", j->id, j->n_prompt);
            j->remote = false;
        }
        if (!j->toks && admit_prepare(s, j) < 0) {
            queue_pop(s);
            admitted(s, j, -ENOMEM);
            continue;
        }
        if (wants_remote(j)) {
            /* the cached prefix, then blocks for the rest of the prompt at
             * once: the peer fills them */
            uint32_t q_blocks;
            dec_sched_map_prefix(s, j, &q_blocks);
            uint32_t k = j->seq.n_blocks, rest = j->n_prompt - k * s->block_size;
            uint32_t need = pd_kvseq_blocks_needed(s->kc, &j->seq, j->n_prompt);
            uint32_t keep = s->n_active + s->n_remote ? s->watermark : 0;
            if ((uint64_t)need + keep > pd_kvcache_n_free(s->kc) ||
                (s->xc && pd_kvseq_blocks_needed(s->xc, &j->xseq, rest) >
                              pd_kvcache_n_free(s->xc))) {
                pd_kvseq_release(s->kc, &j->seq); /* the prefix back to the idle list */
                j->n_pub = 0;
                return;
            }
            queue_pop(s);
            j->n_mapped = k;
            int rc = pd_kvseq_reserve(s->kc, &j->seq, j->n_prompt);
            if (rc == 0 && s->xc)
                rc = pd_kvseq_reserve(s->xc, &j->xseq, rest);
            if (rc == 0)
                rc = remote_start(s, j);
            if (admitted(s, j, rc) && q_blocks)
                pd_prefix_metrics_lookup(s->p.metrics.prefix, j->n_prompt, k * s->block_size,
                                         q_blocks, k);
            continue;
        }
        if (*budget == 0)
            return;
        /* n > 1: the prompt's KV shared with the request's first choice */
        if (j->leader && dec_sched_follow(s, j) == -EAGAIN)
            return; /* its leader's prompt is not in yet: first come first served */
        if (j->leader && j->score_only) {
            /* echo's scoring, n > 1: the leader's scores are every choice's
             * answer, and there is nothing to generate */
            queue_pop(s);
            admitted(s, j, 0);
            finish(s, j, NULL, DEC_FIN_LENGTH, NULL);
            continue;
        }
        /* the cached prefix first: its blocks leave the idle list, so the
         * room check below counts what is really left */
        uint32_t q_blocks, hit = j->seq.n_tokens;
        dec_sched_map_prefix(s, j, &q_blocks);
        hit = j->seq.n_tokens - hit;
        uint32_t p = pending(j), want = p < *budget ? p : *budget;
        uint32_t need = pd_engine_seq_blocks_needed(s->p.engine, &j->seq, j->seq.n_tokens + want);
        uint32_t keep = s->n_active + s->n_remote ? s->watermark : 0;
        if ((uint64_t)need + keep > pd_kvcache_n_free(s->kc)) {
            /* a mapped or forked prefix back (to the idle list), tried again
             * next step */
            pd_kvseq_release(s->kc, &j->seq);
            j->n_pub = 0;
            return;
        }
        queue_pop(s);
        int rc = pd_engine_seq_prepare(s->p.engine, &j->seq, j->seq.n_tokens + want);
        if (!admitted(s, j, rc))
            continue;
        if (q_blocks)
            pd_prefix_metrics_lookup(s->p.metrics.prefix, j->n_prompt + j->n_out, hit, q_blocks,
                                     hit / s->block_size);
        s->active[s->n_active++] = j;
        add_item(s, n, j, want);
        *budget -= want;
    }
}

/* ---- one step ---- */

/* Returns the number of sequences the engine ran (0: nothing to do). */
static uint32_t step(struct dec_sched *s)
{
    char err[256];
    uint32_t n = 0, budget = s->max_batched;

    take_inbox(s);
    sweep_cancelled(s);
    /* after a preemption nothing new joins in the same step (vLLM's rule):
     * the pool is short, and the preempted job is first in line anyway */
    if (!schedule_running(s, &n, &budget))
        admit(s, &n, &budget);
    update_gauges(s);
    if (n == 0)
        return 0;
    pd_metric_observe(s->p.metrics.batch_size, n);
    /* constrained jobs that draw: their masks, where their output stands */
    for (uint32_t i = 0; i < n; i++)
        if (s->item_job[i]->constrained && s->items[i].n_logits > s->items[i].n_forced)
            dec_sched_mask(s, s->item_job[i]); /* failing: no mask, the token is refused */

    int rc = pd_engine_step(s->p.engine, s->items, n, err, sizeof(err));
    pd_worker_beat(&s->w);
    char note[320];
    if (pd_engine_take_note(s->p.engine, note, sizeof(note)))
        pd_log(PD_LOG_WARN, "%s", note); /* CUDA graphs turned off, say */
    for (uint32_t i = 0; i < n; i++) {
        struct dec_job *j = s->item_job[i];
        const struct pd_batch_item *it = &s->items[i];
        enum dec_finish fin = DEC_FIN_NONE;
        struct dec_event *e = NULL;
        if (rc < 0) {
            fin = DEC_FIN_ERROR;
        } else {
            dec_sched_publish(s, j);
            if (!j->prompt_counted && j->seq.n_tokens >= j->n_prompt) {
                j->prompt_counted = true;
                pd_metric_add(s->p.metrics.prompt_tokens, j->n_prompt);
            }
            if (it->n_logits == it->n_forced) /* nothing drawn: a prompt chunk */
                continue;
            if (!(e = event_new(j))) {
                fin = DEC_FIN_ERROR;
                snprintf(err, sizeof(err), "out of memory");
            } else {
                fin = take_token(s, j, &it->result[it->n_logits - 1], e);
                if (fin == DEC_FIN_ERROR)
                    snprintf(err, sizeof(err), "%s", j->why ? j->why : "out of memory producing "
                             "the text");
            }
        }
        if (fin == DEC_FIN_NONE) {
            post(s, e);
            continue;
        }
        for (uint32_t k = 0; k < s->n_active; k++)
            if (s->active[k] == j) {
                drop_active(s, k);
                break;
            }
        finish(s, j, e, fin, fin == DEC_FIN_ERROR ? err : NULL);
    }
    update_gauges(s);
    return n;
}

/* ---- the worker's hooks (common/daemon/worker.h) ---- */

static bool w_step(void *arg) { return step(arg) > 0; }

/* The lock held. Reports from the loop are work now; a step that ran
 * nothing (everything queued was cancelled, say) waits for a submission or
 * a tick instead of spinning. */
static uint32_t w_wait_ms(void *arg, bool idle)
{
    struct dec_sched *s = arg;
    if (s->inbox.head)
        return 0;
    if (idle || (s->n_active == 0 && !pd_worker_queue(&s->w)->head))
        return s->p.idle_tick_ms ? s->p.idle_tick_ms : 1000;
    return 0;
}

static void w_cut(void *arg)
{
    struct dec_sched *s = arg;
    /* cut what is left: REMOTE, running, then queued. A REMOTE job's blocks
     * go back to the free list although a transfer may still write them:
     * nothing allocates from the pool any more, and the daemon frees kvx
     * (which ends every receive) before the pool. */
    while (s->remote) {
        struct dec_job *j = s->remote;
        remote_unlink(s, j);
        finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
    }
    while (s->n_active > 0) {
        struct dec_job *j = s->active[s->n_active - 1];
        s->n_active--;
        finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
    }
    for (struct dec_job *j; (j = queue_pop(s));)
        finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
    update_gauges(s);
}

static const struct pd_worker_ops worker_ops = {.step = w_step, .wait_ms = w_wait_ms,
                                                .cut = w_cut};

int dec_sched_new(const struct dec_sched_params *p, struct dec_sched **out, char *err,
                  size_t errlen)
{
    struct dec_sched *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->p = *p;
    const struct pd_worker_params wp = {.ops = &worker_ops, .arg = s,
                                        .max_queued = p->max_waiting, .notify = p->notify,
                                        .notify_arg = p->notify_arg,
                                        .queued = p->metrics.waiting};
    int rc = pd_worker_init(&s->w, &wp);
    if (rc < 0) {
        free(s);
        return pd_errf(err, errlen, rc, "cannot set up the compute thread: %s", strerror(-rc));
    }
    s->kc = pd_engine_kvcache(p->engine);
    s->xc = pd_engine_kv_staging(p->engine);
    s->block_size = pd_kvcache_layout(s->kc)->block_size;
    s->max_model_len = pd_engine_max_model_len(p->engine);
    s->max_batched = pd_engine_max_batched_tokens(p->engine);
    s->watermark = pd_kvcache_n_blocks(s->kc) / 100; /* vLLM's 1% */
    s->prefix = pd_kvcache_prefix(s->kc);
    pd_engine_kv_layout(p->engine, &s->layout);
    s->rl_preempt = (struct pd_ratelimit)PD_RATELIMIT_INIT(10000, 1);
    uint32_t m = p->max_num_seqs;
    s->results = calloc(m, sizeof(*s->results));
    s->items = calloc(m, sizeof(*s->items));
    s->item_job = calloc(m, sizeof(*s->item_job));
    s->active = calloc(m, sizeof(*s->active));
    if (!s->results || !s->items || !s->item_job || !s->active) {
        dec_sched_free(s);
        snprintf(err, errlen, "out of memory for %u sequences", m);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

struct dec_sched *dec_sched_free(struct dec_sched *s)
{
    if (!s)
        return NULL;
    pd_worker_stop(&s->w); /* the compute thread ends what is left */
    for (struct pd_wnode *n; (n = pd_wlist_pop(&s->inbox));) {
        struct dec_inbox *m = PD_WNODE_ENTRY(n, struct dec_inbox, node);
        struct dec_job *j = m->job;
        if (j->report)
            free(m);
        else
            j->report = m;
        dec_job_unref(j);
    }
    struct dec_event *e = dec_sched_take(s);
    while (e) {
        struct dec_event *next = e->next;
        dec_event_free(e);
        e = next;
    }
    pd_worker_done(&s->w);
    pd_grammar_free(s->grammar);
    free(s->results);
    free(s->items);
    free(s->item_job);
    free(s->active);
    free(s);
    return NULL;
}

int dec_sched_submit(struct dec_sched *s, struct dec_job *j)
{
    /* a job that could never run: preempting everything else would not make room */
    if (pd_kvseq_blocks_needed(s->kc, &j->seq, j->n_prompt + j->max_tokens) >
        pd_kvcache_n_blocks(s->kc))
        return -E2BIG;
    dec_job_ref(j);
    int rc = pd_worker_submit(&s->w, &j->qnode);
    if (rc < 0) {
        dec_job_unref(j);
        return rc;
    }
    return 0;
}

struct pd_worker *dec_sched_worker(struct dec_sched *s) { return &s->w; }

void dec_sched_counts(struct dec_sched *s, uint32_t *waiting, uint32_t *running)
{
    *waiting = pd_worker_queued(&s->w);
    *running = atomic_load(&s->n_running);
}

uint64_t dec_sched_capacity_tokens(const struct dec_sched *s)
{
    return (uint64_t)pd_kvcache_n_blocks(s->kc) * s->block_size;
}
