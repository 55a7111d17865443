/*
 * fuse.h - the fusion pass: partitions a lowered graph's needed nodes into steps, each either one
 * node for the reference interpreter or one fused kernel (kernels/codegen/kir.h). See fuse.c for
 * the rules and an example.
 */
#ifndef PG_FUSE_H
#define PG_FUSE_H

#include "../../kernels/codegen/kir.h"
#include "../graph/graph.h"

typedef enum {
    FUSE_STEP_INTERP, /* node `node` evaluated by ref_eval */
    FUSE_STEP_KERNEL, /* nodes `members` computed by one kernel; `node` is its result */
} fuse_step_kind_t;

typedef struct {
    fuse_step_kind_t kind;
    int32_t node;                       /* the node whose value this step produces */
    int32_t nread;                      /* distinct nodes whose values it reads */
    int32_t *read;                      /* their indices, ascending (owned; NULL when none) */
    int32_t nrelease;                   /* values whose last reader is this step */
    int32_t *release;                   /* released after it runs (owned; NULL when none) */
    /* Kernel steps only. */
    kir_kernel_t *kernel;               /* the loop (owned) */
    int32_t kin_node[KIR_MAX_INPUTS];   /* graph node read by kernel input k (a step result) */
    int32_t nmembers;                   /* nodes computed inside the kernel */
    int32_t *members;                   /* their indices, ascending (owned) */
} fuse_step_t;

typedef struct {
    int32_t nsteps;
    fuse_step_t *steps;                 /* in execution order (owned) */
    int32_t nkernels;                   /* steps that are kernels */
} fuse_plan_t;

/* Largest number of elementwise nodes fused into one kernel; each produces one KIR value and
 * reads at most three operands, so 4 * this is at most KIR_MAX_VALS. */
#define FUSE_MAX_ELEMWISE (KIR_MAX_VALS / 4)

/* Loops smaller than this many iteration elements are not compiled (--jit-min-work): a compile
 * costs tens of milliseconds, while the interpreter runs such a loop in microseconds, so only
 * loops that do enough work (or run often enough, which a plan cache cannot know) pay back. */
#define FUSE_MIN_WORK_DEFAULT 4096
/* Sets that threshold for the whole daemon (at start-up), and reads it (for explain). */
void fuse_set_min_work(uint64_t elements);
uint64_t fuse_get_min_work(void);
/* True when node i of g is an elementwise op or a reduction whose loop (a reduction's input)
 * is under that threshold, so fusion leaves it to the interpreter. */
bool fuse_below_min_work(const graph_t *g, int32_t i);

/*
 * Partitions the nodes of g that outputs out_id[0..no) need into steps (see fuse.c). With fuse
 * false every needed node becomes an interpreter step (the plain interpreter's schedule). Fills
 * *fp (free with fuse_free). Returns 0, or -PG_EOUT_OF_MEMORY with err filled.
 */
int fuse_graph(const graph_t *g, const int32_t *out_id, uint32_t no, bool fuse, bool every_loop,
               fuse_plan_t *fp,
               proto_err_t *err);

/* Frees the steps of fp and zeroes it. */
void fuse_free(fuse_plan_t *fp);

/* True when a `full` node's value is baked into kernels as a constant: values the lowering made
 * (mean's 1/N, eps) and explicit fills, and Python numbers that are small integers. Any other
 * Python number (a learning rate that changes every step) is read from a one-element buffer, so
 * a new value does not mean a new kernel. The plan cache key hashes the value only when true. */
bool fuse_full_inlined(const gnode_t *n);

/* True for the primitives a kernel computes elementwise (PK_UNARY, PK_BINARY, PK_WHERE). */
bool fuse_is_elementwise(prim_t op);

#endif /* PG_FUSE_H */
