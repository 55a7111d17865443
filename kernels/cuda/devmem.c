/*
 * devmem.c - primary contexts, the caching device allocator and CUDA error replies (devmem.h).
 *
 * The kept blocks of a device are one array of (rounded size, pointer), searched from the end
 * (the most recently freed block of a size is the one most likely still in the GPU's L2). A
 * training step keeps a few dozen sizes, so a scan is cheaper than any structure around it.
 */
#include "devmem.h"

#include "../../server/log.h"
#include "../../server/mem.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define DM_SMALL (1ull << 20)   /* up to here sizes round to DM_SMALL_Q ... */
#define DM_SMALL_Q 512ull
#define DM_LARGE_Q (2ull << 20) /* ... and above it to 2 MiB */

typedef struct {
    uint64_t n;                 /* rounded size */
    CUdeviceptr p;
} dm_block_t;

typedef struct {
    pthread_mutex_t lock;
    CUcontext ctx;              /* the primary context, retained on first use (NULL before) */
    dm_block_t *kept;           /* freed blocks kept for reuse (pg_malloc'd) */
    size_t nkept, cap;
    uint64_t in_use, cached, peak;
} dm_dev_t;

static dm_dev_t devs[CUDA_MAX_DEVICES];
static pthread_once_t devs_once = PTHREAD_ONCE_INIT;

static void devs_init(void) {
    for (int i = 0; i < CUDA_MAX_DEVICES; i++)
        pthread_mutex_init(&devs[i].lock, NULL);
}

static dm_dev_t *dm_dev(int dev) {
    pthread_once(&devs_once, devs_init);
    return &devs[dev];
}

static uint64_t dm_round(uint64_t n) {
    uint64_t q = n <= DM_SMALL ? DM_SMALL_Q : DM_LARGE_Q;
    return (n + q - 1) / q * q;
}

int cuda_fail(proto_err_t *err, int dev, CUresult r, const char *what) {
    return proto_fail(err, r == CUDA_ERROR_OUT_OF_MEMORY ? PG_EOUT_OF_MEMORY : PG_EINTERNAL,
                      "cuda:%d: %s failed: %s", dev, what, cuda_error_name(r));
}

int cuda_enter(int dev, proto_err_t *err) {
    const cuda_driver_t *d = cuda_driver();
    if (!d || dev < 0 || dev >= cuda_device_count())
        return proto_fail(err, PG_ENO_DEVICE, "device 'cuda:%d' is not available", dev);
    dm_dev_t *m = dm_dev(dev);
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&m->lock);
    if (!m->ctx) {
        CUdevice cd;
        if ((r = d->cuDeviceGet(&cd, dev)) == CUDA_SUCCESS)
            r = d->cuDevicePrimaryCtxRetain(&m->ctx, cd);
        if (r != CUDA_SUCCESS)
            m->ctx = NULL;
    }
    CUcontext ctx = m->ctx;
    pthread_mutex_unlock(&m->lock);
    if (r != CUDA_SUCCESS)
        return cuda_fail(err, dev, r, "retaining the primary context");
    if ((r = d->cuCtxSetCurrent(ctx)) != CUDA_SUCCESS)
        return cuda_fail(err, dev, r, "cuCtxSetCurrent");
    return 0;
}

/* Frees every kept block of m; called with its lock held and its context current. */
static void dm_release_kept(dm_dev_t *m) {
    const cuda_driver_t *d = cuda_driver();
    for (size_t i = 0; i < m->nkept; i++)
        d->cuMemFree(m->kept[i].p);
    m->nkept = 0;
    m->cached = 0;
}

int cuda_mem_alloc(int dev, uint64_t n, CUdeviceptr *ptr, proto_err_t *err) {
    *ptr = 0;
    int rc = cuda_enter(dev, err);
    if (rc)
        return rc;
    if (n == 0 || n > UINT64_MAX - DM_LARGE_Q)
        return proto_fail(err, PG_ETOO_LARGE, "cuda:%d: cannot allocate %llu bytes", dev,
                          (unsigned long long)n);
    uint64_t size = dm_round(n);
    dm_dev_t *m = dm_dev(dev);
    const cuda_driver_t *d = cuda_driver();
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&m->lock);
    for (size_t i = m->nkept; i-- > 0;)
        if (m->kept[i].n == size) {
            *ptr = m->kept[i].p;
            m->kept[i] = m->kept[--m->nkept];
            m->cached -= size;
            break;
        }
    if (!*ptr) {
        r = d->cuMemAlloc(ptr, (size_t)size);
        if (r == CUDA_ERROR_OUT_OF_MEMORY && m->nkept) {
            /* The kept blocks are what fills the device: give them back and try again. */
            log_info("cuda:%d: out of memory for %llu bytes; releasing %llu cached bytes", dev,
                     (unsigned long long)size, (unsigned long long)m->cached);
            dm_release_kept(m);
            r = d->cuMemAlloc(ptr, (size_t)size);
        }
    }
    if (r == CUDA_SUCCESS) {
        m->in_use += size;
        if (m->in_use > m->peak)
            m->peak = m->in_use;
    }
    uint64_t used = m->in_use;
    pthread_mutex_unlock(&m->lock);
    if (r != CUDA_SUCCESS) {
        *ptr = 0;
        if (r == CUDA_ERROR_OUT_OF_MEMORY)
            return proto_fail(err, PG_EOUT_OF_MEMORY,
                              "cuda:%d: out of device memory for %llu bytes (%llu bytes in "
                              "tensors)", dev, (unsigned long long)n, (unsigned long long)used);
        char what[80];
        snprintf(what, sizeof(what), "cuMemAlloc of %llu bytes", (unsigned long long)size);
        return cuda_fail(err, dev, r, what);
    }
    return 0;
}

/* The blocks a thread frees while a run's work may be pending (cuda_mem_defer_begin). */
typedef struct {
    bool on;
    dm_block_t *b;
    int *dev;
    size_t n, cap;
} dm_defer_t;
static _Thread_local dm_defer_t defer;

static void dm_keep(int dev, CUdeviceptr ptr, uint64_t n);

void cuda_mem_defer_begin(void) { defer.on = true; }

void cuda_mem_defer_end(void) {
    defer.on = false;
    for (size_t i = 0; i < defer.n; i++)
        dm_keep(defer.dev[i], defer.b[i].p, defer.b[i].n);
    pg_free(defer.b);
    pg_free(defer.dev);
    memset(&defer, 0, sizeof(defer));
}

void cuda_mem_free(int dev, CUdeviceptr ptr, uint64_t n) {
    if (!ptr)
        return;
    if (defer.on) {
        if (defer.n == defer.cap) {
            size_t cap = defer.cap ? defer.cap * 2 : 32;
            dm_block_t *b = pg_realloc_array(defer.b, cap, sizeof(*b));
            if (b)
                defer.b = b;
            int *d = b ? pg_realloc_array(defer.dev, cap, sizeof(*d)) : NULL;
            if (d)
                defer.dev = d;
            if (!b || !d) { /* no room to hold it back: wait for the device, then keep it */
                proto_err_t e;
                if (cuda_enter(dev, &e) == 0)
                    cuda_driver()->cuCtxSynchronize();
                dm_keep(dev, ptr, n);
                return;
            }
            defer.cap = cap;
        }
        defer.b[defer.n] = (dm_block_t){n, ptr};
        defer.dev[defer.n++] = dev;
        return;
    }
    dm_keep(dev, ptr, n);
}

/* Puts a block of n requested bytes in the device's kept lists. */
static void dm_keep(int dev, CUdeviceptr ptr, uint64_t n) {
    uint64_t size = dm_round(n);
    dm_dev_t *m = dm_dev(dev);
    pthread_mutex_lock(&m->lock);
    m->in_use -= size;
    if (m->nkept == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        dm_block_t *k = pg_realloc_array(m->kept, cap, sizeof(*k));
        if (!k) { /* cannot keep it: free it for real */
            pthread_mutex_unlock(&m->lock);
            proto_err_t e;
            if (cuda_enter(dev, &e) == 0)
                cuda_driver()->cuMemFree(ptr);
            return;
        }
        m->kept = k;
        m->cap = cap;
    }
    m->kept[m->nkept++] = (dm_block_t){size, ptr};
    m->cached += size;
    pthread_mutex_unlock(&m->lock);
}

void cuda_mem_trim(void) {
    for (int i = 0; i < cuda_device_count(); i++) {
        dm_dev_t *m = dm_dev(i);
        proto_err_t e;
        pthread_mutex_lock(&m->lock);
        bool have = m->ctx != NULL;
        pthread_mutex_unlock(&m->lock);
        if (!have || cuda_enter(i, &e) != 0)
            continue;
        pthread_mutex_lock(&m->lock);
        dm_release_kept(m);
        pg_free(m->kept);
        m->kept = NULL;
        m->cap = 0;
        pthread_mutex_unlock(&m->lock);
    }
}

void cuda_mem_stats(int dev, uint64_t *in_use, uint64_t *cached, uint64_t *peak) {
    dm_dev_t *m = dm_dev(dev);
    pthread_mutex_lock(&m->lock);
    *in_use = m->in_use;
    *cached = m->cached;
    *peak = m->peak;
    pthread_mutex_unlock(&m->lock);
}

void cuda_ctx_release_all(void) {
    const cuda_driver_t *d = cuda_driver();
    for (int i = 0; d && i < cuda_device_count(); i++) {
        dm_dev_t *m = dm_dev(i);
        pthread_mutex_lock(&m->lock);
        if (m->ctx) {
            CUdevice cd;
            if (d->cuDeviceGet(&cd, i) == CUDA_SUCCESS)
                d->cuDevicePrimaryCtxRelease(cd);
            m->ctx = NULL;
        }
        pthread_mutex_unlock(&m->lock);
    }
}
