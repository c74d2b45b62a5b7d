/* tests/bench/bench_util.h: what the benchmark programs time and summarise
 * with (header-only: each program is one translation unit or two). */
#ifndef PD_BENCH_UTIL_H
#define PD_BENCH_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* seconds on the monotonic clock */
static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* the median of v[0, n) (v is sorted) */
static inline double bench_median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, bench_cmp_double);
    return v[n / 2];
}

/* n token ids below vocab, a fixed function of (i, salt) */
static inline void bench_fill_tokens(int32_t *t, uint32_t n, uint32_t vocab, uint32_t salt)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)((i * 2654435761u + salt * 97u) % vocab);
}

#endif
