#include "jstrict.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The API's top-level fields, so a refusal can name one statically. */
static const char *const known[] = {
    "model", "prompt", "messages", "stop", "suffix", "user", "seed", "response_format",
    "tools", "tool_choice", "functions", "function_call", "audio", "logit_bias",
    "stream_options", "n", "best_of", "echo", "tokens",
    "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs",
    "top_logprobs", "stream", "ignore_eos",
};

struct key {
    const char *p; /* decoded, in the scratch */
    size_t n;
};

struct scan {
    const char *s, *end;
    size_t len;
    char *scratch; /* decoded strings; a stack, one mark per object */
    size_t used;
    struct key *keys; /* a stack too */
    size_t n_keys, cap_keys;
    const char *top; /* the top-level key being scanned (scratch), or NULL */
    size_t top_len;
    struct dec_jstrict *out;
    char *msg;
    size_t msglen;
    const char **field;
};

static void ws(struct scan *c)
{
    while (c->s < c->end && (*c->s == ' ' || *c->s == '\t' || *c->s == '\r' || *c->s == '\n'))
        c->s++;
}

static const char *field_name(const char *p, size_t n)
{
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strlen(known[i]) == n && memcmp(known[i], p, n) == 0)
            return known[i];
    return NULL;
}

/* The name, cut and made printable, for a message. */
static void show(const char *p, size_t n, char *buf, size_t cap)
{
    size_t k = 0, i = 0;
    for (; i < n && k + 8 < cap; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\'' && ch != '\\')
            buf[k++] = (char)ch;
        else
            k += (size_t)snprintf(buf + k, cap - k, "\\x%02x", ch);
    }
    if (i < n)
        k += (size_t)snprintf(buf + k, cap - k, "...");
    buf[k] = 0;
}

static int refuse(struct scan *c, int rc, const char *fmt, const char *what)
{
    const char *f = c->top ? field_name(c->top, c->top_len) : NULL;
    char where[96] = "";
    if (c->top) {
        char name[64];
        show(c->top, c->top_len, name, sizeof name);
        snprintf(where, sizeof where, " (in '%s')", name);
    }
    char m[256];
    snprintf(m, sizeof m, fmt, what);
    snprintf(c->msg, c->msglen, "%s%s", m, where);
    if (c->field)
        *c->field = f;
    return rc;
}

static int malformed(struct scan *c);

static unsigned hex4(const char *p)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char h = p[i];
        v = v * 16 + (unsigned)(h >= '0' && h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
    }
    return v;
}

/* A string at c->s (the opening quote): decoded into the scratch (its bytes
 * stay there until the caller pops them). */
static int string(struct scan *c, struct key *k)
{
    c->s++; /* the quote */
    char *d = c->scratch + c->used;
    size_t n = 0;
    while (c->s < c->end && *c->s != '"') {
        unsigned char ch = (unsigned char)*c->s;
        if (ch < 0x20)
            return refuse(c, -EILSEQ, "%sa raw control character in a JSON string (RFC 8259: escape it)",
                          "");
        if (ch != '\\') {
            d[n++] = (char)ch;
            c->s++;
            continue;
        }
        char e = c->s[1];
        c->s += 2;
        if (e != 'u') {
            d[n++] = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' ? '\b'
                   : e == 'f' ? '\f' : e;
            continue;
        }
        unsigned u = hex4(c->s);
        c->s += 4;
        if (u == 0)
            return refuse(c, -EILSEQ, "%sa NUL character (\\u0000) in a string is not accepted", "");
        if (u >= 0xd800 && u <= 0xdbff && c->s + 6 <= c->end && c->s[0] == '\\' &&
            c->s[1] == 'u') {
            unsigned lo = hex4(c->s + 2);
            if (lo >= 0xdc00 && lo <= 0xdfff) {
                u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
                c->s += 6;
            }
        }
        /* UTF-8, as cJSON stores it; only equality matters here */
        if (u < 0x80) {
            d[n++] = (char)u;
        } else if (u < 0x800) {
            d[n++] = (char)(0xc0 | u >> 6);
            d[n++] = (char)(0x80 | (u & 0x3f));
        } else if (u < 0x10000) {
            d[n++] = (char)(0xe0 | u >> 12);
            d[n++] = (char)(0x80 | (u >> 6 & 0x3f));
            d[n++] = (char)(0x80 | (u & 0x3f));
        } else {
            d[n++] = (char)(0xf0 | u >> 18);
            d[n++] = (char)(0x80 | (u >> 12 & 0x3f));
            d[n++] = (char)(0x80 | (u >> 6 & 0x3f));
            d[n++] = (char)(0x80 | (u & 0x3f));
        }
    }
    if (c->s >= c->end)
        return malformed(c);
    c->s++; /* the closing quote */
    if (k) {
        k->p = d;
        k->n = n;
        c->used += n;
    }
    return 0;
}

static int keycmp(const void *a, const void *b)
{
    const struct key *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int r = memcmp(x->p, y->p, n);
    return r ? r : (x->n > y->n) - (x->n < y->n);
}

static int value(struct scan *c, int depth);

/* What cJSON took but the scan did not expect: cJSON also skips every byte
 * below 0x21 as whitespace, which RFC 8259 does not (and a scan that
 * followed it differently could misread the body). */
static int malformed(struct scan *c)
{
    if (c->field)
        *c->field = NULL;
    snprintf(c->msg, c->msglen,
             "malformed JSON near byte %zu (RFC 8259 allows only space, tab, CR and LF "
             "between tokens)", (size_t)(c->s - (c->end - c->len)));
    return -EINVAL;
}

static int expect(struct scan *c, char ch)
{
    ws(c);
    if (c->s >= c->end || *c->s != ch)
        return malformed(c);
    c->s++;
    ws(c);
    return 0;
}

static int object(struct scan *c, int depth)
{
    size_t mark_used = c->used, mark_keys = c->n_keys;
    int rc;
    if ((rc = expect(c, '{')) < 0)
        return rc;
    if (c->s < c->end && *c->s == '}') {
        c->s++;
        return 0;
    }
    for (;;) {
        if (c->s >= c->end || *c->s != '"')
            return malformed(c);
        if (c->n_keys == c->cap_keys) {
            size_t cap = c->cap_keys ? 2 * c->cap_keys : 64;
            struct key *k = realloc(c->keys, cap * sizeof *k);
            if (!k)
                return -ENOMEM;
            c->keys = k;
            c->cap_keys = cap;
        }
        struct key *k = &c->keys[c->n_keys];
        if (depth == 0)
            c->top = NULL; /* a top-level key names itself in a refusal */
        if ((rc = string(c, k)) < 0)
            return rc;
        c->n_keys++;
        if ((rc = expect(c, ':')) < 0)
            return rc;
        if (depth == 0) {
            c->top = k->p;
            c->top_len = k->n;
            if (k->n == 4 && memcmp(k->p, "seed", 4) == 0 && c->s < c->end &&
                (*c->s == '-' || (*c->s >= '0' && *c->s <= '9'))) {
                const char *t = c->s;
                while (t < c->end && (*t == '-' || *t == '+' || *t == '.' || *t == 'e' ||
                                      *t == 'E' || (*t >= '0' && *t <= '9')))
                    t++;
                c->out->seed_text = c->s;
                c->out->seed_len = (size_t)(t - c->s);
            }
        }
        const char *v0 = c->s;
        const bool tools = depth == 0 && k->n == 5 && memcmp(k->p, "tools", 5) == 0;
        if ((rc = value(c, depth + 1)) < 0) /* (k may move: the keys grow) */
            return rc;
        if (tools) {
            c->out->tools_text = v0;
            c->out->tools_len = (size_t)(c->s - v0);
        }
        ws(c);
        if (c->s < c->end && *c->s == ',') {
            c->s++;
            ws(c);
            continue;
        }
        if (c->s < c->end && *c->s == '}') {
            c->s++;
            break;
        }
        return malformed(c);
    }
    /* duplicates among this object's keys */
    size_t nk = c->n_keys - mark_keys;
    if (nk > 1) {
        struct key *ks = c->keys + mark_keys;
        qsort(ks, nk, sizeof *ks, keycmp);
        for (size_t i = 1; i < nk; i++)
            if (keycmp(&ks[i - 1], &ks[i]) == 0) {
                char name[64];
                show(ks[i].p, ks[i].n, name, sizeof name);
                if (depth == 0) { /* a top-level key: it is the field */
                    c->top = NULL;
                    if (c->field)
                        *c->field = field_name(ks[i].p, ks[i].n);
                    snprintf(c->msg, c->msglen, "duplicate key '%s': send each key once", name);
                    return -EINVAL;
                }
                return refuse(c, -EINVAL, "duplicate key '%s' in a JSON object: send each key once",
                              name);
            }
    }
    if (depth == 0)
        c->top = NULL;
    c->n_keys = mark_keys;
    c->used = mark_used;
    return 0;
}

static int array(struct scan *c, int depth)
{
    int rc;
    if ((rc = expect(c, '[')) < 0)
        return rc;
    if (c->s < c->end && *c->s == ']') {
        c->s++;
        return 0;
    }
    for (;;) {
        if ((rc = value(c, depth + 1)) < 0)
            return rc;
        ws(c);
        if (c->s < c->end && *c->s == ',') {
            c->s++;
            continue;
        }
        if (c->s < c->end && *c->s == ']') {
            c->s++;
            return 0;
        }
        return malformed(c);
    }
}

static int value(struct scan *c, int depth)
{
    ws(c);
    if (c->s >= c->end)
        return malformed(c);
    switch (*c->s) {
    case '{': return object(c, depth);
    case '[': return array(c, depth);
    case '"': {
        size_t mark = c->used;
        struct key k;
        int rc = string(c, &k);
        c->used = mark;
        return rc;
    }
    default: { /* a number, true, false or null: cJSON checked its spelling */
        const char *from = c->s;
        while (c->s < c->end && ((*c->s >= '0' && *c->s <= '9') || (*c->s >= 'a' && *c->s <= 'z') ||
                                 *c->s == '-' || *c->s == '+' || *c->s == '.' || *c->s == 'E'))
            c->s++;
        return c->s > from ? 0 : malformed(c);
    }
    }
}

int dec_jstrict_scan(const char *body, size_t len, struct dec_jstrict *out, char *msg,
                     size_t msglen, const char **field)
{
    struct scan c = {.s = body, .end = body + len, .len = len, .out = out, .msg = msg,
                     .msglen = msglen, .field = field};
    memset(out, 0, sizeof *out);
    if (field)
        *field = NULL;
    /* decoded strings are never longer than their JSON text */
    if (!(c.scratch = malloc(len ? len : 1)))
        return -ENOMEM;
    int rc = value(&c, 0); /* the body's object: its members are the top level */
    if (rc == 0) {
        ws(&c);
        if (c.s != c.end)
            rc = malformed(&c);
    }
    free(c.scratch);
    free(c.keys);
    return rc;
}

int dec_jstrict_u64(const char *t, size_t n, uint64_t *out)
{
    bool neg = n > 0 && t[0] == '-';
    size_t i = neg;
    if (i >= n)
        return -EINVAL;
    uint64_t v = 0;
    for (; i < n; i++) {
        if (t[i] < '0' || t[i] > '9')
            return -EINVAL; /* a fraction or an exponent */
        unsigned d = (unsigned)(t[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (UINT64_C(1) << 63))
            return -EINVAL;
        v = (uint64_t)0 - v;
    }
    *out = v;
    return 0;
}
