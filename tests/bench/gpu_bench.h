/* tests/bench/gpu_bench.h: what the GPU benchmarks (attn_bench,
 * prefill_bench, gpu_engine_bench) share: list options, a seeded shuffle,
 * device buffers of random contents, and timing by medians of trials, each
 * trial optionally one CUDA graph replay. */
#ifndef PD_GPU_BENCH_H
#define PD_GPU_BENCH_H

#include "cfg.h"
#include "cuda_util.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define GB_MAX_ITEMS 8

/* For a main() with `int rc` and an `out:` label; each benchmark defines
 * TRY(call) as GB_TRY("its name", #call, call): on a negative errno,
 * "prog: <the call's text> failed: why" and goto out. */
#define GB_TRY(prog, text, call)                                              \
    do {                                                                      \
        if ((rc = (call)) < 0) {                                              \
            fprintf(stderr, "%s: %s failed: %s\n", prog, text, strerror(-rc)); \
            goto out;                                                         \
        }                                                                     \
    } while (0)

/* Values of a list option (repeated, or comma-separated), or the n_def
 * defaults; 0 on a bad item (0 or above 2^20) or more than GB_MAX_ITEMS. */
size_t gb_list_values(const struct pd_cfg_list *l, const uint32_t *def, size_t n_def,
                      uint32_t *out);
uint32_t gb_max_of(const uint32_t *v, size_t n);
uint32_t gb_min_of(const uint32_t *v, size_t n);

/* v[i] = i for i < n, then shuffled from seed (the same on every run) */
void gb_shuffled_ids(uint32_t *v, uint64_t n, uint64_t seed);

/* Block tables handing out n_blocks blocks in a random order (gb_shuffled_ids
 * of seed): *host (caller frees with free()) and its copy on the device *dev
 * (caller frees with pd_cuda_free). Negative errno; on failure *host and *dev
 * are NULL. */
int gb_block_tables(uint64_t n_blocks, uint64_t seed, uint32_t **host, void **dev);

/* *p: a new device buffer of n elements of type (PD_DT_F32, PD_DT_BF16 or
 * PD_DT_F16) filled by pd_cuda_fill_random(seed, amp); caller frees with
 * pd_cuda_free. Negative errno. */
int gb_random_buffer(void **p, uint64_t n, uint32_t type, uint64_t seed, float amp);

/* The normalized error of got against ref over n values: max |got - ref| /
 * max |ref| (max |got - ref| where ref is all 0); a NaN in got, an output the
 * kernel never wrote, makes it infinite. */
double gb_normalized_error(const float *got, const float *ref, size_t n);

/* The device, or why there is none: prints "device: ..." (and a warning for
 * a -G build) and returns 0, or prints "prog: why" to stderr and returns -1.
 * With probe (a benchmark's --probe) it returns 1 once the device is printed:
 * nothing more to do. */
int gb_open_device(const char *prog, int probe);

/* A benchmark's check of its first figure against the CPU reference: prints
 * "  (check: <what> against the CPU reference, error E)" and returns 0 where
 * the normalized error e is at most tol (as written, e.g. "1e-5"), else says
 * so on stderr, as prog, and returns -1. */
int gb_check_error(const char *prog, const char *what, double e, const char *tol);

/* The stream a benchmark runs its work on and the timer that times it there:
 * made together by gb_clock_init (negative errno), freed together by
 * gb_clock_done (which accepts a zeroed or half-made clock). */
struct gb_clock {
    pd_stream_t stream;
    struct pd_cuda_timer *tm;
};
int gb_clock_init(struct gb_clock *clk);
void gb_clock_done(struct gb_clock *clk);

/* A trial: fn(arg, i, stream) for i in [0, n). */
typedef int (*gb_pass_fn)(void *arg, uint32_t i, pd_stream_t s);

/* Median over trials of the time per pass (ms), after a warm-up; with graphs,
 * a trial is captured once and replayed, so launch overhead stays out. */
int gb_time_passes(gb_pass_fn fn, void *arg, uint32_t n, int trials, int graphs,
                   const struct gb_clock *clk, float *per_pass_ms);

/* The references the GPU benchmarks print their figures beside, measured in
 * the same run on clk's stream, medians of trials: a cuBLAS bf16 GEMM
 * m = n = k = size with fp32 accumulation (TFLOP/s and ms), and a device-to-device copy
 * of `bytes` (GB/s counted as bytes read + bytes written). Negative errno on
 * a CUDA failure (device memory for the operands among them). */
int gb_gemm_ref(uint32_t size, int trials, const struct gb_clock *clk, double *tflops,
                float *ms);
int gb_copy_ref(uint64_t bytes, int trials, const struct gb_clock *clk, double *gbs);
/* gb_copy_ref of copy_mib MiB, then its line: "copy: device to device, N MiB:
 * X GB/s (read + written), median of T; <what> timed as CUDA graph replays"
 * (or "as plain launches" without graphs). */
int gb_copy_line(int64_t copy_mib, int trials, const struct gb_clock *clk, int graphs,
                 const char *what, double *gbs);

#endif
