#include "kv_metrics.h"

#include <stdio.h>
#include <string.h>

void pd_kv_metrics_init(struct pd_kv_metrics *km, struct pd_metrics *m, enum pd_role role)
{
    memset(km, 0, sizeof(*km));
    km->hs_ok =
        pd_metrics_counter(m, "pdserve:kv_handshakes_total", NULL, "KV sessions authenticated.");
    for (int i = 0; i < PD_KVX_HSF_N; i++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "reason=\"%s\"", pd_kvx_hs_fail_name((unsigned)i));
        km->hs_fail[i] = pd_metrics_counter(m, "pdserve:kv_handshake_failures_total", labels,
                                            "KV handshakes refused, by reason.");
    }
    km->integrity = pd_metrics_counter(m, "pdserve:kv_integrity_failures_total", NULL,
                                       "Block tags that did not verify.");
    km->sessions = pd_metrics_gauge(m, "pdserve:kv_sessions", NULL, "Authenticated KV sessions.");
    if (role == PD_ROLE_P) {
        km->bytes_sent =
            pd_metrics_counter(m, "pdserve:kv_bytes_sent_total", NULL, "KV block bytes sent.");
        km->blocks_sent =
            pd_metrics_counter(m, "pdserve:kv_blocks_sent_total", NULL, "KV blocks sent.");
    }
}

void pd_kv_metrics_scrape(struct pd_kv_metrics *km, const struct pd_kvx *kvx)
{
    struct pd_kvx_stats s;
    pd_kvx_get_stats(kvx, &s);
    /* counters advance by what happened since the last scrape */
    pd_metric_add(km->hs_ok, (double)(s.handshakes_ok - km->last.handshakes_ok));
    for (int i = 0; i < PD_KVX_HSF_N; i++)
        pd_metric_add(km->hs_fail[i], (double)(s.hs_fail[i] - km->last.hs_fail[i]));
    pd_metric_add(km->integrity, (double)(s.integrity_failures - km->last.integrity_failures));
    pd_metric_add(km->bytes_sent, (double)(s.bytes_sent - km->last.bytes_sent));
    pd_metric_add(km->blocks_sent, (double)(s.blocks_sent - km->last.blocks_sent));
    pd_metric_set(km->sessions, (double)s.sessions);
    km->last = s;
}

void pd_prefix_metrics_init(struct pd_prefix_metrics *pm, struct pd_metrics *m)
{
    memset(pm, 0, sizeof(*pm));
    pm->q_tokens = pd_metrics_counter(m, "pdserve:prefix_cache_queries_total", NULL,
                                      "Prompt tokens looked up in the prefix cache.");
    pm->hit_tokens = pd_metrics_counter(m, "pdserve:prefix_cache_hits_total", NULL,
                                        "Prompt tokens found in the prefix cache (not computed).");
    pm->q_blocks = pd_metrics_counter(m, "pdserve:prefix_cache_block_queries_total", NULL,
                                      "Full prompt blocks looked up in the prefix cache.");
    pm->hit_blocks = pd_metrics_counter(m, "pdserve:prefix_cache_block_hits_total", NULL,
                                        "Full prompt blocks found in the prefix cache.");
    pm->cached = pd_metrics_gauge(m, "pdserve:prefix_cache_blocks", NULL,
                                  "KV blocks in the prefix cache (in use or idle).");
    pm->evictions = pd_metrics_counter(m, "pdserve:prefix_cache_evictions_total", NULL,
                                       "Idle cached blocks evicted for new data.");
}

void pd_prefix_metrics_lookup(struct pd_prefix_metrics *pm, uint32_t q_tokens, uint32_t hit_tokens,
                              uint32_t q_blocks, uint32_t hit_blocks)
{
    if (!pm)
        return;
    pd_metric_add(pm->q_tokens, q_tokens);
    pd_metric_add(pm->hit_tokens, hit_tokens);
    pd_metric_add(pm->q_blocks, q_blocks);
    pd_metric_add(pm->hit_blocks, hit_blocks);
}

void pd_prefix_metrics_pool(struct pd_prefix_metrics *pm, const struct pd_kvcache *kc)
{
    if (!pm)
        return;
    struct pd_kvcache_stats st;
    pd_kvcache_stats(kc, &st);
    pd_metric_set(pm->cached, st.cached);
    pd_metric_add(pm->evictions, (double)(st.evictions - pm->last_evictions));
    pm->last_evictions = st.evictions;
}

void pd_kv_log_session_up(const struct pd_kvx_event *ev, const char *who)
{
    char tl[160];
    pd_kvx_session_transports(ev->session, tl, sizeof(tl));
    pd_log(PD_LOG_NOTICE, "KV session up: %s%s (key %s; UCX transports %s)", who,
           ev->peer_addr ? ev->peer_addr : "?", ev->key_id ? ev->key_id : "?",
           tl[0] ? tl : "not known yet");
}

bool pd_kv_log_warning(const struct pd_kvx_event *ev, struct pd_ratelimit *rl)
{
    char line[512];
    if (!pd_kvx_event_warning(ev, line, sizeof(line)))
        return false;
    pd_log_ratelimited(rl, PD_LOG_WARN, "%s", line);
    return true;
}
