/*
 * fake_libcuda.c - a stand-in for the GPU driver's libcuda.so.1, for tests on machines without a
 * GPU. Built as build/fake-cuda/libcuda.so.1 (never on the loader's default path): a daemon
 * started with LD_LIBRARY_PATH pointing there "finds" two GPUs, so the listing path of
 * kernels/cuda/load.c (cuInit, names, memory, compute capability) and the `no_device` replies
 * for present devices run in CI. Only what cuda_load() calls at start does anything; every
 * other function the backend resolves exists and fails with CUDA_ERROR_NOT_SUPPORTED.
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
    *s = r == CUDA_ERROR_NOT_SUPPORTED ? "CUDA_ERROR_NOT_SUPPORTED" : "CUDA_ERROR_UNKNOWN";
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

/* Everything else the backend resolves: present, unsupported. */
#define FAKE_STUB(fn)                                                                              \
    FAKE_EXPORT CUresult fake_stub_##fn(void) __asm__(FAKE_STR(fn));                               \
    CUresult fake_stub_##fn(void) { return CUDA_ERROR_NOT_SUPPORTED; }
FAKE_STUB(cuGetErrorString)
FAKE_STUB(cuDevicePrimaryCtxRetain)
FAKE_STUB(cuDevicePrimaryCtxRelease)
FAKE_STUB(cuCtxSetCurrent)
FAKE_STUB(cuCtxSynchronize)
FAKE_STUB(cuMemGetInfo)
FAKE_STUB(cuMemAlloc)
FAKE_STUB(cuMemFree)
FAKE_STUB(cuMemHostAlloc)
FAKE_STUB(cuMemFreeHost)
FAKE_STUB(cuMemcpyHtoDAsync)
FAKE_STUB(cuMemcpyDtoHAsync)
FAKE_STUB(cuMemcpyDtoDAsync)
FAKE_STUB(cuMemsetD8Async)
FAKE_STUB(cuModuleLoadData)
FAKE_STUB(cuModuleUnload)
FAKE_STUB(cuModuleGetFunction)
FAKE_STUB(cuLaunchKernel)
FAKE_STUB(cuStreamCreate)
FAKE_STUB(cuStreamDestroy)
FAKE_STUB(cuStreamSynchronize)
FAKE_STUB(cuEventCreate)
FAKE_STUB(cuEventDestroy)
FAKE_STUB(cuEventRecord)
FAKE_STUB(cuEventSynchronize)
FAKE_STUB(cuEventElapsedTime)
