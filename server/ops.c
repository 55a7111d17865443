/*
 * ops.c - the request handlers of protocol version 1 and the table that names them.
 *
 * A handler reads its fields through the proto_get_* getters (which write precise bad_request
 * messages), does its work, and packs a complete success reply: {"id", "ok": true, ...}. On
 * failure it returns -PG_E* with err filled and packs nothing; conn.c packs the error reply.
 * Adding an op: a row in PG_REQ_OP_MAP (daemon.h), a handler here, a section in PROTOCOL.md.
 */
#include "../kernels/cpu/jit.h"
#include "daemon.h"
#include "cudarun.h"
#include "device.h"
#include "mem.h"
#include "passes/lower.h"
#include "plan.h"
#include "prepcache.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

typedef int (*ops_fn_t)(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err);

#define XX(name, where) int ops_##name(daemon_t *, req_t *, msgpack_packer *, proto_err_t *);
PG_REQ_OP_MAP(XX)
#undef XX

static const struct {
    const char *name;
    ops_where_t where;
    ops_fn_t fn;
} ops_table[] = {
#define XX(name, where) {#name, where, ops_##name},
    PG_REQ_OP_MAP(XX)
#undef XX
};
static_assert(sizeof(ops_table) / sizeof(ops_table[0]) == OPS_COUNT, "op table");

int ops_lookup(const char *name, size_t len) {
    for (int i = 0; i < OPS_COUNT; i++)
        if (strlen(ops_table[i].name) == len && memcmp(ops_table[i].name, name, len) == 0)
            return i;
    return -1;
}

const char *ops_name(int op) { return op >= 0 && op < OPS_COUNT ? ops_table[op].name : "?"; }

ops_where_t ops_where(int op) { return ops_table[op].where; }

bool ops_jit_on(const daemon_t *d) { return d->cfg.jit && jit_available(); }

int ops_execute(daemon_t *d, req_t *r, msgpack_packer *pk) {
    return ops_table[r->op].fn(d, r, pk, &r->err);
}

/* Packs a key string; the value follows. */
static int key(msgpack_packer *pk, const char *k) { return proto_pack_cstr(pk, k); }

/* Formats a shape as "[2, 3]" for messages. */
static const char *shape_str(char *buf, size_t cap, const int64_t *dims, int rank) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < rank && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, i ? ", %lld" : "%lld", (long long)dims[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
    return buf;
}

/* =============================================================================================
 * hello, ping, stats, sleep
 * =========================================================================================== */

int ops_hello(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    uint64_t version;
    int rc = proto_get_uint(r->args, "version", &version, err);
    if (rc)
        return rc;
    if (version != PROTO_VERSION)
        return proto_fail(err, PG_EVERSION_MISMATCH,
                          "protocol version %llu is not supported; this daemon speaks %d",
                          (unsigned long long)version, PROTO_VERSION);
    proto_pack_reply_head(pk, 2 + 9, true, r->id, true);
    key(pk, "server");
    proto_pack_cstr(pk, "picogradd");
    key(pk, "version");
    proto_pack_cstr(pk, PG_SERVER_VERSION);
    key(pk, "protocol");
    msgpack_pack_uint32(pk, PROTO_VERSION);
    key(pk, "session");
    msgpack_pack_uint64(pk, r->sess->id);

    key(pk, "devices"); /* the CPU, then each CUDA device the driver lists (device.c) */
    msgpack_pack_array(pk, 1 + (uint32_t)dev_cuda_count());
    msgpack_pack_map(pk, 5);
    key(pk, "name");
    proto_pack_cstr(pk, "cpu");
    key(pk, "kind");
    proto_pack_cstr(pk, "cpu");
    key(pk, "threads");
    msgpack_pack_uint32(pk, (uint32_t)d->cfg.threads);
    key(pk, "memory");
    msgpack_pack_uint64(pk, d->cfg.phys_memory);
    key(pk, "jit"); /* fused kernels are compiled (else everything is interpreted) */
    if (ops_jit_on(d))
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    for (int i = 0; i < dev_cuda_count(); i++)
        dev_pack_cuda(pk, i);

    key(pk, "ops");
    msgpack_pack_array(pk, OPS_COUNT);
    for (int i = 0; i < OPS_COUNT; i++)
        proto_pack_cstr(pk, ops_table[i].name);
    key(pk, "node_ops"); /* the ops a `run` graph's nodes may use */
    msgpack_pack_array(pk, (uint32_t)lower_op_count());
    for (int i = 0; i < lower_op_count(); i++)
        proto_pack_cstr(pk, lower_op_name(i));
    key(pk, "dtypes");
    msgpack_pack_array(pk, PG_DTYPE_COUNT);
    for (int i = 0; i < PG_DTYPE_COUNT; i++)
        proto_pack_cstr(pk, proto_dtype_name(i));

    key(pk, "limits");
    msgpack_pack_map(pk, 9);
    key(pk, "max_frame");
    msgpack_pack_uint64(pk, d->cfg.max_frame);
    key(pk, "max_memory");
    msgpack_pack_uint64(pk, mem_limit());
    key(pk, "max_rank");
    msgpack_pack_uint32(pk, PROTO_MAX_RANK);
    key(pk, "max_inflight");
    msgpack_pack_uint64(pk, d->cfg.max_inflight);
    key(pk, "max_objects");
    msgpack_pack_uint32(pk, PROTO_MAX_OBJECTS);
    key(pk, "max_nodes");
    msgpack_pack_uint32(pk, d->cfg.max_nodes);
    key(pk, "max_session_memory");
    msgpack_pack_uint64(pk, d->cfg.max_session_memory);
    key(pk, "request_timeout"); /* seconds; 0: none */
    msgpack_pack_double(pk, d->cfg.request_timeout);
    key(pk, "idle_timeout");
    msgpack_pack_double(pk, d->cfg.idle_timeout);
    return 0;
}

int ops_ping(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    (void)d;
    (void)err;
    return proto_pack_reply_head(pk, 2, true, r->id, true);
}

int ops_stats(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    (void)err;
    proto_pack_reply_head(pk, 2 + 16, true, r->id, true);
    key(pk, "sessions");
    msgpack_pack_uint64(pk, d->nconns);
    key(pk, "tensors");
    msgpack_pack_uint64(pk, tensor_live());
    key(pk, "bytes_in_use");
    msgpack_pack_uint64(pk, mem_in_use());
    key(pk, "bytes_peak");
    msgpack_pack_uint64(pk, mem_peak());
    key(pk, "max_memory");
    msgpack_pack_uint64(pk, mem_limit());
    stats_pack_counters(pk); /* requests, ops, errors */
    /* The JIT's kernel cache and the plan cache (zero when the JIT is off). */
    jit_stats_t js = {0};
    if (ops_jit_on(d))
        js = jit_stats();
    uint64_t hits, misses;
    plan_stats(&hits, &misses);
    key(pk, "kernels");
    msgpack_pack_map(pk, 3);
    key(pk, "compiled");
    msgpack_pack_uint64(pk, js.compiled);
    key(pk, "memory_hits");
    msgpack_pack_uint64(pk, js.memory_hits);
    key(pk, "disk_hits");
    msgpack_pack_uint64(pk, js.disk_hits);
    key(pk, "plans");
    msgpack_pack_map(pk, 2);
    key(pk, "hits");
    msgpack_pack_uint64(pk, hits);
    key(pk, "misses");
    msgpack_pack_uint64(pk, misses);
    prepcache_stats(&hits, &misses);
    key(pk, "prepared");
    msgpack_pack_map(pk, 2);
    key(pk, "hits");
    msgpack_pack_uint64(pk, hits);
    key(pk, "misses");
    msgpack_pack_uint64(pk, misses);
    key(pk, "compile_seconds");
    msgpack_pack_double(pk, js.compile_seconds);
    stats_pack_runs(pk); /* time of `run` requests on their workers */
    key(pk, "uptime_seconds");
    msgpack_pack_double(pk, (double)(uv_hrtime() - d->start_ns) / 1e9);
    key(pk, "session");
    msgpack_pack_map(pk, 4);
    key(pk, "id");
    msgpack_pack_uint64(pk, r->sess->id);
    key(pk, "tensors");
    msgpack_pack_uint64(pk, r->sess->tensors.count);
    key(pk, "bytes");
    msgpack_pack_uint64(pk, r->sess->bytes);
    key(pk, "requests");
    msgpack_pack_uint64(pk, r->sess->requests);
    dev_pack_stats(pk); /* GPU memory and CUDA kernels */
    return 0;
}

/* Runs on a worker. Sleeps in short slices so that a time limit or a forced shutdown can cancel
 * it. */
int ops_sleep(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    (void)d;
    double seconds;
    int rc = proto_get_number(r->args, "seconds", &seconds, err);
    if (rc)
        return rc;
    if (!(seconds >= 0 && seconds <= LIM_MAX_SLEEP_SECONDS))
        return proto_fail(err, PG_EBAD_REQUEST, "field 'seconds' must be 0 to %g",
                          LIM_MAX_SLEEP_SECONDS);
    uint64_t end = uv_hrtime() + (uint64_t)(seconds * 1e9);
    for (;;) {
        if ((rc = req_check_cancel(r, err)) != 0)
            return rc;
        uint64_t now = uv_hrtime();
        if (now >= end)
            break;
        uint64_t left = end - now, slice = left < 5000000 ? left : 5000000;
        struct timespec ts = {0, (long)slice};
        nanosleep(&ts, NULL);
    }
    return proto_pack_reply_head(pk, 2, true, r->id, true);
}

/* =============================================================================================
 * put, get, free
 * =========================================================================================== */

/* A put's tensor adopts the frame buffer when the payload sits aligned in it and the frame is not
 * much bigger than the payload (a tiny tensor must not pin a huge frame). */
#define OPS_ADOPT_SLACK 4096

int ops_put(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    pg_dtype_t dtype;
    int64_t dims[PROTO_MAX_RANK];
    int rank;
    uint64_t numel, nbytes;
    const uint8_t *data;
    size_t len;
    dev_id_t dev;
    int rc;
    if ((rc = dev_from_request(r->args, &dev, err)) ||
        (rc = proto_get_dtype(r->args, "dtype", &dtype, err)) ||
        (rc = proto_get_shape(r->args, "shape", proto_dtype_size(dtype), dims, &rank, &numel,
                              &nbytes, err)) ||
        (rc = proto_get_bin(r->args, "data", &data, &len, err)))
        return rc;
    if (len != nbytes) {
        char sh[200];
        return proto_fail(err, PG_EBAD_REQUEST,
                          "field 'data' has %zu bytes but shape %s of %s needs %llu", len,
                          shape_str(sh, sizeof(sh), dims, rank), proto_dtype_name(dtype),
                          (unsigned long long)nbytes);
    }
    if (dtype == PG_BOOL) {
        for (size_t i = 0; i < len; i++)
            if (data[i] > 1)
                return proto_fail(err, PG_EBAD_REQUEST,
                                  "field 'data': bool element %zu is %u; bools are 0 or 1", i,
                                  data[i]);
    }

    tensor_t *t = NULL;
    if (dev.kind == DEV_CUDA) {
        /* Copied to the GPU here, on the loop thread: a put waits for its copy (~10 GB/s). */
        if ((rc = crun_put(r->sess, dev.index < 0 ? 0 : dev.index, dtype, rank, dims, numel, data,
                           &t, err)) != 0)
            return rc;
        goto add;
    }
    bool aligned = ((uintptr_t)data & 63) == 0;
    bool inside = data >= r->body && data + len <= r->body + r->len;
    bool adopt = nbytes > 0 && aligned && inside && r->block_bytes <= nbytes + OPS_ADOPT_SLACK;
    /* The session is charged what the tensor will hold: the frame buffer when it adopts it. */
    if ((rc = sess_check_quota(r->sess, d->cfg.max_session_memory,
                               adopt ? r->block_bytes : nbytes, 0, "a put", err)) != 0)
        return rc;
    if (adopt) {
        t = tensor_adopt(dtype, rank, dims, numel, r->block, r->block_bytes, (uint8_t *)data);
        r->block = NULL; /* the tensor owns the frame buffer now, also when adopt failed */
    } else {
        t = tensor_new(dtype, rank, dims, numel);
        if (t && nbytes)
            memcpy(t->data, data, nbytes);
    }
    if (!t)
        return proto_fail(err, PG_EOUT_OF_MEMORY,
                          "no memory for a tensor of %llu bytes (%llu of %llu bytes in use)",
                          (unsigned long long)nbytes, (unsigned long long)mem_in_use(),
                          (unsigned long long)mem_limit());
add:;
    uint64_t handle;
    if ((rc = sess_add(r->sess, t, &handle)) != 0)
        return proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a new handle");
    proto_pack_reply_head(pk, 3, true, r->id, true);
    key(pk, "handle");
    msgpack_pack_uint64(pk, handle);
    return 0;
}

/* Looks up the tensor named by field "handle" (borrowed), or fails with unknown_handle. */
static tensor_t *ops_handle(req_t *r, uint64_t *handle, proto_err_t *err) {
    if (proto_get_uint(r->args, "handle", handle, err) != 0)
        return NULL;
    tensor_t *t = sess_get(r->sess, *handle);
    if (!t)
        proto_fail(err, PG_EUNKNOWN_HANDLE, "handle %llu is not a tensor of this session",
                   (unsigned long long)*handle);
    return t;
}

int ops_get(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    (void)d;
    uint64_t handle;
    tensor_t *t = ops_handle(r, &handle, err);
    if (!t)
        return -err->code;
    if (t->nbytes > UINT32_MAX - 4096)
        return proto_fail(err, PG_ETOO_LARGE,
                          "tensor %llu has %llu bytes; one frame carries under 4 GiB",
                          (unsigned long long)handle, (unsigned long long)t->nbytes);
    tensor_t *host = NULL; /* a GPU tensor's bytes, copied to the host (on the loop thread) */
    if (t->device != TENSOR_HOST) {
        int rc = crun_to_host(r->sess, t, &host, err);
        if (rc)
            return rc;
        t = host;
    }
    proto_pack_reply_head(pk, 6, true, r->id, true);
    key(pk, "dtype");
    proto_pack_cstr(pk, proto_dtype_name(t->dtype));
    key(pk, "shape");
    msgpack_pack_array(pk, (size_t)t->rank);
    for (int i = 0; i < t->rank; i++)
        msgpack_pack_uint64(pk, (uint64_t)t->shape[i]);

    /* Pad so the tensor bytes start 64-byte aligned from the frame start (prefix included):
     * "pad" key (4) + bin8 header (2) + k bytes + "data" key (5) + the data's bin header. */
    uint64_t n = t->nbytes;
    size_t binhdr = n < 256 ? 2 : n < 65536 ? 3 : 5;
    size_t before = r->out.size + 4 + 2 + 5 + binhdr;
    size_t k = (64 - before % 64) % 64;
    static const char zeros[64];
    key(pk, "pad");
    msgpack_pack_bin(pk, k);
    msgpack_pack_bin_body(pk, zeros, k);
    key(pk, "data");
    msgpack_pack_bin(pk, (size_t)n);
    if (n > 0) {
        r->tail = tensor_ref(t);
        r->tail_data = t->data;
        r->tail_len = n;
    }
    tensor_unref(host);
    return 0;
}

int ops_free(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    (void)d;
    uint64_t handle;
    if (!ops_handle(r, &handle, err))
        return -err->code;
    sess_remove(r->sess, handle);
    return proto_pack_reply_head(pk, 2, true, r->id, true);
}
