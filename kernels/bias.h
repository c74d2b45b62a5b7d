/* kernels/bias: x[r][i] += bias[i], per row (Qwen2's q/k/v bias, after the
 * projection's GEMM). */
#ifndef PD_BIAS_H
#define PD_BIAS_H

#include "pd_kernel.h"

struct pd_bias_args {
    float *x; /* (n_rows, dim), in place, row r at x + r * ld */
    const float *bias; /* (dim) */
    uint32_t n_rows, dim;
    uint32_t ld; /* >= dim; 0: dim, packed */
};

PD_BEGIN_DECLS

int pd_bias_cpu(const struct pd_bias_args *a);
int pd_bias_cuda(const struct pd_bias_args *a, pd_stream_t stream); /* PD_HAVE_CUDA */

PD_END_DECLS

#endif
