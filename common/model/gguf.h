/* common/model/gguf: a validating parser for GGUF (v2, v3) images in memory.
 *
 *   struct pd_gguf *g;
 *   char err[256];
 *   if (pd_gguf_parse(map, size, &g, err, sizeof(err)) < 0) { report err; }
 *   uint32_t n_layer;
 *   if (pd_gguf_get_u32(g, "llama.block_count", &n_layer) < 0) ...
 *   const struct pd_gguf_tensor *t = pd_gguf_find_tensor(g, "token_embd.weight");
 *   pd_gguf_free(g);
 *
 * pd_gguf_parse reads only the bytes it is given and checks everything before
 * use: magic, version, counts, every string and array length against the
 * remaining bytes, value types, key and tensor-name uniqueness, tensor dims,
 * types, block multiples, sizes, alignment and that each tensor's data lies
 * inside the image. Any failure is -EINVAL (or -E2BIG past a cap, -ENOMEM)
 * with a message naming the problem and its byte offset; never a read outside
 * [buf, buf + len). No I/O, no logging: it is the fuzz target.
 *
 * Ownership: the parser copies keys and tensor names (NUL-terminated) into its
 * own memory; values, array elements and tensor data are pointers into the
 * caller's buffer, which must outlive the pd_gguf. String values are NOT
 * NUL-terminated (they are length-counted in the file).
 */
#ifndef PD_GGUF_H
#define PD_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum pd_gguf_type {
    PD_GGUF_U8 = 0,
    PD_GGUF_I8 = 1,
    PD_GGUF_U16 = 2,
    PD_GGUF_I16 = 3,
    PD_GGUF_U32 = 4,
    PD_GGUF_I32 = 5,
    PD_GGUF_F32 = 6,
    PD_GGUF_BOOL = 7,
    PD_GGUF_STRING = 8,
    PD_GGUF_ARRAY = 9,
    PD_GGUF_U64 = 10,
    PD_GGUF_I64 = 11,
    PD_GGUF_F64 = 12,
    PD_GGUF_TYPE_COUNT,
};

/* Caps on what a file may ask of us (all far above real models). */
#define PD_GGUF_MAX_KV 4096
#define PD_GGUF_MAX_TENSORS 65536
#define PD_GGUF_MAX_KEY 65535
#define PD_GGUF_MAX_STRING (16u << 20) /* one string value */
#define PD_GGUF_MAX_ARRAY (1u << 24) /* elements in one array */
#define PD_GGUF_MAX_NAME 256 /* tensor name */
#define PD_GGUF_MAX_DIMS 4
#define PD_GGUF_MAX_ALIGN (1u << 16)
#define PD_GGUF_DEFAULT_ALIGN 32

struct pd_gguf_kv {
    const char *key; /* NUL-terminated copy, owned by the pd_gguf */
    uint32_t type; /* enum pd_gguf_type */
    uint32_t arr_type; /* element type when type == PD_GGUF_ARRAY */
    uint64_t arr_n; /* element count when type == PD_GGUF_ARRAY */
    const uint8_t *val; /* value bytes in the image (for arrays: the first element) */
    uint64_t val_len; /* bytes of the value (for arrays: of all elements) */
};

struct pd_gguf_tensor {
    const char *name; /* NUL-terminated copy, owned by the pd_gguf */
    uint32_t type; /* enum pd_dtype (kernels/quant.h) */
    uint32_t n_dims;
    uint64_t ne[PD_GGUF_MAX_DIMS]; /* ne[0] is the contiguous dimension; unused dims are 1 */
    uint64_t offset; /* from the start of the data section */
    uint64_t nbytes;
    const uint8_t *data; /* in the image */
};

struct pd_gguf;

int pd_gguf_parse(const void *buf, size_t len, struct pd_gguf **out, char *err, size_t errlen);
/* Accepts NULL; returns NULL. */
struct pd_gguf *pd_gguf_free(struct pd_gguf *g);

uint32_t pd_gguf_version(const struct pd_gguf *g);
uint32_t pd_gguf_alignment(const struct pd_gguf *g);
uint64_t pd_gguf_data_offset(const struct pd_gguf *g); /* of the data section in the image */

size_t pd_gguf_n_kv(const struct pd_gguf *g);
const struct pd_gguf_kv *pd_gguf_kv_at(const struct pd_gguf *g, size_t i);
const struct pd_gguf_kv *pd_gguf_find_kv(const struct pd_gguf *g, const char *key);

size_t pd_gguf_n_tensors(const struct pd_gguf *g);
const struct pd_gguf_tensor *pd_gguf_tensor_at(const struct pd_gguf *g, size_t i);
const struct pd_gguf_tensor *pd_gguf_find_tensor(const struct pd_gguf *g, const char *name);

/* Typed getters: -ENOENT if the key is absent, -EINVAL if its type does not
 * convert exactly (an integer of any width that fits; F32 or F64 for floats;
 * a negative number never fits an unsigned). *out untouched on failure. */
int pd_gguf_get_u32(const struct pd_gguf *g, const char *key, uint32_t *out);
int pd_gguf_get_u64(const struct pd_gguf *g, const char *key, uint64_t *out);
int pd_gguf_get_f32(const struct pd_gguf *g, const char *key, float *out);
int pd_gguf_get_bool(const struct pd_gguf *g, const char *key, int *out);
int pd_gguf_get_str(const struct pd_gguf *g, const char *key, const char **s, size_t *len);
/* Array key: element type and count. */
int pd_gguf_get_arr(const struct pd_gguf *g, const char *key, uint32_t *elem_type, uint64_t *n);

/* Elements of array kvs. -ERANGE past the end, -EINVAL wrong element type. */
int pd_gguf_arr_str(const struct pd_gguf *g, const struct pd_gguf_kv *kv, uint64_t i,
                    const char **s, size_t *len);
int pd_gguf_arr_i64(const struct pd_gguf_kv *kv, uint64_t i, int64_t *out); /* any integer type */
int pd_gguf_arr_f32(const struct pd_gguf_kv *kv, uint64_t i, float *out); /* F32 or F64 */

#endif
