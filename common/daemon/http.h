/* common/daemon/http: helpers for libevent's evhttp servers (decoded's API, the
 * admin/metrics endpoint): JSON and OpenAI-shaped error replies, request
 * ids, bearer tokens, Server-Sent Events with a per-connection output cap,
 * and an exact connection cap that libevent 2.1 does not have.
 *
 *   struct pd_http_conns *cc = pd_http_conns_new(http, base, 1024, on_close, arg);
 *   pd_http_bind(http, cc, host, port, "API", &bound, err, sizeof err);  // port 0: any
 *
 *   handler(req):
 *     char id[PD_HTTP_ID_MAX];
 *     pd_http_request_id(req, "cmpl-", id);                 // X-Request-Id in and out
 *     if (!pd_http_bearer_ok(req, key)) return pd_http_error(req, 401, ...);
 *     pd_http_sse_begin(req);
 *     if (pd_http_sse_send(req, json, len, cap) == -ENOBUFS) cut the slow reader;
 *     pd_http_sse_end(req, true);                           // "data: [DONE]", end
 *
 *   at exit: evhttp_free(http); pd_http_conns_free(cc);     // in this order
 *
 * Connection cap: every accepted socket gets its bufferevent from us
 * (evhttp_set_bevcb), so we count connections exactly when they are
 * accepted; right after, on the loop, we install a close callback on the new
 * evhttp_connection, which counts it out when libevent frees it (evhttp
 * calls it for every incoming connection it frees). At the cap the listeners
 * are disabled (new clients wait in the kernel's backlog) and re-enabled
 * below it. An idle connection is closed by evhttp's timeout
 * (evhttp_set_timeout), which is what frees room for new clients.
 *
 * Error pages: evhttp answers some requests itself (a body over its max body
 * size, headers too large, malformed HTTP) with an HTML page, and 2.1 has no
 * hook for it. Every connection's output buffer gets a callback that
 * replaces such a page, as it is appended, by the OpenAI-shaped JSON error
 * with the same status (413: code "request_too_large"); see
 * docs/internals/daemon.md.
 *
 * Everything here runs on the loop thread that owns the evhttp. No logging
 * (common/ rule): callers log.
 */
#ifndef PD_HTTP_H
#define PD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evhttp;
struct evhttp_request;
struct evhttp_connection;
struct evhttp_bound_socket;
struct event_base;

#define PD_HTTP_ID_MAX 129 /* request ids: 1..128 printable ASCII, no spaces, + NUL */
#define PD_HTTP_MAX_LISTENERS 4

/* JSON body (len bytes) with status; Content-Type application/json. */
void pd_http_reply_json(struct evhttp_request *req, int status, const char *json, size_t len);
/* Any body with a content type. */
void pd_http_reply(struct evhttp_request *req, int status, const char *content_type,
                   const char *body, size_t len);

/* {"error":{"message","type","param","code"}} as OpenAI shapes it; param and
 * code may be NULL (JSON null). Returns a malloc'd NUL-terminated string, or
 * NULL on allocation failure. */
char *pd_http_error_body(const char *message, const char *type, const char *param,
                         const char *code);
/* Reply with that body. The message is formatted. */
void pd_http_error(struct evhttp_request *req, int status, const char *type, const char *param,
                   const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* The request's id: its X-Request-Id header when that is 1..128 printable
 * ASCII characters without spaces, else prefix + 24 random hex digits. The
 * id is also set as the response's X-Request-Id. Returns 1 when the client's
 * id was taken, 0 when one was made. */
int pd_http_request_id(struct evhttp_request *req, const char *prefix, char id[PD_HTTP_ID_MAX]);
bool pd_http_id_valid(const char *s);

/* "Authorization: Bearer <key>" matches key (constant time in the key's
 * content). key NULL or empty: always true. */
bool pd_http_bearer_ok(struct evhttp_request *req, const char *key);

/* Bytes queued for this request's connection and not yet taken by the
 * kernel (0 when the connection is gone). */
size_t pd_http_pending_output(struct evhttp_request *req);
/* The client closed its end (peeked without consuming): true. For requests
 * whose reply is not being written yet, where libevent does not look. */
bool pd_http_peer_gone(struct evhttp_connection *evcon);
/* Shut the socket down both ways: libevent then fails the connection on
 * its next write or read and frees it (the close callback runs). */
void pd_http_cut(struct evhttp_connection *evcon);

/* SSE: 200 with text/event-stream headers, then one event per call. */
void pd_http_sse_begin(struct evhttp_request *req);
/* "data: <data>\n\n". -ENOBUFS (nothing queued) when more than cap bytes
 * are already waiting for the client; -ENOTCONN when the connection is gone;
 * -ENOMEM. */
int pd_http_sse_send(struct evhttp_request *req, const char *data, size_t len, size_t cap);
/* "data: [DONE]\n\n" (when done is true) and the end of the reply. After
 * this the request belongs to libevent again. */
void pd_http_sse_end(struct evhttp_request *req, bool done);

/* The connection cap. on_close (may be NULL) runs for every connection
 * libevent frees, after it was counted out. max >= 1. */
struct pd_http_conns;
struct pd_http_conns *pd_http_conns_new(struct evhttp *http, struct event_base *base,
                                        unsigned max,
                                        void (*on_close)(struct evhttp_connection *, void *),
                                        void *arg);
/* Accepts NULL; returns NULL. Call after evhttp_free (which closes the
 * connections and runs their close callbacks). */
struct pd_http_conns *pd_http_conns_free(struct pd_http_conns *c);
/* A bound socket whose listener the cap controls. 0, -EINVAL (NULL handle),
 * -E2BIG past PD_HTTP_MAX_LISTENERS. */
int pd_http_conns_add_listener(struct pd_http_conns *c, struct evhttp_bound_socket *h);
/* Listen on host:port (0: any free port) under the cap; *bound: the port
 * the kernel gave. -EADDRINUSE (or another bind failure; err names the
 * address and `what` it is, "API" or "admin"), -E2BIG. */
int pd_http_bind(struct evhttp *http, struct pd_http_conns *c, const char *host, uint16_t port,
                 const char *what, uint16_t *bound, char *err, size_t errlen);
/* Stop accepting for good (drain) or until resumed. */
void pd_http_conns_pause(struct pd_http_conns *c, bool paused);
unsigned pd_http_conns_count(const struct pd_http_conns *c);
/* Bytes queued on all open connections and not yet taken by the kernel
 * (shutdown waits for this to reach 0 before closing them). */
size_t pd_http_conns_pending_output(const struct pd_http_conns *c);
/* Deadlines and the per-source cap (call before the listeners are added):
 * a request's headers must arrive within header_timeout_s of its first byte
 * (of the accept, for a connection's first request), however they trickle,
 * and its body within as long again, else the connection gets a 408 and is
 * closed; a connection from an address that already holds max_per_source
 * gets a 429 and is closed (0: no per-source cap; a load balancer in front
 * makes every client one source); a NUL byte in a request's headers gets a
 * 400 and the connection is closed. on_refuse(why, peer, arg) (may be
 * NULL; the caller logs, rate-limited) hears of each. */
void pd_http_conns_set_limits(struct pd_http_conns *c, unsigned header_timeout_s,
                              unsigned max_per_source,
                              void (*on_refuse)(const char *why, const char *peer, void *arg),
                              void *arg);
struct pd_http_conns_stats {
    uint64_t full_events; /* times the cap was reached (the listeners were disabled) */
    uint64_t deadline_cuts; /* 408: headers or body past the deadline */
    uint64_t per_source_refusals; /* 429: over max_per_source */
    uint64_t bad_requests; /* 400: NUL in the headers */
};
void pd_http_conns_get_stats(const struct pd_http_conns *c, struct pd_http_conns_stats *out);

#endif
