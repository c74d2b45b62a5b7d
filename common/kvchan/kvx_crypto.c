/* common/kvchan/kvx: crypto worker threads -- block tags off the loop thread
 * (DESIGN.md "Process model"). A mutex-protected FIFO in, a FIFO out plus an
 * eventfd the loop watches; no lock is held while tagging. With a GPU
 * (pd_kvx_crypto_gpu) a worker derives each block's one-time key and hands
 * the blocks to kernels/tag on a stream of its own: the tags are computed or
 * checked on the device, reading the blocks where the device sees them. */
#include "kvx_internal.h"

#include "pd_config.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#if PD_HAVE_CUDA
#include "cuda_util.h"
#include "tag.h"
#endif

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
    /* GPU tags: the pool as the loop names its blocks, and where the device
     * reads it (set before the first job, read-only after) */
    const uint8_t *gpu_host, *gpu_dev;
    size_t gpu_bytes;
    const uint8_t *twins; /* VERIFY's copies go there (pd_kvx_crypto_gpu_twins), or NULL */
    size_t twin_bytes;
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

#if PD_HAVE_CUDA
/* p .. p + len inside [base, base + bytes): the offset, or SIZE_MAX */
static size_t inside(const uint8_t *base, size_t bytes, const uint8_t *p, size_t len)
{
    uintptr_t b = (uintptr_t)p, lo = (uintptr_t)base;
    size_t off = (size_t)(b - lo);
    return base && b >= lo && off <= bytes && len <= bytes - off ? off : SIZE_MAX;
}

/* One worker's device side: its stream, and room for cap blocks' jobs,
 * tags and verdicts on both sides. */
struct gpu_worker {
    pd_stream_t stream;
    uint32_t cap;
    struct pd_tag_job *h_jobs;
    uint8_t *h_ok;
    void *d_jobs;
    uint8_t *d_tags, *d_ok;
};

static void gpu_buffers_free(struct gpu_worker *g)
{
    free(g->h_jobs), free(g->h_ok);
    pd_cuda_free(g->d_jobs), pd_cuda_free(g->d_tags), pd_cuda_free(g->d_ok);
    g->h_jobs = NULL, g->h_ok = NULL, g->d_jobs = NULL, g->d_tags = NULL, g->d_ok = NULL;
    g->cap = 0;
}

static void gpu_worker_done(struct gpu_worker *g)
{
    gpu_buffers_free(g);
    g->stream = pd_cuda_stream_free(g->stream);
}

static int gpu_worker_fit(struct gpu_worker *g, uint32_t n)
{
    int rc = 0;
    if (!g->stream && (rc = pd_cuda_stream_new(&g->stream)) < 0)
        return rc;
    if (n <= g->cap)
        return 0;
    gpu_buffers_free(g);
    uint32_t cap = n < 64 ? 64 : n;
    g->h_jobs = calloc(cap, sizeof(*g->h_jobs));
    g->h_ok = malloc(cap);
    if (!g->h_jobs || !g->h_ok)
        return -ENOMEM;
    if ((rc = pd_cuda_malloc(&g->d_jobs, cap * sizeof(*g->h_jobs))) < 0 ||
        (rc = pd_cuda_malloc((void **)&g->d_tags, (size_t)cap * PD_TAG_LEN)) < 0 ||
        (rc = pd_cuda_malloc((void **)&g->d_ok, cap)) < 0)
        return rc;
    g->cap = cap;
    return 0;
}

/* The job's tags made (TAG) or checked (VERIFY) on the device: 0,
 * -EKEYREJECTED with j->bad, or the CUDA call's errno (the job fails). */
static int gpu_run(const struct pd_kvx_crypto *c, struct gpu_worker *g, struct pd_kvx_job *j)
{
    if (j->n == 0)
        return 0;
    int rc = gpu_worker_fit(g, j->n);
    if (rc < 0)
        return rc;
    const size_t jb = (size_t)j->n * sizeof(*g->h_jobs), tb = (size_t)j->n * PD_TAG_LEN;
    bool verify = j->kind == PD_KVX_JOB_VERIFY;
    const bool up = verify && j->twins, down = !verify && j->twins; /* copied up or down */
    if (j->twins && !c->twins)
        return -EINVAL; /* a bug: nothing is copied or read */
    for (uint32_t i = 0; i < j->n; i++) {
        struct pd_tag_job *t = &g->h_jobs[i];
        size_t off = inside(c->gpu_host, c->gpu_bytes, j->blocks[i], j->block_bytes);
        size_t toff = j->twins ? inside(c->twins, c->twin_bytes, j->twins[i], j->block_bytes)
                               : 0;
        if (off == SIZE_MAX || toff == SIZE_MAX) {
            sodium_memzero(g->h_jobs, jb); /* the keys made so far */
            return -EINVAL; /* not the pools': a bug, and nothing the device may touch */
        }
        pd_auth_tag_key(j->s, j->request_id, j->epoch, j->first + i, j->transfer, j->block_bytes,
                        t->key, t->prefix);
        t->prefix_len = PD_AUTH_TAG_PREFIX_LEN;
        t->data = j->twins ? j->twins[i] : c->gpu_dev + off;
        t->len = j->block_bytes;
    }
    /* up: each block into its twin first, on the stream the check runs on
     * (the staging is page-locked: DMA) */
    for (uint32_t i = 0; up && i < j->n && rc == 0; i++)
        rc = pd_cuda_memcpy_async(j->twins[i], c->gpu_dev + (j->blocks[i] - c->gpu_host),
                                  j->block_bytes, g->stream);
    if (rc == 0 && (rc = pd_cuda_memcpy_async(g->d_jobs, g->h_jobs, jb, g->stream)) == 0 && verify)
        rc = pd_cuda_memcpy_async(g->d_tags, j->tags, tb, g->stream);
    sodium_memzero(g->h_jobs, jb); /* a copy from pageable memory is done on return */
    if (rc == 0)
        rc = verify ? pd_tag_verify_cuda(g->d_jobs, j->n, g->d_tags, g->d_ok, g->stream)
                    : pd_tag_cuda(g->d_jobs, j->n, g->d_tags, g->stream);
    if (rc == 0)
        rc = verify ? pd_cuda_memcpy_async(g->h_ok, g->d_ok, j->n, g->stream)
                    : pd_cuda_memcpy_async(j->tags, g->d_tags, tb, g->stream);
    /* down: the tagged twins into the staged blocks the message sends */
    for (uint32_t i = 0; down && i < j->n && rc == 0; i++)
        rc = pd_cuda_memcpy_async(j->blocks[i], j->twins[i], j->block_bytes, g->stream);
    int rc_wipe = pd_cuda_memset_async(g->d_jobs, 0, jb, g->stream); /* the keys, on the device */
    int rc_sync = pd_cuda_stream_sync(g->stream);
    if (rc == 0)
        rc = rc_wipe < 0 ? rc_wipe : rc_sync;
    if (rc < 0 || !verify)
        return rc;
    for (uint32_t i = 0; i < j->n; i++)
        if (!g->h_ok[i]) {
            j->bad = i;
            return -EKEYREJECTED;
        }
    return 0;
}
#else
struct gpu_worker {
    int unused;
};
static void gpu_worker_done(struct gpu_worker *g) { (void)g; }
static int gpu_run(const struct pd_kvx_crypto *c, struct gpu_worker *g, struct pd_kvx_job *j)
{
    (void)c, (void)g, (void)j;
    return -ENOTSUP;
}
#endif

int pd_kvx_crypto_gpu(struct pd_kvx_crypto *c, void *pool, size_t bytes, int on_device)
{
#if PD_HAVE_CUDA
    void *dev = pool;
    int rc = on_device ? 0 : pd_cuda_host_device_ptr(pool, &dev);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&c->mu);
    c->gpu_host = pool, c->gpu_dev = dev, c->gpu_bytes = bytes;
    pthread_mutex_unlock(&c->mu);
    return 0;
#else
    (void)c, (void)pool, (void)bytes, (void)on_device;
    return -ENOTSUP;
#endif
}

void pd_kvx_crypto_gpu_twins(struct pd_kvx_crypto *c, void *twins, size_t bytes)
{
    pthread_mutex_lock(&c->mu);
    c->twins = twins, c->twin_bytes = bytes;
    pthread_mutex_unlock(&c->mu);
}

int pd_kvx_pool_write(int on_device, void *dst, const void *src, size_t n)
{
    if (!on_device) {
        memcpy(dst, src, n);
        return 0;
    }
#if PD_HAVE_CUDA
    return pd_cuda_memcpy(dst, src, n);
#else
    return -ENOTSUP;
#endif
}

int pd_kvx_pool_flip(int on_device, uint8_t *p)
{
    if (!on_device) {
        *p ^= 0x01;
        return 0;
    }
#if PD_HAVE_CUDA
    uint8_t b = 0;
    int rc = pd_cuda_memcpy(&b, p, 1);
    b ^= 0x01;
    return rc < 0 ? rc : pd_cuda_memcpy(p, &b, 1);
#else
    return -ENOTSUP;
#endif
}

static void *worker(void *arg)
{
    struct pd_kvx_crypto *c = arg;
    struct gpu_worker g = {0};
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->in.head && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        struct pd_kvx_job *j = fifo_pop(&c->in);
        if (!j)
            break; /* stop, and nothing queued */
        const int gpu = c->gpu_dev != NULL;
        pthread_mutex_unlock(&c->mu);
        if (gpu)
            j->result = gpu_run(c, &g, j);
        else
            run_job(j);
        pthread_mutex_lock(&c->mu);
        fifo_push(&c->out, j);
        uint64_t one = 1;
        ssize_t w = write(c->efd, &one, sizeof one);
        (void)w; /* an eventfd write only fails at 2^64 - 1 */
    }
    pthread_mutex_unlock(&c->mu);
    gpu_worker_done(&g);
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

unsigned pd_kvx_crypto_threads(const struct pd_kvx_crypto *c)
{
    return c->n_threads;
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
