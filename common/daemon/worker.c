/* common/daemon/worker: the compute thread and its queues. See worker.h. */
#include "worker.h"

#include "errf.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

/* ---- lists ---- */

void pd_wlist_push(struct pd_wlist *l, struct pd_wnode *n)
{
    n->next = NULL;
    if (l->tail)
        l->tail->next = n;
    else
        l->head = n;
    l->tail = n;
    l->n++;
}

void pd_wlist_push_front(struct pd_wlist *l, struct pd_wnode *n)
{
    n->next = l->head;
    l->head = n;
    if (!l->tail)
        l->tail = n;
    l->n++;
}

struct pd_wnode *pd_wlist_pop(struct pd_wlist *l)
{
    struct pd_wnode *n = l->head;
    if (n)
        pd_wlist_remove(l, NULL, n);
    return n;
}

void pd_wlist_remove(struct pd_wlist *l, struct pd_wnode *prev, struct pd_wnode *n)
{
    if (prev)
        prev->next = n->next;
    else
        l->head = n->next;
    if (l->tail == n)
        l->tail = prev;
    n->next = NULL;
    l->n--;
}

struct pd_wnode *pd_wlist_take(struct pd_wlist *l)
{
    struct pd_wnode *n = l->head;
    *l = (struct pd_wlist){0};
    return n;
}

/* ---- the thread ---- */

static void *run(void *arg)
{
    struct pd_worker *w = arg;
    bool idle = false;
    for (;;) {
        pd_worker_beat(w);
        pthread_mutex_lock(&w->mu);
        uint32_t ms = w->stop ? 0 : w->p.ops->wait_ms(w->p.arg, idle);
        if (ms) {
            uint64_t until = pd_now_ns() + (uint64_t)ms * 1000000u;
            struct timespec ts = {.tv_sec = (time_t)(until / 1000000000u),
                                  .tv_nsec = (long)(until % 1000000000u)};
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        }
        bool stop = w->stop;
        pthread_mutex_unlock(&w->mu);
        if (stop)
            break;
        idle = !w->p.ops->step(w->p.arg);
    }
    w->p.ops->cut(w->p.arg);
    return NULL;
}

int pd_worker_init(struct pd_worker *w, const struct pd_worker_params *p)
{
    memset(w, 0, sizeof(*w));
    if (!p->ops || !p->ops->step || !p->ops->wait_ms || !p->ops->cut || !p->notify ||
        !p->max_queued)
        return -EINVAL;
    pthread_condattr_t ca;
    int rc = pthread_condattr_init(&ca);
    if (rc != 0)
        return -rc;
    if ((rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) == 0 &&
        (rc = pthread_cond_init(&w->cv, &ca)) == 0) {
        if ((rc = pthread_mutex_init(&w->mu, NULL)) != 0) {
            pthread_cond_destroy(&w->cv);
        } else if ((rc = pthread_mutex_init(&w->out_mu, NULL)) != 0) {
            pthread_mutex_destroy(&w->mu);
            pthread_cond_destroy(&w->cv);
        }
    }
    pthread_condattr_destroy(&ca);
    atomic_init(&w->heartbeat_ns, pd_now_ns());
    if (rc == 0)
        w->p = *p; /* from here on stop and done have something to undo */
    return -rc;
}

void pd_worker_done(struct pd_worker *w)
{
    if (!w->p.ops) /* never initialised (a zeroed struct) */
        return;
    pthread_mutex_destroy(&w->mu);
    pthread_mutex_destroy(&w->out_mu);
    pthread_cond_destroy(&w->cv);
}

int pd_worker_start(struct pd_worker *w, char *err, size_t errlen)
{
    int rc = pthread_create(&w->thread, NULL, run, w);
    if (rc)
        return pd_errf(err, errlen, -rc, "cannot start the compute thread: %s", strerror(rc));
    w->started = true;
    return 0;
}

void pd_worker_stop(struct pd_worker *w)
{
    if (!w->p.ops) /* never initialised (a zeroed struct) */
        return;
    pthread_mutex_lock(&w->mu);
    bool was = w->stop;
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->started)
        pthread_join(w->thread, NULL);
    else if (!was)
        w->p.ops->cut(w->p.arg); /* never started: what is queued still ends */
    w->started = false;
}

/* ---- the queue ---- */

int pd_worker_submit(struct pd_worker *w, struct pd_wnode *n)
{
    int rc;
    pthread_mutex_lock(&w->mu);
    if (w->stop) {
        rc = -ESHUTDOWN;
    } else if (w->queue.n >= w->p.max_queued) {
        rc = -EAGAIN;
    } else {
        pd_wlist_push(&w->queue, n);
        rc = (int)w->queue.n;
        pthread_cond_signal(&w->cv);
    }
    pd_worker_unlock(w);
    return rc;
}

uint32_t pd_worker_queued(struct pd_worker *w)
{
    pthread_mutex_lock(&w->mu);
    uint32_t n = w->queue.n;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void pd_worker_lock(struct pd_worker *w) { pthread_mutex_lock(&w->mu); }
static void queued_gauge(struct pd_worker *w)
{
    if (w->p.queued)
        pd_metric_set(w->p.queued, w->queue.n);
}

void pd_worker_unlock(struct pd_worker *w)
{
    queued_gauge(w);
    pthread_mutex_unlock(&w->mu);
}
void pd_worker_signal(struct pd_worker *w) { pthread_cond_signal(&w->cv); }
struct pd_wlist *pd_worker_queue(struct pd_worker *w) { return &w->queue; }

/* ---- the outbox ---- */

void pd_worker_post(struct pd_worker *w, struct pd_wnode *n)
{
    pthread_mutex_lock(&w->out_mu);
    pd_wlist_push(&w->outbox, n);
    pthread_mutex_unlock(&w->out_mu);
    w->p.notify(w->p.notify_arg);
}

struct pd_wnode *pd_worker_take(struct pd_worker *w)
{
    pthread_mutex_lock(&w->out_mu);
    struct pd_wnode *n = pd_wlist_take(&w->outbox);
    pthread_mutex_unlock(&w->out_mu);
    return n;
}

uint64_t pd_worker_heartbeat_ns(const struct pd_worker *w) { return atomic_load(&w->heartbeat_ns); }
void pd_worker_beat(struct pd_worker *w) { atomic_store(&w->heartbeat_ns, pd_now_ns()); }
