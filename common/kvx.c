/* common/kvx: the KV channel's UCX transport. See kvx.h for the API and
 * docs/internals/kvx.md for threads, lifetimes and the block rule.
 *
 * This file: events, small sends, sessions (connections + handshake), the
 * handshake and control active-message handlers, the loop (progress/arm,
 * tick), the listener, and the constructor / destructor. decoded's side is in
 * kvx_recv.c, prefilld's in kvx_send.c, the crypto threads in kvx_crypto.c.
 */
#include "kvx.h"
#include "metrics.h"

#include "auth.h"
#include "errf.h"
#include "kvx_internal.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

/* The one place a UCX status becomes an errno (STYLE.md). */
static int ucs_errno(ucs_status_t st)
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
    if (k->evq_tail)
        k->evq_tail->next = e;
    else
        k->evq_head = e;
    k->evq_tail = e;
    return e;
}


/* After delivery (or at shutdown): whatever the event owned. */
static void ev_done(struct evq *e)
{
    if (e->ev.type == PD_KVX_EV_RELEASED)
        kvx_req_free(e->ev.req);
    else if (e->ev.type == PD_KVX_EV_SREQ_END)
        kvx_sreq_free(e->ev.sreq);
    if (e->run)
        kvx_run_free(e->run);
    free(e->plain);
    if (e->c)
        kvx_conn_put(e->c);
    free(e);
}

static int deliver_events(struct pd_kvx *k)
{
    int n = 0;
    while (k->evq_head) {
        struct evq *e = k->evq_head;
        k->evq_head = e->next;
        if (!k->evq_head)
            k->evq_tail = NULL;
        /* the request's udata as of now: an event queued before the daemon
         * set it (SREQ_END behind its PREFILL when the session dies) still
         * carries it */
        if (e->ev.sreq)
            e->ev.udata = e->ev.sreq->udata;
        else if (e->ev.req)
            e->ev.udata = e->ev.req->udata;
        if (k->p.event)
            k->p.event(k->p.arg, &e->ev);
        ev_done(e);
        n++;
    }
    return n;
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
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_FLAGS,
        .cb.send = sbuf_cb,
        .user_data = b,
        .flags = UCP_AM_SEND_FLAG_EAGER,
    };
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
        return ucs_errno(UCS_PTR_STATUS(sp));
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


void kvx_conn_put(struct pd_kvx_session *c)
{
    if (--c->refs > 0)
        return;
    dl_del(&c->node);
    kvx_boot_close(c);
    pd_auth_session_free(c->s);
    free(c);
}

static void count_hsf(struct pd_kvx *k, const char *addr, int hsf, const char *why)
{
    if (hsf < 0)
        return;
    k->st.hs_fail[hsf]++;
    pd_log_ratelimited(&k->rl, PD_LOG_WARN, "kv channel: handshake with %s failed (%s): %s",
                       addr, pd_kvx_hs_fail_name((unsigned)hsf), why);
}

/* The session is over: every request on it fails or is released, the
 * endpoint is force-closed after UCX progress returns. hsf: a handshake
 * failure to count (-1: none). */
void kvx_conn_fail(struct pd_kvx_session *c, int reason, const char *detail, int hsf)
{
    struct pd_kvx *k = c->kvx;
    if (c->state >= C_CLOSING)
        return;
    int was_up = c->state == C_UP;
    if (c->state < C_UP)
        count_hsf(k, c->addr, hsf, detail);
    c->state = C_CLOSING;
    c->want_close = 1;
    kvx_boot_close(c); /* the KV-port connection: its end tells the peer at once */
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
    while (!dl_empty(&c->reqs)) {
        struct dl *n = c->reqs.next;
        if (k->p.role == PD_ROLE_D)
            kvx_req_fail(DL_ENTRY(n, struct pd_kvx_req, node), reason, detail, 0);
        else
            kvx_sreq_kill(DL_ENTRY(n, struct pd_kvx_sreq, node), reason);
    }
    if (c->peer) {
        c->peer->conn = NULL;
        kvx_peer_lost(c->peer, was_up);
        c->peer = NULL;
    }
    kick(k);
}

static void ep_close_cb(void *request, ucs_status_t status, void *user_data)
{
    (void)status;
    struct pd_kvx_session *c = user_data;
    c->state = C_CLOSED;
    ucp_request_free(request);
    kvx_conn_put(c);
}

static int do_closes(struct pd_kvx *k)
{
    int n = 0;
    for (struct dl *i = k->conns.next, *nx; i != &k->conns; i = nx) {
        nx = i->next;
        struct pd_kvx_session *c = DL_ENTRY(i, struct pd_kvx_session, node);
        if (!c->want_close || c->closing_posted)
            continue;
        c->closing_posted = 1;
        n++;
        if (!c->ep) { /* closed before its endpoint existed */
            c->state = C_CLOSED;
            kvx_conn_put(c);
            continue;
        }
        ucp_request_param_t prm = {
            .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                            UCP_OP_ATTR_FIELD_FLAGS,
            .cb.send = ep_close_cb,
            .user_data = c,
            .flags = UCP_EP_CLOSE_FLAG_FORCE,
        };
        ucs_status_ptr_t sp = ucp_ep_close_nbx(c->ep, &prm);
        if (sp == NULL || UCS_PTR_IS_ERR(sp)) {
            c->state = C_CLOSED;
            kvx_conn_put(c);
        }
    }
    return n;
}

struct pd_kvx_session *kvx_conn_new(struct pd_kvx *k)
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

struct pd_kvx_session *kvx_conn_find(struct pd_kvx *k, const void **header, size_t *header_length)
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
    kvx_conn_fail(c, PD_R_TRANSFER,
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

/* ---- D: peers (connect, reconnect with backoff) ---- */



/* ---- D: requests ---- */












/* ---- P: requests, runs, messages ---- */












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

/* ---- active-message handlers (inside UCX progress) ---- */

/* Traffic with no session's token: dropped (returning UCS_OK drops a
 * rendezvous descriptor without receiving it) and counted. A message that
 * names a session but does not open under its keys is dropped too, never
 * held against the session: anyone who reaches UCX's data listener can send
 * one. D may hear from P between its own UCX_ADDR and P's READY. */
int kvx_gate(struct pd_kvx *k, struct pd_kvx_session *c)
{
    if (c && (c->state == C_UP || (c->state == C_ADDR && k->p.role == PD_ROLE_D)))
        return 1;
    k->st.dropped_unauth++;
    return 0;
}




static ucs_status_t am_ctl(void *arg, const void *header, size_t header_length, void *data,
                           size_t length, const ucp_am_recv_param_t *param)
{
    (void)header;
    (void)header_length;
    struct pd_kvx *k = arg;
    struct pd_kvx_session *c = kvx_conn_find(k, &header, &header_length);
    if (!kvx_gate(k, c))
        return UCS_OK;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) || header_length != 0 ||
        length > PD_FRAME_HDR_LEN + PD_FRAME_MAX_BODY + PD_FRAME_MAC_LEN ||
        length < PD_FRAME_HDR_LEN + PD_FRAME_MAC_LEN) {
        k->st.protocol_errors++; /* not one of the peer's: dropped */
        return UCS_OK;
    }
    uint8_t *plain = malloc(length);
    if (!plain)
        return UCS_OK;
    struct pd_frame f;
    char err[256];
    int rc = pd_auth_open_frame(c->s, data, length, plain, length, &f, err, sizeof err);
    if (rc < 0) {
        free(plain); /* forged, replayed or stale: dropped; the session is as it was */
        k->st.protocol_errors++;
        pd_log(PD_LOG_DEBUG, "kvx: %s: control frame dropped: %s", c->addr, err);
        return UCS_OK;
    }
    c->last_rx_ms = now_ms();
    /* session frames, the same for both roles; the rest is the role's */
    switch (f.type) {
    case PD_FT_HEARTBEAT:
        c->peer_lease_ms = f.u.heartbeat.lease_ms; /* on_tick heartbeats at the shorter lease */
        break;
    case PD_FT_ABORT_ACK: /* answers an ABORT of ours: nothing more to do */
        break;
    case PD_FT_ERROR:
        kvx_conn_fail(c, f.u.error.reason, f.u.error.detail, -1);
        break;
    default:
        if (k->p.role == PD_ROLE_D)
            kvx_on_ctl_d(c, &f);
        else
            kvx_on_ctl_p(c, &f, &plain);
    }
    free(plain);
    return UCS_OK;
}


/* ---- the loop ---- */

static void crypto_done(struct pd_kvx *k)
{
    struct pd_kvx_job *j = pd_kvx_crypto_take(k->crypto);
    while (j) {
        struct pd_kvx_job *nx = j->next;
        k->crypto_jobs--;
        if (j->kind == PD_KVX_JOB_VERIFY) {
            kvx_rop_verified(j->owner);
        } else {
            struct msg *m = j->owner;
            k->crypto_queued -= m->bytes;
            kvx_msg_send(m);
        }
        j = nx;
    }
    kvx_crypto_pump(k);
}

static void loop_run(struct pd_kvx *k)
{
    if (k->in_loop)
        return;
    k->in_loop = 1;
    for (;;) {
        unsigned n = 0;
        while (n < 256 && ucp_worker_progress(k->worker))
            n++;
        n += (unsigned)(do_closes(k) + deliver_events(k));
        if (n) { /* something moved: spin again freely */
            k->spin_since = 0;
            k->backoff_us = 0;
            continue;
        }
        ucs_status_t st = ucp_worker_arm(k->worker);
        if (st != UCS_ERR_BUSY) {
            k->spin_since = 0;
            break;
        }
        /* UCX says BUSY with nothing to progress: sends wait on a peer (with
         * shared memory, for room in its FIFO; no wakeup comes when room
         * appears; a stopped peer keeps it so). Spin for BUSY_SPIN_US, then
         * sleep on a timer that doubles from BUSY_RETRY_US to
         * BUSY_RETRY_MAX_US until something moves again: no busy polling on
         * a stalled peer */
        uint64_t now = pd_now_ns();
        if (!k->spin_since) {
            k->spin_since = now;
        } else if (now - k->spin_since >= BUSY_SPIN_US * 1000ull) {
            k->backoff_us = k->backoff_us ? k->backoff_us * 2 : BUSY_RETRY_US;
            if (k->backoff_us > BUSY_RETRY_MAX_US)
                k->backoff_us = BUSY_RETRY_MAX_US;
            k->spin_since = 0;
            struct timeval tv = {.tv_sec = 0, .tv_usec = (suseconds_t)k->backoff_us};
            event_add(k->ev_retry, &tv);
            break;
        }
    }
    k->in_loop = 0;
}

static void on_efd(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    loop_run(arg);
}

static void on_crypto(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    crypto_done(arg);
    loop_run(arg);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pd_kvx *k = arg;
    uint64_t now = now_ms();
    for (struct dl *i = k->conns.next, *nx; i != &k->conns; i = nx) {
        nx = i->next;
        struct pd_kvx_session *c = DL_ENTRY(i, struct pd_kvx_session, node);
        if (c->state < C_UP && now - c->t_created_ms > k->hs_ms) {
            kvx_conn_fail(c, PD_R_TIMEOUT, "no handshake before the deadline", PD_KVX_HSF_TIMEOUT);
        } else if (c->state == C_UP && now - c->last_rx_ms > k->lease_ms) {
            kvx_conn_fail(c, PD_R_TIMEOUT, "lease expired", -1);
        } else if (c->state == C_UP) {
            /* heartbeats at a third of the shorter lease, ours or the
             * peer's (daemons may be configured differently): the peer
             * must hear from us well within its own lease */
            uint32_t lease = k->lease_ms;
            if (c->peer_lease_ms && c->peer_lease_ms < lease)
                lease = c->peer_lease_ms;
            if (now - c->last_hb_ms >= lease / 3) {
                struct pd_frame f = {.type = PD_FT_HEARTBEAT};
                f.u.heartbeat.lease_ms = k->lease_ms;
                f.u.heartbeat.seq = ++c->hb_seq;
                c->last_hb_ms = now;
                kvx_send_ctl(c, &f);
            }
            for (struct dl *q = c->reqs.next, *qn; q != &c->reqs; q = qn) {
                qn = q->next;
                if (k->p.role == PD_ROLE_D) {
                    struct pd_kvx_req *r = DL_ENTRY(q, struct pd_kvx_req, node);
                    if (now - r->last_progress_ms > k->deadline_ms)
                        kvx_req_fail(r, PD_R_TIMEOUT, "no progress before the deadline", 1);
                } else {
                    /* runs the receiver does not acknowledge in time come back */
                    struct pd_kvx_sreq *r = DL_ENTRY(q, struct pd_kvx_sreq, node);
                    if (!dl_empty(&r->runs) && now - r->last_progress_ms > k->deadline_ms) {
                        kvx_send_abort(c, r->id, r->epoch, PD_R_TIMEOUT, "no acknowledgement");
                        kvx_sreq_kill(r, PD_R_TIMEOUT);
                    }
                }
            }
        }
    }
    for (unsigned i = 0; i < k->n_peers; i++) {
        struct pd_kvx_peer *peer = k->peers[i];
        if (!peer->conn && now >= peer->next_try_ms)
            kvx_peer_connect(peer);
    }
    loop_run(k);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    loop_run(arg);
}

/* ---- public: P ---- */

int pd_kvx_listen(struct pd_kvx *k, char *err, size_t errlen)
{
    if (k->p.role != PD_ROLE_P)
        return pd_errf(err, errlen, -EINVAL, "kvx: only prefilld listens");
    if (k->lfd >= 0)
        return pd_errf(err, errlen, -EALREADY, "kvx: already listening");
    int rc = kvx_boot_listen(k, err, errlen);
    if (rc == 0)
        kick(k);
    return rc;
}

uint16_t pd_kvx_port(const struct pd_kvx *k) { return k->port; }





/* ---- public: D ---- */





/* ---- stats, names ---- */

void pd_kvx_get_stats(const struct pd_kvx *k, struct pd_kvx_stats *out) { *out = k->st; }

const char *pd_kvx_hs_fail_name(unsigned i)
{
    static const char *const names[PD_KVX_HSF_N] = {"auth", "garbage", "timeout", "layout",
                                                    "replay", "cap", "refused", "other"};
    return i < PD_KVX_HSF_N ? names[i] : "unknown";
}

void pd_kvx_session_transports(struct pd_kvx_session *c, char *buf, size_t len)
{
    buf[0] = 0;
    if (!c || c->state != C_UP || len == 0)
        return;
    char *text = NULL;
    size_t tlen = 0;
    FILE *f = open_memstream(&text, &tlen);
    if (!f)
        return;
    ucp_ep_print_info(c->ep, f);
    fclose(f);
    /* lanes look like "lane[0]:  1:tcp/lo.0 md[1] ..." or "... posix/memory ..." */
    size_t used = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strstr(line, "lane["))
            continue;
        char tl[64];
        char *p = strchr(line, ':');
        if (!p || sscanf(p + 1, " %*d:%63[A-Za-z0-9_./-]", tl) != 1 || !strchr(tl, '/'))
            continue;
        if (strstr(buf, tl))
            continue;
        int w = snprintf(buf + used, len - used, "%s%s", used ? "," : "", tl);
        if (w < 0 || (size_t)w >= len - used)
            break;
        used += (size_t)w;
    }
    free(text);
}

/* ---- construction ---- */

/* The interface that owns ip ("lo" for loopback), for UCX's NET_DEVICES.
 * UCX binds an interface's first IPv4 address (SIOCGIFADDR) and
 * NET_DEVICES takes interface names only: a secondary address is refused
 * (-EADDRNOTAVAIL, the primary in primary[]), or UCX's data listener would
 * sit on another address than the one the operator firewalls. */
static int ifname_of(const char *ip, char *name, size_t len, char primary[INET_ADDRSTRLEN])
{
    struct in_addr want;
    if (inet_pton(AF_INET, ip, &want) != 1)
        return -EINVAL;
    if (want.s_addr == htonl(INADDR_ANY)) {
        snprintf(name, len, "all");
        return 0;
    }
    struct ifaddrs *ifa = NULL;
    if (getifaddrs(&ifa) < 0)
        return -errno;
    int rc = -ENODEV;
    for (struct ifaddrs *i = ifa; i; i = i->ifa_next) {
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET &&
            ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr == want.s_addr) {
            snprintf(name, len, "%s", i->ifa_name);
            rc = 0;
            break;
        }
    }
    freeifaddrs(ifa);
    if (rc < 0)
        return rc;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    size_t nl = strnlen(name, IF_NAMESIZE - 1);
    memcpy(ifr.ifr_name, name, nl);
    if (ioctl(fd, SIOCGIFADDR, &ifr) == 0 && ifr.ifr_addr.sa_family == AF_INET) {
        struct in_addr got = ((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr;
        if (got.s_addr != want.s_addr) {
            inet_ntop(AF_INET, &got, primary, INET_ADDRSTRLEN);
            rc = -EADDRNOTAVAIL;
        }
    }
    close(fd);
    return rc;
}

static int cfg_set(ucp_config_t *cfg, const char *name, const char *value, char *err,
                   size_t errlen)
{
    ucs_status_t st = ucp_config_modify(cfg, name, value);
    if (st != UCS_OK)
        return pd_errf(err, errlen, ucs_errno(st), "kvx: UCX config %s=%s: %s", name, value,
                       ucs_status_string(st));
    return 0;
}

/* Bytes of a sealed CHUNK frame carrying n tags. */
static size_t chunk_wire_len(uint32_t n)
{
    struct pd_frame f = {.type = PD_FT_CHUNK};
    f.u.chunk.n_blocks = n;
    return PD_FRAME_HDR_LEN + pd_frame_body_len(&f) + PD_FRAME_MAC_LEN;
}

static int ucx_setup(struct pd_kvx *k, char *err, size_t errlen)
{
    char ifn[IF_NAMESIZE + 8], v[64], primary[INET_ADDRSTRLEN] = "";
    int rc = ifname_of(k->kv_ip, ifn, sizeof ifn, primary);
    if (rc == -EADDRNOTAVAIL)
        return pd_errf(err, errlen, rc,
                       "kvx: --kv-ip %s is a secondary address of %s, whose first address is "
                       "%s: UCX binds an interface's first address, so its data connections "
                       "would not be on --kv-ip; use an interface of its own for the KV channel "
                       "(a dedicated NIC, a dummy or macvlan interface) or that first address",
                       k->kv_ip, ifn, primary);
    if (rc < 0)
        return pd_errf(err, errlen, rc, "kvx: no interface owns --kv-ip %s", k->kv_ip);
    ucp_config_t *cfg;
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK)
        return pd_errf(err, errlen, ucs_errno(st), "kvx: UCX config: %s", ucs_status_string(st));
    rc = cfg_set(cfg, "NET_DEVICES", ifn, err, errlen);
    if (rc == 0 && k->p.data_port_lo) {
        snprintf(v, sizeof v, "%u-%u", k->p.data_port_lo, k->p.data_port_hi);
        /* The same setting under two names: UCX 1.13 applies PORT_RANGE (it
         * takes TCP_PORT_RANGE too but does not apply it); later versions
         * apply TCP_PORT_RANGE and refuse PORT_RANGE as an invalid parameter */
        rc = cfg_set(cfg, "TCP_PORT_RANGE", v, err, errlen);
        if (rc == 0 && ucp_config_modify(cfg, "PORT_RANGE", v) != UCS_OK)
            pd_log(PD_LOG_DEBUG, "kvx: this UCX has no PORT_RANGE; TCP_PORT_RANGE applies");
    }
    /* (only where shared memory may be used: UCX warns about a setting no
     * transport takes) */
    const char *tls = getenv("UCX_TLS");
    int shm = !tls || strstr(tls, "all") || strstr(tls, "shm") || strstr(tls, "mm") ||
              strstr(tls, "posix") || strstr(tls, "sysv");
    if (rc == 0 && shm && !k->p.no_mm_error_handling) {
        rc = cfg_set(cfg, "MM_ERROR_HANDLING", "y", err, errlen);
    }
    if (rc == 0) {
        snprintf(v, sizeof v, "%ums", k->lease_ms / 3 ? k->lease_ms / 3 : 1);
        rc = cfg_set(cfg, "KEEPALIVE_INTERVAL", v, err, errlen);
    }
    /* receiver pulls (get) where the transport can: the sender never writes
     * into the receiver's pool with an rkey (DESIGN.md) */
    if (rc == 0)
        rc = cfg_set(cfg, "RNDV_SCHEME", "get_zcopy", err, errlen);
    if (rc < 0) {
        ucp_config_release(cfg);
        return rc;
    }
    ucp_params_t pp = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME,
        .features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
        .name = k->p.role == PD_ROLE_P ? "prefilld-kv" : "decoded-kv",
    };
    st = ucp_init(&pp, cfg, &k->ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK)
        return pd_errf(err, errlen, ucs_errno(st), "kvx: ucp_init: %s", ucs_status_string(st));
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    st = ucp_worker_create(k->ctx, &wp, &k->worker);
    if (st != UCS_OK)
        return pd_errf(err, errlen, ucs_errno(st), "kvx: worker: %s", ucs_status_string(st));
    st = ucp_worker_get_efd(k->worker, &k->efd);
    if (st != UCS_OK)
        return pd_errf(err, errlen, ucs_errno(st), "kvx: worker fd: %s", ucs_status_string(st));
    ucp_worker_attr_t wa = {.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER};
    size_t max_hdr = 4096;
    if (ucp_worker_query(k->worker, &wa) == UCS_OK)
        max_hdr = wa.max_am_header;
    size_t fixed = PD_KVX_TOKEN_LEN + chunk_wire_len(0);
    size_t by_hdr = max_hdr > fixed ? (max_hdr - fixed) / PD_BLOCK_TAG_LEN : 0;
    if (by_hdr == 0)
        return pd_errf(err, errlen, -ENOTSUP, "kvx: UCX allows %zu header bytes", max_hdr);
    k->am_blocks = by_hdr < MAX_AM_BLOCKS ? (unsigned)by_hdr : MAX_AM_BLOCKS;
    /* and at most MAX_AM_BYTES per message (at least one block): tagging,
     * sending and verifying pipeline in pieces of that size */
    size_t by_bytes = MAX_AM_BYTES / k->block_bytes;
    if (by_bytes < k->am_blocks)
        k->am_blocks = by_bytes ? (unsigned)by_bytes : 1;
    static const unsigned ids[2] = {AM_CTL, AM_DATA};
    static const ucp_am_recv_callback_t cbs[2] = {am_ctl, kvx_am_data};
    for (int i = 0; i < 2; i++) {
        ucp_am_handler_param_t hp = {
            .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                          UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
            .id = ids[i],
            .cb = cbs[i],
            .arg = k,
            .flags = UCP_AM_FLAG_WHOLE_MSG,
        };
        st = ucp_worker_set_am_recv_handler(k->worker, &hp);
        if (st != UCS_OK)
            return pd_errf(err, errlen, ucs_errno(st), "kvx: AM handler: %s",
                           ucs_status_string(st));
    }
    /* what the peer's endpoint is made from, sent sealed on the KV port */
    ucp_address_t *wa_addr = NULL;
    st = ucp_worker_get_address(k->worker, &wa_addr, &k->waddr_len);
    if (st != UCS_OK)
        return pd_errf(err, errlen, ucs_errno(st), "kvx: worker address: %s",
                       ucs_status_string(st));
    k->waddr = wa_addr;
    if (k->waddr_len == 0 || k->waddr_len > PD_PROTO_MAX_UCX_ADDR)
        return pd_errf(err, errlen, -E2BIG,
                       "kvx: the UCX worker address is %zu bytes, over the protocol's %u "
                       "(narrow UCX_TLS)",
                       k->waddr_len, PD_PROTO_MAX_UCX_ADDR);
    return 0;
}

int pd_kvx_new(const struct pd_kvx_params *p, struct pd_kvx **out, char *err, size_t errlen)
{
    char e2[256];
    if (!p->base || !p->keyring || !p->layout || !p->pool || !p->pool_blocks || !p->kv_ip)
        return pd_errf(err, errlen, -EINVAL, "kvx: base, keyring, layout, pool and kv_ip needed");
    if (pd_kv_layout_check(p->layout, e2, sizeof e2) < 0)
        return pd_errf(err, errlen, -EINVAL, "kvx: %s", e2);
    if (p->data_port_lo > p->data_port_hi)
        return pd_errf(err, errlen, -EINVAL, "kvx: data ports %u-%u", p->data_port_lo,
                       p->data_port_hi);
    if (p->lease_ms > PD_PROTO_MAX_LEASE_MS)
        return pd_errf(err, errlen, -EINVAL, "kvx: lease %u ms over %u", p->lease_ms,
                       PD_PROTO_MAX_LEASE_MS);
    if (pd_auth_init() < 0)
        return pd_errf(err, errlen, -EIO, "kvx: libsodium did not initialise");
    struct pd_kvx *k = calloc(1, sizeof *k);
    if (!k)
        return pd_errf(err, errlen, -ENOMEM, "kvx: out of memory");
    k->p = *p;
    k->layout = *p->layout;
    snprintf(k->kv_ip, sizeof k->kv_ip, "%s", p->kv_ip);
    k->p.kv_ip = k->kv_ip;
    k->p.layout = &k->layout;
    k->block_bytes = (size_t)p->layout->block_bytes;
    k->lease_ms = p->lease_ms ? p->lease_ms : 3000;
    k->hs_ms = p->handshake_ms ? p->handshake_ms : 2000;
    k->deadline_ms = p->request_deadline_ms ? p->request_deadline_ms : 10000;
    k->max_sessions = p->max_sessions ? p->max_sessions : 64;
    k->max_pending = p->max_pending ? p->max_pending : 16;
    k->max_pending_src = p->max_pending_per_source ? p->max_pending_per_source
                                                   : (k->max_pending + 3) / 4;
    if (k->max_pending_src > k->max_pending)
        k->max_pending_src = k->max_pending;
    k->lfd = -1;
    k->max_inflight = p->max_inflight ? p->max_inflight : 256;
    k->max_crypto = p->max_crypto_bytes ? p->max_crypto_bytes : (256u << 20);
    k->rl = (struct pd_ratelimit)PD_RATELIMIT_INIT(5000, 10);
    dl_init(&k->conns);
    dl_init(&k->all_reqs);
    dl_init(&k->all_sreqs);
    dl_init(&k->all_runs);
    dl_init(&k->backlog);
    k->efd = -1;
    int rc = ucx_setup(k, err, errlen);
    if (rc < 0)
        goto fail;
    /* any CHUNK the protocol allows: the sender's UCX may allow longer headers */
    k->scratch_cap = chunk_wire_len(PD_PROTO_MAX_CHUNK_BLOCKS);
    k->scratch = malloc(k->scratch_cap);
    int cfd = -1;
    if (!k->scratch) {
        rc = pd_errf(err, errlen, -ENOMEM, "kvx: out of memory");
        goto fail;
    }
    rc = pd_kvx_crypto_new(p->crypto_threads, &k->crypto, &cfd);
    if (rc < 0) {
        pd_errf(err, errlen, rc, "kvx: crypto threads: %s", strerror(-rc));
        goto fail;
    }
    if (p->role == PD_ROLE_P) {
        rc = pd_auth_replay_new(PD_AUTH_REPLAY_DEFAULT, k->hs_ms > 10000 ? k->hs_ms : 10000,
                                &k->replay);
        if (rc < 0) {
            pd_errf(err, errlen, rc, "kvx: replay cache: %s", strerror(-rc));
            goto fail;
        }
    }
    kvx_boot_env(k); /* after the replay cache and the worker address */
    uint32_t tick = k->lease_ms / 6;
    if (tick > k->hs_ms / 4)
        tick = k->hs_ms / 4;
    if (tick > 100)
        tick = 100;
    if (tick < 5)
        tick = 5;
    struct timeval tv = {.tv_sec = 0, .tv_usec = (suseconds_t)tick * 1000};
    k->ev_efd = event_new(p->base, k->efd, EV_READ | EV_PERSIST, on_efd, k);
    k->ev_crypto = event_new(p->base, cfd, EV_READ | EV_PERSIST, on_crypto, k);
    k->ev_kick = event_new(p->base, -1, 0, on_kick, k);
    k->ev_retry = event_new(p->base, -1, 0, on_kick, k);
    k->ev_tick = event_new(p->base, -1, EV_PERSIST, on_tick, k);
    if (!k->ev_efd || !k->ev_crypto || !k->ev_kick || !k->ev_tick || !k->ev_retry ||
        event_add(k->ev_efd, NULL) < 0 || event_add(k->ev_crypto, NULL) < 0 ||
        event_add(k->ev_tick, &tv) < 0) {
        rc = pd_errf(err, errlen, -ENOMEM, "kvx: libevent events");
        goto fail;
    }
    kick(k);
    *out = k;
    return 0;
fail:
    pd_kvx_free(k);
    return rc;
}

struct pd_kvx *pd_kvx_free(struct pd_kvx *k)
{
    if (!k)
        return NULL;
    k->shutting_down = 1;
    if (k->ev_tick)
        event_free(k->ev_tick);
    kvx_boot_unlisten(k);
    /* first let queued frames (a last ACK, an ABORT) go out, for a bounded
     * time; then close every endpoint (force) and progress until UCX is done
     * with them: receives into the pool fail and complete here */
    if (k->worker) {
        ucp_request_param_t fp = {.op_attr_mask = 0};
        void *fr = ucp_worker_flush_nbx(k->worker, &fp);
        if (fr && !UCS_PTR_IS_ERR(fr)) {
            uint64_t until = now_ms() + 500;
            while (ucp_request_check_status(fr) == UCS_INPROGRESS && now_ms() < until)
                ucp_worker_progress(k->worker);
            ucp_request_free(fr); /* released by UCX when it completes */
        }
    }
    for (struct dl *i = k->conns.next; i != &k->conns; i = i->next) {
        struct pd_kvx_session *c = DL_ENTRY(i, struct pd_kvx_session, node);
        if (c->state < C_CLOSING)
            kvx_conn_fail(c, PD_R_SHUTDOWN, "shutting down", -1);
    }
    if (k->worker) {
        uint64_t until = now_ms() + 3000;
        while (now_ms() < until) {
            ucp_worker_progress(k->worker);
            do_closes(k);
            if (k->crypto)
                crypto_done(k);
            int open = 0;
            for (struct dl *i = k->conns.next; i != &k->conns; i = i->next)
                open += DL_ENTRY(i, struct pd_kvx_session, node)->state != C_CLOSED;
            if (!open && k->ucx_ops == 0 && k->crypto_jobs == 0)
                break;
        }
    }
    pd_kvx_crypto_free(k->crypto);
    k->crypto = NULL;
    /* events are not delivered now; free what they own */
    while (k->evq_head) {
        struct evq *e = k->evq_head;
        k->evq_head = e->next;
        ev_done(e);
    }
    k->evq_tail = NULL;
    while (!dl_empty(&k->backlog)) {
        struct msg *m = DL_ENTRY(k->backlog.next, struct msg, node);
        dl_del(&m->node);
        free(m);
    }
    while (!dl_empty(&k->all_runs)) {
        struct run *run = DL_ENTRY(k->all_runs.next, struct run, all);
        kvx_run_free(run);
    }
    while (!dl_empty(&k->all_reqs)) {
        struct pd_kvx_req *r = DL_ENTRY(k->all_reqs.next, struct pd_kvx_req, all);
        dl_del(&r->all);
        free(r->dest);
        free(r->st);
        free(r);
    }
    while (!dl_empty(&k->all_sreqs)) {
        struct pd_kvx_sreq *r = DL_ENTRY(k->all_sreqs.next, struct pd_kvx_sreq, all);
        dl_del(&r->all);
        free(r);
    }
    while (!dl_empty(&k->conns)) {
        struct pd_kvx_session *c = DL_ENTRY(k->conns.next, struct pd_kvx_session, node);
        c->refs = 1;
        kvx_conn_put(c);
    }
    for (unsigned i = 0; i < k->n_peers; i++)
        free(k->peers[i]);
    if (k->ev_efd)
        event_free(k->ev_efd);
    if (k->ev_crypto)
        event_free(k->ev_crypto);
    if (k->ev_kick)
        event_free(k->ev_kick);
    if (k->ev_retry)
        event_free(k->ev_retry);
    if (k->waddr)
        ucp_worker_release_address(k->worker, k->waddr);
    if (k->worker)
        ucp_worker_destroy(k->worker);
    if (k->ctx)
        ucp_cleanup(k->ctx);
    pd_auth_replay_free(k->replay);
    free(k->scratch);
    free(k);
    return NULL;
}

int pd_kvx_ports_warning(const char *kv_ip, const char *ports, char *msg, size_t len)
{
    if (ports || !kv_ip || strncmp(kv_ip, "127.", 4) == 0)
        return 0;
    snprintf(msg, len,
             "no --kv-data-ports: UCX's data listener on %s takes a port of its own choosing, "
             "which a firewall cannot name (docs/operations.md, \"Firewall\")",
             kv_ip);
    return 1;
}

int pd_kvx_parse_ports(const char *s, uint16_t *lo, uint16_t *hi, char *err, size_t errlen)
{
    unsigned a, b;
    int n = 0;
    if (!s) {
        *lo = *hi = 0;
        return 0;
    }
    if (sscanf(s, "%u-%u%n", &a, &b, &n) != 2 || s[n] || a < 1 || b > 65535 || a > b) {
        snprintf(err, errlen, "--kv-data-ports: \"%s\" is not LO-HI with 1 <= LO <= HI <= 65535",
                 s);
        return -EINVAL;
    }
    *lo = (uint16_t)a;
    *hi = (uint16_t)b;
    return 0;
}

void pd_kvx_metrics_init(struct pd_kvx_metrics *km, struct pd_metrics *m, enum pd_role role)
{
    memset(km, 0, sizeof(*km));
    km->hs_ok = pd_metrics_counter(m, "pdserve:kv_handshakes_total", NULL,
                                   "KV sessions authenticated.");
    for (int i = 0; i < PD_KVX_HSF_N; i++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "reason=\"%s\"", pd_kvx_hs_fail_name((unsigned)i));
        km->hs_fail[i] = pd_metrics_counter(m, "pdserve:kv_handshake_failures_total", labels,
                                            "KV handshakes refused, by reason.");
    }
    km->integrity = pd_metrics_counter(m, "pdserve:kv_integrity_failures_total", NULL,
                                       "Block tags that did not verify.");
    km->sessions = pd_metrics_gauge(m, "pdserve:kv_sessions", NULL, "Authenticated KV sessions.");
    if (role == PD_ROLE_P) {
        km->bytes_sent = pd_metrics_counter(m, "pdserve:kv_bytes_sent_total", NULL,
                                            "KV block bytes sent.");
        km->blocks_sent = pd_metrics_counter(m, "pdserve:kv_blocks_sent_total", NULL,
                                             "KV blocks sent.");
    }
}

void pd_kvx_metrics_scrape(struct pd_kvx_metrics *km, const struct pd_kvx *kvx)
{
    struct pd_kvx_stats s;
    pd_kvx_get_stats(kvx, &s);
    /* counters advance by what happened since the last scrape */
    pd_metric_add(km->hs_ok, (double)(s.handshakes_ok - km->last.handshakes_ok));
    for (int i = 0; i < PD_KVX_HSF_N; i++)
        pd_metric_add(km->hs_fail[i], (double)(s.hs_fail[i] - km->last.hs_fail[i]));
    pd_metric_add(km->integrity, (double)(s.integrity_failures - km->last.integrity_failures));
    pd_metric_add(km->bytes_sent, (double)(s.bytes_sent - km->last.bytes_sent));
    pd_metric_add(km->blocks_sent, (double)(s.blocks_sent - km->last.blocks_sent));
    pd_metric_set(km->sessions, (double)s.sessions);
    km->last = s;
}
