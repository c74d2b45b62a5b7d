/* common/kvx, the KV port: pdserve's own TCP socket on --kv-ip:--kv-port.
 * Nothing unauthenticated reaches UCX: the handshake of common/auth runs
 * here, and only inside the authenticated session do the peers exchange
 * their UCX worker addresses (sealed UCX_ADDR frames) and create endpoints
 * from them. docs/internals/kvx.md, "The KV port".
 *
 *   D -> P  M1            P -> D  M2
 *   D -> P  CONFIRM       P -> D  CONFIRM, UCX_ADDR(P's address, P's token)
 *   D: endpoint to P;     D -> P  UCX_ADDR(D's address, D's token)
 *   P: endpoint to D;     P -> D  READY                       -> both C_UP
 *
 * The connection then stays open, silent, for the session's life: its end
 * (EOF, reset) ends the session at once; a byte on it is a protocol error.
 *
 * Caps (P): at most max_pending connections in C_HS, at most
 * max_pending_src of them from one source address. A new connection is
 * always taken; when a cap is reached the oldest unauthenticated connection
 * of the source that holds the most (its own source first) is closed, so a
 * flood evicts itself while a real peer's handshake, which takes a round
 * trip or two, completes. Authenticated sessions are capped by max_sessions.
 */
#include "errf.h"
#include "kvx_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void on_rd(evutil_socket_t fd, short what, void *arg);
static void on_wr(evutil_socket_t fd, short what, void *arg);

void kvx_boot_close(struct pd_kvx_session *c)
{
    if (c->ev_rd)
        event_free(c->ev_rd);
    if (c->ev_wr)
        event_free(c->ev_wr);
    c->ev_rd = c->ev_wr = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->b) {
        sodium_memzero(c->b, sizeof *c->b);
        free(c->b);
        c->b = NULL;
    }
}

static int boot_events(struct pd_kvx_session *c)
{
    struct event_base *base = c->kvx->p.base;
    c->ev_rd = event_new(base, c->fd, EV_READ | EV_PERSIST, on_rd, c);
    c->ev_wr = event_new(base, c->fd, EV_WRITE, on_wr, c);
    c->b = calloc(1, sizeof *c->b);
    return c->ev_rd && c->ev_wr && c->b ? 0 : -ENOMEM;
}

static void boot_fail(struct pd_kvx_session *c, int reason, const char *detail, int hsf)
{
    kvx_conn_fail(c, reason, detail, hsf);
}

/* Write what is queued; the rest when the socket takes it. */
static int boot_flush(struct pd_kvx_session *c)
{
    struct kvx_boot *b = c->b;
    while (b && b->out_off < b->out_len) {
        ssize_t w = send(c->fd, b->out + b->out_off, b->out_len - b->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            event_add(c->ev_wr, NULL);
            return 0;
        }
        if (w <= 0)
            return -errno;
        b->out_off += (size_t)w;
    }
    if (b)
        b->out_off = b->out_len = 0;
    return 0;
}

static int boot_send(struct pd_kvx_session *c, const uint8_t *msg, size_t len)
{
    struct kvx_boot *b = c->b;
    if (!b || len > sizeof b->out - b->out_len)
        return -ENOBUFS;
    memcpy(b->out + b->out_len, msg, len);
    b->out_len += len;
    return boot_flush(c);
}

static int boot_send_frame(struct pd_kvx_session *c, const struct pd_frame *f)
{
    uint8_t buf[KVX_BOOT_BUF];
    size_t len = 0;
    char err[160];
    int rc = pd_auth_seal_frame(c->s, f, buf, sizeof buf, &len, err, sizeof err);
    if (rc == 0)
        rc = boot_send(c, buf, len);
    sodium_memzero(buf, len);
    return rc;
}

static int send_addr(struct pd_kvx_session *c)
{
    struct pd_frame f = {.type = PD_FT_UCX_ADDR};
    f.u.ucx_addr.token = c->rx_token;
    f.u.ucx_addr.len = (uint32_t)c->kvx->waddr_len;
    f.u.ucx_addr.addr = c->kvx->waddr;
    return boot_send_frame(c, &f);
}

/* Our endpoint to the peer's worker address. */
static int ep_to(struct pd_kvx_session *c, const struct pd_ucx_addr *a, char *err, size_t errlen)
{
    void *addr = malloc(a->len); /* UCX reads it as it likes: give it aligned memory */
    if (!addr)
        return pd_errf(err, errlen, -ENOMEM, "out of memory");
    memcpy(addr, a->addr, a->len);
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .address = addr,
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = kvx_ep_err_cb, .arg = c},
    };
    ucs_status_t st = ucp_ep_create(c->kvx->worker, &ep, &c->ep);
    free(addr);
    if (st != UCS_OK) {
        c->ep = NULL;
        return pd_errf(err, errlen, -EIO, "UCX endpoint to the peer's address: %s",
                       ucs_status_string(st));
    }
    c->tx_token = a->token;
    return 0;
}

static unsigned count_authenticated(struct pd_kvx *k)
{
    unsigned n = 0;
    for (struct dl *i = k->conns.next; i != &k->conns; i = i->next) {
        int st = DL_ENTRY(i, struct pd_kvx_session, node)->state;
        n += st == C_ADDR || st == C_UP;
    }
    return n;
}

/* The handshake finished on our side: the session's keys exist. */
static void hs_done(struct pd_kvx_session *c)
{
    struct pd_kvx *k = c->kvx;
    if (pd_auth_hs_take_session(c->hs, &c->s) < 0) {
        boot_fail(c, PD_R_INTERNAL, "no session", PD_KVX_HSF_OTHER);
        return;
    }
    snprintf(c->key_id, sizeof c->key_id, "%s", pd_auth_hs_key_id(c->hs));
    c->hs = pd_auth_hs_free(c->hs);
    if (k->p.role == PD_ROLE_P && count_authenticated(k) >= k->max_sessions) {
        boot_fail(c, PD_R_OVERLOADED, "too many sessions", PD_KVX_HSF_CAP);
        return;
    }
    c->state = C_ADDR;
    do
        randombytes_buf(&c->rx_token, sizeof c->rx_token);
    while (c->rx_token == 0);
    /* P speaks first: D makes its endpoint from P's address */
    if (k->p.role == PD_ROLE_P && send_addr(c) < 0)
        boot_fail(c, PD_R_TRANSFER, "send failed", PD_KVX_HSF_OTHER);
}

static void on_hs_msg(struct pd_kvx_session *c, const uint8_t *msg, size_t len)
{
    struct pd_kvx *k = c->kvx;
    uint8_t out[PD_AUTH_MSG_MAX];
    size_t out_len = 0;
    char err[256];
    int rc;
    if (k->p.role == PD_ROLE_P && !c->hs) {
        struct pd_auth_params ap = {.keyring = k->p.keyring, .replay = k->replay,
                                    .layout = &k->layout, .now_ms = now_ms()};
        rc = pd_auth_hs_respond(&ap, msg, len, &c->hs, out, sizeof out, &out_len, err,
                                sizeof err);
    } else if (c->hs) {
        rc = pd_auth_hs_step(c->hs, msg, len, out, sizeof out, &out_len, err, sizeof err);
    } else {
        rc = pd_errf(err, sizeof err, -EBADMSG, "unexpected handshake message");
    }
    if (rc < 0) {
        boot_fail(c, rc == -EPROTO ? PD_R_LAYOUT : PD_R_AUTH, err, kvx_hsf_of(rc));
        return;
    }
    if (out_len > 0 && boot_send(c, out, out_len) < 0) {
        boot_fail(c, PD_R_TRANSFER, "send failed", PD_KVX_HSF_OTHER);
        return;
    }
    if (rc == PD_AUTH_HS_DONE)
        hs_done(c);
}

static void on_sealed(struct pd_kvx_session *c, const uint8_t *wire, size_t len)
{
    struct pd_kvx *k = c->kvx;
    uint8_t plain[KVX_BOOT_BUF];
    struct pd_frame f;
    char err[256];
    int rc = pd_auth_open_frame(c->s, wire, len, plain, sizeof plain, &f, err, sizeof err);
    if (rc < 0) {
        boot_fail(c, PD_R_AUTH, err, PD_KVX_HSF_GARBAGE);
        return;
    }
    if (f.type == PD_FT_UCX_ADDR && !c->ep) {
        if (ep_to(c, &f.u.ucx_addr, err, sizeof err) < 0) {
            boot_fail(c, PD_R_TRANSFER, err, PD_KVX_HSF_OTHER);
            return;
        }
        if (k->p.role == PD_ROLE_D) {
            if (send_addr(c) < 0)
                boot_fail(c, PD_R_TRANSFER, "send failed", PD_KVX_HSF_OTHER);
            return; /* READY follows */
        }
        struct pd_frame r = {.type = PD_FT_READY};
        r.u.ready.token = c->tx_token;
        if (boot_send_frame(c, &r) < 0) {
            boot_fail(c, PD_R_TRANSFER, "send failed", PD_KVX_HSF_OTHER);
            return;
        }
        kvx_session_up(c);
    } else if (f.type == PD_FT_READY && k->p.role == PD_ROLE_D && c->ep &&
               f.u.ready.token == c->rx_token) {
        kvx_session_up(c);
    } else {
        boot_fail(c, PD_R_PROTOCOL, "unexpected frame on the KV port", PD_KVX_HSF_GARBAGE);
    }
}

/* What a frame with header h may be now; its whole length on the wire. */
static int frame_allowed(struct pd_kvx_session *c, const uint8_t *hdr, size_t *wire, char *err,
                         size_t errlen)
{
    struct pd_frame_hdr h;
    int rc = pd_frame_hdr_decode(hdr, PD_FRAME_HDR_LEN, &h, err, errlen);
    if (rc < 0)
        return rc;
    int sealed = pd_frame_type_sealed(h.type);
    if (c->state == C_HS && sealed)
        return pd_errf(err, errlen, -EBADMSG, "%s before the handshake finished",
                       pd_frame_type_name(h.type));
    if (c->state == C_ADDR && h.type != PD_FT_UCX_ADDR && h.type != PD_FT_READY)
        return pd_errf(err, errlen, -EBADMSG, "%s on the KV port", pd_frame_type_name(h.type));
    *wire = pd_frame_wire_len(&h);
    if (*wire > KVX_BOOT_BUF)
        return pd_errf(err, errlen, -E2BIG, "%s of %zu bytes", pd_frame_type_name(h.type), *wire);
    return 0;
}

/* Read what the socket has, one frame at a time (exactly its bytes, so a
 * frame behind it stays in the kernel until this one is handled). */
static void boot_read(struct pd_kvx_session *c)
{
    char err[256];
    uint8_t junk[64];
    while (c->state < C_CLOSING && c->fd >= 0) {
        if (c->state == C_UP) {
            /* nothing more is said here: EOF or a byte ends the session */
            ssize_t r = recv(c->fd, junk, sizeof junk, 0);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return;
            kvx_conn_fail(c, r > 0 ? PD_R_PROTOCOL : PD_R_TRANSFER,
                          r > 0 ? "bytes on the KV port after the session began"
                                : "the peer closed the KV connection",
                          -1);
            return;
        }
        struct kvx_boot *b = c->b;
        size_t want = PD_FRAME_HDR_LEN, wire = 0;
        if (b->in_len > 0 && b->in_len < PD_FRAME_HDR_LEN &&
            memcmp(b->in, PD_FRAME_MAGIC, b->in_len < 4 ? b->in_len : 4) != 0) {
            /* not ours from the first byte on: no need to wait for a header */
            boot_fail(c, PD_R_PROTOCOL, "not a pdserve KV frame (bad magic)", PD_KVX_HSF_GARBAGE);
            return;
        }
        if (b->in_len >= PD_FRAME_HDR_LEN) {
            int rc = frame_allowed(c, b->in, &wire, err, sizeof err);
            if (rc < 0) {
                boot_fail(c, rc == -EPROTONOSUPPORT ? PD_R_VERSION : PD_R_PROTOCOL, err,
                          PD_KVX_HSF_GARBAGE);
                return;
            }
            want = wire;
        }
        if (b->in_len < want) {
            ssize_t r = recv(c->fd, b->in + b->in_len, want - b->in_len, 0);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                /* D: P closes during our handshake when it refuses our key,
                 * model or layout, or at a cap; it cannot say so unauthenticated */
                int hsf = c->peer ? PD_KVX_HSF_REFUSED
                          : b->in_len ? PD_KVX_HSF_GARBAGE /* a frame cut short */
                                      : PD_KVX_HSF_OTHER;
                boot_fail(c, PD_R_TRANSFER,
                          c->peer ? "the peer closed the connection during the handshake (a "
                                    "key, model or block layout it refuses, or a cap on its "
                                    "side: its log says which)"
                          : b->in_len ? "closed in the middle of a frame"
                                      : "closed during the handshake",
                          hsf);
                return;
            }
            b->in_len += (size_t)r;
            continue;
        }
        /* a whole frame */
        b->in_len = 0;
        if (pd_frame_type_sealed(b->in[6]))
            on_sealed(c, b->in, wire);
        else
            on_hs_msg(c, b->in, wire);
        if (c->state == C_UP) {
            /* the exchange is over: keep the socket for its end only */
            if (boot_flush(c) < 0) {
                kvx_conn_fail(c, PD_R_TRANSFER, "send failed", -1);
                return;
            }
            if (c->b && c->b->out_len == 0) {
                sodium_memzero(c->b, sizeof *c->b);
                free(c->b);
                c->b = NULL;
            }
        }
    }
}

static void on_rd(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pd_kvx_session *c = arg;
    struct pd_kvx *k = c->kvx;
    c->refs++;
    boot_read(c);
    kvx_conn_put(c);
    kick(k);
}

static void connected(struct pd_kvx_session *c)
{
    struct pd_kvx *k = c->kvx;
    c->connecting = 0;
    if (event_add(c->ev_rd, NULL) < 0) {
        boot_fail(c, PD_R_INTERNAL, "libevent", -1);
        return;
    }
    uint8_t m1[PD_AUTH_MSG_MAX];
    size_t len = 0;
    char err[256];
    struct pd_auth_params ap = {.keyring = k->p.keyring, .key_id = k->p.key_id,
                                .layout = &k->layout};
    int rc = pd_auth_hs_initiate(&ap, &c->hs, m1, sizeof m1, &len, err, sizeof err);
    if (rc < 0 || boot_send(c, m1, len) < 0)
        boot_fail(c, PD_R_AUTH, rc < 0 ? err : "send failed", kvx_hsf_of(rc));
}

static void on_wr(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct pd_kvx_session *c = arg;
    struct pd_kvx *k = c->kvx;
    c->refs++;
    if (c->connecting) {
        int e = 0;
        socklen_t el = sizeof e;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0)
            e = errno;
        if (e) {
            /* nobody listening is no handshake failure: the backoff handles it */
            pd_log(PD_LOG_DEBUG, "kvx: connect %s: %s", c->addr, strerror(e));
            kvx_conn_fail(c, PD_R_TRANSFER, strerror(e), -1);
        } else {
            connected(c);
        }
    } else if (c->state < C_CLOSING && boot_flush(c) < 0) {
        kvx_conn_fail(c, PD_R_TRANSFER, "send failed", c->state < C_UP ? PD_KVX_HSF_OTHER : -1);
    } else if (c->state == C_UP && c->b && c->b->out_len == 0) {
        sodium_memzero(c->b, sizeof *c->b);
        free(c->b);
        c->b = NULL;
    }
    kvx_conn_put(c);
    kick(k);
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ---- D ---- */

int kvx_boot_connect(struct pd_kvx_session *c, const struct sockaddr *sa, socklen_t salen)
{
    struct pd_kvx *k = c->kvx;
    c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -errno;
    if (boot_events(c) < 0)
        return -ENOMEM;
    set_nodelay(c->fd);
    struct sockaddr_in local = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, k->kv_ip, &local.sin_addr) == 1 &&
        local.sin_addr.s_addr != htonl(INADDR_ANY) &&
        bind(c->fd, (struct sockaddr *)&local, sizeof local) < 0)
        return -errno;
    c->connecting = 1;
    if (connect(c->fd, sa, salen) < 0 && errno != EINPROGRESS)
        return -errno;
    return event_add(c->ev_wr, NULL) < 0 ? -ENOMEM : 0;
}

/* ---- P ---- */

/* Make room for one more unauthenticated connection from ip. */
static void admit(struct pd_kvx *k, const char *ip)
{
    struct pd_kvx_session *hs[64];
    unsigned n = 0;
    for (struct dl *i = k->conns.next; i != &k->conns && n < 64; i = i->next) {
        struct pd_kvx_session *c = DL_ENTRY(i, struct pd_kvx_session, node);
        if (c->state == C_HS)
            hs[n++] = c; /* oldest first: conns is in creation order */
    }
    unsigned same = 0;
    for (unsigned i = 0; i < n; i++)
        same += !strcmp(hs[i]->src_ip, ip);
    const char *victim_ip = NULL;
    if (same >= k->max_pending_src) {
        victim_ip = ip;
    } else if (n >= k->max_pending) {
        unsigned best = 0;
        for (unsigned i = 0; i < n; i++) {
            unsigned cnt = 0;
            for (unsigned j = 0; j < n; j++)
                cnt += !strcmp(hs[j]->src_ip, hs[i]->src_ip);
            if (cnt > best) {
                best = cnt;
                victim_ip = hs[i]->src_ip;
            }
        }
    }
    if (!victim_ip)
        return;
    for (unsigned i = 0; i < n; i++) {
        if (!strcmp(hs[i]->src_ip, victim_ip)) {
            kvx_conn_fail(hs[i], PD_R_OVERLOADED,
                          "too many unauthenticated connections (the oldest closed)",
                          PD_KVX_HSF_CAP);
            return;
        }
    }
}

static void on_listen_again(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pd_kvx *k = arg;
    if (k->ev_listen)
        event_add(k->ev_listen, NULL);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    struct pd_kvx *k = arg;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors: the backlog keeps them; stop listening for a
                 * moment instead of spinning on a socket that stays readable */
                pd_log_ratelimited(&k->rl, PD_LOG_WARN,
                                   "kv channel: accept: %s; pausing the KV port for 100 ms",
                                   strerror(errno));
                event_del(k->ev_listen);
                struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
                event_add(k->ev_listen_again, &tv);
            }
            break;
        }
        char ip[INET6_ADDRSTRLEN] = "?";
        unsigned port = 0;
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
            port = ntohs(sin->sin_port);
        }
        char addr[128];
        snprintf(addr, sizeof addr, "%s:%u", ip, port);
        if (k->shutting_down) {
            close(fd);
            continue;
        }
        admit(k, ip);
        struct pd_kvx_session *c = kvx_conn_new(k);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        snprintf(c->addr, sizeof c->addr, "%s", addr);
        snprintf(c->src_ip, sizeof c->src_ip, "%s", ip);
        set_nodelay(fd);
        if (boot_events(c) < 0 || event_add(c->ev_rd, NULL) < 0)
            kvx_conn_fail(c, PD_R_INTERNAL, "out of memory", PD_KVX_HSF_OTHER);
    }
    kick(k);
}

int kvx_boot_listen(struct pd_kvx *k, char *err, size_t errlen)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(k->p.kv_port)};
    if (inet_pton(AF_INET, k->kv_ip, &sa.sin_addr) != 1)
        return pd_errf(err, errlen, -EINVAL, "kvx: --kv-ip %s is not an IPv4 address", k->kv_ip);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return pd_errf(err, errlen, -errno, "kvx: socket: %s", strerror(errno));
    /* a restarted prefilld gets its port back while old connections sit in
     * TIME_WAIT (Linux still refuses a second live listener) */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 128) < 0) {
        int e = errno;
        close(fd);
        return pd_errf(err, errlen, -e, "kvx: listen on %s:%u: %s", k->kv_ip, k->p.kv_port,
                       e == EADDRINUSE ? "address already in use" : strerror(e));
    }
    struct sockaddr_in got;
    socklen_t gl = sizeof got;
    k->port = getsockname(fd, (struct sockaddr *)&got, &gl) == 0 ? ntohs(got.sin_port)
                                                                  : k->p.kv_port;
    k->lfd = fd;
    k->ev_listen = event_new(k->p.base, fd, EV_READ | EV_PERSIST, on_accept, k);
    k->ev_listen_again = event_new(k->p.base, -1, 0, on_listen_again, k);
    if (!k->ev_listen || !k->ev_listen_again || event_add(k->ev_listen, NULL) < 0) {
        kvx_boot_unlisten(k);
        return pd_errf(err, errlen, -ENOMEM, "kvx: libevent events");
    }
    return 0;
}

void kvx_boot_unlisten(struct pd_kvx *k)
{
    if (k->ev_listen)
        event_free(k->ev_listen);
    if (k->ev_listen_again)
        event_free(k->ev_listen_again);
    k->ev_listen = k->ev_listen_again = NULL;
    if (k->lfd >= 0)
        close(k->lfd);
    k->lfd = -1;
}
