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

#include "kvcache.h"
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

/* The prefix cache's series (docs/internals/prefix.md), alike on both
 * daemons, updated by the compute thread:
 * pdserve:prefix_cache_queries_total and pdserve:prefix_cache_hits_total
 * (tokens: vLLM's names and meaning), pdserve:prefix_cache_block_queries_total
 * and pdserve:prefix_cache_block_hits_total (full blocks),
 * pdserve:prefix_cache_blocks (blocks in the index) and
 * pdserve:prefix_cache_evictions_total. */
struct pd_prefix_metrics {
    struct pd_metric *q_tokens, *hit_tokens, *q_blocks, *hit_blocks, *cached, *evictions;
    uint64_t last_evictions;
};
void pd_prefix_metrics_init(struct pd_prefix_metrics *pm, struct pd_metrics *m);
/* One lookup: q_tokens tokens asked for, hit_tokens of them found cached;
 * likewise in full blocks. pm may be NULL. */
void pd_prefix_metrics_lookup(struct pd_prefix_metrics *pm, uint32_t q_tokens, uint32_t hit_tokens,
                              uint32_t q_blocks, uint32_t hit_blocks);
/* The index's size and evictions from the pool's counters. pm may be NULL. */
void pd_prefix_metrics_pool(struct pd_prefix_metrics *pm, const struct pd_kvcache *kc);

/* A WARNING event (a failed handshake, the KV port out of descriptors):
 * its line (pd_kvx_event_warning) logged under rl, and true: the daemon's
 * event handler is done with it. False for every other event. */
bool pd_kv_log_warning(const struct pd_kvx_event *ev, struct pd_ratelimit *rl);
/* A SESSION_UP event's notice: "KV session up: <who><address> (key K; UCX
 * transports T)", who naming the peer's role ("" or "prefill peer "). */
void pd_kv_log_session_up(const struct pd_kvx_event *ev, const char *who);

#endif
