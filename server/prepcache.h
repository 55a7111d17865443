/*
 * prepcache.h - the prepared-run cache: a `run` request seen before skips lowering and planning.
 *
 * A training step is one `run` whose request is the same every step but for the handles of its
 * `input` nodes (the new batch). Lowering it (with the reverse-mode pass), the graph passes and
 * the plan key cost more than running a small model's step, so the result of all of them is
 * kept here, keyed by the request itself with every handle replaced by its ordinal (see
 * prepcache.c), and shared by all sessions: an entry holds no session data. A run that finds
 * its entry binds its own session's tensors to the entry's input nodes and executes.
 *
 * Threading: entries are immutable once cached and refcounted, so any number of workers may run
 * one at once; the cache itself is one mutex-protected LRU list.
 */
#ifndef PG_PREPCACHE_H
#define PG_PREPCACHE_H

#include "graph/graph.h"
#include "htab.h"
#include "passes/fuse.h"
#include "passes/lower.h"
#include "plan.h"
#include "session.h"

#include <stdatomic.h>

/* An `input` primitive of a prepared graph and the handle (by ordinal) whose tensor it reads. */
typedef struct {
    int32_t node; /* the primitive node */
    uint32_t ord; /* the ordinal of its handle in the request */
} pc_input_t;

/* An `assign` of a prepared request. */
typedef struct {
    uint32_t ord; /* the ordinal of the assigned handle */
    int32_t wire; /* the assign's request node (messages) */
} pc_assign_t;

/* What the prepared graph assumed of one handle: a hit needs the same. */
typedef struct {
    pg_dtype_t dtype; /* the tensor's dtype when the request was prepared */
    int rank;
    int64_t shape[PROTO_MAX_RANK];
    uint32_t alias; /* the first ordinal whose handle held the same tensor (CSE
                     * merged their inputs), its own ordinal when none did */
} pc_handle_t;

/* A prepared request: the lowered graph after every pass, its outputs and assigns, and its
 * schedule. Refcounted (the cache's reference and each running request's). */
typedef struct pc_entry {
    atomic_int refs;
    uint64_t key[2]; /* the request's 128-bit key */
    uint64_t *words; /* the canonical request the key hashes (owned; compared
                      * whole on a hit, so a key collision is never a hit) */
    size_t nwords;
    bool shared;     /* made from a keyed request: its input nodes hold no tensor
                      * (each run binds them) and it may be cached */
    graph_t g;       /* the prepared graph (owned) */
    uint32_t no;     /* outputs the request asked for */
    uint32_t nall;   /* no + one per assign */
    int32_t *out_id; /* nall primitive nodes: the outputs, then the assigns'
                      * values (owned) */
    bool *keep;      /* no flags: keep output k as a handle (owned) */
    pc_assign_t *as; /* nas assigns, in request order (owned) */
    uint32_t nas;
    pc_input_t *in; /* nin input primitives (owned; shared entries only) */
    uint32_t nin;
    pc_handle_t *h; /* nh handles, by ordinal (owned; shared entries only) */
    uint32_t nh;
    plan_t *plan;      /* the plan (a reference), or NULL without the JIT */
    fuse_plan_t local; /* the interpreter's schedule when there is no compiled
                        * plan (owned; has_local) */
    bool has_local;
    struct pc_entry *prev, *next; /* LRU list (the cache's lock) */
} pc_entry_t;

/* One request's key: its canonical form and its handles in ordinal order. Per run; zero it,
 * fill it with pc_req_key, free it with pc_req_free. */
typedef struct {
    bool keyed; /* the request could be keyed (else it is never cached) */
    uint64_t key[2];
    uint64_t *words; /* the canonical request (owned until an entry adopts it) */
    size_t nwords, cap;
    uint64_t *handles; /* nh distinct handles, by first occurrence (owned) */
    uint32_t nh, hcap;
    htab_t ord; /* handle -> ordinal + 1 */
} pc_req_t;

/* Sets the number of cached entries (--prepared-cache; 0 turns the cache off). Call once at
 * start, before any run. */
void prepcache_init(uint32_t max_entries);

/* True when the cache is on. */
bool prepcache_enabled(void);

/* Keys a request from its `nodes` and `outputs` (borrowed). q->keyed stays false when they are
 * not arrays, the canonical form grows past its limit or memory runs out: such a request is
 * prepared as usual and never cached. */
void pc_req_key(pc_req_t *q, const msgpack_object *nodes, const msgpack_object *outs);

/* Frees what q owns and zeroes it. */
void pc_req_free(pc_req_t *q);

/*
 * Looks up a keyed request. On a hit whose handles all exist in sess with the dtypes, shapes and
 * sharing the entry was prepared with, fills tens[0..q->nh) with a new reference to each handle's
 * tensor and returns the entry with a new reference (release with prepcache_release). Otherwise
 * returns NULL and the caller prepares the request (whose errors are the real ones). Counts a
 * hit or a miss. Thread-safe; borrows sess.
 */
pc_entry_t *prepcache_get(const pc_req_t *q, const sess_t *sess, tensor_t **tens);

/*
 * Makes an entry of a request that prepared successfully. Takes ownership of *g (left empty),
 * *out_id and *keep (set to NULL), also on failure; reads as, nodes (the request's node array)
 * and sess. With a keyed q (else NULL) the entry is shared when its graph fits the cache: its
 * input nodes' tensors move to tens[0..q->nh) (new references, by ordinal), and it adopts q's
 * canonical form. Otherwise its graph keeps its tensors and tens is untouched. Returns the entry
 * with one reference, or NULL when memory runs out.
 */
pc_entry_t *prepcache_adopt(pc_req_t *q, graph_t *g, int32_t **out_id, bool **keep, uint32_t no,
                            uint32_t nall, const lower_assigns_t *as, const msgpack_object *nodes,
                            const sess_t *sess, tensor_t **tens);

/* Caches a shared entry whose plan and schedule are set (it is never changed again); replaces an
 * entry of the same key, evicts the least recently used ones past the limits. Does nothing for an
 * entry that is not shared or when the cache is off. Borrows e (the cache takes its own
 * reference). */
void prepcache_put(pc_entry_t *e);

/* Drops a reference; the last one frees the entry. NULL is ignored. */
void prepcache_release(pc_entry_t *e);

/* Hits and misses since start. */
void prepcache_stats(uint64_t *hits, uint64_t *misses);

/* Empties the cache (at shutdown, before plan_cache_shutdown). */
void prepcache_shutdown(void);

#endif /* PG_PREPCACHE_H */
