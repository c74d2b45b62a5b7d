#include "remote.h"

#include "dlist.h"
#include "engine.h"
#include "keyring.h"
#include "kvx.h"
#include "log.h"
#include "kv_metrics.h"
#include "runtime.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PEER_GAUGES 16 /* the registry holds PD_METRICS_MAX series in all */
#define REMOVED_WHY "removed from the peer list by a reload"
/* Which peer computed which prompt blocks (the peer choice): a direct-mapped
 * table of block names, a newer entry taking an older one's slot. 2^16
 * slots of 40 bytes: 2.5 MiB, a million tokens of prompts at 16 a block. */
#define PREFIX_MAP_SLOTS (1u << 16)

/* failover reasons: a few classes of enum pd_reason, so the series stay few */
enum { FR_TIMEOUT, FR_INTEGRITY, FR_REFUSED, FR_TRANSFER, FR_PEER_ERROR, FR_NO_PEER, FR_OTHER,
       FR_N };
static const char *const fr_names[FR_N] = {"timeout", "integrity", "refused", "transfer",
                                           "peer_error", "no_peer", "other"};

struct peer {
    char addr[272];
    unsigned idx; /* its slot in r->peers, and its bit in a job's peers_failed */
    uint32_t gen; /* which peer in that slot (slots are reused after a reload) */
    struct pd_kvx_peer *kp;
    uint64_t outstanding; /* prompt tokens of transfers in flight */
    unsigned n_xfers; /* transfers in flight */
    struct pd_metric *up; /* NULL past MAX_PEER_GAUGES addresses */
    bool warned; /* "no session" logged since it was last up */
    bool removed; /* a reload dropped it: no new transfers; freed after the last */
};

/* kv_peer_up series by address: a series is never unregistered, so a peer
 * that leaves and comes back (or a later one at that address) takes its old
 * one; a removed peer's stays at 0 */
struct peer_gauge {
    char addr[272];
    struct pd_metric *up;
};

/* One transfer: a job's prompt on one peer, one epoch. */
struct rreq {
    struct dec_remote *r;
    struct pd_dnode link; /* in the in-flight list */
    struct dec_job *job; /* one reference */
    struct peer *peer;
    struct pd_kvx_req *req;
    uint32_t n_prompt, verified; /* blocks verified so far */
    uint64_t t0_ns;
    bool done, cancelled;
    uint32_t n_cached; /* prompt blocks decoded held: not asked for */
    uint8_t (*names)[PD_PREFIX_HASH_LEN]; /* (n_names) the prompt's full blocks', owned */
    uint32_t n_names;
    int reason; /* FAILED's, or ours (a bad DONE) */
    char detail[200];
    struct pd_sample_result first;
};

struct dec_remote {
    struct dec_remote_cfg cfg;
    struct pd_ratelimit rl_kv; /* the KV channel's warnings */
    struct dec_sched *sched;
    struct pd_keyring *keyring;
    char key_id[PD_KEY_ID_MAX + 1]; /* the key new sessions use (--kv-key-id, else the only
                                     * one); kvx reads it at each connect */
    char *psk_file;
    struct pd_kv_layout layout;
    struct pd_kvx *kvx;
    struct peer *peers[DEC_REMOTE_MAX_PEERS]; /* slots; NULL: free */
    unsigned next_slot; /* where the search for a free slot starts */
    struct pd_metrics *metrics;
    struct peer_gauge gauges[MAX_PEER_GAUGES];
    unsigned n_gauges;
    uint32_t block_size, n_vocab;
    uint64_t block_bytes;
    uint64_t next_id;
    unsigned rr; /* the slot picked last: the next pick's walk starts after it */
    struct pd_dlist inflight; /* rreq */
    bool stopping;
    bool twins; /* a GPU engine's staging: blocks are copied up and checked by kvx (twin pool) */

    struct pd_metric *m_bytes, *m_blocks, *m_xfer, *m_failover[FR_N];
    struct pd_metric *m_not_sent, *m_bytes_not_sent;
    struct pd_kv_metrics km;
    /* the peer choice's memory (PREFIX_MAP_SLOTS, allocated at the first
     * prefix recorded); slots picked by a keyed hash of the name, so a
     * client cannot aim its prompts at one slot */
    struct prefix_slot {
        uint8_t name[PD_PREFIX_HASH_LEN];
        uint32_t gen; /* the peer's; 0: empty */
        uint32_t idx;
    } *pmap;
    uint8_t pmap_key[crypto_shorthash_KEYBYTES];
    uint32_t next_gen;
};

static struct prefix_slot *pmap_slot(struct dec_remote *r, const uint8_t *name)
{
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, name, PD_PREFIX_HASH_LEN, r->pmap_key);
    return &r->pmap[((uint32_t)h[0] | (uint32_t)h[1] << 8) & (PREFIX_MAP_SLOTS - 1)];
}

/* peer computed these blocks (its cache holds them now, until it evicts) */
static void pmap_record(struct dec_remote *r, const struct peer *peer,
                        const uint8_t (*names)[PD_PREFIX_HASH_LEN], uint32_t n)
{
    if (!r->pmap && !(r->pmap = calloc(PREFIX_MAP_SLOTS, sizeof(*r->pmap))))
        return; /* the choice goes by load alone */
    for (uint32_t i = 0; i < n; i++) {
        struct prefix_slot *sl = pmap_slot(r, names[i]);
        memcpy(sl->name, names[i], PD_PREFIX_HASH_LEN);
        sl->gen = peer->gen;
        sl->idx = peer->idx;
    }
}

/* For each live peer, how many of the prompt's first blocks it computed
 * (the longest prefix on record): match[slot]. */
static void pmap_match(struct dec_remote *r, const uint8_t (*names)[PD_PREFIX_HASH_LEN],
                       uint32_t n, uint32_t *match)
{
    memset(match, 0, DEC_REMOTE_MAX_PEERS * sizeof(*match));
    for (uint32_t i = n; r->pmap && i > 0; i--) {
        const struct prefix_slot *sl = pmap_slot(r, names[i - 1]);
        const struct peer *p = sl->gen ? r->peers[sl->idx] : NULL;
        if (p && p->gen == sl->gen && !match[sl->idx] &&
            memcmp(sl->name, names[i - 1], PD_PREFIX_HASH_LEN) == 0)
            match[sl->idx] = i;
    }
}

static int fr_class(int reason)
{
    switch (reason) {
    case PD_R_TIMEOUT: return FR_TIMEOUT;
    case PD_R_INTEGRITY: return FR_INTEGRITY;
    case PD_R_OVERLOADED: case PD_R_TOO_LARGE: case PD_R_INVALID_REQUEST: case PD_R_SHUTDOWN:
    case PD_R_AUTH: case PD_R_LAYOUT: case PD_R_MODEL: case PD_R_VERSION:
        return FR_REFUSED;
    case PD_R_TRANSFER: case PD_R_PROTOCOL: case PD_R_UNKNOWN_REQUEST: return FR_TRANSFER;
    case PD_R_COMPUTE: case PD_R_INTERNAL: return FR_PEER_ERROR;
    default: return FR_OTHER;
    }
}

static const char *failover_name(enum dec_failover f)
{
    return f == DEC_FAILOVER_RETRY ? "another peer, else local prefill"
           : f == DEC_FAILOVER_LOCAL ? "local prefill" : "the request fails";
}

/* ---- peers ---- */

static struct pd_metric *peer_gauge(struct dec_remote *r, const char *addr)
{
    for (unsigned i = 0; i < r->n_gauges; i++)
        if (!strcmp(r->gauges[i].addr, addr))
            return r->gauges[i].up;
    char labels[320], esc[300];
    if (r->n_gauges == MAX_PEER_GAUGES || pd_metrics_escape(addr, esc, sizeof(esc)) < 0)
        return NULL;
    snprintf(labels, sizeof(labels), "peer=\"%s\"", esc);
    struct peer_gauge *g = &r->gauges[r->n_gauges];
    if (!(g->up = pd_metrics_gauge(r->metrics, "pdserve:kv_peer_up", labels,
                                   "Prefill peer with a session (1) or without (0).")))
        return NULL;
    snprintf(g->addr, sizeof(g->addr), "%s", addr);
    r->n_gauges++;
    return g->up;
}

/* A new peer in a free slot; kvx starts connecting at once. */
static int peer_add(struct dec_remote *r, const char *addr, struct peer **out, char *err,
                    size_t errlen)
{
    unsigned slot = DEC_REMOTE_MAX_PEERS;
    /* round the slots: a slot (a bit in peers_failed) a removed peer had
     * is reused as late as possible */
    for (unsigned k = 0; k < DEC_REMOTE_MAX_PEERS && slot == DEC_REMOTE_MAX_PEERS; k++)
        if (!r->peers[(r->next_slot + k) % DEC_REMOTE_MAX_PEERS])
            slot = (r->next_slot + k) % DEC_REMOTE_MAX_PEERS;
    if (slot == DEC_REMOTE_MAX_PEERS) {
        snprintf(err, errlen, "--prefill: at most %d peers (removed ones count until their "
                 "transfers are over)", DEC_REMOTE_MAX_PEERS);
        return -E2BIG;
    }
    struct peer *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    p->idx = slot;
    p->gen = ++r->next_gen;
    snprintf(p->addr, sizeof(p->addr), "%s", addr);
    char e2[256];
    int rc = pd_kvx_peer_add(r->kvx, addr, &p->kp, e2, sizeof(e2));
    if (rc < 0) {
        snprintf(err, errlen, "--prefill %s: %s", addr, e2);
        free(p);
        return rc;
    }
    p->up = peer_gauge(r, addr);
    r->peers[slot] = p;
    r->next_slot = (slot + 1) % DEC_REMOTE_MAX_PEERS;
    *out = p;
    return 0;
}

/* No transfer of its own is left: close the session, free the slot. */
static void peer_free(struct dec_remote *r, struct peer *p)
{
    pd_kvx_peer_remove(p->kp, REMOVED_WHY);
    pd_metric_set(p->up, 0);
    r->peers[p->idx] = NULL;
    free(p);
}

/* ---- reports to the compute thread ---- */

static void report_failed(struct dec_remote *r, struct dec_job *j, int fr, bool exhausted,
                          int status, const char *msg)
{
    pd_metric_add(r->m_failover[fr], 1);
    pd_log(PD_LOG_INFO, "%s: %s; failover: %s", j->id, msg, failover_name(r->cfg.failover));
    dec_sched_remote_failed(r->sched, j, exhausted, status, msg);
}

/* The transfer is over and kvx holds none of its blocks any more. */
static void rreq_released(struct dec_remote *r, struct rreq *q)
{
    struct dec_job *j = q->job;
    struct peer *peer = q->peer;
    pd_dlist_remove(&r->inflight, &q->link);
    peer->outstanding -= q->n_prompt;
    peer->n_xfers--;
    j->remote_req = NULL;
    if (q->done && !q->reason) {
        pmap_record(r, peer, q->names, q->n_names);
        pd_metric_add(r->m_not_sent, q->n_cached);
        pd_metric_add(r->m_bytes_not_sent, (double)q->n_cached * (double)r->block_bytes);
        dec_sched_remote_done(r->sched, j, &q->first, r->twins);
    } else if (q->cancelled || q->reason == PD_R_CANCELLED) {
        dec_sched_remote_failed(r->sched, j, true, 499, "cancelled");
    } else {
        char msg[600];
        j->peers_failed |= UINT64_C(1) << q->peer->idx;
        snprintf(msg, sizeof(msg), "prefill peer %s failed: %s%s%s", q->peer->addr,
                 pd_reason_name((unsigned)q->reason), q->detail[0] ? ": " : "", q->detail);
        report_failed(r, j, fr_class(q->reason), false, 502, msg);
    }
    dec_job_unref(j);
    free(q->names);
    free(q);
    if (peer->removed && !peer->n_xfers)
        peer_free(r, peer);
}

/* ---- kvx events ---- */

static void take_done(struct dec_remote *r, struct rreq *q, const struct pd_done *d)
{
    q->done = true;
    pd_metric_observe(r->m_xfer, (double)(pd_now_ns() - q->t0_ns) * 1e-9);
    if (d->n_prompt != q->n_prompt || d->token >= r->n_vocab || d->n_top > PD_MAX_LOGPROBS) {
        q->reason = PD_R_PROTOCOL;
        snprintf(q->detail, sizeof(q->detail), "DONE does not fit the request (token %u, %u "
                 "prompt tokens, %u alternatives)", d->token, d->n_prompt, d->n_top);
        return;
    }
    q->first.token = (int32_t)d->token;
    q->first.logprob = d->logprob;
    q->first.n_top = d->n_top;
    for (uint32_t i = 0; i < d->n_top; i++) {
        if (d->top[i].token >= r->n_vocab) {
            q->reason = PD_R_PROTOCOL;
            snprintf(q->detail, sizeof(q->detail), "DONE names token %u", d->top[i].token);
            return;
        }
        q->first.top[i] = (struct pd_token_logprob){(int32_t)d->top[i].token, d->top[i].logprob};
    }
}

/* Rows of the prompt's log-probabilities into the job's (kvx checked the
 * positions, each once, and their number of alternatives; the tokens are
 * ours to check). The compute thread leaves them alone while the job is
 * REMOTE. */
static void take_prompt_lp(struct dec_remote *r, struct rreq *q, const struct pd_prompt_lp *lp)
{
    struct dec_job *j = q->job;
    if (!j->plp || (uint64_t)lp->first + lp->n_rows > j->n_prompt || q->reason)
        return; /* kvx refuses those; a bad token seen before fails the request already */
    for (uint32_t i = 0; i < lp->n_rows; i++) {
        struct pd_lp_row row;
        struct pd_sample_result *d = &j->plp[lp->first + i];
        pd_prompt_lp_row(lp, i, &row);
        d->token = j->prompt[lp->first + i];
        d->logprob = row.logprob;
        d->n_top = lp->n_top;
        for (uint32_t k = 0; k < lp->n_top; k++) {
            if (row.top[k].token >= r->n_vocab) {
                q->reason = PD_R_PROTOCOL;
                snprintf(q->detail, sizeof(q->detail), "PROMPT_LP names token %u",
                         row.top[k].token);
                return; /* the transfer runs out; its release reports the failure */
            }
            d->top[k] = (struct pd_token_logprob){(int32_t)row.top[k].token, row.top[k].logprob};
        }
    }
}

static void kvx_event(void *arg, const struct pd_kvx_event *ev)
{
    struct dec_remote *r = arg;
    struct rreq *q = ev->udata;
    if (pd_kv_log_warning(ev, &r->rl_kv))
        return;
    switch (ev->type) {
    case PD_KVX_EV_SESSION_UP:
        pd_kv_log_session_up(ev, "prefill peer ");
        break;
    case PD_KVX_EV_SESSION_DOWN:
        pd_log(PD_LOG_NOTICE, "KV session down: prefill peer %s: %s%s%s",
               ev->peer_addr ? ev->peer_addr : "?", pd_reason_name((unsigned)ev->reason),
               ev->detail ? ": " : "", ev->detail ? ev->detail : "");
        break;
    case PD_KVX_EV_VERIFIED:
        if (q && ev->blocks > q->verified) {
            uint32_t n = ev->blocks - q->verified;
            q->verified = ev->blocks;
            pd_metric_add(r->m_blocks, n);
            pd_metric_add(r->m_bytes, (double)n * (double)r->block_bytes);
        }
        break;
    case PD_KVX_EV_PROMPT_LP:
        if (q)
            take_prompt_lp(r, q, ev->prompt_lp);
        break;
    case PD_KVX_EV_DONE:
        if (q)
            take_done(r, q, ev->done);
        break;
    case PD_KVX_EV_FAILED:
        if (q) {
            q->reason = ev->reason ? ev->reason : PD_R_INTERNAL;
            snprintf(q->detail, sizeof(q->detail), "%s", ev->detail ? ev->detail : "");
        }
        break;
    case PD_KVX_EV_RELEASED:
        if (q)
            rreq_released(r, q);
        break;
    default:
        break;
    }
}

/* ---- starting and cancelling ---- */

/* The healthy peer where the prompt costs least: the prompt tokens it has
 * outstanding, plus those of this prompt it must compute, the blocks it
 * computed for an earlier prompt (pmap) being likely in its cache still. A
 * cold or failed peer is only a miss: it computes the whole prompt. Ties go
 * round the peers in turn (short prompts finish before the next arrives, so
 * the costs are often alike). */
static struct peer *pick(struct dec_remote *r, uint64_t exclude, const struct dec_event *ev,
                         uint32_t n_prompt)
{
    struct peer *best = NULL;
    unsigned best_i = 0;
    uint64_t best_cost = 0;
    uint32_t match[DEC_REMOTE_MAX_PEERS];
    pmap_match(r, (const uint8_t(*)[PD_PREFIX_HASH_LEN])ev->names, ev->n_names, match);
    /* from the slot after the last one picked: slots are sparse (64 of
     * them, peers wherever a reload put them), so a counter would wrap onto
     * the lowest live slot for most of its values */
    for (unsigned k = 1; k <= DEC_REMOTE_MAX_PEERS; k++) {
        unsigned i = (r->rr + k) % DEC_REMOTE_MAX_PEERS;
        struct peer *p = r->peers[i];
        if (!p || p->removed || (exclude >> i & 1) || !pd_kvx_peer_up(p->kp))
            continue;
        uint64_t have = (uint64_t)match[i] * r->block_size;
        uint64_t cost = p->outstanding + (have < n_prompt ? n_prompt - have : 0);
        if (!best || cost < best_cost)
            best = p, best_i = i, best_cost = cost;
    }
    if (best)
        r->rr = best_i;
    return best;
}

void dec_remote_start(struct dec_remote *r, const struct dec_event *ev)
{
    struct dec_job *j = ev->job;
    char err[256], msg[600];
    if (r->stopping) {
        dec_sched_remote_failed(r->sched, j, true, 503, "decoded is stopping");
        return;
    }
    struct rreq *q = calloc(1, sizeof(*q));
    uint32_t *toks = malloc((size_t)j->n_prompt * sizeof(*toks));
    if (!q || !toks) {
        free(q);
        free(toks);
        report_failed(r, j, FR_OTHER, true, 503, "out of memory starting the remote prefill");
        return;
    }
    for (uint32_t i = 0; i < j->n_prompt; i++)
        toks[i] = (uint32_t)j->prompt[i];
    /* the bias part: the same layout as the sampler's entries, ids checked there */
    struct pd_bias bias[PD_MAX_LOGIT_BIAS];
    for (uint32_t i = 0; i < j->sampling.n_bias; i++)
        bias[i] = (struct pd_bias){(uint32_t)j->sampling.bias[i].token, j->sampling.bias[i].bias};
    if (!j->remote_id)
        j->remote_id = ++r->next_id;
    struct pd_prefill p = {
        .request_id = j->remote_id, .epoch = ev->epoch, .n_tokens = j->n_prompt,
        .block_size = r->block_size, .temperature = j->sampling.temperature,
        .top_p = j->sampling.top_p, .min_p = j->sampling.min_p,
        .top_k = j->sampling.top_k > 0 ? (uint32_t)j->sampling.top_k : 0,
        .presence_penalty = j->sampling.presence_penalty,
        .frequency_penalty = j->sampling.frequency_penalty,
        .repetition_penalty = j->sampling.repetition_penalty,
        .n_logprobs = j->sampling.n_logprobs, .seed = j->sampling.seed, .tokens = toks,
        .flags = PD_PREFILL_F_PREFIX | (j->sampling.n_bias ? PD_PREFILL_F_BIAS : 0) |
                 (j->plp ? PD_PREFILL_F_PROMPT_LP : 0) | (ev->mask ? PD_PREFILL_F_MASK : 0),
        .mask_words = ev->mask ? ev->mask_words : 0, .mask = ev->mask,
        .n_cached = ev->n_cached, .n_bias = j->sampling.n_bias,
        .bias = j->sampling.n_bias ? bias : NULL};
    memcpy(p.salt, j->salt, sizeof(p.salt));
    memcpy(p.cached_name, ev->cached_name, sizeof(p.cached_name));
    snprintf(p.xrid, sizeof(p.xrid), "%s", j->id);
    q->r = r;
    q->n_prompt = j->n_prompt;
    q->n_cached = ev->n_cached;
    q->t0_ns = pd_now_ns();
    dec_job_ref(j);
    q->job = j;
    uint64_t tried = j->peers_failed;
    struct peer *peer;
    int rc = -ENOTCONN;
    while ((peer = pick(r, tried, ev, j->n_prompt))) {
        q->peer = peer;
        rc = pd_kvx_request(peer->kp, &p, ev->blocks, r->twins ? ev->twins : NULL, ev->n_blocks, q,
                            &q->req, err, sizeof(err));
        /* a 1.0 peer: the prompt in full (a bias or prompt log-probabilities it
         * cannot give: refused, the next peer) */
        if (rc == -EPROTONOSUPPORT && !p.n_cached && !(p.flags & ~PD_PREFILL_F_PREFIX)) {
            p.flags &= (uint16_t)~PD_PREFILL_F_PREFIX;
            memset(p.salt, 0, sizeof(p.salt));
            rc = pd_kvx_request(peer->kp, &p, ev->blocks, r->twins ? ev->twins : NULL,
                                ev->n_blocks, q, &q->req, err, sizeof(err));
            p.flags |= PD_PREFILL_F_PREFIX;
            memcpy(p.salt, j->salt, sizeof(p.salt));
        }
        if (rc == 0)
            break;
        pd_log(PD_LOG_INFO, "%s: prefill peer %s refused the request: %s", j->id, peer->addr,
               err);
        tried |= UINT64_C(1) << peer->idx;
    }
    free(toks);
    if (rc < 0) {
        dec_job_unref(j);
        free(q);
        size_t o = (size_t)snprintf(msg, sizeof(msg), "no healthy prefill peer for the request");
        const char *sep = ":";
        for (unsigned i = 0; i < DEC_REMOTE_MAX_PEERS && o < sizeof(msg); i++) {
            const struct peer *pp = r->peers[i];
            if (!pp || pp->removed)
                continue;
            o += (size_t)snprintf(msg + o, sizeof(msg) - o, "%s %s: %s", sep, pp->addr,
                                  (j->peers_failed >> i & 1) ? "failed"
                                  : (tried >> i & 1) ? "refused"
                                  : pd_kvx_peer_up(pp->kp) ? "up" : "down");
            sep = ",";
        }
        if (*sep == ':')
            snprintf(msg + o, sizeof(msg) - o, ": the peer list is empty");
        report_failed(r, j, FR_NO_PEER, true, 503, msg);
        return;
    }
    peer->outstanding += j->n_prompt;
    peer->n_xfers++;
    j->remote_req = q;
    if (ev->n_names && (q->names = malloc((size_t)ev->n_names * sizeof(*q->names)))) {
        memcpy(q->names, ev->names, (size_t)ev->n_names * sizeof(*q->names));
        q->n_names = ev->n_names;
    }
    pd_dlist_push(&r->inflight, &q->link);
    pd_log(PD_LOG_DEBUG, "%s: prefill of %u tokens on %s (request %llu, epoch %u)", j->id,
           j->n_prompt, peer->addr, (unsigned long long)j->remote_id, ev->epoch);
}

void dec_remote_cancel(struct dec_remote *r, struct dec_job *j)
{
    struct rreq *q = j->remote_req;
    (void)r;
    if (!q || q->cancelled || !q->req)
        return;
    q->cancelled = true;
    pd_kvx_cancel(q->req); /* FAILED, then RELEASED: the report goes then */
}

void dec_remote_stop(struct dec_remote *r)
{
    if (r)
        r->stopping = true;
}

/* ---- metrics, keys ---- */

void dec_remote_scrape(struct dec_remote *r)
{
    if (!r)
        return;
    pd_kv_metrics_scrape(&r->km, r->kvx);
    for (unsigned i = 0; i < DEC_REMOTE_MAX_PEERS; i++)
        if (r->peers[i])
            pd_metric_set(r->peers[i]->up, pd_kvx_peer_up(r->peers[i]->kp));
}

void dec_remote_tick(struct dec_remote *r)
{
    if (!r)
        return;
    for (unsigned i = 0; i < DEC_REMOTE_MAX_PEERS; i++) {
        struct peer *p = r->peers[i];
        if (!p || p->removed)
            continue;
        if (pd_kvx_peer_up(p->kp)) {
            p->warned = false;
        } else if (!p->warned) {
            /* a responder that refuses a handshake (wrong key, other model)
             * just closes: its own log and metrics say why */
            p->warned = true;
            pd_log(PD_LOG_WARN, "prefill peer %s: no KV session (not running, unreachable, or "
                   "refusing the handshake: see its log and pdserve:kv_handshake_failures_total "
                   "there); prompts fail over (%s), reconnecting", p->addr,
                   failover_name(r->cfg.failover));
        }
    }
}

unsigned dec_remote_n_peers(const struct dec_remote *r)
{
    unsigned n = 0;
    for (unsigned i = 0; r && i < DEC_REMOTE_MAX_PEERS; i++)
        n += r->peers[i] && !r->peers[i]->removed;
    return n;
}

void dec_remote_reload_keys(struct dec_remote *r)
{
    char err[512];
    if (pd_keyring_reload(r->keyring, err, sizeof(err)) < 0)
        pd_log(PD_LOG_ERR, "SIGHUP: keys not reloaded, the old ones stay: %s", err);
    else
        pd_log(PD_LOG_NOTICE, "SIGHUP: %zu keys loaded from %s (new sessions use key %s)",
               pd_keyring_count(r->keyring), r->psk_file, r->key_id);
}

/* Appends ", ADDR" (or "ADDR" first) to a NOTICE line under construction;
 * a line that no longer fits ends in "...". */
static void line_add(char *buf, size_t cap, size_t *o, const char *s)
{
    if (*o >= cap)
        return;
    int n = snprintf(buf + *o, cap - *o, "%s", s);
    *o += n > 0 ? (size_t)n : 0;
    if (*o >= cap && cap > 4)
        memcpy(buf + cap - 4, "...", 4);
}

/* A peer list decoded can take: at most DEC_REMOTE_MAX_PEERS, no address
 * twice (two sessions to one prefilld would only double its share). */
static int check_peers(const char *const *peers, unsigned n_peers, char *err, size_t errlen)
{
    if (n_peers > DEC_REMOTE_MAX_PEERS) {
        snprintf(err, errlen, "--prefill: at most %d peers", DEC_REMOTE_MAX_PEERS);
        return -E2BIG;
    }
    for (unsigned i = 0; i < n_peers; i++)
        for (unsigned j = 0; j < i; j++)
            if (!strcmp(peers[i], peers[j])) {
                snprintf(err, errlen, "--prefill: %s is named twice", peers[i]);
                return -EINVAL;
            }
    return 0;
}

int dec_remote_reload(struct dec_remote *r, const char *const *peers, unsigned n_peers,
                      const char *key_id, char *err, size_t errlen)
{
    if (key_id && strcmp(key_id, r->key_id)) {
        uint8_t key[PD_PSK_LEN];
        int rc = pd_keyring_get(r->keyring, key_id, key, NULL);
        memset(key, 0, sizeof(key));
        if (rc < 0) {
            snprintf(err, errlen, "--kv-key-id %s: no such key in %s", key_id, r->psk_file);
            return -ENOENT;
        }
        if (strlen(key_id) >= sizeof(r->key_id)) {
            snprintf(err, errlen, "--kv-key-id %s: longer than %d bytes", key_id,
                     PD_KEY_ID_MAX);
            return -EINVAL;
        }
    }
    int rc = check_peers(peers, n_peers, err, errlen);
    if (rc < 0)
        return rc;
    /* each entry keeps a peer at its address (one still up first, else one
     * that was finishing its transfers after an earlier reload); the rest
     * are new. Nothing changes until every new one is added. */
    struct peer *keep[DEC_REMOTE_MAX_PEERS] = {0}; /* by entry */
    bool taken[DEC_REMOTE_MAX_PEERS] = {0}; /* by slot */
    for (int pass = 0; pass < 2; pass++)
        for (unsigned e = 0; e < n_peers; e++)
            for (unsigned i = 0; i < DEC_REMOTE_MAX_PEERS && !keep[e]; i++) {
                struct peer *p = r->peers[i];
                if (p && !taken[i] && p->removed == (pass == 1) && !strcmp(p->addr, peers[e])) {
                    keep[e] = p;
                    taken[i] = true;
                }
            }
    /* the key first: the new peers' handshakes start as they are added */
    char old_key[sizeof(r->key_id)];
    bool new_key = key_id && strcmp(key_id, r->key_id);
    memcpy(old_key, r->key_id, sizeof(old_key));
    if (new_key)
        snprintf(r->key_id, sizeof(r->key_id), "%s", key_id);
    struct peer *added[DEC_REMOTE_MAX_PEERS] = {0};
    unsigned n_added = 0;
    for (unsigned e = 0; e < n_peers; e++) {
        if (keep[e])
            continue;
        rc = peer_add(r, peers[e], &added[n_added], err, errlen);
        if (rc < 0) {
            while (n_added)
                peer_free(r, added[--n_added]);
            memcpy(r->key_id, old_key, sizeof(old_key));
            return rc;
        }
        taken[added[n_added]->idx] = true;
        n_added++;
    }
    /* committed: from here nothing fails */
    char line[1024];
    size_t o = 0;
    unsigned n_same = 0, n_removed = 0;
    line_add(line, sizeof(line), &o, "SIGHUP: prefill peers:");
    for (unsigned i = 0; i < n_added; i++) {
        line_add(line, sizeof(line), &o, i ? ", " : " added ");
        line_add(line, sizeof(line), &o, added[i]->addr);
    }
    for (unsigned e = 0; e < n_peers; e++)
        if (keep[e] && keep[e]->removed) {
            keep[e]->removed = false; /* back before its transfers were over */
            line_add(line, sizeof(line), &o, n_added++ ? ", " : " added ");
            line_add(line, sizeof(line), &o, keep[e]->addr);
        } else if (keep[e]) {
            n_same++;
        }
    for (unsigned i = 0; i < DEC_REMOTE_MAX_PEERS; i++) {
        struct peer *p = r->peers[i];
        if (!p || taken[i] || p->removed)
            continue;
        char what[320];
        if (p->n_xfers)
            snprintf(what, sizeof(what), "%s (closing after %u transfer%s)", p->addr,
                     p->n_xfers, p->n_xfers == 1 ? "" : "s");
        else
            snprintf(what, sizeof(what), "%s (closed)", p->addr);
        line_add(line, sizeof(line), &o,
                 n_removed++ ? ", " : n_added ? "; removed " : " removed ");
        line_add(line, sizeof(line), &o, what);
        p->removed = true;
        if (!p->n_xfers)
            peer_free(r, p);
    }
    if (!n_added && !n_removed)
        line_add(line, sizeof(line), &o, " unchanged");
    char tail[128];
    snprintf(tail, sizeof(tail), "; %u kept", n_same);
    line_add(line, sizeof(line), &o, tail);
    if (new_key) {
        snprintf(tail, sizeof(tail), "; new sessions use key %s", r->key_id);
        line_add(line, sizeof(line), &o, tail);
    }
    pd_log(PD_LOG_NOTICE, "%s", line);
    return 0;
}

static int metrics_init(struct dec_remote *r, struct pd_metrics *m)
{
    static const double secs_b[] = {0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10,
                                    30, 60};
    r->m_bytes = pd_metrics_counter(m, "pdserve:kv_bytes_received_total", NULL,
                                    "KV block bytes received from prefill peers and verified.");
    r->m_blocks = pd_metrics_counter(m, "pdserve:kv_blocks_received_total", NULL,
                                     "KV blocks received from prefill peers and verified.");
    r->m_xfer = pd_metrics_histogram(m, "pdserve:kv_transfer_seconds",
                                     "Remote prefill: PREFILL sent to DONE received.", secs_b,
                                     sizeof(secs_b) / sizeof(*secs_b));
    r->m_not_sent = pd_metrics_counter(
        m, "pdserve:kv_blocks_not_sent_total", NULL,
        "Prompt KV blocks not asked of prefill peers: this decoded held them (prefix caching).");
    r->m_bytes_not_sent = pd_metrics_counter(m, "pdserve:kv_bytes_not_sent_total", NULL,
                                             "Bytes of those blocks.");
    pd_kv_metrics_init(&r->km, m, PD_ROLE_D);
    for (int i = 0; i < FR_N; i++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "reason=\"%s\"", fr_names[i]);
        r->m_failover[i] = pd_metrics_counter(m, "pdserve:prefill_failovers_total", labels,
                                              "Remote prefills that failed or could not start, "
                                              "handed to --prefill-failover, by reason.");
    }
    return r->m_failover[FR_N - 1] ? 0 : -ENOMEM;
}

/* ---- lifecycle ---- */

int dec_remote_new(const struct dec_remote_cfg *cfg, struct event_base *base,
                   struct pd_engine *engine, struct pd_metrics *metrics, struct dec_remote **out,
                   char *err, size_t errlen)
{
    int rc = check_peers(cfg->peers, cfg->n_peers, err, errlen);
    if (rc < 0)
        return rc;
    if (!cfg->psk_file) {
        snprintf(err, errlen, "--kv-psk-file is required with --prefill (the same key file "
                 "as the prefill peers'; prefilld --gen-psk FILE makes one)");
        return -EINVAL;
    }
    struct dec_remote *r = calloc(1, sizeof(*r));
    if (r)
        r->rl_kv = (struct pd_ratelimit)PD_RATELIMIT_INIT(5000, 10);
    if (!r || !(r->psk_file = strdup(cfg->psk_file))) {
        free(r);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->cfg = *cfg;
    randombytes_buf(r->pmap_key, sizeof(r->pmap_key));
    /* the caller's strings are not kept (a reload frees them) */
    r->cfg.peers = NULL;
    r->cfg.n_peers = 0;
    r->cfg.kv_ip = r->cfg.psk_file = r->cfg.key_id = NULL;
    struct pd_kvcache *kc = pd_engine_kv_channel_pool(engine); /* the staging on a GPU */
    r->block_size = pd_kvcache_layout(kc)->block_size;
    r->block_bytes = pd_kvcache_block_bytes(kc);
    r->n_vocab = pd_engine_n_vocab(engine);
    pd_engine_kv_layout(engine, &r->layout);
    rc = pd_keyring_open(cfg->psk_file, &r->keyring, err, errlen);
    if (rc < 0)
        goto fail;
    if (cfg->key_id) {
        uint8_t key[PD_PSK_LEN];
        if (pd_keyring_get(r->keyring, cfg->key_id, key, NULL) < 0) {
            snprintf(err, errlen, "--kv-key-id %s: no such key in %s", cfg->key_id,
                     cfg->psk_file);
            rc = -ENOENT;
            goto fail;
        }
        memset(key, 0, sizeof(key));
        snprintf(r->key_id, sizeof(r->key_id), "%s", cfg->key_id);
    } else if (pd_keyring_count(r->keyring) != 1) {
        snprintf(err, errlen, "%s holds %zu keys: say which with --kv-key-id", cfg->psk_file,
                 pd_keyring_count(r->keyring));
        rc = -EINVAL;
        goto fail;
    } else if ((rc = pd_keyring_id_at(r->keyring, 0, r->key_id, sizeof(r->key_id))) < 0) {
        snprintf(err, errlen, "%s: cannot read the key id", cfg->psk_file);
        goto fail;
    }
    /* the key is pinned by id: a reload that adds the next key for a
     * rotation must not leave kvx with a ring of two and no choice */
    struct pd_kvx_params kp = {
        .base = base, .role = PD_ROLE_D, .kv_ip = cfg->kv_ip, .data_port_lo = cfg->data_port_lo,
        .data_port_hi = cfg->data_port_hi, .keyring = r->keyring, .key_id = r->key_id,
        .layout = &r->layout, .crypto_threads = cfg->crypto_threads,
        .no_integrity = cfg->no_integrity, .lease_ms = cfg->lease_ms,
        .handshake_ms = cfg->handshake_ms, .request_deadline_ms = cfg->request_deadline_ms,
        .event = kvx_event, .arg = r};
    /* staged with tags on the GPU, the blocks go up into the device pool as they
     * land and are checked there (verified where the engine reads them) */
    r->twins = pd_runtime_kv_pools(engine, cfg->gpu_tags, !cfg->no_integrity, &kp);
    if ((rc = pd_kvx_new(&kp, &r->kvx, err, errlen)) < 0)
        goto fail;
    char line[256];
    pd_kvx_tags_line(r->kvx, line, sizeof(line));
    pd_log(PD_LOG_INFO, "%s", line);
    for (unsigned i = 0; i < cfg->n_peers; i++) {
        struct peer *p;
        if ((rc = peer_add(r, cfg->peers[i], &p, err, errlen)) < 0)
            goto fail;
    }
    /* the series last: a reload whose peer list fails here registers none
     * (a series is never unregistered) */
    if ((rc = metrics_init(r, metrics)) < 0) {
        snprintf(err, errlen, "too many metric series");
        goto fail;
    }
    r->metrics = metrics;
    for (unsigned i = 0; i < DEC_REMOTE_MAX_PEERS; i++)
        if (r->peers[i])
            r->peers[i]->up = peer_gauge(r, r->peers[i]->addr);
    *out = r;
    return 0;
fail:
    dec_remote_free(r);
    return rc;
}

void dec_remote_set_sched(struct dec_remote *r, struct dec_sched *sched)
{
    if (r)
        r->sched = sched;
}

struct dec_remote *dec_remote_free(struct dec_remote *r)
{
    if (!r)
        return NULL;
    r->kvx = pd_kvx_free(r->kvx); /* every receive over; no events */
    while (r->inflight.head) {
        struct rreq *q = PD_DNODE_ENTRY(r->inflight.head, struct rreq, link);
        pd_dlist_remove(&r->inflight, &q->link);
        dec_job_unref(q->job);
        free(q->names);
        free(q);
    }
    for (unsigned i = 0; i < DEC_REMOTE_MAX_PEERS; i++)
        free(r->peers[i]); /* their kvx handles went with kvx */
    pd_keyring_free(r->keyring);
    free(r->psk_file);
    free(r->pmap);
    free(r);
    return NULL;
}
