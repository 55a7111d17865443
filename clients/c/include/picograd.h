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
    uint64_t sessions;        /* open sessions, all clients */
    uint64_t tensors;         /* live tensors, all sessions */
    uint64_t bytes_in_use;    /* bytes reserved against the daemon's memory budget */
    uint64_t bytes_peak;      /* the most ever reserved */
    uint64_t max_memory;      /* the budget */
    uint64_t requests;        /* requests answered since start */
    uint64_t session_tensors; /* this session's tensors */
    uint64_t session_bytes;   /* this session's tensor bytes */
} pg_stats_t;

/* Connects to url ("unix:///path" or "tcp://host:port"; NULL: $PICOGRAD_URL, then the default
 * socket) and says hello. Returns a new connection (free with pg_close()), or NULL with *err
 * filled when err is not NULL. */
PG_API pg_conn_t *pg_connect(const char *url, pg_error_t *err);
/* Closes the old socket (its session and tensors are gone) and connects again to the same URL. */
PG_API int pg_reconnect(pg_conn_t *c);
/* Closes the connection; the daemon frees everything the session owned. NULL is ignored. */
PG_API void pg_close(pg_conn_t *c);

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

#ifdef __cplusplus
}
#endif
#endif /* PICOGRAD_H */
