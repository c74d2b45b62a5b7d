/* common/daemon/worker: the compute thread a daemon's scheduler runs on, and
 * the thread-safe plumbing around it, written once for both schedulers: the
 * thread, one lock and condition variable (monotonic clock), the stop flag,
 * the heartbeat the runtime's watchdog reads, the queue of submitted jobs
 * (inbox) with its cap, and the outbox of events to the loop thread.
 *
 *   static const struct pd_worker_ops ops = {.step = step, .wait_ms = wait_ms, .cut = cut};
 *   struct pd_worker_params wp = {.ops = &ops, .arg = sched, .max_queued = 256,
 *                                 .notify = wake, .notify_arg = daemon};
 *   pd_worker_init(&s->w, &wp);
 *   pd_worker_start(&s->w, err, sizeof err);
 *   loop:    pd_worker_submit(&s->w, &job->qnode);      // -EAGAIN full, -ESHUTDOWN stopping
 *   compute: pd_worker_lock; pd_wlist_pop(pd_worker_queue(&s->w)); pd_worker_unlock
 *            pd_worker_post(&s->w, &event->node);       // then notify(notify_arg)
 *   loop:    for (n = pd_worker_take(&s->w); n; n = next) ...   // oldest first
 *   pd_worker_stop(&s->w);      // the thread ends, ops->cut ends what is left
 *   pd_worker_done(&s->w);
 *
 * The compute thread loops: beat, then (with the lock) ops->wait_ms says how
 * long to sleep before the next step (0: none; a submission, a
 * pd_worker_signal or stop ends the sleep early), then ops->step without
 * the lock. Stopping: the flag is set and the thread woken; it runs ops->cut
 * and ends. A worker stopped before it started runs ops->cut on the stopping
 * thread, so queued jobs always end.
 *
 * Lists are intrusive (struct pd_wnode inside the job or event, found again
 * with PD_WNODE_ENTRY) and never allocate: posting an event cannot fail.
 * The queue and whatever else the scheduler keeps under pd_worker_lock (its
 * own lists from the loop) share the one lock; the outbox has its own.
 */
#ifndef PD_WORKER_H
#define PD_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pd_metric;

struct pd_wnode {
    struct pd_wnode *next;
};
#define PD_WNODE_ENTRY(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

/* What every job a worker runs carries: its references (the loop's, the
 * compute thread's, one per event) and its cancel flag, both atomic. */
struct pd_wjob {
    atomic_int refs;
    atomic_bool cancelled;
};
static inline void pd_wjob_init(struct pd_wjob *j)
{
    atomic_init(&j->refs, 1);
    atomic_init(&j->cancelled, false);
}
static inline void pd_wjob_ref(struct pd_wjob *j) { atomic_fetch_add(&j->refs, 1); }
/* True when that was the last reference: the caller frees the job. */
static inline bool pd_wjob_unref(struct pd_wjob *j) { return atomic_fetch_sub(&j->refs, 1) == 1; }
static inline void pd_wjob_cancel(struct pd_wjob *j) { atomic_store(&j->cancelled, true); }
static inline bool pd_wjob_cancelled(struct pd_wjob *j) { return atomic_load(&j->cancelled); }

/* A FIFO of nodes; the caller serialises access (pd_worker_lock for the queue). */
struct pd_wlist {
    struct pd_wnode *head, *tail;
    uint32_t n;
};
void pd_wlist_push(struct pd_wlist *l, struct pd_wnode *n); /* at the back */
void pd_wlist_push_front(struct pd_wlist *l, struct pd_wnode *n);
struct pd_wnode *pd_wlist_pop(struct pd_wlist *l); /* the front, or NULL */
/* n, found after prev (NULL: n is the head), out of the list */
void pd_wlist_remove(struct pd_wlist *l, struct pd_wnode *prev, struct pd_wnode *n);
struct pd_wnode *pd_wlist_take(struct pd_wlist *l); /* every node, oldest first; l empty */

struct pd_worker_ops {
    /* compute thread, the lock not held: one step; false when it did nothing */
    bool (*step)(void *arg);
    /* the lock held: 0 to step now, else how many ms to sleep at most (idle:
     * the last step did nothing) */
    uint32_t (*wait_ms)(void *arg, bool idle);
    /* compute thread at its end (or the stopping thread): end what is left */
    void (*cut)(void *arg);
};

struct pd_worker_params {
    const struct pd_worker_ops *ops;
    void *arg;
    uint32_t max_queued; /* submitted jobs waiting at most (>= 1) */
    void (*notify)(void *arg); /* an event was posted (the compute thread) */
    void *notify_arg;
    /* NULL, or a gauge the worker keeps at the queue's length: set with the
     * lock held whenever it is released, so the last write is the truth */
    struct pd_metric *queued;
};

/* Embedded in a scheduler; the fields are the worker's. */
struct pd_worker {
    struct pd_worker_params p;
    pthread_t thread;
    bool started, stop;
    pthread_mutex_t mu; /* queue, stop, the scheduler's own lists */
    pthread_cond_t cv;
    struct pd_wlist queue;
    pthread_mutex_t out_mu;
    struct pd_wlist outbox;
    _Atomic uint64_t heartbeat_ns;
};

/* 0, or -EINVAL (no ops, no notify, max_queued 0), -ENOMEM / -EAGAIN from pthreads. */
int pd_worker_init(struct pd_worker *w, const struct pd_worker_params *p);
/* After pd_worker_stop; what is still queued or posted is the caller's.
 * pd_worker_stop and pd_worker_done do nothing on a zeroed worker whose
 * init failed or never ran. */
void pd_worker_done(struct pd_worker *w);
int pd_worker_start(struct pd_worker *w, char *err, size_t errlen);
/* Idempotent. Returns once ops->cut ran. */
void pd_worker_stop(struct pd_worker *w);

/* Loop thread: queue n. The new queue length, or -ESHUTDOWN (stopping),
 * -EAGAIN (max_queued waiting already). */
int pd_worker_submit(struct pd_worker *w, struct pd_wnode *n);
uint32_t pd_worker_queued(struct pd_worker *w);

void pd_worker_lock(struct pd_worker *w);
void pd_worker_unlock(struct pd_worker *w);
/* The lock held: wake the compute thread (something for it arrived). */
void pd_worker_signal(struct pd_worker *w);
/* The lock held: the queue of submitted jobs. */
struct pd_wlist *pd_worker_queue(struct pd_worker *w);

/* Compute thread: an event for the loop (then notify). */
void pd_worker_post(struct pd_worker *w, struct pd_wnode *n);
/* Loop thread: every posted event, oldest first. */
struct pd_wnode *pd_worker_take(struct pd_worker *w);

/* The compute thread's last sign of life (pd_now_ns), for the watchdog; it
 * beats before every step and after every engine step (pd_worker_beat). */
uint64_t pd_worker_heartbeat_ns(const struct pd_worker *w);
void pd_worker_beat(struct pd_worker *w);

#endif
