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

/* ---- the pool. A job is published in `state` (its generation in the high
 * 32 bits, the next share to claim in the low 32); every thread, the caller
 * too, claims shares with a compare-and-swap that names the generation, and
 * counts each share it ran in `done`. A worker that wakes late for a job
 * finds it over (the generation moved, or nothing left) and claims nothing,
 * so the caller waits only for shares actually claimed: a worker the kernel
 * has not scheduled (another busy process on the same cores) costs the job
 * nothing. fn, arg and n_shares change only after every share of the last
 * job ran. Sleeping is under `mu`: a worker counts itself in `sleepers` and
 * re-checks the generation under the lock, and pd_pool_run signals only
 * when it sees a sleeper after publishing (both sequentially consistent,
 * so one of the two sees the other). */
struct pd_pool_worker {
    struct pd_pool *pool;
    unsigned thread;
    pthread_t th;
};

struct pd_pool {
    unsigned n; /* threads: started workers + the caller */
    unsigned n_shares; /* of every job (pd_pool_shares), fixed at pd_pool_new */
    pd_pool_fn *fn;
    void *arg;
    atomic_uint_fast64_t state; /* generation << 32 | next share */
    atomic_uint done; /* shares of the current job run */
    atomic_uint sleepers;
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pd_pool_worker w[PD_PARALLEL_MAX];
};

static unsigned gen_of(uint64_t state) { return (unsigned)(state >> 32); }

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
        unsigned g = gen_of(atomic_load(&p->state));
        if (g != seen || atomic_load(&p->stop))
            return g;
        cpu_relax();
        if ((i & 255) != 255)
            continue;
        sched_yield(); /* another process may want this core more */
        uint64_t t = now_us();
        if (!t0)
            t0 = t;
        else if (t - t0 > PD_POOL_SPIN_US)
            break;
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    unsigned g;
    while ((g = gen_of(atomic_load(&p->state))) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->cv, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

/* shares of job `gen` until none is left (or the job is over) */
static void pool_claim(struct pd_pool *p, unsigned gen, unsigned thread)
{
    uint64_t st = atomic_load(&p->state);
    for (;;) {
        if (gen_of(st) != gen || (unsigned)st >= p->n_shares)
            return;
        if (!atomic_compare_exchange_weak(&p->state, &st, st + 1))
            continue; /* st reloaded */
        p->fn(p->arg, (unsigned)st, p->n_shares, thread);
        atomic_fetch_add(&p->done, 1);
        st = atomic_load(&p->state);
    }
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
        pool_claim(p, seen, w->thread);
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
        w->thread = p->n;
        if (pthread_create(&w->th, NULL, pool_main, w) != 0)
            break; /* run with the threads we have */
        p->n++;
    }
    p->n_shares = pd_pool_shares(p);
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

unsigned pd_pool_shares(const struct pd_pool *p)
{
    return p && p->n > 1 ? p->n * PD_POOL_SHARES_PER_THREAD : 1;
}

void pd_pool_run(struct pd_pool *p, pd_pool_fn *fn, void *arg)
{
    if (!p || p->n == 1) {
        fn(arg, 0, 1, 0);
        return;
    }
    /* every share of the last job ran: nobody reads fn and arg now */
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->done, 0);
    const unsigned gen = gen_of(atomic_load(&p->state)) + 1;
    atomic_store(&p->state, (uint64_t)gen << 32);
    if (atomic_load(&p->sleepers)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    pool_claim(p, gen, 0);
    /* the shares others claimed and still run */
    for (unsigned i = 0; atomic_load(&p->done) < p->n_shares; i++)
        if ((i & 1023) == 1023)
            sched_yield();
        else
            cpu_relax();
}
