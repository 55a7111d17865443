/*
 * matmul_relu.c - a first graph: store two matrices in picogradd, compute relu(A @ B) there in
 * one `run`, get the result back inline and check it against plain C.
 *
 *   build/bin/picogradd &                      # or deploy/run.sh
 *   build/bin/pg_example_matmul_relu [URL]
 *
 * Exits 0 when the daemon's result matches the naive C loop, 1 otherwise.
 */
#include <picograd.h>

#include <math.h>
#include <stdio.h>

#define M 3
#define K 4
#define N 5

int main(int argc, char **argv) {
    pg_error_t err;
    pg_conn_t *c = pg_connect(argc > 1 ? argv[1] : NULL, &err);
    if (!c) {
        fprintf(stderr, "connect: %s: %s\n", pg_error_name(err.code), err.message);
        return 1;
    }
    /* Values of both signs, so that relu has something to clip. */
    float a[M][K], b[K][N];
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++)
            a[i][k] = (float)((i * K + k) % 7) - 3.0f;
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++)
            b[k][j] = 0.5f * (float)((k * N + j) % 5) - 1.0f;

    int status = 1;
    uint64_t ha = 0, hb = 0;
    pg_graph_t *g = NULL;
    if (pg_put(c, PG_FLOAT32, 2, (int64_t[]){M, K}, a, &ha) != 0 ||
        pg_put(c, PG_FLOAT32, 2, (int64_t[]){K, N}, b, &hb) != 0) {
        fprintf(stderr, "put: %s\n", pg_strerror(c));
        goto out_close;
    }

    /* The graph: node 0 = A, node 1 = B, node 2 = A @ B, node 3 = relu(node 2). */
    g = pg_graph_new();
    if (!g)
        goto out_close;
    int na = pg_graph_input(g, ha);
    int nb = pg_graph_input(g, hb);
    int nab = pg_graph_op(g, "matmul", (int[]){na, nb}, 2, NULL, 0);
    int ny = pg_graph_op(g, "relu", &nab, 1, NULL, 0);
    if (ny < 0) { /* a failed call adds nothing, so the first failure propagates to the end */
        fprintf(stderr, "graph: %s\n", pg_graph_last_error(g)->message);
        goto out_close;
    }

    pg_output_t out = {.node = ny, .keep = 0}; /* return the data inline */
    pg_result_t res;
    if (pg_run(c, g, &out, 1, &res) != 0) {
        fprintf(stderr, "run: %s\n", pg_strerror(c));
        goto out_close;
    }
    const pg_tensor_t *t = &res.tensor;
    printf("relu(A @ B): %s [%lld, %lld]\n", pg_dtype_name(t->dtype), (long long)t->shape[0],
           (long long)t->shape[1]);
    int bad = t->dtype != PG_FLOAT32 || t->rank != 2 || t->shape[0] != M || t->shape[1] != N;
    const float *y = t->data;
    for (int i = 0; i < M && !bad; i++) {
        printf("  ");
        for (int j = 0; j < N; j++) {
            float want = 0;
            for (int k = 0; k < K; k++)
                want += a[i][k] * b[k][j];
            want = want > 0 ? want : 0;
            printf(" %7.3f", y[i * N + j]);
            if (fabsf(y[i * N + j] - want) > 1e-5f * (1 + fabsf(want))) {
                fprintf(stderr, "\nmismatch at [%d, %d]: %g, expected %g\n", i, j, y[i * N + j],
                        want);
                bad = 1;
                break;
            }
        }
        printf("\n");
    }
    pg_tensor_release(&res.tensor);
    if (bad) {
        fprintf(stderr, "the daemon's result differs from the C loop\n");
        goto out_close;
    }
    printf("matches the naive C loop\n");
    status = 0;
out_close:
    pg_graph_free(g);
    pg_close(c); /* frees A and B with the session */
    return status;
}
