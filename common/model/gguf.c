#include "gguf.h"

#include "quant.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */

struct pd_gguf {
    uint32_t version;
    uint32_t alignment;
    uint64_t data_off;
    size_t n_kv;
    struct pd_gguf_kv *kv;
    uint64_t **str_offs; /* per kv: offsets of string-array elements from kv->val, or NULL */
    size_t n_tensors;
    struct pd_gguf_tensor *tensors;
    char *names; /* arena holding every key and tensor name */
    size_t names_len, names_cap;
    /* kv, str_offs, tensors and names share one block (tables_alloc), freed through kv */
};

/* A cursor over the image: every read is checked against the end first. */
struct rd {
    const uint8_t *base;
    size_t len, pos;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 2, 3))) static int fail(struct rd *r, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(r->err, r->errlen, "gguf: at byte %zu: ", r->pos);
    if (n >= 0 && (size_t)n < r->errlen) {
        va_start(ap, fmt);
        vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static int need(struct rd *r, uint64_t n, const char *what)
{
    if (n > r->len - r->pos)
        return fail(r, "truncated: %s needs %" PRIu64 " bytes, %zu left", what, n, r->len - r->pos);
    return 0;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* An n-byte little-endian integer at the cursor. */
static int rd_le(struct rd *r, int n, uint64_t *v, const char *what)
{
    int rc = need(r, (uint64_t)n, what);
    if (rc < 0)
        return rc;
    *v = le(r->base + r->pos, n);
    r->pos += (size_t)n;
    return 0;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what)
{
    uint64_t x;
    int rc = rd_le(r, 4, &x, what);
    if (rc == 0)
        *v = (uint32_t)x;
    return rc;
}

static int rd_u64(struct rd *r, uint64_t *v, const char *what) { return rd_le(r, 8, v, what); }

/* A length-prefixed string: returns its bytes in place. */
static int rd_str(struct rd *r, const uint8_t **s, uint64_t *n, uint64_t max, const char *what)
{
    int rc = rd_u64(r, n, what);
    if (rc < 0)
        return rc;
    if (*n > max) {
        r->pos -= 8;
        return fail(r, "%s length %" PRIu64 " exceeds the cap of %" PRIu64, what, *n, max);
    }
    if ((rc = need(r, *n, what)) < 0)
        return rc;
    *s = r->base + r->pos;
    r->pos += *n;
    return 0;
}

static const uint8_t scalar_size[PD_GGUF_TYPE_COUNT] = {
    [PD_GGUF_U8] = 1, [PD_GGUF_I8] = 1, [PD_GGUF_U16] = 2, [PD_GGUF_I16] = 2,
    [PD_GGUF_U32] = 4, [PD_GGUF_I32] = 4, [PD_GGUF_F32] = 4, [PD_GGUF_BOOL] = 1,
    [PD_GGUF_U64] = 8, [PD_GGUF_I64] = 8, [PD_GGUF_F64] = 8,
};

static char *arena_add(struct pd_gguf *g, const uint8_t *s, size_t n)
{
    /* the arena is sized up front, so pointers into it stay valid */
    if (g->names_len + n + 1 > g->names_cap)
        return NULL;
    char *p = g->names + g->names_len;
    memcpy(p, s, n);
    p[n] = '\0';
    g->names_len += n + 1;
    return p;
}

/* One zeroed block for the tables a header's counts size: kv and str_offs
 * [n_kv], tensors [n_tensors], then the names arena. */
static int tables_alloc(struct pd_gguf *g, size_t n_kv, size_t n_tensors, size_t names_cap)
{
    _Static_assert(sizeof(struct pd_gguf_kv) % _Alignof(uint64_t *) == 0 &&
                       sizeof(uint64_t *) % _Alignof(struct pd_gguf_tensor) == 0,
                   "each table starts aligned after the one before");
    size_t kv_bytes = n_kv * sizeof(*g->kv), offs_bytes = n_kv * sizeof(*g->str_offs);
    size_t tensor_bytes = n_tensors * sizeof(*g->tensors);
    char *p = calloc(1, kv_bytes + offs_bytes + tensor_bytes + names_cap);
    if (!p)
        return -ENOMEM;
    g->kv = (struct pd_gguf_kv *)(void *)p;
    g->str_offs = (uint64_t **)(void *)(p + kv_bytes);
    g->tensors = (struct pd_gguf_tensor *)(void *)(p + kv_bytes + offs_bytes);
    g->names = p + kv_bytes + offs_bytes + tensor_bytes;
    g->names_cap = names_cap;
    return 0;
}

struct pd_gguf *pd_gguf_free(struct pd_gguf *g)
{
    if (!g)
        return NULL;
    if (g->str_offs)
        for (size_t i = 0; i < g->n_kv; i++)
            free(g->str_offs[i]);
    free(g->kv); /* and the other tables: one block */
    free(g);
    return NULL;
}

static int has_nul(const uint8_t *s, uint64_t n) { return memchr(s, 0, n) != NULL; }

static int parse_value(struct rd *r, struct pd_gguf *g, size_t idx)
{
    struct pd_gguf_kv *kv = &g->kv[idx];
    uint32_t t = kv->type;
    int rc;

    if (t >= PD_GGUF_TYPE_COUNT)
        return fail(r, "key \"%s\": unknown value type %" PRIu32, kv->key, t);
    if (t == PD_GGUF_STRING) {
        const uint8_t *s;
        uint64_t n;
        if ((rc = rd_str(r, &s, &n, PD_GGUF_MAX_STRING, "string value")) < 0)
            return rc;
        kv->val = s;
        kv->val_len = n;
        return 0;
    }
    if (t != PD_GGUF_ARRAY) {
        if ((rc = need(r, scalar_size[t], "value")) < 0)
            return rc;
        kv->val = r->base + r->pos;
        kv->val_len = scalar_size[t];
        r->pos += scalar_size[t];
        return 0;
    }

    uint32_t et;
    uint64_t n;
    if ((rc = rd_u32(r, &et, "array element type")) < 0 || (rc = rd_u64(r, &n, "array length")) < 0)
        return rc;
    if (et >= PD_GGUF_TYPE_COUNT)
        return fail(r, "key \"%s\": unknown array element type %" PRIu32, kv->key, et);
    if (et == PD_GGUF_ARRAY)
        return fail(r, "key \"%s\": nested arrays are not supported", kv->key);
    if (n > PD_GGUF_MAX_ARRAY)
        return fail(r, "key \"%s\": array of %" PRIu64 " elements exceeds the cap of %u", kv->key,
                    n, PD_GGUF_MAX_ARRAY);
    kv->arr_type = et;
    kv->arr_n = n;
    kv->val = r->base + r->pos;
    if (et != PD_GGUF_STRING) {
        uint64_t bytes = n * scalar_size[et]; /* n <= 2^24, size <= 8: no overflow */
        if ((rc = need(r, bytes, "array data")) < 0)
            return rc;
        r->pos += bytes;
        kv->val_len = bytes;
        return 0;
    }
    /* strings take at least 8 bytes each: refuse impossible counts before allocating */
    if (n > (r->len - r->pos) / 8)
        return fail(r, "key \"%s\": array of %" PRIu64 " strings cannot fit in %zu bytes", kv->key,
                    n, r->len - r->pos);
    uint64_t *offs = malloc((n ? n : 1) * sizeof(*offs));
    if (!offs)
        return -ENOMEM;
    g->str_offs[idx] = offs;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *s;
        uint64_t sl;
        offs[i] = (uint64_t)(r->base + r->pos - kv->val);
        if ((rc = rd_str(r, &s, &sl, PD_GGUF_MAX_STRING, "array string")) < 0)
            return rc;
    }
    kv->val_len = (uint64_t)(r->base + r->pos - kv->val);
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sort a copy of the names and report the first duplicate, if any. */
static int find_duplicate(const char **names, size_t n, const char **dup)
{
    if (n < 2)
        return 0;
    const char **s = malloc(n * sizeof(*s));
    if (!s)
        return -ENOMEM;
    memcpy(s, names, n * sizeof(*s));
    qsort(s, n, sizeof(*s), cmp_names);
    int found = 0;
    for (size_t i = 1; i < n && !found; i++)
        if (strcmp(s[i - 1], s[i]) == 0) {
            *dup = s[i];
            found = 1;
        }
    free(s);
    return found;
}

static int check_unique(struct rd *r, struct pd_gguf *g)
{
    size_t n = g->n_kv > g->n_tensors ? g->n_kv : g->n_tensors;
    const char **names = malloc((n ? n : 1) * sizeof(*names));
    const char *dup = NULL;
    int rc;

    if (!names)
        return -ENOMEM;
    for (size_t i = 0; i < g->n_kv; i++)
        names[i] = g->kv[i].key;
    rc = find_duplicate(names, g->n_kv, &dup);
    if (rc > 0)
        rc = fail(r, "duplicate key \"%s\"", dup);
    if (rc == 0) {
        for (size_t i = 0; i < g->n_tensors; i++)
            names[i] = g->tensors[i].name;
        rc = find_duplicate(names, g->n_tensors, &dup);
        if (rc > 0)
            rc = fail(r, "duplicate tensor \"%s\"", dup);
    }
    free(names);
    return rc;
}

static int parse_tensor_info(struct rd *r, struct pd_gguf *g, size_t i)
{
    struct pd_gguf_tensor *t = &g->tensors[i];
    const uint8_t *s;
    uint64_t sl, nel = 1;
    uint32_t nd;
    int rc;

    if ((rc = rd_str(r, &s, &sl, PD_GGUF_MAX_NAME, "tensor name")) < 0)
        return rc;
    if (sl == 0 || has_nul(s, sl))
        return fail(r, "tensor %zu: empty name or name with a NUL byte", i);
    if (!(t->name = arena_add(g, s, sl)))
        return fail(r, "tensor names exceed the header size");
    if ((rc = rd_u32(r, &nd, "tensor dims")) < 0)
        return rc;
    if (nd == 0 || nd > PD_GGUF_MAX_DIMS)
        return fail(r, "tensor \"%s\": %" PRIu32 " dimensions (1..%d allowed)", t->name, nd,
                    PD_GGUF_MAX_DIMS);
    t->n_dims = nd;
    for (uint32_t d = 0; d < PD_GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        if ((rc = rd_u64(r, &t->ne[d], "tensor dim")) < 0)
            return rc;
        if (t->ne[d] == 0 || t->ne[d] > (1ull << 40))
            return fail(r, "tensor \"%s\": dimension %" PRIu32 " is %" PRIu64, t->name, d,
                        t->ne[d]);
        if (nel > (UINT64_MAX >> 2) / t->ne[d])
            return fail(r, "tensor \"%s\": element count overflows", t->name);
        nel *= t->ne[d];
    }
    if ((rc = rd_u32(r, &t->type, "tensor type")) < 0)
        return rc;
    if (!pd_dtype_info(t->type))
        return fail(r, "tensor \"%s\": unknown type %" PRIu32, t->name, t->type);
    uint64_t row;
    if (pd_dtype_row_size(t->type, t->ne[0], &row) < 0)
        return fail(r, "tensor \"%s\": row of %" PRIu64 " is not a multiple of %s's block of %" PRIu32,
                    t->name, t->ne[0], pd_dtype_name(t->type), pd_dtype_info(t->type)->block);
    uint64_t rows = nel / t->ne[0];
    if (row != 0 && rows > UINT64_MAX / row)
        return fail(r, "tensor \"%s\": size overflows", t->name);
    t->nbytes = row * rows;
    if ((rc = rd_u64(r, &t->offset, "tensor offset")) < 0)
        return rc;
    return 0;
}

/* The key-value section; general.alignment checked as it comes. */
static int parse_kvs(struct rd *r, struct pd_gguf *g, uint64_t n_kv)
{
    int rc;
    for (size_t i = 0; i < n_kv; i++) {
        const uint8_t *s;
        uint64_t sl;
        if ((rc = rd_str(r, &s, &sl, PD_GGUF_MAX_KEY, "key")) < 0)
            return rc;
        if (sl == 0 || has_nul(s, sl))
            return fail(r, "key %zu: empty or contains a NUL byte", i);
        if (!(g->kv[i].key = arena_add(g, s, sl)))
            return fail(r, "keys exceed the header size");
        g->n_kv = i + 1;
        if ((rc = rd_u32(r, &g->kv[i].type, "value type")) < 0 || (rc = parse_value(r, g, i)) < 0)
            return rc;
        if (strcmp(g->kv[i].key, "general.alignment") == 0) {
            uint32_t a;
            if ((rc = pd_gguf_get_u32(g, "general.alignment", &a)) < 0 || a == 0 ||
                (a & (a - 1)) != 0 || a > PD_GGUF_MAX_ALIGN)
                return fail(r, "general.alignment must be a u32 power of two up to %u",
                            PD_GGUF_MAX_ALIGN);
            g->alignment = a;
        }
    }
    return 0;
}

/* Every tensor's data inside the file, aligned, after data_off. */
static int place_data(struct rd *r, struct pd_gguf *g, size_t len, uint64_t data_off)
{
    for (size_t i = 0; i < g->n_tensors; i++) {
        struct pd_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0)
            return fail(r, "tensor \"%s\": offset %" PRIu64 " is not aligned to %" PRIu32,
                        t->name, t->offset, g->alignment);
        if (t->offset > len - data_off || t->nbytes > len - data_off - t->offset)
            return fail(r, "tensor \"%s\": data [%" PRIu64 ", +%" PRIu64 ") lies past the end of "
                        "the file (%zu bytes of data)", t->name, t->offset, t->nbytes,
                        len - (size_t)data_off);
        t->data = r->base + data_off + t->offset;
    }
    return 0;
}

int pd_gguf_parse(const void *buf, size_t len, struct pd_gguf **out, char *err, size_t errlen)
{
    char dummy_err[1];
    struct rd r = {.base = buf, .len = len, .err = err ? err : dummy_err,
                   .errlen = err ? errlen : sizeof(dummy_err)};
    struct pd_gguf *g;
    uint32_t magic;
    uint64_t n_tensors, n_kv;
    int rc;

    if (r.errlen)
        r.err[0] = '\0';
    if ((rc = rd_u32(&r, &magic, "magic")) < 0)
        return rc;
    if (magic != GGUF_MAGIC)
        return r.pos = 0, fail(&r, "not a GGUF file (bad magic)");
    g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    if ((rc = rd_u32(&r, &g->version, "version")) < 0)
        goto out_free;
    if (g->version == 1 || (g->version & 0xffff) == 0) {
        rc = fail(&r, "GGUF version %" PRIu32 " is not supported (2 and 3 are%s)", g->version,
                  (g->version & 0xffff) == 0 ? "; this looks like a big-endian file" : "");
        goto out_free;
    }
    if (g->version != 2 && g->version != 3) {
        rc = fail(&r, "GGUF version %" PRIu32 " is not supported (2 and 3 are)", g->version);
        goto out_free;
    }
    if ((rc = rd_u64(&r, &n_tensors, "tensor count")) < 0 || (rc = rd_u64(&r, &n_kv, "kv count")) < 0)
        goto out_free;
    if (n_tensors > PD_GGUF_MAX_TENSORS || n_kv > PD_GGUF_MAX_KV) {
        rc = fail(&r, "%" PRIu64 " tensors / %" PRIu64 " keys exceed the caps of %d / %d",
                  n_tensors, n_kv, PD_GGUF_MAX_TENSORS, PD_GGUF_MAX_KV);
        rc = -E2BIG;
        goto out_free;
    }
    /* each kv takes >= 12 bytes and each tensor info >= 24: refuse counts the
     * image cannot hold before allocating for them */
    if (n_kv * 12 + n_tensors * 24 > len - r.pos) {
        rc = fail(&r, "truncated: %" PRIu64 " keys and %" PRIu64 " tensors cannot fit in %zu bytes",
                  n_kv, n_tensors, len - r.pos);
        goto out_free;
    }
    /* every name lives in the header, so the header's size bounds the arena */
    if ((rc = tables_alloc(g, n_kv, n_tensors, len - r.pos + n_kv + n_tensors + 1)) < 0)
        goto out_free;

    g->alignment = PD_GGUF_DEFAULT_ALIGN;
    if ((rc = parse_kvs(&r, g, n_kv)) < 0)
        goto out_free;
    for (size_t i = 0; i < n_tensors; i++) {
        g->n_tensors = i + 1;
        if ((rc = parse_tensor_info(&r, g, i)) < 0)
            goto out_free;
    }
    if ((rc = check_unique(&r, g)) < 0)
        goto out_free;

    /* the data section starts at the next multiple of the alignment */
    uint64_t data_off = ((uint64_t)r.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (n_tensors > 0 && data_off > len) {
        rc = fail(&r, "truncated: no data section");
        goto out_free;
    }
    g->data_off = data_off;
    if ((rc = place_data(&r, g, len, data_off)) < 0)
        goto out_free;
    *out = g;
    return 0;

out_free:
    pd_gguf_free(g);
    return rc;
}

uint32_t pd_gguf_version(const struct pd_gguf *g) { return g->version; }
uint32_t pd_gguf_alignment(const struct pd_gguf *g) { return g->alignment; }
uint64_t pd_gguf_data_offset(const struct pd_gguf *g) { return g->data_off; }
size_t pd_gguf_n_kv(const struct pd_gguf *g) { return g->n_kv; }
size_t pd_gguf_n_tensors(const struct pd_gguf *g) { return g->n_tensors; }

const struct pd_gguf_kv *pd_gguf_kv_at(const struct pd_gguf *g, size_t i)
{
    return i < g->n_kv ? &g->kv[i] : NULL;
}

const struct pd_gguf_tensor *pd_gguf_tensor_at(const struct pd_gguf *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct pd_gguf_kv *pd_gguf_find_kv(const struct pd_gguf *g, const char *key)
{
    for (size_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && strcmp(g->kv[i].key, key) == 0)
            return &g->kv[i];
    return NULL;
}

const struct pd_gguf_tensor *pd_gguf_find_tensor(const struct pd_gguf *g, const char *name)
{
    for (size_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name && strcmp(g->tensors[i].name, name) == 0)
            return &g->tensors[i];
    return NULL;
}

/* Read a scalar of integer type t at p as a signed/unsigned pair. */
static int int_value(uint32_t t, const uint8_t *p, int64_t *sv, uint64_t *uv, bool *neg)
{
    switch (t) {
    case PD_GGUF_U8: case PD_GGUF_U16: case PD_GGUF_U32: case PD_GGUF_U64: case PD_GGUF_BOOL:
        *uv = le(p, scalar_size[t]);
        *neg = false;
        *sv = *uv > INT64_MAX ? INT64_MAX : (int64_t)*uv;
        return 0;
    case PD_GGUF_I8: case PD_GGUF_I16: case PD_GGUF_I32: case PD_GGUF_I64: {
        int bits = scalar_size[t] * 8;
        uint64_t raw = le(p, scalar_size[t]);
        if (bits < 64 && (raw >> (bits - 1)) & 1)
            raw |= ~0ull << bits; /* sign-extend */
        memcpy(sv, &raw, 8);
        *neg = *sv < 0;
        *uv = *neg ? 0 : (uint64_t)*sv;
        return 0;
    }
    default:
        return -EINVAL;
    }
}

static int float_value(uint32_t t, const uint8_t *p, double *out)
{
    if (t == PD_GGUF_F32) {
        uint32_t b = (uint32_t)le(p, 4);
        float f;
        memcpy(&f, &b, 4);
        *out = f;
        return 0;
    }
    if (t == PD_GGUF_F64) {
        uint64_t b = le(p, 8);
        memcpy(out, &b, 8);
        return 0;
    }
    return -EINVAL;
}

int pd_gguf_get_u64(const struct pd_gguf *g, const char *key, uint64_t *out)
{
    const struct pd_gguf_kv *kv = pd_gguf_find_kv(g, key);
    int64_t sv;
    uint64_t uv;
    bool neg;
    if (!kv)
        return -ENOENT;
    if (kv->type == PD_GGUF_BOOL || int_value(kv->type, kv->val, &sv, &uv, &neg) < 0 || neg)
        return -EINVAL;
    *out = uv;
    return 0;
}

int pd_gguf_get_u32(const struct pd_gguf *g, const char *key, uint32_t *out)
{
    uint64_t v;
    int rc = pd_gguf_get_u64(g, key, &v);
    if (rc < 0)
        return rc;
    if (v > UINT32_MAX)
        return -EINVAL;
    *out = (uint32_t)v;
    return 0;
}

int pd_gguf_get_f32(const struct pd_gguf *g, const char *key, float *out)
{
    const struct pd_gguf_kv *kv = pd_gguf_find_kv(g, key);
    double d;
    if (!kv)
        return -ENOENT;
    if (float_value(kv->type, kv->val, &d) < 0)
        return -EINVAL;
    *out = (float)d;
    return 0;
}

/* The getters' lookup: key's entry when it has type t; -ENOENT without the
 * key, -EINVAL when its value has another type. */
static int find_typed(const struct pd_gguf *g, const char *key, uint32_t t,
                      const struct pd_gguf_kv **kv)
{
    *kv = pd_gguf_find_kv(g, key);
    if (!*kv)
        return -ENOENT;
    return (*kv)->type == t ? 0 : -EINVAL;
}

int pd_gguf_get_bool(const struct pd_gguf *g, const char *key, int *out)
{
    const struct pd_gguf_kv *kv;
    int rc = find_typed(g, key, PD_GGUF_BOOL, &kv);
    if (rc == 0)
        *out = kv->val[0] != 0;
    return rc;
}

int pd_gguf_get_str(const struct pd_gguf *g, const char *key, const char **s, size_t *len)
{
    const struct pd_gguf_kv *kv;
    int rc = find_typed(g, key, PD_GGUF_STRING, &kv);
    if (rc == 0) {
        *s = (const char *)kv->val;
        *len = (size_t)kv->val_len;
    }
    return rc;
}

int pd_gguf_get_arr(const struct pd_gguf *g, const char *key, uint32_t *elem_type, uint64_t *n)
{
    const struct pd_gguf_kv *kv;
    int rc = find_typed(g, key, PD_GGUF_ARRAY, &kv);
    if (rc == 0) {
        *elem_type = kv->arr_type;
        *n = kv->arr_n;
    }
    return rc;
}

int pd_gguf_arr_str(const struct pd_gguf *g, const struct pd_gguf_kv *kv, uint64_t i,
                    const char **s, size_t *len)
{
    if (kv < g->kv || kv >= g->kv + g->n_kv || kv->type != PD_GGUF_ARRAY ||
        kv->arr_type != PD_GGUF_STRING)
        return -EINVAL;
    if (i >= kv->arr_n)
        return -ERANGE;
    const uint8_t *p = kv->val + g->str_offs[kv - g->kv][i];
    *len = (size_t)le(p, 8);
    *s = (const char *)p + 8;
    return 0;
}

/* Element i of a scalar array: -EINVAL for another kind of value, -ERANGE
 * past its end. */
static int scalar_elem(const struct pd_gguf_kv *kv, uint64_t i, const uint8_t **p)
{
    if (kv->type != PD_GGUF_ARRAY || kv->arr_type >= PD_GGUF_TYPE_COUNT ||
        kv->arr_type == PD_GGUF_STRING)
        return -EINVAL;
    if (i >= kv->arr_n)
        return -ERANGE;
    *p = kv->val + i * scalar_size[kv->arr_type];
    return 0;
}

int pd_gguf_arr_i64(const struct pd_gguf_kv *kv, uint64_t i, int64_t *out)
{
    const uint8_t *p;
    int64_t sv;
    uint64_t uv;
    bool neg;
    int rc = scalar_elem(kv, i, &p);
    if (rc == 0 && (rc = int_value(kv->arr_type, p, &sv, &uv, &neg)) == 0)
        *out = sv;
    return rc;
}

int pd_gguf_arr_f32(const struct pd_gguf_kv *kv, uint64_t i, float *out)
{
    const uint8_t *p;
    double d;
    int rc = scalar_elem(kv, i, &p);
    if (rc == 0 && (rc = float_value(kv->arr_type, p, &d)) == 0)
        *out = (float)d;
    return rc;
}
