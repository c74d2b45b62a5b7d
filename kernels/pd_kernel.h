/* kernels/pd_kernel.h: what every kernel header shares.
 *
 * Each op has an args struct (pointers with their shapes in comments) that the
 * CPU reference (`<op>.c`) and the CUDA kernel (`<op>.cu`) both take, and index
 * helpers marked PD_HD so host code, device code and CPU tests compute the
 * same offsets. Launchers return 0 or a negative errno; they never abort.
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

#endif
