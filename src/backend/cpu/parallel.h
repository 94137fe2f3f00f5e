/* backend/cpu/parallel - the parallel-for the CPU kernels run on.
 *
 * parallel_for(pool, n, fn, ctx) splits [0, n) into at most pool->n_threads
 * contiguous ranges and calls fn(ctx, begin, end, thread_idx) once per range;
 * it returns when every range is done. thread_idx is in [0, n_threads), so a
 * kernel can index per-thread scratch with it. A NULL pool or one thread runs
 * fn(ctx, 0, n, 0) on the caller.
 *
 * A cpu_pool owns a base/threadpool (persistent workers; the caller runs
 * range 0). Results never depend on the split: each output element is
 * computed by one thread in a fixed order, so any thread count gives the same
 * bits. */
#ifndef VLM_BACKEND_CPU_PARALLEL_H
#define VLM_BACKEND_CPU_PARALLEL_H

#include <stdint.h>

#include "base/status.h"

typedef void (*parallel_fn)(void *ctx, int64_t begin, int64_t end, int thread_idx);

typedef struct cpu_pool {
    int n_threads; /* >= 1 */
} cpu_pool;

#define CPU_POOL_MAX_THREADS 256

/* n_threads <= 0: VLM_THREADS, else the CPUs this process may use (affinity
 * and cgroup quota). A worker that cannot start leaves a smaller pool. */
vlm_status cpu_pool_create(int n_threads, cpu_pool **out, vlm_err *err);
void cpu_pool_free(cpu_pool *p);
int cpu_pool_threads(const cpu_pool *p);

void parallel_for(cpu_pool *pool, int64_t n, parallel_fn fn, void *ctx);

#endif
