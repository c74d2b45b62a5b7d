#include "generate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_stop(const struct pd_gen_request *r, int32_t tok)
{
    for (uint32_t i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] == tok)
            return 1;
    return 0;
}

/* Sample request i's next token from logits and record it. 1 when it is done. */
static int take(struct pd_sampler *s, struct pd_gen_request *r, const float *logits)
{
    struct pd_sample_result res;
    pd_sample(s, &r->sampling, logits, r->prompt, r->n_prompt, r->tokens, r->n_tokens, &res);
    r->tokens[r->n_tokens] = res.token;
    if (r->results)
        r->results[r->n_tokens] = res;
    r->n_tokens++;
    if (is_stop(r, res.token))
        r->finish = PD_FINISH_STOP;
    else if (r->n_tokens >= r->max_tokens)
        r->finish = PD_FINISH_LENGTH;
    return r->finish != PD_FINISH_NONE;
}

int pd_generate(struct pd_engine *e, struct pd_gen_request *reqs, uint32_t n_reqs, char *err,
                size_t errlen)
{
    const uint32_t V = pd_engine_n_vocab(e);
    struct pd_kvseq *seqs = calloc(n_reqs ? n_reqs : 1, sizeof(*seqs));
    struct pd_batch_item *items = calloc(n_reqs ? n_reqs : 1, sizeof(*items));
    uint32_t *active = calloc(n_reqs ? n_reqs : 1, sizeof(*active));
    float *logits = malloc((size_t)(n_reqs ? n_reqs : 1) * V * sizeof(float));
    struct pd_sampler *s = pd_sampler_new(V);
    int rc = 0;

    if (!seqs || !items || !active || !logits || !s) {
        snprintf(err, errlen, "generate: out of memory");
        rc = -ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < n_reqs; i++) {
        struct pd_gen_request *r = &reqs[i];
        r->n_tokens = 0;
        r->finish = PD_FINISH_NONE;
        if (r->max_tokens == 0 || !r->tokens) {
            snprintf(err, errlen, "generate: request %u has no room for tokens (max_tokens)", i);
            rc = -EINVAL;
            goto out;
        }
        if ((rc = pd_sampling_validate(&r->sampling, V, err, errlen)) < 0)
            goto out;
        pd_kvseq_init(&seqs[i]);
    }
    /* prompts first; each yields its first token */
    uint32_t n_active = 0;
    for (uint32_t i = 0; i < n_reqs; i++) {
        if ((rc = pd_engine_prefill(e, &seqs[i], reqs[i].prompt, reqs[i].n_prompt, logits, err,
                                    errlen)) < 0)
            goto out;
        if (!take(s, &reqs[i], logits))
            active[n_active++] = i;
    }
    /* then one token for every unfinished request per step */
    while (n_active > 0) {
        for (uint32_t a = 0; a < n_active; a++) {
            struct pd_gen_request *r = &reqs[active[a]];
            items[a] = (struct pd_batch_item){.seq = &seqs[active[a]],
                                              .tokens = &r->tokens[r->n_tokens - 1],
                                              .n_tokens = 1, .n_logits = 1,
                                              .logits = logits + (size_t)a * V};
        }
        if ((rc = pd_engine_step(e, items, n_active, err, errlen)) < 0)
            goto out;
        uint32_t still = 0;
        for (uint32_t a = 0; a < n_active; a++)
            if (!take(s, &reqs[active[a]], logits + (size_t)a * V))
                active[still++] = active[a];
            else
                pd_engine_seq_release(e, &seqs[active[a]]);
        n_active = still;
    }
out:
    if (seqs)
        for (uint32_t i = 0; i < n_reqs; i++)
            pd_engine_seq_release(e, &seqs[i]);
    free(seqs);
    free(items);
    free(active);
    free(logits);
    pd_sampler_free(s);
    return rc;
}
