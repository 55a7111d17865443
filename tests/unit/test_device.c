/*
 * test_device.c - device strings and checks (server/device.c) and, when the CUDA backend is
 * built, its loaders (kernels/cuda/): on a machine without a GPU cuda_load() reports why and
 * the daemon goes on; NVRTC compiles for sm_80 and sm_90 without a GPU.
 */
#include "../../server/device.h"
#include "../../server/mem.h"
#include "task.h"

#ifdef PICOGRAD_HAVE_CUDA
#include "../../kernels/cuda/load.h"
#endif

static int parse(const char *s, dev_id_t *d, proto_err_t *err) {
    return dev_parse(s, strlen(s), "device", d, err);
}

TEST_IMPL(parse_valid) {
    static const struct {
        const char *s;
        dev_kind_t kind;
        int index;
    } ok[] = {{"cpu", DEV_CPU, 0},       {"cpu:0", DEV_CPU, 0},  {"cuda", DEV_CUDA, -1},
              {"cuda:0", DEV_CUDA, 0},   {"cuda:7", DEV_CUDA, 7}, {"cuda:10", DEV_CUDA, 10},
              {"cuda:999999999", DEV_CUDA, 999999999}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        dev_id_t d;
        proto_err_t err = {0};
        ASSERT_EQ(parse(ok[i].s, &d, &err), 0);
        ASSERT_EQ(d.kind, ok[i].kind);
        ASSERT_EQ(d.index, ok[i].index);
        ASSERT_STR_EQ(d.text, ok[i].s);
    }
    return 0;
}

TEST_IMPL(parse_malformed) {
    static const char *const bad[] = {"",        "gpu",     "CUDA",    "Cpu",      "cuda:",
                                      "cuda:-1", "cuda:+1", "cuda:01", "cuda:00",  "cuda:1x",
                                      "cuda: 1", "cuda 0",  "cpu:1",   "cuda:0:0", "cuda0",
                                      "cuda:1234567890", "cuda:99999999999999999999", "cpu "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        dev_id_t d;
        proto_err_t err = {0};
        if (parse(bad[i], &d, &err) != -PG_EBAD_REQUEST) {
            fprintf(stderr, "'%s' was accepted\n", bad[i]);
            return 1;
        }
        ASSERT_EQ(err.code, PG_EBAD_REQUEST);
        ASSERT(strstr(err.message, "field 'device' must be"));
    }
    /* Printable strings are quoted; raw bytes never are. */
    dev_id_t d;
    proto_err_t err = {0};
    ASSERT_EQ(parse("gpu", &d, &err), -PG_EBAD_REQUEST);
    ASSERT(strstr(err.message, "got 'gpu'"));
    ASSERT_EQ(dev_parse("cuda:\xff\x01", 7, "device", &d, &err), -PG_EBAD_REQUEST);
    ASSERT(strstr(err.message, "got a string of 7 bytes"));
    ASSERT_EQ(dev_parse("cuda:0\0", 7, "device", &d, &err), -PG_EBAD_REQUEST);
    return 0;
}

/* Packs {"device": <value>} (value packed by the callback) and checks dev_from_request. */
static int from_request(int kind, const char *s, dev_id_t *d, proto_err_t *err) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, kind == 0 ? 0 : 1);
    if (kind) {
        proto_pack_cstr(&pk, "device");
        if (kind == 1)
            proto_pack_cstr(&pk, s);
        else if (kind == 2)
            msgpack_pack_int(&pk, 0);
        else
            msgpack_pack_nil(&pk);
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ASSERT(msgpack_unpack_next(&u, sb.data, sb.size, NULL) == MSGPACK_UNPACK_SUCCESS);
    int rc = dev_from_request(&u.data, d, err);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

TEST_IMPL(request_field) {
    dev_init(NULL);
    dev_id_t d;
    proto_err_t err = {0};
    ASSERT_EQ(from_request(0, NULL, &d, &err), 0); /* absent: the CPU */
    ASSERT_EQ(d.kind, DEV_CPU);
    ASSERT_STR_EQ(d.text, "cpu");
    ASSERT_EQ(from_request(3, NULL, &d, &err), 0); /* nil: the CPU */
    ASSERT_EQ(d.kind, DEV_CPU);
    ASSERT_EQ(from_request(1, "cpu", &d, &err), 0);
    ASSERT_EQ(from_request(2, NULL, &d, &err), -PG_EBAD_REQUEST);
    ASSERT(strstr(err.message, "field 'device' must be a string"));
    ASSERT_EQ(from_request(1, "tpu:0", &d, &err), -PG_EBAD_REQUEST);

    /* Every CUDA device is refused, and the message names it: with no GPU (this test's CI) as
     * "not available: <why>", with GPUs the ones past the last as "does not exist", and the
     * present ones because the runtime is not implemented yet. */
    int n = dev_cuda_count();
    static const char *const cuda[] = {"cuda", "cuda:0", "cuda:7", "cuda:999999999"};
    for (size_t i = 0; i < sizeof(cuda) / sizeof(cuda[0]); i++) {
        ASSERT_EQ(from_request(1, cuda[i], &d, &err), -PG_ENO_DEVICE);
        ASSERT_EQ(err.code, PG_ENO_DEVICE);
        char want[64];
        snprintf(want, sizeof(want), "device '%s' ", cuda[i]);
        ASSERT(strstr(err.message, want) == err.message);
        int idx = d.index < 0 ? 0 : d.index;
        if (n == 0)
            ASSERT(strstr(err.message, "is not available: "));
        else if (idx >= n)
            ASSERT(strstr(err.message, "does not exist: this daemon has "));
        ASSERT(!strchr(err.message, '/')); /* no library paths in client messages */
        fprintf(stderr, "# %s\n", err.message);
    }
    dev_shutdown();
    ASSERT_EQ(pg_malloc_live(), 0);
    return 0;
}

#ifdef PICOGRAD_HAVE_CUDA
TEST_IMPL(cuda_load_reports) {
    int n = cuda_load();
    ASSERT(n >= 0);
    ASSERT_EQ(n, cuda_device_count());
    if (!cuda_available()) {
        const char *why = cuda_unavailable_reason();
        ASSERT(why[0] != '\0');
        ASSERT(!strchr(why, '/'));
        fprintf(stderr, "# cuda unavailable: %s\n", why);
    } else {
        ASSERT(cuda_driver() && cuda_cublas() && cu_nvrtc());
    }
    for (int i = 0; i < n; i++) {
        const cuda_device_info_t *di = cuda_device(i);
        ASSERT(di && di->name[0] && di->memory > 0 && di->cc_major >= 3);
        fprintf(stderr, "# cuda:%d %s %d.%d\n", i, di->name, di->cc_major, di->cc_minor);
    }
    ASSERT(cuda_device(n) == NULL && cuda_device(-1) == NULL);
    cuda_unload();
    ASSERT_EQ(cuda_device_count(), 0);
    ASSERT(!cuda_available());
    return 0;
}

static const char kernel_src[] =
    "static float twice(float x) { return x + x; }\n" /* a device function by -default-device */
    "extern \"C\" __global__ void pg_k_test(const float *a, float *out, long long n) {\n"
    "    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
    "    if (i < n) out[i] = twice(a[i]) * a[i] + 1.0f;\n"
    "}\n";

TEST_IMPL(nvrtc_compile) {
    if (!cu_nvrtc()) {
        fprintf(stderr, "# NVRTC not found (%s): skipped\n", cu_nvrtc_error());
        ASSERT(cu_nvrtc_error()[0] != '\0');
        char *log = NULL;
        void *cubin = (void *)1;
        size_t len = 1;
        ASSERT_EQ(cu_nvrtc_compile(kernel_src, "t", 80, &log, &cubin, &len), -PG_ENO_DEVICE);
        ASSERT(cubin == NULL && len == 0 && log && log[0]);
        pg_free(log);
        return 0;
    }
    const char *lib = NULL;
    int ma = 0, mi = 0;
    ASSERT_EQ(cu_nvrtc_info(&lib, &ma, &mi), 0);
    fprintf(stderr, "# %s %d.%d\n", lib, ma, mi);
    static const int archs[] = {80, 90};
    for (int k = 0; k < 2; k++) {
        char *log = NULL;
        void *cubin = NULL;
        size_t len = 0;
        int rc = cu_nvrtc_compile(kernel_src, "pg_k_test", archs[k], &log, &cubin, &len);
        if (rc != 0)
            fprintf(stderr, "sm_%d: %s\n", archs[k], log ? log : "?");
        ASSERT_EQ(rc, 0);
        ASSERT(log != NULL);
        ASSERT(len > 64 && memcmp(cubin, "\x7f" "ELF", 4) == 0);
        pg_free(cubin);
        pg_free(log);
    }
    /* Without a log pointer too. */
    void *cubin = NULL;
    size_t len = 0;
    ASSERT_EQ(cu_nvrtc_compile(kernel_src, "pg_k_test", 80, NULL, &cubin, &len), 0);
    pg_free(cubin);

    /* A source that does not compile: internal, with NVRTC's log naming the error. */
    char *log = NULL;
    ASSERT_EQ(cu_nvrtc_compile("__global__ void f() { undeclared_thing(); }", "broken", 80, &log,
                               &cubin, &len),
              -PG_EINTERNAL);
    ASSERT(cubin == NULL && len == 0);
    ASSERT(log && strstr(log, "undeclared_thing"));
    pg_free(log);
    ASSERT_EQ(cu_nvrtc_compile(kernel_src, "t", 5, &log, &cubin, &len), -PG_EINTERNAL);
    pg_free(log);
    cu_nvrtc_unload();
    ASSERT_EQ(pg_malloc_live(), 0);
    return 0;
}
#define CUDA_TESTS(X) X(cuda_load_reports) X(nvrtc_compile)
#else
#define CUDA_TESTS(X)
#endif

#define TEST_LIST(X)                                                                               \
    X(parse_valid)                                                                                 \
    X(parse_malformed)                                                                             \
    X(request_field)                                                                               \
    CUDA_TESTS(X)

TEST_MAIN(TEST_LIST)
