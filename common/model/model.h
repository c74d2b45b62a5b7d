/* common/model: a decoder of the Llama family's (Llama, Qwen2, Qwen3,
 * Mistral) hyper-parameters and weights, from a GGUF file or a Hugging Face
 * checkpoint directory (memory-mapped) or from dummy weights of any shape.
 *
 *   struct pd_model_params p = { .path = "m.gguf" };                // GGUF
 *   struct pd_model_params p = { .path = "Qwen3-8B/" };             // checkpoint
 *   struct pd_model_params p = { .load_format = PD_LOAD_DUMMY,     // dummy
 *                                .shape = "smollm2-135m", .seed = 1 };
 *   struct pd_model *m;
 *   char err[512];
 *   if (pd_model_load(&p, &m, err, sizeof(err)) < 0) { report err; }
 *   const struct pd_hparams *hp = pd_model_hparams(m);
 *   const struct pd_tensor *wq = pd_model_layer_tensor(m, 0, PD_W_ATTN_Q);
 *   m = pd_model_free(m);
 *
 * Loading validates everything before use: the GGUF image (common/model/gguf), the
 * hyper-parameters (ranges, divisibility), and that every tensor the
 * architecture needs exists with the right shape and a supported type; an
 * unknown tensor is refused rather than ignored (a bias we do not apply would
 * serve wrong text silently). Errors name the problem.
 *
 * Shapes follow ggml: ne[0] is the contiguous dimension, so a projection
 * y = W x with x of n_in and y of n_out elements is stored as ne = {n_in, n_out}
 * (row r of W, n_in elements, produces y[r]).
 *
 * Ownership: the model owns the mapping or the dummy weight memory; tensor
 * data pointers stay valid until pd_model_free. The loaded model is read-only
 * and may be shared between threads.
 */
#ifndef PD_MODEL_H
#define PD_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pd_gguf;

enum pd_load_format {
    PD_LOAD_AUTO = 0, /* a GGUF file, or a checkpoint directory, at path */
    PD_LOAD_GGUF,
    PD_LOAD_DUMMY, /* weights generated from (shape, seed) */
    PD_LOAD_SAFETENSORS, /* a Hugging Face checkpoint directory at path */
};

/* The model options of every program that loads a model (decoded, prefilld,
 * pdserve-generate, pdserve-inspect, the benchmarks), declared once: entries
 * of a common/base/cfg option table for a config struct T with char *model,
 * int load_format (an enum pd_load_format), char *model_shape and int64_t
 * seed. */
extern const char *const pd_model_load_formats[]; /* by enum pd_load_format */
#define PD_MODEL_CFG(T)                                                                            \
    PD_CFG_STR("model", T, model, NULL, 4096,                                                      \
               "GGUF model file or Hugging Face checkpoint directory (or the first argument)"),     \
    PD_CFG_ENUM("load-format", T, load_format, "auto", pd_model_load_formats,                      \
                "where weights come from: auto (a GGUF file or a checkpoint directory), gguf, "    \
                "safetensors (a checkpoint directory), or dummy weights of --model-shape (no "     \
                "tokenizer: token-id prompts only)"),                                              \
    PD_CFG_STR("model-shape", T, model_shape, NULL, 4096,                                          \
               "dummy weights: preset name or JSON shape"),                                        \
    PD_CFG_INT("seed", T, seed, "0", 0, INT64_MAX, "dummy weights: seed")

enum pd_rope_scaling {
    PD_ROPE_SCALING_NONE = 0,
    PD_ROPE_SCALING_LINEAR,
    PD_ROPE_SCALING_YARN,
    PD_ROPE_SCALING_LLAMA3, /* per-dimension factors (rope_factors) from Llama-3.1's rule */
};

/* Which dims of a head rotate together: GGUF's Llama files store Q and K
 * rows permuted for adjacent pairs (ggml's "normal" rope); Hugging Face
 * checkpoints, and GGUF's Qwen files, rotate the two halves (NeoX's form). */
enum pd_rope_style {
    PD_ROPE_ADJACENT = 0, /* (x[2i], x[2i+1]) */
    PD_ROPE_HALVES, /* (x[i], x[i + rope_dim/2]) */
};

/* The architectures: each difference from Llama is a flag of pd_hparams
 * (qkv_bias, qk_norm, sliding_window) that the forward pass reads as one
 * named step. */
enum pd_arch {
    PD_ARCH_LLAMA = 0,
    PD_ARCH_QWEN2, /* bias on q, k, v */
    PD_ARCH_QWEN3, /* RMSNorm of each head of q and k; explicit head_dim */
    PD_ARCH_MISTRAL, /* a sliding window (refused when shorter than the context) */
    PD_ARCH_COUNT,
};
/* "llama", "qwen2", "qwen3", "mistral" (GGUF's general.architecture spelling) */
const char *pd_arch_name(enum pd_arch a);

struct pd_hparams {
    char arch[16]; /* pd_arch_name(arch_id) */
    enum pd_arch arch_id;
    uint32_t n_layer;
    uint32_t n_embd; /* model width */
    uint32_t n_ff; /* SwiGLU hidden width */
    uint32_t n_head;
    uint32_t n_head_kv; /* n_head % n_head_kv == 0 (GQA) */
    uint32_t head_dim;
    uint32_t rope_dim; /* leading dims of each head that RoPE rotates (even, <= head_dim) */
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    float rope_freq_base;
    enum pd_rope_scaling rope_scaling;
    float rope_scale_factor; /* 1 when none */
    uint32_t rope_orig_ctx; /* original context for scaled ropes; 0 when none */
    float rope_low_freq_factor, rope_high_freq_factor; /* LLAMA3 scaling; 0 otherwise */
    enum pd_rope_style rope_style;
    float norm_eps;
    bool tied_output; /* no output.weight: the embedding is reused */
    bool has_rope_freqs; /* per-dimension frequency factors (rope_freqs.weight, or LLAMA3) */
    bool qkv_bias; /* attn_{q,k,v}.bias (Qwen2) */
    bool qk_norm; /* attn_{q,k}_norm.weight, (head_dim) each (Qwen3) */
    uint32_t sliding_window; /* keys attended at most (Mistral); 0: the whole context */
};

/* Per-layer weights, in a fixed order. */
enum pd_weight {
    PD_W_ATTN_NORM,
    PD_W_ATTN_Q,
    PD_W_ATTN_K,
    PD_W_ATTN_V,
    PD_W_ATTN_OUT,
    PD_W_FFN_NORM,
    PD_W_FFN_GATE,
    PD_W_FFN_UP,
    PD_W_FFN_DOWN,
    PD_W_ATTN_Q_BIAS, /* qkv_bias only */
    PD_W_ATTN_K_BIAS,
    PD_W_ATTN_V_BIAS,
    PD_W_ATTN_Q_NORM, /* qk_norm only */
    PD_W_ATTN_K_NORM,
    PD_W_COUNT,
};

/* Whether the architecture of hp has weight w in every layer. */
bool pd_model_weight_used(const struct pd_hparams *hp, enum pd_weight w);

struct pd_tensor {
    const char *name; /* "blk.0.attn_q.weight" */
    uint32_t type; /* enum pd_dtype */
    uint32_t n_dims;
    uint64_t ne[4]; /* ne[0] contiguous; unused dims are 1 */
    uint64_t nbytes;
    uint64_t offset; /* within the weight image (GGUF data section or dummy arena) */
    const void *data; /* NULL when loaded with PD_MODEL_META_ONLY (dummy) */
};

enum {
    /* Tensor table and hyper-parameters only: dummy weights are not generated
     * (pdserve-inspect on a Llama-3-8B shape must not allocate 16 GB). */
    PD_MODEL_META_ONLY = 1u << 0,
};

struct pd_model_params {
    const char *path; /* GGUF file or checkpoint directory */
    enum pd_load_format load_format;
    const char *shape; /* dummy: preset name or JSON object (see docs/internals/model.md) */
    uint64_t seed; /* dummy */
    unsigned flags;
};

struct pd_model;

int pd_model_load(const struct pd_model_params *p, struct pd_model **out, char *err,
                  size_t errlen);
/* A GGUF image already in memory (the caller keeps buf alive and unchanged
 * until pd_model_free); name is used in messages. The fuzz target's entry. */
int pd_model_load_image(const void *buf, size_t len, const char *name, struct pd_model **out,
                        char *err, size_t errlen);
/* Accepts NULL; returns NULL. */
struct pd_model *pd_model_free(struct pd_model *m);

const struct pd_hparams *pd_model_hparams(const struct pd_model *m);
size_t pd_model_n_tensors(const struct pd_model *m);
const struct pd_tensor *pd_model_tensor_at(const struct pd_model *m, size_t i);
const struct pd_tensor *pd_model_find(const struct pd_model *m, const char *name);
const struct pd_tensor *pd_model_layer_tensor(const struct pd_model *m, uint32_t layer,
                                              enum pd_weight w);
const struct pd_tensor *pd_model_tok_embd(const struct pd_model *m);
const struct pd_tensor *pd_model_output_norm(const struct pd_model *m);
/* output.weight, or the embedding when tied */
const struct pd_tensor *pd_model_output(const struct pd_model *m);
/* NULL unless has_rope_freqs */
const struct pd_tensor *pd_model_rope_freqs(const struct pd_model *m);
/* (rope_dim / 2) F32 factors that divide each pair's angle (the
 * rope_freqs.weight tensor, or Llama-3.1's rule computed at load), or NULL */
const float *pd_model_rope_factors(const struct pd_model *m);

/* The GGUF image for metadata beyond the hyper-parameters (tokenizer); NULL
 * for dummy models and checkpoints. */
const struct pd_gguf *pd_model_gguf(const struct pd_model *m);
/* The checkpoint directory's path; NULL for GGUF and dummy models. */
const char *pd_model_dir(const struct pd_model *m);
/* End-of-sequence ids a checkpoint names (generation_config.json, else
 * config.json's eos_token_id); *n = 0 for GGUF (its tokenizer says) and dummy
 * models. The array lives as long as the model. */
#define PD_MODEL_MAX_EOS 16
const int32_t *pd_model_eos(const struct pd_model *m, size_t *n);
/* The file path, or the shape's name. */
const char *pd_model_name(const struct pd_model *m);
/* Total bytes of weights (as stored). */
uint64_t pd_model_weight_bytes(const struct pd_model *m);

/* 32-byte model fingerprint (DESIGN.md): BLAKE2b-256 of the architecture,
 * the tensor table and the content (sampled bytes of every tensor for GGUF;
 * generator, dtype and seed for dummy). hex: 65 bytes. */
#define PD_MODEL_FP_LEN 32
const uint8_t *pd_model_fingerprint(const struct pd_model *m);
void pd_model_fingerprint_hex(const struct pd_model *m, char hex[2 * PD_MODEL_FP_LEN + 1]);

/* Dummy shape presets, for --help and listings: name of preset i (NULL past
 * the end) and a one-line description. "default" is an alias of the default
 * model's shape. */
size_t pd_model_dummy_n_presets(void);
const char *pd_model_dummy_preset(size_t i, const char **about);

/* Check hyper-parameters for consistency and caps (shared by the GGUF and
 * dummy paths). 0 or -EINVAL with a message. */
int pd_hparams_validate(const struct pd_hparams *hp, char *err, size_t errlen);

/* Write the model as a GGUF v3 file (llama metadata + every tensor as stored).
 * Used to give dummy shapes to tools that read GGUF. 0 or negative errno. */
int pd_model_write_gguf(const struct pd_model *m, const char *path, char *err, size_t errlen);

#endif
