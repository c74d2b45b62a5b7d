#include "kv_write.h"

#include <string.h>

int pd_kv_write_cpu(const struct pd_kv_write_args *a)
{
    const struct pd_kv_layout *l = &a->kv;
    size_t hd = l->head_dim, row = (size_t)l->n_head_kv * hd;

    for (uint32_t t = 0; t < a->n_tokens; t++) {
        uint32_t block = (uint32_t)(a->slot[t] / l->block_size);
        uint32_t tok = (uint32_t)(a->slot[t] % l->block_size);
        for (uint32_t h = 0; h < l->n_head_kv; h++) {
            memcpy(a->pool + pd_kv_offset(l, block, a->layer, 0, h, tok), a->k + t * row + h * hd,
                   hd * sizeof(float));
            memcpy(a->pool + pd_kv_offset(l, block, a->layer, 1, h, tok), a->v + t * row + h * hd,
                   hd * sizeof(float));
        }
    }
    return 0;
}
