#include "embed.h"

#include "quant.h"

int pd_embed_cpu(const struct pd_embed_args *a)
{
    for (uint32_t t = 0; t < a->n_tokens; t++) {
        const uint8_t *row = (const uint8_t *)a->table + (uint64_t)a->tokens[t] * a->row_bytes;
        int rc = pd_dequant_row(a->type, row, a->out + (size_t)t * a->dim, a->dim);
        if (rc < 0)
            return rc;
    }
    return 0;
}
