/*
 * stats.c - counters of answered requests, per op and per error code, and the time `run`
 * requests spend on their workers.
 *
 * Counters are atomics because compute ops finish on worker threads, several at once; they are
 * cumulative since start and only ever read by the `stats` op. Run times are kept in nanoseconds
 * of the monotonic clock (uv_hrtime) and reported in seconds, so that a client gets the mean
 * dispatch cost of a graph as the growth of `seconds` over the growth of `count`.
 */
#include "daemon.h"

static atomic_uint_fast64_t count_requests;
static atomic_uint_fast64_t count_ops[OPS_COUNT];
static atomic_uint_fast64_t count_errors[PG_ERROR_COUNT];
static atomic_uint_fast64_t run_count;                           /* runs counted */
static atomic_uint_fast64_t run_ns;                              /* their total time */
static atomic_uint_fast64_t run_phase_ns[STATS_RUN_PHASE_COUNT]; /* per phase */

static const char *const run_phase_key[] = {
#define XX(name) #name "_seconds",
    STATS_RUN_PHASE_MAP(XX)
#undef XX
};
static_assert(sizeof(run_phase_key) / sizeof(run_phase_key[0]) == STATS_RUN_PHASE_COUNT,
              "run phase keys");

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

/* The three kinds of counter are written in the order total, phases, count and read in the
 * opposite order (all sequentially consistent), so that a `stats` taken while runs finish never
 * shows phases that add up to more than the total, nor a count whose runs' time is missing. */
void stats_count_run(const uint64_t phase_ns[STATS_RUN_PHASE_COUNT], uint64_t total_ns) {
    atomic_fetch_add(&run_ns, total_ns);
    for (int i = 0; i < STATS_RUN_PHASE_COUNT; i++)
        atomic_fetch_add(&run_phase_ns[i], phase_ns[i]);
    atomic_fetch_add(&run_count, 1);
}

int stats_pack_runs(msgpack_packer *pk) {
    uint64_t count = atomic_load(&run_count), phase[STATS_RUN_PHASE_COUNT];
    for (int i = 0; i < STATS_RUN_PHASE_COUNT; i++)
        phase[i] = atomic_load(&run_phase_ns[i]);
    uint64_t total = atomic_load(&run_ns);
    int rc = proto_pack_cstr(pk, "runs");
    rc |= msgpack_pack_map(pk, 2 + STATS_RUN_PHASE_COUNT);
    rc |= proto_pack_cstr(pk, "count");
    rc |= msgpack_pack_uint64(pk, count);
    rc |= proto_pack_cstr(pk, "seconds");
    rc |= msgpack_pack_double(pk, (double)total / 1e9);
    for (int i = 0; i < STATS_RUN_PHASE_COUNT; i++) {
        rc |= proto_pack_cstr(pk, run_phase_key[i]);
        rc |= msgpack_pack_double(pk, (double)phase[i] / 1e9);
    }
    return rc;
}
