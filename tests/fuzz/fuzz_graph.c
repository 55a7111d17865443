/*
 * fuzz_graph.c - libFuzzer harness for graphs: the request path of fuzz_request.c, plus `run`
 * and `explain` executed: node decoding, validation and shape inference (graph.c), lowering
 * (passes/lower.c), autodiff (passes/autodiff.c), cse, views, fold, fusion and planning
 * (rendering kernel sources, compiling none), the prepared-run cache, and the reference
 * interpreter under a 1 MiB memory budget. See conn_driver.h.
 */
#define FZ_EXEC_GRAPHS 1
#include "conn_driver.h"
