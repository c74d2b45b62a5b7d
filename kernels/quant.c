#include "quant.h"

#include "bf16.h"
#include "quant_blocks.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

/* Block layouts: kernels/quant_blocks.h */
static const struct pd_dtype_info dtypes[PD_DT_COUNT] = {
    [PD_DT_F32] = {"F32", 1, 4, 1},
    [PD_DT_F16] = {"F16", 1, 2, 1},
    [PD_DT_Q4_0] = {"Q4_0", 32, 18, 1},
    [PD_DT_Q4_1] = {"Q4_1", 32, 20, 1},
    [PD_DT_Q5_0] = {"Q5_0", 32, 22, 0},
    [PD_DT_Q5_1] = {"Q5_1", 32, 24, 0},
    [PD_DT_Q8_0] = {"Q8_0", 32, 34, 1},
    [PD_DT_Q8_1] = {"Q8_1", 32, 36, 0},
    [PD_DT_Q2_K] = {"Q2_K", 256, 84, 0},
    [PD_DT_Q3_K] = {"Q3_K", 256, 110, 0},
    [PD_DT_Q4_K] = {"Q4_K", 256, 144, 1},
    [PD_DT_Q5_K] = {"Q5_K", 256, 176, 0},
    [PD_DT_Q6_K] = {"Q6_K", 256, 210, 1},
    [PD_DT_Q8_K] = {"Q8_K", 256, 292, 0},
    [PD_DT_I8] = {"I8", 1, 1, 0},
    [PD_DT_I16] = {"I16", 1, 2, 0},
    [PD_DT_I32] = {"I32", 1, 4, 0},
    [PD_DT_I64] = {"I64", 1, 8, 0},
    [PD_DT_F64] = {"F64", 1, 8, 0},
    [PD_DT_BF16] = {"BF16", 1, 2, 1},
};

const struct pd_dtype_info *pd_dtype_info(uint32_t type)
{
    if (type >= PD_DT_COUNT || !dtypes[type].name)
        return NULL;
    return &dtypes[type];
}

int pd_dtype_supported(uint32_t type)
{
    const struct pd_dtype_info *ti = pd_dtype_info(type);
    return ti && ti->supported;
}

const char *pd_dtype_name(uint32_t type)
{
    const struct pd_dtype_info *ti = pd_dtype_info(type);
    return ti ? ti->name : "unknown";
}

int pd_dtype_parse(const char *s)
{
    if (!s)
        return -EINVAL;
    for (uint32_t t = 0; t < PD_DT_COUNT; t++)
        if (dtypes[t].name && strcasecmp(dtypes[t].name, s) == 0)
            return (int)t;
    return -EINVAL;
}

int pd_dtype_row_size(uint32_t type, uint64_t ne0, uint64_t *nbytes)
{
    const struct pd_dtype_info *ti = pd_dtype_info(type);
    if (!ti || ne0 % ti->block != 0)
        return -EINVAL;
    uint64_t blocks = ne0 / ti->block;
    if (blocks > UINT64_MAX / ti->bytes)
        return -EOVERFLOW;
    *nbytes = blocks * ti->bytes;
    return 0;
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* the conversions themselves are kernels/bf16.h's, shared with the kernels */
float pd_f16_to_f32(uint16_t h)
{
    return pd_f16_decode(h);
}

uint16_t pd_f32_to_f16(float f)
{
    return pd_f16_encode(f);
}

float pd_bf16_to_f32(uint16_t h)
{
    return pd_bf16_decode(h);
}

uint16_t pd_f32_to_bf16(float f)
{
    return pd_bf16_encode(f);
}

int pd_dequant_row(uint32_t type, const void *src_, float *dst, uint64_t n)
{
    const uint8_t *src = src_;

    switch (type) {
    case PD_DT_F32:
        memcpy(dst, src, n * sizeof(float));
        return 0;
    case PD_DT_F16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = pd_f16_to_f32(rd16(src + 2 * i));
        return 0;
    case PD_DT_BF16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = pd_bf16_to_f32(rd16(src + 2 * i));
        return 0;
    case PD_DT_Q4_0:
        for (uint64_t b = 0; b < n / 32; b++, src += 18, dst += 32) {
            float d = pd_f16_to_f32(rd16(src));
            for (int j = 0; j < 16; j++) {
                dst[j] = (float)((src[2 + j] & 0x0f) - 8) * d;
                dst[j + 16] = (float)((src[2 + j] >> 4) - 8) * d;
            }
        }
        return 0;
    case PD_DT_Q4_1:
        for (uint64_t b = 0; b < n / 32; b++, src += 20, dst += 32) {
            float d = pd_f16_to_f32(rd16(src));
            float m = pd_f16_to_f32(rd16(src + 2));
            for (int j = 0; j < 16; j++) {
                dst[j] = (float)(src[4 + j] & 0x0f) * d + m;
                dst[j + 16] = (float)(src[4 + j] >> 4) * d + m;
            }
        }
        return 0;
    case PD_DT_Q8_0:
        for (uint64_t b = 0; b < n / 32; b++, src += 34, dst += 32) {
            float d = pd_f16_to_f32(rd16(src));
            for (int j = 0; j < 32; j++)
                dst[j] = (float)(int8_t)src[2 + j] * d;
        }
        return 0;
    case PD_DT_Q4_K:
        for (uint64_t b = 0; b < n / PD_QK; b++, src += 144, dst += PD_QK) {
            const uint8_t *sc = src + 4, *qs = src + 16;
            float d = pd_f16_to_f32(rd16(src)), dmin = pd_f16_to_f32(rd16(src + 2));
            for (int j = 0; j < 8; j++) {
                uint8_t s6, m6;
                pd_q4k_scale_min(j, sc, &s6, &m6);
                const float ds = d * s6, dm = dmin * m6;
                const uint8_t *q = qs + 32 * (j / 2);
                for (int l = 0; l < 32; l++)
                    dst[32 * j + l] = ds * (float)(j & 1 ? q[l] >> 4 : q[l] & 0xF) - dm;
            }
        }
        return 0;
    case PD_DT_Q6_K:
        for (uint64_t b = 0; b < n / PD_QK; b++, src += 210, dst += PD_QK) {
            const float d = pd_f16_to_f32(rd16(src + 208));
            const int8_t *sc = (const int8_t *)(src + 192);
            for (int h = 0; h < 2; h++)
                for (int i = 0; i < 4; i++)
                    for (int l = 0; l < 32; l++)
                        dst[128 * h + 32 * i + l] =
                            d * (float)sc[8 * h + 2 * i + l / 16] *
                            (float)(pd_q6k_value(src + 64 * h, src + 128 + 32 * h, i, l) - 32);
        }
        return 0;
    default:
        return -ENOTSUP;
    }
}

int pd_quant_row(uint32_t type, const float *src, void *dst_, uint64_t n)
{
    uint8_t *dst = dst_;
    switch (type) {
    case PD_DT_F32:
        memcpy(dst, src, n * sizeof(float));
        return 0;
    case PD_DT_F16:
    case PD_DT_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = type == PD_DT_F16 ? pd_f32_to_f16(src[i]) : pd_f32_to_bf16(src[i]);
            dst[2 * i] = (uint8_t)h;
            dst[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return 0;
    default:
        return -ENOTSUP;
    }
}
