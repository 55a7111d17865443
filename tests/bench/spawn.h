/*
 * spawn.h - the benchmarks' own picogradd: started on a fresh Unix socket, stopped with SIGTERM.
 *
 * Shared by the C benchmarks (matmul.c, load.c) so that each times a daemon it started itself,
 * with nothing else connected, and checks that it exits 0 afterwards.
 */
#ifndef PG_BENCH_SPAWN_H
#define PG_BENCH_SPAWN_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    pid_t pid;
    char dir[64];   /* the temporary folder holding the socket */
    char sock[96];  /* the socket path */
    char url[128];  /* unix://sock */
} spawned_t;

/* Starts path on a fresh Unix socket under /tmp/<prefix>-XXXXXX and waits (up to 10 s) for the
 * socket to appear. Returns 0 or -1 (after printing why). */
static int spawn_daemon(spawned_t *d, const char *path, const char *prefix) {
    snprintf(d->dir, sizeof(d->dir), "/tmp/%s-XXXXXX", prefix);
    if (!mkdtemp(d->dir)) {
        perror("mkdtemp");
        return -1;
    }
    snprintf(d->sock, sizeof(d->sock), "%s/d.sock", d->dir);
    snprintf(d->url, sizeof(d->url), "unix://%s", d->sock);
    d->pid = fork();
    if (d->pid < 0) {
        perror("fork");
        rmdir(d->dir);
        return -1;
    }
    if (d->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the benchmark */
        execl(path, path, "--listen", d->url, "--log-level", "warn", (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    for (int i = 0; i < 1000; i++) {
        struct stat st;
        if (stat(d->sock, &st) == 0)
            return 0;
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            fprintf(stderr, "%s exited before listening\n", path);
            d->pid = 0;
            rmdir(d->dir);
            return -1;
        }
        usleep(10000);
    }
    fprintf(stderr, "%s did not create %s within 10 s\n", path, d->sock);
    return -1;
}

/* Sends SIGTERM and returns the daemon's exit status (128 + signal when killed). */
static int stop_daemon(spawned_t *d) {
    if (d->pid <= 0)
        return 0;
    kill(d->pid, SIGTERM);
    int st = 0;
    waitpid(d->pid, &st, 0);
    unlink(d->sock);
    rmdir(d->dir);
    d->pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

#endif /* PG_BENCH_SPAWN_H */
