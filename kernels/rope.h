/* kernels/rope: rotary position embedding, in place. Pair i of each head's
 * first rope_dim dims rotates by
 *     theta_i = pos * freq_scale * base^(-2i / rope_dim) / factor_i
 * where pair i is (x[2i], x[2i+1]) (ggml's "normal" mode: GGUF's Llama files
 * store Q/K rows permuted for it) or, with halves, (x[i], x[i + rope_dim/2])
 * (Hugging Face's rotate_half, NeoX's form: checkpoints and GGUF's Qwen).
 * Angles are computed in double; a table of their cosines and sines
 * (pd_rope_table, the same numbers) spares a step the double arithmetic.
 *
 * pd_rope_kv_write_cuda fuses a step's RoPE with its KV write (one launch
 * where there were two): each token's heads rotated, then its K and V rows
 * stored, as pd_rope_cuda then pd_kv_write_cuda would. */
#ifndef PD_ROPE_H
#define PD_ROPE_H

#include "kv_write.h"
#include "pd_kernel.h"

#include <math.h>

struct pd_rope_args {
    float *x; /* (n_tokens, n_heads, head_dim), rotated in place; token t's heads at x + t * ld */
    const int32_t *pos; /* (n_tokens) positions */
    uint32_t n_tokens, n_heads, head_dim, rope_dim; /* rope_dim even, <= head_dim */
    float freq_base;
    float freq_scale; /* 1 / linear scaling factor */
    const float *freq_factors; /* (rope_dim / 2) or NULL */
    uint32_t halves; /* 0: adjacent pairs; 1: the two halves of rope_dim */
    uint32_t ld; /* elements from one token's heads to the next (>= n_heads * head_dim);
                  * 0: packed. q's and k's heads side by side in one row take one call */
    /* NULL, or (table_len, rope_dim / 2) pairs {cos, sin} of these
     * parameters' angles (pd_rope_table): read for positions in [0,
     * table_len), computed for others. Device memory for CUDA */
    const float *table;
    uint32_t table_len;
};

/* Elements from token t's heads to token t + 1's. */
PD_HD uint64_t pd_rope_ld(const struct pd_rope_args *a)
{
    return a->ld ? a->ld : (uint64_t)a->n_heads * a->head_dim;
}

/* Where pair i's two elements are in a head. */
PD_HD void pd_rope_pair(const struct pd_rope_args *a, uint32_t i, uint32_t *i0, uint32_t *i1)
{
    *i0 = a->halves ? i : 2 * i;
    *i1 = a->halves ? i + a->rope_dim / 2 : 2 * i + 1;
}

#define PD_ROPE_MAX_HALF 1024 /* rope_dim / 2 at most */

/* What every rope refuses (-EINVAL, nothing rotated): an odd rope_dim, one
 * past the head or PD_ROPE_MAX_HALF pairs, rows shorter than the heads. */
PD_HD int pd_rope_refused(const struct pd_rope_args *a)
{
    return a->rope_dim % 2 || a->rope_dim > a->head_dim || a->rope_dim / 2 > PD_ROPE_MAX_HALF ||
        (a->ld && a->ld < (uint64_t)a->n_heads * a->head_dim);
}

/* Pair i's inverse frequency, base^(-2i / rope_dim), in double. */
PD_HD double pd_rope_inv_freq(uint32_t i, uint32_t rope_dim, float freq_base)
{
    return pow((double)freq_base, -2.0 * i / rope_dim);
}

/* The angle of pair i at position pos from its inverse frequency. */
PD_HD double pd_rope_angle(int32_t pos, double inv, uint32_t i, float freq_scale,
                           const float *freq_factors)
{
    double theta = (double)pos * freq_scale * inv;
    if (freq_factors)
        theta /= freq_factors[i];
    return theta;
}

/* The angle of pair i at position pos, in double, as both paths compute it. */
PD_HD double pd_rope_theta(int32_t pos, uint32_t i, uint32_t rope_dim, float freq_base,
                           float freq_scale, const float *freq_factors)
{
    return pd_rope_angle(pos, pd_rope_inv_freq(i, rope_dim, freq_base), i, freq_scale,
                         freq_factors);
}

PD_BEGIN_DECLS

int pd_rope_cpu(const struct pd_rope_args *a);
/* The {cos, sin} of a's angles (its table ignored) at positions [0, n_pos):
 * out (n_pos, rope_dim / 2, 2) floats, as pd_rope_cpu rounds them. -EINVAL
 * for a's refusals */
int pd_rope_table(const struct pd_rope_args *a, uint32_t n_pos, float *out);
/* CUDA (PD_HAVE_CUDA builds); freq_factors, like x and pos, in device memory */
int pd_rope_cuda(const struct pd_rope_args *a, pd_stream_t stream);
/* r, then w, in one launch: token t's heads rotated, then its K and V rows
 * written. Token t's k and v may lie in r's rows of token t (the engine's
 * q, k, v rows) and are read after its rotation; not in another token's.
 * Each side's refusals (-EINVAL, nothing written), and n_tokens must agree */
int pd_rope_kv_write_cuda(const struct pd_rope_args *r, const struct pd_kv_write_args *w,
                          pd_stream_t stream);

PD_END_DECLS

#endif
