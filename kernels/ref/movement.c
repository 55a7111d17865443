/*
 * movement.c - movement primitives that must copy: pad, cat and unwindow. (The ones that need
 * not copy are views, in view.c; a reshape of non-contiguous data copies through
 * ref_materialize there.)
 *
 * pad and cat are one strided copy per input into the right place of a fresh output:
 *
 *   cat([A (2x3), B (2x1)], dim 1) -> out 2x4: copy A to out[:, 0:3], B to out[:, 3:4]
 *   pad(x (2x3), before {1, 0}, after {0, 2}, v) -> out 3x5: fill v, copy x to out[1:3, 0:3]
 *
 * unwindow is the adjoint of the window view (the gradient of a convolution's or a pooling's
 * input): every input element [n, c, oh, ow, kh, kw] is added to out[n, c, oh*sh + kh*dh,
 * ow*sw + kw*dw]. Each output element gathers its own contributions, in a fixed order, so the
 * result does not depend on the thread count.
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

typedef struct {
    const ref_view_t *x;
    ref_view_t *out;
    const int64_t *win;
} unwindow_ctx_t;

/* Output elements [begin, end): out[n, c, h, w] = sum of x[n, c, oh, ow, kh, kw] over the
 * (kh, kw, oh, ow) with oh*sh + kh*dh == h and ow*sw + kw*dw == w, summed in double in
 * C order of (kh, kw), then rounded once. */
static void unwindow_chunk(void *arg, uint64_t begin, uint64_t end) {
    const unwindow_ctx_t *c = arg;
    const ref_view_t *x = c->x;
    const int64_t *w = c->win, *os = c->out->shape;
    const uint8_t *xd = ref__data(x);
    uint8_t *od = ref__data(c->out);
    for (uint64_t j = begin; j < end; j++) {
        int64_t r = (int64_t)j, col = r % os[3];
        r /= os[3];
        int64_t row = r % os[2];
        r /= os[2];
        int64_t ch = r % os[1], b = r / os[1];
        int64_t base = x->off + b * x->strides[0] + ch * x->strides[1];
        double acc = 0;
        for (int64_t kh = 0; kh < w[0]; kh++) {
            int64_t th = row - kh * w[4];
            if (th < 0 || th % w[2] || th / w[2] >= x->shape[2])
                continue;
            for (int64_t kw = 0; kw < w[1]; kw++) {
                int64_t tw = col - kw * w[5];
                if (tw < 0 || tw % w[3] || tw / w[3] >= x->shape[3])
                    continue;
                acc += ref__ld_f(xd, x->dtype,
                                 base + th / w[2] * x->strides[2] + tw / w[3] * x->strides[3] +
                                     kh * x->strides[4] + kw * x->strides[5]);
            }
        }
        ref__st_f(od, c->out->dtype, (int64_t)j, acc);
    }
}

static int unwindow(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                    proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const int64_t *w = n->a.win;
    const ref_view_t *x = &vals[n->in[0]];
    if (x->rank != 6 || n->rank != 4 || x->dtype != n->dtype || !ref__is_float(n->dtype))
        return ref__bad_node(g, i, "unwindow needs float [N, C, OH, OW, KH, KW]", err);
    for (int d = 0; d < 6; d++)
        if (w[d] < 1)
            return ref__bad_node(g, i, "a window size below 1", err);
    if (x->shape[0] != n->shape[0] || x->shape[1] != n->shape[1] || x->shape[4] != w[0] ||
        x->shape[5] != w[1] ||
        (ref__numel(x) > 0 && ((x->shape[2] - 1) * w[2] + (w[0] - 1) * w[4] >= n->shape[2] ||
                               (x->shape[3] - 1) * w[3] + (w[1] - 1) * w[5] >= n->shape[3])))
        return ref__bad_node(g, i, "windows that reach outside the output", err);
    int rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    unwindow_ctx_t c = {x, out, w};
    ref__parallel_for(n->numel, (uint64_t)(w[0] * w[1]), unwindow_chunk, &c);
    return 0;
}

int ref__copy_op(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                 proto_err_t *err) {
    switch (g->nodes[i].op) {
    case PRIM_pad: return pad(g, i, vals, out, err);
    case PRIM_cat: return cat(g, i, vals, out, err);
    case PRIM_unwindow: return unwindow(g, i, vals, out, err);
    default: return ref__bad_node(g, i, "not a copy primitive", err);
    }
}
