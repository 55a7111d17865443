/*
 * par.c - the reference interpreter's small persistent thread pool and its parallel_for.
 *
 * Starting threads per loop would cost more than most loops, so ref_set_threads() starts n - 1
 * workers once and they sleep on a condition variable between jobs. A job is one loop split into
 * chunks; workers and the calling thread take chunks from an atomic counter until none are left,
 * and the caller waits for the workers to check out before the job's memory goes away.
 *
 * The daemon runs graphs on several compute workers at once, so two evaluations can reach
 * ref__parallel_for together. Only one job uses the pool at a time (`busy`); a loop that finds it
 * taken runs on its own thread. That can never change a result: how a loop is split never does.
 *
 * Cancellation. A daemon worker marks its thread with the flag of the request it runs
 * (ref_set_cancel). A loop started on that thread is then cut into pieces of at most
 * LIM_CANCEL_CHUNK_WORK element-steps (more chunks than the threads need, for a huge loop), and
 * every thread reads the flag, one relaxed atomic load, before it takes a chunk: once the flag
 * is set the loop ends within one chunk per thread, its output left unfinished. The caller
 * (server/run.c) checks the flag after every step and throws such a result away.
 *
 * Placement. A worker that slept is woken on the CPU it last ran on, which may be the very CPU
 * the calling thread now runs on: the two then share one CPU and the loop takes as long as on
 * one thread (measured on a 2-CPU VM: a 4M-element row kernel 1.4 ms after an idle pause
 * against 0.7 ms back to back, while the worker's wake-up itself takes ~20 us). So before waking
 * sleeping workers, the caller keeps them off its own CPU (pthread_setaffinity_np, only when
 * the caller's CPU differs from the last time: a system call per change, not per loop).
 *
 * Resting. After a loop the workers spin for a moment (spin_ns) before they sleep, because the
 * next loop of the same graph usually follows within microseconds. After a request's last loop
 * that spin only holds a CPU: the daemon's reply wakes the client, the scheduler puts it back on
 * the CPU it last ran on, often the one a worker spins on, and the client waits out the spin
 * (measured with `perf sched`, layer_norm 4096x1024: the client ran 60-120 us after the reply,
 * 25-40 us with the hint). So the daemon worker calls ref_rest() when its request is done, and a
 * spinning worker sleeps at once.
 */
#include "ref_impl.h"

#include "../../server/limits.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

static atomic_int pool_threads = 1; /* the caller and its workers, for ref__threads */

/* Chunks per thread. A loop ends when its slowest thread takes its last chunk, so the wait at
 * the end is up to one chunk long. A worker that slept also starts 20-140 us after the caller
 * (measured after an idle pause, 2-CPU VM). With 4 chunks per thread a 16 MiB loop has 2-8 MiB
 * chunks, 100-400 us each, and the threads ended a median ~150 us apart; with 16 they end ~30 us
 * apart (tests/bench/fused.py's kernels). Taking a chunk is one atomic add, so more chunks cost
 * nothing measurable, and small loops are capped at one chunk per item below. */
#define CHUNKS_PER_THREAD 16

static struct {
    pthread_mutex_t busy;          /* held by the one job using the pool, and by ref_set_threads */
    pthread_mutex_t lock;          /* protects the fields below down to `pending` */
    pthread_cond_t wake;           /* workers wait here for a new generation or quit */
    pthread_cond_t done;           /* the caller waits here for pending to reach 0 */
    uint64_t gen;                  /* bumped for each job */
    bool quit;                     /* workers exit when they see it */
    atomic_int pending;            /* workers still inside the current job */
    atomic_uint_fast64_t gen_pub;  /* gen, readable without the lock (for spinning) */
    atomic_uint_fast64_t rest_pub; /* a gen after which no loop follows soon (ref_rest) */
    atomic_uintptr_t poster;       /* the thread that posted gen (the address of its tl_me) */
    atomic_int asleep;             /* workers waiting on `wake` (not spinning) */
    cpu_set_t allowed;             /* the CPUs the process may run on (at ref_set_threads) */
    int avoided;                   /* the CPU the workers were last kept off, -1: none */
    int nworkers;                  /* threads started (the caller makes one more) */
    pthread_t threads[REF_MAX_THREADS];
    /* The current job, written under `lock` before gen is bumped. */
    ref__chunk_fn fn;
    void *ctx;
    uint64_t n;                    /* items */
    uint64_t nchunks;              /* chunks the items are split into */
    const atomic_int *cancel;      /* the caller's cancel flag, or NULL */
    atomic_uint_fast64_t next;     /* the next chunk to take */
} pool = {
    .busy = PTHREAD_MUTEX_INITIALIZER,
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};

/* How long a thread spins before it sleeps on a condition variable (ref__set_spin_ns). */
static _Atomic uint64_t spin_ns = 100000;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* A worker that has finished job `seen`: spins for at most spin_ns while no new job is posted,
 * and stops at once when the job's poster says none follows soon (ref_rest). */
static void spin_for_next_job(uint64_t seen) {
    uint64_t start = now_ns(), limit = atomic_load_explicit(&spin_ns, memory_order_relaxed);
    for (unsigned i = 1; atomic_load_explicit(&pool.gen_pub, memory_order_acquire) == seen; i++) {
        if (atomic_load_explicit(&pool.rest_pub, memory_order_relaxed) == seen)
            return;
        cpu_relax();
        if (i % 256 == 0 && now_ns() - start > limit)
            return;
    }
}

static void spin_while_nonzero(atomic_int *v) {
    uint64_t start = now_ns(), limit = atomic_load_explicit(&spin_ns, memory_order_relaxed);
    for (unsigned i = 1; atomic_load_explicit(v, memory_order_acquire) != 0; i++) {
        cpu_relax();
        if (i % 256 == 0 && now_ns() - start > limit)
            return;
    }
}

/* The cancel flag of the request this thread runs (ref_set_cancel), or NULL. */
static _Thread_local const atomic_int *tl_cancel;

/* Its address tells threads apart: pool.poster is the tl_me of the thread that posted the job. */
static _Thread_local char tl_me;

void ref_set_cancel(const atomic_int *flag) { tl_cancel = flag; }

static inline bool cancelled(const atomic_int *flag) {
    return flag && atomic_load_explicit(flag, memory_order_relaxed) != 0;
}

/* Takes and runs chunks of the current job until none are left, or until it is cancelled. */
static void run_chunks(ref__chunk_fn fn, void *ctx, uint64_t n, uint64_t nchunks,
                       const atomic_int *cancel) {
    uint64_t q = n / nchunks, r = n % nchunks;
    for (;;) {
        if (cancelled(cancel))
            return;
        uint64_t c = atomic_fetch_add(&pool.next, 1);
        if (c >= nchunks)
            return;
        /* Chunk c covers q items plus one more for the first r chunks. */
        uint64_t begin = c * q + (c < r ? c : r);
        uint64_t end = begin + q + (c < r ? 1 : 0);
        fn(ctx, begin, end);
    }
}

/* arg is the generation current when the worker was created: a job posted before the thread
 * first takes the lock still counts this worker in `pending`, so it must not be skipped. */
static void *worker_main(void *arg) {
    uint64_t seen = (uint64_t)(uintptr_t)arg;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        if (pool.gen == seen && !pool.quit) {
            /* A graph's kernels come one after another: wait for the next job spinning for a
             * moment first, since waking a sleeping thread costs tens of microseconds. */
            pthread_mutex_unlock(&pool.lock);
            spin_for_next_job(seen);
            pthread_mutex_lock(&pool.lock);
        }
        atomic_fetch_add(&pool.asleep, 1);
        while (pool.gen == seen && !pool.quit)
            pthread_cond_wait(&pool.wake, &pool.lock);
        atomic_fetch_sub(&pool.asleep, 1);
        if (pool.quit)
            break;
        seen = pool.gen;
        ref__chunk_fn fn = pool.fn;
        void *ctx = pool.ctx;
        uint64_t n = pool.n, nchunks = pool.nchunks;
        const atomic_int *cancel = pool.cancel;
        pthread_mutex_unlock(&pool.lock);
        run_chunks(fn, ctx, n, nchunks, cancel);
        pthread_mutex_lock(&pool.lock);
        if (atomic_fetch_sub(&pool.pending, 1) == 1)
            pthread_cond_signal(&pool.done);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* Stops and joins every worker. Call with `busy` held. */
static void stop_workers(void) {
    pthread_mutex_lock(&pool.lock);
    pool.quit = true;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int k = 0; k < pool.nworkers; k++)
        pthread_join(pool.threads[k], NULL);
    pool.nworkers = 0;
    pool.quit = false;
}

void ref_set_threads(int n) {
    if (n < 1)
        n = 1;
    if (n > REF_MAX_THREADS)
        n = REF_MAX_THREADS;
    ref__matmul_init();
    pthread_mutex_lock(&pool.busy);
    stop_workers();
    if (sched_getaffinity(0, sizeof(pool.allowed), &pool.allowed) != 0)
        CPU_ZERO(&pool.allowed); /* unknown: placement is left to the scheduler */
    pool.avoided = -1;
    /* A worker that cannot be started only makes loops slower, so it is not an error. */
    for (int k = 0; k < n - 1; k++) {
        if (pthread_create(&pool.threads[k], NULL, worker_main, (void *)(uintptr_t)pool.gen) != 0)
            break;
        pool.nworkers++;
    }
    atomic_store(&pool_threads, 1 + pool.nworkers);
    pthread_mutex_unlock(&pool.busy);
}

int ref__threads(void) { return atomic_load(&pool_threads); }

void ref__set_spin_ns(uint64_t ns) { atomic_store(&spin_ns, ns); }

int ref__workers_asleep(void) { return atomic_load(&pool.asleep); }

void ref_rest(void) {
    uint64_t g = atomic_load(&pool.gen_pub);
    /* Only the thread whose loop the workers just ran may end their wait: a hint from another
     * compute worker would send them to sleep between the kernels of a run still going. A
     * stale g (another job posted meanwhile) matches no spinner, so the race is harmless. */
    if (atomic_load(&pool.poster) == (uintptr_t)&tl_me)
        atomic_store(&pool.rest_pub, g);
}

/* Keeps sleeping workers off the calling thread's CPU (see Placement above). Called with `busy`
 * held, so only one thread changes the workers' masks at a time. */
static void keep_off_my_cpu(void) {
    if (atomic_load(&pool.asleep) == 0)
        return; /* spinning workers already run on CPUs of their own */
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu == pool.avoided || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &pool.allowed) ||
        CPU_COUNT(&pool.allowed) < 2)
        return;
    cpu_set_t set = pool.allowed;
    CPU_CLR(cpu, &set);
    for (int k = 0; k < pool.nworkers; k++)
        pthread_setaffinity_np(pool.threads[k], sizeof(set), &set); /* a hint: may fail */
    pool.avoided = cpu;
}

/* Runs fn over [0, n) on the calling thread alone, in `pieces` chunks with a look at the cancel
 * flag before each (one call when pieces < 2). */
static void run_serial(ref__chunk_fn fn, void *ctx, uint64_t n, uint64_t pieces,
                       const atomic_int *cancel) {
    if (pieces < 2) {
        fn(ctx, 0, n);
        return;
    }
    if (pieces > n)
        pieces = n;
    uint64_t q = n / pieces, r = n % pieces;
    for (uint64_t c = 0, begin = 0; c < pieces; c++) {
        if (cancelled(cancel))
            return;
        uint64_t end = begin + q + (c < r ? 1 : 0);
        fn(ctx, begin, end);
        begin = end;
    }
}

void ref__parallel_for(uint64_t n, uint64_t cost, ref__chunk_fn fn, void *ctx) {
    if (n == 0)
        return;
    uint64_t work = cost == 0 ? n : (n > UINT64_MAX / cost ? UINT64_MAX : n * cost);
    /* A cancellable loop is cut into pieces of bounded work, so that it notices the flag. */
    const atomic_int *cancel = tl_cancel;
    uint64_t pieces = cancel ? work / LIM_CANCEL_CHUNK_WORK + 1 : 0;
    if (n < 2 || work < REF_PAR_MIN_WORK || pthread_mutex_trylock(&pool.busy) != 0) {
        run_serial(fn, ctx, n, pieces, cancel);
        return;
    }
    if (pool.nworkers == 0) {
        pthread_mutex_unlock(&pool.busy);
        run_serial(fn, ctx, n, pieces, cancel);
        return;
    }
    uint64_t nchunks = (uint64_t)(pool.nworkers + 1) * CHUNKS_PER_THREAD;
    if (nchunks < pieces)
        nchunks = pieces;
    if (nchunks > n)
        nchunks = n;
    keep_off_my_cpu();
    pthread_mutex_lock(&pool.lock);
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.nchunks = nchunks;
    pool.cancel = cancel;
    atomic_store(&pool.next, 0);
    atomic_store(&pool.pending, pool.nworkers);
    pool.gen++;
    atomic_store(&pool.poster, (uintptr_t)&tl_me);
    atomic_store(&pool.gen_pub, pool.gen);
    pthread_mutex_unlock(&pool.lock);
    pthread_cond_broadcast(&pool.wake); /* after the unlock, as in server/pool.c */

    run_chunks(fn, ctx, n, nchunks, cancel);

    spin_while_nonzero(&pool.pending);
    pthread_mutex_lock(&pool.lock);
    while (atomic_load(&pool.pending) > 0)
        pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.busy);
}
