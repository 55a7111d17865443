/*
 * cudarun.c - a session's CUDA streams, host <-> device tensors, and the GPU executor
 * (cudarun.h).
 *
 * A value of a run on a GPU is a ref_view_t whose tensor is on the host or on a device. Two
 * moves make a value usable where a step needs it:
 *
 *   to_host_view   a device view becomes the same view over a host copy of its whole buffer
 *                  (copied once per run and buffer: copy_of remembers it)
 *   dev_contig     any view becomes a contiguous, zero-offset device tensor of its own shape:
 *                  a device copy of a contiguous device view, a one-load gather kernel for a
 *                  strided one, an upload for a host one
 *
 * Kernel inputs and cuBLAS operands take dev_contig (cuBLAS also takes transposed views as
 * they are), interpreted steps to_host_view.
 */
#include "cudarun.h"

#include <string.h>

#ifdef PICOGRAD_HAVE_CUDA

#include "../kernels/cuda/blas.h"
#include "../kernels/cuda/copy.h"
#include "../kernels/cuda/module.h"
#include "../kernels/ref/ref_impl.h"
#include "log.h"
#include "mem.h"

#include <stdlib.h>

static bool host_kernels; /* PICOGRAD_CUDA_HOST_KERNELS: kernels and matmuls on the host */

void crun_init(void) {
    const char *e = getenv("PICOGRAD_CUDA_HOST_KERNELS");
    host_kernels = e && *e && strcmp(e, "0") != 0;
    if (cuda_device_count() > 0) {
        plan_set_cuda(true);
        if (host_kernels)
            log_warn("cuda: PICOGRAD_CUDA_HOST_KERNELS is set: kernels of CUDA runs run on the "
                     "host (a test mode for machines without a GPU)");
    }
}

/* =============================================================================================
 * A session's streams and cuBLAS handles
 * =========================================================================================== */

typedef struct {
    CUstream stream[CUDA_MAX_DEVICES];       /* created on the session's first use of a device */
    cublasHandle_t blas[CUDA_MAX_DEVICES];
} crun_sess_t;

void crun_sess_free(void *cuda) {
    crun_sess_t *cs = cuda;
    if (!cs)
        return;
    for (int d = 0; d < CUDA_MAX_DEVICES; d++) {
        cuda_blas_destroy(d, cs->blas[d]);
        cuda_stream_destroy(d, cs->stream[d]);
    }
    pg_free(cs);
}

static crun_sess_t *sess_cuda(sess_t *s, proto_err_t *err) {
    if (!s->cuda) {
        if (!(s->cuda = pg_calloc_array(1, sizeof(crun_sess_t)))) {
            proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a session's CUDA state");
            return NULL;
        }
        s->cuda_free = crun_sess_free;
    }
    return s->cuda;
}

static int sess_stream(sess_t *s, int dev, CUstream *out, proto_err_t *err) {
    crun_sess_t *cs = sess_cuda(s, err);
    if (!cs)
        return -err->code;
    if (!cs->stream[dev]) {
        int rc = cuda_stream_create(dev, &cs->stream[dev], err);
        if (rc)
            return rc;
    }
    *out = cs->stream[dev];
    return 0;
}

static int sess_blas(sess_t *s, int dev, cublasHandle_t *out, proto_err_t *err) {
    CUstream st = NULL;
    int rc = sess_stream(s, dev, &st, err);
    if (rc)
        return rc;
    crun_sess_t *cs = s->cuda;
    if (!cs->blas[dev] && (rc = cuda_blas_create(dev, st, &cs->blas[dev], err)) != 0)
        return rc;
    *out = cs->blas[dev];
    return 0;
}

/* =============================================================================================
 * Tensors between host and device
 * =========================================================================================== */

static int host_oom(proto_err_t *err, uint64_t n) {
    return proto_fail(err, PG_EOUT_OF_MEMORY,
                      "no memory for a %llu-byte host copy (%llu of %llu bytes in use)",
                      (unsigned long long)n, (unsigned long long)mem_in_use(),
                      (unsigned long long)mem_limit());
}

int crun_to_host(sess_t *s, tensor_t *t, tensor_t **out, proto_err_t *err) {
    *out = NULL;
    if (t->device == TENSOR_HOST) {
        *out = tensor_ref(t);
        return 0;
    }
    CUstream st = NULL;
    int rc = sess_stream(s, t->device, &st, err);
    if (rc)
        return rc;
    tensor_t *h = tensor_new(t->dtype, t->rank, t->shape, t->numel);
    if (!h)
        return host_oom(err, t->nbytes);
    if ((rc = cuda_copy_d2h(t->device, st, h->data, (CUdeviceptr)t->dptr, t->nbytes, err))) {
        tensor_unref(h);
        return rc;
    }
    *out = h;
    return 0;
}

int crun_put(sess_t *s, int dev, pg_dtype_t dtype, int rank, const int64_t *shape, uint64_t numel,
             const void *data, tensor_t **out, proto_err_t *err) {
    *out = NULL;
    CUstream st = NULL;
    int rc = sess_stream(s, dev, &st, err);
    if (rc)
        return rc;
    tensor_t *t = tensor_new_cuda(dev, dtype, rank, shape, numel, err);
    if (!t)
        return -err->code;
    if ((rc = cuda_copy_h2d(dev, st, (CUdeviceptr)t->dptr, data, t->nbytes, err))) {
        tensor_unref(t);
        return rc;
    }
    *out = t;
    return 0;
}

int crun_to_device(sess_t *s, int dev, tensor_t *t, tensor_t **out, proto_err_t *err) {
    *out = NULL;
    if (t->device == dev) {
        *out = tensor_ref(t);
        return 0;
    }
    tensor_t *h = NULL;
    int rc = crun_to_host(s, t, &h, err); /* another GPU's tensor goes through the host */
    if (rc)
        return rc;
    rc = crun_put(s, dev, h->dtype, h->rank, h->shape, h->numel, h->data, out, err);
    tensor_unref(h);
    return rc;
}

/* =============================================================================================
 * Moving a run's values
 * =========================================================================================== */

/* The host copy of device tensor t for this run, made on first use (borrowed). */
static int host_copy(crun_t *c, tensor_t *t, tensor_t **out, proto_err_t *err) {
    for (size_t i = 0; i < c->ncopies; i++)
        if (c->copy_of[2 * i] == t) {
            *out = c->copy_of[2 * i + 1];
            return 0;
        }
    if (c->ncopies == c->capcopies) {
        size_t cap = c->capcopies ? c->capcopies * 2 : 8;
        tensor_t **p = pg_realloc_array(c->copy_of, 2 * cap, sizeof(*p));
        if (!p)
            return proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a run's host copies");
        c->copy_of = p;
        c->capcopies = cap;
    }
    tensor_t *h = NULL;
    int rc = crun_to_host(c->sess, t, &h, err);
    if (rc)
        return rc;
    /* Holding t keeps it from being overwritten in place by a later kernel (fuse.c's in-place
     * outputs take a buffer only when nothing else holds it), so the copy stays true. */
    c->copy_of[2 * c->ncopies] = tensor_ref(t);
    c->copy_of[2 * c->ncopies + 1] = h;
    c->ncopies++;
    *out = h;
    return 0;
}

/* Makes *v a view over host memory (the same view over the host copy of a device buffer). */
static int to_host_view(crun_t *c, ref_view_t *v, proto_err_t *err) {
    if (!v->t || v->t->device == TENSOR_HOST)
        return 0;
    tensor_t *h = NULL;
    int rc = host_copy(c, v->t, &h, err);
    if (rc)
        return rc;
    tensor_unref(v->t);
    v->t = tensor_ref(h);
    return 0;
}

/* Sets *v to a contiguous zero-offset view of all of tensor t (takes the caller's reference). */
static void set_whole(ref_view_t *v, tensor_t *t) {
    ref_view_release(v);
    v->t = t;
    v->off = 0;
    v->rank = t->rank;
    v->dtype = t->dtype;
    memcpy(v->shape, t->shape, sizeof(v->shape));
    ref__contiguous_strides(t->rank, t->shape, v->strides);
    if (t->numel == 0) {
        tensor_unref(t);
        v->t = NULL;
    }
}

/* True when v is exactly its tensor: contiguous, offset 0, the tensor's own shape. */
static bool is_whole(const ref_view_t *v) {
    return v->t && v->off == 0 && ref__is_contiguous(v) && v->t->numel == ref__numel(v) &&
           v->t->dtype == v->dtype && v->t->rank == v->rank &&
           memcmp(v->t->shape, v->shape, (size_t)v->rank * sizeof(v->shape[0])) == 0;
}

/* Launches kernel fn of launch shape l over units [0, units) on stream s with bufs. */
static int launch(crun_t *c, CUfunction fn, kir_cuda_launch_t l, uint64_t units, CUstream s,
                  void *bufs, proto_err_t *err) {
    uint64_t blocks = (units * (uint64_t)l.unit_threads + (uint64_t)l.threads - 1) /
                      (uint64_t)l.threads;
    if (blocks > (1u << 20)) /* the kernels stride over the grid: more blocks add nothing */
        blocks = 1u << 20;
    long long start = 0, end = (long long)units;
    void *args[] = {bufs, &start, &end};
    CUresult r = cuda_driver()->cuLaunchKernel(fn, (unsigned)(blocks ? blocks : 1), 1, 1,
                                               (unsigned)l.threads, 1, 1, 0, s, args, NULL);
    return r == CUDA_SUCCESS ? 0 : cuda_fail(err, c->dev, r, "cuLaunchKernel");
}

/* A new device tensor holding strided device view v, gathered by a one-load kernel of the same
 * IR as the fused ones (the renderer turns the view's strides into its index expression):
 * im2col windows, transposes made contiguous and flips never leave the GPU. */
static int gpu_gather(crun_t *c, const ref_view_t *v, tensor_t **out, proto_err_t *err) {
    kir_kernel_t *k = pg_calloc_array(1, sizeof(*k)); /* zeroed: the source depends on fields */
    tensor_t *t = NULL;
    char *src = NULL, name[32];
    CUstream st = NULL;
    CUfunction fn;
    int rc;
    if (!k)
        return proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a copy kernel");
    k->rank = v->rank;
    memcpy(k->shape, v->shape, sizeof(k->shape));
    k->nin = 1;
    k->in[0].dtype = v->dtype;
    k->in[0].off = v->off;
    memcpy(k->in[0].strides, v->strides, sizeof(k->in[0].strides));
    kir_val_t load = {.kind = KIR_LOAD, .prim = PRIM_COUNT, .dtype = v->dtype, .a = -1, .b = -1,
                      .c = -1, .input = 0};
    kir_add_val(k, &load);
    k->reduce = PRIM_COUNT;
    k->out_dtype = v->dtype;
    k->nstages = 1;
    k->stage[0] = (kir_stage_t){PRIM_COUNT, 1, v->dtype};
    if (!(src = kir_render_cuda(k, name, sizeof(name)))) {
        rc = proto_fail(err, PG_EINTERNAL, "a copy kernel could not be rendered");
        goto out;
    }
    if ((rc = sess_stream(c->sess, c->dev, &st, err)) ||
        (rc = cuda_function(c->dev, name, src, &fn, err)))
        goto out;
    if (!(t = tensor_new_cuda(c->dev, v->dtype, v->rank, v->shape, ref__numel(v), err))) {
        rc = -err->code;
        goto out;
    }
    struct {
        CUdeviceptr p[1 + KIR_MAX_INPUTS];
    } bufs = {{(CUdeviceptr)t->dptr, (CUdeviceptr)v->t->dptr}};
    if ((rc = launch(c, fn, kir_cuda_launch(k), t->numel, st, &bufs, err)) != 0)
        goto out;
    *out = t;
    t = NULL;
out:
    tensor_unref(t);
    pg_free(src);
    pg_free(k);
    return rc;
}

/* Makes *v a whole tensor on the run's device (see the file comment). */
static int dev_contig(crun_t *c, ref_view_t *v, proto_err_t *err) {
    if (!v->t || (v->t->device == c->dev && is_whole(v)))
        return 0;
    tensor_t *t = NULL;
    int rc;
    if (v->t->device == c->dev && !ref__is_contiguous(v) && !host_kernels) {
        if ((rc = gpu_gather(c, v, &t, err)))
            return rc;
        set_whole(v, t);
        return 0;
    }
    if (v->t->device == c->dev && ref__is_contiguous(v)) {
        CUstream st = NULL;
        uint64_t size = proto_dtype_size(v->dtype);
        if ((rc = sess_stream(c->sess, c->dev, &st, err)))
            return rc;
        if (!(t = tensor_new_cuda(c->dev, v->dtype, v->rank, v->shape, ref__numel(v), err)))
            return -err->code;
        if ((rc = cuda_copy_d2d(c->dev, st, (CUdeviceptr)t->dptr,
                                (CUdeviceptr)(v->t->dptr + (uint64_t)v->off * size), t->nbytes,
                                err))) {
            tensor_unref(t);
            return rc;
        }
        set_whole(v, t);
        return 0;
    }
    tensor_t *h = NULL;
    if ((rc = to_host_view(c, v, err)) || (rc = ref_materialize(v, &h, err)))
        return rc;
    rc = crun_to_device(c->sess, c->dev, h, &t, err);
    tensor_unref(h);
    if (rc)
        return rc;
    set_whole(v, t);
    return 0;
}

/* =============================================================================================
 * Steps
 * =========================================================================================== */

int crun_begin(crun_t *c, sess_t *s, int dev, ref_view_t *vals, proto_err_t *err) {
    memset(c, 0, sizeof(*c));
    c->sess = s;
    c->dev = dev;
    c->vals = vals;
    CUstream st = NULL;
    int rc = sess_stream(s, dev, &st, err); /* fails early when the device cannot be entered */
    if (rc == 0)
        cuda_mem_defer_begin(); /* buffers dropped mid-run may still be read by queued kernels */
    return rc;
}

static int node_fail(const graph_t *g, int32_t i, proto_err_t *err, const char *what) {
    const gnode_t *n = &g->nodes[i];
    return proto_fail(err, PG_EINTERNAL, "node %d (%s): %s", (int)n->wire,
                      n->wire_op ? n->wire_op : "?", what);
}

/* A kernel step on the GPU. */
static int gpu_kernel(crun_t *c, const graph_t *g, const plan_t *p, int32_t s, proto_err_t *err) {
    const fuse_step_t *st = &p->fp.steps[s];
    const plan_kernel_t *pk = &p->kern[s];
    const kir_kernel_t *k = st->kernel;
    const gnode_t *n = &g->nodes[st->node];
    ref_view_t *vals = c->vals;
    if (!pk->cu_src)
        return node_fail(g, st->node, err, "its kernel could not be rendered for CUDA");
    struct {
        CUdeviceptr p[1 + KIR_MAX_INPUTS];
    } bufs; /* pg_cu_bufs_t of render_cuda.c: passed by value */
    memset(&bufs, 0, sizeof(bufs));
    int rc;
    for (int q = 0; q < k->nin; q++) {
        int32_t j = st->kin_node[q];
        if ((rc = dev_contig(c, &vals[j], err)))
            return rc;
        if (vals[j].t && (vals[j].t->numel != g->nodes[j].numel || vals[j].dtype != k->in[q].dtype))
            return node_fail(g, st->node, err, "a kernel input is not the buffer planned");
        bufs.p[1 + q] = vals[j].t ? (CUdeviceptr)vals[j].t->dptr : 0;
    }
    uint64_t nout = kir_out_numel(k);
    if (nout != n->numel || k->out_dtype != n->dtype)
        return node_fail(g, st->node, err, "the kernel's output is not the one planned");
    ref_view_t *out = &vals[st->node];
    memset(out, 0, sizeof(*out));
    out->dtype = n->dtype;
    out->rank = n->rank;
    memcpy(out->shape, n->shape, sizeof(out->shape));
    ref__contiguous_strides(n->rank, n->shape, out->strides);
    if (nout == 0)
        return 0;
    CUstream stream = NULL;
    if ((rc = sess_stream(c->sess, c->dev, &stream, err)))
        return rc;
    int64_t nb = kir_split_blocks(k);
    uint64_t units = nb > 0 ? nout * (uint64_t)nb : kir_units(k);
    CUdeviceptr part = 0;
    uint64_t part_bytes = units * sizeof(double);
    if (nb > 0) {
        if ((rc = cuda_mem_alloc(c->dev, part_bytes, &part, err)))
            return rc;
        bufs.p[0] = part;
    } else {
        tensor_t *src = k->inplace ? vals[st->kin_node[k->inplace - 1]].t : NULL;
        if (src && atomic_load(&src->refs) == 1)
            out->t = tensor_ref(src); /* the only holder: written in place (fuse.c) */
        else if (!(out->t = tensor_new_cuda(c->dev, n->dtype, n->rank, n->shape, n->numel, err)))
            return -err->code;
        if (src && out->t != src &&
            (rc = cuda_copy_d2d(c->dev, stream, (CUdeviceptr)out->t->dptr,
                                (CUdeviceptr)src->dptr, out->t->nbytes, err)))
            return rc;
        bufs.p[0] = (CUdeviceptr)out->t->dptr;
    }
    CUfunction fn;
    if ((rc = cuda_function(c->dev, pk->cu_name, pk->cu_src, &fn, err)) ||
        (rc = launch(c, fn, kir_cuda_launch(k), units, stream, &bufs, err)))
        goto out;
    if (nb > 0) {
        /* The partials are few (outputs x blocks): combined on the host, in block order. */
        double *h = pg_calloc_array(units, sizeof(double));
        tensor_t *o = tensor_new(n->dtype, n->rank, n->shape, n->numel);
        if (!h || !o)
            rc = host_oom(err, part_bytes);
        else if (!(rc = cuda_copy_d2h(c->dev, stream, h, part, part_bytes, err)))
            run_combine_split(k, h, nb, o);
        pg_free(h);
        if (rc)
            tensor_unref(o);
        else
            out->t = o;
    }
out:
    if (part)
        cuda_mem_free(c->dev, part, part_bytes);
    if (rc)
        ref_view_release(out);
    return rc;
}

/* One matmul operand as cuBLAS takes it, or false when its layout needs a copy first. */
static bool as_matrix(const ref_view_t *v, int r, int64_t rows, int64_t cols, cuda_mat_t *m,
                      int64_t *batch) {
    int64_t s0 = v->strides[r], s1 = v->strides[r + 1];
    if ((s1 == 1 || cols == 1) && s0 >= cols) {
        m->trans = false;
        m->ld = rows > 1 ? s0 : cols;
    } else if ((s0 == 1 || rows == 1) && s1 >= rows) {
        m->trans = true;
        m->ld = cols > 1 ? s1 : rows;
    } else {
        return false;
    }
    if (m->ld < 1)
        m->ld = 1;
    /* The batch axes must step by one stride: consecutive (C order) or all broadcast. */
    int64_t bs = 0, expect = -1;
    *batch = 1;
    for (int d = r - 1; d >= 0; d--) {
        if (v->shape[d] == 1)
            continue;
        if (expect < 0) {
            bs = v->strides[d];
        } else if (v->strides[d] != expect) {
            return false;
        }
        expect = v->strides[d] * v->shape[d];
        *batch *= v->shape[d];
    }
    if (bs < 0)
        return false;
    m->batch_stride = bs;
    m->ptr = (CUdeviceptr)(v->t->dptr + (uint64_t)v->off * proto_dtype_size(v->dtype));
    return true;
}

/* matmul on the GPU with cuBLAS. */
static int gpu_matmul(crun_t *c, const graph_t *g, int32_t i, proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    ref_view_t *vals = c->vals;
    ref_view_t *a = &vals[n->in[0]], *b = &vals[n->in[1]], *out = &vals[i];
    int r = n->rank - 2, rc;
    if (r < 0 || a->rank != n->rank || b->rank != n->rank)
        return node_fail(g, i, err, "matmul inputs of another rank than the output");
    int64_t m = n->shape[r], nn = n->shape[r + 1], k = a->shape[r + 1];
    memset(out, 0, sizeof(*out));
    out->dtype = n->dtype;
    out->rank = n->rank;
    memcpy(out->shape, n->shape, sizeof(out->shape));
    ref__contiguous_strides(n->rank, n->shape, out->strides);
    if (n->numel == 0)
        return 0;
    if (!(out->t = tensor_new_cuda(c->dev, n->dtype, n->rank, n->shape, n->numel, err)))
        return -err->code;
    CUstream stream = NULL;
    if ((rc = sess_stream(c->sess, c->dev, &stream, err)))
        goto fail;
    if (k == 0 || !a->t || !b->t) { /* an empty sum: zeros */
        CUresult cr = cuda_driver()->cuMemsetD8Async((CUdeviceptr)out->t->dptr, 0,
                                                     out->t->nbytes, stream);
        rc = cr == CUDA_SUCCESS ? 0 : cuda_fail(err, c->dev, cr, "cuMemsetD8Async");
        if (rc)
            goto fail;
        return 0;
    }
    cuda_mat_t ma, mb, mc = {(CUdeviceptr)out->t->dptr, nn, m * nn, false};
    int64_t ba, bb;
    if (a->t->device != c->dev || !as_matrix(a, r, m, k, &ma, &ba)) {
        if ((rc = dev_contig(c, a, err)))
            goto fail;
        as_matrix(a, r, m, k, &ma, &ba);
    }
    if (b->t->device != c->dev || !as_matrix(b, r, k, nn, &mb, &bb)) {
        if ((rc = dev_contig(c, b, err)))
            goto fail;
        as_matrix(b, r, k, nn, &mb, &bb);
    }
    /* The builder expanded both operands' batch axes to the output's: a broadcast operand
     * has batch stride 0 and the same batch count. */
    int64_t batch = (int64_t)(n->numel / (uint64_t)(m * nn));
    if (ba != batch || bb != batch) {
        rc = node_fail(g, i, err, "matmul batch axes not expanded to the output");
        goto fail;
    }
    cublasHandle_t h;
    if ((rc = sess_blas(c->sess, c->dev, &h, err)) ||
        (rc = cuda_gemm(c->dev, h, n->dtype, batch, m, nn, k, ma, mb, mc, err)))
        goto fail;
    return 0;
fail:
    ref_view_release(out);
    return rc;
}

static bool is_view_prim(prim_t op) {
    switch (op) {
    case PRIM_reshape: case PRIM_permute: case PRIM_expand: case PRIM_slice: case PRIM_flip:
    case PRIM_window:
        return true;
    default:
        return false;
    }
}

int crun_step(crun_t *c, const graph_t *g, const plan_t *p, int32_t s, tensor_t *bound,
              crun_host_kernel_fn host_kernel, proto_err_t *err) {
    const fuse_step_t *st = &p->fp.steps[s];
    ref_view_t *vals = c->vals;
    int rc;
    if (st->kind == FUSE_STEP_KERNEL) {
        if (!host_kernels)
            return gpu_kernel(c, g, p, s, err);
        if (!p->kern[s].fn)
            return node_fail(g, st->node, err, "PICOGRAD_CUDA_HOST_KERNELS needs the C JIT");
        for (int q = 0; q < st->kernel->nin; q++)
            if ((rc = to_host_view(c, &vals[st->kin_node[q]], err)))
                return rc;
        return host_kernel(g, st, p->kern[s].fn, vals, err);
    }
    const gnode_t *n = &g->nodes[st->node];
    if (n->op == PRIM_input && bound) /* a view of the tensor, wherever it is */
        return ref_eval_input(g, st->node, bound, vals, err);
    if (n->op == PRIM_input || n->op == PRIM_const)
        return ref_eval(g, st->node, vals, err);
    if (is_view_prim(n->op)) {
        /* Only a reshape of a non-contiguous view copies: a gather on the GPU (on the host
         * under PICOGRAD_CUDA_HOST_KERNELS), then the reshape is a view of the copy. */
        ref_view_t *x = &vals[n->in[0]];
        if (n->op == PRIM_reshape && x->t && !ref__is_contiguous(x) &&
            (rc = x->t->device == c->dev ? dev_contig(c, x, err) : to_host_view(c, x, err)))
            return rc;
        return ref_eval(g, st->node, vals, err);
    }
    if (n->op == PRIM_matmul && ref__is_float(n->dtype) && !host_kernels)
        return gpu_matmul(c, g, st->node, err);
    for (int k = 0; k < n->nin; k++)
        if ((rc = to_host_view(c, &vals[n->in[k]], err)))
            return rc;
    return ref_eval(g, st->node, vals, err);
}

int crun_output(crun_t *c, int32_t j, bool on_device, tensor_t **out, proto_err_t *err) {
    ref_view_t *v = &c->vals[j];
    *out = NULL;
    int rc;
    if (!on_device) {
        if ((rc = to_host_view(c, v, err)))
            return rc;
        return ref_materialize(v, out, err);
    }
    if (!v->t) { /* empty: a tensor with the shape and no storage */
        *out = tensor_new_cuda(c->dev, v->dtype, v->rank, v->shape, 0, err);
        return *out ? 0 : -err->code;
    }
    if ((rc = dev_contig(c, v, err)))
        return rc;
    *out = tensor_ref(v->t);
    return 0;
}

int crun_end(crun_t *c, proto_err_t *err) {
    CUstream st = NULL;
    int rc = sess_stream(c->sess, c->dev, &st, err);
    if (!rc)
        rc = cuda_stream_sync(c->dev, st, err);
    cuda_mem_defer_end(); /* nothing of this run is queued any more */
    for (size_t i = 0; i < 2 * c->ncopies; i++)
        tensor_unref(c->copy_of[i]);
    pg_free(c->copy_of);
    c->copy_of = NULL;
    c->ncopies = c->capcopies = 0;
    return rc;
}

#else /* !PICOGRAD_HAVE_CUDA: device.c refuses every CUDA device before any of this is called */

static int crun_none(proto_err_t *err) {
    return proto_fail(err, PG_ENO_DEVICE, "this picogradd was built without CUDA");
}

void crun_init(void) {}
void crun_sess_free(void *cuda) { (void)cuda; }
int crun_to_host(sess_t *s, tensor_t *t, tensor_t **out, proto_err_t *err) {
    (void)s;
    *out = tensor_ref(t); /* every tensor is on the host */
    (void)err;
    return 0;
}
int crun_to_device(sess_t *s, int dev, tensor_t *t, tensor_t **out, proto_err_t *err) {
    (void)s, (void)dev, (void)t, (void)out;
    return crun_none(err);
}
int crun_put(sess_t *s, int dev, pg_dtype_t dtype, int rank, const int64_t *shape, uint64_t numel,
             const void *data, tensor_t **out, proto_err_t *err) {
    (void)s, (void)dev, (void)dtype, (void)rank, (void)shape, (void)numel, (void)data, (void)out;
    return crun_none(err);
}
int crun_begin(crun_t *c, sess_t *s, int dev, ref_view_t *vals, proto_err_t *err) {
    (void)s, (void)dev, (void)vals;
    memset(c, 0, sizeof(*c));
    return crun_none(err);
}
int crun_step(crun_t *c, const graph_t *g, const plan_t *p, int32_t s, tensor_t *bound,
              crun_host_kernel_fn host_kernel, proto_err_t *err) {
    (void)c, (void)g, (void)p, (void)s, (void)bound, (void)host_kernel;
    return crun_none(err);
}
int crun_output(crun_t *c, int32_t j, bool on_device, tensor_t **out, proto_err_t *err) {
    (void)c, (void)j, (void)on_device, (void)out;
    return crun_none(err);
}
int crun_end(crun_t *c, proto_err_t *err) {
    (void)c, (void)err;
    return 0;
}

#endif
