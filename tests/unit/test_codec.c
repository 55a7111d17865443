/*
 * test_codec.c - unit tests of the wire codec in protocol/: frames, the msgpack checker and
 * walkers, the typed getters, URLs. Every decoder is fed truncated and garbage input as well as
 * good input, because the daemon runs them on bytes from anyone.
 */
#include "proto.h"
#include "task.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

/* Packs a map with msgpack-c into a fresh sbuffer. */
static msgpack_sbuffer pack_put(const char *dtype, int rank, const int64_t *shape,
                                const void *data, size_t n) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    proto_pack_cstr(&pk, "id");
    msgpack_pack_uint64(&pk, 77);
    proto_pack_cstr(&pk, "op");
    proto_pack_cstr(&pk, "put");
    proto_pack_cstr(&pk, "dtype");
    proto_pack_cstr(&pk, dtype);
    proto_pack_cstr(&pk, "shape");
    msgpack_pack_array(&pk, (size_t)rank);
    for (int i = 0; i < rank; i++)
        msgpack_pack_int64(&pk, shape[i]);
    proto_pack_cstr(&pk, "data");
    msgpack_pack_bin(&pk, n);
    msgpack_pack_bin_body(&pk, data, n);
    return sb;
}

TEST_IMPL(len_prefix) {
    uint8_t b[4];
    uint32_t vals[] = {0, 1, 255, 256, 65536, 0x12345678, 0xffffffffu};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        proto_put_len(b, vals[i]);
        ASSERT_EQ(proto_get_len(b), vals[i]);
    }
    proto_put_len(b, 0x01020304);
    ASSERT(b[0] == 1 && b[1] == 2 && b[2] == 3 && b[3] == 4); /* big-endian */
    return 0;
}

/* Feeds `stream` to a reader in pieces of `step` bytes; returns the number of frames seen and
 * checks each equals `body`. */
static int feed_in_steps(const uint8_t *stream, size_t n, size_t step, const uint8_t *body,
                         uint32_t blen) {
    proto_reader_t r;
    proto_reader_init(&r, 1 << 20);
    uint8_t *buf = malloc(blen + 1);
    int frames = 0;
    for (size_t pos = 0; pos < n;) {
        size_t chunk = n - pos < step ? n - pos : step;
        const uint8_t *p = stream + pos;
        size_t left = chunk;
        while (left > 0 || proto_reader_done(&r)) {
            size_t used;
            proto_read_event_t ev = proto_reader_feed(&r, p, left, &used);
            p += used;
            left -= used;
            if (ev == PROTO_READ_MORE)
                break;
            ASSERT(ev != PROTO_READ_BAD_LEN);
            if (ev == PROTO_READ_HEAD) {
                ASSERT_EQ(r.len, blen);
                proto_reader_set_body(&r, buf);
            } else if (ev == PROTO_READ_FRAME) {
                uint8_t *got = proto_reader_take(&r);
                ASSERT(got == buf);
                ASSERT(memcmp(got, body, blen) == 0);
                frames++;
            }
        }
        pos += chunk;
    }
    ASSERT_EQ(r.state, PROTO_ST_LEN); /* nothing half-read is left */
    free(buf);
    return frames;
}

TEST_IMPL(reader_any_split) {
    /* Three frames back to back, one larger than the head, split at every step size. */
    uint32_t sizes[] = {5, PROTO_HEAD_MAX + 1000, 1};
    for (int s = 0; s < 3; s++) {
        uint32_t blen = sizes[s];
        uint8_t *body = malloc(blen);
        for (uint32_t i = 0; i < blen; i++)
            body[i] = (uint8_t)(i * 7 + 3);
        size_t n = 3 * (4 + (size_t)blen);
        uint8_t *stream = malloc(n);
        for (int k = 0; k < 3; k++) {
            proto_put_len(stream + k * (4 + blen), blen);
            memcpy(stream + k * (4 + blen) + 4, body, blen);
        }
        size_t steps[] = {1, 2, 3, 4, 5, 7, 64, 4095, 4096, 4097, n};
        for (size_t j = 0; j < sizeof(steps) / sizeof(steps[0]); j++)
            ASSERT_EQ(feed_in_steps(stream, n, steps[j], body, blen), 3);
        free(stream);
        free(body);
    }
    return 0;
}

TEST_IMPL(reader_direct) {
    /* A body filled through proto_reader_direct, as the daemon does for large frames. */
    uint32_t blen = 100000;
    uint8_t hdr[4];
    proto_put_len(hdr, blen);
    uint8_t *body = malloc(blen), *dst = malloc(blen);
    for (uint32_t i = 0; i < blen; i++)
        body[i] = (uint8_t)(i ^ (i >> 8));
    proto_reader_t r;
    proto_reader_init(&r, 1 << 20);
    size_t used;
    ASSERT_EQ(proto_reader_feed(&r, hdr, 4, &used), PROTO_READ_MORE);
    ASSERT_EQ(proto_reader_feed(&r, body, PROTO_HEAD_MAX, &used), PROTO_READ_HEAD);
    proto_reader_set_body(&r, dst);
    uint8_t *p;
    size_t len;
    ASSERT(proto_reader_direct(&r, &p, &len));
    ASSERT(p == dst + PROTO_HEAD_MAX);
    ASSERT_EQ(len, blen - PROTO_HEAD_MAX);
    memcpy(p, body + PROTO_HEAD_MAX, 1000);
    ASSERT_EQ(proto_reader_advance(&r, 1000), PROTO_READ_MORE);
    ASSERT(proto_reader_direct(&r, &p, &len));
    memcpy(p, body + PROTO_HEAD_MAX + 1000, len);
    ASSERT_EQ(proto_reader_advance(&r, len), PROTO_READ_FRAME);
    ASSERT(proto_reader_take(&r) == dst);
    ASSERT(memcmp(dst, body, blen) == 0);
    free(body);
    free(dst);
    return 0;
}

TEST_IMPL(reader_bad_len) {
    proto_reader_t r;
    uint8_t hdr[8] = {0};
    size_t used;
    proto_reader_init(&r, 1000);
    ASSERT_EQ(proto_reader_feed(&r, hdr, 8, &used), PROTO_READ_BAD_LEN); /* length 0 */
    ASSERT_EQ(used, 4);
    proto_reader_init(&r, 1000);
    proto_put_len(hdr, 1001);
    ASSERT_EQ(proto_reader_feed(&r, hdr, 8, &used), PROTO_READ_BAD_LEN); /* over the limit */
    ASSERT_EQ(r.headlen, 0); /* no body byte was kept */
    return 0;
}

TEST_IMPL(reader_discard_keeps_head) {
    uint8_t *zeros = calloc(1, 12000);
    msgpack_sbuffer sb = pack_put("float32", 1, (int64_t[]){3000}, zeros, 12000);
    free(zeros);
    uint8_t hdr[4];
    proto_put_len(hdr, (uint32_t)sb.size);
    proto_reader_t r;
    proto_reader_init(&r, 1 << 20);
    size_t used;
    proto_reader_feed(&r, hdr, 4, &used);
    ASSERT_EQ(proto_reader_feed(&r, (uint8_t *)sb.data, sb.size, &used), PROTO_READ_HEAD);
    proto_reader_discard(&r);
    size_t left = sb.size - used;
    ASSERT_EQ(proto_reader_feed(&r, (uint8_t *)sb.data + used, left, &used), PROTO_READ_FRAME);
    uint64_t id = 0;
    ASSERT(proto_peek_id(r.head, r.headlen, &id));
    ASSERT_EQ(id, 77);
    ASSERT(proto_reader_take(&r) == NULL);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}

TEST_IMPL(check_map_good_and_locate) {
    float data[6] = {1, 2, 3, 4, 5, 6};
    msgpack_sbuffer sb = pack_put("float32", 2, (int64_t[]){2, 3}, data, sizeof(data));
    proto_err_t err;
    ASSERT_EQ(proto_check_map((uint8_t *)sb.data, sb.size, &err), 0);
    uint64_t blen = 0;
    int64_t off = proto_locate_bin((uint8_t *)sb.data, sb.size, 1, &blen);
    ASSERT(off > 0);
    ASSERT_EQ(blen, sizeof(data));
    ASSERT(memcmp(sb.data + off, data, sizeof(data)) == 0);
    /* The walkers stop cleanly at every truncation point. */
    for (size_t n = 0; n < sb.size; n++) {
        ASSERT(proto_check_map((uint8_t *)sb.data, n, &err) != 0);
        ASSERT_EQ(err.code, PG_EBAD_FRAME);
        int64_t o = proto_locate_bin((uint8_t *)sb.data, n, 1, &blen);
        ASSERT(o == -1 || o == off);
        uint64_t id;
        if (proto_peek_id((uint8_t *)sb.data, n, &id))
            ASSERT_EQ(id, 77);
    }
    msgpack_sbuffer_destroy(&sb);
    return 0;
}

/* Found by pg_fuzz_frame: an id >= 0 in a signed int format (some encoders write int64 so) is an
 * unsigned int to msgpack-c, hence to req_decode; proto_peek_id, which answers refused frames,
 * must find it too. */
TEST_IMPL(peek_id_signed_formats) {
    const uint8_t i8[] = {0x81, 0xa2, 'i', 'd', 0xd0, 0x05};
    const uint8_t i16[] = {0x81, 0xa2, 'i', 'd', 0xd1, 0x01, 0x00};
    const uint8_t i32[] = {0x81, 0xa2, 'i', 'd', 0xd2, 0x00, 0x01, 0x00, 0x00};
    const uint8_t i64[] = {0x82, 0xa2, 'o', 'p', 0xa3, 'p', 'u', 't', 0xa2, 'i', 'd', 0xd3,
                           0x03, 0xa2, 0x6f, 0x70, 0xa3, 0x70, 0x75, 0x74};
    const uint8_t neg[] = {0x81, 0xa2, 'i', 'd', 0xd0, 0xff};
    uint64_t id = 0;
    ASSERT(proto_peek_id(i8, sizeof(i8), &id));
    ASSERT_EQ(id, 5);
    ASSERT(proto_peek_id(i16, sizeof(i16), &id));
    ASSERT_EQ(id, 256);
    ASSERT(proto_peek_id(i32, sizeof(i32), &id));
    ASSERT_EQ(id, 65536);
    ASSERT(proto_peek_id(i64, sizeof(i64), &id));
    ASSERT_EQ(id, 0x03a26f70a3707574ull);
    ASSERT(!proto_peek_id(neg, sizeof(neg), &id));
    /* msgpack-c agrees on every one of them. */
    const uint8_t *all[] = {i8, i16, i32, i64, neg};
    size_t lens[] = {sizeof(i8), sizeof(i16), sizeof(i32), sizeof(i64), sizeof(neg)};
    for (int k = 0; k < 5; k++) {
        proto_err_t err;
        ASSERT_EQ(proto_check_map(all[k], lens[k], &err), 0);
        msgpack_unpacked m;
        msgpack_unpacked_init(&m);
        size_t off = 0;
        ASSERT_EQ(msgpack_unpack_next(&m, (const char *)all[k], lens[k], &off),
                  MSGPACK_UNPACK_SUCCESS);
        const msgpack_object *o = proto_find(&m.data, "id");
        ASSERT(o);
        ASSERT_EQ(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER, k < 4);
        msgpack_unpacked_destroy(&m);
    }
    return 0;
}

TEST_IMPL(check_map_rejects) {
    proto_err_t err;
    const uint8_t not_map[] = {0x93, 1, 2, 3};         /* an array */
    const uint8_t invalid[] = {0x81, 0xa1, 'a', 0xc1}; /* never-used byte */
    const uint8_t trailing[] = {0x80, 0x00};           /* {} then junk */
    const uint8_t huge[] = {0x81, 0xa1, 'a', 0xdd, 0xff, 0xff, 0xff, 0xff}; /* 4G-entry array */
    const uint8_t bigstr[] = {0x81, 0xa1, 'a', 0xdb, 0x7f, 0xff, 0xff, 0xff}; /* 2 GiB str */
    ASSERT(proto_check_map(not_map, sizeof(not_map), &err) == -PG_EBAD_FRAME);
    ASSERT(proto_check_map(invalid, sizeof(invalid), &err) == -PG_EBAD_FRAME);
    ASSERT(proto_check_map(trailing, sizeof(trailing), &err) == -PG_EBAD_FRAME);
    ASSERT(strstr(err.message, "trailing") != NULL);
    ASSERT(proto_check_map(huge, sizeof(huge), &err) == -PG_EBAD_FRAME);
    ASSERT(proto_check_map(bigstr, sizeof(bigstr), &err) == -PG_EBAD_FRAME);
    /* Nesting: 32 open containers pass (msgpack-c's own stack is 32 deep), 33 fail, and
     * 100000 fail without recursion. Empty containers take no stack slot in either decoder. */
    size_t deep = 100000;
    uint8_t *b = malloc(deep + 4);
    for (int containers = 30; containers <= 34; containers++) {
        /* {"a": [[...[0]...]]}: the map and containers - 1 one-element arrays */
        size_t n = 0;
        b[n++] = 0x81;
        b[n++] = 0xa1;
        b[n++] = 'a';
        for (int i = 0; i < containers - 1; i++)
            b[n++] = 0x91;
        b[n++] = 0x00;
        int rc = proto_check_map(b, n, &err);
        ASSERT_EQ(rc, containers <= PROTO_MAX_DEPTH ? 0 : -PG_EBAD_FRAME);
        if (rc == 0) { /* what the checker accepts, msgpack-c decodes */
            msgpack_unpacked up;
            msgpack_unpacked_init(&up);
            size_t off = 0;
            ASSERT(msgpack_unpack_next(&up, (const char *)b, n, &off) == MSGPACK_UNPACK_SUCCESS);
            msgpack_unpacked_destroy(&up);
        }
    }
    b[0] = 0x81, b[1] = 0xa1, b[2] = 'a';
    memset(b + 3, 0x91, deep);
    ASSERT(proto_check_map(b, deep + 3, &err) == -PG_EBAD_FRAME);
    free(b);
    /* Random garbage never crashes and is never accepted unless it is a map. */
    srand(1);
    uint8_t g[64];
    for (int it = 0; it < 200000; it++) {
        size_t n = (size_t)(rand() % 64) + 1;
        for (size_t i = 0; i < n; i++)
            g[i] = (uint8_t)rand();
        if (proto_check_map(g, n, &err) == 0)
            ASSERT((g[0] & 0xf0) == 0x80 || g[0] == 0xde || g[0] == 0xdf);
        uint64_t x;
        proto_locate_bin(g, n, 1, &x);
        proto_peek_id(g, n, &x);
    }
    return 0;
}

/* Decodes a map given as msgpack bytes made by packing with msgpack-c. */
typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked up;
} doc_t;

static void doc_begin(doc_t *d, uint32_t entries) {
    msgpack_sbuffer_init(&d->sb);
    msgpack_packer_init(&d->pk, &d->sb, msgpack_sbuffer_write);
    msgpack_unpacked_init(&d->up);
    msgpack_pack_map(&d->pk, entries);
}

static const msgpack_object *doc_end(doc_t *d) {
    size_t off = 0;
    ASSERT(msgpack_unpack_next(&d->up, d->sb.data, d->sb.size, &off) == MSGPACK_UNPACK_SUCCESS);
    return &d->up.data;
}

static void doc_free(doc_t *d) {
    msgpack_unpacked_destroy(&d->up);
    msgpack_sbuffer_destroy(&d->sb);
}

TEST_IMPL(getters) {
    doc_t d;
    doc_begin(&d, 5);
    proto_pack_cstr(&d.pk, "u");
    msgpack_pack_uint64(&d.pk, UINT64_MAX);
    proto_pack_cstr(&d.pk, "neg");
    msgpack_pack_int64(&d.pk, -5);
    proto_pack_cstr(&d.pk, "s");
    proto_pack_cstr(&d.pk, "float64");
    proto_pack_cstr(&d.pk, "f");
    msgpack_pack_double(&d.pk, 2.5);
    proto_pack_cstr(&d.pk, "bad");
    proto_pack_cstr(&d.pk, "float16");
    const msgpack_object *m = doc_end(&d);
    proto_err_t err;
    uint64_t u;
    double f;
    pg_dtype_t dt;
    ASSERT_EQ(proto_get_uint(m, "u", &u, &err), 0);
    ASSERT(u == UINT64_MAX);
    ASSERT_EQ(proto_get_uint(m, "neg", &u, &err), -PG_EBAD_REQUEST);
    ASSERT_STR_EQ(err.message, "field 'neg' must be an unsigned int, got negative int");
    ASSERT_EQ(proto_get_uint(m, "missing", &u, &err), -PG_EBAD_REQUEST);
    ASSERT_STR_EQ(err.message, "missing field 'missing'");
    ASSERT_EQ(proto_get_number(m, "f", &f, &err), 0);
    ASSERT(f == 2.5);
    ASSERT_EQ(proto_get_dtype(m, "s", &dt, &err), 0);
    ASSERT_EQ(dt, PG_FLOAT64);
    ASSERT_EQ(proto_get_dtype(m, "bad", &dt, &err), -PG_EBAD_DTYPE);
    ASSERT_EQ(proto_get_dtype(m, "u", &dt, &err), -PG_EBAD_REQUEST);
    doc_free(&d);
    return 0;
}

/* Runs proto_get_shape on an array of the given ints (negative values packed as negative). */
static int shape_of(const int64_t *v, int n, size_t item, uint64_t *nbytes, proto_err_t *err) {
    doc_t d;
    doc_begin(&d, 1);
    proto_pack_cstr(&d.pk, "shape");
    msgpack_pack_array(&d.pk, (size_t)n);
    for (int i = 0; i < n; i++)
        msgpack_pack_int64(&d.pk, v[i]);
    const msgpack_object *m = doc_end(&d);
    int64_t dims[PROTO_MAX_RANK];
    int rank;
    uint64_t numel;
    int rc = proto_get_shape(m, "shape", item, dims, &rank, &numel, nbytes, err);
    if (rc == 0)
        ASSERT_EQ(rank, n);
    doc_free(&d);
    return rc;
}

TEST_IMPL(shapes) {
    proto_err_t err;
    uint64_t nb;
    ASSERT_EQ(shape_of(NULL, 0, 4, &nb, &err), 0);
    ASSERT_EQ(nb, 4); /* a scalar has one element */
    ASSERT_EQ(shape_of((int64_t[]){2, 3, 4}, 3, 8, &nb, &err), 0);
    ASSERT_EQ(nb, 192);
    ASSERT_EQ(shape_of((int64_t[]){3, 0, 2}, 3, 4, &nb, &err), 0);
    ASSERT_EQ(nb, 0);
    ASSERT_EQ(shape_of((int64_t[]){1, 1, 1, 1, 1, 1, 1, 1}, 8, 1, &nb, &err), 0);
    ASSERT_EQ(shape_of((int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}, 9, 1, &nb, &err), -PG_EBAD_SHAPE);
    ASSERT_EQ(shape_of((int64_t[]){2, -1}, 2, 4, &nb, &err), -PG_EBAD_SHAPE);
    ASSERT(strstr(err.message, "negative") != NULL);
    ASSERT_EQ(shape_of((int64_t[]){1ll << 40, 1ll << 40}, 2, 4, &nb, &err), -PG_EBAD_SHAPE);
    ASSERT_EQ(shape_of((int64_t[]){1ll << 61, 8}, 2, 1, &nb, &err), -PG_EBAD_SHAPE);
    ASSERT_EQ(shape_of((int64_t[]){1ll << 61}, 1, 8, &nb, &err), -PG_EBAD_SHAPE); /* bytes */
    ASSERT_EQ(shape_of((int64_t[]){1ll << 40, 1ll << 40, 0}, 3, 4, &nb, &err), 0); /* empty */
    ASSERT_EQ(nb, 0);
    return 0;
}

TEST_IMPL(error_reply_roundtrip) {
    proto_err_t e;
    proto_fail(&e, PG_EUNKNOWN_HANDLE, "handle %d is not a tensor of this session", 7);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    proto_pack_error(&pk, true, 42, &e);
    proto_err_t err;
    ASSERT_EQ(proto_check_map((uint8_t *)sb.data, sb.size, &err), 0);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    ASSERT(msgpack_unpack_next(&up, sb.data, sb.size, &off) == MSGPACK_UNPACK_SUCCESS);
    uint64_t id;
    ASSERT_EQ(proto_get_uint(&up.data, "id", &id, &err), 0);
    ASSERT_EQ(id, 42);
    const msgpack_object *eo = proto_find(&up.data, "error");
    const char *s;
    size_t n;
    ASSERT_EQ(proto_get_str(eo, "code", &s, &n, &err), 0);
    ASSERT(n == strlen("unknown_handle") && memcmp(s, "unknown_handle", n) == 0);
    ASSERT_EQ(proto_get_str(eo, "message", &s, &n, &err), 0);
    ASSERT(memcmp(s, "handle 7 is", 11) == 0);
    ASSERT_STR_EQ(proto_error_name(-PG_EBAD_FRAME), "bad_frame");
    ASSERT_STR_EQ(proto_error_name(9999), "internal");
    ASSERT_STR_EQ(proto_error_name(PG_ENO_DEVICE), "no_device"); /* appended: old values kept */
    ASSERT_STR_EQ(proto_error_name(PG_EUNAUTHORIZED), "unauthorized");
    ASSERT_STR_EQ(proto_error_name(PG_ETIMEOUT), "timeout");
    ASSERT_EQ(PG_EDISCONNECTED, 11);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}

TEST_IMPL(urls) {
    proto_url_t u;
    proto_err_t err;
    ASSERT_EQ(proto_parse_url("unix:///tmp/x.sock", &u, &err), 0);
    ASSERT_EQ(u.kind, PROTO_URL_UNIX);
    ASSERT_STR_EQ(u.path, "/tmp/x.sock");
    ASSERT_EQ(proto_parse_url("tcp://127.0.0.1:8080", &u, &err), 0);
    ASSERT_STR_EQ(u.host, "127.0.0.1");
    ASSERT_EQ(u.port, 8080);
    ASSERT_EQ(proto_parse_url("tcp://[::1]:0", &u, &err), 0);
    ASSERT_STR_EQ(u.host, "::1");
    ASSERT(proto_parse_url("unix://relative", &u, &err) != 0);
    ASSERT(proto_parse_url("tcp://host", &u, &err) != 0);
    ASSERT(proto_parse_url("tcp://host:99999", &u, &err) != 0);
    ASSERT(proto_parse_url("tcp://host:", &u, &err) != 0);
    ASSERT(proto_parse_url("http://x", &u, &err) != 0);
    char buf[200];
    setenv("PICOGRAD_URL", "tcp://1.2.3.4:5", 1);
    proto_default_url(buf, sizeof(buf), true);
    ASSERT_STR_EQ(buf, "tcp://1.2.3.4:5");
    setenv("XDG_RUNTIME_DIR", "/run/user/7", 1);
    proto_default_url(buf, sizeof(buf), false);
    ASSERT_STR_EQ(buf, "unix:///run/user/7/picogradd.sock");
    unsetenv("XDG_RUNTIME_DIR");
    proto_default_url(buf, sizeof(buf), false);
    ASSERT(strncmp(buf, "unix:///tmp/picogradd-", 22) == 0);
    return 0;
}

/* The client's search (PROTOCOL.md section 1): $PICOGRAD_URL, else the first existing socket of
 * the runtime dir's, the system service's and /tmp's, else the first candidate. */
TEST_IMPL(client_url_search) {
    char buf[200], dir[] = "/tmp/pgurl-XXXXXX", sock[64], want[160];
    ASSERT(mkdtemp(dir) != NULL);
    setenv("PICOGRAD_URL", "tcp://1.2.3.4:5", 1);
    proto_client_url(buf, sizeof(buf));
    ASSERT_STR_EQ(buf, "tcp://1.2.3.4:5");
    unsetenv("PICOGRAD_URL");
    setenv("XDG_RUNTIME_DIR", dir, 1);
    snprintf(want, sizeof(want), "unix://%s/picogradd.sock", dir);
    /* No socket in the runtime dir: it is still chosen unless a later candidate exists. */
    char tmp_sock[64];
    snprintf(tmp_sock, sizeof(tmp_sock), "/tmp/picogradd-%u.sock", (unsigned)getuid());
    struct stat st;
    bool later = stat(PROTO_SYSTEM_SOCKET, &st) == 0 || stat(tmp_sock, &st) == 0;
    proto_client_url(buf, sizeof(buf));
    if (!later)
        ASSERT_STR_EQ(buf, want);
    /* A socket there wins over every later candidate. */
    snprintf(sock, sizeof(sock), "%s/picogradd.sock", dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
    ASSERT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    proto_client_url(buf, sizeof(buf));
    ASSERT_STR_EQ(buf, want);
    close(fd);
    unlink(sock);
    /* A regular file of that name is not a socket: skipped. */
    FILE *f = fopen(sock, "w");
    ASSERT(f != NULL);
    fclose(f);
    proto_client_url(buf, sizeof(buf));
    if (later)
        ASSERT(strcmp(buf, want) != 0);
    unlink(sock);
    rmdir(dir);
    unsetenv("XDG_RUNTIME_DIR");
    return 0;
}

#define TEST_LIST(X)                                                                               \
    X(len_prefix)                                                                                  \
    X(reader_any_split)                                                                            \
    X(reader_direct)                                                                               \
    X(reader_bad_len)                                                                              \
    X(reader_discard_keeps_head)                                                                   \
    X(check_map_good_and_locate)                                                                   \
    X(peek_id_signed_formats)                                                                      \
    X(check_map_rejects)                                                                           \
    X(getters)                                                                                     \
    X(shapes)                                                                                      \
    X(error_reply_roundtrip)                                                                       \
    X(urls)                                                                                        \
    X(client_url_search)

TEST_MAIN(TEST_LIST)
