/*
 * reduce.c - reductions (sum prod max min any all over a set of axes), argmax/argmin and cumsum
 * along one axis.
 *
 * The input's axes are split into kept axes (the output's, in order; keepdim only adds size-1
 * axes, which do not change the C order) and reduced axes. Output element j is the fold, in C
 * order, of the input elements at kept index j, computed start to finish by one thread: loops are
 * split over output elements, never over the reduced axes, so the order of additions, and with it
 * every rounding, is the same for any thread count.
 *
 *   x [2, 3, 4], dims {0, 2}:  kept [3] strides {4},  reduced [2, 4] strides {12, 1}
 *
 * Float folds run in KIR_LANES interleaved lanes along the innermost reduced axis, combined
 * pairwise at the end (kernels/codegen/kir.h), which is the order in which a compiled kernel can
 * vectorize the fold, so both give the same bits. Float sums and products accumulate in double
 * (float32 in double is what keeps a long sum within the tests' relative tolerance), except short
 * float32 sums, which accumulate in float32 lanes (kir_sum_in_float); integer ones in uint64,
 * wrapping like torch's int64.
 */
#include "ref_impl.h"

#include "../codegen/kir.h" /* KIR_LANES */

typedef struct {
    const gnode_t *n;
    const ref_view_t *x;
    ref_view_t *out;
    int krank, rrank;             /* kept and reduced axes */
    int64_t kshape[PROTO_MAX_RANK], kstrides[PROTO_MAX_RANK];
    int64_t rshape[PROTO_MAX_RANK], rstrides[PROTO_MAX_RANK];
    int64_t ostrides[PROTO_MAX_RANK]; /* scan: the output's strides on the kept axes */
    int64_t ostep;                /* scan: the output's stride along the axis */
    uint64_t rlen;                /* elements folded into each output */
} red_ctx_t;

/* Splits x's axes by the mask of reduced axes. */
static void split_axes(red_ctx_t *c, const ref_view_t *x, unsigned reduced) {
    c->krank = c->rrank = 0;
    c->rlen = 1;
    for (int d = 0; d < x->rank; d++) {
        if (reduced & (1u << d)) {
            c->rshape[c->rrank] = x->shape[d];
            c->rstrides[c->rrank++] = x->strides[d];
            c->rlen *= (uint64_t)x->shape[d];
        } else {
            c->kshape[c->krank] = x->shape[d];
            c->kstrides[c->krank++] = x->strides[d];
        }
    }
}

/* Returns the number of output elements (or scan lines): the product of the kept axes. */
static uint64_t kept_numel(const red_ctx_t *c) {
    uint64_t n = 1;
    for (int d = 0; d < c->krank; d++)
        n *= (uint64_t)c->kshape[d];
    return n;
}

/* Checks the node's axis list (sorted, unique, in range) and returns it as a mask, or -1. */
static int axes_mask(const gnode_t *n, int rank) {
    unsigned mask = 0;
    for (int k = 0; k < n->a.ndims; k++) {
        int64_t d = n->a.dims[k];
        if (d < 0 || d >= rank || (k > 0 && d <= n->a.dims[k - 1]))
            return -1;
        mask |= 1u << d;
    }
    return (int)mask;
}

/* =============================================================================================
 * sum prod max min any all
 * =========================================================================================== */

/* One step of a float fold. max and min skip NaN here; the caller remembers whether it saw
 * one, and then the result is NaN (as in torch), which keeps a compiled fold a plain select. */
static double fold_f(prim_t op, double acc, double x) {
    switch (op) {
    case PRIM_sum: return acc + x;
    case PRIM_prod: return acc * x;
    case PRIM_max: return x > acc ? x : acc;
    default: return x < acc ? x : acc;
    }
}

static void reduce_chunk(void *arg, uint64_t begin, uint64_t end) {
    const red_ctx_t *c = arg;
    const ref_view_t *x = c->x;
    const uint8_t *xd = ref__data(x);
    pg_dtype_t dt = x->dtype;
    uint8_t *od = ref__data(c->out);
    pg_dtype_t odt = c->out->dtype;
    prim_t op = c->n->op;
    bool is_float = ref__is_float(dt);
    ref__iter_t outer, inner;
    ref__iter_init(&outer, c->krank, c->kshape);
    ref__iter_add(&outer, x->off, c->kstrides);
    ref__iter_seek(&outer, begin);
    for (uint64_t j = begin; j < end; j++, ref__iter_next(&outer)) {
        ref__iter_init(&inner, c->rrank, c->rshape);
        ref__iter_add(&inner, outer.off[0], c->rstrides);
        if (op == PRIM_any || op == PRIM_all) {
            bool acc = op == PRIM_all;
            for (uint64_t k = 0; k < c->rlen; k++, ref__iter_next(&inner))
                acc = op == PRIM_all ? acc && ref__ld_b(xd, dt, inner.off[0])
                                     : acc || ref__ld_b(xd, dt, inner.off[0]);
            ref__st_i(od, odt, (int64_t)j, acc);
        } else if (is_float && kir_sum_in_float(op, dt, c->rlen)) {
            /* One block (rlen <= KIR_F32_SUM_MAX < KIR_FOLD_BLOCK), float32 lanes. */
            float acc[KIR_LANES] = {0};
            uint64_t inner_len = c->rrank ? (uint64_t)c->rshape[c->rrank - 1] : 1;
            for (uint64_t k = 0, at = 0; k < c->rlen; k++, ref__iter_next(&inner)) {
                acc[at % KIR_LANES] += (float)ref__ld_f(xd, dt, inner.off[0]);
                at = at + 1 == inner_len ? 0 : at + 1;
            }
            for (int w = 1; w < KIR_LANES; w *= 2)
                for (int l = 0; l + w < KIR_LANES; l += 2 * w)
                    acc[l] = acc[l] + acc[l + w];
            ref__st_f(od, odt, (int64_t)j, (double)acc[0]);
        } else if (is_float) {
            /* Blocks of KIR_FOLD_BLOCK along the innermost reduced axis, each in KIR_LANES
             * interleaved lanes combined pairwise, the blocks' values combined in order
             * (kernels/codegen/kir.h): the order in which a compiled kernel folds. */
            double init = op == PRIM_sum ? 0.0 : op == PRIM_prod ? 1.0
                          : op == PRIM_max ? -INFINITY : INFINITY;
            int64_t n = c->rrank ? c->rshape[c->rrank - 1] : 1, nb = kir_fold_blocks(n);
            int64_t step = c->rrank ? c->rstrides[c->rrank - 1] : 0;
            int64_t bshape[PROTO_MAX_RANK];
            memcpy(bshape, c->rshape, sizeof(bshape));
            bool nan = false;
            double tot = init;
            for (int64_t blk = 0; blk < nb; blk++) {
                int64_t lo = blk * KIR_FOLD_BLOCK;
                if (c->rrank)
                    bshape[c->rrank - 1] = n - lo < KIR_FOLD_BLOCK ? n - lo : KIR_FOLD_BLOCK;
                uint64_t blen = 1, inner_len = c->rrank ? (uint64_t)bshape[c->rrank - 1] : 1;
                for (int d = 0; d < c->rrank; d++)
                    blen *= (uint64_t)bshape[d];
                ref__iter_init(&inner, c->rrank, bshape);
                ref__iter_add(&inner, outer.off[0] + lo * step, c->rstrides);
                double acc[KIR_LANES];
                for (int l = 0; l < KIR_LANES; l++)
                    acc[l] = init;
                for (uint64_t k = 0, at = 0; k < blen; k++, ref__iter_next(&inner)) {
                    int l = (int)(at % KIR_LANES);
                    double v = ref__ld_f(xd, dt, inner.off[0]);
                    acc[l] = fold_f(op, acc[l], v);
                    nan |= v != v;
                    at = at + 1 == inner_len ? 0 : at + 1;
                }
                for (int w = 1; w < KIR_LANES; w *= 2)
                    for (int l = 0; l + w < KIR_LANES; l += 2 * w)
                        acc[l] = fold_f(op, acc[l], acc[l + w]);
                tot = blk == 0 ? acc[0] : fold_f(op, tot, acc[0]);
            }
            bool extreme = op == PRIM_max || op == PRIM_min;
            ref__st_f(od, odt, (int64_t)j, extreme && nan ? (double)NAN : tot);
        } else {
            uint64_t acc = op == PRIM_prod ? 1 : 0;
            for (uint64_t k = 0; k < c->rlen; k++, ref__iter_next(&inner)) {
                int64_t v = ref__ld_i(xd, dt, inner.off[0]);
                if (op == PRIM_sum)
                    acc += (uint64_t)v;
                else if (op == PRIM_prod)
                    acc *= (uint64_t)v;
                else if (k == 0 || (op == PRIM_max ? v > (int64_t)acc : v < (int64_t)acc))
                    acc = (uint64_t)v;
            }
            ref__st_i(od, odt, (int64_t)j, (int64_t)acc);
        }
    }
}

int ref__reduce(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const ref_view_t *x = &vals[n->in[0]];
    red_ctx_t c = {.n = n, .x = x, .out = out};
    int mask = axes_mask(n, x->rank);
    if (mask < 0)
        return ref__bad_node(g, i, "reduction axes not sorted, unique and in range", err);
    split_axes(&c, x, (unsigned)mask);
    if (kept_numel(&c) != n->numel || n->rank != (n->a.keepdim ? x->rank : c.krank))
        return ref__bad_node(g, i, "output shape does not match the reduction", err);
    if ((n->op == PRIM_max || n->op == PRIM_min) && c.rlen == 0 && n->numel > 0)
        return ref__bad_node(g, i, "max or min of an empty reduction", err);
    int rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    ref__parallel_for(n->numel, c.rlen, reduce_chunk, &c);
    return 0;
}

/* =============================================================================================
 * argmax argmin
 * =========================================================================================== */

/* Returns true when v should replace the best so far: strictly better, or the first NaN (torch
 * treats NaN as the extreme for both argmax and argmin). */
static bool arg_better_f(bool is_max, double v, double best) {
    if (isnan(best))
        return false;
    if (isnan(v))
        return true;
    return is_max ? v > best : v < best;
}

static void argreduce_chunk(void *arg, uint64_t begin, uint64_t end) {
    const red_ctx_t *c = arg;
    const ref_view_t *x = c->x;
    const uint8_t *xd = ref__data(x);
    pg_dtype_t dt = x->dtype;
    bool is_max = c->n->op == PRIM_argmax;
    int64_t step = c->rstrides[0];
    ref__iter_t outer;
    ref__iter_init(&outer, c->krank, c->kshape);
    ref__iter_add(&outer, x->off, c->kstrides);
    ref__iter_seek(&outer, begin);
    for (uint64_t j = begin; j < end; j++, ref__iter_next(&outer)) {
        int64_t best = 0, off = outer.off[0];
        if (ref__is_float(dt)) {
            double bv = ref__ld_f(xd, dt, off);
            for (uint64_t k = 1; k < c->rlen; k++) {
                double v = ref__ld_f(xd, dt, off + (int64_t)k * step);
                if (arg_better_f(is_max, v, bv)) {
                    bv = v;
                    best = (int64_t)k;
                }
            }
        } else {
            int64_t bv = ref__ld_i(xd, dt, off);
            for (uint64_t k = 1; k < c->rlen; k++) {
                int64_t v = ref__ld_i(xd, dt, off + (int64_t)k * step);
                if (is_max ? v > bv : v < bv) {
                    bv = v;
                    best = (int64_t)k;
                }
            }
        }
        ref__st_i(ref__data(c->out), c->out->dtype, (int64_t)j, best);
    }
}

int ref__argreduce(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                   proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const ref_view_t *x = &vals[n->in[0]];
    red_ctx_t c = {.n = n, .x = x, .out = out};
    int64_t axis = n->a.dims[0];
    if (n->a.ndims < 1 || axis < 0 || axis >= x->rank)
        return ref__bad_node(g, i, "axis out of range", err);
    split_axes(&c, x, 1u << axis);
    if (kept_numel(&c) != n->numel)
        return ref__bad_node(g, i, "output shape does not match the reduction", err);
    if (c.rlen == 0 && n->numel > 0)
        return ref__bad_node(g, i, "argmax or argmin of an empty axis", err);
    int rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    ref__parallel_for(n->numel, c.rlen, argreduce_chunk, &c);
    return 0;
}

/* =============================================================================================
 * cumsum
 * =========================================================================================== */

static void scan_chunk(void *arg, uint64_t begin, uint64_t end) {
    const red_ctx_t *c = arg;
    const ref_view_t *x = c->x;
    const uint8_t *xd = ref__data(x);
    pg_dtype_t dt = x->dtype;
    uint8_t *od = ref__data(c->out);
    pg_dtype_t odt = c->out->dtype;
    int64_t step = c->rstrides[0];
    ref__iter_t outer; /* operand 0: x, operand 1: out */
    ref__iter_init(&outer, c->krank, c->kshape);
    ref__iter_add(&outer, x->off, c->kstrides);
    ref__iter_add(&outer, 0, c->ostrides);
    ref__iter_seek(&outer, begin);
    for (uint64_t j = begin; j < end; j++, ref__iter_next(&outer)) {
        int64_t xo = outer.off[0], oo = outer.off[1];
        if (ref__is_float(dt)) {
            double acc = 0;
            for (uint64_t k = 0; k < c->rlen; k++, xo += step, oo += c->ostep) {
                acc += ref__ld_f(xd, dt, xo);
                ref__st_f(od, odt, oo, acc);
            }
        } else {
            uint64_t acc = 0;
            for (uint64_t k = 0; k < c->rlen; k++, xo += step, oo += c->ostep) {
                acc += (uint64_t)ref__ld_i(xd, dt, xo);
                ref__st_i(od, odt, oo, (int64_t)acc);
            }
        }
    }
}

int ref__scan(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
              proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const ref_view_t *x = &vals[n->in[0]];
    red_ctx_t c = {.n = n, .x = x, .out = out};
    int64_t axis = n->a.dims[0];
    if (n->a.ndims < 1 || axis < 0 || axis >= x->rank)
        return ref__bad_node(g, i, "axis out of range", err);
    if (n->rank != x->rank || ref__numel(x) != n->numel)
        return ref__bad_node(g, i, "cumsum changes the shape", err);
    split_axes(&c, x, 1u << axis);
    int rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    for (int d = 0, k = 0; d < n->rank; d++) {
        if (d == axis)
            c.ostep = out->strides[d];
        else
            c.ostrides[k++] = out->strides[d];
    }
    if (n->numel > 0)
        ref__parallel_for(kept_numel(&c), c.rlen, scan_chunk, &c);
    return 0;
}
