/* tensor/dtype: f16 and bf16 conversions against numpy (f16) and PyTorch
 * (bf16) values from reference/dtype_vectors.py (round to nearest even,
 * subnormals, overflow to inf, NaN), and the type table. */
#include "testutil.h"

#include "tensor/dtype.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static bool f16_is_nan(uint16_t h) {
    return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
}
static bool bf16_is_nan(uint16_t h) {
    return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu);
}

static void test_f32_to_half_types(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = tu_read_file(tu_src("tests/data/dtype/f32_cases.bin"), &len);
    assert_non_null(buf);
    assert_int_equal(len % 8, 0);
    assert_true(len / 8 > 10000);
    size_t nan_cases = 0;
    for (size_t i = 0; i < len / 8; i++) {
        uint32_t in;
        uint16_t want16, wantb;
        memcpy(&in, buf + 8 * i, 4);
        memcpy(&want16, buf + 8 * i + 4, 2);
        memcpy(&wantb, buf + 8 * i + 6, 2);
        float f = from_bits(in);
        uint16_t got16 = vlm_f32_to_f16(f), gotb = vlm_f32_to_bf16(f);
        if (isnan(f)) {
            /* Payloads are unspecified; NaN-ness and sign are not. */
            nan_cases++;
            assert_true(f16_is_nan(got16) && f16_is_nan(want16));
            assert_true(bf16_is_nan(gotb) && bf16_is_nan(wantb));
            assert_int_equal(got16 >> 15, in >> 31);
            continue;
        }
        if (got16 != want16)
            fail_msg("f32 %.9g (0x%08x) -> f16: got 0x%04x, numpy 0x%04x", (double)f, in, got16,
                     want16);
        if (gotb != wantb)
            fail_msg("f32 %.9g (0x%08x) -> bf16: got 0x%04x, torch 0x%04x", (double)f, in, gotb,
                     wantb);
        /* Rounding through bf16 and back is the same conversion. */
        uint32_t back;
        float r = vlm_round_bf16(f);
        memcpy(&back, &r, 4);
        assert_int_equal(back, (uint32_t)wantb << 16);
    }
    assert_true(nan_cases > 0);
    free(buf);
}

static void test_f16_to_f32(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = tu_read_file(tu_src("tests/data/dtype/f16_cases.bin"), &len);
    assert_non_null(buf);
    assert_int_equal(len % 8, 0);
    for (size_t i = 0; i < len / 8; i++) {
        uint16_t in;
        uint32_t want, got;
        memcpy(&in, buf + 8 * i, 2);
        memcpy(&want, buf + 8 * i + 4, 4);
        float f = vlm_f16_to_f32(in);
        memcpy(&got, &f, 4);
        if (f16_is_nan(in)) {
            assert_true(isnan(f));
            assert_int_equal(got >> 31, want >> 31);
            continue;
        }
        if (got != want) fail_msg("f16 0x%04x -> f32: got 0x%08x, numpy 0x%08x", in, got, want);
        /* Every finite f16 value survives the trip back. */
        assert_int_equal(vlm_f32_to_f16(f), in);
    }
    /* bf16 widening is exact for every pattern that is not a NaN. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        if (bf16_is_nan((uint16_t)h)) continue;
        assert_int_equal(vlm_f32_to_bf16(vlm_bf16_to_f32((uint16_t)h)), h);
    }
    free(buf);
}

static void test_dtype_table(void **state) {
    (void)state;
    for (int t = 0; t < VLM_DTYPE_COUNT; t++) {
        const vlm_dtype_info *d = vlm_dtype_get((vlm_dtype)t);
        assert_non_null(d);
        assert_int_equal(vlm_dtype_parse(d->name), t);
    }
    assert_null(vlm_dtype_get(VLM_DTYPE_COUNT));
    assert_int_equal(vlm_dtype_parse("q8_0"), -1);
    assert_int_equal(vlm_dtype_parse(NULL), -1);
    uint64_t n;
    assert_true(vlm_dtype_nbytes(VLM_DTYPE_Q4_K, 512, &n));
    assert_int_equal(n, 288);
    assert_false(vlm_dtype_nbytes(VLM_DTYPE_Q4_K, 100, &n));
    assert_false(vlm_dtype_nbytes(VLM_DTYPE_F32, UINT64_MAX / 2, &n));
    assert_true(vlm_dtype_nbytes(VLM_DTYPE_BF16, 3, &n));
    assert_int_equal(n, 6);

    const uint16_t h[3] = {0x3c00, 0xc000, 0x0001}; /* 1, -2, 2^-24 */
    const double dd[2] = {0.5, -1e300};
    float out[3];
    assert_true(vlm_dtype_to_f32(VLM_DTYPE_F16, h, out, 3));
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0x1p-24f);
    assert_true(vlm_dtype_to_f32(VLM_DTYPE_BF16, h, out, 1));
    assert_true(out[0] == 0x1p-7f); /* bits 0x3c00 << 16 */
    assert_true(vlm_dtype_to_f32(VLM_DTYPE_F64, dd, out, 2));
    assert_true(out[0] == 0.5f && isinf(out[1]) && out[1] < 0);
    assert_false(vlm_dtype_to_f32(VLM_DTYPE_I32, h, out, 1));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_to_half_types),
        cmocka_unit_test(test_f16_to_f32),
        cmocka_unit_test(test_dtype_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
