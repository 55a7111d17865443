/*
 * autodiff.c - reverse-mode differentiation: the backward graph of a primitive graph, built of
 * the same primitives.
 *
 * A `grad` node asks for d(sum(y * gy))/dx. The forward graph is a chain of primitives, and the
 * chain rule read backwards gives every input's gradient from its output's: if node i computes
 * o = f(a, b), then a node that adds "adj(o) * df/da" to adj(a) is all that i contributes. So
 * one walk over the nodes from y down, in reverse topological order, with adj(y) = gy, gives the
 * adjoint of every node at once, however many x's are wanted: that is why reverse mode (one
 * sweep per output) suits a scalar loss and millions of parameters, where forward mode would
 * need one sweep per parameter. A node's adjoint is final when the walk reaches it, because
 * every node that reads it has a higher index and has already added its share (several
 * consumers' shares are summed with `add`).
 *
 *   before (request: y = sum(x * w), g = grad(y, x)):
 *     %0 = input x [3]   %1 = input w [3]   %2 = mul(%0, %1)   %3 = sum(%2, dims=[0])   (y)
 *   after (the sweep, seed 1.0):
 *     %4 = full 1 []                          adj(%3): the seed
 *     %5 = reshape(%4) [1]   %6 = expand(%5) [3]   adj(%2): sum's rule, expand back
 *     %7 = mul(%6, %1) [3]                    adj(%0) = adj(%2) * w: mul's rule   (g)
 *
 * mul's rule would also make adj(%1) = adj(%2) * x, but w is not wanted: the sweep only visits
 * nodes that lie on a path from a wanted x to y, and only gives to inputs on such a path.
 * Nodes with `nograd` (a `detach`) stop the walk, as do bool and integer values, which carry no
 * gradient (comparisons, argmax, index inputs, casts to an integer).
 *
 * The backward graph is ordinary primitives appended to the graph being lowered: the later
 * passes (cse, views, fold, fuse) see one graph and fuse forward and backward kernels alike,
 * and the plan cache reuses a whole training step by its structure. Gradient rules therefore
 * only emit primitives through graph_add, with the builder's contract (equal dtypes, expanded
 * shapes) already met.
 *
 * One rule per primitive, in one table indexed by primitive (generated from ops.def, so a
 * primitive without a rule does not compile). Adding an op is an ops.def row, a kernel, a shape
 * rule and a rule here. Ties follow PyTorch where it defines them: maximum/minimum split a
 * gradient evenly between equal operands; a max/min reduction marked `first` (torch.max(x, dim),
 * max_pool2d) routes it to the first extremal element, other max/min reductions (amax) split it
 * evenly among the tied elements.
 */
#include "autodiff.h"

#include "../mem.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* What a rule sees: the graph and the sweep's state. */
typedef struct {
    graph_t *g;
    bool *want;         /* want[i]: node i lies on a path from a wanted x (i <= y) */
    int32_t *adj;       /* adj[i]: node i's adjoint so far, -1: none (i <= y) */
    proto_err_t *err;
} adctx_t;

/* A node's dtype and shape, copied: graph_add may move the node array under a pointer. */
typedef struct {
    pg_dtype_t dt;
    int rank;
    int64_t d[PROTO_MAX_RANK];
} shp_t;

#define N(id) (&c->g->nodes[id])
#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((x) < 0)                                                                               \
            return -1;                                                                             \
    } while (0)

static bool is_float(pg_dtype_t t) { return t == PG_FLOAT32 || t == PG_FLOAT64; }

static shp_t shp(const adctx_t *c, int32_t id) {
    shp_t s = {.dt = N(id)->dtype, .rank = N(id)->rank};
    memcpy(s.d, N(id)->shape, sizeof(s.d));
    return s;
}

static bool same_shape(const shp_t *a, const shp_t *b) {
    return a->rank == b->rank && !memcmp(a->d, b->d, sizeof(int64_t) * (size_t)a->rank);
}

static uint64_t numel(const shp_t *s) {
    uint64_t n = 1;
    for (int d = 0; d < s->rank; d++)
        n *= (uint64_t)s->d[d];
    return n;
}

/* =============================================================================================
 * Emitting primitives (inputs already agree: these never broadcast or promote)
 * =========================================================================================== */

static int32_t emit(adctx_t *c, prim_t op, const int32_t *in, int nin, const gattr_t *a,
                    const shp_t *s) {
    return graph_add(c->g, op, in, nin, a, s ? s->dt : PG_FLOAT32, s ? s->rank : 0,
                     s ? s->d : NULL, NULL, c->err);
}

static int32_t op1(adctx_t *c, prim_t op, int32_t x) { return emit(c, op, &x, 1, NULL, NULL); }

static int32_t op2(adctx_t *c, prim_t op, int32_t a, int32_t b) {
    int32_t in[2] = {a, b};
    return emit(c, op, in, 2, NULL, NULL);
}

static int32_t sel(adctx_t *c, int32_t cond, int32_t a, int32_t b) {
    int32_t in[3] = {cond, a, b};
    return emit(c, PRIM_where, in, 3, NULL, NULL);
}

/* A constant of like's dtype and shape (a `full`, which kernels inline). */
static int32_t cst(adctx_t *c, double v, int32_t like) {
    shp_t s = shp(c, like);
    gattr_t a = {.value = v};
    return emit(c, PRIM_full, NULL, 0, &a, &s);
}

/* x op v for a constant v. */
static int32_t opc(adctx_t *c, prim_t op, int32_t x, double v) {
    int32_t k;
    TRY(k = cst(c, v, x));
    return op2(c, op, x, k);
}

static int32_t cast_to(adctx_t *c, int32_t x, pg_dtype_t dt) {
    if (N(x)->dtype == dt)
        return x;
    gattr_t a = {.dtype = dt};
    return emit(c, PRIM_cast, &x, 1, &a, NULL);
}

static int32_t reshape_to(adctx_t *c, int32_t x, const shp_t *s) {
    shp_t xs = shp(c, x);
    if (same_shape(&xs, s))
        return x;
    return emit(c, PRIM_reshape, &x, 1, NULL, s);
}

static int32_t expand_to(adctx_t *c, int32_t x, const shp_t *s) {
    shp_t xs = shp(c, x);
    if (same_shape(&xs, s))
        return x;
    return emit(c, PRIM_expand, &x, 1, NULL, s);
}

static int32_t permute_by(adctx_t *c, int32_t x, int rank, const int64_t *perm) {
    gattr_t a = {.ndims = rank};
    memcpy(a.dims, perm, sizeof(int64_t) * (size_t)rank);
    return emit(c, PRIM_permute, &x, 1, &a, NULL);
}

/* Swaps the last two axes (a matrix transpose of every batch element). */
static int32_t transpose(adctx_t *c, int32_t x) {
    int64_t p[PROTO_MAX_RANK];
    int r = N(x)->rank;
    for (int d = 0; d < r; d++)
        p[d] = d;
    p[r - 2] = r - 1;
    p[r - 1] = r - 2;
    return permute_by(c, x, r, p);
}

static int32_t reduce_keep(adctx_t *c, prim_t op, int32_t x, const int64_t *dims, int nd) {
    gattr_t a = {.ndims = nd, .keepdim = true};
    memcpy(a.dims, dims, sizeof(int64_t) * (size_t)nd);
    return emit(c, op, &x, 1, &a, NULL);
}

static int32_t slice_of(adctx_t *c, int32_t x, const int64_t *start, const shp_t *s) {
    gattr_t a = {0};
    for (int d = 0; d < s->rank; d++) {
        a.start[d] = s->d[d] ? start[d] : 0;
        a.step[d] = 1;
    }
    return emit(c, PRIM_slice, &x, 1, &a, s);
}

static int32_t pad_zeros(adctx_t *c, int32_t x, const int64_t *before, const int64_t *after) {
    gattr_t a = {0};
    int r = N(x)->rank;
    bool any = false;
    for (int d = 0; d < r; d++) {
        a.start[d] = before[d];
        a.stop[d] = after[d];
        any = any || before[d] || after[d];
    }
    return any ? emit(c, PRIM_pad, &x, 1, &a, NULL) : x;
}

/* =============================================================================================
 * Accumulating adjoints
 * =========================================================================================== */

/* True when input k of node i should receive a gradient. */
static bool wants(const adctx_t *c, int32_t i, int k) { return c->want[N(i)->in[k]]; }

/* Adds contribution v to the adjoint of node t (summing with an earlier one). */
static int give(adctx_t *c, int32_t t, int32_t v) {
    if (v < 0)
        return -1;
    shp_t ts = shp(c, t), vs = shp(c, v);
    if (ts.dt != vs.dt || !same_shape(&ts, &vs)) {
        char s1[160], s2[160];
        proto_fail(c->err, PG_EINTERNAL,
                   "node %d (%s): a gradient of shape %s %s for a node of shape %s %s",
                   (int)c->g->wire, c->g->wire_op, graph_shape_str(s1, sizeof(s1), vs.rank, vs.d),
                   proto_dtype_name(vs.dt), graph_shape_str(s2, sizeof(s2), ts.rank, ts.d),
                   proto_dtype_name(ts.dt));
        return -1;
    }
    if (c->adj[t] < 0) {
        c->adj[t] = v;
        return 0;
    }
    int32_t s = op2(c, PRIM_add, c->adj[t], v);
    TRY(s);
    c->adj[t] = s;
    return 0;
}

/* Gives v to input k of node i when that input wants a gradient. */
#define GIVE(k, expr)                                                                              \
    do {                                                                                           \
        if (wants(c, i, k))                                                                        \
            TRY(give(c, N(i)->in[k], (expr)));                                                     \
    } while (0)

/* =============================================================================================
 * Rules: one per primitive. Each gets the node i and its adjoint g (i's dtype and shape) and
 * gives to the inputs that want a gradient. Their comments say what d(out)/d(input) is.
 * =========================================================================================== */

typedef int (*ad_rule_fn)(adctx_t *c, int32_t i, int32_t g);

/* Leaves, and ops whose result is bool or integer or piecewise constant: no gradient. */
static int d_none(adctx_t *c, int32_t i, int32_t g) {
    (void)c, (void)i, (void)g;
    return 0;
}
#define d_input d_none
#define d_const d_none
#define d_full d_none
#define d_arange d_none
#define d_rand d_none
#define d_randn d_none
#define d_sign d_none        /* 0 almost everywhere, as torch */
#define d_logical_not d_none
#define d_eq d_none
#define d_ne d_none
#define d_lt d_none
#define d_le d_none
#define d_gt d_none
#define d_ge d_none
#define d_logical_and d_none
#define d_logical_or d_none
#define d_any d_none
#define d_all d_none
#define d_argmax d_none
#define d_argmin d_none

/* ---- elementwise unary: x = in[0], o = i ---- */

static int d_neg(adctx_t *c, int32_t i, int32_t g) { /* -1 */
    GIVE(0, op1(c, PRIM_neg, g));
    return 0;
}

static int d_abs(adctx_t *c, int32_t i, int32_t g) { /* sign(x) */
    int32_t s;
    TRY(s = op1(c, PRIM_sign, N(i)->in[0]));
    GIVE(0, op2(c, PRIM_mul, g, s));
    return 0;
}

static int d_exp(adctx_t *c, int32_t i, int32_t g) { /* e^x = o */
    GIVE(0, op2(c, PRIM_mul, g, i));
    return 0;
}

static int d_log(adctx_t *c, int32_t i, int32_t g) { /* 1 / x */
    GIVE(0, op2(c, PRIM_div, g, N(i)->in[0]));
    return 0;
}

static int d_sqrt(adctx_t *c, int32_t i, int32_t g) { /* 1 / (2 o) */
    int32_t t;
    TRY(t = opc(c, PRIM_mul, i, 2.0));
    GIVE(0, op2(c, PRIM_div, g, t));
    return 0;
}

static int d_rsqrt(adctx_t *c, int32_t i, int32_t g) { /* -o^3 / 2 */
    int32_t t, u;
    TRY(t = op1(c, PRIM_square, i));
    TRY(t = op2(c, PRIM_mul, t, i));
    TRY(u = opc(c, PRIM_mul, g, -0.5));
    GIVE(0, op2(c, PRIM_mul, u, t));
    return 0;
}

static int d_sin(adctx_t *c, int32_t i, int32_t g) { /* cos x */
    int32_t t;
    TRY(t = op1(c, PRIM_cos, N(i)->in[0]));
    GIVE(0, op2(c, PRIM_mul, g, t));
    return 0;
}

static int d_cos(adctx_t *c, int32_t i, int32_t g) { /* -sin x */
    int32_t t;
    TRY(t = op1(c, PRIM_sin, N(i)->in[0]));
    TRY(t = op1(c, PRIM_neg, t));
    GIVE(0, op2(c, PRIM_mul, g, t));
    return 0;
}

static int d_tanh(adctx_t *c, int32_t i, int32_t g) { /* 1 - o^2 */
    int32_t t, one;
    TRY(t = op1(c, PRIM_square, i));
    TRY(one = cst(c, 1.0, i));
    TRY(t = op2(c, PRIM_sub, one, t));
    GIVE(0, op2(c, PRIM_mul, g, t));
    return 0;
}

static int d_sigmoid(adctx_t *c, int32_t i, int32_t g) { /* (1 - o) o */
    int32_t t, one;
    TRY(one = cst(c, 1.0, i));
    TRY(t = op2(c, PRIM_sub, one, i));
    TRY(t = op2(c, PRIM_mul, g, t));
    GIVE(0, op2(c, PRIM_mul, t, i));
    return 0;
}

static int d_relu(adctx_t *c, int32_t i, int32_t g) { /* 1 where o > 0, else 0 (also at 0) */
    int32_t pos, z;
    TRY(z = cst(c, 0.0, i));
    TRY(pos = op2(c, PRIM_gt, i, z));
    GIVE(0, sel(c, pos, g, z));
    return 0;
}

static int d_gelu(adctx_t *c, int32_t i, int32_t g) { /* Phi(x) + x phi(x), as torch */
    int32_t x = N(i)->in[0], cdf, pdf, t;
    TRY(cdf = opc(c, PRIM_mul, x, M_SQRT1_2));
    TRY(cdf = op1(c, PRIM_erf, cdf));
    TRY(cdf = opc(c, PRIM_add, cdf, 1.0));
    TRY(cdf = opc(c, PRIM_mul, cdf, 0.5));
    TRY(pdf = op1(c, PRIM_square, x));
    TRY(pdf = opc(c, PRIM_mul, pdf, -0.5));
    TRY(pdf = op1(c, PRIM_exp, pdf));
    TRY(pdf = opc(c, PRIM_mul, pdf, M_2_SQRTPI * M_SQRT1_2 * 0.5));
    TRY(t = op2(c, PRIM_mul, x, pdf));
    TRY(t = op2(c, PRIM_add, cdf, t));
    GIVE(0, op2(c, PRIM_mul, g, t));
    return 0;
}

/* With u = k (x + 0.044715 x^3), k = sqrt(2/pi), t = tanh u:
 * (1 + t) / 2 + x/2 (1 - t^2) k (1 + 3 * 0.044715 x^2), as torch. */
static int d_gelu_tanh(adctx_t *c, int32_t i, int32_t g) {
    const double kb = M_SQRT2 * M_2_SQRTPI * 0.5, kk = 0.044715;
    int32_t x = N(i)->in[0], x2, u, t, l, r, one;
    TRY(x2 = op1(c, PRIM_square, x));
    TRY(u = op2(c, PRIM_mul, x2, x));
    TRY(u = opc(c, PRIM_mul, u, kk));
    TRY(u = op2(c, PRIM_add, x, u));
    TRY(u = opc(c, PRIM_mul, u, kb));
    TRY(t = op1(c, PRIM_tanh, u));
    TRY(l = opc(c, PRIM_add, t, 1.0));
    TRY(l = opc(c, PRIM_mul, l, 0.5));                 /* (1 + t) / 2 */
    TRY(one = cst(c, 1.0, x));
    TRY(r = op1(c, PRIM_square, t));
    TRY(r = op2(c, PRIM_sub, one, r));                 /* 1 - t^2 */
    TRY(u = opc(c, PRIM_mul, x2, 3.0 * kk));
    TRY(u = opc(c, PRIM_add, u, 1.0));
    TRY(u = opc(c, PRIM_mul, u, kb));                  /* k (1 + 3 kk x^2) */
    TRY(r = op2(c, PRIM_mul, r, u));
    TRY(u = opc(c, PRIM_mul, x, 0.5));
    TRY(r = op2(c, PRIM_mul, u, r));
    TRY(l = op2(c, PRIM_add, l, r));
    GIVE(0, op2(c, PRIM_mul, g, l));
    return 0;
}

static int d_silu(adctx_t *c, int32_t i, int32_t g) { /* s (1 + x (1 - s)), s = sigmoid x */
    int32_t x = N(i)->in[0], s, t, one;
    TRY(s = op1(c, PRIM_sigmoid, x));
    TRY(one = cst(c, 1.0, x));
    TRY(t = op2(c, PRIM_sub, one, s));
    TRY(t = op2(c, PRIM_mul, x, t));
    TRY(t = opc(c, PRIM_add, t, 1.0));
    TRY(t = op2(c, PRIM_mul, s, t));
    GIVE(0, op2(c, PRIM_mul, g, t));
    return 0;
}

static int d_erf(adctx_t *c, int32_t i, int32_t g) { /* 2/sqrt(pi) e^(-x^2) */
    int32_t t;
    TRY(t = op1(c, PRIM_square, N(i)->in[0]));
    TRY(t = op1(c, PRIM_neg, t));
    TRY(t = op1(c, PRIM_exp, t));
    TRY(t = opc(c, PRIM_mul, t, M_2_SQRTPI));
    GIVE(0, op2(c, PRIM_mul, g, t));
    return 0;
}

static int d_reciprocal(adctx_t *c, int32_t i, int32_t g) { /* -o^2 */
    int32_t t;
    TRY(t = op1(c, PRIM_square, i));
    TRY(t = op2(c, PRIM_mul, g, t));
    GIVE(0, op1(c, PRIM_neg, t));
    return 0;
}

static int d_square(adctx_t *c, int32_t i, int32_t g) { /* 2 x */
    int32_t t;
    TRY(t = opc(c, PRIM_mul, N(i)->in[0], 2.0));
    GIVE(0, op2(c, PRIM_mul, g, t));
    return 0;
}

static int d_cast(adctx_t *c, int32_t i, int32_t g) { /* float -> float: cast back */
    GIVE(0, cast_to(c, g, N(N(i)->in[0])->dtype)); /* only float inputs want one */
    return 0;
}

/* ---- elementwise binary: a = in[0], b = in[1] ---- */

static int d_add(adctx_t *c, int32_t i, int32_t g) {
    GIVE(0, g);
    GIVE(1, g);
    return 0;
}

static int d_sub(adctx_t *c, int32_t i, int32_t g) {
    GIVE(0, g);
    GIVE(1, op1(c, PRIM_neg, g));
    return 0;
}

static int d_mul(adctx_t *c, int32_t i, int32_t g) {
    GIVE(0, op2(c, PRIM_mul, g, N(i)->in[1]));
    GIVE(1, op2(c, PRIM_mul, g, N(i)->in[0]));
    return 0;
}

static int d_div(adctx_t *c, int32_t i, int32_t g) { /* 1/b and -a/b^2, as torch */
    GIVE(0, op2(c, PRIM_div, g, N(i)->in[1]));
    if (wants(c, i, 1)) {
        int32_t t, b2;
        TRY(t = op1(c, PRIM_neg, g));
        TRY(t = op2(c, PRIM_mul, t, N(i)->in[0]));
        TRY(b2 = op2(c, PRIM_mul, N(i)->in[1], N(i)->in[1]));
        TRY(give(c, N(i)->in[1], op2(c, PRIM_div, t, b2)));
    }
    return 0;
}

/* d/da = b a^(b-1) (0 where b == 0); d/db = o ln a (0 where a == 0 and b >= 0), as torch. */
static int d_pow(adctx_t *c, int32_t i, int32_t g) {
    int32_t a = N(i)->in[0], b = N(i)->in[1], z, t, m;
    TRY(z = cst(c, 0.0, i));
    if (wants(c, i, 0)) {
        TRY(t = opc(c, PRIM_sub, b, 1.0));
        TRY(t = op2(c, PRIM_pow, a, t));
        TRY(t = op2(c, PRIM_mul, b, t));
        TRY(t = op2(c, PRIM_mul, g, t));
        TRY(m = op2(c, PRIM_eq, b, z));
        TRY(give(c, a, sel(c, m, z, t)));
    }
    if (wants(c, i, 1)) {
        int32_t m2;
        TRY(t = op1(c, PRIM_log, a));
        TRY(t = op2(c, PRIM_mul, i, t));
        TRY(m = op2(c, PRIM_eq, a, z));
        TRY(m2 = op2(c, PRIM_ge, b, z));
        TRY(m = op2(c, PRIM_logical_and, m, m2));
        TRY(t = sel(c, m, z, t));
        TRY(give(c, b, op2(c, PRIM_mul, g, t)));
    }
    return 0;
}

/* maximum (lose = lt) and minimum (lose = gt): all of g to the winner, half each on a tie. */
static int minmax2(adctx_t *c, int32_t i, int32_t g, prim_t lose_a, prim_t lose_b) {
    int32_t a = N(i)->in[0], b = N(i)->in[1], z, half, tie, m;
    TRY(z = cst(c, 0.0, i));
    TRY(half = opc(c, PRIM_div, g, 2.0));
    TRY(tie = op2(c, PRIM_eq, a, b));
    TRY(tie = sel(c, tie, half, g));
    if (wants(c, i, 0)) {
        TRY(m = op2(c, lose_a, a, b));
        TRY(give(c, a, sel(c, m, z, tie)));
    }
    if (wants(c, i, 1)) {
        TRY(m = op2(c, lose_b, a, b));
        TRY(give(c, b, sel(c, m, z, tie)));
    }
    return 0;
}

static int d_maximum(adctx_t *c, int32_t i, int32_t g) {
    return minmax2(c, i, g, PRIM_lt, PRIM_gt);
}

static int d_minimum(adctx_t *c, int32_t i, int32_t g) {
    return minmax2(c, i, g, PRIM_gt, PRIM_lt);
}

static int d_where(adctx_t *c, int32_t i, int32_t g) { /* the condition gets none */
    int32_t z;
    TRY(z = cst(c, 0.0, i));
    GIVE(1, sel(c, N(i)->in[0], g, z));
    GIVE(2, sel(c, N(i)->in[0], z, g));
    return 0;
}

/* ---- reductions: x = in[0] ---- */

/* v (of reduction i's shape) brought back to the input's shape: the reduced axes are restored
 * as size 1 (when keepdim was false) and expanded. */
static int32_t back(adctx_t *c, int32_t i, int32_t v) {
    shp_t xs = shp(c, N(i)->in[0]), ks = xs;
    const gattr_t *a = &N(i)->a;
    for (int k = 0; k < a->ndims; k++)
        ks.d[a->dims[k]] = 1;
    ks.dt = N(v)->dtype;
    xs.dt = ks.dt;
    TRY(v = reshape_to(c, v, &ks));
    return expand_to(c, v, &xs);
}

static int d_sum(adctx_t *c, int32_t i, int32_t g) { /* 1 for every element */
    GIVE(0, back(c, i, g));
    return 0;
}

/* Exact with zeros: no zero in the reduced group: o / x; exactly one: the product of the others
 * at the zero, 0 elsewhere; more: 0. All three are "product of the nonzero elements / x" where
 * the zero is replaced by 1, kept where (no zero) or (one zero and this is it). */
static int d_prod(adctx_t *c, int32_t i, int32_t g) {
    const gattr_t a = N(i)->a;
    int32_t x = N(i)->in[0], z, one, isz, xs, p, nz, m, m1, t;
    TRY(z = cst(c, 0.0, x));
    TRY(one = cst(c, 1.0, x));
    TRY(isz = op2(c, PRIM_eq, x, z));
    TRY(xs = sel(c, isz, one, x));
    TRY(p = reduce_keep(c, PRIM_prod, xs, a.dims, a.ndims));
    TRY(p = back(c, i, p));
    TRY(nz = cast_to(c, isz, N(x)->dtype));
    TRY(nz = reduce_keep(c, PRIM_sum, nz, a.dims, a.ndims));
    TRY(nz = back(c, i, nz));
    TRY(m = op2(c, PRIM_eq, nz, z));
    TRY(m1 = op2(c, PRIM_eq, nz, one));
    TRY(m1 = op2(c, PRIM_logical_and, m1, isz));
    TRY(m = op2(c, PRIM_logical_or, m, m1));
    TRY(t = op2(c, PRIM_div, p, xs));
    TRY(t = op2(c, PRIM_mul, back(c, i, g), t));
    GIVE(0, sel(c, m, t, z));
    return 0;
}

/* mask (bool, x's shape) reduced to its first true element per reduced group, in C order over
 * the reduced axes (taken in a.dims order): the element whose position in its group is the
 * least position where the mask holds.
 *
 *   pos  = the position of each element in its group: arange(L) reshaped over the reduced axes,
 *          expanded over the others (L = the group's size)
 *   f    = min(where(mask, pos, L)) over the reduced axes: the first true position, L if none
 *   mask & (pos == f)
 *
 * Every step is elementwise or a reduction broadcast back, so the fusion pass makes one row
 * kernel of it (a max_pool2d's backward: the 2x2 windows are the rows). A running count
 * (cumsum, == 1) gives the same mask, but the scan runs in the interpreter and needs the
 * reduced axes moved last and flattened, which costs two copies. */
static int32_t first_of(adctx_t *c, int32_t i, int32_t mask) {
    const gattr_t a = N(i)->a;
    shp_t xs = shp(c, mask), ts = {.dt = PG_INT32, .rank = xs.rank}, ps;
    int64_t perm[PROTO_MAX_RANK], L = 1;
    int32_t pos, none, f, eq;
    if (a.ndims == 0)
        return mask;
    /* ts: the reduced sizes first (in a.dims order, C order over them), then ones; perm puts
     * each axis back where x has it. */
    bool red[PROTO_MAX_RANK] = {false};
    for (int k = 0; k < a.ndims; k++) {
        red[a.dims[k]] = true;
        perm[a.dims[k]] = k;
        ts.d[k] = xs.d[a.dims[k]];
        L *= xs.d[a.dims[k]];
    }
    for (int d = 0, k = a.ndims; d < xs.rank; d++)
        if (!red[d]) {
            perm[d] = k;
            ts.d[k++] = 1;
        }
    gattr_t ar = {.astart = 0.0, .astep = 1.0};
    shp_t ls = {.dt = PG_INT32, .rank = 1, .d = {L}};
    TRY(pos = emit(c, PRIM_arange, NULL, 0, &ar, &ls));
    TRY(pos = reshape_to(c, pos, &ts));
    TRY(pos = permute_by(c, pos, xs.rank, perm));
    ps = shp(c, pos);
    ps.dt = PG_INT32;
    for (int d = 0; d < xs.rank; d++)
        ps.d[d] = xs.d[d];
    TRY(pos = expand_to(c, pos, &ps));
    TRY(none = cst(c, (double)L, pos));
    TRY(f = sel(c, mask, pos, none));
    TRY(f = reduce_keep(c, PRIM_min, f, a.dims, a.ndims));
    TRY(f = expand_to(c, f, &ps));
    TRY(eq = op2(c, PRIM_eq, pos, f));
    return op2(c, PRIM_logical_and, mask, eq);
}

static int d_max(adctx_t *c, int32_t i, int32_t g) {
    const gattr_t a = N(i)->a;
    int32_t x = N(i)->in[0], o, m, gk, z, t;
    TRY(o = back(c, i, i));
    TRY(m = op2(c, PRIM_eq, x, o));
    TRY(gk = back(c, i, g));
    TRY(z = cst(c, 0.0, x));
    if (a.first) {
        TRY(m = first_of(c, i, m));
    } else {
        TRY(t = cast_to(c, m, N(x)->dtype));
        TRY(t = reduce_keep(c, PRIM_sum, t, a.dims, a.ndims));
        TRY(t = back(c, i, t));
        TRY(gk = op2(c, PRIM_div, gk, t));
    }
    GIVE(0, sel(c, m, gk, z));
    return 0;
}
#define d_min d_max

static int d_cumsum(adctx_t *c, int32_t i, int32_t g) { /* reversed cumsum of g */
    gattr_t a = {.ndims = 1, .dims = {N(i)->a.dims[0]}};
    int32_t t;
    TRY(t = emit(c, PRIM_flip, &g, 1, &a, NULL));
    TRY(t = emit(c, PRIM_cumsum, &t, 1, &a, NULL));
    GIVE(0, emit(c, PRIM_flip, &t, 1, &a, NULL));
    return 0;
}

/* ---- movement ---- */

static int d_reshape(adctx_t *c, int32_t i, int32_t g) {
    shp_t xs = shp(c, N(i)->in[0]);
    GIVE(0, reshape_to(c, g, &xs));
    return 0;
}

static int d_permute(adctx_t *c, int32_t i, int32_t g) { /* the inverse permutation */
    const gattr_t a = N(i)->a;
    int64_t inv[PROTO_MAX_RANK];
    for (int d = 0; d < a.ndims; d++)
        inv[a.dims[d]] = d;
    GIVE(0, permute_by(c, g, a.ndims, inv));
    return 0;
}

/* Broadcasting's adjoint: sum over the new leading axes and the size-1 axes that grew. */
static int d_expand(adctx_t *c, int32_t i, int32_t g) {
    shp_t xs = shp(c, N(i)->in[0]), os = shp(c, i);
    int64_t dims[PROTO_MAX_RANK];
    int nd = 0, lead = os.rank - xs.rank;
    for (int d = 0; d < os.rank; d++)
        if (d < lead || (xs.d[d - lead] == 1 && os.d[d] != 1))
            dims[nd++] = d;
    int32_t t = g;
    if (nd)
        TRY(t = reduce_keep(c, PRIM_sum, g, dims, nd));
    GIVE(0, reshape_to(c, t, &xs));
    return 0;
}

/* g lands where the slice read: per strided axis, each element is followed by step - 1 zeros
 * (viewed as [A, L, B]: unsqueeze to [A, L, 1, B], pad to [A, L, step, B], flatten to
 * [A, L * step, B], cut to what the input has after the start); then one pad puts the whole
 * block at the slice's start in zeros of the input's shape. */
static int d_slice(adctx_t *c, int32_t i, int32_t g) {
    if (!wants(c, i, 0))
        return 0;
    const gattr_t a = N(i)->a;
    shp_t xs = shp(c, N(i)->in[0]), cur = shp(c, i);
    if (numel(&cur) == 0)
        return 0; /* an empty slice reads nothing: the input's gradient stays zero */
    int32_t t = g;
    for (int d = 0; d < cur.rank; d++) {
        int64_t L = cur.d[d], s = a.step[d], room = xs.d[d] - a.start[d];
        if (s <= 1 || L <= 1)
            continue;
        int64_t A = 1, B = 1;
        for (int k = 0; k < d; k++)
            A *= cur.d[k];
        for (int k = d + 1; k < cur.rank; k++)
            B *= cur.d[k];
        shp_t s4 = {.dt = cur.dt, .rank = 4, .d = {A, L, 1, B}};
        shp_t s3 = {.dt = cur.dt, .rank = 3, .d = {A, L * s, B}};
        int64_t before[4] = {0, 0, 0, 0}, after[4] = {0, 0, s - 1, 0};
        TRY(t = reshape_to(c, t, &s4));
        TRY(t = pad_zeros(c, t, before, after));
        TRY(t = reshape_to(c, t, &s3));
        if (L * s > room) {
            int64_t st[3] = {0, 0, 0};
            s3.d[1] = room;
            TRY(t = slice_of(c, t, st, &s3));
        }
        cur.d[d] = s3.d[1];
        TRY(t = reshape_to(c, t, &cur));
    }
    int64_t before[PROTO_MAX_RANK], after[PROTO_MAX_RANK];
    for (int d = 0; d < cur.rank; d++) {
        before[d] = a.start[d];
        after[d] = xs.d[d] - a.start[d] - cur.d[d];
    }
    TRY(give(c, N(i)->in[0], pad_zeros(c, t, before, after)));
    return 0;
}

static int d_flip(adctx_t *c, int32_t i, int32_t g) {
    gattr_t a = N(i)->a;
    GIVE(0, emit(c, PRIM_flip, &g, 1, &a, NULL));
    return 0;
}

/* Windows that tile the input without overlap (a pooling whose stride is its kernel) are the
 * input, reshaped and permuted: their adjoint is the reverse views, which fuse into the consumer,
 * plus zeros for rows and columns no window reached. Overlapping windows sum back (unwindow). */
static int d_window(adctx_t *c, int32_t i, int32_t g) {
    gattr_t a = {0};
    memcpy(a.win, N(i)->a.win, sizeof(a.win));
    shp_t xs = shp(c, N(i)->in[0]);
    const int64_t *w = a.win, *os = N(i)->shape;
    bool tiles = w[2] == w[0] && w[3] == w[1] && (w[4] == 1 || w[0] == 1) &&
                 (w[5] == 1 || w[1] == 1);
    if (tiles) {
        int64_t perm[6] = {0, 1, 2, 4, 3, 5}, before[4] = {0}, after[4] = {0, 0, 0, 0};
        shp_t ts = {.dt = xs.dt, .rank = 4, .d = {os[0], os[1], os[2] * w[0], os[3] * w[1]}};
        after[2] = xs.d[2] - ts.d[2];
        after[3] = xs.d[3] - ts.d[3];
        int32_t t;
        TRY(t = permute_by(c, g, 6, perm));
        TRY(t = reshape_to(c, t, &ts));
        GIVE(0, pad_zeros(c, t, before, after));
        return 0;
    }
    GIVE(0, emit(c, PRIM_unwindow, &g, 1, &a, &xs));
    return 0;
}

static int d_unwindow(adctx_t *c, int32_t i, int32_t g) { /* and back again */
    gattr_t a = {0};
    memcpy(a.win, N(i)->a.win, sizeof(a.win));
    GIVE(0, emit(c, PRIM_window, &g, 1, &a, NULL));
    return 0;
}

static int d_pad(adctx_t *c, int32_t i, int32_t g) { /* the part that was the input */
    const gattr_t a = N(i)->a;
    shp_t xs = shp(c, N(i)->in[0]);
    for (int d = 0; d < xs.rank; d++)
        if (a.start[d] < 0 || a.stop[d] < 0)
            return proto_fail(c->err, PG_EINTERNAL, "node %d (%s): no gradient rule for a "
                                                    "cropping pad",
                              (int)c->g->wire, c->g->wire_op);
    GIVE(0, slice_of(c, g, a.start, &xs));
    return 0;
}

static int d_cat(adctx_t *c, int32_t i, int32_t g) { /* each input's own stretch */
    int64_t dim = N(i)->a.dims[0], pos = 0;
    for (int k = 0; k < N(i)->nin; k++) {
        shp_t xs = shp(c, N(i)->in[k]);
        int64_t st[PROTO_MAX_RANK] = {0};
        st[dim] = pos;
        pos += xs.d[dim];
        if (numel(&xs) > 0)
            GIVE(k, slice_of(c, g, st, &xs));
    }
    return 0;
}

/* ---- linear algebra and indexing ---- */

static int d_matmul(adctx_t *c, int32_t i, int32_t g) { /* g b^T and a^T g */
    int32_t t;
    if (wants(c, i, 0)) {
        TRY(t = transpose(c, N(i)->in[1]));
        TRY(give(c, N(i)->in[0], op2(c, PRIM_matmul, g, t)));
    }
    if (wants(c, i, 1)) {
        TRY(t = transpose(c, N(i)->in[0]));
        TRY(give(c, N(i)->in[1], op2(c, PRIM_matmul, t, g)));
    }
    return 0;
}

/* g added back at the positions the index read: scatter_add into zeros of x's shape. */
static int32_t scatter_zeros(adctx_t *c, int32_t x, int32_t idx, int32_t src, int64_t dim) {
    int32_t in[3];
    TRY(in[0] = cst(c, 0.0, x));
    in[1] = idx;
    in[2] = src;
    gattr_t a = {.ndims = 1, .dims = {dim}};
    return emit(c, PRIM_scatter_add, in, 3, &a, NULL);
}

static int d_gather(adctx_t *c, int32_t i, int32_t g) {
    GIVE(0, scatter_zeros(c, N(i)->in[0], N(i)->in[1], g, N(i)->a.dims[0]));
    return 0;
}

static int d_index_select(adctx_t *c, int32_t i, int32_t g) {
    if (!wants(c, i, 0))
        return 0;
    int64_t dim = N(i)->a.dims[0];
    shp_t gs = shp(c, g), is = {.dt = PG_INT64, .rank = gs.rank};
    for (int d = 0; d < gs.rank; d++)
        is.d[d] = d == dim ? gs.d[d] : 1;
    int32_t idx;
    TRY(idx = reshape_to(c, N(i)->in[1], &is));
    is.dt = PG_INT64;
    memcpy(is.d, gs.d, sizeof(is.d));
    TRY(idx = expand_to(c, idx, &is));
    TRY(give(c, N(i)->in[0], scatter_zeros(c, N(i)->in[0], idx, g, dim)));
    return 0;
}

static int d_scatter_add(adctx_t *c, int32_t i, int32_t g) { /* base: g; src: g where it went */
    GIVE(0, g);
    if (wants(c, i, 2)) {
        int32_t in[2] = {g, N(i)->in[1]};
        gattr_t a = {.ndims = 1, .dims = {N(i)->a.dims[0]}};
        TRY(give(c, N(i)->in[2], emit(c, PRIM_gather, in, 2, &a, NULL)));
    }
    return 0;
}

static const ad_rule_fn rules[] = {
#define PG_PRIM(name, nin, kind) [PRIM_##name] = d_##name,
#include "../../kernels/ops.def"
#undef PG_PRIM
};
static_assert(sizeof(rules) / sizeof(rules[0]) == PRIM_COUNT, "a primitive has no gradient rule");

/* =============================================================================================
 * The sweep
 * =========================================================================================== */

const ad_sweep_t *ad_cache_find(const ad_cache_t *c, int64_t k0, int64_t k1) {
    for (int k = 0; k < c->n; k++)
        if (c->s[k].key[0] == k0 && c->s[k].key[1] == k1)
            return &c->s[k];
    return NULL;
}

void ad_cache_free(ad_cache_t *c) {
    for (int k = 0; k < c->n; k++)
        pg_free(c->s[k].adj);
    pg_free(c->s);
    memset(c, 0, sizeof(*c));
}

const ad_sweep_t *ad_backward(graph_t *g, ad_cache_t *cache, int64_t k0, int64_t k1, int32_t y,
                              int32_t seed, const int32_t *wanted, int nwanted,
                              proto_err_t *err) {
    const ad_sweep_t *out = NULL;
    size_t n = (size_t)y + 1;
    adctx_t c = {.g = g, .err = err};
    c.want = pg_calloc_array(n, sizeof(bool));
    c.adj = pg_calloc_array(n, sizeof(int32_t));
    if (!c.want || !c.adj) {
        proto_fail(err, PG_EOUT_OF_MEMORY, "node %d (%s): no memory for the gradient",
                   (int)g->wire, g->wire_op);
        goto out_free;
    }
    if (cache->n == cache->cap) {
        int cap = cache->cap ? cache->cap * 2 : 4;
        ad_sweep_t *s = pg_realloc_array(cache->s, (size_t)cap, sizeof(*s));
        if (!s) {
            proto_fail(err, PG_EOUT_OF_MEMORY, "node %d (%s): no memory for the gradient",
                       (int)g->wire, g->wire_op);
            goto out_free;
        }
        cache->s = s;
        cache->cap = cap;
    }

    /* Forward: which nodes depend on a wanted x through float values and no `nograd`. */
    int32_t lo = y + 1;
    for (int k = 0; k < nwanted; k++)
        if (wanted[k] >= 0 && wanted[k] <= y) {
            c.want[wanted[k]] = is_float(g->nodes[wanted[k]].dtype);
            lo = wanted[k] < lo ? wanted[k] : lo;
        }
    for (int32_t i = lo; i <= y; i++) {
        const gnode_t *nd = &g->nodes[i];
        if (c.want[i] || nd->nograd || !is_float(nd->dtype))
            continue;
        for (int32_t k = 0; k < nd->nin && !c.want[i]; k++)
            c.want[i] = c.want[nd->in[k]];
    }

    /* Backward: from y down to the lowest wanted x, each node with an adjoint gives to its
     * inputs. Every reader of node i has a higher index, so adj[i] is complete when read. */
    for (size_t i = 0; i < n; i++)
        c.adj[i] = -1;
    if (c.want[y])
        c.adj[y] = seed;
    for (int32_t i = y; i >= lo; i--) {
        if (c.adj[i] < 0 || g->nodes[i].nograd)
            continue;
        bool any = false;
        for (int32_t k = 0; k < g->nodes[i].nin; k++)
            any = any || c.want[g->nodes[i].in[k]];
        if (any && rules[g->nodes[i].op](&c, i, c.adj[i]) < 0)
            goto out_free;
    }

    ad_sweep_t *s = &cache->s[cache->n++];
    s->key[0] = k0;
    s->key[1] = k1;
    s->adj = c.adj;
    s->n = (int32_t)n;
    c.adj = NULL;
    out = s;
out_free:
    pg_free(c.adj);
    pg_free(c.want);
    return out;
}
