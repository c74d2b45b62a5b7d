/* common/kvchan/kvx: crypto worker threads -- block tags off the loop thread
 * (DESIGN.md "Process model"). A mutex-protected FIFO in, a FIFO out plus an
 * eventfd the loop watches; no lock is held while tagging. */
#include "kvx_internal.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* A FIFO of jobs linked through their next; tail points at the link the
 * next job goes in (at head while the FIFO is empty). */
struct job_fifo {
    struct pd_kvx_job *head, **tail;
};

static void fifo_init(struct job_fifo *q)
{
    q->head = NULL;
    q->tail = &q->head;
}

static void fifo_push(struct job_fifo *q, struct pd_kvx_job *j)
{
    j->next = NULL;
    *q->tail = j;
    q->tail = &j->next;
}

static struct pd_kvx_job *fifo_pop(struct job_fifo *q)
{
    struct pd_kvx_job *j = q->head;
    if (j) {
        q->head = j->next;
        if (!q->head)
            q->tail = &q->head;
    }
    return j;
}

struct pd_kvx_crypto {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job_fifo in, out;
    int stop;
    int efd;
    unsigned n_threads;
    pthread_t threads[PD_KVX_MAX_CRYPTO_THREADS];
};

static void run_job(struct pd_kvx_job *j)
{
    j->result = 0;
    for (uint32_t i = 0; i < j->n; i++) {
        uint8_t *tag = j->tags + (size_t)i * PD_BLOCK_TAG_LEN;
        if (j->kind == PD_KVX_JOB_TAG) {
            pd_auth_tag_block(j->s, j->request_id, j->epoch, j->first + i, j->transfer,
                              j->blocks[i], j->block_bytes, tag);
        } else if (pd_auth_tag_verify(j->s, j->request_id, j->epoch, j->first + i, j->transfer,
                                      j->blocks[i], j->block_bytes, tag) < 0) {
            j->result = -EKEYREJECTED;
            j->bad = i;
            return;
        }
    }
}

static void *worker(void *arg)
{
    struct pd_kvx_crypto *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->in.head && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        struct pd_kvx_job *j = fifo_pop(&c->in);
        if (!j)
            break; /* stop, and nothing queued */
        pthread_mutex_unlock(&c->mu);
        run_job(j);
        pthread_mutex_lock(&c->mu);
        fifo_push(&c->out, j);
        uint64_t one = 1;
        ssize_t w = write(c->efd, &one, sizeof one);
        (void)w; /* an eventfd write only fails at 2^64 - 1 */
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

unsigned pd_kvx_default_crypto_threads(void)
{
    cpu_set_t set;
    long n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                         : sysconf(_SC_NPROCESSORS_ONLN);
    n /= 4;
    return n < 1 ? 1 : n > PD_KVX_MAX_CRYPTO_THREADS ? PD_KVX_MAX_CRYPTO_THREADS : (unsigned)n;
}

int pd_kvx_crypto_new(unsigned threads, struct pd_kvx_crypto **out, int *notify_fd)
{
    if (threads == 0)
        threads = pd_kvx_default_crypto_threads();
    if (threads > PD_KVX_MAX_CRYPTO_THREADS)
        return -E2BIG;
    struct pd_kvx_crypto *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    fifo_init(&c->in);
    fifo_init(&c->out);
    c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->efd < 0) {
        int rc = -errno;
        free(c);
        return rc;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    for (unsigned i = 0; i < threads; i++) {
        if (pthread_create(&c->threads[i], NULL, worker, c) != 0) {
            pd_kvx_crypto_free(c);
            return -EAGAIN;
        }
        c->n_threads++;
    }
    *out = c;
    *notify_fd = c->efd;
    return 0;
}

void pd_kvx_crypto_submit(struct pd_kvx_crypto *c, struct pd_kvx_job *j)
{
    pthread_mutex_lock(&c->mu);
    fifo_push(&c->in, j);
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

struct pd_kvx_job *pd_kvx_crypto_take(struct pd_kvx_crypto *c)
{
    uint64_t v;
    ssize_t r = read(c->efd, &v, sizeof v);
    (void)r; /* EAGAIN when nothing was signalled: fine */
    pthread_mutex_lock(&c->mu);
    struct pd_kvx_job *j = c->out.head;
    fifo_init(&c->out);
    pthread_mutex_unlock(&c->mu);
    return j;
}

void pd_kvx_crypto_free(struct pd_kvx_crypto *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    for (unsigned i = 0; i < c->n_threads; i++)
        pthread_join(c->threads[i], NULL);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    close(c->efd);
    free(c);
}
