/*
 * limits.h - every limit picogradd enforces, in one place.
 *
 * Each limit protects the daemon from one way a client (careless or hostile) could exhaust it.
 * Each has a default that a normal client never meets, a command-line flag to change it, and a
 * compile-time ceiling so that a typo on the command line cannot switch the protection off.
 * Checks happen before allocation: a frame's length is checked before a byte of its body is kept.
 */
#ifndef PG_LIMITS_H
#define PG_LIMITS_H

#include "../protocol/proto.h"

/* Largest frame body accepted (--max-frame). Bounds one request's buffer. A frame over it is a
 * framing error: one bad_frame reply, then the connection is closed, nothing allocated. The
 * 4-byte length prefix cannot express more than 4 GiB - 1. */
#define LIM_MAX_FRAME_DEFAULT (1ull << 30)
#define LIM_MAX_FRAME_CEILING 0xffffffffull

/* Bytes of tensors and buffered frames the daemon holds for all sessions together
 * (--max-memory). Default: three quarters of physical memory, computed at start. A frame or a
 * tensor that would pass it is refused with out_of_memory and the connection stays usable. */
#define LIM_MAX_MEMORY_FLOOR (1ull << 20)

/* Requests received on one connection and not yet answered (--max-inflight). Past it the daemon
 * stops reading that connection until replies catch up: pipelining is back-pressured, never
 * refused, and a client cannot queue unbounded work. */
#define LIM_MAX_INFLIGHT_DEFAULT 1024
#define LIM_MAX_INFLIGHT_CEILING 1000000

/* Reply bytes written to a connection's socket but not yet taken by the peer (--max-unsent).
 * A client that does not read its replies stops being read from, so it cannot grow the daemon's
 * memory without bound. */
#define LIM_MAX_UNSENT_DEFAULT (256ull << 20)

/* Open sessions (connections) at once (--max-sessions). One more is answered with too_large and
 * closed. */
#define LIM_MAX_SESSIONS_DEFAULT 1024
#define LIM_MAX_SESSIONS_CEILING 1000000

/* Storage bytes of the tensors one session holds by handle (--max-session-memory): what its
 * puts, its runs' kept outputs and its assigns leave behind. It keeps one client from taking
 * the whole --max-memory budget from the others. A put, or a run whose kept outputs and
 * assigns would pass it, is refused with out_of_memory (the message names the quota, the
 * session's usage and the request's size) and the connection stays usable; a refused run
 * commits nothing. A run's temporaries, its inline outputs and buffered frames count against
 * --max-memory only: they are gone when the request is answered. A tensor held under two
 * handles counts twice. Default: the --max-memory budget (no separate quota). */
#define LIM_MAX_SESSION_MEMORY_FLOOR (1ull << 10)

/* Nodes in one `run` or `explain` graph as the client sends it (--max-nodes). Bounds the work
 * of lowering and planning one request (lowering may add a bounded factor more primitives,
 * GRAPH_MAX_PRIM_NODES). A larger graph is refused with too_large naming the count and limit.
 * The default is the ceiling, the protocol's own limit (GRAPH_MAX_NODES, graph/graph.h):
 * the flag can only lower it. */
#define LIM_MAX_NODES_DEFAULT 65536
#define LIM_MAX_NODES_CEILING 65536

/* Seconds a connection may stay idle, with no request queued or running and no byte read or
 * written, before the daemon closes it (--idle-timeout; logged). Default 0: off. A session
 * holds state (a model's parameters, an optimizer's moments) that a client may come back to
 * after any pause, a notebook's for instance, so closing quiet sessions is the operator's
 * choice; a deployment that serves untrusted clients should set it. */
#define LIM_IDLE_TIMEOUT_DEFAULT 0.0
#define LIM_IDLE_TIMEOUT_CEILING 2592000.0 /* 30 days */

/* Seconds one compute request (run, explain, sleep) may run on a worker before it is
 * cancelled with a `timeout` reply (--request-timeout; counted from when a worker starts it,
 * not while it waits for one). The run is abandoned between steps, and a long single step
 * (an elementwise loop, a reduction, a compiled kernel, a matrix product) between chunks of at
 * most LIM_CANCEL_CHUNK_WORK element-steps or LIM_CANCEL_GEMM_WORK multiply-adds; nothing it
 * would have kept or assigned is committed and the connection stays usable. A request may ask
 * for a shorter limit with its own `timeout` field, never a longer one. Default 0: off. A
 * training step or a large product can legitimately take minutes, and the daemon cannot tell
 * such a run from a runaway one; the operator who knows the workload sets the bound. */
#define LIM_REQUEST_TIMEOUT_DEFAULT 0.0
#define LIM_REQUEST_TIMEOUT_CEILING 604800.0 /* a week */
/* The largest piece of a loop between two checks of the cancel flag, in element-steps (about
 * a millisecond or two on one core), and of a matrix product, in multiply-adds (about 0.2 s on
 * one core: a product is split only by rows or columns of the result, each piece packs the
 * other operand again, so pieces stay large). kernels/ref/par.c and matmul.c read them. */
#define LIM_CANCEL_CHUNK_WORK (1ull << 21)
#define LIM_CANCEL_GEMM_WORK (1ull << 34)

/* Compute worker threads (--threads). Default: the number of online CPUs. */
#define LIM_THREADS_CEILING 1024

/* Seconds granted at SIGTERM to requests already received (--shutdown-timeout). */
#define LIM_SHUTDOWN_TIMEOUT_DEFAULT 10.0

/* Listeners on one daemon (--listen is repeatable). */
#define LIM_MAX_LISTENERS 16

/* The longest token a --token-file may hold, in bytes. Fixed, not a flag: the constant-time
 * comparison (server/auth.c) reads this many bytes on every hello, whatever the token's length,
 * and a hello whose token is longer is refused without reading it. 1 KiB is far more than the
 * 32-64 random bytes a token needs. */
#define LIM_MAX_TOKEN_BYTES 1024

/* The largest frame a connection that must authenticate (a TCP listener with --token-file) may
 * send before its hello has succeeded. Fixed, not a flag: a hello is a few hundred bytes, and
 * without this bound a client that knows no token could still make the daemon reserve
 * --max-frame bytes (1 GiB by default) per connection. A longer frame is answered with
 * unauthorized and closes the connection; after a successful hello --max-frame applies. */
#define LIM_PREAUTH_FRAME (64u * 1024)

/* The longest a `sleep` request may hold a worker, in seconds. */
#define LIM_MAX_SLEEP_SECONDS 60.0

/* Prepared `run` requests kept for reuse by later runs of the same request (--prepared-cache N,
 * entries; 0 turns the cache off; server/prepcache.c). An entry holds a lowered graph (~450
 * bytes a primitive, internal memory outside --max-memory) and the request's canonical form, so
 * it is bounded three ways: a graph over LIM_PREPARED_MAX_PRIMS primitives or a request over
 * LIM_PREPARED_MAX_WORDS canonical words is prepared every time, never cached, and the cache
 * evicts its least recently used entries past LIM_PREPARED_TOTAL_PRIMS primitives in all
 * (~45 MB). */
#define LIM_PREPARED_CACHE_DEFAULT 64
#define LIM_PREPARED_CACHE_CEILING 4096
#define LIM_PREPARED_MAX_PRIMS 20000
#define LIM_PREPARED_TOTAL_PRIMS 100000
#define LIM_PREPARED_MAX_WORDS (1u << 16)

#if LIM_PREAUTH_FRAME < 2 * LIM_MAX_TOKEN_BYTES
#error "a hello with the longest token must fit a frame sent before authentication"
#endif
#if LIM_MAX_FRAME_DEFAULT > LIM_MAX_FRAME_CEILING
#error "the default frame limit must fit the 4-byte length prefix"
#endif
#if LIM_MAX_INFLIGHT_DEFAULT > LIM_MAX_INFLIGHT_CEILING
#error "LIM_MAX_INFLIGHT_DEFAULT over its ceiling"
#endif
#if LIM_MAX_SESSIONS_DEFAULT > LIM_MAX_SESSIONS_CEILING
#error "LIM_MAX_SESSIONS_DEFAULT over its ceiling"
#endif
#if LIM_MAX_NODES_DEFAULT > LIM_MAX_NODES_CEILING
#error "LIM_MAX_NODES_DEFAULT over its ceiling"
#endif
#if LIM_PREPARED_CACHE_DEFAULT > LIM_PREPARED_CACHE_CEILING
#error "LIM_PREPARED_CACHE_DEFAULT over its ceiling"
#endif
#if LIM_PREPARED_MAX_PRIMS > LIM_PREPARED_TOTAL_PRIMS
#error "one cacheable prepared graph must fit the prepared cache"
#endif

#endif /* PG_LIMITS_H */
