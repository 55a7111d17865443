/*
 * view.c - strided views: the N-d iterator every kernel walks with, output allocation, copying a
 * view out (ref_materialize), and the view primitives, which only rewrite shape, strides and
 * offset and share their input's storage.
 *
 * For an input x of shape [2, 3] (strides [3, 1], offset 0):
 *
 *   permute(1, 0)    shape [3, 2]  strides [1, 3]   offset 0
 *   flip(1)          shape [2, 3]  strides [3, -1]  offset 2
 *   slice(0:2:2, 1:) shape [1, 2]  strides [6, 1]   offset 1
 *   expand([4,2,3])  shape [4,2,3] strides [0,3,1]  offset 0
 */
#include "ref_impl.h"

#include "../../server/mem.h"

/* =============================================================================================
 * Iterator
 * =========================================================================================== */

void ref__iter_init(ref__iter_t *it, int rank, const int64_t *shape) {
    it->rank = rank;
    it->nops = 0;
    for (int d = 0; d < rank; d++) {
        it->shape[d] = shape[d];
        it->idx[d] = 0;
    }
}

void ref__iter_add(ref__iter_t *it, int64_t base, const int64_t *strides) {
    int k = it->nops++;
    it->base[k] = base;
    it->off[k] = base;
    for (int d = 0; d < it->rank; d++)
        it->strides[k][d] = strides[d];
}

void ref__iter_seek(ref__iter_t *it, uint64_t linear) {
    for (int k = 0; k < it->nops; k++)
        it->off[k] = it->base[k];
    for (int d = it->rank - 1; d >= 0; d--) {
        /* A zero-size shape has nothing to seek to; its loops never run. */
        uint64_t n = it->shape[d] > 0 ? (uint64_t)it->shape[d] : 1;
        it->idx[d] = (int64_t)(linear % n);
        linear /= n;
        for (int k = 0; k < it->nops; k++)
            it->off[k] += it->idx[d] * it->strides[k][d];
    }
}

/* =============================================================================================
 * Views
 * =========================================================================================== */

void ref__contiguous_strides(int rank, const int64_t *shape, int64_t *strides) {
    int64_t s = 1;
    for (int d = rank - 1; d >= 0; d--) {
        strides[d] = s;
        s *= shape[d] > 0 ? shape[d] : 1;
    }
}

bool ref__is_contiguous(const ref_view_t *v) {
    int64_t expect = 1;
    for (int d = v->rank - 1; d >= 0; d--) {
        /* A size-1 axis is never stepped along, so its stride does not matter. */
        if (v->shape[d] != 1 && v->strides[d] != expect)
            return false;
        expect *= v->shape[d];
    }
    return true;
}

uint64_t ref__numel(const ref_view_t *v) {
    uint64_t n = 1;
    for (int d = 0; d < v->rank; d++)
        n *= (uint64_t)v->shape[d];
    return n;
}

void ref_view_release(ref_view_t *v) {
    tensor_unref(v->t);
    memset(v, 0, sizeof(*v));
}

int ref__alloc(const graph_t *g, int32_t i, ref_view_t *out, proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    out->dtype = n->dtype;
    out->rank = n->rank;
    out->off = 0;
    memcpy(out->shape, n->shape, sizeof(out->shape));
    ref__contiguous_strides(n->rank, n->shape, out->strides);
    out->t = NULL;
    if (n->numel == 0)
        return 0;
    out->t = tensor_new(n->dtype, n->rank, n->shape, n->numel);
    if (!out->t)
        return proto_fail(err, PG_EOUT_OF_MEMORY,
                          "node %d (%s): no memory for a %llu-byte result (%llu of %llu bytes in "
                          "use)",
                          (int)n->wire, ref__prim_name(n->op),
                          (unsigned long long)(n->numel * proto_dtype_size(n->dtype)),
                          (unsigned long long)mem_in_use(), (unsigned long long)mem_limit());
    return 0;
}

/* =============================================================================================
 * Copies
 * =========================================================================================== */

typedef struct {
    const ref_view_t *src;
    uint8_t *dst;
    int64_t dst_off;
    const int64_t *dst_strides;
} copy_ctx_t;

/* Copies n elements of `size` bytes, src and dst stepping by their own strides (elements). */
#define COPY_RUN(T)                                                                                \
    do {                                                                                           \
        const T *s_ = (const T *)src + so;                                                         \
        T *d_ = (T *)dst + dof;                                                                    \
        for (int64_t q = 0; q < n; q++)                                                            \
            d_[q * ds] = s_[q * ss];                                                               \
    } while (0)

static void copy_run(uint8_t *dst, int64_t dof, int64_t ds, const uint8_t *src, int64_t so,
                     int64_t ss, int64_t n, size_t size) {
    switch (size) {
    case 8: COPY_RUN(uint64_t); break;
    case 4: COPY_RUN(uint32_t); break;
    case 2: COPY_RUN(uint16_t); break;
    default:
        for (int64_t q = 0; q < n; q++)
            ref__mov(dst, dof + q * ds, src, so + q * ss, size);
    }
}

/* Elements [begin, end) in C order, a run along the last axis at a time (typed, no per-element
 * iterator step): a permuted or windowed view copies at memory speed rather than one element
 * per iterator call. Axes that both sides step through as one are merged first. */
static void copy_chunk(void *arg, uint64_t begin, uint64_t end) {
    const copy_ctx_t *c = arg;
    const uint8_t *src = ref__data(c->src);
    size_t size = proto_dtype_size(c->src->dtype);
    int64_t shape[PROTO_MAX_RANK], ss[PROTO_MAX_RANK], ds[PROTO_MAX_RANK];
    int r = 0;
    for (int d = 0; d < c->src->rank; d++) {
        if (c->src->shape[d] == 1)
            continue;
        if (r > 0 && ss[r - 1] == c->src->strides[d] * c->src->shape[d] &&
            ds[r - 1] == c->dst_strides[d] * c->src->shape[d]) {
            shape[r - 1] *= c->src->shape[d];
            ss[r - 1] = c->src->strides[d];
            ds[r - 1] = c->dst_strides[d];
            continue;
        }
        shape[r] = c->src->shape[d];
        ss[r] = c->src->strides[d];
        ds[r] = c->dst_strides[d];
        r++;
    }
    if (r == 0) { /* one element */
        for (uint64_t j = begin; j < end; j++)
            ref__mov(c->dst, c->dst_off, src, c->src->off, size);
        return;
    }
    ref__iter_t it;
    ref__iter_init(&it, r, shape);
    ref__iter_add(&it, c->src->off, ss);
    ref__iter_add(&it, c->dst_off, ds);
    ref__iter_seek(&it, begin);
    int last = r - 1;
    for (uint64_t j = begin; j < end;) {
        int64_t n = shape[last] - it.idx[last];
        if ((uint64_t)n > end - j)
            n = (int64_t)(end - j);
        copy_run(c->dst, it.off[1], ds[last], src, it.off[0], ss[last], n, size);
        j += (uint64_t)n;
        if (j >= end)
            break;
        /* Step to the last element of the run, then over the row's end. */
        it.off[0] += (n - 1) * ss[last];
        it.off[1] += (n - 1) * ds[last];
        it.idx[last] += n - 1;
        ref__iter_next(&it);
    }
}

void ref__copy(const ref_view_t *src, uint8_t *dst, int64_t dst_off, const int64_t *dst_strides) {
    copy_ctx_t c = {src, dst, dst_off, dst_strides};
    ref__parallel_for(ref__numel(src), 1, copy_chunk, &c);
}

int ref_materialize(const ref_view_t *v, tensor_t **out, proto_err_t *err) {
    uint64_t numel = ref__numel(v);
    *out = NULL;
    /* Sharing is only safe when the tensor already says exactly what the view says: the caller
     * reads the result's shape from the tensor. */
    if (v->t && v->off == 0 && ref__is_contiguous(v) && v->t->numel == numel &&
        v->t->dtype == v->dtype && v->t->rank == v->rank &&
        memcmp(v->t->shape, v->shape, (size_t)v->rank * sizeof(v->shape[0])) == 0) {
        *out = tensor_ref(v->t);
        return 0;
    }
    tensor_t *t = tensor_new(v->dtype, v->rank, v->shape, numel);
    if (!t)
        return proto_fail(err, PG_EOUT_OF_MEMORY,
                          "no memory to copy out a %llu-byte result (%llu of %llu bytes in use)",
                          (unsigned long long)(numel * proto_dtype_size(v->dtype)),
                          (unsigned long long)mem_in_use(), (unsigned long long)mem_limit());
    if (numel > 0) {
        int64_t strides[PROTO_MAX_RANK];
        ref__contiguous_strides(v->rank, v->shape, strides);
        ref__copy(v, t->data, 0, strides);
    }
    *out = t;
    return 0;
}

/* =============================================================================================
 * View primitives
 * =========================================================================================== */

/* Gives out the node's dtype and shape, and drops the storage of an empty result. */
static void finish_view(const gnode_t *n, ref_view_t *out) {
    out->dtype = n->dtype;
    out->rank = n->rank;
    memcpy(out->shape, n->shape, sizeof(out->shape));
    if (n->numel == 0) {
        tensor_unref(out->t);
        out->t = NULL;
        out->off = 0;
    }
}

/* reshape: C-contiguous data (at any offset) just gets C strides for the new shape; anything else
 * is copied out first, because no single set of strides could walk it in C order. */
static int view_reshape(const graph_t *g, int32_t i, const ref_view_t *x, ref_view_t *out,
                        proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    if (ref__numel(x) != n->numel)
        return ref__bad_node(g, i, "reshape changes the element count", err);
    ref__contiguous_strides(n->rank, n->shape, out->strides);
    if (n->numel == 0) {
        finish_view(n, out);
        return 0;
    }
    if (ref__is_contiguous(x)) {
        out->t = tensor_ref(x->t);
        out->off = x->off;
    } else {
        int rc = ref_materialize(x, &out->t, err);
        if (rc < 0)
            return rc;
        out->off = 0;
    }
    finish_view(n, out);
    return 0;
}

int ref__view(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
              proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const gattr_t *a = &n->a;
    const ref_view_t *x = &vals[n->in[0]];
    if (n->op == PRIM_reshape)
        return view_reshape(g, i, x, out, err);

    out->t = x->t ? tensor_ref(x->t) : NULL;
    out->off = x->off;
    switch (n->op) {
    case PRIM_permute:
        if (a->ndims != x->rank || n->rank != x->rank)
            return ref__bad_node(g, i, "permute order does not match the rank", err);
        for (int d = 0, seen = 0; d < n->rank; d++) {
            int64_t xd = a->dims[d];
            /* A repeated axis would walk off the end of the storage. */
            if (xd < 0 || xd >= x->rank || (seen & (1 << xd)) || n->shape[d] != x->shape[xd])
                return ref__bad_node(g, i, "permute order is not a permutation of the axes", err);
            seen |= 1 << xd;
            out->strides[d] = x->strides[xd];
        }
        break;
    case PRIM_expand: {
        int lead = n->rank - x->rank;
        if (lead < 0)
            return ref__bad_node(g, i, "expand to a lower rank", err);
        for (int d = 0; d < n->rank; d++) {
            int xd = d - lead;
            if (xd < 0) {
                out->strides[d] = 0; /* a new leading axis repeats the whole input */
            } else if (x->shape[xd] == n->shape[d]) {
                out->strides[d] = x->strides[xd];
            } else if (x->shape[xd] == 1) {
                out->strides[d] = 0;
            } else {
                return ref__bad_node(g, i, "expand of an axis that is not 1", err);
            }
        }
        break;
    }
    case PRIM_slice:
        if (n->rank != x->rank)
            return ref__bad_node(g, i, "slice changes the rank", err);
        for (int d = 0; d < n->rank; d++) {
            int64_t last = a->start[d] + (n->shape[d] - 1) * a->step[d];
            if (n->shape[d] > 0 && (a->start[d] < 0 || a->step[d] < 1 || last >= x->shape[d]))
                return ref__bad_node(g, i, "slice reaches outside its input", err);
            out->off += a->start[d] * x->strides[d];
            out->strides[d] = x->strides[d] * a->step[d];
        }
        break;
    case PRIM_flip:
        if (n->rank != x->rank ||
            memcmp(n->shape, x->shape, (size_t)n->rank * sizeof(n->shape[0])) != 0)
            return ref__bad_node(g, i, "flip changes the shape", err);
        memcpy(out->strides, x->strides, sizeof(out->strides));
        for (int k = 0, seen = 0; k < a->ndims; k++) {
            int64_t d = a->dims[k];
            /* Flipping an axis twice would move the offset twice: past the end. */
            if (d < 0 || d >= x->rank || (seen & (1 << d)))
                return ref__bad_node(g, i, "flip axes out of range or repeated", err);
            seen |= 1 << d;
            if (x->shape[d] > 0) {
                out->off += (x->shape[d] - 1) * x->strides[d];
                out->strides[d] = -x->strides[d];
            }
        }
        break;
    case PRIM_window: /* [N, C, H, W] -> [N, C, OH, OW, KH, KW], strides only */
        if (x->rank != 4 || n->rank != 6)
            return ref__bad_node(g, i, "window needs [N, C, H, W]", err);
        if (!graph_window_strides(n, x->shape, x->rank, x->strides, out->strides))
            return ref__bad_node(g, i, "window reaches outside its input", err);
        break;
    default:
        return ref__bad_node(g, i, "not a view primitive", err);
    }
    finish_view(n, out);
    return 0;
}
