#include "bias.h"

#include <errno.h>

int pd_bias_cpu(const struct pd_bias_args *a)
{
    const size_t ld = a->ld ? a->ld : a->dim;
    if (ld < a->dim)
        return -EINVAL;
    for (uint32_t r = 0; r < a->n_rows; r++) {
        float *row = a->x + r * ld;
        for (uint32_t i = 0; i < a->dim; i++)
            row[i] += a->bias[i];
    }
    return 0;
}
