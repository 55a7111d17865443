/*
 * load.c - opens the CUDA driver API, NVRTC and cuBLAS at start and lists the devices (load.h).
 *
 * The order is the order of what a missing piece means: without libcuda.so.1 there is no GPU
 * driver and nothing else is worth opening; without a device the driver is closed again; NVRTC
 * and cuBLAS are needed to run anything, but a device is listed (hello shows the machine's GPUs)
 * even when one of them is missing, and the reason names it. Every symbol is resolved by its
 * header name after the header's ABI-version mapping (see CUDA_DRIVER_FN_MAP), so a driver too
 * old for the toolkit the daemon was built with is reported as a missing function, not a crash.
 */
#include "load.h"

#include "../../server/log.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

/* Two levels, so that a macro argument (cuMemAlloc -> cuMemAlloc_v2) is expanded first. */
#define CUDA_STR_(x) #x
#define CUDA_STR(x) CUDA_STR_(x)

static void *drv_lib, *blas_lib;                  /* dlopen handles, NULL when not loaded */
static cuda_driver_t drv;                         /* valid while drv_lib is not NULL */
static cuda_cublas_t blas;                        /* valid while blas_lib is not NULL */
static cuda_device_info_t devs[CUDA_MAX_DEVICES]; /* what the driver listed */
static int ndevs;
static bool nvrtc_ok;                             /* cu_nvrtc() loaded */
static char why[200] = "CUDA is not loaded";      /* cuda_unavailable_reason() */

/* Opens the first of names that loads (NULL-terminated list); NULL when none does. */
static void *open_first(const char *const *names, const char **which) {
    for (; *names; names++) {
        void *h = dlopen(*names, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
        if (h) {
            *which = *names;
            return h;
        }
        log_debug("cuda: dlopen %s: %s", *names, dlerror());
    }
    return NULL;
}

/* The words for a driver error: "CUDA_ERROR_NO_DEVICE". */
const char *cuda_error_name(CUresult r) {
    const char *s = NULL;
    if (drv.cuGetErrorName && drv.cuGetErrorName(r, &s) == CUDA_SUCCESS && s)
        return s;
    return "an unknown CUDA error";
}

/* Opens libcuda.so.1 and resolves the driver table; 0 or -1 with why set. */
static int load_driver(void) {
    static const char *const names[] = {"libcuda.so.1", NULL};
    const char *which = NULL;
    void *h = open_first(names, &which);
    if (!h) {
        snprintf(why, sizeof(why), "no GPU driver (libcuda.so.1 not found)");
        return -1;
    }
    cuda_driver_t t;
#define XX(fn)                                                                                     \
    if (!(*(void **)&t.fn = dlsym(h, CUDA_STR(fn)))) {                                             \
        snprintf(why, sizeof(why), "the GPU driver is too old (libcuda.so.1 has no %s)",          \
                 CUDA_STR(fn));                                                                    \
        goto err_close;                                                                            \
    }
    CUDA_DRIVER_FN_MAP(XX)
#undef XX
    drv = t;
    drv_lib = h;
    return 0;
err_close:
    dlclose(h);
    return -1;
}

/* Opens cuBLAS and resolves its table; 0 or -1 with why set. */
static int load_cublas(void) {
    static const char *const names[] = {"libcublas.so.13", "libcublas.so",
                                        PG_CUDA_TOOLKIT_LIB "/libcublas.so.13",
                                        "/usr/local/cuda/lib64/libcublas.so.13", NULL};
    const char *which = NULL;
    void *h = open_first(names, &which);
    if (!h) {
        snprintf(why, sizeof(why), "cuBLAS not found (libcublas.so.13)");
        return -1;
    }
    cuda_cublas_t t;
#define XX(fn)                                                                                     \
    if (!(*(void **)&t.fn = dlsym(h, CUDA_STR(fn)))) {                                             \
        snprintf(why, sizeof(why), "cuBLAS has no function %s", CUDA_STR(fn));                    \
        goto err_close;                                                                            \
    }
    CUDA_CUBLAS_FN_MAP(XX)
#undef XX
    blas = t;
    blas_lib = h;
    return 0;
err_close:
    dlclose(h);
    return -1;
}

/* Initializes the driver and reads every device; returns the count (0 with why set). */
static int list_devices(void) {
    CUresult r = drv.cuInit(0);
    if (r != CUDA_SUCCESS) {
        snprintf(why, sizeof(why), "the CUDA driver found no usable GPU (cuInit: %s)", cuda_error_name(r));
        return 0;
    }
    int n = 0;
    if ((r = drv.cuDeviceGetCount(&n)) != CUDA_SUCCESS || n <= 0) {
        snprintf(why, sizeof(why), "the CUDA driver lists no GPU (cuDeviceGetCount: %s)",
                 r != CUDA_SUCCESS ? cuda_error_name(r) : "0 devices");
        return 0;
    }
    if (n > CUDA_MAX_DEVICES) {
        log_warn("cuda: %d devices; only the first %d are used", n, CUDA_MAX_DEVICES);
        n = CUDA_MAX_DEVICES;
    }
    for (int i = 0; i < n; i++) {
        cuda_device_info_t *di = &devs[i];
        CUdevice dev;
        size_t mem = 0;
        memset(di, 0, sizeof(*di));
        if ((r = drv.cuDeviceGet(&dev, i)) != CUDA_SUCCESS ||
            (r = drv.cuDeviceGetName(di->name, CUDA_NAME_MAX - 1, dev)) != CUDA_SUCCESS ||
            (r = drv.cuDeviceTotalMem(&mem, dev)) != CUDA_SUCCESS ||
            (r = drv.cuDeviceGetAttribute(&di->cc_major,
                                          CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)) !=
                CUDA_SUCCESS ||
            (r = drv.cuDeviceGetAttribute(&di->cc_minor,
                                          CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)) !=
                CUDA_SUCCESS) {
            snprintf(why, sizeof(why), "the CUDA driver cannot describe device %d (%s)", i,
                     cuda_error_name(r));
            return 0;
        }
        di->name[CUDA_NAME_MAX - 1] = '\0';
        di->memory = mem;
    }
    return n;
}

int cuda_load(void) {
    if (load_driver() != 0)
        goto out_unavailable;
    int dv = 0;
    drv.cuDriverGetVersion(&dv);
    if ((ndevs = list_devices()) == 0) {
        dlclose(drv_lib); /* no device: nothing will call the driver again */
        drv_lib = NULL;
        memset(&drv, 0, sizeof(drv));
        goto out_unavailable;
    }
    for (int i = 0; i < ndevs; i++)
        log_info("cuda:%d: %s, %llu MiB, compute capability %d.%d (driver API %d.%d)", i,
                 devs[i].name, (unsigned long long)(devs[i].memory >> 20), devs[i].cc_major,
                 devs[i].cc_minor, dv / 1000, dv % 1000 / 10);
    /* The devices stay listed when a library is missing; the reason says which. */
    if (!(nvrtc_ok = cu_nvrtc() != NULL)) {
        snprintf(why, sizeof(why), "%s", cu_nvrtc_error());
        goto out_unavailable;
    }
    if (load_cublas() != 0)
        goto out_unavailable;
    why[0] = '\0';
    int nvma = 0, nvmi = 0, bv = 0;
    cu_nvrtc_info(NULL, &nvma, &nvmi);
    blas.cublasGetVersion(NULL, &bv);
    log_info("cuda: %d device(s); NVRTC %d.%d, cuBLAS %d", ndevs, nvma, nvmi, bv);
    return ndevs;
out_unavailable:
    log_info("cuda: unavailable, serving the CPU only: %s", why);
    return ndevs;
}

bool cuda_available(void) { return ndevs > 0 && drv_lib && nvrtc_ok && blas_lib; }

int cuda_device_count(void) { return ndevs; }

const cuda_device_info_t *cuda_device(int i) { return i >= 0 && i < ndevs ? &devs[i] : NULL; }

const char *cuda_unavailable_reason(void) { return cuda_available() ? "" : why; }

const cuda_driver_t *cuda_driver(void) { return drv_lib ? &drv : NULL; }

const cuda_cublas_t *cuda_cublas(void) { return blas_lib ? &blas : NULL; }

void cuda_unload(void) {
    if (blas_lib)
        dlclose(blas_lib);
    if (nvrtc_ok)
        cu_nvrtc_unload();
    if (drv_lib)
        dlclose(drv_lib);
    blas_lib = drv_lib = NULL;
    nvrtc_ok = false;
    ndevs = 0;
    memset(&drv, 0, sizeof(drv));
    memset(&blas, 0, sizeof(blas));
    snprintf(why, sizeof(why), "CUDA is not loaded");
}
