/* common/kvchan/kvx, decoded's side (the role table kvx_role_d): peers (connect, reconnect with backoff), requests
 * with granted destination blocks, data received straight into them
 * (ucp_am_recv_data_nbx), verification, ACK, and the block rule: RELEASED only
 * when no receive into a request's blocks is pending. docs/internals/kvchan.md. */
#include "errf.h"
#include "kvx_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void req_fail(struct pd_kvx_req *r, int reason, const char *detail, int abort_peer);
static void req_free(struct pd_kvx_req *r);

static void peer_connect(struct pd_kvx_peer *peer)
{
    struct pd_kvx *k = peer->kvx;
    struct pd_kvx_session *c = kvx_session_new(k);
    if (!c)
        return;
    c->peer = peer;
    peer->session = c;
    snprintf(c->addr, sizeof c->addr, "%s", peer->hostport);
    int rc = kvx_boot_connect(c, (struct sockaddr *)&peer->sa, peer->salen);
    if (rc < 0) {
        pd_log(PD_LOG_DEBUG, "kvx: connect %s: %s", peer->hostport, strerror(-rc));
        kvx_session_fail(c, PD_R_TRANSFER, strerror(-rc), -1);
    }
}

static void peer_lost(struct pd_kvx_peer *peer, int was_up)
{
    if (was_up || peer->backoff_ms == 0)
        peer->backoff_ms = 100;
    else if (peer->backoff_ms < 5000)
        peer->backoff_ms = peer->backoff_ms * 2 > 5000 ? 5000 : peer->backoff_ms * 2;
    /* jitter: 50 % .. 150 % of the backoff */
    uint32_t j = (uint32_t)(rand() % (int)(peer->backoff_ms + 1));
    peer->next_try_ms = now_ms() + peer->backoff_ms / 2 + j;
}

static void req_maybe_release(struct pd_kvx_req *r)
{
    if (r->status == R_ACTIVE || r->ops > 0 || r->release_queued)
        return;
    r->release_queued = 1;
    struct evq *e = kvx_ev_new(r->c->kvx, PD_KVX_EV_RELEASED, r->c);
    if (e) {
        e->ev.req = r;
        e->ev.udata = r->udata;
    } else {
        req_free(r);
    }
}

static void req_unlink(struct pd_kvx_req *r) { kvx_session_unlink(r->c, &r->node, &r->linked); }

static void req_fail(struct pd_kvx_req *r, int reason, const char *detail, int abort_peer)
{
    if (r->status != R_ACTIVE)
        return;
    struct pd_kvx *k = r->c->kvx;
    r->status = R_FAILED;
    req_unlink(r);
    k->st.requests_failed++;
    struct evq *e = kvx_ev_new(k, PD_KVX_EV_FAILED, r->c);
    if (e) {
        e->ev.req = r;
        e->ev.udata = r->udata;
        e->ev.reason = reason;
        snprintf(e->detail, sizeof e->detail, "%s", detail ? detail : "");
    }
    if (abort_peer && r->c->state == C_UP)
        kvx_send_abort(r->c, r->id, r->epoch, reason, detail);
    req_maybe_release(r);
}

static void req_free(struct pd_kvx_req *r)
{
    struct pd_kvx_session *c = r->c;
    dl_del(&r->all);
    free(r->dest);
    free(r->twins);
    free(r->st);
    free(r->lp_seen);
    free(r);
    kvx_session_put(c);
}

static void req_check_complete(struct pd_kvx_req *r)
{
    if (r->status != R_ACTIVE || !r->have_done || r->prefix < r->need ||
        (r->lp_seen && r->lp_got < r->n_tokens - 1))
        return;
    struct pd_kvx *k = r->c->kvx;
    r->status = R_OK;
    req_unlink(r);
    k->st.requests_ok++;
    k->st.transfer_ns += pd_now_ns() - r->t_start_ns;
    struct evq *e = kvx_ev_new(k, PD_KVX_EV_DONE, r->c);
    if (e) {
        e->ev.req = r;
        e->ev.udata = r->udata;
        e->done = r->done;
        e->ev.done = &e->done;
    }
    req_maybe_release(r);
}

static void req_blocks_ok(struct pd_kvx_req *r, uint32_t first, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        r->st[first + i] = B_OK;
    uint32_t old = r->prefix;
    while (r->prefix < r->n && r->st[r->prefix] == B_OK)
        r->prefix++;
    r->last_progress_ms = now_ms();
    if (r->prefix == old)
        return;
    struct evq *e = kvx_ev_new(r->c->kvx, PD_KVX_EV_VERIFIED, r->c);
    if (e) {
        e->ev.req = r;
        e->ev.udata = r->udata;
        e->ev.blocks = r->prefix;
    }
    struct pd_frame f = {.type = PD_FT_ACK};
    f.u.ack.request_id = r->id;
    f.u.ack.epoch = r->epoch;
    f.u.ack.blocks = r->prefix;
    kvx_send_ctl(r->c, &f);
    req_check_complete(r);
}

static void rop_finish(struct rop *o)
{
    struct pd_kvx_req *r = o->r;
    free(o);
    r->ops--;
    req_maybe_release(r);
}

/* The receive into o's blocks completed (or failed): verify, or fail. */
static void rop_received(struct rop *o, ucs_status_t status)
{
    struct pd_kvx_req *r = o->r;
    struct pd_kvx *k = r->c->kvx;
    if (status != UCS_OK) {
        req_fail(r, PD_R_TRANSFER, ucs_status_string(status), 1);
        rop_finish(o);
        return;
    }
    k->st.blocks_recv += o->n;
    k->st.bytes_recv += (uint64_t)o->n * k->block_bytes;
    if (r->status != R_ACTIVE || k->shutting_down) {
        rop_finish(o);
        return;
    }
    for (uint32_t i = 0; i < o->n; i++)
        r->st[o->first + i] = B_CHECK;
    r->last_progress_ms = now_ms();
    if (k->p.no_integrity) {
        req_blocks_ok(r, o->first, o->n);
        rop_finish(o);
        return;
    }
    k->crypto_jobs++;
    pd_kvx_crypto_submit(k->crypto, &o->job);
}

static void rop_recv_cb(void *request, ucs_status_t status, size_t length, void *user_data)
{
    (void)length;
    struct rop *o = user_data;
    o->r->c->kvx->ucx_ops--;
    rop_received(o, status);
    ucp_request_free(request);
}

static void rop_verified(struct rop *o)
{
    struct pd_kvx_req *r = o->r;
    struct pd_kvx *k = r->c->kvx;
    if (r->status == R_ACTIVE && !k->shutting_down) {
        if (o->job.result == -EKEYREJECTED) {
            k->st.integrity_failures++;
            char d[80];
            snprintf(d, sizeof d, "block %u: tag did not verify", o->first + o->job.bad);
            req_fail(r, PD_R_INTEGRITY, d, 1);
        } else if (o->job.result < 0) { /* the GPU could not check them: not trusted */
            char d[80];
            snprintf(d, sizeof d, "block tags could not be checked: %s", strerror(-o->job.result));
            req_fail(r, PD_R_INTERNAL, d, 1);
        } else {
            req_blocks_ok(r, o->first, o->n);
        }
    }
    rop_finish(o);
}

static struct pd_kvx_req *req_find(struct pd_kvx_session *c, uint64_t id)
{
    for (struct dl *i = c->reqs.next; i != &c->reqs; i = i->next) {
        struct pd_kvx_req *r = DL_ENTRY(i, struct pd_kvx_req, node);
        if (r->id == id)
            return r;
    }
    return NULL;
}

/* Rows of the prompt's log-probabilities: checked against what the request
 * asked (positions once each, inside the prompt, its alternatives), handed
 * on with the frame's plaintext (the rows view it). */
static void on_prompt_lp(struct pd_kvx_session *c, const struct pd_prompt_lp *lp,
                         uint8_t **plain)
{
    struct pd_kvx_req *r = req_find(c, lp->request_id);
    if (!r || r->epoch != lp->epoch)
        return; /* late: the request is gone */
    /* DONE may overtake the last rows (active messages are not ordered):
     * it waits for them, and the last to come completes the request */
    const char *bad = !r->lp_seen ? "PROMPT_LP for a request that did not ask"
                      : lp->n_top != r->n_logprobs ? "PROMPT_LP with other alternatives than asked"
                      : (uint64_t)lp->first + lp->n_rows > r->n_tokens ? "PROMPT_LP past the prompt"
                                                                         : NULL;
    for (uint32_t i = 0; !bad && i < lp->n_rows; i++)
        if (r->lp_seen[lp->first + i])
            bad = "PROMPT_LP repeats a position";
    if (bad) {
        req_fail(r, PD_R_PROTOCOL, bad, 1);
        return;
    }
    memset(r->lp_seen + lp->first, 1, lp->n_rows);
    r->lp_got += lp->n_rows;
    r->last_progress_ms = now_ms();
    struct evq *e = kvx_ev_new(c->kvx, PD_KVX_EV_PROMPT_LP, c);
    if (!e) { /* the rows cannot reach the caller: the request cannot complete */
        req_fail(r, PD_R_INTERNAL, "out of memory", 1);
        return;
    }
    e->ev.req = r;
    e->ev.udata = r->udata;
    e->prompt_lp = *lp;
    e->ev.prompt_lp = &e->prompt_lp;
    e->plain = *plain;
    *plain = NULL;
    req_check_complete(r); /* after the event: PROMPT_LP events come before DONE's */
}

static void on_ctl_d(struct pd_kvx_session *c, const struct pd_frame *f, uint8_t **plain)
{
    struct pd_kvx *k = c->kvx;
    struct pd_kvx_req *r;
    switch (f->type) {
    case PD_FT_PROMPT_LP:
        on_prompt_lp(c, &f->u.prompt_lp, plain);
        return;
    case PD_FT_DONE:
        r = req_find(c, f->u.done.request_id);
        if (!r || r->epoch != f->u.done.epoch)
            return; /* late: the request is gone */
        if (r->have_done) {
            req_fail(r, PD_R_PROTOCOL, "second DONE", 1);
            return;
        }
        r->need = (f->u.done.n_prompt + r->block_size - 1) / r->block_size;
        r->need = r->need > r->n_cached ? r->need - r->n_cached : 0; /* those were not asked for */
        if (r->need > r->n) {
            req_fail(r, PD_R_PROTOCOL, "DONE names more blocks than granted", 1);
            return;
        }
        r->have_done = 1;
        r->done = f->u.done;
        req_check_complete(r);
        return;
    case PD_FT_PROGRESS: /* queued or computing: the deadline counts silence, not work */
        r = req_find(c, f->u.progress.request_id);
        if (r && r->epoch == f->u.progress.epoch)
            r->last_progress_ms = now_ms();
        return;
    case PD_FT_ABORT:
        r = req_find(c, f->u.abort.request_id);
        if (r && r->epoch == f->u.abort.epoch)
            req_fail(r, f->u.abort.reason, f->u.abort.detail, 0);
        kvx_send_reqref(c, PD_FT_ABORT_ACK, f->u.abort.request_id, f->u.abort.epoch);
        return;
    default:
        k->st.protocol_errors++;
        kvx_session_fail(c, PD_R_PROTOCOL, "unexpected frame", -1);
    }
}

static ucs_status_t am_data(void *arg, const void *header, size_t header_length, void *data,
                            size_t length, const ucp_am_recv_param_t *param)
{
    struct pd_kvx *k = arg;
    struct pd_kvx_session *c = kvx_session_find(k, &header, &header_length);
    if (!kvx_gate(k, c))
        return UCS_OK;
    if (k->p.role != PD_ROLE_D || header_length > k->scratch_cap ||
        header_length < PD_FRAME_HDR_LEN + PD_FRAME_MAC_LEN) {
        k->st.protocol_errors++; /* not one of the peer's: dropped */
        return UCS_OK;
    }
    struct pd_frame f;
    char err[256];
    int rc = pd_auth_open_frame(c->s, header, header_length, k->scratch, k->scratch_cap, &f, err,
                                sizeof err);
    if (rc < 0) {
        k->st.protocol_errors++; /* forged, replayed or stale: dropped */
        return UCS_OK;
    }
    if (f.type != PD_FT_CHUNK) { /* authentic, so the peer's own doing */
        k->st.protocol_errors++;
        kvx_session_fail(c, PD_R_PROTOCOL, "data message is not a CHUNK", -1);
        return UCS_OK;
    }
    c->last_rx_ms = now_ms();
    const struct pd_chunk *ch = &f.u.chunk;
    struct pd_kvx_req *r = req_find(c, ch->request_id);
    if (!r || r->epoch != ch->epoch)
        return UCS_OK; /* late data for a dead request: dropped, never received */
    int bad = ch->block_bytes != k->block_bytes || ch->first_block >= r->n ||
              ch->n_blocks > r->n - ch->first_block ||
              length != (size_t)ch->n_blocks * k->block_bytes;
    for (uint32_t i = 0; !bad && i < ch->n_blocks; i++)
        bad = r->st[ch->first_block + i] != B_EMPTY;
    if (bad) {
        k->st.protocol_errors++;
        req_fail(r, PD_R_PROTOCOL, "CHUNK outside the grant, or twice", 1);
        return UCS_OK;
    }
    uint32_t n = ch->n_blocks;
    struct rop *o = calloc(1, sizeof *o + n * (sizeof(ucp_dt_iov_t) + 2 * sizeof(uint8_t *) +
                                               PD_BLOCK_TAG_LEN));
    if (!o) {
        req_fail(r, PD_R_INTERNAL, "out of memory", 1);
        return UCS_OK;
    }
    o->iov = (ucp_dt_iov_t *)(o + 1);
    o->blocks = (uint8_t **)(o->iov + n);
    o->tags = (uint8_t *)(o->blocks + 2 * (size_t)n);
    o->r = r;
    o->first = ch->first_block;
    o->n = n;
    if (r->twins) {
        o->twins = o->blocks + n;
        for (uint32_t i = 0; i < n; i++)
            o->twins[i] = (uint8_t *)k->p.twin_pool +
                          (size_t)r->twins[o->first + i] * k->block_bytes;
    }
    memcpy(o->tags, ch->tags, (size_t)n * PD_BLOCK_TAG_LEN);
    o->niov = kvx_build_iov(k->p.pool, k->block_bytes, r->dest + o->first, n, o->iov, o->blocks);
    o->job = (struct pd_kvx_job){.kind = PD_KVX_JOB_VERIFY, .s = c->s, .request_id = r->id,
                                 .epoch = r->epoch, .first = o->first, .n = n,
                                 .transfer = ch->transfer, .block_bytes = k->block_bytes,
                                 .blocks = o->blocks, .twins = o->twins, .tags = o->tags,
                                 .owner = o};
    for (uint32_t i = 0; i < n; i++)
        r->st[o->first + i] = B_RECV;
    r->ops++;
    r->last_progress_ms = now_ms();
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        /* eager: the bytes are here for the duration of this call (a device
         * pool's sender sends by rendezvous; a host pool's may not) */
        const uint8_t *src = data;
        int wrc = 0;
        for (size_t i = 0; i < o->niov && wrc == 0; i++) {
            wrc = pd_kvx_pool_write(k->p.pool_on_device, o->iov[i].buffer, src, o->iov[i].length);
            src += o->iov[i].length;
        }
        rop_received(o, wrc == 0 ? UCS_OK : UCS_ERR_IO_ERROR);
        return UCS_OK;
    }
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_DATATYPE,
        .cb.recv_am = rop_recv_cb,
        .user_data = o,
        .datatype = o->niov == 1 ? ucp_dt_make_contig(1) : ucp_dt_make_iov(),
    };
    kvx_param_memh(&prm, k->pool_memh, o->niov);
    void *buf = o->niov == 1 ? o->iov[0].buffer : (void *)o->iov;
    size_t count = o->niov == 1 ? o->iov[0].length : o->niov;
    ucs_status_ptr_t sp = ucp_am_recv_data_nbx(k->worker, data, buf, count, &prm);
    if (sp == NULL)
        rop_received(o, UCS_OK);
    else if (UCS_PTR_IS_ERR(sp))
        rop_received(o, UCS_PTR_STATUS(sp));
    else
        k->ucx_ops++;
    return UCS_OK;
}

int pd_kvx_peer_add(struct pd_kvx *k, const char *hostport, struct pd_kvx_peer **out, char *err,
                    size_t errlen)
{
    if (k->p.role != PD_ROLE_D)
        return pd_errf(err, errlen, -EINVAL, "kvx: only decoded connects");
    if (k->n_peers >= MAX_PEERS)
        return pd_errf(err, errlen, -E2BIG, "kvx: more than %u prefill peers", MAX_PEERS);
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || strlen(hostport) >= 128)
        return pd_errf(err, errlen, -EINVAL, "kvx: peer '%s' is not HOST:PORT", hostport);
    char host[128];
    snprintf(host, sizeof host, "%.*s", (int)(colon - hostport), hostport);
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int g = getaddrinfo(host, colon + 1, &hints, &ai);
    if (g != 0 || !ai)
        return pd_errf(err, errlen, -EINVAL, "kvx: peer '%s': %s", hostport, gai_strerror(g));
    struct pd_kvx_peer *peer = calloc(1, sizeof *peer);
    if (!peer) {
        freeaddrinfo(ai);
        return pd_errf(err, errlen, -ENOMEM, "kvx: out of memory");
    }
    peer->kvx = k;
    snprintf(peer->hostport, sizeof peer->hostport, "%s", hostport);
    memcpy(&peer->sa, ai->ai_addr, ai->ai_addrlen);
    peer->salen = ai->ai_addrlen;
    freeaddrinfo(ai);
    peer->backoff_ms = 100;
    k->peers[k->n_peers++] = peer;
    peer_connect(peer);
    kick(k);
    *out = peer;
    return 0;
}

int pd_kvx_peer_up(const struct pd_kvx_peer *peer)
{
    return peer->session && peer->session->state == C_UP;
}

void pd_kvx_peer_remove(struct pd_kvx_peer *peer, const char *why)
{
    if (!peer)
        return;
    struct pd_kvx *k = peer->kvx;
    if (peer->session)
        kvx_session_fail(peer->session, PD_R_SHUTDOWN, why, -1); /* clears peer->session */
    /* events still queued name the peer: they must not point at freed memory */
    for (struct evq *e = k->evq_head; e; e = e->next)
        if (e->ev.peer == peer)
            e->ev.peer = NULL;
    for (unsigned i = 0; i < k->n_peers; i++)
        if (k->peers[i] == peer) {
            k->peers[i] = k->peers[--k->n_peers];
            k->peers[k->n_peers] = NULL;
            break;
        }
    free(peer);
}

int pd_kvx_request(struct pd_kvx_peer *peer, const struct pd_prefill *p, const uint32_t *dest,
                   const uint32_t *twins, uint32_t n, void *udata, struct pd_kvx_req **out,
                   char *err, size_t errlen)
{
    struct pd_kvx *k = peer->kvx;
    struct pd_kvx_session *c = peer->session;
    if (!c || c->state != C_UP)
        return pd_errf(err, errlen, -ENOTCONN, "kvx: no session with %s", peer->hostport);
    if (c->n_reqs >= k->max_inflight)
        return pd_errf(err, errlen, -EBUSY, "kvx: %u requests in flight to %s", c->n_reqs,
                       peer->hostport);
    if (n == 0 || n > PD_PROTO_MAX_REQ_BLOCKS)
        return pd_errf(err, errlen, -E2BIG, "kvx: %u blocks (1..%u)", n, PD_PROTO_MAX_REQ_BLOCKS);
    if ((p->flags & PD_PREFILL_F_PREFIX) && pd_auth_session_minor(c->s) < 1)
        return pd_errf(err, errlen, -EPROTONOSUPPORT,
                       "kvx: %s speaks protocol 1.%u, without prefix caching (1.1)",
                       peer->hostport, pd_auth_session_minor(c->s));
    if ((p->flags & (PD_PREFILL_F_BIAS | PD_PREFILL_F_PROMPT_LP | PD_PREFILL_F_MASK)) &&
        pd_auth_session_minor(c->s) < 2)
        return pd_errf(err, errlen, -EPROTONOSUPPORT,
                       "kvx: %s speaks protocol 1.%u, without logit bias, token masks or "
                       "prompt log-probabilities (1.2)", peer->hostport,
                       pd_auth_session_minor(c->s));
    for (uint32_t i = 0; i < n; i++)
        if (dest[i] >= k->p.pool_blocks)
            return pd_errf(err, errlen, -EINVAL, "kvx: block %u outside the pool", dest[i]);
    if (twins && !k->p.twin_pool)
        return pd_errf(err, errlen, -EINVAL, "kvx: twin blocks without a twin pool");
    for (uint32_t i = 0; twins && i < n; i++)
        if (twins[i] >= k->p.twin_pool_blocks)
            return pd_errf(err, errlen, -EINVAL, "kvx: twin block %u outside the twin pool",
                           twins[i]);
    if (req_find(c, p->request_id))
        return pd_errf(err, errlen, -EEXIST, "kvx: request %llu in flight",
                       (unsigned long long)p->request_id);
    struct pd_frame f = {.type = PD_FT_PREFILL};
    f.u.prefill = *p;
    f.u.prefill.n_blocks = n;
    f.u.prefill.block_size = k->layout.block_size;
    struct pd_kvx_req *r = calloc(1, sizeof *r);
    if (!r || !(r->dest = malloc(n * sizeof *r->dest)) || !(r->st = calloc(n, 1)) ||
        (twins && !(r->twins = malloc(n * sizeof *r->twins))) ||
        ((p->flags & PD_PREFILL_F_PROMPT_LP) && !(r->lp_seen = calloc(p->n_tokens, 1)))) {
        if (r) {
            free(r->dest);
            free(r->st);
            free(r->twins);
            free(r->lp_seen);
        }
        free(r);
        return pd_errf(err, errlen, -ENOMEM, "kvx: out of memory");
    }
    int rc = kvx_send_ctl(c, &f);
    if (rc < 0) {
        free(r->dest);
        free(r->twins);
        free(r->st);
        free(r->lp_seen);
        free(r);
        return pd_errf(err, errlen, rc, "kvx: PREFILL to %s: %s", peer->hostport,
                       rc == -EINVAL ? "invalid request" : strerror(-rc));
    }
    memcpy(r->dest, dest, n * sizeof *dest);
    if (twins)
        memcpy(r->twins, twins, n * sizeof *twins);
    r->c = c;
    c->refs++;
    r->id = p->request_id;
    r->epoch = p->epoch;
    r->n = n;
    r->n_cached = p->n_cached;
    r->n_tokens = p->n_tokens;
    r->n_logprobs = p->n_logprobs;
    r->block_size = k->layout.block_size;
    r->udata = udata;
    r->t_start_ns = pd_now_ns();
    r->last_progress_ms = now_ms();
    kvx_session_link(c, &r->node, &r->linked);
    dl_add(&k->all_reqs, &r->all);
    *out = r;
    return 0;
}

int pd_kvx_cancel(struct pd_kvx_req *r)
{
    if (r->status != R_ACTIVE)
        return -ECANCELED;
    if (r->c->state == C_UP)
        kvx_send_reqref(r->c, PD_FT_CANCEL, r->id, r->epoch);
    req_fail(r, PD_R_CANCELLED, "cancelled", 0);
    kick(r->c->kvx);
    return 0;
}

/* ---- the role's table (kvx_internal.h) ---- */

static void d_session_lost(struct pd_kvx_session *c, int reason, const char *detail, int was_up)
{
    while (!dl_empty(&c->reqs))
        req_fail(DL_ENTRY(c->reqs.next, struct pd_kvx_req, node), reason, detail, 0);
    if (c->peer) {
        c->peer->session = NULL;
        peer_lost(c->peer, was_up);
        c->peer = NULL;
    }
}

static void d_tick_session(struct pd_kvx_session *c, uint64_t now)
{
    for (struct dl *q = c->reqs.next, *qn; q != &c->reqs; q = qn) {
        qn = q->next;
        struct pd_kvx_req *r = DL_ENTRY(q, struct pd_kvx_req, node);
        if (now - r->last_progress_ms > c->kvx->deadline_ms)
            req_fail(r, PD_R_TIMEOUT, "no progress before the deadline", 1);
    }
}

/* peers without a session are tried again when their backoff has passed */
static void d_tick(struct pd_kvx *k, uint64_t now)
{
    for (unsigned i = 0; i < k->n_peers; i++) {
        struct pd_kvx_peer *peer = k->peers[i];
        if (!peer->session && now >= peer->next_try_ms)
            peer_connect(peer);
    }
}

static void d_job_done(struct pd_kvx *k, struct pd_kvx_job *j)
{
    (void)k;
    rop_verified(j->owner); /* D's jobs verify */
}

static void d_ev_release(struct evq *e)
{
    if (e->ev.type == PD_KVX_EV_RELEASED)
        req_free(e->ev.req);
}

static void d_free_all(struct pd_kvx *k)
{
    while (!dl_empty(&k->all_reqs)) {
        struct pd_kvx_req *r = DL_ENTRY(k->all_reqs.next, struct pd_kvx_req, all);
        dl_del(&r->all);
        free(r->dest);
        free(r->st);
        free(r);
    }
}

const struct kvx_role kvx_role_d = {
    .data_before_ready = 1,
    .on_ctl = on_ctl_d,
    .on_data = am_data,
    .session_lost = d_session_lost,
    .tick_session = d_tick_session,
    .tick = d_tick,
    .job_done = d_job_done,
    .ev_release = d_ev_release,
    .free_all = d_free_all,
};
