/* common/kvchan/kvx internals: the KV port's protocol for one TCP connection,
 * without I/O (the socket side is kvx_boot.c; the fuzz target
 * tests/fuzz/fuzz_kvport.c drives it directly). docs/internals/kvchan.md,
 * "The KV port".
 *
 *   D -> P  M1            P -> D  M2
 *   D -> P  CONFIRM       P -> D  CONFIRM, UCX_ADDR(P's address, P's token)
 *   D: endpoint to P;     D -> P  UCX_ADDR(D's address, D's token)
 *   P: endpoint to D;     P -> D  READY                       -> up
 *
 *   struct kvx_port port;
 *   kvx_port_init(&port, role, &env, arg);   D: sends M1 through env->send
 *   loop: buf = kvx_port_room(&port, &n);    read at most n bytes into buf
 *         rc = kvx_port_arrived(&port, got, &e);   rc < 0: close, e says why
 *   EOF:  kvx_port_eof(&port, &e);
 *   kvx_port_done(&port);
 *
 * Reads are sized to end exactly at a frame's end, so the bytes of a frame
 * behind the current one stay in the kernel until this one is handled. A
 * first byte that cannot start a frame (bad magic) is refused at once.
 *
 * Callbacks (all from inside kvx_port_arrived / kvx_port_init):
 *   send(arg, bytes, n)           queue bytes to the peer; < 0 fails the port
 *   authenticated(arg, s)         the handshake is done; s now belongs to the
 *                                 owner (the port keeps using it to seal its
 *                                 last frames); < 0 (a cap) fails the port
 *   endpoint(arg, addr, n, token) make our UCX endpoint from the peer's worker
 *                                 address, whose active messages carry token
 *   up(arg)                       the session is up (P: after READY is sent)
 */
#ifndef PD_KVX_PORT_H
#define PD_KVX_PORT_H

#include "auth.h"

#include <stddef.h>
#include <stdint.h>

#define KVX_PORT_BUF (PD_FRAME_HDR_LEN + 16 + PD_PROTO_MAX_UCX_ADDR + PD_FRAME_MAC_LEN)

enum { KP_HS, KP_ADDR, KP_UP, KP_DEAD };

struct kvx_port_env {
    struct pd_keyring *keyring;
    const char *key_id; /* D: the key to use; NULL = the ring's only key */
    struct pd_auth_replay *replay; /* P */
    const struct pd_kv_layout *layout;
    const void *waddr; /* our UCX worker address */
    size_t waddr_len;
    uint64_t (*now_ms)(void);
    int (*send)(void *arg, const uint8_t *buf, size_t len);
    int (*authenticated)(void *arg, struct pd_auth_session *s);
    int (*endpoint)(void *arg, const uint8_t *addr, size_t len, uint64_t token, char *err,
                    size_t errlen);
    void (*up)(void *arg);
    /* tests only: fixed randomness (NULL / 0: random) */
    const uint8_t *eph_sk, *nonce;
    uint64_t token;
};

/* Why a port failed: reason (enum pd_reason), the handshake-failure class
 * for counters (enum pd_kvx_hs_fail, or -1) and a message. */
struct kvx_port_err {
    int reason, hsf;
    char msg[256];
};

struct kvx_port {
    enum pd_role role;
    int state; /* KP_* */
    const struct kvx_port_env *env;
    void *arg;
    struct pd_auth_hs *hs;
    struct pd_auth_session *s; /* borrowed from the owner after authenticated() */
    uint64_t rx_token;
    int have_ep;
    size_t in_len, want;
    uint8_t in[KVX_PORT_BUF];
};

/* D sends M1 here. 0 or < 0 with e filled. */
int kvx_port_init(struct kvx_port *p, enum pd_role role, const struct kvx_port_env *env,
                  void *arg, struct kvx_port_err *e);
void kvx_port_done(struct kvx_port *p); /* frees the handshake state, wipes the buffer */
uint8_t *kvx_port_room(struct kvx_port *p, size_t *n);
int kvx_port_arrived(struct kvx_port *p, size_t n, struct kvx_port_err *e);
/* The peer closed the connection before the port was up: what to report. */
void kvx_port_eof(const struct kvx_port *p, struct kvx_port_err *e);

#endif
