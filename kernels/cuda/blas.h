/*
 * blas.h - matrix products on a GPU through cuBLAS.
 *
 * cuBLAS is column-major and picograd's matrices are row-major; a row-major matrix is the
 * column-major matrix of its transpose, so C = A B is computed as C^T = B^T A^T, which needs no
 * copy, only the operands swapped:
 *
 *   row-major  C[m,n] = A[m,k] B[k,n]   ->   cublasSgemm(N, N, n, m, k, B, ldb, A, lda, C, ldc)
 *
 * TF32 stays off (CUBLAS_DEFAULT_MATH: full float32 products), so results agree with the CPU's
 * within float32 rounding; PyTorch also keeps TF32 off for matmul by default.
 */
#ifndef PG_CUDA_BLAS_H
#define PG_CUDA_BLAS_H

#include "devmem.h"

/* One row-major operand: element [i, j] of matrix b is at ptr + (b * batch_stride + i * ld + j)
 * elements, or at ptr + (b * batch_stride + j * ld + i) when trans (a transposed view). */
typedef struct {
    CUdeviceptr ptr;
    int64_t ld, batch_stride;
    bool trans;
} cuda_mat_t;

/* Creates a cuBLAS handle bound to stream s of device dev. Returns 0 or a negative PG_E*. */
int cuda_blas_create(int dev, CUstream s, cublasHandle_t *h, proto_err_t *err);
/* Destroys a handle (NULL is ignored). */
void cuda_blas_destroy(int dev, cublasHandle_t h);

/* C = A B for batch products of [m,k] x [k,n] (float32 or float64), queued on the handle's
 * stream; c must be row-major with c.ld >= n and not transposed. Returns 0, -PG_EBAD_DTYPE for
 * another dtype, -PG_ETOO_LARGE when a size exceeds cuBLAS's int, or -PG_EINTERNAL. */
int cuda_gemm(int dev, cublasHandle_t h, pg_dtype_t dtype, int64_t batch, int64_t m, int64_t n,
              int64_t k, cuda_mat_t a, cuda_mat_t b, cuda_mat_t c, proto_err_t *err);

#endif /* PG_CUDA_BLAS_H */
