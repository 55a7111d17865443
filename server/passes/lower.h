/*
 * lower.h - decoding a `run` request's nodes and lowering them to primitives.
 */
#ifndef PG_LOWER_H
#define PG_LOWER_H

#include "../graph/graph.h"
#include "../session.h"

/* One `assign` node of a request: after a successful run, `handle` names the value of primitive
 * `node` (run.c commits it). Lowering checks that handle is a tensor of the session with the
 * value's shape and dtype, and that no other assign of the request names it. */
typedef struct {
    uint64_t handle;       /* the session handle whose tensor is replaced */
    int32_t node;          /* primitive node holding the new value (passes renumber it) */
    int32_t wire;          /* the request node, for messages and explain */
} lower_assign_t;

/* The assigns of one request, in request order. Start zeroed; free with lower_assigns_free. */
typedef struct {
    lower_assign_t *a;     /* n entries (owned) */
    uint32_t n, cap;
    htab_t seen;           /* handle -> request node + 1 of its assign (duplicate check) */
} lower_assigns_t;

/* Frees the list (a zeroed one too) and leaves it zeroed. */
void lower_assigns_free(lower_assigns_t *as);

/* The node ops lower_graph accepts (hello's `node_ops`): how many, and the name of op i
 * (static storage) for 0 <= i < lower_op_count(). */
int lower_op_count(void);
const char *lower_op_name(int i);

/*
 * Lowers the request's node array into g: every request node becomes one or more primitive
 * nodes, and map[i] receives the primitive node holding request node i's result (map has
 * nodes->via.array.size entries). Leaves look up handles in sess (borrowed). `assign` nodes are
 * appended to *assigns (zeroed by the caller, who frees it, also on failure); an assign adds no
 * primitive: its result is its value's node. Returns 0, or a negative PG_E* with err naming the
 * request node, its op and the shapes involved.
 */
int lower_graph(graph_t *g, const sess_t *sess, const msgpack_object *nodes, int32_t *map,
                lower_assigns_t *assigns, proto_err_t *err);

#endif /* PG_LOWER_H */
