/*
 * lower.c - the lowering pass: request nodes (PyTorch-level ops) become primitive nodes.
 *
 * Each request node is decoded here (its op, its inputs, its attributes, all checked) and handed
 * to one small rule that emits primitives through graph_add(). The rules are where PyTorch's
 * conventions live, so that the primitives (ops.def) stay few and simple:
 *
 *   - broadcasting and type promotion: binary() expands and casts both sides explicitly;
 *   - negative axes, Python slices, default attributes: normalized before emitting;
 *   - composite ops are spelled out in primitives, e.g.
 *
 *       before:  n3 = softmax(n2, dim=1)
 *       after:   m  = max(n2, dims=[1], keepdim)      e = exp(sub(n2, expand(m)))
 *                s  = sum(e, dims=[1], keepdim)       n3 = div(e, expand(s))
 *
 * Later passes (and the interpreter) therefore see only ops.def primitives, with inputs whose
 * shapes and dtypes already agree.
 */
#include "lower.h"

#include "../mem.h"
#include "autodiff.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* A `grad` node of the request, found by the scan that the first `grad` rule runs. */
typedef struct {
    int64_t y, x, gy;           /* request node indices of its inputs (gy: -1 when absent) */
} gref_t;

/* What the `grad` rules share while one request is lowered. */
typedef struct {
    ad_cache_t cache;           /* the reverse sweeps done so far, by (y, gy) */
    gref_t *refs;               /* every `grad` node of the request (owned) */
    int nrefs;
    bool scanned;               /* refs is filled */
} lad_t;

/* What a rule sees: the graph, the request node being lowered, its inputs as primitive ids. */
typedef struct {
    graph_t *g;
    const sess_t *sess;
    const msgpack_object *node; /* the request node's map */
    const int32_t *in;          /* its inputs, as primitive node ids */
    int nin;
    int variant;                /* the rule's own selector from the op table (e.g. which prim) */
    proto_err_t *err;
    lower_assigns_t *assigns;   /* where `assign` nodes are recorded */
    const msgpack_object *nodes; /* the whole request's node array (for `grad`) */
    const int32_t *map;         /* request node -> primitive, for the nodes lowered so far */
    lad_t *ad;                  /* `grad` state of this request */
} lctx_t;

typedef int32_t (*rule_fn)(lctx_t *c);

/* Fails with "node W (op): message" like graph_add does. */
static int32_t fail(lctx_t *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int32_t fail(lctx_t *c, int code, const char *fmt, ...) {
    char msg[PROTO_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    proto_fail(c->err, code, "node %d (%s): %s", (int)c->g->wire, c->g->wire_op, msg);
    return -1;
}

#define N(id) (&c->g->nodes[id])
#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((x) < 0)                                                                               \
            return -1;                                                                             \
    } while (0)

static bool is_float(pg_dtype_t t) { return t == PG_FLOAT32 || t == PG_FLOAT64; }

/* =============================================================================================
 * Attributes
 * =========================================================================================== */

static const msgpack_object *attr(lctx_t *c, const char *name) {
    const msgpack_object *o = proto_find(c->node, name);
    return o && o->type != MSGPACK_OBJECT_NIL ? o : NULL;
}

static bool obj_int(const msgpack_object *o, int64_t *v) {
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX)
        *v = (int64_t)o->via.u64;
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *v = o->via.i64;
    else
        return false;
    return true;
}

/* An int attribute; def when absent (required when def_ok is false). */
static int attr_int(lctx_t *c, const char *name, bool def_ok, int64_t def, int64_t *v) {
    const msgpack_object *o = attr(c, name);
    if (!o) {
        if (!def_ok)
            return fail(c, PG_EBAD_REQUEST, "missing attribute '%s'", name);
        *v = def;
        return 0;
    }
    if (!obj_int(o, v))
        return fail(c, PG_EBAD_REQUEST, "attribute '%s' must be an int", name);
    return 0;
}

static int attr_num(lctx_t *c, const char *name, bool def_ok, double def, double *v) {
    const msgpack_object *o = attr(c, name);
    int64_t i = 0;
    if (!o) {
        if (!def_ok)
            return fail(c, PG_EBAD_REQUEST, "missing attribute '%s'", name);
        *v = def;
    } else if (obj_int(o, &i)) {
        *v = (double)i;
    } else if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64) {
        *v = o->via.f64;
    } else if (o->type == MSGPACK_OBJECT_BOOLEAN) {
        *v = o->via.boolean;
    } else {
        return fail(c, PG_EBAD_REQUEST, "attribute '%s' must be a number", name);
    }
    return 0;
}

static int attr_bool(lctx_t *c, const char *name, bool def, bool *v) {
    const msgpack_object *o = attr(c, name);
    if (!o) {
        *v = def;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return fail(c, PG_EBAD_REQUEST, "attribute '%s' must be a bool", name);
    *v = o->via.boolean;
    return 0;
}

/* An int list (an int alone counts as a list of `repeat` copies of it); *n gets the length. */
static int attr_ints(lctx_t *c, const char *name, int64_t *out, int max, int *n, int repeat) {
    const msgpack_object *o = attr(c, name);
    if (!o)
        return fail(c, PG_EBAD_REQUEST, "missing attribute '%s'", name);
    int64_t v = 0;
    if (repeat > 0 && obj_int(o, &v)) {
        for (int k = 0; k < repeat; k++)
            out[k] = v;
        *n = repeat;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size > (uint32_t)max &&
        strcmp(name, "shape") == 0)
        return fail(c, PG_EBAD_SHAPE, "a shape of rank %u is over the limit of %d",
                    o->via.array.size, max);
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > (uint32_t)max)
        return fail(c, PG_EBAD_REQUEST, "attribute '%s' must be a list of at most %d ints", name,
                    max);
    for (uint32_t k = 0; k < o->via.array.size; k++)
        if (!obj_int(&o->via.array.ptr[k], &out[k]))
            return fail(c, PG_EBAD_REQUEST, "attribute '%s': item %u must be an int", name, k);
    *n = (int)o->via.array.size;
    return 0;
}

static int attr_dtype(lctx_t *c, const char *name, pg_dtype_t *out) {
    proto_err_t e;
    int rc = proto_get_dtype(c->node, name, out, &e);
    if (rc)
        return fail(c, -rc, "attribute %s", e.message);
    return 0;
}

/* Normalizes an axis (negative counts from the end) against rank; rank 0 accepts 0 and -1. */
static int axis(lctx_t *c, int64_t d, int rank, int64_t *out) {
    int r = rank ? rank : 1;
    if (d < -r || d >= r)
        return fail(c, PG_EBAD_REQUEST, "dim %lld is out of range for a tensor of rank %d",
                    (long long)d, rank);
    *out = d < 0 ? d + r : d;
    return 0;
}

/* =============================================================================================
 * Emitting primitives
 * =========================================================================================== */

static int32_t prim(lctx_t *c, prim_t op, const int32_t *in, int nin, const gattr_t *a) {
    return graph_add(c->g, op, in, nin, a, PG_FLOAT32, 0, NULL, NULL, c->err);
}

static int32_t prim1(lctx_t *c, prim_t op, int32_t x) { return prim(c, op, &x, 1, NULL); }

static int32_t shaped(lctx_t *c, prim_t op, int32_t x, const gattr_t *a, int rank,
                      const int64_t *shape) {
    return graph_add(c->g, op, &x, 1, a, PG_FLOAT32, rank, shape, NULL, c->err);
}

/* A scalar (rank 0) of dtype; weak marks a Python number for type promotion. */
static int32_t scalar(lctx_t *c, double value, pg_dtype_t dtype, bool weak) {
    gattr_t a = {.value = value};
    int32_t id = graph_add(c->g, PRIM_full, NULL, 0, &a, dtype, 0, NULL, NULL, c->err);
    if (id >= 0)
        N(id)->weak = weak;
    return id;
}

/* Folds cast(full(v)) into full(v') at build time, for the scalars that promotion casts all the
 * time (Python numbers arrive as float64, int64 or bool): one constant instead of a constant and
 * a cast kernel. v' is what the cast primitive would compute (ops.def: float -> int truncates
 * toward zero, NaN and infinities give 0, out-of-range clamps; -> bool is v != 0). */
static bool fold_cast(const gnode_t *x, pg_dtype_t dt, double *out) {
    if (x->op != PRIM_full || x->rank != 0 ||
        (x->dtype != PG_FLOAT64 && x->dtype != PG_INT64 && x->dtype != PG_BOOL))
        return false;
    double v = x->a.value;
    switch (dt) {
    case PG_FLOAT32: *out = (double)(float)v; return true;
    case PG_FLOAT64: *out = v; return true;
    case PG_BOOL: *out = v != 0; return true;
    case PG_INT32:
    case PG_INT64: {
        double lo = dt == PG_INT32 ? -2147483648.0 : -9223372036854775808.0;
        double hi = dt == PG_INT32 ? 2147483647.0 : 9223372036854775807.0;
        if (!isfinite(v))
            *out = 0;
        else
            *out = v < lo ? lo : v > hi ? hi : trunc(v);
        return true;
    }
    default: return false;
    }
}

static int32_t cast(lctx_t *c, int32_t x, pg_dtype_t dt) {
    if (N(x)->dtype == dt)
        return x;
    double v;
    if (fold_cast(N(x), dt, &v)) {
        gattr_t f = {.value = v};
        bool weak = N(x)->weak; /* a Python number stays one: a learning rate cast to float32
                                 * is still read at run time, not baked into kernels */
        int32_t id = graph_add(c->g, PRIM_full, NULL, 0, &f, dt, 0, NULL, NULL, c->err);
        if (id >= 0)
            N(id)->weak = weak;
        return id;
    }
    gattr_t a = {.dtype = dt};
    return prim(c, PRIM_cast, &x, 1, &a);
}

static int32_t reshape(lctx_t *c, int32_t x, int rank, const int64_t *shape) {
    if (N(x)->rank == rank && !memcmp(N(x)->shape, shape, sizeof(int64_t) * (size_t)rank))
        return x;
    return shaped(c, PRIM_reshape, x, NULL, rank, shape);
}

static int32_t expand(lctx_t *c, int32_t x, int rank, const int64_t *shape) {
    if (N(x)->rank == rank && !memcmp(N(x)->shape, shape, sizeof(int64_t) * (size_t)rank))
        return x;
    return shaped(c, PRIM_expand, x, NULL, rank, shape);
}

static int32_t permute(lctx_t *c, int32_t x, int rank, const int64_t *perm) {
    gattr_t a = {.ndims = rank};
    memcpy(a.dims, perm, sizeof(int64_t) * (size_t)rank);
    return prim(c, PRIM_permute, &x, 1, &a);
}

/* Inserts a size-1 axis at position d (0..rank). */
static int32_t unsqueeze(lctx_t *c, int32_t x, int d) {
    int64_t s[PROTO_MAX_RANK];
    const gnode_t *n = N(x);
    if (n->rank >= PROTO_MAX_RANK)
        return fail(c, PG_EBAD_SHAPE, "the result would have rank over %d", PROTO_MAX_RANK);
    for (int k = 0, j = 0; k <= n->rank; k++)
        s[k] = k == d ? 1 : n->shape[j++];
    return reshape(c, x, n->rank + 1, s);
}

/* Numpy broadcasting of two shapes into out; false when they do not broadcast. */
static bool broadcast(int ra, const int64_t *a, int rb, const int64_t *b, int *ro, int64_t *out) {
    int r = ra > rb ? ra : rb;
    for (int k = 0; k < r; k++) {
        int64_t x = k < r - ra ? 1 : a[k - (r - ra)], y = k < r - rb ? 1 : b[k - (r - rb)];
        if (x != y && x != 1 && y != 1)
            return false;
        out[k] = x == 1 ? y : x;
    }
    *ro = r;
    return true;
}

/* PyTorch's promotion order: bool < int32 < int64 < float32 < float64. */
static int order(pg_dtype_t t) {
    switch (t) {
    case PG_BOOL: return 0;
    case PG_INT32: return 1;
    case PG_INT64: return 2;
    case PG_FLOAT32: return 3;
    default: return 4;
    }
}

static int category(pg_dtype_t t) { return t == PG_BOOL ? 0 : is_float(t) ? 2 : 1; }

/* PyTorch ranks operands in three priority levels for promotion: tensors with dims (0), zero-dim
 * tensors (1), Python numbers (2). The highest-priority level decides the dtype unless a lower
 * level holds a higher category (bool < int < float): then that level's dtype wins, a Python
 * number standing for the default dtype of its category (float32, int64). */
static int level(const gnode_t *n) { return n->weak ? 2 : n->rank == 0 ? 1 : 0; }

static pg_dtype_t promote(const gnode_t *a, const gnode_t *b) {
    int la = level(a), lb = level(b);
    if (la == lb)
        return order(a->dtype) >= order(b->dtype) ? a->dtype : b->dtype;
    const gnode_t *strong = la < lb ? a : b, *weak = la < lb ? b : a;
    if (category(weak->dtype) <= category(strong->dtype))
        return strong->dtype;
    if (level(weak) == 1)
        return weak->dtype;
    return category(weak->dtype) == 2 ? PG_FLOAT32 : PG_INT64;
}

/* A binary primitive with broadcasting and promotion; div promotes integers to float32. */
static int32_t binary(lctx_t *c, prim_t op, int32_t a, int32_t b) {
    int r = 0;
    int64_t s[PROTO_MAX_RANK];
    char s1[160], s2[160];
    const gnode_t *na = N(a), *nb = N(b);
    if (!broadcast(na->rank, na->shape, nb->rank, nb->shape, &r, s))
        return fail(c, PG_EBAD_SHAPE, "shapes %s and %s do not broadcast",
                    graph_shape_str(s1, sizeof(s1), na->rank, na->shape),
                    graph_shape_str(s2, sizeof(s2), nb->rank, nb->shape));
    bool weak = na->weak && nb->weak;
    pg_dtype_t dt = promote(na, nb);
    if (op == PRIM_div && !is_float(dt))
        dt = PG_FLOAT32;
    if (op == PRIM_logical_and || op == PRIM_logical_or)
        dt = PG_BOOL;
    TRY(a = cast(c, a, dt));
    TRY(b = cast(c, b, dt));
    TRY(a = expand(c, a, r, s));
    TRY(b = expand(c, b, r, s));
    int32_t in[2] = {a, b};
    int32_t id = prim(c, op, in, 2, NULL);
    if (id >= 0)
        N(id)->weak = weak;
    return id;
}

/* A float unary primitive: integer and bool inputs compute in float32, as in PyTorch. */
static int32_t unary_float(lctx_t *c, prim_t op, int32_t x) {
    if (!is_float(N(x)->dtype))
        TRY(x = cast(c, x, PG_FLOAT32));
    return prim1(c, op, x);
}

/* A reduction over the listed (normalized, any order) axes. */
static int32_t reduce(lctx_t *c, prim_t op, int32_t x, const int64_t *dims, int nd, bool keep) {
    gattr_t a = {.keepdim = keep};
    bool seen[PROTO_MAX_RANK] = {false};
    for (int k = 0; k < nd; k++) {
        if (seen[dims[k]])
            return fail(c, PG_EBAD_REQUEST, "dim %lld appears twice", (long long)dims[k]);
        seen[dims[k]] = true;
    }
    for (int d = 0; d < N(x)->rank; d++)
        if (seen[d])
            a.dims[a.ndims++] = d;
    return prim(c, op, &x, 1, &a);
}

/* Reads "dims" (absent: every axis) normalized against x's rank. */
static int reduce_dims(lctx_t *c, int32_t x, int64_t *dims, int *nd) {
    int rank = N(x)->rank;
    if (!attr(c, "dims")) {
        for (int d = 0; d < rank; d++)
            dims[d] = d;
        *nd = rank;
        return 0;
    }
    int64_t raw[PROTO_MAX_RANK];
    TRY(attr_ints(c, "dims", raw, PROTO_MAX_RANK, nd, 1));
    for (int k = 0; k < *nd; k++)
        TRY(axis(c, raw[k], rank, &dims[k]));
    if (rank == 0)
        *nd = 0; /* torch accepts dim 0 / -1 on a scalar and reduces nothing */
    return 0;
}

/* Product of x's dims listed in dims. */
static double count(lctx_t *c, int32_t x, const int64_t *dims, int nd) {
    double n = 1;
    for (int k = 0; k < nd; k++)
        n *= (double)N(x)->shape[dims[k]];
    return n;
}

/* Reshapes a keepdim result to drop the reduced axes when keepdim is false. */
static int32_t squeeze_dims(lctx_t *c, int32_t r, const int64_t *dims, int nd, bool keep) {
    if (keep)
        return r;
    bool seen[PROTO_MAX_RANK] = {false};
    for (int k = 0; k < nd; k++)
        seen[dims[k]] = true;
    int64_t s[PROTO_MAX_RANK];
    int rank = 0;
    for (int d = 0; d < N(r)->rank; d++)
        if (!seen[d])
            s[rank++] = N(r)->shape[d];
    return reshape(c, r, rank, s);
}

/* =============================================================================================
 * Rules: leaves
 * =========================================================================================== */

static int32_t r_input(lctx_t *c) {
    int64_t h = 0;
    TRY(attr_int(c, "handle", false, 0, &h));
    tensor_t *t = h > 0 ? sess_get(c->sess, (uint64_t)h) : NULL;
    if (!t) {
        fail(c, PG_EUNKNOWN_HANDLE, "handle %lld is not a tensor of this session", (long long)h);
        return -1;
    }
    return graph_add(c->g, PRIM_input, NULL, 0, NULL, t->dtype, 0, NULL, tensor_ref(t), c->err);
}

/* assign(value, handle=h): h takes value's tensor when the run commits (run.c). Nothing is
 * emitted: the node's result is the value itself, and run.c keeps it alive as an output. */
static int32_t r_assign(lctx_t *c) {
    int64_t h = 0;
    char a[160], b[160];
    TRY(attr_int(c, "handle", false, 0, &h));
    tensor_t *t = h > 0 ? sess_get(c->sess, (uint64_t)h) : NULL;
    if (!t)
        return fail(c, PG_EUNKNOWN_HANDLE, "handle %lld is not a tensor of this session",
                    (long long)h);
    const gnode_t *v = N(c->in[0]);
    if (v->rank != t->rank || memcmp(v->shape, t->shape, (size_t)t->rank * sizeof(int64_t)))
        return fail(c, PG_EBAD_SHAPE, "the value has shape %s but handle %lld holds %s",
                    graph_shape_str(a, sizeof(a), v->rank, v->shape), (long long)h,
                    graph_shape_str(b, sizeof(b), t->rank, t->shape));
    if (v->dtype != t->dtype)
        return fail(c, PG_EBAD_DTYPE, "the value is %s but handle %lld holds %s",
                    proto_dtype_name(v->dtype), (long long)h, proto_dtype_name(t->dtype));
    lower_assigns_t *as = c->assigns;
    uintptr_t prev = (uintptr_t)htab_get(&as->seen, (uint64_t)h);
    if (prev)
        return fail(c, PG_EBAD_REQUEST, "handle %lld is already assigned by node %d",
                    (long long)h, (int)(prev - 1));
    if (as->n == as->cap) {
        uint32_t cap = as->cap ? as->cap * 2 : 8;
        lower_assign_t *na = pg_calloc_array(cap, sizeof(*na));
        if (!na)
            return fail(c, PG_EOUT_OF_MEMORY, "no memory for %u assigns", cap);
        if (as->n)
            memcpy(na, as->a, as->n * sizeof(*na));
        pg_free(as->a);
        as->a = na;
        as->cap = cap;
    }
    if (htab_put(&as->seen, (uint64_t)h, (void *)(uintptr_t)(c->g->wire + 1)) != 0)
        return fail(c, PG_EOUT_OF_MEMORY, "no memory for %u assigns", as->n + 1);
    as->a[as->n++] = (lower_assign_t){(uint64_t)h, c->in[0], c->g->wire};
    return c->in[0];
}

void lower_assigns_free(lower_assigns_t *as) {
    pg_free(as->a);
    htab_free(&as->seen);
    memset(as, 0, sizeof(*as));
}

/* Reads "shape" for creation ops. */
static int shape_attr(lctx_t *c, int64_t *shape, int *rank) {
    TRY(attr_ints(c, "shape", shape, PROTO_MAX_RANK, rank, 0));
    for (int d = 0; d < *rank; d++)
        if (shape[d] < 0)
            return fail(c, PG_EBAD_SHAPE, "dim %d of 'shape' is negative", d);
    return 0;
}

/* The dtype a Python number carries before promotion: bool, int64 or float64. */
static pg_dtype_t scalar_dtype(const msgpack_object *o) {
    if (o->type == MSGPACK_OBJECT_BOOLEAN)
        return PG_BOOL;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return PG_INT64;
    return PG_FLOAT64;
}

static int32_t r_const(lctx_t *c) {
    const msgpack_object *data = attr(c, "data");
    pg_dtype_t dt;
    if (!data) {
        double v = 0;
        const msgpack_object *o = attr(c, "value");
        if (!o)
            return fail(c, PG_EBAD_REQUEST, "const needs 'data' or 'value'");
        TRY(attr_num(c, "value", false, 0, &v));
        bool weak = !attr(c, "dtype");
        if (weak)
            dt = scalar_dtype(o);
        else
            TRY(attr_dtype(c, "dtype", &dt));
        return scalar(c, v, dt, weak);
    }
    proto_err_t e;
    int64_t dims[PROTO_MAX_RANK];
    int rank = 0;
    uint64_t numel, nbytes;
    const uint8_t *p;
    size_t len = 0;
    int rc = 0;
    TRY(attr_dtype(c, "dtype", &dt));
    if ((rc = proto_get_shape(c->node, "shape", proto_dtype_size(dt), dims, &rank, &numel, &nbytes,
                              &e)) ||
        (rc = proto_get_bin(c->node, "data", &p, &len, &e)))
        return fail(c, -rc, "%s", e.message);
    if (len != nbytes)
        return fail(c, PG_EBAD_REQUEST, "'data' has %zu bytes, the shape needs %llu", len,
                    (unsigned long long)nbytes);
    tensor_t *t = tensor_new(dt, rank, dims, numel);
    if (!t)
        return fail(c, PG_EOUT_OF_MEMORY, "no memory for a %zu-byte constant", len);
    if (len)
        memcpy(t->data, p, len);
    return graph_add(c->g, PRIM_const, NULL, 0, NULL, dt, 0, NULL, t, c->err);
}

static int32_t r_full(lctx_t *c) {
    int64_t shape[PROTO_MAX_RANK];
    int rank = 0;
    double v = 0;
    pg_dtype_t dt = PG_FLOAT32;
    TRY(shape_attr(c, shape, &rank));
    TRY(attr_num(c, "value", false, 0, &v));
    const msgpack_object *o = attr(c, "value");
    if (attr(c, "dtype"))
        TRY(attr_dtype(c, "dtype", &dt));
    else if (o->type == MSGPACK_OBJECT_BOOLEAN)
        dt = PG_BOOL;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        dt = PG_INT64;
    gattr_t a = {.value = v};
    return graph_add(c->g, PRIM_full, NULL, 0, &a, dt, rank, shape, NULL, c->err);
}

static int32_t r_arange(lctx_t *c) {
    double start = 0, end = 0, step = 0;
    TRY(attr_num(c, "start", true, 0, &start));
    TRY(attr_num(c, "end", false, 0, &end));
    TRY(attr_num(c, "step", true, 1, &step));
    if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step))
        return fail(c, PG_EBAD_REQUEST, "arange needs finite start, end and a nonzero step");
    bool ints = true;
    const char *keys[3] = {"start", "end", "step"};
    for (int k = 0; k < 3; k++) {
        const msgpack_object *o = attr(c, keys[k]);
        if (o && o->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
            o->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
            ints = false;
    }
    pg_dtype_t dt = ints ? PG_INT64 : PG_FLOAT32;
    if (attr(c, "dtype"))
        TRY(attr_dtype(c, "dtype", &dt));
    double n = ceil((end - start) / step);
    if (n < 0)
        return fail(c, PG_EBAD_REQUEST, "arange from %g to %g never reaches with step %g", start,
                    end, step);
    if (n > 9.0e15)
        return fail(c, PG_ETOO_LARGE, "arange of %g elements", n);
    int64_t shape[1] = {(int64_t)n};
    gattr_t a = {.astart = start, .astep = step};
    return graph_add(c->g, PRIM_arange, NULL, 0, &a, dt, 1, shape, NULL, c->err);
}

static int32_t r_rand(lctx_t *c) {
    int64_t shape[PROTO_MAX_RANK], seed = 0, offset = 0;
    int rank = 0;
    pg_dtype_t dt = PG_FLOAT32;
    TRY(shape_attr(c, shape, &rank));
    TRY(attr_int(c, "seed", false, 0, &seed));
    TRY(attr_int(c, "offset", true, 0, &offset));
    if (attr(c, "dtype"))
        TRY(attr_dtype(c, "dtype", &dt));
    gattr_t a = {.seed = (uint64_t)seed, .offset = (uint64_t)offset};
    return graph_add(c->g, c->variant, NULL, 0, &a, dt, rank, shape, NULL, c->err);
}

/* =============================================================================================
 * Rules: elementwise
 * =========================================================================================== */

/* neg abs relu square sign keep the dtype. On bool, as in PyTorch: sign is the identity, square
 * computes in int64, and the others are errors. */
static int32_t r_unary_keep(lctx_t *c) {
    int32_t x = c->in[0];
    if (N(x)->dtype == PG_BOOL) {
        if (c->variant == PRIM_sign)
            return x;
        if (c->variant != PRIM_square)
            return fail(c, PG_EBAD_DTYPE, "%s is not defined for bool tensors", c->g->wire_op);
        TRY(x = cast(c, x, PG_INT64));
    }
    return prim1(c, c->variant, x);
}

static int32_t r_unary_float(lctx_t *c) { return unary_float(c, c->variant, c->in[0]); }

static int32_t r_gelu(lctx_t *c) {
    const msgpack_object *o = attr(c, "approximate");
    prim_t op = PRIM_gelu;
    if (o) {
        if (o->type == MSGPACK_OBJECT_STR && o->via.str.size == 4 &&
            !memcmp(o->via.str.ptr, "tanh", 4))
            op = PRIM_gelu_tanh;
        else if (!(o->type == MSGPACK_OBJECT_STR && o->via.str.size == 4 &&
                   !memcmp(o->via.str.ptr, "none", 4)))
            return fail(c, PG_EBAD_REQUEST, "attribute 'approximate' must be \"none\" or \"tanh\"");
    }
    return unary_float(c, op, c->in[0]);
}

static int32_t r_logical_not(lctx_t *c) {
    int32_t x = 0;
    TRY(x = cast(c, c->in[0], PG_BOOL));
    return prim1(c, PRIM_logical_not, x);
}

static int32_t r_cast(lctx_t *c) {
    pg_dtype_t dt;
    TRY(attr_dtype(c, "dtype", &dt));
    int32_t x = c->in[0];
    gattr_t a = {.dtype = dt};
    return prim(c, PRIM_cast, &x, 1, &a); /* always a node: a cast is a new tensor */
}

static int32_t r_binary(lctx_t *c) { return binary(c, c->variant, c->in[0], c->in[1]); }

static int32_t r_clamp(lctx_t *c) {
    int32_t x = c->in[0], s = 0;
    double v = 0;
    if (!attr(c, "min") && !attr(c, "max"))
        return fail(c, PG_EBAD_REQUEST, "clamp needs 'min' or 'max'");
    if (attr(c, "min")) {
        TRY(attr_num(c, "min", false, 0, &v));
        TRY(s = scalar(c, v, scalar_dtype(attr(c, "min")), true));
        TRY(x = binary(c, PRIM_maximum, x, s));
    }
    if (attr(c, "max")) {
        TRY(attr_num(c, "max", false, 0, &v));
        TRY(s = scalar(c, v, scalar_dtype(attr(c, "max")), true));
        TRY(x = binary(c, PRIM_minimum, x, s));
    }
    return x;
}

/* where(cond, a, b): a and b promote; all three broadcast together. */
static int32_t where3(lctx_t *c, int32_t cond, int32_t a, int32_t b) {
    int r1 = 0, r2 = 0;
    int64_t s1[PROTO_MAX_RANK], s2[PROTO_MAX_RANK];
    char t1[160], t2[160], t3[160];
    const gnode_t *nc = N(cond), *na = N(a), *nb = N(b);
    if (!broadcast(nc->rank, nc->shape, na->rank, na->shape, &r1, s1) ||
        !broadcast(r1, s1, nb->rank, nb->shape, &r2, s2))
        return fail(c, PG_EBAD_SHAPE, "shapes %s, %s and %s do not broadcast",
                    graph_shape_str(t1, sizeof(t1), nc->rank, nc->shape),
                    graph_shape_str(t2, sizeof(t2), na->rank, na->shape),
                    graph_shape_str(t3, sizeof(t3), nb->rank, nb->shape));
    pg_dtype_t dt = promote(na, nb);
    TRY(cond = cast(c, cond, PG_BOOL));
    TRY(a = cast(c, a, dt));
    TRY(b = cast(c, b, dt));
    TRY(cond = expand(c, cond, r2, s2));
    TRY(a = expand(c, a, r2, s2));
    TRY(b = expand(c, b, r2, s2));
    int32_t in[3] = {cond, a, b};
    return prim(c, PRIM_where, in, 3, NULL);
}

static int32_t r_where(lctx_t *c) { return where3(c, c->in[0], c->in[1], c->in[2]); }

static int32_t r_masked_fill(lctx_t *c) {
    int32_t x = c->in[0], v = 0;
    double value = 0;
    TRY(attr_num(c, "value", false, 0, &value));
    if (N(c->in[1])->dtype != PG_BOOL)
        return fail(c, PG_EBAD_DTYPE, "masked_fill needs a bool mask, got %s",
                    proto_dtype_name(N(c->in[1])->dtype));
    TRY(v = scalar(c, value, N(x)->dtype, false));
    int32_t out = 0;
    TRY(out = where3(c, c->in[1], v, x));
    if (N(out)->rank != N(x)->rank)
        return fail(c, PG_EBAD_SHAPE, "the mask would change the shape of the input");
    return out;
}

/* =============================================================================================
 * Rules: reductions
 * =========================================================================================== */

static int32_t r_reduce(lctx_t *c) {
    int64_t dims[PROTO_MAX_RANK];
    int nd = 0;
    bool keep = false;
    int32_t x = c->in[0];
    TRY(reduce_dims(c, x, dims, &nd));
    TRY(attr_bool(c, "keepdim", false, &keep));
    prim_t op = c->variant;
    pg_dtype_t dt = N(x)->dtype;
    if ((op == PRIM_sum || op == PRIM_prod) && (dt == PG_BOOL || dt == PG_INT32))
        TRY(x = cast(c, x, PG_INT64));
    if (op == PRIM_any || op == PRIM_all)
        TRY(x = cast(c, x, PG_BOOL));
    int32_t r = 0;
    TRY(r = reduce(c, op, x, dims, nd, keep));
    /* torch.max(x, dim) returns an index, and its gradient goes to that (first) element; amax
     * over several dims and a full max split it among ties (autodiff.c). */
    if ((op == PRIM_max || op == PRIM_min) && attr(c, "dims") && nd == 1)
        N(r)->a.first = true;
    return r;
}

static int32_t r_mean(lctx_t *c) {
    int64_t dims[PROTO_MAX_RANK];
    int nd = 0;
    bool keep = false;
    int32_t x = c->in[0], s = 0, n = 0;
    TRY(reduce_dims(c, x, dims, &nd));
    TRY(attr_bool(c, "keepdim", false, &keep));
    if (!is_float(N(x)->dtype))
        TRY(x = cast(c, x, PG_FLOAT32));
    TRY(s = reduce(c, PRIM_sum, x, dims, nd, keep));
    TRY(n = scalar(c, count(c, x, dims, nd), N(x)->dtype, false));
    return binary(c, PRIM_div, s, n);
}

/* var and std: sum((x - mean)^2) / max(n - correction, 0). */
static int32_t r_var(lctx_t *c) {
    int64_t dims[PROTO_MAX_RANK], corr = 0;
    int nd = 0;
    bool keep = false;
    int32_t x = c->in[0], s = 0, m = 0, d = 0, n = 0;
    TRY(reduce_dims(c, x, dims, &nd));
    TRY(attr_bool(c, "keepdim", false, &keep));
    TRY(attr_int(c, "correction", true, 1, &corr));
    if (!is_float(N(x)->dtype))
        TRY(x = cast(c, x, PG_FLOAT32));
    double cnt = count(c, x, dims, nd);
    TRY(s = reduce(c, PRIM_sum, x, dims, nd, true));
    TRY(n = scalar(c, cnt, N(x)->dtype, false));
    TRY(m = binary(c, PRIM_div, s, n));
    TRY(d = binary(c, PRIM_sub, x, m));
    TRY(d = prim1(c, PRIM_square, d));
    TRY(s = reduce(c, PRIM_sum, d, dims, nd, keep));
    double den = cnt - (double)corr;
    TRY(n = scalar(c, den > 0 ? den : 0, N(x)->dtype, false));
    TRY(s = binary(c, PRIM_div, s, n));
    return c->variant == PRIM_sqrt ? prim1(c, PRIM_sqrt, s) : s;
}

/* logsumexp: m + log(sum(exp(x - m))), with m = max where finite (so all -inf gives -inf). */
static int32_t logsumexp(lctx_t *c, int32_t x, const int64_t *dims, int nd, bool keep) {
    int32_t m = 0, inf = 0, absm = 0, isinf = 0, zero = 0, e = 0, s = 0;
    if (!is_float(N(x)->dtype))
        TRY(x = cast(c, x, PG_FLOAT32));
    pg_dtype_t dt = N(x)->dtype;
    if (count(c, x, dims, nd) == 0) {
        /* An empty reduction: log(sum(exp(nothing))) = log(0) = -inf, with no max to subtract. */
        TRY(e = prim1(c, PRIM_exp, x));
        TRY(s = reduce(c, PRIM_sum, e, dims, nd, keep));
        return prim1(c, PRIM_log, s);
    }
    TRY(m = reduce(c, PRIM_max, x, dims, nd, true));
    N(m)->nograd = true; /* the result does not depend on m: its gradient through m is 0 */
    TRY(absm = prim1(c, PRIM_abs, m));
    TRY(inf = scalar(c, INFINITY, dt, false));
    TRY(isinf = binary(c, PRIM_eq, absm, inf));
    TRY(zero = scalar(c, 0, dt, false));
    TRY(m = where3(c, isinf, zero, m));
    TRY(e = binary(c, PRIM_sub, x, m));
    TRY(e = prim1(c, PRIM_exp, e));
    TRY(s = reduce(c, PRIM_sum, e, dims, nd, true));
    TRY(s = prim1(c, PRIM_log, s));
    TRY(s = binary(c, PRIM_add, s, m));
    return squeeze_dims(c, s, dims, nd, keep);
}

static int32_t r_logsumexp(lctx_t *c) {
    int64_t dims[PROTO_MAX_RANK];
    int nd = 0;
    bool keep = false;
    TRY(reduce_dims(c, c->in[0], dims, &nd));
    TRY(attr_bool(c, "keepdim", false, &keep));
    return logsumexp(c, c->in[0], dims, nd, keep);
}

static int32_t r_argreduce(lctx_t *c) {
    int32_t x = c->in[0], r = 0;
    bool keep = false;
    TRY(attr_bool(c, "keepdim", false, &keep));
    gattr_t a = {.ndims = 1};
    if (!attr(c, "dim")) {
        int64_t flat[1] = {(int64_t)N(x)->numel};
        int64_t ones[PROTO_MAX_RANK];
        int rank = N(x)->rank;
        TRY(x = reshape(c, x, 1, flat));
        TRY(r = prim(c, c->variant, &x, 1, &a));
        for (int d = 0; d < rank; d++)
            ones[d] = 1;
        return keep ? reshape(c, r, rank, ones) : r;
    }
    int64_t d = 0;
    TRY(attr_int(c, "dim", false, 0, &d));
    TRY(axis(c, d, N(x)->rank, &a.dims[0]));
    if (N(x)->rank == 0) {
        int64_t one[1] = {1};
        TRY(x = reshape(c, x, 1, one));
        TRY(r = prim(c, c->variant, &x, 1, &a));
        return r;
    }
    a.keepdim = keep;
    return prim(c, c->variant, &x, 1, &a);
}

static int32_t r_cumsum(lctx_t *c) {
    int32_t x = c->in[0];
    int64_t d = 0;
    gattr_t a = {.ndims = 1};
    TRY(attr_int(c, "dim", false, 0, &d));
    TRY(axis(c, d, N(x)->rank, &a.dims[0]));
    if (N(x)->dtype == PG_BOOL || N(x)->dtype == PG_INT32)
        TRY(x = cast(c, x, PG_INT64));
    if (N(x)->rank == 0)
        return x;
    return prim(c, PRIM_cumsum, &x, 1, &a);
}

/* =============================================================================================
 * Rules: movement
 * =========================================================================================== */

static int32_t r_reshape(lctx_t *c) {
    int64_t s[PROTO_MAX_RANK];
    int rank = 0, infer = -1;
    int32_t x = c->in[0];
    TRY(attr_ints(c, "shape", s, PROTO_MAX_RANK, &rank, 0));
    uint64_t known = 1;
    for (int d = 0; d < rank; d++) {
        if (s[d] == -1 && infer < 0)
            infer = d;
        else if (s[d] < 0)
            return fail(c, PG_EBAD_SHAPE, "invalid dim %lld in the new shape", (long long)s[d]);
        else if (s[d] != 0 && known > (uint64_t)INT64_MAX / (uint64_t)s[d])
            return fail(c, PG_EBAD_SHAPE, "the new shape overflows");
        else
            known *= (uint64_t)s[d];
    }
    if (infer >= 0) {
        if (known == 0 || N(x)->numel % known)
            return fail(c, PG_EBAD_SHAPE, "cannot infer the -1 dim: %llu elements",
                        (unsigned long long)N(x)->numel);
        s[infer] = (int64_t)(N(x)->numel / known);
    }
    return shaped(c, PRIM_reshape, x, NULL, rank, s); /* graph_add checks the element count */
}

static int32_t r_permute(lctx_t *c) {
    int64_t raw[PROTO_MAX_RANK], p[PROTO_MAX_RANK];
    int n = 0;
    int32_t x = c->in[0];
    TRY(attr_ints(c, "dims", raw, PROTO_MAX_RANK, &n, 0));
    if (n != N(x)->rank)
        return fail(c, PG_EBAD_REQUEST, "permute of rank %d needs %d dims, got %d", N(x)->rank,
                    N(x)->rank, n);
    for (int k = 0; k < n; k++)
        TRY(axis(c, raw[k], n, &p[k]));
    return permute(c, x, n, p);
}

static int32_t r_expand(lctx_t *c) {
    int64_t s[PROTO_MAX_RANK];
    int rank = 0;
    int32_t x = c->in[0];
    TRY(attr_ints(c, "shape", s, PROTO_MAX_RANK, &rank, 0));
    int lead = rank - N(x)->rank;
    if (lead < 0)
        return fail(c, PG_EBAD_SHAPE, "expand to rank %d from rank %d", rank, N(x)->rank);
    for (int d = 0; d < rank; d++) {
        if (s[d] == -1 && d >= lead)
            s[d] = N(x)->shape[d - lead];
        else if (s[d] < 0)
            return fail(c, PG_EBAD_SHAPE, "invalid dim %lld in expand", (long long)s[d]);
    }
    return shaped(c, PRIM_expand, x, NULL, rank, s);
}

static int32_t r_slice(lctx_t *c) {
    int32_t x = c->in[0];
    const gnode_t *n = N(x);
    const msgpack_object *o = attr(c, "slices");
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > (uint32_t)n->rank)
        return fail(c, PG_EBAD_REQUEST, "'slices' must be a list of at most %d [start, stop, "
                                        "step] triples",
                    n->rank);
    gattr_t a = {0};
    int64_t shape[PROTO_MAX_RANK];
    for (int d = 0; d < n->rank; d++) {
        int64_t len = n->shape[d], start = 0, stop = len, step = 1;
        if ((uint32_t)d < o->via.array.size) {
            const msgpack_object *t = &o->via.array.ptr[d];
            if (t->type != MSGPACK_OBJECT_ARRAY || t->via.array.size != 3)
                return fail(c, PG_EBAD_REQUEST, "slice %d must be [start, stop, step]", d);
            const msgpack_object *v = t->via.array.ptr;
            int64_t tmp = 0;
            for (int k = 0; k < 3; k++)
                if (v[k].type != MSGPACK_OBJECT_NIL && !obj_int(&v[k], &tmp))
                    return fail(c, PG_EBAD_REQUEST, "slice %d: start, stop, step must be ints "
                                                    "or nil",
                                d);
            if (v[2].type != MSGPACK_OBJECT_NIL)
                obj_int(&v[2], &step);
            if (step <= 0)
                return fail(c, PG_EBAD_REQUEST, "slice %d: step must be positive, got %lld", d,
                            (long long)step);
            /* Python's slice.indices() for a positive step: negatives count from the end, then
             * clamp into [0, len]. */
            if (v[0].type != MSGPACK_OBJECT_NIL) {
                obj_int(&v[0], &start);
                start = start < 0 ? (start + len < 0 ? 0 : start + len) : (start > len ? len : start);
            }
            if (v[1].type != MSGPACK_OBJECT_NIL) {
                obj_int(&v[1], &stop);
                stop = stop < 0 ? (stop + len < 0 ? 0 : stop + len) : (stop > len ? len : stop);
            }
        }
        int64_t cnt = stop > start ? (stop - start + step - 1) / step : 0;
        a.start[d] = cnt ? start : 0;
        a.step[d] = step;
        shape[d] = cnt;
    }
    return shaped(c, PRIM_slice, x, &a, n->rank, shape);
}

static int32_t r_flip(lctx_t *c) {
    int64_t raw[PROTO_MAX_RANK];
    int n = 0;
    int32_t x = c->in[0];
    gattr_t a = {0};
    TRY(attr_ints(c, "dims", raw, PROTO_MAX_RANK, &n, 1));
    for (int k = 0; k < n; k++) {
        int64_t d = 0;
        TRY(axis(c, raw[k], N(x)->rank, &d));
        if (N(x)->rank > 0)
            a.dims[a.ndims++] = d;
    }
    return prim(c, PRIM_flip, &x, 1, &a);
}

/* Constant padding; pads in torch order (last dim first). */
static int32_t pad(lctx_t *c, int32_t x, const int64_t *pads, int np, double value) {
    gattr_t a = {.value = value};
    int rank = N(x)->rank;
    if (np % 2 || np / 2 > rank)
        return fail(c, PG_EBAD_REQUEST, "'pad' needs an even count of at most %d values", 2 * rank);
    for (int k = 0; k < np / 2; k++) {
        if (pads[2 * k] < 0 || pads[2 * k + 1] < 0)
            return fail(c, PG_EBAD_REQUEST, "negative padding is not supported");
        a.start[rank - 1 - k] = pads[2 * k];
        a.stop[rank - 1 - k] = pads[2 * k + 1];
    }
    return prim(c, PRIM_pad, &x, 1, &a);
}

static int32_t r_pad(lctx_t *c) {
    int64_t p[2 * PROTO_MAX_RANK];
    int n = 0;
    double v = 0;
    TRY(attr_ints(c, "pad", p, 2 * PROTO_MAX_RANK, &n, 0));
    TRY(attr_num(c, "value", true, 0, &v));
    return pad(c, c->in[0], p, n, v);
}

/* cat: inputs promote to a common dtype. */
static int32_t cat(lctx_t *c, const int32_t *in, int nin, int64_t dim) {
    int32_t *ins = pg_calloc_array((size_t)nin, sizeof(int32_t));
    if (!ins)
        return fail(c, PG_EOUT_OF_MEMORY, "no memory");
    pg_dtype_t dt = N(in[0])->dtype;
    for (int k = 1; k < nin; k++)
        if (order(N(in[k])->dtype) > order(dt))
            dt = N(in[k])->dtype;
    int32_t r = -1;
    for (int k = 0; k < nin; k++)
        if ((ins[k] = cast(c, in[k], dt)) < 0)
            goto out;
    gattr_t a = {.ndims = 1, .dims = {dim}};
    r = prim(c, PRIM_cat, ins, nin, &a);
out:
    pg_free(ins);
    return r;
}

static int32_t r_cat(lctx_t *c) {
    int64_t d = 0, dim = 0;
    TRY(attr_int(c, "dim", true, 0, &d));
    TRY(axis(c, d, N(c->in[0])->rank, &dim));
    if (N(c->in[0])->rank == 0)
        return fail(c, PG_EBAD_SHAPE, "cannot cat zero-dimensional tensors");
    return cat(c, c->in, c->nin, dim);
}

static int32_t r_stack(lctx_t *c) {
    int64_t d = 0, dim = 0;
    char s1[160], s2[160];
    const gnode_t *x = N(c->in[0]);
    TRY(attr_int(c, "dim", true, 0, &d));
    TRY(axis(c, d, x->rank + 1, &dim));
    int32_t *ins = pg_calloc_array((size_t)c->nin, sizeof(int32_t));
    if (!ins)
        return fail(c, PG_EOUT_OF_MEMORY, "no memory");
    int32_t r = -1;
    for (int k = 0; k < c->nin; k++) {
        const gnode_t *v = N(c->in[k]);
        if (v->rank != x->rank || memcmp(v->shape, x->shape, sizeof(int64_t) * (size_t)x->rank)) {
            fail(c, PG_EBAD_SHAPE, "stack needs equal shapes, got %s and %s",
                 graph_shape_str(s1, sizeof(s1), x->rank, x->shape),
                 graph_shape_str(s2, sizeof(s2), v->rank, v->shape));
            goto out;
        }
        if ((ins[k] = unsqueeze(c, c->in[k], (int)dim)) < 0)
            goto out;
        x = N(c->in[0]); /* graph_add may have moved the node array */
    }
    r = cat(c, ins, c->nin, dim);
out:
    pg_free(ins);
    return r;
}

/* =============================================================================================
 * Rules: linear algebra and indexing
 * =========================================================================================== */

/* torch.matmul: 1-D operands gain a dim that is removed again; batch dims broadcast. */
static int32_t matmul(lctx_t *c, int32_t a, int32_t b) {
    char s1[160], s2[160];
    const gnode_t *na = N(a), *nb = N(b);
    int ra0 = na->rank, rb0 = nb->rank;
    if (ra0 == 0 || rb0 == 0)
        return fail(c, PG_EBAD_SHAPE, "matmul needs at least 1-D operands, got %s and %s",
                    graph_shape_str(s1, sizeof(s1), na->rank, na->shape),
                    graph_shape_str(s2, sizeof(s2), nb->rank, nb->shape));
    int64_t ka = na->shape[ra0 - 1], kb = rb0 == 1 ? nb->shape[0] : nb->shape[rb0 - 2];
    if (ka != kb)
        return fail(c, PG_EBAD_SHAPE, "matmul of %s and %s: inner dimensions %lld and %lld differ",
                    graph_shape_str(s1, sizeof(s1), na->rank, na->shape),
                    graph_shape_str(s2, sizeof(s2), nb->rank, nb->shape), (long long)ka,
                    (long long)kb);
    pg_dtype_t dt = promote(na, nb);
    if (dt == PG_BOOL)
        return fail(c, PG_EBAD_DTYPE, "matmul is not defined for bool");
    TRY(a = cast(c, a, dt));
    TRY(b = cast(c, b, dt));
    if (ra0 == 1)
        TRY(a = unsqueeze(c, a, 0));
    if (rb0 == 1)
        TRY(b = unsqueeze(c, b, 1));
    na = N(a);
    nb = N(b);
    int rba = 0, rbb = 0, rb = 0;
    int64_t batch[PROTO_MAX_RANK];
    rba = na->rank - 2;
    rbb = nb->rank - 2;
    if (!broadcast(rba, na->shape, rbb, nb->shape, &rb, batch))
        return fail(c, PG_EBAD_SHAPE, "matmul batch dims of %s and %s do not broadcast",
                    graph_shape_str(s1, sizeof(s1), na->rank, na->shape),
                    graph_shape_str(s2, sizeof(s2), nb->rank, nb->shape));
    int64_t sa[PROTO_MAX_RANK], sb[PROTO_MAX_RANK], so[PROTO_MAX_RANK];
    memcpy(sa, batch, sizeof(int64_t) * (size_t)rb);
    memcpy(sb, batch, sizeof(int64_t) * (size_t)rb);
    sa[rb] = na->shape[rba];
    sa[rb + 1] = na->shape[rba + 1];
    sb[rb] = nb->shape[rbb];
    sb[rb + 1] = nb->shape[rbb + 1];
    TRY(a = expand(c, a, rb + 2, sa));
    TRY(b = expand(c, b, rb + 2, sb));
    int32_t in[2] = {a, b}, r = 0;
    TRY(r = prim(c, PRIM_matmul, in, 2, NULL));
    /* Remove the dims that 1-D operands gained. */
    int ro = 0;
    for (int d = 0; d < rb; d++)
        so[ro++] = batch[d];
    if (ra0 > 1)
        so[ro++] = sa[rb];
    if (rb0 > 1)
        so[ro++] = sb[rb + 1];
    return reshape(c, r, ro, so);
}

static int32_t r_matmul(lctx_t *c) { return matmul(c, c->in[0], c->in[1]); }

static int32_t r_linear(lctx_t *c) {
    int32_t w = c->in[1], r = 0;
    if (N(w)->rank != 2)
        return fail(c, PG_EBAD_SHAPE, "linear weight must be 2-D [out, in], got rank %d",
                    N(w)->rank);
    int64_t t[2] = {1, 0};
    TRY(w = permute(c, w, 2, t));
    TRY(r = matmul(c, c->in[0], w));
    return c->nin == 3 ? binary(c, PRIM_add, r, c->in[2]) : r;
}

/* An index input as int64 (int32 is widened; floats and bools are refused). */
static int32_t index_input(lctx_t *c, int32_t idx) {
    pg_dtype_t dt = N(idx)->dtype;
    if (dt != PG_INT64 && dt != PG_INT32)
        return fail(c, PG_EBAD_DTYPE, "indices must be int32 or int64, got %s",
                    proto_dtype_name(dt));
    return cast(c, idx, PG_INT64);
}

static int32_t r_index(lctx_t *c) {
    int64_t d = 0;
    int32_t in[2] = {c->in[0], 0};
    gattr_t a = {.ndims = 1};
    TRY(attr_int(c, "dim", false, 0, &d));
    TRY(axis(c, d, N(in[0])->rank, &a.dims[0]));
    TRY(in[1] = index_input(c, c->in[1]));
    if (N(in[0])->rank == 0)
        return fail(c, PG_EBAD_SHAPE, "%s of a zero-dimensional tensor", c->g->wire_op);
    return prim(c, c->variant, in, 2, &a);
}

/* one_hot(idx, k) = rows of the k x k identity picked by idx: index_select refuses a class
 * outside [0, k) at run time, as PyTorch does, instead of yielding an all-zero row. */
static int32_t r_one_hot(lctx_t *c) {
    int64_t k = 0;
    int32_t idx, col, row, eye, r;
    TRY(attr_int(c, "num_classes", false, 0, &k));
    if (k <= 0)
        return fail(c, PG_EBAD_REQUEST, "num_classes must be positive, got %lld", (long long)k);
    TRY(idx = index_input(c, c->in[0]));
    int rank = N(idx)->rank;
    if (rank >= PROTO_MAX_RANK)
        return fail(c, PG_EBAD_SHAPE, "the result would have rank over %d", PROTO_MAX_RANK);
    int64_t out[PROTO_MAX_RANK], flat[1] = {(int64_t)N(idx)->numel}, kk[1] = {k};
    memcpy(out, N(idx)->shape, sizeof(int64_t) * (size_t)rank);
    out[rank] = k;
    gattr_t a = {.astart = 0, .astep = 1};
    TRY(col = graph_add(c->g, PRIM_arange, NULL, 0, &a, PG_INT64, 1, kk, NULL, c->err));
    TRY(row = unsqueeze(c, col, 1));
    TRY(eye = binary(c, PRIM_eq, row, col));
    TRY(eye = cast(c, eye, PG_INT64));
    TRY(idx = reshape(c, idx, 1, flat));
    int32_t in[2] = {eye, idx};
    gattr_t sel = {.ndims = 1, .dims = {0}};
    TRY(r = prim(c, PRIM_index_select, in, 2, &sel));
    return reshape(c, r, rank + 1, out);
}

static int32_t r_embedding(lctx_t *c) {
    int32_t idx = 0, w = c->in[1], r = 0;
    if (N(w)->rank != 2)
        return fail(c, PG_EBAD_SHAPE, "embedding weight must be 2-D, got rank %d", N(w)->rank);
    TRY(idx = index_input(c, c->in[0]));
    int64_t flat[1] = {(int64_t)N(idx)->numel};
    int64_t out[PROTO_MAX_RANK];
    int rank = N(idx)->rank;
    if (rank >= PROTO_MAX_RANK)
        return fail(c, PG_EBAD_SHAPE, "the result would have rank over %d", PROTO_MAX_RANK);
    memcpy(out, N(idx)->shape, sizeof(int64_t) * (size_t)rank);
    out[rank] = N(w)->shape[1];
    TRY(idx = reshape(c, idx, 1, flat));
    int32_t in[2] = {w, idx};
    gattr_t a = {.ndims = 1, .dims = {0}};
    TRY(r = prim(c, PRIM_index_select, in, 2, &a));
    return reshape(c, r, rank + 1, out);
}

/* =============================================================================================
 * Rules: neural network ops
 * =========================================================================================== */

static int32_t softmax(lctx_t *c, int32_t x, int64_t dim, bool log) {
    int32_t m = 0, e = 0, s = 0;
    if (!is_float(N(x)->dtype))
        TRY(x = cast(c, x, PG_FLOAT32));
    if (N(x)->rank == 0) {
        int64_t one[1] = {1};
        TRY(x = reshape(c, x, 1, one));
        TRY(s = softmax(c, x, 0, log));
        return reshape(c, s, 0, NULL);
    }
    if (N(x)->shape[dim] == 0)
        return x; /* softmax over an empty axis is the empty tensor itself */
    TRY(m = reduce(c, PRIM_max, x, &dim, 1, true));
    N(m)->nograd = true; /* the result does not depend on m: its gradient through m is 0 */
    TRY(e = binary(c, PRIM_sub, x, m));
    if (log) {
        TRY(s = prim1(c, PRIM_exp, e));
        TRY(s = reduce(c, PRIM_sum, s, &dim, 1, true));
        TRY(s = prim1(c, PRIM_log, s));
        return binary(c, PRIM_sub, e, s);
    }
    TRY(e = prim1(c, PRIM_exp, e));
    TRY(s = reduce(c, PRIM_sum, e, &dim, 1, true));
    /* One reciprocal per row and a multiply per element, as PyTorch's kernel does: a division
     * per element costs more than the rest of the row's arithmetic. */
    TRY(s = prim1(c, PRIM_reciprocal, s));
    return binary(c, PRIM_mul, e, s);
}

static int32_t r_softmax(lctx_t *c) {
    int64_t d = 0, dim = 0;
    TRY(attr_int(c, "dim", false, 0, &d));
    TRY(axis(c, d, N(c->in[0])->rank, &dim));
    return softmax(c, c->in[0], dim, c->variant);
}

/* Applies a loss reduction ("mean", "sum", "none") to an elementwise loss. */
static int32_t reduction(lctx_t *c, int32_t loss) {
    const msgpack_object *o = attr(c, "reduction");
    const char *r = "mean";
    size_t n = 4;
    if (o) {
        if (o->type != MSGPACK_OBJECT_STR)
            return fail(c, PG_EBAD_REQUEST, "attribute 'reduction' must be a str");
        r = o->via.str.ptr;
        n = o->via.str.size;
    }
    int64_t dims[PROTO_MAX_RANK];
    int nd = N(loss)->rank;
    for (int d = 0; d < nd; d++)
        dims[d] = d;
    if (n == 4 && !memcmp(r, "none", 4))
        return loss;
    if (n == 3 && !memcmp(r, "sum", 3))
        return reduce(c, PRIM_sum, loss, dims, nd, false);
    if (n == 4 && !memcmp(r, "mean", 4)) {
        int32_t s = 0, cnt = 0;
        TRY(s = reduce(c, PRIM_sum, loss, dims, nd, false));
        TRY(cnt = scalar(c, (double)N(loss)->numel, N(loss)->dtype, false));
        return binary(c, PRIM_div, s, cnt);
    }
    return fail(c, PG_EBAD_REQUEST, "reduction must be \"mean\", \"sum\" or \"none\"");
}

static int32_t r_cross_entropy(lctx_t *c) {
    int32_t x = c->in[0], t = 0, lsm = 0, picked = 0, r = 0;
    char s1[160], s2[160];
    const gnode_t *nx = N(x), *nt = N(c->in[1]);
    bool single = nx->rank == 1;
    if (nx->rank != 1 && nx->rank != 2)
        return fail(c, PG_EBAD_SHAPE, "cross_entropy needs logits [N, C] or [C], got %s",
                    graph_shape_str(s1, sizeof(s1), nx->rank, nx->shape));
    if (nt->rank != nx->rank - 1 || (nx->rank == 2 && nt->shape[0] != nx->shape[0]))
        return fail(c, PG_EBAD_SHAPE, "cross_entropy target %s does not match logits %s",
                    graph_shape_str(s1, sizeof(s1), nt->rank, nt->shape),
                    graph_shape_str(s2, sizeof(s2), nx->rank, nx->shape));
    TRY(t = index_input(c, c->in[1]));
    if (single) {
        TRY(x = unsqueeze(c, x, 0));
        TRY(t = unsqueeze(c, t, 0));
    }
    TRY(lsm = softmax(c, x, 1, true));
    TRY(t = unsqueeze(c, t, 1));
    int32_t in[2] = {lsm, t};
    gattr_t a = {.ndims = 1, .dims = {1}};
    TRY(picked = prim(c, PRIM_gather, in, 2, &a));
    int64_t n[1] = {N(picked)->shape[0]};
    TRY(picked = reshape(c, picked, 1, n));
    TRY(r = prim1(c, PRIM_neg, picked));
    if (single)
        TRY(r = reshape(c, r, 0, NULL));
    return reduction(c, r);
}

static int32_t r_mse_loss(lctx_t *c) {
    int32_t d = 0;
    TRY(d = binary(c, PRIM_sub, c->in[0], c->in[1]));
    if (!is_float(N(d)->dtype))
        TRY(d = cast(c, d, PG_FLOAT32));
    TRY(d = prim1(c, PRIM_square, d));
    return reduction(c, d);
}

static int32_t r_layer_norm(lctx_t *c) {
    int64_t ns[PROTO_MAX_RANK], dims[PROTO_MAX_RANK];
    int k = 0;
    double eps = 0;
    char s1[160], s2[160];
    int32_t x = c->in[0], m = 0, v = 0, y = 0, e = 0;
    TRY(attr_ints(c, "normalized_shape", ns, PROTO_MAX_RANK, &k, 1));
    TRY(attr_num(c, "eps", true, 1e-5, &eps));
    const gnode_t *nx = N(x);
    bool ok = k >= 1 && k <= nx->rank;
    for (int j = 0; ok && j < k; j++)
        ok = nx->shape[nx->rank - k + j] == ns[j];
    if (!ok)
        return fail(c, PG_EBAD_SHAPE, "normalized_shape %s does not end input %s",
                    graph_shape_str(s1, sizeof(s1), k, ns),
                    graph_shape_str(s2, sizeof(s2), nx->rank, nx->shape));
    for (int j = 0; j < k; j++)
        dims[j] = nx->rank - k + j;
    if (!is_float(nx->dtype))
        TRY(x = cast(c, x, PG_FLOAT32));
    pg_dtype_t dt = N(x)->dtype;
    double cnt = count(c, x, dims, k);
    int32_t n = 0;
    TRY(m = reduce(c, PRIM_sum, x, dims, k, true));
    TRY(n = scalar(c, cnt, dt, false));
    TRY(m = binary(c, PRIM_div, m, n));
    TRY(y = binary(c, PRIM_sub, x, m));
    TRY(v = prim1(c, PRIM_square, y));
    TRY(v = reduce(c, PRIM_sum, v, dims, k, true));
    TRY(v = binary(c, PRIM_div, v, n));
    TRY(e = scalar(c, eps, dt, false));
    TRY(v = binary(c, PRIM_add, v, e));
    TRY(v = prim1(c, PRIM_rsqrt, v));
    TRY(y = binary(c, PRIM_mul, y, v));
    for (int j = 1; j < c->nin; j++) {
        const gnode_t *p = N(c->in[j]);
        if (p->rank != k || memcmp(p->shape, ns, sizeof(int64_t) * (size_t)k))
            return fail(c, PG_EBAD_SHAPE, "layer_norm %s has shape %s, expected %s",
                        j == 1 ? "weight" : "bias",
                        graph_shape_str(s1, sizeof(s1), p->rank, p->shape),
                        graph_shape_str(s2, sizeof(s2), k, ns));
        TRY(y = binary(c, j == 1 ? PRIM_mul : PRIM_add, y, c->in[j]));
    }
    return y;
}

/* Reads a 2-D conv/pool parameter (an int or [h, w]) into out[2], with a default. */
static int pair(lctx_t *c, const char *name, int64_t def, int64_t out[2]) {
    int n = 0;
    if (!attr(c, name)) {
        out[0] = out[1] = def;
        return 0;
    }
    TRY(attr_ints(c, name, out, 2, &n, 2));
    if (n == 1)
        out[1] = out[0];
    else if (n != 2)
        return fail(c, PG_EBAD_REQUEST, "attribute '%s' must be an int or [h, w]", name);
    return 0;
}

/* pad(x, [pw, pw, ph, ph], value) then window(kernel, stride, dilation): [N,C,OH,OW,kh,kw]. */
static int32_t windows(lctx_t *c, int32_t x, const int64_t k[2], const int64_t s[2],
                       const int64_t p[2], const int64_t d[2], double fill) {
    if (p[0] < 0 || p[1] < 0)
        return fail(c, PG_EBAD_REQUEST, "padding must be >= 0");
    if (p[0] || p[1]) {
        int64_t pads[4] = {p[1], p[1], p[0], p[0]};
        TRY(x = pad(c, x, pads, 4, fill));
    }
    gattr_t a = {.win = {k[0], k[1], s[0], s[1], d[0], d[1]}};
    return prim(c, PRIM_window, &x, 1, &a);
}

static int32_t r_conv2d(lctx_t *c) {
    int64_t st[2], pd[2], dl[2], groups = 0;
    char s1[160], s2[160];
    int32_t x = c->in[0], w = c->in[1], win = 0, r = 0;
    TRY(pair(c, "stride", 1, st));
    TRY(pair(c, "padding", 0, pd));
    TRY(pair(c, "dilation", 1, dl));
    TRY(attr_int(c, "groups", true, 1, &groups));
    const gnode_t *nx = N(x), *nw = N(w);
    if (nx->rank != 4 || nw->rank != 4)
        return fail(c, PG_EBAD_SHAPE, "conv2d needs input [N, C, H, W] and weight [O, C/g, kH, "
                                      "kW], got %s and %s",
                    graph_shape_str(s1, sizeof(s1), nx->rank, nx->shape),
                    graph_shape_str(s2, sizeof(s2), nw->rank, nw->shape));
    int64_t N_ = nx->shape[0], C = nx->shape[1], O = nw->shape[0];
    if (groups < 1 || C % groups || O % groups || nw->shape[1] != C / groups)
        return fail(c, PG_EBAD_SHAPE, "conv2d weight %s does not fit input %s with groups=%lld",
                    graph_shape_str(s1, sizeof(s1), nw->rank, nw->shape),
                    graph_shape_str(s2, sizeof(s2), nx->rank, nx->shape), (long long)groups);
    pg_dtype_t dt = promote(nx, nw);
    if (!is_float(dt))
        dt = PG_FLOAT32;
    int64_t k[2] = {nw->shape[2], nw->shape[3]}, G = groups, Kc = C / G * k[0] * k[1];
    TRY(x = cast(c, x, dt));
    TRY(w = cast(c, w, dt));
    TRY(win = windows(c, x, k, st, pd, dl, 0));
    int64_t OH = N(win)->shape[2], OW = N(win)->shape[3];
    /* im2col with the batch folded into the rows, so that the product (and the weight's
     * gradient, its transpose) is ONE matrix multiply per group rather than one per image:
     *   [N,C,OH,OW,kh,kw] -> [G, N,OH,OW, C/G,kh,kw] -> [G, N*OH*OW, Kc] @ [G, Kc, O/G]
     * (with one group, plain 2-D matrices: [N*OH*OW, Kc] @ [Kc, O]). */
    int64_t M = N_ * OH * OW, Og = O / G;
    if (G == 1) {
        int64_t p1[6] = {0, 2, 3, 1, 4, 5}, s_cols[2] = {M, Kc};
        TRY(win = permute(c, win, 6, p1));
        TRY(win = reshape(c, win, 2, s_cols));
        int64_t sw[2] = {O, Kc}, pw[2] = {1, 0};
        TRY(w = reshape(c, w, 2, sw));
        TRY(w = permute(c, w, 2, pw)); /* [Kc, O] */
    } else {
        int64_t s7[7] = {N_, G, C / G, OH, OW, k[0], k[1]}, p7[7] = {1, 0, 3, 4, 2, 5, 6},
                s_cols[3] = {G, M, Kc};
        TRY(win = reshape(c, win, 7, s7));
        TRY(win = permute(c, win, 7, p7));
        TRY(win = reshape(c, win, 3, s_cols));
        int64_t sw[3] = {G, Og, Kc}, pw[3] = {0, 2, 1};
        TRY(w = reshape(c, w, 3, sw));
        TRY(w = permute(c, w, 3, pw)); /* [G, Kc, O/G] */
    }
    int32_t in[2] = {win, w};
    TRY(r = prim(c, PRIM_matmul, in, 2, NULL)); /* [G,] N*OH*OW, O/G */
    if (G == 1) {
        int64_t s4[4] = {N_, OH, OW, O}, p4[4] = {0, 3, 1, 2};
        TRY(r = reshape(c, r, 4, s4));
        TRY(r = permute(c, r, 4, p4)); /* [N, O, OH, OW], a view */
    } else {
        int64_t s5[5] = {G, N_, OH, OW, Og}, p5[5] = {1, 0, 4, 2, 3}, so[4] = {N_, O, OH, OW};
        TRY(r = reshape(c, r, 5, s5));
        TRY(r = permute(c, r, 5, p5)); /* [N, G, O/G, OH, OW] */
        TRY(r = reshape(c, r, 4, so));
    }
    if (c->nin == 3) {
        int32_t b = c->in[2];
        if (N(b)->rank != 1 || N(b)->shape[0] != O)
            return fail(c, PG_EBAD_SHAPE, "conv2d bias must be [%lld], got %s", (long long)O,
                        graph_shape_str(s1, sizeof(s1), N(b)->rank, N(b)->shape));
        int64_t sb[4] = {1, O, 1, 1};
        TRY(b = reshape(c, b, 4, sb));
        TRY(r = binary(c, PRIM_add, r, b));
    }
    return r;
}

/* max_pool2d and avg_pool2d on [N, C, H, W] or [C, H, W]. */
static int32_t r_pool(lctx_t *c) {
    int64_t k[2], st[2], pd[2], dl[2];
    char s1[160];
    int32_t x = c->in[0], win = 0, r = 0;
    bool max = c->variant == PRIM_max, include = true;
    TRY(pair(c, "kernel_size", 0, k));
    if (attr(c, "stride"))
        TRY(pair(c, "stride", 1, st));
    else
        st[0] = k[0], st[1] = k[1];
    TRY(pair(c, "padding", 0, pd));
    TRY(pair(c, "dilation", 1, dl));
    if (!max)
        TRY(attr_bool(c, "count_include_pad", true, &include));
    const gnode_t *nx = N(x);
    int rank = nx->rank;
    if (rank != 3 && rank != 4)
        return fail(c, PG_EBAD_SHAPE, "pooling needs [N, C, H, W] or [C, H, W], got %s",
                    graph_shape_str(s1, sizeof(s1), nx->rank, nx->shape));
    if (k[0] < 1 || k[1] < 1)
        return fail(c, PG_EBAD_REQUEST, "kernel_size must be >= 1");
    if (pd[0] * 2 > k[0] || pd[1] * 2 > k[1])
        return fail(c, PG_EBAD_REQUEST, "padding should be at most half of the kernel size");
    if (rank == 3)
        TRY(x = unsqueeze(c, x, 0));
    if (!is_float(N(x)->dtype)) {
        if (!max)
            return fail(c, PG_EBAD_DTYPE, "avg_pool2d needs a float input");
    }
    double fill = max ? (is_float(N(x)->dtype) ? -INFINITY : (double)INT64_MIN) : 0;
    if (max && N(x)->dtype == PG_INT32)
        fill = (double)INT32_MIN;
    TRY(win = windows(c, x, k, st, pd, dl, fill));
    int64_t dims[2] = {4, 5};
    TRY(r = reduce(c, max ? PRIM_max : PRIM_sum, win, dims, 2, false));
    if (max)
        N(r)->a.first = true; /* the gradient goes to the first max of a window, as torch */
    if (!max) {
        int32_t den = 0;
        if (include || (pd[0] == 0 && pd[1] == 0)) {
            TRY(den = scalar(c, (double)(k[0] * k[1]), N(r)->dtype, false));
        } else {
            /* The divisor counts the window's elements inside the input: pool a ones map. */
            int64_t s[4] = {1, 1, N(x)->shape[2], N(x)->shape[3]};
            gattr_t a = {.value = 1};
            TRY(den = graph_add(c->g, PRIM_full, NULL, 0, &a, N(r)->dtype, 4, s, NULL, c->err));
            TRY(den = windows(c, den, k, st, pd, dl, 0));
            TRY(den = reduce(c, PRIM_sum, den, dims, 2, false));
        }
        TRY(r = binary(c, PRIM_div, r, den));
    }
    if (rank == 3) {
        int64_t s[3] = {N(r)->shape[1], N(r)->shape[2], N(r)->shape[3]};
        TRY(r = reshape(c, r, 3, s));
    }
    return r;
}

/* =============================================================================================
 * Rules: differentiation (the sweep itself is autodiff.c)
 * =========================================================================================== */

/* detach(x): x's value as a node of its own (a reshape to its own shape, which fold.c removes
 * later) that the reverse sweep does not cross. */
static int32_t r_detach(lctx_t *c) {
    int64_t s[PROTO_MAX_RANK];
    int32_t x = c->in[0], r = 0;
    int rank = N(x)->rank;
    memcpy(s, N(x)->shape, sizeof(s));
    TRY(r = shaped(c, PRIM_reshape, x, NULL, rank, s));
    N(r)->nograd = true;
    return r;
}

/* Zeros of x's dtype and shape. */
static int32_t zeros_like(lctx_t *c, int32_t x) {
    int64_t s[PROTO_MAX_RANK];
    int rank = N(x)->rank;
    pg_dtype_t dt = N(x)->dtype;
    memcpy(s, N(x)->shape, sizeof(s));
    gattr_t a = {.value = 0};
    return graph_add(c->g, PRIM_full, NULL, 0, &a, dt, rank, s, NULL, c->err);
}

/* True when v is a non-negative int msgpack object; *out gets it. */
static bool wire_index(const msgpack_object *v, int64_t *out) {
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > (uint64_t)INT32_MAX)
        return false;
    *out = (int64_t)v->via.u64;
    return true;
}

/* Lists every `grad` node of the request (once, when the first is lowered), so that the first
 * sweep for a (y, gy) knows all the x's that its sibling `grad` nodes want. Malformed nodes are
 * skipped here: the driver refuses them when it reaches them. */
static int scan_grads(lctx_t *c) {
    lad_t *ad = c->ad;
    uint32_t count = c->nodes->via.array.size;
    ad->scanned = true;
    for (int pass = 0; pass < 2; pass++) {
        int n = 0;
        for (uint32_t j = 0; j < count; j++) {
            const msgpack_object *node = &c->nodes->via.array.ptr[j];
            if (node->type != MSGPACK_OBJECT_MAP)
                continue;
            const msgpack_object *op = proto_find(node, "op"), *in = proto_find(node, "in");
            if (!op || op->type != MSGPACK_OBJECT_STR || op->via.str.size != 4 ||
                memcmp(op->via.str.ptr, "grad", 4) || !in || in->type != MSGPACK_OBJECT_ARRAY ||
                in->via.array.size < 2 || in->via.array.size > 3)
                continue;
            gref_t r = {.gy = -1};
            if (!wire_index(&in->via.array.ptr[0], &r.y) ||
                !wire_index(&in->via.array.ptr[1], &r.x) ||
                (in->via.array.size == 3 && !wire_index(&in->via.array.ptr[2], &r.gy)))
                continue;
            if (pass == 1)
                ad->refs[n] = r;
            n++;
        }
        if (pass == 0) {
            if (n == 0)
                return 0;
            ad->refs = pg_calloc_array((size_t)n, sizeof(gref_t));
            if (!ad->refs)
                return fail(c, PG_EOUT_OF_MEMORY, "no memory for the gradient");
        }
        ad->nrefs = n;
    }
    return 0;
}

/*
 * grad(y, x[, gy]) = d(sum(y * gy))/dx, x's shape and dtype. The first `grad` node of a
 * (y, gy) runs the reverse sweep for every x that the request's `grad` nodes of that (y, gy)
 * want; the others find their adjoint in the cache. An x that y does not depend on gets zeros.
 */
static int32_t r_grad(lctx_t *c) {
    char s1[160], s2[160];
    int32_t y = c->in[0], x = c->in[1], seed = 0;
    const msgpack_object *in = proto_find(c->node, "in"); /* checked by the driver */
    int64_t yw = (int64_t)in->via.array.ptr[0].via.u64, xw = (int64_t)in->via.array.ptr[1].via.u64;
    int64_t gw = c->nin == 3 ? (int64_t)in->via.array.ptr[2].via.u64 : -1;
    const gnode_t *ny = N(y), *nx = N(x);
    if (!is_float(ny->dtype))
        return fail(c, PG_EBAD_DTYPE, "y (in[0]) is %s; only float32 and float64 outputs can be "
                                      "differentiated",
                    proto_dtype_name(ny->dtype));
    if (!is_float(nx->dtype))
        return fail(c, PG_EBAD_DTYPE, "x (in[1]) is %s; only float32 and float64 tensors have "
                                      "gradients",
                    proto_dtype_name(nx->dtype));
    if (c->nin == 3) {
        const gnode_t *ng = N(c->in[2]);
        if (ng->rank != ny->rank || memcmp(ng->shape, ny->shape, sizeof(int64_t) * (size_t)ny->rank))
            return fail(c, PG_EBAD_SHAPE, "the output gradient gy (in[2]) has shape %s; y has "
                                          "shape %s",
                        graph_shape_str(s1, sizeof(s1), ng->rank, ng->shape),
                        graph_shape_str(s2, sizeof(s2), ny->rank, ny->shape));
    } else if (ny->numel != 1) {
        return fail(c, PG_EBAD_REQUEST, "y has shape %s; a non-scalar output needs an output "
                                        "gradient (in[2])",
                    graph_shape_str(s1, sizeof(s1), ny->rank, ny->shape));
    }
    if (xw > yw)
        return zeros_like(c, x); /* made after y: y cannot depend on it */
    const ad_sweep_t *sw = ad_cache_find(&c->ad->cache, yw, gw);
    if (!sw) {
        if (c->nin == 3) {
            TRY(seed = cast(c, c->in[2], ny->dtype));
        } else {
            int64_t s[PROTO_MAX_RANK];
            int rank = ny->rank;
            pg_dtype_t dt = ny->dtype;
            memcpy(s, ny->shape, sizeof(s));
            gattr_t a = {.value = 1};
            TRY(seed = graph_add(c->g, PRIM_full, NULL, 0, &a, dt, rank, s, NULL, c->err));
        }
        if (!c->ad->scanned)
            TRY(scan_grads(c));
        int32_t *wanted = pg_calloc_array((size_t)c->ad->nrefs + 1, sizeof(int32_t));
        if (!wanted)
            return fail(c, PG_EOUT_OF_MEMORY, "no memory for the gradient");
        int nw = 0;
        wanted[nw++] = x;
        for (int k = 0; k < c->ad->nrefs; k++) {
            const gref_t *r = &c->ad->refs[k];
            if (r->y == yw && r->gy == gw && r->x <= yw)
                wanted[nw++] = c->map[r->x];
        }
        sw = ad_backward(c->g, &c->ad->cache, yw, gw, y, seed, wanted, nw, c->err);
        pg_free(wanted);
        if (!sw)
            return -1;
    }
    if (x < sw->n && sw->adj[x] >= 0)
        return sw->adj[x];
    return zeros_like(c, x);
}

/* =============================================================================================
 * The op table and the driver
 * =========================================================================================== */

/* XX(wire name, min inputs, max inputs (-1: many), rule, variant, attributes allowed) */
#define LOWER_MAP(XX)                                                                              \
    XX(input, 0, 0, r_input, 0, "handle")                                                          \
    XX(assign, 1, 1, r_assign, 0, "handle")                                                        \
    XX(const, 0, 0, r_const, 0, "dtype shape data value")                                          \
    XX(full, 0, 0, r_full, 0, "shape value dtype")                                                 \
    XX(arange, 0, 0, r_arange, 0, "start end step dtype")                                          \
    XX(rand, 0, 0, r_rand, PRIM_rand, "shape seed offset dtype")                                   \
    XX(randn, 0, 0, r_rand, PRIM_randn, "shape seed offset dtype")                                 \
    XX(neg, 1, 1, r_unary_keep, PRIM_neg, "")                                                      \
    XX(abs, 1, 1, r_unary_keep, PRIM_abs, "")                                                      \
    XX(relu, 1, 1, r_unary_keep, PRIM_relu, "")                                                    \
    XX(square, 1, 1, r_unary_keep, PRIM_square, "")                                                \
    XX(sign, 1, 1, r_unary_keep, PRIM_sign, "")                                                    \
    XX(exp, 1, 1, r_unary_float, PRIM_exp, "")                                                     \
    XX(log, 1, 1, r_unary_float, PRIM_log, "")                                                     \
    XX(sqrt, 1, 1, r_unary_float, PRIM_sqrt, "")                                                   \
    XX(rsqrt, 1, 1, r_unary_float, PRIM_rsqrt, "")                                                 \
    XX(sin, 1, 1, r_unary_float, PRIM_sin, "")                                                     \
    XX(cos, 1, 1, r_unary_float, PRIM_cos, "")                                                     \
    XX(tanh, 1, 1, r_unary_float, PRIM_tanh, "")                                                   \
    XX(sigmoid, 1, 1, r_unary_float, PRIM_sigmoid, "")                                             \
    XX(silu, 1, 1, r_unary_float, PRIM_silu, "")                                                   \
    XX(reciprocal, 1, 1, r_unary_float, PRIM_reciprocal, "")                                       \
    XX(erf, 1, 1, r_unary_float, PRIM_erf, "")                                                     \
    XX(gelu, 1, 1, r_gelu, 0, "approximate")                                                       \
    XX(logical_not, 1, 1, r_logical_not, 0, "")                                                    \
    XX(clamp, 1, 1, r_clamp, 0, "min max")                                                         \
    XX(cast, 1, 1, r_cast, 0, "dtype")                                                             \
    XX(add, 2, 2, r_binary, PRIM_add, "")                                                          \
    XX(sub, 2, 2, r_binary, PRIM_sub, "")                                                          \
    XX(mul, 2, 2, r_binary, PRIM_mul, "")                                                          \
    XX(div, 2, 2, r_binary, PRIM_div, "")                                                          \
    XX(pow, 2, 2, r_binary, PRIM_pow, "")                                                          \
    XX(maximum, 2, 2, r_binary, PRIM_maximum, "")                                                  \
    XX(minimum, 2, 2, r_binary, PRIM_minimum, "")                                                  \
    XX(eq, 2, 2, r_binary, PRIM_eq, "")                                                            \
    XX(ne, 2, 2, r_binary, PRIM_ne, "")                                                            \
    XX(lt, 2, 2, r_binary, PRIM_lt, "")                                                            \
    XX(le, 2, 2, r_binary, PRIM_le, "")                                                            \
    XX(gt, 2, 2, r_binary, PRIM_gt, "")                                                            \
    XX(ge, 2, 2, r_binary, PRIM_ge, "")                                                            \
    XX(logical_and, 2, 2, r_binary, PRIM_logical_and, "")                                          \
    XX(logical_or, 2, 2, r_binary, PRIM_logical_or, "")                                            \
    XX(where, 3, 3, r_where, 0, "")                                                                \
    XX(masked_fill, 2, 2, r_masked_fill, 0, "value")                                               \
    XX(sum, 1, 1, r_reduce, PRIM_sum, "dims keepdim")                                              \
    XX(prod, 1, 1, r_reduce, PRIM_prod, "dims keepdim")                                            \
    XX(max, 1, 1, r_reduce, PRIM_max, "dims keepdim")                                              \
    XX(min, 1, 1, r_reduce, PRIM_min, "dims keepdim")                                              \
    XX(any, 1, 1, r_reduce, PRIM_any, "dims keepdim")                                              \
    XX(all, 1, 1, r_reduce, PRIM_all, "dims keepdim")                                              \
    XX(mean, 1, 1, r_mean, 0, "dims keepdim")                                                      \
    XX(var, 1, 1, r_var, 0, "dims keepdim correction")                                             \
    XX(std, 1, 1, r_var, PRIM_sqrt, "dims keepdim correction")                                     \
    XX(logsumexp, 1, 1, r_logsumexp, 0, "dims keepdim")                                            \
    XX(argmax, 1, 1, r_argreduce, PRIM_argmax, "dim keepdim")                                      \
    XX(argmin, 1, 1, r_argreduce, PRIM_argmin, "dim keepdim")                                      \
    XX(cumsum, 1, 1, r_cumsum, 0, "dim")                                                           \
    XX(reshape, 1, 1, r_reshape, 0, "shape")                                                       \
    XX(permute, 1, 1, r_permute, 0, "dims")                                                        \
    XX(expand, 1, 1, r_expand, 0, "shape")                                                         \
    XX(slice, 1, 1, r_slice, 0, "slices")                                                          \
    XX(flip, 1, 1, r_flip, 0, "dims")                                                              \
    XX(pad, 1, 1, r_pad, 0, "pad value")                                                           \
    XX(cat, 1, -1, r_cat, 0, "dim")                                                                \
    XX(stack, 1, -1, r_stack, 0, "dim")                                                            \
    XX(matmul, 2, 2, r_matmul, 0, "")                                                              \
    XX(linear, 2, 3, r_linear, 0, "")                                                              \
    XX(gather, 2, 2, r_index, PRIM_gather, "dim")                                                  \
    XX(index_select, 2, 2, r_index, PRIM_index_select, "dim")                                      \
    XX(one_hot, 1, 1, r_one_hot, 0, "num_classes")                                                 \
    XX(embedding, 2, 2, r_embedding, 0, "")                                                        \
    XX(softmax, 1, 1, r_softmax, 0, "dim")                                                         \
    XX(log_softmax, 1, 1, r_softmax, 1, "dim")                                                     \
    XX(cross_entropy, 2, 2, r_cross_entropy, 0, "reduction")                                       \
    XX(mse_loss, 2, 2, r_mse_loss, 0, "reduction")                                                 \
    XX(layer_norm, 1, 3, r_layer_norm, 0, "normalized_shape eps")                                  \
    XX(conv2d, 2, 3, r_conv2d, 0, "stride padding dilation groups")                                \
    XX(max_pool2d, 1, 1, r_pool, PRIM_max, "kernel_size stride padding dilation")                  \
    XX(avg_pool2d, 1, 1, r_pool, PRIM_sum, "kernel_size stride padding count_include_pad")      \
    XX(detach, 1, 1, r_detach, 0, "")                                                              \
    XX(grad, 2, 3, r_grad, 0, "")

static const struct {
    const char *name;
    int min_in, max_in;
    rule_fn rule;
    int variant;
    const char *attrs;
} rules[] = {
#define XX(name, lo, hi, fn, var, attrs) {#name, lo, hi, fn, var, attrs},
    LOWER_MAP(XX)
#undef XX
};

int lower_op_count(void) { return (int)(sizeof(rules) / sizeof(rules[0])); }

const char *lower_op_name(int i) { return i >= 0 && i < lower_op_count() ? rules[i].name : NULL; }

/* True when key (len bytes) is one of the space-separated words of list, or "op"/"in". */
static bool allowed(const char *list, const char *key, size_t len) {
    if ((len == 2 && (!memcmp(key, "op", 2) || !memcmp(key, "in", 2))))
        return true;
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ' ');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == len && !memcmp(p, key, len))
            return true;
        p += n + (e ? 1 : 0);
    }
    return false;
}

int lower_graph(graph_t *g, const sess_t *sess, const msgpack_object *nodes, int32_t *map,
                lower_assigns_t *assigns, proto_err_t *err) {
    int32_t in_buf[8];
    int32_t *ins = in_buf;
    int rc = 0;
    uint32_t count = nodes->via.array.size;
    lad_t ad = {0};

    for (uint32_t i = 0; i < count; i++) {
        const msgpack_object *node = &nodes->via.array.ptr[i];
        char opname[40];
        g->wire = (int32_t)i;
        g->wire_op = "?";
        if (node->type != MSGPACK_OBJECT_MAP) {
            rc = proto_fail(err, PG_EBAD_REQUEST, "node %u is not a map", i);
            goto out;
        }
        const msgpack_object *op = proto_find(node, "op");
        if (!op || op->type != MSGPACK_OBJECT_STR) {
            rc = proto_fail(err, PG_EBAD_REQUEST, "node %u: missing or non-string 'op'", i);
            goto out;
        }
        proto_quote(opname, sizeof(opname), op->via.str.ptr, op->via.str.size);
        int r = -1;
        for (size_t k = 0; k < sizeof(rules) / sizeof(rules[0]) && r < 0; k++)
            if (strnlen(rules[k].name, op->via.str.size + 1) == op->via.str.size &&
                !memcmp(rules[k].name, op->via.str.ptr, op->via.str.size))
                r = (int)k; /* names are unique: the loop stops here */
        if (r < 0) {
            rc = proto_fail(err, PG_EUNKNOWN_OP, "node %u: unknown op '%s'", i, opname);
            goto out;
        }
        g->wire_op = rules[r].name;

        for (uint32_t k = 0; k < node->via.map.size; k++) {
            const msgpack_object *key = &node->via.map.ptr[k].key;
            char kn[40];
            if (key->type != MSGPACK_OBJECT_STR) {
                rc = proto_fail(err, PG_EBAD_REQUEST, "node %u (%s): attribute keys must be "
                                                      "strings",
                                i, rules[r].name);
                goto out;
            }
            if (!allowed(rules[r].attrs, key->via.str.ptr, key->via.str.size)) {
                proto_quote(kn, sizeof(kn), key->via.str.ptr, key->via.str.size);
                rc = proto_fail(err, PG_EBAD_REQUEST, "node %u (%s): unknown attribute '%s'", i,
                                rules[r].name, kn);
                goto out;
            }
        }

        const msgpack_object *in = proto_find(node, "in");
        uint32_t nin = 0;
        if (in && in->type != MSGPACK_OBJECT_NIL) {
            if (in->type != MSGPACK_OBJECT_ARRAY) {
                rc = proto_fail(err, PG_EBAD_REQUEST, "node %u (%s): 'in' must be a list", i,
                                rules[r].name);
                goto out;
            }
            nin = in->via.array.size;
        }
        int lo = rules[r].min_in, hi = rules[r].max_in < 0 ? GRAPH_MAX_INPUTS : rules[r].max_in;
        if ((int64_t)nin < lo || (int64_t)nin > hi) {
            if (lo == hi)
                rc = proto_fail(err, PG_EBAD_REQUEST, "node %u (%s) takes %d inputs, got %u", i,
                                rules[r].name, lo, nin);
            else
                rc = proto_fail(err, PG_EBAD_REQUEST, "node %u (%s) takes %d to %d inputs, got %u",
                                i, rules[r].name, lo, hi, nin);
            goto out;
        }
        if (nin > sizeof(in_buf) / sizeof(in_buf[0])) {
            if (ins != in_buf)
                pg_free(ins);
            ins = pg_calloc_array(nin, sizeof(int32_t));
            if (!ins) {
                ins = in_buf;
                rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory");
                goto out;
            }
        }
        for (uint32_t k = 0; k < nin; k++) {
            const msgpack_object *v = &in->via.array.ptr[k];
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 >= i) {
                rc = proto_fail(err, PG_EBAD_REQUEST,
                                "node %u (%s): input %u must be the index of an earlier node "
                                "(0 to %d)",
                                i, rules[r].name, k, (int)i - 1);
                goto out;
            }
            ins[k] = map[v->via.u64];
        }
        lctx_t c = {g, sess, node, ins, (int)nin, rules[r].variant, err, assigns, nodes, map, &ad};
        int32_t id = rules[r].rule(&c);
        if (id < 0) {
            rc = -err->code;
            goto out;
        }
        map[i] = id;
    }
out:
    if (ins != in_buf)
        pg_free(ins);
    ad_cache_free(&ad.cache);
    pg_free(ad.refs);
    return rc;
}
