/*
 * proto.h - the picograd wire codec, shared by picogradd and the C client.
 *
 * The wire is specified in PROTOCOL.md next to this file. This header gives the three things both
 * ends need and that are easy to get subtly wrong:
 *
 *   1. the code sets (error codes, dtypes) as X-macro tables, so the C enum, the wire string and
 *      the default message can never drift apart;
 *   2. an incremental frame reader: bytes arrive in arbitrary pieces, a frame's length is checked
 *      before a byte of its body is buffered, and a large body can be read straight into its final
 *      buffer (proto_reader_direct) instead of through a bounce buffer;
 *   3. a non-recursive msgpack checker that a frame must pass before msgpack-c sees it (msgpack-c
 *      allocates a container's slots from its declared length, so a 10-byte frame claiming a
 *      4-billion-entry array must be refused first), and typed field getters that turn every
 *      mistake into a bad_request naming the field.
 */
#ifndef PG_PROTO_H
#define PG_PROTO_H

#include "picograd_codes.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1
#define PROTO_MAX_RANK 8         /* tensors have at most this many dims */
#define PROTO_MAX_DEPTH 32       /* msgpack nesting accepted in a frame (msgpack-c's own stack) */
#define PROTO_MAX_OBJECTS (1u << 22) /* msgpack objects per frame: bounds msgpack-c's zone use */
#define PROTO_HEAD_MAX 4096      /* bytes of a body the reader keeps before handing it over */
#define PROTO_MSG_MAX 256        /* longest error message, including the NUL */

/* ---------------------------------------------------------------------------------------------
 * Code sets
 * ------------------------------------------------------------------------------------------- */

/* Returns the wire token of an error code ("bad_frame"), or "internal" when out of range. */
const char *proto_error_name(int code);
/* Returns the default human message of an error code. */
const char *proto_error_default_message(int code);
/* Returns the wire name of a dtype, or NULL when out of range. */
const char *proto_dtype_name(int dtype);
/* Returns the item size of a dtype in bytes, or 0 when out of range. */
size_t proto_dtype_size(int dtype);
/* Looks up a dtype by wire name (len bytes, not NUL-terminated); returns it or -1. */
int proto_dtype_from_name(const char *s, size_t len);

/* An error as the wire carries it: a code and a message naming what was wrong. */
typedef struct {
    int code;                    /* a pg_error_code_t; PG_EOK when there is no error */
    char message[PROTO_MSG_MAX]; /* NUL-terminated, never holds raw wire bytes */
} proto_err_t;

/* Copies wire text s (n bytes) into buf as a C string when it is short (under cap bytes)
 * printable ASCII and returns true; otherwise stores "?" and returns false. Error messages quote
 * client text only through this, so they never echo raw bytes. */
bool proto_quote(char *buf, size_t cap, const char *s, size_t n);

/* Fills err with code and a printf-formatted message; returns -code so callers can
 * `return proto_fail(err, PG_EBAD_REQUEST, "...")`. */
int proto_fail(proto_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------------------------------------
 * Frames
 * ------------------------------------------------------------------------------------------- */

/* Writes the 4-byte big-endian length prefix of a body of n bytes. */
void proto_put_len(uint8_t out[4], uint32_t n);
/* Reads a 4-byte big-endian length prefix. */
uint32_t proto_get_len(const uint8_t in[4]);

/* What proto_reader_feed() stopped at. */
typedef enum {
    PROTO_READ_MORE = 0, /* all bytes consumed, the frame is not complete yet */
    PROTO_READ_BAD_LEN,  /* the length prefix is 0 or over the reader's max_len: a framing error;
                          * the reader must not be fed again */
    PROTO_READ_HEAD,     /* a length and the body's first bytes are known: the caller must now
                          * call proto_reader_set_body() or proto_reader_discard() */
    PROTO_READ_FRAME,    /* a whole body is ready: take it with proto_reader_take() */
} proto_read_event_t;

typedef enum {
    PROTO_ST_LEN = 0, /* reading the 4-byte prefix */
    PROTO_ST_HEAD,    /* collecting the first min(len, PROTO_HEAD_MAX) body bytes into head */
    PROTO_ST_WAIT,    /* head complete, waiting for the caller's decision */
    PROTO_ST_BODY,    /* filling the caller's body buffer */
    PROTO_ST_DISCARD, /* skipping the rest of a refused body */
    PROTO_ST_DONE,    /* body complete, waiting for proto_reader_take() */
} proto_read_state_t;

/*
 * An incremental frame reader. It never allocates: at PROTO_READ_HEAD the caller, which knows its
 * limits and its allocator, decides where the body goes. Keeping the head lets the caller look at
 * the start of a large body (proto_locate_bin) before choosing that buffer, and lets a refused
 * body still yield the request id for the error reply.
 */
typedef struct {
    proto_read_state_t state;
    uint32_t max_len;           /* the largest body accepted (--max-frame) */
    uint8_t lenbuf[4];          /* the length prefix as it arrives */
    uint32_t lengot;            /* bytes of lenbuf filled */
    uint32_t len;               /* the body length, valid after PROTO_ST_LEN */
    uint8_t head[PROTO_HEAD_MAX]; /* the body's first bytes */
    uint32_t headlen;           /* bytes of head filled */
    uint8_t *body;              /* the caller's buffer (borrowed), NULL while discarding */
    uint64_t got;               /* body bytes received so far, head included */
} proto_reader_t;

/* Prepares a reader that accepts bodies of 1 to max_len bytes. */
void proto_reader_init(proto_reader_t *r, uint32_t max_len);

/* Consumes bytes from data[0..n). Stores how many were used in *used and returns the event that
 * stopped it. After PROTO_READ_HEAD or PROTO_READ_FRAME, feed the remaining bytes again once the
 * caller has acted. PROTO_READ_BAD_LEN is returned as soon as the 4 prefix bytes are in, before
 * any body byte is kept. */
proto_read_event_t proto_reader_feed(proto_reader_t *r, const uint8_t *data, size_t n,
                                     size_t *used);

/* Gives the reader the buffer for the body (at least r->len bytes, borrowed until the frame is
 * taken); the head bytes already received are copied into it. */
void proto_reader_set_body(proto_reader_t *r, uint8_t *body);

/* Tells the reader to skip the rest of the body; the head stays readable in r->head. */
void proto_reader_discard(proto_reader_t *r);

/* Returns true when a whole body was read or skipped and must be taken before feeding more. */
bool proto_reader_done(const proto_reader_t *r);

/* Hands back the finished body buffer (NULL for a discarded one) and resets the reader. */
uint8_t *proto_reader_take(proto_reader_t *r);

/* When the reader is filling a body, stores where the next bytes go and how many are still
 * expected, so a socket read can land in the body directly; returns false otherwise. */
bool proto_reader_direct(const proto_reader_t *r, uint8_t **ptr, size_t *len);

/* Records that n bytes were written at the pointer proto_reader_direct() gave; returns
 * PROTO_READ_FRAME when this completed the body. */
proto_read_event_t proto_reader_advance(proto_reader_t *r, size_t n);

/* ---------------------------------------------------------------------------------------------
 * msgpack checks
 * ------------------------------------------------------------------------------------------- */

/* Checks that buf[0..n) is exactly one msgpack map, at most PROTO_MAX_DEPTH deep, with at most
 * PROTO_MAX_OBJECTS objects, each container's declared length fitting in the remaining bytes,
 * and no trailing bytes. Never recurses. Returns 0, or -PG_EBAD_FRAME with err filled. */
int proto_check_map(const uint8_t *buf, size_t n, proto_err_t *err);

/* Looks at a possibly incomplete body: walks the top-level map's entries in order and finds the
 * first value that is a bin of at least min_len bytes (the bulk payload). Returns its
 * payload's offset from buf and stores its length, or returns -1 when the bytes seen do not
 * reach such a value. Never recurses; never reads past n. */
int64_t proto_locate_bin(const uint8_t *buf, size_t n, uint64_t min_len, uint64_t *bin_len);

/* Recovers a request id from a possibly incomplete body (used to answer a refused frame): walks
 * the top-level map for an "id" key with an unsigned value. Returns true and stores it on
 * success. */
bool proto_peek_id(const uint8_t *buf, size_t n, uint64_t *id);

/* ---------------------------------------------------------------------------------------------
 * Typed field access on a decoded map
 * ------------------------------------------------------------------------------------------- */

/* Returns the value of key in map, or NULL when the map has no such key (or is not a map). */
const msgpack_object *proto_find(const msgpack_object *map, const char *key);

/* The getters below fill err with a bad_request naming the field when it is missing (unless
 * marked optional) or of the wrong type, and return -PG_EBAD_REQUEST; 0 on success. */

/* An unsigned integer (a non-negative msgpack int). */
int proto_get_uint(const msgpack_object *map, const char *key, uint64_t *out, proto_err_t *err);
/* A string; *s borrows from the decoded object. */
int proto_get_str(const msgpack_object *map, const char *key, const char **s, size_t *len,
                  proto_err_t *err);
/* A bin; *p borrows from the decoded object. */
int proto_get_bin(const msgpack_object *map, const char *key, const uint8_t **p, size_t *len,
                  proto_err_t *err);
/* A number (int or float) as a double. */
int proto_get_number(const msgpack_object *map, const char *key, double *out, proto_err_t *err);

/* A dtype name: -PG_EBAD_DTYPE for an unknown name, -PG_EBAD_REQUEST for a non-string. */
int proto_get_dtype(const msgpack_object *map, const char *key, pg_dtype_t *out,
                    proto_err_t *err);

/* A shape: an array of at most PROTO_MAX_RANK non-negative ints whose element count and byte size
 * (for itemsize) fit in 63 bits. Stores the dims, the rank, the element count and byte count.
 * Errors: -PG_EBAD_REQUEST (not an array of ints), -PG_EBAD_SHAPE (negative, rank, overflow). */
int proto_get_shape(const msgpack_object *map, const char *key, size_t itemsize,
                    int64_t dims[PROTO_MAX_RANK], int *rank, uint64_t *numel, uint64_t *nbytes,
                    proto_err_t *err);

/* ---------------------------------------------------------------------------------------------
 * Encoding helpers
 * ------------------------------------------------------------------------------------------- */

/* Packs a NUL-terminated string as a msgpack str. */
int proto_pack_cstr(msgpack_packer *pk, const char *s);

/* Packs the standard reply opening {"id": id, "ok": ok, ...} as a map of `entries` entries in all
 * (id and ok included). has_id false packs "id": nil. */
int proto_pack_reply_head(msgpack_packer *pk, uint32_t entries, bool has_id, uint64_t id, bool ok);

/* Packs a whole error reply {"id", "ok": false, "error": {"code", "message"}}. */
int proto_pack_error(msgpack_packer *pk, bool has_id, uint64_t id, const proto_err_t *err);

/* ---------------------------------------------------------------------------------------------
 * Addresses
 * ------------------------------------------------------------------------------------------- */

typedef enum { PROTO_URL_UNIX, PROTO_URL_TCP } proto_url_kind_t;

/* A parsed listen or connect address. */
typedef struct {
    proto_url_kind_t kind;
    char path[108]; /* PROTO_URL_UNIX: absolute socket path (sun_path holds 108 bytes) */
    char host[256]; /* PROTO_URL_TCP: host name or address, brackets of [v6] removed */
    uint16_t port;  /* PROTO_URL_TCP: port, 0 asks the system for one when listening */
} proto_url_t;

/* Parses "unix:///abs/path" or "tcp://HOST:PORT" ("tcp://[::1]:PORT" for IPv6).
 * Returns 0, or -PG_EBAD_REQUEST with err naming what is wrong. */
int proto_parse_url(const char *url, proto_url_t *out, proto_err_t *err);

/* Writes the default URL into buf (cap bytes): $PICOGRAD_URL when use_env is true and it is set,
 * else unix://$XDG_RUNTIME_DIR/picogradd.sock, else unix:///tmp/picogradd-$UID.sock. */
void proto_default_url(char *buf, size_t cap, bool use_env);

/* The system service's socket (deploy/picogradd.socket), for the members of group picograd. */
#define PROTO_SYSTEM_SOCKET "/run/picogradd/picogradd.sock"

/* Writes the URL a client uses when given none into buf (cap bytes), as PROTOCOL.md section 1
 * says: $PICOGRAD_URL when set; else the first of unix://$XDG_RUNTIME_DIR/picogradd.sock (when
 * XDG_RUNTIME_DIR is set), unix://PROTO_SYSTEM_SOCKET and unix:///tmp/picogradd-$UID.sock whose
 * path is an existing socket; else the first of those candidates. */
void proto_client_url(char *buf, size_t cap);

#endif /* PG_PROTO_H */
