/*
 * graph.c - the C client's graph builder and the `run` op (PROTOCOL.md section 6).
 *
 * A graph is built by packing each node's msgpack map, as it is added, into one buffer: the
 * buffer is exactly the body of the request's "nodes" array, so pg_run() packs only the small
 * request head ({"op": "run", "outputs": [...], "id": N, "nodes": array(n)}) and sends the node
 * bytes after it as a second iovec. A graph of large constants is therefore copied once (into the
 * builder) and never again, however often it runs.
 *
 *   pg_graph_input(g, 5)              ->  {"op": "input", "handle": 5}
 *   pg_graph_op(g, "add", {0, 1}, 2)  ->  {"op": "add", "in": [0, 1]}
 *   pg_graph_grad(g, 2, 0, -1)        ->  {"op": "grad", "in": [2, 0]}
 *   pg_graph_assign(g, 5, 3)          ->  {"op": "assign", "in": [3], "handle": 5}
 *
 * Every builder call checks its arguments before packing a byte, and rolls the buffer back when
 * packing runs out of memory, so a failed call leaves the graph exactly as it was.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

struct pg_graph {
    msgpack_sbuffer nodes; /* the packed node maps, back to back (owned) */
    msgpack_packer pk;     /* packs into nodes */
    int n;                 /* nodes packed so far */
    pg_error_t err;        /* the last builder call's error; code 0 after a success */
};

/* =============================================================================================
 * Building
 * =========================================================================================== */

pg_graph_t *pg_graph_new(void) {
    pg_graph_t *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    msgpack_sbuffer_init(&g->nodes);
    msgpack_packer_init(&g->pk, &g->nodes, msgpack_sbuffer_write);
    return g;
}

void pg_graph_free(pg_graph_t *g) {
    if (!g)
        return;
    msgpack_sbuffer_destroy(&g->nodes);
    free(g);
}

const pg_error_t *pg_graph_last_error(const pg_graph_t *g) { return &g->err; }

int pg_graph_size(const pg_graph_t *g) { return g->n; }

/*
 * Checks that one more node with inputs[0..nin) fits and that every input is an earlier node.
 * Returns 0 or a negative code with g->err naming the node about to be added.
 */
static int check_node(pg_graph_t *g, const char *op, const int *inputs, int nin) {
    if (g->n >= PG_GRAPH_MAX_NODES)
        return pg__set_err(&g->err, PG_ETOO_LARGE, "node %d (%s): a graph holds at most %d nodes",
                           g->n, op, PG_GRAPH_MAX_NODES);
    if (nin < 0 || nin > PG_GRAPH_MAX_INPUTS || (nin > 0 && !inputs))
        return pg__set_err(&g->err, PG_EBAD_REQUEST,
                           "node %d (%s): %d inputs (0 to %d, with a non-NULL array)", g->n, op,
                           nin, PG_GRAPH_MAX_INPUTS);
    for (int i = 0; i < nin; i++)
        if (inputs[i] < 0 || inputs[i] >= g->n)
            return pg__set_err(&g->err, PG_EBAD_REQUEST,
                               "node %d (%s): input %d is %d, not an earlier node (0 to %d)", g->n,
                               op, i, inputs[i], g->n - 1);
    return 0;
}

/*
 * Packs a node map's opening: the header for `fields` entries besides "op" and "in", the op, and
 * "in" when there are inputs. Returns the packer's status (0, or -1 when out of memory).
 */
static int pack_head(pg_graph_t *g, const char *op, const int *inputs, int nin, int fields) {
    msgpack_packer *pk = &g->pk;
    int rc = msgpack_pack_map(pk, (size_t)fields + 1 + (nin > 0));
    rc |= proto_pack_cstr(pk, "op");
    rc |= proto_pack_cstr(pk, op);
    if (nin > 0) {
        rc |= proto_pack_cstr(pk, "in");
        rc |= msgpack_pack_array(pk, (size_t)nin);
        for (int i = 0; i < nin; i++)
            rc |= msgpack_pack_uint32(pk, (uint32_t)inputs[i]);
    }
    return rc;
}

/*
 * Ends a node: on a packing failure, cuts the buffer back to `mark` (its size before the node)
 * and reports out of memory; otherwise counts the node and returns its index.
 */
static int finish(pg_graph_t *g, size_t mark, int pack_rc, const char *op) {
    if (pack_rc != 0) {
        g->nodes.size = mark; /* msgpack_sbuffer_write appends only: this drops the partial node */
        return pg__set_err(&g->err, PG_EOUT_OF_MEMORY, "node %d (%s): no memory to pack it",
                           g->n, op);
    }
    g->err.code = 0;
    g->err.message[0] = '\0';
    return g->n++;
}

int pg_graph_input(pg_graph_t *g, uint64_t handle) {
    int rc = check_node(g, "input", NULL, 0);
    if (rc)
        return rc;
    size_t mark = g->nodes.size;
    rc = pack_head(g, "input", NULL, 0, 1);
    rc |= proto_pack_cstr(&g->pk, "handle");
    rc |= msgpack_pack_uint64(&g->pk, handle);
    return finish(g, mark, rc, "input");
}

int pg_graph_const(pg_graph_t *g, pg_dtype_t dtype, int rank, const int64_t *shape,
                   const void *data) {
    int rc = check_node(g, "const", NULL, 0);
    if (rc)
        return rc;
    size_t item = pg_dtype_size(dtype);
    if (item == 0)
        return pg__set_err(&g->err, PG_EBAD_DTYPE,
                           "node %d (const): dtype %d is not one of PG_DTYPE_MAP", g->n,
                           (int)dtype);
    if (rank < 0 || rank > PG_MAX_RANK || (rank > 0 && !shape))
        return pg__set_err(&g->err, PG_EBAD_SHAPE, "node %d (const): rank %d is not 0 to %d",
                           g->n, rank, PG_MAX_RANK);
    uint64_t numel = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0)
            return pg__set_err(&g->err, PG_EBAD_SHAPE, "node %d (const): dim %d is negative",
                               g->n, i);
        if (shape[i] != 0 && numel > UINT32_MAX / item / (uint64_t)shape[i])
            return pg__set_err(&g->err, PG_ETOO_LARGE,
                               "node %d (const): over 4 GiB, more than a msgpack bin holds", g->n);
        numel *= (uint64_t)shape[i];
    }
    size_t nbytes = (size_t)(numel * item);
    if (nbytes > 0 && !data)
        return pg__set_err(&g->err, PG_EBAD_REQUEST, "node %d (const): data is NULL", g->n);
    size_t mark = g->nodes.size;
    msgpack_packer *pk = &g->pk;
    rc = pack_head(g, "const", NULL, 0, 3);
    rc |= proto_pack_cstr(pk, "dtype");
    rc |= proto_pack_cstr(pk, pg_dtype_name(dtype));
    rc |= proto_pack_cstr(pk, "shape");
    rc |= msgpack_pack_array(pk, (size_t)rank);
    for (int i = 0; i < rank; i++)
        rc |= msgpack_pack_int64(pk, shape[i]);
    rc |= proto_pack_cstr(pk, "data");
    rc |= msgpack_pack_bin(pk, nbytes);
    if (nbytes > 0)
        rc |= msgpack_pack_bin_body(pk, data, nbytes);
    return finish(g, mark, rc, "const");
}

int pg_graph_scalar(pg_graph_t *g, double value) {
    int rc = check_node(g, "const", NULL, 0);
    if (rc)
        return rc;
    size_t mark = g->nodes.size;
    rc = pack_head(g, "const", NULL, 0, 1);
    rc |= proto_pack_cstr(&g->pk, "value");
    rc |= msgpack_pack_double(&g->pk, value);
    return finish(g, mark, rc, "const");
}

int pg_graph_grad(pg_graph_t *g, int y, int x, int gy) {
    int in[3] = {y, x, gy};
    return pg_graph_op(g, "grad", in, gy < 0 ? 2 : 3, NULL, 0);
}

int pg_graph_assign(pg_graph_t *g, uint64_t handle, int value) {
    int rc = check_node(g, "assign", &value, 1);
    if (rc)
        return rc;
    size_t mark = g->nodes.size;
    rc = pack_head(g, "assign", &value, 1, 1);
    rc |= proto_pack_cstr(&g->pk, "handle");
    rc |= msgpack_pack_uint64(&g->pk, handle);
    return finish(g, mark, rc, "assign");
}

/* Checks one attribute of node g->n (op); attrs[0..k) are the ones before it. */
static int check_attr(pg_graph_t *g, const char *op, const pg_attr_t *attrs, int k) {
    const pg_attr_t *a = &attrs[k];
    if (!a->name || !a->name[0])
        return pg__set_err(&g->err, PG_EBAD_REQUEST, "node %d (%s): attribute %d has no name",
                           g->n, op, k);
    if (strcmp(a->name, "op") == 0 || strcmp(a->name, "in") == 0)
        return pg__set_err(&g->err, PG_EBAD_REQUEST,
                           "node %d (%s): \"%s\" is not an attribute (the builder packs it)",
                           g->n, op, a->name);
    for (int j = 0; j < k; j++)
        if (strcmp(attrs[j].name, a->name) == 0)
            return pg__set_err(&g->err, PG_EBAD_REQUEST,
                               "node %d (%s): attribute \"%s\" is given twice", g->n, op,
                               a->name);
    switch (a->kind) {
    case PG_ATTR_INT:
    case PG_ATTR_FLOAT:
    case PG_ATTR_BOOL:
    case PG_ATTR_NIL: return 0;
    case PG_ATTR_STR:
        if (a->s)
            return 0;
        return pg__set_err(&g->err, PG_EBAD_REQUEST, "node %d (%s): attribute \"%s\" is NULL",
                           g->n, op, a->name);
    case PG_ATTR_INTS:
    case PG_ATTR_SLICES:
        if (a->nints >= 0 && (a->nints == 0 || a->ints))
            return 0;
        return pg__set_err(&g->err, PG_EBAD_REQUEST,
                           "node %d (%s): attribute \"%s\" has %d entries (>= 0, with a "
                           "non-NULL array)",
                           g->n, op, a->name, a->nints);
    case PG_ATTR_COUNT: break;
    }
    return pg__set_err(&g->err, PG_EBAD_REQUEST, "node %d (%s): attribute \"%s\" has kind %d",
                       g->n, op, a->name, (int)a->kind);
}

/* Packs one checked attribute as a key and a value. */
static int pack_attr(msgpack_packer *pk, const pg_attr_t *a) {
    int rc = proto_pack_cstr(pk, a->name);
    switch (a->kind) {
    case PG_ATTR_INT: return rc | msgpack_pack_int64(pk, a->i);
    case PG_ATTR_FLOAT: return rc | msgpack_pack_double(pk, a->f);
    case PG_ATTR_BOOL: return rc | (a->i ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
    case PG_ATTR_STR: return rc | proto_pack_cstr(pk, a->s);
    case PG_ATTR_NIL: return rc | msgpack_pack_nil(pk);
    case PG_ATTR_INTS:
        rc |= msgpack_pack_array(pk, (size_t)a->nints);
        for (int i = 0; i < a->nints; i++)
            rc |= msgpack_pack_int64(pk, a->ints[i]);
        return rc;
    case PG_ATTR_SLICES:
        rc |= msgpack_pack_array(pk, (size_t)a->nints);
        for (int i = 0; i < a->nints; i++) {
            rc |= msgpack_pack_array(pk, 3);
            for (int j = 0; j < 3; j++) {
                int64_t v = a->ints[3 * (size_t)i + (size_t)j];
                rc |= v == PG_NONE ? msgpack_pack_nil(pk) : msgpack_pack_int64(pk, v);
            }
        }
        return rc;
    case PG_ATTR_COUNT: break;
    }
    return -1; /* unreachable: check_attr refused the kind */
}

int pg_graph_op(pg_graph_t *g, const char *op, const int *inputs, int ninputs,
                const pg_attr_t *attrs, int nattrs) {
    if (!op || !op[0])
        return pg__set_err(&g->err, PG_EBAD_REQUEST, "node %d: the op name is empty", g->n);
    int rc = check_node(g, op, inputs, ninputs);
    if (rc)
        return rc;
    if (nattrs < 0 || (nattrs > 0 && !attrs))
        return pg__set_err(&g->err, PG_EBAD_REQUEST,
                           "node %d (%s): %d attributes (>= 0, with a non-NULL array)", g->n, op,
                           nattrs);
    for (int k = 0; k < nattrs; k++)
        if ((rc = check_attr(g, op, attrs, k)) != 0)
            return rc;
    size_t mark = g->nodes.size;
    rc = pack_head(g, op, inputs, ninputs, nattrs);
    for (int k = 0; k < nattrs; k++)
        rc |= pack_attr(&g->pk, &attrs[k]);
    return finish(g, mark, rc, op);
}

/* =============================================================================================
 * Running
 * =========================================================================================== */

/* Packs {"op": "run", "outputs": [...], "id": N, "nodes": array(n)} into sb; the node maps follow
 * as raw bytes. Returns the packer's status. */
static int pack_run(pg_conn_t *c, const pg_graph_t *g, const pg_output_t *outs, int nouts,
                    msgpack_sbuffer *sb) {
    msgpack_packer pk;
    pg__begin(sb, &pk, "run", c->device[0] ? 3 : 2);
    int rc = 0;
    if (c->device[0]) {
        rc |= proto_pack_cstr(&pk, "device");
        rc |= proto_pack_cstr(&pk, c->device);
    }
    rc |= proto_pack_cstr(&pk, "outputs");
    rc |= msgpack_pack_array(&pk, (size_t)nouts);
    for (int i = 0; i < nouts; i++) {
        rc |= msgpack_pack_map(&pk, 2);
        rc |= proto_pack_cstr(&pk, "node");
        rc |= msgpack_pack_uint32(&pk, (uint32_t)outs[i].node);
        rc |= proto_pack_cstr(&pk, "keep");
        rc |= outs[i].keep ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
    }
    pg__add_id(c, &pk);
    rc |= proto_pack_cstr(&pk, "nodes"); /* last: its elements are g's bytes, sent after sb */
    rc |= msgpack_pack_array(&pk, (size_t)g->n);
    return rc;
}

/*
 * Reads output i of a run reply into *res. Inline data is left pointing into the reply (in
 * res->tensor.data, with frame_ NULL) for the caller to copy or adopt. Returns 0 or -1 with perr
 * saying what is malformed.
 */
static int read_output(const msgpack_object *o, bool keep, pg_result_t *res, proto_err_t *perr) {
    if (o->type != MSGPACK_OBJECT_MAP)
        return proto_fail(perr, PG_EINTERNAL, "not a map");
    pg_tensor_t *t = &res->tensor;
    pg_dtype_t dt;
    int64_t dims[PROTO_MAX_RANK];
    if (proto_get_dtype(o, "dtype", &dt, perr) ||
        proto_get_shape(o, "shape", proto_dtype_size(dt), dims, &t->rank, &t->numel, &t->nbytes,
                        perr))
        return -1;
    t->dtype = dt;
    memcpy(t->shape, dims, sizeof(dims[0]) * (size_t)t->rank);
    if (keep)
        return proto_get_uint(o, "handle", &res->handle, perr) ? -1 : 0;
    const uint8_t *data;
    size_t len;
    if (proto_get_bin(o, "data", &data, &len, perr))
        return -1;
    if (len != t->nbytes)
        return proto_fail(perr, PG_EINTERNAL, "data holds %zu bytes, the shape says %llu", len,
                          (unsigned long long)t->nbytes);
    t->data = t->nbytes ? (void *)data : NULL;
    return 0;
}

/*
 * Gives every inline result a buffer of its own: the largest one adopts the reply frame when its
 * data is 64-byte aligned in it, the others get an aligned copy. Takes r->frame when adopted.
 * Returns 0 or -PG_EOUT_OF_MEMORY (results already given a buffer keep it for the caller to free).
 */
static int own_inline(pg_conn_t *c, const pg_output_t *outs, int nouts, pg_result_t *results,
                      pg__reply_t *r) {
    int adopt = -1;
    for (int i = 0; i < nouts; i++) {
        const pg_tensor_t *t = &results[i].tensor;
        if (!outs[i].keep && t->data && ((uintptr_t)t->data & 63) == 0 &&
            (adopt < 0 || t->nbytes > results[adopt].tensor.nbytes))
            adopt = i;
    }
    for (int i = 0; i < nouts; i++) {
        pg_tensor_t *t = &results[i].tensor;
        if (outs[i].keep || !t->data || i == adopt)
            continue;
        void *mem = NULL;
        if (posix_memalign(&mem, 64, (size_t)t->nbytes) != 0) {
            t->data = NULL;
            return pg__set_err(&c->err, PG_EOUT_OF_MEMORY,
                               "run: no memory for output %d (%llu bytes)", i,
                               (unsigned long long)t->nbytes);
        }
        memcpy(mem, t->data, (size_t)t->nbytes);
        t->data = t->frame_ = mem;
    }
    if (adopt >= 0) {
        results[adopt].tensor.frame_ = r->frame; /* data already points into it */
        r->frame = NULL;
    }
    return 0;
}

/* Undoes a run whose reply could not be handed out: frees the kept handles named so far (keeping
 * the error that caused this) and the inline buffers, and zeroes the results. */
static void drop_results(pg_conn_t *c, const pg_output_t *outs, int nouts, pg_result_t *results) {
    pg_error_t saved = c->err;
    for (int i = 0; i < nouts; i++) {
        if (outs[i].keep && results[i].handle)
            pg_free(c, results[i].handle);
        free(results[i].tensor.frame_);
    }
    c->err = saved;
    if (nouts > 0)
        memset(results, 0, sizeof(results[0]) * (size_t)nouts);
}

int pg_run(pg_conn_t *c, const pg_graph_t *g, const pg_output_t *outs, int nouts,
           pg_result_t *results) {
    if (nouts < 0 || (nouts > 0 && (!outs || !results)))
        return pg__set_err(&c->err, PG_EBAD_REQUEST,
                           "run: %d outputs (>= 0, with non-NULL arrays)", nouts);
    if (nouts > 0)
        memset(results, 0, sizeof(results[0]) * (size_t)nouts);
    for (int i = 0; i < nouts; i++)
        if (outs[i].node < 0 || outs[i].node >= g->n)
            return pg__set_err(&c->err, PG_EBAD_REQUEST,
                               "run: output %d names node %d, the graph has nodes 0 to %d", i,
                               outs[i].node, g->n - 1);
    msgpack_sbuffer sb;
    pg__reply_t r;
    if (pack_run(c, g, outs, nouts, &sb) != 0) {
        msgpack_sbuffer_destroy(&sb);
        return pg__set_err(&c->err, PG_EOUT_OF_MEMORY, "run: no memory for the request");
    }
    int rc = pg__roundtrip(c, &sb, g->nodes.data, g->nodes.size, &r);
    msgpack_sbuffer_destroy(&sb);
    if (rc)
        return rc;

    proto_err_t perr = {0};
    const msgpack_object *o = proto_find(r.map, "outputs");
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != (uint32_t)nouts) {
        rc = pg__set_err(&c->err, PG_EINTERNAL, "run reply: \"outputs\" is not an array of %d",
                         nouts);
        goto out_drop;
    }
    for (int i = 0; i < nouts; i++) {
        if (read_output(&o->via.array.ptr[i], outs[i].keep != 0, &results[i], &perr) != 0) {
            rc = pg__set_err(&c->err, PG_EINTERNAL, "run reply: output %d: %s", i, perr.message);
            goto out_drop;
        }
    }
    if ((rc = own_inline(c, outs, nouts, results, &r)) != 0)
        goto out_drop;
    pg__reply_free(&r);
    return 0;

out_drop:
    /* Pointers into the reply that no buffer owns yet must not reach free(). */
    for (int i = 0; i < nouts; i++)
        if (!results[i].tensor.frame_)
            results[i].tensor.data = NULL;
    drop_results(c, outs, nouts, results);
    pg__reply_free(&r);
    return rc;
}
