/* common/daemon/runtime: the loop, signals, drain, watchdog, status and the
 * admin endpoint both daemons run on. See runtime.h. */
#include "runtime.h"

#include "cfg.h"
#include "errf.h"
#include "engine.h"
#include "http.h"
#include "kvx.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "notify.h"
#include "worker.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_INTERVAL_S 10
#define ADMIN_MAX_BODY 4096
#define ADMIN_MAX_HEADERS (16u << 10)

static const int signums[] = {SIGTERM, SIGINT, SIGHUP};
#define N_SIGNALS (sizeof(signums) / sizeof(signums[0]))

struct pd_runtime {
    struct pd_runtime_params p;
    char *admin_host;
    struct event_base *base;
    struct event *sigs[N_SIGNALS];
    struct event *drain_ev, *status_ev, *watchdog_ev;
    struct evhttp *admin;
    struct pd_http_conns *admin_conns;
    uint64_t watchdog_us;
    const struct pd_worker *worker; /* its heartbeat feeds the watchdog */
    bool draining;
    struct pd_ratelimit rl_stall, rl_refuse;
};

/* ---- signals and the drain ---- */

static void cut(struct pd_runtime *rt, const char *why)
{
    pd_log(PD_LOG_NOTICE, "%s: cutting %u requests still running", why,
           rt->p.ops->running(rt->p.arg));
    rt->p.ops->cut(rt->p.arg);
}

static void drain_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cut(arg, "drain timeout");
}

static void begin_drain(struct pd_runtime *rt, int sig)
{
    const unsigned n = rt->p.ops->running(rt->p.arg);
    rt->draining = true;
    pd_notify_stopping();
    pd_log(PD_LOG_NOTICE, "%s: stopping; %u requests running, draining for up to %" PRIu32 "s",
           strsignal(sig), n, rt->p.drain_timeout_s);
    pd_notify_status("draining: %u requests running", n);
    struct timeval tv = {.tv_sec = (time_t)rt->p.drain_timeout_s};
    event_add(rt->drain_ev, &tv);
    rt->p.ops->drain(rt->p.arg);
}

static void signal_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pd_runtime *rt = arg;
    const int sig = (int)fd;
    (void)what;
    if (sig == SIGHUP) {
        if (rt->draining) {
            pd_log(PD_LOG_NOTICE, "SIGHUP while stopping: not reloaded");
            return;
        }
        pd_notify_reloading();
        if (rt->p.ops->reload)
            rt->p.ops->reload(rt->p.arg);
        pd_notify_ready();
        return;
    }
    if (!rt->draining) {
        begin_drain(rt, sig);
        return;
    }
    char why[64];
    snprintf(why, sizeof(why), "%s again", strsignal(sig));
    cut(rt, why);
}

/* ---- watchdog, status ---- */

/* Fed from the loop, and only while the compute thread shows life within
 * the watchdog interval: a stuck engine must get the service restarted. */
static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pd_runtime *rt = arg;
    (void)fd;
    (void)what;
    uint64_t age_ns = pd_now_ns() - pd_worker_heartbeat_ns(rt->worker);
    if (age_ns < rt->watchdog_us * 1000u)
        pd_notify_watchdog();
    else
        pd_log_ratelimited(&rt->rl_stall, PD_LOG_WARN,
                           "compute thread silent for %.1fs; not feeding the watchdog",
                           (double)age_ns * 1e-9);
}

static void status_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pd_runtime *rt = arg;
    char line[256];
    (void)fd;
    (void)what;
    rt->p.ops->status(rt->p.arg, line, sizeof(line));
    pd_notify_status("%s: %s", rt->draining ? "draining" : "serving", line);
}

/* ---- the admin endpoint ---- */

static void admin_refused(const char *why, const char *peer, void *arg)
{
    struct pd_runtime *rt = arg;
    pd_log_ratelimited(&rt->rl_refuse, PD_LOG_WARN, "admin HTTP: closing a connection from %s: %s",
                       peer, why);
}

static void admin_metrics(struct pd_runtime *rt, struct evhttp_request *req)
{
    char *text;
    size_t len;
    if (rt->p.ops->scrape)
        rt->p.ops->scrape(rt->p.arg);
    if (pd_metrics_render(rt->p.metrics, &text, &len) < 0) {
        pd_http_error(req, 503, "service_unavailable", NULL, NULL, "out of memory");
        return;
    }
    pd_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

static void admin_cb(struct evhttp_request *req, void *arg)
{
    static const char ok[] = "{\"status\":\"ok\"}", stopping[] = "{\"status\":\"stopping\"}";
    struct pd_runtime *rt = arg;
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    const bool health = path && strcmp(path, "/health") == 0;
    const bool metrics = path && strcmp(path, "/metrics") == 0;
    const enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

    if (!health && !metrics)
        pd_http_error(req, 404, "not_found_error", NULL, "not_found", "no such endpoint");
    else if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        pd_http_error(req, 405, "invalid_request_error", NULL, "method_not_allowed", "use GET");
    }
    else if (metrics)
        admin_metrics(rt, req);
    else if (rt->draining)
        pd_http_reply_json(req, 503, stopping, sizeof(stopping) - 1);
    else
        pd_http_reply_json(req, 200, ok, sizeof(ok) - 1);
}

static int admin_new(struct pd_runtime *rt)
{
    if (!(rt->admin = evhttp_new(rt->base)))
        return -ENOMEM;
    evhttp_set_gencb(rt->admin, admin_cb, rt);
    evhttp_set_timeout(rt->admin, (int)rt->p.header_timeout_s);
    evhttp_set_max_body_size(rt->admin, ADMIN_MAX_BODY);
    evhttp_set_max_headers_size(rt->admin, ADMIN_MAX_HEADERS);
    /* every method reaches admin_cb, so each gets the one error shape */
    evhttp_set_allowed_methods(rt->admin, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    if (!(rt->admin_conns = pd_http_conns_new(rt->admin, rt->base, PD_RUNTIME_ADMIN_CONNECTIONS,
                                              NULL, NULL)))
        return -ENOMEM;
    pd_http_conns_set_limits(rt->admin_conns, rt->p.header_timeout_s, 0, admin_refused, rt);
    return 0;
}

/* ---- public ---- */

int pd_runtime_new(const struct pd_runtime_params *p, struct pd_runtime **out, char *err,
                   size_t errlen)
{
    const struct pd_runtime_ops *o = p->ops;
    if (!o || !o->running || !o->drain || !o->cut || !o->status ||
        !p->admin_host || !p->header_timeout_s)
        return pd_errf(err, errlen, -EINVAL, "runtime: a hook or the admin address is missing");
    struct pd_runtime *rt = calloc(1, sizeof(*rt));
    if (!rt)
        return pd_errf(err, errlen, -ENOMEM, "runtime: out of memory");
    rt->p = *p;
    rt->rl_stall = (struct pd_ratelimit)PD_RATELIMIT_INIT(10000, 1);
    rt->rl_refuse = (struct pd_ratelimit)PD_RATELIMIT_INIT(5000, 5);
    rt->watchdog_us = pd_notify_watchdog_usec();
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() < 0 || !(rt->base = event_base_new())) {
        pd_runtime_free(rt);
        return pd_errf(err, errlen, -ENOMEM, "cannot set up libevent");
    }
    int ok = (rt->admin_host = strdup(p->admin_host)) != NULL && admin_new(rt) == 0 &&
             (rt->drain_ev = evtimer_new(rt->base, drain_deadline_cb, rt)) != NULL &&
             (rt->status_ev = event_new(rt->base, -1, EV_PERSIST, status_cb, rt)) != NULL;
    for (size_t i = 0; ok && i < N_SIGNALS; i++)
        ok = (rt->sigs[i] = evsignal_new(rt->base, signums[i], signal_cb, rt)) != NULL &&
             event_add(rt->sigs[i], NULL) == 0;
    if (!ok) {
        pd_runtime_free(rt);
        return pd_errf(err, errlen, -ENOMEM, "runtime: out of memory setting up the loop");
    }
    *out = rt;
    return 0;
}

struct pd_runtime *pd_runtime_free(struct pd_runtime *rt)
{
    if (!rt)
        return NULL;
    if (rt->admin)
        evhttp_free(rt->admin);
    pd_http_conns_free(rt->admin_conns); /* after evhttp_free */
    for (size_t i = 0; i < N_SIGNALS; i++)
        if (rt->sigs[i])
            event_free(rt->sigs[i]);
    if (rt->drain_ev)
        event_free(rt->drain_ev);
    if (rt->status_ev)
        event_free(rt->status_ev);
    if (rt->watchdog_ev)
        event_free(rt->watchdog_ev);
    if (rt->base)
        event_base_free(rt->base);
    free(rt->admin_host);
    free(rt);
    return NULL;
}

struct event_base *pd_runtime_base(struct pd_runtime *rt) { return rt->base; }

uint32_t pd_runtime_tick_ms(const struct pd_runtime *rt)
{
    uint64_t ms = rt->watchdog_us ? rt->watchdog_us / 4000u : 1000;
    return ms < 1 ? 1 : ms > 1000 ? 1000 : (uint32_t)ms;
}

void pd_runtime_set_metrics(struct pd_runtime *rt, struct pd_metrics *m) { rt->p.metrics = m; }

int pd_runtime_listen(struct pd_runtime *rt, char *err, size_t errlen)
{
    uint16_t bound;
    if (!rt->p.metrics)
        return pd_errf(err, errlen, -EINVAL, "runtime: no metrics registry for /metrics");
    int rc = pd_http_bind(rt->admin, rt->admin_conns, rt->admin_host, rt->p.admin_port, "admin",
                          &bound, err, errlen);
    if (rc == 0)
        pd_log(PD_LOG_NOTICE, "listening on %s:%u (admin)", rt->admin_host, bound);
    return rc;
}

void pd_runtime_watch(struct pd_runtime *rt, const struct pd_worker *w) { rt->worker = w; }

int pd_runtime_ready(struct pd_runtime *rt, char *err, size_t errlen)
{
    if (!rt->worker)
        return pd_errf(err, errlen, -EINVAL, "runtime: no compute thread to watch");
    if (rt->watchdog_us) {
        struct timeval tv = {.tv_sec = (time_t)(rt->watchdog_us / 2000000u),
                             .tv_usec = (suseconds_t)(rt->watchdog_us / 2 % 1000000u)};
        if (!(rt->watchdog_ev = event_new(rt->base, -1, EV_PERSIST, watchdog_cb, rt)) ||
            event_add(rt->watchdog_ev, &tv) < 0)
            return pd_errf(err, errlen, -ENOMEM, "cannot arm the watchdog timer");
        pd_notify_watchdog();
    }
    struct timeval st = {.tv_sec = STATUS_INTERVAL_S};
    event_add(rt->status_ev, &st);
    pd_notify_ready();
    pd_notify_status("serving");
    return 0;
}

void pd_runtime_run(struct pd_runtime *rt) { event_base_dispatch(rt->base); }
void pd_runtime_stop(struct pd_runtime *rt) { event_base_loopexit(rt->base, NULL); }
bool pd_runtime_draining(const struct pd_runtime *rt) { return rt->draining; }
void pd_runtime_set_drain_timeout(struct pd_runtime *rt, uint32_t s) { rt->p.drain_timeout_s = s; }

int pd_runtime_reload_cfg(struct pd_runtime *rt, const struct pd_cfg_opt *table, void *cur,
                          void *next, int argc, char *const *argv)
{
    struct pd_cfg_args a;
    char err[512], restart[512];
    /* on the loop thread: every cJSON parse after start-up happens here
     * (cJSON's error pointer is a global) */
    if (pd_cfg_parse(table, next, argc, argv, &a, err, sizeof(err)) < 0) {
        pd_log(PD_LOG_ERR, "SIGHUP: configuration not reloaded, nothing changed: %s", err);
        pd_cfg_done(table, next);
        return -EINVAL;
    }
    const struct pd_cfg_opt *lv = pd_cfg_find(table, "log-level");
    const struct pd_cfg_opt *dt = pd_cfg_find(table, "drain-timeout");
    int level_was = lv ? *(const int *)((const char *)cur + lv->offset) : 0;
    int64_t drain_was = dt ? *(const int64_t *)((const char *)cur + dt->offset) : 0;
    pd_cfg_reload(table, cur, next, restart, sizeof(restart));
    if (restart[0])
        pd_log(PD_LOG_NOTICE, "SIGHUP: %s changed: kept until a restart", restart);
    int level = lv ? *(const int *)((const char *)cur + lv->offset) : level_was;
    int64_t drain = dt ? *(const int64_t *)((const char *)cur + dt->offset) : drain_was;
    if (level != level_was || drain != drain_was)
        pd_log(PD_LOG_NOTICE, "SIGHUP: log level %s, drain timeout %" PRId64 "s",
               pd_log_levels[level], drain);
    if (lv)
        pd_log_set_level(PD_LOG_ERR + level);
    if (dt)
        pd_runtime_set_drain_timeout(rt, (uint32_t)drain);
    return 0;
}

int pd_runtime_main(const struct pd_cfg_opt *table, void *cfg, const char *name, int argc,
                    char **argv, pd_runtime_serve_fn serve)
{
    struct pd_cfg_args a;
    char err[512] = "";
    int rc;
    if (pd_cfg_main(table, cfg, argc, argv, name, "[OPTIONS] [MODEL.gguf]", 1, &a, &rc))
        return rc;
    rc = serve(cfg, &a, argc, argv, err, sizeof(err));
    if (rc < 0) {
        pd_log(PD_LOG_ERR, "%s", err);
        pd_notify_status("failed: %s", err);
        rc = 1;
    }
    pd_cfg_done(table, cfg);
    return rc;
}

int pd_runtime_kv_direct(bool on_gpu, bool want, bool gpu_tags, char *line, size_t n)
{
    char why[200];
    line[0] = 0;
    if (!on_gpu)
        return 0;
    if (!want || !gpu_tags) {
        snprintf(line, n, "KV channel: blocks staged through page-locked host memory (%s)",
                 !want ? "--kv-direct is off" : "--kv-gpu-tags is off: the CPU tags them there");
        return 0;
    }
    int rc = pd_kvx_device_path(why, sizeof(why));
    snprintf(line, n, "KV channel: %s: %s",
             rc > 0 ? "the device pool goes to UCX as it is (direct)"
                    : "blocks staged through page-locked host memory",
             rc < 0 ? "UCX did not start to say which memory it takes" : why);
    if (rc < 0)
        snprintf(line + strlen(line), n - strlen(line), " (%s)", why);
    return rc > 0;
}

bool pd_runtime_kv_twins(struct pd_engine *e, bool gpu_tags, bool integrity)
{
    return pd_engine_kv_staging(e) && gpu_tags && integrity;
}

bool pd_runtime_kv_pools(struct pd_engine *e, bool gpu_tags, bool integrity,
                         struct pd_kvx_params *kp)
{
    struct pd_kvcache *ch = pd_engine_kv_channel_pool(e), *dev = pd_engine_kvcache(e);
    const bool twins = pd_runtime_kv_twins(e, gpu_tags, integrity);
    kp->pool = pd_kvcache_pool(ch);
    kp->pool_blocks = pd_kvcache_n_blocks(ch);
    kp->gpu_tags = pd_engine_kv_direct(e) || (gpu_tags && pd_engine_on_device(e));
    kp->pool_on_device = pd_engine_kv_direct(e);
    kp->twin_pool = twins ? pd_kvcache_pool(dev) : NULL;
    kp->twin_pool_blocks = twins ? pd_kvcache_n_blocks(dev) : 0;
    return twins;
}

int pd_runtime_load_model(const struct pd_model_params *mp, struct pd_model **m, char *err,
                          size_t errlen)
{
    pd_notify_status("loading model %s", mp->path ? mp->path : mp->shape ? mp->shape : "?");
    return pd_model_load(mp, m, err, errlen);
}
