#include "scheduler.h"

#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A REMOTE job's transfer is over (the loop's word, for the compute thread). */
struct dec_inbox {
    struct dec_inbox *next;
    struct dec_job *job; /* one reference */
    bool done, exhausted;
    int status;
    struct pd_sample_result first;
    char msg[256];
};

struct dec_sched {
    struct dec_sched_params p;
    struct pd_kvcache *kc;
    struct pd_kvcache *xc; /* a GPU pool's staging (REMOTE jobs' transfers land there), or NULL */
    uint32_t block_size, max_model_len, max_batched;
    uint32_t watermark; /* blocks kept free when admitting beside running jobs */
    struct pd_ratelimit rl_preempt;
    struct pd_sample_result *results; /* (max_num_seqs): each row sampled in the step */
    struct pd_batch_item *items; /* (max_num_seqs) */
    struct dec_job **item_job; /* (max_num_seqs) job of each item */
    struct dec_job **active; /* (max_num_seqs) admitted jobs, admission order */
    uint32_t n_active;
    struct dec_job *remote; /* REMOTE jobs (rnext links); they count against max_num_seqs */
    uint32_t n_remote;

    pthread_t thread;
    bool started;
    pthread_mutex_t mu; /* queue, counts, stop */
    pthread_cond_t cv;
    struct dec_job *q_head, *q_tail; /* waiting jobs */
    uint32_t n_queued;
    struct dec_inbox *in_head, *in_tail; /* finished transfers, from the loop */
    atomic_uint n_running;
    bool stop;

    pthread_mutex_t out_mu; /* events */
    struct dec_event *ev_head, *ev_tail;

    _Atomic uint64_t heartbeat_ns;
};

static double secs(uint64_t a, uint64_t b) { return b > a ? (double)(b - a) * 1e-9 : 0.0; }

struct dec_job *dec_job_new(void)
{
    struct dec_job *j = calloc(1, sizeof(*j));
    if (j) {
        atomic_init(&j->refs, 1);
        atomic_init(&j->cancelled, false);
        pd_kvseq_init(&j->seq);
        pd_kvseq_init(&j->xseq);
    }
    return j;
}

void dec_job_ref(struct dec_job *j) { atomic_fetch_add(&j->refs, 1); }

void dec_job_unref(struct dec_job *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    for (uint32_t i = 0; i < j->n_stops; i++)
        free(j->stops[i]);
    free(j->stops);
    free(j->prompt);
    free(j->toks);
    pd_detok_free(j->detok);
    dec_stop_done(&j->stop);
    free(j);
}

void dec_job_cancel(struct dec_job *j) { atomic_store(&j->cancelled, true); }

void dec_event_free(struct dec_event *e)
{
    if (!e)
        return;
    dec_job_unref(e->job);
    free(e->blocks);
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

static void post(struct dec_sched *s, struct dec_event *e)
{
    if (!e->text)
        event_text(e, "", 0);
    pthread_mutex_lock(&s->out_mu);
    if (s->ev_tail)
        s->ev_tail->next = e;
    else
        s->ev_head = e;
    s->ev_tail = e;
    pthread_mutex_unlock(&s->out_mu);
    s->p.notify(s->p.notify_arg);
}

struct dec_event *dec_sched_take(struct dec_sched *s)
{
    pthread_mutex_lock(&s->out_mu);
    struct dec_event *e = s->ev_head;
    s->ev_head = s->ev_tail = NULL;
    pthread_mutex_unlock(&s->out_mu);
    return e;
}

/* A finished job's last event. When no event can be allocated the job is
 * still released; the loop then never hears of it, so we keep trying: the
 * event is tiny and memory pressure passes (a lost final event would leave
 * a client waiting forever). */
static void finish(struct dec_sched *s, struct dec_job *j, struct dec_event *e,
                   enum dec_finish why, const char *err)
{
    pd_kvseq_release(s->kc, &j->seq);
    if (s->xc)
        pd_kvseq_release(s->xc, &j->xseq);
    while (!e && !(e = event_new(j))) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
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

/* Record a sampled token; returns the finish it causes (or NONE), fills e. */
static enum dec_finish take_token(struct dec_sched *s, struct dec_job *j,
                                  const struct pd_sample_result *r, struct dec_event *e)
{
    const uint64_t now = pd_now_ns();
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

    if (s->p.tok && !j->ignore_eos && pd_tok_is_eog(s->p.tok, r->token))
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
    pthread_mutex_lock(&s->mu);
    pd_metric_set(s->p.metrics.waiting, s->n_queued);
    pthread_mutex_unlock(&s->mu);
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
    pthread_mutex_lock(&s->mu);
    struct dec_job *j = s->q_head;
    if (j) {
        s->q_head = j->next;
        if (!s->q_head)
            s->q_tail = NULL;
        s->n_queued--;
        j->next = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    return j;
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
    pd_kvseq_release(s->kc, &j->seq);
    j->n_preempted++;
    pd_metric_add(s->p.metrics.preemptions, 1);
    pthread_mutex_lock(&s->mu);
    j->next = s->q_head;
    s->q_head = j;
    if (!s->q_tail)
        s->q_tail = j;
    s->n_queued++;
    pthread_mutex_unlock(&s->mu);
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
        if (!atomic_load(&j->cancelled) || j->cancel_posted || !(e = event_new(j)))
            continue;
        j->cancel_posted = true;
        e->kind = DEC_EV_REMOTE_CANCEL;
        post(s, e);
    }
    for (uint32_t i = 0; i < s->n_active;) {
        struct dec_job *j = s->active[i];
        if (atomic_load(&j->cancelled)) {
            drop_active(s, i);
            finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
        } else {
            i++;
        }
    }
    struct dec_job *gone = NULL;
    pthread_mutex_lock(&s->mu);
    struct dec_job **link = &s->q_head, *prev = NULL;
    while (*link) {
        struct dec_job *j = *link;
        if (atomic_load(&j->cancelled)) {
            *link = j->next;
            j->next = gone;
            gone = j;
            s->n_queued--;
        } else {
            prev = j;
            link = &j->next;
        }
    }
    s->q_tail = prev;
    pthread_mutex_unlock(&s->mu);
    while (gone) {
        struct dec_job *j = gone;
        gone = j->next;
        j->next = NULL;
        finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
    }
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
    /* the blocks the peer fills: the pool's, or on a GPU the staging's */
    const struct pd_kvseq *dst = s->xc ? &j->xseq : &j->seq;
    struct dec_event *e = event_new(j);
    if (!e || !(e->blocks = malloc((size_t)dst->n_blocks * sizeof(*e->blocks)))) {
        dec_event_free(e);
        return -ENOMEM;
    }
    memcpy(e->blocks, dst->blocks, (size_t)dst->n_blocks * sizeof(*e->blocks));
    e->n_blocks = dst->n_blocks;
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
                               const struct pd_sample_result *first)
{
    if (s->xc) { /* from the staging into the GPU pool */
        char err[256];
        int rc = pd_engine_kv_stage(s->p.engine, false, j->seq.blocks, j->xseq.blocks,
                                    j->seq.n_blocks, err, sizeof(err));
        pd_kvseq_release(s->xc, &j->xseq);
        if (rc < 0) {
            pd_log(PD_LOG_ERR, "%s: %s", j->id, err);
            finish(s, j, NULL, DEC_FIN_ERROR, err);
            return;
        }
    }
    j->seq.n_tokens = j->n_prompt;
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
    finish(s, j, e, fin, fin == DEC_FIN_ERROR ? "out of memory producing the text" : NULL);
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
        struct dec_event *e = event_new(j);
        if (e)
            e->status = m->status ? m->status : 502;
        finish(s, j, e, DEC_FIN_ERROR, m->msg);
        return;
    }
    /* local prefill into the blocks it already holds */
    pd_log(PD_LOG_DEBUG, "%s: prefilling locally after: %s", j->id, m->msg);
    if (s->xc)
        pd_kvseq_release(s->xc, &j->xseq);
    j->remote = false;
    j->seq.n_tokens = 0;
    s->active[s->n_active++] = j;
}

static void take_inbox(struct dec_sched *s)
{
    pthread_mutex_lock(&s->mu);
    struct dec_inbox *m = s->in_head;
    s->in_head = s->in_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (m) {
        struct dec_inbox *next = m->next;
        struct dec_job *j = m->job;
        if (j->in_remote) {
            remote_unlink(s, j);
            if (atomic_load(&j->cancelled))
                finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
            else if (m->done)
                remote_first_token(s, j, &m->first);
            else
                remote_fallback(s, j, m);
        }
        dec_job_unref(j);
        free(m);
        m = next;
    }
}

static void inbox_push(struct dec_sched *s, struct dec_inbox *m)
{
    pthread_mutex_lock(&s->mu);
    if (s->in_tail)
        s->in_tail->next = m;
    else
        s->in_head = m;
    s->in_tail = m;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static struct dec_inbox *inbox_new(struct dec_job *j)
{
    struct dec_inbox *m;
    /* as finish(): a lost report would keep the job's blocks for ever */
    while (!(m = calloc(1, sizeof(*m)))) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    dec_job_ref(j);
    m->job = j;
    return m;
}

void dec_sched_remote_done(struct dec_sched *s, struct dec_job *j,
                           const struct pd_sample_result *first)
{
    struct dec_inbox *m = inbox_new(j);
    m->done = true;
    m->first = *first;
    inbox_push(s, m);
}

void dec_sched_remote_failed(struct dec_sched *s, struct dec_job *j, bool exhausted, int status,
                             const char *msg)
{
    struct dec_inbox *m = inbox_new(j);
    m->exhausted = exhausted;
    m->status = status;
    snprintf(m->msg, sizeof(m->msg), "%s", msg ? msg : "remote prefill failed");
    inbox_push(s, m);
}

static void add_item(struct dec_sched *s, uint32_t *n, struct dec_job *j, uint32_t want)
{
    const bool last = j->seq.n_tokens + want == j->n_prompt + j->n_out;
    /* the next token is sampled in the step (on a GPU, where the logits are),
     * over the prompt and the output so far */
    s->items[*n] = (struct pd_batch_item){
        .seq = &j->seq, .tokens = j->toks + j->seq.n_tokens, .n_tokens = want,
        .n_logits = last, .sampling = last ? &j->sampling : NULL, .history = j->toks,
        .n_history = j->n_prompt + j->n_out, .n_prompt = j->n_prompt,
        .result = &s->results[*n]};
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
        while ((rc = pd_kvseq_reserve(s->kc, &j->seq, j->seq.n_tokens + want)) == -ENOSPC) {
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
            finish(s, j, NULL, DEC_FIN_ERROR, "out of memory growing the block table");
            continue;
        }
        add_item(s, n, j, want);
        *budget -= want;
    }
    return preempted;
}

/* Queued jobs join, first come first served, while a sequence slot and
 * budget are left and the blocks of their first chunk are free, keeping a
 * watermark of free blocks for the running jobs' growth (none needed when
 * nothing runs: a lone job fits, dec_sched_submit checked). The first in
 * line that does not fit stops admission: no overtaking, no starvation. */
static void admit(struct dec_sched *s, uint32_t *n, uint32_t *budget)
{
    while (s->n_active + s->n_remote < s->p.max_num_seqs) {
        pthread_mutex_lock(&s->mu);
        struct dec_job *j = s->q_head;
        pthread_mutex_unlock(&s->mu);
        if (!j)
            return;
        if (atomic_load(&j->cancelled)) {
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
        if (wants_remote(j)) {
            /* blocks for the whole prompt at once: the peer fills them */
            uint32_t need = pd_kvseq_blocks_needed(s->kc, &j->seq, j->n_prompt);
            uint32_t keep = s->n_active + s->n_remote ? s->watermark : 0;
            if ((uint64_t)need + keep > pd_kvcache_n_free(s->kc) ||
                (s->xc && pd_kvseq_blocks_needed(s->xc, &j->xseq, j->n_prompt) >
                              pd_kvcache_n_free(s->xc)))
                return;
            queue_pop(s);
            int rc = j->toks ? 0 : admit_prepare(s, j);
            if (rc == 0)
                rc = pd_kvseq_reserve(s->kc, &j->seq, j->n_prompt);
            if (rc == 0 && s->xc)
                rc = pd_kvseq_reserve(s->xc, &j->xseq, j->n_prompt);
            if (rc == 0)
                rc = remote_start(s, j);
            if (rc < 0) {
                finish(s, j, NULL, DEC_FIN_ERROR, "out of memory admitting the request");
                continue;
            }
            if (!j->admitted) {
                j->admitted = true;
                pd_metric_observe(s->p.metrics.queue_time, secs(j->t_arrival_ns, pd_now_ns()));
            }
            continue;
        }
        if (*budget == 0)
            return;
        uint32_t p = pending(j), want = p < *budget ? p : *budget;
        uint32_t need = pd_kvseq_blocks_needed(s->kc, &j->seq, j->seq.n_tokens + want);
        uint32_t keep = s->n_active + s->n_remote ? s->watermark : 0;
        if ((uint64_t)need + keep > pd_kvcache_n_free(s->kc))
            return;
        queue_pop(s);
        int rc = j->toks ? 0 : admit_prepare(s, j);
        if (rc == 0)
            rc = pd_kvseq_reserve(s->kc, &j->seq, j->seq.n_tokens + want);
        if (rc < 0) {
            finish(s, j, NULL, DEC_FIN_ERROR, "out of memory admitting the request");
            continue;
        }
        if (!j->admitted) {
            j->admitted = true;
            pd_metric_observe(s->p.metrics.queue_time, secs(j->t_arrival_ns, pd_now_ns()));
        }
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

    int rc = pd_engine_step(s->p.engine, s->items, n, err, sizeof(err));
    atomic_store(&s->heartbeat_ns, pd_now_ns());
    for (uint32_t i = 0; i < n; i++) {
        struct dec_job *j = s->item_job[i];
        const struct pd_batch_item *it = &s->items[i];
        enum dec_finish fin = DEC_FIN_NONE;
        struct dec_event *e = NULL;
        if (rc < 0) {
            fin = DEC_FIN_ERROR;
        } else {
            if (!j->prompt_counted && j->seq.n_tokens >= j->n_prompt) {
                j->prompt_counted = true;
                pd_metric_add(s->p.metrics.prompt_tokens, j->n_prompt);
            }
            if (it->n_logits == 0)
                continue;
            if (!(e = event_new(j))) {
                fin = DEC_FIN_ERROR;
                snprintf(err, sizeof(err), "out of memory");
            } else {
                fin = take_token(s, j, it->result, e);
                if (fin == DEC_FIN_ERROR)
                    snprintf(err, sizeof(err), "out of memory producing the text");
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

static void *run(void *arg)
{
    struct dec_sched *s = arg;
    bool idle = false;
    for (;;) {
        atomic_store(&s->heartbeat_ns, pd_now_ns());
        pthread_mutex_lock(&s->mu);
        if (!s->stop && !s->in_head && (idle || (s->n_active == 0 && !s->q_head))) {
            uint64_t tick = s->p.idle_tick_ms ? s->p.idle_tick_ms : 1000;
            uint64_t until = pd_now_ns() + tick * 1000000u;
            struct timespec ts = {.tv_sec = (time_t)(until / 1000000000u),
                                  .tv_nsec = (long)(until % 1000000000u)};
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        bool stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        if (stop)
            break;
        /* a step that ran nothing (everything queued was cancelled, say)
         * waits for a submission or a tick instead of spinning */
        idle = step(s) == 0;
    }
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
    for (;;) {
        pthread_mutex_lock(&s->mu);
        struct dec_job *j = s->q_head;
        if (j) {
            s->q_head = j->next;
            s->n_queued--;
        }
        if (!s->q_head)
            s->q_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        if (!j)
            break;
        finish(s, j, NULL, DEC_FIN_CANCELLED, NULL);
    }
    update_gauges(s);
    return NULL;
}

int dec_sched_new(const struct dec_sched_params *p, struct dec_sched **out, char *err,
                  size_t errlen)
{
    struct dec_sched *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->p = *p;
    s->kc = pd_engine_kvcache(p->engine);
    s->xc = pd_engine_kv_staging(p->engine);
    s->block_size = pd_kvcache_layout(s->kc)->block_size;
    s->max_model_len = pd_engine_max_model_len(p->engine);
    s->max_batched = pd_engine_max_batched_tokens(p->engine);
    s->watermark = pd_kvcache_n_blocks(s->kc) / 100; /* vLLM's 1% */
    s->rl_preempt = (struct pd_ratelimit)PD_RATELIMIT_INIT(10000, 1);
    uint32_t m = p->max_num_seqs;
    s->results = calloc(m, sizeof(*s->results));
    s->items = calloc(m, sizeof(*s->items));
    s->item_job = calloc(m, sizeof(*s->item_job));
    s->active = calloc(m, sizeof(*s->active));
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->out_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&s->heartbeat_ns, pd_now_ns());
    if (!s->results || !s->items || !s->item_job || !s->active) {
        dec_sched_free(s);
        snprintf(err, errlen, "out of memory for %u sequences", m);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

int dec_sched_start(struct dec_sched *s, char *err, size_t errlen)
{
    int rc = pthread_create(&s->thread, NULL, run, s);
    if (rc) {
        snprintf(err, errlen, "cannot start the compute thread: %s", strerror(rc));
        return -rc;
    }
    s->started = true;
    return 0;
}

void dec_sched_stop(struct dec_sched *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->started)
        pthread_join(s->thread, NULL);
    s->started = false;
}

struct dec_sched *dec_sched_free(struct dec_sched *s)
{
    if (!s)
        return NULL;
    dec_sched_stop(s);
    while (s->in_head) {
        struct dec_inbox *m = s->in_head;
        s->in_head = m->next;
        dec_job_unref(m->job);
        free(m);
    }
    struct dec_event *e = dec_sched_take(s);
    while (e) {
        struct dec_event *next = e->next;
        dec_event_free(e);
        e = next;
    }
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->out_mu);
    pthread_cond_destroy(&s->cv);
    free(s->results);
    free(s->items);
    free(s->item_job);
    free(s->active);
    free(s);
    return NULL;
}

int dec_sched_submit(struct dec_sched *s, struct dec_job *j)
{
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->stop)
        rc = -ESHUTDOWN;
    else if (pd_kvseq_blocks_needed(s->kc, &j->seq, j->n_prompt + j->max_tokens) >
             pd_kvcache_n_blocks(s->kc))
        rc = -E2BIG; /* it could never run: preempting everything else would not make room */
    else if (s->n_queued >= s->p.max_waiting)
        rc = -EAGAIN;
    if (rc == 0) {
        dec_job_ref(j);
        j->next = NULL;
        if (s->q_tail)
            s->q_tail->next = j;
        else
            s->q_head = j;
        s->q_tail = j;
        s->n_queued++;
        pd_metric_set(s->p.metrics.waiting, s->n_queued);
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

uint64_t dec_sched_heartbeat_ns(const struct dec_sched *s) { return atomic_load(&s->heartbeat_ns); }

void dec_sched_counts(struct dec_sched *s, uint32_t *waiting, uint32_t *running)
{
    pthread_mutex_lock(&s->mu);
    *waiting = s->n_queued;
    pthread_mutex_unlock(&s->mu);
    *running = atomic_load(&s->n_running);
}

uint64_t dec_sched_capacity_tokens(const struct dec_sched *s)
{
    return (uint64_t)pd_kvcache_n_blocks(s->kc) * s->block_size;
}
