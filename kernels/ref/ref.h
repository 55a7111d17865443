/*
 * ref.h - the reference interpreter: runs one primitive node at a time on strided views.
 *
 * It is the oracle that every compiled path is tested against, so it is written to be obviously
 * right rather than fast: one loop per primitive over output elements, an N-d index per element.
 * Views (reshape of contiguous data, permute, expand, slice, flip, window) cost no copy: they
 * share their input's storage with new shape, strides and offset.
 */
#ifndef PG_REF_H
#define PG_REF_H

#include "../../server/graph/graph.h"

#include <stdatomic.h>

/* A value: a strided view into a tensor's storage. Strides and offset count elements; a stride may
 * be 0 (expand) or negative (flip). */
typedef struct {
    tensor_t *t;                    /* the storage (a reference, owned); NULL when numel is 0 */
    int64_t off;                    /* element offset of index [0, ..., 0] */
    int rank;
    int64_t shape[PROTO_MAX_RANK];
    int64_t strides[PROTO_MAX_RANK];
    pg_dtype_t dtype;
} ref_view_t;

/* Sets how many threads large elementwise loops and reductions may use (>= 1). Call once at
 * start; the interpreter keeps its own threads. */
void ref_set_threads(int n);

/* Makes the loops the calling thread starts from now on cancellable: they read *flag (borrowed;
 * NULL: none) before each chunk of at most LIM_CANCEL_CHUNK_WORK element-steps (server/limits.h)
 * and stop taking chunks once it is nonzero, leaving their output unfinished. The caller must
 * check the flag after each node and discard what such a node produced. A daemon worker sets it
 * to its request's cancel flag for the request's duration (server/run.c). */
void ref_set_cancel(const atomic_int *flag);

/* Says that the calling thread starts no loop soon (a daemon worker whose request is done). The
 * pool's threads wait for a next loop spinning for a moment, since a graph's loops come one after
 * another; after the last one that spin only holds a CPU that the client, woken by the reply,
 * may be waiting for. This ends it, if the calling thread posted the pool's last loop. */
void ref_rest(void);

/*
 * Evaluates node i of g into vals[i], reading vals of its inputs (already evaluated, borrowed).
 * Allocates results with tensor_new (the memory budget applies). Returns 0, or a negative PG_E*
 * with err naming node i (e.g. an out-of-range gather index: PG_EBAD_REQUEST; no memory:
 * PG_EOUT_OF_MEMORY). On failure vals[i] is left empty.
 */
int ref_eval(const graph_t *g, int32_t i, ref_view_t *vals, proto_err_t *err);

/* Evaluates input node i of g into vals[i] as a view of t (borrowed; the view takes its own
 * reference) instead of the node's own tensor: a prepared graph that several runs share holds
 * none (server/prepcache.h), and each run binds its session's tensors. t must have the node's
 * dtype and element count. Returns 0, or PG_EINTERNAL naming node i. */
int ref_eval_input(const graph_t *g, int32_t i, tensor_t *t, ref_view_t *vals, proto_err_t *err);

/* Makes a contiguous, zero-offset tensor with v's shape, dtype and elements (a new reference in
 * *out). When v is exactly its tensor (contiguous, offset 0, same rank, shape and dtype), that
 * tensor is returned with a new reference; otherwise the elements are copied, so the tensor's
 * own shape always describes the result. Returns 0 or -PG_EOUT_OF_MEMORY. */
int ref_materialize(const ref_view_t *v, tensor_t **out, proto_err_t *err);

/* Drops v's storage reference and zeroes it. */
void ref_view_release(ref_view_t *v);

#endif /* PG_REF_H */
