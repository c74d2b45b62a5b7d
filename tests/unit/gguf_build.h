/* Test helper: build GGUF images byte by byte, so tests can write both valid
 * files and every kind of malformed one. */
#ifndef PD_TEST_GGUF_BUILD_H
#define PD_TEST_GGUF_BUILD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct gb {
    uint8_t *p;
    size_t n, cap;
};

static inline void gb_bytes(struct gb *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}

static inline void gb_u32(struct gb *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    gb_bytes(b, x, 4);
}

static inline void gb_u64(struct gb *b, uint64_t v)
{
    gb_u32(b, (uint32_t)v);
    gb_u32(b, (uint32_t)(v >> 32));
}

static inline void gb_f32(struct gb *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    gb_u32(b, u);
}

static inline void gb_str(struct gb *b, const char *s)
{
    gb_u64(b, strlen(s));
    gb_bytes(b, s, strlen(s));
}

static inline void gb_pad(struct gb *b, size_t align)
{
    static const uint8_t z[64];
    gb_bytes(b, z, (align - b->n % align) % align);
}

/* kv helpers: key then type then value */
static inline void gb_kv_u32(struct gb *b, const char *k, uint32_t v)
{
    gb_str(b, k), gb_u32(b, 4), gb_u32(b, v);
}

static inline void gb_kv_f32(struct gb *b, const char *k, float v)
{
    gb_str(b, k), gb_u32(b, 6), gb_f32(b, v);
}

static inline void gb_kv_str(struct gb *b, const char *k, const char *v)
{
    gb_str(b, k), gb_u32(b, 8), gb_str(b, v);
}

/* tensor info: name, dims, type, offset */
static inline void gb_tensor(struct gb *b, const char *name, uint32_t nd, const uint64_t *ne,
                             uint32_t type, uint64_t off)
{
    gb_str(b, name);
    gb_u32(b, nd);
    for (uint32_t i = 0; i < nd; i++)
        gb_u64(b, ne[i]);
    gb_u32(b, type);
    gb_u64(b, off);
}

#endif
