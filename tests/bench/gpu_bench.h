/* tests/bench/gpu_bench.h: what the GPU benchmarks (attn_bench,
 * prefill_bench) share: list options, a seeded shuffle, and timing by
 * medians of trials, each trial optionally one CUDA graph replay. */
#ifndef PD_GPU_BENCH_H
#define PD_GPU_BENCH_H

#include "cfg.h"
#include "cuda_util.h"

#include <stddef.h>
#include <stdint.h>

#define GB_MAX_ITEMS 8

/* Values of a list option (repeated, or comma-separated), or the n_def
 * defaults; 0 on a bad item (0 or above 2^20) or more than GB_MAX_ITEMS. */
size_t gb_list_values(const struct pd_cfg_list *l, const uint32_t *def, size_t n_def,
                      uint32_t *out);
uint32_t gb_max_of(const uint32_t *v, size_t n);
uint32_t gb_min_of(const uint32_t *v, size_t n);

/* v[i] = i for i < n, then shuffled from seed (the same on every run) */
void gb_shuffled_ids(uint32_t *v, uint64_t n, uint64_t seed);

/* The device, or why there is none: prints "device: ..." (and a warning for
 * a -G build) and returns 0, or prints "prog: why" to stderr and returns -1. */
int gb_open_device(const char *prog);

/* A trial: fn(arg, i, stream) for i in [0, n). */
typedef int (*gb_pass_fn)(void *arg, uint32_t i, pd_stream_t s);

/* Median over trials of the time per pass (ms), after a warm-up; with graphs,
 * a trial is captured once and replayed, so launch overhead stays out. */
int gb_time_passes(gb_pass_fn fn, void *arg, uint32_t n, int trials, int graphs, pd_stream_t s,
                   struct pd_cuda_timer *tm, float *per_pass_ms);

/* The references the GPU benchmarks print their figures beside, measured in
 * the same run on stream s, medians of trials: a cuBLAS bf16 GEMM m = n = k =
 * size with fp32 accumulation (TFLOP/s and ms), and a device-to-device copy
 * of `bytes` (GB/s counted as bytes read + bytes written). Negative errno on
 * a CUDA failure (device memory for the operands among them). */
int gb_gemm_ref(uint32_t size, int trials, pd_stream_t s, struct pd_cuda_timer *tm,
                double *tflops, float *ms);
int gb_copy_ref(uint64_t bytes, int trials, pd_stream_t s, struct pd_cuda_timer *tm,
                double *gbs);

#endif
