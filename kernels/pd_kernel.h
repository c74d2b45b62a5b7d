/* kernels/pd_kernel.h: what every kernel header shares.
 *
 * Each op has an args struct (pointers with their shapes in comments) that the
 * CPU reference (`<op>.c`) and the CUDA kernel (`<op>.cu`) both take, and index
 * helpers marked PD_HD so host code, device code and CPU tests compute the
 * same offsets. Launchers return 0 or a negative errno; they never abort.
 *
 * CUDA launchers (`pd_<op>_cuda(args, stream)`, defined in `<op>.cu`, built
 * only when PD_HAVE_CUDA) are declared in the op's header beside the CPU
 * function, with C linkage, taking a pd_stream_t: CUDA's cudaStream_t by
 * another name, so C code needs no CUDA header (NULL = the default stream).
 * They check their arguments on the host, enqueue, check the launch, and do
 * not synchronize: a kernel's own failure surfaces at the next checked call.
 */
#ifndef PD_KERNEL_H
#define PD_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define PD_HD __host__ __device__ __forceinline__
#else
#define PD_HD static inline
#endif

#ifdef __cplusplus
#define PD_BEGIN_DECLS extern "C" {
#define PD_END_DECLS }
#else
#define PD_BEGIN_DECLS
#define PD_END_DECLS
#endif

/* cudaStream_t is `struct CUstream_st *` (cuda_runtime_api.h) */
struct CUstream_st;
typedef struct CUstream_st *pd_stream_t;

#endif
