/* kernels/rmsnorm: out = in / sqrt(mean(in^2) + eps) * weight, per row;
 * out in float, or rounded to bf16 (a GEMM's input beside bf16 matrices:
 * the same bits as rounding the float out afterwards). */
#ifndef PD_RMSNORM_H
#define PD_RMSNORM_H

#include "pd_kernel.h"
#include "quant.h"

#include <errno.h>

struct pd_rmsnorm_args {
    float *out; /* (n_rows, dim) of out_type; may equal in when float */
    const float *in; /* (n_rows, dim) */
    const float *weight; /* (dim) */
    uint32_t n_rows, dim;
    float eps;
    /* 0: rows packed. Else rows come per_token to a token (a token's heads),
     * token t's at t * ld (>= per_token * dim) in and out alike: the heads
     * of q or k in rows of q, k and v */
    uint32_t per_token, ld;
    uint32_t out_type; /* PD_DT_F32 (0), or PD_DT_BF16 (uint16_t elements; not in place) */
};

/* Where row r starts, in elements from in (and out). */
PD_HD uint64_t pd_rmsnorm_row(const struct pd_rmsnorm_args *a, uint32_t r)
{
    if (!a->per_token)
        return (uint64_t)r * a->dim;
    return (uint64_t)(r / a->per_token) * a->ld + (uint64_t)(r % a->per_token) * a->dim;
}

/* 0, or -EINVAL for a stride that would overlap a token's rows, or an out
 * type other than F32 (0) and BF16, or
 * bf16 in place */
PD_HD int pd_rmsnorm_check(const struct pd_rmsnorm_args *a)
{
    if (a->out_type != 0 &&
        (a->out_type != PD_DT_BF16 || (const void *)a->out == (const void *)a->in))
        return -EINVAL;
    return a->per_token && a->ld < (uint64_t)a->per_token * a->dim ? -EINVAL : 0;
}
PD_BEGIN_DECLS

int pd_rmsnorm_cpu(const struct pd_rmsnorm_args *a);
/* CUDA (PD_HAVE_CUDA builds): -EINVAL for dim 0 or more than INT32_MAX rows */
int pd_rmsnorm_cuda(const struct pd_rmsnorm_args *a, pd_stream_t stream);

PD_END_DECLS

#endif
