/*
 * tensor.h - a dense tensor held by the daemon: dtype, shape and 64-byte-aligned storage.
 *
 * Tensors are reference counted because more than one party can hold one at a time: the session
 * that names it by handle, and a reply still being written to a socket after the client freed the
 * handle. The storage is a block of client data (mem_data_alloc) reserved against --max-memory;
 * a put's tensor adopts the frame buffer it arrived in, so its data is never copied.
 */
#ifndef PG_TENSOR_H
#define PG_TENSOR_H

#include "../protocol/proto.h"

#include <stdatomic.h>

typedef struct tensor {
    atomic_int refs;                 /* owners; the last unref frees */
    pg_dtype_t dtype;                /* element type */
    int rank;                        /* 0 to PROTO_MAX_RANK */
    int64_t shape[PROTO_MAX_RANK];   /* dims, C order */
    uint64_t numel;                  /* product of shape */
    uint64_t nbytes;                 /* numel * itemsize */
    uint8_t *data;                   /* nbytes bytes, 64-byte aligned; NULL when nbytes == 0 */
    void *block;                     /* the mem_data_alloc block that holds data (owned) */
    uint64_t block_bytes;            /* its reserved size (device tensors: nbytes) */
    int device;                      /* TENSOR_HOST, or the CUDA device the storage is on */
    uint64_t dptr;                   /* device tensors: the device buffer (a CUdeviceptr);
                                      * data and block are NULL then */
} tensor_t;

#define TENSOR_HOST (-1)

/* Returns a new tensor with one reference and uninitialised storage, or NULL when the memory
 * budget or the system refuses. Unref with tensor_unref(). */
tensor_t *tensor_new(pg_dtype_t dtype, int rank, const int64_t *shape, uint64_t numel);

/* Returns a new tensor with one reference whose data lives at `data` inside `block` (a
 * mem_data_alloc block of block_bytes). Takes ownership of block, also on failure (NULL). */
tensor_t *tensor_adopt(pg_dtype_t dtype, int rank, const int64_t *shape, uint64_t numel,
                       void *block, uint64_t block_bytes, uint8_t *data);

/* Returns a new tensor with one reference and uninitialised storage on CUDA device dev
 * (kernels/cuda/devmem.h: outside --max-memory, which budgets host memory), or NULL with err
 * filled (out_of_memory when the device is full). Unref with tensor_unref(). Without the CUDA
 * backend it always fails with no_device. */
tensor_t *tensor_new_cuda(int dev, pg_dtype_t dtype, int rank, const int64_t *shape,
                          uint64_t numel, proto_err_t *err);

/* Adds a reference; returns t. */
tensor_t *tensor_ref(tensor_t *t);
/* Drops a reference; frees the tensor and gives its bytes back to the budget at zero. */
void tensor_unref(tensor_t *t);

/* Tensors alive now, all sessions (for stats). */
uint64_t tensor_live(void);

#endif /* PG_TENSOR_H */
