/* Prefix caching in decoded's scheduler on the tiny dummy model, no HTTP:
 * each scenario runs the same jobs, in the same waves, on a rig with the
 * cache on and on a reference rig with it off, and holds every job's
 * tokens and log-probabilities to the reference under DESIGN.md's "same
 * output" rule (near-ties from a solo run's real logits, reported where they
 * occur); the prefix cache's series say what was found: full blocks only,
 * never a prompt's last token, generated tokens' blocks too, nothing across
 * cache_salts, eviction under pressure, preemption with shared blocks, and
 * nothing at all with the cache off. Then n > 1: followers that fork their
 * leader's prompt blocks, each choice held to a single job of its seed. */
#include "dec_fixture.h"
#include "pd_test.h"

#include <math.h>

enum {
    BS = 16, /* the rig's block size (the engine's default) */
    MAXJ = 8, /* jobs in a scenario */
    MAXP = 200, /* tokens of a prompt */
    MAXT = 64, /* tokens generated per job */
};

/* logprobs of the cache's run within this (relative, and absolute near 0)
 * of the reference's */
#define LP_REL 1e-4
#define LP_ABS 1e-5

struct spec {
    int32_t prompt[MAXP];
    uint32_t n, max_tokens;
    uint32_t wave; /* a wave's jobs go in together once the wave before has finished */
    uint8_t salt[PD_PREFIX_HASH_LEN];
};

/* The prefix cache's series, read after a wave. */
struct snap {
    double q, hit, qb, hitb, blocks, evictions, preemptions;
};

struct scenario {
    struct spec job[MAXJ];
    uint32_t n_jobs, n_waves;
    /* hold the compute thread while each wave goes in, so that the wave
     * meets the scheduler whole (a job of one token per wave, which the
     * series count: one query token each) */
    bool hold;
    struct dec_out on[MAXJ], off[MAXJ];
    struct snap son[MAXJ], soff[MAXJ]; /* after each wave */
    int32_t solo[MAXJ][MAXT];
    int near_tie[MAXJ][MAXT];
};

/* A prompt of n tokens from a seed: seeds differ at token 0 (and after). */
static void fill(int32_t *p, uint32_t n, uint32_t seed)
{
    for (uint32_t k = 0; k < n; k++)
        p[k] = (int32_t)(((k + 1) * 2654435761u ^ (seed * 40503u + 7u)) % 251u);
}

static struct spec *add(struct scenario *sc, uint32_t wave, const int32_t *prompt, uint32_t n,
                        uint32_t max_tokens)
{
    CHECK(sc->n_jobs < MAXJ && n <= MAXP && max_tokens <= MAXT);
    struct spec *j = &sc->job[sc->n_jobs++];
    memcpy(j->prompt, prompt, n * sizeof(*prompt));
    j->n = n;
    j->max_tokens = max_tokens;
    j->wave = wave;
    if (wave + 1 > sc->n_waves)
        sc->n_waves = wave + 1;
    return j;
}

static void record(void *arg, const struct dec_event *e)
{
    (void)arg;
    dec_out_record(e->job->owner, e);
}

static struct snap read_snap(const struct dec_rig *r)
{
    const struct pd_prefix_metrics *pm = &r->pm;
    return (struct snap){pd_metric_value(pm->q_tokens), pd_metric_value(pm->hit_tokens),
                         pd_metric_value(pm->q_blocks), pd_metric_value(pm->hit_blocks),
                         pd_metric_value(pm->cached), pd_metric_value(pm->evictions),
                         pd_metric_value(r->sm.preemptions)};
}

/* Every job of sc on r, wave by wave (greedy), into out; the series after
 * each wave into snaps. With a watch, each wave goes in while the compute
 * thread is held (dec_pool_watch_hold). */
static void run_waves(struct dec_rig *r, struct dec_pool_watch *watch, const struct scenario *sc,
                      struct dec_out *out, struct snap *snaps)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    static struct dec_out held[MAXJ];
    uint32_t holds = 0;
    sp.n_logprobs = 2;
    memset(out, 0, MAXJ * sizeof(*out));
    memset(held, 0, sizeof(held));
    uint32_t i = 0;
    for (uint32_t w = 0; w < sc->n_waves; w++) {
        if (watch)
            dec_pool_watch_hold(r, watch, &held[holds++]);
        for (; i < sc->n_jobs && sc->job[i].wave == w; i++) {
            const struct spec *s = &sc->job[i];
            struct dec_job *j = dec_rig_job(s->prompt, s->n, s->max_tokens, &sp, &out[i], &out[i]);
            memcpy(j->salt, s->salt, sizeof(j->salt));
            CHECK_EQ_INT(dec_sched_submit(r->s, j), 0);
            dec_job_unref(j);
        }
        if (watch)
            dec_pool_watch_release(watch);
        dec_rig_collect(r, i + holds, record, NULL);
        snaps[w] = read_snap(r);
    }
    CHECK_EQ_INT(i, sc->n_jobs); /* waves in order, none empty */
}

/* The solo references (near-ties from their logits). */
static void solo_refs(struct scenario *sc, const struct pd_model *m)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    struct pd_engine *solo = fx_engine(m, 64u << 20, 64, 1);
    for (uint32_t i = 0; i < sc->n_jobs; i++)
        fx_solo_reference(solo, &sp, sc->job[i].prompt, sc->job[i].n, sc->job[i].max_tokens,
                          sc->solo[i], sc->near_tie[i], NULL);
    pd_engine_free(solo);
}

/* The scenario on a reference rig (cache off) and on a rig with the cache
 * on, both of n_blocks and max_seqs; the solo references. */
static void run_both(struct scenario *sc, uint32_t n_blocks, uint32_t max_seqs)
{
    struct dec_rig r;
    static struct dec_pool_watch w;
    for (int on = 0; on < 2; on++) {
        if (sc->hold)
            dec_rig_up_watch(&r, n_blocks, max_seqs, on, &w, UINT32_MAX);
        else
            dec_rig_up_prefix(&r, n_blocks, max_seqs, on);
        if (!on)
            solo_refs(sc, r.m);
        run_waves(&r, sc->hold ? &w : NULL, sc, on ? sc->on : sc->off, on ? sc->son : sc->soff);
        dec_rig_down(&r);
    }
}

static bool lp_close(float a, float b)
{
    return fabsf(a - b) <= LP_REL * fabsf(b) + LP_ABS;
}

/* got (the cache's run) against ref (the cache off), both against the solo
 * run, up to each job's first near-tie; returns tokens compared. */
static uint32_t compare(const struct scenario *sc, const struct dec_out *got,
                        const struct dec_out *ref)
{
    uint32_t compared = 0, identical = 0;
    float worst = 0;
    for (uint32_t i = 0; i < sc->n_jobs; i++) {
        const uint32_t mt = sc->job[i].max_tokens;
        CHECK_EQ_INT(ref[i].fin, DEC_FIN_LENGTH);
        if (got[i].fin != DEC_FIN_LENGTH)
            PD_TEST_FAIL_("job %u: finish %d (want LENGTH %d), status %d: \"%s\"", i, got[i].fin,
                          DEC_FIN_LENGTH, got[i].status, got[i].err);
        CHECK_EQ_INT(ref[i].n, mt);
        CHECK_EQ_INT(got[i].n, mt); /* each token once */
        for (uint32_t k = 0; k < mt; k++) {
            if (sc->near_tie[i][k]) {
                printf("  job %u: near-tie at generated position %u; compared up to there\n", i,
                       k);
                break;
            }
            if (ref[i].tok[k] != sc->solo[i][k])
                PD_TEST_FAIL_("job %u position %u: reference %d, solo %d", i, k, ref[i].tok[k],
                              sc->solo[i][k]);
            if (got[i].tok[k] != ref[i].tok[k])
                PD_TEST_FAIL_("job %u position %u: with the cache %d, without %d", i, k,
                              got[i].tok[k], ref[i].tok[k]);
            if (!lp_close(got[i].logprob[k], ref[i].logprob[k]))
                PD_TEST_FAIL_("job %u position %u: logprob with the cache %.9g, without %.9g", i,
                              k, got[i].logprob[k], ref[i].logprob[k]);
            float d = fabsf(got[i].logprob[k] - ref[i].logprob[k]);
            worst = d > worst ? d : worst;
            identical += got[i].logprob[k] == ref[i].logprob[k];
            compared++;
        }
    }
    printf("  %u tokens compared, %u logprobs bit-identical, largest difference %.3g\n", compared,
           identical, worst);
    return compared;
}

/* Both runs against each other and the solo run; at least half the tokens
 * compared (near-ties aside). */
static void outputs_equal(const struct scenario *sc)
{
    uint32_t total = 0;
    for (uint32_t i = 0; i < sc->n_jobs; i++)
        total += sc->job[i].max_tokens;
    CHECK(compare(sc, sc->on, sc->off) >= total / 2);
}

/* The reference never touches the cache. */
static void reference_quiet(const struct scenario *sc)
{
    const struct snap *s = &sc->soff[sc->n_waves - 1];
    CHECK(s->q == 0 && s->hit == 0 && s->qb == 0 && s->hitb == 0 && s->blocks == 0 &&
          s->evictions == 0);
}

static void print_snaps(const struct scenario *sc)
{
    for (uint32_t w = 0; w < sc->n_waves; w++) {
        const struct snap *s = &sc->son[w];
        printf("  wave %u: queries %.0f hits %.0f block queries %.0f block hits %.0f cached %.0f "
               "evictions %.0f preemptions %.0f\n", w, s->q, s->hit, s->qb, s->hitb, s->blocks,
               s->evictions, s->preemptions);
    }
    for (uint32_t i = 0; i < sc->n_jobs; i++)
        if (sc->on[i].fin != DEC_FIN_LENGTH)
            printf("  job %u (wave %u) with the cache: finish %d, \"%s\"\n", i, sc->job[i].wave,
                   sc->on[i].fin, sc->on[i].err);
}

/* ---- tests ---- */

static void prefix_no_shared_block_no_hits(void)
{
    static struct scenario sc;
    int32_t a[48], b[48];
    memset(&sc, 0, sizeof(sc));
    fill(a, 48, 1);
    fill(b, 48, 2);
    CHECK(a[0] != b[0]);
    add(&sc, 0, a, 48, 16);
    add(&sc, 1, b, 48, 16);
    run_both(&sc, 64, 4);
    print_snaps(&sc);
    const struct snap *s = &sc.son[1];
    CHECK(s->q == 96 && s->qb == 2 * (47 / BS)); /* both looked up */
    CHECK(s->hit == 0 && s->hitb == 0);
    outputs_equal(&sc);
    reference_quiet(&sc);
}

static void prefix_one_shared_block_hits_16_tokens(void)
{
    static struct scenario sc;
    int32_t a[40], b[40];
    memset(&sc, 0, sizeof(sc));
    fill(a, 40, 3);
    fill(b, 40, 4);
    memcpy(b, a, BS * sizeof(*a)); /* block 0 alike; token 16 on differs */
    CHECK(a[BS] != b[BS]);
    add(&sc, 0, a, 40, 24);
    add(&sc, 1, b, 40, 24);
    run_both(&sc, 64, 4);
    print_snaps(&sc);
    CHECK(sc.son[0].hit == 0 && sc.son[0].hitb == 0); /* cold */
    CHECK(sc.son[1].hit - sc.son[0].hit == BS);
    CHECK(sc.son[1].hitb - sc.son[0].hitb == 1);
    CHECK(sc.son[1].qb - sc.son[0].qb == 39 / BS);
    outputs_equal(&sc);
    reference_quiet(&sc);
}

static void prefix_many_blocks_and_mid_block_hits_full_blocks_only(void)
{
    static struct scenario sc;
    int32_t a[100], b[100];
    memset(&sc, 0, sizeof(sc));
    fill(a, 100, 5);
    fill(b, 100, 6);
    memcpy(b, a, (5 * BS + 7) * sizeof(*a)); /* 5 blocks and 7 tokens alike */
    CHECK(a[5 * BS + 7] != b[5 * BS + 7]);
    add(&sc, 0, a, 100, 24);
    add(&sc, 1, b, 100, 24);
    run_both(&sc, 64, 4);
    print_snaps(&sc);
    CHECK(sc.son[1].hit - sc.son[0].hit == 5 * BS);
    CHECK(sc.son[1].hitb - sc.son[0].hitb == 5);
    CHECK(sc.son[1].q - sc.son[0].q == 100);
    CHECK(sc.son[1].qb - sc.son[0].qb == 99 / BS);
    outputs_equal(&sc);
    reference_quiet(&sc);
}

static void prefix_identical_aligned_prompt_computes_last_block(void)
{
    static struct scenario sc;
    int32_t a[64];
    memset(&sc, 0, sizeof(sc));
    fill(a, 64, 7);
    add(&sc, 0, a, 64, 24);
    add(&sc, 1, a, 64, 24);
    run_both(&sc, 64, 4);
    print_snaps(&sc);
    /* 4 full blocks, but the last token's logits are needed: 3 mapped */
    CHECK(sc.son[1].qb - sc.son[0].qb == 3);
    CHECK(sc.son[1].hitb - sc.son[0].hitb == 3);
    CHECK(sc.son[1].hit - sc.son[0].hit == 3 * BS);
    outputs_equal(&sc);
    reference_quiet(&sc);
}

static void prefix_multi_turn_hits_generated_blocks(void)
{
    static struct scenario sc;
    enum { N1 = 40, T1 = 30, NEW = 10, N2 = N1 + T1 + NEW };
    int32_t a[N1], b[N2], seq1[N1 + T1];
    int nt[T1];
    memset(&sc, 0, sizeof(sc));
    fill(a, N1, 8);
    fill(b + N1 + T1, NEW, 9);
    /* turn 2: turn 1's prompt, its answer (the solo run's) and new tokens */
    struct pd_model *m = fx_dummy_model("tiny", 5);
    struct pd_engine *solo = fx_engine(m, 64u << 20, 64, 1);
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    memcpy(b, a, sizeof(a));
    fx_solo_reference(solo, &sp, a, N1, T1, b + N1, nt, NULL);
    pd_engine_free(solo);
    pd_model_free(m);
    add(&sc, 0, a, N1, T1);
    add(&sc, 1, b, N2, 24);
    run_both(&sc, 64, 4);
    print_snaps(&sc);
    /* turn 1 holds K/V of all but its last token: its full blocks are
     * cached; turn 2 finds those that its prompt repeats */
    memcpy(seq1, a, sizeof(a));
    memcpy(seq1 + N1, sc.on[0].tok, T1 * sizeof(int32_t));
    uint32_t expect = 0;
    while (expect < (N1 + T1 - 1) / BS && expect < (N2 - 1) / BS &&
           memcmp(seq1 + expect * BS, b + expect * BS, BS * sizeof(int32_t)) == 0)
        expect++;
    printf("  turn 2 should find %u blocks (%u of them turn 1's prompt only)\n", expect, N1 / BS);
    CHECK(expect > N1 / BS); /* else a near-tie in turn 1 changed its answer */
    CHECK(sc.son[1].hitb - sc.son[0].hitb == expect);
    CHECK(sc.son[1].hit - sc.son[0].hit == expect * BS);
    CHECK(sc.son[1].q - sc.son[0].q == N2);
    outputs_equal(&sc);
    reference_quiet(&sc);
}

/* 12 blocks: A's cached blocks must make room for B and C (each needs 8
 * blocks); A again then finds little or nothing of its own. */
static void prefix_eviction_under_pressure_keeps_outputs(void)
{
    static struct scenario sc;
    int32_t a[88], b[120], c[120];
    memset(&sc, 0, sizeof(sc));
    fill(a, 88, 10);
    fill(b, 120, 11);
    fill(c, 120, 12);
    add(&sc, 0, a, 88, 8); /* 95 tokens of K/V: 5 blocks cached */
    add(&sc, 1, b, 120, 8); /* 8 blocks; 7 are free */
    add(&sc, 2, c, 120, 8);
    add(&sc, 3, a, 88, 8);
    run_both(&sc, 12, 1);
    print_snaps(&sc);
    outputs_equal(&sc);
    CHECK(sc.son[0].blocks == 5);
    CHECK(sc.son[3].evictions > 0);
    /* A's blocks, released first, were the first evicted */
    CHECK(sc.son[3].hitb - sc.son[2].hitb < 5);
    reference_quiet(&sc);
}

/* A warm-up job caches a 2-block prefix; then 4 jobs that start with it
 * and generate 60 tokens each (7 blocks, 5 their own) share 16 blocks. */
static void prefix_preemption_with_shared_blocks_keeps_outputs(void)
{
    static struct scenario sc;
    enum { NJ = 4, NP = 40, T = 60 };
    int32_t w[NP], p[NP];
    memset(&sc, 0, sizeof(sc));
    fill(w, NP, 20);
    add(&sc, 0, w, NP, 4);
    for (uint32_t i = 0; i < NJ; i++) {
        memcpy(p, w, 2 * BS * sizeof(int32_t));
        fill(p + 2 * BS, NP - 2 * BS, 21 + i);
        add(&sc, 1, p, NP, T);
    }
    sc.hold = true; /* the four together, or the first may finish before the last comes */
    run_both(&sc, 16, NJ);
    print_snaps(&sc);
    CHECK(sc.son[1].preemptions > 0);
    CHECK(sc.soff[1].preemptions > 0);
    /* each of the four found the warm-up's two blocks at least once */
    CHECK(sc.son[1].hitb - sc.son[0].hitb >= 2 * NJ);
    outputs_equal(&sc);
    reference_quiet(&sc);
}

static void prefix_cache_salt_isolates(void)
{
    static struct scenario sc;
    int32_t a[40];
    memset(&sc, 0, sizeof(sc));
    fill(a, 40, 30);
    pd_prefix_salt("tenant-a", 8, add(&sc, 0, a, 40, 16)->salt);
    pd_prefix_salt("tenant-b", 8, add(&sc, 1, a, 40, 16)->salt);
    add(&sc, 2, a, 40, 16); /* no salt */
    pd_prefix_salt("tenant-a", 8, add(&sc, 3, a, 40, 16)->salt);
    run_both(&sc, 64, 4);
    print_snaps(&sc);
    CHECK(sc.son[2].qb == 3 * (39 / BS)); /* each looked up */
    CHECK(sc.son[2].hit == 0 && sc.son[2].hitb == 0); /* nothing across salts */
    CHECK(sc.son[3].hitb - sc.son[2].hitb == 39 / BS); /* the same salt finds its blocks */
    CHECK(sc.son[3].hit - sc.son[2].hit == (39 / BS) * BS);
    outputs_equal(&sc);
    reference_quiet(&sc);
}

/* The reference rig itself: identical prompts twice, the series at zero. */
static void prefix_cache_off_never_looks_up(void)
{
    static struct scenario sc;
    int32_t a[64];
    memset(&sc, 0, sizeof(sc));
    fill(a, 64, 40);
    add(&sc, 0, a, 64, 16);
    add(&sc, 1, a, 64, 16);
    struct dec_rig r;
    dec_rig_up_prefix(&r, 64, 4, false);
    solo_refs(&sc, r.m);
    run_waves(&r, NULL, &sc, sc.off, sc.soff);
    char *text;
    size_t len;
    CHECK_EQ_INT(pd_metrics_render(r.reg, &text, &len), 0);
    bool shown = strstr(text, "pdserve:prefix_cache_queries_total 0") &&
                 strstr(text, "pdserve:prefix_cache_hits_total 0") &&
                 strstr(text, "pdserve:prefix_cache_blocks 0") &&
                 strstr(text, "pdserve:prefix_cache_evictions_total 0");
    free(text);
    CHECK(shown); /* registered, and never moved */
    dec_rig_down(&r); /* and nothing in the index */
    reference_quiet(&sc);
    /* the outputs against the solo runs (the reference is its own twin) */
    compare(&sc, sc.off, sc.off);
}

/* ---- n > 1: followers fork their leader's prompt KV ---- */

/* One prompt, n choices as decoded's loop submits them (server.c
 * choice_job): the leader (choice 0, seed S) first, then the followers
 * (choice k, seed S + k, a reference on the leader). Each choice is held to
 * a single job of its seed run alone on a fresh rig (the prefix cache off),
 * and both to the solo run of that seed, under the "same output" rule. */
enum { N_SEED = 1234 };

struct choices {
    struct scenario sc; /* job[k]: choice k's prompt and max_tokens; on[k]: its output; solo
                         * and near_tie with seed S + k */
    uint32_t n; /* choices */
    struct pd_sampling sp; /* choice 0's (seed S) */
    struct dec_job *job[MAXJ]; /* submitted, one reference each (choices_drop) */
    struct dec_out single[MAXJ];
    struct dec_out gate; /* dec_pool_watch_hold's job */
};

static struct pd_sampling choice_sampling(const struct choices *c, uint32_t k)
{
    struct pd_sampling sp = c->sp;
    sp.seed += k;
    return sp;
}

/* n choices of a prompt of n_prompt tokens (from fill's seed), the leader
 * max_tokens lead_max, the followers max_tokens; sampled at temperature 0.9. */
static void choices_init(struct choices *c, uint32_t n_prompt, uint32_t fill_seed, uint32_t n,
                         uint32_t lead_max, uint32_t max_tokens)
{
    int32_t p[MAXP];
    memset(c, 0, sizeof(*c));
    CHECK(n <= MAXJ);
    fill(p, n_prompt, fill_seed);
    c->n = n;
    for (uint32_t k = 0; k < n; k++)
        add(&c->sc, 0, p, n_prompt, k ? max_tokens : lead_max);
    c->sp = PD_SAMPLING_DEFAULT;
    c->sp.temperature = 0.9f;
    c->sp.seed = N_SEED;
    c->sp.n_logprobs = 2;
}

/* The solo run of each choice's seed (the near-ties from its logits), and
 * each choice as a single job alone on a fresh rig (cache off). */
static void choices_refs(struct choices *c)
{
    struct scenario *sc = &c->sc;
    struct pd_model *m = fx_dummy_model("tiny", 5);
    struct pd_engine *solo = fx_engine(m, 64u << 20, 64, 1);
    for (uint32_t k = 0; k < c->n; k++) {
        struct pd_sampling sp = choice_sampling(c, k);
        fx_solo_reference(solo, &sp, sc->job[k].prompt, sc->job[k].n, sc->job[k].max_tokens,
                          sc->solo[k], sc->near_tie[k], NULL);
    }
    pd_engine_free(solo);
    pd_model_free(m);
    memset(c->single, 0, sizeof(c->single));
    for (uint32_t k = 0; k < c->n; k++) {
        struct dec_rig r;
        struct pd_sampling sp = choice_sampling(c, k);
        dec_rig_up_prefix(&r, 64, 4, false);
        struct dec_job *j = dec_rig_job(sc->job[k].prompt, sc->job[k].n, sc->job[k].max_tokens,
                                        &sp, &c->single[k], &c->single[k]);
        CHECK_EQ_INT(dec_sched_submit(r.s, j), 0);
        dec_job_unref(j);
        dec_rig_collect(&r, 1, record, NULL);
        dec_rig_down(&r);
    }
}

/* The leader, then its followers, on r; their outputs into sc.on. With a
 * watch w, all of them while its gate holds the compute thread (one more
 * job to collect): the followers are queued behind their leader before it
 * is admitted, whatever the machine's speed. */
static void choices_submit(struct dec_rig *r, struct choices *c, struct dec_pool_watch *w)
{
    struct scenario *sc = &c->sc;
    memset(sc->on, 0, sizeof(sc->on));
    memset(&c->gate, 0, sizeof(c->gate));
    if (w)
        dec_pool_watch_hold(r, w, &c->gate);
    c->job[0] = dec_rig_job(sc->job[0].prompt, sc->job[0].n, sc->job[0].max_tokens, &c->sp,
                            &sc->on[0], &sc->on[0]);
    CHECK_EQ_INT(dec_sched_submit(r->s, c->job[0]), 0);
    for (uint32_t k = 1; k < c->n; k++) {
        c->job[k] = dec_rig_follower(c->job[0], k, sc->job[k].max_tokens, &sc->on[k],
                                     &sc->on[k]);
        CHECK_EQ_INT(c->job[k]->sampling.seed, N_SEED + k);
        CHECK_EQ_INT(dec_sched_submit(r->s, c->job[k]), 0);
    }
    if (w)
        dec_pool_watch_release(w);
}

static void choices_drop(struct choices *c)
{
    for (uint32_t k = 0; k < c->n; k++) {
        dec_job_unref(c->job[k]);
        c->job[k] = NULL;
    }
}

/* Choice k's output against its single job, and that against the solo run,
 * up to the first near-tie; returns tokens compared. */
static uint32_t choice_equal(const struct choices *c, uint32_t k, const struct dec_out *got)
{
    const struct scenario *sc = &c->sc;
    const struct dec_out *ref = &c->single[k];
    const uint32_t mt = sc->job[k].max_tokens;
    uint32_t compared = 0;
    CHECK_EQ_INT(ref->fin, DEC_FIN_LENGTH);
    CHECK_EQ_INT(ref->n, mt);
    if (got->fin != DEC_FIN_LENGTH)
        PD_TEST_FAIL_("choice %u: finish %d (want LENGTH %d), status %d: \"%s\"", k, got->fin,
                      DEC_FIN_LENGTH, got->status, got->err);
    CHECK_EQ_INT(got->n, mt); /* each token once */
    for (uint32_t i = 0; i < mt; i++) {
        if (sc->near_tie[k][i]) {
            printf("  choice %u: near-tie at generated position %u; compared up to there\n", k,
                   i);
            break;
        }
        if (ref->tok[i] != sc->solo[k][i])
            PD_TEST_FAIL_("choice %u position %u: single job %d, solo %d", k, i, ref->tok[i],
                          sc->solo[k][i]);
        if (got->tok[i] != ref->tok[i])
            PD_TEST_FAIL_("choice %u position %u: with its leader %d, single job %d", k, i,
                          got->tok[i], ref->tok[i]);
        if (!lp_close(got->logprob[i], ref->logprob[i]))
            PD_TEST_FAIL_("choice %u position %u: logprob with its leader %.9g, single job "
                          "%.9g", k, i, got->logprob[i], ref->logprob[i]);
        compared++;
    }
    return compared;
}

/* Every choice not in skip (bit k: choice k) against its single job; at
 * least half their tokens compared (near-ties aside). */
static void choices_equal(const struct choices *c, const struct dec_out *got, uint32_t skip)
{
    uint32_t total = 0, compared = 0, identical = 0;
    float worst = 0;
    for (uint32_t k = 0; k < c->n; k++) {
        if (skip & (1u << k))
            continue;
        uint32_t m = choice_equal(c, k, &got[k]);
        for (uint32_t i = 0; i < m; i++) {
            float d = fabsf(got[k].logprob[i] - c->single[k].logprob[i]);
            worst = d > worst ? d : worst;
            identical += got[k].logprob[i] == c->single[k].logprob[i];
        }
        compared += m;
        total += c->sc.job[k].max_tokens;
    }
    printf("  %u tokens compared, %u logprobs bit-identical, largest difference %.3g\n", compared,
           identical, worst);
    CHECK(compared >= total / 2);
}

/* Seeds S + k do make different choices: a follower that took its leader's
 * first token (or stream) would show it here too. */
static void choices_differ(const struct choices *c)
{
    uint32_t differ = 0;
    for (uint32_t k = 1; k < c->n; k++)
        differ += memcmp(c->single[k].tok, c->single[0].tok,
                         c->single[k].n * sizeof(int32_t)) != 0;
    printf("  %u of %u followers' single jobs differ from the leader's\n", differ, c->n - 1);
    CHECK(differ > 0);
}

/* record, and the most times each choice of c (arg) was preempted. */
static uint32_t choice_preempted[MAXJ];
static void record_preempted(void *arg, const struct dec_event *e)
{
    const struct choices *c = arg;
    const struct dec_out *o = e->job->owner;
    if (o >= c->sc.on && o < c->sc.on + MAXJ && e->n_preempted > choice_preempted[o - c->sc.on])
        choice_preempted[o - c->sc.on] = e->n_preempted;
    record(NULL, e);
}

/* Pumps until every follower has its first token (the fork is done). */
static void choices_wait_followers(struct dec_rig *r, const struct choices *c)
{
    uint64_t deadline = fx_deadline(60);
    for (;;) {
        dec_rig_pump(r, record, NULL);
        uint32_t k = 1;
        while (k < c->n && (c->sc.on[k].n > 0 || c->sc.on[k].done))
            k++;
        if (k == c->n)
            return;
        fx_poll(deadline);
    }
}

static void followers_equal_single_jobs_with_their_seeds(void)
{
    static struct choices c;
    struct dec_rig r;
    static struct dec_pool_watch w;
    choices_init(&c, 70, 56, 4, 24, 24);
    choices_refs(&c);
    choices_differ(&c);
    dec_rig_up_watch(&r, 64, 4, false, &w, 4);
    choices_submit(&r, &c, &w);
    dec_rig_collect(&r, c.n + 1, record, NULL);
    dec_rig_down(&r);
    choices_drop(&c);
    CHECK_EQ_INT(atomic_load(&w.at_target), 8); /* they forked (see the next test) */
    choices_equal(&c, c.sc.on, 0);
}

/* 70 tokens: blocks 0-3 full, block 4 partial (64-69). A follower forks
 * positions [0, 69): blocks 0-4, and copies block 4 to write position 69.
 * Admitted together: 4 blocks shared + 4 blocks 4 = 8, not 4 x 5 = 20; at
 * most 4 + 4 x 2 = 12 once each has grown into block 5 (position 80; 94
 * tokens of K/V at most), not 4 x 6 = 24. */
static void followers_share_the_leaders_prompt_blocks(void)
{
    static struct choices c;
    static struct dec_pool_watch w;
    struct dec_rig r;
    choices_init(&c, 70, 63, 4, 24, 24);
    dec_rig_up_watch(&r, 64, 4, false, &w, 4);
    choices_submit(&r, &c, &w);
    dec_rig_collect(&r, c.n + 1, record, NULL);
    double prompt = pd_metric_value(r.sm.prompt_tokens) - 1; /* the gate's one token */
    dec_rig_down(&r);
    choices_drop(&c);
    printf("  blocks in use: %u when all 4 ran (unshared: %u), %u at most (unshared: %u); "
           "prompt tokens %.0f\n", atomic_load(&w.at_target), 4 * 5, atomic_load(&w.peak),
           4 * 6, prompt);
    for (uint32_t k = 0; k < c.n; k++)
        CHECK_EQ_INT(c.sc.on[k].fin, DEC_FIN_LENGTH);
    CHECK_EQ_INT(atomic_load(&w.at_target), 4 + 4);
    CHECK(atomic_load(&w.peak) <= 4 + 4 * 2);
    CHECK(prompt == 70); /* the prompt once, not 4 times */
}

/* 64 tokens: the leader's prefill fills blocks 0-3 exactly. A follower
 * forks positions [0, 63): the same 4 blocks, the last partial from its
 * view, and copies block 3 to write position 63. Admitted together: the
 * leader's 5 (its first decode in block 4), blocks 0-2 shared, 3 copies. */
static void block_aligned_prompt_fork(void)
{
    static struct choices c;
    static struct dec_pool_watch w;
    struct dec_rig r;
    choices_init(&c, 64, 52, 4, 24, 24);
    choices_refs(&c);
    dec_rig_up_watch(&r, 64, 4, false, &w, 4);
    choices_submit(&r, &c, &w);
    dec_rig_collect(&r, c.n + 1, record, NULL);
    dec_rig_down(&r);
    choices_drop(&c);
    printf("  blocks in use when all 4 ran: %u\n", atomic_load(&w.at_target));
    choices_equal(&c, c.sc.on, 0);
    CHECK_EQ_INT(atomic_load(&w.at_target), 5 + 3);
}

/* One sequence at a time: each follower is admitted only after the one
 * before has ended, the leader first (1 token, as a stop would end it):
 * nothing left to fork, each prefills on its own. */
static void leader_finished_before_follower_forks(void)
{
    static struct choices c;
    struct dec_rig r;
    choices_init(&c, 70, 66, 4, 1, 24);
    choices_refs(&c);
    dec_rig_up_prefix(&r, 64, 1, false);
    choices_submit(&r, &c, NULL);
    dec_rig_collect(&r, c.n, record, NULL);
    double prompt = pd_metric_value(r.sm.prompt_tokens);
    dec_rig_down(&r);
    choices_drop(&c);
    printf("  prompt tokens %.0f\n", prompt);
    choices_equal(&c, c.sc.on, 0);
}

/* The leader cancelled right after submission, before the compute thread
 * sees any of them (the gate holds it): it ends in the queue, and the
 * followers waiting for its prompt prefill on their own and finish as
 * single jobs; every block comes back. */
static void cancelling_the_leader_does_not_strand_followers(void)
{
    static struct choices c;
    static struct dec_pool_watch w;
    struct dec_rig r;
    choices_init(&c, 70, 68, 4, MAXT, 24);
    choices_refs(&c);
    dec_rig_up_watch(&r, 64, 4, false, &w, 3);
    dec_pool_watch_hold(&r, &w, &c.gate);
    choices_submit(&r, &c, NULL);
    dec_job_cancel(c.job[0]);
    dec_pool_watch_release(&w);
    dec_rig_collect(&r, c.n + 1, record, NULL);
    double prompt = pd_metric_value(r.sm.prompt_tokens) - 1;
    dec_rig_down(&r);
    choices_drop(&c);
    printf("  leader: finish %d after %u tokens; blocks when 3 ran %u; prompt tokens %.0f\n",
           c.sc.on[0].fin, c.sc.on[0].n, atomic_load(&w.at_target), prompt);
    CHECK_EQ_INT(c.sc.on[0].fin, DEC_FIN_CANCELLED);
    CHECK_EQ_INT(c.sc.on[0].n, 0);
    choices_equal(&c, c.sc.on, 1u);
}

/* The leader cancelled once every follower has forked (its first token
 * out): its blocks are released while the followers still hold the shared
 * prompt blocks, which must stay theirs. */
static void cancelling_the_leader_after_the_fork_keeps_followers(void)
{
    static struct choices c;
    static struct dec_pool_watch w;
    struct dec_rig r;
    choices_init(&c, 70, 71, 4, MAXT, 40);
    choices_refs(&c);
    dec_rig_up_watch(&r, 64, 4, false, &w, 4);
    choices_submit(&r, &c, &w);
    choices_wait_followers(&r, &c);
    dec_job_cancel(c.job[0]);
    dec_rig_collect(&r, c.n + 1, record, NULL);
    dec_rig_down(&r);
    choices_drop(&c);
    printf("  leader: finish %d after %u tokens; blocks when all 4 ran %u\n", c.sc.on[0].fin,
           c.sc.on[0].n, atomic_load(&w.at_target));
    CHECK_EQ_INT(atomic_load(&w.at_target), 8); /* they did fork */
    CHECK(c.sc.on[0].fin == DEC_FIN_CANCELLED || c.sc.on[0].fin == DEC_FIN_LENGTH);
    choices_equal(&c, c.sc.on, c.sc.on[0].fin == DEC_FIN_CANCELLED ? 1u : 0u);
}

/* The leader and two followers cancelled after the fork: those end
 * cancelled, the last follower finishes as its single job, and every block
 * (shared, copied, grown) comes back. */
static void cancelling_leader_and_followers_returns_every_block(void)
{
    static struct choices c;
    static struct dec_pool_watch w;
    struct dec_rig r;
    choices_init(&c, 70, 72, 4, MAXT, 40);
    choices_refs(&c);
    dec_rig_up_watch(&r, 64, 4, false, &w, 4);
    choices_submit(&r, &c, &w);
    choices_wait_followers(&r, &c);
    for (uint32_t k = 0; k < 3; k++)
        dec_job_cancel(c.job[k]);
    dec_rig_collect(&r, c.n + 1, record, NULL);
    dec_rig_down(&r); /* every block back */
    choices_drop(&c);
    uint32_t skip = 0;
    for (uint32_t k = 0; k < 3; k++) {
        printf("  choice %u: finish %d after %u tokens\n", k, c.sc.on[k].fin, c.sc.on[k].n);
        CHECK(c.sc.on[k].fin == DEC_FIN_CANCELLED || c.sc.on[k].fin == DEC_FIN_LENGTH);
        skip |= (c.sc.on[k].fin == DEC_FIN_CANCELLED) << k;
    }
    CHECK(skip != 0);
    CHECK_EQ_INT(atomic_load(&w.at_target), 8); /* they forked */
    choices_equal(&c, c.sc.on, skip);
}

/* 16 blocks: 4 choices of 70 + 60 tokens need 4 + 4 x 5 = 24 even shared
 * (9 blocks alone): the newest are preempted while they share the leader's
 * blocks, and recompute (prompt + output) on their own when readmitted. */
static void preemption_with_forked_blocks(void)
{
    static struct choices c;
    static struct dec_pool_watch w;
    struct dec_rig r;
    choices_init(&c, 70, 73, 4, 60, 60);
    choices_refs(&c);
    dec_rig_up_watch(&r, 16, 4, false, &w, 4);
    memset(choice_preempted, 0, sizeof(choice_preempted));
    choices_submit(&r, &c, &w);
    dec_rig_collect(&r, c.n + 1, record_preempted, &c);
    double preemptions = pd_metric_value(r.sm.preemptions);
    dec_rig_down(&r);
    choices_drop(&c);
    printf("  preemptions %.0f (choices: %u %u %u %u); blocks when all 4 ran %u, at most %u of "
           "16\n", preemptions, choice_preempted[0], choice_preempted[1], choice_preempted[2],
           choice_preempted[3], atomic_load(&w.at_target), atomic_load(&w.peak));
    CHECK(preemptions > 0);
    /* the newest go first: the leader runs on, its prompt blocks still
     * shared with the followers that are not preempted */
    CHECK_EQ_INT(choice_preempted[0], 0);
    CHECK(choice_preempted[3] > 0);
    CHECK_EQ_INT(atomic_load(&w.at_target), 8); /* they forked before the pool ran short */
    choices_equal(&c, c.sc.on, 0);
}

/* The prefix cache on: the same request twice. The first forks as with the
 * cache off (publishing the leader's blocks and the followers' own); the
 * second's leader finds the prompt's full blocks cached and its followers
 * fork from it. Both equal the single jobs. */
static void followers_with_the_prefix_cache_equal_single_jobs(void)
{
    static struct choices c;
    static struct dec_out first[MAXJ];
    static struct dec_pool_watch w;
    struct dec_rig r;
    choices_init(&c, 70, 77, 4, 24, 24);
    choices_refs(&c);
    dec_rig_up_watch(&r, 64, 4, true, &w, 4);
    choices_submit(&r, &c, &w);
    dec_rig_collect(&r, c.n + 1, record, NULL);
    struct snap s0 = read_snap(&r);
    memcpy(first, c.sc.on, sizeof(first));
    choices_drop(&c);
    choices_submit(&r, &c, &w);
    dec_rig_collect(&r, 2 * (c.n + 1), record, NULL);
    struct snap s1 = read_snap(&r);
    dec_rig_down(&r);
    choices_drop(&c);
    printf("  request 1: block queries %.0f hits %.0f cached %.0f; request 2: block queries "
           "%.0f hits %.0f cached %.0f\n", s0.qb, s0.hitb, s0.blocks, s1.qb, s1.hitb, s1.blocks);
    choices_equal(&c, first, 0);
    choices_equal(&c, c.sc.on, 0);
    /* only the leaders look up (the gate's one token never does): the
     * followers forked, the second leader found the prompt's full blocks */
    CHECK(s0.qb == 69 / BS && s0.hitb == 0);
    CHECK(s1.qb - s0.qb == 69 / BS && s1.hitb - s0.hitb == 69 / BS);
}

static const struct pd_test tests[] = {
    PD_TEST(prefix_no_shared_block_no_hits),
    PD_TEST(prefix_one_shared_block_hits_16_tokens),
    PD_TEST(prefix_many_blocks_and_mid_block_hits_full_blocks_only),
    PD_TEST(prefix_identical_aligned_prompt_computes_last_block),
    PD_TEST(prefix_multi_turn_hits_generated_blocks),
    PD_TEST(prefix_eviction_under_pressure_keeps_outputs),
    PD_TEST(prefix_preemption_with_shared_blocks_keeps_outputs),
    PD_TEST(prefix_cache_salt_isolates),
    PD_TEST(prefix_cache_off_never_looks_up),
    PD_TEST(followers_equal_single_jobs_with_their_seeds),
    PD_TEST(followers_share_the_leaders_prompt_blocks),
    PD_TEST(block_aligned_prompt_fork),
    PD_TEST(leader_finished_before_follower_forks),
    PD_TEST(cancelling_the_leader_does_not_strand_followers),
    PD_TEST(cancelling_the_leader_after_the_fork_keeps_followers),
    PD_TEST(cancelling_leader_and_followers_returns_every_block),
    PD_TEST(preemption_with_forked_blocks),
    PD_TEST(followers_with_the_prefix_cache_equal_single_jobs),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
