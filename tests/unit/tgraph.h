/*
 * tgraph.h - hand-built graphs for the unit tests of the interpreter and the JIT.
 *
 * The tests fill graph_t nodes directly, the way the builder (server/graph/graph.c) leaves them,
 * so that a kernel can be tested on exactly the node it is handed without going through
 * validation and lowering.
 */
#ifndef PG_TGRAPH_H
#define PG_TGRAPH_H

#include "../../kernels/ref/ref.h"
#include "../../server/mem.h"
#include "task.h"

#define TG_CAP 64

static inline void tg_init(graph_t *g) {
    memset(g, 0, sizeof(*g));
    g->nodes = pg_calloc_array(TG_CAP, sizeof(gnode_t));
    ASSERT(g->nodes != NULL);
    g->cap = TG_CAP;
    g->max_bytes = UINT64_MAX;
}

static inline void tg_free(graph_t *g) {
    for (int32_t k = 0; k < g->n; k++) {
        pg_free(g->nodes[k].in);
        tensor_unref(g->nodes[k].tensor);
    }
    pg_free(g->nodes);
    memset(g, 0, sizeof(*g));
}

/* Appends a node the way the builder would leave it; a may be NULL (all zero). */
static inline int32_t tg_add(graph_t *g, prim_t op, const int32_t *in, int nin, const gattr_t *a,
                      pg_dtype_t dtype, int rank, const int64_t *shape) {
    ASSERT(g->n < g->cap);
    int32_t id = g->n++;
    gnode_t *n = &g->nodes[id];
    memset(n, 0, sizeof(*n));
    n->op = op;
    n->nin = nin;
    if (nin > 0) {
        n->in = pg_calloc_array((size_t)nin, sizeof(int32_t));
        ASSERT(n->in != NULL);
        memcpy(n->in, in, (size_t)nin * sizeof(int32_t));
    }
    if (a)
        n->a = *a;
    n->dtype = dtype;
    n->rank = rank;
    n->numel = 1;
    for (int d = 0; d < rank; d++) {
        n->shape[d] = shape[d];
        n->numel *= (uint64_t)shape[d];
    }
    n->wire = id;
    return id;
}

/* Appends a const node holding a copy of data. */
static inline int32_t tg_const(graph_t *g, pg_dtype_t dtype, int rank, const int64_t *shape,
                        const void *data) {
    int32_t id = tg_add(g, PRIM_const, NULL, 0, NULL, dtype, rank, shape);
    gnode_t *n = &g->nodes[id];
    n->tensor = tensor_new(dtype, rank, shape, n->numel);
    ASSERT(n->tensor != NULL);
    if (n->numel)
        memcpy(n->tensor->data, data, n->tensor->nbytes);
    return id;
}

#endif /* PG_TGRAPH_H */
