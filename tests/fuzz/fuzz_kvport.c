/* libFuzzer target: untrusted bytes into the KV port's protocol
 * (common/kvchan/kvx_port.c) as they arrive on its TCP connection, through the
 * same code prefilld and decoded run, without sockets. The first byte picks
 * the side and how the bytes arrive:
 *
 *   bit 0: 0 = prefilld (responder) hears them, 1 = decoded (initiator)
 *   bit 1: one byte per read (else as much as the port asks for)
 *
 * Both sides use the fixed inputs of tests/unit/kv_fixture.h (the
 * known-answer vectors' keys and randomness), so the seeds that
 * tests/vectors/kat_auth.py writes are genuine streams that reach the
 * sealed UCX_ADDR and READY frames and bring the session up. Checks: the
 * port never asks to read past its buffer, a failure leaves it dead with a
 * reason and a message, a session comes up only through an endpoint made
 * from an address within the protocol's cap, and nothing leaks. */
#include "../unit/kv_fixture.h"
#include "kvx.h"
#include "kvx_port.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define P_TOKEN 0x5555555555555555ull
#define D_TOKEN 0x4444444444444444ull

static struct kv_pair kp;
static const uint8_t waddr[48] = {1, 2, 3, 4, 5, 6, 7, 8};

struct side {
    struct pd_auth_session *s;
    int eps, ups;
    uint64_t tx_token;
};

static void must(int ok)
{
    if (!ok)
        __builtin_trap();
}

static uint64_t fixed_now(void) { return KAT_NOW_MS; }

static int cb_send(void *arg, const uint8_t *buf, size_t len)
{
    (void)arg;
    must(buf != NULL && len > 0 && len <= KVX_PORT_BUF);
    return 0;
}

static int cb_authenticated(void *arg, struct pd_auth_session *s)
{
    struct side *sd = arg;
    must(sd->s == NULL);
    sd->s = s;
    return 0;
}

static int cb_endpoint(void *arg, const uint8_t *addr, size_t len, uint64_t token, char *err,
                       size_t errlen)
{
    (void)err;
    (void)errlen;
    struct side *sd = arg;
    must(sd->s != NULL && addr != NULL && len >= 1 && len <= PD_PROTO_MAX_UCX_ADDR && token);
    sd->eps++;
    sd->tx_token = token;
    return 0;
}

static void cb_up(void *arg)
{
    struct side *sd = arg;
    must(sd->eps == 1);
    sd->ups++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        must(kv_pair_init(&kp, 1) == 0);
        ready = 1;
    }
    if (size < 1)
        return 0;
    int d_side = data[0] & 1, bytewise = data[0] & 2;
    struct pd_auth_replay *rc = NULL;
    must(pd_auth_replay_new(4, 10000, &rc) == 0);
    struct kvx_port_env env = {
        .keyring = kp.kr, .key_id = d_side ? KAT_KEY_ID : NULL, .replay = rc,
        .layout = d_side ? &kp.layout_d : &kp.layout_p, .waddr = waddr,
        .waddr_len = sizeof waddr, .now_ms = fixed_now, .send = cb_send,
        .authenticated = cb_authenticated, .endpoint = cb_endpoint, .up = cb_up,
        .eph_sk = d_side ? kp.d_sk : kp.p_sk, .nonce = d_side ? kp.d_nonce : kp.p_nonce,
        .token = d_side ? D_TOKEN : P_TOKEN};
    struct side sd = {0};
    struct kvx_port *p = malloc(sizeof *p);
    struct kvx_port_err e = {0};
    must(p != NULL);
    int rc_init = kvx_port_init(p, d_side ? PD_ROLE_D : PD_ROLE_P, &env, &sd, &e);
    must(rc_init == 0);
    const uint8_t *in = data + 1;
    size_t left = size - 1;
    while (left > 0 && p->state < KP_UP) {
        size_t n = 0;
        uint8_t *room = kvx_port_room(p, &n);
        must(room != NULL && n >= 1 && room >= p->in && room + n <= p->in + sizeof p->in);
        size_t take = bytewise ? 1 : n;
        if (take > left)
            take = left;
        memcpy(room, in, take);
        in += take;
        left -= take;
        if (kvx_port_arrived(p, take, &e) < 0) {
            must(p->state == KP_DEAD && e.reason >= 1 && e.reason <= PD_R_MAX && e.msg[0]);
            must(e.hsf >= -1 && e.hsf < PD_KVX_HSF_N);
            break;
        }
    }
    if (p->state == KP_UP) {
        must(sd.ups == 1 && sd.s != NULL);
        /* what comes after the session began is refused */
        size_t n = 1;
        must(kvx_port_room(p, &n) == NULL && n == 0);
    } else {
        must(sd.ups == 0);
    }
    if (p->state != KP_DEAD && p->state != KP_UP) {
        kvx_port_eof(p, &e);
        must(e.msg[0] && e.hsf >= 0 && e.hsf < PD_KVX_HSF_N);
    }
    kvx_port_done(p);
    free(p);
    pd_auth_session_free(sd.s);
    pd_auth_replay_free(rc);
    return 0;
}
