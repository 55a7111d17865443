/*
 * movement.c - movement primitives that must copy: pad and cat. (The ones that need not copy are
 * views, in view.c; a reshape of non-contiguous data copies through ref_materialize there.)
 *
 * Both are one strided copy per input into the right place of a fresh output:
 *
 *   cat([A (2x3), B (2x1)], dim 1) -> out 2x4: copy A to out[:, 0:3], B to out[:, 3:4]
 *   pad(x (2x3), before {1, 0}, after {0, 2}, v) -> out 3x5: fill v, copy x to out[1:3, 0:3]
 *
 * A negative pad crops, as in torch.nn.functional.pad: the input is first narrowed (a view), so
 * the copy never reads outside it.
 */
#include "ref_impl.h"

typedef struct {
    uint8_t *out;
    pg_dtype_t dtype;
    double value;
} fill_ctx_t;

static void fill_chunk(void *arg, uint64_t begin, uint64_t end) {
    const fill_ctx_t *c = arg;
    for (uint64_t j = begin; j < end; j++)
        ref__st_f(c->out, c->dtype, (int64_t)j, c->value);
}

static int pad(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
               proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const gattr_t *a = &n->a;
    const ref_view_t *x = &vals[n->in[0]];
    if (x->rank != n->rank || x->dtype != n->dtype)
        return ref__bad_node(g, i, "pad changes the rank or the dtype", err);
    ref_view_t inner = *x; /* the part of x that lands in the output (a borrowed view) */
    int64_t dst_off = 0;
    int64_t ostrides[PROTO_MAX_RANK];
    ref__contiguous_strides(n->rank, n->shape, ostrides);
    for (int d = 0; d < n->rank; d++) {
        if (x->shape[d] + a->start[d] + a->stop[d] != n->shape[d])
            return ref__bad_node(g, i, "pad widths do not match the output shape", err);
        int64_t lo = a->start[d] < 0 ? -a->start[d] : 0; /* cropped before */
        int64_t hi = a->stop[d] < 0 ? -a->stop[d] : 0;   /* cropped after */
        int64_t keep = x->shape[d] - lo - hi;
        inner.shape[d] = keep > 0 ? keep : 0;
        if (keep > 0)
            inner.off += lo * x->strides[d];
        dst_off += (a->start[d] > 0 ? a->start[d] : 0) * ostrides[d];
    }
    int rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    fill_ctx_t f = {ref__data(out), n->dtype, a->value};
    ref__parallel_for(n->numel, 1, fill_chunk, &f);
    if (ref__numel(&inner) > 0)
        ref__copy(&inner, ref__data(out), dst_off, out->strides);
    return 0;
}

static int cat(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
               proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    int64_t axis = n->a.dims[0];
    if (n->a.ndims < 1 || axis < 0 || axis >= n->rank)
        return ref__bad_node(g, i, "axis out of range", err);
    int64_t total = 0;
    for (int k = 0; k < n->nin; k++) {
        const ref_view_t *x = &vals[n->in[k]];
        if (x->rank != n->rank || x->dtype != n->dtype)
            return ref__bad_node(g, i, "inputs of another rank or dtype", err);
        for (int d = 0; d < n->rank; d++)
            if (d != axis && x->shape[d] != n->shape[d])
                return ref__bad_node(g, i, "inputs differ off the cat axis", err);
        total += x->shape[axis];
    }
    if (total != n->shape[axis])
        return ref__bad_node(g, i, "input sizes do not add up to the output", err);
    int rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    int64_t pos = 0;
    for (int k = 0; k < n->nin; k++) {
        const ref_view_t *x = &vals[n->in[k]];
        if (ref__numel(x) > 0)
            ref__copy(x, ref__data(out), pos * out->strides[axis], out->strides);
        pos += x->shape[axis];
    }
    return 0;
}

int ref__copy_op(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                 proto_err_t *err) {
    switch (g->nodes[i].op) {
    case PRIM_pad: return pad(g, i, vals, out, err);
    case PRIM_cat: return cat(g, i, vals, out, err);
    default: return ref__bad_node(g, i, "not a copy primitive", err);
    }
}
