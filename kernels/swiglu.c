#include "swiglu.h"

#include <math.h>

int pd_swiglu_cpu(const struct pd_swiglu_args *a)
{
    for (uint64_t i = 0; i < a->n; i++) {
        float g = a->gate[i];
        a->out[i] = g / (1.0f + expf(-g)) * a->up[i];
    }
    return 0;
}
