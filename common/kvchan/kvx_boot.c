/* common/kvchan/kvx, the KV port: pdserve's own TCP socket on --kv-ip:--kv-port.
 * Nothing unauthenticated reaches UCX: the handshake of common/kvchan/auth runs
 * here, and only inside the authenticated session do the peers exchange
 * their UCX worker addresses (sealed UCX_ADDR frames) and create endpoints
 * from them. The protocol is kvx_port.c's (no I/O); this file is its
 * sockets: listen and accept with caps (P), connect (D), read and write.
 * docs/internals/kvchan.md, "The KV port".
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
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void on_rd(evutil_socket_t fd, short what, void *arg);
static void on_wr(evutil_socket_t fd, short what, void *arg);

static int boot_events(struct pd_kvx_session *c)
{
    struct event_base *base = c->kvx->p.base;
    c->ev_rd = event_new(base, c->fd, EV_READ | EV_PERSIST, on_rd, c);
    c->ev_wr = event_new(base, c->fd, EV_WRITE, on_wr, c);
    c->b = calloc(1, sizeof *c->b);
    return c->ev_rd && c->ev_wr && c->b ? 0 : -ENOMEM;
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
            return w < 0 ? -errno : -EPIPE;
        b->out_off += (size_t)w;
    }
    if (b)
        b->out_off = b->out_len = 0;
    return 0;
}

/* ---- the port's callbacks (kvx_port.h); they never fail the session
 * themselves: an error goes back through the port to boot_read ---- */

static int cb_send(void *arg, const uint8_t *msg, size_t len)
{
    struct pd_kvx_session *c = arg;
    struct kvx_boot *b = c->b;
    if (!b || c->fd < 0 || len > sizeof b->out - b->out_len)
        return -ENOBUFS;
    memcpy(b->out + b->out_len, msg, len);
    b->out_len += len;
    return boot_flush(c);
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

static int cb_authenticated(void *arg, struct pd_auth_session *s)
{
    struct pd_kvx_session *c = arg;
    struct pd_kvx *k = c->kvx;
    c->s = s; /* ours now, freed with the session */
    snprintf(c->key_id, sizeof c->key_id, "%s", pd_auth_session_key_id(s));
    if (k->p.role == PD_ROLE_P && count_authenticated(k) >= k->max_sessions)
        return -EBUSY;
    c->state = C_ADDR;
    return 0;
}

/* Our endpoint to the peer's worker address. */
static int cb_endpoint(void *arg, const uint8_t *a, size_t len, uint64_t token, char *err,
                       size_t errlen)
{
    struct pd_kvx_session *c = arg;
    void *addr = malloc(len); /* UCX reads it as it likes: give it aligned memory */
    if (!addr)
        return pd_errf(err, errlen, -ENOMEM, "out of memory");
    memcpy(addr, a, len);
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
    c->tx_token = token;
    c->rx_token = c->b->port.rx_token;
    return 0;
}

static void cb_up(void *arg) { kvx_session_up(arg); }

void kvx_boot_env(struct pd_kvx *k)
{
    k->port_env = (struct kvx_port_env){
        .keyring = k->p.keyring, .key_id = k->p.key_id, .replay = k->replay,
        .layout = &k->layout, .waddr = k->waddr, .waddr_len = k->waddr_len, .now_ms = now_ms,
        .send = cb_send, .authenticated = cb_authenticated, .endpoint = cb_endpoint,
        .up = cb_up};
}

/* ---- reading ---- */

static void boot_read(struct pd_kvx_session *c)
{
    struct kvx_port_err e;
    uint8_t junk[64];
    while (c->state < C_CLOSING && c->fd >= 0) {
        if (c->state == C_UP) {
            /* nothing more is said here: EOF or a byte ends the session */
            ssize_t r = recv(c->fd, junk, sizeof junk, 0);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return;
            kvx_session_fail(c, r > 0 ? PD_R_PROTOCOL : PD_R_TRANSFER,
                          r > 0 ? "bytes on the KV port after the session began"
                                : "the peer closed the KV connection",
                          -1);
            return;
        }
        size_t n;
        uint8_t *room = kvx_port_room(&c->b->port, &n);
        if (!room)
            return;
        ssize_t r = recv(c->fd, room, n, 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            kvx_port_eof(&c->b->port, &e);
            kvx_session_fail(c, e.reason, e.msg, e.hsf);
            return;
        }
        c->b->busy = 1;
        int rc = kvx_port_arrived(&c->b->port, (size_t)r, &e);
        c->b->busy = 0;
        if (rc < 0) {
            kvx_session_fail(c, e.reason, e.msg, e.hsf);
            kvx_session_boot_free(c);
            return;
        }
        if (c->state >= C_CLOSING) { /* UCX called the error handler meanwhile */
            kvx_session_boot_free(c);
            return;
        }
        if (c->state == C_UP && c->b->out_len == 0)
            kvx_session_boot_free(c); /* the exchange is over: keep the socket for its end only */
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
    kvx_session_put(c);
    kick(k);
}

static void connected(struct pd_kvx_session *c)
{
    struct pd_kvx *k = c->kvx;
    struct kvx_port_err e;
    c->connecting = 0;
    if (event_add(c->ev_rd, NULL) < 0) {
        kvx_session_fail(c, PD_R_INTERNAL, "libevent", -1);
        return;
    }
    c->b->busy = 1;
    int rc = kvx_port_init(&c->b->port, PD_ROLE_D, &k->port_env, c, &e);
    c->b->busy = 0;
    if (rc < 0)
        kvx_session_fail(c, e.reason, e.msg, e.hsf);
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
            kvx_session_fail(c, PD_R_TRANSFER, strerror(e), -1);
        } else {
            connected(c);
        }
    } else if (c->state < C_CLOSING && boot_flush(c) < 0) {
        kvx_session_fail(c, PD_R_TRANSFER, "send failed", c->state < C_UP ? PD_KVX_HSF_OTHER : -1);
    } else if (c->state == C_UP && c->b && c->b->out_len == 0) {
        kvx_session_boot_free(c);
    }
    kvx_session_put(c);
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

static unsigned pending_from(struct pd_kvx *k, const char *ip)
{
    unsigned n = 0;
    for (struct dl *i = k->conns.next; i != &k->conns; i = i->next) {
        struct pd_kvx_session *c = DL_ENTRY(i, struct pd_kvx_session, node);
        n += c->state == C_HS && (!ip || !strcmp(c->src_ip, ip));
    }
    return n;
}

/* Make room for one more unauthenticated connection from ip: at a cap, the
 * oldest (conns is in creation order) of the source holding the most. */
static void admit(struct pd_kvx *k, const char *ip)
{
    const char *victim_ip = NULL;
    if (pending_from(k, ip) >= k->max_pending_src) {
        victim_ip = ip;
    } else if (pending_from(k, NULL) >= k->max_pending) {
        unsigned best = 0;
        for (struct dl *i = k->conns.next; i != &k->conns; i = i->next) {
            struct pd_kvx_session *c = DL_ENTRY(i, struct pd_kvx_session, node);
            unsigned n = c->state == C_HS ? pending_from(k, c->src_ip) : 0;
            if (n > best) {
                best = n;
                victim_ip = c->src_ip;
            }
        }
    }
    if (!victim_ip)
        return;
    for (struct dl *i = k->conns.next; i != &k->conns; i = i->next) {
        struct pd_kvx_session *c = DL_ENTRY(i, struct pd_kvx_session, node);
        if (c->state == C_HS && !strcmp(c->src_ip, victim_ip)) {
            kvx_session_fail(c, PD_R_OVERLOADED,
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
                int why = errno;
                struct evq *e = kvx_ev_new(k, PD_KVX_EV_WARNING, NULL);
                if (e)
                    snprintf(e->detail, sizeof e->detail,
                             "accept: %s; pausing the KV port for 100 ms", strerror(why));
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
        struct pd_kvx_session *c = kvx_session_new(k);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        snprintf(c->addr, sizeof c->addr, "%s", addr);
        snprintf(c->src_ip, sizeof c->src_ip, "%s", ip);
        set_nodelay(fd);
        struct kvx_port_err e;
        if (boot_events(c) < 0 || event_add(c->ev_rd, NULL) < 0)
            kvx_session_fail(c, PD_R_INTERNAL, "out of memory", PD_KVX_HSF_OTHER);
        else if (kvx_port_init(&c->b->port, PD_ROLE_P, &k->port_env, c, &e) < 0)
            kvx_session_fail(c, e.reason, e.msg, e.hsf);
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
    kvx_socket_close(&k->lfd, &k->ev_listen, &k->ev_listen_again);
}
