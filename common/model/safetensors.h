/* common/model/safetensors: a validating parser for one safetensors image in
 * memory (Hugging Face's format: an 8-byte little-endian header length, a
 * JSON header, then the tensors' bytes).
 *
 *   struct pd_st *st;
 *   char err[256];
 *   if (pd_st_parse(map, size, &st, err, sizeof(err)) < 0) { report err; }
 *   const struct pd_st_tensor *t = pd_st_find(st, "model.norm.weight");
 *   st = pd_st_free(st);
 *
 * Everything is checked before use, as the format's reference library does
 * and more strictly: the header length against the image and a cap; the
 * header is UTF-8 JSON, an object whose members are tensors (each exactly
 * "dtype", "shape" and "data_offsets", no key twice) and an optional
 * "__metadata__" of strings; names unique, at most PD_ST_MAX_NAME bytes, no
 * NUL; dtypes F32, F16, BF16 (any other dtype is -ENOTSUP, named); 1 to 4
 * dims of 1 to 2^40, each offset an exact integer; end - begin equal to the
 * element count times the element size; each tensor aligned to its element
 * size within the image; and the tensors tile the data section exactly (no
 * overlap, no gap, nothing after). Failures are -EINVAL (-E2BIG past a cap,
 * -ENOMEM) with a message; never a read outside [buf, buf + len). No I/O, no
 * logging: it is the fuzz target.
 *
 * Ownership: names are copied; data pointers point into the caller's
 * buffer, which must outlive the pd_st. Tensors are sorted by name.
 */
#ifndef PD_SAFETENSORS_H
#define PD_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PD_ST_MAX_HEADER (100u << 20) /* the reference library's cap is 100 MB */
#define PD_ST_MAX_TENSORS 65536
#define PD_ST_MAX_NAME 256
#define PD_ST_MAX_DIMS 4

struct pd_st_tensor {
    const char *name; /* NUL-terminated copy */
    uint32_t type; /* enum pd_dtype: F32, F16 or BF16 */
    uint32_t n_dims;
    uint64_t shape[PD_ST_MAX_DIMS]; /* as written: shape[0] outermost, shape[n_dims-1] contiguous */
    uint64_t offset; /* of the first byte, from the start of the image */
    uint64_t nbytes;
    const void *data;
};

struct pd_st;

int pd_st_parse(const void *buf, size_t len, struct pd_st **out, char *err, size_t errlen);
/* Accepts NULL; returns NULL. */
struct pd_st *pd_st_free(struct pd_st *st);

size_t pd_st_n_tensors(const struct pd_st *st);
const struct pd_st_tensor *pd_st_tensor_at(const struct pd_st *st, size_t i);
/* NULL when absent */
const struct pd_st_tensor *pd_st_find(const struct pd_st *st, const char *name);

/* What cJSON (1.7) accepts and JSON does not, checked on the raw text, for
 * the header and for the checkpoint's JSON files: 0, or -EINVAL with what and
 * where in err (no prefix). A raw control character in a string, one outside
 * strings other than tab/newline/return, an escaped NUL; with integers_only,
 * a number other than a plain non-negative integer. */
int pd_st_json_check_text(const char *s, size_t n, bool integers_only, char *err, size_t errlen);
/* A key appearing twice among obj's members (O(n log n)): 1 with *dup one of
 * them, 0 none, -ENOMEM. */
struct cJSON;
int pd_st_json_dup_key(const struct cJSON *obj, const char **dup);
/* A JSON file's text (a checkpoint's config.json, a tokenizer.json) as a
 * cJSON object, refused unless it is UTF-8, passes pd_st_json_check_text,
 * is one object, has no key twice in any object and nests at most
 * max_depth: 0 with *out (the caller cJSON_Deletes it), -EINVAL with why
 * (no prefix), -ENOMEM. */
int pd_st_json_parse(const char *text, size_t len, int max_depth, struct cJSON **out, char *why,
                     size_t whylen);

#endif
