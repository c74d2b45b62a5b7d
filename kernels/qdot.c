/* kernels/qdot: activation quantization, the portable C reference of every
 * dot, and the choice of version by CPU (qdot.h). */
#include "qdot.h"

#include "bf16.h"
#include "quant.h"
#include "quant_blocks.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

void pd_q8_quantize(const float *x, struct pd_q8 *q, uint32_t k)
{
    for (uint32_t b = 0; b < k / PD_Q8_BLOCK; b++, x += PD_Q8_BLOCK, q++) {
        float amax = 0;
        for (int j = 0; j < PD_Q8_BLOCK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < PD_Q8_BLOCK; j++) {
            const int v = (int)lrintf(x[j] * id);
            q->q[j] = (int8_t)v;
            sum += v;
        }
        q->d = d;
        q->sum = sum;
    }
}

/* ---- the reference: each block's dot as an exact integer, scaled in float */

static inline int nib(const uint8_t *qs, int j) { return j < 16 ? qs[j] & 0xF : qs[j - 16] >> 4; }

/* Q4_0 (offset -8, no m) and Q4_1 (m at bytes 2-3): blocks of `bytes`, d at
 * byte 0, the nibbles after d (and m) */
static float dot_q4(const uint8_t *w, size_t bytes, int has_m, const void *x, uint32_t k)
{
    const struct pd_q8 *a = x;
    float s = 0;
    for (uint32_t i = 0; i < k / 32; i++, w += bytes) {
        const uint8_t *qs = w + (has_m ? 4 : 2);
        int32_t d = 0;
        for (int j = 0; j < 32; j++)
            d += nib(qs, j) * a[i].q[j];
        const float dw = pd_f16_decode((uint16_t)(w[0] | w[1] << 8));
        if (has_m)
            s += dw * a[i].d * (float)d +
                 pd_f16_decode((uint16_t)(w[2] | w[3] << 8)) * a[i].d * (float)a[i].sum;
        else
            s += dw * a[i].d * (float)(d - 8 * a[i].sum);
    }
    return s;
}

static float dot_q4_0(const void *w, const void *x, uint32_t k) { return dot_q4(w, 18, 0, x, k); }

static float dot_q4_1(const void *w, const void *x, uint32_t k) { return dot_q4(w, 20, 1, x, k); }

static float dot_q8_0(const void *w, const void *x, uint32_t k)
{
    const struct pd_blk_q8_0 *b = w;
    const struct pd_q8 *a = x;
    float s = 0;
    for (uint32_t i = 0; i < k / 32; i++) {
        int32_t d = 0;
        for (int j = 0; j < 32; j++)
            d += b[i].qs[j] * a[i].q[j];
        s += pd_f16_decode(b[i].d) * a[i].d * (float)d;
    }
    return s;
}

static float dot_q4_k(const void *w, const void *x, uint32_t k)
{
    const struct pd_blk_q4_k *b = w;
    const struct pd_q8 *a = x;
    float s = 0;
    for (uint32_t i = 0; i < k / PD_QK; i++, a += 8) {
        const float d = pd_f16_decode(b[i].d), dmin = pd_f16_decode(b[i].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, mn;
            pd_q4k_scale_min(j, b[i].scales, &sc, &mn);
            const uint8_t *q = b[i].qs + 32 * (j / 2);
            int32_t dq = 0;
            for (int l = 0; l < 32; l++)
                dq += (j & 1 ? q[l] >> 4 : q[l] & 0xF) * a[j].q[l];
            s += d * a[j].d * (float)(sc * dq) - dmin * a[j].d * (float)(mn * a[j].sum);
        }
    }
    return s;
}

static float dot_q6_k(const void *w, const void *x, uint32_t k)
{
    const struct pd_blk_q6_k *b = w;
    const struct pd_q8 *a = x;
    float s = 0;
    for (uint32_t i = 0; i < k / PD_QK; i++, a += 8) {
        const float d = pd_f16_decode(b[i].d);
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 4; g++) {
                const struct pd_q8 *ab = &a[4 * h + g];
                int32_t half[2] = {0, 0};
                for (int l = 0; l < 32; l++)
                    half[l / 16] +=
                        (pd_q6k_value(b[i].ql + 64 * h, b[i].qh + 32 * h, g, l) - 32) * ab->q[l];
                const int8_t *sc = b[i].scales + 8 * h + 2 * g;
                s += d * ab->d * (float)(sc[0] * half[0] + sc[1] * half[1]);
            }
    }
    return s;
}

/* 16-bit weights . float x, each weight decoded by dec */
static float dot_h16(const uint16_t *h, const float *a, uint32_t k, float (*dec)(uint16_t))
{
    float s = 0;
    for (uint32_t i = 0; i < k; i++)
        s += dec(h[i]) * a[i];
    return s;
}

static float dot_f16(const void *w, const void *x, uint32_t k)
{
    return dot_h16(w, x, k, pd_f16_decode);
}

static float dot_bf16(const void *w, const void *x, uint32_t k)
{
    return dot_h16(w, x, k, pd_bf16_decode);
}

/* the float-activation reference: the row dequantized a chunk at a time */
static float dotf(uint32_t type, const void *w, const float *x, uint32_t k)
{
    float buf[256];
    const struct pd_dtype_info *ti = pd_dtype_info(type);
    float s = 0;
    for (uint32_t i = 0; i < k; i += 256) {
        const uint32_t n = k - i < 256 ? k - i : 256;
        (void)pd_dequant_row(type, (const char *)w + (size_t)i / ti->block * ti->bytes, buf, n);
        for (uint32_t j = 0; j < n; j++)
            s += buf[j] * x[i + j];
    }
    return s;
}

#define SCALAR_TYPE(t, lc)                                                                         \
    static float dotf_##lc(const void *w, const void *x, uint32_t k)                             \
    {                                                                                              \
        return dotf(PD_DT_##t, w, x, k);                                                           \
    }                                                                                              \
    static void unpack_##lc(const void *w, float *o, uint32_t k)                                  \
    {                                                                                              \
        (void)pd_dequant_row(PD_DT_##t, w, o, k);                                                  \
    }
SCALAR_TYPE(Q4_0, q4_0)
SCALAR_TYPE(Q4_1, q4_1)
SCALAR_TYPE(Q8_0, q8_0)
SCALAR_TYPE(Q4_K, q4_k)
SCALAR_TYPE(Q6_K, q6_k)
SCALAR_TYPE(F16, f16)
SCALAR_TYPE(BF16, bf16)
#undef SCALAR_TYPE

static void rows(uint32_t type, const void *w, const float *x, size_t x_stride, uint32_t m,
                 uint32_t k, float *y, size_t y_stride)
{
    for (uint32_t i = 0; i < m; i++)
        y[i * y_stride] = dotf(type, w, x + i * x_stride, k);
}

static const struct pd_qdot_tables scalar = {
    .rows = rows,
    .q8 = {[PD_DT_Q4_0] = dot_q4_0, [PD_DT_Q4_1] = dot_q4_1, [PD_DT_Q8_0] = dot_q8_0,
           [PD_DT_Q4_K] = dot_q4_k, [PD_DT_Q6_K] = dot_q6_k, [PD_DT_F16] = dot_f16,
           [PD_DT_BF16] = dot_bf16},
    .f32 = {[PD_DT_Q4_0] = dotf_q4_0, [PD_DT_Q4_1] = dotf_q4_1, [PD_DT_Q8_0] = dotf_q8_0,
            [PD_DT_Q4_K] = dotf_q4_k, [PD_DT_Q6_K] = dotf_q6_k, [PD_DT_F16] = dotf_f16,
            [PD_DT_BF16] = dotf_bf16},
    .unpack = {[PD_DT_Q4_0] = unpack_q4_0, [PD_DT_Q4_1] = unpack_q4_1,
               [PD_DT_Q8_0] = unpack_q8_0, [PD_DT_Q4_K] = unpack_q4_k,
               [PD_DT_Q6_K] = unpack_q6_k, [PD_DT_F16] = unpack_f16, [PD_DT_BF16] = unpack_bf16},
};

bool pd_qdot_takes_q8(uint32_t type)
{
    return type == PD_DT_Q4_0 || type == PD_DT_Q4_1 || type == PD_DT_Q8_0 ||
           type == PD_DT_Q4_K || type == PD_DT_Q6_K;
}

static const struct pd_qdot_tables *tables(uint32_t type, enum pd_isa isa)
{
    if (type >= PD_DT_COUNT)
        return NULL;
    return isa == PD_ISA_SCALAR ? &scalar : pd_qdot_x86(isa);
}

pd_qdot_fn *pd_qdot_get(uint32_t type, enum pd_isa isa)
{
    const struct pd_qdot_tables *t = tables(type, isa);
    return t ? t->q8[type] : NULL;
}

pd_qdot_fn *pd_qdotf_get(uint32_t type, enum pd_isa isa)
{
    const struct pd_qdot_tables *t = tables(type, isa);
    return t ? t->f32[type] : NULL;
}

pd_qdot_rows_fn *pd_qdot_rows_get(uint32_t type, enum pd_isa isa)
{
    const struct pd_qdot_tables *t = tables(type, isa);
    return t && t->unpack[type] ? t->rows : NULL;
}

pd_unpack_fn *pd_unpack_get(uint32_t type, enum pd_isa isa)
{
    const struct pd_qdot_tables *t = tables(type, isa);
    return t ? t->unpack[type] : NULL;
}

/* The ISAs this CPU runs, as bits by enum pd_isa (CPUID, asked once: the
 * matmul checks its caller's choice on every call) */
static unsigned isa_mask(void)
{
    static _Atomic int mask = -1; /* every thread would compute the same */
    if (mask >= 0)
        return (unsigned)mask;
    unsigned m = 1u << PD_ISA_SCALAR;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c") && pd_qdot_x86(PD_ISA_AVX2);
    if (avx2)
        m |= 1u << PD_ISA_AVX2;
    if (avx2 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && pd_qdot_x86(PD_ISA_AVX512VNNI))
        m |= 1u << PD_ISA_AVX512VNNI;
#endif
    mask = (int)m;
    return m;
}

bool pd_isa_runs(enum pd_isa isa)
{
    return (unsigned)isa < PD_ISA_COUNT && (isa_mask() >> isa & 1u);
}

static const char *const isa_names[PD_ISA_COUNT] = {"scalar", "avx2", "avx512vnni"};

const char *pd_isa_name(enum pd_isa isa)
{
    return (unsigned)isa < PD_ISA_COUNT ? isa_names[isa] : "unknown";
}

enum pd_isa pd_isa_best(void)
{
    static _Atomic int best = -1; /* every thread would compute the same */
    if (best >= 0)
        return (enum pd_isa)best;
    enum pd_isa cap = PD_ISA_COUNT - 1;
    const char *env = getenv("PD_CPU_ISA");
    for (int i = 0; env && i < PD_ISA_COUNT; i++)
        if (strcmp(env, isa_names[i]) == 0)
            cap = (enum pd_isa)i;
    int b = PD_ISA_SCALAR;
    for (int i = PD_ISA_SCALAR; i <= (int)cap; i++)
        if (pd_isa_runs((enum pd_isa)i))
            b = i;
    best = b;
    return (enum pd_isa)b;
}
