/*
 * eval.c - ref_eval: checks what a node hands the kernels and dispatches on its primitive.
 *
 * The dispatch table is generated from ops.def: each primitive goes to the kernel of its kind
 * (PK_UNARY -> ref__unary, ...), which switches on the primitive inside. Adding a primitive to
 * ops.def therefore needs no change here, only a case in its kind's kernel; a primitive that its
 * kernel does not know fails with an internal error instead of computing something else.
 */
#include "ref_impl.h"

#include <assert.h>

#define KERNEL_OF_PK_LEAF ref__leaf
#define KERNEL_OF_PK_UNARY ref__unary
#define KERNEL_OF_PK_BINARY ref__binary
#define KERNEL_OF_PK_WHERE ref__where
#define KERNEL_OF_PK_REDUCE ref__reduce
#define KERNEL_OF_PK_ARGREDUCE ref__argreduce
#define KERNEL_OF_PK_SCAN ref__scan
#define KERNEL_OF_PK_VIEW ref__view
#define KERNEL_OF_PK_COPY ref__copy_op
#define KERNEL_OF_PK_MATMUL ref__matmul
#define KERNEL_OF_PK_INDEX ref__index

static const ref__kernel_fn kernels[] = {
#define PG_PRIM(name, nin, kind) [PRIM_##name] = KERNEL_OF_##kind,
#include "../ops.def"
#undef PG_PRIM
};
static_assert(sizeof(kernels) / sizeof(kernels[0]) == PRIM_COUNT, "a primitive has no kernel");

static const char *const prim_names[] = {
#define PG_PRIM(name, nin, kind) [PRIM_##name] = #name,
#include "../ops.def"
#undef PG_PRIM
};
static_assert(sizeof(prim_names) / sizeof(prim_names[0]) == PRIM_COUNT, "a primitive has no name");

static const int prim_arity[] = {
#define PG_PRIM(name, nin, kind) [PRIM_##name] = nin,
#include "../ops.def"
#undef PG_PRIM
};
static_assert(sizeof(prim_arity) / sizeof(prim_arity[0]) == PRIM_COUNT, "a primitive has no arity");

const char *ref__prim_name(prim_t op) {
    return (unsigned)op < PRIM_COUNT ? prim_names[op] : "?";
}

int ref__bad_node(const graph_t *g, int32_t i, const char *what, proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    return proto_fail(err, PG_EINTERNAL, "node %d (%s): the interpreter was handed %s",
                      (int)n->wire, ref__prim_name(n->op), what);
}

int ref_eval(const graph_t *g, int32_t i, ref_view_t *vals, proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    ref_view_t *out = &vals[i];
    memset(out, 0, sizeof(*out));
    if ((unsigned)n->op >= PRIM_COUNT || n->rank < 0 || n->rank > PROTO_MAX_RANK ||
        (unsigned)n->dtype >= PG_DTYPE_COUNT)
        return ref__bad_node(g, i, "an unknown primitive, rank or dtype", err);
    int arity = prim_arity[n->op];
    if (arity >= 0 ? n->nin != arity : n->nin < 1)
        return ref__bad_node(g, i, "the wrong number of inputs", err);
    for (int k = 0; k < n->nin; k++) {
        int32_t in = n->in[k];
        /* Inputs come earlier in topological order, so they are evaluated already; an empty
         * value has no storage, and any other must have some. */
        if (in < 0 || in >= i || (vals[in].t == NULL && ref__numel(&vals[in]) != 0))
            return ref__bad_node(g, i, "an input that is not evaluated", err);
    }
    int rc = kernels[n->op](g, i, vals, out, err);
    if (rc < 0)
        ref_view_release(out);
    return rc;
}
