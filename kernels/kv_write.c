#include "kv_write.h"

#include "bf16.h"
#include "quant.h"

#include <errno.h>
#include <string.h>

int pd_kv_write_cpu(const struct pd_kv_write_args *a)
{
    const struct pd_kv_geom *l = &a->kv;
    size_t hd = l->head_dim, row = a->ld ? a->ld : (size_t)l->n_head_kv * hd;

    if (pd_kv_write_refused(a))
        return -EINVAL;
    for (uint32_t t = 0; t < a->n_tokens; t++) {
        for (uint32_t h = 0; h < l->n_head_kv; h++) {
            uint64_t ko = pd_kv_slot_offset(l, a->slot[t], a->layer, 0, h);
            uint64_t vo = pd_kv_slot_offset(l, a->slot[t], a->layer, 1, h);
            const float *k = a->k + t * row + h * hd, *v = a->v + t * row + h * hd;
            if (a->pool_type == PD_DT_F32) {
                memcpy(a->pool + ko, k, hd * sizeof(float));
                memcpy(a->pool + vo, v, hd * sizeof(float));
                continue;
            }
            uint16_t *pool = (uint16_t *)(void *)a->pool;
            const int bf = a->pool_type == PD_DT_BF16;
            for (size_t d = 0; d < hd; d++) {
                pool[ko + d] = bf ? pd_bf16_encode(k[d]) : pd_f16_encode(k[d]);
                pool[vo + d] = bf ? pd_bf16_encode(v[d]) : pd_f16_encode(v[d]);
            }
        }
    }
    return 0;
}
