/*
 * test_client.c - the C client against a real picogradd started by the test.
 *
 * argv[1] is the daemon binary. Each test starts its own daemon on a fresh Unix socket, so tests
 * stay independent, and stops it with SIGTERM, expecting exit status 0.
 */
#include "picograd.h"
#include "task.h"

#include <errno.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

static const char *daemon_path;

typedef struct {
    pid_t pid;
    char dir[64];
    char url[128];
    char sock[96];
} daemon_t;

static void daemon_start(daemon_t *d) {
    snprintf(d->dir, sizeof(d->dir), "/tmp/pgtest-XXXXXX");
    ASSERT(mkdtemp(d->dir) != NULL);
    snprintf(d->sock, sizeof(d->sock), "%s/d.sock", d->dir);
    snprintf(d->url, sizeof(d->url), "unix://%s", d->sock);
    d->pid = fork();
    ASSERT(d->pid >= 0);
    if (d->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test must not leave its daemon behind */
        execl(daemon_path, daemon_path, "--listen", d->url, "--log-level", "warn", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) { /* up to 5 s for the socket to appear */
        struct stat st;
        if (stat(d->sock, &st) == 0)
            return;
        usleep(10000);
    }
    ASSERT(!"daemon did not start");
}

static int daemon_stop(daemon_t *d, int sig) {
    kill(d->pid, sig);
    int st = 0;
    waitpid(d->pid, &st, 0);
    rmdir(d->dir);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

TEST_IMPL(put_get_every_dtype) {
    daemon_t d;
    daemon_start(&d);
    pg_error_t err;
    pg_conn_t *c = pg_connect(d.url, &err);
    ASSERT(c != NULL);
    ASSERT_EQ(pg_ping(c), 0);
    srand(7);
    for (int dt = 0; dt < PG_DTYPE_COUNT; dt++) {
        for (int rank = 0; rank <= PG_MAX_RANK; rank++) {
            int64_t shape[PG_MAX_RANK];
            uint64_t n = 1;
            for (int i = 0; i < rank; i++) {
                shape[i] = 1 + rand() % (rank > 4 ? 2 : 5);
                n *= (uint64_t)shape[i];
            }
            size_t nb = n * pg_dtype_size((pg_dtype_t)dt);
            uint8_t *x = malloc(nb);
            for (size_t i = 0; i < nb; i++)
                x[i] = dt == PG_BOOL ? (uint8_t)(rand() & 1) : (uint8_t)rand();
            uint64_t h;
            ASSERT_EQ(pg_put(c, (pg_dtype_t)dt, rank, shape, x, &h), 0);
            pg_tensor_t t;
            ASSERT_EQ(pg_get(c, h, &t), 0);
            ASSERT_EQ(t.dtype, dt);
            ASSERT_EQ(t.rank, rank);
            ASSERT_EQ(t.nbytes, nb);
            ASSERT(((uintptr_t)t.data & 63) == 0);
            ASSERT(memcmp(t.data, x, nb) == 0);
            for (int i = 0; i < rank; i++)
                ASSERT_EQ(t.shape[i], shape[i]);
            pg_tensor_release(&t);
            ASSERT_EQ(pg_free(c, h), 0);
            free(x);
        }
    }
    /* A zero-size tensor. */
    uint64_t h;
    pg_tensor_t t;
    ASSERT_EQ(pg_put(c, PG_INT64, 3, (int64_t[]){3, 0, 2}, NULL, &h), 0);
    ASSERT_EQ(pg_get(c, h, &t), 0);
    ASSERT_EQ(t.nbytes, 0);
    ASSERT(t.data == NULL);
    pg_tensor_release(&t);
    pg_close(c);
    ASSERT_EQ(daemon_stop(&d, SIGTERM), 0);
    return 0;
}

TEST_IMPL(errors_and_stats) {
    daemon_t d;
    daemon_start(&d);
    pg_conn_t *c = pg_connect(d.url, NULL);
    pg_conn_t *c2 = pg_connect(d.url, NULL);
    ASSERT(c && c2);
    pg_stats_t s0, s1;
    ASSERT_EQ(pg_stats(c, &s0), 0);
    ASSERT_EQ(s0.sessions, 2);
    float x[4] = {1.5f, -2, 3, 4};
    uint64_t h;
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 1, (int64_t[]){4}, x, &h), 0);
    ASSERT_EQ(pg_stats(c, &s1), 0);
    ASSERT_EQ(s1.tensors, s0.tensors + 1);
    ASSERT_EQ(s1.session_tensors, 1);
    ASSERT(s1.session_bytes >= sizeof(x));
    /* Another session's handle is unknown there. */
    pg_tensor_t t;
    ASSERT_EQ(pg_get(c2, h, &t), -PG_EUNKNOWN_HANDLE);
    ASSERT_EQ(pg_last_error(c2)->code, PG_EUNKNOWN_HANDLE);
    ASSERT(strstr(pg_strerror(c2), "unknown_handle: handle") == pg_strerror(c2));
    ASSERT_EQ(pg_free(c, h), 0);
    ASSERT_EQ(pg_free(c, h), -PG_EUNKNOWN_HANDLE);
    /* Client-side checks. */
    ASSERT_EQ(pg_put(c, (pg_dtype_t)99, 0, NULL, x, &h), -PG_EBAD_DTYPE);
    ASSERT_EQ(pg_put(c, PG_FLOAT32, 9, (int64_t[9]){1}, x, &h), -PG_EBAD_SHAPE);
    ASSERT_EQ(pg_ping(c), 0); /* still usable */
    pg_close(c2);
    pg_close(c);
    ASSERT_EQ(daemon_stop(&d, SIGTERM), 0);
    return 0;
}

TEST_IMPL(dead_daemon_then_reconnect) {
    daemon_t d;
    daemon_start(&d);
    pg_conn_t *c = pg_connect(d.url, NULL);
    ASSERT(c != NULL);
    ASSERT_EQ(daemon_stop(&d, SIGKILL), 128 + SIGKILL);
    /* The next calls report the lost daemon; they never raise SIGPIPE or abort. */
    ASSERT_EQ(pg_ping(c), -PG_EDISCONNECTED);
    ASSERT_EQ(pg_ping(c), -PG_EDISCONNECTED);
    /* A new daemon on the same path (the stale socket file is replaced); reconnect works. */
    char url[128];
    snprintf(url, sizeof(url), "%s", d.url);
    ASSERT(mkdir(d.dir, 0700) == 0 || errno == EEXIST);
    d.pid = fork();
    if (d.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(daemon_path, daemon_path, "--listen", url, "--log-level", "error", (char *)NULL);
        _exit(127);
    }
    int rc = -1;
    for (int i = 0; i < 500 && rc != 0; i++) {
        usleep(10000);
        rc = pg_reconnect(c);
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(pg_ping(c), 0);
    pg_close(c);
    ASSERT_EQ(daemon_stop(&d, SIGTERM), 0);
    return 0;
}

#define TEST_LIST(X)                                                                               \
    X(put_get_every_dtype)                                                                         \
    X(errors_and_stats)                                                                            \
    X(dead_daemon_then_reconnect)

int main(int argc, char **argv) {
    static const task_entry_t tests[] = {TEST_LIST(TASK_ENTRY)};
    signal(SIGPIPE, SIG_DFL); /* prove the client never needs SIGPIPE ignored */
    if (argc < 2) {
        fprintf(stderr, "usage: %s PICOGRADD [TEST]\n", argv[0]);
        return 2;
    }
    daemon_path = argv[1];
    return task_run_all(tests, (int)(sizeof(tests) / sizeof(tests[0])), argc - 1, argv + 1);
}
