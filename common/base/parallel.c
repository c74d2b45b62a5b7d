#include "parallel.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>

unsigned pd_parallel_count(unsigned max)
{
    cpu_set_t cpus;
    const int n = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    const unsigned cap = max ? max : 1;
    return n < 1 ? 1 : (unsigned)n > cap ? cap : (unsigned)n;
}

void pd_parallel_run(void *(*fn)(void *), void *jobs, size_t stride, unsigned n)
{
    pthread_t th[PD_PARALLEL_MAX];
    bool started[PD_PARALLEL_MAX] = {false};
    char *const base = jobs;
    for (unsigned k = 1; k < n && k < PD_PARALLEL_MAX; k++)
        started[k] = pthread_create(&th[k], NULL, fn, base + k * stride) == 0;
    for (unsigned k = 0; k < n; k++)
        if (k >= PD_PARALLEL_MAX || !started[k])
            fn(base + k * stride);
    for (unsigned k = 1; k < n && k < PD_PARALLEL_MAX; k++)
        if (started[k])
            pthread_join(th[k], NULL);
}
