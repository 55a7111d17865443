/*
 * leaf.c - nodes with no inputs: session tensors and literals (views of node->tensor), full,
 * arange, and the counter-based random generators rand and randn.
 *
 * Random numbers come from Philox-4x32-10 (Salmon et al., "Parallel Random Numbers: As Easy as
 * 1, 2, 3", SC'11; the Random123 library). It is a keyed bijection of a 128-bit counter, so element
 * i's value depends only on (seed, offset + i): any thread, and later any GPU thread, computes it
 * alone, and a graph gives the same numbers whatever the thread count or the backend. The layout,
 * which the code generators must reproduce bit for bit:
 *
 *   key     = { seed & 0xffffffff, seed >> 32 }
 *   counter = { c & 0xffffffff, c >> 32, 0, 0 }  with c = offset + i (mod 2^64)
 *   x[0..3] = Philox4x32_10(counter, key)
 *
 *   rand  float32: (x[0] >> 8) * 2^-24                                       in [0, 1)
 *   rand  float64: ((x[0] << 32 | x[1]) >> 11) * 2^-53                       in [0, 1)
 *   randn float32: u1 = ((x[0] >> 8) + 1) * 2^-24,  u2 = (x[1] >> 8) * 2^-24
 *   randn float64: u1 = (((x[0] << 32 | x[1]) >> 11) + 1) * 2^-53,
 *                  u2 = ((x[2] << 32 | x[3]) >> 11) * 2^-53
 *   randn         z  = sqrt(-2 ln u1) * cos(2 pi u2), computed in double, then rounded
 *
 * u1 is in (0, 1] so that ln u1 is finite.
 */
#include "ref_impl.h"

/* =============================================================================================
 * Philox-4x32-10
 * =========================================================================================== */

/* Constants from Random123's philox.h: the multipliers, and the Weyl key increments (the golden
 * ratio and sqrt(3) - 1, in 32-bit fixed point). */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void ref__philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) { /* the first round uses the key as given */
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* =============================================================================================
 * Generators
 * =========================================================================================== */

typedef struct {
    const gnode_t *n;
    uint8_t *out;
    bool exact_int; /* arange in int64 arithmetic */
    int64_t istart, istep;
} leaf_ctx_t;

static void full_chunk(void *arg, uint64_t begin, uint64_t end) {
    const leaf_ctx_t *c = arg;
    for (uint64_t j = begin; j < end; j++)
        ref__st_f(c->out, c->n->dtype, (int64_t)j, c->n->a.value);
}

static void arange_chunk(void *arg, uint64_t begin, uint64_t end) {
    const leaf_ctx_t *c = arg;
    const gattr_t *a = &c->n->a;
    for (uint64_t j = begin; j < end; j++) {
        if (c->exact_int) /* unsigned: wraps instead of overflowing */
            ref__st_i(c->out, c->n->dtype, (int64_t)j,
                      (int64_t)((uint64_t)c->istart + j * (uint64_t)c->istep));
        else
            ref__st_f(c->out, c->n->dtype, (int64_t)j, a->astart + (double)j * a->astep);
    }
}

static void philox_at(const gattr_t *a, uint64_t j, uint32_t x[4]) {
    uint64_t c = a->offset + j;
    uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), 0, 0};
    uint32_t key[2] = {(uint32_t)a->seed, (uint32_t)(a->seed >> 32)};
    ref__philox4x32_10(ctr, key, x);
}

static double u53(uint32_t hi, uint32_t lo) { return (double)((((uint64_t)hi << 32) | lo) >> 11); }

static void rand_chunk(void *arg, uint64_t begin, uint64_t end) {
    const leaf_ctx_t *c = arg;
    const gattr_t *a = &c->n->a;
    for (uint64_t j = begin; j < end; j++) {
        uint32_t x[4];
        philox_at(a, j, x);
        if (c->n->dtype == PG_FLOAT32)
            ((float *)c->out)[j] = (float)(x[0] >> 8) * 0x1p-24f;
        else
            ((double *)c->out)[j] = u53(x[0], x[1]) * 0x1p-53;
    }
}

static void randn_chunk(void *arg, uint64_t begin, uint64_t end) {
    const leaf_ctx_t *c = arg;
    const gattr_t *a = &c->n->a;
    const double two_pi = 6.283185307179586476925286766559;
    for (uint64_t j = begin; j < end; j++) {
        uint32_t x[4];
        double u1, u2;
        philox_at(a, j, x);
        if (c->n->dtype == PG_FLOAT32) {
            u1 = ((double)(x[0] >> 8) + 1.0) * 0x1p-24;
            u2 = (double)(x[1] >> 8) * 0x1p-24;
        } else {
            u1 = (u53(x[0], x[1]) + 1.0) * 0x1p-53;
            u2 = u53(x[2], x[3]) * 0x1p-53;
        }
        double z = sqrt(-2.0 * log(u1)) * cos(two_pi * u2);
        ref__st_f(c->out, c->n->dtype, (int64_t)j, z);
    }
}

/* input, const: a contiguous view of tensor t (the node's own, or the one a run binds to it),
 * which keeps its own reference. */
static int leaf_tensor(const graph_t *g, int32_t i, tensor_t *t, ref_view_t *out,
                       proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    out->dtype = n->dtype;
    out->rank = n->rank;
    out->off = 0;
    memcpy(out->shape, n->shape, sizeof(out->shape));
    ref__contiguous_strides(n->rank, n->shape, out->strides);
    if (n->numel == 0)
        return 0;
    if (!t || t->numel != n->numel || t->dtype != n->dtype)
        return ref__bad_node(g, i, "tensor does not match the node", err);
    out->t = tensor_ref(t);
    return 0;
}

int ref_eval_input(const graph_t *g, int32_t i, tensor_t *t, ref_view_t *vals,
                   proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    memset(&vals[i], 0, sizeof(vals[i]));
    if (n->op != PRIM_input || n->rank < 0 || n->rank > PROTO_MAX_RANK)
        return ref__bad_node(g, i, "a bound tensor for a node that is not an input", err);
    return leaf_tensor(g, i, t, &vals[i], err);
}

int ref__leaf(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
              proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const gattr_t *a = &n->a;
    if (n->op == PRIM_input || n->op == PRIM_const)
        return leaf_tensor(g, i, n->tensor, out, err);
    if ((n->op == PRIM_rand || n->op == PRIM_randn) && !ref__is_float(n->dtype))
        return ref__bad_node(g, i, "random values need a float dtype", err);

    int rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    leaf_ctx_t c = {.n = n, .out = ref__data(out)};
    switch (n->op) {
    case PRIM_full:
        ref__parallel_for(n->numel, 1, full_chunk, &c);
        break;
    case PRIM_arange:
        /* Integer ranges are computed in integers when they can be: a double holds only 53 bits,
         * and arange(2^60, 2^60 + 4) must not repeat a value. */
        c.exact_int = !ref__is_float(n->dtype) && a->astart == trunc(a->astart) &&
                      a->astep == trunc(a->astep) && fabs(a->astart) < 0x1p63 &&
                      fabs(a->astep) < 0x1p63;
        if (c.exact_int) {
            c.istart = (int64_t)a->astart;
            c.istep = (int64_t)a->astep;
        }
        ref__parallel_for(n->numel, 1, arange_chunk, &c);
        break;
    case PRIM_rand:
        ref__parallel_for(n->numel, 16, rand_chunk, &c);
        break;
    case PRIM_randn:
        ref__parallel_for(n->numel, 32, randn_chunk, &c);
        break;
    default:
        return ref__bad_node(g, i, "not a leaf primitive", err);
    }
    return 0;
}
