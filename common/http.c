#include "http.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return NULL; /* libevent picks the standard phrase */
    }
}

void pd_http_reply(struct evhttp_request *req, int status, const char *content_type,
                   const char *body, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_remove_header(h, "Content-Type");
    evhttp_add_header(h, "Content-Type", content_type);
    if (b && len)
        evbuffer_add(b, body, len);
    evhttp_send_reply(req, status, reason(status), b);
    if (b)
        evbuffer_free(b);
}

void pd_http_reply_json(struct evhttp_request *req, int status, const char *json, size_t len)
{
    pd_http_reply(req, status, "application/json", json, len);
}

char *pd_http_error_body(const char *message, const char *type, const char *param,
                         const char *code)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    char *s = NULL;
    if (e && cJSON_AddStringToObject(e, "message", message) &&
        cJSON_AddStringToObject(e, "type", type) &&
        (param ? cJSON_AddStringToObject(e, "param", param) : cJSON_AddNullToObject(e, "param")) &&
        (code ? cJSON_AddStringToObject(e, "code", code) : cJSON_AddNullToObject(e, "code")))
        s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

void pd_http_error(struct evhttp_request *req, int status, const char *type, const char *param,
                   const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    char *body = pd_http_error_body(msg, type, param, code);
    static const char fallback[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                   "\"internal_error\",\"param\":null,\"code\":null}}";
    if (body)
        pd_http_reply_json(req, status, body, strlen(body));
    else
        pd_http_reply_json(req, status, fallback, sizeof(fallback) - 1);
    free(body);
}

bool pd_http_id_valid(const char *s)
{
    size_t n = 0;
    if (!s)
        return false;
    for (; s[n]; n++)
        if (s[n] <= 0x20 || s[n] >= 0x7f || n >= PD_HTTP_ID_MAX - 1)
            return false;
    return n > 0;
}

int pd_http_request_id(struct evhttp_request *req, const char *prefix, char id[PD_HTTP_ID_MAX])
{
    const char *given = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Id");
    int taken = pd_http_id_valid(given);
    if (taken) {
        snprintf(id, PD_HTTP_ID_MAX, "%s", given);
    } else {
        uint8_t r[12];
        size_t k = (size_t)snprintf(id, PD_HTTP_ID_MAX, "%.64s", prefix ? prefix : "");
        if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
            randombytes_buf(r, sizeof(r)); /* getrandom cannot fail once seeded; belt and braces */
        for (size_t i = 0; i < sizeof(r); i++)
            k += (size_t)snprintf(id + k, PD_HTTP_ID_MAX - k, "%02x", r[i]);
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_remove_header(h, "X-Request-Id");
    evhttp_add_header(h, "X-Request-Id", id);
    return taken;
}

bool pd_http_bearer_ok(struct evhttp_request *req, const char *key)
{
    if (!key || !*key)
        return true;
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return false;
    auth += 7;
    while (*auth == ' ')
        auth++;
    /* compare digests: constant time whatever the lengths */
    unsigned char a[32], b[32];
    crypto_generichash(a, sizeof(a), (const unsigned char *)auth, strlen(auth), NULL, 0);
    crypto_generichash(b, sizeof(b), (const unsigned char *)key, strlen(key), NULL, 0);
    return sodium_memcmp(a, b, sizeof(a)) == 0;
}

size_t pd_http_pending_output(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

bool pd_http_peer_gone(struct evhttp_connection *evcon)
{
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    char c;
    if (fd < 0)
        return true;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

void pd_http_cut(struct evhttp_connection *evcon)
{
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
}

void pd_http_sse_begin(struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_remove_header(h, "Content-Type");
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_send_reply_start(req, 200, "OK");
}

int pd_http_sse_send(struct evhttp_request *req, const char *data, size_t len, size_t cap)
{
    if (!evhttp_request_get_connection(req))
        return -ENOTCONN;
    if (pd_http_pending_output(req) > cap)
        return -ENOBUFS;
    struct evbuffer *b = evbuffer_new();
    if (!b || evbuffer_add(b, "data: ", 6) < 0 || evbuffer_add(b, data, len) < 0 ||
        evbuffer_add(b, "\n\n", 2) < 0) {
        if (b)
            evbuffer_free(b);
        return -ENOMEM;
    }
    evhttp_send_reply_chunk(req, b);
    evbuffer_free(b);
    return 0;
}

void pd_http_sse_end(struct evhttp_request *req, bool done)
{
    if (done && evhttp_request_get_connection(req)) {
        struct evbuffer *b = evbuffer_new();
        if (b) {
            evbuffer_add(b, "data: [DONE]\n\n", 14);
            evhttp_send_reply_chunk(req, b);
            evbuffer_free(b);
        }
    }
    evhttp_send_reply_end(req); /* frees a request whose connection is gone */
}

/* ---- connection cap ---- */

struct conn {
    struct pd_http_conns *c;
    struct bufferevent *bev; /* ours until adopted: one extra reference */
    struct evhttp_connection *evcon; /* once adopted */
    struct conn *next; /* pending adoption */
    struct conn *prev_open, *next_open; /* adopted, open */
};

struct pd_http_conns {
    struct evhttp *http;
    struct event_base *base;
    unsigned max, n;
    bool paused, disabled;
    uint64_t full_events;
    struct evconnlistener *lev[PD_HTTP_MAX_LISTENERS];
    size_t n_lev;
    struct event *adopt_ev;
    struct conn *pending;
    struct conn *open; /* adopted connections */
    void (*on_close)(struct evhttp_connection *, void *);
    void *arg;
};

static void set_listening(struct pd_http_conns *c)
{
    bool want_off = c->paused || c->n >= c->max;
    if (want_off == c->disabled)
        return;
    for (size_t i = 0; i < c->n_lev; i++)
        if (want_off)
            evconnlistener_disable(c->lev[i]);
        else
            evconnlistener_enable(c->lev[i]);
    if (want_off && !c->paused)
        c->full_events++;
    c->disabled = want_off;
}

static void conn_gone(struct pd_http_conns *c)
{
    c->n--;
    set_listening(c);
}

static void closed_cb(struct evhttp_connection *evcon, void *arg)
{
    struct conn *k = arg;
    struct pd_http_conns *c = k->c;
    if (k->prev_open)
        k->prev_open->next_open = k->next_open;
    else
        c->open = k->next_open;
    if (k->next_open)
        k->next_open->prev_open = k->prev_open;
    free(k);
    conn_gone(c);
    if (c->on_close)
        c->on_close(evcon, c->arg);
}

/* On the loop, right after the accept callback that made the connections:
 * evhttp has set each bufferevent's callbacks with the evhttp_connection as
 * their argument; a bufferevent freed meanwhile has them cleared. */
static void adopt_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pd_http_conns *c = arg;
    (void)fd;
    (void)what;
    while (c->pending) {
        struct conn *k = c->pending;
        void *evcon = NULL;
        c->pending = k->next;
        bufferevent_getcb(k->bev, NULL, NULL, NULL, &evcon);
        bufferevent_decref(k->bev);
        k->bev = NULL;
        if (evcon) {
            k->evcon = evcon;
            k->next_open = c->open;
            if (c->open)
                c->open->prev_open = k;
            c->open = k;
            evhttp_connection_set_closecb(evcon, closed_cb, k);
        } else {
            free(k);
            conn_gone(c);
        }
    }
}

static struct bufferevent *bev_cb(struct event_base *base, void *arg)
{
    struct pd_http_conns *c = arg;
    /* no BEV_OPT_CLOSE_ON_FREE: evhttp closes the socket itself */
    struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
    struct conn *k = calloc(1, sizeof(*k));
    if (!bev || !k) {
        /* evhttp makes its own bufferevent from NULL; it goes uncounted,
         * which only matters under memory exhaustion */
        if (bev)
            bufferevent_free(bev);
        free(k);
        return NULL;
    }
    bufferevent_incref(bev);
    k->c = c;
    k->bev = bev;
    k->next = c->pending;
    c->pending = k;
    event_active(c->adopt_ev, EV_READ, 0);
    c->n++;
    set_listening(c);
    return bev;
}

struct pd_http_conns *pd_http_conns_new(struct evhttp *http, struct event_base *base,
                                        unsigned max,
                                        void (*on_close)(struct evhttp_connection *, void *),
                                        void *arg)
{
    struct pd_http_conns *c = calloc(1, sizeof(*c));
    if (!c || max == 0)
        goto fail;
    c->http = http;
    c->base = base;
    c->max = max;
    c->on_close = on_close;
    c->arg = arg;
    if (!(c->adopt_ev = event_new(base, -1, 0, adopt_cb, c)))
        goto fail;
    evhttp_set_bevcb(http, bev_cb, c);
    return c;
fail:
    free(c);
    return NULL;
}

struct pd_http_conns *pd_http_conns_free(struct pd_http_conns *c)
{
    if (!c)
        return NULL;
    while (c->pending) {
        struct conn *k = c->pending;
        c->pending = k->next;
        bufferevent_decref(k->bev);
        free(k);
    }
    if (c->adopt_ev)
        event_free(c->adopt_ev);
    free(c);
    return NULL;
}

int pd_http_conns_add_listener(struct pd_http_conns *c, struct evhttp_bound_socket *h)
{
    if (!h)
        return -EINVAL;
    if (c->n_lev == PD_HTTP_MAX_LISTENERS)
        return -E2BIG;
    c->lev[c->n_lev++] = evhttp_bound_socket_get_listener(h);
    if (c->disabled)
        evconnlistener_disable(c->lev[c->n_lev - 1]);
    return 0;
}

void pd_http_conns_pause(struct pd_http_conns *c, bool paused)
{
    c->paused = paused;
    set_listening(c);
}

unsigned pd_http_conns_count(const struct pd_http_conns *c) { return c->n; }

size_t pd_http_conns_pending_output(const struct pd_http_conns *c)
{
    size_t n = 0;
    for (const struct conn *k = c->open; k; k = k->next_open) {
        struct bufferevent *bev = evhttp_connection_get_bufferevent(k->evcon);
        n += bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
    }
    return n;
}
uint64_t pd_http_conns_full_events(const struct pd_http_conns *c) { return c->full_events; }
