/* kernels/qdot_x86: the AVX2 and AVX-512 VNNI dots (qdot_x86_impl.h, once per
 * ISA, each compiled for its own target so the rest of the build stays
 * portable; qdot.c runs them only where CPUID says they run). */
#include "qdot.h"

#include "bf16.h"
#include "quant.h"
#include "quant_blocks.h"

#include <stddef.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define V(name) name##_avx2
#define DPBUSD(acc, u, s)                                                                          \
    _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#include "qdot_x86_impl.h"
#undef V
#undef DPBUSD
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#define V(name) name##_vnni
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define QDOT_AVX512 1 /* the float dots of Q4_0, Q4_1, Q8_0 in 512-bit registers */
#include "qdot_x86_impl.h"
#undef QDOT_AVX512
#undef V
#undef DPBUSD
#pragma GCC pop_options

const struct pd_qdot_tables *pd_qdot_x86(enum pd_isa isa)
{
    return isa == PD_ISA_AVX2 ? &tables_avx2 : isa == PD_ISA_AVX512VNNI ? &tables_vnni : NULL;
}
#else
const struct pd_qdot_tables *pd_qdot_x86(enum pd_isa isa)
{
    (void)isa;
    return NULL;
}
#endif
