/*
 * stitch.c - a reduction broadcast back into its consumer runs inside the consumer's kernel.
 *
 * The fusion pass (fuse.c) ends a kernel at every reduction, because a reduction's result has
 * fewer elements than the loop that made it. softmax is the classic victim: max over each row,
 * subtract, exp, sum over the row, divide, and four kernels with two full-size intermediates
 * written to memory and read back, where one pass over each row, with the row in cache, does it.
 *
 * This pass runs on the kernels the fusion pass formed (kir.h), in topological order, and
 * stitches a kernel P into a kernel K that reads P's result when both loop over the same
 * iteration space and P folds a row (the trailing axes [row, rank)):
 *
 *   - P reduces the row (max, sum): P's stages become stages of K, and K's loads of P's output,
 *     which read one value per row (strides 0 along the row), become that stage's result (a
 *     KIR_ACC value) for the current row;
 *   - P writes a full-size result but is itself staged (exp(x - max) after max was stitched
 *     into it): P's reduction stages become stages of K, and P's final values are recomputed in
 *     K wherever K loaded P's output (an exp is cheaper than a round trip through memory).
 *
 *   before (kernels, row = axis 1 of [N, M]):
 *     k1: %1 = max(x) [N, 1]          k2: %4 = exp(x - expand(%1))       k3: %5 = sum(%4) [N, 1]
 *     k4: %7 = %4 / expand(%5)
 *   after (one kernel, per row):
 *     stage 0: a0 = max of x      stage 1: a1 = sum of exp(x - a0)
 *     stage 2: out = exp(x - a0) / a1
 *
 * Stages and values are deduplicated as they are copied (k4 meets max twice, through k2 and
 * k3), so the result is what one would write by hand. P stays as a step of its own while
 * anything else still reads its buffer; fuse.c drops the kernels nobody reads any more.
 */
#include "stitch.h"

#include <string.h>

/* The first axis of a trailing run of reduced axes that is exactly the reduced set; -1 when the
 * reduced axes are not such a run (or there are none). */
static int suffix_row(const kir_kernel_t *k) {
    int row = k->rank;
    while (row > 0 && k->reduced[row - 1])
        row--;
    if (row == k->rank)
        return -1;
    for (int d = 0; d < row; d++)
        if (k->reduced[d])
            return -1;
    return row;
}

/* The row of a kernel that folds rows: staged, or a reduction over trailing axes; -1 if none. */
static int kernel_row(const kir_kernel_t *k) {
    if (k->nstages > 1)
        return k->row;
    return k->reduce != PRIM_COUNT ? suffix_row(k) : -1;
}

/* Stage s of k; a kernel built before stages existed (nstages 0) is one stage. */
static kir_stage_t stage_of(const kir_kernel_t *k, int s) {
    if (k->nstages >= 1)
        return k->stage[s];
    return (kir_stage_t){.reduce = k->reduce, .end = k->nvals, .dtype = k->out_dtype};
}

static int nstages_of(const kir_kernel_t *k) { return k->nstages >= 1 ? k->nstages : 1; }

/* True when input `in` reads, at each iteration point, P's output element for that point: P's
 * output is contiguous over the axes it keeps, and a folded row reads as one value (stride 0). */
static bool reads_result(const kir_kernel_t *K, const kir_input_t *in, const kir_kernel_t *P,
                         int row) {
    if (in->off != 0 || in->dtype != P->out_dtype)
        return false;
    bool folded = P->reduce != PRIM_COUNT;
    int64_t s = 1;
    for (int d = K->rank - 1; d >= 0; d--) {
        bool kept = !folded || d < row;
        int64_t want = kept ? s : 0;
        if (K->shape[d] != 1 && in->strides[d] != want)
            return false;
        if (kept)
            s *= K->shape[d];
    }
    return true;
}

/* Building the stitched kernel. */
typedef struct {
    kir_kernel_t *k;
    int32_t *kin;
    int begin;            /* first value of the stage being built */
    bool full;            /* something did not fit */
} sb_t;

static int sb_input(sb_t *b, int32_t node, const kir_input_t *in) {
    kir_kernel_t *k = b->k;
    for (int i = 0; i < k->nin; i++)
        if (b->kin[i] == node && k->in[i].dtype == in->dtype && k->in[i].off == in->off &&
            memcmp(k->in[i].strides, in->strides, (size_t)k->rank * sizeof(int64_t)) == 0)
            return i;
    if (k->nin >= KIR_MAX_INPUTS) {
        b->full = true;
        return 0;
    }
    b->kin[k->nin] = node;
    memset(&k->in[k->nin], 0, sizeof(k->in[0]));
    k->in[k->nin].dtype = in->dtype;
    k->in[k->nin].off = in->off;
    memcpy(k->in[k->nin].strides, in->strides, sizeof(in->strides));
    return k->nin++;
}

static bool val_equal(const kir_val_t *x, const kir_val_t *y) {
    return x->kind == y->kind && x->prim == y->prim && x->dtype == y->dtype && x->a == y->a &&
           x->b == y->b && x->c == y->c && x->input == y->input &&
           memcmp(&x->value, &y->value, sizeof(double)) == 0;
}

/* Adds v to the current stage, or returns an equal value already in it. */
static int sb_val(sb_t *b, const kir_val_t *v) {
    kir_kernel_t *k = b->k;
    for (int j = b->begin; j < k->nvals; j++)
        if (val_equal(&k->vals[j], v))
            return j;
    int j = kir_add_val(k, v);
    if (j < 0) {
        b->full = true;
        return b->begin;
    }
    return j;
}

/* How a source kernel's values map into the one being built. */
typedef struct {
    const kir_kernel_t *src;
    const int32_t *kin;
    int stage_map[KIR_MAX_STAGES]; /* src stage -> built stage */
    int replace_input;             /* a src input that stands for P's result (-1: none) */
} src_t;

static int copy_vals(sb_t *b, const src_t *s, int vb, int ve, const src_t *p, int pfirst);

/* Copies src value j (and what it needs, already mapped in map[]) into the current stage. */
static int copy_val(sb_t *b, const src_t *s, int j, const int *map, const src_t *p, int pfirst) {
    const kir_val_t *v = &s->src->vals[j];
    kir_val_t nv = *v;
    switch (v->kind) {
    case KIR_LOAD:
        if (v->input == s->replace_input) {
            const kir_kernel_t *P = p->src;
            if (P->reduce != PRIM_COUNT) { /* the row's folded value */
                nv.kind = KIR_ACC;
                nv.input = p->stage_map[nstages_of(P) - 1];
                nv.dtype = P->out_dtype;
                return sb_val(b, &nv);
            }
            /* P's final stage, recomputed here. */
            return copy_vals(b, p, pfirst, P->nvals, NULL, 0);
        }
        nv.input = sb_input(b, s->kin[v->input], &s->src->in[v->input]);
        return sb_val(b, &nv);
    case KIR_ACC:
        nv.input = s->stage_map[v->input];
        return sb_val(b, &nv);
    case KIR_CONST:
        return sb_val(b, &nv);
    case KIR_OP:
        break;
    }
    nv.a = map[v->a];
    nv.b = v->b >= 0 ? map[v->b] : -1;
    nv.c = v->c >= 0 ? map[v->c] : -1;
    return sb_val(b, &nv);
}

/* Copies src values [vb, ve) (one stage's) into the current stage; returns the last one's new
 * index. p (with its final stage starting at pfirst) is what replaced loads expand to. */
static int copy_vals(sb_t *b, const src_t *s, int vb, int ve, const src_t *p, int pfirst) {
    int map[KIR_MAX_VALS];
    int last = b->begin;
    for (int j = vb; j < ve && !b->full; j++) {
        map[j] = copy_val(b, s, j, map, p, pfirst);
        last = map[j];
    }
    return last;
}

/* A stage's value is its last one; when the copy of the source's last value merged with an
 * earlier equal value, appends a duplicate of it (valid SSA: its operands are earlier). */
static bool end_with(sb_t *b, int last) {
    kir_kernel_t *k = b->k;
    if (last == k->nvals - 1)
        return true;
    if (k->nvals >= KIR_MAX_VALS)
        return false;
    k->vals[k->nvals] = k->vals[last];
    k->nvals++;
    return true;
}

/* Closes the stage that starts at b->begin: if an earlier stage is identical (same fold, same
 * values relative to their stage's start), drops this one and returns the earlier one's index. */
static int close_stage(sb_t *b, prim_t reduce, pg_dtype_t dtype) {
    kir_kernel_t *k = b->k;
    int len = k->nvals - b->begin;
    for (int s = 0; s < k->nstages; s++) {
        int sb = s ? k->stage[s - 1].end : 0;
        if (k->stage[s].reduce != reduce || k->stage[s].dtype != dtype ||
            k->stage[s].end - sb != len)
            continue;
        bool same = true;
        for (int j = 0; j < len && same; j++) {
            kir_val_t x = k->vals[sb + j], y = k->vals[b->begin + j];
            if (x.kind == KIR_OP) {
                x.a -= sb;
                x.b = x.b >= 0 ? x.b - sb : -1;
                x.c = x.c >= 0 ? x.c - sb : -1;
                y.a -= b->begin;
                y.b = y.b >= 0 ? y.b - b->begin : -1;
                y.c = y.c >= 0 ? y.c - b->begin : -1;
            }
            same = val_equal(&x, &y);
        }
        if (same) {
            k->nvals = b->begin;
            return s;
        }
    }
    if (k->nstages >= KIR_MAX_STAGES) {
        b->full = true;
        return 0;
    }
    k->stage[k->nstages] = (kir_stage_t){.reduce = reduce, .end = k->nvals, .dtype = dtype};
    b->begin = k->nvals;
    return k->nstages++;
}

bool stitch_inline(const kir_kernel_t *K, const int32_t *kin_k, int q, const kir_kernel_t *P,
                   const int32_t *kin_p, kir_kernel_t *out, int32_t *kin_out) {
    int prow = kernel_row(P);
    if (prow < 0 || q < 0 || q >= K->nin || P->rank != K->rank ||
        memcmp(P->shape, K->shape, (size_t)K->rank * sizeof(int64_t)) != 0)
        return false;
    if (K->nstages > 1 || K->reduce != PRIM_COUNT) {
        if (kernel_row(K) != prow)
            return false;
    }
    if (P->reduce == PRIM_COUNT && P->vals[P->nvals - 1].dtype != P->out_dtype)
        return false;
    if (!reads_result(K, &K->in[q], P, prow))
        return false;

    memset(out, 0, sizeof(*out));
    out->rank = K->rank;
    memcpy(out->shape, K->shape, sizeof(out->shape));
    out->reduce = K->reduce;
    memcpy(out->reduced, K->reduced, sizeof(out->reduced));
    out->out_dtype = K->out_dtype;
    out->row = prow;
    sb_t b = {.k = out, .kin = kin_out};
    src_t ps = {.src = P, .kin = kin_p, .replace_input = -1};
    src_t ks = {.src = K, .kin = kin_k, .replace_input = q};

    /* P's folds first: every stage if P reduces, all but its final (elementwise) one if not. */
    int pn = nstages_of(P), pfolds = P->reduce != PRIM_COUNT ? pn : pn - 1;
    for (int s = 0; s < pfolds && !b.full; s++) {
        kir_stage_t st = stage_of(P, s);
        int vb = s ? stage_of(P, s - 1).end : 0;
        int last = copy_vals(&b, &ps, vb, st.end, NULL, 0);
        if (b.full || !end_with(&b, last))
            return false;
        ps.stage_map[s] = close_stage(&b, st.reduce, st.dtype);
    }
    int pfirst = pn >= 2 ? stage_of(P, pn - 2).end : 0; /* P's final stage (if elementwise) */
    /* Then K's stages, with P's result standing in for K's input q. */
    int kn = nstages_of(K);
    for (int s = 0; s < kn && !b.full; s++) {
        kir_stage_t st = stage_of(K, s);
        int vb = s ? stage_of(K, s - 1).end : 0;
        int last = copy_vals(&b, &ks, vb, st.end, &ps, pfirst);
        if (b.full || !end_with(&b, last))
            return false;
        if (s < kn - 1) {
            ks.stage_map[s] = close_stage(&b, st.reduce, st.dtype);
        } else {
            if (out->nstages >= KIR_MAX_STAGES)
                return false;
            out->stage[out->nstages++] = (kir_stage_t){.reduce = st.reduce, .end = out->nvals,
                                                       .dtype = st.dtype};
        }
    }
    if (b.full || out->nstages < 2)
        return false;
    /* A folded final stage reduces exactly the row. */
    if (out->reduce != PRIM_COUNT)
        for (int d = 0; d < out->rank; d++)
            out->reduced[d] = d >= prow;
    return true;
}
