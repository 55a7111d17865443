/*
 * run.c - the `run` op: decode and lower a graph, check it whole, evaluate it, commit the results.
 *
 * The order is what makes a failed run harmless: lowering validates every node and infers every
 * shape before any tensor is allocated; evaluation allocates only intermediates; and the session
 * changes only at the very end, when every output exists. An error at any step frees what the run
 * made and leaves the session as it was.
 *
 * Evaluation follows a schedule of steps (passes/fuse.c), skipping nodes no output needs and
 * releasing each intermediate after its last use, so the memory a run holds at once is its live
 * set, not its whole graph. With the JIT (--jit on and a working compiler) the schedule is a
 * cached plan (plan.c): runs of elementwise nodes, their views and a trailing reduction are one
 * compiled kernel each, everything else runs in the reference interpreter (kernels/ref). Without
 * it every needed node is one interpreter step. Both give the same results; the interpreter is
 * the oracle the compiled path is tested against (tests/integration/test_compiler.py).
 *
 * `assign` nodes (passes/lower.c) replace session tensors. They are handled beside the graph: an
 * assign emits no primitive, and its value joins the list of outputs (after the requested ones,
 * out_id[no..nall)), so every pass and the planner keep it alive like any output, and the plan
 * cache key (which hashes the output list) sees it. At commit, after every output exists and its
 * kept handles are made, each assigned handle is pointed at its new tensor (sess_replace): the
 * old tensor is never written, so inputs read earlier in the run, kept outputs and `get` replies
 * still being written keep the value they had.
 *
 * A request seen before but for its handles (a training step with a new batch) is not lowered
 * again: the prepared-run cache (prepcache.c) keeps the graph after every pass with its plan,
 * and the run binds its session's tensors to the graph's input nodes (ref_eval_input) instead of
 * reading them from the nodes, so that the cached graph holds no session data and several
 * workers can run it at once. A request it does not answer is prepared here and offered to it.
 *
 * Every run's time on its worker, split into prepare (read the request, lower, passes; or key it
 * and find it prepared), plan and execute, is added to the "runs" counters of `stats`
 * (stats.c), failed runs included.
 *
 * Limits. A graph over --max-nodes is refused before lowering. The kept outputs and assigns of a
 * run count against the session quota (--max-session-memory): checked from the planned sizes
 * before executing, and from the real tensors before committing; temporaries and inline outputs
 * count against --max-memory only. A run stops when its request is cancelled (its time limit
 * passed, or its connection went away): the step loop checks req_check_cancel after every step,
 * and the loops inside a step check the same flag between chunks (ref_set_cancel); a cancelled
 * run commits nothing and replies `timeout` (or is dropped with its connection).
 *
 * `explain` (also here: it shares the request decoding) plans a graph without running it.
 */
#include "../kernels/cpu/jit.h"
#include "../kernels/ref/ref.h"
#include "../kernels/ref/ref_impl.h"
#include "daemon.h"
#include "cudarun.h"
#include "device.h"
#include "graph/graph.h"
#include "log.h"
#include "mem.h"
#include "passes/fuse.h"
#include "passes/cse.h"
#include "passes/fold.h"
#include "passes/lower.h"
#include "passes/views.h"
#include "plan.h"
#include "prepcache.h"

#include <string.h>

#define RUN_MAX_OUTPUTS 1024

static_assert(LIM_MAX_NODES_CEILING == GRAPH_MAX_NODES, "--max-nodes is capped by the graph IR");

/* Rewrites an interpreter error so that it names the request node, as lowering errors do. */
static void name_node(const graph_t *g, int32_t i, proto_err_t *err) {
    char msg[PROTO_MSG_MAX];
    const char *body = err->message;
    if (strncmp(body, "node ", 5) == 0 && strstr(body, "): "))
        body = strstr(body, "): ") + 3;
    snprintf(msg, sizeof(msg), "node %d (%.32s): %.200s", (int)g->nodes[i].wire,
             g->nodes[i].wire_op ? g->nodes[i].wire_op : "?", body);
    memcpy(err->message, msg, sizeof(msg));
}

/* Packs one output: a kept handle or inline data. */
static void pack_output(msgpack_packer *pk, const tensor_t *t, bool keep, uint64_t handle) {
    msgpack_pack_map(pk, 3);
    proto_pack_cstr(pk, keep ? "handle" : "data");
    if (keep) {
        msgpack_pack_uint64(pk, handle);
    } else {
        msgpack_pack_bin(pk, (size_t)t->nbytes);
        msgpack_pack_bin_body(pk, t->data, (size_t)t->nbytes);
    }
    proto_pack_cstr(pk, "dtype");
    proto_pack_cstr(pk, proto_dtype_name(t->dtype));
    proto_pack_cstr(pk, "shape");
    msgpack_pack_array(pk, (size_t)t->rank);
    for (int d = 0; d < t->rank; d++)
        msgpack_pack_uint64(pk, (uint64_t)t->shape[d]);
}

/* A decoded and lowered request: the graph and its outputs (run and explain share it). */
typedef struct {
    graph_t g;
    uint32_t no;                /* outputs the request asked for (the reply's) */
    uint32_t nall;              /* no + one per assign: what the passes and the plan keep */
    int32_t *out_id;            /* primitive node of each of the nall (owned); the assigns'
                                 * values follow the outputs, in as.a's order */
    bool *keep;                 /* keep output k (< no) as a handle (owned) */
    int32_t *map;               /* request node -> primitive node (owned) */
    lower_assigns_t as;         /* the request's assign nodes (their .node is not renumbered:
                                 * read out_id[no + j]) */
} prep_t;

static void prep_free(prep_t *p) {
    lower_assigns_free(&p->as);
    pg_free(p->map);
    pg_free(p->keep);
    pg_free(p->out_id);
    graph_free(&p->g);
}

/* Checks the fields of a run or explain request, then lowers its graph into p (free with
 * prep_free, also on failure). max_nodes is --max-nodes. Returns 0 or a negative PG_E* with err
 * filled. */
static int prepare(req_t *r, uint32_t max_nodes, prep_t *p, proto_err_t *err) {
    memset(p, 0, sizeof(*p));
    graph_init(&p->g, mem_limit());
    const msgpack_object *nodes = proto_find(r->args, "nodes");
    const msgpack_object *outs = proto_find(r->args, "outputs");
    if (!nodes || nodes->type != MSGPACK_OBJECT_ARRAY)
        return proto_fail(err, PG_EBAD_REQUEST, "field 'nodes' must be a list of node maps");
    if (!outs || outs->type != MSGPACK_OBJECT_ARRAY)
        return proto_fail(err, PG_EBAD_REQUEST, "field 'outputs' must be a list of output maps");
    uint32_t nw = nodes->via.array.size, no = outs->via.array.size;
    if (nw > max_nodes)
        return proto_fail(err, PG_ETOO_LARGE,
                          "field 'nodes': the graph has %u nodes; the limit is %u (--max-nodes)",
                          nw, max_nodes);
    if (no > RUN_MAX_OUTPUTS)
        return proto_fail(err, PG_ETOO_LARGE, "%u outputs; the limit is %d", no, RUN_MAX_OUTPUTS);
    p->no = no;
    p->map = pg_calloc_array(nw ? nw : 1, sizeof(int32_t));
    p->keep = pg_calloc_array(no ? no : 1, sizeof(bool));
    if (!p->map || !p->keep)
        return proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a graph of %u nodes", nw);
    int rc = lower_graph(&p->g, r->sess, nodes, p->map, &p->as, err);
    if (rc != 0)
        return rc;
    /* A run must do something: return or keep a value, or assign one. */
    if (no == 0 && p->as.n == 0)
        return proto_fail(err, PG_EBAD_REQUEST, "field 'outputs' must be a non-empty list "
                          "(it may be empty only when the graph has an assign node)");
    /* At most one assign per request node, so nall <= 1024 + 65536 cannot overflow. */
    p->nall = no + p->as.n;
    p->out_id = pg_calloc_array(p->nall, sizeof(int32_t));
    if (!p->out_id)
        return proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for %u outputs", p->nall);
    for (uint32_t j = 0; j < p->as.n; j++)
        p->out_id[no + j] = p->as.a[j].node;
    for (uint32_t k = 0; k < no; k++) {
        const msgpack_object *o = &outs->via.array.ptr[k];
        uint64_t node;
        if (o->type != MSGPACK_OBJECT_MAP || proto_get_uint(o, "node", &node, err) != 0 ||
            node >= nw)
            return proto_fail(err, PG_EBAD_REQUEST,
                              "output %u must be {\"node\": index below %u, \"keep\": bool}", k,
                              nw);
        const msgpack_object *kp = proto_find(o, "keep");
        if (kp && kp->type != MSGPACK_OBJECT_BOOLEAN && kp->type != MSGPACK_OBJECT_NIL)
            return proto_fail(err, PG_EBAD_REQUEST, "output %u: 'keep' must be a bool", k);
        p->out_id[k] = p->map[node];
        p->keep[k] = kp && kp->type == MSGPACK_OBJECT_BOOLEAN && kp->via.boolean;
    }
    if (cse_graph(&p->g, p->out_id, p->nall) != 0)
        return proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to deduplicate the graph");
    if ((rc = views_graph(&p->g, p->out_id, p->nall, p->map, nw, err)) != 0)
        return rc;
    return fold_graph(&p->g, p->out_id, p->nall, p->map, nw, err);
}

/* =============================================================================================
 * Kernel steps
 * =========================================================================================== */

typedef struct {
    kir_fn_t fn;
    void *const *bufs;
} kctx_t;

static void kernel_chunk(void *arg, uint64_t begin, uint64_t end) {
    const kctx_t *c = arg;
    c->fn(c->bufs, (int64_t)begin, (int64_t)end);
}

/* Runs a reduction split into blocks (kir.h kir_split_blocks): one unit per (output, block) on
 * the threads, then each output folds its blocks' values in order, as the interpreter does
 * (kernels/ref/reduce.c), and rounds once to the output's dtype. */
void run_combine_split(const kir_kernel_t *k, const double *part, int64_t nb, tensor_t *out) {
    uint64_t nout = kir_out_numel(k);
    bool extreme = k->reduce == PRIM_max || k->reduce == PRIM_min;
    for (uint64_t o = 0; o < nout; o++) {
        const double *p = &part[o * (uint64_t)nb];
        double tot = p[0];
        bool nan = p[0] != p[0];
        for (int64_t b = 1; b < nb; b++) {
            double x = p[b];
            nan |= x != x;
            if (k->reduce == PRIM_sum)
                tot = tot + x;
            else if (k->reduce == PRIM_prod)
                tot = tot * x;
            else if (k->reduce == PRIM_max)
                tot = x > tot ? x : tot;
            else
                tot = x < tot ? x : tot;
        }
        ref__st_f(out->data, out->dtype, (int64_t)o, extreme && nan ? (double)NAN : tot);
    }
}

static int run_split(const kir_kernel_t *k, kir_fn_t fn, void **bufs, tensor_t *out, int64_t nb,
                     proto_err_t *err) {
    uint64_t nout = kir_out_numel(k), units = nout * (uint64_t)nb, iter = 1;
    for (int d = 0; d < k->rank; d++)
        iter *= (uint64_t)k->shape[d];
    double *part = pg_calloc_array(units, sizeof(double));
    if (!part)
        return proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for %llu partial results",
                          (unsigned long long)units);
    bufs[0] = part;
    kctx_t c = {fn, bufs};
    ref__parallel_for(units, iter / units ? iter / units : 1, kernel_chunk, &c);
    run_combine_split(k, part, nb, out);
    pg_free(part);
    return 0;
}

/* Runs kernel step st: hands its inputs over as contiguous buffers (materializing views, and
 * keeping the contiguous copy in vals so that later readers need not copy again), allocates the
 * result and runs the compiled loop across the interpreter's threads. */
static int run_kernel(const graph_t *g, const fuse_step_t *st, kir_fn_t fn, ref_view_t *vals,
                      proto_err_t *err) {
    const kir_kernel_t *k = st->kernel;
    const gnode_t *n = &g->nodes[st->node];
    void *bufs[1 + KIR_MAX_INPUTS] = {0};
    for (int q = 0; q < k->nin; q++) {
        int32_t j = st->kin_node[q];
        const gnode_t *jn = &g->nodes[j];
        tensor_t *t = NULL;
        int rc = ref_materialize(&vals[j], &t, err);
        if (rc != 0)
            return rc;
        /* The plan's indices were checked against this node's element count: make sure the
         * buffer really is that big, whatever the plan cache handed us. */
        if (t->numel != jn->numel || t->dtype != k->in[q].dtype || jn->dtype != t->dtype) {
            tensor_unref(t);
            return proto_fail(err, PG_EINTERNAL, "kernel %d: input %d is not the buffer planned",
                              (int)st->node, q);
        }
        ref_view_release(&vals[j]);
        vals[j].t = t->numel ? t : NULL;
        vals[j].off = 0;
        vals[j].rank = t->rank;
        vals[j].dtype = t->dtype;
        memcpy(vals[j].shape, t->shape, sizeof(vals[j].shape));
        int64_t s = 1;
        for (int d = t->rank - 1; d >= 0; d--) {
            vals[j].strides[d] = s;
            s *= t->shape[d] > 0 ? t->shape[d] : 1;
        }
        if (!t->numel)
            tensor_unref(t);
        bufs[1 + q] = vals[j].t ? vals[j].t->data : NULL;
    }
    uint64_t numel = kir_out_numel(k);
    if (numel != n->numel || k->out_dtype != n->dtype)
        return proto_fail(err, PG_EINTERNAL, "kernel %d: the output is not the one planned",
                          (int)st->node);
    ref_view_t *out = &vals[st->node];
    memset(out, 0, sizeof(*out));
    out->dtype = n->dtype;
    out->rank = n->rank;
    memcpy(out->shape, n->shape, sizeof(out->shape));
    int64_t s = 1;
    for (int d = n->rank - 1; d >= 0; d--) {
        out->strides[d] = s;
        s *= n->shape[d] > 0 ? n->shape[d] : 1;
    }
    if (numel == 0)
        return 0;
    /* In place (fuse.c): the kernel reads input inplace - 1 from its output buffer. That is
     * the input's own buffer when this run is its only owner (a view of it elsewhere in the
     * graph, or a session handle, must not see the change), else a copy of it. */
    tensor_t *src = NULL;
    if (k->inplace) {
        src = vals[st->kin_node[k->inplace - 1]].t;
        if (!src || src->numel != n->numel || src->dtype != n->dtype)
            return proto_fail(err, PG_EINTERNAL, "kernel %d: the in-place input is not the "
                              "buffer planned", (int)st->node);
        if (atomic_load(&src->refs) == 1)
            out->t = tensor_ref(src);
    }
    if (!out->t)
        out->t = tensor_new(n->dtype, n->rank, n->shape, n->numel);
    if (out->t && src && out->t != src)
        memcpy(out->t->data, src->data, n->numel * proto_dtype_size(n->dtype));
    if (!out->t)
        return proto_fail(err, PG_EOUT_OF_MEMORY,
                          "node %d (%s): no memory for a %llu-byte result (%llu of %llu bytes in "
                          "use)",
                          (int)n->wire, n->wire_op ? n->wire_op : "?",
                          (unsigned long long)(n->numel * proto_dtype_size(n->dtype)),
                          (unsigned long long)mem_in_use(), (unsigned long long)mem_limit());
    bufs[0] = out->t->data;
    int64_t nb = kir_split_blocks(k);
    if (nb > 0)
        return run_split(k, fn, bufs, out->t, nb, err);
    uint64_t iter = 1;
    for (int d = 0; d < k->rank; d++)
        iter *= (uint64_t)k->shape[d];
    kctx_t c = {fn, bufs};
    uint64_t units = kir_units(k); /* rows of a staged kernel, else output elements */
    ref__parallel_for(units, units && iter / units ? iter / units : 1, kernel_chunk, &c);
    return 0;
}

/* =============================================================================================
 * run
 * =========================================================================================== */

/* An interpreted step of a CPU run. An input node whose tensor is on a GPU reads a host copy
 * of it (a run's inputs are copied to the run's device, PROTOCOL.md). */
static int run_input_or_eval(sess_t *sess, const graph_t *g, int32_t i, tensor_t *bound,
                             ref_view_t *vals, proto_err_t *err) {
    const gnode_t *n = &g->nodes[i];
    tensor_t *t = n->op == PRIM_input ? (bound ? bound : n->tensor) : NULL;
    if (!t)
        return ref_eval(g, i, vals, err);
    if (t->device == TENSOR_HOST)
        return ref_eval_input(g, i, t, vals, err);
    tensor_t *h = NULL;
    int rc = crun_to_host(sess, t, &h, err);
    if (rc == 0) {
        rc = ref_eval_input(g, i, h, vals, err);
        tensor_unref(h);
    }
    return rc;
}

/* Logs the explain text of a plan that was just built (at --log-level debug). */
static void log_plan(const plan_t *plan, const graph_t *g) {
    if (!log_enabled(LOG_DEBUG))
        return;
    char *text = plan_explain_text(plan, g, false, NULL);
    if (!text)
        return;
    /* One log line per text line, so that the log stays line-oriented. */
    for (char *line = text, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        log_debug("plan: %s", line);
    }
    pg_free(text);
}

/* Ends the current phase of a run for the "runs" counters of `stats`: adds the time since *mark
 * to phase_ns[*phase], moves *mark to now and *phase to the next phase (the phases are timed back
 * to back; STATS_RUN_PHASE_COUNT after the last). */
static void run_lap(uint64_t *phase_ns, int *phase, uint64_t *mark) {
    uint64_t now = uv_hrtime();
    phase_ns[*phase] += now - *mark;
    *mark = now;
    (*phase)++;
}

/* The handles of a run's optional `free` list, or NULL (no list, or one that is not an array of
 * handles: then err is filled). Borrowed from the request. */
static const msgpack_object *free_list(req_t *r, proto_err_t *err, bool *bad) {
    const msgpack_object *f = proto_find(r->args, "free");
    *bad = false;
    if (!f || f->type == MSGPACK_OBJECT_NIL)
        return NULL;
    bool ok = f->type == MSGPACK_OBJECT_ARRAY;
    for (uint32_t k = 0; ok && k < f->via.array.size; k++)
        ok = f->via.array.ptr[k].type == MSGPACK_OBJECT_POSITIVE_INTEGER;
    if (!ok) {
        *bad = true;
        proto_fail(err, PG_EBAD_REQUEST, "field 'free' must be a list of handles");
        return NULL;
    }
    return f;
}

/* Prepares a request that the prepared-run cache did not answer: lowers it (prepare) and makes
 * its entry (prepcache_adopt, shared when q is keyed and the graph fits), with the handle each
 * assign names in *ah (owned by the caller). Fills tens as prepcache_adopt does. Returns 0 or a
 * negative PG_E* with err filled. */
static int prepare_entry(req_t *r, uint32_t max_nodes, pc_req_t *q, tensor_t **tens,
                         pc_entry_t **e, uint64_t **ah, proto_err_t *err) {
    prep_t p;
    int rc = prepare(r, max_nodes, &p, err);
    if (rc != 0)
        goto out;
    *ah = pg_calloc_array(p.as.n ? p.as.n : 1, sizeof(uint64_t));
    if (!*ah) {
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for %u assigns", p.as.n);
        goto out;
    }
    for (uint32_t j = 0; j < p.as.n; j++)
        (*ah)[j] = p.as.a[j].handle;
    *e = prepcache_adopt(q, &p.g, &p.out_id, &p.keep, p.no, p.nall, &p.as,
                         proto_find(r->args, "nodes"), r->sess, tens);
    if (!*e)
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a prepared graph");
out:
    prep_free(&p);
    return rc;
}

/* The session quota of a run (--max-session-memory): its kept outputs and assigned values are
 * added to the session's bytes, the tensors the assigns replace taken off. res holds the
 * results (at commit); NULL estimates them from the planned nodes (before executing). Returns
 * 0 or -PG_EOUT_OF_MEMORY with err filled. */
static int check_quota(const daemon_t *d, req_t *r, const graph_t *g, const pc_entry_t *e,
                       tensor_t *const *res, const uint64_t *ah, proto_err_t *err) {
    uint64_t add = 0, drop = 0;
    for (uint32_t k = 0; k < e->nall; k++) {
        if (k < e->no && !e->keep[k])
            continue;
        const gnode_t *n = &g->nodes[e->out_id[k]];
        add += res ? res[k]->block_bytes : n->numel * proto_dtype_size(n->dtype);
    }
    for (uint32_t j = 0; j < e->nas; j++) {
        const tensor_t *old = sess_get(r->sess, ah[j]);
        drop += old ? old->block_bytes : 0;
    }
    return sess_check_quota(r->sess, d->cfg.max_session_memory, add, drop,
                            "the run's kept outputs and assigns", err);
}

int ops_run(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    uint64_t start = uv_hrtime(), mark = start, phase_ns[STATS_RUN_PHASE_COUNT] = {0};
    int phase = STATS_RUN_prepare;
    pc_req_t q = {0};
    pc_entry_t *e = NULL;    /* the prepared request: from the cache, or made here */
    tensor_t **tens = NULL;  /* the request's handles' tensors, by ordinal (references) */
    tensor_t **bound = NULL; /* per primitive: the tensor an input node reads (from tens) */
    uint64_t *ah = NULL;     /* the handle each assign names */
    const graph_t *g = NULL;
    uint32_t no = 0, nall = 0;
    tensor_t **res = NULL;
    uint64_t *handles = NULL;
    ref_view_t *vals = NULL;
    uint32_t added = 0;
    plan_t *gplan = NULL;    /* a GPU run's plan (every loop fused) */
    crun_t gr;               /* a GPU run's state, between crun_begin and crun_end */
    bool gr_started = false;
    bool bad_free;
    ref_set_cancel(&r->cancel); /* this thread's loops stop between chunks when it is set */
    const msgpack_object *frees = free_list(r, err, &bad_free);
    int rc = bad_free ? -err->code : 0;
    if (bad_free)
        goto out;
    /* Where the run executes. A GPU run walks its own plan, which has every loop fused (there
     * is no interpreter on the device: an unfused elementwise op would cost a host round trip). */
    dev_id_t dev;
    if ((rc = dev_from_request(r->args, &dev, err)) != 0)
        goto out;
    bool on_gpu = dev.kind == DEV_CUDA;
    int gpu = dev.index < 0 ? 0 : dev.index;

    /* A request seen before (but for its handles) skips lowering and planning. */
    if (prepcache_enabled()) {
        pc_req_key(&q, proto_find(r->args, "nodes"), proto_find(r->args, "outputs"));
        if (q.keyed && !(tens = pg_calloc_array(q.nh ? q.nh : 1, sizeof(*tens))))
            q.keyed = false;
        if (q.keyed && (e = prepcache_get(&q, r->sess, tens))) {
            ah = pg_calloc_array(e->nas ? e->nas : 1, sizeof(uint64_t));
            if (!ah) {
                rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for %u assigns", e->nas);
                goto out;
            }
            for (uint32_t j = 0; j < e->nas; j++)
                ah[j] = q.handles[e->as[j].ord];
        }
    }
    bool hit = e != NULL;
    if (!hit && (rc = prepare_entry(r, d->cfg.max_nodes, q.keyed ? &q : NULL, tens, &e, &ah,
                                    err)) != 0)
        goto out;
    g = &e->g;
    no = e->no;
    nall = e->nall;
    run_lap(phase_ns, &phase, &mark); /* prepare */
    res = pg_calloc_array(nall ? nall : 1, sizeof(tensor_t *));
    handles = pg_calloc_array(no ? no : 1, sizeof(uint64_t));
    vals = pg_calloc_array(g->n ? (size_t)g->n : 1, sizeof(ref_view_t));
    bound = e->shared ? pg_calloc_array(g->n ? (size_t)g->n : 1, sizeof(tensor_t *)) : NULL;
    if (!res || !handles || !vals || (e->shared && !bound)) {
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to run %d nodes", (int)g->n);
        goto out;
    }
    if (bound)
        for (uint32_t k = 0; k < e->nin; k++)
            bound[e->in[k].node] = tens[e->in[k].ord];

    /* The schedule: a cached plan with compiled kernels, or one interpreter step per needed
     * node (--jit off, no compiler, or a plan whose kernels did not compile). A prepared
     * request kept both; a new one gets them now, and only then is cached (immutable). */
    if (on_gpu) {
        bool built = false;
        if (!(gplan = plan_get(g, e->out_id, nall, true, &built, err))) {
            rc = -err->code;
            goto out;
        }
        if (built)
            log_plan(gplan, g);
        if (!hit) {
            /* A cached entry carries a CPU schedule too: this plan, when its C kernels compiled
             * (fusing every loop is right on the CPU as well), else the interpreter's. */
            if (gplan->compiled) {
                e->plan = plan_ref(gplan);
            } else {
                if ((rc = fuse_graph(g, e->out_id, nall, false, false, &e->local, err)) != 0)
                    goto out;
                e->has_local = true;
            }
            prepcache_put(e);
        }
    } else if (hit) {
        if (e->plan)
            plan_count_hit();
    } else {
        if (ops_jit_on(d)) {
            bool built = false;
            /* A run that assigns is a step that will repeat: every loop of it is compiled. */
            e->plan = plan_get(g, e->out_id, nall, e->nas > 0, &built, err);
            if (!e->plan) {
                rc = -err->code;
                goto out;
            }
            if (built)
                log_plan(e->plan, g);
        }
        if (!(e->plan && e->plan->compiled)) {
            if ((rc = fuse_graph(g, e->out_id, nall, false, false, &e->local, err)) != 0)
                goto out;
            e->has_local = true;
        }
        prepcache_put(e);
    }
    const plan_t *plan = on_gpu ? gplan : e->plan && e->plan->compiled ? e->plan : NULL;
    const fuse_plan_t *fp = plan ? &plan->fp : &e->local;
    run_lap(phase_ns, &phase, &mark); /* plan */
    /* Refuse a run whose results cannot fit the session quota before computing them (the
     * commit checks again with the real tensors). */
    if ((rc = check_quota(d, r, g, e, NULL, ah, err)) != 0)
        goto out;
    if (on_gpu && (rc = crun_begin(&gr, r->sess, gpu, vals, err)) != 0)
        goto out;
    gr_started = on_gpu;

    /* Each step reads earlier steps' values; a value is released after its last reader, so the
     * memory a run holds at once is its live set, not its whole graph. */
    bool profile = log_enabled(LOG_DEBUG);
    for (int32_t s = 0; s < fp->nsteps; s++) {
        const fuse_step_t *st = &fp->steps[s];
        if ((rc = req_check_cancel(r, err)) != 0)
            goto out;
        uint64_t t0 = profile ? uv_hrtime() : 0;
        tensor_t *in_t = bound && bound[st->node] ? bound[st->node] : NULL;
        if (on_gpu)
            rc = crun_step(&gr, g, plan, s, in_t, run_kernel, err);
        else if (st->kind == FUSE_STEP_KERNEL)
            rc = run_kernel(g, st, plan->kern[s].fn, vals, err);
        else
            rc = run_input_or_eval(r->sess, g, st->node, in_t, vals, err);
        if (profile) /* where a slow run spends its time: --log-level debug */
            log_debug("run: step %d %s %%%d %s: %.1f us", (int)s,
                      st->kind == FUSE_STEP_KERNEL ? "kernel" : "interp", (int)st->node,
                      graph_prim_name(g->nodes[st->node].op), (double)(uv_hrtime() - t0) / 1e3);
        if (rc != 0) {
            /* A step cut short by a cancel may leave garbage that the next one trips on. */
            if (req_check_cancel(r, err) == 0)
                name_node(g, st->node, err);
            rc = -err->code;
            goto out;
        }
        for (int32_t q2 = 0; q2 < st->nrelease; q2++)
            ref_view_release(&vals[st->release[q2]]);
    }
    for (uint32_t k = 0; k < nall; k++) {
        /* On a GPU, what stays in the session (kept outputs, assigned state) stays there;
         * outputs sent back inline come to the host. */
        rc = on_gpu ? crun_output(&gr, e->out_id[k], k >= no || e->keep[k], &res[k], err)
                    : ref_materialize(&vals[e->out_id[k]], &res[k], err);
        if (rc != 0)
            goto out;
    }
    if (gr_started) {
        gr_started = false;
        if ((rc = crun_end(&gr, err)) != 0)
            goto out;
    }
    /* The last step's loops may have been cut short too: nothing of it may be committed. */
    if ((rc = req_check_cancel(r, err)) != 0)
        goto out;
    run_lap(phase_ns, &phase, &mark); /* execute */
    if ((rc = check_quota(d, r, g, e, res, ah, err)) != 0)
        goto out;

    /* Commit: only now does the session change. The kept handles first (the only step that can
     * fail, and it is undone below), then the assigns, which cannot fail: lowering (or the
     * prepared-run cache's check) found every assigned handle in this session, and nothing else
     * touches the session meanwhile (session.h). */
    for (uint32_t k = 0; k < no; k++) {
        if (!e->keep[k])
            continue;
        if ((rc = sess_add(r->sess, tensor_ref(res[k]), &handles[k])) != 0) {
            rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a new handle");
            goto out;
        }
        added = k + 1;
    }
    for (uint32_t j = 0; j < e->nas; j++)
        if (!sess_get(r->sess, ah[j])) {
            rc = proto_fail(err, PG_EINTERNAL, "node %d (assign): handle %llu vanished",
                            (int)e->as[j].wire, (unsigned long long)ah[j]);
            goto out;
        }
    for (uint32_t j = 0; j < e->nas; j++)
        sess_replace(r->sess, ah[j], tensor_ref(res[no + j]));
    proto_pack_reply_head(pk, 3, true, r->id, true);
    proto_pack_cstr(pk, "outputs");
    msgpack_pack_array(pk, no);
    for (uint32_t k = 0; k < no; k++)
        pack_output(pk, res[k], e->keep[k], handles[k]);
    added = 0; /* the handles are the client's now */

out:
    if (gr_started) {
        proto_err_t ignored;
        crun_end(&gr, &ignored); /* the run failed already: only wait and drop its copies */
    }
    plan_release(gplan);
    if (phase < STATS_RUN_PHASE_COUNT)
        run_lap(phase_ns, &phase, &mark); /* the phase an error cut short */
    for (uint32_t k = 0; k < added; k++)
        if (e->keep[k])
            sess_remove(r->sess, handles[k]);
    if (vals)
        for (int32_t i = 0; i < g->n; i++)
            ref_view_release(&vals[i]);
    if (res)
        for (uint32_t k = 0; k < nall; k++)
            tensor_unref(res[k]);
    if (tens)
        for (uint32_t o = 0; o < q.nh; o++)
            tensor_unref(tens[o]);
    prepcache_release(e);
    pg_free(bound);
    pg_free(tens);
    pg_free(ah);
    pg_free(vals);
    pg_free(handles);
    pg_free(res);
    pc_req_free(&q);
    /* Handles the client dropped, sent with the run instead of as `free` requests: released
     * whether or not the run succeeded, unknown ones ignored (as a `free` reply would be). */
    for (uint32_t k = 0; frees && k < frees->via.array.size; k++)
        sess_remove(r->sess, frees->via.array.ptr[k].via.u64);
    stats_count_run(phase_ns, uv_hrtime() - start);
    ref_set_cancel(NULL);
    ref_rest(); /* the pool stops waiting for a next loop: the reply may wake the client onto
                 * a CPU where it spins (kernels/ref/ref.h) */
    return rc;
}

/* =============================================================================================
 * explain
 * =========================================================================================== */

/* Returns text followed by a section listing p's assigns (one line each: the request node, the
 * handle, the primitive whose value it takes, with its dtype and shape), as a new string (free
 * with pg_free), or NULL when memory runs out. Borrows text. */
static char *explain_assigns(const char *text, const prep_t *p) {
    size_t len = strlen(text), line = 300, cap = len + 64 + (size_t)p->as.n * line;
    char *out = pg_malloc(cap), sh[160];
    if (!out)
        return NULL;
    memcpy(out, text, len);
    size_t w = len;
    w += (size_t)snprintf(out + w, cap - w, "\n== assigns: %u ==\n", p->as.n);
    for (uint32_t j = 0; j < p->as.n && w < cap; j++) {
        const gnode_t *n = &p->g.nodes[p->out_id[p->no + j]];
        w += (size_t)snprintf(out + w, cap - w, "  node %d (assign): handle %llu <- %%%d %s %s, "
                              "at commit\n", (int)p->as.a[j].wire,
                              (unsigned long long)p->as.a[j].handle, (int)p->out_id[p->no + j],
                              proto_dtype_name(n->dtype),
                              graph_shape_str(sh, sizeof(sh), n->rank, n->shape));
    }
    return out;
}

/* Packs the "assigns" key of an explain reply: one {node, handle, value} map per assign (the
 * request node, the handle, the primitive whose value it takes). */
static void pack_assigns(msgpack_packer *pk, const prep_t *p) {
    proto_pack_cstr(pk, "assigns");
    msgpack_pack_array(pk, p->as.n);
    for (uint32_t j = 0; j < p->as.n; j++) {
        msgpack_pack_map(pk, 3);
        proto_pack_cstr(pk, "node");
        msgpack_pack_int32(pk, p->as.a[j].wire);
        proto_pack_cstr(pk, "handle");
        msgpack_pack_uint64(pk, p->as.a[j].handle);
        proto_pack_cstr(pk, "value");
        msgpack_pack_int32(pk, p->out_id[p->no + j]);
    }
}

/* Runs on a worker: lowers and plans like `run` (rendering kernel sources, compiling nothing,
 * touching neither the session nor the plan cache) and replies with the plan. */
int ops_explain(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    prep_t p;
    plan_t *plan = NULL;
    char *text = NULL, *full = NULL;
    dev_id_t dev;
    int rc = dev_from_request(r->args, &dev, err);
    if (rc != 0) {
        memset(&p, 0, sizeof(p)); /* prep_free below must see an empty graph */
        goto out;
    }
    rc = prepare(r, d->cfg.max_nodes, &p, err);
    if (rc != 0)
        goto out;
    /* On a GPU every loop is fused (as its runs are) and the kernels shown are CUDA's. */
    bool cuda = dev.kind == DEV_CUDA;
    plan = plan_build(&p.g, p.out_id, p.nall, false, cuda || p.as.n > 0, err);
    if (!plan) {
        rc = -err->code;
        goto out;
    }
    if ((rc = req_check_cancel(r, err)) != 0) /* past its time limit while planning */
        goto out;
    /* Without the JIT a CPU run interprets every primitive (ops_run): the plan still shows what
     * the compiler would make of the graph, and the note says that runs do not use it. */
    bool jit = cuda || ops_jit_on(d);
    const char *note = NULL;
    if (!jit && !d->cfg.jit)
        note = "(The compiler is off (--jit off): runs of this graph interpret every primitive. "
               "Below\nis what --jit on would make of it.)";
    else if (!jit)
        note = "(No working C compiler (--cc): runs of this graph interpret every primitive. "
               "Below is\nwhat the compiler would make of it.)";
    text = plan_explain_text(plan, &p.g, cuda, note);
    if (text && p.as.n)
        full = explain_assigns(text, &p);
    if (!text || (p.as.n && !full)) {
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for the explain text");
        goto out;
    }
    proto_pack_reply_head(pk, 2 + 6, true, r->id, true);
    proto_pack_cstr(pk, "text");
    proto_pack_cstr(pk, full ? full : text);
    proto_pack_cstr(pk, "jit");
    jit ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    plan_pack_explain(pk, plan, &p.g, cuda);
    pack_assigns(pk, &p);

out:
    pg_free(full);
    pg_free(text);
    plan_release(plan);
    prep_free(&p);
    return rc;
}
