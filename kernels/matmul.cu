/* kernels/matmul.cu: y = x W^T through cuBLAS (cublasGemmEx), fp32
 * accumulation throughout; fp32 operands, or bf16 x and W (the GPU engine's
 * weights) with a float or bf16 y; a float x with bf16 W is rounded to bf16
 * into the caller's x_scratch first (cuBLAS wants both operands alike).
 *
 * Row-major y (m, n) = x (m, k) W^T, W (n, k) rows as ggml stores them, is in
 * cuBLAS's column-major terms y^T (n x m, ld n) = op(W') x' where W' is W
 * read column-major (k x n, ld k) and transposed, x' is x read column-major
 * (k x m, ld k): cublasGemmEx(OP_T, OP_N, n, m, k, W, k, x, k, y, n).
 *
 * One cuBLAS handle per thread and device, made on first use and kept for
 * the thread's life (the engine calls from its one compute thread); the
 * stream is set on every call. cuBLAS statuses become negative errno here,
 * the status noted as the thread's last CUDA error (pd_cuda_set_error). */
#include "bf16.h"
#include "cuda_check.cuh"
#include "matmul.h"
#include "quant.h"

#include <cublas_v2.h>
#include <stdio.h>

#define MAX_DEVICES 16

static int cublas_errno(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS:
        return 0;
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return -ENODEV;
    case CUBLAS_STATUS_ALLOC_FAILED:
        return -ENOMEM;
    case CUBLAS_STATUS_INVALID_VALUE:
        return -EINVAL;
    case CUBLAS_STATUS_ARCH_MISMATCH:
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return -ENOTSUP;
    default: /* mapping error, execution failed, internal error, license */
        return -EIO;
    }
}

static int cublas_fail(cublasStatus_t s, const char *what)
{
    char line[256];
    snprintf(line, sizeof line, "cublas: %s: status %d", what, (int)s);
    pd_cuda_set_error(line);
    return cublas_errno(s);
}

static int handle_for_this_thread(cublasHandle_t *out)
{
    static thread_local cublasHandle_t handles[MAX_DEVICES];
    int dev = 0;
    cublasStatus_t s;

    PD_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
    if (dev < 0 || dev >= MAX_DEVICES)
        return -ENOTSUP;
    if (!handles[dev] && (s = cublasCreate(&handles[dev])) != CUBLAS_STATUS_SUCCESS) {
        handles[dev] = NULL;
        return cublas_fail(s, "cublasCreate");
    }
    *out = handles[dev];
    return 0;
}

/* float x rounded to bf16 (kernels/bf16.h's rounding), for a bf16 W */
__global__ void to_bf16_kernel(uint16_t *out, const float *in, uint64_t n)
{
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x)
        out[i] = pd_bf16_encode(in[i]);
}

extern "C" int pd_matmul_cuda(const struct pd_matmul_args *a, pd_stream_t stream)
{
    const bool f32 = a->x_type == PD_DT_F32 && a->w_type == PD_DT_F32 && a->y_type == PD_DT_F32;
    /* a float x with a bf16 W goes through x_scratch, rounded */
    const bool x_f32 = a->x_type == PD_DT_F32 && a->w_type == PD_DT_BF16;
    const bool bf = (a->x_type == PD_DT_BF16 || x_f32) && a->w_type == PD_DT_BF16 &&
                    (a->y_type == PD_DT_F32 || a->y_type == PD_DT_BF16);
    const void *x = a->x;
    cublasHandle_t h = NULL;
    cublasStatus_t s;
    int rc;

    if (!f32 && !bf)
        return -EINVAL;
    const uint32_t ldy = a->ldy ? a->ldy : a->n;
    if (a->m > INT32_MAX || a->n > INT32_MAX || a->k > INT32_MAX || ldy > INT32_MAX ||
        ldy < a->n || (x_f32 && !a->x_scratch))
        return -EINVAL;
    if (a->m == 0 || a->n == 0)
        return 0;
    if (x_f32) {
        const uint64_t n = (uint64_t)a->m * a->k;
        to_bf16_kernel<<<pd_cuda_blocks(n, 256), 256, 0, pd_cuda_stream(stream)>>>(
            (uint16_t *)a->x_scratch, a->x, n);
        if ((rc = pd_cuda_launched("to_bf16_kernel")) < 0)
            return rc;
        x = a->x_scratch;
    }
    if ((rc = handle_for_this_thread(&h)) < 0)
        return rc;
    if ((s = cublasSetStream(h, pd_cuda_stream(stream))) != CUBLAS_STATUS_SUCCESS)
        return cublas_fail(s, "cublasSetStream");
    /* setting the stream put cuBLAS back on its own pool: ours again, so a
     * captured graph's GEMMs use the one buffer, not a new one per capture */
    if (a->gpu_ws && (s = cublasSetWorkspace(h, a->gpu_ws, a->gpu_ws_bytes)) !=
                         CUBLAS_STATUS_SUCCESS)
        return cublas_fail(s, "cublasSetWorkspace");
    const float alpha = 1.0f, beta = a->accumulate ? 1.0f : 0.0f;
    const cudaDataType_t in = bf ? CUDA_R_16BF : CUDA_R_32F;
    const cudaDataType_t out = a->y_type == PD_DT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)a->n, (int)a->m, (int)a->k, &alpha, a->w,
                     in, (int)a->k, x, in, (int)a->k, &beta, a->y, out, (int)ldy,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return s == CUBLAS_STATUS_SUCCESS ? 0 : cublas_fail(s, "cublasGemmEx");
}
