/* libFuzzer target: safetensors images from untrusted bytes, through the
 * parser and every getter. Every byte of every tensor's data is read, so
 * AddressSanitizer sees any tensor that reaches outside the image; what the
 * header promises (inside the data section, aligned, tiling it, sorted and
 * found by name) is checked too, and a broken promise aborts. Built as a real
 * fuzzer with -Dfuzzing=true (clang); the seed corpus (make_st_corpus.py) is
 * replayed by `meson test --suite fuzz` with any compiler. */
#include "quant.h"
#include "safetensors.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The tensor's bytes, all read; returns how many. data_at: where the data
 * section begins. */
static uint64_t check_tensor(const struct pd_st *st, const struct pd_st_tensor *t,
                             const uint8_t *data, size_t size, uint64_t data_at)
{
    volatile uint8_t sink = 0;
    const uint8_t *p = t->data;
    uint64_t esize = t->type == PD_DT_F32 ? 4 : 2, nel = 1;

    if (t->type != PD_DT_F32 && t->type != PD_DT_F16 && t->type != PD_DT_BF16)
        abort();
    if (t->n_dims < 1 || t->n_dims > PD_ST_MAX_DIMS || !t->name[0] ||
        strlen(t->name) > PD_ST_MAX_NAME)
        abort();
    for (uint32_t d = 0; d < PD_ST_MAX_DIMS; d++) {
        if (t->shape[d] == 0 || (d >= t->n_dims && t->shape[d] != 1))
            abort();
        nel *= t->shape[d];
    }
    if (nel * esize != t->nbytes || t->offset < data_at || t->offset > size ||
        t->nbytes > size - t->offset || p != data + t->offset || t->offset % esize)
        abort();
    for (uint64_t i = 0; i < t->nbytes; i++)
        sink ^= p[i];
    (void)sink;
    if (pd_st_find(st, t->name) != t)
        abort();
    return t->nbytes;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pd_st *st = NULL;
    char err[256];

    if (pd_st_parse(data, size, &st, err, sizeof(err)) < 0)
        return 0;
    uint64_t hl = 0, covered = 0;
    for (int i = 0; i < 8; i++) /* parsed, so size >= 8 */
        hl |= (uint64_t)data[i] << (8 * i);
    if (hl > size - 8)
        abort();
    size_t n = pd_st_n_tensors(st);
    for (size_t i = 0; i < n; i++) {
        const struct pd_st_tensor *t = pd_st_tensor_at(st, i);
        if (!t || (i && strcmp(pd_st_tensor_at(st, i - 1)->name, t->name) >= 0))
            abort();
        covered += check_tensor(st, t, data, size, 8 + hl);
    }
    /* the tensors tile the data section: their bytes add up to it exactly */
    if (covered != size - 8 - hl)
        abort();
    if (pd_st_tensor_at(st, n) || pd_st_find(st, "") || pd_st_find(st, "__metadata__"))
        abort();
    st = pd_st_free(st);
    return 0;
}
