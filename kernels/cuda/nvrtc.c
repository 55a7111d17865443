/*
 * nvrtc.c - loads NVRTC with dlopen and compiles CUDA C++ to cubins (see nvrtc.h).
 *
 * The library is opened on the first cu_nvrtc() and its functions are resolved by name into one
 * table, cu_nvrtc_t, whose fields take their types from the toolkit's nvrtc.h (__typeof__), so a
 * signature can never drift from the header's. A missing library or function is not an error of
 * the program: cu_nvrtc() returns NULL and the reason is kept for messages.
 */
#include "nvrtc.h"

#include "../../protocol/picograd_codes.h"
#include "../../server/log.h"
#include "../../server/mem.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t nv_lock = PTHREAD_MUTEX_INITIALIZER;
static void *nv_lib;            /* the dlopen handle, NULL when not loaded */
static const char *nv_libname;  /* which name loaded it (a static string) */
static cu_nvrtc_t nv_fn;        /* the table; valid while nv_lib is not NULL */
static bool nv_tried;           /* a load was attempted (and failed, when nv_lib is NULL) */
static char nv_why[160];        /* why the last attempt failed */

/* Opens the first library of the search order that loads; sets nv_libname. */
static void *nv_open(void) {
    static const char *const names[] = {
        "libnvrtc.so.13", "libnvrtc.so", PG_CUDA_TOOLKIT_LIB "/libnvrtc.so.13",
        "/usr/local/cuda/lib64/libnvrtc.so.13"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
        if (h) {
            nv_libname = strrchr(names[i], '/') ? strrchr(names[i], '/') + 1 : names[i];
            return h;
        }
        log_debug("cuda: dlopen %s: %s", names[i], dlerror());
    }
    return NULL;
}

/* Loads the library and its table; called with nv_lock held. */
static void nv_load_locked(void) {
    if (nv_lib || nv_tried)
        return;
    nv_tried = true;
    void *h = nv_open();
    if (!h) {
        snprintf(nv_why, sizeof(nv_why), "NVRTC not found (libnvrtc.so.13)");
        return;
    }
    cu_nvrtc_t t;
#define XX(fn)                                                                                     \
    if (!(*(void **)&t.fn = dlsym(h, #fn))) {                                                      \
        snprintf(nv_why, sizeof(nv_why), "%s has no function %s", nv_libname, #fn);               \
        goto err_close;                                                                            \
    }
    CU_NVRTC_FN_MAP(XX)
#undef XX
    nv_fn = t;
    nv_lib = h;
    nv_why[0] = '\0';
    return;
err_close:
    dlclose(h);
}

const cu_nvrtc_t *cu_nvrtc(void) {
    pthread_mutex_lock(&nv_lock);
    nv_load_locked();
    const cu_nvrtc_t *t = nv_lib ? &nv_fn : NULL;
    pthread_mutex_unlock(&nv_lock);
    return t;
}

const char *cu_nvrtc_error(void) { return nv_lib ? "" : nv_why; }

int cu_nvrtc_info(const char **lib, int *major, int *minor) {
    const cu_nvrtc_t *nv = cu_nvrtc();
    if (!nv)
        return -PG_ENO_DEVICE;
    int ma = 0, mi = 0;
    nv->nvrtcVersion(&ma, &mi);
    if (lib)
        *lib = nv_libname;
    if (major)
        *major = ma;
    if (minor)
        *minor = mi;
    return 0;
}

void cu_nvrtc_unload(void) {
    pthread_mutex_lock(&nv_lock);
    if (nv_lib)
        dlclose(nv_lib);
    nv_lib = NULL;
    nv_tried = false;
    memset(&nv_fn, 0, sizeof(nv_fn));
    pthread_mutex_unlock(&nv_lock);
}

/* Sets *log (when wanted) to a new copy of a formatted message; returns rc. */
static int nv_fail(char **log, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int nv_fail(char **log, int rc, const char *fmt, ...) {
    if (log) {
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        *log = pg_strdup(buf);
    }
    return rc;
}

int cu_nvrtc_compile(const char *src, const char *name, int sm, char **log, void **cubin,
                     size_t *len) {
    *cubin = NULL;
    *len = 0;
    if (log)
        *log = NULL;
    const cu_nvrtc_t *nv = cu_nvrtc();
    if (!nv)
        return nv_fail(log, -PG_ENO_DEVICE, "%s", cu_nvrtc_error());
    if (sm < 10 || sm > 999)
        return nv_fail(log, -PG_EINTERNAL, "%s: architecture sm_%d is not valid", name, sm);

    char arch[40];
    snprintf(arch, sizeof(arch), "--gpu-architecture=sm_%d", sm);
    const char *opts[] = {arch, "-default-device", "--fmad=false"};
    nvrtcProgram prog;
    nvrtcResult r = nv->nvrtcCreateProgram(&prog, src, name, 0, NULL, NULL);
    if (r != NVRTC_SUCCESS)
        return nv_fail(log, r == NVRTC_ERROR_OUT_OF_MEMORY ? -PG_EOUT_OF_MEMORY : -PG_EINTERNAL,
                       "nvrtcCreateProgram(%s): %s", name, nv->nvrtcGetErrorString(r));
    int rc = 0;
    nvrtcResult cr = nv->nvrtcCompileProgram(prog, (int)(sizeof(opts) / sizeof(opts[0])), opts);

    /* The log, also (above all) when compiling failed. */
    size_t loglen = 0;
    if (log && nv->nvrtcGetProgramLogSize(prog, &loglen) == NVRTC_SUCCESS) {
        *log = pg_malloc(loglen ? loglen : 1);
        if (!*log) {
            rc = -PG_EOUT_OF_MEMORY;
            goto out_destroy;
        }
        (*log)[0] = '\0';
        if (loglen && nv->nvrtcGetProgramLog(prog, *log) != NVRTC_SUCCESS)
            (*log)[0] = '\0';
    }
    if (cr != NVRTC_SUCCESS) {
        if (log && (!*log || !**log)) {
            pg_free(*log);
            *log = NULL;
            nv_fail(log, 0, "%s: %s", name, nv->nvrtcGetErrorString(cr));
        }
        rc = cr == NVRTC_ERROR_OUT_OF_MEMORY ? -PG_EOUT_OF_MEMORY : -PG_EINTERNAL;
        goto out_destroy;
    }
    size_t n = 0;
    if ((r = nv->nvrtcGetCUBINSize(prog, &n)) != NVRTC_SUCCESS || n == 0) {
        rc = -PG_EINTERNAL;
        goto out_log;
    }
    void *buf = pg_malloc(n);
    if (!buf) {
        rc = -PG_EOUT_OF_MEMORY;
        goto out_destroy;
    }
    if ((r = nv->nvrtcGetCUBIN(prog, buf)) != NVRTC_SUCCESS) {
        pg_free(buf);
        rc = -PG_EINTERNAL;
        goto out_log;
    }
    *cubin = buf;
    *len = n;
    goto out_destroy;

out_log: /* a failure after a successful compile: the log says which call failed */
    if (log) {
        pg_free(*log);
        *log = NULL;
        nv_fail(log, 0, "%s: no cubin: %s", name,
                r != NVRTC_SUCCESS ? nv->nvrtcGetErrorString(r) : "empty");
    }
out_destroy:
    nv->nvrtcDestroyProgram(&prog);
    if (rc && log && !*log)
        nv_fail(log, 0, "%s: %s", name, rc == -PG_EOUT_OF_MEMORY ? "out of memory" : "failed");
    return rc;
}
