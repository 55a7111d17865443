/*
 * lower.h - decoding a `run` request's nodes and lowering them to primitives.
 */
#ifndef PG_LOWER_H
#define PG_LOWER_H

#include "../graph/graph.h"
#include "../session.h"

/*
 * Lowers the request's node array into g: every request node becomes one or more primitive
 * nodes, and map[i] receives the primitive node holding request node i's result (map has
 * nodes->via.array.size entries). Leaves look up handles in sess (borrowed). Returns 0, or a
 * negative PG_E* with err naming the request node, its op and the shapes involved.
 */
int lower_graph(graph_t *g, const sess_t *sess, const msgpack_object *nodes, int32_t *map,
                proto_err_t *err);

#endif /* PG_LOWER_H */
