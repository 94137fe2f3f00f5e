/* base/threadpool: parallel_for covers the range exactly once with static
 * chunks, on 2+ threads; VLM_THREADS; the cgroup CPU quota from fixtures; the
 * default pool; no allocation per call. */
#include "testutil.h"

#include "base/alloc.h"
#include "base/cgroup.h"
#include "base/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MAX_T 16

typedef struct sum_ctx {
    const uint32_t *values;
    uint64_t partial[MAX_T]; /* per thread index */
    _Atomic int *hits;       /* per element: how many times it was visited */
    size_t begin[MAX_T], end[MAX_T];
    int calls[MAX_T];
    pthread_t who[MAX_T];
} sum_ctx;

static void sum_fn(void *p, size_t begin, size_t end, int t) {
    sum_ctx *c = p;
    uint64_t s = 0;
    for (size_t i = begin; i < end; i++) {
        s += c->values[i];
        atomic_fetch_add(&c->hits[i], 1);
    }
    c->partial[t] += s;
    c->begin[t] = begin;
    c->end[t] = end;
    c->calls[t]++;
    c->who[t] = pthread_self();
}

static void check_sum(vlm_threadpool *pool, size_t n) {
    uint32_t *v = malloc((n ? n : 1) * sizeof *v);
    _Atomic int *hits = calloc(n ? n : 1, sizeof *hits);
    uint64_t want = 0;
    for (size_t i = 0; i < n; i++) {
        v[i] = (uint32_t)(i * 2654435761u);
        want += v[i];
    }
    sum_ctx c = {.values = v, .hits = hits};
    vlm_parallel_for(pool, n, sum_fn, &c);
    uint64_t got = 0;
    int size = vlm_threadpool_size(pool);
    int chunks = 0;
    size_t smallest = SIZE_MAX, largest = 0;
    for (int t = 0; t < MAX_T; t++) {
        got += c.partial[t];
        if (!c.calls[t]) continue;
        assert_true(t < size);
        assert_int_equal(c.calls[t], 1); /* one static chunk per thread */
        size_t len = c.end[t] - c.begin[t];
        if (len < smallest) smallest = len;
        if (len > largest) largest = len;
        chunks++;
    }
    assert_int_equal(got, want);
    for (size_t i = 0; i < n; i++) assert_int_equal(hits[i], 1);
    if (n) {
        /* min(size, n) chunks, even to within one element, in index order */
        assert_int_equal(chunks, (size_t)size < n ? size : (int)n);
        assert_true(largest - smallest <= 1);
        for (int t = 1; t < chunks; t++) assert_int_equal(c.begin[t], c.end[t - 1]);
        assert_int_equal(c.begin[0], 0);
        assert_int_equal(c.end[chunks - 1], n);
        /* the caller ran chunk 0 */
        assert_true(pthread_equal(c.who[0], pthread_self()));
        for (int t = 1; t < chunks; t++) assert_false(pthread_equal(c.who[t], pthread_self()));
    }
    free(v);
    free(hits);
}

static void test_sums(void **state) {
    (void)state;
    for (int threads = 2; threads <= 5; threads++) {
        vlm_threadpool *pool;
        assert_int_equal(vlm_threadpool_create(&pool, threads, NULL), VLM_OK);
        assert_int_equal(vlm_threadpool_size(pool), threads);
        static const size_t ns[] = {0, 1, 2, 3, 7, 100, 1001, 100000};
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) check_sum(pool, ns[k]);
        vlm_threadpool_destroy(pool);
    }
}

static void add_one(void *p, size_t begin, size_t end, int t) {
    (void)t;
    atomic_fetch_add((_Atomic uint64_t *)p, end - begin);
}

static void test_many_calls_no_alloc(void **state) {
    (void)state;
    vlm_threadpool *pool;
    assert_int_equal(vlm_threadpool_create(&pool, 3, NULL), VLM_OK);
    _Atomic uint64_t total = 0;
    uint64_t count = vlm_alloc_count();
    for (int i = 0; i < 2000; i++) vlm_parallel_for(pool, 10 + (size_t)(i % 7), add_one, &total);
    assert_int_equal(vlm_alloc_count(), count);
    uint64_t want = 0;
    for (int i = 0; i < 2000; i++) want += 10 + (uint64_t)(i % 7);
    assert_int_equal(atomic_load(&total), want);
    vlm_threadpool_destroy(pool);
}

typedef struct nested_ctx {
    vlm_threadpool *pool;
    _Atomic uint64_t total;
} nested_ctx;

static void inner_fn(void *p, size_t begin, size_t end, int t) {
    (void)t;
    atomic_fetch_add(&((nested_ctx *)p)->total, end - begin);
}

static void outer_fn(void *p, size_t begin, size_t end, int t) {
    (void)t;
    nested_ctx *c = p;
    for (size_t i = begin; i < end; i++) vlm_parallel_for(c->pool, 100, inner_fn, c);
}

static void test_nested_runs_serially(void **state) {
    (void)state;
    nested_ctx c = {0};
    assert_int_equal(vlm_threadpool_create(&c.pool, 2, NULL), VLM_OK);
    vlm_parallel_for(c.pool, 10, outer_fn, &c);
    assert_int_equal(atomic_load(&c.total), 1000);
    vlm_threadpool_destroy(c.pool);
}

static void test_serial_without_pool(void **state) {
    (void)state;
    check_sum(NULL, 1000);
    vlm_threadpool *pool;
    assert_int_equal(vlm_threadpool_create(&pool, 1, NULL), VLM_OK);
    assert_int_equal(vlm_threadpool_size(pool), 1);
    check_sum(pool, 1000);
    vlm_threadpool_destroy(pool);
}

typedef struct two_callers {
    vlm_threadpool *pool;
    _Atomic uint64_t total;
} two_callers;

static void *caller_main(void *p) {
    two_callers *c = p;
    for (int i = 0; i < 500; i++) vlm_parallel_for(c->pool, 8, inner_fn, c);
    return NULL;
}

static void test_two_callers_take_turns(void **state) {
    (void)state;
    two_callers c = {0};
    assert_int_equal(vlm_threadpool_create(&c.pool, 3, NULL), VLM_OK);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, caller_main, &c), 0);
    caller_main(&c);
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&c.total), 2 * 500 * 8);
    vlm_threadpool_destroy(c.pool);
}

static int affinity_cpus(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
    return CPU_COUNT(&set);
}

static void test_vlm_threads_env(void **state) {
    (void)state;
    assert_int_equal(vlm_threads_parse("3"), 3);
    assert_int_equal(vlm_threads_parse("1024"), 1024);
    assert_int_equal(vlm_threads_parse("0"), 0);
    assert_int_equal(vlm_threads_parse("1025"), 0);
    assert_int_equal(vlm_threads_parse("-2"), 0);
    assert_int_equal(vlm_threads_parse("4x"), 0);
    assert_int_equal(vlm_threads_parse(""), 0);
    setenv("VLM_THREADS", "3", 1);
    assert_int_equal(vlm_threads_wanted(), 3);
    vlm_threadpool *pool;
    assert_int_equal(vlm_threadpool_create(&pool, 0, NULL), VLM_OK);
    assert_int_equal(vlm_threadpool_size(pool), 3);
    check_sum(pool, 10000);
    vlm_threadpool_destroy(pool);
    /* garbage falls back to the CPUs available */
    setenv("VLM_THREADS", "lots", 1);
    assert_int_equal(vlm_threads_wanted(), vlm_cpus_available(NULL));
    unsetenv("VLM_THREADS");
    int n = vlm_cpus_available(NULL);
    assert_true(n >= 1 && n <= affinity_cpus());
}

static void test_cpu_quota_fixtures(void **state) {
    (void)state;
    double q = 0;
    /* v2: app.scope has cpu.max "150000 100000", its parents "max" */
    assert_true(vlm_cgroup_cpu_quota(tu_src("tests/data/proc/v2"), &q));
    assert_float_equal(q, 1.5, 1e-9);
    /* v1: docker/abc has cfs_quota_us 50000 of 100000; the root -1 */
    assert_true(vlm_cgroup_cpu_quota(tu_src("tests/data/proc/v1"), &q));
    assert_float_equal(q, 0.5, 1e-9);
    /* v2 container mounted at its own group: "250000 100000" */
    assert_true(vlm_cgroup_cpu_quota(tu_src("tests/data/proc/v2_container"), &q));
    assert_float_equal(q, 2.5, 1e-9);
    /* -1 quota, no files, garbage: no quota */
    assert_false(vlm_cgroup_cpu_quota(tu_src("tests/data/proc/v1_nolimit"), &q));
    assert_false(vlm_cgroup_cpu_quota(tu_src("tests/data/proc/missing"), &q));
    assert_false(vlm_cgroup_cpu_quota(tu_src("tests/data/proc/garbage"), &q));
    /* The quota caps the affinity count, rounded up, at least 1. */
    int aff = affinity_cpus();
    assert_int_equal(vlm_cpus_available(tu_src("tests/data/proc/v1")), 1);
    assert_int_equal(vlm_cpus_available(tu_src("tests/data/proc/v2")), aff < 2 ? aff : 2);
    assert_int_equal(vlm_cpus_available(tu_src("tests/data/proc/missing")), aff);
}

static void test_default_pool(void **state) {
    (void)state;
    setenv("VLM_THREADS", "2", 1);
    vlm_threadpool *p = vlm_threadpool_default();
    assert_non_null(p);
    assert_ptr_equal(vlm_threadpool_default(), p);
    assert_int_equal(vlm_threadpool_size(p), 2);
    assert_int_equal(vlm_threadpool_default_size(), 2);
    check_sum(p, 5000);
    vlm_threadpool_default_shutdown();
    vlm_threadpool_default_shutdown(); /* twice is harmless */
    setenv("VLM_THREADS", "4", 1);
    assert_int_equal(vlm_threadpool_default_size(), 4);
    p = vlm_threadpool_default();
    assert_int_equal(vlm_threadpool_size(p), 4);
    vlm_threadpool_default_shutdown();
    unsetenv("VLM_THREADS");
}

static void test_create_nomem(void **state) {
    (void)state;
    /* Each of the pool's allocations can fail: a clean error, no leak. */
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    for (uint64_t n = 1; n <= 3; n++) {
        vlm_threadpool *pool = (vlm_threadpool *)1;
        vlm_err err;
        vlm_alloc_fail_at(vlm_alloc_count() + n, false);
        vlm_status s = vlm_threadpool_create(&pool, 4, &err);
        vlm_alloc_fail_at(0, false);
        assert_int_equal(s, VLM_ERR_NOMEM);
        assert_null(pool);
        assert_non_null(strstr(err.msg, "thread pool"));
    }
    vlm_alloc_get_stats(&b);
    assert_int_equal(b.total_current, a.total_current);
}

static void test_spawn_failure_degrades(void **state) {
    (void)state;
    vlm_threadpool *pool;
    vlm_threadpool_fail_spawn_after(1);
    assert_int_equal(vlm_threadpool_create(&pool, 6, NULL), VLM_OK);
    vlm_threadpool_fail_spawn_after(-1);
    assert_int_equal(vlm_threadpool_size(pool), 2); /* the caller and one worker */
    check_sum(pool, 10000);
    vlm_threadpool_destroy(pool);
    vlm_threadpool_fail_spawn_after(0);
    assert_int_equal(vlm_threadpool_create(&pool, 6, NULL), VLM_OK);
    vlm_threadpool_fail_spawn_after(-1);
    assert_int_equal(vlm_threadpool_size(pool), 1);
    check_sum(pool, 10000);
    vlm_threadpool_destroy(pool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sums),
        cmocka_unit_test(test_many_calls_no_alloc),
        cmocka_unit_test(test_nested_runs_serially),
        cmocka_unit_test(test_serial_without_pool),
        cmocka_unit_test(test_two_callers_take_turns),
        cmocka_unit_test(test_vlm_threads_env),
        cmocka_unit_test(test_cpu_quota_fixtures),
        cmocka_unit_test(test_default_pool),
        cmocka_unit_test(test_create_nomem),
        cmocka_unit_test(test_spawn_failure_degrades),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
