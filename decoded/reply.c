/* decoded/reply: answers to API clients. Small replies and refusals (counted
 * by status), the in-flight requests, and the engine's events turned into
 * SSE chunks or a whole JSON body. */
#include "server_internal.h"

#include "log.h"
#include "toolcall.h"

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
    for (uint32_t i = 0; i < h->n_ch; i++) {
        struct dec_choice *c = &h->ch[i];
        c->job->owner = NULL;
        dec_job_unref(c->job);
        free(c->text);
        free(c->echo);
        cJSON_Delete(c->lp);
        dec_toolcall_free(c->tc);
    }
    free(h->ch);
    free(h);
}

void dec_http_cancel(struct dec_http *h)
{
    for (uint32_t i = 0; i < h->n_ch; i++)
        dec_job_cancel(h->ch[i].job);
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
        dec_http_cancel(h);
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

/* A choice's finish_reason: "tool_calls" when it stopped having called some */
static const char *choice_finish(const struct dec_choice *c)
{
    return c->finish == DEC_FIN_STOP && dec_toolcall_called(c->tc) ? "tool_calls"
                                                                   : finish_name(c->finish);
}

/* The request's one log line: how it ended (the failing choice's finish
 * and error, else the last one's) */
static void log_done(struct dec_http *h, int status, enum dec_finish f, const char *err)
{
    uint64_t now = pd_now_ns();
    double e2e = (double)(now - h->t_start_ns) * 1e-9;
    double ttft = h->t_first_ns ? (double)(h->t_first_ns - h->t_start_ns) * 1e-9 : -1;
    const char *why = h->cut ? "abort (slow reader cut)"
                      : h->client_gone && f == DEC_FIN_CANCELLED ? "abort (client gone)"
                                                                 : finish_name(f);
    char n[32] = "";
    if (h->n_ch > 1)
        snprintf(n, sizeof(n), " choices=%u", h->n_ch);
    pd_log(status >= 500 ? PD_LOG_ERR : PD_LOG_INFO,
           "%s: %s %d %s prompt=%u completion=%u%s ttft=%.3fs e2e=%.3fs preempted=%u%s%s",
           h->out.id, h->path, status, why, h->n_prompt, h->n_gen, n, ttft, e2e, h->n_preempted,
           err[0] ? ": " : "", err);
}

static int append_text(struct dec_choice *c, const char *t, size_t n)
{
    if (c->len + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 256;
        while (cap < c->len + n + 1)
            cap *= 2;
        char *p = realloc(c->text, cap);
        if (!p)
            return -ENOMEM;
        c->text = p;
        c->cap = cap;
    }
    memcpy(c->text + c->len, t, n);
    c->len += n;
    c->text[c->len] = '\0';
    return 0;
}

/* Stream one chunk; cut a client that lets more than the cap pile up. */
static void stream_send(struct dec_http *h, char *json)
{
    struct dec_server *s = h->srv;
    if (!json || !h->req || h->cut || h->client_gone || h->failed) {
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
        dec_http_cancel(h);
        if (h->evcon)
            pd_http_cut(h->evcon);
    }
}

/* A choice failed (an engine or prefill error, or the server stopping):
 * the request's error goes out at once -- a reply, or on a stream whose
 * status line is gone the stream's last event -- and its other choices are
 * cancelled; their last events only count down. */
static void fail_request(struct dec_http *h, const struct dec_event *e)
{
    bool err = e->finish == DEC_FIN_ERROR;
    h->status = err ? (e->status ? e->status : 500) : 503;
    if (h->stream) {
        char *body = pd_http_error_body(err ? e->err : "the server is shutting down",
                                        type_for(h->status), NULL, NULL);
        stream_send(h, body);
        if (h->req)
            pd_http_sse_end(h->req, true);
    } else if (h->req) {
        if (err)
            pd_http_error(h->req, h->status, type_for(h->status), NULL,
                          e->status ? "prefill_failed" : NULL, "%s", e->err);
        else
            pd_http_error(h->req, 503, type_for(503), NULL, "shutting_down",
                          "the server is shutting down");
    }
    h->req = NULL;
    h->failed = true;
    h->fail_finish = e->finish;
    snprintf(h->err, sizeof(h->err), "%s", e->err);
    dec_http_cancel(h);
}

/* Every choice ended well (or the client went): the end of the stream with
 * the usage when asked for, or the whole response. */
static void complete_request(struct dec_http *h)
{
    if (h->client_gone || h->cut) {
        h->status = 499; /* nginx's "client closed request": for the log */
        if (h->stream && h->req)
            pd_http_sse_end(h->req, false);
        h->req = NULL;
        return;
    }
    h->status = 200;
    if (h->stream) {
        if (h->include_usage)
            stream_send(h, dec_api_usage_chunk(&h->out, h->n_prompt, h->n_gen));
        if (h->req)
            pd_http_sse_end(h->req, true);
        h->req = NULL;
        return;
    }
    struct dec_api_choice *cs = calloc(h->n_ch, sizeof(*cs));
    struct dec_toolcall_out *tco = calloc(h->n_ch, sizeof(*tco));
    char *body = NULL;
    bool ok = cs && tco;
    for (uint32_t i = 0; ok && i < h->n_ch; i++) {
        struct dec_choice *c = &h->ch[i];
        /* with tools, the text is read for calls: content is what is left */
        if (c->tc && dec_toolcall_feed(c->tc, c->text, c->len, true, &tco[i]) < 0)
            ok = false;
        cs[i] = (struct dec_api_choice){.text = c->tc ? tco[i].content : c->text,
                                        .len = c->tc ? tco[i].len : c->len,
                                        .lp = c->lp,
                                        .finish = choice_finish(c),
                                        .calls = dec_toolcall_whole(tco[i].calls)};
        if (!cs[i].text)
            cs[i].text = "";
        tco[i].calls = NULL;
        c->lp = NULL; /* the response takes it */
    }
    if (ok)
        body = dec_api_response(&h->out, cs, h->n_ch, h->n_prompt, h->n_gen);
    for (uint32_t i = 0; tco && i < h->n_ch; i++) {
        if (!ok) {
            cJSON_Delete(cs[i].lp);
            cJSON_Delete(cs[i].calls);
        }
        dec_toolcall_out_done(&tco[i]);
    }
    free(tco);
    free(cs);
    if (h->req) {
        if (body) {
            pd_http_reply_json(h->req, 200, body, strlen(body));
        } else {
            h->status = 503;
            pd_http_error(h->req, 503, type_for(503), NULL, NULL, "out of memory");
        }
    }
    free(body);
    h->req = NULL;
}

/* echo: the prompt's text first, and with logprobs its tokens' (the first
 * null, as OpenAI's; the others scored by the prefill, the leader's for a
 * follower); offsets count from the prompt's start, the completion's after
 * it. On the choice's first event: the scores are complete by then. */
static int echo_prompt(struct dec_server *s, struct dec_http *h, struct dec_choice *c)
{
    const struct dec_job *j = c->job, *scorer = j->leader ? j->leader : j;
    c->echoed = true;
    if (h->logprobs && scorer->plp) {
        if (!c->lp && !(c->lp = dec_api_lp_new(h->out.kind)))
            return -ENOMEM;
        size_t off = 0;
        for (uint32_t i = 0; i < j->n_prompt; i++) {
            int rc = i ? dec_api_lp_add(c->lp, h->out.kind, s->tok, &scorer->plp[i], h->n_top, off)
                       : dec_api_lp_add_first(c->lp, s->tok, j->prompt[0], off);
            if (rc < 0)
                return rc;
            off += dec_api_token_chars(s->tok, j->prompt[i]);
        }
    }
    c->text_offset = dec_api_chars(c->echo, c->echo_len);
    if (h->stream) {
        stream_send(h,
                    dec_api_chunk(&h->out, j->choice, c->echo, c->echo_len, false, c->lp, NULL,
                                  NULL, h->include_usage));
        c->lp = NULL;
        return 0;
    }
    return append_text(c, c->echo, c->echo_len);
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
    struct dec_choice *c = &h->ch[e->job->choice];
    if (e->t_first_ns && (!h->t_first_ns || e->t_first_ns < h->t_first_ns))
        h->t_first_ns = e->t_first_ns;
    /* a choice that fails before its first token echoes nothing: the request fails */
    if (c->echo && !c->echoed && (e->finish == DEC_FIN_NONE || e->finish == DEC_FIN_STOP ||
                                  e->finish == DEC_FIN_LENGTH) &&
        echo_prompt(s, h, c) < 0)
        dec_http_cancel(h);
    if (e->has_token && h->logprobs && !c->lp)
        c->lp = dec_api_lp_new(h->out.kind);
    if (e->has_token && c->lp)
        dec_api_lp_add(c->lp, h->out.kind, s->tok, &e->token, h->n_top, c->text_offset);
    c->text_offset += dec_api_chars(e->text, e->len);

    if (h->stream) {
        /* with tools, the text is read for calls: content and call deltas as
         * they become sure */
        struct dec_toolcall_out o = {.content = NULL};
        const bool last = e->finish == DEC_FIN_STOP || e->finish == DEC_FIN_LENGTH;
        if (c->tc && dec_toolcall_feed(c->tc, e->text, e->len, last, &o) < 0)
            dec_http_cancel(h);
        const char *text = c->tc ? o.content : e->text;
        const size_t len = c->tc ? o.len : e->len;
        /* a chunk when there is text, calls, log-probabilities, or the role to open with */
        bool first = !c->started && h->out.kind == DEC_API_CHAT;
        if (len || o.calls || c->lp || first) {
            stream_send(h,
                        dec_api_chunk(&h->out, e->job->choice, text ? text : "", len, first, c->lp,
                                      o.calls, NULL, h->include_usage));
            o.calls = NULL;
            c->lp = NULL;
            c->started = true;
        }
        dec_toolcall_out_done(&o);
    } else {
        if (append_text(c, e->text, e->len) < 0)
            dec_http_cancel(h);
        /* libevent does not read a connection while we compute its reply:
         * look for a client that left, now and then */
        uint64_t now = pd_now_ns();
        if (h->evcon && now - h->last_peek_ns > PEEK_INTERVAL_NS) {
            h->last_peek_ns = now;
            if (pd_http_peer_gone(h->evcon)) {
                h->client_gone = true;
                dec_http_cancel(h);
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
    c->done = true;
    c->finish = e->finish;
    h->n_done++;
    h->n_gen += e->n_gen;
    h->n_preempted += e->n_preempted;
    bool ok = e->finish == DEC_FIN_STOP || e->finish == DEC_FIN_LENGTH;
    if (!h->failed && !ok && (e->finish == DEC_FIN_ERROR || (!h->client_gone && !h->cut)))
        fail_request(h, e);
    else if (ok && h->stream) /* this choice's finish_reason */
        stream_send(h,
                    dec_api_chunk(&h->out, e->job->choice, "", 0, false, NULL, NULL,
                                  choice_finish(c), h->include_usage));
    if (h->n_done < h->n_ch)
        return;
    if (!h->failed)
        complete_request(h);
    count_status(s, h->status == 499 ? 400 : h->status);
    log_done(h, h->status, h->failed ? h->fail_finish : e->finish, h->failed ? h->err : e->err);
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
