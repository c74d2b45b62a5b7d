/* tests/kernels/emu/cuda_emu.cpp: runs the grid of an emulated launch, and
 * stands in for the CUDA runtime functions kernels/cuda_util.cu calls (host
 * memory, a fake device 0 with 132 SMs, events on the host clock) and the
 * cuBLAS calls kernels/matmul.cu makes, so that cuda_util.cu and matmul.cu
 * themselves are exercised too.
 *
 * Threads of a block are fibers on the calling thread, run in turn (grids
 * launched from several host threads run one after another); a fiber
 * gives the CPU up only at __syncthreads and inside a shuffle, so a block's
 * run is deterministic. Blocks run one after another. A fiber is entered the
 * first time with setcontext (its own stack) and switched with _setjmp /
 * _longjmp after that: swapcontext's signal-mask system call on every switch
 * made the attention tests ten times slower. */
#undef _FORTIFY_SOURCE /* __longjmp_chk refuses to jump between stacks */
#include "cuda_emu.h"

#include "bf16.h"

#include <cublas_v2.h>

#include <chrono>
#include <map>
#include <mutex>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>
#include <vector>

#define MAX_THREADS 1024
#define FIBER_STACK (128u << 10)

unsigned char emu_dynamic_smem[228u << 10] __attribute__((aligned(16)));

namespace {

struct fiber {
    ucontext_t ctx; /* the first entry */
    jmp_buf jb; /* where it gave the CPU up */
    emu_ids ids;
    bool started, done;
    std::vector<char> stack;
};

std::vector<fiber> fibers;
jmp_buf scheduler;
int current = -1;
unsigned live; /* fibers of the block not finished */
const std::function<void()> *body;
unsigned long barrier_arrived, barrier_generation;
unsigned long warp_arrived[MAX_THREADS / 32], warp_generation[MAX_THREADS / 32];
float shuffle_slot[MAX_THREADS / 32][32];
uint32_t mma_a[MAX_THREADS / 32][32][4], mma_b[MAX_THREADS / 32][32][2];
const uint16_t *ldmatrix_rows[MAX_THREADS / 32][32];
unsigned long wg_arrived[MAX_THREADS / 128], wg_generation[MAX_THREADS / 128];
uint32_t wgmma_a[MAX_THREADS / 128][128][4];
struct wgmma_call {
    uint64_t a_desc, b_desc;
    unsigned n;
    bool a_regs, trans_b, accumulate, bf;
} wgmma_calls[MAX_THREADS / 128][128];
size_t smem_in_use; /* the launch's dynamic shared memory, bytes */

void yield_to_scheduler()
{
    if (!_setjmp(fibers[current].jb))
        _longjmp(scheduler, 1);
}

void fiber_main()
{
    (*body)();
    fibers[current].done = true;
    live--;
    _longjmp(scheduler, 1);
}

/* Run f until it gives the CPU up or ends (a function of its own: nothing of
 * the caller's frame lives across the jumps). */
__attribute__((noinline)) void run_fiber(fiber &f)
{
    if (_setjmp(scheduler))
        return;
    if (!f.started) {
        f.started = true;
        setcontext(&f.ctx);
    }
    _longjmp(f.jb, 1);
}

/* all `need` members arrive, then all go on */
void barrier(unsigned long *arrived, unsigned long *generation, unsigned long need)
{
    const unsigned long g = *generation;
    if (++*arrived >= need) {
        *arrived = 0;
        ++*generation;
        return;
    }
    while (*generation == g)
        yield_to_scheduler();
}

} // namespace

const emu_ids *emu_current(void)
{
    return &fibers[current].ids;
}

void emu_syncthreads(void)
{
    barrier(&barrier_arrived, &barrier_generation, live);
}

/* A warp's shuffle: every lane posts its value, all read their partner's. */
float emu_shfl_xor(float v, int lane_mask)
{
    const unsigned t = fibers[current].ids.thread.x, w = t / 32, lane = t % 32;
    shuffle_slot[w][lane] = v;
    barrier(&warp_arrived[w], &warp_generation[w], 32);
    const float r = shuffle_slot[w][lane ^ (unsigned)lane_mask];
    barrier(&warp_arrived[w], &warp_generation[w], 32);
    return r;
}

/* One m16n8k16 mma for the warp: every lane posts its fragments, then each
 * computes its four outputs (kernels/mma.cuh gives the layout). */
void emu_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2], bool bf)
{
    const unsigned t = fibers[current].ids.thread.x, w = t / 32, lane = t % 32;
    const unsigned g = lane / 4, c = lane % 4;
    memcpy(mma_a[w][lane], a, sizeof mma_a[w][lane]);
    memcpy(mma_b[w][lane], b, sizeof mma_b[w][lane]);
    barrier(&warp_arrived[w], &warp_generation[w], 32);
    auto half = [bf](uint32_t reg, unsigned k) {
        const uint16_t h = (uint16_t)(k % 2 ? reg >> 16 : reg & 0xffffu);
        return bf ? pd_bf16_decode(h) : pd_f16_decode(h);
    };
    for (unsigned i = 0; i < 4; i++) {
        const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * c + (i & 1);
        float acc = d[i];
        for (unsigned k = 0; k < 16; k++) {
            /* A[row][k]: lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8) */
            const float x = half(mma_a[w][(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k);
            /* B[k][col]: lane col * 4 + (k % 8) / 2, register k >= 8 */
            const float y = half(mma_b[w][col * 4 + (k % 8) / 2][k >= 8], k);
            acc += x * y;
        }
        d[i] = acc;
    }
    barrier(&warp_arrived[w], &warp_generation[w], 32);
}

/* ldmatrix .x4: every lane posts its row address, then each reads its four
 * registers from the rows of the others */
void emu_ldmatrix_x4(uint32_t r[4], const void *row, bool trans)
{
    const unsigned t = fibers[current].ids.thread.x, w = t / 32, lane = t % 32;
    if ((uintptr_t)row % 16) {
        fprintf(stderr, "cuda_emu: ldmatrix row address %p of lane %u is not 16-byte aligned\n",
                row, lane);
        abort();
    }
    ldmatrix_rows[w][lane] = (const uint16_t *)row;
    barrier(&warp_arrived[w], &warp_generation[w], 32);
    for (unsigned i = 0; i < 4; i++) {
        const uint16_t *const *m = &ldmatrix_rows[w][i * 8];
        const unsigned a = lane / 4, b = 2 * (lane % 4);
        const uint16_t lo = trans ? m[b][a] : m[a][b], hi = trans ? m[b + 1][a] : m[a][b + 1];
        r[i] = (uint32_t)lo | (uint32_t)hi << 16;
    }
    barrier(&warp_arrived[w], &warp_generation[w], 32);
}

/* One wgmma for the warpgroup: every thread posts its A fragments (when A
 * is in registers), then each computes its n / 2 outputs from the layouts of
 * kernels/wgmma.cuh (fp32 accumulation in k order). */
void emu_wgmma(float *d, unsigned n, const uint32_t *a_regs, uint64_t a_desc, uint64_t b_desc,
               bool trans_b, bool accumulate, bool bf)
{
    const unsigned t = fibers[current].ids.thread.x, wg = t / 128, tw = t % 128;
    const unsigned w = tw / 32, lane = tw % 32, g = lane / 4, c = lane % 4;
    if (n % 8 || n == 0 || n > 256 || fibers[current].ids.block_dim.x % 128) {
        fprintf(stderr, "cuda_emu: wgmma m64n%uk16 from a block of %u threads\n", n,
                fibers[current].ids.block_dim.x);
        abort();
    }
    if (a_regs)
        memcpy(wgmma_a[wg][tw], a_regs, sizeof wgmma_a[wg][tw]);
    wgmma_calls[wg][tw] = {a_regs ? 0 : a_desc, b_desc, n, a_regs != NULL, trans_b, accumulate, bf};
    barrier(&wg_arrived[wg], &wg_generation[wg], 128);
    const wgmma_call &mine = wgmma_calls[wg][tw], &first = wgmma_calls[wg][0];
    if (mine.a_desc != first.a_desc || mine.b_desc != first.b_desc || mine.n != first.n ||
        mine.a_regs != first.a_regs || mine.trans_b != first.trans_b ||
        mine.accumulate != first.accumulate || mine.bf != first.bf) {
        fprintf(stderr,
                "cuda_emu: thread %u of a warpgroup issues another wgmma than its thread 0\n", tw);
        abort();
    }
    auto element = [bf](uint64_t desc, unsigned major, unsigned minor, bool mn_major) {
        /* element (major, minor) of an operand: K-major, (row, k); MN-major, (k, column) */
        if (desc >> 46) { /* base offset, swizzle: not emulated */
            fprintf(stderr, "cuda_emu: wgmma descriptor %#llx has a swizzle\n",
                    (unsigned long long)desc);
            abort();
        }
        auto field = [desc](unsigned bit) { return (size_t)((desc >> bit) & 0x3fffu) << 4; };
        const size_t start = field(0), lbo = field(16), sbo = field(32);
        const unsigned mn = mn_major ? minor : major, k = mn_major ? major : minor;
        const size_t at = start + (mn / 8) * sbo + (k / 8) * lbo +
            (mn_major ? (k % 8) * 16 + (mn % 8) * 2 : (mn % 8) * 16 + (k % 8) * 2);
        if (at + 2 > smem_in_use) {
            fprintf(stderr, "cuda_emu: wgmma reads byte %zu of %zu of shared memory\n", at,
                    smem_in_use);
            abort();
        }
        uint16_t h;
        memcpy(&h, emu_dynamic_smem + at, sizeof h);
        return bf ? pd_bf16_decode(h) : pd_f16_decode(h);
    };
    auto a_at = [&](unsigned row, unsigned k) {
        if (!a_regs)
            return element(a_desc, row, k, false);
        /* the A fragment of warp row / 16: lane (row % 8) * 4 + (k % 8) / 2, register
         * (row % 16 >= 8) + 2 (k >= 8), the odd k in the high half */
        const uint32_t reg = wgmma_a[wg][(row / 16) * 32 + (row % 8) * 4 + (k % 8) / 2]
                                    [(row % 16 >= 8) + 2 * (k >= 8)];
        const uint16_t h = (uint16_t)(k % 2 ? reg >> 16 : reg & 0xffffu);
        return bf ? pd_bf16_decode(h) : pd_f16_decode(h);
    };
    for (unsigned i = 0; i < n / 2; i++) {
        const unsigned row = 16 * w + g + ((i % 4) >= 2 ? 8 : 0),
                       col = 8 * (i / 4) + 2 * c + (i % 2);
        float acc = accumulate ? d[i] : 0.0f;
        for (unsigned k = 0; k < 16; k++)
            acc += a_at(row, k) *
                (trans_b ? element(b_desc, k, col, true) : element(b_desc, col, k, false));
        d[i] = acc;
    }
    barrier(&wg_arrived[wg], &wg_generation[wg], 128);
}

uint32_t emu_smem_offset(const void *p)
{
    const unsigned char *b = (const unsigned char *)p;
    if (b < emu_dynamic_smem || b >= emu_dynamic_smem + sizeof emu_dynamic_smem ||
        (b - emu_dynamic_smem) % 16) {
        fprintf(stderr,
                "cuda_emu: a wgmma operand at %p is not 16-byte aligned dynamic shared "
                "memory\n",
                p);
        abort();
    }
    return (uint32_t)(b - emu_dynamic_smem);
}

/* one grid at a time, whichever host thread launches it (the fibers, the
 * barriers and the kernels' static __shared__ are this file's globals): a
 * daemon's compute thread and its KV crypto threads both launch */
static std::mutex grid_mu;

static void run_grid(dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()> &fn)
{
    const unsigned n = block.x;
    if (block.y != 1 || block.z != 1 || n == 0 || n % 32 || n > MAX_THREADS ||
        dynamic_smem > sizeof emu_dynamic_smem) {
        fprintf(stderr, "cuda_emu: unsupported launch (block %ux%ux%u, %zu bytes of shared memory)\n",
                block.x, block.y, block.z, dynamic_smem);
        abort();
    }
    if (fibers.size() < n)
        fibers.resize(n);
    body = &fn;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                memset(emu_dynamic_smem, 0xff, dynamic_smem); /* uninitialised, as on a GPU */
                barrier_arrived = 0;
                memset(warp_arrived, 0, sizeof warp_arrived);
                memset(wg_arrived, 0, sizeof wg_arrived);
                smem_in_use = dynamic_smem;
                live = n;
                for (unsigned t = 0; t < n; t++) {
                    fiber &f = fibers[t];
                    if (f.stack.empty())
                        f.stack.resize(FIBER_STACK);
                    f.started = f.done = false;
                    f.ids = {dim3(t, 0, 0), dim3(x, y, z), block, grid};
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = NULL; /* fiber_main never returns */
                    makecontext(&f.ctx, fiber_main, 0);
                }
                while (live > 0)
                    for (unsigned t = 0; t < n; t++)
                        if (!fibers[t].done) {
                            current = (int)t;
                            run_fiber(fibers[t]);
                        }
                current = -1;
            }
}

void emu_run_grid(dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()> &fn)
{
    std::lock_guard<std::mutex> one_grid(grid_mu);
    run_grid(grid, block, dynamic_smem, fn);
}

/* ---- the CUDA runtime, on the host ------------------------------------------ */

struct CUevent_st {
    std::chrono::steady_clock::time_point t;
};

/* A stream runs its work at once, except while it captures: then the work
 * is recorded, and the graph (and its executable) is that list, replayed in
 * order by cudaGraphLaunch. */
typedef std::vector<std::function<void()>> emu_ops;
struct CUstream_st {
    bool capturing = false, invalidated = false;
    emu_ops ops;
};
struct CUgraph_st {
    emu_ops ops;
};
struct CUgraphExec_st {
    emu_ops ops;
};

/* the stream this thread captures on, if any (ThreadLocal mode), and the
 * error a launch left for cudaGetLastError */
static thread_local cudaStream_t emu_capturing;
static thread_local cudaError_t emu_last_error = cudaSuccess;

/* a synchronising call while this thread captures: refused, the capture is
 * invalid, and the error waits for cudaGetLastError, as on a GPU */
static bool emu_refuse_during_capture(void)
{
    if (!emu_capturing)
        return false;
    emu_capturing->invalidated = true;
    emu_last_error = cudaErrorStreamCaptureUnsupported;
    return true;
}

/* Memory a GPU could reach asynchronously: cudaMalloc's, and host ranges
 * cudaHostRegister page-locked (start -> length, none overlapping). */
static std::mutex emu_mem_mu;
static std::map<uintptr_t, size_t> emu_dev_ranges, emu_host_ranges;

static bool emu_in(const std::map<uintptr_t, size_t> &m, const void *p, size_t n)
{
    const uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin())
        return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

static bool emu_reachable(const void *p, size_t n)
{
    std::lock_guard<std::mutex> g(emu_mem_mu);
    return emu_in(emu_dev_ranges, p, n) || emu_in(emu_host_ranges, p, n);
}

bool emu_issue(cudaStream_t s, std::function<void()> op)
{
    if (s && s->capturing) {
        s->ops.push_back(std::move(op));
        return true;
    }
    if (!s && emu_refuse_during_capture()) { /* the legacy stream syncs with the capture */
        emu_last_error = cudaErrorStreamCaptureImplicit;
        return false;
    }
    op();
    return true;
}

/* the shared memory a block may opt into: an H100's 227 KiB, or
 * PD_EMU_SMEM_OPTIN bytes (tests play a smaller GPU: 101376 is sm_86's) */
static size_t emu_smem_optin(void)
{
    const char *v = getenv("PD_EMU_SMEM_OPTIN");
    return v && *v ? (size_t)strtoul(v, NULL, 10) : 227u << 10;
}

static std::mutex smem_mu;
static std::map<const void *, int> smem_allowed; /* kernel -> bytes */

void emu_check_smem(const void *kernel, size_t smem)
{
    if (smem <= 48u << 10)
        return;
    std::lock_guard<std::mutex> g(smem_mu);
    auto it = smem_allowed.find(kernel);
    if (it == smem_allowed.end() || (size_t)it->second < smem) {
        fprintf(stderr, "cuda_emu: a launch with %zu bytes of dynamic shared memory, more than "
                        "cudaFuncSetAttribute allowed\n", smem);
        abort();
    }
}

extern "C" {

const char *cudaGetErrorString(cudaError_t e)
{
    return e == cudaSuccess ? "no error" : "error (emulated runtime)";
}

const char *cudaGetErrorName(cudaError_t e)
{
    return e == cudaSuccess ? "cudaSuccess" : "cudaError (emulated)";
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = emu_last_error;
    emu_last_error = cudaSuccess;
    return e;
}

cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *d)
{
    *d = 0;
    return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *a, const void *)
{
    memset(a, 0, sizeof *a);
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *fn, enum cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
        return cudaSuccess;
    if (value < 0 || (size_t)value > sizeof emu_dynamic_smem || (size_t)value > emu_smem_optin())
        return emu_last_error = cudaErrorInvalidValue;
    std::lock_guard<std::mutex> g(smem_mu);
    smem_allowed[fn] = value;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr attr, int)
{
    *v = attr == cudaDevAttrMultiProcessorCount             ? 132
         : attr == cudaDevAttrComputeCapabilityMajor        ? 9
         : attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? (int)emu_smem_optin()
                                                            : 0;
    return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, const void *, int, size_t)
{
    *n = 4;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CPU emulation (tests/kernels/emu)");
    p->major = 9;
    p->multiProcessorCount = 132;
    p->totalGlobalMem = 8ull << 30;
    p->l2CacheSize = 50 << 20;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v)
{
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *v)
{
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t n)
{
    if (emu_refuse_during_capture())
        return cudaErrorStreamCaptureUnsupported;
    const size_t sz = (n + 255) / 256 * 256;
    *p = aligned_alloc(256, sz ? sz : 256);
    if (!*p)
        return cudaErrorMemoryAllocation;
    std::lock_guard<std::mutex> g(emu_mem_mu);
    emu_dev_ranges[(uintptr_t)*p] = sz ? sz : 256;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (p) {
        std::lock_guard<std::mutex> g(emu_mem_mu);
        emu_dev_ranges.erase((uintptr_t)p);
    }
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total)
{
    *free_b = *total = 8ull << 30;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind)
{
    if (emu_refuse_during_capture())
        return cudaErrorStreamCaptureUnsupported;
    memcpy(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind, cudaStream_t s)
{
    /* a graph's copy node cannot hold pageable host memory */
    if (s && s->capturing && (!emu_reachable(dst, n) || !emu_reachable(src, n))) {
        s->invalidated = true;
        emu_last_error = cudaErrorStreamCaptureUnsupported;
        return cudaErrorStreamCaptureUnsupported;
    }
    return emu_issue(s, [=]() { memcpy(dst, src, n); }) ? cudaSuccess
                                                         : cudaErrorStreamCaptureImplicit;
}

/* Registered host ranges: registering memory that overlaps a registered
 * range, or unregistering memory never registered, fails as on a GPU (which
 * locks whole pages: the ranges are widened to them). */
cudaError_t cudaHostRegister(void *p, size_t n, unsigned)
{
    if (!p || n == 0)
        return cudaErrorInvalidValue;
    const uintptr_t pg = 4096, a = (uintptr_t)p / pg * pg;
    const size_t len = ((uintptr_t)p + n + pg - 1) / pg * pg - a;
    std::lock_guard<std::mutex> g(emu_mem_mu);
    auto it = emu_host_ranges.lower_bound(a);
    if (it != emu_host_ranges.end() && it->first < a + len)
        return cudaErrorHostMemoryAlreadyRegistered;
    if (it != emu_host_ranges.begin() && std::prev(it)->first + std::prev(it)->second > a)
        return cudaErrorHostMemoryAlreadyRegistered;
    emu_host_ranges[a] = len;
    return cudaSuccess;
}

/* Registered host memory is read where it is (unified addressing). */
cudaError_t cudaHostGetDevicePointer(void **dev, void *host, unsigned flags)
{
    if (!dev || flags)
        return cudaErrorInvalidValue;
    const uintptr_t h = (uintptr_t)host;
    std::lock_guard<std::mutex> g(emu_mem_mu);
    auto it = emu_host_ranges.upper_bound(h);
    if (it == emu_host_ranges.begin() || h >= std::prev(it)->first + std::prev(it)->second)
        return cudaErrorInvalidValue;
    *dev = host;
    return cudaSuccess;
}

cudaError_t cudaHostUnregister(void *p)
{
    std::lock_guard<std::mutex> g(emu_mem_mu);
    auto it = emu_host_ranges.find((uintptr_t)p / 4096 * 4096);
    if (it == emu_host_ranges.end())
        return cudaErrorHostMemoryNotRegistered;
    emu_host_ranges.erase(it);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s)
{
    return emu_issue(s, [=]() { memset(p, v, n); }) ? cudaSuccess : cudaErrorStreamCaptureImplicit;
}

cudaError_t cudaMemset(void *p, int v, size_t n)
{
    if (emu_refuse_during_capture())
        return cudaErrorStreamCaptureUnsupported;
    memset(p, v, n);
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    return emu_refuse_during_capture() ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t)
{
    return emu_refuse_during_capture() ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
    *s = new CUstream_st;
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode)
{
    if (!s || s->capturing || emu_capturing)
        return cudaErrorIllegalState;
    s->capturing = true;
    s->invalidated = false;
    s->ops.clear();
    emu_capturing = s;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    if (!s || !s->capturing || emu_capturing != s)
        return cudaErrorIllegalState;
    s->capturing = false;
    emu_capturing = NULL;
    /* tests: PD_EMU_FAIL_CAPTURE=1 fails every capture, as an operation a
     * graph cannot hold would on a GPU */
    const char *fail = getenv("PD_EMU_FAIL_CAPTURE");
    if (s->invalidated || (fail && *fail == '1')) {
        s->ops.clear();
        *g = NULL;
        emu_last_error = cudaErrorStreamCaptureInvalidated;
        return cudaErrorStreamCaptureInvalidated;
    }
    *g = new CUgraph_st{std::move(s->ops)};
    s->ops.clear();
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long)
{
    *e = new CUgraphExec_st{g->ops};
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s)
{
    if (s && s->capturing)
        return cudaErrorNotSupported;
    if (!s && emu_refuse_during_capture())
        return cudaErrorStreamCaptureImplicit;
    for (auto &op : e->ops)
        op();
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e)
{
    delete e;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    delete g;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e)
{
    *e = new CUevent_st;
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t)
{
    e->t = std::chrono::steady_clock::now();
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t)
{
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
    return cudaSuccess;
}

/* ---- cuBLAS, what kernels/matmul.cu calls ------------------------------------
 * GEMM by its BLAS definition (column-major, op() per operand), fp32 or bf16
 * elements, fp32 sums in k order: it checks matmul.cu's mapping of row-major
 * y = x W^T onto cuBLAS (transposes, leading dimensions, types), not cuBLAS. */

struct cublasContext {
    int unused;
};

cublasStatus_t cublasCreate_v2(cublasHandle_t *h)
{
    *h = new cublasContext();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

/* the stream of the (one) handle: GEMMs on a capturing stream are recorded */
static thread_local cudaStream_t emu_cublas_stream;

cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t s)
{
    emu_cublas_stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

/* the emulated GEMM needs no workspace: a null one with a size is refused,
 * as cuBLAS does, and one smaller than PD_EMU_CUBLAS_WS_MIN bytes (a test's
 * way to see that the caller's buffer reached cuBLAS) */
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t, void *ws, size_t bytes)
{
    const char *min = getenv("PD_EMU_CUBLAS_WS_MIN");
    if ((!ws && bytes) || (min && bytes < strtoull(min, NULL, 10)))
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

static float gemm_elem(const void *p, cudaDataType_t t, size_t i)
{
    return t == CUDA_R_16BF ? pd_bf16_decode(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType_t at,
                            int lda, const void *B, cudaDataType_t bt, int ldb, const void *beta,
                            void *C, cudaDataType_t ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t)
{
    if (compute != CUBLAS_COMPUTE_32F || at != bt || (at != CUDA_R_32F && at != CUDA_R_16BF) ||
        (ct != CUDA_R_32F && ct != CUDA_R_16BF) || m < 0 || n < 0 || k < 0)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    /* op(A) is m x k, op(B) k x n, C m x n; column-major with the given lds */
    if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
        return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta; /* host values: now */
    emu_issue(emu_cublas_stream, [=]() {
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float acc = 0.0f;
            for (int l = 0; l < k; l++) {
                const size_t ai = ta == CUBLAS_OP_N ? (size_t)l * lda + i : (size_t)i * lda + l;
                const size_t bi = tb == CUBLAS_OP_N ? (size_t)j * ldb + l : (size_t)l * ldb + j;
                acc += gemm_elem(A, at, ai) * gemm_elem(B, bt, bi);
            }
            const size_t ci = (size_t)j * ldc + i;
            float v = al * acc;
            if (be != 0.0f)
                v += be * gemm_elem(C, ct, ci);
            if (ct == CUDA_R_16BF)
                ((uint16_t *)C)[ci] = pd_bf16_encode(v);
            else
                ((float *)C)[ci] = v;
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"
