/*
 * matmul.c - batched matrix product: [..., M, K] @ [..., K, N] -> [..., M, N].
 *
 * The builder expands both inputs to the same batch dims (a broadcast batch has stride 0), so a
 * batch index picks one A and one B matrix. Float matrices go to OpenBLAS one batch at a time:
 * a matrix whose elements are row-major with some row pitch, or column-major (a transposed view),
 * is passed in place with the matching CblasTrans flag; any other layout (flipped, expanded inside
 * the matrix, ...) is first copied into a scratch buffer. Integer matrices, which BLAS does not
 * do, and float ones too large for BLAS's int dimensions use a plain triple loop that
 * accumulates in int64 (wrapping) or double.
 */
#include "ref_impl.h"

#include "../../server/limits.h"
#include "../../server/mem.h"

#include <cblas.h>
#include <limits.h>

typedef struct {
    const ref_view_t *a, *b;
    ref_view_t *out;
    int brank;                  /* batch axes */
    int64_t m, k, n;
} mm_ctx_t;

/* Starts an iterator over the batch axes following A (operand 0) and B (operand 1). */
static void batch_iter(const mm_ctx_t *c, ref__iter_t *it) {
    ref__iter_init(it, c->brank, c->out->shape);
    ref__iter_add(it, c->a->off, c->a->strides);
    ref__iter_add(it, c->b->off, c->b->strides);
}

/* =============================================================================================
 * Naive loop (integers, and floats too large for BLAS)
 * =========================================================================================== */

static void naive_chunk(void *arg, uint64_t begin, uint64_t end) {
    const mm_ctx_t *c = arg;
    const ref_view_t *a = c->a, *b = c->b;
    const uint8_t *ad = ref__data(a), *bd = ref__data(b);
    uint8_t *od = ref__data(c->out);
    int r = c->brank;
    int64_t sam = a->strides[r], sak = a->strides[r + 1];
    int64_t sbk = b->strides[r], sbn = b->strides[r + 1];
    uint64_t per_batch = (uint64_t)(c->m * c->n);
    ref__iter_t it;
    batch_iter(c, &it);
    uint64_t batch = begin / per_batch;
    ref__iter_seek(&it, batch);
    for (uint64_t j = begin; j < end; j++) {
        if (j / per_batch != batch) {
            batch = j / per_batch;
            ref__iter_seek(&it, batch);
        }
        uint64_t e = j % per_batch;
        int64_t row = (int64_t)(e / (uint64_t)c->n), col = (int64_t)(e % (uint64_t)c->n);
        int64_t ao = it.off[0] + row * sam, bo = it.off[1] + col * sbn;
        if (ref__is_float(a->dtype)) {
            double acc = 0;
            for (int64_t q = 0; q < c->k; q++)
                acc += ref__ld_f(ad, a->dtype, ao + q * sak) *
                       ref__ld_f(bd, b->dtype, bo + q * sbk);
            ref__st_f(od, c->out->dtype, (int64_t)j, acc);
        } else {
            uint64_t acc = 0;
            for (int64_t q = 0; q < c->k; q++)
                acc += (uint64_t)ref__ld_i(ad, a->dtype, ao + q * sak) *
                       (uint64_t)ref__ld_i(bd, b->dtype, bo + q * sbk);
            ref__st_i(od, c->out->dtype, (int64_t)j, (int64_t)acc);
        }
    }
}

/* =============================================================================================
 * BLAS
 * =========================================================================================== */

/* One operand matrix, rows x cols, as BLAS will see it. */
typedef struct {
    int64_t rows, cols, srow, scol; /* logical size and element strides */
    bool direct;                    /* passed in place (else copied to scratch) */
    bool trans;                     /* in place and column-major: pass CblasTrans */
    int64_t ld;                     /* leading dimension BLAS gets */
    uint8_t *scratch;               /* rows * cols contiguous elements when !direct (owned) */
    uint64_t scratch_bytes;
    int64_t copied_off;             /* the offset scratch holds now (-1: none) */
} mm_operand_t;

/* Decides whether the matrix can go to BLAS as it lies. Row-major needs unit column steps and a
 * row pitch of at least cols; column-major the reverse. A size-1 axis is never stepped along, so
 * its stride is free, but BLAS still wants a leading dimension of at least the other size. */
static void plan_operand(mm_operand_t *o) {
    o->direct = true;
    if ((o->cols == 1 || o->scol == 1) && (o->rows == 1 || o->srow >= o->cols)) {
        o->trans = false;
        o->ld = o->rows == 1 ? o->cols : o->srow;
    } else if ((o->rows == 1 || o->srow == 1) && (o->cols == 1 || o->scol >= o->rows)) {
        o->trans = true;
        o->ld = o->cols == 1 ? o->rows : o->scol;
    } else {
        o->direct = false;
        o->trans = false;
        o->ld = o->cols;
    }
    if (o->ld > INT_MAX) { /* a legal but huge pitch: copy rather than overflow BLAS's int */
        o->direct = false;
        o->trans = false;
        o->ld = o->cols;
    }
}

/* Returns a pointer BLAS can read the matrix at element offset off from, copying it into the
 * operand's scratch buffer when it is not direct. */
static const void *operand_ptr(mm_operand_t *o, const ref_view_t *v, int64_t off) {
    size_t size = proto_dtype_size(v->dtype);
    if (o->direct)
        return v->t->data + off * (int64_t)size;
    if (o->copied_off != off) { /* a stride-0 batch reuses the matrix it copied last */
        ref_view_t m = {.t = v->t, .off = off, .rank = 2, .dtype = v->dtype,
                        .shape = {o->rows, o->cols}, .strides = {o->srow, o->scol}};
        int64_t st[2] = {o->cols, 1};
        ref__copy(&m, o->scratch, 0, st);
        o->copied_off = off;
    }
    return o->scratch;
}

/* One matrix product split into blocks of rows (or of columns, when C is wider than tall), one
 * per thread of the daemon's own pool (OpenBLAS runs single-threaded: ref_set_threads), so that
 * BLAS's threads and the compute pool never fight over the cores. Each block packs the other
 * operand again, so there are no more blocks than threads. Whether the split changes the last
 * bits of a result is up to BLAS, which promises nothing: on an AVX-512 EPYC (OpenBLAS 0.3.21
 * reporting core "Haswell") a product computed in blocks of rows differs from one cblas_sgemm
 * call by up to ~6e-7 of its largest value, and a 1-thread daemon matches numpy bit for bit. So
 * a float product's last bits may depend on --threads; the interpreter and the compiled kernels
 * still agree exactly, as both come here. A product larger than LIM_CANCEL_GEMM_WORK
 * multiply-adds is cut into more blocks than threads (a multiple of them, blocks of 16 rows or
 * columns at least), so that a cancelled request (ref_set_cancel) stops between blocks. */
#define MM_ROW_MIN 64     /* rows per block at least (a multiple of BLAS's register tiles) */
#define MM_SPLIT_MIN (1 << 22) /* multiply-adds below which one thread does it all: waking
                                * another costs more than it saves */

typedef struct {
    bool f32;
    enum CBLAS_TRANSPOSE ta, tb;
    int64_t m, n, k;
    bool cols;                    /* blocks of columns of C (else of rows) */
    int64_t per;                  /* rows or columns per block */
    const uint8_t *pa, *pb;
    int64_t lda, ldb;
    int64_t step;                 /* elements from one row of op(A) (or column of op(B)) to the
                                   * next */
    uint8_t *pc;
    size_t size;
} mm_rows_t;

static void gemm_rows(void *arg, uint64_t begin, uint64_t end) {
    const mm_rows_t *c = arg;
    for (uint64_t blk = begin; blk < end; blk++) {
        int64_t total = c->cols ? c->n : c->m, i0 = (int64_t)blk * c->per;
        int64_t len = total - i0 < c->per ? total - i0 : c->per;
        int64_t m = c->cols ? c->m : len, n = c->cols ? len : c->n;
        const uint8_t *a = c->pa + (c->cols ? 0 : (size_t)(i0 * c->step) * c->size);
        const uint8_t *b = c->pb + (c->cols ? (size_t)(i0 * c->step) * c->size : 0);
        uint8_t *out = c->pc + (size_t)(c->cols ? i0 : i0 * c->n) * c->size;
        if (c->f32)
            cblas_sgemm(CblasRowMajor, c->ta, c->tb, (blasint)m, (blasint)n, (blasint)c->k,
                        1.0f, (const float *)a, (blasint)c->lda, (const float *)b,
                        (blasint)c->ldb, 0.0f, (float *)out, (blasint)c->n);
        else
            cblas_dgemm(CblasRowMajor, c->ta, c->tb, (blasint)m, (blasint)n, (blasint)c->k,
                        1.0, (const double *)a, (blasint)c->lda, (const double *)b,
                        (blasint)c->ldb, 0.0, (double *)out, (blasint)c->n);
    }
}

typedef struct {
    const mm_ctx_t *c;
    const mm_operand_t *oa, *ob; /* both direct */
    size_t size;
} mm_batch_t;

static void gemm_batches(void *arg, uint64_t begin, uint64_t end) {
    const mm_batch_t *mb = arg;
    const mm_ctx_t *c = mb->c;
    ref__iter_t it;
    batch_iter(c, &it);
    ref__iter_seek(&it, begin);
    for (uint64_t bi = begin; bi < end; bi++, ref__iter_next(&it)) {
        mm_rows_t mr = {c->a->dtype == PG_FLOAT32,
                        mb->oa->trans ? CblasTrans : CblasNoTrans,
                        mb->ob->trans ? CblasTrans : CblasNoTrans,
                        c->m, c->n, c->k, false, c->m,
                        c->a->t->data + it.off[0] * (int64_t)mb->size,
                        c->b->t->data + it.off[1] * (int64_t)mb->size,
                        mb->oa->ld, mb->ob->ld, 0,
                        c->out->t->data + bi * (uint64_t)(c->m * c->n) * mb->size, mb->size};
        gemm_rows(&mr, 0, 1);
    }
}

/* BLAS runs on one thread: the compute pool is what splits products (gemm_rows). */
void ref__matmul_init(void) { openblas_set_num_threads(1); }

/* Runs one gemm per batch. Returns 0 or -PG_EOUT_OF_MEMORY (scratch). */
static int blas_batches(const graph_t *g, int32_t i, mm_ctx_t *c, proto_err_t *err) {
    const ref_view_t *a = c->a, *b = c->b;
    int r = c->brank, rc = 0;
    size_t size = proto_dtype_size(a->dtype);
    mm_operand_t oa = {c->m, c->k, a->strides[r], a->strides[r + 1], .copied_off = -1};
    mm_operand_t ob = {c->k, c->n, b->strides[r], b->strides[r + 1], .copied_off = -1};
    mm_operand_t *ops[2] = {&oa, &ob};
    for (int q = 0; q < 2; q++) {
        plan_operand(ops[q]);
        if (ops[q]->direct)
            continue;
        ops[q]->scratch_bytes = (uint64_t)(ops[q]->rows * ops[q]->cols) * size;
        ops[q]->scratch = mem_data_alloc(ops[q]->scratch_bytes);
        if (!ops[q]->scratch) {
            rc = proto_fail(err, PG_EOUT_OF_MEMORY,
                            "node %d (matmul): no memory for a %llu-byte copy of an input",
                            (int)g->nodes[i].wire, (unsigned long long)ops[q]->scratch_bytes);
            goto out_free_scratch;
        }
    }
    uint64_t batches = c->out->t->numel / (uint64_t)(c->m * c->n);
    if (batches > 1 && oa.direct && ob.direct && c->m < 2 * MM_ROW_MIN) {
        /* Many small products: the batches are the units the threads share. */
        mm_batch_t mb = {c, &oa, &ob, size};
        ref__parallel_for(batches, (uint64_t)(c->m * c->n * c->k), gemm_batches, &mb);
        goto out_free_scratch;
    }
    ref__iter_t it;
    batch_iter(c, &it);
    for (uint64_t bi = 0; bi < batches; bi++, ref__iter_next(&it)) {
        const void *pa = operand_ptr(&oa, a, it.off[0]);
        const void *pb = operand_ptr(&ob, b, it.off[1]);
        uint8_t *pc = c->out->t->data + bi * (uint64_t)(c->m * c->n) * size;
        enum CBLAS_TRANSPOSE ta = oa.trans ? CblasTrans : CblasNoTrans;
        enum CBLAS_TRANSPOSE tb = ob.trans ? CblasTrans : CblasNoTrans;
        /* Blocks of the longer side of C: rows of op(A), or columns of op(B). */
        bool cols = c->n > c->m;
        int64_t total = cols ? c->n : c->m;
        int64_t nth = ref__threads();
        int64_t blocks = total / MM_ROW_MIN < nth ? total / MM_ROW_MIN : nth;
        /* In doubles: m * n * k may pass 2^64 (each is below 2^31). */
        double work = (double)c->m * (double)c->n * (double)c->k;
        if (work > (double)LIM_CANCEL_GEMM_WORK) {
            double want = ceil(work / (double)LIM_CANCEL_GEMM_WORK / (double)nth) * (double)nth;
            double most = (double)(total / 16);
            if (want > most)
                want = most;
            if (want > (double)blocks)
                blocks = (int64_t)want;
        }
        if (blocks > 1 && work >= MM_SPLIT_MIN) {
            int64_t per = (total + blocks - 1) / blocks;
            per = (per + 15) / 16 * 16;
            int64_t step = cols ? (ob.trans ? ob.ld : 1) : (oa.trans ? 1 : oa.ld);
            mm_rows_t mr = {a->dtype == PG_FLOAT32, ta, tb, c->m, c->n, c->k, cols, per, pa, pb,
                            oa.ld, ob.ld, step, pc, size};
            uint64_t nblk = (uint64_t)((total + per - 1) / per);
            ref__parallel_for(nblk, (uint64_t)(per * (cols ? c->m : c->n) * c->k), gemm_rows,
                              &mr);
            continue;
        }
        if (a->dtype == PG_FLOAT32)
            cblas_sgemm(CblasRowMajor, ta, tb, (blasint)c->m, (blasint)c->n, (blasint)c->k, 1.0f,
                        pa, (blasint)oa.ld, pb, (blasint)ob.ld, 0.0f, (float *)pc, (blasint)c->n);
        else
            cblas_dgemm(CblasRowMajor, ta, tb, (blasint)c->m, (blasint)c->n, (blasint)c->k, 1.0,
                        pa, (blasint)oa.ld, pb, (blasint)ob.ld, 0.0, (double *)pc, (blasint)c->n);
    }
out_free_scratch:
    mem_data_free(ob.scratch, ob.scratch_bytes);
    mem_data_free(oa.scratch, oa.scratch_bytes);
    return rc;
}

int ref__matmul(const graph_t *g, int32_t i, const ref_view_t *vals, ref_view_t *out,
                proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    const ref_view_t *a = &vals[n->in[0]], *b = &vals[n->in[1]];
    int r = n->rank - 2;
    if (r < 0 || a->rank != n->rank || b->rank != n->rank)
        return ref__bad_node(g, i, "matmul inputs of another rank than the output", err);
    for (int d = 0; d < r; d++)
        if (a->shape[d] != n->shape[d] || b->shape[d] != n->shape[d])
            return ref__bad_node(g, i, "batch dims not expanded to the output", err);
    mm_ctx_t c = {a, b, out, r, a->shape[r], a->shape[r + 1], b->shape[r + 1]};
    if (b->shape[r] != c.k || n->shape[r] != c.m || n->shape[r + 1] != c.n)
        return ref__bad_node(g, i, "matrix sizes do not chain", err);
    if (a->dtype != b->dtype || a->dtype != n->dtype)
        return ref__bad_node(g, i, "inputs and output of different dtypes", err);
    int rc = ref__alloc(g, i, out, err);
    if (rc < 0)
        return rc;
    if (n->numel == 0)
        return 0;
    if (c.k == 0) { /* an empty sum: every element is 0 (all dtypes are 0 bits) */
        memset(out->t->data, 0, out->t->nbytes);
        return 0;
    }
    bool blas = ref__is_float(n->dtype) && c.m <= INT_MAX && c.n <= INT_MAX && c.k <= INT_MAX;
    if (blas)
        return blas_batches(g, i, &c, err);
    ref__parallel_for(n->numel, (uint64_t)c.k, naive_chunk, &c);
    return 0;
}
