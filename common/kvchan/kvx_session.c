/* common/kvchan/kvx_session: what both sides of the KV channel do with a
 * session, below the roles (kvx_recv.c, kvx_send.c), the KV port
 * (kvx_boot.c) and the core (kvx.c): queueing events, sending sealed control
 * frames, the session's life (new, up, failed, last reference), finding a
 * session from an active message's token, and the gate every active message
 * passes. Where the roles differ it calls the role's table (k->role). */
#include "errf.h"
#include "kvx_internal.h"

#include <errno.h>
#include <event2/event.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

/* The one place a UCX status becomes an errno (STYLE.md). */
int kvx_ucs_errno(ucs_status_t st)
{
    switch (st) {
    case UCS_OK: return 0;
    case UCS_ERR_NO_MEMORY: return -ENOMEM;
    case UCS_ERR_INVALID_PARAM: return -EINVAL;
    case UCS_ERR_BUSY: return -EADDRINUSE;
    case UCS_ERR_UNREACHABLE: return -EHOSTUNREACH;
    case UCS_ERR_CONNECTION_RESET: return -ECONNRESET;
    case UCS_ERR_REJECTED: return -ECONNREFUSED;
    case UCS_ERR_TIMED_OUT: case UCS_ERR_ENDPOINT_TIMEOUT: return -ETIMEDOUT;
    case UCS_ERR_CANCELED: return -ECANCELED;
    case UCS_ERR_UNSUPPORTED: return -ENOTSUP;
    default: return -EIO;
    }
}

/* ---- events (queued; delivered from the loop, outside UCX progress) ---- */

struct evq *kvx_ev_new(struct pd_kvx *k, enum pd_kvx_event_type type, struct pd_kvx_session *c)
{
    struct evq *e = calloc(1, sizeof *e);
    if (!e)
        return NULL; /* dropped: only a daemon out of memory loses an event */
    e->ev.type = type;
    if (c) {
        e->c = c;
        c->refs++;
        e->ev.session = c;
        e->ev.peer = c->peer;
        snprintf(e->addr, sizeof e->addr, "%s", c->addr);
        snprintf(e->key_id, sizeof e->key_id, "%s", c->key_id);
        e->ev.peer_addr = e->addr;
        e->ev.key_id = e->key_id;
    }
    e->ev.detail = e->detail;
    e->ev.hs_fail = -1;
    if (k->evq_tail)
        k->evq_tail->next = e;
    else
        k->evq_head = e;
    k->evq_tail = e;
    return e;
}

/* ---- sending ---- */

struct sbuf {
    size_t len;
    uint8_t token[PD_KVX_TOKEN_LEN]; /* the peer's, little-endian */
    uint8_t data[];
};

void kvx_token_put(uint8_t out[PD_KVX_TOKEN_LEN], uint64_t token)
{
    for (int i = 0; i < PD_KVX_TOKEN_LEN; i++)
        out[i] = (uint8_t)(token >> (8 * i));
}

static uint64_t token_get(const uint8_t in[PD_KVX_TOKEN_LEN])
{
    uint64_t token = 0;
    for (int i = 0; i < PD_KVX_TOKEN_LEN; i++)
        token |= (uint64_t)in[i] << (8 * i);
    return token;
}

static void sbuf_cb(void *request, ucs_status_t status, void *user_data)
{
    (void)status;
    free(user_data);
    ucp_request_free(request);
}

/* A sealed control frame, eager, behind the peer's token; b is freed when
 * UCX is done with it. */
static int am_send_small(struct pd_kvx_session *c, unsigned id, struct sbuf *b)
{
    ucp_request_param_t prm = kvx_cb_param(sbuf_cb, b, UCP_AM_SEND_FLAG_EAGER);
    if (!c->ep) {
        free(b);
        return -ENOTCONN;
    }
    ucs_status_ptr_t sp = ucp_am_send_nbx(c->ep, id, b->token, sizeof b->token, b->data, b->len,
                                          &prm);
    if (sp == NULL) {
        free(b);
        return 0;
    }
    if (UCS_PTR_IS_ERR(sp)) {
        free(b);
        return kvx_ucs_errno(UCS_PTR_STATUS(sp));
    }
    return 0;
}

int kvx_send_ctl(struct pd_kvx_session *c, const struct pd_frame *f)
{
    if (c->state != C_UP)
        return -ENOTCONN;
    size_t cap = PD_FRAME_HDR_LEN + pd_frame_body_len(f) + PD_FRAME_MAC_LEN;
    struct sbuf *b = malloc(sizeof *b + cap);
    if (!b)
        return -ENOMEM;
    kvx_token_put(b->token, c->tx_token);
    char err[160];
    int rc = pd_auth_seal_frame(c->s, f, b->data, cap, &b->len, err, sizeof err);
    if (rc < 0) {
        pd_log(PD_LOG_DEBUG, "kvx: %s: seal %s: %s", c->addr, pd_frame_type_name(f->type), err);
        free(b);
        return rc;
    }
    rc = am_send_small(c, AM_CTL, b);
    kick(c->kvx);
    return rc;
}

void kvx_send_abort(struct pd_kvx_session *c, uint64_t id, uint32_t epoch, int reason,
                       const char *detail)
{
    struct pd_frame f = {.type = PD_FT_ABORT};
    f.u.abort.request_id = id;
    f.u.abort.epoch = epoch;
    f.u.abort.reason = (uint16_t)reason;
    snprintf(f.u.abort.detail, sizeof f.u.abort.detail, "%s", detail ? detail : "");
    kvx_send_ctl(c, &f);
}

void kvx_send_reqref(struct pd_kvx_session *c, uint8_t type, uint64_t id, uint32_t epoch)
{
    struct pd_frame f = {.type = type};
    f.u.cancel.request_id = id;
    f.u.cancel.epoch = epoch;
    kvx_send_ctl(c, &f);
}

/* ---- sessions ---- */

void kvx_session_put(struct pd_kvx_session *c)
{
    if (--c->refs > 0)
        return;
    dl_del(&c->node);
    kvx_session_close_socket(c);
    pd_auth_session_free(c->s);
    free(c);
}

const char *pd_kvx_hs_fail_name(unsigned i)
{
    static const char *const names[PD_KVX_HSF_N] = {"auth", "garbage", "timeout", "layout",
                                                    "replay", "cap", "refused", "other"};
    return i < PD_KVX_HSF_N ? names[i] : "unknown";
}

int pd_kvx_event_warning(const struct pd_kvx_event *ev, char *buf, size_t len)
{
    if (ev->type != PD_KVX_EV_WARNING)
        return 0;
    if (ev->hs_fail >= 0)
        snprintf(buf, len, "kv channel: handshake with %s failed (%s): %s",
                 ev->peer_addr ? ev->peer_addr : "?", pd_kvx_hs_fail_name((unsigned)ev->hs_fail),
                 ev->detail ? ev->detail : "");
    else
        snprintf(buf, len, "kv channel: %s", ev->detail ? ev->detail : "");
    return 1;
}

/* A handshake failure counted, and told to the daemon (which logs it) */
static void count_hsf(struct pd_kvx *k, struct pd_kvx_session *c, int hsf, const char *why)
{
    if (hsf < 0)
        return;
    k->st.hs_fail[hsf]++;
    struct evq *e = kvx_ev_new(k, PD_KVX_EV_WARNING, c);
    if (e) {
        e->ev.hs_fail = hsf;
        snprintf(e->detail, sizeof e->detail, "%s", why);
    }
}

/* The session is over: every request on it fails or is released, the
 * endpoint is force-closed after UCX progress returns. hsf: a handshake
 * failure to count (-1: none). */
void kvx_session_fail(struct pd_kvx_session *c, int reason, const char *detail, int hsf)
{
    struct pd_kvx *k = c->kvx;
    if (c->state >= C_CLOSING)
        return;
    int was_up = c->state == C_UP;
    if (c->state < C_UP)
        count_hsf(k, c, hsf, detail);
    c->state = C_CLOSING;
    c->want_close = 1;
    kvx_session_close_socket(c); /* the KV-port connection: its end tells the peer at once */
    if (c->up_reported) {
        k->st.sessions--;
        struct evq *e = kvx_ev_new(k, PD_KVX_EV_SESSION_DOWN, c);
        if (e) {
            e->ev.reason = reason;
            snprintf(e->detail, sizeof e->detail, "%s", detail);
        }
        pd_log(PD_LOG_DEBUG, "kvx: session with %s down: %s (%s)", c->addr,
               pd_reason_name((unsigned)reason), detail);
    }
    k->role->session_lost(c, reason, detail, was_up);
    kick(k);
}

void kvx_session_boot_free(struct pd_kvx_session *c)
{
    if (!c->b)
        return;
    kvx_port_done(&c->b->port);
    sodium_memzero(c->b->out, sizeof c->b->out);
    free(c->b);
    c->b = NULL;
}

void kvx_socket_close(int *fd, struct event **ev_a, struct event **ev_b)
{
    kvx_event_free(ev_a);
    kvx_event_free(ev_b);
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

void kvx_session_close_socket(struct pd_kvx_session *c)
{
    kvx_socket_close(&c->fd, &c->ev_rd, &c->ev_wr);
    if (c->b && !c->b->busy)
        kvx_session_boot_free(c);
}

void kvx_session_link(struct pd_kvx_session *c, struct dl *node, int *linked)
{
    dl_add(&c->reqs, node);
    c->n_reqs++;
    *linked = 1;
}

void kvx_session_unlink(struct pd_kvx_session *c, struct dl *node, int *linked)
{
    if (*linked) {
        dl_del(node);
        c->n_reqs--;
        *linked = 0;
    }
}

struct pd_kvx_session *kvx_session_new(struct pd_kvx *k)
{
    struct pd_kvx_session *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->kvx = k;
    c->refs = 1;
    c->state = C_HS;
    c->fd = -1;
    c->t_created_ms = c->last_rx_ms = now_ms();
    c->t_connect_ns = pd_now_ns();
    dl_init(&c->reqs);
    dl_add(&k->conns, &c->node);
    return c;
}

struct pd_kvx_session *kvx_session_find(struct pd_kvx *k, const void **header, size_t *header_length)
{
    if (*header_length < PD_KVX_TOKEN_LEN)
        return NULL;
    const uint8_t *h = *header;
    uint64_t token = token_get(h);
    *header = h + PD_KVX_TOKEN_LEN;
    *header_length -= PD_KVX_TOKEN_LEN;
    for (struct dl *i = k->conns.next; i != &k->conns; i = i->next) {
        struct pd_kvx_session *c = DL_ENTRY(i, struct pd_kvx_session, node);
        if (c->rx_token == token && token && c->ep && (c->state == C_ADDR || c->state == C_UP))
            return c;
    }
    return NULL;
}

void kvx_ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    (void)ep;
    struct pd_kvx_session *c = arg;
    int hsf = PD_KVX_HSF_OTHER;
    if (c->peer) {
        /* During our handshake a reset means the responder took the
         * connection and then closed it (our key, layout or model refused, or
         * a cap: its log says which; it cannot tell us unauthenticated). A
         * connection never made (nobody listening) is not a handshake
         * failure; the peer's backoff handles it. */
        hsf = c->state == C_HS && status == UCS_ERR_CONNECTION_RESET ? PD_KVX_HSF_REFUSED : -1;
    }
    kvx_session_fail(c, PD_R_TRANSFER,
                  hsf == PD_KVX_HSF_REFUSED
                      ? "the peer closed the connection during the handshake (a key, model or "
                        "block layout it refuses, or a cap on its side: its log says which)"
                      : ucs_status_string(status),
                  hsf);
}

/* Both endpoints exist (kvx_boot.c): the session is usable. */
void kvx_session_up(struct pd_kvx_session *c)
{
    struct pd_kvx *k = c->kvx;
    c->state = C_UP;
    c->up_reported = 1;
    c->last_rx_ms = c->last_hb_ms = now_ms();
    k->st.handshakes_ok++;
    k->st.sessions++;
    k->st.sessions_total++;
    if (c->peer) {
        c->peer->backoff_ms = 100;
        k->st.handshake_ns += pd_now_ns() - c->t_connect_ns;
    }
    kvx_ev_new(k, PD_KVX_EV_SESSION_UP, c);
    pd_log(PD_LOG_DEBUG, "kvx: session with %s up (key %s)", c->addr, c->key_id);
}

/* Build the iovec of n blocks (pool indices idx[n]), merging adjacent ones. */
size_t kvx_build_iov(uint8_t *pool, size_t bb, const uint32_t *idx, uint32_t n,
                        ucp_dt_iov_t *iov, uint8_t **blocks)
{
    size_t niov = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *p = pool + (size_t)idx[i] * bb;
        blocks[i] = p;
        if (niov && (uint8_t *)iov[niov - 1].buffer + iov[niov - 1].length == p)
            iov[niov - 1].length += bb;
        else
            iov[niov++] = (ucp_dt_iov_t){.buffer = p, .length = bb};
    }
    return niov;
}

/* ---- the gate ---- */

/* Traffic with no session's token: dropped (returning UCS_OK drops a
 * rendezvous descriptor without receiving it) and counted. A message that
 * names a session but does not open under its keys is dropped too, never
 * held against the session: anyone who reaches UCX's data listener can send
 * one. D may hear from P between its own UCX_ADDR and P's READY. */
int kvx_gate(struct pd_kvx *k, struct pd_kvx_session *c)
{
    if (c && (c->state == C_UP || (c->state == C_ADDR && k->role->data_before_ready)))
        return 1;
    k->st.dropped_unauth++;
    return 0;
}
