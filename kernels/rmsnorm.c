#include "rmsnorm.h"

#include "bf16.h"

#include <math.h>

int pd_rmsnorm_cpu(const struct pd_rmsnorm_args *a)
{
    if (pd_rmsnorm_check(a) < 0)
        return -EINVAL;
    for (uint32_t r = 0; r < a->n_rows; r++) {
        const float *x = a->in + pd_rmsnorm_row(a, r);
        const uint64_t at = pd_rmsnorm_row(a, r);
        double ss = 0.0; /* double: the sum of squares of a wide row loses bits in float */
        for (uint32_t i = 0; i < a->dim; i++)
            ss += (double)x[i] * x[i];
        float scale = (float)(1.0 / sqrt(ss / a->dim + a->eps));
        if (a->out_type) {
            uint16_t *y = (uint16_t *)(void *)a->out + at;
            for (uint32_t i = 0; i < a->dim; i++)
                y[i] = pd_bf16_encode(x[i] * scale * a->weight[i]);
            continue;
        }
        float *y = a->out + at;
        for (uint32_t i = 0; i < a->dim; i++)
            y[i] = x[i] * scale * a->weight[i];
    }
    return 0;
}
