/* common/text/schema and the grammar's schema mode: refusals, instances byte by
 * byte, bounds exhaustively, string lengths, anyOf readings; masks against a
 * brute force over the default model's vocabulary, the mask cache, random
 * walks checked by a JSON Schema validator written here (these skip without
 * the model). Schemas and documents use ' for " (dq), lists split by |. */
#include "grammar.h"
#include "schema.h"
#include "tok_fixture.h"

#include <cjson/cJSON.h>
#include <errno.h>

#define OBJ "{'type':'object','properties':"

/* ---- helpers ---- */

/* s with every ' made " (caller frees) */
static char *dq(const char *s)
{
    const size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (!d)
        PD_TEST_FAIL_("out of memory");
    for (size_t i = 0; i <= n; i++)
        d[i] = s[i] == '\'' ? '"' : s[i];
    return d;
}

/* b printed for a failure message (escaped, cut) */
static const char *show(const uint8_t *b, size_t n)
{
    static char out[400];
    size_t k = 0;
    out[0] = 0;
    for (size_t i = 0; i < n && k + 8 < sizeof(out); i++)
        k += (size_t)snprintf(out + k, sizeof(out) - k,
                              b[i] >= 0x20 && b[i] < 0x7f ? "%c" : "\\x%02x", b[i]);
    return out;
}

static int compile(const char *q, struct pd_schema **sc, char *err, size_t errlen)
{
    char *t = dq(q);
    *sc = NULL;
    const int rc = pd_schema_compile_text(t, strlen(t), sc, err, errlen);
    free(t);
    return rc;
}

static struct pd_schema *compile_q(const char *q)
{
    char err[512] = "";
    struct pd_schema *sc;
    const int rc = compile(q, &sc, err, sizeof(err));
    if (rc != 0 || !sc)
        PD_TEST_FAIL_("compile %d: %s", rc, err);
    return sc;
}

/* q is refused with -EINVAL, the error naming what (' for ") and where */
static void refused_q(const char *q, const char *what, const char *where)
{
    char *w = dq(what), err[512] = "";
    struct pd_schema *sc;
    const int rc = compile(q, &sc, err, sizeof(err));
    const bool named = strstr(err, w) && strstr(err, where);
    free(w);
    if (rc != -EINVAL || sc)
        PD_TEST_FAIL_("%.200s: rc %d (%s), want -EINVAL", q, rc, err);
    if (!named)
        PD_TEST_FAIL_("%.200s: \"%s\" does not name %s at %s", q, err, what, where);
}

/* Some byte other than whitespace goes (where only whitespace goes, 16
 * bytes of it on nothing does: a dead end too) */
static bool some_byte_goes(const struct pd_gstate *s)
{
    struct pd_gstate t = *s; /* a refused byte leaves it as it was */
    for (unsigned c = 1; c < 256; c++)
        if (!strchr(" \t\n\r", (int)c) && pd_gstate_feed(&t, &(uint8_t){(uint8_t)c}, 1) == 0)
            return true;
    return false;
}

/* b fed one byte at a time: -1 when every byte goes and the end is done, else
 * the first refused byte (which leaves the state as it was), or n. With
 * check: no strict prefix is done, none is a dead end (no byte goes). */
static long feed(const struct pd_schema *sc, const uint8_t *b, size_t n, bool check)
{
    struct pd_gstate s, before;
    pd_gstate_init(&s, sc);
    for (size_t i = 0; i < n; i++) {
        if (check && (pd_gstate_done(&s) || !some_byte_goes(&s)))
            PD_TEST_FAIL_("done or stuck after %zu bytes of %s", i, show(b, n));
        before = s;
        if (pd_gstate_feed(&s, b + i, 1) != 0) {
            CHECK(memcmp(&before, &s, sizeof(s)) == 0);
            return (long)i;
        }
        CHECK(s.n >= 1 && s.n <= PD_GRAMMAR_MAX_ALTS);
    }
    return pd_gstate_done(&s) ? -1 : (long)n;
}

static void validates(const char *schema_q, const uint8_t *b, size_t n);

/* Each |-separated document of q accepted (ok: checked as feed does, and an
 * instance of schema_q by the validator when given) or refused */
static void docs_q(const struct pd_schema *sc, const char *schema_q, const char *q, bool ok)
{
    char *d = dq(q);
    for (char *p = d, *e; p; p = e ? e + 1 : NULL) {
        e = strchr(p, '|');
        const size_t n = e ? (size_t)(e - p) : strlen(p);
        const long v = feed(sc, (const uint8_t *)p, n, ok);
        if ((v == -1) != ok)
            PD_TEST_FAIL_("%s: %s (byte %ld)", show((const uint8_t *)p, n),
                          ok ? "refused" : "accepted", v);
        if (ok && schema_q)
            validates(schema_q, (const uint8_t *)p, n);
    }
    free(d);
}

static struct pd_gstate state_after(const struct pd_schema *sc, const char *q)
{
    struct pd_gstate s;
    char *d = dq(q);
    pd_gstate_init(&s, sc);
    const int rc = pd_gstate_feed(&s, (const uint8_t *)d, strlen(d));
    free(d);
    if (rc != 0)
        PD_TEST_FAIL_("refused: %s", q);
    return s;
}

/* ---- an independent validator: JSON Schema over cJSON; numbers exact (in
 * 1e-18), from their text in the document, a bound's from its shortest ---- */

typedef __int128 fix;

static const cJSON *v_root;
static char num_text[512][72], v_why[300];
static size_t n_num;

/* false: not a multiple of 1e-18, or too large */
static bool fix_of(const char *s, fix *v)
{
    fix x = 0;
    int scale = 0, digits = 0;
    bool frac = false;
    const bool neg = *s == '-';
    for (s += neg; *s && *s != 'e' && *s != 'E'; s++)
        if (*s == '.')
            frac = true;
        else if (++digits > 36)
            return false;
        else
            x = x * 10 + (*s - '0'), scale += frac;
    for (int e = 18 - scale + (*s ? atoi(s + 1) : 0); e; e += e < 0 ? 1 : -1) {
        if ((e > 0 && x > ((fix)1 << 122)) || (e < 0 && x % 10))
            return false;
        x = e > 0 ? x * 10 : x / 10;
    }
    *v = neg ? -x : x;
    return true;
}

static bool v_fail(const char *why, const char *s)
{
    snprintf(v_why, sizeof(v_why), "%s %.200s", why, s ? s : "");
    return false;
}

/* each number's text (its valuestring, which cJSON frees), in document order */
static void bind(cJSON *v, size_t *i)
{
    if (cJSON_IsNumber(v) && *i < n_num)
        v->valuestring = strdup(num_text[(*i)++]);
    for (cJSON *c = v->child; c; c = c->next)
        bind(c, i);
}

static bool numbers_of(const uint8_t *b, size_t n, cJSON *doc)
{
    bool str = false;
    size_t k = 0;
    n_num = 0;
    for (size_t i = 0; i < n; i++) {
        if (str || b[i] == '"') {
            if (str && b[i] == '\\')
                i++;
            else
                str = !str || b[i] != '"';
        } else if (b[i] == '-' || (b[i] >= '0' && b[i] <= '9')) {
            size_t j = i;
            while (j < n && b[j] && strchr("+-.eE0123456789", b[j]))
                j++;
            if (n_num == 512 || j - i >= 72)
                return false;
            memcpy(num_text[n_num], b + i, j - i);
            num_text[n_num++][j - i] = 0;
            i = j - 1;
        }
    }
    bind(doc, &k);
    return k == n_num;
}

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
}

static bool v_type(const cJSON *t, const cJSON *v)
{
    const char *s = cJSON_IsString(t) ? t->valuestring : "";
    fix x;
    if (!strcmp(s, "integer"))
        return cJSON_IsNumber(v) &&
            (!strpbrk(v->valuestring, ".eE") ||
             (fix_of(v->valuestring, &x) && x % (fix)1000000000000000000LL == 0));
    return (!strcmp(s, "object") && cJSON_IsObject(v)) ||
        (!strcmp(s, "array") && cJSON_IsArray(v)) || (!strcmp(s, "string") && cJSON_IsString(v)) ||
        (!strcmp(s, "number") && cJSON_IsNumber(v)) || (!strcmp(s, "boolean") && cJSON_IsBool(v)) ||
        (!strcmp(s, "null") && cJSON_IsNull(v));
}

static bool v_count(const cJSON *s, const char *lo, const char *hi, double n)
{
    const cJSON *a = get(s, lo), *b = get(s, hi);
    return ((!a || n >= a->valuedouble) && (!b || n <= b->valuedouble)) || v_fail(lo, hi);
}

static bool v_check(const cJSON *s, const cJSON *v)
{
    static const char *const bn[4] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"};
    const cJSON *k;
    bool any = false;
    if (!s || cJSON_IsBool(s))
        return cJSON_IsTrue(s) || v_fail("the false schema, or no schema", NULL);
    if ((k = get(s, "$ref"))) { /* #/$defs/NAME or #/definitions/NAME */
        const bool defs = !strncmp(k->valuestring, "#/$defs/", 8);
        return v_check(
            get(get(v_root, defs ? "$defs" : "definitions"), k->valuestring + 14 - 6 * defs), v);
    }
    for (const cJSON *a = (k = get(s, "anyOf")) ? k->child : NULL; a && !any; a = a->next)
        any = v_check(a, v);
    if (k && !any)
        return v_fail("no anyOf alternative", NULL);
    if ((k = get(s, "const")) && !cJSON_Compare(k, v, true))
        return v_fail("not the const", NULL);
    any = false;
    for (const cJSON *e = (k = get(s, "enum")) ? k->child : NULL; e && !any; e = e->next)
        any = cJSON_Compare(e, v, true);
    if (k && !any)
        return v_fail("not in the enum", NULL);
    any = cJSON_IsString(k = get(s, "type")) && v_type(k, v);
    for (const cJSON *t = cJSON_IsArray(k) ? k->child : NULL; t && !any; t = t->next)
        any = v_type(t, v);
    if (k && !any)
        return v_fail("not of the type", NULL);
    if (cJSON_IsObject(v)) {
        const cJSON *props = get(s, "properties"), *add = get(s, "additionalProperties"), *p;
        int last = -1, i;
        for (const cJSON *c = v->child; c; c = c->next, last = p ? i : last) {
            for (i = 0, p = props ? props->child : NULL; p && strcmp(p->string, c->string); i++)
                p = p->next;
            /* no other property when there are "properties": the matcher's
             * rule (schema.h), stricter than JSON Schema's */
            if (!p && (props || cJSON_IsFalse(add)))
                return v_fail("a property not in the schema:", c->string);
            if (p && (i <= last || !v_check(p, c)))
                return i <= last ? v_fail("out of the schema's order:", c->string) : false;
        }
        for (const cJSON *r = (k = get(s, "required")) ? k->child : NULL; r; r = r->next)
            if (!cJSON_GetObjectItemCaseSensitive(v, r->valuestring))
                return v_fail("required property missing:", r->valuestring);
    } else if (cJSON_IsArray(v)) {
        for (const cJSON *c = v->child; c && (k = get(s, "items")); c = c->next)
            if (!v_check(k, c))
                return false;
        return v_count(s, "minItems", "maxItems", cJSON_GetArraySize(v));
    } else if (cJSON_IsString(v)) { /* code points */
        double n = 0;
        for (const char *p = v->valuestring; *p; p++)
            n += ((uint8_t)*p & 0xC0) != 0x80;
        return v_count(s, "minLength", "maxLength", n);
    } else if (cJSON_IsNumber(v)) {
        for (int i = 0; i < 4; i++) {
            char b[40] = "0";
            fix x, lim;
            if (!cJSON_IsNumber(k = get(s, bn[i])))
                continue;
            for (int p = 1; p <= 17 && strtod(b, NULL) != k->valuedouble; p++) /* shortest */
                snprintf(b, sizeof(b), "%.*g", p, k->valuedouble);
            if (!fix_of(v->valuestring, &x) || !fix_of(b, &lim))
                return v_fail("unrepresentable", v->valuestring);
            if (i == 0 ? x < lim : i == 1 ? x <= lim : i == 2 ? x > lim : x >= lim)
                return v_fail(bn[i], v->valuestring);
        }
    }
    return true;
}

/* b is an instance of the schema text q, by the validator above */
static void validates(const char *q, const uint8_t *b, size_t n)
{
    char *t = dq(q);
    cJSON *schema = cJSON_Parse(t), *doc = cJSON_ParseWithLength((const char *)b, n);
    free(t);
    CHECK(schema != NULL);
    if (!doc)
        PD_TEST_FAIL_("cJSON does not parse %s", show(b, n));
    v_root = schema;
    snprintf(v_why, sizeof(v_why), "numbers");
    const bool ok = numbers_of(b, n, doc) && v_check(schema, doc);
    cJSON_Delete(doc);
    cJSON_Delete(schema);
    if (!ok)
        PD_TEST_FAIL_("not an instance (%s): %s", v_why, show(b, n));
}

/* ---- compiling ---- */

/* What is outside the subset, or leaves nothing to write, or is malformed
 * is refused, the error naming the keyword and the place */
static void schema_refuses_naming_keyword_and_path(void)
{
    static const char *const c[][2] = {
        {"{'type':'string','format':'date'}", "'format' is not supported"},
        {"{'type':'string','pattern':'^a'}", "'pattern' is not supported"},
        {"{'oneOf':[{'type':'string'}]}", "'oneOf' is not supported"},
        {"{'allOf':[{'type':'string'}]}", "'allOf' is not supported"},
        {"{'not':{'type':'string'}}", "'not' is not supported"},
        {"{'if':{'type':'string'}}", "'if' is not supported"},
        {"{'type':'array','prefixItems':[true]}", "'prefixItems' is not supported"},
        {"{'type':'array','uniqueItems':true}", "'uniqueItems' is not supported"},
        {"{'type':'object','minProperties':1}", "'minProperties' is not supported"},
        {"{'type':'object','patternProperties':{'^a':{}}}", "'patternProperties' is not supported"},
        {"{'type':'object','additionalProperties':{}}", "'additionalProperties' other than true"},
        {"{'$ref':'#/$defs/A','type':'string'}", "'type' beside '$ref'"},
        {"{'anyOf':[{'type':'string'}],'minLength':1}", "'minLength' beside 'anyOf'"},
        {"{'type':'string','enum':[1,2,null]}", "no value of 'enum' has the 'type'"},
        {"{'type':'integer','const':1.5}", "no value of 'const' has the 'type'"},
        {"{'type':'string','minLength':3,'maxLength':2}", "'minLength' above 'maxLength'"},
        {"{'type':'array','minItems':3,'maxItems':2}", "'minItems' above 'maxItems'"},
        {"{'type':'integer','minimum':1.2,'maximum':1.8}", "no integer is within the bounds"},
        {"{'type':'integer','exclusiveMinimum':1,'exclusiveMaximum':2}", "no integer is within"},
        {"{'type':'number','exclusiveMinimum':1,'maximum':1}", "is within the bounds"},
        {"{'type':'number','minimum':1e19}", "leave no number of at most 18 digits"},
        {"{'type':'number','minimum':1e-19}", "'minimum' needs more than 18 decimal places"},
        {"{'type':'number','exclusiveMinimum':true,'minimum':0}", "'exclusiveMinimum' must be a"},
        {OBJ "{'a':{}},'required':['b']}", "'required' names a property"},
        {"{'minimum':1,'minLength':1}", "no 'type', and keywords of several types"},
        {"false", "a schema must be an object"},
    };
    char q[512];
    for (size_t i = 0; i < sizeof(c) / sizeof(*c); i++) {
        snprintf(q, sizeof(q), "{'$defs':{'A':{}},'type':'object','properties':{'p':%s}}", c[i][0]);
        refused_q(q, c[i][1], "$.properties.p:");
    }
    /* the place is the whole path, through anyOf and items; the root is $ */
    refused_q(OBJ "{'v':{'anyOf':[{'type':'null'},{'type':'array','items':" OBJ
                  "{'when':{'type':'string','format':'date-time'}}}}]}}}",
              "'format' is not supported", "$.properties.v.anyOf[1].items.properties.when:");
    refused_q(OBJ "{'p':{'type':'array','items':[{'type':'string'}]}}}",
              "a schema must be an object", "$.properties.p.items:");
    refused_q("{'type':'object','patternProperties':{'^a':{}}}", "'patternProperties'", "$:");
}

static void schema_refuses_refs_it_cannot_follow(void)
{
    char bad[] = "#/components/schemas/A|http://x.org/s.json|#/$defs/A/properties/b|#/$defs/|A",
         q[256];
    refused_q("{'$defs':{'N':" OBJ "{'next':{'$ref':'#/$defs/N'}}}},"
              "'type':'object','properties':{'n':{'$ref':'#/$defs/N'}}}",
              "'$ref' #/$defs/N is recursive", "#/$defs/N.properties.next:");
    refused_q(OBJ "{'x':{'$ref':'#/$defs/Nope'}}}", "'$ref' #/$defs/Nope is not in the document",
              "$.properties.x:");
    refused_q("{'definitions':{'A':{}},'type':'object','properties':{'x':{'$ref':'#/$defs/A'}}}",
              "not in the document", "$.properties.x:");
    for (char *r = strtok(bad, "|"); r; r = strtok(NULL, "|")) {
        snprintf(q, sizeof(q),
                 "{'$defs':{'A':{}},'type':'object','properties':{'x':{'$ref':'%s'}}}", r);
        refused_q(q, "'$ref' must name '#/$defs/NAME' or '#/definitions/NAME'", "$.properties.x:");
    }
}

/* The root must be an object: not a string, an array, any value, a const
 * object, or an anyOf (even of objects, even a type list with object) */
static void schema_refuses_a_root_that_is_not_an_object(void)
{
    char roots[] = "{'type':'string'}|{'type':'array'}|{}|true|{'enum':[{'a':1}]}|{'anyOf':[{'type'"
                   ":'object'}," OBJ "{'a':{}}}]}|{'type':['object','null']}|"
                   "{'$ref':'#/$defs/S','$defs':{'S':{'type':'string'}}}";
    for (char *r = strtok(roots, "|"); r; r = strtok(NULL, "|"))
        refused_q(r, "the root must be an object", "$:");
    refused_q("'object'", "a schema must be an object", "$:");
    refused_q("false", "a schema must be an object", "$:");
}

/* head, then k copies of item (printf'd with the copy's number) separated
 * by sep, then tail (caller frees) */
static char *repeat(const char *head, const char *item, int k, const char *sep, const char *tail)
{
    size_t cap = strlen(head) + strlen(tail) + (size_t)k * (strlen(item) + 16) + 1;
    char *q = malloc(cap);
    CHECK(q != NULL);
    size_t n = (size_t)snprintf(q, cap, "%s", head);
    for (int i = 0; i < k; i++) {
        n += (size_t)snprintf(q + n, cap - n, "%s", i ? sep : "");
        n += (size_t)snprintf(q + n, cap - n, item, i, i);
    }
    snprintf(q + n, cap - n, "%s", tail);
    return q;
}

/* ok copies compile (and the documents docs go), ok + 1 are refused */
static void cap_edge(const char *head, const char *item, const char *sep, int ok, const char *tail,
                     const char *msg, const char *docs)
{
    char *q = repeat(head, item, ok, sep, tail);
    struct pd_schema *sc = compile_q(q);
    docs_q(sc, NULL, docs, true);
    pd_schema_unref(sc);
    free(q);
    q = repeat(head, item, ok + 1, sep, tail);
    refused_q(q, msg, "");
    free(q);
}

/* Each cap takes its limit and refuses one more */
static void schema_caps_at_their_edges(void)
{
    cap_edge(OBJ "{", "'p%d':{'const':%d}", ",", 64, "}}", "more than 64 properties",
             "{'p63':63}|{'p0':0,'p63':63}");
    cap_edge(OBJ "{'e':{'enum':[0,1,", "%d", ",", 64, "]}}}", "'enum' of more than 64 values",
             "{'e':63}|{'e':0}");
    cap_edge(OBJ "{'a':{'anyOf':[", "{'const':%d}", ",", 8, "]}}}",
             "'anyOf' of more than 8 alternatives", "{'a':7}");
    /* nested alternatives are the outer one's: 4 + 5 */
    refused_q(OBJ "{'a':{'anyOf':[{'anyOf':[{'const':1},{'const':2},{'const':3},{'const':4}]},"
                  "{'anyOf':[{'const':5},{'const':6},{'const':7},{'const':8},{'const':9}]}]}}}",
              "'anyOf' of more than 8 alternatives", "$.properties.a:");
    /* 12 typed objects nested (the root is one), an instance through all */
    for (int k = 11; k <= 12; k++) {
        char *o = repeat("", OBJ "{'a':", k, "", OBJ "{'z':{'type':'integer'}}}"),
             *q = repeat(o, "},'required':['a']}", k, "", ""),
             *d = repeat("", "{'a':", k, "", "{'z':1}"), *doc = repeat(d, "}", k, "", "");
        struct pd_schema *sc = k == 11 ? compile_q(q) : NULL;
        if (sc)
            docs_q(sc, NULL, doc, true);
        else
            refused_q(q, "objects and arrays nested more than 12 deep", "");
        pd_schema_unref(sc);
        free(o), free(q), free(d), free(doc);
    }
    /* 1024 nodes: 2 fixed, the root, 31 copies of a $def of 32 (an object
     * of 31 strings), then 29 strings; one string more is 1025 */
    char *def = repeat("{'$defs':{'D':" OBJ "{", "'p%d':{'type':'string'}", 31, ",",
                       "}}},'type':'object','properties':{");
    char *refs = repeat(def, "'r%d':{'$ref':'#/$defs/D'}", 31, ",", ",");
    cap_edge(refs, "'s%d':{'type':'string'}", ",", 29, "}}", "more than 1024 schema nodes", "{}");
    free(def), free(refs);
    /* 65536 bytes of literals: true, false, null (13), the key 'e' (3), and
     * a string of 65518 with its quotes */
    cap_edge(OBJ "{'e':{'const':'", "x", "", 65518, "'}}}",
             "more than 65536 bytes of keys and values", "{}");
}

/* The enum cap counts distinct values (equal ones print the same and are
 * kept once), wherever the duplicate stands */
static void schema_enum_cap_counts_distinct_values(void)
{
    char *q = repeat(OBJ "{'e':{'enum':[", "%d", 64, ",", ",0]}}}");
    pd_schema_unref(compile_q(q));
    free(q);
}

/* ---- instances ---- */

#define PERSON                                                                                     \
    "{'$schema':'https://json-schema.org/draft/2020-12/schema','$id':'p','$comment':'c',"          \
    "'$defs':{'Address':{'title':'Address','type':'object',"                                       \
    "'properties':{'street':{'type':'string','maxLength':10,'examples':['x']},"                    \
    "'zip':{'type':'string','minLength':5,'maxLength':5}},'required':['street','zip']}},"          \
    "'title':'Person','type':'object','properties':{'name':{'type':'string','maxLength':12,"       \
    "'description':'full name'},'age':{'type':'integer','minimum':0,'maximum':150,"                \
    "'deprecated':true},'email':{'anyOf':[{'type':'string','maxLength':10},{'type':'null'}],"      \
    "'default':null,'readOnly':true},'address':{'$ref':'#/$defs/Address','writeOnly':false},"      \
    "'tags':{'type':'array','items':{'type':'string','maxLength':6},'maxItems':3}},"               \
    "'required':['name','age']}"
#define ENUMS                                                                                      \
    "{'type':'object','properties':{'kind':{'const':'point'},'color':{'enum':['red','green',"      \
    "null,1,2.5,true,[1,2],{'a':'b'},'r\\u00e9d']},'flag':{'type':'boolean'}},"                    \
    "'required':['kind','color']}"
#define ARRAYS                                                                                     \
    "{'type':'object','properties':{'pts':{'type':'array','items':{'type':'array',"                \
    "'items':{'type':'number','minimum':-1,'maximum':1},'minItems':2,'maxItems':2},"               \
    "'minItems':1}},'required':['pts'],'additionalProperties':false}"
#define SHAPES                                                                                     \
    "{'type':'object','properties':{'shape':{'anyOf':[" OBJ "{'kind':{'const':'circle'},"          \
    "'r':{'type':'number','exclusiveMinimum':0}},'required':['kind','r']}," OBJ "{'kind':"         \
    "{'const':'rect'},'w':{'type':'integer','minimum':1},'h':{'type':'integer','minimum':1}},"     \
    "'required':['kind','w','h']}]}},'required':['shape']}"
#define DEFS                                                                                       \
    "{'definitions':{'P':" OBJ "{'x':{'type':'integer','minimum':1,'maximum':3},"                  \
    "'y':{'type':'integer','minimum':1,'maximum':3}},'required':['y']}},'type':'object',"          \
    "'properties':{'a':{'$ref':'#/definitions/P'},'b':{'type':'string','maxLength':2},"            \
    "'c':{'$ref':'#/definitions/P'},'d':{'const':false}},'required':['c']}"
#define ROOTREF                                                                                    \
    "{'$ref':'#/$defs/R','$defs':{'R':" OBJ "{'a':{'$ref':'#/$defs/A'}}},'A':{'type':'array',"     \
    "'items':{'$ref':'#/$defs/B'},'maxItems':2},'B':{'enum':[1,2]}}}"

static const struct instances {
    const char *schema, *valid, *invalid;
} corpus[] = {
    {PERSON,
     "{'name':'Ann','age':30,'address':{'street':'Main St','zip':'12345'}}|{ 'name' : 'Ann' , "
     "'age' : 0 , 'email' : null , 'address' : { 'street' : '' , 'zip' : '00000' } , 'tags' : [ ] "
     "}|\n\t{\n  'name': 'B\xc3\xa9"
     "a \\'x\\'',\n  'age': 150,\n  'email': 'b@x.org',\n  'address': "
     "{'street': 'caf\xc3\xa9', 'zip': '9\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z'},\n  'tags': ['a',"
     " 'b', 'c']\n}",
     /* order, required, extra, bounds, types, zeros, \u when bounded, the end */
     "{'age':3,'name':'A'}|{'name':'A'}|{'name':'A','age':3,'nick':'x'}|{'name':'A','age':151}|{'n"
     "ame':'A','age':-1}|{'name':'A','age':1.5}|{'name':'A','age':1e2}|{'name':'A','age':030}|{'n"
     "ame':'A','age':3,'address':{'zip':'12345'}}|{'name':'A','age':3,'address':{'street':'s','zi"
     "p':'1234'}}|{'name':'A','age':3,'address':{'street':'s','zip':'123456'}}|{'name':'A','age':"
     "3,'address':{'street':'s','zip':'1234\\u0035'}}|{'name':'A','age':3,'tags':['a','b','c','d"
     "']}|{'name':'A','age':3,'email':5}|{'name':'A','age':3} |{'name':'A','age':3,}|{'name':'A',"
     "'age':3|{'name':'A','age':3,'address':{'street':'s','zip':'12345'},'tags':['abcdefg']}"},
    {ENUMS,
     "{'kind':'point','color':'red'}|{'kind':'point','color':null,'flag':false}|{'kind':'point','c"
     "olor':2.5}|{'kind':'point','color':[1,2]}|{'kind':'point','color':{'a':'b'}}|{'kind':'point'"
     ",'color':1,'flag':true}|{'kind':'point','color':'r\xc3\xa9"
     "d'}|{ 'kind' : 'point' , 'color' : true }",
     "{'kind':'point','color':'blue'}|{'kind':'point','color':[1, 2]}|{'kind':'point','color':2.50"
     "}|{'kind':'point','color':1.0}|{'kind':'point','color':12}|{'kind':'Point','color':1}|{'kind"
     "':'point','color':1,'flag':1}|{'kind':'point','color':'r\\u00e9d'}|{'kind':'point','color':{"
     " 'a':'b'}}|{'color':1}|{'kind':'point','color':false}"},
    {"{'type':'object','properties':{'a':{'type':['string','null']},'b':{'type':['integer',"
     "'boolean']},'c':{'type':'number'},'d':{'type':'integer'}},'required':['a']}",
     "{'a':null}|{'a':'x','b':true,'c':-1.5e+3}|{'a':'','c':0,'d':-12345678901234567890}|{'a':'\\u0"
     "0e9\\n','b':-7,'c':1E-2}|{'a':null,'c':0.0e0}",
     "{'a':1}|{'b':1}|{'a':null,'b':1.5}|{'a':null,'c':01}|{'a':null,'d':1.0}|{'a':null,'d':1e3}|{"
     "'a':null,'c':.5}|{'a':null,'c':1.}|{'a':null,'c':-}|{'a':nul}"},
    {ARRAYS, "{'pts':[[0,1]]}|{'pts':[[0.5,-1],[1,-0.25],[ -0.0 , 1.000 ]]}",
     "{'pts':[]}|{'pts':[[0]]}|{'pts':[[0,1,1]]}|{'pts':[[2,0]]}|{'pts':[[1.0001,0]]}|{'pts':[[-1.5"
     ",0]]}|{'pts':[[0,1],]}|{}|{'pts':[[0,1]],'x':1}"},
    {"{'type':'object','properties':{'meta':{'type':'object'},'any':{},'list':{'type':'array'},"
     "'t':true},'additionalProperties':false}",
     "{}|{'meta':{'x':[1,{'y':null}]},'any':'s','list':[1,'a',{}],'t':[]}|{'any':[true,false,null,"
     "-0.5e3]}|{'meta':{}}|{'t':{'deep':[[[]]]}}",
     "{'meta':[]}|{'x':1}|{'list':{}}|{'meta':{'a':1,}}|{'any':tru}|{'any':1,'meta':{}}"},
    {SHAPES,
     "{'shape':{'kind':'circle','r':0.5}}|{'shape':{'kind':'rect','w':2,'h':3}}|{ 'shape' : { 'kin"
     "d' : 'circle' , 'r' : 7 } }",
     "{'shape':{'kind':'circle','r':0}}|{'shape':{'kind':'circle','w':2,'h':3}}|{'shape':{'kind':'"
     "rect','w':2}}|{'shape':{'kind':'rect','w':0,'h':1}}|{'shape':{'kind':'square'}}|{'shape':{'k"
     "ind':'circle','r':-1}}|{'shape':{}}"},
    /* whitespace: 16 bytes in a row, not 17, and none after the root */
    {DEFS,
     "{'c':{'y':1}}|{'a':{'x':1,'y':2},'b':'hi','c':{'x':3,'y':3},'d':false}|{'b':'','c':{'y':2},'d"
     "':false}|                {                'c'                :{'y'                :1}}",
     "                 {'c':{'y':1}}|{'c':{'y':1}                 }|{'c':{'y':1}} |{'c':{'y':1}}}|"
     "{'a':{'y':1}}|{'c':{'x':1}}|{'c':{'y':4}}|{'c':{'y':1},'b':'x'}|{'c':{'y':1},'d':true}|{'b':'"
     "abc','c':{'y':1}}|{'c':{'y':0}}"},
    {ROOTREF, "{}|{'a':[]}|{'a':[1,2]}|{'a':[2]}", "{'a':[3]}|{'a':[1,2,1]}|{'a':{}}|{'b':1}"},
    /* "additionalProperties": true still writes only the properties (schema.h) */
    {"{'type':'object','properties':{'a':{'type':'string','maxLength':3}},"
     "'additionalProperties':true}",
     "{}|{'a':'abc'}|{'a':'\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80'}",
     "{'a':'x','b':1}|{'b':1}|{'a':'abcd'}"},
};

/* Valid documents go byte by byte, no strict prefix done or stuck, and the
 * validator agrees; invalid ones are refused */
static void schema_instances_valid_accepted_invalid_refused(void)
{
    for (size_t i = 0; i < sizeof(corpus) / sizeof(*corpus); i++) {
        struct pd_schema *sc = compile_q(corpus[i].schema);
        docs_q(sc, corpus[i].schema, corpus[i].valid, true);
        docs_q(sc, NULL, corpus[i].invalid, false);
        pd_schema_unref(sc);
    }
}

/* ---- bounds, exhaustively ---- */

/* {"x": k / 10^d} for every k in [-3000, 3000 + 1000 d], in every width of up
 * to d decimals (2.25, 2.250; -0, -0.0): accepted exactly when k is within
 * lo..hi (lo_in, hi_in: the ends too); no dead end on the way to an accepted one */
static void range(const char *prop, int d, long lo, bool lo_in, long hi, bool hi_in)
{
    static const long p10[4] = {1, 10, 100, 1000};
    char q[256], doc[64];
    snprintf(q, sizeof(q), OBJ "{'x':%s},'required':['x']}", prop);
    struct pd_schema *sc = compile_q(q);
    for (long k = -3000; k <= 3000 + 1000 * (d > 0); k++)
        for (int w = 0; w <= d; w++)
            for (int minus = 0; minus <= (k == 0) && k % p10[d - w] == 0; minus++) {
                const long a = labs(k);
                const int len =
                    snprintf(doc, sizeof(doc), "{\"x\":%s%ld%s%.*ld}", k < 0 || minus ? "-" : "",
                             a / p10[d], w ? "." : "", w, a % p10[d] / p10[d - w]);
                const bool want = (k > lo || (k == lo && lo_in)) && (k < hi || (k == hi && hi_in));
                if ((feed(sc, (const uint8_t *)doc, (size_t)len, want) == -1) != want)
                    PD_TEST_FAIL_("%s under %s: want %s", doc, prop, want ? "accepted" : "refused");
            }
    pd_schema_unref(sc);
}

/* Every integer in [-3000, 3000] (and -0) against integer bounds */
static void schema_integer_bounds_exhaustive(void)
{
    range("{'type':'integer','minimum':-37,'maximum':1234}", 0, -37, 1, 1234, 1);
    range("{'type':'integer','exclusiveMinimum':-37,'exclusiveMaximum':1234}", 0, -36, 1, 1233, 1);
    range("{'type':'integer','minimum':-37.5,'maximum':1234.9}", 0, -37, 1, 1234, 1);
    range("{'type':'integer','exclusiveMinimum':-37.5,'exclusiveMaximum':1234.5}", 0, -37, 1, 1234,
          1);
    range("{'type':'integer','exclusiveMaximum':-2.5}", 0, -5000, 1, -3, 1);
    range("{'type':'integer','minimum':0,'exclusiveMinimum':0,'maximum':10}", 0, 1, 1, 10, 1);
    range("{'type':'integer','minimum':7,'maximum':7}", 0, 7, 1, 7, 1);
    range("{'minimum':5,'maximum':5000}", 0, 5, 1, 5000, 1); /* no type: a number */
}

/* Every decimal of up to 3 fraction digits in [-3, 4], in thousandths */
static void schema_number_bounds_exact_to_the_thousandth(void)
{
    range("{'type':'number','exclusiveMinimum':0.5,'maximum':2.25}", 3, 500, 0, 2250, 1);
    range("{'type':'number','minimum':-1,'exclusiveMaximum':1}", 3, -1000, 1, 1000, 0);
    range("{'type':'number','exclusiveMaximum':0}", 3, -5000, 1, 0, 0);
    range("{'type':'number','minimum':0.125,'maximum':0.125}", 3, 125, 1, 125, 1);
    range("{'type':'number','minimum':-2.5}", 3, -2500, 1, 5000, 1);
}

/* A bounded number has no exponent and at most 15 digits, a bounded integer
 * 18 (a 0 before the point counts); an unbounded one takes exponents; an
 * unbounded integer more digits, but no point or exponent */
static void schema_bounded_numbers_refuse_exponents_and_too_many_digits(void)
{
    struct pd_schema *sc =
        compile_q(OBJ "{'x':{'type':'number','minimum':-1e18},'i':{'type':'integer','minimum':0},"
                      "'n':{'type':'number'},'u':{'type':'integer'}}}");
    /* a bounded number: 15 digits (what a double keeps); a bounded integer: 18 */
    docs_q(sc, NULL,
           "{'x':123456789012345}|{'x':-123456789012345}|{'x':0.12345678901234}|{'x':1.0"
           "0000000000000}|{'i':999999999999999999}|{'n':1e5}|{'n':-2.5E-3}|{'n':0e+00}|{'n':1"
           "234567890123456789012.5}|{'u':-12345678901234567890123}",
           true);
    docs_q(
        sc, NULL,
        "{'x':1e0}|{'x':1E0}|{'x':0.5e1}|{'x':2.0E-1}|{'x':1234567890123456}|{'x':0.1234567890"
        "12345}|{'x':1.000000000000000}|{'i':1000000000000000000}|{'i':1e3}|{'u':1.5}|{'u"
        "':1e3}|{'n':1e}|{'n':1e+}",
        false);
    pd_schema_unref(sc);
}

/* A bound the compiler takes (at most 18 decimals) may need a number that
 * 15 digits cannot write (0.000000000000000001 is 19 with its 0): then the
 * schema is refused, or no state the matcher reaches is a dead end */
static void schema_number_bounds_past_18_digits_leave_no_dead_end(void)
{
    char props[] =
        "{'exclusiveMinimum':0,'exclusiveMaximum':1e-17}|{'minimum':1e-18,'maximum':1e-18}",
         q[256], err[256];
    for (char *p = strtok(props, "|"); p; p = strtok(NULL, "|")) {
        struct pd_schema *sc;
        snprintf(q, sizeof(q), OBJ "{'x':%s},'required':['x']}", p); /* no type: a number */
        if (compile(q, &sc, err, sizeof(err)) == -EINVAL)
            continue;
        /* the number a byte at a time, each time the lowest that goes and
         * does not end it (0 . 0 0 ...), until only its end goes */
        struct pd_gstate s = state_after(sc, "{'x':"), t;
        uint8_t path[40];
        for (size_t n = 0; n < sizeof(path); n++, s = t) {
            unsigned c = 0;
            if (!some_byte_goes(&s))
                PD_TEST_FAIL_("%s: no byte goes after {\"x\":%s", p, show(path, n));
            do
                t = s, path[n] = (uint8_t)++c;
            while (c < 255 && (strchr("} \t\n\r", (int)c) || pd_gstate_feed(&t, &path[n], 1) != 0));
            if (c == 255)
                break;
        }
        pd_schema_unref(sc);
    }
}

/* A bound of 17 significant digits is that bound, not one rounded to 16 */
static void schema_bounds_of_17_digits_are_exact(void)
{
    struct pd_schema *sc = compile_q(OBJ "{'i':{'type':'integer','maximum':12345678901234568}"
                                         ",'x':{'type':'number','minimum':1.0000000000000002}}}");
    docs_q(sc, NULL, "{'i':12345678901234568}|{'x':1.00000000000001}", true); /* 15 digits */
    docs_q(sc, NULL,
           "{'i':12345678901234569}|{'i':12345678901234570}|{'x':1}|{'x':1.0000000000000002}|"
           "{'x':1.0000000000000001}",
           false);
    pd_schema_unref(sc);
}

/* ---- strings ---- */

/* minLength and maxLength count code points: a multi-byte character is one,
 * an escape is one; a bounded string has no \u escape, an unbounded one may */
static void schema_string_lengths_count_code_points(void)
{
    struct pd_schema *sc =
        compile_q(OBJ "{'s':{'type':'string','minLength':2,'maxLength':3},'z':{'type':'string',"
                      "'maxLength':0},'m':{'type':'string','minLength':1},'u':{'type':'string'}}}");
    docs_q(sc, NULL,
           "{'s':'ab'}|{'s':'abc'}|{'s':'\xc3\xa9\xe2\x82\xac'}|{'s':'\xf0\x9f\x98\x80\xf0\x9f\x98"
           "\x80\xf0\x9f\x98\x80'}|{'s':'\\n\\t'}|{'s':'a\\''}|{'s':'\\\\\\/x'}|{'z':''}|{'m':'\xe2"
           "\x82\xac'}|{'u':'\\u0041\\uD83D\\uDE00'}|{'u':''}",
           true);
    docs_q(
        sc, NULL,
        "{'s':'a'}|{'s':''}|{'s':'abcd'}|{'s':'\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80"
        "\xf0\x9f\x98\x80'}|{'s':'\xc3\xa9'}|{'s':'\\u0041b'}|{'s':'a\\n\\tb'}|{'z':'a'}|{'z':'\\n"
        "'}|{'m':''}|{'m':'\\u0041'}|{'u':'\\x'}|{'u':'\\u00G0'}|{'s':'a\xc3'}|{'s':'\xc0\xaf'}|{"
        "'s':'a\tb'}",
        false);
    pd_schema_unref(sc);
}

/* ---- anyOf readings ---- */

#define SHARE                                                                                      \
    "{'type':'object','properties':{'v':{'anyOf':[" OBJ "{'k':{'type':'string','maxLength':3},"    \
    "'a':{'type':'integer','minimum':0,'maximum':9}},'required':['k','a']}," OBJ "{'k':{'type':"   \
    "'string','maxLength':3},'b':{'type':'boolean'}},'required':['k','b']}]},"                     \
    "'m':{'anyOf':[{'type':'string','maxLength':5},{'type':'string','minLength':2},"               \
    "{'const':'abc'}]}},'required':['v']}"

/* Inside an ambiguous anyOf every matching alternative is a reading; they
 * drop out as they stop matching and merge when the value ends */
static void schema_anyof_readings_split_and_merge(void)
{
    /* the readings wanted, then the prefix: both objects have 'k' first */
    char at[] =
        "2{'v':{'k':'ab'|2{'v':{'k':'ab','|1{'v':{'k':'ab','b|1{'v':{'k':'ab','a':1|3{'v':"
        "{'k':'ab','a':1},'m':'ab|1{'v':{'k':'ab','a':1},'m':'abcdef|1{'v':{'k':'ab','a':1},"
        "'m':'abc'|1{'v':{'k':'ab','a':1},'m':'a'";
    struct pd_schema *sc = compile_q(SHARE);
    for (char *a = strtok(at, "|"); a; a = strtok(NULL, "|"))
        if (state_after(sc, a + 1).n != (uint32_t)(a[0] - '0'))
            PD_TEST_FAIL_("%s: %u readings", a, state_after(sc, a + 1).n);
    pd_schema_unref(sc);
}

/* The same after a value with a multi-byte character: the readings that
 * read it as a string and as a const have met again */
static void schema_anyof_readings_merge_after_a_non_ascii_value(void)
{
    struct pd_schema *sc = compile_q(OBJ "{'v':{'anyOf':[{'type':'string'}"
                                         ",{'const':'\xc3\xa9'}]},'w':{'type':'integer'}}}");
    CHECK_EQ_INT(state_after(sc, "{'v':'e'").n, 1);
    CHECK_EQ_INT(state_after(sc, "{'v':'\xc3\xa9'").n, 1);
    pd_schema_unref(sc);
}

/* Two arrays whose items are anyOf of consts: at an item's first byte, a
 * reading for each const of both */
#define TWO_ARRAYS(a, b)                                                                           \
    OBJ "{'v':{'anyOf':[{'type':'array','items':{'anyOf':[" a "]}},{'type':'array','items':"       \
        "{'anyOf':[" b "]}}]}},'required':['v']}"
#define AT_CAP                                                                                     \
    TWO_ARRAYS("{'const':'one'},{'const':'two'},{'const':'three'},{'const':'four'}",               \
               "{'const':'five'},{'const':'six'},{'const':'seven'},{'const':''}")

/* No reading is ever dropped: a schema that could need more than
 * PD_GRAMMAR_MAX_ALTS at once is refused, naming its anyOf; at the cap every
 * alternative still reads */
static void schema_anyof_readings_never_pass_the_cap(void)
{
    refused_q(TWO_ARRAYS("{'const':'one'},{'const':'two'},{'const':'three'},{'const':'four'},"
                         "{'const':'five'}",
                         "{'const':'six'},{'const':'seven'},{'const':'eight'},{'const':'nine'},"
                         "{'const':''}"),
              "'anyOf'", "$.properties.v:");
    struct pd_schema *sc = compile_q(AT_CAP);
    CHECK_EQ_INT(state_after(sc, "{'v':[").n, 2);
    CHECK_EQ_INT(state_after(sc, "{'v':['").n, PD_GRAMMAR_MAX_ALTS);
    docs_q(sc, NULL, "{'v':['one','four']}|{'v':['five','']}|{'v':['four']}|{'v':['']}", true);
    pd_schema_unref(sc);
}

/* ---- the vocabulary: masks, the cache, random walks ---- */

/* The default model's tokenizer and a grammar over it, loaded by the first
 * test that needs them (skipped without the model), kept to the end */
static struct vocab {
    struct tok_fix f;
    struct pd_grammar *g;
    uint32_t V;
    int32_t *list; /* (V) a mask's tokens */
} vx;

static struct vocab *vocab(void)
{
    char err[256];
    if (vx.g)
        return &vx;
    tok_fix_default(&vx.f, PD_TOK_PRE_HF_GGUF);
    vx.V = pd_tok_n_vocab(vx.f.tok);
    if (pd_grammar_new(vx.f.tok, vx.V, &vx.g, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    CHECK((vx.list = malloc(vx.V * sizeof(*vx.list))) != NULL);
    return &vx;
}

/* The mask of s against every token: a bit set exactly when advancing a copy
 * of s by it succeeds (an end-of-generation token: when s is done); how many */
static uint32_t check_mask(struct vocab *x, const struct pd_gstate *s)
{
    const uint32_t *m = pd_grammar_mask(x->g, s);
    uint32_t allowed = 0;
    CHECK(m != NULL);
    for (uint32_t t = 0; t < x->V; t++) {
        size_t n = 0;
        const uint8_t *p = pd_tok_piece(x->f.tok, (int32_t)t, &n);
        struct pd_gstate adv = *s;
        const bool ok = pd_gstate_advance(x->g, &adv, (int32_t)t) == 0,
                   set = m[t / 32] >> t % 32 & 1;
        if (pd_tok_is_eog(x->f.tok, (int32_t)t))
            CHECK(ok == pd_gstate_done(s));
        if (set != ok)
            PD_TEST_FAIL_("token %u (%s): mask bit %d, advance %s (%u readings)", t, show(p, n),
                          set, ok ? "takes it" : "refuses it", s->n);
        allowed += ok;
    }
    return allowed;
}

/* Every state along valid documents: anyOf readings (up to the cap), key
 * literals, bounded numbers and strings (a bound further than the longest
 * token: masks the cache shares across lengths), enum literals, done */
static void schema_masks_match_brute_force(void)
{
    struct vocab *x = vocab();
    char *longs = repeat("{'s':'", "abcdefghi\\n", 21, "", "'}"); /* 210 characters */
    const char *const docs[][2] = {
        {PERSON,
         "{ 'name' : 'B\xc3\xa9' , 'age' : 42 , 'email' : null , 'address' : { 'street' : '"
         "' , 'zip' : '0\xe2\x82\xac\\n0\xf0\x9f\x98\x80' } , 'tags' : [ 'x' ] }"},
        {SHARE, "{'v':{'k':'ab','b':true},'m':'abc'}"},
        {SHAPES, "{'shape':{'kind':'circle','r':0.5}}"},
        {ENUMS, "{'kind':'point','color':[1,2],'flag':false}"},
        {OBJ "{'a':{'type':'integer','minimum':-37,'maximum':1234},'b':"
             "{'type':'number','exclusiveMinimum':0.5,'maximum':2.25}},'required':['a','b']}",
         "{'a':-37,'b':2.2499}"},
        {AT_CAP, "{'v':['','seven']}"},
        {OBJ "{'s':{'type':'string','minLength':200,'maxLength':400}}}", longs},
    };
    uint32_t states = 0, multi = 0, allowed = 0;
    for (size_t i = 0; i < sizeof(docs) / sizeof(*docs); i++) {
        struct pd_schema *sc = compile_q(docs[i][0]);
        char *d = dq(docs[i][1]);
        struct pd_gstate s;
        pd_gstate_init(&s, sc);
        for (size_t k = 0; k == 0 || d[k - 1]; k++, states++) {
            allowed += check_mask(x, &s);
            multi += s.n > 1;
            CHECK(!d[k] || pd_gstate_feed(&s, (const uint8_t *)d + k, 1) == 0);
        }
        CHECK(pd_gstate_done(&s));
        free(d);
        pd_schema_unref(sc);
    }
    printf("  %u states (%u of several readings): %u tokens allowed\n", states, multi, allowed);
    CHECK(multi >= 10);
    free(longs);
}

/* The same reading under two schemas, asked alternately: each gets its own
 * mask, never the other's from the cache; an equal schema compiled again
 * finds its masks there (the cache keys on content) */
static void schema_masks_are_cached_per_schema(void)
{
    static const char *const q[2] = {OBJ "{'a':{'type':'string','maxLength':2}},'required':['a']}",
                                     OBJ "{'a':{'type':'string','minLength':3}},'required':['a']}"};
    struct pd_grammar_stats st0, st;
    struct vocab *x = vocab();
    struct pd_schema *a = compile_q(q[0]), *b = compile_q(q[1]), *a2 = compile_q(q[0]);
    const struct pd_gstate sa = state_after(a, "{'a':'x"), sb = state_after(b, "{'a':'x");
    const struct pd_gstate sa2 = state_after(a2, "{'a':'x");
    CHECK(memcmp(&sa.t[0], &sb.t[0], sizeof(sa.t[0])) == 0); /* the same reading */
    for (int round = 0; round < 3; round++)
        CHECK(check_mask(x, &sa) != check_mask(x, &sb));
    pd_grammar_stats(x->g, &st0);
    check_mask(x, &sa2);
    pd_grammar_stats(x->g, &st);
    CHECK_EQ_INT(st.hits, st0.hits + 1);
    pd_schema_unref(a), pd_schema_unref(b), pd_schema_unref(a2);
}

#define NUMS                                                                                       \
    "{'type':'object','properties':{'a':{'type':['integer','null'],'minimum':-37,"                 \
    "'maximum':1234},'b':{'type':'number','exclusiveMinimum':0.5,'maximum':2.25},"                 \
    "'c':{'type':'number'},'d':{'type':'integer'}},'required':['a','b']}"
#define STRS                                                                                       \
    "{'type':'object','properties':{'s':{'type':'string','minLength':2,'maxLength':4},"            \
    "'t':{'type':'string','maxLength':0},'u':{'type':'string','minLength':1,'maxLength':1},"       \
    "'v':{'type':'array','items':{'type':'string','maxLength':2},'minItems':2,'maxItems':3}},"     \
    "'required':['s','t','u']}"
#define LIST                                                                                       \
    "{'type':'object','properties':{'items':{'type':'array','items':" OBJ "{'id':{'type':"         \
    "'integer','minimum':0,'maximum':99},'ok':{'type':'boolean'}},'required':['id']},"             \
    "'minItems':1,'maxItems':4}},'required':['items']}"

/* From the start, a uniformly random allowed token until done or 400: no
 * dead end on the way, and every walk that ends done is an instance by the
 * validator above (its keys in the schema's order) */
static void schema_random_walks_are_instances(void)
{
    static const char *const schemas[] = {PERSON,  ENUMS, ARRAYS, SHAPES, DEFS,
                                          ROOTREF, NUMS,  STRS,   SHARE,  LIST};
    static uint8_t out[65536];
    uint32_t walks = 0, done = 0, tokens = 0;
    struct vocab *x = vocab();
    for (size_t i = 0; i < sizeof(schemas) / sizeof(*schemas); i++) {
        struct pd_schema *sc = compile_q(schemas[i]);
        uint64_t rs = 0x9E3779B97F4A7C15ull * (i + 1); /* xorshift64 */
        for (int w = 0; w < 10; w++, walks++) {
            struct pd_gstate s;
            size_t len = 0;
            pd_gstate_init(&s, sc);
            for (int step = 0; step < 400 && !pd_gstate_done(&s); step++, tokens++) {
                const uint32_t *m = pd_grammar_mask(x->g, &s);
                uint32_t n = 0;
                CHECK(m != NULL);
                for (uint32_t k = 0; k < pd_grammar_mask_words(x->g); k++)
                    for (uint32_t word = m[k]; word; word &= word - 1)
                        x->list[n++] = (int32_t)(32 * k + (uint32_t)__builtin_ctz(word));
                if (!n)
                    PD_TEST_FAIL_("schema %zu: no token goes after %s", i, show(out, len));
                rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
                const int32_t t = x->list[rs % n];
                size_t pn = 0;
                const uint8_t *p = pd_tok_piece(x->f.tok, t, &pn);
                CHECK_EQ_INT(pd_gstate_advance(x->g, &s, t), 0);
                CHECK(s.n <= PD_GRAMMAR_MAX_ALTS && len + pn <= sizeof(out));
                memcpy(out + len, p, pn);
                len += pn;
            }
            if (pd_gstate_done(&s))
                done++, validates(schemas[i], out, len);
        }
        pd_schema_unref(sc);
    }
    printf("  %u walks (%u tokens): %u done, each an instance\n", walks, tokens, done);
    CHECK(done * 10 >= walks * 8); /* bounded strings close: most walks end */
}

/* ---- references ---- */

/* json_object's schema is static: ref and unref leave it be; a compiled one
 * lives until its last reference goes (ASan sees the free) */
static void schema_ref_unref(void)
{
    struct pd_schema *jo = pd_schema_json_object(), *sc = compile_q(DEFS);
    struct pd_gstate s;
    CHECK(pd_schema_ref(jo) == jo && !pd_schema_unref(jo) && !pd_schema_unref(jo));
    pd_gstate_init(&s, pd_schema_json_object()); /* the same, and still whole */
    CHECK(s.sc == jo && pd_gstate_feed(&s, (const uint8_t *)"{\"a\":[1]}", 9) == 0);
    CHECK(pd_gstate_done(&s));
    CHECK(pd_schema_ref(sc) == sc && pd_schema_ref(sc) == sc);
    CHECK(!pd_schema_unref(sc) && !pd_schema_unref(sc));
    docs_q(sc, NULL, "{'c':{'y':1}}", true); /* one reference left */
    CHECK(!pd_schema_unref(sc) && !pd_schema_unref(NULL) && !pd_schema_ref(NULL));
}

static const struct pd_test tests[] = {
    PD_TEST(schema_refuses_naming_keyword_and_path),
    PD_TEST(schema_refuses_refs_it_cannot_follow),
    PD_TEST(schema_refuses_a_root_that_is_not_an_object),
    PD_TEST(schema_caps_at_their_edges),
    PD_TEST(schema_enum_cap_counts_distinct_values),
    PD_TEST(schema_instances_valid_accepted_invalid_refused),
    PD_TEST(schema_integer_bounds_exhaustive),
    PD_TEST(schema_number_bounds_exact_to_the_thousandth),
    PD_TEST(schema_bounded_numbers_refuse_exponents_and_too_many_digits),
    PD_TEST(schema_number_bounds_past_18_digits_leave_no_dead_end),
    PD_TEST(schema_bounds_of_17_digits_are_exact),
    PD_TEST(schema_string_lengths_count_code_points),
    PD_TEST(schema_anyof_readings_split_and_merge),
    PD_TEST(schema_anyof_readings_merge_after_a_non_ascii_value),
    PD_TEST(schema_anyof_readings_never_pass_the_cap),
    PD_TEST(schema_masks_match_brute_force),
    PD_TEST(schema_masks_are_cached_per_schema),
    PD_TEST(schema_random_walks_are_instances),
    PD_TEST(schema_ref_unref),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
