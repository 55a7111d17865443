/*
 * picograd.h - the C client of picogradd: a small blocking API.
 *
 *   pg_error_t err;
 *   pg_conn_t *c = pg_connect(NULL, &err);          // $PICOGRAD_URL or the default socket
 *   int64_t shape[2] = {2, 3};
 *   float x[6] = {1, 2, 3, 4, 5, 6};
 *   uint64_t h;
 *   if (pg_put(c, PG_FLOAT32, 2, shape, x, &h) != 0)
 *       fprintf(stderr, "%s\n", pg_strerror(c));    // "code: message"
 *   pg_tensor_t t;
 *   pg_get(c, h, &t);                               // t.data holds 6 floats
 *   pg_tensor_release(&t);
 *   pg_free(c, h);
 *   pg_close(c);
 *
 * Every call that talks to the daemon returns 0 or a negative error code (-PG_E*, see
 * picograd_codes.h); pg_last_error() then holds the code and the daemon's message. A lost
 * connection is -PG_EDISCONNECTED, never a crash or a SIGPIPE; pg_reconnect() opens a new session.
 * A connection is not thread-safe: use one per thread.
 */
#ifndef PICOGRAD_H
#define PICOGRAD_H

#include "picograd_codes.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define PG_API __attribute__((visibility("default")))
#else
#define PG_API
#endif

#define PG_MAX_RANK 8

typedef struct pg_conn pg_conn_t;

/* An error: a code from PG_ERROR_MAP and a message naming what was wrong. */
typedef struct {
    int code;           /* a pg_error_code_t (positive); 0 when there is no error */
    char message[256];  /* NUL-terminated */
} pg_error_t;

/* A tensor fetched with pg_get(). */
typedef struct {
    pg_dtype_t dtype;
    int rank;
    int64_t shape[PG_MAX_RANK];
    uint64_t numel;     /* product of shape */
    uint64_t nbytes;    /* numel * item size */
    void *data;         /* C-contiguous, 64-byte aligned; NULL when nbytes == 0 */
    void *frame_;       /* the reply buffer that holds data (private) */
} pg_tensor_t;

/* Daemon counters returned by pg_stats(). */
typedef struct {
    uint64_t sessions;          /* open sessions, all clients */
    uint64_t tensors;           /* live tensors, all sessions */
    uint64_t bytes_in_use;      /* bytes reserved against the daemon's memory budget */
    uint64_t bytes_peak;        /* the most ever reserved */
    uint64_t max_memory;        /* the budget */
    uint64_t requests;          /* requests answered since start */
    uint64_t session_tensors;   /* this session's tensors */
    uint64_t session_bytes;     /* this session's tensor bytes */
    uint64_t runs;              /* `run` requests executed since start, failed ones included (0,
                                 * like all run_*, when the daemon does not report them) */
    double run_seconds;         /* their time on the daemon's workers (PROTOCOL.md `stats`) */
    double run_prepare_seconds; /* of which lowering the request's graph */
    double run_plan_seconds;    /* of which the plan cache lookup, or a plan's build and compile */
    double run_execute_seconds; /* of which the steps and the outputs */
} pg_stats_t;

/* Connects to url ("unix:///path" or "tcp://host:port"; NULL: $PICOGRAD_URL, else the first
 * existing socket of $XDG_RUNTIME_DIR/picogradd.sock, /run/picogradd/picogradd.sock,
 * /tmp/picogradd-$UID.sock; PROTOCOL.md section 1) and says hello, with $PICOGRAD_TOKEN as the
 * token when it is set. Returns a new connection (free with pg_close()), or NULL with *err filled
 * when err is not NULL (-PG_EUNAUTHORIZED: the listener needs a token and got none or a wrong
 * one). */
PG_API pg_conn_t *pg_connect(const char *url, pg_error_t *err);
/* pg_connect with an explicit token (borrowed; copied, and sent again by pg_reconnect): the
 * daemon's --token-file content, which TCP listeners of a daemon with a token file require in
 * hello. Surrounding white space is ignored. NULL: $PICOGRAD_TOKEN, or none when unset. */
PG_API pg_conn_t *pg_connect_token(const char *url, const char *token, pg_error_t *err);
/* Closes the old socket (its session and tensors are gone) and connects again to the same URL. */
PG_API int pg_reconnect(pg_conn_t *c);
/* Closes the connection; the daemon frees everything the session owned. NULL is ignored. */
PG_API void pg_close(pg_conn_t *c);

/* Where this connection's puts store tensors and its runs execute from now on: "cpu" (the
 * default), "cuda" (the daemon's first GPU) or "cuda:N" (copied; NULL: the CPU). The daemon
 * checks it at the next put or run: a device it does not have is PG_ENO_DEVICE there. Returns 0,
 * or PG_EBAD_REQUEST for a string too long to be a device. */
PG_API int pg_set_device(pg_conn_t *c, const char *device);

/* Round trip with no effect. */
PG_API int pg_ping(pg_conn_t *c);
/* Stores a C-contiguous tensor of rank 0..8 in the session; *handle names it. data is read only. */
PG_API int pg_put(pg_conn_t *c, pg_dtype_t dtype, int rank, const int64_t *shape,
                  const void *data, uint64_t *handle);
/* Fetches a tensor into *out; release it with pg_tensor_release(). */
PG_API int pg_get(pg_conn_t *c, uint64_t handle, pg_tensor_t *out);
/* Frees a tensor of the session. */
PG_API int pg_free(pg_conn_t *c, uint64_t handle);
/* Reads the daemon's counters. */
PG_API int pg_stats(pg_conn_t *c, pg_stats_t *out);

/* Whether the daemon serves op: a request op (hello's `ops`, e.g. "explain") or a graph node op
 * (hello's `node_ops`, e.g. "grad" once autodiff is in). Returns 1 or 0. Costs no round trip:
 * the lists are the ones received at pg_connect() or the last pg_reconnect(). */
PG_API int pg_has_op(const pg_conn_t *c, const char *op);
/* Releases what pg_get() stored in t (t itself is the caller's). */
PG_API void pg_tensor_release(pg_tensor_t *t);
/* The error of the last failed call on c. */
PG_API const pg_error_t *pg_last_error(const pg_conn_t *c);
/* The last error as "code: message" (valid until the next call on c). */
PG_API const char *pg_strerror(pg_conn_t *c);
/* The wire name of an error code ("unknown_handle"); accepts negative codes too. */
PG_API const char *pg_error_name(int code);
/* The wire name of a dtype ("float32"), or NULL. */
PG_API const char *pg_dtype_name(pg_dtype_t dtype);
/* The item size of a dtype in bytes, or 0. */
PG_API size_t pg_dtype_size(pg_dtype_t dtype);

/* =============================================================================================
 * Graphs: the `run` op (PROTOCOL.md section 6)
 *
 * A graph is a list of nodes in topological order; each builder call appends one node and returns
 * its index, which later nodes name as an input. Nothing is sent until pg_run(), and a graph can
 * be run any number of times, on any connection whose session owns its input handles.
 *
 *   pg_graph_t *g = pg_graph_new();
 *   int a = pg_graph_input(g, ha), b = pg_graph_input(g, hb);
 *   int ab = pg_graph_op(g, "matmul", (int[]){a, b}, 2, NULL, 0);
 *   int y = pg_graph_op(g, "relu", &ab, 1, NULL, 0);
 *   pg_attr_t dim = pg_attr_int("dim", -1);
 *   int p = pg_graph_op(g, "softmax", &y, 1, &dim, 1);
 *   pg_output_t outs[2] = {{y, 1}, {p, 0}};   // keep y in the daemon, return p's data
 *   pg_result_t res[2];
 *   if (pg_run(c, g, outs, 2, res) == 0) {     // res[0].handle, res[1].tensor.data
 *       pg_free(c, res[0].handle);
 *       pg_tensor_release(&res[1].tensor);
 *   }
 *   pg_graph_free(g);
 *
 * Builder calls check what the client can check alone (input indices, attribute kinds, dtype,
 * shape, the node and input limits) and add nothing on failure; the daemon checks the rest when
 * the graph runs, and its error message names the node: "node 3 (add): shapes [2, 3] and [4] do
 * not broadcast". A graph is not thread-safe; build it from one thread.
 * =========================================================================================== */

#define PG_GRAPH_MAX_NODES 65536 /* nodes in one graph (the protocol's limit) */
#define PG_GRAPH_MAX_INPUTS 1024 /* inputs of one node */
#define PG_NONE INT64_MIN        /* a nil entry in a PG_ATTR_SLICES list */

typedef struct pg_graph pg_graph_t;

/* The kind of an attribute value, i.e. the msgpack type it travels as. */
typedef enum {
    PG_ATTR_INT,    /* i: an integer */
    PG_ATTR_FLOAT,  /* f: a float (msgpack float 64) */
    PG_ATTR_BOOL,   /* i: false when 0, true otherwise */
    PG_ATTR_STR,    /* s: a NUL-terminated UTF-8 string */
    PG_ATTR_INTS,   /* ints[0..nints): an array of integers (a shape, dims, a padding) */
    PG_ATTR_NIL,    /* nil ("no bound" for clamp's min or max) */
    PG_ATTR_SLICES, /* ints[0..3*nints): nints [start, stop, step] arrays; PG_NONE packs nil */
    PG_ATTR_COUNT
} pg_attr_kind_t;

/* One attribute of a node: a name and a tagged value. Every pointer is borrowed by the builder
 * call only (the value is packed at once). Use the pg_attr_*() constructors below. */
typedef struct {
    const char *name;     /* the attribute's key: "dim", "shape", "reduction", ... */
    pg_attr_kind_t kind;  /* which of the fields below holds the value */
    int64_t i;            /* PG_ATTR_INT, PG_ATTR_BOOL */
    double f;             /* PG_ATTR_FLOAT */
    const char *s;        /* PG_ATTR_STR */
    const int64_t *ints;  /* PG_ATTR_INTS, PG_ATTR_SLICES */
    int nints;            /* PG_ATTR_INTS: entries of ints; PG_ATTR_SLICES: triples */
} pg_attr_t;

/* Constructors, for arrays such as
 *   pg_attr_t attrs[] = {pg_attr_ints("dims", dims, 2), pg_attr_bool("keepdim", 1)};
 * (positional initializers, so the header stays warning-free in C and C++). */
static inline pg_attr_t pg_attr_int(const char *name, int64_t v) {
    pg_attr_t a = {name, PG_ATTR_INT, v, 0.0, NULL, NULL, 0};
    return a;
}
static inline pg_attr_t pg_attr_float(const char *name, double v) {
    pg_attr_t a = {name, PG_ATTR_FLOAT, 0, v, NULL, NULL, 0};
    return a;
}
static inline pg_attr_t pg_attr_bool(const char *name, int v) {
    pg_attr_t a = {name, PG_ATTR_BOOL, v != 0, 0.0, NULL, NULL, 0};
    return a;
}
static inline pg_attr_t pg_attr_str(const char *name, const char *v) {
    pg_attr_t a = {name, PG_ATTR_STR, 0, 0.0, v, NULL, 0};
    return a;
}
static inline pg_attr_t pg_attr_ints(const char *name, const int64_t *v, int n) {
    pg_attr_t a = {name, PG_ATTR_INTS, 0, 0.0, NULL, v, n};
    return a;
}
static inline pg_attr_t pg_attr_nil(const char *name) {
    pg_attr_t a = {name, PG_ATTR_NIL, 0, 0.0, NULL, NULL, 0};
    return a;
}
/* v holds n triples {start, stop, step}; PG_NONE stands for a nil (default) entry. */
static inline pg_attr_t pg_attr_slices(const char *name, const int64_t *v, int n) {
    pg_attr_t a = {name, PG_ATTR_SLICES, 0, 0.0, NULL, v, n};
    return a;
}

/* An output of a run: a node index, and whether its result stays in the daemon. */
typedef struct {
    int node; /* index returned by a builder call */
    int keep; /* nonzero: store as a new handle; 0: return the data inline */
} pg_output_t;

/* One output's result, in the order the outputs were requested. */
typedef struct {
    uint64_t handle;    /* kept outputs: the new handle (free with pg_free()); 0 when inline */
    pg_tensor_t tensor; /* dtype, rank, shape, numel, nbytes always; data only when inline:
                         * 64-byte aligned, owned by this result (pg_tensor_release()) */
} pg_result_t;

/* Returns a new empty graph (free with pg_graph_free()), or NULL when out of memory. */
PG_API pg_graph_t *pg_graph_new(void);
/* Frees a graph. NULL is ignored. Results of earlier runs are not affected. */
PG_API void pg_graph_free(pg_graph_t *g);
/* The error of the last failed builder call on g (code 0 when the last call succeeded). */
PG_API const pg_error_t *pg_graph_last_error(const pg_graph_t *g);
/* The number of nodes in g. */
PG_API int pg_graph_size(const pg_graph_t *g);

/* Adds an `input` node: the session tensor named by handle (checked when the graph runs).
 * Returns the node index (>= 0) or a negative -PG_E* code. */
PG_API int pg_graph_input(pg_graph_t *g, uint64_t handle);
/* Adds a `const` node holding a copy of a C-contiguous tensor of rank 0..8 (data is read now,
 * may be NULL when the tensor is empty). Returns the node index or a negative code. */
PG_API int pg_graph_const(pg_graph_t *g, pg_dtype_t dtype, int rank, const int64_t *shape,
                          const void *data);
/* Adds a weak scalar: a `const` with a float `value` and no dtype, which behaves like a Python
 * float (it keeps a float tensor's dtype and turns an integer or bool tensor into float32). For
 * a Python-int scalar use `pg_attr_t v = pg_attr_int("value", 3);` and
 * `pg_graph_op(g, "const", NULL, 0, &v, 1)`. Returns the node index or a negative code. */
PG_API int pg_graph_scalar(pg_graph_t *g, double value);
/* Adds a node running op (a name from PROTOCOL.md section 6) on inputs[0..ninputs) (earlier node
 * indices; NULL when ninputs is 0) with attrs[0..nattrs) (NULL when nattrs is 0). Every pointer
 * is borrowed for the call only. The names "op" and "in" and repeated names are refused.
 * Returns the node index or a negative code; the daemon checks the op and its attributes. */
PG_API int pg_graph_op(pg_graph_t *g, const char *op, const int *inputs, int ninputs,
                       const pg_attr_t *attrs, int nattrs);

/* Adds a `grad` node: the gradient d(sum(y * gy))/dx, with x's shape and dtype (PROTOCOL.md,
 * `grad`). y and x are node indices; gy is the output gradient's node, or -1 for none (then y
 * must hold exactly one element, a loss). Every grad node of a graph with the same (y, gy)
 * shares one reverse pass in the daemon. Returns the node index or a negative code. */
PG_API int pg_graph_grad(pg_graph_t *g, int y, int x, int gy);
/* Adds an `assign` node: when the run succeeds, session handle `handle` holds the result of node
 * `value` (which must have the handle's shape and dtype exactly). Every `input` of the handle in
 * the same run reads the old value; a failed run assigns nothing (PROTOCOL.md, `assign`). The
 * node's own result is the value, so it may be an output or an input of later nodes; it runs
 * even when no output names it, and a graph with an assign may run with no outputs at all
 * (pg_run(c, g, NULL, 0, NULL)). Returns the node index or a negative code. */
PG_API int pg_graph_assign(pg_graph_t *g, uint64_t handle, int value);

/*
 * Runs g in c's session and fills results[0..nouts) in the order of outs[0..nouts). g is
 * borrowed and unchanged. Kept outputs get a new handle and their tensor's dtype and shape (data
 * NULL); inline outputs get their data in a buffer each result owns: the largest inline output
 * takes the reply buffer itself when its bytes lie 64-byte aligned in it (no copy), every other
 * is copied into its own 64-byte aligned allocation. Release every result's tensor with
 * pg_tensor_release() (harmless for kept ones) and free kept handles with pg_free().
 * Returns 0, or a negative code with pg_last_error() holding the daemon's message ("node 3
 * (add): ..."); on failure results are zeroed and no handle is left behind.
 */
PG_API int pg_run(pg_conn_t *c, const pg_graph_t *g, const pg_output_t *outs, int nouts,
                  pg_result_t *results);

#ifdef __cplusplus
}
#endif
#endif /* PICOGRAD_H */
