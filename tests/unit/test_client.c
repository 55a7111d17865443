/*
 * test_client.c - the C client against a real picogradd started by the test.
 *
 * argv[1] is the daemon binary. Each test starts its own daemon on a fresh Unix socket, so tests
 * stay independent, and stops it with SIGTERM, expecting exit status 0.
 */
#include "picograd.h"
#include "task.h"

#include <errno.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

static const char *daemon_path;

typedef struct {
    pid_t pid;
    char dir[64];
    char url[128];
    char sock[96];
} daemon_t;

static void daemon_start(daemon_t *d) {
    snprintf(d->dir, sizeof(d->dir), "/tmp/pgtest-XXXXXX");
    ASSERT(mkdtemp(d->dir) != NULL);
    snprintf(d->sock, sizeof(d->sock), "%s/d.sock", d->dir);
    snprintf(d->url, sizeof(d->url), "unix://%s", d->sock);
    d->pid = fork();
    ASSERT(d->pid >= 0);
    if (d->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test must not leave its daemon behind */
        execl(daemon_path, daemon_path, "--listen", d->url, "--log-level", "warn", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) { /* up to 5 s for the socket to appear */
        struct stat st;
        if (stat(d->sock, &st) == 0)
            return;
        usleep(10000);
    }
    ASSERT(!"daemon did not start");
}

static int daemon_stop(daemon_t *d, int sig) {
    kill(d->pid, sig);
    int st = 0;
    waitpid(d->pid, &st, 0);
    rmdir(d->dir);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

TEST_IMPL(put_get_every_dtype) {
    daemon_t d;
    daemon_start(&d);
    pg_error_t err;
    pg_conn_t *c = pg_connect(d.url, &err);
    ASSERT(c != NULL);
    ASSERT_EQ(pg_ping(c), 0);
    srand(7);
    for (int dt = 0; dt < PG_DTYPE_COUNT; dt++) {
        for (int rank = 0; rank <= PG_MAX_RANK; rank++) {
            int64_t shape[PG_MAX_RANK];
            uint64_t n = 1;
            for (int i = 0; i < rank; i++) {
                shape[i] = 1 + rand() % (rank > 4 ? 2 : 5);
                n *= (uint64_t)shape[i];
            }
            size_t nb = n * pg_dtype_size((pg_dtype_t)dt);
            uint8_t *x = malloc(nb);
            for (size_t i = 0; i < nb; i++)
                x[i] = dt == PG_BOOL ? (uint8_t)(rand() & 1) : (uint8_t)rand();
            uint64_t h;
            ASSERT_EQ(pg_put(c, (pg_dtype_t)dt, rank, shape, x, &h), 0);
            pg_tensor_t t;
            ASSERT_EQ(pg_get(c, h, &t), 0);
            ASSERT_EQ(t.dtype, dt);
            ASSERT_EQ(t.rank, rank);
            ASSERT_EQ(t.nbytes, nb);
            ASSERT(((uintptr_t)t.data & 63) == 0);
            ASSERT(memcmp(t.data, x, nb) == 0);
            for (int i = 0; i < rank; i++)
                ASSERT_EQ(t.shape[i], shape[i]);
            pg_tensor_release(&t);
            ASSERT_EQ(pg_free(c, h), 0);
            free(x);
        }
    }
    /* A zero-size tensor. */
    uint64_t h;
    pg_tensor_t t;
    ASSERT_EQ(pg_put(c, PG_INT64, 3, (int64_t[]){3, 0, 2}, NULL, &h), 0);
    ASSERT_EQ(pg_get(c, h, &t), 0);
    ASSERT_EQ(t.nbytes, 0);
    ASSERT(t.data == NULL);
    pg_tensor_release(&t);
    pg_close(c);
    ASSERT_EQ(daemon_stop(&d, SIGTERM), 0);
    return 0;
}

TEST_IMPL(errors_and_stats) {
    daemon_t d;
    daemon_start(&d);
    pg_conn_t *c = pg_connect(d.url, NULL);
    pg_conn_t *c2 = pg_connect(d.url, NULL);
    ASSERT(c && c2);
    pg_stats_t s0, s1;
    ASSERT_EQ(pg_stats(c, &s0), 0);
    ASSERT_EQ(s0.sessions, 2);
    float x[4] = {1.5f, -2, 3, 4};
    uint64_t h;
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 1, (int64_t[]){4}, x, &h), 0);
    ASSERT_EQ(pg_stats(c, &s1), 0);
    ASSERT_EQ(s1.tensors, s0.tensors + 1);
    ASSERT_EQ(s1.session_tensors, 1);
    ASSERT(s1.session_bytes >= sizeof(x));
    /* Another session's handle is unknown there. */
    pg_tensor_t t;
    ASSERT_EQ(pg_get(c2, h, &t), -PG_EUNKNOWN_HANDLE);
    ASSERT_EQ(pg_last_error(c2)->code, PG_EUNKNOWN_HANDLE);
    ASSERT(strstr(pg_strerror(c2), "unknown_handle: handle") == pg_strerror(c2));
    ASSERT_EQ(pg_free(c, h), 0);
    ASSERT_EQ(pg_free(c, h), -PG_EUNKNOWN_HANDLE);
    /* Client-side checks. */
    ASSERT_EQ(pg_put(c, (pg_dtype_t)99, 0, NULL, x, &h), -PG_EBAD_DTYPE);
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 9, (int64_t[9]){1}, x, &h), -PG_EBAD_SHAPE);
    ASSERT_EQ(pg_ping(c), 0); /* still usable */
    /* A device the daemon does not have (no GPU in a ten-device daemon here): no_device at the
     * put and at the run that name it; back on the CPU, everything works again. */
    ASSERT_EQ(pg_set_device(c, "cuda:9"), 0);
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 1, (int64_t[]){4}, x, &h), -PG_ENO_DEVICE);
    ASSERT(strstr(pg_strerror(c), "cuda:9"));
    ASSERT_EQ(pg_set_device(c, "cuda:0123456789012345678901"), -PG_EBAD_REQUEST);
    ASSERT_EQ(pg_set_device(c, NULL), 0);
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 1, (int64_t[]){4}, x, &h), 0);
    ASSERT_EQ(pg_free(c, h), 0);
    pg_close(c2);
    pg_close(c);
    ASSERT_EQ(daemon_stop(&d, SIGTERM), 0);
    return 0;
}

TEST_IMPL(dead_daemon_then_reconnect) {
    daemon_t d;
    daemon_start(&d);
    pg_conn_t *c = pg_connect(d.url, NULL);
    ASSERT(c != NULL);
    ASSERT_EQ(daemon_stop(&d, SIGKILL), 128 + SIGKILL);
    /* The next calls report the lost daemon; they never raise SIGPIPE or abort. */
    ASSERT_EQ(pg_ping(c), -PG_EDISCONNECTED);
    ASSERT_EQ(pg_ping(c), -PG_EDISCONNECTED);
    /* A new daemon on the same path (the stale socket file is replaced); reconnect works. */
    char url[128];
    snprintf(url, sizeof(url), "%s", d.url);
    ASSERT(mkdir(d.dir, 0700) == 0 || errno == EEXIST);
    d.pid = fork();
    if (d.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(daemon_path, daemon_path, "--listen", url, "--log-level", "error", (char *)NULL);
        _exit(127);
    }
    int rc = -1;
    for (int i = 0; i < 500 && rc != 0; i++) {
        usleep(10000);
        rc = pg_reconnect(c);
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(pg_ping(c), 0);
    pg_close(c);
    ASSERT_EQ(daemon_stop(&d, SIGTERM), 0);
    return 0;
}

/* relu(A @ B) with both results forms: the product kept as a handle, the relu returned inline. */
TEST_IMPL(graph_matmul_relu) {
    daemon_t d;
    daemon_start(&d);
    pg_conn_t *c = pg_connect(d.url, NULL);
    ASSERT(c != NULL);
    enum { M = 3, K = 4, N = 5 };
    float a[M * K], b[K * N], want[M * N];
    for (int i = 0; i < M * K; i++)
        a[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < K * N; i++)
        b[i] = 0.5f * (float)(i % 5) - 1.0f;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0;
            for (int k = 0; k < K; k++)
                s += a[i * K + k] * b[k * N + j];
            want[i * N + j] = s;
        }
    uint64_t ha, hb;
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 2, (int64_t[]){M, K}, a, &ha), 0);
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 2, (int64_t[]){K, N}, b, &hb), 0);

    pg_graph_t *g = pg_graph_new();
    ASSERT(g != NULL);
    ASSERT_EQ(pg_graph_input(g, ha), 0);
    ASSERT_EQ(pg_graph_input(g, hb), 1);
    ASSERT_EQ(pg_graph_op(g, "matmul", (int[]){0, 1}, 2, NULL, 0), 2);
    ASSERT_EQ(pg_graph_op(g, "relu", (int[]){2}, 1, NULL, 0), 3);
    /* Client-side refusals add nothing: a forward input, a reserved attribute name. */
    ASSERT_EQ(pg_graph_op(g, "relu", (int[]){4}, 1, NULL, 0), -PG_EBAD_REQUEST);
    ASSERT(strstr(pg_graph_last_error(g)->message, "node 4 (relu)") != NULL);
    pg_attr_t in = pg_attr_int("in", 0);
    ASSERT_EQ(pg_graph_op(g, "relu", (int[]){2}, 1, &in, 1), -PG_EBAD_REQUEST);
    ASSERT_EQ(pg_graph_size(g), 4);

    pg_output_t outs[2] = {{.node = 2, .keep = 1}, {.node = 3, .keep = 0}};
    pg_result_t res[2];
    ASSERT_EQ(pg_run(c, g, outs, 2, res), 0);
    /* Kept: a new handle, dtype and shape, no data. */
    ASSERT(res[0].handle != 0 && res[0].handle != ha && res[0].handle != hb);
    ASSERT_EQ(res[0].tensor.dtype, PG_FLOAT32);
    ASSERT_EQ(res[0].tensor.rank, 2);
    ASSERT_EQ(res[0].tensor.shape[0], M);
    ASSERT_EQ(res[0].tensor.shape[1], N);
    ASSERT(res[0].tensor.data == NULL);
    /* Inline: the data, 64-byte aligned. */
    ASSERT_EQ(res[1].handle, 0);
    ASSERT_EQ(res[1].tensor.dtype, PG_FLOAT32);
    ASSERT_EQ(res[1].tensor.rank, 2);
    ASSERT_EQ(res[1].tensor.shape[0], M);
    ASSERT_EQ(res[1].tensor.shape[1], N);
    ASSERT_EQ(res[1].tensor.nbytes, sizeof(want));
    ASSERT(((uintptr_t)res[1].tensor.data & 63) == 0);
    const float *y = res[1].tensor.data;
    for (int i = 0; i < M * N; i++) {
        float r = want[i] > 0 ? want[i] : 0;
        if (!(y[i] >= r - 1e-5f * (1 + r) && y[i] <= r + 1e-5f * (1 + r))) {
            fprintf(stderr, "relu(A @ B)[%d] = %g, expected %g\n", i, y[i], r);
            ASSERT(!"inline result differs");
        }
    }
    pg_tensor_release(&res[1].tensor);
    pg_tensor_release(&res[0].tensor);
    /* The kept product is a tensor like any other. */
    pg_tensor_t t;
    ASSERT_EQ(pg_get(c, res[0].handle, &t), 0);
    ASSERT_EQ(t.nbytes, sizeof(want));
    for (int i = 0; i < M * N; i++) {
        float v = ((const float *)t.data)[i];
        ASSERT(v >= want[i] - 1e-4f && v <= want[i] + 1e-4f);
    }
    pg_tensor_release(&t);
    ASSERT_EQ(pg_free(c, res[0].handle), 0);

    /* Two inline outputs each own their buffer: releasing one leaves the other readable. */
    pg_output_t two[2] = {{.node = 3, .keep = 0}, {.node = 2, .keep = 0}};
    ASSERT_EQ(pg_run(c, g, two, 2, res), 0);
    ASSERT(res[0].tensor.data != NULL && res[1].tensor.data != NULL);
    ASSERT(((uintptr_t)res[0].tensor.data & 63) == 0);
    ASSERT(((uintptr_t)res[1].tensor.data & 63) == 0);
    pg_tensor_release(&res[0].tensor);
    for (int i = 0; i < M * N; i++) {
        float v = ((const float *)res[1].tensor.data)[i];
        ASSERT(v >= want[i] - 1e-4f && v <= want[i] + 1e-4f);
    }
    pg_tensor_release(&res[1].tensor);

    /* Nothing but A and B is left in the session. */
    pg_stats_t s;
    ASSERT_EQ(pg_stats(c, &s), 0);
    ASSERT_EQ(s.session_tensors, 2);
    pg_graph_free(g);
    pg_close(c);
    ASSERT_EQ(daemon_stop(&d, SIGTERM), 0);
    return 0;
}

/* Refused runs: the daemon's code and a message naming the node; no handle is created. */
TEST_IMPL(graph_errors) {
    daemon_t d;
    daemon_start(&d);
    pg_conn_t *c = pg_connect(d.url, NULL);
    ASSERT(c != NULL);
    float x[6] = {1, 2, 3, 4, 5, 6};
    uint64_t ha, hb;
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 2, (int64_t[]){2, 3}, x, &ha), 0);
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 1, (int64_t[]){4}, x, &hb), 0);
    pg_graph_t *g = pg_graph_new();
    ASSERT(g != NULL);
    int a = pg_graph_input(g, ha), b = pg_graph_input(g, hb);
    int s = pg_graph_op(g, "add", (int[]){a, b}, 2, NULL, 0);
    ASSERT_EQ(s, 2);
    pg_output_t out = {.node = s, .keep = 1};
    pg_result_t res;
    ASSERT_EQ(pg_run(c, g, &out, 1, &res), -PG_EBAD_SHAPE);
    ASSERT_EQ(pg_last_error(c)->code, PG_EBAD_SHAPE);
    fprintf(stderr, "bad shape: %s\n", pg_strerror(c));
    ASSERT(strstr(pg_last_error(c)->message, "node") != NULL);
    ASSERT(strstr(pg_last_error(c)->message, "node 2 (add)") != NULL);
    ASSERT_EQ(res.handle, 0);
    ASSERT(res.tensor.data == NULL);
    pg_graph_free(g);

    /* An unknown handle and an unknown op, each named by node. */
    g = pg_graph_new();
    ASSERT_EQ(pg_graph_input(g, 9999), 0);
    out.node = 0;
    ASSERT_EQ(pg_run(c, g, &out, 1, &res), -PG_EUNKNOWN_HANDLE);
    ASSERT(strstr(pg_last_error(c)->message, "node 0") != NULL);
    pg_graph_free(g);
    g = pg_graph_new();
    ASSERT_EQ(pg_graph_input(g, ha), 0);
    ASSERT_EQ(pg_graph_op(g, "no_such_op", (int[]){0}, 1, NULL, 0), 1);
    out.node = 1;
    int rc = pg_run(c, g, &out, 1, &res);
    fprintf(stderr, "unknown op: %s\n", pg_strerror(c));
    ASSERT(rc == -PG_EUNKNOWN_OP || rc == -PG_EBAD_REQUEST);
    ASSERT(strstr(pg_last_error(c)->message, "node 1") != NULL);
    /* Client-side: an output that names no node is refused before sending. */
    out.node = 7;
    ASSERT_EQ(pg_run(c, g, &out, 1, &res), -PG_EBAD_REQUEST);
    pg_graph_free(g);

    /* The connection is still usable and only A and B exist. */
    pg_stats_t st;
    ASSERT_EQ(pg_stats(c, &st), 0);
    ASSERT_EQ(st.session_tensors, 2);
    pg_close(c);
    ASSERT_EQ(daemon_stop(&d, SIGTERM), 0);
    return 0;
}

/* pg_graph_assign: a run with no outputs updates a handle in place of its old tensor; inputs
 * of the handle read the old value; a refused assign changes nothing. pg_has_op reads hello. */
TEST_IMPL(graph_assign) {
    daemon_t d;
    daemon_start(&d);
    pg_conn_t *c = pg_connect(d.url, NULL);
    ASSERT(c != NULL);
    ASSERT_EQ(pg_has_op(c, "run"), 1);
    ASSERT_EQ(pg_has_op(c, "assign"), 1);
    ASSERT_EQ(pg_has_op(c, "matmul"), 1);
    ASSERT_EQ(pg_has_op(c, "no_such_op"), 0);
    ASSERT_EQ(pg_has_op(c, "assig"), 0);
    float x[3] = {1, 2, 3};
    uint64_t hw;
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 1, (int64_t[]){3}, x, &hw), 0);

    /* w <- w * 2, returning the old w inline and the new one through the assign node. */
    pg_graph_t *g = pg_graph_new();
    ASSERT(g != NULL);
    int w = pg_graph_input(g, hw);
    int two = pg_graph_scalar(g, 2.0);
    int w2 = pg_graph_op(g, "mul", (int[]){w, two}, 2, NULL, 0);
    int as = pg_graph_assign(g, hw, w2);
    ASSERT_EQ(as, 3);
    ASSERT_EQ(pg_graph_assign(g, hw, 9), -PG_EBAD_REQUEST); /* not an earlier node */
    ASSERT_EQ(pg_graph_size(g), 4);
    pg_output_t outs[2] = {{.node = w, .keep = 0}, {.node = as, .keep = 0}};
    pg_result_t res[2];
    ASSERT_EQ(pg_run(c, g, outs, 2, res), 0);
    ASSERT_EQ(((const float *)res[0].tensor.data)[2], 3.0f);
    ASSERT_EQ(((const float *)res[1].tensor.data)[2], 6.0f);
    pg_tensor_release(&res[0].tensor);
    pg_tensor_release(&res[1].tensor);
    /* No outputs at all: the assign alone. */
    ASSERT_EQ(pg_run(c, g, NULL, 0, NULL), 0);
    pg_tensor_t t;
    ASSERT_EQ(pg_get(c, hw, &t), 0);
    ASSERT_EQ(((const float *)t.data)[0], 4.0f);
    ASSERT_EQ(((const float *)t.data)[2], 12.0f);
    pg_tensor_release(&t);
    pg_graph_free(g);

    /* A refused assign (a float64 value) changes nothing. */
    g = pg_graph_new();
    w = pg_graph_input(g, hw);
    pg_attr_t f64 = pg_attr_str("dtype", "float64");
    int cw = pg_graph_op(g, "cast", &w, 1, &f64, 1);
    pg_graph_assign(g, hw, cw);
    ASSERT_EQ(pg_run(c, g, NULL, 0, NULL), -PG_EBAD_DTYPE);
    ASSERT(strstr(pg_last_error(c)->message, "node 2 (assign)") != NULL);
    ASSERT_EQ(pg_get(c, hw, &t), 0);
    ASSERT_EQ(((const float *)t.data)[2], 12.0f);
    pg_tensor_release(&t);
    pg_graph_free(g);

    /* pg_graph_grad packs a grad node (the daemon may not serve it yet: only the packing and the
     * client-side checks are tested here). */
    g = pg_graph_new();
    w = pg_graph_input(g, hw);
    int l = pg_graph_op(g, "sum", &w, 1, NULL, 0);
    ASSERT_EQ(pg_graph_grad(g, l, w, -1), 2);
    ASSERT_EQ(pg_graph_grad(g, l, w, 5), -PG_EBAD_REQUEST);
    ASSERT_EQ(pg_graph_size(g), 3);
    pg_graph_free(g);

    pg_stats_t st;
    ASSERT_EQ(pg_stats(c, &st), 0);
    ASSERT_EQ(st.session_tensors, 1);
    pg_close(c);
    ASSERT_EQ(daemon_stop(&d, SIGTERM), 0);
    return 0;
}

#define TEST_LIST(X)                                                                               \
    X(put_get_every_dtype)                                                                         \
    X(errors_and_stats)                                                                            \
    X(dead_daemon_then_reconnect)                                                                  \
    X(graph_matmul_relu)                                                                           \
    X(graph_errors)                                                                                \
    X(graph_assign)

int main(int argc, char **argv) {
    static const task_entry_t tests[] = {TEST_LIST(TASK_ENTRY)};
    signal(SIGPIPE, SIG_DFL); /* prove the client never needs SIGPIPE ignored */
    if (argc < 2) {
        fprintf(stderr, "usage: %s PICOGRADD [TEST]\n", argv[0]);
        return 2;
    }
    daemon_path = argv[1];
    return task_run_all(tests, (int)(sizeof(tests) / sizeof(tests[0])), argc - 1, argv + 1);
}
