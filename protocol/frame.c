/*
 * frame.c - length-prefixed frames and the non-recursive msgpack walkers.
 *
 * Bytes from a socket arrive in arbitrary pieces. The reader below turns them into whole frame
 * bodies in three steps: the 4-byte length (checked against max_len before anything else), the
 * first bytes of the body kept in a small fixed buffer (the "head"), then the rest of the body in a
 * buffer chosen by the caller. Stopping at the head lets the daemon find where a put's payload will
 * sit and allocate the body so that the payload is aligned, which in turn lets the tensor adopt the
 * frame buffer without copying it.
 *
 * The walkers read msgpack item headers one at a time with an explicit counter or stack instead of
 * recursion, so no frame, however nested, can exhaust the C stack.
 */
#include "proto.h"

#include <string.h>

void proto_put_len(uint8_t out[4], uint32_t n) {
    out[0] = (uint8_t)(n >> 24);
    out[1] = (uint8_t)(n >> 16);
    out[2] = (uint8_t)(n >> 8);
    out[3] = (uint8_t)n;
}

uint32_t proto_get_len(const uint8_t in[4]) {
    return ((uint32_t)in[0] << 24) | ((uint32_t)in[1] << 16) | ((uint32_t)in[2] << 8) | in[3];
}

/* =============================================================================================
 * The frame reader
 * =========================================================================================== */

void proto_reader_init(proto_reader_t *r, uint32_t max_len) {
    r->state = PROTO_ST_LEN;
    r->max_len = max_len;
    r->lengot = 0;
    r->len = 0;
    r->headlen = 0;
    r->body = NULL;
    r->got = 0;
}

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

proto_read_event_t proto_reader_feed(proto_reader_t *r, const uint8_t *data, size_t n,
                                     size_t *used) {
    size_t i = 0;
    proto_read_event_t ev = PROTO_READ_MORE;

    while (i < n || r->state == PROTO_ST_WAIT || r->state == PROTO_ST_DONE) {
        switch (r->state) {
        case PROTO_ST_LEN: {
            size_t c = min_sz(4 - r->lengot, n - i);
            memcpy(r->lenbuf + r->lengot, data + i, c);
            r->lengot += (uint32_t)c;
            i += c;
            if (r->lengot < 4)
                break;
            r->len = proto_get_len(r->lenbuf);
            if (r->len == 0 || r->len > r->max_len) {
                ev = PROTO_READ_BAD_LEN;
                goto out;
            }
            r->state = PROTO_ST_HEAD;
            break;
        }
        case PROTO_ST_HEAD: {
            uint32_t want = r->len < PROTO_HEAD_MAX ? r->len : PROTO_HEAD_MAX;
            size_t c = min_sz(want - r->headlen, n - i);
            memcpy(r->head + r->headlen, data + i, c);
            r->headlen += (uint32_t)c;
            r->got += c;
            i += c;
            if (r->headlen == want) {
                r->state = PROTO_ST_WAIT;
                ev = PROTO_READ_HEAD;
                goto out;
            }
            break;
        }
        case PROTO_ST_WAIT:
            /* The caller has not decided where the body goes yet. */
            ev = PROTO_READ_HEAD;
            goto out;
        case PROTO_ST_BODY:
        case PROTO_ST_DISCARD: {
            size_t c = min_sz(r->len - r->got, n - i);
            if (r->body)
                memcpy(r->body + r->got, data + i, c);
            r->got += c;
            i += c;
            if (r->got == r->len)
                r->state = PROTO_ST_DONE;
            break;
        }
        case PROTO_ST_DONE:
            ev = PROTO_READ_FRAME;
            goto out;
        }
    }
out:
    *used = i;
    return ev;
}

void proto_reader_set_body(proto_reader_t *r, uint8_t *body) {
    memcpy(body, r->head, r->headlen);
    r->body = body;
    r->state = r->got == r->len ? PROTO_ST_DONE : PROTO_ST_BODY;
}

void proto_reader_discard(proto_reader_t *r) {
    r->body = NULL;
    r->state = r->got == r->len ? PROTO_ST_DONE : PROTO_ST_DISCARD;
}

bool proto_reader_done(const proto_reader_t *r) { return r->state == PROTO_ST_DONE; }

uint8_t *proto_reader_take(proto_reader_t *r) {
    uint8_t *body = r->body;
    proto_reader_init(r, r->max_len);
    return body;
}

bool proto_reader_direct(const proto_reader_t *r, uint8_t **ptr, size_t *len) {
    if (r->state != PROTO_ST_BODY)
        return false;
    *ptr = r->body + r->got;
    *len = r->len - r->got;
    return true;
}

proto_read_event_t proto_reader_advance(proto_reader_t *r, size_t n) {
    r->got += n;
    if (r->got >= r->len) {
        r->state = PROTO_ST_DONE;
        return PROTO_READ_FRAME;
    }
    return PROTO_READ_MORE;
}

/* =============================================================================================
 * msgpack item headers
 * =========================================================================================== */

typedef enum {
    MP_SCALAR,   /* nil, bool, float, negative int */
    MP_UINT,     /* a non-negative int (in any int format, as msgpack-c reads it); value in u */
    MP_STR,      /* payload of len bytes follows */
    MP_BIN,      /* payload of len bytes follows */
    MP_EXT,      /* type byte + payload of len bytes follows (type counted in hdr) */
    MP_ARRAY,    /* len items follow */
    MP_MAP,      /* len key/value pairs follow */
} mp_kind_t;

typedef struct {
    mp_kind_t kind;
    size_t hdr;   /* bytes of the header itself */
    uint64_t len; /* payload bytes (str, bin, ext) or entries (array, map) */
    uint64_t u;   /* value of an MP_UINT */
} mp_item_t;

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Parses the item header at p (n bytes available). Returns 1 on success, 0 when more bytes are
 * needed, -1 for the never-used byte 0xc1. */
static int mp_header(const uint8_t *p, size_t n, mp_item_t *it) {
    if (n < 1)
        return 0;
    uint8_t b = p[0];
    size_t extra = 0; /* bytes after the type byte holding a length or value */
    it->len = 0;
    it->u = 0;
    if (b <= 0x7f) {
        it->kind = MP_UINT;
        it->u = b;
    } else if (b <= 0x8f) {
        it->kind = MP_MAP;
        it->len = b & 0x0f;
    } else if (b <= 0x9f) {
        it->kind = MP_ARRAY;
        it->len = b & 0x0f;
    } else if (b <= 0xbf) {
        it->kind = MP_STR;
        it->len = b & 0x1f;
    } else if (b >= 0xe0) {
        it->kind = MP_SCALAR;
    } else {
        switch (b) {
        case 0xc0: case 0xc2: case 0xc3:
            it->kind = MP_SCALAR;
            break;
        case 0xc1:
            return -1;
        case 0xc4: case 0xc5: case 0xc6:
            it->kind = MP_BIN;
            extra = (size_t)1 << (b - 0xc4);
            break;
        case 0xc7: case 0xc8: case 0xc9:
            it->kind = MP_EXT;
            extra = (size_t)1 << (b - 0xc7);
            break;
        case 0xca: case 0xcb:
            it->kind = MP_SCALAR;
            extra = b == 0xca ? 4 : 8;
            break;
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            it->kind = MP_UINT;
            extra = (size_t)1 << (b - 0xcc);
            break;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3:
            it->kind = MP_SCALAR;
            extra = (size_t)1 << (b - 0xd0);
            break;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
            it->kind = MP_EXT;
            it->len = (uint64_t)1 << (b - 0xd4);
            break;
        case 0xd9: case 0xda: case 0xdb:
            it->kind = MP_STR;
            extra = (size_t)1 << (b - 0xd9);
            break;
        case 0xdc: case 0xdd:
            it->kind = MP_ARRAY;
            extra = b == 0xdc ? 2 : 4;
            break;
        default: /* 0xde, 0xdf */
            it->kind = MP_MAP;
            extra = b == 0xde ? 2 : 4;
            break;
        }
    }
    size_t type_byte = it->kind == MP_EXT ? 1 : 0;
    if (n < 1 + extra + type_byte)
        return 0;
    uint64_t v = be(p + 1, (int)extra);
    /* A signed format holding a value >= 0 is an unsigned int to msgpack-c (which decodes the
     * whole frame): read it as one, or proto_peek_id would miss an id that req_decode finds. */
    if (b >= 0xd0 && b <= 0xd3 && !(p[1] & 0x80))
        it->kind = MP_UINT;
    if (it->kind == MP_UINT && extra)
        it->u = v;
    else if (extra && it->kind != MP_SCALAR)
        it->len = v;
    it->hdr = 1 + extra + type_byte;
    return 1;
}

/* Bytes of payload that follow an item's header (str, bin and ext carry bytes; others none). */
static uint64_t mp_payload(const mp_item_t *it) {
    return (it->kind == MP_STR || it->kind == MP_BIN || it->kind == MP_EXT) ? it->len : 0;
}

/* Child items an item opens (arrays: len, maps: 2 * len). */
static uint64_t mp_children(const mp_item_t *it) {
    return it->kind == MP_ARRAY ? it->len : it->kind == MP_MAP ? 2 * it->len : 0;
}

int proto_check_map(const uint8_t *buf, size_t n, proto_err_t *err) {
    uint64_t remaining[PROTO_MAX_DEPTH + 1]; /* items still expected at each open level */
    int depth = 0;
    size_t pos = 0;
    uint64_t objects = 0;

    remaining[0] = 1;
    while (depth >= 0) {
        if (remaining[depth] == 0) {
            depth--;
            continue;
        }
        remaining[depth]--;
        mp_item_t it;
        int rc = mp_header(buf + pos, n - pos, &it);
        if (rc < 0)
            return proto_fail(err, PG_EBAD_FRAME, "invalid msgpack byte 0xc1 at offset %zu", pos);
        if (rc == 0)
            return proto_fail(err, PG_EBAD_FRAME, "msgpack truncated at offset %zu of %zu", pos, n);
        if (objects == 0 && it.kind != MP_MAP)
            return proto_fail(err, PG_EBAD_FRAME, "the frame body is not a msgpack map");
        if (++objects > PROTO_MAX_OBJECTS)
            return proto_fail(err, PG_EBAD_FRAME, "more than %u msgpack objects in one frame",
                              PROTO_MAX_OBJECTS);
        pos += it.hdr;
        uint64_t pay = mp_payload(&it);
        if (pay > n - pos)
            return proto_fail(err, PG_EBAD_FRAME,
                              "msgpack item at offset %zu claims %llu bytes; %zu remain",
                              pos - it.hdr, (unsigned long long)pay, n - pos);
        pos += pay;
        uint64_t kids = mp_children(&it);
        if (kids > n - pos) /* every item takes at least one byte */
            return proto_fail(err, PG_EBAD_FRAME,
                              "msgpack container at offset %zu claims %llu items; %zu bytes remain",
                              pos - it.hdr, (unsigned long long)kids, n - pos);
        if (kids > 0) {
            if (depth + 1 > PROTO_MAX_DEPTH)
                return proto_fail(err, PG_EBAD_FRAME, "msgpack nested deeper than %d",
                                  PROTO_MAX_DEPTH);
            remaining[++depth] = kids;
        }
    }
    if (pos != n)
        return proto_fail(err, PG_EBAD_FRAME, "%zu trailing bytes after the msgpack map", n - pos);
    return 0;
}

/* Skips one whole item (with its children) starting at *pos. Returns false when the bytes run
 * out or are invalid. Pending children are counted, not recursed into. */
static bool mp_skip(const uint8_t *buf, size_t n, size_t *pos) {
    uint64_t pending = 1;
    size_t p = *pos;
    while (pending > 0) {
        mp_item_t it;
        if (mp_header(buf + p, n - p, &it) != 1)
            return false;
        p += it.hdr;
        uint64_t pay = mp_payload(&it);
        if (pay > n - p)
            return false;
        p += pay;
        pending += mp_children(&it) - 1;
    }
    *pos = p;
    return true;
}

int64_t proto_locate_bin(const uint8_t *buf, size_t n, uint64_t min_len, uint64_t *bin_len) {
    mp_item_t it;
    if (mp_header(buf, n, &it) != 1 || it.kind != MP_MAP)
        return -1;
    size_t pos = it.hdr;
    for (uint64_t e = 0; e < it.len; e++) {
        if (!mp_skip(buf, n, &pos)) /* the key */
            return -1;
        mp_item_t v;
        if (mp_header(buf + pos, n - pos, &v) != 1)
            return -1;
        if (v.kind == MP_BIN && v.len >= min_len) {
            *bin_len = v.len;
            return (int64_t)(pos + v.hdr);
        }
        if (!mp_skip(buf, n, &pos))
            return -1;
    }
    return -1;
}

bool proto_peek_id(const uint8_t *buf, size_t n, uint64_t *id) {
    mp_item_t it;
    if (mp_header(buf, n, &it) != 1 || it.kind != MP_MAP)
        return false;
    size_t pos = it.hdr;
    for (uint64_t e = 0; e < it.len; e++) {
        mp_item_t k;
        if (mp_header(buf + pos, n - pos, &k) != 1)
            return false;
        bool is_id = k.kind == MP_STR && k.len == 2 && n - pos - k.hdr >= 2 &&
                     memcmp(buf + pos + k.hdr, "id", 2) == 0;
        if (!mp_skip(buf, n, &pos))
            return false;
        if (is_id) {
            mp_item_t v;
            if (mp_header(buf + pos, n - pos, &v) != 1 || v.kind != MP_UINT)
                return false;
            *id = v.u;
            return true;
        }
        if (!mp_skip(buf, n, &pos))
            return false;
    }
    return false;
}
