/* The engine under allocation failures: load + one image + 16 new tokens on
 * the tiny f32 model (tests/data/tiny/f32). Each injected failure must give
 * success with the unfaulted ids or a clean VLM_ERR_NOMEM, and leave nothing
 * allocated or mapped. The walk is in two parts so it stays affordable: the
 * load alone, then the turn (session, image, prefill, 16 tokens) on a model
 * loaded once. Under AddressSanitizer (a -O0 build) the walks are sampled
 * more thinly; VLM_ALLOC_WALK=all walks every allocation in any build. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "runtime/api_internal.h"
#include "vlm/vlm.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLOW_BUILD 1
#else
#define SLOW_BUILD 0
#endif

static vlm_model *walk_model; /* for the turn part */

static vlm_status load_work(vlm_model **out) {
    vlm_err err;
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.n_threads = 1;
    lo.max_context = 600;
    vlm_status st = vlm_model_load(tu_src("tests/data/tiny/f32"), &lo, out, &err);
    if (st && st != VLM_ERR_NOMEM) fprintf(stderr, "unexpected: %s\n", err.msg);
    return st;
}

static vlm_status turn_work(int32_t *ids, int *n_ids) {
    vlm_err err;
    vlm_session *s = NULL;
    vlm_image *img = NULL;
    char *a = NULL;
    vlm_status st = vlm_image_load(tu_src("tests/data/tiny/images/wide.png"), 0, &img, &err);
    if (!st) st = vlm_session_new(walk_model, &s, &err);
    if (!st) {
        vlm_gen_params gp;
        vlm_gen_params_init(&gp);
        gp.max_tokens = 16;
        gp.ignore_eos = true;
        vlm_gen_stats stats;
        st = vlm_session_chat(s, "Describe the image.", &img, 1, &gp, &a, &stats, &err);
    }
    if (!st) {
        int n;
        const int32_t *g = vlm_session_last_ids(s, &n);
        memcpy(ids, g, (size_t)n * sizeof *ids);
        *n_ids = n;
    }
    if (st && st != VLM_ERR_NOMEM) fprintf(stderr, "unexpected: %s\n", err.msg);
    vlm_string_free(a);
    vlm_session_free(s);
    vlm_image_free(img);
    return st;
}

static void check_clean(const vlm_mem_stats *before, uint64_t i) {
    vlm_mem_stats after;
    vlm_alloc_get_stats(&after);
    if (after.total_current != before->total_current)
        fprintf(stderr, "leak after failing allocation %llu\n", (unsigned long long)i);
    assert_int_equal(after.total_current, before->total_current);
    assert_int_equal(after.mapped_current, before->mapped_current);
}

static void test_alloc_failures_load(void **state) {
    (void)state;
    vlm_mem_stats before;
    vlm_alloc_get_stats(&before);
    uint64_t c0 = vlm_alloc_count();
    vlm_model *m = NULL;
    assert_int_equal(load_work(&m), VLM_OK);
    vlm_model_free(m);
    uint64_t per_run = vlm_alloc_count() - c0;
    check_clean(&before, 0);
    /* Every one of the first HEAD allocations (configs, tensors, model, the
     * start of the tokenizer) and of the last TAIL, and SPREAD spread over
     * the tokenizer's load in between. */
    const bool all = getenv("VLM_ALLOC_WALK") && !strcmp(getenv("VLM_ALLOC_WALK"), "all");
    const uint64_t head = SLOW_BUILD ? 100 : 500, tail_n = SLOW_BUILD ? 30 : 100;
    const uint64_t spread = SLOW_BUILD ? 20 : 100;
    const uint64_t tail = per_run > head + tail_n ? per_run - tail_n : head;
    const uint64_t step = all ? 1 : per_run / spread + 1;
    int runs = 0, ok = 0;
    for (uint64_t i = 1; i <= per_run;
         i = (i < head || i >= tail) ? i + 1 : (i + step < tail ? i + step : tail)) {
        vlm_alloc_fail_at(vlm_alloc_count() + i, false);
        m = NULL;
        vlm_status st = load_work(&m);
        vlm_alloc_fail_at(0, false);
        runs++;
        assert_true(st == VLM_OK || st == VLM_ERR_NOMEM);
        if (st == VLM_OK) {
            ok++;
            assert_non_null(m);
        } else {
            assert_null(m);
        }
        vlm_model_free(m);
        check_clean(&before, i);
    }
    fprintf(stderr, "alloc walk, load: %llu allocations, %d runs, %d succeeded\n",
            (unsigned long long)per_run, runs, ok);
}

static void test_alloc_failures_turn(void **state) {
    (void)state;
    assert_int_equal(load_work(&walk_model), VLM_OK);
    int32_t want[16], got[16];
    int n_want = 0, n_got = 0;
    /* a first turn fills the tokenizer's word cache, which stays */
    assert_int_equal(turn_work(want, &n_want), VLM_OK);
    vlm_mem_stats before;
    vlm_alloc_get_stats(&before);
    uint64_t c0 = vlm_alloc_count();
    assert_int_equal(turn_work(want, &n_want), VLM_OK);
    assert_int_equal(n_want, 16);
    uint64_t per_run = vlm_alloc_count() - c0;
    check_clean(&before, 0);
    /* every allocation (every 8th under ASan) */
    const bool all = getenv("VLM_ALLOC_WALK") && !strcmp(getenv("VLM_ALLOC_WALK"), "all");
    const uint64_t stride = SLOW_BUILD && !all ? 8 : 1;
    int ok = 0, runs = 0;
    for (uint64_t i = 1; i <= per_run; i += stride) {
        runs++;
        vlm_alloc_fail_at(vlm_alloc_count() + i, false);
        vlm_status st = turn_work(got, &n_got);
        vlm_alloc_fail_at(0, false);
        assert_true(st == VLM_OK || st == VLM_ERR_NOMEM);
        if (st == VLM_OK) {
            ok++;
            assert_int_equal(n_got, 16);
            assert_memory_equal(got, want, sizeof want);
        }
        check_clean(&before, i);
    }
    fprintf(stderr, "alloc walk, turn: %llu allocations, %d runs, %d succeeded\n",
            (unsigned long long)per_run, runs, ok);
    vlm_model_free(walk_model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_failures_load),
        cmocka_unit_test(test_alloc_failures_turn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
