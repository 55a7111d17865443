/*
 * auth.h - the shared token that TCP listeners require (--token-file), and its check in hello.
 *
 * A Unix socket is protected by the file system (its mode, --socket-mode, and its directory), so
 * only TCP connections need a token: anyone who can reach a TCP port can connect. The token is
 * read once at start; a connection that needs it must send it as "token" in its first request,
 * hello, and is closed with `unauthorized` otherwise (conn.c enforces the order).
 */
#ifndef PG_AUTH_H
#define PG_AUTH_H

#include "../protocol/proto.h"
#include "limits.h"

#include <stdbool.h>
#include <stdint.h>

/* The daemon's token. bytes is zero past len, so a comparison can read all of it whatever the
 * token's length (see auth_token_equal). */
typedef struct {
    uint8_t bytes[LIM_MAX_TOKEN_BYTES]; /* the token, zero padded */
    uint32_t len;                       /* its length, 1 to LIM_MAX_TOKEN_BYTES when set */
    bool set;                           /* a --token-file was loaded */
} auth_token_t;

/* Reads the token from path: the file's content without surrounding white space. Logs why and
 * returns -1 when the file cannot be read, is not a regular file, is empty after stripping or
 * holds more than LIM_MAX_TOKEN_BYTES; warns when its group or others may read it. Returns 0
 * with *out set. */
int auth_token_load(const char *path, auth_token_t *out);

/* Whether given (len bytes, borrowed) is the token, in time that depends only on len being over
 * LIM_MAX_TOKEN_BYTES or not: every byte of the token's padded buffer is compared and the
 * differences accumulated, with no early exit on a difference or on the lengths. */
bool auth_token_equal(const auth_token_t *t, const uint8_t *given, size_t len);

/* Checks a hello request's "token" field (a str, or bin) against t. Returns 0, or
 * -PG_EUNAUTHORIZED with err saying whether the field was missing, of the wrong type or wrong. */
int auth_check_hello(const auth_token_t *t, const msgpack_object *args, proto_err_t *err);

/* Overwrites the token in memory (at exit, so it does not linger in a core dump). */
void auth_token_wipe(auth_token_t *t);

#endif /* PG_AUTH_H */
