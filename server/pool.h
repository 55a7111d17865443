/*
 * pool.h - picogradd's compute workers.
 *
 * The loop thread only moves bytes; anything that computes runs here. A job is handed to the
 * first free worker; when it is done, the pool wakes the loop (uv_async_send) and calls the
 * completion callback there, on the loop thread, so completions never race with the loop.
 * libuv's own threadpool is not used: it is shared with file-system work and sized by an
 * environment variable, while this one is sized by --threads.
 */
#ifndef PG_POOL_H
#define PG_POOL_H

#include <pthread.h>
#include <stdbool.h>
#include <uv.h>

typedef struct pool_job {
    struct pool_job *next;               /* queue link, owned by the pool while queued */
    void (*run)(struct pool_job *job);   /* runs on a worker */
} pool_job_t;

typedef struct {
    uv_async_t async;                    /* wakes the loop when jobs complete */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pool_job_t *todo_head, *todo_tail;   /* waiting for a worker */
    pool_job_t *done_head, *done_tail;   /* finished, waiting for the loop */
    void (*complete)(pool_job_t *job);   /* called on the loop thread */
    pthread_t *threads;
    int nthreads;
    bool stop;
} pool_t;

/* Starts n workers. complete is called on the loop thread for every finished job.
 * Returns 0 or a negative errno. */
int pool_start(pool_t *p, uv_loop_t *loop, int n, void (*complete)(pool_job_t *job));
/* Queues a job (borrowed until complete() is called for it). Thread-safe. */
void pool_submit(pool_t *p, pool_job_t *job);
/* Stops and joins the workers and closes the async handle. Call when no job is pending. */
void pool_stop(pool_t *p);

#endif /* PG_POOL_H */
