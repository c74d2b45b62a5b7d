/* kernels/sample.cu: pd_sample on the GPU, one thread block per row
 * (kernels/sample.h says what and why; kernels/sample.c is the reference).
 *
 * Per row, in the row's workspace (w: processed logits, pr: unnormalised
 * probabilities, cnt: marks and counts, n_vocab each):
 *   1. w = logits (NaN, and a token the row's mask leaves out, as -inf); the
 *      logit bias (one thread, in the
 *      entries' order, as the CPU adds them); repetition penalty once per distinct token
 *      of the history (a CAS on its mark), presence / frequency penalties
 *      once per distinct output token with its count (atomic counts, then an
 *      exchange that hands each token's count to one thread)
 *   2. log-sum-exp of the raw logits: lse_kernel's partials (below)
 *      combined in slice order
 *   3. greedy: the largest w, lower id on a tie; or w /= temperature,
 *      pr = expf(w - max), and three radix descents over the keys
 *      (order(w) << 32 | ~id, descending = the CPU's sort order): the top_k-th
 *      key by count, the top_p cut by mass, and the draw by mass; min_p is a
 *      threshold on pr, a prefix of the same order
 *   A row with a forced token (scoring) skips 3: the token is given (its
 *   history and bias are empty, so 1 is one pass).
 *   4. the chosen token's log-probability and the n_logprobs most probable,
 *      by repeated block argmax (n <= 20)
 * Block reductions use one shared slot per thread and a fixed tree, so
 * every result is the same on every run.
 */
#include "cuda_check.cuh"
#include "philox.h"
#include "sample.h"

#include <math.h>
#include <string.h>

#define SMP_THREADS 256
#define SMP_FP_ONE 70368744177664.0 /* 2^46: probability mass in fixed point */
/* The log-sum-exp over the vocabulary is spread over blocks: a row's logits
 * in n_slices slices of about LSE_SLICE (at most LSE_MAX_SLICES slices),
 * each block one slice's max and sum of exp(x - max) in double (a fixed
 * tree), combined in slice order by the row's sampling block. One block per
 * row summing all 128k of Llama-3's logits in double was a decode step's
 * serial tail at small batches (issue 31, item 4). The slices depend on
 * n_vocab alone: a row's log-probabilities do not depend on its batch. */
#define LSE_SLICE 4096u
#define LSE_MAX_SLICES 64u

struct smp_params {
    struct pd_sample_args a;
    uint64_t row_bytes;
    double *lse_parts; /* (n_rows, n_slices, 2): each slice's max, sum */
    uint32_t n_slices, slice_len;
};

static uint32_t lse_slices(uint32_t n_vocab)
{
    const uint32_t n = (n_vocab + LSE_SLICE - 1) / LSE_SLICE;
    return n < 1 ? 1 : n > LSE_MAX_SLICES ? LSE_MAX_SLICES : n;
}

/* ---- block reductions (fixed tree: deterministic) ----------------------- */

struct smp_shared {
    double d[SMP_THREADS];
    float f[SMP_THREADS];
    uint32_t u[SMP_THREADS];
    unsigned long long hist[256];
    uint64_t bcast[2];
    int32_t taken[PD_MAX_LOGPROBS];
};

/* op over every thread's v, through slot[SMP_THREADS] */
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T *slot, T v, Op op)
{
    const unsigned t = threadIdx.x;
    __syncthreads();
    slot[t] = v;
    __syncthreads();
    for (unsigned s = SMP_THREADS / 2; s > 0; s /= 2) {
        if (t < s)
            slot[t] = op(slot[t], slot[t + s]);
        __syncthreads();
    }
    return slot[0];
}

__device__ __forceinline__ double block_sum_d(struct smp_shared &sh, double v)
{
    return block_reduce(sh.d, v, [](double a, double b) { return a + b; });
}

/* (value, id) with the larger value, the lower id on a tie; -inf / UINT32_MAX = none */
__device__ __forceinline__ void better(float &v, uint32_t &id, float v2, uint32_t id2)
{
    if (id2 != UINT32_MAX && (id == UINT32_MAX || v2 > v || (v2 == v && id2 < id)))
        v = v2, id = id2;
}

__device__ __forceinline__ uint32_t block_argmax(struct smp_shared &sh, float v, uint32_t id)
{
    const unsigned t = threadIdx.x;
    __syncthreads();
    sh.f[t] = v;
    sh.u[t] = id;
    __syncthreads();
    for (unsigned s = SMP_THREADS / 2; s > 0; s /= 2) {
        if (t < s) {
            float bv = sh.f[t];
            uint32_t bi = sh.u[t];
            better(bv, bi, sh.f[t + s], sh.u[t + s]);
            sh.f[t] = bv, sh.u[t] = bi;
        }
        __syncthreads();
    }
    return sh.u[0];
}

__device__ __forceinline__ float block_max(struct smp_shared &sh, float v)
{
    return block_reduce(sh.f, v, [](float a, float b) { return fmaxf(a, b); });
}

/* ---- the order of the CPU's sort, as keys ---------------------------------- */

/* Descending key = descending w, then ascending id. -0 counts as +0 (the
 * CPU compares values), NaN never occurs (step 1 made it -inf). */
__device__ __forceinline__ uint64_t key_of(float w, uint32_t id)
{
    uint32_t b = __float_as_uint(w == 0.0f ? 0.0f : w);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return (uint64_t)b << 32 | (uint64_t)(0xffffffffu - id);
}

__device__ __forceinline__ uint64_t fixed_mass(float p)
{
    return (uint64_t)((double)p * SMP_FP_ONE + 0.5);
}

/* Among the ids with key >= floor, taken in descending key order: the key of
 * the first whose running weight (its own included) reaches target (>= when
 * ge, > otherwise); 0 when none does. The weight is 1 (by_count) or the
 * fixed-point mass of pr. Eight passes over the row, a byte of the key each. */
__device__ uint64_t select_key(struct smp_shared &sh, const float *w, const float *pr, uint32_t V,
                               uint64_t floor, unsigned long long target, bool by_count, bool ge)
{
    const unsigned t = threadIdx.x;
    uint64_t prefix = 0;
    unsigned long long above = 0; /* weight of the ids above the current prefix */

    /* ">= 0" would be met by an empty bin before any id: the first id is
     * where a zero target is reached (top_p small enough to round to 0) */
    if (ge && target == 0)
        target = 1;

    for (int level = 7; level >= 0; level--) {
        const int shift = level * 8;
        __syncthreads();
        for (unsigned b = t; b < 256; b += SMP_THREADS)
            sh.hist[b] = 0;
        __syncthreads();
        for (uint32_t i = t; i < V; i += SMP_THREADS) {
            const uint64_t k = key_of(w[i], i);
            if (k < floor || (level < 7 && (k >> (shift + 8)) != (prefix >> (shift + 8))))
                continue;
            atomicAdd(&sh.hist[(k >> shift) & 255], by_count ? 1ull : (unsigned long long)fixed_mass(pr[i]));
        }
        __syncthreads();
        if (t == 0) {
            int b = 255;
            for (; b >= 0; b--) {
                const unsigned long long run = above + sh.hist[b];
                if (ge ? run >= target : run > target)
                    break;
                above = run;
            }
            sh.bcast[0] = b < 0 ? 0 : prefix | (uint64_t)b << shift;
            sh.bcast[1] = b < 0;
        }
        __syncthreads();
        if (sh.bcast[1])
            return 0;
        prefix = sh.bcast[0]; /* `above` is thread 0's alone: only it scans */
    }
    return prefix;
}

/* The smallest key of the ids with key >= floor and pr >= min_pr: where the
 * kept prefix ends (the ids at or above a probability are a prefix: pr falls
 * along the order). UINT64_MAX when none. */
__device__ uint64_t smallest_key(struct smp_shared &sh, const float *w, const float *pr,
                                 uint32_t V, uint64_t floor, float min_pr)
{
    const unsigned t = threadIdx.x;
    uint64_t lo = UINT64_MAX;
    for (uint32_t i = t; i < V; i += SMP_THREADS) {
        const uint64_t k = key_of(w[i], i);
        if (k >= floor && pr[i] >= min_pr && k < lo)
            lo = k;
    }
    __syncthreads();
    if (t == 0)
        sh.bcast[0] = UINT64_MAX;
    __syncthreads();
    atomicMin((unsigned long long *)&sh.bcast[0], (unsigned long long)lo);
    __syncthreads();
    return sh.bcast[0];
}

/* fixed-point mass of the ids with key >= floor */
__device__ unsigned long long mass_from(struct smp_shared &sh, const float *w, const float *pr,
                                        uint32_t V, uint64_t floor)
{
    const unsigned t = threadIdx.x;
    __syncthreads();
    if (t == 0)
        sh.hist[0] = 0;
    __syncthreads();
    unsigned long long m = 0;
    for (uint32_t i = t; i < V; i += SMP_THREADS)
        if (key_of(w[i], i) >= floor)
            m += fixed_mass(pr[i]);
    atomicAdd(&sh.hist[0], m);
    __syncthreads();
    return sh.hist[0];
}

/* ---- the kernel ------------------------------------------------------------ */

__global__ void __launch_bounds__(SMP_THREADS) sample_kernel(const struct smp_params sp)
{
    __shared__ struct smp_shared sh;
    const struct pd_sample_args &a = sp.a;
    const unsigned t = threadIdx.x;
    const uint32_t r = blockIdx.x, V = a.n_vocab;
    const float *lg = a.logits + (uint64_t)r * V;
    float *w = (float *)((char *)a.workspace + r * sp.row_bytes);
    float *pr = w + V;
    uint32_t *cnt = (uint32_t *)(pr + V);
    const struct pd_sampling P = a.params[r];
    const int32_t forced = a.forced ? a.forced[r] : -1;
    const uint32_t h0 = a.hist_start[r], nh = a.hist_start[r + 1] - h0, np = a.n_prompt[r];
    const int32_t *hist = a.hist + h0;

    const bool valid = P.temperature >= 0.0f && P.temperature <= 100.0f && P.top_k >= 0 &&
                       P.top_p > 0.0f && P.top_p <= 1.0f && P.min_p >= 0.0f && P.min_p <= 1.0f &&
                       P.repetition_penalty > 0.0f && P.n_logprobs <= PD_MAX_LOGPROBS &&
                       np <= nh && a.hist_start[r + 1] >= h0 &&
                       (!a.bias || a.bias_start[r + 1] - a.bias_start[r] <= PD_MAX_LOGIT_BIAS) &&
                       (forced < 0 || (uint32_t)forced < V);
    if (!valid) {
        if (t == 0)
            a.token[r] = -1, a.logprob[r] = NAN, a.n_top[r] = 0;
        return;
    }

    /* 1. processed logits and penalties */
    const uint32_t *mask = a.mask && a.mask_row[r] != UINT32_MAX
                               ? a.mask + (uint64_t)a.mask_row[r] * ((V + 31) / 32)
                               : NULL;
    for (uint32_t i = t; i < V; i += SMP_THREADS) {
        w[i] = isnan(lg[i]) || !pd_mask_allows(mask, i) ? -INFINITY : lg[i];
        cnt[i] = 0;
    }
    __syncthreads();
    if (a.bias && t == 0) /* at most PD_MAX_LOGIT_BIAS: one thread keeps the CPU's sums */
        for (uint32_t j = a.bias_start[r]; j < a.bias_start[r + 1]; j++)
            if ((uint32_t)a.bias[j].token < V)
                w[a.bias[j].token] += a.bias[j].bias;
    __syncthreads();
    if (P.repetition_penalty != 1.0f) {
        for (uint32_t j = t; j < nh; j += SMP_THREADS) {
            const uint32_t id = (uint32_t)hist[j];
            if (id < V && atomicCAS(&cnt[id], 0u, 1u) == 0u)
                w[id] = w[id] > 0 ? w[id] / P.repetition_penalty : w[id] * P.repetition_penalty;
        }
        __syncthreads();
        for (uint32_t j = t; j < nh; j += SMP_THREADS)
            if ((uint32_t)hist[j] < V)
                cnt[hist[j]] = 0;
        __syncthreads();
    }
    if (P.presence_penalty != 0.0f || P.frequency_penalty != 0.0f) {
        for (uint32_t j = np + t; j < nh; j += SMP_THREADS)
            if ((uint32_t)hist[j] < V)
                atomicAdd(&cnt[hist[j]], 1u);
        __syncthreads();
        for (uint32_t j = np + t; j < nh; j += SMP_THREADS) {
            const uint32_t id = (uint32_t)hist[j];
            if (id >= V)
                continue;
            const uint32_t c = atomicExch(&cnt[id], 0u);
            if (c)
                w[id] -= P.frequency_penalty * (float)c + P.presence_penalty;
        }
        __syncthreads();
    }

    /* 2. log-sum-exp of the raw logits: the slices' partials, in order */
    const double *part = sp.lse_parts + (uint64_t)r * sp.n_slices * 2;
    double mx = -INFINITY, s = 0.0;
    for (uint32_t b = 0; b < sp.n_slices; b++)
        mx = part[2 * b] > mx ? part[2 * b] : mx;
    for (uint32_t b = 0; b < sp.n_slices; b++) /* an all -inf slice adds 0 * 0 */
        s += part[2 * b + 1] * exp(part[2 * b] - mx);
    /* every logit -inf: NaN, as the CPU's exp(-inf - -inf) sum gives */
    const double lse = mx == -INFINITY ? (double)NAN : mx + log(s);

    /* 3. the token */
    uint32_t token;
    if (forced >= 0) {
        token = (uint32_t)forced;
    } else if (P.temperature == 0.0f) {
        float bv = -INFINITY;
        uint32_t bi = UINT32_MAX;
        for (uint32_t i = t; i < V; i += SMP_THREADS)
            if (pd_mask_allows(mask, i)) /* never a masked token */
                better(bv, bi, w[i], i);
        token = block_argmax(sh, bv, bi);
    } else {
        float wm = -INFINITY;
        for (uint32_t i = t; i < V; i += SMP_THREADS) {
            w[i] /= P.temperature;
            wm = fmaxf(wm, w[i]);
        }
        wm = block_max(sh, wm);
        for (uint32_t i = t; i < V; i += SMP_THREADS)
            pr[i] = wm == -INFINITY ? (i == 0) : expf(w[i] - wm);
        __syncthreads();
        if (wm == -INFINITY) { /* every logit -inf: the lowest allowed id, as the CPU */
            uint32_t lo = UINT32_MAX;
            for (uint32_t i = t; i < V && lo == UINT32_MAX; i += SMP_THREADS)
                if (pd_mask_allows(mask, i))
                    lo = i;
            token = block_reduce(sh.u, lo, [](uint32_t a, uint32_t b) { return a < b ? a : b; });
            token = token == UINT32_MAX ? 0 : token;
        } else {
            uint64_t floor = 0;
            if (P.top_k > 0 && (uint32_t)P.top_k < V)
                floor = select_key(sh, w, pr, V, 0, (unsigned long long)P.top_k, true, true);
            if (P.top_p < 1.0f) {
                const double total = (double)mass_from(sh, w, pr, V, floor);
                const uint64_t cut = select_key(sh, w, pr, V, floor,
                                                (unsigned long long)((double)P.top_p * total),
                                                false, true);
                floor = cut ? cut : floor;
            }
            if (P.min_p > 0.0f) {
                /* the first id has pr 1 >= min_p: never empty */
                floor = smallest_key(sh, w, pr, V, floor, P.min_p);
            }
            const double total = (double)mass_from(sh, w, pr, V, floor);
            const double u = (double)pd_rng_uniform(P.seed, nh, PD_RNG_SAMPLE);
            uint64_t pick = select_key(sh, w, pr, V, floor, (unsigned long long)(u * total),
                                       false, false);
            if (!pick) /* rounding left the target at the very end: the last kept */
                pick = smallest_key(sh, w, pr, V, floor, 0.0f);
            token = 0xffffffffu - (uint32_t)pick;
        }
    }

    /* 4. log-probabilities of the raw distribution */
    for (uint32_t k = 0; k < P.n_logprobs && k < V; k++) {
        float bv = -INFINITY;
        uint32_t bi = UINT32_MAX;
        for (uint32_t i = t; i < V; i += SMP_THREADS) {
            bool taken = false;
            for (uint32_t j = 0; j < k; j++)
                taken = taken || sh.taken[j] == (int32_t)i;
            if (!taken)
                better(bv, bi, lg[i], i);
        }
        const uint32_t best = block_argmax(sh, bv, bi);
        if (t == 0) {
            sh.taken[k] = (int32_t)best;
            a.top[(uint64_t)r * PD_MAX_LOGPROBS + k].token = (int32_t)best;
            a.top[(uint64_t)r * PD_MAX_LOGPROBS + k].logprob = (float)(lg[best] - lse);
        }
        __syncthreads();
    }
    if (t == 0) {
        a.token[r] = (int32_t)token;
        a.logprob[r] = (float)(lg[token] - lse);
        a.n_top[r] = P.n_logprobs < V ? P.n_logprobs : V;
    }
}

/* Block (row r, slice b): the slice's max (float, NaN ignored as fmaxf
 * does) and sum of exp(x - max) in double; an all -inf slice leaves -inf, 0. */
__global__ void __launch_bounds__(SMP_THREADS) lse_kernel(const struct smp_params sp)
{
    __shared__ struct smp_shared sh;
    const uint32_t r = blockIdx.x, b = blockIdx.y, t = threadIdx.x, V = sp.a.n_vocab;
    const float *lg = sp.a.logits + (uint64_t)r * V;
    const uint32_t lo = b * sp.slice_len, hi = lo + sp.slice_len < V ? lo + sp.slice_len : V;
    float mx = -INFINITY;
    for (uint32_t i = lo + t; i < hi; i += SMP_THREADS)
        mx = fmaxf(mx, lg[i]);
    mx = block_max(sh, mx);
    double s = 0.0;
    for (uint32_t i = lo + t; i < hi && mx != -INFINITY; i += SMP_THREADS)
        s += exp((double)lg[i] - mx);
    s = block_sum_d(sh, s);
    if (t == 0) {
        sp.lse_parts[((uint64_t)r * sp.n_slices + b) * 2] = mx;
        sp.lse_parts[((uint64_t)r * sp.n_slices + b) * 2 + 1] = s;
    }
}

/* ---- host side --------------------------------------------------------- */

static uint64_t row_bytes(uint32_t n_vocab)
{
    return ((uint64_t)n_vocab * 12 + 255) / 256 * 256;
}

/* the rows' workspaces, then the log-sum-exp partials */
extern "C" uint64_t pd_sample_cuda_workspace(uint32_t n_rows, uint32_t n_vocab)
{
    return (uint64_t)n_rows * (row_bytes(n_vocab) + lse_slices(n_vocab) * 2 * sizeof(double));
}

extern "C" int pd_sample_cuda(const struct pd_sample_args *a, pd_stream_t stream)
{
    if (a->n_rows == 0)
        return 0;
    if (a->n_vocab == 0 || a->n_vocab > (1u << 24) || a->n_rows > INT32_MAX || !a->logits ||
        !a->params || !a->hist_start || !a->n_prompt || !a->token || !a->logprob || !a->top ||
        !a->n_top || !a->workspace || (a->bias && !a->bias_start) || (a->mask && !a->mask_row) ||
        a->workspace_bytes < pd_sample_cuda_workspace(a->n_rows, a->n_vocab))
        return -EINVAL;
    struct smp_params sp;
    memset(&sp, 0, sizeof sp);
    sp.a = *a;
    sp.row_bytes = row_bytes(a->n_vocab);
    sp.lse_parts = (double *)((char *)a->workspace + (uint64_t)a->n_rows * sp.row_bytes);
    sp.n_slices = lse_slices(a->n_vocab);
    sp.slice_len = (a->n_vocab + sp.n_slices - 1) / sp.n_slices;
    int rc;
    lse_kernel<<<dim3(a->n_rows, sp.n_slices), SMP_THREADS, 0, pd_cuda_stream(stream)>>>(sp);
    if ((rc = pd_cuda_launched("lse_kernel")) < 0)
        return rc;
    sample_kernel<<<a->n_rows, SMP_THREADS, 0, pd_cuda_stream(stream)>>>(sp);
    return pd_cuda_launched("sample_kernel");
}
