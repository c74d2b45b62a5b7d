/* common/daemon/worker: the compute thread both schedulers run on. Jobs
 * submitted from this thread run on the worker's thread in order, their
 * events come back oldest first with a notify each, a full queue and a
 * stopping worker refuse, a submission wakes a sleeping worker at once,
 * stopping runs the cut (also when the worker never started), and the
 * intrusive lists keep their order through every operation. */
#include "log.h"
#include "metrics.h"
#include "pd_test.h"
#include "worker.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

struct job {
    struct pd_wnode qnode;
    struct pd_wnode enode; /* its event, posted by the step */
    int id;
    bool ran, cut;
};

struct rig {
    struct pd_worker w;
    atomic_int notified, steps;
    atomic_int cuts;
    uint32_t sleep_ms; /* wait_ms when the queue is empty */
};

#define JOB(n) PD_WNODE_ENTRY(n, struct job, qnode)

static bool step(void *arg)
{
    struct rig *r = arg;
    pd_worker_lock(&r->w);
    struct pd_wnode *n = pd_wlist_pop(pd_worker_queue(&r->w));
    pd_worker_unlock(&r->w);
    if (!n)
        return false;
    atomic_fetch_add(&r->steps, 1);
    JOB(n)->ran = true;
    pd_worker_post(&r->w, &JOB(n)->enode);
    return true;
}

static uint32_t wait_ms(void *arg, bool idle)
{
    struct rig *r = arg;
    (void)idle;
    return pd_worker_queue(&r->w)->head ? 0 : r->sleep_ms;
}

static void cut(void *arg)
{
    struct rig *r = arg;
    atomic_fetch_add(&r->cuts, 1);
    pd_worker_lock(&r->w); /* the queue is read under the lock, as the schedulers do */
    for (struct pd_wnode *n; (n = pd_wlist_pop(pd_worker_queue(&r->w)));)
        JOB(n)->cut = true;
    pd_worker_unlock(&r->w);
}

static void notify(void *arg)
{
    struct rig *r = arg;
    atomic_fetch_add(&r->notified, 1);
}

static const struct pd_worker_ops ops = {.step = step, .wait_ms = wait_ms, .cut = cut};

static void rig_up(struct rig *r, uint32_t max_queued, uint32_t sleep_ms)
{
    atomic_init(&r->notified, 0);
    atomic_init(&r->steps, 0);
    atomic_init(&r->cuts, 0);
    r->sleep_ms = sleep_ms;
    struct pd_worker_params p = {.ops = &ops, .arg = r, .max_queued = max_queued,
                                 .notify = notify, .notify_arg = r};
    CHECK_EQ_INT(pd_worker_init(&r->w, &p), 0);
}

static bool wait_until(atomic_int *v, int want, int ms)
{
    for (int i = 0; i < ms; i++) {
        if (atomic_load(v) >= want)
            return true;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return atomic_load(v) >= want;
}

static void worker_runs_jobs_in_order_and_posts_their_events(void)
{
    struct rig r;
    struct job jobs[5] = {0};
    char err[128];
    rig_up(&r, 8, 1000);
    for (int i = 0; i < 5; i++) {
        jobs[i].id = i;
        CHECK_EQ_INT(pd_worker_submit(&r.w, &jobs[i].qnode), i + 1); /* the queue's length */
    }
    CHECK_EQ_INT(pd_worker_queued(&r.w), 5);
    CHECK_EQ_INT(pd_worker_start(&r.w, err, sizeof(err)), 0);
    CHECK(wait_until(&r.notified, 5, 5000));
    int next = 0;
    for (struct pd_wnode *n = pd_worker_take(&r.w); n; n = n->next) {
        struct job *j = PD_WNODE_ENTRY(n, struct job, enode);
        CHECK_EQ_INT(j->id, next++); /* oldest first */
        CHECK(j->ran);
    }
    CHECK_EQ_INT(next, 5);
    CHECK(pd_worker_take(&r.w) == NULL); /* taken once */
    pd_worker_stop(&r.w);
    CHECK_EQ_INT(atomic_load(&r.cuts), 1);
    pd_worker_done(&r.w);
}

static void worker_refuses_past_its_cap_and_when_stopping(void)
{
    struct rig r;
    struct job jobs[3] = {0};
    rig_up(&r, 2, 1000);
    CHECK_EQ_INT(pd_worker_submit(&r.w, &jobs[0].qnode), 1);
    CHECK_EQ_INT(pd_worker_submit(&r.w, &jobs[1].qnode), 2);
    CHECK_EQ_INT(pd_worker_submit(&r.w, &jobs[2].qnode), -EAGAIN);
    CHECK_EQ_INT(pd_worker_queued(&r.w), 2);
    pd_worker_stop(&r.w); /* never started: the cut runs here, queued jobs end */
    CHECK_EQ_INT(atomic_load(&r.cuts), 1);
    CHECK(jobs[0].cut && jobs[1].cut && !jobs[2].cut);
    CHECK(!jobs[0].ran && !jobs[1].ran);
    CHECK_EQ_INT(pd_worker_submit(&r.w, &jobs[2].qnode), -ESHUTDOWN);
    pd_worker_stop(&r.w); /* idempotent: no second cut */
    CHECK_EQ_INT(atomic_load(&r.cuts), 1);
    pd_worker_done(&r.w);
}

static void worker_wakes_on_submit_not_at_its_tick(void)
{
    struct rig r;
    struct job j = {0};
    char err[128];
    rig_up(&r, 4, 60000); /* asleep for a minute unless woken */
    CHECK_EQ_INT(pd_worker_start(&r.w, err, sizeof(err)), 0);
    struct timespec ts = {0, 50000000};
    nanosleep(&ts, NULL); /* it is asleep now */
    uint64_t t0 = pd_now_ns();
    CHECK_EQ_INT(pd_worker_submit(&r.w, &j.qnode), 1);
    CHECK(wait_until(&r.steps, 1, 5000));
    CHECK(pd_now_ns() - t0 < 5000000000ull);
    CHECK(j.ran);
    uint64_t beat = pd_worker_heartbeat_ns(&r.w);
    CHECK(beat >= t0); /* it beat before that step */
    pd_worker_stop(&r.w); /* wakes it from its minute's sleep too */
    CHECK(pd_now_ns() - t0 < 10000000000ull);
    pd_worker_done(&r.w);
}

/* The queue's gauge is written with the lock held whenever the lock is
 * released: whichever thread writes last, it says the length then. */
static void worker_keeps_its_queue_gauge(void)
{
    struct rig r;
    struct job j[3] = {0};
    struct pd_metrics *m = pd_metrics_new(NULL, NULL);
    struct pd_metric *g = pd_metrics_gauge(m, "t:waiting", NULL, "h");
    atomic_init(&r.notified, 0);
    atomic_init(&r.steps, 0);
    atomic_init(&r.cuts, 0);
    r.sleep_ms = 1000;
    struct pd_worker_params p = {.ops = &ops, .arg = &r, .max_queued = 4, .notify = notify,
                                 .notify_arg = &r, .queued = g};
    CHECK_EQ_INT(pd_worker_init(&r.w, &p), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(pd_worker_submit(&r.w, &j[i].qnode), i + 1);
    CHECK(pd_metric_value(g) == 3);
    pd_worker_lock(&r.w);
    pd_wlist_pop(pd_worker_queue(&r.w));
    pd_worker_unlock(&r.w);
    CHECK(pd_metric_value(g) == 2);
    pd_worker_stop(&r.w); /* never started: the cut empties the queue */
    CHECK(pd_metric_value(g) == 0);
    pd_worker_done(&r.w);
    pd_metrics_free(m);
}

static void wlist_keeps_order_through_every_operation(void)
{
    struct pd_wlist l = {0};
    struct job j[4] = {{.id = 0}, {.id = 1}, {.id = 2}, {.id = 3}};
    pd_wlist_push(&l, &j[1].qnode);
    pd_wlist_push(&l, &j[2].qnode);
    pd_wlist_push_front(&l, &j[0].qnode);
    pd_wlist_push(&l, &j[3].qnode);
    CHECK_EQ_INT(l.n, 4);
    pd_wlist_remove(&l, &j[1].qnode, &j[2].qnode); /* a middle one */
    pd_wlist_remove(&l, &j[1].qnode, &j[3].qnode); /* the tail */
    CHECK(l.tail == &j[1].qnode);
    pd_wlist_push(&l, &j[2].qnode); /* after the new tail */
    int want[] = {0, 1, 2}, k = 0;
    for (struct pd_wnode *n = l.head; n; n = n->next)
        CHECK_EQ_INT(JOB(n)->id, want[k++]);
    CHECK_EQ_INT(k, 3);
    CHECK(JOB(pd_wlist_pop(&l))->id == 0);
    struct pd_wnode *all = pd_wlist_take(&l);
    CHECK(l.head == NULL && l.tail == NULL && l.n == 0);
    CHECK(JOB(all)->id == 1 && JOB(all->next)->id == 2 && all->next->next == NULL);
    CHECK(pd_wlist_pop(&l) == NULL);
}

static const struct pd_test tests[] = {
    PD_TEST(worker_runs_jobs_in_order_and_posts_their_events),
    PD_TEST(worker_refuses_past_its_cap_and_when_stopping),
    PD_TEST(worker_wakes_on_submit_not_at_its_tick),
    PD_TEST(worker_keeps_its_queue_gauge),
    PD_TEST(wlist_keeps_order_through_every_operation),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
