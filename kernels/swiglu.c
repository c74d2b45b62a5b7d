#include "swiglu.h"

#include "bf16.h"
#include "quant.h"

#include <errno.h>
#include <math.h>

int pd_swiglu_cpu(const struct pd_swiglu_args *a)
{
    const size_t ld = a->ld ? a->ld : a->dim;
    if (pd_swiglu_check(a) < 0)
        return -EINVAL;
    for (uint32_t r = 0; r < a->n_rows; r++)
        for (uint32_t i = 0; i < a->dim; i++) {
            float g = a->gate[r * ld + i];
            float v = g / (1.0f + expf(-g)) * a->up[r * ld + i];
            if (a->out_type == PD_DT_BF16)
                ((uint16_t *)(void *)a->out)[(size_t)r * a->dim + i] = pd_bf16_encode(v);
            else
                a->out[(size_t)r * a->dim + i] = v;
        }
    return 0;
}
