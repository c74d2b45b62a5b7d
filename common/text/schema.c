#include "schema_impl.h"

#include "errf.h"
#include "grammar.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sodium.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the static schema of json_object ---- */

static const char any_text[] = "truefalsenull";
static uint32_t any_off[] = {0, 4, 9, 13};
static struct pd_snode any_nodes[2] = {{.kind = PD_SK_ANY}, {.kind = PD_SK_OBJ_FREE}};
static struct pd_schema json_object = {
    .root = PD_SNODE_OBJ_FREE, .n_nodes = 2, .n_lits = 3, .nodes = any_nodes,
    .lit_off = any_off, .text = (uint8_t *)any_text};

struct pd_schema *pd_schema_json_object(void) { return &json_object; }

struct pd_schema *pd_schema_ref(struct pd_schema *sc)
{
    if (sc && atomic_load(&sc->refs))
        atomic_fetch_add(&sc->refs, 1);
    return sc;
}

struct pd_schema *pd_schema_unref(struct pd_schema *sc)
{
    if (!sc || !atomic_load(&sc->refs) || atomic_fetch_sub(&sc->refs, 1) != 1)
        return NULL;
    free(sc->nodes);
    free(sc->props);
    free(sc->alts);
    free(sc->lit_off);
    free(sc->text);
    free(sc);
    return NULL;
}

/* ---- compiling ---- */

#define MAX_REFS 16 /* $refs being expanded at once */

struct cc {
    struct pd_schema *sc;
    const cJSON *doc;
    uint32_t cap_nodes, cap_props, cap_alts, cap_lits, n_text, cap_text;
    const cJSON *refs[MAX_REFS]; /* the $refs being expanded (recursion) */
    uint32_t n_refs;
    char *err;
    size_t errlen;
};

static const char *const annotations[] = {"title", "description", "default", "examples",
                                          "$schema", "$id", "$comment", "deprecated",
                                          "readOnly", "writeOnly", "$defs", "definitions"};

enum { C_NONE = 0, C_OBJECT = 1, C_ARRAY = 2, C_STRING = 4, C_NUMBER = 8 };

static const struct kw {
    const char *name;
    int cat; /* the type it applies to (C_NONE: any) */
} keywords[] = {
    {"type", C_NONE}, {"enum", C_NONE}, {"const", C_NONE}, {"anyOf", C_NONE}, {"$ref", C_NONE},
    {"properties", C_OBJECT}, {"required", C_OBJECT}, {"additionalProperties", C_OBJECT},
    {"items", C_ARRAY}, {"minItems", C_ARRAY}, {"maxItems", C_ARRAY},
    {"minLength", C_STRING}, {"maxLength", C_STRING},
    {"minimum", C_NUMBER}, {"maximum", C_NUMBER}, {"exclusiveMinimum", C_NUMBER},
    {"exclusiveMaximum", C_NUMBER},
};

static bool is_annotation(const char *k)
{
    for (size_t i = 0; i < sizeof(annotations) / sizeof(*annotations); i++)
        if (!strcmp(k, annotations[i]))
            return true;
    return false;
}

static const struct kw *keyword(const char *k)
{
    for (size_t i = 0; i < sizeof(keywords) / sizeof(*keywords); i++)
        if (!strcmp(k, keywords[i].name))
            return &keywords[i];
    return NULL;
}

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

__attribute__((format(printf, 3, 4))) static int refuse(struct cc *c, const char *path,
                                                        const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return pd_errf(c->err, c->errlen, -EINVAL, "json_schema %s: %s", path, msg);
}

static int nomem(struct cc *c)
{
    return pd_errf(c->err, c->errlen, -ENOMEM, "json_schema: out of memory");
}

/* grows *p (of *cap elements of size sz) to hold n */
static int grow(void **p, uint32_t *cap, uint32_t n, size_t sz)
{
    if (n <= *cap)
        return 0;
    uint32_t c = *cap ? *cap : 16;
    while (c < n)
        c *= 2;
    void *q = realloc(*p, (size_t)c * sz);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

static int new_node(struct cc *c, const char *path, const struct pd_snode *n, uint16_t *out)
{
    struct pd_schema *sc = c->sc;
    if (sc->n_nodes >= PD_SCHEMA_MAX_NODES)
        return refuse(c, path, "more than %d schema nodes (after $ref expansion)",
                      PD_SCHEMA_MAX_NODES);
    if (grow((void **)&sc->nodes, &c->cap_nodes, sc->n_nodes + 1u, sizeof(*sc->nodes)) < 0)
        return nomem(c);
    sc->nodes[sc->n_nodes] = *n;
    if (!sc->nodes[sc->n_nodes].width)
        sc->nodes[sc->n_nodes].width = 1;
    *out = sc->n_nodes++;
    return 0;
}

/* ---- literal texts: JSON written so that it reads back as the value ---- */

struct text {
    char *p;
    size_t n, cap;
    bool oom;
};

static void put(struct text *t, const char *s, size_t n)
{
    if (t->oom)
        return;
    if (t->n + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 64;
        while (cap < t->n + n + 1)
            cap *= 2;
        char *q = realloc(t->p, cap);
        if (!q) {
            t->oom = true;
            return;
        }
        t->p = q, t->cap = cap;
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
}

static void put_string(struct text *t, const char *s)
{
    put(t, "\"", 1);
    for (; *s; s++) {
        const unsigned char ch = (unsigned char)*s;
        char esc[8];
        if (ch == '"' || ch == '\\')
            esc[0] = '\\', esc[1] = (char)ch, put(t, esc, 2);
        else if (ch < 0x20)
            put(t, esc, (size_t)snprintf(esc, sizeof(esc), "\\u%04x", ch));
        else
            put(t, s, 1);
    }
    put(t, "\"", 1);
}

/* The fewest significant digits (1 to 17) that read back as v, as Python's
 * repr finds them: in %e form when sci, else %g. 17 always do. */
static void shortest(double v, bool sci, char *buf, size_t cap)
{
    for (int sig = 1; sig <= 17; sig++) {
        snprintf(buf, cap, sci ? "%.*e" : "%.*g", sci ? sig - 1 : sig, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

/* A number as the shortest text that reads back as it (cJSON's printer
 * rounds to 15 digits and calls that equal: 0.30000000000000004 became 0.3) */
static void put_number(struct text *t, double v)
{
    char buf[40];
    if (v == floor(v) && fabs(v) < 1e17)
        snprintf(buf, sizeof(buf), "%.0f", v);
    else
        shortest(v, false, buf, sizeof(buf));
    put(t, buf, strlen(buf));
}

static void put_value(struct text *t, const cJSON *v)
{
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        const bool obj = cJSON_IsObject(v);
        put(t, obj ? "{" : "[", 1);
        for (const cJSON *x = v->child; x; x = x->next) {
            if (x != v->child)
                put(t, ",", 1);
            if (obj) {
                put_string(t, x->string);
                put(t, ":", 1);
            }
            put_value(t, x);
        }
        put(t, obj ? "}" : "]", 1);
    } else if (cJSON_IsString(v)) {
        put_string(t, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        put_number(t, v->valuedouble);
    } else {
        const char *w = cJSON_IsTrue(v) ? "true" : cJSON_IsFalse(v) ? "false" : "null";
        put(t, w, strlen(w));
    }
}

/* A literal: the text of v (or of the string s). */
static int add_lit(struct cc *c, const char *path, const cJSON *v, const char *s, uint16_t *out)
{
    struct pd_schema *sc = c->sc;
    struct text t = {0};
    if (s)
        put_string(&t, s);
    else
        put_value(&t, v);
    if (t.oom) {
        free(t.p);
        return nomem(c);
    }
    const size_t n = t.n;
    int rc = 0;
    if (c->n_text + n > PD_SCHEMA_MAX_LIT || sc->n_lits >= UINT16_MAX)
        rc = refuse(c, path, "more than %d bytes of keys and values", PD_SCHEMA_MAX_LIT);
    else if (grow((void **)&sc->text, &c->cap_text, c->n_text + (uint32_t)n, 1) < 0 ||
             grow((void **)&sc->lit_off, &c->cap_lits, sc->n_lits + 2u, sizeof(*sc->lit_off)) < 0)
        rc = nomem(c);
    if (rc == 0) {
        memcpy(sc->text + c->n_text, t.p, n);
        c->n_text += (uint32_t)n;
        *out = sc->n_lits++;
        sc->lit_off[sc->n_lits] = c->n_text;
    }
    free(t.p);
    return rc;
}

static int node(struct cc *c, const cJSON *js, const char *path, uint32_t depth, uint16_t *out);

static int ref_node(struct cc *c, const cJSON *js, const char *path, uint32_t depth,
                    uint16_t *out)
{
    const cJSON *r = get(js, "$ref");
    for (const cJSON *k = js->child; k; k = k->next)
        if (strcmp(k->string, "$ref") && !is_annotation(k->string))
            return refuse(c, path, "\"%s\" beside \"$ref\" is not supported", k->string);
    const char *s = cJSON_IsString(r) ? r->valuestring : "";
    const char *name = NULL, *where = NULL;
    if (!strncmp(s, "#/$defs/", 8))
        name = s + 8, where = "$defs";
    else if (!strncmp(s, "#/definitions/", 14))
        name = s + 14, where = "definitions";
    if (!name || !*name || strpbrk(name, "/~"))
        return refuse(c, path, "\"$ref\" must name \"#/$defs/NAME\" or \"#/definitions/NAME\"");
    const cJSON *defs = get(c->doc, where), *t = defs ? get(defs, name) : NULL;
    if (!t)
        return refuse(c, path, "\"$ref\" %.80s is not in the document", s);
    for (uint32_t i = 0; i < c->n_refs; i++)
        if (c->refs[i] == t)
            return refuse(c, path, "\"$ref\" %.80s is recursive (not supported)", s);
    if (c->n_refs == MAX_REFS)
        return refuse(c, path, "\"$ref\" nested more than %d deep", MAX_REFS);
    c->refs[c->n_refs++] = t;
    char sub[256];
    snprintf(sub, sizeof(sub), "#/%s/%.80s", where, name);
    int rc = node(c, t, sub, depth, out);
    c->n_refs--;
    return rc;
}

/* One of the nodes alt[0..n) (n >= 1): an anyOf node, unless n is 1. Its
 * width is the sum of theirs: more readings than PD_GRAMMAR_MAX_ALTS at once
 * is refused here, so the matcher never drops one (and never refuses a
 * valid document for want of room). */
static int anyof_of(struct cc *c, const char *path, const uint16_t *alt, uint32_t n,
                    uint16_t *out)
{
    struct pd_schema *sc = c->sc;
    if (n == 1) {
        *out = alt[0];
        return 0;
    }
    uint32_t width = 0;
    for (uint32_t i = 0; i < n; i++)
        width += sc->nodes[alt[i]].width;
    if (width > PD_GRAMMAR_MAX_ALTS)
        return refuse(c, path, "\"anyOf\" whose alternatives need %u readings at once (at most "
                               "%d: nested anyOf multiply)", width, PD_GRAMMAR_MAX_ALTS);
    if (grow((void **)&sc->alts, &c->cap_alts, sc->n_alts + n, sizeof(*sc->alts)) < 0)
        return nomem(c);
    struct pd_snode nd = {.kind = PD_SK_ANYOF, .a = sc->n_alts, .n = (uint16_t)n,
                          .width = (uint16_t)width};
    memcpy(sc->alts + sc->n_alts, alt, n * sizeof(*alt));
    sc->n_alts += (uint16_t)n;
    return new_node(c, path, &nd, out);
}

static int anyof_node(struct cc *c, const cJSON *js, const char *path, uint32_t depth,
                      uint16_t *out)
{
    const cJSON *a = get(js, "anyOf");
    for (const cJSON *k = js->child; k; k = k->next)
        if (strcmp(k->string, "anyOf") && !is_annotation(k->string))
            return refuse(c, path, "\"%s\" beside \"anyOf\" is not supported", k->string);
    if (!cJSON_IsArray(a) || !a->child)
        return refuse(c, path, "\"anyOf\" must be a non-empty array of schemas");
    uint16_t alt[PD_GRAMMAR_MAX_ALTS];
    uint32_t n = 0, i = 0;
    for (const cJSON *x = a->child; x; x = x->next, i++) {
        char sub[256];
        uint16_t id;
        snprintf(sub, sizeof(sub), "%.200s.anyOf[%u]", path, i);
        int rc = node(c, x, sub, depth, &id);
        if (rc < 0)
            return rc;
        const struct pd_snode *nd = &c->sc->nodes[id];
        /* an alternative's own alternatives are this one's */
        const uint32_t m = nd->kind == PD_SK_ANYOF ? nd->n : 1;
        if (n + m > PD_GRAMMAR_MAX_ALTS)
            return refuse(c, path, "\"anyOf\" of more than %d alternatives", PD_GRAMMAR_MAX_ALTS);
        for (uint32_t k = 0; k < m; k++)
            alt[n++] = nd->kind == PD_SK_ANYOF ? c->sc->alts[nd->a + k] : id;
    }
    return anyof_of(c, path, alt, n, out);
}

/* the categories of "type" (a name or names) into *types; C_NONE + 16
 * marks integer, 32 boolean, 64 null */
enum { T_OBJECT = 1, T_ARRAY = 2, T_STRING = 4, T_NUMBER = 8, T_INTEGER = 16, T_BOOLEAN = 32,
       T_NULL = 64 };
static const char *const type_names[] = {"object", "array", "string", "number", "integer",
                                         "boolean", "null"};

static int parse_types(struct cc *c, const cJSON *t, const char *path, unsigned *types)
{
    *types = 0;
    const cJSON *one = t, *x = cJSON_IsArray(t) ? t->child : t;
    if (cJSON_IsArray(t) && !x)
        return refuse(c, path, "\"type\" is an empty list");
    for (; x; x = cJSON_IsArray(one) ? x->next : NULL) {
        unsigned bit = 0;
        for (unsigned i = 0; cJSON_IsString(x) && i < 7; i++)
            if (!strcmp(x->valuestring, type_names[i]))
                bit = 1u << i;
        if (!bit)
            return refuse(c, path, "\"type\" must be one or a list of object, array, string, "
                                   "number, integer, boolean, null");
        *types |= bit;
    }
    return 0;
}

static bool value_has_type(const cJSON *v, unsigned types)
{
    if (cJSON_IsObject(v))
        return types & T_OBJECT;
    if (cJSON_IsArray(v))
        return types & T_ARRAY;
    if (cJSON_IsString(v))
        return types & T_STRING;
    if (cJSON_IsBool(v))
        return types & T_BOOLEAN;
    if (cJSON_IsNull(v))
        return types & T_NULL;
    if (types & T_NUMBER)
        return true;
    return (types & T_INTEGER) && v->valuedouble == floor(v->valuedouble) &&
           fabs(v->valuedouble) < 9.007199254740992e15;
}

static int enum_node(struct cc *c, const cJSON *js, const char *path, uint16_t *out)
{
    const cJSON *e = get(js, "enum"), *k1 = get(js, "const"), *t = get(js, "type");
    unsigned types = 0x7F;
    for (const cJSON *k = js->child; k; k = k->next)
        if (strcmp(k->string, "enum") && strcmp(k->string, "const") &&
            strcmp(k->string, "type") && !is_annotation(k->string))
            return refuse(c, path, "\"%s\" beside \"%s\" is not supported", k->string,
                          e ? "enum" : "const");
    if (e && k1)
        return refuse(c, path, "both \"enum\" and \"const\"");
    if (e && (!cJSON_IsArray(e) || !e->child))
        return refuse(c, path, "\"enum\" must be a non-empty array");
    if (t) {
        int rc = parse_types(c, t, path, &types);
        if (rc < 0)
            return rc;
    }
    struct pd_snode nd = {.kind = PD_SK_LIT, .lit = c->sc->n_lits};
    for (const cJSON *v = e ? e->child : k1; v; v = e ? v->next : NULL) {
        if (!value_has_type(v, types))
            continue; /* the instance must match both */
        uint16_t id;
        int rc = add_lit(c, path, v, NULL, &id);
        if (rc < 0)
            return rc;
        const struct pd_schema *sc = c->sc;
        const uint32_t len = sc->lit_off[id + 1] - sc->lit_off[id];
        bool dup = false; /* equal values print the same: keep one */
        for (uint16_t i = nd.lit; i < id && !dup; i++)
            dup = sc->lit_off[i + 1] - sc->lit_off[i] == len &&
                  !memcmp(sc->text + sc->lit_off[i], sc->text + sc->lit_off[id], len);
        if (dup) {
            c->sc->n_lits--;
            c->n_text -= len;
        } else if (++nd.n > PD_SCHEMA_MAX_ENUM) { /* distinct values */
            return refuse(c, path, "\"enum\" of more than %d values", PD_SCHEMA_MAX_ENUM);
        }
    }
    if (!nd.n)
        return refuse(c, path, "no value of \"%s\" has the \"type\"", e ? "enum" : "const");
    return new_node(c, path, &nd, out);
}

/* a non-negative integer keyword into *v (absent: untouched) */
static int count_kw(struct cc *c, const cJSON *js, const char *k, const char *path, uint32_t *v)
{
    const cJSON *x = get(js, k);
    if (!x)
        return 0;
    if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble != floor(x->valuedouble))
        return refuse(c, path, "\"%s\" must be a non-negative integer", k);
    *v = x->valuedouble >= UINT32_MAX ? UINT32_MAX : (uint32_t)x->valuedouble;
    return 0;
}

/* v in units of 1e-18, exactly as written: 1 when |v| is 1e18 or more (*f
 * then the sign's infinity), -EINVAL when it needs more than 18 decimal
 * places */
static int to_fix(double v, pd_fix *f)
{
    char buf[40];
    /* the number the schema's author wrote: 0.1, not 0.1000000000000000055... */
    shortest(fabs(v), true, buf, sizeof(buf));
    const char *dot = strchr(buf, '.');
    const int frac = dot ? (int)(strchr(buf, 'e') - dot - 1) : 0; /* digits after the point */
    long long digits = 0;
    int e = atoi(strchr(buf, 'e') + 1);
    for (const char *p = buf; *p != 'e'; p++)
        if (*p >= '0' && *p <= '9')
            digits = digits * 10 + (*p - '0');
    if (e >= PD_NUM_DIGITS) {
        *f = v < 0 ? -PD_FIX_ONE * PD_FIX_ONE : PD_FIX_ONE * PD_FIX_ONE;
        return 1;
    }
    pd_fix x = digits;
    int sh = e - frac + PD_NUM_DIGITS; /* digits x 10^(e - frac) in units of 10^-18 */
    for (; sh > 0; sh--)
        x *= 10;
    for (; sh < 0; sh++) {
        if (x % 10)
            return -EINVAL;
        x /= 10;
    }
    *f = v < 0 ? -x : x;
    return 0;
}

static pd_fix fix_floor(pd_fix x) /* in units of 1 */
{
    pd_fix q = x / PD_FIX_ONE;
    return (x % PD_FIX_ONE && x < 0) ? q - 1 : q;
}

/* Whether a number of at most PD_NUMBER_DIGITS digits is within nd's
 * bounds: with j integer digits, the rest after the point, of either sign. */
static bool some_number(const struct pd_snode *nd)
{
    for (int neg = 0; neg < 2; neg++) {
        const struct pd_span bd = pd_bounds_of(nd, neg);
        for (uint32_t j = 1; j <= PD_NUMBER_DIGITS; j++) {
            const pd_fix a = j == 1 ? 0 : pd_pow10x(j - 1) * PD_FIX_ONE,
                         b = pd_pow10x(j) * PD_FIX_ONE;
            if (pd_grid_meets(&bd, a, b, pd_pow10x(PD_NUM_DIGITS - (PD_NUMBER_DIGITS - j))))
                return true;
        }
    }
    return false;
}

static int number_node(struct cc *c, const cJSON *js, const char *path, bool integer,
                       uint16_t *out)
{
    struct pd_snode nd = {.kind = integer ? PD_SK_INTEGER : PD_SK_NUMBER};
    const pd_fix inf = PD_FIX_ONE * PD_FIX_ONE;
    pd_fix lo = -inf, hi = inf;
    static const char *const names[4] = {"minimum", "exclusiveMinimum", "maximum",
                                         "exclusiveMaximum"};
    for (int i = 0; i < 4; i++) {
        const cJSON *x = get(js, names[i]);
        pd_fix f;
        if (!x)
            continue;
        if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble))
            return refuse(c, path, "\"%s\" must be a number", names[i]);
        if (to_fix(x->valuedouble, &f) < 0)
            return refuse(c, path, "\"%s\" needs more than %d decimal places", names[i],
                          PD_NUM_DIGITS);
        const bool excl = i & 1;
        nd.bounded = true;
        if (i < 2 && (f > lo || (f == lo && excl)))
            lo = f, nd.lo_x = excl;
        if (i >= 2 && (f < hi || (f == hi && excl)))
            hi = f, nd.hi_x = excl;
    }
    const pd_fix big = PD_FIX_ONE * PD_FIX_ONE - PD_FIX_ONE; /* 18 nines, and a fraction */
    if (lo > big || hi < -big)
        return refuse(c, path, "the bounds leave no number of at most %d digits",
                      PD_NUM_DIGITS);
    nd.lo = lo, nd.hi = hi;
    if (integer) {
        const int64_t lim = 999999999999999999LL;
        pd_fix l = nd.lo_x ? fix_floor(lo) + 1 : -fix_floor(-lo);
        pd_fix h = nd.hi_x ? -fix_floor(-hi) - 1 : fix_floor(hi);
        nd.ilo = l < -lim ? -lim : l > lim ? lim + 1 : (int64_t)l;
        nd.ihi = h > lim ? lim : h < -lim ? -lim - 1 : (int64_t)h;
        if (nd.ilo > nd.ihi)
            return refuse(c, path, "no integer is within the bounds");
    } else if (!some_number(&nd)) {
        return refuse(c, path, "no number of at most %d digits is within the bounds",
                      PD_NUMBER_DIGITS);
    }
    return new_node(c, path, &nd, out);
}

static int object_node(struct cc *c, const cJSON *js, const char *path, uint32_t depth,
                       uint16_t *out)
{
    const cJSON *props = get(js, "properties"), *req = get(js, "required"),
                *add = get(js, "additionalProperties");
    if (add && !cJSON_IsBool(add))
        return refuse(c, path, "\"additionalProperties\" other than true or false is not "
                               "supported");
    if (props && !cJSON_IsObject(props))
        return refuse(c, path, "\"properties\" must be an object");
    if (req && !cJSON_IsArray(req))
        return refuse(c, path, "\"required\" must be an array of property names");
    for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
        if (!cJSON_IsString(r) || !props || !get(props, r->valuestring))
            return refuse(c, path, "\"required\" names %s, which is not in \"properties\"",
                          cJSON_IsString(r) ? "a property" : "a non-string");
    if (!props && !cJSON_IsFalse(add)) {
        *out = PD_SNODE_OBJ_FREE;
        return 0;
    }
    if (depth >= PD_GRAMMAR_MAX_FRAMES)
        return refuse(c, path, "objects and arrays nested more than %d deep",
                      PD_GRAMMAR_MAX_FRAMES);
    const uint32_t n = (uint32_t)cJSON_GetArraySize(props);
    if (n > PD_SCHEMA_MAX_ENUM)
        return refuse(c, path, "more than %d properties", PD_SCHEMA_MAX_ENUM);
    struct pd_schema *sc = c->sc;
    /* the keys' texts first, contiguous; then the properties' schemas, whose
     * own keys come after */
    struct pd_snode nd = {.kind = PD_SK_OBJECT, .lit = sc->n_lits, .n = (uint16_t)n};
    uint16_t id;
    for (const cJSON *p = props ? props->child : NULL; p; p = p->next) {
        int rc = add_lit(c, path, NULL, p->string, &id);
        if (rc < 0)
            return rc;
    }
    uint16_t node_of[PD_SCHEMA_MAX_ENUM];
    bool required[PD_SCHEMA_MAX_ENUM];
    uint32_t i = 0;
    for (const cJSON *p = props ? props->child : NULL; p; p = p->next, i++) {
        char sub[256];
        snprintf(sub, sizeof(sub), "%.120s.properties.%.100s", path, p->string);
        int rc = node(c, p, sub, depth + 1, &node_of[i]);
        if (rc < 0)
            return rc;
        required[i] = false;
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
            required[i] |= !strcmp(r->valuestring, p->string);
    }
    if (grow((void **)&sc->props, &c->cap_props, sc->n_props + n, sizeof(*sc->props)) < 0)
        return nomem(c);
    nd.a = sc->n_props;
    for (i = 0; i < n; i++) { /* one property's value is read at a time */
        sc->props[sc->n_props++] = (struct pd_sprop){node_of[i], required[i]};
        if (sc->nodes[node_of[i]].width > nd.width)
            nd.width = sc->nodes[node_of[i]].width;
    }
    return new_node(c, path, &nd, out);
}

static int typed_node(struct cc *c, const cJSON *js, const char *path, uint32_t depth,
                      unsigned type, uint16_t *out)
{
    struct pd_snode nd = {0};
    int rc = 0;
    char sub[256];
    switch (type) {
    case T_OBJECT: return object_node(c, js, path, depth, out);
    case T_ARRAY: {
        const cJSON *items = get(js, "items");
        nd.kind = PD_SK_ARRAY;
        nd.a = PD_SNODE_ANY;
        nd.max = UINT32_MAX;
        if ((rc = count_kw(c, js, "minItems", path, &nd.min)) < 0 ||
            (rc = count_kw(c, js, "maxItems", path, &nd.max)) < 0)
            return rc;
        if (nd.min > nd.max || nd.min > UINT16_MAX)
            return refuse(c, path, "\"minItems\" above \"maxItems\" or above %d", UINT16_MAX);
        if (depth >= PD_GRAMMAR_MAX_FRAMES)
            return refuse(c, path, "objects and arrays nested more than %d deep",
                          PD_GRAMMAR_MAX_FRAMES);
        snprintf(sub, sizeof(sub), "%.200s.items", path);
        if (items && (rc = node(c, items, sub, depth + 1, &nd.a)) < 0)
            return rc;
        nd.width = c->sc->nodes[nd.a].width; /* one item at a time */
        return new_node(c, path, &nd, out);
    }
    case T_STRING:
        nd.kind = PD_SK_STRING;
        nd.max = UINT32_MAX;
        if ((rc = count_kw(c, js, "minLength", path, &nd.min)) < 0 ||
            (rc = count_kw(c, js, "maxLength", path, &nd.max)) < 0)
            return rc;
        if (nd.min > nd.max)
            return refuse(c, path, "\"minLength\" above \"maxLength\"");
        return new_node(c, path, &nd, out);
    case T_NUMBER:
    case T_INTEGER: return number_node(c, js, path, type == T_INTEGER, out);
    case T_BOOLEAN:
    case T_NULL:
        nd.kind = PD_SK_LIT;
        nd.lit = type == T_BOOLEAN ? PD_SLIT_TRUE : PD_SLIT_NULL;
        nd.n = type == T_BOOLEAN ? 2 : 1;
        return new_node(c, path, &nd, out);
    default: return refuse(c, path, "bad type");
    }
}

static int node(struct cc *c, const cJSON *js, const char *path, uint32_t depth, uint16_t *out)
{
    if (cJSON_IsTrue(js)) {
        *out = PD_SNODE_ANY;
        return 0;
    }
    if (!cJSON_IsObject(js))
        return refuse(c, path, "a schema must be an object (or true)");
    unsigned cats = 0;
    for (const cJSON *k = js->child; k; k = k->next) {
        const struct kw *w = keyword(k->string);
        if (!w && !is_annotation(k->string))
            return refuse(c, path, "\"%.60s\" is not supported", k->string);
        cats |= w ? (unsigned)w->cat : 0u;
    }
    if (get(js, "$ref"))
        return ref_node(c, js, path, depth, out);
    if (get(js, "anyOf"))
        return anyof_node(c, js, path, depth, out);
    if (get(js, "enum") || get(js, "const"))
        return enum_node(c, js, path, out);
    unsigned types = 0;
    const cJSON *t = get(js, "type");
    if (t) {
        int rc = parse_types(c, t, path, &types);
        if (rc < 0)
            return rc;
    } else if (!cats) {
        *out = PD_SNODE_ANY;
        return 0;
    } else if (cats & (cats - 1)) {
        return refuse(c, path, "no \"type\", and keywords of several types");
    } else {
        types = cats; /* C_* and T_* agree on object, array, string and number */
    }
    if (types & T_NUMBER)
        types &= ~(unsigned)T_INTEGER; /* every integer is a number */
    uint16_t alt[7];
    uint32_t n = 0;
    for (unsigned b = 1; b <= T_NULL; b <<= 1)
        if (types & b) {
            int rc = typed_node(c, js, path, depth, b, &alt[n]);
            if (rc < 0)
                return rc;
            n++;
        }
    return anyof_of(c, path, alt, n, out);
}

/* The content's digest, field by field (a node's padding is not content). */
static void digest(struct pd_schema *sc)
{
    crypto_generichash_state h;
#define ADD(x) crypto_generichash_update(&h, (const unsigned char *)&(x), sizeof(x))
    crypto_generichash_init(&h, NULL, 0, PD_SCHEMA_DIGEST);
    ADD(sc->root);
    ADD(sc->n_nodes);
    ADD(sc->n_props);
    ADD(sc->n_alts);
    ADD(sc->n_lits);
    for (uint32_t i = 0; i < sc->n_nodes; i++) {
        const struct pd_snode *n = &sc->nodes[i];
        ADD(n->kind), ADD(n->bounded), ADD(n->lo_x), ADD(n->hi_x), ADD(n->a), ADD(n->n);
        ADD(n->lit), ADD(n->min), ADD(n->max), ADD(n->ilo), ADD(n->ihi), ADD(n->lo), ADD(n->hi);
    }
    for (uint32_t i = 0; i < sc->n_props; i++)
        ADD(sc->props[i].node), ADD(sc->props[i].required);
    for (uint32_t i = 0; i < sc->n_alts; i++)
        ADD(sc->alts[i]);
    for (uint32_t i = 0; i <= sc->n_lits; i++)
        ADD(sc->lit_off[i]);
#undef ADD
    crypto_generichash_update(&h, sc->text, sc->lit_off[sc->n_lits]);
    crypto_generichash_final(&h, sc->digest, PD_SCHEMA_DIGEST);
    if (sodium_is_zero(sc->digest, PD_SCHEMA_DIGEST)) /* json_object's; never in practice */
        sc->digest[0] = 1;
}

int pd_schema_compile(const cJSON *js, struct pd_schema **out, char *err, size_t errlen)
{
    return pd_schema_compile_root(js, false, out, err, errlen);
}

int pd_schema_compile_root(const cJSON *js, bool array_root, struct pd_schema **out, char *err,
                           size_t errlen)
{
    struct cc c = {.doc = js, .err = err, .errlen = errlen};
    struct pd_schema *sc = c.sc = calloc(1, sizeof(*sc));
    if (!sc)
        return pd_errf(err, errlen, -ENOMEM, "json_schema: out of memory");
    atomic_init(&sc->refs, 1);
    uint16_t id;
    int rc = grow((void **)&sc->lit_off, &c.cap_lits, 1, sizeof(*sc->lit_off)) < 0 ? nomem(&c) : 0;
    if (rc == 0) {
        sc->lit_off[0] = 0;
        /* the fixed nodes and literals every schema starts with */
        for (uint32_t i = 0; i < 2 && rc == 0; i++)
            rc = new_node(&c, "$", &any_nodes[i], &id);
        for (uint32_t i = 0; i < 3 && rc == 0; i++) {
            cJSON *v = i == 2 ? cJSON_CreateNull() : cJSON_CreateBool(i == 0);
            rc = v ? add_lit(&c, "$", v, NULL, &id) : nomem(&c);
            cJSON_Delete(v);
        }
    }
    if (rc == 0)
        rc = node(&c, js, "$", 0, &sc->root);
    if (rc == 0) {
        const uint8_t k = sc->nodes[sc->root].kind;
        if (k != PD_SK_OBJECT && k != PD_SK_OBJ_FREE && !(array_root && k == PD_SK_ARRAY))
            rc = refuse(&c, "$", "the root must be an object (\"type\": \"object\")");
    }
    if (rc < 0) {
        pd_schema_unref(sc);
        return rc;
    }
    digest(sc);
    *out = sc;
    return 0;
}

int pd_schema_compile_text(const char *text, size_t len, struct pd_schema **out, char *err,
                           size_t errlen)
{
    cJSON *js = cJSON_ParseWithLength(text, len);
    if (!js)
        return pd_errf(err, errlen, -EINVAL, "json_schema: not JSON");
    int rc = pd_schema_compile(js, out, err, errlen);
    cJSON_Delete(js);
    return rc;
}
