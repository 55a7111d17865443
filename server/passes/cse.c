/*
 * cse.c - common-subexpression elimination: compute each distinct value once.
 *
 * Lowering emits the same primitive more than once whenever the request says the same thing
 * twice (x.exp() used by two expressions that were built separately, the mean of layer_norm and
 * of a variance next to it, the same constant promoted twice). Two nodes are the same value when
 * they apply the same op with the same attributes, dtype and shape to the same inputs (after
 * those inputs were themselves deduplicated), or are leaves holding the same tensor, the same
 * constant, or the same random stream (rand and randn are pure functions of seed and offset).
 *
 *   before:  %2 = exp(%0)   %3 = exp(%0)   %4 = add(%2, %3)
 *   after:   %2 = exp(%0)   %3 = exp(%0)   %4 = add(%2, %2)      (%3 is now dead)
 *
 * One pass in topological order suffices, because a node's inputs are always earlier nodes. The
 * comparison is exact: attributes are compared byte for byte, so at worst a merge is missed.
 */
#include "cse.h"

#include "../mem.h"

#include <string.h>

/* Mixes 8 bytes into h (one multiply per word: the attributes are ~450 bytes per node, and
 * byte-at-a-time hashing was a third of a small cached run's time). */
static uint64_t mix(uint64_t h, uint64_t w) {
    h ^= w + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

static uint64_t mix_bytes(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t w;
    for (; n >= 8; n -= 8, b += 8) {
        memcpy(&w, b, 8);
        h = mix(h, w);
    }
    w = 0;
    memcpy(&w, b, n);
    return mix(h, w);
}

/* Hashes what makes node n the value it is (inputs already canonical). Only the attribute
 * bytes up to the fields an op uses matter for equality, but hashing them all is simpler and
 * still exact (node_equal decides). */
static uint64_t node_hash(const gnode_t *n) {
    uint64_t h = 0xcbf29ce484222325ull;
    h = mix(h, (uint64_t)n->op | (uint64_t)n->dtype << 16 | (uint64_t)(uint32_t)n->rank << 32);
    h = mix(h, (uint64_t)(uint32_t)n->nin | (uint64_t)n->weak << 32);
    h = mix(h, (uint64_t)(uintptr_t)n->tensor);
    h = mix_bytes(h, n->shape, sizeof(n->shape));
    h = mix_bytes(h, &n->a, sizeof(n->a));
    for (int32_t k = 0; k < n->nin; k++)
        h = mix(h, (uint64_t)(uint32_t)n->in[k]);
    return h;
}

static bool node_equal(const gnode_t *a, const gnode_t *b) {
    return a->op == b->op && a->dtype == b->dtype && a->rank == b->rank && a->nin == b->nin &&
           a->tensor == b->tensor && a->weak == b->weak &&
           !memcmp(a->shape, b->shape, sizeof(a->shape)) && !memcmp(&a->a, &b->a, sizeof(a->a)) &&
           (a->nin == 0 || !memcmp(a->in, b->in, sizeof(int32_t) * (size_t)a->nin));
}

int cse_graph(graph_t *g, int32_t *out_id, uint32_t no) {
    size_t cap = 16;
    while (cap < (size_t)g->n * 2)
        cap *= 2;
    int32_t *canon = pg_calloc_array((size_t)g->n + 1, sizeof(int32_t));
    int32_t *table = pg_calloc_array(cap, sizeof(int32_t)); /* node index + 1; 0 is empty */
    if (!canon || !table) {
        pg_free(canon);
        pg_free(table);
        return -PG_EOUT_OF_MEMORY;
    }
    for (int32_t i = 0; i < g->n; i++) {
        gnode_t *n = &g->nodes[i];
        for (int32_t k = 0; k < n->nin; k++)
            n->in[k] = canon[n->in[k]];
        size_t s = (size_t)node_hash(n) & (cap - 1);
        canon[i] = i;
        for (; table[s]; s = (s + 1) & (cap - 1)) {
            if (node_equal(&g->nodes[table[s] - 1], n)) {
                canon[i] = table[s] - 1;
                break;
            }
        }
        if (canon[i] == i)
            table[s] = i + 1;
    }
    for (uint32_t k = 0; k < no; k++)
        out_id[k] = canon[out_id[k]];
    pg_free(table);
    pg_free(canon);
    return 0;
}
