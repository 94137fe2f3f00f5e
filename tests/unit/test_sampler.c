/* runtime/sampler on hand-made logits: greedy ties, repetition penalty,
 * temperature, top-k, top-p, min-p, the distribution drawn, and seeding. */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "base/alloc.h"
#include "runtime/sampler.h"

static sampler *make(float temp, int top_k, float top_p, float min_p, float pen, uint64_t seed,
                     int vocab) {
    sampler_params p;
    sampler_params_init(&p);
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = pen;
    p.seed = seed;
    sampler *s = NULL;
    vlm_err err;
    assert_int_equal(sampler_create(&p, vocab, &s, &err), VLM_OK);
    return s;
}

/* Draw n tokens from fixed logits; counts[vocab]. */
static void draw(sampler *s, const float *logits, int vocab, int n, int *counts) {
    float buf[16];
    memset(counts, 0, (size_t)vocab * sizeof *counts);
    for (int i = 0; i < n; i++) {
        memcpy(buf, logits, (size_t)vocab * sizeof *buf);
        int32_t t = sampler_sample(s, buf, NULL, 0);
        assert_true(t >= 0 && t < vocab);
        counts[t]++;
    }
}

static void test_greedy_ties(void **state) {
    (void)state;
    sampler *s = make(0, 0, 1, 0, 1, 0, 5);
    float l[5] = {1, 3, 3, 2, -1};
    assert_int_equal(sampler_sample(s, l, NULL, 0), 1);
    float m[5] = {-INFINITY, -5, -4, -4, -4.5f};
    assert_int_equal(sampler_sample(s, m, NULL, 0), 2);
    sampler_free(s);
}

static void test_repetition_penalty(void **state) {
    (void)state;
    sampler *s = make(0, 0, 1, 0, 2.0f, 0, 4);
    float l[4] = {2.0f, -1.0f, 1.5f, 0.5f};
    int32_t hist[5] = {0, 1, 0, -1, 0}; /* repeats count once; placeholders skipped */
    assert_int_equal(sampler_sample(s, l, hist, 5), 2);
    assert_true(l[0] == 1.0f && l[1] == -2.0f && l[2] == 1.5f && l[3] == 0.5f);
    sampler_free(s);
}

/* Probabilities 0.5, 0.3, 0.15, 0.05. */
static const float P4[4] = {-0.69314718f, -1.2039728f, -1.89712f, -2.9957323f};

static void test_distribution(void **state) {
    (void)state;
    sampler *s = make(1.0f, 0, 1, 0, 1, 42, 4);
    int c[4];
    const int n = 20000;
    draw(s, P4, 4, n, c);
    const double want[4] = {0.5, 0.3, 0.15, 0.05};
    for (int i = 0; i < 4; i++) assert_true(fabs((double)c[i] / n - want[i]) < 0.02);
    sampler_free(s);
    /* A high temperature flattens: token 3 rises well above 5 %. */
    s = make(100.0f, 0, 1, 0, 1, 42, 4);
    draw(s, P4, 4, 4000, c);
    assert_true(c[3] > 4000 / 5);
    sampler_free(s);
}

static void test_top_k(void **state) {
    (void)state;
    int c[4];
    sampler *s = make(1.0f, 1, 1, 0, 1, 1, 4);
    draw(s, P4, 4, 500, c);
    assert_int_equal(c[0], 500);
    sampler_free(s);
    s = make(1.0f, 2, 1, 0, 1, 1, 4);
    draw(s, P4, 4, 2000, c);
    assert_true(c[0] > 0 && c[1] > 0 && c[2] == 0 && c[3] == 0);
    /* Renormalised over the two: 0.5/0.8 = 0.625. */
    assert_true(fabs(c[0] / 2000.0 - 0.625) < 0.04);
    sampler_free(s);
    /* Ties at the k-th logit are kept (as HF does). */
    float tie[4] = {1.0f, 0.5f, 0.5f, -3.0f};
    s = make(1.0f, 2, 1, 0, 1, 3, 4);
    draw(s, tie, 4, 3000, c);
    assert_true(c[0] > 0 && c[1] > 0 && c[2] > 0 && c[3] == 0);
    sampler_free(s);
}

static void test_top_p(void **state) {
    (void)state;
    int c[4];
    sampler *s = make(1.0f, 0, 0.75f, 0, 1, 5, 4); /* 0.5 < 0.75 <= 0.8: tokens 0, 1 */
    draw(s, P4, 4, 2000, c);
    assert_true(c[0] > 0 && c[1] > 0 && c[2] == 0 && c[3] == 0);
    sampler_free(s);
    s = make(1.0f, 0, 0.45f, 0, 1, 5, 4); /* the top token alone */
    draw(s, P4, 4, 500, c);
    assert_int_equal(c[0], 500);
    sampler_free(s);
    s = make(1.0f, 0, 0.9f, 0, 1, 5, 4); /* 0.8 < 0.9 <= 0.95: three tokens */
    draw(s, P4, 4, 4000, c);
    assert_true(c[2] > 0 && c[3] == 0);
    sampler_free(s);
}

static void test_min_p(void **state) {
    (void)state;
    int c[4];
    sampler *s = make(1.0f, 0, 1, 0.2f, 1, 9, 4); /* keep p >= 0.1: tokens 0..2 */
    draw(s, P4, 4, 4000, c);
    assert_true(c[2] > 0 && c[3] == 0);
    sampler_free(s);
    s = make(1.0f, 0, 1, 0.7f, 1, 9, 4); /* keep p >= 0.35: token 0 */
    draw(s, P4, 4, 500, c);
    assert_int_equal(c[0], 500);
    sampler_free(s);
}

static void test_seeds(void **state) {
    (void)state;
    float l[16];
    for (int i = 0; i < 16; i++) l[i] = 0.1f * (float)i;
    int32_t a[64], b[64], c[64];
    sampler *s1 = make(1.0f, 0, 1, 0, 1, 123, 16), *s2 = make(1.0f, 0, 1, 0, 1, 123, 16),
            *s3 = make(1.0f, 0, 1, 0, 1, 124, 16);
    float buf[16];
    for (int i = 0; i < 64; i++) {
        memcpy(buf, l, sizeof buf);
        a[i] = sampler_sample(s1, buf, NULL, 0);
        memcpy(buf, l, sizeof buf);
        b[i] = sampler_sample(s2, buf, NULL, 0);
        memcpy(buf, l, sizeof buf);
        c[i] = sampler_sample(s3, buf, NULL, 0);
    }
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    /* Re-seeding restarts the sequence. */
    sampler_seed(s1, 123);
    for (int i = 0; i < 64; i++) {
        memcpy(buf, l, sizeof buf);
        assert_int_equal(sampler_sample(s1, buf, NULL, 0), a[i]);
    }
    sampler_free(s1);
    sampler_free(s2);
    sampler_free(s3);
}

static void test_bad_params(void **state) {
    (void)state;
    sampler_params p;
    sampler_params_init(&p);
    sampler *s = NULL;
    vlm_err err;
    p.top_p = 0;
    assert_int_equal(sampler_create(&p, 10, &s, &err), VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "top_p"));
    sampler_params_init(&p);
    p.temperature = -1;
    assert_int_equal(sampler_create(&p, 10, &s, &err), VLM_ERR_INVALID_ARG);
    sampler_params_init(&p);
    assert_int_equal(sampler_create(&p, 0, &s, &err), VLM_ERR_INVALID_ARG);
    for (uint64_t i = 1; i <= 4; i++) {
        vlm_alloc_fail_at(vlm_alloc_count() + i, false);
        vlm_status st = sampler_create(&p, 10, &s, &err);
        vlm_alloc_fail_at(0, false);
        if (st == VLM_OK)
            sampler_free(s);
        else
            assert_int_equal(st, VLM_ERR_NOMEM);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_ties),  cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_distribution), cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_seeds),        cmocka_unit_test(test_bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
