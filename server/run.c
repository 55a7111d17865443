/*
 * run.c - the `run` op: decode and lower a graph, check it whole, evaluate it, commit the results.
 *
 * The order is what makes a failed run harmless: lowering validates every node and infers every
 * shape before any tensor is allocated; evaluation allocates only intermediates; and the session
 * changes only at the very end, when every output exists. An error at any step frees what the run
 * made and leaves the session as it was.
 *
 * Evaluation walks the primitive nodes in order with the reference interpreter (kernels/ref),
 * skipping nodes no output needs and releasing each intermediate after its last use, so the
 * memory a run holds at once is its live set, not its whole graph.
 */
#include "../kernels/ref/ref.h"
#include "daemon.h"
#include "graph/graph.h"
#include "mem.h"
#include "passes/lower.h"

#include <string.h>

#define RUN_MAX_OUTPUTS 1024

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

int ops_run(daemon_t *d, req_t *r, msgpack_packer *pk, proto_err_t *err) {
    (void)d;
    const msgpack_object *nodes = proto_find(r->args, "nodes");
    const msgpack_object *outs = proto_find(r->args, "outputs");
    if (!nodes || nodes->type != MSGPACK_OBJECT_ARRAY)
        return proto_fail(err, PG_EBAD_REQUEST, "field 'nodes' must be a list of node maps");
    if (!outs || outs->type != MSGPACK_OBJECT_ARRAY || outs->via.array.size == 0)
        return proto_fail(err, PG_EBAD_REQUEST, "field 'outputs' must be a non-empty list");
    uint32_t nw = nodes->via.array.size, no = outs->via.array.size;
    if (nw > GRAPH_MAX_NODES)
        return proto_fail(err, PG_ETOO_LARGE, "the graph has %u nodes; the limit is %d", nw,
                          GRAPH_MAX_NODES);
    if (no > RUN_MAX_OUTPUTS)
        return proto_fail(err, PG_ETOO_LARGE, "%u outputs; the limit is %d", no, RUN_MAX_OUTPUTS);

    int rc = 0;
    graph_t g;
    graph_init(&g, mem_limit());
    int32_t *map = pg_calloc_array(nw ? nw : 1, sizeof(int32_t));
    int32_t *out_id = pg_calloc_array(no, sizeof(int32_t));
    bool *keep = pg_calloc_array(no, sizeof(bool));
    tensor_t **res = pg_calloc_array(no, sizeof(tensor_t *));
    uint64_t *handles = pg_calloc_array(no, sizeof(uint64_t));
    int32_t *last = NULL;
    ref_view_t *vals = NULL;
    uint32_t added = 0;
    if (!map || !out_id || !keep || !res || !handles) {
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a graph of %u nodes", nw);
        goto out;
    }
    if ((rc = lower_graph(&g, r->sess, nodes, map, err)) != 0)
        goto out;

    for (uint32_t k = 0; k < no; k++) {
        const msgpack_object *o = &outs->via.array.ptr[k];
        uint64_t node;
        if (o->type != MSGPACK_OBJECT_MAP || proto_get_uint(o, "node", &node, err) != 0 ||
            node >= nw) {
            rc = proto_fail(err, PG_EBAD_REQUEST,
                            "output %u must be {\"node\": index below %u, \"keep\": bool}", k, nw);
            goto out;
        }
        const msgpack_object *kp = proto_find(o, "keep");
        if (kp && kp->type != MSGPACK_OBJECT_BOOLEAN && kp->type != MSGPACK_OBJECT_NIL) {
            rc = proto_fail(err, PG_EBAD_REQUEST, "output %u: 'keep' must be a bool", k);
            goto out;
        }
        out_id[k] = map[node];
        keep[k] = kp && kp->type == MSGPACK_OBJECT_BOOLEAN && kp->via.boolean;
    }

    /* Liveness: last[i] is the last node reading i; outputs live to the end; -1 is dead. */
    last = pg_calloc_array((size_t)g.n, sizeof(int32_t));
    vals = pg_calloc_array((size_t)g.n, sizeof(ref_view_t));
    if (!last || !vals) {
        rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory to run %d nodes", (int)g.n);
        goto out;
    }
    for (int32_t i = 0; i < g.n; i++)
        last[i] = -1;
    for (uint32_t k = 0; k < no; k++)
        last[out_id[k]] = INT32_MAX;
    for (int32_t i = g.n - 1; i >= 0; i--) {
        if (last[i] < 0)
            continue; /* nothing needs it: its inputs gain no use from it */
        for (int32_t k = 0; k < g.nodes[i].nin; k++) {
            int32_t j = g.nodes[i].in[k];
            if (last[j] < i)
                last[j] = i;
        }
    }

    for (int32_t i = 0; i < g.n; i++) {
        if (last[i] < 0)
            continue;
        if (atomic_load(&r->cancel)) {
            rc = proto_fail(err, PG_EINTERNAL, "run cancelled: the session is closing");
            goto out;
        }
        if ((rc = ref_eval(&g, i, vals, err)) != 0) {
            name_node(&g, i, err);
            goto out;
        }
        for (int32_t k = 0; k < g.nodes[i].nin; k++) {
            int32_t j = g.nodes[i].in[k];
            if (last[j] == i)
                ref_view_release(&vals[j]);
        }
    }
    for (uint32_t k = 0; k < no; k++)
        if ((rc = ref_materialize(&vals[out_id[k]], &res[k], err)) != 0)
            goto out;

    /* Commit: only now does the session change. */
    for (uint32_t k = 0; k < no; k++) {
        if (!keep[k])
            continue;
        if ((rc = sess_add(r->sess, tensor_ref(res[k]), &handles[k])) != 0) {
            rc = proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a new handle");
            goto out;
        }
        added = k + 1;
    }
    proto_pack_reply_head(pk, 3, true, r->id, true);
    proto_pack_cstr(pk, "outputs");
    msgpack_pack_array(pk, no);
    for (uint32_t k = 0; k < no; k++)
        pack_output(pk, res[k], keep[k], handles[k]);
    added = 0; /* the handles are the client's now */

out:
    for (uint32_t k = 0; k < added; k++)
        if (keep[k])
            sess_remove(r->sess, handles[k]);
    if (vals)
        for (int32_t i = 0; i < g.n; i++)
            ref_view_release(&vals[i]);
    if (res)
        for (uint32_t k = 0; k < no; k++)
            tensor_unref(res[k]);
    pg_free(vals);
    pg_free(last);
    pg_free(handles);
    pg_free(res);
    pg_free(keep);
    pg_free(out_id);
    pg_free(map);
    graph_free(&g);
    return rc;
}
