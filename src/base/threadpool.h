/* base/threadpool - persistent worker threads and a static parallel-for.
 *
 * vlm_parallel_for(pool, n, fn, ctx) splits [0, n) into one contiguous chunk
 * per thread (the calling thread takes chunk 0) and returns when every chunk
 * is done. Static chunks suit the kernels to come: a matmul's rows cost the
 * same, so an even split is as good as stealing and keeps each thread on the
 * same rows, and so the same cache lines, from call to call.
 *
 * A call allocates nothing. A parallel_for from inside a chunk (nesting) runs
 * serially in that thread; calls from different threads on one pool take
 * turns.
 *
 * Size: VLM_THREADS=N if set (1..VLM_THREADS_MAX), else the CPUs this process
 * may use: the affinity mask (sched_getaffinity), capped by the cgroup CPU
 * quota (cpu.max on v2, cpu.cfs_quota_us / cpu.cfs_period_us on v1), rounded
 * up. A worker that cannot be started leaves a smaller pool, not an error. */
#ifndef VLM_BASE_THREADPOOL_H
#define VLM_BASE_THREADPOOL_H

#include <stddef.h>

#include "base/status.h"

#define VLM_THREADS_MAX 1024

typedef struct vlm_threadpool vlm_threadpool;

/* Work on [begin, end) of the range; thread_index is 0 for the caller and
 * 1..size-1 for the workers (for per-thread scratch). */
typedef void (*vlm_parallel_fn)(void *ctx, size_t begin, size_t end, int thread_index);

/* A pool of n_threads threads counting the caller (n_threads - 1 workers);
 * n_threads <= 0 takes vlm_threads_wanted(). Fails only for lack of memory
 * for the pool itself. */
vlm_status vlm_threadpool_create(vlm_threadpool **out, int n_threads, vlm_err *err);
/* Stop and join the workers. No call may be running on the pool. */
void vlm_threadpool_destroy(vlm_threadpool *pool);
/* Threads that take part in a parallel_for, the caller included (>= 1). */
int vlm_threadpool_size(const vlm_threadpool *pool);

/* Run fn over [0, n) split in min(size, n) static chunks. pool == NULL runs
 * fn(ctx, 0, n, 0) in the caller. */
void vlm_parallel_for(vlm_threadpool *pool, size_t n, vlm_parallel_fn fn, void *ctx);

/* The process-wide pool, created on first use with vlm_threads_wanted()
 * threads (NULL only when even the pool struct cannot be allocated; then
 * vlm_parallel_for runs serially). Freed by vlm_threadpool_default_shutdown. */
vlm_threadpool *vlm_threadpool_default(void);
void vlm_threadpool_default_shutdown(void);
/* The default pool's size if it exists, else what it would get. */
int vlm_threadpool_default_size(void);

/* Fault injection for tests: starting a worker fails once `started` workers
 * are running (the pool must shrink, not fail); -1 turns it off. */
void vlm_threadpool_fail_spawn_after(int started);

/* Threads to use: VLM_THREADS, else vlm_cpus_available(NULL). */
int vlm_threads_wanted(void);
/* CPUs this process may use: the affinity mask capped by the cgroup quota
 * (read under root; NULL or "" for the real machine), at least 1. */
int vlm_cpus_available(const char *root);
/* Parse a VLM_THREADS value: an integer in 1..VLM_THREADS_MAX, else 0. */
int vlm_threads_parse(const char *s);

#endif
