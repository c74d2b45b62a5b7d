/* Shared by the tokenizer fuzz targets: two tokenizers, loaded once.
 *   [0] the default model's (byte-level BPE), from $PDSERVE_MODEL or
 *       ~/.cache/pdserve; absent, the target exits 77 (meson: skipped), so
 *       the corpus replay is skipped rather than passed without it.
 *   [1] a small SentencePiece-style vocabulary built here in memory: byte
 *       tokens, control tokens, pieces with scores (some tied), no merges, so
 *       the merges-from-scores path and byte fallback are fuzzed too.
 * Both fuzz targets and their replays include this file. */
#ifndef PD_TOK_FUZZ_H
#define PD_TOK_FUZZ_H

#include "../unit/gguf_build.h"
#include "gguf.h"
#include "model.h"
#include "tokenizer.h"
#include "utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static struct pd_tokenizer *fz_tok[2];

static const char *const fz_pieces[] = {
    "\xE2\x96\x81t", "\xE2\x96\x81" "a", "he", "\xE2\x96\x81the", "in", "er", "\xE2\x96\x81th",
    "an", "re", "on", "\xE2\x96\x81s", "ing", "\xE2\x96\x81w", "at", "en", "\xE2\x96\x81in",
    "nd", "ed", "\xE2\x96\x81of", "es", "\xE2\x96\x81" "and", "or", "is", "\xE2\x96\x81to",
    "\xE2\x96\x81\xE2\x96\x81", "\xC3\xA9", "\xE6\x97\xA5", "\xE6\x97\xA5\xE6\x9C\xAC",
    "\xE6\x9C\xAC",
};

static void fz_spm_image(struct gb *b)
{
    uint64_t n = 3 + 256 + 1 + 1 + 94 + sizeof(fz_pieces) / sizeof(fz_pieces[0]);
    char s[16];
    gb_u32(b, 0x46554747); /* "GGUF" */
    gb_u32(b, 3);
    gb_u64(b, 0); /* tensors */
    gb_u64(b, 8); /* keys */
    gb_kv_str(b, "general.architecture", "llama");
    gb_kv_str(b, "tokenizer.ggml.model", "llama");
    gb_kv_u32(b, "tokenizer.ggml.unknown_token_id", 0);
    gb_kv_u32(b, "tokenizer.ggml.bos_token_id", 1);
    gb_kv_u32(b, "tokenizer.ggml.eos_token_id", 2);

    gb_str(b, "tokenizer.ggml.tokens"), gb_u32(b, PD_GGUF_ARRAY), gb_u32(b, PD_GGUF_STRING);
    gb_u64(b, n);
    gb_str(b, "<unk>"), gb_str(b, "<s>"), gb_str(b, "</s>");
    for (int i = 0; i < 256; i++) {
        snprintf(s, sizeof(s), "<0x%02X>", i);
        gb_str(b, s);
    }
    gb_str(b, "<|im_end|>");
    gb_str(b, "\xE2\x96\x81");
    for (int c = 0x21; c < 0x7F; c++) {
        s[0] = (char)c, s[1] = '\0';
        gb_str(b, s);
    }
    for (size_t i = 0; i < sizeof(fz_pieces) / sizeof(fz_pieces[0]); i++)
        gb_str(b, fz_pieces[i]);

    gb_str(b, "tokenizer.ggml.token_type"), gb_u32(b, PD_GGUF_ARRAY), gb_u32(b, PD_GGUF_I32);
    gb_u64(b, n);
    for (uint64_t i = 0; i < n; i++)
        gb_u32(b, i == 0 ? 2 : i < 3 || i == 259 ? 3 : i < 259 ? 6 : 1);
    gb_str(b, "tokenizer.ggml.scores"), gb_u32(b, PD_GGUF_ARRAY), gb_u32(b, PD_GGUF_F32);
    gb_u64(b, n);
    for (uint64_t i = 0; i < n; i++) /* later pieces score higher; pairs tie */
        gb_f32(b, i < 260 ? 0.0f : (float)(i / 2));
    gb_pad(b, 32);
}

static struct pd_tokenizer *fz_load_default(void)
{
    char path[1024], err[512];
    const char *env = getenv("PDSERVE_MODEL");
    const char *home = getenv("HOME");
    if (env && *env)
        snprintf(path, sizeof(path), "%s", env);
    else
        snprintf(path, sizeof(path), "%s/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf",
                 home ? home : "");
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "skip: default model not fetched (%s); set PDSERVE_MODEL\n", path);
        exit(77);
    }
    struct pd_model_params p = {.path = path};
    struct pd_model *m = NULL;
    struct pd_tokenizer *t = NULL;
    if (pd_model_load(&p, &m, err, sizeof(err)) < 0 ||
        pd_tok_load(pd_model_gguf(m), &t, err, sizeof(err)) < 0) {
        fprintf(stderr, "fuzz: %s\n", err);
        abort();
    }
    pd_model_free(m); /* the tokenizer holds its own copies */
    return t;
}

static void fz_init(void)
{
    char err[512];
    struct gb b = {0};
    struct pd_gguf *g = NULL;
    if (fz_tok[0])
        return;
    fz_tok[0] = fz_load_default();
    fz_spm_image(&b);
    if (pd_gguf_parse(b.p, b.n, &g, err, sizeof(err)) < 0 ||
        pd_tok_load(g, &fz_tok[1], err, sizeof(err)) < 0) {
        fprintf(stderr, "fuzz: test vocabulary: %s\n", err);
        abort();
    }
    pd_gguf_free(g);
    free(b.p);
}

/* libFuzzer calls this once; the replay program does not, so the targets
 * call fz_init() themselves too. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fz_init();
    return 0;
}

/* Streaming the ids gives whole UTF-8 pieces adding up to the full decode. */
static void fz_check_stream(const struct pd_tokenizer *t, const int32_t *ids, size_t n,
                            unsigned flags, const char *full, size_t full_len)
{
    struct pd_detok *d;
    const char *s;
    size_t len, at = 0;
    if (pd_detok_new(t, flags, &d) < 0)
        abort();
    for (size_t i = 0; i <= n; i++) {
        if (i < n) {
            if (pd_detok_push(d, ids[i], &s, &len) < 0)
                abort();
        } else {
            pd_detok_flush(d, &s, &len);
        }
        if (pd_utf8_valid_prefix((const uint8_t *)s, len) != len || at + len > full_len ||
            memcmp(full + at, s, len) != 0)
            abort();
        at += len;
    }
    if (at != full_len)
        abort();
    pd_detok_free(d);
}

#endif
