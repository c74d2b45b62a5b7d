/* kernels/matmul, the CPU path (matmul.h): shares of W's rows on the pool's
 * threads, each read once for the step's whole batch. */
#include "matmul.h"

#include "parallel.h"
#include "qdot.h"
#include "quant.h"

#include <cblas.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

/* Floats of W a thread dequantizes at a time for sgemm: 1 MiB, an L2 */
#define TILE_FLOATS (1u << 18)

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* The workspace: x's pd_q8 blocks (xq bytes), then a tile of `tile` floats
 * (at least 8 rows of W) per thread */
static void ws_layout(uint32_t m, uint32_t k, size_t *xq, size_t *tile)
{
    *xq = align64((size_t)m * (k / PD_Q8_BLOCK) * sizeof(struct pd_q8));
    *tile = (size_t)k * 8 > TILE_FLOATS ? (size_t)k * 8 : TILE_FLOATS;
    *tile = align64(*tile * sizeof(float)) / sizeof(float);
}

size_t pd_matmul_cpu_ws_bytes(uint32_t m, uint32_t k, unsigned threads)
{
    size_t xq, tile;
    ws_layout(m, k, &xq, &tile);
    return xq + (size_t)(threads ? threads : 1) * tile * sizeof(float);
}

/* Measured with engine_bench (docs/internals/quant.md): above this many rows
 * of x, unpacking W into tiles and OpenBLAS's sgemm beat the dots (with
 * float x the row kernel, 4 rows of x a pass, loses to sgemm's register
 * blocking past 8) */
uint32_t pd_matmul_dots_max_m(uint32_t w_type, bool act_q8)
{
    if (w_type == PD_DT_F32)
        return 0;
    return act_q8 ? 32 : 8;
}

struct mm_job {
    const struct pd_matmul_args *a;
    pd_qdot_fn *dot; /* one row of x at a time */
    pd_qdot_rows_fn *rows; /* or all of them (float x, m > 1) */
    pd_unpack_fn *unpack;
    const void *x; /* what the dots take: the pd_q8 blocks, or the float x */
    size_t x_row; /* bytes between rows of x */
    size_t w_row; /* bytes of a row of W */
    float *tiles; /* `tile` floats per thread */
    size_t tile; /* floats of a thread's tile */
    size_t ldy; /* floats between rows of y */
};

/* rows [*r0, *r1) of n for share s of ns, whole cache lines of y apart
 * (shares past the end get none) */
static void share_rows(uint32_t n, unsigned s, unsigned ns, uint32_t *r0, uint32_t *r1)
{
    uint32_t per = (n + ns - 1) / ns;
    per = (per + 15) & ~15u;
    *r0 = s * per < n ? s * per : n;
    *r1 = *r0 + per < n ? *r0 + per : n;
}

static void mm_dots(void *arg, unsigned s, unsigned ns, unsigned thread)
{
    (void)thread;
    struct mm_job *j = arg;
    const struct pd_matmul_args *a = j->a;
    uint32_t r0, r1;
    share_rows(a->n, s, ns, &r0, &r1);
    const char *w = (const char *)a->w + r0 * j->w_row;
    float v[PD_QDOT_MAX_ROWS];
    for (uint32_t r = r0; r < r1; r++, w += j->w_row) {
        if (j->rows)
            j->rows(a->w_type, w, a->x, a->k, a->m, a->k, v, 1);
        else
            for (uint32_t i = 0; i < a->m; i++)
                v[i] = j->dot(w, (const char *)j->x + i * j->x_row, a->k);
        for (uint32_t i = 0; i < a->m; i++) {
            float *y = a->y + (size_t)i * j->ldy + r;
            *y = a->accumulate ? *y + v[i] : v[i];
        }
    }
}

static void mm_gemm(void *arg, unsigned s, unsigned ns, unsigned thread)
{
    struct mm_job *j = arg;
    const struct pd_matmul_args *a = j->a;
    uint32_t r0, r1;
    share_rows(a->n, s, ns, &r0, &r1);
    const uint32_t rows_per = (uint32_t)(j->tile / a->k);
    float *tile = j->tiles + thread * j->tile; /* the thread's own */
    for (uint32_t r = r0; r < r1; r += rows_per) {
        const uint32_t nr = r1 - r < rows_per ? r1 - r : rows_per;
        const float *wt = (const float *)((const char *)a->w + r * j->w_row);
        if (a->w_type != PD_DT_F32) {
            for (uint32_t t = 0; t < nr; t++)
                j->unpack((const char *)a->w + (r + t) * j->w_row, tile + (size_t)t * a->k,
                          a->k);
            wt = tile;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)a->m, (int)nr, (int)a->k, 1.0f,
                    a->x, (int)a->k, wt, (int)a->k, a->accumulate ? 1.0f : 0.0f, a->y + r,
                    (int)j->ldy);
    }
}

/* OpenBLAS to one thread, once, before the first sgemm: its own
 * threads and the pool's would fight over the cores (decode ran 3x slower
 * when they met), and 0.3.21's pthread build crashes in sgemm called from
 * several threads while its own are on */
static void blas_one_thread(void)
{
    static atomic_bool done;
    if (!atomic_exchange(&done, true))
        openblas_set_num_threads(1);
}

int pd_matmul_cpu(const struct pd_matmul_args *a)
{
    const struct pd_dtype_info *ti = pd_dtype_info(a->w_type);
    if (a->x_type != PD_DT_F32 || a->y_type != PD_DT_F32 || !ti || !ti->supported ||
        a->k % ti->block != 0 || (unsigned)a->isa >= PD_ISA_COUNT ||
        !pd_isa_runs((enum pd_isa)a->isa) || (a->ldy && a->ldy < a->n))
        return -EINVAL;
    if (a->m == 0 || a->n == 0)
        return 0;
    uint64_t w_row;
    if (pd_dtype_row_size(a->w_type, a->k, &w_row) < 0)
        return -EINVAL;
    struct mm_job j = {.a = a,
                       .x = a->x,
                       .x_row = (size_t)a->k * sizeof(float),
                       .w_row = (size_t)w_row,
                       .ldy = a->ldy ? a->ldy : a->n};
    const uint32_t max_m = a->dots_max_m ? a->dots_max_m
                                         : pd_matmul_dots_max_m(a->w_type, a->act_q8);
    j.dot = a->act_q8 ? pd_qdot_get(a->w_type, (enum pd_isa)a->isa)
                      : pd_qdotf_get(a->w_type, (enum pd_isa)a->isa);
    if (!a->act_q8 && a->m > 1)
        j.rows = pd_qdot_rows_get(a->w_type, (enum pd_isa)a->isa);
    if (a->m <= max_m && a->m <= PD_QDOT_MAX_ROWS && j.dot) {
        if (a->act_q8 && pd_qdot_takes_q8(a->w_type)) {
            if (!a->ws)
                return -EINVAL;
            struct pd_q8 *xq = a->ws;
            for (uint32_t i = 0; i < a->m; i++)
                pd_q8_quantize(a->x + (size_t)i * a->k, xq + (size_t)i * (a->k / PD_Q8_BLOCK),
                               a->k);
            j.x = xq;
            j.x_row = (size_t)(a->k / PD_Q8_BLOCK) * sizeof(struct pd_q8);
        }
        pd_pool_run(a->pool, mm_dots, &j);
        return 0;
    }
    if (a->w_type != PD_DT_F32) {
        if (!a->ws)
            return -EINVAL;
        size_t xq;
        ws_layout(a->m, a->k, &xq, &j.tile);
        j.unpack = pd_unpack_get(a->w_type, (enum pd_isa)a->isa);
        j.tiles = (float *)((char *)a->ws + xq);
    } else {
        j.tile = (size_t)a->n * a->k; /* W used in place: the share is one tile */
    }
    blas_one_thread();
    pd_pool_run(a->pool, mm_gemm, &j);
    return 0;
}
