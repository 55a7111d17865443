/*
 * conn.c - one client connection: bytes in, requests queued in order, replies out.
 *
 * Reading. libuv asks for a buffer before each read (on_alloc). Normally that is one 64 KiB
 * scratch buffer shared by every connection (reads are handled one at a time on the loop thread,
 * so one buffer suffices) and the frame reader copies from it. While the reader is filling a large
 * body, the buffer handed to libuv is the body itself, so megabytes land in their final place with
 * no copy. A frame's buffer is reserved against --max-memory when its length arrives; a frame that
 * does not fit is read and discarded, and answered with out_of_memory.
 *
 * Ordering. Each complete frame becomes a req_t appended to the connection's queue. The queue's
 * head runs; only when it is answered does the next one run, which is what keeps replies in
 * request order while bookkeeping ops run inline and compute ops run on a worker.
 *
 * Writing. Replies produced in one pass over the queue are written together with one uv_write
 * (one writev). A reply carrying tensor bytes is two buffers, its header and the tensor's own
 * storage (held by a reference until written), so a get copies nothing in the daemon.
 *
 * Early replies. A request that runs on a worker would reach its client only after the worker
 * woke the loop thread and the loop wrote the reply: one more thread wake-up on the way back,
 * 17-57 us (p10-p90, measured after an idle pause on a 2-CPU VM). So when nothing else is on its
 * way to the peer (no write in flight, nothing queued: the reply would be next on the wire
 * anyway), the worker sends the finished reply itself with one non-blocking sendmsg (libuv's
 * uv_try_write may only be called on the loop thread), and the loop only sends what the socket
 * did not take. The loop writes nothing to a connection while
 * its head is on a worker, so the bytes stay in order; the connection's `wlock` keeps the
 * socket from being closed (conn_close) during that sendmsg.
 *
 * Back-pressure. A connection stops being read while it has --max-inflight requests queued or
 * --max-unsent reply bytes not yet taken by the peer, and is read again when both drop. Its
 * queue also stops being answered while the replies not yet taken reach --max-unsent: a reply
 * may hold a copy of its data (a run's inline outputs), so a client that pipelines requests and
 * never reads pins the daemon at --max-unsent plus one reply, however many requests it queued.
 *
 * Fairness. A connection hands the pool (pool.c, one FIFO) at most one request at a time: its
 * next one is submitted only when the previous one is answered, and then queues behind every
 * other connection's. So the pool serves connections round-robin, whatever their queues hold: a
 * session with fifty heavy runs queued delays another session's request by at most one of them
 * per worker, not fifty.
 *
 * Time. Each connection has one timer. While its head runs on a worker with a time limit
 * (--request-timeout, or a shorter `timeout` of the request) it is the deadline: past it the
 * request's cancel flag is set (REQ_CANCEL_TIMEOUT) and the worker stops between steps or
 * chunks and replies `timeout`. While nothing is queued or running it is the idle deadline
 * (--idle-timeout): a connection that neither sent nor took a byte for that long is closed.
 *
 * Authentication. A connection of a listener that needs the token (auth.h) is served nothing
 * until a hello with the right token has been answered: its frames are capped at
 * LIM_PREAUTH_FRAME bytes, and any other request, or a hello with a wrong or missing token, is
 * answered with unauthorized and closes the connection (what was queued behind it is dropped).
 */
#include "daemon.h"
#include "log.h"
#include "mem.h"

#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>

/* A reply fragment waiting to be written, with what keeps its bytes alive. */
typedef struct {
    void *free_me;   /* malloc'd reply header (msgpack_sbuffer data), freed after the write */
    tensor_t *hold;  /* a tensor whose storage is the bytes, unref'd after the write */
} owner_t;

typedef struct conn {
    union {
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;                       /* first member: libuv callbacks cast back to the conn */
    daemon_t *d;
    struct conn *prev, *next;  /* daemon's list of connections */
    sess_t sess;               /* what this connection owns */
    proto_reader_t rd;         /* the frame being received */
    void *rd_block;            /* its buffer (mem_data_alloc), owned until queued */
    uint64_t rd_block_bytes;
    bool rd_refused;           /* the frame did not fit the memory budget: being discarded */
    proto_err_t rd_err;        /* why it was refused */
    req_t *qhead, *qtail;      /* received, not yet answered; the head may be on a worker */
    uint64_t nq;               /* requests in the queue */
    bool busy;                 /* the head is running on a worker */
    bool reading;              /* uv_read_start is in effect */
    bool eof;                  /* the peer closed its side: answer what is queued, then close */
    bool fatal;                /* a framing error was answered: close once written */
    bool closing;              /* uv_close was called */
    bool needs_token;          /* its listener requires the token in hello */
    bool authed;               /* a hello with the token succeeded (or none was needed) */
    int refs;                  /* open handles (the stream and the timer: 2) + a job on a
                                * worker (0 or 1) */
    uv_buf_t *obufs;           /* reply fragments for the next write */
    owner_t *oown;             /* what keeps each fragment alive */
    size_t on, ocap;           /* fragments queued, slots allocated */
    uint64_t unsent;           /* bytes handed to uv_write and not yet written */
    uint64_t obytes;           /* bytes of the fragments queued for the next write */
    int writes;                /* uv_write requests in flight */
    uv_timer_t timer;          /* the head's deadline, or the idle deadline (see Time above) */
    uint64_t timer_due;        /* uv_now() when the timer fires; 0 when it is stopped */
    uint64_t last_active;      /* uv_now() of the last byte read or written */
    pthread_mutex_t wlock;     /* held by a worker sending an early reply, and by conn_close
                                * while it marks the socket closed */
    bool wclosed;              /* the socket is (being) closed: no early reply may use it */
} conn_t;

typedef struct {
    uv_write_t w;              /* first member: the write callback casts back */
    conn_t *c;
    uv_buf_t *bufs;
    owner_t *own;
    size_t n;
    uint64_t bytes;
} wreq_t;

#define SCRATCH_SIZE (64 * 1024)
static uint8_t scratch[SCRATCH_SIZE]; /* shared: only the loop thread reads sockets */

static void conn_pump(conn_t *c);
static void conn_release(conn_t *c);
static void conn_update(conn_t *c);
static void conn_close(conn_t *c);
static void conn_timer_arm(conn_t *c);

/* =============================================================================================
 * Requests
 * =========================================================================================== */

static void req_run_job(pool_job_t *job);
static void req_free(req_t *r);

/* Returns a new empty request of c, or NULL when memory runs out. */
static req_t *req_new(conn_t *c) {
    req_t *r = pg_malloc(sizeof(*r));
    if (!r)
        return NULL;
    memset(r, 0, sizeof(*r));
    r->job.run = req_run_job;
    r->conn = c;
    r->sess = &c->sess;
    r->op = -1;
    r->early_fd = -1;
    atomic_init(&r->cancel, false);
    msgpack_unpacked_init(&r->msg);
    msgpack_sbuffer_init(&r->out);
    /* The reply frame starts with its length prefix, filled in when the reply is complete. */
    if (msgpack_sbuffer_write(&r->out, "\0\0\0\0", 4) != 0) {
        req_free(r);
        return NULL;
    }
    return r;
}

static void req_free(req_t *r) {
    msgpack_unpacked_destroy(&r->msg);
    msgpack_sbuffer_destroy(&r->out);
    tensor_unref(r->tail);
    mem_data_free(r->block, r->block_bytes);
    pg_free(r);
}

/* Checks and decodes r's body; on failure sets r->status (and r->fatal for framing errors). */
static void req_decode(req_t *r) {
    if (proto_check_map(r->body, r->len, &r->err) != 0) {
        r->status = -PG_EBAD_FRAME;
        r->fatal = true;
        return;
    }
    size_t off = 0;
    msgpack_unpack_return urc =
        msgpack_unpack_next(&r->msg, (const char *)r->body, r->len, &off);
    if (urc != MSGPACK_UNPACK_SUCCESS) {
        /* proto_check_map accepted the bytes, so only memory can fail here. */
        r->status = proto_fail(&r->err, PG_EOUT_OF_MEMORY, "no memory to decode a %u-byte frame",
                               r->len);
        return;
    }
    r->args = &r->msg.data;

    const msgpack_object *id = proto_find(r->args, "id");
    if (id && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        r->has_id = true;
        r->id = id->via.u64;
    } else {
        r->status = proto_fail(&r->err, PG_EBAD_REQUEST,
                               id ? "field 'id' must be an unsigned int" : "missing field 'id'");
        return;
    }
    const char *op;
    size_t oplen;
    if ((r->status = proto_get_str(r->args, "op", &op, &oplen, &r->err)) != 0)
        return;
    r->op = ops_lookup(op, oplen);
    if (r->op < 0) {
        char name[65];
        r->status = proto_quote(name, sizeof(name), op, oplen)
                        ? proto_fail(&r->err, PG_EUNKNOWN_OP,
                                     "unknown op '%s' (hello lists the ops served)", name)
                        : proto_fail(&r->err, PG_EUNKNOWN_OP, "unknown op");
    }
}

/* Completes r's reply frame once its request has finished: a failed request's reply becomes its
 * error, and the length prefix is filled in. Runs on the worker that ran it (before an early
 * reply) or on the loop thread; never on both, and only the first call does anything. */
static void req_seal(req_t *r) {
    if (r->sealed)
        return;
    r->sealed = true;
    if (r->status != 0) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &r->out, msgpack_sbuffer_write);
        r->out.size = 0;
        msgpack_sbuffer_write(&r->out, "\0\0\0\0", 4);
        tensor_unref(r->tail);
        r->tail = NULL;
        r->tail_len = 0;
        proto_pack_error(&pk, r->has_id, r->id, &r->err);
    }
    if (r->out.data)
        proto_put_len((uint8_t *)r->out.data, (uint32_t)(r->out.size - 4 + r->tail_len));
}

/* On r's worker: sends its sealed reply if the socket takes it now (see "Early replies"), and
 * records how many bytes went; the loop sends the rest, and handles any error, as usual. */
static void req_send_early(req_t *r) {
    if (r->early_fd < 0)
        return;
    req_seal(r);
    if (!r->out.data)
        return;
    struct iovec iov[2] = {{r->out.data, r->out.size}, {(void *)r->tail_data, r->tail_len}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = r->tail_len > 0 ? 2 : 1};
    conn_t *c = r->conn;
    pthread_mutex_lock(&c->wlock);
    if (!c->wclosed) {
        ssize_t n = sendmsg(r->early_fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0)
            r->early_sent = (uint64_t)n;
    }
    pthread_mutex_unlock(&c->wlock);
}

/* Runs on a worker thread. */
static void req_run_job(pool_job_t *job) {
    req_t *r = (req_t *)job;
    atomic_store(&r->started_ns, uv_hrtime()); /* the time limit counts from here */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &r->out, msgpack_sbuffer_write);
    r->status = ops_execute(r->conn->d, r, &pk);
    req_send_early(r);
}

int req_check_cancel(const req_t *r, proto_err_t *err) {
    switch (atomic_load_explicit(&r->cancel, memory_order_relaxed)) {
    case REQ_CANCEL_NONE:
        return 0;
    case REQ_CANCEL_TIMEOUT:
        return proto_fail(err, PG_ETIMEOUT,
                          "%s cancelled: it ran past its time limit of %g s (%s)",
                          ops_name(r->op), r->timeout,
                          r->timeout < r->conn->d->cfg.request_timeout ||
                                  r->conn->d->cfg.request_timeout == 0
                              ? "the request's 'timeout'"
                              : "--request-timeout");
    default:
        return proto_fail(err, PG_EINTERNAL, "%s cancelled: the session is closing",
                          ops_name(r->op));
    }
}

/* Chooses the time limit of a compute request about to go to a worker: --request-timeout, or
 * the request's own `timeout` field (seconds) when it is shorter. Returns 0, or -PG_EBAD_REQUEST
 * with r->err filled for a `timeout` that is not a number in (0, ceiling]. */
static int req_set_timeout(const daemon_t *d, req_t *r) {
    r->timeout = d->cfg.request_timeout;
    const msgpack_object *f = proto_find(r->args, "timeout");
    if (!f || f->type == MSGPACK_OBJECT_NIL)
        return 0;
    double t;
    if (proto_get_number(r->args, "timeout", &t, &r->err) != 0 ||
        !(t > 0 && t <= LIM_REQUEST_TIMEOUT_CEILING))
        return proto_fail(&r->err, PG_EBAD_REQUEST,
                          "field 'timeout' must be a number of seconds above 0 and at most %g",
                          LIM_REQUEST_TIMEOUT_CEILING);
    if (r->timeout == 0 || t < r->timeout)
        r->timeout = t;
    return 0;
}

/* =============================================================================================
 * Writing
 * =========================================================================================== */

/* Appends one fragment to the next write. Takes ownership of owner's contents. */
static int out_push(conn_t *c, const void *base, uint64_t len, owner_t owner) {
    if (c->on == c->ocap) {
        size_t cap = c->ocap ? c->ocap * 2 : 16;
        uv_buf_t *b = pg_realloc_array(c->obufs, cap, sizeof(*b));
        if (!b)
            goto err;
        c->obufs = b;
        owner_t *o = pg_realloc_array(c->oown, cap, sizeof(*o));
        if (!o)
            goto err;
        c->oown = o;
        c->ocap = cap;
    }
    c->obufs[c->on].base = (char *)base;
    c->obufs[c->on].len = (size_t)len;
    c->oown[c->on] = owner;
    c->on++;
    c->obytes += len;
    return 0;
err:
    free(owner.free_me);
    tensor_unref(owner.hold);
    return -PG_EOUT_OF_MEMORY;
}

static void owners_release(owner_t *own, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(own[i].free_me);
        tensor_unref(own[i].hold);
    }
}

static void on_write(uv_write_t *w, int status) {
    wreq_t *wr = (wreq_t *)w;
    conn_t *c = wr->c;
    owners_release(wr->own, wr->n);
    pg_free(wr->own);
    pg_free(wr->bufs);
    c->unsent -= wr->bytes;
    c->writes--;
    pg_free(wr);
    if (status < 0 && status != UV_ECANCELED) {
        log_debug("session %llu: write failed: %s", (unsigned long long)c->sess.id,
                  uv_strerror(status));
        conn_close(c);
    }
    c->last_active = uv_now(c->d->loop);
    conn_pump(c); /* the queue may have waited for the peer to take its replies */
}

/* Writes every queued fragment with one uv_write. */
static void conn_flush(conn_t *c) {
    if (c->on == 0 || c->closing)
        return;
    wreq_t *wr = pg_malloc(sizeof(*wr));
    if (!wr) {
        log_error("session %llu: no memory for a write; closing", (unsigned long long)c->sess.id);
        conn_close(c);
        return;
    }
    wr->c = c;
    wr->bufs = c->obufs;
    wr->own = c->oown;
    wr->n = c->on;
    wr->bytes = c->obytes;
    c->obufs = NULL;
    c->oown = NULL;
    c->on = c->ocap = 0;
    c->obytes = 0;
    int rc = uv_write(&wr->w, &c->h.stream, wr->bufs, (unsigned int)wr->n, on_write);
    if (rc < 0) {
        log_debug("session %llu: write refused: %s", (unsigned long long)c->sess.id,
                  uv_strerror(rc));
        owners_release(wr->own, wr->n);
        pg_free(wr->own);
        pg_free(wr->bufs);
        pg_free(wr);
        conn_close(c);
        return;
    }
    c->unsent += wr->bytes;
    c->writes++;
}

/* Frees every request still queued. None may be on a worker. */
static void conn_drop_queue(conn_t *c) {
    while (c->qhead) {
        req_t *r = c->qhead;
        c->qhead = r->next;
        req_free(r);
    }
    c->qtail = NULL;
    c->nq = 0;
}

/* Turns the answered head request into reply fragments, counts it and frees it. */
static void conn_finish_head(conn_t *c) {
    req_t *r = c->qhead;
    c->qhead = r->next;
    if (!c->qhead)
        c->qtail = NULL;
    c->nq--;

    req_seal(r);
    if (r->status != 0 && (r->err.code == PG_EINTERNAL || r->fatal))
        log_info("session %llu: %s: %s", (unsigned long long)c->sess.id,
                 proto_error_name(r->err.code), r->err.message);
    /* What the worker sent early is skipped; a reply it sent whole leaves nothing to queue
     * (req_free frees its buffers). */
    uint64_t skip = r->early_sent;
    if (skip > 0)
        c->last_active = uv_now(c->d->loop);
    if (r->out.data && skip < r->out.size + r->tail_len) {
        int rc = 0;
        if (skip < r->out.size) {
            owner_t o = {r->out.data, NULL};
            uint64_t n = r->out.size - skip;
            r->out.data = NULL; /* the write owns it now */
            r->out.size = r->out.alloc = 0;
            rc = out_push(c, (uint8_t *)o.free_me + skip, n, o);
            skip = 0;
        } else {
            skip -= r->out.size;
        }
        if (rc == 0 && r->tail_len > skip) {
            owner_t t = {NULL, r->tail};
            r->tail = NULL;
            rc = out_push(c, r->tail_data + skip, r->tail_len - skip, t);
        }
        if (rc != 0) {
            /* A reply cut in half would corrupt the stream: give up on the connection. */
            log_error("session %llu: no memory to queue a reply; closing",
                      (unsigned long long)c->sess.id);
            conn_close(c);
        }
    }
    stats_count(r->op, r->status ? r->err.code : 0);
    c->sess.requests++;
    if (r->fatal) {
        c->fatal = true;
        conn_drop_queue(c); /* nothing after the reply that closes the connection is served */
    }
    req_free(r);
}

/* =============================================================================================
 * The queue
 * =========================================================================================== */

static void conn_enqueue(conn_t *c, req_t *r) {
    r->next = NULL;
    if (c->qtail)
        c->qtail->next = r;
    else
        c->qhead = r;
    c->qtail = r;
    c->nq++;
}

/* On a connection that has not authenticated yet, lets only a hello with the right token through;
 * anything else becomes an unauthorized reply that closes the connection. */
static void conn_gate(conn_t *c, req_t *r) {
    if (r->fatal)
        return; /* a framing error closes the connection anyway */
    if (r->status == 0 && r->op == OPS_hello) {
        if (auth_check_hello(&c->d->token, r->args, &r->err) == 0)
            return;
    } else if (r->status == 0) {
        proto_fail(&r->err, PG_EUNAUTHORIZED,
                   "'%s' before hello: this listener requires a hello with the token first",
                   ops_name(r->op));
    } else {
        proto_fail(&r->err, PG_EUNAUTHORIZED,
                   "a request before hello: this listener requires a hello with the token first");
    }
    r->status = -PG_EUNAUTHORIZED;
    r->fatal = true;
}

/* A hello succeeded on c: it may now send anything, in frames up to --max-frame. */
static void conn_authenticate(conn_t *c) {
    c->authed = true;
    c->rd.max_len = (uint32_t)c->d->cfg.max_frame;
}

/* Answers queued requests in order until one must wait for a worker, or the replies not yet
 * taken by the peer reach --max-unsent, then writes the replies. */
static void conn_pump(conn_t *c) {
    while (c->qhead && !c->busy && !c->closing &&
           c->unsent + c->obytes < c->d->cfg.max_unsent) {
        req_t *r = c->qhead;
        if (c->needs_token && !c->authed)
            conn_gate(c, r);
        if (r->status == 0 && ops_where(r->op) == OPS_ON_WORKER &&
            (r->status = req_set_timeout(c->d, r)) == 0) {
            c->busy = true;
            c->refs++;
            uv_os_fd_t fd;
            if (c->writes == 0 && c->on == 0 && uv_fileno((uv_handle_t *)&c->h, &fd) == 0)
                r->early_fd = fd; /* its reply would be next on the wire: see Early replies */
            pool_submit(&c->d->pool, &r->job);
            break;
        }
        if (r->status == 0) {
            msgpack_packer pk;
            msgpack_packer_init(&pk, &r->out, msgpack_sbuffer_write);
            r->status = ops_execute(c->d, r, &pk);
            if (r->status == 0 && r->op == OPS_hello && !c->authed)
                conn_authenticate(c);
        }
        conn_finish_head(c);
    }
    conn_flush(c);
    conn_update(c);
}

void conn_job_done(pool_job_t *job) {
    req_t *r = (req_t *)job;
    conn_t *c = r->conn;
    c->busy = false;
    c->refs--;
    if (c->closing) {
        conn_release(c); /* frees c when its handle is closed too */
        return;
    }
    conn_finish_head(c);
    conn_pump(c);
}

/* =============================================================================================
 * Reading
 * =========================================================================================== */

/* Queues a request that only carries an error (a refused or malformed frame). */
static void conn_enqueue_error(conn_t *c, bool fatal, bool has_id, uint64_t id,
                               const proto_err_t *err) {
    req_t *r = req_new(c);
    if (!r) {
        conn_close(c);
        return;
    }
    r->fatal = fatal;
    r->has_id = has_id;
    r->id = id;
    r->err = *err;
    r->status = -err->code;
    conn_enqueue(c, r);
}

static void conn_drop_partial(conn_t *c) {
    mem_data_free(c->rd_block, c->rd_block_bytes);
    c->rd_block = NULL;
    c->rd_block_bytes = 0;
    c->rd_refused = false;
    proto_reader_init(&c->rd, c->rd.max_len);
}

/* The length and first bytes of a frame are in: choose where its body goes. */
static void conn_on_head(conn_t *c) {
    proto_reader_t *rd = &c->rd;
    /* Place the body so that its payload (a put's data) starts on a 64-byte boundary: the tensor
     * can then adopt the frame buffer as its storage. */
    uint64_t binlen;
    int64_t off = proto_locate_bin(rd->head, rd->headlen, 1, &binlen);
    uint64_t pad = off >= 0 ? (64 - ((uint64_t)off & 63)) & 63 : 0;
    uint64_t bytes = rd->len + pad;
    void *block = mem_data_alloc(bytes);
    if (!block) {
        proto_fail(&c->rd_err, PG_EOUT_OF_MEMORY,
                   "a frame of %u bytes does not fit in the memory budget (%llu of %llu bytes "
                   "in use)",
                   rd->len, (unsigned long long)mem_in_use(), (unsigned long long)mem_limit());
        c->rd_refused = true;
        proto_reader_discard(rd);
        return;
    }
    c->rd_block = block;
    c->rd_block_bytes = bytes;
    proto_reader_set_body(rd, (uint8_t *)block + pad);
}

/* A whole frame is in: queue it as a request. */
static void conn_on_frame(conn_t *c) {
    proto_reader_t *rd = &c->rd;
    if (c->rd_refused) {
        uint64_t id = 0;
        bool has_id = proto_peek_id(rd->head, rd->headlen, &id);
        proto_err_t err = c->rd_err;
        proto_reader_take(rd);
        c->rd_refused = false;
        conn_enqueue_error(c, false, has_id, id, &err);
        return;
    }
    req_t *r = req_new(c);
    if (!r) {
        conn_close(c);
        return;
    }
    r->len = rd->len;
    r->body = proto_reader_take(rd);
    r->block = c->rd_block;
    r->block_bytes = c->rd_block_bytes;
    c->rd_block = NULL;
    c->rd_block_bytes = 0;
    req_decode(r);
    conn_enqueue(c, r);
}

static void conn_on_bad_len(conn_t *c) {
    proto_err_t err;
    if (c->needs_token && !c->authed && c->rd.len > c->rd.max_len)
        proto_fail(&err, PG_EUNAUTHORIZED,
                   "frame length %u is over the %u bytes allowed before a hello with the token",
                   c->rd.len, c->rd.max_len);
    else if (c->rd.len == 0)
        proto_fail(&err, PG_EBAD_FRAME, "frame length 0: a frame holds one msgpack map");
    else
        proto_fail(&err, PG_EBAD_FRAME, "frame length %u is over the limit of %u bytes",
                   c->rd.len, c->rd.max_len);
    conn_enqueue_error(c, true, false, 0, &err);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    conn_t *c = (conn_t *)h;
    uint8_t *p;
    size_t n;
    if (proto_reader_direct(&c->rd, &p, &n) && n >= SCRATCH_SIZE) {
        buf->base = (char *)p;
        buf->len = n;
    } else {
        buf->base = (char *)scratch;
        buf->len = sizeof(scratch);
    }
}

static void conn_feed(conn_t *c, const uint8_t *p, size_t n) {
    while (!c->fatal && !c->closing && (n > 0 || proto_reader_done(&c->rd))) {
        size_t used;
        proto_read_event_t ev = proto_reader_feed(&c->rd, p, n, &used);
        p += used;
        n -= used;
        switch (ev) {
        case PROTO_READ_MORE:
            return;
        case PROTO_READ_BAD_LEN:
            conn_on_bad_len(c);
            return;
        case PROTO_READ_HEAD:
            conn_on_head(c);
            break;
        case PROTO_READ_FRAME:
            conn_on_frame(c);
            break;
        }
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = (conn_t *)s;
    if (nread < 0) {
        if (nread != UV_EOF)
            log_debug("session %llu: read: %s", (unsigned long long)c->sess.id,
                      uv_strerror((int)nread));
        /* A half-received frame is dropped; what was fully received is still answered. */
        conn_drop_partial(c);
        c->eof = true;
        conn_update(c);
        return;
    }
    if (nread == 0)
        return;
    c->last_active = uv_now(c->d->loop);
    if (buf->base != (char *)scratch) {
        if (proto_reader_advance(&c->rd, (size_t)nread) == PROTO_READ_FRAME)
            conn_on_frame(c);
    } else {
        conn_feed(c, scratch, (size_t)nread);
    }
    conn_pump(c);
}

/* =============================================================================================
 * Life cycle
 * =========================================================================================== */

/* Frees c once its handle is closed and no worker holds it. */
static void conn_release(conn_t *c) {
    if (c->refs > 0)
        return;
    daemon_t *d = c->d;
    conn_drop_queue(c);
    owners_release(c->oown, c->on);
    pg_free(c->oown);
    pg_free(c->obufs);
    conn_drop_partial(c);
    log_debug("session %llu closed (%llu requests)", (unsigned long long)c->sess.id,
              (unsigned long long)c->sess.requests);
    sess_clear(&c->sess);
    pthread_mutex_destroy(&c->wlock);
    if (c->prev)
        c->prev->next = c->next;
    else
        d->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    d->nconns--;
    pg_free(c);
    daemon_check_done(d);
}

static void on_close(uv_handle_t *h) {
    conn_t *c = (conn_t *)h;
    c->refs--;
    conn_release(c);
}

static void on_timer_close(uv_handle_t *h) {
    conn_t *c = h->data;
    c->refs--;
    conn_release(c);
}

static void conn_close(conn_t *c) {
    if (c->closing)
        return;
    c->closing = true;
    pthread_mutex_lock(&c->wlock); /* waits out an early reply being sent on the socket */
    c->wclosed = true;
    pthread_mutex_unlock(&c->wlock);
    if (c->qhead && c->busy) {
        int none = REQ_CANCEL_NONE;
        atomic_compare_exchange_strong(&c->qhead->cancel, &none, REQ_CANCEL_CLOSE);
    }
    uv_close((uv_handle_t *)&c->h, on_close);
    uv_close((uv_handle_t *)&c->timer, on_timer_close);
}

/* =============================================================================================
 * Time limits
 * =========================================================================================== */

/* Seconds as whole milliseconds, rounded up (a limit is never cut short). */
static uint64_t secs_to_ms(double s) { return (uint64_t)ceil(s * 1e3); }

static void on_timer(uv_timer_t *t) {
    conn_t *c = t->data;
    daemon_t *d = c->d;
    c->timer_due = 0;
    if (c->closing)
        return;
    if (c->busy) {
        req_t *r = c->qhead;
        uint64_t started = atomic_load(&r->started_ns);
        if (r->timeout > 0 && started != 0 &&
            uv_hrtime() - started >= (uint64_t)(r->timeout * 1e9)) {
            int none = REQ_CANCEL_NONE;
            if (atomic_compare_exchange_strong(&r->cancel, &none, REQ_CANCEL_TIMEOUT))
                log_info("session %llu: %s request %llu ran past its time limit of %g s; "
                         "cancelling it", (unsigned long long)c->sess.id, ops_name(r->op),
                         (unsigned long long)r->id, r->timeout);
        }
    } else if (d->cfg.idle_timeout > 0 && !c->qhead &&
               uv_now(d->loop) - c->last_active >= secs_to_ms(d->cfg.idle_timeout)) {
        log_info("session %llu: idle for %g s (--idle-timeout); closing it",
                 (unsigned long long)c->sess.id, d->cfg.idle_timeout);
        conn_close(c);
        return;
    }
    conn_timer_arm(c);
}

/* Points c's timer at the next deadline that matters (see Time at the top): the running head's
 * time limit, else the idle limit when nothing is queued; stops it when there is none. An idle
 * deadline is not moved later on every byte: the timer fires at the old one and looks again. */
static void conn_timer_arm(conn_t *c) {
    if (c->closing)
        return;
    daemon_t *d = c->d;
    uint64_t now = uv_now(d->loop), due = 0;
    if (c->busy) {
        const req_t *r = c->qhead;
        if (r->timeout > 0 && atomic_load(&r->cancel) == REQ_CANCEL_NONE) {
            uint64_t limit = secs_to_ms(r->timeout), started = atomic_load(&r->started_ns);
            /* Not started yet (every worker busy): the limit has not begun; look again later. */
            uint64_t ran = started ? (uv_hrtime() - started) / 1000000 : 0;
            due = now + (ran < limit ? limit - ran : 0);
        }
    } else if (d->cfg.idle_timeout > 0 && !c->qhead) {
        due = c->last_active + secs_to_ms(d->cfg.idle_timeout);
    }
    if (due == 0) {
        if (c->timer_due != 0) {
            uv_timer_stop(&c->timer);
            c->timer_due = 0;
        }
        return;
    }
    if (c->timer_due != 0 && c->timer_due <= due)
        return;
    uv_timer_start(&c->timer, on_timer, due > now ? due - now : 0, 0);
    c->timer_due = due;
}

/* Decides, after anything changed, whether c reads, waits or closes. */
static void conn_update(conn_t *c) {
    if (c->closing)
        return;
    daemon_t *d = c->d;
    bool idle = !c->qhead && c->writes == 0;
    if ((c->fatal || c->eof || d->stopping) && idle) {
        conn_close(c);
        return;
    }
    bool want = !c->fatal && !c->eof && !d->stopping && c->nq < d->cfg.max_inflight &&
                c->unsent < d->cfg.max_unsent;
    if (want && !c->reading) {
        int rc = uv_read_start(&c->h.stream, on_alloc, on_read);
        if (rc < 0) {
            log_warn("session %llu: cannot read: %s", (unsigned long long)c->sess.id,
                     uv_strerror(rc));
            conn_close(c);
            return;
        }
        c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = false;
    }
    conn_timer_arm(c);
}

void conn_accept(listener_t *l) {
    daemon_t *d = l->d;
    conn_t *c = pg_malloc(sizeof(*c));
    if (!c) {
        log_error("no memory for a new connection");
        return;
    }
    memset(c, 0, sizeof(*c));
    if (pthread_mutex_init(&c->wlock, NULL) != 0) {
        log_error("cannot create a connection's lock");
        pg_free(c);
        return;
    }
    int rc = l->is_unix ? uv_pipe_init(d->loop, &c->h.pipe, 0) : uv_tcp_init(d->loop, &c->h.tcp);
    if (rc < 0) {
        log_error("cannot create a connection handle: %s", uv_strerror(rc));
        pthread_mutex_destroy(&c->wlock);
        pg_free(c);
        return;
    }
    uv_timer_init(d->loop, &c->timer); /* cannot fail: it only links the handle to the loop */
    c->timer.data = c;
    c->d = d;
    c->refs = 2;
    c->last_active = uv_now(d->loop);
    sess_init(&c->sess, ++d->next_session);
    c->needs_token = l->needs_token;
    c->authed = !c->needs_token;
    /* Until it authenticates, a client that knows no token can make us reserve little. */
    uint64_t max_len = c->needs_token && d->cfg.max_frame > LIM_PREAUTH_FRAME ? LIM_PREAUTH_FRAME
                                                                              : d->cfg.max_frame;
    proto_reader_init(&c->rd, (uint32_t)max_len);
    c->next = d->conns;
    if (d->conns)
        d->conns->prev = c;
    d->conns = c;
    d->nconns++;

    rc = uv_accept(&l->h.stream, &c->h.stream);
    if (rc < 0) {
        log_warn("accept failed: %s", uv_strerror(rc));
        conn_close(c);
        return;
    }
    if (!l->is_unix)
        uv_tcp_nodelay(&c->h.tcp, 1);
    log_debug("session %llu opened", (unsigned long long)c->sess.id);
    if (d->nconns > d->cfg.max_sessions) {
        proto_err_t err;
        proto_fail(&err, PG_ETOO_LARGE, "the daemon serves at most %llu sessions at once",
                   (unsigned long long)d->cfg.max_sessions);
        conn_enqueue_error(c, true, false, 0, &err);
    }
    conn_pump(c);
}

void conn_stop_all(daemon_t *d) {
    for (conn_t *c = d->conns, *next; c; c = next) {
        next = c->next;
        conn_drop_partial(c);
        conn_update(c);
    }
}

void conn_close_all(daemon_t *d) {
    for (conn_t *c = d->conns, *next; c; c = next) {
        next = c->next;
        conn_close(c);
    }
}
