#include "parallel.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

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

/* ---- the pool. Jobs are published by bumping `gen`; a worker runs share
 * k of every generation it sees and counts `left` down. Sleeping is under
 * `mu`: a worker counts itself in `sleepers` and re-checks `gen` under the
 * lock, and pd_pool_run signals only when it sees a sleeper after bumping
 * `gen` (both sequentially consistent, so one of the two sees the other). */
struct pd_pool_worker {
    struct pd_pool *pool;
    unsigned share;
    pthread_t th;
};

struct pd_pool {
    unsigned n; /* shares: started workers + the caller */
    pd_pool_fn *fn;
    void *arg;
    atomic_uint gen;
    atomic_uint left; /* workers still running this generation */
    atomic_uint sleepers;
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pd_pool_worker w[PD_PARALLEL_MAX];
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* the generation after `seen`, spinning first, then sleeping */
static unsigned pool_wait(struct pd_pool *p, unsigned seen)
{
    uint64_t t0 = 0;
    for (unsigned i = 0;; i++) {
        unsigned g = atomic_load(&p->gen);
        if (g != seen || atomic_load(&p->stop))
            return g;
        cpu_relax();
        if ((i & 255) != 255)
            continue;
        uint64_t t = now_us();
        if (!t0)
            t0 = t;
        else if (t - t0 > PD_POOL_SPIN_US)
            break;
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    unsigned g;
    while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->cv, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *pool_main(void *arg)
{
    struct pd_pool_worker *w = arg;
    struct pd_pool *p = w->pool;
    unsigned seen = 0;
    for (;;) {
        seen = pool_wait(p, seen);
        if (atomic_load(&p->stop))
            return NULL;
        p->fn(p->arg, w->share, p->n);
        atomic_fetch_sub(&p->left, 1);
    }
}

struct pd_pool *pd_pool_new(unsigned n)
{
    struct pd_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    n = n < 1 ? 1 : n > PD_PARALLEL_MAX ? PD_PARALLEL_MAX : n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->n = 1;
    for (unsigned k = 1; k < n; k++) {
        struct pd_pool_worker *w = &p->w[p->n];
        w->pool = p;
        w->share = p->n;
        if (pthread_create(&w->th, NULL, pool_main, w) != 0)
            break; /* run with the threads we have */
        p->n++;
    }
    return p;
}

struct pd_pool *pd_pool_free(struct pd_pool *p)
{
    if (!p)
        return NULL;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned k = 1; k < p->n; k++)
        pthread_join(p->w[k].th, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
    return NULL;
}

unsigned pd_pool_size(const struct pd_pool *p) { return p ? p->n : 1; }

void pd_pool_run(struct pd_pool *p, pd_pool_fn *fn, void *arg)
{
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->left, p->n - 1);
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->sleepers)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n);
    /* a worker the kernel preempted gets the core back sooner if we yield */
    for (unsigned i = 0; atomic_load(&p->left); i++)
        if ((i & 1023) == 1023)
            sched_yield();
        else
            cpu_relax();
}
