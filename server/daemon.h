/*
 * daemon.h - the state shared by the modules of picogradd: its configuration, its loop, its
 * listeners and connections, and the request type that flows between them.
 *
 * A request's way through the daemon:
 *
 *   conn.c   bytes -> frame (proto_reader) -> checked + decoded -> req_t appended to the
 *            connection's queue, in arrival order
 *   conn.c   the queue's head runs: ops that only touch bookkeeping run right there on the loop
 *            thread; compute ops go to a worker (pool.c) and the queue waits for them
 *   ops.c    the op's handler packs the reply into the request's buffer
 *   conn.c   replies are queued in request order and written with one writev per batch
 *
 * Everything here except the pool and the counters is touched by the loop thread only.
 */
#ifndef PG_DAEMON_H
#define PG_DAEMON_H

#include "../protocol/proto.h"
#include "auth.h"
#include "limits.h"
#include "pool.h"
#include "session.h"

#include <stdatomic.h>
#include <uv.h>

#define PG_SERVER_VERSION "0.1.0"

/* Command-line configuration (main.c fills it; read-only afterwards). */
typedef struct {
    const char *listen[LIM_MAX_LISTENERS]; /* URLs to listen on */
    int nlisten;
    int threads;              /* compute workers */
    uint64_t max_frame;       /* --max-frame */
    uint64_t max_memory;      /* --max-memory */
    uint64_t max_inflight;    /* --max-inflight */
    uint64_t max_unsent;      /* --max-unsent */
    uint64_t max_sessions;    /* --max-sessions */
    uint64_t max_session_memory; /* --max-session-memory: tensor bytes one session may hold */
    uint32_t max_nodes;       /* --max-nodes: nodes in one run or explain graph */
    double idle_timeout;      /* --idle-timeout, seconds; 0: off */
    double request_timeout;   /* --request-timeout, seconds; 0: off */
    double shutdown_timeout;  /* --shutdown-timeout, seconds */
    uint64_t phys_memory;     /* physical memory, for hello */
    bool jit;                 /* --jit on|off: compile fused kernels (default on) */
    const char *cc;           /* --cc: the C compiler command for kernels (default "cc") */
    const char *cache_dir;    /* --cache-dir: where compiled kernels are kept between runs */
    uint32_t prepared_cache;  /* --prepared-cache: prepared run requests kept (0: none) */
    const char *token_file;   /* --token-file: the token TCP listeners require, or NULL */
    bool insecure;            /* --insecure: TCP listeners may run without a token */
    uint32_t socket_mode;     /* --socket-mode: the mode of Unix socket files created (0600) */
} cfg_t;

struct conn;

/* One request, from its frame to its reply. */
typedef struct req {
    pool_job_t job;           /* first member: the pool hands it back to us */
    struct req *next;         /* next in the connection's queue */
    struct conn *conn;        /* the connection it arrived on (which outlives it) */
    sess_t *sess;             /* that connection's session */
    void *block;              /* the frame buffer (mem_data_alloc), owned; NULL once adopted */
    uint64_t block_bytes;     /* its reserved size */
    const uint8_t *body;      /* the frame body inside block */
    uint32_t len;             /* body bytes */
    msgpack_unpacked msg;     /* the decoded body (its zone is owned) */
    const msgpack_object *args; /* the request map inside msg */
    bool has_id;              /* id was readable */
    uint64_t id;              /* the request id */
    int op;                   /* index into the op table, -1 when none */
    bool fatal;               /* a framing error: close the connection after replying */
    int status;               /* 0, or -PG_E* with err filled */
    proto_err_t err;          /* the error to reply with when status != 0 */
    msgpack_sbuffer out;      /* the reply frame: 4 reserved length bytes, then the map */
    tensor_t *tail;           /* optional: a tensor whose bytes follow out (a reference) */
    const uint8_t *tail_data; /* the bytes that follow out on the wire */
    uint64_t tail_len;        /* how many */
    atomic_int cancel;        /* why the request must stop (req_cancel_t): the first reason
                               * set wins; workers poll it */
    double timeout;           /* its time limit in seconds (0: none), chosen when it is
                               * handed to a worker: --request-timeout or its own `timeout` */
    _Atomic uint64_t started_ns; /* uv_hrtime() when a worker began it; 0 before */
    int early_fd;             /* >= 0: its worker may send the reply on this socket itself
                               * (conn.c, "Early replies"); -1: the loop thread sends it */
    uint64_t early_sent;      /* reply bytes the worker sent (0 when it sent none) */
    bool sealed;              /* the reply frame is complete: error packed, length filled */
} req_t;

/* Why a request running on a worker must stop (req_t.cancel). */
typedef enum {
    REQ_CANCEL_NONE = 0,
    REQ_CANCEL_CLOSE,         /* its connection is gone, or the shutdown timeout passed */
    REQ_CANCEL_TIMEOUT,       /* it ran past its time limit */
} req_cancel_t;

typedef struct listener {
    union {
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;                      /* first member: callbacks cast back to the listener */
    struct daemon *d;
    proto_url_t url;          /* where it listens (a TCP port 0 is replaced by the real one) */
    bool is_unix;
    bool inited;              /* the handle was initialised: it must be closed with uv_close */
    bool inherited;           /* a socket-activation fd: its socket file is not ours to remove */
    bool needs_token;         /* its connections must send the token in hello (TCP + token) */
} listener_t;

typedef struct daemon {
    cfg_t cfg;
    uv_loop_t *loop;
    pool_t pool;                          /* compute workers */
    listener_t *listeners[LIM_MAX_LISTENERS];
    int nlisteners;
    struct conn *conns;                   /* every open connection (doubly linked) */
    uint64_t nconns;
    uint64_t next_session;                /* the next session number */
    bool stopping;                        /* SIGTERM seen: no new connections or frames */
    bool force;                           /* the shutdown timeout passed: close everything */
    bool done;                            /* the last handles are being closed */
    uv_signal_t sigint, sigterm;
    uv_timer_t shutdown_timer;
    uint64_t start_ns;                    /* uv_hrtime() at start, for uptime */
    auth_token_t token;                   /* --token-file's token (token.set false: none) */
} daemon_t;

/* ---- main.c ---------------------------------------------------------------------------------*/

/* Finishes the shutdown once the last connection is gone (no-op unless stopping). */
void daemon_check_done(daemon_t *d);

/* ---- listen.c -------------------------------------------------------------------------------*/

/* Opens a listener for a URL; logs "listening on URL" (with the real port for tcp port 0).
 * Returns 0 or a negative libuv error (already logged). */
int listen_open(daemon_t *d, const char *url);
/* Serves the sockets systemd (or any launcher speaking its protocol) passed: when LISTEN_PID is
 * this process and LISTEN_FDS is N >= 1, fds 3..3+N-1, each a listening Unix or TCP stream
 * socket. Unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES (children such as the C compiler must
 * not see them) and marks the fds close-on-exec. Returns how many listeners it added (0 when
 * nothing was passed), or a negative libuv error, already logged (a TCP socket without a token
 * and without --insecure is one). */
int listen_inherit(daemon_t *d);
/* Whether url is a TCP URL, which needs --token-file or --insecure. */
bool listen_is_tcp_url(const char *url);
/* Closes every listener and removes the Unix socket files it created (not inherited ones). */
void listen_close_all(daemon_t *d);

/* ---- conn.c ---------------------------------------------------------------------------------*/

/* Accepts a pending connection on a listener and starts reading it as a new session. */
void conn_accept(listener_t *l);
/* Begins a graceful stop of every connection: stop reading, drop half-received frames, answer
 * what was fully received, then close. */
void conn_stop_all(daemon_t *d);
/* Closes every connection now (the shutdown timeout passed); in-flight work is cancelled. */
void conn_close_all(daemon_t *d);
/* Called by the pool (on the loop thread) when a request's compute has finished. */
void conn_job_done(pool_job_t *job);
/* Any thread: returns 0 while r may go on, else fills err with why it was cancelled (timeout:
 * the limit it ran past; a closing session: internal) and returns that negative PG_E*. A
 * compute handler calls it between steps and whenever a step fails (an interrupted loop leaves
 * garbage behind it that a later check could misreport). */
int req_check_cancel(const req_t *r, proto_err_t *err);

/* ---- ops.c ----------------------------------------------------------------------------------*/

typedef enum { OPS_ON_LOOP, OPS_ON_WORKER } ops_where_t;

/* XX(name, where it runs). A handler only touches bookkeeping when it runs ON_LOOP. */
#define PG_REQ_OP_MAP(XX)                                                                          \
    XX(hello, OPS_ON_LOOP)                                                                         \
    XX(ping, OPS_ON_LOOP)                                                                          \
    XX(put, OPS_ON_LOOP)                                                                           \
    XX(get, OPS_ON_LOOP)                                                                           \
    XX(free, OPS_ON_LOOP)                                                                          \
    XX(stats, OPS_ON_LOOP)                                                                         \
    XX(sleep, OPS_ON_WORKER)                                                                       \
    XX(run, OPS_ON_WORKER)                                                                         \
    XX(explain, OPS_ON_WORKER)

typedef enum {
#define XX(name, where) OPS_##name,
    PG_REQ_OP_MAP(XX)
#undef XX
    OPS_COUNT
} ops_id_t;

/* Returns the op index of a wire name, or -1. */
int ops_lookup(const char *name, size_t len);
/* Returns the wire name of an op index. */
const char *ops_name(int op);
/* Returns where an op runs. */
ops_where_t ops_where(int op);
/* True when CPU runs use compiled kernels: --jit on and a working C compiler (else every
 * primitive is interpreted). */
bool ops_jit_on(const daemon_t *d);
/* Runs a decoded request's op: packs a success reply into req->out, or returns -PG_E* with
 * req->err filled (the caller then packs the error reply). */
int ops_execute(daemon_t *d, req_t *req, msgpack_packer *pk);

/* ---- stats.c --------------------------------------------------------------------------------*/

/* Counts one answered request of op (-1 when it had no valid op) with error code (0 for ok). */
void stats_count(int op, int code);
/* Packs the "ops", "errors" maps and "requests" key/value pairs (3 map entries). */
int stats_pack_counters(msgpack_packer *pk);

/* XX(name): the phases of a `run` whose time is kept, in order (run.c measures them). prepare:
 * reading the request, lowering and the graph passes; plan: the schedule (plan cache lookup, or
 * building and compiling a plan); execute: the steps and the outputs' materialization. */
#define STATS_RUN_PHASE_MAP(XX) XX(prepare) XX(plan) XX(execute)

typedef enum {
#define XX(name) STATS_RUN_##name,
    STATS_RUN_PHASE_MAP(XX)
#undef XX
    STATS_RUN_PHASE_COUNT
} stats_run_phase_t;

/* Counts one `run` request (failed ones too) that took total_ns on its worker, of which
 * phase_ns[i] in phase i (a failed run: in the phases up to the one that failed). Any thread. */
void stats_count_run(const uint64_t phase_ns[STATS_RUN_PHASE_COUNT], uint64_t total_ns);
/* Packs the "runs" key and its map: count, seconds and <phase>_seconds (1 map entry). */
int stats_pack_runs(msgpack_packer *pk);

/* The daemon, for signal and timer callbacks. */
extern daemon_t *g_daemon;

#endif /* PG_DAEMON_H */
