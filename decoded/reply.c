/* decoded/reply: answers to API clients. Small replies and refusals (counted
 * by status), the in-flight requests, and the engine's events turned into
 * SSE chunks or a whole JSON body. */
#include "server_internal.h"

#include "log.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void count_status(struct dec_server *s, int status)
{
    pd_metric_add(status < 300 ? s->http_2xx : status < 500 ? s->http_4xx : s->http_5xx, 1);
}

/* ---- small replies ---- */

static const char *type_for(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 500: return "internal_error";
    case 502: return "bad_gateway";
    case 503: return "service_unavailable";
    default: return "invalid_request_error";
    }
}

/* An error for a request that never reached the scheduler; logged once. */
void dec_reply_reject(struct dec_server *s, struct evhttp_request *req, const char *id, int status,
                      const char *param, const char *code, const char *msg)
{
    pd_http_error(req, status, type_for(status), param, code, "%s", msg);
    count_status(s, status);
    char path[128];
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    snprintf(path, sizeof(path), "%s", u && evhttp_uri_get_path(u) ? evhttp_uri_get_path(u) : "?");
    pd_log(PD_LOG_INFO, "%s: %s %d %s%s%s", id, path, status,
           code ? code : type_for(status), param ? " param=" : "", param ? param : "");
}

void dec_reply_json(struct dec_server *s, struct evhttp_request *req, int status,
                    cJSON *obj)
{
    char *body = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!body) {
        pd_http_error(req, 503, "service_unavailable", NULL, NULL, "out of memory");
        count_status(s, 503);
        return;
    }
    pd_http_reply_json(req, status, body, strlen(body));
    count_status(s, status);
    free(body);
}

/* ---- in-flight requests ---- */

void dec_http_unlink(struct dec_server *s, struct dec_http *h)
{
    pd_dlist_remove(&s->inflight, &h->link);
}

void dec_http_free(struct dec_http *h)
{
    if (h->job)
        h->job->owner = NULL;
    dec_job_unref(h->job);
    free(h->text);
    cJSON_Delete(h->lp);
    free(h);
}

/* pd_http_conns tells us a connection is gone. A request it carried is
 * either detached (libevent leaves it to us: we free it by replying) or
 * about to be freed with the connection. */
/* A connection refused before a request reached us (common/daemon/http: a
 * deadline, the per-source cap, a malformed head). */
void dec_reply_conn_refused(const char *why, const char *peer, void *arg)
{
    struct dec_server *s = arg;
    pd_log_ratelimited(&s->rl_refuse, PD_LOG_WARN, "HTTP: closing a connection from %s: %s",
                       peer, why);
}

void dec_reply_conn_closed(struct evhttp_connection *evcon, void *arg)
{
    struct dec_server *s = arg;
    pd_metric_set(s->conns_gauge, pd_http_conns_count(s->api_conns));
    for (struct pd_dnode *n = s->inflight.head; n; n = n->next) {
        struct dec_http *h = PD_DNODE_ENTRY(n, struct dec_http, link);
        if (h->evcon != evcon)
            continue;
        h->evcon = NULL;
        h->client_gone = true;
        if (h->req && evhttp_request_get_connection(h->req) != NULL)
            h->req = NULL;
        dec_job_cancel(h->job);
    }
}

static const char *finish_name(enum dec_finish f)
{
    switch (f) {
    case DEC_FIN_STOP: return "stop";
    case DEC_FIN_LENGTH: return "length";
    case DEC_FIN_CANCELLED: return "abort";
    default: return "error";
    }
}

static void log_done(struct dec_http *h, int status, const struct dec_event *e)
{
    uint64_t now = pd_now_ns();
    double e2e = (double)(now - h->t_start_ns) * 1e-9;
    double ttft = e->t_first_ns ? (double)(e->t_first_ns - h->t_start_ns) * 1e-9 : -1;
    const char *why = h->cut ? "abort (slow reader cut)"
                      : h->client_gone && e->finish == DEC_FIN_CANCELLED ? "abort (client gone)"
                                                                         : finish_name(e->finish);
    pd_log(e->finish == DEC_FIN_ERROR ? PD_LOG_ERR : PD_LOG_INFO,
           "%s: %s %d %s prompt=%u completion=%u ttft=%.3fs e2e=%.3fs preempted=%u%s%s",
           h->out.id, h->path, status, why, h->n_prompt, e->n_gen, ttft, e2e, e->n_preempted,
           e->err[0] ? ": " : "", e->err);
}

static int append_text(struct dec_http *h, const char *t, size_t n)
{
    if (h->len + n + 1 > h->cap) {
        size_t cap = h->cap ? h->cap : 256;
        while (cap < h->len + n + 1)
            cap *= 2;
        char *p = realloc(h->text, cap);
        if (!p)
            return -ENOMEM;
        h->text = p;
        h->cap = cap;
    }
    memcpy(h->text + h->len, t, n);
    h->len += n;
    h->text[h->len] = '\0';
    return 0;
}

/* Stream one chunk; cut a client that lets more than the cap pile up. */
static void stream_send(struct dec_http *h, char *json)
{
    struct dec_server *s = h->srv;
    if (!json || !h->req || h->cut || h->client_gone) {
        free(json);
        return;
    }
    int rc = pd_http_sse_send(h->req, json, strlen(json), s->cfg.max_client_buffer);
    free(json);
    if (rc == -ENOBUFS) {
        h->cut = true;
        pd_metric_add(s->cut_total, 1);
        pd_log_ratelimited(&s->rl_cut, PD_LOG_WARN,
                           "%s: client is not reading (over %" PRIu64 " bytes queued); cutting it",
                           h->out.id, s->cfg.max_client_buffer);
        dec_job_cancel(h->job);
        if (h->evcon)
            pd_http_cut(h->evcon);
    }
}

static void finish_stream(struct dec_http *h, const struct dec_event *e)
{
    struct dec_server *s = h->srv;
    int status = 200;
    if (e->finish == DEC_FIN_STOP || e->finish == DEC_FIN_LENGTH) {
        stream_send(h, dec_api_chunk(&h->out, "", 0, false, NULL, finish_name(e->finish),
                                     h->include_usage));
        if (h->include_usage)
            stream_send(h, dec_api_usage_chunk(&h->out, h->n_prompt, e->n_gen));
    } else if (e->finish == DEC_FIN_ERROR || (e->finish == DEC_FIN_CANCELLED && !h->client_gone &&
                                              !h->cut)) {
        /* the status line is gone already: the error travels as an event */
        bool err = e->finish == DEC_FIN_ERROR;
        status = err ? (e->status ? e->status : 500) : 503;
        char *body = pd_http_error_body(err ? e->err : "the server is shutting down",
                                        type_for(status), NULL, NULL);
        stream_send(h, body);
    } else {
        status = 499; /* nginx's "client closed request": for the log */
    }
    if (h->req)
        pd_http_sse_end(h->req, status == 200 || status >= 500);
    h->req = NULL;
    count_status(s, status == 499 ? 400 : status);
    log_done(h, status, e);
}

static void finish_whole(struct dec_http *h, const struct dec_event *e)
{
    struct dec_server *s = h->srv;
    int status;
    if (e->finish == DEC_FIN_STOP || e->finish == DEC_FIN_LENGTH) {
        status = 200;
        char *body = dec_api_response(&h->out, h->text ? h->text : "", h->len, h->lp,
                                      finish_name(e->finish), h->n_prompt, e->n_gen);
        h->lp = NULL;
        if (h->req) {
            if (body) {
                pd_http_reply_json(h->req, 200, body, strlen(body));
            } else {
                status = 503;
                pd_http_error(h->req, status, type_for(status), NULL, NULL, "out of memory");
            }
        }
        free(body);
    } else if (e->finish == DEC_FIN_ERROR) {
        status = e->status ? e->status : 500;
        if (h->req)
            pd_http_error(h->req, status, type_for(status), NULL,
                          e->status ? "prefill_failed" : NULL, "%s", e->err);
    } else {
        status = h->client_gone ? 499 : 503;
        if (h->req)
            pd_http_error(h->req, 503, type_for(503), NULL, "shutting_down",
                          "the server is shutting down");
    }
    h->req = NULL;
    count_status(s, status == 499 ? 400 : status);
    log_done(h, status, e);
}

static void on_event(struct dec_server *s, struct dec_event *e)
{
    if (e->kind == DEC_EV_REMOTE_START) {
        dec_remote_start(s->remote, e);
        return;
    }
    if (e->kind == DEC_EV_REMOTE_CANCEL) {
        dec_remote_cancel(s->remote, e->job);
        return;
    }
    struct dec_http *h = e->job->owner;
    if (!h)
        return;
    if (e->has_token && h->logprobs && !h->lp)
        h->lp = dec_api_lp_new(h->out.kind);
    if (e->has_token && h->lp)
        dec_api_lp_add(h->lp, h->out.kind, s->tok, &e->token, h->n_top, h->text_offset);
    h->text_offset += e->len;

    if (h->stream) {
        /* a chunk when there is text, log-probabilities, or the role to open with */
        bool first = !h->started && h->out.kind == DEC_API_CHAT;
        if (e->len || h->lp || first) {
            stream_send(h, dec_api_chunk(&h->out, e->text, e->len, first, h->lp, NULL,
                                         h->include_usage));
            h->lp = NULL;
            h->started = true;
        }
    } else {
        if (append_text(h, e->text, e->len) < 0)
            dec_job_cancel(h->job);
        /* libevent does not read a connection while we compute its reply:
         * look for a client that left, now and then */
        uint64_t now = pd_now_ns();
        if (h->evcon && now - h->last_peek_ns > PEEK_INTERVAL_NS) {
            h->last_peek_ns = now;
            if (pd_http_peer_gone(h->evcon)) {
                h->client_gone = true;
                dec_job_cancel(h->job);
            }
        }
    }
    if (e->finish == DEC_FIN_NONE)
        return;
    struct pd_metric *fin = e->finish == DEC_FIN_STOP     ? s->fin_stop
                            : e->finish == DEC_FIN_LENGTH ? s->fin_length
                            : e->finish == DEC_FIN_ERROR  ? s->fin_error
                                                          : s->fin_abort;
    pd_metric_add(fin, 1);
    if (h->stream)
        finish_stream(h, e);
    else
        finish_whole(h, e);
    dec_http_unlink(s, h);
    dec_http_free(h);
    if (s->draining && s->inflight.n == 0)
        event_base_loopexit(s->base, NULL);
}

void dec_server_take_events(struct dec_server *s)
{
    if (!s->sched)
        return;
    struct dec_event *e = dec_sched_take(s->sched);
    while (e) {
        struct dec_event *next = e->next;
        on_event(s, e);
        dec_event_free(e);
        e = next;
    }
}

void dec_reply_wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dec_server_take_events(arg);
}

void dec_server_wake(void *arg)
{
    struct dec_server *s = arg;
    event_active(s->wake_ev, EV_READ, 0);
}
