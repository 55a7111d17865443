/*
 * test_nvrtc.c - compiles the CUDA renderer's output (kernels/codegen/render_cuda.c) with NVRTC
 * for sm_80 and sm_90, without a GPU: NVRTC is a library that turns CUDA C++ into a cubin on
 * the CPU. It catches every kernel the renderer writes that is not valid CUDA (a type, a
 * builtin, a missing definition); what the kernels compute is checked on a GPU machine.
 *
 *   pg_test_nvrtc                 the built-in corpus: hand-built kernels covering every
 *                                 primitive, dtype, reduction, staged kernel, split reduction,
 *                                 strided input and in-place kernel the renderer supports, plus a
 *                                 broken source that must fail (so the test can fail)
 *   pg_test_nvrtc NAME            one corpus test
 *   pg_test_nvrtc --dir DIR [--min N] [--batch N] [--jobs N]
 *                                 every DIR/<name>.cu (what `picogradd --dump-cuda DIR` wrote
 *                                 while the conformance and random-graph suites ran), at least
 *                                 N of them; prints the count and the time
 *
 * NVRTC is loaded with dlopen (libnvrtc.so.13, libnvrtc.so, then under /usr/local/cuda/lib64),
 * as the daemon will load it, so the binary links nothing of CUDA; only its header is needed to
 * build. NVRTC's start-up dominates small programs, so several kernels go into one program
 * (each in its own namespace: their preludes repeat) and programs compile on several threads.
 * A program that fails is compiled again kernel by kernel to name the one at fault, and its
 * NVRTC log is printed.
 */
#include "../../kernels/codegen/kir.h"
#include "../../server/mem.h"
#include "task.h"

#include <dirent.h>
#include <math.h>
#include <dlfcn.h>
#include <nvrtc.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* =============================================================================================
 * NVRTC, loaded at run time
 * =========================================================================================== */

static struct {
    void *lib;
    const char *(*get_error_string)(nvrtcResult);
    nvrtcResult (*create)(nvrtcProgram *, const char *, const char *, int, const char *const *,
                          const char *const *);
    nvrtcResult (*destroy)(nvrtcProgram *);
    nvrtcResult (*compile)(nvrtcProgram, int, const char *const *);
    nvrtcResult (*log_size)(nvrtcProgram, size_t *);
    nvrtcResult (*log)(nvrtcProgram, char *);
    nvrtcResult (*cubin_size)(nvrtcProgram, size_t *);
    nvrtcResult (*cubin)(nvrtcProgram, char *);
} nv;

/* Loads NVRTC; exits the process with a message when it cannot be found. */
static void nv_load(void) {
    static const char *const names[] = {
        "libnvrtc.so.13", "libnvrtc.so", "/usr/local/cuda/lib64/libnvrtc.so.13",
        "/usr/local/cuda/lib64/libnvrtc.so",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && !nv.lib; i++)
        nv.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!nv.lib) {
        fprintf(stderr, "pg_test_nvrtc: cannot load NVRTC (libnvrtc.so.13): %s\n", dlerror());
        exit(1);
    }
#define NV_SYM(field, sym)                                                                         \
    do {                                                                                           \
        *(void **)&nv.field = dlsym(nv.lib, sym);                                                  \
        if (!nv.field) {                                                                           \
            fprintf(stderr, "pg_test_nvrtc: NVRTC lacks %s\n", sym);                               \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
    NV_SYM(get_error_string, "nvrtcGetErrorString");
    NV_SYM(create, "nvrtcCreateProgram");
    NV_SYM(destroy, "nvrtcDestroyProgram");
    NV_SYM(compile, "nvrtcCompileProgram");
    NV_SYM(log_size, "nvrtcGetProgramLogSize");
    NV_SYM(log, "nvrtcGetProgramLog");
    NV_SYM(cubin_size, "nvrtcGetCUBINSize");
    NV_SYM(cubin, "nvrtcGetCUBIN");
#undef NV_SYM
}

static const char *const nv_archs[] = {"--gpu-architecture=sm_80", "--gpu-architecture=sm_90"};
#define NV_NARCHS 2

/* Compiles src (named `what` in messages) to a cubin for every architecture. Returns 0, or -1
 * after printing NVRTC's log when quiet is false. */
static int nv_compile(const char *src, const char *what, bool quiet) {
    for (int a = 0; a < NV_NARCHS; a++) {
        nvrtcProgram prog;
        nvrtcResult r = nv.create(&prog, src, what, 0, NULL, NULL);
        if (r != NVRTC_SUCCESS) {
            fprintf(stderr, "%s: nvrtcCreateProgram: %s\n", what, nv.get_error_string(r));
            return -1;
        }
        const char *opts[] = {nv_archs[a]};
        r = nv.compile(prog, 1, opts);
        size_t n = 0, cubin = 0;
        if (r == NVRTC_SUCCESS)
            r = nv.cubin_size(prog, &cubin);
        if (r != NVRTC_SUCCESS || cubin == 0) {
            if (!quiet) {
                char *log = NULL;
                if (nv.log_size(prog, &n) == NVRTC_SUCCESS && (log = malloc(n + 1)) != NULL &&
                    nv.log(prog, log) == NVRTC_SUCCESS)
                    log[n] = '\0';
                fprintf(stderr, "%s (%s): %s\n%s\n", what, nv_archs[a] + 19,
                        nv.get_error_string(r), log ? log : "(no log)");
                free(log);
            }
            nv.destroy(&prog);
            return -1;
        }
        char *bin = malloc(cubin);
        r = bin ? nv.cubin(prog, bin) : NVRTC_ERROR_OUT_OF_MEMORY;
        free(bin);
        nv.destroy(&prog);
        if (r != NVRTC_SUCCESS) {
            fprintf(stderr, "%s: nvrtcGetCUBIN: %s\n", what, nv.get_error_string(r));
            return -1;
        }
    }
    return 0;
}

/* =============================================================================================
 * Batches: many kernels per program, programs on several threads
 * =========================================================================================== */

typedef struct {
    char *name; /* the kernel's name (or file name), for messages */
    char *src;  /* its CUDA source (malloc'd) */
} nv_item_t;

typedef struct {
    nv_item_t *items;
    int n, batch;
    int next;       /* the next batch's first item (under lock) */
    int failed;     /* kernels that failed (under lock) */
    pthread_mutex_t lock;
} nv_work_t;

/* Compiles items [lo, hi) as one program; on failure each one alone, to name the culprit.
 * Returns the number of kernels that failed. */
static int nv_batch(nv_item_t *items, int lo, int hi) {
    if (hi - lo == 1)
        return nv_compile(items[lo].src, items[lo].name, false) ? 1 : 0;
    size_t len = 1;
    for (int i = lo; i < hi; i++)
        len += strlen(items[i].src) + 64;
    char *all = malloc(len), *p = all;
    if (!all)
        return hi - lo;
    for (int i = lo; i < hi; i++)
        p += sprintf(p, "namespace pg_batch_%d {\n%s}\n", i - lo, items[i].src);
    int bad = 0;
    if (nv_compile(all, items[lo].name, true) != 0)
        for (int i = lo; i < hi; i++)
            bad += nv_compile(items[i].src, items[i].name, false) ? 1 : 0;
    free(all);
    return bad;
}

static void *nv_worker(void *arg) {
    nv_work_t *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        int lo = w->next;
        w->next = lo + w->batch < w->n ? lo + w->batch : w->n;
        int hi = w->next;
        pthread_mutex_unlock(&w->lock);
        if (lo >= hi)
            return NULL;
        int bad = nv_batch(w->items, lo, hi);
        pthread_mutex_lock(&w->lock);
        w->failed += bad;
        pthread_mutex_unlock(&w->lock);
    }
}

/* Compiles every item, `batch` kernels per program on `jobs` threads; returns the failures. */
static int nv_compile_all(nv_item_t *items, int n, int batch, int jobs) {
    nv_work_t w = {.items = items, .n = n, .batch = batch < 1 ? 1 : batch};
    pthread_mutex_init(&w.lock, NULL);
    pthread_t th[64];
    if (jobs < 1)
        jobs = 1;
    if (jobs > 64)
        jobs = 64;
    int started = 0;
    for (; started < jobs; started++)
        if (pthread_create(&th[started], NULL, nv_worker, &w) != 0)
            break;
    if (started == 0)
        nv_worker(&w);
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    pthread_mutex_destroy(&w.lock);
    return w.failed;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int default_jobs(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 8 ? 8 : (int)n;
}

/* =============================================================================================
 * Building kernels
 * =========================================================================================== */

#define F32 PG_FLOAT32
#define F64 PG_FLOAT64
#define I32 PG_INT32
#define I64 PG_INT64
#define BOOL PG_BOOL

static const pg_dtype_t all_dtypes[] = {F32, F64, I32, I64, BOOL};

/* The corpus being built by one test: rendered sources, compiled together at the end. */
static nv_item_t corpus[4096];
static int ncorpus;

/* A zeroed kernel with the given iteration space and no reduction. */
static kir_kernel_t *kernel_new(int rank, const int64_t *shape, pg_dtype_t out_dtype) {
    kir_kernel_t *k = calloc(1, sizeof(*k));
    ASSERT(k != NULL);
    k->rank = rank;
    for (int d = 0; d < rank; d++)
        k->shape[d] = shape[d];
    k->reduce = PRIM_COUNT;
    k->out_dtype = out_dtype;
    k->nstages = 1;
    return k;
}

/* Adds an input read with the given offset and strides (NULL: contiguous). */
static int add_input_at(kir_kernel_t *k, pg_dtype_t dt, int64_t off, const int64_t *strides) {
    kir_input_t *in = &k->in[k->nin];
    in->dtype = dt;
    in->off = off;
    int64_t s = 1;
    for (int d = k->rank - 1; d >= 0; d--) {
        in->strides[d] = strides ? strides[d] : s;
        s *= k->shape[d];
    }
    return k->nin++;
}

static int add_input(kir_kernel_t *k, pg_dtype_t dt) { return add_input_at(k, dt, 0, NULL); }

static int val_load(kir_kernel_t *k, int input) {
    kir_val_t v = {.kind = KIR_LOAD, .dtype = k->in[input].dtype, .input = input, .a = -1,
                   .b = -1, .c = -1};
    return kir_add_val(k, &v);
}

static int val_const(kir_kernel_t *k, pg_dtype_t dt, double x) {
    kir_val_t v = {.kind = KIR_CONST, .dtype = dt, .value = x, .a = -1, .b = -1, .c = -1};
    return kir_add_val(k, &v);
}

static int val_op(kir_kernel_t *k, prim_t op, pg_dtype_t dt, int a, int b, int c) {
    kir_val_t v = {.kind = KIR_OP, .prim = op, .dtype = dt, .a = a, .b = b, .c = c, .input = -1};
    return kir_add_val(k, &v);
}

static int val_acc(kir_kernel_t *k, int stage, pg_dtype_t dt) {
    kir_val_t v = {.kind = KIR_ACC, .dtype = dt, .input = stage, .a = -1, .b = -1, .c = -1};
    return kir_add_val(k, &v);
}

/* Makes k a reduction by op over the axes whose bit is set in mask. */
static void set_reduce(kir_kernel_t *k, prim_t op, unsigned mask) {
    k->reduce = op;
    for (int d = 0; d < k->rank; d++)
        k->reduced[d] = (mask >> d) & 1u;
}

/* Renders k for CUDA (asserting success) into the corpus and frees it. */
static void add(kir_kernel_t *k) {
    char name[32];
    char *src = kir_render_cuda(k, name, sizeof(name));
    if (!src)
        fprintf(stderr, "kir_render_cuda refused corpus kernel %d\n", ncorpus);
    ASSERT(src != NULL);
    ASSERT(strncmp(name, "pg_cu_", 6) == 0 && strlen(name) == 22);
    ASSERT(ncorpus < (int)(sizeof(corpus) / sizeof(corpus[0])));
    const char *emit = getenv("PG_NVRTC_EMIT"); /* a directory to write the corpus to */
    if (emit) {
        char path[512];
        snprintf(path, sizeof(path), "%s/%s.cu", emit, name);
        FILE *f = fopen(path, "w");
        if (f) {
            fputs(src, f);
            fclose(f);
        }
    }
#ifdef PG_NVRTC_CHECK_C /* a one-off check that a refactoring left the C renderer's output as is */
    {
        char n1[32], n2[32];
        char *c1 = kir_render_c(k, n1, sizeof(n1)), *c2 = kir_render_c_orig(k, n2, sizeof(n2));
        ASSERT(c1 && c2);
        ASSERT_STR_EQ(n1, n2);
        ASSERT_STR_EQ(c1, c2);
        pg_free(c1);
        pg_free(c2);
    }
#endif
    corpus[ncorpus].name = strdup(name);
    corpus[ncorpus].src = strdup(src);
    ASSERT(corpus[ncorpus].name && corpus[ncorpus].src);
    ncorpus++;
    pg_free(src);
    free(k);
}

/* Compiles the corpus built so far and checks that every kernel compiled. */
static int compile_corpus(const char *what) {
    double t0 = now_s();
    int bad = nv_compile_all(corpus, ncorpus, 16, default_jobs());
    printf("# %s: %d kernels, sm_80 and sm_90, %.2f s\n", what, ncorpus, now_s() - t0);
    fflush(stdout);
    for (int i = 0; i < ncorpus; i++) {
        free(corpus[i].name);
        free(corpus[i].src);
    }
    ncorpus = 0;
    ASSERT_EQ(bad, 0);
    ASSERT_EQ(pg_malloc_live(), 0);
    return 0;
}

static bool is_float(pg_dtype_t dt) { return dt == F32 || dt == F64; }

/* out = op(load in0) over [37, 29] (not a multiple of a warp). */
static void unary(prim_t op, pg_dtype_t in, pg_dtype_t out) {
    kir_kernel_t *k = kernel_new(2, (int64_t[]){37, 29}, out);
    int x = val_load(k, add_input(k, in));
    val_op(k, op, out, x, -1, -1);
    add(k);
}

static void binary(prim_t op, pg_dtype_t in, pg_dtype_t out) {
    kir_kernel_t *k = kernel_new(2, (int64_t[]){37, 29}, out);
    int a = val_load(k, add_input(k, in));
    int b = val_load(k, add_input(k, in));
    val_op(k, op, out, a, b, -1);
    add(k);
}

/* =============================================================================================
 * Tests
 * =========================================================================================== */

/* Every unary primitive on every dtype it takes, every cast, logical_not. */
TEST_IMPL(unary_and_cast) {
    static const prim_t fops[] = {
        PRIM_neg, PRIM_abs, PRIM_exp, PRIM_log, PRIM_sqrt, PRIM_rsqrt, PRIM_sin, PRIM_cos,
        PRIM_tanh, PRIM_sigmoid, PRIM_relu, PRIM_gelu, PRIM_gelu_tanh, PRIM_silu, PRIM_erf,
        PRIM_reciprocal, PRIM_square, PRIM_sign,
    };
    static const prim_t iops[] = {PRIM_neg, PRIM_abs, PRIM_relu, PRIM_square, PRIM_sign};
    for (size_t i = 0; i < sizeof(fops) / sizeof(fops[0]); i++) {
        unary(fops[i], F32, F32);
        unary(fops[i], F64, F64);
    }
    for (size_t i = 0; i < sizeof(iops) / sizeof(iops[0]); i++) {
        unary(iops[i], I32, I32);
        unary(iops[i], I64, I64);
    }
    unary(PRIM_logical_not, BOOL, BOOL);
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 5; b++)
            unary(PRIM_cast, all_dtypes[a], all_dtypes[b]);
    return compile_corpus("unary and cast");
}

/* Every binary primitive on every dtype it takes, where on every dtype, constants. */
TEST_IMPL(binary_where_const) {
    static const prim_t arith[] = {PRIM_add, PRIM_sub, PRIM_mul, PRIM_pow, PRIM_maximum,
                                   PRIM_minimum};
    static const prim_t cmp[] = {PRIM_eq, PRIM_ne, PRIM_lt, PRIM_le, PRIM_gt, PRIM_ge};
    for (int t = 0; t < 4; t++) {
        pg_dtype_t dt = all_dtypes[t];
        for (size_t i = 0; i < sizeof(arith) / sizeof(arith[0]); i++)
            binary(arith[i], dt, dt);
        if (is_float(dt))
            binary(PRIM_div, dt, dt);
        for (size_t i = 0; i < sizeof(cmp) / sizeof(cmp[0]); i++)
            binary(cmp[i], dt, BOOL);
    }
    binary(PRIM_logical_and, BOOL, BOOL);
    binary(PRIM_logical_or, BOOL, BOOL);
    binary(PRIM_eq, BOOL, BOOL);
    binary(PRIM_ne, BOOL, BOOL);
    for (int t = 0; t < 5; t++) { /* where(c, a, const) with a broadcast condition */
        pg_dtype_t dt = all_dtypes[t];
        kir_kernel_t *k = kernel_new(2, (int64_t[]){16, 40}, dt);
        int c = val_load(k, add_input_at(k, BOOL, 0, (int64_t[]){0, 1}));
        int a = val_load(k, add_input(k, dt));
        int z = val_const(k, dt, dt == BOOL ? 1 : -2.5);
        val_op(k, PRIM_where, dt, c, a, z);
        add(k);
    }
    /* Special constants: NaN, infinities, -0, huge integers. */
    static const double fc[] = {NAN, -NAN, INFINITY, -INFINITY, -0.0, 1e-310, 3.4e38};
    for (size_t i = 0; i < sizeof(fc) / sizeof(fc[0]); i++) {
        for (int t = 0; t < 2; t++) {
            kir_kernel_t *k = kernel_new(1, (int64_t[]){100}, all_dtypes[t]);
            int x = val_load(k, add_input(k, all_dtypes[t]));
            int c = val_const(k, all_dtypes[t], fc[i]);
            val_op(k, PRIM_maximum, all_dtypes[t], x, c, -1);
            add(k);
        }
    }
    kir_kernel_t *k = kernel_new(1, (int64_t[]){100}, I64);
    int x = val_load(k, add_input(k, I64));
    int c = val_const(k, I64, -9223372036854775808.0);
    val_op(k, PRIM_add, I64, x, c, -1);
    add(k);
    /* A long chain mixing domains: float -> compare -> where -> cast -> int ops -> float. */
    k = kernel_new(3, (int64_t[]){4, 5, 6}, F32);
    int f = val_load(k, add_input(k, F32));
    int i = val_load(k, add_input(k, I32));
    int e = val_op(k, PRIM_exp, F32, f, -1, -1);
    int g = val_op(k, PRIM_gt, BOOL, e, val_const(k, F32, 1.5), -1);
    int ci = val_op(k, PRIM_cast, I32, e, -1, -1);
    int w = val_op(k, PRIM_where, I32, g, ci, i);
    int p = val_op(k, PRIM_pow, I32, w, val_const(k, I32, 3), -1);
    int fl = val_op(k, PRIM_cast, F32, p, -1, -1);
    int t = val_op(k, PRIM_gelu_tanh, F32, fl, -1, -1);
    int d = val_op(k, PRIM_cast, F64, t, -1, -1);
    int s = val_op(k, PRIM_erf, F64, d, -1, -1);
    val_op(k, PRIM_cast, F32, s, -1, -1);
    add(k);
    /* rank 0 */
    k = kernel_new(0, NULL, F32);
    val_op(k, PRIM_tanh, F32, val_load(k, add_input(k, F32)), -1, -1);
    add(k);
    return compile_corpus("binary, where, constants");
}

/* Broadcast, permuted, flipped and sliced inputs, elementwise and reduced; in place. */
TEST_IMPL(strided_and_inplace) {
    /* [6, 8, 10]: in0 permuted (axes 2, 0, 1 of a [10, 6, 8] buffer), in1 broadcast along 0
     * and 2, in2 flipped along 2 (offset at its end) and sliced along 1 with step 2. */
    const int64_t shape[3] = {6, 8, 10};
    for (int red = 0; red < 3; red++) {
        kir_kernel_t *k = kernel_new(3, shape, F32);
        int a = val_load(k, add_input_at(k, F32, 0, (int64_t[]){8, 1, 48}));
        int b = val_load(k, add_input_at(k, F32, 0, (int64_t[]){0, 1, 0}));
        int c = val_load(k, add_input_at(k, F32, 9, (int64_t[]){160, 20, -1}));
        int m = val_op(k, PRIM_mul, F32, a, b, -1);
        int s = val_op(k, PRIM_sub, F32, m, c, -1);
        val_op(k, PRIM_silu, F32, s, -1, -1);
        if (red == 1)
            set_reduce(k, PRIM_sum, 0x5); /* axes 0 and 2 */
        else if (red == 2)
            set_reduce(k, PRIM_max, 0x2);
        add(k);
    }
    /* A coalescible strided input (two axes walk as one) and a size-1 axis. */
    kir_kernel_t *k = kernel_new(4, (int64_t[]){3, 1, 4, 5}, F64);
    int a = val_load(k, add_input_at(k, F64, 2, (int64_t[]){40, 7, 5, 1}));
    val_op(k, PRIM_sqrt, F64, a, -1, -1);
    add(k);
    /* In place: a matmul epilogue out = relu(out + bias), and with a cast back. */
    for (int t = 0; t < 2; t++) {
        k = kernel_new(2, (int64_t[]){64, 48}, all_dtypes[t]);
        int o = val_load(k, add_input(k, all_dtypes[t]));
        int bias = val_load(k, add_input_at(k, all_dtypes[t], 0, (int64_t[]){0, 1}));
        int s = val_op(k, PRIM_add, all_dtypes[t], o, bias, -1);
        val_op(k, PRIM_relu, all_dtypes[t], s, -1, -1);
        k->inplace = 1;
        add(k);
    }
    /* Pure gathers (server/cudarun.c's copy of a strided device view): an im2col window of a
     * [2, 3, 8, 8] image (offset, overlapping strides), a transpose, a flip, every dtype. */
    for (int t = 0; t < PG_DTYPE_COUNT; t++) {
        k = kernel_new(6, (int64_t[]){2, 3, 6, 6, 3, 3}, all_dtypes[t]);
        val_load(k, add_input_at(k, all_dtypes[t], 9, (int64_t[]){192, 64, 8, 1, 8, 1}));
        add(k);
    }
    k = kernel_new(2, (int64_t[]){48, 64}, F32);
    val_load(k, add_input_at(k, F32, 0, (int64_t[]){1, 48}));
    add(k);
    k = kernel_new(1, (int64_t[]){100}, F64);
    val_load(k, add_input_at(k, F64, 99, (int64_t[]){-1}));
    add(k);
    return compile_corpus("strided and in place");
}

/* sum, prod, max, min over several axis sets of every dtype they take; any, all; long folds
 * (a block per output) and split ones ((output, block) units). */
TEST_IMPL(reductions) {
    static const prim_t ops[] = {PRIM_sum, PRIM_prod, PRIM_max, PRIM_min};
    static const unsigned masks[] = {0x4, 0x1, 0x5, 0x7, 0x2};
    const int64_t shape[3] = {6, 10, 7};
    for (size_t m = 0; m < sizeof(masks) / sizeof(masks[0]); m++) {
        for (int t = 0; t < 4; t++)
            for (size_t o = 0; o < sizeof(ops) / sizeof(ops[0]); o++) {
                kir_kernel_t *k = kernel_new(3, shape, all_dtypes[t]);
                int x = val_load(k, add_input(k, all_dtypes[t]));
                if (is_float(all_dtypes[t]))
                    x = val_op(k, PRIM_abs, all_dtypes[t], x, -1, -1);
                set_reduce(k, ops[o], masks[m]);
                add(k);
            }
        for (int l = 0; l < 2; l++) { /* any(x > 0), all(bool) */
            kir_kernel_t *k = kernel_new(3, shape, BOOL);
            int x = val_load(k, add_input(k, l ? BOOL : F32));
            if (!l)
                x = val_op(k, PRIM_gt, BOOL, x, val_const(k, F32, 0), -1);
            set_reduce(k, l ? PRIM_all : PRIM_any, masks[m]);
            add(k);
        }
    }
    /* Reductions whose result dtype differs from the values' (a mean: sum then scale is a
     * later kernel; here a sum of bools counted as int64 and a float sum stored as float64). */
    kir_kernel_t *k = kernel_new(2, (int64_t[]){5, 300}, I64);
    int x = val_op(k, PRIM_cast, I64, val_load(k, add_input(k, BOOL)), -1, -1);
    (void)x;
    set_reduce(k, PRIM_sum, 0x2);
    add(k);
    /* Long folds: a block per output; float32 sums over 2048 accumulate in double. */
    static const int64_t lens[] = {1024, 1025, 2048, 5000};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        for (int t = 0; t < 4; t++) {
            k = kernel_new(2, (int64_t[]){3, lens[i]}, all_dtypes[t]);
            val_load(k, add_input(k, all_dtypes[t]));
            set_reduce(k, i % 2 ? PRIM_max : PRIM_sum, 0x2);
            add(k);
        }
    /* Split reductions: (output, block) units writing doubles for the executor, along one
     * axis and along the innermost of two reduced axes; a flipped input. */
    for (size_t o = 0; o < sizeof(ops) / sizeof(ops[0]); o++)
        for (int t = 0; t < 2; t++) {
            k = kernel_new(2, (int64_t[]){2, 70000}, all_dtypes[t]);
            int v = val_load(k, add_input(k, all_dtypes[t]));
            val_op(k, PRIM_square, all_dtypes[t], v, -1, -1);
            set_reduce(k, ops[o], 0x2);
            ASSERT(kir_split_blocks(k) == 3);
            add(k);
        }
    k = kernel_new(3, (int64_t[]){3, 4, 40000}, F32);
    val_load(k, add_input_at(k, F32, 39999, (int64_t[]){160000, 40000, -1}));
    set_reduce(k, PRIM_sum, 0x6);
    ASSERT(kir_split_blocks(k) == 2);
    add(k);
    /* A full reduction to a scalar over a permuted input. */
    k = kernel_new(2, (int64_t[]){300, 200}, F64);
    val_load(k, add_input_at(k, F64, 0, (int64_t[]){1, 300}));
    set_reduce(k, PRIM_sum, 0x3);
    add(k);
    return compile_corpus("reductions");
}

/* Builds softmax over the last `nrow` axes of shape: stage 0 max, stage 1 sum of exp(x - a0),
 * stage 2 writes exp(x - a0) / a1 (or, with logsumexp, the last stage folds instead). */
static void softmax(int rank, const int64_t *shape, int row, pg_dtype_t dt, bool logsumexp) {
    kir_kernel_t *k = kernel_new(rank, shape, dt);
    int in = add_input(k, dt);
    k->nstages = 3;
    k->row = row;
    val_load(k, in);
    k->stage[0] = (kir_stage_t){.reduce = PRIM_max, .end = k->nvals, .dtype = dt};
    int x = val_load(k, in);
    int e = val_op(k, PRIM_exp, dt, val_op(k, PRIM_sub, dt, x, val_acc(k, 0, dt), -1), -1, -1);
    (void)e;
    k->stage[1] = (kir_stage_t){.reduce = PRIM_sum, .end = k->nvals, .dtype = dt};
    x = val_load(k, in);
    int m = val_acc(k, 0, dt);
    e = val_op(k, PRIM_exp, dt, val_op(k, PRIM_sub, dt, x, m, -1), -1, -1);
    if (logsumexp) {
        int l = val_op(k, PRIM_log, dt, val_acc(k, 1, dt), -1, -1);
        val_op(k, PRIM_add, dt, val_op(k, PRIM_mul, dt, e, l, -1), m, -1);
        k->stage[2] = (kir_stage_t){.reduce = PRIM_sum, .end = k->nvals, .dtype = dt};
        k->reduce = PRIM_sum;
        for (int d = 0; d < rank; d++)
            k->reduced[d] = d >= row;
    } else {
        val_op(k, PRIM_div, dt, e, val_acc(k, 1, dt), -1);
        k->stage[2] = (kir_stage_t){.reduce = PRIM_COUNT, .end = k->nvals, .dtype = dt};
    }
    add(k);
}

/* layer_norm over the last axis: mean, variance, then (x - mean) * rsqrt(var + eps) * w + b
 * with w and b broadcast over rows. */
static void layer_norm(int64_t rows, int64_t n, pg_dtype_t dt) {
    kir_kernel_t *k = kernel_new(2, (int64_t[]){rows, n}, dt);
    int in = add_input(k, dt);
    int w = add_input_at(k, dt, 0, (int64_t[]){0, 1});
    int bias = add_input_at(k, dt, 0, (int64_t[]){0, 1});
    k->nstages = 3;
    k->row = 1;
    val_load(k, in);
    k->stage[0] = (kir_stage_t){.reduce = PRIM_sum, .end = k->nvals, .dtype = dt};
    int mean = val_op(k, PRIM_mul, dt, val_acc(k, 0, dt), val_const(k, dt, 1.0 / (double)n), -1);
    int d = val_op(k, PRIM_sub, dt, val_load(k, in), mean, -1);
    val_op(k, PRIM_square, dt, d, -1, -1);
    k->stage[1] = (kir_stage_t){.reduce = PRIM_sum, .end = k->nvals, .dtype = dt};
    mean = val_op(k, PRIM_mul, dt, val_acc(k, 0, dt), val_const(k, dt, 1.0 / (double)n), -1);
    int var = val_op(k, PRIM_mul, dt, val_acc(k, 1, dt), val_const(k, dt, 1.0 / (double)n), -1);
    int r = val_op(k, PRIM_rsqrt, dt, val_op(k, PRIM_add, dt, var, val_const(k, dt, 1e-5), -1),
                   -1, -1);
    d = val_op(k, PRIM_sub, dt, val_load(k, in), mean, -1);
    int y = val_op(k, PRIM_mul, dt, val_op(k, PRIM_mul, dt, d, r, -1), val_load(k, w), -1);
    val_op(k, PRIM_add, dt, y, val_load(k, bias), -1);
    k->stage[2] = (kir_stage_t){.reduce = PRIM_COUNT, .end = k->nvals, .dtype = dt};
    add(k);
}

/* Staged row kernels: softmax (a warp per row and a block per row), log-sum-exp (the last
 * stage folds), rows of two axes, layer_norm with broadcast weights. */
TEST_IMPL(staged) {
    for (int t = 0; t < 2; t++) {
        softmax(2, (int64_t[]){8, 100}, 1, all_dtypes[t], false);
        softmax(2, (int64_t[]){8, 4096}, 1, all_dtypes[t], false);
        softmax(2, (int64_t[]){8, 100}, 1, all_dtypes[t], true);
        softmax(3, (int64_t[]){4, 8, 300}, 1, all_dtypes[t], false);
        layer_norm(16, 768, all_dtypes[t]);
        layer_norm(4, 5000, all_dtypes[t]);
    }
    /* A variance whose fold stage reads an int input through a cast, output int. */
    kir_kernel_t *k = kernel_new(2, (int64_t[]){10, 50}, I64);
    int in = add_input(k, I32);
    k->nstages = 2;
    k->row = 1;
    val_op(k, PRIM_cast, I64, val_load(k, in), -1, -1);
    k->stage[0] = (kir_stage_t){.reduce = PRIM_max, .end = k->nvals, .dtype = I64};
    int x = val_op(k, PRIM_cast, I64, val_load(k, in), -1, -1);
    val_op(k, PRIM_sub, I64, val_acc(k, 0, I64), x, -1);
    k->stage[1] = (kir_stage_t){.reduce = PRIM_COUNT, .end = k->nvals, .dtype = I64};
    add(k);
    return compile_corpus("staged");
}

/* The harness must be able to fail: a rendered kernel with a stray identifier does not
 * compile, and renderer output it cannot express (a malformed kernel) is refused. */
TEST_IMPL(broken_source_fails) {
    nv_load();
    kir_kernel_t *k = kernel_new(1, (int64_t[]){64}, F32);
    val_op(k, PRIM_exp, F32, val_load(k, add_input(k, F32)), -1, -1);
    char name[32];
    char *src = kir_render_cuda(k, name, sizeof(name));
    ASSERT(src != NULL);
    ASSERT_EQ(nv_compile(src, name, false), 0);
    size_t n = strlen(src);
    char *bad = malloc(n + 64);
    ASSERT(bad != NULL);
    memcpy(bad, src, n + 1);
    char *brace = strrchr(bad, '}');
    ASSERT(brace != NULL);
    strcpy(brace, "    undefined_identifier_x;\n}\n");
    ASSERT_EQ(nv_compile(bad, "broken (expected to fail)", true), -1);
    k->vals[0].input = 3; /* a load of an input the kernel does not have */
    char name2[32];
    ASSERT(kir_render_cuda(k, name2, sizeof(name2)) == NULL);
    free(bad);
    pg_free(src);
    free(k);
    ASSERT_EQ(pg_malloc_live(), 0);
    return 0;
}

/* Names are content-derived: equal kernels render to equal names and sources, and the CUDA name
 * differs from the C one. */
TEST_IMPL(stable_names) {
    kir_kernel_t *k = kernel_new(2, (int64_t[]){4, 5}, F32);
    val_op(k, PRIM_sigmoid, F32, val_load(k, add_input(k, F32)), -1, -1);
    set_reduce(k, PRIM_sum, 0x2);
    char n1[32], n2[32], nc[32];
    char *s1 = kir_render_cuda(k, n1, sizeof(n1)), *s2 = kir_render_cuda(k, n2, sizeof(n2));
    char *sc = kir_render_c(k, nc, sizeof(nc));
    ASSERT(s1 && s2 && sc);
    ASSERT_STR_EQ(n1, n2);
    ASSERT_STR_EQ(s1, s2);
    ASSERT(strstr(s1, n1) != NULL && strcmp(n1 + 6, nc + 5) != 0);
    k->shape[1] = 6;
    char *s3 = kir_render_cuda(k, n2, sizeof(n2));
    ASSERT(s3 && strcmp(n1, n2) != 0);
    pg_free(s1);
    pg_free(s2);
    pg_free(s3);
    pg_free(sc);
    free(k);
    ASSERT_EQ(pg_malloc_live(), 0);
    return 0;
}

#define TEST_LIST(X)                                                                               \
    X(unary_and_cast) X(binary_where_const) X(strided_and_inplace) X(reductions) X(staged)       \
    X(broken_source_fails) X(stable_names)

/* =============================================================================================
 * --dir: every .cu file of a directory
 * =========================================================================================== */

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *q = realloc(buf, cap);
            if (!q) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = q;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static int run_dir(const char *dir, int min, int batch, int jobs) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "pg_test_nvrtc: cannot open %s\n", dir);
        return 1;
    }
    nv_item_t *items = NULL;
    int n = 0, cap = 0, rc = 1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 4 || strcmp(e->d_name + len - 3, ".cu") != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            nv_item_t *q = realloc(items, (size_t)cap * sizeof(*items));
            if (!q)
                goto out;
            items = q;
        }
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        items[n].name = strdup(e->d_name);
        items[n].src = read_file(path);
        if (!items[n].name || !items[n].src) {
            fprintf(stderr, "pg_test_nvrtc: cannot read %s\n", path);
            free(items[n].name);
            free(items[n].src);
            goto out;
        }
        n++;
    }
    nv_load();
    double t0 = now_s();
    int bad = nv_compile_all(items, n, batch, jobs);
    printf("pg_test_nvrtc: %d kernels from %s compiled for sm_80 and sm_90 in %.1f s "
           "(%d per program, %d threads): %d failed\n",
           n, dir, now_s() - t0, batch, jobs, bad);
    if (n < min)
        fprintf(stderr, "pg_test_nvrtc: expected at least %d kernels in %s\n", min, dir);
    rc = bad || n < min ? 1 : 0;
out:
    for (int i = 0; i < n; i++) {
        free(items[i].name);
        free(items[i].src);
    }
    free(items);
    closedir(d);
    return rc;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--dir") == 0) {
        if (argc < 3) {
            fprintf(stderr, "usage: pg_test_nvrtc --dir DIR [--min N] [--batch N] [--jobs N]\n");
            return 2;
        }
        int min = 0, batch = 16, jobs = default_jobs();
        for (int i = 3; i + 1 < argc; i += 2) {
            if (strcmp(argv[i], "--min") == 0)
                min = atoi(argv[i + 1]);
            else if (strcmp(argv[i], "--batch") == 0)
                batch = atoi(argv[i + 1]);
            else if (strcmp(argv[i], "--jobs") == 0)
                jobs = atoi(argv[i + 1]);
        }
        return run_dir(argv[2], min, batch, jobs);
    }
    nv_load();
    static const task_entry_t tests[] = {TEST_LIST(TASK_ENTRY)};
    return task_run_all(tests, (int)(sizeof(tests) / sizeof(tests[0])), argc, argv);
}
