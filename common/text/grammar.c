#include "grammar.h"

#include "errf.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* What may come next. */
enum {
    G_TOP, /* before the object: whitespace or '{' */
    G_VALUE, /* a value (after ':' or an array's ',') */
    G_ARR_FIRST, /* after '[': a value or ']' */
    G_OBJ_FIRST, /* after '{': a key or '}' */
    G_OBJ_KEY, /* after an object's ',': a key */
    G_COLON, /* after a key */
    G_AFTER, /* after a value inside a container: ',' or its closing bracket */
    G_STR_KEY, /* inside a key */
    G_STR_VAL, /* inside a string value */
    G_NUMBER,
    G_LITERAL, /* true, false, null */
    G_DONE, /* the object is complete */
};

/* a string's sub: 0 plain, 1 after '\', 2..5 hex digits of \u to come (sub - 1) */
enum { S_PLAIN = 0, S_ESC = 1 };
/* a number's sub */
enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };

static const char *const literals[3] = {"true", "false", "null"};

#define CACHE 64 /* masks kept, by state */

struct pd_grammar {
    uint32_t n_vocab, words;
    /* the trie of the vocabulary's byte strings: node 0 is the root; a
     * node's children are a list (first_child, next_sibling); the tokens
     * spelled by the path to a node are a list (tok_head, tok_next) */
    uint32_t n_nodes;
    uint32_t *first_child, *next_sibling;
    uint8_t *byte;
    int32_t *tok_head, *tok_next;
    uint32_t *off; /* (n_vocab + 1) token t's bytes: bytes[off[t], off[t + 1]) (trie tokens) */
    uint8_t *bytes;
    uint8_t *in_trie; /* (n_vocab) 1: a text token a mask may allow */
    int32_t *eog; /* (n_eog) end-of-generation ids */
    uint32_t n_eog;
    /* the DFS's pending nodes, grown as needed */
    struct pend {
        uint32_t node;
        struct pd_gstate st;
    } *pend;
    size_t pend_cap;
    /* the cache: CACHE states and their masks, replaced round robin */
    struct pd_gstate key[CACHE];
    uint32_t *masks; /* (CACHE, words) */
    uint32_t n_cached, next;
    struct pd_grammar_stats st;
};

/* ---- the matcher ---- */

static bool is_ws(uint8_t b) { return b == ' ' || b == '\t' || b == '\n' || b == '\r'; }

static void value_done(struct pd_gstate *s)
{
    s->mode = s->depth ? G_AFTER : G_DONE;
    s->sub = 0;
    s->ws = 0;
}

static bool top_is_object(const struct pd_gstate *s)
{
    return s->depth && (s->stack >> (s->depth - 1) & 1u);
}

static int push(struct pd_gstate *s, bool object)
{
    if (s->depth >= PD_GRAMMAR_MAX_DEPTH)
        return -EINVAL;
    if (object)
        s->stack |= 1u << s->depth;
    else
        s->stack &= ~(1u << s->depth);
    s->depth++;
    s->mode = object ? G_OBJ_FIRST : G_ARR_FIRST;
    s->ws = 0;
    return 0;
}

static int pop(struct pd_gstate *s, bool object)
{
    if (!s->depth || top_is_object(s) != object)
        return -EINVAL;
    s->depth--;
    s->stack &= ~(1u << s->depth);
    value_done(s);
    return 0;
}

/* A value's first byte. */
static int value_start(struct pd_gstate *s, uint8_t b)
{
    s->ws = 0;
    if (b == '{' || b == '[')
        return push(s, b == '{');
    if (b == '"') {
        s->mode = G_STR_VAL;
        s->sub = S_PLAIN;
        return 0;
    }
    if (b == '-' || (b >= '0' && b <= '9')) {
        s->mode = G_NUMBER;
        s->sub = b == '-' ? N_MINUS : b == '0' ? N_ZERO : N_INT;
        s->len = 1;
        return 0;
    }
    for (uint8_t l = 0; l < 3; l++)
        if (b == (uint8_t)literals[l][0]) {
            s->mode = G_LITERAL;
            s->sub = (uint8_t)(l << 4 | 1);
            return 0;
        }
    return -EINVAL;
}

static int string_byte(struct pd_gstate *s, uint8_t b)
{
    if (s->need) { /* inside a UTF-8 character */
        if (b < s->lo || b > s->hi)
            return -EINVAL;
        s->need--;
        s->lo = 0x80, s->hi = 0xBF;
        return 0;
    }
    if (s->sub == S_ESC) {
        if (b == 'u') {
            s->sub = 5;
            return 0;
        }
        if (!strchr("\"\\/bfnrt", b) || !b)
            return -EINVAL;
        s->sub = S_PLAIN;
        return 0;
    }
    if (s->sub >= 2) { /* \u's hex digits */
        if (!((b >= '0' && b <= '9') || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F')))
            return -EINVAL;
        s->sub = s->sub == 2 ? S_PLAIN : s->sub - 1;
        return 0;
    }
    if (b == '"') {
        if (s->mode == G_STR_KEY) {
            s->mode = G_COLON;
            s->ws = 0;
        } else {
            value_done(s);
        }
        return 0;
    }
    if (b == '\\') {
        s->sub = S_ESC;
        return 0;
    }
    if (b < 0x20)
        return -EINVAL; /* raw control characters are not JSON */
    if (b < 0x80)
        return 0;
    /* the first byte of a multi-byte character: RFC 3629's ranges */
    s->lo = 0x80, s->hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF)
        s->need = 1;
    else if (b == 0xE0)
        s->need = 2, s->lo = 0xA0;
    else if (b == 0xED)
        s->need = 2, s->hi = 0x9F;
    else if (b >= 0xE1 && b <= 0xEF)
        s->need = 2;
    else if (b == 0xF0)
        s->need = 3, s->lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3)
        s->need = 3;
    else if (b == 0xF4)
        s->need = 3, s->hi = 0x8F;
    else
        return -EINVAL;
    return 0;
}

static int step(struct pd_gstate *s, uint8_t b);

static int number_byte(struct pd_gstate *s, uint8_t b)
{
    const bool digit = b >= '0' && b <= '9';
    uint8_t next;
    switch (s->sub) {
    case N_MINUS: next = digit ? (b == '0' ? N_ZERO : N_INT) : 0xFF; break;
    case N_ZERO: next = b == '.' ? N_DOT : (b == 'e' || b == 'E') ? N_E : 0xFE; break;
    case N_INT:
        next = digit ? N_INT : b == '.' ? N_DOT : (b == 'e' || b == 'E') ? N_E : 0xFE;
        break;
    case N_DOT: next = digit ? N_FRAC : 0xFF; break;
    case N_FRAC: next = digit ? N_FRAC : (b == 'e' || b == 'E') ? N_E : 0xFE; break;
    case N_E: next = digit ? N_EXP : (b == '+' || b == '-') ? N_ESIGN : 0xFF; break;
    case N_ESIGN: next = digit ? N_EXP : 0xFF; break;
    default: next = digit ? N_EXP : 0xFE; break; /* N_EXP */
    }
    if (next == 0xFF)
        return -EINVAL;
    if (next == 0xFE) { /* the number ended before b: a complete one, b is what follows */
        if (s->sub == N_ZERO && digit)
            return -EINVAL; /* no leading zeros */
        value_done(s);
        return step(s, b);
    }
    if (s->len >= PD_GRAMMAR_MAX_NUMBER)
        return -EINVAL;
    s->len++;
    s->sub = next;
    return 0;
}

/* One byte: 0, or -EINVAL (s is then garbage: callers step copies). */
static int step(struct pd_gstate *s, uint8_t b)
{
    switch (s->mode) {
    case G_STR_KEY:
    case G_STR_VAL: return string_byte(s, b);
    case G_NUMBER: return number_byte(s, b);
    case G_LITERAL: {
        const char *lit = literals[s->sub >> 4];
        const uint8_t pos = s->sub & 15;
        if (b != (uint8_t)lit[pos])
            return -EINVAL;
        if (!lit[pos + 1])
            value_done(s);
        else
            s->sub++;
        return 0;
    }
    case G_DONE: return -EINVAL;
    default: break;
    }
    if (is_ws(b)) /* between tokens */
        return ++s->ws > PD_GRAMMAR_MAX_WS ? -EINVAL : 0;
    s->ws = 0;
    switch (s->mode) {
    case G_TOP: return b == '{' ? push(s, true) : -EINVAL;
    case G_ARR_FIRST:
        if (b == ']')
            return pop(s, false);
        return value_start(s, b);
    case G_VALUE: return value_start(s, b);
    case G_OBJ_FIRST:
    case G_OBJ_KEY:
        if (b == '}' && s->mode == G_OBJ_FIRST)
            return pop(s, true);
        if (b != '"')
            return -EINVAL;
        s->mode = G_STR_KEY;
        s->sub = S_PLAIN;
        return 0;
    case G_COLON:
        if (b != ':')
            return -EINVAL;
        s->mode = G_VALUE;
        return 0;
    case G_AFTER:
        if (b == ',') {
            s->mode = top_is_object(s) ? G_OBJ_KEY : G_VALUE;
            return 0;
        }
        if (b == '}' || b == ']')
            return pop(s, b == '}');
        return -EINVAL;
    default: return -EINVAL;
    }
}

void pd_gstate_json_object(struct pd_gstate *s)
{
    memset(s, 0, sizeof(*s));
    s->mode = G_TOP;
}

bool pd_gstate_done(const struct pd_gstate *s) { return s->mode == G_DONE; }

int pd_gstate_feed(struct pd_gstate *s, const uint8_t *b, size_t n)
{
    struct pd_gstate t = *s;
    for (size_t i = 0; i < n; i++)
        if (step(&t, b[i]) < 0)
            return -EINVAL;
    *s = t;
    return 0;
}

/* ---- the vocabulary ---- */

static bool is_eog(const struct pd_grammar *g, int32_t token)
{
    for (uint32_t i = 0; i < g->n_eog; i++)
        if (g->eog[i] == token)
            return true;
    return false;
}

int pd_gstate_advance(const struct pd_grammar *g, struct pd_gstate *s, int32_t token)
{
    if (token < 0 || (uint32_t)token >= g->n_vocab)
        return -EINVAL;
    if (is_eog(g, token))
        return pd_gstate_done(s) ? 0 : -EINVAL;
    if (!g->in_trie[token])
        return -EINVAL; /* a control token, or one without bytes: never allowed */
    return pd_gstate_feed(s, g->bytes + g->off[token], g->off[token + 1] - g->off[token]);
}

/* the child of node with this byte, made when absent (-1: out of memory) */
static int64_t child(struct pd_grammar *g, uint32_t node, uint8_t b, uint32_t cap)
{
    uint32_t c = g->first_child[node];
    for (; c; c = g->next_sibling[c])
        if (g->byte[c] == b)
            return c;
    if (g->n_nodes >= cap)
        return -1;
    c = g->n_nodes++;
    g->byte[c] = b;
    g->first_child[c] = 0;
    g->tok_head[c] = -1;
    g->next_sibling[c] = g->first_child[node];
    g->first_child[node] = c;
    return c;
}

int pd_grammar_new(const struct pd_tokenizer *tok, uint32_t n_vocab, struct pd_grammar **out,
                   char *err, size_t errlen)
{
    const uint32_t V = n_vocab, tok_v = pd_tok_n_vocab(tok);
    struct pd_grammar *g = calloc(1, sizeof(*g));
    if (!g || !V)
        goto nomem;
    g->n_vocab = V;
    g->words = (V + 31) / 32;
    size_t total = 0;
    for (uint32_t t = 0; t < V && t < tok_v; t++) {
        size_t n = 0;
        pd_tok_piece(tok, (int32_t)t, &n);
        total += n;
    }
    /* one node per byte of every token at most, and the root */
    const size_t cap = total + 1;
    if (cap > UINT32_MAX || !(g->off = malloc((V + 1) * sizeof(*g->off))) ||
        !(g->bytes = malloc(total ? total : 1)) || !(g->in_trie = calloc(V, 1)) ||
        !(g->tok_next = malloc(V * sizeof(*g->tok_next))) ||
        !(g->eog = malloc(V * sizeof(*g->eog))) ||
        !(g->first_child = malloc(cap * sizeof(*g->first_child))) ||
        !(g->next_sibling = malloc(cap * sizeof(*g->next_sibling))) ||
        !(g->byte = malloc(cap)) || !(g->tok_head = malloc(cap * sizeof(*g->tok_head))) ||
        !(g->masks = malloc((size_t)CACHE * g->words * sizeof(*g->masks))))
        goto nomem;
    g->n_nodes = 1;
    g->first_child[0] = 0;
    g->next_sibling[0] = 0;
    g->tok_head[0] = -1;
    size_t at = 0;
    for (uint32_t t = 0; t < V; t++) {
        size_t n = 0;
        g->off[t] = (uint32_t)at;
        g->tok_next[t] = -1;
        if (t >= tok_v)
            continue; /* the model's, not the tokenizer's: no text, never allowed */
        const uint8_t *p = pd_tok_piece(tok, (int32_t)t, &n);
        if (pd_tok_is_eog(tok, (int32_t)t)) {
            g->eog[g->n_eog++] = (int32_t)t;
            continue;
        }
        if (!p || !n || pd_tok_is_special(tok, (int32_t)t))
            continue; /* never allowed: not text */
        memcpy(g->bytes + at, p, n);
        at += n;
        uint32_t node = 0;
        for (size_t i = 0; i < n; i++) {
            int64_t c = child(g, node, p[i], (uint32_t)cap);
            if (c < 0)
                goto nomem; /* cannot happen: cap counts every byte */
            node = (uint32_t)c;
        }
        g->tok_next[t] = g->tok_head[node];
        g->tok_head[node] = (int32_t)t;
        g->in_trie[t] = 1;
    }
    g->off[V] = (uint32_t)at;
    *out = g;
    return 0;
nomem:
    pd_grammar_free(g);
    return pd_errf(err, errlen, -ENOMEM, "grammar: out of memory for a vocabulary of %u tokens",
                   V);
}

struct pd_grammar *pd_grammar_free(struct pd_grammar *g)
{
    if (!g)
        return NULL;
    free(g->off);
    free(g->bytes);
    free(g->in_trie);
    free(g->tok_next);
    free(g->eog);
    free(g->first_child);
    free(g->next_sibling);
    free(g->byte);
    free(g->tok_head);
    free(g->masks);
    free(g->pend);
    free(g);
    return NULL;
}

static int pend_push(struct pd_grammar *g, size_t *n, uint32_t node, const struct pd_gstate *st)
{
    if (*n == g->pend_cap) {
        size_t cap = g->pend_cap ? 2 * g->pend_cap : 1024;
        struct pend *p = realloc(g->pend, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        g->pend = p, g->pend_cap = cap;
    }
    g->pend[(*n)++] = (struct pend){node, *st};
    return 0;
}

/* The mask of state s into m: a depth-first walk of the trie from s, each
 * branch cut at its first refused byte. */
static int compute(struct pd_grammar *g, const struct pd_gstate *s, uint32_t *m)
{
    memset(m, 0, g->words * sizeof(*m));
    if (pd_gstate_done(s)) { /* only the end */
        for (uint32_t i = 0; i < g->n_eog; i++)
            m[g->eog[i] / 32] |= 1u << (g->eog[i] % 32);
        return 0;
    }
    size_t n = 0;
    if (pend_push(g, &n, 0, s) < 0)
        return -ENOMEM;
    while (n) {
        const struct pend p = g->pend[--n];
        g->st.nodes++;
        for (int32_t t = g->tok_head[p.node]; t >= 0; t = g->tok_next[t])
            m[t / 32] |= 1u << (t % 32);
        for (uint32_t c = g->first_child[p.node]; c; c = g->next_sibling[c]) {
            struct pd_gstate t = p.st;
            if (step(&t, g->byte[c]) == 0 && pend_push(g, &n, c, &t) < 0)
                return -ENOMEM;
        }
    }
    return 0;
}

const uint32_t *pd_grammar_mask(struct pd_grammar *g, const struct pd_gstate *s)
{
    g->st.masks++;
    for (uint32_t i = 0; i < g->n_cached; i++)
        if (!memcmp(&g->key[i], s, sizeof(*s))) {
            g->st.hits++;
            return g->masks + (size_t)i * g->words;
        }
    const uint32_t slot = g->n_cached < CACHE ? g->n_cached++ : g->next++ % CACHE;
    uint32_t *m = g->masks + (size_t)slot * g->words;
    if (compute(g, s, m) < 0) {
        memset(&g->key[slot], 0xFF, sizeof(g->key[slot])); /* no state matches it */
        return NULL;
    }
    g->key[slot] = *s;
    return m;
}

uint32_t pd_grammar_mask_words(const struct pd_grammar *g) { return g->words; }

void pd_grammar_stats(const struct pd_grammar *g, struct pd_grammar_stats *st) { *st = g->st; }
