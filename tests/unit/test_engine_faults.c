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
    /* A failure while loading now retries one rung down (a second load),
     * so these are thinner than the walk of the turn. */
    const uint64_t head = SLOW_BUILD ? 20 : 120, tail_n = SLOW_BUILD ? 10 : 40;
    const uint64_t spread = SLOW_BUILD ? 8 : 40;
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

/* ---------------------------------------------------------------------------
 * The sweep of issue 7: load + one image + 16 new tokens as one workload,
 * with the run-time fallback in play. A failed allocation while loading
 * makes the loader retry one rung down (f32 native -> bf16 -> q8_0 ...), so
 * a run may complete on a lower rung: its ids must then be those of an
 * unfaulted run at that rung. Otherwise it must end in VLM_ERR_NOMEM, with
 * nothing left allocated or mapped. bench/fault_sweep.sh walks every N. */

typedef struct rung_ref {
    char prec[16];
    int32_t ids[16];
    bool have;
} rung_ref;

static vlm_status sweep_work(const char *precision, int32_t *ids, int *n_ids, char *prec,
                             int *fallbacks) {
    vlm_model *m = NULL;
    vlm_err err;
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.n_threads = 1;
    lo.max_context = 600;
    lo.precision = precision;
    vlm_status st = vlm_model_load(tu_src("tests/data/tiny/f32"), &lo, &m, &err);
    if (st && st != VLM_ERR_NOMEM) fprintf(stderr, "unexpected: %s\n", err.msg);
    if (st) return st;
    vlm_model_desc d;
    vlm_model_describe(m, &d);
    snprintf(prec, 16, "%s", d.precision);
    *fallbacks = d.fallbacks;
    walk_model = m;
    st = turn_work(ids, n_ids);
    walk_model = NULL;
    vlm_model_free(m);
    return st;
}

static void test_alloc_sweep(void **state) {
    (void)state;
    rung_ref refs[8];
    int n_refs = 0;
    char prec[16];
    int fb = 0, n = 0;
    vlm_mem_stats before;
    vlm_alloc_get_stats(&before);
    uint64_t c0 = vlm_alloc_count();
    assert_int_equal(sweep_work(NULL, refs[0].ids, &n, refs[0].prec, &fb), VLM_OK);
    uint64_t per_run = vlm_alloc_count() - c0;
    assert_int_equal(n, 16);
    assert_int_equal(fb, 0);
    refs[0].have = true;
    n_refs = 1;
    check_clean(&before, 0);
    /* N from env (VLM_SWEEP_FROM/TO/STEP: bench/fault_sweep.sh splits the
     * full sweep into slices), else a sample: the first HEAD (configs,
     * plan, model, tensors), SPREAD through the tokenizer and the turn, the
     * last TAIL (the end of the turn; test_alloc_failures_turn walks every
     * allocation of a turn already). */
    const char *ef = getenv("VLM_SWEEP_FROM"), *et = getenv("VLM_SWEEP_TO"),
               *es = getenv("VLM_SWEEP_STEP");
    const uint64_t head = SLOW_BUILD ? 4 : 30, tail_n = SLOW_BUILD ? 4 : 10;
    const uint64_t spread = SLOW_BUILD ? 4 : 20;
    const uint64_t tail = per_run > head + tail_n ? per_run - tail_n : head;
    uint64_t from = ef ? strtoull(ef, NULL, 10) : 1, to = et ? strtoull(et, NULL, 10) : per_run;
    uint64_t fixed_step = es ? strtoull(es, NULL, 10) : 0;
    if (to > per_run) to = per_run;
    const uint64_t step = per_run / spread + 1;
    int runs = 0, ok = 0, lower = 0, nomem = 0;
    for (uint64_t i = from; i <= to;) {
        int32_t got[16];
        int n_got = 0;
        vlm_alloc_fail_at(vlm_alloc_count() + i, false);
        vlm_status st = sweep_work(NULL, got, &n_got, prec, &fb);
        vlm_alloc_fail_at(0, false);
        runs++;
        if (st != VLM_OK && st != VLM_ERR_NOMEM)
            fprintf(stderr, "N=%llu: status %d\n", (unsigned long long)i, (int)st);
        assert_true(st == VLM_OK || st == VLM_ERR_NOMEM);
        check_clean(&before, i);
        if (st == VLM_OK) {
            ok++;
            assert_int_equal(n_got, 16);
            int k = 0;
            while (k < n_refs && strcmp(refs[k].prec, prec) != 0) k++;
            if (k == n_refs) {
                /* an unfaulted run at that rung */
                assert_true(n_refs < 8);
                char p2[16];
                int fb2 = 0, n2 = 0;
                assert_int_equal(sweep_work(prec, refs[k].ids, &n2, p2, &fb2), VLM_OK);
                assert_string_equal(p2, prec);
                snprintf(refs[k].prec, sizeof refs[k].prec, "%s", prec);
                n_refs++;
                check_clean(&before, i);
            }
            if (k > 0) {
                lower++;
                assert_true(fb > 0);
            }
            if (memcmp(got, refs[k].ids, sizeof got) != 0)
                fprintf(stderr, "N=%llu: ids differ from an unfaulted run at %s\n",
                        (unsigned long long)i, prec);
            assert_memory_equal(got, refs[k].ids, sizeof got);
        } else {
            nomem++;
        }
        if (fixed_step)
            i += fixed_step;
        else
            i = (i < head || i >= tail) ? i + 1 : (i + step < tail ? i + step : tail);
    }
    fprintf(stderr,
            "alloc sweep, load + image + 16 tokens: %llu allocations, N %llu..%llu, %d runs: "
            "%d completed (%d on a lower rung), %d out of memory; rungs seen:",
            (unsigned long long)per_run, (unsigned long long)from, (unsigned long long)to, runs, ok,
            lower, nomem);
    for (int k = 0; k < n_refs; k++) fprintf(stderr, " %s", refs[k].prec);
    fputc('\n', stderr);
}

int main(void) {
    if (getenv("VLM_SWEEP_FROM")) {
        /* bench/fault_sweep.sh: the sweep slice only */
        const struct CMUnitTest only[] = {cmocka_unit_test(test_alloc_sweep)};
        return cmocka_run_group_tests(only, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_failures_load),
        cmocka_unit_test(test_alloc_failures_turn),
        cmocka_unit_test(test_alloc_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
