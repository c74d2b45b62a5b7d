/* tests/kvx/kvx_peer: a test peer for common/kvchan/kvx -- moves blocks of a pool
 * with real UCX between real processes (tests/integration/test_kvx.py).
 *
 *   kvx_peer --role send --kv-ip 127.0.0.1 --kv-port 14579 --kv-data-ports 20000-20099 \
 *            --psk-file k.psk [--tamper N] [--delay-ms D]
 *   kvx_peer --role recv --connect 127.0.0.1:14579 --kv-ip 127.0.0.1 --psk-file k.psk \
 *            --requests 200 --inflight 8 --seed 1
 *   kvx_peer --role silent|garbage --connect 127.0.0.1:14579      (raw TCP: misbehaving clients)
 *
 * Block contents come from a counter-based generator keyed by (seed, request
 * id, epoch, block index): the sender fills its source blocks with it, the
 * receiver checks every byte of every destination block against it. The
 * receiver grants random non-contiguous destination blocks, keeps many
 * requests in flight, reuses a block only after PD_KVX_EV_RELEASED, poisons
 * blocks before granting them, and prints one JSON summary line; it exits 1
 * on any mismatch, on blocks handed on from a request that then failed its
 * integrity check, or (without --allow-fail) on any failed request.
 * The sender runs until SIGTERM/SIGINT, then prints its JSON summary.
 */
#include "kvx.h"
#include "kvx_internal.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <event2/event.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

struct opts {
    const char *role, *kv_ip, *connect, *psk, *key_id;
    unsigned kv_port, dport_lo, dport_hi;
    uint64_t block_bytes;
    uint32_t pool_blocks, requests, inflight, max_blocks, tamper, expect_tamper, delay_ms;
    uint32_t lease_ms, hs_ms, deadline_ms, timeout_ms, crypto_threads;
    uint64_t seed, id_base;
    int allow_fail, no_integrity, verbose;
};

/* ---- content ---- */

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t block_key(uint64_t seed, uint64_t req, uint32_t epoch, uint32_t blk)
{
    return mix(mix(mix(seed) ^ req) ^ ((uint64_t)epoch << 32 | blk));
}

static void fill_block(uint8_t *p, size_t n, uint64_t key)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = mix(key + i);
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++)
        p[i] = (uint8_t)mix(key + i);
}

/* Bytes of p that differ from the generator. */
static uint64_t check_block(const uint8_t *p, size_t n, uint64_t key)
{
    uint64_t bad = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = mix(key + i), got;
        memcpy(&got, p + i, 8);
        if (got != v)
            for (int b = 0; b < 8; b++)
                bad += ((got >> (8 * b)) & 0xff) != ((v >> (8 * b)) & 0xff);
    }
    for (; i < n; i++)
        bad += p[i] != (uint8_t)mix(key + i);
    return bad;
}

static uint64_t rng_state;
static uint32_t rnd(uint32_t n) { return n ? (uint32_t)(mix(rng_state++) % n) : 0; }

/* ---- a pool with a free list ---- */

struct pool {
    uint8_t *mem;
    size_t bb;
    uint32_t n, n_free;
    uint32_t *free_list;
};

static int pool_init(struct pool *p, uint32_t n, size_t bb)
{
    p->n = n;
    p->bb = bb;
    p->mem = mmap(NULL, (size_t)n * bb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p->free_list = malloc(n * sizeof *p->free_list);
    if (p->mem == MAP_FAILED || !p->free_list)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        p->free_list[i] = i;
    p->n_free = n;
    return 0;
}

/* k random free blocks, in random order (so mostly non-contiguous) */
static void pool_take(struct pool *p, uint32_t k, uint32_t *out)
{
    for (uint32_t i = 0; i < k; i++) {
        uint32_t j = rnd(p->n_free);
        out[i] = p->free_list[j];
        p->free_list[j] = p->free_list[--p->n_free];
    }
}

static void pool_put(struct pool *p, const uint32_t *b, uint32_t k)
{
    for (uint32_t i = 0; i < k; i++)
        p->free_list[p->n_free++] = b[i];
}

static uint8_t *blk(struct pool *p, uint32_t i) { return p->mem + (size_t)i * p->bb; }

/* ---- shared state ---- */

static struct opts o = {
    .kv_ip = "127.0.0.1", .block_bytes = 4096, .pool_blocks = 64, .requests = 50, .inflight = 4,
    .max_blocks = 8, .lease_ms = 1500, .hs_ms = 1000, .deadline_ms = 3000, .timeout_ms = 60000,
    .seed = 1, .id_base = 1,
};
static struct event_base *base;
static struct pd_kvx *kvx;
static struct pool pool;

static const uint32_t BLOCK_SIZE = 16; /* tokens per block */

/* sessions going up and down, counted alike on either side (on_event) */
static uint64_t sessions_up, sessions_down;

/* What a side has live (the receiver's requests, the sender's PREFILL
 * states), listed to be freed at the exit: each starts with its link. */
struct live_link {
    struct live_link *prev, *next;
};

static void live_add(struct live_link **head, struct live_link *n)
{
    n->prev = NULL;
    n->next = *head;
    if (*head)
        (*head)->prev = n;
    *head = n;
}

static void live_remove(struct live_link **head, struct live_link *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        *head = n->next;
    if (n->next)
        n->next->prev = n->prev;
}

static void layout_of(struct pd_kv_layout *l)
{
    memset(l, 0, sizeof *l);
    l->n_layer = 1;
    l->n_head_kv = 1;
    l->head_dim = 1;
    l->block_size = BLOCK_SIZE;
    l->kv_dtype = 0;
    l->block_bytes = o.block_bytes;
    memset(l->fingerprint, 0x5a, sizeof l->fingerprint);
}

/* ---- receiver ---- */

struct rreq {
    struct live_link link; /* first: on R.live, every live request, for the exit */
    uint64_t id;
    uint32_t n;
    uint32_t verified;
    uint32_t *dest;
    int result; /* 0 pending, 1 ok, -reason */
};

static struct {
    struct pd_kvx_peer *peer;
    uint64_t started, ok, failed, inflight, bytes_checked, mismatches, handed_on_bad;
    uint64_t by_reason[PD_R_MAX + 1];
    uint64_t next_id;
    uint64_t t0;
    int finished;
    struct event *timer;
    struct live_link *live; /* struct rreq */
} R;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void recv_start_more(void)
{
    char err[256];
    while (!R.finished && R.started < o.requests && R.inflight < o.inflight &&
           pd_kvx_peer_up(R.peer)) {
        uint32_t n = 1 + rnd(o.max_blocks);
        if (pool.n_free < n)
            return;
        struct rreq *q = calloc(1, sizeof *q);
        q->dest = malloc(n * sizeof *q->dest);
        q->n = n;
        q->id = R.next_id++;
        pool_take(&pool, n, q->dest);
        for (uint32_t i = 0; i < n; i++)
            memset(blk(&pool, q->dest[i]), 0xee, pool.bb); /* poison: stale bytes show */
        uint32_t ntok = (n - 1) * BLOCK_SIZE + 1 + rnd(BLOCK_SIZE);
        uint32_t *tok = calloc(ntok, sizeof *tok);
        for (uint32_t i = 0; i < ntok; i++)
            tok[i] = rnd(50000);
        struct pd_prefill p = {.request_id = q->id, .epoch = 1, .n_tokens = ntok,
                               .temperature = 0, .top_p = 1, .repetition_penalty = 1,
                               .tokens = tok};
        snprintf(p.xrid, sizeof p.xrid, "kvx-peer-%" PRIu64, q->id);
        struct pd_kvx_req *r;
        int rc = pd_kvx_request(R.peer, &p, q->dest, NULL, n, q, &r, err, sizeof err);
        free(tok);
        if (rc < 0) {
            pool_put(&pool, q->dest, n);
            free(q->dest);
            free(q);
            if (o.verbose)
                fprintf(stderr, "kvx_peer: request: %s\n", err);
            return;
        }
        live_add(&R.live, &q->link);
        R.started++;
        R.inflight++;
    }
}

static int lingering;

static void recv_maybe_finish(void)
{
    if (lingering)
        return;
    if (R.ok + R.failed >= o.requests && R.inflight == 0)
        R.finished = 1;
    if (R.finished)
        event_base_loopbreak(base);
}

static void recv_event(const struct pd_kvx_event *ev)
{
    struct rreq *q = ev->udata;
    switch (ev->type) {
    case PD_KVX_EV_VERIFIED:
        q->verified = ev->blocks;
        break;
    case PD_KVX_EV_DONE:
        q->result = 1;
        R.ok++;
        for (uint32_t i = 0; i < q->n; i++) {
            R.mismatches += check_block(blk(&pool, q->dest[i]), pool.bb,
                                        block_key(o.seed, q->id, 1, i));
            R.bytes_checked += pool.bb;
        }
        if (ev->done->n_prompt == 0)
            R.mismatches++;
        break;
    case PD_KVX_EV_FAILED:
        q->result = -ev->reason;
        R.failed++;
        if (ev->reason >= 0 && ev->reason <= PD_R_MAX)
            R.by_reason[ev->reason]++;
        if (ev->reason == PD_R_INTEGRITY && q->verified > 0)
            R.handed_on_bad++;
        if (o.verbose)
            fprintf(stderr, "kvx_peer: request %" PRIu64 " failed: %s (%s)\n", q->id,
                    pd_reason_name((unsigned)ev->reason), ev->detail);
        break;
    case PD_KVX_EV_RELEASED:
        pool_put(&pool, q->dest, q->n);
        live_remove(&R.live, &q->link);
        free(q->dest);
        free(q);
        R.inflight--;
        break;
    default:
        break;
    }
    recv_start_more();
    recv_maybe_finish();
}

static void recv_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (mono_ms() - R.t0 > o.timeout_ms) {
        R.finished = 1;
        event_base_loopbreak(base);
        return;
    }
    recv_start_more();
}

/* ---- sender ---- */

struct sreq_state {
    struct live_link link; /* first: on S.live, every live state, for the exit */
    struct pd_kvx_sreq *sreq;
    uint64_t id;
    uint32_t epoch, need, sent, n_prompt;
    uint32_t *src; /* [need] */
    int waiting, dead, ended;
    struct event *timer;
    struct sreq_state *next_wait;
};

static struct {
    uint64_t prefills, ended_ok, ended_failed, runs_acked, runs_unacked;
    struct sreq_state *wait_head, *wait_tail;
    struct event *sig_term, *sig_int;
    struct live_link *live; /* struct sreq_state */
} S;

static void send_free_state(struct sreq_state *st)
{
    live_remove(&S.live, &st->link);
    if (st->src && st->sent < st->need && !st->waiting)
        pool_put(&pool, st->src + st->sent, st->need - st->sent);
    if (st->timer)
        event_free(st->timer);
    free(st->src);
    free(st);
}

static void send_step(evutil_socket_t fd, short what, void *arg);

/* Send the next run (or all of them without a delay), then DONE. */
static void send_progress(struct sreq_state *st)
{
    char err[256];
    while (st->sent < st->need && !st->dead) {
        uint32_t k = 1 + rnd(4);
        if (k > st->need - st->sent)
            k = st->need - st->sent;
        if (pd_kvx_send_run(st->sreq, st->sent, st->src + st->sent, NULL, k, err, sizeof err) < 0) {
            st->dead = 1;
            return;
        }
        st->sent += k;
        if (o.delay_ms && st->sent < st->need) {
            struct timeval tv = {.tv_sec = o.delay_ms / 1000, .tv_usec = (o.delay_ms % 1000) * 1000};
            evtimer_add(st->timer, &tv);
            return;
        }
    }
    if (!st->dead && st->sent == st->need) {
        struct pd_done d = {.n_prompt = st->n_prompt, .token = 42, .logprob = -0.5f};
        if (pd_kvx_send_done(st->sreq, &d, err, sizeof err) < 0)
            st->dead = 1;
    }
}

static void send_step(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    send_progress(arg);
}

static void send_begin(struct sreq_state *st)
{
    st->waiting = 0;
    pool_take(&pool, st->need, st->src);
    for (uint32_t i = 0; i < st->need; i++)
        fill_block(blk(&pool, st->src[i]), pool.bb, block_key(o.seed, st->id, st->epoch, i));
    if (o.delay_ms) {
        struct timeval tv = {.tv_sec = o.delay_ms / 1000, .tv_usec = (o.delay_ms % 1000) * 1000};
        evtimer_add(st->timer, &tv);
    } else {
        send_progress(st);
    }
}

static void send_serve_waiting(void)
{
    while (S.wait_head && pool.n_free >= S.wait_head->need) {
        struct sreq_state *st = S.wait_head;
        S.wait_head = st->next_wait;
        if (!S.wait_head)
            S.wait_tail = NULL;
        if (st->ended) {
            send_free_state(st);
            continue;
        }
        send_begin(st);
    }
}

static void send_event(const struct pd_kvx_event *ev)
{
    struct sreq_state *st = ev->udata;
    switch (ev->type) {
    case PD_KVX_EV_PREFILL: {
        const struct pd_prefill *p = ev->prefill;
        S.prefills++;
        st = calloc(1, sizeof *st);
        st->sreq = ev->sreq;
        st->id = p->request_id;
        st->epoch = p->epoch;
        st->n_prompt = p->n_tokens;
        st->need = (p->n_tokens + BLOCK_SIZE - 1) / BLOCK_SIZE;
        st->src = malloc(st->need * sizeof *st->src);
        st->timer = evtimer_new(base, send_step, st);
        live_add(&S.live, &st->link);
        pd_kvx_sreq_set_udata(ev->sreq, st);
        if (st->need > pool.n) {
            pd_kvx_abort(ev->sreq, PD_R_TOO_LARGE, "more blocks than the pool");
            st->dead = 1;
            st->sent = st->need; /* nothing taken */
            break;
        }
        st->waiting = 1;
        if (S.wait_tail)
            S.wait_tail->next_wait = st;
        else
            S.wait_head = st;
        S.wait_tail = st;
        send_serve_waiting();
        break;
    }
    case PD_KVX_EV_RUN_RELEASED:
        pool_put(&pool, ev->run_blocks, ev->run_n);
        if (ev->acked)
            S.runs_acked++;
        else
            S.runs_unacked++;
        break;
    case PD_KVX_EV_SREQ_END:
        if (ev->reason == 0)
            S.ended_ok++;
        else
            S.ended_failed++;
        st->dead = 1;
        st->ended = 1;
        if (!st->waiting)
            send_free_state(st); /* a waiting one is freed when it reaches the head */
        break;
    default:
        break;
    }
    send_serve_waiting();
}

/* kvx's events on either side (arg: the int `sender`): sessions counted,
 * then the side's own handler */
static void on_event(void *arg, const struct pd_kvx_event *ev)
{
    const int *sender = arg;
    sessions_up += ev->type == PD_KVX_EV_SESSION_UP;
    sessions_down += ev->type == PD_KVX_EV_SESSION_DOWN;
    if (*sender)
        send_event(ev);
    else
        recv_event(ev);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    event_base_loopbreak(base);
}

/* ---- misbehaving clients: raw TCP to the KV port, no kvx ---- */

/* silent: connect and say nothing; garbage: send 4 KiB of random bytes.
 * Either way, wait for the listener to close the connection. */
static int run_bad_client(int garbage)
{
    const char *colon = strrchr(o.connect, ':');
    if (!colon)
        return 2;
    char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(colon - o.connect), o.connect);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return 2;
    if (garbage) {
        uint8_t junk[4096];
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (uint8_t)rnd(256);
        (void)!send(fd, junk, sizeof junk, MSG_NOSIGNAL); /* closed already: fine */
    }
    uint64_t t0 = mono_ms();
    int closed_by_peer = 0;
    while (mono_ms() - t0 < o.timeout_ms) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 50) > 0) {
            char b[256];
            ssize_t r = recv(fd, b, sizeof b, 0);
            if (r <= 0) {
                closed_by_peer = 1;
                break;
            }
        }
    }
    uint64_t waited = mono_ms() - t0;
    close(fd);
    printf("{\"role\":\"%s\",\"closed_by_peer\":%d,\"waited_ms\":%" PRIu64 "}\n",
           garbage ? "garbage" : "silent", closed_by_peer, waited);
    return closed_by_peer ? 0 : 1;
}

/* ---- main ---- */

static void usage(void)
{
    fprintf(stderr,
            "usage: kvx_peer --role send|recv|silent|garbage [--kv-ip IP] [--kv-port P]\n"
            "  [--connect HOST:PORT] [--kv-data-ports LO-HI] --psk-file F [--key-id ID]\n"
            "  [--block-bytes B] [--pool-blocks N] [--requests N] [--inflight M]\n"
            "  [--max-blocks K] [--seed S] [--id-base I] [--tamper N] [--expect-tamper N]\n"
            "  [--delay-ms D] [--lease-ms L] [--handshake-ms H] [--deadline-ms D]\n"
            "  [--timeout-ms T] [--crypto-threads N] [--allow-fail] [--no-integrity] [-v]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"role", 1, 0, 'r'}, {"kv-ip", 1, 0, 'i'}, {"kv-port", 1, 0, 'p'},
        {"connect", 1, 0, 'c'}, {"kv-data-ports", 1, 0, 'd'}, {"psk-file", 1, 0, 'k'},
        {"key-id", 1, 0, 'K'}, {"block-bytes", 1, 0, 'b'}, {"pool-blocks", 1, 0, 'n'},
        {"requests", 1, 0, 'N'}, {"inflight", 1, 0, 'M'}, {"max-blocks", 1, 0, 'B'},
        {"seed", 1, 0, 's'}, {"id-base", 1, 0, 'I'}, {"tamper", 1, 0, 't'},
        {"expect-tamper", 1, 0, 'T'}, {"delay-ms", 1, 0, 'D'}, {"lease-ms", 1, 0, 'L'},
        {"handshake-ms", 1, 0, 'H'}, {"deadline-ms", 1, 0, 'E'}, {"timeout-ms", 1, 0, 'o'},
        {"crypto-threads", 1, 0, 'C'}, {"allow-fail", 0, 0, 'a'}, {"no-integrity", 0, 0, 'x'},
        {"verbose", 0, 0, 'v'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "v", lo, NULL)) != -1) {
        switch (ch) {
        case 'r': o.role = optarg; break;
        case 'i': o.kv_ip = optarg; break;
        case 'p': o.kv_port = (unsigned)atoi(optarg); break;
        case 'c': o.connect = optarg; break;
        case 'd':
            if (sscanf(optarg, "%u-%u", &o.dport_lo, &o.dport_hi) != 2)
                usage();
            break;
        case 'k': o.psk = optarg; break;
        case 'K': o.key_id = optarg; break;
        case 'b': o.block_bytes = strtoull(optarg, NULL, 0); break;
        case 'n': o.pool_blocks = (uint32_t)atoi(optarg); break;
        case 'N': o.requests = (uint32_t)atoi(optarg); break;
        case 'M': o.inflight = (uint32_t)atoi(optarg); break;
        case 'B': o.max_blocks = (uint32_t)atoi(optarg); break;
        case 's': o.seed = strtoull(optarg, NULL, 0); break;
        case 'I': o.id_base = strtoull(optarg, NULL, 0); break;
        case 't': o.tamper = (uint32_t)atoi(optarg); break;
        case 'T': o.expect_tamper = (uint32_t)atoi(optarg); break;
        case 'D': o.delay_ms = (uint32_t)atoi(optarg); break;
        case 'L': o.lease_ms = (uint32_t)atoi(optarg); break;
        case 'H': o.hs_ms = (uint32_t)atoi(optarg); break;
        case 'E': o.deadline_ms = (uint32_t)atoi(optarg); break;
        case 'o': o.timeout_ms = (uint32_t)atoi(optarg); break;
        case 'C': o.crypto_threads = (uint32_t)atoi(optarg); break;
        case 'a': o.allow_fail = 1; break;
        case 'x': o.no_integrity = 1; break;
        case 'v': o.verbose = 1; break;
        default: usage();
        }
    }
    if (!o.role)
        usage();
    pd_log_init("kvx_peer");
    if (o.verbose)
        pd_log_set_level(PD_LOG_DEBUG);
    rng_state = mix(o.seed ^ (uint64_t)getpid() << 20);
    if (!strcmp(o.role, "silent") || !strcmp(o.role, "garbage")) {
        if (!o.connect)
            usage();
        return run_bad_client(!strcmp(o.role, "garbage"));
    }
    int sender = !strcmp(o.role, "send");
    if (!sender && (strcmp(o.role, "recv") || !o.connect))
        usage();
    if (!o.psk)
        usage();
    signal(SIGPIPE, SIG_IGN);
    char err[512];
    struct pd_keyring *kr = NULL;
    if (pd_keyring_open(o.psk, &kr, err, sizeof err) < 0) {
        fprintf(stderr, "kvx_peer: %s\n", err);
        return 1;
    }
    if (pool_init(&pool, o.pool_blocks, o.block_bytes) < 0) {
        fprintf(stderr, "kvx_peer: pool of %u x %" PRIu64 " bytes: out of memory\n",
                o.pool_blocks, o.block_bytes);
        return 1;
    }
    base = event_base_new();
    struct pd_kv_layout layout;
    layout_of(&layout);
    struct pd_kvx_params p = {
        .base = base, .role = sender ? PD_ROLE_P : PD_ROLE_D, .kv_ip = o.kv_ip,
        .kv_port = (uint16_t)o.kv_port, .data_port_lo = (uint16_t)o.dport_lo,
        .data_port_hi = (uint16_t)o.dport_hi, .keyring = kr, .key_id = o.key_id,
        .layout = &layout, .pool = pool.mem, .pool_blocks = pool.n,
        .crypto_threads = o.crypto_threads, .no_integrity = o.no_integrity,
        .lease_ms = o.lease_ms, .handshake_ms = o.hs_ms, .request_deadline_ms = o.deadline_ms,
        .tamper_every = o.tamper, .event = on_event, .arg = &sender,
    };
    int rc = pd_kvx_new(&p, &kvx, err, sizeof err);
    int status = 0;
    if (rc < 0) {
        fprintf(stderr, "kvx_peer: %s\n", err);
        status = 1;
        goto out;
    }
    if (sender) {
        if (pd_kvx_listen(kvx, err, sizeof err) < 0) {
            fprintf(stderr, "kvx_peer: %s\n", err);
            status = 1;
            goto out;
        }
        printf("listening %s:%u\n", o.kv_ip, pd_kvx_port(kvx));
        fflush(stdout);
        S.sig_term = evsignal_new(base, SIGTERM, on_signal, NULL);
        S.sig_int = evsignal_new(base, SIGINT, on_signal, NULL);
        event_add(S.sig_term, NULL);
        event_add(S.sig_int, NULL);
        event_base_dispatch(base);
        struct pd_kvx_stats s;
        pd_kvx_get_stats(kvx, &s);
        printf("{\"role\":\"send\",\"prefills\":%" PRIu64 ",\"ended_ok\":%" PRIu64
               ",\"ended_failed\":%" PRIu64 ",\"runs_acked\":%" PRIu64 ",\"runs_unacked\":%" PRIu64
               ",\"sessions_up\":%" PRIu64 ",\"sessions_down\":%" PRIu64
               ",\"free_blocks\":%u,\"pool_blocks\":%u,\"handshakes_ok\":%" PRIu64
               ",\"dropped_unauth\":%" PRIu64 ",\"blocks_sent\":%" PRIu64,
               S.prefills, S.ended_ok, S.ended_failed, S.runs_acked, S.runs_unacked,
               sessions_up, sessions_down, pool.n_free, pool.n, s.handshakes_ok,
               s.dropped_unauth, s.blocks_sent);
        printf(",\"hs_fail\":{");
        for (unsigned i = 0; i < PD_KVX_HSF_N; i++)
            printf("%s\"%s\":%" PRIu64, i ? "," : "", pd_kvx_hs_fail_name(i), s.hs_fail[i]);
        printf("}}\n");
        event_free(S.sig_term);
        event_free(S.sig_int);
        while (S.live) {
            struct sreq_state *st = (struct sreq_state *)S.live;
            st->waiting = 1; /* its blocks are the pool's; it goes with it */
            send_free_state(st);
        }
    } else {
        R.next_id = o.id_base;
        R.t0 = mono_ms();
        if (pd_kvx_peer_add(kvx, o.connect, &R.peer, err, sizeof err) < 0) {
            fprintf(stderr, "kvx_peer: %s\n", err);
            status = 1;
            goto out;
        }
        R.timer = event_new(base, -1, EV_PERSIST, recv_tick, NULL);
        struct timeval tv = {.tv_sec = 0, .tv_usec = 10000};
        event_add(R.timer, &tv);
        event_base_dispatch(base);
        event_free(R.timer);
        /* linger a moment so the last ACKs reach the sender before we close */
        struct timeval linger = {.tv_sec = 0, .tv_usec = 100000};
        lingering = 1;
        event_base_loopexit(base, &linger);
        event_base_dispatch(base);
        struct pd_kvx_stats s;
        pd_kvx_get_stats(kvx, &s);
        uint64_t expected_tamper = 0;
        if (o.expect_tamper)
            expected_tamper = R.by_reason[PD_R_INTEGRITY];
        printf("{\"role\":\"recv\",\"ucx\":\"%s\",\"ok\":%" PRIu64 ",\"failed\":%" PRIu64
               ",\"requests\":%u,\"bytes_checked\":%" PRIu64 ",\"mismatches\":%" PRIu64
               ",\"handed_on_bad\":%" PRIu64 ",\"sessions_up\":%" PRIu64
               ",\"sessions_down\":%" PRIu64 ",\"inflight_left\":%" PRIu64
               ",\"free_blocks\":%u,\"pool_blocks\":%u,\"integrity_failures\":%" PRIu64
               ",\"handshake_ns\":%" PRIu64 ",\"failed_by\":{",
               ucp_get_version_string(), R.ok, R.failed, o.requests, R.bytes_checked, R.mismatches, R.handed_on_bad,
               sessions_up, sessions_down, R.inflight, pool.n_free, pool.n,
               s.integrity_failures, s.handshake_ns);
        int first = 1;
        for (unsigned i = 0; i <= PD_R_MAX; i++)
            if (R.by_reason[i]) {
                printf("%s\"%s\":%" PRIu64, first ? "" : ",", pd_reason_name(i), R.by_reason[i]);
                first = 0;
            }
        printf("}}\n");
        while (R.live) { /* in flight at a timeout: kvx is freed below without events */
            struct rreq *q = (struct rreq *)R.live;
            live_remove(&R.live, &q->link);
            free(q->dest);
            free(q);
        }
        if (R.mismatches || R.handed_on_bad)
            status = 1;
        else if (!o.allow_fail && (R.failed != expected_tamper || R.ok + R.failed < o.requests))
            status = 1;
    }
out:
    fflush(stdout);
    kvx = pd_kvx_free(kvx);
    /* the receiver's requests still in flight at a timeout were freed with kvx;
     * their blocks were ours */
    event_base_free(base);
    munmap(pool.mem, (size_t)pool.n * pool.bb);
    free(pool.free_list);
    pd_keyring_free(kr);
    return status;
}
