/*
 * elementwise.c - unary, binary and where primitives: out[i] = f(inputs at i).
 *
 * The builder has already expanded every input to the output's shape (broadcast axes are stride-0
 * views) and cast it to the dtype the op computes in, so one loop fits all: walk the output in C
 * order, follow each input's strides, compute one element.
 *
 * Floats compute in double, then round to the output dtype once. For float32 that is exactly
 * IEEE float arithmetic for + - * / and sqrt (double has more than twice float's precision, so
 * rounding twice cannot differ). float32 exp, log, tanh, sigmoid, silu and gelu are the
 * exceptions: they use kernels/pg_math.h (within a few ulp), the functions every generated
 * kernel uses, because a libm call per element would make compiled kernels slow and an oracle
 * that computes differently could not check them bit for bit. Integers compute in int64 with wrapping
 * (unsigned) arithmetic, like torch; an int32 result keeps the low 32 bits, which is the same as
 * computing in int32 with wrapping. Bool computes on the integer path as 0 and 1.
 */
#include "ref_impl.h"

#include "../pg_math.h"

/* =============================================================================================
 * Scalar functions
 * =========================================================================================== */

/* Returns true for unary ops that are only defined on floats (the builder casts ints). */
static bool unary_needs_float(prim_t op) {
    switch (op) {
    case PRIM_exp: case PRIM_log: case PRIM_sqrt: case PRIM_rsqrt: case PRIM_sin: case PRIM_cos:
    case PRIM_tanh: case PRIM_sigmoid: case PRIM_gelu: case PRIM_gelu_tanh: case PRIM_silu:
    case PRIM_reciprocal: case PRIM_erf:
        return true;
    default:
        return false;
    }
}

static double unary_f(prim_t op, double x) {
    switch (op) {
    case PRIM_neg: return -x;
    case PRIM_abs: return fabs(x);
    case PRIM_exp: return exp(x);
    case PRIM_log: return log(x);
    case PRIM_sqrt: return sqrt(x);
    case PRIM_rsqrt: return 1.0 / sqrt(x);
    case PRIM_sin: return sin(x);
    case PRIM_cos: return cos(x);
    case PRIM_tanh: return tanh(x);
    case PRIM_sigmoid: return 1.0 / (1.0 + exp(-x));
    case PRIM_relu: return isnan(x) ? x : (x > 0 ? x : 0.0); /* torch keeps NaN */
    case PRIM_gelu: return 0.5 * x * (1.0 + erf(x * 0.70710678118654752440));
    case PRIM_gelu_tanh: {
        const double k = 0.79788456080286535588; /* sqrt(2 / pi) */
        return 0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x)));
    }
    case PRIM_silu: return x / (1.0 + exp(-x));
    case PRIM_reciprocal: return 1.0 / x;
    case PRIM_erf: return erf(x); /* libm, in double for float32 too: generated kernels call
                                   * the same function (render_c.c), so both agree */
    case PRIM_square: return x * x;
    case PRIM_sign: return isnan(x) ? x : (double)((x > 0) - (x < 0));
    case PRIM_logical_not: return x == 0;
    default: return x; /* cast: the store converts */
    }
}

/* float32 exp, log, tanh and the activations built on exp: kernels/pg_math.h's vectorizable
 * versions, which generated kernels call too (render_c.c rc_fast_f32), so both agree bit for
 * bit. Other float32 ops compute in double: exact for + - * / sqrt, and cheap enough elsewhere. */
static bool unary_fast_f32(prim_t op) {
    switch (op) {
    case PRIM_exp: case PRIM_log: case PRIM_tanh: case PRIM_sigmoid: case PRIM_silu:
    case PRIM_gelu: case PRIM_gelu_tanh:
        return true;
    default:
        return false;
    }
}

static float unary_f32(prim_t op, float x) {
    switch (op) {
    case PRIM_exp: return pg_expf(x);
    case PRIM_log: return pg_logf(x);
    case PRIM_tanh: return pg_tanhf(x);
    case PRIM_sigmoid: return pg_sigmoidf(x);
    case PRIM_silu: return pg_siluf(x);
    case PRIM_gelu: return pg_geluf(x);
    default: return pg_gelu_tanhf(x);
    }
}

static int64_t unary_i(prim_t op, int64_t x) {
    uint64_t u = (uint64_t)x;
    switch (op) {
    case PRIM_neg: return (int64_t)(0 - u);
    case PRIM_abs: return x < 0 ? (int64_t)(0 - u) : x;
    case PRIM_relu: return x > 0 ? x : 0;
    case PRIM_square: return (int64_t)(u * u);
    case PRIM_sign: return (x > 0) - (x < 0);
    case PRIM_logical_not: return x == 0;
    default: return x; /* cast: the store converts */
    }
}

/* Integer power by squaring, wrapping like torch. A negative exponent gives 0 except for bases
 * 1 and -1 (whose powers stay integers). */
static int64_t ipow(int64_t base, int64_t e) {
    if (e < 0)
        return base == 1 ? 1 : base == -1 ? ((e & 1) ? -1 : 1) : 0;
    uint64_t r = 1, b = (uint64_t)base;
    for (uint64_t k = (uint64_t)e; k; k >>= 1) {
        if (k & 1)
            r *= b;
        b *= b;
    }
    return (int64_t)r;
}

static double binary_f(prim_t op, double a, double b) {
    switch (op) {
    case PRIM_add: return a + b;
    case PRIM_sub: return a - b;
    case PRIM_mul: return a * b;
    case PRIM_div: return a / b;
    case PRIM_pow: return pow(a, b);
    case PRIM_maximum: return isnan(a) || isnan(b) ? a + b : (a > b ? a : b);
    case PRIM_minimum: return isnan(a) || isnan(b) ? a + b : (a < b ? a : b);
    case PRIM_eq: return a == b;
    case PRIM_ne: return a != b;
    case PRIM_lt: return a < b;
    case PRIM_le: return a <= b;
    case PRIM_gt: return a > b;
    case PRIM_ge: return a >= b;
    case PRIM_logical_and: return a != 0 && b != 0;
    case PRIM_logical_or: return a != 0 || b != 0;
    default: return 0;
    }
}

static int64_t binary_i(prim_t op, int64_t a, int64_t b) {
    switch (op) {
    case PRIM_add: return (int64_t)((uint64_t)a + (uint64_t)b);
    case PRIM_sub: return (int64_t)((uint64_t)a - (uint64_t)b);
    case PRIM_mul: return (int64_t)((uint64_t)a * (uint64_t)b);
    case PRIM_pow: return ipow(a, b);
    case PRIM_maximum: return a > b ? a : b;
    case PRIM_minimum: return a < b ? a : b;
    case PRIM_eq: return a == b;
    case PRIM_ne: return a != b;
    case PRIM_lt: return a < b;
    case PRIM_le: return a <= b;
    case PRIM_gt: return a > b;
    case PRIM_ge: return a >= b;
    case PRIM_logical_and: return a != 0 && b != 0;
    case PRIM_logical_or: return a != 0 || b != 0;
    default: return 0;
    }
}

/* =============================================================================================
 * Loops
 * =========================================================================================== */

typedef struct {
    prim_t op;
    const ref_view_t *in[3]; /* inputs, already of the output's shape */
    int nin;
    ref_view_t *out;
} ew_ctx_t;

/* Starts an iterator over the output at linear position begin, following every input. */
static void ew_iter(const ew_ctx_t *c, ref__iter_t *it, uint64_t begin) {
    ref__iter_init(it, c->out->rank, c->out->shape);
    for (int k = 0; k < c->nin; k++)
        ref__iter_add(it, c->in[k]->off, c->in[k]->strides);
    ref__iter_seek(it, begin);
}

static void unary_chunk(void *arg, uint64_t begin, uint64_t end) {
    const ew_ctx_t *c = arg;
    const ref_view_t *x = c->in[0];
    const uint8_t *xd = ref__data(x);
    uint8_t *od = ref__data(c->out);
    pg_dtype_t odt = c->out->dtype;
    ref__iter_t it;
    ew_iter(c, &it, begin);
    if (x->dtype == PG_FLOAT32 && unary_fast_f32(c->op)) {
        for (uint64_t j = begin; j < end; j++, ref__iter_next(&it))
            ref__st_f(od, odt, (int64_t)j,
                      unary_f32(c->op, (float)ref__ld_f(xd, x->dtype, it.off[0])));
    } else if (ref__is_float(x->dtype)) {
        for (uint64_t j = begin; j < end; j++, ref__iter_next(&it))
            ref__st_f(od, odt, (int64_t)j, unary_f(c->op, ref__ld_f(xd, x->dtype, it.off[0])));
    } else {
        for (uint64_t j = begin; j < end; j++, ref__iter_next(&it))
            ref__st_i(od, odt, (int64_t)j, unary_i(c->op, ref__ld_i(xd, x->dtype, it.off[0])));
    }
}

static void binary_chunk(void *arg, uint64_t begin, uint64_t end) {
    const ew_ctx_t *c = arg;
    const ref_view_t *a = c->in[0], *b = c->in[1];
    const uint8_t *ad = ref__data(a), *bd = ref__data(b);
    uint8_t *od = ref__data(c->out);
    pg_dtype_t odt = c->out->dtype;
    ref__iter_t it;
    ew_iter(c, &it, begin);
    if (ref__is_float(a->dtype)) {
        for (uint64_t j = begin; j < end; j++, ref__iter_next(&it))
            ref__st_f(od, odt, (int64_t)j,
                      binary_f(c->op, ref__ld_f(ad, a->dtype, it.off[0]),
                               ref__ld_f(bd, b->dtype, it.off[1])));
    } else {
        for (uint64_t j = begin; j < end; j++, ref__iter_next(&it))
            ref__st_i(od, odt, (int64_t)j,
                      binary_i(c->op, ref__ld_i(ad, a->dtype, it.off[0]),
                               ref__ld_i(bd, b->dtype, it.off[1])));
    }
}

static void where_chunk(void *arg, uint64_t begin, uint64_t end) {
    const ew_ctx_t *c = arg;
    const ref_view_t *cond = c->in[0];
    const uint8_t *cd = ref__data(cond), *ad = ref__data(c->in[1]), *bd = ref__data(c->in[2]);
    uint8_t *od = ref__data(c->out);
    size_t size = proto_dtype_size(c->out->dtype);
    ref__iter_t it;
    ew_iter(c, &it, begin);
    for (uint64_t j = begin; j < end; j++, ref__iter_next(&it)) {
        if (ref__ld_b(cd, cond->dtype, it.off[0]))
            ref__mov(od, (int64_t)j, ad, it.off[1], size);
        else
            ref__mov(od, (int64_t)j, bd, it.off[2], size);
    }
}

/* Returns true when v has exactly the node's shape (what the builder's expand guarantees). */
static bool same_shape(const ref_view_t *v, const gnode_t *n) {
    if (v->rank != n->rank)
        return false;
    for (int d = 0; d < n->rank; d++)
        if (v->shape[d] != n->shape[d])
            return false;
    return true;
}

/* Checks the inputs' shapes, allocates the output and runs fn over it. */
static int ew_run(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                  ref__chunk_fn fn, uint64_t cost, proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    ew_ctx_t c = {.op = n->op, .nin = n->nin, .out = out};
    for (int k = 0; k < n->nin; k++) {
        c.in[k] = &vals[n->in[k]];
        if (!same_shape(c.in[k], n))
            return ref__bad_node(g, i, "input not expanded to the output shape", err);
    }
    int rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    ref__parallel_for(n->numel, cost, fn, &c);
    return 0;
}

int ref__unary(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
               proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    if (unary_needs_float(n->op) && !ref__is_float(vals[n->in[0]].dtype))
        return ref__bad_node(g, i, "a float-only op on an integer input", err);
    return ew_run(g, i, vals, out, unary_chunk, unary_needs_float(n->op) ? 8 : 1, err);
}

int ref__binary(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const ref_view_t *a = &vals[n->in[0]], *b = &vals[n->in[1]];
    if (a->dtype != b->dtype)
        return ref__bad_node(g, i, "inputs of different dtypes", err);
    if (n->op == PRIM_div && !ref__is_float(a->dtype))
        return ref__bad_node(g, i, "integer division", err);
    return ew_run(g, i, vals, out, binary_chunk, n->op == PRIM_pow ? 8 : 1, err);
}

int ref__where(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
               proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    if (vals[n->in[1]].dtype != n->dtype || vals[n->in[2]].dtype != n->dtype)
        return ref__bad_node(g, i, "branches of a different dtype than the output", err);
    return ew_run(g, i, vals, out, where_chunk, 1, err);
}
