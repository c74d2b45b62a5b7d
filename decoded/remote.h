/* decoded/remote: prefill on peers (--prefill HOST:PORT), on the loop thread.
 *
 *   struct dec_remote *r;
 *   dec_remote_new(&cfg, base, engine, metrics, &r, err, sizeof err);   // kvx, peers, metrics
 *   dec_remote_set_sched(r, sched);
 *   server: DEC_EV_REMOTE_START -> dec_remote_start(r, ev)   (pick a peer, pd_kvx_request)
 *           DEC_EV_REMOTE_CANCEL -> dec_remote_cancel(r, ev->job)
 *   /metrics: dec_remote_scrape(r) first (kvx counters, peer state)
 *   SIGHUP:  dec_remote_reload_keys(r); dec_remote_reload(r, peers, n, key_id, err, len)
 *   r = dec_remote_free(r);          // after the loop stopped; before the engine (the pool)
 *
 * Per request: the healthy peer (session up, not failed for this request)
 * with the fewest prompt tokens outstanding. Whatever happens, the scheduler
 * hears exactly once per start, and only after kvx RELEASED the transfer's
 * blocks: dec_sched_remote_done (DONE, every block verified) or
 * dec_sched_remote_failed (the reason, naming the peer). Nothing here frees
 * or reuses a block; the compute thread owns the pool.
 *
 * A reload changes the peer list in place: new addresses connect as at
 * start; a peer that left the list takes no new request and is closed once
 * its last transfer is over (a transfer that fails meanwhile fails over as
 * any other); the others keep their sessions.
 *
 * Ownership: the caller owns the base, the engine (its pool and layout) and
 * the metrics registry; dec_remote owns kvx and the keyring. Jobs in flight
 * hold a reference until their report.
 */
#ifndef DEC_REMOTE_H
#define DEC_REMOTE_H

#include "scheduler.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct pd_engine;
struct pd_metrics;

#define DEC_REMOTE_MAX_PEERS 64 /* kvx's cap; a job's failed-peer set is one uint64_t */

struct dec_remote_cfg {
    const char *const *peers; /* (n_peers) "host:port" */
    unsigned n_peers;
    const char *kv_ip;
    uint16_t data_port_lo, data_port_hi;
    const char *psk_file;
    const char *key_id; /* NULL: the file's only key */
    uint32_t lease_ms, handshake_ms, request_deadline_ms;
    unsigned crypto_threads;
    bool no_integrity;
    bool gpu_tags; /* with the engine on a GPU: tags there (--kv-gpu-tags) */
    enum dec_failover failover;
};

struct dec_remote;

int dec_remote_new(const struct dec_remote_cfg *cfg, struct event_base *base,
                   struct pd_engine *engine, struct pd_metrics *metrics, struct dec_remote **out,
                   char *err, size_t errlen);
/* Accepts NULL; returns NULL. Ends every transfer (no report follows). */
struct dec_remote *dec_remote_free(struct dec_remote *r);
void dec_remote_set_sched(struct dec_remote *r, struct dec_sched *sched);
/* The scheduler's DEC_EV_REMOTE_START / _CANCEL events. */
void dec_remote_start(struct dec_remote *r, const struct dec_event *ev);
void dec_remote_cancel(struct dec_remote *r, struct dec_job *j);
/* No new transfers (shutdown): a start is reported failed at once. */
void dec_remote_stop(struct dec_remote *r);
void dec_remote_scrape(struct dec_remote *r);
/* Every few seconds (the status timer): a peer without a session is logged
 * once, until it comes up again. */
void dec_remote_tick(struct dec_remote *r);
/* Peers in the list (those a reload removed and that still finish their
 * transfers are not counted). */
unsigned dec_remote_n_peers(const struct dec_remote *r);
/* SIGHUP: re-read the key file or directory; logs the outcome. */
void dec_remote_reload_keys(struct dec_remote *r);
/* SIGHUP, after the keys: make peers[n_peers] ("host:port", copied) the peer
 * list and key_id (NULL: keep the current one) the key of new sessions.
 * Either all of it is applied, with one NOTICE line naming what changed, or
 * nothing, with a negative errno and the reason in err (a peer that does not
 * resolve, a key id not in the ring, over DEC_REMOTE_MAX_PEERS slots while
 * removed peers still finish). */
int dec_remote_reload(struct dec_remote *r, const char *const *peers, unsigned n_peers,
                      const char *key_id, char *err, size_t errlen);

#endif
