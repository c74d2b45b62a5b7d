/* kernels/wgmma.cuh: Hopper's warpgroup tensor-core instructions, for
 * attn_prefill_sm90.cu, private to kernels/.
 *
 * A warpgroup (4 consecutive warps, 128 threads) issues wgmma.mma_async:
 * D (64 x N, fp32 in registers) = or += A (64 x 16) B (16 x N), A from shared
 * memory or registers, B from shared memory, 16-bit operands. PTX ISA,
 * "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions":
 *   - D's registers: warp w of the group holds rows 16 w .. 16 w + 15 as
 *     m16n8k16 accumulators side by side: d[j][e] is the C fragment e of
 *     columns 8 j .. 8 j + 7 (mma.cuh: rows g and g + 8, columns 2c, 2c + 1);
 *   - A from registers: each warp's m16n8k16 A fragment of its 16 rows;
 *   - operands in shared memory are described by a 64-bit descriptor:
 *     bits 0-13 the start address, 16-29 the leading-dimension byte offset
 *     (LBO), 32-45 the stride-dimension byte offset (SBO), each >> 4; bits
 *     62-63 the swizzle, 0 here (none). Without a swizzle the unit is the
 *     core matrix, 8 rows of 16 bytes (8 elements) stored as 128 contiguous
 *     bytes; K-major (imm-trans 0): a core matrix is 8 M/N rows x 8 k, the
 *     next 8 k LBO bytes on, the next 8 rows SBO bytes on; MN-major
 *     (imm-trans 1): a core matrix is 8 k rows x 8 M/N, the next 8 M/N SBO
 *     bytes on, the next 8 k LBO bytes on.
 * The instructions are asynchronous: pd_wgmma_fence() before the first one
 * that reads registers written since (accumulators, A), pd_wgmma_commit()
 * closes a group, pd_wgmma_wait<N>() waits until N groups are left in
 * flight, and pd_wgmma_fence_regs() keeps the compiler from moving the
 * accumulators across it. Shared memory written by the threads themselves
 * (st.shared, cp.async) must pass pd_fence_proxy_async() before a barrier
 * that precedes the wgmma reading it.
 *
 * Only sm_90a has them (the file that includes this is built for that arch
 * alone). Under the CPU emulator (tests/kernels/emu) every wgmma goes through
 * emu_wgmma, which gathers the warpgroup and computes the product from the
 * layouts above (the descriptors' addresses are offsets into the emulated
 * dynamic shared memory), at once: the fences and waits are then nothing. */
#ifndef PD_WGMMA_CUH
#define PD_WGMMA_CUH

#include <stdint.h>

#if !defined(PD_CUDA_EMU) && defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PD_WGMMA_ARCH 1
#endif

/* the descriptor of a no-swizzle operand at smem (16-byte aligned) */
__device__ __forceinline__ uint64_t pd_wgmma_desc(const void *smem, uint32_t lbo, uint32_t sbo)
{
#if defined(PD_CUDA_EMU)
    const uint32_t a = emu_smem_offset(smem);
#elif defined(__CUDA_ARCH__)
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
#else
    const uint32_t a = 0;
    (void)smem;
#endif
    return (uint64_t)((a & 0x3ffffu) >> 4) | (uint64_t)((lbo & 0x3ffffu) >> 4) << 16 |
           (uint64_t)((sbo & 0x3ffffu) >> 4) << 32;
}

__device__ __forceinline__ void pd_wgmma_fence(void)
{
#if defined(PD_WGMMA_ARCH)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pd_wgmma_commit(void)
{
#if defined(PD_WGMMA_ARCH)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int N> __device__ __forceinline__ void pd_wgmma_wait(void)
{
#if defined(PD_WGMMA_ARCH)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

/* Registers an asynchronous instruction reads or writes stay where they
 * are: after the wait for the accumulators; before pd_wgmma_fence for the
 * accumulators and A fragments written since (the compiler must not sink
 * those writes past the fence) */
template <int T> __device__ __forceinline__ void pd_wgmma_fence_regs(float (&d)[T][4])
{
#if defined(PD_WGMMA_ARCH)
#pragma unroll
    for (int i = 0; i < T; i++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            asm volatile("" : "+f"(d[i][e])::"memory");
#else
    (void)d;
#endif
}
template <int T> __device__ __forceinline__ void pd_wgmma_fence_regs(uint32_t (&a)[T][4])
{
#if defined(PD_WGMMA_ARCH)
#pragma unroll
    for (int i = 0; i < T; i++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            asm volatile("" : "+r"(a[i][e])::"memory");
#else
    (void)a;
#endif
}

/* this thread's shared-memory writes, seen by the async proxy (wgmma) */
__device__ __forceinline__ void pd_fence_proxy_async(void)
{
#if defined(PD_WGMMA_ARCH)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/* The instructions' operand lists: the accumulators d[0..T)[4] ("+f"),
 * and the same registers' numbers in the instruction's text */
#define PD_WG_D4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define PD_WG_D32                                                                                  \
    PD_WG_D4(0), PD_WG_D4(1), PD_WG_D4(2), PD_WG_D4(3), PD_WG_D4(4), PD_WG_D4(5), PD_WG_D4(6),      \
        PD_WG_D4(7)
#define PD_WG_D64                                                                                  \
    PD_WG_D32, PD_WG_D4(8), PD_WG_D4(9), PD_WG_D4(10), PD_WG_D4(11), PD_WG_D4(12), PD_WG_D4(13),   \
        PD_WG_D4(14), PD_WG_D4(15)
#define PD_WG_R32                                                                                  \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "  \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define PD_WG_R64                                                                                  \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "  \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "   \
    "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "    \
    "%56, %57, %58, %59, %60, %61, %62, %63}"

/* A and B from shared memory, both K-major (imm-trans 0 0): SHAPE and T (the
 * operand types) spliced into the text, DR / DOUT the accumulators' numbers
 * and operands, A, B, P the numbers of the descriptors and the accumulate flag
 * (scale-d: a predicate) */
#define PD_WGMMA_SS(SHAPE, T, DR, DOUT, A, B, P)                                                   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" P ", 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned." SHAPE ".f32" T " " DR ", %" A ", %" B             \
                 ", p, 1, 1, 0, 0;\n}\n"                                                           \
                 : DOUT                                                                            \
                 : "l"(a), "l"(b), "r"(accumulate))
/* A from registers (four), B from shared memory MN-major (imm-trans-b 1), always
 * accumulating: AR the numbers of a[0..3], B and P as above */
#define PD_WGMMA_RS(SHAPE, T, DR, DOUT, AR, B, P)                                                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" P ", 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned." SHAPE ".f32" T " " DR ", " AR ", %" B             \
                 ", p, 1, 1, 1;\n}\n"                                                              \
                 : DOUT                                                                            \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1))

/* d (m64n64 or m64n128, f32) = A B, or += A B when accumulate: A and B in
 * shared memory, both K-major (descriptors) */
template <bool BF>
__device__ __forceinline__ void pd_wgmma_ss_n64(float (&d)[8][4], uint64_t a, uint64_t b,
                                                int accumulate)
{
#if defined(PD_CUDA_EMU)
    emu_wgmma(&d[0][0], 64, NULL, a, b, false, accumulate != 0, BF);
#elif defined(PD_WGMMA_ARCH)
    if constexpr (BF)
        PD_WGMMA_SS("m64n64k16", ".bf16.bf16", PD_WG_R32, PD_WG_D32, "32", "33", "34");
    else
        PD_WGMMA_SS("m64n64k16", ".f16.f16", PD_WG_R32, PD_WG_D32, "32", "33", "34");
#else
    (void)d, (void)a, (void)b, (void)accumulate;
    __trap();
#endif
}

template <bool BF>
__device__ __forceinline__ void pd_wgmma_ss_n128(float (&d)[16][4], uint64_t a, uint64_t b,
                                                 int accumulate)
{
#if defined(PD_CUDA_EMU)
    emu_wgmma(&d[0][0], 128, NULL, a, b, false, accumulate != 0, BF);
#elif defined(PD_WGMMA_ARCH)
    if constexpr (BF)
        PD_WGMMA_SS("m64n128k16", ".bf16.bf16", PD_WG_R64, PD_WG_D64, "64", "65", "66");
    else
        PD_WGMMA_SS("m64n128k16", ".f16.f16", PD_WG_R64, PD_WG_D64, "64", "65", "66");
#else
    (void)d, (void)a, (void)b, (void)accumulate;
    __trap();
#endif
}

/* d (m64n64 or m64n128, f32) += A B: A in registers (each warp the m16n8k16
 * A fragments of its 16 rows, kernels/mma.cuh), B in shared memory MN-major
 * (descriptor; imm-trans-b 1) */
template <bool BF>
__device__ __forceinline__ void pd_wgmma_rs_n64(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b)
{
#if defined(PD_CUDA_EMU)
    emu_wgmma(&d[0][0], 64, a, 0, b, true, true, BF);
#elif defined(PD_WGMMA_ARCH)
    if constexpr (BF)
        PD_WGMMA_RS("m64n64k16", ".bf16.bf16", PD_WG_R32, PD_WG_D32, "{%32, %33, %34, %35}", "36",
                    "37");
    else
        PD_WGMMA_RS("m64n64k16", ".f16.f16", PD_WG_R32, PD_WG_D32, "{%32, %33, %34, %35}", "36",
                    "37");
#else
    (void)d, (void)a, (void)b;
    __trap();
#endif
}

template <bool BF>
__device__ __forceinline__ void pd_wgmma_rs_n128(float (&d)[16][4], const uint32_t (&a)[4],
                                                 uint64_t b)
{
#if defined(PD_CUDA_EMU)
    emu_wgmma(&d[0][0], 128, a, 0, b, true, true, BF);
#elif defined(PD_WGMMA_ARCH)
    if constexpr (BF)
        PD_WGMMA_RS("m64n128k16", ".bf16.bf16", PD_WG_R64, PD_WG_D64, "{%64, %65, %66, %67}", "68",
                    "69");
    else
        PD_WGMMA_RS("m64n128k16", ".f16.f16", PD_WG_R64, PD_WG_D64, "{%64, %65, %66, %67}", "68",
                    "69");
#else
    (void)d, (void)a, (void)b;
    __trap();
#endif
}

#endif
