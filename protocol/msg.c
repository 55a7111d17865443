/*
 * msg.c - the code tables and typed access to decoded msgpack maps.
 *
 * Every field a request carries is read through one of the getters here, so that "wrong type",
 * "missing" and "out of range" produce the same precise bad_request message everywhere, naming
 * the field: the handlers in the daemon never look at a msgpack_object's type themselves.
 */
#include "proto.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const error_names[] = {
#define XX(e, s, m) s,
    PG_ERROR_MAP(XX)
#undef XX
};
static const char *const error_messages[] = {
#define XX(e, s, m) m,
    PG_ERROR_MAP(XX)
#undef XX
};
static_assert(sizeof(error_names) / sizeof(error_names[0]) == PG_ERROR_COUNT, "error table");

static const char *const dtype_names[] = {
#define XX(e, s, n) s,
    PG_DTYPE_MAP(XX)
#undef XX
};
static const size_t dtype_sizes[] = {
#define XX(e, s, n) n,
    PG_DTYPE_MAP(XX)
#undef XX
};
static_assert(sizeof(dtype_names) / sizeof(dtype_names[0]) == PG_DTYPE_COUNT, "dtype table");

const char *proto_error_name(int code) {
    if (code < 0)
        code = -code;
    return code < PG_ERROR_COUNT ? error_names[code] : "internal";
}

const char *proto_error_default_message(int code) {
    if (code < 0)
        code = -code;
    return code < PG_ERROR_COUNT ? error_messages[code] : "internal error";
}

const char *proto_dtype_name(int dtype) {
    return dtype >= 0 && dtype < PG_DTYPE_COUNT ? dtype_names[dtype] : NULL;
}

size_t proto_dtype_size(int dtype) {
    return dtype >= 0 && dtype < PG_DTYPE_COUNT ? dtype_sizes[dtype] : 0;
}

int proto_dtype_from_name(const char *s, size_t len) {
    for (int i = 0; i < PG_DTYPE_COUNT; i++)
        if (strlen(dtype_names[i]) == len && memcmp(dtype_names[i], s, len) == 0)
            return i;
    return -1;
}

bool proto_quote(char *buf, size_t cap, const char *s, size_t n) {
    bool ok = n < cap;
    for (size_t i = 0; ok && i < n; i++)
        ok = s[i] >= 0x20 && s[i] < 0x7f;
    if (ok) {
        memcpy(buf, s, n);
        buf[n] = '\0';
    } else {
        snprintf(buf, cap, "?");
    }
    return ok;
}

int proto_fail(proto_err_t *err, int code, const char *fmt, ...) {
    if (code < 0)
        code = -code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return -code;
}

/* =============================================================================================
 * Field getters
 * =========================================================================================== */

const msgpack_object *proto_find(const msgpack_object *map, const char *key) {
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static const char *type_name(const msgpack_object *o) {
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return "unsigned int";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "negative int";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "float";
    case MSGPACK_OBJECT_STR: return "str";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_MAP: return "map";
    case MSGPACK_OBJECT_BIN: return "bin";
    case MSGPACK_OBJECT_EXT: return "ext";
    }
    return "unknown";
}

/* Finds a required field or fails with "missing field". */
static const msgpack_object *need(const msgpack_object *map, const char *key, proto_err_t *err) {
    const msgpack_object *o = proto_find(map, key);
    if (!o)
        proto_fail(err, PG_EBAD_REQUEST, "missing field '%s'", key);
    return o;
}

static int wrong_type(proto_err_t *err, const char *key, const char *want,
                      const msgpack_object *o) {
    return proto_fail(err, PG_EBAD_REQUEST, "field '%s' must be %s, got %s", key, want,
                      type_name(o));
}

int proto_get_uint(const msgpack_object *map, const char *key, uint64_t *out, proto_err_t *err) {
    const msgpack_object *o = need(map, key, err);
    if (!o)
        return -PG_EBAD_REQUEST;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return wrong_type(err, key, "an unsigned int", o);
    *out = o->via.u64;
    return 0;
}

int proto_get_str(const msgpack_object *map, const char *key, const char **s, size_t *len,
                  proto_err_t *err) {
    const msgpack_object *o = need(map, key, err);
    if (!o)
        return -PG_EBAD_REQUEST;
    if (o->type != MSGPACK_OBJECT_STR)
        return wrong_type(err, key, "a str", o);
    *s = o->via.str.ptr;
    *len = o->via.str.size;
    return 0;
}

int proto_get_bin(const msgpack_object *map, const char *key, const uint8_t **p, size_t *len,
                  proto_err_t *err) {
    const msgpack_object *o = need(map, key, err);
    if (!o)
        return -PG_EBAD_REQUEST;
    if (o->type != MSGPACK_OBJECT_BIN)
        return wrong_type(err, key, "a bin", o);
    *p = (const uint8_t *)o->via.bin.ptr;
    *len = o->via.bin.size;
    return 0;
}

int proto_get_number(const msgpack_object *map, const char *key, double *out, proto_err_t *err) {
    const msgpack_object *o = need(map, key, err);
    if (!o)
        return -PG_EBAD_REQUEST;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return 0;
    default: return wrong_type(err, key, "a number", o);
    }
}

int proto_get_dtype(const msgpack_object *map, const char *key, pg_dtype_t *out,
                    proto_err_t *err) {
    const char *s;
    size_t len;
    int rc = proto_get_str(map, key, &s, &len, err);
    if (rc)
        return rc;
    int dt = proto_dtype_from_name(s, len);
    if (dt < 0) {
        char name[33];
        if (proto_quote(name, sizeof(name), s, len))
            return proto_fail(err, PG_EBAD_DTYPE,
                              "field '%s': unknown dtype '%s' (float32 float64 int32 int64 bool)",
                              key, name);
        return proto_fail(err, PG_EBAD_DTYPE, "field '%s': unknown dtype", key);
    }
    *out = (pg_dtype_t)dt;
    return 0;
}

int proto_get_shape(const msgpack_object *map, const char *key, size_t itemsize,
                    int64_t dims[PROTO_MAX_RANK], int *rank, uint64_t *numel, uint64_t *nbytes,
                    proto_err_t *err) {
    const msgpack_object *o = need(map, key, err);
    if (!o)
        return -PG_EBAD_REQUEST;
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return wrong_type(err, key, "an array of ints", o);
    uint32_t r = o->via.array.size;
    if (r > PROTO_MAX_RANK)
        return proto_fail(err, PG_EBAD_SHAPE, "field '%s': rank %u is over the limit of %d", key,
                          r, PROTO_MAX_RANK);
    /* Element counts stay under 2^63 so that every later signed index computation fits. */
    const uint64_t limit = (uint64_t)INT64_MAX;
    bool empty = false;
    for (uint32_t i = 0; i < r; i++) {
        const msgpack_object *d = &o->via.array.ptr[i];
        if (d->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return proto_fail(err, PG_EBAD_SHAPE, "field '%s': dim %u is negative (%lld)", key, i,
                              (long long)d->via.i64);
        if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return proto_fail(err, PG_EBAD_REQUEST, "field '%s': dim %u must be an int, got %s",
                              key, i, type_name(d));
        if (d->via.u64 > limit)
            return proto_fail(err, PG_EBAD_SHAPE, "field '%s': dim %u (%llu) is over 2^63-1", key,
                              i, (unsigned long long)d->via.u64);
        dims[i] = (int64_t)d->via.u64;
        empty |= dims[i] == 0;
    }
    /* A zero dim makes the tensor empty whatever the other dims are, as in numpy. */
    uint64_t n = empty ? 0 : 1;
    for (uint32_t i = 0; i < r && !empty; i++) {
        uint64_t v = (uint64_t)dims[i];
        if (n > limit / v)
            return proto_fail(err, PG_EBAD_SHAPE,
                              "field '%s': the element count overflows 64 bits", key);
        n *= v;
    }
    if (itemsize && n > limit / itemsize)
        return proto_fail(err, PG_EBAD_SHAPE,
                          "field '%s': %llu elements of %zu bytes overflow 64 bits", key,
                          (unsigned long long)n, itemsize);
    *rank = (int)r;
    *numel = n;
    *nbytes = n * itemsize;
    return 0;
}

/* =============================================================================================
 * Encoding
 * =========================================================================================== */

int proto_pack_cstr(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    int rc = msgpack_pack_str(pk, n);
    return rc ? rc : msgpack_pack_str_body(pk, s, n);
}

int proto_pack_reply_head(msgpack_packer *pk, uint32_t entries, bool has_id, uint64_t id,
                          bool ok) {
    int rc = msgpack_pack_map(pk, entries);
    rc |= proto_pack_cstr(pk, "id");
    rc |= has_id ? msgpack_pack_uint64(pk, id) : msgpack_pack_nil(pk);
    rc |= proto_pack_cstr(pk, "ok");
    rc |= ok ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    return rc;
}

int proto_pack_error(msgpack_packer *pk, bool has_id, uint64_t id, const proto_err_t *err) {
    int rc = proto_pack_reply_head(pk, 3, has_id, id, false);
    rc |= proto_pack_cstr(pk, "error");
    rc |= msgpack_pack_map(pk, 2);
    rc |= proto_pack_cstr(pk, "code");
    rc |= proto_pack_cstr(pk, proto_error_name(err->code));
    rc |= proto_pack_cstr(pk, "message");
    rc |= proto_pack_cstr(pk, err->message[0] ? err->message
                                              : proto_error_default_message(err->code));
    return rc;
}
