/*
 * load.c - picogradd under load: requests/s and latency percentiles at 1, 8 and 64 connections.
 *
 * Each cell of the table is one workload at one number of connections: that many threads, each
 * with its own connection (so its own session) and blocking calls, send requests back to back
 * for a fixed time (--seconds, default 3) and time every one. Two workloads:
 *
 *   ping    the smallest round trip: what the event loop and the transport cost;
 *   cached  a `run` of a 10-node graph (an input of 4 float32 and a chain of 9 adds, result
 *           inline), the same request every time with the thread's own handle: after the first,
 *           the daemon's prepared-run and plan caches answer it without lowering or planning, so
 *           this is the cost of a small cached graph: a worker hand-off, the run and its reply.
 *
 * Every thread connects and warms up (a few requests, and for `cached` a check that the result
 * is 10 x its input) before a barrier; then all start together, and each stops sending at the
 * deadline. requests/s = requests completed / (last completion - start); p50 and p99 are over
 * every request of the cell. The threads and the daemon share the machine's cores, so on a small
 * machine more connections mostly measure how the cores are shared.
 *
 *   build/bin/pg_bench_load --spawn build/bin/picogradd     # its own daemon on a temp socket
 *   build/bin/pg_bench_load unix:///run/user/1000/picogradd.sock
 *   options (after the first argument): --seconds 3  --conns 1,8,64  --workloads ping,cached
 *
 * Prints a markdown table and a machine line. Exits non-zero when a request fails or a result is
 * wrong, or when a spawned daemon does not exit with status 0 on SIGTERM.
 */
#include <picograd.h>
#include "spawn.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024     /* connections in one cell */
#define MAX_CELLS 16       /* entries of --conns */
#define WARMUP_REQUESTS 20 /* per thread, before the timed window */
#define CHAIN_ADDS 9       /* the cached graph: an input and 9 adds, 10 nodes */

typedef enum { WL_PING, WL_CACHED, WL_COUNT } workload_t;
static const char *const wl_names[WL_COUNT] = {"ping", "cached"};

/* What one cell's threads share. */
typedef struct {
    const char *url;
    workload_t wl;
    pthread_barrier_t ready; /* every thread connected and warmed up, and the main thread */
    pthread_barrier_t go;    /* start and deadline are set */
    double start, deadline;  /* monotonic seconds, written before `go` */
    atomic_int failed;       /* a thread failed: the cell is reported as an error */
} cell_t;

/* One thread of a cell. */
typedef struct {
    cell_t *cell;
    pthread_t tid;
    double *lat;    /* latency of each timed request, seconds (owned, malloc) */
    size_t n, cap;
    double end;     /* when its last timed request completed */
} worker_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile of sorted v[0..n) (nearest rank). */
static double quantile(const double *v, size_t n, double q) {
    size_t k = (size_t)(q * (double)n);
    return v[k < n ? k : n - 1];
}

/* Appends one latency; returns 0 or -1 when memory runs out. */
static int record(worker_t *w, double secs) {
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 4096;
        double *p = realloc(w->lat, cap * sizeof(*p));
        if (!p)
            return -1;
        w->lat = p;
        w->cap = cap;
    }
    w->lat[w->n++] = secs;
    return 0;
}

/* One request of the cell's workload. For `cached`, checks that the run returned 10 x the input
 * (exact: small integers in float32). Returns 0 or a negative code. */
static int one_request(pg_conn_t *c, workload_t wl, const pg_graph_t *g, int out_node,
                       const float *x, int check) {
    if (wl == WL_PING)
        return pg_ping(c);
    pg_output_t out = {out_node, 0};
    pg_result_t res;
    int rc = pg_run(c, g, &out, 1, &res);
    if (rc != 0)
        return rc;
    if (check) {
        const float *y = res.tensor.data;
        for (int i = 0; i < 4; i++)
            if (res.tensor.numel != 4 || y[i] != (float)(CHAIN_ADDS + 1) * x[i]) {
                fprintf(stderr, "cached run: element %d is %g, not %g\n", i, (double)y[i],
                        (double)((float)(CHAIN_ADDS + 1) * x[i]));
                rc = -PG_EINTERNAL;
                break;
            }
    }
    pg_tensor_release(&res.tensor);
    return rc;
}

/* A thread of a cell: connect, build the graph, warm up, wait for the others, then send
 * requests until the deadline. Always reaches both barriers, even after a failure. */
static void *worker_main(void *arg) {
    worker_t *w = arg;
    cell_t *cell = w->cell;
    pg_error_t err;
    pg_graph_t *g = NULL;
    int out_node = -1, rc = 0;
    const float x[4] = {1, -2, 3, 0.5f};
    pg_conn_t *c = pg_connect(cell->url, &err);
    if (!c) {
        fprintf(stderr, "connect %s: %s: %s\n", cell->url, pg_error_name(err.code), err.message);
        rc = -1;
        goto out_wait;
    }
    if (cell->wl == WL_CACHED) {
        uint64_t h;
        int64_t shape[1] = {4};
        if ((rc = pg_put(c, PG_FLOAT32, 1, shape, x, &h)) != 0)
            goto out_report;
        g = pg_graph_new();
        if (!g) {
            rc = -PG_EINTERNAL;
            goto out_report;
        }
        int in = pg_graph_input(g, h);
        out_node = in;
        for (int k = 0; k < CHAIN_ADDS && out_node >= 0; k++)
            out_node = pg_graph_op(g, "add", (int[]){out_node, in}, 2, NULL, 0);
        if (out_node < 0) {
            fprintf(stderr, "graph: %s\n", pg_graph_last_error(g)->message);
            rc = out_node;
            goto out_wait;
        }
    }
    for (int k = 0; k < WARMUP_REQUESTS && rc == 0; k++)
        rc = one_request(c, cell->wl, g, out_node, x, 1);
out_report:
    if (rc != 0 && c)
        fprintf(stderr, "%s warm-up: %s\n", wl_names[cell->wl], pg_strerror(c));
out_wait:
    if (rc != 0)
        atomic_store(&cell->failed, 1);
    pthread_barrier_wait(&cell->ready);
    pthread_barrier_wait(&cell->go);
    w->end = cell->start;
    if (rc != 0 || atomic_load(&cell->failed))
        goto out_close;
    for (;;) {
        double t0 = now_s();
        if (t0 >= cell->deadline)
            break;
        if ((rc = one_request(c, cell->wl, g, out_node, x, 0)) != 0) {
            fprintf(stderr, "%s: %s\n", wl_names[cell->wl], pg_strerror(c));
            atomic_store(&cell->failed, 1);
            break;
        }
        w->end = now_s();
        if (record(w, w->end - t0) != 0) {
            fprintf(stderr, "out of memory for latencies\n");
            atomic_store(&cell->failed, 1);
            break;
        }
    }
out_close:
    pg_graph_free(g);
    pg_close(c);
    return NULL;
}

typedef struct {
    workload_t wl;
    int conns;
    double rps, p50, p99; /* requests/s; seconds */
    size_t requests;
} row_t;

/* Runs one cell. Returns 0 and fills row, or -1. */
static int run_cell(const char *url, workload_t wl, int conns, double seconds, row_t *row) {
    cell_t cell = {.url = url, .wl = wl};
    worker_t *w = calloc((size_t)conns, sizeof(*w));
    int rc = -1, started = 0;
    if (!w)
        return -1;
    atomic_init(&cell.failed, 0);
    pthread_barrier_init(&cell.ready, NULL, (unsigned)conns + 1);
    pthread_barrier_init(&cell.go, NULL, (unsigned)conns + 1);
    for (; started < conns; started++) {
        w[started].cell = &cell;
        if (pthread_create(&w[started].tid, NULL, worker_main, &w[started]) != 0)
            break;
    }
    if (started < conns) {
        /* The barriers count on every thread: without them nobody can pass, so give up. */
        fprintf(stderr, "cannot start %d threads (started %d)\n", conns, started);
        exit(1);
    }
    pthread_barrier_wait(&cell.ready);
    cell.start = now_s();
    cell.deadline = cell.start + seconds;
    pthread_barrier_wait(&cell.go);
    double end = cell.start;
    size_t total = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(w[i].tid, NULL);
        total += w[i].n;
        if (w[i].end > end)
            end = w[i].end;
    }
    if (atomic_load(&cell.failed) || total == 0)
        goto out_free;
    double *all = malloc(total * sizeof(*all));
    if (!all)
        goto out_free;
    size_t k = 0;
    for (int i = 0; i < conns; i++) {
        memcpy(all + k, w[i].lat, w[i].n * sizeof(*all));
        k += w[i].n;
    }
    qsort(all, total, sizeof(*all), cmp_double);
    *row = (row_t){.wl = wl, .conns = conns, .requests = total,
                   .rps = (double)total / (end - cell.start), .p50 = quantile(all, total, 0.50),
                   .p99 = quantile(all, total, 0.99)};
    free(all);
    rc = 0;
out_free:
    for (int i = 0; i < conns; i++)
        free(w[i].lat);
    free(w);
    pthread_barrier_destroy(&cell.ready);
    pthread_barrier_destroy(&cell.go);
    return rc;
}

static void cpu_model(char *buf, size_t cap) {
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            colon += 2;
            colon[strcspn(colon, "\n")] = '\0';
            snprintf(buf, cap, "%s", colon);
            break;
        }
    }
    fclose(f);
}

static int usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s URL | --spawn PICOGRADD  [--seconds S] [--conns N,N,...]\n"
            "          [--workloads ping,cached]\n"
            "  requests/s and p50/p99 latency of ping and of a cached 10-node run\n",
            argv0);
    return 2;
}

/* Parses a comma-separated list of ints in [1, MAX_CONNS]; returns how many, or -1. */
static int parse_conns(char *s, int *out) {
    int n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > MAX_CONNS || n == MAX_CELLS || (*end && *end != ','))
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n ? n : -1;
}

int main(int argc, char **argv) {
    int conns[MAX_CELLS] = {1, 8, 64}, nconns = 3;
    bool want[WL_COUNT] = {true, true};
    double seconds = 3.0;
    const char *url = NULL, *spawn = NULL;
    if (argc < 2)
        return usage(argv[0]);
    int i = 1;
    if (strcmp(argv[i], "--spawn") == 0) {
        if (argc < 3)
            return usage(argv[0]);
        spawn = argv[2];
        i = 3;
    } else {
        url = argv[1];
        i = 2;
    }
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = atof(argv[++i]);
            if (!(seconds > 0 && seconds <= 3600))
                return usage(argv[0]);
        } else if (strcmp(argv[i], "--conns") == 0 && i + 1 < argc) {
            if ((nconns = parse_conns(argv[++i], conns)) < 0)
                return usage(argv[0]);
        } else if (strcmp(argv[i], "--workloads") == 0 && i + 1 < argc) {
            const char *s = argv[++i];
            want[WL_PING] = strstr(s, "ping") != NULL;
            want[WL_CACHED] = strstr(s, "cached") != NULL;
            if (!want[WL_PING] && !want[WL_CACHED])
                return usage(argv[0]);
        } else {
            return usage(argv[0]);
        }
    }
    /* A daemon that vanishes mid-run must be an error code, not a SIGPIPE (the client library
     * already sends with MSG_NOSIGNAL; this covers everything else). */
    signal(SIGPIPE, SIG_IGN);

    spawned_t d = {0};
    if (spawn) {
        if (spawn_daemon(&d, spawn, "pgload") != 0)
            return 1;
        url = d.url;
    }
    int status = 0;
    row_t rows[WL_COUNT * MAX_CELLS];
    int nrows = 0;
    for (int wl = 0; wl < WL_COUNT; wl++) {
        if (!want[wl])
            continue;
        for (int k = 0; k < nconns; k++) {
            fprintf(stderr, "%s, %d connection(s) ...\n", wl_names[wl], conns[k]);
            if (run_cell(url, (workload_t)wl, conns[k], seconds, &rows[nrows]) != 0) {
                fprintf(stderr, "%s at %d connection(s) failed\n", wl_names[wl], conns[k]);
                status = 1;
                continue;
            }
            nrows++;
        }
    }

    char cpu[256];
    cpu_model(cpu, sizeof(cpu));
    printf("| workload | connections | requests/s | p50 µs | p99 µs | requests |\n");
    printf("|---|---:|---:|---:|---:|---:|\n");
    for (int r = 0; r < nrows; r++)
        printf("| %s | %d | %.0f | %.1f | %.1f | %zu |\n", wl_names[rows[r].wl], rows[r].conns,
               rows[r].rps, 1e6 * rows[r].p50, 1e6 * rows[r].p99, rows[r].requests);
    printf("\nMachine: %s, %ld cores online; %.1f s per cell, one blocking thread per "
           "connection, client and daemon on the same machine.\n",
           cpu, sysconf(_SC_NPROCESSORS_ONLN), seconds);
    if (spawn) {
        int st = stop_daemon(&d);
        if (st != 0) {
            fprintf(stderr, "picogradd exited with status %d on SIGTERM\n", st);
            status = 1;
        }
    }
    return status;
}
