/* pdserve-inspect: print a model's architecture, tensor types and sizes, and
 * fingerprint; optionally write it out as GGUF (dummy shapes for tools that
 * read GGUF).
 *
 *   pdserve-inspect MODEL.gguf
 *   pdserve-inspect --load-format dummy --model-shape llama3-8b --seed 1
 *   pdserve-inspect --load-format dummy --model-shape tiny --write-gguf tiny.gguf
 */
#include "cfg.h"
#include "gguf.h"
#include "log.h"
#include "model.h"
#include "pd_config.h"
#include "quant.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct inspect_cfg {
    char *model;
    int load_format;
    char *model_shape;
    int64_t seed;
    bool tensors;
    char *write_gguf;
    int log_level;
};


static const struct pd_cfg_opt options[] = {
    PD_MODEL_CFG(struct inspect_cfg),
    PD_CFG_BOOL("tensors", struct inspect_cfg, tensors, "false", "list every tensor"),
    PD_CFG_STR("write-gguf", struct inspect_cfg, write_gguf, NULL, 4096,
               "write the model (architecture metadata and weights) to this GGUF file"),
    PD_LOG_CFG(struct inspect_cfg, 0),
    PD_CFG_END,
};

static void human(uint64_t b, char *buf, size_t n)
{
    if (b >= (1ull << 30))
        snprintf(buf, n, "%.2f GiB", (double)b / (1ull << 30));
    else if (b >= (1ull << 20))
        snprintf(buf, n, "%.1f MiB", (double)b / (1ull << 20));
    else if (b >= 1024)
        snprintf(buf, n, "%.1f KiB", (double)b / 1024);
    else
        snprintf(buf, n, "%" PRIu64 " B", b);
}

static void print_model(const struct pd_model *m, bool list_tensors)
{
    const struct pd_hparams *hp = pd_model_hparams(m);
    const struct pd_gguf *g = pd_model_gguf(m);
    static const char *const scaling[] = {"none", "linear", "yarn", "llama3"};
    char buf[64], fp[2 * PD_MODEL_FP_LEN + 1];

    if (g) {
        const char *s;
        size_t sl;
        printf("model         %s (GGUF v%" PRIu32 ")\n", pd_model_name(m), pd_gguf_version(g));
        if (pd_gguf_get_str(g, "general.name", &s, &sl) == 0)
            printf("name          %.*s\n", (int)(sl > 200 ? 200 : sl), s);
    } else if (pd_model_dir(m)) {
        printf("model         %s (Hugging Face checkpoint, safetensors)\n", pd_model_name(m));
    } else {
        printf("model         %s (dummy weights)\n", pd_model_name(m));
    }
    printf("architecture  %s: %" PRIu32 " layers, width %" PRIu32 ", ffn %" PRIu32 ", %" PRIu32
           " heads (%" PRIu32 " kv, GQA %" PRIu32 "), head dim %" PRIu32 "\n",
           hp->arch, hp->n_layer, hp->n_embd, hp->n_ff, hp->n_head, hp->n_head_kv,
           hp->n_head / hp->n_head_kv, hp->head_dim);
    printf("vocabulary    %" PRIu32 " tokens\n", hp->n_vocab);
    printf("context       %" PRIu32 " tokens (trained)\n", hp->n_ctx_train);
    printf("rope          base %g, %" PRIu32 " of %" PRIu32 " dims, scaling %s", (double)hp->rope_freq_base,
           hp->rope_dim, hp->head_dim, scaling[hp->rope_scaling]);
    if (hp->rope_scaling != PD_ROPE_SCALING_NONE)
        printf(" x%g (original context %" PRIu32 ")", (double)hp->rope_scale_factor,
               hp->rope_orig_ctx);
    if (hp->rope_scaling == PD_ROPE_SCALING_LLAMA3)
        printf(", low/high frequency factors %g/%g", (double)hp->rope_low_freq_factor,
               (double)hp->rope_high_freq_factor);
    printf("%s, %s\n", hp->has_rope_freqs ? ", per-dimension factors" : "",
           hp->rope_style == PD_ROPE_HALVES ? "rotating halves" : "rotating adjacent pairs");
    printf("norm          RMSNorm, eps %g%s\n", (double)hp->norm_eps,
           hp->qk_norm ? "; and on each head of q and k" : "");
    if (hp->qkv_bias)
        printf("bias          on q, k and v\n");
    if (hp->sliding_window)
        printf("attention     sliding window of %" PRIu32 " tokens\n", hp->sliding_window);
    printf("output        %s\n", hp->tied_output ? "tied to the token embedding" : "own matrix");
    size_t n_eos;
    const int32_t *eos = pd_model_eos(m, &n_eos);
    if (n_eos) {
        printf("end ids      ");
        for (size_t i = 0; i < n_eos; i++)
            printf(" %" PRId32, eos[i]);
        printf(" (generation_config.json)\n");
    }

    uint64_t count[PD_DT_COUNT] = {0}, bytes[PD_DT_COUNT] = {0};
    for (size_t i = 0; i < pd_model_n_tensors(m); i++) {
        const struct pd_tensor *t = pd_model_tensor_at(m, i);
        count[t->type]++;
        bytes[t->type] += t->nbytes;
    }
    human(pd_model_weight_bytes(m), buf, sizeof(buf));
    printf("weights       %zu tensors, %s\n", pd_model_n_tensors(m), buf);
    for (uint32_t t = 0; t < PD_DT_COUNT; t++) {
        if (!count[t])
            continue;
        human(bytes[t], buf, sizeof(buf));
        printf("  %-6s      %4" PRIu64 " tensors, %s\n", pd_dtype_name(t), count[t], buf);
    }
    pd_model_fingerprint_hex(m, fp);
    printf("fingerprint   %s\n", fp);

    if (!list_tensors)
        return;
    printf("\n%-32s %-5s %-22s %12s\n", "tensor", "type", "shape (ne0, ne1)", "bytes");
    for (size_t i = 0; i < pd_model_n_tensors(m); i++) {
        const struct pd_tensor *t = pd_model_tensor_at(m, i);
        char shape[48];
        if (t->n_dims == 1)
            snprintf(shape, sizeof(shape), "[%" PRIu64 "]", t->ne[0]);
        else
            snprintf(shape, sizeof(shape), "[%" PRIu64 ", %" PRIu64 "]", t->ne[0], t->ne[1]);
        printf("%-32s %-5s %-22s %12" PRIu64 "\n", t->name, pd_dtype_name(t->type), shape,
               t->nbytes);
    }
}

int main(int argc, char **argv)
{
    struct inspect_cfg c;
    struct pd_cfg_args a;
    char err[512];
    int rc;

    pd_log_init("pdserve-inspect");
    rc = pd_cfg_parse(options, &c, argc, argv, &a, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "pdserve-inspect: %s\n", err);
        pd_cfg_done(options, &c);
        return 2;
    }
    if (rc == PD_CFG_HELP) {
        pd_cfg_help(options, "pdserve-inspect", "[OPTIONS] [MODEL.gguf]", stdout);
        printf("\nDummy shape presets (--model-shape):\n");
        for (size_t i = 0; i < pd_model_dummy_n_presets(); i++) {
            const char *about;
            const char *name = pd_model_dummy_preset(i, &about);
            printf("  %-14s %s\n", name, about);
        }
        pd_cfg_done(options, &c);
        return 0;
    }
    if (rc == PD_CFG_PRINT) {
        pd_cfg_print(options, &c, stdout);
        pd_cfg_done(options, &c);
        return 0;
    }
    if (rc == PD_CFG_VERSION) {
        pd_cfg_version("pdserve-inspect", stdout);
        pd_cfg_done(options, &c);
        return 0;
    }
    pd_log_set_level(PD_LOG_ERR + c.log_level);
    /* the argument is part of the command line, so it outranks --model from
     * a config file or $PDSERVE_MODEL */
    if (a.n_positional > 1) {
        fprintf(stderr, "pdserve-inspect: give one model, as --model or as the argument\n");
        pd_cfg_done(options, &c);
        return 2;
    }

    struct pd_model_params p = {
        .path = a.n_positional ? a.positional[0] : c.model,
        .load_format = (enum pd_load_format)c.load_format,
        .shape = c.model_shape,
        .seed = (uint64_t)c.seed,
        /* weights are generated only when they will be written */
        .flags = c.write_gguf ? 0 : PD_MODEL_META_ONLY,
    };
    struct pd_model *m = NULL;
    rc = pd_model_load(&p, &m, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "pdserve-inspect: %s\n", err);
        pd_cfg_done(options, &c);
        return 1;
    }
    print_model(m, c.tensors);
    if (c.write_gguf) {
        rc = pd_model_write_gguf(m, c.write_gguf, err, sizeof(err));
        if (rc < 0)
            fprintf(stderr, "pdserve-inspect: %s\n", err);
        else
            printf("wrote         %s\n", c.write_gguf);
    }
    pd_model_free(m);
    pd_cfg_done(options, &c);
    return rc < 0 ? 1 : 0;
}
