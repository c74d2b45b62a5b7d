#include "attention.h"

#include "parallel.h"
#include "qdot.h"

#include "bf16.h"
#include "quant.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Query rows per GEMM tile: bounds the score matrix at QTILE x context. */
#define QTILE 256
/* head_dim bound for a BF16 pool's row buffers (models allow up to 1024) */
#define MAX_HEAD_DIM 1024

/* n elements of a 16-bit pool (BF16 or F16) from element offset off, widened */
static void widen(const struct pd_attn_args *a, uint64_t off, size_t n, float *dst)
{
    const uint16_t *p = (const uint16_t *)(const void *)a->pool + off;
    if (a->pool_type == PD_DT_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = pd_bf16_decode(p[i]);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = pd_f16_decode(p[i]);
}

/* head_dim elements at element offset off as floats: a pointer into an F32
 * pool, or a 16-bit pool's row converted into buf. */
static const float *kv_row(const struct pd_attn_args *a, uint64_t off, float *buf)
{
    if (a->pool_type == PD_DT_F32)
        return a->pool + off;
    widen(a, off, a->kv.head_dim, buf);
    return buf;
}

static void softmax_row(float *s, uint32_t n)
{
    float mx = -INFINITY, sum = 0.0f;
    for (uint32_t j = 0; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    for (uint32_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    float inv = 1.0f / sum;
    for (uint32_t j = 0; j < n; j++)
        s[j] *= inv;
}

/* A decode step: one (token, head), scores over the context, softmax,
 * weighted sum of V. */
/* What one (token, head) of a decode step reads and writes */
struct one {
    const uint32_t *table; /* its sequence's blocks */
    uint32_t hd, kvh, n_ctx;
    const float *q; /* (hd) */
    float *o; /* (hd) */
};

static struct one one_at(const struct pd_attn_args *a, uint32_t t, uint32_t h)
{
    const uint32_t hd = a->kv.head_dim;
    return (struct one){.table = a->block_tables + (size_t)a->tok_seq[t] * a->max_blocks,
                        .hd = hd,
                        .kvh = h / (a->n_head / a->kv.n_head_kv),
                        .n_ctx = (uint32_t)a->tok_pos[t] + 1,
                        .q = a->q + t * pd_attn_q_ld(a) + (size_t)h * hd,
                        .o = a->out + ((size_t)t * a->n_head + h) * hd};
}

static void attend_one(const struct pd_attn_args *a, uint32_t t, uint32_t h, float *scores)
{
    const struct pd_kv_geom *l = &a->kv;
    const struct one at = one_at(a, t, h);
    float row[MAX_HEAD_DIM];

    for (uint32_t j = 0; j < at.n_ctx; j++) {
        const float *k = kv_row(a, pd_kv_pos_offset(l, at.table, j, a->layer, 0, at.kvh), row);
        /* eight partial sums: a vector's lanes, without reassociating */
        float p[8] = {0};
        uint32_t d = 0;
        for (; d + 8 <= at.hd; d += 8)
            for (int i = 0; i < 8; i++)
                p[i] += at.q[d + i] * k[d + i];
        float s = ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
        for (; d < at.hd; d++)
            s += at.q[d] * k[d];
        scores[j] = s * a->scale;
    }
    softmax_row(scores, at.n_ctx);
    /* summed where nothing can alias the pool, so that it vectorizes */
    float acc[MAX_HEAD_DIM];
    memset(acc, 0, at.hd * sizeof(float));
    for (uint32_t j = 0; j < at.n_ctx; j++) {
        const float *v = kv_row(a, pd_kv_pos_offset(l, at.table, j, a->layer, 1, at.kvh), row);
        const float w = scores[j];
        uint32_t d = 0;
        for (; d + 8 <= at.hd; d += 8) /* in eights: one vector each */
            for (int i = 0; i < 8; i++)
                acc[d + i] += w * v[d + i];
        for (; d < at.hd; d++)
            acc[d] += w * v[d];
    }
    memcpy(at.o, acc, at.hd * sizeof(float));
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* attend_one for fp32 pools with head_dim a multiple of 8, in AVX2 (the
 * portable loops above do not vectorize well at this ISA baseline); the
 * same sums in another order */
#pragma GCC push_options
#pragma GCC target("avx2,fma")
static inline float hsum8(__m256 v)
{
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
}

static void attend_one_avx2(const struct pd_attn_args *a, uint32_t t, uint32_t h, float *scores)
{
    const struct pd_kv_geom *l = &a->kv;
    const struct one at = one_at(a, t, h);
    const uint32_t bs = l->block_size, hd = at.hd;
    /* a block's K (and V) rows of this head are one (bs, hd) tile: walk the
     * blocks, not each position through the table (two divisions each) */
    for (uint32_t b = 0; b * bs < at.n_ctx; b++) {
        const float *kt = a->pool + pd_kv_offset(l, at.table[b], a->layer, 0, at.kvh, 0);
        const uint32_t n = at.n_ctx - b * bs < bs ? at.n_ctx - b * bs : bs;
        float *sc = scores + b * bs;
        uint32_t i = 0;
        for (; i + 4 <= n; i += 4) { /* four rows at a time: four independent FMA chains */
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                             _mm256_setzero_ps()};
            for (uint32_t d = 0; d < hd; d += 8) {
                const __m256 qv = _mm256_loadu_ps(at.q + d);
                for (uint32_t r = 0; r < 4; r++)
                    acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kt + (i + r) * hd + d), acc[r]);
            }
            for (uint32_t r = 0; r < 4; r++)
                sc[i + r] = hsum8(acc[r]) * a->scale;
        }
        for (; i < n; i++) {
            __m256 acc = _mm256_setzero_ps();
            for (uint32_t d = 0; d < hd; d += 8)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(at.q + d), _mm256_loadu_ps(kt + i * hd + d),
                                      acc);
            sc[i] = hsum8(acc) * a->scale;
        }
    }
    softmax_row(scores, at.n_ctx);
    for (uint32_t d0 = 0; d0 < hd; d0 += 32) { /* 32 outputs in registers at a time */
        const uint32_t nd = hd - d0 < 32 ? hd - d0 : 32;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (uint32_t b = 0; b * bs < at.n_ctx; b++) {
            const float *vt = a->pool + pd_kv_offset(l, at.table[b], a->layer, 1, at.kvh, 0) + d0;
            const uint32_t n = at.n_ctx - b * bs < bs ? at.n_ctx - b * bs : bs;
            for (uint32_t i = 0; i < n; i++) {
                const __m256 w = _mm256_set1_ps(scores[b * bs + i]);
                for (uint32_t g = 0; g < nd / 8; g++)
                    acc[g] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vt + i * hd + 8 * g), acc[g]);
            }
        }
        for (uint32_t g = 0; g < nd / 8; g++)
            _mm256_storeu_ps(at.o + d0 + 8 * g, acc[g]);
    }
}
#pragma GCC pop_options
#endif

/* Copy K or V of one head for positions [0, n_ctx) into (n_ctx, head_dim). */
static void gather(const struct pd_attn_args *a, const uint32_t *table, uint32_t kvh, uint32_t kv,
                   uint32_t n_ctx, float *dst)
{
    const struct pd_kv_geom *l = &a->kv;
    const uint32_t bs = l->block_size, hd = l->head_dim;
    for (uint32_t b = 0; b * bs < n_ctx; b++) {
        uint32_t n = n_ctx - b * bs < bs ? n_ctx - b * bs : bs;
        uint64_t off = pd_kv_offset(l, table[b], a->layer, kv, kvh, 0);
        if (a->pool_type == PD_DT_F32)
            memcpy(dst + (size_t)b * bs * hd, a->pool + off, (size_t)n * hd * sizeof(float));
        else
            widen(a, off, (size_t)n * hd, dst + (size_t)b * bs * hd);
    }
}

/* A prefill run: tokens [t0, t0 + n) of one sequence at consecutive positions. */
static int attend_run(const struct pd_attn_args *a, uint32_t t0, uint32_t n, float *kbuf,
                      float *vbuf, float *scores)
{
    const struct pd_kv_geom *l = &a->kv;
    const uint32_t hd = l->head_dim, group = a->n_head / l->n_head_kv;
    const uint32_t *table = a->block_tables + (size_t)a->tok_seq[t0] * a->max_blocks;
    const uint32_t p0 = (uint32_t)a->tok_pos[t0], n_ctx = p0 + n;
    const int ld = (int)(a->n_head * hd); /* row stride of out */
    const int q_ld = (int)pd_attn_q_ld(a);

    for (uint32_t kvh = 0; kvh < l->n_head_kv; kvh++) {
        gather(a, table, kvh, 0, n_ctx, kbuf);
        gather(a, table, kvh, 1, n_ctx, vbuf);
        for (uint32_t g = 0; g < group; g++) {
            const uint32_t h = kvh * group + g;
            for (uint32_t r0 = 0; r0 < n; r0 += QTILE) {
                const uint32_t rows = n - r0 < QTILE ? n - r0 : QTILE;
                /* the last row of the tile sees the most context */
                const uint32_t ctx = p0 + r0 + rows;
                const float *q = a->q + (size_t)(t0 + r0) * (size_t)q_ld + (size_t)h * hd;
                float *o = a->out + (size_t)(t0 + r0) * (size_t)ld + (size_t)h * hd;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)ctx, (int)hd,
                            a->scale, q, q_ld, kbuf, (int)hd, 0.0f, scores, (int)ctx);
                for (uint32_t i = 0; i < rows; i++) {
                    /* causal: row i (position p0 + r0 + i) sees [0, p0 + r0 + i] */
                    uint32_t seen = p0 + r0 + i + 1;
                    float *s = scores + (size_t)i * ctx;
                    softmax_row(s, seen);
                    memset(s + seen, 0, (ctx - seen) * sizeof(float));
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)hd, (int)ctx,
                            1.0f, scores, (int)ctx, vbuf, (int)hd, 0.0f, o, ld);
            }
        }
    }
    return 0;
}

/* The decode tokens' (token, head) pairs, shared among the pool's threads */
struct decode_job {
    const struct pd_attn_args *a;
    const uint32_t *tok; /* (n_tok) the tokens attended alone */
    uint32_t n_tok;
    float *scores; /* need_ctx floats per thread */
    size_t need_ctx;
};

static void decode_share(void *arg, unsigned s, unsigned ns, unsigned thread)
{
    const struct decode_job *j = arg;
    const uint32_t n_pairs = j->n_tok * j->a->n_head;
    const uint32_t per = (n_pairs + ns - 1) / ns, p0 = s * per;
    void (*one)(const struct pd_attn_args *, uint32_t, uint32_t, float *) = attend_one;
#if defined(__x86_64__) && defined(__GNUC__)
    if (j->a->pool_type == PD_DT_F32 && j->a->kv.head_dim % 8 == 0 &&
        pd_isa_best() >= PD_ISA_AVX2) /* kernels/qdot's choice, PD_CPU_ISA included */
        one = attend_one_avx2;
#endif
    for (uint32_t p = p0; p < n_pairs && p < p0 + per; p++)
        one(j->a, j->tok[p / j->a->n_head], p % j->a->n_head, j->scores + thread * j->need_ctx);
}

int pd_attention_cpu(const struct pd_attn_args *a)
{
    const size_t max_ctx = (size_t)a->max_blocks * a->kv.block_size;
    const size_t hd = a->kv.head_dim;
    size_t need_ctx = 1;
    int rc = 0;

    if (a->n_head % a->kv.n_head_kv != 0 || a->io_type != PD_DT_F32 || a->out_type != PD_DT_F32 ||
        (a->q_ld && a->q_ld < a->n_head * hd))
        return -EINVAL;
    if (a->pool_type != PD_DT_F32 &&
        ((a->pool_type != PD_DT_BF16 && a->pool_type != PD_DT_F16) || hd > MAX_HEAD_DIM))
        return -EINVAL;
    for (uint32_t t = 0; t < a->n_tokens; t++) {
        if (a->tok_pos[t] < 0 || (size_t)a->tok_pos[t] >= max_ctx)
            return -EINVAL;
        if ((size_t)a->tok_pos[t] + 1 > need_ctx)
            need_ctx = (size_t)a->tok_pos[t] + 1;
    }
    /* sized for the longest context in this call, and a row per thread */
    const unsigned ns = pd_pool_size(a->threads);
    const size_t rows = ns > QTILE ? ns : QTILE;
    float *scores = malloc(rows * need_ctx * sizeof(float));
    float *kbuf = malloc(need_ctx * hd * sizeof(float));
    float *vbuf = malloc(need_ctx * hd * sizeof(float));
    uint32_t *alone = malloc(a->n_tokens * sizeof(uint32_t) + 1);
    uint32_t n_alone = 0;
    if (!scores || !kbuf || !vbuf || !alone)
        rc = -ENOMEM;

    for (uint32_t t = 0; t < a->n_tokens && rc == 0;) {
        /* the run of tokens continuing this one's sequence */
        uint32_t n = 1;
        while (t + n < a->n_tokens && a->tok_seq[t + n] == a->tok_seq[t] &&
               a->tok_pos[t + n] == a->tok_pos[t] + (int32_t)n)
            n++;
        if (n == 1)
            alone[n_alone++] = t; /* below, on the pool's threads */
        else
            rc = attend_run(a, t, n, kbuf, vbuf, scores);
        t += n;
    }
    if (rc == 0 && n_alone) {
        struct decode_job j = {.a = a, .tok = alone, .n_tok = n_alone, .scores = scores,
                               .need_ctx = need_ctx};
        pd_pool_run(a->threads, decode_share, &j);
    }
    free(alone);
    free(scores);
    free(kbuf);
    free(vbuf);
    return rc;
}
