/*
 * module.c - NVRTC, the cubin cache and loaded modules (module.h).
 *
 * A cubin file is a header, then the cubin:
 *
 *   "PGCUBIN1" | u32 sm | u32 nvrtc major | u32 nvrtc minor | u32 0 | u64 source hash |
 *   u64 source length | u64 cubin length | cubin bytes
 *
 * Anything that does not match the kernel asked for (another source under the same name, a
 * different NVRTC, a short file) is treated as absent and overwritten.
 */
#include "module.h"

#include "../../server/log.h"
#include "../../server/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MOD_MAGIC "PGCUBIN1"

typedef struct {
    int dev;
    char name[32];
    CUmodule mod;
    CUfunction fn;
} mod_entry_t;

typedef struct {
    char magic[8];
    uint32_t sm, nv_major, nv_minor, zero;
    uint64_t src_hash, src_len, cubin_len;
} mod_header_t;

static struct {
    pthread_mutex_t lock;
    mod_entry_t *e;             /* loaded functions (pg_malloc'd); a daemon loads hundreds */
    size_t n, cap;
    char dir[4096];             /* "<cache dir>/cuda", "" without a disk cache */
    cuda_module_stats_t stats;
} mods = {.lock = PTHREAD_MUTEX_INITIALIZER};

void cuda_module_init(const char *cache_dir) {
    if (!cache_dir)
        return;
    int n = snprintf(mods.dir, sizeof(mods.dir), "%s/cuda", cache_dir);
    mkdir(cache_dir, 0755); /* its parents are the JIT's to make; a failure shows below */
    if (n < 0 || (size_t)n >= sizeof(mods.dir) || (mkdir(mods.dir, 0755) != 0 && errno != EEXIST)) {
        log_warn("cuda: no cubin cache in %s/cuda: %s", cache_dir, strerror(errno));
        mods.dir[0] = '\0';
    }
}

static int dev_sm(int dev) {
    const cuda_device_info_t *di = cuda_device(dev);
    return di ? di->cc_major * 10 + di->cc_minor : 0;
}

static void mod_path(char *out, size_t cap, const char *name, int sm) {
    snprintf(out, cap, "%s/%s.sm%d.cubin", mods.dir, name, sm);
}

/* 64-bit FNV-1a (the kernel name already hashes the source; this guards the file's body). */
static uint64_t mod_hash(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static mod_header_t mod_expect(const char *src, int sm) {
    mod_header_t h;
    memset(&h, 0, sizeof(h));
    memcpy(h.magic, MOD_MAGIC, 8);
    int ma = 0, mi = 0;
    cu_nvrtc_info(NULL, &ma, &mi);
    h.sm = (uint32_t)sm;
    h.nv_major = (uint32_t)ma;
    h.nv_minor = (uint32_t)mi;
    h.src_len = strlen(src);
    h.src_hash = mod_hash(src, (size_t)h.src_len);
    return h;
}

/* Reads a cached cubin matching want; returns a new buffer (pg_free) or NULL. */
static void *mod_read(const char *path, const mod_header_t *want, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    mod_header_t h;
    void *buf = NULL;
    if (fread(&h, sizeof(h), 1, f) != 1 || memcmp(h.magic, want->magic, 8) || h.sm != want->sm ||
        h.nv_major != want->nv_major || h.nv_minor != want->nv_minor ||
        h.src_hash != want->src_hash || h.src_len != want->src_len || h.cubin_len == 0 ||
        h.cubin_len > (256u << 20))
        goto out;
    if (!(buf = pg_malloc((size_t)h.cubin_len)))
        goto out;
    if (fread(buf, 1, (size_t)h.cubin_len, f) != h.cubin_len || fgetc(f) != EOF) {
        pg_free(buf);
        buf = NULL;
        goto out;
    }
    *len = (size_t)h.cubin_len;
out:
    fclose(f);
    if (!buf)
        log_info("cuda: cubin cache entry %s does not match its kernel; rebuilding it", path);
    return buf;
}

/* Writes a cubin through a temporary file renamed into place; failures only cost a rebuild. */
static void mod_write(const char *path, const mod_header_t *want, const void *cubin, size_t len) {
    char tmp[4200];
    static _Atomic unsigned seq;
    snprintf(tmp, sizeof(tmp), "%s/.tmp-%d-%u.cubin", mods.dir, (int)getpid(), seq++);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return;
    mod_header_t h = *want;
    h.cubin_len = len;
    bool ok = fwrite(&h, sizeof(h), 1, f) == 1 && fwrite(cubin, 1, len, f) == len;
    ok = (fflush(f) == 0) & ok;
    ok = (fsync(fileno(f)) == 0) & ok;
    ok = (fclose(f) == 0) & ok;
    if (!ok || rename(tmp, path) != 0) {
        log_warn("cuda: cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

static double mod_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int cuda_function(int dev, const char *name, const char *src, CUfunction *fn, proto_err_t *err) {
    int rc = cuda_enter(dev, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&mods.lock);
    for (size_t i = 0; i < mods.n; i++)
        if (mods.e[i].dev == dev && !strcmp(mods.e[i].name, name)) {
            *fn = mods.e[i].fn;
            mods.stats.memory_hits++;
            pthread_mutex_unlock(&mods.lock);
            return 0;
        }
    /* Compiling under the lock: a kernel another thread is compiling is compiled once. */
    int sm = dev_sm(dev);
    mod_header_t want = mod_expect(src, sm);
    char path[4200] = "";
    void *cubin = NULL;
    size_t len = 0;
    char *log = NULL;
    CUmodule mod = NULL;
    CUresult r;
    if (mods.dir[0]) {
        mod_path(path, sizeof(path), name, sm);
        if ((cubin = mod_read(path, &want, &len)))
            mods.stats.disk_hits++;
    }
    if (!cubin) {
        double t0 = mod_now();
        rc = cu_nvrtc_compile(src, name, sm, &log, &cubin, &len);
        mods.stats.compile_seconds += mod_now() - t0;
        if (rc) {
            const char *l = log ? log : "";
            size_t n = strcspn(l, "\n");
            proto_fail(err, -rc, "cuda:%d: kernel %s does not compile for sm_%d: %.*s", dev,
                       name, sm, (int)(n > 200 ? 200 : n), l);
            goto out;
        }
        mods.stats.compiled++;
        if (path[0])
            mod_write(path, &want, cubin, len);
    }
    const cuda_driver_t *d = cuda_driver();
    if ((r = d->cuModuleLoadData(&mod, cubin)) != CUDA_SUCCESS) {
        rc = cuda_fail(err, dev, r, "cuModuleLoadData");
        goto out;
    }
    if ((r = d->cuModuleGetFunction(fn, mod, name)) != CUDA_SUCCESS) {
        d->cuModuleUnload(mod);
        rc = cuda_fail(err, dev, r, "cuModuleGetFunction");
        goto out;
    }
    if (mods.n == mods.cap) {
        size_t cap = mods.cap ? mods.cap * 2 : 64;
        mod_entry_t *e = pg_realloc_array(mods.e, cap, sizeof(*e));
        if (!e) { /* works now, compiles again next time */
            rc = 0;
            goto out;
        }
        mods.e = e;
        mods.cap = cap;
    }
    mod_entry_t *e = &mods.e[mods.n++];
    e->dev = dev;
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->mod = mod;
    e->fn = *fn;
out:
    pthread_mutex_unlock(&mods.lock);
    pg_free(log);
    pg_free(cubin);
    return rc;
}

cuda_module_stats_t cuda_module_stats(void) {
    pthread_mutex_lock(&mods.lock);
    cuda_module_stats_t s = mods.stats;
    pthread_mutex_unlock(&mods.lock);
    return s;
}

void cuda_module_shutdown(void) {
    pthread_mutex_lock(&mods.lock);
    for (size_t i = 0; i < mods.n; i++) {
        proto_err_t e;
        if (cuda_enter(mods.e[i].dev, &e) == 0)
            cuda_driver()->cuModuleUnload(mods.e[i].mod);
    }
    pg_free(mods.e);
    mods.e = NULL;
    mods.n = mods.cap = 0;
    pthread_mutex_unlock(&mods.lock);
}
