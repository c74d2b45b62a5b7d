/* prefilld: the prefill daemon. It listens on --kv-ip:--kv-port for decode
 * peers (common/kvchan/kvx: authenticated sessions), computes the KV cache of
 * the prompts they send (prefilld/scheduler.c: the compute thread), ships the
 * blocks back as they become final, and answers with the first token. This
 * file is prefilld's own part: its options, the KV channel's requests and
 * the scheduler's events; the loop, signals, drain, watchdog and admin
 * endpoint are the daemon runtime's (common/daemon/runtime.h).
 *
 * Threads: the loop (libevent: kvx, admin HTTP, signals, timers) and the
 * compute thread; crypto workers inside kvx.
 */
#include "cfg.h"
#include "engine.h"
#include "errf.h"
#include "keyring.h"
#include "kvx.h"
#include "log.h"
#include "kv_metrics.h"
#include "model.h"
#include "notify.h"
#include "runtime.h"
#include "scheduler.h"

#include <errno.h>
#include <event2/event.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pf_cfg {
    char *model;
    int load_format;
    char *model_shape;
    int64_t seed;
    int device, gpu_weight_dtype, cpu_weight_dtype;
    int64_t threads;
    double gpu_memory_utilization;
    bool cuda_graphs;
    uint64_t kv_staging_memory;
    char *kv_ip;
    int64_t kv_port;
    char *kv_data_ports;
    char *kv_psk_file;
    int64_t kv_lease_ms;
    int64_t kv_handshake_ms;
    int64_t kv_crypto_threads;
    bool kv_gpu_tags;
    bool kv_direct;
    bool kv_integrity;
    bool enable_prefix_caching;
    int64_t kv_max_sessions;
    uint64_t kv_cache_memory;
    int kv_cache_dtype;
    int64_t block_size;
    int64_t max_num_batched_tokens;
    int64_t max_model_len;
    int64_t max_num_seqs;
    int64_t max_waiting;
    char *admin_host;
    int64_t admin_port;
    int64_t drain_timeout;
    char *gen_psk;
    int log_level;
#ifdef PD_TEST_HOOKS
    int64_t test_tamper_every;
#endif
};


static const struct pd_cfg_opt options[] = {
    PD_MODEL_CFG(struct pf_cfg),
    PD_ENGINE_DEVICE_CFG(struct pf_cfg),
    PD_CFG_STR("kv-ip", struct pf_cfg, kv_ip, "127.0.0.1", 256,
               "KV channel listen address (an interface's address; no wildcard unless written)"),
    PD_CFG_INT("kv-port", struct pf_cfg, kv_port, "14579", 0, 65535,
               "KV channel listen port (0: any)"),
    PD_CFG_STR("kv-psk-file", struct pf_cfg, kv_psk_file, NULL, 4096,
               "pre-shared key file or key directory (required)"),
    PD_KVX_CFG(struct pf_cfg),
    PD_CFG_BOOL("kv-integrity", struct pf_cfg, kv_integrity, "true",
                "tag every KV block (off only for measured comparison; peers must agree)"),
    PD_ENGINE_PREFIX_CFG(struct pf_cfg),
    PD_CFG_INT("kv-max-sessions", struct pf_cfg, kv_max_sessions, "64", 1, 4096,
               "authenticated decode peers at once"),
    PD_CFG_SIZE("kv-cache-memory", struct pf_cfg, kv_cache_memory, "1GiB", 1 << 20,
                INT64_C(1) << 40, "KV pool size"),
    PD_ENGINE_KV_CFG(struct pf_cfg),
    PD_CFG_INT("max-num-batched-tokens", struct pf_cfg, max_num_batched_tokens, "2048", 1,
               1 << 20, "prompt tokens per engine step (chunks of several requests)"),
    PD_CFG_INT("max-model-len", struct pf_cfg, max_model_len, "0", 0, 1 << 24,
               "longest prompt + 1; 0 = the model's context"),
    PD_CFG_INT("max-num-seqs", struct pf_cfg, max_num_seqs, "16", 1, PD_ENGINE_MAX_BATCH_ITEMS,
               "prefills running at once"),
    PD_CFG_INT("max-waiting", struct pf_cfg, max_waiting, "256", 1, 1 << 20,
               "prefills queued; PREFILL is refused (overloaded) past it"),
    PD_CFG_STR("admin-host", struct pf_cfg, admin_host, "127.0.0.1", 256,
               "admin (/health, /metrics) listen address"),
    PD_CFG_INT("admin-port", struct pf_cfg, admin_port, "14580", 0, 65535,
               "admin listen port (0: any)"),
    PD_CFG_INT_F("drain-timeout", struct pf_cfg, drain_timeout, "30", 0, 86400,
                 "on SIGTERM, seconds running prefills get to finish", PD_CFG_RELOAD),
    PD_CFG_STR("gen-psk", struct pf_cfg, gen_psk, NULL, 4096,
               "write a new key file (id + key, mode 0600; never overwrites) and exit"),
    PD_LOG_CFG(struct pf_cfg, PD_CFG_RELOAD),
#ifdef PD_TEST_HOOKS
    /* -Dtest_hooks=true builds only (meson_options.txt): decoded's handling of
     * KV that fails its tags, tested end to end (docs/security.md) */
    {.name = "test-tamper-every", .type = PD_CFG_T_INT,
     .offset = offsetof(struct pf_cfg, test_tamper_every), .def = "0", .min = 0,
     .max = UINT32_MAX, .flags = PD_CFG_HIDDEN,
     .help = "test only: flip a byte of the KV blocks, after tagging, in every request whose "
             "id is a multiple of N (0: never)"},
#endif
    PD_CFG_END,
};

struct daemon {
    struct pf_cfg *cfg;
    int argc; /* main's, for a reload to read the configuration as at start */
    char *const *argv;
    struct pd_runtime *rt;
    struct pd_engine *engine;
    struct pd_keyring *keyring;
    struct pd_kvx *kvx;
    struct pf_sched *sched;
    struct event *wake_ev;
    struct event *progress_ev; /* PROGRESS frames for the held jobs, every PROGRESS_MS */
    struct pd_metrics *metrics;
    struct pd_metric *m_requests, *m_refused, *m_failed;
    struct pd_kv_metrics km;
    struct pf_sched_metrics sm;
    struct pd_prefix_metrics pm; /* sm.prefix */
    /* pf_job: jobs with a transfer handle (the loop's reference), until SREQ_END */
    struct pd_dlist held;
    bool closing; /* kvx is going: scheduler events no longer reach it */
    struct pd_ratelimit rl_kv; /* the KV channel's warnings (a handshake flood) */
};

/* ---- compute thread -> loop ---- */

static void wake(void *arg)
{
    struct daemon *d = arg;
    event_active(d->wake_ev, EV_READ, 0);
}

/* The prompt's log-probabilities (PD_PREFILL_F_PROMPT_LP), positions
 * [1, n_tokens) in frames of at most PD_PROTO_MAX_LP_ROWS rows, before DONE. */
static int send_prompt_lp(struct pd_kvx_sreq *r, const struct pf_job *j, char *err, size_t errlen)
{
    const uint32_t n_top = j->sampling.n_logprobs;
    struct pd_lp_row *rows = malloc(PD_PROTO_MAX_LP_ROWS * sizeof(*rows));
    int rc = rows ? 0 : -ENOMEM;
    if (!rows)
        snprintf(err, errlen, "out of memory");
    for (uint32_t first = 1; rc == 0 && first < j->n_tokens; first += PD_PROTO_MAX_LP_ROWS) {
        uint32_t n = j->n_tokens - first;
        n = n < PD_PROTO_MAX_LP_ROWS ? n : PD_PROTO_MAX_LP_ROWS;
        for (uint32_t i = 0; i < n; i++) {
            const struct pd_sample_result *s = &j->plp[first + i];
            rows[i].logprob = s->logprob;
            for (uint32_t k = 0; k < n_top; k++) /* scored with n_logprobs: all there */
                rows[i].top[k] = (struct pd_logprob){(uint32_t)s->top[k].token, s->top[k].logprob};
        }
        struct pd_prompt_lp lp = {.first = first, .n_rows = n, .n_top = n_top, .rows = rows};
        rc = pd_kvx_send_prompt_lp(r, &lp, err, errlen);
    }
    free(rows);
    return rc;
}

static void sched_events(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    char err[256];
    (void)fd;
    (void)what;
    struct pf_event *e = pf_sched_take(d->sched);
    while (e) {
        struct pf_event *next = e->next;
        struct pf_job *j = e->job;
        /* NULL once its transfer ended, or when kvx is going away */
        struct pd_kvx_sreq *r = d->closing ? NULL : j->owner;
        if (e->type == PF_EV_RUN) {
            if (!r || pd_kvx_send_run(r, e->first, e->blocks, e->twins, e->n, err,
                                      sizeof(err)) < 0) {
                /* the transfer is gone: nobody will read these blocks */
                if (r) {
                    pd_log(PD_LOG_INFO, "request %s: cannot send blocks: %s", j->xrid, err);
                    pd_kvx_abort(r, PD_R_TRANSFER, "the send failed");
                }
                pf_sched_unref(d->sched, e->blocks, e->twins, e->n);
            }
        } else if (e->type == PF_EV_DONE && r) {
            j->loop_done = true;
            if (j->plp && send_prompt_lp(r, j, err, sizeof(err)) < 0) {
                pd_log(PD_LOG_INFO, "request %s: cannot send PROMPT_LP: %s", j->xrid, err);
                pd_kvx_abort(r, PD_R_TRANSFER, "PROMPT_LP could not be sent");
                pf_event_free(e);
                e = next;
                continue;
            }
            struct pd_done dn = {.request_id = j->request_id, .epoch = j->epoch,
                                 .n_prompt = j->n_tokens, .token = (uint32_t)e->token.token,
                                 .logprob = e->token.logprob, .n_top = e->token.n_top};
            for (uint32_t i = 0; i < dn.n_top; i++)
                dn.top[i] = (struct pd_logprob){(uint32_t)e->token.top[i].token,
                                                e->token.top[i].logprob};
            if (pd_kvx_send_done(r, &dn, err, sizeof(err)) < 0) {
                pd_log(PD_LOG_INFO, "request %s: cannot send DONE: %s", j->xrid, err);
                pd_kvx_abort(r, PD_R_TRANSFER, "DONE could not be sent");
            }
        } else if (e->type == PF_EV_END && r) {
            j->loop_done = true;
            pd_metric_add(d->m_failed, 1);
            pd_log(PD_LOG_INFO, "request %s: prefill ended: %s: %s", j->xrid,
                   pd_reason_name((unsigned)e->reason), e->err);
            pd_kvx_abort(r, e->reason, e->err);
        }
        pf_event_free(e);
        e = next;
    }
}

/* How often a held job's PROGRESS goes out: well inside decoded's
 * --prefill-timeout-ms (default 10 s, at least 1 s when the peer is a
 * prefilld of protocol 1.1; docs/operations.md). */
#define PROGRESS_MS 500

/* Every held job still queued or computing says so: decoded's deadline
 * then fails over on silence (a dead or stuck prefilld), not on a long
 * queue or a long prompt. */
static void send_progress(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    char err[256];
    (void)fd;
    (void)what;
    if (d->closing)
        return;
    for (struct pd_dnode *n = d->held.head; n; n = n->next) {
        struct pf_job *j = PD_DNODE_ENTRY(n, struct pf_job, held);
        if (!j->owner || j->loop_done)
            continue;
        struct pd_progress pg = {
            .state = atomic_load(&j->computing) ? PD_PROGRESS_COMPUTING : PD_PROGRESS_QUEUED,
            .tokens_done = atomic_load(&j->tokens_done), .n_tokens = j->n_tokens};
        if (pg.tokens_done > pg.n_tokens)
            pg.tokens_done = pg.n_tokens;
        if (pd_kvx_send_progress(j->owner, &pg, err, sizeof(err)) < 0)
            pd_log(PD_LOG_DEBUG, "request %s: %s", j->xrid, err);
    }
}

/* ---- KV channel events ---- */

static int take_prefill(struct daemon *d, const struct pd_kvx_event *ev)
{
    const struct pd_prefill *p = ev->prefill;
    const struct pd_kv_geom *g = pd_kvcache_layout(pd_engine_kvcache(d->engine));
    char err[256];
    if (p->block_size != g->block_size ||
        p->n_blocks < (p->n_tokens + g->block_size - 1) / g->block_size - p->n_cached) {
        pd_kvx_abort(ev->sreq, PD_R_INVALID_REQUEST, "fewer blocks granted than the prompt needs");
        return -EINVAL;
    }
    const uint32_t n_vocab = pd_engine_n_vocab(d->engine), words = (n_vocab + 31) / 32;
    const bool masked = p->flags & PD_PREFILL_F_MASK;
    if (masked && p->mask_words != words) {
        pd_kvx_abort(ev->sreq, PD_R_INVALID_REQUEST, "the token mask does not fit the vocabulary");
        return -EINVAL;
    }
    struct pf_job *j = pf_job_new();
    if (!j || !(j->tokens = malloc((size_t)p->n_tokens * sizeof(*j->tokens))) ||
        (p->n_bias && !(j->bias = malloc(p->n_bias * sizeof(*j->bias)))) ||
        (masked && !(j->mask = malloc(words * sizeof(*j->mask)))) ||
        ((p->flags & PD_PREFILL_F_PROMPT_LP) &&
         !(j->plp = calloc((size_t)p->n_tokens + 1, sizeof(*j->plp))))) {
        pf_job_unref(j);
        pd_kvx_abort(ev->sreq, PD_R_OVERLOADED, "out of memory");
        return -ENOMEM;
    }
    j->peer = (uint64_t)(uintptr_t)ev->session;
    j->request_id = p->request_id;
    j->epoch = p->epoch;
    snprintf(j->xrid, sizeof(j->xrid), "%s", p->xrid);
    j->n_tokens = p->n_tokens;
    memcpy(j->salt, p->salt, sizeof(j->salt));
    j->n_cached = p->n_cached;
    memcpy(j->cached_name, p->cached_name, sizeof(j->cached_name));
    for (uint32_t i = 0; i < p->n_tokens; i++)
        j->tokens[i] = (int32_t)pd_prefill_token(p, i);
    j->sampling = (struct pd_sampling){
        .temperature = p->temperature, .top_k = (int32_t)p->top_k, .top_p = p->top_p,
        .min_p = p->min_p, .repetition_penalty = p->repetition_penalty,
        .presence_penalty = p->presence_penalty, .frequency_penalty = p->frequency_penalty,
        .seed = p->seed, .n_logprobs = p->n_logprobs, .n_bias = p->n_bias, .bias = j->bias,
        .mask = j->mask};
    for (uint32_t i = 0; i < p->n_bias; i++) { /* an id past INT32_MAX fails validation */
        const struct pd_bias b = pd_prefill_bias(p, i);
        j->bias[i] = (struct pd_logit_bias){
            .token = b.token > INT32_MAX ? -1 : (int32_t)b.token, .bias = b.bias};
    }
    for (uint32_t i = 0; masked && i < words; i++)
        j->mask[i] = pd_prefill_mask_word(p, i);
    j->t_arrival_ns = pd_now_ns();
    int rc = pd_sampling_validate(&j->sampling, n_vocab, err, sizeof(err));
    for (uint32_t i = 0; rc == 0 && i < j->n_tokens; i++)
        if ((uint32_t)j->tokens[i] >= n_vocab) {
            snprintf(err, sizeof(err), "token %u at position %u is outside the vocabulary (%u)",
                     (uint32_t)j->tokens[i], i, n_vocab);
            rc = -EINVAL;
        }
    if (rc < 0) {
        pd_kvx_abort(ev->sreq, PD_R_INVALID_REQUEST, err);
        pf_job_unref(j);
        return rc;
    }
    j->owner = ev->sreq;
    rc = pd_runtime_draining(d->rt) ? -ESHUTDOWN : pf_sched_submit(d->sched, j);
    if (rc < 0) {
        j->owner = NULL;
        pd_metric_add(d->m_refused, 1);
        pd_kvx_abort(ev->sreq,
                     rc == -EAGAIN ? PD_R_OVERLOADED : rc == -E2BIG ? PD_R_TOO_LARGE
                                                                    : PD_R_SHUTDOWN,
                     rc == -EAGAIN ? "the prefill queue is full (--max-waiting)"
                     : rc == -E2BIG ? "the prompt does not fit the KV pool, its staging "
                                      "(--kv-staging-memory) or --max-model-len"
                                    : "prefilld is stopping");
        pf_job_unref(j);
        return rc;
    }
    /* the loop's reference lives until the transfer's end (SREQ_END) */
    pd_kvx_sreq_set_udata(ev->sreq, j);
    pd_dlist_push(&d->held, &j->held);
    pd_metric_add(d->m_requests, 1);
    pd_log(PD_LOG_DEBUG, "request %s: %u prompt tokens from %s", j->xrid, j->n_tokens,
           ev->peer_addr ? ev->peer_addr : "?");
    return 0;
}

/* The transfer of a held job is over: the loop lets go of it (the compute
 * thread drops it before its next step if it still runs). */
static void release_held(struct daemon *d, struct pf_job *j)
{
    pd_dlist_remove(&d->held, &j->held);
    j->owner = NULL;
    pf_job_cancel(j); /* no-op when it already finished */
    pf_job_unref(j);
}

static void maybe_stop(struct daemon *d)
{
    if (pd_runtime_draining(d->rt) && !d->held.n)
        pd_runtime_stop(d->rt);
}

static void kvx_event(void *arg, const struct pd_kvx_event *ev)
{
    struct daemon *d = arg;
    if (pd_kv_log_warning(ev, &d->rl_kv))
        return;
    switch (ev->type) {
    case PD_KVX_EV_SESSION_UP:
        pd_kv_log_session_up(ev, "");
        break;
    case PD_KVX_EV_SESSION_DOWN:
        pd_log(PD_LOG_NOTICE, "KV session down: %s: %s%s%s", ev->peer_addr ? ev->peer_addr : "?",
               pd_reason_name((unsigned)ev->reason), ev->detail ? ": " : "",
               ev->detail ? ev->detail : "");
        break;
    case PD_KVX_EV_PREFILL:
        take_prefill(d, ev);
        break;
    case PD_KVX_EV_RUN_RELEASED:
        pf_sched_unref(d->sched, ev->run_blocks, ev->run_twins, ev->run_n);
        break;
    case PD_KVX_EV_SREQ_END: {
        struct pf_job *j = ev->udata;
        if (j) {
            release_held(d, j);
            maybe_stop(d);
        }
        break;
    }
    default:
        break;
    }
}

static int metrics_init(struct daemon *d)
{
    struct pd_metrics *m = d->metrics = pd_metrics_new("daemon", "prefilld");
    if (!m)
        return -ENOMEM;
    static const double secs_b[] = {0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10,
                                    30, 60};
    static const double tok_b[] = {16, 64, 256, 512, 1024, 2048, 4096, 8192};
    const struct pd_metric_def defs[] = {
        {&d->m_requests, PD_METRIC_COUNTER, "pdserve:prefill_requests_total",
         .help = "PREFILL requests accepted."},
        {&d->m_refused, PD_METRIC_COUNTER, "pdserve:prefill_refused_total",
         .help = "PREFILL requests refused (queue full, too large, stopping)."},
        {&d->m_failed, PD_METRIC_COUNTER, "pdserve:prefill_failed_total",
         .help = "Accepted prefills that failed or were cancelled."},
        {&d->sm.prompt_tokens, PD_METRIC_COUNTER, "pdserve:prompt_tokens_total",
         .help = "Prompt tokens prefilled."},
        {&d->sm.running, PD_METRIC_GAUGE, "pdserve:num_requests_running",
         .help = "Prefills holding KV blocks and computing."},
        {&d->sm.waiting, PD_METRIC_GAUGE, "pdserve:num_requests_waiting",
         .help = "Prefills queued."},
        {&d->sm.kv_used, PD_METRIC_GAUGE, "pdserve:kv_blocks_used",
         .help = "KV blocks allocated (computing or in flight)."},
        {&d->sm.kv_free, PD_METRIC_GAUGE, "pdserve:kv_blocks_free", .help = "KV blocks free."},
        {&d->sm.staging_used, PD_METRIC_GAUGE, "pdserve:kv_staging_blocks_used",
         .help = "KV channel staging blocks held (prefills and transfers; a GPU engine's "
                 "page-locked host blocks; 0 on the CPU)."},
        {&d->sm.queue_time, PD_METRIC_HISTOGRAM, "pdserve:request_queue_time_seconds",
         .help = "Time a prefill waited for admission.", PD_METRIC_BOUNDS(secs_b)},
        {&d->sm.prefill_time, PD_METRIC_HISTOGRAM, "pdserve:request_prefill_time_seconds",
         .help = "PREFILL received to first token.", PD_METRIC_BOUNDS(secs_b)},
        {&d->sm.batch_tokens, PD_METRIC_HISTOGRAM, "pdserve:batch_tokens",
         .help = "Prompt tokens in one engine step.", PD_METRIC_BOUNDS(tok_b)},
    };
    pd_metrics_register(m, defs, sizeof(defs) / sizeof(*defs));
    pd_kv_metrics_init(&d->km, m, PD_ROLE_P);
    pd_prefix_metrics_init(&d->pm, m);
    d->sm.prefix = &d->pm;
    d->sm.blocks_not_sent = pd_metrics_counter(
        m, "pdserve:kv_blocks_not_sent_total", NULL,
        "Prompt KV blocks not sent because the decode peer held them (prefix caching).");
    d->sm.bytes_not_sent = pd_metrics_counter(m, "pdserve:kv_bytes_not_sent_total", NULL,
                                              "Bytes of those blocks.");
    d->sm.recomputed = pd_metrics_counter(
        m, "pdserve:prefix_cache_recomputed_tokens_total", NULL,
        "Prompt tokens the decode peer held cached but this prefilld did not (a cold cache): "
        "computed again to extend the prompt.");
    return d->sm.recomputed ? 0 : -ENOMEM;
}

/* idle admin connections, and a request's head however it trickles */
#define ADMIN_TIMEOUT_S 30

/* ---- the runtime's hooks (common/daemon/runtime.h) ---- */

static unsigned pf_rt_running(void *arg) { return ((const struct daemon *)arg)->held.n; }

static void pf_rt_drain(void *arg) { maybe_stop(arg); }

/* the transfers still running end with the loop (kvx goes first) */
static void pf_rt_cut(void *arg)
{
    struct daemon *d = arg;
    pd_runtime_stop(d->rt);
}

static void pf_rt_status(void *arg, char *buf, size_t len)
{
    struct daemon *d = arg;
    uint32_t waiting, running;
    struct pd_kvx_stats s;
    pf_sched_counts(d->sched, &waiting, &running);
    pd_kvx_get_stats(d->kvx, &s);
    snprintf(buf, len, "%" PRIu64 " sessions, %u prefilling, %u waiting", s.sessions, running,
             waiting);
}

static void pf_rt_scrape(void *arg)
{
    struct daemon *d = arg;
    pd_kv_metrics_scrape(&d->km, d->kvx);
}

/* SIGHUP: the configuration is read again as at start; the options the
 * table marks PD_CFG_RELOAD (--log-level, --drain-timeout) take effect
 * (pd_runtime_reload_cfg) and the key file or directory named at start is
 * re-read; every other option keeps its value until a restart, and the log
 * names those that changed (docs/operations.md). An invalid configuration
 * changes nothing. */
static void pf_rt_reload(void *arg)
{
    struct daemon *d = arg;
    struct pf_cfg nc;
    char err[512];
    if (pd_runtime_reload_cfg(d->rt, options, d->cfg, &nc, d->argc, d->argv) < 0)
        return;
    pd_cfg_done(options, &nc);
    if (pd_keyring_reload(d->keyring, err, sizeof(err)) < 0)
        pd_log(PD_LOG_ERR, "SIGHUP: keys not reloaded, the old ones stay: %s", err);
    else
        pd_log(PD_LOG_NOTICE, "SIGHUP: %zu keys loaded from %s", pd_keyring_count(d->keyring),
               d->cfg->kv_psk_file);
}

static const struct pd_runtime_ops pf_rt_ops = {
    .running = pf_rt_running,
    .drain = pf_rt_drain,
    .cut = pf_rt_cut,
    .reload = pf_rt_reload,
    .status = pf_rt_status,
    .scrape = pf_rt_scrape,
};

/* ---- start-up ---- */

static int kvx_open(struct daemon *d, char *err, size_t errlen)
{
    struct pf_cfg *c = d->cfg;
    struct pd_kv_layout layout;
    uint16_t lo, hi;
    int rc;
    if ((rc = pd_kvx_parse_ports(c->kv_data_ports, &lo, &hi, err, errlen)) < 0)
        return rc;
    char warn[256];
    if (pd_kvx_ports_warning(c->kv_ip, c->kv_data_ports, warn, sizeof(warn)))
        pd_log(PD_LOG_WARN, "%s", warn);
    pd_engine_kv_layout(d->engine, &layout);
    struct pd_kvx_params kp = {
        .base = pd_runtime_base(d->rt), .role = PD_ROLE_P, .kv_ip = c->kv_ip,
        .kv_port = (uint16_t)c->kv_port, .data_port_lo = lo, .data_port_hi = hi,
        .keyring = d->keyring, .layout = &layout,
        .crypto_threads = (unsigned)c->kv_crypto_threads, .no_integrity = !c->kv_integrity,
        .lease_ms = (uint32_t)c->kv_lease_ms, .handshake_ms = (uint32_t)c->kv_handshake_ms,
        .max_sessions = (unsigned)c->kv_max_sessions, .event = kvx_event, .arg = d};
    /* staged with tags on the GPU, the channel tags runs in the device pool and
     * copies them down (the scheduler, made with the same answer, copies nothing) */
    pd_runtime_kv_pools(d->engine, c->kv_gpu_tags, c->kv_integrity, &kp);
#ifdef PD_TEST_HOOKS
    kp.tamper_every = (unsigned)c->test_tamper_every;
    if (kp.tamper_every)
        pd_log(PD_LOG_WARN, "test hook: the KV blocks of every request whose id is a multiple of "
               "%u are corrupted after tagging (--test-tamper-every); a test build, never for "
               "production", kp.tamper_every);
#endif
    rc = pd_kvx_new(&kp, &d->kvx, err, errlen);
    if (rc == 0) {
        char line[256];
        pd_kvx_tags_line(d->kvx, line, sizeof(line));
        pd_log(PD_LOG_INFO, "%s", line);
    }
    return rc;
}

/* The runtime's loop, the compute thread, the KV channel, the admin
 * address; then READY=1 and the loop until the drain ends. */
/* Every failure fills err and returns a negative errno (pd_runtime_main
 * reports it, after the teardown here). */
static int run(struct daemon *d, char *err, size_t errlen)
{
    struct pf_cfg *c = d->cfg;
    int rc;

    if (metrics_init(d) < 0) {
        rc = pd_errf(err, errlen, -ENOMEM, "out of memory");
        goto out;
    }
    struct pd_runtime_params rp = {.admin_host = c->admin_host,
                                   .admin_port = (uint16_t)c->admin_port,
                                   .header_timeout_s = ADMIN_TIMEOUT_S,
                                   .drain_timeout_s = (uint32_t)c->drain_timeout,
                                   .metrics = d->metrics, .ops = &pf_rt_ops, .arg = d};
    if ((rc = pd_runtime_new(&rp, &d->rt, err, errlen)) < 0)
        goto out;
    struct pf_sched_params sp = {.engine = d->engine, .max_waiting = (uint32_t)c->max_waiting,
                                 .max_running = (uint32_t)c->max_num_seqs,
                                 .idle_tick_ms = pd_runtime_tick_ms(d->rt),
                                 .kv_twins = pd_runtime_kv_twins(d->engine, c->kv_gpu_tags,
                                                                 c->kv_integrity),
                                 .metrics = d->sm, .notify = wake, .notify_arg = d};
    if ((rc = pf_sched_new(&sp, &d->sched, err, errlen)) < 0)
        goto out;
    pd_runtime_watch(d->rt, pf_sched_worker(d->sched));
    const struct timeval every = {.tv_sec = PROGRESS_MS / 1000,
                                  .tv_usec = PROGRESS_MS % 1000 * 1000};
    if (!(d->wake_ev = event_new(pd_runtime_base(d->rt), -1, EV_PERSIST, sched_events, d)) ||
        !(d->progress_ev = event_new(pd_runtime_base(d->rt), -1, EV_PERSIST, send_progress, d)) ||
        event_add(d->progress_ev, &every) < 0) {
        rc = pd_errf(err, errlen, -ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = kvx_open(d, err, errlen)) < 0 || (rc = pd_runtime_listen(d->rt, err, errlen)) < 0 ||
        (rc = pd_kvx_listen(d->kvx, err, errlen)) < 0 ||
        (rc = pd_worker_start(pf_sched_worker(d->sched), err, errlen)) < 0)
        goto out;
    char fp[2 * PD_MODEL_FP_LEN + 1];
    pd_model_fingerprint_hex(pd_engine_model(d->engine), fp);
    pd_log(PD_LOG_NOTICE, "listening on %s:%u (KV channel; model %.16s, %zu keys)", c->kv_ip,
           pd_kvx_port(d->kvx), fp, pd_keyring_count(d->keyring));
    if ((rc = pd_runtime_ready(d->rt, err, errlen)) < 0)
        goto out;

    pd_runtime_run(d->rt);

    pd_worker_stop(pf_sched_worker(d->sched));
    pd_log(PD_LOG_NOTICE, "stopped");
out:
    if (d->sched)
        pd_worker_stop(pf_sched_worker(d->sched));
    /* kvx goes first and delivers no more events (no SREQ_END for what was
     * still in flight after a cut drain): the scheduler's last events only
     * give their blocks back, and the loop lets go of every job it held */
    d->closing = true;
    d->kvx = pd_kvx_free(d->kvx);
    if (d->sched) {
        sched_events(-1, 0, d);
        while (d->held.head)
            release_held(d, PD_DNODE_ENTRY(d->held.head, struct pf_job, held));
        d->sched = pf_sched_free(d->sched);
    }
    if (d->wake_ev)
        event_free(d->wake_ev);
    if (d->progress_ev)
        event_free(d->progress_ev);
    d->rt = pd_runtime_free(d->rt);
    pd_metrics_free(d->metrics);
    return rc;
}

/* --gen-psk FILE: a new key file, and exit. */
static int gen_psk(const char *path)
{
    char id[PD_KEY_ID_MAX + 1], err[512];
    int rc = pd_keyring_create(path, NULL, id, err, sizeof(err));
    if (rc < 0)
        fprintf(stderr, "prefilld: %s\n", err);
    else
        printf("wrote key %s to %s (mode 0600); give the same file to decoded\n", id, path);
    return rc < 0 ? 1 : 0;
}

/* pd_runtime_main's serve: the key ring, the model and the engine, then the
 * daemon. */
static int serve(void *cfg, const struct pd_cfg_args *a, int argc, char **argv, char *err,
                 size_t errlen)
{
    struct pf_cfg *c = cfg;
    if (c->gen_psk)
        return gen_psk(c->gen_psk);
    struct daemon d = {.cfg = c, .argc = argc, .argv = argv,
                       .rl_kv = PD_RATELIMIT_INIT(5000, 10)};
    struct pd_model *m = NULL;
    enum pd_device device;
    int rc;
    if (!c->kv_psk_file) {
        rc = pd_errf(err, errlen, -EINVAL,
                     "--kv-psk-file is required (make one with --gen-psk FILE)");
        goto out;
    }
    if ((rc = pd_keyring_open(c->kv_psk_file, &d.keyring, err, errlen)) < 0 ||
        (rc = pd_engine_pick_device(c->device, &device, err, errlen)) < 0)
        goto out;
    if (err[0])
        pd_log(PD_LOG_INFO, "%s", err);
    struct pd_model_params mp = {.path = a->n_positional ? a->positional[0] : c->model,
                                 .load_format = (enum pd_load_format)c->load_format,
                                 .shape = c->model_shape, .seed = (uint64_t)c->seed};
    if ((rc = pd_runtime_load_model(&mp, &m, err, errlen)) < 0)
        goto out;
    /* a GPU pool's blocks leave from there, or through page-locked host staging */
    char kvline[320];
    const bool direct = pd_runtime_kv_direct(device != PD_DEVICE_CPU, c->kv_direct,
                                             c->kv_gpu_tags, kvline, sizeof(kvline));
    if (kvline[0])
        pd_log(PD_LOG_INFO, "%s", kvline);
    struct pd_engine_params ep = {.model = m, .kv_cache_bytes = c->kv_cache_memory,
                                  .device = device,
                                  PD_ENGINE_DEVICE_PARAMS(*c),
                                  .kv_staging = !direct, .kv_direct = direct,
                                  .kv_staging_bytes = c->kv_staging_memory,
                                  PD_ENGINE_KV_PARAMS(*c),
                                  .prefix_cache = c->enable_prefix_caching,
                                  .max_batched_tokens = (uint32_t)c->max_num_batched_tokens,
                                  .max_model_len = (uint32_t)c->max_model_len,
                                  .max_batch_items = (uint32_t)c->max_num_seqs};
    if ((rc = pd_engine_new(&ep, &d.engine, err, errlen)) < 0)
        goto out;
    if (pd_engine_describe(d.engine)[0])
        pd_log(PD_LOG_INFO, "%s", pd_engine_describe(d.engine));
    char note[320];
    if (pd_engine_take_note(d.engine, note, sizeof(note)))
        pd_log(PD_LOG_WARN, "%s", note);
    char path[256];
    pd_engine_kv_path(d.engine, path, sizeof(path));
    pd_log(PD_LOG_INFO, "%s", path);
    rc = run(&d, err, errlen);
out:
    pd_engine_free(d.engine);
    pd_model_free(m);
    pd_keyring_free(d.keyring);
    return rc;
}

int main(int argc, char **argv)
{
    struct pf_cfg c;
    return pd_runtime_main(options, &c, "prefilld", argc, argv, serve);
}
