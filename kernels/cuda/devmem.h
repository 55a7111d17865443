/*
 * devmem.h - a GPU's context and memory: the caching device allocator, and CUDA errors turned
 * into the daemon's error replies.
 *
 * cuMemAlloc and cuMemFree synchronize the device and take a millisecond or more, while a training
 * step allocates and frees the same sizes every step. So freed blocks are kept, per device, in
 * lists by rounded size and handed out again (as PyTorch's caching allocator does); only when
 * the driver runs out of memory are the kept blocks really freed, and the allocation tried once
 * more. Sizes are rounded to 512 bytes below 1 MiB and to 2 MiB above, so that a block kept for
 * one size serves the nearby ones too:
 *
 *   step 1: alloc 4000 B -> 4096 B block (cuMemAlloc)   free -> kept in the 4096 list
 *   step 2: alloc 3990 B -> the kept 4096 B block         (no driver call)
 *
 * Every function here may be called from any thread: each enters the device's primary context
 * itself (cuda_enter), and each device's lists have their own lock.
 */
#ifndef PG_CUDA_DEVMEM_H
#define PG_CUDA_DEVMEM_H

#include "../../protocol/proto.h"
#include "load.h"

#include <stdbool.h>
#include <stdint.h>

/* Turns a failed driver call into an error reply: CUDA_ERROR_OUT_OF_MEMORY is out_of_memory,
 * anything else internal, the message naming the device, what was being done and the driver's
 * error name ("cuda:0: cuMemAlloc of 8388608 bytes failed: CUDA_ERROR_ILLEGAL_ADDRESS").
 * Returns the negative code. */
int cuda_fail(proto_err_t *err, int dev, CUresult r, const char *what);

/* Makes device dev's primary context current on the calling thread, retaining it on first use.
 * Returns 0, or a negative PG_E* with err filled. */
int cuda_enter(int dev, proto_err_t *err);

/* Allocates at least n (> 0) bytes on device dev, 256-byte aligned, from the kept blocks or the
 * driver. Returns 0 with *ptr set, or -PG_EOUT_OF_MEMORY (the device is full even after the
 * kept blocks were released) / -PG_EINTERNAL, with err filled. Free with cuda_mem_free(dev, ptr,
 * n) with the same n. */
int cuda_mem_alloc(int dev, uint64_t n, CUdeviceptr *ptr, proto_err_t *err);

/* Gives a block back (kept for reuse). ptr 0 is ignored. */
void cuda_mem_free(int dev, CUdeviceptr ptr, uint64_t n);

/* Between these two calls, blocks the calling thread frees are held back instead of being kept
 * for reuse: a run's kernels are queued on its session's stream and may still read a buffer the
 * run has already dropped, and a kept block can go to another session whose stream does not wait
 * for ours. cuda_mem_defer_end (after the stream is synchronized) returns them. */
void cuda_mem_defer_begin(void);
void cuda_mem_defer_end(void);

/* Frees every kept block of every device (at shutdown, or to hand memory back). */
void cuda_mem_trim(void);

/* Device dev's counters: bytes in tensors now, bytes kept for reuse, the most ever in use. */
void cuda_mem_stats(int dev, uint64_t *in_use, uint64_t *cached, uint64_t *peak);

/* Releases the primary contexts retained (at shutdown, after cuda_mem_trim). */
void cuda_ctx_release_all(void);

#endif /* PG_CUDA_DEVMEM_H */
