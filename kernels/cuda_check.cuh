/* kernels/cuda_check.cuh: what every .cu file uses to check CUDA calls and
 * launches (private to kernels/). A failure is logged once by pd_cuda_fail
 * and comes back as a negative errno; nothing aborts. */
#ifndef PD_CUDA_CHECK_CUH
#define PD_CUDA_CHECK_CUH

#include "cuda_util.h"

#include <cuda_runtime.h>
#include <errno.h>

/* Return from the enclosing int function when a CUDA call fails. */
#define PD_CUDA_TRY(call, what)                                                \
    do {                                                                       \
        cudaError_t e_ = (call);                                               \
        if (e_ != cudaSuccess)                                                 \
            return pd_cuda_fail((int)e_, (what));                              \
    } while (0)

/* After a <<<...>>> launch: a bad configuration or a missing kernel image
 * shows here; a fault inside the kernel shows at the next synchronizing call. */
static inline int pd_cuda_launched(const char *kernel)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : pd_cuda_fail((int)e, kernel);
}

static inline cudaStream_t pd_cuda_stream(pd_stream_t s)
{
    return (cudaStream_t)s;
}

/* Grid x dimension for n items of `per` each, capped for grid-stride loops. */
static inline unsigned pd_cuda_blocks(uint64_t n, unsigned per)
{
    uint64_t b = (n + per - 1) / per;
    return (unsigned)(b > 65535u * 32u ? 65535u * 32u : (b ? b : 1));
}

#endif
