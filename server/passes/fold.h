/*
 * fold.h - constant folding, exact algebraic identities and dead-node removal (see fold.c).
 */
#ifndef PG_FOLD_H
#define PG_FOLD_H

#include "../graph/graph.h"

/*
 * Rewrites g as fold.c describes: elementwise nodes of inlined constants become one constant
 * (computed by the reference interpreter), views of constants are remade per reader, x*1, 1*x,
 * x/1 and x-0 become x, and nodes that no output needs are dropped, the rest keeping their
 * order. out_id[0..no) and map[0..nmap) (request node -> primitive node) are renumbered to
 * match; a map entry whose primitive was dropped becomes -1 (one replaced by x points at x, a
 * rank-0 constant at its `full`, and a larger constant, which has one copy per reader, is -1).
 * Returns 0, or
 * -PG_EOUT_OF_MEMORY (or, on an internal error, another negative PG_E*) with err filled; g,
 * out_id and map are then unchanged. A graph that would grow past the node limit is left
 * unchanged too, and that is a success.
 */
int fold_graph(graph_t *g, int32_t *out_id, uint32_t no, int32_t *map, uint32_t nmap,
               proto_err_t *err);

#endif /* PG_FOLD_H */
