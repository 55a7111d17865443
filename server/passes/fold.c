/*
 * fold.c - constant folding, exact algebraic identities and dead-node removal.
 *
 * Lowering and the view pass leave arithmetic on constants in the graph (2.0 * 3.0 written as
 * two `full` nodes, a mean's 1/N multiplied by another constant, ones and zeros from pg.full),
 * and every such node is work in every kernel that computes it. This pass, run after views.c,
 * does three things in one walk over the graph in topological order:
 *
 *   (a) An elementwise node whose operands are all constants that the kernels inline (a `full`
 *       for which fuse_full_inlined() holds, seen directly or through views, or an earlier
 *       folded node) becomes one rank-0 `full` of its dtype, expanded to its shape. The value is
 *       not computed here: the reference interpreter evaluates the op on rank-0 copies of the
 *       operands (ref_eval on a tiny graph), so it is by construction the value an unfolded run
 *       would have computed. The fold is kept only when a `full` of that value reproduces the
 *       interpreter's bytes exactly (an int64 beyond 2^53 does not fit the double a `full`
 *       holds, and stays unfolded). A Python number that is not inlined (a learning rate: a new
 *       value every step, read from a buffer so that it needs no new kernel) is never folded.
 *       Views of constants are rewritten the same way, and every reader of a folded node or
 *       a constant view gets a `full` [] and an expand of its own: the fusion pass inlines a
 *       `full` wherever it is read, but a view of one that several nodes read would be a step of
 *       its own and reach the kernels as a buffer (layer_norm's expanded 1/N read by the mean
 *       and the variance was two tiny interpreter steps).
 *   (b) Identities that are exact in IEEE and in wrapping integer arithmetic, for float32,
 *       float64, int32 and int64 results whose operand x has the result's dtype and shape:
 *       x * 1, 1 * x, x / 1 and x - (+0) are x. Not x + 0 (-0.0 + 0 is +0.0), not x * 0 (NaN
 *       and infinities) and not x - (-0.0). A reshape to its input's own shape (what `detach`
 *       lowers to) is its input too.
 *   (c) Nodes that no output needs any more are dropped and the rest renumbered, keeping their
 *       order (so inputs still come first).
 *
 *   before:  %0 = input [4, 3]   %1 = full 2 []   %2 = full 3 []   %3 = mul(%1, %2) []
 *            %4 = expand(%3) [4, 3]   %5 = full 1 []   %6 = expand(%5) [4, 3]
 *            %7 = mul(%0, %4)   %8 = mul(%7, %6)                           (run output %8)
 *   after:   %0 = input [4, 3]   %1 = full 6 []   %2 = expand(%1) [4, 3]
 *            %3 = mul(%0, %2)                                              (run output %3)
 *
 * The folded `full` is not weak: its value is part of the plan's key like any inlined
 * constant's, and its operands' values were already.
 */
#include "fold.h"

#include "../../kernels/ref/ref.h"
#include "../mem.h"
#include "fuse.h"

#include <math.h>
#include <string.h>

typedef struct {
    const graph_t *g;
    bool *live;       /* some output needs the node (before the pass, then after it) */
    int32_t *alias;   /* the node whose value this one is: itself, or x of an identity */
    bool *cst;        /* a constant kernels inline: an inlined full, a view of one, or folded */
    double *cval;     /* that constant's value */
    bool *folded;     /* an elementwise node or a view that becomes a constant (per reader) */
    int32_t *newid;   /* the node's index in the new graph (-1: none, or one per reader) */
    int32_t *outnew;  /* the new index of each run output */
} foldctx_t;

static bool const_view(prim_t op) {
    return op == PRIM_permute || op == PRIM_expand || op == PRIM_slice || op == PRIM_flip ||
           op == PRIM_reshape;
}

/* Marks the nodes that out_id[0..no) need, reading every input through alias and not reading
 * the inputs of folded nodes. */
static void mark_live(foldctx_t *c, const int32_t *out_id, uint32_t no) {
    const graph_t *g = c->g;
    memset(c->live, 0, (size_t)g->n * sizeof(bool));
    for (uint32_t k = 0; k < no; k++)
        c->live[c->alias[out_id[k]]] = true;
    for (int32_t i = g->n - 1; i >= 0; i--)
        if (c->live[i] && !c->folded[i])
            for (int32_t k = 0; k < g->nodes[i].nin; k++)
                c->live[c->alias[g->nodes[i].in[k]]] = true;
}

/* =============================================================================================
 * (a) Constants, computed by the interpreter
 * =========================================================================================== */

/* Reads element 0 of the rank-0 value v as a double (exact for every dtype but int64). */
static double scalar_of(const ref_view_t *v) {
    const uint8_t *p = v->t->data + (size_t)v->off * proto_dtype_size(v->dtype);
    switch (v->dtype) {
    case PG_FLOAT32: {
        float f;
        memcpy(&f, p, sizeof(f));
        return f;
    }
    case PG_FLOAT64: {
        double d;
        memcpy(&d, p, sizeof(d));
        return d;
    }
    case PG_INT32: {
        int32_t i;
        memcpy(&i, p, sizeof(i));
        return i;
    }
    case PG_INT64: {
        int64_t i;
        memcpy(&i, p, sizeof(i));
        return (double)i;
    }
    default:
        return *p != 0;
    }
}

/*
 * Evaluates elementwise node n with operands in[0..n->nin) (constants of c) the way a run
 * would, through ref_eval on a graph of rank-0 fulls. Sets *ok and *value when a `full` of
 * n's dtype holding *value has exactly the interpreter's bytes. Returns 0 (also when the value
 * cannot be folded: the run will compute it, or fail, as it always did) or -PG_EOUT_OF_MEMORY.
 */
static int eval_const(const foldctx_t *c, const gnode_t *n, const int32_t *in, double *value,
                      bool *ok) {
    graph_t t;
    ref_view_t vals[5];
    proto_err_t e;
    int32_t ids[3], op = -1, cand = -1;
    int rc = 0;
    *ok = false;
    memset(vals, 0, sizeof(vals));
    graph_init(&t, c->g->max_bytes);
    t.wire = n->wire;
    t.wire_op = n->wire_op;
    if (n->nin > 3)
        goto out_free;
    for (int32_t k = 0; k < n->nin; k++) {
        gattr_t a = {.value = c->cval[in[k]]};
        ids[k] = graph_add(&t, PRIM_full, NULL, 0, &a, c->g->nodes[in[k]].dtype, 0, NULL, NULL,
                           &e);
        if (ids[k] < 0)
            goto out_failed;
    }
    op = graph_add(&t, n->op, ids, n->nin, &n->a, n->dtype, 0, NULL, NULL, &e);
    if (op < 0)
        goto out_failed;
    for (int32_t j = 0; j <= op; j++)
        if (ref_eval(&t, j, vals, &e) != 0)
            goto out_free;
    if (t.nodes[op].dtype != n->dtype || !vals[op].t)
        goto out_free;
    double v = scalar_of(&vals[op]);
    gattr_t a = {.value = v};
    cand = graph_add(&t, PRIM_full, NULL, 0, &a, n->dtype, 0, NULL, NULL, &e);
    if (cand < 0)
        goto out_failed;
    if (ref_eval(&t, cand, vals, &e) != 0 || !vals[cand].t)
        goto out_free;
    size_t size = proto_dtype_size(n->dtype);
    if (!memcmp(vals[cand].t->data + (size_t)vals[cand].off * size,
                vals[op].t->data + (size_t)vals[op].off * size, size)) {
        *value = v;
        *ok = true;
    }
    goto out_free;

out_failed:
    if (e.code == PG_EOUT_OF_MEMORY)
        rc = -PG_EOUT_OF_MEMORY;
out_free:
    for (int j = 0; j < (int)(sizeof(vals) / sizeof(vals[0])); j++)
        ref_view_release(&vals[j]);
    graph_free(&t);
    return rc;
}

/* =============================================================================================
 * (b) Identities
 * =========================================================================================== */

/* Returns x when node n (inputs read through alias) is x * 1, 1 * x, x / 1 or x - (+0) with x
 * of n's dtype and shape, or a reshape of x to x's own shape; -1 otherwise. */
static int32_t identity_of(const foldctx_t *c, const gnode_t *n) {
    if (n->op == PRIM_reshape) { /* a reshape to the same shape (a `detach`) is its input */
        const gnode_t *xn = &c->g->nodes[c->alias[n->in[0]]];
        if (xn->rank == n->rank && !memcmp(xn->shape, n->shape, sizeof(int64_t) * (size_t)n->rank))
            return c->alias[n->in[0]];
        return -1;
    }
    if (n->dtype != PG_FLOAT32 && n->dtype != PG_FLOAT64 && n->dtype != PG_INT32 &&
        n->dtype != PG_INT64)
        return -1;
    if (n->op != PRIM_mul && n->op != PRIM_div && n->op != PRIM_sub)
        return -1;
    int32_t a = c->alias[n->in[0]], b = c->alias[n->in[1]], x = -1;
    bool b_one = c->cst[b] && c->cval[b] == 1.0;
    if (n->op == PRIM_mul && b_one)
        x = a;
    else if (n->op == PRIM_mul && c->cst[a] && c->cval[a] == 1.0)
        x = b;
    else if (n->op == PRIM_div && b_one)
        x = a;
    else if (n->op == PRIM_sub && c->cst[b] && c->cval[b] == 0.0 && !signbit(c->cval[b]))
        x = a;
    if (x < 0)
        return -1;
    const gnode_t *xn = &c->g->nodes[x];
    if (xn->dtype != n->dtype || xn->rank != n->rank ||
        memcmp(xn->shape, n->shape, sizeof(int64_t) * (size_t)n->rank))
        return -1;
    return x;
}

/* =============================================================================================
 * The pass
 * =========================================================================================== */

/* Walks the needed nodes in order, deciding constants, folds and identities. Returns whether
 * anything changed, or a negative PG_E*. */
static int analyze(foldctx_t *c) {
    const graph_t *g = c->g;
    bool changed = false;
    int32_t in[3];
    for (int32_t i = 0; i < g->n; i++) {
        const gnode_t *n = &g->nodes[i];
        if (!c->live[i])
            continue;
        if (fuse_full_inlined(n)) {
            c->cst[i] = true;
            c->cval[i] = n->a.value;
            continue;
        }
        if (const_view(n->op)) {
            int32_t x = c->alias[n->in[0]];
            c->cst[i] = c->folded[i] = c->cst[x];
            c->cval[i] = c->cval[x];
            changed |= c->cst[i];
            if (!c->cst[i] && (x = identity_of(c, n)) >= 0) {
                c->alias[i] = x;
                changed = true;
            }
            continue;
        }
        if (!fuse_is_elementwise(n->op) || n->nin > 3)
            continue;
        bool all = true;
        for (int32_t k = 0; k < n->nin; k++) {
            in[k] = c->alias[n->in[k]];
            all = all && c->cst[in[k]];
        }
        if (all) {
            bool ok = false;
            int rc = eval_const(c, n, in, &c->cval[i], &ok);
            if (rc != 0)
                return rc;
            if (ok) {
                c->cst[i] = c->folded[i] = true;
                changed = true;
                continue;
            }
        }
        int32_t x = identity_of(c, n);
        if (x >= 0) {
            c->alias[i] = x;
            changed = true;
        }
    }
    return changed;
}

/* Re-emits node n into ng with inputs in (attributes, dtype, shape, tensor, request node and
 * weak flag as they were); returns the new index or -1 with err filled. */
static int32_t copy_node(graph_t *ng, const gnode_t *n, const int32_t *in, proto_err_t *err) {
    ng->wire = n->wire;
    ng->wire_op = n->wire_op;
    int32_t id = graph_add(ng, n->op, in, n->nin, &n->a, n->dtype, n->rank, n->shape,
                           n->tensor ? tensor_ref(n->tensor) : NULL, err);
    if (id >= 0)
        ng->nodes[id].weak = n->weak;
    return id;
}

/* Returns the new node that holds folded node i's value for one reader: a `full` [] (made
 * once, when i has rank 0) or a new full(value) [] expanded to i's shape; -1 with err filled. */
static int32_t const_for(foldctx_t *c, graph_t *ng, int32_t i, proto_err_t *err) {
    const gnode_t *n = &c->g->nodes[i];
    if (n->rank == 0 && c->newid[i] >= 0)
        return c->newid[i];
    gattr_t a = {.value = c->cval[i]};
    ng->wire = n->wire;
    ng->wire_op = n->wire_op;
    int32_t id = graph_add(ng, PRIM_full, NULL, 0, &a, n->dtype, 0, NULL, NULL, err);
    if (id < 0)
        return -1;
    if (n->rank == 0)
        return c->newid[i] = id;
    return graph_add(ng, PRIM_expand, &id, 1, NULL, n->dtype, n->rank, n->shape, NULL, err);
}

/* Emits the needed nodes into ng in order (folded ones per reader) and fills newid and outnew.
 * Returns 0 or -1 with err filled. */
static int rebuild(foldctx_t *c, graph_t *ng, const int32_t *out_id, uint32_t no,
                   proto_err_t *err) {
    const graph_t *g = c->g;
    int32_t ins[GRAPH_MAX_INPUTS];
    for (int32_t i = 0; i < g->n; i++) {
        const gnode_t *n = &g->nodes[i];
        if (!c->live[i] || c->folded[i])
            continue;
        for (int32_t k = 0; k < n->nin; k++) {
            int32_t o = c->alias[n->in[k]];
            ins[k] = c->folded[o] ? const_for(c, ng, o, err) : c->newid[o];
            if (ins[k] < 0)
                return -1;
        }
        if ((c->newid[i] = copy_node(ng, n, ins, err)) < 0)
            return -1;
    }
    for (uint32_t k = 0; k < no; k++) {
        int32_t o = c->alias[out_id[k]];
        c->outnew[k] = c->folded[o] ? const_for(c, ng, o, err) : c->newid[o];
        if (c->outnew[k] < 0)
            return -1;
    }
    return 0;
}

int fold_graph(graph_t *g, int32_t *out_id, uint32_t no, int32_t *map, uint32_t nmap,
               proto_err_t *err) {
    size_t n = g->n ? (size_t)g->n : 1;
    foldctx_t c = {.g = g};
    int rc = 0;
    graph_t ng;
    graph_init(&ng, g->max_bytes);
    /* One block for the arrays (a run pays for the pass even when it changes nothing): doubles,
     * then int32_t, then bools. g->n and no are bounded (graph.c, run.c): no overflow. */
    size_t bytes = n * (sizeof(double) + 2 * sizeof(int32_t) + 3 * sizeof(bool)) +
                   (size_t)no * sizeof(int32_t);
    double *block = pg_calloc_array(1, bytes);
    if (!block)
        goto out_no_memory;
    c.cval = block;
    c.alias = (int32_t *)(c.cval + n);
    c.newid = c.alias + n;
    c.outnew = c.newid + n;
    c.live = (bool *)(c.outnew + no);
    c.cst = c.live + n;
    c.folded = c.cst + n;
    for (int32_t i = 0; i < g->n; i++) {
        c.alias[i] = i;
        c.newid[i] = -1;
    }

    mark_live(&c, out_id, no);
    int32_t nlive = 0;
    for (int32_t i = 0; i < g->n; i++)
        nlive += c.live[i];
    rc = analyze(&c);
    if (rc < 0)
        goto out_no_memory; /* the only way analyze fails */
    if (rc == 0 && nlive == g->n)
        goto out_free; /* nothing folds and nothing is dead: keep the graph as it is */
    rc = 0;
    mark_live(&c, out_id, no);

    if (rebuild(&c, &ng, out_id, no, err) != 0) {
        if (err->code == PG_ETOO_LARGE)
            goto out_free; /* more nodes than before (constants per reader): keep the graph */
        if (err->code == PG_EOUT_OF_MEMORY)
            goto out_no_memory;
        rc = -err->code;
        goto out_free;
    }

    /* Success: renumber, then swap the new graph in. */
    for (uint32_t k = 0; k < no; k++)
        out_id[k] = c.outnew[k];
    for (uint32_t r = 0; r < nmap; r++) {
        int32_t old = map[r];
        int32_t to = old >= 0 && old < g->n ? c.alias[old] : -1;
        map[r] = to >= 0 && c.live[to] ? c.newid[to] : -1;
    }
    ng.wire = g->wire;
    ng.wire_op = g->wire_op;
    graph_free(g);
    *g = ng;
    graph_init(&ng, 0);
    goto out_free;

out_no_memory:
    rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to fold the constants of a graph of %d "
                                            "nodes",
                    (int)g->n);
out_free:
    graph_free(&ng);
    pg_free(block);
    return rc;
}
