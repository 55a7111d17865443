/*
 * fake_libcuda.c - a stand-in for the GPU driver's libcuda.so.1, for tests on machines without a
 * GPU. Built as build/fake-cuda/libcuda.so.1 (never on the loader's default path): a daemon
 * started with LD_LIBRARY_PATH pointing there "finds" two GPUs, so the listing path of
 * kernels/cuda/load.c (cuInit, names, memory, compute capability) and the `no_device` replies
 * for present devices run in CI. Contexts, memory, copies, streams and events are emulated on
 * the host (below), so the daemon's device tensors and its CUDA executor's host-side paths run in
 * CI too; kernels cannot (cuModuleLoadData fails with CUDA_ERROR_NOT_SUPPORTED).
 *
 * Symbols are named through cuda.h's ABI-version mapping (cuDeviceTotalMem is
 * cuDeviceTotalMem_v2), with asm labels, exactly as the loader looks them up.
 */
#include <cuda.h>
#include <stdio.h>
#include <string.h>

#define FAKE_STR_(x) #x
#define FAKE_STR(x) FAKE_STR_(x)
#define FAKE_EXPORT __attribute__((visibility("default")))

/* The functions cuda_load() calls. */
FAKE_EXPORT CUresult fake_init(unsigned int flags) __asm__(FAKE_STR(cuInit));
CUresult fake_init(unsigned int flags) { return flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }

FAKE_EXPORT CUresult fake_driver_version(int *v) __asm__(FAKE_STR(cuDriverGetVersion));
CUresult fake_driver_version(int *v) { *v = 13000; return CUDA_SUCCESS; }

FAKE_EXPORT CUresult fake_error_name(CUresult r, const char **s) __asm__(FAKE_STR(cuGetErrorName));
CUresult fake_error_name(CUresult r, const char **s) {
    *s = r == CUDA_ERROR_NOT_SUPPORTED     ? "CUDA_ERROR_NOT_SUPPORTED"
         : r == CUDA_ERROR_OUT_OF_MEMORY   ? "CUDA_ERROR_OUT_OF_MEMORY"
         : r == CUDA_ERROR_INVALID_CONTEXT ? "CUDA_ERROR_INVALID_CONTEXT"
                                           : "CUDA_ERROR_UNKNOWN";
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_count(int *n) __asm__(FAKE_STR(cuDeviceGetCount));
CUresult fake_count(int *n) { *n = 2; return CUDA_SUCCESS; }

FAKE_EXPORT CUresult fake_get(CUdevice *d, int i) __asm__(FAKE_STR(cuDeviceGet));
CUresult fake_get(CUdevice *d, int i) {
    if (i < 0 || i > 1)
        return CUDA_ERROR_INVALID_DEVICE;
    *d = i;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_name(char *buf, int len, CUdevice d) __asm__(FAKE_STR(cuDeviceGetName));
CUresult fake_name(char *buf, int len, CUdevice d) {
    snprintf(buf, (size_t)len, "Fake GPU %d (picograd test driver)", (int)d);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_mem(size_t *b, CUdevice d) __asm__(FAKE_STR(cuDeviceTotalMem));
CUresult fake_mem(size_t *b, CUdevice d) {
    *b = ((size_t)40 << 30) * (size_t)(d + 1);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_attr(int *v, CUdevice_attribute a, CUdevice d)
    __asm__(FAKE_STR(cuDeviceGetAttribute));
CUresult fake_attr(int *v, CUdevice_attribute a, CUdevice d) {
    if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        *v = d == 0 ? 8 : 9;
    else if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        *v = 0;
    else
        return CUDA_ERROR_NOT_SUPPORTED;
    return CUDA_SUCCESS;
}

/* ---- contexts, memory, copies, streams, events: emulated on the host --------------------------
 *
 * Device memory is host memory handed out as a "device pointer" that is the host address XOR
 * FAKE_MASK: a non-canonical address, so host code that dereferences a device pointer (a bug:
 * it would crash on a real GPU too) crashes here as well instead of silently working. Each
 * device holds FAKE_CUDA_MEMORY bytes (environment; default 1 GiB), past which cuMemAlloc fails
 * with CUDA_ERROR_OUT_OF_MEMORY, so the daemon's out-of-memory path runs in CI. Copies happen at
 * once (every stream is synchronous), events are always complete. Kernels cannot run here:
 * cuModuleLoadData fails with CUDA_ERROR_NOT_SUPPORTED. */
#include <stdint.h>
#include <stdlib.h>
#include <pthread.h>

#define FAKE_MASK 0x5a00000000000000ull

static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t fake_used[2];
static int fake_ctx_tag[2];
static __thread CUcontext fake_current;

static size_t fake_capacity(void) {
    const char *s = getenv("FAKE_CUDA_MEMORY");
    return s ? (size_t)strtoull(s, NULL, 10) : ((size_t)1 << 30);
}

static int fake_current_dev(void) {
    return fake_current == (CUcontext)&fake_ctx_tag[1] ? 1 : 0;
}

static void *fake_host(CUdeviceptr p) { return (void *)(uintptr_t)(p ^ FAKE_MASK); }

FAKE_EXPORT CUresult fake_err_string(CUresult r, const char **s) __asm__(FAKE_STR(cuGetErrorString));
CUresult fake_err_string(CUresult r, const char **s) {
    *s = r == CUDA_ERROR_OUT_OF_MEMORY ? "out of memory" : "fake driver error";
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_retain(CUcontext *c, CUdevice d) __asm__(FAKE_STR(cuDevicePrimaryCtxRetain));
CUresult fake_retain(CUcontext *c, CUdevice d) {
    if (d < 0 || d > 1)
        return CUDA_ERROR_INVALID_DEVICE;
    *c = (CUcontext)&fake_ctx_tag[d];
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_release(CUdevice d) __asm__(FAKE_STR(cuDevicePrimaryCtxRelease));
CUresult fake_release(CUdevice d) { return d >= 0 && d <= 1 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE; }

FAKE_EXPORT CUresult fake_set_current(CUcontext c) __asm__(FAKE_STR(cuCtxSetCurrent));
CUresult fake_set_current(CUcontext c) { fake_current = c; return CUDA_SUCCESS; }

FAKE_EXPORT CUresult fake_ctx_sync(void) __asm__(FAKE_STR(cuCtxSynchronize));
CUresult fake_ctx_sync(void) { return CUDA_SUCCESS; }

FAKE_EXPORT CUresult fake_mem_info(size_t *fr, size_t *tot) __asm__(FAKE_STR(cuMemGetInfo));
CUresult fake_mem_info(size_t *fr, size_t *tot) {
    pthread_mutex_lock(&fake_lock);
    *tot = fake_capacity();
    *fr = *tot - fake_used[fake_current_dev()];
    pthread_mutex_unlock(&fake_lock);
    return CUDA_SUCCESS;
}

/* Each block carries its size in a 64-byte header, for cuMemFree's accounting. */
FAKE_EXPORT CUresult fake_alloc(CUdeviceptr *p, size_t n) __asm__(FAKE_STR(cuMemAlloc));
CUresult fake_alloc(CUdeviceptr *p, size_t n) {
    if (!fake_current)
        return CUDA_ERROR_INVALID_CONTEXT;
    int d = fake_current_dev();
    pthread_mutex_lock(&fake_lock);
    int full = n > fake_capacity() - fake_used[d];
    if (!full)
        fake_used[d] += n;
    pthread_mutex_unlock(&fake_lock);
    if (full)
        return CUDA_ERROR_OUT_OF_MEMORY;
    unsigned char *b = malloc(n + 64);
    if (!b)
        return CUDA_ERROR_OUT_OF_MEMORY;
    memcpy(b, &n, sizeof(n));
    memcpy(b + 8, &d, sizeof(d));
    *p = (CUdeviceptr)(uintptr_t)(b + 64) ^ FAKE_MASK;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_free(CUdeviceptr p) __asm__(FAKE_STR(cuMemFree));
CUresult fake_free(CUdeviceptr p) {
    if (!p)
        return CUDA_SUCCESS;
    unsigned char *b = (unsigned char *)fake_host(p) - 64;
    size_t n;
    int d;
    memcpy(&n, b, sizeof(n));
    memcpy(&d, b + 8, sizeof(d));
    pthread_mutex_lock(&fake_lock);
    fake_used[d] -= n;
    pthread_mutex_unlock(&fake_lock);
    free(b);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_host_alloc(void **p, size_t n, unsigned int f) __asm__(FAKE_STR(cuMemHostAlloc));
CUresult fake_host_alloc(void **p, size_t n, unsigned int f) {
    (void)f;
    return (*p = malloc(n)) ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

FAKE_EXPORT CUresult fake_host_free(void *p) __asm__(FAKE_STR(cuMemFreeHost));
CUresult fake_host_free(void *p) { free(p); return CUDA_SUCCESS; }

FAKE_EXPORT CUresult fake_h2d(CUdeviceptr d, const void *s, size_t n, CUstream st) __asm__(FAKE_STR(cuMemcpyHtoDAsync));
CUresult fake_h2d(CUdeviceptr d, const void *s, size_t n, CUstream st) {
    (void)st;
    memcpy(fake_host(d), s, n);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_d2h(void *d, CUdeviceptr s, size_t n, CUstream st) __asm__(FAKE_STR(cuMemcpyDtoHAsync));
CUresult fake_d2h(void *d, CUdeviceptr s, size_t n, CUstream st) {
    (void)st;
    memcpy(d, fake_host(s), n);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_d2d(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) __asm__(FAKE_STR(cuMemcpyDtoDAsync));
CUresult fake_d2d(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) {
    (void)st;
    memmove(fake_host(d), fake_host(s), n);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_memset(CUdeviceptr d, unsigned char v, size_t n, CUstream st) __asm__(FAKE_STR(cuMemsetD8Async));
CUresult fake_memset(CUdeviceptr d, unsigned char v, size_t n, CUstream st) {
    (void)st;
    memset(fake_host(d), v, n);
    return CUDA_SUCCESS;
}

static int fake_object; /* what every stream and event handle points at */

FAKE_EXPORT CUresult fake_stream_create(CUstream *s, unsigned int f) __asm__(FAKE_STR(cuStreamCreate));
CUresult fake_stream_create(CUstream *s, unsigned int f) {
    (void)f;
    *s = (CUstream)&fake_object;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_event_create(CUevent *e, unsigned int f) __asm__(FAKE_STR(cuEventCreate));
CUresult fake_event_create(CUevent *e, unsigned int f) {
    (void)f;
    *e = (CUevent)&fake_object;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult fake_elapsed(float *ms, CUevent a, CUevent b) __asm__(FAKE_STR(cuEventElapsedTime));
CUresult fake_elapsed(float *ms, CUevent a, CUevent b) {
    (void)a, (void)b;
    *ms = 0.0f;
    return CUDA_SUCCESS;
}

/* Present and always successful: everything already happened. */
#define FAKE_OK(fn, arg)                                                                           \
    FAKE_EXPORT CUresult fake_ok_##fn(arg x) __asm__(FAKE_STR(fn));                               \
    CUresult fake_ok_##fn(arg x) { (void)x; return CUDA_SUCCESS; }
FAKE_OK(cuStreamDestroy, CUstream)
FAKE_OK(cuStreamSynchronize, CUstream)
FAKE_OK(cuEventDestroy, CUevent)
FAKE_OK(cuEventSynchronize, CUevent)

FAKE_EXPORT CUresult fake_record(CUevent e, CUstream s) __asm__(FAKE_STR(cuEventRecord));
CUresult fake_record(CUevent e, CUstream s) { (void)e, (void)s; return CUDA_SUCCESS; }

/* Kernels: not here. */
#define FAKE_STUB(fn)                                                                              \
    FAKE_EXPORT CUresult fake_stub_##fn(void) __asm__(FAKE_STR(fn));                               \
    CUresult fake_stub_##fn(void) { return CUDA_ERROR_NOT_SUPPORTED; }
FAKE_STUB(cuModuleLoadData)
FAKE_STUB(cuModuleUnload)
FAKE_STUB(cuModuleGetFunction)
FAKE_STUB(cuLaunchKernel)
/* NVRTC opens libcuda.so.1 when it is loaded and asks it for its private export table: none. */
FAKE_STUB(cuGetExportTable)
