/*
 * test_ref.c - unit tests of the reference interpreter (kernels/ref/): Philox known answers,
 * elementwise ops on broadcast views, reductions of permuted views, slicing and flipping, matmul
 * against a plain loop in every operand layout, index errors, and results that must not change
 * with the thread count.
 *
 * Graphs are built by filling graph_t by hand (not through graph_add), so each test states exactly
 * the node the interpreter receives, including the shapes and strides the builder would produce.
 * Every test ends by checking that no tensor, budget byte or internal allocation is left behind.
 */
#include "../../kernels/ref/ref_impl.h"
#include "../../server/mem.h"
#include "task.h"
#include "tgraph.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

/* =============================================================================================
 * Hand-built graphs
 * =========================================================================================== */

/* Appends a unary/binary/... node whose output has in[0]'s shape. */
static int32_t tg_like(graph_t *g, prim_t op, const int32_t *in, int nin, pg_dtype_t dtype) {
    const gnode_t *x = &g->nodes[in[0]];
    return tg_add(g, op, in, nin, NULL, dtype, x->rank, x->shape);
}

/* Evaluates every node in order; returns the first failure's code (0 when all succeed). */
static int tg_run(const graph_t *g, ref_view_t *vals, proto_err_t *err) {
    for (int32_t k = 0; k < g->n; k++) {
        int rc = ref_eval(g, k, vals, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void tg_release(const graph_t *g, ref_view_t *vals) {
    for (int32_t k = 0; k < g->n; k++)
        ref_view_release(&vals[k]);
}

/* Reads element j (C order) of a view as a double. */
static double at(const ref_view_t *v, uint64_t j) {
    int64_t off = v->off;
    for (int d = v->rank - 1; d >= 0; d--) {
        off += (int64_t)(j % (uint64_t)v->shape[d]) * v->strides[d];
        j /= (uint64_t)v->shape[d];
    }
    return ref__ld_f(v->t->data, v->dtype, off);
}

#define ASSERT_NEAR(a, b, tol)                                                                     \
    do {                                                                                           \
        double a_ = (a), b_ = (b);                                                                 \
        if (!(fabs(a_ - b_) <= (tol))) {                                                           \
            fprintf(stderr, "%s:%d: %s ~ %s failed: %.17g vs %.17g\n", __FILE__, __LINE__, #a, #b, \
                    a_, b_);                                                                       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Checks that everything a test allocated came back. */
static void assert_no_leaks(void) {
    ASSERT_EQ(tensor_live(), 0);
    ASSERT_EQ(mem_in_use(), 0);
    ASSERT_EQ(pg_malloc_live(), 0);
}

/* =============================================================================================
 * Philox
 * =========================================================================================== */

TEST_IMPL(philox_kat) {
    /* Known answers from Random123's examples/kat_vectors ("philox4x32 10 ctr ctr ctr ctr key key
     * -> out out out out"): zero, all-ones and the digits of pi as counter and key. */
    static const struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t k = 0; k < sizeof(kat) / sizeof(kat[0]); k++) {
        uint32_t out[4];
        ref__philox4x32_10(kat[k].ctr, kat[k].key, out);
        for (int w = 0; w < 4; w++)
            ASSERT_EQ(out[w], kat[k].out[w]);
    }
    return 0;
}

TEST_IMPL(rand_layout) {
    /* rand element i is Philox(key = seed, counter = offset + i) mapped as leaf.c documents. */
    graph_t g;
    tg_init(&g);
    int64_t shape[1] = {5};
    gattr_t a = {.seed = 0x0123456789abcdefull, .offset = 0xfffffffffffffffeull};
    int32_t r32 = tg_add(&g, PRIM_rand, NULL, 0, &a, PG_FLOAT32, 1, shape);
    int32_t r64 = tg_add(&g, PRIM_rand, NULL, 0, &a, PG_FLOAT64, 1, shape);
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    for (uint64_t j = 0; j < 5; j++) {
        uint64_t c = a.offset + j; /* wraps past 2^64 - 1 */
        uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), 0, 0};
        uint32_t key[2] = {0x89abcdef, 0x01234567};
        uint32_t x[4];
        ref__philox4x32_10(ctr, key, x);
        ASSERT(at(&vals[r32], j) == (double)(x[0] >> 8) / 16777216.0);
        uint64_t bits = (((uint64_t)x[0] << 32) | x[1]) >> 11;
        ASSERT(at(&vals[r64], j) == (double)bits / 9007199254740992.0);
        ASSERT(at(&vals[r32], j) >= 0 && at(&vals[r32], j) < 1);
    }
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

TEST_IMPL(randn_moments) {
    graph_t g;
    tg_init(&g);
    int64_t shape[1] = {200000};
    gattr_t a = {.seed = 42};
    int32_t r = tg_add(&g, PRIM_randn, NULL, 0, &a, PG_FLOAT64, 1, shape);
    int32_t u = tg_add(&g, PRIM_rand, NULL, 0, &a, PG_FLOAT32, 1, shape);
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    double s = 0, s2 = 0, us = 0;
    for (uint64_t j = 0; j < 200000; j++) {
        double z = at(&vals[r], j);
        ASSERT(isfinite(z));
        s += z;
        s2 += z * z;
        us += at(&vals[u], j);
    }
    ASSERT_NEAR(s / 200000, 0.0, 0.01);
    ASSERT_NEAR(s2 / 200000, 1.0, 0.02);
    ASSERT_NEAR(us / 200000, 0.5, 0.005);
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

/* =============================================================================================
 * Elementwise
 * =========================================================================================== */

TEST_IMPL(add_expanded) {
    /* [2, 3] + [3]: the builder expands b to [2, 3] with stride 0 on axis 0. */
    graph_t g;
    tg_init(&g);
    float av[6] = {1, 2, 3, 4, 5, 6}, bv[3] = {10, 20, 30};
    int64_t s23[2] = {2, 3}, s3[1] = {3};
    int32_t a = tg_const(&g, PG_FLOAT32, 2, s23, av);
    int32_t b = tg_const(&g, PG_FLOAT32, 1, s3, bv);
    int32_t be = tg_add(&g, PRIM_expand, &b, 1, NULL, PG_FLOAT32, 2, s23);
    int32_t sum = tg_add(&g, PRIM_add, (int32_t[]){a, be}, 2, NULL, PG_FLOAT32, 2, s23);
    int32_t gt = tg_add(&g, PRIM_gt, (int32_t[]){sum, be}, 2, NULL, PG_BOOL, 2, s23);
    int32_t k25 = tg_add(&g, PRIM_full, NULL, 0, &(gattr_t){.value = 25}, PG_FLOAT32, 0, NULL);
    int32_t k25e = tg_add(&g, PRIM_expand, &k25, 1, NULL, PG_FLOAT32, 2, s23);
    int32_t lt = tg_add(&g, PRIM_lt, (int32_t[]){sum, k25e}, 2, NULL, PG_BOOL, 2, s23);
    int32_t w = tg_add(&g, PRIM_where, (int32_t[]){lt, a, be}, 3, NULL, PG_FLOAT32, 2, s23);
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    ASSERT_EQ(vals[be].strides[0], 0);
    ASSERT(vals[be].t == vals[b].t); /* a view: no copy */
    for (uint64_t j = 0; j < 6; j++) {
        ASSERT(at(&vals[sum], j) == av[j] + bv[j % 3]);
        ASSERT(at(&vals[gt], j) == 1);
        ASSERT(at(&vals[w], j) == (av[j] + bv[j % 3] < 25 ? av[j] : bv[j % 3]));
    }
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

TEST_IMPL(elementwise_semantics) {
    graph_t g;
    tg_init(&g);
    double xv[6] = {-2.5, -0.0, NAN, 3.7, INFINITY, -1e30};
    int64_t iv[6] = {2, -3, INT64_MIN, 0, 1, -1};
    int64_t ev[6] = {10, 3, 2, -1, -5, -3};
    int64_t s6[1] = {6};
    int32_t x = tg_const(&g, PG_FLOAT64, 1, s6, xv);
    int32_t xi = tg_const(&g, PG_INT64, 1, s6, iv);
    int32_t ei = tg_const(&g, PG_INT64, 1, s6, ev);
    gattr_t to_i32 = {.dtype = PG_INT32}, to_bool = {.dtype = PG_BOOL};
    int32_t c32 = tg_add(&g, PRIM_cast, &x, 1, &to_i32, PG_INT32, 1, s6);
    int32_t cb = tg_add(&g, PRIM_cast, &x, 1, &to_bool, PG_BOOL, 1, s6);
    int32_t sg = tg_like(&g, PRIM_sign, &x, 1, PG_FLOAT64);
    int32_t mx = tg_like(&g, PRIM_maximum, (int32_t[]){x, x}, 2, PG_FLOAT64);
    int32_t rl = tg_like(&g, PRIM_relu, &x, 1, PG_FLOAT64);
    int32_t ng = tg_like(&g, PRIM_neg, &xi, 1, PG_INT64);
    int32_t pw = tg_like(&g, PRIM_pow, (int32_t[]){xi, ei}, 2, PG_INT64);
    int64_t bigv[4] = {(1ll << 53) + 1, (1ll << 31) + 5, (1ll << 60) + (1ll << 36) + 1, -1};
    int32_t big = tg_const(&g, PG_INT64, 1, (int64_t[]){4}, bigv);
    int32_t bf32 = tg_add(&g, PRIM_cast, &big, 1, &(gattr_t){.dtype = PG_FLOAT32}, PG_FLOAT32, 1,
                          (int64_t[]){4});
    int32_t bf64 = tg_add(&g, PRIM_cast, &big, 1, &(gattr_t){.dtype = PG_FLOAT64}, PG_FLOAT64, 1,
                          (int64_t[]){4});
    int32_t bi32 = tg_add(&g, PRIM_cast, &big, 1, &to_i32, PG_INT32, 1, (int64_t[]){4});
    int32_t bb = tg_add(&g, PRIM_cast, &cb, 1, &(gattr_t){.dtype = PG_FLOAT32}, PG_FLOAT32, 1, s6);
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    double want_c32[6] = {-2, 0, 0, 3, 0, INT32_MIN}; /* NaN, inf -> 0; clamped */
    double want_cb[6] = {1, 0, 1, 1, 1, 1};
    for (uint64_t j = 0; j < 6; j++) {
        ASSERT(at(&vals[c32], j) == want_c32[j]);
        ASSERT(at(&vals[cb], j) == want_cb[j]);
    }
    ASSERT(at(&vals[sg], 0) == -1 && at(&vals[sg], 1) == 0 && isnan(at(&vals[sg], 2)));
    ASSERT(isnan(at(&vals[mx], 2)) && isnan(at(&vals[rl], 2)) && at(&vals[rl], 0) == 0);
    const int64_t *n = (const int64_t *)vals[ng].t->data, *p = (const int64_t *)vals[pw].t->data;
    ASSERT_EQ(n[2], INT64_MIN); /* wraps */
    ASSERT_EQ(p[0], 1024);
    ASSERT_EQ(p[1], -27);
    ASSERT_EQ(p[2], 0); /* (-2^63)^2 wraps to 0 */
    ASSERT_EQ(p[3], 0); /* 0^-1 */
    ASSERT_EQ(p[4], 1); /* 1^-5 */
    ASSERT_EQ(p[5], -1); /* (-1)^-3 */
    for (int j = 0; j < 4; j++) { /* int64 -> float rounds once, directly; -> int32 wraps */
        ASSERT(((const float *)vals[bf32].t->data)[j] == (float)bigv[j]);
        ASSERT(((const double *)vals[bf64].t->data)[j] == (double)bigv[j]);
        ASSERT_EQ(((const int32_t *)vals[bi32].t->data)[j], (int32_t)(uint32_t)bigv[j]);
    }
    for (uint64_t j = 0; j < 6; j++)
        ASSERT(at(&vals[bb], j) == want_cb[j]);
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

/* Expected unary results, written differently from elementwise.c where there is another way. */
static double want_unary(prim_t op, double x) {
    switch (op) {
    case PRIM_neg: return 0 - x;
    case PRIM_abs: return x < 0 ? -x : x;
    case PRIM_exp: return pow(2.718281828459045, x);
    case PRIM_log: return log2(x) * 0.6931471805599453;
    case PRIM_sqrt: return pow(x, 0.5);
    case PRIM_rsqrt: return pow(x, -0.5);
    case PRIM_sin: return cos(x - 1.5707963267948966);
    case PRIM_cos: return sin(x + 1.5707963267948966);
    case PRIM_tanh: return (exp(2 * x) - 1) / (exp(2 * x) + 1);
    case PRIM_sigmoid: return 0.5 * (1 + tanh(x / 2));
    case PRIM_relu: return x > 0 ? x : 0;
    case PRIM_gelu: return 0.5 * x * erfc(-x / sqrt(2.0));
    case PRIM_gelu_tanh:
        return 0.5 * x * (1 + tanh(sqrt(2 / 3.141592653589793) * (x + 0.044715 * pow(x, 3))));
    case PRIM_silu: return x * 0.5 * (1 + tanh(x / 2));
    case PRIM_reciprocal: return pow(x, -1);
    case PRIM_square: return pow(x, 2);
    case PRIM_sign: return x > 0 ? 1 : x < 0 ? -1 : 0;
    case PRIM_logical_not: return x == 0;
    case PRIM_erf: return 1 - erfc(x);
    default: return NAN;
    }
}

static double want_binary(prim_t op, double a, double b) {
    switch (op) {
    case PRIM_add: return a + b;
    case PRIM_sub: return a - b;
    case PRIM_mul: return a * b;
    case PRIM_div: return a / b;
    case PRIM_pow: return pow(a, b);
    case PRIM_maximum: return fmax(a, b);
    case PRIM_minimum: return fmin(a, b);
    case PRIM_eq: return a == b;
    case PRIM_ne: return a != b;
    case PRIM_lt: return a < b;
    case PRIM_le: return a <= b;
    case PRIM_gt: return a > b;
    case PRIM_ge: return a >= b;
    case PRIM_logical_and: return a != 0 && b != 0;
    case PRIM_logical_or: return a != 0 || b != 0;
    default: return NAN;
    }
}

TEST_IMPL(unary_binary_all_dtypes) {
    /* Every unary and binary primitive on every dtype it is defined for, on a transposed input
     * (so the kernels follow strides), against want_unary / want_binary. */
    static const prim_t unary[] = {
        PRIM_neg, PRIM_abs, PRIM_exp, PRIM_log, PRIM_sqrt, PRIM_rsqrt, PRIM_sin, PRIM_cos,
        PRIM_tanh, PRIM_sigmoid, PRIM_relu, PRIM_gelu, PRIM_gelu_tanh, PRIM_silu,
        PRIM_reciprocal, PRIM_square, PRIM_sign, PRIM_logical_not, PRIM_erf};
    static const prim_t binary[] = {
        PRIM_add, PRIM_sub, PRIM_mul, PRIM_div, PRIM_pow, PRIM_maximum, PRIM_minimum, PRIM_eq,
        PRIM_ne, PRIM_lt, PRIM_le, PRIM_gt, PRIM_ge, PRIM_logical_and, PRIM_logical_or};
    const pg_dtype_t dts[] = {PG_FLOAT32, PG_FLOAT64, PG_INT32, PG_INT64, PG_BOOL};
    for (size_t di = 0; di < sizeof(dts) / sizeof(dts[0]); di++) {
        pg_dtype_t dt = dts[di];
        bool fl = ref__is_float(dt);
        /* 2 x 3 values, stored transposed: x = permute(x0 [3, 2]) */
        double xs[6] = {0.5, 2, 1.25, 3, 0.75, 1}, ys[6] = {2, 2, -1.5, 0.25, 3, 1};
        if (!fl) {
            double xi[6] = {-3, 0, 4, 2, -1, 7}, yi[6] = {2, 0, -2, 3, -1, 1};
            memcpy(xs, xi, sizeof(xs));
            memcpy(ys, yi, sizeof(ys));
        }
        if (dt == PG_BOOL) {
            double xb[6] = {1, 0, 1, 0, 1, 1}, yb[6] = {1, 1, 0, 0, 0, 1};
            memcpy(xs, xb, sizeof(xs));
            memcpy(ys, yb, sizeof(ys));
        }
        graph_t g;
        tg_init(&g);
        uint8_t xbuf[48], ybuf[48];
        for (int j = 0; j < 6; j++) { /* x0[r][c] = xs[c * 3 + r] so that x = x0^T is xs */
            ref__st_f(xbuf, dt, (j % 3) * 2 + j / 3, xs[j]);
            ref__st_f(ybuf, dt, (j % 3) * 2 + j / 3, ys[j]);
        }
        int64_t s32[2] = {3, 2}, s23[2] = {2, 3};
        gattr_t tr = {.dims = {1, 0}, .ndims = 2};
        int32_t x0 = tg_const(&g, dt, 2, s32, xbuf), y0 = tg_const(&g, dt, 2, s32, ybuf);
        int32_t x = tg_add(&g, PRIM_permute, &x0, 1, &tr, dt, 2, s23);
        int32_t y = tg_add(&g, PRIM_permute, &y0, 1, &tr, dt, 2, s23);
        int32_t uid[32], bid[32];
        prim_t uop[32], bop[32];
        int nu = 0, nb = 0;
        for (size_t k = 0; k < sizeof(unary) / sizeof(unary[0]); k++) {
            prim_t op = unary[k];
            bool float_only = op != PRIM_neg && op != PRIM_abs && op != PRIM_relu &&
                              op != PRIM_square && op != PRIM_sign && op != PRIM_logical_not;
            if ((float_only && !fl) || (dt == PG_BOOL && op != PRIM_logical_not))
                continue;
            uop[nu] = op;
            uid[nu++] = tg_like(&g, op, &x, 1, op == PRIM_logical_not ? PG_BOOL : dt);
        }
        for (size_t k = 0; k < sizeof(binary) / sizeof(binary[0]); k++) {
            prim_t op = binary[k];
            bool cmp = op >= PRIM_eq && op <= PRIM_logical_or;
            if ((op == PRIM_div && !fl) || (dt == PG_BOOL && !cmp && op != PRIM_maximum &&
                                            op != PRIM_minimum))
                continue;
            bop[nb] = op;
            bid[nb++] = tg_like(&g, op, (int32_t[]){x, y}, 2, cmp ? PG_BOOL : dt);
        }
        ref_view_t vals[TG_CAP] = {0};
        proto_err_t err;
        ASSERT_EQ(tg_run(&g, vals, &err), 0);
        double tol = dt == PG_FLOAT32 ? 2e-7 : dt == PG_FLOAT64 ? 1e-15 : 0;
        for (int j = 0; j < 6; j++) {
            ASSERT(at(&vals[x], (uint64_t)j) == xs[j]);
            for (int k = 0; k < nu; k++) {
                double w = want_unary(uop[k], xs[j]);
                if (uop[k] == PRIM_abs || uop[k] == PRIM_neg || uop[k] == PRIM_square)
                    w = fl ? w : (double)(int64_t)w;
                ASSERT_NEAR(at(&vals[uid[k]], (uint64_t)j), w, tol * (1 + fabs(w)));
            }
            for (int k = 0; k < nb; k++) {
                double w = want_binary(bop[k], xs[j], ys[j]);
                if (bop[k] == PRIM_pow && !fl) /* integer power: 2^-2 and 4^-2 are 0 */
                    w = ys[j] < 0 && fabs(xs[j]) != 1 ? 0 : w;
                ASSERT_NEAR(at(&vals[bid[k]], (uint64_t)j), w, tol * (1 + fabs(w)));
            }
        }
        tg_release(&g, vals);
        tg_free(&g);
    }
    assert_no_leaks();
    return 0;
}

/* =============================================================================================
 * Reductions
 * =========================================================================================== */

TEST_IMPL(sum_permuted) {
    /* x [2, 3, 4] = arange; p = permute(2, 0, 1) -> [4, 2, 3]; sum over {0, 2}: p's axes 0 and 2
     * are x's axes 2 and 1, so out[b] = sum over x[b, :, :]. */
    graph_t g;
    tg_init(&g);
    int64_t s234[3] = {2, 3, 4}, s423[3] = {4, 2, 3}, s2[1] = {2}, s121[3] = {1, 2, 1};
    gattr_t ar = {.astart = 0, .astep = 1};
    int32_t x = tg_add(&g, PRIM_arange, NULL, 0, &ar, PG_FLOAT32, 3, s234);
    gattr_t perm = {.dims = {2, 0, 1}, .ndims = 3};
    int32_t p = tg_add(&g, PRIM_permute, &x, 1, &perm, PG_FLOAT32, 3, s423);
    gattr_t red = {.dims = {0, 2}, .ndims = 2};
    int32_t s = tg_add(&g, PRIM_sum, &p, 1, &red, PG_FLOAT32, 1, s2);
    red.keepdim = true;
    int32_t sk = tg_add(&g, PRIM_max, &p, 1, &red, PG_FLOAT32, 3, s121);
    gattr_t one = {.dims = {1}, .ndims = 1};
    int32_t am = tg_add(&g, PRIM_argmax, &p, 1, &one, PG_INT64, 2, (int64_t[]){4, 3});
    int32_t cs = tg_add(&g, PRIM_cumsum, &p, 1, &one, PG_FLOAT32, 3, s423);
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    ASSERT(at(&vals[s], 0) == 66);  /* 0 + ... + 11 */
    ASSERT(at(&vals[s], 1) == 210); /* 12 + ... + 23 */
    ASSERT(at(&vals[sk], 0) == 11);
    ASSERT(at(&vals[sk], 1) == 23);
    for (uint64_t j = 0; j < 12; j++)
        ASSERT(at(&vals[am], j) == 1); /* along x's axis 0, the second block is larger */
    for (int64_t c = 0; c < 4; c++)
        for (int64_t b = 0; b < 3; b++) { /* cs[c, 1, b] = x[0, b, c] + x[1, b, c] */
            double want = (double)(b * 4 + c) + (double)(12 + b * 4 + c);
            ASSERT(at(&vals[cs], (uint64_t)(c * 6 + 3 + b)) == want);
        }
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

TEST_IMPL(reduce_edges) {
    graph_t g;
    tg_init(&g);
    int64_t s30[2] = {3, 0}, s3[1] = {3}, s4[1] = {4};
    int32_t e = tg_add(&g, PRIM_full, NULL, 0, &(gattr_t){.value = 1}, PG_FLOAT64, 2, s30);
    gattr_t r1 = {.dims = {1}, .ndims = 1};
    int32_t es = tg_add(&g, PRIM_sum, &e, 1, &r1, PG_FLOAT64, 1, s3);
    int32_t ep = tg_add(&g, PRIM_prod, &e, 1, &r1, PG_FLOAT64, 1, s3);
    int32_t eb = tg_add(&g, PRIM_full, NULL, 0, NULL, PG_BOOL, 2, s30);
    int32_t ea = tg_add(&g, PRIM_all, &eb, 1, &r1, PG_BOOL, 1, s3);
    int32_t eo = tg_add(&g, PRIM_any, &eb, 1, &r1, PG_BOOL, 1, s3);
    double nv[4] = {1, NAN, 5, NAN};
    int32_t x = tg_const(&g, PG_FLOAT64, 1, s4, nv);
    gattr_t r0 = {.dims = {0}, .ndims = 1};
    int32_t amx = tg_add(&g, PRIM_argmax, &x, 1, &r0, PG_INT64, 0, NULL);
    int32_t amn = tg_add(&g, PRIM_argmin, &x, 1, &r0, PG_INT64, 0, NULL);
    int32_t mx = tg_add(&g, PRIM_max, &x, 1, &r0, PG_FLOAT64, 0, NULL);
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    ASSERT(vals[e].t == NULL);
    for (uint64_t j = 0; j < 3; j++) {
        ASSERT(at(&vals[es], j) == 0);
        ASSERT(at(&vals[ep], j) == 1);
        ASSERT(at(&vals[ea], j) == 1);
        ASSERT(at(&vals[eo], j) == 0);
    }
    ASSERT(at(&vals[amx], 0) == 1 && at(&vals[amn], 0) == 1); /* the first NaN wins both */
    ASSERT(isnan(at(&vals[mx], 0)));
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

/* =============================================================================================
 * Movement
 * =========================================================================================== */

TEST_IMPL(slice_step_flip) {
    /* x [5, 6] = arange(30); s = x[1::2, 0::3] -> [2, 2] = {{6, 9}, {18, 21}}; flip axis 1. */
    graph_t g;
    tg_init(&g);
    int64_t s56[2] = {5, 6}, s22[2] = {2, 2};
    int32_t x = tg_add(&g, PRIM_arange, NULL, 0, &(gattr_t){.astep = 1}, PG_INT64, 2, s56);
    gattr_t sl = {.start = {1, 0}, .step = {2, 3}};
    int32_t s = tg_add(&g, PRIM_slice, &x, 1, &sl, PG_INT64, 2, s22);
    gattr_t fl = {.dims = {1}, .ndims = 1};
    int32_t f = tg_add(&g, PRIM_flip, &s, 1, &fl, PG_INT64, 2, s22);
    int32_t r = tg_add(&g, PRIM_reshape, &f, 1, NULL, PG_INT64, 1, (int64_t[]){4});
    fl.dims[0] = 0;
    int32_t ff = tg_add(&g, PRIM_flip, &x, 1, &fl, PG_INT64, 2, s56);
    int32_t rr = tg_add(&g, PRIM_reshape, &ff, 1, NULL, PG_INT64, 1, (int64_t[]){30});
    gattr_t rows = {.start = {2, 0}, .step = {1, 1}}; /* x[2:4]: contiguous at offset 12 */
    int32_t xr = tg_add(&g, PRIM_slice, &x, 1, &rows, PG_INT64, 2, (int64_t[]){2, 6});
    int32_t xv = tg_add(&g, PRIM_reshape, &xr, 1, NULL, PG_INT64, 3, (int64_t[]){3, 1, 4});
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    ASSERT(vals[s].t == vals[x].t && vals[f].t == vals[x].t); /* views */
    ASSERT_EQ(vals[s].off, 6);
    ASSERT_EQ(vals[s].strides[0], 12);
    ASSERT_EQ(vals[s].strides[1], 3);
    ASSERT_EQ(vals[f].off, 9);
    ASSERT_EQ(vals[f].strides[1], -3);
    double want[4] = {9, 6, 21, 18};
    for (uint64_t j = 0; j < 4; j++) {
        ASSERT(at(&vals[f], j) == want[j]);
        ASSERT(at(&vals[r], j) == want[j]); /* reshape of a strided view copies */
    }
    ASSERT(vals[r].t != vals[x].t);
    ASSERT(vals[xv].t == vals[x].t && vals[xv].off == 12);
    for (uint64_t j = 0; j < 12; j++)
        ASSERT(at(&vals[xv], j) == (double)(12 + j));
    for (uint64_t j = 0; j < 30; j++)
        ASSERT(at(&vals[rr], j) == (double)((4 - j / 6) * 6 + j % 6));
    /* materialize: a fresh contiguous copy, or the tensor itself when it already is one */
    tensor_t *t = NULL;
    ASSERT_EQ(ref_materialize(&vals[f], &t, &err), 0);
    ASSERT_EQ(t->rank, 2);
    ASSERT_EQ(((int64_t *)t->data)[1], 6);
    tensor_unref(t);
    ASSERT_EQ(ref_materialize(&vals[x], &t, &err), 0);
    ASSERT(t == vals[x].t);
    tensor_unref(t);
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

TEST_IMPL(pad_cat_window) {
    graph_t g;
    tg_init(&g);
    int64_t s23[2] = {2, 3};
    int32_t x = tg_add(&g, PRIM_arange, NULL, 0, &(gattr_t){.astart = 1, .astep = 1}, PG_INT32,
                       2, s23); /* {{1, 2, 3}, {4, 5, 6}} */
    gattr_t pa = {.start = {1, -1}, .stop = {0, 2}, .value = -7};
    int32_t p = tg_add(&g, PRIM_pad, &x, 1, &pa, PG_INT32, 2, (int64_t[]){3, 4});
    gattr_t ca = {.dims = {1}, .ndims = 1};
    int32_t c = tg_add(&g, PRIM_cat, (int32_t[]){x, x, x}, 3, &ca, PG_INT32, 2, (int64_t[]){2, 9});
    /* window over [1, 1, 4, 4] = arange(16): kernel 2x2, stride 2, dilation 1 -> [1,1,2,2,2,2] */
    int32_t img = tg_add(&g, PRIM_arange, NULL, 0, &(gattr_t){.astep = 1}, PG_FLOAT32, 4,
                         (int64_t[]){1, 1, 4, 4});
    gattr_t wa = {.win = {2, 2, 2, 2, 1, 1}};
    int32_t w = tg_add(&g, PRIM_window, &img, 1, &wa, PG_FLOAT32, 6, (int64_t[]){1, 1, 2, 2, 2, 2});
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    double want_p[12] = {-7, -7, -7, -7, 2, 3, -7, -7, 5, 6, -7, -7};
    for (uint64_t j = 0; j < 12; j++)
        ASSERT(at(&vals[p], j) == want_p[j]);
    for (uint64_t j = 0; j < 18; j++)
        ASSERT(at(&vals[c], j) == (double)((j / 9) * 3 + (j % 9) % 3 + 1));
    /* w[0,0,oh,ow,kh,kw] = img[2*oh + kh, 2*ow + kw] */
    for (uint64_t j = 0; j < 16; j++) {
        uint64_t oh = j / 8, ow = (j / 4) % 2, kh = (j / 2) % 2, kw = j % 2;
        ASSERT(at(&vals[w], j) == (double)((2 * oh + kh) * 4 + 2 * ow + kw));
    }
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

TEST_IMPL(unwindow_sums_overlaps) {
    /* unwindow(window(img)) with overlapping, strided and dilated windows: every input element
     * times the number of windows that read it (a brute-force count). */
    const int64_t cfg[2][6] = {{3, 3, 1, 1, 1, 1}, {2, 3, 2, 1, 2, 1}};
    for (int k = 0; k < 2; k++) {
        graph_t g;
        tg_init(&g);
        int64_t H = 6, W = 5, s[4] = {2, 1, H, W};
        int32_t img = tg_add(&g, PRIM_arange, NULL, 0, &(gattr_t){.astart = 1, .astep = 1},
                             PG_FLOAT64, 4, s);
        gattr_t wa = {0};
        memcpy(wa.win, cfg[k], sizeof(wa.win));
        int64_t oh = (H - (cfg[k][4] * (cfg[k][0] - 1) + 1)) / cfg[k][2] + 1;
        int64_t ow = (W - (cfg[k][5] * (cfg[k][1] - 1) + 1)) / cfg[k][3] + 1;
        int32_t w = tg_add(&g, PRIM_window, &img, 1, &wa, PG_FLOAT64, 6,
                           (int64_t[]){2, 1, oh, ow, cfg[k][0], cfg[k][1]});
        int32_t u = tg_add(&g, PRIM_unwindow, &w, 1, &wa, PG_FLOAT64, 4, s);
        ref_view_t vals[TG_CAP] = {0};
        proto_err_t err;
        ASSERT_EQ(tg_run(&g, vals, &err), 0);
        double count[6][5] = {{0}};
        for (int64_t a = 0; a < oh; a++)
            for (int64_t b = 0; b < ow; b++)
                for (int64_t p = 0; p < cfg[k][0]; p++)
                    for (int64_t q = 0; q < cfg[k][1]; q++)
                        count[a * cfg[k][2] + p * cfg[k][4]][b * cfg[k][3] + q * cfg[k][5]] += 1;
        for (uint64_t j = 0; j < 60; j++)
            ASSERT(at(&vals[u], j) == (double)(j + 1) * count[(j / 5) % 6][j % 5]);
        tg_release(&g, vals);
        tg_free(&g);
    }
    assert_no_leaks();
    return 0;
}

/* =============================================================================================
 * Matmul
 * =========================================================================================== */

/* Checks C = A @ B for views of any layout against a plain loop in double. */
static void check_matmul(const ref_view_t *a, const ref_view_t *b, const ref_view_t *c,
                         double tol) {
    int r = c->rank - 2;
    int64_t m = c->shape[r], n = c->shape[r + 1], k = a->shape[r + 1];
    uint64_t batches = ref__numel(c) / (uint64_t)(m * n);
    for (uint64_t bi = 0; bi < batches; bi++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double acc = 0;
                for (int64_t q = 0; q < k; q++)
                    acc += at(a, bi * (uint64_t)(m * k) + (uint64_t)(i * k + q)) *
                           at(b, bi * (uint64_t)(k * n) + (uint64_t)(q * n + j));
                double got = at(c, bi * (uint64_t)(m * n) + (uint64_t)(i * n + j));
                ASSERT_NEAR(got, acc, tol * (1 + fabs(acc)));
            }
}

static void matmul_layouts(pg_dtype_t dt, double tol) {
    /* A [3, 5, 4] (randn), B [3, 4, 6] in four layouts: contiguous, a transposed view, B[0]
     * broadcast over the batch (stride 0), and a flipped view (copied to scratch). */
    graph_t g;
    tg_init(&g);
    int64_t sa[3] = {3, 5, 4}, sb[3] = {3, 4, 6}, sbt[3] = {3, 6, 4}, sc[3] = {3, 5, 6};
    int32_t a = tg_add(&g, PRIM_randn, NULL, 0, &(gattr_t){.seed = 1}, dt, 3, sa);
    int32_t b = tg_add(&g, PRIM_randn, NULL, 0, &(gattr_t){.seed = 2}, dt, 3, sb);
    int32_t bt0 = tg_add(&g, PRIM_randn, NULL, 0, &(gattr_t){.seed = 3}, dt, 3, sbt);
    int32_t bt = tg_add(&g, PRIM_permute, &bt0, 1, &(gattr_t){.dims = {0, 2, 1}, .ndims = 3}, dt,
                        3, sb);
    int32_t b1 = tg_add(&g, PRIM_slice, &b, 1, &(gattr_t){.step = {1, 1, 1}}, dt, 3,
                        (int64_t[]){1, 4, 6});
    int32_t bx = tg_add(&g, PRIM_expand, &b1, 1, NULL, dt, 3, sb);
    int32_t bf = tg_add(&g, PRIM_flip, &b, 1, &(gattr_t){.dims = {1, 2}, .ndims = 2}, dt, 3, sb);
    int32_t rhs[4] = {b, bt, bx, bf}, outs[4];
    for (int q = 0; q < 4; q++)
        outs[q] = tg_add(&g, PRIM_matmul, (int32_t[]){a, rhs[q]}, 2, NULL, dt, 3, sc);
    int32_t at_ = tg_add(&g, PRIM_permute, &bt0, 1, &(gattr_t){.dims = {0, 2, 1}, .ndims = 3},
                         dt, 3, (int64_t[]){3, 4, 6});
    int32_t tt = tg_add(&g, PRIM_matmul, (int32_t[]){bt0, at_}, 2, NULL, dt, 3,
                        (int64_t[]){3, 6, 6}); /* both operands of one storage, A direct */
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    for (int q = 0; q < 4; q++)
        check_matmul(&vals[a], &vals[rhs[q]], &vals[outs[q]], tol);
    check_matmul(&vals[bt0], &vals[at_], &vals[tt], tol);
    tg_release(&g, vals);
    tg_free(&g);
}

TEST_IMPL(matmul_vs_loop) {
    matmul_layouts(PG_FLOAT64, 1e-12);
    matmul_layouts(PG_FLOAT32, 1e-5);
    /* int64, including a K of 0 (all zeros) */
    graph_t g;
    tg_init(&g);
    int32_t a = tg_add(&g, PRIM_arange, NULL, 0, &(gattr_t){.astart = -5, .astep = 1}, PG_INT64, 2,
                       (int64_t[]){3, 4});
    int32_t b = tg_add(&g, PRIM_arange, NULL, 0, &(gattr_t){.astart = 2, .astep = 3}, PG_INT64, 2,
                       (int64_t[]){4, 2});
    int32_t c = tg_add(&g, PRIM_matmul, (int32_t[]){a, b}, 2, NULL, PG_INT64, 2, (int64_t[]){3, 2});
    int32_t e1 = tg_add(&g, PRIM_full, NULL, 0, NULL, PG_FLOAT32, 2, (int64_t[]){2, 0});
    int32_t e2 = tg_add(&g, PRIM_full, NULL, 0, NULL, PG_FLOAT32, 2, (int64_t[]){0, 3});
    int32_t z = tg_add(&g, PRIM_matmul, (int32_t[]){e1, e2}, 2, NULL, PG_FLOAT32, 2,
                       (int64_t[]){2, 3});
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    check_matmul(&vals[a], &vals[b], &vals[c], 0);
    for (uint64_t j = 0; j < 6; j++)
        ASSERT(at(&vals[z], j) == 0);
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

/* =============================================================================================
 * Indexing
 * =========================================================================================== */

TEST_IMPL(gather_index_errors) {
    graph_t g;
    tg_init(&g);
    int64_t s34[2] = {3, 4}, s24[2] = {2, 4}, s2[1] = {2};
    int32_t x = tg_add(&g, PRIM_arange, NULL, 0, &(gattr_t){.astep = 1}, PG_FLOAT32, 2, s34);
    int64_t good[8] = {2, 0, 1, 2, 0, 0, 0, 1};
    int32_t gi = tg_const(&g, PG_INT64, 2, s24, good);
    gattr_t d0 = {.dims = {0}, .ndims = 1};
    int32_t ga = tg_add(&g, PRIM_gather, (int32_t[]){x, gi}, 2, &d0, PG_FLOAT32, 2, s24);
    int64_t sel[2] = {2, 0};
    int32_t si = tg_const(&g, PG_INT64, 1, s2, sel);
    gattr_t d1 = {.dims = {1}, .ndims = 1};
    int32_t is = tg_add(&g, PRIM_index_select, (int32_t[]){x, si}, 2, &d1, PG_FLOAT32, 2,
                        (int64_t[]){3, 2});
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    for (uint64_t j = 0; j < 8; j++) /* ga[i][j] = x[good[i][j]][j] */
        ASSERT(at(&vals[ga], j) == (double)(good[j] * 4 + (int64_t)(j % 4)));
    for (uint64_t j = 0; j < 6; j++) /* is[i][j] = x[i][sel[j]] */
        ASSERT(at(&vals[is], j) == (double)((j / 2) * 4 + sel[j % 2]));

    /* Out of range, both ends; the node's value is left empty and nothing leaks. */
    int64_t bad[2][8] = {{0, 1, 2, 3, 0, 0, 0, 0}, {0, 0, 0, 0, 0, -1, 0, 0}};
    const char *msg[2] = {"node %d (gather): index 3 is out of range for dim 0 of size 3",
                          "node %d (gather): index -1 is out of range for dim 0 of size 3"};
    for (int k = 0; k < 2; k++) {
        int32_t bi = tg_const(&g, PG_INT64, 2, s24, bad[k]);
        int32_t bg = tg_add(&g, PRIM_gather, (int32_t[]){x, bi}, 2, &d0, PG_FLOAT32, 2, s24);
        ASSERT_EQ(ref_eval(&g, bi, vals, &err), 0);
        ASSERT_EQ(ref_eval(&g, bg, vals, &err), -PG_EBAD_REQUEST);
        ASSERT_EQ(err.code, PG_EBAD_REQUEST);
        char want[PROTO_MSG_MAX];
        snprintf(want, sizeof(want), msg[k], (int)bg);
        ASSERT_STR_EQ(err.message, want);
        ASSERT(vals[bg].t == NULL);
    }
    int64_t bsel[2] = {0, 4};
    int32_t bs = tg_const(&g, PG_INT64, 1, s2, bsel);
    int32_t bis = tg_add(&g, PRIM_index_select, (int32_t[]){x, bs}, 2, &d1, PG_FLOAT32, 2,
                         (int64_t[]){3, 2});
    ASSERT_EQ(ref_eval(&g, bs, vals, &err), 0);
    ASSERT_EQ(ref_eval(&g, bis, vals, &err), -PG_EBAD_REQUEST);
    ASSERT(strstr(err.message, "index 4 is out of range for dim 1 of size 4") != NULL);
    /* A node whose input was never evaluated is refused, not read. */
    int32_t orphan = tg_like(&g, PRIM_neg, &bis, 1, PG_FLOAT32);
    ASSERT_EQ(ref_eval(&g, orphan, vals, &err), -PG_EINTERNAL);
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

TEST_IMPL(scatter_add_repeats) {
    /* out = base; out[idx[i][j]][j] += src[i][j] along dim 0, repeated indices summed; an index
     * out of range is refused before anything is written. */
    graph_t g;
    tg_init(&g);
    int64_t s34[2] = {3, 4}, s24[2] = {2, 4};
    int32_t base = tg_add(&g, PRIM_full, NULL, 0, &(gattr_t){.value = 0.5}, PG_FLOAT32, 2, s34);
    int32_t src = tg_add(&g, PRIM_arange, NULL, 0, &(gattr_t){.astart = 1, .astep = 1},
                         PG_FLOAT32, 2, s24);
    int64_t idx[8] = {2, 0, 1, 2, 2, 0, 0, 1};
    int32_t ii = tg_const(&g, PG_INT64, 2, s24, idx);
    gattr_t d0 = {.dims = {0}, .ndims = 1};
    int32_t sa = tg_add(&g, PRIM_scatter_add, (int32_t[]){base, ii, src}, 3, &d0, PG_FLOAT32, 2,
                        s34);
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    double want[12];
    for (int j = 0; j < 12; j++)
        want[j] = 0.5;
    for (int j = 0; j < 8; j++)
        want[idx[j] * 4 + j % 4] += j + 1;
    for (uint64_t j = 0; j < 12; j++)
        ASSERT(at(&vals[sa], j) == want[j]);
    int64_t bad[8] = {0, 0, 0, 0, 0, 3, 0, 0};
    int32_t bi = tg_const(&g, PG_INT64, 2, s24, bad);
    int32_t bs = tg_add(&g, PRIM_scatter_add, (int32_t[]){base, bi, src}, 3, &d0, PG_FLOAT32, 2,
                        s34);
    ASSERT_EQ(ref_eval(&g, bi, vals, &err), 0);
    ASSERT_EQ(ref_eval(&g, bs, vals, &err), -PG_EBAD_REQUEST);
    ASSERT(strstr(err.message, "index 3 is out of range for dim 0 of size 3") != NULL);
    ASSERT(vals[bs].t == NULL);
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

TEST_IMPL(out_of_memory) {
    mem_init(1000);
    graph_t g;
    tg_init(&g);
    int32_t x = tg_add(&g, PRIM_full, NULL, 0, NULL, PG_FLOAT64, 1, (int64_t[]){1000});
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(ref_eval(&g, x, vals, &err), -PG_EOUT_OF_MEMORY);
    ASSERT(strstr(err.message, "node 0 (full): no memory for a 8000-byte result") != NULL);
    tg_release(&g, vals);
    tg_free(&g);
    assert_no_leaks();
    return 0;
}

/* =============================================================================================
 * Threads
 * =========================================================================================== */

/* Evaluates a graph of large loops with n threads and returns its values' bytes, concatenated. */
static uint8_t *run_big(int threads, size_t *len) {
    ref_set_threads(threads);
    graph_t g;
    tg_init(&g);
    int64_t big[2] = {300, 4099}, s300[1] = {300};
    int32_t r = tg_add(&g, PRIM_rand, NULL, 0, &(gattr_t){.seed = 7, .offset = 11}, PG_FLOAT32, 2,
                       big);
    int32_t rn = tg_add(&g, PRIM_randn, NULL, 0, &(gattr_t){.seed = 9}, PG_FLOAT64, 2, big);
    int32_t s1 = tg_add(&g, PRIM_sum, &r, 1, &(gattr_t){.dims = {1}, .ndims = 1}, PG_FLOAT32, 1,
                        s300);
    int32_t t = tg_add(&g, PRIM_permute, &rn, 1, &(gattr_t){.dims = {1, 0}, .ndims = 2},
                       PG_FLOAT64, 2, (int64_t[]){4099, 300});
    int32_t s0 = tg_add(&g, PRIM_sum, &t, 1, &(gattr_t){.dims = {0}, .ndims = 1}, PG_FLOAT64, 1,
                        s300);
    int32_t all = tg_add(&g, PRIM_sum, &rn, 1, &(gattr_t){.dims = {0, 1}, .ndims = 2}, PG_FLOAT64,
                         0, NULL);
    int32_t e = tg_like(&g, PRIM_gelu, &rn, 1, PG_FLOAT64);
    int32_t cs = tg_add(&g, PRIM_cumsum, &t, 1, &(gattr_t){.dims = {1}, .ndims = 1}, PG_FLOAT64, 2,
                        (int64_t[]){4099, 300});
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    int32_t keep[] = {r, rn, s1, s0, all, e, cs};
    *len = 0;
    for (size_t k = 0; k < sizeof(keep) / sizeof(keep[0]); k++)
        *len += vals[keep[k]].t->nbytes;
    uint8_t *buf = malloc(*len), *p = buf;
    for (size_t k = 0; k < sizeof(keep) / sizeof(keep[0]); k++) {
        memcpy(p, vals[keep[k]].t->data, vals[keep[k]].t->nbytes);
        p += vals[keep[k]].t->nbytes;
    }
    /* The float32 row sums accumulate in double: close to a long-double reference. */
    for (uint64_t row = 0; row < 300; row++) {
        long double acc = 0;
        for (uint64_t j = 0; j < 4099; j++)
            acc += (long double)at(&vals[r], row * 4099 + j);
        ASSERT_NEAR(at(&vals[s1], row), (double)acc, 1e-6 * (double)acc);
    }
    tg_release(&g, vals);
    tg_free(&g);
    return buf;
}

TEST_IMPL(thread_count_invariance) {
    size_t n1, n4, n7;
    uint8_t *one = run_big(1, &n1), *four = run_big(4, &n4), *seven = run_big(7, &n7);
    ASSERT_EQ(n1, n4);
    ASSERT_EQ(n1, n7);
    ASSERT(memcmp(one, four, n1) == 0);
    ASSERT(memcmp(one, seven, n1) == 0);
    free(one);
    free(four);
    free(seven);
    ref_set_threads(1); /* joins the workers */
    assert_no_leaks();
    return 0;
}

/* Several daemon workers may evaluate graphs at once: one gets the pool, the others run their
 * loops alone, and all get the same bytes. */
static void *eval_thread(void *arg) {
    size_t *len = arg;
    graph_t g;
    tg_init(&g);
    int64_t shape[2] = {64, 8192};
    int32_t r = tg_add(&g, PRIM_randn, NULL, 0, &(gattr_t){.seed = 5}, PG_FLOAT32, 2, shape);
    int32_t s = tg_add(&g, PRIM_sum, &r, 1, &(gattr_t){.dims = {1}, .ndims = 1}, PG_FLOAT32, 1,
                       shape);
    ref_view_t vals[TG_CAP] = {0};
    proto_err_t err;
    ASSERT_EQ(tg_run(&g, vals, &err), 0);
    float *sums = malloc(64 * sizeof(float));
    memcpy(sums, vals[s].t->data, 64 * sizeof(float));
    *len = 64 * sizeof(float);
    tg_release(&g, vals);
    tg_free(&g);
    return sums;
}

TEST_IMPL(concurrent_evals) {
    ref_set_threads(1);
    size_t len;
    void *want = eval_thread(&len);
    ref_set_threads(4);
    pthread_t th[3];
    size_t lens[3];
    for (int k = 0; k < 3; k++)
        ASSERT_EQ(pthread_create(&th[k], NULL, eval_thread, &lens[k]), 0);
    for (int k = 0; k < 3; k++) {
        void *got;
        ASSERT_EQ(pthread_join(th[k], &got), 0);
        ASSERT(memcmp(got, want, len) == 0);
        free(got);
    }
    free(want);
    ref_set_threads(1);
    assert_no_leaks();
    return 0;
}

/* ref_rest: the pool's workers stop spinning for a next loop when the thread whose loop they ran
 * says that none follows, and not when another thread says so. The spin is made 30 s long, so
 * a worker asleep within the 10 s allowed below was sent to sleep by the hint. */
static void *rest_elsewhere(void *arg) {
    (void)arg;
    ref_rest(); /* this thread posted no loop: no effect */
    return NULL;
}

static bool wait_asleep(int want, double seconds) {
    for (int k = 0; k < (int)(seconds * 1000); k++) {
        if (ref__workers_asleep() == want)
            return true;
        usleep(1000);
    }
    return ref__workers_asleep() == want;
}

TEST_IMPL(rest_ends_spin) {
    ref_set_threads(3);
    ASSERT(wait_asleep(2, 10.0)); /* fresh workers go straight to sleep */
    ref__set_spin_ns(30ull * 1000000000u);
    size_t len;
    void *a = eval_thread(&len); /* a 64x8192 loop on the pool: the workers now spin */
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, rest_elsewhere, NULL), 0);
    ASSERT_EQ(pthread_join(th, NULL), 0);
    usleep(50000);
    ASSERT_EQ(ref__workers_asleep(), 0); /* still spinning: the other thread's hint was ignored */
    ref_rest();
    ASSERT(wait_asleep(2, 10.0));
    /* Asleep, they still take the next loop, woken by the condition variable. */
    void *b = eval_thread(&len);
    ASSERT(memcmp(a, b, len) == 0);
    ref_rest();
    ASSERT(wait_asleep(2, 10.0));
    free(a);
    free(b);
    ref__set_spin_ns(100000);
    ref_set_threads(1);
    assert_no_leaks();
    return 0;
}

#define TEST_LIST(X)                                                                               \
    X(philox_kat)                                                                                  \
    X(rand_layout)                                                                                 \
    X(randn_moments)                                                                               \
    X(add_expanded)                                                                                \
    X(elementwise_semantics)                                                                       \
    X(unary_binary_all_dtypes)                                                                     \
    X(sum_permuted)                                                                                \
    X(reduce_edges)                                                                                \
    X(slice_step_flip)                                                                             \
    X(pad_cat_window)                                                                              \
    X(unwindow_sums_overlaps)                                                                      \
    X(matmul_vs_loop)                                                                              \
    X(gather_index_errors)                                                                         \
    X(scatter_add_repeats)                                                                         \
    X(out_of_memory)                                                                               \
    X(thread_count_invariance)                                                                     \
    X(concurrent_evals)                                                                            \
    X(rest_ends_spin)

TEST_MAIN(TEST_LIST)
