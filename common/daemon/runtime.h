/* common/daemon/runtime: what both daemons run on, written once. The event
 * loop, signals, the reload hook, the drain, the systemd watchdog fed by the
 * compute thread's heartbeat, STATUS= lines, and the admin endpoint
 * (GET /health, GET /metrics) with one set of caps and one error shape. A
 * daemon brings its own work (listeners, scheduler, KV channel) and a table
 * of hooks; the runtime decides when they run (as systemd's sd-event with
 * sd_event_set_watchdog).
 *
 *   static const struct pd_runtime_ops ops = {.running = ..., .drain = ..., .cut = ...,
 *                                             .reload = ..., .status = ..., .scrape = ...};
 *   struct pd_runtime_params rp = {.admin_host = "127.0.0.1", .admin_port = 8001,
 *                                  .header_timeout_s = 30, .drain_timeout_s = 30,
 *                                  .metrics = m, .ops = &ops, .arg = d};
 *   if (pd_runtime_new(&rp, &rt, err, sizeof err) < 0) ...   // the loop, signals, admin
 *   base = pd_runtime_base(rt);        // the daemon's listeners, compute thread
 *   pd_runtime_watch(rt, worker);      // the compute thread the watchdog watches
 *   pd_runtime_listen(rt, err, sizeof err);   // the admin address
 *   pd_runtime_ready(rt, err, sizeof err);    // watchdog, status, READY=1
 *   pd_runtime_run(rt);                // until the daemon ends the loop
 *   rt = pd_runtime_free(rt);
 *
 * Signals (the one rule for both daemons):
 *   SIGTERM, SIGINT: STOPPING=1, ops->drain (take no new work; end the loop
 *     with pd_runtime_stop once nothing runs), and the drain timer;
 *   at the drain timeout, or on a second SIGTERM/SIGINT: ops->cut (end what
 *     still runs now);
 *   SIGHUP: RELOADING=1, ops->reload, READY=1; ignored (with a log line)
 *     while stopping, since READY=1 after STOPPING=1 would tell systemd the
 *     service is back.
 *
 * The watchdog (WATCHDOG_USEC set by systemd) is fed from the loop at half
 * the interval, and only while the watched worker's heartbeat
 * (common/daemon/worker.h) is fresher than the interval: a stuck compute
 * thread gets the service restarted. It beats at least every
 * pd_runtime_tick_ms.
 *
 * The admin endpoint answers GET (and HEAD) /health: 200 {"status":"ok"}, or
 * 503 {"status":"stopping"} while draining; GET /metrics: the registry in
 * Prometheus text after ops->scrape; any other method 405, any other path
 * 404, as OpenAI-shaped errors. Caps: PD_RUNTIME_ADMIN_CONNECTIONS open
 * connections, 16 KiB of headers, 4 KiB of body, header_timeout_s for a
 * request's head however it trickles; it stays open during the drain.
 *
 * The runtime is the daemon's top: its lifecycle lines (signals, drain,
 * watchdog, the admin address) are logged here, where they are decided.
 * Everything runs on the loop thread.
 */
#ifndef PD_RUNTIME_H
#define PD_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PD_RUNTIME_ADMIN_CONNECTIONS 64

struct event_base;
struct pd_cfg_opt;
struct pd_metrics;
struct pd_runtime;
struct pd_worker;

struct pd_runtime_ops {
    unsigned (*running)(void *arg); /* requests running now, for the log lines */
    void (*drain)(void *arg); /* the first SIGTERM/SIGINT */
    void (*cut)(void *arg); /* the drain timeout, or a second SIGTERM/SIGINT */
    void (*reload)(void *arg); /* SIGHUP; NULL: nothing to reload */
    /* the rest of the STATUS= line after "serving: " or "draining: " */
    void (*status)(void *arg, char *buf, size_t len);
    void (*scrape)(void *arg); /* NULL, or: bring the registry up to date for /metrics */
};

struct pd_runtime_params {
    const char *admin_host; /* copied */
    uint16_t admin_port; /* 0: any free port (logged) */
    uint32_t header_timeout_s; /* admin requests' heads, idle admin connections */
    uint32_t drain_timeout_s;
    /* the daemon's, rendered at /metrics, outliving the runtime; may come
     * later (pd_runtime_set_metrics), before pd_runtime_listen */
    struct pd_metrics *metrics;
    const struct pd_runtime_ops *ops;
    void *arg;
};

/* The loop (libevent with pthreads), the signal handlers (SIGPIPE
 * ignored), the admin endpoint (not yet listening). -ENOMEM, -EINVAL. */
int pd_runtime_new(const struct pd_runtime_params *p, struct pd_runtime **out, char *err,
                   size_t errlen);
/* Accepts NULL; returns NULL. After the loop ended. */
struct pd_runtime *pd_runtime_free(struct pd_runtime *rt);

struct event_base *pd_runtime_base(struct pd_runtime *rt);
/* How often the compute thread must beat (ms, 1..1000): a quarter of the
 * watchdog interval, or a second without one. */
uint32_t pd_runtime_tick_ms(const struct pd_runtime *rt);
void pd_runtime_set_metrics(struct pd_runtime *rt, struct pd_metrics *m);
/* The admin address, logged as "listening on HOST:PORT (admin)". -EINVAL
 * without a metrics registry. */
int pd_runtime_listen(struct pd_runtime *rt, char *err, size_t errlen);
/* The compute thread whose heartbeat feeds the watchdog (before ready). */
void pd_runtime_watch(struct pd_runtime *rt, const struct pd_worker *w);
/* The watchdog armed, the status timer started, READY=1 and STATUS=serving.
 * -EINVAL when no worker is watched. */
int pd_runtime_ready(struct pd_runtime *rt, char *err, size_t errlen);
/* Runs the loop until the daemon ends it (pd_runtime_stop). */
void pd_runtime_run(struct pd_runtime *rt);
void pd_runtime_stop(struct pd_runtime *rt);
bool pd_runtime_draining(const struct pd_runtime *rt);
/* A reload's new --drain-timeout, for the next drain. */
void pd_runtime_set_drain_timeout(struct pd_runtime *rt, uint32_t s);

/* A daemon's main(), the part every daemon writes the same: logging named
 * for name and the options read (pd_cfg_main; usage "[OPTIONS]
 * [MODEL.gguf]": --help, --print-config, --version or a bad option end
 * here with their exit code), then serve with them, then the options
 * released. serve returns main's exit code (0: it served and stopped), or
 * a negative errno with err filled when the daemon could not start: that
 * is logged and sent as STATUS=failed: ..., and main exits 1.
 *
 *   int main(int argc, char **argv)
 *   {
 *       struct my_cfg c;
 *       return pd_runtime_main(options, &c, "prefilld", argc, argv, serve);
 *   } */
struct pd_cfg_args;
typedef int (*pd_runtime_serve_fn)(void *cfg, const struct pd_cfg_args *a, int argc,
                                   char **argv, char *err, size_t errlen);
int pd_runtime_main(const struct pd_cfg_opt *table, void *cfg, const char *name, int argc,
                    char **argv, pd_runtime_serve_fn serve);

/* The model pd_model_load reads, announced first as STATUS=loading model
 * PATH (or the dummy weights' shape). */
struct pd_model;
struct pd_model_params;
int pd_runtime_load_model(const struct pd_model_params *mp, struct pd_model **m, char *err,
                          size_t errlen);

/* The KV channel's path for an engine on a GPU (on_gpu), decided before
 * the engine is made: 1 for the direct path (the device pool is the
 * channel's: engine params kv_direct, kvx's pool_on_device) when want
 * (--kv-direct) and gpu_tags (--kv-gpu-tags: the host reads no device block)
 * allow it and the UCX in use takes CUDA memory (pd_kvx_device_path); 0 to
 * stage through page-locked host memory. line gets the log line that says
 * which and why ("" on the CPU). */
int pd_runtime_kv_direct(bool on_gpu, bool want, bool gpu_tags, char *line, size_t n);

/* The pools a daemon's KV channel takes from its engine e, set in kp: the
 * channel's pool (pd_engine_kv_channel_pool); on a GPU, tags there when
 * gpu_tags (--kv-gpu-tags; always on the direct path, whose device pool the
 * host reads none of), the device pool as kvx's pool_on_device (direct) or,
 * staged with GPU tags and integrity on, as its twin_pool. Returns whether
 * the twin pool is set (pd_runtime_kv_twins): prefilld's scheduler then
 * copies nothing, decoded's remote blocks arrive in the device pool. */
struct pd_engine;
struct pd_kvx_params;
bool pd_runtime_kv_twins(struct pd_engine *e, bool gpu_tags, bool integrity);
bool pd_runtime_kv_pools(struct pd_engine *e, bool gpu_tags, bool integrity,
                         struct pd_kvx_params *kp);

/* SIGHUP's first half, the same for every daemon (its reload hook calls
 * it): the configuration read again as at start (argc, argv: the same
 * flags, the config file, the environment) into next. An invalid one
 * changes nothing: logged, next released, -EINVAL. Else the options the
 * table marks PD_CFG_RELOAD move into cur (pd_cfg_reload), those that
 * changed and need a restart are logged, and the log level and
 * --drain-timeout (when the table has them) take effect. The caller then
 * applies its own reloadable options from cur and releases next
 * (pd_cfg_done). */
int pd_runtime_reload_cfg(struct pd_runtime *rt, const struct pd_cfg_opt *table, void *cur,
                          void *next, int argc, char *const *argv);

#endif
