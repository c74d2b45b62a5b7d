/* kernels/attention: causal attention of query tokens over their sequences'
 * paged KV (prefill chunks and decode steps alike).
 *
 * Token t belongs to sequence tok_seq[t] at position tok_pos[t] and attends to
 * positions [0, tok_pos[t]] of that sequence, whose K/V (already written, the
 * token's own included) live in the blocks block_tables[seq][pos / block_size].
 * GQA: query head h reads KV head h / (n_head / n_head_kv).
 *
 * CPU path: a run of consecutive tokens of one sequence (a prefill chunk)
 * gathers each KV head's tiles once and does Q K^T and P V as GEMMs (the
 * block layout makes a head's tile one memcpy); a lone token (a decode step)
 * is a direct loop. `scratch` bounds the memory a call may use. */
#ifndef PD_ATTENTION_H
#define PD_ATTENTION_H

#include "kv_layout.h"

struct pd_attn_args {
    float *out; /* (n_tokens, n_head, head_dim) */
    const float *q; /* (n_tokens, n_head, head_dim), RoPE applied */
    const float *pool; /* kv_layout.h */
    struct pd_kv_layout kv;
    uint32_t layer;
    uint32_t n_tokens, n_head;
    const int32_t *tok_seq; /* (n_tokens) index into block_tables */
    const int32_t *tok_pos; /* (n_tokens) */
    const uint32_t *block_tables; /* (n_seqs, max_blocks) block ids */
    uint32_t max_blocks;
    float scale; /* 1 / sqrt(head_dim) */
};

int pd_attention_cpu(const struct pd_attn_args *a);

#endif
