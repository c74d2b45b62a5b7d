/* common/kvchan/kvx: the KV port's protocol for one connection, without I/O. See
 * kvx_port.h. */
#include "kvx_port.h"

#include "errf.h"
#include "kvx.h"

#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The port is dead: e says why (fmt NULL: e->msg already does). */
static int fail(struct kvx_port *p, struct kvx_port_err *e, int reason, int hsf, int rc,
                const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int fail(struct kvx_port *p, struct kvx_port_err *e, int reason, int hsf, int rc,
                const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    if (!e->msg[0])
        snprintf(e->msg, sizeof e->msg, "refused (%d)", rc);
    e->reason = reason;
    e->hsf = hsf;
    p->state = KP_DEAD;
    return rc < 0 ? rc : -EPROTO;
}

/* The handshake-failure class of an auth error (kvx counts them by it). */
static int hsf_of(int rc)
{
    switch (rc) {
    case -ENOKEY: case -EKEYREJECTED: return PD_KVX_HSF_AUTH;
    case -EPROTO: return PD_KVX_HSF_LAYOUT;
    case -EALREADY: return PD_KVX_HSF_REPLAY;
    case -EBUSY: return PD_KVX_HSF_CAP;
    case -EBADMSG: case -EPROTONOSUPPORT: return PD_KVX_HSF_GARBAGE;
    default: return PD_KVX_HSF_OTHER;
    }
}

static int send_frame(struct kvx_port *p, const struct pd_frame *f)
{
    uint8_t buf[KVX_PORT_BUF];
    size_t len = 0;
    char err[160];
    int rc = pd_auth_seal_frame(p->s, f, buf, sizeof buf, &len, err, sizeof err);
    if (rc == 0)
        rc = p->env->send(p->arg, buf, len);
    sodium_memzero(buf, len);
    return rc;
}

static int send_addr(struct kvx_port *p)
{
    struct pd_frame f = {.type = PD_FT_UCX_ADDR};
    f.u.ucx_addr.token = p->rx_token;
    f.u.ucx_addr.len = (uint32_t)p->env->waddr_len;
    f.u.ucx_addr.addr = p->env->waddr;
    return send_frame(p, &f);
}

static struct pd_auth_params auth_params(const struct kvx_port *p)
{
    return (struct pd_auth_params){
        .keyring = p->env->keyring, .key_id = p->env->key_id, .replay = p->env->replay,
        .layout = p->env->layout, .now_ms = p->env->now_ms ? p->env->now_ms() : 0,
        .eph_sk = p->env->eph_sk, .nonce = p->env->nonce};
}

int kvx_port_init(struct kvx_port *p, enum pd_role role, const struct kvx_port_env *env,
                  void *arg, struct kvx_port_err *e)
{
    e->msg[0] = 0;
    memset(p, 0, sizeof *p);
    p->role = role;
    p->env = env;
    p->arg = arg;
    p->state = KP_HS;
    if (role != PD_ROLE_D)
        return 0;
    uint8_t m1[PD_AUTH_MSG_MAX];
    size_t len = 0;
    struct pd_auth_params ap = auth_params(p);
    int rc = pd_auth_hs_initiate(&ap, &p->hs, m1, sizeof m1, &len, e->msg, sizeof e->msg);
    if (rc < 0)
        return fail(p, e, PD_R_AUTH, hsf_of(rc), rc, NULL);
    if ((rc = env->send(arg, m1, len)) < 0)
        return fail(p, e, PD_R_TRANSFER, PD_KVX_HSF_OTHER, rc, "send failed");
    return 0;
}

void kvx_port_done(struct kvx_port *p)
{
    p->hs = pd_auth_hs_free(p->hs);
    p->s = NULL;
    sodium_memzero(p->in, sizeof p->in);
    p->in_len = 0;
}

static int hs_done(struct kvx_port *p, struct kvx_port_err *e)
{
    struct pd_auth_session *s = NULL;
    if (pd_auth_hs_take_session(p->hs, &s) < 0)
        return fail(p, e, PD_R_INTERNAL, PD_KVX_HSF_OTHER, -EINVAL, "no session");
    p->hs = pd_auth_hs_free(p->hs);
    int rc = p->env->authenticated(p->arg, s); /* s is the owner's now, whatever rc */
    if (rc < 0)
        return fail(p, e, PD_R_OVERLOADED, PD_KVX_HSF_CAP, rc, "too many sessions");
    p->s = s;
    p->state = KP_ADDR;
    p->rx_token = p->env->token;
    while (p->rx_token == 0)
        randombytes_buf(&p->rx_token, sizeof p->rx_token);
    /* P speaks first: D makes its endpoint from P's address */
    if (p->role == PD_ROLE_P && (rc = send_addr(p)) < 0)
        return fail(p, e, PD_R_TRANSFER, PD_KVX_HSF_OTHER, rc, "send failed");
    return 0;
}

static int on_hs_msg(struct kvx_port *p, const uint8_t *msg, size_t len, struct kvx_port_err *e)
{
    uint8_t out[PD_AUTH_MSG_MAX];
    size_t out_len = 0;
    int rc;
    if (p->role == PD_ROLE_P && !p->hs) {
        struct pd_auth_params ap = auth_params(p);
        rc = pd_auth_hs_respond(&ap, msg, len, &p->hs, out, sizeof out, &out_len, e->msg,
                                sizeof e->msg);
    } else if (p->hs) {
        rc = pd_auth_hs_step(p->hs, msg, len, out, sizeof out, &out_len, e->msg, sizeof e->msg);
    } else {
        rc = pd_errf(e->msg, sizeof e->msg, -EBADMSG, "unexpected handshake message");
    }
    if (rc < 0)
        return fail(p, e, rc == -EPROTO ? PD_R_LAYOUT : PD_R_AUTH, hsf_of(rc), rc, NULL);
    int src;
    if (out_len > 0 && (src = p->env->send(p->arg, out, out_len)) < 0)
        return fail(p, e, PD_R_TRANSFER, PD_KVX_HSF_OTHER, src, "send failed");
    return rc == PD_AUTH_HS_DONE ? hs_done(p, e) : 0;
}

static int on_sealed(struct kvx_port *p, const uint8_t *wire, size_t len, struct kvx_port_err *e)
{
    uint8_t plain[KVX_PORT_BUF];
    struct pd_frame f;
    int rc = pd_auth_open_frame(p->s, wire, len, plain, sizeof plain, &f, e->msg, sizeof e->msg);
    if (rc < 0) {
        sodium_memzero(plain, sizeof plain);
        return fail(p, e, PD_R_AUTH, PD_KVX_HSF_GARBAGE, rc, NULL);
    }
    if (f.type == PD_FT_UCX_ADDR && !p->have_ep) {
        rc = p->env->endpoint(p->arg, f.u.ucx_addr.addr, f.u.ucx_addr.len, f.u.ucx_addr.token,
                              e->msg, sizeof e->msg);
        uint64_t their_token = f.u.ucx_addr.token;
        sodium_memzero(plain, sizeof plain);
        if (rc < 0)
            return fail(p, e, PD_R_TRANSFER, PD_KVX_HSF_OTHER, rc, NULL);
        p->have_ep = 1;
        if (p->role == PD_ROLE_D) {
            if ((rc = send_addr(p)) < 0)
                return fail(p, e, PD_R_TRANSFER, PD_KVX_HSF_OTHER, rc, "send failed");
            return 0; /* READY follows */
        }
        struct pd_frame r = {.type = PD_FT_READY};
        r.u.ready.token = their_token;
        if ((rc = send_frame(p, &r)) < 0)
            return fail(p, e, PD_R_TRANSFER, PD_KVX_HSF_OTHER, rc, "send failed");
        p->state = KP_UP;
        p->env->up(p->arg);
        return 0;
    }
    int ok = f.type == PD_FT_READY && p->role == PD_ROLE_D && p->have_ep &&
             f.u.ready.token == p->rx_token;
    sodium_memzero(plain, sizeof plain);
    if (!ok)
        return fail(p, e, PD_R_PROTOCOL, PD_KVX_HSF_GARBAGE, -EBADMSG,
                    "unexpected %s on the KV port", pd_frame_type_name(f.type));
    p->state = KP_UP;
    p->env->up(p->arg);
    return 0;
}

/* The header in p->in: may such a frame come now, and how long is it. */
static int frame_allowed(struct kvx_port *p, size_t *wire, struct kvx_port_err *e)
{
    struct pd_frame_hdr h;
    int rc = pd_frame_hdr_decode(p->in, PD_FRAME_HDR_LEN, &h, e->msg, sizeof e->msg);
    if (rc < 0)
        return fail(p, e, rc == -EPROTONOSUPPORT ? PD_R_VERSION : PD_R_PROTOCOL,
                    PD_KVX_HSF_GARBAGE, rc, NULL);
    int sealed = pd_frame_type_sealed(h.type);
    if (p->state == KP_HS && sealed)
        return fail(p, e, PD_R_PROTOCOL, PD_KVX_HSF_GARBAGE, -EBADMSG,
                    "%s before the handshake finished", pd_frame_type_name(h.type));
    if (p->state == KP_ADDR && h.type != PD_FT_UCX_ADDR && h.type != PD_FT_READY)
        return fail(p, e, PD_R_PROTOCOL, PD_KVX_HSF_GARBAGE, -EBADMSG, "%s on the KV port",
                    pd_frame_type_name(h.type));
    *wire = pd_frame_wire_len(&h);
    if (*wire > sizeof p->in)
        return fail(p, e, PD_R_PROTOCOL, PD_KVX_HSF_GARBAGE, -E2BIG, "%s of %zu bytes",
                    pd_frame_type_name(h.type), *wire);
    return 0;
}

uint8_t *kvx_port_room(struct kvx_port *p, size_t *n)
{
    size_t want = p->want ? p->want : PD_FRAME_HDR_LEN;
    if (p->state >= KP_UP || p->in_len >= want) {
        *n = 0;
        return NULL;
    }
    *n = want - p->in_len;
    return p->in + p->in_len;
}

int kvx_port_arrived(struct kvx_port *p, size_t n, struct kvx_port_err *e)
{
    e->msg[0] = 0;
    if (p->state >= KP_UP)
        return fail(p, e, PD_R_PROTOCOL, -1, -EBADMSG, "bytes on the KV port after the "
                    "session began");
    size_t want = p->want ? p->want : PD_FRAME_HDR_LEN;
    if (n > want - p->in_len)
        return fail(p, e, PD_R_INTERNAL, PD_KVX_HSF_OTHER, -EINVAL, "read past the frame");
    p->in_len += n;
    if (!p->want) {
        /* not ours from the first byte on: no need to wait for a whole header */
        size_t m = p->in_len < 4 ? p->in_len : 4;
        if (memcmp(p->in, PD_FRAME_MAGIC, m) != 0)
            return fail(p, e, PD_R_PROTOCOL, PD_KVX_HSF_GARBAGE, -EBADMSG,
                        "not a pdserve KV frame (bad magic)");
        if (p->in_len < PD_FRAME_HDR_LEN)
            return 0;
        size_t wire = 0;
        int rc = frame_allowed(p, &wire, e);
        if (rc < 0)
            return rc;
        p->want = wire;
        if (p->in_len < wire)
            return 0;
    } else if (p->in_len < p->want) {
        return 0;
    }
    /* a whole frame */
    size_t wire = p->want;
    p->want = 0;
    p->in_len = 0;
    int rc = pd_frame_type_sealed(p->in[6]) ? on_sealed(p, p->in, wire, e)
                                            : on_hs_msg(p, p->in, wire, e);
    sodium_memzero(p->in, wire);
    return rc;
}

void kvx_port_eof(const struct kvx_port *p, struct kvx_port_err *e)
{
    e->reason = PD_R_TRANSFER;
    if (p->role == PD_ROLE_D) {
        /* P closes during our handshake when it refuses our key, model or
         * layout, or at a cap; it cannot say so unauthenticated */
        e->hsf = PD_KVX_HSF_REFUSED;
        snprintf(e->msg, sizeof e->msg,
                 "the peer closed the connection during the handshake (a key, model or block "
                 "layout it refuses, or a cap on its side: its log says which)");
    } else if (p->in_len) {
        e->hsf = PD_KVX_HSF_GARBAGE;
        snprintf(e->msg, sizeof e->msg, "closed in the middle of a frame");
    } else {
        e->hsf = PD_KVX_HSF_OTHER;
        snprintf(e->msg, sizeof e->msg, "closed during the handshake");
    }
}
