/* kernels/matmul: y = x W^T (+ y when accumulate), the projection of every
 * linear layer. W is stored as ggml stores it: n rows of k contiguous inputs
 * (ne = {k, n}). The CPU path is OpenBLAS sgemm; the CUDA path cuBLAS. */
#ifndef PD_MATMUL_H
#define PD_MATMUL_H

#include "pd_kernel.h"

struct pd_matmul_args {
    float *y; /* (m, n) */
    const float *x; /* (m, k) */
    const float *w; /* (n, k) */
    uint32_t m, n, k;
    int accumulate; /* y += x W^T instead of y = x W^T (residual connections) */
};

PD_BEGIN_DECLS

int pd_matmul_cpu(const struct pd_matmul_args *a);

PD_END_DECLS

#endif
