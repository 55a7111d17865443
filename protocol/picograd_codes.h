/*
 * picograd_codes.h - the code sets of the picograd wire protocol: error codes and dtypes.
 *
 * Each set is one X-macro table, so the C enum, the wire string and the default message can never
 * drift apart. This header is shared by the daemon (through proto.h) and installed with the C
 * client's public header, which is why it has no other dependency.
 */
#ifndef PICOGRAD_CODES_H
#define PICOGRAD_CODES_H

/* XX(ENUM, wire string, default message). The wire carries the string; new codes go at the end so
 * that the C client's enum values stay what applications were compiled with. */
#define PG_ERROR_MAP(XX)                                                                           \
    XX(OK, "ok", "success")                                                                        \
    XX(BAD_FRAME, "bad_frame", "the frame is not one well-formed msgpack map")                    \
    XX(BAD_REQUEST, "bad_request", "the request is malformed")                                    \
    XX(UNKNOWN_OP, "unknown_op", "the op is not served by this daemon")                           \
    XX(UNKNOWN_HANDLE, "unknown_handle", "the handle is not owned by this session")               \
    XX(BAD_SHAPE, "bad_shape", "the shape is invalid")                                            \
    XX(BAD_DTYPE, "bad_dtype", "the dtype is not supported")                                      \
    XX(TOO_LARGE, "too_large", "a size is over a fixed limit")                                    \
    XX(OUT_OF_MEMORY, "out_of_memory", "the memory budget cannot hold the request")               \
    XX(VERSION_MISMATCH, "version_mismatch", "the protocol version is not supported")            \
    XX(INTERNAL, "internal", "internal error")                                                    \
    XX(DISCONNECTED, "disconnected", "the connection to the daemon was lost")                    \
    XX(NO_DEVICE, "no_device", "the device is not available in this daemon")                     \
    XX(UNAUTHORIZED, "unauthorized", "this connection has not presented a valid token")          \
    XX(TIMEOUT, "timeout", "the request ran past the daemon's time limit and was cancelled")

/* Error codes. Functions return 0 or -PG_E<code>; PG_EDISCONNECTED is produced by clients only. */
typedef enum {
#define XX(e, s, m) PG_E##e,
    PG_ERROR_MAP(XX)
#undef XX
    PG_ERROR_COUNT
} pg_error_code_t;

/* XX(ENUM, wire string, item size in bytes) */
#define PG_DTYPE_MAP(XX)                                                                           \
    XX(FLOAT32, "float32", 4)                                                                      \
    XX(FLOAT64, "float64", 8)                                                                      \
    XX(INT32, "int32", 4)                                                                          \
    XX(INT64, "int64", 8)                                                                          \
    XX(BOOL, "bool", 1)

typedef enum {
#define XX(e, s, n) PG_##e,
    PG_DTYPE_MAP(XX)
#undef XX
    PG_DTYPE_COUNT
} pg_dtype_t;

#endif /* PICOGRAD_CODES_H */
