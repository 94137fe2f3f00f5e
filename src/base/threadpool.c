/* base/threadpool - see threadpool.h.
 *
 * One mutex and two condition variables: the caller publishes a job under
 * the lock and bumps `generation`; each worker with a chunk runs it and
 * counts `pending` down; the caller runs chunk 0 meanwhile and then waits for
 * pending == 0. A wake-up costs some microseconds, which is noise next to
 * the millisecond-scale kernels this pool is for. */
#include "base/threadpool.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/cgroup.h"
#include "base/log.h"

struct vlm_threadpool {
    int size;      /* threads in a parallel_for, the caller included */
    int n_workers; /* size - 1 */
    pthread_t *threads;
    struct worker_arg *args;

    pthread_mutex_t submit; /* one parallel_for at a time */
    pthread_mutex_t lock;
    pthread_cond_t work_cv;
    pthread_cond_t done_cv;
    uint64_t generation;
    bool stop;

    /* the job of the current generation */
    vlm_parallel_fn fn;
    void *ctx;
    size_t n;
    int chunks;
    int pending;
};

struct worker_arg {
    vlm_threadpool *pool;
    int index; /* 1..n_workers */
};

/* Index of this thread inside a running parallel_for, or -1 outside one:
 * a nested call runs serially instead of waiting on itself. */
static _Thread_local int tl_index = -1;

static _Atomic int fail_spawn_after = -1;

void vlm_threadpool_fail_spawn_after(int started) {
    atomic_store(&fail_spawn_after, started);
}

/* Chunk c of [0, n) in `chunks` near-equal parts: the first n % chunks
 * chunks get one extra element. */
static void chunk_range(size_t n, int chunks, int c, size_t *begin, size_t *end) {
    size_t q = n / (size_t)chunks, r = n % (size_t)chunks, uc = (size_t)c;
    *begin = uc * q + (uc < r ? uc : r);
    *end = *begin + q + (uc < r ? 1 : 0);
}

static void *worker_main(void *p) {
    struct worker_arg *arg = p;
    vlm_threadpool *pool = arg->pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->stop && pool->generation == seen)
            pthread_cond_wait(&pool->work_cv, &pool->lock);
        if (pool->stop) break;
        seen = pool->generation;
        if (arg->index >= pool->chunks) continue;
        vlm_parallel_fn fn = pool->fn;
        void *ctx = pool->ctx;
        size_t begin, end;
        chunk_range(pool->n, pool->chunks, arg->index, &begin, &end);
        pthread_mutex_unlock(&pool->lock);
        tl_index = arg->index;
        fn(ctx, begin, end, arg->index);
        tl_index = -1;
        pthread_mutex_lock(&pool->lock);
        if (--pool->pending == 0) pthread_cond_signal(&pool->done_cv);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

vlm_status vlm_threadpool_create(vlm_threadpool **out, int n_threads, vlm_err *err) {
    *out = NULL;
    if (n_threads <= 0) n_threads = vlm_threads_wanted();
    if (n_threads > VLM_THREADS_MAX) n_threads = VLM_THREADS_MAX;
    vlm_threadpool *pool = vlm_calloc(1, sizeof *pool, VLM_MEM_OTHER);
    if (!pool) return vlm_err_set(err, VLM_ERR_NOMEM, "thread pool: no memory for the pool");
    int want = n_threads - 1;
    if (want > 0) {
        pool->threads = VLM_NEW_ARRAY(pthread_t, (size_t)want, VLM_MEM_OTHER);
        pool->args = VLM_NEW_ARRAY(struct worker_arg, (size_t)want, VLM_MEM_OTHER);
        if (!pool->threads || !pool->args) {
            vlm_free(pool->threads);
            vlm_free(pool->args);
            vlm_free(pool);
            return vlm_err_set(err, VLM_ERR_NOMEM, "thread pool: no memory for %d worker records",
                               want);
        }
    }
    pthread_mutex_init(&pool->submit, NULL);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->work_cv, NULL);
    pthread_cond_init(&pool->done_cv, NULL);
    int started = 0;
    for (int i = 0; i < want; i++) {
        pool->args[i] = (struct worker_arg){pool, i + 1};
        int limit = atomic_load(&fail_spawn_after);
        if ((limit >= 0 && started >= limit) ||
            pthread_create(&pool->threads[i], NULL, worker_main, &pool->args[i]) != 0) {
            VLM_WARN("thread pool: started %d of %d worker threads; going on with %d threads",
                     started, want, started + 1);
            break;
        }
        started++;
    }
    pool->n_workers = started;
    pool->size = started + 1;
    *out = pool;
    return VLM_OK;
}

void vlm_threadpool_destroy(vlm_threadpool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->stop = true;
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_workers; i++) pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->work_cv);
    pthread_cond_destroy(&pool->done_cv);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->submit);
    vlm_free(pool->threads);
    vlm_free(pool->args);
    vlm_free(pool);
}

int vlm_threadpool_size(const vlm_threadpool *pool) {
    return pool ? pool->size : 1;
}

void vlm_parallel_for(vlm_threadpool *pool, size_t n, vlm_parallel_fn fn, void *ctx) {
    if (n == 0 || !fn) return;
    if (!pool || pool->size == 1 || n == 1 || tl_index >= 0) {
        fn(ctx, 0, n, tl_index >= 0 ? tl_index : 0);
        return;
    }
    int chunks = (size_t)pool->size < n ? pool->size : (int)n;
    pthread_mutex_lock(&pool->submit);
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n = n;
    pool->chunks = chunks;
    pool->pending = chunks - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->lock);

    size_t begin, end;
    chunk_range(n, chunks, 0, &begin, &end);
    tl_index = 0;
    fn(ctx, begin, end, 0);
    tl_index = -1;

    pthread_mutex_lock(&pool->lock);
    while (pool->pending > 0) pthread_cond_wait(&pool->done_cv, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&pool->submit);
}

/* --- the default pool ----------------------------------------------------- */

static pthread_mutex_t default_lock = PTHREAD_MUTEX_INITIALIZER;
static vlm_threadpool *default_pool;

vlm_threadpool *vlm_threadpool_default(void) {
    pthread_mutex_lock(&default_lock);
    if (!default_pool) {
        vlm_err err;
        if (vlm_threadpool_create(&default_pool, 0, &err) != VLM_OK)
            VLM_WARN("%s; running serially", err.msg);
    }
    vlm_threadpool *p = default_pool;
    pthread_mutex_unlock(&default_lock);
    return p;
}

void vlm_threadpool_default_shutdown(void) {
    pthread_mutex_lock(&default_lock);
    vlm_threadpool *p = default_pool;
    default_pool = NULL;
    pthread_mutex_unlock(&default_lock);
    vlm_threadpool_destroy(p);
}

int vlm_threadpool_default_size(void) {
    pthread_mutex_lock(&default_lock);
    int n = default_pool ? default_pool->size : vlm_threads_wanted();
    pthread_mutex_unlock(&default_lock);
    return n;
}

/* --- how many threads ----------------------------------------------------- */

int vlm_threads_parse(const char *s) {
    if (!s) return 0;
    const char *p = s;
    uint64_t v;
    if (!vlm_parse_u64(&p, &v) || *p != '\0' || v < 1 || v > VLM_THREADS_MAX) return 0;
    return (int)v;
}

int vlm_cpus_available(const char *root) {
    long n = 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n <= 0) n = 1;
    double quota;
    if (vlm_cgroup_cpu_quota(root, &quota)) {
        /* A quota of 1.5 CPUs still lets two threads run half the time
         * each; rounding down would leave half a CPU idle. */
        long q = (long)ceil(quota);
        if (q < 1) q = 1;
        if (q < n) n = q;
    }
    if (n > VLM_THREADS_MAX) n = VLM_THREADS_MAX;
    return (int)n;
}

int vlm_threads_wanted(void) {
    const char *s = getenv("VLM_THREADS");
    if (s && *s) {
        int n = vlm_threads_parse(s);
        if (n > 0) return n;
        VLM_WARN("VLM_THREADS=%s is not a thread count in 1..%d; using the CPUs available", s,
                 VLM_THREADS_MAX);
    }
    return vlm_cpus_available(NULL);
}
