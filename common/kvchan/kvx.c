/* common/kvchan/kvx: the KV channel's UCX transport. See kvx.h for the API
 * and docs/internals/kvchan.md for threads, lifetimes and the block rule.
 *
 * This file, the core: delivering events, the control active-message
 * handler, the loop (progress/arm, tick), the listener, and the constructor
 * / destructor, which picks the role's table (decoded's side: kvx_recv.c;
 * prefilld's: kvx_send.c). Below them all: kvx_session.c (sessions, small
 * sends), kvx_boot.c (the KV port), kvx_crypto.c (the crypto threads).
 */
#include "kvx.h"

#include "auth.h"
#include "errf.h"
#include "kvx_internal.h"
#include "log.h"
#include "pd_config.h"

#if PD_HAVE_CUDA
#include "cuda_util.h"
#endif

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


/* ---- events (queued; delivered from the loop, outside UCX progress) ---- */

/* After delivery (or at shutdown): whatever the event owned. */
static void ev_done(struct pd_kvx *k, struct evq *e)
{
    k->role->ev_release(e);
    free(e->plain);
    if (e->c)
        kvx_session_put(e->c);
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
        ev_done(k, e);
        n++;
    }
    return n;
}

static void ep_close_cb(void *request, ucs_status_t status, void *user_data)
{
    (void)status;
    struct pd_kvx_session *c = user_data;
    c->state = C_CLOSED;
    ucp_request_free(request);
    kvx_session_put(c);
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
            kvx_session_put(c);
            continue;
        }
        ucp_request_param_t prm = kvx_cb_param(ep_close_cb, c, UCP_EP_CLOSE_FLAG_FORCE);
        ucs_status_ptr_t sp = ucp_ep_close_nbx(c->ep, &prm);
        if (sp == NULL || UCS_PTR_IS_ERR(sp)) {
            c->state = C_CLOSED;
            kvx_session_put(c);
        }
    }
    return n;
}

/* ---- active-message handlers (inside UCX progress) ---- */

static ucs_status_t am_ctl(void *arg, const void *header, size_t header_length, void *data,
                           size_t length, const ucp_am_recv_param_t *param)
{
    (void)header;
    (void)header_length;
    struct pd_kvx *k = arg;
    struct pd_kvx_session *c = kvx_session_find(k, &header, &header_length);
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
        kvx_session_fail(c, f.u.error.reason, f.u.error.detail, -1);
        break;
    default:
        k->role->on_ctl(c, &f, &plain);
    }
    free(plain);
    return UCS_OK;
}


/* Data messages are the receiver's (D); to P, one is the peer breaking the
 * protocol, dropped like any message that is not ours. */
static ucs_status_t am_data(void *arg, const void *header, size_t header_length, void *data,
                           size_t length, const ucp_am_recv_param_t *param)
{
    struct pd_kvx *k = arg;
    if (k->role->on_data)
        return k->role->on_data(arg, header, header_length, data, length, param);
    if (kvx_gate(k, kvx_session_find(k, &header, &header_length)))
        k->st.protocol_errors++;
    return UCS_OK;
}

/* ---- the loop ---- */

static void crypto_done(struct pd_kvx *k)
{
    struct pd_kvx_job *j = pd_kvx_crypto_take(k->crypto);
    while (j) {
        struct pd_kvx_job *nx = j->next;
        k->crypto_jobs--;
        k->role->job_done(k, j);
        j = nx;
    }
    if (k->role->pump)
        k->role->pump(k);
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
            kvx_session_fail(c, PD_R_TIMEOUT, "no handshake before the deadline", PD_KVX_HSF_TIMEOUT);
        } else if (c->state == C_UP && now - c->last_rx_ms > k->lease_ms) {
            kvx_session_fail(c, PD_R_TIMEOUT, "lease expired", -1);
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
            k->role->tick_session(c, now);
        }
    }
    if (k->role->tick)
        k->role->tick(k, now);
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

/* ---- stats, names ---- */

void pd_kvx_get_stats(const struct pd_kvx *k, struct pd_kvx_stats *out) { *out = k->st; }

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
        return pd_errf(err, errlen, kvx_ucs_errno(st), "kvx: UCX config %s=%s: %s", name, value,
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

/* (types past this header's last are a later UCX's) */
static const char *mem_type_name(int t)
{
    return t >= 0 && t < UCS_MEMORY_TYPE_LAST ? ucs_memory_type_names[t] : "unknown";
}

/* The memory types ctx moves (ucp_context_query), as a bit mask of
 * UCS_MEMORY_TYPE_*; host memory only when it does not say. */
static uint64_t ucx_memory_types(ucp_context_h ctx)
{
    ucp_context_attr_t a = {.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES};
    if (ucp_context_query(ctx, &a) != UCS_OK)
        return UCS_BIT(UCS_MEMORY_TYPE_HOST);
    return a.memory_types;
}

static int device_memory_is_host(void)
{
#if PD_HAVE_CUDA
    return pd_cuda_emulated();
#else
    return 0;
#endif
}

int pd_kvx_device_path(char *why, size_t len)
{
    unsigned maj = 0, min = 0, rel = 0;
    ucp_get_version(&maj, &min, &rel);
    if (device_memory_is_host()) {
        snprintf(why, len, "the emulated GPU's device memory is host memory, which UCX %u.%u.%u "
                 "moves", maj, min, rel);
        return 1;
    }
    ucp_config_t *cfg;
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK)
        return pd_errf(why, len, kvx_ucs_errno(st), "UCX config: %s", ucs_status_string(st));
    ucp_params_t pp = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_AM};
    ucp_context_h ctx;
    st = ucp_init(&pp, cfg, &ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK)
        return pd_errf(why, len, kvx_ucs_errno(st), "ucp_init: %s", ucs_status_string(st));
    const uint64_t types = ucx_memory_types(ctx);
    ucp_cleanup(ctx);
    if (types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) {
        snprintf(why, len, "UCX %u.%u.%u takes CUDA memory", maj, min, rel);
        return 1;
    }
    size_t used = (size_t)snprintf(why, len, "UCX %u.%u.%u does not take CUDA memory (it moves",
                                   maj, min, rel);
    for (int t = 0; t < UCS_MEMORY_TYPE_LAST && used < len; t++)
        if (types & UCS_BIT(t))
            used += (size_t)snprintf(why + used, len - used, " %s", mem_type_name(t));
    if (used < len)
        snprintf(why + used, len - used, ")");
    return 0;
}

/* The direct path: the device pool registered with UCX, which must move
 * its memory type (the emulator's is host memory). */
static int pool_map(struct pd_kvx *k, char *err, size_t errlen)
{
    const uint64_t types = ucx_memory_types(k->ctx);
    if (!(types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) && !device_memory_is_host())
        return pd_errf(err, errlen, -ENOTSUP, "kvx: this UCX does not take CUDA memory, so the "
                       "device pool cannot be the channel's (stage it: --no-kv-direct)");
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH,
        .address = k->p.pool,
        .length = (size_t)k->p.pool_blocks * k->block_bytes,
    };
    ucs_status_t st = ucp_mem_map(k->ctx, &mp, &k->pool_memh);
    if (st != UCS_OK) {
        k->pool_memh = NULL;
        return pd_errf(err, errlen, kvx_ucs_errno(st), "kvx: registering the device pool with "
                       "UCX (%zu bytes): %s", mp.length, ucs_status_string(st));
    }
    ucp_mem_attr_t ma = {.field_mask = UCP_MEM_ATTR_FIELD_MEM_TYPE};
    k->pool_mem_type = ucp_mem_query(k->pool_memh, &ma) == UCS_OK ? (int)ma.mem_type : -1;
    return 0;
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
        return pd_errf(err, errlen, kvx_ucs_errno(st), "kvx: UCX config: %s", ucs_status_string(st));
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
        return pd_errf(err, errlen, kvx_ucs_errno(st), "kvx: ucp_init: %s", ucs_status_string(st));
    if (k->p.pool_on_device && (rc = pool_map(k, err, errlen)) < 0)
        return rc;
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    st = ucp_worker_create(k->ctx, &wp, &k->worker);
    if (st != UCS_OK)
        return pd_errf(err, errlen, kvx_ucs_errno(st), "kvx: worker: %s", ucs_status_string(st));
    st = ucp_worker_get_efd(k->worker, &k->efd);
    if (st != UCS_OK)
        return pd_errf(err, errlen, kvx_ucs_errno(st), "kvx: worker fd: %s", ucs_status_string(st));
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
    static const ucp_am_recv_callback_t cbs[2] = {am_ctl, am_data};
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
            return pd_errf(err, errlen, kvx_ucs_errno(st), "kvx: AM handler: %s",
                           ucs_status_string(st));
    }
    /* what the peer's endpoint is made from, sent sealed on the KV port */
    ucp_address_t *wa_addr = NULL;
    st = ucp_worker_get_address(k->worker, &wa_addr, &k->waddr_len);
    if (st != UCS_OK)
        return pd_errf(err, errlen, kvx_ucs_errno(st), "kvx: worker address: %s",
                       ucs_status_string(st));
    k->waddr = wa_addr;
    if (k->waddr_len == 0 || k->waddr_len > PD_PROTO_MAX_UCX_ADDR)
        return pd_errf(err, errlen, -E2BIG,
                       "kvx: the UCX worker address is %zu bytes, over the protocol's %u "
                       "(narrow UCX_TLS)",
                       k->waddr_len, PD_PROTO_MAX_UCX_ADDR);
    return 0;
}

void pd_kvx_tags_line(const struct pd_kvx *k, char *buf, size_t n)
{
    unsigned t = pd_kvx_crypto_threads(k->crypto);
    if (k->p.no_integrity)
        snprintf(buf, n, "KV channel: block tags off (--no-kv-integrity: measurement only)");
    else if (k->p.gpu_tags && k->p.pool_on_device)
        snprintf(buf, n, "KV channel: block tags made and checked on the GPU (kernels/tag) in "
                 "its own pool, which UCX sends from and receives into (%s memory)",
                 mem_type_name(k->pool_mem_type));
    else if (k->p.gpu_tags && k->p.twin_pool && k->p.role == PD_ROLE_D)
        snprintf(buf, n, "KV channel: block tags checked on the GPU (kernels/tag) in its own "
                 "pool, into which each run is copied from page-locked host memory as it lands");
    else if (k->p.gpu_tags && k->p.twin_pool)
        snprintf(buf, n, "KV channel: block tags made on the GPU (kernels/tag) in its own pool, "
                 "from which each run is then copied down into page-locked host memory");
    else if (k->p.gpu_tags)
        snprintf(buf, n,
                 "KV channel: block tags made and checked on the GPU (kernels/tag), "
                 "which reads the blocks in page-locked host memory");
    else
        snprintf(buf, n, "KV channel: block tags on %u CPU thread%s", t, t == 1 ? "" : "s");
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
    if (p->pool_on_device && !p->gpu_tags && !p->no_integrity)
        return pd_errf(err, errlen, -EINVAL, "kvx: a pool in device memory needs its tags made "
                       "and checked on the GPU (the host reads no device block)");
    if (p->twin_pool && (!p->gpu_tags || p->no_integrity || p->pool_on_device ||
                         !p->twin_pool_blocks))
        return pd_errf(err, errlen, -EINVAL, "kvx: a twin pool goes beside a staged pool whose "
                       "tags the GPU makes and checks");
    if (pd_keyring_init() < 0)
        return pd_errf(err, errlen, -EIO, "kvx: libsodium did not initialise");
    struct pd_kvx *k = calloc(1, sizeof *k);
    if (!k)
        return pd_errf(err, errlen, -ENOMEM, "kvx: out of memory");
    k->p = *p;
    k->role = p->role == PD_ROLE_D ? &kvx_role_d : &kvx_role_p;
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
    if (p->gpu_tags && (rc = pd_kvx_crypto_gpu(k->crypto, p->pool,
                                               (size_t)p->pool_blocks * k->block_bytes,
                                               p->pool_on_device)) < 0) {
        pd_errf(err, errlen, rc, "kvx: block tags on the GPU: the device cannot read the pool: %s",
                rc == -ENOTSUP ? "this build has no CUDA" : strerror(-rc));
        goto fail;
    }
    if (p->twin_pool)
        pd_kvx_crypto_gpu_twins(k->crypto, p->twin_pool,
                                (size_t)p->twin_pool_blocks * k->block_bytes);
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

/* pd_kvx_free's first step: queued frames (a last ACK, an ABORT) go out,
 * for a bounded time; then every endpoint is closed (force) and UCX
 * progressed until it is done with them: receives into the pool fail and
 * complete here. */
static void drain(struct pd_kvx *k)
{
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
            kvx_session_fail(c, PD_R_SHUTDOWN, "shutting down", -1);
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
}

struct pd_kvx *pd_kvx_free(struct pd_kvx *k)
{
    if (!k)
        return NULL;
    k->shutting_down = 1;
    kvx_event_free(&k->ev_tick);
    kvx_boot_unlisten(k);
    drain(k);
    pd_kvx_crypto_free(k->crypto);
    k->crypto = NULL;
    /* events are not delivered now; free what they own */
    while (k->evq_head) {
        struct evq *e = k->evq_head;
        k->evq_head = e->next;
        ev_done(k, e);
    }
    k->evq_tail = NULL;
    k->role->free_all(k);
    while (!dl_empty(&k->conns)) {
        struct pd_kvx_session *c = DL_ENTRY(k->conns.next, struct pd_kvx_session, node);
        c->refs = 1;
        kvx_session_put(c);
    }
    for (unsigned i = 0; i < k->n_peers; i++)
        free(k->peers[i]);
    kvx_event_free(&k->ev_efd);
    kvx_event_free(&k->ev_crypto);
    kvx_event_free(&k->ev_kick);
    kvx_event_free(&k->ev_retry);
    if (k->waddr)
        ucp_worker_release_address(k->worker, k->waddr);
    if (k->worker)
        ucp_worker_destroy(k->worker);
    if (k->pool_memh)
        ucp_mem_unmap(k->ctx, k->pool_memh);
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
