/*
 * graph.h - the graph IR: primitive nodes in topological order, with inferred dtype and shape.
 *
 * A `run` request's nodes are decoded (decode.c) and handed one by one to the lowering pass
 * (passes/lower.c), which emits primitive nodes through graph_add(): every node is validated and
 * its shape and dtype inferred the moment it is added, so a graph that exists is a graph that is
 * well formed, and nothing has been allocated for its data yet.
 */
#ifndef PG_GRAPH_H
#define PG_GRAPH_H

#include "../../protocol/proto.h"
#include "../tensor.h"

#define GRAPH_MAX_NODES 65536  /* wire nodes in one run; lowering may add a bounded factor more */
#define GRAPH_MAX_INPUTS 1024  /* inputs of one node (cat, stack) */

/* Primitive nodes in one graph. Lowering multiplies nodes (a conv2d is ~16 primitives, its
 * gradient as many again), so this is four times the wire limit: a node costs ~450 bytes, which
 * bounds a graph's own memory to ~120 MB, not counted against --max-memory. */
#define GRAPH_MAX_PRIM_NODES (GRAPH_MAX_NODES * 4)

typedef enum {
    PK_LEAF, PK_UNARY, PK_BINARY, PK_WHERE, PK_REDUCE, PK_ARGREDUCE, PK_SCAN, PK_VIEW, PK_COPY,
    PK_MATMUL, PK_INDEX,
} prim_kind_t;

typedef enum {
#define PG_PRIM(name, nin, kind) PRIM_##name,
#include "../../kernels/ops.def"
#undef PG_PRIM
    PRIM_COUNT
} prim_t;

/* Attributes of a primitive; each op reads only the fields its ops.def comment names. */
typedef struct {
    int64_t dims[PROTO_MAX_RANK]; /* reduce axes (sorted), permute order, flip axes; the axis of
                                   * argmax/argmin/cumsum/cat/gather/index_select is dims[0] */
    int ndims;                    /* entries of dims in use */
    bool keepdim;                 /* reductions */
    bool first;                   /* max, min: the gradient goes to the first extremal element
                                   * (C order over the reduced axes) instead of being split
                                   * evenly among ties (autodiff.c; the value is the same) */
    int64_t start[PROTO_MAX_RANK]; /* slice: first index per axis; pad: elements before */
    int64_t stop[PROTO_MAX_RANK];  /* pad: elements after (slice: unused, the shape says) */
    int64_t step[PROTO_MAX_RANK];  /* slice: step per axis (>= 1) */
    double value;                 /* full, pad: the fill value */
    double astart, astep;         /* arange */
    uint64_t seed, offset;        /* rand, randn */
    int64_t win[6];               /* window, unwindow: kh, kw, stride h, stride w, dilation h,
                                   * dilation w */
    pg_dtype_t dtype;             /* cast: the target */
} gattr_t;

typedef struct {
    prim_t op;
    int32_t nin;                  /* inputs */
    int32_t *in;                  /* input node indices, all lower than this node's (owned) */
    pg_dtype_t dtype;             /* inferred */
    int rank;
    int64_t shape[PROTO_MAX_RANK];
    uint64_t numel;               /* product of shape */
    gattr_t a;
    tensor_t *tensor;             /* input, const: the data (a reference, owned) */
    int32_t wire;                 /* index of the request node this came from (for errors) */
    const char *wire_op;          /* and its op name (static storage) */
    bool weak;                    /* a Python number: type promotion lets the other side win */
    bool nograd;                  /* a `detach` (or a softmax's stabilizing max): the value
                                   * flows, the reverse sweep does not cross it (autodiff.c) */
} gnode_t;

typedef struct {
    gnode_t *nodes;               /* owned */
    int32_t n, cap;
    int32_t wire;                 /* the request node being lowered now (stamped on new nodes) */
    const char *wire_op;          /* its op name, for messages */
    uint64_t max_bytes;           /* refuse any node larger than this (the memory budget) */
} graph_t;

/* Prepares an empty graph. */
void graph_init(graph_t *g, uint64_t max_bytes);
/* Frees the nodes, their input arrays and tensor references. */
void graph_free(graph_t *g);

/* Returns a prim's name ("add"), kind and arity (-1: variadic). */
const char *graph_prim_name(prim_t op);
prim_kind_t graph_prim_kind(prim_t op);
int graph_prim_arity(prim_t op);

/*
 * Adds a primitive node with inputs in[0..nin) and attributes *a (NULL: all zero), validates it,
 * infers its dtype and shape (leaves and views take them from `shape`/`rank`/`dtype`, see
 * graph.c) and returns its index, or -1 with err naming the request node, its op and the shapes.
 * Takes ownership of `tensor` (may be NULL), also on failure.
 */
int32_t graph_add(graph_t *g, prim_t op, const int32_t *in, int32_t nin, const gattr_t *a,
                  pg_dtype_t dtype, int rank, const int64_t *shape, tensor_t *tensor,
                  proto_err_t *err);

/* Formats a node's shape as "[2, 3]" into buf. */
const char *graph_shape_str(char *buf, size_t cap, int rank, const int64_t *shape);

/* The strides of window node n (a.win: kh, kw, sh, sw, dh, dw) over an input [N, C, H, W] of
 * the given shape and strides, into out[6]: one output row steps sh input rows, one kernel row
 * dh. A window is affine, so the interpreter makes it a view and kernels compose it into their
 * loads. Returns false, writing nothing, when n is no window of a 4-D input or its windows reach
 * outside the input (a node graph_add did not check). */
bool graph_window_strides(const gnode_t *n, const int64_t *xshape, int xrank,
                          const int64_t *xstrides, int64_t *out);

#endif /* PG_GRAPH_H */
