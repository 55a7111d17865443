/*
 * copy.c - streams and staged host <-> device copies (copy.h).
 *
 * A "stage" is two pinned buffers and an event for each. Stages are taken from a per-device
 * free list for the length of one copy and put back after it, so concurrent copies (two
 * sessions) each have their own and never wait for one another on the host.
 */
#include "copy.h"

#include "../../server/mem.h"

#include <pthread.h>
#include <string.h>

typedef struct stage {
    struct stage *next;         /* the free list */
    void *buf[2];               /* pinned, CUDA_STAGE_BYTES each */
    CUevent done[2];            /* recorded after the DMA that reads or fills buf[i] */
    bool pending[2];            /* done[i] was recorded and not waited for */
} stage_t;

static struct {
    pthread_mutex_t lock;
    stage_t *free[CUDA_MAX_DEVICES];
} stages = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void stage_free(stage_t *st) {
    const cuda_driver_t *d = cuda_driver();
    for (int i = 0; i < 2; i++) {
        if (st->buf[i])
            d->cuMemFreeHost(st->buf[i]);
        if (st->done[i])
            d->cuEventDestroy(st->done[i]);
    }
    pg_free(st);
}

/* Takes an idle stage of device dev (whose context is current) or makes one. */
static int stage_take(int dev, stage_t **out, proto_err_t *err) {
    pthread_mutex_lock(&stages.lock);
    stage_t *st = stages.free[dev];
    if (st)
        stages.free[dev] = st->next;
    pthread_mutex_unlock(&stages.lock);
    if (st) {
        *out = st;
        return 0;
    }
    const cuda_driver_t *d = cuda_driver();
    if (!(st = pg_calloc_array(1, sizeof(*st))))
        return proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a staging buffer");
    CUresult r = CUDA_SUCCESS;
    for (int i = 0; i < 2 && r == CUDA_SUCCESS; i++) {
        r = d->cuMemHostAlloc(&st->buf[i], CUDA_STAGE_BYTES, 0);
        if (r == CUDA_SUCCESS)
            r = d->cuEventCreate(&st->done[i], CU_EVENT_DISABLE_TIMING);
    }
    if (r != CUDA_SUCCESS) {
        stage_free(st);
        return cuda_fail(err, dev, r, "allocating a pinned staging buffer");
    }
    *out = st;
    return 0;
}

static void stage_put(int dev, stage_t *st) {
    pthread_mutex_lock(&stages.lock);
    st->next = stages.free[dev];
    stages.free[dev] = st;
    pthread_mutex_unlock(&stages.lock);
}

/* Waits until buffer i of st is free (its last DMA finished). */
static CUresult stage_wait(stage_t *st, int i) {
    if (!st->pending[i])
        return CUDA_SUCCESS;
    st->pending[i] = false;
    return cuda_driver()->cuEventSynchronize(st->done[i]);
}

/* Bytes of the chunk of an n-byte copy that starts at off. */
static size_t chunk_len(uint64_t n, uint64_t off) {
    return n - off < CUDA_STAGE_BYTES ? (size_t)(n - off) : CUDA_STAGE_BYTES;
}

int cuda_stream_create(int dev, CUstream *s, proto_err_t *err) {
    int rc = cuda_enter(dev, err);
    if (rc)
        return rc;
    CUresult r = cuda_driver()->cuStreamCreate(s, CU_STREAM_NON_BLOCKING);
    return r == CUDA_SUCCESS ? 0 : cuda_fail(err, dev, r, "cuStreamCreate");
}

void cuda_stream_destroy(int dev, CUstream s) {
    proto_err_t e;
    if (!s || cuda_enter(dev, &e) != 0)
        return;
    cuda_driver()->cuStreamSynchronize(s);
    cuda_driver()->cuStreamDestroy(s);
}

int cuda_stream_sync(int dev, CUstream s, proto_err_t *err) {
    int rc = cuda_enter(dev, err);
    if (rc)
        return rc;
    CUresult r = cuda_driver()->cuStreamSynchronize(s);
    return r == CUDA_SUCCESS ? 0 : cuda_fail(err, dev, r, "a kernel or copy on its stream");
}

int cuda_copy_h2d(int dev, CUstream s, CUdeviceptr dst, const void *src, uint64_t n,
                  proto_err_t *err) {
    if (n == 0)
        return 0;
    stage_t *st = NULL;
    int rc = cuda_enter(dev, err);
    if (rc || (rc = stage_take(dev, &st, err)))
        return rc;
    const cuda_driver_t *d = cuda_driver();
    CUresult r = CUDA_SUCCESS;
    const char *what = "cuMemcpyHtoDAsync";
    for (uint64_t off = 0, k = 0; off < n && r == CUDA_SUCCESS; off += CUDA_STAGE_BYTES, k++) {
        int i = (int)(k & 1);
        size_t len = chunk_len(n, off);
        if ((r = stage_wait(st, i)) != CUDA_SUCCESS) {
            what = "an earlier copy on its stream";
            break;
        }
        memcpy(st->buf[i], (const uint8_t *)src + off, len);
        if ((r = d->cuMemcpyHtoDAsync(dst + off, st->buf[i], len, s)) == CUDA_SUCCESS &&
            (r = d->cuEventRecord(st->done[i], s)) == CUDA_SUCCESS)
            st->pending[i] = true;
    }
    /* The stage goes back only once both DMAs have read their buffers. */
    for (int i = 0; i < 2; i++) {
        CUresult w = stage_wait(st, i);
        if (r == CUDA_SUCCESS && w != CUDA_SUCCESS) {
            r = w;
            what = "a copy on its stream";
        }
    }
    stage_put(dev, st);
    return r == CUDA_SUCCESS ? 0 : cuda_fail(err, dev, r, what);
}

int cuda_copy_d2h(int dev, CUstream s, void *dst, CUdeviceptr src, uint64_t n,
                  proto_err_t *err) {
    if (n == 0)
        return 0;
    stage_t *st = NULL;
    int rc = cuda_enter(dev, err);
    if (rc || (rc = stage_take(dev, &st, err)))
        return rc;
    const cuda_driver_t *d = cuda_driver();
    CUresult r = CUDA_SUCCESS;
    const char *what = "cuMemcpyDtoHAsync";
    uint64_t nchunks = (n + CUDA_STAGE_BYTES - 1) / CUDA_STAGE_BYTES;
    /* Chunk k + 1's DMA is issued before chunk k is copied out of its buffer. */
    for (uint64_t k = 0; k <= nchunks && r == CUDA_SUCCESS; k++) {
        if (k < nchunks) {
            int i = (int)(k & 1);
            uint64_t off = k * CUDA_STAGE_BYTES;
            size_t len = chunk_len(n, off);
            if ((r = d->cuMemcpyDtoHAsync(st->buf[i], src + off, len, s)) == CUDA_SUCCESS &&
                (r = d->cuEventRecord(st->done[i], s)) == CUDA_SUCCESS)
                st->pending[i] = true;
        }
        if (k > 0 && r == CUDA_SUCCESS) {
            int i = (int)((k - 1) & 1);
            uint64_t off = (k - 1) * CUDA_STAGE_BYTES;
            size_t len = chunk_len(n, off);
            if ((r = stage_wait(st, i)) != CUDA_SUCCESS)
                what = "a copy on its stream";
            else
                memcpy((uint8_t *)dst + off, st->buf[i], len);
        }
    }
    for (int i = 0; i < 2; i++)
        stage_wait(st, i);
    stage_put(dev, st);
    return r == CUDA_SUCCESS ? 0 : cuda_fail(err, dev, r, what);
}

int cuda_copy_d2d(int dev, CUstream s, CUdeviceptr dst, CUdeviceptr src, uint64_t n,
                  proto_err_t *err) {
    if (n == 0)
        return 0;
    int rc = cuda_enter(dev, err);
    if (rc)
        return rc;
    CUresult r = cuda_driver()->cuMemcpyDtoDAsync(dst, src, n, s);
    if (r != CUDA_SUCCESS)
        return cuda_fail(err, dev, r, "cuMemcpyDtoDAsync");
    return cuda_stream_sync(dev, s, err);
}

void cuda_copy_shutdown(void) {
    for (int dev = 0; dev < cuda_device_count(); dev++) {
        proto_err_t e;
        pthread_mutex_lock(&stages.lock);
        stage_t *st = stages.free[dev];
        stages.free[dev] = NULL;
        pthread_mutex_unlock(&stages.lock);
        if (st && cuda_enter(dev, &e) != 0)
            continue;
        while (st) {
            stage_t *next = st->next;
            stage_free(st);
            st = next;
        }
    }
}
