/*
 * auth.c - loading the --token-file token and checking the one a client sends in hello.
 *
 * The comparison must not tell an attacker, through its timing, how much of a guess was right:
 * memcmp stops at the first difference, so guessing byte by byte would take 256 tries a byte
 * instead of 256^len. auth_token_equal therefore reads the whole padded token buffer
 * (LIM_MAX_TOKEN_BYTES) on every call and ORs the differences together; the only branch taken on
 * lengths is on the guess's own length, which the attacker already knows, and the token's length
 * enters the result through an XOR, not a branch.
 */
#include "auth.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bytes read from a token file at most: the token plus generous surrounding white space. A
 * larger file is refused rather than read whole (it is not a token file). */
#define AUTH_FILE_MAX (4 * LIM_MAX_TOKEN_BYTES)

static bool is_space(uint8_t ch) {
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

int auth_token_load(const char *path, auth_token_t *out) {
    uint8_t buf[AUTH_FILE_MAX + 1];
    size_t n = 0;
    int rc = -1;
    memset(out, 0, sizeof(*out));
    /* O_NONBLOCK: a FIFO named by mistake must not hang the start; it is refused below. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        log_error("--token-file %s: cannot open it: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        log_error("--token-file %s: cannot stat it: %s", path, strerror(errno));
        goto out_close;
    }
    if (!S_ISREG(st.st_mode)) {
        log_error("--token-file %s: not a regular file", path);
        goto out_close;
    }
    if (st.st_mode & (S_IRGRP | S_IROTH))
        log_warn("--token-file %s can be read by its group or others (mode %04o): anyone who "
                 "reads it can use the daemon; chmod 600 it",
                 path, (unsigned)(st.st_mode & 07777));
    while (n < sizeof(buf)) {
        ssize_t got = read(fd, buf + n, sizeof(buf) - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            log_error("--token-file %s: cannot read it: %s", path, strerror(errno));
            goto out_wipe;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    if (n > AUTH_FILE_MAX) {
        log_error("--token-file %s: over %d bytes; a token is at most %d bytes", path,
                  AUTH_FILE_MAX, LIM_MAX_TOKEN_BYTES);
        goto out_wipe;
    }
    size_t start = 0, end = n;
    while (start < end && is_space(buf[start]))
        start++;
    while (end > start && is_space(buf[end - 1]))
        end--;
    if (end == start) {
        log_error("--token-file %s: empty (only white space); write a token into it, e.g. "
                  "openssl rand -hex 32 > %s",
                  path, path);
        goto out_wipe;
    }
    if (end - start > LIM_MAX_TOKEN_BYTES) {
        log_error("--token-file %s: the token has %zu bytes; at most %d are allowed", path,
                  end - start, LIM_MAX_TOKEN_BYTES);
        goto out_wipe;
    }
    memcpy(out->bytes, buf + start, end - start);
    out->len = (uint32_t)(end - start);
    out->set = true;
    if (out->len < 16)
        log_warn("--token-file %s: the token has only %u bytes; use at least 16 random bytes "
                 "(openssl rand -hex 32)",
                 path, (unsigned)out->len);
    rc = 0;
out_wipe:
    explicit_bzero(buf, sizeof(buf));
out_close:
    close(fd);
    return rc;
}

bool auth_token_equal(const auth_token_t *t, const uint8_t *given, size_t len) {
    if (!t->set || len > LIM_MAX_TOKEN_BYTES)
        return false; /* only says the guess is over a public limit */
    /* volatile: the compiler may not turn the loop into one that stops at a difference. */
    volatile uint32_t diff = t->len ^ (uint32_t)len;
    for (size_t i = 0; i < LIM_MAX_TOKEN_BYTES; i++) {
        uint8_t g = i < len ? given[i] : 0; /* branches on the guess's length only */
        diff |= (uint32_t)(t->bytes[i] ^ g);
    }
    return diff == 0;
}

int auth_check_hello(const auth_token_t *t, const msgpack_object *args, proto_err_t *err) {
    const msgpack_object *tok = proto_find(args, "token");
    const uint8_t *p;
    size_t n;
    if (!tok)
        return proto_fail(err, PG_EUNAUTHORIZED,
                          "this listener requires a token: send it as 'token' in hello "
                          "(PICOGRAD_TOKEN, or the client's token argument)");
    if (tok->type == MSGPACK_OBJECT_STR) {
        p = (const uint8_t *)tok->via.str.ptr;
        n = tok->via.str.size;
    } else if (tok->type == MSGPACK_OBJECT_BIN) {
        p = (const uint8_t *)tok->via.bin.ptr;
        n = tok->via.bin.size;
    } else {
        return proto_fail(err, PG_EUNAUTHORIZED, "field 'token' must be a str");
    }
    if (!auth_token_equal(t, p, n))
        return proto_fail(err, PG_EUNAUTHORIZED, "wrong token");
    return 0;
}

void auth_token_wipe(auth_token_t *t) { explicit_bzero(t, sizeof(*t)); }
