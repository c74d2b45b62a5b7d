#include "matmul.h"

#include "quant.h"

#include <cblas.h>
#include <errno.h>

int pd_matmul_cpu(const struct pd_matmul_args *a)
{
    if (a->x_type != PD_DT_F32 || a->w_type != PD_DT_F32 || a->y_type != PD_DT_F32)
        return -EINVAL;
    if (a->m == 0)
        return 0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)a->m, (int)a->n, (int)a->k, 1.0f,
                a->x, (int)a->k, a->w, (int)a->k, a->accumulate ? 1.0f : 0.0f, a->y, (int)a->n);
    return 0;
}
