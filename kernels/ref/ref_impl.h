/*
 * ref_impl.h - what the files of the reference interpreter share and nobody else needs: the N-d
 * offset iterator, typed element loads and stores, the thread pool's parallel_for, and one entry
 * point per primitive kind that eval.c dispatches to.
 *
 * Every kernel has the same shape: allocate the output (ref__alloc), then walk the output's
 * elements in C order with a ref__iter_t that carries the matching element offset of each input,
 * split into chunks by ref__parallel_for. Because each output element is computed by exactly one
 * chunk, from the same inputs, in the same order, the result does not depend on the thread count.
 */
#ifndef PG_REF_IMPL_H
#define PG_REF_IMPL_H

#include "ref.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * N-d iteration
 * ------------------------------------------------------------------------------------------- */

#define REF_ITER_OPS 3 /* strided operands one iterator follows (where: cond, a, b) */

/*
 * Walks the indices of a shape in C order and keeps, for each of up to REF_ITER_OPS operands,
 * the element offset base + sum(idx[d] * strides[d]). Typical use, for a chunk [begin, end):
 *
 *   ref__iter_t it;
 *   ref__iter_init(&it, out->rank, out->shape);
 *   ref__iter_add(&it, x->off, x->strides);
 *   ref__iter_seek(&it, begin);
 *   for (uint64_t j = begin; j < end; j++, ref__iter_next(&it)) ... x at it.off[0] ...
 */
typedef struct {
    int rank;                                   /* dims walked */
    int nops;                                   /* operands followed */
    int64_t shape[PROTO_MAX_RANK];              /* the shape walked */
    int64_t idx[PROTO_MAX_RANK];                /* the current index */
    int64_t base[REF_ITER_OPS];                 /* each operand's offset at index 0 */
    int64_t strides[REF_ITER_OPS][PROTO_MAX_RANK]; /* each operand's strides, in elements */
    int64_t off[REF_ITER_OPS];                  /* each operand's offset at idx */
} ref__iter_t;

/* Starts an iterator over shape[0..rank) with no operands, at index 0. */
void ref__iter_init(ref__iter_t *it, int rank, const int64_t *shape);
/* Adds an operand with offset `base` at index 0 and the given strides (rank entries). */
void ref__iter_add(ref__iter_t *it, int64_t base, const int64_t *strides);
/* Moves to the index whose C-order position is `linear`. */
void ref__iter_seek(ref__iter_t *it, uint64_t linear);

/* Advances to the next index in C order (past the last one it wraps to 0, harmlessly). */
static inline void ref__iter_next(ref__iter_t *it) {
    for (int d = it->rank - 1; d >= 0; d--) {
        for (int k = 0; k < it->nops; k++)
            it->off[k] += it->strides[k][d];
        if (++it->idx[d] < it->shape[d])
            return;
        for (int k = 0; k < it->nops; k++)
            it->off[k] -= it->strides[k][d] * it->shape[d];
        it->idx[d] = 0;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Views
 * ------------------------------------------------------------------------------------------- */

/* Fills strides with the C-order (row-major, contiguous) strides of shape. */
void ref__contiguous_strides(int rank, const int64_t *shape, int64_t *strides);
/* Returns true when v's elements lie in C order one after the other (any offset). */
bool ref__is_contiguous(const ref_view_t *v);
/* Returns the element count of a view's shape. */
uint64_t ref__numel(const ref_view_t *v);
/* Returns v's storage bytes, or NULL for an empty view (never index it then). */
static inline uint8_t *ref__data(const ref_view_t *v) { return v->t ? v->t->data : NULL; }

/* Allocates node i's output: a fresh contiguous tensor of the node's dtype and shape (no tensor
 * when numel is 0). Returns 0, or -PG_EOUT_OF_MEMORY with err naming the node and the size. */
int ref__alloc(const graph_t *g, int32_t i, ref_view_t *out, proto_err_t *err);

/* Copies src's elements, converting nothing (same dtype), to dst at element offset dst_off with
 * dst_strides (src->rank entries), in parallel for large copies. */
void ref__copy(const ref_view_t *src, uint8_t *dst, int64_t dst_off, const int64_t *dst_strides);

/* ---------------------------------------------------------------------------------------------
 * Element access. Bool is stored as one byte; any nonzero byte reads as true, and stores write
 * 0 or 1. Loads convert to a computing domain (double for floats, int64 for the others).
 * ------------------------------------------------------------------------------------------- */

static inline bool ref__is_float(pg_dtype_t dt) { return dt == PG_FLOAT32 || dt == PG_FLOAT64; }

/* Converts a double to an integer dtype, truncating toward zero. C leaves out-of-range
 * conversions undefined, so NaN and infinities give 0 and finite values are clamped first. */
static inline int64_t ref__f2i(double x, pg_dtype_t dt) {
    if (!isfinite(x))
        return 0;
    if (dt == PG_INT32) {
        if (x >= 2147483648.0)
            return INT32_MAX;
        if (x <= -2147483648.0)
            return INT32_MIN;
    } else {
        if (x >= 9223372036854775808.0)
            return INT64_MAX;
        if (x <= -9223372036854775808.0)
            return INT64_MIN;
    }
    return (int64_t)x;
}

/* Loads element `off` of data as a double (exact for float32, float64, int32, bool). */
static inline double ref__ld_f(const uint8_t *data, pg_dtype_t dt, int64_t off) {
    switch (dt) {
    case PG_FLOAT32: return ((const float *)data)[off];
    case PG_FLOAT64: return ((const double *)data)[off];
    case PG_INT32: return ((const int32_t *)data)[off];
    case PG_INT64: return (double)((const int64_t *)data)[off];
    default: return data[off] != 0;
    }
}

/* Loads element `off` of data as an int64 (floats convert like a cast). */
static inline int64_t ref__ld_i(const uint8_t *data, pg_dtype_t dt, int64_t off) {
    switch (dt) {
    case PG_FLOAT32: return ref__f2i(((const float *)data)[off], PG_INT64);
    case PG_FLOAT64: return ref__f2i(((const double *)data)[off], PG_INT64);
    case PG_INT32: return ((const int32_t *)data)[off];
    case PG_INT64: return ((const int64_t *)data)[off];
    default: return data[off] != 0;
    }
}

/* Loads element `off` as a truth value (x != 0; NaN is true, as in torch). */
static inline bool ref__ld_b(const uint8_t *data, pg_dtype_t dt, int64_t off) {
    switch (dt) {
    case PG_FLOAT32: return ((const float *)data)[off] != 0;
    case PG_FLOAT64: return ((const double *)data)[off] != 0;
    case PG_INT32: return ((const int32_t *)data)[off] != 0;
    case PG_INT64: return ((const int64_t *)data)[off] != 0;
    default: return data[off] != 0;
    }
}

/* Stores a double into element `off`, converting like a cast. */
static inline void ref__st_f(uint8_t *data, pg_dtype_t dt, int64_t off, double v) {
    switch (dt) {
    case PG_FLOAT32: ((float *)data)[off] = (float)v; break;
    case PG_FLOAT64: ((double *)data)[off] = v; break;
    case PG_INT32: ((int32_t *)data)[off] = (int32_t)ref__f2i(v, PG_INT32); break;
    case PG_INT64: ((int64_t *)data)[off] = ref__f2i(v, PG_INT64); break;
    default: data[off] = v != 0; break;
    }
}

/* Stores an int64 into element `off`: int32 keeps the low 32 bits (wrapping, as torch does),
 * floats convert directly (not through double, which could round twice). */
static inline void ref__st_i(uint8_t *data, pg_dtype_t dt, int64_t off, int64_t v) {
    switch (dt) {
    case PG_FLOAT32: ((float *)data)[off] = (float)v; break;
    case PG_FLOAT64: ((double *)data)[off] = (double)v; break;
    case PG_INT32: ((int32_t *)data)[off] = (int32_t)(uint32_t)(uint64_t)v; break;
    case PG_INT64: ((int64_t *)data)[off] = v; break;
    default: data[off] = v != 0; break;
    }
}

/* Copies one element of itemsize bytes (1, 4 or 8) from src[soff] to dst[doff]. */
static inline void ref__mov(uint8_t *dst, int64_t doff, const uint8_t *src, int64_t soff,
                            size_t itemsize) {
    switch (itemsize) {
    case 8: ((uint64_t *)dst)[doff] = ((const uint64_t *)src)[soff]; break;
    case 4: ((uint32_t *)dst)[doff] = ((const uint32_t *)src)[soff]; break;
    default: dst[doff] = src[soff]; break;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Threads (par.c)
 * ------------------------------------------------------------------------------------------- */

#define REF_MAX_THREADS 256      /* ref_set_threads clamps to this */
#define REF_PAR_MIN_WORK 32768   /* below this many element-steps a loop runs on the caller */

/* A chunk of work: items [begin, end) of the loop, with the loop's context. */
typedef void (*ref__chunk_fn)(void *ctx, uint64_t begin, uint64_t end);

/*
 * Runs fn over [0, n) split into contiguous chunks, on the pool's threads and the caller's, and
 * returns when every chunk is done. `cost` is the work per item (1 for an elementwise loop, the
 * reduced length for a reduction); small loops (n * cost < REF_PAR_MIN_WORK) and loops started
 * while another thread is using the pool run entirely on the caller. fn must write disjoint
 * outputs per item, which is what makes the result independent of the split.
 */
void ref__parallel_for(uint64_t n, uint64_t cost, ref__chunk_fn fn, void *ctx);
/* Threads that ref__parallel_for may use (the caller's included). */
int ref__threads(void);
/* For tests: how long a worker spins for a next loop before it sleeps (default 100 us), and how
 * many workers sleep now (not spinning, not working). */
void ref__set_spin_ns(uint64_t ns);
int ref__workers_asleep(void);
/* Makes BLAS single-threaded: products are split over the pool's threads instead (matmul.c). */
void ref__matmul_init(void);

/* ---------------------------------------------------------------------------------------------
 * Kernels, one per primitive kind. Each evaluates node i of g into *out (zeroed by the caller)
 * from vals[...] of its inputs and returns 0 or a negative PG_E* with err filled; on failure the
 * caller releases *out.
 * ------------------------------------------------------------------------------------------- */

typedef int (*ref__kernel_fn)(const graph_t *g, int32_t i, const ref_view_t *vals,
                              ref_view_t *out, proto_err_t *err);

int ref__leaf(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
              proto_err_t *err);
int ref__unary(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
               proto_err_t *err);
int ref__binary(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                proto_err_t *err);
int ref__where(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
               proto_err_t *err);
int ref__reduce(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                proto_err_t *err);
int ref__argreduce(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                   proto_err_t *err);
int ref__scan(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
              proto_err_t *err);
int ref__view(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
              proto_err_t *err);
int ref__copy_op(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                 proto_err_t *err);
int ref__matmul(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                proto_err_t *err);
int ref__index(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
               proto_err_t *err);

/* Returns a primitive's name ("add") for messages; "?" when out of range. */
const char *ref__prim_name(prim_t op);

/* Fills err with an internal error saying that node i broke the builder's contract (what: a short
 * phrase) and returns -PG_EINTERNAL. Kernels check what they index with before trusting it, so a
 * builder bug becomes an error reply instead of a wild read. */
int ref__bad_node(const graph_t *g, int32_t i, const char *what, proto_err_t *err);

/* Philox-4x32-10 (Random123): encrypts counter ctr under key, into out. */
void ref__philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

#endif /* PG_REF_IMPL_H */
