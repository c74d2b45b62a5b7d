/* Reader for the golden .bin files written by tests/golden/make_golden.py
 * (format documented there). Test-only: aborts the test on malformed files. */
#ifndef PD_TEST_GOLDEN_H
#define PD_TEST_GOLDEN_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef PD_SRCDIR
#error "tests need PD_SRCDIR"
#endif

struct golden_rec {
    char name[128];
    uint32_t type;
    uint64_t n;
    uint8_t *raw;
    uint64_t raw_len;
    float *want; /* [n] */
};

static inline FILE *golden_open(const char *file)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/golden/%s", PD_SRCDIR, file);
    return fopen(path, "rb");
}

/* 1 with *r filled (caller frees raw and want), 0 at the end, -1 on a bad file. */
static inline int golden_next(FILE *f, struct golden_rec *r)
{
    uint32_t nl;
    if (fread(&nl, 4, 1, f) != 1)
        return 0;
    if (nl >= sizeof(r->name) || fread(r->name, 1, nl, f) != nl)
        return -1;
    r->name[nl] = '\0';
    if (fread(&r->type, 4, 1, f) != 1 || fread(&r->n, 8, 1, f) != 1 ||
        fread(&r->raw_len, 8, 1, f) != 1 || r->n > (1u << 24) || r->raw_len > (1u << 26))
        return -1;
    r->raw = malloc(r->raw_len ? r->raw_len : 1);
    r->want = malloc(r->n * sizeof(float) + 1);
    if (!r->raw || !r->want || fread(r->raw, 1, r->raw_len, f) != r->raw_len ||
        fread(r->want, sizeof(float), r->n, f) != r->n) {
        free(r->raw);
        free(r->want);
        return -1;
    }
    return 1;
}

#endif
