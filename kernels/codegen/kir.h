/*
 * kir.h - the kernel IR: one fused loop, described independently of any target language.
 *
 * A kernel computes one contiguous output from up to KIR_MAX_INPUTS contiguous input buffers.
 * It iterates over an N-d "iteration space" (shape[0..rank)); every input is read through an
 * affine index baked into the kernel (offset + sum(idx[d] * strides[d]), in elements), which is
 * how permute, expand, slice and flip cost nothing inside a fused kernel. The body is an SSA list
 * of values (loads, constants, unary/binary/where/cast primitives from ops.def); the last value is
 * the result. An optional trailing reduction folds the result over the axes marked `reduced`.
 *
 *   before (primitives):  t = mul(a, expand(b)); u = relu(t); s = sum(u, dims=[1])
 *   after (one kernel):   iteration space [N, M], reduced = {1}
 *                         v0 = load in0[i0*M + i1]; v1 = load in1[i1]; v2 = mul v0 v1;
 *                         v3 = relu v2; out[i0] = sum over i1 of v3
 *
 * A staged kernel (see `stages` below) runs several such folds over each row before it writes:
 *
 *   softmax over rows:  stage 0: v0 = load x; fold max             -> a0 per row
 *                       stage 1: v1 = load x; v2 = acc a0; v3 = sub v1 v2; v4 = exp v3; fold sum
 *                       stage 2: ... v9 = div v8 (acc a1); out[row, j] = v9
 *
 * The C renderer (render_c.c) turns it into C; the CUDA renderer (render_cuda.c) turns the
 * same structure into CUDA C++ for NVRTC. A kernel's source, and therefore its name and cache key, depends only on this
 * structure: never on a counter or on the order of earlier requests.
 */
#ifndef PG_KIR_H
#define PG_KIR_H

#include "../../server/graph/graph.h"

#include <string.h>

#define KIR_MAX_INPUTS 16
#define KIR_MAX_VALS 256

typedef enum {
    KIR_LOAD,   /* read input `input` at the current index */
    KIR_CONST,  /* the number `value` in `dtype` */
    KIR_OP,     /* primitive `prim` (PK_UNARY incl. cast, PK_BINARY, PK_WHERE) on values a, b, c */
    KIR_ACC,    /* the result of reduction stage `input` for the current row (see stages) */
} kir_kind_t;

typedef struct {
    kir_kind_t kind;
    prim_t prim;        /* KIR_OP: the primitive (its semantics are ops.def's) */
    pg_dtype_t dtype;   /* the value's dtype */
    int a, b, c;        /* KIR_OP operands: indices of earlier values (unused ones -1) */
    int input;          /* KIR_LOAD: index into kir_kernel_t.in; KIR_ACC: a stage index */
    double value;       /* KIR_CONST */
} kir_val_t;

typedef struct {
    pg_dtype_t dtype;                  /* element type of the buffer */
    int64_t off;                       /* element offset of iteration index [0, ..., 0] */
    int64_t strides[PROTO_MAX_RANK];   /* elements per step of each iteration axis (0: broadcast,
                                        * negative: flipped) */
} kir_input_t;

/* One stage of a staged kernel: values vals[previous stage's end, end); the last one is the
 * stage's value, folded over the row by `reduce` and rounded to `dtype`. */
typedef struct {
    prim_t reduce;                     /* a reduction; the last stage: the kernel's `reduce` */
    int end;                           /* one past the stage's last value */
    pg_dtype_t dtype;                  /* the folded value's dtype (the reduction node's) */
} kir_stage_t;

#define KIR_MAX_STAGES 8

typedef struct {
    int rank;                          /* iteration space rank, 0 to PROTO_MAX_RANK */
    int64_t shape[PROTO_MAX_RANK];     /* iteration space shape */
    int nin;
    kir_input_t in[KIR_MAX_INPUTS];
    int nvals;
    kir_val_t vals[KIR_MAX_VALS];      /* SSA, in order; vals[nvals - 1] is the result */
    prim_t reduce;                     /* PRIM_sum, prod, max, min, any, all; PRIM_COUNT: none */
    bool reduced[PROTO_MAX_RANK];      /* with a reduction: the iteration axes folded away */
    pg_dtype_t out_dtype;              /* the output's dtype (the result's) */
    /* Staged kernels (nstages > 1): the axes [row, rank) form a row, and the loop runs over rows.
     * For each row, every stage but the last folds its values over the row (max, then a sum of
     * exp(x - max), ...); KIR_ACC values of later stages read those per-row results, which is
     * how a reduction broadcast back into its consumer (softmax, layer_norm) stays in one kernel.
     * The last stage writes the row (elementwise) or folds it into one output (reduce, with
     * reduced[] marking exactly the row axes). Plain kernels have nstages == 1. */
    int inplace;                       /* 1 + an input that is read from the output buffer
                                        * itself, which the executor fills with that input's
                                        * values first (an elementwise epilogue written over
                                        * its input); 0: none */
    int nstages;
    int row;
    kir_stage_t stage[KIR_MAX_STAGES];
} kir_kernel_t;

/*
 * The compiled form of a kernel: computes output elements [start, end) in C order of the output
 * shape (the iteration shape without reduced axes). bufs[0] is the output, bufs[1 + k] input k.
 */
typedef void (*kir_fn_t)(void *const *bufs, int64_t start, int64_t end);

/* Appends a copy of v to k's values; returns its index or -1 when the kernel is full. Fields
 * are copied one by one into zeroed storage, so that the kernel's bytes (padding included), and
 * with them its source and name, depend only on them. */
static inline int kir_add_val(kir_kernel_t *k, const kir_val_t *v) {
    if (k->nvals >= KIR_MAX_VALS)
        return -1;
    kir_val_t *d = &k->vals[k->nvals];
    memset(d, 0, sizeof(*d));
    d->kind = v->kind;
    d->prim = v->prim;
    d->dtype = v->dtype;
    d->a = v->a;
    d->b = v->b;
    d->c = v->c;
    d->input = v->input;
    d->value = v->value;
    return k->nvals++;
}

/* Output elements of a kernel (product of the non-reduced iteration dims). */
uint64_t kir_out_numel(const kir_kernel_t *k);

/* Units that kir_fn_t's [start, end) counts: rows of a staged kernel, (output, block) pairs of
 * a split reduction, else output elements. */
uint64_t kir_units(const kir_kernel_t *k);

/* Float sums, products, max and min fold in KIR_LANES interleaved lanes: element j of the
 * innermost reduced axis goes to lane j % KIR_LANES (each lane in C order), and the lanes combine
 * pairwise, (0 1)(2 3)... then ((0 1)(2 3))... up to one value. A loop in that shape vectorizes
 * without reassociating anything, and the interpreter folds the same way (kernels/ref/reduce.c),
 * so both give the same bits. 16 lanes of double are two AVX-512 registers: enough independent
 * accumulators to hide the add latency. */
#define KIR_LANES 16

/* A float fold whose innermost reduced axis is longer than KIR_FOLD_BLOCK runs block by block
 * along it (blocks of KIR_FOLD_BLOCK elements, each folded in lanes as above), and the blocks'
 * values combine in order. The blocks are what several threads can share when a reduction has
 * few outputs (a loss, a full sum): see kir_split_blocks. */
#define KIR_FOLD_BLOCK 32768

/* A float32 sum of at most KIR_F32_SUM_MAX elements accumulates in float32 lanes (at most 128
 * additions per lane, a relative error below 1e-5 of the sum of magnitudes, like PyTorch's own
 * float32 sums); longer float32 sums, and products, accumulate in double. Twice the lanes per
 * vector register as double: this is what makes a softmax or layer_norm row sum as cheap as the
 * loads that feed it. The interpreter decides the same way, so both give the same bits. */
#define KIR_F32_SUM_MAX 2048

static inline bool kir_sum_in_float(prim_t op, pg_dtype_t dt, uint64_t len) {
    return op == PRIM_sum && dt == PG_FLOAT32 && len <= KIR_F32_SUM_MAX;
}

/* Blocks of a fold over an innermost axis of n elements (1: no blocks). */
static inline int64_t kir_fold_blocks(int64_t n) {
    return n > KIR_FOLD_BLOCK ? (n + KIR_FOLD_BLOCK - 1) / KIR_FOLD_BLOCK : 1;
}

/* For a plain (one-stage) float reduction with blocks: the blocks per output that the compiled
 * function computes as separate units, each writing its block's value as a double to bufs[0]
 * (unit u: output u / blocks, block u % blocks); the executor then combines them in order and
 * rounds to the output. 0 when the kernel folds whole outputs itself. */
int64_t kir_split_blocks(const kir_kernel_t *k);

/*
 * Renders k as a self-contained C11 translation unit defining
 *   void NAME(void *const *bufs, int64_t start, int64_t end)
 * where NAME is "pg_k_" followed by 16 hex digits of a hash of the kernel's body, written to
 * name (at least 24 bytes). Returns a new NUL-terminated string (free with pg_free), or NULL
 * when memory runs out. The source is a function of k only.
 */
char *kir_render_c(const kir_kernel_t *k, char *name, size_t name_cap);

/*
 * Renders k as a CUDA C++ translation unit for NVRTC (render_cuda.c) defining
 *   extern "C" __global__ void NAME(const pg_cu_bufs_t bufs, long long start, long long end)
 * that computes units [start, end) (kir_units: output elements, rows of a staged kernel,
 * (output, block) pairs of a split reduction; bufs.p[0] the output, bufs.p[1 + k] input k, all
 * device pointers, passed by value in one struct of KIR_MAX_INPUTS + 1 pointers). NAME is
 * "pg_cu_" followed by 16 hex digits of a hash of the source, written to name (at least 24
 * bytes). Launch it with kir_cuda_launch's block size and any grid: every kernel strides over
 * its units by the grid. Results match the C kernel's within float rounding, not bit for bit:
 * reductions fold in a tree across threads (see kernels/codegen/README.md). Returns a new
 * string (free with pg_free), or NULL when k is malformed or memory runs out.
 */
char *kir_render_cuda(const kir_kernel_t *k, char *name, size_t name_cap);

/* How a CUDA kernel of kir_render_cuda maps its units to threads. */
typedef struct {
    int threads;       /* threads per block (the kernel's __launch_bounds__) */
    int unit_threads;  /* threads that share one unit: 1 (elementwise: a thread per output
                        * element), 32 (a warp folds one output or row) or `threads` (a block
                        * folds one output or row) */
} kir_cuda_launch_t;

/* The launch shape of k's CUDA kernel; a grid of ceil(units * unit_threads / threads) blocks
 * covers every unit once (fewer blocks loop). */
kir_cuda_launch_t kir_cuda_launch(const kir_kernel_t *k);

/* 64-bit FNV-1a hash of n bytes, continuing from h (start with KIR_HASH_INIT). */
#define KIR_HASH_INIT 0xcbf29ce484222325ull
uint64_t kir_hash(uint64_t h, const void *data, size_t n);

#endif /* PG_KIR_H */
