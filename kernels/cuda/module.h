/*
 * module.h - CUDA kernels from source to a launchable function: NVRTC, the cubin cache, modules.
 *
 * A kernel rendered by kernels/codegen/render_cuda.c is compiled by NVRTC for the device's
 * architecture (sm_<major><minor>), loaded into the device's context as a module, and its
 * function looked up. Each step is cached:
 *
 *   memory   (device, name) -> CUfunction: a repeated run launches at once;
 *   disk     <cache dir>/cuda/<name>.sm<NN>.cubin: a restarted daemon loads cubins without NVRTC.
 *
 * The name is a hash of the source (kir_render_cuda), and the disk key adds the architecture and
 * NVRTC's version: a file records all three plus the source's length and hash in a header, so a
 * truncated, corrupted or foreign file is detected and rebuilt. Files are written to a temporary
 * name and renamed into place, so two daemons may share the directory.
 */
#ifndef PG_CUDA_MODULE_H
#define PG_CUDA_MODULE_H

#include "devmem.h"

/* Counters since start (stats' "cuda_kernels"). */
typedef struct {
    uint64_t compiled, memory_hits, disk_hits;
    double compile_seconds;
} cuda_module_stats_t;

/* Sets the cubin cache's directory (its "cuda" subfolder is used; NULL: no disk cache). Call
 * once at start; dir is borrowed for the process's lifetime. */
void cuda_module_init(const char *cache_dir);

/* Returns in *fn device dev's function `name` compiled from `src`, compiling and loading it on
 * first use. Thread-safe (one lock: a kernel is compiled once). Returns 0, or a negative PG_E*
 * with err filled (PG_EINTERNAL with NVRTC's first error line when the source does not compile). */
int cuda_function(int dev, const char *name, const char *src, CUfunction *fn, proto_err_t *err);

cuda_module_stats_t cuda_module_stats(void);

/* Unloads every module (at shutdown, with the contexts still retained). */
void cuda_module_shutdown(void);

#endif /* PG_CUDA_MODULE_H */
