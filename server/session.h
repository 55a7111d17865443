/*
 * session.h - what one connection owns: its tensors, by handle.
 *
 * A connection is a session. Handles are numbers drawn from a per-session counter, so they are
 * never addresses, never reused within the session, and meaningless in any other session: a
 * handle from connection A looked up in B's table is simply not there (unknown_handle).
 *
 * Threading: a session is touched by one thread at a time, because a connection's requests run
 * one after another (the loop thread, or one worker while the loop waits for it).
 */
#ifndef PG_SESSION_H
#define PG_SESSION_H

#include "htab.h"
#include "tensor.h"

typedef struct {
    uint64_t id;          /* session number, for logs and hello */
    uint64_t next_handle; /* the next handle to give out; starts at 1 */
    htab_t tensors;       /* handle -> tensor_t* (one reference each) */
    uint64_t bytes;       /* storage bytes of this session's tensors */
    uint64_t requests;    /* requests answered */
    void *cuda;           /* its CUDA streams and cuBLAS handles (cudarun.c), NULL until used */
    void (*cuda_free)(void *cuda); /* frees them (set with cuda) */
} sess_t;

/* Prepares an empty session. */
void sess_init(sess_t *s, uint64_t id);
/* Drops every tensor the session holds and frees its table. */
void sess_clear(sess_t *s);
/* Stores t under a new handle. Takes ownership of the caller's reference, also on failure.
 * Returns 0, or -PG_EOUT_OF_MEMORY when the table cannot grow. */
int sess_add(sess_t *s, tensor_t *t, uint64_t *handle);
/* Returns the tensor of a handle (borrowed), or NULL when the session has no such handle. */
tensor_t *sess_get(const sess_t *s, uint64_t handle);
/* Makes an existing handle name t instead of the tensor it held (the `assign` node's commit,
 * run.c). Takes ownership of the caller's reference to t; drops the session's reference to the
 * old tensor, which lives on as long as another handle, a kept output or a reply still being
 * written (`get`'s tail) holds its own reference, so nothing is written in place. The session's
 * byte count moves from the old tensor to t. Never allocates. Returns 0, or
 * -PG_EUNKNOWN_HANDLE (t is then unreferenced) when the session has no such handle. t may be
 * the tensor the handle already holds. */
int sess_replace(sess_t *s, uint64_t handle, tensor_t *t);
/* Forgets a handle and drops its reference. Returns 0, or -PG_EUNKNOWN_HANDLE. */
int sess_remove(sess_t *s, uint64_t handle);
/* The session quota (--max-session-memory): returns 0 when s may go on holding its tensors with
 * `add` bytes more and `drop` bytes fewer within `quota` bytes (or when the change does not
 * grow it), else fills err with out_of_memory naming the quota, the session's usage and the
 * request's size (`what`: "a put", "run") and returns -PG_EOUT_OF_MEMORY. */
int sess_check_quota(const sess_t *s, uint64_t quota, uint64_t add, uint64_t drop,
                     const char *what, proto_err_t *err);

#endif /* PG_SESSION_H */
