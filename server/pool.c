/*
 * pool.c - a fixed set of worker threads fed from one FIFO.
 *
 * Fairness between sessions comes from the connection side: a connection has at most one job in
 * the pool at a time (its later requests wait in its own queue, conn.c), and submits the next
 * one only when the previous one is answered, at the FIFO's tail. So the FIFO holds at most one
 * job per session and serves sessions round-robin: one session's queue of fifty heavy runs
 * delays another session's request by at most one heavy run per worker, never by fifty
 * (tests/integration/test_limits.py, test_heavy_queue_does_not_starve_other_sessions). What it
 * does not do is weigh jobs: a session of heavy runs gets as many turns as one of light runs,
 * and so more of the workers' time; --request-timeout bounds how long one turn may last.
 */
#include "pool.h"

#include "mem.h"

static void *pool_worker(void *arg) {
    pool_t *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->todo_head)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->stop)
            break;
        pool_job_t *job = p->todo_head;
        p->todo_head = job->next;
        if (!p->todo_head)
            p->todo_tail = NULL;
        pthread_mutex_unlock(&p->mu);

        job->run(job);

        pthread_mutex_lock(&p->mu);
        job->next = NULL;
        if (p->done_tail)
            p->done_tail->next = job;
        else
            p->done_head = job;
        p->done_tail = job;
        uv_async_send(&p->async);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void pool_on_async(uv_async_t *a) {
    pool_t *p = (pool_t *)a; /* async is the first member */
    pthread_mutex_lock(&p->mu);
    pool_job_t *job = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    while (job) {
        pool_job_t *next = job->next;
        p->complete(job);
        job = next;
    }
}

int pool_start(pool_t *p, uv_loop_t *loop, int n, void (*complete)(pool_job_t *job)) {
    p->todo_head = p->todo_tail = p->done_head = p->done_tail = NULL;
    p->complete = complete;
    p->stop = false;
    p->nthreads = 0;
    p->threads = pg_calloc_array((size_t)n, sizeof(pthread_t));
    if (!p->threads)
        return -12; /* ENOMEM */
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    int rc = uv_async_init(loop, &p->async, pool_on_async);
    if (rc)
        goto err_free;
    for (int i = 0; i < n; i++) {
        rc = -pthread_create(&p->threads[i], NULL, pool_worker, p);
        if (rc)
            goto err_stop;
        p->nthreads++;
    }
    return 0;

err_stop:
    pool_stop(p);
    return rc;
err_free:
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pg_free(p->threads);
    p->threads = NULL;
    return rc;
}

void pool_submit(pool_t *p, pool_job_t *job) {
    job->next = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->todo_tail)
        p->todo_tail->next = job;
    else
        p->todo_head = job;
    p->todo_tail = job;
    pthread_mutex_unlock(&p->mu);
    /* After the unlock: a worker woken while we still held the mutex would block on it at once
     * and cost two more system calls on the way to the run. */
    pthread_cond_signal(&p->cv);
}

static void pool_on_close(uv_handle_t *h) {
    pool_t *p = (pool_t *)h;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pg_free(p->threads);
    p->threads = NULL;
}

void pool_stop(pool_t *p) {
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    p->nthreads = 0;
    uv_close((uv_handle_t *)&p->async, pool_on_close);
}
