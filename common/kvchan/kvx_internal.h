/* common/kvchan/kvx internals, not for use outside kvx*.c: the crypto
 * worker pool (kvx_crypto.c) that tags and verifies KV blocks off the loop
 * thread, and the objects and helpers the rest share. Calls go down only:
 *
 *   kvx.c (core: loop, control handler, new/free)
 *     -> kvx_recv.c (D) | kvx_send.c (P): the role tables
 *       -> kvx_boot.c (the KV port) -> kvx_session.c -> kvx_port.c, kvx_crypto.c
 *
 * and up only through a role's table. Everything here runs on the loop
 * thread except the crypto workers. */
#ifndef PD_KVX_INTERNAL_H
#define PD_KVX_INTERNAL_H

#include "auth.h"
#include "kvx.h"
#include "kvx_port.h"
#include "log.h"

#include <event2/event.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <ucp/api/ucp.h>

/* Active-message ids: sealed control frames, block data. Every message's
 * UCX header starts with the receiver's session token (PD_KVX_TOKEN_LEN
 * bytes, little-endian), which is how the receiver finds the session; only
 * frames that then open under that session's keys touch it. (0x50 was the
 * handshake's, before the handshake moved to the KV port.) */
enum { PD_KVX_AM_CTL = 0x51, PD_KVX_AM_DATA = 0x52 };
#define PD_KVX_TOKEN_LEN 8

enum { PD_KVX_JOB_TAG = 1, PD_KVX_JOB_VERIFY = 2 };

/* One run of blocks to tag (sender) or verify (receiver). Filled by the loop,
 * read by one worker, which sets result; then back on the loop. The session
 * and the blocks must stay alive until the job comes back (kvx holds a
 * reference on both). */
struct pd_kvx_job {
    struct pd_kvx_job *next;
    int kind;
    const struct pd_auth_session *s;
    uint64_t request_id;
    uint32_t epoch;
    uint32_t first; /* logical index of blocks[0] in the request */
    uint32_t n;
    uint64_t transfer;
    size_t block_bytes;
    uint8_t *const *blocks; /* [n] block addresses */
    uint8_t *const *twins; /* GPU, with a device twin pool, or NULL: [n] device blocks. VERIFY
                            * copies each block up into its twin and checks the twin; TAG
                            * tags the twin and copies it down into the block */
    uint8_t *tags; /* [n * PD_BLOCK_TAG_LEN]: written (TAG) or checked (VERIFY) */
    int result; /* 0; VERIFY: -EKEYREJECTED; with GPU tags, either kind: a CUDA errno */
    uint32_t bad; /* VERIFY: first block (offset in the run) that failed */
    void *owner;
};

struct pd_kvx_crypto;
/* Threads wait for jobs; a finished job goes on the done list and the
 * returned notify fd (an eventfd) becomes readable. */
int pd_kvx_crypto_new(unsigned threads, struct pd_kvx_crypto **out, int *notify_fd);
void pd_kvx_crypto_submit(struct pd_kvx_crypto *c, struct pd_kvx_job *j);
/* The threads it runs (set by pd_kvx_crypto_new, fixed after). */
unsigned pd_kvx_crypto_threads(const struct pd_kvx_crypto *c);
/* All finished jobs, oldest first; clears the notify fd. */
struct pd_kvx_job *pd_kvx_crypto_take(struct pd_kvx_crypto *c);
/* Tags made and checked on the GPU from now on (CUDA builds): pool is the
 * page-locked memory (pd_cuda_host_register) or device memory every job's
 * blocks lie in, bytes long. A job then fails with the CUDA call's errno
 * where the device does (VERIFY's mismatch stays -EKEYREJECTED). -ENOTSUP
 * without CUDA, or the errno of finding the device's address of pool. */
int pd_kvx_crypto_gpu(struct pd_kvx_crypto *c, void *pool, size_t bytes, int on_device);
/* And a device pool of bytes at twins (after pd_kvx_crypto_gpu): a VERIFY
 * job with twins copies each block there on the device's stream, then checks
 * the copy; a TAG job with twins tags them and copies each down into its
 * block (either fails with the copy's errno where it fails). */
void pd_kvx_crypto_gpu_twins(struct pd_kvx_crypto *c, void *twins, size_t bytes);
/* Writes into the pool from the loop, which reads no block: n bytes from
 * host memory (an eager payload), with memcpy, or with the CUDA runtime when
 * the pool is device memory (on_device: the direct path, pd_kvx_params).
 * pd_kvx_pool_flip: one byte inverted in place (--test-tamper-every).
 * 0 or the CUDA call's errno. */
int pd_kvx_pool_write(int on_device, void *dst, const void *src, size_t n);
int pd_kvx_pool_flip(int on_device, uint8_t *p);
/* Joins the threads after they finish queued jobs; finished jobs not taken
 * are dropped (not freed: the caller owns jobs). Accepts NULL. */
void pd_kvx_crypto_free(struct pd_kvx_crypto *c);

/* ---- shared by kvx.c (sessions, loop), kvx_recv.c (D), kvx_send.c (P) ---- */

enum { AM_CTL = PD_KVX_AM_CTL, AM_DATA = PD_KVX_AM_DATA };

#define MAX_AM_BLOCKS 256u /* blocks per data message: bounds the sealed header */
#define MAX_PEERS 64u
#define MAX_AM_BYTES (8u << 20) /* bytes per data message (at least one block) */
#define BUSY_SPIN_US 2000u /* UCX says BUSY with nothing to progress for this long: */
#define BUSY_RETRY_US 100u /* sleep this long, doubling while nothing happens, */
#define BUSY_RETRY_MAX_US 20000u /* up to this */

struct dl {
    struct dl *prev, *next;
};
static inline void dl_init(struct dl *h) { h->prev = h->next = h; }
static inline int dl_empty(const struct dl *h) { return h->next == h; }
static inline void dl_add(struct dl *h, struct dl *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}
static inline void dl_del(struct dl *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
#define DL_ENTRY(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

static inline uint64_t now_ms(void) { return pd_now_ns() / 1000000u; }

/* Free *ev if set (event_free does not take NULL), and unset it. */
static inline void kvx_event_free(struct event **ev)
{
    if (*ev)
        event_free(*ev);
    *ev = NULL;
}

/* A UCX call's parameters: its flags, and cb(request, status, arg) when it
 * completes after the call returns. */
static inline ucp_request_param_t kvx_cb_param(ucp_send_nbx_callback_t cb, void *arg,
                                               uint32_t flags)
{
    return (ucp_request_param_t){
        .op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS,
        .cb.send = cb,
        .user_data = arg,
        .flags = flags,
    };
}

/* C_HS: the handshake on the KV port's TCP connection; C_ADDR: authenticated,
 * UCX worker addresses being exchanged (sealed) on that connection; C_UP:
 * both endpoints exist. The TCP connection stays open while the session
 * lives: its end ends the session. */
enum { C_HS, C_ADDR, C_UP, C_CLOSING, C_CLOSED };

/* The KV port while a connection is in C_HS or C_ADDR (freed at C_UP): the
 * protocol (kvx_port.h) and what we queued out. */
#define KVX_BOOT_OUT (KVX_PORT_BUF + 1024)
struct kvx_boot {
    struct kvx_port port;
    int busy; /* inside the port: kvx_boot_close leaves this struct to boot_read */
    size_t out_off, out_len;
    uint8_t out[KVX_BOOT_OUT];
};

struct pd_kvx_session {
    struct dl node; /* kvx->conns */
    struct pd_kvx *kvx;
    struct pd_kvx_peer *peer; /* D */
    ucp_ep_h ep; /* ours, to the peer's worker address (from C_ADDR on) */
    int state;
    int fd; /* the KV-port TCP connection; -1 once closed */
    int connecting; /* D: the TCP connect is in progress */
    struct event *ev_rd, *ev_wr;
    struct kvx_boot *b; /* C_HS, C_ADDR */
    uint64_t rx_token; /* ours: the peer's active messages carry it */
    uint64_t tx_token; /* the peer's: ours carry it */
    char src_ip[INET6_ADDRSTRLEN]; /* P: the connection's source, for per-source caps */
    int refs; /* the endpoint's own, requests, queued events */
    int want_close, closing_posted;
    struct pd_auth_session *s;
    char addr[128];
    char key_id[PD_KEY_ID_MAX + 1];
    uint64_t t_created_ms, last_rx_ms, last_hb_ms, hb_seq, t_connect_ns;
    uint32_t peer_lease_ms; /* from the peer's heartbeats; 0 until the first */
    struct dl reqs; /* D: pd_kvx_req; P: pd_kvx_sreq (live ones) */
    unsigned n_reqs;
    int up_reported;
};

struct pd_kvx_peer {
    struct pd_kvx *kvx;
    char hostport[128];
    struct sockaddr_storage sa;
    socklen_t salen;
    struct pd_kvx_session *session; /* NULL while none (reconnecting) */
    uint64_t next_try_ms;
    uint32_t backoff_ms;
};

enum { R_ACTIVE, R_OK, R_FAILED };
enum { B_EMPTY, B_RECV, B_CHECK, B_OK };

struct pd_kvx_req { /* D */
    struct dl node; /* session->reqs while active */
    struct dl all; /* kvx->all_reqs */
    struct pd_kvx_session *c;
    uint64_t id;
    uint32_t epoch, n, prefix, need, block_size;
    uint32_t n_cached; /* the prompt's blocks the receiver holds already (not granted) */
    /* PD_PREFILL_F_PROMPT_LP: positions [1, n_tokens) each come once (lp_seen),
     * with the PREFILL's n_logprobs alternatives; DONE waits for all */
    uint8_t *lp_seen; /* [n_tokens] or NULL */
    uint32_t n_tokens, lp_got, n_logprobs;
    uint32_t *dest; /* [n] pool indices */
    uint32_t *twins; /* [n] indices in p.twin_pool, or NULL */
    uint8_t *st; /* [n] B_* */
    int status, have_done, release_queued, linked;
    unsigned ops; /* receives and verifications in flight */
    struct pd_done done;
    void *udata;
    uint64_t t_start_ns, last_progress_ms;
};

struct rop { /* D: one data message being received and verified */
    struct pd_kvx_req *r;
    struct pd_kvx_job job;
    uint32_t first, n;
    size_t niov;
    ucp_dt_iov_t *iov;
    uint8_t **blocks;
    uint8_t **twins; /* the request's device twins of blocks, or NULL */
    uint8_t *tags;
};

enum { S_ACTIVE, S_DONE_SENT, S_DEAD };

struct pd_kvx_sreq { /* P */
    struct dl node; /* session->reqs while linked */
    struct dl all;
    struct pd_kvx_session *c;
    uint64_t id;
    uint32_t epoch, n_granted, acked;
    uint32_t n_tokens, n_logprobs; /* the PREFILL's */
    int prompt_lp; /* it asked for PROMPT_LP (PD_PREFILL_F_PROMPT_LP) */
    int status, end_reason, end_queued, linked;
    struct dl runs;
    void *udata;
    uint64_t last_progress_ms; /* last run sent or acknowledged */
};

struct run { /* P: one pd_kvx_send_run */
    struct dl node; /* sreq->runs */
    struct dl all;
    struct pd_kvx_sreq *r;
    uint32_t first, n;
    uint32_t *src;
    uint32_t *twins; /* [n] in p.twin_pool, or NULL */
    unsigned msgs; /* messages not yet finished (tagging or sending) */
    int acked, released;
};

struct msg { /* P: one data message of a run */
    struct dl node; /* kvx->backlog while waiting for crypto room */
    struct run *run;
    struct pd_kvx_job job;
    uint32_t first, n;
    size_t niov, hdr_len, bytes;
    ucp_dt_iov_t *iov;
    uint8_t **blocks;
    uint8_t **twins; /* the run's twins of blocks, or NULL */
    uint8_t *tags;
    uint8_t *hdr;
};

struct evq {
    struct evq *next;
    struct pd_kvx_event ev;
    struct pd_kvx_session *c; /* ref held */
    struct run *run; /* freed after delivery */
    uint8_t *plain; /* PREFILL's frame, freed after delivery */
    struct pd_prefill pf;
    struct pd_done done;
    struct pd_prompt_lp prompt_lp; /* its rows view `plain` */
    char detail[PD_PROTO_MAX_DETAIL + 1];
    char addr[128];
    char key_id[PD_KEY_ID_MAX + 1];
};

struct kvx_role;
struct pd_kvx {
    struct pd_kvx_params p;
    const struct kvx_role *role; /* kvx_role_d or kvx_role_p */
    struct pd_kv_layout layout;
    char kv_ip[INET6_ADDRSTRLEN];
    size_t block_bytes;
    uint32_t lease_ms, hs_ms, deadline_ms;
    unsigned max_sessions, max_pending, max_inflight, am_blocks;
    size_t max_crypto;
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_mem_h pool_memh; /* the direct path (p.pool_on_device): the pool, registered */
    int pool_mem_type; /* what UCX took it for (ucs_memory_type_t: cuda; host on the emulator) */
    int lfd; /* P: the KV port's listening socket */
    struct event *ev_listen, *ev_listen_again;
    uint16_t port;
    void *waddr; /* our UCX worker address (ucp_worker_get_address) */
    size_t waddr_len;
    struct kvx_port_env port_env; /* what every KV-port connection's protocol uses */
    unsigned max_pending_src;
    int efd;
    struct event *ev_efd, *ev_kick, *ev_tick, *ev_crypto, *ev_retry;
    struct pd_kvx_crypto *crypto;
    struct pd_auth_replay *replay;
    struct dl conns, all_reqs, all_sreqs, all_runs, backlog;
    size_t crypto_queued;
    unsigned ucx_ops, crypto_jobs; /* data sends/receives and crypto jobs in flight */
    uint64_t spin_since; /* loop_run: BUSY with nothing to progress since */
    unsigned backoff_us; /* loop_run: the current sleep */
    struct evq *evq_head, *evq_tail;
    struct pd_kvx_peer *peers[MAX_PEERS];
    unsigned n_peers;
    int in_loop, shutting_down;
    struct pd_kvx_stats st;
    uint8_t *scratch; /* opened CHUNK headers */
    size_t scratch_cap;
};

static inline void kick(struct pd_kvx *k) { event_active(k->ev_kick, 0, 0); }

/* The registered pool's handle on a data send or receive (the direct path),
 * where UCX takes one: a contiguous buffer (for an IOV it finds the
 * registration itself). */
static inline void kvx_param_memh(ucp_request_param_t *prm, ucp_mem_h memh, size_t niov)
{
    if (memh && niov == 1) {
        prm->op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        prm->memh = memh;
    }
}

/* ---- the roles: what differs between decoded's side (kvx_recv.c) and
 * prefilld's (kvx_send.c), chosen once at pd_kvx_new, as curl's protocol
 * handlers. The files below the roles (kvx_session.c, kvx_boot.c) and the
 * core (kvx.c) reach a role only through its table. ---- */
struct kvx_role {
    int data_before_ready; /* data may arrive in C_ADDR (D: P's, before its READY) */
    /* an authenticated control frame other than the session's own
     * (HEARTBEAT, ABORT_ACK, ERROR); may take over *plain (set it NULL) */
    void (*on_ctl)(struct pd_kvx_session *c, const struct pd_frame *f, uint8_t **plain);
    ucp_am_recv_callback_t on_data; /* PD_KVX_AM_DATA; NULL: every one is dropped */
    /* the session failed: end its requests (and, D, its peer's connection) */
    void (*session_lost)(struct pd_kvx_session *c, int reason, const char *detail, int was_up);
    void (*tick_session)(struct pd_kvx_session *c, uint64_t now_ms); /* request deadlines */
    void (*tick)(struct pd_kvx *k, uint64_t now_ms); /* NULL or: once a tick (D: reconnects) */
    void (*job_done)(struct pd_kvx *k, struct pd_kvx_job *j); /* back from the crypto threads */
    void (*pump)(struct pd_kvx *k); /* NULL or: after job_done (P: feeds the crypto threads) */
    void (*ev_release)(struct evq *e); /* after delivery: the role's objects an event held */
    void (*free_all)(struct pd_kvx *k); /* pd_kvx_free: every request, run, message left */
};
extern const struct kvx_role kvx_role_d, kvx_role_p;

/* kvx_session.c: below the roles and the KV port */
int kvx_ucs_errno(ucs_status_t st); /* the one place a UCX status becomes an errno */
struct evq *kvx_ev_new(struct pd_kvx *k, enum pd_kvx_event_type type, struct pd_kvx_session *c);
int kvx_send_ctl(struct pd_kvx_session *c, const struct pd_frame *f);
void kvx_token_put(uint8_t out[PD_KVX_TOKEN_LEN], uint64_t token);
void kvx_send_abort(struct pd_kvx_session *c, uint64_t id, uint32_t epoch, int reason,
                    const char *detail);
void kvx_send_reqref(struct pd_kvx_session *c, uint8_t type, uint64_t id, uint32_t epoch);
struct pd_kvx_session *kvx_session_new(struct pd_kvx *k);
void kvx_session_put(struct pd_kvx_session *c);
/* The session is over (once): its requests end through the role, the
 * endpoint is closed from the loop. hsf: a handshake failure to count, or -1. */
void kvx_session_fail(struct pd_kvx_session *c, int reason, const char *detail, int hsf);
/* The session whose receive token starts an active message's header (and
 * the header past it), or NULL. */
struct pd_kvx_session *kvx_session_find(struct pd_kvx *k, const void **header, size_t *header_length);
void kvx_session_up(struct pd_kvx_session *c);
void kvx_ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status);
/* The KV-port connection's socket and events (and its protocol state, unless
 * the protocol is running: kvx_boot.c frees it when it returns). */
void kvx_session_close_socket(struct pd_kvx_session *c);
/* A socket's teardown: its two events (either may be unset) freed, then fd
 * closed; all three left unset. */
void kvx_socket_close(int *fd, struct event **ev_a, struct event **ev_b);
/* A request joins or leaves its session's live list (c->reqs, counted in
 * n_reqs); *linked says whether it is on it, so leaving twice is harmless. */
void kvx_session_link(struct pd_kvx_session *c, struct dl *node, int *linked);
void kvx_session_unlink(struct pd_kvx_session *c, struct dl *node, int *linked);
void kvx_session_boot_free(struct pd_kvx_session *c);
size_t kvx_build_iov(uint8_t *pool, size_t bb, const uint32_t *idx, uint32_t n, ucp_dt_iov_t *iov,
                     uint8_t **blocks);
/* 1: the message may touch c; 0: dropped and counted. */
int kvx_gate(struct pd_kvx *k, struct pd_kvx_session *c);
/* kvx_boot.c: the KV port (P: listen, accept with caps; D: connect), the
 * handshake and the sealed exchange of UCX worker addresses on it */
void kvx_boot_env(struct pd_kvx *k);
int kvx_boot_listen(struct pd_kvx *k, char *err, size_t errlen);
void kvx_boot_unlisten(struct pd_kvx *k);
int kvx_boot_connect(struct pd_kvx_session *c, const struct sockaddr *sa, socklen_t salen);

#endif
