/* decoded/server: the HTTP side of decoded, on the event-loop thread.
 *
 *   struct dec_server *srv;
 *   dec_server_new(&cfg, base, tok, chat, &srv, err, sizeof err);   // metrics, wake event
 *   sched params: .metrics = *dec_server_sched_metrics(srv), .notify = dec_server_wake, arg srv
 *   dec_server_set_sched(srv, sched);
 *   dec_server_listen(srv, err, sizeof err);     // the API listener bound
 *   ... event_base_dispatch ...
 *   dec_server_drain(srv);                       // SIGTERM: stop accepting, 503 new requests
 *   dec_server_inflight(srv) == 0 -> done; or dec_server_cancel_all(srv) at the drain deadline
 *   srv = dec_server_free(srv);                  // before the scheduler is freed
 *
 * Routes (API address): POST /v1/completions, POST /v1/chat/completions,
 * GET /v1/models, GET /health. The admin address (/metrics, /health) is the
 * daemon runtime's (common/daemon/runtime.h), rendering this server's
 * registry after dec_server_scrape.
 * See docs/internals/daemon.md for limits, errors and streaming.
 */
#ifndef DEC_SERVER_H
#define DEC_SERVER_H

#include "scheduler.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct pd_tokenizer;
struct pd_chat_template;
struct pd_metrics;

struct dec_server_cfg {
    const char *host;
    uint16_t port; /* 0: any free port (the log says which) */
    const char *api_key; /* NULL or "": no authentication */
    const char *model_name; /* served name */
    uint32_t n_vocab, max_model_len;
    uint32_t max_prompt_tokens; /* <= max_model_len - 1 */
    uint32_t max_tokens_cap; /* 0: none */
    uint64_t kv_capacity_tokens; /* the pool: a request's worst case must fit */
    uint64_t max_body; /* bytes of a request body (413 past it) */
    uint64_t max_client_buffer; /* bytes queued to one client before it is cut */
    uint32_t max_connections;
    uint32_t max_connections_per_source; /* 0: no per-address cap */
    uint32_t header_timeout_s; /* a request's headers (and then body) deadline; idle timeout */
    int json_depth;
};

struct dec_server;

int dec_server_new(const struct dec_server_cfg *cfg, struct event_base *base,
                   const struct pd_tokenizer *tok, const struct pd_chat_template *chat,
                   struct dec_server **out, char *err, size_t errlen);
struct dec_server *dec_server_free(struct dec_server *s);
const struct dec_sched_metrics *dec_server_sched_metrics(struct dec_server *s);
struct pd_metrics *dec_server_metrics(struct dec_server *s);
/* The series counted elsewhere (connections, refusals, the KV channel) up
 * to date, before the registry renders. */
void dec_server_scrape(struct dec_server *s);
void dec_server_set_sched(struct dec_server *s, struct dec_sched *sched);
/* Prefill peers: prompts longer than local_max tokens go to r (NULL: none). */
struct dec_remote;
void dec_server_set_remote(struct dec_server *s, struct dec_remote *r, uint32_t local_max);
/* Bind the API listener. */
int dec_server_listen(struct dec_server *s, char *err, size_t errlen);
/* The compute thread's notify(): wakes the loop to take events. */
void dec_server_wake(void *arg);
void dec_server_drain(struct dec_server *s);
uint32_t dec_server_inflight(const struct dec_server *s);
void dec_server_cancel_all(struct dec_server *s);
/* Take and handle the scheduler's events now (the wake event does this;
 * shutdown calls it after stopping the scheduler). */
void dec_server_take_events(struct dec_server *s);
/* Connections open on the API address. */
unsigned dec_server_connections(const struct dec_server *s);
/* Response bytes still queued for clients (shutdown lets them go first). */
size_t dec_server_pending_output(const struct dec_server *s);

#endif
