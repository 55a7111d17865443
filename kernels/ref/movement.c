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
 * ow*sw + kw*dw]. Each (n, c) plane is summed by one thread in a fixed order, so the result
 * does not depend on the thread count.
 *
 * A negative pad crops, as in torch.nn.functional.pad: the input is first narrowed (a view), so
 * the copy never reads outside it.
 */
#include "ref_impl.h"

#include "../../server/mem.h" /* pg_malloc: a plane of partial sums per thread */

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

/* Planes [begin, end) of the output (plane p = (n, c)): every x[n, c, oh, ow, kh, kw] is added
 * into a double copy of the plane, window position (kh, kw) by position in C order and (oh, ow)
 * in C order within each, then the plane is rounded once into out. One plane is one thread's,
 * so the order of the additions to any element is the same for every thread count. */
#define UNWINDOW_PLANE(T)                                                                          \
    for (int64_t kh = 0; kh < w[0]; kh++)                                                          \
        for (int64_t kw = 0; kw < w[1]; kw++) {                                                    \
            const T *xk = (const T *)xd + base + kh * xs[4] + kw * xs[5];                          \
            double *bk = buf + kh * w[4] * W + kw * w[5];                                          \
            for (int64_t oh = 0; oh < OH; oh++) {                                                  \
                const T *xr = xk + oh * xs[2];                                                     \
                double *br = bk + oh * w[2] * W;                                                   \
                for (int64_t ow = 0; ow < OW; ow++)                                                \
                    br[ow * w[3]] += (double)xr[ow * xs[3]];                                       \
            }                                                                                      \
        }

static void unwindow_chunk(void *arg, uint64_t begin, uint64_t end) {
    const unwindow_ctx_t *c = arg;
    const ref_view_t *x = c->x;
    const int64_t *w = c->win, *os = c->out->shape, *xs = x->strides;
    const uint8_t *xd = ref__data(x);
    uint8_t *od = ref__data(c->out);
    int64_t H = os[2], W = os[3], OH = x->shape[2], OW = x->shape[3];
    double *buf = pg_malloc((size_t)(H * W > 0 ? H * W : 1) * sizeof(double));
    if (!buf) { /* a plane of doubles is far below the output's size: gather one by one */
        for (uint64_t p = begin; p < end; p++)
            for (int64_t e = 0; e < H * W; e++)
                ref__st_f(od, c->out->dtype, (int64_t)p * H * W + e, NAN);
        return;
    }
    for (uint64_t p = begin; p < end; p++) {
        int64_t b = (int64_t)p / os[1], ch = (int64_t)p % os[1];
        int64_t base = x->off + b * xs[0] + ch * xs[1];
        memset(buf, 0, (size_t)(H * W) * sizeof(double));
        if (x->dtype == PG_FLOAT32) {
            UNWINDOW_PLANE(float)
        } else {
            UNWINDOW_PLANE(double)
        }
        int64_t o = (int64_t)p * H * W;
        if (c->out->dtype == PG_FLOAT32)
            for (int64_t e = 0; e < H * W; e++)
                ((float *)od)[o + e] = (float)buf[e];
        else
            for (int64_t e = 0; e < H * W; e++)
                ((double *)od)[o + e] = buf[e];
    }
    pg_free(buf);
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
    uint64_t planes = (uint64_t)n->shape[0] * (uint64_t)n->shape[1];
    ref__parallel_for(planes, ref__numel(x) / (planes ? planes : 1) + 1, unwindow_chunk, &c);
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
