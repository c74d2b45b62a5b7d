/* kernels/qdot_x86_impl.h: the x86-64 dots, included by qdot_x86.c once per ISA
 * with V(name) naming the versions and DPBUSD(acc, u8, s8) adding the dot
 * of each four unsigned x signed bytes to the 32-bit lanes of acc (AVX2:
 * VPMADDUBSW + VPMADDWD, pairs cannot saturate: |u| <= 128, |s| <= 127 and
 * the callers keep |u| <= 63 or pair a 128 with a sign-folded operand;
 * AVX-512 VNNI: VPDPBUSD). */

/* a half to float with F16C (exact, as pd_f16_decode, without its branches:
 * two a block in the hottest loops) */
#define F16(h) _cvtsh_ss(h)

/* 16 bytes of nibbles -> 32 unsigned bytes in element order (the low
 * nibbles are elements 0..15, the high 16..31) */
static inline __m256i V(unpack_q4)(const uint8_t *qs)
{
    const __m128i b = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0xF);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

/* signed w . signed x as unsigned |w| . (x with w's sign) */
static inline __m256i V(dot_s8)(__m256i w, __m256i x)
{
    return DPBUSD(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

static inline float V(hsum)(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256i V(ld)(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

static float V(dot_q4_0)(const void *w, const void *x, uint32_t k)
{
    const struct pd_blk_q4_0 *b = w;
    const struct pd_q8 *a = x;
    __m256 acc = _mm256_setzero_ps();
    float off = 0; /* the -8 of every nibble, from the activations' sums */
    for (uint32_t i = 0; i < k / 32; i++) {
        const float s = F16(b[i].d) * a[i].d;
        const __m256i p = DPBUSD(_mm256_setzero_si256(), V(unpack_q4)(b[i].qs), V(ld)(a[i].q));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s), acc);
        off += s * (float)a[i].sum;
    }
    return V(hsum)(acc) - 8.0f * off;
}

static float V(dot_q4_1)(const void *w, const void *x, uint32_t k)
{
    const struct pd_blk_q4_1 *b = w;
    const struct pd_q8 *a = x;
    __m256 acc = _mm256_setzero_ps();
    float off = 0; /* m . x of every block */
    for (uint32_t i = 0; i < k / 32; i++) {
        const __m256i p = DPBUSD(_mm256_setzero_si256(), V(unpack_q4)(b[i].qs), V(ld)(a[i].q));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(F16(b[i].d) * a[i].d),
                              acc);
        off += F16(b[i].m) * a[i].d * (float)a[i].sum;
    }
    return V(hsum)(acc) + off;
}

static float V(dot_q8_0)(const void *w, const void *x, uint32_t k)
{
    const struct pd_blk_q8_0 *b = w;
    const struct pd_q8 *a = x;
    __m256 acc = _mm256_setzero_ps();
    for (uint32_t i = 0; i < k / 32; i++) {
        const __m256i p = V(dot_s8)(V(ld)(b[i].qs), V(ld)(a[i].q));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(F16(b[i].d) * a[i].d),
                              acc);
    }
    return V(hsum)(acc);
}

static float V(dot_q4_k)(const void *w, const void *x, uint32_t k)
{
    const struct pd_blk_q4_k *b = w;
    const struct pd_q8 *a = x;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    float off = 0; /* dmin mn . x of every sub-block */
    for (uint32_t i = 0; i < k / PD_QK; i++, a += 8) {
        const float d = F16(b[i].d), dmin = F16(b[i].dmin);
        for (int c = 0; c < 4; c++) {
            uint8_t sc0, mn0, sc1, mn1;
            pd_q4k_scale_min(2 * c, b[i].scales, &sc0, &mn0);
            pd_q4k_scale_min(2 * c + 1, b[i].scales, &sc1, &mn1);
            const __m256i q = V(ld)(b[i].qs + 32 * c);
            const __m256i p0 = DPBUSD(_mm256_setzero_si256(), _mm256_and_si256(q, m4),
                                      V(ld)(a[2 * c].q));
            const __m256i p1 = DPBUSD(_mm256_setzero_si256(),
                                      _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                                      V(ld)(a[2 * c + 1].q));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(d * sc0 * a[2 * c].d),
                                  acc);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1),
                                  _mm256_set1_ps(d * sc1 * a[2 * c + 1].d), acc);
            off += dmin * (mn0 * a[2 * c].d * (float)a[2 * c].sum +
                           mn1 * a[2 * c + 1].d * (float)a[2 * c + 1].sum);
        }
    }
    return V(hsum)(acc) - off;
}

/* Q6_K: group g (0..3) of a half, 32 values q - 32 in -32..31, from the
 * half's ql (l0: bytes 0..31, l1: 32..63) and qh (32 bytes) */
static inline __m256i V(q6k_group)(__m256i l0, __m256i l1, __m256i qh, int g)
{
    const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
    const __m256i l = g & 1 ? l1 : l0;
    const __m256i lo = _mm256_and_si256(g < 2 ? l : _mm256_srli_epi16(l, 4), m4);
    const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), m2), 4);
    return _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
}

static float V(dot_q6_k)(const void *w, const void *x, uint32_t k)
{
    const struct pd_blk_q6_k *b = w;
    const struct pd_q8 *a = x;
    __m256 acc = _mm256_setzero_ps();
    for (uint32_t i = 0; i < k / PD_QK; i++) {
        const float d = F16(b[i].d);
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = V(ld)(b[i].ql + 64 * h), l1 = V(ld)(b[i].ql + 64 * h + 32);
            const __m256i qh = V(ld)(b[i].qh + 32 * h);
            for (int g = 0; g < 4; g++) {
                const __m256i q = V(q6k_group)(l0, l1, qh, g); /* -32..31 */
                const struct pd_q8 *ab = &a[8 * i + 4 * h + g];
                /* lanes 0-3 are elements 0..15 (scale sc[0]), lanes 4-7 16..31 (sc[1]) */
                const int8_t *sc = b[i].scales + 8 * h + 2 * g;
                const __m256i p = _mm256_mullo_epi32(V(dot_s8)(q, V(ld)(ab->q)),
                                                     _mm256_set_epi32(sc[1], sc[1], sc[1], sc[1],
                                                                      sc[0], sc[0], sc[0], sc[0]));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * ab->d), acc);
            }
        }
    }
    return V(hsum)(acc);
}

static inline __m256 V(bf16x8)(const uint16_t *h)
{
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)h));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* 16-bit weights (halves, or bfloat16 when bf) . float x */
static inline float V(dot_h16)(const uint16_t *h, const float *a, uint32_t k, int bf)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i + 16 <= k; i += 16) {
        const __m256 w0 = bf ? V(bf16x8)(h + i)
                             : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i)));
        const __m256 w1 = bf ? V(bf16x8)(h + i + 8)
                             : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i + 8)));
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(a + i), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(a + i + 8), acc1);
    }
    float s = V(hsum)(_mm256_add_ps(acc0, acc1));
    for (; i < k; i++)
        s += (bf ? pd_bf16_decode(h[i]) : F16(h[i])) * a[i];
    return s;
}

static float V(dot_f16)(const void *w, const void *x, uint32_t k)
{
    return V(dot_h16)(w, x, k, 0);
}

static float V(dot_bf16)(const void *w, const void *x, uint32_t k)
{
    return V(dot_h16)(w, x, k, 1);
}

/* ---- unpacking rows to float, bit for bit what pd_dequant_row writes (the
 * same products, unfused), for the float-activation path: a tile for
 * sgemm, or a chunk for the row kernel (the k-quants' float dots too) */

/* 16 unsigned bytes -> floats (q - sub) * scale (+ add when `add`) */
static inline void V(store_u8x16)(float *o, __m128i q, __m256 scale, const __m256 *add, int sub)
{
    for (int g = 0; g < 2; g++) {
        __m256i v = _mm256_cvtepu8_epi32(g ? _mm_srli_si128(q, 8) : q);
        v = _mm256_sub_epi32(v, _mm256_set1_epi32(sub));
        const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), scale);
        _mm256_storeu_ps(o + 8 * g, add ? _mm256_add_ps(f, *add) : f);
    }
}

/* Q4_0 (nibble - 8) d and Q4_1 nibble d + m: blocks of `bytes`, d at 0, m
 * at 2 when has_m, the nibbles after */
static inline void V(unpack_q4f)(const uint8_t *w, size_t bytes, int has_m, float *o,
                                 uint32_t k)
{
    const __m128i m = _mm_set1_epi8(0xF);
    for (uint32_t i = 0; i < k / 32; i++, o += 32, w += bytes) {
        uint16_t h[2];
        memcpy(h, w, sizeof(h));
        const __m128i q = _mm_loadu_si128((const __m128i *)(w + (has_m ? 4 : 2)));
        const __m256 d = _mm256_set1_ps(F16(h[0]));
        const __m256 mn = _mm256_set1_ps(has_m ? F16(h[1]) : 0.0f);
        V(store_u8x16)(o, _mm_and_si128(q, m), d, has_m ? &mn : NULL, has_m ? 0 : 8);
        V(store_u8x16)(o + 16, _mm_and_si128(_mm_srli_epi16(q, 4), m), d, has_m ? &mn : NULL,
                       has_m ? 0 : 8);
    }
}

static void V(unpack_q4_0)(const void *w, float *o, uint32_t k)
{
    V(unpack_q4f)(w, 18, 0, o, k);
}

static void V(unpack_q4_1)(const void *w, float *o, uint32_t k)
{
    V(unpack_q4f)(w, 20, 1, o, k);
}

static void V(unpack_q8_0)(const void *w, float *o, uint32_t k)
{
    const struct pd_blk_q8_0 *b = w;
    for (uint32_t i = 0; i < k / 32; i++, o += 32) {
        const __m256 d = _mm256_set1_ps(F16(b[i].d));
        for (int g = 0; g < 4; g++) {
            const __m128i q8 = _mm_loadl_epi64((const __m128i *)(b[i].qs + 8 * g));
            const __m256i v = _mm256_cvtepi8_epi32(q8);
            _mm256_storeu_ps(o + 8 * g, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
        }
    }
}

static void V(unpack_q4_k)(const void *w, float *o, uint32_t k)
{
    const struct pd_blk_q4_k *b = w;
    const __m128i m = _mm_set1_epi8(0xF);
    for (uint32_t i = 0; i < k / PD_QK; i++) {
        const float d = F16(b[i].d), dmin = F16(b[i].dmin);
        for (int j = 0; j < 8; j++, o += 32) {
            uint8_t sc, mn;
            pd_q4k_scale_min(j, b[i].scales, &sc, &mn);
            const __m256 ds = _mm256_set1_ps(d * sc), dm = _mm256_set1_ps(-(dmin * mn));
            for (int h = 0; h < 2; h++) {
                __m128i q = _mm_loadu_si128((const __m128i *)(b[i].qs + 32 * (j / 2) + 16 * h));
                q = _mm_and_si128(j & 1 ? _mm_srli_epi16(q, 4) : q, m);
                V(store_u8x16)(o + 16 * h, q, ds, &dm, 0);
            }
        }
    }
}

static void V(unpack_q6_k)(const void *w, float *o, uint32_t k)
{
    const struct pd_blk_q6_k *b = w;
    for (uint32_t i = 0; i < k / PD_QK; i++) {
        const float d = F16(b[i].d);
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = V(ld)(b[i].ql + 64 * h), l1 = V(ld)(b[i].ql + 64 * h + 32);
            const __m256i qh = V(ld)(b[i].qh + 32 * h);
            for (int g = 0; g < 4; g++, o += 32) {
                const __m256i q = V(q6k_group)(l0, l1, qh, g);
                const int8_t *sc = b[i].scales + 8 * h + 2 * g;
                for (int s = 0; s < 4; s++) { /* 8 elements; s / 2 picks the 16's scale */
                    const __m128i q16 = s < 2 ? _mm256_castsi256_si128(q)
                                              : _mm256_extracti128_si256(q, 1);
                    const __m256i v = _mm256_cvtepi8_epi32(s & 1 ? _mm_srli_si128(q16, 8) : q16);
                    const __m256 scale = _mm256_set1_ps(d * (float)sc[s / 2]);
                    _mm256_storeu_ps(o + 8 * s, _mm256_mul_ps(scale, _mm256_cvtepi32_ps(v)));
                }
            }
        }
    }
}

static void V(unpack_f16)(const void *w, float *o, uint32_t k)
{
    const uint16_t *h = w;
    uint32_t i = 0;
    for (; i + 8 <= k; i += 8)
        _mm256_storeu_ps(o + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < k; i++)
        o[i] = F16(h[i]);
}

static void V(unpack_bf16)(const void *w, float *o, uint32_t k)
{
    const uint16_t *h = w;
    uint32_t i = 0;
    for (; i + 8 <= k; i += 8)
        _mm256_storeu_ps(o + i, V(bf16x8)(h + i));
    for (; i < k; i++)
        o[i] = pd_bf16_decode(h[i]);
}

static const struct pd_qdot_tables V(tables); /* below */

/* Q4_0, Q4_1 and Q8_0 . float x, fused: each block's 32 values converted in
 * registers and multiplied, sum (q x) scaled by d once per block (and, for
 * Q4_1, m times the sum of x; Q4_0's -8 likewise) */
#ifndef QDOT_AVX512
static inline __m256 V(q4f)(__m128i q8, const float *x, __m256 *xs)
{
    const __m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8);
    *xs = _mm256_add_ps(x0, x1);
    const __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q8));
    const __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q8, 8)));
    return _mm256_fmadd_ps(q1, x1, _mm256_mul_ps(q0, x0));
}

static float V(dotf_q4)(const uint8_t *w, size_t bytes, int has_m, float off, const float *x,
                        uint32_t k)
{
    const __m128i m4 = _mm_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (uint32_t i = 0; i < k / 32; i++, w += bytes, x += 32) {
        const __m128i q = _mm_loadu_si128((const __m128i *)(w + 2 + 2 * has_m));
        __m256 xs0, xs1;
        const __m256 lo = V(q4f)(_mm_and_si128(q, m4), x, &xs0);
        const __m256 hi = V(q4f)(_mm_and_si128(_mm_srli_epi16(q, 4), m4), x + 16, &xs1);
        uint16_t d16, m16 = 0;
        memcpy(&d16, w, 2);
        if (has_m)
            memcpy(&m16, w + 2, 2);
        const float d = F16(d16);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_add_ps(lo, hi), acc);
        /* Q4_1: + m sum(x); Q4_0: - 8 d sum(x) */
        const float c = has_m ? F16(m16) : off * d;
        accm = _mm256_fmadd_ps(_mm256_set1_ps(c), _mm256_add_ps(xs0, xs1), accm);
    }
    return V(hsum)(_mm256_add_ps(acc, accm));
}

#else
/* the same with 16 values a register, the scale and offset folded into a
 * 16-entry table per block: w = table[nibble] = d nibble + m (Q4_0:
 * d (nibble - 8)), looked up with VPERMPS, so each 16 weights cost a
 * zero-extension, a lookup and an FMA (the decode step's hottest loop) */
static float V(dotf_q4_512)(const uint8_t *w, size_t bytes, int has_m, float off, const float *x,
                            uint32_t k)
{
    (void)off;
    const __m128i m4 = _mm_set1_epi8(0xF);
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 iota8 = _mm512_sub_ps(iota, _mm512_set1_ps(8));
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (uint32_t i = 0; i < k / 32; i++, w += bytes, x += 32) {
        uint32_t dm;
        memcpy(&dm, w, 4); /* d, and m when has_m */
        const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm));
        const __m512 d = _mm512_broadcastss_ps(f);
        const __m512 table = has_m ? _mm512_fmadd_ps(iota, d, _mm512_broadcastss_ps(
                                                                   _mm_movehdup_ps(f)))
                                   : _mm512_mul_ps(iota8, d);
        const __m128i q = _mm_loadu_si128((const __m128i *)(w + 2 + 2 * has_m));
        const __m512 lo =
            _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, m4)), table);
        const __m512 hi = _mm512_permutexvar_ps(
            _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m4)), table);
        acc0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x), acc0);
        acc1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}
#define DOTF_Q4 V(dotf_q4_512)
#endif
#ifndef DOTF_Q4
#define DOTF_Q4 V(dotf_q4)
#endif

static float V(dotf_Q4_0)(const void *w, const void *x, uint32_t k)
{
    return DOTF_Q4(w, 18, 0, -8.0f, x, k);
}

static float V(dotf_Q4_1)(const void *w, const void *x, uint32_t k)
{
    return DOTF_Q4(w, 20, 1, 0, x, k);
}
#undef DOTF_Q4

static float V(dotf_Q8_0)(const void *w, const void *x_, uint32_t k)
{
#ifdef QDOT_AVX512
    const struct pd_blk_q8_0 *b = w;
    const float *x = x_;
    __m512 acc = _mm512_setzero_ps();
    for (uint32_t i = 0; i < k / 32; i++, x += 32) {
        const __m128i q0 = _mm_loadu_si128((const __m128i *)b[i].qs);
        const __m128i q1 = _mm_loadu_si128((const __m128i *)(b[i].qs + 16));
        const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)),
                                         _mm512_loadu_ps(x + 16),
                                         _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)),
                                                       _mm512_loadu_ps(x)));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(F16(b[i].d)), t, acc);
    }
    return _mm512_reduce_add_ps(acc);
#else
    const struct pd_blk_q8_0 *b = w;
    const float *x = x_;
    __m256 acc = _mm256_setzero_ps();
    for (uint32_t i = 0; i < k / 32; i++, x += 32) {
        __m256 t = _mm256_setzero_ps();
        for (int g = 0; g < 4; g++) {
            const __m256i v =
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b[i].qs + 8 * g)));
            t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(x + 8 * g), t);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(b[i].d)), t, acc);
    }
    return V(hsum)(acc);
#endif
}

/* y[i * y_stride] = w . x[i * x_stride] for i < m (m <= PD_QDOT_MAX_ROWS):
 * W's row unpacked a chunk at a time into L1 and multiplied by four rows of
 * x at once (five loads a four FMAs), so that it is read once for the batch */
static void V(rows)(uint32_t type, const void *w, const float *x, size_t x_stride, uint32_t m,
                    uint32_t k, float *y, size_t y_stride)
{
    enum { CHUNK = 256 };
    float buf[CHUNK] __attribute__((aligned(32)));
    __m256 acc[PD_QDOT_MAX_ROWS];
    float tail[PD_QDOT_MAX_ROWS];
    const struct pd_dtype_info *ti = pd_dtype_info(type);
    pd_unpack_fn *unpack = V(tables).unpack[type];
    const char *wb = w;
    for (uint32_t i = 0; i < m; i++)
        acc[i] = _mm256_setzero_ps(), tail[i] = 0;
    for (uint32_t c = 0; c < k; c += CHUNK) {
        const uint32_t n = k - c < CHUNK ? k - c : CHUNK, n8 = n & ~7u;
        unpack(wb + (size_t)c / ti->block * ti->bytes, buf, n);
        uint32_t i = 0;
        for (; i + 4 <= m; i += 4) {
            const float *x0 = x + i * x_stride + c, *x1 = x0 + x_stride;
            const float *x2 = x1 + x_stride, *x3 = x2 + x_stride;
            __m256 a0 = acc[i], a1 = acc[i + 1], a2 = acc[i + 2], a3 = acc[i + 3];
            for (uint32_t j = 0; j < n8; j += 8) {
                const __m256 wv = _mm256_load_ps(buf + j);
                a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + j), a0);
                a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + j), a1);
                a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + j), a2);
                a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + j), a3);
            }
            acc[i] = a0, acc[i + 1] = a1, acc[i + 2] = a2, acc[i + 3] = a3;
        }
        for (; i < m; i++) {
            const float *xi = x + i * x_stride + c;
            __m256 a0 = acc[i];
            for (uint32_t j = 0; j < n8; j += 8)
                a0 = _mm256_fmadd_ps(_mm256_load_ps(buf + j), _mm256_loadu_ps(xi + j), a0);
            acc[i] = a0;
        }
        for (uint32_t j = n8; j < n; j++)
            for (i = 0; i < m; i++)
                tail[i] += buf[j] * x[i * x_stride + c + j];
    }
    for (uint32_t i = 0; i < m; i++)
        y[i * y_stride] = V(hsum)(acc[i]) + tail[i];
}

/* the k-quants . float x: their row unpacked a chunk at a time into L1, the
 * row kernel's one-row case */
#define DOTF(t)                                                                                    \
    static float V(dotf_##t)(const void *w, const void *x, uint32_t k)                           \
    {                                                                                              \
        float y;                                                                                   \
        V(rows)(PD_DT_##t, w, x, k, 1, k, &y, 1);                                                  \
        return y;                                                                                  \
    }
DOTF(Q4_K)
DOTF(Q6_K)
#undef DOTF

static const struct pd_qdot_tables V(tables) = {
    .rows = V(rows),
    .q8 = {[PD_DT_Q4_0] = V(dot_q4_0), [PD_DT_Q4_1] = V(dot_q4_1), [PD_DT_Q8_0] = V(dot_q8_0),
           [PD_DT_Q4_K] = V(dot_q4_k), [PD_DT_Q6_K] = V(dot_q6_k), [PD_DT_F16] = V(dot_f16),
           [PD_DT_BF16] = V(dot_bf16)},
    .f32 = {[PD_DT_Q4_0] = V(dotf_Q4_0), [PD_DT_Q4_1] = V(dotf_Q4_1), [PD_DT_Q8_0] = V(dotf_Q8_0),
            [PD_DT_Q4_K] = V(dotf_Q4_K), [PD_DT_Q6_K] = V(dotf_Q6_K), [PD_DT_F16] = V(dot_f16),
            [PD_DT_BF16] = V(dot_bf16)},
    .unpack = {[PD_DT_Q4_0] = V(unpack_q4_0), [PD_DT_Q4_1] = V(unpack_q4_1),
               [PD_DT_Q8_0] = V(unpack_q8_0), [PD_DT_Q4_K] = V(unpack_q4_k),
               [PD_DT_Q6_K] = V(unpack_q6_k), [PD_DT_F16] = V(unpack_f16),
               [PD_DT_BF16] = V(unpack_bf16)},
};
