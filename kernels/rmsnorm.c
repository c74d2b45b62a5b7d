#include "rmsnorm.h"

#include <math.h>

int pd_rmsnorm_cpu(const struct pd_rmsnorm_args *a)
{
    for (uint32_t r = 0; r < a->n_rows; r++) {
        const float *x = a->in + (size_t)r * a->dim;
        float *y = a->out + (size_t)r * a->dim;
        double ss = 0.0; /* double: the sum of squares of a wide row loses bits in float */
        for (uint32_t i = 0; i < a->dim; i++)
            ss += (double)x[i] * x[i];
        float scale = (float)(1.0 / sqrt(ss / a->dim + a->eps));
        for (uint32_t i = 0; i < a->dim; i++)
            y[i] = x[i] * scale * a->weight[i];
    }
    return 0;
}
