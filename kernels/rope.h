/* kernels/rope: rotary position embedding, in place. Pair i of each head's
 * first rope_dim dims rotates by
 *     theta_i = pos * freq_scale * base^(-2i / rope_dim) / factor_i
 * where pair i is (x[2i], x[2i+1]) (ggml's "normal" mode: GGUF's Llama files
 * store Q/K rows permuted for it) or, with halves, (x[i], x[i + rope_dim/2])
 * (Hugging Face's rotate_half, NeoX's form: checkpoints and GGUF's Qwen).
 * Angles are computed in double. */
#ifndef PD_ROPE_H
#define PD_ROPE_H

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

/* The angle of pair i at position pos, in double, as both paths compute it. */
PD_HD double pd_rope_theta(int32_t pos, uint32_t i, uint32_t rope_dim, float freq_base,
                           float freq_scale, const float *freq_factors)
{
    double inv = pow((double)freq_base, -2.0 * i / rope_dim);
    double theta = (double)pos * freq_scale * inv;
    if (freq_factors)
        theta /= freq_factors[i];
    return theta;
}

PD_BEGIN_DECLS

int pd_rope_cpu(const struct pd_rope_args *a);
/* CUDA (PD_HAVE_CUDA builds); freq_factors, like x and pos, in device memory */
int pd_rope_cuda(const struct pd_rope_args *a, pd_stream_t stream);

PD_END_DECLS

#endif
