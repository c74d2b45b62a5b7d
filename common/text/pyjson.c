/* common/text/pyjson: Python's json.dumps of a JSON text. See pyjson.h. */
#include "pyjson.h"

#include "errf.h"
#include "utf8.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct out {
    char *p;
    size_t n, cap;
    bool oom;
    bool discard; /* checking only */
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->oom || o->discard)
        return;
    if (o->n + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->n + n + 1)
            cap *= 2;
        char *q = realloc(o->p, cap);
        if (!q) {
            o->oom = true;
            return;
        }
        o->p = q, o->cap = cap;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
    o->p[o->n] = '\0';
}

static void putc_(struct out *o, char c) { put(o, &c, 1); }

void pd_pyjson_repr(double v, char *buf, size_t cap)
{
    if (!isfinite(v)) {
        snprintf(buf, cap, "%s", isnan(v) ? "nan" : v < 0 ? "-inf" : "inf");
        return;
    }
    /* the shortest %e form that reads back: its digits and exponent */
    char e[40];
    for (int sig = 1; sig <= 17; sig++) {
        snprintf(e, sizeof(e), "%.*e", sig - 1, v);
        if (strtod(e, NULL) == v)
            break;
    }
    char digits[24];
    size_t nd = 0;
    const char *p = e;
    const bool neg = *p == '-';
    if (neg)
        p++;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9')
            digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    const int x = atoi(p + 1); /* v = d.ddd * 10^x */
    size_t o = 0;
    char *b = buf;
    if (neg)
        b[o++] = '-';
    if (x >= -4 && x < 16) { /* repr's fixed notation, always with a point */
        if (x < 0) {
            b[o++] = '0', b[o++] = '.';
            for (int i = 0; i < -x - 1; i++)
                b[o++] = '0';
            for (size_t i = 0; i < nd; i++)
                b[o++] = digits[i];
        } else {
            for (int i = 0; i <= x; i++)
                b[o++] = (size_t)i < nd ? digits[i] : '0';
            b[o++] = '.';
            if (nd > (size_t)x + 1)
                for (size_t i = (size_t)x + 1; i < nd; i++)
                    b[o++] = digits[i];
            else
                b[o++] = '0';
        }
        b[o] = '\0';
    } else {
        b[o++] = digits[0];
        if (nd > 1) {
            b[o++] = '.';
            for (size_t i = 1; i < nd; i++)
                b[o++] = digits[i];
        }
        snprintf(b + o, cap - o, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    }
}

/* ---- the walk: check and write in one pass ---- */

/* the keys of the objects being walked, decoded: a stack, one mark per
 * object, to refuse a repeated key (json.loads keeps the last, at the
 * first's place: a text that reads two ways is refused, not guessed at) */
struct keys {
    struct out text;
    struct key {
        size_t off, len;
    } *rec;
    size_t n, cap;
};

struct walk {
    const char *s, *end;
    const char *start;
    int indent;
    struct out *o;
    char *err;
    size_t errlen;
    struct keys *k;
};

static int bad(struct walk *w, const char *what)
{
    return pd_errf(w->err, w->errlen, -EINVAL, "%s at byte %zu", what, (size_t)(w->s - w->start));
}

static void ws(struct walk *w)
{
    while (w->s < w->end && (*w->s == ' ' || *w->s == '\t' || *w->s == '\n' || *w->s == '\r'))
        w->s++;
}

static bool lit(struct walk *w, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(w->end - w->s) < n || memcmp(w->s, word, n) != 0)
        return false;
    w->s += n;
    put(w->o, word, n);
    return true;
}

static void put_utf8(struct out *o, uint32_t cp)
{
    uint8_t b[4];
    put(o, (const char *)b, pd_utf8_put(cp, b));
}

/* one character of a string, as json.dumps(ensure_ascii=False) escapes it */
static void put_char(struct out *o, uint32_t cp)
{
    static const char esc[] = {'\b', 'b',  '\f', 'f', '\n', 'n',  '\r',
                               'r',  '\t', 't',  '"', '"',  '\\', '\\'};
    for (size_t i = 0; i < sizeof(esc); i += 2)
        if (cp == (unsigned char)esc[i]) {
            char e[2] = {'\\', esc[i + 1]};
            put(o, e, 2);
            return;
        }
    if (cp < 0x20) {
        char e[8];
        put(o, e, (size_t)snprintf(e, sizeof(e), "\\u%04x", cp));
        return;
    }
    put_utf8(o, cp);
}

static int hex4(const char *s, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int d = pd_hex_digit(s[i]);
        if (d < 0)
            return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

static int string(struct walk *w)
{
    w->s++; /* the opening quote */
    putc_(w->o, '"');
    for (;;) {
        if (w->s >= w->end)
            return bad(w, "unterminated string");
        unsigned char c = (unsigned char)*w->s;
        if (c == '"') {
            w->s++;
            putc_(w->o, '"');
            return 0;
        }
        if (c < 0x20)
            return bad(w, "control character in a string");
        if (c != '\\') {
            /* a run of plain bytes goes out as it is */
            const char *r = w->s;
            while (w->s < w->end && *w->s != '"' && *w->s != '\\' && (unsigned char)*w->s >= 0x20)
                w->s++;
            put(w->o, r, (size_t)(w->s - r));
            continue;
        }
        if (w->end - w->s < 2)
            return bad(w, "unterminated string");
        char e = w->s[1];
        w->s += 2;
        uint32_t cp;
        switch (e) {
        case '"':
            cp = '"';
            break;
        case '\\':
            cp = '\\';
            break;
        case '/':
            cp = '/';
            break;
        case 'b':
            cp = '\b';
            break;
        case 'f':
            cp = '\f';
            break;
        case 'n':
            cp = '\n';
            break;
        case 'r':
            cp = '\r';
            break;
        case 't':
            cp = '\t';
            break;
        case 'u':
            if (w->end - w->s < 4 || hex4(w->s, &cp) < 0)
                return bad(w, "bad \\u escape");
            w->s += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return bad(w, "lone UTF-16 surrogate");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (w->end - w->s < 6 || w->s[0] != '\\' || w->s[1] != 'u' ||
                    hex4(w->s + 2, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return bad(w, "lone UTF-16 surrogate");
                w->s += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            break;
        default:
            return bad(w, "bad escape");
        }
        put_char(w->o, cp);
    }
}

static bool digit(const struct walk *w) { return w->s < w->end && *w->s >= '0' && *w->s <= '9'; }

static int number(struct walk *w)
{
    const char *b = w->s;
    bool is_float = false;
    if (*w->s == '-')
        w->s++;
    if (!digit(w))
        return bad(w, "bad number");
    if (*w->s == '0')
        w->s++;
    else
        while (digit(w))
            w->s++;
    if (w->s < w->end && *w->s == '.') {
        w->s++, is_float = true;
        if (!digit(w))
            return bad(w, "bad number");
        while (digit(w))
            w->s++;
    }
    if (w->s < w->end && (*w->s == 'e' || *w->s == 'E')) {
        w->s++, is_float = true;
        if (w->s < w->end && (*w->s == '+' || *w->s == '-'))
            w->s++;
        if (!digit(w))
            return bad(w, "bad number");
        while (digit(w))
            w->s++;
    }
    const size_t n = (size_t)(w->s - b);
    if (!is_float) { /* a Python int: as written, but -0 is 0 */
        if (n == 2 && b[0] == '-' && b[1] == '0')
            put(w->o, "0", 1);
        else
            put(w->o, b, n);
        return 0;
    }
    char tmp[64], buf[40];
    double v;
    if (n < sizeof(tmp)) {
        memcpy(tmp, b, n);
        tmp[n] = '\0';
        v = strtod(tmp, NULL);
    } else {
        char *t = strndup(b, n);
        if (!t)
            return pd_errf(w->err, w->errlen, -ENOMEM, "out of memory");
        v = strtod(t, NULL);
        free(t);
    }
    if (isinf(v))
        snprintf(buf, sizeof(buf), "%s", v < 0 ? "-Infinity" : "Infinity");
    else
        pd_pyjson_repr(v, buf, sizeof(buf));
    put(w->o, buf, strlen(buf));
    return 0;
}

static int key_cmp(const void *a, const void *b, void *arg)
{
    const struct key *x = a, *y = b;
    const char *t = arg;
    int c = memcmp(t + x->off, t + y->off, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* an object's key (w->s at its quote): decoded onto the key stack, then
 * written */
static int object_key(struct walk *w)
{
    struct keys *k = w->k;
    const char *at = w->s;
    struct out *o = w->o;
    const size_t off = k->text.n;
    w->o = &k->text;
    int rc = string(w);
    w->o = o;
    if (rc < 0)
        return rc;
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 32;
        struct key *r = realloc(k->rec, cap * sizeof(*r));
        if (!r)
            return pd_errf(w->err, w->errlen, -ENOMEM, "out of memory");
        k->rec = r, k->cap = cap;
    }
    if (k->text.oom)
        return pd_errf(w->err, w->errlen, -ENOMEM, "out of memory");
    k->rec[k->n++] = (struct key){off, k->text.n - off};
    w->s = at;
    return string(w);
}

/* at an object's end: its keys, from mark on, all different; popped */
static int distinct_keys(struct walk *w, size_t mark)
{
    struct keys *k = w->k;
    int rc = 0;
    if (k->n - mark > 1) {
        qsort_r(k->rec + mark, k->n - mark, sizeof(*k->rec), key_cmp, k->text.p);
        for (size_t i = mark + 1; i < k->n && rc == 0; i++)
            if (key_cmp(&k->rec[i - 1], &k->rec[i], k->text.p) == 0)
                rc = bad(w, "a repeated key in an object");
    }
    if (k->n > mark) {
        size_t low = k->rec[mark].off; /* the sort moved them: the lowest offset */
        for (size_t i = mark; i < k->n; i++)
            low = k->rec[i].off < low ? k->rec[i].off : low;
        k->text.n = low;
    }
    k->n = mark;
    return rc;
}

static void newline(struct walk *w, int depth)
{
    putc_(w->o, '\n');
    for (int i = 0; i < depth * w->indent; i++)
        putc_(w->o, ' ');
}

static int value(struct walk *w, int depth)
{
    ws(w);
    if (w->s >= w->end)
        return bad(w, "a value is missing");
    const char c = *w->s;
    if (c == '"')
        return string(w);
    if (c == '-' || (c >= '0' && c <= '9'))
        return number(w);
    if (c != '{' && c != '[')
        return lit(w, "true") || lit(w, "false") || lit(w, "null") ? 0 : bad(w, "not JSON");
    if (depth >= PD_PYJSON_MAX_DEPTH)
        return bad(w, "nested too deep");
    const bool obj = c == '{';
    const char close = obj ? '}' : ']';
    const size_t mark = w->k->n;
    w->s++;
    putc_(w->o, c);
    ws(w);
    if (w->s < w->end && *w->s == close) {
        w->s++;
        putc_(w->o, close);
        return 0;
    }
    for (bool first = true;; first = false) {
        if (!first)
            put(w->o, w->indent ? "," : ", ", w->indent ? 1 : 2);
        if (w->indent)
            newline(w, depth + 1);
        int rc;
        if (obj) {
            ws(w);
            if (w->s >= w->end || *w->s != '"')
                return bad(w, "an object key is missing");
            if ((rc = object_key(w)) < 0)
                return rc;
            ws(w);
            if (w->s >= w->end || *w->s != ':')
                return bad(w, "':' is missing");
            w->s++;
            put(w->o, ": ", 2);
        }
        if ((rc = value(w, depth + 1)) < 0)
            return rc;
        ws(w);
        if (w->s < w->end && *w->s == ',') {
            w->s++;
            continue;
        }
        if (w->s < w->end && *w->s == close) {
            if (obj && (rc = distinct_keys(w, mark)) < 0)
                return rc;
            w->s++;
            if (w->indent)
                newline(w, depth);
            putc_(w->o, close);
            return 0;
        }
        return bad(w, obj ? "',' or '}' is missing" : "',' or ']' is missing");
    }
}

/* one JSON value, the whole text, written to o */
static int walk_text(const char *json, size_t len, int indent, struct out *o, char *err,
                     size_t errlen)
{
    struct keys k = {.rec = NULL};
    struct walk w = {json, json + len, json, indent > 0 ? indent : 0, o, err, errlen, &k};
    int rc = value(&w, 0);
    if (rc == 0) {
        ws(&w);
        if (w.s != w.end)
            rc = bad(&w, "text after the value");
    }
    free(k.text.p);
    free(k.rec);
    return rc;
}

int pd_pyjson_dump(const char *json, size_t len, int indent, char **out, size_t *out_len, char *err,
                   size_t errlen)
{
    struct out o = {0};
    if (!json)
        return pd_errf(err, errlen, -EINVAL, "no JSON");
    int rc = walk_text(json, len, indent, &o, err, errlen);
    if (rc == 0 && o.oom)
        rc = pd_errf(err, errlen, -ENOMEM, "out of memory");
    if (rc == 0 && !o.p) /* cannot happen: a value writes something */
        rc = -EINVAL;
    if (rc < 0) {
        free(o.p);
        return rc;
    }
    *out = o.p;
    *out_len = o.n;
    return 0;
}

/* Walks the container at json's start (after white space) element by
 * element; each(w, arg) is called with w->s at an element's start (for
 * objects: at its key) and walks it. */
static int each_item(const char *json, size_t len, bool obj, int (*each)(struct walk *w, void *arg),
                     void *arg, char *err, size_t errlen)
{
    struct out o = {.discard = true};
    struct keys k = {.rec = NULL};
    struct walk w = {json, json + len, json, 0, &o, err, errlen, &k};
    ws(&w);
    if (w.s >= w.end || *w.s != (obj ? '{' : '['))
        return pd_errf(err, errlen, -EINVAL, obj ? "not an object" : "not an array");
    const char close = obj ? '}' : ']';
    w.s++;
    ws(&w);
    int rc = 0;
    if (w.s < w.end && *w.s == close) {
        w.s++;
    } else {
        for (;;) {
            ws(&w);
            if ((rc = each(&w, arg)) < 0)
                goto done;
            ws(&w);
            if (w.s < w.end && *w.s == ',') {
                w.s++;
                continue;
            }
            if (w.s < w.end && *w.s == close) {
                w.s++;
                break;
            }
            rc = bad(&w, "',' or a closing bracket is missing");
            goto done;
        }
    }
    ws(&w);
    rc = w.s == w.end ? 0 : bad(&w, "text after the value");
done:
    free(k.text.p);
    free(k.rec);
    return rc;
}

struct items {
    struct pd_pyjson_span *items;
    size_t max, n;
};

static int one_item(struct walk *w, void *arg)
{
    struct items *it = arg;
    const char *b = w->s;
    int rc = value(w, 1);
    if (rc < 0)
        return rc;
    if (it->n == it->max)
        return pd_errf(w->err, w->errlen, -E2BIG, "more than %zu elements", it->max);
    it->items[it->n++] = (struct pd_pyjson_span){b, (size_t)(w->s - b)};
    return 0;
}

int pd_pyjson_items(const char *json, size_t len, struct pd_pyjson_span *items, size_t max,
                    size_t *n, char *err, size_t errlen)
{
    struct items it = {items, max, 0};
    int rc = each_item(json, len, false, one_item, &it, err, errlen);
    if (rc == 0 || rc == -E2BIG)
        *n = it.n;
    return rc;
}

struct member {
    const char *key;
    struct pd_pyjson_span found;
    bool hit;
};

static int one_member(struct walk *w, void *arg)
{
    struct member *m = arg;
    if (w->s >= w->end || *w->s != '"')
        return bad(w, "an object key is missing");
    const char *k = w->s;
    int rc = string(w);
    if (rc < 0)
        return rc;
    const size_t kn = strlen(m->key);
    const bool same = (size_t)(w->s - k) == kn + 2 && memcmp(k + 1, m->key, kn) == 0;
    ws(w);
    if (w->s >= w->end || *w->s != ':')
        return bad(w, "':' is missing");
    w->s++;
    ws(w);
    const char *b = w->s;
    if ((rc = value(w, 1)) < 0)
        return rc;
    if (same) { /* once: pd_pyjson_member checked that keys do not repeat */
        m->found = (struct pd_pyjson_span){b, (size_t)(w->s - b)};
        m->hit = true;
    }
    return 0;
}

int pd_pyjson_member(const char *json, size_t len, const char *key, struct pd_pyjson_span *out)
{
    struct member m = {key, {0}, false};
    struct out check = {.discard = true};
    int rc = walk_text(json, len, 0, &check, NULL, 0); /* keys repeated inside too */
    if (rc == 0)
        rc = each_item(json, len, true, one_member, &m, NULL, 0);
    if (rc < 0)
        return rc;
    if (!m.hit)
        return -ENOENT;
    *out = m.found;
    return 0;
}

int pd_pyjson_str(const char *s, size_t n, char **out, size_t *out_len)
{
    struct out o = {0};
    putc_(&o, '"');
    size_t i = 0;
    while (i < n) {
        size_t r = i;
        while (i < n && s[i] != '"' && s[i] != '\\' && (unsigned char)s[i] >= 0x20)
            i++;
        put(&o, s + r, i - r);
        if (i < n)
            put_char(&o, (unsigned char)s[i++]);
    }
    putc_(&o, '"');
    if (o.oom) {
        free(o.p);
        return -ENOMEM;
    }
    *out = o.p;
    *out_len = o.n;
    return 0;
}
