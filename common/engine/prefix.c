#include "prefix.h"

#include "frame.h"
#include "kvcache.h"

#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* one name, three spellings: the pool's index, the chain, the PREFILL frame */
_Static_assert(PD_PREFIX_HASH_LEN == PD_KV_HASH_LEN && PD_PREFIX_HASH_LEN == PD_PREFIX_NAME_LEN,
               "a block's name is 32 bytes everywhere");

static void put_u32(crypto_generichash_state *st, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    crypto_generichash_update(st, b, sizeof(b));
}

static void put_u64(crypto_generichash_state *st, uint64_t v)
{
    put_u32(st, (uint32_t)v);
    put_u32(st, (uint32_t)(v >> 32));
}

static void label(crypto_generichash_state *st, const char *s)
{
    crypto_generichash_init(st, NULL, 0, PD_PREFIX_HASH_LEN);
    crypto_generichash_update(st, (const uint8_t *)s, strlen(s) + 1); /* with its NUL */
}

void pd_prefix_salt(const void *salt, size_t len, uint8_t out[PD_PREFIX_HASH_LEN])
{
    crypto_generichash_state st;
    label(&st, "pdserve prefix salt v1");
    crypto_generichash_update(&st, salt, len);
    crypto_generichash_final(&st, out, PD_PREFIX_HASH_LEN);
}

void pd_prefix_root(const struct pd_kv_layout *l, const uint8_t salt[PD_PREFIX_HASH_LEN],
                    uint8_t out[PD_PREFIX_HASH_LEN])
{
    crypto_generichash_state st;
    label(&st, "pdserve prefix root v1");
    put_u32(&st, l->n_layer);
    put_u32(&st, l->n_head_kv);
    put_u32(&st, l->head_dim);
    put_u32(&st, l->block_size);
    put_u32(&st, l->kv_dtype);
    put_u64(&st, l->block_bytes);
    crypto_generichash_update(&st, l->fingerprint, sizeof(l->fingerprint));
    crypto_generichash_update(&st, salt, PD_PREFIX_HASH_LEN);
    crypto_generichash_final(&st, out, PD_PREFIX_HASH_LEN);
}

void pd_prefix_chain(const uint8_t parent[PD_PREFIX_HASH_LEN], const int32_t *tokens, uint32_t n,
                     uint8_t out[PD_PREFIX_HASH_LEN])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, PD_PREFIX_HASH_LEN);
    crypto_generichash_update(&st, parent, PD_PREFIX_HASH_LEN);
    for (uint32_t i = 0; i < n; i++)
        put_u32(&st, (uint32_t)tokens[i]);
    crypto_generichash_final(&st, out, PD_PREFIX_HASH_LEN);
}

void pd_prefix_seq_init(struct pd_prefix_seq *p, const uint8_t root[PD_PREFIX_HASH_LEN])
{
    memset(p, 0, sizeof(*p));
    memcpy(p->root, root, PD_PREFIX_HASH_LEN);
}

int pd_prefix_seq_extend(struct pd_prefix_seq *p, const int32_t *tokens, uint32_t n_tokens,
                         uint32_t block_size)
{
    uint32_t full = n_tokens / block_size;
    if (full <= p->n)
        return 0;
    if (full > p->cap) {
        uint32_t cap = p->cap ? p->cap : 16;
        while (cap < full)
            cap *= 2;
        void *h = realloc(p->h, (size_t)cap * PD_PREFIX_HASH_LEN);
        if (!h)
            return -ENOMEM;
        p->h = h;
        p->cap = cap;
    }
    for (uint32_t i = p->n; i < full; i++)
        pd_prefix_chain(i ? p->h[i - 1] : p->root, tokens + (size_t)i * block_size, block_size,
                        p->h[i]);
    p->n = full;
    return 0;
}

void pd_prefix_seq_cut(struct pd_prefix_seq *p, uint32_t n)
{
    if (n < p->n)
        p->n = n;
}

void pd_prefix_seq_done(struct pd_prefix_seq *p)
{
    free(p->h);
    memset(p, 0, sizeof(*p));
}
