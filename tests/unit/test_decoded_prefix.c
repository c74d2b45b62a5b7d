/* Prefix caching in decoded's scheduler on the tiny dummy model, no HTTP:
 * each scenario runs the same jobs, in the same waves, on a rig with the
 * cache on and on a reference rig with it off, and holds every job's
 * tokens and log-probabilities to the reference under DESIGN.md's "same
 * output" rule (near-ties from a solo run's real logits, reported where they
 * occur); the prefix cache's series say what was found: full blocks only,
 * never a prompt's last token, generated tokens' blocks too, nothing across
 * cache_salts, eviction under pressure, preemption with shared blocks, and
 * nothing at all with the cache off. */
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
 * each wave into snaps. */
static void run_waves(struct dec_rig *r, const struct scenario *sc, struct dec_out *out,
                      struct snap *snaps)
{
    struct pd_sampling sp = PD_SAMPLING_DEFAULT;
    sp.n_logprobs = 2;
    memset(out, 0, MAXJ * sizeof(*out));
    uint32_t i = 0;
    for (uint32_t w = 0; w < sc->n_waves; w++) {
        for (; i < sc->n_jobs && sc->job[i].wave == w; i++) {
            const struct spec *s = &sc->job[i];
            struct dec_job *j = dec_rig_job(s->prompt, s->n, s->max_tokens, &sp, &out[i], &out[i]);
            memcpy(j->salt, s->salt, sizeof(j->salt));
            CHECK_EQ_INT(dec_sched_submit(r->s, j), 0);
            dec_job_unref(j);
        }
        dec_rig_collect(r, i, record, NULL);
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
    dec_rig_up_prefix(&r, n_blocks, max_seqs, false);
    solo_refs(sc, r.m);
    run_waves(&r, sc, sc->off, sc->soff);
    dec_rig_down(&r);
    dec_rig_up_prefix(&r, n_blocks, max_seqs, true);
    run_waves(&r, sc, sc->on, sc->son);
    dec_rig_down(&r);
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
    run_waves(&r, &sc, sc.off, sc.soff);
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
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
