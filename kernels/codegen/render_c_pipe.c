/*
 * render_c_pipe.c - software-pipelined row kernels: the stages of consecutive rows in one loop.
 *
 * A staged kernel (kir.h: softmax, layer_norm) folds each row several times before it writes
 * it. Rendered row by row (render_c.c, rc_loop_staged), a row's stages run one after the other:
 * while the first stage reads the row from memory, the core mostly waits; while the later ones
 * work on it in L1, memory idles; and every fold is one chain of dependent adds. Here iteration r
 * runs stage 0 of row r, stage 1 of row r - 1, ..., the last stage of row r - S + 1, in one loop
 * along the row: the loads of the newest row overlap the arithmetic of the older ones, and the
 * stages' folds are independent chains. Each row still goes through the same stages in the same
 * order with the same folds (KIR_LANES lanes, combined pairwise), so the values are the same,
 * bit for bit, as the row-by-row kernel's and the interpreter's.
 *
 *   before (layer_norm, S = 3)                  after
 *   for o in rows:                              for r in rows, and 2 more:
 *     for j: a0 += x[o, j]                        for j: a0 += x[r, j]
 *     for j: a1 += (x[o, j] - a0 / n)^2                  a1 += (x[r-1, j] - A0_1 / n)^2
 *     for j: y[o, j] = (x[o, j] - a0 / n)                y[r-2, j] = (x[r-2, j] - A0_2 / n)
 *                      * rsqrt(a1 / n + eps)                         * rsqrt(A1_2 / n + eps)
 *                                                 carry to the next row: A0_2 = A0_1,
 *                                                 A1_2 = a1, A0_1 = a0
 *
 * A<t>_<s> is fold t's result for the row now at stage s. In the first and last S - 1
 * iterations some stages have no row in [start, end): they work on a stand-in, the nearest row
 * of the range, and what they compute is never used. The last stage writes its stand-in, row
 * `start`, only in the first iterations, before row start's own write. That keeps one loop and
 * no branch, for S - 1 rows of extra work per call (a call covers a chunk of rows; see
 * kernels/ref/par.c). Each step of the loop also asks for the matching cache line of row r + 1
 * (render_c.c, "Prefetch"), so that stage 0 does not wait for memory at every new row. Only kernels whose row is the innermost axis, a multiple of KIR_LANES long
 * and folded without blocks, with float folds, a written last stage and no transcendental or
 * division along the row take this form; the others are rendered row by row.
 */
#include "kir_render.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

bool kir__pipelines(const kir_kernel_t *k, const bool *varies) {
    int last = k->nstages - 1;
    if (!kir__staged(k) || k->row != k->rank - 1 || k->inplace != 0 ||
        k->stage[last].reduce != PRIM_COUNT)
        return false;
    int64_t n = k->shape[k->row];
    if (n < KIR_LANES || n % KIR_LANES != 0 || kir_fold_blocks(n) != 1)
        return false;
    for (int s = 0; s < last; s++) {
        prim_t op = k->stage[s].reduce;
        if ((op != PRIM_sum && op != PRIM_prod && op != PRIM_max && op != PRIM_min) ||
            !kir__is_float(k->vals[k->stage[s].end - 1].dtype))
            return false;
    }
    /* A kernel with a transcendental or a division along its rows (softmax's exp) is bound by
     * that arithmetic, not by memory: interleaved with other rows it ran ~15 % slower. (Such a
     * kernel is also the only kind that keeps a value in its output row, kir__find_kept.) */
    for (int j = 0; j < k->nvals; j++)
        if (kir__costly(k, varies, j))
            return false;
    return true;
}

/* What every part of the rendering needs to know. */
typedef struct {
    const kir_kernel_t *k;
    const bool *varies;
    bool red[PROTO_MAX_RANK]; /* the row axis: the last one */
    int d;                    /* its index */
    int64_t rowlen;
    bool stream;              /* kir__streams */
    bool pf[KIR_MAX_INPUTS];  /* kir__prefetches */
} rp_t;

/* The index expressions of the inputs in stage s: row bases b<n>_<s> plus the step along the
 * row. */
static void rp_idx(const rp_t *p, int s, char idx[][KIR__EXPR_MAX]) {
    for (int n = 0; n < p->k->nin; n++) {
        char base[32];
        snprintf(base, sizeof(base), "b%d_%d", n, s);
        kir__affine(idx[n], KIR__EXPR_MAX, &p->k->in[n], base, p->red, p->k->rank,
                    p->k->shape);
    }
}

static int rp_begin(const kir_kernel_t *k, int s) { return s ? k->stage[s - 1].end : 0; }

/* The C type of fold s's lanes. */
static const char *rp_acc_type(const rp_t *p, int s) {
    const kir_stage_t *st = &p->k->stage[s];
    return kir__fold_acc_type(st->reduce, p->k->vals[st->end - 1].dtype, (uint64_t)p->rowlen);
}

/* Emits stage s's values that vary along the row and what the stage does with the last one:
 * fold it, or write it. At `indent`, inside the loop over the row (i<d> defined). */
static void rp_stage_body(kir__buf_t *b, const rp_t *p, int s, const char *indent) {
    const kir_kernel_t *k = p->k;
    const kir_stage_t *st = &k->stage[s];
    int last = k->nstages - 1, ve = st->end;
    char idx[KIR_MAX_INPUTS][KIR__EXPR_MAX], e[4 * KIR__EXPR_MAX];
    rp_idx(p, s, idx);
    kir__printf(b, "%s{ /* stage %d, row o%d */\n", indent, s, s);
    for (int j = rp_begin(k, s); j < ve; j++) {
        if (!p->varies[j])
            continue;
        kir__value_expr(e, sizeof(e), k, j, idx, false);
        kir__printf(b, "%s    const %s v%d = %s;\n", indent, kir__ctype(k->vals[j].dtype), j, e);
    }
    if (s < last) {
        prim_t op = st->reduce;
        const char *at = rp_acc_type(p, s);
        char acc[32];
        snprintf(acc, sizeof(acc), "acc%d[l]", s);
        if (kir__fold_expr(e, sizeof(e), op, acc, "x") < 0)
            b->oom = true;
        kir__printf(b, "%s    const %s x = v%d;\n%s    %s = %s;\n", indent, at, ve - 1, indent, acc,
                    e);
        if (op == PRIM_max || op == PRIM_min)
            kir__printf(b, "%s    nan%d |= x != x;\n", indent, s);
    } else {
        char v[32];
        snprintf(v, sizeof(v), "v%d", ve - 1);
        pg_dtype_t rdt = k->vals[ve - 1].dtype;
        if (rdt == k->out_dtype)
            snprintf(e, sizeof(e), "%s", v);
        else
            kir__convert(e, sizeof(e), kir__is_float(rdt), k->out_dtype, v);
        if (p->stream)
            kir__printf(b, "%s    nt[l] = %s;\n", indent, e);
        else
            kir__printf(b, "%s    out[o%d * %" PRId64 " + i%d] = %s;\n", indent, s, p->rowlen,
                        p->d, e);
    }
    kir__printf(b, "%s}\n", indent);
}

/* Emits the loop along the row that runs every stage, each on its own row, at indent. */
static void rp_loop(kir__buf_t *b, const rp_t *p, const char *indent) {
    int last = p->k->nstages - 1;
    bool nt = p->stream;
    char in2[64];
    snprintf(in2, sizeof(in2), "%s        ", indent);
    kir__printf(b, "%sfor (int64_t g = 0; g < %" PRId64 "; g += %d) {\n", indent, p->rowlen,
                KIR_LANES);
    if (nt) /* the written values, stored around the caches below */
        kir__printf(b, "%s    float nt[%d] __attribute__((aligned(64)));\n", indent, KIR_LANES);
    for (int n = 0; n < p->k->nin; n++) {
        if (!p->pf[n])
            continue;
        int es = (int)proto_dtype_size(p->k->in[n].dtype), per = es < 64 ? 64 / es : 1;
        for (int q = 0; q < KIR_LANES; q += per) /* one per cache line of the group */
            kir__printf(b, "%s    __builtin_prefetch(&in%d[pf%d + g + %d]);\n", indent, n, n, q);
    }
    /* unroll 1: gcc would unroll the lane loop and then fail to vectorize it */
    kir__printf(b, "%s    _Pragma(\"GCC unroll 1\")\n"
                   "%s    for (int l = 0; l < %d; l++) {\n"
                   "%s        const int64_t i%d = g + l;\n",
                indent, indent, KIR_LANES, indent, p->d);
    for (int s = 0; s <= last; s++)
        rp_stage_body(b, p, s, in2);
    kir__printf(b, "%s    }\n", indent);
    if (nt) {
        /* The streaming store is an asm statement that GCC does not see write memory. With a
         * memory operand, or as the movntps builtin, GCC keeps the fold lanes in memory around
         * every store of the loop (a load and a store per lane vector and step); this way they
         * stay in registers. Nothing in the kernel reads the output it streams (kir__streams),
         * and the kernel's return, after the sfence, is what hands the output over. */
        kir__printf(b, "#if " KIR__NT_COND " && defined(__AVX512F__)\n"
                       "%s    pg_v16sf nv;\n"
                       "%s    __builtin_memcpy(&nv, nt, sizeof(nv));\n"
                       "%s    __asm__ volatile(\"vmovntps %%1, (%%0)\" : : \"r\"(&out[o%d * %" PRId64
                       " + g]), \"v\"(nv));\n"
                       "#elif " KIR__NT_COND "\n",
                    indent, indent, indent, last, p->rowlen);
        for (int h = 0; h < KIR_LANES; h += 8)
            kir__printf(b, "%s    pg_v8sf nv%d;\n"
                           "%s    __builtin_memcpy(&nv%d, nt + %d, sizeof(nv%d));\n"
                           "%s    __asm__ volatile(\"vmovntps %%1, (%%0)\" : : \"r\"(&out[o%d * %" PRId64
                           " + g + %d]), \"v\"(nv%d));\n",
                        indent, h, indent, h, h, h, indent, last, p->rowlen, h, h);
        kir__printf(b, "#else\n"
                       "%s    __builtin_memcpy(&out[o%d * %" PRId64 " + g], nt, sizeof(nt));\n"
                       "#endif\n",
                    indent, last, p->rowlen);
    }
    kir__printf(b, "%s}\n", indent);
}

/* Emits, for the row at stage s: o<s> (its stand-in outside [start, end)), the input bases
 * b<n>_<s> and the values that do not vary along the row (the folded results it reads are the
 * carried A<t>_<s>). */
static void rp_stage_head(kir__buf_t *b, const rp_t *p, int s) {
    const kir_kernel_t *k = p->k;
    const kir_stage_t *st = &k->stage[s];
    kir__printf(b, "        /* stage %d: %s, on row o%d */\n", s,
                s < k->nstages - 1 ? kir__prim_name(st->reduce) : "write the row", s);
    if (s == 0)
        kir__printf(b, "        const int64_t o0 = r < end ? r : end - 1;\n");
    else
        kir__printf(b, "        const int64_t o%d = r - %d < start ? start : r - %d < end ? r - %d : "
                       "end - 1;\n", s, s, s, s);
    char row[16], names[16];
    snprintf(row, sizeof(row), "o%d", s);
    snprintf(names, sizeof(names), "b%%d_%d", s);
    kir__row_bases(b, k, row, names, NULL, "        ");
    char idx[KIR_MAX_INPUTS][KIR__EXPR_MAX], e[4 * KIR__EXPR_MAX];
    rp_idx(p, s, idx);
    for (int j = rp_begin(k, s); j < st->end; j++) {
        if (p->varies[j])
            continue;
        if (k->vals[j].kind == KIR_ACC)
            snprintf(e, sizeof(e), "A%d_%d", k->vals[j].input, s);
        else
            kir__value_expr(e, sizeof(e), k, j, idx, false);
        kir__printf(b, "        const %s v%d = %s;\n", kir__ctype(k->vals[j].dtype), j, e);
    }
}

/* Opens fold s's lanes (and its NaN flag), at indent. */
static void rp_fold_open(kir__buf_t *b, const rp_t *p, int s, const char *indent) {
    const kir_stage_t *st = &p->k->stage[s];
    if (st->reduce == PRIM_max || st->reduce == PRIM_min)
        kir__printf(b, "%sint nan%d = 0;\n", indent, s);
    kir__fold_init(b, indent, s, st->reduce, rp_acc_type(p, s));
}

/* Combines fold s's lanes into its result N<s>, at indent. */
static void rp_fold_close(kir__buf_t *b, const rp_t *p, int s, const char *indent) {
    const kir_stage_t *st = &p->k->stage[s];
    char pv[32], res[KIR__EXPR_MAX];
    kir__fold_lanes(b, indent, s, st->reduce, rp_acc_type(p, s), pv, sizeof(pv));
    kir__fold_result(res, sizeof(res), s, st->reduce, st->dtype, pv);
    kir__printf(b, "%sN%d = %s;\n", indent, s, res);
}

void kir__render_pipelined(kir__buf_t *b, const kir_kernel_t *k, const bool *varies) {
    rp_t p = {.k = k, .varies = varies, .d = k->rank - 1};
    for (int a = 0; a < k->rank; a++)
        p.red[a] = a == p.d;
    p.rowlen = k->shape[p.d];
    p.stream = kir__streams(k, -1, p.rowlen);
    int last = k->nstages - 1;
    kir__printf(b, "    /* Software-pipelined (render_c_pipe.c): iteration r runs stage s on row "
                   "r - s; A<t>_<s> is fold t's result for the row at stage s. */\n");
    for (int s = 1; s <= last; s++)
        for (int t = 0; t < s; t++)
            kir__printf(b, "    %s A%d_%d = 0;\n", kir__ctype(k->stage[t].dtype), t, s);
    kir__printf(b, "    for (int64_t r = start; r < end + %d; r++) {\n", last);
    for (int s = 0; s <= last; s++)
        rp_stage_head(b, &p, s);
    bool any_pf = false;
    for (int n = 0; n < k->nin; n++)
        any_pf |= p.pf[n] = kir__prefetches(k, n);
    if (any_pf) {
        kir__printf(b, "        /* the next row, asked for ahead (see Prefetch in render_c.c) */\n"
                       "        const int64_t opf = r + 1 < end ? r + 1 : end - 1;\n");
        kir__row_bases(b, k, "opf", "pf%d", p.pf, "        ");
    }
    for (int s = 0; s < last; s++) {
        kir__printf(b, "        %s N%d; /* fold %d's result for row o%d */\n",
                    kir__ctype(k->stage[s].dtype), s, s, s);
        rp_fold_open(b, &p, s, "        ");
    }
    rp_loop(b, &p, "        ");
    for (int s = 0; s < last; s++)
        rp_fold_close(b, &p, s, "        ");
    /* Each row moves on to the next stage, the oldest first so that nothing is overwritten
     * before it is copied. */
    for (int s = last; s >= 1; s--) {
        for (int t = 0; t < s - 1; t++)
            kir__printf(b, "        A%d_%d = A%d_%d;\n", t, s, t, s - 1);
        kir__printf(b, "        A%d_%d = N%d;\n", s - 1, s, s - 1);
    }
    kir__printf(b, "    }\n");
    if (p.stream) /* streaming stores are weakly ordered: fence them before the loop returns */
        kir__printf(b, "#if " KIR__NT_COND "\n    __builtin_ia32_sfence();\n#endif\n");
}
