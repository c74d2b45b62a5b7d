/* Test helpers for common/text/tokenizer: the default model's tokenizer (skips
 * when the model is absent), the committed SentencePiece test vocabulary,
 * and the golden JSON-lines files written by
 * tests/golden/make_tokenizer_golden.py. Test-only: aborts on bad files. */
#ifndef PD_TEST_TOK_FIXTURE_H
#define PD_TEST_TOK_FIXTURE_H

#include "gguf.h"
#include "model.h"
#include "default_model.h"
#include "pd_test.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <unistd.h>

#ifndef PD_SRCDIR
#error "tests need PD_SRCDIR"
#endif

#define tok_default_model_path pd_test_default_model_path

#define tok_read_file pd_test_read_file

struct tok_fix {
    struct pd_model *model; /* default model, or NULL */
    char *image; /* SentencePiece vocabulary file, or NULL */
    struct pd_gguf *g;
    struct pd_tokenizer *tok;
};

/* The default model's tokenizer; PD_SKIP when the model is not fetched. */
static inline void tok_fix_default(struct tok_fix *f, enum pd_tok_pre pre)
{
    const char *path = tok_default_model_path();
    char err[512];
    memset(f, 0, sizeof(*f));
    if (access(path, R_OK) != 0)
        PD_SKIP("default model not fetched (run deploy/fetch-model.sh or set PDSERVE_MODEL)");
    struct pd_model_params p = {.path = path};
    if (pd_model_load(&p, &f->model, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    struct pd_tok_opts o = {.pre = pre};
    if (pd_tok_load_opts(pd_model_gguf(f->model), &o, &f->tok, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
}

/* tests/golden/tok_spm.gguf: a Llama-2-style vocabulary (no tensors). */
static inline void tok_fix_spm(struct tok_fix *f)
{
    char path[1024], err[512];
    size_t len;
    memset(f, 0, sizeof(*f));
    snprintf(path, sizeof(path), "%s/tests/golden/tok_spm.gguf", PD_SRCDIR);
    if (!(f->image = tok_read_file(path, &len)))
        PD_TEST_FAIL_("cannot read %s", path);
    if (pd_gguf_parse(f->image, len, &f->g, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    if (pd_tok_load(f->g, &f->tok, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
}

static inline void tok_fix_done(struct tok_fix *f)
{
    pd_tok_free(f->tok);
    pd_gguf_free(f->g);
    free(f->image);
    pd_model_free(f->model);
    memset(f, 0, sizeof(*f));
}

/* JSON lines from tests/golden/NAME: one cJSON object per line. */
struct jl {
    cJSON **row;
    size_t n;
};

static inline void jl_load(struct jl *j, const char *name)
{
    char path[1024];
    size_t len;
    snprintf(path, sizeof(path), "%s/tests/golden/%s", PD_SRCDIR, name);
    char *buf = tok_read_file(path, &len);
    if (!buf)
        PD_TEST_FAIL_("cannot read %s", path);
    j->n = 0;
    j->row = NULL;
    size_t cap = 0;
    for (char *line = buf, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl)
            nl = line + strlen(line) - 1;
        else
            *nl = '\0';
        if (!*line)
            continue;
        if (j->n == cap) {
            cap = cap ? 2 * cap : 1024;
            j->row = realloc(j->row, cap * sizeof(*j->row));
        }
        if (!(j->row[j->n] = cJSON_Parse(line)))
            PD_TEST_FAIL_("%s: bad JSON on line %zu", name, j->n + 1);
        j->n++;
    }
    free(buf);
}

static inline void jl_free(struct jl *j)
{
    for (size_t i = 0; i < j->n; i++)
        cJSON_Delete(j->row[i]);
    free(j->row);
}

/* A text field as bytes: KEY_hex when present (texts with a NUL), else KEY;
 * NULL when neither. Caller frees. */
static inline char *jl_bytes(const cJSON *row, const char *key, size_t *len)
{
    char hk[64];
    snprintf(hk, sizeof(hk), "%s_hex", key);
    const cJSON *hex = cJSON_GetObjectItemCaseSensitive(row, hk);
    if (cJSON_IsString(hex)) {
        size_t n = strlen(hex->valuestring) / 2;
        char *s = malloc(n + 1);
        for (size_t i = 0; i < n; i++) {
            unsigned v;
            sscanf(hex->valuestring + 2 * i, "%2x", &v);
            s[i] = (char)v;
        }
        s[n] = '\0';
        *len = n;
        return s;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(row, key);
    if (!cJSON_IsString(t))
        return NULL;
    *len = strlen(t->valuestring);
    return strdup(t->valuestring);
}

/* An id list field; NULL (n = 0) when absent. Caller frees. */
static inline int32_t *jl_ids(const cJSON *row, const char *key, size_t *n)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(row, key);
    *n = 0;
    if (!cJSON_IsArray(a))
        return NULL;
    size_t k = (size_t)cJSON_GetArraySize(a);
    int32_t *ids = malloc((k ? k : 1) * sizeof(*ids));
    const cJSON *e;
    cJSON_ArrayForEach(e, a) ids[(*n)++] = (int32_t)e->valuedouble;
    return ids;
}

static inline const char *jl_str(const cJSON *row, const char *key)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(row, key);
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

#endif
