/* decoded/sched_share: what a job of decoded's scheduler shares with others
 * -- the prefix cache (docs/internals/prefix.md), for n > 1 its leader's
 * prompt blocks (docs/internals/scheduler.md), and for constrained decoding
 * the vocabulary's trie and mask cache (common/text/grammar). Compute
 * thread only. */
#include "sched_internal.h"

#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* An empty sequence starts from the longest cached prefix of the job's
 * tokens, full blocks only and never the last token (its logits are the
 * point). Counted in the metrics by the caller once admitted. */
void dec_sched_map_prefix(struct dec_sched *s, struct dec_job *j, uint32_t *q_blocks)
{
    uint32_t total = j->n_prompt + j->n_out;
    *q_blocks = 0;
    if (!s->prefix || j->seq.n_blocks || total < 2 || (j->plp && !j->n_out))
        return; /* echo scores every prompt position: none may be skipped */
    uint32_t full = (total - 1) / s->block_size;
    if (pd_prefix_seq_extend(&j->names, j->toks, full * s->block_size, s->block_size) < 0)
        return; /* out of memory: computed in full, as without the cache */
    int k = pd_kvseq_map_prefix(s->kc, &j->seq, j->names.h, full);
    *q_blocks = full;
    j->n_pub = k > 0 ? (uint32_t)k : 0;
}

/* n > 1: a job after its leader (the first choice of the same prompt)
 * shares the leader's prompt KV: the blocks of positions [0, n_prompt - 1)
 * forked from the leader's sequence (a shared partial block is copied by
 * whichever writes into it first), the last prompt position computed by the
 * job itself, whose logits give its own first token with its own seed.
 * Returns -EAGAIN while the leader's prompt is not in its cache yet (queued,
 * prefilling, or with a prefill peer); 0 otherwise, forked or not (a leader
 * that ended: the prefix cache, or a prefill of its own). */
int dec_sched_follow(struct dec_sched *s, struct dec_job *j)
{
    struct dec_job *l = j->leader;
    if (l->ended || j->seq.n_blocks || j->n_out)
        return 0;
    for (uint32_t i = 0; i < s->n_active; i++) {
        if (s->active[i] != l)
            continue;
        if (l->seq.n_tokens < l->n_prompt)
            return -EAGAIN;
        /* failing (no memory): a prefill of its own */
        if (pd_kvseq_fork(s->kc, &j->seq, &l->seq, j->n_prompt - 1) == 0)
            j->prompt_counted = true; /* the leader's prompt, counted once */
        j->n_pub = 0;
        return 0;
    }
    return -EAGAIN;
}

void dec_sched_hand_down(struct dec_sched *s, struct dec_job *l)
{
    if (l->leader || l->seq.n_tokens < l->n_prompt)
        return; /* not a leader, or its prompt is not in the cache */
    pd_worker_lock(&s->w);
    for (struct pd_wnode *n = pd_worker_queue(&s->w)->head; n; n = n->next) {
        struct dec_job *j = PD_WNODE_ENTRY(n, struct dec_job, qnode);
        /* the job's sequence is the compute thread's (this one), the list
         * the lock's; failing (no memory), a prefill of its own */
        if (j->leader == l && !j->seq.n_blocks && !j->n_out &&
            pd_kvseq_fork(s->kc, &j->seq, &l->seq, j->n_prompt - 1) == 0) {
            j->prompt_counted = true;
            j->n_pub = 0;
        }
    }
    pd_worker_unlock(&s->w);
}

/* After a step: the job's blocks that became full are published. */
void dec_sched_publish(struct dec_sched *s, struct dec_job *j)
{
    if (!s->prefix || j->unverified ||
        pd_prefix_seq_extend(&j->names, j->toks, j->seq.n_tokens, s->block_size) < 0)
        return;
    j->n_pub = pd_kvseq_publish(s->kc, &j->seq, j->names.h, j->n_pub, j->names.n);
}


int dec_sched_mask(struct dec_sched *s, struct dec_job *j)
{
    char err[160];
    j->sampling.mask = NULL;
    if (!s->grammar && s->p.tok &&
        pd_grammar_new(s->p.tok, pd_engine_n_vocab(s->p.engine), &s->grammar, err,
                       sizeof(err)) < 0) {
        pd_log(PD_LOG_ERR, "%s: %s", j->id, err);
        return -ENOMEM;
    }
    if (!s->grammar)
        return -EINVAL; /* no tokenizer: the loop refuses such requests */
    const uint32_t words = pd_grammar_mask_words(s->grammar);
    if (!j->mask && !(j->mask = malloc(words * sizeof(*j->mask))))
        return -ENOMEM;
    const uint32_t *m = pd_grammar_mask(s->grammar, &j->gs);
    if (!m)
        return -ENOMEM;
    if (!pd_mask_any(m, pd_engine_n_vocab(s->p.engine))) { /* the schema's checks should make this impossible; if not, this job fails
                 * alone: no mask, and its token is then refused (the sampler would refuse
                 * the whole step's) */
        j->why = "the response format allows no token here";
        return -EINVAL;
    }
    memcpy(j->mask, m, words * sizeof(*j->mask));
    j->sampling.mask = j->mask;
    return 0;
}

int dec_sched_grammar_take(struct dec_sched *s, struct dec_job *j, int32_t token)
{
    if (!s->grammar || pd_gstate_advance(s->grammar, &j->gs, token) < 0)
        return -EINVAL;
    return pd_gstate_done(&j->gs);
}
