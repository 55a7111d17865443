/*
 * cudarun.h - runs on a GPU: a session's streams, tensors moving between host and device, and
 * the executor of a plan on a CUDA device.
 *
 * The executor walks the same plan as the CPU's (plan.h: the fusion pass decides the steps for
 * both), with values that live on the host or on the device, each moved only when a step needs
 * it where it is not:
 *
 *   kernel step      its inputs made contiguous on the device, its CUDA kernel (the plan's
 *                    cu_src, compiled by NVRTC: kernels/cuda/module.h) launched on the
 *                    session's stream; split reductions' partials combined on the host
 *   matmul           cuBLAS on the operands in place (row-major or transposed matrices)
 *   view primitives  new shape, strides and offset over the same device buffer, no copy
 *   anything else    the reference interpreter on host copies of its inputs (rare primitives:
 *                    gather, scatter, sort, ...); its result stays on the host until a kernel
 *                    or the run's outputs need it on the device
 *
 * Without a GPU (CI), the stand-in driver (tests/unit/fake_libcuda.c) emulates device memory on
 * the host but cannot run kernels; with PICOGRAD_CUDA_HOST_KERNELS=1 in the daemon's environment
 * kernel steps and matmuls then run on the host from host copies of device buffers, so every
 * other path of this file (device tensors, copies, views, outputs, assigns, errors) runs in CI.
 *
 * Threading: a session's requests run one at a time (session.h), so its CUDA state needs no lock.
 */
#ifndef PG_CUDARUN_H
#define PG_CUDARUN_H

#include "../kernels/ref/ref.h"
#include "passes/fuse.h"
#include "plan.h"
#include "session.h"

#include <stdatomic.h>

/* Reads PICOGRAD_CUDA_HOST_KERNELS and tells the planner to render CUDA (call at start, after
 * the devices are loaded). */
void crun_init(void);

/* A new host tensor with t's contents (t on any device; a host t gets a new reference). */
int crun_to_host(sess_t *s, tensor_t *t, tensor_t **out, proto_err_t *err);
/* A tensor on CUDA device dev with t's contents (t already there: a new reference). */
int crun_to_device(sess_t *s, int dev, tensor_t *t, tensor_t **out, proto_err_t *err);
/* A new tensor on device dev holding nbytes of host data. */
int crun_put(sess_t *s, int dev, pg_dtype_t dtype, int rank, const int64_t *shape, uint64_t numel,
             const void *data, tensor_t **out, proto_err_t *err);

/* One run's state on a device. */
typedef struct {
    sess_t *sess;
    int dev;
    ref_view_t *vals;             /* the run's values (run.c's), host or device */
    tensor_t **copy_of;           /* pairs: device tensor, its host copy (references) */
    size_t ncopies, capcopies;
} crun_t;

/* Starts a run on device dev with the run's value array. */
int crun_begin(crun_t *c, sess_t *s, int dev, ref_view_t *vals, proto_err_t *err);
/* Runs step st of plan p (fp its steps; bound: the tensor an input node reads, or NULL for the
 * node's own). host_kernel runs a kernel step on host views (run.c's CPU path), used under
 * PICOGRAD_CUDA_HOST_KERNELS. */
typedef int (*crun_host_kernel_fn)(const graph_t *g, const fuse_step_t *st, kir_fn_t fn,
                                   ref_view_t *vals, proto_err_t *err);
int crun_step(crun_t *c, const graph_t *g, const plan_t *p, int32_t s, tensor_t *bound,
              crun_host_kernel_fn host_kernel, proto_err_t *err);
/* Makes value j a contiguous tensor (a new reference in *out): on the device when on_device
 * (kept outputs, assigns), else on the host (outputs sent back inline). */
int crun_output(crun_t *c, int32_t j, bool on_device, tensor_t **out, proto_err_t *err);
/* Waits for the run's work on the stream and drops the run's host copies. Returns 0, or the
 * error of a kernel that failed asynchronously. */
int crun_end(crun_t *c, proto_err_t *err);

/* Combines a split reduction's per-block partials (outputs x nb doubles, block order) into host
 * tensor out, as the interpreter folds them (run.c: shared by the CPU and GPU paths). */
void run_combine_split(const kir_kernel_t *k, const double *part, int64_t nb, tensor_t *out);

/* Frees a session's streams and cuBLAS handles (sess_clear calls it). */
void crun_sess_free(void *cuda);

#endif /* PG_CUDARUN_H */
