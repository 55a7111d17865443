/*
 * render_c.c - the C renderer: turns one kir_kernel_t (a fused loop, kir.h) into a C11
 * translation unit that the JIT (kernels/cpu/jit.c) compiles with the system compiler.
 *
 * The generated code must give bit-for-bit the results of the reference interpreter
 * (kernels/ref/), so it copies the interpreter's arithmetic rather than C's: every value is
 * computed in double (floats) or wrapping int64 (ints and bool) and rounded once to its dtype,
 * exactly as the interpreter stores each primitive's result into a tensor of that dtype. Plain
 * loops over restrict pointers, with baked constant shapes and strides, are what lets gcc
 * vectorize the common cases.
 *
 *   before (kir):   iteration space [1024], no reduction
 *                   v0 = load in0; v1 = load in1; v2 = mul v0 v1; v3 = relu v2
 *   after (C):      for (int64_t i = start; i < end; i++) {
 *                       const float v0 = in0[0 + i];
 *                       const float v1 = in1[0 + i];
 *                       const float v2 = (float)((double)v0 * (double)v1);
 *                       const float v3 = (float)(isnan((double)v2) ? ... : 0.0);
 *                       out[i] = v3;
 *                   }
 *
 * A reduction renders as an outer loop over output elements and nested loops over the reduced
 * axes (innermost last, so the fold runs in C order like the interpreter's), with a double,
 * uint64 or truth-value accumulator. An input whose strides are the iteration space's
 * contiguous strides is indexed `off + i`; any other (broadcast, permuted, flipped) computes the
 * axes it needs from i with div/mod by baked constants.
 *
 * The file is organized so that a CUDA renderer could sit beside it: the expression helpers
 * (ctype, convert, op_expr) know nothing about loops, and only the "Loops" section does.
 */
#include "kir.h"

#include "../../server/mem.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The placeholder name the body is rendered with, before its hash is known (same length as the
 * real name so that substituting it is a byte-for-byte overwrite). */
#define RC_PLACEHOLDER "pg_k_XXXXXXXXXXXXXXXX"
#define RC_NAME_LEN 21

static const char *const rc_prim_names[] = {
#define PG_PRIM(name, nin, kind) #name,
#include "../ops.def"
#undef PG_PRIM
};
_Static_assert(sizeof(rc_prim_names) / sizeof(rc_prim_names[0]) == PRIM_COUNT,
               "one name per primitive");

static const char *rc_prim_name(prim_t p) {
    return (unsigned)p < PRIM_COUNT ? rc_prim_names[p] : "?";
}

/* =============================================================================================
 * A growing string
 * =========================================================================================== */

typedef struct {
    char *p;    /* NUL-terminated text (owned) */
    size_t n;   /* bytes used, without the NUL */
    size_t cap; /* bytes allocated */
    bool oom;   /* an append failed: the result is unusable */
} rc_buf_t;

static void rc_printf(rc_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void rc_printf(rc_buf_t *b, const char *fmt, ...) {
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int len = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (len < 0) {
            b->oom = true;
            return;
        }
        if (b->p && b->n + (size_t)len < b->cap) {
            b->n += (size_t)len;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + (size_t)len + 1)
            cap *= 2;
        char *q = pg_realloc_array(b->p, cap, 1);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

/* =============================================================================================
 * Expressions: types, conversions, one primitive
 * =========================================================================================== */

static bool rc_is_float(pg_dtype_t dt) { return dt == PG_FLOAT32 || dt == PG_FLOAT64; }

/* The C type a value of dtype dt lives in (bool: a uint8_t holding 0 or 1). */
static const char *rc_ctype(pg_dtype_t dt) {
    switch (dt) {
    case PG_FLOAT32: return "float";
    case PG_FLOAT64: return "double";
    case PG_INT32: return "int32_t";
    case PG_INT64: return "int64_t";
    default: return "uint8_t";
    }
}

/*
 * Writes into out the C expression that converts expr, computed in the float domain (a double)
 * or the integer domain (a wrapping int64), to dtype dt, the way the interpreter's ref__st_f and
 * ref__st_i store it: floats round once, float -> int clamps (NaN and infinities give 0), int32
 * keeps the low 32 bits, bool is x != 0.
 */
static void rc_convert(char *out, size_t cap, bool float_domain, pg_dtype_t dt, const char *expr) {
    if (dt == PG_BOOL) {
        snprintf(out, cap, "(uint8_t)((%s) != 0)", expr);
    } else if (float_domain) {
        switch (dt) {
        case PG_FLOAT32: snprintf(out, cap, "(float)(%s)", expr); break;
        case PG_FLOAT64: snprintf(out, cap, "(double)(%s)", expr); break;
        case PG_INT32: snprintf(out, cap, "pg_f2i32(%s)", expr); break;
        default: snprintf(out, cap, "pg_f2i64(%s)", expr); break;
        }
    } else {
        switch (dt) {
        case PG_FLOAT32: snprintf(out, cap, "(float)(int64_t)(%s)", expr); break;
        case PG_FLOAT64: snprintf(out, cap, "(double)(int64_t)(%s)", expr); break;
        case PG_INT32: snprintf(out, cap, "(int32_t)(uint32_t)(uint64_t)(%s)", expr); break;
        default: snprintf(out, cap, "(int64_t)(%s)", expr); break;
        }
    }
}

/* Writes a double as an exact C literal (hex float; inf and NaN spelled out). */
static void rc_double_lit(char *out, size_t cap, double v) {
    if (isnan(v))
        snprintf(out, cap, "%s(double)NAN", signbit(v) ? "-" : "");
    else if (isinf(v))
        snprintf(out, cap, "%s(double)INFINITY", v < 0 ? "-" : "");
    else
        snprintf(out, cap, "%a", v);
}

/* The unary primitive op on x, in the float domain (kernels/ref/elementwise.c unary_f). */
static void rc_unary_f(char *out, size_t cap, prim_t op, const char *x) {
    switch (op) {
    case PRIM_neg: snprintf(out, cap, "-%s", x); break;
    case PRIM_abs: snprintf(out, cap, "fabs(%s)", x); break;
    case PRIM_exp: snprintf(out, cap, "exp(%s)", x); break;
    case PRIM_log: snprintf(out, cap, "log(%s)", x); break;
    case PRIM_sqrt: snprintf(out, cap, "sqrt(%s)", x); break;
    case PRIM_rsqrt: snprintf(out, cap, "1.0 / sqrt(%s)", x); break;
    case PRIM_sin: snprintf(out, cap, "sin(%s)", x); break;
    case PRIM_cos: snprintf(out, cap, "cos(%s)", x); break;
    case PRIM_tanh: snprintf(out, cap, "tanh(%s)", x); break;
    case PRIM_sigmoid: snprintf(out, cap, "1.0 / (1.0 + exp(-%s))", x); break;
    case PRIM_relu: snprintf(out, cap, "isnan(%s) ? %s : (%s > 0 ? %s : 0.0)", x, x, x, x); break;
    case PRIM_gelu:
        snprintf(out, cap, "0.5 * %s * (1.0 + erf(%s * 0.70710678118654752440))", x, x);
        break;
    case PRIM_gelu_tanh:
        snprintf(out, cap,
                 "0.5 * %s * (1.0 + tanh(0.79788456080286535588 * (%s + 0.044715 * %s * %s * %s)))",
                 x, x, x, x, x);
        break;
    case PRIM_silu: snprintf(out, cap, "%s / (1.0 + exp(-%s))", x, x); break;
    case PRIM_reciprocal: snprintf(out, cap, "1.0 / %s", x); break;
    case PRIM_square: snprintf(out, cap, "%s * %s", x, x); break;
    case PRIM_sign:
        snprintf(out, cap, "isnan(%s) ? %s : (double)((%s > 0) - (%s < 0))", x, x, x, x);
        break;
    case PRIM_logical_not: snprintf(out, cap, "%s == 0", x); break;
    default: snprintf(out, cap, "%s", x); break; /* cast: the conversion does it */
    }
}

/* The unary primitive op on x, in the wrapping int64 domain (unary_i). */
static void rc_unary_i(char *out, size_t cap, prim_t op, const char *x) {
    switch (op) {
    case PRIM_neg: snprintf(out, cap, "(int64_t)(0 - (uint64_t)%s)", x); break;
    case PRIM_abs: snprintf(out, cap, "%s < 0 ? (int64_t)(0 - (uint64_t)%s) : %s", x, x, x); break;
    case PRIM_relu: snprintf(out, cap, "%s > 0 ? %s : 0", x, x); break;
    case PRIM_square: snprintf(out, cap, "(int64_t)((uint64_t)%s * (uint64_t)%s)", x, x); break;
    case PRIM_sign: snprintf(out, cap, "(%s > 0) - (%s < 0)", x, x); break;
    case PRIM_logical_not: snprintf(out, cap, "%s == 0", x); break;
    default: snprintf(out, cap, "%s", x); break; /* cast */
    }
}

/* The binary primitive op on a and b, in the float domain (binary_f). */
static void rc_binary_f(char *out, size_t cap, prim_t op, const char *a, const char *b) {
    switch (op) {
    case PRIM_add: snprintf(out, cap, "%s + %s", a, b); break;
    case PRIM_sub: snprintf(out, cap, "%s - %s", a, b); break;
    case PRIM_mul: snprintf(out, cap, "%s * %s", a, b); break;
    case PRIM_div: snprintf(out, cap, "%s / %s", a, b); break;
    case PRIM_pow: snprintf(out, cap, "pow(%s, %s)", a, b); break;
    case PRIM_maximum:
        snprintf(out, cap, "isnan(%s) || isnan(%s) ? %s + %s : (%s > %s ? %s : %s)", a, b, a, b,
                 a, b, a, b);
        break;
    case PRIM_minimum:
        snprintf(out, cap, "isnan(%s) || isnan(%s) ? %s + %s : (%s < %s ? %s : %s)", a, b, a, b,
                 a, b, a, b);
        break;
    case PRIM_eq: snprintf(out, cap, "%s == %s", a, b); break;
    case PRIM_ne: snprintf(out, cap, "%s != %s", a, b); break;
    case PRIM_lt: snprintf(out, cap, "%s < %s", a, b); break;
    case PRIM_le: snprintf(out, cap, "%s <= %s", a, b); break;
    case PRIM_gt: snprintf(out, cap, "%s > %s", a, b); break;
    case PRIM_ge: snprintf(out, cap, "%s >= %s", a, b); break;
    case PRIM_logical_and: snprintf(out, cap, "%s != 0 && %s != 0", a, b); break;
    case PRIM_logical_or: snprintf(out, cap, "%s != 0 || %s != 0", a, b); break;
    default: snprintf(out, cap, "0"); break;
    }
}

/* The binary primitive op on a and b, in the wrapping int64 domain (binary_i). */
static void rc_binary_i(char *out, size_t cap, prim_t op, const char *a, const char *b) {
    switch (op) {
    case PRIM_add: snprintf(out, cap, "(int64_t)((uint64_t)%s + (uint64_t)%s)", a, b); break;
    case PRIM_sub: snprintf(out, cap, "(int64_t)((uint64_t)%s - (uint64_t)%s)", a, b); break;
    case PRIM_mul: snprintf(out, cap, "(int64_t)((uint64_t)%s * (uint64_t)%s)", a, b); break;
    case PRIM_pow: snprintf(out, cap, "pg_ipow(%s, %s)", a, b); break;
    case PRIM_maximum: snprintf(out, cap, "%s > %s ? %s : %s", a, b, a, b); break;
    case PRIM_minimum: snprintf(out, cap, "%s < %s ? %s : %s", a, b, a, b); break;
    case PRIM_eq: snprintf(out, cap, "%s == %s", a, b); break;
    case PRIM_ne: snprintf(out, cap, "%s != %s", a, b); break;
    case PRIM_lt: snprintf(out, cap, "%s < %s", a, b); break;
    case PRIM_le: snprintf(out, cap, "%s <= %s", a, b); break;
    case PRIM_gt: snprintf(out, cap, "%s > %s", a, b); break;
    case PRIM_ge: snprintf(out, cap, "%s >= %s", a, b); break;
    case PRIM_logical_and: snprintf(out, cap, "%s != 0 && %s != 0", a, b); break;
    case PRIM_logical_or: snprintf(out, cap, "%s != 0 || %s != 0", a, b); break;
    default: snprintf(out, cap, "0"); break; /* div never reaches the integer path */
    }
}

#define RC_EXPR_MAX 1024

/*
 * Writes the initializer of value j (a C expression of its ctype). idx[k] is the index
 * expression of input k at the current iteration point.
 */
static void rc_value_expr(char *out, size_t cap, const kir_kernel_t *k, int j,
                          char idx[][RC_EXPR_MAX]) {
    const kir_val_t *v = &k->vals[j];
    char x[64], y[64], e[RC_EXPR_MAX];
    switch (v->kind) {
    case KIR_LOAD:
        if (k->in[v->input].dtype == PG_BOOL) /* any nonzero byte reads as true */
            snprintf(out, cap, "(uint8_t)(in%d[%s] != 0)", v->input, idx[v->input]);
        else
            snprintf(out, cap, "in%d[%s]", v->input, idx[v->input]);
        return;
    case KIR_CONST:
        rc_double_lit(x, sizeof(x), v->value);
        rc_convert(out, cap, true, v->dtype, x);
        return;
    case KIR_OP:
        break;
    }
    if (v->prim == PRIM_where) { /* copies a branch: no arithmetic, no conversion */
        snprintf(out, cap, "v%d != 0 ? v%d : v%d", v->a, v->b, v->c);
        return;
    }
    /* The interpreter picks the domain from the first operand's dtype (ops.def: operands of an
     * op already have the dtype it computes in). Float-only ops and div, which the builder
     * never gives an integer operand, compute in double either way. */
    pg_dtype_t adt = k->vals[v->a].dtype;
    bool fdom = rc_is_float(adt) || v->prim == PRIM_div || v->prim == PRIM_exp ||
                v->prim == PRIM_log || v->prim == PRIM_sqrt || v->prim == PRIM_rsqrt ||
                v->prim == PRIM_sin || v->prim == PRIM_cos || v->prim == PRIM_tanh ||
                v->prim == PRIM_sigmoid || v->prim == PRIM_gelu || v->prim == PRIM_gelu_tanh ||
                v->prim == PRIM_silu || v->prim == PRIM_reciprocal;
    snprintf(x, sizeof(x), fdom ? "(double)v%d" : "(int64_t)v%d", v->a);
    if (v->b >= 0)
        snprintf(y, sizeof(y), fdom ? "(double)v%d" : "(int64_t)v%d", v->b);
    if (v->b < 0 || v->prim == PRIM_cast)
        (fdom ? rc_unary_f : rc_unary_i)(e, sizeof(e), v->prim, x);
    else
        (fdom ? rc_binary_f : rc_binary_i)(e, sizeof(e), v->prim, x, y);
    rc_convert(out, cap, fdom, v->dtype, e);
}

/* =============================================================================================
 * Loops
 * =========================================================================================== */

static bool rc_has_reduce(const kir_kernel_t *k) { return k->reduce != PRIM_COUNT; }

uint64_t kir_out_numel(const kir_kernel_t *k) {
    uint64_t n = 1;
    for (int d = 0; d < k->rank; d++)
        if (!rc_has_reduce(k) || !k->reduced[d])
            n *= (uint64_t)k->shape[d];
    return n;
}

/* True when input in is laid out exactly like the iteration space in C order (size-1 axes may
 * have any stride), so that element i of the loop is element off + i of the input. */
static bool rc_is_contiguous(const kir_kernel_t *k, const kir_input_t *in) {
    int64_t expect = 1;
    for (int d = k->rank - 1; d >= 0; d--) {
        if (k->shape[d] != 1 && in->strides[d] != expect)
            return false;
        expect *= k->shape[d];
    }
    return true;
}

/* Writes input in's index expression: base (a C expression) or, when base is NULL, the input's
 * offset, plus " + iD * S" for every axis in `axes` along which the input moves. */
static void rc_affine(char *out, size_t cap, const kir_input_t *in, const char *base,
                      const bool *axes, int rank, const int64_t *shape) {
    int n = base ? snprintf(out, cap, "%s", base) : snprintf(out, cap, "%" PRId64, in->off);
    for (int d = 0; d < rank && n >= 0 && (size_t)n < cap; d++)
        if (axes[d] && shape[d] != 1 && in->strides[d] != 0)
            n += snprintf(out + n, cap - (size_t)n, " + i%d * %" PRId64, d, in->strides[d]);
}

/* Emits "const int64_t iD = (lin / DIV) % SIZE;" for each axis in `want`, where `over` marks the
 * axes that lin enumerates in C order. */
static void rc_unflatten(rc_buf_t *b, const kir_kernel_t *k, const char *lin, const bool *over,
                         const bool *want, const char *indent) {
    int64_t div = 1;
    int outermost = -1;
    for (int d = 0; d < k->rank; d++)
        if (over[d] && outermost < 0)
            outermost = d;
    for (int d = k->rank - 1; d >= 0; d--) {
        if (!over[d])
            continue;
        if (want[d] && k->shape[d] != 1) {
            rc_printf(b, "%sconst int64_t i%d = ", indent, d);
            if (div == 1)
                rc_printf(b, "%s", lin);
            else
                rc_printf(b, "%s / %" PRId64, lin, div);
            if (d != outermost)
                rc_printf(b, " %% %" PRId64, k->shape[d]);
            rc_printf(b, ";\n");
        }
        div *= k->shape[d];
    }
}

/* Emits the SSA body, one const local per value, each line at indent. */
static void rc_body(rc_buf_t *b, const kir_kernel_t *k, char idx[][RC_EXPR_MAX],
                    const char *indent) {
    char e[4 * RC_EXPR_MAX];
    for (int j = 0; j < k->nvals; j++) {
        rc_value_expr(e, sizeof(e), k, j, idx);
        rc_printf(b, "%sconst %s v%d = %s;\n", indent, rc_ctype(k->vals[j].dtype), j, e);
    }
}

/* Elementwise: one loop over output elements. */
static void rc_loop_elementwise(rc_buf_t *b, const kir_kernel_t *k) {
    char idx[KIR_MAX_INPUTS][RC_EXPR_MAX]; /* per input: its index expression */
    bool all[PROTO_MAX_RANK], need[PROTO_MAX_RANK] = {false};
    for (int d = 0; d < k->rank; d++)
        all[d] = true;
    for (int n = 0; n < k->nin; n++) {
        const kir_input_t *in = &k->in[n];
        if (rc_is_contiguous(k, in)) {
            snprintf(idx[n], RC_EXPR_MAX, "%" PRId64 " + i", in->off);
            continue;
        }
        rc_affine(idx[n], RC_EXPR_MAX, in, NULL, all, k->rank, k->shape);
        for (int d = 0; d < k->rank; d++)
            need[d] |= in->strides[d] != 0;
    }
    rc_printf(b, "    for (int64_t i = start; i < end; i++) {\n");
    rc_unflatten(b, k, "i", all, need, "        ");
    rc_body(b, k, idx, "        ");
    char st[RC_EXPR_MAX + 64], v[32];
    snprintf(v, sizeof(v), "v%d", k->nvals - 1);
    pg_dtype_t rdt = k->vals[k->nvals - 1].dtype;
    if (rdt == k->out_dtype)
        snprintf(st, sizeof(st), "%s", v);
    else
        rc_convert(st, sizeof(st), rc_is_float(rdt), k->out_dtype, v);
    rc_printf(b, "        out[i] = %s;\n    }\n", st);
}

/* With a reduction: a loop over output elements, nested loops over the reduced axes. The fold
 * is the interpreter's (kernels/ref/reduce.c reduce_chunk), step for step. */
static void rc_loop_reduce(rc_buf_t *b, const kir_kernel_t *k) {
    char idx[KIR_MAX_INPUTS][RC_EXPR_MAX]; /* per input: its index expression */
    bool kept[PROTO_MAX_RANK], red[PROTO_MAX_RANK], need[PROTO_MAX_RANK] = {false};
    for (int d = 0; d < k->rank; d++) {
        red[d] = k->reduced[d];
        kept[d] = !red[d];
    }
    for (int n = 0; n < k->nin; n++)
        for (int d = 0; d < k->rank; d++)
            need[d] |= kept[d] && k->in[n].strides[d] != 0;
    pg_dtype_t rdt = k->vals[k->nvals - 1].dtype;
    prim_t op = k->reduce;
    bool logical = op == PRIM_any || op == PRIM_all;
    bool fdom = !logical && rc_is_float(rdt);
    bool extreme = op == PRIM_max || op == PRIM_min;

    rc_printf(b, "    for (int64_t o = start; o < end; o++) {\n");
    rc_unflatten(b, k, "o", kept, need, "        ");
    for (int n = 0; n < k->nin; n++) {
        char base[RC_EXPR_MAX], name[16];
        rc_affine(base, sizeof(base), &k->in[n], NULL, kept, k->rank, k->shape);
        rc_printf(b, "        const int64_t b%d = %s;\n", n, base);
        snprintf(name, sizeof(name), "b%d", n);
        rc_affine(idx[n], RC_EXPR_MAX, &k->in[n], name, red, k->rank, k->shape);
    }
    if (logical)
        rc_printf(b, "        uint8_t acc = %d;\n", op == PRIM_all);
    else if (fdom)
        rc_printf(b, "        double acc = %s;\n", op == PRIM_prod ? "1.0" : "0.0");
    else
        rc_printf(b, "        uint64_t acc = %d;\n", op == PRIM_prod);
    if (extreme)
        rc_printf(b, "        int first = 1;\n");

    char indent[64] = "        ";
    for (int d = 0; d < k->rank; d++) {
        if (!red[d])
            continue;
        rc_printf(b, "%sfor (int64_t i%d = 0; i%d < %" PRId64 "; i%d++) {\n", indent, d, d,
                  k->shape[d], d);
        strcat(indent, "    ");
    }
    rc_body(b, k, idx, indent);
    int r = k->nvals - 1;
    if (logical) {
        rc_printf(b, "%sacc = acc %s (v%d != 0);\n", indent, op == PRIM_all ? "&&" : "||", r);
    } else if (fdom) {
        rc_printf(b, "%sconst double x = v%d;\n", indent, r);
        if (op == PRIM_sum)
            rc_printf(b, "%sacc += x;\n", indent);
        else if (op == PRIM_prod)
            rc_printf(b, "%sacc *= x;\n", indent);
        else /* NaN propagates: the first NaN seen sticks */
            rc_printf(b,
                      "%sif (first || isnan(x))\n%s    acc = x;\n"
                      "%selse if (!isnan(acc) && x %s acc)\n%s    acc = x;\n%sfirst = 0;\n",
                      indent, indent, indent, op == PRIM_max ? ">" : "<", indent, indent);
    } else {
        rc_printf(b, "%sconst int64_t x = v%d;\n", indent, r);
        if (op == PRIM_sum)
            rc_printf(b, "%sacc += (uint64_t)x;\n", indent);
        else if (op == PRIM_prod)
            rc_printf(b, "%sacc *= (uint64_t)x;\n", indent);
        else
            rc_printf(b, "%sif (first || x %s (int64_t)acc)\n%s    acc = (uint64_t)x;\n"
                      "%sfirst = 0;\n", indent, op == PRIM_max ? ">" : "<", indent, indent);
    }
    for (int d = k->rank - 1; d >= 0; d--) {
        if (!red[d])
            continue;
        indent[strlen(indent) - 4] = '\0';
        rc_printf(b, "%s}\n", indent);
    }
    char st[RC_EXPR_MAX];
    rc_convert(st, sizeof(st), fdom, k->out_dtype, fdom ? "acc" : "(int64_t)acc");
    rc_printf(b, "        out[o] = %s;\n    }\n", st);
}

/* =============================================================================================
 * The translation unit
 * =========================================================================================== */

/* Helpers the generated code may call; identical in every kernel, so they do not affect names. */
static const char rc_prelude[] =
    "#include <math.h>\n"
    "#include <stdint.h>\n"
    "\n"
    "/* float -> int as the interpreter's ref__f2i: NaN and infinities give 0, clamped. */\n"
    "static inline int32_t pg_f2i32(double x) {\n"
    "    if (!isfinite(x)) return 0;\n"
    "    if (x >= 2147483648.0) return INT32_MAX;\n"
    "    if (x <= -2147483648.0) return INT32_MIN;\n"
    "    return (int32_t)(int64_t)x;\n"
    "}\n"
    "static inline int64_t pg_f2i64(double x) {\n"
    "    if (!isfinite(x)) return 0;\n"
    "    if (x >= 9223372036854775808.0) return INT64_MAX;\n"
    "    if (x <= -9223372036854775808.0) return INT64_MIN;\n"
    "    return (int64_t)x;\n"
    "}\n"
    "/* Integer power by squaring, wrapping; negative exponents as the interpreter's ipow. */\n"
    "static inline int64_t pg_ipow(int64_t base, int64_t e) {\n"
    "    if (e < 0) return base == 1 ? 1 : base == -1 ? ((e & 1) ? -1 : 1) : 0;\n"
    "    uint64_t r = 1, b = (uint64_t)base;\n"
    "    for (uint64_t k = (uint64_t)e; k; k >>= 1) {\n"
    "        if (k & 1) r *= b;\n"
    "        b *= b;\n"
    "    }\n"
    "    return (int64_t)r;\n"
    "}\n";

/* Emits the header comment: the iteration space and the SSA list, for `explain`. */
static void rc_comment(rc_buf_t *b, const kir_kernel_t *k) {
    rc_printf(b, "/* " RC_PLACEHOLDER ": generated by picogradd (kernels/codegen/render_c.c).\n"
                 " * iteration space [");
    for (int d = 0; d < k->rank; d++)
        rc_printf(b, "%s%" PRId64, d ? ", " : "", k->shape[d]);
    rc_printf(b, "]");
    if (rc_has_reduce(k)) {
        rc_printf(b, ", %s over axes {", rc_prim_name(k->reduce));
        for (int d = 0, first = 1; d < k->rank; d++)
            if (k->reduced[d]) {
                rc_printf(b, "%s%d", first ? "" : ", ", d);
                first = 0;
            }
        rc_printf(b, "}");
    }
    rc_printf(b, " -> %" PRIu64 " %s outputs\n", kir_out_numel(k),
              proto_dtype_name(k->out_dtype) ? proto_dtype_name(k->out_dtype) : "?");
    for (int n = 0; n < k->nin; n++) {
        rc_printf(b, " *   in%d: %s, offset %" PRId64 ", strides [", n,
                  proto_dtype_name(k->in[n].dtype) ? proto_dtype_name(k->in[n].dtype) : "?",
                  k->in[n].off);
        for (int d = 0; d < k->rank; d++)
            rc_printf(b, "%s%" PRId64, d ? ", " : "", k->in[n].strides[d]);
        rc_printf(b, "]%s\n", rc_is_contiguous(k, &k->in[n]) ? " (contiguous)" : "");
    }
    for (int j = 0; j < k->nvals; j++) {
        const kir_val_t *v = &k->vals[j];
        rc_printf(b, " *   v%d = ", j);
        if (v->kind == KIR_LOAD) {
            rc_printf(b, "load in%d", v->input);
        } else if (v->kind == KIR_CONST) {
            rc_printf(b, "const %.17g", v->value);
        } else {
            rc_printf(b, "%s v%d", rc_prim_name(v->prim), v->a);
            if (v->b >= 0)
                rc_printf(b, " v%d", v->b);
            if (v->c >= 0)
                rc_printf(b, " v%d", v->c);
        }
        const char *dn = proto_dtype_name(v->dtype);
        rc_printf(b, " : %s\n", dn ? dn : "?");
    }
    rc_printf(b, " */\n");
}

/* Checks what the renderer indexes with, so a malformed kernel cannot make it read out of
 * bounds (the fusion pass builds kernels; this is a guard against its bugs, not the wire). */
static bool rc_valid(const kir_kernel_t *k) {
    if (k->rank < 0 || k->rank > PROTO_MAX_RANK || k->nin < 0 || k->nin > KIR_MAX_INPUTS ||
        k->nvals < 1 || k->nvals > KIR_MAX_VALS || (unsigned)k->out_dtype >= PG_DTYPE_COUNT)
        return false;
    for (int d = 0; d < k->rank; d++)
        if (k->shape[d] < 0)
            return false;
    for (int n = 0; n < k->nin; n++)
        if ((unsigned)k->in[n].dtype >= PG_DTYPE_COUNT)
            return false;
    for (int j = 0; j < k->nvals; j++) {
        const kir_val_t *v = &k->vals[j];
        if ((unsigned)v->dtype >= PG_DTYPE_COUNT)
            return false;
        if (v->kind == KIR_LOAD && (v->input < 0 || v->input >= k->nin))
            return false;
        if (v->kind == KIR_OP) {
            if (v->a < 0 || v->a >= j || v->b >= j || v->c >= j)
                return false;
            if (v->prim == PRIM_where && (v->b < 0 || v->c < 0))
                return false;
        }
    }
    return true;
}

char *kir_render_c(const kir_kernel_t *k, char *name, size_t name_cap) {
    if (name_cap < RC_NAME_LEN + 1 || !rc_valid(k))
        return NULL;
    rc_buf_t b = {0};
    rc_comment(&b, k);
    rc_printf(&b, "%s\n", rc_prelude);
    rc_printf(&b, "void " RC_PLACEHOLDER "(void *const *bufs, int64_t start, int64_t end) {\n");
    rc_printf(&b, "    %s *restrict out = (%s *)bufs[0];\n", rc_ctype(k->out_dtype),
              rc_ctype(k->out_dtype));
    for (int n = 0; n < k->nin; n++) {
        const char *t = rc_ctype(k->in[n].dtype);
        rc_printf(&b, "    const %s *restrict in%d = (const %s *)bufs[%d];\n", t, n, t, n + 1);
    }
    if (rc_has_reduce(k))
        rc_loop_reduce(&b, k);
    else
        rc_loop_elementwise(&b, k);
    rc_printf(&b, "}\n");
    if (b.oom) {
        pg_free(b.p);
        return NULL;
    }
    /* The name is a hash of everything else, so equal kernels get equal names and sources. */
    snprintf(name, name_cap, "pg_k_%016" PRIx64, kir_hash(KIR_HASH_INIT, b.p, b.n));
    for (char *p = b.p; (p = strstr(p, RC_PLACEHOLDER)) != NULL; p += RC_NAME_LEN)
        memcpy(p, name, RC_NAME_LEN);
    return b.p;
}

uint64_t kir_hash(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
