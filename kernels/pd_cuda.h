/* kernels/pd_cuda.h: the CUDA kernels as one table, as the engine will pick
 * them per device (its CPU table is common/engine.c's `cpu_kernels`).
 *
 *   #include "pd_config.h"
 *   #if PD_HAVE_CUDA
 *   const struct pd_cuda_kernels *k = &pd_cuda_kernels;
 *   if ((rc = k->rmsnorm(&args, stream)) < 0) ...
 *   #endif
 *
 * Each entry takes the same args struct as the CPU reference, with every
 * pointer in device memory, plus the stream to enqueue on; GEMMs go through
 * cuBLAS (matmul.cu).
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
#include "swiglu.h"

struct pd_cuda_kernels {
    int (*embed)(const struct pd_embed_args *, pd_stream_t);
    int (*rmsnorm)(const struct pd_rmsnorm_args *, pd_stream_t);
    int (*rope)(const struct pd_rope_args *, pd_stream_t);
    int (*kv_write)(const struct pd_kv_write_args *, pd_stream_t);
    int (*attention)(const struct pd_attn_args *, pd_stream_t);
    int (*attention_prefill)(const struct pd_attn_args *, pd_stream_t); /* -ENOTSUP: use attention */
    int (*swiglu)(const struct pd_swiglu_args *, pd_stream_t);
    int (*matmul)(const struct pd_matmul_args *, pd_stream_t);
};

#if PD_HAVE_CUDA
extern const struct pd_cuda_kernels pd_cuda_kernels;
#endif

#endif
