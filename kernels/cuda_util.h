/* kernels/cuda_util: the CUDA runtime behind a small C API, so that C code
 * (tests, benchmarks, later the engine) needs no CUDA header and every CUDA
 * status becomes a negative errno in one place.
 *
 *   char why[256];
 *   int n = pd_cuda_probe(why, sizeof why);      // > 0 devices, or -errno + reason
 *   if (n < 0) { skip with why; }
 *   void *d;
 *   if (pd_cuda_malloc(&d, bytes) < 0) ...      // logged once, -ENOMEM
 *   pd_cuda_memcpy(d, host, bytes);             // any direction (unified addressing)
 *   d = pd_cuda_free(d);
 *
 * Every function here and every launcher in kernels/ checks each CUDA call;
 * a failure is logged once (pd_log, "cuda: <what>: <reason>") where it is
 * detected and returned as a negative errno (pd_cuda_errno); nothing aborts.
 * pd_cuda_probe logs nothing: deciding that there is no GPU is its caller's
 * business (tests skip, `--device auto` picks the CPU).
 *
 * Defined only in CUDA builds (PD_HAVE_CUDA in pd_config.h).
 */
#ifndef PD_CUDA_UTIL_H
#define PD_CUDA_UTIL_H

#include "pd_kernel.h"

PD_BEGIN_DECLS

/* cudaError_t value -> negative errno (0 for cudaSuccess):
 *   no driver / no device / stub library         -ENODEV
 *   no kernel image or PTX for this device       -ENOEXEC
 *   out of device memory                         -ENOMEM
 *   invalid value, configuration, pointer        -EINVAL
 *   not supported                                -ENOTSUP
 *   launch timeout                               -ETIMEDOUT
 *   a kernel faulted (the context is lost)       -EFAULT
 *   anything else                                -EIO */
int pd_cuda_errno(int cuda_status);

/* Notes "cuda: what: reason (cudaErrorName)" as this thread's last CUDA
 * error and returns pd_cuda_errno(cuda_status). For the .cu files; C code
 * gets errnos, and the line from pd_cuda_last_error (the kernels log
 * nothing: the engine puts the line in its error, its caller logs). */
int pd_cuda_fail(int cuda_status, const char *what);
/* kernels/pd_cuda.c: set (the .cu files) and read this thread's last line;
 * "" when none. pd_cuda_clear_error clears it too. */
void pd_cuda_set_error(const char *line);
const char *pd_cuda_last_error(void);

/* Number of usable devices (> 0), or a negative errno with a one-line reason
 * in why ("no CUDA driver: ...", "no CUDA device: ...", "no kernel image for
 * sm_75 (this build has ...)"). Checks that this build's kernels load on
 * device 0. Logs nothing. */
int pd_cuda_probe(char *why, size_t n);

/* "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB, driver 13.0, runtime 13.0"
 * for device 0. */
int pd_cuda_device_info(char *buf, size_t n);
/* Multiprocessors of the current device (cached per device). */
int pd_cuda_sm_count(uint32_t *n);
/* The current device's compute capability major and the shared memory a
 * block may opt into (227 KiB on sm_90, 163 on sm_80, 99 on sm_86 / sm_89):
 * asked once per device, not per launch (host queries cost microseconds a
 * step); the answers do not change while the process lives. */
int pd_cuda_device_facts(int *major, int *optin);
/* Its compute capability, both parts (9.0 is the only one sm_90a code runs on). */
int pd_cuda_device_cc(int *major, int *minor);
/* Above 48 KiB of dynamic shared memory a kernel must ask, per device:
 * asked once for the most a launch of fn has needed, not at every launch. */
int pd_cuda_allow_smem(const void *fn, size_t smem);
/* Forgets both: for tests whose emulated device changes its limits (a real
 * device's never change). */
void pd_cuda_facts_forget(void);
/* True when the kernels were compiled with -G (device debug): timings of
 * such a build mean nothing. */
int pd_cuda_debug_build(void);
/* True in the CPU emulator of the CUDA runtime (tests/kernels/emu), where
 * "device" memory is host memory that any library may read and write. */
int pd_cuda_emulated(void);

int pd_cuda_malloc(void **p, size_t bytes);
/* Accepts NULL; returns NULL. */
void *pd_cuda_free(void *p);
int pd_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);
/* Synchronous copy, any direction. */
int pd_cuda_memcpy(void *dst, const void *src, size_t bytes);
int pd_cuda_memcpy_async(void *dst, const void *src, size_t bytes, pd_stream_t stream);
int pd_cuda_memset(void *p, int byte, size_t bytes);
int pd_cuda_memset_async(void *p, int byte, size_t bytes, pd_stream_t stream);
/* Page-lock host memory the caller mapped (the KV channel's staging), so
 * copies to and from it run as DMA and asynchronously; undone by
 * pd_cuda_host_unregister before the memory is unmapped. */
int pd_cuda_host_register(void *p, size_t bytes);
int pd_cuda_host_unregister(void *p);
/* The address a kernel reads registered host memory at (page-locked by
 * pd_cuda_host_register, mapped: unified addressing maps it). -EINVAL for
 * memory not registered. */
int pd_cuda_host_device_ptr(void *host, void **dev);
/* Waits for the device; reports a kernel's asynchronous failure. */
int pd_cuda_sync(void);
/* Drops the error the runtime keeps for this thread's next check (after a
 * failed capture or graph launch the engine has handled). */
void pd_cuda_clear_error(void);
/* Waits for what was issued to one stream. */
int pd_cuda_stream_sync(pd_stream_t s);

/* Fills n elements of type PD_DT_F32, PD_DT_BF16 or PD_DT_F16 with amp * (2u - 1), u a
 * Philox-4x32-10 uniform of (seed, element index): the same values on every
 * device and run. */
int pd_cuda_fill_random(void *p, uint64_t n, uint32_t type, uint64_t seed, float amp,
                        pd_stream_t stream);

/* Device-side timing with events (start and stop on the stream). */
struct pd_cuda_timer;
int pd_cuda_timer_new(struct pd_cuda_timer **out);
struct pd_cuda_timer *pd_cuda_timer_free(struct pd_cuda_timer *t); /* accepts NULL */
int pd_cuda_timer_start(struct pd_cuda_timer *t, pd_stream_t stream);
/* Records the stop event, waits for it, gives the elapsed milliseconds. */
int pd_cuda_timer_stop(struct pd_cuda_timer *t, pd_stream_t stream, float *ms);

/* Marks on a stream (events without their wait): n of them, each recorded
 * where the stream has got to; once the stream was waited for, the time
 * between two. For a step's time split by kernel (engine.h). */
struct pd_cuda_marks;
int pd_cuda_marks_new(uint32_t n, struct pd_cuda_marks **out);
struct pd_cuda_marks *pd_cuda_marks_free(struct pd_cuda_marks *m); /* accepts NULL */
int pd_cuda_marks_record(struct pd_cuda_marks *m, uint32_t i, pd_stream_t stream);
int pd_cuda_marks_elapsed(struct pd_cuda_marks *m, uint32_t i, uint32_t j, float *ms);

/* Streams, and CUDA graphs captured on them: a benchmark replays a captured
 * sequence of launches to time the kernels, not the launch overhead. */
int pd_cuda_stream_new(pd_stream_t *out);
pd_stream_t pd_cuda_stream_free(pd_stream_t s); /* accepts NULL */
struct pd_cuda_graph;
/* Work enqueued on s from here on is recorded, not run (s must not be NULL). */
int pd_cuda_graph_begin(pd_stream_t s);
int pd_cuda_graph_end(pd_stream_t s, struct pd_cuda_graph **out);
int pd_cuda_graph_launch(struct pd_cuda_graph *g, pd_stream_t s);
struct pd_cuda_graph *pd_cuda_graph_free(struct pd_cuda_graph *g); /* accepts NULL */

PD_END_DECLS

#endif
