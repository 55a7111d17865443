/*
 * load.h - the CUDA backend's libraries, loaded with dlopen when the daemon starts.
 *
 * One picogradd binary runs on machines with and without GPUs: nothing CUDA is linked, and at
 * start cuda_load() opens the driver API (libcuda.so.1, which comes with the GPU driver), NVRTC
 * (nvrtc.h) and cuBLAS, resolves the functions the backend calls into tables whose fields have
 * the exact types of the toolkit headers' declarations, initializes the driver and reads every
 * device's name, memory and compute capability. Whatever is missing (no driver, no device, no
 * NVRTC or cuBLAS) is logged once at info level with the reason, and the daemon serves the CPU
 * only; cuda_unavailable_reason() keeps the reason for the `no_device` replies.
 *
 * The driver is tried first: on a machine without a GPU driver nothing else is opened.
 *
 * Every library is opened with RTLD_NODELETE: cuda_unload() dlcloses each handle, but the code
 * stays mapped. These libraries (and the libstdc++ they bring) keep allocations in their globals
 * and are not written to have their destructors run and be loaded again; unmapping them would
 * turn those allocations into LeakSanitizer reports and risk a crash at exit. PyTorch never
 * unloads them either.
 */
#ifndef PG_CUDA_LOAD_H
#define PG_CUDA_LOAD_H

#include "nvrtc.h"

#include <cublas_v2.h>
#include <cuda.h>
#include <stdbool.h>
#include <stdint.h>

/* XX(function): the driver API functions the backend calls. cuda.h maps some names to their
 * current ABI version (cuDeviceTotalMem -> cuDeviceTotalMem_v2, cuMemAlloc -> cuMemAlloc_v2),
 * and the symbol looked up is the mapped one, so the table always matches the header. */
#define CUDA_DRIVER_FN_MAP(XX)                                                                     \
    XX(cuInit)                                                                                     \
    XX(cuDriverGetVersion)                                                                         \
    XX(cuGetErrorName)                                                                             \
    XX(cuGetErrorString)                                                                           \
    XX(cuDeviceGetCount)                                                                           \
    XX(cuDeviceGet)                                                                                \
    XX(cuDeviceGetName)                                                                            \
    XX(cuDeviceTotalMem)                                                                           \
    XX(cuDeviceGetAttribute)                                                                       \
    XX(cuDevicePrimaryCtxRetain)                                                                   \
    XX(cuDevicePrimaryCtxRelease)                                                                  \
    XX(cuCtxSetCurrent)                                                                            \
    XX(cuCtxSynchronize)                                                                           \
    XX(cuMemGetInfo)                                                                               \
    XX(cuMemAlloc)                                                                                 \
    XX(cuMemFree)                                                                                  \
    XX(cuMemHostAlloc)                                                                             \
    XX(cuMemFreeHost)                                                                              \
    XX(cuMemcpyHtoDAsync)                                                                          \
    XX(cuMemcpyDtoHAsync)                                                                          \
    XX(cuMemcpyDtoDAsync)                                                                          \
    XX(cuMemsetD8Async)                                                                            \
    XX(cuModuleLoadData)                                                                           \
    XX(cuModuleUnload)                                                                             \
    XX(cuModuleGetFunction)                                                                        \
    XX(cuLaunchKernel)                                                                             \
    XX(cuStreamCreate)                                                                             \
    XX(cuStreamDestroy)                                                                            \
    XX(cuStreamSynchronize)                                                                        \
    XX(cuEventCreate)                                                                              \
    XX(cuEventDestroy)                                                                             \
    XX(cuEventRecord)                                                                              \
    XX(cuEventSynchronize)                                                                         \
    XX(cuEventElapsedTime)

/* XX(function): the cuBLAS functions (cublas_v2.h maps cublasCreate to cublasCreate_v2, ...). */
#define CUDA_CUBLAS_FN_MAP(XX)                                                                     \
    XX(cublasCreate)                                                                               \
    XX(cublasDestroy)                                                                              \
    XX(cublasGetVersion)                                                                           \
    XX(cublasSetStream)                                                                            \
    XX(cublasSetMathMode)                                                                          \
    XX(cublasSgemm)                                                                                \
    XX(cublasDgemm)                                                                                \
    XX(cublasSgemmStridedBatched)                                                                  \
    XX(cublasDgemmStridedBatched)

/* The resolved driver functions; fields are named as the header names the function. */
typedef struct {
#define XX(fn) __typeof__(fn) *fn;
    CUDA_DRIVER_FN_MAP(XX)
#undef XX
} cuda_driver_t;

/* The resolved cuBLAS functions. */
typedef struct {
#define XX(fn) __typeof__(fn) *fn;
    CUDA_CUBLAS_FN_MAP(XX)
#undef XX
} cuda_cublas_t;

#define CUDA_MAX_DEVICES 64    /* devices listed; more are ignored (with a warning) */
#define CUDA_NAME_MAX 128      /* a device's name, NUL included */

/* What the driver says about one device. */
typedef struct {
    char name[CUDA_NAME_MAX]; /* the card's model, "NVIDIA H100 80GB HBM3" */
    uint64_t memory;          /* total device memory, bytes */
    int cc_major, cc_minor;   /* compute capability, 9 and 0 for sm_90 */
} cuda_device_info_t;

/* Loads the driver, NVRTC and cuBLAS and reads the devices (see the file comment); logs at info
 * level what it found or why CUDA is unavailable. Never fails: returns the number of devices the
 * driver lists (0 without a driver or a device). Call once at start, before any other cuda_. */
int cuda_load(void);

/* True when the driver, NVRTC and cuBLAS are loaded and at least one device is listed. */
bool cuda_available(void);

/* The number of devices the driver lists (even when NVRTC or cuBLAS is missing). */
int cuda_device_count(void);

/* Device i's description (0 <= i < cuda_device_count()), borrowed until cuda_unload(); NULL
 * for any other i. */
const cuda_device_info_t *cuda_device(int i);

/* Why CUDA cannot be used, as words for a client ("no GPU driver (libcuda.so.1 not found)"), or
 * "" when cuda_available(). A static string, valid until cuda_unload(). */
const char *cuda_unavailable_reason(void);

/* The function tables (borrowed until cuda_unload()), or NULL when that library is not loaded. */
const cuda_driver_t *cuda_driver(void);
const cuda_cublas_t *cuda_cublas(void);

/* The driver's name of an error code ("CUDA_ERROR_OUT_OF_MEMORY"); a static string. */
const char *cuda_error_name(CUresult r);

/* Closes every library cuda_load() opened (at shutdown). */
void cuda_unload(void);

#endif /* PG_CUDA_LOAD_H */
