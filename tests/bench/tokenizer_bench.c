/* tokenizer_bench: encode throughput of common/text/tokenizer on a text file, one
 * line per encode call (the unit transformers' encode_batch gets from
 * tests/bench/tokenizer_bench.py, which runs both side by side and prints the
 * ratio). A timing never decides a test.
 *
 *   build/tests/bench/tokenizer_bench MODEL.gguf FILE [--threads 2] [--repeat 5]
 *   build/tests/bench/tokenizer_bench MODEL.gguf --ids-in PROBES --ids-out IDS
 *
 * Prints bytes, lines, tokens, the median wall time of --repeat runs, MB/s
 * (10^6 bytes), and a digest of all ids in order (see encode_part), which
 * the script compares with the reference's. --threads N splits the lines into N
 * contiguous parts encoded at once (the tokenizer is shared, read-only).
 *
 * --ids-in/--ids-out: encode each length-prefixed string (u32 little-endian
 * length, bytes) and write its ids as one text line (used by
 * tests/golden/check_tokenizer_unicode.py).
 */
#include "bench_util.h"
#include "cfg.h"
#include "gguf.h"
#include "tokenizer.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bench_cfg {
    int64_t threads;
    int64_t repeat;
    bool declared_pre;
    bool parse_special;
    char *ids_in;
    char *ids_out;
};

static const struct pd_cfg_opt options[] = {
    PD_CFG_INT("threads", struct bench_cfg, threads, "1", 1, 64, "encoding threads"),
    PD_CFG_INT("repeat", struct bench_cfg, repeat, "5", 1, 100, "runs (median)"),
    PD_CFG_BOOL("declared-pre", struct bench_cfg, declared_pre, "false",
                "the pre-tokenizer tokenizer.ggml.pre names (PD_TOK_PRE_DECLARED)"),
    PD_CFG_BOOL("parse-special", struct bench_cfg, parse_special, "false",
                "parse control-token text (PD_TOK_PARSE_SPECIAL)"),
    PD_CFG_STR("ids-in", struct bench_cfg, ids_in, NULL, 4096, "length-prefixed strings"),
    PD_CFG_STR("ids-out", struct bench_cfg, ids_out, NULL, 4096, "their ids, one line each"),
    PD_CFG_END,
};

struct line {
    const char *s;
    size_t n;
};

struct part {
    const struct pd_tokenizer *tok;
    const struct line *lines;
    size_t n_lines, first; /* first: index of lines[0] in the file */
    unsigned flags;
    uint64_t tokens, digest;
    int rc;
};

static void *encode_part(void *arg)
{
    struct part *p = arg;
    size_t cap = 4096, n;
    int32_t *ids = malloc(cap * sizeof(*ids));
    uint64_t tokens = 0, digest = 0; /* locals: parts[] share cache lines */
    for (size_t i = 0; i < p->n_lines && ids; i++) {
        int rc = pd_tok_encode(p->tok, p->lines[i].s, p->lines[i].n, p->flags, ids, cap, &n);
        if (rc == -E2BIG) {
            free(ids);
            cap = n;
            if (!(ids = malloc(cap * sizeof(*ids))))
                break;
            rc = pd_tok_encode(p->tok, p->lines[i].s, p->lines[i].n, p->flags, ids, cap, &n);
        }
        if (rc < 0) {
            p->rc = rc;
            break;
        }
        tokens += n;
        /* digest: sum over lines of (2 * line + 1) * sum over ids of (id + 1) *
         * (position + 1), mod 2^64: order-sensitive, and the threads' parts add */
        uint64_t h = 0;
        for (size_t k = 0; k < n; k++)
            h += ((uint64_t)ids[k] + 1) * (k + 1);
        digest += h * (2 * (p->first + i) + 1);
    }
    if (!ids)
        p->rc = -ENOMEM;
    p->tokens = tokens;
    p->digest = digest;
    free(ids);
    return NULL;
}

/* The whole file, read-only (unmap with munmap); NULL with errno set, or
 * for an empty file. */
static const char *map_file(const char *path, size_t *len)
{
    struct stat st;
    void *map = MAP_FAILED;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *len = 0;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0)
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (fd >= 0)
        close(fd);
    if (map == MAP_FAILED)
        return NULL; /* an empty file too: nothing to measure */
    *len = (size_t)st.st_size;
    return map;
}

static int dump_ids(const struct pd_tokenizer *tok, const char *in, const char *out,
                    unsigned flags)
{
    size_t len, n;
    const char *buf = map_file(in, &len);
    FILE *o = fopen(out, "w");
    int32_t ids[1024];
    if (!buf || !o) {
        fprintf(stderr, "tokenizer_bench: cannot read %s or write %s\n", in, out);
        return 1;
    }
    for (size_t at = 0; at + 4 <= len;) {
        uint32_t sl = (uint32_t)(uint8_t)buf[at] | (uint32_t)(uint8_t)buf[at + 1] << 8 |
                      (uint32_t)(uint8_t)buf[at + 2] << 16 | (uint32_t)(uint8_t)buf[at + 3] << 24;
        at += 4;
        if (sl > len - at || pd_tok_encode(tok, buf + at, sl, flags, ids, 1024, &n) < 0) {
            fprintf(stderr, "tokenizer_bench: bad probe at byte %zu\n", at);
            return 1;
        }
        for (size_t i = 0; i < n; i++)
            fprintf(o, i ? " %d" : "%d", ids[i]);
        fputc('\n', o);
        at += sl;
    }
    fclose(o);
    munmap((void *)buf, len);
    return 0;
}

int main(int argc, char **argv)
{
    struct bench_cfg c;
    struct pd_cfg_args a;
    char err[512];
    int rc = pd_cfg_parse(options, &c, argc, argv, &a, err, sizeof(err));
    if (rc == PD_CFG_VERSION) {
        pd_cfg_version("tokenizer_bench", stdout);
        pd_cfg_done(options, &c);
        return 0;
    }
    if (rc < 0 || rc == PD_CFG_HELP || a.n_positional < 1 ||
        (a.n_positional < 2 && !c.ids_in)) {
        if (rc < 0)
            fprintf(stderr, "tokenizer_bench: %s\n", err);
        pd_cfg_help(options, "tokenizer_bench", "[OPTIONS] MODEL.gguf FILE", stdout);
        pd_cfg_done(options, &c);
        return rc == PD_CFG_HELP ? 0 : 2;
    }

    /* the GGUF's metadata only: a vocabulary-only file will do */
    struct pd_tokenizer *tok = NULL;
    struct pd_gguf *g = NULL;
    struct pd_tok_opts to = {.pre = c.declared_pre ? PD_TOK_PRE_DECLARED : PD_TOK_PRE_HF_GGUF};
    size_t glen;
    const char *gmap = map_file(a.positional[0], &glen);
    if (!gmap) {
        fprintf(stderr, "tokenizer_bench: %s: %s\n", a.positional[0], strerror(errno));
        return 1;
    }
    double t0 = bench_now();
    if (pd_gguf_parse(gmap, glen, &g, err, sizeof(err)) < 0 ||
        pd_tok_load_opts(g, &to, &tok, err, sizeof(err)) < 0) {
        fprintf(stderr, "tokenizer_bench: %s\n", err);
        return 1;
    }
    double load_s = bench_now() - t0;
    pd_gguf_free(g);
    munmap((void *)gmap, glen);
    unsigned flags = PD_TOK_NO_BOS | (c.parse_special ? PD_TOK_PARSE_SPECIAL : 0);
    if (c.ids_in) {
        rc = dump_ids(tok, c.ids_in, c.ids_out ? c.ids_out : "/dev/stdout", flags);
        pd_tok_free(tok);
        pd_cfg_done(options, &c);
        return rc;
    }

    size_t len = 0, n_lines = 0;
    const char *text = map_file(a.positional[1], &len);
    if (!text) {
        fprintf(stderr, "tokenizer_bench: cannot read %s\n", a.positional[1]);
        return 1;
    }
    for (size_t i = 0; i < len; i++)
        n_lines += text[i] == '\n';
    struct line *lines = malloc((n_lines + 1) * sizeof(*lines));
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= len; i++)
        if (i == len || text[i] == '\n') {
            if (i > start || i < len)
                lines[k++] = (struct line){text + start, i - start};
            start = i + 1;
        }
    n_lines = k;

    int nt = (int)c.threads;
    struct part parts[64];
    pthread_t th[64];
    double *times = malloc((size_t)c.repeat * sizeof(*times));
    for (int64_t r = 0; r < c.repeat; r++) {
        double t = bench_now();
        for (int i = 0; i < nt; i++) {
            size_t lo = n_lines * (size_t)i / (size_t)nt, hi = n_lines * (size_t)(i + 1) / (size_t)nt;
            parts[i] = (struct part){tok, lines + lo, hi - lo, lo, flags, 0, 0, 0};
            pthread_create(&th[i], NULL, encode_part, &parts[i]);
        }
        for (int i = 0; i < nt; i++)
            pthread_join(th[i], NULL);
        times[r] = bench_now() - t;
        for (int i = 0; i < nt; i++)
            if (parts[i].rc < 0) {
                fprintf(stderr, "tokenizer_bench: encode failed: %s\n", strerror(-parts[i].rc));
                return 1;
            }
    }
    qsort(times, (size_t)c.repeat, sizeof(*times), bench_cmp_double);
    double med = times[c.repeat / 2];
    uint64_t tokens = 0, digest = 0;
    for (int i = 0; i < nt; i++)
        tokens += parts[i].tokens, digest += parts[i].digest;
    printf("pdserve: %zu bytes, %zu lines, %llu tokens, %d thread(s), median %.3f s of %lld, "
           "%.2f MB/s, load %.3f s, pre %s, digest %016llx\n",
           len, n_lines, (unsigned long long)tokens, nt, med, (long long)c.repeat,
           (double)len / med / 1e6, load_s, pd_tok_pre_used(tok), (unsigned long long)digest);
    free(times);
    free(lines);
    munmap((void *)text, len);
    pd_tok_free(tok);
    pd_cfg_done(options, &c);
    return 0;
}
