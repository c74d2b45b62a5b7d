/* decoded: the decode daemon: an OpenAI-compatible HTTP server over the
 * local engine, with prompts prefilled locally or by prefill peers over the
 * KV channel (decoded/remote.c).
 *
 *   decoded --model M.gguf [--host 127.0.0.1 --port 8000] [--api-key KEY]
 *   decoded --load-format dummy --model-shape tiny        (token-id prompts only)
 *   decoded --model M.gguf --prefill 10.0.0.5:14579 --kv-ip 10.0.0.7 --kv-psk-file k.psk
 *
 * Threads: this one runs the libevent loop (HTTP, signals, timers); the
 * compute thread (scheduler.c) runs the engine. Start-up: model, tokenizer,
 * engine, listeners, compute thread, then READY=1. SIGTERM/SIGINT: STOPPING=1,
 * stop accepting, let running requests finish for --drain-timeout seconds,
 * cut the rest, let the last bytes reach their clients, exit 0. SIGHUP:
 * RELOADING=1, the configuration read again as at start, the prefill peer
 * list (and key id, key files) applied in place, READY=1.
 */
#include "chat.h"
#include "cfg.h"
#include "errf.h"
#include "engine.h"
#include "log.h"
#include "kvx.h"
#include "model.h"
#include "notify.h"
#include "runtime.h"
#include "remote.h"
#include "scheduler.h"
#include "server.h"
#include "tokenizer.h"
#include "gguf.h"

#include <errno.h>
#include <event2/event.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* after the drain, how long clients get to take the last bytes */
#define FLUSH_GRACE_NS 2000000000u

struct dec_cfg {
    char *model;
    int load_format;
    char *model_shape;
    int64_t seed;
    char *served_model_name;
    char *chat_template;
    char *host;
    int64_t port;
    char *admin_host;
    int64_t admin_port;
    char *api_key;
    int64_t max_model_len;
    int64_t max_prompt_tokens;
    int64_t max_tokens_cap;
    uint64_t kv_cache_memory;
    int kv_cache_dtype;
    int64_t block_size;
    int64_t max_num_batched_tokens;
    int64_t max_num_seqs;
    int64_t max_waiting;
    int64_t max_connections, max_connections_per_source;
    uint64_t max_body_size;
    uint64_t max_client_buffer;
    int64_t max_json_depth;
    int64_t header_timeout;
    int64_t drain_timeout;
    struct pd_cfg_list prefill;
    int64_t local_prefill_max_tokens;
    int prefill_failover;
    int64_t prefill_timeout_ms;
    char *kv_ip;
    char *kv_data_ports;
    char *kv_psk_file;
    char *kv_key_id;
    int64_t kv_lease_ms;
    int64_t kv_handshake_ms;
    int64_t kv_crypto_threads;
    bool kv_gpu_tags;
    bool kv_direct;
    bool kv_integrity;
    bool enable_prefix_caching;
    int log_level;
    int device;
    int gpu_weight_dtype, cpu_weight_dtype;
    int64_t threads;
    double gpu_memory_utilization;
    bool cuda_graphs;
    uint64_t kv_staging_memory;
};

static const char *const failovers[] = {"retry", "local", "fail", NULL};

static const struct pd_cfg_opt options[] = {
    PD_MODEL_CFG(struct dec_cfg),
    PD_CFG_STR("served-model-name", struct dec_cfg, served_model_name, NULL, 256,
               "model name in the API (default: the GGUF's general.name, else the file name)"),
    PD_CFG_STR("chat-template", struct dec_cfg, chat_template, NULL, 4096,
               "chat template: chatml, llama2, llama3, or a file (default: the model's)"),
    PD_CFG_STR("host", struct dec_cfg, host, "127.0.0.1", 256, "API listen address"),
    PD_CFG_INT("port", struct dec_cfg, port, "8000", 0, 65535, "API listen port (0: any)"),
    PD_CFG_STR("admin-host", struct dec_cfg, admin_host, "127.0.0.1", 256,
               "admin (/metrics) listen address"),
    PD_CFG_INT("admin-port", struct dec_cfg, admin_port, "8001", 0, 65535,
               "admin listen port (0: any)"),
    {.name = "api-key", .type = PD_CFG_T_STR, .offset = offsetof(struct dec_cfg, api_key),
     .max = 1024, .help = "require Authorization: Bearer KEY on /v1/* (default: none)",
     .flags = PD_CFG_SECRET},
    PD_CFG_INT("max-model-len", struct dec_cfg, max_model_len, "0", 0, 1 << 24,
               "longest sequence, prompt + completion; 0 = the model's context"),
    PD_CFG_INT("max-prompt-tokens", struct dec_cfg, max_prompt_tokens, "0", 0, 1 << 24,
               "longest prompt (413 past it); 0 = max-model-len - 1"),
    PD_CFG_INT("max-tokens-cap", struct dec_cfg, max_tokens_cap, "0", 0, 1 << 24,
               "largest max_tokens a request may ask for, and the default; 0 = the context left"),
    PD_CFG_SIZE("kv-cache-memory", struct dec_cfg, kv_cache_memory, "1GiB", 1 << 20,
                INT64_C(1) << 40,
                "KV pool size; when it is full the newest requests are preempted (recomputed)"),
    PD_ENGINE_KV_CFG(struct dec_cfg),
    PD_CFG_INT("max-num-batched-tokens", struct dec_cfg, max_num_batched_tokens, "2048", 1,
               1 << 20, "tokens per engine step (decode tokens + prompt chunks)"),
    PD_CFG_INT("max-num-seqs", struct dec_cfg, max_num_seqs, "64", 1, PD_ENGINE_MAX_BATCH_ITEMS,
               "requests running at once (sequences per engine step)"),
    PD_CFG_INT("max-waiting", struct dec_cfg, max_waiting, "256", 1, 1 << 20,
               "requests queued for admission; 429 past it"),
    PD_CFG_INT("max-connections", struct dec_cfg, max_connections, "1024", 1, 1 << 20,
               "open API connections; at the cap new ones wait in the listen backlog"),
    PD_CFG_SIZE("max-body-size", struct dec_cfg, max_body_size, "1MiB", 1024, INT64_C(1) << 30,
                "request body size (413 past it)"),
    PD_CFG_SIZE("max-client-buffer", struct dec_cfg, max_client_buffer, "1MiB", 4096,
                INT64_C(1) << 30, "response bytes queued to one client; a slower reader is cut"),
    PD_CFG_INT("max-json-depth", struct dec_cfg, max_json_depth, "32", 2, 1000,
               "deepest JSON nesting in a request"),
    PD_CFG_INT("max-connections-per-source", struct dec_cfg, max_connections_per_source, "0",
               0, 1 << 20,
               "open API connections from one address; past it 429 and closed (0: no cap; "
               "keep 0 behind a load balancer, which is one address)"),
    PD_CFG_INT("header-timeout", struct dec_cfg, header_timeout, "30", 1, 3600,
               "seconds a request's headers may take from its first byte, however they trickle "
               "(then its body as long again; 408 past it); also how long a connection may sit "
               "idle or not read"),
    PD_CFG_INT_F("drain-timeout", struct dec_cfg, drain_timeout, "30", 0, 86400,
                 "on SIGTERM, seconds running requests get to finish", PD_CFG_RELOAD),
    PD_CFG_LIST_F("prefill", struct dec_cfg, prefill, DEC_REMOTE_MAX_PEERS,
                  "a prefill peer's KV address HOST:PORT (repeatable; none: prefill locally)",
                  PD_CFG_RELOAD),
    PD_CFG_INT_F("local-prefill-max-tokens", struct dec_cfg, local_prefill_max_tokens, "0", 0,
                 1 << 24, "with --prefill, prompts of at most this many tokens prefill locally "
                 "(0: every prompt goes to a peer)", PD_CFG_RELOAD),
    PD_CFG_ENUM("prefill-failover", struct dec_cfg, prefill_failover, "retry", failovers,
                "when a peer fails a prefill: retry (another peer, then local), local, or fail "
                "(502/503)"),
    PD_CFG_INT("prefill-timeout-ms", struct dec_cfg, prefill_timeout_ms, "10000", 100, 3600000,
               "a remote prefill with no block for this long fails over"),
    PD_CFG_STR("kv-ip", struct dec_cfg, kv_ip, "127.0.0.1", 256,
               "KV channel source address (an interface's address)"),
    PD_CFG_STR("kv-psk-file", struct dec_cfg, kv_psk_file, NULL, 4096,
               "pre-shared key file or key directory (required with --prefill)"),
    PD_CFG_STR_F("kv-key-id", struct dec_cfg, kv_key_id, NULL, 64,
                 "the key new sessions use when the file or directory holds several",
                 PD_CFG_RELOAD),
    PD_KVX_CFG(struct dec_cfg),
    PD_CFG_BOOL("kv-integrity", struct dec_cfg, kv_integrity, "true",
                "verify a tag on every KV block (off only for measured comparison; peers must "
                "agree)"),
    PD_ENGINE_PREFIX_CFG(struct dec_cfg),
    PD_LOG_CFG(struct dec_cfg, PD_CFG_RELOAD),
    PD_ENGINE_DEVICE_CFG(struct dec_cfg),
    PD_CFG_END,
};

struct daemon {
    struct dec_cfg *cfg;
    int argc; /* main's, for a reload to read the configuration as at start */
    char *const *argv;
    struct pd_engine *engine;
    struct pd_runtime *rt;
    struct dec_server *srv;
    struct dec_sched *sched;
    struct dec_remote *remote;
    /* derived at start, kept out of cfg (a reload compares cfg with the
     * configuration read again, which has neither) */
    const char *served_name; /* --served-model-name, else the model's */
    int64_t max_connections; /* --max-connections, within the descriptor limit */
};

/* Let the process hold a socket per allowed connection, with room to spare:
 * the connections it can hold. */
static int64_t raise_fd_limit(const struct dec_cfg *c)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return c->max_connections;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    const rlim_t spare = 64;
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)c->max_connections + spare > rl.rlim_cur) {
        int64_t fit = rl.rlim_cur > spare + 1 ? (int64_t)(rl.rlim_cur - spare) : 1;
        pd_log(PD_LOG_WARN, "--max-connections %" PRId64 " needs more file descriptors than the "
               "limit of %llu; using %" PRId64, c->max_connections,
               (unsigned long long)rl.rlim_cur, fit);
        return fit;
    }
    return c->max_connections;
}

static char *default_name(const struct pd_model *m)
{
    const char *s;
    size_t n;
    if (pd_model_gguf(m) && pd_gguf_get_str(pd_model_gguf(m), "general.name", &s, &n) == 0 && n &&
        n < 256)
        return strndup(s, n);
    /* a file's or a checkpoint directory's last component ("Qwen3-8B/" too) */
    const char *src = pd_model_name(m);
    size_t len = strlen(src);
    while (len > 1 && src[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && src[start - 1] != '/')
        start--;
    return strndup(src + start, len - start);
}

/* ---- the runtime's hooks (common/daemon/runtime.h) ---- */

static unsigned dec_rt_running(void *arg)
{
    struct daemon *d = arg;
    return dec_server_inflight(d->srv);
}

/* stop accepting, 503 new requests; the loop ends with the last one */
static void dec_rt_drain(void *arg)
{
    struct daemon *d = arg;
    dec_server_drain(d->srv);
}

static void dec_rt_cut(void *arg)
{
    struct daemon *d = arg;
    dec_server_cancel_all(d->srv);
}

static void dec_rt_status(void *arg, char *buf, size_t len)
{
    struct daemon *d = arg;
    uint32_t waiting, running;
    dec_sched_counts(d->sched, &waiting, &running);
    dec_remote_tick(d->remote);
    snprintf(buf, len, "%u running, %u waiting, %u connections", running, waiting,
             dec_server_connections(d->srv));
}

static void dec_rt_scrape(void *arg)
{
    struct daemon *d = arg;
    dec_server_scrape(d->srv);
}

/* The KV channel to the peers c names (c->prefill non-empty): at start, or
 * on the reload that names the first peers. Options other than c's KV ones
 * (the failover policy) are the running daemon's. */
static int remote_open(struct daemon *d, const struct dec_cfg *c, char *err, size_t errlen)
{
    uint16_t lo = 0, hi = 0;
    if (pd_engine_on_device(d->engine) && !pd_engine_kv_staging(d->engine) &&
        !pd_engine_kv_direct(d->engine)) {
        /* a reload naming the first peers: staging is made at start only */
        snprintf(err, errlen, "the engine runs on the GPU and was started without prefill "
                 "peers, so without the KV channel's staging (--kv-staging-memory): restart "
                 "decoded with --prefill to take peers");
        return -ENOTSUP;
    }
    int rc = pd_kvx_parse_ports(c->kv_data_ports, &lo, &hi, err, errlen);
    if (rc < 0)
        return rc;
    char warn[256];
    if (pd_kvx_ports_warning(c->kv_ip, c->kv_data_ports, warn, sizeof(warn)))
        pd_log(PD_LOG_WARN, "%s", warn);
    struct dec_remote_cfg rc_ = {
        .peers = (const char *const *)c->prefill.items, .n_peers = (unsigned)c->prefill.n,
        .kv_ip = c->kv_ip, .data_port_lo = lo, .data_port_hi = hi,
        .psk_file = c->kv_psk_file, .key_id = c->kv_key_id,
        .lease_ms = (uint32_t)c->kv_lease_ms, .handshake_ms = (uint32_t)c->kv_handshake_ms,
        .request_deadline_ms = (uint32_t)c->prefill_timeout_ms,
        .crypto_threads = (unsigned)c->kv_crypto_threads, .no_integrity = !c->kv_integrity,
        .gpu_tags = c->kv_gpu_tags, .failover = (enum dec_failover)d->cfg->prefill_failover};
    if ((rc = dec_remote_new(&rc_, pd_runtime_base(d->rt), d->engine, dec_server_metrics(d->srv),
                             &d->remote, err, errlen)) < 0)
        return rc;
    dec_remote_set_sched(d->remote, d->sched);
    dec_server_set_remote(d->srv, d->remote, (uint32_t)c->local_prefill_max_tokens);
    char path[256];
    pd_engine_kv_path(d->engine, path, sizeof(path));
    pd_log(PD_LOG_INFO, "%s", path);
    return 0;
}

/* SIGHUP: the configuration is read again as at start and the options the
 * table marks PD_CFG_RELOAD take effect (pd_runtime_reload_cfg: the log
 * level and --drain-timeout there; the prefill peer list, --kv-key-id and
 * --local-prefill-max-tokens here), and the key file or directory is
 * re-read; every other option keeps its value until a restart, and the log
 * names those that changed (docs/operations.md). An invalid configuration
 * changes nothing. */
/* The options the KV channel is made with, when a reload makes it. */
static void kv_swap(struct dec_cfg *a, struct dec_cfg *b)
{
    struct dec_cfg t = *a;
    a->kv_ip = b->kv_ip, a->kv_data_ports = b->kv_data_ports, a->kv_psk_file = b->kv_psk_file;
    a->kv_lease_ms = b->kv_lease_ms, a->kv_handshake_ms = b->kv_handshake_ms;
    a->kv_crypto_threads = b->kv_crypto_threads, a->kv_integrity = b->kv_integrity;
    a->kv_gpu_tags = b->kv_gpu_tags;
    a->prefill_timeout_ms = b->prefill_timeout_ms;
    b->kv_ip = t.kv_ip, b->kv_data_ports = t.kv_data_ports, b->kv_psk_file = t.kv_psk_file;
    b->kv_lease_ms = t.kv_lease_ms, b->kv_handshake_ms = t.kv_handshake_ms;
    b->kv_crypto_threads = t.kv_crypto_threads, b->kv_integrity = t.kv_integrity;
    b->kv_gpu_tags = t.kv_gpu_tags;
    b->prefill_timeout_ms = t.prefill_timeout_ms;
}

/* The three reloadable peer options back and forth between a and b. */
static void peers_swap(struct dec_cfg *a, struct dec_cfg *b)
{
    struct pd_cfg_list l = a->prefill;
    char *k = a->kv_key_id;
    int64_t m = a->local_prefill_max_tokens;
    a->prefill = b->prefill, a->kv_key_id = b->kv_key_id;
    a->local_prefill_max_tokens = b->local_prefill_max_tokens;
    b->prefill = l, b->kv_key_id = k, b->local_prefill_max_tokens = m;
}

static void dec_rt_reload(void *arg)
{
    struct daemon *d = arg;
    struct dec_cfg *c = d->cfg, nc;
    char err[512];
    if (pd_runtime_reload_cfg(d->rt, options, c, &nc, d->argc, d->argv) < 0)
        return;
    /* c holds the reloaded --prefill, --kv-key-id, --local-prefill-max-tokens
     * (and nc what c had) */
    if (d->remote) {
        dec_remote_reload_keys(d->remote);
        int rc = dec_remote_reload(d->remote, (const char *const *)c->prefill.items,
                                   (unsigned)c->prefill.n, c->kv_key_id, err, sizeof(err));
        if (rc < 0) {
            pd_log(PD_LOG_ERR, "SIGHUP: prefill peers and key id not changed: %s", err);
            peers_swap(c, &nc); /* c says what runs */
        } else {
            dec_server_set_remote(d->srv, d->remote, (uint32_t)c->local_prefill_max_tokens);
        }
    } else if (c->prefill.n) {
        /* the first peers: the channel is made now, with the kv-* options of
         * the configuration just read (nc's), which c takes if it works */
        peers_swap(c, &nc);
        if (remote_open(d, &nc, err, sizeof(err)) < 0) {
            pd_log(PD_LOG_ERR, "SIGHUP: prefill peers not added, still prefilling locally: %s",
                   err);
        } else {
            pd_log(PD_LOG_NOTICE, "SIGHUP: prefill peers: added %zu (first: %s), from %s; "
                   "prompts over %" PRId64 " tokens go to them", nc.prefill.n,
                   nc.prefill.items[0], nc.kv_ip, nc.local_prefill_max_tokens);
            peers_swap(c, &nc); /* what runs now: c takes the peers and the kv-* options */
            kv_swap(c, &nc);
        }
    } else {
        pd_log(PD_LOG_NOTICE, "SIGHUP: no prefill peers before or after: nothing to change");
    }
    pd_cfg_done(options, &nc);
}

static const struct pd_runtime_ops dec_rt_ops = {
    .running = dec_rt_running,
    .drain = dec_rt_drain,
    .cut = dec_rt_cut,
    .reload = dec_rt_reload,
    .status = dec_rt_status,
    .scrape = dec_rt_scrape,
};

/* After the drain: give queued response bytes a moment to reach clients. */
static void flush_output(struct daemon *d)
{
    uint64_t until = pd_now_ns() + FLUSH_GRACE_NS;
    while (dec_server_pending_output(d->srv) > 0 && pd_now_ns() < until) {
        struct timeval tv = {0, 20000};
        event_base_loopexit(pd_runtime_base(d->rt), &tv);
        pd_runtime_run(d->rt);
    }
}

static int engine_open(struct daemon *d, struct pd_model *m, char *err, size_t errlen)
{
    const struct dec_cfg *c = d->cfg;
    enum pd_device device = PD_DEVICE_CPU;
    int rc;
    if ((rc = pd_engine_pick_device(c->device, &device, err, errlen)) < 0)
        return rc;
    if (err[0])
        pd_log(PD_LOG_INFO, "%s", err);
    /* on a GPU, prefill peers' blocks land in the device pool, or in
     * page-locked host staging first (made only with peers at start) */
    char kvline[320];
    const bool direct = pd_runtime_kv_direct(device != PD_DEVICE_CPU, c->kv_direct,
                                             c->kv_gpu_tags, kvline, sizeof(kvline));
    if (kvline[0])
        pd_log(PD_LOG_INFO, "%s", kvline);
    struct pd_engine_params ep = {.model = m, .kv_cache_bytes = c->kv_cache_memory,
                                  .device = device,
                                  .kv_staging = c->prefill.n > 0 && !direct, .kv_direct = direct,
                                  .kv_staging_bytes = c->kv_staging_memory,
                                  PD_ENGINE_DEVICE_PARAMS(*c),
                                  PD_ENGINE_KV_PARAMS(*c),
                                  .prefix_cache = c->enable_prefix_caching,
                                  .max_batched_tokens = (uint32_t)c->max_num_batched_tokens,
                                  .max_model_len = (uint32_t)c->max_model_len,
                                  .max_batch_items = (uint32_t)c->max_num_seqs};
    if ((rc = pd_engine_new(&ep, &d->engine, err, errlen)) < 0)
        return rc;
    if (pd_engine_describe(d->engine)[0])
        pd_log(PD_LOG_INFO, "%s", pd_engine_describe(d->engine));
    char note[320];
    if (pd_engine_take_note(d->engine, note, sizeof(note)))
        pd_log(PD_LOG_WARN, "%s", note);
    if (pd_engine_max_model_len(d->engine) < 2)
        return pd_errf(err, errlen, -EINVAL, "--max-model-len must be at least 2");
    if (c->max_num_seqs > c->max_num_batched_tokens)
        return pd_errf(err, errlen, -EINVAL, "--max-num-seqs (%" PRId64 ") must not exceed "
                       "--max-num-batched-tokens (%" PRId64 "): every running request decodes "
                       "a token each step", c->max_num_seqs, c->max_num_batched_tokens);
    return 0;
}

/* The API server and the compute thread, on the runtime's loop. */
static int server_open(struct daemon *d, const struct pd_tokenizer *tok,
                       const struct pd_chat_template *chat, char *err, size_t errlen)
{
    const struct dec_cfg *c = d->cfg;
    struct pd_engine *e = d->engine;
    const uint32_t max_len = pd_engine_max_model_len(e);
    uint32_t max_prompt = c->max_prompt_tokens && c->max_prompt_tokens < max_len
                              ? (uint32_t)c->max_prompt_tokens : max_len - 1;
    uint64_t pool = (uint64_t)pd_kvcache_n_blocks(pd_engine_kvcache(e)) *
                    pd_kvcache_layout(pd_engine_kvcache(e))->block_size;
    int rc;
    if (pool < 2)
        return pd_errf(err, errlen, -EINVAL,
                       "the KV pool holds no room for a request; raise --kv-cache-memory");
    struct dec_server_cfg sc = {
        .host = c->host, .port = (uint16_t)c->port, .api_key = c->api_key,
        .model_name = d->served_name, .n_vocab = pd_engine_n_vocab(e),
        .max_model_len = max_len, .max_prompt_tokens = max_prompt,
        .max_tokens_cap = (uint32_t)c->max_tokens_cap, .kv_capacity_tokens = pool,
        .max_body = c->max_body_size, .max_client_buffer = c->max_client_buffer,
        .max_connections = (uint32_t)d->max_connections,
        .header_timeout_s = (uint32_t)c->header_timeout, .json_depth = (int)c->max_json_depth,
        .max_connections_per_source = (uint32_t)c->max_connections_per_source};
    if ((rc = dec_server_new(&sc, pd_runtime_base(d->rt), tok, chat, &d->srv, err, errlen)) < 0)
        return rc;
    pd_runtime_set_metrics(d->rt, dec_server_metrics(d->srv));
    struct dec_sched_params sp = {.engine = e, .tok = tok,
                                  .idle_tick_ms = pd_runtime_tick_ms(d->rt),
                                  .max_num_seqs = (uint32_t)c->max_num_seqs,
                                  .max_waiting = (uint32_t)c->max_waiting,
                                  .metrics = *dec_server_sched_metrics(d->srv),
                                  .notify = dec_server_wake, .notify_arg = d->srv,
                                  .failover = (enum dec_failover)c->prefill_failover,
                                  .cache_remote = c->kv_integrity};
    if ((rc = dec_sched_new(&sp, &d->sched, err, errlen)) < 0)
        return rc;
    dec_server_set_sched(d->srv, d->sched);
    pd_runtime_watch(d->rt, dec_sched_worker(d->sched));
    return 0;
}

static void log_serving(const struct daemon *d, const struct pd_tokenizer *tok)
{
    const struct dec_cfg *c = d->cfg;
    struct pd_kvcache *kc = pd_engine_kvcache(d->engine);
    pd_log(PD_LOG_NOTICE, "serving %s (max-model-len %u, KV pool %" PRIu64 " tokens, %s)",
           d->served_name, pd_engine_max_model_len(d->engine),
           (uint64_t)pd_kvcache_n_blocks(kc) * pd_kvcache_layout(kc)->block_size,
           tok ? "text and token-id prompts" : "token-id prompts only: no tokenizer");
    if (!d->remote)
        return;
    pd_log(PD_LOG_NOTICE, "prefill peers:");
    for (size_t i = 0; i < c->prefill.n; i++)
        pd_log(PD_LOG_NOTICE, "  %s (from %s; prompts over %" PRId64 " tokens; failover %s)",
               c->prefill.items[i], c->kv_ip, c->local_prefill_max_tokens,
               failovers[c->prefill_failover]);
}

/* Every failure fills err and returns a negative errno (pd_runtime_main
 * reports it, after the teardown here). */
static int run(struct daemon *dp, struct pd_model *m, const struct pd_tokenizer *tok,
               const struct pd_chat_template *chat, char *err, size_t errlen)
{
    struct daemon d = *dp;
    const struct dec_cfg *c = d.cfg;
    int rc;

    struct pd_runtime_params rp = {.admin_host = c->admin_host,
                                   .admin_port = (uint16_t)c->admin_port,
                                   .header_timeout_s = (uint32_t)c->header_timeout,
                                   .drain_timeout_s = (uint32_t)c->drain_timeout,
                                   .ops = &dec_rt_ops, .arg = &d};
    if ((rc = engine_open(&d, m, err, errlen)) < 0 ||
        (rc = pd_runtime_new(&rp, &d.rt, err, errlen)) < 0 ||
        (rc = server_open(&d, tok, chat, err, errlen)) < 0 ||
        (rc = dec_server_listen(d.srv, err, errlen)) < 0 ||
        (rc = pd_runtime_listen(d.rt, err, errlen)) < 0)
        goto out;
    /* the KV channel after the listeners: its connections take ephemeral
     * ports, which must not take the ones the listeners were given */
    if ((c->prefill.n && (rc = remote_open(&d, c, err, errlen)) < 0) ||
        (rc = pd_worker_start(dec_sched_worker(d.sched), err, errlen)) < 0)
        goto out;
    log_serving(&d, tok);
    if ((rc = pd_runtime_ready(d.rt, err, errlen)) < 0)
        goto out;

    pd_runtime_run(d.rt);

    /* drained (or cut at the deadline): deliver what the compute thread
     * still has, let the bytes go out, close */
    dec_server_cancel_all(d.srv);
    dec_remote_stop(d.remote);
    pd_worker_stop(dec_sched_worker(d.sched));
    dec_server_take_events(d.srv);
    flush_output(&d);
    pd_log(PD_LOG_NOTICE, "stopped");
out:
    if (d.sched)
        pd_worker_stop(dec_sched_worker(d.sched));
    /* kvx before the pool (the engine): it ends every receive into it */
    d.remote = dec_remote_free(d.remote);
    d.srv = dec_server_free(d.srv); /* before the scheduler: jobs it holds drop refs */
    d.sched = dec_sched_free(d.sched);
    d.rt = pd_runtime_free(d.rt);
    pd_engine_free(d.engine);
    return rc;
}

/* pd_runtime_main's serve: the model, its tokenizer and chat template, then
 * the daemon. */
static int serve(void *cfg, const struct pd_cfg_args *a, int argc, char **argv, char *err,
                 size_t errlen)
{
    struct dec_cfg *c = cfg;
    struct daemon d = {.cfg = c, .argc = argc, .argv = argv,
                       .max_connections = raise_fd_limit(c)};
    struct pd_model *m = NULL;
    struct pd_tokenizer *tok = NULL;
    struct pd_chat_template *chat = NULL;
    char *name = NULL;
    struct pd_model_params mp = {.path = a->n_positional ? a->positional[0] : c->model,
                                 .load_format = (enum pd_load_format)c->load_format,
                                 .shape = c->model_shape, .seed = (uint64_t)c->seed};
    int rc = pd_runtime_load_model(&mp, &m, err, errlen);
    if (rc < 0)
        goto out;
    if (!(d.served_name = c->served_model_name) && !(d.served_name = name = default_name(m))) {
        rc = pd_errf(err, errlen, -ENOMEM, "out of memory");
        goto out;
    }
    if (pd_model_gguf(m) || pd_model_dir(m)) {
        rc = pd_tok_load_model(m, &tok, err, errlen);
        if (rc < 0 && rc != -ENOENT)
            goto out;
        if (rc == -ENOENT)
            pd_log(PD_LOG_WARN, "the model has no tokenizer (%s): token-id prompts only", err);
    }
    if (tok) {
        rc = c->chat_template ? pd_chat_template_load(c->chat_template, tok, &chat, err, errlen)
                              : pd_chat_template_from_tok(tok, &chat, err, errlen);
        /* a template we cannot render exactly is refused now, not served
         * wrong; a model without one serves completions only */
        if (rc < 0 && (c->chat_template || rc != -ENOENT))
            goto out;
        if (rc < 0)
            pd_log(PD_LOG_WARN, "no chat template (%s): /v1/chat/completions refuses requests; "
                   "see --chat-template", err);
    }
    rc = run(&d, m, tok, chat, err, errlen);
out:
    pd_chat_template_free(chat);
    pd_tok_free(tok);
    pd_model_free(m);
    free(name);
    return rc;
}

int main(int argc, char **argv)
{
    struct dec_cfg c;
    return pd_runtime_main(options, &c, "decoded", argc, argv, serve);
}
