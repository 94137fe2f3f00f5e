/* tensor/quant: dequantization of every GGUF block type against numpy
 * vectors (reference/gguf_vectors.py, bit for bit), quantization error
 * bounds, and the dot products against dequantize + dot. */
#include "testutil.h"

#include "tensor/quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const vlm_dtype block_types[] = {
    VLM_DTYPE_Q4_0, VLM_DTYPE_Q4_1, VLM_DTYPE_Q5_0, VLM_DTYPE_Q5_1, VLM_DTYPE_Q8_0,
    VLM_DTYPE_Q2_K, VLM_DTYPE_Q3_K, VLM_DTYPE_Q4_K, VLM_DTYPE_Q5_K, VLM_DTYPE_Q6_K,
};
#define N_BLOCK_TYPES (sizeof block_types / sizeof block_types[0])

/* xorshift64*: deterministic test data. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng_u64(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}
static float rng_uniform(void) { /* [0, 1) */
    return (float)(rng_u64() >> 40) / (float)(1u << 24);
}
static float rng_normal(void) {
    float u1 = rng_uniform() + 1e-7f, u2 = rng_uniform();
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_dequant_matches_numpy(void **state) {
    (void)state;
    for (size_t t = 0; t < N_BLOCK_TYPES; t++) {
        const vlm_dtype_info *info = vlm_dtype_get(block_types[t]);
        char rel[128];
        size_t nraw, nref;
        snprintf(rel, sizeof rel, "tests/data/gguf/blocks_%s.bin", info->name);
        uint8_t *raw = tu_read_file(tu_src(rel), &nraw);
        snprintf(rel, sizeof rel, "tests/data/gguf/blocks_%s.f32", info->name);
        float *ref = tu_read_file(tu_src(rel), &nref);
        assert_non_null(raw);
        assert_non_null(ref);
        assert_int_equal(nraw % info->block_bytes, 0);
        size_t n = nraw / info->block_bytes * info->block_elems;
        assert_int_equal(nref, n * 4);
        /* At an odd address too: blocks may sit anywhere. */
        uint8_t *odd = malloc(nraw + 1);
        memcpy(odd + 1, raw, nraw);
        float *y = malloc(n * 4), *y2 = malloc(n * 4);
        assert_true(vlm_dequantize(block_types[t], raw, y, n));
        assert_true(vlm_to_f32(block_types[t], odd + 1, y2, n));
        for (size_t i = 0; i < n; i++) {
            if (f32_bits(y[i]) != f32_bits(ref[i]) || f32_bits(y2[i]) != f32_bits(ref[i])) {
                fail_msg("%s element %zu: got %.9g, numpy %.9g", info->name, i, (double)y[i],
                         (double)ref[i]);
            }
        }
        /* Not a whole number of blocks. */
        assert_false(vlm_dequantize(block_types[t], raw, y, n - 1));
        free(odd);
        free(y);
        free(y2);
        free(raw);
        free(ref);
    }
    float f;
    assert_false(vlm_dequantize(VLM_DTYPE_F32, &f, &f, 1));
    assert_false(vlm_quant_is_block(VLM_DTYPE_BF16));
    assert_true(vlm_quant_is_block(VLM_DTYPE_Q6_K));
}

/* Values on the quantization grid come back exactly. */
static void test_quantize_exact_grid(void **state) {
    (void)state;
    float x[32], y[32];
    uint8_t b[34];
    for (int j = 0; j < 32; j++) x[j] = (float)(j * 8 - 127) / 128.0f; /* k * 2^-7 */
    x[5] = 127.0f / 128.0f;                                            /* amax: d = 2^-7 */
    assert_true(vlm_quantize(VLM_DTYPE_Q8_0, x, b, 32));
    assert_true(vlm_dequantize(VLM_DTYPE_Q8_0, b, y, 32));
    assert_memory_equal(x, y, sizeof x);

    for (int j = 0; j < 32; j++) x[j] = (float)((j * 7) % 16 - 8) * 0.25f;
    x[3] = -2.0f; /* the extreme value: d = 0.25 */
    assert_true(vlm_quantize(VLM_DTYPE_Q4_0, x, b, 32));
    assert_true(vlm_dequantize(VLM_DTYPE_Q4_0, b, y, 32));
    assert_memory_equal(x, y, sizeof x);

    /* All zeros stay zeros, for every quantizable type. */
    static float z[256], zy[256];
    uint8_t zb[512]; /* 8 Q8_0 blocks of 34 bytes */
    for (vlm_dtype t = VLM_DTYPE_Q4_0; t <= VLM_DTYPE_Q6_K; t++) {
        if (!vlm_quant_can_quantize(t)) {
            assert_false(vlm_quantize(t, z, zb, 256));
            continue;
        }
        memset(zy, 0x55, sizeof zy);
        assert_true(vlm_quantize(t, z, zb, 256));
        assert_true(vlm_dequantize(t, zb, zy, 256));
        for (int j = 0; j < 256; j++) assert_true(zy[j] == 0.0f);
    }
    assert_false(vlm_quantize(VLM_DTYPE_Q8_0, z, zb, 31));
}

#define NQ 8192

/* Random rows: gaussian blocks at scales from 1e-3 to 1e3, some with one
 * outlier, some constant, some all positive. */
static void fill_random(float *x, size_t n) {
    for (size_t i = 0; i < n; i += 256) {
        float scale = powf(10.0f, (float)(rng_u64() % 7) - 3.0f);
        int kind = (int)(rng_u64() % 4);
        for (size_t j = i; j < i + 256 && j < n; j++) {
            x[j] = rng_normal() * scale;
            if (kind == 2) x[j] = fabsf(x[j]) + scale;
        }
        if (kind == 1) x[i + rng_u64() % 256] = 40.0f * scale;
        if (kind == 3) {
            for (size_t j = i; j < i + 32; j++) x[j] = 0.5f * scale;
        }
    }
}

static void test_quantize_q8_0_bound(void **state) {
    (void)state;
    float *x = malloc(NQ * 4), *y = malloc(NQ * 4);
    uint8_t *b = malloc(NQ / 32 * 34);
    fill_random(x, NQ);
    assert_true(vlm_quantize(VLM_DTYPE_Q8_0, x, b, NQ));
    assert_true(vlm_dequantize(VLM_DTYPE_Q8_0, b, y, NQ));
    for (size_t i = 0; i < NQ / 32; i++) {
        float d = vlm_f16_to_f32((uint16_t)(b[34 * i] | (b[34 * i + 1] << 8)));
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * i + j]));
        /* The scale is amax/127 rounded to f16. */
        /* The scale is amax/127 rounded to f16 (relative 2^-11; absolute
         * 2^-25 where it is subnormal). */
        assert_true(fabsf(d - amax / 127.0f) <= fmaxf(amax / 127.0f * 0x1p-11f, 0x1p-25f));
        for (int j = 0; j < 32; j++) {
            /* Half a step, or the excess beyond 127 d where rounding the
             * scale down clamped the largest weights. */
            float e = fabsf(x[32 * i + j] - y[32 * i + j]);
            float lim = fmaxf(0.5f * d, fabsf(x[32 * i + j]) - 127.0f * d);
            if (e > lim * (1.0f + 1e-6f))
                fail_msg("Q8_0 block %zu elem %d: error %g > %g", i, j, (double)e, (double)lim);
        }
    }
    free(x);
    free(y);
    free(b);
}

static void test_quantize_q4_0_bound(void **state) {
    (void)state;
    float *x = malloc(NQ * 4), *y = malloc(NQ * 4);
    uint8_t *b = malloc(NQ / 32 * 18);
    fill_random(x, NQ);
    assert_true(vlm_quantize(VLM_DTYPE_Q4_0, x, b, NQ));
    assert_true(vlm_dequantize(VLM_DTYPE_Q4_0, b, y, NQ));
    for (size_t i = 0; i < NQ / 32; i++) {
        float d = fabsf(vlm_f16_to_f32((uint16_t)(b[18 * i] | (b[18 * i + 1] << 8))));
        for (int j = 0; j < 32; j++) {
            float xv = x[32 * i + j], e = fabsf(xv - y[32 * i + j]);
            /* Inside the grid's span the error is at most half a step;
             * beyond +7 d (the side opposite the extreme) it is clamped. */
            float lim = fabsf(xv) <= 7.5f * d ? 0.5f * d : fabsf(xv) - 7.0f * d;
            if (e > lim * (1.0f + 1e-5f) + 1e-30f)
                fail_msg("Q4_0 block %zu elem %d: x %g error %g > %g", i, j, (double)xv, (double)e,
                         (double)lim);
            assert_true(e <= d * 1.0001f);
        }
    }
    free(x);
    free(y);
    free(b);
}

/* Q4_K: every weight is within half a step of its sub-block's grid unless it
 * lies outside the grid's span; the error over gaussian data is close to
 * what a uniform 16-level quantizer gives. */
static void test_quantize_q4_k_bound(void **state) {
    (void)state;
    float *x = malloc(NQ * 4), *y = malloc(NQ * 4);
    uint8_t *b = malloc(NQ / 256 * 144);
    fill_random(x, NQ);
    assert_true(vlm_quantize(VLM_DTYPE_Q4_K, x, b, NQ));
    assert_true(vlm_dequantize(VLM_DTYPE_Q4_K, b, y, NQ));
    double worst_rel = 0;
    for (size_t i = 0; i < NQ / 256; i++) {
        const uint8_t *blk = b + 144 * i;
        float d = vlm_f16_to_f32((uint16_t)(blk[0] | (blk[1] << 8)));
        float dmin = vlm_f16_to_f32((uint16_t)(blk[2] | (blk[3] << 8)));
        double se = 0, sx = 0;
        for (int s = 0; s < 8; s++) {
            const uint8_t *p = blk + 4;
            int sc = s < 4 ? p[s] & 63 : (p[s + 4] & 15) | ((p[s - 4] >> 6) << 4);
            int mn = s < 4 ? p[s + 4] & 63 : (p[s + 4] >> 4) | ((p[s] >> 6) << 4);
            float dl = d * (float)sc, ml = dmin * (float)mn;
            float mx = -INFINITY, mi = INFINITY;
            for (int l = 0; l < 32; l++) {
                mx = fmaxf(mx, x[256 * i + 32 * s + l]);
                mi = fminf(mi, x[256 * i + 32 * s + l]);
            }
            for (int l = 0; l < 32; l++) {
                size_t k = 256 * i + 32 * s + l;
                float lo = -ml, hi = dl * 15.0f - ml, e = fabsf(x[k] - y[k]);
                float lim = 0.5f * dl;
                if (x[k] < lo) lim = lo - x[k];
                if (x[k] > hi) lim = x[k] - hi;
                if (e > lim * 1.0001f + 1e-6f * fabsf(x[k]) + 1e-30f)
                    fail_msg("Q4_K block %zu sub %d elem %d: error %g > %g", i, s, l, (double)e,
                             (double)lim);
                /* The grid never sits far off the data: at most one range. */
                assert_true(e <= (mx - fminf(mi, 0.0f)) * 1.0001f + 1e-30f);
                se += (double)e * e;
                sx += (double)x[k] * x[k];
            }
        }
        double rel = sqrt(se / sx);
        if (rel > worst_rel) worst_rel = rel;
    }
    print_message("Q4_K worst super-block relative rms error %.4f\n", worst_rel);
    /* Blocks with a 40-sigma outlier are the worst: the outlier's sub-block
     * sets d, the others get coarse 6-bit scales. */
    assert_true(worst_rel < 0.15);
    free(x);
    free(y);
    free(b);
}

/* Relative rms error on unit gaussian data. A uniform quantizer with L
 * levels over a 32-sample gaussian range (about +-2 sigma) gives roughly
 * 4 / (L - 1) / sqrt(12): 0.077 for 16 levels, 0.0045 for 255. */
static void test_quantize_gaussian_rms(void **state) {
    (void)state;
    const vlm_dtype types[] = {VLM_DTYPE_Q8_0, VLM_DTYPE_Q4_0, VLM_DTYPE_Q4_K};
    const double limit[] = {0.006, 0.09, 0.075};
    float *x = malloc(NQ * 4), *y = malloc(NQ * 4);
    uint8_t *b = malloc(NQ / 32 * 34);
    for (size_t i = 0; i < NQ; i++) x[i] = rng_normal();
    for (int t = 0; t < 3; t++) {
        assert_true(vlm_quantize(types[t], x, b, NQ));
        assert_true(vlm_dequantize(types[t], b, y, NQ));
        double se = 0, sx = 0;
        for (size_t i = 0; i < NQ; i++) {
            se += (double)(x[i] - y[i]) * (x[i] - y[i]);
            sx += (double)x[i] * x[i];
        }
        print_message("%s gaussian relative rms error %.4f\n", vlm_dtype_get(types[t])->name,
                      sqrt(se / sx));
        assert_true(sqrt(se / sx) < limit[t]);
    }
    free(x);
    free(y);
    free(b);
}

static void test_quantize_nonfinite(void **state) {
    (void)state;
    float x[256];
    uint8_t b[8 * 34]; /* the largest: 8 Q8_0 blocks */
    float y[256];
    for (int i = 0; i < 256; i++) x[i] = (float)i;
    x[7] = NAN;
    x[100] = INFINITY;
    x[200] = -INFINITY;
    /* Undefined values, but no crash and no undefined conversion (UBSan). */
    assert_true(vlm_quantize(VLM_DTYPE_Q8_0, x, b, 256));
    assert_true(vlm_dequantize(VLM_DTYPE_Q8_0, b, y, 256));
    assert_true(vlm_quantize(VLM_DTYPE_Q4_0, x, b, 256));
    assert_true(vlm_quantize(VLM_DTYPE_Q4_K, x, b, 256));
    assert_true(vlm_dequantize(VLM_DTYPE_Q4_K, b, y, 256));
}

typedef float (*dot_fn)(const void *, const float *, size_t);

static void check_dot(vlm_dtype t, dot_fn fast, dot_fn portable, size_t n) {
    const vlm_dtype_info *info = vlm_dtype_get(t);
    float *w = malloc(n * 4), *x = malloc(n * 4), *wd = malloc(n * 4);
    uint8_t *q = malloc(n / info->block_elems * info->block_bytes + 1);
    fill_random(w, n);
    for (size_t i = 0; i < n; i++) x[i] = rng_normal();
    assert_true(vlm_quantize(t, w, q, n));
    assert_true(vlm_dequantize(t, q, wd, n));
    double ref = 0, mag = 0;
    for (size_t i = 0; i < n; i++) {
        ref += (double)wd[i] * x[i];
        mag += fabs((double)wd[i] * x[i]);
    }
    float a = fast(q, x, n), p = portable(q, x, n), g = -1;
    assert_true(vlm_quant_dot(t, q, x, n, &g));
    assert_true(g == a);
    double tol = 1e-5 * mag + 1e-30;
    if (fabs(a - ref) > tol || fabs(p - ref) > tol)
        fail_msg("%s dot n=%zu: fast %.9g portable %.9g reference %.9g (tol %g)", info->name, n,
                 (double)a, (double)p, ref, tol);
    free(w);
    free(x);
    free(wd);
    free(q);
}

static void test_dot_products(void **state) {
    (void)state;
    const size_t sizes[] = {256, 512, 3072, 8192};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        check_dot(VLM_DTYPE_Q8_0, vlm_dot_q8_0_f32, vlm_dot_q8_0_f32_portable, sizes[s]);
        check_dot(VLM_DTYPE_Q4_0, vlm_dot_q4_0_f32, vlm_dot_q4_0_f32_portable, sizes[s]);
        check_dot(VLM_DTYPE_Q4_K, vlm_dot_q4_k_f32, vlm_dot_q4_k_f32_portable, sizes[s]);
    }
    float out = 7;
    assert_true(vlm_dot_q8_0_f32(NULL, NULL, 0) == 0.0f);
    assert_false(vlm_quant_dot(VLM_DTYPE_Q6_K, NULL, NULL, 0, &out));
    assert_true(out == 7);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant_matches_numpy), cmocka_unit_test(test_quantize_exact_grid),
        cmocka_unit_test(test_quantize_q8_0_bound),   cmocka_unit_test(test_quantize_q4_0_bound),
        cmocka_unit_test(test_quantize_q4_k_bound),   cmocka_unit_test(test_quantize_nonfinite),
        cmocka_unit_test(test_quantize_gaussian_rms), cmocka_unit_test(test_dot_products),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
