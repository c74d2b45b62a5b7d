/* common/kvchan/kvx, prefilld's side (the role table kvx_role_p): requests from PREFILL, runs of source blocks
 * tagged on the crypto threads and sent as active messages, ACKs, and runs
 * released when acknowledged or when the request or session dies.
 * docs/internals/kvchan.md. */
#include "errf.h"
#include "kvx_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sreq_kill(struct pd_kvx_sreq *r, int reason);
static void crypto_pump(struct pd_kvx *k);

static struct pd_kvx_sreq *sreq_find(struct pd_kvx_session *c, uint64_t id)
{
    for (struct dl *i = c->reqs.next; i != &c->reqs; i = i->next) {
        struct pd_kvx_sreq *r = DL_ENTRY(i, struct pd_kvx_sreq, node);
        if (r->id == id)
            return r;
    }
    return NULL;
}

static void sreq_free(struct pd_kvx_sreq *r)
{
    struct pd_kvx_session *c = r->c;
    dl_del(&r->all);
    free(r);
    kvx_session_put(c);
}

static void run_free(struct run *run)
{
    dl_del(&run->all);
    free(run->src);
    free(run->twins);
    free(run);
}

static void sreq_unlink(struct pd_kvx_sreq *r) { kvx_session_unlink(r->c, &r->node, &r->linked); }

static void sreq_maybe_end(struct pd_kvx_sreq *r)
{
    if (r->end_queued || !dl_empty(&r->runs))
        return;
    if (r->status == S_ACTIVE)
        return; /* DONE not sent yet: more runs may come */
    r->end_queued = 1;
    sreq_unlink(r);
    struct evq *e = kvx_ev_new(r->c->kvx, PD_KVX_EV_SREQ_END, r->c);
    if (e) {
        e->ev.sreq = r;
        e->ev.udata = r->udata;
        e->ev.reason = r->status == S_DEAD ? r->end_reason : 0;
    } else {
        sreq_free(r);
    }
}

static void run_maybe_release(struct run *run)
{
    struct pd_kvx_sreq *r = run->r;
    struct pd_kvx *k = r->c->kvx;
    if (run->released || run->msgs > 0 || (!run->acked && r->status != S_DEAD))
        return;
    run->released = 1;
    dl_del(&run->node);
    k->st.runs_released++;
    if (!run->acked)
        k->st.runs_reclaimed++;
    struct evq *e = kvx_ev_new(k, PD_KVX_EV_RUN_RELEASED, r->c);
    if (e) {
        e->ev.sreq = r;
        e->ev.udata = r->udata;
        e->ev.run_first = run->first;
        e->ev.run_n = run->n;
        e->ev.run_blocks = run->src;
        e->ev.run_twins = run->twins;
        e->ev.acked = run->acked;
        e->run = run;
    } else {
        run_free(run);
    }
    sreq_maybe_end(r);
}

static void sreq_kill(struct pd_kvx_sreq *r, int reason)
{
    if (r->status == S_DEAD)
        return;
    r->status = S_DEAD;
    r->end_reason = reason;
    sreq_unlink(r);
    for (struct dl *i = r->runs.next, *nx; i != &r->runs; i = nx) {
        nx = i->next;
        run_maybe_release(DL_ENTRY(i, struct run, node));
    }
    sreq_maybe_end(r);
}

static void msg_finish(struct msg *m)
{
    struct run *run = m->run;
    free(m->hdr);
    free(m);
    run->msgs--;
    run_maybe_release(run);
}

static void msg_sent_cb(void *request, ucs_status_t status, void *user_data)
{
    struct msg *m = user_data;
    m->run->r->c->kvx->ucx_ops--;
    if (status != UCS_OK && m->run->r->status != S_DEAD)
        pd_log(PD_LOG_DEBUG, "kvx: data send failed: %s", ucs_status_string(status));
    msg_finish(m);
    ucp_request_free(request);
}

/* Tags are ready: seal the CHUNK header and send the blocks. */
static void msg_send(struct msg *m)
{
    struct pd_kvx_sreq *r = m->run->r;
    struct pd_kvx_session *c = r->c;
    struct pd_kvx *k = c->kvx;
    if (r->status == S_DEAD || c->state != C_UP || k->shutting_down) {
        msg_finish(m);
        return;
    }
    if (k->p.tamper_every && r->id % k->p.tamper_every == 0)
        (void)pd_kvx_pool_flip(k->p.pool_on_device, m->blocks[0]); /* test only: the receiver
                                                                    * must catch this */
    struct pd_frame f = {.type = PD_FT_CHUNK};
    f.u.chunk.request_id = r->id;
    f.u.chunk.epoch = r->epoch;
    f.u.chunk.first_block = m->first;
    f.u.chunk.n_blocks = m->n;
    f.u.chunk.transfer = m->job.transfer;
    f.u.chunk.block_bytes = k->block_bytes;
    f.u.chunk.tags = m->tags;
    size_t cap = PD_KVX_TOKEN_LEN + PD_FRAME_HDR_LEN + pd_frame_body_len(&f) + PD_FRAME_MAC_LEN;
    char err[160];
    m->hdr = malloc(cap);
    if (!m->hdr || pd_auth_seal_frame(c->s, &f, m->hdr + PD_KVX_TOKEN_LEN,
                                      cap - PD_KVX_TOKEN_LEN, &m->hdr_len, err, sizeof err) < 0) {
        msg_finish(m);
        return;
    }
    kvx_token_put(m->hdr, c->tx_token);
    m->hdr_len += PD_KVX_TOKEN_LEN;
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_DATATYPE,
        .cb.send = msg_sent_cb,
        .user_data = m,
        .datatype = m->niov == 1 ? ucp_dt_make_contig(1) : ucp_dt_make_iov(),
    };
    if (k->pool_memh) {
        /* device memory: by rendezvous, which the receiver pulls with its
         * UCX (cuda_ipc on one host), never an eager copy through ours */
        prm.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
        prm.flags = UCP_AM_SEND_FLAG_RNDV;
        kvx_param_memh(&prm, k->pool_memh, m->niov);
    }
    const void *buf = m->niov == 1 ? m->iov[0].buffer : (const void *)m->iov;
    size_t count = m->niov == 1 ? m->iov[0].length : m->niov;
    k->st.blocks_sent += m->n;
    k->st.bytes_sent += m->bytes;
    ucs_status_ptr_t sp = ucp_am_send_nbx(c->ep, AM_DATA, m->hdr, m->hdr_len, buf, count, &prm);
    if (sp == NULL || UCS_PTR_IS_ERR(sp))
        msg_finish(m);
    else
        k->ucx_ops++;
    kick(k);
}

static void crypto_pump(struct pd_kvx *k)
{
    while (!dl_empty(&k->backlog) && !k->shutting_down) {
        struct msg *m = DL_ENTRY(k->backlog.next, struct msg, node);
        if (k->crypto_queued > 0 && k->crypto_queued + m->bytes > k->max_crypto)
            return;
        dl_del(&m->node);
        k->crypto_queued += m->bytes;
        k->crypto_jobs++;
        pd_kvx_crypto_submit(k->crypto, &m->job);
    }
}

static void on_prefill(struct pd_kvx_session *c, const struct pd_frame *f, uint8_t *plain)
{
    struct pd_kvx *k = c->kvx;
    const struct pd_prefill *p = &f->u.prefill;
    uint32_t bs = k->layout.block_size;
    if (p->block_size != bs || p->n_blocks < (p->n_tokens + bs - 1) / bs - p->n_cached) {
        kvx_send_abort(c, p->request_id, p->epoch, PD_R_INVALID_REQUEST, "block size or count");
        free(plain);
        return;
    }
    if (sreq_find(c, p->request_id)) {
        kvx_send_abort(c, p->request_id, p->epoch, PD_R_PROTOCOL, "request id in flight");
        free(plain);
        return;
    }
    if (c->n_reqs >= k->max_inflight) {
        kvx_send_abort(c, p->request_id, p->epoch, PD_R_OVERLOADED, "too many requests in flight");
        free(plain);
        return;
    }
    struct pd_kvx_sreq *r = calloc(1, sizeof *r);
    struct evq *e = r ? kvx_ev_new(k, PD_KVX_EV_PREFILL, c) : NULL;
    if (!e) {
        free(r);
        free(plain);
        kvx_send_abort(c, p->request_id, p->epoch, PD_R_INTERNAL, "out of memory");
        return;
    }
    r->c = c;
    c->refs++;
    r->id = p->request_id;
    r->epoch = p->epoch;
    r->n_granted = p->n_blocks;
    r->n_tokens = p->n_tokens;
    r->n_logprobs = p->n_logprobs;
    r->prompt_lp = (p->flags & PD_PREFILL_F_PROMPT_LP) != 0;
    dl_init(&r->runs);
    kvx_session_link(c, &r->node, &r->linked);
    dl_add(&k->all_sreqs, &r->all);
    e->ev.sreq = r;
    e->pf = *p;
    e->ev.prefill = &e->pf;
    e->plain = plain; /* the token view points into it */
}

static void on_ctl_p(struct pd_kvx_session *c, const struct pd_frame *f, uint8_t **plain)
{
    struct pd_kvx *k = c->kvx;
    struct pd_kvx_sreq *r;
    switch (f->type) {
    case PD_FT_PREFILL:
        on_prefill(c, f, *plain);
        *plain = NULL;
        return;
    case PD_FT_ACK:
        r = sreq_find(c, f->u.ack.request_id);
        if (!r || r->epoch != f->u.ack.epoch || f->u.ack.blocks <= r->acked)
            return;
        if (f->u.ack.blocks > r->n_granted) {
            sreq_kill(r, PD_R_PROTOCOL);
            kvx_send_abort(c, f->u.ack.request_id, f->u.ack.epoch, PD_R_PROTOCOL, "ACK past grant");
            return;
        }
        r->acked = f->u.ack.blocks;
        r->last_progress_ms = now_ms();
        for (struct dl *i = r->runs.next, *nx; i != &r->runs; i = nx) {
            nx = i->next;
            struct run *run = DL_ENTRY(i, struct run, node);
            if (run->first + run->n <= r->acked) {
                run->acked = 1;
                run_maybe_release(run);
            }
        }
        sreq_maybe_end(r);
        return;
    case PD_FT_ABORT:
    case PD_FT_CANCEL: {
        uint64_t id = f->type == PD_FT_ABORT ? f->u.abort.request_id : f->u.cancel.request_id;
        uint32_t ep = f->type == PD_FT_ABORT ? f->u.abort.epoch : f->u.cancel.epoch;
        r = sreq_find(c, id);
        if (r && r->epoch == ep)
            sreq_kill(r, f->type == PD_FT_ABORT ? f->u.abort.reason : PD_R_CANCELLED);
        kvx_send_reqref(c, PD_FT_ABORT_ACK, id, ep);
        return;
    }
    default:
        k->st.protocol_errors++;
        kvx_session_fail(c, PD_R_PROTOCOL, "unexpected frame", -1);
    }
}

void pd_kvx_sreq_set_udata(struct pd_kvx_sreq *r, void *udata) { r->udata = udata; }

int pd_kvx_send_run(struct pd_kvx_sreq *r, uint32_t first, const uint32_t *src,
                    const uint32_t *twins, uint32_t n, char *err, size_t errlen)
{
    struct pd_kvx_session *c = r->c;
    struct pd_kvx *k = c->kvx;
    if (r->status != S_ACTIVE || c->state != C_UP)
        return pd_errf(err, errlen, -ECANCELED, "kvx: request %llu is over",
                       (unsigned long long)r->id);
    if (n == 0 || first >= r->n_granted || n > r->n_granted - first)
        return pd_errf(err, errlen, -E2BIG, "kvx: blocks [%u, %u) outside the grant of %u",
                       first, first + n, r->n_granted);
    for (uint32_t i = 0; i < n; i++)
        if (src[i] >= k->p.pool_blocks)
            return pd_errf(err, errlen, -EINVAL, "kvx: block %u outside the pool", src[i]);
    if (!twins != !k->p.twin_pool)
        return pd_errf(err, errlen, -EINVAL, "kvx: twin blocks %s", twins ? "without a twin pool"
                                                                         : "missing");
    for (uint32_t i = 0; twins && i < n; i++)
        if (twins[i] >= k->p.twin_pool_blocks)
            return pd_errf(err, errlen, -EINVAL, "kvx: twin block %u outside the twin pool",
                           twins[i]);
    struct run *run = calloc(1, sizeof *run);
    uint32_t *copy = malloc(n * sizeof *copy), *tcopy = twins ? malloc(n * sizeof *tcopy) : NULL;
    if (!run || !copy || (twins && !tcopy)) {
        free(run);
        free(copy);
        free(tcopy);
        return pd_errf(err, errlen, -ENOMEM, "kvx: out of memory");
    }
    memcpy(copy, src, n * sizeof *copy);
    if (twins)
        memcpy(tcopy, twins, n * sizeof *tcopy);
    *run = (struct run){.r = r, .first = first, .n = n, .src = copy, .twins = tcopy};
    r->last_progress_ms = now_ms();
    dl_add(&r->runs, &run->node);
    dl_add(&k->all_runs, &run->all);
    run->msgs = 1; /* held while messages are created */
    for (uint32_t off = 0; off < n; off += k->am_blocks) {
        uint32_t m_n = n - off < k->am_blocks ? n - off : k->am_blocks;
        struct msg *m = calloc(1, sizeof *m + m_n * (sizeof(ucp_dt_iov_t) +
                                                      2 * sizeof(uint8_t *) + PD_BLOCK_TAG_LEN));
        uint64_t transfer = 0;
        if (!m || pd_auth_transfer_next(c->s, &transfer) < 0) {
            free(m);
            sreq_kill(r, PD_R_INTERNAL);
            kvx_send_abort(c, r->id, r->epoch, PD_R_INTERNAL, "cannot send");
            break;
        }
        m->iov = (ucp_dt_iov_t *)(m + 1);
        m->blocks = (uint8_t **)(m->iov + m_n);
        m->tags = (uint8_t *)(m->blocks + 2 * (size_t)m_n);
        if (tcopy) {
            m->twins = m->blocks + m_n;
            for (uint32_t i = 0; i < m_n; i++)
                m->twins[i] = (uint8_t *)k->p.twin_pool + (size_t)tcopy[off + i] * k->block_bytes;
        }
        m->run = run;
        m->first = first + off;
        m->n = m_n;
        m->bytes = (size_t)m_n * k->block_bytes;
        m->niov = kvx_build_iov(k->p.pool, k->block_bytes, copy + off, m_n, m->iov, m->blocks);
        m->job = (struct pd_kvx_job){.kind = PD_KVX_JOB_TAG, .s = c->s, .request_id = r->id,
                                     .epoch = r->epoch, .first = m->first, .n = m_n,
                                     .transfer = transfer, .block_bytes = k->block_bytes,
                                     .blocks = m->blocks, .twins = m->twins, .tags = m->tags,
                                     .owner = m};
        run->msgs++;
        if (k->p.no_integrity) {
            msg_send(m);
        } else {
            dl_add(&k->backlog, &m->node);
        }
    }
    crypto_pump(k);
    run->msgs--;
    run_maybe_release(run);
    kick(k);
    return 0;
}

/* A control frame of a live request: -ECANCELED once it is over. */
static int sreq_send_ctl(struct pd_kvx_sreq *r, struct pd_frame *f, char *err, size_t errlen)
{
    if (r->status != S_ACTIVE)
        return pd_errf(err, errlen, -ECANCELED, "kvx: request %llu is over",
                       (unsigned long long)r->id);
    int rc = kvx_send_ctl(r->c, f);
    if (rc < 0)
        return pd_errf(err, errlen, rc, "kvx: %s: %s", pd_frame_type_name(f->type),
                       strerror(-rc));
    return 0;
}

int pd_kvx_send_progress(struct pd_kvx_sreq *r, const struct pd_progress *pg, char *err,
                         size_t errlen)
{
    if (pd_auth_session_minor(r->c->s) < 1)
        return 0; /* a 1.0 peer knows no PROGRESS: its deadline counts what it did before */
    struct pd_frame f = {.type = PD_FT_PROGRESS};
    f.u.progress = *pg;
    f.u.progress.request_id = r->id;
    f.u.progress.epoch = r->epoch;
    return sreq_send_ctl(r, &f, err, errlen);
}

int pd_kvx_send_prompt_lp(struct pd_kvx_sreq *r, const struct pd_prompt_lp *lp, char *err,
                          size_t errlen)
{
    if (!r->prompt_lp || lp->n_top != r->n_logprobs ||
        (uint64_t)lp->first + lp->n_rows > r->n_tokens)
        return pd_errf(err, errlen, -EINVAL, "kvx: PROMPT_LP rows %u..%u do not fit the request",
                       lp->first, lp->first + lp->n_rows);
    struct pd_frame f = {.type = PD_FT_PROMPT_LP};
    f.u.prompt_lp = *lp;
    f.u.prompt_lp.request_id = r->id;
    f.u.prompt_lp.epoch = r->epoch;
    return sreq_send_ctl(r, &f, err, errlen);
}

int pd_kvx_send_done(struct pd_kvx_sreq *r, const struct pd_done *d, char *err, size_t errlen)
{
    struct pd_frame f = {.type = PD_FT_DONE};
    f.u.done = *d;
    f.u.done.request_id = r->id;
    f.u.done.epoch = r->epoch;
    int rc = sreq_send_ctl(r, &f, err, errlen);
    if (rc < 0)
        return rc;
    r->status = S_DONE_SENT; /* complete once every run is acknowledged */
    sreq_maybe_end(r);
    return 0;
}

int pd_kvx_abort(struct pd_kvx_sreq *r, int reason, const char *detail)
{
    if (r->status == S_DEAD)
        return -ECANCELED;
    kvx_send_abort(r->c, r->id, r->epoch, reason, detail);
    sreq_kill(r, reason);
    kick(r->c->kvx);
    return 0;
}

/* ---- the role's table (kvx_internal.h) ---- */

static void p_session_lost(struct pd_kvx_session *c, int reason, const char *detail, int was_up)
{
    (void)detail;
    (void)was_up;
    while (!dl_empty(&c->reqs))
        sreq_kill(DL_ENTRY(c->reqs.next, struct pd_kvx_sreq, node), reason);
}

/* runs the receiver does not acknowledge in time come back */
static void p_tick_session(struct pd_kvx_session *c, uint64_t now)
{
    for (struct dl *q = c->reqs.next, *qn; q != &c->reqs; q = qn) {
        qn = q->next;
        struct pd_kvx_sreq *r = DL_ENTRY(q, struct pd_kvx_sreq, node);
        if (!dl_empty(&r->runs) && now - r->last_progress_ms > c->kvx->deadline_ms) {
            kvx_send_abort(c, r->id, r->epoch, PD_R_TIMEOUT, "no acknowledgement");
            sreq_kill(r, PD_R_TIMEOUT);
        }
    }
}

static void p_job_done(struct pd_kvx *k, struct pd_kvx_job *j)
{
    struct msg *m = j->owner; /* P's jobs tag */
    k->crypto_queued -= m->bytes;
    if (j->result < 0) { /* tags on the GPU can fail: the request, not the session */
        struct pd_kvx_sreq *r = m->run->r;
        if (r->status != S_DEAD) {
            kvx_send_abort(r->c, r->id, r->epoch, PD_R_INTERNAL, "block tags failed");
            sreq_kill(r, PD_R_INTERNAL);
        }
        msg_finish(m);
        return;
    }
    msg_send(m);
}

static void p_ev_release(struct evq *e)
{
    if (e->ev.type == PD_KVX_EV_SREQ_END)
        sreq_free(e->ev.sreq);
    if (e->run)
        run_free(e->run);
}

static void p_free_all(struct pd_kvx *k)
{
    while (!dl_empty(&k->backlog)) {
        struct msg *m = DL_ENTRY(k->backlog.next, struct msg, node);
        dl_del(&m->node);
        free(m);
    }
    while (!dl_empty(&k->all_runs))
        run_free(DL_ENTRY(k->all_runs.next, struct run, all));
    while (!dl_empty(&k->all_sreqs)) {
        struct pd_kvx_sreq *r = DL_ENTRY(k->all_sreqs.next, struct pd_kvx_sreq, all);
        dl_del(&r->all);
        free(r);
    }
}

const struct kvx_role kvx_role_p = {
    .on_ctl = on_ctl_p,
    .session_lost = p_session_lost,
    .tick_session = p_tick_session,
    .job_done = p_job_done,
    .pump = crypto_pump,
    .ev_release = p_ev_release,
    .free_all = p_free_all,
};
