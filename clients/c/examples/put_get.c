/*
 * put_get.c - the C client in thirty lines: store a matrix in picogradd, read it back, free it.
 *
 *   build/bin/picogradd &                      # or deploy/run.sh
 *   build/bin/pg_example_put_get [URL]
 */
#include <picograd.h>

#include <stdio.h>

int main(int argc, char **argv) {
    pg_error_t err;
    pg_conn_t *c = pg_connect(argc > 1 ? argv[1] : NULL, &err);
    if (!c) {
        fprintf(stderr, "connect: %s: %s\n", pg_error_name(err.code), err.message);
        return 1;
    }
    float x[2][3] = {{1, 2, 3}, {4, 5, 6}};
    int64_t shape[2] = {2, 3};
    uint64_t h;
    pg_tensor_t t;
    int status = 1;
    if (pg_put(c, PG_FLOAT32, 2, shape, x, &h) != 0 || pg_get(c, h, &t) != 0) {
        fprintf(stderr, "%s\n", pg_strerror(c));
        goto out;
    }
    const float *y = t.data;
    printf("handle %llu: %s [%lld, %lld] =", (unsigned long long)h, pg_dtype_name(t.dtype),
           (long long)t.shape[0], (long long)t.shape[1]);
    for (uint64_t i = 0; i < t.numel; i++)
        printf(" %g", y[i]);
    printf("\n");
    pg_tensor_release(&t);
    /* Freeing twice shows a structured error: the second call is refused, nothing breaks. */
    pg_free(c, h);
    if (pg_free(c, h) != 0)
        printf("second free: %s\n", pg_strerror(c));
    status = 0;
out:
    pg_close(c);
    return status;
}
