/* common/daemon/kv_metrics: the KV channel's counters (pd_kvx_get_stats)
 * as Prometheus series in a daemon's registry (metrics.h), named alike on
 * both daemons:
 * pdserve:kv_handshakes_total, pdserve:kv_handshake_failures_total{reason},
 * pdserve:kv_integrity_failures_total, pdserve:kv_sessions, and for the
 * sender (PD_ROLE_P) pdserve:kv_bytes_sent_total and
 * pdserve:kv_blocks_sent_total (decoded counts what it received as it
 * verifies it). Scrape, from the loop before rendering, advances them to the
 * transport's counters. The struct is the daemon's; a series the registry
 * had no room for stays NULL, and updates to it are no-ops. Also the one
 * way both daemons log the channel's warnings (pd_kv_log_warning) and its
 * sessions coming up (pd_kv_log_session_up). */
#ifndef PD_KV_METRICS_H
#define PD_KV_METRICS_H

#include "kvx.h"
#include "log.h"
#include "metrics.h"

#include <stdbool.h>

struct pd_kv_metrics {
    struct pd_metric *hs_ok, *hs_fail[PD_KVX_HSF_N], *integrity, *sessions;
    struct pd_metric *bytes_sent, *blocks_sent; /* P only */
    struct pd_kvx_stats last;
};
void pd_kv_metrics_init(struct pd_kv_metrics *km, struct pd_metrics *m, enum pd_role role);
void pd_kv_metrics_scrape(struct pd_kv_metrics *km, const struct pd_kvx *kvx);

/* A WARNING event (a failed handshake, the KV port out of descriptors):
 * its line (pd_kvx_event_warning) logged under rl, and true: the daemon's
 * event handler is done with it. False for every other event. */
bool pd_kv_log_warning(const struct pd_kvx_event *ev, struct pd_ratelimit *rl);
/* A SESSION_UP event's notice: "KV session up: <who><address> (key K; UCX
 * transports T)", who naming the peer's role ("" or "prefill peer "). */
void pd_kv_log_session_up(const struct pd_kvx_event *ev, const char *who);

#endif
