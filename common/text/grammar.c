#include "grammar.h"

#include "errf.h"
#include "schema_impl.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* What may come next. */
enum {
    G_TOP, /* before the value: whitespace or its first byte */
    G_VALUE, /* a value (after ':' or an array's ',') */
    G_ARR_FIRST, /* after '[': a value or ']' */
    G_OBJ_FIRST, /* after '{': a key or '}' */
    G_OBJ_KEY, /* after an object's ',': a key */
    G_COLON, /* after a key */
    G_AFTER, /* after a value inside a container: ',' or its closing bracket */
    G_STR_KEY, /* inside a key of an object the schema does not type */
    G_STR_VAL, /* inside a string value */
    G_NUMBER,
    G_LIT, /* one of some texts: true, false, null, an enum's values, a typed object's keys */
    G_DONE, /* the value is complete */
};

/* a string's sub: 0 plain, 1 after '\', 2..5 hex digits of \u to come (sub - 1) */
enum { S_PLAIN = 0, S_ESC = 1 };
/* a number's sub */
enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };
/* flags */
enum { F_NEG = 1, F_KEY = 2 };

typedef struct pd_gthread th_t;

#define CACHE 128 /* masks kept, by reading */

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
    /* the DFS's pending (trie node, readings): a stack of heads, the readings
     * in an arena beside it, both grown as needed */
    struct pend {
        uint32_t node, n;
    } *pend;
    th_t *arena;
    size_t pend_cap, arena_cap;
    /* the cache: CACHE readings (with their schema's id) and their masks,
     * replaced round robin */
    struct key {
        uint8_t digest[PD_SCHEMA_DIGEST];
        uint64_t hash;
        uint32_t n; /* readings; 0: unused */
        th_t th[PD_GRAMMAR_MAX_ALTS];
    } *key; /* (CACHE) */
    uint32_t *masks; /* (CACHE, words) */
    uint32_t longest; /* bytes of the longest token */
    uint32_t n_cached, next;
    struct pd_grammar_stats st;
};

/* ---- the matcher: one reading, one byte ---- */

static bool is_ws(uint8_t b) { return b == ' ' || b == '\t' || b == '\n' || b == '\r'; }
static bool is_digit(uint8_t b) { return b >= '0' && b <= '9'; }

static const struct pd_snode *nd_of(const struct pd_schema *sc, uint16_t n) { return &sc->nodes[n]; }

/* the typed container that holds the next value (NULL: none, or untyped) */
static const struct pd_gframe *top_frame(const th_t *t)
{
    return t->depth && t->depth == t->fdepth ? &t->frame[t->fdepth - 1] : NULL;
}

/* A value is complete: what reading it needed is cleared (readings that
 * agree from here on must compare equal, and the cache sees one key). */
static void value_done(const struct pd_schema *sc, th_t *t)
{
    t->mode = t->depth ? G_AFTER : G_DONE;
    t->mant = 0;
    t->cand = 0;
    t->pos = 0;
    t->node = t->lit0 = 0;
    t->sub = t->ws = t->need = t->lo = t->hi = t->len = t->ndig = t->scale = t->flags = 0;
    struct pd_gframe *f = t->depth && t->depth == t->fdepth ? &t->frame[t->fdepth - 1] : NULL;
    if (f && nd_of(sc, f->node)->kind == PD_SK_ARRAY && f->count < UINT16_MAX)
        f->count++;
}

static bool top_is_object(const th_t *t) { return t->depth && (t->stack >> (t->depth - 1) & 1u); }

/* node: the schema node of a typed container, or PD_SNODE_ANY */
static int push(th_t *t, bool object, uint16_t node)
{
    if (t->depth >= PD_GRAMMAR_MAX_DEPTH)
        return -EINVAL;
    if (node != PD_SNODE_ANY) {
        if (t->fdepth != t->depth || t->fdepth >= PD_GRAMMAR_MAX_FRAMES)
            return -EINVAL; /* cannot happen: the schema's nesting is checked */
        t->frame[t->fdepth++] = (struct pd_gframe){node, 0};
    }
    if (object)
        t->stack |= 1u << t->depth;
    else
        t->stack &= ~(1u << t->depth);
    t->depth++;
    t->mode = object ? G_OBJ_FIRST : G_ARR_FIRST;
    t->ws = 0;
    return 0;
}

static int pop(const struct pd_schema *sc, th_t *t, bool object)
{
    if (!t->depth || top_is_object(t) != object)
        return -EINVAL;
    t->depth--;
    t->stack &= ~(1u << t->depth);
    if (t->fdepth > t->depth) {
        t->fdepth--;
        t->frame[t->fdepth] = (struct pd_gframe){0, 0};
    }
    value_done(sc, t);
    return 0;
}

/* A typed object's properties the next key may name: from the one after
 * the last written up to the first required one (bit i: property i). */
static uint64_t key_window(const struct pd_schema *sc, const struct pd_gframe *f)
{
    const struct pd_snode *o = nd_of(sc, f->node);
    uint64_t w = 0;
    for (uint32_t i = f->count; i < o->n; i++) {
        w |= 1ull << i;
        if (sc->props[o->a + i].required)
            break;
    }
    return w;
}

/* whether a typed object may close: no required property is left */
static bool may_close(const struct pd_schema *sc, const struct pd_gframe *f)
{
    const struct pd_snode *o = nd_of(sc, f->node);
    for (uint32_t i = f->count; i < o->n; i++)
        if (sc->props[o->a + i].required)
            return false;
    return true;
}

/* the schema node of the value that starts now */
static uint16_t ctx_node(const struct pd_schema *sc, const th_t *t)
{
    if (!t->depth)
        return sc->root;
    const struct pd_gframe *f = top_frame(t);
    if (!f)
        return PD_SNODE_ANY;
    const struct pd_snode *c = nd_of(sc, f->node);
    return c->kind == PD_SK_ARRAY ? c->a : sc->props[c->a + f->count - 1].node;
}

static uint32_t lit_len(const struct pd_schema *sc, uint32_t i)
{
    return sc->lit_off[i + 1] - sc->lit_off[i];
}

enum { TAKEN = 1, ENDED = 0, REFUSED = -1 }; /* ENDED: what came before is complete; b is next */

static void lit_finish(const struct pd_schema *sc, th_t *t, uint32_t i)
{
    if (t->flags & F_KEY) { /* a typed object's key: property i */
        t->frame[t->fdepth - 1].count = (uint16_t)(i + 1);
        t->mode = G_COLON;
        t->ws = 0;
    } else {
        value_done(sc, t);
    }
    t->cand = 0;
    t->pos = 0;
    t->lit0 = 0;
    t->flags = 0;
}

static int lit_byte(const struct pd_schema *sc, th_t *t, uint8_t b)
{
    uint64_t ext = 0, done = 0;
    bool longer = false;
    for (uint64_t c = t->cand; c; c &= c - 1) {
        const uint32_t i = (uint32_t)__builtin_ctzll(c), l = t->lit0 + i, n = lit_len(sc, l);
        if (t->pos < n && sc->text[sc->lit_off[l] + t->pos] == b) {
            ext |= 1ull << i;
            longer |= t->pos + 1 < n;
        } else if (t->pos == n) {
            done |= 1ull << i;
        }
    }
    if (ext) {
        t->cand = ext;
        t->pos++;
        if (!longer) /* one text, all of it (texts are distinct) */
            lit_finish(sc, t, (uint32_t)__builtin_ctzll(ext));
        return TAKEN;
    }
    if (!done)
        return REFUSED;
    lit_finish(sc, t, (uint32_t)__builtin_ctzll(done)); /* "1" of "1" and "12", then b */
    return ENDED;
}

static int lit_start(const struct pd_schema *sc, th_t *t, uint16_t lit0, uint64_t cand,
                     uint8_t flags, uint8_t b)
{
    t->mode = G_LIT;
    t->lit0 = lit0;
    t->cand = cand;
    t->pos = 0;
    t->flags = flags;
    t->ws = 0;
    return lit_byte(sc, t, b) == TAKEN ? 0 : -EINVAL; /* a key's texts start with its quote */
}

/* ---- bounded numbers: can the digits so far still end within the bounds? ----
 *
 * A number's values are exact: integers in units of 1, numbers in units of
 * 1e-18 (pd_fix). From a prefix, the values still reachable are the points
 * of a grid (the finest step the digits left allow) in a half-open range;
 * the prefix is allowed while one of them is within the bounds, so a bounded
 * number never reaches a dead end. */

static bool feasible(const struct pd_snode *nd, const th_t *t)
{
    const bool integer = nd->kind == PD_SK_INTEGER;
    const struct pd_span bd = pd_bounds_of(nd, t->flags & F_NEG);
    const uint32_t room = pd_digits_of(nd->kind) - t->ndig; /* digits still allowed */
    const pd_fix m = t->mant;
    switch (t->sub) {
    case N_MINUS: /* the first digit decides: try each */
        for (uint8_t d = 0; d < 10; d++) {
            th_t u = *t;
            u.sub = d ? N_INT : N_ZERO;
            u.mant = d;
            u.ndig = 1;
            if (feasible(nd, &u))
                return true;
        }
        return false;
    case N_ZERO: /* 0, and for a number 0.x with up to room fraction digits */
        return integer ? pd_grid_meets(&bd, 0, 1, 1)
                       : pd_grid_meets(&bd, 0, PD_FIX_ONE, pd_pow10x(PD_NUM_DIGITS - room));
    case N_INT: /* j more integer digits, then for a number room - j fraction digits */
        for (uint32_t j = 0; j <= room; j++) {
            const pd_fix p = pd_pow10x(j), a = m * p;
            if (integer ? pd_grid_meets(&bd, a, a + p, 1)
                        : pd_grid_meets(&bd, a * PD_FIX_ONE, (a + p) * PD_FIX_ONE,
                                     pd_pow10x(PD_NUM_DIGITS - (room - j))))
                return true;
        }
        return false;
    case N_DOT: /* at least one fraction digit to come */
    case N_FRAC: {
        const pd_fix u = pd_pow10x(PD_NUM_DIGITS - t->scale), a = m * u; /* m / 10^scale */
        if (t->sub == N_FRAC && pd_grid_meets(&bd, a, a + 1, 1))
            return true; /* it may end here */
        return room && pd_grid_meets(&bd, a, a + u, pd_pow10x(PD_NUM_DIGITS - t->scale - room));
    }
    default: return false;
    }
}

/* a bounded number that ends here is within its bounds */
static bool in_bounds(const struct pd_snode *nd, const th_t *t)
{
    const struct pd_span bd = pd_bounds_of(nd, t->flags & F_NEG);
    const pd_fix v = nd->kind == PD_SK_INTEGER
                         ? (pd_fix)t->mant
                         : (pd_fix)t->mant * pd_pow10x(PD_NUM_DIGITS - t->scale);
    return pd_grid_meets(&bd, v, v + 1, 1);
}

static int number_start(const struct pd_schema *sc, th_t *t, uint16_t node, uint8_t b)
{
    const struct pd_snode *nd = nd_of(sc, node);
    if (b != '-' && !is_digit(b))
        return -EINVAL;
    t->mode = G_NUMBER;
    t->node = node;
    t->sub = b == '-' ? N_MINUS : b == '0' ? N_ZERO : N_INT;
    t->len = 1;
    t->flags = b == '-' ? F_NEG : 0;
    if (nd->kind == PD_SK_ANY || !nd->bounded)
        return 0; /* the digits are not kept: a free number's readings repeat (the cache) */
    t->mant = b == '-' ? 0 : b - '0';
    t->ndig = b != '-';
    t->scale = 0;
    return feasible(nd, t) ? 0 : -EINVAL;
}

static int number_byte(const struct pd_schema *sc, th_t *t, uint8_t b)
{
    const struct pd_snode *nd = nd_of(sc, t->node);
    const bool digit = is_digit(b), integer = nd->kind == PD_SK_INTEGER,
               bounded = nd->kind != PD_SK_ANY && nd->bounded;
    const bool dot = b == '.' && !integer, e = (b == 'e' || b == 'E') && !integer && !bounded;
    uint8_t next;
    switch (t->sub) {
    case N_MINUS: next = digit ? (b == '0' ? N_ZERO : N_INT) : 0xFF; break;
    case N_ZERO: next = dot ? N_DOT : e ? N_E : 0xFE; break;
    case N_INT: next = digit ? N_INT : dot ? N_DOT : e ? N_E : 0xFE; break;
    case N_DOT: next = digit ? N_FRAC : 0xFF; break;
    case N_FRAC: next = digit ? N_FRAC : e ? N_E : 0xFE; break;
    case N_E: next = digit ? N_EXP : (b == '+' || b == '-') ? N_ESIGN : 0xFF; break;
    case N_ESIGN: next = digit ? N_EXP : 0xFF; break;
    default: next = digit ? N_EXP : 0xFE; break; /* N_EXP */
    }
    if (next == 0xFF)
        return REFUSED;
    if (next == 0xFE) { /* the number ended before b: a complete one, b is what follows */
        if ((t->sub == N_ZERO && digit) || (bounded && !in_bounds(nd, t)))
            return REFUSED; /* no leading zeros */
        value_done(sc, t);
        return ENDED;
    }
    if (t->len >= PD_GRAMMAR_MAX_NUMBER)
        return REFUSED;
    t->len++;
    t->sub = next;
    if ((next == N_DOT || next == N_E || next == N_ESIGN) && t->len >= PD_GRAMMAR_MAX_NUMBER)
        return REFUSED; /* a digit must follow, and would not fit: a dead end */
    if (bounded && digit) {
        if (t->ndig >= pd_digits_of(nd->kind))
            return REFUSED;
        t->ndig++;
        t->mant = t->mant * 10 + (b - '0');
        t->scale += next == N_FRAC;
    }
    if (bounded && !feasible(nd, t))
        return REFUSED;
    return TAKEN;
}

static int string_byte(const struct pd_schema *sc, th_t *t, uint8_t b)
{
    const struct pd_snode *nd = nd_of(sc, t->node);
    const bool counted = nd->kind == PD_SK_STRING && (nd->min || nd->max != UINT32_MAX);
    if (t->need) { /* inside a UTF-8 character */
        if (b < t->lo || b > t->hi)
            return -EINVAL;
        t->need--;
        t->lo = 0x80, t->hi = 0xBF;
        return 0;
    }
    if (t->sub == S_ESC) {
        if (b == 'u' && !counted) {
            t->sub = 5;
            return 0;
        }
        if (!strchr("\"\\/bfnrt", b) || !b)
            return -EINVAL;
        t->sub = S_PLAIN;
        return 0;
    }
    if (t->sub >= 2) { /* \u's hex digits */
        if (!(is_digit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F')))
            return -EINVAL;
        t->sub = t->sub == 2 ? S_PLAIN : t->sub - 1;
        return 0;
    }
    if (b == '"') {
        if (t->mode == G_STR_KEY) {
            t->mode = G_COLON;
            t->ws = 0;
            t->lo = t->hi = 0;
        } else {
            if (counted && t->pos < nd->min)
                return -EINVAL;
            value_done(sc, t);
        }
        return 0;
    }
    if (b < 0x20)
        return -EINVAL; /* raw control characters are not JSON */
    if (counted) { /* a character starts: an escape, or a plain or lead byte */
        if (t->pos >= nd->max)
            return -EINVAL;
        t->pos++;
    }
    if (b == '\\') {
        t->sub = S_ESC;
        return 0;
    }
    if (b < 0x80)
        return 0;
    /* the first byte of a multi-byte character: RFC 3629's ranges */
    t->lo = 0x80, t->hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF)
        t->need = 1;
    else if (b == 0xE0)
        t->need = 2, t->lo = 0xA0;
    else if (b == 0xED)
        t->need = 2, t->hi = 0x9F;
    else if (b >= 0xE1 && b <= 0xEF)
        t->need = 2;
    else if (b == 0xF0)
        t->need = 3, t->lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3)
        t->need = 3;
    else if (b == 0xF4)
        t->need = 3, t->hi = 0x8F;
    else
        return -EINVAL;
    return 0;
}

/* A value of node starting with b, from t: its readings appended to out
 * (n of them so far); the new count. */
static uint32_t vstart(const struct pd_schema *sc, const th_t *t, uint16_t node, uint8_t b,
                       th_t *out, uint32_t n)
{
    const struct pd_snode *nd = nd_of(sc, node);
    if (nd->kind == PD_SK_ANYOF) {
        for (uint32_t i = 0; i < nd->n; i++)
            n = vstart(sc, t, sc->alts[nd->a + i], b, out, n);
        return n;
    }
    if (n >= PD_GRAMMAR_MAX_ALTS)
        return n; /* more readings than are followed: the rest are dropped */
    th_t u = *t;
    int rc = -EINVAL;
    u.ws = 0;
    switch (nd->kind) {
    case PD_SK_ANY:
        if (b == '{' || b == '[')
            rc = push(&u, b == '{', PD_SNODE_ANY);
        else if (b == '"')
            u.mode = G_STR_VAL, u.sub = S_PLAIN, u.node = PD_SNODE_ANY, rc = 0;
        else if (b == '-' || is_digit(b))
            rc = number_start(sc, &u, PD_SNODE_ANY, b);
        else
            rc = lit_start(sc, &u, PD_SLIT_TRUE, 7, 0, b);
        break;
    case PD_SK_OBJ_FREE: rc = b == '{' ? push(&u, true, PD_SNODE_ANY) : -EINVAL; break;
    case PD_SK_OBJECT: rc = b == '{' ? push(&u, true, node) : -EINVAL; break;
    case PD_SK_ARRAY: rc = b == '[' ? push(&u, false, node) : -EINVAL; break;
    case PD_SK_STRING:
        if (b == '"')
            u.mode = G_STR_VAL, u.sub = S_PLAIN, u.node = node, u.pos = 0, rc = 0;
        break;
    case PD_SK_INTEGER:
    case PD_SK_NUMBER: rc = number_start(sc, &u, node, b); break;
    case PD_SK_LIT:
        rc = lit_start(sc, &u, nd->lit, nd->n == 64 ? ~0ull : (1ull << nd->n) - 1, 0, b);
        break;
    default: break;
    }
    if (rc == 0)
        out[n++] = u;
    return n;
}

/* One byte from t: its readings into out (PD_GRAMMAR_MAX_ALTS at most);
 * how many (0: b is refused). */
static uint32_t step(const struct pd_schema *sc, const th_t *in, uint8_t b, th_t *out)
{
    th_t *t = out; /* worked on in place: a mask's walk copies readings enough */
    if (t != in)
        *t = *in;
    const struct pd_gframe *f;
    switch (t->mode) {
    case G_STR_KEY:
    case G_STR_VAL: return string_byte(sc, t, b) < 0 ? 0 : 1;
    case G_NUMBER:
    case G_LIT: {
        int r = t->mode == G_NUMBER ? number_byte(sc, t, b) : lit_byte(sc, t, b);
        if (r == REFUSED)
            return 0;
        return r == ENDED ? step(sc, t, b, out) : 1;
    }
    case G_DONE: return 0;
    default: break;
    }
    if (is_ws(b)) /* between tokens */
        return ++t->ws > PD_GRAMMAR_MAX_WS ? 0 : 1;
    t->ws = 0;
    int rc = -EINVAL;
    th_t from; /* a value's start writes out[]: what it starts from, apart */
    f = top_frame(t);
    switch (t->mode) {
    case G_TOP: from = *t; return vstart(sc, &from, sc->root, b, out, 0);
    case G_VALUE: from = *t; return vstart(sc, &from, ctx_node(sc, &from), b, out, 0);
    case G_ARR_FIRST:
        if (b == ']')
            rc = f && f->count < nd_of(sc, f->node)->min ? -EINVAL : pop(sc, t, false);
        else if (!f || nd_of(sc, f->node)->max > 0)
            return from = *t, vstart(sc, &from, ctx_node(sc, &from), b, out, 0);
        break;
    case G_OBJ_FIRST:
    case G_OBJ_KEY:
        if (b == '}' && t->mode == G_OBJ_FIRST)
            rc = f && !may_close(sc, f) ? -EINVAL : pop(sc, t, true);
        else if (b == '"' && f)
            rc = lit_start(sc, t, nd_of(sc, f->node)->lit, key_window(sc, f), F_KEY, b);
        else if (b == '"')
            t->mode = G_STR_KEY, t->sub = S_PLAIN, t->node = PD_SNODE_ANY, rc = 0;
        break;
    case G_COLON:
        if (b == ':')
            t->mode = G_VALUE, rc = 0;
        break;
    case G_AFTER:
        if (b == ',') {
            if (!f)
                t->mode = top_is_object(t) ? G_OBJ_KEY : G_VALUE, rc = 0;
            else if (top_is_object(t))
                rc = key_window(sc, f) ? (t->mode = G_OBJ_KEY, 0) : -EINVAL;
            else
                rc = f->count < nd_of(sc, f->node)->max ? (t->mode = G_VALUE, 0) : -EINVAL;
        } else if (b == '}' || b == ']') {
            if (f && (b == '}' ? !may_close(sc, f) : f->count < nd_of(sc, f->node)->min))
                rc = -EINVAL;
            else
                rc = pop(sc, t, b == '}');
        }
        break;
    default: break;
    }
    return rc < 0 ? 0 : 1;
}

/* ---- readings ---- */

void pd_gstate_init(struct pd_gstate *s, const struct pd_schema *sc)
{
    memset(s, 0, sizeof(*s));
    s->sc = sc;
    s->n = 1;
    s->t[0].mode = G_TOP;
}

void pd_gstate_json_object(struct pd_gstate *s) { pd_gstate_init(s, pd_schema_json_object()); }

bool pd_gstate_done(const struct pd_gstate *s)
{
    for (uint32_t i = 0; i < s->n; i++)
        if (s->t[i].mode == G_DONE)
            return true;
    return false;
}

/* v[0..n) and the readings add[0..k) not among them, PD_GRAMMAR_MAX_ALTS at
 * most (readings that met again are one); add may be v + n. The count. */
static uint32_t merge(th_t *v, uint32_t n, const th_t *add, uint32_t k)
{
    for (uint32_t j = 0; j < k; j++) {
        bool dup = false;
        for (uint32_t x = 0; x < n && !dup; x++)
            dup = !memcmp(&v[x], &add[j], sizeof(add[j]));
        if (!dup && n < PD_GRAMMAR_MAX_ALTS) {
            if (&v[n] != &add[j])
                v[n] = add[j];
            n++;
        }
    }
    return n;
}

/* s after byte b into o (its readings 0..n-1 only): 0, or -EINVAL when no
 * reading takes it. Readings past the cap are dropped, the same way here
 * for a token's advance as for a mask's walk, so the two always agree. */
static int state_step(const struct pd_gstate *s, uint8_t b, struct pd_gstate *o)
{
    th_t out[PD_GRAMMAR_MAX_ALTS];
    uint32_t n = 0;
    o->sc = s->sc;
    for (uint32_t i = 0; i < s->n; i++)
        n = merge(o->t, n, out, step(s->sc, &s->t[i], b, out));
    o->n = n;
    return n ? 0 : -EINVAL;
}

/* the unused readings (and the padding) zeroed: states compare as bytes */
static void tidy(struct pd_gstate *s)
{
    struct pd_gstate t;
    memset(&t, 0, sizeof(t));
    t.sc = s->sc;
    t.n = s->n;
    memcpy(t.t, s->t, s->n * sizeof(*s->t));
    *s = t;
}

int pd_gstate_feed(struct pd_gstate *s, const uint8_t *b, size_t n)
{
    struct pd_gstate t[2];
    t[0] = *s;
    for (size_t i = 0; i < n; i++)
        if (state_step(&t[i & 1], b[i], &t[(i + 1) & 1]) < 0)
            return -EINVAL;
    *s = t[n & 1];
    tidy(s);
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
        !(g->masks = malloc((size_t)CACHE * g->words * sizeof(*g->masks))) ||
        !(g->key = calloc(CACHE, sizeof(*g->key))))
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
        if (n > g->longest)
            g->longest = (uint32_t)n;
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
    free(g->key);
    free(g->pend);
    free(g->arena);
    free(g);
    return NULL;
}

/* room for one more pending node, and for PD_GRAMMAR_MAX_ALTS readings
 * past used in the arena */
static int pend_room(struct pd_grammar *g, size_t n, size_t used)
{
    if (n == g->pend_cap) {
        size_t cap = g->pend_cap ? 2 * g->pend_cap : 1024;
        struct pend *p = realloc(g->pend, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        g->pend = p, g->pend_cap = cap;
    }
    if (used + PD_GRAMMAR_MAX_ALTS > g->arena_cap) {
        size_t cap = g->arena_cap ? 2 * g->arena_cap : 1024;
        th_t *a = realloc(g->arena, cap * sizeof(*a));
        if (!a)
            return -ENOMEM;
        g->arena = a, g->arena_cap = cap;
    }
    return 0;
}

static int pend_push(struct pd_grammar *g, size_t *n, size_t *used, uint32_t node,
                     const struct pd_gstate *st)
{
    if (pend_room(g, *n, *used) < 0)
        return -ENOMEM;
    memcpy(g->arena + *used, st->t, st->n * sizeof(*st->t));
    *used += st->n;
    g->pend[(*n)++] = (struct pend){node, st->n};
    return 0;
}

/* The mask of state s into m: a depth-first walk of the trie from s, each
 * branch cut at its first byte no reading takes (state_step, as a token's
 * advance does it). */
static int compute(struct pd_grammar *g, const struct pd_gstate *s, uint32_t *m)
{
    memset(m, 0, g->words * sizeof(*m));
    if (pd_gstate_done(s)) /* the end; bytes nothing takes (readings agree on JSON's syntax) */
        for (uint32_t i = 0; i < g->n_eog; i++)
            m[g->eog[i] / 32] |= 1u << (g->eog[i] % 32);
    size_t n = 0, used = 0;
    if (pend_push(g, &n, &used, 0, s) < 0)
        return -ENOMEM;
    struct pd_gstate at, next;
    at.sc = s->sc;
    while (n) {
        const struct pend p = g->pend[--n];
        used -= p.n;
        at.n = p.n;
        memcpy(at.t, g->arena + used, p.n * sizeof(*at.t));
        g->st.nodes++;
        for (int32_t t = g->tok_head[p.node]; t >= 0; t = g->tok_next[t])
            m[t / 32] |= 1u << (t % 32);
        for (uint32_t c = g->first_child[p.node]; c; c = g->next_sibling[c]) {
            if (at.n > 1) { /* several readings: as the advance steps them */
                if (state_step(&at, g->byte[c], &next) == 0 &&
                    pend_push(g, &n, &used, c, &next) < 0)
                    return -ENOMEM;
                continue;
            }
            /* one (nearly always): stepped straight into the arena, merged as
             * state_step merges one reading's successors */
            if (pend_room(g, n, used) < 0)
                return -ENOMEM;
            th_t *dst = g->arena + used;
            const uint32_t k = merge(dst, 0, dst, step(s->sc, &at.t[0], g->byte[c], dst));
            if (k) {
                used += k;
                g->pend[n++] = (struct pend){c, k};
            }
        }
    }
    return 0;
}

/* A reading as the cache knows it. Inside a string with a length bound,
 * the mask depends on the characters written only through how far they are
 * from the bounds, and not at all once both are further than the longest
 * token: the distances, capped there, stand for the count (or every
 * character of such a string would be a mask not cached). */
static th_t cache_key(const struct pd_grammar *g, const struct pd_schema *sc, const th_t *th)
{
    th_t k = *th;
    if (th->mode != G_STR_VAL || nd_of(sc, th->node)->kind != PD_SK_STRING)
        return k;
    const struct pd_snode *nd = nd_of(sc, th->node);
    const uint32_t cap = g->longest + 1;
    uint32_t to_min = nd->min > th->pos ? nd->min - th->pos : 0,
             to_max = nd->max - th->pos; /* pos <= max always */
    to_min = to_min < cap ? to_min : cap;
    to_max = to_max < cap ? to_max : cap;
    k.pos = to_min << 16 | to_max; /* tokens are far shorter than 65535 bytes */
    return k;
}

static uint64_t hash_of(const uint8_t *digest, const th_t *th, uint32_t n)
{
    uint64_t h = 1469598103934665603ull ^ n;
    for (size_t i = 0; i < PD_SCHEMA_DIGEST; i++)
        h = (h ^ digest[i]) * 1099511628211ull;
    const uint8_t *p = (const uint8_t *)th;
    for (size_t i = 0; i < n * sizeof(*th); i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

const uint32_t *pd_grammar_mask(struct pd_grammar *g, const struct pd_gstate *s)
{
    const struct pd_schema *sc = s->sc;
    th_t key[PD_GRAMMAR_MAX_ALTS];
    const size_t kb = s->n * sizeof(*key);
    for (uint32_t i = 0; i < s->n; i++)
        key[i] = cache_key(g, sc, &s->t[i]);
    const uint64_t h = hash_of(sc->digest, key, s->n);
    g->st.masks++;
    for (uint32_t i = 0; i < g->n_cached; i++) {
        const struct key *k = &g->key[i];
        if (k->n == s->n && k->hash == h && !memcmp(k->digest, sc->digest, PD_SCHEMA_DIGEST) &&
            !memcmp(k->th, key, kb)) {
            g->st.hits++;
            return g->masks + (size_t)i * g->words;
        }
    }
    const uint32_t slot = g->n_cached < CACHE ? g->n_cached++ : g->next++ % CACHE;
    uint32_t *m = g->masks + (size_t)slot * g->words;
    struct key *k = &g->key[slot];
    k->n = 0; /* matches nothing until filled */
    if (compute(g, s, m) < 0)
        return NULL;
    memcpy(k->digest, sc->digest, PD_SCHEMA_DIGEST);
    k->hash = h;
    memcpy(k->th, key, kb);
    k->n = s->n;
    return m;
}

uint32_t pd_grammar_mask_words(const struct pd_grammar *g) { return g->words; }

void pd_grammar_stats(const struct pd_grammar *g, struct pd_grammar_stats *st) { *st = g->st; }
