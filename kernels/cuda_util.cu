/* kernels/cuda_util.cu: the CUDA runtime behind cuda_util.h. */
#include "cuda_check.cuh"

#include "bf16.h"
#include "philox.h"
#include "quant.h"

#include <dlfcn.h>
#include <mutex>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#ifndef PD_CUDA_ARCHS
#define PD_CUDA_ARCHS "?"
#endif

extern "C" int pd_cuda_errno(int cuda_status)
{
    switch ((cudaError_t)cuda_status) {
    case cudaSuccess:
        return 0;
    case cudaErrorInsufficientDriver:
    case cudaErrorNoDevice:
    case cudaErrorStubLibrary:
    case cudaErrorDevicesUnavailable:
    case cudaErrorInvalidDevice:
        return -ENODEV;
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorInvalidKernelImage:
        return -ENOEXEC;
    case cudaErrorMemoryAllocation:
        return -ENOMEM;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidPitchValue:
    case cudaErrorInvalidMemcpyDirection:
    case cudaErrorInvalidResourceHandle:
        return -EINVAL;
    case cudaErrorNotSupported:
        return -ENOTSUP;
    case cudaErrorLaunchTimeout:
        return -ETIMEDOUT;
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
        return -EFAULT;
    default:
        return -EIO;
    }
}

extern "C" int pd_cuda_fail(int cuda_status, const char *what)
{
    char line[512];
    cudaError_t e = (cudaError_t)cuda_status;

    snprintf(line, sizeof line, "cuda: %s: %s (%s)", what ? what : "?", cudaGetErrorString(e),
             cudaGetErrorName(e));
    pd_cuda_set_error(line);
    return pd_cuda_errno(cuda_status);
}

/* A release on the way out (a destructor returns nothing): its failure is
 * recorded for pd_cuda_last_error, not returned. */
static void released(cudaError_t e, const char *what)
{
    if (e != cudaSuccess)
        pd_cuda_fail((int)e, what);
}

/* The smallest kernel, to ask whether this build's image loads on the device. */
__global__ void pd_probe_kernel(int *p)
{
    if (p)
        *p = 1;
}

extern "C" int pd_cuda_probe(char *why, size_t n)
{
    int count = 0, dev = 0;
    cudaError_t e = cudaGetDeviceCount(&count);

    /* each refusal below also clears the runtime's last error (cudaGetLastError),
     * so that the next checked launch does not report this one */

    if (e == cudaErrorInsufficientDriver || e == cudaErrorStubLibrary) {
        void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
        if (!h)
            snprintf(why, n, "no CUDA driver: libcuda.so.1 not found (%s)", cudaGetErrorName(e));
        else
            snprintf(why, n, "no CUDA driver: %s (%s; this build needs CUDA %d.%d)",
                     cudaGetErrorString(e), cudaGetErrorName(e), CUDART_VERSION / 1000,
                     CUDART_VERSION % 1000 / 10);
        if (h)
            dlclose(h);
        cudaGetLastError();
        return pd_cuda_errno((int)e);
    }
    if (e != cudaSuccess || count == 0) {
        snprintf(why, n, "no CUDA device: %s", e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports none");
        cudaGetLastError();
        return e != cudaSuccess ? pd_cuda_errno((int)e) : -ENODEV;
    }
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, (const void *)pd_probe_kernel);
    if (e != cudaSuccess) {
        int major = 0, minor = 0; /* best effort, for the message: sm_00 if unknown */
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
            major = minor = 0;
        snprintf(why, n, "no kernel image for sm_%d%d in this build (built for %s): %s", major,
                 minor, PD_CUDA_ARCHS, cudaGetErrorString(e));
        cudaGetLastError();
        return pd_cuda_errno((int)e);
    }
    if (n)
        why[0] = '\0';
    return count;
}

extern "C" int pd_cuda_device_info(char *buf, size_t n)
{
    cudaDeviceProp p;
    int drv = 0, rt = 0, dev = 0;

    PD_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
    PD_CUDA_TRY(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
    PD_CUDA_TRY(cudaDriverGetVersion(&drv), "cudaDriverGetVersion");
    PD_CUDA_TRY(cudaRuntimeGetVersion(&rt), "cudaRuntimeGetVersion");
    snprintf(buf, n, "%s, sm_%d%d, %d SMs, %.1f GiB, L2 %d MiB, driver API %d.%d, runtime %d.%d",
             p.name, p.major, p.minor, p.multiProcessorCount,
             (double)p.totalGlobalMem / (1024.0 * 1024 * 1024), p.l2CacheSize >> 20, drv / 1000,
             drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    return 0;
}

static std::mutex facts_mu;
static struct {
    int dev, major, minor, optin, sms;
} known[16];
static unsigned n_known;
static struct {
    const void *fn;
    int dev;
    size_t smem;
} asked[64];
static unsigned n_asked;

extern "C" void pd_cuda_facts_forget(void)
{
    std::lock_guard<std::mutex> hold(facts_mu);
    n_known = n_asked = 0;
}

/* The current device's compute capability, opt-in shared memory per block
 * and SM count, asked once per device: the launchers want them on every
 * launch */
static int device_facts(int *major, int *minor, int *optin, int *sms)
{
    int dev = 0;
    PD_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
    std::lock_guard<std::mutex> hold(facts_mu);
    for (unsigned i = 0; i < n_known; i++)
        if (known[i].dev == dev) {
            *major = known[i].major, *minor = known[i].minor, *optin = known[i].optin;
            *sms = known[i].sms;
            return 0;
        }
    PD_CUDA_TRY(cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, dev),
                "cudaDeviceGetAttribute");
    PD_CUDA_TRY(cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, dev),
                "cudaDeviceGetAttribute");
    PD_CUDA_TRY(cudaDeviceGetAttribute(optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
                "cudaDeviceGetAttribute");
    PD_CUDA_TRY(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev),
                "cudaDeviceGetAttribute(multiProcessorCount)");
    if (n_known < sizeof known / sizeof *known)
        known[n_known++] = {dev, *major, *minor, *optin, *sms};
    return 0;
}

extern "C" int pd_cuda_device_facts(int *major, int *optin)
{
    int minor = 0, sms = 0;
    return device_facts(major, &minor, optin, &sms);
}

extern "C" int pd_cuda_device_cc(int *major, int *minor)
{
    int optin = 0, sms = 0;
    return device_facts(major, minor, &optin, &sms);
}

extern "C" int pd_cuda_sm_count(uint32_t *n)
{
    int major = 0, minor = 0, optin = 0, sms = 0;
    const int rc = device_facts(&major, &minor, &optin, &sms);
    *n = (uint32_t)sms;
    return rc;
}

extern "C" int pd_cuda_allow_smem(const void *fn, size_t smem)
{
    int dev = 0;
    PD_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
    std::lock_guard<std::mutex> hold(facts_mu);
    unsigned i = 0;
    while (i < n_asked && !(asked[i].fn == fn && asked[i].dev == dev))
        i++;
    if (i < n_asked && asked[i].smem >= smem)
        return 0;
    PD_CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                "cudaFuncSetAttribute");
    if (i < n_asked)
        asked[i].smem = smem;
    else if (n_asked < sizeof asked / sizeof *asked)
        asked[n_asked++] = {fn, dev, smem};
    return 0;
}

extern "C" int pd_cuda_debug_build(void)
{
#ifdef __CUDACC_DEBUG__
    return 1;
#else
    return 0;
#endif
}

extern "C" int pd_cuda_emulated(void)
{
#ifdef PD_CUDA_EMU
    return 1;
#else
    return 0;
#endif
}

extern "C" int pd_cuda_malloc(void **p, size_t bytes)
{
    void *d = NULL;
    PD_CUDA_TRY(cudaMalloc(&d, bytes ? bytes : 1), "cudaMalloc");
    *p = d;
    return 0;
}

extern "C" void *pd_cuda_free(void *p)
{
    if (p)
        released(cudaFree(p), "cudaFree");
    return NULL;
}

extern "C" int pd_cuda_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    PD_CUDA_TRY(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
    return 0;
}

extern "C" int pd_cuda_memcpy(void *dst, const void *src, size_t bytes)
{
    PD_CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "cudaMemcpy");
    return 0;
}

extern "C" int pd_cuda_memcpy_async(void *dst, const void *src, size_t bytes, pd_stream_t stream)
{
    PD_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, pd_cuda_stream(stream)),
                "cudaMemcpyAsync");
    return 0;
}

extern "C" int pd_cuda_host_register(void *p, size_t bytes)
{
    PD_CUDA_TRY(cudaHostRegister(p, bytes, cudaHostRegisterDefault), "cudaHostRegister");
    return 0;
}

extern "C" int pd_cuda_host_device_ptr(void *host, void **dev)
{
    PD_CUDA_TRY(cudaHostGetDevicePointer(dev, host, 0), "cudaHostGetDevicePointer");
    return 0;
}

extern "C" int pd_cuda_host_unregister(void *p)
{
    PD_CUDA_TRY(cudaHostUnregister(p), "cudaHostUnregister");
    return 0;
}

extern "C" int pd_cuda_memset(void *p, int byte, size_t bytes)
{
    PD_CUDA_TRY(cudaMemset(p, byte, bytes), "cudaMemset");
    return 0;
}

extern "C" int pd_cuda_memset_async(void *p, int byte, size_t bytes, pd_stream_t stream)
{
    PD_CUDA_TRY(cudaMemsetAsync(p, byte, bytes, pd_cuda_stream(stream)), "cudaMemsetAsync");
    return 0;
}

extern "C" int pd_cuda_sync(void)
{
    PD_CUDA_TRY(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    return 0;
}

/* ---- random fill ------------------------------------------------------ */

/* Four elements per thread from one Philox call: counter (group lo, group hi). */
template <typename T, bool BF>
__global__ void fill_random_kernel(T *p, uint64_t n, uint64_t seed, float amp)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    for (uint64_t g = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; g * 4 < n;
         g += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t ctr[4] = {(uint32_t)g, (uint32_t)(g >> 32), 0x6b76u /* "kv" */, 0};
        struct pd_philox_out o = pd_philox4x32_10(ctr, key);
        for (int j = 0; j < 4 && g * 4 + j < n; j++) {
            float x = amp * ((float)(o.v[j] >> 8) * (2.0f / 16777216.0f) - 1.0f);
            if constexpr (sizeof(T) == 2)
                p[g * 4 + j] = BF ? pd_bf16_encode(x) : pd_f16_encode(x);
            else
                p[g * 4 + j] = x;
        }
    }
}

extern "C" int pd_cuda_fill_random(void *p, uint64_t n, uint32_t type, uint64_t seed, float amp,
                                   pd_stream_t stream)
{
    const unsigned threads = 256;
    const unsigned blocks = pd_cuda_blocks((n + 3) / 4, threads);

    if (n == 0)
        return 0;
    if (type == PD_DT_F32)
        fill_random_kernel<float, false><<<blocks, threads, 0, pd_cuda_stream(stream)>>>(
            (float *)p, n, seed, amp);
    else if (type == PD_DT_BF16)
        fill_random_kernel<uint16_t, true><<<blocks, threads, 0, pd_cuda_stream(stream)>>>(
            (uint16_t *)p, n, seed, amp);
    else if (type == PD_DT_F16)
        fill_random_kernel<uint16_t, false><<<blocks, threads, 0, pd_cuda_stream(stream)>>>(
            (uint16_t *)p, n, seed, amp);
    else
        return -EINVAL;
    return pd_cuda_launched("fill_random_kernel");
}

/* ---- timer ------------------------------------------------------------ */

struct pd_cuda_timer {
    cudaEvent_t start, stop;
};

extern "C" struct pd_cuda_timer *pd_cuda_timer_free(struct pd_cuda_timer *t)
{
    if (!t)
        return NULL;
    if (t->start)
        released(cudaEventDestroy(t->start), "cudaEventDestroy");
    if (t->stop)
        released(cudaEventDestroy(t->stop), "cudaEventDestroy");
    free(t);
    return NULL;
}

extern "C" int pd_cuda_timer_new(struct pd_cuda_timer **out)
{
    struct pd_cuda_timer *t = (struct pd_cuda_timer *)calloc(1, sizeof *t);
    cudaError_t e;

    if (!t)
        return -ENOMEM;
    if ((e = cudaEventCreate(&t->start)) != cudaSuccess ||
        (e = cudaEventCreate(&t->stop)) != cudaSuccess) {
        pd_cuda_timer_free(t);
        return pd_cuda_fail((int)e, "cudaEventCreate");
    }
    *out = t;
    return 0;
}

extern "C" int pd_cuda_timer_start(struct pd_cuda_timer *t, pd_stream_t stream)
{
    PD_CUDA_TRY(cudaEventRecord(t->start, pd_cuda_stream(stream)), "cudaEventRecord");
    return 0;
}

extern "C" int pd_cuda_timer_stop(struct pd_cuda_timer *t, pd_stream_t stream, float *ms)
{
    PD_CUDA_TRY(cudaEventRecord(t->stop, pd_cuda_stream(stream)), "cudaEventRecord");
    PD_CUDA_TRY(cudaEventSynchronize(t->stop), "cudaEventSynchronize");
    PD_CUDA_TRY(cudaEventElapsedTime(ms, t->start, t->stop), "cudaEventElapsedTime");
    return 0;
}

struct pd_cuda_marks {
    uint32_t n;
    cudaEvent_t *ev;
};

extern "C" struct pd_cuda_marks *pd_cuda_marks_free(struct pd_cuda_marks *m)
{
    if (!m)
        return NULL;
    for (uint32_t i = 0; i < m->n; i++)
        if (m->ev[i])
            released(cudaEventDestroy(m->ev[i]), "cudaEventDestroy");
    free(m->ev);
    free(m);
    return NULL;
}

extern "C" int pd_cuda_marks_new(uint32_t n, struct pd_cuda_marks **out)
{
    struct pd_cuda_marks *m = (struct pd_cuda_marks *)calloc(1, sizeof(*m));
    if (!m || !(m->ev = (cudaEvent_t *)calloc(n ? n : 1, sizeof(cudaEvent_t)))) {
        free(m);
        return -ENOMEM;
    }
    for (; m->n < n; m->n++) {
        cudaError_t e = cudaEventCreate(&m->ev[m->n]);
        if (e != cudaSuccess) {
            pd_cuda_marks_free(m);
            return pd_cuda_fail((int)e, "cudaEventCreate");
        }
    }
    *out = m;
    return 0;
}

extern "C" int pd_cuda_marks_record(struct pd_cuda_marks *m, uint32_t i, pd_stream_t stream)
{
    if (i >= m->n)
        return -EINVAL;
    PD_CUDA_TRY(cudaEventRecord(m->ev[i], pd_cuda_stream(stream)), "cudaEventRecord");
    return 0;
}

extern "C" int pd_cuda_marks_elapsed(struct pd_cuda_marks *m, uint32_t i, uint32_t j, float *ms)
{
    if (i >= m->n || j >= m->n)
        return -EINVAL;
    PD_CUDA_TRY(cudaEventElapsedTime(ms, m->ev[i], m->ev[j]), "cudaEventElapsedTime");
    return 0;
}

/* ---- streams and graphs ----------------------------------------------- */

extern "C" void pd_cuda_clear_error(void)
{
    (void)cudaGetLastError();
    pd_cuda_set_error("");
}

extern "C" int pd_cuda_stream_sync(pd_stream_t s)
{
    PD_CUDA_TRY(cudaStreamSynchronize(pd_cuda_stream(s)), "cudaStreamSynchronize");
    return 0;
}

extern "C" int pd_cuda_stream_new(pd_stream_t *out)
{
    cudaStream_t s;
    PD_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    *out = (pd_stream_t)s;
    return 0;
}

extern "C" pd_stream_t pd_cuda_stream_free(pd_stream_t s)
{
    if (s)
        released(cudaStreamDestroy(pd_cuda_stream(s)), "cudaStreamDestroy");
    return NULL;
}

struct pd_cuda_graph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
};

extern "C" int pd_cuda_graph_begin(pd_stream_t s)
{
    if (!s)
        return -EINVAL; /* the legacy default stream cannot be captured */
    PD_CUDA_TRY(cudaStreamBeginCapture(pd_cuda_stream(s), cudaStreamCaptureModeThreadLocal),
                "cudaStreamBeginCapture");
    return 0;
}

extern "C" struct pd_cuda_graph *pd_cuda_graph_free(struct pd_cuda_graph *g)
{
    if (!g)
        return NULL;
    if (g->exec)
        released(cudaGraphExecDestroy(g->exec), "cudaGraphExecDestroy");
    if (g->graph)
        released(cudaGraphDestroy(g->graph), "cudaGraphDestroy");
    free(g);
    return NULL;
}

extern "C" int pd_cuda_graph_end(pd_stream_t s, struct pd_cuda_graph **out)
{
    struct pd_cuda_graph *g;
    cudaGraph_t graph = NULL;
    cudaError_t e;

    PD_CUDA_TRY(cudaStreamEndCapture(pd_cuda_stream(s), &graph), "cudaStreamEndCapture");
    if (!(g = (struct pd_cuda_graph *)calloc(1, sizeof *g))) {
        cudaGraphDestroy(graph);
        return -ENOMEM;
    }
    g->graph = graph;
    if ((e = cudaGraphInstantiate(&g->exec, graph, 0)) != cudaSuccess) {
        pd_cuda_graph_free(g);
        return pd_cuda_fail((int)e, "cudaGraphInstantiate");
    }
    *out = g;
    return 0;
}

extern "C" int pd_cuda_graph_launch(struct pd_cuda_graph *g, pd_stream_t s)
{
    PD_CUDA_TRY(cudaGraphLaunch(g->exec, pd_cuda_stream(s)), "cudaGraphLaunch");
    return 0;
}
