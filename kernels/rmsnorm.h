/* kernels/rmsnorm: out = in / sqrt(mean(in^2) + eps) * weight, per row. */
#ifndef PD_RMSNORM_H
#define PD_RMSNORM_H

#include "pd_kernel.h"

struct pd_rmsnorm_args {
    float *out; /* (n_rows, dim); may equal in */
    const float *in; /* (n_rows, dim) */
    const float *weight; /* (dim) */
    uint32_t n_rows, dim;
    float eps;
};

PD_BEGIN_DECLS

int pd_rmsnorm_cpu(const struct pd_rmsnorm_args *a);
/* CUDA (PD_HAVE_CUDA builds): -EINVAL for dim 0 or more than INT32_MAX rows */
int pd_rmsnorm_cuda(const struct pd_rmsnorm_args *a, pd_stream_t stream);

PD_END_DECLS

#endif
