#include "bias.h"

int pd_bias_cpu(const struct pd_bias_args *a)
{
    for (uint32_t r = 0; r < a->n_rows; r++) {
        float *row = a->x + (size_t)r * a->dim;
        for (uint32_t i = 0; i < a->dim; i++)
            row[i] += a->bias[i];
    }
    return 0;
}
