/* common/base/parallel: a parallel-for. One job split into shares run on
 * threads, for the loaders' bulk work (generating dummy weights, converting
 * matrices for the GPU).
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

#endif
