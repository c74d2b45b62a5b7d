/* kernels/swiglu: out = silu(gate) * up, elementwise (silu(x) = x / (1 + e^-x)). */
#ifndef PD_SWIGLU_H
#define PD_SWIGLU_H

#include "pd_kernel.h"

struct pd_swiglu_args {
    float *out; /* (n) ; may equal gate or up */
    const float *gate; /* (n) */
    const float *up; /* (n) */
    uint64_t n;
};

PD_BEGIN_DECLS

int pd_swiglu_cpu(const struct pd_swiglu_args *a);
int pd_swiglu_cuda(const struct pd_swiglu_args *a, pd_stream_t stream); /* PD_HAVE_CUDA */

PD_END_DECLS

#endif
