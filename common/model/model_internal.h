/* Private to common/model: the model body, and what the loaders share.
 * model_load.c (pd_model_load) calls a source's loader (model_gguf.c,
 * model_dummy.c), which fills the body using model.c's helpers; then
 * model.c binds and fingerprints it. */
#ifndef PD_MODEL_INTERNAL_H
#define PD_MODEL_INTERNAL_H

#include "errf.h"
#include "model.h"

#include <sodium.h>

/* Bump when the dummy generator's output changes: it is part of the fingerprint. */
#define PD_DUMMY_GENERATOR_VERSION 1

struct pd_model {
    char *name; /* path or shape name */
    struct pd_hparams hp;
    /* [n_tensors], file order (GGUF) or canonical order (dummy; the names follow) */
    struct pd_tensor *tensors;
    size_t n_tensors;
    uint64_t weight_bytes;
    const struct pd_tensor **layer; /* [n_layer][PD_W_COUNT] into tensors */
    const struct pd_tensor *tok_embd, *output_norm, *output, *rope_freqs;
    /* GGUF */
    void *map;
    size_t map_len;
    struct pd_gguf *gguf;
    /* checkpoint directory (model_hf.c): its shards, mapped and parsed */
    char *dir;
    struct pd_model_shard *shards;
    size_t n_shards;
    char *tensor_names; /* the tensors' names as this build calls them (GGUF's) */
    int32_t eos[PD_MODEL_MAX_EOS];
    size_t n_eos;
    float *rope_factors; /* (rope_dim / 2), computed (LLAMA3 scaling), or NULL */
    /* dummy */
    void *arena; /* weights: anonymous mapping, read-only once generated */
    size_t arena_len;
    uint32_t dtype;
    uint64_t seed;
    uint8_t fp[PD_MODEL_FP_LEN];
};

struct pd_st;
struct pd_model_shard {
    char *file; /* its name in the directory */
    void *map;
    size_t len;
    struct pd_st *st;
};

/* The sources: fill m's tensors, hparams and name (m zeroed before). */
int pd_model_load_dummy(struct pd_model *m, const struct pd_model_params *p, char *err,
                        size_t errlen);
int pd_model_load_gguf(struct pd_model *m, const char *path, char *err, size_t errlen);
/* model_hf.c: a Hugging Face checkpoint directory */
int pd_model_load_hf(struct pd_model *m, const char *dir, char *err, size_t errlen);
/* model_hf.c: 1 when path is a directory (a checkpoint), 0 otherwise */
int pd_model_path_is_dir(const char *path);
/* model.c: arch_id, its name and the flags that follow from it (qkv_bias,
 * qk_norm); the rope style is the source's to set */
void pd_hparams_set_arch(struct pd_hparams *hp, enum pd_arch a);
/* model.c: Llama-3.1's per-dimension rope factors into m->rope_factors */
int pd_model_llama3_factors(struct pd_model *m, char *err, size_t errlen);
/* a read-only mapping of a whole regular file (at dirfd/name; dirfd may be
 * AT_FDCWD), for the GGUF and checkpoint loaders; min: the smallest size
 * accepted */
int pd_model_map_file(int dirfd, const char *name, size_t min, void **map, size_t *len,
                      char *err, size_t errlen);
/* buf must outlive the model (tensor data points into it). */
int pd_model_load_gguf_image(struct pd_model *m, const void *buf, size_t len, char *err,
                             size_t errlen);
/* model.c: the tail of every load. */
int pd_model_bind(struct pd_model *m, char *err, size_t errlen);
void pd_model_compute_fingerprint(struct pd_model *m);
const char *pd_model_weight_name(enum pd_weight w);
void pd_model_weight_shape(const struct pd_hparams *hp, enum pd_weight w, uint32_t *n_dims,
                           uint64_t ne[2]);

#endif
