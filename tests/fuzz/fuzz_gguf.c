/* libFuzzer target: GGUF images from untrusted bytes, through the parser,
 * every getter, and the model layer (hyper-parameters, tensor binding,
 * fingerprint). Built as a real fuzzer with -Dfuzzing=true (clang); the
 * seed corpus is replayed by `meson test --suite fuzz` with any compiler. */
#include "gguf.h"
#include "model.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pd_gguf *g = NULL;
    struct pd_model *m = NULL;
    char err[256];

    if (pd_gguf_parse(data, size, &g, err, sizeof(err)) == 0) {
        for (size_t i = 0; i < pd_gguf_n_kv(g); i++) {
            const struct pd_gguf_kv *kv = pd_gguf_kv_at(g, i);
            uint32_t u32;
            uint64_t u64;
            float f;
            int b;
            const char *s;
            size_t sl;
            pd_gguf_get_u32(g, kv->key, &u32);
            pd_gguf_get_u64(g, kv->key, &u64);
            pd_gguf_get_f32(g, kv->key, &f);
            pd_gguf_get_bool(g, kv->key, &b);
            pd_gguf_get_str(g, kv->key, &s, &sl);
            if (kv->type == PD_GGUF_ARRAY) {
                /* first, last and one past the end */
                uint64_t idx[3] = {0, kv->arr_n ? kv->arr_n - 1 : 0, kv->arr_n};
                for (int k = 0; k < 3; k++) {
                    int64_t iv;
                    pd_gguf_arr_str(g, kv, idx[k], &s, &sl);
                    pd_gguf_arr_i64(kv, idx[k], &iv);
                    pd_gguf_arr_f32(kv, idx[k], &f);
                }
            }
        }
        for (size_t i = 0; i < pd_gguf_n_tensors(g); i++) {
            const struct pd_gguf_tensor *t = pd_gguf_tensor_at(g, i);
            volatile uint8_t sink = 0;
            if (t->nbytes) /* the first and last byte must be inside the image */
                sink ^= t->data[0] ^ t->data[t->nbytes - 1];
            (void)sink;
        }
        pd_gguf_free(g);
    }
    if (pd_model_load_image(data, size, "fuzz", &m, err, sizeof(err)) == 0)
        pd_model_free(m);
    return 0;
}
