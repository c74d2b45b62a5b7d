/* common/engine/prefix: the names of cached KV blocks (prefix caching).
 *
 *   uint8_t salt[PD_PREFIX_HASH_LEN], root[PD_PREFIX_HASH_LEN];
 *   pd_prefix_salt(req_salt, strlen(req_salt), salt);   // or memset 0: no cache_salt
 *   pd_prefix_root(&layout, salt, root);                // layout: pd_engine_kv_layout
 *   struct pd_prefix_seq ph;
 *   pd_prefix_seq_init(&ph, root);
 *   if (pd_prefix_seq_extend(&ph, toks, n_full_tokens, block_size) < 0) ...   // -ENOMEM
 *   ... ph.h[i] names block i; pd_kvseq_map_prefix / pd_kvseq_publish (kvcache.h) take them
 *   pd_prefix_seq_done(&ph);
 *
 * A full block is named by a chain hash (DESIGN.md), BLAKE2b-256 throughout:
 *   salt  = BLAKE2b("pdserve prefix salt v1" || cache_salt)        (zeros: no salt)
 *   root  = BLAKE2b("pdserve prefix root v1" || the KV layout (geometry, element type,
 *           block bytes, the model's fingerprint) || salt)
 *   h[0]  = BLAKE2b(root || LE32 tokens[0, bs)),  h[i] = BLAKE2b(h[i-1] || LE32 tokens of block i)
 * so a block's name covers every token before it and their positions, the
 * model, the KV layout and the tenant's salt: different models, element
 * types, block sizes or salts never share a name, and a cryptographic hash
 * leaves no collision to craft (vLLM's CVE-2025-25183 came from Python's
 * hash()). Only the salt's digest travels (the PREFILL frame); the salt
 * itself stays in decoded.
 */
#ifndef PD_PREFIX_H
#define PD_PREFIX_H

#include "handshake.h"

#include <stddef.h>
#include <stdint.h>

#define PD_PREFIX_HASH_LEN 32
#define PD_PREFIX_MAX_SALT 256 /* bytes of a request's cache_salt */

/* A sequence's block names, computed as its blocks fill. h is owned. */
struct pd_prefix_seq {
    uint8_t root[PD_PREFIX_HASH_LEN];
    uint8_t (*h)[PD_PREFIX_HASH_LEN]; /* (n) names of blocks [0, n) */
    uint32_t n, cap;
};

void pd_prefix_salt(const void *salt, size_t len, uint8_t out[PD_PREFIX_HASH_LEN]);
void pd_prefix_root(const struct pd_kv_layout *l, const uint8_t salt[PD_PREFIX_HASH_LEN],
                    uint8_t out[PD_PREFIX_HASH_LEN]);
/* One link: out = BLAKE2b(parent || LE32 tokens[0, n)). */
void pd_prefix_chain(const uint8_t parent[PD_PREFIX_HASH_LEN], const int32_t *tokens, uint32_t n,
                     uint8_t out[PD_PREFIX_HASH_LEN]);

void pd_prefix_seq_init(struct pd_prefix_seq *p, const uint8_t root[PD_PREFIX_HASH_LEN]);
/* Names every full block of tokens[0, n_tokens) not named yet (the tokens
 * of blocks named before must not have changed). 0 or -ENOMEM (nothing
 * changed). */
int pd_prefix_seq_extend(struct pd_prefix_seq *p, const int32_t *tokens, uint32_t n_tokens,
                         uint32_t block_size);
/* Forget the names from block n on (tokens changed there). */
void pd_prefix_seq_cut(struct pd_prefix_seq *p, uint32_t n);
void pd_prefix_seq_done(struct pd_prefix_seq *p);

#endif
