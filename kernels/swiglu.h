/* kernels/swiglu: out = silu(gate) * up, elementwise (silu(x) = x / (1 + e^-x)),
 * over rows: gate's and up's rows may be wider than out's (one GEMM's
 * product holding both side by side). */
#ifndef PD_SWIGLU_H
#define PD_SWIGLU_H

#include "pd_kernel.h"
#include "quant.h"

#include <errno.h>

struct pd_swiglu_args {
    float *out; /* (n_rows, dim) of out_type, packed; may equal gate or up when ld is dim
                 * and out float */
    const float *gate; /* (n_rows, dim), row r at gate + r * ld */
    const float *up; /* (n_rows, dim), row r at up + r * ld */
    uint32_t n_rows, dim;
    uint32_t ld; /* >= dim; 0: dim, packed */
    uint32_t out_type; /* PD_DT_F32 (0), or PD_DT_BF16 (uint16_t elements, rounded as
                        * kernels/bf16.h rounds; not in place): a GEMM's input */
};

/* 0, or -EINVAL: ld under dim, an out type other than F32 (0) and BF16
 *, bf16 in place */
PD_HD int pd_swiglu_check(const struct pd_swiglu_args *a)
{
    if (a->ld && a->ld < a->dim)
        return -EINVAL;
    if (a->out_type == 0)
        return 0;
    const void *o = a->out;
    return a->out_type != PD_DT_BF16 || o == (const void *)a->gate || o == (const void *)a->up
        ? -EINVAL
        : 0;
}

PD_BEGIN_DECLS

int pd_swiglu_cpu(const struct pd_swiglu_args *a);
int pd_swiglu_cuda(const struct pd_swiglu_args *a, pd_stream_t stream); /* PD_HAVE_CUDA */

PD_END_DECLS

#endif
