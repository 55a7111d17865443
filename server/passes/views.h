/*
 * views.h - view folding: views move below the elementwise ops they read (see views.c).
 */
#ifndef PG_VIEWS_H
#define PG_VIEWS_H

#include "../graph/graph.h"

/*
 * Rewrites g so that a view (permute, expand, slice, flip, reshape) of an elementwise node used
 * only by that view is computed as the elementwise op of views of its operands, as views.c
 * describes. When it rewrites anything it also drops the nodes that no output needs (otherwise
 * they stay for fold_graph to drop). out_id[0..no) and map[0..nmap) (request node -> primitive
 * node) are renumbered to match; a map entry whose primitive no longer exists (its value was
 * only ever read through a pushed view, or no output needed it) becomes -1.
 * Returns 0, or -PG_EOUT_OF_MEMORY (or, on an internal error, another negative PG_E*) with err
 * filled; g, out_id and map are then unchanged. A graph that would grow past the node limit is
 * left unchanged too, and that is a success.
 */
int views_graph(graph_t *g, int32_t *out_id, uint32_t no, int32_t *map, uint32_t nmap,
                proto_err_t *err);

#endif /* PG_VIEWS_H */
