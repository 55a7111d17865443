/*
 * plan.c - building, caching and explaining execution plans (see plan.h).
 *
 * The cache is a hash-less LRU list of at most PLAN_CACHE_MAX plans under one mutex: a lookup
 * compares two 64-bit keys per entry, which costs far less than the lowering that precedes it.
 * Plans are built outside the lock (a compile can take a while), and when two workers build the
 * same plan at once the second one to finish adopts the first one's (jit_get itself compiles a
 * given kernel only once). Plans are refcounted: eviction only drops the cache's reference, so a
 * run still executing an evicted plan keeps it alive.
 */
#include "plan.h"

#include "../kernels/cpu/jit.h"
#include "log.h"
#include "mem.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* =============================================================================================
 * Keys
 * =========================================================================================== */

#define PLAN_HASH_INIT2 0x84222325cbf29ce4ull /* the second key's basis */
#define PLAN_VERSION 1                         /* bump when fusion decisions change */

typedef struct {
    uint64_t h[2];
} khash_t;

static void kh(khash_t *k, const void *p, size_t n) {
    k->h[0] = kir_hash(k->h[0], p, n);
    /* The second hash reads the bytes with a different basis and a length prefix, so that two
     * structures colliding in one are independent in the other. */
    uint64_t len = n;
    k->h[1] = kir_hash(k->h[1], &len, sizeof(len));
    k->h[1] = kir_hash(k->h[1], p, n);
}

static void kh_i64(khash_t *k, int64_t v) { kh(k, &v, sizeof(v)); }

void plan_key(const graph_t *g, const int32_t *out_id, uint32_t no, bool every_loop,
              uint64_t key[2]) {
    khash_t k = {{KIR_HASH_INIT, PLAN_HASH_INIT2}};
    kh_i64(&k, PLAN_VERSION);
    kh_i64(&k, every_loop);
    kh_i64(&k, g->n);
    for (int32_t i = 0; i < g->n; i++) {
        const gnode_t *n = &g->nodes[i];
        const gattr_t *a = &n->a;
        kh_i64(&k, n->op);
        kh_i64(&k, n->dtype);
        kh_i64(&k, n->rank);
        for (int d = 0; d < n->rank && d < PROTO_MAX_RANK; d++)
            kh_i64(&k, n->shape[d]);
        kh_i64(&k, n->nin);
        for (int32_t s = 0; s < n->nin; s++)
            kh_i64(&k, n->in[s]);
        prim_kind_t kind = graph_prim_kind(n->op);
        if (kind == PK_LEAF) {
            /* Data, handles, seeds and ranges do not change the plan; a full's value does when
             * kernels bake it in. */
            bool inl = fuse_full_inlined(n);
            kh_i64(&k, inl);
            if (inl)
                kh(&k, &a->value, sizeof(a->value));
            continue;
        }
        int nd = a->ndims < 0 ? 0 : a->ndims > PROTO_MAX_RANK ? PROTO_MAX_RANK : a->ndims;
        kh_i64(&k, nd);
        for (int d = 0; d < nd; d++)
            kh_i64(&k, a->dims[d]);
        kh_i64(&k, a->keepdim);
        int rk = n->rank < 0 ? 0 : n->rank > PROTO_MAX_RANK ? PROTO_MAX_RANK : n->rank;
        if (n->op == PRIM_slice || n->op == PRIM_pad)
            for (int d = 0; d < rk; d++) {
                kh_i64(&k, a->start[d]);
                kh_i64(&k, a->stop[d]);
                kh_i64(&k, a->step[d]);
            }
        if (n->op == PRIM_pad)
            kh(&k, &a->value, sizeof(a->value));
        if (n->op == PRIM_window || n->op == PRIM_unwindow)
            for (int d = 0; d < 6; d++)
                kh_i64(&k, a->win[d]);
        if (n->op == PRIM_cast)
            kh_i64(&k, a->dtype);
    }
    kh_i64(&k, no);
    for (uint32_t q = 0; q < no; q++)
        kh_i64(&k, out_id[q]);
    key[0] = k.h[0];
    key[1] = k.h[1];
}

/* =============================================================================================
 * --dump-cuda
 * =========================================================================================== */

static const char *dump_dir;       /* --dump-cuda DIR, or NULL */
static atomic_uint_fast64_t dump_seq; /* temporary file names */

int plan_set_dump_cuda(const char *dir) {
    struct stat sb;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "picogradd: --dump-cuda: cannot create %s: %s\n", dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "picogradd: --dump-cuda: %s is not a directory\n", dir);
        return -1;
    }
    dump_dir = dir;
    return 0;
}

static bool render_cuda; /* plan_set_cuda(true): plans carry their kernels' CUDA source */

void plan_set_cuda(bool on) { render_cuda = on; }

/* Writes a kernel's CUDA source to dump_dir/<name>.cu unless a file of that name is there. */
static void dump_cuda(const char *name, const char *src) {
    char path[4096], tmp[4096];
    int n = snprintf(path, sizeof(path), "%s/%s.cu", dump_dir, name);
    int m = snprintf(tmp, sizeof(tmp), "%s/.tmp-%ld-%" PRIu64 ".cu", dump_dir, (long)getpid(),
                     (uint64_t)atomic_fetch_add(&dump_seq, 1));
    if (n < 0 || (size_t)n >= sizeof(path) || m < 0 || (size_t)m >= sizeof(tmp)) {
        log_warn("--dump-cuda: the directory's path is too long");
        return;
    }
    if (access(path, F_OK) == 0)
        return; /* already dumped (by name: the name is a hash of the source) */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        log_warn("--dump-cuda: cannot create %s: %s", tmp, strerror(errno));
        return;
    }
    size_t len = strlen(src), off = 0;
    while (off < len) {
        ssize_t w = write(fd, src + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    if (close(fd) != 0 || off != len || rename(tmp, path) != 0) {
        log_warn("--dump-cuda: cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

/* =============================================================================================
 * Building
 * =========================================================================================== */

static void plan_free(plan_t *p) {
    if (!p)
        return;
    if (p->kern)
        for (int32_t s = 0; s < p->fp.nsteps; s++) {
            pg_free(p->kern[s].src);
            pg_free(p->kern[s].cu_src);
        }
    pg_free(p->kern);
    fuse_free(&p->fp);
    pg_free(p);
}

plan_t *plan_ref(plan_t *p) {
    atomic_fetch_add(&p->refs, 1);
    return p;
}

void plan_release(plan_t *p) {
    if (p && atomic_fetch_sub(&p->refs, 1) == 1)
        plan_free(p);
}

plan_t *plan_build(const graph_t *g, const int32_t *out_id, uint32_t no, bool compile,
                   bool every_loop, proto_err_t *err) {
    plan_t *p = pg_calloc_array(1, sizeof(*p));
    if (!p) {
        proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a plan");
        return NULL;
    }
    atomic_init(&p->refs, 1);
    p->every_loop = every_loop;
    plan_key(g, out_id, no, every_loop, p->key);
    if (fuse_graph(g, out_id, no, true, every_loop, &p->fp, err) != 0)
        goto err_free;
    p->kern = pg_calloc_array(p->fp.nsteps ? (size_t)p->fp.nsteps : 1, sizeof(plan_kernel_t));
    if (!p->kern) {
        proto_fail(err, PG_EOUT_OF_MEMORY, "no memory for a plan of %d steps", (int)p->fp.nsteps);
        goto err_free;
    }
    p->compiled = compile;
    for (int32_t s = 0; s < p->fp.nsteps; s++) {
        const fuse_step_t *st = &p->fp.steps[s];
        plan_kernel_t *pk = &p->kern[s];
        if (st->kind != FUSE_STEP_KERNEL)
            continue;
        pk->src = kir_render_c(st->kernel, pk->name, sizeof(pk->name));
        if (render_cuda || dump_dir) {
            pk->cu_src = kir_render_cuda(st->kernel, pk->cu_name, sizeof(pk->cu_name));
            if (!pk->cu_src)
                log_warn("plan: kernel for node %d could not be rendered for CUDA",
                         (int)st->node);
            else if (dump_dir)
                dump_cuda(pk->cu_name, pk->cu_src);
        }
        if (!pk->src) {
            /* The renderer refuses kernels it cannot express; the interpreter can. */
            log_warn("plan: kernel for node %d could not be rendered; interpreting this graph",
                     (int)st->node);
            snprintf(pk->name, sizeof(pk->name), "(not rendered)");
            p->compiled = false;
            p->failed = true;
            continue;
        }
        if (!p->compiled)
            continue;
        proto_err_t e = {0};
        pk->fn = jit_get(pk->name, pk->src, &e);
        if (!pk->fn) {
            log_warn("plan: %s; interpreting this graph", e.message);
            p->compiled = false;
            p->failed = true;
        }
    }
    return p;

err_free:
    plan_free(p);
    return NULL;
}

/* =============================================================================================
 * The cache
 * =========================================================================================== */

static struct {
    pthread_mutex_t lock;
    plan_t *head, *tail;               /* most recently used first */
    int count;
    uint64_t hits, misses;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void lru_unlink(plan_t *p) {
    if (p->prev)
        p->prev->next = p->next;
    else
        cache.head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        cache.tail = p->prev;
    p->prev = p->next = NULL;
}

static void lru_push_front(plan_t *p) {
    p->prev = NULL;
    p->next = cache.head;
    if (cache.head)
        cache.head->prev = p;
    cache.head = p;
    if (!cache.tail)
        cache.tail = p;
}

/* Finds key and moves it to the front; returns it with a new reference, or NULL. Lock held. */
static plan_t *lru_find(const uint64_t key[2]) {
    for (plan_t *p = cache.head; p; p = p->next)
        if (p->key[0] == key[0] && p->key[1] == key[1]) {
            lru_unlink(p);
            lru_push_front(p);
            atomic_fetch_add(&p->refs, 1);
            return p;
        }
    return NULL;
}

plan_t *plan_get(const graph_t *g, const int32_t *out_id, uint32_t no, bool every_loop,
                 bool *built, proto_err_t *err) {
    uint64_t key[2];
    plan_key(g, out_id, no, every_loop, key);
    *built = false;
    pthread_mutex_lock(&cache.lock);
    plan_t *p = lru_find(key);
    if (p)
        cache.hits++;
    else
        cache.misses++;
    pthread_mutex_unlock(&cache.lock);
    if (p)
        return p;

    plan_t *fresh = plan_build(g, out_id, no, true, every_loop, err);
    if (!fresh)
        return NULL;
    *built = true;
    pthread_mutex_lock(&cache.lock);
    p = lru_find(key);
    if (p) { /* another worker built it meanwhile: use that one */
        pthread_mutex_unlock(&cache.lock);
        plan_release(fresh);
        return p;
    }
    atomic_fetch_add(&fresh->refs, 1); /* the cache's reference */
    lru_push_front(fresh);
    plan_t *evicted = NULL;
    if (++cache.count > PLAN_CACHE_MAX) {
        evicted = cache.tail;
        lru_unlink(evicted);
        cache.count--;
    }
    pthread_mutex_unlock(&cache.lock);
    plan_release(evicted);
    return fresh;
}

void plan_count_hit(void) {
    pthread_mutex_lock(&cache.lock);
    cache.hits++;
    pthread_mutex_unlock(&cache.lock);
}

void plan_stats(uint64_t *hits, uint64_t *misses) {
    pthread_mutex_lock(&cache.lock);
    *hits = cache.hits;
    *misses = cache.misses;
    pthread_mutex_unlock(&cache.lock);
}

void plan_cache_shutdown(void) {
    pthread_mutex_lock(&cache.lock);
    plan_t *p = cache.head;
    cache.head = cache.tail = NULL;
    cache.count = 0;
    pthread_mutex_unlock(&cache.lock);
    while (p) {
        plan_t *next = p->next;
        p->prev = p->next = NULL;
        plan_release(p);
        p = next;
    }
}

/* =============================================================================================
 * Explain
 * =========================================================================================== */

/* A growing string; on allocation failure it stops growing and remembers it. */
typedef struct {
    char *p;
    size_t n, cap;
    bool failed;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(sbuf_t *b, const char *fmt, ...) {
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (w < 0) {
            b->failed = true;
            return;
        }
        if (b->p && b->n + (size_t)w < b->cap) {
            b->n += (size_t)w;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + (size_t)w + 1)
            cap *= 2;
        char *np = pg_realloc_array(b->p, cap, 1);
        if (!np) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* Writes the attributes of node n that matter to a reader, e.g. "dims=[1] keepdim". */
static void attrs_str(const gnode_t *n, char *buf, size_t cap) {
    const gattr_t *a = &n->a;
    size_t w = 0;
    buf[0] = '\0';
#define APP(...)                                                                                   \
    do {                                                                                           \
        if (w < cap)                                                                               \
            w += (size_t)snprintf(buf + w, cap - w, __VA_ARGS__);                                  \
    } while (0)
    prim_kind_t kind = graph_prim_kind(n->op);
    int nd = a->ndims < 0 ? 0 : a->ndims > PROTO_MAX_RANK ? PROTO_MAX_RANK : a->ndims;
    int rk = n->rank < 0 ? 0 : n->rank > PROTO_MAX_RANK ? PROTO_MAX_RANK : n->rank;
    switch (n->op) {
    case PRIM_full:
        APP("value=%.17g%s", a->value, n->weak ? " (python number)" : "");
        break;
    case PRIM_arange:
        APP("start=%.17g step=%.17g", a->astart, a->astep);
        break;
    case PRIM_rand:
    case PRIM_randn:
        APP("seed=%" PRIu64 " offset=%" PRIu64, a->seed, a->offset);
        break;
    case PRIM_cast:
        APP("to=%s", proto_dtype_name(a->dtype));
        break;
    case PRIM_slice:
        APP("start=[");
        for (int d = 0; d < rk; d++)
            APP(d ? ", %lld" : "%lld", (long long)a->start[d]);
        APP("] step=[");
        for (int d = 0; d < rk; d++)
            APP(d ? ", %lld" : "%lld", (long long)a->step[d]);
        APP("]");
        break;
    case PRIM_pad:
        APP("before=[");
        for (int d = 0; d < rk; d++)
            APP(d ? ", %lld" : "%lld", (long long)a->start[d]);
        APP("] after=[");
        for (int d = 0; d < rk; d++)
            APP(d ? ", %lld" : "%lld", (long long)a->stop[d]);
        APP("] value=%.17g", a->value);
        break;
    case PRIM_window:
    case PRIM_unwindow:
        APP("kernel=[%lld, %lld] stride=[%lld, %lld] dilation=[%lld, %lld]",
            (long long)a->win[0], (long long)a->win[1], (long long)a->win[2],
            (long long)a->win[3], (long long)a->win[4], (long long)a->win[5]);
        break;
    default:
        if (kind == PK_REDUCE || kind == PK_ARGREDUCE || kind == PK_SCAN || kind == PK_VIEW ||
            n->op == PRIM_cat || kind == PK_INDEX) {
            if (nd > 0 && n->op != PRIM_reshape && n->op != PRIM_expand) {
                APP("dims=[");
                for (int d = 0; d < nd; d++)
                    APP(d ? ", %lld" : "%lld", (long long)a->dims[d]);
                APP("]");
            }
            if (a->keepdim)
                APP(" keepdim");
        }
        break;
    }
#undef APP
}

static const char *kind_word(const plan_t *p, const fuse_step_t *st) {
    (void)p;
    return st->kind == FUSE_STEP_KERNEL ? "kernel" : "interp";
}

char *plan_explain_text(const plan_t *p, const graph_t *g, bool cuda, const char *note) {
    sbuf_t b = {0};
    char sh[160], at[320];
    const fuse_plan_t *fp = &p->fp;
    int32_t *where = pg_calloc_array(g->n ? (size_t)g->n : 1, sizeof(int32_t));
    if (!where)
        return NULL;
    for (int32_t i = 0; i < g->n; i++)
        where[i] = -1;
    for (int32_t s = 0; s < fp->nsteps; s++) {
        const fuse_step_t *st = &fp->steps[s];
        where[st->node] = s;
        for (int32_t q = 0; q < st->nmembers; q++)
            where[st->members[q]] = s;
    }

    if (note)
        sb_printf(&b, "%s\n\n", note);
    sb_printf(&b, "== lowered graph: %d primitive nodes ==\n", (int)g->n);
    sb_printf(&b, "Each request node becomes one or more primitives (kernels/ops.def). %%i names\n"
                  "primitive i; 'from' is the request node it came from; 'step' is where it runs\n"
                  "('-' means no output needs it, or kernels read it folded: a constant, or a\n"
                  "view composed into their loads).\n");
    for (int32_t i = 0; i < g->n; i++) {
        const gnode_t *n = &g->nodes[i];
        char ins[96];
        size_t w = 0;
        ins[0] = '\0';
        for (int32_t s = 0; s < n->nin && w < sizeof(ins); s++)
            w += (size_t)snprintf(ins + w, sizeof(ins) - w, s ? ", %%%d" : "%%%d", (int)n->in[s]);
        if (w >= sizeof(ins))
            snprintf(ins + sizeof(ins) - 5, 5, "...");
        attrs_str(n, at, sizeof(at));
        char stepbuf[16];
        if (where[i] >= 0)
            snprintf(stepbuf, sizeof(stepbuf), "%d", (int)where[i]);
        else
            snprintf(stepbuf, sizeof(stepbuf), "-");
        sb_printf(&b, "  %%%-4d = %-12s (%s)%*s %-8s %-16s step %-4s from node %d (%s)%s%s\n",
                  (int)i, graph_prim_name(n->op), ins,
                  (int)(w < 24 ? 24 - w : 0), "", proto_dtype_name(n->dtype),
                  graph_shape_str(sh, sizeof(sh), n->rank, n->shape), stepbuf, (int)n->wire,
                  n->wire_op ? n->wire_op : "?", at[0] ? "  " : "", at);
    }

    int32_t ninterp = fp->nsteps - fp->nkernels;
    sb_printf(&b, "\n== steps: %d (%d fused kernel%s, %d interpreted node%s) ==\n",
              (int)fp->nsteps, (int)fp->nkernels, fp->nkernels == 1 ? "" : "s", (int)ninterp,
              ninterp == 1 ? "" : "s");
    sb_printf(&b, "Steps run in order. An interpreted step runs one primitive in the reference\n"
                  "interpreter; a kernel step runs several as one compiled loop, reading its\n"
                  "inputs (results of earlier steps) through the views folded into it.%s\n",
              !p->failed ? "" : "\n(A kernel did not compile: this graph runs interpreted.)");
    bool small = false; /* an interpreted loop that fusion left out for its size */
    for (int32_t s = 0; s < fp->nsteps && !p->failed && !p->every_loop; s++)
        small |= fp->steps[s].kind == FUSE_STEP_INTERP && fuse_below_min_work(g, fp->steps[s].node);
    if (small)
        sb_printf(&b, "Loops of fewer than %llu elements stay interpreted (--jit-min-work): "
                      "compiling one\ncosts milliseconds, running it microseconds.\n",
                  (unsigned long long)fuse_get_min_work());
    for (int32_t s = 0; s < fp->nsteps; s++) {
        const fuse_step_t *st = &fp->steps[s];
        const gnode_t *n = &g->nodes[st->node];
        if (st->kind == FUSE_STEP_INTERP) {
            sb_printf(&b, "  step %-3d %s  %%%d = %s -> %s %s\n", (int)s, kind_word(p, st),
                      (int)st->node, graph_prim_name(n->op), proto_dtype_name(n->dtype),
                      graph_shape_str(sh, sizeof(sh), n->rank, n->shape));
            continue;
        }
        const kir_kernel_t *k = st->kernel;
        sb_printf(&b, "  step %-3d %s  %s -> %%%d %s %s\n", (int)s, kind_word(p, st),
                  p->kern[s].name, (int)st->node, proto_dtype_name(n->dtype),
                  graph_shape_str(sh, sizeof(sh), n->rank, n->shape));
        if (k->inplace) {
            int32_t j = st->kin_node[k->inplace - 1];
            sb_printf(&b, "           in place over %%%d (%s): writes its result into that "
                      "buffer%s\n", (int)j, graph_prim_name(g->nodes[j].op),
                      g->nodes[j].op == PRIM_matmul ? ", the matmul's epilogue" : "");
        }
        if (k->nstages > 1)
            sb_printf(&b, "           %d stages per row (axes %d..%d): the reductions it reads "
                      "back run inside it\n", k->nstages, k->row, k->rank - 1);
        sb_printf(&b, "           fuses:");
        for (int32_t q = 0; q < st->nmembers; q++)
            sb_printf(&b, " %%%d %s", (int)st->members[q],
                      graph_prim_name(g->nodes[st->members[q]].op));
        sb_printf(&b, "\n           loop over %s", graph_shape_str(sh, sizeof(sh), k->rank,
                                                               k->shape));
        if (k->reduce != PRIM_COUNT) {
            sb_printf(&b, ", %s over axes", graph_prim_name(k->reduce));
            for (int d = 0; d < k->rank; d++)
                if (k->reduced[d])
                    sb_printf(&b, " %d", d);
        }
        sb_printf(&b, "\n");
        for (int q = 0; q < k->nin; q++) {
            const kir_input_t *in = &k->in[q];
            sb_printf(&b, "           in%d = %%%d %s, offset %lld, strides [", q,
                      (int)st->kin_node[q], proto_dtype_name(in->dtype), (long long)in->off);
            for (int d = 0; d < k->rank; d++)
                sb_printf(&b, d ? ", %lld" : "%lld", (long long)in->strides[d]);
            sb_printf(&b, "]\n");
        }
    }

    sb_printf(&b, "\n== kernels: %d ==\n", (int)fp->nkernels);
    for (int32_t s = 0; s < fp->nsteps; s++) {
        if (fp->steps[s].kind != FUSE_STEP_KERNEL)
            continue;
        /* The helpers every kernel carries (pg_f2i32, kernels/pg_math.h, ...) are the same
         * 200 lines each time: the text shows the kernel's own comment and loop, the reply's
         * `kernels` list has the whole file. */
        const plan_kernel_t *pk = &p->kern[s];
        const char *src = (cuda ? pk->cu_src : pk->src) ? (cuda ? pk->cu_src : pk->src)
                                                       : "(no source)";
        const char *name = cuda ? pk->cu_name : pk->name;
        const char *head_end = strstr(src, " */\n");
        const char *fn = strstr(src, cuda ? "\nextern \"C\" __global__" : "\nvoid pg_k_");
        if (head_end && fn && fn > head_end)
            sb_printf(&b, "-- %s (step %d) --\n%.*s\n/* ... helpers%s (in the reply's kernel "
                      "source) ... */\n%s\n", name, (int)s, (int)(head_end + 3 - src), src,
                      cuda ? "" : " and kernels/pg_math.h", fn + 1);
        else
            sb_printf(&b, "-- %s (step %d) --\n%s\n", name, (int)s, src);
    }
    pg_free(where);
    if (b.failed) {
        pg_free(b.p);
        return NULL;
    }
    return b.p;
}

static int pack_ids(msgpack_packer *pk, const int32_t *ids, int32_t n) {
    int rc = msgpack_pack_array(pk, (size_t)n);
    for (int32_t q = 0; q < n; q++)
        rc |= msgpack_pack_int32(pk, ids[q]);
    return rc;
}

int plan_pack_explain(msgpack_packer *pk, const plan_t *p, const graph_t *g, bool cuda) {
    const fuse_plan_t *fp = &p->fp;
    char at[320];
    int rc = proto_pack_cstr(pk, "graph");
    rc |= msgpack_pack_array(pk, (size_t)g->n);
    for (int32_t i = 0; i < g->n; i++) {
        const gnode_t *n = &g->nodes[i];
        attrs_str(n, at, sizeof(at));
        rc |= msgpack_pack_map(pk, 7);
        rc |= proto_pack_cstr(pk, "index");
        rc |= msgpack_pack_int32(pk, i);
        rc |= proto_pack_cstr(pk, "op");
        rc |= proto_pack_cstr(pk, graph_prim_name(n->op));
        rc |= proto_pack_cstr(pk, "in");
        rc |= pack_ids(pk, n->in, n->nin);
        rc |= proto_pack_cstr(pk, "dtype");
        rc |= proto_pack_cstr(pk, proto_dtype_name(n->dtype));
        rc |= proto_pack_cstr(pk, "shape");
        rc |= msgpack_pack_array(pk, (size_t)n->rank);
        for (int d = 0; d < n->rank; d++)
            rc |= msgpack_pack_int64(pk, n->shape[d]);
        rc |= proto_pack_cstr(pk, "node");
        rc |= msgpack_pack_int32(pk, n->wire);
        rc |= proto_pack_cstr(pk, "attrs");
        rc |= proto_pack_cstr(pk, at);
    }
    rc |= proto_pack_cstr(pk, "groups");
    rc |= msgpack_pack_array(pk, (size_t)fp->nsteps);
    for (int32_t s = 0; s < fp->nsteps; s++) {
        const fuse_step_t *st = &fp->steps[s];
        bool kern = st->kind == FUSE_STEP_KERNEL;
        rc |= msgpack_pack_map(pk, 5);
        rc |= proto_pack_cstr(pk, "kind");
        rc |= proto_pack_cstr(pk, kern ? "kernel" : "interp");
        rc |= proto_pack_cstr(pk, "output");
        rc |= msgpack_pack_int32(pk, st->node);
        rc |= proto_pack_cstr(pk, "nodes");
        if (kern)
            rc |= pack_ids(pk, st->members, st->nmembers);
        else
            rc |= pack_ids(pk, &st->node, 1);
        rc |= proto_pack_cstr(pk, "inputs");
        rc |= pack_ids(pk, st->read, st->nread);
        rc |= proto_pack_cstr(pk, "kernel");
        if (kern)
            rc |= proto_pack_cstr(pk, p->kern[s].name);
        else
            rc |= msgpack_pack_nil(pk);
    }
    rc |= proto_pack_cstr(pk, "kernels");
    rc |= msgpack_pack_array(pk, (size_t)fp->nkernels);
    for (int32_t s = 0; s < fp->nsteps; s++) {
        if (fp->steps[s].kind != FUSE_STEP_KERNEL)
            continue;
        rc |= msgpack_pack_map(pk, 2);
        const plan_kernel_t *k = &p->kern[s];
        const char *src = cuda ? k->cu_src : k->src;
        rc |= proto_pack_cstr(pk, "name");
        rc |= proto_pack_cstr(pk, cuda ? k->cu_name : k->name);
        rc |= proto_pack_cstr(pk, "source");
        rc |= proto_pack_cstr(pk, src ? src : "");
    }
    return rc;
}
