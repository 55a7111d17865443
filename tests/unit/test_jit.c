/*
 * test_jit.c - unit tests of the C renderer (kernels/codegen/render_c.c) and the JIT
 * (kernels/cpu/jit.c): hand-built kernels are compiled with the system compiler and their
 * results compared bit for bit with a plain C loop or with the reference interpreter, including
 * NaN, infinities and signed zeros; then the caches: names are stable, a second request is a
 * memory hit, a restart loads from disk, and truncated or foreign .so files are rebuilt.
 *
 * Every test uses its own temporary cache directory (mkdtemp) and ends with the allocator back
 * to zero. Tests need `cc` in PATH.
 */
#include "../../kernels/cpu/jit.h"
#include "../../kernels/ref/ref_impl.h"
#include "../../server/mem.h"
#include "task.h"
#include "tgraph.h"

#include <glob.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>

/* =============================================================================================
 * Helpers
 * =========================================================================================== */

static char test_dir[256];

/* Creates a fresh cache directory and starts the JIT on it. */
static void jit_setup(void) {
    snprintf(test_dir, sizeof(test_dir), "/tmp/pg-test-jit-XXXXXX");
    ASSERT(mkdtemp(test_dir) != NULL);
    ASSERT_EQ(jit_init("cc", test_dir), 0);
    ASSERT(jit_available());
}

/* Stops the JIT, removes the cache directory and checks that nothing leaked. */
static void jit_teardown(void) {
    jit_shutdown();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", test_dir);
    ASSERT_EQ(system(cmd), 0);
    ASSERT_EQ(pg_malloc_live(), 0);
    ASSERT_EQ(tensor_live(), 0);
}

/* A zeroed kernel with the given iteration space and no reduction. */
static kir_kernel_t *kernel_new(int rank, const int64_t *shape, pg_dtype_t out_dtype) {
    kir_kernel_t *k = calloc(1, sizeof(*k));
    ASSERT(k != NULL);
    k->rank = rank;
    for (int d = 0; d < rank; d++)
        k->shape[d] = shape[d];
    k->reduce = PRIM_COUNT;
    k->out_dtype = out_dtype;
    return k;
}

/* Adds a contiguous input (C-order strides of the iteration space) and returns its index. */
static int add_input(kir_kernel_t *k, pg_dtype_t dt) {
    kir_input_t *in = &k->in[k->nin];
    in->dtype = dt;
    int64_t s = 1;
    for (int d = k->rank - 1; d >= 0; d--) {
        in->strides[d] = s;
        s *= k->shape[d];
    }
    return k->nin++;
}

static int val_load(kir_kernel_t *k, int input) {
    k->vals[k->nvals] = (kir_val_t){.kind = KIR_LOAD, .dtype = k->in[input].dtype, .input = input,
                                    .a = -1, .b = -1, .c = -1};
    return k->nvals++;
}

static int val_const(kir_kernel_t *k, pg_dtype_t dt, double v) {
    k->vals[k->nvals] = (kir_val_t){.kind = KIR_CONST, .dtype = dt, .value = v, .a = -1, .b = -1,
                                    .c = -1};
    return k->nvals++;
}

static int val_op(kir_kernel_t *k, prim_t op, pg_dtype_t dt, int a, int b, int c) {
    k->vals[k->nvals] = (kir_val_t){.kind = KIR_OP, .prim = op, .dtype = dt, .a = a, .b = b,
                                    .c = c, .input = -1};
    return k->nvals++;
}

/* Renders and compiles k; returns its function (asserting success). */
static kir_fn_t compile(const kir_kernel_t *k, char *name) {
    char *src = kir_render_c(k, name, 32);
    ASSERT(src != NULL);
    proto_err_t err = {0};
    kir_fn_t fn = jit_get(name, src, &err);
    if (!fn)
        fprintf(stderr, "jit_get: %s\n%s\n", err.message, src);
    ASSERT(fn != NULL);
    pg_free(src);
    return fn;
}

/* Hand-built interpreter graphs: tgraph.h. */

/* Runs every node of g and leaves the results in vals. */
static void tg_run(const graph_t *g, ref_view_t *vals) {
    proto_err_t err;
    for (int32_t k = 0; k < g->n; k++)
        ASSERT_EQ(ref_eval(g, k, vals, &err), 0);
}

/* Releases the results in vals, then the graph. */
static void tg_free_all(graph_t *g, ref_view_t *vals) {
    for (int32_t k = 0; k < g->n; k++)
        ref_view_release(&vals[k]);
    tg_free(g);
}

/* Asserts that n bytes agree, printing the first element that differs. */
#define ASSERT_BYTES_EQ(a, b, n, esize)                                                            \
    do {                                                                                           \
        for (size_t o_ = 0; o_ < (size_t)(n); o_ += (esize))                                       \
            if (memcmp((const char *)(a) + o_, (const char *)(b) + o_, (esize)) != 0) {            \
                fprintf(stderr, "%s:%d: element %zu differs\n", __FILE__, __LINE__,                \
                        o_ / (esize));                                                             \
                abort();                                                                           \
            }                                                                                      \
    } while (0)

/* =============================================================================================
 * Results
 * =========================================================================================== */

TEST_IMPL(chain_vs_interpreter) {
    /* out = relu(a * b + c), float32, contiguous: the fast path. */
    jit_setup();
    enum { N = 37 };
    int64_t shape[1] = {N};
    float a[N], b[N], c[N], out[N];
    for (int i = 0; i < N; i++) {
        a[i] = (float)(i - 18) * 0.37f;
        b[i] = 1.0f / (float)(i + 1);
        c[i] = (float)((i * 7) % 5) - 2.0f;
    }
    a[3] = NAN, b[4] = INFINITY, a[5] = -0.0f, c[6] = -INFINITY, b[7] = 3.4e38f, a[7] = 3.4e38f;
    kir_kernel_t *k = kernel_new(1, shape, PG_FLOAT32);
    int v0 = val_load(k, add_input(k, PG_FLOAT32));
    int v1 = val_load(k, add_input(k, PG_FLOAT32));
    int v2 = val_load(k, add_input(k, PG_FLOAT32));
    int v3 = val_op(k, PRIM_mul, PG_FLOAT32, v0, v1, -1);
    int v4 = val_op(k, PRIM_add, PG_FLOAT32, v3, v2, -1);
    val_op(k, PRIM_relu, PG_FLOAT32, v4, -1, -1);
    char name[32];
    kir_fn_t fn = compile(k, name);
    void *bufs[4] = {out, a, b, c};
    fn(bufs, 0, 20); /* two calls: start/end split like the executor's */
    fn(bufs, 20, N);

    graph_t g;
    ref_view_t vals[TG_CAP] = {0};
    tg_init(&g);
    int32_t ga = tg_const(&g, PG_FLOAT32, 1, shape, a), gb = tg_const(&g, PG_FLOAT32, 1, shape, b);
    int32_t gc = tg_const(&g, PG_FLOAT32, 1, shape, c);
    int32_t m = tg_add(&g, PRIM_mul, (int32_t[]){ga, gb}, 2, NULL, PG_FLOAT32, 1, shape);
    int32_t s = tg_add(&g, PRIM_add, (int32_t[]){m, gc}, 2, NULL, PG_FLOAT32, 1, shape);
    int32_t r = tg_add(&g, PRIM_relu, &s, 1, NULL, PG_FLOAT32, 1, shape);
    tg_run(&g, vals);
    ASSERT_BYTES_EQ(out, vals[r].t->data, sizeof(out), 4);
    ASSERT(isnan(out[3]));
    tg_free_all(&g, vals);
    free(k);
    jit_teardown();
    return 0;
}

TEST_IMPL(strided_inputs) {
    /* Iteration [3, 4] float64: out[i][j] = at[i][j] + flip(b)[j] * 2, where a is stored [4, 3]
     * and read permuted (strides {1, 3}), and b [4] is broadcast over axis 0 and flipped
     * (strides {0, -1}, offset 3). */
    jit_setup();
    int64_t shape[2] = {3, 4};
    double a[12], b[4] = {1, 2.5, -4, 8}, out[12];
    for (int i = 0; i < 12; i++)
        a[i] = i * 1.25 - 3;
    kir_kernel_t *k = kernel_new(2, shape, PG_FLOAT64);
    int ia = add_input(k, PG_FLOAT64), ib = add_input(k, PG_FLOAT64);
    k->in[ia].strides[0] = 1, k->in[ia].strides[1] = 3;
    k->in[ib].off = 3, k->in[ib].strides[0] = 0, k->in[ib].strides[1] = -1;
    int v0 = val_load(k, ia), v1 = val_load(k, ib);
    int v2 = val_const(k, PG_FLOAT64, 2.0);
    int v3 = val_op(k, PRIM_mul, PG_FLOAT64, v1, v2, -1);
    val_op(k, PRIM_add, PG_FLOAT64, v0, v3, -1);
    char name[32];
    kir_fn_t fn = compile(k, name);
    void *bufs[3] = {out, a, b};
    fn(bufs, 0, 5);
    fn(bufs, 5, 12);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) {
            double want = a[j * 3 + i] + b[3 - j] * 2.0;
            ASSERT(memcmp(&out[i * 4 + j], &want, 8) == 0);
        }
    free(k);
    jit_teardown();
    return 0;
}

TEST_IMPL(where_cast_compare) {
    /* int32 x, y: m = where(x > y, x, y); out = cast(m, float64) + cast(x == y, float64);
     * plus a bool input read as a truth value (any nonzero byte). */
    jit_setup();
    enum { N = 9 };
    int64_t shape[1] = {N};
    int32_t x[N] = {1, -5, INT32_MAX, INT32_MIN, 0, 7, 7, -1, 100};
    int32_t y[N] = {2, -6, INT32_MIN, INT32_MAX, 0, 7, 8, -1, -100};
    uint8_t flag[N] = {0, 1, 2, 0, 255, 1, 0, 0, 1};
    double out[N];
    kir_kernel_t *k = kernel_new(1, shape, PG_FLOAT64);
    int v0 = val_load(k, add_input(k, PG_INT32)), v1 = val_load(k, add_input(k, PG_INT32));
    int vf = val_load(k, add_input(k, PG_BOOL));
    int gt = val_op(k, PRIM_gt, PG_BOOL, v0, v1, -1);
    int m = val_op(k, PRIM_where, PG_INT32, gt, v0, v1);
    int eq = val_op(k, PRIM_eq, PG_BOOL, v0, v1, -1);
    int both = val_op(k, PRIM_logical_or, PG_BOOL, eq, vf, -1);
    int cm = val_op(k, PRIM_cast, PG_FLOAT64, m, -1, -1);
    int ce = val_op(k, PRIM_cast, PG_FLOAT64, both, -1, -1);
    val_op(k, PRIM_add, PG_FLOAT64, cm, ce, -1);
    char name[32];
    kir_fn_t fn = compile(k, name);
    void *bufs[4] = {out, x, y, flag};
    fn(bufs, 0, N);
    for (int i = 0; i < N; i++) {
        double want = (double)(x[i] > y[i] ? x[i] : y[i]) + ((x[i] == y[i] || flag[i]) ? 1 : 0);
        if (out[i] != want)
            fprintf(stderr, "element %d: %g != %g\n", i, out[i], want);
        ASSERT(out[i] == want);
    }
    free(k);
    jit_teardown();
    return 0;
}

TEST_IMPL(cast_float_to_int) {
    /* float32 -> int32 truncates toward zero, clamps, and gives 0 for NaN and infinities. */
    jit_setup();
    enum { N = 8 };
    int64_t shape[1] = {N};
    float x[N] = {-3.7f, 3.7f, NAN, INFINITY, -INFINITY, 1e10f, -1e10f, -0.0f};
    int32_t out[N], want[N] = {-3, 3, 0, 0, 0, INT32_MAX, INT32_MIN, 0};
    kir_kernel_t *k = kernel_new(1, shape, PG_INT32);
    val_op(k, PRIM_cast, PG_INT32, val_load(k, add_input(k, PG_FLOAT32)), -1, -1);
    char name[32];
    kir_fn_t fn = compile(k, name);
    void *bufs[2] = {out, x};
    fn(bufs, 0, N);
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], want[i]);
    free(k);
    jit_teardown();
    return 0;
}

TEST_IMPL(sum_axis1) {
    /* float64 [5, 13], sum over axis 1 of x * x: the fold runs in KIR_LANES lanes combined
     * pairwise (kir.h), like the interpreter. */
    jit_setup();
    int64_t shape[2] = {5, 13};
    double x[65], out[5];
    for (int i = 0; i < 65; i++)
        x[i] = 1.0 / (i + 1) - 0.1 * (i % 3);
    kir_kernel_t *k = kernel_new(2, shape, PG_FLOAT64);
    int v0 = val_load(k, add_input(k, PG_FLOAT64));
    val_op(k, PRIM_square, PG_FLOAT64, v0, -1, -1);
    k->reduce = PRIM_sum;
    k->reduced[1] = true;
    ASSERT_EQ(kir_out_numel(k), 5);
    char name[32];
    kir_fn_t fn = compile(k, name);
    void *bufs[2] = {out, x};
    fn(bufs, 0, 2);
    fn(bufs, 2, 5);
    for (int i = 0; i < 5; i++) {
        double lane[KIR_LANES] = {0};
        for (int j = 0; j < 13; j++)
            lane[j % KIR_LANES] += x[i * 13 + j] * x[i * 13 + j];
        for (int w = 1; w < KIR_LANES; w *= 2)
            for (int l = 0; l + w < KIR_LANES; l += 2 * w)
                lane[l] += lane[l + w];
        double acc = lane[0];
        ASSERT(memcmp(&out[i], &acc, 8) == 0);
    }
    free(k);
    jit_teardown();
    return 0;
}

TEST_IMPL(max_nan_vs_interpreter) {
    /* float32 [4, 5] read transposed (iteration [5, 4], strides {1, 5}); max over axis 0, so
     * every output folds a column of the iteration space. NaN propagates. */
    jit_setup();
    int64_t xs[2] = {4, 5}, shape[2] = {5, 4}, os[1] = {4};
    float x[20], out[4];
    for (int i = 0; i < 20; i++)
        x[i] = (float)((i * 13) % 7) - 3.5f;
    x[7] = NAN;                                  /* row 1 */
    x[10] = -INFINITY, x[11] = -INFINITY;        /* row 2 */
    x[15] = INFINITY, x[19] = NAN;               /* row 3: NaN after +inf */
    kir_kernel_t *k = kernel_new(2, shape, PG_FLOAT32);
    int in = add_input(k, PG_FLOAT32);
    k->in[in].strides[0] = 1, k->in[in].strides[1] = 5;
    val_load(k, in);
    k->reduce = PRIM_max;
    k->reduced[0] = true;
    char name[32];
    kir_fn_t fn = compile(k, name);
    void *bufs[2] = {out, x};
    fn(bufs, 0, 4);

    graph_t g;
    ref_view_t vals[TG_CAP] = {0};
    tg_init(&g);
    int32_t gx = tg_const(&g, PG_FLOAT32, 2, xs, x);
    gattr_t r1 = {.dims = {1}, .ndims = 1};
    int32_t mx = tg_add(&g, PRIM_max, &gx, 1, &r1, PG_FLOAT32, 1, os);
    tg_run(&g, vals);
    ASSERT_BYTES_EQ(out, vals[mx].t->data, sizeof(out), 4);
    ASSERT(isnan(out[1]) && isnan(out[3]));
    tg_free_all(&g, vals);
    free(k);
    jit_teardown();
    return 0;
}

TEST_IMPL(constant_fill) {
    /* No inputs: out[i] = 2.5 (float64) and an int64 constant beyond 2^53's neighbourhood. */
    jit_setup();
    int64_t shape[2] = {2, 3};
    double out[6];
    kir_kernel_t *k = kernel_new(2, shape, PG_FLOAT64);
    val_const(k, PG_FLOAT64, 2.5);
    char name[32];
    kir_fn_t fn = compile(k, name);
    void *bufs[1] = {out};
    fn(bufs, 0, 6);
    for (int i = 0; i < 6; i++)
        ASSERT(out[i] == 2.5);
    free(k);
    k = kernel_new(0, NULL, PG_INT64);
    val_const(k, PG_INT64, -9007199254740992.0);
    int64_t o1 = 0;
    fn = compile(k, name);
    bufs[0] = &o1;
    fn(bufs, 0, 1);
    ASSERT_EQ(o1, -9007199254740992LL);
    free(k);
    jit_teardown();
    return 0;
}

/* =============================================================================================
 * Names and caches
 * =========================================================================================== */

/* A small kernel for the cache tests: out[i] = in0[i] * 3, float32 [8]. */
static kir_kernel_t *cache_kernel(void) {
    int64_t shape[1] = {8};
    kir_kernel_t *k = kernel_new(1, shape, PG_FLOAT32);
    int v0 = val_load(k, add_input(k, PG_FLOAT32));
    val_op(k, PRIM_mul, PG_FLOAT32, v0, val_const(k, PG_FLOAT32, 3.0), -1);
    return k;
}

/* Runs the cache kernel and checks its result. */
static void check_cache_kernel(kir_fn_t fn) {
    float x[8], out[8];
    for (int i = 0; i < 8; i++)
        x[i] = (float)i - 2.5f;
    void *bufs[2] = {out, x};
    fn(bufs, 0, 8);
    for (int i = 0; i < 8; i++)
        ASSERT(out[i] == x[i] * 3.0f);
}

/* Returns the cache file of kernel `name` in test_dir (asserting there is exactly one). */
static void cache_file(const char *name, char *path, size_t cap) {
    char pat[400];
    glob_t gl;
    snprintf(pat, sizeof(pat), "%s/%s-*.so", test_dir, name);
    ASSERT_EQ(glob(pat, 0, NULL, &gl), 0);
    ASSERT_EQ(gl.gl_pathc, 1);
    snprintf(path, cap, "%s", gl.gl_pathv[0]);
    globfree(&gl);
}

/* Restarts the JIT on the same directory (what a daemon restart does). */
static void jit_restart(void) {
    jit_shutdown();
    ASSERT_EQ(jit_init("cc", test_dir), 0);
}

TEST_IMPL(stable_names) {
    kir_kernel_t *k = cache_kernel();
    char n1[32], n2[32];
    char *s1 = kir_render_c(k, n1, sizeof(n1)), *s2 = kir_render_c(k, n2, sizeof(n2));
    ASSERT(s1 && s2);
    ASSERT_STR_EQ(n1, n2);
    ASSERT_STR_EQ(s1, s2);
    ASSERT(strncmp(n1, "pg_k_", 5) == 0 && strlen(n1) == 21);
    ASSERT(strstr(s1, n1) != NULL);
    k->vals[1].value = 4.0; /* a different kernel gets a different name */
    char *s3 = kir_render_c(k, n2, sizeof(n2));
    ASSERT(s3 && strcmp(n1, n2) != 0);
    pg_free(s1);
    pg_free(s2);
    pg_free(s3);
    free(k);
    ASSERT_EQ(pg_malloc_live(), 0);
    return 0;
}

TEST_IMPL(memory_and_disk_hits) {
    jit_setup();
    kir_kernel_t *k = cache_kernel();
    char name[32];
    jit_stats_t s0 = jit_stats();
    kir_fn_t fn = compile(k, name);
    check_cache_kernel(fn);
    jit_stats_t s1 = jit_stats();
    ASSERT_EQ(s1.compiled, s0.compiled + 1);
    ASSERT(s1.compile_seconds > s0.compile_seconds);
    ASSERT(compile(k, name) == fn);
    jit_stats_t s2 = jit_stats();
    ASSERT_EQ(s2.memory_hits, s1.memory_hits + 1);
    ASSERT_EQ(s2.compiled, s1.compiled);

    jit_restart(); /* the probe kernel, too, now comes from disk */
    s0 = jit_stats();
    ASSERT_EQ(s0.compiled, 0);
    check_cache_kernel(compile(k, name));
    s1 = jit_stats();
    ASSERT_EQ(s1.compiled, 0);
    ASSERT_EQ(s1.disk_hits, s0.disk_hits + 1);
    free(k);
    jit_teardown();
    return 0;
}

TEST_IMPL(truncated_rebuilt) {
    jit_setup();
    kir_kernel_t *k = cache_kernel();
    char name[32], path[512];
    check_cache_kernel(compile(k, name));
    cache_file(name, path, sizeof(path));
    jit_shutdown();
    ASSERT_EQ(truncate(path, 100), 0);
    ASSERT_EQ(jit_init("cc", test_dir), 0);
    jit_stats_t s0 = jit_stats();
    check_cache_kernel(compile(k, name));
    jit_stats_t s1 = jit_stats();
    ASSERT_EQ(s1.compiled, s0.compiled + 1);
    ASSERT_EQ(s1.disk_hits, s0.disk_hits);
    struct stat st;
    ASSERT_EQ(stat(path, &st), 0);
    ASSERT(st.st_size > 100);
    free(k);
    jit_teardown();
    return 0;
}

TEST_IMPL(foreign_rebuilt) {
    /* Replace the cached .so by one that defines the same function (computing zeros) with
     * another key, as a different compiler or machine sharing the directory might. */
    jit_setup();
    kir_kernel_t *k = cache_kernel();
    char name[32], path[512], cpath[600], cmd[2048];
    check_cache_kernel(compile(k, name));
    cache_file(name, path, sizeof(path));
    jit_shutdown();
    snprintf(cpath, sizeof(cpath), "%s/foreign.c", test_dir);
    FILE *f = fopen(cpath, "w");
    ASSERT(f != NULL);
    fprintf(f,
            "#include <stdint.h>\n"
            "void %s(void *const *b, int64_t s, int64_t e) { for (; s < e; s++) "
            "((float *)b[0])[s] = 0; }\n"
            "const char pg_kernel_key[] = \"00000000000000000000000000000000\";\n",
            name);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "cc -shared -fPIC -o '%s' '%s'", path, cpath);
    ASSERT_EQ(system(cmd), 0);
    unlink(cpath);
    ASSERT_EQ(jit_init("cc", test_dir), 0);
    jit_stats_t s0 = jit_stats();
    check_cache_kernel(compile(k, name));
    jit_stats_t s1 = jit_stats();
    ASSERT_EQ(s1.compiled, s0.compiled + 1);
    ASSERT_EQ(s1.disk_hits, s0.disk_hits);
    free(k);
    jit_teardown();
    return 0;
}

TEST_IMPL(compile_error) {
    /* A source that does not compile gives an error naming the kernel, and no cache file. */
    jit_setup();
    proto_err_t err = {0};
    kir_fn_t fn = jit_get("pg_k_0000000000000bad", "void pg_k_0000000000000bad(void) { x; }",
                          &err);
    ASSERT(fn == NULL);
    ASSERT_EQ(err.code, PG_EINTERNAL);
    ASSERT(strstr(err.message, "pg_k_0000000000000bad") != NULL);
    ASSERT(strstr(err.message, test_dir) == NULL);
    ASSERT(jit_get("../evil", "", &err) == NULL);
    jit_teardown();
    return 0;
}

TEST_IMPL(unusable_cache_dir) {
    /* A cache directory that cannot be created still gives a working JIT (private temp dir). */
    ASSERT_EQ(jit_init("cc", "/proc/picograd-no-such-dir"), 0);
    ASSERT(jit_available());
    kir_kernel_t *k = cache_kernel();
    char name[32];
    check_cache_kernel(compile(k, name));
    free(k);
    jit_shutdown();
    ASSERT_EQ(jit_init("/nonexistent/cc", NULL), -1);
    ASSERT(!jit_available());
    jit_shutdown();
    ASSERT_EQ(pg_malloc_live(), 0);
    return 0;
}

#define TEST_LIST(X)                                                                               \
    X(chain_vs_interpreter)                                                                        \
    X(strided_inputs)                                                                              \
    X(where_cast_compare)                                                                          \
    X(cast_float_to_int)                                                                           \
    X(sum_axis1)                                                                                   \
    X(max_nan_vs_interpreter)                                                                      \
    X(constant_fill)                                                                               \
    X(stable_names)                                                                                \
    X(memory_and_disk_hits)                                                                        \
    X(truncated_rebuilt)                                                                           \
    X(foreign_rebuilt)                                                                             \
    X(compile_error)                                                                               \
    X(unusable_cache_dir)

TEST_MAIN(TEST_LIST)
