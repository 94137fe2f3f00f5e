/* base/arena: alignment, growth, reset, mark/rewind, high water, fixed
 * capacity, trim, overflow, and allocation failures while growing. */
#include "testutil.h"

#include "base/alloc.h"
#include "base/arena.h"

#include <string.h>

static uint64_t cat_bytes(vlm_mem_cat cat) {
    vlm_mem_stats s;
    vlm_alloc_get_stats(&s);
    return s.current[cat];
}

static void test_alignment_and_no_overlap(void **state) {
    (void)state;
    vlm_arena *a;
    assert_int_equal(vlm_arena_create(&a, "t", VLM_MEM_SCRATCH, 4096, NULL), VLM_OK);
    static const size_t sizes[] = {1, 3, 63, 64, 65, 100, 0, 1000, 7};
    enum { N = sizeof sizes / sizeof sizes[0] };
    unsigned char *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = vlm_arena_push(a, sizes[i]);
        assert_non_null(p[i]);
        assert_int_equal((uintptr_t)p[i] % 64, 0);
        memset(p[i], i + 1, sizes[i]);
        for (int j = 0; j < i; j++) assert_ptr_not_equal(p[i], p[j]);
    }
    /* Every push still holds its own pattern: nothing overlapped. */
    for (int i = 0; i < N; i++)
        for (size_t k = 0; k < sizes[i]; k++) assert_int_equal(p[i][k], i + 1);
    /* used counts whole 64-byte units; a 0-byte push takes one unit */
    assert_int_equal(vlm_arena_used(a), 64 * (1 + 1 + 1 + 1 + 2 + 2 + 1 + 16 + 1));
    unsigned char *z = vlm_arena_push_zero(a, 300);
    assert_non_null(z);
    for (int k = 0; k < 300; k++) assert_int_equal(z[k], 0);
    vlm_arena_destroy(a);
}

static void test_growth_and_accounting(void **state) {
    (void)state;
    uint64_t base = cat_bytes(VLM_MEM_ACTIVATIONS);
    vlm_arena *a;
    assert_int_equal(vlm_arena_create(&a, "grow", VLM_MEM_ACTIVATIONS, 1024, NULL), VLM_OK);
    assert_int_equal(vlm_arena_chunk_count(a), 1);
    assert_int_equal(vlm_arena_capacity(a), 1024);
    /* The arena's bytes (struct, chunk and its header) are in its category. */
    uint64_t after_create = cat_bytes(VLM_MEM_ACTIVATIONS) - base;
    assert_true(after_create >= 1024);
    for (int i = 0; i < 10; i++) assert_non_null(vlm_arena_push(a, 200)); /* 256 each */
    /* 4 pushes of 256 fill a 1024 chunk: 10 need 3 chunks. */
    assert_int_equal(vlm_arena_chunk_count(a), 3);
    assert_int_equal(vlm_arena_used(a), 10 * 256);
    /* A push larger than a chunk gets a chunk of its own size. */
    char *big = vlm_arena_push(a, 5000);
    assert_non_null(big);
    memset(big, 7, 5000);
    assert_int_equal(vlm_arena_chunk_count(a), 4);
    assert_int_equal(vlm_arena_capacity(a), 3 * 1024 + 5056);
    assert_int_equal(cat_bytes(VLM_MEM_ACTIVATIONS) - base,
                     after_create + 2 * (1024 + 64) + (5056 + 64));
    vlm_arena_destroy(a);
    assert_int_equal(cat_bytes(VLM_MEM_ACTIVATIONS), base);
}

static void test_reset_reuse_high_water(void **state) {
    (void)state;
    vlm_arena *a;
    assert_int_equal(vlm_arena_create(&a, "reset", VLM_MEM_SCRATCH, 1024, NULL), VLM_OK);
    void *first = vlm_arena_push(a, 10);
    for (int i = 0; i < 9; i++) assert_non_null(vlm_arena_push(a, 500));
    size_t chunks = vlm_arena_chunk_count(a);
    size_t used = vlm_arena_used(a);
    assert_int_equal(vlm_arena_high_water(a), used);
    uint64_t count = vlm_alloc_count();
    vlm_arena_reset(a);
    assert_int_equal(vlm_arena_used(a), 0);
    assert_int_equal(vlm_arena_high_water(a), used);
    /* The same pointers come back and no chunk is allocated anew. */
    assert_ptr_equal(vlm_arena_push(a, 10), first);
    for (int i = 0; i < 9; i++) assert_non_null(vlm_arena_push(a, 500));
    assert_int_equal(vlm_arena_chunk_count(a), chunks);
    assert_int_equal(vlm_alloc_count(), count);
    vlm_arena_reset(a);
    assert_non_null(vlm_arena_push(a, 64));
    assert_int_equal(vlm_arena_high_water(a), used);
    vlm_arena_reset_high_water(a);
    assert_int_equal(vlm_arena_high_water(a), 64);
    vlm_arena_destroy(a);
}

static void test_mark_rewind(void **state) {
    (void)state;
    vlm_arena *a;
    assert_int_equal(vlm_arena_create(&a, "mark", VLM_MEM_SCRATCH, 512, NULL), VLM_OK);
    assert_non_null(vlm_arena_push(a, 100));
    vlm_arena_mark m = vlm_arena_mark_get(a);
    void *after_mark = vlm_arena_push(a, 100);
    /* Go into further chunks, then come back. */
    for (int i = 0; i < 6; i++) assert_non_null(vlm_arena_push(a, 400));
    assert_true(vlm_arena_chunk_count(a) > 1);
    vlm_arena_rewind(a, m);
    assert_int_equal(vlm_arena_used(a), 128);
    assert_ptr_equal(vlm_arena_push(a, 100), after_mark);
    /* Nested marks. */
    vlm_arena_mark m2 = vlm_arena_mark_get(a);
    void *x = vlm_arena_push(a, 1);
    vlm_arena_rewind(a, m2);
    assert_ptr_equal(vlm_arena_push(a, 1), x);
    vlm_arena_rewind(a, m);
    assert_int_equal(vlm_arena_used(a), 128);
    vlm_arena_destroy(a);
}

static void test_fixed_capacity(void **state) {
    (void)state;
    vlm_arena *a;
    assert_int_equal(vlm_arena_create_fixed(&a, "plan", VLM_MEM_ACTIVATIONS, 256, NULL), VLM_OK);
    assert_true(vlm_arena_is_fixed(a));
    uint64_t count = vlm_alloc_count();
    assert_non_null(vlm_arena_push(a, 128));
    assert_non_null(vlm_arena_push(a, 100));
    assert_null(vlm_arena_push(a, 1)); /* 256 bytes are in use */
    assert_null(vlm_arena_push(a, 1000));
    assert_int_equal(vlm_arena_used(a), 256);
    assert_int_equal(vlm_arena_chunk_count(a), 1);
    assert_int_equal(vlm_alloc_count(), count); /* it never asked for more */
    vlm_arena_reset(a);
    assert_non_null(vlm_arena_push(a, 256));
    assert_null(vlm_arena_push(a, 1));
    vlm_arena_destroy(a);
    /* capacity is rounded up to the 64-byte unit */
    assert_int_equal(vlm_arena_create_fixed(&a, "odd", VLM_MEM_ACTIVATIONS, 100, NULL), VLM_OK);
    assert_int_equal(vlm_arena_capacity(a), 128);
    assert_non_null(vlm_arena_push(a, 65));
    assert_null(vlm_arena_push(a, 1));
    vlm_arena_destroy(a);
}

static void test_trim(void **state) {
    (void)state;
    uint64_t base = cat_bytes(VLM_MEM_SCRATCH);
    vlm_arena *a;
    assert_int_equal(vlm_arena_create(&a, "trim", VLM_MEM_SCRATCH, 1024, NULL), VLM_OK);
    uint64_t one_chunk = cat_bytes(VLM_MEM_SCRATCH) - base;
    for (int i = 0; i < 20; i++) assert_non_null(vlm_arena_push(a, 1000));
    assert_int_equal(vlm_arena_chunk_count(a), 20);
    /* While in use, trim frees nothing that is live. */
    assert_int_equal(vlm_arena_trim(a), 0);
    vlm_arena_reset(a);
    assert_non_null(vlm_arena_push(a, 1000));
    assert_non_null(vlm_arena_push(a, 1000)); /* in chunk 2 */
    /* Chunks 3..20 are empty: trim gives back 18 chunks of 1024 + 64. */
    assert_int_equal(vlm_arena_trim(a), 18 * (1024 + 64));
    assert_int_equal(vlm_arena_chunk_count(a), 2);
    vlm_arena_reset(a);
    assert_int_equal(vlm_arena_trim_cb(a), 1024 + 64);
    assert_int_equal(vlm_arena_chunk_count(a), 1);
    assert_int_equal(cat_bytes(VLM_MEM_SCRATCH) - base, one_chunk);
    /* The arena still works after trimming. */
    for (int i = 0; i < 5; i++) assert_non_null(vlm_arena_push(a, 1000));
    vlm_arena_destroy(a);
    assert_int_equal(cat_bytes(VLM_MEM_SCRATCH), base);
}

static void test_overflow(void **state) {
    (void)state;
    vlm_arena *a;
    assert_int_equal(vlm_arena_create(&a, "ovf", VLM_MEM_SCRATCH, 1024, NULL), VLM_OK);
    assert_null(vlm_arena_push(a, SIZE_MAX));
    assert_null(vlm_arena_push(a, SIZE_MAX - 70));
    assert_null(vlm_arena_push_array(a, SIZE_MAX / 2, 4));
    assert_non_null(vlm_arena_push_array(a, 10, 8));
    assert_int_equal(vlm_arena_used(a), 128);
    vlm_arena_destroy(a);
    vlm_err err;
    assert_int_equal(vlm_arena_create_fixed(&a, "huge", VLM_MEM_SCRATCH, SIZE_MAX, &err),
                     VLM_ERR_INVALID_ARG);
    assert_null(a);
    assert_non_null(strstr(err.msg, "huge"));
}

static void test_fault_during_growth(void **state) {
    (void)state;
    uint64_t base = cat_bytes(VLM_MEM_SCRATCH);
    vlm_arena *a;
    assert_int_equal(vlm_arena_create(&a, "fail", VLM_MEM_SCRATCH, 256, NULL), VLM_OK);
    char *p = vlm_arena_push(a, 200);
    assert_non_null(p);
    /* The next allocation (the second chunk) fails: the push fails and the
     * arena is as it was. */
    vlm_alloc_fail_at(vlm_alloc_count() + 1, false);
    assert_null(vlm_arena_push(a, 200));
    vlm_alloc_fail_at(0, false);
    assert_int_equal(vlm_arena_used(a), 256);
    assert_int_equal(vlm_arena_chunk_count(a), 1);
    assert_non_null(vlm_arena_push(a, 200));
    assert_int_equal(vlm_arena_chunk_count(a), 2);
    vlm_arena_destroy(a);
    assert_int_equal(cat_bytes(VLM_MEM_SCRATCH), base);
}

/* Walk the failing allocation over a whole workload (create, grow, reset,
 * grow again, destroy): every index gives success or a clean failure, and
 * nothing stays allocated. */
static int workload(void) {
    vlm_arena *a;
    vlm_err err;
    vlm_status s = vlm_arena_create(&a, "sweep", VLM_MEM_SCRATCH, 512, &err);
    if (s != VLM_OK) {
        assert_int_equal(s, VLM_ERR_NOMEM);
        assert_non_null(strstr(err.msg, "sweep"));
        return 1;
    }
    int failed = 0;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 12; i++) {
            char *p = vlm_arena_push(a, 300 + (size_t)i * 100);
            if (!p)
                failed = 1;
            else
                memset(p, i, 300 + (size_t)i * 100);
        }
        vlm_arena_reset(a);
        vlm_arena_trim(a);
    }
    vlm_arena_destroy(a);
    return failed;
}

static void test_fault_sweep(void **state) {
    (void)state;
    uint64_t base = cat_bytes(VLM_MEM_SCRATCH);
    uint64_t start = vlm_alloc_count();
    assert_int_equal(workload(), 0);
    uint64_t n_allocs = vlm_alloc_count() - start;
    assert_true(n_allocs >= 10);
    int failures = 0;
    for (uint64_t n = 1; n <= n_allocs + 1; n++) {
        vlm_alloc_fail_at(vlm_alloc_count() + n, false);
        failures += workload();
        vlm_alloc_fail_at(0, false);
        assert_int_equal(cat_bytes(VLM_MEM_SCRATCH), base);
    }
    /* Every index up to n_allocs hit an allocation. */
    assert_int_equal(failures, (int)n_allocs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alignment_and_no_overlap),
        cmocka_unit_test(test_growth_and_accounting),
        cmocka_unit_test(test_reset_reuse_high_water),
        cmocka_unit_test(test_mark_rewind),
        cmocka_unit_test(test_fixed_capacity),
        cmocka_unit_test(test_trim),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_fault_during_growth),
        cmocka_unit_test(test_fault_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
