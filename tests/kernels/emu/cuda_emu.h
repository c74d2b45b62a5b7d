/* tests/kernels/emu/cuda_emu.h: enough of CUDA to run kernels/<op>.cu on the
 * CPU, force-included (-include cuda_emu.h) before each rewritten source
 * (xform.py). CUDA's own headers give the types (dim3, float4, uint4,
 * __half); this file turns the execution-space keywords into nothing and
 * provides threadIdx/blockIdx, __syncthreads, __shfl_xor_sync, __ldg, the
 * m16n8k16 mma and ldmatrix of kernels/mma.cuh and the launch, run by cuda_emu.cpp: one block at a time, each of its threads a
 * cooperative fiber switching only at barriers and shuffles.
 *
 * What it checks: index arithmetic, the algorithm, the dispatch, every
 * write landing where the CPU reference expects it (ASan-visible heap). What
 * it cannot: races and the memory model, device math (host libm here), speed. */
#ifndef PD_CUDA_EMU_H
#define PD_CUDA_EMU_H

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <functional>
#include <math.h>
#include <stdint.h>
#include <string.h>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static /* one block runs at a time: a static is its shared memory */

struct emu_ids {
    dim3 thread, block, block_dim, grid_dim;
};
const emu_ids *emu_current(void);
#define threadIdx (emu_current()->thread)
#define blockIdx (emu_current()->block)
#define blockDim (emu_current()->block_dim)
#define gridDim (emu_current()->grid_dim)

extern unsigned char emu_dynamic_smem[];
void emu_syncthreads(void);
float emu_shfl_xor(float v, int lane_mask);
#define __syncthreads() emu_syncthreads()

/* kernels/mma.cuh takes this path: the warp's fragments are gathered and
 * the product computed from the PTX fragment layout (fp32 accumulation in k
 * order; the hardware's order is unspecified) */
#define PD_CUDA_EMU 1
/* the emulated device is an sm_90 (9.0): Hopper's prefill kernel
 * (attn_prefill_sm90.cu, its wgmma through emu_wgmma) is there too */
#define PD_PREFILL_SM90 1
void emu_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2], bool bf);
/* ldmatrix .x4 for the warp from each lane's row address (mma.cuh has the
 * layout); aborts on an address that is not 16-byte aligned */
void emu_ldmatrix_x4(uint32_t r[4], const void *row, bool trans);
/* kernels/wgmma.cuh's wgmma.mma_async m64nNk16 for the warpgroup, at once:
 * A from a_regs (each warp's m16n8k16 A fragments) or, when a_regs is NULL,
 * the K-major descriptor a_desc; B from b_desc, MN-major when trans_b; the
 * descriptors' addresses are offsets into emu_dynamic_smem, without swizzle
 * (anything else aborts, as does an operand outside the block's memory, or
 * threads of the warpgroup that disagree on n, the descriptors or the flags,
 * which the hardware requires to be the same) */
void emu_wgmma(float *d, unsigned n, const uint32_t *a_regs, uint64_t a_desc, uint64_t b_desc,
               bool trans_b, bool accumulate, bool bf);
/* a wgmma operand's shared-memory address (a descriptor's start): its
 * offset into emu_dynamic_smem; aborts when p is outside it or not 16-byte
 * aligned */
uint32_t emu_smem_offset(const void *p);

static inline float __shfl_xor_sync(unsigned, float v, int lane_mask)
{
    return emu_shfl_xor(v, lane_mask);
}
template <class T> static inline T __ldg(const T *p)
{
    return *p;
}
static inline float emu_bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
#define __uint_as_float(u) emu_bits_float((uint32_t)(u))
static inline uint32_t __float_as_uint(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Atomics: a block's fibers switch only at barriers and shuffles, so a
 * read-modify-write is atomic as written. */
template <class T> static inline T atomicAdd(T *p, T v)
{
    T old = *p;
    *p = old + v;
    return old;
}
template <class T> static inline T atomicMin(T *p, T v)
{
    T old = *p;
    *p = v < old ? v : old;
    return old;
}
template <class T> static inline T atomicExch(T *p, T v)
{
    T old = *p;
    *p = v;
    return old;
}
template <class T> static inline T atomicCAS(T *p, T cmp, T v)
{
    T old = *p;
    if (old == cmp)
        *p = v;
    return old;
}
#define __int_as_float(u) emu_bits_float((uint32_t)(u))

/* every block of the grid, each with block.x fibers running body */
void emu_run_grid(dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()> &body);

/* Stream capture (CUDA graphs): work issued to a capturing stream is
 * recorded, by value, and runs when the graph is launched; anything that
 * would synchronise (a synchronous copy, a device or stream wait, a launch on
 * the legacy stream) while this thread captures fails and invalidates the
 * capture, as on a GPU. emu_issue runs op now or records it. */
bool emu_issue(cudaStream_t s, std::function<void()> op);

/* A launch asking for more than 48 KiB of dynamic shared memory aborts unless
 * cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) allowed
 * that much for the kernel, as a GPU would refuse it; the attribute is
 * refused above the device's opt-in limit (cudaDevAttrMaxSharedMemoryPerBlockOptin:
 * 227 KiB, or $PD_EMU_SMEM_OPTIN bytes). */
void emu_check_smem(const void *kernel, size_t smem);

template <class F> struct emu_launcher {
    F kernel;
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    template <class... A> void operator()(A... args) const
    {
        const F k = kernel;
        const dim3 g = grid, b = block;
        const size_t sm = smem;
        emu_check_smem(reinterpret_cast<const void *>(k), sm);
        emu_issue(stream, [=]() { emu_run_grid(g, b, sm, [&]() { k(args...); }); });
    }
};

template <class F, class G, class B>
emu_launcher<F> emu_launch(F kernel, G grid, B block, size_t smem = 0, cudaStream_t s = 0)
{
    return emu_launcher<F>{kernel, dim3(grid), dim3(block), smem, s};
}

#endif
