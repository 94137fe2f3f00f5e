/* backend/cpu/parallel - see parallel.h. The ranges run on the persistent
 * workers of base/threadpool; each cpu_pool owns one vlm_threadpool. */
#include "backend/cpu/parallel.h"

#include "base/alloc.h"
#include "base/threadpool.h"

struct cpu_pool_impl {
    cpu_pool pub;
    vlm_threadpool *tp;
};

vlm_status cpu_pool_create(int n_threads, cpu_pool **out, vlm_err *err) {
    *out = NULL;
    if (n_threads > CPU_POOL_MAX_THREADS) n_threads = CPU_POOL_MAX_THREADS;
    struct cpu_pool_impl *p = vlm_calloc(1, sizeof *p, VLM_MEM_OTHER);
    if (!p) return vlm_err_set(err, VLM_ERR_NOMEM, "thread pool: out of memory");
    /* n_threads <= 0: VLM_THREADS, else the CPUs this process may use. A
     * worker that cannot start leaves a smaller pool (never an error). */
    vlm_status st = vlm_threadpool_create(&p->tp, n_threads, err);
    if (st != VLM_OK) {
        vlm_free(p);
        return st;
    }
    int size = vlm_threadpool_size(p->tp);
    p->pub.n_threads = size > CPU_POOL_MAX_THREADS ? CPU_POOL_MAX_THREADS : size;
    *out = &p->pub;
    return VLM_OK;
}

void cpu_pool_free(cpu_pool *p) {
    if (!p) return;
    struct cpu_pool_impl *impl = (struct cpu_pool_impl *)p;
    vlm_threadpool_destroy(impl->tp);
    vlm_free(impl);
}

int cpu_pool_threads(const cpu_pool *p) {
    return p ? p->n_threads : 1;
}

typedef struct tramp {
    parallel_fn fn;
    void *ctx;
} tramp;

static void tramp_run(void *ctx, size_t begin, size_t end, int thread_index) {
    const tramp *t = ctx;
    t->fn(t->ctx, (int64_t)begin, (int64_t)end, thread_index);
}

/* Results never depend on the split: every kernel computes each output
 * element in one thread, in a fixed order (docs/model.md, Numerics). */
void parallel_for(cpu_pool *pool, int64_t n, parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    if (!pool || pool->n_threads <= 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    tramp t = {fn, ctx};
    vlm_parallel_for(((struct cpu_pool_impl *)pool)->tp, (size_t)n, tramp_run, &t);
}
