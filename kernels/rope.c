#include "rope.h"

#include <errno.h>
#include <math.h>

/* the {cos, sin} of pair i at pos */
static void angle(const struct pd_rope_args *a, int32_t pos, uint32_t i, float *c, float *s)
{
    const double theta =
        pd_rope_theta(pos, i, a->rope_dim, a->freq_base, a->freq_scale, a->freq_factors);
    *c = (float)cos(theta);
    *s = (float)sin(theta);
}

int pd_rope_table(const struct pd_rope_args *a, uint32_t n_pos, float *out)
{
    const uint32_t half = a->rope_dim / 2;
    double inv[PD_ROPE_MAX_HALF]; /* each pair's, once: not per position */
    if (pd_rope_refused(a))
        return -EINVAL;
    for (uint32_t i = 0; i < half; i++)
        inv[i] = pd_rope_inv_freq(i, a->rope_dim, a->freq_base);
    for (uint32_t p = 0; p < n_pos; p++)
        for (uint32_t i = 0; i < half; i++) {
            const double theta =
                pd_rope_angle((int32_t)p, inv[i], i, a->freq_scale, a->freq_factors);
            out[((size_t)p * half + i) * 2] = (float)cos(theta);
            out[((size_t)p * half + i) * 2 + 1] = (float)sin(theta);
        }
    return 0;
}

int pd_rope_cpu(const struct pd_rope_args *a)
{
    const uint32_t half = a->rope_dim / 2;
    if (pd_rope_refused(a))
        return -EINVAL;
    for (uint32_t t = 0; t < a->n_tokens; t++) {
        float c[PD_ROPE_MAX_HALF], s[PD_ROPE_MAX_HALF];
        const int32_t pos = a->pos[t];
        const int tab = a->table && pos >= 0 && (uint32_t)pos < a->table_len;
        for (uint32_t i = 0; i < half; i++) {
            if (tab) {
                c[i] = a->table[((size_t)pos * half + i) * 2];
                s[i] = a->table[((size_t)pos * half + i) * 2 + 1];
            } else {
                angle(a, pos, i, &c[i], &s[i]);
            }
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
