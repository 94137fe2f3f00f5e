/* backend/cpu/parallel - see parallel.h. */
#include "backend/cpu/parallel.h"

#include <pthread.h>
#include <sched.h>

#include "base/alloc.h"

vlm_status cpu_pool_create(int n_threads, cpu_pool **out, vlm_err *err) {
    if (n_threads <= 0) {
        cpu_set_t set;
        n_threads = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    }
    if (n_threads > CPU_POOL_MAX_THREADS) n_threads = CPU_POOL_MAX_THREADS;
    cpu_pool *p = vlm_alloc(sizeof *p, VLM_MEM_OTHER);
    if (!p) return vlm_err_set(err, VLM_ERR_NOMEM, "thread pool: out of memory");
    p->n_threads = n_threads < 1 ? 1 : n_threads;
    *out = p;
    return VLM_OK;
}

void cpu_pool_free(cpu_pool *p) {
    vlm_free(p);
}

int cpu_pool_threads(const cpu_pool *p) {
    return p ? p->n_threads : 1;
}

typedef struct job {
    parallel_fn fn;
    void *ctx;
    int64_t begin, end;
    int idx;
} job;

static void *job_run(void *arg) {
    job *j = arg;
    j->fn(j->ctx, j->begin, j->end, j->idx);
    return NULL;
}

void parallel_for(cpu_pool *pool, int64_t n, parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    int nt = pool ? pool->n_threads : 1;
    if (nt > n) nt = (int)n;
    if (nt <= 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    job jobs[CPU_POOL_MAX_THREADS];
    pthread_t tid[CPU_POOL_MAX_THREADS];
    bool started[CPU_POOL_MAX_THREADS];
    for (int t = 0; t < nt; t++) {
        jobs[t] = (job){fn, ctx, n * t / nt, n * (t + 1) / nt, t};
        started[t] = false;
    }
    /* Thread 0's range runs on the caller. A thread that cannot be started
     * has its range run on the caller too: slower, never wrong. */
    for (int t = 1; t < nt; t++) started[t] = pthread_create(&tid[t], NULL, job_run, &jobs[t]) == 0;
    job_run(&jobs[0]);
    for (int t = 1; t < nt; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            job_run(&jobs[t]);
    }
}
