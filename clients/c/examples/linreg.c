/*
 * linreg.c - training in the daemon: fit y = X w + b by gradient descent, one `run` per step.
 *
 *   build/bin/picogradd &                      # or deploy/run.sh
 *   build/bin/pg_example_linreg [URL] [STEPS]
 *
 * The data (X, y) and the parameters (w, b) live in picogradd as handles. One graph does a whole
 * step, and the same graph is sent every step (its plan is cached after the first):
 *
 *   loss = mse_loss(X @ w + b, y)                  the forward pass
 *   gw = grad(loss, w), gb = grad(loss, b)         one reverse pass, shared by both grads
 *   w <- w - lr * gw, b <- b - lr * gb             `assign` nodes: the handles take the new values
 *
 * Only the loss comes back (4 bytes a step). Every input of w and b in the step reads the values
 * from before it; the assigns take effect together when the run succeeds, so a failed step
 * changes nothing (PROTOCOL.md, `assign`).
 *
 * Exits 0 when w and b match the coefficients the data was made with, 1 on an error or a poor
 * fit, and 77 (the "skipped" code of ctest and automake) when the daemon does not serve `grad`.
 */
#include <picograd.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define N 256 /* samples */
#define D 4   /* features */
#define EXIT_SKIP 77

/* A small deterministic generator (an LCG), so every run fits the same data. */
static float uniform(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1u << 24) * 2.0f - 1.0f; /* [-1, 1) */
}

int main(int argc, char **argv) {
    const float w_true[D] = {1.5f, -2.0f, 0.25f, 3.0f}, b_true = -0.75f;
    const double lr = 0.2;
    int steps = argc > 2 ? atoi(argv[2]) : 300;
    pg_error_t err;
    pg_conn_t *c = pg_connect(argc > 1 && argv[1][0] ? argv[1] : NULL, &err);
    if (!c) {
        fprintf(stderr, "connect: %s: %s\n", pg_error_name(err.code), err.message);
        return 1;
    }

    /* The data: X uniform in [-1, 1), y = X w_true + b_true exactly (no noise, so the fit can be
     * checked tightly). */
    static float x[N][D], y[N];
    uint32_t seed = 12345;
    for (int i = 0; i < N; i++) {
        y[i] = b_true;
        for (int k = 0; k < D; k++) {
            x[i][k] = uniform(&seed);
            y[i] += x[i][k] * w_true[k];
        }
    }
    float w0[D] = {0}, b0 = 0;

    int status = 1;
    uint64_t hx, hy, hw, hb;
    pg_graph_t *g = NULL;
    if (pg_put(c, PG_FLOAT32, 2, (int64_t[]){N, D}, x, &hx) != 0 ||
        pg_put(c, PG_FLOAT32, 1, (int64_t[]){N}, y, &hy) != 0 ||
        pg_put(c, PG_FLOAT32, 1, (int64_t[]){D}, w0, &hw) != 0 ||
        pg_put(c, PG_FLOAT32, 0, NULL, &b0, &hb) != 0) {
        fprintf(stderr, "put: %s\n", pg_strerror(c));
        goto out_close;
    }

    /* One training step as a graph. A failed builder call adds nothing and returns a negative
     * code, which the next call refuses as an input, so checking the last index is enough. */
    g = pg_graph_new();
    if (!g)
        goto out_close;
    int X = pg_graph_input(g, hx), Y = pg_graph_input(g, hy);
    int W = pg_graph_input(g, hw), B = pg_graph_input(g, hb);
    int xw = pg_graph_op(g, "matmul", (int[]){X, W}, 2, NULL, 0);       /* [N] */
    int pred = pg_graph_op(g, "add", (int[]){xw, B}, 2, NULL, 0);       /* [N] */
    int loss = pg_graph_op(g, "mse_loss", (int[]){pred, Y}, 2, NULL, 0); /* [] (mean) */
    int gw = pg_graph_grad(g, loss, W, -1);                              /* [D] */
    int gb = pg_graph_grad(g, loss, B, -1);                              /* [] */
    int rate = pg_graph_scalar(g, lr); /* a weak scalar: keeps float32, not baked into kernels */
    int sw = pg_graph_op(g, "mul", (int[]){gw, rate}, 2, NULL, 0);
    int nw = pg_graph_op(g, "sub", (int[]){W, sw}, 2, NULL, 0);
    int sb = pg_graph_op(g, "mul", (int[]){gb, rate}, 2, NULL, 0);
    int nb = pg_graph_op(g, "sub", (int[]){B, sb}, 2, NULL, 0);
    int aw = pg_graph_assign(g, hw, nw);
    int ab = pg_graph_assign(g, hb, nb);
    if (aw < 0 || ab < 0) {
        fprintf(stderr, "graph: %s\n", pg_graph_last_error(g)->message);
        goto out_close;
    }

    pg_output_t out = {.node = loss, .keep = 0}; /* the loss inline; w and b stay in the daemon */
    double first = 0, last = 0;
    for (int s = 0; s < steps; s++) {
        pg_result_t res;
        int rc = pg_run(c, g, &out, 1, &res);
        if (rc == -PG_EUNKNOWN_OP && s == 0) {
            fprintf(stderr, "linreg: skipped: this daemon does not serve `grad` (%s)\n",
                    pg_strerror(c));
            status = EXIT_SKIP;
            goto out_close;
        }
        if (rc != 0) {
            fprintf(stderr, "step %d: %s\n", s, pg_strerror(c));
            goto out_close;
        }
        last = *(const float *)res.tensor.data;
        pg_tensor_release(&res.tensor);
        if (s == 0)
            first = last;
        if (s % 50 == 0 || s == steps - 1)
            printf("step %4d  loss %.3e\n", s, last);
    }

    /* The parameters, fetched once at the end. */
    pg_tensor_t tw, tb;
    if (pg_get(c, hw, &tw) != 0) {
        fprintf(stderr, "get w: %s\n", pg_strerror(c));
        goto out_close;
    }
    if (pg_get(c, hb, &tb) != 0) {
        fprintf(stderr, "get b: %s\n", pg_strerror(c));
        pg_tensor_release(&tw);
        goto out_close;
    }
    const float *w = tw.data;
    float b = *(const float *)tb.data;
    double worst = fabs((double)b - b_true);
    printf("w =");
    for (int k = 0; k < D; k++) {
        printf(" %.4f", w[k]);
        worst = fmax(worst, fabs((double)w[k] - w_true[k]));
    }
    printf("  (true:");
    for (int k = 0; k < D; k++)
        printf(" %.4f", w_true[k]);
    printf(")\nb = %.4f  (true: %.4f)\n", b, b_true);
    pg_tensor_release(&tb);
    pg_tensor_release(&tw);
    if (steps >= 200 && (worst > 1e-3 || !(last < first * 1e-4))) {
        fprintf(stderr, "poor fit: largest coefficient error %.3e, loss %.3e -> %.3e\n", worst,
                first, last);
        goto out_close;
    }
    printf("fitted: largest coefficient error %.1e\n", worst);
    status = 0;
out_close:
    pg_graph_free(g);
    pg_close(c); /* frees X, y, w and b with the session */
    return status;
}
