/* Private to common/model*.c: the model body and the helpers the GGUF and
 * dummy loaders share. */
#ifndef PD_MODEL_INTERNAL_H
#define PD_MODEL_INTERNAL_H

#include "model.h"

#include <sodium.h>

/* Bump when the dummy generator's output changes: it is part of the fingerprint. */
#define PD_DUMMY_GENERATOR_VERSION 1

struct pd_model {
    char *name; /* path or shape name */
    struct pd_hparams hp;
    struct pd_tensor *tensors; /* [n_tensors], file order (GGUF) or canonical order (dummy) */
    size_t n_tensors;
    uint64_t weight_bytes;
    const struct pd_tensor **layer; /* [n_layer][PD_W_COUNT] into tensors */
    const struct pd_tensor *tok_embd, *output_norm, *output, *rope_freqs;
    /* GGUF */
    void *map;
    size_t map_len;
    struct pd_gguf *gguf;
    /* dummy */
    char *names; /* arena of tensor names */
    void *arena; /* weights: anonymous mapping, read-only once generated */
    size_t arena_len;
    uint32_t dtype;
    uint64_t seed;
    uint8_t fp[PD_MODEL_FP_LEN];
};

#include "errf.h"
#define pd_model_err pd_errf /* fill err, return rc */
int pd_model_load_dummy(struct pd_model *m, const struct pd_model_params *p, char *err,
                        size_t errlen);
int pd_model_bind(struct pd_model *m, char *err, size_t errlen);
void pd_model_compute_fingerprint(struct pd_model *m);
const char *pd_model_weight_name(enum pd_weight w);
void pd_model_weight_shape(const struct pd_hparams *hp, enum pd_weight w, uint32_t *n_dims,
                           uint64_t ne[2]);

#endif
