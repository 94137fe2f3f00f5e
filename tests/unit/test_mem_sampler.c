/* mem/monitor: the background sampler (timeline, peak, ring, alarm) and
 * scoped measurement, on this process's real memory. The memory is touched
 * (memset) so that it is resident: untouched pages cost no RSS. */
#include "testutil.h"

#include "base/alloc.h"
#include "mem/monitor.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define MiB (1024ULL * 1024ULL)

static void sleep_ms(unsigned ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {}
}

/* |a - b| <= tol */
static bool near(int64_t a, int64_t b, int64_t tol) {
    int64_t d = a - b;
    return d <= tol && -d <= tol;
}

static void test_sampler_timeline_and_peak(void **state) {
    (void)state;
    vlm_mem_sampler_config cfg = {.interval_ms = 10, .threshold_bytes = VLM_MEM_NO_LIMIT};
    vlm_mem_sampler *s;
    vlm_err err;
    assert_int_equal(vlm_mem_sampler_start(&cfg, &s, &err), VLM_OK);
    uint64_t rss0 = vlm_mem_rss_now();
    sleep_ms(40);
    char *p = vlm_alloc(64 * MiB, VLM_MEM_KV_CACHE);
    assert_non_null(p);
    memset(p, 1, 64 * MiB);
    sleep_ms(80);
    vlm_free(p);
    sleep_ms(40);
    vlm_mem_sampler_stop(s);
    size_t n = vlm_mem_sampler_count(s);
    /* 160 ms at 10 ms: well over 5 samples even on a loaded machine */
    assert_true(n >= 5);
    assert_int_equal(vlm_mem_sampler_taken(s), n);
    uint64_t last_t = 0;
    bool saw_kv = false;
    for (size_t i = 0; i < n; i++) {
        vlm_mem_sample x;
        assert_true(vlm_mem_sampler_get(s, i, &x));
        assert_true(x.t_ms >= last_t);
        last_t = x.t_ms;
        assert_true(x.rss_bytes > 0);
        if (x.accounted[VLM_MEM_KV_CACHE] >= 64 * MiB) saw_kv = true;
        assert_int_equal(x.gpu_bytes, 0);
    }
    assert_true(saw_kv);
    vlm_mem_sample x;
    assert_false(vlm_mem_sampler_get(s, n, &x));
    vlm_mem_sample pr, pa;
    vlm_mem_sampler_peak(s, &pr, &pa);
    assert_true(pr.rss_bytes >= rss0 + 60 * MiB);
    assert_true(pa.accounted[VLM_MEM_KV_CACHE] >= 64 * MiB);
    /* the last sample is after the free */
    assert_true(vlm_mem_sampler_get(s, n - 1, &x));
    assert_true(x.accounted[VLM_MEM_KV_CACHE] < 64 * MiB);
    cJSON *j = vlm_mem_sampler_to_json(s);
    assert_non_null(j);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "samples")), (int)n);
    assert_non_null(cJSON_GetObjectItem(j, "peak_rss"));
    cJSON_Delete(j);
    vlm_mem_sampler_destroy(s);
}

static uint64_t fake_gpu(void *ctx) {
    return *(uint64_t *)ctx;
}

static void test_sampler_ring_wraps(void **state) {
    (void)state;
    uint64_t gpu = 777;
    vlm_mem_sampler_config cfg = {.interval_ms = 5,
                                  .capacity = 4,
                                  .threshold_bytes = VLM_MEM_NO_LIMIT,
                                  .gpu_bytes = fake_gpu,
                                  .gpu_ctx = &gpu};
    vlm_mem_sampler *s;
    assert_int_equal(vlm_mem_sampler_start(&cfg, &s, NULL), VLM_OK);
    sleep_ms(100);
    vlm_mem_sampler_stop(s);
    assert_int_equal(vlm_mem_sampler_count(s), 4);
    assert_true(vlm_mem_sampler_taken(s) > 4);
    /* the ring keeps the newest, oldest first */
    vlm_mem_sample a, b;
    assert_true(vlm_mem_sampler_get(s, 0, &a));
    assert_true(vlm_mem_sampler_get(s, 3, &b));
    assert_true(b.t_ms >= a.t_ms);
    assert_true(b.t_ms >= 50);
    assert_int_equal(b.gpu_bytes, 777);
    vlm_mem_sampler_destroy(s);
}

/* A device as the GPU backend's probe would report it: 80 GiB, a used
 * figure the test moves, accounted bytes below it. */
static _Atomic uint64_t fake_free;

static bool fake_probe(vlm_gpu_mem *out) {
    snprintf(out->name, sizeof out->name, "Fake GPU");
    out->total_bytes = 80ull << 30;
    out->free_bytes = atomic_load(&fake_free);
    out->accounted_bytes = 1000;
    out->accounted_peak = 3000;
    return true;
}

/* The probe's figures reach the snapshot (and its JSON: "none" without
 * one) and the sampler's timeline and device peak. */
static void test_gpu_probe(void **state) {
    (void)state;
    vlm_mem_snapshot snap;
    vlm_mem_snapshot_take(NULL, &snap);
    assert_false(snap.gpu.have);
    cJSON *j = vlm_mem_snapshot_to_json(&snap);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "gpu")), "none");
    cJSON_Delete(j);

    atomic_store(&fake_free, 70ull << 30);
    vlm_mem_set_gpu_probe(fake_probe);
    vlm_mem_snapshot_take(NULL, &snap);
    assert_true(snap.gpu.have);
    assert_int_equal(snap.gpu.used_bytes, 10ull << 30);
    j = vlm_mem_snapshot_to_json(&snap);
    cJSON *g = cJSON_GetObjectItem(j, "gpu");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(g, "name")), "Fake GPU");
    assert_int_equal((uint64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(g, "used_bytes")),
                     10ull << 30);
    assert_int_equal((uint64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(g, "accounted_peak_bytes")),
                     3000);
    /* NVML: absent here (no driver), and said so */
    if (!snap.gpu.have_process)
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(g, "process_source")),
                            "none (no NVML)");
    cJSON_Delete(j);

    vlm_mem_sampler_config cfg = {.interval_ms = 5, .threshold_bytes = VLM_MEM_NO_LIMIT};
    vlm_mem_sampler *s;
    assert_int_equal(vlm_mem_sampler_start(&cfg, &s, NULL), VLM_OK);
    sleep_ms(40);
    atomic_store(&fake_free, 60ull << 30); /* 20 GiB in use for a while */
    sleep_ms(40);
    atomic_store(&fake_free, 75ull << 30);
    sleep_ms(40);
    vlm_mem_sampler_stop(s);
    vlm_mem_sample pk, last;
    vlm_mem_sampler_gpu_peak(s, &pk);
    assert_int_equal(pk.gpu_bytes, 20ull << 30);
    assert_int_equal(pk.gpu_accounted, 1000);
    assert_true(vlm_mem_sampler_get(s, vlm_mem_sampler_count(s) - 1, &last));
    assert_int_equal(last.gpu_bytes, 5ull << 30);
    j = vlm_mem_sampler_to_json(s);
    assert_int_equal((uint64_t)cJSON_GetNumberValue(
                         cJSON_GetObjectItem(cJSON_GetObjectItem(j, "peak_gpu"), "gpu_bytes")),
                     20ull << 30);
    cJSON_Delete(j);
    vlm_mem_sampler_destroy(s);
    vlm_mem_set_gpu_probe(NULL);
}

typedef struct alarm_seen {
    _Atomic int calls; /* read by the test while the sampler runs */
    uint64_t rss;
    uint64_t threshold;
    bool cleanup_ran;
} alarm_seen;

static void on_alarm(void *ctx, const vlm_mem_sample *x, uint64_t threshold,
                     const vlm_mem_cleanup_result *c) {
    alarm_seen *a = ctx;
    a->rss = x->rss_bytes;
    a->threshold = threshold;
    a->cleanup_ran = c->rss_before > 0;
    atomic_fetch_add(&a->calls, 1);
}

static void test_sampler_alarm(void **state) {
    (void)state;
    alarm_seen seen = {0};
    uint64_t rss0 = vlm_mem_rss_now();
    vlm_mem_sampler_config cfg = {.interval_ms = 5,
                                  .threshold_bytes = rss0 + 32 * MiB,
                                  .alarm = on_alarm,
                                  .alarm_ctx = &seen};
    vlm_mem_sampler *s;
    assert_int_equal(vlm_mem_sampler_start(&cfg, &s, NULL), VLM_OK);
    sleep_ms(30);
    assert_int_equal(atomic_load(&seen.calls), 0);
    char *p = vlm_alloc(64 * MiB, VLM_MEM_ACTIVATIONS);
    assert_non_null(p);
    memset(p, 1, 64 * MiB);
    sleep_ms(60);
    vlm_free(p);
    sleep_ms(30);
    vlm_mem_sampler_stop(s);
    /* one crossing, one alarm, with the sample that crossed */
    assert_int_equal(atomic_load(&seen.calls), 1);
    assert_int_equal(vlm_mem_sampler_alarms(s), 1);
    assert_true(seen.rss > cfg.threshold_bytes);
    assert_int_equal(seen.threshold, cfg.threshold_bytes);
    assert_true(seen.cleanup_ran);
    vlm_mem_sampler_destroy(s);
}

/* The acceptance test: a scope around allocating and touching 256 MiB
 * reports a delta within 10%, and after free + cleanup RSS is back. */
static void test_scope_256mib(void **state) {
    (void)state;
    const uint64_t size = 256 * MiB;
    vlm_mem_cleanup(false, NULL);
    vlm_mem_scope sc;
    vlm_mem_scope_begin(&sc, "touch 256 MiB");
    char *p = vlm_alloc(size, VLM_MEM_ACTIVATIONS);
    assert_non_null(p);
    memset(p, 0xab, size);
    vlm_mem_scope_result r;
    vlm_mem_scope_end(&sc, &r);
    assert_string_equal(r.name, "touch 256 MiB");
    assert_true(near(r.rss_delta, (int64_t)size, (int64_t)size / 10));
    assert_int_equal(r.accounted_delta, (int64_t)size);
    assert_true(r.accounted_peak >= r.accounted_start + size);
    assert_true(r.rss_peak >= r.rss_start + size * 9 / 10);
    assert_true(r.wall_ms >= 0);

    vlm_free(p);
    vlm_mem_cleanup_result c;
    vlm_mem_cleanup(true, &c);
    assert_true(near((int64_t)c.rss_after, (int64_t)r.rss_start, (int64_t)size / 10));
    /* the OS got the region back: from the free or from the trim */
    assert_true(near((int64_t)r.rss_end - (int64_t)c.rss_after, (int64_t)size, (int64_t)size / 10));
}

static void test_nested_scopes(void **state) {
    (void)state;
    vlm_mem_scope outer, inner;
    vlm_mem_scope_begin(&outer, "outer");
    /* A peak inside outer, gone before inner begins: inner's reset of the
     * kernel's peak must not lose it for outer. */
    char *p = vlm_alloc(64 * MiB, VLM_MEM_SCRATCH);
    assert_non_null(p);
    memset(p, 1, 64 * MiB);
    vlm_free(p);
    vlm_mem_scope_begin(&inner, "inner");
    char *q = vlm_alloc(16 * MiB, VLM_MEM_SCRATCH);
    assert_non_null(q);
    memset(q, 1, 16 * MiB);
    vlm_free(q);
    vlm_mem_scope_result ri, ro;
    vlm_mem_scope_end(&inner, &ri);
    vlm_mem_scope_end(&outer, &ro);
    assert_true(ro.peak_exact);
    assert_true(ro.rss_peak >= ro.rss_start + 60 * MiB);
    assert_true(ro.accounted_peak >= ro.accounted_start + 64 * MiB);
    /* inner saw only its own 16 MiB */
    assert_true(ri.rss_peak >= ri.rss_start + 15 * MiB);
    assert_true(ri.rss_peak < ri.rss_start + 60 * MiB);
    assert_true(ri.accounted_peak >= ri.accounted_start + 16 * MiB);
    assert_true(ri.accounted_peak < ri.accounted_start + 64 * MiB);
    assert_int_equal(ro.accounted_delta, 0);
}

static void test_sampler_nomem(void **state) {
    (void)state;
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    for (uint64_t n = 1; n <= 2; n++) {
        vlm_mem_sampler *s = NULL;
        vlm_err err;
        vlm_alloc_fail_at(vlm_alloc_count() + n, false);
        vlm_status st = vlm_mem_sampler_start(NULL, &s, &err);
        vlm_alloc_fail_at(0, false);
        assert_int_equal(st, VLM_ERR_NOMEM);
        assert_null(s);
        assert_non_null(strstr(err.msg, "sampler"));
    }
    vlm_alloc_get_stats(&b);
    assert_int_equal(b.total_current, a.total_current);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scope_256mib),
        cmocka_unit_test(test_nested_scopes),
        cmocka_unit_test(test_sampler_timeline_and_peak),
        cmocka_unit_test(test_sampler_ring_wraps),
        cmocka_unit_test(test_gpu_probe),
        cmocka_unit_test(test_sampler_alarm),
        cmocka_unit_test(test_sampler_nomem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
