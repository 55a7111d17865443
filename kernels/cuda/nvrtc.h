/*
 * nvrtc.h - NVRTC, the CUDA runtime compiler, loaded with dlopen on first use.
 *
 * NVRTC turns CUDA C++ source into a cubin for one GPU architecture. It needs no driver and no
 * GPU, so this part of the CUDA backend stands alone: the daemon uses it through the backend
 * (load.c), and tests compile generated kernels with it on machines without a GPU.
 *
 * Nothing here is linked against NVRTC at build time; the toolkit's nvrtc.h gives only the
 * function types. The library is looked up as libnvrtc.so.13, then libnvrtc.so (the loader's
 * search path), then in the toolkit's lib64 directory found at configure time and in
 * /usr/local/cuda/lib64. When none loads, cu_nvrtc() returns NULL and cu_nvrtc_error() says why.
 *
 *   char *log = NULL; void *cubin = NULL; size_t n;
 *   if (cu_nvrtc_compile(src, "pg_k_0123", 80, &log, &cubin, &n) == 0)
 *       ... cuModuleLoadData(&mod, cubin) ...
 *   pg_free(log); pg_free(cubin);
 */
#ifndef PG_CUDA_NVRTC_H
#define PG_CUDA_NVRTC_H

#include <nvrtc.h>
#include <stddef.h>

/* The toolkit's library folder found at configure time (CMake defines it): the last place the
 * loaders look, before /usr/local/cuda/lib64. */
#ifndef PG_CUDA_TOOLKIT_LIB
#define PG_CUDA_TOOLKIT_LIB "/usr/local/cuda/lib64"
#endif

/* XX(function): every NVRTC function the backend calls. The field of cu_nvrtc_t has the
 * function's own name and the exact type of its declaration in nvrtc.h. */
#define CU_NVRTC_FN_MAP(XX)                                                                        \
    XX(nvrtcVersion)                                                                               \
    XX(nvrtcGetErrorString)                                                                        \
    XX(nvrtcCreateProgram)                                                                         \
    XX(nvrtcCompileProgram)                                                                        \
    XX(nvrtcGetProgramLogSize)                                                                     \
    XX(nvrtcGetProgramLog)                                                                         \
    XX(nvrtcGetCUBINSize)                                                                          \
    XX(nvrtcGetCUBIN)                                                                              \
    XX(nvrtcDestroyProgram)

/* The resolved NVRTC functions. */
typedef struct {
#define XX(fn) __typeof__(fn) *fn;
    CU_NVRTC_FN_MAP(XX)
#undef XX
} cu_nvrtc_t;

/* Returns the NVRTC function table, loading the library on the first call (thread-safe), or
 * NULL when it cannot be loaded (cu_nvrtc_error() says why). The table is borrowed and stays
 * valid until cu_nvrtc_unload(). Needs no driver and no GPU. */
const cu_nvrtc_t *cu_nvrtc(void);

/* Why cu_nvrtc() returned NULL, e.g. "libnvrtc.so.13 not found"; "" when it loaded. A static
 * string. */
const char *cu_nvrtc_error(void);

/* The loaded library's file name and version ("libnvrtc.so.13", 13, 0). Returns 0, or
 * -PG_ENO_DEVICE when NVRTC is not loaded. Any pointer may be NULL. */
int cu_nvrtc_info(const char **lib, int *major, int *minor);

/* Compiles CUDA C++ source src (NUL-terminated; name is the program's name, used in messages)
 * to a cubin for architecture sm_<sm> (80 for sm_80). The options are
 * --gpu-architecture=sm_<sm>, -default-device (functions without a qualifier, such as those of
 * kernels/pg_math.h, are device functions) and --fmad=false (no contraction into FMA, so a kernel
 * rounds as the interpreter and the C kernels do).
 *
 * On success returns 0 with *cubin a new buffer of *len bytes (free with pg_free) and, when log is
 * not NULL, *log the compiler's log as a new NUL-terminated string (free with pg_free; "" when
 * it printed nothing). On failure *cubin is NULL, *len 0, and *log (when asked for) a new string
 * saying why; returns -PG_ENO_DEVICE when NVRTC cannot be loaded, -PG_EINTERNAL when the source
 * does not compile (the log has NVRTC's messages) or NVRTC fails, -PG_EOUT_OF_MEMORY. */
int cu_nvrtc_compile(const char *src, const char *name, int sm, char **log, void **cubin,
                     size_t *len);

/* Closes the library (at shutdown, after every compile has returned); a later cu_nvrtc() loads
 * it again. */
void cu_nvrtc_unload(void);

#endif /* PG_CUDA_NVRTC_H */
