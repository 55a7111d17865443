/*
 * fuzz_frame.c - libFuzzer harness for the frame reader and the msgpack walkers (protocol/frame.c).
 *
 * Input: 4 bytes of settings, then a byte stream as a socket would deliver it.
 *   byte 0-1  the reader's max_len, 1 to 65536 (small values make oversized lengths reachable)
 *   byte 2-3  a seed for the chunk sizes and for the caller's choices at each head (keep the
 *             body or discard it, read the rest through proto_reader_direct or through feed)
 *
 * The stream is fed in pieces of 1 to 97 bytes (now and then a large one), driving the reader
 * the way server/conn.c does. Beyond "no crash", every event is checked against a naive parse of
 * the same stream (a length prefix, then that many bytes): the reader must return exactly those
 * bodies, stop with PROTO_READ_BAD_LEN exactly where a length is 0 or over max_len, and never
 * report a frame that the stream does not complete. Each complete body then goes through
 * proto_check_map, and where the checker accepts it msgpack-c must decode exactly the same bytes
 * (conn.c's req_decode relies on that: "only memory can fail here"), and proto_peek_id and
 * proto_locate_bin must agree with the decoded map. The head is handed to the walkers in a heap
 * copy of its exact length, so that AddressSanitizer sees any read past it.
 */
#include "proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_frame: check failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A small deterministic generator: the chunking is a function of the input alone. */
static uint32_t next_rand(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* The naive parse: where the frame starting at *pos ends. Returns 1 with the body's place for
 * a complete frame, 0 when the stream ends inside it, -1 for a bad length. */
static int naive_next(const uint8_t *s, size_t n, size_t *pos, uint32_t max_len,
                      const uint8_t **body, uint32_t *len) {
    if (n - *pos < 4)
        return 0;
    uint32_t l = proto_get_len(s + *pos);
    if (l == 0 || l > max_len)
        return -1;
    if (n - *pos - 4 < l)
        return 0;
    *body = s + *pos + 4;
    *len = l;
    *pos += 4 + (size_t)l;
    return 1;
}

/* The first top-level value that is a bin of at least min_len bytes, as msgpack-c sees it. */
static const msgpack_object *first_bin(const msgpack_object *map, uint64_t min_len) {
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *v = &map->via.map.ptr[i].val;
        if (v->type == MSGPACK_OBJECT_BIN && v->via.bin.size >= min_len)
            return v;
    }
    return NULL;
}

/* Checks a whole body: the checker, then msgpack-c and the walkers against each other. */
static void check_body(const uint8_t *body, uint32_t len) {
    proto_err_t err;
    if (proto_check_map(body, len, &err) != 0) {
        CHECK(err.code == PG_EBAD_FRAME && err.message[0]);
        return;
    }
    msgpack_unpacked msg;
    msgpack_unpacked_init(&msg);
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack_next(&msg, (const char *)body, len, &off);
    CHECK(rc == MSGPACK_UNPACK_SUCCESS);
    CHECK(off == len);
    CHECK(msg.data.type == MSGPACK_OBJECT_MAP);

    uint64_t id = 0;
    bool has = proto_peek_id(body, len, &id);
    const msgpack_object *o = proto_find(&msg.data, "id");
    bool want = o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
    CHECK(has == want);
    CHECK(!has || id == o->via.u64);

    uint64_t min_len = len & 7, bl = 0;
    int64_t at = proto_locate_bin(body, len, min_len, &bl);
    const msgpack_object *b = first_bin(&msg.data, min_len);
    CHECK((at >= 0) == (b != NULL));
    if (b) {
        CHECK(bl == b->via.bin.size && (uint64_t)at + bl <= len);
        CHECK(memcmp(body + at, b->via.bin.ptr, bl) == 0);
    }
    msgpack_unpacked_destroy(&msg);
}

/* The walkers on an incomplete body must stay inside it. */
static void check_head(const uint8_t *head, uint32_t n) {
    uint8_t *copy = malloc(n ? n : 1);
    CHECK(copy);
    memcpy(copy, head, n);
    uint64_t id, bl;
    (void)proto_peek_id(copy, n, &id);
    int64_t at = proto_locate_bin(copy, n, 1, &bl);
    CHECK(at < 0 || (uint64_t)at <= n);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4)
        return 0;
    uint32_t max_len = ((uint32_t)data[0] << 8 | data[1]) + 1;
    uint32_t seed = ((uint32_t)data[2] << 8 | data[3]) * 2654435761u | 1;
    const uint8_t *s = data + 4;
    size_t n = size - 4;

    proto_reader_t *rd = malloc(sizeof(*rd));
    CHECK(rd);
    proto_reader_init(rd, max_len);
    uint8_t *body = NULL;      /* the buffer of the frame being read (owned) */
    bool direct = false;       /* read this body through proto_reader_direct */
    size_t pos = 0;            /* the stream bytes fed so far */
    size_t npos = 0;           /* the naive parse's position: where the next frame starts */
    bool bad = false;

    while (pos < n && !bad) {
        uint32_t r = next_rand(&seed);
        size_t chunk = (r & 15) == 0 ? 1 + (r >> 8) % 8192 : 1 + (r >> 8) % 97;
        if (chunk > n - pos)
            chunk = n - pos;
        const uint8_t *p = s + pos;
        size_t left = chunk;
        pos += chunk;

        /* As conn.c's on_read: a body being filled may take the bytes directly. */
        uint8_t *dst;
        size_t want;
        if (direct && proto_reader_direct(rd, &dst, &want)) {
            size_t c = left < want ? left : want;
            memcpy(dst, p, c);
            p += c;
            left -= c;
            if (proto_reader_advance(rd, c) != PROTO_READ_FRAME)
                continue;
            CHECK(proto_reader_done(rd));
        }
        /* As conn.c's conn_feed: feed until the piece is used up and no frame is waiting. */
        while (left > 0 || proto_reader_done(rd)) {
            size_t used = 0;
            proto_read_event_t ev = proto_reader_feed(rd, p, left, &used);
            CHECK(used <= left);
            p += used;
            left -= used;
            const uint8_t *nb;
            uint32_t nl;
            if (ev == PROTO_READ_MORE) {
                CHECK(left == 0);
                break;
            } else if (ev == PROTO_READ_BAD_LEN) {
                size_t tmp = npos;
                CHECK(naive_next(s, n, &tmp, max_len, &nb, &nl) == -1);
                CHECK(rd->len == proto_get_len(s + npos));
                bad = true;
                break;
            } else if (ev == PROTO_READ_HEAD) {
                CHECK(rd->len >= 1 && rd->len <= max_len);
                CHECK(rd->headlen == (rd->len < PROTO_HEAD_MAX ? rd->len : PROTO_HEAD_MAX));
                CHECK(memcmp(rd->head, s + npos + 4, rd->headlen) == 0);
                check_head(rd->head, rd->headlen);
                uint32_t choice = next_rand(&seed);
                if (choice & 1) {
                    body = malloc(rd->len);
                    CHECK(body);
                    proto_reader_set_body(rd, body);
                    direct = (choice & 2) != 0;
                } else {
                    proto_reader_discard(rd);
                    direct = false;
                }
            } else {
                CHECK(ev == PROTO_READ_FRAME && proto_reader_done(rd));
                CHECK(naive_next(s, n, &npos, max_len, &nb, &nl) == 1);
                CHECK(rd->len == nl);
                uint8_t *got = proto_reader_take(rd);
                CHECK(got == body);
                if (got) {
                    CHECK(memcmp(got, nb, nl) == 0);
                    check_body(got, nl);
                }
                free(body);
                body = NULL;
                direct = false;
            }
        }
    }
    /* End of stream: the reader must not be sitting on a frame the naive parse says is whole,
     * and must have stopped at the first bad length if there is one. */
    if (!bad) {
        const uint8_t *nb;
        uint32_t nl;
        size_t tmp = npos;
        CHECK(naive_next(s, n, &tmp, max_len, &nb, &nl) == 0);
    }
    free(body);
    free(rd);
    return 0;
}
