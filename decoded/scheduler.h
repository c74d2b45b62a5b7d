/* decoded/scheduler: the compute thread. It owns the engine, the sampler and the
 * KV pool; the loop thread hands it jobs and gets events back.
 *
 *   loop:     job = dec_job_new(...); fill it; dec_sched_submit(s, job)   (-EAGAIN: queue full)
 *   compute:  runs one engine step at a time over the running jobs: a
 *             decode token for each job past its prompt, plus prompt chunks
 *             of the others, all within --max-num-batched-tokens; then
 *             admits queued jobs (first come first served) while a sequence
 *             slot, budget and the blocks of their first chunk are free
 *             (continuous batching). Blocks are taken as sequences grow; when
 *             a step cannot get one, the most recently admitted running jobs
 *             are preempted: their blocks are released, their tokens kept,
 *             and they go back to the front of the queue, to be recomputed
 *             (prompt + tokens so far) when readmitted. A job whose prompt +
 *             max_tokens cannot fit the whole pool is refused at submission.
 *   compute:  after each step, one dec_event per job that advanced: the text
 *             that became final (detokenized, stop strings applied), the
 *             token and its log-probabilities, the finish; then notify()
 *   loop:     dec_sched_take(s) -> the events, in order; dec_event_free each
 *
 * Remote prefill (--prefill peers; docs/internals/scheduler.md "REMOTE"): a
 * job the loop marked `remote` is admitted with blocks for its whole prompt
 * and parked in the REMOTE state: outside the running set, never preempted,
 * no engine work. The compute thread posts a DEC_EV_REMOTE_START event
 * carrying the block ids; the loop runs the transfer and, only once kvx has
 * RELEASED the request, calls dec_sched_remote_done (the first token: the job
 * joins the running set with its prompt in the cache) or
 * dec_sched_remote_failed (the failover policy: another peer, local prefill,
 * or an error). A cancelled REMOTE job posts DEC_EV_REMOTE_CANCEL and keeps
 * its blocks until the loop reports the release.
 *
 * A GPU engine (pd_engine_kv_staging): a REMOTE job also takes staging blocks
 * for its whole prompt, and the START event carries those (the transfer
 * lands in page-locked host memory); on dec_sched_remote_done the compute
 * thread copies them into the job's pool blocks and gives them back. A
 * prompt longer than the whole staging is prefilled locally.
 *
 * Prefix caching (the engine made with prefix_cache; docs/internals/prefix.md):
 * a job prefilled here starts from the longest cached prefix of its tokens
 * (the prompt, and after a preemption the output too; in its cache_salt's
 * namespace), mapped from the pool, and computes only the rest; every block
 * of its that becomes full after a step is published, and a remote prompt's
 * blocks once verified (cache_remote). The last token is always computed:
 * a prompt found whole still runs its last block's token for the logits.
 * A REMOTE job maps its cached prefix too and asks the peer only for the
 * blocks from there (REMOTE_START's n_cached; the PREFILL's prefix part).
 *
 * n > 1: a job with a leader (the first choice of the same prompt, submitted
 * before it) waits in the queue until the leader's prompt is in the cache,
 * then forks the leader's blocks (pd_kvseq_fork) and computes only the last
 * prompt position itself; blocks are shared until one writes (copy-on-write,
 * pd_engine_seq_prepare).
 *
 * Cancellation: dec_job_cancel (any thread) marks the job; the compute thread
 * drops it before its next step, releases its blocks and posts a
 * DEC_FIN_CANCELLED event. Lifetimes: a job is reference-counted (the loop,
 * the compute thread and each event hold one); dec_job_unref frees it.
 * No lock is held across anything slow; notify() must only wake the loop
 * (event_active), never do I/O.
 */
#ifndef DEC_SCHEDULER_H
#define DEC_SCHEDULER_H

#include "engine.h"
#include "kv_metrics.h"
#include "grammar.h"
#include "prefix.h"
#include "schema.h"
#include "worker.h"
#include "log.h" /* pd_now_ns */
#include "http.h"
#include "sample.h"
#include "stop.h"
#include "tokenizer.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct pd_metric;

enum dec_finish {
    DEC_FIN_NONE = 0,
    DEC_FIN_STOP, /* end-of-generation token or stop string */
    DEC_FIN_LENGTH, /* max_tokens or the model's context */
    DEC_FIN_CANCELLED, /* client gone, or shutdown */
    DEC_FIN_ERROR, /* engine failure: event's err says why */
};

enum dec_failover {
    DEC_FAILOVER_RETRY = 0, /* another healthy peer (new epoch), then local prefill */
    DEC_FAILOVER_LOCAL, /* local prefill at once */
    DEC_FAILOVER_FAIL, /* the request fails (502/503) */
};

enum dec_event_kind {
    DEC_EV_OUTPUT = 0, /* text, token, finish (to the HTTP side) */
    DEC_EV_REMOTE_START, /* to the loop's remote prefill: blocks, epoch */
    DEC_EV_REMOTE_CANCEL, /* to the loop: cancel the job's transfer */
};

struct dec_inbox;
struct dec_job {
    /* set by the loop before dec_sched_submit, read-only afterwards */
    char id[PD_HTTP_ID_MAX];
    int32_t *prompt; /* (n_prompt), owned */
    uint32_t n_prompt;
    uint32_t max_tokens; /* >= 1; n_prompt + max_tokens <= max_model_len */
    struct pd_sampling sampling; /* .bias = bias */
    struct pd_logit_bias *bias; /* (sampling.n_bias) owned */
    bool logprobs; /* report each token's log-probability */
    /* echo with logprobs: the prompt's log-probabilities, scored as its
     * prefill computes each position (pd_batch_item.forced): plp[i], i >= 1,
     * is prompt token i's given those before it (plp[0] unused, as OpenAI's
     * null), plp[n_prompt] the drawn first token's scratch. (n_prompt + 1)
     * owned, or NULL. Complete once the job's first event is posted; the
     * loop reads it only then. Such a job maps nothing from the prefix cache
     * before its prompt is scored (a mapped block has no logits). */
    struct pd_sample_result *plp;
    bool score_only; /* max_tokens 0 (echo): the prompt scored, nothing generated; it runs
                      * with max_tokens 1 and its token is dropped */
    /* constrained decoding (response_format json_object or json_schema;
     * common/text/grammar): schema (a reference: the request's compiled
     * schema, or json_object's static one; NULL unconstrained) and the output
     * so far in gs; before each token it draws, the tokens allowed
     * there in mask (sampling.mask; compute thread, allocated on first use);
     * it ends (stop) as the value completes */
    bool constrained;
    struct pd_schema *schema;
    struct pd_gstate gs;
    uint32_t *mask;
    const char *why; /* compute thread: why take_token failed, when not out of memory */
    bool ignore_eos;
    uint8_t salt[PD_PREFIX_HASH_LEN]; /* cache_salt's digest (pd_prefix_salt), zeros: none */
    char **stops; /* (n_stops) owned strings */
    uint32_t n_stops;
    uint64_t t_arrival_ns;
    bool remote; /* prefill on a peer (the loop decided) */
    void *owner; /* the loop's; never touched by the compute thread */
    uint32_t choice; /* the loop's: which choice of its request this job is */
    struct dec_job *leader; /* n > 1: the first choice of the same prompt (one reference),
                             * whose prompt KV this job shares; NULL otherwise */
    /* the loop's remote-prefill state; never touched by the compute thread */
    void *remote_req; /* the transfer in flight, NULL when none */
    uint64_t remote_id; /* PREFILL request id (0: none chosen yet) */
    uint64_t peers_failed; /* bit i: peer i failed this request */

    struct pd_wjob base; /* references, the cancel flag */

    /* compute thread only */
    struct pd_kvseq seq; /* seq.n_tokens: tokens of toks[] in the KV cache */
    struct pd_kvseq xseq; /* REMOTE on a GPU: the staging blocks the transfer fills */
    struct pd_prefix_seq names; /* prefix caching: the names of toks[]'s full blocks */
    uint32_t n_pub; /* seq's blocks [0, n_pub) are published (or were mapped from the cache) */
    uint32_t n_mapped; /* REMOTE: seq's blocks [0, n_mapped) came from the cache: not asked
                        * of the peer */
    bool unverified; /* its prompt's KV came unverified (--kv-integrity=off): it publishes
                      * nothing, since every later block is computed on top of it */
    int32_t *toks; /* (n_prompt + max_tokens) owned: the prompt, then the output */
    int32_t *out; /* toks + n_prompt: (max_tokens) generated tokens */
    uint32_t n_out;
    bool admitted; /* at least once (queue time is observed then only) */
    bool prompt_counted; /* pdserve:prompt_tokens_total has its prompt */
    uint32_t n_preempted;
    struct pd_detok *detok;
    struct dec_stop stop;
    uint64_t t_first_ns, t_last_ns;
    bool in_remote; /* REMOTE state: blocks lent to a transfer */
    bool ended; /* finished: its blocks are gone (a follower cannot fork them) */
    bool cancel_posted;
    uint32_t remote_epoch; /* bumped per retry */
    struct pd_wnode qnode; /* the worker's queue */
    struct dec_event *final; /* the last event, allocated with the job */
    struct dec_inbox *report; /* the remote prefill's report, allocated with the job */
    struct dec_job *rnext; /* REMOTE list link */
};

struct dec_event {
    struct dec_event *next; /* dec_sched_take's list */
    struct pd_wnode node; /* the worker's outbox */
    enum dec_event_kind kind;
    struct dec_job *job; /* one reference, dropped by dec_event_free */
    uint32_t *blocks; /* REMOTE_START: (n_blocks) block ids the transfer fills, owned: the
                       * pool's, or on a GPU the staging's */
    uint32_t *twins; /* REMOTE_START on a GPU with staging: (n_blocks) the device pool's blocks
                      * they stand for, owned (kvx's twin blocks); NULL otherwise */
    uint32_t n_blocks, epoch;
    /* REMOTE_START with prefix caching: the prompt's first n_cached blocks are
     * in the pool already (blocks[] are those from n_cached on), cached_name
     * names the last of them; names: (n_names) the names of the prompt's full
     * blocks (the peer choice), owned */
    uint32_t n_cached, n_names;
    uint8_t cached_name[PD_PREFIX_HASH_LEN];
    uint8_t (*names)[PD_PREFIX_HASH_LEN];
    uint32_t *mask; /* REMOTE_START of a constrained job: (mask_words) the first token's
                     * allowed set, owned; NULL otherwise */
    uint32_t mask_words;
    char *text; /* released text, NUL-terminated (may be "") */
    size_t len;
    bool has_token; /* a token was sampled (not an end-of-generation one) */
    struct pd_sample_result token;
    enum dec_finish finish;
    uint32_t n_gen; /* tokens generated so far, end-of-generation included */
    uint32_t n_preempted; /* times the job was preempted so far */
    uint64_t t_first_ns; /* when the first token came; 0 before */
    int status; /* DEC_FIN_ERROR: the HTTP status (0 = 500) */
    char err[256];
};

/* Metrics the compute thread updates (any may be NULL). */
struct dec_sched_metrics {
    struct pd_metric *running, *waiting, *kv_used, *kv_free, *kv_usage, *staging_used;
    struct pd_metric *prompt_tokens, *gen_tokens;
    struct pd_metric *ttft, *itl, *e2e, *queue_time;
    struct pd_metric *batch_size; /* histogram: sequences per engine step */
    struct pd_metric *preemptions; /* counter */
    struct pd_metric *remote_prompt_tokens; /* counter: prompts prefilled by a peer */
    struct pd_metric *remote_running; /* gauge: jobs in the REMOTE state */
    struct pd_prefix_metrics *prefix; /* the prefix cache's (kv_metrics.h) */
};

struct dec_sched_params {
    struct pd_engine *engine;
    const struct pd_tokenizer *tok; /* NULL: dummy model, text is "[id]" per token */
    uint32_t max_num_seqs;
    uint32_t max_waiting;
    uint32_t idle_tick_ms; /* heartbeat while idle; 0 = 1000 */
    enum dec_failover failover;
    bool cache_remote; /* publish the prompt blocks a peer sent once verified (false with
                        * --kv-integrity=off: nothing unverified enters the cache) */
    struct dec_sched_metrics metrics;
    void (*notify)(void *arg); /* events are ready */
    void *notify_arg;
};

struct dec_sched;

struct dec_job *dec_job_new(void);
void dec_job_ref(struct dec_job *j);
void dec_job_unref(struct dec_job *j); /* accepts NULL */
void dec_job_cancel(struct dec_job *j);
void dec_event_free(struct dec_event *e); /* accepts NULL; drops the job reference */

int dec_sched_new(const struct dec_sched_params *p, struct dec_sched **out, char *err,
                  size_t errlen);
/* Stops the thread (cancelling what is left: their events are queued) and
 * frees everything but undelivered events, which dec_sched_take still
 * returns. Accepts NULL; returns NULL. */
struct dec_sched *dec_sched_free(struct dec_sched *s);
/* The compute thread (common/daemon/worker.h): pd_worker_start starts it;
 * pd_worker_stop cancels what is left (its events queued; new submissions
 * get -ESHUTDOWN) and joins it; the runtime's watchdog watches it. */
struct pd_worker *dec_sched_worker(struct dec_sched *s);
/* Takes a reference. -EAGAIN: --max-waiting jobs already queued;
 * -ESHUTDOWN: stopping; -E2BIG: n_prompt + max_tokens would not fit the
 * whole KV pool (the loop checks this first, with a message). */
int dec_sched_submit(struct dec_sched *s, struct dec_job *j);
/* The loop, once kvx RELEASED a job's transfer (any thread; takes a reference):
 * done -- the prompt's KV is verified in the job's blocks and `first` is the
 * first token, sampled as the local path would (in_pool: on a GPU with
 * staging, the channel already copied it into the device pool, where it was
 * verified; else the staging is copied up now); failed -- nothing usable
 * arrived: `exhausted` when no other healthy peer is left, `status` (502/503)
 * and `msg` for a request that fails under --prefill-failover=fail. */
void dec_sched_remote_done(struct dec_sched *s, struct dec_job *j,
                           const struct pd_sample_result *first, bool in_pool);
void dec_sched_remote_failed(struct dec_sched *s, struct dec_job *j, bool exhausted, int status,
                             const char *msg);
/* Every event posted so far, oldest first (the caller frees them). */
struct dec_event *dec_sched_take(struct dec_sched *s);
/* Monotonic ns of the compute thread's last sign of life (it ticks every
 * idle_tick_ms while idle, and at every step). */
/* Jobs queued and admitted (any thread). */
void dec_sched_counts(struct dec_sched *s, uint32_t *waiting, uint32_t *running);
/* Tokens of KV cache the pool holds in all (a job's worst case must fit). */
uint64_t dec_sched_capacity_tokens(const struct dec_sched *s);


#endif
