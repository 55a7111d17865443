/*
 * jit.h - compiling rendered C kernels with the system compiler, and the kernel cache.
 *
 * A kernel is compiled by `cc -O3 -march=native -shared -fPIC` into a shared object and loaded
 * with dlopen. Compiled kernels are cached in memory (bounded, by name) and on disk under the
 * cache directory, keyed by a hash of (kernel source, compiler identity and flags, CPU
 * features). Disk entries are written to a temporary file and renamed into place (atomic, and
 * safe for two daemons sharing the directory); each .so carries its full key as the string
 * `pg_kernel_key`, so a truncated, corrupted or foreign file is detected on load and rebuilt.
 * Temporary files never look like entries, and those of daemons killed mid-compile are removed
 * by the next jit_init on the directory.
 */
#ifndef PG_JIT_H
#define PG_JIT_H

#include "../codegen/kir.h"

/* Counters since start, reported by `stats`. */
typedef struct {
    uint64_t compiled;        /* kernels built by the compiler */
    uint64_t memory_hits;     /* found already loaded */
    uint64_t disk_hits;       /* loaded from the disk cache */
    double compile_seconds;   /* wall time spent compiling */
} jit_stats_t;

/*
 * Prepares the JIT: cc is the compiler command (e.g. "cc"), cache_dir the disk cache directory
 * (created if missing; NULL disables the disk cache). Probes the compiler by building a tiny
 * kernel; returns 0 when it works, or -1 (after logging a warning) when it does not, in which
 * case jit_available() is false and the daemon uses the interpreter.
 */
int jit_init(const char *cc, const char *cache_dir);
/* True when jit_init found a working compiler. */
bool jit_available(void);
/* Unloads every kernel and frees the caches (at shutdown). */
void jit_shutdown(void);

/*
 * Returns the function named `name` compiled from `src` (from kir_render_c): from memory, from
 * disk, or compiled now (the JIT appends `const char pg_kernel_key[]` to the source it compiles). Thread-safe; concurrent requests for one kernel compile it once.
 * Returns NULL with err filled (PG_EINTERNAL, naming the kernel and the compiler's first error
 * line) when compilation fails.
 */
kir_fn_t jit_get(const char *name, const char *src, proto_err_t *err);

/* A snapshot of the counters. */
jit_stats_t jit_stats(void);

#endif /* PG_JIT_H */
