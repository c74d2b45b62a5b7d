#include "safetensors.h"

#include "errf.h"
#include "quant.h"
#include "utf8.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DIM (1ull << 40)
#define MAX_EXACT 9007199254740992.0 /* 2^53: larger JSON numbers are not exact in cJSON */

struct pd_st {
    struct pd_st_tensor *t; /* [n], sorted by name */
    size_t n;
    char *names; /* the names, NUL-terminated, one after another */
};

static const struct {
    const char *name;
    uint32_t type, size;
} dtypes[] = {{"F32", PD_DT_F32, 4}, {"F16", PD_DT_F16, 2}, {"BF16", PD_DT_BF16, 2}};

/* The format's other dtypes, named in the refusal as not computed with. */
static bool known_other_dtype(const char *s)
{
    static const char *const other[] = {"F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16",
                                        "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                        "F8_E4M3FNUZ", "F8_E5M2FNUZ",
                                        "F6_E2M3", "F6_E3M2", "F4", "C64"};
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
        if (strcmp(s, other[i]) == 0)
            return true;
    return false;
}

/* An exact non-negative integer <= max, or -1. */
static int64_t exact_u(const cJSON *v, double max)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= max && d == floor(d)))
        return -1;
    return (int64_t)d;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A key twice in one object, in O(n log n): cJSON keeps both, and readers
 * disagree on which one counts. */
int pd_st_json_dup_key(const cJSON *obj, const char **dup)
{
    size_t n = 0, i = 0;
    *dup = NULL;
    for (const cJSON *c = obj->child; c; c = c->next)
        n++;
    if (n < 2)
        return 0;
    const char **k = malloc(n * sizeof(*k));
    if (!k)
        return -ENOMEM;
    for (const cJSON *c = obj->child; c; c = c->next)
        k[i++] = c->string;
    qsort(k, n, sizeof(*k), str_cmp);
    for (i = 1; i < n && !*dup; i++)
        if (strcmp(k[i - 1], k[i]) == 0)
            *dup = k[i];
    free(k);
    return *dup ? 1 : 0;
}

/* no key twice in any object, nesting at most max_depth */
static int json_tree_ok(const cJSON *it, int depth, int max_depth, char *why, size_t whylen)
{
    const char *dup;
    int rc;
    if (depth > max_depth)
        return pd_errf(why, whylen, -EINVAL, "nested too deeply");
    if (cJSON_IsObject(it) && (rc = pd_st_json_dup_key(it, &dup)) != 0)
        return rc < 0 ? pd_errf(why, whylen, -ENOMEM, "out of memory")
                      : pd_errf(why, whylen, -EINVAL, "key \"%.64s\" appears twice in one object",
                                dup);
    for (const cJSON *c = it->child; c; c = c->next)
        if ((rc = json_tree_ok(c, depth + 1, max_depth, why, whylen)) < 0)
            return rc;
    return 0;
}

int pd_st_json_parse(const char *text, size_t len, int max_depth, cJSON **out, char *why,
                     size_t whylen)
{
    cJSON *root;
    int rc;
    if (pd_utf8_valid_prefix((const uint8_t *)text, len) != len)
        return pd_errf(why, whylen, -EINVAL, "not valid UTF-8");
    if ((rc = pd_st_json_check_text(text, len, false, why, whylen)) < 0)
        return rc;
    if (!(root = cJSON_ParseWithLength(text, len)) || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return pd_errf(why, whylen, -EINVAL, "not a JSON object");
    }
    if ((rc = json_tree_ok(root, 0, max_depth, why, whylen)) < 0) {
        cJSON_Delete(root);
        return rc;
    }
    *out = root;
    return 0;
}

int pd_st_json_check_text(const char *s, size_t n, bool integers_only, char *err, size_t errlen)
{
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        if (in_str) {
            if (c < 0x20)
                return pd_errf(err, errlen, -EINVAL,
                               "a raw control character (0x%02x) in a string at byte %zu", c, i);
            if (c == '"') {
                in_str = false;
            } else if (c == '\\' && i + 1 < n) {
                /* an escaped NUL would end the string in C: two names read as one */
                if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0)
                    return pd_errf(err, errlen, -EINVAL, "a NUL (\\u0000) in a string at byte %zu",
                                   i);
                i++; /* the escaped character, whatever it is */
            }
        } else if (c == '"') {
            in_str = true;
        } else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
            return pd_errf(err, errlen, -EINVAL, "a control character (0x%02x) at byte %zu", c, i);
        } else if (integers_only && (c == '-' || c == '.' || c == 'e' || c == 'E' ||
                                     (c == '0' && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9' &&
                                      !(i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9')))) {
            return pd_errf(err, errlen, -EINVAL,
                           "a value other than a string, object, array or plain non-negative "
                           "integer at byte %zu",
                           i);
        }
    }
    return 0;
}

static int tensor_entry(const cJSON *e, const char *name, struct pd_st_tensor *t, char *err,
                        size_t errlen)
{
    if (!cJSON_IsObject(e))
        return pd_errf(err, errlen, -EINVAL, "safetensors: tensor %s is not a JSON object", name);
    /* unknown keys first: then at most the three known ones are left to
     * compare (a thousand-key entry costs nothing) */
    const cJSON *dt = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *k = e->child; k; k = k->next) {
        const cJSON **slot = strcmp(k->string, "dtype") == 0          ? &dt
                             : strcmp(k->string, "shape") == 0        ? &shape
                             : strcmp(k->string, "data_offsets") == 0 ? &offs
                                                                      : NULL;
        if (slot && *slot)
            return pd_errf(err, errlen, -EINVAL, "safetensors: tensor %s has key \"%s\" twice",
                           name, k->string);
        if (slot)
            *slot = k;
        else
            return pd_errf(err, errlen, -EINVAL,
                           "safetensors: tensor %s has an unknown key \"%.64s\" (dtype, shape, "
                           "data_offsets)",
                           name, k->string);
    }
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs))
        return pd_errf(err, errlen, -EINVAL,
                       "safetensors: tensor %s needs \"dtype\" (a string), \"shape\" and "
                       "\"data_offsets\" (arrays)",
                       name);
    uint32_t esize = 0;
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++)
        if (strcmp(dt->valuestring, dtypes[i].name) == 0)
            t->type = dtypes[i].type, esize = dtypes[i].size;
    if (!esize)
        return pd_errf(err, errlen, known_other_dtype(dt->valuestring) ? -ENOTSUP : -EINVAL,
                       "safetensors: tensor %s has dtype %.16s%s (F32, F16 and BF16 are "
                       "supported)",
                       name, dt->valuestring,
                       known_other_dtype(dt->valuestring) ? "" : ", which is not a dtype");
    int nd = cJSON_GetArraySize(shape);
    if (nd < 1 || nd > PD_ST_MAX_DIMS)
        return pd_errf(err, errlen, -EINVAL,
                       "safetensors: tensor %s has %d dims (1 to %d are supported)", name, nd,
                       PD_ST_MAX_DIMS);
    t->n_dims = (uint32_t)nd;
    uint64_t nel = 1;
    int d = 0;
    for (const cJSON *v = shape->child; v; v = v->next, d++) {
        int64_t x = exact_u(v, (double)MAX_DIM);
        if (x < 1)
            return pd_errf(err, errlen, -EINVAL,
                           "safetensors: tensor %s: dim %d must be an integer from 1 to 2^40", name,
                           d);
        t->shape[d] = (uint64_t)x;
        if (nel > UINT64_MAX / (uint64_t)x / esize)
            return pd_errf(err, errlen, -EINVAL, "safetensors: tensor %s: size overflows", name);
        nel *= (uint64_t)x;
    }
    for (; d < PD_ST_MAX_DIMS; d++)
        t->shape[d] = 1;
    int64_t b, en;
    if (cJSON_GetArraySize(offs) != 2 || (b = exact_u(offs->child, MAX_EXACT)) < 0 ||
        (en = exact_u(offs->child->next, MAX_EXACT)) < 0 || en < b)
        return pd_errf(err, errlen, -EINVAL,
                       "safetensors: tensor %s: data_offsets must be [begin, end], integers with "
                       "begin <= end",
                       name);
    if ((uint64_t)(en - b) != nel * esize)
        return pd_errf(err, errlen, -EINVAL,
                       "safetensors: tensor %s: data_offsets [%" PRId64 ", %" PRId64
                       "] hold %" PRId64 " bytes, its shape and dtype need %" PRIu64,
                       name, b, en, en - b, nel * esize);
    t->offset = (uint64_t)b; /* relative to the data section until the layout check */
    t->nbytes = nel * esize;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct pd_st_tensor *)a)->name, ((const struct pd_st_tensor *)b)->name);
}

static int by_offset(const void *a, const void *b)
{
    const struct pd_st_tensor *x = *(const struct pd_st_tensor *const *)a;
    const struct pd_st_tensor *y = *(const struct pd_st_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* The tensors tile the data section: sorted by offset, each begins where the
 * previous one ended, the last ends at the end of the image. */
static int check_layout(struct pd_st *st, uint64_t data_len, char *err, size_t errlen)
{
    const struct pd_st_tensor **o = malloc((st->n ? st->n : 1) * sizeof(*o));
    int rc = 0;
    if (!o)
        return pd_errf(err, errlen, -ENOMEM, "safetensors: out of memory");
    for (size_t i = 0; i < st->n; i++)
        o[i] = &st->t[i];
    qsort(o, st->n, sizeof(*o), by_offset);
    uint64_t at = 0;
    for (size_t i = 0; i < st->n && rc == 0; i++) {
        if (o[i]->offset != at)
            rc = pd_errf(err, errlen, -EINVAL,
                         "safetensors: tensor %s begins at data byte %" PRIu64 ", where %s "
                         "(tensors must tile the data section: no overlap, no gap)",
                         o[i]->name, o[i]->offset, i ? "the previous one ends elsewhere" :
                                                       "0 was expected");
        at = o[i]->offset + o[i]->nbytes;
    }
    if (rc == 0 && at != data_len)
        rc = pd_errf(err, errlen, -EINVAL,
                     "safetensors: the tensors cover %" PRIu64 " bytes of a %" PRIu64
                     "-byte data section",
                     at, data_len);
    free(o);
    return rc;
}

/* The header's members into a new pd_st: tensors, and the metadata checked. */
static int read_entries(const cJSON *root, struct pd_st **out, char *err, size_t errlen)
{
    struct pd_st *st = NULL;
    int rc;
    size_t n = 0, names_len = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        size_t nl = strlen(e->string);
        if (nl == 0 || nl > PD_ST_MAX_NAME) {
            rc = pd_errf(err, errlen, -EINVAL,
                         "safetensors: a tensor name of %zu bytes (1 to %d)", nl, PD_ST_MAX_NAME);
            goto fail;
        }
        if (++n > PD_ST_MAX_TENSORS) {
            rc = pd_errf(err, errlen, -E2BIG, "safetensors: more than %d tensors",
                         PD_ST_MAX_TENSORS);
            goto fail;
        }
        names_len += nl + 1;
    }
    st = calloc(1, sizeof(*st));
    if (!st || !(st->t = calloc(n ? n : 1, sizeof(*st->t))) ||
        !(st->names = malloc(names_len ? names_len : 1))) {
        rc = pd_errf(err, errlen, -ENOMEM, "safetensors: out of memory");
        goto fail;
    }
    char *np = st->names;
    bool seen_meta = false;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta || !cJSON_IsObject(e)) {
                rc = pd_errf(err, errlen, -EINVAL,
                             "safetensors: \"__metadata__\" must appear once, as an object");
                goto fail;
            }
            seen_meta = true;
            const char *dup;
            if ((rc = pd_st_json_dup_key(e, &dup)) != 0) {
                rc = rc < 0 ? pd_errf(err, errlen, rc, "safetensors: out of memory")
                            : pd_errf(err, errlen, -EINVAL,
                                      "safetensors: \"__metadata__\" has key \"%.64s\" twice", dup);
                goto fail;
            }
            for (const cJSON *k = e->child; k; k = k->next)
                if (!cJSON_IsString(k)) {
                    rc = pd_errf(err, errlen, -EINVAL,
                                 "safetensors: \"__metadata__\" value \"%.64s\" is not a string",
                                 k->string);
                    goto fail;
                }
            continue;
        }
        struct pd_st_tensor *t = &st->t[st->n];
        size_t nl = strlen(e->string);
        memcpy(np, e->string, nl + 1);
        t->name = np;
        np += nl + 1;
        if ((rc = tensor_entry(e, t->name, t, err, errlen)) < 0)
            goto fail;
        st->n++;
    }
    *out = st;
    return 0;
fail:
    pd_st_free(st);
    return rc;
}

int pd_st_parse(const void *buf, size_t len, struct pd_st **out, char *err, size_t errlen)
{
    const uint8_t *p = buf;
    cJSON *root = NULL;
    struct pd_st *st = NULL;
    int rc;

    if (len < 8)
        return pd_errf(err, errlen, -EINVAL, "safetensors: %zu bytes is too short (no header)",
                       len);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)p[i] << (8 * i);
    if (hl > PD_ST_MAX_HEADER)
        return pd_errf(err, errlen, -E2BIG,
                       "safetensors: header of %" PRIu64 " bytes is above the cap of %u", hl,
                       PD_ST_MAX_HEADER);
    if (hl < 2 || hl > len - 8)
        return pd_errf(err, errlen, -EINVAL,
                       "safetensors: header length %" PRIu64 " does not fit the %zu-byte image",
                       hl, len);
    const char *h = (const char *)p + 8;
    if (h[0] != '{')
        return pd_errf(err, errlen, -EINVAL, "safetensors: the header does not begin with '{'");
    if (pd_utf8_valid_prefix((const uint8_t *)h, hl) != hl)
        return pd_errf(err, errlen, -EINVAL, "safetensors: the header is not valid UTF-8");
    /* what cJSON lets through: control characters (a raw NUL ends a name in
     * C), escaped NULs, and numbers written as 4.0, 04, -0 or 0.4e1 where the
     * format has only non-negative integers */
    char why[128];
    if (pd_st_json_check_text(h, hl, true, why, sizeof(why)) < 0)
        return pd_errf(err, errlen, -EINVAL, "safetensors: the header has %s", why);
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(h, hl, &end, false);
    if (!root || !cJSON_IsObject(root)) {
        rc = pd_errf(err, errlen, -EINVAL, "safetensors: the header is not a JSON object");
        goto fail;
    }
    /* what follows the object may only be the padding the writers add */
    for (const char *q = end; q < h + hl; q++)
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            rc = pd_errf(err, errlen, -EINVAL, "safetensors: bytes after the header's JSON");
            goto fail;
        }

    if ((rc = read_entries(root, &st, err, errlen)) < 0)
        goto fail;
    qsort(st->t, st->n, sizeof(*st->t), by_name);
    for (size_t i = 1; i < st->n; i++)
        if (strcmp(st->t[i - 1].name, st->t[i].name) == 0) {
            rc = pd_errf(err, errlen, -EINVAL, "safetensors: tensor %s appears twice",
                         st->t[i].name);
            goto fail;
        }
    const uint64_t data_at = 8 + hl, data_len = len - data_at;
    if ((rc = check_layout(st, data_len, err, errlen)) < 0)
        goto fail;
    for (size_t i = 0; i < st->n; i++) {
        struct pd_st_tensor *t = &st->t[i];
        t->offset += data_at;
        /* the engine reads elements in place: each at its natural alignment
         * (the writers pad the header to 8 bytes for this) */
        uint64_t esize = t->type == PD_DT_F32 ? 4 : 2;
        if (t->offset % esize) {
            rc = pd_errf(err, errlen, -EINVAL,
                         "safetensors: tensor %s at byte %" PRIu64
                         " is not aligned to its %" PRIu64 "-byte elements",
                         t->name, t->offset, esize);
            goto fail;
        }
        t->data = p + t->offset;
    }
    cJSON_Delete(root);
    *out = st;
    return 0;
fail:
    cJSON_Delete(root);
    pd_st_free(st);
    return rc;
}

struct pd_st *pd_st_free(struct pd_st *st)
{
    if (st) {
        free(st->t);
        free(st->names);
        free(st);
    }
    return NULL;
}

size_t pd_st_n_tensors(const struct pd_st *st) { return st->n; }

const struct pd_st_tensor *pd_st_tensor_at(const struct pd_st *st, size_t i)
{
    return i < st->n ? &st->t[i] : NULL;
}

const struct pd_st_tensor *pd_st_find(const struct pd_st *st, const char *name)
{
    struct pd_st_tensor key = {.name = name};
    return bsearch(&key, st->t, st->n, sizeof(*st->t), by_name);
}
