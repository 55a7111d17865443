/*
 * cse.h - common-subexpression elimination on a lowered graph.
 */
#ifndef PG_CSE_H
#define PG_CSE_H

#include "../graph/graph.h"

/* Makes every node read the first of any identical nodes (same op, dtype, shape, attributes,
 * inputs and leaf data) and rewrites out_id[0..no) the same way. Duplicates stay in the graph
 * but nothing needs them any more, so later passes skip them. Returns 0, or -PG_EOUT_OF_MEMORY
 * (the graph is then unchanged). */
int cse_graph(graph_t *g, int32_t *out_id, uint32_t no);

#endif /* PG_CSE_H */
