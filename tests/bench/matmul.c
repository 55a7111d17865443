/*
 * matmul.c - how much of a direct BLAS call a picogradd matmul keeps.
 *
 * For square float32 sizes 256 to 4096 it puts A and B into the daemon once (they stay resident)
 * and times a `run` of the one-node graph A @ B with keep=true: the result stays in the daemon as
 * a new handle (freed after each rep, untimed), so no tensor bytes cross the socket and the time
 * is the daemon's matmul plus one small round trip. Beside it, in the same process and the same
 * run, it times cblas_sgemm on the same A and B into a reused C buffer: the ceiling for the
 * daemon's own BLAS call. Reps interleave (ABBA order, so neither side always runs right after
 * the other), each side's time is the median of its reps, and reps go on until --seconds
 * (default 1) have passed for the size, at least 3 of each. The first rep of each size is a
 * warm-up whose result is fetched with `get` and compared with cblas's.
 *
 *   build/bin/pg_bench_matmul --spawn build/bin/picogradd     # a daemon on a temporary socket
 *   build/bin/pg_bench_matmul unix:///run/user/1000/picogradd.sock
 *   options (after the first argument): --sizes 256,1024  --seconds 2
 *
 * Prints a markdown table (ratio = cblas time / picograd time, so 1.00 is parity and higher is
 * better for picograd) and a machine line. Exits non-zero when a run fails, a result differs from
 * cblas's, or a spawned daemon does not exit with status 0 on SIGTERM.
 */
#include <picograd.h>
#include "spawn.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZES 16
#define MAX_REPS 1000
#define HUGE_MIN (4u << 20)  /* as server/mem.c: blocks this large go on huge pages */
#define HUGE_PAGE (2u << 20)

/* A daemon this program started (--spawn), or pid 0. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(v[0]), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/*
 * Allocates a matrix the way picogradd allocates tensors (server/mem.c): blocks of 4 MiB and more
 * 2 MiB aligned and advised onto transparent huge pages, smaller ones 64-byte aligned, so both
 * sides run on the same kind of pages (on a host where TLB misses cost, 4 KiB pages would handicap
 * the direct side only). Free with free().
 */
static float *matrix_alloc(size_t bytes) {
    size_t align = bytes >= HUGE_MIN ? HUGE_PAGE : 64;
    void *p = NULL;
    if (posix_memalign(&p, align, bytes) != 0)
        return NULL;
    if (align == HUGE_PAGE)
        madvise(p, bytes & ~(size_t)(HUGE_PAGE - 1), MADV_HUGEPAGE); /* a hint: may fail */
    return p;
}

/* Fills x with uniform values in [-1, 1) from a xorshift64* stream. */
static void fill_random(float *x, size_t n, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        uint64_t r = s * 0x2545F4914F6CDD1Dull;
        x[i] = (float)((double)(r >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
    }
}

static void cpu_model(char *buf, size_t cap) {
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *p = strchr(line, ':');
            if (p) {
                p += 1 + (p[1] == ' ');
                p[strcspn(p, "\n")] = '\0';
                snprintf(buf, cap, "%s", p);
            }
            break;
        }
    }
    fclose(f);
}

/* One size's medians. */
typedef struct {
    int n;          /* the matrices are n x n */
    int reps;       /* timed reps per side */
    double pg_s;    /* median seconds of a picograd run */
    double blas_s;  /* median seconds of cblas_sgemm */
    double maxerr;  /* warm-up check: max |picograd - cblas| / max |cblas| */
} row_t;

static double time_blas(int n, const float *a, const float *b, float *cbuf) {
    double t0 = now_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, cbuf,
                n);
    return now_s() - t0;
}

/* Times one run of g (output node 2, kept) and frees the new handle outside the timing. */
static int time_run(pg_conn_t *c, const pg_graph_t *g, double *secs, uint64_t *keep_handle) {
    pg_output_t out = {.node = 2, .keep = 1};
    pg_result_t res;
    double t0 = now_s();
    int rc = pg_run(c, g, &out, 1, &res);
    *secs = now_s() - t0;
    if (rc) {
        fprintf(stderr, "run: %s\n", pg_strerror(c));
        return rc;
    }
    if (keep_handle) {
        *keep_handle = res.handle;
        return 0;
    }
    return pg_free(c, res.handle);
}

/* Measures one size; returns 0 or a negative code (message printed). */
static int bench_size(pg_conn_t *c, int n, double seconds, row_t *row) {
    size_t count = (size_t)n * (size_t)n, bytes = count * sizeof(float);
    int rc = -PG_EOUT_OF_MEMORY;
    float *a = matrix_alloc(bytes), *b = matrix_alloc(bytes), *cbuf = matrix_alloc(bytes);
    uint64_t ha = 0, hb = 0;
    pg_graph_t *g = pg_graph_new();
    if (!a || !b || !cbuf || !g) {
        fprintf(stderr, "n=%d: out of memory\n", n);
        goto out_free;
    }
    fill_random(a, count, 2 * (uint64_t)n);
    fill_random(b, count, 2 * (uint64_t)n + 1);
    int64_t shape[2] = {n, n};
    if ((rc = pg_put(c, PG_FLOAT32, 2, shape, a, &ha)) != 0 ||
        (rc = pg_put(c, PG_FLOAT32, 2, shape, b, &hb)) != 0) {
        fprintf(stderr, "n=%d: put: %s\n", n, pg_strerror(c));
        goto out_free;
    }
    int ia = pg_graph_input(g, ha), ib = pg_graph_input(g, hb);
    if ((rc = pg_graph_op(g, "matmul", (int[]){ia, ib}, 2, NULL, 0)) != 2) {
        fprintf(stderr, "n=%d: graph: %s\n", n, pg_graph_last_error(g)->message);
        rc = rc < 0 ? rc : -PG_EINTERNAL;
        goto out_free;
    }

    /* Warm-up, one of each, and the check: fetch the kept result and compare with cblas. */
    double t_pg;
    time_blas(n, a, b, cbuf);
    uint64_t hc;
    if ((rc = time_run(c, g, &t_pg, &hc)) != 0)
        goto out_free;
    pg_tensor_t t;
    if ((rc = pg_get(c, hc, &t)) != 0) {
        fprintf(stderr, "n=%d: get: %s\n", n, pg_strerror(c));
        goto out_free;
    }
    double maxdiff = 0, maxabs = 0;
    if (t.dtype != PG_FLOAT32 || t.rank != 2 || t.shape[0] != n || t.shape[1] != n) {
        maxdiff = INFINITY;
    } else {
        const float *y = t.data;
        for (size_t i = 0; i < count; i++) {
            double d = fabs((double)y[i] - (double)cbuf[i]);
            maxdiff = d > maxdiff || isnan(d) ? d : maxdiff;
            maxabs = fabs((double)cbuf[i]) > maxabs ? fabs((double)cbuf[i]) : maxabs;
        }
    }
    pg_tensor_release(&t);
    if ((rc = pg_free(c, hc)) != 0)
        goto out_free;
    row->maxerr = maxabs > 0 ? maxdiff / maxabs : maxdiff;

    /* Reps until `seconds` have passed (at least 3, at most MAX_REPS). */
    static double tp[MAX_REPS], tb[MAX_REPS];
    int reps = 0;
    double start = now_s();
    for (int r = 0; r < MAX_REPS && (r < 3 || now_s() - start < seconds); r++, reps++) {
        if (r % 2 == 0) {
            if ((rc = time_run(c, g, &tp[r], NULL)) != 0)
                goto out_free;
            tb[r] = time_blas(n, a, b, cbuf);
        } else {
            tb[r] = time_blas(n, a, b, cbuf);
            if ((rc = time_run(c, g, &tp[r], NULL)) != 0)
                goto out_free;
        }
    }
    row->n = n;
    row->reps = reps;
    row->pg_s = median(tp, reps);
    row->blas_s = median(tb, reps);
    rc = 0;
out_free:
    pg_graph_free(g);
    if (hb)
        pg_free(c, hb);
    if (ha)
        pg_free(c, ha);
    free(cbuf);
    free(b);
    free(a);
    return rc;
}

static int usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s URL | --spawn PICOGRADD  [--sizes N,N,...] [--seconds S]\n"
            "  times picogradd's matmul (run, keep=true) against in-process cblas_sgemm\n",
            argv0);
    return 2;
}

int main(int argc, char **argv) {
    int sizes[MAX_SIZES] = {256, 512, 1024, 2048, 4096}, nsizes = 5;
    double seconds = 1.0;
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
        if (strcmp(argv[i], "--sizes") == 0 && i + 1 < argc) {
            nsizes = 0;
            for (char *p = argv[++i]; *p && nsizes < MAX_SIZES;) {
                char *end;
                long v = strtol(p, &end, 10);
                if (end == p || v < 1 || v > 32768)
                    return usage(argv[0]);
                sizes[nsizes++] = (int)v;
                p = *end == ',' ? end + 1 : end;
            }
        } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else {
            return usage(argv[0]);
        }
    }

    spawned_t d = {0};
    if (spawn) {
        if (spawn_daemon(&d, spawn, "pgbench") != 0)
            return 1;
        url = d.url;
    }
    int status = 0;
    pg_error_t err;
    pg_conn_t *c = pg_connect(url, &err);
    if (!c) {
        fprintf(stderr, "connect %s: %s: %s\n", url, pg_error_name(err.code), err.message);
        stop_daemon(&d);
        return 1;
    }

    row_t rows[MAX_SIZES];
    int nrows = 0;
    for (int s = 0; s < nsizes; s++) {
        fprintf(stderr, "n=%d ...\n", sizes[s]);
        if (bench_size(c, sizes[s], seconds, &rows[nrows]) != 0) {
            status = 1;
            continue;
        }
        if (!(rows[nrows].maxerr <= 1e-4)) {
            fprintf(stderr, "n=%d: picograd's result differs from cblas's: max error %.3g of the "
                    "largest value\n", sizes[s], rows[nrows].maxerr);
            status = 1;
        }
        nrows++;
    }
    pg_close(c);

    char cpu[256];
    cpu_model(cpu, sizeof(cpu));
    printf("| size | picograd ms | cblas ms | GFLOP/s picograd | GFLOP/s cblas | ratio |\n");
    printf("|---:|---:|---:|---:|---:|---:|\n");
    for (int r = 0; r < nrows; r++) {
        double flop = 2.0 * rows[r].n * (double)rows[r].n * rows[r].n;
        printf("| %d | %.3f | %.3f | %.1f | %.1f | %.2f |\n", rows[r].n, 1e3 * rows[r].pg_s,
               1e3 * rows[r].blas_s, flop / rows[r].pg_s / 1e9, flop / rows[r].blas_s / 1e9,
               rows[r].blas_s / rows[r].pg_s);
    }
    printf("\nMachine: %s, %ld cores online; %s; OpenBLAS threads in this process: %d.\n", cpu,
           sysconf(_SC_NPROCESSORS_ONLN), openblas_get_config(), openblas_get_num_threads());
    printf("Reps (median of):");
    for (int r = 0; r < nrows; r++)
        printf(" %d: %d%s", rows[r].n, rows[r].reps, r + 1 < nrows ? "," : "");
    printf(". Warm-up check, max |picograd - cblas| / max |cblas|:");
    for (int r = 0; r < nrows; r++)
        printf(" %.1e%s", rows[r].maxerr, r + 1 < nrows ? "," : ".\n");
    if (nrows == 0)
        printf("\n");
    if (spawn) {
        int st = stop_daemon(&d);
        if (st != 0) {
            fprintf(stderr, "picogradd exited with status %d on SIGTERM\n", st);
            status = 1;
        }
    }
    return status;
}
