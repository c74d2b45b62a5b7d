#include "http.h"

#include "dlist.h"

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
#include <strings.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

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
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        /* the headers GET would get, no body: libevent 2.1 writes a HEAD
         * reply's body and leaves out its length, so the next reply on the
         * connection would be read as part of it */
        char cl[32];
        snprintf(cl, sizeof(cl), "%zu", len);
        evhttp_remove_header(h, "Content-Length");
        evhttp_add_header(h, "Content-Length", cl);
        len = 0;
    }
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

/* Where a connection's input stands, as far as the deadline needs to know:
 * the request line and headers of a request (R_HEAD), its body by
 * Content-Length (R_BODY) or chunked (R_CHUNK_SIZE, R_CHUNK_DATA,
 * R_CHUNK_END, R_TRAILER), or between requests (R_IDLE). evhttp parses the
 * same bytes for itself; this tracker only times them. */
enum { R_HEAD, R_BODY, R_CHUNK_SIZE, R_CHUNK_DATA, R_CHUNK_END, R_TRAILER, R_IDLE, R_DEAD };
#define LINE_KEEP 64 /* bytes of a line kept: enough for the names and numbers read */

struct conn {
    struct pd_http_conns *c;
    struct bufferevent *bev; /* ours until adopted: one extra reference */
    struct evhttp_connection *evcon; /* once adopted */
    struct conn *next; /* pending adoption */
    struct pd_dnode link; /* in the open list once adopted */
    struct event *deadline; /* the request's head (then its body) must arrive by then */
    int st; /* R_* */
    bool first_line, chunked, bad_len;
    uint64_t left; /* R_BODY, R_CHUNK_DATA: bytes to come */
    char line[LINE_KEEP + 1];
    size_t line_len;
    char peer[64];
};

struct pd_http_conns {
    struct evhttp *http;
    struct event_base *base;
    unsigned max, n;
    unsigned max_per_source; /* 0: only the total */
    unsigned header_timeout_s; /* 0: no deadline */
    struct pd_http_conns_stats st;
    void (*on_refuse)(const char *why, const char *peer, void *);
    void *refuse_arg;
    bool paused, disabled;
    uint64_t full_events;
    struct evconnlistener *lev[PD_HTTP_MAX_LISTENERS];
    size_t n_lev;
    struct event *adopt_ev;
    struct conn *pending;
    struct pd_dlist open; /* adopted connections */
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

static evutil_socket_t conn_fd(const struct conn *k)
{
    struct bufferevent *bev = k->evcon ? evhttp_connection_get_bufferevent(k->evcon) : k->bev;
    return bev ? bufferevent_getfd(bev) : -1;
}

/* Refuse what this connection sent: answer status with an OpenAI-shaped
 * error when nothing else is queued for it (written to the socket directly:
 * evhttp never sees the request), then shut the socket down; evhttp then
 * fails the connection on its next read and frees it. */
static void refuse(struct conn *k, int status, const char *code, const char *msg, bool answer)
{
    struct pd_http_conns *c = k->c;
    evutil_socket_t fd = conn_fd(k);
    struct bufferevent *bev = k->evcon ? evhttp_connection_get_bufferevent(k->evcon) : k->bev;
    k->st = R_DEAD;
    if (k->deadline)
        event_del(k->deadline);
    if (c->on_refuse)
        c->on_refuse(msg, k->peer[0] ? k->peer : "?", c->refuse_arg);
    if (fd < 0)
        return;
    if (answer && bev && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        char *json = pd_http_error_body(msg, "invalid_request_error", NULL, code);
        if (json) {
            char head[256];
            int hl = snprintf(head, sizeof(head),
                              "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                              "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                              status, status == 408 ? "Request Timeout" : "Bad Request",
                              strlen(json));
            /* small, into an idle socket's empty send buffer: one send
             * takes it; whatever it does not take is dropped with the
             * connection */
            if (hl > 0 && send(fd, head, (size_t)hl, MSG_NOSIGNAL | MSG_DONTWAIT) == hl)
                (void)!send(fd, json, strlen(json), MSG_NOSIGNAL | MSG_DONTWAIT);
            free(json);
        }
    }
    shutdown(fd, SHUT_RDWR); /* the socket reads as ended: evhttp frees the connection */
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *k = arg;
    (void)fd;
    (void)what;
    if (k->st == R_IDLE || k->st == R_DEAD)
        return;
    k->c->st.deadline_cuts++;
    /* a connection that sent nothing is closed without a word (a browser's
     * preconnect); one that began a request hears why */
    refuse(k, 408, "request_timeout",
           k->st == R_HEAD ? "the request's headers did not arrive within --header-timeout"
                           : "the request's body did not arrive within --header-timeout",
           k->st != R_HEAD || !k->first_line || k->line_len > 0);
}

static void arm(struct conn *k)
{
    if (!k->deadline || !k->c->header_timeout_s)
        return;
    struct timeval tv = {.tv_sec = (time_t)k->c->header_timeout_s};
    event_add(k->deadline, &tv);
}

static bool line_is(const char *line, const char *name)
{
    return strncasecmp(line, name, strlen(name)) == 0;
}

/* One line of the head: the request line first, then header fields. */
static void head_line(struct conn *k)
{
    const char *l = k->line;
    if (k->first_line) {
        k->first_line = false;
        return;
    }
    if (line_is(l, "content-length:")) {
        const char *v = l + 15;
        while (*v == ' ' || *v == '\t')
            v++;
        uint64_t n = 0;
        if (*v < '0' || *v > '9')
            k->bad_len = true;
        for (; *v >= '0' && *v <= '9'; v++)
            n = n > UINT64_MAX / 10 - 10 ? UINT64_MAX : n * 10 + (uint64_t)(*v - '0');
        k->left = n;
    } else if (line_is(l, "transfer-encoding:") && strcasestr(l, "chunked")) {
        k->chunked = true;
    }
}

static void request_done(struct conn *k)
{
    k->st = R_IDLE;
    if (k->deadline)
        event_del(k->deadline);
}

static void head_done(struct conn *k)
{
    if (k->chunked) {
        k->st = R_CHUNK_SIZE;
    } else if (k->left > 0 && !k->bad_len) {
        k->st = R_BODY;
    } else {
        request_done(k);
        return;
    }
    arm(k); /* the body gets as long again */
}

/* Follow the bytes just read (they are evhttp's to parse; nothing is taken). */
static void track(struct conn *k, unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n && k->st != R_DEAD;) {
        unsigned char ch = p[i];
        switch (k->st) {
        case R_IDLE: /* the first byte of the next request */
            k->st = R_HEAD;
            k->first_line = true;
            k->chunked = k->bad_len = false;
            k->left = 0;
            k->line_len = 0;
            arm(k);
            continue;
        case R_BODY:
        case R_CHUNK_DATA: {
            size_t take = n - i < k->left ? n - i : (size_t)k->left;
            k->left -= take;
            i += take;
            if (k->left == 0) {
                if (k->st == R_BODY)
                    request_done(k);
                else
                    k->st = R_CHUNK_END;
                k->line_len = 0;
            }
            continue;
        }
        default:
            break;
        }
        i++;
        if (ch == 0 && k->st == R_HEAD) {
            /* a field value cannot hold NUL (RFC 9110 5.5); evhttp would cut
             * it at the NUL and see something else than was sent */
            k->c->st.bad_requests++;
            refuse(k, 400, NULL, "NUL byte in the request's headers", true);
            return;
        }
        if (ch != '\n') {
            if (ch == ';' && k->st == R_CHUNK_SIZE) {
                /* a chunk extension (RFC 9112 7.1.1), to be ignored: libevent
                 * 2.1 takes "1a ext" but refuses "1a;ext" as a corrupt body
                 * (413), so the ';' becomes a space in place, before it reads */
                p[i - 1] = ' ';
                ch = ' ';
            }
            if (ch != '\r' && k->line_len < LINE_KEEP)
                k->line[k->line_len++] = (char)ch;
            continue;
        }
        k->line[k->line_len] = 0;
        bool empty = k->line_len == 0;
        k->line_len = 0;
        switch (k->st) {
        case R_HEAD:
            if (empty && k->first_line)
                break; /* blank lines before a request line are skipped */
            if (empty)
                head_done(k);
            else
                head_line(k);
            break;
        case R_CHUNK_SIZE: {
            uint64_t size = 0;
            size_t h = 0;
            for (; k->line[h]; h++) {
                char c = k->line[h];
                int d = c >= '0' && c <= '9'   ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                               : -1;
                if (d < 0)
                    break;
                size = size > (UINT64_MAX >> 4) ? UINT64_MAX : size * 16 + (uint64_t)d;
            }
            /* 1*HEXDIG, then the end or whitespace (an extension follows);
             * libevent would take "-1", "+5" or "0x10" and answer a corrupt
             * body with 413 */
            char after = k->line[h];
            if (h == 0 || (after && after != ' ' && after != '\t') || size > (UINT64_C(1) << 62)) {
                k->c->st.bad_requests++;
                refuse(k, 400, NULL, "malformed chunk size in a chunked request body", true);
                return;
            }
            if (size == 0) {
                k->st = R_TRAILER;
            } else {
                k->left = size;
                k->st = R_CHUNK_DATA;
            }
            break;
        }
        case R_CHUNK_END: k->st = R_CHUNK_SIZE; break;
        case R_TRAILER:
            if (empty)
                request_done(k);
            break;
        default: break;
        }
    }
}

static void in_cb(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    struct conn *k = arg;
    if (info->n_added == 0)
        return;
    if (k->st == R_DEAD) { /* refused: evhttp must not parse what still comes */
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    size_t len = evbuffer_get_length(in);
    size_t from = len >= info->n_added ? len - info->n_added : 0;
    struct evbuffer_ptr ptr;
    if (evbuffer_ptr_set(in, &ptr, from, EVBUFFER_PTR_SET) < 0)
        return;
    struct evbuffer_iovec v[8];
    while (k->st != R_DEAD) {
        int nv = evbuffer_peek(in, -1, &ptr, v, 8);
        if (nv <= 0)
            break;
        size_t got = 0;
        for (int i = 0; i < nv && i < 8 && k->st != R_DEAD; i++) {
            track(k, v[i].iov_base, v[i].iov_len);
            got += v[i].iov_len;
        }
        if (nv <= 8 || evbuffer_ptr_set(in, &ptr, got, EVBUFFER_PTR_ADD) < 0)
            break;
    }
    if (k->st == R_DEAD) /* refused: evhttp must not parse what is left */
        evbuffer_drain(in, evbuffer_get_length(in));
}

static void conn_free(struct conn *k)
{
    if (k->deadline)
        event_free(k->deadline);
    free(k);
}

static void closed_cb(struct evhttp_connection *evcon, void *arg)
{
    struct conn *k = arg;
    struct pd_http_conns *c = k->c;
    pd_dlist_remove(&c->open, &k->link);
    conn_free(k);
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
            pd_dlist_push(&c->open, &k->link);
            evhttp_connection_set_closecb(evcon, closed_cb, k);
            char *host = NULL;
            ev_uint16_t port = 0;
            evhttp_connection_get_peer(evcon, &host, &port);
            snprintf(k->peer, sizeof(k->peer), "%s", host ? host : "?");
            if (c->max_per_source && k->st != R_DEAD) {
                unsigned same = 0;
                for (struct pd_dnode *n = c->open.head; n; n = n->next)
                    same += !strcmp(PD_DNODE_ENTRY(n, struct conn, link)->peer, k->peer);
                if (same > c->max_per_source) {
                    c->st.per_source_refusals++;
                    refuse(k, 429, "too_many_connections",
                           "too many connections from this address", true);
                }
            }
        } else {
            conn_free(k);
            conn_gone(c);
        }
    }
}

/* ---- libevent's own error pages, made OpenAI-shaped JSON ----
 *
 * evhttp answers some requests itself, before any handler runs: a body over
 * evhttp_set_max_body_size (with or without Content-Length, chunked too),
 * headers over the header cap, malformed HTTP. libevent 2.1 has no hook for
 * those replies (no error callback, no per-request callback on the server
 * side) and writes a small HTML page. Letting evhttp enforce the caps keeps
 * what it does well (a body over the cap is read and dropped as it arrives
 * with EVHTTP_SERVER_LINGERING_CLOSE, never buffered whole, so the client
 * reads the answer instead of a reset); we only rewrite the page: a callback
 * on each connection's output buffer (run synchronously on every change)
 * recognises evhttp_send_error's exact page at the tail of the buffer, just
 * appended and not yet written, and replaces it with the same status line
 * and headers but a JSON error body. Anything not matching exactly is left
 * alone. */

#define ERR_PAGE_MAX 2048 /* status line, headers and the page; libevent's are ~250 bytes */
static const char err_page_tail[] = "</H1>\n</BODY></HTML>\n";

static const char *err_page_json_msg(int status)
{
    switch (status) {
    case 413: return "the request is larger than this server accepts (its body or headers)";
    case 400: return "malformed HTTP request";
    default: return NULL; /* the reason phrase */
    }
}

/* buf[0, n) holds one response: status line, headers, body. 0 and the parts
 * when the body is evhttp_send_error's page for that status line. */
static int parse_err_page(const char *buf, size_t n, int *status, const char **reason,
                          size_t *reason_len, size_t *head_len)
{
    if (n < 13 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ' || buf[12] != ' ')
        return -1;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -1;
        st = st * 10 + (buf[i] - '0');
    }
    const char *eol = memchr(buf, '\r', n);
    const char *end = NULL;
    for (size_t i = 0; i + 4 <= n; i++)
        if (memcmp(buf + i, "\r\n\r\n", 4) == 0) {
            end = buf + i + 4;
            break;
        }
    if (!eol || !end || st < 400 || st > 599)
        return -1;
    const char *rs = buf + 13;
    size_t rl = (size_t)(eol - rs);
    char page[ERR_PAGE_MAX];
    int m = snprintf(page, sizeof(page), "<HTML><HEAD>\n<TITLE>%d %.*s</TITLE>\n</HEAD><BODY>\n"
                     "<H1>%.*s</H1>\n</BODY></HTML>\n", st, (int)rl, rs, (int)rl, rs);
    size_t body = n - (size_t)(end - buf);
    if (m < 0 || (size_t)m != body || memcmp(end, page, body) != 0)
        return -1;
    *status = st;
    *reason = rs;
    *reason_len = rl;
    *head_len = (size_t)(end - buf);
    return 0;
}

static void out_cb(struct evbuffer *out, const struct evbuffer_cb_info *info, void *arg)
{
    static _Thread_local bool busy; /* our own changes call us too */
    const size_t tl = sizeof(err_page_tail) - 1;
    size_t len = evbuffer_get_length(out);
    char tail[sizeof(err_page_tail)];
    struct evbuffer_ptr p;
    (void)arg;
    if (busy || info->n_added == 0 || len < tl)
        return;
    if (evbuffer_ptr_set(out, &p, len - tl, EVBUFFER_PTR_SET) < 0 ||
        evbuffer_copyout_from(out, &p, tail, tl) != (ev_ssize_t)tl ||
        memcmp(tail, err_page_tail, tl) != 0)
        return;
    /* the page just appended: find its status line in the last bytes */
    size_t w = len < ERR_PAGE_MAX ? len : ERR_PAGE_MAX;
    char win[ERR_PAGE_MAX];
    evbuffer_ptr_set(out, &p, len - w, EVBUFFER_PTR_SET);
    if (evbuffer_copyout_from(out, &p, win, w) != (ev_ssize_t)w)
        return;
    size_t start = w;
    for (size_t i = w - tl; i-- > 0;)
        if (memcmp(win + i, "HTTP/1.", 7) == 0 && (i == 0 || win[i - 1] == '\n')) {
            start = i;
            break;
        }
    int status;
    const char *reason;
    size_t reason_len, head_len;
    if (start == w ||
        parse_err_page(win + start, w - start, &status, &reason, &reason_len, &head_len) < 0)
        return;
    char rbuf[128];
    snprintf(rbuf, sizeof(rbuf), "%.*s", (int)reason_len, reason);
    const char *msg = err_page_json_msg(status);
    char *json = pd_http_error_body(msg ? msg : rbuf, status < 500 ? "invalid_request_error"
                                                                   : "internal_error", NULL,
                                    status == 413 ? "request_too_large" : NULL);
    struct evbuffer *keep = evbuffer_new();
    if (!json || !keep) {
        free(json);
        if (keep)
            evbuffer_free(keep);
        return; /* the HTML page goes out */
    }
    busy = true;
    /* what was queued before the page stays, in order; the page goes (a
     * buffer frozen at its front refuses both: the HTML page then goes out) */
    size_t before = len - w + start;
    if (evbuffer_remove_buffer(out, keep, before) != (int)before ||
        evbuffer_drain(out, evbuffer_get_length(out)) < 0) {
        evbuffer_prepend_buffer(out, keep);
        evbuffer_free(keep);
        busy = false;
        free(json);
        return;
    }
    evbuffer_add_buffer(out, keep);
    evbuffer_free(keep);
    /* the same status line and headers (Date, Connection: close), but the
     * body's type and length */
    const char *h = win + start, *hend = win + start + head_len - 2;
    const char *line_end = memchr(h, '\n', (size_t)(hend - h));
    evbuffer_add(out, h, (size_t)(line_end + 1 - h));
    for (h = line_end + 1; h < hend;) {
        const char *nl = memchr(h, '\n', (size_t)(hend - h));
        size_t ll = nl ? (size_t)(nl + 1 - h) : (size_t)(hend - h);
        if (strncasecmp(h, "Content-Type:", 13) != 0 && strncasecmp(h, "Content-Length:", 15) != 0)
            evbuffer_add(out, h, ll);
        h += ll;
    }
    evbuffer_add_printf(out, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                        strlen(json), json);
    busy = false;
    free(json);
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
    evbuffer_add_cb(bufferevent_get_output(bev), out_cb, NULL);
    k->c = c;
    k->st = R_HEAD;
    k->first_line = true;
    /* the first request's head is timed from the accept */
    if (c->header_timeout_s && (k->deadline = evtimer_new(base, deadline_cb, k)))
        arm(k);
    evbuffer_add_cb(bufferevent_get_input(bev), in_cb, k);
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
        conn_free(k);
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

int pd_http_bind(struct evhttp *http, struct pd_http_conns *c, const char *host, uint16_t port,
                 const char *what, uint16_t *bound, char *err, size_t errlen)
{
    struct evhttp_bound_socket *b = evhttp_bind_socket_with_handle(http, host, port);
    if (!b) {
        snprintf(err, errlen, "cannot listen on %s:%u (%s address): %s", host, port, what,
                 strerror(errno));
        return -EADDRINUSE;
    }
    int rc = pd_http_conns_add_listener(c, b);
    if (rc < 0) {
        evhttp_del_accept_socket(http, b);
        snprintf(err, errlen, "%s address %s:%u: more listeners than %d", what, host, port,
                 PD_HTTP_MAX_LISTENERS);
        return rc;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    *bound = port;
    if (getsockname(evhttp_bound_socket_get_fd(b), (struct sockaddr *)&ss, &sl) == 0)
        *bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
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
    for (const struct pd_dnode *o = c->open.head; o; o = o->next) {
        const struct conn *k = PD_DNODE_ENTRY(o, const struct conn, link);
        struct bufferevent *bev = evhttp_connection_get_bufferevent(k->evcon);
        n += bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
    }
    return n;
}

void pd_http_conns_set_limits(struct pd_http_conns *c, unsigned header_timeout_s,
                              unsigned max_per_source,
                              void (*on_refuse)(const char *why, const char *peer, void *arg),
                              void *arg)
{
    c->header_timeout_s = header_timeout_s;
    c->max_per_source = max_per_source;
    c->on_refuse = on_refuse;
    c->refuse_arg = arg;
}

void pd_http_conns_get_stats(const struct pd_http_conns *c, struct pd_http_conns_stats *out)
{
    *out = c->st;
    out->full_events = c->full_events;
}
