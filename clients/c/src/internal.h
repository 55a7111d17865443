/*
 * internal.h - what the C client's source files share and the public header does not show.
 *
 * client.c owns the connection and the one-request round trip; graph.c (the `run` graph builder)
 * packs its own request and reuses that round trip. These helpers are non-static so both files
 * can call them, carry the `pg__` prefix of internal symbols, and are not exported from
 * libpicograd.so (the shared library is built with hidden visibility; only PG_API is public).
 */
#ifndef PG_CLIENT_INTERNAL_H
#define PG_CLIENT_INTERNAL_H

#include "picograd.h"
#include "proto.h"

#include <stddef.h>
#include <stdint.h>

struct pg_conn {
    int fd;              /* -1 when disconnected */
    char url[512];       /* where to reconnect */
    uint64_t next_id;    /* request ids, increasing */
    pg_error_t err;      /* the last error */
    char errbuf[300];    /* pg_strerror's text */
    char *ops;           /* hello's `ops`: names back to back, each NUL-terminated (owned,
                          * malloc; NULL before hello or when the reply had none) */
    size_t ops_len;      /* bytes of ops */
    char *token;         /* sent in hello (owned, malloc; NULL: none), without white space */
    char device[24];     /* pg_set_device: sent with every put and run; "" for the CPU */
};

/* A decoded reply; frame owns the bytes msg points into. */
typedef struct {
    uint8_t *frame;              /* 64-byte aligned; the body starts at frame + 4 */
    msgpack_unpacked msg;        /* the decoded body */
    const msgpack_object *map;   /* the reply's top-level map (inside msg) */
} pg__reply_t;

/* Fills *e with code and a printf-formatted message; returns -code. */
int pg__set_err(pg_error_t *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Frees what a successful pg__roundtrip() stored in r (the frame too, unless taken: set
 * r->frame to NULL first to keep it). */
void pg__reply_free(pg__reply_t *r);

/*
 * Starts a request map of `fields` op fields + id + op in sb (initialized here; the caller
 * destroys it), with the 4 length-prefix bytes reserved. The caller packs its fields and calls
 * pg__add_id() exactly once, in any order among them.
 */
void pg__begin(msgpack_sbuffer *sb, msgpack_packer *pk, const char *op, uint32_t fields);
/* Packs the "id" entry: the id the next pg__roundtrip() on c will expect. */
void pg__add_id(pg_conn_t *c, msgpack_packer *pk);

/*
 * Sends the request packed in sb, followed by `extra` raw bytes (borrowed; they complete the
 * last value packed in sb, e.g. a bin body or an array's elements), and reads the reply into r.
 * Returns 0 with r filled (free it with pg__reply_free()), or a negative code with c->err filled
 * and nothing to free: the daemon's own error, or -PG_EDISCONNECTED when the connection was lost.
 */
int pg__roundtrip(pg_conn_t *c, msgpack_sbuffer *sb, const void *extra, size_t extra_len,
                  pg__reply_t *r);

#endif /* PG_CLIENT_INTERNAL_H */
