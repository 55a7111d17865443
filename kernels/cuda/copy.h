/*
 * copy.h - streams, and copies between host memory and a GPU through pinned staging buffers.
 *
 * A copy from ordinary (pageable) host memory cannot run asynchronously: the driver first copies
 * it into page-locked memory of its own. So the daemon keeps, per device, pairs of page-locked
 * (pinned) staging buffers and moves a tensor through them in chunks, two at a time: while the
 * GPU's copy engine takes chunk k from one buffer, the CPU fills the other with chunk k + 1.
 *
 *   host tensor --memcpy--> pinned A --DMA--> device     (chunk 0)
 *               --memcpy--> pinned B --DMA--> device     (chunk 1, while A's DMA runs)
 *               --memcpy--> pinned A (once A's DMA is done: an event says so) ...
 *
 * Every copy is issued on the caller's stream (a session's: server/cudarun.c), so copies and
 * kernels of one session stay in order and two sessions' work overlaps on the GPU. Both functions
 * return once the bytes have arrived.
 */
#ifndef PG_CUDA_COPY_H
#define PG_CUDA_COPY_H

#include "devmem.h"

/* Bytes per staging buffer: large enough that a chunk's DMA (~0.2 ms at 25 GB/s) hides the
 * per-call overhead, small enough that a few sessions copying at once hold little pinned memory. */
#define CUDA_STAGE_BYTES (4u << 20)

/* Creates a stream on device dev (non-blocking with respect to the legacy default stream).
 * Returns 0 or a negative PG_E* with err filled. Destroy with cuda_stream_destroy. */
int cuda_stream_create(int dev, CUstream *s, proto_err_t *err);
/* Waits for everything queued on s, then destroys it. s NULL is ignored. */
void cuda_stream_destroy(int dev, CUstream s);
/* Waits for everything queued on s. Returns 0 or a negative PG_E* (an asynchronous failure of
 * an earlier kernel or copy surfaces here). */
int cuda_stream_sync(int dev, CUstream s, proto_err_t *err);

/* Copies n bytes from host src to device dst on stream s. */
int cuda_copy_h2d(int dev, CUstream s, CUdeviceptr dst, const void *src, uint64_t n,
                  proto_err_t *err);
/* Copies n bytes from device src to host dst on stream s. */
int cuda_copy_d2h(int dev, CUstream s, void *dst, CUdeviceptr src, uint64_t n, proto_err_t *err);
/* Copies n bytes between two buffers of device dev on stream s (returns once done). */
int cuda_copy_d2d(int dev, CUstream s, CUdeviceptr dst, CUdeviceptr src, uint64_t n,
                  proto_err_t *err);

/* Frees every idle staging buffer (at shutdown). */
void cuda_copy_shutdown(void);

#endif /* PG_CUDA_COPY_H */
