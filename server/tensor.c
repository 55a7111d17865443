/*
 * tensor.c - creation and reference counting of tensors.
 */
#include "tensor.h"

#include "mem.h"

#ifdef PICOGRAD_HAVE_CUDA
#include "../kernels/cuda/devmem.h"
#endif

#include <string.h>

static atomic_uint_fast64_t live_tensors;

static tensor_t *tensor_alloc(pg_dtype_t dtype, int rank, const int64_t *shape, uint64_t numel) {
    tensor_t *t = pg_malloc(sizeof(*t));
    if (!t)
        return NULL;
    memset(t, 0, sizeof(*t));
    atomic_init(&t->refs, 1);
    t->device = TENSOR_HOST;
    t->dtype = dtype;
    t->rank = rank;
    if (rank > 0)
        memcpy(t->shape, shape, (size_t)rank * sizeof(shape[0]));
    t->numel = numel;
    t->nbytes = numel * proto_dtype_size(dtype);
    atomic_fetch_add(&live_tensors, 1);
    return t;
}

tensor_t *tensor_new(pg_dtype_t dtype, int rank, const int64_t *shape, uint64_t numel) {
    tensor_t *t = tensor_alloc(dtype, rank, shape, numel);
    if (!t || t->nbytes == 0)
        return t;
    t->block = mem_data_alloc(t->nbytes);
    if (!t->block) {
        tensor_unref(t);
        return NULL;
    }
    t->block_bytes = t->nbytes;
    t->data = t->block;
    return t;
}

tensor_t *tensor_adopt(pg_dtype_t dtype, int rank, const int64_t *shape, uint64_t numel,
                       void *block, uint64_t block_bytes, uint8_t *data) {
    tensor_t *t = tensor_alloc(dtype, rank, shape, numel);
    if (!t) {
        mem_data_free(block, block_bytes);
        return NULL;
    }
    t->block = block;
    t->block_bytes = block_bytes;
    t->data = t->nbytes ? data : NULL;
    return t;
}

tensor_t *tensor_new_cuda(int dev, pg_dtype_t dtype, int rank, const int64_t *shape,
                          uint64_t numel, proto_err_t *err) {
#ifdef PICOGRAD_HAVE_CUDA
    tensor_t *t = tensor_alloc(dtype, rank, shape, numel);
    if (!t) {
        proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a tensor");
        return NULL;
    }
    t->device = dev;
    t->block_bytes = t->nbytes;
    CUdeviceptr p = 0;
    if (t->nbytes && cuda_mem_alloc(dev, t->nbytes, &p, err) != 0) {
        t->device = TENSOR_HOST;
        tensor_unref(t);
        return NULL;
    }
    t->dptr = (uint64_t)p;
    return t;
#else
    (void)dtype, (void)rank, (void)shape, (void)numel;
    proto_fail(err, PG_ENO_DEVICE, "device 'cuda:%d' is not available: no CUDA backend", dev);
    return NULL;
#endif
}

tensor_t *tensor_ref(tensor_t *t) {
    atomic_fetch_add(&t->refs, 1);
    return t;
}

void tensor_unref(tensor_t *t) {
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
#ifdef PICOGRAD_HAVE_CUDA
    if (t->device != TENSOR_HOST)
        cuda_mem_free(t->device, (CUdeviceptr)t->dptr, t->nbytes);
    else
#endif
        mem_data_free(t->block, t->block_bytes);
    pg_free(t);
    atomic_fetch_sub(&live_tensors, 1);
}

uint64_t tensor_live(void) { return atomic_load(&live_tensors); }
