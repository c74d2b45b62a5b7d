/* kernels/quant_blocks: the stored blocks of the quantized types, as ggml
 * lays them out in GGUF (little-endian, packed), and the small decoders the
 * dequantizer (quant.c) and the dot products (qdot*.c) share. Internal to
 * kernels/. A block's element i of 32 (Q4_0, Q4_1) is the low nibble of
 * qs[i] for i < 16 and the high nibble of qs[i - 16] after.
 *
 *   Q4_0: f16 d; u8 qs[16]              x = (nibble - 8) d
 *   Q4_1: f16 d, m; u8 qs[16]           x = nibble d + m
 *   Q8_0: f16 d; i8 qs[32]              x = q d
 *   Q4_K (256): f16 d, dmin; u8 scales[12]; u8 qs[128]
 *       8 sub-blocks of 32 with 6-bit scale sc and min mn (pd_q4k_scale_min):
 *       x = d sc nibble - dmin mn; sub-blocks 2c and 2c + 1 are the low and
 *       high nibbles of qs[32c .. 32c + 31]
 *   Q6_K (256): u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
 *       two halves of 128; in half h, group i (0..3) of 32, element l:
 *       q = (4 low bits: ql[64h + l + 32 (i & 1)], low nibble for i < 2, high
 *       after) | (2 bits: qh[32h + l] >> 2i) << 4; x = d scales[8h + 2i + l / 16] (q - 32)
 */
#ifndef PD_QUANT_BLOCKS_H
#define PD_QUANT_BLOCKS_H

#include <stdint.h>

#define PD_QK 256 /* elements of a k-quant super-block */

struct pd_blk_q4_0 {
    uint16_t d;
    uint8_t qs[16];
};
struct pd_blk_q4_1 {
    uint16_t d, m;
    uint8_t qs[16];
};
struct pd_blk_q8_0 {
    uint16_t d;
    int8_t qs[32];
};
struct pd_blk_q4_k {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];
};
struct pd_blk_q6_k {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
};

_Static_assert(sizeof(struct pd_blk_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(struct pd_blk_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(struct pd_blk_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(struct pd_blk_q4_k) == 144, "Q4_K block");
_Static_assert(sizeof(struct pd_blk_q6_k) == 210, "Q6_K block");

/* Q4_K's 6-bit scale and min of sub-block j (0..7), packed in 12 bytes:
 * j < 4 in the low 6 bits of bytes j and j + 4; j >= 4 in the nibbles of
 * byte j + 4 with their top 2 bits in the top of bytes j - 4 and j */
static inline void pd_q4k_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Q6_K's 6-bit value (0..63) of group i (0..3), element l (0..31) of a half */
static inline int pd_q6k_value(const uint8_t *ql, const uint8_t *qh, int i, int l)
{
    int lo = ql[l + 32 * (i & 1)];
    lo = i < 2 ? lo & 0xF : lo >> 4;
    return lo | (((qh[l] >> (2 * i)) & 3) << 4);
}

#endif
