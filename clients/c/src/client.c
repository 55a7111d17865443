/*
 * client.c - the blocking C client: one socket, one request at a time.
 *
 * Requests are packed with msgpack-c; a put's payload is not copied into the request buffer but
 * sent as a second iovec after it. Replies are read whole into one buffer whose body starts 4 bytes
 * after a 64-byte boundary: the daemon aligns a get's tensor bytes to 64 bytes from the frame start,
 * so pg_get() can hand out a pointer into that buffer instead of copying. The round trip and the
 * request packing are shared with graph.c (the `run` op) through internal.h.
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

int pg__set_err(pg_error_t *e, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    e->code = code;
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return -code;
}

/* Marks the connection dead and reports it. */
static int lost(pg_conn_t *c, const char *what) {
    int e = errno;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    return pg__set_err(&c->err, PG_EDISCONNECTED, "%s: %s", what,
                       e ? strerror(e) : "the daemon closed the connection");
}

/* =============================================================================================
 * Sockets
 * =========================================================================================== */

static int dial(const char *url, pg_error_t *err) {
    proto_url_t u;
    proto_err_t perr;
    if (proto_parse_url(url, &u, &perr) != 0)
        return pg__set_err(err, PG_EBAD_REQUEST, "%s", perr.message), -1;
    if (u.kind == PROTO_URL_UNIX) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", u.path);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
            pg__set_err(err, PG_EDISCONNECTED, "cannot connect to %s: %s", url, strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
        return fd;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai, *p;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)u.port);
    int gai = getaddrinfo(u.host, port, &hints, &ai);
    if (gai != 0)
        return pg__set_err(err, PG_EDISCONNECTED, "cannot resolve %s: %s", u.host,
                           gai_strerror(gai)),
               -1;
    int fd = -1;
    for (p = ai; p; p = p->ai_next) {
        fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
        if (fd >= 0 && connect(fd, p->ai_addr, p->ai_addrlen) == 0)
            break;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return pg__set_err(err, PG_EDISCONNECTED, "cannot connect to %s: %s", url,
                           strerror(errno)),
               -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* Sends every byte of iov[0..n); returns 0 or -PG_EDISCONNECTED. */
static int send_all(pg_conn_t *c, struct iovec *iov, int n) {
    while (n > 0) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return lost(c, "send");
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static int recv_all(pg_conn_t *c, void *buf, size_t n) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = recv(c->fd, p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = 0;
            return lost(c, "receive");
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* =============================================================================================
 * One round trip
 * =========================================================================================== */

void pg__reply_free(pg__reply_t *r) {
    msgpack_unpacked_destroy(&r->msg);
    free(r->frame);
    r->frame = NULL;
}

/*
 * Sends the request packed in sb (a map whose fields, "id" included, the caller packed), followed
 * by `extra` raw bytes (a bin body), and reads the reply into r (see internal.h).
 * On a daemon error the reply is freed and its code returned.
 */
int pg__roundtrip(pg_conn_t *c, msgpack_sbuffer *sb, const void *extra, size_t extra_len,
                  pg__reply_t *r) {
    memset(r, 0, sizeof(*r));
    msgpack_unpacked_init(&r->msg);
    if (c->fd < 0)
        return pg__set_err(&c->err, PG_EDISCONNECTED, "not connected (call pg_reconnect)");
    uint64_t id = c->next_id++;
    uint64_t body = sb->size - 4 + extra_len;
    if (body > 0xffffffffu)
        return pg__set_err(&c->err, PG_ETOO_LARGE,
                           "a request of %llu bytes does not fit a frame",
                           (unsigned long long)body);
    proto_put_len((uint8_t *)sb->data, (uint32_t)body);
    struct iovec iov[2] = {{sb->data, sb->size}, {(void *)extra, extra_len}};
    int rc = send_all(c, iov, extra_len ? 2 : 1);
    if (rc)
        return rc;

    uint8_t len4[4];
    if ((rc = recv_all(c, len4, 4)) != 0)
        return rc;
    uint32_t n = proto_get_len(len4);
    void *mem = NULL;
    if (n == 0 || posix_memalign(&mem, 64, (size_t)n + 4) != 0)
        return lost(c, n ? "no memory for a reply" : "empty reply frame");
    r->frame = mem;
    uint8_t *b = r->frame + 4; /* as if the prefix sat at the aligned start, like on the wire */
    if ((rc = recv_all(c, b, n)) != 0) {
        pg__reply_free(r);
        return rc;
    }
    proto_err_t perr;
    size_t off = 0;
    if (proto_check_map(b, n, &perr) != 0 ||
        msgpack_unpack_next(&r->msg, (const char *)b, n, &off) != MSGPACK_UNPACK_SUCCESS) {
        pg__reply_free(r);
        errno = 0;
        lost(c, "malformed reply");
        return pg__set_err(&c->err, PG_EDISCONNECTED, "malformed reply from the daemon");
    }
    r->map = &r->msg.data;
    uint64_t rid;
    const msgpack_object *ok = proto_find(r->map, "ok");
    if (proto_get_uint(r->map, "id", &rid, &perr) != 0 || rid != id || !ok ||
        ok->type != MSGPACK_OBJECT_BOOLEAN) {
        const msgpack_object *err = proto_find(r->map, "error");
        /* A framing error reply carries id nil; report the daemon's message when there is one. */
        const char *code = NULL, *msg = NULL;
        size_t cl = 0, ml = 0;
        if (err && proto_get_str(err, "code", &code, &cl, &perr) == 0 &&
            proto_get_str(err, "message", &msg, &ml, &perr) == 0) {
            pg__set_err(&c->err, PG_EBAD_FRAME, "%.*s: %.*s", (int)cl, code, (int)ml, msg);
        } else {
            pg__set_err(&c->err, PG_EDISCONNECTED, "reply id does not match request %llu",
                        (unsigned long long)id);
        }
        pg__reply_free(r);
        close(c->fd);
        c->fd = -1;
        return -c->err.code;
    }
    if (!ok->via.boolean) {
        const msgpack_object *err = proto_find(r->map, "error");
        const char *code = "internal", *msg = "";
        size_t cl = 8, ml = 0;
        if (err) {
            proto_get_str(err, "code", &code, &cl, &perr);
            proto_get_str(err, "message", &msg, &ml, &perr);
        }
        int ec = PG_EINTERNAL;
        for (int i = 1; i < PG_ERROR_COUNT; i++)
            if (strlen(proto_error_name(i)) == cl && memcmp(proto_error_name(i), code, cl) == 0)
                ec = i;
        pg__set_err(&c->err, ec, "%.*s", (int)ml, msg);
        pg__reply_free(r);
        return -ec;
    }
    c->err.code = 0;
    c->err.message[0] = '\0';
    return 0;
}

/* Starts a request map of `fields` op fields + id + op, with the 4 prefix bytes reserved. */
void pg__begin(msgpack_sbuffer *sb, msgpack_packer *pk, const char *op, uint32_t fields) {
    msgpack_sbuffer_init(sb);
    msgpack_sbuffer_write(sb, "\0\0\0\0", 4);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(pk, fields + 2);
    proto_pack_cstr(pk, "op");
    proto_pack_cstr(pk, op);
}

void pg__add_id(pg_conn_t *c, msgpack_packer *pk) {
    proto_pack_cstr(pk, "id");
    msgpack_pack_uint64(pk, c->next_id);
}

/* Sends a request with no fields but id and op and discards the reply. */
static int simple(pg_conn_t *c, const char *op, const char *key, uint64_t val) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    pg__reply_t r;
    pg__begin(&sb, &pk, op, key ? 1 : 0);
    if (key) {
        proto_pack_cstr(&pk, key);
        msgpack_pack_uint64(&pk, val);
    }
    pg__add_id(c, &pk);
    int rc = pg__roundtrip(c, &sb, NULL, 0, &r);
    msgpack_sbuffer_destroy(&sb);
    if (rc == 0)
        pg__reply_free(&r);
    return rc;
}

/* =============================================================================================
 * The API
 * =========================================================================================== */

/* Keeps a copy of the names in hello's `ops` and `node_ops` lists (either may be missing: an
 * older daemon has no `node_ops`) in c->ops for pg_has_op(). Keeps nothing when memory runs out:
 * pg_has_op then says 0. */
static void keep_ops(pg_conn_t *c, const msgpack_object *map) {
    const msgpack_object *lists[2] = {proto_find(map, "ops"), proto_find(map, "node_ops")};
    free(c->ops);
    c->ops = NULL;
    c->ops_len = 0;
    size_t len = 0;
    for (int l = 0; l < 2; l++)
        for (uint32_t i = 0; lists[l] && lists[l]->type == MSGPACK_OBJECT_ARRAY &&
                             i < lists[l]->via.array.size; i++)
            if (lists[l]->via.array.ptr[i].type == MSGPACK_OBJECT_STR)
                len += lists[l]->via.array.ptr[i].via.str.size + 1;
    if (len == 0 || !(c->ops = malloc(len)))
        return;
    for (int l = 0; l < 2; l++)
        for (uint32_t i = 0; lists[l] && lists[l]->type == MSGPACK_OBJECT_ARRAY &&
                             i < lists[l]->via.array.size; i++) {
            const msgpack_object *o = &lists[l]->via.array.ptr[i];
            if (o->type != MSGPACK_OBJECT_STR)
                continue;
            memcpy(c->ops + c->ops_len, o->via.str.ptr, o->via.str.size);
            c->ops_len += o->via.str.size;
            c->ops[c->ops_len++] = '\0';
        }
}

int pg_has_op(const pg_conn_t *c, const char *op) {
    if (!c || !op)
        return 0;
    size_t n = strlen(op);
    for (size_t at = 0; at < c->ops_len;) {
        size_t len = strnlen(c->ops + at, c->ops_len - at);
        if (len == n && memcmp(c->ops + at, op, n) == 0)
            return 1;
        at += len + 1;
    }
    return 0;
}

static int hello(pg_conn_t *c) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    pg__reply_t r;
    pg__begin(&sb, &pk, "hello", c->token ? 3 : 2);
    proto_pack_cstr(&pk, "version");
    msgpack_pack_uint32(&pk, PROTO_VERSION);
    proto_pack_cstr(&pk, "client");
    proto_pack_cstr(&pk, "picograd-c");
    if (c->token) {
        proto_pack_cstr(&pk, "token");
        proto_pack_cstr(&pk, c->token);
    }
    pg__add_id(c, &pk);
    int rc = pg__roundtrip(c, &sb, NULL, 0, &r);
    msgpack_sbuffer_destroy(&sb);
    if (rc == 0) {
        keep_ops(c, r.map);
        pg__reply_free(&r);
    }
    return rc;
}

/* Returns a new copy of s (malloc) without surrounding white space, or NULL when s is NULL,
 * blank, or memory runs out. */
static char *strip_dup(const char *s) {
    if (!s)
        return NULL;
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    return n ? strndup(s, n) : NULL;
}

pg_conn_t *pg_connect(const char *url, pg_error_t *err) { return pg_connect_token(url, NULL, err); }

pg_conn_t *pg_connect_token(const char *url, const char *token, pg_error_t *err) {
    pg_error_t local;
    if (!err)
        err = &local;
    pg_conn_t *c = calloc(1, sizeof(*c));
    if (!c) {
        pg__set_err(err, PG_EOUT_OF_MEMORY, "no memory for a connection");
        return NULL;
    }
    const char *tok = token ? token : getenv("PICOGRAD_TOKEN");
    c->token = strip_dup(tok);
    if (url)
        snprintf(c->url, sizeof(c->url), "%s", url);
    else
        proto_client_url(c->url, sizeof(c->url));
    c->next_id = 1;
    c->fd = dial(c->url, err);
    if (c->fd < 0) {
        pg_close(c);
        return NULL;
    }
    if (hello(c) != 0) {
        *err = c->err;
        pg_close(c);
        return NULL;
    }
    return c;
}

int pg_reconnect(pg_conn_t *c) {
    if (c->fd >= 0)
        close(c->fd);
    c->fd = dial(c->url, &c->err);
    if (c->fd < 0)
        return -c->err.code;
    return hello(c);
}

int pg_set_device(pg_conn_t *c, const char *device) {
    if (!device || !strcmp(device, "cpu")) {
        c->device[0] = '\0';
        return 0;
    }
    if (strlen(device) >= sizeof(c->device))
        return pg__set_err(&c->err, PG_EBAD_REQUEST, "'%.40s...' is not a device", device);
    snprintf(c->device, sizeof(c->device), "%s", device);
    return 0;
}

void pg_close(pg_conn_t *c) {
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c->ops);
    free(c->token);
    free(c);
}

int pg_ping(pg_conn_t *c) { return simple(c, "ping", NULL, 0); }

int pg_free(pg_conn_t *c, uint64_t handle) { return simple(c, "free", "handle", handle); }

int pg_put(pg_conn_t *c, pg_dtype_t dtype, int rank, const int64_t *shape, const void *data,
           uint64_t *handle) {
    size_t item = proto_dtype_size(dtype);
    if (item == 0)
        return pg__set_err(&c->err, PG_EBAD_DTYPE, "dtype %d is not one of PG_DTYPE_MAP",
                           (int)dtype);
    if (rank < 0 || rank > PG_MAX_RANK)
        return pg__set_err(&c->err, PG_EBAD_SHAPE, "rank %d is not 0 to %d", rank, PG_MAX_RANK);
    uint64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0)
            return pg__set_err(&c->err, PG_EBAD_SHAPE, "dim %d is negative", i);
        if (shape[i] != 0 && n > UINT64_MAX / 2 / (uint64_t)shape[i] / item)
            return pg__set_err(&c->err, PG_EBAD_SHAPE, "the shape's byte size overflows");
        n *= (uint64_t)shape[i];
    }
    uint64_t nbytes = n * item;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    pg__reply_t r;
    pg__begin(&sb, &pk, "put", c->device[0] ? 4 : 3);
    if (c->device[0]) {
        proto_pack_cstr(&pk, "device");
        proto_pack_cstr(&pk, c->device);
    }
    proto_pack_cstr(&pk, "dtype");
    proto_pack_cstr(&pk, proto_dtype_name(dtype));
    proto_pack_cstr(&pk, "shape");
    msgpack_pack_array(&pk, (size_t)rank);
    for (int i = 0; i < rank; i++)
        msgpack_pack_int64(&pk, shape[i]);
    pg__add_id(c, &pk);
    proto_pack_cstr(&pk, "data"); /* last, so its bytes can follow as a second iovec */
    msgpack_pack_bin(&pk, (size_t)nbytes);
    int rc = pg__roundtrip(c, &sb, data, (size_t)nbytes, &r);
    msgpack_sbuffer_destroy(&sb);
    if (rc)
        return rc;
    proto_err_t perr;
    if (proto_get_uint(r.map, "handle", handle, &perr) != 0)
        rc = pg__set_err(&c->err, PG_EINTERNAL, "put reply: %s", perr.message);
    pg__reply_free(&r);
    return rc;
}

int pg_get(pg_conn_t *c, uint64_t handle, pg_tensor_t *out) {
    memset(out, 0, sizeof(*out));
    msgpack_sbuffer sb;
    msgpack_packer pk;
    pg__reply_t r;
    pg__begin(&sb, &pk, "get", 1);
    proto_pack_cstr(&pk, "handle");
    msgpack_pack_uint64(&pk, handle);
    pg__add_id(c, &pk);
    int rc = pg__roundtrip(c, &sb, NULL, 0, &r);
    msgpack_sbuffer_destroy(&sb);
    if (rc)
        return rc;
    proto_err_t perr;
    pg_dtype_t dt;
    int64_t dims[PROTO_MAX_RANK];
    int rank;
    uint64_t numel, nbytes;
    const uint8_t *data;
    size_t len;
    if (proto_get_dtype(r.map, "dtype", &dt, &perr) ||
        proto_get_shape(r.map, "shape", proto_dtype_size(dt), dims, &rank, &numel, &nbytes,
                        &perr) ||
        proto_get_bin(r.map, "data", &data, &len, &perr) || len != nbytes) {
        pg__reply_free(&r);
        return pg__set_err(&c->err, PG_EINTERNAL, "malformed get reply");
    }
    out->dtype = dt;
    out->rank = rank;
    memcpy(out->shape, dims, sizeof(dims[0]) * (size_t)rank);
    out->numel = numel;
    out->nbytes = nbytes;
    out->data = nbytes ? (void *)data : NULL;
    out->frame_ = r.frame; /* data points into it */
    r.frame = NULL;
    pg__reply_free(&r);
    return 0;
}

int pg_stats(pg_conn_t *c, pg_stats_t *out) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    pg__reply_t r;
    pg__begin(&sb, &pk, "stats", 0);
    pg__add_id(c, &pk);
    int rc = pg__roundtrip(c, &sb, NULL, 0, &r);
    msgpack_sbuffer_destroy(&sb);
    if (rc)
        return rc;
    proto_err_t perr;
    const msgpack_object *s = proto_find(r.map, "session");
    const msgpack_object *runs = proto_find(r.map, "runs"); /* older daemons: runs stay 0 */
    memset(out, 0, sizeof(*out));
    if (proto_get_uint(r.map, "sessions", &out->sessions, &perr) ||
        proto_get_uint(r.map, "tensors", &out->tensors, &perr) ||
        proto_get_uint(r.map, "bytes_in_use", &out->bytes_in_use, &perr) ||
        proto_get_uint(r.map, "bytes_peak", &out->bytes_peak, &perr) ||
        proto_get_uint(r.map, "max_memory", &out->max_memory, &perr) ||
        proto_get_uint(r.map, "requests", &out->requests, &perr) ||
        proto_get_uint(s, "tensors", &out->session_tensors, &perr) ||
        proto_get_uint(s, "bytes", &out->session_bytes, &perr) ||
        (runs && (proto_get_uint(runs, "count", &out->runs, &perr) ||
                  proto_get_number(runs, "seconds", &out->run_seconds, &perr) ||
                  proto_get_number(runs, "prepare_seconds", &out->run_prepare_seconds, &perr) ||
                  proto_get_number(runs, "plan_seconds", &out->run_plan_seconds, &perr) ||
                  proto_get_number(runs, "execute_seconds", &out->run_execute_seconds, &perr))))
        rc = pg__set_err(&c->err, PG_EINTERNAL, "stats reply: %s", perr.message);
    pg__reply_free(&r);
    return rc;
}

void pg_tensor_release(pg_tensor_t *t) {
    free(t->frame_);
    memset(t, 0, sizeof(*t));
}

const pg_error_t *pg_last_error(const pg_conn_t *c) { return &c->err; }

const char *pg_strerror(pg_conn_t *c) {
    snprintf(c->errbuf, sizeof(c->errbuf), "%s: %s", proto_error_name(c->err.code),
             c->err.message);
    return c->errbuf;
}

const char *pg_error_name(int code) { return proto_error_name(code); }
const char *pg_dtype_name(pg_dtype_t dtype) { return proto_dtype_name(dtype); }
size_t pg_dtype_size(pg_dtype_t dtype) { return proto_dtype_size(dtype); }
