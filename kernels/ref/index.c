/*
 * index.c - gather and index_select: reads of x at positions that come from an index tensor;
 * scatter_add, their adjoint: additions into a copy of base at such positions.
 *
 *   gather(x, idx, d):        out[i][j] = x[idx[i][j]][j]   (d = 0; out has idx's shape)
 *   index_select(x, idx, d):  out[i][j] = x[idx[i]][j]      (d = 0; idx is 1-D)
 *   scatter_add(b, idx, s, d): out = b; out[idx[i][j]][j] += s[i][j]   (idx and s: one shape)
 *
 * scatter_add adds the elements of s one at a time in C order on one thread, each addition
 * rounded to the dtype as torch's CPU kernel does, so the sum at a position that several
 * indices name comes out the same on every run.
 *
 * Index values are data from the client, so every one is checked against [0, size of axis d)
 * before anything is read (negative indices are an error, as in torch.gather and
 * torch.index_select). The check runs first, in C order on one thread, so the error always names
 * the first bad index whatever the thread count; the copy then trusts the indices.
 */
#include "ref_impl.h"

typedef struct {
    const gnode_t *n;
    const ref_view_t *x, *idx;
    ref_view_t *out;
    int64_t axis;
    int64_t xstrides[PROTO_MAX_RANK]; /* x's strides with the axis' stride zeroed */
} index_ctx_t;

/* Checks that every index value is in [0, size). Returns 0 or -PG_EBAD_REQUEST naming the first
 * bad one. */
static int check_indices(const graph_t *g, int32_t i, const ref_view_t *idx, int64_t axis,
                         int64_t size, proto_err_t *err) {
    const uint8_t *data = ref__data(idx);
    uint64_t count = ref__numel(idx);
    ref__iter_t it;
    ref__iter_init(&it, idx->rank, idx->shape);
    ref__iter_add(&it, idx->off, idx->strides);
    for (uint64_t j = 0; j < count; j++, ref__iter_next(&it)) {
        int64_t v = ref__ld_i(data, idx->dtype, it.off[0]);
        if (v < 0 || v >= size)
            return proto_fail(err, PG_EBAD_REQUEST,
                              "node %d (%s): index %lld is out of range for dim %d of size %lld",
                              (int)g->nodes[i].wire, ref__prim_name(g->nodes[i].op),
                              (long long)v, (int)axis, (long long)size);
    }
    return 0;
}

/* gather: walk the output (= idx's shape); x's offset is the output index on the other axes plus
 * the index value along the axis. */
static void gather_chunk(void *arg, uint64_t begin, uint64_t end) {
    const index_ctx_t *c = arg;
    const uint8_t *xd = ref__data(c->x), *id = ref__data(c->idx);
    uint8_t *od = ref__data(c->out);
    size_t size = proto_dtype_size(c->x->dtype);
    int64_t step = c->x->strides[c->axis];
    ref__iter_t it; /* operand 0: idx, operand 1: x without the axis */
    ref__iter_init(&it, c->out->rank, c->out->shape);
    ref__iter_add(&it, c->idx->off, c->idx->strides);
    ref__iter_add(&it, c->x->off, c->xstrides);
    ref__iter_seek(&it, begin);
    for (uint64_t j = begin; j < end; j++, ref__iter_next(&it)) {
        int64_t v = ref__ld_i(id, c->idx->dtype, it.off[0]);
        ref__mov(od, (int64_t)j, xd, it.off[1] + v * step, size);
    }
}

/* index_select: walk the output (x's shape with the axis resized); the output's position along
 * the axis picks the index value. */
static void select_chunk(void *arg, uint64_t begin, uint64_t end) {
    const index_ctx_t *c = arg;
    const uint8_t *xd = ref__data(c->x), *id = ref__data(c->idx);
    uint8_t *od = ref__data(c->out);
    size_t size = proto_dtype_size(c->x->dtype);
    int64_t step = c->x->strides[c->axis];
    int64_t istep = c->idx->rank > 0 ? c->idx->strides[0] : 0;
    ref__iter_t it; /* operand 0: x without the axis */
    ref__iter_init(&it, c->out->rank, c->out->shape);
    ref__iter_add(&it, c->x->off, c->xstrides);
    ref__iter_seek(&it, begin);
    for (uint64_t j = begin; j < end; j++, ref__iter_next(&it)) {
        int64_t v = ref__ld_i(id, c->idx->dtype, c->idx->off + it.idx[c->axis] * istep);
        ref__mov(od, (int64_t)j, xd, it.off[0] + v * step, size);
    }
}

static int scatter_add(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                       proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const ref_view_t *b = &vals[n->in[0]], *idx = &vals[n->in[1]], *src = &vals[n->in[2]];
    int64_t axis = n->a.dims[0];
    if (n->a.ndims < 1 || axis < 0 || axis >= b->rank || n->rank != b->rank)
        return ref__bad_node(g, i, "axis out of range", err);
    if (b->dtype != n->dtype || src->dtype != n->dtype || ref__is_float(idx->dtype))
        return ref__bad_node(g, i, "dtypes do not match", err);
    if (idx->rank != b->rank || src->rank != b->rank)
        return ref__bad_node(g, i, "index or src of another rank than base", err);
    for (int d = 0; d < n->rank; d++)
        if (n->shape[d] != b->shape[d] || src->shape[d] != idx->shape[d] ||
            (d != axis && idx->shape[d] > b->shape[d]))
            return ref__bad_node(g, i, "index larger than base off the axis", err);
    int rc = check_indices(g, i, idx, axis, b->shape[axis], err);
    if (rc < 0)
        return rc;
    rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    if (n->numel > 0)
        ref__copy(b, ref__data(out), 0, out->strides);
    uint8_t *od = ref__data(out);
    const uint8_t *id = ref__data(idx), *sd = ref__data(src);
    uint64_t count = ref__numel(idx);
    bool fl = ref__is_float(n->dtype);
    int64_t ostr[PROTO_MAX_RANK];
    memcpy(ostr, out->strides, sizeof(ostr));
    ostr[axis] = 0;
    ref__iter_t it; /* operand 0: idx, 1: src, 2: out without the axis */
    ref__iter_init(&it, idx->rank, idx->shape);
    ref__iter_add(&it, idx->off, idx->strides);
    ref__iter_add(&it, src->off, src->strides);
    ref__iter_add(&it, 0, ostr);
    for (uint64_t j = 0; j < count; j++, ref__iter_next(&it)) {
        int64_t o = it.off[2] + ref__ld_i(id, idx->dtype, it.off[0]) * out->strides[axis];
        if (fl)
            ref__st_f(od, n->dtype, o, ref__ld_f(od, n->dtype, o) + ref__ld_f(sd, n->dtype, it.off[1]));
        else
            ref__st_i(od, n->dtype, o,
                      (int64_t)((uint64_t)ref__ld_i(od, n->dtype, o) +
                                (uint64_t)ref__ld_i(sd, n->dtype, it.off[1])));
    }
    return 0;
}

int ref__index(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
               proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    if (n->op == PRIM_scatter_add)
        return scatter_add(g, i, vals, out, err);
    const ref_view_t *x = &vals[n->in[0]], *idx = &vals[n->in[1]];
    index_ctx_t c = {.n = n, .x = x, .idx = idx, .out = out, .axis = n->a.dims[0]};
    if (n->a.ndims < 1 || c.axis < 0 || c.axis >= x->rank || n->rank != x->rank)
        return ref__bad_node(g, i, "axis out of range", err);
    if (x->dtype != n->dtype || ref__is_float(idx->dtype))
        return ref__bad_node(g, i, "dtypes do not match", err);
    /* The shapes decide which x elements the loop can reach without an index: check them. */
    if (n->op == PRIM_gather) {
        if (idx->rank != x->rank)
            return ref__bad_node(g, i, "index of another rank than the input", err);
        for (int d = 0; d < n->rank; d++)
            if (n->shape[d] != idx->shape[d] || (d != c.axis && idx->shape[d] > x->shape[d]))
                return ref__bad_node(g, i, "index larger than the input off the axis", err);
    } else {
        if (idx->rank > 1 || ref__numel(idx) != (uint64_t)n->shape[c.axis])
            return ref__bad_node(g, i, "index is not 1-D or does not match the output", err);
        for (int d = 0; d < n->rank; d++)
            if (d != c.axis && n->shape[d] != x->shape[d])
                return ref__bad_node(g, i, "output differs from the input off the axis", err);
    }
    int rc = check_indices(g, i, idx, c.axis, x->shape[c.axis], err);
    if (rc < 0)
        return rc;
    memcpy(c.xstrides, x->strides, sizeof(c.xstrides));
    c.xstrides[c.axis] = 0;
    rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    ref__parallel_for(n->numel, 1, n->op == PRIM_gather ? gather_chunk : select_chunk, &c);
    return 0;
}
