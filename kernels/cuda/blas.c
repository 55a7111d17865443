/*
 * blas.c - cuBLAS handles and row-major products (blas.h).
 */
#include "blas.h"

#include <limits.h>

static int blas_fail(proto_err_t *err, int dev, cublasStatus_t st, const char *what) {
    return proto_fail(err, st == CUBLAS_STATUS_ALLOC_FAILED ? PG_EOUT_OF_MEMORY : PG_EINTERNAL,
                      "cuda:%d: %s failed: cuBLAS status %d", dev, what, (int)st);
}

int cuda_blas_create(int dev, CUstream s, cublasHandle_t *h, proto_err_t *err) {
    const cuda_cublas_t *b = cuda_cublas();
    *h = NULL;
    if (!b)
        return proto_fail(err, PG_ENO_DEVICE, "device 'cuda:%d': cuBLAS is not loaded", dev);
    int rc = cuda_enter(dev, err);
    if (rc)
        return rc;
    cublasStatus_t st = b->cublasCreate(h);
    if (st != CUBLAS_STATUS_SUCCESS) {
        *h = NULL;
        return blas_fail(err, dev, st, "cublasCreate");
    }
    if ((st = b->cublasSetStream(*h, (cudaStream_t)s)) != CUBLAS_STATUS_SUCCESS ||
        (st = b->cublasSetMathMode(*h, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
        b->cublasDestroy(*h);
        *h = NULL;
        return blas_fail(err, dev, st, "configuring a cuBLAS handle");
    }
    return 0;
}

void cuda_blas_destroy(int dev, cublasHandle_t h) {
    proto_err_t e;
    if (h && cuda_cublas() && cuda_enter(dev, &e) == 0)
        cuda_cublas()->cublasDestroy(h);
}

int cuda_gemm(int dev, cublasHandle_t h, pg_dtype_t dtype, int64_t batch, int64_t m, int64_t n,
              int64_t k, cuda_mat_t a, cuda_mat_t b, cuda_mat_t c, proto_err_t *err) {
    const cuda_cublas_t *bl = cuda_cublas();
    if (dtype != PG_FLOAT32 && dtype != PG_FLOAT64)
        return proto_fail(err, PG_EBAD_DTYPE, "cuBLAS multiplies float32 and float64, not %s",
                          proto_dtype_name(dtype));
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX || a.ld > INT_MAX || b.ld > INT_MAX ||
        c.ld > INT_MAX || batch > INT_MAX || c.trans)
        return proto_fail(err, PG_ETOO_LARGE, "a %lldx%lldx%lld product is over cuBLAS's sizes",
                          (long long)m, (long long)k, (long long)n);
    int rc = cuda_enter(dev, err);
    if (rc)
        return rc;
    /* C^T = op(B)^T op(A)^T in column-major terms (see blas.h). */
    cublasOperation_t ta = b.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t tb = a.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st;
    if (dtype == PG_FLOAT32) {
        const float one = 1.0f, zero = 0.0f;
        st = bl->cublasSgemmStridedBatched(
            h, ta, tb, (int)n, (int)m, (int)k, &one, (const float *)(uintptr_t)b.ptr, (int)b.ld,
            b.batch_stride, (const float *)(uintptr_t)a.ptr, (int)a.ld, a.batch_stride, &zero,
            (float *)(uintptr_t)c.ptr, (int)c.ld, c.batch_stride, (int)batch);
    } else {
        const double one = 1.0, zero = 0.0;
        st = bl->cublasDgemmStridedBatched(
            h, ta, tb, (int)n, (int)m, (int)k, &one, (const double *)(uintptr_t)b.ptr, (int)b.ld,
            b.batch_stride, (const double *)(uintptr_t)a.ptr, (int)a.ld, a.batch_stride, &zero,
            (double *)(uintptr_t)c.ptr, (int)c.ld, c.batch_stride, (int)batch);
    }
    return st == CUBLAS_STATUS_SUCCESS ? 0 : blas_fail(err, dev, st, "cublas gemm");
}
