/* common/base/parallel: a parallel-for. One job split into shares run on
 * threads, for the loaders' bulk work (generating dummy weights, converting
 * matrices for the GPU); and a pool of threads kept for the CPU engine's
 * kernels, which split hundreds of small jobs per step.
 *
 *   struct my_job jobs[PD_PARALLEL_MAX];
 *   unsigned n = pd_parallel_count(PD_PARALLEL_MAX);   // CPUs this process may use
 *   for (k < n) jobs[k] = ... share k of n ...;
 *   pd_parallel_run(my_fn, jobs, sizeof(jobs[0]), n);  // returns when all ran
 *
 * pd_parallel_run runs fn(jobs + k * stride) for every k < n: shares 1 .. n-1
 * on threads of their own, share 0 on the caller's thread, and any share
 * whose thread could not be started also on the caller's (so every share
 * runs, threads or not). Results travel in the jobs. Nothing here allocates.
 */
#ifndef PD_PARALLEL_H
#define PD_PARALLEL_H

#include <stddef.h>

#define PD_PARALLEL_MAX 16 /* threads a split uses at most */

/* The CPUs this process may run on (its affinity: a unit's or container's
 * limit), capped at max; at least 1. */
unsigned pd_parallel_count(unsigned max);

/* n <= PD_PARALLEL_MAX (more are run on the caller's thread). */
void pd_parallel_run(void *(*fn)(void *), void *jobs, size_t stride, unsigned n);

/* A pool of n - 1 threads kept waiting, plus the caller's, for jobs too
 * small to start threads for (a decode step's 200 matrix-vector products,
 * each a few microseconds to a millisecond):
 *
 *   struct pd_pool *p = pd_pool_new(pd_parallel_count(PD_PARALLEL_MAX));
 *   pd_pool_run(p, fn, arg);   // fn(arg, k, n, thread) for every share k < n
 *   p = pd_pool_free(p);
 *
 * A job is cut into pd_pool_shares(p) shares (PD_POOL_SHARES_PER_THREAD a
 * thread) that the threads claim as they come, the caller too: a thread the
 * kernel has not scheduled (another busy process on the same cores) costs
 * the job nothing, the others take its shares. `thread` (< pd_pool_size)
 * says whose scratch a share may use. A worker that found no job spins for
 * a while (PD_POOL_SPIN_US: a decode step's kernels follow each other closer
 * than a wake-up from a futex takes) and then sleeps on a condition
 * variable, so an idle pool costs nothing. One thread at a time calls
 * pd_pool_run (the engine's compute thread); fn must not call it again. A
 * pool whose threads could not all start runs with the ones it has. NULL
 * pool: fn runs once on the caller as share 0 of 1, thread 0. */
#define PD_POOL_SPIN_US 500
#define PD_POOL_SHARES_PER_THREAD 4

struct pd_pool;
typedef void pd_pool_fn(void *arg, unsigned share, unsigned n_shares, unsigned thread);

/* NULL only when out of memory; n is clamped to 1 .. PD_PARALLEL_MAX */
struct pd_pool *pd_pool_new(unsigned n);
/* accepts NULL; returns NULL */
struct pd_pool *pd_pool_free(struct pd_pool *p);
unsigned pd_pool_size(const struct pd_pool *p); /* threads; 1 for NULL */
unsigned pd_pool_shares(const struct pd_pool *p); /* shares of a job; 1 for NULL or 1 thread */
void pd_pool_run(struct pd_pool *p, pd_pool_fn *fn, void *arg);

#endif
