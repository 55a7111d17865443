/*
 * device.c - device strings, device checks and the CUDA part of `hello` (see device.h).
 *
 * This is the one file of the daemon that knows whether the CUDA backend was built
 * (PICOGRAD_HAVE_CUDA, set by CMake's PICOGRAD_CUDA): the rest asks it.
 */
#include "device.h"

#include "log.h"

#ifdef PICOGRAD_HAVE_CUDA
#include "../kernels/cuda/copy.h"
#include "../kernels/cuda/devmem.h"
#include "../kernels/cuda/load.h"
#include "../kernels/cuda/module.h"
#endif

#include <stdio.h>
#include <string.h>

int dev_parse(const char *s, size_t n, const char *field, dev_id_t *out, proto_err_t *err) {
    memset(out, 0, sizeof(*out));
    if (n == 3 && memcmp(s, "cpu", 3) == 0) {
        out->kind = DEV_CPU;
    } else if (n == 5 && memcmp(s, "cpu:0", 5) == 0) {
        out->kind = DEV_CPU;
    } else if (n == 4 && memcmp(s, "cuda", 4) == 0) {
        out->kind = DEV_CUDA;
        out->index = -1;
    } else if (n > 5 && n < DEV_TEXT_MAX && memcmp(s, "cuda:", 5) == 0) {
        long long v = 0;
        bool digits = true;
        for (size_t i = 5; i < n && digits; i++) {
            digits = s[i] >= '0' && s[i] <= '9';
            v = v * 10 + (s[i] - '0');
        }
        if (!digits || (s[5] == '0' && n > 6) || v > DEV_MAX_INDEX)
            goto err_bad;
        out->kind = DEV_CUDA;
        out->index = (int)v;
    } else {
        goto err_bad;
    }
    memcpy(out->text, s, n); /* n < DEV_TEXT_MAX in every accepted form */
    out->text[n] = '\0';
    return 0;
err_bad: {
    char q[40];
    if (proto_quote(q, sizeof(q), s, n))
        return proto_fail(err, PG_EBAD_REQUEST,
                          "field '%s' must be \"cpu\", \"cuda\" or \"cuda:N\" (N a device "
                          "number), got '%s'", field, q);
    return proto_fail(err, PG_EBAD_REQUEST,
                      "field '%s' must be \"cpu\", \"cuda\" or \"cuda:N\" (N a device number), "
                      "got a string of %zu bytes", field, n);
}
}

int dev_check(const dev_id_t *d, proto_err_t *err) {
    if (d->kind == DEV_CPU)
        return 0;
#ifdef PICOGRAD_HAVE_CUDA
    int n = cuda_device_count(), i = d->index < 0 ? 0 : d->index;
    if (n == 0)
        return proto_fail(err, PG_ENO_DEVICE, "device '%s' is not available: %s", d->text,
                          cuda_unavailable_reason());
    if (i >= n)
        return proto_fail(err, PG_ENO_DEVICE,
                          "device '%s' does not exist: this daemon has %d CUDA device%s", d->text,
                          n, n == 1 ? "" : "s");
    const cuda_device_info_t *di = cuda_device(i);
    if (!cuda_available())
        return proto_fail(err, PG_ENO_DEVICE, "device '%s' (%.60s) is not available: %s",
                          d->text, di->name, cuda_unavailable_reason());
    return 0;
#else
    return proto_fail(err, PG_ENO_DEVICE,
                      "device '%s' is not available: this picogradd was built without CUDA "
                      "(PICOGRAD_CUDA=OFF)", d->text);
#endif
}

int dev_from_request(const msgpack_object *args, dev_id_t *out, proto_err_t *err) {
    const msgpack_object *f = proto_find(args, "device");
    if (!f || f->type == MSGPACK_OBJECT_NIL) {
        memset(out, 0, sizeof(*out));
        memcpy(out->text, "cpu", 4);
        return 0;
    }
    if (f->type != MSGPACK_OBJECT_STR)
        return proto_fail(err, PG_EBAD_REQUEST,
                          "field 'device' must be a string (\"cpu\", \"cuda\" or \"cuda:N\")");
    int rc = dev_parse(f->via.str.ptr, f->via.str.size, "device", out, err);
    return rc ? rc : dev_check(out, err);
}

void dev_init(const char *cache_dir) {
#ifdef PICOGRAD_HAVE_CUDA
    if (cuda_load() > 0)
        cuda_module_init(cache_dir); /* cubins under <cache_dir>/cuda, only with a GPU */
#else
    (void)cache_dir;
    log_info("cuda: not built (PICOGRAD_CUDA=OFF), serving the CPU only");
#endif
}

void dev_shutdown(void) {
#ifdef PICOGRAD_HAVE_CUDA
    /* After every session is gone: no tensor holds device memory any more. */
    cuda_module_shutdown();
    cuda_copy_shutdown();
    cuda_mem_trim();
    cuda_ctx_release_all();
    cuda_unload();
#endif
}

int dev_cuda_count(void) {
#ifdef PICOGRAD_HAVE_CUDA
    return cuda_device_count();
#else
    return 0;
#endif
}

void dev_pack_stats(msgpack_packer *pk) {
    proto_pack_cstr(pk, "cuda");
    int n = dev_cuda_count();
    msgpack_pack_map(pk, 2);
    proto_pack_cstr(pk, "devices");
    msgpack_pack_array(pk, (size_t)n);
#ifdef PICOGRAD_HAVE_CUDA
    for (int i = 0; i < n; i++) {
        uint64_t used, cached, peak;
        char name[24];
        cuda_mem_stats(i, &used, &cached, &peak);
        snprintf(name, sizeof(name), "cuda:%d", i);
        msgpack_pack_map(pk, 4);
        proto_pack_cstr(pk, "name");
        proto_pack_cstr(pk, name);
        proto_pack_cstr(pk, "bytes_in_use");
        msgpack_pack_uint64(pk, used);
        proto_pack_cstr(pk, "bytes_cached");
        msgpack_pack_uint64(pk, cached);
        proto_pack_cstr(pk, "bytes_peak");
        msgpack_pack_uint64(pk, peak);
    }
    cuda_module_stats_t ks = cuda_module_stats();
#else
    struct { uint64_t compiled, memory_hits, disk_hits; double compile_seconds; } ks = {0};
#endif
    proto_pack_cstr(pk, "kernels");
    msgpack_pack_map(pk, 4);
    proto_pack_cstr(pk, "compiled");
    msgpack_pack_uint64(pk, ks.compiled);
    proto_pack_cstr(pk, "memory_hits");
    msgpack_pack_uint64(pk, ks.memory_hits);
    proto_pack_cstr(pk, "disk_hits");
    msgpack_pack_uint64(pk, ks.disk_hits);
    proto_pack_cstr(pk, "compile_seconds");
    msgpack_pack_double(pk, ks.compile_seconds);
}

void dev_pack_cuda(msgpack_packer *pk, int i) {
#ifdef PICOGRAD_HAVE_CUDA
    const cuda_device_info_t *di = cuda_device(i);
    char name[24];
    snprintf(name, sizeof(name), "cuda:%d", i);
    msgpack_pack_map(pk, 6);
    proto_pack_cstr(pk, "name");
    proto_pack_cstr(pk, name);
    proto_pack_cstr(pk, "kind");
    proto_pack_cstr(pk, "cuda");
    proto_pack_cstr(pk, "model");
    proto_pack_cstr(pk, di ? di->name : "?");
    proto_pack_cstr(pk, "memory");
    msgpack_pack_uint64(pk, di ? di->memory : 0);
    proto_pack_cstr(pk, "compute_capability"); /* [major, minor], as torch's tuple */
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint32(pk, di ? (uint32_t)di->cc_major : 0);
    msgpack_pack_uint32(pk, di ? (uint32_t)di->cc_minor : 0);
    proto_pack_cstr(pk, "ready"); /* the daemon can run on it (drivers, NVRTC and cuBLAS loaded) */
    if (cuda_available())
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
#else
    (void)pk;
    (void)i;
#endif
}
