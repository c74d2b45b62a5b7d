/* common/kvchan/kvx: the KV channel's UCX transport -- sessions, receiver-driven
 * block transfer, leases, faults (DESIGN.md "The KV channel";
 * docs/internals/kvchan.md).
 *
 * One kvx object per daemon, on the daemon's libevent loop; every function
 * here is called from that loop's thread. prefilld (PD_ROLE_P) listens and
 * sends blocks; decoded (PD_ROLE_D) connects and receives them:
 *
 *   struct pd_kvx_params p = { .base = base, .role = PD_ROLE_D, .kv_ip = "127.0.0.1",
 *                              .keyring = kr, .layout = &layout, .pool = pool,
 *                              .pool_blocks = n, .event = on_event, .arg = me };
 *   pd_kvx_new(&p, &kvx, err, sizeof err);
 *   D: pd_kvx_peer_add(kvx, "10.0.0.5:14579", &peer, err, sizeof err);
 *      ... PD_KVX_EV_SESSION_UP ...
 *      pd_kvx_request(peer, &prefill, dest_blocks, n, udata, &req, err, sizeof err);
 *      ... PD_KVX_EV_VERIFIED (prefix), PD_KVX_EV_PROMPT_LP (asked for: the
 *      ... prompt's log-probabilities), then PD_KVX_EV_DONE or PD_KVX_EV_FAILED,
 *      ... and always last PD_KVX_EV_RELEASED: only now may dest_blocks be reused.
 *   P: pd_kvx_listen(kvx, err, sizeof err);
 *      ... PD_KVX_EV_PREFILL (ev->sreq, ev->prefill) ...
 *      pd_kvx_send_run(sreq, first, src_blocks, n, err, sizeof err);   // as blocks become final
 *      pd_kvx_send_done(sreq, &done, err, sizeof err);
 *      ... PD_KVX_EV_RUN_RELEASED per run (source blocks may be freed),
 *      ... PD_KVX_EV_SREQ_END last: the handle is gone after it.
 *   pd_kvx_free(kvx);
 *
 * Events are delivered from the loop, never from inside UCX progress; the
 * callback may call any function here. Pointers in an event are valid during
 * the callback only.
 *
 * Ownership: the caller owns the event base, the keyring, the layout and the
 * pool (which must outlive the kvx object). Block tables passed in are
 * copied. Requests, sessions and peers are owned by kvx: a request handle is
 * valid until its RELEASED (D) or SREQ_END (P) event returns; a session
 * handle until its SESSION_DOWN event returns; a peer until pd_kvx_peer_remove
 * or pd_kvx_free.
 *
 * The KV port (--kv-ip:--kv-port) is kvx's own TCP socket: the handshake
 * and the sealed exchange of UCX worker addresses run there before anything
 * reaches UCX (docs/internals/kvchan.md, "The KV port").
 *
 * Errors: negative errno with a message in err; -ENOTCONN (no session to that
 * peer now), -EBUSY (a cap: in-flight requests, crypto queue), -E2BIG (over a
 * protocol cap), -EEXIST (request id in flight), -ECANCELED (the request is
 * dead: the caller still owns the blocks it offered), -EADDRINUSE (listener
 * port taken; the message names address and port), -EADDRNOTAVAIL (kv_ip is
 * a secondary address of its interface; the message names the remedy).
 */
#ifndef PD_KVX_H
#define PD_KVX_H

#include "frame.h"
#include "handshake.h"
#include "keyring.h"

#include <stddef.h>
#include <stdint.h>

/* The KV channel's options that both daemons take alike: entries of a
 * common/base/cfg option table for a config struct T with char *kv_data_ports,
 * int64_t kv_lease_ms, kv_handshake_ms, kv_crypto_threads, bool kv_gpu_tags,
 * kv_direct and uint64_t kv_staging_memory
 * (pd_kvx_parse_ports reads the first; the last is a GPU engine's
 * kv_staging_bytes, common/engine/engine.h). */
#define PD_KVX_CFG(T)                                                                              \
    PD_CFG_SIZE("kv-staging-memory", T, kv_staging_memory, "0", 0, INT64_C(1) << 40,              \
                "with the engine on a GPU: page-locked host memory the KV blocks pass through "    \
                "on the channel, each transfer in flight holding its prompt's blocks (0: room "    \
                "for two prompts of --max-model-len, at least 1 GiB)"),                             \
    PD_CFG_STR("kv-data-ports", T, kv_data_ports, NULL, 32,                                        \
               "UCX TCP data ports as LO-HI (default: UCX's choice)"),                             \
    PD_CFG_INT("kv-lease-ms", T, kv_lease_ms, "3000", 100, 600000,                                 \
               "a silent peer's session ends after this"),                                         \
    PD_CFG_INT("kv-handshake-timeout-ms", T, kv_handshake_ms, "2000", 100, 60000,                  \
               "a connection must authenticate within this"),                                      \
    PD_CFG_INT("kv-crypto-threads", T, kv_crypto_threads, "0", 0, PD_KVX_MAX_CRYPTO_THREADS,       \
               "threads computing and checking block tags on the CPU (0: a quarter of the CPUs "   \
               "this process may run on, at least 1)"),                                            \
    PD_CFG_BOOL("kv-gpu-tags", T, kv_gpu_tags, "true",                                             \
                "with the engine on a GPU: block tags computed and checked by the GPU, where the "  \
                "blocks are (off: on the CPU threads, and the blocks always staged)"),              \
    PD_CFG_BOOL("kv-direct", T, kv_direct, "true",                                                 \
                "with the engine on a GPU and a UCX that takes CUDA memory: the device pool is "   \
                "the channel's, blocks go to UCX from there (off: always staged through "          \
                "--kv-staging-memory)")

struct event_base;
struct pd_kvx;
struct pd_kvx_peer; /* D: one prefilld we keep a session with */
struct pd_kvx_session; /* one authenticated endpoint */
struct pd_kvx_req; /* D: one request (destination blocks granted) */
struct pd_kvx_sreq; /* P: one request (source runs to send) */

enum pd_kvx_event_type {
    PD_KVX_EV_SESSION_UP = 1, /* session, peer_addr, key_id (peer: D only) */
    PD_KVX_EV_SESSION_DOWN, /* session, peer_addr, reason, detail */
    PD_KVX_EV_PREFILL, /* P: sreq, session, prefill (views valid in the callback) */
    PD_KVX_EV_RUN_RELEASED, /* P: sreq, run_first, run_blocks[run_n], acked */
    PD_KVX_EV_SREQ_END, /* P: sreq; reason 0 = completed and acknowledged */
    PD_KVX_EV_VERIFIED, /* D: req, blocks = verified prefix [0, blocks) */
    PD_KVX_EV_DONE, /* D: req, done: every block verified, every prompt log-probability
                     * (asked for) and DONE received */
    PD_KVX_EV_FAILED, /* D: req, reason, detail; no VERIFIED/DONE follow */
    PD_KVX_EV_RELEASED, /* D: req: no receive into its blocks is pending any more */
    /* D: req, prompt_lp: rows of the prompt's log-probabilities (PREFILL with
     * PD_PREFILL_F_PROMPT_LP), each position once, within [1, n_tokens), n_top
     * the PREFILL's n_logprobs (kvx checked these; the tokens are the
     * caller's to check); views valid in the callback; all before DONE */
    PD_KVX_EV_PROMPT_LP,
    /* something for the daemon's log at warning level, which it rate-limits
     * (kvx logs nothing above debug): a connection's handshake failed
     * (peer_addr, hs_fail >= 0, detail: why), or the KV port ran out of file
     * descriptors and pauses for 100 ms (hs_fail -1, detail); the line:
     * pd_kvx_event_warning */
    PD_KVX_EV_WARNING,
};

struct pd_kvx_event {
    enum pd_kvx_event_type type;
    struct pd_kvx_session *session;
    struct pd_kvx_peer *peer;
    struct pd_kvx_req *req;
    struct pd_kvx_sreq *sreq;
    void *udata; /* the request's, as set when the event is delivered (pd_kvx_request /
                  * pd_kvx_sreq_set_udata) */
    const char *peer_addr; /* "ip:port" */
    const char *key_id;
    int reason; /* enum pd_reason; 0 = none */
    const char *detail;
    uint32_t blocks; /* VERIFIED */
    const struct pd_prefill *prefill; /* PREFILL */
    const struct pd_done *done; /* DONE */
    const struct pd_prompt_lp *prompt_lp; /* PROMPT_LP */
    uint32_t run_first, run_n; /* RUN_RELEASED */
    const uint32_t *run_blocks;
    const uint32_t *run_twins; /* RUN_RELEASED: the run's twin blocks, or NULL */
    int acked; /* RUN_RELEASED: 1 when the receiver acknowledged the run */
    int hs_fail; /* WARNING: enum pd_kvx_hs_fail, or -1 */
};

typedef void (*pd_kvx_event_fn)(void *arg, const struct pd_kvx_event *ev);

struct pd_kvx_params {
    struct event_base *base; /* the loop; every call happens on its thread */
    enum pd_role role;
    const char *kv_ip; /* listen (P) / source (D) address */
    uint16_t kv_port; /* P: listener port, 0 = any (pd_kvx_port says which) */
    uint16_t data_port_lo, data_port_hi; /* UCX TCP data ports; 0,0 = UCX's choice */
    struct pd_keyring *keyring;
    const char *key_id; /* D: the key to use; NULL = the ring's only key */
    const struct pd_kv_layout *layout; /* the handshake's; block_bytes is the block size */
    void *pool; /* pool_blocks * layout->block_bytes bytes */
    uint32_t pool_blocks;
    unsigned crypto_threads; /* 0 = pd_kvx_default_crypto_threads() */
    int gpu_tags; /* 1: tags made and checked on the GPU (kernels/tag, CUDA builds): pool is
                   * page-locked (pd_cuda_host_register) and the device reads it there */
    int pool_on_device; /* 1: pool is device memory (a GPU engine's pool; needs gpu_tags and a
                         * UCX that takes it, pd_kvx_device_path): registered with UCX, blocks
                         * sent and received there by rendezvous, tags made and checked there */
    void *twin_pool; /* a staged pool (gpu_tags, integrity on): the device pool the staging
                      * mirrors, twin_pool_blocks blocks of block_bytes, where the GPU
                      * makes and checks the tags. D: a request's blocks, as they land, are
                      * copied up into its twins (pd_kvx_request) and checked there:
                      * VERIFIED means in the twins. P: a run's blocks are tagged in their
                      * twins (pd_kvx_send_run) and copied down from them into the staged
                      * blocks, which the caller need not fill */
    uint32_t twin_pool_blocks;
    int no_integrity; /* 1: no block tags (benchmarks only; both sides must agree) */
    int no_mm_error_handling; /* 1: leave UCX posix/sysv shared memory off in PEER mode */
    uint32_t lease_ms; /* 0 = 3000 */
    uint32_t handshake_ms; /* 0 = 2000 */
    uint32_t request_deadline_ms; /* D: no block for this long fails a request; P: runs
                                   * unacknowledged this long are taken back; 0 = 10000 */
    unsigned max_sessions; /* P: authenticated sessions; 0 = 64 */
    unsigned max_pending; /* P: unauthenticated KV-port connections; 0 = 16 */
    unsigned max_pending_per_source; /* P: of them from one address; 0 = max_pending / 4 */
    unsigned max_inflight; /* requests in flight per session; 0 = 256 */
    size_t max_crypto_bytes; /* block bytes queued for tagging; 0 = 256 MiB */
    unsigned tamper_every; /* test only, P: flip a byte after tagging in requests id % n == 0 */
    pd_kvx_event_fn event;
    void *arg;
};

/* Counters for metrics (monotonic; sessions is a gauge). */
enum pd_kvx_hs_fail {
    PD_KVX_HSF_AUTH, /* wrong key, bad MAC, unknown key id */
    PD_KVX_HSF_GARBAGE, /* not our protocol on the KV port, or a malformed frame */
    PD_KVX_HSF_TIMEOUT, /* no handshake within handshake_ms (silent connect) */
    PD_KVX_HSF_LAYOUT, /* layout or model fingerprint differ */
    PD_KVX_HSF_REPLAY,
    PD_KVX_HSF_CAP, /* too many sessions, or evicted: too many unauthenticated connections */
    PD_KVX_HSF_REFUSED, /* D: the peer closed the connection during our handshake */
    PD_KVX_HSF_OTHER,
    PD_KVX_HSF_N
};
struct pd_kvx_stats {
    uint64_t bytes_sent, blocks_sent, bytes_recv, blocks_recv;
    uint64_t handshakes_ok, hs_fail[PD_KVX_HSF_N];
    uint64_t integrity_failures, protocol_errors, dropped_unauth;
    uint64_t requests_ok, requests_failed, runs_released, runs_reclaimed;
    uint64_t sessions, sessions_total;
    uint64_t transfer_ns; /* D: sum over completed requests of PREFILL sent -> DONE */
    uint64_t handshake_ns; /* D: sum over handshakes of connect -> session up */
};

/* Threads tagging and verifying blocks on the CPU when the parameters say
 * 0: a quarter of the CPUs this process may run on (its affinity mask),
 * at least 1, at most PD_KVX_MAX_CRYPTO_THREADS. */
#define PD_KVX_MAX_CRYPTO_THREADS 64
unsigned pd_kvx_default_crypto_threads(void);

/* "KV channel: block tags ..." -- where they are made and checked (the GPU,
 * N CPU threads, or off), for the daemons' log. */
void pd_kvx_tags_line(const struct pd_kvx *k, char *buf, size_t n);

/* Whether a GPU engine's device pool can be the channel's pool (the direct
 * path, params.pool_on_device): 1 when the UCX this process loaded moves CUDA
 * memory (ucp_context_query's memory types, under the process's UCX_*
 * settings) or the GPU is the emulator's (its device memory is host memory),
 * else 0: blocks are staged through page-locked host memory. why gets the
 * reason either way ("UCX 1.22.0 takes CUDA memory", "UCX 1.13.1 does not
 * take CUDA memory (host only)"). Negative errno when UCX cannot start. */
int pd_kvx_device_path(char *why, size_t len);

/* Writes no environment: either side may make its object while the
 * daemon's other threads run (decoded does when a reload names its first
 * peer). */
int pd_kvx_new(const struct pd_kvx_params *p, struct pd_kvx **out, char *err, size_t errlen);
/* Lets queued frames out (at most 500 ms), closes every endpoint (force),
 * joins the crypto threads, and frees. No events are delivered. Not from
 * inside an event callback. Accepts NULL; returns NULL. */
struct pd_kvx *pd_kvx_free(struct pd_kvx *kvx);
void pd_kvx_get_stats(const struct pd_kvx *kvx, struct pd_kvx_stats *out);
const char *pd_kvx_hs_fail_name(unsigned i);
/* A WARNING event's log line into buf ("kv channel: handshake with ADDR
 * failed (REASON): WHY", ...): 1, or 0 for another event. */
int pd_kvx_event_warning(const struct pd_kvx_event *ev, char *buf, size_t len);
/* --kv-data-ports "LO-HI" (1 <= LO <= HI <= 65535) into params' data ports;
 * NULL gives 0, 0 (UCX's choice). -EINVAL with a message naming the option. */
int pd_kvx_parse_ports(const char *s, uint16_t *lo, uint16_t *hi, char *err, size_t errlen);
/* 1 with a warning for the daemon to log when a non-loopback kv_ip has no
 * --kv-data-ports (ports NULL): UCX's data listener then takes a port no
 * firewall can name. 0 otherwise. */
int pd_kvx_ports_warning(const char *kv_ip, const char *ports, char *msg, size_t len);
/* The UCX transports a session's endpoint uses, e.g. "tcp/lo" or "posix/memory"
 * ("" while unknown); for benchmark reports. */
void pd_kvx_session_transports(struct pd_kvx_session *s, char *buf, size_t len);

/* ---- P ---- */
int pd_kvx_listen(struct pd_kvx *kvx, char *err, size_t errlen);
uint16_t pd_kvx_port(const struct pd_kvx *kvx);
void pd_kvx_sreq_set_udata(struct pd_kvx_sreq *r, void *udata);
/* Send blocks [first, first + n) of the request from src_blocks (pool
 * indices; copied). Tags are computed on the crypto threads, then the run goes
 * out as one or more active messages. The blocks stay in use until
 * PD_KVX_EV_RUN_RELEASED. -ECANCELED when the request is dead (blocks stay the
 * caller's). twin_blocks[n]: with a twin pool, where the blocks' bytes are
 * (tagged there, copied into src_blocks), held as long; else NULL. */
int pd_kvx_send_run(struct pd_kvx_sreq *r, uint32_t first, const uint32_t *src_blocks,
                    const uint32_t *twin_blocks, uint32_t n, char *err, size_t errlen);
/* Queued or computing, and how far (protocol 1.1; nothing is sent to a 1.0
 * peer): decoded's deadline then counts silence, not a long prompt's work.
 * request_id and epoch are the request's own. */
int pd_kvx_send_progress(struct pd_kvx_sreq *r, const struct pd_progress *pg, char *err,
                         size_t errlen);
/* Rows of the prompt's log-probabilities, for a PREFILL that asked
 * (PD_PREFILL_F_PROMPT_LP; protocol 1.2), before DONE; request_id and epoch
 * are the request's own. -EINVAL for one that did not ask. */
int pd_kvx_send_prompt_lp(struct pd_kvx_sreq *r, const struct pd_prompt_lp *lp, char *err,
                          size_t errlen);
/* The first token; the last frame of the request. */
int pd_kvx_send_done(struct pd_kvx_sreq *r, const struct pd_done *d, char *err, size_t errlen);
/* ABORT the request (reason enum pd_reason); SREQ_END follows. */
int pd_kvx_abort(struct pd_kvx_sreq *r, int reason, const char *detail);

/* ---- D ---- */
/* "host:port" (IPv4 literal or name); kvx keeps a session to it, reconnecting
 * with backoff (100 ms doubling to 5 s, jittered). */
int pd_kvx_peer_add(struct pd_kvx *kvx, const char *hostport, struct pd_kvx_peer **out, char *err,
                    size_t errlen);
int pd_kvx_peer_up(const struct pd_kvx_peer *peer); /* 1 when a session is established */
/* Stop keeping a session with the peer (a reload dropped it from the list):
 * its session, if any, is closed (SESSION_DOWN, reason PD_R_SHUTDOWN with
 * `why` as the detail), requests still on it fail as when a session drops
 * (FAILED, then RELEASED), and the handle is gone on return. Accepts NULL. */
void pd_kvx_peer_remove(struct pd_kvx_peer *peer, const char *why);
/* Send PREFILL p (request_id, epoch, tokens ...; p->n_blocks is set from n)
 * and grant dest_blocks[n] (pool indices; copied) for its blocks in order.
 * twin_blocks[n]: indices in params.twin_pool the blocks are copied up to
 * and checked in (copied), or NULL (always NULL without a twin pool). */
int pd_kvx_request(struct pd_kvx_peer *peer, const struct pd_prefill *p,
                   const uint32_t *dest_blocks, const uint32_t *twin_blocks, uint32_t n,
                   void *udata, struct pd_kvx_req **out, char *err, size_t errlen);
/* CANCEL: the request fails with PD_R_CANCELLED (FAILED, then RELEASED). */
int pd_kvx_cancel(struct pd_kvx_req *r);

#endif
