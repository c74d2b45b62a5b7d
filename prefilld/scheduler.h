/* prefilld/scheduler: the compute thread. It owns the engine and the KV pool; the
 * loop thread hands it PREFILL jobs and gets back, per job, runs of final
 * blocks to send and then the first token.
 *
 *   loop:     j = pf_job_new(...); pf_sched_submit(s, j)     (-EAGAIN: queue full)
 *   compute:  each step takes prompt chunks of several jobs within
 *             --max-num-batched-tokens, FIFO with fairness across decode
 *             peers (the peer served least recently goes first); after the
 *             step, the blocks that became final go back as a RUN event
 *             (each block holding one extra reference for the transfer), and
 *             a finished job's first token (sampled with the request's
 *             parameters) as a DONE event
 *   loop:     pf_sched_take(s) -> events in order; send; pf_event_free
 *   loop:     when the transfer of a run ends (acknowledged or not),
 *             pf_sched_unref(s, blocks, n): the compute thread drops the
 *             transfer's references; a block is free when the last goes
 *
 * A job's own sequence is released when its prefill ends (done, failed or
 * cancelled); blocks still in flight stay allocated through their transfer
 * reference, so nothing the network still reads is ever reused.
 *
 * A GPU engine (pd_engine_kv_staging): a job is admitted with staging blocks
 * for its whole prompt as well as pool blocks; each run is copied from the
 * pool into its staging blocks after the step that finished it, and the
 * RUN event carries the staging ids (the transfer references, and
 * pf_sched_unref, are the staging's). The pool blocks go back when the
 * prefill ends, the staging ones as their transfers end. With kv_twins (the
 * KV channel tags on the GPU in the pool and copies down itself: kvx's twin
 * pool) nothing is copied here: the RUN carries the pool ids as well
 * (twins), each with a transfer reference too, so they outlive the prefill
 * until the transfer ends.
 * Prefix caching (the engine made with prefix_cache; docs/internals/prefix.md):
 * a job first checks decoded's word on the prefix it holds (its n_cached
 * blocks and the name of the last: a different name fails the job,
 * PD_R_INVALID_REQUEST), then starts from the longest prefix of its prompt
 * this pool has cached, computes the rest, and publishes its blocks as
 * they become full. Blocks decoded holds are never sent: runs start at
 * block n_cached, numbered from there. What decoded holds and this pool
 * does not is computed all the same (a cold cache after a restart) and
 * counted (metrics.recomputed).
 *
 * Cancellation: pf_job_cancel (any thread); the compute thread drops the job
 * before its next step and posts PF_EV_END. Jobs are reference-counted (the
 * loop, the compute thread and each event hold one).
 */
#ifndef PF_SCHED_H
#define PF_SCHED_H

#include "dlist.h"
#include "engine.h"
#include "kv_metrics.h"
#include "prefix.h"
#include "worker.h"
#include "log.h" /* pd_now_ns */
#include "frame.h"
#include "sample.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct pd_metric;

struct pf_job {
    /* set by the loop before pf_sched_submit, read-only afterwards */
    uint64_t peer; /* fairness key: the decode peer's session */
    uint64_t request_id;
    uint32_t epoch;
    char xrid[PD_PROTO_MAX_XRID + 1];
    int32_t *tokens; /* (n_tokens), owned */
    uint32_t n_tokens;
    struct pd_sampling sampling; /* .bias = bias */
    struct pd_logit_bias *bias; /* (sampling.n_bias) owned: PREFILL's bias part */
    /* PD_PREFILL_F_PROMPT_LP: the prompt's log-probabilities, scored as the
     * prefill computes each position: plp[i], i in [1, n_tokens), prompt
     * token i's given those before; plp[n_tokens] the drawn first token.
     * (n_tokens + 1) owned, or NULL; the loop reads it after DONE's event.
     * Such a job maps nothing from the prefix cache. */
    struct pd_sample_result *plp;
    uint32_t *mask; /* PREFILL's mask part (constrained decoding): the first token's allowed
                     * set, owned, or NULL; sampling.mask */
    /* prefix caching: PREFILL's prefix part (zeros without it) */
    uint8_t salt[PD_PREFIX_HASH_LEN]; /* the request's cache_salt digest */
    uint32_t n_cached; /* blocks [0, n_cached) decoded holds: not sent, runs count from it */
    uint8_t cached_name[PD_PREFIX_HASH_LEN]; /* decoded's name of block n_cached - 1 */
    void *owner; /* the loop's (its transfer handle); never touched by compute */
    bool loop_done; /* the loop's: DONE or END went out (no more PROGRESS) */
    struct pd_dnode held; /* in the loop's list of jobs it holds; never touched by compute */
    uint64_t t_arrival_ns;

    struct pd_wjob base; /* references, the cancel flag */

    /* the compute thread writes, the loop reads (PROGRESS frames) */
    atomic_bool computing; /* admitted: it holds blocks and computes */
    atomic_uint tokens_done; /* prompt tokens in the cache (mapped or computed) */

    /* compute thread only */
    struct pd_prefix_seq names; /* the names of the prompt's full blocks */
    uint32_t n_pub; /* seq's blocks [0, n_pub) are published or were mapped */
    bool prepared; /* names made and decoded's checked */
    struct pd_kvseq seq;
    struct pd_kvseq xseq; /* a GPU pool's: the staging blocks its runs are copied into */
    uint32_t n_sent_blocks; /* blocks [n_cached, n) handed out as runs */
    struct pd_wnode qnode; /* the worker's queue */
    struct pf_event *final; /* the last event (DONE or END), allocated with the job */
};

enum pf_event_type {
    PF_EV_RUN = 1, /* blocks [first, first + n) of the job are final: send them */
    PF_EV_DONE, /* the first token: token and its log-probabilities */
    PF_EV_END, /* the job failed or was cancelled: reason, err */
};

struct pf_event {
    struct pf_event *next; /* pf_sched_take's list */
    struct pd_wnode node; /* the worker's outbox */
    enum pf_event_type type;
    struct pf_job *job; /* one reference, dropped by pf_event_free */
    uint32_t first, n; /* RUN: blocks of the request as the PREFILL numbered them (from
                        * n_cached on: first 0 is the prompt's block n_cached) */
    uint32_t *blocks; /* RUN: (n) block ids of the channel pool (the staging on a GPU), one
                       * transfer reference each */
    uint32_t *twins; /* RUN with kv_twins: (n) the pool blocks the staging ones stand for, one
                      * transfer reference each; NULL otherwise */
    struct pd_sample_result token; /* DONE */
    int reason; /* END: enum pd_reason */
    char err[200];
};

struct pf_sched_metrics {
    struct pd_metric *running, *waiting, *kv_used, *kv_free, *staging_used;
    struct pd_metric *prompt_tokens, *queue_time, *prefill_time, *batch_tokens;
    struct pd_prefix_metrics *prefix; /* the prefix cache's (kv_metrics.h) */
    struct pd_metric *blocks_not_sent, *bytes_not_sent; /* counters: decoded held them */
    struct pd_metric *recomputed; /* counter: tokens decoded held but this pool did not
                                   * (a cold cache: computed to extend the prompt) */
};

struct pf_sched_params {
    struct pd_engine *engine;
    uint32_t max_waiting; /* jobs queued or running */
    uint32_t max_running; /* jobs with KV blocks at once */
    uint32_t idle_tick_ms; /* heartbeat while idle; 0 = 1000 */
    bool kv_twins; /* a GPU pool with staging: the KV channel copies runs down (see above) */
    struct pf_sched_metrics metrics;
    void (*notify)(void *arg); /* events are ready: wake the loop, no I/O */
    void *notify_arg;
};

struct pf_sched;

struct pf_job *pf_job_new(void);
void pf_job_ref(struct pf_job *j);
void pf_job_unref(struct pf_job *j); /* accepts NULL */
void pf_job_cancel(struct pf_job *j);
void pf_event_free(struct pf_event *e); /* accepts NULL */

int pf_sched_new(const struct pf_sched_params *p, struct pf_sched **out, char *err,
                 size_t errlen);
/* The compute thread (common/daemon/worker.h): pd_worker_start starts it;
 * pd_worker_stop ends what is left (END events, reason SHUTDOWN, queued) and
 * joins it, also when it never started; the runtime's watchdog watches it. */
struct pd_worker *pf_sched_worker(struct pf_sched *s);
/* After stop; blocks whose transfer references were never dropped are
 * reclaimed here. Accepts NULL; returns NULL. */
struct pf_sched *pf_sched_free(struct pf_sched *s);
/* Takes a reference. -EAGAIN: full; -E2BIG: the prompt can never fit the
 * pool or the model's length; -ESHUTDOWN: stopping. */
int pf_sched_submit(struct pf_sched *s, struct pf_job *j);
struct pf_event *pf_sched_take(struct pf_sched *s);
/* The transfer of these blocks is over: drop one reference each (copied),
 * and of twins[n] when not NULL (a RUN's twins). */
int pf_sched_unref(struct pf_sched *s, const uint32_t *blocks, const uint32_t *twins, uint32_t n);
void pf_sched_counts(struct pf_sched *s, uint32_t *waiting, uint32_t *running);


#endif
