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
    /* A second session held open keeps the run-time fallback out (it
     * reloads only under a single session): this walk checks that a turn
     * failing at the model's own rung frees all it took. */
    vlm_session *idle = NULL;
    vlm_err err;
    assert_int_equal(vlm_session_new(walk_model, &idle, &err), VLM_OK);
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
    vlm_session_free(idle);
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
    walk_model = m;
    st = turn_work(ids, n_ids);
    walk_model = NULL;
    /* the rung after the turn: a failure inside it reloads one rung down */
    vlm_model_desc d;
    vlm_model_describe(m, &d);
    snprintf(prec, 16, "%s", d.precision);
    *fallbacks = d.fallbacks;
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
            if (getenv("VLM_SWEEP_VERBOSE"))
                fprintf(stderr, "N=%llu: out of memory\n", (unsigned long long)i);
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

/* ---------------------------------------------------------------------------
 * The run-time fallback inside a turn (runtime/api.c, chat_turn): an
 * allocation failing in the image, the prefill or the decode of a turn on
 * the native f32 model makes the model reload at bf16 under the same handle,
 * replay the conversation, and finish the turn with the ids an unfaulted
 * bf16 model gives from the start; the stats say where it failed and between
 * which rungs. At the lowest rung (q4_0), or with a second session open,
 * there is no fallback: VLM_ERR_NOMEM, the session usable. Nothing leaks. */

typedef struct turn_run {
    vlm_status st;
    int32_t ids[2][16]; /* per turn */
    vlm_gen_stats stats[2];
    char prec[16];
    int fallbacks;
} turn_run;

/* Load at `precision` (NULL: the plan's), then `turns` turns (the first with
 * wide.png, the second text only), failing allocation `fail_at` counted from
 * the start of turn `fail_turn` (0: none). extra_session: hold a second
 * session open. */
static turn_run fb_work(const char *precision, int turns, int fail_turn, uint64_t fail_at,
                        bool extra_session, uint64_t *turn_allocs) {
    turn_run r;
    memset(&r, 0, sizeof r);
    vlm_err err;
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.n_threads = 1;
    lo.max_context = 600;
    lo.precision = precision;
    vlm_model *m = NULL;
    assert_int_equal(vlm_model_load(tu_src("tests/data/tiny/f32"), &lo, &m, &err), VLM_OK);
    vlm_image *img = NULL;
    assert_int_equal(vlm_image_load(tu_src("tests/data/tiny/images/wide.png"), 0, &img, &err),
                     VLM_OK);
    vlm_session *s = NULL, *other = NULL;
    assert_int_equal(vlm_session_new(m, &s, &err), VLM_OK);
    if (extra_session) assert_int_equal(vlm_session_new(m, &other, &err), VLM_OK);
    vlm_gen_params gp;
    vlm_gen_params_init(&gp);
    gp.max_tokens = 16;
    gp.ignore_eos = true;
    static const char *const text[2] = {"Describe the image.", "And the colours?"};
    for (int t = 0; t < turns; t++) {
        char *a = NULL;
        uint64_t c0 = vlm_alloc_count();
        if (fail_turn == t + 1) vlm_alloc_fail_at(c0 + fail_at, false);
        r.st = vlm_session_chat(s, text[t], t == 0 ? &img : NULL, t == 0 ? 1 : 0, &gp, &a,
                                &r.stats[t], &err);
        vlm_alloc_fail_at(0, false);
        if (turn_allocs && t == turns - 1) *turn_allocs = vlm_alloc_count() - c0;
        vlm_string_free(a);
        if (r.st && r.st != VLM_ERR_NOMEM) fprintf(stderr, "unexpected: %s\n", err.msg);
        if (r.st) break;
        int n;
        const int32_t *g = vlm_session_last_ids(s, &n);
        assert_int_equal(n, 16);
        memcpy(r.ids[t], g, sizeof r.ids[t]);
    }
    if (r.st == VLM_ERR_NOMEM) {
        /* no fallback: the session goes on (reset, then a turn) */
        char *a = NULL;
        vlm_session_reset(s);
        assert_int_equal(vlm_session_chat(s, text[1], NULL, 0, &gp, &a, NULL, &err), VLM_OK);
        vlm_string_free(a);
    }
    vlm_model_desc d;
    vlm_model_describe(m, &d);
    snprintf(r.prec, sizeof r.prec, "%s", d.precision);
    r.fallbacks = d.fallbacks;
    vlm_session_free(other);
    vlm_session_free(s);
    vlm_image_free(img);
    vlm_model_free(m);
    return r;
}

static void test_turn_fallback(void **state) {
    (void)state;
    vlm_mem_stats before;
    vlm_alloc_get_stats(&before);
    uint64_t per_turn = 0, per_turn2 = 0;
    turn_run native = fb_work(NULL, 2, 0, 0, false, NULL);
    turn_run bf16 = fb_work("bf16", 2, 0, 0, false, NULL);
    assert_int_equal(native.st, VLM_OK);
    assert_int_equal(bf16.st, VLM_OK);
    assert_string_equal(native.prec, "native");
    (void)fb_work(NULL, 1, 0, 0, false, &per_turn);
    (void)fb_work(NULL, 2, 0, 0, false, &per_turn2);
    check_clean(&before, 0);
    /* The second turn's replay holds turn 1 as native answered it; an
     * unfaulted bf16 run equals it only where bf16 answered turn 1 alike. */
    const bool same_turn1 = memcmp(native.ids[0], bf16.ids[0], sizeof native.ids[0]) == 0;
    fprintf(stderr, "turn fallback: turn 1 %llu allocations, turn 2 %llu; turn 1 ids %s at bf16\n",
            (unsigned long long)per_turn, (unsigned long long)per_turn2,
            same_turn1 ? "the same" : "differ");

    /* faults through the first turn (image, prefill, decode) */
    int seen_image = 0, seen_prefill = 0, seen_decode = 0, absorbed = 0;
    const uint64_t step = SLOW_BUILD ? per_turn / 12 + 1 : per_turn / 60 + 1;
    for (uint64_t i = 1; i <= per_turn; i += step) {
        turn_run r = fb_work(NULL, 1, 1, i, false, NULL);
        check_clean(&before, i);
        assert_int_equal(r.st, VLM_OK);
        if (r.stats[0].fallbacks == 0) {
            absorbed++;
            assert_memory_equal(r.ids[0], native.ids[0], sizeof r.ids[0]);
            continue;
        }
        assert_string_equal(r.stats[0].fallback_from, "native");
        assert_string_equal(r.stats[0].fallback_to, "bf16");
        assert_string_equal(r.prec, "bf16");
        assert_true(r.fallbacks >= 1);
        seen_image += !strcmp(r.stats[0].fallback_phase, "image");
        seen_prefill += !strcmp(r.stats[0].fallback_phase, "prefill");
        seen_decode += !strcmp(r.stats[0].fallback_phase, "decode");
        if (memcmp(r.ids[0], bf16.ids[0], sizeof r.ids[0]) != 0)
            fprintf(stderr, "N=%llu (%s): ids differ from bf16's\n", (unsigned long long)i,
                    r.stats[0].fallback_phase);
        assert_memory_equal(r.ids[0], bf16.ids[0], sizeof r.ids[0]);
    }
    fprintf(stderr,
            "turn fallback, turn 1: %d in the image, %d in the prefill, %d in the decode, %d "
            "absorbed\n",
            seen_image, seen_prefill, seen_decode, absorbed);
    assert_true(seen_image > 0 && seen_prefill > 0 && seen_decode > 0);

    /* faults in the second turn: turn 1 (with its image) replayed at bf16 */
    int replayed = 0;
    const uint64_t step2 = SLOW_BUILD ? per_turn2 / 4 + 1 : per_turn2 / 16 + 1;
    for (uint64_t i = 1; i <= per_turn2; i += step2) {
        turn_run r = fb_work(NULL, 2, 2, i, false, NULL);
        check_clean(&before, i);
        assert_int_equal(r.st, VLM_OK);
        assert_memory_equal(r.ids[0], native.ids[0], sizeof r.ids[0]);
        if (r.stats[1].fallbacks == 0) {
            assert_memory_equal(r.ids[1], native.ids[1], sizeof r.ids[1]);
            continue;
        }
        replayed++;
        assert_string_equal(r.prec, "bf16");
        if (same_turn1) assert_memory_equal(r.ids[1], bf16.ids[1], sizeof r.ids[1]);
    }
    assert_true(replayed > 0);

    /* no rung below q4_0; a second session keeps the fallback out */
    int nomem = 0;
    for (uint64_t i = 1; i <= per_turn; i += step) {
        turn_run r = fb_work("q4_0", 1, 1, i, false, NULL);
        check_clean(&before, i);
        assert_true(r.st == VLM_OK || r.st == VLM_ERR_NOMEM);
        assert_int_equal(r.stats[0].fallbacks, 0);
        assert_string_equal(r.prec, "q4_0");
        nomem += r.st == VLM_ERR_NOMEM;
        r = fb_work(NULL, 1, 1, i, true, NULL);
        check_clean(&before, i);
        assert_true(r.st == VLM_OK || r.st == VLM_ERR_NOMEM);
        assert_string_equal(r.prec, "native");
    }
    assert_true(nomem > 0);
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
        cmocka_unit_test(test_turn_fallback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
