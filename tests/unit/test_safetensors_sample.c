/* Every file in tests/data/safetensors/ holds the stsample tensors (see
 * tools/stsample.c for the formula): vlmtest_sample.safetensors from our
 * writer, and any file written by the `safetensors` Python package with
 * reference/check_safetensors.py (committed as python_sample.safetensors).
 * Our reader must decode each to exactly the formula's values. */
#include "testutil.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "tensor/dtype.h"

static int64_t int_value(const char *name, uint64_t i) {
    if (!strcmp(name, "i64")) return (int64_t)i * 1000003 - 5000000000LL;
    if (!strcmp(name, "i32")) return (int64_t)i * 7919 - 100000;
    if (!strcmp(name, "i16")) return (int64_t)((i * 37) % 65536) - 32768;
    if (!strcmp(name, "i8")) return (int64_t)((i * 13) % 256) - 128;
    if (!strcmp(name, "u8")) return (int64_t)((i * 29) % 256);
    return i % 3 == 0; /* bool */
}

static int64_t read_int(const unsigned char *p, size_t es, bool is_signed) {
    uint64_t u = 0;
    for (size_t k = 0; k < es; k++) u |= (uint64_t)p[k] << (8 * k);
    if (is_signed && es < 8 && (u >> (8 * es - 1)) & 1) u |= ~0ull << (8 * es);
    return (int64_t)u;
}

static void check_file(const char *path) {
    vlm_st_file *f = NULL;
    vlm_err err = {0};
    if (vlm_st_open(path, &f, &err)) fail_msg("%s", err.msg);
    static const struct {
        const char *name, *dtype;
        int rank;
        int64_t shape[3];
    } want[] = {
        {"f64", "F64", 2, {3, 4}},   {"f32", "F32", 3, {2, 3, 4}}, {"f16", "F16", 1, {5}},
        {"bf16", "BF16", 2, {4, 4}}, {"i64", "I64", 1, {3}},       {"i32", "I32", 2, {2, 2}},
        {"i16", "I16", 1, {6}},      {"i8", "I8", 1, {7}},         {"u8", "U8", 2, {2, 5}},
        {"bool", "BOOL", 2, {3, 3}}, {"scalar", "F32", 0, {0}},    {"empty", "F32", 2, {0, 3}},
    };
    assert_int_equal(vlm_st_count(f), sizeof want / sizeof *want);
    for (size_t k = 0; k < sizeof want / sizeof *want; k++) {
        const vlm_st_tensor *t = vlm_st_find(f, want[k].name);
        if (!t) fail_msg("%s: no tensor %s", path, want[k].name);
        assert_string_equal(vlm_dtype_get(t->dtype)->name, want[k].dtype);
        assert_int_equal(t->rank, want[k].rank);
        for (int d = 0; d < t->rank; d++) assert_int_equal(t->shape[d], want[k].shape[d]);
        size_t es = vlm_dtype_get(t->dtype)->block_bytes;
        for (uint64_t i = 0; i < t->nelem; i++) {
            const unsigned char *p = (const unsigned char *)t->data + i * es;
            if (vlm_dtype_get(t->dtype)->is_float) {
                float got;
                assert_true(vlm_dtype_to_f32(t->dtype, p, &got, 1));
                float exp = (float)(((double)(i % 64) - 31) * 0.125);
                if (got != exp)
                    fail_msg("%s: %s[%llu] = %g, want %g", path, want[k].name,
                             (unsigned long long)i, got, exp);
            } else {
                bool sgn = t->dtype != VLM_DTYPE_U8 && t->dtype != VLM_DTYPE_BOOL;
                int64_t got = read_int(p, es, sgn), exp = int_value(want[k].name, i);
                if (got != exp)
                    fail_msg("%s: %s[%llu] = %lld, want %lld", path, want[k].name,
                             (unsigned long long)i, (long long)got, (long long)exp);
            }
        }
    }
    assert_string_equal(vlm_st_metadata_get(f, "format"), "pt");
    vlm_st_close(f);
}

static void test_samples(void **state) {
    (void)state;
    const char *dir = tu_src("tests/data/safetensors");
    char d[4096];
    snprintf(d, sizeof d, "%s", dir);
    DIR *dh = opendir(d);
    assert_non_null(dh);
    int n = 0;
    bool ours = false;
    for (struct dirent *e; (e = readdir(dh));) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors")) continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", d, e->d_name);
        check_file(path);
        ours |= strcmp(e->d_name, "vlmtest_sample.safetensors") == 0;
        n++;
    }
    closedir(dh);
    assert_true(ours);
    assert_true(n >= 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_samples),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
