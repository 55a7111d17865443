/*
 * render_cuda.c - the CUDA renderer: turns one kir_kernel_t (kir.h) into a CUDA C++ translation
 * unit for NVRTC, from the same IR as the C renderer (render_c.c), whose expressions it reuses
 * (kir_render.h): each value is computed with the same conversions, integer wrapping, NaN rules
 * of relu/max/min/sign and float -> int clamps as on the CPU. What differs is how the work is
 * spread over threads:
 *
 *   elementwise    a grid-stride loop, one thread per output element at a time:
 *                    for (i = start + blockIdx.x * blockDim.x + threadIdx.x; i < end; i += grid)
 *                        out[i] = f(in0[...], ...);
 *   reduction      a unit (an output, or an (output, block) pair of a split reduction, kir.h)
 *                  per warp (reductions of at most CU_WARP_MAX elements) or per block; its
 *                  threads stride over the reduced elements, each folding its own partial, then
 *                  fold the partials in a tree (warp shuffles, then one value per warp through
 *                  shared memory):
 *                    for (r = lane; r < len; r += NT) acc = f(acc, x(r));
 *                    acc = pg_fold<NT>(acc, f);  if (lane == 0) out[u] = acc;
 *   staged         a row per warp or block; each fold stage is such a block fold whose result
 *                  every thread of the row gets (a0, a1, ...), the row is re-read from the
 *                  inputs by the next stage (except a costly value the last stage would
 *                  recompute, softmax's exp, which the thread that computed it parks in the
 *                  output row, as the C kernel does), and the last stage writes the row or
 *                  folds it.
 *
 * Fold order therefore differs from the CPU's 16 interleaved lanes: float sums and products
 * agree with the C kernels within rounding, not bit for bit (integer and logical folds, max and
 * min are exact either way), so CUDA results are compared with a tolerance. The order is still
 * fixed by the launch shape (kir_cuda_launch), so a kernel gives the same bits on every run.
 *
 * float32 transcendentals are CUDA's own (expf, logf, tanhf, erfcf), not kernels/pg_math.h:
 * the GPU's are fast and accurate to a few ulp, and bitwise agreement is not the goal here.
 */
#include "kir_render.h"

#include "../../server/mem.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* The placeholder name the body is rendered with (as long as the real one, see render_c.c). */
#define CU_PLACEHOLDER "pg_cu_XXXXXXXXXXXXXXXX"
#define CU_NAME_LEN 22

#define CU_THREADS 256   /* threads per block */
#define CU_WARP_MAX 1024 /* longest fold a single warp takes (longer ones: a block) */

/* =============================================================================================
 * The prelude: identical in every kernel
 * =========================================================================================== */

/* NVRTC has no standard headers: the fixed-width types and the constants the shared expressions
 * use are defined here. pg_fold folds one value per thread across NT threads (a warp's, or a
 * block's) in a fixed tree and returns the result in every one of them. */
static const char cu_prelude[] =
    "typedef signed char int8_t;\n"
    "typedef unsigned char uint8_t;\n"
    "typedef int int32_t;\n"
    "typedef unsigned int uint32_t;\n"
    "typedef long long int64_t;\n"
    "typedef unsigned long long uint64_t;\n"
    "#define INFINITY __int_as_float(0x7f800000)\n"
    "#define NAN __int_as_float(0x7fc00000)\n"
    "#define INT32_MAX 2147483647\n"
    "#define INT32_MIN (-INT32_MAX - 1)\n"
    "#define INT64_MAX 9223372036854775807LL\n"
    "#define INT64_MIN (-INT64_MAX - 1)\n"
    "\n"
    "/* The kernel's buffers, passed by value: p[0] the output, p[1 + k] input k. */\n"
    "typedef struct { void *p[" "17" "]; } pg_cu_bufs_t;\n"
    "\n"
    "/* float -> int as the interpreter's ref__f2i: NaN and infinities give 0, clamped. */\n"
    "__device__ __forceinline__ int32_t pg_f2i32(double x) {\n"
    "    if (!isfinite(x)) return 0;\n"
    "    if (x >= 2147483648.0) return INT32_MAX;\n"
    "    if (x <= -2147483648.0) return INT32_MIN;\n"
    "    return (int32_t)(int64_t)x;\n"
    "}\n"
    "__device__ __forceinline__ int64_t pg_f2i64(double x) {\n"
    "    if (!isfinite(x)) return 0;\n"
    "    if (x >= 9223372036854775808.0) return INT64_MAX;\n"
    "    if (x <= -9223372036854775808.0) return INT64_MIN;\n"
    "    return (int64_t)x;\n"
    "}\n"
    "/* Integer power by squaring, wrapping; negative exponents as the interpreter's ipow. */\n"
    "__device__ __forceinline__ int64_t pg_ipow(int64_t base, int64_t e) {\n"
    "    if (e < 0) return base == 1 ? 1 : base == -1 ? ((e & 1) ? -1 : 1) : 0;\n"
    "    uint64_t r = 1, b = (uint64_t)base;\n"
    "    for (uint64_t k = (uint64_t)e; k; k >>= 1) {\n"
    "        if (k & 1) r *= b;\n"
    "        b *= b;\n"
    "    }\n"
    "    return (int64_t)r;\n"
    "}\n"
    "\n"
    "/* float32 transcendentals (kernels/pg_math.h's names, CUDA's functions). */\n"
    "__device__ __forceinline__ float pg_expf(float x) { return expf(x); }\n"
    "__device__ __forceinline__ float pg_logf(float x) { return logf(x); }\n"
    "__device__ __forceinline__ float pg_tanhf(float x) { return tanhf(x); }\n"
    "__device__ __forceinline__ float pg_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }\n"
    "__device__ __forceinline__ float pg_siluf(float x) { return x / (1.0f + expf(-x)); }\n"
    "__device__ __forceinline__ float pg_gelu_tanhf(float x) {\n"
    "    float u = 0.79788456080286535588f * (x + 0.044715f * x * x * x);\n"
    "    return x / (1.0f + expf(-2.0f * u));\n"
    "}\n"
    "__device__ __forceinline__ float pg_geluf(float x) {\n"
    "    return 0.5f * x * erfcf(x * -0.70710678118654752440f);\n"
    "}\n"
    "\n"
    "/* Folds: sum, prod, max and min (NaN wins, as on the CPU), or and and (any, all). */\n"
    "struct pg_sum { template <class T> __device__ T operator()(T a, T b) const { return a + b; } };\n"
    "struct pg_prod { template <class T> __device__ T operator()(T a, T b) const { return a * b; } };\n"
    "struct pg_max {\n"
    "    template <class T> __device__ T operator()(T a, T b) const {\n"
    "        return a != a ? a : (b != b || b > a) ? b : a;\n"
    "    }\n"
    "};\n"
    "struct pg_min {\n"
    "    template <class T> __device__ T operator()(T a, T b) const {\n"
    "        return a != a ? a : (b != b || b < a) ? b : a;\n"
    "    }\n"
    "};\n"
    "struct pg_or { __device__ int operator()(int a, int b) const { return a | b; } };\n"
    "struct pg_and { __device__ int operator()(int a, int b) const { return a & b; } };\n"
    "\n"
    "/* Folds v over the NT threads of a unit (NT = 32: a warp; a multiple of 32: the whole\n"
    " * block, which every thread of must call it) in a fixed tree; every thread gets the value. */\n"
    "template <int NT, class T, class F>\n"
    "__device__ __forceinline__ T pg_fold(T v, F f) {\n"
    "#pragma unroll\n"
    "    for (int o = 16; o > 0; o >>= 1) v = f(v, __shfl_xor_sync(0xffffffffu, v, o));\n"
    "    if (NT <= 32) return v;\n"
    "    __shared__ T sh[NT / 32];\n"
    "    __syncthreads(); /* the previous fold has read sh */\n"
    "    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;\n"
    "    __syncthreads();\n"
    "    v = sh[0];\n"
    "#pragma unroll\n"
    "    for (int w = 1; w < NT / 32; w++) v = f(v, sh[w]);\n"
    "    return v;\n"
    "}\n";

_Static_assert(KIR_MAX_INPUTS + 1 == 17, "pg_cu_bufs_t holds the output and every input");

/* =============================================================================================
 * Launch shape
 * =========================================================================================== */

/* Elements that one unit of k folds (0 for an elementwise kernel). */
static uint64_t cu_fold_len(const kir_kernel_t *k) {
    if (!kir__staged(k) && !kir__has_reduce(k))
        return 0;
    if (kir_split_blocks(k) > 0)
        return KIR_FOLD_BLOCK;
    uint64_t n = 1;
    for (int d = 0; d < k->rank; d++)
        if (kir__staged(k) ? d >= k->row : k->reduced[d])
            n *= (uint64_t)k->shape[d];
    return n;
}

kir_cuda_launch_t kir_cuda_launch(const kir_kernel_t *k) {
    kir_cuda_launch_t l = {CU_THREADS, 1};
    if (kir__staged(k) || kir__has_reduce(k))
        l.unit_threads = cu_fold_len(k) <= CU_WARP_MAX ? 32 : CU_THREADS;
    return l;
}

/* =============================================================================================
 * Bodies
 * =========================================================================================== */

/* Emits values [vb, ve) whose varies[] equals `which` (varies NULL: all), one const local each;
 * value as_j reads as_expr instead. */
static void cu_body(kir__buf_t *b, const kir_kernel_t *k, char idx[][KIR__EXPR_MAX],
                    const char *indent, int vb, int ve, const bool *varies, bool which, int as_j,
                    const char *as_expr) {
    char e[4 * KIR__EXPR_MAX];
    for (int j = vb; j < ve; j++) {
        if (varies && varies[j] != which)
            continue;
        if (j == as_j && as_expr)
            snprintf(e, sizeof(e), "%s", as_expr);
        else
            kir__value_expr(e, sizeof(e), k, j, idx, true);
        kir__printf(b, "%sconst %s v%d = %s;\n", indent, kir__ctype(k->vals[j].dtype), j, e);
    }
}

/* The expression storing value j (of the last stage) as an element of the output's dtype. */
static void cu_result(char *out, size_t cap, const kir_kernel_t *k, int j) {
    char v[32];
    snprintf(v, sizeof(v), "v%d", j);
    pg_dtype_t rdt = k->vals[j].dtype;
    if (rdt == k->out_dtype)
        snprintf(out, cap, "%s", v);
    else
        kir__convert(out, cap, kir__is_float(rdt), k->out_dtype, v);
}

/* Elementwise: a grid-stride loop over output elements (the coalesced kernel, kir__coalesce). */
static void cu_elementwise(kir__buf_t *b, const kir_kernel_t *k) {
    char idx[KIR_MAX_INPUTS][KIR__EXPR_MAX];
    bool all[PROTO_MAX_RANK], need[PROTO_MAX_RANK];
    kir__elementwise_index(k, idx, all, need);
    char st[KIR__EXPR_MAX + 64];
    cu_result(st, sizeof(st), k, k->nvals - 1);
    kir__printf(b, "    const int64_t grid = (int64_t)gridDim.x * blockDim.x;\n"
                   "    for (int64_t i = start + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; "
                   "i < end; i += grid) {\n");
    kir__unflatten(b, k, "i", all, need, "        ");
    cu_body(b, k, idx, "        ", 0, k->nvals, NULL, true, -1, NULL);
    kir__printf(b, "        out[i] = %s;\n    }\n", st);
}

/* The fold functor of reduction op. */
static const char *cu_functor(prim_t op) {
    switch (op) {
    case PRIM_sum: return "pg_sum()";
    case PRIM_prod: return "pg_prod()";
    case PRIM_max: return "pg_max()";
    case PRIM_min: return "pg_min()";
    case PRIM_any: return "pg_or()";
    default: return "pg_and()";
    }
}

/*
 * Emits the fold of values [vb, ve) by the NT threads of a unit over the axes `red` (the kept
 * axes' indices and the bases bN already defined), ending in "const T a<s> = <folded value
 * rounded to dt>;" in every thread of the unit. `len` is the count of folded elements (an
 * expression), `lin` how the reduced axes' indices derive from the element number r (the
 * unflatten source, e.g. "r"); `pre`, when not NULL, is emitted first in the loop (the split
 * block's innermost index). `store`, when not NULL, is emitted after the values in the loop
 * (a value kept for the last stage). With `part` the unit's value goes to part[u] as a double.
 */
static void cu_fold(kir__buf_t *b, const kir_kernel_t *k, char idx[][KIR__EXPR_MAX],
                    const bool *red, const char *lin, const char *pre, const char *len, int nt,
                    int vb, int ve, prim_t op, pg_dtype_t dt, int s, const bool *varies,
                    uint64_t fold_len, const char *store, const char *part) {
    pg_dtype_t rdt = k->vals[ve - 1].dtype;
    bool logical = op == PRIM_any || op == PRIM_all;
    bool fdom = !logical && kir__is_float(rdt);
    bool extreme = op == PRIM_max || op == PRIM_min;
    const char *at, *init;
    if (logical) {
        at = "int";
        init = op == PRIM_all ? "1" : "0";
    } else if (fdom) {
        /* Sums and products accumulate in double, short float32 sums in float (as in C). */
        at = extreme || kir_sum_in_float(op, rdt, fold_len) ? kir__ctype(rdt) : "double";
        init = op == PRIM_sum ? "0" : op == PRIM_prod ? "1" : op == PRIM_max ? "-INFINITY"
                                                                             : "INFINITY";
    } else if (extreme) {
        at = "int64_t";
        init = op == PRIM_max ? "INT64_MIN" : "INT64_MAX";
    } else {
        at = "uint64_t";
        init = op == PRIM_prod ? "1" : "0";
    }
    cu_body(b, k, idx, "        ", vb, ve, varies, false, -1, NULL);
    kir__printf(b, "        %s acc%d = (%s)%s;\n", at, s, at, init);
    kir__printf(b, "        for (int64_t r = lane; r < %s; r += %d) {\n", len, nt);
    if (pre)
        kir__printf(b, "            %s\n", pre);
    kir__unflatten(b, k, lin, red, red, "            ");
    cu_body(b, k, idx, "            ", vb, ve, varies, true, -1, NULL);
    if (store)
        kir__printf(b, "            %s", store);
    const char *f = cu_functor(op);
    if (logical)
        kir__printf(b, "            acc%d = %s(acc%d, (int)(v%d != 0));\n", s, f, s, ve - 1);
    else if (fdom)
        kir__printf(b, "            acc%d = %s(acc%d, (%s)v%d);\n", s, f, s, at, ve - 1);
    else
        kir__printf(b, "            acc%d = %s(acc%d, (%s)(int64_t)v%d);\n", s, f, s, at, ve - 1);
    kir__printf(b, "        }\n        acc%d = pg_fold<%d>(acc%d, %s);\n", s, nt, s, f);
    if (part) {
        kir__printf(b, "        if (lane == 0) %s = (double)acc%d;\n", part, s);
        return;
    }
    char st[KIR__EXPR_MAX], a[32];
    snprintf(a, sizeof(a), fdom ? "(double)acc%d" : "(int64_t)acc%d", s);
    kir__convert(st, sizeof(st), fdom, dt, a);
    kir__printf(b, "        const %s a%d = %s;\n", kir__ctype(dt), s, st);
}

/* Emits per input "const int64_t bN = <its offset at the kept indices>;" and sets idx[n] to bN
 * plus its steps along the `red` axes. */
static void cu_bases(kir__buf_t *b, const kir_kernel_t *k, char idx[][KIR__EXPR_MAX],
                     const bool *kept, const bool *red) {
    for (int n = 0; n < k->nin; n++) {
        char base[KIR__EXPR_MAX], name[16];
        kir__affine(base, sizeof(base), &k->in[n], NULL, kept, k->rank, k->shape);
        kir__printf(b, "        const int64_t b%d = %s;\n", n, base);
        snprintf(name, sizeof(name), "b%d", n);
        kir__affine(idx[n], KIR__EXPR_MAX, &k->in[n], name, red, k->rank, k->shape);
    }
}

/* Opens the loop over units, NT threads each: `lane` is the thread's place in its unit. */
static void cu_open_units(kir__buf_t *b, int nt) {
    int upb = CU_THREADS / nt;
    if (upb == 1)
        kir__printf(b, "    const int lane = threadIdx.x;\n"
                       "    for (int64_t u = start + blockIdx.x; u < end; u += gridDim.x) {\n");
    else
        kir__printf(b, "    const int lane = threadIdx.x %% %d;\n"
                       "    for (int64_t u = start + (int64_t)blockIdx.x * %d + threadIdx.x / %d; "
                       "u < end; u += (int64_t)gridDim.x * %d) {\n", nt, upb, nt, upb);
}

/* A plain reduction: a unit per output (or per (output, block) of a split reduction). */
static void cu_reduce(kir__buf_t *b, const kir_kernel_t *k, const bool *varies, int nt) {
    char idx[KIR_MAX_INPUTS][KIR__EXPR_MAX];
    bool kept[PROTO_MAX_RANK], red[PROTO_MAX_RANK], need[PROTO_MAX_RANK] = {false};
    uint64_t rlen = 1;
    int dl = -1;
    for (int d = 0; d < k->rank; d++) {
        red[d] = k->reduced[d];
        kept[d] = !red[d];
        if (red[d]) {
            rlen *= (uint64_t)k->shape[d];
            dl = d;
        }
    }
    for (int n = 0; n < k->nin; n++)
        for (int d = 0; d < k->rank; d++)
            need[d] |= kept[d] && k->in[n].strides[d] != 0;
    int64_t nb = kir_split_blocks(k);
    cu_open_units(b, nt);
    if (nb > 0) {
        /* Unit u: block blk of output o along the innermost reduced axis dl; its elements are
         * the other reduced axes (outer) times the block's len elements of dl (inner). */
        int64_t n = k->shape[dl];
        kir__printf(b, "        const int64_t o = u / %" PRId64 ", blk = u %% %" PRId64 ";\n"
                       "        const int64_t lo = blk * %d, len = %" PRId64 " - lo < %d ? %" PRId64
                       " - lo : %d;\n", nb, nb, KIR_FOLD_BLOCK, n, KIR_FOLD_BLOCK, n, KIR_FOLD_BLOCK);
        kir__unflatten(b, k, "o", kept, need, "        ");
        cu_bases(b, k, idx, kept, red);
        bool outer[PROTO_MAX_RANK];
        for (int d = 0; d < k->rank; d++)
            outer[d] = red[d] && d != dl;
        bool more = false;
        for (int d = 0; d < k->rank; d++)
            more |= outer[d] && k->shape[d] != 1;
        char len[64], pre[128];
        snprintf(len, sizeof(len), "%" PRIu64 " * len", rlen / (uint64_t)n);
        if (more)
            snprintf(pre, sizeof(pre), "const int64_t q = r / len, i%d = lo + r %% len;", dl);
        else
            snprintf(pre, sizeof(pre), "const int64_t i%d = lo + r;", dl);
        /* kir__unflatten emits the outer axes from q (red minus dl). */
        kir__printf(b, "        /* split block: the executor combines part[] in order */\n");
        cu_fold(b, k, idx, outer, "q", pre, len, nt, 0, k->nvals, k->reduce, k->out_dtype, 0,
                varies, KIR_FOLD_BLOCK, NULL, "part[u]");
        kir__printf(b, "    }\n");
        return;
    }
    kir__printf(b, "        const int64_t o = u;\n");
    kir__unflatten(b, k, "o", kept, need, "        ");
    cu_bases(b, k, idx, kept, red);
    char len[32];
    snprintf(len, sizeof(len), "%" PRIu64, rlen);
    cu_fold(b, k, idx, red, "r", NULL, len, nt, 0, k->nvals, k->reduce, k->out_dtype, 0, varies,
            rlen, NULL, NULL);
    kir__printf(b, "        if (lane == 0) out[o] = a0;\n    }\n");
}

/* Staged: a unit per row; per row each stage's fold, then the last stage's write or fold. */
static void cu_staged(kir__buf_t *b, const kir_kernel_t *k, const bool *varies, int nt) {
    char idx[KIR_MAX_INPUTS][KIR__EXPR_MAX];
    bool kept[PROTO_MAX_RANK], red[PROTO_MAX_RANK], need[PROTO_MAX_RANK] = {false};
    uint64_t rowlen = 1;
    for (int d = 0; d < k->rank; d++) {
        red[d] = d >= k->row;
        kept[d] = !red[d];
        if (red[d])
            rowlen *= (uint64_t)k->shape[d];
    }
    for (int n = 0; n < k->nin; n++)
        for (int d = 0; d < k->rank; d++)
            need[d] |= kept[d] && k->in[n].strides[d] != 0;
    /* Element r of the row (its axes in C order) is out[o * rowlen + r]. */
    char at[64], len[32];
    snprintf(at, sizeof(at), "out[o * %" PRIu64 " + r]", rowlen);
    snprintf(len, sizeof(len), "%" PRIu64, rowlen);
    int keep_dst = -1, keep_src = -1, last = k->nstages - 1;
    kir__find_kept(k, varies, &keep_dst, &keep_src);
    char store[128];
    snprintf(store, sizeof(store), "%s = v%d; /* kept for the last stage */\n", at, keep_src);
    cu_open_units(b, nt);
    kir__printf(b, "        const int64_t o = u;\n");
    kir__unflatten(b, k, "o", kept, need, "        ");
    cu_bases(b, k, idx, kept, red);
    for (int s = 0; s <= last; s++) {
        const kir_stage_t *st = &k->stage[s];
        int vb = s ? k->stage[s - 1].end : 0;
        kir__printf(b, "        /* stage %d: %s */\n", s,
                    st->reduce != PRIM_COUNT ? kir__prim_name(st->reduce) : "write the row");
        if (st->reduce != PRIM_COUNT) {
            bool here = keep_src >= vb && keep_src < st->end;
            cu_fold(b, k, idx, red, "r", NULL, len, nt, vb, st->end, st->reduce, st->dtype, s,
                    varies, rowlen, here ? store : NULL, NULL);
            continue;
        }
        /* The row is written by the threads that folded it, element r by the thread that
         * parked the kept value there, so no barrier is needed between the two. */
        cu_body(b, k, idx, "        ", vb, st->end, varies, false, -1, NULL);
        kir__printf(b, "        for (int64_t r = lane; r < %s; r += %d) {\n", len, nt);
        kir__unflatten(b, k, "r", red, red, "            ");
        cu_body(b, k, idx, "            ", vb, st->end, varies, true, keep_dst, at);
        char e[KIR__EXPR_MAX];
        cu_result(e, sizeof(e), k, st->end - 1);
        kir__printf(b, "            %s = %s;\n        }\n", at, e);
    }
    if (k->stage[last].reduce != PRIM_COUNT)
        kir__printf(b, "        if (lane == 0) out[o] = a%d;\n", last);
    kir__printf(b, "    }\n");
}

/* =============================================================================================
 * The translation unit
 * =========================================================================================== */

char *kir_render_cuda(const kir_kernel_t *k, char *name, size_t name_cap) {
    if (name_cap < CU_NAME_LEN + 1 || !kir__valid(k))
        return NULL;
    kir_cuda_launch_t l = kir_cuda_launch(k);
    kir__buf_t b = {0};
    kir__comment(&b, k, CU_PLACEHOLDER, "render_cuda.c");
    kir__printf(&b, "%s\n", cu_prelude);
    kir__printf(&b, "/* %d threads per block, %d per unit */\n"
                    "extern \"C\" __global__ void __launch_bounds__(%d) " CU_PLACEHOLDER
                    "(const pg_cu_bufs_t bufs, int64_t start, int64_t end) {\n",
                l.threads, l.unit_threads, l.threads);
    if (kir_split_blocks(k) > 0)
        kir__printf(&b, "    double *part = (double *)bufs.p[0];\n");
    else
        kir__printf(&b, "    %s *out = (%s *)bufs.p[0];\n", kir__ctype(k->out_dtype),
                    kir__ctype(k->out_dtype));
    for (int n = 0; n < k->nin; n++) {
        const char *t = kir__ctype(k->in[n].dtype);
        if (k->inplace == n + 1) /* read through `out` instead */
            continue;
        kir__printf(&b, "    const %s *__restrict__ in%d = (const %s *)bufs.p[%d];\n", t, n, t,
                    n + 1);
    }
    bool varies[KIR_MAX_VALS];
    kir__varies(k, varies);
    if (kir__staged(k)) {
        cu_staged(&b, k, varies, l.unit_threads);
    } else if (kir__has_reduce(k)) {
        cu_reduce(&b, k, varies, l.unit_threads);
    } else {
        kir_kernel_t *flat = kir__coalesced(k);
        if (flat)
            cu_elementwise(&b, flat);
        b.oom |= !flat;
        pg_free(flat);
    }
    kir__printf(&b, "}\n");
    return kir__finish(&b, "pg_cu_", CU_PLACEHOLDER, name, name_cap);
}
