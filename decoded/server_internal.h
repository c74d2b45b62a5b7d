/* decoded/server internals, shared by server.c (routes, generation
 * requests, lifecycle) and reply.c (replies, streams, the in-flight list),
 * which is below it. Not a public header. */
#ifndef DEC_SERVER_INTERNAL_H
#define DEC_SERVER_INTERNAL_H

#include "server.h"

#include "api.h"
#include "chat.h"
#include "dlist.h"
#include "http.h"
#include "metrics.h"
#include "remote.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stdint.h>

#define MAX_HEADERS_SIZE (16u << 10)
#define PEEK_INTERVAL_NS 200000000u /* how often a waiting client is checked for having left */

/* One choice of a request (one per prompt of a completions request): its
 * job and what it produced so far. */
struct dec_choice {
    struct dec_job *job; /* one reference; job->choice is this one's index */
    char *text; /* non-streamed: the completion so far */
    size_t len, cap;
    cJSON *lp; /* log-probabilities not yet sent (streamed) or so far (not) */
    size_t text_offset; /* characters of the text so far (dec_api_chars) */
    char *echo; /* echo: the prompt's text, owned (NULL: no echo); goes out before the
                 * completion, at the choice's first event */
    size_t echo_len;
    bool echoed;
    struct dec_toolcall *tc; /* tools: the calls read out of the text (NULL: none) */
    bool started; /* streamed chat: the role went out */
    bool done; /* its job's last event came */
    enum dec_finish finish;
};

/* One API request between its arrival and its last byte. */
struct dec_http {
    struct dec_server *srv;
    struct pd_dnode link; /* in the server's in-flight list */
    struct evhttp_request *req; /* NULL once libevent freed it */
    struct evhttp_connection *evcon; /* NULL once the connection closed */
    struct dec_choice *ch; /* (n_ch) */
    uint32_t n_ch, n_done; /* choices, and those whose job ended */
    struct dec_api_out out;
    const char *path;
    bool stream, include_usage, cut, client_gone;
    bool failed; /* a choice failed: the error went out, the others were cancelled */
    enum dec_finish fail_finish; /* the failing choice's, and its error (for the log) */
    char err[256];
    int status; /* for the log, once decided */
    uint32_t n_top;
    bool logprobs;
    uint32_t n_prompt, n_gen; /* summed over the choices */
    uint32_t n_preempted;
    uint64_t t_first_ns; /* the first token of any choice */
    uint64_t t_start_ns, last_peek_ns;
};

/* Cancel every job of h (the client left, was cut, or a choice failed). */
void dec_http_cancel(struct dec_http *h);

struct dec_server {
    struct dec_server_cfg cfg;
    struct event_base *base;
    const struct pd_tokenizer *tok;
    const struct pd_chat_template *chat;
    struct dec_sched *sched;
    struct dec_remote *remote; /* NULL: every prompt prefills locally */
    uint32_t local_prefill_max;
    struct evhttp *api;
    struct pd_http_conns *api_conns;
    struct event *wake_ev;
    struct pd_dlist inflight; /* dec_http */
    bool draining;
    struct dec_api_limits limits;

    struct pd_metrics *metrics;
    struct dec_sched_metrics sm;
    struct pd_prefix_metrics pm; /* sm.prefix */
    struct pd_metric *fin_stop, *fin_length, *fin_abort, *fin_error;
    struct pd_metric *http_2xx, *http_4xx, *http_5xx, *conns_gauge, *cut_total;
    struct pd_metric *refused[3]; /* deadline, per_source, bad_request */
    struct pd_http_conns_stats refused_seen;
    struct pd_ratelimit rl_cut, rl_refuse;
};

/* ---- reply.c ---- */
/* an OpenAI-shaped error (and the request's log line) */
void dec_reply_reject(struct dec_server *s, struct evhttp_request *req, const char *id, int status,
                      const char *param, const char *code, const char *msg);
/* obj as the body (freed here) */
void dec_reply_json(struct dec_server *s, struct evhttp_request *req, int status, cJSON *obj);
void dec_http_unlink(struct dec_server *s, struct dec_http *h);
void dec_http_free(struct dec_http *h);
/* pd_http_conns' callbacks, and the wake event's */
void dec_reply_conn_refused(const char *why, const char *peer, void *arg);
void dec_reply_conn_closed(struct evhttp_connection *evcon, void *arg);
void dec_reply_wake_cb(evutil_socket_t fd, short what, void *arg);

#endif
