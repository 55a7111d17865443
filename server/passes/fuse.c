/*
 * fuse.c - the fusion pass: which primitive nodes run together in one compiled loop.
 *
 * The interpreter runs one primitive at a time and writes every intermediate to memory. A fused
 * kernel reads its inputs once and keeps the intermediates in registers. This pass partitions
 * the nodes that the outputs need into *steps*, in execution order:
 *
 *   - a KERNEL step: a maximal group of elementwise nodes (unary incl. cast, binary, where), the
 *     view nodes between them and their input buffers (permute, expand, slice, flip, window,
 *     and reshape while the view is still contiguous), and optionally one trailing reduction
 *     (sum, prod, max, min, any, all) that is the only consumer of the group's result. Every
 *     node of the group except its result is used only inside the group; a node that is also
 *     used elsewhere (or is a run output) ends the group there and becomes the result of a step
 *     of its own.
 *   - an INTERP step: one node for the reference interpreter (leaves, matmul, cat, pad, gather,
 *     index_select, argmax/argmin, cumsum, unwindow, a view that something other than a kernel
 *     reads). A view that several kernels read is no member of any of them, but each
 *     composes it into its own loads (vstate_outside), so it costs no copy and, when nothing
 *     else reads it, no step.
 *   - a KERNEL step for a reshape of a strided view (an im2col), which copies: one load
 *     through the composed views, written in C order (compose_copy).
 *   - a KERNEL step for a reduction of anything else (a step's result, possibly through views):
 *     its iteration space is the reduction input's shape and its one value is a load of that
 *     input through the composed views, folded exactly as the interpreter folds it (the
 *     interpreter would read the same elements one by one through its generic iterator, ~10x
 *     slower). A reduction of a full constant stays in the interpreter.
 *
 *   before (primitives, run output %7):
 *     %0 = input [4, 3]   %1 = input [3]      %2 = expand(%1) [4, 3]   %3 = mul(%0, %2)
 *     %4 = full 0 []      %5 = expand(%4)     %6 = maximum(%3, %5)     %7 = sum(%6, dims=[1])
 *   after (3 steps):
 *     step 0: interp %0     step 1: interp %1
 *     step 2: kernel -> %7, iteration [4, 3] reduced {1}:
 *             v0 = load in0 (%0, strides [3, 1]); v1 = load in1 (%1, strides [0, 1]);
 *             v2 = mul v0 v1; v3 = const 0; v4 = maximum v2 v3; out = sum over axis 1 of v4
 *
 * Kernel inputs are the results of earlier steps, which the executor hands over as contiguous
 * buffers of their node's shape. Every view from such a buffer to its use inside the group is
 * composed here, at plan time, into one affine index (offset + strides over the kernel's
 * iteration space), which is why the views cost nothing. Views are only fused on the way from a
 * buffer to an elementwise node or a reduction: a view *of* an elementwise result would change
 * the iteration shape in the middle of the loop, so that result is materialized first (it
 * becomes a step output, and the view starts from its buffer in the next kernel). As a
 * consequence every elementwise node of a group has the same shape, the iteration shape (the
 * builder has already expanded binary operands). `full` leaves fold into constants
 * (fuse_full_inlined).
 *
 * Groups are grown from the output side: nodes are visited in reverse topological order, and an
 * elementwise node (or a fusible reduction) that no later group took becomes the root of a new
 * group. The group then takes candidate inputs in decreasing index order (a max-heap), so that
 * by the time a node is considered every node that could consume it inside the group already
 * has been, and "all of its uses are inside the group" can be decided once. A group that would
 * need more than KIR_MAX_INPUTS buffers is grown again with half as many elementwise nodes; a
 * reshape whose view is not contiguous is excluded and the group grown again without it. A
 * group rooted at a reduction may hold no elementwise node at all (the reduction and the views
 * between it and its input buffer); it is still a kernel, a load and a fold.
 */
#include "fuse.h"
#include "stitch.h"

#include "../mem.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* =============================================================================================
 * Classification
 * =========================================================================================== */

bool fuse_is_elementwise(prim_t op) {
    prim_kind_t k = graph_prim_kind(op);
    return k == PK_UNARY || k == PK_BINARY || k == PK_WHERE;
}

/* Views a kernel composes into its loads: each is an affine map from the view's index to its
 * input's (apply_view). A window's two axes per spatial axis (output and kernel position) both
 * step along that input axis, so it is one too. */
static bool fusible_view(prim_t op) {
    return op == PRIM_permute || op == PRIM_expand || op == PRIM_slice || op == PRIM_flip ||
           op == PRIM_reshape || op == PRIM_window;
}

static bool fusible_reduce(prim_t op) {
    return op == PRIM_sum || op == PRIM_prod || op == PRIM_max || op == PRIM_min ||
           op == PRIM_any || op == PRIM_all;
}

bool fuse_full_inlined(const gnode_t *n) {
    if (n->op != PRIM_full)
        return false;
    if (!n->weak)
        return true;
    double v = n->a.value;
    return v == trunc(v) && fabs(v) <= 16777216.0;
}

/* =============================================================================================
 * Working state
 * =========================================================================================== */

enum { COMPOSE_OK = 0, COMPOSE_RETRY_BLOCKED, COMPOSE_RETRY_SMALLER, COMPOSE_GIVE_UP };

typedef struct {
    const graph_t *g;
    bool *needed;        /* some output needs the node */
    bool *is_out;        /* a run output */
    bool *blocked;       /* a reshape that cannot be composed: never fused */
    int32_t *nuse;       /* input slots of needed nodes that read the node */
    int32_t *group;      /* root of the kernel that computes the node inside, -1: none */
    /* Per growth attempt (valid when stamp[j] == epoch). */
    uint32_t *stamp;
    uint32_t epoch;
    int32_t *gedges;     /* input slots of group members that read the node */
    bool *by_view;       /* a view member reads it */
    int32_t *heap;       /* max-heap of candidate nodes */
    int32_t nheap;
    int32_t *members;    /* the group being grown */
    int32_t nmembers;
    int32_t nelem;       /* elementwise members */
    int32_t blocked_node; /* set by compose when it returns COMPOSE_RETRY_BLOCKED */
} fctx_t;

static void heap_push(fctx_t *c, int32_t v) {
    int32_t i = c->nheap++;
    c->heap[i] = v;
    while (i > 0) {
        int32_t p = (i - 1) / 2;
        if (c->heap[p] >= c->heap[i])
            break;
        int32_t t = c->heap[p];
        c->heap[p] = c->heap[i];
        c->heap[i] = t;
        i = p;
    }
}

static int32_t heap_pop(fctx_t *c) {
    int32_t top = c->heap[0];
    c->heap[0] = c->heap[--c->nheap];
    int32_t i = 0;
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < c->nheap && c->heap[l] > c->heap[m])
            m = l;
        if (r < c->nheap && c->heap[r] > c->heap[m])
            m = r;
        if (m == i)
            break;
        int32_t t = c->heap[m];
        c->heap[m] = c->heap[i];
        c->heap[i] = t;
        i = m;
    }
    return top;
}

/* Makes m a member of the group rooted at root and offers its inputs as candidates. */
static void add_member(fctx_t *c, int32_t root, int32_t m) {
    const gnode_t *n = &c->g->nodes[m];
    c->group[m] = root;
    c->members[c->nmembers++] = m;
    if (fuse_is_elementwise(n->op))
        c->nelem++;
    for (int32_t k = 0; k < n->nin; k++) {
        int32_t j = n->in[k];
        if (c->stamp[j] != c->epoch) {
            c->stamp[j] = c->epoch;
            c->gedges[j] = 0;
            c->by_view[j] = false;
            heap_push(c, j);
        }
        c->gedges[j]++;
        if (graph_prim_kind(n->op) == PK_VIEW)
            c->by_view[j] = true;
    }
}

/* Grows the group of root, taking at most cap elementwise nodes. */
static void grow(fctx_t *c, int32_t root, int32_t cap) {
    c->epoch++;
    c->nheap = 0;
    c->nmembers = 0;
    c->nelem = 0;
    add_member(c, root, root);
    while (c->nheap > 0) {
        int32_t j = heap_pop(c);
        const gnode_t *n = &c->g->nodes[j];
        if (c->group[j] != -1 || c->is_out[j] || c->blocked[j] || c->gedges[j] != c->nuse[j])
            continue; /* an input of the kernel (or a constant) */
        bool take = fusible_view(n->op) ||
                    (fuse_is_elementwise(n->op) && !c->by_view[j] && c->nelem < cap);
        if (take)
            add_member(c, root, j);
    }
}

static void undo(fctx_t *c) {
    for (int32_t k = 0; k < c->nmembers; k++)
        c->group[c->members[k]] = -1;
    c->nmembers = 0;
}

/* =============================================================================================
 * Composing a group into a kernel
 * =========================================================================================== */

/* Where a view member's elements come from: a buffer (a step's result) through an affine index,
 * or a constant. */
typedef struct {
    int32_t base;                      /* the buffer's node, or the full node of a constant */
    bool is_const;
    int rank;
    int64_t shape[PROTO_MAX_RANK];
    int64_t strides[PROTO_MAX_RANK];   /* elements of the buffer per step along each axis */
    int64_t off;
} vstate_t;

static void vstate_of_node(const fctx_t *c, int32_t j, vstate_t *v) {
    const gnode_t *n = &c->g->nodes[j];
    v->base = j;
    v->is_const = fuse_full_inlined(n);
    v->rank = n->rank;
    v->off = 0;
    int64_t s = 1;
    for (int d = n->rank - 1; d >= 0; d--) {
        v->shape[d] = n->shape[d];
        v->strides[d] = s;
        s *= n->shape[d] > 0 ? n->shape[d] : 1;
    }
}

static bool vstate_contiguous(const vstate_t *v) {
    int64_t expect = 1;
    for (int d = v->rank - 1; d >= 0; d--) {
        if (v->shape[d] != 1 && v->strides[d] != expect)
            return false;
        expect *= v->shape[d];
    }
    return true;
}

/* Where a node outside the group reads from. A buffer or constant reads itself. A view that no
 * group took, because several kernels read it (a gradient reads one index tensor in two
 * kernels, say), is composed down to the buffer under it, as each kernel would compose it as a
 * member: its elements then cost no copy, and the view needs no step unless something still
 * reads it as a buffer. A view that cannot be composed (a reshape of a strided view), or the
 * VIEW_CHAIN_MAX-th of a chain, is read as a buffer, and the views above it compose on it. */
#define VIEW_CHAIN_MAX 32

static bool apply_view(const gnode_t *m, const vstate_t *x, vstate_t *v);

static void vstate_outside(const fctx_t *c, int32_t j, vstate_t *v) {
    int32_t chain[VIEW_CHAIN_MAX];
    int nc = 0;
    int32_t b = j;
    while (nc < VIEW_CHAIN_MAX && c->group[b] == -1 && fusible_view(c->g->nodes[b].op)) {
        chain[nc++] = b;
        b = c->g->nodes[b].in[0];
    }
    vstate_of_node(c, b, v);
    for (int q = nc - 1; q >= 0; q--) {
        vstate_t x = *v;
        if (!apply_view(&c->g->nodes[chain[q]], &x, v))
            vstate_of_node(c, chain[q], v); /* read as a buffer; the views above it compose */
    }
}

/* Applies view node m (input state *x) into *v. Returns false when it cannot be composed (a
 * reshape of a non-contiguous view) or the node breaks the builder's contract. */
static bool apply_view(const gnode_t *m, const vstate_t *x, vstate_t *v) {
    const gattr_t *a = &m->a;
    *v = *x;
    v->rank = m->rank;
    for (int d = 0; d < m->rank; d++)
        v->shape[d] = m->shape[d];
    switch (m->op) {
    case PRIM_permute:
        if (a->ndims != x->rank || m->rank != x->rank)
            return false;
        for (int d = 0; d < m->rank; d++) {
            int64_t xd = a->dims[d];
            if (xd < 0 || xd >= x->rank || x->shape[xd] != m->shape[d])
                return false;
            v->strides[d] = x->strides[xd];
        }
        return true;
    case PRIM_expand: {
        int lead = m->rank - x->rank;
        if (lead < 0)
            return false;
        for (int d = 0; d < m->rank; d++) {
            int xd = d - lead;
            if (xd < 0 || x->shape[xd] != m->shape[d]) {
                if (xd >= 0 && x->shape[xd] != 1)
                    return false;
                v->strides[d] = 0;
            } else {
                v->strides[d] = x->strides[xd];
            }
        }
        return true;
    }
    case PRIM_slice:
        if (m->rank != x->rank)
            return false;
        for (int d = 0; d < m->rank; d++) {
            if (m->shape[d] > 0 &&
                (a->start[d] < 0 || a->step[d] < 1 ||
                 a->start[d] + (m->shape[d] - 1) * a->step[d] >= x->shape[d]))
                return false;
            v->off += a->start[d] * x->strides[d];
            v->strides[d] = x->strides[d] * a->step[d];
        }
        return true;
    case PRIM_flip:
        if (m->rank != x->rank)
            return false;
        for (int k = 0; k < a->ndims; k++) {
            int64_t d = a->dims[k];
            if (d < 0 || d >= x->rank)
                return false;
            if (x->shape[d] > 0) {
                v->off += (x->shape[d] - 1) * v->strides[d];
                v->strides[d] = -v->strides[d];
            }
        }
        return true;
    case PRIM_window:
        /* The interpreter's strides (graph.c). A window with no elements, or one that reaches
         * outside its input, stays with the interpreter, which reports the latter. */
        return m->numel > 0 && graph_window_strides(m, x->shape, x->rank, x->strides, v->strides);
    case PRIM_reshape: {
        if (!x->is_const && !vstate_contiguous(x))
            return false;
        int64_t s = 1;
        for (int d = m->rank - 1; d >= 0; d--) {
            v->strides[d] = s;
            s *= m->shape[d] > 0 ? m->shape[d] : 1;
        }
        return true;
    }
    default:
        return false;
    }
}


/* Returns the value that reads operand state *v (a load or a constant), reusing an equal one. */
static int operand_val(const fctx_t *c, kir_kernel_t *k, int32_t *kin_node, const vstate_t *v,
                       pg_dtype_t dtype) {
    kir_val_t nv = {.a = -1, .b = -1, .c = -1, .input = -1, .dtype = dtype};
    if (v->is_const) {
        nv.kind = KIR_CONST;
        nv.value = c->g->nodes[v->base].a.value;
        for (int i = 0; i < k->nvals; i++)
            if (k->vals[i].kind == KIR_CONST && k->vals[i].dtype == dtype &&
                memcmp(&k->vals[i].value, &nv.value, sizeof(double)) == 0)
                return i;
        return kir_add_val(k, &nv);
    }
    int in = -1;
    for (int i = 0; i < k->nin; i++)
        if (kin_node[i] == v->base && k->in[i].off == v->off &&
            memcmp(k->in[i].strides, v->strides, (size_t)k->rank * sizeof(int64_t)) == 0)
            in = i;
    if (in < 0) {
        if (k->nin >= KIR_MAX_INPUTS)
            return -2;
        in = k->nin++;
        kin_node[in] = v->base;
        memset(&k->in[in], 0, sizeof(k->in[in]));
        k->in[in].dtype = c->g->nodes[v->base].dtype;
        k->in[in].off = v->off;
        for (int d = 0; d < k->rank; d++)
            k->in[in].strides[d] = v->strides[d];
    }
    for (int i = 0; i < k->nvals; i++)
        if (k->vals[i].kind == KIR_LOAD && k->vals[i].input == in)
            return i;
    nv.kind = KIR_LOAD;
    nv.input = in;
    nv.dtype = k->in[in].dtype;
    return kir_add_val(k, &nv);
}

/* True when every element the affine index of input in reaches lies inside a buffer of numel
 * elements (checked once here, so a kernel can never read outside its inputs). */
static bool input_in_bounds(const kir_kernel_t *k, const kir_input_t *in, uint64_t numel) {
    int64_t lo = in->off, hi = in->off;
    for (int d = 0; d < k->rank; d++) {
        if (k->shape[d] == 0)
            return true; /* nothing is read */
        int64_t span = (k->shape[d] - 1) * in->strides[d];
        if (span < 0)
            lo += span;
        else
            hi += span;
    }
    return lo >= 0 && (uint64_t)hi < numel;
}

/*
 * Turns the current group (members of c, root `root`) into a kernel in *k with kin_node filled.
 * vst and val are scratch arrays indexed by node. Returns COMPOSE_OK or why not.
 */
static int compose(fctx_t *c, int32_t root, kir_kernel_t *k, int32_t *kin_node, vstate_t *vst,
                   int32_t *val) {
    const graph_t *g = c->g;
    const gnode_t *r = &g->nodes[root];
    bool reduce = fusible_reduce(r->op);
    int32_t result = reduce ? r->in[0] : root;
    const gnode_t *res = &g->nodes[result];
    /* A reduction of anything but the group's elementwise result folds a load of its input. */
    bool loaded = reduce && (!fuse_is_elementwise(res->op) || c->group[result] != root);
    if (!loaded && (!fuse_is_elementwise(res->op) || c->group[result] != root))
        return COMPOSE_GIVE_UP;
    memset(k, 0, sizeof(*k));
    k->rank = res->rank;
    for (int d = 0; d < res->rank; d++)
        k->shape[d] = res->shape[d];
    k->reduce = reduce ? r->op : PRIM_COUNT;
    k->out_dtype = r->dtype;
    if (reduce) {
        for (int q = 0; q < r->a.ndims; q++) {
            int64_t d = r->a.dims[q];
            if (d < 0 || d >= k->rank)
                return COMPOSE_GIVE_UP;
            k->reduced[d] = true;
        }
    }

    /* Members in ascending (topological) order. */
    for (int32_t q = 0; q < c->nmembers; q++) {
        int32_t m = c->members[q];
        const gnode_t *n = &g->nodes[m];
        if (m == root && reduce)
            continue;
        if (graph_prim_kind(n->op) == PK_VIEW) {
            int32_t x = n->in[0];
            vstate_t xs;
            if (c->group[x] == root)
                xs = vst[x];
            else
                vstate_outside(c, x, &xs);
            if (!apply_view(n, &xs, &vst[m])) {
                if (n->op != PRIM_reshape)
                    return COMPOSE_GIVE_UP;
                c->blocked_node = m;
                return COMPOSE_RETRY_BLOCKED;
            }
            continue;
        }
        /* Elementwise: its operands have its shape, the iteration shape. */
        if (n->rank != k->rank || memcmp(n->shape, k->shape, (size_t)k->rank * 8) != 0)
            return COMPOSE_GIVE_UP;
        int ops[3] = {-1, -1, -1};
        for (int32_t s = 0; s < n->nin && s < 3; s++) {
            int32_t j = n->in[s];
            const gnode_t *jn = &g->nodes[j];
            if (c->group[j] == root && fuse_is_elementwise(jn->op)) {
                ops[s] = val[j];
                continue;
            }
            vstate_t js;
            if (c->group[j] == root)
                js = vst[j];
            else
                vstate_outside(c, j, &js);
            if (js.rank != k->rank || memcmp(js.shape, k->shape, (size_t)k->rank * 8) != 0)
                return COMPOSE_GIVE_UP;
            int v = operand_val(c, k, kin_node, &js, jn->dtype);
            if (v == -2)
                return COMPOSE_RETRY_SMALLER;
            if (v < 0)
                return COMPOSE_RETRY_SMALLER;
            ops[s] = v;
        }
        kir_val_t ov = {.kind = KIR_OP, .prim = n->op, .dtype = n->dtype, .a = ops[0],
                        .b = ops[1], .c = ops[2], .input = -1};
        int v = kir_add_val(k, &ov);
        if (v < 0)
            return COMPOSE_RETRY_SMALLER;
        val[m] = v;
    }
    if (loaded) {
        vstate_t rs;
        if (c->group[result] == root)
            rs = vst[result];
        else
            vstate_outside(c, result, &rs);
        if (rs.is_const || rs.rank != k->rank ||
            memcmp(rs.shape, k->shape, (size_t)k->rank * 8) != 0)
            return COMPOSE_GIVE_UP;
        int v = operand_val(c, k, kin_node, &rs, res->dtype);
        if (v < 0)
            return COMPOSE_GIVE_UP;
        val[result] = v;
    }
    if (k->nvals == 0 || k->vals[k->nvals - 1].kind != (loaded ? KIR_LOAD : KIR_OP) ||
        k->vals[k->nvals - 1].dtype != res->dtype || val[result] != k->nvals - 1)
        return COMPOSE_GIVE_UP;
    for (int i = 0; i < k->nin; i++)
        if (!input_in_bounds(k, &k->in[i], g->nodes[kin_node[i]].numel))
            return COMPOSE_GIVE_UP;
    k->nstages = 1;
    k->stage[0].reduce = k->reduce;
    k->stage[0].end = k->nvals;
    k->stage[0].dtype = k->out_dtype;
    return COMPOSE_OK;
}

/* A reshape of a strided view (an im2col: the windows of a padded image, permuted; the
 * gradient of a pooling, put back in image order) is a copy. The interpreter makes it one run
 * of the last axis at a time; as a kernel it is a loop over the view's shape with one load, its
 * strides baked in, writing the reshape's buffer in C order. Returns COMPOSE_OK with k built, or
 * COMPOSE_GIVE_UP when the reshape copies nothing (a contiguous or constant input) or its load
 * cannot be formed. */
static int compose_copy(const fctx_t *c, int32_t r, kir_kernel_t *k, int32_t *kin_node) {
    const gnode_t *rn = &c->g->nodes[r];
    vstate_t vs;
    vstate_outside(c, rn->in[0], &vs);
    if (vs.is_const || vstate_contiguous(&vs))
        return COMPOSE_GIVE_UP;
    memset(k, 0, sizeof(*k));
    k->rank = vs.rank;
    for (int d = 0; d < vs.rank; d++)
        k->shape[d] = vs.shape[d];
    k->reduce = PRIM_COUNT;
    k->out_dtype = rn->dtype;
    if (kir_out_numel(k) != rn->numel || operand_val(c, k, kin_node, &vs, rn->dtype) != 0 ||
        !input_in_bounds(k, &k->in[0], c->g->nodes[kin_node[0]].numel))
        return COMPOSE_GIVE_UP;
    k->nstages = 1;
    k->stage[0].reduce = PRIM_COUNT;
    k->stage[0].end = k->nvals;
    k->stage[0].dtype = k->out_dtype;
    return COMPOSE_OK;
}

/* =============================================================================================
 * The pass
 * =========================================================================================== */

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

void fuse_free(fuse_plan_t *fp) {
    for (int32_t s = 0; s < fp->nsteps; s++) {
        fuse_step_t *st = &fp->steps[s];
        pg_free(st->read);
        pg_free(st->release);
        pg_free(st->kernel);
        pg_free(st->members);
    }
    pg_free(fp->steps);
    memset(fp, 0, sizeof(*fp));
}

/* Copies n int32s into a new array (NULL for n == 0); false when memory runs out. */
static bool dup_ids(int32_t **dst, const int32_t *src, int32_t n) {
    *dst = NULL;
    if (n == 0)
        return true;
    *dst = pg_calloc_array((size_t)n, sizeof(int32_t));
    if (!*dst)
        return false;
    memcpy(*dst, src, (size_t)n * sizeof(int32_t));
    return true;
}

/* Runs stitch_inline over every kernel's inputs (kern[r], kin[r] by root; tmp is a spare
 * kernel), then drops unread kernels. inliner and nread are scratch arrays of g->n. */
static int stitch_all(fctx_t *c, kir_kernel_t **kern, int32_t (*kin)[KIR_MAX_INPUTS],
                      kir_kernel_t *tmp, int32_t *inliner, int32_t *nread, proto_err_t *err) {
    const graph_t *g = c->g;
    int32_t n = g->n, kin_tmp[KIR_MAX_INPUTS];
    for (int32_t i = 0; i < n; i++) {
        inliner[i] = -1;
        nread[i] = 0;
    }
    for (int32_t r = 0; r < n; r++) {
        if (!kern[r])
            continue;
        for (int q = 0; q < kern[r]->nin; q++) {
            int32_t p = kin[r][q];
            if (p < 0 || p >= r || !kern[p] ||
                !stitch_inline(kern[r], kin[r], q, kern[p], kin[p], tmp, kin_tmp))
                continue;
            kir_kernel_t t = *kern[r];
            *kern[r] = *tmp;
            *tmp = t;
            memcpy(kin[r], kin_tmp, sizeof(kin_tmp));
            inliner[p] = r;
            q = -1; /* the inputs changed: look at them all again */
        }
    }
    /* Liveness, from the outputs back: a kernel lives if a run output or a living step reads
     * it. Grouped nodes other than roots are inside their kernel and read nothing themselves. */
    for (int32_t i = n - 1; i >= 0; i--) {
        if (!c->needed[i])
            continue;
        if (kern[i]) {
            if (!c->is_out[i] && nread[i] == 0) {
                pg_free(kern[i]);
                kern[i] = NULL;
                continue;
            }
            for (int q = 0; q < kern[i]->nin; q++)
                nread[kin[i][q]]++;
        } else if (c->group[i] == -1) {
            for (int32_t s = 0; s < g->nodes[i].nin; s++)
                nread[g->nodes[i].in[s]]++;
        }
    }
    /* Nodes of a dropped kernel belong to the kernel that stitched it in (for explain). */
    for (int32_t j = 0; j < n; j++) {
        int32_t r = c->group[j];
        while (r >= 0 && !kern[r])
            r = inliner[r];
        if (c->group[j] >= 0 && r < 0)
            return proto_fail(err, PG_EINTERNAL, "fusion: node %d lost its kernel", (int)j);
        c->group[j] = r;
    }
    return 0;
}

static uint64_t fuse_min_work = FUSE_MIN_WORK_DEFAULT;

void fuse_set_min_work(uint64_t elements) { fuse_min_work = elements; }

uint64_t fuse_get_min_work(void) { return fuse_min_work; }

bool fuse_below_min_work(const graph_t *g, int32_t i) {
    const gnode_t *n = &g->nodes[i];
    if (fusible_reduce(n->op))
        return g->nodes[n->in[0]].numel < fuse_min_work; /* a reduction loops over its input */
    return fuse_is_elementwise(n->op) && n->numel < fuse_min_work;
}

int fuse_graph(const graph_t *g, const int32_t *out_id, uint32_t no, bool fuse, bool every_loop,
               fuse_plan_t *fp,
               proto_err_t *err) {
    int rc = 0;
    int32_t n = g->n;
    size_t nn = n > 0 ? (size_t)n : 1;
    memset(fp, 0, sizeof(*fp));
    fctx_t c = {.g = g};
    c.needed = pg_calloc_array(nn, sizeof(bool));
    c.is_out = pg_calloc_array(nn, sizeof(bool));
    c.blocked = pg_calloc_array(nn, sizeof(bool));
    c.by_view = pg_calloc_array(nn, sizeof(bool));
    c.nuse = pg_calloc_array(nn, sizeof(int32_t));
    c.group = pg_calloc_array(nn, sizeof(int32_t));
    c.stamp = pg_calloc_array(nn, sizeof(uint32_t));
    c.gedges = pg_calloc_array(nn, sizeof(int32_t));
    c.heap = pg_calloc_array(nn, sizeof(int32_t));
    c.members = pg_calloc_array(nn, sizeof(int32_t));
    int32_t *val = pg_calloc_array(nn, sizeof(int32_t));
    int32_t *step_of = pg_calloc_array(nn, sizeof(int32_t));  /* node -> step producing it */
    int32_t *last = pg_calloc_array(nn, sizeof(int32_t));     /* node -> last reading step */
    bool *buf_read = pg_calloc_array(nn, sizeof(bool));       /* read as a buffer by a step */
    int32_t *scratch = pg_calloc_array(nn + GRAPH_MAX_INPUTS, sizeof(int32_t));
    vstate_t *vst = fuse ? pg_calloc_array(nn, sizeof(vstate_t)) : NULL;
    kir_kernel_t *k = pg_malloc(sizeof(*k));
    /* Kernels found, by root: kern[root] (owned until moved into a step). */
    kir_kernel_t **kern = pg_calloc_array(nn, sizeof(kir_kernel_t *));
    int32_t (*kin)[KIR_MAX_INPUTS] = pg_calloc_array(nn, sizeof(*kin));
    if (!c.needed || !c.is_out || !c.blocked || !c.by_view || !c.nuse || !c.group || !c.stamp ||
        !c.gedges || !c.heap || !c.members || !val || !step_of || !last || !buf_read ||
        !scratch || (fuse && !vst) || !k || !kern || !kin) {
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to plan %d nodes", (int)n);
        goto out;
    }

    /* Needed nodes and their uses. */
    for (uint32_t q = 0; q < no; q++)
        c.needed[out_id[q]] = c.is_out[out_id[q]] = true;
    for (int32_t i = n - 1; i >= 0; i--) {
        c.group[i] = -1;
        if (!c.needed[i])
            continue;
        for (int32_t s = 0; s < g->nodes[i].nin; s++) {
            c.needed[g->nodes[i].in[s]] = true;
            c.nuse[g->nodes[i].in[s]]++;
        }
    }

    /* Groups, from the output side. */
    for (int32_t r = n - 1; fuse && r >= 0; r--) {
        const gnode_t *rn = &g->nodes[r];
        if (!c.needed[r] || c.group[r] != -1)
            continue;
        if (!fuse_is_elementwise(rn->op) && !fusible_reduce(rn->op))
            continue;
        if (fuse_below_min_work(g, r) && !every_loop)
            continue;
        int32_t cap = FUSE_MAX_ELEMWISE;
        for (;;) {
            grow(&c, r, cap);
            qsort(c.members, (size_t)c.nmembers, sizeof(int32_t), cmp_i32);
            int crc = compose(&c, r, k, kin[r], vst, val);
            if (crc == COMPOSE_OK) {
                kern[r] = k;
                k = pg_malloc(sizeof(*k));
                if (!k) {
                    rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to plan %d nodes", (int)n);
                    goto out;
                }
                break;
            }
            int32_t had = c.nelem;
            undo(&c);
            if (crc == COMPOSE_RETRY_BLOCKED) {
                c.blocked[c.blocked_node] = true;
            } else if (crc == COMPOSE_RETRY_SMALLER && had > 1) {
                cap = had / 2;
            } else {
                break; /* the root runs in the interpreter */
            }
        }
    }

    /* Copies: a reshape that no group took and that would copy (compose_copy). */
    for (int32_t r = 0; fuse && r < n; r++) {
        const gnode_t *rn = &g->nodes[r];
        if (!c.needed[r] || c.group[r] != -1 || rn->op != PRIM_reshape ||
            (rn->numel < fuse_min_work && !every_loop))
            continue;
        if (compose_copy(&c, r, k, kin[r]) != COMPOSE_OK)
            continue;
        kern[r] = k;
        c.group[r] = r;
        k = pg_malloc(sizeof(*k));
        if (!k) {
            rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to plan %d nodes", (int)n);
            goto out;
        }
    }

    /* Stitching (stitch.c): a kernel that folds rows runs inside the kernels that read its
     * result back, in topological order so that chains stitch transitively; then the kernels
     * that no step reads any more are dropped, their nodes counted as the stitched kernel's. */
    if (fuse && (rc = stitch_all(&c, kern, kin, k, step_of, last, err)) != 0)
        goto out;

    /* Steps in index order: a kernel at its root, an interpreter step for every other needed
     * node that no kernel computes inside, except the constants and views that kernels absorbed
     * and nothing else reads. */
    int32_t nsteps = 0;
    for (int32_t i = 0; i < n; i++)
        val[i] = 0;
    for (int32_t i = 0; i < n; i++)
        if (c.group[i] >= 0)
            val[c.group[i]]++;
    /* From the outputs down, so that every reader of a node has been decided before it: an
     * absorbed constant, or a view that kernels composed through (vstate_outside), gets a step
     * only as an output or as another step's buffer. step_of marks here, numbers below. */
    for (int32_t i = n - 1; i >= 0; i--) {
        step_of[i] = -1;
        last[i] = -1;
        if (!c.needed[i] || (c.group[i] != -1 && !kern[i]))
            continue;
        const gnode_t *in = &g->nodes[i];
        bool elidable = fuse_full_inlined(in) || graph_prim_kind(in->op) == PK_VIEW;
        if (fuse && !kern[i] && elidable && !c.is_out[i] && !buf_read[i])
            continue;
        step_of[i] = 1;
        if (kern[i]) {
            for (int q = 0; q < kern[i]->nin; q++)
                buf_read[kin[i][q]] = true;
        } else {
            for (int32_t s = 0; s < in->nin; s++)
                buf_read[in->in[s]] = true;
        }
    }
    for (int32_t i = 0; i < n; i++)
        if (step_of[i] >= 0)
            step_of[i] = nsteps++;
    fp->steps = pg_calloc_array(nsteps ? (size_t)nsteps : 1, sizeof(fuse_step_t));
    if (!fp->steps) {
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to plan %d steps", (int)nsteps);
        goto out;
    }
    for (int32_t i = 0; i < n; i++) {
        if (step_of[i] < 0)
            continue;
        fuse_step_t *st = &fp->steps[fp->nsteps++];
        st->node = i;
        int32_t nr = 0;
        if (kern[i]) {
            st->kind = FUSE_STEP_KERNEL;
            st->kernel = kern[i];
            kern[i] = NULL;
            memcpy(st->kin_node, kin[i], sizeof(st->kin_node));
            for (int q = 0; q < st->kernel->nin; q++)
                scratch[nr++] = kin[i][q];
            st->members = pg_calloc_array((size_t)val[i], sizeof(int32_t));
            if (!st->members) {
                rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to plan %d nodes", (int)n);
                goto out;
            }
            fp->nkernels++;
        } else {
            st->kind = FUSE_STEP_INTERP;
            for (int32_t s = 0; s < g->nodes[i].nin; s++)
                scratch[nr++] = g->nodes[i].in[s];
        }
        /* Distinct reads, ascending. */
        qsort(scratch, (size_t)nr, sizeof(int32_t), cmp_i32);
        int32_t u = 0;
        for (int32_t q = 0; q < nr; q++)
            if (u == 0 || scratch[u - 1] != scratch[q])
                scratch[u++] = scratch[q];
        if (!dup_ids(&st->read, scratch, u)) {
            rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to plan %d nodes", (int)n);
            goto out;
        }
        st->nread = u;
        for (int32_t q = 0; q < u; q++) {
            if (step_of[scratch[q]] < 0) { /* cannot happen: every read has a step */
                rc = proto_fail(err, PG_EINTERNAL, "fusion: node %d reads %d, which no step "
                                "computes", (int)i, (int)scratch[q]);
                goto out;
            }
            last[scratch[q]] = fp->nsteps - 1;
        }
    }
    /* Members of each kernel, ascending (val[root] counted them). */
    for (int32_t j = 0; j < n; j++) {
        if (c.group[j] < 0)
            continue;
        fuse_step_t *st = &fp->steps[step_of[c.group[j]]];
        st->members[st->nmembers++] = j;
    }
    /* In-place kernels: an elementwise kernel that is the last reader of a buffer laid out
     * exactly like its output writes its result over it. That is how the bias and activation
     * after a matmul (or a conv2d's) become one pass over the product, still in cache from the
     * BLAS call, with no second buffer to fault in. Leaves are never overwritten (they are
     * session tensors); the executor also checks that nothing else holds the buffer. */
    for (int32_t s = 0; s < fp->nsteps; s++) {
        fuse_step_t *st = &fp->steps[s];
        kir_kernel_t *kk = st->kernel;
        if (st->kind != FUSE_STEP_KERNEL || kk->nstages > 1 || kk->reduce != PRIM_COUNT)
            continue;
        for (int q = 0; q < kk->nin && !kk->inplace; q++) {
            int32_t j = st->kin_node[q];
            const gnode_t *jn = &g->nodes[j];
            bool alone = true;
            for (int q2 = 0; q2 < kk->nin; q2++)
                alone &= q2 == q || st->kin_node[q2] != j;
            int64_t stride = 1;
            bool identity = kk->in[q].off == 0;
            for (int d = kk->rank - 1; d >= 0; d--) {
                identity &= kk->shape[d] == 1 || kk->in[q].strides[d] == stride;
                stride *= kk->shape[d];
            }
            const gnode_t *on = &g->nodes[st->node];
            if (alone && identity && last[j] == s && !c.is_out[j] &&
                graph_prim_kind(jn->op) != PK_LEAF && jn->dtype == kk->out_dtype &&
                jn->rank == on->rank && !memcmp(jn->shape, on->shape, sizeof(on->shape)))
                kk->inplace = q + 1;
        }
    }

    /* Release lists: a value goes after its last reader, unless it is an output. */
    for (int32_t s = 0; s < fp->nsteps; s++) {
        fuse_step_t *st = &fp->steps[s];
        int32_t nr = 0;
        for (int32_t q = 0; q < st->nread; q++)
            if (last[st->read[q]] == s && !c.is_out[st->read[q]])
                scratch[nr++] = st->read[q];
        if (!dup_ids(&st->release, scratch, nr)) {
            rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to plan %d nodes", (int)n);
            goto out;
        }
        st->nrelease = nr;
    }

out:
    if (rc)
        fuse_free(fp);
    if (kern)
        for (int32_t i = 0; i < n; i++)
            pg_free(kern[i]);
    pg_free(kin);
    pg_free(kern);
    pg_free(k);
    pg_free(vst);
    pg_free(scratch);
    pg_free(buf_read);
    pg_free(last);
    pg_free(step_of);
    pg_free(val);
    pg_free(c.members);
    pg_free(c.heap);
    pg_free(c.gedges);
    pg_free(c.stamp);
    pg_free(c.group);
    pg_free(c.nuse);
    pg_free(c.by_view);
    pg_free(c.blocked);
    pg_free(c.is_out);
    pg_free(c.needed);
    return rc;
}
