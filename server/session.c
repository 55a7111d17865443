/*
 * session.c - a session's handle table and its byte count, which the session quota
 * (--max-session-memory, server/limits.h) is checked against.
 */
#include "session.h"

void sess_init(sess_t *s, uint64_t id) {
    s->id = id;
    s->next_handle = 1;
    htab_init(&s->tensors);
    s->bytes = 0;
    s->requests = 0;
    s->cuda = NULL;
    s->cuda_free = NULL;
}

static void drop_one(void *val, void *arg) {
    (void)arg;
    tensor_unref(val);
}

void sess_clear(sess_t *s) {
    htab_each(&s->tensors, drop_one, NULL);
    htab_free(&s->tensors);
    s->bytes = 0;
    if (s->cuda_free)
        s->cuda_free(s->cuda); /* after the tensors: their buffers' work is on its streams */
    s->cuda = NULL;
    s->cuda_free = NULL;
}

int sess_add(sess_t *s, tensor_t *t, uint64_t *handle) {
    uint64_t h = s->next_handle;
    if (htab_put(&s->tensors, h, t) != 0) {
        tensor_unref(t);
        return -PG_EOUT_OF_MEMORY;
    }
    s->next_handle++;
    s->bytes += t->block_bytes;
    *handle = h;
    return 0;
}

tensor_t *sess_get(const sess_t *s, uint64_t handle) { return htab_get(&s->tensors, handle); }

int sess_remove(sess_t *s, uint64_t handle) {
    tensor_t *t = htab_del(&s->tensors, handle);
    if (!t)
        return -PG_EUNKNOWN_HANDLE;
    s->bytes -= t->block_bytes;
    tensor_unref(t);
    return 0;
}

int sess_replace(sess_t *s, uint64_t handle, tensor_t *t) {
    tensor_t *old = htab_replace(&s->tensors, handle, t);
    if (!old) {
        tensor_unref(t);
        return -PG_EUNKNOWN_HANDLE;
    }
    s->bytes = s->bytes - old->block_bytes + t->block_bytes;
    tensor_unref(old); /* after the swap: t == old keeps its reference */
    return 0;
}

int sess_check_quota(const sess_t *s, uint64_t quota, uint64_t add, uint64_t drop,
                     const char *what, proto_err_t *err) {
    if (add <= drop)
        return 0;
    uint64_t grow = add - drop;
    if (s->bytes <= quota && grow <= quota - s->bytes)
        return 0;
    return proto_fail(err, PG_EOUT_OF_MEMORY,
                      "%s of %llu bytes does not fit in the session's quota: the session holds "
                      "%llu of %llu bytes (--max-session-memory)",
                      what, (unsigned long long)grow, (unsigned long long)s->bytes,
                      (unsigned long long)quota);
}
