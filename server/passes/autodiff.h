/*
 * autodiff.h - reverse-mode differentiation of a primitive graph: what a `grad` node lowers to.
 *
 * The lowering pass (lower.c) calls ad_backward() when it meets the first `grad` node for a
 * given (y, gy); the sweep appends the backward graph to g as ordinary primitives and returns
 * every adjoint it made, which the pass keeps in an ad_cache_t until the request is lowered, so
 * that the other `grad` nodes with the same (y, gy) reuse them.
 */
#ifndef PG_AUTODIFF_H
#define PG_AUTODIFF_H

#include "../graph/graph.h"

/* The adjoints of one reverse sweep. */
typedef struct {
    int64_t key[2];    /* the caller's key (lower.c: the request nodes of y and gy, -1: none) */
    int32_t *adj;      /* adj[i]: the node holding d(sum(y * seed))/d(node i), -1: none (owned) */
    int32_t n;         /* entries of adj: y's index + 1 (nodes after y cannot reach y) */
} ad_sweep_t;

/* The sweeps of one request. Zero-initialize; free with ad_cache_free(). */
typedef struct {
    ad_sweep_t *s;     /* owned */
    int n, cap;
} ad_cache_t;

/* Returns the sweep kept under (k0, k1), or NULL (borrowed: valid until ad_cache_free). */
const ad_sweep_t *ad_cache_find(const ad_cache_t *c, int64_t k0, int64_t k1);

/* Frees every sweep and the cache's array; c is left empty and reusable. */
void ad_cache_free(ad_cache_t *c);

/*
 * Runs one reverse sweep over g from node y, seeded with node `seed` (y's dtype and shape),
 * through the nodes that lie on a path from one of wanted[0..nwanted) to y (other nodes get no
 * adjoint, so no work is spent on them). Nodes whose `nograd` is set pass no gradient to their
 * inputs; bool and integer nodes carry none. New nodes are stamped with g's current request
 * node. The adjoints are stored in c under (k0, k1) and returned (borrowed from c), or NULL with
 * err filled (only out of memory or a graph limit: the rules emit valid primitives).
 */
const ad_sweep_t *ad_backward(graph_t *g, ad_cache_t *c, int64_t k0, int64_t k1, int32_t y,
                              int32_t seed, const int32_t *wanted, int nwanted,
                              proto_err_t *err);

#endif /* PG_AUTODIFF_H */
