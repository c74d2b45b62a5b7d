/* decoded/scheduler internals, shared by scheduler.c (the compute thread's
 * loop: admission, steps, remote prefill) and sched_share.c (what a job
 * shares with others: the prefix cache, its leader's blocks). Not a public
 * header. */
#ifndef DEC_SCHED_INTERNAL_H
#define DEC_SCHED_INTERNAL_H

#include "scheduler.h"

/* A REMOTE job's transfer is over (the loop's word, for the compute thread).
 * One per job, allocated with it: a remote prefill reports once, and the
 * next attempt starts only after the report was read. */
struct dec_inbox {
    struct pd_wnode node; /* the scheduler's inbox, under the worker's lock */
    struct dec_job *job; /* one reference */
    bool done, exhausted, in_pool;
    int status;
    struct pd_sample_result first;
    char msg[256];
};

struct dec_sched {
    struct dec_sched_params p;
    struct pd_kvcache *kc;
    struct pd_kvcache *xc; /* a GPU pool's staging (REMOTE jobs' transfers land there), or NULL */
    uint32_t block_size, max_model_len, max_batched;
    uint32_t watermark; /* blocks kept free when admitting beside running jobs */
    bool prefix; /* the pool caches prefixes */
    struct pd_kv_layout layout; /* the prefix names' namespace (with each job's salt) */
    struct pd_ratelimit rl_preempt;
    struct pd_sample_result *results; /* (max_num_seqs): each row sampled in the step */
    struct pd_batch_item *items; /* (max_num_seqs) */
    struct dec_job **item_job; /* (max_num_seqs) job of each item */
    struct dec_job **active; /* (max_num_seqs) admitted jobs, admission order */
    uint32_t n_active;
    struct dec_job *remote; /* REMOTE jobs (rnext links); they count against max_num_seqs */
    uint32_t n_remote;

    struct pd_grammar *grammar; /* the vocabulary's trie and mask cache: made at the first
                                 * constrained job (sched_share.c) */

    struct pd_worker w; /* the compute thread, the queue of waiting jobs, the outbox */
    struct pd_wlist inbox; /* finished transfers, from the loop (dec_inbox), under w's lock */
    atomic_uint n_running;
};

/* ---- sched_share.c ---- */
/* An empty sequence starts from the longest cached prefix of the job's
 * tokens; *q_blocks: the full blocks looked up (0: no lookup). */
void dec_sched_map_prefix(struct dec_sched *s, struct dec_job *j, uint32_t *q_blocks);
/* After a step (or a verified remote prompt): the job's full blocks named
 * and published. */
void dec_sched_publish(struct dec_sched *s, struct dec_job *j);
/* n > 1: fork the leader's prompt blocks; -EAGAIN while they are not in yet. */
int dec_sched_follow(struct dec_sched *s, struct dec_job *j);
/* A leader that ends (max_tokens 1 ends it in the step its prompt is done,
 * before its followers can be admitted): its queued followers fork its
 * prompt blocks now, as dec_sched_follow would at their admission. */
void dec_sched_hand_down(struct dec_sched *s, struct dec_job *l);
/* A constrained job's mask for its next token into j->mask (and
 * j->sampling.mask); -ENOMEM (sampling.mask NULL: its token will be refused). */
int dec_sched_mask(struct dec_sched *s, struct dec_job *j);
/* A constrained job's token taken by its grammar: 1 when the value is now
 * complete, 0 when it goes on, -EINVAL when the token is not allowed. */
int dec_sched_grammar_take(struct dec_sched *s, struct dec_job *j, int32_t token);

#endif
