#include "rope.h"

#include <errno.h>
#include <math.h>

int pd_rope_cpu(const struct pd_rope_args *a)
{
    uint32_t half = a->rope_dim / 2;
    if (a->rope_dim % 2 || a->rope_dim > a->head_dim || half > PD_ROPE_MAX_HALF ||
        (a->ld && a->ld < (uint64_t)a->n_heads * a->head_dim))
        return -EINVAL;
    for (uint32_t t = 0; t < a->n_tokens; t++) {
        float c[PD_ROPE_MAX_HALF], s[PD_ROPE_MAX_HALF];
        for (uint32_t i = 0; i < half; i++) {
            double theta = pd_rope_theta(a->pos[t], i, a->rope_dim, a->freq_base, a->freq_scale,
                                         a->freq_factors);
            c[i] = (float)cos(theta);
            s[i] = (float)sin(theta);
        }
        for (uint32_t h = 0; h < a->n_heads; h++) {
            float *v = a->x + t * pd_rope_ld(a) + (size_t)h * a->head_dim;
            for (uint32_t i = 0; i < half; i++) {
                uint32_t i0, i1;
                pd_rope_pair(a, i, &i0, &i1);
                float x0 = v[i0], x1 = v[i1];
                v[i0] = x0 * c[i] - x1 * s[i];
                v[i1] = x0 * s[i] + x1 * c[i];
            }
        }
    }
    return 0;
}
