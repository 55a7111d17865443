/*
 * stats.c - counters of answered requests, per op and per error code.
 *
 * Counters are atomics because compute ops finish on worker threads in later versions; they are
 * cumulative since start and only ever read by the `stats` op.
 */
#include "daemon.h"

static atomic_uint_fast64_t count_requests;
static atomic_uint_fast64_t count_ops[OPS_COUNT];
static atomic_uint_fast64_t count_errors[PG_ERROR_COUNT];

void stats_count(int op, int code) {
    atomic_fetch_add(&count_requests, 1);
    if (op >= 0 && op < OPS_COUNT)
        atomic_fetch_add(&count_ops[op], 1);
    if (code > 0 && code < PG_ERROR_COUNT)
        atomic_fetch_add(&count_errors[code], 1);
}

int stats_pack_counters(msgpack_packer *pk) {
    int rc = proto_pack_cstr(pk, "requests");
    rc |= msgpack_pack_uint64(pk, atomic_load(&count_requests));
    rc |= proto_pack_cstr(pk, "ops");
    rc |= msgpack_pack_map(pk, OPS_COUNT);
    for (int i = 0; i < OPS_COUNT; i++) {
        rc |= proto_pack_cstr(pk, ops_name(i));
        rc |= msgpack_pack_uint64(pk, atomic_load(&count_ops[i]));
    }
    rc |= proto_pack_cstr(pk, "errors");
    /* Every code a daemon can send (all but "ok" and the client-side "disconnected"). */
    rc |= msgpack_pack_map(pk, PG_ERROR_COUNT - 2);
    for (int i = 1; i < PG_ERROR_COUNT; i++) {
        if (i == PG_EDISCONNECTED)
            continue;
        rc |= proto_pack_cstr(pk, proto_error_name(i));
        rc |= msgpack_pack_uint64(pk, atomic_load(&count_errors[i]));
    }
    return rc;
}
