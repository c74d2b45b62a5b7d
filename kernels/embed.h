/* kernels/embed: gather token rows from the embedding table, to float. */
#ifndef PD_EMBED_H
#define PD_EMBED_H

#include "pd_kernel.h"

struct pd_embed_args {
    float *out; /* (n_tokens, dim) */
    const void *table; /* (n_vocab, dim) rows of `type` (kernels/quant.h), row_bytes apart */
    uint32_t type;
    uint64_t row_bytes;
    const int32_t *tokens; /* (n_tokens), each in [0, n_vocab) (checked by the caller) */
    uint32_t n_tokens, dim;
};

PD_BEGIN_DECLS

int pd_embed_cpu(const struct pd_embed_args *a);
/* CUDA (PD_HAVE_CUDA builds): F32, F16, BF16, Q8_0, Q4_0, Q4_1; -ENOTSUP otherwise */
int pd_embed_cuda(const struct pd_embed_args *a, pd_stream_t stream);

PD_END_DECLS

#endif
