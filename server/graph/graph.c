/*
 * graph.c - building the IR: validation and shape/dtype inference of primitive nodes.
 *
 * graph_add() is the only way a node enters a graph, and it refuses anything malformed, so every
 * later stage (the interpreter, later the compiler) may assume a well-formed graph. The checks
 * here are those of the primitives' contract (ops.def); the user-facing rules (broadcasting, type
 * promotion, negative axes, Python slice semantics) live in the lowering pass, which only ever
 * emits nodes that satisfy this contract, so an error from here on a valid request is a bug.
 */
#include "graph.h"

#include "../mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int arity;
    prim_kind_t kind;
} prims[] = {
#define PG_PRIM(name, nin, kind) {#name, nin, kind},
#include "../../kernels/ops.def"
#undef PG_PRIM
};
static_assert(sizeof(prims) / sizeof(prims[0]) == PRIM_COUNT, "ops.def table");

const char *graph_prim_name(prim_t op) { return prims[op].name; }
prim_kind_t graph_prim_kind(prim_t op) { return prims[op].kind; }
int graph_prim_arity(prim_t op) { return prims[op].arity; }

void graph_init(graph_t *g, uint64_t max_bytes) {
    memset(g, 0, sizeof(*g));
    g->max_bytes = max_bytes;
    g->wire_op = "?";
}

void graph_free(graph_t *g) {
    for (int32_t i = 0; i < g->n; i++) {
        pg_free(g->nodes[i].in);
        tensor_unref(g->nodes[i].tensor);
    }
    pg_free(g->nodes);
    g->nodes = NULL;
    g->n = g->cap = 0;
}

bool graph_window_strides(const gnode_t *n, const int64_t *xshape, int xrank,
                          const int64_t *xstrides, int64_t *out) {
    const int64_t *w = n->a.win;
    if (n->op != PRIM_window || xrank != 4 || n->rank != 6 || n->shape[0] != xshape[0] ||
        n->shape[1] != xshape[1] || w[2] < 1 || w[3] < 1 || w[4] < 1 || w[5] < 1)
        return false;
    for (int d = 0; d < 2; d++) /* the last window's last element, along H and W */
        if (n->numel > 0 &&
            (n->shape[2 + d] - 1) * w[2 + d] + (n->shape[4 + d] - 1) * w[4 + d] >= xshape[2 + d])
            return false;
    out[0] = xstrides[0];
    out[1] = xstrides[1];
    out[2] = xstrides[2] * w[2];
    out[3] = xstrides[3] * w[3];
    out[4] = xstrides[2] * w[4];
    out[5] = xstrides[3] * w[5];
    return true;
}

const char *graph_shape_str(char *buf, size_t cap, int rank, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < rank && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
    return buf;
}

/* Fails with "node W (op): <message>" where W is the request node being lowered. */
#define FAIL(code, ...) graph_fail(g, err, code, __VA_ARGS__)

static int32_t graph_fail(const graph_t *g, proto_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int32_t graph_fail(const graph_t *g, proto_err_t *err, int code, const char *fmt, ...) {
    char msg[PROTO_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    proto_fail(err, code, "node %d (%s): %s", (int)g->wire, g->wire_op, msg);
    return -1;
}

static bool is_float(pg_dtype_t t) { return t == PG_FLOAT32 || t == PG_FLOAT64; }

/* Infers the shape of node n (inputs in g) in place; 0 or -1 with err. */
static int32_t infer(graph_t *g, gnode_t *n, proto_err_t *err) {
    char s1[160], s2[160];
    const gnode_t *x = n->nin > 0 ? &g->nodes[n->in[0]] : NULL;
    const gnode_t *y = n->nin > 1 ? &g->nodes[n->in[1]] : NULL;
    const char *name = prims[n->op].name;
    gattr_t *a = &n->a;

    switch (prims[n->op].kind) {
    case PK_LEAF:
        if (n->op == PRIM_input || n->op == PRIM_const) {
            n->dtype = n->tensor->dtype;
            n->rank = n->tensor->rank;
            memcpy(n->shape, n->tensor->shape, sizeof(n->shape));
        }
        if ((n->op == PRIM_rand || n->op == PRIM_randn) && !is_float(n->dtype))
            return FAIL(PG_EBAD_DTYPE, "%s makes float32 or float64, not %s", name,
                        proto_dtype_name(n->dtype));
        return 0;

    case PK_UNARY:
        if (n->op == PRIM_cast) {
            n->dtype = a->dtype;
        } else {
            n->dtype = x->dtype;
            bool need_float = n->op != PRIM_neg && n->op != PRIM_abs && n->op != PRIM_relu &&
                              n->op != PRIM_square && n->op != PRIM_sign &&
                              n->op != PRIM_logical_not;
            if (need_float && !is_float(x->dtype))
                return FAIL(PG_EBAD_DTYPE, "%s needs a float input, got %s", name,
                            proto_dtype_name(x->dtype));
            if (n->op == PRIM_logical_not && x->dtype != PG_BOOL)
                return FAIL(PG_EBAD_DTYPE, "logical_not needs bool, got %s",
                            proto_dtype_name(x->dtype));
        }
        n->rank = x->rank;
        memcpy(n->shape, x->shape, sizeof(n->shape));
        return 0;

    case PK_BINARY:
    case PK_WHERE: {
        const gnode_t *last = &g->nodes[n->in[n->nin - 1]];
        for (int k = 0; k < n->nin; k++) {
            const gnode_t *v = &g->nodes[n->in[k]];
            if (v->rank != x->rank || memcmp(v->shape, x->shape, sizeof(int64_t) * (size_t)x->rank))
                return FAIL(PG_EBAD_SHAPE, "%s inputs have shapes %s and %s", name,
                            graph_shape_str(s1, sizeof(s1), x->rank, x->shape),
                            graph_shape_str(s2, sizeof(s2), v->rank, v->shape));
        }
        if (n->op == PRIM_where) {
            if (x->dtype != PG_BOOL || y->dtype != last->dtype)
                return FAIL(PG_EBAD_DTYPE, "where needs a bool condition and equal dtypes");
            n->dtype = y->dtype;
        } else {
            if (x->dtype != y->dtype)
                return FAIL(PG_EBAD_DTYPE, "%s inputs have dtypes %s and %s", name,
                            proto_dtype_name(x->dtype), proto_dtype_name(y->dtype));
            bool cmp = n->op >= PRIM_eq && n->op <= PRIM_logical_or;
            if ((n->op == PRIM_logical_and || n->op == PRIM_logical_or) && x->dtype != PG_BOOL)
                return FAIL(PG_EBAD_DTYPE, "%s needs bool inputs", name);
            if (n->op == PRIM_div && !is_float(x->dtype))
                return FAIL(PG_EBAD_DTYPE, "div needs float inputs");
            n->dtype = cmp ? PG_BOOL : x->dtype;
        }
        n->rank = x->rank;
        memcpy(n->shape, x->shape, sizeof(n->shape));
        return 0;
    }

    case PK_REDUCE:
    case PK_ARGREDUCE:
    case PK_SCAN: {
        bool seen[PROTO_MAX_RANK] = {false};
        if (prims[n->op].kind != PK_REDUCE && a->ndims != 1)
            return FAIL(PG_EBAD_REQUEST, "%s takes exactly one axis", name);
        for (int k = 0; k < a->ndims; k++) {
            int64_t d = a->dims[k];
            if (d < 0 || d >= x->rank || seen[d] || (k > 0 && d < a->dims[k - 1]))
                return FAIL(PG_EBAD_REQUEST, "%s: invalid axis %lld for rank %d", name,
                            (long long)d, x->rank);
            seen[d] = true;
            if (x->shape[d] == 0 && (n->op == PRIM_max || n->op == PRIM_min ||
                                     prims[n->op].kind == PK_ARGREDUCE))
                return FAIL(PG_EBAD_SHAPE, "%s of an empty dimension (axis %lld of %s)", name,
                            (long long)d, graph_shape_str(s1, sizeof(s1), x->rank, x->shape));
        }
        n->dtype = n->op == PRIM_argmax || n->op == PRIM_argmin ? PG_INT64 : x->dtype;
        if ((n->op == PRIM_any || n->op == PRIM_all) && x->dtype != PG_BOOL)
            return FAIL(PG_EBAD_DTYPE, "%s needs bool input", name);
        if (prims[n->op].kind == PK_SCAN) {
            n->rank = x->rank;
            memcpy(n->shape, x->shape, sizeof(n->shape));
            return 0;
        }
        n->rank = 0;
        for (int d = 0; d < x->rank; d++) {
            if (!seen[d])
                n->shape[n->rank++] = x->shape[d];
            else if (a->keepdim)
                n->shape[n->rank++] = 1;
        }
        return 0;
    }

    case PK_VIEW:
        n->dtype = x->dtype;
        switch (n->op) {
        case PRIM_reshape: {
            uint64_t m = 1;
            for (int d = 0; d < n->rank; d++)
                m *= (uint64_t)n->shape[d];
            if (m != x->numel)
                return FAIL(PG_EBAD_SHAPE, "cannot reshape %s (%llu elements) to %s",
                            graph_shape_str(s1, sizeof(s1), x->rank, x->shape),
                            (unsigned long long)x->numel,
                            graph_shape_str(s2, sizeof(s2), n->rank, n->shape));
            return 0;
        }
        case PRIM_permute: {
            bool seen[PROTO_MAX_RANK] = {false};
            if (a->ndims != x->rank)
                return FAIL(PG_EBAD_REQUEST, "permute of rank %d needs %d dims, got %d", x->rank,
                            x->rank, a->ndims);
            n->rank = x->rank;
            for (int d = 0; d < x->rank; d++) {
                int64_t p = a->dims[d];
                if (p < 0 || p >= x->rank || seen[p])
                    return FAIL(PG_EBAD_REQUEST, "permute dims are not a permutation of 0..%d",
                                x->rank - 1);
                seen[p] = true;
                n->shape[d] = x->shape[p];
            }
            return 0;
        }
        case PRIM_expand: {
            int lead = n->rank - x->rank;
            if (lead < 0)
                goto bad_expand;
            for (int d = 0; d < x->rank; d++)
                if (x->shape[d] != n->shape[lead + d] && x->shape[d] != 1)
                    goto bad_expand;
            return 0;
        bad_expand:
            return FAIL(PG_EBAD_SHAPE, "cannot expand %s to %s",
                        graph_shape_str(s1, sizeof(s1), x->rank, x->shape),
                        graph_shape_str(s2, sizeof(s2), n->rank, n->shape));
        }
        case PRIM_slice:
            if (n->rank != x->rank)
                return FAIL(PG_EBAD_SHAPE, "slice changes rank");
            for (int d = 0; d < x->rank; d++) {
                int64_t st = a->start[d], step = a->step[d], len = n->shape[d];
                if (step < 1)
                    return FAIL(PG_EBAD_REQUEST, "slice step must be positive, got %lld",
                                (long long)step);
                if (len > 0 && (st < 0 || st >= x->shape[d] ||
                                (x->shape[d] - 1 - st) / step < len - 1))
                    return FAIL(PG_EBAD_SHAPE, "slice of axis %d out of range", d);
            }
            return 0;
        case PRIM_flip: {
            bool seen[PROTO_MAX_RANK] = {false};
            n->rank = x->rank;
            memcpy(n->shape, x->shape, sizeof(n->shape));
            for (int k = 0; k < a->ndims; k++) {
                if (a->dims[k] < 0 || a->dims[k] >= x->rank)
                    return FAIL(PG_EBAD_REQUEST, "flip: invalid axis %lld for rank %d",
                                (long long)a->dims[k], x->rank);
                if (seen[a->dims[k]])
                    return FAIL(PG_EBAD_REQUEST, "flip: dim %lld appears multiple times",
                                (long long)a->dims[k]);
                seen[a->dims[k]] = true;
            }
            return 0;
        }
        case PRIM_window: {
            if (x->rank != 4)
                return FAIL(PG_EBAD_SHAPE, "window needs [N, C, H, W], got %s",
                            graph_shape_str(s1, sizeof(s1), x->rank, x->shape));
            const int64_t *w = a->win;
            for (int k = 0; k < 6; k++)
                if (w[k] < 1)
                    return FAIL(PG_EBAD_REQUEST, "kernel, stride and dilation must be >= 1");
            int64_t eh = w[4] * (w[0] - 1) + 1, ew = w[5] * (w[1] - 1) + 1;
            if (eh > x->shape[2] || ew > x->shape[3])
                return FAIL(PG_EBAD_SHAPE,
                            "kernel %lldx%lld (dilated %lldx%lld) is larger than the padded "
                            "input %s",
                            (long long)w[0], (long long)w[1], (long long)eh, (long long)ew,
                            graph_shape_str(s1, sizeof(s1), x->rank, x->shape));
            n->rank = 6;
            n->shape[0] = x->shape[0];
            n->shape[1] = x->shape[1];
            n->shape[2] = (x->shape[2] - eh) / w[2] + 1;
            n->shape[3] = (x->shape[3] - ew) / w[3] + 1;
            n->shape[4] = w[0];
            n->shape[5] = w[1];
            return 0;
        }
        default:
            break;
        }
        break;

    case PK_COPY:
        n->dtype = x->dtype;
        if (n->op == PRIM_unwindow) {
            /* The caller gives [N, C, H, W]; H and W cannot be inferred (the window's output
             * size rounds down), so check that window() of that shape gives x's shape. */
            const int64_t *w = a->win;
            for (int k = 0; k < 6; k++)
                if (w[k] < 1)
                    return FAIL(PG_EBAD_REQUEST, "kernel, stride and dilation must be >= 1");
            bool ok = x->rank == 6 && n->rank == 4 && x->shape[0] == n->shape[0] &&
                      x->shape[1] == n->shape[1] && x->shape[4] == w[0] && x->shape[5] == w[1];
            for (int d = 0; ok && d < 2; d++) {
                int64_t e = w[4 + d] * (w[d] - 1) + 1;
                ok = n->shape[2 + d] >= e && (n->shape[2 + d] - e) / w[2 + d] + 1 == x->shape[2 + d];
            }
            if (!ok)
                return FAIL(PG_EBAD_SHAPE, "unwindow of %s to %s does not match its windows",
                            graph_shape_str(s1, sizeof(s1), x->rank, x->shape),
                            graph_shape_str(s2, sizeof(s2), n->rank, n->shape));
            return 0;
        }
        n->rank = x->rank;
        memcpy(n->shape, x->shape, sizeof(n->shape));
        if (n->op == PRIM_pad) {
            for (int d = 0; d < x->rank; d++) {
                if (a->start[d] < 0 || a->stop[d] < 0)
                    return FAIL(PG_EBAD_REQUEST, "pad amounts must be >= 0");
                n->shape[d] += a->start[d] + a->stop[d];
            }
            return 0;
        }
        /* cat */
        if (a->ndims != 1 || a->dims[0] < 0 || a->dims[0] >= (x->rank ? x->rank : 1) ||
            x->rank == 0)
            return FAIL(PG_EBAD_REQUEST, "cat: invalid dim for rank %d", x->rank);
        n->shape[a->dims[0]] = 0;
        for (int k = 0; k < n->nin; k++) {
            const gnode_t *v = &g->nodes[n->in[k]];
            if (v->dtype != x->dtype)
                return FAIL(PG_EBAD_DTYPE, "cat inputs have dtypes %s and %s",
                            proto_dtype_name(x->dtype), proto_dtype_name(v->dtype));
            bool ok = v->rank == x->rank;
            for (int d = 0; ok && d < x->rank; d++)
                ok = d == a->dims[0] || v->shape[d] == x->shape[d];
            if (!ok)
                return FAIL(PG_EBAD_SHAPE, "cat along dim %lld: shapes %s and %s differ",
                            (long long)a->dims[0],
                            graph_shape_str(s1, sizeof(s1), x->rank, x->shape),
                            graph_shape_str(s2, sizeof(s2), v->rank, v->shape));
            n->shape[a->dims[0]] += v->shape[a->dims[0]];
        }
        return 0;

    case PK_MATMUL: {
        if (x->rank < 2 || y->rank != x->rank || x->dtype != y->dtype ||
            memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)(x->rank - 2)) ||
            x->shape[x->rank - 1] != y->shape[y->rank - 2])
            return FAIL(PG_EBAD_SHAPE, "matmul of %s and %s: inner dimensions differ",
                        graph_shape_str(s1, sizeof(s1), x->rank, x->shape),
                        graph_shape_str(s2, sizeof(s2), y->rank, y->shape));
        n->dtype = x->dtype;
        n->rank = x->rank;
        memcpy(n->shape, x->shape, sizeof(n->shape));
        n->shape[n->rank - 1] = y->shape[y->rank - 1];
        return 0;
    }

    case PK_INDEX: {
        int64_t dim = a->dims[0];
        if (y->dtype != PG_INT64)
            return FAIL(PG_EBAD_DTYPE, "%s needs an int64 index, got %s", name,
                        proto_dtype_name(y->dtype));
        if (a->ndims != 1 || dim < 0 || dim >= (x->rank ? x->rank : 1))
            return FAIL(PG_EBAD_REQUEST, "%s: invalid dim for rank %d", name, x->rank);
        n->dtype = x->dtype;
        if (n->op == PRIM_scatter_add) {
            /* base x, index y, src z: index and src have one shape, of base's rank, and fit
             * inside base on every axis but dim (where the index values say where). */
            const gnode_t *z = &g->nodes[n->in[2]];
            if (z->dtype != x->dtype)
                return FAIL(PG_EBAD_DTYPE, "scatter_add base and src have dtypes %s and %s",
                            proto_dtype_name(x->dtype), proto_dtype_name(z->dtype));
            bool ok = y->rank == x->rank && z->rank == y->rank &&
                      !memcmp(y->shape, z->shape, sizeof(int64_t) * (size_t)y->rank);
            for (int d = 0; ok && d < x->rank; d++)
                ok = d == dim || y->shape[d] <= x->shape[d];
            if (!ok)
                return FAIL(PG_EBAD_SHAPE, "scatter_add index %s and src %s do not fit base %s",
                            graph_shape_str(s1, sizeof(s1), y->rank, y->shape),
                            graph_shape_str(s2, sizeof(s2), z->rank, z->shape),
                            graph_shape_str((char[160]){0}, 160, x->rank, x->shape));
            n->rank = x->rank;
            memcpy(n->shape, x->shape, sizeof(n->shape));
            return 0;
        }
        if (n->op == PRIM_gather) {
            if (y->rank != x->rank)
                return FAIL(PG_EBAD_SHAPE, "gather index %s must have the rank of input %s",
                            graph_shape_str(s1, sizeof(s1), y->rank, y->shape),
                            graph_shape_str(s2, sizeof(s2), x->rank, x->shape));
            for (int d = 0; d < x->rank; d++)
                if (d != dim && y->shape[d] > x->shape[d])
                    return FAIL(PG_EBAD_SHAPE, "gather index %s is larger than input %s",
                                graph_shape_str(s1, sizeof(s1), y->rank, y->shape),
                                graph_shape_str(s2, sizeof(s2), x->rank, x->shape));
            n->rank = y->rank;
            memcpy(n->shape, y->shape, sizeof(n->shape));
            return 0;
        }
        if (y->rank != 1)
            return FAIL(PG_EBAD_SHAPE, "index_select needs a 1-D index, got %s",
                        graph_shape_str(s1, sizeof(s1), y->rank, y->shape));
        n->rank = x->rank;
        memcpy(n->shape, x->shape, sizeof(n->shape));
        if (x->rank > 0)
            n->shape[dim] = y->shape[0];
        return 0;
    }
    }
    return FAIL(PG_EINTERNAL, "no shape rule for %s", name);
}

int32_t graph_add(graph_t *g, prim_t op, const int32_t *in, int32_t nin, const gattr_t *a,
                  pg_dtype_t dtype, int rank, const int64_t *shape, tensor_t *tensor,
                  proto_err_t *err) {
    int arity = prims[op].arity;
    if ((arity >= 0 && nin != arity) || (arity < 0 && (nin < 1 || nin > GRAPH_MAX_INPUTS))) {
        tensor_unref(tensor);
        return FAIL(PG_EBAD_REQUEST, "%s takes %d inputs, got %d", prims[op].name, arity, nin);
    }
    if (g->n >= GRAPH_MAX_PRIM_NODES) {
        tensor_unref(tensor);
        return FAIL(PG_ETOO_LARGE, "the graph lowers to over %d primitive nodes",
                    GRAPH_MAX_PRIM_NODES);
    }
    if (g->n == g->cap) {
        int32_t cap = g->cap ? g->cap * 2 : 64;
        gnode_t *nodes = pg_realloc_array(g->nodes, (size_t)cap, sizeof(*nodes));
        if (!nodes) {
            tensor_unref(tensor);
            return FAIL(PG_EOUT_OF_MEMORY, "no memory for the graph");
        }
        g->nodes = nodes;
        g->cap = cap;
    }
    gnode_t *n = &g->nodes[g->n];
    memset(n, 0, sizeof(*n));
    n->op = op;
    n->wire = g->wire;
    n->wire_op = g->wire_op;
    n->tensor = tensor;
    n->dtype = dtype;
    n->rank = rank;
    if (rank > 0)
        memcpy(n->shape, shape, sizeof(int64_t) * (size_t)rank);
    if (a)
        n->a = *a;
    if (nin > 0) {
        n->in = pg_calloc_array((size_t)nin, sizeof(int32_t));
        if (!n->in) {
            tensor_unref(tensor);
            return FAIL(PG_EOUT_OF_MEMORY, "no memory for the graph");
        }
        memcpy(n->in, in, sizeof(int32_t) * (size_t)nin);
        n->nin = nin;
    }
    g->n++; /* the node is owned by the graph from here, also when it fails below */
    for (int32_t k = 0; k < nin; k++)
        if (in[k] < 0 || in[k] >= g->n - 1)
            return FAIL(PG_EINTERNAL, "input %d of %s refers to a later node", (int)k,
                        prims[op].name);
    if (infer(g, n, err) != 0)
        return -1;
    uint64_t numel = 1;
    for (int d = 0; d < n->rank; d++) {
        if (n->shape[d] < 0)
            return FAIL(PG_EBAD_SHAPE, "negative dim in %s",
                        graph_shape_str((char[160]){0}, 160, n->rank, n->shape));
        if (n->shape[d] != 0 && numel > (uint64_t)INT64_MAX / (uint64_t)n->shape[d])
            return FAIL(PG_EBAD_SHAPE, "the element count of the result overflows");
        numel *= (uint64_t)n->shape[d];
    }
    n->numel = numel;
    uint64_t item = proto_dtype_size(n->dtype);
    if (numel > g->max_bytes / item) {
        char s1[160];
        return FAIL(PG_ETOO_LARGE, "a %s result of shape %s needs %llu bytes; the memory limit "
                                   "is %llu",
                    proto_dtype_name(n->dtype), graph_shape_str(s1, sizeof(s1), n->rank, n->shape),
                    (unsigned long long)(numel * item), (unsigned long long)g->max_bytes);
    }
    return g->n - 1;
}
