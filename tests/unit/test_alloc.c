/* base/alloc: accounting per category, peaks across threads, overflow checks,
 * alignment, fault injection and the leak report. */
#include "testutil.h"

#include "base/alloc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static void test_category_accounting(void **state) {
    (void)state;
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    void *w = vlm_alloc(1000, VLM_MEM_WEIGHTS);
    void *k = vlm_alloc(3000, VLM_MEM_KV_CACHE);
    assert_non_null(w);
    assert_non_null(k);
    assert_int_equal((uintptr_t)w % VLM_ALLOC_ALIGN, 0);
    assert_int_equal((uintptr_t)k % VLM_ALLOC_ALIGN, 0);
    assert_int_equal(vlm_alloc_size(w), 1000);
    vlm_alloc_get_stats(&b);
    assert_int_equal(b.current[VLM_MEM_WEIGHTS] - a.current[VLM_MEM_WEIGHTS], 1000);
    assert_int_equal(b.current[VLM_MEM_KV_CACHE] - a.current[VLM_MEM_KV_CACHE], 3000);
    assert_int_equal(b.total_current - a.total_current, 4000);
    vlm_free(w);
    vlm_free(k);
    vlm_alloc_get_stats(&b);
    assert_int_equal(b.total_current, a.total_current);
    assert_true(b.peak[VLM_MEM_KV_CACHE] >= 3000);
}

/* Memory taken outside the allocator (the GPU runtime's pinned buffers)
 * counted under its category while held: current and peak rise, and the
 * current returns when it is given back. */
static void test_note_external(void **state) {
    (void)state;
    vlm_mem_stats a, b, c;
    vlm_alloc_get_stats(&a);
    vlm_alloc_note_external(VLM_MEM_IMAGE, 4096);
    vlm_alloc_get_stats(&b);
    assert_int_equal(b.current[VLM_MEM_IMAGE], a.current[VLM_MEM_IMAGE] + 4096);
    assert_true(b.peak[VLM_MEM_IMAGE] >= b.current[VLM_MEM_IMAGE]);
    vlm_alloc_note_external(VLM_MEM_IMAGE, -4096);
    vlm_alloc_note_external(VLM_MEM_CAT_COUNT, 123); /* no such category: ignored */
    vlm_alloc_get_stats(&c);
    assert_int_equal(c.current[VLM_MEM_IMAGE], a.current[VLM_MEM_IMAGE]);
    for (int i = 0; i < VLM_MEM_CAT_COUNT; i++) assert_int_equal(c.current[i], a.current[i]);
}

static void test_realloc_keeps_category(void **state) {
    (void)state;
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    char *p = vlm_alloc(10, VLM_MEM_IMAGE);
    assert_non_null(p);
    memcpy(p, "abcdefghi", 10);
    p = vlm_realloc(p, 100000, VLM_MEM_OTHER);
    assert_non_null(p);
    assert_string_equal(p, "abcdefghi");
    vlm_alloc_get_stats(&b);
    assert_int_equal(b.current[VLM_MEM_IMAGE] - a.current[VLM_MEM_IMAGE], 100000);
    vlm_free(p);
}

#define THREAD_ITERS 20000
#define THREAD_BLOCK 4096

static void *thread_body(void *arg) {
    vlm_mem_cat cat = (vlm_mem_cat)(intptr_t)arg;
    for (int i = 0; i < THREAD_ITERS; i++) {
        void *p = vlm_alloc(THREAD_BLOCK, cat);
        if (!p) return (void *)1;
        memset(p, 1, 64);
        vlm_free(p);
    }
    /* Hold 8 blocks at once at the end so the peak is known from below. */
    void *held[8];
    for (int i = 0; i < 8; i++) held[i] = vlm_alloc(THREAD_BLOCK, cat);
    for (int i = 0; i < 8; i++) vlm_free(held[i]);
    return NULL;
}

static void test_two_threads(void **state) {
    (void)state;
    vlm_alloc_reset_peaks();
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    pthread_t t1, t2;
    pthread_create(&t1, NULL, thread_body, (void *)(intptr_t)VLM_MEM_ACTIVATIONS);
    pthread_create(&t2, NULL, thread_body, (void *)(intptr_t)VLM_MEM_SCRATCH);
    void *r1, *r2;
    pthread_join(t1, &r1);
    pthread_join(t2, &r2);
    assert_null(r1);
    assert_null(r2);
    vlm_alloc_get_stats(&b);
    /* Every byte came back, per category and in total. */
    assert_int_equal(b.current[VLM_MEM_ACTIVATIONS], a.current[VLM_MEM_ACTIVATIONS]);
    assert_int_equal(b.current[VLM_MEM_SCRATCH], a.current[VLM_MEM_SCRATCH]);
    assert_int_equal(b.total_current, a.total_current);
    assert_int_equal(b.alloc_count - a.alloc_count, 2 * (THREAD_ITERS + 8));
    assert_int_equal(b.free_count - a.free_count, 2 * (THREAD_ITERS + 8));
    /* Each thread held 8 blocks of its category at once; at most 9 (8 held
     * plus none: the loop frees before allocating). */
    assert_int_equal(b.peak[VLM_MEM_ACTIVATIONS] - a.current[VLM_MEM_ACTIVATIONS],
                     8 * THREAD_BLOCK);
    assert_int_equal(b.peak[VLM_MEM_SCRATCH] - a.current[VLM_MEM_SCRATCH], 8 * THREAD_BLOCK);
    assert_true(b.total_peak - a.total_current >= 8 * THREAD_BLOCK);
    assert_true(b.total_peak - a.total_current <= 16 * THREAD_BLOCK);
}

static void test_overflow_rejected(void **state) {
    (void)state;
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    assert_null(vlm_alloc(SIZE_MAX, VLM_MEM_OTHER));
    assert_null(vlm_alloc(SIZE_MAX - 10, VLM_MEM_OTHER));
    assert_null(vlm_calloc(SIZE_MAX / 2, 3, VLM_MEM_OTHER));
    assert_null(vlm_calloc((size_t)1 << 33, (size_t)1 << 33, VLM_MEM_OTHER));
    vlm_alloc_get_stats(&b);
    assert_int_equal(b.failed_count - a.failed_count, 4);
    assert_int_equal(b.total_current, a.total_current);
    size_t out;
    assert_false(vlm_size_mul(SIZE_MAX, 2, &out));
    assert_true(vlm_size_mul(1000, 1000, &out));
    assert_int_equal(out, 1000000);
}

static void test_fault_injection_exact(void **state) {
    (void)state;
    uint64_t base = vlm_alloc_count();
    /* Fail the 3rd allocation from now, and only that one. */
    vlm_alloc_fail_at(base + 3, false);
    void *p[6];
    for (int i = 0; i < 6; i++) p[i] = vlm_alloc(16, VLM_MEM_OTHER);
    vlm_alloc_fail_at(0, false);
    for (int i = 0; i < 6; i++) {
        if (i == 2)
            assert_null(p[i]);
        else
            assert_non_null(p[i]);
        vlm_free(p[i]);
    }
    /* Sticky: the 2nd from now and every one after. */
    base = vlm_alloc_count();
    vlm_alloc_fail_at(base + 2, true);
    for (int i = 0; i < 6; i++) p[i] = vlm_alloc(16, VLM_MEM_OTHER);
    vlm_alloc_fail_at(0, false);
    assert_non_null(p[0]);
    for (int i = 1; i < 6; i++) assert_null(p[i]);
    vlm_free(p[0]);
    void *q = vlm_alloc(16, VLM_MEM_OTHER);
    assert_non_null(q);
    vlm_free(q);
}

static void test_leak_report(void **state) {
    (void)state;
    vlm_alloc_set_tracking(true);
    void *leak = vlm_alloc(12345, VLM_MEM_KV_CACHE);
    assert_non_null(leak);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    size_t n = vlm_alloc_leak_report(f);
    fclose(f);
    assert_true(n >= 1);
    assert_non_null(strstr(buf, "kv_cache"));
    assert_non_null(strstr(buf, "12345 bytes"));
    assert_non_null(strstr(buf, "test_alloc.c"));
    free(buf);
    vlm_free(leak);
    f = open_memstream(&buf, &len);
    vlm_alloc_leak_report(f);
    fclose(f);
    assert_null(strstr(buf, "12345 bytes"));
    free(buf);
}

static void test_mapped_separate(void **state) {
    (void)state;
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    vlm_alloc_note_mapped(1 << 20);
    vlm_alloc_get_stats(&b);
    assert_int_equal(b.mapped_current - a.mapped_current, 1 << 20);
    assert_int_equal(b.total_current, a.total_current);
    vlm_alloc_note_mapped(-(1 << 20));
    vlm_alloc_get_stats(&b);
    assert_int_equal(b.mapped_current, a.mapped_current);
}

static void test_cat_names(void **state) {
    (void)state;
    for (int i = 0; i < VLM_MEM_CAT_COUNT; i++)
        assert_int_equal(vlm_mem_cat_parse(vlm_mem_cat_name((vlm_mem_cat)i)), i);
    assert_int_equal(vlm_mem_cat_parse("nope"), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_category_accounting),
        cmocka_unit_test(test_note_external),
        cmocka_unit_test(test_realloc_keeps_category),
        cmocka_unit_test(test_two_threads),
        cmocka_unit_test(test_overflow_rejected),
        cmocka_unit_test(test_fault_injection_exact),
        cmocka_unit_test(test_leak_report),
        cmocka_unit_test(test_mapped_separate),
        cmocka_unit_test(test_cat_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
