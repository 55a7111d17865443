/*
 * kir_render.h - what the C renderer (render_c.c) and the CUDA renderer (render_cuda.c) share:
 * a growing string, the expression of one SSA value (types, conversions, one primitive), and the
 * analyses of a kernel's shape (contiguous inputs, which values vary along a loop, which costly
 * value a staged kernel may keep). Defined in render_c.c, where they were born; internal to
 * kernels/codegen/ (prefix kir__).
 *
 * The expressions are C that is also valid CUDA C++ once the CUDA prelude has defined the few
 * names they use (int64_t and friends, INFINITY, NAN, pg_f2i32, pg_ipow, pg_expf, ...): only two
 * GCC builtins differ, which kir__value_expr spells per target.
 */
#ifndef PG_KIR_RENDER_H
#define PG_KIR_RENDER_H

#include "kir.h"

#include <stddef.h>

/* Longest expression (an index, one value's initializer) the renderers build. */
#define KIR__EXPR_MAX 1024

/* A growing string. */
typedef struct {
    char *p;    /* NUL-terminated text (owned; free with pg_free) */
    size_t n;   /* bytes used, without the NUL */
    size_t cap; /* bytes allocated */
    bool oom;   /* an append failed: the result is unusable */
} kir__buf_t;

/* Appends printf-formatted text to b; on failure sets b->oom and appends nothing more. */
void kir__printf(kir__buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ops.def's name of p ("?" when out of range). */
const char *kir__prim_name(prim_t p);
bool kir__is_float(pg_dtype_t dt);
/* The C type a value of dtype dt lives in (bool: a uint8_t holding 0 or 1). */
const char *kir__ctype(pg_dtype_t dt);
/* The expression converting expr (float domain: a double; else a wrapping int64) to dt, as the
 * interpreter stores it. */
void kir__convert(char *out, size_t cap, bool float_domain, pg_dtype_t dt, const char *expr);
/* An exact literal for v (hex float; NAN and INFINITY spelled out). */
void kir__double_lit(char *out, size_t cap, double v);
/* The initializer of value j; idx[n] is input n's index expression. cuda: spell the float32
 * builtins as CUDA does (fabsf, sqrtf) instead of GCC's. */
void kir__value_expr(char *out, size_t cap, const kir_kernel_t *k, int j,
                     char idx[][KIR__EXPR_MAX], bool cuda);

bool kir__has_reduce(const kir_kernel_t *k);
bool kir__staged(const kir_kernel_t *k);
/* True when input in is laid out like the iteration space in C order (size-1 axes aside). */
bool kir__is_contiguous(const kir_kernel_t *k, const kir_input_t *in);
/* Input in's index: base (NULL: its offset) plus " + iD * S" for each axis in `axes`. */
void kir__affine(char *out, size_t cap, const kir_input_t *in, const char *base,
                 const bool *axes, int rank, const int64_t *shape);
/* Emits "const int64_t iD = (lin / DIV) % SIZE;" for each axis in `want` of those `over`
 * enumerates in C order. */
void kir__unflatten(kir__buf_t *b, const kir_kernel_t *k, const char *lin, const bool *over,
                    const bool *want, const char *indent);
/* varies[j]: value j changes along its loop (depends on a load). */
void kir__varies(const kir_kernel_t *k, bool *varies);
/* Merges adjacent axes of an elementwise kernel that every input walks as one, drops size-1
 * axes (changes k's iteration space, not its values). */
void kir__coalesce(kir_kernel_t *k);
/* The index expressions of an elementwise kernel's inputs in idx ("off + i" for one laid out
 * like the loop, else the affine index over every axis); all[d] is set for every axis, need[d]
 * when some input steps along axis d (so the loop must define iD). */
void kir__elementwise_index(const kir_kernel_t *k, char idx[][KIR__EXPR_MAX], bool *all,
                            bool *need);
/* A coalesced copy of k (pg_free it), or NULL when memory runs out. */
kir_kernel_t *kir__coalesced(const kir_kernel_t *k);
/* Finishes a rendered kernel: names it `prefix` + 16 hex digits of the hash of its text (so
 * equal kernels get equal names and sources) in name (name_cap bytes, at least the length of
 * placeholder + 1), writes that name over every `placeholder` in the text and returns the text
 * (the caller's now). NULL, with b's text freed, when an append failed. */
char *kir__finish(kir__buf_t *b, const char *prefix, const char *placeholder, char *name,
                  size_t name_cap);
/* True when computing value j per element involves a transcendental function or a division
 * (values that do not vary along the loop are computed once per row anyway). */
bool kir__costly(const kir_kernel_t *k, const bool *varies, int j);
/* The costly value (*dst, last stage) a staged kernel can keep from an earlier fold (*src);
 * both stay -1 when there is none. */
void kir__find_kept(const kir_kernel_t *k, const bool *varies, int *dst, int *src);
/* Folds (render_c.c). A float fold runs in KIR_LANES lanes acc<s>[l] (kir.h) of the type
 * kir__fold_acc_type gives; kir__fold_init declares them; kir__fold_expr writes one step
 * "acc op x"; kir__fold_lanes emits the pairwise combination and puts the name of the combined
 * value in p; kir__fold_result writes it rounded to dt (max and min: NaN when any element was,
 * which the fold tracks in nan<s>). */
const char *kir__fold_acc_type(prim_t op, pg_dtype_t rdt, uint64_t rlen);
void kir__fold_init(kir__buf_t *b, const char *indent, int s, prim_t op, const char *at);
int kir__fold_expr(char *out, size_t cap, prim_t op, const char *acc, const char *x);
void kir__fold_lanes(kir__buf_t *b, const char *indent, int s, prim_t op, const char *at,
                     char *p, size_t pcap);
void kir__fold_result(char *out, size_t cap, int s, prim_t op, pg_dtype_t dt, const char *p);

/* Streaming stores (render_c.c, rc_loop_staged): compiled in where this holds, for row kernels
 * with a float32 output of at least KIR__NT_MIN_BYTES. */
#define KIR__NT_COND "defined(__AVX__) && defined(__GNUC__) && !defined(__clang__)"
#define KIR__NT_MIN_BYTES (4ull << 20)
/* True when staged kernel k writes its rows (of rowlen elements) with streaming stores;
 * keep_dst as kir__find_kept gives it. */
bool kir__streams(const kir_kernel_t *k, int keep_dst, int64_t rowlen);
/* Row kernels ask for the next row of input n ahead of its loads (render_c.c, "Prefetch"):
 * its row is contiguous, at most KIR__PF_MAX_ROW bytes, and differs from row to row. */
#define KIR__PF_MAX_ROW (64 << 10)
bool kir__prefetches(const kir_kernel_t *k, int n);
/* Emits, at indent, `int64_t <names>;` and a block setting each to the base of row `row` (an
 * expression over the axes before k->row) of input n, for each n that `only` marks (NULL:
 * all); names are fmt with n ("b%d_1"). */
void kir__row_bases(kir__buf_t *b, const kir_kernel_t *k, const char *row, const char *fmt,
                    const bool *only, const char *indent);

/* Software-pipelined row kernels (render_c_pipe.c): true when staged kernel k can run the
 * stages of consecutive rows in one loop, and the renderer of that loop. */
bool kir__pipelines(const kir_kernel_t *k, const bool *varies);
void kir__render_pipelined(kir__buf_t *b, const kir_kernel_t *k, const bool *varies);

/* Emits the header comment of kernel k (iteration space, inputs, SSA list), naming `name` (the
 * placeholder) and the renderer `file`. */
void kir__comment(kir__buf_t *b, const kir_kernel_t *k, const char *name, const char *file);
/* True when k is well formed enough to render without reading out of bounds. */
bool kir__valid(const kir_kernel_t *k);

#endif /* PG_KIR_RENDER_H */
