/*
 * plan.h - execution plans for lowered graphs, and the cache that keeps them between runs.
 *
 * A plan is what the fusion pass (passes/fuse.c) decided for one graph structure: the step list,
 * and for every kernel step its rendered C source, name and compiled function (kernels/cpu/jit.h).
 * Building one costs a render and possibly a compiler run, so plans are cached by a hash of the
 * graph's structure (ops, dtypes, shapes, attributes, edges, outputs; never tensor data or
 * handles): the second run of a training step finds its plan and compiles nothing.
 */
#ifndef PG_PLAN_H
#define PG_PLAN_H

#include "../kernels/codegen/kir.h"
#include "graph/graph.h"
#include "passes/fuse.h"

#include <stdatomic.h>

/* Plans kept in memory; the least recently used one goes first. */
#define PLAN_CACHE_MAX 256

typedef struct {
    char name[32];                     /* "pg_k_" + 16 hex digits */
    char *src;                         /* the C source (owned) */
    kir_fn_t fn;                       /* compiled; NULL when the plan was not compiled */
    char cu_name[32];                  /* "pg_cu_" + 16 hex digits (plan_set_cuda) */
    char *cu_src;                      /* the CUDA source (owned), NULL when not rendered */
} plan_kernel_t;

typedef struct plan {
    atomic_int refs;                   /* the cache's and each user's */
    uint64_t key[2];                   /* two independent structure hashes */
    fuse_plan_t fp;                    /* the steps */
    plan_kernel_t *kern;               /* per step (kernel steps only use theirs; owned) */
    bool compiled;                     /* every kernel has fn (else run it all interpreted) */
    bool failed;                       /* a kernel did not render or compile */
    bool every_loop;                   /* planned to compile loops of any size */
    struct plan *prev, *next;          /* LRU list (the cache's lock) */
} plan_t;

/* Computes the structure key of g with outputs out_id[0..no), planned with every_loop. */
void plan_key(const graph_t *g, const int32_t *out_id, uint32_t no, bool every_loop,
              uint64_t key[2]);

/*
 * Builds a plan: fuses g, renders every kernel, and with compile true compiles them (jit_get).
 * every_loop compiles loops of any size (a run that assigns state is a step that will repeat, so
 * its small loops pay back their compile); otherwise loops under --jit-min-work are interpreted.
 * A kernel that does not compile is logged and leaves the plan uncompiled (compiled false: the
 * executor then interprets every node). Returns a new plan (release with plan_release) or NULL
 * with err filled.
 */
plan_t *plan_build(const graph_t *g, const int32_t *out_id, uint32_t no, bool compile,
                   bool every_loop, proto_err_t *err);

/*
 * Returns the cached plan for g's structure with a new reference, building, compiling and caching
 * it on a miss (*built true then). Thread-safe. NULL with err filled on failure.
 */
plan_t *plan_get(const graph_t *g, const int32_t *out_id, uint32_t no, bool every_loop,
                 bool *built, proto_err_t *err);

/*
 * --dump-cuda DIR: from now on every kernel that plan_build renders is also rendered for CUDA
 * (kir_render_cuda) and written to DIR/<name>.cu, once per name (a file already there is kept),
 * through a temporary file renamed into place, so a reader never sees half a kernel and several
 * daemons may share DIR. Failures are logged and never fail a plan. Creates DIR when missing;
 * returns 0, or -1 (after printing why) when DIR is not a usable directory. Call before serving;
 * dir is borrowed for the process's lifetime. This is how CI compiles every kernel of the test
 * suites with NVRTC without a GPU (tests/unit/test_nvrtc.c).
 */
int plan_set_dump_cuda(const char *dir);

/* With on, every plan built from now on also carries its kernels' CUDA source (cu_name,
 * cu_src), for runs on a GPU (server/cudarun.c). Call at start, when a GPU can be used. */
void plan_set_cuda(bool on);

/* Adds a reference; returns p. */
plan_t *plan_ref(plan_t *p);

/* Drops a reference; the last one frees the plan. NULL is ignored. */
void plan_release(plan_t *p);

/*
 * Writes the readable listing of a plan for g (lowered graph, steps, kernel sources: the CUDA
 * ones with cuda, which needs a plan built with plan_set_cuda on), after `note` when it is not
 * NULL (why runs do not use this plan). Returns a new NUL-terminated string (free with pg_free)
 * or NULL when memory runs out.
 */
char *plan_explain_text(const plan_t *p, const graph_t *g, bool cuda, const char *note);

/* Packs the "graph", "groups" and "kernels" keys of an explain reply (3 map entries). */
int plan_pack_explain(msgpack_packer *pk, const plan_t *p, const graph_t *g, bool cuda);

/* Counts a plan cache hit for a run that found its plan without plan_get: a prepared request
 * (prepcache.h) keeps the plan it was given, and planned nothing either. */
void plan_count_hit(void);

/* Plan cache counters since start. */
void plan_stats(uint64_t *hits, uint64_t *misses);

/* Empties the cache (at shutdown, before jit_shutdown). */
void plan_cache_shutdown(void);

#endif /* PG_PLAN_H */
