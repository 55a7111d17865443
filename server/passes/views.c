/*
 * views.c - view folding: a view of an elementwise result becomes the elementwise op of views.
 *
 * The fusion pass (fuse.c) composes views only on the way from a buffer into a kernel: a view
 * *of* an elementwise result changes the iteration shape in the middle of a loop, so that result
 * is written to memory first. Lowering makes such views all the time, most often an expand of a
 * small per-row value: layer_norm's mean and 1/sqrt(var + eps), softmax's statistics, a bias
 * added after a reduction. Each of those tiny tensors then costs a step (a kernel or an
 * interpreter call) of its own, and its consumer a second kernel.
 *
 * Every operand of an elementwise node already has that node's exact shape (the builder expands
 * operands, ops.def), so a view's attributes apply to each operand unchanged, and
 * V(E(a, b)) = E(V(a), V(b)) holds element for element whatever V is (permute, expand, slice,
 * flip or reshape). This pass rewrites the graph that way wherever E is used by V alone, and
 * keeps going down while the operands are themselves elementwise nodes used once, and through
 * chains of views (expand(reshape(E)) applies both to each operand, in order). Reductions,
 * matmuls, leaves and everything else that is not elementwise stay where they are: the views
 * stop on top of them, where the fusion pass composes them into loads.
 *
 *   before:  %5 = sum(%0, dims=[1], keepdim) [64, 1]     %6 = mul(%5, expand(%f)) [64, 1]
 *            %7 = expand(%6) [64, 256]                   %8 = sub(%0, %7) [64, 256]
 *   after:   %5 = sum(%0, dims=[1], keepdim) [64, 1]
 *            %7' = mul(expand(%5), expand(expand(%f))) [64, 256]       %8 = sub(%0, %7')
 *
 * Now sub and mul are one kernel that reads the row sums through a stride-0 load, where before
 * the [64, 1] product was a step of its own.
 *
 * Three limits keep a rewrite from costing more than it saves:
 *   - a chain that holds an expand is pushed only when its last view feeds exactly one fusible
 *     consumer (an elementwise op or a fusible reduction): the pushed ops then run in that
 *     consumer's loop. Anywhere else (a matmul, a run output, two consumers) the now full-size
 *     elementwise result would be written to memory, where before only the small one was;
 *   - a reshape is pushed only ahead of any other view of the chain, and only through an
 *     elementwise node whose operands are buffers (non-view nodes) or constants: a reshape of
 *     a strided view cannot be composed into a load, and would be copied;
 *   - the rewritten graph may not grow past twice the live nodes (plus a margin), nor past the
 *     node limit of graph_add: a graph that would is left as it was.
 *
 * The graph is rebuilt rather than edited: the old nodes are walked in topological order and
 * re-emitted through graph_add() into a new graph (which re-checks every shape), with pushed
 * nodes emitted where the elementwise node stood. Nodes no output needs are not emitted. The
 * new graph replaces the old one only when it is complete.
 */
#include "views.h"

#include "../mem.h"
#include "fuse.h"

#include <string.h>

/* The rewritten graph may hold at most this many nodes more than twice the old one's live
 * nodes (pushing emits one view per operand per view of a chain). */
#define VIEWS_GROWTH_MARGIN 1024

/* Facts about the chain of views that starts at a pushable view node (flags[]). */
enum {
    VF_RESHAPE = 1, /* the chain holds a reshape */
    VF_EXPAND = 2,  /* the chain holds an expand */
    VF_TOP_OK = 4,  /* its last view feeds exactly one fusible consumer */
    VF_DOWN = 8,    /* the chain (this view first) may be pushed below this view's input */
};

typedef struct {
    const graph_t *g;
    bool *live;      /* some output needs the node */
    int32_t *uses;   /* input slots of live nodes that read the node, plus outputs that name it */
    int32_t *user;   /* the node that reads it when uses is 1 (-1: it is a run output) */
    bool *cst;       /* an inlined constant (fuse_full_inlined), possibly through views */
    bool *flat;      /* elementwise, every operand a non-view node or a constant */
    int32_t *want;   /* the chain of views the node's one reader wants applied (-1: none) */
    uint8_t *flags;  /* VF_* of the chain that starts at a pushable view */
    int32_t *newid;  /* the node's value in the new graph */
    int32_t budget;  /* the most nodes the new graph may have */
} vctx_t;

static bool pushable_view(prim_t op) {
    return op == PRIM_permute || op == PRIM_expand || op == PRIM_slice || op == PRIM_flip ||
           op == PRIM_reshape;
}

/* Consumers whose loop a pushed expand runs in (fuse.c fuses them with their operands). */
static bool fusible_consumer(prim_t op) {
    return fuse_is_elementwise(op) || op == PRIM_sum || op == PRIM_prod || op == PRIM_max ||
           op == PRIM_min || op == PRIM_any || op == PRIM_all;
}

/* =============================================================================================
 * Analysis
 * =========================================================================================== */

/* Fills live, uses, user, cst and flat. */
static void count_uses(vctx_t *c, const int32_t *out_id, uint32_t no) {
    const graph_t *g = c->g;
    for (uint32_t k = 0; k < no; k++)
        c->live[out_id[k]] = true;
    for (int32_t i = g->n - 1; i >= 0; i--)
        if (c->live[i])
            for (int32_t k = 0; k < g->nodes[i].nin; k++)
                c->live[g->nodes[i].in[k]] = true;
    for (int32_t i = 0; i < g->n; i++) {
        const gnode_t *n = &g->nodes[i];
        if (!c->live[i])
            continue;
        for (int32_t k = 0; k < n->nin; k++) {
            c->uses[n->in[k]]++;
            c->user[n->in[k]] = i;
        }
        c->cst[i] = fuse_full_inlined(n) || (pushable_view(n->op) && c->cst[n->in[0]]);
        c->flat[i] = fuse_is_elementwise(n->op);
        for (int32_t k = 0; c->flat[i] && k < n->nin; k++) {
            int32_t o = n->in[k];
            c->flat[i] = c->cst[o] || graph_prim_kind(g->nodes[o].op) != PK_VIEW;
        }
    }
    for (uint32_t k = 0; k < no; k++) {
        c->uses[out_id[k]]++;
        c->user[out_id[k]] = -1;
    }
}

/* Decides, from the outputs back, which chain of views each node's one reader hands down to it
 * (want) and what each chain holds (flags). Returns whether anything is pushed at all. */
static bool plan_pushes(vctx_t *c) {
    const graph_t *g = c->g;
    bool any = false;
    for (int32_t i = g->n - 1; i >= 0; i--) {
        const gnode_t *n = &g->nodes[i];
        c->want[i] = -1;
        if (!c->live[i])
            continue;
        bool view = pushable_view(n->op), elem = fuse_is_elementwise(n->op);
        if ((view || elem) && c->uses[i] == 1 && c->user[i] >= 0) {
            int32_t u = c->user[i], offer = -1;
            prim_t uop = g->nodes[u].op;
            if (pushable_view(uop) && (c->flags[u] & VF_DOWN))
                offer = u;
            else if (fuse_is_elementwise(uop) && c->want[u] >= 0)
                offer = c->want[u];
            /* A view takes any chain (it only re-emits the views it stood under when it cannot
             * pass them on); an elementwise node takes a reshape only with flat operands. */
            if (offer >= 0 && (view || !(c->flags[offer] & VF_RESHAPE) || c->flat[i])) {
                c->want[i] = offer;
                any |= elem;
            }
        }
        if (!view)
            continue;
        int32_t w = c->want[i];
        uint8_t up = w >= 0 ? c->flags[w] : 0;
        bool reshape = n->op == PRIM_reshape || (up & VF_RESHAPE);
        bool expand = n->op == PRIM_expand || (up & VF_EXPAND);
        bool top = w >= 0 ? (up & VF_TOP_OK) != 0
                          : c->uses[i] == 1 && c->user[i] >= 0 &&
                                fusible_consumer(g->nodes[c->user[i]].op);
        bool down = (n->op == PRIM_reshape || !(up & VF_RESHAPE)) && (!expand || top);
        c->flags[i] = (uint8_t)((reshape ? VF_RESHAPE : 0) | (expand ? VF_EXPAND : 0) |
                                (top ? VF_TOP_OK : 0) | (down ? VF_DOWN : 0));
    }
    return any;
}

/* =============================================================================================
 * Rebuilding
 * =========================================================================================== */

enum { EMIT_OK = 0, EMIT_GIVE_UP = 1 }; /* or a negative PG_E* */

/* Re-emits node n into ng with inputs in (its attributes, dtype, shape, tensor, request node
 * and weak flag); *id receives the new index. */
static int emit(const vctx_t *c, graph_t *ng, const gnode_t *n, const int32_t *in, int32_t *id,
                proto_err_t *err) {
    if (ng->n >= c->budget)
        return EMIT_GIVE_UP;
    ng->wire = n->wire;
    ng->wire_op = n->wire_op;
    int32_t r = graph_add(ng, n->op, in, n->nin, &n->a, n->dtype, n->rank, n->shape,
                          n->tensor ? tensor_ref(n->tensor) : NULL, err);
    if (r < 0)
        return err->code == PG_ETOO_LARGE ? EMIT_GIVE_UP : -err->code;
    ng->nodes[r].weak = n->weak;
    *id = r;
    return EMIT_OK;
}

/* Applies the chain of views starting at old node v (then want[v], ...) to new node *id. */
static int emit_chain(const vctx_t *c, graph_t *ng, int32_t v, int32_t *id, proto_err_t *err) {
    for (; v >= 0; v = c->want[v]) {
        int rc = emit(c, ng, &c->g->nodes[v], id, id, err);
        if (rc != EMIT_OK)
            return rc;
    }
    return EMIT_OK;
}

/* Emits the live nodes of the old graph into ng in order, pushing views as planned. */
static int rebuild(vctx_t *c, graph_t *ng, proto_err_t *err) {
    const graph_t *g = c->g;
    int32_t ins[GRAPH_MAX_INPUTS];
    for (int32_t i = 0; i < g->n; i++) {
        const gnode_t *n = &g->nodes[i];
        int rc = EMIT_OK;
        if (!c->live[i])
            continue;
        if (pushable_view(n->op)) {
            /* Either the input already carries this view (and those after it), or the chain
             * starts here, on top of whatever the input is. */
            int32_t y = n->in[0];
            c->newid[i] = c->newid[y];
            if (c->want[y] != i)
                rc = emit_chain(c, ng, i, &c->newid[i], err);
        } else if (fuse_is_elementwise(n->op) && c->want[i] >= 0) {
            int32_t chain = c->want[i];
            for (int32_t k = 0; k < n->nin && rc == EMIT_OK; k++) {
                int32_t o = n->in[k];
                ins[k] = c->newid[o];
                if (c->want[o] != chain)
                    rc = emit_chain(c, ng, chain, &ins[k], err);
            }
            if (rc == EMIT_OK)
                rc = emit(c, ng, n, ins, &c->newid[i], err);
        } else {
            for (int32_t k = 0; k < n->nin; k++)
                ins[k] = c->newid[n->in[k]];
            rc = emit(c, ng, n, ins, &c->newid[i], err);
        }
        if (rc != EMIT_OK)
            return rc;
    }
    return EMIT_OK;
}

int views_graph(graph_t *g, int32_t *out_id, uint32_t no, int32_t *map, uint32_t nmap,
                proto_err_t *err) {
    size_t n = g->n ? (size_t)g->n : 1;
    vctx_t c = {.g = g};
    int rc = 0;
    graph_t ng;
    graph_init(&ng, g->max_bytes);
    /* One block for the per-node arrays (a run pays for the pass even when it changes nothing):
     * four of int32_t, then four of one byte. */
    int32_t *block = pg_calloc_array(n, 4 * sizeof(int32_t) + 3 * sizeof(bool) + 1);
    if (!block) {
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to fold the views of a graph of %d "
                                                "nodes",
                        (int)g->n);
        goto out_free;
    }
    c.uses = block;
    c.user = c.uses + n;
    c.want = c.user + n;
    c.newid = c.want + n;
    c.live = (bool *)(c.newid + n);
    c.cst = c.live + n;
    c.flat = c.cst + n;
    c.flags = (uint8_t *)(c.flat + n);
    count_uses(&c, out_id, no);
    int32_t nlive = 0;
    for (int32_t i = 0; i < g->n; i++)
        nlive += c.live[i];
    if (!plan_pushes(&c))
        goto out_free; /* nothing to push: dead nodes are the fold pass's to drop */
    c.budget = nlive * 2 + VIEWS_GROWTH_MARGIN;

    rc = rebuild(&c, &ng, err);
    if (rc == EMIT_GIVE_UP) {
        rc = 0;
        goto out_free;
    }
    if (rc == -PG_EOUT_OF_MEMORY) {
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to fold the views of a graph of %d "
                                                "nodes",
                        (int)g->n);
        goto out_free;
    }
    if (rc != 0)
        goto out_free;

    /* Success: renumber, then swap the new graph in. */
    for (uint32_t k = 0; k < no; k++)
        out_id[k] = c.newid[out_id[k]];
    for (uint32_t r = 0; r < nmap; r++) {
        int32_t old = map[r];
        map[r] = old >= 0 && old < g->n && c.live[old] && c.want[old] < 0 ? c.newid[old] : -1;
    }
    ng.wire = g->wire;
    ng.wire_op = g->wire_op;
    graph_free(g);
    *g = ng;
    graph_init(&ng, 0);

out_free:
    graph_free(&ng);
    pg_free(block);
    return rc;
}
