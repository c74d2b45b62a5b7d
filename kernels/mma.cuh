/* kernels/mma.cuh: the tensor-core instruction the attention kernels use,
 * private to kernels/.
 *
 * pd_mma_16816<BF>(d, a, b): d += a * b for one warp, m16n8k16 with 16-bit
 * operands (BF: bfloat16, else IEEE half) and fp32 accumulation, the PTX
 * `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}` of sm_80 and later.
 * Fragments, with g = lane / 4 and c = lane % 4 (PTX ISA, "Matrix Fragments
 * for mma.m16n8k16"), two 16-bit values per register, the lower column in
 * the low half:
 *   a[0] A[g][2c..2c+1]     a[1] A[g+8][2c..]     a[2] A[g][2c+8..]   a[3] A[g+8][2c+8..]
 *   b[0] B[2c..2c+1][g]     b[1] B[2c+8..2c+9][g]                (B is k x n, 16 x 8)
 *   d[0..1] D[g][2c..2c+1]  d[2..3] D[g+8][2c..2c+1]
 * Under the CPU emulator (tests/kernels/emu) the same fragments go through
 * emu_mma_16816, which computes the product from this layout. Below: the
 * loads that feed it (ldmatrix, cp.async), emulated the same way. Below sm_80
 * there is no such instruction: launchers refuse those devices first. */
#ifndef PD_MMA_CUH
#define PD_MMA_CUH

#include "bf16.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

template <bool BF>
__device__ __forceinline__ void pd_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2])
{
#if defined(PD_CUDA_EMU)
    emu_mma_16816(d, a, b, BF);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (BF)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
    __trap(); /* not reached: the launcher refuses devices below sm_80 */
#endif
}

/* pd_ldmatrix_x4<TRANS>(r, row): four 8x8 matrices of 16-bit elements from
 * shared memory for one warp (PTX `ldmatrix.sync.aligned.m8n8.x4[.trans]`).
 * Lane l gives the address of row l % 8 of matrix l / 8 (16 bytes, 16-byte
 * aligned). Without TRANS, r[i] of lane l holds matrix i's row l / 4, columns
 * 2 (l % 4) and 2 (l % 4) + 1; with TRANS, column l / 4 of rows 2 (l % 4)
 * and 2 (l % 4) + 1: a [k][n] tile in memory gives the B fragments of
 * m16n8k16 directly. The lower column (row) in the low half. */
template <bool TRANS> __device__ __forceinline__ void pd_ldmatrix_x4(uint32_t r[4], const void *row)
{
#if defined(PD_CUDA_EMU)
    emu_ldmatrix_x4(r, row, TRANS);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

/* pd_cp_async16(dst, src, valid): 16 bytes from global to shared memory
 * without passing through registers (PTX `cp.async.cg`, L2 only); zeros when
 * !valid (src is then not read, but must still be a global address).
 * pd_cp_async_commit() closes a group of them; pd_cp_async_wait<N>() waits
 * until at most N groups are still in flight (then __syncthreads() before
 * other threads read). The emulator copies at once. */
__device__ __forceinline__ void pd_cp_async16(void *dst, const void *src, bool valid)
{
#if defined(PD_CUDA_EMU)
    if (valid)
        memcpy(dst, src, 16);
    else
        memset(dst, 0, 16);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

__device__ __forceinline__ void pd_cp_async_commit(void)
{
#if !defined(PD_CUDA_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N> __device__ __forceinline__ void pd_cp_async_wait(void)
{
#if !defined(PD_CUDA_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/* 2^x by the special-function unit, subnormal results flushed to zero (PTX
 * `ex2.approx.ftz.f32`, about 2 ulp; exp2f without fast math adds the
 * subnormal handling around it); 2^-inf = 0. The emulator: exp2f. */
__device__ __forceinline__ float pd_ex2(float x)
{
#if !defined(PD_CUDA_EMU) && defined(__CUDA_ARCH__)
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

/* Two floats as one register of 16-bit values, round to nearest even (lo in
 * the low half): the hardware conversion on the GPU, kernels/bf16.h on the
 * host (the same rounding). */
template <bool BF> __device__ __forceinline__ uint32_t pd_pack2(float lo, float hi)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (BF) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    } else {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    }
#else
    if constexpr (BF)
        return (uint32_t)pd_bf16_encode(lo) | (uint32_t)pd_bf16_encode(hi) << 16;
    else
        return (uint32_t)pd_f16_encode(lo) | (uint32_t)pd_f16_encode(hi) << 16;
#endif
}

#endif
