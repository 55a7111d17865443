/*
 * mem.c - budgeted client data and counted internal allocations.
 *
 * The budget is one atomic counter: mem_reserve() adds with a compare-and-swap loop so that two
 * threads racing for the last bytes cannot both win. Internal blocks carry a 16-byte header with
 * their size (16 keeps the payload aligned for any scalar type) so pg_free() can count them down.
 */
#include "mem.h"

#include <pthread.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static _Atomic uint64_t budget_limit = UINT64_MAX;
static _Atomic uint64_t budget_used;
static _Atomic uint64_t budget_peak;
static _Atomic uint64_t internal_live;

bool mem_reserve(uint64_t n) {
    uint64_t limit = atomic_load(&budget_limit);
    uint64_t cur = atomic_load(&budget_used);
    do {
        if (n > limit || cur > limit - n)
            return false;
    } while (!atomic_compare_exchange_weak(&budget_used, &cur, cur + n));
    uint64_t now = cur + n, peak = atomic_load(&budget_peak);
    while (now > peak && !atomic_compare_exchange_weak(&budget_peak, &peak, now)) {
    }
    return true;
}

void mem_release(uint64_t n) { atomic_fetch_sub(&budget_used, n); }

/* Blocks this large are 2 MiB aligned and backed by transparent huge pages where the kernel
 * allows it: a fresh 512 MiB put otherwise takes 131072 page faults, which cost as much as moving
 * the bytes through the socket. */
#define HUGE_MIN (4u << 20)
#define HUGE_PAGE (2u << 20)

/* Freed blocks smaller than HUGE_MIN stay in malloc's heaps, up to this much per heap, instead
 * of going back to the kernel (mem_init). */
#define TRIM_BYTES (128u << 20)

void mem_init(uint64_t limit) {
    atomic_store(&budget_limit, limit);
#ifdef __GLIBC__
    /* A training step frees and allocates the same buffers of a few hundred KiB every run. With
     * glibc's defaults (such blocks mapped on their own, the top of a heap given back once a
     * little is free) each came back as fresh pages that the kernel faults in and zeroes: 440
     * page faults per step of the CNN in tests/bench/train.py, most of the step on a host where
     * a fault is costly. Blocks of HUGE_MIN and more have their own cache below. */
    mallopt(M_MMAP_THRESHOLD, (int)HUGE_MIN);
    mallopt(M_TRIM_THRESHOLD, (int)TRIM_BYTES);
#endif
}

/* Freed large blocks kept for reuse. A training step or a benchmark loop allocates the same
 * sizes every run; a fresh block costs a page fault (and the kernel zeroing it) per page, which
 * for a 16 MiB result is as much time as a fused kernel takes to fill it. Blocks are reused only
 * at their exact size; the cache holds at most CACHE_BYTES, oldest out first. */
#define CACHE_SLOTS 16
#define CACHE_BYTES (256ull << 20)
static struct {
    pthread_mutex_t lock;
    void *p[CACHE_SLOTS];
    uint64_t n[CACHE_SLOTS];     /* 0: the slot is empty */
    uint64_t age[CACHE_SLOTS];   /* when it was put back (a counter) */
    uint64_t bytes, clock;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *cache_take(uint64_t n) {
    void *p = NULL;
    pthread_mutex_lock(&cache.lock);
    for (int i = 0; i < CACHE_SLOTS && !p; i++)
        if (cache.n[i] == n) {
            p = cache.p[i];
            cache.n[i] = 0;
            cache.bytes -= n;
        }
    pthread_mutex_unlock(&cache.lock);
    return p;
}

/* Keeps block p of n bytes for reuse, evicting the oldest blocks to make room; frees what does
 * not fit. */
static void cache_put(void *p, uint64_t n) {
    void *evict[CACHE_SLOTS];
    int ne = 0;
    pthread_mutex_lock(&cache.lock);
    while (n <= CACHE_BYTES) {
        int free_slot = -1, oldest = -1;
        for (int i = 0; i < CACHE_SLOTS; i++) {
            if (cache.n[i] == 0 && free_slot < 0)
                free_slot = i;
            if (cache.n[i] && (oldest < 0 || cache.age[i] < cache.age[oldest]))
                oldest = i;
        }
        if (free_slot >= 0 && cache.bytes + n <= CACHE_BYTES) {
            cache.p[free_slot] = p;
            cache.n[free_slot] = n;
            cache.age[free_slot] = ++cache.clock;
            cache.bytes += n;
            p = NULL;
            break;
        }
        if (oldest < 0)
            break;
        evict[ne++] = cache.p[oldest];
        cache.bytes -= cache.n[oldest];
        cache.n[oldest] = 0;
    }
    pthread_mutex_unlock(&cache.lock);
    for (int i = 0; i < ne; i++)
        free(evict[i]);
    free(p);
}

void mem_data_trim(void) {
    pthread_mutex_lock(&cache.lock);
    for (int i = 0; i < CACHE_SLOTS; i++)
        if (cache.n[i]) {
            free(cache.p[i]);
            cache.n[i] = 0;
        }
    cache.bytes = 0;
    pthread_mutex_unlock(&cache.lock);
}

void *mem_data_alloc(uint64_t n) {
    if (n == 0 || n > SIZE_MAX - HUGE_PAGE || !mem_reserve(n))
        return NULL;
    void *p = n >= HUGE_MIN ? cache_take(n) : NULL;
    if (p)
        return p;
    size_t align = n >= HUGE_MIN ? HUGE_PAGE : 64;
    if (posix_memalign(&p, align, (size_t)n) != 0) {
        mem_release(n);
        return NULL;
    }
    if (align == HUGE_PAGE)
        madvise(p, (size_t)n & ~(size_t)(HUGE_PAGE - 1), MADV_HUGEPAGE); /* a hint: may fail */
    return p;
}

void mem_data_free(void *p, uint64_t n) {
    if (!p)
        return;
    if (n >= HUGE_MIN)
        cache_put(p, n);
    else
        free(p);
    mem_release(n);
}

uint64_t mem_in_use(void) { return atomic_load(&budget_used); }
uint64_t mem_peak(void) { return atomic_load(&budget_peak); }
uint64_t mem_limit(void) { return atomic_load(&budget_limit); }

/* =============================================================================================
 * Internal allocations
 * =========================================================================================== */

#define HDR 16

void *pg_malloc(size_t n) {
    if (n == 0 || n > SIZE_MAX - HDR)
        return NULL;
    unsigned char *p = malloc(n + HDR);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof(n));
    atomic_fetch_add(&internal_live, n);
    return p + HDR;
}

void *pg_calloc_array(size_t count, size_t size) {
    if (size != 0 && count > SIZE_MAX / size)
        return NULL;
    void *p = pg_malloc(count * size);
    if (p)
        memset(p, 0, count * size);
    return p;
}

void *pg_realloc_array(void *p, size_t count, size_t size) {
    if (!p)
        return pg_calloc_array(count, size);
    if (size != 0 && count > SIZE_MAX / size)
        return NULL;
    size_t n = count * size, old;
    if (n == 0 || n > SIZE_MAX - HDR)
        return NULL;
    unsigned char *base = (unsigned char *)p - HDR;
    memcpy(&old, base, sizeof(old));
    unsigned char *q = realloc(base, n + HDR);
    if (!q)
        return NULL;
    memcpy(q, &n, sizeof(n));
    atomic_fetch_add(&internal_live, n);
    atomic_fetch_sub(&internal_live, old);
    return q + HDR;
}

char *pg_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = pg_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

void pg_free(void *p) {
    if (!p)
        return;
    unsigned char *base = (unsigned char *)p - HDR;
    size_t n;
    memcpy(&n, base, sizeof(n));
    atomic_fetch_sub(&internal_live, n);
#ifndef NDEBUG
    memset(p, 0xdd, n); /* trash freed content so a use-after-free reads garbage, not old data */
#endif
    free(base);
}

uint64_t pg_malloc_live(void) { return atomic_load(&internal_live); }
