/*
 * prepcache.c - the prepared-run cache (see prepcache.h): a repeated `run` is lowered once.
 *
 * A request is keyed by its canonical form: its `nodes` and `outputs` walked structurally, each
 * msgpack object written as 64-bit words (a type tag with its length, then its value or bytes),
 * except that the `handle` of every `input` and `assign` node is written as the handle's
 * ordinal, its rank among the request's distinct handles in order of first occurrence.
 * Everything else (const data, Python numbers such as a learning rate, seeds, attributes) stays
 * in: lowering and constant folding read it. The pattern of the handles stays in too, because
 * CSE merges the inputs of equal handles: input(7), input(7) keys like input(9), input(9), but
 * not like input(7), input(8).
 *
 *   request:    [input h=12] [input h=13] [matmul 0 1] ... [grad 4 1] ... [assign 9 h=13]
 *   canonical:  [input #0]   [input #1]   [matmul 0 1] ... [grad 4 1] ... [assign 9 #1]
 *   handles:    #0 = 12, #1 = 13
 *
 *   before (every step):  lower + autodiff + CSE + views + fold, plan key     ~190 us, execute
 *   after (a hit):        canonical form + key, look up, bind #0 and #1      a few us, execute
 *
 * The key is two independent 64-bit hashes of the words (the plan cache's scheme, with a
 * word-at-a-time mix: byte-at-a-time FNV over a step's ~10k words cost more than lowering
 * saves), and a hit compares the canonical words whole, so a collision is a miss, never another
 * request's graph.
 *
 * Beyond the request, a prepared graph depends on each handle's dtype and shape (lowering infers
 * from them) and on which handles share one tensor (CSE merges inputs of one tensor even under
 * two handles, e.g. a kept snapshot of input(h)). The entry records both per ordinal; a hit
 * whose session differs in either, or lacks a handle, is a miss, and the request is prepared as
 * usual, with its usual errors (unknown_handle naming the node, an assign to another session's
 * handle, shapes that do not broadcast), and cached beside the first entry: a training loop
 * whose last batch is smaller keeps one entry per batch shape.
 *
 * An entry holds no session data: its input nodes hold no tensor, and each run binds its own
 * session's tensors to them (run.c, ref_eval_input). A graph holding a `const` tensor (data sent
 * in the request) is not cached, so that cached graphs hold no budgeted memory and no live
 * tensor: `stats` tensors and bytes_in_use stay what the sessions hold.
 */
#include "prepcache.h"

#include "limits.h"
#include "mem.h"

#include <pthread.h>
#include <string.h>

/* =============================================================================================
 * The canonical form and the key
 * =========================================================================================== */

/* Word tags (the low byte of a header word): msgpack types, a short string or a small uint in
 * one word, and a handle's ordinal. */
enum {
    PC_T_NIL = 1,
    PC_T_BOOL,
    PC_T_UINT,
    PC_T_INT,
    PC_T_F32,
    PC_T_F64,
    PC_T_STR,
    PC_T_BIN,
    PC_T_EXT,
    PC_T_ARRAY,
    PC_T_MAP,
    PC_T_ORD,
    PC_T_OTHER,
    PC_T_SSTR,
    PC_T_SUINT,
};

/* Makes room for n more words; past the limit or out of memory the request stops being keyed
 * (false). */
static bool reserve(pc_req_t *q, size_t n)
{
    if (q->nwords + n <= q->cap)
        return true;
    if (!q->keyed)
        return false;
    size_t cap = q->cap ? q->cap : 1024;
    while (cap < q->nwords + n)
        cap *= 2;
    uint64_t *nw =
        cap > LIM_PREPARED_MAX_WORDS ? NULL : pg_realloc_array(q->words, cap, sizeof(uint64_t));
    if (!nw) {
        q->keyed = false;
        return false;
    }
    q->words = nw;
    q->cap = cap;
    return true;
}

static inline void put_word(pc_req_t *q, uint64_t w)
{
    if (q->nwords < q->cap || reserve(q, 1))
        q->words[q->nwords++] = w;
}

/* Packs n <= 8 bytes into a word, in registers (a memcpy of a few bytes into a word on the
 * stack stalls the load that reads it back). */
static inline uint64_t pack_tail(const char *p, uint32_t n)
{
    uint64_t w = 0;
    for (uint32_t k = 0; k < n; k++)
        w |= (uint64_t)(uint8_t)p[k] << (8 * k);
    return w;
}

/* Up to 6 bytes share one word with their tag and length; longer runs get a header word, then
 * the bytes, 8 to a word, the last one zero-padded. */
static void put_bytes(pc_req_t *q, int tag, const char *p, uint32_t n)
{
    if (tag == PC_T_STR && n <= 6) {
        put_word(q, PC_T_SSTR | (uint64_t)n << 8 | pack_tail(p, n) << 16);
        return;
    }
    if (!reserve(q, 2 + (size_t)n / 8))
        return;
    uint64_t *out = &q->words[q->nwords];
    *out++ = (uint64_t)tag | (uint64_t)n << 8;
    for (; n >= 8; n -= 8, p += 8)
        memcpy(out++, p, 8);
    if (n)
        *out++ = pack_tail(p, n);
    q->nwords = (size_t)(out - q->words);
}

/* Any object, structurally. Depth is bounded by the frame checks (protocol: 32). */
static void put_obj(pc_req_t *q, const msgpack_object *o)
{
    uint64_t bits;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: put_word(q, PC_T_NIL); break;
    case MSGPACK_OBJECT_BOOLEAN: put_word(q, PC_T_BOOL | (uint64_t)o->via.boolean << 8); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 < (1ull << 56)) {
            put_word(q, PC_T_SUINT | o->via.u64 << 8);
        } else {
            put_word(q, PC_T_UINT);
            put_word(q, o->via.u64);
        }
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        put_word(q, PC_T_INT);
        put_word(q, (uint64_t)o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        memcpy(&bits, &o->via.f64, sizeof(bits)); /* -0.0 and each NaN stay distinct */
        put_word(q, o->type == MSGPACK_OBJECT_FLOAT32 ? PC_T_F32 : PC_T_F64);
        put_word(q, bits);
        break;
    case MSGPACK_OBJECT_STR: put_bytes(q, PC_T_STR, o->via.str.ptr, o->via.str.size); break;
    case MSGPACK_OBJECT_BIN: put_bytes(q, PC_T_BIN, o->via.bin.ptr, o->via.bin.size); break;
    case MSGPACK_OBJECT_EXT:
        put_word(q, PC_T_EXT | (uint64_t)(uint8_t)o->via.ext.type << 8);
        put_bytes(q, PC_T_EXT, o->via.ext.ptr, o->via.ext.size);
        break;
    case MSGPACK_OBJECT_ARRAY:
        put_word(q, PC_T_ARRAY | (uint64_t)o->via.array.size << 8);
        for (uint32_t i = 0; i < o->via.array.size && q->keyed; i++)
            put_obj(q, &o->via.array.ptr[i]);
        break;
    case MSGPACK_OBJECT_MAP:
        put_word(q, PC_T_MAP | (uint64_t)o->via.map.size << 8);
        for (uint32_t i = 0; i < o->via.map.size && q->keyed; i++) {
            put_obj(q, &o->via.map.ptr[i].key);
            put_obj(q, &o->via.map.ptr[i].val);
        }
        break;
    default: put_word(q, PC_T_OTHER); break;
    }
}

static bool str_is(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           !memcmp(o->via.str.ptr, s, n);
}

/* The handle a node's `handle` value names when lowering would take it as one (1 to 2^63-1),
 * else 0. */
static uint64_t handle_value(const msgpack_object *v)
{
    if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 >= 1 &&
        v->via.u64 <= (uint64_t)INT64_MAX)
        return v->via.u64;
    return 0;
}

/* Returns handle h's ordinal, giving it the next one on its first occurrence; UINT32_MAX when
 * memory runs out. */
static uint32_t ordinal(pc_req_t *q, uint64_t h)
{
    uintptr_t v = (uintptr_t)htab_get(&q->ord, h);
    if (v)
        return (uint32_t)(v - 1);
    if (q->nh == q->hcap) {
        uint32_t cap = q->hcap ? q->hcap * 2 : 16;
        uint64_t *nh = pg_realloc_array(q->handles, cap, sizeof(uint64_t));
        if (!nh)
            return UINT32_MAX;
        q->handles = nh;
        q->hcap = cap;
    }
    if (htab_put(&q->ord, h, (void *)(uintptr_t)(q->nh + 1)) != 0)
        return UINT32_MAX;
    q->handles[q->nh] = h;
    return q->nh++;
}

/* One request node: an `input` or `assign` node's handle (the value lowering reads: the first
 * "handle" key) becomes its ordinal; everything else is written as it is. */
static void put_node(pc_req_t *q, const msgpack_object *n)
{
    if (n->type != MSGPACK_OBJECT_MAP) {
        put_obj(q, n);
        return;
    }
    const msgpack_object *op = proto_find(n, "op"), *hv = NULL;
    if (str_is(op, "input") || str_is(op, "assign"))
        hv = proto_find(n, "handle");
    uint64_t h = handle_value(hv);
    put_word(q, PC_T_MAP | (uint64_t)n->via.map.size << 8);
    for (uint32_t i = 0; i < n->via.map.size && q->keyed; i++) {
        put_obj(q, &n->via.map.ptr[i].key);
        if (h && &n->via.map.ptr[i].val == hv) {
            uint32_t ord = ordinal(q, h);
            if (ord == UINT32_MAX)
                q->keyed = false;
            put_word(q, PC_T_ORD | (uint64_t)ord << 8);
        } else {
            put_obj(q, &n->via.map.ptr[i].val);
        }
    }
}

static uint64_t rotl(uint64_t x, int r)
{
    return x << r | x >> (64 - r);
}

static uint64_t fmix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

/* Two independent 64-bit hashes of the words: different bases, multipliers and rotations, one
 * xoring and one adding each word in. Each round is a bijection of its accumulator, and each
 * hash keeps two accumulators (even and odd words) so that the rounds' latencies overlap. */
static void hash_words(const uint64_t *w, size_t n, uint64_t key[2])
{
    uint64_t a0 = 0xcbf29ce484222325ull ^ n, a1 = 0x9ae16a3b2f90404full;
    uint64_t b0 = 0x84222325cbf29ce4ull + n, b1 = 0xc949d7c7509e6557ull;
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        a0 = rotl(a0 ^ (w[i] * 0x87c37b91114253d5ull), 31) * 0x9e3779b97f4a7c15ull;
        a1 = rotl(a1 ^ (w[i + 1] * 0x87c37b91114253d5ull), 31) * 0x9e3779b97f4a7c15ull;
        b0 = rotl(b0 + (w[i] * 0x4cf5ad432745937full), 27) * 0xd6e8feb86659fd93ull;
        b1 = rotl(b1 + (w[i + 1] * 0x4cf5ad432745937full), 27) * 0xd6e8feb86659fd93ull;
    }
    if (i < n) {
        a0 = rotl(a0 ^ (w[i] * 0x87c37b91114253d5ull), 31) * 0x9e3779b97f4a7c15ull;
        b0 = rotl(b0 + (w[i] * 0x4cf5ad432745937full), 27) * 0xd6e8feb86659fd93ull;
    }
    key[0] = fmix(fmix(a0) ^ rotl(a1, 32));
    key[1] = fmix(fmix(b0 + 0x94d049bb133111ebull) + rotl(b1, 17));
}

void pc_req_key(pc_req_t *q, const msgpack_object *nodes, const msgpack_object *outs)
{
    if (!nodes || nodes->type != MSGPACK_OBJECT_ARRAY || !outs ||
        outs->type != MSGPACK_OBJECT_ARRAY || nodes->via.array.size > GRAPH_MAX_NODES)
        return;
    q->keyed = true;
    htab_init(&q->ord);
    put_word(q, PC_T_ARRAY | (uint64_t)nodes->via.array.size << 8);
    for (uint32_t i = 0; i < nodes->via.array.size && q->keyed; i++)
        put_node(q, &nodes->via.array.ptr[i]);
    put_obj(q, outs);
    if (q->keyed)
        hash_words(q->words, q->nwords, q->key);
}

void pc_req_free(pc_req_t *q)
{
    pg_free(q->words);
    pg_free(q->handles);
    htab_free(&q->ord);
    memset(q, 0, sizeof(*q));
}

/* =============================================================================================
 * Handles: which ordinals share a tensor
 * =========================================================================================== */

/* Sets alias[o] to the first index p <= o with t[p] == t[o], for o < n. Returns 0 or -1 when
 * memory runs out. */
static int alias_fill(tensor_t *const *t, uint32_t n, uint32_t *alias)
{
    if (n <= 64) {
        for (uint32_t o = 0; o < n; o++) {
            alias[o] = o;
            for (uint32_t p = 0; p < o; p++)
                if (t[p] == t[o]) {
                    alias[o] = p;
                    break;
                }
        }
        return 0;
    }
    htab_t seen;
    htab_init(&seen);
    for (uint32_t o = 0; o < n; o++) {
        uint64_t k = (uint64_t)(uintptr_t)t[o]; /* a live tensor's address: never 0 or ~0 */
        uintptr_t v = (uintptr_t)htab_get(&seen, k);
        alias[o] = v ? (uint32_t)(v - 1) : o;
        if (!v && htab_put(&seen, k, (void *)(uintptr_t)(o + 1)) != 0) {
            htab_free(&seen);
            return -1;
        }
    }
    htab_free(&seen);
    return 0;
}

/* =============================================================================================
 * Entries
 * =========================================================================================== */

static void entry_free(pc_entry_t *e)
{
    graph_free(&e->g);
    pg_free(e->out_id);
    pg_free(e->keep);
    pg_free(e->as);
    pg_free(e->in);
    pg_free(e->h);
    pg_free(e->words);
    plan_release(e->plan);
    fuse_free(&e->local);
    pg_free(e);
}

void prepcache_release(pc_entry_t *e)
{
    if (e && atomic_fetch_sub(&e->refs, 1) == 1)
        entry_free(e);
}

/* Makes e shared when it can be: every tensor of its graph is an input's (no const data), and
 * every input node and assign maps to a handle of q. Moves the inputs' tensors into tens (by
 * ordinal) and q's canonical form into e. Leaves e as it was when it cannot. */
static void share(pc_entry_t *e, pc_req_t *q, const lower_assigns_t *as,
                  const msgpack_object *nodes, const sess_t *sess, tensor_t **tens)
{
    graph_t *g = &e->g;
    uint32_t nin = 0;
    for (int32_t i = 0; i < g->n; i++) {
        if (g->nodes[i].op == PRIM_input)
            nin++;
        else if (g->nodes[i].tensor)
            return; /* a const's data: not cached (see the top) */
    }
    pc_input_t *in = pg_calloc_array(nin ? nin : 1, sizeof(*in));
    pc_handle_t *h = pg_calloc_array(q->nh ? q->nh : 1, sizeof(*h));
    uint32_t *alias = pg_calloc_array(q->nh ? q->nh : 1, sizeof(*alias));
    tensor_t **t = pg_calloc_array(q->nh ? q->nh : 1, sizeof(*t));
    if (!in || !h || !alias || !t)
        goto out_free;
    for (uint32_t o = 0; o < q->nh; o++) {
        if (!(t[o] = sess_get(sess, q->handles[o])))
            goto out_free;
        h[o].dtype = t[o]->dtype;
        h[o].rank = t[o]->rank;
        memcpy(h[o].shape, t[o]->shape, sizeof(h[o].shape));
    }
    if (alias_fill(t, q->nh, alias) != 0)
        goto out_free;
    for (uint32_t o = 0; o < q->nh; o++)
        h[o].alias = alias[o];
    /* An input primitive keeps the request node it came from (CSE keeps the first of equal
     * ones, fold re-emits it): that node's handle is the one it reads. */
    nin = 0;
    for (int32_t i = 0; i < g->n; i++) {
        const gnode_t *n = &g->nodes[i];
        if (n->op != PRIM_input)
            continue;
        if (n->wire < 0 || (uint32_t)n->wire >= nodes->via.array.size)
            goto out_free;
        uint64_t hd = handle_value(proto_find(&nodes->via.array.ptr[n->wire], "handle"));
        uintptr_t v = hd ? (uintptr_t)htab_get(&q->ord, hd) : 0;
        if (!v || t[v - 1] != n->tensor)
            goto out_free;
        in[nin++] = (pc_input_t){i, (uint32_t)(v - 1)};
    }
    for (uint32_t j = 0; j < e->nas; j++) {
        uintptr_t v = (uintptr_t)htab_get(&q->ord, as->a[j].handle);
        if (!v)
            goto out_free;
        e->as[j].ord = (uint32_t)(v - 1);
    }
    /* Nothing can fail from here on. */
    for (uint32_t o = 0; o < q->nh; o++)
        tens[o] = tensor_ref(t[o]);
    for (uint32_t k = 0; k < nin; k++) {
        gnode_t *n = &g->nodes[in[k].node];
        tensor_unref(n->tensor);
        n->tensor = NULL;
    }
    e->in = in;
    e->nin = nin;
    e->h = h;
    e->nh = q->nh;
    e->words = q->words;
    e->nwords = q->nwords;
    q->words = NULL;
    q->nwords = q->cap = 0;
    e->key[0] = q->key[0];
    e->key[1] = q->key[1];
    e->shared = true;
    in = NULL;
    h = NULL;

out_free:
    pg_free(t);
    pg_free(alias);
    pg_free(h);
    pg_free(in);
}

pc_entry_t *prepcache_adopt(pc_req_t *q, graph_t *g, int32_t **out_id, bool **keep, uint32_t no,
                            uint32_t nall, const lower_assigns_t *as, const msgpack_object *nodes,
                            const sess_t *sess, tensor_t **tens)
{
    pc_entry_t *e = pg_calloc_array(1, sizeof(*e));
    if (!e) {
        graph_free(g);
        pg_free(*out_id);
        pg_free(*keep);
        *out_id = NULL;
        *keep = NULL;
        return NULL;
    }
    atomic_init(&e->refs, 1);
    e->g = *g;
    graph_init(g, e->g.max_bytes);
    e->out_id = *out_id;
    e->keep = *keep;
    *out_id = NULL;
    *keep = NULL;
    e->no = no;
    e->nall = nall;
    e->nas = as->n;
    e->as = pg_calloc_array(as->n ? as->n : 1, sizeof(*e->as));
    if (!e->as) {
        entry_free(e);
        return NULL;
    }
    for (uint32_t j = 0; j < as->n; j++)
        e->as[j] = (pc_assign_t){UINT32_MAX, as->a[j].wire};
    if (q && q->keyed && prepcache_enabled() && e->g.n <= LIM_PREPARED_MAX_PRIMS)
        share(e, q, as, nodes, sess, tens);
    return e;
}

/* =============================================================================================
 * The cache
 * =========================================================================================== */

static struct {
    pthread_mutex_t lock;
    pc_entry_t *head, *tail; /* most recently used first */
    uint32_t count, max;     /* entries, and the limit (0: off) */
    uint64_t prims;          /* primitive nodes of the cached graphs */
    atomic_uint_fast64_t hits, misses;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

void prepcache_init(uint32_t max_entries)
{
    cache.max = max_entries;
}

bool prepcache_enabled(void)
{
    return cache.max > 0;
}

static void lru_unlink(pc_entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        cache.head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        cache.tail = e->prev;
    e->prev = e->next = NULL;
    cache.count--;
    cache.prims -= (uint64_t)e->g.n;
}

static void lru_push_front(pc_entry_t *e)
{
    e->prev = NULL;
    e->next = cache.head;
    if (cache.head)
        cache.head->prev = e;
    cache.head = e;
    if (!cache.tail)
        cache.tail = e;
    cache.count++;
    cache.prims += (uint64_t)e->g.n;
}

/* Checks that sess has q's handles as e was prepared with them; fills tens (borrowed). */
static bool session_fits(const pc_entry_t *e, const pc_req_t *q, const sess_t *sess,
                         tensor_t **tens)
{
    if (q->nh != e->nh)
        return false;
    for (uint32_t o = 0; o < q->nh; o++) {
        tensor_t *t = sess_get(sess, q->handles[o]);
        const pc_handle_t *h = &e->h[o];
        if (!t || t->dtype != h->dtype || t->rank != h->rank ||
            memcmp(t->shape, h->shape, (size_t)t->rank * sizeof(int64_t)))
            return false;
        tens[o] = t;
    }
    uint32_t small[64], *alias = q->nh <= 64 ? small : pg_calloc_array(q->nh, sizeof(*alias));
    bool ok = alias && alias_fill(tens, q->nh, alias) == 0;
    for (uint32_t o = 0; ok && o < q->nh; o++)
        ok = alias[o] == e->h[o].alias;
    if (alias != small)
        pg_free(alias);
    return ok;
}

/* True when e was prepared from q's canonical request. */
static bool same_request(const pc_entry_t *e, const uint64_t key[2], const uint64_t *words,
                         size_t nwords)
{
    return e->key[0] == key[0] && e->key[1] == key[1] && e->nwords == nwords &&
           !memcmp(e->words, words, nwords * sizeof(uint64_t));
}

/* True when a and b assumed the same of their handles (dtypes, shapes, shared tensors). */
static bool same_handles(const pc_entry_t *a, const pc_entry_t *b)
{
    if (a->nh != b->nh)
        return false;
    for (uint32_t o = 0; o < a->nh; o++) {
        const pc_handle_t *x = &a->h[o], *y = &b->h[o];
        if (x->dtype != y->dtype || x->rank != y->rank || x->alias != y->alias ||
            memcmp(x->shape, y->shape, (size_t)x->rank * sizeof(int64_t)))
            return false;
    }
    return true;
}

pc_entry_t *prepcache_get(const pc_req_t *q, const sess_t *sess, tensor_t **tens)
{
    if (!q->keyed || !prepcache_enabled())
        return NULL;
    /* One request may have several entries, one per set of handle shapes (a last batch that is
     * smaller than the others): the first that fits the session is the hit. The checks read
     * immutable entries and this worker's own session, so they are short under the lock. */
    pthread_mutex_lock(&cache.lock);
    pc_entry_t *e = cache.head;
    for (; e; e = e->next)
        if (same_request(e, q->key, q->words, q->nwords) && session_fits(e, q, sess, tens))
            break;
    if (e) {
        lru_unlink(e);
        lru_push_front(e);
        atomic_fetch_add(&e->refs, 1);
    }
    pthread_mutex_unlock(&cache.lock);
    if (!e) {
        memset(tens, 0, (q->nh ? q->nh : 1) * sizeof(*tens));
        atomic_fetch_add(&cache.misses, 1);
        return NULL;
    }
    for (uint32_t o = 0; o < q->nh; o++)
        tensor_ref(tens[o]);
    atomic_fetch_add(&cache.hits, 1);
    return e;
}

void prepcache_put(pc_entry_t *e)
{
    if (!e->shared || !prepcache_enabled())
        return;
    pc_entry_t *drop = NULL; /* unlinked entries to release outside the lock, through ->next */
    pthread_mutex_lock(&cache.lock);
    for (pc_entry_t *p = cache.head, *next; p; p = next) {
        next = p->next;
        if (same_request(p, e->key, e->words, e->nwords) && same_handles(p, e)) {
            /* The same request and handles prepared twice (two workers at once): the newest
             * wins. */
            lru_unlink(p);
            p->next = drop;
            drop = p;
        }
    }
    atomic_fetch_add(&e->refs, 1); /* the cache's reference */
    lru_push_front(e);
    while (cache.count > cache.max || cache.prims > LIM_PREPARED_TOTAL_PRIMS) {
        pc_entry_t *p = cache.tail;
        if (p == e)
            break;
        lru_unlink(p);
        p->next = drop;
        drop = p;
    }
    pthread_mutex_unlock(&cache.lock);
    while (drop) {
        pc_entry_t *next = drop->next;
        prepcache_release(drop);
        drop = next;
    }
}

void prepcache_stats(uint64_t *hits, uint64_t *misses)
{
    *hits = atomic_load(&cache.hits);
    *misses = atomic_load(&cache.misses);
}

void prepcache_shutdown(void)
{
    pthread_mutex_lock(&cache.lock);
    pc_entry_t *e = cache.head;
    cache.head = cache.tail = NULL;
    cache.count = 0;
    cache.prims = 0;
    pthread_mutex_unlock(&cache.lock);
    while (e) {
        pc_entry_t *next = e->next;
        e->prev = e->next = NULL;
        prepcache_release(e);
        e = next;
    }
}
