/* kernels/tag.cu: Poly1305 block tags, one thread block per job (tag.h says
 * how the polynomial is split over lanes). Arithmetic mod p = 2^130 - 5 in
 * five 26-bit limbs, the classic 32-bit layout: a product's limbs fold back
 * with 2^130 = 5 (mod p), every partial sum stays below 2^64. */
#include "cuda_check.cuh"
#include "tag.h"

#define LIMB 0x3ffffffu
#define UNROLL 4

struct p130 {
    uint32_t l[5];
};

__device__ __forceinline__ struct p130 p_zero(void)
{
    struct p130 z = {{0, 0, 0, 0, 0}};
    return z;
}

/* Carry so every limb is below 2^26, but the lowest, which may end just above
 * (the top carry folds back times 5). Inputs below 2^62 each. */
__device__ __forceinline__ struct p130 p_carry(uint64_t d0, uint64_t d1, uint64_t d2,
                                               uint64_t d3, uint64_t d4)
{
    struct p130 h;
    d1 += d0 >> 26;
    d2 += d1 >> 26;
    d3 += d2 >> 26;
    d4 += d3 >> 26;
    uint64_t top = d4 >> 26;
    uint64_t h0 = (d0 & LIMB) + top * 5;
    h.l[0] = (uint32_t)(h0 & LIMB);
    h.l[1] = (uint32_t)(d1 & LIMB) + (uint32_t)(h0 >> 26);
    h.l[2] = (uint32_t)(d2 & LIMB);
    h.l[3] = (uint32_t)(d3 & LIMB);
    h.l[4] = (uint32_t)(d4 & LIMB);
    return h;
}

/* a * b mod p (partially reduced). Limbs of a below 2^31, of b below 2^27:
 * each of the five products in a sum is below 2^61. */
__device__ __forceinline__ struct p130 p_mul(struct p130 a, struct p130 b)
{
    uint64_t b1 = b.l[1] * 5ull, b2 = b.l[2] * 5ull, b3 = b.l[3] * 5ull, b4 = b.l[4] * 5ull;
    uint64_t a0 = a.l[0], a1 = a.l[1], a2 = a.l[2], a3 = a.l[3], a4 = a.l[4];
    uint64_t d0 = a0 * b.l[0] + a1 * b4 + a2 * b3 + a3 * b2 + a4 * b1;
    uint64_t d1 = a0 * b.l[1] + a1 * b.l[0] + a2 * b4 + a3 * b3 + a4 * b2;
    uint64_t d2 = a0 * b.l[2] + a1 * b.l[1] + a2 * b.l[0] + a3 * b4 + a4 * b3;
    uint64_t d3 = a0 * b.l[3] + a1 * b.l[2] + a2 * b.l[1] + a3 * b.l[0] + a4 * b4;
    uint64_t d4 = a0 * b.l[4] + a1 * b.l[3] + a2 * b.l[2] + a3 * b.l[1] + a4 * b.l[0];
    return p_carry(d0, d1, d2, d3, d4);
}

/* a + b limb by limb, no carry: an operand for p_mul */
__device__ __forceinline__ struct p130 p_add_raw(struct p130 a, struct p130 b)
{
    for (int i = 0; i < 5; i++)
        a.l[i] += b.l[i];
    return a;
}

__device__ __forceinline__ struct p130 p_add(struct p130 a, struct p130 b)
{
    return p_carry((uint64_t)a.l[0] + b.l[0], (uint64_t)a.l[1] + b.l[1],
                   (uint64_t)a.l[2] + b.l[2], (uint64_t)a.l[3] + b.l[3],
                   (uint64_t)a.l[4] + b.l[4]);
}

/* 16 little-endian bytes as four words, plus 2^128 (hibit) */
__device__ __forceinline__ struct p130 p_chunk(uint32_t t0, uint32_t t1, uint32_t t2,
                                               uint32_t t3, uint32_t hibit)
{
    struct p130 m;
    m.l[0] = t0 & LIMB;
    m.l[1] = ((t0 >> 26) | (t1 << 6)) & LIMB;
    m.l[2] = ((t1 >> 20) | (t2 << 12)) & LIMB;
    m.l[3] = ((t2 >> 14) | (t3 << 18)) & LIMB;
    m.l[4] = (t3 >> 8) | hibit;
    return m;
}

__device__ __forceinline__ uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Chunk c of prefix || data: whole-data chunks that are 8-byte aligned are
 * two 8-byte loads; the others (the prefix, its seam with the data, the
 * last, unaligned data) byte by byte, the last padded with 0x01 and without
 * 2^128. */
__device__ __forceinline__ struct p130 load_chunk(const struct pd_tag_job *j, uint32_t plen,
                                                  uint64_t total, uint64_t c)
{
    uint64_t at = c * 16;
    const uint8_t *d = (const uint8_t *)j->data;
    if (at >= plen && at + 16 <= total) {
        const uint8_t *p = d + (at - plen);
        if (((uintptr_t)p & 7) == 0) {
            uint2 lo = *(const uint2 *)p, hi = *(const uint2 *)(p + 8);
            return p_chunk(lo.x, lo.y, hi.x, hi.y, 1u << 24);
        }
    }
    uint8_t b[16];
    uint64_t n = total - at < 16 ? total - at : 16;
    for (uint32_t i = 0; i < 16; i++) {
        uint64_t k = at + i;
        b[i] = i < n ? (k < plen ? j->prefix[k] : d[k - plen]) : (i == n ? 1 : 0);
    }
    return p_chunk(le32(b), le32(b + 4), le32(b + 8), le32(b + 12), n == 16 ? 1u << 24 : 0);
}

/* h mod p fully reduced, + s mod 2^128, little-endian. Limbs may stand a
 * little above 2^26 throughout: every step below carries or adds, none ORs. */
__device__ void p_finish(struct p130 h, const uint8_t *key, uint8_t out[PD_TAG_LEN])
{
    h = p_carry(h.l[0], h.l[1], h.l[2], h.l[3], h.l[4]);
    /* g = h + 5 - 2^130: h >= p exactly when h + 5 reaches 2^130 */
    uint32_t g[5], c = 5;
    for (int i = 0; i < 5; i++) {
        g[i] = h.l[i] + c;
        c = g[i] >> 26;
        g[i] &= LIMB;
    }
    uint32_t use_g = 0u - (c != 0);
    for (int i = 0; i < 5; i++)
        h.l[i] = (h.l[i] & ~use_g) | (g[i] & use_g);
    /* sum of limb i << 26 i, then + s, both mod 2^128, 32 bits at a time */
    uint64_t v = h.l[0] + ((uint64_t)h.l[1] << 26), f = 0;
    const unsigned shift[4] = {0, 20, 14, 8}; /* limb 1+i's bit 0 within word i */
    for (int i = 0; i < 4; i++) {
        if (i > 0)
            v += (uint64_t)h.l[i + 1] << shift[i];
        f += (v & 0xffffffffu) + le32(key + 16 + 4 * i);
        for (int k = 0; k < 4; k++)
            out[4 * i + k] = (uint8_t)(f >> (8 * k));
        f >>= 32;
        v >>= 32;
    }
}

/* One job's tag into out (thread 0). Every thread of the block calls it. */
__device__ void tag_one(const struct pd_tag_job *j, uint8_t out[PD_TAG_LEN])
{
    __shared__ struct p130 pw[PD_TAG_LANES]; /* r^(i+1), then the lanes' sums */
    const uint32_t lane = threadIdx.x, L = PD_TAG_LANES;
    uint32_t plen = j->prefix_len;
    if (plen > PD_TAG_PREFIX_MAX) { /* never valid: a zero tag, and verify says no */
        if (lane < PD_TAG_LEN)
            out[lane] = 0;
        return;
    }
    uint64_t total = plen + j->len, n = (total + 15) / 16;

    if (lane == 0) {
        const uint8_t *k = j->key; /* r clamped as RFC 8439 says */
        pw[0] = p_chunk(le32(k) & 0x0fffffffu, le32(k + 4) & 0x0ffffffcu,
                        le32(k + 8) & 0x0ffffffcu, le32(k + 12) & 0x0ffffffcu, 0);
    }
    __syncthreads();
    for (uint32_t s = 1; s < L; s <<= 1) { /* r^(i+1) = r^(i-s+1) * r^s */
        if (lane >= s && lane < 2 * s)
            pw[lane] = p_mul(pw[lane - s], pw[s - 1]);
        __syncthreads();
    }
    /* Horner over this lane's chunks, h = (h + m) * r^L, except after its
     * last chunk: times r^(n - last), where the chunk's power in the whole
     * polynomial says. UNROLL loads in flight. */
    struct p130 rl = pw[L - 1], h = p_zero(), re = rl;
    if (lane < n) {
        uint64_t last = lane + (n - 1 - lane) / L * L;
        re = pw[n - last - 1];
    }
    uint64_t c = lane;
    for (; c + (UNROLL - 1) * (uint64_t)L < n; c += UNROLL * (uint64_t)L) {
        struct p130 m[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            m[u] = load_chunk(j, plen, total, c + (uint64_t)u * L);
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            h = p_mul(p_add_raw(h, m[u]), c + (u + 1) * (uint64_t)L < n ? rl : re);
    }
    for (; c < n; c += L)
        h = p_mul(p_add_raw(h, load_chunk(j, plen, total, c)), c + L < n ? rl : re);
    struct p130 v = h; /* zero in lanes without a chunk */
    __syncthreads();
    pw[lane] = v;
    __syncthreads();
    for (uint32_t s = L / 2; s > 0; s >>= 1) {
        if (lane < s)
            pw[lane] = p_add(pw[lane], pw[lane + s]);
        __syncthreads();
    }
    if (lane == 0)
        p_finish(pw[0], j->key, out);
}

__global__ void __launch_bounds__(PD_TAG_LANES)
    tag_kernel(const struct pd_tag_job *jobs, uint8_t *tags, const uint8_t *want, uint8_t *ok)
{
    __shared__ uint8_t t[PD_TAG_LEN];
    const struct pd_tag_job *j = &jobs[blockIdx.x];
    tag_one(j, t);
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    if (!want) {
        for (int i = 0; i < PD_TAG_LEN; i++)
            tags[(uint64_t)blockIdx.x * PD_TAG_LEN + i] = t[i];
        return;
    }
    uint32_t diff = j->prefix_len > PD_TAG_PREFIX_MAX;
    for (int i = 0; i < PD_TAG_LEN; i++)
        diff |= t[i] ^ want[(uint64_t)blockIdx.x * PD_TAG_LEN + i];
    ok[blockIdx.x] = (uint8_t)(diff == 0);
}

static int launch(const struct pd_tag_job *jobs, uint32_t n, uint8_t *tags, const uint8_t *want,
                  uint8_t *ok, pd_stream_t stream)
{
    if (n == 0 || !jobs || (!tags && !(want && ok)))
        return -EINVAL;
    /* one block per job; a grid's x dimension takes 2^31 - 1 */
    tag_kernel<<<n, PD_TAG_LANES, 0, pd_cuda_stream(stream)>>>(jobs, tags, want, ok);
    return pd_cuda_launched("tag_kernel");
}

extern "C" int pd_tag_cuda(const struct pd_tag_job *jobs, uint32_t n, uint8_t *tags,
                           pd_stream_t stream)
{
    return launch(jobs, n, tags, NULL, NULL, stream);
}

extern "C" int pd_tag_verify_cuda(const struct pd_tag_job *jobs, uint32_t n,
                                  const uint8_t *want, uint8_t *ok, pd_stream_t stream)
{
    if (!want || !ok)
        return -EINVAL;
    return launch(jobs, n, NULL, want, ok, stream);
}
