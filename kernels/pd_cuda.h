/* kernels/pd_cuda.h: every CUDA launcher's header in one include, for the
 * engine's CUDA backend (common/engine/engine_cuda.c), whose table calls
 * them. Each launcher takes the same args struct as its CPU reference, with
 * every pointer in device memory, plus the stream to enqueue on; GEMMs go
 * through cuBLAS (matmul.cu).
 */
#ifndef PD_CUDA_H
#define PD_CUDA_H

#include "attention.h"
#include "cuda_util.h"
#include "embed.h"
#include "kv_write.h"
#include "matmul.h"
#include "rmsnorm.h"
#include "rope.h"
#include "sample.h"
#include "swiglu.h"

#endif
