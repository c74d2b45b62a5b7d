/* kernels/matmul: y = x W^T (+ y when accumulate), the projection of every
 * linear layer. W is stored as ggml stores it: n rows of k contiguous inputs
 * (ne = {k, n}). The CPU path is OpenBLAS sgemm (fp32 only); the CUDA path
 * cuBLAS (matmul.cu), fp32 or bf16 operands, always accumulating in fp32. */
#ifndef PD_MATMUL_H
#define PD_MATMUL_H

#include "pd_kernel.h"

struct pd_matmul_args {
    float *y; /* (m, n) */
    const float *x; /* (m, k) */
    const float *w; /* (n, k) */
    uint32_t m, n, k;
    int accumulate; /* y += x W^T instead of y = x W^T (residual connections) */
    /* element types; zero (F32) is the CPU engine's and the only one the CPU
     * takes. CUDA: all F32, or w BF16 with x BF16 or F32 and y F32 or BF16 */
    uint32_t x_type, w_type, y_type;
    void *x_scratch; /* CUDA, x F32 with w BF16: (m, k) bf16, x rounded into it first */
};

PD_BEGIN_DECLS

int pd_matmul_cpu(const struct pd_matmul_args *a);
int pd_matmul_cuda(const struct pd_matmul_args *a, pd_stream_t stream); /* PD_HAVE_CUDA */

PD_END_DECLS

#endif
