/* io/gguf: reading the numpy-written reference files (v3 and v2), write ->
 * read round trips of every metadata type and every tensor type, lookups,
 * the committed corpus of broken files, truncation at every byte, and every
 * allocation failure on open and write. */
#include "testutil.h"

#include "base/alloc.h"
#include "io/gguf.h"
#include "tensor/quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool str_eq(vlm_gguf_str s, const char *c) {
    return s.len == strlen(c) && memcmp(s.ptr, c, s.len) == 0;
}

/* ------------------------------------------------------------------------
 * The reference files of reference/gguf_vectors.py. The metadata values
 * below are the script's META list.
 * ------------------------------------------------------------------------ */

static void check_ref_metadata(const vlm_gguf *g) {
    vlm_err err;
    assert_int_equal(vlm_gguf_n_kv(g), 24);
    assert_string_equal(vlm_gguf_kv_at(g, 0)->key, "general.architecture");
    assert_string_equal(vlm_gguf_kv_at(g, 23)->key, "ref.arr_nested");
    assert_null(vlm_gguf_kv_at(g, 24));
    vlm_gguf_str str;
    assert_int_equal(vlm_gguf_get_str(g, "general.architecture", &str, &err), VLM_OK);
    assert_true(str_eq(str, "vlmtest-ref"));
    assert_int_equal(vlm_gguf_alignment(g), 64);
    assert_int_equal(vlm_gguf_data_offset(g) % 64, 0);

    const struct {
        const char *key;
        vlm_gguf_type type;
        int64_t i;
        uint64_t u;
    } ints[] = {
        {"ref.u8", VLM_GGUF_UINT8, 0, 200},
        {"ref.i8", VLM_GGUF_INT8, -100, 0},
        {"ref.u16", VLM_GGUF_UINT16, 0, 60000},
        {"ref.i16", VLM_GGUF_INT16, -30000, 0},
        {"ref.u32", VLM_GGUF_UINT32, 0, 4000000000u},
        {"ref.i32", VLM_GGUF_INT32, -2000000000, 0},
        {"ref.u64", VLM_GGUF_UINT64, 0, 18000000000000000000ull},
        {"ref.i64", VLM_GGUF_INT64, -9000000000000000000ll, 0},
    };
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        const vlm_gguf_value *v = vlm_gguf_find(g, ints[k].key);
        assert_non_null(v);
        assert_int_equal(v->type, ints[k].type);
        if (ints[k].type == VLM_GGUF_INT8 || ints[k].type == VLM_GGUF_INT16 ||
            ints[k].type == VLM_GGUF_INT32 || ints[k].type == VLM_GGUF_INT64) {
            assert_true(v->i == ints[k].i);
            int64_t x;
            assert_int_equal(vlm_gguf_get_i64(g, ints[k].key, &x, &err), VLM_OK);
            assert_true(x == ints[k].i);
            uint64_t u;
            assert_int_equal(vlm_gguf_get_u64(g, ints[k].key, &u, &err), VLM_ERR_FORMAT);
        } else {
            assert_true(v->u == ints[k].u);
            uint64_t u;
            assert_int_equal(vlm_gguf_get_u64(g, ints[k].key, &u, &err), VLM_OK);
            assert_true(u == ints[k].u);
        }
    }
    double f;
    assert_int_equal(vlm_gguf_get_f64(g, "ref.f32", &f, &err), VLM_OK);
    assert_true(f == 3.25);
    assert_int_equal(vlm_gguf_find(g, "ref.f32")->type, VLM_GGUF_FLOAT32);
    assert_int_equal(vlm_gguf_get_f64(g, "ref.f64", &f, &err), VLM_OK);
    assert_true(f == -2.5e-300);
    bool b = false;
    assert_int_equal(vlm_gguf_get_bool(g, "ref.bool", &b, &err), VLM_OK);
    assert_true(b);
    assert_int_equal(vlm_gguf_get_str(g, "ref.str", &str, &err), VLM_OK);
    assert_true(str_eq(str, "h\xc3\xa9llo GGUF"));
    assert_int_equal(vlm_gguf_get_str(g, "ref.empty_str", &str, &err), VLM_OK);
    assert_int_equal(str.len, 0);

    const vlm_gguf_value *a;
    uint64_t u;
    int64_t i;
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_u8", VLM_GGUF_UINT8, &a, &err), VLM_OK);
    assert_int_equal(a->arr.n, 3);
    assert_true(vlm_gguf_arr_u64(a, 2, &u) && u == 255);
    assert_false(vlm_gguf_arr_u64(a, 3, &u));
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_i32", VLM_GGUF_INT32, &a, &err), VLM_OK);
    assert_true(vlm_gguf_arr_i64(a, 0, &i) && i == -1);
    assert_false(vlm_gguf_arr_u64(a, 0, &u));
    assert_true(vlm_gguf_arr_i64(a, 2, &i) && i == 2147483647);
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_f32", VLM_GGUF_FLOAT32, &a, &err), VLM_OK);
    assert_true(vlm_gguf_arr_f64(a, 0, &f) && f == 0.5);
    assert_true(vlm_gguf_arr_f64(a, 1, &f) && f == -1.0);
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_bool", VLM_GGUF_BOOL, &a, &err), VLM_OK);
    assert_true(vlm_gguf_arr_u64(a, 0, &u) && u == 1);
    assert_true(vlm_gguf_arr_u64(a, 1, &u) && u == 0);
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_str", VLM_GGUF_STRING, &a, &err), VLM_OK);
    assert_int_equal(a->arr.n, 3);
    assert_true(vlm_gguf_arr_str(a, 0, &str) && str_eq(str, "a"));
    assert_true(vlm_gguf_arr_str(a, 1, &str) && str_eq(str, ""));
    assert_true(vlm_gguf_arr_str(a, 2, &str) && str_eq(str, "xyz"));
    assert_false(vlm_gguf_arr_str(a, 3, &str));
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_u64", VLM_GGUF_UINT64, &a, &err), VLM_OK);
    assert_true(vlm_gguf_arr_u64(a, 0, &u) && u == UINT64_MAX);
    assert_false(vlm_gguf_arr_i64(a, 0, &i));
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_f64", VLM_GGUF_FLOAT64, &a, &err), VLM_OK);
    assert_true(vlm_gguf_arr_f64(a, 0, &f) && f == 1.0e100);
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_empty", VLM_GGUF_INT16, &a, &err), VLM_OK);
    assert_int_equal(a->arr.n, 0);
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_nested", VLM_GGUF_ARRAY, &a, &err), VLM_OK);
    assert_int_equal(a->arr.n, 3);
    const int64_t want[3][2] = {{1, 2}, {0, 0}, {3, 0}};
    const uint64_t lens[3] = {2, 0, 1};
    for (int k = 0; k < 3; k++) {
        const vlm_gguf_value *in = &a->arr.items[k];
        assert_int_equal(in->type, VLM_GGUF_ARRAY);
        assert_int_equal(in->arr.elem, VLM_GGUF_INT32);
        assert_int_equal(in->arr.n, lens[k]);
        for (uint64_t j = 0; j < lens[k]; j++)
            assert_true(vlm_gguf_arr_i64(in, j, &i) && i == want[k][j]);
    }

    /* Lookup errors name the file and the key. */
    assert_int_equal(vlm_gguf_get_u64(g, "no.such.key", &u, &err), VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "no.such.key"));
    assert_non_null(strstr(err.msg, ".gguf"));
    assert_int_equal(vlm_gguf_get_str(g, "ref.u8", &str, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "'ref.u8' is a UINT8, expected STRING"));
    assert_int_equal(vlm_gguf_get_arr(g, "ref.arr_u8", VLM_GGUF_INT32, &a, &err), VLM_ERR_FORMAT);
    assert_int_equal(vlm_gguf_get_bool(g, "ref.arr_u8", &b, &err), VLM_ERR_FORMAT);
    assert_null(vlm_gguf_find(g, "ref"));
    assert_null(vlm_gguf_find(g, NULL));
}

/* The tensors: one per type, values from ref_tensors.f32. */
static void check_ref_tensors(const vlm_gguf *g) {
    static const char *const names[] = {
        "plain.F32",  "plain.F16",  "plain.BF16", "plain.F64",  "plain.I8",   "plain.I16",
        "plain.I32",  "plain.I64",  "quant.Q4_0", "quant.Q4_1", "quant.Q5_0", "quant.Q5_1",
        "quant.Q8_0", "quant.Q2_K", "quant.Q3_K", "quant.Q4_K", "quant.Q5_K", "quant.Q6_K",
    };
    const size_t nt = sizeof names / sizeof names[0];
    assert_int_equal(vlm_gguf_n_tensors(g), nt);
    size_t reflen;
    float *ref = tu_read_file(tu_src("tests/data/gguf/ref_tensors.f32"), &reflen);
    assert_non_null(ref);
    size_t at = 0;
    for (size_t k = 0; k < nt; k++) {
        const vlm_gguf_tensor *t = vlm_gguf_tensor_at(g, k);
        assert_string_equal(t->name, names[k]);
        assert_ptr_equal(vlm_gguf_find_tensor(g, names[k]), t);
        /* The type name is the part after the dot. */
        assert_string_equal(vlm_dtype_get(t->dtype)->name, strchr(names[k], '.') + 1);
        assert_int_equal(vlm_gguf_ggml_from_dtype(t->dtype), (int)t->ggml_type);
        assert_int_equal(t->offset % 64, 0);
        /* The mapping is page-aligned, so data is aligned as the file says. */
        assert_int_equal((uintptr_t)t->data % 64, 0);
        uint64_t n = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) n *= t->dims[d];
        assert_int_equal(n, t->n_elems);
        assert_true((at + n) * 4 <= reflen);
        float *y = malloc(n * 4);
        const vlm_dtype_info *info = vlm_dtype_get(t->dtype);
        if (info->is_float) {
            assert_true(vlm_to_f32(t->dtype, t->data, y, n));
        } else {
            for (uint64_t j = 0; j < n; j++) {
                const uint8_t *p = (const uint8_t *)t->data + j * info->block_bytes;
                int64_t v = 0;
                if (t->dtype == VLM_DTYPE_I8) v = (int8_t)p[0];
                if (t->dtype == VLM_DTYPE_I16) v = (int16_t)(p[0] | (p[1] << 8));
                if (t->dtype == VLM_DTYPE_I32) {
                    int32_t x;
                    memcpy(&x, p, 4);
                    v = x;
                }
                if (t->dtype == VLM_DTYPE_I64) memcpy(&v, p, 8);
                y[j] = (float)v;
            }
        }
        if (memcmp(y, ref + at, n * 4) != 0) fail_msg("tensor %s differs from numpy", names[k]);
        at += n;
        free(y);
    }
    assert_int_equal(at * 4, reflen);
    const vlm_gguf_tensor *k4 = vlm_gguf_find_tensor(g, "quant.Q4_K");
    assert_int_equal(k4->n_dims, 2);
    assert_int_equal(k4->dims[0], 256);
    assert_int_equal(k4->dims[1], 3);
    assert_int_equal(k4->nbytes, 3 * 144);
    assert_null(vlm_gguf_find_tensor(g, "quant.Q4_k"));
    assert_null(vlm_gguf_tensor_at(g, nt));
    free(ref);
}

static void test_read_numpy_v3(void **state) {
    (void)state;
    vlm_mem_stats before, during, after;
    vlm_alloc_get_stats(&before);
    vlm_gguf *g = NULL;
    vlm_err err = {0};
    vlm_status s = vlm_gguf_open(tu_src("tests/data/gguf/ref_v3.gguf"), &g, &err);
    if (s) fail_msg("%s", err.msg);
    vlm_alloc_get_stats(&during);
    /* Mapped, not copied. */
    assert_int_equal(during.mapped_current - before.mapped_current, vlm_gguf_file_size(g));
    assert_true(during.total_current - before.total_current < 16384);
    assert_int_equal(vlm_gguf_version(g), 3);
    check_ref_metadata(g);
    check_ref_tensors(g);
    vlm_gguf_close(g);
    vlm_alloc_get_stats(&after);
    assert_int_equal(after.mapped_current, before.mapped_current);
    assert_int_equal(after.total_current, before.total_current);
}

static void test_read_numpy_v2(void **state) {
    (void)state;
    vlm_gguf *g = NULL;
    vlm_err err = {0};
    vlm_status s = vlm_gguf_open(tu_src("tests/data/gguf/ref_v2.gguf"), &g, &err);
    if (s) fail_msg("%s", err.msg);
    assert_int_equal(vlm_gguf_version(g), 2);
    check_ref_metadata(g);
    check_ref_tensors(g);
    vlm_gguf_close(g);
}

/* ------------------------------------------------------------------------
 * Round trips
 * ------------------------------------------------------------------------ */

/* Deep equality of two values (scalar arrays compared as bytes). */
static bool value_eq(const vlm_gguf_value *a, const vlm_gguf_value *b) {
    if (a->type != b->type) return false;
    switch (a->type) {
    case VLM_GGUF_STRING:
        return a->str.len == b->str.len && memcmp(a->str.ptr, b->str.ptr, a->str.len) == 0;
    case VLM_GGUF_FLOAT32:
    case VLM_GGUF_FLOAT64:
        return memcmp(&a->f, &b->f, sizeof a->f) == 0;
    case VLM_GGUF_ARRAY:
        if (a->arr.elem != b->arr.elem || a->arr.n != b->arr.n) return false;
        if (a->arr.elem == VLM_GGUF_STRING || a->arr.elem == VLM_GGUF_ARRAY) {
            for (uint64_t k = 0; k < a->arr.n; k++)
                if (!value_eq(&a->arr.items[k], &b->arr.items[k])) return false;
            return true;
        }
        return a->arr.n == 0 ||
               memcmp(a->arr.data, b->arr.data, a->arr.n * vlm_gguf_type_size(a->arr.elem)) == 0;
    default:
        return a->u == b->u;
    }
}

/* Every metadata type, nested arrays and empty values. */
static vlm_status add_all_metadata(vlm_gguf_writer *w, vlm_err *err) {
    static const uint16_t u16s[] = {0, 1, 65535};
    static const int64_t i64s[] = {INT64_MIN, -1, INT64_MAX};
    static const double f64s[] = {-0.0, 1e-310, INFINITY};
    static const float f32s[] = {1.5f, -0.0f};
    static const uint8_t bools[] = {1, 0};
    vlm_gguf_value strs[3] = {{.type = VLM_GGUF_STRING, .str = {"one", 3}},
                              {.type = VLM_GGUF_STRING, .str = {"", 0}},
                              {.type = VLM_GGUF_STRING, .str = {"t\0o", 3}}};
    static const int32_t in1[] = {5, -6};
    vlm_gguf_value inner[2] = {
        {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_INT32, .n = 2, .data = in1}},
        {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_STRING, .n = 3, .items = strs}},
    };
    vlm_gguf_value mid[2] = {
        {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_ARRAY, .n = 2, .items = inner}},
        {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_ARRAY, .n = 0}},
    };
    const struct {
        const char *key;
        vlm_gguf_value v;
    } kv[] = {
        {"t.u8", {.type = VLM_GGUF_UINT8, .u = 255}},
        {"t.i8", {.type = VLM_GGUF_INT8, .i = -128}},
        {"t.u16", {.type = VLM_GGUF_UINT16, .u = 65535}},
        {"t.i16", {.type = VLM_GGUF_INT16, .i = -32768}},
        {"t.u32", {.type = VLM_GGUF_UINT32, .u = UINT32_MAX}},
        {"t.i32", {.type = VLM_GGUF_INT32, .i = INT32_MIN}},
        {"t.f32", {.type = VLM_GGUF_FLOAT32, .f = -1.25}},
        {"t.bool", {.type = VLM_GGUF_BOOL, .u = 0}},
        {"t.str", {.type = VLM_GGUF_STRING, .str = {"\xe2\x82\xac uro", 7}}},
        {"t.u64", {.type = VLM_GGUF_UINT64, .u = UINT64_MAX}},
        {"t.i64", {.type = VLM_GGUF_INT64, .i = INT64_MIN}},
        {"t.f64", {.type = VLM_GGUF_FLOAT64, .f = 1e308}},
        {"t.arr_u16",
         {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_UINT16, .n = 3, .data = u16s}}},
        {"t.arr_i64",
         {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_INT64, .n = 3, .data = i64s}}},
        {"t.arr_f64",
         {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_FLOAT64, .n = 3, .data = f64s}}},
        {"t.arr_f32",
         {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_FLOAT32, .n = 2, .data = f32s}}},
        {"t.arr_bool",
         {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_BOOL, .n = 2, .data = bools}}},
        {"t.arr_str",
         {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_STRING, .n = 3, .items = strs}}},
        {"t.arr_empty", {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_UINT32, .n = 0}}},
        {"t.arr_nested",
         {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_ARRAY, .n = 2, .items = mid}}},
    };
    for (size_t k = 0; k < sizeof kv / sizeof kv[0]; k++) {
        vlm_status s = vlm_gguf_writer_add(w, kv[k].key, &kv[k].v, err);
        if (s) return s;
    }
    vlm_status s;
    if ((s = vlm_gguf_writer_add_u32(w, "c.u32", 7, err))) return s;
    if ((s = vlm_gguf_writer_add_u64(w, "c.u64", 1ull << 40, err))) return s;
    if ((s = vlm_gguf_writer_add_i64(w, "c.i64", -5, err))) return s;
    if ((s = vlm_gguf_writer_add_f32(w, "c.f32", 0.1f, err))) return s;
    if ((s = vlm_gguf_writer_add_bool(w, "c.bool", true, err))) return s;
    return vlm_gguf_writer_add_str(w, "c.str", "phi3", err);
}

#define RT_TYPES 18
typedef struct rt_tensor {
    char name[32];
    vlm_dtype t;
    uint32_t n_dims;
    uint64_t dims[4];
    uint8_t *data;
    uint64_t nbytes;
} rt_tensor;

/* One tensor of every type we can write, with random bytes (block types get
 * finite f16 scales from quantizing random floats where we can). */
static void make_tensors(rt_tensor *ts, size_t *n) {
    static const vlm_dtype types[] = {
        VLM_DTYPE_F32,  VLM_DTYPE_F16,  VLM_DTYPE_BF16, VLM_DTYPE_F64,  VLM_DTYPE_I64,
        VLM_DTYPE_I32,  VLM_DTYPE_I16,  VLM_DTYPE_I8,   VLM_DTYPE_Q4_0, VLM_DTYPE_Q4_1,
        VLM_DTYPE_Q5_0, VLM_DTYPE_Q5_1, VLM_DTYPE_Q8_0, VLM_DTYPE_Q2_K, VLM_DTYPE_Q3_K,
        VLM_DTYPE_Q4_K, VLM_DTYPE_Q5_K, VLM_DTYPE_Q6_K,
    };
    uint64_t seed = 12345;
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        rt_tensor *t = &ts[k];
        const vlm_dtype_info *info = vlm_dtype_get(types[k]);
        snprintf(t->name, sizeof t->name, "blk.%zu.%s", k, info->name);
        t->t = types[k];
        t->n_dims = (uint32_t)(k % 4) + 1;
        uint64_t elems = 1;
        for (uint32_t d = 0; d < 4; d++) t->dims[d] = 1;
        t->dims[0] = info->block_elems * (info->block_elems == 1 ? 5 : 2);
        for (uint32_t d = 1; d < t->n_dims; d++) t->dims[d] = d + 1;
        for (uint32_t d = 0; d < t->n_dims; d++) elems *= t->dims[d];
        assert_true(vlm_dtype_nbytes(t->t, elems, &t->nbytes));
        t->data = malloc(t->nbytes);
        for (uint64_t j = 0; j < t->nbytes; j++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            t->data[j] = (uint8_t)(seed >> 56);
        }
    }
    *n = sizeof types / sizeof types[0];
}

static char *write_roundtrip_file(const char *dir, uint32_t version, uint32_t alignment,
                                  rt_tensor *ts, size_t nt) {
    static char path[512];
    snprintf(path, sizeof path, "%s/rt_v%u_a%u.gguf", dir, version, alignment);
    vlm_gguf_writer *w;
    vlm_err err = {0};
    assert_int_equal(vlm_gguf_writer_new(&w, &err), VLM_OK);
    assert_int_equal(vlm_gguf_writer_set_version(w, version, &err), VLM_OK);
    if (alignment != VLM_GGUF_DEFAULT_ALIGNMENT)
        assert_int_equal(vlm_gguf_writer_add_u32(w, "general.alignment", alignment, &err), VLM_OK);
    if (add_all_metadata(w, &err)) fail_msg("%s", err.msg);
    for (size_t k = 0; k < nt; k++) {
        if (vlm_gguf_writer_add_tensor(w, ts[k].name, ts[k].t, ts[k].n_dims, ts[k].dims, ts[k].data,
                                       &err))
            fail_msg("%s", err.msg);
    }
    if (vlm_gguf_writer_write(w, path, &err)) fail_msg("%s", err.msg);
    vlm_gguf_writer_free(w);
    return path;
}

static void check_roundtrip(const char *path, uint32_t version, uint32_t alignment, rt_tensor *ts,
                            size_t nt) {
    vlm_gguf *g;
    vlm_err err = {0};
    if (vlm_gguf_open(path, &g, &err)) fail_msg("%s", err.msg);
    assert_int_equal(vlm_gguf_version(g), version);
    assert_int_equal(vlm_gguf_alignment(g), alignment);
    assert_int_equal(vlm_gguf_data_offset(g) % alignment, 0);
    /* Compare against a second writer's values by rebuilding them: read
     * each key back through the public lookups. */
    vlm_gguf_writer *w;
    assert_int_equal(vlm_gguf_writer_new(&w, &err), VLM_OK);
    assert_int_equal(add_all_metadata(w, &err), VLM_OK);
    vlm_gguf_writer_free(w);
    assert_int_equal(vlm_gguf_n_kv(g), 26 + (alignment != VLM_GGUF_DEFAULT_ALIGNMENT));
    const vlm_gguf_value *v = vlm_gguf_find(g, "t.i8");
    assert_true(v && v->type == VLM_GGUF_INT8 && v->i == -128);
    v = vlm_gguf_find(g, "t.u32");
    assert_true(v && v->type == VLM_GGUF_UINT32 && v->u == UINT32_MAX);
    v = vlm_gguf_find(g, "t.i32");
    assert_true(v && v->type == VLM_GGUF_INT32 && v->i == INT32_MIN);
    v = vlm_gguf_find(g, "t.i16");
    assert_true(v && v->type == VLM_GGUF_INT16 && v->i == -32768);
    v = vlm_gguf_find(g, "t.u64");
    assert_true(v && v->type == VLM_GGUF_UINT64 && v->u == UINT64_MAX);
    v = vlm_gguf_find(g, "t.i64");
    assert_true(v && v->type == VLM_GGUF_INT64 && v->i == INT64_MIN);
    v = vlm_gguf_find(g, "t.f32");
    assert_true(v && v->type == VLM_GGUF_FLOAT32 && v->f == -1.25);
    v = vlm_gguf_find(g, "t.f64");
    assert_true(v && v->type == VLM_GGUF_FLOAT64 && v->f == 1e308);
    v = vlm_gguf_find(g, "t.bool");
    assert_true(v && v->type == VLM_GGUF_BOOL && v->u == 0);
    v = vlm_gguf_find(g, "t.str");
    assert_true(v && str_eq(v->str, "\xe2\x82\xac uro"));
    v = vlm_gguf_find(g, "c.f32");
    assert_true(v && v->type == VLM_GGUF_FLOAT32 && v->f == (double)0.1f);
    vlm_gguf_str s;
    assert_int_equal(vlm_gguf_get_str(g, "c.str", &s, &err), VLM_OK);
    assert_true(str_eq(s, "phi3"));
    int64_t i;
    double f;
    uint64_t u;
    const vlm_gguf_value *a = vlm_gguf_find(g, "t.arr_i64");
    assert_true(vlm_gguf_arr_i64(a, 0, &i) && i == INT64_MIN);
    assert_true(vlm_gguf_arr_i64(a, 2, &i) && i == INT64_MAX);
    a = vlm_gguf_find(g, "t.arr_f64");
    assert_true(vlm_gguf_arr_f64(a, 1, &f) && f == 1e-310);
    assert_true(vlm_gguf_arr_f64(a, 2, &f) && isinf(f));
    a = vlm_gguf_find(g, "t.arr_u16");
    assert_true(vlm_gguf_arr_u64(a, 2, &u) && u == 65535);
    a = vlm_gguf_find(g, "t.arr_str");
    assert_true(vlm_gguf_arr_str(a, 2, &s) && s.len == 3 && memcmp(s.ptr, "t\0o", 3) == 0);
    a = vlm_gguf_find(g, "t.arr_nested");
    assert_true(a && a->arr.elem == VLM_GGUF_ARRAY && a->arr.n == 2);
    const vlm_gguf_value *m0 = &a->arr.items[0];
    assert_true(m0->arr.elem == VLM_GGUF_ARRAY && m0->arr.n == 2);
    assert_true(vlm_gguf_arr_i64(&m0->arr.items[0], 1, &i) && i == -6);
    assert_true(vlm_gguf_arr_str(&m0->arr.items[1], 0, &s) && str_eq(s, "one"));
    assert_true(a->arr.items[1].arr.n == 0);
    assert_int_equal(vlm_gguf_n_tensors(g), nt);
    for (size_t k = 0; k < nt; k++) {
        const vlm_gguf_tensor *t = vlm_gguf_find_tensor(g, ts[k].name);
        assert_non_null(t);
        assert_ptr_equal(t, vlm_gguf_tensor_at(g, k));
        assert_int_equal(t->dtype, ts[k].t);
        assert_int_equal(t->n_dims, ts[k].n_dims);
        assert_memory_equal(t->dims, ts[k].dims, sizeof t->dims);
        assert_int_equal(t->nbytes, ts[k].nbytes);
        assert_int_equal(t->offset % alignment, 0);
        assert_memory_equal(t->data, ts[k].data, t->nbytes);
    }
    vlm_gguf_close(g);
}

static void test_roundtrip_every_type(void **state) {
    (void)state;
    rt_tensor ts[RT_TYPES];
    size_t nt;
    make_tensors(ts, &nt);
    char *dir = tu_mkdtemp();
    const uint32_t versions[] = {3, 2, 3};
    const uint32_t aligns[] = {32, 32, 128};
    for (int c = 0; c < 3; c++) {
        char *path = write_roundtrip_file(dir, versions[c], aligns[c], ts, nt);
        check_roundtrip(path, versions[c], aligns[c], ts, nt);
    }
    for (size_t k = 0; k < nt; k++) free(ts[k].data);
    tu_rmtree(dir);
    free(dir);
}

/* Copy every pair and tensor of the numpy file through the writer: the
 * values the reader returns can be written back unchanged. */
static void test_copy_reference_file(void **state) {
    (void)state;
    vlm_gguf *g, *h;
    vlm_err err = {0};
    assert_int_equal(vlm_gguf_open(tu_src("tests/data/gguf/ref_v3.gguf"), &g, &err), VLM_OK);
    vlm_gguf_writer *w;
    assert_int_equal(vlm_gguf_writer_new(&w, &err), VLM_OK);
    for (size_t k = 0; k < vlm_gguf_n_kv(g); k++) {
        const vlm_gguf_kv *kv = vlm_gguf_kv_at(g, k);
        if (vlm_gguf_writer_add(w, kv->key, &kv->value, &err)) fail_msg("%s", err.msg);
    }
    for (size_t k = 0; k < vlm_gguf_n_tensors(g); k++) {
        const vlm_gguf_tensor *t = vlm_gguf_tensor_at(g, k);
        if (vlm_gguf_writer_add_tensor(w, t->name, t->dtype, t->n_dims, t->dims, t->data, &err))
            fail_msg("%s", err.msg);
    }
    char *dir = tu_mkdtemp();
    char path[512];
    snprintf(path, sizeof path, "%s/copy.gguf", dir);
    assert_int_equal(vlm_gguf_writer_write(w, path, &err), VLM_OK);
    vlm_gguf_writer_free(w);
    assert_int_equal(vlm_gguf_open(path, &h, &err), VLM_OK);
    /* The numpy writer and ours lay the file out the same way. */
    size_t la, lb;
    void *a = tu_read_file(tu_src("tests/data/gguf/ref_v3.gguf"), &la);
    void *b = tu_read_file(path, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    free(a);
    free(b);
    assert_int_equal(vlm_gguf_n_kv(h), vlm_gguf_n_kv(g));
    for (size_t k = 0; k < vlm_gguf_n_kv(g); k++) {
        const vlm_gguf_kv *x = vlm_gguf_kv_at(g, k), *y = vlm_gguf_kv_at(h, k);
        assert_string_equal(x->key, y->key);
        assert_true(value_eq(&x->value, &y->value));
    }
    vlm_gguf_close(h);
    vlm_gguf_close(g);
    tu_rmtree(dir);
    free(dir);
}

static void test_writer_rejects(void **state) {
    (void)state;
    vlm_gguf_writer *w;
    vlm_err err = {0};
    assert_int_equal(vlm_gguf_writer_new(&w, &err), VLM_OK);
    assert_int_equal(vlm_gguf_writer_add_u32(w, "a", 1, &err), VLM_OK);
    assert_int_equal(vlm_gguf_writer_add_u32(w, "a", 2, &err), VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "'a' added twice"));
    assert_int_equal(vlm_gguf_writer_add_u32(w, "", 2, &err), VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_gguf_writer_add_u32(w, "k\xff", 2, &err), VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_gguf_writer_add_u32(w, "general.alignment", 48, &err),
                     VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_gguf_writer_add_u64(w, "general.alignment", 64, &err),
                     VLM_ERR_INVALID_ARG);
    vlm_gguf_value big = {.type = VLM_GGUF_UINT8, .u = 256};
    assert_int_equal(vlm_gguf_writer_add(w, "b", &big, &err), VLM_ERR_INVALID_ARG);
    vlm_gguf_value badbool = {.type = VLM_GGUF_BOOL, .u = 2};
    assert_int_equal(vlm_gguf_writer_add(w, "b", &badbool, &err), VLM_ERR_INVALID_ARG);
    vlm_gguf_value badarr = {.type = VLM_GGUF_ARRAY, .arr = {.elem = VLM_GGUF_STRING, .n = 2}};
    assert_int_equal(vlm_gguf_writer_add(w, "b", &badarr, &err), VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "malformed"));
    float x[64] = {0};
    uint64_t dims[2] = {33, 2};
    assert_int_equal(vlm_gguf_writer_add_tensor(w, "q", VLM_DTYPE_Q8_0, 2, dims, x, &err),
                     VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "block size 32"));
    assert_int_equal(vlm_gguf_writer_add_tensor(w, "b", VLM_DTYPE_BOOL, 1, dims, x, &err),
                     VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_gguf_writer_add_tensor(w, "f", VLM_DTYPE_F32, 5, dims, x, &err),
                     VLM_ERR_INVALID_ARG);
    dims[0] = 16;
    assert_int_equal(vlm_gguf_writer_add_tensor(w, "f", VLM_DTYPE_F32, 1, dims, x, &err), VLM_OK);
    assert_int_equal(vlm_gguf_writer_add_tensor(w, "f", VLM_DTYPE_F32, 1, dims, x, &err),
                     VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_gguf_writer_set_version(w, 1, &err), VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_gguf_writer_write(w, "/nonexistent-dir/x.gguf", &err), VLM_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent-dir/x.gguf"));
    vlm_gguf_writer_free(w);
}

/* ------------------------------------------------------------------------
 * Broken files
 * ------------------------------------------------------------------------ */

static void test_bad_corpus(void **state) {
    (void)state;
    size_t len;
    char *manifest = tu_read_file(tu_src("tests/data/bad/gguf/MANIFEST"), &len);
    assert_non_null(manifest);
    int n = 0;
    vlm_mem_stats before, after;
    vlm_alloc_get_stats(&before);
    for (char *line = strtok(manifest, "\n"); line; line = strtok(NULL, "\n")) {
        char *name = line, *status = strchr(line, '\t');
        assert_non_null(status);
        *status++ = '\0';
        char *text = strchr(status, '\t');
        assert_non_null(text);
        *text++ = '\0';
        char rel[256];
        snprintf(rel, sizeof rel, "tests/data/bad/gguf/%s", name);
        vlm_gguf *g = (vlm_gguf *)1;
        vlm_err err = {0};
        vlm_status s = vlm_gguf_open(tu_src(rel), &g, &err);
        if (s == VLM_OK) fail_msg("%s: opened without error", name);
        assert_null(g);
        if (strcmp(vlm_status_name(s), status) != 0 || !strstr(err.msg, text) ||
            !strstr(err.msg, name))
            fail_msg("%s: got %s '%s', expected %s with '%s'", name, vlm_status_name(s), err.msg,
                     status, text);
        /* The same bytes from memory give the same verdict (except the
         * empty file, which the path reader refuses before mapping). */
        size_t blen;
        void *bytes = tu_read_file(tu_src(rel), &blen);
        vlm_status s2 = vlm_gguf_open_memory(bytes, blen, name, &g, &err);
        assert_true(s2 != VLM_OK);
        if (blen >= 24) assert_int_equal(s2, s);
        free(bytes);
        n++;
    }
    free(manifest);
    vlm_alloc_get_stats(&after);
    assert_int_equal(after.total_current, before.total_current);
    assert_int_equal(after.mapped_current, before.mapped_current);
    assert_true(n >= 50);
}

/* Every prefix of a valid file shorter than its last tensor's end fails
 * cleanly; every longer one opens. */
static void test_truncated_everywhere(void **state) {
    (void)state;
    size_t len;
    uint8_t *full = tu_read_file(tu_src("tests/data/gguf/ref_v3.gguf"), &len);
    assert_non_null(full);
    vlm_gguf *g;
    vlm_err err;
    assert_int_equal(vlm_gguf_open_memory(full, len, "ref", &g, &err), VLM_OK);
    uint64_t need = 0;
    for (size_t k = 0; k < vlm_gguf_n_tensors(g); k++) {
        const vlm_gguf_tensor *t = vlm_gguf_tensor_at(g, k);
        uint64_t end = vlm_gguf_data_offset(g) + t->offset + t->nbytes;
        if (end > need) need = end;
    }
    vlm_gguf_close(g);
    for (size_t n = 0; n < len; n++) {
        /* A copy of exactly n bytes, so ASan sees any read past it. */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, full, n);
        vlm_status s = vlm_gguf_open_memory(p, n, "trunc.gguf", &g, &err);
        if (n < need) {
            if (s != VLM_ERR_FORMAT) fail_msg("prefix %zu: status %d, '%s'", n, s, err.msg);
            assert_non_null(strstr(err.msg, "trunc.gguf"));
        } else {
            assert_int_equal(s, VLM_OK);
            vlm_gguf_close(g);
        }
        free(p);
    }
    free(full);
}

/* ------------------------------------------------------------------------
 * Allocation failures: every one gives a clean VLM_ERR_NOMEM, no leak.
 * ------------------------------------------------------------------------ */

static void test_alloc_failures(void **state) {
    (void)state;
    const char *path = tu_src("tests/data/gguf/ref_v3.gguf");
    char *dir = tu_mkdtemp();
    char out[512];
    snprintf(out, sizeof out, "%s/fail.gguf", dir);
    int oks = 0, nomems = 0;
    for (uint64_t k = 1; k < 400; k++) {
        vlm_mem_stats before, after;
        vlm_alloc_get_stats(&before);
        vlm_alloc_fail_at(vlm_alloc_count() + k, false);
        vlm_gguf *g = NULL;
        vlm_err err = {0};
        vlm_status s = vlm_gguf_open(path, &g, &err);
        vlm_gguf_writer *w = NULL;
        if (!s) s = vlm_gguf_writer_new(&w, &err);
        for (size_t i = 0; !s && i < vlm_gguf_n_kv(g); i++)
            s = vlm_gguf_writer_add(w, vlm_gguf_kv_at(g, i)->key, &vlm_gguf_kv_at(g, i)->value,
                                    &err);
        for (size_t i = 0; !s && i < vlm_gguf_n_tensors(g); i++) {
            const vlm_gguf_tensor *t = vlm_gguf_tensor_at(g, i);
            s = vlm_gguf_writer_add_tensor(w, t->name, t->dtype, t->n_dims, t->dims, t->data, &err);
        }
        if (!s) s = vlm_gguf_writer_write(w, out, &err);
        vlm_alloc_fail_at(0, false);
        vlm_gguf_writer_free(w);
        vlm_gguf_close(g);
        if (s != VLM_OK && s != VLM_ERR_NOMEM)
            fail_msg("failing allocation %llu: %s", (unsigned long long)k, err.msg);
        if (s == VLM_ERR_NOMEM) {
            nomems++;
            assert_non_null(strstr(err.msg, "out of memory"));
        } else {
            oks++;
        }
        vlm_alloc_get_stats(&after);
        assert_int_equal(after.total_current, before.total_current);
        assert_int_equal(after.mapped_current, before.mapped_current);
    }
    /* The walk went past the last allocation of the workload. */
    assert_true(nomems > 20);
    assert_true(oks > 0);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_numpy_v3),        cmocka_unit_test(test_read_numpy_v2),
        cmocka_unit_test(test_roundtrip_every_type), cmocka_unit_test(test_copy_reference_file),
        cmocka_unit_test(test_writer_rejects),       cmocka_unit_test(test_bad_corpus),
        cmocka_unit_test(test_truncated_everywhere), cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
