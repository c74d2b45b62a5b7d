/* kernels/matmul: y = x W^T (+ y when accumulate), the projection of every
 * linear layer. W is stored as ggml stores it: n rows of k contiguous inputs
 * (ne = {k, n}).
 *
 * CPU (matmul.c): W in any type kernels/qdot knows (Q4_0, Q4_1, Q8_0, Q4_K,
 * Q6_K, F16, BF16) or F32, x and y fp32. Each thread of `pool` takes a share
 * of W's rows and reads it once for all m rows of x:
 *   - m <= pd_matmul_dots_max_m(type, act_q8): kernels/qdot's dots, with
 *     float activations (each row unpacked a chunk at a time in L1), or with
 *     act_q8 x quantized per block of 32 into ws first (llama.cpp's numbers:
 *     faster, and further from the float model's);
 *   - else, and always for F32: W's rows unpacked a tile at a time into ws
 *     and multiplied by OpenBLAS sgemm on one thread (matmul keeps OpenBLAS
 *     to one thread: the pool's threads are the only ones).
 * ws holds pd_matmul_cpu_ws_bytes for the largest m, k and pool size it is
 * used with. The CUDA path is cuBLAS (matmul.cu), fp32 or bf16 operands,
 * always accumulating in fp32.
 */
#ifndef PD_MATMUL_H
#define PD_MATMUL_H

#include "pd_kernel.h"

#include <stdbool.h>
#include <stddef.h>

struct pd_pool;

struct pd_matmul_args {
    float *y; /* (m, n), row i at y + i * ldy */
    const float *x; /* (m, k) */
    const void *w; /* (n, k) in w_type */
    uint32_t m, n, k;
    int accumulate; /* y += x W^T instead of y = x W^T (residual connections) */
    uint32_t ldy; /* elements from one row of y to the next (>= n); 0: n, packed. A
                   * wider row takes several products side by side (q, k and v) */
    /* element types. CPU: x and y F32, w as above. CUDA: all F32, or w BF16
     * with x BF16 or F32 and y F32 or BF16 */
    uint32_t x_type, w_type, y_type;
    void *x_scratch; /* CUDA, x F32 with w BF16: (m, k) bf16, x rounded into it first */
    /* CUDA: cuBLAS's workspace, device memory of gpu_ws_bytes the caller owns
     * (NULL: cuBLAS's own pool, which grows with every CUDA graph captured
     * on the handle's stream); PD_MATMUL_CUBLAS_WS is NVIDIA's size for Hopper */
    void *gpu_ws;
    size_t gpu_ws_bytes;
    /* CPU */
    struct pd_pool *pool; /* the threads (common/base/parallel); NULL: the caller's */
    void *ws; /* pd_matmul_cpu_ws_bytes(m, k, pd_pool_size(pool)) bytes */
    int isa; /* enum pd_isa of the dots, one this CPU runs (else -EINVAL); 0 the scalar
              * reference (pd_isa_best() in engines) */
    int act_q8; /* the dots quantize x to 8 bits per block of 32 */
    uint32_t dots_max_m; /* 0: pd_matmul_dots_max_m's; else the crossover (benches, tests) */
};

#define PD_MATMUL_CUBLAS_WS (32u << 20)

PD_BEGIN_DECLS

int pd_matmul_cpu(const struct pd_matmul_args *a);
/* workspace for up to m rows of x of k inputs on `threads` threads */
size_t pd_matmul_cpu_ws_bytes(uint32_t m, uint32_t k, unsigned threads);
/* the largest m the dots take (above it: unpacked tiles and sgemm) */
uint32_t pd_matmul_dots_max_m(uint32_t w_type, bool act_q8);
int pd_matmul_cuda(const struct pd_matmul_args *a, pd_stream_t stream); /* PD_HAVE_CUDA */

PD_END_DECLS

#endif
