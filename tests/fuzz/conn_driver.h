/*
 * conn_driver.h - drives server/conn.c's request path without a socket, for the request and
 * graph harnesses (fuzz_request.c, fuzz_graph.c).
 *
 * conn.c is included here, not linked: its request functions (req_new, req_decode, req_free,
 * conn_feed, conn_finish_head, conn_release) are static, and including the file exercises exactly
 * the daemon's code, with nothing copied that could drift from it. Only the libuv parts are left
 * out: no handle is ever opened, reads are simulated the way on_read does them, and the queue is
 * pumped the way conn_pump does, but compute ops run inline on the fuzzing thread (req_run_job,
 * what a pool worker calls) and replies are packed and dropped instead of written.
 *
 * Input: the bytes one connection receives. The first two bytes seed the read sizes (1 to 97
 * bytes, now and then up to 8 KiB: "derive chunking from the input"); the rest is the stream of
 * frames (a 4-byte big-endian length, then a msgpack map). Each input is one session of a fresh
 * connection; at its end the connection closes as at EOF and every byte of the memory budget
 * and every counted internal allocation must have come back.
 *
 * Mutation: a byte mutated inside a frame would make its length prefix wrong and the rest of the
 * stream garbage, so most mutations (LLVMFuzzerCustomMutator below) pick one frame, mutate its
 * body with libFuzzer's own mutators and rewrite its length, or repeat a frame (a `run` seen
 * twice hits the prepared-run cache); one in four mutates the raw stream, framing included.
 *
 * Bounds, so that no input can allocate much or run long: --max-memory FZ_MEMORY (every tensor
 * and frame is reserved against it, and graph_add refuses any node larger), --max-frame
 * FZ_MAX_FRAME, one interpreter thread, no JIT (no compiler runs), and `sleep` runs cancelled
 * (its fields are checked, it returns at once).
 *
 * The including file defines FZ_EXEC_GRAPHS: 1 runs `run` and `explain` (lowering, autodiff, the
 * passes, planning and the interpreter), 0 answers them unexecuted (decoding only), which keeps
 * the request harness fast.
 */
#include "../../server/conn.c"

#include "../../kernels/ref/ref.h"
#include "../../server/device.h"
#include "../../server/plan.h"
#include "../../server/prepcache.h"

#include <stdio.h>
#include <stdlib.h>

#ifndef FZ_EXEC_GRAPHS
#error "define FZ_EXEC_GRAPHS before including conn_driver.h"
#endif

#define FZ_MEMORY (1u << 20)    /* --max-memory: 1 MiB */
#define FZ_MAX_FRAME (1u << 16) /* --max-frame: 64 KiB, so oversized lengths are reachable */
#define FZ_INFLIGHT 64          /* --max-inflight: past it the daemon would stop reading */

daemon_t *g_daemon;
static daemon_t fz_daemon;
static uint64_t fz_live_base; /* pg_malloc_live() between inputs */
static bool fz_verbose;       /* $PG_FUZZ_VERBOSE: print each request's op and outcome */

/* main.c's, called by conn_release: nothing waits for the last connection here. */
void daemon_check_done(daemon_t *d) { (void)d; }

#define FZ_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "conn_driver: check failed at %s:%d: %s\n", __FILE__, __LINE__,       \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    daemon_t *d = &fz_daemon;
    d->cfg.threads = 1;
    d->cfg.max_frame = FZ_MAX_FRAME;
    d->cfg.max_memory = FZ_MEMORY;
    d->cfg.max_inflight = FZ_INFLIGHT;
    d->cfg.max_unsent = LIM_MAX_UNSENT_DEFAULT;
    d->cfg.max_sessions = 1;
    d->cfg.phys_memory = FZ_MEMORY;
    d->cfg.jit = false;
    d->cfg.prepared_cache = 8;
    d->cfg.max_nodes = GRAPH_MAX_NODES;
    d->cfg.max_session_memory = FZ_MEMORY;
    g_daemon = d;
    log_set_level(LOG_ERROR);
    mem_init(FZ_MEMORY);
    ref_set_threads(1);
    dev_init(NULL);
    prepcache_init(d->cfg.prepared_cache);
    d->start_ns = uv_hrtime();
    fz_live_base = pg_malloc_live();
    fz_verbose = getenv("PG_FUZZ_VERBOSE") != NULL;
    return 0;
}

/* conn_pump without the pool and the socket: answers every queued request in order. */
static void fz_pump(conn_t *c) {
    while (c->qhead) {
        req_t *r = c->qhead;
        if (r->status == 0) {
            if (r->op == OPS_sleep)
                atomic_store(&r->cancel, true); /* check its fields, never wait */
            if (ops_where(r->op) == OPS_ON_WORKER) {
                if (FZ_EXEC_GRAPHS || r->op == OPS_sleep)
                    req_run_job(&r->job); /* what the worker does */
                else
                    r->status = proto_fail(&r->err, PG_EINTERNAL, "not run by this harness");
            } else {
                msgpack_packer pk;
                msgpack_packer_init(&pk, &r->out, msgpack_sbuffer_write);
                r->status = ops_execute(c->d, r, &pk);
            }
        }
        if (fz_verbose)
            fprintf(stderr, "request %llu %s: %s %s\n", (unsigned long long)r->id,
                    ops_name(r->op), r->status ? proto_error_name(r->err.code) : "ok",
                    r->status ? r->err.message : "");
        conn_finish_head(c);
    }
    /* The replies would be written now: drop them (conn_flush's on_write does the same). */
    owners_release(c->oown, c->on);
    c->on = 0;
}

/* Simulates one read of n bytes from p, as on_read does after on_alloc chose its buffer. */
static void fz_read(conn_t *c, const uint8_t *p, size_t n) {
    uint8_t *dst;
    size_t want;
    if (proto_reader_direct(&c->rd, &dst, &want) && want >= n && (n & 1)) {
        /* libuv read into the body itself (conn.c does so for bodies of 64 KiB and more; any
         * size is valid, so odd reads take this path to reach it with small frames). */
        memcpy(dst, p, n);
        if (proto_reader_advance(&c->rd, n) == PROTO_READ_FRAME)
            conn_on_frame(c);
    } else {
        conn_feed(c, p, n);
    }
    fz_pump(c);
}

static uint32_t fz_rand(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

/* Finds the complete frames of a stream (after the 2 seed bytes): at[i] is where frame i's
 * prefix starts. Returns how many (at most cap). */
static size_t fz_frames(const uint8_t *data, size_t size, size_t *at, size_t cap) {
    size_t n = 0, pos = 2;
    while (n < cap && size - pos >= 4) {
        uint32_t len = proto_get_len(data + pos);
        if (len == 0 || len > FZ_MAX_FRAME || size - pos - 4 < len)
            break;
        at[n++] = pos;
        pos += 4 + (size_t)len;
    }
    return n;
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed) {
    size_t at[256];
    size_t nf = size >= 2 ? fz_frames(data, size, at, 256) : 0;
    if (nf == 0 || seed % 4 == 0)
        return LLVMFuzzerMutate(data, size, max_size);
    size_t k = (seed / 4) % nf;
    size_t start = at[k], len = proto_get_len(data + start), end = start + 4 + len;
    if (seed % 8 == 1) {
        /* Repeat frame k right after itself. */
        if (size + 4 + len > max_size)
            return LLVMFuzzerMutate(data, size, max_size);
        memmove(data + end + 4 + len, data + end, size - end);
        memcpy(data + end, data + start, 4 + len);
        return size + 4 + len;
    }
    /* Mutate frame k's body in place, moving what follows, and fix its length. */
    size_t rest = size - end, room = max_size - (size - len);
    uint8_t *body = malloc(room ? room : 1);
    uint8_t *tail = malloc(rest ? rest : 1);
    if (!body || !tail) {
        free(body);
        free(tail);
        return size;
    }
    memcpy(body, data + start + 4, len);
    memcpy(tail, data + end, rest);
    size_t nl = LLVMFuzzerMutate(body, len, room > FZ_MAX_FRAME ? FZ_MAX_FRAME : room);
    if (nl == 0)
        nl = 1, body[0] = 0x80; /* an empty map: a frame is never empty */
    proto_put_len(data + start, (uint32_t)nl);
    memcpy(data + start + 4, body, nl);
    memcpy(data + start + 4 + nl, tail, rest);
    free(body);
    free(tail);
    return start + 4 + nl + rest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    daemon_t *d = &fz_daemon;
    uint32_t seed = ((uint32_t)data[0] << 8 | data[1]) * 2654435761u | 1;
    data += 2;
    size -= 2;

    /* conn_accept without the handle. */
    conn_t *c = pg_malloc(sizeof(*c));
    FZ_CHECK(c);
    memset(c, 0, sizeof(*c));
    FZ_CHECK(pthread_mutex_init(&c->wlock, NULL) == 0); /* conn_release destroys it */
    c->d = d;
    sess_init(&c->sess, ++d->next_session);
    proto_reader_init(&c->rd, (uint32_t)d->cfg.max_frame);
    c->next = d->conns;
    d->conns = c;
    d->nconns++;

    size_t pos = 0;
    while (pos < size && !c->fatal) {
        uint32_t r = fz_rand(&seed);
        size_t n = (r & 15) == 0 ? 1 + (r >> 8) % 8192 : 1 + (r >> 8) % 97;
        if (n > size - pos)
            n = size - pos;
        fz_read(c, data + pos, n);
        pos += n;
    }
    /* EOF: a half-received frame is dropped, the rest was answered; then the handle closes. */
    conn_drop_partial(c);
    fz_pump(c);
    FZ_CHECK(c->refs == 0 && !c->busy);
    conn_release(c);

    /* Nothing may outlive the session but the prepared-run cache, emptied here so that inputs
     * stay independent of each other. */
    prepcache_shutdown();
    FZ_CHECK(d->conns == NULL && d->nconns == 0);
    if (mem_in_use() != 0 || pg_malloc_live() != fz_live_base) {
        fprintf(stderr, "conn_driver: leak: %llu budget bytes, %llu internal bytes (base %llu)\n",
                (unsigned long long)mem_in_use(), (unsigned long long)pg_malloc_live(),
                (unsigned long long)fz_live_base);
        abort();
    }
    return 0;
}
